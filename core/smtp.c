/* smtp.c: SMTP and submission (RFC 5321, 4954) as a proxy needs it. The
 * client side answers EHLO/HELO, AUTH with the shared SASL mechanisms,
 * RSET, NOOP, QUIT, and, with `auth = { "none" }`, collects MAIL FROM and
 * the first RCPT TO for the policy. The upstream side greets with EHLO,
 * then sends XCLIENT (Postfix) or AUTH, replays MAIL and RCPT in the
 * no-auth case, and hands over to the relay: DATA and everything after
 * it pass through unchanged, in the order the client sent them. */
#include "proto.h"
#include "mem.h"

#include "buf.h"
#include "config.h"
#include "log.h"
#include "sasl.h"
#include "session.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SMTP_MAX_ARG 1024

enum { C_GREETING_DELAY, C_COMMAND, C_SASL, C_OAUTH_ERROR };
enum { U_GREETING, U_EHLO, U_HELO, U_STARTTLS, U_XCLIENT, U_XCLIENT_EHLO, U_AUTH, U_MAIL, U_RCPT };
enum {
    UC_AUTH_PLAIN = 1 << 0, UC_AUTH_LOGIN = 1 << 1, UC_AUTH_XOAUTH2 = 1 << 2, UC_AUTH_OAUTHBEARER = 1 << 3,
    UC_XCLIENT = 1 << 4, UX_ADDR = 1 << 5, UX_NAME = 1 << 6, UX_LOGIN = 1 << 7, UX_HELO = 1 << 8,
    UX_PROTO = 1 << 9, UC_STARTTLS = 1 << 10,
};

typedef struct smtp_state {
    int state;
    sasl_t sasl;
    bool esmtp;                  /* EHLO (not HELO) was used */
    char *oauth_failure;

    int ustate;
    unsigned ucaps;
    int umech;
    char *pending[2];
    int npending, next_pending;
    char *ucont;                 /* the continuation lines ("550-...") of the upstream reply being read */
    size_t ucont_len;
} smtp_state_t;

#define SMTP_UCONT_MAX 4096       /* continuation lines kept to pass on; more are dropped */

static smtp_state_t *st_of(session_t *s)
{
    return s->pstate;
}

static void free_pending(smtp_state_t *st)
{
    for (int i = 0; i < st->npending; i++)
        str_wipe_free(&st->pending[i]);
    st->npending = st->next_pending = 0;
}

static void smtp_cleanup(session_t *s)
{
    smtp_state_t *st = st_of(s);
    free(st->oauth_failure);
    free_pending(st);
    free(st->ucont);
}

/* The upstream's reply whose last line is `line`, whole, for the client. */
static char *upstream_reply_text(const smtp_state_t *st, const char *line, size_t len)
{
    return xasprintf("%.*s%.*s\r\n", (int)st->ucont_len, st->ucont ? st->ucont : "", (int)len, line);
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
    char *caps = NULL;
    if (asprintf(&caps, "%s%s%s%s%s", base, base[0] && (mechs[0] || starttls) ? "\n" : "",
                 mechs[0] ? "AUTH " : "", mechs, starttls ? (mechs[0] ? "\nSTARTTLS" : "STARTTLS") : "") < 0)
        return xstrdup(base);
    return caps;
}

static void send_greeting(session_t *s)
{
    session_printf(s, "220 %s ESMTP ready\r\n", s->cfg->server_name);
}

static void smtp_start(session_t *s)
{
    smtp_state_t *st = st_of(s);
    if (s->cfg->smtp_greeting_delay > 0) {
        /* nginx's smtp_greeting_delay: a client that talks first is
         * a spam bot that does not wait for the greeting */
        st->state = C_GREETING_DELAY;
        session_protocol_timer(s, s->cfg->smtp_greeting_delay);
        return;
    }
    st->state = C_COMMAND;
    send_greeting(s);
}

