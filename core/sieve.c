/* sieve.c: ManageSieve (RFC 5804) as a proxy needs it, the fourth
 * protocol. The client side answers the non-authenticated state
 * (CAPABILITY, NOOP, LOGOUT, STARTTLS, AUTHENTICATE with the listener's
 * mechanisms, initial responses as quoted strings or literals) through the
 * pre-auth engine; the upstream side reads the server's capabilities,
 * STARTTLS when asked, logs in with AUTHENTICATE "PLAIN" and its initial
 * response (as Dovecot's managesieve-login proxy does) and hands the
 * server's OK to the client. */
#include "config.h"
#include "log.h"
#include "login.h"
#include "mem.h"
#include "preauth.h"
#include "proto.h"
#include "sasl.h"
#include "session.h"
#include "sieve_parse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* What Dovecot Pigeonhole announces by default: clients (sieve-connect,
 * Roundcube) decide what to offer from SIEVE before they log in. */
#define SIEVE_DEFAULT_CAPABILITIES                                                                             \
    "IMPLEMENTATION postern\n"                                                                                 \
    "SIEVE fileinto reject envelope encoded-character vacation subaddress comparator-i;ascii-numeric relational " \
    "regex imap4flags copy include variables body enotify environment mailbox date index ihave duplicate mime "  \
    "foreverypart extracttext\n"                                                                               \
    "NOTIFY mailto"

enum { U_GREETING, U_STARTTLS, U_TLS_CAPABILITY, U_AUTH };

typedef struct sieve_state {
    int ustate;
} sieve_state_t;

static void sieve_cleanup(session_t *s)
{
    (void)s;
}

/* A ManageSieve string: quoted, with " and \ escaped. */
static void quote_into(buf_t *out, const char *v, size_t len)
{
    buf_append(out, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        if (v[i] == '"' || v[i] == '\\')
            buf_append(out, "\\", 1);
        buf_append(out, v + i, 1);
    }
    buf_append(out, "\"", 1);
}

/* The capability lines, CRLF-terminated: each configured entry "NAME
 * value..." as "NAME" "value...", then SASL, STARTTLS and VERSION. */
static char *sieve_capabilities(const char *configured, unsigned auth, int starttls)
{
    const char *base = configured ? configured : SIEVE_DEFAULT_CAPABILITIES;
    buf_t out;
    buf_init(&out, 64 * 1024);
    bool version = false;
    for (const char *e = base; *e;) {
        const char *nl = strchr(e, '\n');
        size_t el = nl ? (size_t)(nl - e) : strlen(e);
        const char *value;
        size_t vl;
        size_t nlen = cmd_split_word(e, el, &value, &vl);
        version |= nlen == 7 && strncasecmp(e, "VERSION", 7) == 0;
        quote_into(&out, e, nlen);
        if (value) {
            buf_append(&out, " ", 1);
            quote_into(&out, value, vl);
        }
        buf_append(&out, "\r\n", 2);
        e += el + (nl ? 1 : 0);
    }
    /* RFC 5804 §1.7: SASL may be empty only when STARTTLS is offered */
    char mechs[128];
    sasl_mech_list(starttls == 2 ? 0 : auth, mechs, sizeof mechs);
    buf_append(&out, "\"SASL\" ", 7);
    quote_into(&out, mechs, strlen(mechs));
    buf_append(&out, "\r\n", 2);
    if (starttls)
        buf_append(&out, "\"STARTTLS\"\r\n", 12);
    if (!version)
        buf_append(&out, "\"VERSION\" \"1.0\"\r\n", 17);
    buf_append(&out, "", 1);
    char *caps = xstrdup(out.data);
    buf_free(&out);
    return caps;
}

/* ---- replies ---- */

static const proto_reply_t sieve_replies[REPLY_COUNT] = {
    [REPLY_TOO_LONG] = { "BYE", NULL },
    [REPLY_TLS_REQUIRED] = { "NO (ENCRYPT-NEEDED)", NULL },
    [REPLY_BYE] = { "BYE", NULL },
    [REPLY_UNAVAILABLE] = { "BYE (TRYLATER)", NULL }, /* RFC 5804 §1.3 */
};

/* status "text" (or, for a challenge, only the quoted base64) */
static void sieve_reply(session_t *s, reply_t what, const char *status, const char *text)
{
    buf_t out;
    buf_init(&out, 4096);
    if (what != REPLY_CHALLENGE && what != REPLY_LITERAL) {
        buf_append(&out, status, strlen(status));
        buf_append(&out, " ", 1);
    }
    quote_into(&out, text, strlen(text));
    buf_append(&out, "\r\n", 2);
    session_write(s, out.data, out.len);
    buf_free(&out);
}

