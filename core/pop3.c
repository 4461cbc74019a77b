/* pop3.c: POP3 (RFC 1939, 2449, 5034) as a proxy needs it. The client
 * side answers the AUTHORIZATION state (CAPA, USER/PASS, APOP, AUTH with
 * the shared SASL mechanisms, NOOP, RSET, QUIT, STLS) through the pre-auth
 * engine; the upstream side logs in with USER/PASS, APOP (when the client
 * used it) or AUTH, then passes the server's +OK to the client and relays. */
#include "buf.h"
#include "config.h"
#include "log.h"
#include "login.h"
#include "mem.h"
#include "pop3_parse.h"
#include "preauth.h"
#include "proto.h"
#include "sasl.h"
#include "session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { U_GREETING, U_STLS, U_USER, U_PASS, U_LOGIN, U_AUTH };

typedef struct pop3_state {
    char *user;                  /* from USER, waiting for PASS */
    char timestamp[160];         /* our APOP timestamp, when APOP is offered */

    int ustate;
    char *greeting;              /* the upstream's, kept for APOP across STLS */
} pop3_state_t;

static void pop3_cleanup(session_t *s)
{
    pop3_state_t *st = s->pstate;
    str_wipe_free(&st->user);
    free(st->greeting);
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

/* ---- replies ---- */

static const proto_reply_t pop3_replies[REPLY_COUNT] = {
    [REPLY_TOO_LONG] = { NULL, "Line too long" },
    [REPLY_TLS_GO] = { NULL, "Begin TLS negotiation" },
    [REPLY_TLS_ARGS] = { NULL, "STLS takes no arguments" },
    [REPLY_TLS_UNAVAILABLE] = { NULL, "STLS is not available on this port" },
    [REPLY_TLS_REQUIRED] = { NULL, "Use STLS first" }, /* starttls = "only" */
    [REPLY_UNAVAILABLE] = { "-ERR [SYS/TEMP]", NULL }, /* RFC 3206 §4 */
};

static void pop3_reply(session_t *s, reply_t what, const char *status, const char *text)
{
    session_printf(s, "%s %s\r\n", what == REPLY_CHALLENGE ? "+" : status, text);
}

static void pop3_greet(session_t *s)
{
    pop3_state_t *st = s->pstate;
    if (s->listener->auth & AUTH_APOP) {
        sasl_make_salt(st->timestamp, sizeof st->timestamp, s->cfg->server_name);
        session_printf(s, "+OK POP3 ready %s\r\n", st->timestamp);
    } else {
        session_printf(s, "+OK POP3 ready\r\n");
    }
}

static char *pop3_refusal(session_t *s, const refusal_t *r)
{
    (void)s;
    /* RFC 3206 response codes */
    const char *code = r->temporary ? "[SYS/TEMP] " : "[AUTH] ";
    const char *msg = preauth_refusal_text(r, "Authentication failed");
    if (msg[0] == '[')
        code = "";
    return xasprintf("-ERR %s%s\r\n", code, msg);
}

/* ---- client commands ---- */

/* A bare CR or a NUL inside USER or PASS: the upstream login writes
 * them on a line of their own, where a CR could end the line early and
 * make the rest a command. Refused, as the SASL decoders refuse them. */
static bool cred_has_control(const char *arg, size_t al)
{
    return memchr(arg, '\r', al) || memchr(arg, '\0', al);
}

static void cmd_user(session_t *s, const char *arg, size_t al)
{
    pop3_state_t *st = s->pstate;
    if (al == 0 || al > POP3_MAX_CRED) {
        preauth_reply(s, REPLY_BAD, "Syntax: USER name");
        return;
    }
    if (cred_has_control(arg, al)) {
        preauth_reply(s, REPLY_BAD, "CR or NUL in the name");
        return;
    }
    str_wipe_free(&st->user);
    st->user = xstrndup(arg, al);
    session_printf(s, "+OK\r\n");
}

static void cmd_pass(session_t *s, const char *arg, size_t al)
{
    pop3_state_t *st = s->pstate;
    if (!st->user) {
        session_printf(s, "-ERR USER first\r\n");
        return;
    }
    if (al > POP3_MAX_CRED) {
        preauth_reply(s, REPLY_BAD, "Password too long");
        return;
    }
    if (cred_has_control(arg, al)) {
        str_wipe_free(&st->user);
        preauth_reply(s, REPLY_BAD, "CR or NUL in the password");
        return;
    }
    credentials_clear(&s->cred);
    s->cred.user = st->user;
    st->user = NULL;
    s->cred.password = xstrndup(arg, al); /* RFC 1939: the rest of the line, spaces included */
    s->cred.mechanism = "plain";          /* nginx's Auth-Method for USER/PASS */
    preauth_login(s);
}

static void cmd_apop(session_t *s, const char *arg, size_t al)
{
    pop3_state_t *st = s->pstate;
    size_t nl;
    const char *digest;
    if (pop3_parse_apop(arg, al, &nl, &digest) < 0) {
        preauth_reply(s, REPLY_BAD, "Syntax: APOP name digest");
        return;
    }
    credentials_clear(&s->cred);
    s->cred.user = xstrndup(arg, nl);
    s->cred.digest = xstrndup(digest, 32);
    for (char *d = s->cred.digest; *d; d++)
        *d = (char)(*d >= 'A' && *d <= 'F' ? *d + 32 : *d);
    s->cred.salt = xstrdup(st->timestamp);
    s->cred.mechanism = "apop";
    preauth_login(s);
}

static void cmd_auth(session_t *s, const char *arg, size_t al)
{
    if (al == 0) { /* the list of mechanisms, as many clients ask */
        char mechs[128];
        sasl_mech_list(s->listener->auth, mechs, sizeof mechs);
        session_printf(s, "+OK\r\n");
        for (char *save = NULL, *m = strtok_r(mechs, " ", &save); m; m = strtok_r(NULL, " ", &save))
            session_printf(s, "%s\r\n", m);
        session_printf(s, ".\r\n");
        return;
    }
    size_t ml, irl;
    const char *ir;
    int rc = pop3_parse_auth(arg, al, &ml, &ir, &irl);
    if (!sasl_mech_from_name(arg, ml, s->listener->auth)) {
        preauth_reply(s, REPLY_MECH_UNKNOWN, NULL);
        return;
    }
    if (rc < 0) {
        preauth_reply(s, REPLY_BAD, "Syntax: AUTH mechanism [initial-response]");
        return;
    }
    preauth_authenticate(s, arg, ml, ir, irl);
}

static void pop3_execute(session_t *s, const char *buf, const cmd_t *cmd)
{
    pop3_state_t *st = s->pstate;
    unsigned auth = s->listener->auth;
    const char *arg = buf + cmd->rest_off;
    size_t al = cmd->rest_len;
#define IS(w) cmd_is(buf, cmd, w)
    if ((IS("USER") || IS("PASS") || IS("APOP") || IS("AUTH")) && preauth_tls_required(s)) {
        return;
    } else if (IS("STLS")) {
        preauth_starttls(s, al > 0);
    } else if (IS("CAPA") && al == 0) {
        session_printf(s, "+OK Capability list follows\r\n%s.\r\n", session_capabilities(s));
    } else if (IS("NOOP") && al == 0) {
        session_printf(s, "+OK\r\n");
    } else if (IS("RSET") && al == 0) {
        str_wipe_free(&st->user);
        session_printf(s, "+OK\r\n");
    } else if (IS("QUIT") && al == 0) {
        session_printf(s, "+OK %s POP3 proxy signing off\r\n", s->cfg->server_name);
        s->close_reason = "client quit";
        session_quit(s);
    } else if (IS("USER") && (auth & AUTH_USER)) {
        cmd_user(s, arg, al);
    } else if (IS("PASS") && (auth & AUTH_USER)) {
        cmd_pass(s, arg, al);
    } else if (IS("APOP") && (auth & AUTH_APOP)) {
        cmd_apop(s, arg, al);
    } else if (IS("AUTH")) {
        cmd_auth(s, arg, al);
    } else {
        preauth_reply(s, REPLY_UNKNOWN, NULL);
    }
#undef IS
}

static void pop3_tls_started(session_t *s)
{
    pop3_state_t *st = s->pstate;
    str_wipe_free(&st->user);
}

/* ---- upstream login ---- */

static void pop3_login_start(login_t *l)
{
    pop3_state_t *st = l->p.pstate;
    st->ustate = U_GREETING;
    l->mech = 0;
    login_forget_pending(l);
}

static void start_login(login_t *l, const char *greeting, size_t len)
{
    pop3_state_t *st = l->p.pstate;
    const char *user, *pass;
    int mech;
    if (!login_credentials(l, &user, &pass, &mech))
        return;
    const upstream_t *u = l->p.upstream;
    const char *cm = l->p.cred->mechanism;
    int apop = u->auth ? strcasecmp(u->auth, "apop") == 0 : (cm && strcmp(cm, "apop") == 0);
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
        login_send_line(l, xasprintf("APOP %s %s\r\n", user, digest));
        return;
    }
    if (apop)
        mech = 0;
    if (!mech && (strchr(user, ' ') || strchr(user, '\t')))
        mech = SASL_PLAIN; /* USER cannot carry a space */
    if (mech == SASL_LOGIN) {
        char *bu = sasl_b64_encode(user, strlen(user)), *bp = sasl_b64_encode(pass, strlen(pass));
        login_queue(l, xasprintf("%s\r\n", bu));
        login_queue(l, xasprintf("%s\r\n", bp));
        str_wipe_free(&bu);
        str_wipe_free(&bp);
        st->ustate = U_AUTH;
        l->mech = mech;
        login_send_line(l, xasprintf("AUTH LOGIN\r\n"));
    } else if (mech) {
        char *b64 = sasl_client_response(mech, user, pass);
        st->ustate = U_AUTH;
        l->mech = mech;
        login_send_line(l, xasprintf("AUTH %s %s\r\n", sasl_mech_name(mech), b64));
        str_wipe_free(&b64);
    } else {
        login_queue(l, xasprintf("PASS %s\r\n", pass));
        st->ustate = U_USER;
        login_send_line(l, xasprintf("USER %s\r\n", user));
    }
}

