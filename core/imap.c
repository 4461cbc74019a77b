/* imap.c: IMAP4rev1/rev2 as a proxy needs it. The client side answers
 * the not-authenticated state (CAPABILITY, NOOP, LOGOUT, ID, LOGIN,
 * AUTHENTICATE PLAIN/LOGIN with SASL-IR); the upstream side logs in to
 * the chosen server with LOGIN or AUTHENTICATE PLAIN, then hands the
 * server's tagged OK to the client under the client's tag. */
#include "proto.h"
#include "mem.h"

#include "config.h"
#include "imap_parse.h"
#include "log.h"
#include "sasl.h"
#include "session.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define IMAP_MAX_CRED 1024       /* user names and passwords */
#define IMAP_MAX_ID_PAIRS 30     /* RFC 2971 */
#define IMAP_FWD_MAX (16 * 1024) /* untagged upstream lines passed on at login */

enum { C_COMMAND, C_SASL, C_OAUTH_ERROR };
enum { U_GREETING, U_STARTTLS, U_CAPABILITY, U_LOGIN };
enum { CAP_LITERALPLUS = 1, CAP_SASL_IR = 2, CAP_AUTH_PLAIN = 4, CAP_LOGINDISABLED = 8 };

typedef struct imap_state {
    int state;
    char tag[IMAP_MAX_TAG + 1];
    int lit_acked;               /* "+" already sent for this many literals */
    sasl_t sasl;
    char *oauth_failure;         /* the NO sent once the client answers the OAuth error */
    char *id_params;             /* the client's ID list, kept for the upstream */

    int ustate;
    unsigned ucaps;
    char *pending[3];            /* login pieces, each sent after a "+" */
    int npending, next_pending;
    buf_t fwd;                   /* untagged login replies for the client */
    int umech;                   /* SASL mechanism used upstream, 0 for LOGIN */
} imap_state_t;

static imap_state_t *st_of(session_t *s)
{
    return s->pstate;
}

static void free_pending(imap_state_t *st)
{
    for (int i = 0; i < st->npending; i++) {
        explicit_bzero(st->pending[i], strlen(st->pending[i]));
        free(st->pending[i]);
    }
    st->npending = st->next_pending = 0;
}

