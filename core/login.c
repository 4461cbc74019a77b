/* login.c: the protocol-independent half of an upstream login (login.h).
 * The upstream's bytes collect in a bounded buffer; each whole line goes
 * to the protocol's login_line after it left the buffer, so an outcome
 * can hand the rest of the buffer to the client. */
#include "login.h"

#include "log.h"
#include "mem.h"
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOGIN_IN_MAX (64 * 1024)   /* upstream bytes held during login */
#define LOGIN_READ (16 * 1024)

static const conn_handler_t login_handler;

static void destroy(login_t *l)
{
    login_forget_pending(l);
    buf_free(&l->in);
    free(l);
}

static void enter(login_t *l)
{
    l->depth++;
}

static void leave(login_t *l)
{
    if (--l->depth == 0 && l->doomed)
        destroy(l);
}

/* An outcome: the login lets go of the connection first. */
static bool conclude(login_t *l)
{
    if (l->over)
        return false;
    l->over = true;
    if (l->conn->data == l)
        conn_set_handler(l->conn, NULL, NULL);
    return true;
}

void login_fail(login_t *l, const char *why)
{
    if (conclude(l))
        l->p.ev->failed(l->p.owner, why);
}

void login_fail_line(login_t *l, const char *what, const char *line, size_t len)
{
    char why[200];
    snprintf(why, sizeof why, "%s: \"%.*s\"", what, (int)(len > 100 ? 100 : len), line);
    login_fail(l, why);
}

void login_ready(login_t *l, const char *reply, size_t len)
{
    login_forget_pending(l);
    if (conclude(l))
        l->p.ev->ready(l->p.owner, reply, len, l->in.data, l->in.len);
}

void login_refused(login_t *l, const char *reply, size_t len, const char *log_text)
{
    login_forget_pending(l);
    if (conclude(l))
        l->p.ev->refused(l->p.owner, reply, len, log_text);
}

void login_log(login_t *l, int level, const char *fmt, ...)
{
    if (!log_enabled(level) || !l->p.ev->log)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    l->p.ev->log(l->p.owner, level, msg);
}

/* ---- sending ---- */

void login_send(login_t *l, const char *data, size_t len)
{
    if (l->over)
        return;
    if (conn_write(l->conn, data, len) < 0)
        login_fail(l, "write to upstream failed");
}

void login_send_line(login_t *l, char *line)
{
    login_send(l, line, strlen(line));
    str_wipe_free(&line);
}

void login_queue(login_t *l, char *piece)
{
    if (l->npending == LOGIN_MAX_PENDING) { /* a protocol module's mistake, not the upstream's */
        str_wipe_free(&piece);
        login_fail(l, "too many login steps");
        return;
    }
    l->pending[l->npending++] = piece;
}

void login_forget_pending(login_t *l)
{
    for (int i = 0; i < l->npending; i++)
        str_wipe_free(&l->pending[i]);
    l->npending = l->next_pending = 0;
}

const char *login_oauth_dummy(const login_t *l)
{
    /* RFC 7628 §3.2.3: %x01; Google's XOAUTH2: an empty response */
    return l->mech == SASL_OAUTHBEARER ? "AQ==" : l->mech == SASL_XOAUTH2 ? "" : NULL;
}

void login_continue(login_t *l)
{
    const char *dummy = login_oauth_dummy(l);
    if (l->next_pending < l->npending) {
        const char *piece = l->pending[l->next_pending++];
        login_send(l, piece, strlen(piece));
    } else if (dummy) { /* the token was refused: answer the error challenge, the refusal follows */
        login_send(l, dummy, strlen(dummy));
        login_send(l, "\r\n", 2);
    } else {
        login_fail(l, "upstream sent an unexpected continuation");
    }
}

bool login_credentials(login_t *l, const char **user, const char **password, int *mech)
{
    *user = l->p.user;
    *password = l->p.password;
    *mech = sasl_upstream_mech(l->p.cred, l->p.upstream->auth);
    if (*user && *password)
        return true;
    login_fail(l, "no password to log in to the upstream with (the policy must give one for CRAM-MD5 and APOP "
                  "clients)");
    return false;
}

/* ---- STARTTLS ---- */

