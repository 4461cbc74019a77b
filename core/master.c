/* master.c: the master process.
 *
 * It binds every listener, forks `workers` workers that accept from the
 * same sockets, and then only watches: it restarts a worker that dies,
 * and turns signals into the instance's life cycle.
 *
 *   SIGHUP   reload: the new configuration and policy are checked here
 *            first; then a new generation of workers starts with them
 *            (new listeners bound, removed ones closed) and, once every
 *            new worker accepts, the old ones stop accepting and finish
 *            their sessions with the configuration they started with.
 *   SIGQUIT  graceful stop: listeners close; sessions before login are
 *            told the server is shutting down; relaying sessions go on
 *            for up to shutdown_timeout.
 *   SIGTERM, SIGINT  stop now.
 *   SIGUSR1  reopen the logs (logrotate).
 *   SIGUSR2  upgrade: start the binary again (the file, possibly a new
 *            version) with the listening sockets inherited; the old master
 *            goes on until told SIGQUIT, and takes over again if the new
 *            one exits.
 *
 * The master uses no event loop of its own: libuv's signal handling is
 * process-global and would leak into the forked workers. Signals only set
 * flags; they are unblocked only inside ppoll(), which also watches each
 * worker's channel (a socketpair: "ready" up, "retire"/"quit" down). */
#include "master.h"

#include "connlimit.h"
#include "listener.h"
#include "log.h"
#include "lua_policy.h"
#include "mem.h"
#include "pool.h"
#include "sd_notify.h"
#include "tls.h"
#include "worker.h"

#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define QUICK_DEATH_MS 10000 /* a worker dead sooner than this is backed off */
#define MAX_BACKOFF_MS 30000
#define TERM_GRACE_MS 5000   /* SIGTERM: after this, SIGKILL */

typedef struct worker {
    pid_t pid;       /* 0: the slot is free */
    int gen;         /* the configuration generation it serves */
    int index;       /* its place in that generation */
    int chan;        /* the master's end of its channel */
    bool ready;
    bool told;       /* retire or quit was sent: its exit is expected */
    uint64_t started;
} worker_t;

static worker_t workers[CONNLIMIT_SLOTS]; /* by slot (connlimit.h) */
static struct {
    uint64_t due;  /* when to start it again (0: not waiting) */
    int quick;     /* deaths in a row, each within QUICK_DEATH_MS */
} restarts[CONFIG_MAX_WORKERS];

static config_t *cfg;          /* in force */
static int *fds;               /* cfg's listening sockets, by `listen` entry */
static int gen;                /* cfg's generation */
static config_t *next_cfg;     /* a reload waiting for its workers */
static int *next_fds;
static int next_gen;
static bool reload_again;      /* a SIGHUP came during a reload */
static int last_gen;

static enum { RUNNING, GRACEFUL, IMMEDIATE } state = RUNNING;
static uint64_t kill_deadline; /* stopping: SIGKILL what is left after this */
static pid_t upgrade_pid;      /* the new binary, while it starts */
static char exe_path[PATH_MAX];
static char **saved_argv;
static char pid_oldbin[PATH_MAX];

static volatile sig_atomic_t got_hup, got_quit, got_term, got_usr1, got_usr2, got_chld;

static void on_signal(int sig)
{
    switch (sig) {
    case SIGHUP: got_hup = 1; break;
    case SIGQUIT: got_quit = 1; break;
    case SIGTERM:
    case SIGINT: got_term = 1; break;
    case SIGUSR1: got_usr1 = 1; break;
    case SIGUSR2: got_usr2 = 1; break;
    case SIGCHLD: got_chld = 1; break;
    }
}

static const int handled[] = { SIGHUP, SIGQUIT, SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGCHLD };
#define NHANDLED (int)(sizeof handled / sizeof *handled)

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int alive_count(int g) /* g < 0: every generation */
{
    int n = 0;
    for (int i = 0; i < CONNLIMIT_SLOTS; i++)
        if (workers[i].pid && (g < 0 || workers[i].gen == g))
            n++;
    return n;
}

