/* upstream.c: resolve and connect to the policy's upstreams in order.
 * The connection has its own small struct because a failed attempt must
 * be closed (and its memory released in the close callback) while the
 * session goes on with the next upstream. */
#include "upstream.h"
#include "mem.h"

#include "log.h"
#include "proxy_proto.h"
#include "session.h"
#include "tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct upstream_conn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_getaddrinfo_t gai;
    session_t *s;          /* NULL once detached from the session */
    session_t *owner;      /* counts this handle: freed only after it closes */
    bool tcp_open;         /* tcp handle initialised (must be closed) */
    bool resolving;        /* a getaddrinfo is in flight */
    tls_conn_t *tls;       /* TLS towards the upstream, when on */
    bool tls_active;
    bool starttls;         /* the handshake follows the protocol's STARTTLS */
    char *raw;             /* one read of ciphertext */
} upstream_conn_t;

#define UPSTREAM_RAW_SIZE 16384

static void conn_free(upstream_conn_t *up)
{
    tls_conn_free(up->tls);
    free(up->raw);
    free(up);
}

static void up_closed(uv_handle_t *h)
{
    upstream_conn_t *up = h->data;
    session_t *owner = up->owner;
    up->tcp_open = false;
    if (!up->resolving)
        conn_free(up);
    session_handle_closed(owner);
}

uv_stream_t *upstream_stream(session_t *s)
{
    return s->up && s->up->tcp_open ? (uv_stream_t *)&s->up->tcp : NULL;
}

void upstream_close(session_t *s)
{
    upstream_conn_t *up = s->up;
    if (!up)
        return;
    s->up = NULL;
    up->s = NULL;
    if (up->tcp_open) {
        up->tcp.data = up; /* the relay may have pointed it elsewhere */
        uv_close((uv_handle_t *)&up->tcp, up_closed);
    }
    else if (!up->resolving)
        conn_free(up);
    s->uin.len = 0;
}

struct tls_conn *upstream_tls(session_t *s)
{
    return s->up && s->up->tls_active ? s->up->tls : NULL;
}

typedef struct up_write {
    uv_write_t req;
    size_t len;
    char *data;
} up_write_t;

static void up_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error on the same stream */
    up_write_t *w = (up_write_t *)req;
    explicit_bzero(w->data, w->len); /* login commands carry the password */
    free(w->data);
    free(w);
}

/* Queues bytes as they go on the wire; takes data. */
static void write_raw(session_t *s, char *data, size_t len)
{
    uv_stream_t *st = upstream_stream(s);
    if (!st || len == 0) {
        free(data);
        return;
    }
    up_write_t *w = xmalloc(sizeof *w);
    w->len = len;
    w->data = data;
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    if (uv_write(&w->req, st, &b, 1, up_written) < 0) {
        free(data);
        free(w);
        session_upstream_failed(s, "write to upstream failed");
    }
}

static void flush_tls(session_t *s)
{
    size_t n;
    char *out = tls_out_take(s->up->tls, &n);
    if (out)
        write_raw(s, out, n);
}

void upstream_write(session_t *s, const void *data, size_t len)
{
    upstream_conn_t *up = s->up;
    if (!up || !up->tcp_open || len == 0)
        return;
    if (up->tls && up->tls_active) {
        if (tls_write(up->tls, data, len) < 0) {
            session_upstream_failed(s, tls_error(up->tls));
            return;
        }
        flush_tls(s);
        return;
    }
    char *copy = xmalloc(len);
    memcpy(copy, data, len);
    write_raw(s, copy, len);
}

