/* splicebench.c: is splice(2) cheaper than read/write for relaying
 * between two TCP sockets? The question the performance issue asks of
 * the relay (docs/performance.md, imap-fetch). A source thread sends
 * TOTAL bytes over loopback TCP, the main thread relays them to a sink
 * thread that discards them, once with read()/write() through a user
 * buffer of BUF bytes, once with splice() through a pipe; the relay
 * thread's CPU time per MiB is printed for each, with its wall time.
 * Blocking sockets: both relays make the same number of waits, so the
 * difference is the copying.
 *
 *   make -C bench splicebench && bench/splicebench [MiB] [buffer KiB] */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static size_t total, bufsize;

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int listener(int *port)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0)
        exit(1);
    getsockname(l, (struct sockaddr *)&a, &al);
    *port = ntohs(a.sin_port);
    return l;
}

static int dial(int port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0)
        exit(1);
    return s;
}

static void *source(void *arg)
{
    int s = *(int *)arg;
    static char chunk[102400];
    memset(chunk, 'x', sizeof chunk);
    for (size_t sent = 0; sent < total;) {
        size_t n = total - sent < sizeof chunk ? total - sent : sizeof chunk;
        ssize_t w = write(s, chunk, n);
        if (w <= 0)
            break;
        sent += (size_t)w;
    }
    shutdown(s, SHUT_WR);
    return NULL;
}

static void *sink(void *arg)
{
    int s = *(int *)arg;
    static char b[1 << 18];
    while (read(s, b, sizeof b) > 0)
        ;
    return NULL;
}

static size_t relay_copy(int in, int out)
{
    char *b = malloc(bufsize);
    size_t moved = 0;
    ssize_t n;
    while ((n = read(in, b, bufsize)) > 0) {
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, b + off, (size_t)(n - off));
            if (w <= 0)
                exit(1);
            off += w;
        }
        moved += (size_t)n;
    }
    free(b);
    return moved;
}

static size_t relay_splice(int in, int out)
{
    int p[2];
    if (pipe(p) < 0)
        exit(1);
    fcntl(p[1], F_SETPIPE_SZ, (int)bufsize);
    size_t moved = 0;
    ssize_t n;
    while ((n = splice(in, NULL, p[1], NULL, bufsize, SPLICE_F_MOVE)) > 0) {
        for (ssize_t left = n; left > 0;) {
            ssize_t w = splice(p[0], NULL, out, NULL, (size_t)left, SPLICE_F_MOVE);
            if (w <= 0)
                exit(1);
            left -= w;
        }
        moved += (size_t)n;
    }
    close(p[0]);
    close(p[1]);
    return moved;
}

static void run(const char *name, size_t (*relay)(int, int))
{
    int pin, pout;
    int lin = listener(&pin), lout = listener(&pout);
    int src = dial(pin), in = accept(lin, NULL, NULL);
    int out = dial(pout), dst = accept(lout, NULL, NULL);
    pthread_t ts, td;
    pthread_create(&ts, NULL, source, &src);
    pthread_create(&td, NULL, sink, &dst);
    double c0 = clock_s(CLOCK_THREAD_CPUTIME_ID), w0 = clock_s(CLOCK_MONOTONIC);
    size_t moved = relay(in, out);
    double cpu = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0, wall = clock_s(CLOCK_MONOTONIC) - w0;
    shutdown(out, SHUT_WR);
    pthread_join(ts, NULL);
    pthread_join(td, NULL);
    double mib = moved / 1048576.0;
    printf("%-7s %7.0f MiB  relay CPU %6.1f us/MiB  wall %7.0f MiB/s\n", name, mib, cpu * 1e6 / mib, mib / wall);
    close(src), close(in), close(out), close(dst), close(lin), close(lout);
}

int main(int argc, char **argv)
{
    total = (size_t)(argc > 1 ? atoi(argv[1]) : 2048) << 20;
    bufsize = (size_t)(argc > 2 ? atoi(argv[2]) : 64) << 10;
    for (int i = 0; i < 2; i++) {
        run("copy", relay_copy);
        run("splice", relay_splice);
    }
    return 0;
}
