/* preauth.c: the pre-auth engine (see preauth.h). One input loop for
 * every protocol: it parses whole commands with the protocol's parser,
 * answers what is wrong with them (too long, invalid, a literal to go
 * ahead with), runs the SASL exchange, STARTTLS and the refusals, and
 * hands each valid command to the protocol on a copy. The words of every
 * reply come from the protocol's table (proto.h). */
#include "preauth.h"

#include "log.h"
#include "mem.h"
#include "session.h"
#include "status.h"
#include "tls.h"

#include <stdlib.h>
#include <string.h>

/* The engine's words; a protocol's table overrides them (proto.h). */
static const struct {
    const char *text;
    bool yes;    /* said with the protocol's success word */
    bool error;  /* counts towards max_errors */
} replies[REPLY_COUNT] = {
    [REPLY_OK] = { "Completed", true, false },
    [REPLY_BAD] = { "Syntax error", false, true },
    [REPLY_NO] = { "Not allowed", false, false },
    [REPLY_UNKNOWN] = { "Unknown command or not allowed before login", false, true },
    [REPLY_INVALID] = { "Invalid command", false, true },
    [REPLY_TOO_LONG] = { "Command line too long", false, false },
    [REPLY_LITERAL] = { "Ready for literal data", true, false },
    [REPLY_CHALLENGE] = { "", true, false },
    [REPLY_SASL_CANCELLED] = { "Authentication cancelled", false, false },
    [REPLY_SASL_BASE64] = { "Invalid base64 data", false, true },
    [REPLY_SASL_IR] = { "This mechanism takes no initial response", false, true },
    [REPLY_SASL_MESSAGE] = { "Invalid SASL message", false, true },
    [REPLY_MECH_UNKNOWN] = { "Unsupported authentication mechanism", false, false },
    [REPLY_TLS_GO] = { "Begin TLS negotiation now", true, false },
    [REPLY_TLS_ACTIVE] = { "TLS is already active", false, false },
    [REPLY_TLS_ARGS] = { "STARTTLS takes no arguments", false, true },
    [REPLY_TLS_UNAVAILABLE] = { "STARTTLS is not available on this port", false, false },
    [REPLY_TLS_REQUIRED] = { "Use STARTTLS first", false, false },
    [REPLY_BYE] = { "Logging out", false, false },
    [REPLY_UNAVAILABLE] = { "Service temporarily unavailable", false, false },
};

static void say(session_t *s, reply_t what, const char *text)
{
    const proto_t *p = s->proto;
    const proto_reply_t *r = &p->replies[what];
    const char *status = r->status ? r->status : replies[what].yes ? p->yes : p->no;
    p->reply(s, what, status, text ? text : r->text ? r->text : replies[what].text);
}

void preauth_reply(session_t *s, reply_t what, const char *text)
{
    say(s, what, text);
    if (replies[what].error)
        preauth_error(s);
}

void preauth_error(session_t *s)
{
    if (++s->errors >= s->cfg->max_errors) {
        session_log(s, LL_INFO, "client sent too many invalid commands");
        s->close_reason = "too many invalid commands";
        if (!s->proto->no_last_words)
            say(s, REPLY_BYE, "Too many invalid commands");
        session_quit(s);
    }
}

const char *preauth_tag(const session_t *s)
{
    return s->auth.tag;
}

void preauth_reset(session_t *s)
{
    s->auth.state = PREAUTH_COMMAND;
    s->auth.lit_acked = 0;
    if (s->proto->tls_started)
        s->proto->tls_started(s);
}

void preauth_free(session_t *s)
{
    str_wipe_free(&s->auth.oauth_failure);
}

bool preauth_tls_required(session_t *s)
{
    if (s->listener->starttls != 2 || session_tls_active(s))
        return false;
    preauth_reply(s, REPLY_TLS_REQUIRED, NULL); /* starttls = "only": no authentication before TLS */
    return true;
}

void preauth_starttls(session_t *s, bool args)
{
    if (args)
        preauth_reply(s, REPLY_TLS_ARGS, NULL);
    else if (conn_tls(&s->client))
        preauth_reply(s, REPLY_TLS_ACTIVE, NULL);
    else if (!s->listener->starttls)
        preauth_reply(s, REPLY_TLS_UNAVAILABLE, NULL);
    else {
        say(s, REPLY_TLS_GO, NULL);
        session_starttls(s);
    }
}

/* ---- authentication ---- */

