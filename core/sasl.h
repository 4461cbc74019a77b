/* sasl.h: SASL pieces shared by the protocols: base64 (mbedTLS), the
 * PLAIN message, and the check that credentials are safe to forward. */
#ifndef POSTERN_SASL_H
#define POSTERN_SASL_H

#include <stddef.h>

/* Decodes base64 into a NUL-terminated malloc'd string; *outlen gets its
 * length. Returns NULL on bad base64. "=" alone decodes to "". */
char *sasl_b64_decode(const char *in, size_t len, size_t *outlen);
/* Encodes into a NUL-terminated malloc'd string. */
char *sasl_b64_encode(const void *in, size_t len);

/* Splits "authzid NUL authcid NUL passwd" (RFC 4616). The outputs point
 * into msg. Returns 0, or -1 when malformed (missing NULs, empty authcid). */
int sasl_plain_split(const char *msg, size_t len, const char **authzid, const char **authcid,
                     const char **passwd);

/* Credentials must never smuggle a line break or NUL into an upstream
 * command: 1 when s[0..len) is safe to forward, else 0. */
int sasl_safe_credential(const char *s, size_t len);

#endif
