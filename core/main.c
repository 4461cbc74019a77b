/* main.c: the command line (-c, -t, -s, -v); running is master.c's. */
#include "config.h"
#include "master.h"
#include "log.h"
#include "lua_policy.h"

#include <luajit.h>
#include <mbedtls/version.h>
#include <uv.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(void)
{
    fprintf(stderr, "usage: postern [-c FILE]              run with FILE (default ./proxy.conf.lua)\n"
                    "       postern -t [-c FILE]           check the configuration and its policy\n"
                    "       postern -s SIGNAL [-c FILE]    signal the postern whose pidfile FILE names:\n"
                    "                                      reload (HUP), quit (QUIT, graceful), stop (TERM),\n"
                    "                                      reopen (USR1, logs), upgrade (USR2, binary)\n"
                    "       postern -v                     print the versions\n");
}

static void print_versions(void)
{
    char mbed[64];
    mbedtls_version_get_string_full(mbed);
    printf("postern %s\n%s\nlibuv %s\n%s\n", POSTERN_VERSION, LUAJIT_VERSION, uv_version_string(), mbed);
}

/* postern -s reload|stop: signal the running postern named by pidfile. */
static int send_signal(const char *conf, const char *what)
{
    static const struct {
        const char *name;
        int sig;
    } names[] = { { "reload", SIGHUP }, { "quit", SIGQUIT }, { "stop", SIGTERM },
                  { "reopen", SIGUSR1 }, { "upgrade", SIGUSR2 } };
    int sig = 0;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strcmp(what, names[i].name) == 0)
            sig = names[i].sig;
    if (!sig) {
        fprintf(stderr, "postern: -s takes reload, quit, stop, reopen or upgrade\n");
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
    config_t *cfg = config_load(conf, err, sizeof err);
    if (!cfg) {
        fprintf(stderr, "postern: %s\n", err);
        return 1;
    }
    uv_loop_t check;
    uv_loop_init(&check);
    int rc = policy_load(&check, cfg, err, sizeof err);
    policy_shutdown();
    uv_run(&check, UV_RUN_DEFAULT);
    uv_loop_close(&check);
    if (rc < 0) {
        fprintf(stderr, "postern: %s\n", err);
        config_release(cfg);
        return 1;
    }
    if (test_only) {
        config_release(cfg);
        printf("configuration ok\n");
        return 0;
    }

    signal(SIGPIPE, SIG_IGN);
    log_level = cfg->log_level;
    rc = log_open(cfg->error_log);
    if (rc < 0) {
        fprintf(stderr, "postern: error_log: cannot open %s: %s\n", cfg->error_log, strerror(-rc));
        config_release(cfg);
        return 1;
    }
    if (cfg->user && geteuid() == 0 && cfg->error_log && strcmp(cfg->error_log, "stderr") != 0 &&
        chown(cfg->error_log, (uid_t)cfg->uid, (gid_t)cfg->gid) < 0)
        log_msg(LL_WARN, "cannot give %s to user %s: %s", cfg->error_log, cfg->user, strerror(errno));
    rc = master_run(cfg, argv);
    log_close();
    return rc;
}
