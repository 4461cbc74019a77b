/* Unit tests of core/sasl.c: base64, PLAIN splitting, the mechanisms'
 * state machine (sasl_begin / sasl_step) with good and malformed client
 * messages, the digests (RFC 1321, RFC 2104, RFC 2195 and RFC 1939
 * examples), the messages postern sends upstream and the choice of the
 * upstream mechanism. */
#include "check.h"
#include "config.h"
#include "sasl.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ALL_MECHS (AUTH_PLAIN | AUTH_LOGIN | AUTH_CRAM_MD5 | AUTH_XOAUTH2 | AUTH_OAUTHBEARER)
/* a refused message, and the reason the reply will give */
#define CHECK_FAULT(call, why)        \
    do {                              \
        CHECK_INT((call), PT_INVALID); \
        CHECK_INT(sa.fault, (why));    \
    } while (0)
#define STR_EQ(a, b) ((a) != NULL && strcmp((a), (b)) == 0)

static char challenge[512];

/* base64 of raw[0..n) (n may include NULs); static buffer */
static const char *b64n(const char *raw, size_t n)
{
    static char out[4096];
    char *e = sasl_b64_encode(raw, n);
    snprintf(out, sizeof out, "%s", e ? e : "");
    free(e);
    return out;
}

#define B64(lit) b64n(lit, sizeof(lit) - 1) /* a literal with embedded NULs */

/* the decoded challenge; static buffer */
static const char *unb64(const char *b)
{
    static char out[1024];
    size_t n = 0;
    char *d = sasl_b64_decode(b, strlen(b), &n);
    snprintf(out, sizeof out, "%s", d ? d : "<bad base64>");
    free(d);
    return out;
}

static int begin(sasl_t *sa, int mech, const char *ir, credentials_t *cred)
{
    return sasl_begin(sa, mech, ir, ir ? strlen(ir) : 0, "mail.example.org", cred, challenge, sizeof challenge);
}

static int step(sasl_t *sa, const char *line, credentials_t *cred)
{
    return sasl_step(sa, line, strlen(line), cred, challenge, sizeof challenge);
}

static void test_base64(void)
{
    size_t n;
    char *d = sasl_b64_decode("AGFsaWNlAHNlY3JldA==", 20, &n);
    CHECK(d != NULL);
    CHECK_INT(n, 13);
    free(d);

    d = sasl_b64_decode("=", 1, &n); /* RFC 4959/5034/4954: the empty initial response */
    CHECK(d && n == 0);
    free(d);
    d = sasl_b64_decode("", 0, &n); /* an empty continuation line */
    CHECK(d && n == 0);
    free(d);

    /* RFC 4648: padded, alphabet only */
    CHECK(sasl_b64_decode("not base64!", 11, &n) == NULL);
    CHECK(sasl_b64_decode("AGFsaWNlAHNlY3JldA", 18, &n) == NULL);    /* unpadded */
    CHECK(sasl_b64_decode("AGFsaWNl!HNlY3JldA==", 20, &n) == NULL);  /* illegal character */
    CHECK(sasl_b64_decode("AGFsa=NlAHNlY3JldA==", 20, &n) == NULL);  /* "=" inside */
    CHECK(sasl_b64_decode("AGFsaWNl HNlY3JldA=", 19, &n) == NULL);   /* a space inside */
    CHECK(sasl_b64_decode("YWJj\r\nZGVm", 10, &n) == NULL);          /* a line break inside */
    CHECK(sasl_b64_decode("YQ===", 5, &n) == NULL);
    CHECK(sasl_b64_decode("====", 4, &n) == NULL);
    CHECK(sasl_b64_decode("YWJj    ", 8, &n) == NULL);               /* trailing spaces */

    char *e = sasl_b64_encode("\0u\0p", 4);
    CHECK(STR_EQ(e, "AHUAcA=="));
    free(e);
    e = sasl_b64_encode("", 0);
    CHECK(STR_EQ(e, ""));
    free(e);
}

static void test_plain_split(void)
{
    const char *z, *c, *p;
    CHECK_INT(sasl_plain_split("\0alice\0secret", 13, &z, &c, &p), 0);
    CHECK(STR_EQ(z, "") && STR_EQ(c, "alice") && STR_EQ(p, "secret"));
    CHECK_INT(sasl_plain_split("alice", 5, &z, &c, &p), -1);        /* no NUL */
    CHECK_INT(sasl_plain_split("alice\0secret", 12, &z, &c, &p), -1); /* one NUL */
    CHECK_INT(sasl_plain_split("\0\0pw", 4, &z, &c, &p), -1);        /* empty authcid */
    CHECK_INT(sasl_plain_split("a\0b\0c\0d", 7, &z, &c, &p), -1);    /* hidden extra field */
    CHECK_INT(sasl_plain_split("admin\0bob\0pw", 12, &z, &c, &p), 0);
    CHECK(STR_EQ(z, "admin") && STR_EQ(c, "bob") && STR_EQ(p, "pw"));
}

