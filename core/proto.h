/* proto.h: the one interface between postern and a mail protocol.
 *
 * Each protocol (imap.c, pop3.c, smtp.c, sieve.c) exports one constant
 * descriptor and registers it in proto.c. Everything protocol-specific is
 * reachable from it: names, ports, mechanisms, configuration keys, the
 * wording of every reply the pre-auth engine (preauth.c) sends, the
 * protocol's own commands, the fields it adds to the policy's session
 * table, and its upstream login (login.h). session.c, preauth.c,
 * upstream.c, login.c, relay.c, config.c and the Lua bridge never name a
 * protocol. */
#ifndef POSTERN_PROTO_H
#define POSTERN_PROTO_H

#include "cmd.h"

#include <stdbool.h>
#include <stddef.h>

struct session;
struct refusal;
struct login;
struct listen_conf;
struct upstream;

/* What the pre-auth engine says to a client. The engine has default
 * words for each (preauth.c); a protocol gives its status words and
 * overrides what it says differently (proto_t.replies). */
typedef enum {
    REPLY_OK,               /* a command succeeded */
    REPLY_BAD,              /* a syntax error in a known command */
    REPLY_NO,               /* refused, not a syntax error */
    REPLY_UNKNOWN,          /* an unknown command, or one not allowed before login */
    REPLY_INVALID,          /* the parser refused the line (its error is the text) */
    REPLY_TOO_LONG,         /* the command is longer than client_buffer: the connection closes */
    REPLY_LITERAL,          /* go ahead with a synchronizing literal (IMAP's "+") */
    REPLY_CHALLENGE,        /* a SASL challenge; text: its base64 (may be empty) */
    REPLY_SASL_CANCELLED,   /* the client answered "*" */
    REPLY_SASL_BASE64,      /* a response that is not base64 */
    REPLY_SASL_IR,          /* an initial response where the server speaks first */
    REPLY_SASL_MESSAGE,     /* base64, but not what the mechanism expects */
    REPLY_MECH_UNKNOWN,     /* a mechanism not offered */
    REPLY_TLS_GO,           /* STARTTLS accepted: the handshake follows */
    REPLY_TLS_ACTIVE,       /* STARTTLS once TLS is up */
    REPLY_TLS_ARGS,         /* STARTTLS with arguments */
    REPLY_TLS_UNAVAILABLE,  /* STARTTLS where it is not offered */
    REPLY_TLS_REQUIRED,     /* authentication before STARTTLS on a starttls = "only" listener */
    REPLY_BYE,              /* last words before the server closes (text: why) */
    REPLY_UNAVAILABLE,      /* the same, for a temporary reason: try later (limits, shutdown) */
    REPLY_COUNT
} reply_t;

/* A protocol's wording of one reply; NULL fields keep the default. */
typedef struct proto_reply {
    const char *status;  /* the status word or code: "NO", "504 5.5.4"; default: proto_t.yes or .no */
    const char *text;    /* default: the engine's text */
} proto_reply_t;

/* The protocol's fields of the policy's session table (SMTP's envelope):
 * the Lua bridge passes a sink, the protocol fills it. */
typedef struct proto_fields {
    void (*string)(void *ctx, const char *name, const char *value);           /* value NULL: skipped */
    void (*list)(void *ctx, const char *name, char *const *values, int n);   /* n 0: skipped */
} proto_fields_t;

/* A number at the configuration's top level that belongs to a protocol
 * (SMTP's smtp_greeting_delay). */
typedef struct proto_setting {
    const char *key;
    double min, max, dflt;
} proto_setting_t;

