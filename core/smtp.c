/* smtp.c: SMTP and submission (RFC 5321, 4954) as a proxy needs it. The
 * client side answers EHLO/HELO, AUTH with the shared SASL mechanisms,
 * STARTTLS, RSET, NOOP, QUIT through the pre-auth engine and, with
 * `auth = { "none" }`, collects MAIL FROM and the first RCPT TO for the
 * policy. The upstream side greets with EHLO, then sends XCLIENT (Postfix)
 * or AUTH, replays MAIL and RCPT in the no-auth case, and hands over to
 * the relay: DATA and everything after it pass through unchanged, in the
 * order the client sent them. */
#include "buf.h"
#include "config.h"
#include "log.h"
#include "login.h"
#include "mem.h"
#include "preauth.h"
#include "proto.h"
#include "sasl.h"
#include "session.h"
#include "smtp_parse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SMTP_MAX_RCPT 100         /* recipients collected for the policy (auth none) */
#define SMTP_UCONT_MAX 4096       /* continuation lines kept to pass on; more are dropped */

enum { U_GREETING, U_EHLO, U_HELO, U_STARTTLS, U_XCLIENT, U_XCLIENT_EHLO, U_AUTH, U_MAIL, U_RCPT };
enum {
    UC_AUTH_PLAIN = 1 << 0, UC_AUTH_LOGIN = 1 << 1, UC_AUTH_XOAUTH2 = 1 << 2, UC_AUTH_OAUTHBEARER = 1 << 3,
    UC_XCLIENT = 1 << 4, UX_ADDR = 1 << 5, UX_NAME = 1 << 6, UX_LOGIN = 1 << 7, UX_HELO = 1 << 8,
    UX_PROTO = 1 << 9, UC_STARTTLS = 1 << 10,
};
enum { SET_GREETING_DELAY };

/* The envelope when the client does not authenticate (auth none): the
 * policy routes on it, and the upstream login replays it. */
typedef struct envelope {
    char *helo;
    char *mail_from;
    char *mail_line, *rcpt_line;  /* the MAIL and last RCPT commands as the client sent them */
    char *rcpt_to[SMTP_MAX_RCPT];
    int nrcpt;
} envelope_t;

typedef struct smtp_state {
    bool greeted;                /* the greeting went out (smtp_greeting_delay) */
    bool esmtp;                  /* EHLO (not HELO) was used */
    envelope_t env;

    int ustate;
    unsigned ucaps;
    char *ucont;                 /* the continuation lines ("550-...") of the upstream reply being read */
    size_t ucont_len;
} smtp_state_t;

static const char *const smtp_options[] = { "xclient", NULL };
static const proto_setting_t smtp_settings[] = {
    [SET_GREETING_DELAY] = { "smtp_greeting_delay", 0, 600, 0 },
    { NULL, 0, 0, 0 },
};

static void envelope_clear(envelope_t *e)
{
    free(e->helo);
    free(e->mail_from);
    free(e->mail_line);
    free(e->rcpt_line);
    for (int i = 0; i < e->nrcpt; i++)
        free(e->rcpt_to[i]);
    memset(e, 0, sizeof *e);
}

static void smtp_cleanup(session_t *s)
{
    smtp_state_t *st = s->pstate;
    envelope_clear(&st->env);
    free(st->ucont);
}

static bool auth_required(const session_t *s)
{
    return !(s->listener->auth & AUTH_NONE);
}

/* EHLO keywords, "\n"-separated: the configured ones, then AUTH. */
static char *smtp_capabilities(const char *configured, unsigned auth, int starttls)
{
    const char *base = configured ? configured : "PIPELINING\nSIZE 10485760\n8BITMIME\nENHANCEDSTATUSCODES";
    char mechs[128];
    sasl_mech_list(auth, mechs, sizeof mechs);
    if (starttls == 2) /* no AUTH before TLS (nginx's starttls only) */
        mechs[0] = '\0';
    return xasprintf("%s%s%s%s%s", base, base[0] && (mechs[0] || starttls) ? "\n" : "", mechs[0] ? "AUTH " : "",
                     mechs, starttls ? (mechs[0] ? "\nSTARTTLS" : "STARTTLS") : "");
}

/* ---- replies ---- */