static void tell(worker_t *w, char msg)
{
    w->told = true;
    if (w->chan >= 0 && write(w->chan, &msg, 1) != 1)
        kill(w->pid, SIGQUIT); /* the channel is gone: the signal is the nearest thing */
}

/* ---- starting workers ---- */

static void child_setup(int keep_chan)
{
    /* the master's signal handling is not the worker's: libuv installs
     * its own handlers; the master's channels are not its business */
    struct sigaction sa = { .sa_handler = SIG_DFL };
    for (int i = 0; i < NHANDLED; i++)
        sigaction(handled[i], &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int i = 0; i < CONNLIMIT_SLOTS; i++)
        if (workers[i].pid && workers[i].chan >= 0 && workers[i].chan != keep_chan)
            close(workers[i].chan);
}

static int spawn(config_t *c, const int *lfds, int g, int index)
{
    int slot = -1;
    for (int i = 0; i < CONNLIMIT_SLOTS && slot < 0; i++)
        if (!workers[i].pid)
            slot = i;
    if (slot < 0) {
        log_msg(LL_ERROR, "cannot start a worker: %d workers are still finishing their sessions", CONNLIMIT_SLOTS);
        return -1;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        log_msg(LL_ERROR, "cannot start a worker: socketpair: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        log_msg(LL_ERROR, "cannot start a worker: fork: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        close(sv[0]);
        child_setup(-1);
        listen_sockets_close_except(lfds, c->nlisten);
        int rc = worker_run(c, lfds, sv[1], slot);
        pool_drain();
        log_close();
        exit(rc);
    }
    close(sv[1]);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    workers[slot] = (worker_t){ .pid = pid, .gen = g, .index = index, .chan = sv[0], .started = now_ms() };
    log_msg(LL_INFO, "worker %d started", (int)pid);
    return 0;
}

static void start_generation(config_t *c, const int *lfds, int g)
{
    for (int i = 0; i < c->workers; i++)
        spawn(c, lfds, g, i);
}

/* ---- reload ---- */

static void reload(void);
static void reload_failed(const char *why);

static int check_policy(config_t *c, char *err, size_t errlen)
{
    uv_loop_t l;
    uv_loop_init(&l);
    int rc = policy_load(&l, c, err, errlen);
    policy_shutdown();
    uv_run(&l, UV_RUN_DEFAULT);
    uv_loop_close(&l);
    return rc;
}

static void reload(void)
{
    if (next_cfg) {
        reload_again = true;
        return;
    }
    char err[2048];
    sd_notify_reloading();
    log_msg(LL_INFO, "reloading %s", cfg->path);
    config_t *c = config_load(cfg->path, err, sizeof err);
    if (c && check_policy(c, err, sizeof err) < 0) {
        config_release(c);
        c = NULL;
    }
    int *lfds = c ? xcalloc((size_t)c->nlisten + 1, sizeof *lfds) : NULL;
    if (c && listen_sockets_prepare(c, lfds, err, sizeof err) < 0) {
        config_release(c);
        c = NULL;
    }
    if (!c) {
        free(lfds);
        log_msg(LL_ERROR, "reload refused, keeping the running configuration: %s", err);
        sd_notify_ready();
        return;
    }
    if (log_open(c->error_log) < 0) /* reopened: log rotation works with a HUP */
        log_msg(LL_ERROR, "cannot reopen error_log %s", c->error_log);
    log_level = c->log_level;
    next_cfg = c;
    next_fds = lfds;
    next_gen = ++last_gen;
    start_generation(next_cfg, next_fds, next_gen);
    if (alive_count(next_gen) == 0)
        reload_failed("no worker could start");
}

/* The reload in progress is over (done or failed): a HUP that waited
 * behind it starts the next one (perhaps the file is fixed now). */
static void reload_over(void)
{
    sd_notify_ready();
    if (reload_again) {
        reload_again = false;
        reload();
    }
}

static void reload_failed(const char *why)
{
    log_msg(LL_ERROR, "reload failed, keeping the running configuration: %s", why);
    for (int i = 0; i < CONNLIMIT_SLOTS; i++)
        if (workers[i].pid && workers[i].gen == next_gen) {
            workers[i].told = true;
            kill(workers[i].pid, SIGTERM);
        }
    if (log_open(cfg->error_log) < 0)
        log_msg(LL_ERROR, "cannot reopen error_log %s", cfg->error_log);
    log_level = cfg->log_level;
    listen_sockets_commit(cfg);
    config_release(next_cfg);
    free(next_fds);
    next_cfg = NULL;
    next_fds = NULL;
    reload_over();
}

/* Every worker of the new generation accepts: the old ones retire. */
static void reload_done(void)
{
    for (int i = 0; i < CONNLIMIT_SLOTS; i++)
        if (workers[i].pid && workers[i].gen != next_gen && !workers[i].told)
            tell(&workers[i], CHAN_RETIRE);
    config_release(cfg);
    free(fds);
    cfg = next_cfg;
    fds = next_fds;
    gen = next_gen;
    next_cfg = NULL;
    next_fds = NULL;
    memset(restarts, 0, sizeof restarts);
    listen_sockets_commit(cfg);
    log_msg(LL_INFO, "reloaded: configuration %s, policy %s", cfg->path, cfg->policy);
    reload_over();
}

/* ---- workers that exit ---- */

static void describe_exit(int status, char *out, size_t outlen)
{
    if (WIFSIGNALED(status))
        snprintf(out, outlen, "was killed by signal %d (%s)%s", WTERMSIG(status), strsignal(WTERMSIG(status)),
                 WCOREDUMP(status) ? ", core dumped" : "");
    else
        snprintf(out, outlen, "exited with status %d", WEXITSTATUS(status));
}

static void upgrade_exited(int status)
{
    char how[128];
    describe_exit(status, how, sizeof how);
    upgrade_pid = 0;
    log_msg(LL_ERROR, "upgrade failed: the new binary %s; this process goes on serving", how);
    if (cfg->pidfile && pid_oldbin[0] && rename(pid_oldbin, cfg->pidfile) < 0)
        log_msg(LL_ERROR, "cannot rename %s back to %s: %s", pid_oldbin, cfg->pidfile, strerror(errno));
    pid_oldbin[0] = '\0';
}

static void worker_exited(worker_t *w, int status)
{
    int slot = (int)(w - workers);
    char how[128];
    describe_exit(status, how, sizeof how);
    connlimit_forget_slot(slot);
    if (w->chan >= 0)
        close(w->chan);
    worker_t was = *w;
    *w = (worker_t){ .chan = -1 };
    bool expected = was.told || state != RUNNING;
    bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (expected) {
        log_msg(clean ? LL_INFO : LL_WARN, "worker %d %s", (int)was.pid, how);
        return;
    }
    if (next_cfg && was.gen == next_gen) {
        char why[200];
        snprintf(why, sizeof why, "new worker %d %s", (int)was.pid, how);
        reload_failed(why);
        return;
    }
    if (was.gen != gen || was.index >= CONFIG_MAX_WORKERS)
        return;
    uint64_t now = now_ms();
    int *quick = &restarts[was.index].quick;
    *quick = now - was.started < QUICK_DEATH_MS ? *quick + 1 : 0;
    int delay = *quick <= 1 ? 0 : 250 << (*quick - 2 > 7 ? 7 : *quick - 2);
    if (delay > MAX_BACKOFF_MS)
        delay = MAX_BACKOFF_MS;
    log_msg(LL_ALERT, "worker %d %s; starting another%s%.1f s", (int)was.pid, how, delay ? " in " : "",
            delay ? delay / 1000.0 : 0.0);
    restarts[was.index].due = now + (uint64_t)delay + 1; /* +1: never 0 */
}

static void reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == upgrade_pid) {
            upgrade_exited(status);
            continue;
        }
        for (int i = 0; i < CONNLIMIT_SLOTS; i++)
            if (workers[i].pid == pid) {
                worker_exited(&workers[i], status);
                break;
            }
    }
}

