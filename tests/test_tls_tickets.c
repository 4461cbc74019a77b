/* Unit tests of the session-ticket keys the workers share: a ticket from
 * one context opens in another once the master shares its keys (and not
 * before: each context then has keys of its own), still opens after one
 * rotation, no longer after two; and a forked worker's random stream is
 * its own. The certificate comes from the openssl command. */
#include "check.h"
#include "status.h"
#include "tls.h"

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static tls_server_t *server(const char *dir)
{
    static char crt[300], key[300];
    snprintf(crt, sizeof crt, "%s/t.crt", dir);
    snprintf(key, sizeof key, "%s/t.key", dir);
    tls_cert_conf_t cert = { .certificate = crt, .key = key };
    tls_server_conf_t c = { .certs = &cert, .ncerts = 1, .ticket_lifetime = 3600 };
    char err[300];
    tls_server_t *s = tls_server_new(&c, err, sizeof err);
    if (!s)
        fprintf(stderr, "tls_server_new: %s\n", err);
    return s;
}

int main(void)
{
    char dir[] = "/tmp/postern-tickets-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=t -days 1 "
             "-keyout %s/t.key -out %s/t.crt >/dev/null 2>&1",
             dir, dir);
    CHECK_INT(system(cmd), 0);
    tls_server_t *a = server(dir), *b = server(dir);
    CHECK(a && b);
    if (!a || !b)
        CHECK_DONE();

    unsigned char t[1024], copy[1024];
    size_t n = 0;
    /* before sharing: each context its own keys */
    CHECK_INT(tls_ticket_issue(a, t, sizeof t, &n), PT_OK);
    memcpy(copy, t, n);
    CHECK_INT(tls_ticket_open(a, copy, n), PT_OK);
    memcpy(copy, t, n);
    CHECK_INT(tls_ticket_open(b, copy, n), PT_ERROR);

    /* shared: one worker's ticket opens at the other */
    CHECK_INT(tls_tickets_share(), 0);
    CHECK_INT(tls_ticket_issue(a, t, sizeof t, &n), PT_OK);
    memcpy(copy, t, n);
    CHECK_INT(tls_ticket_open(b, copy, n), PT_OK);

    /* one rotation: tickets of the previous key still open */
    tls_tickets_rotate();
    memcpy(copy, t, n);
    CHECK_INT(tls_ticket_open(b, copy, n), PT_OK);
    unsigned char t2[1024];
    size_t n2 = 0;
    CHECK_INT(tls_ticket_issue(b, t2, sizeof t2, &n2), PT_OK);
    CHECK(memcmp(t2, t, 4) != 0); /* issued under the new key's name */
    memcpy(copy, t2, n2);
    CHECK_INT(tls_ticket_open(a, copy, n2), PT_OK);

    /* two: the first key is gone */
    tls_tickets_rotate();
    memcpy(copy, t, n);
    CHECK_INT(tls_ticket_open(a, copy, n), PT_ERROR);
    memcpy(copy, t2, n2);
    CHECK_INT(tls_ticket_open(a, copy, n2), PT_OK);

    /* a forked worker draws other random bytes than its master */
    int fds[2];
    CHECK_INT(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        unsigned char r[32];
        tls_after_fork();
        tls_random(r, sizeof r);
        _exit(write(fds[1], r, sizeof r) == (ssize_t)sizeof r ? 0 : 1);
    }
    unsigned char mine[32], theirs[32];
    tls_random(mine, sizeof mine);
    CHECK_INT(read(fds[0], theirs, sizeof theirs), 32);
    waitpid(pid, NULL, 0);
    CHECK(memcmp(mine, theirs, 32) != 0);

    tls_server_unref(a);
    tls_server_unref(b);
    tls_global_free();
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    CHECK_DONE();
}