static void start_tls(session_t *s)
{
    upstream_conn_t *up = s->up;
    const upstream_t *u = session_upstream(s);
    tls_client_t *cli = config_tls_client((config_t *)s->cfg);
    const char *sni = u->sni ? u->sni : u->host;
    char err[600] = "no TLS client (see tls.upstream_ca)";
    up->tls = cli ? tls_conn_client(cli, sni, u->verify, u->certificate, u->key, err, sizeof err) : NULL;
    if (!up->tls) {
        char why[700];
        snprintf(why, sizeof why, "cannot set up TLS towards the upstream: %s", err);
        session_upstream_failed(s, why);
        return;
    }
    tls_handshake(up->tls); /* the ClientHello */
    flush_tls(s);
}

bool session_upstream_wants_starttls(const session_t *s)
{
    const upstream_t *u = session_upstream(s);
    return u && u->tls == 2 && !(s->up && s->up->tls);
}

void session_upstream_starttls(session_t *s)
{
    if (s->phase != PHASE_UPSTREAM || !s->up || s->up->tls)
        return;
    s->uin.len = 0; /* nothing the upstream sent after its OK counts */
    s->up->starttls = true;
    start_tls(s);
}

static void up_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    upstream_conn_t *up = h->data;
    (void)suggested;
    session_t *s = up->s;
    if (up->tls) {
        if (!up->raw)
            up->raw = xmalloc(UPSTREAM_RAW_SIZE);
        *b = uv_buf_init(up->raw, up->raw ? UPSTREAM_RAW_SIZE : 0);
        return;
    }
    size_t want = s ? buf_room(&s->uin) : 0;
    if (want > 16384)
        want = 16384;
    if (!s || want == 0 || buf_reserve(&s->uin, want) < 0) {
        *b = uv_buf_init(NULL, 0);
        return;
    }
    *b = uv_buf_init(s->uin.data + s->uin.len, (unsigned)want);
}

static void up_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    upstream_conn_t *up = st->data;
    session_t *s = up->s;
    (void)b;
    if (!s || s->phase != PHASE_UPSTREAM)
        return;
    if (nread == UV_ENOBUFS) {
        session_upstream_failed(s, "upstream sent a too long response during login");
        return;
    }
    if (nread < 0) {
        char why[128];
        snprintf(why, sizeof why, "upstream %s during login",
                 nread == UV_EOF ? "closed the connection" : uv_err_name((int)nread));
        session_upstream_failed(s, why);
        return;
    }
    if (!up->tls) {
        s->uin.len += (size_t)nread;
        s->proto->upstream_input(s);
        return;
    }
    if (tls_feed(up->tls, b->base, (size_t)nread) < 0) {
        session_upstream_failed(s, "upstream sent too much TLS data");
        return;
    }
    if (!up->tls_active) {
        int rc = tls_handshake(up->tls);
        flush_tls(s);
        if (rc == PT_AGAIN)
            return;
        if (rc == PT_ERROR) {
            /* never falls back to plaintext: the next upstream, or a temporary failure */
            char why[300];
            snprintf(why, sizeof why, "TLS with the upstream failed: %s", tls_error(up->tls));
            session_upstream_failed(s, why);
            return;
        }
        up->tls_active = true;
        session_log(s, LL_DEBUG, "upstream TLS: %s, %s", tls_protocol(up->tls), tls_cipher(up->tls));
        if (up->starttls)
            s->proto->upstream_tls_ready(s);
        else
            s->proto->upstream_start(s);
        if (s->phase != PHASE_UPSTREAM || s->up != up)
            return;
    }
    for (;;) {
        size_t want = buf_room(&s->uin) < 16384 ? buf_room(&s->uin) : 16384;
        if (want == 0 || buf_reserve(&s->uin, want) < 0) {
            session_upstream_failed(s, "upstream sent a too long response during login");
            return;
        }
        int n = tls_read(up->tls, s->uin.data + s->uin.len, want);
        if (n > 0) {
            s->uin.len += (size_t)n;
            continue;
        }
        if (n == PT_AGAIN)
            break;
        session_upstream_failed(s, n == PT_EOF ? "upstream closed the connection during login" : tls_error(up->tls));
        return;
    }
    s->proto->upstream_input(s);
}

