/* conn.c: a TCP connection with optional TLS (see conn.h).
 *
 * Plaintext sockets read straight into the handler's buffer. TLS sockets
 * read ciphertext into `raw`, feed it to the TLS context, run the
 * handshake while it is not done, then decrypt into the handler's buffer
 * (deliver). Everything the TLS context wants to send (handshake records,
 * alerts, encrypted data, close_notify) is flushed right after the call
 * that produced it, so the context never holds output across callbacks. */
#include "conn.h"

#include "mem.h"
#include "pool.h"
#include "status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONN_RAW_SIZE 16384 /* one read of ciphertext */

typedef struct write_req {
    uv_write_t req;
    conn_t *c;
    size_t len;
    char *data;      /* ciphertext from the TLS context, or `copy` */
    char copy[];     /* a plaintext copy: wiped after (replies and logins may hold secrets) */
} write_req_t;

static void deliver(conn_t *c);

/* The handler's last buffer() got no bytes. */
static void unused(conn_t *c)
{
    if (c->h && !c->closing && c->h->release)
        c->h->release(c);
}

/* The peer is done sending: said once. */
static void tell_eof(conn_t *c)
{
    if (c->eof_told || c->closing || !c->h)
        return;
    c->eof_told = true;
    c->h->eof(c);
}

/* The long form of an error, kept until the next one (allocated only
 * when there is one: most connections never fail). */
static void set_detail(conn_t *c, const char *text)
{
    char *old = c->detail; /* text may be the old detail */
    c->detail = xstrdup(text);
    free(old);
}

/* The connection failed: tell the handler once, with the reason. */
static void fail(conn_t *c, const char *why, const char *detail)
{
    set_detail(c, detail ? detail : why);
    const conn_handler_t *h = c->h;
    if (!h || c->closing)
        return;
    conn_read_stop(c);
    h->error(c, why);
}

/* The same, for a failure of the TLS layer itself (not of the socket). */
static void fail_tls(conn_t *c, const char *why, const char *detail)
{
    c->tls_failed = true;
    fail(c, why, detail);
}

const char *conn_error_detail(const conn_t *c)
{
    return c->detail ? c->detail : "";
}

bool conn_failed_in_tls(const conn_t *c)
{
    return c->tls_failed;
}

void conn_init(conn_t *c, uv_loop_t *loop)
{
    memset(c, 0, sizeof *c);
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c;
}

void conn_set_handler(conn_t *c, const conn_handler_t *h, void *data)
{
    if (c->closing)
        return;
    c->h = h;
    c->data = data;
}

int conn_accept(conn_t *c, uv_stream_t *server)
{
    /* TCP_NODELAY (mail is command and response: no Nagle waits) comes
     * from the listening socket, which listener.c sets */
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0)
        return PT_ERROR;
    return PT_OK;
}

int conn_addr_text(const struct sockaddr_storage *ss, char *ip, size_t iplen, int *port)
{
    ip[0] = '\0';
    *port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        uv_ip4_name(a, ip, iplen);
        *port = ntohs(a->sin_port);
        return PT_OK;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, ip, iplen);
        *port = ntohs(a->sin6_port);
        return PT_OK;
    }
    return PT_ERROR;
}

static int sock_addr(conn_t *c, int (*get)(const uv_tcp_t *, struct sockaddr *, int *), char *ip, size_t iplen,
                     int *port)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (get(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return PT_ERROR;
    return conn_addr_text(&ss, ip, iplen, port);
}

int conn_peer_addr(conn_t *c, struct sockaddr_storage *ss)
{
    int len = sizeof *ss;
    memset(ss, 0, sizeof *ss);
    return uv_tcp_getpeername(&c->tcp, (struct sockaddr *)ss, &len) == 0 ? PT_OK : PT_ERROR;
}

int conn_local(conn_t *c, char *ip, size_t iplen, int *port)
{
    return sock_addr(c, uv_tcp_getsockname, ip, iplen, port);
}

/* ---- writing ---- */

static void write_req_free(write_req_t *w)
{
    if (w->data == w->copy)
        explicit_bzero(w->copy, w->len);
    else
        free(w->data);
    free(w);
}

static void write_done(uv_write_t *req, int status)
{
    write_req_t *w = (write_req_t *)req;
    conn_t *c = w->c;
    c->queued -= w->len;
    write_req_free(w);
    if (c->closing || !c->h)
        return;
    if (status < 0) {
        fail(c, uv_err_name(status), NULL);
        return;
    }
    if (c->h->written)
        c->h->written(c);
}

/* Hands w to libuv; frees it when that fails. */
static int queue(conn_t *c, write_req_t *w)
{
    uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
    w->c = c;
    c->queued += w->len;
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, write_done);
    if (rc < 0) {
        c->queued -= w->len;
        write_req_free(w);
        set_detail(c, uv_err_name(rc));
        return PT_ERROR;
    }
    return PT_OK;
}