static void imap_cleanup(session_t *s)
{
    imap_state_t *st = st_of(s);
    free(st->id_params);
    free(st->oauth_failure);
    free_pending(st);
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

static void reply(session_t *s, const char *status, const char *text)
{
    imap_state_t *st = st_of(s);
    session_printf(s, "%s %s %s\r\n", st->tag[0] ? st->tag : "*", status, text);
}

static void imap_bye(session_t *s, const char *why)
{
    session_printf(s, "* BYE %s\r\n", why);
}

static void imap_start(session_t *s)
{
    session_printf(s, "* OK [CAPABILITY %s] %s ready\r\n", session_capabilities(s), s->cfg->server_name);
}

static void imap_auth_refused(session_t *s, const refusal_t *r)
{
    imap_state_t *st = st_of(s);
    const char *code = r->temporary ? "[UNAVAILABLE] " : "[AUTHENTICATIONFAILED] ";
    const char *msg = r->message;
    if (!msg)
        msg = r->temporary ? "Temporary authentication failure, try again later" : "Authentication failed";
    if (msg[0] == '[') /* the policy chose its own response code */
        code = "";
    if (s->cred.mechanism && strstr("xoauth2 oauthbearer", s->cred.mechanism)) {
        /* RFC 7628 §3.2.2: an error challenge first; the NO follows the
         * client's (dummy) answer. */
        char challenge[256];
        sasl_oauth_error(challenge, sizeof challenge, r->temporary);
        free(st->oauth_failure);
        st->oauth_failure = xasprintf("%s NO %s%s\r\n", st->tag, code, msg);
        session_printf(s, "+ %s\r\n", challenge);
        st->state = C_OAUTH_ERROR;
        return;
    }
    session_printf(s, "%s NO %s%s\r\n", st->tag, code, msg);
    st->state = C_COMMAND;
}

/* ---- client commands ---- */

static int copy_string_arg(const char *buf, const imap_arg_t *a, char *out, size_t outlen)
{
    if (a->type != IMAP_ARG_ATOM && a->type != IMAP_ARG_QUOTED && a->type != IMAP_ARG_LITERAL)
        return -1;
    long n = imap_arg_copy(buf, a, out, outlen);
    if (n < 0 || !sasl_safe_credential(out, (size_t)n))
        return -1;
    return 0;
}

static void begin_auth(session_t *s, const char *mech, char *user, char *pass, char *authzid)
{
    session_reset_credentials(s);
    s->cred.user = user;
    s->cred.password = pass;
    s->cred.authzid = authzid;
    s->cred.mechanism = mech;
    st_of(s)->state = C_COMMAND;
    session_authenticate(s);
}

static void cmd_login(session_t *s, const char *buf, const imap_command_t *cmd)
{
    char user[IMAP_MAX_CRED + 1], pass[IMAP_MAX_CRED + 1];
    if (cmd->nargs != 2 || copy_string_arg(buf, &cmd->args[0], user, sizeof user) < 0 ||
        copy_string_arg(buf, &cmd->args[1], pass, sizeof pass) < 0 || !user[0]) {
        reply(s, "BAD", "Syntax: LOGIN user password");
        explicit_bzero(pass, sizeof pass);
        session_error(s);
        return;
    }
    /* nginx calls the LOGIN command's method "plain" (Auth-Method). */
    begin_auth(s, "plain", xstrdup(user), xstrdup(pass), NULL);
    explicit_bzero(pass, sizeof pass);
}

/* What the shared SASL machine answered: a challenge, done, or an error. */
static void sasl_result(session_t *s, int rc, const char *challenge)
{
    imap_state_t *st = st_of(s);
    if (rc == PT_INVALID) /* one case per reason */
        rc = PT_INVALID * 16 + (int)st->sasl.fault;
    switch (rc) {
    case PT_AGAIN:
        st->state = C_SASL;
        session_printf(s, "+ %s\r\n", challenge);
        return;
    case PT_OK:
        st->state = C_COMMAND;
        session_authenticate(s);
        return;
    case PT_DECLINED:
        st->state = C_COMMAND;
        reply(s, "BAD", "Authentication cancelled");
        return;
    case PT_INVALID * 16 + SASL_FAULT_BASE64:
        st->state = C_COMMAND;
        reply(s, "BAD", "Invalid base64 data");
        session_error(s);
        return;
    case PT_INVALID * 16 + SASL_FAULT_IR:
        st->state = C_COMMAND;
        reply(s, "BAD", "This mechanism takes no initial response");
        session_error(s);
        return;
    default: /* BAD, as nginx ("invalid command"); Dovecot says NO: RFC 9051 6.2.2 allows either reading */
        st->state = C_COMMAND;
        reply(s, "BAD", "Invalid SASL message");
        session_error(s);
        return;
    }
}

static void cmd_authenticate(session_t *s, const char *buf, const imap_command_t *cmd)
{
    imap_state_t *st = st_of(s);
    if (cmd->nargs < 1 || cmd->nargs > 2 || cmd->args[0].type != IMAP_ARG_ATOM ||
        (cmd->nargs == 2 && cmd->args[1].type != IMAP_ARG_ATOM)) {
        reply(s, "BAD", "Syntax: AUTHENTICATE mechanism [initial-response]");
        session_error(s);
        return;
    }
    int mech = sasl_mech_from_name(buf + cmd->args[0].off, cmd->args[0].len, s->listener->auth);
    if (!mech) {
        reply(s, "NO", "Unsupported authentication mechanism");
        return;
    }
    char challenge[512];
    int rc = sasl_begin(&st->sasl, mech, cmd->nargs == 2 ? buf + cmd->args[1].off : NULL,
                        cmd->nargs == 2 ? cmd->args[1].len : 0, s->cfg->server_name, &s->cred, challenge,
                        sizeof challenge);
    sasl_result(s, rc, challenge);
}

/* ID ( "name" "value" ... ) or ID NIL (RFC 2971). Answered here; the
 * client's list is kept so it can be passed to the upstream. */
static void cmd_id(session_t *s, const char *buf, const imap_command_t *cmd)
{
    imap_state_t *st = st_of(s);
    int ok = cmd->nargs == 1 && imap_arg_is(buf, &cmd->args[0], "NIL");
    if (!ok && cmd->nargs >= 2 && cmd->args[0].type == IMAP_ARG_LPAREN &&
        cmd->args[cmd->nargs - 1].type == IMAP_ARG_RPAREN && (cmd->nargs - 2) % 2 == 0 &&
        (cmd->nargs - 2) / 2 <= IMAP_MAX_ID_PAIRS) {
        ok = 1;
        size_t size = 3;
        for (int i = 1; i < cmd->nargs - 1; i++) {
            const imap_arg_t *a = &cmd->args[i];
            int is_nil = imap_arg_is(buf, a, "NIL") && i % 2 == 0;
            if ((a->type != IMAP_ARG_QUOTED && a->type != IMAP_ARG_LITERAL && !is_nil) || a->len > 1024)
                ok = 0; /* RFC 2971: strings of at most 1024 octets */
            size += a->len * 2 + 3;
        }
        if (ok) {
            char *list = xmalloc(size), *p = list;
            *p++ = '(';
            for (int i = 1; i < cmd->nargs - 1; i++) {
                const imap_arg_t *a = &cmd->args[i];
                if (i > 1)
                    *p++ = ' ';
                if (a->type == IMAP_ARG_ATOM) {
                    memcpy(p, "NIL", 3);
                    p += 3;
                    continue;
                }
                char v[1100];
                long n = imap_arg_copy(buf, a, v, sizeof v);
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
        reply(s, "BAD", "Syntax: ID ( \"field\" \"value\" ... ) or ID NIL");
        session_error(s);
        return;
    }
    session_printf(s, "* ID (\"name\" \"postern\" \"version\" \"%s\")\r\n", POSTERN_VERSION);
    reply(s, "OK", "ID completed");
}

static void dispatch(session_t *s, const char *buf, const imap_command_t *cmd)
{
    const char *name = buf + cmd->name_off;
    size_t nl = cmd->name_len;
#define IS(w) (nl == sizeof(w) - 1 && strncasecmp(name, w, nl) == 0)
    if ((IS("LOGIN") || IS("AUTHENTICATE")) && session_tls_required(s)) {
        /* starttls = "only": LOGINDISABLED until TLS (RFC 9051 §6.2.3) */
        reply(s, "NO", "[PRIVACYREQUIRED] Use STARTTLS first");
    } else if (IS("LOGIN")) {
        cmd_login(s, buf, cmd);
    } else if (IS("AUTHENTICATE")) {
        cmd_authenticate(s, buf, cmd);
    } else if (IS("CAPABILITY") && cmd->nargs == 0) {
        session_printf(s, "* CAPABILITY %s\r\n", session_capabilities(s));
        reply(s, "OK", "CAPABILITY completed");
    } else if (IS("NOOP") && cmd->nargs == 0) {
        reply(s, "OK", "NOOP completed");
    } else if (IS("LOGOUT") && cmd->nargs == 0) {
        imap_bye(s, "Logging out");
        reply(s, "OK", "LOGOUT completed");
        s->close_reason = "client logged out";
        session_quit(s);
    } else if (IS("ID")) {
        cmd_id(s, buf, cmd);
    } else if (IS("STARTTLS") && cmd->nargs == 0 && s->listener->starttls && !s->ctls) {
        reply(s, "OK", "Begin TLS negotiation now");
        session_starttls(s);
    } else if (IS("STARTTLS")) {
        reply(s, "BAD", s->ctls                   ? "TLS is already active"
                        : s->listener->starttls ? "STARTTLS takes no arguments"
                                                : "STARTTLS is not available on this port");
    } else if (IS("CAPABILITY") || IS("NOOP") || IS("LOGOUT")) {
        reply(s, "BAD", "This command takes no arguments");
        session_error(s);
    } else {
        reply(s, "BAD", "Unknown command or not allowed before login");
        session_error(s);
    }
#undef IS
}

static void too_long(session_t *s)
{
    session_log(s, LL_INFO, "client sent too long command");
    s->close_reason = "too long command";
    session_printf(s, "* BAD Command line too long\r\n");
    session_quit(s);
}

static void imap_client_input(session_t *s)
{
    imap_state_t *st = st_of(s);
    while (s->phase == PHASE_PREAUTH && !s->quit && !session_output_blocked(s) && s->cin.len > 0) {
        if (st->state != C_COMMAND) {
            size_t ll, used;
            if (!buf_find_line(s->cin.data, s->cin.len, &ll, &used)) {
                if (buf_room(&s->cin) == 0)
                    too_long(s);
                return;
            }
            char *line = xmalloc(ll + 1);
            memcpy(line, s->cin.data, ll);
            buf_consume(&s->cin, used);
            if (st->state == C_OAUTH_ERROR) {
                st->state = C_COMMAND;
                if (ll == 1 && line[0] == '*')
                    reply(s, "BAD", "Authentication cancelled"); /* RFC 9051 §6.2.2 */
                else if (st->oauth_failure)
                    session_write(s, st->oauth_failure, strlen(st->oauth_failure));
                free(st->oauth_failure);
                st->oauth_failure = NULL;
            } else {
                char challenge[512];
                int rc = sasl_step(&st->sasl, line, ll, &s->cred, challenge, sizeof challenge);
                sasl_result(s, rc, challenge);
            }
            explicit_bzero(line, ll);
            free(line);
            continue;
        }
        imap_command_t cmd;
        int rc = imap_parse_command(s->cin.data, s->cin.len, s->cfg->client_buffer, &cmd);
        if (cmd.tag_len > 0 && cmd.tag_len <= IMAP_MAX_TAG) {
            memcpy(st->tag, s->cin.data, cmd.tag_len);
            st->tag[cmd.tag_len] = '\0';
        } else {
            st->tag[0] = '\0';
        }
        if (rc == PT_AGAIN) {
            if (buf_room(&s->cin) == 0) {
                too_long(s);
            } else if (cmd.sync_literals > st->lit_acked) {
                st->lit_acked = cmd.sync_literals;
                session_printf(s, "+ Ready for literal data\r\n");
            }
            return;
        }
        st->lit_acked = 0;
        if (rc == PT_TOO_BIG) {
            session_log(s, LL_INFO, "client sent too large literal");
            reply(s, "BAD", cmd.error);
            s->close_reason = "too large literal";
            session_quit(s);
            return;
        }
        if (rc == PT_INVALID) {
            if (cmd.consumed == 0) { /* the rest of the bad line is still to come */
                if (buf_room(&s->cin) == 0)
                    too_long(s);
                return;
            }
            buf_consume(&s->cin, cmd.consumed);
            reply(s, "BAD", cmd.error);
            if (cmd.close_after) {
                s->close_reason = "unrecoverable syntax error";
                session_quit(s);
                return;
            }
            session_error(s);
            continue;
        }
        /* Work on a copy: the command may start a login whose outcome
         * comes back (and parses further input) before we return. */
        char *copy = xmalloc(cmd.consumed);
        memcpy(copy, s->cin.data, cmd.consumed);
        size_t used = cmd.consumed;
        buf_consume(&s->cin, used);
        dispatch(s, copy, &cmd);
        explicit_bzero(copy, used);
        free(copy);
    }
}

/* ---- upstream login ---- */

static void parse_caps(imap_state_t *st, const char *p, size_t len)
{
    char tmp[4096];
    if (len >= sizeof tmp)
        len = sizeof tmp - 1;
    memcpy(tmp, p, len);
    tmp[len] = '\0';
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
static void send_authenticate(session_t *s, int mech, const char *user, const char *pass)
{
    imap_state_t *st = st_of(s);
    char *b64 = sasl_client_response(mech, user, pass);
    char *line;
    st->umech = mech;
    if (st->ucaps & CAP_SASL_IR) {
        line = xasprintf("%s AUTHENTICATE %s %s\r\n", st->tag, sasl_mech_name(mech), b64);
    } else {
        line = xasprintf("%s AUTHENTICATE %s\r\n", st->tag, sasl_mech_name(mech));
        st->pending[st->npending++] = xasprintf("%s\r\n", b64);
    }
    explicit_bzero(b64, strlen(b64));
    free(b64);
    session_upstream_write(s, line, strlen(line));
    explicit_bzero(line, strlen(line));
    free(line);
}

static void send_login(session_t *s)
{
    imap_state_t *st = st_of(s);
    const char *user = session_upstream_user(s), *pass = session_upstream_password(s);
    if (!user || !pass) {
        session_upstream_failed(s, "no password to log in to the upstream with (the policy must give one "
                                   "for CRAM-MD5 and APOP clients)");
        return;
    }
    free_pending(st);
    st->ustate = U_LOGIN;
    st->umech = 0;
    const upstream_t *u = session_upstream(s);
    int mech = sasl_upstream_mech(&s->cred, u->auth);
    if (mech == SASL_XOAUTH2 || mech == SASL_OAUTHBEARER || mech == SASL_PLAIN) {
        send_authenticate(s, mech, user, pass);
        return;
    }
    if (st->ucaps & CAP_LOGINDISABLED && mech != SASL_LOGIN) {
        if (!(st->ucaps & CAP_AUTH_PLAIN)) {
            session_upstream_failed(s, "upstream has LOGINDISABLED and no AUTH=PLAIN");
            return;
        }
        send_authenticate(s, SASL_PLAIN, user, pass);
        return;
    }
    char *line;
    if (quotable(user) && quotable(pass)) {
        char *qu = quote(user), *qp = quote(pass);
        line = xasprintf("%s LOGIN %s %s\r\n", st->tag, qu, qp);
        explicit_bzero(qp, strlen(qp));
        free(qu);
        free(qp);
    } else if (st->ucaps & CAP_LITERALPLUS) {
        line = xasprintf("%s LOGIN {%zu+}\r\n%s {%zu+}\r\n%s\r\n", st->tag, strlen(user), user, strlen(pass), pass);
    } else {
        line = xasprintf("%s LOGIN {%zu}\r\n", st->tag, strlen(user));
        st->pending[st->npending++] = xasprintf("%s {%zu}\r\n", user, strlen(pass));
        st->pending[st->npending++] = xasprintf("%s\r\n", pass);
    }
    session_upstream_write(s, line, strlen(line));
    explicit_bzero(line, strlen(line));
    free(line);
}

static void imap_upstream_start(session_t *s)
{
    imap_state_t *st = st_of(s);
    st->ustate = U_GREETING;
    st->ucaps = 0;
    free_pending(st);
    buf_free(&st->fwd);
    buf_init(&st->fwd, IMAP_FWD_MAX);
}

static int starts(const char *line, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && strncasecmp(line, prefix, n) == 0;
}

static void upstream_line(session_t *s, const char *line, size_t len)
{
    imap_state_t *st = st_of(s);
    char why[300];
    switch (st->ustate) {
    case U_GREETING:
        if (starts(line, len, "* OK") && session_upstream_wants_starttls(s)) {
            st->ustate = U_STARTTLS;
            session_upstream_write(s, "P0 STARTTLS\r\n", 13);
        } else if (starts(line, len, "* OK")) {
            const char *caps = find_caps(line, len);
            if (caps) {
                parse_caps(st, caps, len - (size_t)(caps - line));
                send_login(s);
            } else {
                st->ustate = U_CAPABILITY;
                session_upstream_write(s, "P1 CAPABILITY\r\n", 15);
            }
        } else if (starts(line, len, "* PREAUTH") && session_upstream_wants_starttls(s)) {
            /* logged in before TLS: relaying would be plaintext (STARTTLS stripping) */
            session_upstream_failed(s, "upstream greeted with PREAUTH but STARTTLS is required");
        } else if (starts(line, len, "* PREAUTH")) {
            /* Already logged in: pass its capabilities on, if it gave any. */
            const char *caps = find_caps(line, len);
            const char *end = caps ? memchr(caps, ']', len - (size_t)(caps - line)) : NULL;
            char *ok = end ? xasprintf("%s OK [CAPABILITY %.*s] Logged in\r\n", st->tag, (int)(end - caps), caps)
                           : xasprintf("%s OK Logged in\r\n", st->tag);
            session_upstream_ready(s, ok, strlen(ok));
            free(ok);
        } else {
            snprintf(why, sizeof why, "upstream sent an unexpected greeting: \"%.*s\"", (int)(len > 100 ? 100 : len),
                     line);
            session_upstream_failed(s, why);
        }
        return;
    case U_STARTTLS:
        if (starts(line, len, "P0 OK")) {
            session_upstream_starttls(s);
        } else if (starts(line, len, "P0 ")) {
            /* never falls back to plaintext */
            session_upstream_failed(s, "upstream refused STARTTLS");
        }
        return;
    case U_CAPABILITY:
        if (starts(line, len, "* CAPABILITY ")) {
            parse_caps(st, line + 13, len - 13);
        } else if (starts(line, len, "P1 OK")) {
            send_login(s);
        } else if (starts(line, len, "P1 ")) {
            session_upstream_failed(s, "upstream refused CAPABILITY");
        }
        return;
    case U_LOGIN: {
        size_t tl = strlen(st->tag);
        if (len >= 1 && line[0] == '+') {
            if (st->next_pending < st->npending) {
                const char *seg = st->pending[st->next_pending++];
                session_upstream_write(s, seg, strlen(seg));
            } else if (st->umech == SASL_XOAUTH2 || st->umech == SASL_OAUTHBEARER) {
                /* the token was refused: answer the error challenge, the NO follows */
                const char *dummy = st->umech == SASL_OAUTHBEARER ? "AQ==\r\n" : "\r\n";
                session_upstream_write(s, dummy, strlen(dummy));
            } else {
                session_upstream_failed(s, "upstream sent an unexpected continuation");
            }
        } else if (len >= 2 && line[0] == '*' && line[1] == ' ') {
            if (buf_append(&st->fwd, line, len) < 0 || buf_append(&st->fwd, "\r\n", 2) < 0)
                session_upstream_failed(s, "upstream sent too many untagged lines at login");
        } else if (len > tl && strncmp(line, st->tag, tl) == 0 && line[tl] == ' ') {
            const char *rest = line + tl + 1;
            size_t rl = len - tl - 1;
            if (starts(rest, rl, "OK")) {
                if (buf_append(&st->fwd, line, len) < 0 || buf_append(&st->fwd, "\r\n", 2) < 0) {
                    session_upstream_failed(s, "upstream login reply too long");
                    return;
                }
                free_pending(st);
                session_upstream_ready(s, st->fwd.data, st->fwd.len);
                buf_free(&st->fwd);
            } else {
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
                session_log(s, LL_INFO, "upstream refused login: \"%.*s\"", (int)(tlen > 200 ? 200 : tlen), text);
                session_printf(s, "%s NO %.*s\r\n", st->tag, (int)tlen, text);
                free_pending(st);
                buf_free(&st->fwd);
                st->state = C_COMMAND;
                session_upstream_refused(s);
            }
        }
        return;
    }
    }
}

static void imap_upstream_input(session_t *s)
{
    size_t ll, used;
    while (s->phase == PHASE_UPSTREAM && s->uin.len > 0 &&
           buf_find_line(s->uin.data, s->uin.len, &ll, &used)) {
        /* The line leaves the buffer before we act: acting may hand the
         * rest of the buffer to the client or drop the connection. */
        char *line = xmalloc(ll + 1);
        memcpy(line, s->uin.data, ll);
        line[ll] = '\0';
        buf_consume(&s->uin, used);
        upstream_line(s, line, ll);
        free(line);
    }
}

static void imap_tls_started(session_t *s)
{
    imap_state_t *st = st_of(s);
    st->state = C_COMMAND;
    st->lit_acked = 0;
}

/* ---- upstream STARTTLS ---- */

static void imap_upstream_tls_ready(session_t *s)
{
    /* capabilities change with TLS: ask again (RFC 9051 §6.2.1) */
    imap_state_t *st = st_of(s);
    st->ustate = U_CAPABILITY;
    st->ucaps = 0;
    session_upstream_write(s, "P1 CAPABILITY\r\n", 15);
}

const proto_t proto_imap = {
    .name = "imap",
    .default_ports = { 143, 993 },
    .default_auth = AUTH_LOGIN | AUTH_PLAIN,
    .allowed_auth = AUTH_LOGIN | AUTH_PLAIN | AUTH_CRAM_MD5 | AUTH_XOAUTH2 | AUTH_OAUTHBEARER | AUTH_EXTERNAL,
    .state_size = sizeof(imap_state_t),
    .capabilities = imap_capabilities,
    .start = imap_start,
    .client_input = imap_client_input,
    .auth_refused = imap_auth_refused,
    .bye = imap_bye,
    .cleanup = imap_cleanup,
    .upstream_start = imap_upstream_start,
    .upstream_input = imap_upstream_input,
    .tls_started = imap_tls_started,
    .upstream_tls_ready = imap_upstream_tls_ready,
};