static void say_capabilities(session_t *s, const char *ok)
{
    const char *caps = session_capabilities(s);
    session_write(s, caps, strlen(caps));
    sieve_reply(s, REPLY_OK, "OK", ok);
}

static void sieve_greet(session_t *s)
{
    char ok[300];
    snprintf(ok, sizeof ok, "%s ready", s->cfg->server_name);
    say_capabilities(s, ok);
}

/* RFC 5804 §2.2: after STARTTLS the server speaks first, with the
 * capabilities TLS may have changed. */
static void sieve_tls_started(session_t *s)
{
    say_capabilities(s, "TLS negotiation successful");
}

static char *sieve_refusal(session_t *s, const refusal_t *r)
{
    (void)s;
    const char *code = r->temporary ? "(TRYLATER) " : "";
    const char *msg = preauth_refusal_text(r, "Authentication failed");
    buf_t out;
    buf_init(&out, 4096);
    buf_append(&out, "NO ", 3);
    buf_append(&out, code, strlen(code));
    quote_into(&out, msg, strlen(msg));
    buf_append(&out, "\r\n", 3);
    char *text = xstrdup(out.data);
    buf_free(&out);
    return text;
}

/* ---- client commands ---- */

static void cmd_authenticate(session_t *s, const char *buf, const cmd_t *cmd)
{
    if (cmd->nargs < 1 || cmd->nargs > 2 || !sieve_arg_is_string(&cmd->args[0]) ||
        (cmd->nargs == 2 && !sieve_arg_is_string(&cmd->args[1]))) {
        preauth_reply(s, REPLY_BAD, "Syntax: AUTHENTICATE \"mechanism\" [\"initial-response\"]");
        return;
    }
    char mech[64];
    if (cmd_arg_copy(buf, &cmd->args[0], mech, sizeof mech) < 0) {
        preauth_reply(s, REPLY_MECH_UNKNOWN, NULL);
        return;
    }
    if (cmd->nargs == 1) {
        preauth_authenticate(s, mech, strlen(mech), NULL, 0);
        return;
    }
    const cmd_arg_t *a = &cmd->args[1];
    char *ir = xmalloc(a->len + 2);
    long n = cmd_arg_copy(buf, a, ir, a->len + 1);
    if (n == 0) /* an empty string: the empty initial response */
        memcpy(ir, "=", 2), n = 1;
    preauth_authenticate(s, mech, strlen(mech), ir, (size_t)n);
    explicit_bzero(ir, (size_t)n);
    free(ir);
}

static void cmd_noop(session_t *s, const char *buf, const cmd_t *cmd)
{
    if (cmd->nargs == 0) {
        sieve_reply(s, REPLY_OK, "OK", "NOOP completed");
        return;
    }
    char tag[SIEVE_MAX_QUOTED + 1];
    if (cmd->nargs != 1 || !sieve_arg_is_string(&cmd->args[0]) ||
        cmd_arg_copy(buf, &cmd->args[0], tag, sizeof tag) < 0) {
        preauth_reply(s, REPLY_BAD, "Syntax: NOOP [\"tag\"]");
        return;
    }
    /* RFC 5804 §2.11: the tag comes back in a TAG response code */
    buf_t out;
    buf_init(&out, 4096);
    buf_append(&out, "OK (TAG ", 8);
    quote_into(&out, tag, strlen(tag));
    buf_append(&out, ") \"Done\"\r\n", 10);
    session_write(s, out.data, out.len);
    buf_free(&out);
}

static void sieve_execute(session_t *s, const char *buf, const cmd_t *cmd)
{
    bool noargs = cmd->nargs == 0;
    if (cmd_is(buf, cmd, "AUTHENTICATE")) {
        if (!preauth_tls_required(s))
            cmd_authenticate(s, buf, cmd);
    } else if (cmd_is(buf, cmd, "CAPABILITY") && noargs) {
        say_capabilities(s, "Capability completed");
    } else if (cmd_is(buf, cmd, "NOOP")) {
        cmd_noop(s, buf, cmd);
    } else if (cmd_is(buf, cmd, "LOGOUT") && noargs) {
        sieve_reply(s, REPLY_OK, "OK", "Logout completed");
        s->close_reason = "client logged out";
        session_quit(s);
    } else if (cmd_is(buf, cmd, "STARTTLS")) {
        preauth_starttls(s, !noargs);
    } else if (cmd_is(buf, cmd, "CAPABILITY") || cmd_is(buf, cmd, "LOGOUT")) {
        preauth_reply(s, REPLY_BAD, "This command takes no arguments");
    } else {
        preauth_reply(s, REPLY_UNKNOWN, NULL);
    }
}