static void smtp_on_timer(session_t *s)
{
    smtp_state_t *st = st_of(s);
    if (st->state != C_GREETING_DELAY)
        return;
    st->state = C_COMMAND;
    send_greeting(s);
    session_set_timeout(s, s->cfg->timeout);
}

static void smtp_bye(session_t *s, const char *why)
{
    session_printf(s, "421 4.7.0 %s %s\r\n", s->cfg->server_name, why);
}

/* "535" -> "535 5.7.8"; "451 4.3.0" stays */
static void reply_code(const refusal_t *r, bool none_mode, char *out, size_t outlen)
{
    const char *dflt = r->temporary ? (none_mode ? "451 4.3.0" : "454 4.7.0") : (none_mode ? "550 5.7.1" : "535 5.7.8");
    if (!r->code) {
        snprintf(out, outlen, "%s", dflt);
    } else if (strlen(r->code) == 3) {
        snprintf(out, outlen, "%s %c.7.%c", r->code, r->code[0], r->code[0] == '4' ? '0' : '8');
    } else {
        snprintf(out, outlen, "%s", r->code);
    }
}

static void smtp_auth_refused(session_t *s, const refusal_t *r)
{
    smtp_state_t *st = st_of(s);
    bool none_mode = s->cred.mechanism && strcmp(s->cred.mechanism, "none") == 0;
    char code[32];
    reply_code(r, none_mode, code, sizeof code);
    const char *msg = r->message;
    if (!msg)
        msg = r->temporary ? "Temporary authentication failure, try again later"
                           : none_mode ? "Recipient rejected" : "Authentication credentials invalid";
    if (none_mode) {
        /* the refused recipient is forgotten; MAIL FROM stays */
        if (s->env.nrcpt > 0)
            free(s->env.rcpt_to[--s->env.nrcpt]);
        free(s->env.rcpt_line);
        s->env.rcpt_line = NULL;
    }
    if (s->cred.mechanism && strstr("xoauth2 oauthbearer", s->cred.mechanism)) {
        char challenge[256];
        sasl_oauth_error(challenge, sizeof challenge, r->temporary);
        free(st->oauth_failure);
        st->oauth_failure = xasprintf("%s %s\r\n", code, msg);
        session_printf(s, "334 %s\r\n", challenge);
        st->state = C_OAUTH_ERROR;
        return;
    }
    session_printf(s, "%s %s\r\n", code, msg);
    st->state = C_COMMAND;
}

static void sasl_result(session_t *s, int rc, const char *challenge)
{
    smtp_state_t *st = st_of(s);
    if (rc == PT_INVALID) /* one case per reason */
        rc = PT_INVALID * 16 + (int)st->sasl.fault;
    st->state = C_COMMAND;
    switch (rc) {
    case PT_AGAIN:
        st->state = C_SASL;
        session_printf(s, "334 %s\r\n", challenge);
        return;
    case PT_OK:
        session_authenticate(s);
        return;
    case PT_DECLINED:
        session_printf(s, "501 5.7.0 Authentication cancelled\r\n");
        return;
    case PT_INVALID * 16 + SASL_FAULT_BASE64:
        session_printf(s, "501 5.5.2 Cannot decode response\r\n");
        session_error(s);
        return;
    case PT_INVALID * 16 + SASL_FAULT_IR: /* RFC 4954 §4: 501 */
        session_printf(s, "501 5.5.4 This mechanism takes no initial response\r\n");
        session_error(s);
        return;
    default:
        session_printf(s, "535 5.7.8 Invalid SASL message\r\n");
        session_error(s);
        return;
    }
}

static int is_verb(const char *line, size_t vl, const char *w)
{
    return strlen(w) == vl && strncasecmp(line, w, vl) == 0;
}

static void syntax(session_t *s, const char *text)
{
    session_printf(s, "501 5.5.4 %s\r\n", text);
    session_error(s);
}