static void restart_due(void)
{
    uint64_t now = now_ms();
    for (int i = 0; i < CONFIG_MAX_WORKERS; i++)
        if (restarts[i].due && restarts[i].due <= now) {
            restarts[i].due = 0;
            if (state == RUNNING && i < cfg->workers && spawn(cfg, fds, gen, i) < 0)
                restarts[i].due = now + 1000;
        }
}

/* ---- stopping, logs, upgrade ---- */

static void stop(int how)
{
    if (how == GRACEFUL && state != RUNNING)
        return;
    if (how == IMMEDIATE && state == IMMEDIATE)
        return;
    sd_notify_stopping();
    log_msg(LL_INFO,
            how != GRACEFUL   ? "stopping now"
            : upgrade_pid     ? "stopping gracefully, handing over to the new master (shutdown_timeout %gs)"
                              : "stopping gracefully (shutdown_timeout %gs)",
            cfg->shutdown_timeout);
    state = how;
    listen_sockets_close_all();
    /* after an upgrade the new master serves: a session before login may
     * as well finish its login here (only a plain stop turns them away) */
    bool handover = upgrade_pid != 0;
    for (int i = 0; i < CONNLIMIT_SLOTS; i++) {
        if (!workers[i].pid)
            continue;
        if (how == GRACEFUL)
            tell(&workers[i], handover ? CHAN_HANDOVER : CHAN_QUIT);
        else {
            workers[i].told = true;
            kill(workers[i].pid, SIGTERM);
        }
    }
    kill_deadline = now_ms() + (how == GRACEFUL ? (uint64_t)(cfg->shutdown_timeout * 1000) + 10000 : TERM_GRACE_MS);
}