static void test_safe_credential(void)
{
    CHECK_INT(sasl_safe_credential("pass\r\nA1 DELETE", 16), 0);
    CHECK_INT(sasl_safe_credential("pass\rx", 6), 0);
    CHECK_INT(sasl_safe_credential("pass\nx", 6), 0);
    CHECK_INT(sasl_safe_credential("p\0w", 3), 0);
    CHECK_INT(sasl_safe_credential("p\xc3\xa4ss w", 7), 1);
    CHECK_INT(sasl_safe_credential("", 0), 1);
}

static void test_mech_names(void)
{
    CHECK_INT(sasl_mech_from_name("PLAIN", 5, ALL_MECHS), SASL_PLAIN);
    CHECK_INT(sasl_mech_from_name("plain", 5, ALL_MECHS), SASL_PLAIN); /* case-insensitive */
    CHECK_INT(sasl_mech_from_name("Login", 5, ALL_MECHS), SASL_LOGIN);
    CHECK_INT(sasl_mech_from_name("cram-md5", 8, ALL_MECHS), SASL_CRAM_MD5);
    CHECK_INT(sasl_mech_from_name("XOAUTH2", 7, ALL_MECHS), SASL_XOAUTH2);
    CHECK_INT(sasl_mech_from_name("OAUTHBEARER", 11, ALL_MECHS), SASL_OAUTHBEARER);
    CHECK_INT(sasl_mech_from_name("PLAINX", 6, ALL_MECHS), 0);
    CHECK_INT(sasl_mech_from_name("PLAINX", 5, ALL_MECHS), SASL_PLAIN); /* only len bytes count */
    CHECK_INT(sasl_mech_from_name("PLAI", 4, ALL_MECHS), 0);
    CHECK_INT(sasl_mech_from_name("DIGEST-MD5", 10, ALL_MECHS), 0);
    CHECK_INT(sasl_mech_from_name("EXTERNAL", 8, ALL_MECHS | AUTH_EXTERNAL), SASL_EXTERNAL); /* the TLS client certificate */
    CHECK_INT(sasl_mech_from_name("EXTERNAL", 8, ALL_MECHS), 0);
    /* not offered on the listener: refused */
    CHECK_INT(sasl_mech_from_name("LOGIN", 5, AUTH_PLAIN), 0);
    CHECK_INT(sasl_mech_from_name("XOAUTH2", 7, AUTH_PLAIN | AUTH_LOGIN), 0);
    CHECK_INT(sasl_mech_from_name("PLAIN", 5, AUTH_USER | AUTH_APOP | AUTH_NONE), 0);

    CHECK(STR_EQ(sasl_mech_name(SASL_PLAIN), "PLAIN"));
    CHECK(STR_EQ(sasl_mech_name(SASL_CRAM_MD5), "CRAM-MD5"));
    CHECK(STR_EQ(sasl_mech_name(SASL_OAUTHBEARER), "OAUTHBEARER"));

    char list[128];
    sasl_mech_list(ALL_MECHS | AUTH_USER | AUTH_APOP | AUTH_NONE, list, sizeof list);
    CHECK(STR_EQ(list, "PLAIN LOGIN CRAM-MD5 XOAUTH2 OAUTHBEARER"));
    sasl_mech_list(AUTH_PLAIN, list, sizeof list);
    CHECK(STR_EQ(list, "PLAIN"));
    sasl_mech_list(AUTH_USER | AUTH_NONE, list, sizeof list);
    CHECK(STR_EQ(list, ""));
    sasl_mech_list(AUTH_XOAUTH2 | AUTH_LOGIN, list, sizeof list);
    CHECK(STR_EQ(list, "LOGIN XOAUTH2"));
}

