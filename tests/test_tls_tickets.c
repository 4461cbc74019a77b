/* Session tickets shared by worker processes (tls_tickets_share,
 * tls_tickets_rotate) and the random generator after fork
 * (tls_after_fork), with real handshakes: each "worker" is a forked
 * process that serves its own listening socket with a tls_server of its
 * own, made in the parent ("the master") before the fork as the
 * configuration would be; openssl s_client is the client, saving its
 * session with -sess_out and offering it again with -sess_in.
 *
 *   - without sharing, a ticket from one tls_server does not resume on
 *     another (the control: each makes its own keys), but does on its own;
 *   - shared: a ticket issued by worker 1 resumes on worker 2; after one
 *     rotation still (the previous key is kept), after two no longer;
 *   - the session ID cache (no ticket) stays per worker;
 *   - mbedTLS does not rotate the shared keys away by itself, and tickets
 *     still expire after the tls_server's ticket lifetime;
 *   - two processes forked from one parent draw the same random bytes
 *     (ClientHello randoms) without tls_after_fork, different ones with it.
 * Needs the openssl command (as the integration specs do). */
#include "check.h"
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[64], cert[128], key[128], sess[128];

static int listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 8) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
        perror("listener");
        exit(2);
    }
    *port = ntohs(a.sin_port);
    return fd;
}

static int flush(tls_conn_t *t, int fd)
{
    size_t len;
    const char *p = tls_out_peek(t, &len);
    while (p && len > 0) {
        ssize_t n = write(fd, p, len);
        if (n <= 0)
            return -1;
        tls_out_consume(t, (size_t)n);
        p = tls_out_peek(t, &len);
    }
    return 0;
}

/* One connection: the handshake, then read until the client closes. */
static void serve(tls_server_t *s, int fd)
{
    tls_conn_t *t = tls_conn_server(s);
    char buf[16384];
    ssize_t n;
    while (t && (n = read(fd, buf, sizeof buf)) > 0) {
        if (tls_feed(t, buf, (size_t)n) != PT_OK)
            break;
        int rc = tls_handshake(t);
        if (flush(t, fd) < 0 || rc == PT_ERROR)
            break;
        if (rc == PT_OK)
            while (tls_read(t, buf, sizeof buf) > 0) {
            }
        (void)flush(t, fd);
    }
    tls_conn_free(t);
    close(fd);
}

/* A worker: forked from the master, serves lfd until killed. */
static pid_t worker(int lfd, tls_server_t *s)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    tls_after_fork();
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd >= 0)
            serve(s, fd);
        else if (errno != EINTR)
            _exit(0);
    }
}

static void stop(pid_t pid)
{
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

/* openssl s_client to port: 'N' a full handshake, 'R' resumed, '?'
 * otherwise. how: "out" saves the session to sess, "in" offers it. */
static char handshake(int port, const char *how, const char *extra)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "timeout 10 openssl s_client -connect 127.0.0.1:%d -servername mail.test -CAfile %s -sess_%s %s %s "
             "</dev/null 2>&1",
             port, cert, how, sess, extra ? extra : "");
    FILE *p = popen(cmd, "r");
    char out[65536];
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = '\0';
    if (p)
        pclose(p);
    if (strstr(out, "\nReused, TLSv1.2"))
        return 'R';
    if (strstr(out, "\nNew, TLSv1.2"))
        return 'N';
    fprintf(stderr, "openssl s_client to %d (-sess_%s %s):\n%s\n", port, how, extra ? extra : "", out);
    return '?';
}

static tls_server_t *server(double lifetime)
{
    static tls_cert_conf_t certs[1];
    certs[0] = (tls_cert_conf_t){ NULL, cert, key };
    tls_server_conf_t c = { .certs = certs, .ncerts = 1, .ticket_lifetime = lifetime };
    char err[300];
    tls_server_t *s = tls_server_new(&c, err, sizeof err);
    if (!s) {
        fprintf(stderr, "tls_server_new: %s\n", err);
        exit(2);
    }
    return s;
}

/* The 28 random bytes of a ClientHello made in a child forked now
 * (after tls_after_fork when reseed), read back through a pipe. */
static void child_random(bool reseed, unsigned char out[28])
{
    int pfd[2];
    if (pipe(pfd) != 0)
        exit(2);
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        if (reseed)
            tls_after_fork();
        char err[300];
        tls_client_t *c = tls_client_new(cert, err, sizeof err);
        tls_conn_t *t = c ? tls_conn_client(c, "mail.test", false, NULL, NULL, err, sizeof err) : NULL;
        size_t len = 0;
        const char *hello = t && tls_handshake(t) == PT_AGAIN ? tls_out_peek(t, &len) : NULL;
        /* record header 5, handshake header 4, version 2, then the
         * random: 4 bytes of time, 28 from the generator */
        unsigned char r[28] = { 0 };
        if (hello && len >= 43)
            memcpy(r, hello + 15, sizeof r);
        ssize_t w = write(pfd[1], r, sizeof r);
        _exit(w == (ssize_t)sizeof r ? 0 : 1);
    }
    close(pfd[1]);
    memset(out, 0, 28);
    CHECK_INT(read(pfd[0], out, 28), 28);
    close(pfd[0]);
    waitpid(pid, NULL, 0);
}

