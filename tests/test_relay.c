/* Tests of the relay over socketpairs: bytes both ways with counters,
 * half-close in each direction, the end of the session, a failed side,
 * and a large transfer through a side that does not read (backpressure)
 * arriving intact. Buffers come from the pool only while bytes are in
 * flight: an idle relay holds none, a stalled one at most one per
 * direction. */
#include "check.h"
#include "peer.h"
#include "pool.h"
#include "relay.h"

#include <signal.h>
#include <stdlib.h>

typedef struct scene {
    uv_loop_t loop;
    conn_t client, upstream;   /* the relay's two connections */
    int cfd, ufd;              /* the test's ends: the client program, the upstream server */
    uint64_t in, out;
    relay_t *r;
    bool done;
    char why[100];
} scene_t;

static void on_done(void *arg, const char *why, const char *detail)
{
    scene_t *sc = arg;
    (void)detail;
    sc->done = true;
    snprintf(sc->why, sizeof sc->why, "%s", why);
}

static void scene_start(scene_t *sc, size_t buffer)
{
    memset(sc, 0, sizeof *sc);
    uv_loop_init(&sc->loop);
    peer_pair(&sc->loop, &sc->client, &sc->cfd);
    peer_pair(&sc->loop, &sc->upstream, &sc->ufd);
    relay_conf_t rc = { .buffer = buffer, .bytes_in = &sc->in, .bytes_out = &sc->out, .done = on_done, .arg = sc };
    sc->r = relay_start(&sc->client, &sc->upstream, &rc, uv_now(&sc->loop));
}

static size_t blocks_in_use(void)
{
    size_t in_use, nfree;
    pool_stats(&in_use, &nfree);
    return in_use;
}

static void scene_end(scene_t *sc)
{
    relay_free(sc->r);
    conn_close(&sc->client);
    conn_close(&sc->upstream);
    close(sc->cfd);
    close(sc->ufd);
    uv_run(&sc->loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&sc->loop), 0); /* no handle left open */
    CHECK_INT(blocks_in_use(), 0);            /* every buffer went back */
}

static void both_ways(void)
{
    scene_t sc;
    char buf[256];
    scene_start(&sc, 1024);
    PEER_SEND(sc.cfd, "a1 SELECT INBOX\r\n");
    CHECK_INT(peer_read(&sc.loop, sc.ufd, buf, sizeof buf - 1, "\r\n", 2, NULL), 17);
    CHECK(strcmp(buf, "a1 SELECT INBOX\r\n") == 0);
    PEER_SEND(sc.ufd, "* 3 EXISTS\r\na1 OK done\r\n");
    CHECK_INT(peer_read(&sc.loop, sc.cfd, buf, sizeof buf - 1, "done\r\n", 2, NULL), 24);
    CHECK(strcmp(buf, "* 3 EXISTS\r\na1 OK done\r\n") == 0);
    CHECK_INT(sc.in, 17);
    CHECK_INT(sc.out, 24);
    CHECK(!sc.done);
    uv_run(&sc.loop, UV_RUN_NOWAIT);
    CHECK_INT(blocks_in_use(), 0); /* idle: no buffer held */
    scene_end(&sc);
}

/* The client's EOF reaches the upstream, which may still answer; the
 * upstream's EOF then ends the session once its last bytes are out. */
static void half_close(void)
{
    scene_t sc;
    char buf[256];
    bool eof;
    scene_start(&sc, 1024);
    PEER_SEND(sc.cfd, "QUIT\r\n");
    shutdown(sc.cfd, SHUT_WR);
    CHECK_INT(peer_read(&sc.loop, sc.ufd, buf, sizeof buf - 1, NULL, 2, &eof), 6);
    CHECK(eof);
    CHECK(!sc.done);
    PEER_SEND(sc.ufd, "+OK bye\r\n");
    shutdown(sc.ufd, SHUT_WR);
    CHECK_INT(peer_read(&sc.loop, sc.cfd, buf, sizeof buf - 1, NULL, 2, &eof), 9);
    CHECK(eof);
    CHECK(peer_run_until(&sc.loop, &sc.done, 2));
    CHECK(strcmp(sc.why, "proxied session done") == 0);
    scene_end(&sc);
}

/* The client went away: what the upstream sends next cannot be written,
 * and the session ends with that reason. */
static void client_fails(void)
{
    scene_t sc;
    scene_start(&sc, 1024);
    close(sc.cfd);
    sc.cfd = socket(AF_UNIX, SOCK_STREAM, 0); /* for scene_end */
    uv_run(&sc.loop, UV_RUN_NOWAIT);
    PEER_SEND(sc.ufd, "* 1 EXISTS\r\n");
    CHECK(peer_run_until(&sc.loop, &sc.done, 2));
    CHECK(strcmp(sc.why, "client write failed") == 0);
    scene_end(&sc);
}

/* 4 MiB from the upstream while the client reads nothing: the relay
 * pauses (the upstream's writes stop going in), then everything arrives
 * in order once the client reads. */
static void backpressure(void)
{
    enum { TOTAL = 4 * 1024 * 1024 };
    scene_t sc;
    scene_start(&sc, 16384);
    char *data = malloc(TOTAL), *got = malloc(TOTAL + 1);
    for (size_t i = 0; i < TOTAL; i++)
        data[i] = (char)('a' + i * 7 % 26);
    size_t sent = 0;
    double end = peer_now() + 2;
    while (sent < TOTAL && peer_now() < end) {
        uv_run(&sc.loop, UV_RUN_NOWAIT);
        ssize_t n = write(sc.ufd, data + sent, TOTAL - sent);
        if (n > 0)
            sent += (size_t)n;
        else
            usleep(1000);
    }
    CHECK(sent < TOTAL); /* the relay stopped taking bytes */
    CHECK(blocks_in_use() <= 1);  /* and holds one buffer for it at most */
    size_t have = 0;
    end = peer_now() + 10;
    while (have < TOTAL && peer_now() < end) {
        uv_run(&sc.loop, UV_RUN_NOWAIT);
        if (sent < TOTAL) {
            ssize_t n = write(sc.ufd, data + sent, TOTAL - sent);
            if (n > 0)
                sent += (size_t)n;
        }
        ssize_t n = read(sc.cfd, got + have, TOTAL - have);
        if (n > 0)
            have += (size_t)n;
        else
            usleep(200);
    }
    CHECK_INT(have, TOTAL);
    CHECK(memcmp(data, got, TOTAL) == 0);
    CHECK_INT(sc.out, TOTAL);
    free(data);
    free(got);
    scene_end(&sc);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    both_ways();
    half_close();
    client_fails();
    backpressure();
    pool_drain();
    CHECK_DONE();
}
