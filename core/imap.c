/* imap.c: IMAP4rev1/rev2 as a proxy needs it. The client side answers
 * the not-authenticated state (CAPABILITY, NOOP, LOGOUT, ID, LOGIN,
 * AUTHENTICATE with SASL-IR, STARTTLS) through the pre-auth engine; the
 * upstream side logs in to the chosen server with LOGIN or AUTHENTICATE,
 * then hands the server's tagged OK to the client under the client's tag. */
#include "config.h"
#include "imap_parse.h"
#include "log.h"
#include "login.h"
#include "mem.h"
#include "preauth.h"
#include "proto.h"
#include "sasl.h"
#include "session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define IMAP_MAX_CRED 1024       /* user names and passwords */
#define IMAP_MAX_ID_PAIRS 30     /* RFC 2971 */
#define IMAP_FWD_MAX (16 * 1024) /* untagged upstream lines passed on at login */

enum { U_GREETING, U_STARTTLS, U_CAPABILITY, U_LOGIN };
enum { CAP_LITERALPLUS = 1, CAP_SASL_IR = 2, CAP_AUTH_PLAIN = 4, CAP_LOGINDISABLED = 8 };

typedef struct imap_state {
    char *id_params;             /* the client's ID list, kept for the upstream */

    int ustate;
    unsigned ucaps;
    buf_t fwd;                   /* untagged login replies for the client */
} imap_state_t;

static void imap_cleanup(session_t *s)
{
    imap_state_t *st = s->pstate;
    free(st->id_params);
    buf_free(&st->fwd);
}

/* ---- capabilities ---- */

static int has_word(const char *list, const char *w)
{
    size_t wl = strlen(w);
    for (const char *p = list; p && *p;) {
        while (*p == ' ')
            p++;
        const char *e = strchr(p, ' ');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == wl && strncasecmp(p, w, l) == 0)
            return 1;
        p += l;
    }
    return 0;
}

static char *imap_capabilities(const char *configured, unsigned auth, int starttls)
{
    const char *base = configured ? configured : "IMAP4rev1";
    static const char *const always[] = { "SASL-IR", "LITERAL+", "ID", NULL };
    size_t n = strlen(base) + 256;
    char *caps = xmalloc(n);
    snprintf(caps, n, "%s", base);
    for (char *p = caps; *p; p++) /* entries are words: one line */
        if (*p == '\n')
            *p = ' ';
    for (const char *const *w = always; *w; w++)
        if (!has_word(caps, *w))
            strcat(strcat(caps, " "), *w);
    if (starttls)
        strcat(caps, " STARTTLS");
    if (starttls == 2) { /* RFC 9051 §6.2.3: no login before TLS */
        strcat(caps, " LOGINDISABLED");
        return caps;
    }
    char mechs[128];
    sasl_mech_list(auth, mechs, sizeof mechs);
    char *save = NULL;
    for (char *m = strtok_r(mechs, " ", &save); m; m = strtok_r(NULL, " ", &save)) {
        char word[64];
        snprintf(word, sizeof word, "AUTH=%s", m);
        if (!has_word(caps, word))
            strcat(strcat(caps, " "), word);
    }
    return caps;
}

/* ---- replies ---- */

static const proto_reply_t imap_replies[REPLY_COUNT] = {
    [REPLY_NO] = { "NO", NULL },
    [REPLY_MECH_UNKNOWN] = { "NO", NULL },
    /* starttls = "only": LOGINDISABLED until TLS (RFC 9051 §6.2.3) */
    [REPLY_TLS_REQUIRED] = { "NO", "[PRIVACYREQUIRED] Use STARTTLS first" },
    [REPLY_BYE] = { "BYE", NULL },
    [REPLY_UNAVAILABLE] = { "BYE [UNAVAILABLE]", NULL }, /* RFC 5530 */
};

/* A tagged reply to the current command ("*" when it had no valid tag). */
static void tagged(session_t *s, const char *status, const char *text)
{
    const char *tag = preauth_tag(s);
    session_printf(s, "%s %s %s\r\n", tag[0] ? tag : "*", status, text);
}

/* BAD, not NO, for a bad SASL message, as nginx ("invalid command");
 * Dovecot says NO: RFC 9051 6.2.2 allows either reading. */
