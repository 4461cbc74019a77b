/* relay.c: the proxied phase, bytes both ways with bounded memory.
 *
 * Each direction takes a buffer of proxy_buffer bytes from a pool when
 * a read arrives and gives it back once its bytes are written, so an
 * idle session holds none. Reads land in it (plaintext: straight from
 * the socket; TLS: decrypted by conn.c). Towards a plaintext peer the
 * bytes are written from that same buffer without a copy, and reading the
 * source pauses until the write completes. Towards a TLS peer they are
 * encrypted into a queued write at once; reading the source pauses while
 * that queue is above a high-water mark and resumes below a low one.
 * Memory per session is bounded either way. EOF on one side is passed on
 * as a half-close; the upstream ending ends the session once its last
 * bytes reached the client (a mail server that closed has nothing more to
 * say, as nginx sees it), while the client ending only half-closes towards
 * the upstream, which may still answer what the client sent last. */
#include "relay.h"

#include "mem.h"
#include "pool.h"
#include "status.h"

#include <stdlib.h>

#define QUEUE_HIGH (256 * 1024)
#define QUEUE_LOW (64 * 1024)

typedef struct relay_dir {
    relay_t *r;
    conn_t *src, *dst;
    char *buf;          /* from r->pool while bytes are in flight, else NULL */
    bool writing;       /* buf is being written to dst: src is paused */
    bool paused;        /* dst's queue is too long: src is paused */
    bool eof;           /* src said EOF */
    bool shut;          /* dst was half-closed */
    uint64_t *count;
} relay_dir_t;

struct relay {
    relay_dir_t up;     /* client -> upstream */
    relay_dir_t down;   /* upstream -> client */
    relay_conf_t conf;
    pool_t *pool;       /* blocks of conf.buffer bytes */
    uv_loop_t *loop;
    uint64_t last_active;
    bool over;          /* done was called */
};

static const conn_handler_t relay_handler;

static void finish(relay_t *r, const char *why, const conn_t *failed)
{
    if (r->over)
        return;
    r->over = true;
    r->conf.done(r->conf.arg, why, failed ? conn_error_detail(failed) : NULL);
}

/* The direction that reads from c, and the one that writes to it. */
static relay_dir_t *reading_from(relay_t *r, const conn_t *c)
{
    return c == r->up.src ? &r->up : &r->down;
}

static relay_dir_t *writing_to(relay_t *r, const conn_t *c)
{
    return c == r->up.dst ? &r->up : &r->down;
}

static void finish_if_done(relay_t *r)
{
    relay_dir_t *down = &r->down;
    if (!down->eof || down->writing || conn_queued(down->dst) > 0)
        return;
    finish(r, "proxied session done", NULL);
}

static void shut_done(conn_t *c)
{
    finish_if_done(c->data);
}

static void pass_eof(relay_dir_t *d)
{
    if (d->shut || d->writing)
        return;
    d->shut = true;
    if (conn_shutdown(d->dst, shut_done) < 0)
        finish(d->r, "shutdown failed", d->dst);
}

static void dir_failed(relay_dir_t *d, const conn_t *c, const char *why)
{
    relay_t *r = d->r;
    bool client = c == r->up.src;
    if (conn_failed_in_tls(c))
        finish(r, why, c);
    else
        finish(r, client ? "client connection error" : "upstream connection error", NULL);
}

static void buf_release(relay_dir_t *d)
{
    pool_put(d->r->pool, d->buf);
    d->buf = NULL;
}

static void resume(relay_dir_t *d)
{
    if (d->eof) {
        pass_eof(d);
        finish_if_done(d->r);
        return;
    }
    conn_read_start(d->src);
}

/* The zero-copy write of d->buf completed. */
static void buf_written(conn_t *c, int status)
{
    relay_t *r = c->data;
    relay_dir_t *d = writing_to(r, c);
    d->writing = false;
    buf_release(d);
    if (status < 0) {
        finish(r, d == &r->up ? "upstream write failed" : "client write failed", NULL);
        return;
    }
    resume(d);
}

