/* listener.c: the listening sockets.
 *
 * The master binds every `listen` address itself (socket, bind, listen)
 * before any worker exists, so ports below 1024 work before privileges
 * are dropped, and keeps each socket for as long as the configuration
 * lists its address: a reload reuses it, an upgrade passes it to the new
 * binary. Every worker inherits the same sockets and accepts from them
 * with libuv (uv_tcp_open). One socket shared by the workers, rather than
 * one SO_REUSEPORT socket per worker, was measured to spread connections
 * as evenly (docs/process-model.md), and it keeps no connection waiting in
 * the queue of a worker that has just died. */
#include "listener.h"

#include "log.h"
#include "mem.h"
#include "session.h"
#include "status.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- master: the bound sockets ---- */

typedef struct listen_socket {
    struct sockaddr_storage addr;
    int fd;
    bool claimed; /* by an entry of the configuration being prepared */
} listen_socket_t;

static listen_socket_t *socks;
static int nsocks;

static socklen_t addr_len(const struct sockaddr_storage *a)
{
    return a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
}

static int bind_socket(const struct sockaddr_storage *addr, char *why, size_t whylen)
{
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, whylen, "%s", strerror(errno));
        return -1;
    }
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    /* accepted sockets inherit TCP_NODELAY from the listening one
     * (Linux): one setsockopt per listener instead of per client */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    if (bind(fd, (const struct sockaddr *)addr, addr_len(addr)) < 0 || listen(fd, 511) < 0) {
        snprintf(why, whylen, "%s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void add_socket(const struct sockaddr_storage *addr, int fd)
{
    socks = xrealloc(socks, (size_t)(nsocks + 1) * sizeof *socks);
    socks[nsocks++] = (listen_socket_t){ .addr = *addr, .fd = fd };
}

static void remove_socket(int i)
{
    close(socks[i].fd);
    socks[i] = socks[--nsocks];
}

int listen_sockets_prepare(const config_t *cfg, int *fds, char *err, size_t errlen)
{
    int old = nsocks;
    for (int i = 0; i < nsocks; i++)
        socks[i].claimed = false;
    for (int i = 0; i < cfg->nlisten; i++) {
        const listen_conf_t *l = &cfg->listen[i];
        int found = -1;
        for (int j = 0; j < nsocks && found < 0; j++)
            if (same_addr(&socks[j].addr, &l->addr))
                found = j;
        if (found >= 0 && socks[found].claimed) {
            snprintf(err, errlen, "listen[%d]: %s is listed twice", i + 1, l->address);
            goto fail;
        }
        if (found < 0) {
            char why[200];
            int fd = bind_socket(&l->addr, why, sizeof why);
            if (fd < 0) {
                snprintf(err, errlen, "listen[%d]: cannot listen on %s: %s", i + 1, l->address, why);
                goto fail;
            }
            add_socket(&l->addr, fd);
            found = nsocks - 1;
            log_msg(LL_INFO, "listening on %s (%s)", l->address, l->proto->name);
        }
        socks[found].claimed = true;
        fds[i] = socks[found].fd;
    }
    return 0;
fail:
    while (nsocks > old)
        remove_socket(nsocks - 1);
    return PT_ERROR;
}

void listen_sockets_commit(const config_t *cfg)
{
    for (int i = 0; i < nsocks;) {
        bool used = false;
        for (int j = 0; j < cfg->nlisten && !used; j++)
            used = same_addr(&socks[i].addr, &cfg->listen[j].addr);
        if (used) {
            i++;
            continue;
        }
        char ip[64];
        int port = 0;
        conn_addr_text(&socks[i].addr, ip, sizeof ip, &port);
        log_msg(LL_INFO, "no longer listening on %s port %d", ip, port);
        remove_socket(i);
    }
}

void listen_sockets_close_all(void)
{
    while (nsocks > 0)
        remove_socket(nsocks - 1);
    free(socks);
    socks = NULL;
}

int listen_sockets_inherit(const char *list)
{
    for (const char *p = list; *p;) {
        char *end;
        long fd = strtol(p, &end, 10);
        if (end == p || fd < 3 || fd > 65535)
            return PT_ERROR;
        struct sockaddr_storage addr;
        socklen_t len = sizeof addr;
        int type = 0;
        socklen_t tlen = sizeof type;
        if (getsockname((int)fd, (struct sockaddr *)&addr, &len) < 0 ||
            getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_STREAM)
            return PT_ERROR;
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
        add_socket(&addr, (int)fd);
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return PT_ERROR;
    }
    return 0;
}

void listen_sockets_export(char *out, size_t outlen)
{
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; i < nsocks && n + 12 < outlen; i++) {
        fcntl(socks[i].fd, F_SETFD, 0);
        n += (size_t)snprintf(out + n, outlen - n, "%s%d", i ? "," : "", socks[i].fd);
    }
}

void listen_sockets_close_except(const int *keep, int nkeep)
{
    for (int i = 0; i < nsocks; i++) {
        bool kept = false;
        for (int j = 0; j < nkeep && !kept; j++)
            kept = keep[j] == socks[i].fd;
        if (!kept)
            close(socks[i].fd);
    }
}

/* ---- worker: accepting ---- */

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

int listeners_start(uv_loop_t *loop, config_t *cfg, const int *fds, char *err, size_t errlen)
{
    listeners = xcalloc(cfg->nlisten ? cfg->nlisten : 1, sizeof *listeners);
    for (int i = 0; i < cfg->nlisten; i++) {
        listener_t *l = &listeners[i];
        l->cfg = config_acquire(cfg);
        l->conf = &cfg->listen[i];
        uv_tcp_init(loop, &l->tcp);
        l->tcp.data = l;
        nlisteners++;
        int rc = uv_tcp_open(&l->tcp, fds[i]);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&l->tcp, 511, on_connection);
        if (rc < 0) {
            snprintf(err, errlen, "listen[%d]: cannot accept on %s: %s", i + 1, l->conf->address, uv_strerror(rc));
            return PT_ERROR;
        }
    }
    return 0;
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
    if (n == 0 && listeners) {
        free(listeners);
        listeners = NULL;
    }
    for (int i = 0; i < n; i++)
        if (!uv_is_closing((uv_handle_t *)&listeners[i].tcp))
            uv_close((uv_handle_t *)&listeners[i].tcp, listener_closed);
}
