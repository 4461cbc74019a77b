/* session.h: one client connection from accept to close, and the small
 * interface a protocol module uses to drive it. The session owns every
 * per-connection allocation and frees them all in one place
 * (session_free, once its last uv handle has closed). */
#ifndef POSTERN_SESSION_H
#define POSTERN_SESSION_H

#include "buf.h"
#include "config.h"
#include "conn.h"
#include "preauth.h"
#include "proto.h"
#include "sasl.h"
#include "upstream.h"

#include <uv.h>

#include <stdbool.h>
#include <stdint.h>

struct policy;
struct policy_call;
struct login;
struct relay;

/* Which phase the connection is in; each installs its own behaviour. */
typedef enum {
    PHASE_PROXY_HEADER,  /* waiting for a load balancer's PROXY header */
    PHASE_TLS_HANDSHAKE, /* implicit TLS, or after STARTTLS */
    PHASE_CONNECT_HOOK,  /* on_connect runs */
    PHASE_PREAUTH,       /* protocol talks to the client */
    PHASE_AUTH_HOOK,     /* authenticate runs; client input is only buffered */
    PHASE_REFUSE_WAIT,   /* a refusal waits its `wait` seconds */
    PHASE_UPSTREAM,      /* connecting to and logging in to an upstream */
    PHASE_RELAY,         /* bytes both ways */
    PHASE_CLOSING,
} session_phase_t;

/* A refusal from the policy (or from the core when something failed). */
typedef struct refusal {
    char *message;           /* NULL: the protocol's generic text */
    double wait;
    char *code;              /* SMTP reply code, e.g. "451 4.3.0"; NULL = default */
    bool temporary;          /* not the user's fault: try again later */
    bool close;              /* close the connection after the reply (nginx without Auth-Wait) */
} refusal_t;

void refusal_free(refusal_t *r);

typedef struct session {
    uint64_t id;
    uv_loop_t *loop;
    const config_t *cfg;          /* pinned at accept: reloads never change it */
    const listen_conf_t *listener;
    const proto_t *proto;
    void *pstate;                 /* the protocol's state, state_size bytes */
    struct policy *policy;        /* pinned at accept: reloads never change it */
    session_phase_t phase;

    conn_t client;
    uv_timer_t timer;             /* the current phase's timeout */
    int handles;                  /* open uv handles; freed at zero */
    char client_ip[64], local_ip[64];
    int client_port, local_port;  /* from the PROXY header when the listener takes one */
    bool proxied;                 /* a PROXY header gave the addresses above */
    char peer_ip[64];             /* then: the balancer's own address */

    bool starttls;                /* the TLS handshake follows a STARTTLS */
    buf_t cin;                    /* client bytes not yet parsed (plaintext) */
    bool client_eof;
    bool quit;                    /* close once output is flushed */
    bool proto_timer;             /* the timer runs proto->timer */

    preauth_t auth;               /* the pre-auth engine's state */
    int errors;                   /* protocol errors (max_errors) */
    int login_attempt;
    credentials_t cred;

    struct policy_call *hook;     /* the running hook, if any */
    int vars_ref;                 /* the Lua s.vars table */

    upstream_t *upstreams;        /* the policy's choice, tried in order */
    int nupstreams, upstream_idx;
    upstream_conn_t *up;          /* the upstream connection */
    struct login *login;          /* the login on it */
    bool splice;                  /* on_connect chose an upstream: no login, raw relay */
    refusal_t *pending_refusal;   /* PHASE_REFUSE_WAIT: sent when the timer fires */
    char upstream_name[128];      /* "host:port" of the upstream in use */

    struct relay *relay;
    uint64_t bytes_in, bytes_out; /* client->upstream, upstream->client */
    uint64_t start_ms;
    const char *close_reason;
    bool limit_counted;           /* holds one of the limits' counts, under limit_ip */
    uint8_t limit_ip[16];

    struct session *prev, *next;  /* all live sessions */
} session_t;

/* Listener side. */
void session_accept(uv_stream_t *server, config_t *cfg, const listen_conf_t *l);
void session_close_all(void);
/* A graceful stop: sessions before login are told the server is shutting
 * down and closed, logins in progress may finish, relaying sessions go on.
 * drained() is called once no session is left (at once if none is). */
void session_shutdown(void (*drained)(void));
/* The same wait without a word to anyone: a worker whose listeners were
 * replaced by a reload finishes its sessions, then drained(). */
void session_drain(void (*drained)(void));
int session_count(void);

/* For protocol modules and the pre-auth engine. */
void session_write(session_t *s, const void *data, size_t len);
void session_printf(session_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void session_quit(session_t *s);                  /* close after the output is flushed */
void session_close(session_t *s, const char *why);/* close now */
bool session_output_blocked(const session_t *s); /* stop parsing until the client reads */
void session_set_timeout(session_t *s, double seconds); /* (re)arm the phase's timeout */
/* Pre-auth: call proto->timer after `seconds` instead of the idle
 * timeout (SMTP's greeting delay); the protocol re-arms the idle timeout
 * with session_set_timeout(s, s->cfg->timeout). */
void session_protocol_timer(session_t *s, double seconds);
void session_log(const session_t *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const char *session_capabilities(const session_t *s); /* the listener's, for the TLS state */
bool session_tls_active(const session_t *s);
/* For the pre-auth engine. */
void session_authenticate(session_t *s);          /* s->cred is complete: ask the policy */
void session_refuse(session_t *s, const refusal_t *r); /* say it, then back to pre-auth or close */
void session_starttls(session_t *s);              /* after the protocol's OK: handshake, then a fresh start */

/* From the Lua bridge when a hook finishes. */
typedef enum { POLICY_CONTINUE, POLICY_UPSTREAMS, POLICY_REFUSE, POLICY_ERROR } policy_outcome_t;
void session_hook_done(session_t *s, policy_outcome_t outcome, upstream_t *ups, int nups, refusal_t *r);

#endif
