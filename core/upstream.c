/* upstream.c: resolve and connect to one upstream, and send it a PROXY
 * header when asked (TLS, implicit or STARTTLS, is the login's). The connection has its
 * own allocation because a failed attempt must be closed (and freed in
 * the close callback, or once a running getaddrinfo returns) while its
 * owner goes on with the next upstream. */
#include "upstream.h"

#include "mem.h"
#include "status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct upstream_conn {
    conn_t conn;
    uv_getaddrinfo_t gai;
    uv_connect_t creq;
    upstream_params_t p;
    char *proxy_header;
    bool opened;           /* conn_init done: it must be closed */
    bool resolving;        /* a getaddrinfo is in flight */
    bool detached;         /* the owner closed it: no more events */
    bool connected;        /* `connected` was told */
};

void upstreams_free(upstream_t *u, int n)
{
    for (int i = 0; i < n; i++) {
        free(u[i].host);
        free(u[i].user);
        free(u[i].auth);
        free(u[i].sni);
        free(u[i].certificate);
        free(u[i].key);
        str_wipe_free(&u[i].password);
    }
    free(u);
}

static void uc_free(upstream_conn_t *uc)
{
    free(uc->proxy_header);
    free(uc);
}

static void uc_closed(conn_t *c)
{
    upstream_conn_t *uc = (upstream_conn_t *)c;
    uc->opened = false;
    if (!uc->resolving)
        uc_free(uc);
}

static void failed(upstream_conn_t *uc, const char *why)
{
    if (!uc->detached)
        uc->p.ev->failed(uc->p.owner, why);
}

static void connected(upstream_conn_t *uc)
{
    uc->connected = true;
    uc->p.ev->connected(uc->p.owner, &uc->conn);
}

static void on_connect(uv_connect_t *req, int status)
{
    upstream_conn_t *uc = req->data;
    if (uc->detached)
        return;
    if (status < 0) {
        char why[160];
        snprintf(why, sizeof why, "connect() to upstream failed (%s)", uv_err_name(status));
        failed(uc, why);
        return;
    }
    uv_tcp_nodelay(&uc->conn.tcp, 1);
    /* first on the wire, before TLS: the upstream learns the client's address */
    if (uc->proxy_header && conn_write(&uc->conn, uc->proxy_header, uc->p.proxy_header_len) < 0) {
        failed(uc, "write to upstream failed");
        return;
    }
    connected(uc);
}

static int connect_addr(upstream_conn_t *uc, uv_loop_t *loop, const struct sockaddr *sa, char *err, size_t errlen)
{
    conn_init(&uc->conn, loop);
    uc->conn.closed = uc_closed;
    uc->opened = true;
    uc->creq.data = uc;
    int rc = uv_tcp_connect(&uc->creq, &uc->conn.tcp, sa, on_connect);
    if (rc < 0) {
        snprintf(err, errlen, "connect() to upstream failed (%s)", uv_err_name(rc));
        return PT_ERROR;
    }
    return PT_OK;
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    upstream_conn_t *uc = req->data;
    uc->resolving = false;
    if (uc->detached) {
        uv_freeaddrinfo(res);
        if (!uc->opened)
            uc_free(uc);
        return;
    }
    char why[160];
    if (status < 0 || !res) {
        snprintf(why, sizeof why, "cannot resolve upstream host (%s)", uv_err_name(status));
        uv_freeaddrinfo(res);
        failed(uc, why);
        return;
    }
    /* IPv4 first, as postern.dns.resolve answers */
    struct addrinfo *pick = res;
    for (struct addrinfo *a = res; a; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    int rc = connect_addr(uc, req->loop, pick->ai_addr, why, sizeof why);
    uv_freeaddrinfo(res);
    if (rc < 0)
        failed(uc, why);
}

upstream_conn_t *upstream_connect(uv_loop_t *loop, const upstream_params_t *p, char *err, size_t errlen)
{
    const upstream_t *u = p->u;
    upstream_conn_t *uc = xcalloc(1, sizeof *uc);
    uc->p = *p;
    if (u->proxy_protocol && p->proxy_header) {
        uc->proxy_header = xmalloc(p->proxy_header_len);
        memcpy(uc->proxy_header, p->proxy_header, p->proxy_header_len);
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (uv_ip4_addr(u->host, u->port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(u->host, u->port, (struct sockaddr_in6 *)&ss) == 0) {
        if (connect_addr(uc, loop, (struct sockaddr *)&ss, err, errlen) < 0) {
            upstream_close(uc);
            return NULL;
        }
        return uc;
    }
    char port[8];
    snprintf(port, sizeof port, "%d", u->port);
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC };
    uc->gai.data = uc;
    uc->resolving = true;
    if (uv_getaddrinfo(loop, &uc->gai, resolved, u->host, port, &hints) < 0) {
        uc->resolving = false;
        snprintf(err, errlen, "cannot resolve upstream host");
        upstream_close(uc);
        return NULL;
    }
    return uc;
}

conn_t *upstream_conn(upstream_conn_t *uc)
{
    return uc && uc->connected ? &uc->conn : NULL;
}

void upstream_close(upstream_conn_t *uc)
{
    if (!uc || uc->detached)
        return;
    uc->detached = true;
    if (uc->opened)
        conn_close(&uc->conn);
    else if (!uc->resolving)
        uc_free(uc);
}