static void test_plain(void)
{
    sasl_t sa;
    credentials_t cr = { 0 };

    /* initial response with an authorization identity */
    CHECK_INT(begin(&sa, SASL_PLAIN, B64("admin\0alice\0secret"), &cr), PT_OK);
    CHECK(STR_EQ(cr.mechanism, "plain"));
    CHECK(STR_EQ(cr.user, "alice"));
    CHECK(STR_EQ(cr.password, "secret"));
    CHECK(STR_EQ(cr.authzid, "admin"));
    CHECK(cr.salt == NULL && cr.digest == NULL);

    /* no initial response: an empty challenge, then the message; the
     * previous attempt's authzid is gone */
    CHECK_INT(begin(&sa, SASL_PLAIN, NULL, &cr), PT_AGAIN);
    CHECK(STR_EQ(challenge, ""));
    CHECK(cr.user == NULL && cr.authzid == NULL && cr.password == NULL);
    CHECK_INT(step(&sa, B64("\0bob\0pass word"), &cr), PT_OK);
    CHECK(STR_EQ(cr.user, "bob"));
    CHECK(STR_EQ(cr.password, "pass word"));
    CHECK(cr.authzid == NULL);

    /* UTF-8 is fine */
    CHECK_INT(begin(&sa, SASL_PLAIN, B64("\0j\xc3\xb6rg\0p\xc3\xa4ss"), &cr), PT_OK);
    CHECK(STR_EQ(cr.user, "j\xc3\xb6rg"));

    /* malformed */
    CHECK_FAULT(begin(&sa, SASL_PLAIN, B64("alice"), &cr), SASL_FAULT_MESSAGE);             /* no NUL */
    CHECK_FAULT(begin(&sa, SASL_PLAIN, B64("alice\0secret"), &cr), SASL_FAULT_MESSAGE);     /* one NUL */
    CHECK_FAULT(begin(&sa, SASL_PLAIN, B64("\0\0secret"), &cr), SASL_FAULT_MESSAGE);        /* empty authcid */
    CHECK_FAULT(begin(&sa, SASL_PLAIN, B64("\0alice\0"), &cr), SASL_FAULT_MESSAGE);         /* RFC 4616: passwd = 1*SAFE */
    CHECK_FAULT(begin(&sa, SASL_PLAIN, B64("\0alice\0secret\0x"), &cr), SASL_FAULT_MESSAGE); /* third NUL */
    CHECK_FAULT(begin(&sa, SASL_PLAIN, "=", &cr), SASL_FAULT_MESSAGE);                      /* empty message */
    CHECK_FAULT(begin(&sa, SASL_PLAIN, "AGFsaWNlAHNlY3JldA", &cr), SASL_FAULT_BASE64);
    CHECK_FAULT(begin(&sa, SASL_PLAIN, "AGFsaWNl!HNlY3JldA==", &cr), SASL_FAULT_BASE64);

    /* CR or LF anywhere in a field */
    CHECK_FAULT(begin(&sa, SASL_PLAIN, B64("\0alice\0sec\r\nret"), &cr), SASL_FAULT_MESSAGE);
    CHECK_FAULT(begin(&sa, SASL_PLAIN, B64("\0ali\nce\0secret"), &cr), SASL_FAULT_MESSAGE);
    CHECK_FAULT(begin(&sa, SASL_PLAIN, B64("ad\rmin\0alice\0secret"), &cr), SASL_FAULT_MESSAGE);

    /* "*" cancels */
    CHECK_INT(begin(&sa, SASL_PLAIN, NULL, &cr), PT_AGAIN);
    CHECK_INT(step(&sa, "*", &cr), PT_DECLINED);
    credentials_clear(&cr);
}

static void test_login(void)
{
    sasl_t sa;
    credentials_t cr = { 0 };

    CHECK_INT(begin(&sa, SASL_LOGIN, NULL, &cr), PT_AGAIN);
    CHECK(STR_EQ(unb64(challenge), "Username:"));
    CHECK(STR_EQ(cr.mechanism, "login"));
    CHECK_INT(step(&sa, B64("alice"), &cr), PT_AGAIN);
    CHECK(STR_EQ(unb64(challenge), "Password:"));
    CHECK_INT(step(&sa, B64("se cret"), &cr), PT_OK);
    CHECK(STR_EQ(cr.user, "alice"));
    CHECK(STR_EQ(cr.password, "se cret"));
    CHECK(cr.authzid == NULL);

    /* the user name as initial response */
    CHECK_INT(begin(&sa, SASL_LOGIN, B64("bob"), &cr), PT_AGAIN);
    CHECK(STR_EQ(unb64(challenge), "Password:"));
    CHECK(STR_EQ(cr.user, "bob"));
    CHECK_INT(step(&sa, B64("pw"), &cr), PT_OK);
    CHECK(STR_EQ(cr.password, "pw"));

    /* an empty user name gets the password prompt (the client's next line
     * is its password, not a command), then fails */
    CHECK_INT(begin(&sa, SASL_LOGIN, NULL, &cr), PT_AGAIN);
    CHECK_INT(step(&sa, "", &cr), PT_AGAIN);
    CHECK(STR_EQ(unb64(challenge), "Password:"));
    CHECK_FAULT(step(&sa, B64("pw"), &cr), SASL_FAULT_MESSAGE);
    CHECK_INT(begin(&sa, SASL_LOGIN, "=", &cr), PT_AGAIN);
    CHECK_FAULT(step(&sa, B64("pw"), &cr), SASL_FAULT_MESSAGE);

    /* bad base64 at either step */
    CHECK_INT(begin(&sa, SASL_LOGIN, NULL, &cr), PT_AGAIN);
    CHECK_FAULT(step(&sa, "YWxpY2U", &cr), SASL_FAULT_BASE64);
    CHECK_INT(begin(&sa, SASL_LOGIN, B64("alice"), &cr), PT_AGAIN);
    CHECK_FAULT(step(&sa, "c2Vj$mV0", &cr), SASL_FAULT_BASE64);

    /* CR/LF in the user name or the password */
    CHECK_INT(begin(&sa, SASL_LOGIN, NULL, &cr), PT_AGAIN);
    int rc = step(&sa, B64("alice\r\nA1 LOGOUT"), &cr);
    if (rc == PT_AGAIN)
        rc = step(&sa, B64("secret"), &cr);
    CHECK_FAULT(rc, SASL_FAULT_MESSAGE);
    CHECK_INT(begin(&sa, SASL_LOGIN, B64("alice"), &cr), PT_AGAIN);
    CHECK_FAULT(step(&sa, B64("sec\nret"), &cr), SASL_FAULT_MESSAGE);

    /* a NUL must not cut the name or password short */
    CHECK_INT(begin(&sa, SASL_LOGIN, NULL, &cr), PT_AGAIN);
    rc = step(&sa, B64("alice\0evil"), &cr);
    if (rc == PT_AGAIN)
        rc = step(&sa, B64("secret"), &cr);
    CHECK_FAULT(rc, SASL_FAULT_MESSAGE);
    CHECK_INT(begin(&sa, SASL_LOGIN, B64("alice"), &cr), PT_AGAIN);
    CHECK_FAULT(step(&sa, B64("secret\0junk"), &cr), SASL_FAULT_MESSAGE);

    /* "*" cancels at either step */
    CHECK_INT(begin(&sa, SASL_LOGIN, NULL, &cr), PT_AGAIN);
    CHECK_INT(step(&sa, "*", &cr), PT_DECLINED);
    CHECK_INT(begin(&sa, SASL_LOGIN, B64("alice"), &cr), PT_AGAIN);
    CHECK_INT(step(&sa, "*", &cr), PT_DECLINED);
    credentials_clear(&cr);
}

