/* login.h: logging in to an upstream, whatever the protocol. login.c
 * reads the upstream's lines (bounded), hands each to the protocol's
 * login_line (proto.h), and gives the protocol what every upstream login
 * needs: send a line, queue pieces that go one per continuation ("+ ",
 * "334 "), answer an OAuth failure challenge, STARTTLS, and the three
 * outcomes. Like the relay it never sees a session: the owner passes what
 * the login needs and hears the outcome through events, so it is tested
 * over loopback on its own (tests/test_login.c). */
#ifndef POSTERN_LOGIN_H
#define POSTERN_LOGIN_H

#include "buf.h"
#include "conn.h"
#include "proto.h"
#include "sasl.h"
#include "upstream.h"

#include <stdbool.h>

#define LOGIN_MAX_PENDING 4

typedef struct login login_t;

typedef struct login_events {
    /* Logged in: `reply` is for the client, then `rest` (what the upstream
     * sent after it). The owner starts relaying on the connection. */
    void (*ready)(void *owner, const char *reply, size_t len, const char *rest, size_t restlen);
    /* The upstream refused the credentials: `reply` is the protocol's
     * refusal for the client. */
    void (*refused)(void *owner, const char *reply, size_t len, const char *log_text);
    /* The upstream misbehaved or went away: try another. */
    void (*failed)(void *owner, const char *why);
    /* A line for the log, with the owner's context. */
    void (*log)(void *owner, int level, const char *msg);
} login_events_t;

typedef struct login_params {
    const proto_t *proto;
    void *pstate;                  /* the protocol's state of this session (client side included) */
    const upstream_t *upstream;
    const struct listen_conf *listener;
    tls_client_t *tls_client;      /* for STARTTLS towards the upstream */
    const char *user, *password;   /* to log in with (the policy's, else the client's) */
    const credentials_t *cred;     /* what the client presented */
    const char *tag;               /* the client's command tag (IMAP), "" when none */
    const char *client_ip;         /* for XCLIENT and friends */
    int client_port;
    const char *server_name;
    const login_events_t *ev;
    void *owner;
} login_params_t;

struct login {
    login_params_t p;
    conn_t *conn;
    buf_t in;                      /* upstream bytes not parsed yet */
    char *pending[LOGIN_MAX_PENDING]; /* pieces sent one per continuation */
    int npending, next_pending;
    int mech;                      /* the SASL mechanism used upstream, 0 for none */
    bool starttls;                 /* STARTTLS was done */
    bool over;                     /* an outcome was told */
    int depth;                     /* inside a callback: login_free waits */
    bool doomed;
};

/* A login on c (connected); nothing happens before login_begin, so the
 * owner can keep the pointer before any event can reach it. */
login_t *login_new(conn_t *c, const login_params_t *p);
/* Calls the protocol's login_start and reads the upstream. */
void login_begin(login_t *l);
/* Detaches from the connection (it stays open) and frees; safe from
 * inside an event. */
void login_free(login_t *l);

/* For protocol modules. */
void login_send(login_t *l, const char *data, size_t len);
/* Sends a malloc'd line and wipes and frees it (login lines carry passwords). */
void login_send_line(login_t *l, char *line);
/* Queues a malloc'd piece for the next continuation (login_continue). */
void login_queue(login_t *l, char *piece);
/* The upstream asked for more: the next queued piece, or the dummy answer
 * to an OAuth failure challenge (the refusal follows), or a failure. */
void login_continue(login_t *l);
/* The answer to an OAuth failure challenge for the mechanism in use (NULL
 * when it is not an OAuth one); login_continue sends it as a line. */
const char *login_oauth_dummy(const login_t *l);
void login_forget_pending(login_t *l);
/* The user, password and SASL mechanism (sasl_upstream_mech: 0 for the
 * protocol's usual way) to log in with; false (and the login failed) when
 * there is no password (CRAM-MD5 and APOP clients need one from the
 * policy). */
bool login_credentials(login_t *l, const char **user, const char **password, int *mech);
bool login_wants_starttls(const login_t *l);  /* tls = "starttls" and not done yet */
void login_starttls(login_t *l);               /* after the upstream's OK to STARTTLS */
void login_ready(login_t *l, const char *reply, size_t len);
void login_refused(login_t *l, const char *reply, size_t len, const char *log_text);
void login_fail(login_t *l, const char *why);
/* Fails with "<what>: "<the upstream's line>"" (cut to 100 bytes). */
void login_fail_line(login_t *l, const char *what, const char *line, size_t len);
void login_log(login_t *l, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
