/* Tests of the upstream login (login.c and each protocol's login steps)
 * over a socketpair: the test plays the upstream server line by line and
 * checks what postern sends and which outcome it reports. */
#include "check.h"
#include "config.h"
#include "login.h"
#include "peer.h"
#include "session.h"

#include <signal.h>
#include <stdlib.h>

extern const proto_t proto_imap, proto_pop3, proto_smtp, proto_sieve;

typedef struct scene {
    uv_loop_t loop;
    conn_t conn;
    int fd;                    /* the test's end: the upstream server */
    void *pstate;
    upstream_t u;
    listen_conf_t listener;
    credentials_t cred;
    login_t *l;
    const proto_t *proto;
    bool over;
    char outcome[16];
    char reply[512], rest[512];
} scene_t;

static void ev_ready(void *owner, const char *reply, size_t len, const char *rest, size_t restlen)
{
    scene_t *sc = owner;
    sc->over = true;
    snprintf(sc->outcome, sizeof sc->outcome, "ready");
    snprintf(sc->reply, sizeof sc->reply, "%.*s", (int)len, reply);
    snprintf(sc->rest, sizeof sc->rest, "%.*s", (int)restlen, rest ? rest : "");
}

static void ev_refused(void *owner, const char *reply, size_t len, const char *log_text)
{
    scene_t *sc = owner;
    (void)log_text;
    sc->over = true;
    snprintf(sc->outcome, sizeof sc->outcome, "refused");
    snprintf(sc->reply, sizeof sc->reply, "%.*s", (int)len, reply);
}

static void ev_failed(void *owner, const char *why)
{
    scene_t *sc = owner;
    sc->over = true;
    snprintf(sc->outcome, sizeof sc->outcome, "failed");
    snprintf(sc->reply, sizeof sc->reply, "%s", why);
}

static const login_events_t events = { .ready = ev_ready, .refused = ev_refused, .failed = ev_failed };

static void start(scene_t *sc, const proto_t *proto, const char *mech, const char *tag)
{
    memset(sc, 0, sizeof *sc);
    uv_loop_init(&sc->loop);
    peer_pair(&sc->loop, &sc->conn, &sc->fd);
    sc->proto = proto;
    sc->pstate = calloc(1, proto->state_size);
    sc->u.host = "127.0.0.1";
    sc->u.port = 1;
    sc->u.verify = true;
    sc->cred.user = "alice";
    sc->cred.password = "secret";
    sc->cred.mechanism = mech;
    login_params_t p = { .proto = proto, .pstate = sc->pstate, .upstream = &sc->u, .listener = &sc->listener,
                         .user = "alice", .password = "secret", .cred = &sc->cred, .tag = tag,
                         .client_ip = "192.0.2.7", .client_port = 4711, .server_name = "px.test",
                         .ev = &events, .owner = sc };
    sc->l = login_new(&sc->conn, &p);
    login_begin(sc->l);
}

static void end(scene_t *sc)
{
    login_free(sc->l);
    conn_close(&sc->conn);
    close(sc->fd);
    uv_run(&sc->loop, UV_RUN_DEFAULT);
    CHECK_INT(uv_loop_close(&sc->loop), 0);
    session_t owner = { .pstate = sc->pstate }; /* the protocol frees what its state points to */
    sc->proto->cleanup(&owner);
    free(sc->pstate);
}

/* The upstream says `say`; postern must answer `want` exactly. */
static int exchange(scene_t *sc, const char *say, const char *want)
{
    char buf[1024];
    if (say)
        peer_send(sc->fd, say, strlen(say));
    size_t n = peer_read(&sc->loop, sc->fd, buf, strlen(want), NULL, 2, NULL);
    if (n != strlen(want) || strcmp(buf, want) != 0) {
        fprintf(stderr, "  sent %s  expected %s  got %s\n", say ? say : "(nothing)\n", want, buf);
        return 0;
    }
    return 1;
}

static int finish(scene_t *sc, const char *say)
{
    peer_send(sc->fd, say, strlen(say));
    return peer_run_until(&sc->loop, &sc->over, 2);
}

static void imap_login(void)
{
    scene_t sc;
    start(&sc, &proto_imap, "plain", "a1");
    CHECK(exchange(&sc, "* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\n", "a1 LOGIN \"alice\" \"secret\"\r\n"));
    CHECK(finish(&sc, "* 1 RECENT\r\na1 OK [CAPABILITY IMAP4rev1 IDLE] in\r\n* 2 EXISTS\r\n"));
    CHECK(strcmp(sc.outcome, "ready") == 0);
    /* untagged lines before the OK go with it; what follows is the relay's */
    CHECK(strcmp(sc.reply, "* 1 RECENT\r\na1 OK [CAPABILITY IMAP4rev1 IDLE] in\r\n") == 0);
    CHECK(strcmp(sc.rest, "* 2 EXISTS\r\n") == 0);
    end(&sc);

    /* no capabilities in the greeting: asked; LOGINDISABLED: AUTHENTICATE PLAIN with SASL-IR */
    start(&sc, &proto_imap, "plain", "b7");
    CHECK(exchange(&sc, "* OK hi\r\n", "P1 CAPABILITY\r\n"));
    CHECK(exchange(&sc, "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN LOGINDISABLED\r\nP1 OK\r\n",
                   "b7 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n"));
    CHECK(finish(&sc, "b7 NO [AUTHENTICATIONFAILED] nope\r\n"));
    CHECK(strcmp(sc.outcome, "refused") == 0);
    CHECK(strcmp(sc.reply, "b7 NO [AUTHENTICATIONFAILED] nope\r\n") == 0);
    end(&sc);

    start(&sc, &proto_imap, "plain", "a1");
    CHECK(finish(&sc, "* BYE go away\r\n"));
    CHECK(strcmp(sc.outcome, "failed") == 0);
    end(&sc);
}