static const proto_reply_t smtp_replies[REPLY_COUNT] = {
    [REPLY_OK] = { "250 2.0.0", "Ok" },
    [REPLY_BAD] = { "501 5.5.4", NULL },
    [REPLY_NO] = { "503 5.5.1", "Bad sequence of commands" },
    [REPLY_UNKNOWN] = { "500 5.5.1", "Invalid command" },
    [REPLY_INVALID] = { "500 5.5.2", NULL },
    [REPLY_TOO_LONG] = { "500 5.5.2", "Line too long" },
    [REPLY_CHALLENGE] = { "334", NULL },
    [REPLY_SASL_CANCELLED] = { "501 5.7.0", NULL }, /* RFC 4954 §4 */
    [REPLY_SASL_BASE64] = { "501 5.5.2", "Cannot decode response" },
    [REPLY_SASL_IR] = { "501 5.5.4", NULL }, /* RFC 4954 §4 */
    [REPLY_SASL_MESSAGE] = { "535 5.7.8", NULL },
    [REPLY_MECH_UNKNOWN] = { "504 5.5.4", "Unrecognized authentication type" },
    [REPLY_TLS_GO] = { "220 2.0.0", "Ready to start TLS" },
    [REPLY_TLS_ACTIVE] = { "503 5.5.1", "TLS already active" },
    [REPLY_TLS_ARGS] = { "501 5.5.4", "STARTTLS takes no parameters" }, /* RFC 3207 §4 */
    [REPLY_TLS_UNAVAILABLE] = { "502 5.5.1", "STARTTLS not available" },
    [REPLY_TLS_REQUIRED] = { "530 5.7.0", "Must issue a STARTTLS command first" },
    [REPLY_BYE] = { "421 4.7.0", NULL },
    [REPLY_UNAVAILABLE] = { "421 4.7.0", NULL },
};

static void smtp_reply(session_t *s, reply_t what, const char *status, const char *text)
{
    if (what == REPLY_BYE || what == REPLY_UNAVAILABLE)
        session_printf(s, "%s %s %s\r\n", status, s->cfg->server_name, text);
    else
        session_printf(s, "%s %s\r\n", status, text);
}

static void send_greeting(session_t *s)
{
    smtp_state_t *st = s->pstate;
    st->greeted = true;
    session_printf(s, "220 %s ESMTP ready\r\n", s->cfg->server_name);
}

static void smtp_greet(session_t *s)
{
    double delay = config_setting(s->cfg, smtp_settings[SET_GREETING_DELAY].key);
    if (delay > 0) {
        /* nginx's smtp_greeting_delay: a client that talks first is a
         * spam bot that does not wait for the greeting */
        session_protocol_timer(s, delay);
        return;
    }
    send_greeting(s);
}

static void smtp_timer(session_t *s)
{
    smtp_state_t *st = s->pstate;
    if (st->greeted)
        return;
    send_greeting(s);
    session_set_timeout(s, s->cfg->timeout);
}

static void smtp_early_input(session_t *s)
{
    session_log(s, LL_INFO, "client sent data before the greeting");
    s->close_reason = "talked before the greeting";
    session_printf(s, "503 5.5.0 Improper use of SMTP command pipelining\r\n");
    session_quit(s);
}

/* "535" -> "535 5.7.8"; "451 4.3.0" stays */
static void reply_code(const refusal_t *r, bool envelope, char *out, size_t outlen)
{
    const char *dflt = r->temporary ? (envelope ? "451 4.3.0" : "454 4.7.0") : (envelope ? "550 5.7.1" : "535 5.7.8");
    if (!r->code)
        snprintf(out, outlen, "%s", dflt);
    else if (strlen(r->code) == 3)
        snprintf(out, outlen, "%s %c.7.%c", r->code, r->code[0], r->code[0] == '4' ? '0' : '8');
    else
        snprintf(out, outlen, "%s", r->code);
}

static char *smtp_refusal(session_t *s, const refusal_t *r)
{
    bool envelope = s->cred.envelope;
    char code[32];
    reply_code(r, envelope, code, sizeof code);
    const char *msg = preauth_refusal_text(r, envelope ? "Recipient rejected" : "Authentication credentials invalid");
    return xasprintf("%s %s\r\n", code, msg);
}

/* The refused recipient is forgotten; MAIL FROM stays. */
static void smtp_attempt_failed(session_t *s)
{
    smtp_state_t *st = s->pstate;
    if (!s->cred.envelope)
        return;
    if (st->env.nrcpt > 0)
        free(st->env.rcpt_to[--st->env.nrcpt]);
    free(st->env.rcpt_line);
    st->env.rcpt_line = NULL;
}

