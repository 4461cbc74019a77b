/* worker.c: a worker process. It has its own event loop and Lua state,
 * accepts from the listening sockets its master bound, and serves
 * sessions until the master (or a signal) tells it to stop:
 *
 *   retire (a reload)   stop accepting; sessions go on to their end
 *   quit (SIGQUIT)      stop accepting; sessions before login hear "shutting
 *                       down"; relaying sessions go on until shutdown_timeout
 *   handover            the same after an upgrade, when a new master accepts:
 *                       nobody is told to go, every session gets shutdown_timeout
 *   SIGTERM, SIGINT     close everything now
 *
 * The master's end of the channel closing (the master died) is a quit. */
#include "worker.h"

#include "connlimit.h"
#include "listener.h"
#include "log.h"
#include "lua_policy.h"
#include "session.h"
#include "tls.h"

#include <uv.h>

#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static uv_loop_t *loop;
static config_t *cfg;
static uv_signal_t sig_term, sig_int, sig_quit, sig_usr1, sig_hup;
static uv_pipe_t chan_pipe;
static uv_timer_t shutdown_timer;
static bool stopping, retiring;

static void close_if_open(uv_handle_t *h)
{
    if (h->loop && !uv_is_closing(h))
        uv_close(h, NULL);
}

/* The last session is gone (or the stop is immediate): release the rest
 * so that uv_run returns. */
static void finish(void)
{
    close_if_open((uv_handle_t *)&sig_term);
    close_if_open((uv_handle_t *)&sig_int);
    close_if_open((uv_handle_t *)&sig_quit);
    close_if_open((uv_handle_t *)&sig_usr1);
    close_if_open((uv_handle_t *)&sig_hup);
    close_if_open((uv_handle_t *)&chan_pipe);
    close_if_open((uv_handle_t *)&shutdown_timer);
    policy_shutdown();
}

static void stop_now(void)
{
    if (!retiring && !stopping)
        listeners_stop();
    stopping = true;
    session_close_all();
    finish();
}

static void on_shutdown_timeout(uv_timer_t *t)
{
    (void)t;
    log_msg(LL_INFO, "shutdown_timeout (%gs) reached: closing %d session(s)", cfg->shutdown_timeout,
            session_count());
    session_close_all();
}

/* handover: another master accepts now, so nobody is told to go; the
 * sessions only get shutdown_timeout to end */
static void quit_gracefully(const char *why, bool handover)
{
    if (stopping)
        return;
    stopping = true;
    log_msg(LL_INFO, "%s: stopping gracefully, %d session(s) open", why, session_count());
    if (!retiring)
        listeners_stop();
    uv_timer_start(&shutdown_timer, on_shutdown_timeout, (uint64_t)(cfg->shutdown_timeout * 1000), 0);
    if (handover)
        session_drain(finish);
    else
        session_shutdown(finish);
}

static void retire(void)
{
    if (retiring || stopping)
        return;
    retiring = true;
    listeners_stop();
    log_msg(LL_INFO, "replaced by a reload: finishing %d session(s)", session_count());
    session_drain(finish);
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    switch (signum) {
    case SIGQUIT:
        quit_gracefully("SIGQUIT", false);
        break;
    case SIGUSR1:
        if (log_open(cfg->error_log) < 0)
            log_msg(LL_ERROR, "cannot reopen error_log %s", cfg->error_log);
        else
            log_msg(LL_INFO, "error_log reopened");
        break;
    case SIGHUP:
        log_msg(LL_WARN, "SIGHUP ignored by a worker: send it to the master (postern -s reload)");
        break;
    default:
        log_msg(LL_INFO, "signal %d received, shutting down", signum);
        stop_now();
    }
}

static void chan_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    static char space[64];
    *b = uv_buf_init(space, sizeof space);
}

static void chan_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    (void)st;
    if (n < 0) { /* the master is gone */
        uv_read_stop(st);
        close_if_open((uv_handle_t *)&chan_pipe);
        quit_gracefully("the master process is gone", false);
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (b->base[i] == CHAN_RETIRE)
            retire();
        else if (b->base[i] == CHAN_QUIT)
            quit_gracefully("stop requested", false);
        else if (b->base[i] == CHAN_HANDOVER)
            quit_gracefully("handing over to a new master", true);
    }
}

/* Workers give up root once the listeners are bound (by the master). */
static int drop_privileges(void)
{
    if (!cfg->user || geteuid() != 0)
        return 0;
    if (setgroups(0, NULL) < 0 || initgroups(cfg->user, (gid_t)cfg->gid) < 0 || setgid((gid_t)cfg->gid) < 0 ||
        setuid((uid_t)cfg->uid) < 0) {
        log_msg(LL_ALERT, "cannot run as user %s: %s", cfg->user, strerror(errno));
        return -1;
    }
    /* setuid clears the dumpable flag; a crash should still leave a core */
    prctl(PR_SET_DUMPABLE, 1);
    return 0;
}

static void start_signal(uv_signal_t *h, int signum)
{
    uv_signal_init(loop, h);
    uv_signal_start(h, on_signal, signum);
}

int worker_run(config_t *c, const int *fds, int chan, int slot)
{
    cfg = c;
    tls_after_fork(); /* never the master's random stream */
    connlimit_set_slot(slot);
    if (drop_privileges() < 0)
        return 2;
    loop = uv_default_loop();
    char err[2048];
    if (policy_load(loop, cfg, err, sizeof err) < 0) {
        log_msg(LL_ERROR, "worker cannot load the policy: %s", err);
        return 2;
    }
    if (listeners_start(loop, cfg, fds, err, sizeof err) < 0) {
        log_msg(LL_ALERT, "%s", err);
        listeners_stop();
        policy_shutdown();
        uv_run(loop, UV_RUN_DEFAULT);
        return 2;
    }
    start_signal(&sig_term, SIGTERM);
    start_signal(&sig_int, SIGINT);
    start_signal(&sig_quit, SIGQUIT);
    start_signal(&sig_usr1, SIGUSR1);
    start_signal(&sig_hup, SIGHUP);
    uv_timer_init(loop, &shutdown_timer);
    uv_pipe_init(loop, &chan_pipe, 0);
    if (uv_pipe_open(&chan_pipe, chan) == 0)
        uv_read_start((uv_stream_t *)&chan_pipe, chan_alloc, chan_read);
    char ready = CHAN_READY;
    if (write(chan, &ready, 1) != 1)
        log_msg(LL_WARN, "cannot tell the master this worker is ready: %s", strerror(errno));
    log_msg(LL_DEBUG, "worker ready");

    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return 0;
}
