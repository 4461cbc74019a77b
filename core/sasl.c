/* sasl.c: SASL mechanisms over base64, MD5 and HMAC from mbedTLS. */
#include "sasl.h"

#include "config.h"
#include "mem.h"

#include <mbedtls/base64.h>
#include <mbedtls/md.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

void credentials_clear(credentials_t *c)
{
    if (c->password) {
        explicit_bzero(c->password, strlen(c->password));
        free(c->password);
    }
    free(c->user);
    free(c->authzid);
    free(c->salt);
    free(c->digest);
    memset(c, 0, sizeof *c);
}

/* ---- mechanisms ---- */

static const struct {
    const char *name;
    int mech;
    unsigned bit;
} mechs[] = {
    { "PLAIN", SASL_PLAIN, AUTH_PLAIN },
    { "LOGIN", SASL_LOGIN, AUTH_LOGIN },
    { "CRAM-MD5", SASL_CRAM_MD5, AUTH_CRAM_MD5 },
    { "XOAUTH2", SASL_XOAUTH2, AUTH_XOAUTH2 },
    { "OAUTHBEARER", SASL_OAUTHBEARER, AUTH_OAUTHBEARER },
    { "EXTERNAL", SASL_EXTERNAL, AUTH_EXTERNAL },
};
#define NMECHS (sizeof mechs / sizeof *mechs)

int sasl_mech_from_name(const char *name, size_t len, unsigned offered)
{
    for (size_t i = 0; i < NMECHS; i++)
        if (strlen(mechs[i].name) == len && strncasecmp(mechs[i].name, name, len) == 0)
            return (offered & mechs[i].bit) ? mechs[i].mech : 0;
    return 0;
}

const char *sasl_mech_name(int mech)
{
    for (size_t i = 0; i < NMECHS; i++)
        if (mechs[i].mech == mech)
            return mechs[i].name;
    return "?";
}

void sasl_mech_list(unsigned offered, char *out, size_t outlen)
{
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < NMECHS; i++)
        if (offered & mechs[i].bit) {
            int w = snprintf(out + n, outlen - n, "%s%s", n ? " " : "", mechs[i].name);
            if (w < 0 || (size_t)w >= outlen - n)
                return;
            n += (size_t)w;
        }
}

static void set(char **field, const char *v, size_t len)
{
    if (*field) {
        explicit_bzero(*field, strlen(*field));
        free(*field);
    }
    *field = xstrndup(v, len);
}

/* A client message refused, and why (the replies differ). */
static int fault(sasl_t *sa, sasl_fault_t why)
{
    sa->fault = why;
    return PT_INVALID;
}

static int challenge_text(char *challenge, size_t chlen, const char *text)
{
    char *b = sasl_b64_encode(text, strlen(text));
    snprintf(challenge, chlen, "%s", b ? b : "");
    free(b);
    return PT_AGAIN;
}

int sasl_begin(sasl_t *sa, int mech, const char *ir, size_t irlen, const char *server_name,
               credentials_t *cred, char *challenge, size_t chlen)
{
    memset(sa, 0, sizeof *sa);
    sa->mech = mech;
    challenge[0] = '\0';
    credentials_clear(cred);
    switch (mech) {
    case SASL_LOGIN:
        cred->mechanism = "login";
        if (!ir)
            return challenge_text(challenge, chlen, "Username:");
        break;
    case SASL_CRAM_MD5:
        cred->mechanism = "cram-md5";
        if (ir) /* RFC 2195: the server speaks first */
            return fault(sa, SASL_FAULT_IR);
        sasl_make_salt(sa->salt, sizeof sa->salt, server_name);
        return challenge_text(challenge, chlen, sa->salt);
    case SASL_PLAIN:
        cred->mechanism = "plain";
        break;
    case SASL_XOAUTH2:
        cred->mechanism = "xoauth2";
        break;
    case SASL_OAUTHBEARER:
        cred->mechanism = "oauthbearer";
        break;
    case SASL_EXTERNAL:
        cred->mechanism = "external";
        break;
    default:
        return PT_ERROR;
    }
    if (!ir)
        return PT_AGAIN; /* an empty challenge: "+ " / "334 " */
    return sasl_step(sa, ir, irlen, cred, challenge, chlen);
}