static void up_connected(uv_connect_t *req, int status)
{
    upstream_conn_t *up = req->data;
    session_t *s = up->s;
    if (!s || s->phase != PHASE_UPSTREAM)
        return;
    if (status < 0) {
        char why[160];
        snprintf(why, sizeof why, "connect() to upstream failed (%s)", uv_err_name(status));
        session_upstream_failed(s, why);
        return;
    }
    uv_tcp_nodelay(&up->tcp, 1);
    uv_read_start((uv_stream_t *)&up->tcp, up_alloc, up_read);
    session_log(s, LL_DEBUG, "connected to upstream");
    const upstream_t *u = session_upstream(s);
    if (u->proxy_protocol) { /* first on the wire, before TLS: the upstream learns the client's address */
        char *hdr = xmalloc(PROXY_HEADER_OUT_MAX);
        size_t n = proxy_format(u->proxy_protocol, s->client_ip, s->client_port, s->local_ip, s->local_port, hdr);
        write_raw(s, hdr, n);
        if (s->phase != PHASE_UPSTREAM || s->up != up)
            return;
    }
    if (s->splice) {
        session_upstream_ready(s, NULL, 0);
        return;
    }
    /* The login gets the pre-auth `timeout`, as in nginx. */
    session_set_timeout(s, s->cfg->timeout);
    if (u->tls == 1) { /* implicit TLS: the protocol starts after the handshake */
        start_tls(s);
        return;
    }
    s->proto->upstream_start(s);
}

static void connect_addr(session_t *s, const struct sockaddr *sa)
{
    upstream_conn_t *up = s->up;
    uv_tcp_init(s->loop, &up->tcp);
    up->tcp.data = up;
    up->tcp_open = true;
    up->owner = s;
    s->handles++;
    up->creq.data = up;
    int rc = uv_tcp_connect(&up->creq, &up->tcp, sa, up_connected);
    if (rc < 0) {
        char why[160];
        snprintf(why, sizeof why, "connect() to upstream failed (%s)", uv_err_name(rc));
        session_upstream_failed(s, why);
    }
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    upstream_conn_t *up = req->data;
    up->resolving = false;
    session_t *s = up->s;
    if (!s) {
        if (!up->tcp_open)
            conn_free(up);
        uv_freeaddrinfo(res);
        return;
    }
    if (status < 0 || !res) {
        char why[160];
        snprintf(why, sizeof why, "cannot resolve upstream host (%s)", uv_err_name(status));
        uv_freeaddrinfo(res);
        session_upstream_failed(s, why);
        return;
    }
    /* IPv4 first, as postern.dns.resolve answers */
    struct addrinfo *pick = res;
    for (struct addrinfo *a = res; a; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    connect_addr(s, pick->ai_addr);
    uv_freeaddrinfo(res);
}

void upstream_connect_next(session_t *s)
{
    const upstream_t *u = &s->upstreams[s->upstream_idx++];
    s->phase = PHASE_UPSTREAM;
    s->uin.len = 0;
    snprintf(s->upstream_name, sizeof s->upstream_name, "%s:%d", u->host, u->port);
    /* Connect and login share one budget per upstream: connect_timeout
     * until connected, then the login timeout. */
    session_set_timeout(s, s->cfg->connect_timeout);
    upstream_conn_t *up = xcalloc(1, sizeof *up);
    up->s = s;
    s->up = up;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (uv_ip4_addr(u->host, u->port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(u->host, u->port, (struct sockaddr_in6 *)&ss) == 0) {
        connect_addr(s, (struct sockaddr *)&ss);
        return;
    }
    char port[8];
    snprintf(port, sizeof port, "%d", u->port);
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC };
    up->gai.data = up;
    up->resolving = true;
    if (uv_getaddrinfo(s->loop, &up->gai, resolved, u->host, port, &hints) < 0) {
        up->resolving = false;
        session_upstream_failed(s, "cannot resolve upstream host");
    }
}