void preauth_login(session_t *s)
{
    s->auth.state = PREAUTH_COMMAND;
    session_authenticate(s);
}

/* EXTERNAL: the verified client certificate is the credential. */
static void external(session_t *s)
{
    char subject[512], issuer[512], serial[128], fp[128];
    tls_conn_t *t = conn_tls(&s->client);
    if (!t || !session_tls_active(s) ||
        !tls_peer_cert(t, subject, sizeof subject, issuer, sizeof issuer, serial, sizeof serial, fp, sizeof fp)) {
        s->login_attempt++;
        refusal_t r = { .message = "No verified client certificate" };
        session_refuse(s, &r);
        return;
    }
    if (!s->cred.user) { /* the user: the authzid, else the certificate's CN */
        const char *cn = strstr(subject, "CN=");
        const char *id = s->cred.authzid ? s->cred.authzid : cn ? cn + 3 : subject;
        s->cred.user = xstrndup(id, strcspn(id, ","));
    }
    preauth_login(s);
}

/* What the SASL machine answered: a challenge, done, or an error. */
static void sasl_result(session_t *s, int rc, const char *challenge)
{
    preauth_t *a = &s->auth;
    a->state = PREAUTH_COMMAND;
    switch (rc) {
    case PT_AGAIN:
        a->state = PREAUTH_SASL;
        say(s, REPLY_CHALLENGE, challenge);
        return;
    case PT_OK:
        if (a->sasl.mech == SASL_EXTERNAL)
            external(s);
        else
            preauth_login(s);
        return;
    case PT_DECLINED:
        preauth_reply(s, REPLY_SASL_CANCELLED, NULL);
        return;
    case PT_INVALID:
        preauth_reply(s, a->sasl.fault == SASL_FAULT_BASE64 ? REPLY_SASL_BASE64
                         : a->sasl.fault == SASL_FAULT_IR   ? REPLY_SASL_IR
                                                            : REPLY_SASL_MESSAGE,
                      NULL);
        return;
    default:
        preauth_reply(s, REPLY_SASL_MESSAGE, NULL);
        return;
    }
}

void preauth_authenticate(session_t *s, const char *mech, size_t mlen, const char *ir, size_t irlen)
{
    int m = sasl_mech_from_name(mech, mlen, s->listener->auth);
    if (!m) {
        preauth_reply(s, REPLY_MECH_UNKNOWN, NULL);
        return;
    }
    char challenge[512];
    int rc = sasl_begin(&s->auth.sasl, m, ir, irlen, s->cfg->server_name, &s->cred, challenge, sizeof challenge);
    sasl_result(s, rc, challenge);
}

const char *preauth_refusal_text(const refusal_t *r, const char *failed)
{
    if (r->message)
        return r->message;
    return r->temporary ? "Temporary authentication failure, try again later" : failed;
}

void preauth_refuse(session_t *s, const refusal_t *r)
{
    char *text = s->proto->refusal(s, r);
    if (s->proto->attempt_failed)
        s->proto->attempt_failed(s);
    if (s->cred.mechanism && strstr("xoauth2 oauthbearer", s->cred.mechanism)) {
        /* RFC 7628 §3.2.2: an error challenge first; the refusal follows
         * the client's (dummy) answer. */
        char challenge[256];
        sasl_oauth_error(challenge, sizeof challenge, r->temporary);
        str_wipe_free(&s->auth.oauth_failure);
        s->auth.oauth_failure = text;
        say(s, REPLY_CHALLENGE, challenge);
        s->auth.state = PREAUTH_OAUTH_FAILED;
        return;
    }
    session_write(s, text, strlen(text));
    free(text);
    s->auth.state = PREAUTH_COMMAND;
}

/* ---- reading ---- */

static void too_long(session_t *s)
{
    session_log(s, LL_INFO, "client sent too long command");
    s->close_reason = "too long command";
    say(s, REPLY_TOO_LONG, NULL);
    session_quit(s);
}

/* The client's answer in a SASL exchange is a line, unless the protocol
 * reads it its own way (ManageSieve: a string). */
static int line_response(const char *buf, size_t len, cmd_t *cmd, char *out, size_t outlen, size_t *outn)
{
    size_t ll, used;
    memset(cmd, 0, sizeof *cmd);
    if (!buf_find_line(buf, len, &ll, &used))
        return PT_AGAIN;
    cmd->consumed = used;
    if (ll >= outlen)
        ll = outlen - 1;
    memcpy(out, buf, ll);
    out[ll] = '\0';
    *outn = ll;
    return PT_OK;
}