/* "user=U^Aauth=Bearer T^A^A" (XOAUTH2) and, after the GS2 header,
 * "^Aauth=Bearer T^A...^A^A" (OAUTHBEARER, RFC 7628 §3.1). */
static int parse_bearer_kv(const char *p, const char *end, credentials_t *cred, bool need_user)
{
    const char *token = NULL;
    size_t tlen = 0;
    while (p < end) {
        const char *e = memchr(p, '\x01', (size_t)(end - p));
        if (!e)
            return PT_ERROR;
        if (e - p >= 5 && strncmp(p, "user=", 5) == 0)
            set(&cred->user, p + 5, (size_t)(e - p - 5));
        else if (e - p >= 12 && strncasecmp(p, "auth=Bearer ", 12) == 0) {
            token = p + 12;
            tlen = (size_t)(e - token);
        }
        p = e + 1;
        if (p < end && *p == '\x01')
            break;
    }
    if (!token || tlen == 0)
        return PT_ERROR;
    if (!cred->user || !cred->user[0]) {
        if (need_user)
            return PT_ERROR;
        set(&cred->user, "", 0); /* the policy finds the user from the token */
    }
    set(&cred->password, token, tlen);
    return 0;
}

static int oauthbearer(const char *msg, size_t n, credentials_t *cred)
{
    /* gs2-header: "n,a=user," or "y,a=user," or "n,," (no authzid) */
    const char *end = msg + n;
    if (n < 3 || (msg[0] != 'n' && msg[0] != 'y') || msg[1] != ',')
        return PT_ERROR;
    const char *p = msg + 2;
    const char *comma = memchr(p, ',', (size_t)(end - p));
    if (!comma)
        return PT_ERROR;
    if (comma - p >= 2 && strncmp(p, "a=", 2) == 0) {
        /* saslname: "=2C" is ",", "=3D" is "=" */
        char user[1100];
        size_t u = 0;
        for (const char *q = p + 2; q < comma; q++) {
            if (u >= 1024)
                return PT_ERROR; /* longer than any credential we accept */
            if (*q == '=' && comma - q >= 3 && strncmp(q, "=2C", 3) == 0)
                user[u++] = ',', q += 2;
            else if (*q == '=' && comma - q >= 3 && strncmp(q, "=3D", 3) == 0)
                user[u++] = '=', q += 2;
            else if (*q == '=')
                return PT_ERROR; /* RFC 5801 saslname: only =2C and =3D */
            else
                user[u++] = *q;
        }
        set(&cred->user, user, u);
    }
    p = comma + 1;
    if (p >= end || *p != '\x01')
        return PT_ERROR;
    /* RFC 7628 3.1: the authzid is optional */
    return parse_bearer_kv(p + 1, end, cred, false);
}

