/* sasl.h: SASL shared by IMAP, POP3 and SMTP: the mechanisms' message
 * formats and small state machine (PLAIN, LOGIN, CRAM-MD5, XOAUTH2,
 * OAUTHBEARER), the credentials they produce, and base64/MD5/HMAC from
 * mbedTLS. Each protocol only wraps challenges in its own syntax
 * ("+ x" for IMAP/POP3, "334 x" for SMTP). */
#ifndef POSTERN_SASL_H
#define POSTERN_SASL_H

#include "status.h"

#include <stdbool.h>
#include <stddef.h>

/* What the client presented; cleared before every attempt, so nothing
 * stale can leak from one attempt into the next. */
typedef struct credentials {
    char *user;
    char *password;          /* cleartext, or the bearer token (OAuth) */
    char *authzid;           /* PLAIN's authorization identity */
    char *salt;              /* CRAM-MD5 challenge / APOP timestamp */
    char *digest;            /* CRAM-MD5 / APOP response, 32 hex digits */
    const char *mechanism;   /* "plain", "login", "cram-md5", "apop", ... */
    bool envelope;           /* no authentication: an envelope routes (SMTP, mechanism "none") */
} credentials_t;

/* Attempts refused by the policy before the client is dropped, when they
 * are envelopes (a refused recipient is not a failed login: an MX must
 * not drop a transaction for a few unknown addresses). */
#define CRED_MAX_ENVELOPES 100

void credentials_clear(credentials_t *c);

enum {
    SASL_PLAIN = 1,
    SASL_LOGIN,
    SASL_CRAM_MD5,
    SASL_XOAUTH2,
    SASL_OAUTHBEARER,
    SASL_EXTERNAL,           /* the TLS client certificate (RFC 4422 appendix A) */
};

/* Why a client's SASL message was refused (PT_INVALID): each protocol
 * words these differently. */
typedef enum {
    SASL_FAULT_NONE,
    SASL_FAULT_BASE64,       /* not base64 */
    SASL_FAULT_MESSAGE,      /* well-formed base64, wrong content */
    SASL_FAULT_IR,           /* an initial response where the server speaks first */
} sasl_fault_t;

typedef struct sasl {
    int mech;                /* SASL_* in progress, 0 when none */
    int step;
    sasl_fault_t fault;      /* after PT_INVALID */
    char salt[160];          /* CRAM-MD5 */
} sasl_t;

/* Mechanism names and the AUTH_* bits of config.h. */
int sasl_mech_from_name(const char *name, size_t len, unsigned offered);
const char *sasl_mech_name(int mech);   /* "PLAIN", ... */
/* The offered mechanisms as "PLAIN LOGIN ..." into out. */
void sasl_mech_list(unsigned offered, char *out, size_t outlen);

/* Starts `mech` (SASL_*), with the initial response ir (NULL: none; "="
 * is the empty one). Returns what sasl_step would return for ir, or, with
 * no ir, PT_AGAIN and a challenge. sasl_step returns:
 *   PT_AGAIN     send `challenge` (base64, may be empty) and read a response
 *   PT_OK        the credentials are complete
 *   PT_DECLINED  the client sent "*"
 *   PT_INVALID   refused: sa->fault says why
 *   PT_ERROR     an unknown mechanism */
int sasl_begin(sasl_t *sa, int mech, const char *ir, size_t irlen, const char *server_name,
               credentials_t *cred, char *challenge, size_t chlen);
/* A continuation line from the client. */
int sasl_step(sasl_t *sa, const char *line, size_t len, credentials_t *cred, char *challenge, size_t chlen);

/* The error challenge an OAuth mechanism sends before failing (RFC 7628
 * §3.2.2, and Google's XOAUTH2): base64 of a JSON status. */
void sasl_oauth_error(char *out, size_t outlen, bool temporary);

/* Which mechanism to log in upstream with: the upstream's `auth` override
 * ("plain", "login", "xoauth2", "oauthbearer") when given, else the
 * client's own OAuth mechanism (a token only works as a token), else 0:
 * the protocol's usual way (LOGIN, USER/PASS, AUTH PLAIN...). */
int sasl_upstream_mech(const credentials_t *client, const char *override);
/* The initial response for `mech` (PLAIN or an OAuth one), malloc'd base64. */
char *sasl_client_response(int mech, const char *user, const char *password);

/* Client messages for logging in upstream (malloc'd base64). */
char *sasl_plain_message(const char *user, const char *password);
char *sasl_xoauth2_message(const char *user, const char *token);
char *sasl_oauthbearer_message(const char *user, const char *token);

/* Decodes base64 into a NUL-terminated malloc'd string; *outlen gets its
 * length. Returns NULL on bad base64. "=" alone decodes to "". */
char *sasl_b64_decode(const char *in, size_t len, size_t *outlen);
char *sasl_b64_encode(const void *in, size_t len);

/* Splits "authzid NUL authcid NUL passwd" (RFC 4616). The outputs point
 * into msg. Returns 0, or -1 when malformed. */
int sasl_plain_split(const char *msg, size_t len, const char **authzid, const char **authcid,
                     const char **passwd);

/* Credentials must never smuggle a line break or NUL into an upstream
 * command: 1 when s[0..len) is safe to forward, else 0. */
int sasl_safe_credential(const char *s, size_t len);

/* Lower-case hex of MD5(data) and of HMAC-MD5(key, data): 33 bytes out. */
void sasl_md5_hex(const void *data, size_t len, char out[33]);
void sasl_hmac_md5_hex(const void *key, size_t keylen, const void *data, size_t len, char out[33]);

/* A fresh challenge "<pid.random.time@server_name>" (APOP, CRAM-MD5). */
void sasl_make_salt(char *out, size_t outlen, const char *server_name);

#endif
