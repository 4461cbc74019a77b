/* relay.c: the proxied phase, bytes both ways with bounded memory.
 *
 * Plaintext to plaintext (the common case) costs no copy: a read fills
 * the direction's buffer, we try to write it at once, and if the peer
 * cannot take it all the rest is queued from that same buffer while
 * reading that side pauses until the write completes. When either side
 * speaks TLS, bytes are decrypted into (or encrypted from) the
 * direction's buffer and queued; reading pauses while the queue towards
 * the other side is above a high-water mark, and resumes below a low one.
 * Memory per session is fixed either way. EOF on one side is passed on as
 * a half-close; the upstream closing ends the session. */
#include "relay.h"
#include "mem.h"

#include "log.h"
#include "session.h"
#include "tls.h"
#include "upstream.h"

#include <stdlib.h>
#include <string.h>

#define QUEUE_HIGH (256 * 1024)
#define QUEUE_LOW (64 * 1024)

typedef struct relay_dir {
    struct relay *r;
    uv_stream_t *src, *dst;
    tls_conn_t *src_tls, *dst_tls;
    char *buf;          /* reads land here */
    char *plain;        /* decrypted bytes, when src is TLS */
    size_t size;
    uv_write_t wreq;    /* the zero-copy write of buf */
    uv_shutdown_t sreq;
    bool writing;       /* buf is queued on dst: src is paused */
    bool paused;        /* dst's queue is too long: src is paused */
    bool eof;           /* src said EOF */
    bool shut;          /* dst was shut down */
    uint64_t *count;
} relay_dir_t;

typedef struct relay {
    session_t *s;
    relay_dir_t up;     /* client -> upstream */
    relay_dir_t down;   /* upstream -> client */
    uint64_t last_active;
    uint64_t timeout_ms;
} relay_t;

typedef struct copy_write {
    uv_write_t req;
    relay_dir_t *d;     /* the direction whose dst this goes to */
    char *data;
} copy_write_t;

static session_t *session_of(relay_dir_t *d)
{
    return d->r->s;
}

static relay_dir_t *other(relay_dir_t *d)
{
    return d == &d->r->up ? &d->r->down : &d->r->up;
}

static void relay_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    relay_dir_t *d = h->data;
    (void)suggested;
    *b = uv_buf_init(d->buf, (unsigned)d->size);
}

/* The upstream closing ends the session once its last bytes reached the
 * client (as nginx does: a mail server that closed has nothing more to
 * say). The client closing only half-closes towards the upstream, which
 * may still answer what the client sent last. */
static void finish_if_done(relay_t *r)
{
    if (!r->down.eof || r->down.writing || uv_stream_get_write_queue_size(r->down.dst) > 0)
        return;
    if (r->s->client_queued == 0)
        session_close(r->s, "proxied session done");
    else
        session_quit(r->s);
}

static void shut_done(uv_shutdown_t *req, int status)
{
    (void)status;
    relay_dir_t *d = req->data;
    if (session_of(d)->phase == PHASE_RELAY)
        finish_if_done(d->r);
}

static void relay_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);
static void copy_written(uv_write_t *req, int status);

static void pass_eof(relay_dir_t *d)
{
    if (d->shut || d->writing)
        return;
    d->shut = true;
    if (d->dst_tls) {
        tls_close_notify(d->dst_tls);
        size_t n;
        char *out = tls_out_take(d->dst_tls, &n);
        if (out) {
            copy_write_t *w = xmalloc(sizeof *w);
            w->d = NULL; /* nothing to resume */
            w->data = out;
            uv_buf_t b = uv_buf_init(out, (unsigned)n);
            if (uv_write(&w->req, d->dst, &b, 1, copy_written) < 0) {
                free(out);
                free(w);
            }
        }
    }
    d->sreq.data = d;
    if (uv_shutdown(&d->sreq, d->dst, shut_done) < 0)
        session_close(session_of(d), "shutdown failed");
}

static void src_eof(relay_dir_t *d)
{
    d->eof = true;
    uv_read_stop(d->src);
    pass_eof(d);
    finish_if_done(d->r);
}

