/* peer.h: the far end of a connection for the C tests of conn users
 * (relay, login): a socketpair whose one end is a conn_t on the test's
 * libuv loop and whose other end the test reads and writes directly,
 * running the loop while it waits. */
#ifndef POSTERN_TEST_PEER_H
#define POSTERN_TEST_PEER_H

#include "conn.h"

#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void peer_conn_closed(conn_t *c)
{
    (void)c;
}

/* c (initialised here) and *fd are the two ends of one connection. */
static void peer_pair(uv_loop_t *loop, conn_t *c, int *fd)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        _exit(2);
    }
    conn_init(c, loop);
    c->closed = peer_conn_closed;
    uv_tcp_open(&c->tcp, sv[0]);
    fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK);
    *fd = sv[1];
}

static double peer_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Runs the loop until *flag is set or `seconds` passed. */
static bool peer_run_until(uv_loop_t *loop, const bool *flag, double seconds)
{
    double end = peer_now() + seconds;
    while (!*flag && peer_now() < end) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    return *flag;
}

/* Writes all of s (the socket buffer holds what the tests send). */
static void peer_send(int fd, const char *s, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, s + done, len - done);
        if (n < 0 && errno != EAGAIN) {
            perror("peer write");
            return;
        }
        if (n > 0)
            done += (size_t)n;
    }
}

#define PEER_SEND(fd, lit) peer_send(fd, lit, sizeof(lit) - 1)

/* Reads into buf (NUL-terminated) while running the loop, until it holds
 * `want` bytes, or contains `until` (NULL: want decides), or EOF, or the
 * time is up. Returns the bytes read; *eof says whether the end came. */
static size_t peer_read(uv_loop_t *loop, int fd, char *buf, size_t want, const char *until, double seconds,
                        bool *eof)
{
    size_t got = 0;
    double end = peer_now() + seconds;
    if (eof)
        *eof = false;
    buf[0] = '\0';
    while (got < want && peer_now() < end) {
        uv_run(loop, UV_RUN_NOWAIT);
        ssize_t n = read(fd, buf + got, want - got);
        if (n > 0) {
            got += (size_t)n;
            buf[got] = '\0';
            if (until && strstr(buf, until))
                break;
            continue;
        }
        if (n == 0) {
            if (eof)
                *eof = true;
            break;
        }
        usleep(1000);
    }
    return got;
}

#endif