static void test_cram_md5(void)
{
    sasl_t sa;
    credentials_t cr = { 0 };

    /* the challenge is <...@server_name>, fresh each time */
    CHECK_INT(begin(&sa, SASL_CRAM_MD5, NULL, &cr), PT_AGAIN);
    CHECK(STR_EQ(cr.mechanism, "cram-md5"));
    char first[256];
    snprintf(first, sizeof first, "%s", unb64(challenge));
    CHECK(first[0] == '<' && strlen(first) > 20);
    CHECK(strstr(first, "@mail.example.org>") != NULL);
    CHECK(STR_EQ(first, sa.salt));
    CHECK_INT(begin(&sa, SASL_CRAM_MD5, NULL, &cr), PT_AGAIN);
    CHECK(!STR_EQ(first, unb64(challenge)));

    /* RFC 2195's example, with its challenge put in place */
    static const char rfc_challenge[] = "<1896.697170952@postoffice.reston.mci.net>";
    char want[33];
    sasl_hmac_md5_hex("tanstaaftanstaaf", 16, rfc_challenge, strlen(rfc_challenge), want);
    CHECK(STR_EQ(want, "b913a602c7eda7a495b4e6e7334d3890"));
    CHECK_INT(begin(&sa, SASL_CRAM_MD5, NULL, &cr), PT_AGAIN);
    snprintf(sa.salt, sizeof sa.salt, "%s", rfc_challenge);
    CHECK(STR_EQ(B64("tim b913a602c7eda7a495b4e6e7334d3890"),
                 "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw")); /* the RFC's client line */
    CHECK_INT(step(&sa, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw", &cr), PT_OK);
    CHECK(STR_EQ(cr.user, "tim"));
    CHECK(STR_EQ(cr.digest, "b913a602c7eda7a495b4e6e7334d3890"));
    CHECK(STR_EQ(cr.salt, rfc_challenge));
    CHECK(cr.password == NULL);

    /* a user name with a space: the digest is after the last one */
    CHECK_INT(begin(&sa, SASL_CRAM_MD5, NULL, &cr), PT_AGAIN);
    CHECK_INT(step(&sa, B64("tim smith b913a602c7eda7a495b4e6e7334d3890"), &cr), PT_OK);
    CHECK(STR_EQ(cr.user, "tim smith"));

    /* malformed responses */
    static const char *const bad[] = {
        "tim B913A602C7EDA7A495B4E6E7334D3890",   /* upper-case hex */
        "tim b913a602c7eda7a495b4e6e7334d389",    /* 31 digits */
        "tim b913a602c7eda7a495b4e6e7334d38900",  /* 33 digits */
        "tim g913a602c7eda7a495b4e6e7334d3890",   /* not hex */
        "timb913a602c7eda7a495b4e6e7334d3890",    /* no space */
        " b913a602c7eda7a495b4e6e7334d3890",      /* empty user */
        "b913a602c7eda7a495b4e6e7334d3890",       /* no user at all */
        "tim ",                                    /* no digest */
        "",                                        /* nothing */
        "t\r\nim b913a602c7eda7a495b4e6e7334d3890", /* CR LF in the user */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_INT(begin(&sa, SASL_CRAM_MD5, NULL, &cr), PT_AGAIN);
        int rc = step(&sa, b64n(bad[i], strlen(bad[i])), &cr);
        if (rc != PT_INVALID)
            fprintf(stderr, "  (CRAM-MD5 response %zu: \"%s\")\n", i, bad[i]);
        CHECK_FAULT(rc, SASL_FAULT_MESSAGE);
    }
    CHECK_INT(begin(&sa, SASL_CRAM_MD5, NULL, &cr), PT_AGAIN);
    CHECK_FAULT(step(&sa, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw=", &cr), SASL_FAULT_BASE64);

    /* the server speaks first: an initial response is refused */
    CHECK_FAULT(begin(&sa, SASL_CRAM_MD5, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw", &cr), SASL_FAULT_IR);

    CHECK_INT(begin(&sa, SASL_CRAM_MD5, NULL, &cr), PT_AGAIN);
    CHECK_INT(step(&sa, "*", &cr), PT_DECLINED);
    credentials_clear(&cr);
}

static void test_xoauth2(void)
{
    sasl_t sa;
    credentials_t cr = { 0 };

    CHECK_INT(begin(&sa, SASL_XOAUTH2, B64("user=alice@example.com\1auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\1\1"), &cr),
              PT_OK);
    CHECK(STR_EQ(cr.mechanism, "xoauth2"));
    CHECK(STR_EQ(cr.user, "alice@example.com"));
    CHECK(STR_EQ(cr.password, "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"));

    /* without an initial response: an empty challenge first */
    CHECK_INT(begin(&sa, SASL_XOAUTH2, NULL, &cr), PT_AGAIN);
    CHECK(STR_EQ(challenge, ""));
    CHECK_INT(step(&sa, B64("user=bob\1auth=Bearer tok\1\1"), &cr), PT_OK);
    CHECK(STR_EQ(cr.user, "bob") && STR_EQ(cr.password, "tok"));

    /* malformed */
    static const struct { const char *msg; size_t len; } bad[] = {
#define M(lit) { lit, sizeof(lit) - 1 }
        M("user=alice\1\1"),                            /* no auth= */
        M("auth=Bearer tok\1\1"),                       /* no user= */
        M("user=\1auth=Bearer tok\1\1"),                /* empty user */
        M("user=alice\1auth=Bearer \1\1"),              /* empty token */
        M("user=alice\1auth=Basic dG9r\1\1"),           /* not a bearer token */
        M("user=alice auth=Bearer tok"),                /* no ^A separators */
        M(""),                                          /* nothing */
        M("user=alice\1auth=Bearer tok\r\nA1 LOGOUT\1\1"), /* CR LF in the token */
        M("user=ali\nce\1auth=Bearer tok\1\1"),         /* LF in the user */
        M("user=alice\0evil\1auth=Bearer tok\1\1"),     /* NUL in the user */
        M("user=alice\1auth=Bearer tok\0junk\1\1"),     /* NUL in the token */
#undef M
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = begin(&sa, SASL_XOAUTH2, b64n(bad[i].msg, bad[i].len), &cr);
        if (rc != PT_INVALID)
            fprintf(stderr, "  (XOAUTH2 message %zu)\n", i);
        CHECK_FAULT(rc, SASL_FAULT_MESSAGE);
    }

    CHECK_INT(begin(&sa, SASL_XOAUTH2, NULL, &cr), PT_AGAIN);
    CHECK_INT(step(&sa, "*", &cr), PT_DECLINED);
    CHECK_FAULT(begin(&sa, SASL_XOAUTH2, "dXNlcj1hbGljZQFhdXRoPUJlYXJlciB0b2sBAQ", &cr), SASL_FAULT_BASE64);
    credentials_clear(&cr);
}

static void test_oauthbearer(void)
{
    sasl_t sa;
    credentials_t cr = { 0 };

    /* RFC 7628 §4.1's example (host and port pairs ignored) */
    CHECK_INT(begin(&sa, SASL_OAUTHBEARER,
                    B64("n,a=user@example.com,\1host=server.example.com\1port=143\1"
                        "auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\1\1"),
                    &cr),
              PT_OK);
    CHECK(STR_EQ(cr.mechanism, "oauthbearer"));
    CHECK(STR_EQ(cr.user, "user@example.com"));
    CHECK(STR_EQ(cr.password, "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="));

    /* "y" (the client could have used channel binding) is as good as "n" */
    CHECK_INT(begin(&sa, SASL_OAUTHBEARER, B64("y,a=bob,\1auth=Bearer tok\1\1"), &cr), PT_OK);
    CHECK(STR_EQ(cr.user, "bob"));

    /* saslname escapes (RFC 5801): "=2C" is ",", "=3D" is "=" */
    CHECK_INT(begin(&sa, SASL_OAUTHBEARER, B64("n,a=cn=3Dalice=2Cdc=3Dexample,\1auth=Bearer tok\1\1"), &cr),
              PT_OK);
    CHECK(STR_EQ(cr.user, "cn=alice,dc=example"));
    CHECK(STR_EQ(cr.password, "tok"));

    /* without an initial response */
    CHECK_INT(begin(&sa, SASL_OAUTHBEARER, NULL, &cr), PT_AGAIN);
    CHECK(STR_EQ(challenge, ""));
    CHECK_INT(step(&sa, B64("n,a=carol,\1auth=Bearer t2\1\1"), &cr), PT_OK);
    CHECK(STR_EQ(cr.user, "carol") && STR_EQ(cr.password, "t2"));

    /* a long a= name is kept whole or refused, never cut */
    {
        char msg[2100];
        char name[1501];
        memset(name, 'x', 1500);
        name[1500] = '\0';
        int n = snprintf(msg, sizeof msg, "n,a=%s,\1auth=Bearer tok\1\1", name);
        int rc = begin(&sa, SASL_OAUTHBEARER, b64n(msg, (size_t)n), &cr);
        CHECK(rc == PT_INVALID || (rc == PT_OK && cr.user && strlen(cr.user) == 1500));
    }

    /* no authzid (RFC 7628 3.1: optional): the user is "", the policy reads the token */
    CHECK_INT(begin(&sa, SASL_OAUTHBEARER, B64("n,,\1auth=Bearer tok\1\1"), &cr), PT_OK);
    CHECK(STR_EQ(cr.user, "") && STR_EQ(cr.password, "tok"));
    /* XOAUTH2 has no such form: user= is required */
    CHECK_FAULT(begin(&sa, SASL_XOAUTH2, B64("auth=Bearer tok\1\1"), &cr), SASL_FAULT_MESSAGE);

    /* bad GS2 headers and messages */
    static const struct { const char *msg; size_t len; } bad[] = {
#define M(lit) { lit, sizeof(lit) - 1 }
        M("x,a=alice,\1auth=Bearer tok\1\1"),            /* unknown cb flag */
        M("p=tls-unique,a=alice,\1auth=Bearer tok\1\1"), /* channel binding: not in OAUTHBEARER */
        M("n,a=alice\1auth=Bearer tok\1\1"),             /* header not closed by "," */
        M("n,a=alice,auth=Bearer tok\1\1"),              /* no ^A after the header */
        M("na=alice,\1auth=Bearer tok\1\1"),             /* no "," after the flag */
        M("n,a=alice,\1\1"),                             /* no auth= */
        M("n,a=alice,\1auth=Bearer \1\1"),               /* empty token */
        M("n,a=alice,\1auth=Basic dG9r\1\1"),            /* not bearer */
        M("n,a=al=41ice,\1auth=Bearer tok\1\1"),         /* "=" not followed by 2C or 3D (RFC 5801) */
        M("n,a=alice,\1auth=Bearer tok\r\n\1\1"),        /* CR LF in the token */
        M("n,a=alice,\1auth=Bearer tok\0junk\1\1"),      /* NUL in the token */
        M("n,"),                                         /* truncated */
        M(""),
#undef M
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = begin(&sa, SASL_OAUTHBEARER, b64n(bad[i].msg, bad[i].len), &cr);
        if (rc != PT_INVALID)
            fprintf(stderr, "  (OAUTHBEARER message %zu)\n", i);
        CHECK_FAULT(rc, SASL_FAULT_MESSAGE);
    }

    CHECK_INT(begin(&sa, SASL_OAUTHBEARER, NULL, &cr), PT_AGAIN);
    CHECK_INT(step(&sa, "*", &cr), PT_DECLINED);
    credentials_clear(&cr);
}

static void test_begin_clears(void)
{
    sasl_t sa;
    credentials_t cr = { 0 };
    CHECK_INT(begin(&sa, SASL_PLAIN, B64("admin\0alice\0secret"), &cr), PT_OK);
    CHECK(STR_EQ(cr.authzid, "admin"));
    /* a new exchange starts from nothing */
    CHECK_INT(begin(&sa, SASL_LOGIN, NULL, &cr), PT_AGAIN);
    CHECK(cr.user == NULL && cr.password == NULL && cr.authzid == NULL);
    CHECK_INT(step(&sa, B64("bob"), &cr), PT_AGAIN);
    CHECK_INT(step(&sa, B64("pw"), &cr), PT_OK);
    CHECK(cr.authzid == NULL);
    CHECK(STR_EQ(cr.mechanism, "login"));

    CHECK_INT(begin(&sa, SASL_CRAM_MD5, NULL, &cr), PT_AGAIN);
    CHECK_INT(step(&sa, B64("tim b913a602c7eda7a495b4e6e7334d3890"), &cr), PT_OK);
    CHECK(cr.salt && cr.digest);
    CHECK_INT(begin(&sa, SASL_XOAUTH2, B64("user=u\1auth=Bearer t\1\1"), &cr), PT_OK);
    CHECK(cr.salt == NULL && cr.digest == NULL && cr.authzid == NULL);

    CHECK_INT(begin(&sa, 0, NULL, &cr), PT_ERROR);
    CHECK_INT(begin(&sa, 99, "=", &cr), PT_ERROR);
    credentials_clear(&cr);
    CHECK(cr.user == NULL && cr.password == NULL && cr.mechanism == NULL);
}

static void test_digests(void)
{
    /* RFC 1321 test suite */
    static const char *const md5_cases[][2] = {
        { "", "d41d8cd98f00b204e9800998ecf8427e" },
        { "a", "0cc175b9c0f1b6a831c399e269772661" },
        { "abc", "900150983cd24fb0d6963f7d28e17f72" },
        { "message digest", "f96b697d7cb7938d525a2f31aaf161d0" },
        { "abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b" },
        { "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "d174ab98d277d9f5a5611c2c9f419d9f" },
        { "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
          "57edf4a22be3c955ac49da2e2107b67a" },
        /* RFC 1939's APOP example */
        { "<1896.697170952@dbc.mtview.ca.us>tanstaaf", "c4c9334bac560ecc979e58001b3e22fb" },
    };
    char out[33];
    for (size_t i = 0; i < sizeof md5_cases / sizeof *md5_cases; i++) {
        sasl_md5_hex(md5_cases[i][0], strlen(md5_cases[i][0]), out);
        if (!STR_EQ(out, md5_cases[i][1]))
            fprintf(stderr, "  (md5 of \"%s\" is %s)\n", md5_cases[i][0], out);
        CHECK(STR_EQ(out, md5_cases[i][1]));
    }
    /* binary input */
    sasl_md5_hex("\0", 1, out);
    CHECK(STR_EQ(out, "93b885adfe0da089cdf634904fd59f71"));

    /* RFC 2104 / RFC 2202 HMAC-MD5 test cases */
    char key1[16];
    memset(key1, 0x0b, sizeof key1);
    sasl_hmac_md5_hex(key1, 16, "Hi There", 8, out);
    CHECK(STR_EQ(out, "9294727a3638bb1c13f48ef8158bfc9d"));
    sasl_hmac_md5_hex("Jefe", 4, "what do ya want for nothing?", 28, out);
    CHECK(STR_EQ(out, "750c783e6ab0b503eaa86e310a5db738"));
    char key3[16], data3[50];
    memset(key3, 0xaa, sizeof key3);
    memset(data3, 0xdd, sizeof data3);
    sasl_hmac_md5_hex(key3, 16, data3, 50, out);
    CHECK(STR_EQ(out, "56be34521d144c88dbb8c733f0e8b3f6"));
    char key6[80];
    memset(key6, 0xaa, sizeof key6); /* a key longer than the block: hashed first */
    sasl_hmac_md5_hex(key6, 80, "Test Using Larger Than Block-Size Key - Hash Key First", 54, out);
    CHECK(STR_EQ(out, "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd"));
    /* RFC 2195 */
    sasl_hmac_md5_hex("tanstaaftanstaaf", 16, "<1896.697170952@postoffice.reston.mci.net>", 42, out);
    CHECK(STR_EQ(out, "b913a602c7eda7a495b4e6e7334d3890"));
}

static void test_salt(void)
{
    char a[160], b[160];
    sasl_make_salt(a, sizeof a, "pop.example.org");
    sasl_make_salt(b, sizeof b, "pop.example.org");
    size_t n = strlen(a);
    CHECK(n > 20 && a[0] == '<' && a[n - 1] == '>');
    CHECK(strstr(a, "@pop.example.org>") == a + n - strlen("@pop.example.org>"));
    char pid[32];
    snprintf(pid, sizeof pid, "<%d.", (int)getpid());
    CHECK(strncmp(a, pid, strlen(pid)) == 0);
    CHECK(!STR_EQ(a, b)); /* a random part: two challenges differ */
    /* RFC 1939: the timestamp is msg-id syntax: no spaces, one "@" */
    CHECK(strchr(a, ' ') == NULL);
    CHECK(strchr(a, '@') == strrchr(a, '@'));
}

static void test_oauth_error(void)
{
    char out[256];
    sasl_oauth_error(out, sizeof out, false);
    const char *json = unb64(out);
    CHECK(json[0] == '{' && json[strlen(json) - 1] == '}');
    CHECK(strstr(json, "\"status\":\"invalid_token\"") != NULL);
    CHECK(strstr(json, "\"schemes\":\"bearer\"") != NULL);
    sasl_oauth_error(out, sizeof out, true);
    json = unb64(out);
    CHECK(strstr(json, "\"status\":") != NULL);
    CHECK(strstr(json, "invalid_token") == NULL); /* temporary: not the token's fault */
}

/* decoded message postern sends upstream for `mech` */
static void check_response(int mech, const char *user, const char *pass, const char *want, size_t wantlen)
{
    char *r = sasl_client_response(mech, user, pass);
    CHECK(r != NULL);
    if (!r)
        return;
    size_t n = 0;
    char *d = sasl_b64_decode(r, strlen(r), &n);
    CHECK(d != NULL);
    CHECK_INT(n, wantlen);
    int same = d && n == wantlen && memcmp(d, want, n) == 0;
    if (!same)
        fprintf(stderr, "  (client response for mech %d, user \"%s\": got \"%s\")\n", mech, user, d ? d : "?");
    CHECK(same);
    free(d);
    free(r);
}

#define CHECK_RESPONSE(mech, user, pass, lit) check_response(mech, user, pass, lit, sizeof(lit) - 1)

static void test_client_response(void)
{
    CHECK_RESPONSE(SASL_PLAIN, "alice", "secret", "\0alice\0secret");
    CHECK_RESPONSE(SASL_PLAIN, "alice", "", "\0alice\0");
    CHECK_RESPONSE(SASL_XOAUTH2, "alice@example.com", "ya29.tok", "user=alice@example.com\1auth=Bearer ya29.tok\1\1");
    CHECK_RESPONSE(SASL_OAUTHBEARER, "alice@example.com", "ya29.tok",
                   "n,a=alice@example.com,\1auth=Bearer ya29.tok\1\1");
    /* RFC 5801 saslname: "," and "=" are escaped, the name is kept */
    CHECK_RESPONSE(SASL_OAUTHBEARER, "cn=alice,dc=example", "tok", "n,a=cn=3Dalice=2Cdc=3Dexample,\1auth=Bearer tok\1\1");
    CHECK_RESPONSE(SASL_OAUTHBEARER, "", "tok", "n,,\1auth=Bearer tok\1\1"); /* no user: no authzid */

    char *p = sasl_plain_message("bob", "pw");
    CHECK(STR_EQ(p, "AGJvYgBwdw=="));
    free(p);
    char *x = sasl_xoauth2_message("bob", "t");
    CHECK(STR_EQ(x, B64("user=bob\1auth=Bearer t\1\1")));
    free(x);

    /* what postern sends, postern (as a server) reads back the same way */
    sasl_t sa;
    credentials_t cr = { 0 };
    char *o = sasl_oauthbearer_message("dave", "tok-1");
    CHECK_INT(begin(&sa, SASL_OAUTHBEARER, o, &cr), PT_OK);
    CHECK(STR_EQ(cr.user, "dave") && STR_EQ(cr.password, "tok-1"));
    free(o);
    o = sasl_oauthbearer_message("a,b=c", "tok-2");
    CHECK_INT(begin(&sa, SASL_OAUTHBEARER, o, &cr), PT_OK);
    CHECK(STR_EQ(cr.user, "a,b=c") && STR_EQ(cr.password, "tok-2"));
    free(o);
    o = sasl_xoauth2_message("erin", "tok-3");
    CHECK_INT(begin(&sa, SASL_XOAUTH2, o, &cr), PT_OK);
    CHECK(STR_EQ(cr.user, "erin") && STR_EQ(cr.password, "tok-3"));
    free(o);
    credentials_clear(&cr);
}

static void test_upstream_mech(void)
{
    credentials_t c = { 0 };
    /* cleartext clients: the protocol's usual way (0) */
    c.mechanism = "plain";
    CHECK_INT(sasl_upstream_mech(&c, NULL), 0);
    c.mechanism = "login";
    CHECK_INT(sasl_upstream_mech(&c, NULL), 0);
    c.mechanism = "cram-md5"; /* the policy's cleartext password, the usual way */
    CHECK_INT(sasl_upstream_mech(&c, NULL), 0);
    c.mechanism = "apop";
    CHECK_INT(sasl_upstream_mech(&c, NULL), 0);
    c.mechanism = NULL;
    CHECK_INT(sasl_upstream_mech(&c, NULL), 0);
    /* a token only works as a token: the client's OAuth mechanism */
    c.mechanism = "xoauth2";
    CHECK_INT(sasl_upstream_mech(&c, NULL), SASL_XOAUTH2);
    c.mechanism = "oauthbearer";
    CHECK_INT(sasl_upstream_mech(&c, NULL), SASL_OAUTHBEARER);
    /* the upstream table's auth = "..." wins */
    c.mechanism = "plain";
    CHECK_INT(sasl_upstream_mech(&c, "login"), SASL_LOGIN);
    CHECK_INT(sasl_upstream_mech(&c, "LOGIN"), SASL_LOGIN);
    CHECK_INT(sasl_upstream_mech(&c, "plain"), SASL_PLAIN);
    CHECK_INT(sasl_upstream_mech(&c, "xoauth2"), SASL_XOAUTH2);
    CHECK_INT(sasl_upstream_mech(&c, "oauthbearer"), SASL_OAUTHBEARER);
    c.mechanism = "xoauth2";
    CHECK_INT(sasl_upstream_mech(&c, "oauthbearer"), SASL_OAUTHBEARER);
    CHECK_INT(sasl_upstream_mech(&c, "plain"), SASL_PLAIN);
    /* "apop" is not SASL: the POP3 module handles it, here 0 */
    c.mechanism = "apop";
    CHECK_INT(sasl_upstream_mech(&c, "apop"), 0);
    CHECK_INT(sasl_upstream_mech(&c, "no-such-mech"), 0);
}

int main(void)
{
    test_base64();
    test_plain_split();
    test_safe_credential();
    test_mech_names();
    test_plain();
    test_login();
    test_cram_md5();
    test_xoauth2();
    test_oauthbearer();
    test_begin_clears();
    test_digests();
    test_salt();
    test_oauth_error();
    test_client_response();
    test_upstream_mech();
    CHECK_DONE();
}
