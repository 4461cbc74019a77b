/* pop3.c: POP3 (RFC 1939, 2449, 5034) as a proxy needs it. The client
 * side answers the AUTHORIZATION state (CAPA, USER/PASS, APOP, AUTH with
 * the shared SASL mechanisms, NOOP, RSET, QUIT); the upstream side logs
 * in with USER/PASS, APOP (when the client used it) or AUTH, then passes
 * the server's +OK to the client and relays. */
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

#define POP3_MAX_CRED 1024

enum { C_COMMAND, C_SASL, C_OAUTH_ERROR };
enum { U_GREETING, U_STLS, U_USER, U_PASS, U_LOGIN, U_AUTH };

typedef struct pop3_state {
    int state;
    sasl_t sasl;
    char *user;                  /* from USER, waiting for PASS */
    char timestamp[160];         /* our APOP timestamp, when APOP is offered */
    char *oauth_failure;

    int ustate;
    int umech;
    char *pending[2];            /* sent one per "+OK" or "+ " from the upstream */
    char *greeting;              /* the upstream's, kept for APOP across STLS */
    int npending, next_pending;
} pop3_state_t;

static pop3_state_t *st_of(session_t *s)
{
    return s->pstate;
}

static void free_pending(pop3_state_t *st)
{
    for (int i = 0; i < st->npending; i++)
        str_wipe_free(&st->pending[i]);
    st->npending = st->next_pending = 0;
}

static void pop3_cleanup(session_t *s)
{
    pop3_state_t *st = st_of(s);
    str_wipe_free(&st->user);
    free(st->oauth_failure);
    free(st->greeting);
    free_pending(st);
}

/* CAPA lines, "\r\n"-separated: the configured ones, then USER, SASL and
 * PIPELINING as the listener offers them. */