static void smtp_fields(const session_t *s, const proto_fields_t *out, void *ctx)
{
    const envelope_t *e = &((const smtp_state_t *)s->pstate)->env;
    out->string(ctx, "helo", e->helo);
    out->string(ctx, "mail_from", e->mail_from);
    out->string(ctx, "mail_line", e->mail_line);
    out->string(ctx, "rcpt_line", e->rcpt_line);
    out->list(ctx, "rcpt_to", e->rcpt_to, e->nrcpt);
}

/* ---- client commands ---- */

static void cmd_ehlo(session_t *s, const char *arg, size_t al, bool ehlo)
{
    smtp_state_t *st = s->pstate;
    if (!smtp_valid_helo(arg, al)) {
        preauth_reply(s, REPLY_BAD, ehlo ? "Syntax: EHLO hostname" : "Syntax: HELO hostname");
        return;
    }
    /* a new EHLO starts the session over (RFC 5321 §4.1.4) */
    envelope_clear(&st->env);
    st->env.helo = xstrndup(arg, al);
    st->esmtp = ehlo;
    if (!ehlo) {
        session_printf(s, "250 %s\r\n", s->cfg->server_name);
        return;
    }
    const char *caps = session_capabilities(s);
    buf_t out;
    buf_init(&out, 64 * 1024);
    char *head = xasprintf("250%c%s\r\n", caps[0] ? '-' : ' ', s->cfg->server_name);
    buf_append(&out, head, strlen(head));
    free(head);
    while (*caps) {
        const char *nl = strchr(caps, '\n');
        size_t l = nl ? (size_t)(nl - caps) : strlen(caps);
        char *line = xasprintf("250%c%.*s\r\n", nl ? '-' : ' ', (int)l, caps);
        buf_append(&out, line, strlen(line));
        free(line);
        caps += l + (nl ? 1 : 0);
    }
    session_write(s, out.data, out.len);
    buf_free(&out);
}

static void cmd_auth(session_t *s, const char *arg, size_t al)
{
    smtp_state_t *st = s->pstate;
    unsigned mechs_offered = s->listener->auth & ~(AUTH_NONE | AUTH_USER | AUTH_APOP);
    if (!mechs_offered) {
        session_printf(s, "503 5.5.1 AUTH not available\r\n");
        return;
    }
    if (!st->esmtp) {
        session_printf(s, "503 5.5.1 Send EHLO first\r\n");
        return;
    }
    const char *ir;
    size_t irl;
    size_t ml = cmd_split_word(arg, al, &ir, &irl);
    if (ml == 0) {
        preauth_reply(s, REPLY_BAD, "Syntax: AUTH mechanism [initial-response]");
        return;
    }
    preauth_authenticate(s, arg, ml, ir, irl);
}

/* The limit this listener advertises ("SIZE n" in EHLO), 0 for none. */
static unsigned long long advertised_size(const session_t *s)
{
    for (const char *c = session_capabilities(s); *c;) {
        const char *nl = strchr(c, '\n');
        size_t l = nl ? (size_t)(nl - c) : strlen(c);
        if (l > 5 && strncasecmp(c, "SIZE ", 5) == 0)
            return strtoull(c + 5, NULL, 10);
        c += l + (nl ? 1 : 0);
    }
    return 0;
}