/* ---- upstream login ---- */

static int starts(const char *line, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && strncasecmp(line, prefix, n) == 0 && (len == n || line[n] == ' ');
}

static void sieve_login_start(login_t *l)
{
    sieve_state_t *st = l->p.pstate;
    st->ustate = U_GREETING;
    l->mech = 0;
}

/* AUTHENTICATE "PLAIN" (or the client's OAuth mechanism) with its initial response. */
static void send_authenticate(login_t *l)
{
    sieve_state_t *st = l->p.pstate;
    const char *user, *pass;
    int mech;
    if (!login_credentials(l, &user, &pass, &mech))
        return;
    if (mech != SASL_XOAUTH2 && mech != SASL_OAUTHBEARER)
        mech = SASL_PLAIN;
    l->mech = mech;
    st->ustate = U_AUTH;
    char *b64 = sasl_client_response(mech, user, pass);
    login_send_line(l, xasprintf("AUTHENTICATE \"%s\" \"%s\"\r\n", sasl_mech_name(mech), b64));
    str_wipe_free(&b64);
}

static void sieve_login_line(login_t *l, const char *line, size_t len)
{
    sieve_state_t *st = l->p.pstate;
    bool ok = starts(line, len, "OK"), no = starts(line, len, "NO"), bye = starts(line, len, "BYE");
    switch (st->ustate) {
    case U_GREETING:
    case U_TLS_CAPABILITY:
        /* capability lines until OK (their STARTTLS and SASL are not
         * needed: tls = "starttls" insists, and PLAIN is asked for) */
        if (ok && st->ustate == U_GREETING && login_wants_starttls(l)) {
            st->ustate = U_STARTTLS;
            login_send(l, "STARTTLS\r\n", 10);
        } else if (ok) {
            send_authenticate(l);
        } else if (no || bye) {
            login_fail_line(l, "upstream sent an unexpected greeting", line, len);
        }
        return;
    case U_STARTTLS:
        if (ok)
            login_starttls(l);
        else /* never falls back to plaintext */
            login_fail_line(l, "upstream refused STARTTLS", line, len);
        return;
    case U_AUTH:
        if (ok) {
            char *reply = xasprintf("%.*s\r\n", (int)len, line);
            login_ready(l, reply, strlen(reply));
            free(reply);
        } else if (no) {
            char *reply = xasprintf("%.*s\r\n", (int)len, line);
            login_refused(l, reply, strlen(reply), line);
            free(reply);
        } else if (bye) {
            login_fail_line(l, "upstream closed the login", line, len);
        } else if (len > 0 && (line[0] == '"' || line[0] == '{')) {
            /* a challenge: only an OAuth failure asks one here; the refusal follows the dummy answer */
            const char *dummy = login_oauth_dummy(l);
            if (!dummy) {
                login_fail(l, "upstream sent an unexpected challenge");
                return;
            }
            login_send_line(l, xasprintf("\"%s\"\r\n", dummy));
        }
        return;
    }
}

/* The server sends its capabilities again after TLS, unasked. */
static void sieve_login_tls_ready(login_t *l)
{
    sieve_state_t *st = l->p.pstate;
    st->ustate = U_TLS_CAPABILITY;
}

const proto_t proto_sieve = {
    .name = "sieve",
    .alpn = "managesieve",
    .default_ports = { 4190 },
    .default_auth = AUTH_PLAIN | AUTH_LOGIN,
    .allowed_auth = AUTH_PLAIN | AUTH_LOGIN | AUTH_CRAM_MD5 | AUTH_XOAUTH2 | AUTH_OAUTHBEARER | AUTH_EXTERNAL,
    .capabilities_key = "sieve_capabilities",
    .state_size = sizeof(sieve_state_t),
    .capabilities = sieve_capabilities,
    .yes = "OK",
    .no = "NO",
    .replies = sieve_replies,
    .reply = sieve_reply,
    .greet = sieve_greet,
    .parse = sieve_parse_command,
    .parse_response = sieve_parse_response,
    .execute = sieve_execute,
    .refusal = sieve_refusal,
    .tls_started = sieve_tls_started,
    .cleanup = sieve_cleanup,
    .login_start = sieve_login_start,
    .login_line = sieve_login_line,
    .login_tls_ready = sieve_login_tls_ready,
};