static void reopen_logs(void)
{
    log_msg(LL_INFO, "reopening the logs");
    if (log_open(cfg->error_log) < 0)
        log_msg(LL_ERROR, "cannot reopen error_log %s", cfg->error_log);
    else if (cfg->user && geteuid() == 0 && cfg->error_log && strcmp(cfg->error_log, "stderr") != 0 &&
             chown(cfg->error_log, (uid_t)cfg->uid, (gid_t)cfg->gid) < 0)
        log_msg(LL_WARN, "cannot give %s to user %s: %s", cfg->error_log, cfg->user, strerror(errno));
    for (int i = 0; i < CONNLIMIT_SLOTS; i++)
        if (workers[i].pid)
            kill(workers[i].pid, SIGUSR1);
}

static void write_pidfile(void)
{
    if (!cfg->pidfile)
        return;
    FILE *f = fopen(cfg->pidfile, "w");
    if (!f) {
        log_msg(LL_ERROR, "cannot write pidfile %s: %s", cfg->pidfile, strerror(errno));
        return;
    }
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
}

static void upgrade(void)
{
    if (upgrade_pid) {
        log_msg(LL_WARN, "SIGUSR2 ignored: an upgrade (pid %d) is in progress", (int)upgrade_pid);
        return;
    }
    if (state != RUNNING || !exe_path[0])
        return;
    if (cfg->pidfile) {
        snprintf(pid_oldbin, sizeof pid_oldbin, "%s.oldbin", cfg->pidfile);
        if (rename(cfg->pidfile, pid_oldbin) < 0) {
            log_msg(LL_ERROR, "upgrade refused: cannot rename %s: %s", cfg->pidfile, strerror(errno));
            pid_oldbin[0] = '\0';
            return;
        }
    }
    char list[1024];
    listen_sockets_export(list, sizeof list);
    pid_t pid = fork();
    if (pid == 0) {
        child_setup(-1);
        setenv("POSTERN_LISTEN_FDS", list, 1);
        execv(exe_path, saved_argv);
        fprintf(stderr, "postern: upgrade: cannot run %s: %s\n", exe_path, strerror(errno));
        _exit(127);
    }
    /* close-on-exec again: no later worker needs to pass them on */
    char again[1024];
    listen_sockets_export(again, sizeof again);
    for (char *p = again, *end; *p; p = *end ? end + 1 : end) {
        int fd = (int)strtol(p, &end, 10);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    if (pid < 0) {
        log_msg(LL_ERROR, "upgrade failed: fork: %s", strerror(errno));
        if (pid_oldbin[0])
            rename(pid_oldbin, cfg->pidfile);
        return;
    }
    upgrade_pid = pid;
    log_msg(LL_INFO, "upgrading: started %s as pid %d with the listening sockets; send SIGQUIT to this process "
                     "(%d) once it serves", exe_path, (int)pid, (int)getpid());
}

/* ---- the loop ---- */

static void read_channel(worker_t *w)
{
    char msg[16];
    ssize_t n = read(w->chan, msg, sizeof msg);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            close(w->chan); /* the worker is going: waitpid tells how */
            w->chan = -1;
        }
        return;
    }
    for (ssize_t i = 0; i < n; i++)
        if (msg[i] == CHAN_READY)
            w->ready = true;
    if (next_cfg && w->gen == next_gen) {
        for (int i = 0; i < CONNLIMIT_SLOTS; i++)
            if (workers[i].pid && workers[i].gen == next_gen && !workers[i].ready)
                return;
        reload_done();
    }
}