/* Writes what the socket takes at once, when nothing is queued before
 * it: most replies and relayed chunks go out here, without a copy, a
 * write request, or the epoll_ctl that libuv makes after a queued write
 * completes. *done: the bytes written. */
static int send_now(conn_t *c, const char *data, size_t len, size_t *done)
{
    *done = 0;
    if (c->queued > 0)
        return PT_OK;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n >= 0) {
        *done = (size_t)n;
        return PT_OK;
    }
    if (n == UV_EAGAIN)
        return PT_OK;
    set_detail(c, uv_err_name(n));
    return PT_ERROR;
}

/* Sends what the TLS context produced: what the socket takes now from
 * the context's own buffer, a copy of the rest queued. */
static int flush_tls(conn_t *c)
{
    size_t n, done = 0;
    const char *out = tls_out_peek(c->tls, &n);
    if (n == 0)
        return PT_OK;
    if (send_now(c, out, n, &done) < 0)
        return PT_ERROR;
    if (done < n) {
        write_req_t *w = xmalloc(sizeof *w);
        w->len = n - done;
        w->data = xmalloc(w->len);
        memcpy(w->data, out + done, w->len);
        tls_out_consume(c->tls, n);
        return queue(c, w);
    }
    tls_out_consume(c->tls, n);
    return PT_OK;
}

int conn_write(conn_t *c, const void *data, size_t len)
{
    if (c->closing || len == 0)
        return PT_OK;
    if (c->tls && c->tls_up) {
        if (tls_write(c->tls, data, len) < 0) {
            set_detail(c, tls_error(c->tls));
            return PT_ERROR;
        }
        return flush_tls(c);
    }
    size_t done = 0;
    if (send_now(c, data, len, &done) < 0)
        return PT_ERROR;
    if (done == len)
        return PT_OK;
    write_req_t *w = xmalloc(sizeof *w + (len - done));
    memcpy(w->copy, (const char *)data + done, len - done);
    w->data = w->copy;
    w->len = len - done;
    return queue(c, w);
}

static void zwritten(uv_write_t *req, int status)
{
    conn_t *c = req->data;
    c->zbusy = false;
    c->queued -= c->zlen;
    if (c->closing || !c->h)
        return;
    c->zdone(c, status);
}

int conn_write_ref(conn_t *c, const char *data, size_t len, void (*done)(conn_t *c, int status))
{
    if (c->closing)
        return PT_ERROR;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)len)
        return PT_OK;
    if (n < 0 && n != UV_EAGAIN) {
        set_detail(c, uv_err_name(n));
        return PT_ERROR;
    }
    if (n < 0)
        n = 0;
    b = uv_buf_init((char *)data + n, (unsigned)(len - (size_t)n));
    c->zreq.data = c;
    c->zdone = done;
    c->zbusy = true;
    c->zlen = b.len;
    c->queued += c->zlen;
    int rc = uv_write(&c->zreq, (uv_stream_t *)&c->tcp, &b, 1, zwritten);
    if (rc < 0) {
        c->zbusy = false;
        c->queued -= c->zlen;
        set_detail(c, uv_err_name(rc));
        return PT_ERROR;
    }
    return PT_AGAIN;
}

size_t conn_queued(const conn_t *c)
{
    return c->queued;
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    conn_t *c = h->data;
    (void)suggested;
    if (c->tls) { /* ciphertext: our own buffer, the plaintext goes to the handler in deliver() */
        if (!c->raw)
            c->raw = pool_get(pool_for(CONN_RAW_SIZE));
        *b = uv_buf_init(c->raw, CONN_RAW_SIZE);
        return;
    }
    size_t room = 0;
    char *p = c->h && !c->closing ? c->h->buffer(c, &room) : NULL;
    *b = uv_buf_init(p, p ? (unsigned)room : 0);
}

/* ---- the handshake, on libuv's thread pool ----
 *
 * A full handshake step costs milliseconds of public-key crypto with
 * mbedTLS 2.28 (ECDHE, the signature), during which a loop that ran it
 * would serve nobody. So each step runs on a pool thread: reading stops
 * while it runs (nothing else touches the TLS context then), the output
 * is flushed and reading resumes when it is back on the loop. mbedTLS is
 * built with MBEDTLS_THREADING_C: the shared random generator, session
 * cache and ticket keys lock; configs and certificates are only read. */

typedef struct hs_job {
    uv_work_t req;
    conn_t *c;
    int rc;
    struct hs_job *next;  /* waiting for a thread */
} hs_job_t;