static void imap_reply(session_t *s, reply_t what, const char *status, const char *text)
{
    if (what == REPLY_CHALLENGE || what == REPLY_LITERAL)
        session_printf(s, "+ %s\r\n", text);
    else if (what == REPLY_TOO_LONG || what == REPLY_BYE || what == REPLY_UNAVAILABLE)
        session_printf(s, "* %s %s\r\n", status, text);
    else
        tagged(s, status, text);
}

static void imap_greet(session_t *s)
{
    session_printf(s, "* OK [CAPABILITY %s] %s ready\r\n", session_capabilities(s), s->cfg->server_name);
}

static char *imap_refusal(session_t *s, const refusal_t *r)
{
    const char *code = r->temporary ? "[UNAVAILABLE] " : "[AUTHENTICATIONFAILED] ";
    const char *msg = preauth_refusal_text(r, "Authentication failed");
    if (msg[0] == '[') /* the policy chose its own response code */
        code = "";
    return xasprintf("%s NO %s%s\r\n", preauth_tag(s), code, msg);
}

/* ---- client commands ---- */

static int copy_string_arg(const char *buf, const cmd_arg_t *a, char *out, size_t outlen)
{
    if (a->type != CMD_ARG_ATOM && a->type != CMD_ARG_QUOTED && a->type != CMD_ARG_LITERAL)
        return PT_INVALID;
    long n = cmd_arg_copy(buf, a, out, outlen);
    if (n < 0 || !sasl_safe_credential(out, (size_t)n))
        return PT_INVALID;
    return PT_OK;
}

static void cmd_login(session_t *s, const char *buf, const cmd_t *cmd)
{
    char user[IMAP_MAX_CRED + 1], pass[IMAP_MAX_CRED + 1];
    if (cmd->nargs != 2 || copy_string_arg(buf, &cmd->args[0], user, sizeof user) < 0 ||
        copy_string_arg(buf, &cmd->args[1], pass, sizeof pass) < 0 || !user[0]) {
        explicit_bzero(pass, sizeof pass);
        preauth_reply(s, REPLY_BAD, "Syntax: LOGIN user password");
        return;
    }
    credentials_clear(&s->cred);
    s->cred.user = xstrdup(user);
    s->cred.password = xstrdup(pass);
    s->cred.mechanism = "plain"; /* nginx calls the LOGIN command's method "plain" (Auth-Method) */
    explicit_bzero(pass, sizeof pass);
    preauth_login(s);
}

static void cmd_authenticate(session_t *s, const char *buf, const cmd_t *cmd)
{
    if (cmd->nargs < 1 || cmd->nargs > 2 || cmd->args[0].type != CMD_ARG_ATOM ||
        (cmd->nargs == 2 && cmd->args[1].type != CMD_ARG_ATOM)) {
        preauth_reply(s, REPLY_BAD, "Syntax: AUTHENTICATE mechanism [initial-response]");
        return;
    }
    const cmd_arg_t *m = &cmd->args[0], *ir = cmd->nargs == 2 ? &cmd->args[1] : NULL;
    preauth_authenticate(s, buf + m->off, m->len, ir ? buf + ir->off : NULL, ir ? ir->len : 0);
}

/* ID ( "name" "value" ... ) or ID NIL (RFC 2971). Answered here; the
 * client's list is kept so it can be passed to the upstream. */