/* Plaintext from d's source is in d->buf: on to its destination. */
static void on_data(conn_t *c, size_t n)
{
    relay_t *r = c->data;
    relay_dir_t *d = reading_from(r, c);
    *d->count += n;
    r->last_active = uv_now(r->loop);
    if (conn_tls(d->dst)) {
        int rc = conn_write(d->dst, d->buf, n); /* encrypted into the queue: buf is free again */
        buf_release(d);
        if (rc < 0) {
            finish(r, "TLS error", d->dst);
            return;
        }
        if (conn_queued(d->dst) > QUEUE_HIGH && !d->paused) {
            d->paused = true;
            conn_read_stop(d->src);
        }
        return;
    }
    int rc = conn_write_ref(d->dst, d->buf, n, buf_written);
    if (rc == PT_OK) {
        buf_release(d);
    } else if (rc == PT_AGAIN) {
        d->writing = true;
        conn_read_stop(d->src);
    } else if (rc < 0) {
        finish(r, d == &r->up ? "upstream write failed" : "client write failed", NULL);
    }
}

static char *on_buffer(conn_t *c, size_t *room)
{
    relay_dir_t *d = reading_from(c->data, c);
    if (d->writing || d->paused) {
        *room = 0;
        return NULL;
    }
    if (!d->buf)
        d->buf = pool_get(d->r->pool);
    *room = pool_size(d->r->pool);
    return d->buf;
}

/* The read found nothing: the buffer goes back until the next one. */
static void on_release(conn_t *c)
{
    relay_dir_t *d = reading_from(c->data, c);
    if (!d->writing)
        buf_release(d);
}

static void on_eof(conn_t *c)
{
    relay_dir_t *d = reading_from(c->data, c);
    d->eof = true;
    conn_read_stop(d->src);
    pass_eof(d);
    finish_if_done(d->r);
}

static void on_error(conn_t *c, const char *why)
{
    dir_failed(reading_from(c->data, c), c, why);
}

/* A queued (copied or encrypted) write towards c completed. */
static void on_written(conn_t *c)
{
    relay_t *r = c->data;
    relay_dir_t *d = writing_to(r, c);
    if (d->eof) {
        finish_if_done(r);
        return;
    }
    if (d->paused && conn_queued(d->dst) < QUEUE_LOW) {
        d->paused = false;
        conn_read_start(d->src);
    }
}

static const conn_handler_t relay_handler = {
    .buffer = on_buffer,
    .data = on_data,
    .eof = on_eof,
    .error = on_error,
    .written = on_written,
    .release = on_release,
};

relay_t *relay_start(conn_t *client, conn_t *upstream, const relay_conf_t *conf, uint64_t now_ms)
{
    relay_t *r = xcalloc(1, sizeof *r);
    r->conf = *conf;
    r->pool = pool_for(conf->buffer);
    r->loop = client->tcp.loop;
    r->last_active = now_ms;
    r->up = (relay_dir_t){ .r = r, .src = client, .dst = upstream, .count = conf->bytes_in };
    r->down = (relay_dir_t){ .r = r, .src = upstream, .dst = client, .count = conf->bytes_out };
    conn_set_handler(client, &relay_handler, r);
    conn_set_handler(upstream, &relay_handler, r);
    conn_read_start(upstream); /* delivers records that came with the login reply */
    if (r->over)
        return r;
    if (conf->client_eof) {
        /* the client half-closed before the login finished: its last
         * bytes are queued upstream already; pass the EOF on after them */
        r->up.eof = true;
        pass_eof(&r->up);
        return r;
    }
    conn_read_start(client);
    return r;
}

uint64_t relay_last_active(const relay_t *r)
{
    return r->last_active;
}

void relay_free(relay_t *r)
{
    if (!r)
        return;
    /* the connections may outlive the relay (closing): no callback may reach it */
    conn_set_handler(r->up.src, NULL, NULL);
    conn_set_handler(r->down.src, NULL, NULL);
    /* a zero-copy write still queued is dropped when the owner closes the
     * conns, in this same turn of the loop: libuv reads the block no more */
    buf_release(&r->up);
    buf_release(&r->down);
    free(r);
}