/* Steps in flight at once: one CPU is the loop's, the others (at least
 * one) the handshakes'. More threads than that would only take CPU time
 * from the loop, and relayed bytes would wait (measured: FETCH p99 went
 * up to 4x under 150 handshakes/s with libuv's four threads on one CPU). */
static int hs_running, hs_limit;
static hs_job_t *hs_waiting, **hs_waiting_tail = &hs_waiting;

static void finish_close(conn_t *c);

static void hs_run(uv_work_t *req)
{
    hs_job_t *j = req->data;
    j->rc = tls_handshake(j->c->tls);
}

static void hs_step_done(conn_t *c, int rc)
{
    if (flush_tls(c) < 0) {
        fail(c, "write failed", NULL);
        return;
    }
    if (rc == PT_AGAIN) {
        if (c->eof_seen) /* gone in the middle of the handshake */
            tell_eof(c);
        else if (c->hs_resume)
            conn_read_start(c);
        return;
    }
    if (rc != PT_OK) {
        fail_tls(c, "TLS handshake failed", tls_error(c->tls));
        return;
    }
    c->tls_up = true;
    if (c->h && c->h->tls_ready)
        c->h->tls_ready(c);
    if (c->closing || !c->h)
        return;
    if (c->hs_resume)
        conn_read_start(c); /* delivers what arrived with the last flight, too */
    else
        deliver(c);
}

static void hs_after(uv_work_t *req, int status);

/* Hands waiting steps to the pool while there is room. */
static void hs_dispatch(uv_loop_t *loop)
{
    if (hs_limit == 0) {
        unsigned n = uv_available_parallelism();
        hs_limit = n > 1 ? (int)n - 1 : 1;
    }
    while (hs_waiting && hs_running < hs_limit) {
        hs_job_t *j = hs_waiting;
        hs_waiting = j->next;
        if (!hs_waiting)
            hs_waiting_tail = &hs_waiting;
        hs_running++;
        if (uv_queue_work(loop, &j->req, hs_run, hs_after) != 0) { /* cannot happen with a live loop */
            j->rc = tls_handshake(j->c->tls);
            hs_after(&j->req, 0);
        }
    }
}

static void hs_after(uv_work_t *req, int status)
{
    hs_job_t *j = req->data;
    conn_t *c = j->c;
    int rc = status < 0 ? PT_ERROR : j->rc;
    uv_loop_t *loop = c->tcp.loop;
    free(j);
    hs_running--;
    hs_dispatch(loop);
    c->hs_busy = false;
    if (c->close_deferred) {
        finish_close(c);
        return;
    }
    if (c->closing || !c->h)
        return;
    hs_step_done(c, rc);
}

/* The handshake, then the plaintext, after new ciphertext. */
static void tls_progress(conn_t *c)
{
    if (c->tls_up) {
        deliver(c);
        return;
    }
    if (c->hs_busy) /* the running step reads what was fed */
        return;
    hs_job_t *j = xcalloc(1, sizeof *j);
    j->req.data = j;
    j->c = c;
    c->hs_resume = c->reading;
    conn_read_stop(c);
    c->hs_busy = true;
    *hs_waiting_tail = j;
    hs_waiting_tail = &j->next;
    hs_dispatch(c->tcp.loop);
}

/* Decrypts into the handler's buffer while it has room. A call from
 * inside a handler (conn_read_start in a data callback) only asks the
 * running loop to go on: handlers are never re-entered. */
static void deliver(conn_t *c)
{
    if (c->delivering) {
        c->redeliver = true;
        return;
    }
    c->delivering = true;
    do {
        c->redeliver = false;
        while (!c->closing && c->h) {
            size_t room = 0;
            char *p = c->h->buffer(c, &room);
            if (room == 0) {
                /* full: read no more ciphertext until the owner makes room */
                if (tls_pending(c->tls))
                    conn_read_stop(c);
                else if (c->eof_seen)
                    tell_eof(c);
                break;
            }
            int n = tls_read(c->tls, p, room);
            if (n > 0) {
                c->h->data(c, (size_t)n);
                continue;
            }
            unused(c);
            if (flush_tls(c) < 0) { /* mbedTLS may have answered (an alert) */
                fail(c, "write failed", NULL);
                break;
            }
            if (n == PT_AGAIN) {
                if (c->eof_seen) /* the socket ended without close_notify: nothing more will come */
                    tell_eof(c);
                break;
            }
            if (n == PT_EOF) {
                conn_read_stop(c);
                c->eof_seen = true;
                tell_eof(c);
            } else {
                fail_tls(c, "TLS error", tls_error(c->tls));
            }
            break;
        }
    } while (c->redeliver && !c->closing && c->h);
    c->delivering = false;
}