static bool all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    snprintf(dir, sizeof dir, "/tmp/postern-tickets.XXXXXX");
    if (!mkdtemp(dir))
        return 2;
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    snprintf(sess, sizeof sess, "%s/sess.pem", dir);
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout %s -out %s "
             "-subj /CN=mail.test -addext subjectAltName=DNS:mail.test -days 2 2>/dev/null",
             key, cert);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot make a certificate with openssl\n");
        return 2;
    }
    CHECK_INT(tls_global_init(), 0);

    /* ---- one process per tls_server, no sharing (as today) ---- */
    {
        tls_server_t *a = server(3600), *b = server(3600);
        int pa, pb, la = listener(&pa), lb = listener(&pb);
        pid_t wa = worker(la, a), wb = worker(lb, b);
        CHECK_INT(handshake(pa, "out", NULL), 'N');
        CHECK_INT(handshake(pa, "in", NULL), 'R');  /* its own ticket */
        CHECK_INT(handshake(pb, "in", NULL), 'N');  /* the control: b has keys of its own */
        stop(wa);
        stop(wb);
        close(la);
        close(lb);
        tls_server_unref(a);
        tls_server_unref(b);
    }

    /* ---- the random generator after fork ---- */
    {
        unsigned char r1[28], r2[28];
        child_random(false, r1);
        child_random(false, r2);
        CHECK(!all_zero(r1, sizeof r1));
        CHECK(memcmp(r1, r2, sizeof r1) == 0); /* inherited: the same stream in both */
        child_random(true, r1);
        child_random(true, r2);
        CHECK(!all_zero(r1, sizeof r1) && !all_zero(r2, sizeof r2));
        CHECK(memcmp(r1, r2, sizeof r1) != 0); /* reseeded: each its own */
    }

    /* ---- shared keys: the master shares, then forks two workers ---- */
    tls_tickets_rotate(); /* not shared yet: nothing happens */
    CHECK_INT(tls_tickets_share(3600), 0);
    CHECK_INT(tls_tickets_share(3600), 0); /* once is enough; again is harmless */
    {
        tls_server_t *a = server(3600), *b = server(3600);
        int p1, p2, l1 = listener(&p1), l2 = listener(&p2);
        pid_t w1 = worker(l1, a), w2 = worker(l2, b);

        CHECK_INT(handshake(p1, "out", NULL), 'N');
        CHECK_INT(handshake(p2, "in", NULL), 'R');  /* worker 1's ticket on worker 2 */
        CHECK_INT(handshake(p1, "in", NULL), 'R');

        tls_tickets_rotate(); /* the ticket's key is now the previous one */
        CHECK_INT(handshake(p2, "in", NULL), 'R');
        CHECK_INT(handshake(p1, "in", NULL), 'R');

        tls_tickets_rotate(); /* and now gone */
        CHECK_INT(handshake(p2, "in", NULL), 'N');
        CHECK_INT(handshake(p1, "in", NULL), 'N');

        /* a ticket under the new key, made by worker 2, on worker 1 */
        CHECK_INT(handshake(p2, "out", NULL), 'N');
        CHECK_INT(handshake(p1, "in", NULL), 'R');

        /* the session ID cache is per worker */
        CHECK_INT(handshake(p1, "out", "-no_ticket"), 'N');
        CHECK_INT(handshake(p2, "in", "-no_ticket"), 'N');
        CHECK_INT(handshake(p1, "in", "-no_ticket"), 'R');

        stop(w1);
        stop(w2);
        close(l1);
        close(l2);
        tls_server_unref(a);
        tls_server_unref(b);
    }

    /* ---- mbedTLS never rotates by itself; tickets still expire after the
     * ticket lifetime (here 1 s, shorter than the config allows) ---- */
    {
        tls_server_t *a = server(1), *b = server(1);
        int p1, p2, l1 = listener(&p1), l2 = listener(&p2);
        pid_t w1 = worker(l1, a), w2 = worker(l2, b);
        tls_tickets_rotate();
        sleep(2); /* the shared key is older than the lifetime: mbedTLS left
                   * to itself would make a key of its own in each worker */
        CHECK_INT(handshake(p1, "out", NULL), 'N');
        CHECK_INT(handshake(p2, "in", NULL), 'R');
        sleep(3); /* the session is older than the lifetime */
        CHECK_INT(handshake(p2, "in", NULL), 'N');
        CHECK_INT(handshake(p1, "in", NULL), 'N');
        stop(w1);
        stop(w2);
        close(l1);
        close(l2);
        tls_server_unref(a);
        tls_server_unref(b);
    }

    tls_global_free();
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    CHECK_DONE();
}
