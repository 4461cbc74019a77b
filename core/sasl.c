/* sasl.c: base64 through mbedTLS and SASL message parsing. */
#include "sasl.h"

#include <mbedtls/base64.h>

#include <stdlib.h>
#include <string.h>

char *sasl_b64_decode(const char *in, size_t len, size_t *outlen)
{
    if (len == 1 && in[0] == '=') { /* RFC 4959: an empty initial response */
        *outlen = 0;
        return calloc(1, 1);
    }
    /* RFC 4648 base64 comes padded: a cut-off group is an error, not a
     * shorter credential. */
    if (len % 4 != 0)
        return NULL;
    size_t n = 0;
    int rc = mbedtls_base64_decode(NULL, 0, &n, (const unsigned char *)in, len);
    if (rc == MBEDTLS_ERR_BASE64_INVALID_CHARACTER)
        return NULL;
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    if (mbedtls_base64_decode((unsigned char *)out, n + 1, &n, (const unsigned char *)in, len) != 0) {
        free(out);
        return NULL;
    }
    out[n] = '\0';
    *outlen = n;
    return out;
}

char *sasl_b64_encode(const void *in, size_t len)
{
    size_t n = 0;
    mbedtls_base64_encode(NULL, 0, &n, in, len);
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    if (mbedtls_base64_encode((unsigned char *)out, n + 1, &n, in, len) != 0) {
        free(out);
        return NULL;
    }
    out[n] = '\0';
    return out;
}

int sasl_plain_split(const char *msg, size_t len, const char **authzid, const char **authcid,
                     const char **passwd)
{
    const char *nul1 = memchr(msg, '\0', len);
    if (!nul1)
        return -1;
    const char *rest = nul1 + 1;
    size_t restlen = len - (size_t)(rest - msg);
    const char *nul2 = memchr(rest, '\0', restlen);
    if (!nul2 || nul2 == rest)
        return -1;
    /* A third NUL would hide bytes after the password: reject it. */
    if (memchr(nul2 + 1, '\0', len - (size_t)(nul2 + 1 - msg)))
        return -1;
    *authzid = msg;
    *authcid = rest;
    *passwd = nul2 + 1;
    return 0;
}

int sasl_safe_credential(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\0' || s[i] == '\r' || s[i] == '\n')
            return 0;
    return 1;
}
