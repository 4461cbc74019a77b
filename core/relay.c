/* relay.c: the proxied phase. Each direction has one buffer: a read fills
 * it, we try to write it at once, and if the peer cannot take it all the
 * rest is queued from that same buffer and reading that side pauses until
 * the write completes. Memory per session is therefore fixed at two
 * buffers, whatever the peers do. EOF on one side is passed on as a
 * half-close (shutdown) and the relay ends when both sides are done. */
#include "relay.h"

#include "log.h"
#include "session.h"
#include "upstream.h"

#include <stdlib.h>

typedef struct relay_dir {
    struct relay *r;
    uv_stream_t *src, *dst;
    char *buf;
    size_t size;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    bool writing;       /* buf is queued on dst: src is paused */
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

/* The client handle's data is the session; the upstream's is its conn.
 * Both directions find the relay through the session. */
static session_t *session_of(relay_dir_t *d)
{
    return d->r->s;
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
    if (!r->down.eof || r->down.writing)
        return;
    if (r->s->client_queued == 0)
        session_close(r->s, "proxied session done");
    else
        session_quit(r->s);
}

static void shut_done(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

static void pass_eof(relay_dir_t *d)
{
    if (d->shut || d->writing)
        return;
    d->shut = true;
    d->sreq.data = d;
    if (uv_shutdown(&d->sreq, d->dst, shut_done) < 0)
        session_close(session_of(d), "shutdown failed");
}

static void relay_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);

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

static void relay_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    relay_dir_t *d = (relay_dir_t *)st->data;
    session_t *s = session_of(d);
    (void)b;
    if (s->phase != PHASE_RELAY)
        return;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread != UV_EOF) {
            session_close(s, d == &d->r->up ? "client connection error" : "upstream connection error");
            return;
        }
        d->eof = true;
        uv_read_stop(st);
        pass_eof(d);
        finish_if_done(d->r);
        return;
    }
    *d->count += (uint64_t)nread;
    d->r->last_active = uv_now(s->loop);
    uv_buf_t out = uv_buf_init(d->buf, (unsigned)nread);
    int n = uv_try_write(d->dst, &out, 1);
    if (n == nread)
        return;
    if (n < 0 && n != UV_EAGAIN) {
        session_close(s, d == &d->r->up ? "upstream write failed" : "client write failed");
        return;
    }
    if (n < 0)
        n = 0;
    out = uv_buf_init(d->buf + n, (unsigned)(nread - n));
    d->wreq.data = d;
    d->writing = true;
    uv_read_stop(st);
    if (uv_write(&d->wreq, d->dst, &out, 1, relay_written) < 0) {
        d->writing = false;
        session_close(s, "write failed");
    }
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
    relay_t *r = calloc(1, sizeof *r);
    size_t size = s->cfg->proxy_buffer;
    r->s = s;
    r->up = (relay_dir_t){ r, (uv_stream_t *)&s->client, ust, malloc(size), size, .count = &s->bytes_in };
    r->down = (relay_dir_t){ r, ust, (uv_stream_t *)&s->client, malloc(size), size, .count = &s->bytes_out };
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
    if (s->client_eof) {
        /* the client half-closed before the login finished: its last
         * bytes are queued upstream already; pass the EOF on after them */
        r->up.eof = true;
        pass_eof(&r->up);
        return 0;
    }
    if (uv_read_start(r->up.src, relay_alloc, relay_read) < 0)
        return -1;
    return 0;
}

void relay_free(relay_t *r)
{
    if (!r)
        return;
    free(r->up.buf);
    free(r->down.buf);
    free(r);
}
