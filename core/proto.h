/* proto.h: the one interface between the session and a mail protocol.
 * Each protocol (imap.c, pop3.c, smtp.c) exports one constant
 * descriptor; session.c never switches on the protocol. */
#ifndef POSTERN_PROTO_H
#define POSTERN_PROTO_H

#include <stdbool.h>
#include <stddef.h>

struct session;
struct refusal;

typedef struct proto {
    const char *name;
    int default_ports[4];          /* listeners on these ports may omit `protocol` */
    unsigned default_auth;         /* AUTH_* offered when the listener names none */
    unsigned allowed_auth;         /* AUTH_* this protocol can speak */
    size_t state_size;             /* bytes of per-session protocol state */
    /* POP3: one reply per command, and an idle client is closed without
     * a word (RFC 1939 §3): no `bye` after the reply that hit max_errors or
     * max_login_attempts, nor on timeout. */
    bool no_last_words;

    /* Build the listener's pre-auth capability string (malloc'd) from the
     * configured list (NULL: the protocol's default) and the auth mask;
     * starttls: 0 (TLS is on, or never), 1 (STARTTLS offered), 2 (only:
     * STARTTLS offered and no authentication before it). */
    char *(*capabilities)(const char *configured, unsigned auth, int starttls);

    /* Client side, before authentication. */
    void (*start)(struct session *s);            /* send the greeting */
    void (*client_input)(struct session *s);     /* parse s->cin and act */
    void (*auth_refused)(struct session *s, const struct refusal *r);
    void (*bye)(struct session *s, const char *why); /* last words before close */
    void (*cleanup)(struct session *s);          /* free what the state points to */
    void (*on_timer)(struct session *s);         /* a delay asked with session_protocol_timer() */
    void (*tls_started)(struct session *s);      /* the STARTTLS handshake is done: start afresh */

    /* Upstream login, after the policy chose an upstream. */
    void (*upstream_start)(struct session *s);   /* connected: login begins */
    void (*upstream_input)(struct session *s);   /* parse s->uin and act */
    void (*upstream_tls_ready)(struct session *s); /* the upstream STARTTLS handshake is done */
} proto_t;

extern const proto_t proto_imap, proto_pop3, proto_smtp;

const proto_t *proto_find(const char *name);
const proto_t *proto_for_port(int port);

#endif
