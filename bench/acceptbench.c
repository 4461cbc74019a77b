/* acceptbench: how evenly do libuv workers share connections, one
 * listening socket inherited by all (what postern does) against one
 * SO_REUSEPORT socket per worker?
 *
 *   acceptbench shared|reuseport WORKERS CLIENTS CONNECTIONS WORK_US
 *
 * WORKERS forked processes each run a libuv loop that accepts, reads one
 * line, spends WORK_US of CPU (a login's cost), answers and closes.
 * CLIENTS threads connect CONNECTIONS times in all (each: connect, send a
 * line, read the answer). Prints the connections each worker took, the
 * spread (max/min), and the rate. Build: make -C bench acceptbench. */
#define _GNU_SOURCE
#include <uv.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int work_us, port;
static long *counts; /* shared: connections per worker */
static int me;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void spin(int us)
{
    double end = now() + us / 1e6;
    while (now() < end)
        ;
}

static int make_socket(int reuseport)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 511) < 0) {
        perror("bind/listen");
        exit(1);
    }
    return fd;
}

static void on_close(uv_handle_t *h) { free(h); }

static void on_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    (void)h;
    (void)s;
    static char space[256];
    *b = uv_buf_init(space, sizeof space);
}

static void on_written(uv_write_t *w, int st)
{
    (void)st;
    uv_close((uv_handle_t *)w->data, on_close);
    free(w);
}

static void on_read(uv_stream_t *c, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    if (n < 0) {
        uv_close((uv_handle_t *)c, on_close);
        return;
    }
    if (n == 0)
        return;
    uv_read_stop(c);
    spin(work_us);
    __atomic_add_fetch(&counts[me], 1, __ATOMIC_RELAXED);
    uv_write_t *w = malloc(sizeof *w);
    w->data = c;
    uv_buf_t out = uv_buf_init("OK\r\n", 4);
    uv_write(w, c, &out, 1, on_written);
}

static void on_conn(uv_stream_t *srv, int st)
{
    if (st < 0)
        return;
    uv_tcp_t *c = malloc(sizeof *c);
    uv_tcp_init(srv->loop, c);
    if (uv_accept(srv, (uv_stream_t *)c) == 0)
        uv_read_start((uv_stream_t *)c, on_alloc, on_read);
    else
        uv_close((uv_handle_t *)c, on_close);
}

static void worker(int fd)
{
    uv_loop_t *loop = uv_default_loop();
    uv_tcp_t srv;
    uv_tcp_init(loop, &srv);
    uv_tcp_open(&srv, fd);
    uv_listen((uv_stream_t *)&srv, 511, on_conn);
    uv_run(loop, UV_RUN_DEFAULT);
}

static int per_client;

static void *client(void *arg)
{
    (void)arg;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    char buf[16];
    for (int i = 0; i < per_client; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            perror("connect");
            close(fd);
            continue;
        }
        if (write(fd, "a LOGIN x y\r\n", 13) != 13 || read(fd, buf, sizeof buf) <= 0)
            fprintf(stderr, "no answer\n");
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: acceptbench shared|reuseport WORKERS CLIENTS CONNECTIONS WORK_US\n");
        return 2;
    }
    int reuseport = strcmp(argv[1], "reuseport") == 0, nw = atoi(argv[2]), nc = atoi(argv[3]);
    int total = atoi(argv[4]);
    work_us = atoi(argv[5]);
    port = 20000 + getpid() % 20000;
    per_client = total / nc;
    counts = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int shared_fd = reuseport ? -1 : make_socket(0);
    pid_t pids[64];
    for (int i = 0; i < nw; i++) {
        int fd = reuseport ? make_socket(1) : shared_fd;
        pids[i] = fork();
        if (pids[i] == 0) {
            me = i;
            worker(fd);
            _exit(0);
        }
        if (reuseport)
            close(fd);
    }
    usleep(200000);
    pthread_t t[256];
    double t0 = now();
    for (int i = 0; i < nc; i++)
        pthread_create(&t[i], NULL, client, NULL);
    for (int i = 0; i < nc; i++)
        pthread_join(t[i], NULL);
    double secs = now() - t0;
    long min = -1, max = 0, sum = 0;
    printf("%s workers=%d clients=%d work=%dus:", argv[1], nw, nc, work_us);
    for (int i = 0; i < nw; i++) {
        printf(" %ld", counts[i]);
        sum += counts[i];
        if (min < 0 || counts[i] < min)
            min = counts[i];
        if (counts[i] > max)
            max = counts[i];
        kill(pids[i], SIGKILL);
        waitpid(pids[i], NULL, 0);
    }
    printf("  spread max/min %.2f  %.0f conn/s\n", min > 0 ? (double)max / min : 0.0, sum / secs);
    return 0;
}