typedef struct proto {
    const char *name;              /* the listener's protocol = "...", and s.protocol */
    const char *alpn;              /* its ALPN id (RFC 7301): a TLS client offering only others is refused */
    int default_ports[4];          /* listeners on these ports may omit `protocol` */
    unsigned default_auth;         /* AUTH_* offered when the listener names none */
    unsigned allowed_auth;         /* AUTH_* this protocol can speak */
    const char *capabilities_key;  /* the top-level key of its capability list ("imap_capabilities") */
    const char *const *options;    /* boolean keys it reads on listeners and upstreams ("xclient") */
    const proto_setting_t *settings; /* its top-level numbers, NULL-key terminated (or NULL) */
    size_t state_size;             /* bytes of per-session protocol state */
    /* POP3: one reply per command, and an idle client is closed without
     * a word (RFC 1939 §3): no REPLY_BYE after the reply that hit max_errors
     * or max_login_attempts, nor on timeout. */
    bool no_last_words;

    /* Build the listener's pre-auth capability string (malloc'd) from the
     * configured list (NULL: the protocol's default) and the auth mask;
     * starttls: 0 (TLS is on, or never), 1 (STARTTLS offered), 2 (only:
     * STARTTLS offered and no authentication before it). */
    char *(*capabilities)(const char *configured, unsigned auth, int starttls);

    /* ---- client side, before authentication (driven by preauth.c) ---- */
    const char *yes, *no;          /* status words of success and failure ("OK", "BAD") */
    const proto_reply_t *replies;  /* REPLY_COUNT entries, by reply_t: what it words otherwise */
    /* Writes reply `what` the protocol's way (tag, quoting...). */
    void (*reply)(struct session *s, reply_t what, const char *status, const char *text);
    void (*greet)(struct session *s);
    /* Parses one command (pure, see cmd.h): consumed bytes, PT_AGAIN,
     * PT_INVALID (cmd->error, cmd->consumed), PT_TOO_BIG. */
    int (*parse)(const char *buf, size_t len, size_t max, cmd_t *cmd);
    /* Parses one client answer during a SASL exchange into out: consumed
     * bytes, PT_AGAIN or PT_INVALID (cmd->error). NULL: a line. */
    int (*parse_response)(const char *buf, size_t len, cmd_t *cmd, char *out, size_t outlen, size_t *outn);
    /* Runs a parsed command; buf holds its bytes (a copy the engine owns). */
    void (*execute)(struct session *s, const char *buf, const cmd_t *cmd);
    /* The policy or the upstream refused: the refusal line(s), malloc'd. */
    char *(*refusal)(struct session *s, const struct refusal *r);
    /* Optional: an attempt failed (SMTP forgets the refused recipient). */
    void (*attempt_failed)(struct session *s);
    void (*tls_started)(struct session *s);      /* after STARTTLS: start afresh */
    void (*timer)(struct session *s);            /* a delay asked with session_protocol_timer() fired */
    void (*early_input)(struct session *s);      /* input arrived while that delay runs */
    void (*fields)(const struct session *s, const proto_fields_t *out, void *ctx);
    void (*cleanup)(struct session *s);          /* free what the state points to */

    /* ---- upstream login, after the policy chose an upstream (login.h) ---- */
    void (*login_start)(struct login *l);        /* connected: the upstream speaks first */
    void (*login_line)(struct login *l, const char *line, size_t len);
    void (*login_tls_ready)(struct login *l);    /* the upstream STARTTLS handshake is done */
} proto_t;

const proto_t *proto_find(const char *name);
const proto_t *proto_for_port(int port);
/* The registered protocols, NULL-terminated, for the configuration. */
const proto_t *const *proto_all(void);

/* Protocol options on listeners and upstreams: every protocol's names
 * together; a name's bit in the masks below (-1 when unknown). */
int proto_option_index(const char *name);
int proto_option_count(void);
const char *proto_option_name(int i);
/* Their settings likewise (config_setting reads them). */
int proto_setting_index(const char *key, const proto_setting_t **setting);
int proto_setting_count(void);
const proto_setting_t *proto_setting_at(int i);
/* -1 not set, else 0 or 1 */
int proto_upstream_option(const struct upstream *u, const char *name);
bool proto_listener_option(const struct listen_conf *l, const char *name);

#endif