static int initial_ready = 0;

/* session-ticket keys rotate every tls.ticket_lifetime (of the
 * configuration in force: a reload may change it) */
static uint64_t ticket_rotation_ms(void)
{
    return (uint64_t)((cfg->tls_ticket_lifetime > 0 ? cfg->tls_ticket_lifetime : 3600) * 1000);
}

int master_run(config_t *c, char **argv)
{
    cfg = c;
    saved_argv = argv;
    ssize_t n = readlink("/proc/self/exe", exe_path, sizeof exe_path - 1);
    exe_path[n > 0 ? n : 0] = '\0';
    char *deleted = strstr(exe_path, " (deleted)");
    if (deleted)
        *deleted = '\0';
    for (int i = 0; i < CONNLIMIT_SLOTS; i++)
        workers[i].chan = -1;

    sigset_t block, unblocked;
    sigemptyset(&block);
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < NHANDLED; i++) {
        sigaddset(&block, handled[i]);
        sigaction(handled[i], &sa, NULL);
    }
    sigprocmask(SIG_BLOCK, &block, &unblocked); /* unblocked: the mask ppoll waits with */
    for (int i = 0; i < NHANDLED; i++)
        sigdelset(&unblocked, handled[i]);

    char err[2048];
    const char *inherited = getenv("POSTERN_LISTEN_FDS");
    if (inherited) {
        if (listen_sockets_inherit(inherited) < 0)
            log_msg(LL_WARN, "POSTERN_LISTEN_FDS=%s: not all of them are listening sockets", inherited);
        else
            log_msg(LL_INFO, "took over the listening sockets %s", inherited);
        unsetenv("POSTERN_LISTEN_FDS");
    }
    fds = xcalloc((size_t)cfg->nlisten + 1, sizeof *fds);
    if (connlimit_init() < 0 || tls_tickets_share(cfg->tls_ticket_lifetime) < 0) {
        log_msg(LL_ERROR, "cannot map the memory the workers share: %s", strerror(errno));
        return 1;
    }
    if (listen_sockets_prepare(cfg, fds, err, sizeof err) < 0) {
        log_msg(LL_ERROR, "%s", err);
        fprintf(stderr, "postern: %s\n", err);
        return 1;
    }
    listen_sockets_commit(cfg); /* inherited sockets no entry claims */
    if (cfg->user && geteuid() != 0)
        log_msg(LL_WARN, "user \"%s\" is ignored: the master does not run as root", cfg->user);
    write_pidfile();
    gen = last_gen = 1;
    log_msg(LL_INFO, "postern %s started, policy %s, %d worker%s", POSTERN_VERSION, cfg->policy, cfg->workers,
            cfg->workers == 1 ? "" : "s");
    start_generation(cfg, fds, gen);

    uint64_t next_rotation = now_ms() + ticket_rotation_ms();
    for (;;) {
        if (state != RUNNING && alive_count(-1) == 0)
            break;
        struct pollfd pfd[CONNLIMIT_SLOTS];
        worker_t *owner[CONNLIMIT_SLOTS];
        int npfd = 0;
        for (int i = 0; i < CONNLIMIT_SLOTS; i++)
            if (workers[i].pid && workers[i].chan >= 0) {
                pfd[npfd] = (struct pollfd){ .fd = workers[i].chan, .events = POLLIN };
                owner[npfd++] = &workers[i];
            }
        uint64_t now = now_ms(), wake = now + 1000;
        for (int i = 0; i < CONFIG_MAX_WORKERS; i++)
            if (restarts[i].due && restarts[i].due < wake)
                wake = restarts[i].due;
        if (kill_deadline && kill_deadline < wake)
            wake = kill_deadline;
        uint64_t wait = wake > now ? wake - now : 0;
        struct timespec ts = { .tv_sec = (time_t)(wait / 1000), .tv_nsec = (long)(wait % 1000) * 1000000 };
        int rc = ppoll(pfd, (nfds_t)npfd, &ts, &unblocked);
        if (got_chld) {
            got_chld = 0;
            reap();
        }
        if (got_term) {
            got_term = 0;
            stop(IMMEDIATE);
        }
        if (got_quit) {
            got_quit = 0;
            stop(GRACEFUL);
        }
        if (got_hup) {
            got_hup = 0;
            if (state == RUNNING)
                reload();
        }
        if (got_usr1) {
            got_usr1 = 0;
            reopen_logs();
        }
        if (got_usr2) {
            got_usr2 = 0;
            upgrade();
        }
        if (rc > 0)
            for (int i = 0; i < npfd; i++)
                if (owner[i]->pid && owner[i]->chan == pfd[i].fd && (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                    read_channel(owner[i]);
        if (!initial_ready && state == RUNNING) {
            int ready = 0;
            for (int i = 0; i < CONNLIMIT_SLOTS; i++)
                if (workers[i].pid && workers[i].gen == gen && workers[i].ready)
                    ready++;
            if (ready == cfg->workers) {
                initial_ready = 1;
                sd_notify_ready();
            }
        }
        restart_due();
        now = now_ms();
        if (state == RUNNING && now >= next_rotation) {
            tls_tickets_rotate();
            next_rotation = now + ticket_rotation_ms();
        }
        if (kill_deadline && now >= kill_deadline) {
            for (int i = 0; i < CONNLIMIT_SLOTS; i++)
                if (workers[i].pid) {
                    log_msg(LL_WARN, "worker %d did not stop in time: killed", (int)workers[i].pid);
                    kill(workers[i].pid, SIGKILL);
                }
            kill_deadline = 0;
        }
    }
    log_msg(LL_INFO, "postern stopped");
    if (cfg->pidfile && !pid_oldbin[0]) {
        /* the pidfile is ours unless an upgrade wrote its own there */
        FILE *f = fopen(cfg->pidfile, "r");
        int pid = 0;
        if (f) {
            if (fscanf(f, "%d", &pid) != 1)
                pid = 0;
            fclose(f);
        }
        if (pid == (int)getpid())
            unlink(cfg->pidfile);
    } else if (pid_oldbin[0])
        unlink(pid_oldbin);
    listen_sockets_close_all();
    free(fds);
    free(next_fds); /* a reload that was under way */
    if (next_cfg)
        config_release(next_cfg);
    config_release(cfg);
    pool_drain();
    return 0;
}