static void cmd_id(session_t *s, const char *buf, const cmd_t *cmd)
{
    imap_state_t *st = s->pstate;
    int ok = cmd->nargs == 1 && cmd_arg_is(buf, &cmd->args[0], "NIL");
    if (!ok && cmd->nargs >= 2 && cmd->args[0].type == CMD_ARG_LPAREN &&
        cmd->args[cmd->nargs - 1].type == CMD_ARG_RPAREN && (cmd->nargs - 2) % 2 == 0 &&
        (cmd->nargs - 2) / 2 <= IMAP_MAX_ID_PAIRS) {
        ok = 1;
        size_t size = 3;
        for (int i = 1; i < cmd->nargs - 1; i++) {
            const cmd_arg_t *a = &cmd->args[i];
            int is_nil = cmd_arg_is(buf, a, "NIL") && i % 2 == 0;
            if ((a->type != CMD_ARG_QUOTED && a->type != CMD_ARG_LITERAL && !is_nil) || a->len > 1024)
                ok = 0; /* RFC 2971: strings of at most 1024 octets */
            size += a->len * 2 + 3;
        }
        if (ok) {
            char *list = xmalloc(size), *p = list;
            *p++ = '(';
            for (int i = 1; i < cmd->nargs - 1; i++) {
                const cmd_arg_t *a = &cmd->args[i];
                if (i > 1)
                    *p++ = ' ';
                if (a->type == CMD_ARG_ATOM) {
                    memcpy(p, "NIL", 3);
                    p += 3;
                    continue;
                }
                char v[1100];
                long n = cmd_arg_copy(buf, a, v, sizeof v);
                *p++ = '"';
                for (long k = 0; k < n && n > 0; k++) {
                    if (v[k] == '\r' || v[k] == '\n')
                        continue;
                    if (v[k] == '"' || v[k] == '\\')
                        *p++ = '\\';
                    *p++ = v[k];
                }
                *p++ = '"';
            }
            *p++ = ')';
            *p = '\0';
            free(st->id_params);
            st->id_params = list;
        }
    }
    if (!ok) {
        preauth_reply(s, REPLY_BAD, "Syntax: ID ( \"field\" \"value\" ... ) or ID NIL");
        return;
    }
    session_printf(s, "* ID (\"name\" \"postern\" \"version\" \"%s\")\r\n", POSTERN_VERSION);
    tagged(s, "OK", "ID completed");
}

static void imap_execute(session_t *s, const char *buf, const cmd_t *cmd)
{
    bool noargs = cmd->nargs == 0;
    if ((cmd_is(buf, cmd, "LOGIN") || cmd_is(buf, cmd, "AUTHENTICATE")) && preauth_tls_required(s)) {
        return;
    } else if (cmd_is(buf, cmd, "LOGIN")) {
        cmd_login(s, buf, cmd);
    } else if (cmd_is(buf, cmd, "AUTHENTICATE")) {
        cmd_authenticate(s, buf, cmd);
    } else if (cmd_is(buf, cmd, "CAPABILITY") && noargs) {
        session_printf(s, "* CAPABILITY %s\r\n", session_capabilities(s));
        tagged(s, "OK", "CAPABILITY completed");
    } else if (cmd_is(buf, cmd, "NOOP") && noargs) {
        tagged(s, "OK", "NOOP completed");
    } else if (cmd_is(buf, cmd, "LOGOUT") && noargs) {
        session_printf(s, "* BYE Logging out\r\n");
        tagged(s, "OK", "LOGOUT completed");
        s->close_reason = "client logged out";
        session_quit(s);
    } else if (cmd_is(buf, cmd, "ID")) {
        cmd_id(s, buf, cmd);
    } else if (cmd_is(buf, cmd, "STARTTLS")) {
        preauth_starttls(s, !noargs);
    } else if (cmd_is(buf, cmd, "CAPABILITY") || cmd_is(buf, cmd, "NOOP") || cmd_is(buf, cmd, "LOGOUT")) {
        preauth_reply(s, REPLY_BAD, "This command takes no arguments");
    } else {
        preauth_reply(s, REPLY_UNKNOWN, NULL);
    }
}

static int imap_parse(const char *buf, size_t len, size_t max, cmd_t *cmd)
{
    return imap_parse_command(buf, len, max, cmd);
}

/* ---- upstream login ---- */

static void parse_caps(imap_state_t *st, const char *p, size_t len)
{
    char tmp[4096];
    str_copy(tmp, sizeof tmp, p, len);
    char *e = strchr(tmp, ']');
    if (e)
        *e = '\0';
    st->ucaps = 0;
    if (has_word(tmp, "LITERAL+"))
        st->ucaps |= CAP_LITERALPLUS;
    if (has_word(tmp, "SASL-IR"))
        st->ucaps |= CAP_SASL_IR;
    if (has_word(tmp, "AUTH=PLAIN"))
        st->ucaps |= CAP_AUTH_PLAIN;
    if (has_word(tmp, "LOGINDISABLED"))
        st->ucaps |= CAP_LOGINDISABLED;
}

static const char *find_caps(const char *line, size_t len)
{
    static const char key[] = "[CAPABILITY ";
    for (size_t i = 0; i + sizeof key - 1 <= len; i++)
        if (strncasecmp(line + i, key, sizeof key - 1) == 0)
            return line + i + sizeof key - 1;
    return NULL;
}

static int quotable(const char *v)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++, n++)
        if (*p < 0x20 || *p > 0x7e)
            return 0;
    return n < 512;
}