static void pump(relay_dir_t *d);

/* A queued copy went out: resume the source once the queue is short. */
static void copy_written(uv_write_t *req, int status)
{
    copy_write_t *w = (copy_write_t *)req;
    relay_dir_t *d = w->d;
    free(w->data);
    free(w);
    if (!d)
        return;
    session_t *s = session_of(d);
    if (s->phase != PHASE_RELAY)
        return;
    if (status < 0) {
        session_close(s, d == &d->r->up ? "upstream write failed" : "client write failed");
        return;
    }
    if (d->eof) {
        finish_if_done(d->r);
        return;
    }
    if (d->paused && uv_stream_get_write_queue_size(d->dst) < QUEUE_LOW) {
        d->paused = false;
        uv_read_start(d->src, relay_alloc, relay_read);
        if (d->src_tls)
            pump(d); /* decrypted bytes may wait inside the TLS context */
    }
}

/* Queues a copy (or takes ownership of `owned`) towards d's dst. */
static void queue_write(relay_dir_t *d, const char *data, size_t len, char *owned)
{
    copy_write_t *w = xmalloc(sizeof *w);
    w->d = d;
    if (owned) {
        w->data = owned;
    } else {
        w->data = xmalloc(len);
        memcpy(w->data, data, len);
    }
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, d->dst, &b, 1, copy_written) < 0) {
        free(w->data);
        free(w);
        session_close(session_of(d), "write failed");
        return;
    }
    if (uv_stream_get_write_queue_size(d->dst) > QUEUE_HIGH && !d->paused) {
        d->paused = true;
        uv_read_stop(d->src);
    }
}

static void relay_written(uv_write_t *req, int status)
{
    relay_dir_t *d = req->data;
    session_t *s = session_of(d);
    d->writing = false;
    if (s->phase != PHASE_RELAY)
        return;
    if (status < 0) {
        session_close(s, d == &d->r->up ? "upstream write failed" : "client write failed");
        return;
    }
    if (d->eof) {
        pass_eof(d);
        finish_if_done(d->r);
        return;
    }
    uv_read_start(d->src, relay_alloc, relay_read);
}

/* Plaintext bytes from d's source, to its destination. */
static void deliver(relay_dir_t *d, const char *data, size_t len)
{
    session_t *s = session_of(d);
    *d->count += (uint64_t)len;
    d->r->last_active = uv_now(s->loop);
    if (d->dst_tls) {
        if (tls_write(d->dst_tls, data, len) < 0) {
            session_log(s, LL_INFO, "%s", tls_error(d->dst_tls));
            session_close(s, "TLS error");
            return;
        }
        size_t n;
        char *out = tls_out_take(d->dst_tls, &n);
        if (out)
            queue_write(d, NULL, n, out);
        return;
    }
    uv_buf_t out = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write(d->dst, &out, 1);
    if (n == (int)len)
        return;
    if (n < 0 && n != UV_EAGAIN) {
        session_close(s, d == &d->r->up ? "upstream write failed" : "client write failed");
        return;
    }
    if (n < 0)
        n = 0;
    if (data != d->buf) { /* decrypted bytes: queue a copy */
        queue_write(d, data + n, len - (size_t)n, NULL);
        return;
    }
    /* the zero-copy path: write the rest from buf, pause until done */
    out = uv_buf_init(d->buf + n, (unsigned)(len - (size_t)n));
    d->wreq.data = d;
    d->writing = true;
    uv_read_stop(d->src);
    if (uv_write(&d->wreq, d->dst, &out, 1, relay_written) < 0) {
        d->writing = false;
        session_close(s, "write failed");
    }
}

/* Decrypts what the source's TLS context holds and passes it on. */
static void pump(relay_dir_t *d)
{
    session_t *s = session_of(d);
    while (!d->paused && s->phase == PHASE_RELAY) {
        int n = tls_read(d->src_tls, d->plain, d->size);
        if (n > 0) {
            deliver(d, d->plain, (size_t)n);
            continue;
        }
        if (n == PT_AGAIN)
            break;
        if (n == PT_EOF) {
            src_eof(d);
            break;
        }
        session_log(s, LL_INFO, "%s", tls_error(d->src_tls));
        session_close(s, "TLS error");
        return;
    }
}