int sasl_step(sasl_t *sa, const char *line, size_t len, credentials_t *cred, char *challenge, size_t chlen)
{
    challenge[0] = '\0';
    if (len == 1 && line[0] == '*')
        return PT_DECLINED;
    size_t n;
    char *msg = sasl_b64_decode(line, len, &n);
    if (!msg)
        return fault(sa, SASL_FAULT_BASE64);
    int rc = PT_OK;
    /* Only PLAIN has NULs of its own: anywhere else one would cut a
     * credential short without a word. */
    if (sa->mech != SASL_PLAIN && memchr(msg, '\0', n)) {
        explicit_bzero(msg, n);
        free(msg);
        sa->mech = 0;
        return fault(sa, SASL_FAULT_MESSAGE);
    }
    switch (sa->mech) {
    case SASL_PLAIN: {
        const char *authzid, *authcid, *passwd;
        if (sasl_plain_split(msg, n, &authzid, &authcid, &passwd) < 0) {
            rc = PT_INVALID;
            break;
        }
        set(&cred->user, authcid, strlen(authcid));
        set(&cred->password, passwd, n - (size_t)(passwd - msg));
        if (authzid[0])
            set(&cred->authzid, authzid, strlen(authzid));
        break;
    }
    case SASL_LOGIN:
        if (sa->step == 0) {
            /* an empty user name still gets the password prompt, so the
             * client's next line is not taken for a command; it fails then */
            set(&cred->user, msg, n);
            sa->step = 1;
            rc = challenge_text(challenge, chlen, "Password:");
        } else if (!cred->user || !cred->user[0]) {
            rc = PT_INVALID;
        } else {
            set(&cred->password, msg, n);
        }
        break;
    case SASL_CRAM_MD5: {
        /* "user SP digest", the digest 32 lower-case hex digits */
        const char *sp = memrchr(msg, ' ', n);
        size_t dlen = sp ? n - (size_t)(sp + 1 - msg) : 0;
        if (!sp || sp == msg || dlen != 32 || strspn(sp + 1, "0123456789abcdef") != 32) {
            rc = PT_INVALID;
            break;
        }
        set(&cred->user, msg, (size_t)(sp - msg));
        set(&cred->digest, sp + 1, 32);
        set(&cred->salt, sa->salt, strlen(sa->salt));
        break;
    }
    case SASL_XOAUTH2:
        if (parse_bearer_kv(msg, msg + n, cred, true) < 0)
            rc = PT_INVALID;
        break;
    case SASL_OAUTHBEARER:
        if (oauthbearer(msg, n, cred) < 0)
            rc = PT_INVALID;
        break;
    case SASL_EXTERNAL:
        /* the authorization identity, often empty: the certificate says who */
        if (n > 0)
            set(&cred->authzid, msg, n);
        break;
    default:
        rc = PT_ERROR;
    }
    /* Nothing that could end a protocol line may pass. */
    if (rc == PT_OK &&
        ((cred->user && !sasl_safe_credential(cred->user, strlen(cred->user))) ||
         (cred->password && !sasl_safe_credential(cred->password, strlen(cred->password))) ||
         (cred->authzid && !sasl_safe_credential(cred->authzid, strlen(cred->authzid))) ||
         memchr(msg, '\r', n) || memchr(msg, '\n', n)))
        rc = PT_INVALID;
    explicit_bzero(msg, n);
    free(msg);
    if (rc == PT_INVALID) {
        sa->mech = 0;
        return fault(sa, SASL_FAULT_MESSAGE);
    }
    return rc;
}

void sasl_oauth_error(char *out, size_t outlen, bool temporary)
{
    const char *json = temporary ? "{\"status\":\"temporarily_unavailable\",\"schemes\":\"bearer\",\"scope\":\"\"}"
                                 : "{\"status\":\"invalid_token\",\"schemes\":\"bearer\",\"scope\":\"\"}";
    char *b = sasl_b64_encode(json, strlen(json));
    snprintf(out, outlen, "%s", b ? b : "");
    free(b);
}

int sasl_upstream_mech(const credentials_t *client, const char *override)
{
    const char *m = override ? override : client->mechanism;
    if (!m)
        return 0;
    int mech = sasl_mech_from_name(m, strlen(m), ~0u);
    if (mech == SASL_CRAM_MD5 || mech == SASL_EXTERNAL) /* never client mechanisms of ours upstream */
        return 0;
    if (override)
        return mech;
    return mech == SASL_XOAUTH2 || mech == SASL_OAUTHBEARER ? mech : 0;
}

char *sasl_client_response(int mech, const char *user, const char *password)
{
    switch (mech) {
    case SASL_XOAUTH2:
        return sasl_xoauth2_message(user, password);
    case SASL_OAUTHBEARER:
        return sasl_oauthbearer_message(user, password);
    default:
        return sasl_plain_message(user, password);
    }
}