static char *pop3_capabilities(const char *configured, unsigned auth, int starttls)
{
    const char *base = configured ? configured : "TOP\nUIDL";
    char mechs[128];
    sasl_mech_list(auth, mechs, sizeof mechs);
    size_t n = strlen(base) * 2 + 256;
    char *caps = xmalloc(n), *p = caps;
    caps[0] = '\0';
    char *copy = xstrdup(base), *save = NULL;
    /* one CAPA line per configured entry ("EXPIRE 30" stays one line) */
    for (char *w = strtok_r(copy, "\n", &save); w; w = strtok_r(NULL, "\n", &save))
        p += sprintf(p, "%s\r\n", w);
    free(copy);
    if (starttls) /* RFC 2595 §4 */
        p += sprintf(p, "STLS\r\n");
    if ((auth & AUTH_USER) && starttls != 2)
        p += sprintf(p, "USER\r\n");
    if (mechs[0] && starttls != 2)
        p += sprintf(p, "SASL %s\r\n", mechs);
    /* the refusals carry [AUTH] and [SYS/TEMP] (RFC 2449 §6.4, RFC 3206 §6) */
    sprintf(p, "RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
    return caps;
}

static void pop3_start(session_t *s)
{
    pop3_state_t *st = st_of(s);
    if (s->listener->auth & AUTH_APOP) {
        sasl_make_salt(st->timestamp, sizeof st->timestamp, s->cfg->server_name);
        session_printf(s, "+OK POP3 ready %s\r\n", st->timestamp);
    } else {
        session_printf(s, "+OK POP3 ready\r\n");
    }
}

static void pop3_bye(session_t *s, const char *why)
{
    session_printf(s, "-ERR %s\r\n", why);
}

static void pop3_auth_refused(session_t *s, const refusal_t *r)
{
    pop3_state_t *st = st_of(s);
    /* RFC 3206 response codes */
    const char *code = r->temporary ? "[SYS/TEMP] " : "[AUTH] ";
    const char *msg = r->message;
    if (!msg)
        msg = r->temporary ? "Temporary authentication failure, try again later" : "Authentication failed";
    if (msg[0] == '[')
        code = "";
    if (s->cred.mechanism && strstr("xoauth2 oauthbearer", s->cred.mechanism)) {
        char challenge[256];
        sasl_oauth_error(challenge, sizeof challenge, r->temporary);
        free(st->oauth_failure);
        st->oauth_failure = xasprintf("-ERR %s%s\r\n", code, msg);
        session_printf(s, "+ %s\r\n", challenge);
        st->state = C_OAUTH_ERROR;
        return;
    }
    session_printf(s, "-ERR %s%s\r\n", code, msg);
    st->state = C_COMMAND;
}

static void sasl_result(session_t *s, int rc, const char *challenge)
{
    pop3_state_t *st = st_of(s);
    if (rc == PT_INVALID) /* one case per reason */
        rc = PT_INVALID * 16 + (int)st->sasl.fault;
    st->state = C_COMMAND;
    switch (rc) {
    case PT_AGAIN:
        st->state = C_SASL;
        session_printf(s, "+ %s\r\n", challenge);
        return;
    case PT_OK:
        session_authenticate(s);
        return;
    case PT_DECLINED:
        session_printf(s, "-ERR Authentication cancelled\r\n");
        return;
    case PT_INVALID * 16 + SASL_FAULT_BASE64:
        session_printf(s, "-ERR Invalid base64 data\r\n");
        session_error(s);
        return;
    case PT_INVALID * 16 + SASL_FAULT_IR:
        session_printf(s, "-ERR This mechanism takes no initial response\r\n");
        session_error(s);
        return;
    default:
        session_printf(s, "-ERR Invalid SASL message\r\n");
        session_error(s);
        return;
    }
}

static int is_word(const char *a, size_t len, const char *w)
{
    return strlen(w) == len && strncasecmp(a, w, len) == 0;
}

static void unknown(session_t *s, const char *text)
{
    session_printf(s, "-ERR %s\r\n", text);
    session_error(s);
}

/* One command line (no CRLF, NUL-terminated copy). */
static void command(session_t *s, char *line, size_t len)
{
    pop3_state_t *st = st_of(s);
    unsigned auth = s->listener->auth;
    char *sp = memchr(line, ' ', len);
    size_t vl = sp ? (size_t)(sp - line) : len;
    char *arg = sp ? sp + 1 : line + len; /* the rest of the line */
    size_t al = len - (size_t)(arg - line);

    if ((is_word(line, vl, "USER") || is_word(line, vl, "PASS") || is_word(line, vl, "APOP") ||
         is_word(line, vl, "AUTH")) && session_tls_required(s)) {
        session_printf(s, "-ERR Use STLS first\r\n"); /* starttls = "only" */
    } else if (is_word(line, vl, "STLS") && al == 0 && s->listener->starttls && !s->ctls) {
        session_printf(s, "+OK Begin TLS negotiation\r\n");
        session_starttls(s);
    } else if (is_word(line, vl, "CAPA") && al == 0) {
        session_printf(s, "+OK Capability list follows\r\n%s.\r\n", session_capabilities(s));
    } else if (is_word(line, vl, "NOOP") && al == 0) {
        session_printf(s, "+OK\r\n");
    } else if (is_word(line, vl, "RSET") && al == 0) {
        str_wipe_free(&st->user);
        session_printf(s, "+OK\r\n");
    } else if (is_word(line, vl, "QUIT") && al == 0) {
        session_printf(s, "+OK %s POP3 proxy signing off\r\n", s->cfg->server_name);
        s->close_reason = "client quit";
        session_quit(s);
    } else if (is_word(line, vl, "USER") && (auth & AUTH_USER)) {
        if (al == 0 || al > POP3_MAX_CRED) {
            unknown(s, "Syntax: USER name");
            return;
        }
        str_wipe_free(&st->user);
        st->user = xstrndup(arg, al);
        session_printf(s, "+OK\r\n");
    } else if (is_word(line, vl, "PASS") && (auth & AUTH_USER)) {
        if (!st->user) {
            session_printf(s, "-ERR USER first\r\n");
            return;
        }
        if (al > POP3_MAX_CRED) {
            unknown(s, "Password too long");
            return;
        }
        session_reset_credentials(s);
        s->cred.user = st->user;
        st->user = NULL;
        s->cred.password = xstrndup(arg, al); /* RFC 1939: the rest of the line, spaces included */
        s->cred.mechanism = "plain";         /* nginx's Auth-Method for USER/PASS */
        session_authenticate(s);
    } else if (is_word(line, vl, "APOP") && (auth & AUTH_APOP)) {
        char *dsp = al ? memrchr(arg, ' ', al) : NULL;
        size_t dl = dsp ? al - (size_t)(dsp + 1 - arg) : 0;
        if (!dsp || dsp == arg || dl != 32 || strspn(dsp + 1, "0123456789abcdefABCDEF") != 32) {
            unknown(s, "Syntax: APOP name digest");
            return;
        }
        session_reset_credentials(s);
        s->cred.user = xstrndup(arg, (size_t)(dsp - arg));
        s->cred.digest = xstrndup(dsp + 1, 32);
        for (char *d = s->cred.digest; *d; d++)
            *d = (char)(*d >= 'A' && *d <= 'F' ? *d + 32 : *d);
        s->cred.salt = xstrdup(st->timestamp);
        s->cred.mechanism = "apop";
        session_authenticate(s);
    } else if (is_word(line, vl, "AUTH")) {
        char mechs[128];
        sasl_mech_list(auth, mechs, sizeof mechs);
        if (al == 0) { /* the list of mechanisms, as many clients ask */
            session_printf(s, "+OK\r\n");
            for (char *save = NULL, *m = strtok_r(mechs, " ", &save); m; m = strtok_r(NULL, " ", &save))
                session_printf(s, "%s\r\n", m);
            session_printf(s, ".\r\n");
            return;
        }
        char *msp = memchr(arg, ' ', al);
        size_t ml = msp ? (size_t)(msp - arg) : al;
        int mech = sasl_mech_from_name(arg, ml, auth);
        if (!mech) {
            session_printf(s, "-ERR Unsupported authentication mechanism\r\n");
            return;
        }
        const char *ir = msp ? msp + 1 : NULL;
        size_t irl = msp ? al - ml - 1 : 0;
        if (ir && memchr(ir, ' ', irl)) {
            unknown(s, "Syntax: AUTH mechanism [initial-response]");
            return;
        }
        char challenge[512];
        int rc = sasl_begin(&st->sasl, mech, ir, irl, s->cfg->server_name, &s->cred, challenge, sizeof challenge);
        sasl_result(s, rc, challenge);
    } else if (is_word(line, vl, "STLS")) {
        session_printf(s, s->ctls                   ? "-ERR TLS is already active\r\n"
                          : s->listener->starttls ? "-ERR STLS takes no arguments\r\n"
                                                  : "-ERR STLS is not available on this port\r\n");
    } else {
        unknown(s, "Unknown command or not allowed before login");
    }
}

static void pop3_client_input(session_t *s)
{
    pop3_state_t *st = st_of(s);
    size_t ll, used;
    while (s->phase == PHASE_PREAUTH && !s->quit && !session_output_blocked(s) && s->cin.len > 0) {
        if (!buf_find_line(s->cin.data, s->cin.len, &ll, &used)) {
            if (buf_room(&s->cin) == 0) {
                session_log(s, LL_INFO, "client sent too long command");
                s->close_reason = "too long command";
                session_printf(s, "-ERR Line too long\r\n");
                session_quit(s);
            }
            return;
        }
        /* act on a copy: the command may start a login whose outcome
         * comes back (and parses further input) before we return */
        char *line = xmalloc(ll + 1);
        memcpy(line, s->cin.data, ll);
        line[ll] = '\0';
        buf_consume(&s->cin, used);
        if (memchr(line, '\0', ll)) {
            unknown(s, "NUL in command");
        } else if (st->state == C_SASL) {
            char challenge[512];
            int rc = sasl_step(&st->sasl, line, ll, &s->cred, challenge, sizeof challenge);
            sasl_result(s, rc, challenge);
        } else if (st->state == C_OAUTH_ERROR) {
            st->state = C_COMMAND;
            if (ll == 1 && line[0] == '*')
                session_printf(s, "-ERR Authentication cancelled\r\n");
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

static void pop3_upstream_start(session_t *s)
{
    pop3_state_t *st = st_of(s);
    st->ustate = U_GREETING;
    st->umech = 0;
    free_pending(st);
}

static void start_login(session_t *s, const char *greeting, size_t len)
{
    pop3_state_t *st = st_of(s);
    const char *user = session_upstream_user(s), *pass = session_upstream_password(s);
    if (!user || !pass) {
        session_upstream_failed(s, "no password to log in to the upstream with (the policy must give one "
                                   "for CRAM-MD5 and APOP clients)");
        return;
    }
    const upstream_t *u = session_upstream(s);
    int apop = u->auth ? strcasecmp(u->auth, "apop") == 0
                       : (s->cred.mechanism && strcmp(s->cred.mechanism, "apop") == 0);
    const char *lt = memchr(greeting, '<', len);
    const char *gt = lt ? memchr(lt, '>', len - (size_t)(lt - greeting)) : NULL;
    if (apop && lt && gt) {
        /* the client used APOP: so do we, with the policy's cleartext password */
        size_t tl = (size_t)(gt - lt) + 1, pl = strlen(pass);
        char *buf = xmalloc(tl + pl), digest[33];
        memcpy(buf, lt, tl);
        memcpy(buf + tl, pass, pl);
        sasl_md5_hex(buf, tl + pl, digest);
        explicit_bzero(buf, tl + pl);
        free(buf);
        st->ustate = U_LOGIN;
        send_line(s, xasprintf("APOP %s %s\r\n", user, digest));
        return;
    }
    int mech = apop ? 0 : sasl_upstream_mech(&s->cred, u->auth);
    if (!mech && (strchr(user, ' ') || strchr(user, '\t')))
        mech = SASL_PLAIN; /* USER cannot carry a space */
    if (mech == SASL_LOGIN) {
        char *bu = sasl_b64_encode(user, strlen(user)), *bp = sasl_b64_encode(pass, strlen(pass));
        st->pending[st->npending++] = xasprintf("%s\r\n", bu);
        st->pending[st->npending++] = xasprintf("%s\r\n", bp);
        str_wipe_free(&bu);
        str_wipe_free(&bp);
        st->ustate = U_AUTH;
        st->umech = mech;
        send_line(s, xasprintf("AUTH LOGIN\r\n"));
    } else if (mech) {
        char *b64 = sasl_client_response(mech, user, pass);
        st->ustate = U_AUTH;
        st->umech = mech;
        send_line(s, xasprintf("AUTH %s %s\r\n", sasl_mech_name(mech), b64));
        str_wipe_free(&b64);
    } else {
        st->pending[st->npending++] = xasprintf("PASS %s\r\n", pass);
        st->ustate = U_USER;
        send_line(s, xasprintf("USER %s\r\n", user));
    }
}

static void refused(session_t *s, const char *line, size_t len)
{
    const char *text = len > 4 ? line + 5 : "";
    size_t tl = len > 4 ? len - 5 : 0;
    if (tl == 0)
        text = "[AUTH] Authentication failed", tl = strlen(text);
    session_log(s, LL_INFO, "upstream refused login: \"%.*s\"", (int)(tl > 200 ? 200 : tl), text);
    session_printf(s, "-ERR %.*s\r\n", (int)tl, text);
    free_pending(st_of(s));
    st_of(s)->state = C_COMMAND;
    session_upstream_refused(s);
}

static void upstream_line(session_t *s, const char *line, size_t len)
{
    pop3_state_t *st = st_of(s);
    int ok = len >= 3 && strncmp(line, "+OK", 3) == 0 && (len == 3 || line[3] == ' ');
    int err = len >= 4 && strncmp(line, "-ERR", 4) == 0;
    switch (st->ustate) {
    case U_GREETING:
        if (ok && session_upstream_wants_starttls(s)) {
            free(st->greeting);
            st->greeting = xstrndup(line, len);
            st->ustate = U_STLS;
            session_upstream_write(s, "STLS\r\n", 6);
        } else if (ok) {
            start_login(s, line, len);
        } else {
            char why[200];
            snprintf(why, sizeof why, "upstream sent an unexpected greeting: \"%.*s\"", (int)(len > 100 ? 100 : len),
                     line);
            session_upstream_failed(s, why);
        }
        return;
    case U_STLS:
        if (ok)
            session_upstream_starttls(s);
        else /* never falls back to plaintext */
            session_upstream_failed(s, "upstream refused STLS");
        return;
    case U_USER:
        if (ok && st->next_pending < st->npending) {
            st->ustate = U_PASS;
            const char *p = st->pending[st->next_pending++];
            session_upstream_write(s, p, strlen(p));
        } else if (err) {
            refused(s, line, len);
        } else {
            session_upstream_failed(s, "upstream sent an unexpected reply to USER");
        }
        return;
    case U_AUTH:
        if (len >= 1 && line[0] == '+' && !ok) {
            if (st->next_pending < st->npending) {
                const char *p = st->pending[st->next_pending++];
                session_upstream_write(s, p, strlen(p));
            } else if (st->umech == SASL_XOAUTH2 || st->umech == SASL_OAUTHBEARER) {
                const char *dummy = st->umech == SASL_OAUTHBEARER ? "AQ==\r\n" : "\r\n";
                session_upstream_write(s, dummy, strlen(dummy));
            } else {
                session_upstream_failed(s, "upstream sent an unexpected continuation");
            }
            return;
        }
        /* +OK or -ERR end it, as below */
        __attribute__((fallthrough));
    case U_PASS:
    case U_LOGIN:
        if (ok) {
            free_pending(st);
            char *reply = xasprintf("%.*s\r\n", (int)len, line);
            session_upstream_ready(s, reply, strlen(reply));
            free(reply);
        } else if (err) {
            refused(s, line, len);
        } else {
            session_upstream_failed(s, "upstream sent an unexpected reply during login");
        }
        return;
    }
}

static void pop3_upstream_input(session_t *s)
{
    size_t ll, used;
    while (s->phase == PHASE_UPSTREAM && s->uin.len > 0 && buf_find_line(s->uin.data, s->uin.len, &ll, &used)) {
        char *line = xmalloc(ll + 1);
        memcpy(line, s->uin.data, ll);
        line[ll] = '\0';
        buf_consume(&s->uin, used);
        upstream_line(s, line, ll);
        free(line);
    }
}

static void pop3_tls_started(session_t *s)
{
    pop3_state_t *st = st_of(s);
    st->state = C_COMMAND;
    str_wipe_free(&st->user);
}

static void pop3_upstream_tls_ready(session_t *s)
{
    pop3_state_t *st = st_of(s);
    const char *g = st->greeting ? st->greeting : "+OK";
    start_login(s, g, strlen(g));
}

const proto_t proto_pop3 = {
    .name = "pop3",
    .default_ports = { 110, 995 },
    .default_auth = AUTH_USER | AUTH_PLAIN,
    .allowed_auth = AUTH_USER | AUTH_APOP | AUTH_PLAIN | AUTH_LOGIN | AUTH_CRAM_MD5 | AUTH_XOAUTH2 | AUTH_OAUTHBEARER | AUTH_EXTERNAL,
    .state_size = sizeof(pop3_state_t),
    .no_last_words = true,
    .capabilities = pop3_capabilities,
    .start = pop3_start,
    .client_input = pop3_client_input,
    .auth_refused = pop3_auth_refused,
    .bye = pop3_bye,
    .cleanup = pop3_cleanup,
    .upstream_start = pop3_upstream_start,
    .upstream_input = pop3_upstream_input,
    .tls_started = pop3_tls_started,
    .upstream_tls_ready = pop3_upstream_tls_ready,
};