static void relay_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    relay_dir_t *d = (relay_dir_t *)st->data;
    session_t *s = session_of(d);
    (void)b;
    if (s->phase != PHASE_RELAY)
        return;
    if (nread == 0)
        return;
    if (nread < 0 && nread != UV_EOF) {
        session_close(s, d == &d->r->up ? "client connection error" : "upstream connection error");
        return;
    }
    if (d->src_tls) {
        if (nread == UV_EOF)
            tls_feed_eof(d->src_tls);
        else if (tls_feed(d->src_tls, d->buf, (size_t)nread) < 0) {
            session_close(s, "TLS input too large");
            return;
        }
        pump(d);
        return;
    }
    if (nread == UV_EOF) {
        src_eof(d);
        return;
    }
    deliver(d, d->buf, (size_t)nread);
}

static void relay_timeout(uv_timer_t *t)
{
    session_t *s = t->data;
    relay_t *r = s->relay;
    if (s->phase != PHASE_RELAY || !r)
        return;
    uint64_t idle = uv_now(s->loop) - r->last_active;
    if (idle >= r->timeout_ms) {
        session_log(s, LL_INFO, "proxy timed out");
        session_close(s, "proxy timeout");
        return;
    }
    /* Activity only stamps a time; the timer re-arms itself here, so the
     * hot path never touches the timer heap. */
    uv_timer_start(t, relay_timeout, r->timeout_ms - idle, 0);
}

int relay_start(session_t *s)
{
    uv_stream_t *ust = upstream_stream(s);
    if (!ust)
        return -1;
    relay_t *r = xcalloc(1, sizeof *r);
    size_t size = s->cfg->proxy_buffer;
    tls_conn_t *ctls = s->tls_active ? s->ctls : NULL, *utls = upstream_tls(s);
    r->s = s;
    r->up = (relay_dir_t){ .r = r, .src = (uv_stream_t *)&s->client, .dst = ust, .src_tls = ctls, .dst_tls = utls,
                           .buf = xmalloc(size), .plain = ctls ? xmalloc(size) : NULL, .size = size,
                           .count = &s->bytes_in };
    r->down = (relay_dir_t){ .r = r, .src = ust, .dst = (uv_stream_t *)&s->client, .src_tls = utls, .dst_tls = ctls,
                             .buf = xmalloc(size), .plain = utls ? xmalloc(size) : NULL, .size = size,
                             .count = &s->bytes_out };
    s->relay = r;
    if (!r->up.buf || !r->down.buf)
        return -1;
    /* From here on both handles point at their direction; session_close
     * and upstream_close point them back before closing. */
    s->client.data = &r->up;
    ust->data = &r->down;
    r->timeout_ms = (uint64_t)(s->cfg->proxy_timeout * 1000);
    r->last_active = uv_now(s->loop);
    uv_timer_start(&s->timer, relay_timeout, r->timeout_ms, 0);
    uv_read_stop(ust);
    if (uv_read_start(r->down.src, relay_alloc, relay_read) < 0)
        return -1;
    if (utls && tls_pending(utls))
        pump(&r->down); /* records that came with the login reply */
    if (s->client_eof) {
        /* the client half-closed before the login finished: its last
         * bytes are queued upstream already; pass the EOF on after them */
        r->up.eof = true;
        pass_eof(&r->up);
        return 0;
    }
    if (uv_read_start(r->up.src, relay_alloc, relay_read) < 0)
        return -1;
    if (ctls && tls_pending(ctls))
        pump(&r->up);
    (void)other;
    return 0;
}

void relay_free(relay_t *r)
{
    if (!r)
        return;
    free(r->up.buf);
    free(r->down.buf);
    free(r->up.plain);
    free(r->down.plain);
    free(r);
}
