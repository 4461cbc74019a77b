/* main.c: the command line (-c, -t, -v), signals and the event loop. */
#include "config.h"
#include "listener.h"
#include "log.h"
#include "lua_policy.h"
#include "pool.h"
#include "sd_notify.h"
#include "session.h"

#include <luajit.h>
#include <mbedtls/version.h>
#include <uv.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uv_signal_t sig_term, sig_int, sig_hup, sig_quit;
static config_t *cfg;

static void usage(void)
{
    fprintf(stderr, "usage: postern [-c FILE]              run with FILE (default ./proxy.conf.lua)\n"
                    "       postern -t [-c FILE]           check the configuration and its policy\n"
                    "       postern -s reload|stop [-c FILE]  signal the postern whose pidfile FILE names\n"
                    "       postern -v                     print the versions\n");
}

static void print_versions(void)
{
    char mbed[64];
    mbedtls_version_get_string_full(mbed);
    printf("postern %s\n%s\nlibuv %s\n%s\n", POSTERN_VERSION, LUAJIT_VERSION, uv_version_string(), mbed);
}

static void on_stop(uv_signal_t *h, int signum)
{
    (void)h;
    sd_notify_stopping();
    log_msg(LL_INFO, "signal %d received, shutting down", signum);
    uv_signal_stop(&sig_term);
    uv_signal_stop(&sig_int);
    uv_signal_stop(&sig_hup);
    uv_close((uv_handle_t *)&sig_quit, NULL);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_hup, NULL);
    listeners_stop();
    session_close_all();
    policy_shutdown();
}

/* SIGHUP: read the configuration and the policy again. New sessions get
 * both; sessions already running keep what they started with (each pins
 * its config and policy). Anything that fails to load is refused with a
 * log line and the running configuration stays in force. */
static void reload(uv_signal_t *h, int signum)
{
    (void)signum;
    char err[2048];
    log_msg(LL_INFO, "reloading %s", cfg->path);
    config_t *next = config_load(cfg->path, err, sizeof err);
    if (!next) {
        log_msg(LL_ERROR, "reload refused, keeping the running configuration: %s", err);
        return;
    }
    if (!config_same_listeners(cfg, next)) {
        log_msg(LL_ERROR, "reload refused, keeping the running configuration: the listen addresses changed "
                          "(that needs a restart)");
        config_release(next);
        return;
    }
    if (policy_load(h->loop, next, err, sizeof err) < 0) {
        log_msg(LL_ERROR, "reload refused, keeping the running configuration: %s", err);
        config_release(next);
        return;
    }
    if (log_open(next->error_log) < 0) /* reopened: log rotation works with a HUP */
        log_msg(LL_ERROR, "cannot reopen error_log %s", next->error_log);
    log_level = next->log_level;
    listeners_use(next);
    config_release(cfg);
    cfg = next;
    log_msg(LL_INFO, "reloaded: configuration %s, policy %s", cfg->path, cfg->policy);
}

/* systemd sees the reload begin and end (refused or not) */
static void on_hup(uv_signal_t *h, int signum)
{
    sd_notify_reloading();
    reload(h, signum);
    sd_notify_ready();
}

/* postern -s reload|stop: signal the running postern named by pidfile. */
static int send_signal(const char *conf, const char *what)
{
    int sig = strcmp(what, "reload") == 0 ? SIGHUP : strcmp(what, "stop") == 0 ? SIGTERM : 0;
    if (!sig) {
        fprintf(stderr, "postern: -s takes reload or stop\n");
        return 2;
    }
    char err[2048];
    config_t *c = config_load(conf, err, sizeof err);
    if (!c) {
        fprintf(stderr, "postern: %s\n", err);
        return 1;
    }
    if (!c->pidfile) {
        fprintf(stderr, "postern: %s sets no pidfile: add pidfile = \"postern.pid\", or use kill -HUP <pid>\n", conf);
        config_release(c);
        return 1;
    }
    FILE *f = fopen(c->pidfile, "r");
    int pid = 0;
    if (!f || fscanf(f, "%d", &pid) != 1 || pid <= 0) {
        fprintf(stderr, "postern: cannot read a process id from %s\n", c->pidfile);
        if (f)
            fclose(f);
        config_release(c);
        return 1;
    }
    fclose(f);
    config_release(c);
    if (kill(pid, sig) != 0) {
        fprintf(stderr, "postern: cannot signal process %d: %s\n", pid, strerror(errno));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *conf = "proxy.conf.lua", *sig = NULL;
    int test_only = 0, opt;
    while ((opt = getopt(argc, argv, "c:s:tvh")) != -1) {
        switch (opt) {
        case 'c': conf = optarg; break;
        case 's': sig = optarg; break;
        case 't': test_only = 1; break;
        case 'v': print_versions(); return 0;
        default: usage(); return opt == 'h' ? 0 : 2;
        }
    }
    if (optind < argc) {
        usage();
        return 2;
    }
    if (sig)
        return send_signal(conf, sig);

    char err[2048];
    cfg = config_load(conf, err, sizeof err);
    if (!cfg) {
        fprintf(stderr, "postern: %s\n", err);
        return 1;
    }
    uv_loop_t *loop = uv_default_loop();
    if (policy_load(loop, cfg, err, sizeof err) < 0) {
        fprintf(stderr, "postern: %s\n", err);
        config_release(cfg);
        return 1;
    }
    if (test_only) {
        policy_shutdown();
        config_release(cfg);
        uv_loop_close(loop);
        printf("configuration ok\n");
        return 0;
    }

    signal(SIGPIPE, SIG_IGN);
    log_level = cfg->log_level;
    int rc = log_open(cfg->error_log);
    if (rc < 0) {
        fprintf(stderr, "postern: error_log: cannot open %s: %s\n", cfg->error_log, strerror(-rc));
        return 1;
    }
    if (listeners_start(loop, cfg, err, sizeof err) < 0) {
        log_msg(LL_ERROR, "%s", err);
        fprintf(stderr, "postern: %s\n", err);
        listeners_stop();
        policy_shutdown();
        uv_run(loop, UV_RUN_DEFAULT);
        uv_loop_close(loop);
        config_release(cfg);
        log_close();
        return 1;
    }
    if (cfg->pidfile) {
        FILE *f = fopen(cfg->pidfile, "w");
        if (f) {
            fprintf(f, "%d\n", (int)getpid());
            fclose(f);
        }
    }
    uv_signal_init(loop, &sig_term);
    uv_signal_start(&sig_term, on_stop, SIGTERM);
    uv_signal_init(loop, &sig_int);
    uv_signal_start(&sig_int, on_stop, SIGINT);
    uv_signal_init(loop, &sig_hup);
    uv_signal_start(&sig_hup, on_hup, SIGHUP);
    uv_signal_init(loop, &sig_quit); /* the unit's KillSignal: until the master's graceful QUIT, a stop */
    uv_signal_start(&sig_quit, on_stop, SIGQUIT);
    log_msg(LL_INFO, "postern %s started, policy %s", POSTERN_VERSION, cfg->policy);
    sd_notify_ready();

    uv_run(loop, UV_RUN_DEFAULT);

    log_msg(LL_INFO, "postern stopped");
    if (cfg->pidfile)
        unlink(cfg->pidfile);
    uv_loop_close(loop);
    config_release(cfg);
    pool_drain();
    log_close();
    return 0;
}