static char *quote(const char *v)
{
    size_t n = strlen(v);
    char *q = xmalloc(2 * n + 3), *p = q;
    *p++ = '"';
    for (; *v; v++) {
        if (*v == '"' || *v == '\\')
            *p++ = '\\';
        *p++ = *v;
    }
    *p++ = '"';
    *p = '\0';
    return q;
}

/* AUTHENTICATE <mech> with its initial response: on the command line with
 * SASL-IR, else after the server's "+". */
static void send_authenticate(login_t *l, int mech, const char *user, const char *pass)
{
    imap_state_t *st = l->p.pstate;
    char *b64 = sasl_client_response(mech, user, pass);
    l->mech = mech;
    if (st->ucaps & CAP_SASL_IR) {
        login_send_line(l, xasprintf("%s AUTHENTICATE %s %s\r\n", l->p.tag, sasl_mech_name(mech), b64));
    } else {
        login_queue(l, xasprintf("%s\r\n", b64));
        login_send_line(l, xasprintf("%s AUTHENTICATE %s\r\n", l->p.tag, sasl_mech_name(mech)));
    }
    str_wipe_free(&b64);
}

static void send_login(login_t *l)
{
    imap_state_t *st = l->p.pstate;
    const char *user, *pass;
    int mech;
    if (!login_credentials(l, &user, &pass, &mech))
        return;
    login_forget_pending(l);
    st->ustate = U_LOGIN;
    l->mech = 0;
    if (mech == SASL_XOAUTH2 || mech == SASL_OAUTHBEARER || mech == SASL_PLAIN) {
        send_authenticate(l, mech, user, pass);
        return;
    }
    if (st->ucaps & CAP_LOGINDISABLED && mech != SASL_LOGIN) {
        if (!(st->ucaps & CAP_AUTH_PLAIN)) {
            login_fail(l, "upstream has LOGINDISABLED and no AUTH=PLAIN");
            return;
        }
        send_authenticate(l, SASL_PLAIN, user, pass);
        return;
    }
    const char *tag = l->p.tag;
    if (quotable(user) && quotable(pass)) {
        char *qu = quote(user), *qp = quote(pass);
        login_send_line(l, xasprintf("%s LOGIN %s %s\r\n", tag, qu, qp));
        free(qu);
        str_wipe_free(&qp);
    } else if (st->ucaps & CAP_LITERALPLUS) {
        login_send_line(l, xasprintf("%s LOGIN {%zu+}\r\n%s {%zu+}\r\n%s\r\n", tag, strlen(user), user, strlen(pass),
                                     pass));
    } else {
        login_queue(l, xasprintf("%s {%zu}\r\n", user, strlen(pass)));
        login_queue(l, xasprintf("%s\r\n", pass));
        login_send_line(l, xasprintf("%s LOGIN {%zu}\r\n", tag, strlen(user)));
    }
}

static void imap_login_start(login_t *l)
{
    imap_state_t *st = l->p.pstate;
    st->ustate = U_GREETING;
    st->ucaps = 0;
    buf_free(&st->fwd);
    buf_init(&st->fwd, IMAP_FWD_MAX);
}

static int starts(const char *line, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && strncasecmp(line, prefix, n) == 0;
}

/* The upstream's tagged reply to the login. */
static void login_reply(login_t *l, const char *line, size_t len, const char *rest, size_t rl)
{
    imap_state_t *st = l->p.pstate;
    if (starts(rest, rl, "OK")) {
        if (buf_append(&st->fwd, line, len) < 0 || buf_append(&st->fwd, "\r\n", 2) < 0) {
            login_fail(l, "upstream login reply too long");
            return;
        }
        login_ready(l, st->fwd.data, st->fwd.len);
        buf_free(&st->fwd);
        return;
    }
    /* NO or BAD: the credentials did not work there. */
    const char *text = rest;
    size_t tlen = rl;
    size_t skip = starts(rest, rl, "NO") ? 2 : starts(rest, rl, "BAD") ? 3 : 0;
    if (skip && (rl == skip || rest[skip] == ' ')) {
        text = rest + skip;
        tlen = rl - skip;
        while (tlen && *text == ' ')
            text++, tlen--;
    }
    if (tlen == 0) {
        text = "[AUTHENTICATIONFAILED] Authentication failed";
        tlen = strlen(text);
    }
    char *reply = xasprintf("%s NO %.*s\r\n", l->p.tag, (int)tlen, text);
    buf_free(&st->fwd);
    login_refused(l, reply, strlen(reply), text);
    free(reply);
}