char *sasl_plain_message(const char *user, const char *password)
{
    size_t ul = strlen(user), pl = strlen(password);
    char *msg = xmalloc(ul + pl + 2);
    msg[0] = '\0';
    memcpy(msg + 1, user, ul);
    msg[1 + ul] = '\0';
    memcpy(msg + 2 + ul, password, pl);
    char *b = sasl_b64_encode(msg, ul + pl + 2);
    explicit_bzero(msg, ul + pl + 2);
    free(msg);
    return b;
}

static char *b64_of_printf(const char *fmt, const char *a, const char *b)
{
    char *msg = xasprintf(fmt, a, b);
    char *r = sasl_b64_encode(msg, strlen(msg));
    explicit_bzero(msg, strlen(msg));
    free(msg);
    return r;
}

char *sasl_xoauth2_message(const char *user, const char *token)
{
    return b64_of_printf("user=%s\x01" "auth=Bearer %s\x01\x01", user, token);
}

char *sasl_oauthbearer_message(const char *user, const char *token)
{
    /* RFC 5801 saslname: "," is "=2C" and "=" is "=3D" */
    char *esc = xmalloc(strlen(user) * 3 + 1), *e = esc;
    for (const char *u = user; *u; u++) {
        if (*u == ',')
            memcpy(e, "=2C", 3), e += 3;
        else if (*u == '=')
            memcpy(e, "=3D", 3), e += 3;
        else
            *e++ = *u;
    }
    *e = '\0';
    /* an empty user: no authzid, "n,," (the token says who) */
    char *r = b64_of_printf(*esc ? "n,a=%s,\x01" "auth=Bearer %s\x01\x01" : "n,%s,\x01" "auth=Bearer %s\x01\x01", esc,
                            token);
    free(esc);
    return r;
}

/* ---- encodings and digests ---- */

char *sasl_b64_decode(const char *in, size_t len, size_t *outlen)
{
    if (len == 1 && in[0] == '=') { /* RFC 4959: an empty initial response */
        *outlen = 0;
        return xcalloc(1, 1);
    }
    /* RFC 4648 base64 comes padded: a cut-off group is an error, not a
     * shorter credential; and nothing outside the alphabet (mbedTLS would
     * skip spaces). */
    if (len % 4 != 0)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/' ||
              c == '='))
            return NULL;
    }
    size_t n = 0;
    int rc = mbedtls_base64_decode(NULL, 0, &n, (const unsigned char *)in, len);
    if (rc == MBEDTLS_ERR_BASE64_INVALID_CHARACTER)
        return NULL;
    char *out = xmalloc(n + 1);
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
    char *out = xmalloc(n + 1);
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
        return PT_ERROR;
    const char *rest = nul1 + 1;
    size_t restlen = len - (size_t)(rest - msg);
    const char *nul2 = memchr(rest, '\0', restlen);
    if (!nul2 || nul2 == rest || nul2 + 1 == msg + len) /* RFC 4616: authcid and passwd are 1*SAFE */
        return PT_ERROR;
    /* A third NUL would hide bytes after the password: reject it. */
    if (memchr(nul2 + 1, '\0', len - (size_t)(nul2 + 1 - msg)))
        return PT_ERROR;
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

static void hex(const unsigned char *d, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[2 * n] = '\0';
}

void sasl_md5_hex(const void *data, size_t len, char out[33])
{
    unsigned char d[16];
    mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_MD5), data, len, d);
    hex(d, 16, out);
}

void sasl_hmac_md5_hex(const void *key, size_t keylen, const void *data, size_t len, char out[33])
{
    unsigned char d[16];
    mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_MD5), key, keylen, data, len, d);
    hex(d, 16, out);
}

void sasl_make_salt(char *out, size_t outlen, const char *server_name)
{
    unsigned int r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != sizeof r)
        r = (unsigned)clock();
    snprintf(out, outlen, "<%d.%u.%lld@%s>", (int)getpid(), r, (long long)time(NULL), server_name);
}