bool login_wants_starttls(const login_t *l)
{
    return l->p.upstream->tls == UPSTREAM_TLS_STARTTLS && !l->starttls;
}

/* The ClientHello, towards the policy's name for the upstream. */
static void start_tls(login_t *l)
{
    const upstream_t *u = l->p.upstream;
    char err[600] = "no TLS client (see tls.upstream_ca)";
    if (!l->p.tls_client || conn_tls_client(l->conn, l->p.tls_client, u->sni ? u->sni : u->host, u->verify,
                                            u->certificate, u->key, err, sizeof err) < 0) {
        char why[700];
        snprintf(why, sizeof why, "cannot set up TLS towards the upstream: %s", err);
        login_fail(l, why);
    }
}

void login_starttls(login_t *l)
{
    if (l->over || l->starttls)
        return;
    l->starttls = true;
    buf_clear(&l->in); /* nothing the upstream sent after its OK counts */
    start_tls(l);
}

/* ---- reading ---- */

static char *on_buffer(conn_t *c, size_t *room)
{
    login_t *l = c->data;
    size_t want = buf_room(&l->in);
    if (want > LOGIN_READ)
        want = LOGIN_READ;
    if (l->over || want == 0 || buf_reserve(&l->in, want) < 0) {
        *room = 0;
        return NULL;
    }
    *room = want;
    return l->in.data + l->in.len;
}

static void on_data(conn_t *c, size_t n)
{
    login_t *l = c->data;
    l->in.len += n;
    enter(l);
    size_t ll, used;
    while (!l->over && buf_find_line(l->in.data, l->in.len, &ll, &used)) {
        /* the line leaves the buffer before the protocol acts on it: an
         * outcome hands the rest of the buffer to the client */
        char *line = xmalloc(ll + 1);
        memcpy(line, l->in.data, ll);
        line[ll] = '\0';
        buf_consume(&l->in, used);
        l->p.proto->login_line(l, line, ll);
        free(line);
    }
    if (!l->over && buf_room(&l->in) == 0)
        login_fail(l, "upstream sent a too long response during login");
    leave(l);
}

static void on_eof(conn_t *c)
{
    login_t *l = c->data;
    enter(l);
    login_fail(l, "upstream closed the connection during login");
    leave(l);
}

static void on_error(conn_t *c, const char *why)
{
    login_t *l = c->data;
    char text[400];
    if (conn_failed_in_tls(c)) /* never falls back to plaintext: the next upstream, or a temporary failure */
        snprintf(text, sizeof text, "TLS with the upstream failed: %s", conn_error_detail(c));
    else
        snprintf(text, sizeof text, "upstream %s during login", why);
    enter(l);
    login_fail(l, text);
    leave(l);
}

static void on_tls_ready(conn_t *c)
{
    login_t *l = c->data;
    tls_conn_t *t = conn_tls(c);
    login_log(l, LL_DEBUG, "upstream TLS: %s, %s", tls_protocol(t), tls_cipher(t));
    enter(l);
    if (l->starttls)
        l->p.proto->login_tls_ready(l);
    else /* implicit TLS: the protocol starts now */
        l->p.proto->login_start(l);
    leave(l);
}

static const conn_handler_t login_handler = {
    .buffer = on_buffer, .data = on_data, .eof = on_eof, .error = on_error, .tls_ready = on_tls_ready,
};

login_t *login_new(conn_t *c, const login_params_t *p)
{
    login_t *l = xcalloc(1, sizeof *l);
    l->p = *p;
    l->conn = c;
    buf_init(&l->in, LOGIN_IN_MAX);
    return l;
}

void login_begin(login_t *l)
{
    conn_set_handler(l->conn, &login_handler, l);
    enter(l);
    if (l->p.upstream->tls == UPSTREAM_TLS_ON) /* implicit TLS: the protocol starts after the handshake */
        start_tls(l);
    else
        l->p.proto->login_start(l);
    if (!l->over)
        conn_read_start(l->conn);
    leave(l);
}

void login_free(login_t *l)
{
    if (!l)
        return;
    if (l->conn->data == l)
        conn_set_handler(l->conn, NULL, NULL);
    if (l->depth > 0) {
        l->doomed = true;
        l->over = true;
        return;
    }
    destroy(l);
}