static void imap_limits(void)
{
    scene_t sc;
    start(&sc, &proto_imap, "plain", "a1");
    char *junk = malloc(70000);
    memset(junk, 'x', 70000);
    peer_send(sc.fd, junk, 70000); /* no line end within the login buffer */
    free(junk);
    CHECK(peer_run_until(&sc.loop, &sc.over, 2));
    CHECK(strcmp(sc.outcome, "failed") == 0);
    CHECK(strstr(sc.reply, "too long") != NULL);
    end(&sc);

    start(&sc, &proto_imap, "plain", "a1");
    close(sc.fd); /* gone before its greeting */
    sc.fd = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(peer_run_until(&sc.loop, &sc.over, 2));
    CHECK(strcmp(sc.outcome, "failed") == 0);
    CHECK(strstr(sc.reply, "closed") != NULL);
    end(&sc);
}

static void pop3_login(void)
{
    scene_t sc;
    start(&sc, &proto_pop3, "plain", "");
    CHECK(exchange(&sc, "+OK ready\r\n", "USER alice\r\n"));
    CHECK(exchange(&sc, "+OK\r\n", "PASS secret\r\n"));
    CHECK(finish(&sc, "+OK logged in\r\n"));
    CHECK(strcmp(sc.outcome, "ready") == 0);
    CHECK(strcmp(sc.reply, "+OK logged in\r\n") == 0);
    end(&sc);

    start(&sc, &proto_pop3, "plain", "");
    CHECK(exchange(&sc, "+OK ready\r\n", "USER alice\r\n"));
    CHECK(exchange(&sc, "+OK\r\n", "PASS secret\r\n"));
    CHECK(finish(&sc, "-ERR [AUTH] wrong\r\n"));
    CHECK(strcmp(sc.outcome, "refused") == 0);
    CHECK(strcmp(sc.reply, "-ERR [AUTH] wrong\r\n") == 0);
    end(&sc);
}

static void smtp_login(void)
{
    scene_t sc;
    start(&sc, &proto_smtp, "plain", "");
    CHECK(exchange(&sc, "220 mx ESMTP\r\n", "EHLO px.test\r\n"));
    CHECK(exchange(&sc, "250-mx\r\n250-AUTH LOGIN PLAIN\r\n250 8BITMIME\r\n", "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"));
    CHECK(finish(&sc, "235 2.7.0 ok\r\n"));
    CHECK(strcmp(sc.outcome, "ready") == 0);
    CHECK(strcmp(sc.reply, "235 2.7.0 Authentication successful\r\n") == 0);
    end(&sc);

    /* only LOGIN offered: user in the command, password after the 334 */
    start(&sc, &proto_smtp, "plain", "");
    CHECK(exchange(&sc, "220 mx ESMTP\r\n", "EHLO px.test\r\n"));
    CHECK(exchange(&sc, "250-mx\r\n250 AUTH LOGIN\r\n", "AUTH LOGIN YWxpY2U=\r\n"));
    CHECK(exchange(&sc, "334 UGFzc3dvcmQ6\r\n", "c2VjcmV0\r\n"));
    CHECK(finish(&sc, "535-5.7.8 no\r\n535 5.7.8 really not\r\n"));
    CHECK(strcmp(sc.outcome, "refused") == 0);
    CHECK(strcmp(sc.reply, "535-5.7.8 no\r\n535 5.7.8 really not\r\n") == 0); /* every line of it */
    end(&sc);

    start(&sc, &proto_smtp, "plain", "");
    CHECK(finish(&sc, "hello\r\n"));
    CHECK(strcmp(sc.outcome, "failed") == 0);
    end(&sc);
}

static void sieve_login(void)
{
    scene_t sc;
    start(&sc, &proto_sieve, "plain", "");
    CHECK(exchange(&sc, "\"IMPLEMENTATION\" \"Dovecot\"\r\n\"SASL\" \"PLAIN\"\r\n\"VERSION\" \"1.0\"\r\nOK \"ready\"\r\n",
                   "AUTHENTICATE \"PLAIN\" \"AGFsaWNlAHNlY3JldA==\"\r\n"));
    CHECK(finish(&sc, "OK \"Logged in.\"\r\n"));
    CHECK(strcmp(sc.outcome, "ready") == 0);
    CHECK(strcmp(sc.reply, "OK \"Logged in.\"\r\n") == 0);
    end(&sc);

    start(&sc, &proto_sieve, "plain", "");
    CHECK(exchange(&sc, "\"SASL\" \"PLAIN\"\r\nOK \"ready\"\r\n", "AUTHENTICATE \"PLAIN\" \"AGFsaWNlAHNlY3JldA==\"\r\n"));
    CHECK(finish(&sc, "NO \"Authentication failed.\"\r\n"));
    CHECK(strcmp(sc.outcome, "refused") == 0);
    CHECK(strcmp(sc.reply, "NO \"Authentication failed.\"\r\n") == 0);
    end(&sc);

    /* STARTTLS asked for and refused: never plaintext */
    start(&sc, &proto_sieve, "plain", "");
    sc.u.tls = UPSTREAM_TLS_STARTTLS;
    CHECK(exchange(&sc, "\"STARTTLS\"\r\nOK \"ready\"\r\n", "STARTTLS\r\n"));
    CHECK(finish(&sc, "NO \"TLS support isn't enabled.\"\r\n"));
    CHECK(strcmp(sc.outcome, "failed") == 0);
    end(&sc);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    imap_login();
    imap_limits();
    pop3_login();
    smtp_login();
    sieve_login();
    CHECK_DONE();
}