static void cmd_mail(session_t *s, const char *line, size_t len, const char *arg, size_t al)
{
    smtp_state_t *st = s->pstate;
    if (auth_required(s)) {
        session_printf(s, "530 5.7.0 Authentication required\r\n");
        return;
    }
    /* no HELO needed first: nginx and Postfix's default accept that */
    if (st->env.mail_line) {
        session_printf(s, "503 5.5.1 Nested MAIL command\r\n");
        return;
    }
    size_t off, n;
    if (smtp_parse_path(arg, al, "FROM:", &off, &n) < 0 || al > SMTP_MAX_ARG) {
        preauth_reply(s, REPLY_BAD, "Syntax: MAIL FROM:<address>");
        return;
    }
    unsigned long long size = 0, limit = advertised_size(s);
    int rc = smtp_parse_size(arg, al, &size);
    if (rc < 0) {
        preauth_reply(s, REPLY_BAD, "Syntax: SIZE=number");
        return;
    }
    if (rc == 1 && limit && size > limit) {
        session_printf(s, "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
        return;
    }
    free(st->env.mail_from);
    st->env.mail_from = xstrndup(arg + off, n);
    st->env.mail_line = xstrndup(line, len);
    session_printf(s, "250 2.1.0 Ok\r\n");
}

static void cmd_rcpt(session_t *s, const char *line, size_t len, const char *arg, size_t al)
{
    smtp_state_t *st = s->pstate;
    if (auth_required(s)) {
        session_printf(s, "530 5.7.0 Authentication required\r\n");
        return;
    }
    if (!st->env.mail_line) {
        session_printf(s, "503 5.5.1 Need MAIL command\r\n");
        return;
    }
    size_t off, n;
    if (smtp_parse_path(arg, al, "TO:", &off, &n) < 0 || al > SMTP_MAX_ARG) {
        preauth_reply(s, REPLY_BAD, "Syntax: RCPT TO:<address>");
        return;
    }
    if (st->env.nrcpt == SMTP_MAX_RCPT) {
        session_printf(s, "452 4.5.3 Too many recipients\r\n");
        return;
    }
    /* The policy decides at the first recipient, as nginx does; the
     * upstream it picks gets the whole transaction. */
    st->env.rcpt_to[st->env.nrcpt++] = xstrndup(arg + off, n);
    free(st->env.rcpt_line);
    st->env.rcpt_line = xstrndup(line, len);
    credentials_clear(&s->cred);
    s->cred.mechanism = "none";
    s->cred.envelope = true;
    preauth_login(s);
}

/* RFC 3207 §4.2: forget everything, the client starts with EHLO. */
static void smtp_tls_started(session_t *s)
{
    smtp_state_t *st = s->pstate;
    envelope_clear(&st->env);
    st->esmtp = false;
}

static void smtp_execute(session_t *s, const char *buf, const cmd_t *cmd)
{
    smtp_state_t *st = s->pstate;
    const char *arg = buf + cmd->rest_off;
    size_t al = cmd->rest_len, len = cmd->rest_off + cmd->rest_len;
#define IS(w) cmd_is(buf, cmd, w)
    if (IS("EHLO") || IS("HELO")) {
        cmd_ehlo(s, arg, al, IS("EHLO"));
    } else if (IS("AUTH") && preauth_tls_required(s)) {
        return;
    } else if (IS("STARTTLS")) {
        preauth_starttls(s, al > 0);
    } else if (IS("AUTH")) {
        cmd_auth(s, arg, al);
    } else if (IS("MAIL")) {
        cmd_mail(s, buf, len, arg, al);
    } else if (IS("RCPT")) {
        cmd_rcpt(s, buf, len, arg, al);
    } else if ((IS("RSET") || IS("QUIT")) && al > 0) {
        preauth_reply(s, REPLY_BAD, "This command takes no parameters"); /* RFC 5321 §4.1.1.5, §4.1.1.10 */
    } else if (IS("RSET")) {
        free(st->env.mail_line);
        st->env.mail_line = NULL;
        free(st->env.mail_from);
        st->env.mail_from = NULL;
        for (int i = 0; i < st->env.nrcpt; i++)
            free(st->env.rcpt_to[i]);
        st->env.nrcpt = 0;
        session_printf(s, "250 2.0.0 Ok\r\n");
    } else if (IS("NOOP")) {
        session_printf(s, "250 2.0.0 Ok\r\n");
    } else if (IS("QUIT")) {
        session_printf(s, "221 2.0.0 Bye\r\n");
        s->close_reason = "client quit";
        session_quit(s);
    } else if (IS("DATA") || IS("BDAT")) {
        session_printf(s, auth_required(s) ? "530 5.7.0 Authentication required\r\n"
                                           : "503 5.5.1 Need RCPT command\r\n");
    } else if (IS("VRFY")) {
        session_printf(s, "252 2.5.2 Cannot VRFY user\r\n");
    } else {
        preauth_reply(s, REPLY_UNKNOWN, NULL);
    }
#undef IS
}

/* ---- upstream login ---- */

/* The upstream's reply whose last line is `line`, whole, for the client. */
static char *upstream_reply_text(const smtp_state_t *st, const char *line, size_t len)
{
    return xasprintf("%.*s%.*s\r\n", (int)st->ucont_len, st->ucont ? st->ucont : "", (int)len, line);
}

/* RFC 3461 xtext, as XCLIENT wants its values (nginx 6f81314a0). */
static char *xtext(const char *v)
{
    char *out = xmalloc(strlen(v) * 3 + 1), *p = out;
    for (const unsigned char *c = (const unsigned char *)v; *c; c++) {
        if (*c < '!' || *c > '~' || *c == '+' || *c == '=')
            p += sprintf(p, "+%02X", *c);
        else
            *p++ = (char)*c;
    }
    *p = '\0';
    return out;
}

static void smtp_login_start(login_t *l)
{
    smtp_state_t *st = l->p.pstate;
    st->ustate = U_GREETING;
    st->ucaps = 0;
    l->mech = 0;
    login_forget_pending(l);
}

static void login_done(login_t *l)
{
    static const char ok[] = "235 2.7.0 Authentication successful\r\n";
    login_ready(l, ok, sizeof ok - 1);
}

static void send_mail(login_t *l)
{
    smtp_state_t *st = l->p.pstate;
    st->ustate = U_MAIL;
    login_send_line(l, xasprintf("%s\r\n", st->env.mail_line));
}

static void send_xclient(login_t *l)
{
    smtp_state_t *st = l->p.pstate;
    char buf[1600];
    size_t n = (size_t)snprintf(buf, sizeof buf, "XCLIENT");
    if (st->ucaps & UX_ADDR)
        n += (size_t)snprintf(buf + n, sizeof buf - n, " ADDR=%s%s", strchr(l->p.client_ip, ':') ? "IPV6:" : "",
                              l->p.client_ip);
    if (st->ucaps & UX_NAME)
        n += (size_t)snprintf(buf + n, sizeof buf - n, " NAME=[UNAVAILABLE]");
    if ((st->ucaps & UX_LOGIN) && l->p.user && !l->p.cred->envelope) {
        /* the upstream identity: the policy's `user` when it gave one */
        char *x = xtext(l->p.user);
        n += (size_t)snprintf(buf + n, sizeof buf - n, " LOGIN=%.400s", x);
        free(x);
    }
    if ((st->ucaps & UX_HELO) && st->env.helo) {
        char *x = xtext(st->env.helo);
        n += (size_t)snprintf(buf + n, sizeof buf - n, " HELO=%.300s", x);
        free(x);
    }
    if (st->ucaps & UX_PROTO)
        n += (size_t)snprintf(buf + n, sizeof buf - n, " PROTO=%s", st->esmtp ? "ESMTP" : "SMTP");
    if (n > sizeof buf - 3)
        n = sizeof buf - 3;
    memcpy(buf + n, "\r\n", 3);
    st->ustate = U_XCLIENT;
    login_send(l, buf, n + 2);
}

static void send_auth(login_t *l)
{
    smtp_state_t *st = l->p.pstate;
    const char *user, *pass;
    int mech;
    if (!login_credentials(l, &user, &pass, &mech))
        return;
    if (!mech) /* PLAIN when offered, else LOGIN (Exchange) */
        mech = (st->ucaps & UC_AUTH_PLAIN) ? SASL_PLAIN : (st->ucaps & UC_AUTH_LOGIN) ? SASL_LOGIN : SASL_PLAIN;
    l->mech = mech;
    st->ustate = U_AUTH;
    if (mech == SASL_LOGIN) {
        char *bu = sasl_b64_encode(user, strlen(user)), *bp = sasl_b64_encode(pass, strlen(pass));
        login_queue(l, xasprintf("%s\r\n", bp));
        login_send_line(l, xasprintf("AUTH LOGIN %s\r\n", bu));
        str_wipe_free(&bu);
        str_wipe_free(&bp);
        return;
    }
    char *b64 = sasl_client_response(mech, user, pass);
    login_send_line(l, xasprintf("AUTH %s %s\r\n", sasl_mech_name(mech), b64));
    str_wipe_free(&b64);
}

static void after_ehlo(login_t *l)
{
    smtp_state_t *st = l->p.pstate;
    if (login_wants_starttls(l)) {
        if (!(st->ucaps & UC_STARTTLS)) { /* never falls back to plaintext */
            login_fail(l, "upstream does not offer STARTTLS");
            return;
        }
        st->ustate = U_STARTTLS;
        login_send(l, "STARTTLS\r\n", 10);
        return;
    }
    int xclient = proto_upstream_option(l->p.upstream, "xclient");
    bool want_xclient = xclient >= 0 ? xclient : proto_listener_option(l->p.listener, "xclient");
    if (st->ustate == U_EHLO && want_xclient && (st->ucaps & UC_XCLIENT)) {
        send_xclient(l);
    } else if (l->p.cred->envelope) {
        send_mail(l);
    } else if (st->ustate == U_XCLIENT_EHLO ||
               !(st->ucaps & (UC_AUTH_PLAIN | UC_AUTH_LOGIN | UC_AUTH_XOAUTH2 | UC_AUTH_OAUTHBEARER))) {
        /* XCLIENT LOGIN= told the upstream who it is, or the upstream
         * trusts us without AUTH */
        login_done(l);
    } else {
        send_auth(l);
    }
}

static void parse_ehlo_line(smtp_state_t *st, const char *kw, size_t len)
{
    char line[512];
    str_copy(line, sizeof line, kw, len);
    char *save = NULL, *w = strtok_r(line, " =", &save);
    if (!w)
        return;
    if (strcasecmp(w, "AUTH") == 0) {
        for (char *m = strtok_r(NULL, " ", &save); m; m = strtok_r(NULL, " ", &save)) {
            if (strcasecmp(m, "PLAIN") == 0)
                st->ucaps |= UC_AUTH_PLAIN;
            else if (strcasecmp(m, "LOGIN") == 0)
                st->ucaps |= UC_AUTH_LOGIN;
            else if (strcasecmp(m, "XOAUTH2") == 0)
                st->ucaps |= UC_AUTH_XOAUTH2;
            else if (strcasecmp(m, "OAUTHBEARER") == 0)
                st->ucaps |= UC_AUTH_OAUTHBEARER;
        }
    } else if (strcasecmp(w, "STARTTLS") == 0) {
        st->ucaps |= UC_STARTTLS;
    } else if (strcasecmp(w, "XCLIENT") == 0) {
        st->ucaps |= UC_XCLIENT;
        for (char *a = strtok_r(NULL, " ", &save); a; a = strtok_r(NULL, " ", &save)) {
            if (strcasecmp(a, "ADDR") == 0)
                st->ucaps |= UX_ADDR;
            else if (strcasecmp(a, "NAME") == 0)
                st->ucaps |= UX_NAME;
            else if (strcasecmp(a, "LOGIN") == 0)
                st->ucaps |= UX_LOGIN;
            else if (strcasecmp(a, "HELO") == 0)
                st->ucaps |= UX_HELO;
            else if (strcasecmp(a, "PROTO") == 0)
                st->ucaps |= UX_PROTO;
        }
    }
}

static void upstream_refused(login_t *l, const char *line, size_t len)
{
    smtp_state_t *st = l->p.pstate;
    /* every line of it: a 550 often explains itself over several */
    char *reply = len < 4 ? xstrdup("535 5.7.8 Authentication failed\r\n") : upstream_reply_text(st, line, len);
    login_refused(l, reply, strlen(reply), line);
    free(reply);
}

/* One whole reply: its code and last line (earlier lines were parsed). */
static void upstream_reply(login_t *l, int code, const char *line, size_t len)
{
    smtp_state_t *st = l->p.pstate;
    switch (st->ustate) {
    case U_GREETING:
        if (code != 220) {
            login_fail_line(l, "upstream greeting", line, len);
            return;
        }
        st->ustate = U_EHLO;
        login_send_line(l, xasprintf("EHLO %s\r\n", l->p.server_name));
        return;
    case U_EHLO:
        if (code == 500 || code == 502) { /* an old server: HELO, with no extensions (RFC 5321 4.1.4) */
            st->ustate = U_HELO;
            st->ucaps = 0;
            login_send_line(l, xasprintf("HELO %s\r\n", l->p.server_name));
            return;
        }
        /* fall through */
    case U_XCLIENT_EHLO:
        if (code != 250) {
            login_fail_line(l, "upstream refused EHLO", line, len);
            return;
        }
        after_ehlo(l);
        return;
    case U_HELO:
        if (code != 250) {
            login_fail_line(l, "upstream refused EHLO and HELO", line, len);
            return;
        }
        st->ustate = U_EHLO;
        after_ehlo(l);
        return;
    case U_STARTTLS:
        if (code != 220) {
            login_fail_line(l, "upstream refused STARTTLS", line, len);
            return;
        }
        login_starttls(l);
        return;
    case U_XCLIENT:
        if (code != 220 && code != 250) {
            login_fail_line(l, "upstream refused XCLIENT", line, len);
            return;
        }
        /* XCLIENT starts a new session: greet again, with the client's name */
        st->ustate = U_XCLIENT_EHLO;
        st->ucaps &= ~(unsigned)(UC_XCLIENT);
        login_send_line(l, xasprintf("%s %s\r\n", st->esmtp || !st->env.helo ? "EHLO" : "HELO",
                                     st->env.helo ? st->env.helo : l->p.server_name));
        return;
    case U_AUTH:
        if (code == 334)
            login_continue(l);
        else if (code == 235)
            login_done(l);
        else if (code >= 400)
            upstream_refused(l, line, len);
        else
            login_fail(l, "upstream sent an unexpected reply to AUTH");
        return;
    case U_MAIL:
        if (code >= 400) {
            upstream_refused(l, line, len);
            return;
        }
        if (code != 250) {
            login_fail(l, "upstream sent an unexpected reply to MAIL");
            return;
        }
        st->ustate = U_RCPT;
        login_send_line(l, xasprintf("%s\r\n", st->env.rcpt_line));
        return;
    case U_RCPT: {
        /* the upstream's answer to the client's RCPT, whatever it is; the
         * rest of the transaction goes straight through */
        char *reply = upstream_reply_text(st, line, len);
        login_ready(l, reply, strlen(reply));
        free(reply);
        return;
    }
    }
}

static void smtp_login_line(login_t *l, const char *line, size_t len)
{
    smtp_state_t *st = l->p.pstate;
    int code = len >= 3 ? atoi(line) : 0;
    if (len < 3 || code < 200 || code > 599 || (len > 3 && line[3] != ' ' && line[3] != '-')) {
        login_fail(l, "upstream sent an invalid SMTP reply");
        return;
    }
    if (st->ustate == U_EHLO || st->ustate == U_XCLIENT_EHLO)
        parse_ehlo_line(st, len > 4 ? line + 4 : line + len, len > 4 ? len - 4 : 0);
    if (len == 3 || line[3] == ' ') {
        upstream_reply(l, code, line, len);
        st->ucont_len = 0;
    } else if (st->ucont_len + len + 2 <= SMTP_UCONT_MAX) {
        if (!st->ucont)
            st->ucont = xmalloc(SMTP_UCONT_MAX);
        memcpy(st->ucont + st->ucont_len, line, len);
        memcpy(st->ucont + st->ucont_len + len, "\r\n", 2);
        st->ucont_len += len + 2;
    }
}

static void smtp_login_tls_ready(login_t *l)
{
    smtp_state_t *st = l->p.pstate;
    st->ustate = U_EHLO;
    st->ucaps = 0;
    login_send_line(l, xasprintf("EHLO %s\r\n", l->p.server_name));
}

const proto_t proto_smtp = {
    .name = "smtp",
    .alpn = "smtp",
    .default_ports = { 25, 465, 587 },
    .default_auth = AUTH_LOGIN | AUTH_PLAIN,
    .allowed_auth = AUTH_LOGIN | AUTH_PLAIN | AUTH_CRAM_MD5 | AUTH_XOAUTH2 | AUTH_OAUTHBEARER | AUTH_NONE |
                    AUTH_EXTERNAL,
    .capabilities_key = "smtp_capabilities",
    .options = smtp_options,
    .settings = smtp_settings,
    .state_size = sizeof(smtp_state_t),
    .capabilities = smtp_capabilities,
    .yes = "250 2.0.0",
    .no = "500 5.5.1",
    .replies = smtp_replies,
    .reply = smtp_reply,
    .greet = smtp_greet,
    .parse = smtp_parse_command,
    .parse_response = cmd_line_response,
    .execute = smtp_execute,
    .refusal = smtp_refusal,
    .attempt_failed = smtp_attempt_failed,
    .tls_started = smtp_tls_started,
    .timer = smtp_timer,
    .early_input = smtp_early_input,
    .fields = smtp_fields,
    .cleanup = smtp_cleanup,
    .login_start = smtp_login_start,
    .login_line = smtp_login_line,
    .login_tls_ready = smtp_login_tls_ready,
};