/* One answer during SASL (or after the OAuth error challenge). Returns
 * false when more input is needed. */
static bool response(session_t *s)
{
    preauth_t *a = &s->auth;
    cmd_t cmd;
    size_t outn = 0, outlen = s->cin.len + 1;
    char *out = xmalloc(outlen);
    int rc = s->proto->parse_response ? s->proto->parse_response(s->cin.data, s->cin.len, &cmd, out, outlen, &outn)
                                      : line_response(s->cin.data, s->cin.len, &cmd, out, outlen, &outn);
    if (rc == PT_AGAIN || (rc == PT_INVALID && cmd.consumed == 0)) {
        free(out);
        if (buf_room(&s->cin) == 0)
            too_long(s);
        else if (cmd.sync_literals > a->lit_acked) {
            a->lit_acked = cmd.sync_literals;
            say(s, REPLY_LITERAL, NULL);
        }
        return false;
    }
    a->lit_acked = 0;
    buf_consume(&s->cin, cmd.consumed);
    if (rc == PT_INVALID) {
        preauth_reply(s, REPLY_INVALID, cmd.error); /* the exchange goes on */
    } else if (a->state == PREAUTH_OAUTH_FAILED) {
        a->state = PREAUTH_COMMAND;
        if (outn == 1 && out[0] == '*')
            preauth_reply(s, REPLY_SASL_CANCELLED, NULL); /* RFC 9051 §6.2.2, RFC 4954 §4 */
        else if (a->oauth_failure)
            session_write(s, a->oauth_failure, strlen(a->oauth_failure));
        str_wipe_free(&a->oauth_failure);
    } else {
        char challenge[512];
        rc = sasl_step(&a->sasl, out, outn, &s->cred, challenge, sizeof challenge);
        sasl_result(s, rc, challenge);
    }
    explicit_bzero(out, outn);
    free(out);
    return true;
}

/* One command. Returns false when more input is needed or the session
 * stops reading. */
static bool command(session_t *s)
{
    preauth_t *a = &s->auth;
    cmd_t cmd;
    int rc = s->proto->parse(s->cin.data, s->cin.len, s->cfg->client_buffer, &cmd);
    if (cmd.tag_len > 0 && cmd.tag_len <= PREAUTH_MAX_TAG) {
        memcpy(a->tag, s->cin.data + cmd.tag_off, cmd.tag_len);
        a->tag[cmd.tag_len] = '\0';
    } else {
        a->tag[0] = '\0';
    }
    if (rc == PT_AGAIN) {
        if (buf_room(&s->cin) == 0) {
            too_long(s);
        } else if (cmd.sync_literals > a->lit_acked) {
            a->lit_acked = cmd.sync_literals;
            say(s, REPLY_LITERAL, NULL);
        }
        return false;
    }
    a->lit_acked = 0;
    if (rc == PT_TOO_BIG) {
        session_log(s, LL_INFO, "client sent too large literal");
        say(s, REPLY_INVALID, cmd.error);
        s->close_reason = "too large literal";
        session_quit(s);
        return false;
    }
    if (rc == PT_INVALID) {
        if (cmd.consumed == 0) { /* the rest of the bad line is still to come */
            if (buf_room(&s->cin) == 0)
                too_long(s);
            return false;
        }
        buf_consume(&s->cin, cmd.consumed);
        if (cmd.close_after) {
            say(s, REPLY_INVALID, cmd.error);
            s->close_reason = "unrecoverable syntax error";
            session_quit(s);
            return false;
        }
        preauth_reply(s, REPLY_INVALID, cmd.error);
        return true;
    }
    /* Work on a copy: the command may start a login whose outcome comes
     * back (and parses further input) before we return. */
    size_t used = cmd.consumed;
    char *copy = xmalloc(used);
    memcpy(copy, s->cin.data, used);
    buf_consume(&s->cin, used);
    s->proto->execute(s, copy, &cmd);
    explicit_bzero(copy, used);
    free(copy);
    return true;
}

void preauth_input(session_t *s)
{
    while (s->phase == PHASE_PREAUTH && !s->quit && !session_output_blocked(s) && s->cin.len > 0) {
        if (s->proto_timer && s->proto->early_input) { /* SMTP: talked before the greeting */
            s->proto->early_input(s);
            return;
        }
        if (!(s->auth.state == PREAUTH_COMMAND ? command(s) : response(s)))
            return;
    }
}
