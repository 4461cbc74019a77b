/* listener.c: binds every `listen` entry and hands accepted connections
 * to the session code. */
#include "listener.h"

#include "log.h"
#include "mem.h"
#include "session.h"
#include "status.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct listener {
    uv_tcp_t tcp;
    config_t *cfg;
    const listen_conf_t *conf;
} listener_t;

static listener_t *listeners;
static int nlisteners;

static void on_connection(uv_stream_t *server, int status)
{
    listener_t *l = server->data;
    if (status < 0) {
        log_msg(LL_WARN, "accept on %s failed: %s", l->conf->address, uv_err_name(status));
        return;
    }
    session_accept(server, l->cfg, l->conf);
}

int listeners_start(uv_loop_t *loop, config_t *cfg, char *err, size_t errlen)
{
    listeners = xcalloc(cfg->nlisten, sizeof *listeners);
    for (int i = 0; i < cfg->nlisten; i++) {
        listener_t *l = &listeners[i];
        l->cfg = config_acquire(cfg);
        l->conf = &cfg->listen[i];
        uv_tcp_init(loop, &l->tcp);
        l->tcp.data = l;
        nlisteners++;
        int rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&l->conf->addr, 0);
        /* accepted sockets inherit TCP_NODELAY from the listening one
         * (Linux): one setsockopt per listener instead of per client */
        if (rc == 0)
            rc = uv_tcp_nodelay(&l->tcp, 1);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&l->tcp, 511, on_connection);
        if (rc < 0) {
            snprintf(err, errlen, "listen[%d]: cannot listen on %s: %s", i + 1, l->conf->address, uv_strerror(rc));
            return PT_ERROR;
        }
        log_msg(LL_INFO, "listening on %s (%s)", l->conf->address, l->conf->proto->name);
    }
    return 0;
}

void listeners_use(config_t *cfg)
{
    for (int i = 0; i < nlisteners && i < cfg->nlisten; i++) {
        config_release(listeners[i].cfg);
        listeners[i].cfg = config_acquire(cfg);
        listeners[i].conf = &cfg->listen[i];
    }
}

static void listener_closed(uv_handle_t *h)
{
    listener_t *l = h->data;
    config_release(l->cfg);
    l->cfg = NULL;
    if (--nlisteners == 0) {
        free(listeners);
        listeners = NULL;
    }
}

void listeners_stop(void)
{
    int n = nlisteners;
    for (int i = 0; i < n; i++)
        uv_close((uv_handle_t *)&listeners[i].tcp, listener_closed);
}