static void on_read_plain(conn_t *c, ssize_t nread)
{
    if (nread > 0) {
        c->h->data(c, (size_t)nread);
        return;
    }
    unused(c);
    if (nread == 0 || c->closing || !c->h)
        return;
    if (nread == UV_EOF) {
        c->reading = false; /* libuv stopped reading */
        c->eof_seen = true;
        tell_eof(c);
        return;
    }
    fail(c, uv_err_name((int)nread), NULL);
}

static void on_read_tls(conn_t *c, ssize_t nread, const char *data)
{
    if (nread > 0) {
        conn_tls_input(c, data, (size_t)nread);
        return;
    }
    if (nread == 0)
        return;
    if (nread == UV_EOF) {
        c->reading = false;
        c->eof_seen = true;
        tls_progress(c); /* what TLS still holds comes first */
        return;
    }
    fail(c, uv_err_name((int)nread), NULL);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    conn_t *c = st->data;
    if (nread == UV_ENOBUFS) { /* the handler has no room: wait for conn_read_start */
        conn_read_stop(c);
        return;
    }
    if (c->raw && b->base == c->raw) { /* ciphertext: fed (copied) into TLS, the block goes back */
        char *raw = c->raw;
        c->raw = NULL;
        if (!c->closing && c->h)
            on_read_tls(c, nread, raw);
        pool_put(pool_for(CONN_RAW_SIZE), raw);
        return;
    }
    if (c->closing || !c->h)
        return;
    on_read_plain(c, nread);
}

void conn_tls_input(conn_t *c, const char *data, size_t len)
{
    /* never while a handshake step runs: reading is stopped then, and the
     * owner feeds only what it read before starting TLS */
    if (tls_feed(c->tls, data, len) < 0) {
        fail_tls(c, "TLS input too large", NULL);
        return;
    }
    tls_progress(c);
}

void conn_read_start(conn_t *c)
{
    if (c->closing || !c->h)
        return;
    if (c->hs_busy) { /* a handshake step owns the TLS context: read when it is back */
        c->hs_resume = true;
        return;
    }
    if (c->tls && c->tls_up && (tls_pending(c->tls) || (c->eof_seen && !c->eof_told)))
        deliver(c);
    if (c->closing || c->reading || c->eof_seen)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = true;
}

void conn_read_stop(conn_t *c)
{
    if (c->hs_busy)
        c->hs_resume = false;
    if (!c->reading)
        return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
}

/* ---- TLS ---- */

int conn_tls_server(conn_t *c, tls_server_t *srv, char *err, size_t errlen)
{
    c->tls = tls_conn_server(srv);
    if (!c->tls) {
        snprintf(err, errlen, "cannot set up TLS");
        return PT_ERROR;
    }
    c->tls_up = false;
    return PT_OK;
}

int conn_tls_client(conn_t *c, tls_client_t *cli, const char *sni, bool verify, const char *cert, const char *key,
                    char *err, size_t errlen)
{
    c->tls = tls_conn_client(cli, sni, verify, cert, key, err, errlen);
    if (!c->tls)
        return PT_ERROR;
    c->tls_up = false;
    tls_handshake(c->tls); /* the ClientHello */
    if (flush_tls(c) < 0) {
        snprintf(err, errlen, "%s", conn_error_detail(c));
        return PT_ERROR;
    }
    return PT_OK;
}

bool conn_tls_active(const conn_t *c)
{
    return c->tls && c->tls_up;
}

tls_conn_t *conn_tls(const conn_t *c)
{
    return c->tls;
}

/* ---- ending ---- */

void conn_close_notify(conn_t *c)
{
    if (c->closing || !c->tls || !c->tls_up)
        return;
    tls_close_notify(c->tls);
    flush_tls(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn_t *c = req->data;
    (void)status;
    if (c->closing || !c->h || !c->shutdown_done)
        return;
    c->shutdown_done(c);
}

int conn_shutdown(conn_t *c, void (*done)(conn_t *c))
{
    if (c->closing || c->shut)
        return PT_OK;
    c->shut = true;
    conn_close_notify(c);
    c->sreq.data = c;
    c->shutdown_done = done;
    int rc = uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown);
    if (rc < 0) {
        set_detail(c, uv_err_name(rc));
        return PT_ERROR;
    }
    return PT_OK;
}

static void finish_close(conn_t *c)
{
    free(c->detail);
    c->detail = NULL;
    tls_conn_free(c->tls);
    c->tls = NULL;
    if (c->raw)
        pool_put(pool_for(CONN_RAW_SIZE), c->raw);
    c->raw = NULL;
    if (c->closed)
        c->closed(c);
}

static void on_close(uv_handle_t *h)
{
    conn_t *c = h->data;
    if (c->hs_busy) { /* a pool thread still uses the TLS context: hs_after finishes */
        c->close_deferred = true;
        return;
    }
    finish_close(c);
}

void conn_close(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->h = NULL;
    c->reading = false;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}