static void refused(login_t *l, const char *line, size_t len)
{
    const char *text = len > 4 ? line + 5 : "";
    size_t tl = len > 4 ? len - 5 : 0;
    if (tl == 0)
        text = "[AUTH] Authentication failed", tl = strlen(text);
    char *reply = xasprintf("-ERR %.*s\r\n", (int)tl, text);
    login_refused(l, reply, strlen(reply), text);
    free(reply);
}

static void pop3_login_line(login_t *l, const char *line, size_t len)
{
    pop3_state_t *st = l->p.pstate;
    int ok = len >= 3 && strncmp(line, "+OK", 3) == 0 && (len == 3 || line[3] == ' ');
    int err = len >= 4 && strncmp(line, "-ERR", 4) == 0;
    switch (st->ustate) {
    case U_GREETING:
        if (ok && login_wants_starttls(l)) {
            free(st->greeting);
            st->greeting = xstrndup(line, len);
            st->ustate = U_STLS;
            login_send(l, "STLS\r\n", 6);
        } else if (ok) {
            start_login(l, line, len);
        } else {
            login_fail_line(l, "upstream sent an unexpected greeting", line, len);
        }
        return;
    case U_STLS:
        if (ok)
            login_starttls(l);
        else /* never falls back to plaintext */
            login_fail(l, "upstream refused STLS");
        return;
    case U_USER:
        if (ok && l->next_pending < l->npending) {
            st->ustate = U_PASS;
            login_continue(l);
        } else if (err) {
            refused(l, line, len);
        } else {
            login_fail(l, "upstream sent an unexpected reply to USER");
        }
        return;
    case U_AUTH:
        if (len >= 1 && line[0] == '+' && !ok) {
            login_continue(l);
            return;
        }
        /* +OK or -ERR end it, as below */
        __attribute__((fallthrough));
    case U_PASS:
    case U_LOGIN:
        if (ok) {
            char *reply = xasprintf("%.*s\r\n", (int)len, line);
            login_ready(l, reply, strlen(reply));
            free(reply);
        } else if (err) {
            refused(l, line, len);
        } else {
            login_fail(l, "upstream sent an unexpected reply during login");
        }
        return;
    }
}