static void imap_login_line(login_t *l, const char *line, size_t len)
{
    imap_state_t *st = l->p.pstate;
    switch (st->ustate) {
    case U_GREETING:
        if (starts(line, len, "* OK") && login_wants_starttls(l)) {
            st->ustate = U_STARTTLS;
            login_send(l, "P0 STARTTLS\r\n", 13);
        } else if (starts(line, len, "* OK")) {
            const char *caps = find_caps(line, len);
            if (caps) {
                parse_caps(st, caps, len - (size_t)(caps - line));
                send_login(l);
            } else {
                st->ustate = U_CAPABILITY;
                login_send(l, "P1 CAPABILITY\r\n", 15);
            }
        } else if (starts(line, len, "* PREAUTH") && login_wants_starttls(l)) {
            /* logged in before TLS: relaying would be plaintext (STARTTLS stripping) */
            login_fail(l, "upstream greeted with PREAUTH but STARTTLS is required");
        } else if (starts(line, len, "* PREAUTH")) {
            /* Already logged in: pass its capabilities on, if it gave any. */
            const char *caps = find_caps(line, len);
            const char *end = caps ? memchr(caps, ']', len - (size_t)(caps - line)) : NULL;
            char *ok = end ? xasprintf("%s OK [CAPABILITY %.*s] Logged in\r\n", l->p.tag, (int)(end - caps), caps)
                           : xasprintf("%s OK Logged in\r\n", l->p.tag);
            login_ready(l, ok, strlen(ok));
            free(ok);
        } else {
            login_fail_line(l, "upstream sent an unexpected greeting", line, len);
        }
        return;
    case U_STARTTLS:
        if (starts(line, len, "P0 OK"))
            login_starttls(l);
        else if (starts(line, len, "P0 ")) /* never falls back to plaintext */
            login_fail(l, "upstream refused STARTTLS");
        return;
    case U_CAPABILITY:
        if (starts(line, len, "* CAPABILITY "))
            parse_caps(st, line + 13, len - 13);
        else if (starts(line, len, "P1 OK"))
            send_login(l);
        else if (starts(line, len, "P1 "))
            login_fail(l, "upstream refused CAPABILITY");
        return;
    case U_LOGIN: {
        size_t tl = strlen(l->p.tag);
        if (len >= 1 && line[0] == '+') {
            login_continue(l);
        } else if (len >= 2 && line[0] == '*' && line[1] == ' ') {
            if (buf_append(&st->fwd, line, len) < 0 || buf_append(&st->fwd, "\r\n", 2) < 0)
                login_fail(l, "upstream sent too many untagged lines at login");
        } else if (len > tl && strncmp(line, l->p.tag, tl) == 0 && line[tl] == ' ') {
            login_reply(l, line, len, line + tl + 1, len - tl - 1);
        }
        return;
    }
    }
}

/* Capabilities change with TLS: ask again (RFC 9051 §6.2.1). */
static void imap_login_tls_ready(login_t *l)
{
    imap_state_t *st = l->p.pstate;
    st->ustate = U_CAPABILITY;
    st->ucaps = 0;
    login_send(l, "P1 CAPABILITY\r\n", 15);
}

const proto_t proto_imap = {
    .name = "imap",
    .alpn = "imap",
    .default_ports = { 143, 993 },
    .default_auth = AUTH_LOGIN | AUTH_PLAIN,
    .allowed_auth = AUTH_LOGIN | AUTH_PLAIN | AUTH_CRAM_MD5 | AUTH_XOAUTH2 | AUTH_OAUTHBEARER | AUTH_EXTERNAL,
    .capabilities_key = "imap_capabilities",
    .state_size = sizeof(imap_state_t),
    .capabilities = imap_capabilities,
    .yes = "OK",
    .no = "BAD",
    .replies = imap_replies,
    .reply = imap_reply,
    .greet = imap_greet,
    .parse = imap_parse,
    .execute = imap_execute,
    .refusal = imap_refusal,
    .cleanup = imap_cleanup,
    .login_start = imap_login_start,
    .login_line = imap_login_line,
    .login_tls_ready = imap_login_tls_ready,
};