/* "FROM:<a@b> SIZE=10" / "TO:<a@b>": the address between < and >. */
static char *path_address(const char *arg, size_t al, const char *prefix)
{
    size_t pl = strlen(prefix);
    if (al < pl || strncasecmp(arg, prefix, pl) != 0)
        return NULL;
    const char *p = arg + pl, *end = arg + al;
    while (p < end && *p == ' ')
        p++;
    if (p >= end || *p != '<')
        return NULL;
    const char *gt = memchr(p, '>', (size_t)(end - p));
    if (!gt)
        return NULL;
    return xstrndup(p + 1, (size_t)(gt - p - 1));
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

/* MAIL FROM's SIZE= parameter (RFC 1870) against the advertised limit:
 * 0 fine or absent, 1 too big, -1 not a number. */
static int mail_size_check(const session_t *s, const char *arg, size_t al)
{
    const char *gt = memchr(arg, '>', al);
    if (!gt)
        return 0;
    for (const char *p = gt + 1; p < arg + al; p++) {
        if (*p != ' ' || arg + al - (p + 1) < 5 || strncasecmp(p + 1, "SIZE=", 5) != 0)
            continue;
        const char *v = p + 6, *e = v;
        unsigned long long n = 0;
        while (e < arg + al && *e >= '0' && *e <= '9' && e - v < 19)
            n = n * 10 + (unsigned long long)(*e++ - '0');
        if (e == v || (e < arg + al && *e != ' '))
            return -1;
        unsigned long long limit = advertised_size(s);
        return limit && n > limit ? 1 : 0;
    }
    return 0;
}

static void command(session_t *s, char *line, size_t len)
{
    smtp_state_t *st = st_of(s);
    char *sp = memchr(line, ' ', len);
    size_t vl = sp ? (size_t)(sp - line) : len;
    char *arg = sp ? sp + 1 : line + len;
    size_t al = len - (size_t)(arg - line);

    if (is_verb(line, vl, "EHLO") || is_verb(line, vl, "HELO")) {
        bool ctl = false; /* a bare CR, a TAB...: no domain has them, and the name is replayed upstream */
        for (size_t i = 0; i < al; i++)
            ctl |= (unsigned char)arg[i] < 0x21 || arg[i] == 0x7f;
        if (al == 0 || al > 255 || ctl) {
            syntax(s, is_verb(line, vl, "EHLO") ? "Syntax: EHLO hostname" : "Syntax: HELO hostname");
            return;
        }
        /* a new EHLO starts the session over (RFC 5321 §4.1.4) */
        envelope_clear(&s->env);
        s->env.helo = xstrndup(arg, al);
        st->esmtp = is_verb(line, vl, "EHLO");
        if (!st->esmtp) {
            session_printf(s, "250 %s\r\n", s->cfg->server_name);
            return;
        }
        buf_t out;
        buf_init(&out, 8192);
        char head[300];
        const char *caps = session_capabilities(s);
        int n = snprintf(head, sizeof head, "250%c%s\r\n", caps[0] ? '-' : ' ', s->cfg->server_name);
        buf_append(&out, head, (size_t)n);
        while (*caps) {
            const char *nl = strchr(caps, '\n');
            size_t l = nl ? (size_t)(nl - caps) : strlen(caps);
            n = snprintf(head, sizeof head, "250%c%.*s\r\n", nl ? '-' : ' ', (int)l, caps);
            buf_append(&out, head, (size_t)n);
            caps += l + (nl ? 1 : 0);
        }
        session_write(s, out.data, out.len);
        buf_free(&out);
    } else if (is_verb(line, vl, "AUTH") && session_tls_required(s)) {
        session_printf(s, "530 5.7.0 Must issue a STARTTLS command first\r\n");
    } else if (is_verb(line, vl, "STARTTLS") && al == 0 && s->listener->starttls && !s->ctls) {
        session_printf(s, "220 2.0.0 Ready to start TLS\r\n");
        session_starttls(s);
    } else if (is_verb(line, vl, "AUTH")) {
        unsigned mechs_offered = s->listener->auth & ~(AUTH_NONE | AUTH_USER | AUTH_APOP);
        if (!mechs_offered) {
            session_printf(s, "503 5.5.1 AUTH not available\r\n");
            return;
        }
        if (!st->esmtp) {
            session_printf(s, "503 5.5.1 Send EHLO first\r\n");
            return;
        }
        char *msp = al ? memchr(arg, ' ', al) : NULL;
        size_t ml = msp ? (size_t)(msp - arg) : al;
        if (ml == 0) {
            syntax(s, "Syntax: AUTH mechanism [initial-response]");
            return;
        }
        int mech = sasl_mech_from_name(arg, ml, mechs_offered);
        if (!mech) {
            session_printf(s, "504 5.5.4 Unrecognized authentication type\r\n");
            return;
        }
        const char *ir = msp ? msp + 1 : NULL;
        size_t irl = msp ? al - ml - 1 : 0;
        char challenge[512];
        int rc = sasl_begin(&st->sasl, mech, ir, irl, s->cfg->server_name, &s->cred, challenge, sizeof challenge);
        sasl_result(s, rc, challenge);
    } else if (is_verb(line, vl, "MAIL")) {
        if (auth_required(s)) {
            session_printf(s, "530 5.7.0 Authentication required\r\n");
            return;
        }
        /* no HELO needed first: nginx and Postfix's default accept that */
        if (s->env.mail_line) {
            session_printf(s, "503 5.5.1 Nested MAIL command\r\n");
            return;
        }
        char *addr = path_address(arg, al, "FROM:");
        if (!addr || al > SMTP_MAX_ARG) {
            free(addr);
            syntax(s, "Syntax: MAIL FROM:<address>");
            return;
        }
        int size_check = mail_size_check(s, arg, al);
        if (size_check != 0) {
            free(addr);
            if (size_check < 0)
                syntax(s, "Syntax: SIZE=number");
            else
                session_printf(s, "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
            return;
        }
        free(s->env.mail_from);
        s->env.mail_from = addr;
        s->env.mail_line = xstrndup(line, len);
        session_printf(s, "250 2.1.0 Ok\r\n");
    } else if (is_verb(line, vl, "RCPT")) {
        if (auth_required(s)) {
            session_printf(s, "530 5.7.0 Authentication required\r\n");
            return;
        }
        if (!s->env.mail_line) {
            session_printf(s, "503 5.5.1 Need MAIL command\r\n");
            return;
        }
        char *addr = path_address(arg, al, "TO:");
        if (!addr || al > SMTP_MAX_ARG) {
            free(addr);
            syntax(s, "Syntax: RCPT TO:<address>");
            return;
        }
        if (s->env.nrcpt == ENVELOPE_MAX_RCPT) {
            free(addr);
            session_printf(s, "452 4.5.3 Too many recipients\r\n");
            return;
        }
        /* The policy decides at the first recipient, as nginx does; the
         * upstream it picks gets the whole transaction. */
        s->env.rcpt_to[s->env.nrcpt++] = addr;
        free(s->env.rcpt_line);
        s->env.rcpt_line = xstrndup(line, len);
        session_reset_credentials(s);
        s->cred.mechanism = "none";
        session_authenticate(s);
    } else if ((is_verb(line, vl, "RSET") || is_verb(line, vl, "QUIT")) && al > 0) {
        syntax(s, "This command takes no parameters"); /* RFC 5321 §4.1.1.5, §4.1.1.10 */
    } else if (is_verb(line, vl, "RSET")) {
        free(s->env.mail_line);
        s->env.mail_line = NULL;
        free(s->env.mail_from);
        s->env.mail_from = NULL;
        for (int i = 0; i < s->env.nrcpt; i++)
            free(s->env.rcpt_to[i]);
        s->env.nrcpt = 0;
        session_printf(s, "250 2.0.0 Ok\r\n");
    } else if (is_verb(line, vl, "NOOP")) {
        session_printf(s, "250 2.0.0 Ok\r\n");
    } else if (is_verb(line, vl, "QUIT")) {
        session_printf(s, "221 2.0.0 Bye\r\n");
        s->close_reason = "client quit";
        session_quit(s);
    } else if (is_verb(line, vl, "DATA") || is_verb(line, vl, "BDAT")) {
        if (auth_required(s))
            session_printf(s, "530 5.7.0 Authentication required\r\n");
        else
            session_printf(s, "503 5.5.1 Need RCPT command\r\n");
    } else if (is_verb(line, vl, "STARTTLS")) {
        if (al)
            syntax(s, "STARTTLS takes no parameters");
        else
            session_printf(s, s->ctls ? "503 5.5.1 TLS already active\r\n" : "502 5.5.1 STARTTLS not available\r\n");
    } else if (is_verb(line, vl, "VRFY")) {
        session_printf(s, "252 2.5.2 Cannot VRFY user\r\n");
    } else {
        session_printf(s, "500 5.5.1 Invalid command\r\n");
        session_error(s);
    }
}

static void smtp_client_input(session_t *s)
{
    smtp_state_t *st = st_of(s);
    size_t ll, used;
    while (s->phase == PHASE_PREAUTH && !s->quit && !session_output_blocked(s) && s->cin.len > 0) {
        if (st->state == C_GREETING_DELAY) {
            session_log(s, LL_INFO, "client sent data before the greeting");
            s->close_reason = "talked before the greeting";
            session_printf(s, "503 5.5.0 Improper use of SMTP command pipelining\r\n");
            session_quit(s);
            return;
        }
        if (!buf_find_line(s->cin.data, s->cin.len, &ll, &used)) {
            if (buf_room(&s->cin) == 0) {
                session_log(s, LL_INFO, "client sent too long command");
                s->close_reason = "too long command";
                session_printf(s, "500 5.5.2 Line too long\r\n");
                session_quit(s);
            }
            return;
        }
        char *line = xmalloc(ll + 1);
        memcpy(line, s->cin.data, ll);
        line[ll] = '\0';
        buf_consume(&s->cin, used);
        if (memchr(line, '\0', ll)) {
            session_printf(s, "500 5.5.2 NUL in command\r\n");
            session_error(s);
        } else if (st->state == C_SASL) {
            char challenge[512];
            int rc = sasl_step(&st->sasl, line, ll, &s->cred, challenge, sizeof challenge);
            sasl_result(s, rc, challenge);
        } else if (st->state == C_OAUTH_ERROR) {
            st->state = C_COMMAND;
            if (ll == 1 && line[0] == '*')
                session_printf(s, "501 5.7.0 Authentication cancelled\r\n"); /* RFC 4954 §4 */
            else if (st->oauth_failure)
                session_write(s, st->oauth_failure, strlen(st->oauth_failure));
            free(st->oauth_failure);
            st->oauth_failure = NULL;
        } else {
            command(s, line, ll);
        }
        explicit_bzero(line, ll);
        free(line);
    }
}

/* ---- upstream login ---- */

static void send_line(session_t *s, char *line)
{
    session_upstream_write(s, line, strlen(line));
    explicit_bzero(line, strlen(line));
    free(line);
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

static void smtp_upstream_start(session_t *s)
{
    smtp_state_t *st = st_of(s);
    st->ustate = U_GREETING;
    st->ucaps = 0;
    st->umech = 0;
    free_pending(st);
}

static bool none_mode(const session_t *s)
{
    return s->cred.mechanism && strcmp(s->cred.mechanism, "none") == 0;
}

static void login_done(session_t *s)
{
    free_pending(st_of(s));
    static const char ok[] = "235 2.7.0 Authentication successful\r\n";
    session_upstream_ready(s, ok, sizeof ok - 1);
}

static void send_mail(session_t *s)
{
    smtp_state_t *st = st_of(s);
    st->ustate = U_MAIL;
    send_line(s, xasprintf("%s\r\n", s->env.mail_line));
}

static void send_xclient(session_t *s)
{
    smtp_state_t *st = st_of(s);
    char buf[1600];
    size_t n = (size_t)snprintf(buf, sizeof buf, "XCLIENT");
    if (st->ucaps & UX_ADDR)
        n += (size_t)snprintf(buf + n, sizeof buf - n, " ADDR=%s%s", strchr(s->client_ip, ':') ? "IPV6:" : "",
                              s->client_ip);
    if (st->ucaps & UX_NAME)
        n += (size_t)snprintf(buf + n, sizeof buf - n, " NAME=[UNAVAILABLE]");
    if ((st->ucaps & UX_LOGIN) && session_upstream_user(s) && !none_mode(s)) {
        /* the upstream identity: the policy's `user` when it gave one */
        char *x = xtext(session_upstream_user(s));
        n += (size_t)snprintf(buf + n, sizeof buf - n, " LOGIN=%.400s", x);
        free(x);
    }
    if ((st->ucaps & UX_HELO) && s->env.helo) {
        char *x = xtext(s->env.helo);
        n += (size_t)snprintf(buf + n, sizeof buf - n, " HELO=%.300s", x);
        free(x);
    }
    if (st->ucaps & UX_PROTO)
        n += (size_t)snprintf(buf + n, sizeof buf - n, " PROTO=%s", st->esmtp ? "ESMTP" : "SMTP");
    if (n > sizeof buf - 3)
        n = sizeof buf - 3;
    memcpy(buf + n, "\r\n", 3);
    st->ustate = U_XCLIENT;
    session_upstream_write(s, buf, n + 2);
}

static void send_auth(session_t *s)
{
    smtp_state_t *st = st_of(s);
    const char *user = session_upstream_user(s), *pass = session_upstream_password(s);
    if (!user || !pass) {
        session_upstream_failed(s, "no password to log in to the upstream with (the policy must give one "
                                   "for CRAM-MD5 clients)");
        return;
    }
    const upstream_t *u = session_upstream(s);
    int mech = sasl_upstream_mech(&s->cred, u->auth);
    if (!mech) /* PLAIN when offered, else LOGIN (Exchange) */
        mech = (st->ucaps & UC_AUTH_PLAIN) ? SASL_PLAIN : (st->ucaps & UC_AUTH_LOGIN) ? SASL_LOGIN : SASL_PLAIN;
    st->umech = mech;
    st->ustate = U_AUTH;
    if (mech == SASL_LOGIN) {
        char *bu = sasl_b64_encode(user, strlen(user)), *bp = sasl_b64_encode(pass, strlen(pass));
        st->pending[st->npending++] = xasprintf("%s\r\n", bp);
        send_line(s, xasprintf("AUTH LOGIN %s\r\n", bu));
        str_wipe_free(&bu);
        str_wipe_free(&bp);
        return;
    }
    char *b64 = sasl_client_response(mech, user, pass);
    send_line(s, xasprintf("AUTH %s %s\r\n", sasl_mech_name(mech), b64));
    str_wipe_free(&b64);
}

static void after_ehlo(session_t *s)
{
    smtp_state_t *st = st_of(s);
    const upstream_t *u = session_upstream(s);
    if (session_upstream_wants_starttls(s)) {
        if (!(st->ucaps & UC_STARTTLS)) { /* never falls back to plaintext */
            session_upstream_failed(s, "upstream does not offer STARTTLS");
            return;
        }
        st->ustate = U_STARTTLS;
        session_upstream_write(s, "STARTTLS\r\n", 10);
        return;
    }
    bool want_xclient = u->xclient >= 0 ? u->xclient : s->listener->xclient;
    if (st->ustate == U_EHLO && want_xclient && (st->ucaps & UC_XCLIENT)) {
        send_xclient(s);
    } else if (none_mode(s)) {
        send_mail(s);
    } else if (st->ustate == U_XCLIENT_EHLO || !(st->ucaps & (UC_AUTH_PLAIN | UC_AUTH_LOGIN | UC_AUTH_XOAUTH2 |
                                                                UC_AUTH_OAUTHBEARER))) {
        /* XCLIENT LOGIN= told the upstream who it is, or the upstream
         * trusts us without AUTH */
        login_done(s);
    } else {
        send_auth(s);
    }
}

static void parse_ehlo_line(smtp_state_t *st, const char *kw, size_t len)
{
    char line[512];
    if (len >= sizeof line)
        len = sizeof line - 1;
    memcpy(line, kw, len);
    line[len] = '\0';
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

static void upstream_refused(session_t *s, const char *line, size_t len)
{
    session_log(s, LL_INFO, "upstream refused: \"%.*s\"", (int)(len > 200 ? 200 : len), line);
    if (len < 4) {
        session_printf(s, "535 5.7.8 Authentication failed\r\n");
    } else { /* every line of it: a 550 often explains itself over several */
        char *reply = upstream_reply_text(st_of(s), line, len);
        session_write(s, reply, strlen(reply));
        free(reply);
    }
    free_pending(st_of(s));
    st_of(s)->state = C_COMMAND;
    if (none_mode(s) && s->env.nrcpt > 0)
        free(s->env.rcpt_to[--s->env.nrcpt]);
    session_upstream_refused(s);
}

/* One whole reply: its code and last line (earlier lines were parsed). */
static void upstream_reply(session_t *s, int code, const char *line, size_t len)
{
    smtp_state_t *st = st_of(s);
    char why[200];
    switch (st->ustate) {
    case U_GREETING:
        if (code != 220) {
            snprintf(why, sizeof why, "upstream greeting: \"%.*s\"", (int)(len > 100 ? 100 : len), line);
            session_upstream_failed(s, why);
            return;
        }
        st->ustate = U_EHLO;
        send_line(s, xasprintf("EHLO %s\r\n", s->cfg->server_name));
        return;
    case U_EHLO:
        if (code == 500 || code == 502) { /* an old server: HELO, with no extensions (RFC 5321 4.1.4) */
            st->ustate = U_HELO;
            st->ucaps = 0;
            send_line(s, xasprintf("HELO %s\r\n", s->cfg->server_name));
            return;
        }
        /* fall through */
    case U_XCLIENT_EHLO:
        if (code != 250) {
            snprintf(why, sizeof why, "upstream refused EHLO: \"%.*s\"", (int)(len > 100 ? 100 : len), line);
            session_upstream_failed(s, why);
            return;
        }
        after_ehlo(s);
        return;
    case U_HELO:
        if (code != 250) {
            snprintf(why, sizeof why, "upstream refused EHLO and HELO: \"%.*s\"", (int)(len > 100 ? 100 : len), line);
            session_upstream_failed(s, why);
            return;
        }
        st->ustate = U_EHLO;
        after_ehlo(s);
        return;
    case U_STARTTLS:
        if (code != 220) {
            snprintf(why, sizeof why, "upstream refused STARTTLS: \"%.*s\"", (int)(len > 100 ? 100 : len), line);
            session_upstream_failed(s, why);
            return;
        }
        session_upstream_starttls(s);
        return;
    case U_XCLIENT:
        if (code != 220 && code != 250) {
            snprintf(why, sizeof why, "upstream refused XCLIENT: \"%.*s\"", (int)(len > 100 ? 100 : len), line);
            session_upstream_failed(s, why);
            return;
        }
        /* XCLIENT starts a new session: greet again, with the client's name */
        st->ustate = U_XCLIENT_EHLO;
        st->ucaps &= ~(unsigned)(UC_XCLIENT);
        send_line(s, xasprintf("%s %s\r\n", st->esmtp || !s->env.helo ? "EHLO" : "HELO",
                             s->env.helo ? s->env.helo : s->cfg->server_name));
        return;
    case U_AUTH:
        if (code == 334) {
            if (st->next_pending < st->npending) {
                const char *p = st->pending[st->next_pending++];
                session_upstream_write(s, p, strlen(p));
            } else if (st->umech == SASL_XOAUTH2 || st->umech == SASL_OAUTHBEARER) {
                const char *dummy = st->umech == SASL_OAUTHBEARER ? "AQ==\r\n" : "\r\n";
                session_upstream_write(s, dummy, strlen(dummy));
            } else {
                session_upstream_failed(s, "upstream sent an unexpected 334");
            }
        } else if (code == 235) {
            login_done(s);
        } else if (code >= 400) {
            upstream_refused(s, line, len);
        } else {
            session_upstream_failed(s, "upstream sent an unexpected reply to AUTH");
        }
        return;
    case U_MAIL:
        if (code >= 400) {
            upstream_refused(s, line, len);
            return;
        }
        if (code != 250) {
            session_upstream_failed(s, "upstream sent an unexpected reply to MAIL");
            return;
        }
        st->ustate = U_RCPT;
        send_line(s, xasprintf("%s\r\n", s->env.rcpt_line));
        return;
    case U_RCPT: {
        /* the upstream's answer to the client's RCPT, whatever it is; the
         * rest of the transaction goes straight through */
        char *reply = upstream_reply_text(st, line, len);
        session_upstream_ready(s, reply, strlen(reply));
        free(reply);
        return;
    }
    }
}

static void smtp_upstream_input(session_t *s)
{
    smtp_state_t *st = st_of(s);
    size_t ll, used;
    while (s->phase == PHASE_UPSTREAM && s->uin.len > 0 && buf_find_line(s->uin.data, s->uin.len, &ll, &used)) {
        char *line = xmalloc(ll + 1);
        memcpy(line, s->uin.data, ll);
        line[ll] = '\0';
        buf_consume(&s->uin, used);
        int code = ll >= 3 ? atoi(line) : 0;
        if (ll < 3 || code < 200 || code > 599 || (ll > 3 && line[3] != ' ' && line[3] != '-')) {
            free(line);
            session_upstream_failed(s, "upstream sent an invalid SMTP reply");
            return;
        }
        if (st->ustate == U_EHLO || st->ustate == U_XCLIENT_EHLO)
            parse_ehlo_line(st, line + 4 < line + ll ? line + 4 : line + ll, ll > 4 ? ll - 4 : 0);
        if (ll == 3 || line[3] == ' ') {
            upstream_reply(s, code, line, ll);
            st->ucont_len = 0;
        } else if (st->ucont_len + ll + 2 <= SMTP_UCONT_MAX) {
            if (!st->ucont)
                st->ucont = xmalloc(SMTP_UCONT_MAX);
            memcpy(st->ucont + st->ucont_len, line, ll);
            memcpy(st->ucont + st->ucont_len + ll, "\r\n", 2);
            st->ucont_len += ll + 2;
        }
        free(line);
    }
}

static void smtp_tls_started(session_t *s)
{
    /* RFC 3207 §4.2: forget everything, the client starts with EHLO */
    smtp_state_t *st = st_of(s);
    envelope_clear(&s->env);
    st->esmtp = false;
    st->state = C_COMMAND;
}

static void smtp_upstream_tls_ready(session_t *s)
{
    smtp_state_t *st = st_of(s);
    st->ustate = U_EHLO;
    st->ucaps = 0;
    send_line(s, xasprintf("EHLO %s\r\n", s->cfg->server_name));
}

const proto_t proto_smtp = {
    .name = "smtp",
    .default_ports = { 25, 465, 587 },
    .default_auth = AUTH_LOGIN | AUTH_PLAIN,
    .allowed_auth = AUTH_LOGIN | AUTH_PLAIN | AUTH_CRAM_MD5 | AUTH_XOAUTH2 | AUTH_OAUTHBEARER | AUTH_NONE | AUTH_EXTERNAL,
    .state_size = sizeof(smtp_state_t),
    .capabilities = smtp_capabilities,
    .start = smtp_start,
    .client_input = smtp_client_input,
    .auth_refused = smtp_auth_refused,
    .bye = smtp_bye,
    .cleanup = smtp_cleanup,
    .on_timer = smtp_on_timer,
    .upstream_start = smtp_upstream_start,
    .upstream_input = smtp_upstream_input,
    .tls_started = smtp_tls_started,
    .upstream_tls_ready = smtp_upstream_tls_ready,
};