static void pop3_login_tls_ready(login_t *l)
{
    pop3_state_t *st = l->p.pstate;
    const char *g = st->greeting ? st->greeting : "+OK";
    start_login(l, g, strlen(g));
}

const proto_t proto_pop3 = {
    .name = "pop3",
    .alpn = "pop3",
    .default_ports = { 110, 995 },
    .default_auth = AUTH_USER | AUTH_PLAIN,
    .allowed_auth = AUTH_USER | AUTH_APOP | AUTH_PLAIN | AUTH_LOGIN | AUTH_CRAM_MD5 | AUTH_XOAUTH2 | AUTH_OAUTHBEARER |
                    AUTH_EXTERNAL,
    .capabilities_key = "pop3_capabilities",
    .state_size = sizeof(pop3_state_t),
    .no_last_words = true,
    .capabilities = pop3_capabilities,
    .yes = "+OK",
    .no = "-ERR",
    .replies = pop3_replies,
    .reply = pop3_reply,
    .greet = pop3_greet,
    .parse = pop3_parse_command,
    .parse_response = cmd_line_response,
    .execute = pop3_execute,
    .refusal = pop3_refusal,
    .tls_started = pop3_tls_started,
    .cleanup = pop3_cleanup,
    .login_start = pop3_login_start,
    .login_line = pop3_login_line,
    .login_tls_ready = pop3_login_tls_ready,
};
