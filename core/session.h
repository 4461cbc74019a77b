/* session.h: one client connection from accept to close, and the small
 * interface a protocol module uses to drive it. The session owns every
 * per-connection allocation and frees them all in one place. */
#ifndef POSTERN_SESSION_H
#define POSTERN_SESSION_H

#include "buf.h"
#include "config.h"
#include "proto.h"
#include "sasl.h"

#include <uv.h>

#include <stdbool.h>
#include <stdint.h>

struct lb_policy;
struct lb_task;
struct upstream_conn;
struct tls_conn;

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

/* The SMTP envelope when the client does not authenticate (auth none):
 * the policy routes on it. */
#define ENVELOPE_MAX_RCPT 100
typedef struct envelope {
    char *helo;
    char *mail_from;
    char *mail_line, *rcpt_line;  /* the MAIL and first RCPT commands as the client sent them */
    char *rcpt_to[ENVELOPE_MAX_RCPT];
    int nrcpt;
} envelope_t;

void envelope_clear(envelope_t *e);

/* An upstream the policy chose. */
typedef struct upstream {
    char *host;
    int port;
    char *user;              /* NULL: the client's */
    char *password;
    int tls;                 /* 0 plaintext, 1 implicit TLS, 2 STARTTLS */
    bool verify;             /* check the upstream's certificate (default) */
    char *sni;               /* the name sent and checked; NULL: host */
    char *certificate, *key; /* a client certificate for the upstream, PEM files */
    char *auth;              /* mechanism to log in upstream with, NULL: the protocol picks */
    int xclient;             /* SMTP XCLIENT: -1 the listener's default, 0 no, 1 yes */
    int proxy_protocol;      /* 0, or the PROXY protocol version (1, 2) to send first */
} upstream_t;

/* A refusal from the policy (or from the core when something failed). */
typedef struct refusal {
    char *message;           /* NULL: the protocol's generic text */
    double wait;
    char *code;              /* SMTP reply code, e.g. "451 4.3.0"; NULL = default */
    bool temporary;          /* not the user's fault: try again later */
    bool close;              /* close the connection after the reply (nginx without Auth-Wait) */
} refusal_t;

typedef struct session {
    uint64_t id;
    uv_loop_t *loop;
    const config_t *cfg;          /* pinned at accept: reloads never change it */
    const listen_conf_t *listener;
    const proto_t *proto;
    void *pstate;                 /* the protocol's state, state_size bytes */
    struct lb_policy *policy;     /* pinned at accept: reloads never change it */
    session_phase_t phase;

    uv_tcp_t client;
    uv_timer_t timer;             /* the current phase's timeout */
    int handles;                  /* open uv handles; freed at zero */
    char client_ip[64], local_ip[64];
    int client_port, local_port;  /* from the PROXY header when the listener takes one */
    bool proxied;                 /* a PROXY header gave the addresses above */
    char peer_ip[64];             /* then: the balancer's own address */

    struct tls_conn *ctls;        /* TLS towards the client, when on */
    bool tls_active;              /* its handshake is done */
    bool starttls;                /* the handshake follows a STARTTLS */
    char *raw;                    /* one read of ciphertext */
    buf_t cin;                    /* client bytes not yet parsed (plaintext) */
    buf_t uin;                    /* upstream bytes during login */
    bool client_reading;
    bool client_eof;
    bool quit;                    /* close once output is flushed */
    bool proto_timer;             /* the timer runs proto->on_timer */
    size_t client_queued;         /* bytes written to the client not yet flushed */

    int errors;                   /* protocol errors (max_errors) */
    int login_attempt;
    credentials_t cred;
    envelope_t env;

    struct lb_task *task;         /* the running hook, if any */
    int vars_ref;                 /* the Lua s.vars table */

    upstream_t *upstreams;        /* the policy's choice, tried in order */
    int nupstreams, upstream_idx;
    struct upstream_conn *up;     /* the upstream connection */
    bool splice;                  /* on_connect chose an upstream: no login, raw relay */
    refusal_t *pending_refusal;   /* PHASE_REFUSE_WAIT: sent when the timer fires */
    char upstream_name[128];      /* "host:port" of the upstream in use */

    struct relay *relay;
    uint64_t bytes_in, bytes_out; /* client->upstream, upstream->client */
    uint64_t start_ms;
    const char *close_reason;

    struct session *prev, *next;  /* all live sessions */
} session_t;

/* Listener side. */
void session_accept(uv_stream_t *server, config_t *cfg, const listen_conf_t *l);
void session_close_all(void);
int session_count(void);

void session_handle_closed(session_t *s);         /* one of its uv handles closed */

/* For protocol modules. */
void session_write(session_t *s, const void *data, size_t len);
void session_printf(session_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void session_quit(session_t *s);                  /* close after the output is flushed */
void session_close(session_t *s, const char *why);/* close now */
bool session_output_blocked(const session_t *s); /* stop parsing until the client reads */
void session_error(session_t *s);                 /* count an error; may quit */
void session_reset_credentials(session_t *s);
void session_set_timeout(session_t *s, double seconds); /* (re)arm the phase's timeout */
/* Pre-auth: call proto->on_timer after `seconds` instead of the idle
 * timeout (SMTP's greeting delay); the protocol re-arms the idle timeout
 * with session_set_timeout(s, s->cfg->timeout). */
void session_protocol_timer(session_t *s, double seconds);
void session_authenticate(session_t *s);          /* s->cred is complete: ask the policy */
void session_log(const session_t *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* TLS towards the client. */
void session_starttls(session_t *s);              /* after the protocol's OK: handshake, then proto->tls_started */
const char *session_capabilities(const session_t *s); /* the listener's, for the TLS state */
bool session_tls_required(const session_t *s);    /* starttls only, and no TLS yet */

/* Upstream login, for protocol modules. */
void session_upstream_starttls(session_t *s);     /* after the upstream's OK: then proto->upstream_tls_ready */
bool session_upstream_wants_starttls(const session_t *s);
void session_upstream_write(session_t *s, const void *data, size_t len);
const upstream_t *session_upstream(const session_t *s);
const char *session_upstream_user(const session_t *s);
const char *session_upstream_password(const session_t *s);
/* The upstream logged us in: send `reply` to the client and relay. */
void session_upstream_ready(session_t *s, const char *reply, size_t len);
/* The upstream refused the credentials: the protocol already told the
 * client; go back to pre-auth. */
void session_upstream_refused(session_t *s);
/* The upstream misbehaved (bad greeting, closed): try the next one. */
void session_upstream_failed(session_t *s, const char *why);

/* From the Lua bridge when a hook finishes. */
typedef enum { HOOK_CONTINUE, HOOK_UPSTREAMS, HOOK_REFUSE, HOOK_ERROR } hook_outcome_t;
void session_hook_done(session_t *s, hook_outcome_t outcome, upstream_t *ups, int nups, refusal_t *r);

void refusal_free(refusal_t *r);
void upstreams_free(upstream_t *u, int n);

#endif
