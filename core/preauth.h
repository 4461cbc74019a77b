/* preauth.h: the pre-auth engine, one for every protocol (as Dovecot's
 * login-common is). It reads whole commands from the client (with the
 * limits, max_errors and the too-long rule in one place), runs the SASL
 * exchange (challenges, responses, "*", the OAuth failure dance, EXTERNAL),
 * STARTTLS, and the refusals; a protocol supplies its parser, its reply
 * wording and its own commands through its descriptor (proto.h), and calls
 * the functions below from its commands. */
#ifndef POSTERN_PREAUTH_H
#define POSTERN_PREAUTH_H

#include "cmd.h"
#include "proto.h"
#include "sasl.h"

#include <stdbool.h>

#define PREAUTH_MAX_TAG 128 /* RFC 9051 sets none; Dovecot takes 100, nginx 32 */

/* The engine's part of a session. */
typedef struct preauth {
    int state;                   /* PREAUTH_COMMAND, PREAUTH_SASL, PREAUTH_OAUTH_FAILED */
    sasl_t sasl;
    char *oauth_failure;         /* the refusal sent once the client answers the OAuth error challenge */
    int lit_acked;               /* REPLY_LITERAL already sent for this many literals of the command */
    char tag[PREAUTH_MAX_TAG + 1]; /* the current command's tag, "" when it has none */
} preauth_t;

enum { PREAUTH_COMMAND, PREAUTH_SASL, PREAUTH_OAUTH_FAILED };

struct session;
struct refusal;

/* For session.c: input arrived, or parsing may go on (output drained, a
 * login attempt ended). */
void preauth_input(struct session *s);
/* A refusal (from the policy, or made by the core): the protocol's words
 * for it, after the OAuth error challenge when an OAuth mechanism was used. */
void preauth_refuse(struct session *s, const struct refusal *r);
void preauth_reset(struct session *s);     /* after STARTTLS: a fresh start */
void preauth_free(struct session *s);

/* For protocol modules. */
/* Says `what` (text NULL: the protocol's words), counting an error when
 * the protocol's table says it is one. */
void preauth_reply(struct session *s, reply_t what, const char *text);
void preauth_error(struct session *s);     /* counts an error; at max_errors: last words, close */
const char *preauth_tag(const struct session *s);
/* starttls = "only" and no TLS yet: says REPLY_TLS_REQUIRED, returns true. */
bool preauth_tls_required(struct session *s);
/* STARTTLS (args: it had arguments). */
void preauth_starttls(struct session *s, bool args);
/* AUTHENTICATE mech [initial-response] (ir NULL: none; "=": empty). */
void preauth_authenticate(struct session *s, const char *mech, size_t mlen, const char *ir, size_t irlen);
/* The refusal's message, or the default: a temporary failure's, or `failed`. */
const char *preauth_refusal_text(const struct refusal *r, const char *failed);
/* s->cred is complete (LOGIN, USER/PASS, APOP, an SMTP envelope): ask the policy. */
void preauth_login(struct session *s);

#endif
