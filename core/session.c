/* session.c: the life of one client connection. Phases follow each other
 * (PROXY header, TLS handshake, connect hook, pre-auth, auth hook,
 * upstream login, relay); every callback first checks that the session is
 * not closing. All memory of a session is freed in session_free(), once
 * its last uv handle (the client connection, the timer) is closed.
 *
 * What is said to the client before login is the pre-auth engine's
 * (preauth.c) and the protocol's; the upstream's connection is
 * upstream.c's, its login login.c's, the relay relay.c's: this file only
 * sequences them and owns what they share. */
#include "session.h"

#include "connlimit.h"
#include "log.h"
#include "login.h"
#include "lua_policy.h"
#include "mem.h"
#include "proxy_proto.h"
#include "relay.h"
#include "status.h"

#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OUT_HIGH (64 * 1024)   /* stop parsing client input above this much queued output */
#define OUT_LOW (16 * 1024)
#define CLIENT_READ (16 * 1024)

static session_t *sessions;
static int nsessions;
static int nsessions_peak; /* since memory was last given back */
static uint64_t next_id;
static bool shutting_down;            /* a graceful stop: no new logins */
static void (*on_drained)(void);      /* called when the last session is freed */

static const conn_handler_t client_handler;
static void session_free(session_t *s);
static void session_ready(session_t *s);
static void session_begin(session_t *s);
static void process_input(session_t *s);
static void back_to_preauth(session_t *s);
static void on_timeout(uv_timer_t *t);
static void connect_next(session_t *s);
static void upstream_failed(session_t *s, const char *why);

int session_count(void)
{
    return nsessions;
}

void session_log(const session_t *s, int level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char msg[1536], login[160] = "", up[200] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (s->cred.user) {
        /* user names come from the client: keep the log line one line */
        size_t j = 0;
        j += (size_t)snprintf(login, sizeof login, ", login: \"");
        for (const char *p = s->cred.user; *p && j < 140; p++)
            login[j++] = (*p < 0x20 || *p == 0x7f || *p == '"') ? '?' : *p;
        login[j++] = '"';
        login[j] = '\0';
    }
    if (s->upstream_name[0])
        snprintf(up, sizeof up, ", upstream: %s", s->upstream_name);
    log_msg(level, "*%llu %s, client: %s:%d, server: %s%s%s", (unsigned long long)s->id, msg,
            s->client_ip, s->client_port, s->listener->address, login, up);
}

static void handle_closed(session_t *s)
{
    if (--s->handles == 0)
        session_free(s);
}

static void client_closed(conn_t *c)
{
    /* not c->data: the relay had the connection last */
    handle_closed((session_t *)((char *)c - offsetof(session_t, client)));
}

static void timer_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void start_protocol(session_t *s)
{
    s->phase = PHASE_PREAUTH;
    session_set_timeout(s, s->cfg->timeout);
    s->proto->greet(s);
}

/* The address the client reached: the listener's own when it names one
 * (no getsockname), else the socket's. */
static void local_address(session_t *s)
{
    const struct sockaddr_storage *a = &s->listener->addr;
    bool any = (a->ss_family == AF_INET && ((const struct sockaddr_in *)a)->sin_addr.s_addr == htonl(INADDR_ANY)) ||
               (a->ss_family == AF_INET6 &&
                IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)a)->sin6_addr));
    if (any || conn_addr_text(a, s->local_ip, sizeof s->local_ip, &s->local_port) < 0 || s->local_port == 0)
        conn_local(&s->client, s->local_ip, sizeof s->local_ip, &s->local_port);
}

void session_accept(uv_stream_t *server, config_t *cfg, const listen_conf_t *l)
{
    session_t *s = xcalloc(1, sizeof *s);
    s->loop = server->loop;
    s->cfg = config_acquire(cfg);
    s->listener = l;
    s->proto = l->proto;
    s->vars_ref = -2; /* LUA_NOREF */
    s->start_ms = uv_now(s->loop);
    buf_init(&s->cin, cfg->client_buffer);
    conn_init(&s->client, s->loop);
    s->client.closed = client_closed;
    s->handles = 1;
    if (conn_accept(&s->client, server) < 0) {
        s->phase = PHASE_CLOSING;
        conn_close(&s->client);
        return;
    }
    struct sockaddr_storage peer;
    if (conn_peer_addr(&s->client, &peer) == PT_OK)
        conn_addr_text(&peer, s->client_ip, sizeof s->client_ip, &s->client_port);
    if (l->proxy_trusted && !proxy_trusted(l->proxy_trusted, l->nproxy_trusted, (const struct sockaddr *)&peer)) {
        /* anyone else could claim any client address: not a byte read,
         * not a word said, no session (no id, no hooks) */
        log_msg(LL_WARN, "PROXY protocol sender %s is not in proxy_protocol_trusted of listener %s: closed",
                s->client_ip[0] ? s->client_ip : "(unknown)", l->address);
        s->phase = PHASE_CLOSING;
        conn_close(&s->client);
        return;
    }
    s->id = ++next_id;
    uv_timer_init(s->loop, &s->timer);
    s->timer.data = s;
    s->handles++;
    local_address(s);
    conn_set_handler(&s->client, &client_handler, s);

    s->pstate = xcalloc(1, s->proto->state_size);
    s->policy = policy_acquire();
    s->next = sessions;
    if (sessions)
        sessions->prev = s;
    sessions = s;
    nsessions++;
    if (nsessions > nsessions_peak)
        nsessions_peak = nsessions;
    session_log(s, LL_INFO, "client connected");

    if (l->proxy_protocol) { /* the balancer's header comes before anything else, TLS included */
        s->phase = PHASE_PROXY_HEADER;
        session_set_timeout(s, s->cfg->timeout);
        conn_read_start(&s->client);
        return;
    }
    session_begin(s);
}

/* max_connections and max_connections_per_ip, counted across the workers
 * once the client's address is known (after a PROXY header). Over a limit
 * the client hears its protocol's "try later" before any greeting (on an
 * implicit TLS port nothing: no handshake is spent on it) and is closed. */
static bool within_limits(session_t *s)
{
    const config_t *c = s->cfg;
    if (c->max_connections <= 0 && c->max_connections_per_ip <= 0)
        return true;
    if (connlimit_ip_key(s->client_ip, s->limit_ip) < 0)
        memset(s->limit_ip, 0, sizeof s->limit_ip);
    int rc = connlimit_acquire(s->limit_ip, c->max_connections, c->max_connections_per_ip);
    if (rc == CONNLIMIT_OK) {
        s->limit_counted = true;
        return true;
    }
    const char *which = rc == CONNLIMIT_TOTAL ? "max_connections" : "max_connections_per_ip";
    session_log(s, LL_WARN, "refused: %s (%d) reached", which,
                rc == CONNLIMIT_TOTAL ? c->max_connections : c->max_connections_per_ip);
    s->close_reason = rc == CONNLIMIT_TOTAL ? "max_connections reached" : "max_connections_per_ip reached";
    if (s->listener->tls) {
        session_close(s, s->close_reason);
        return false;
    }
    conn_read_start(&s->client); /* to see the client go while the refusal is written */
    s->phase = PHASE_PREAUTH;
    session_set_timeout(s, c->timeout);
    preauth_reply(s, REPLY_UNAVAILABLE,
                  rc == CONNLIMIT_TOTAL ? "Too many connections, try again later"
                                     : "Too many connections from your address, try again later");
    session_quit(s);
    return false;
}

/* The client's addresses are known: TLS on a TLS port, then session_ready. */
static void session_begin(session_t *s)
{
    if (!within_limits(s))
        return;
    if (s->listener->tls) { /* implicit TLS: the handshake comes before anything else */
        char err[100];
        if (conn_tls_server(&s->client, s->listener->tls_server, err, sizeof err) < 0) {
            session_close(s, "cannot set up TLS");
            return;
        }
        s->phase = PHASE_TLS_HANDSHAKE;
        session_set_timeout(s, s->cfg->timeout);
        conn_read_start(&s->client);
        return;
    }
    conn_read_start(&s->client);
    session_ready(s);
}

/* PHASE_PROXY_HEADER: bytes arrived in cin. A listener with
 * proxy_protocol takes only connections that start with a valid header
 * (v1 or v2); anything else is closed without a word, as the client is
 * the balancer, not a mail client. */
static void proxy_header_input(session_t *s)
{
    proxy_addr_t a;
    const char *err = "bad PROXY header";
    int n = proxy_parse(s->cin.data, s->cin.len, &a, &err);
    if (n == PT_AGAIN)
        return;
    if (n < 0) {
        session_log(s, LL_INFO, "%s", err);
        session_close(s, "bad PROXY protocol header");
        return;
    }
    if (a.known) {
        snprintf(s->peer_ip, sizeof s->peer_ip, "%s", s->client_ip);
        snprintf(s->client_ip, sizeof s->client_ip, "%s", a.src_ip);
        snprintf(s->local_ip, sizeof s->local_ip, "%s", a.dst_ip);
        s->client_port = a.src_port;
        s->local_port = a.dst_port;
        s->proxied = true;
        session_log(s, LL_INFO, "PROXY v%d: client %s:%d via %s", a.version, s->client_ip, s->client_port,
                    s->peer_ip);
    }
    buf_consume(&s->cin, (size_t)n);
    if (s->listener->tls) {
        /* what followed the header is the start of the TLS handshake */
        size_t len = s->cin.len;
        char *early = len ? xmalloc(len) : NULL;
        if (early)
            memcpy(early, s->cin.data, len);
        buf_clear(&s->cin);
        session_begin(s);
        if (early && s->phase == PHASE_TLS_HANDSHAKE)
            conn_tls_input(&s->client, early, len);
        free(early);
        return;
    }
    session_begin(s);
    if (s->phase == PHASE_PREAUTH && s->cin.len > 0)
        process_input(s);
}

/* Connected (and TLS done on a TLS port): the on_connect hook, or the
 * greeting. */
static void session_ready(session_t *s)
{
    if (policy_has_hook(s->policy, "on_connect")) {
        s->phase = PHASE_CONNECT_HOOK;
        session_set_timeout(s, s->cfg->auth_timeout);
        policy_run_connect(s);
    } else {
        start_protocol(s);
    }
}

void session_starttls(session_t *s)
{
    if (s->phase != PHASE_PREAUTH || conn_tls(&s->client) || !s->listener->tls_server)
        return;
    /* Whatever the client pipelined behind STARTTLS is plaintext an
     * attacker could have injected: it is dropped, never executed. */
    if (s->cin.len)
        session_log(s, LL_INFO, "dropped %zu bytes sent after STARTTLS", s->cin.len);
    buf_clear(&s->cin);
    char err[100];
    if (conn_tls_server(&s->client, s->listener->tls_server, err, sizeof err) < 0) {
        session_close(s, "cannot set up TLS");
        return;
    }
    s->starttls = true;
    s->phase = PHASE_TLS_HANDSHAKE;
    session_set_timeout(s, s->cfg->timeout);
    conn_read_start(&s->client);
}

bool session_tls_active(const session_t *s)
{
    return conn_tls_active(&s->client);
}

const char *session_capabilities(const session_t *s)
{
    const listen_conf_t *l = s->listener;
    return l->starttls && !session_tls_active(s) && l->capabilities_starttls ? l->capabilities_starttls
                                                                              : l->capabilities;
}

/* ---- the client connection ---- */

static void process_input(session_t *s)
{
    if (s->phase != PHASE_PREAUTH || s->quit)
        return;
    preauth_input(s);
    if (s->phase != PHASE_PREAUTH || s->quit || session_output_blocked(s))
        return;
    if (s->client_eof) /* every command the client sent before its EOF is answered */
        session_quit(s);
    else if (buf_room(&s->cin) > 0)
        conn_read_start(&s->client); /* may deliver what TLS held back */
}

static char *client_buffer(conn_t *c, size_t *room)
{
    session_t *s = c->data;
    size_t want = buf_room(&s->cin);
    if (want > CLIENT_READ)
        want = CLIENT_READ;
    if (want == 0 || buf_reserve(&s->cin, want) < 0) {
        *room = 0;
        return NULL;
    }
    *room = want;
    return s->cin.data + s->cin.len;
}

static void client_data(conn_t *c, size_t n)
{
    session_t *s = c->data;
    s->cin.len += n;
    switch (s->phase) {
    case PHASE_PROXY_HEADER:
        proxy_header_input(s);
        return;
    case PHASE_PREAUTH:
        /* The idle timer restarts only once everything received so far
         * made whole commands: a client that drips a line a byte at a time
         * cannot keep its connection past `timeout`. */
        process_input(s);
        if (s->phase == PHASE_PREAUTH && !s->quit && !s->proto_timer && s->cin.len == 0)
            session_set_timeout(s, s->cfg->timeout);
        return;
    default:
        /* Busy elsewhere (a hook, the upstream login): keep what came,
         * read no more until we get back to it. */
        if (buf_room(&s->cin) == 0)
            conn_read_stop(c);
    }
}

static void client_eof(conn_t *c)
{
    session_t *s = c->data;
    if (s->phase == PHASE_PROXY_HEADER) {
        session_close(s, "client closed connection before its PROXY header");
        return;
    }
    if (s->cin.len > 0 && s->phase != PHASE_CONNECT_HOOK) {
        /* A half-close after pipelined commands (printf ... | nc -N):
         * answer them all, then close (see process_input and the relay).
         * With nothing left to answer, an EOF ends the session at once,
         * even in the middle of a login: the client is gone. */
        s->client_eof = true;
        s->close_reason = "client closed connection";
        conn_read_stop(c);
        process_input(s);
        return;
    }
    s->client_eof = true;
    session_close(s, "client closed connection");
}

static void client_error(conn_t *c, const char *why)
{
    session_t *s = c->data;
    const char *detail = conn_error_detail(c);
    if (strcmp(detail, why) != 0)
        session_log(s, LL_INFO, "%s", detail);
    session_close(s, why);
}

bool session_output_blocked(const session_t *s)
{
    return conn_queued(&s->client) > OUT_HIGH;
}

static void client_written(conn_t *c)
{
    session_t *s = c->data;
    if (s->quit && conn_queued(c) == 0) {
        session_close(s, s->close_reason ? s->close_reason : "closed by server");
        return;
    }
    if (s->phase == PHASE_PREAUTH && conn_queued(c) < OUT_LOW && !c->reading)
        process_input(s);
}

static void client_tls_ready(conn_t *c)
{
    session_t *s = c->data;
    tls_conn_t *t = conn_tls(c);
    session_log(s, LL_DEBUG, "TLS handshake done: %s, %s%s%s", tls_protocol(t), tls_cipher(t),
                tls_sni(t) ? ", SNI " : "", tls_sni(t) ? tls_sni(t) : "");
    if (s->phase != PHASE_TLS_HANDSHAKE)
        return;
    if (s->listener->verify_client && tls_peer_cert_failed(t)) {
        /* "optional" lets a client without a certificate in; one whose
         * certificate does not verify is refused, as nginx does */
        session_log(s, LL_INFO, "client certificate refused: %s", tls_peer_verify_error(t));
        s->close_reason = "client certificate error";
        preauth_reply(s, REPLY_BYE, "SSL certificate error");
        session_quit(s);
        return;
    }
    if (!s->starttls) {
        session_ready(s);
        return;
    }
    /* after STARTTLS: a fresh start, as the RFCs want (no greeting) */
    s->phase = PHASE_PREAUTH;
    session_set_timeout(s, s->cfg->timeout);
    preauth_reset(s);
}

static const conn_handler_t client_handler = {
    .buffer = client_buffer,
    .data = client_data,
    .eof = client_eof,
    .error = client_error,
    .written = client_written,
    .tls_ready = client_tls_ready,
};

void session_write(session_t *s, const void *data, size_t len)
{
    if (s->phase == PHASE_CLOSING || len == 0)
        return;
    if (conn_write(&s->client, data, len) < 0) {
        bool tls = conn_tls_active(&s->client);
        if (tls)
            session_log(s, LL_INFO, "%s", conn_error_detail(&s->client));
        session_close(s, tls ? "TLS error" : conn_error_detail(&s->client));
        return;
    }
    if (session_output_blocked(s) && s->phase == PHASE_PREAUTH)
        conn_read_stop(&s->client);
}

void session_printf(session_t *s, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line) {
        n = sizeof line - 1;
        line[n - 2] = '\r';
        line[n - 1] = '\n';
    }
    session_write(s, line, (size_t)n);
}

void session_quit(session_t *s)
{
    if (s->phase == PHASE_CLOSING || s->quit)
        return;
    s->quit = true;
    conn_read_stop(&s->client);
    conn_close_notify(&s->client); /* a clean TLS end after the last words */
    if (conn_queued(&s->client) == 0)
        session_close(s, s->close_reason ? s->close_reason : "closed by server");
}

/* ---- closing ---- */

static void close_upstream(session_t *s)
{
    login_free(s->login); /* before the connection it reads goes away */
    s->login = NULL;
    upstream_close(s->up);
    s->up = NULL;
}

void session_close(session_t *s, const char *why)
{
    if (s->phase == PHASE_CLOSING)
        return;
    s->phase = PHASE_CLOSING;
    s->close_reason = why;
    if (s->hook) {
        policy_cancel(s->hook);
        s->hook = NULL;
    }
    close_upstream(s);
    uv_timer_stop(&s->timer);
    session_log(s, LL_INFO, "session closed (%s), %llu bytes from client, %llu bytes to client", why,
                (unsigned long long)s->bytes_in, (unsigned long long)s->bytes_out);
    if (policy_has_hook(s->policy, "on_close"))
        policy_run_close(s);
    conn_close(&s->client);
    uv_close((uv_handle_t *)&s->timer, timer_closed);
}

void session_close_all(void)
{
    for (session_t *s = sessions; s; s = s->next)
        session_close(s, "shutting down");
}

/* Last words for a session that has not logged in; true when it is done. */
static bool shutdown_before_login(session_t *s)
{
    switch (s->phase) {
    case PHASE_PROXY_HEADER:
    case PHASE_TLS_HANDSHAKE:
    case PHASE_CONNECT_HOOK:
        session_close(s, "shutting down");
        return true;
    case PHASE_PREAUTH:
        if (s->quit)
            return true;
        s->close_reason = "shutting down";
        /* said even where the protocol closes silently on a timeout (POP3):
         * a client told "temporary" retries instead of reporting an error */
        preauth_reply(s, REPLY_UNAVAILABLE, "Server shutting down, try again later");
        session_quit(s);
        return true;
    default: /* a login in progress finishes (a refusal then ends it); relays go on */
        return false;
    }
}

void session_drain(void (*drained)(void))
{
    on_drained = drained;
    if (nsessions == 0 && on_drained) {
        on_drained = NULL;
        drained();
    }
}

void session_shutdown(void (*drained)(void))
{
    shutting_down = true;
    for (session_t *s = sessions, *next; s; s = next) {
        next = s->next; /* closing never frees at once (handles close first), but be safe */
        shutdown_before_login(s);
    }
    session_drain(drained);
}

void refusal_free(refusal_t *r)
{
    if (!r)
        return;
    free(r->message);
    free(r->code);
    free(r);
}

/* After a peak, glibc keeps the freed sessions' pages in its heap; when
 * half of them (and at least a few hundred) are gone, hand the free
 * pages back to the system (malloc_trim also releases pages inside the
 * heap, not only at its top). Rare and cheap next to that many closes. */
static void give_back_memory(void)
{
    if (nsessions_peak - nsessions < 256 || nsessions > nsessions_peak / 2)
        return;
    malloc_trim(0);
    nsessions_peak = nsessions;
}

static void session_free(session_t *s)
{
    if (s->id) { /* accepted: counted and linked */
        if (s->prev)
            s->prev->next = s->next;
        else if (sessions == s)
            sessions = s->next;
        if (s->next)
            s->next->prev = s->prev;
        nsessions--;
    }
    if (s->limit_counted)
        connlimit_release(s->limit_ip);
    relay_free(s->relay);
    refusal_free(s->pending_refusal);
    upstreams_free(s->upstreams, s->nupstreams);
    credentials_clear(&s->cred);
    buf_free(&s->cin);
    if (s->pstate) {
        preauth_free(s);
        s->proto->cleanup(s);
        explicit_bzero(s->pstate, s->proto->state_size);
        free(s->pstate);
    }
    policy_session_release(s);
    policy_release(s->policy);
    config_release((config_t *)s->cfg);
    free(s);
    give_back_memory();
    if (nsessions == 0 && on_drained) {
        void (*cb)(void) = on_drained;
        on_drained = NULL;
        cb();
    }
}

/* ---- timeouts ---- */

static void on_timeout(uv_timer_t *t)
{
    session_t *s = t->data;
    switch (s->phase) {
    case PHASE_CLOSING:
        return;
    case PHASE_PROXY_HEADER:
        session_log(s, LL_INFO, "no PROXY protocol header in time");
        session_close(s, "PROXY header timed out");
        return;
    case PHASE_TLS_HANDSHAKE:
        session_log(s, LL_INFO, "TLS handshake timed out");
        session_close(s, "TLS handshake timed out");
        return;
    case PHASE_PREAUTH:
        if (s->proto_timer) {
            s->proto_timer = false;
            s->proto->timer(s);
            return;
        }
        session_log(s, LL_INFO, "client timed out");
        s->close_reason = "client timed out";
        if (!s->proto->no_last_words)
            preauth_reply(s, REPLY_BYE, "Autologout; idle for too long");
        session_quit(s);
        return;
    case PHASE_CONNECT_HOOK:
    case PHASE_AUTH_HOOK: {
        session_log(s, LL_ERROR, "policy hook timed out after %gs", s->cfg->auth_timeout);
        policy_cancel(s->hook);
        s->hook = NULL;
        session_hook_done(s, POLICY_ERROR, NULL, 0, NULL);
        return;
    }
    case PHASE_UPSTREAM:
        upstream_failed(s, "upstream timed out");
        return;
    case PHASE_RELAY: {
        uint64_t limit = (uint64_t)(s->cfg->proxy_timeout * 1000);
        uint64_t idle = uv_now(s->loop) - relay_last_active(s->relay);
        if (idle >= limit) {
            session_log(s, LL_INFO, "proxy timed out");
            session_close(s, "proxy timeout");
            return;
        }
        /* activity only stamps a time; the timer re-arms itself here, so
         * the relay's hot path never touches the timer heap */
        uv_timer_start(&s->timer, on_timeout, limit - idle, 0);
        return;
    }
    case PHASE_REFUSE_WAIT:
        /* its own callback is installed on the timer */
        return;
    }
}

void session_set_timeout(session_t *s, double seconds)
{
    s->proto_timer = false;
    uv_timer_start(&s->timer, on_timeout, (uint64_t)(seconds * 1000), 0);
}

void session_protocol_timer(session_t *s, double seconds)
{
    uv_timer_start(&s->timer, on_timeout, (uint64_t)(seconds * 1000), 0);
    s->proto_timer = true;
}

/* ---- authentication ---- */

void session_authenticate(session_t *s)
{
    s->login_attempt++;
    s->phase = PHASE_AUTH_HOOK;
    session_set_timeout(s, s->cfg->auth_timeout);
    policy_run_authenticate(s);
}

/* After a refusal the client may try again, up to max_login_attempts. */
static void back_to_preauth(session_t *s)
{
    /* SMTP without AUTH asks the policy per recipient: a refused
     * recipient is not a failed login, and an MX must not drop a
     * transaction for a few unknown addresses (its valid recipients would
     * be deferred). Those get the envelope's own, larger limit. */
    bool envelope = s->cred.envelope;
    int limit = envelope ? CRED_MAX_ENVELOPES : s->cfg->max_login_attempts;
    credentials_clear(&s->cred);
    upstreams_free(s->upstreams, s->nupstreams);
    s->upstreams = NULL;
    s->nupstreams = s->upstream_idx = 0;
    s->upstream_name[0] = '\0';
    if (shutting_down) {
        s->phase = PHASE_PREAUTH;
        shutdown_before_login(s);
        return;
    }
    if (s->login_attempt >= limit) {
        session_log(s, LL_INFO, envelope ? "client reached %d refused recipients" : "client reached max_login_attempts (%d)",
                    limit);
        s->close_reason = envelope ? "too many refused recipients" : "too many failed logins";
        if (!s->proto->no_last_words)
            preauth_reply(s, REPLY_BYE, envelope ? "Too many refused recipients" : "Too many failed login attempts");
        session_quit(s);
        return;
    }
    s->phase = PHASE_PREAUTH;
    session_set_timeout(s, s->cfg->timeout);
    process_input(s);
    conn_read_start(&s->client);
}

void session_refuse(session_t *s, const refusal_t *r)
{
    preauth_refuse(s, r);
    if (r->close) {
        s->close_reason = "refused by the policy";
        session_quit(s);
        return;
    }
    back_to_preauth(s);
}

/* A refusal from the policy, as the client may see it. */
static void send_refusal(session_t *s, refusal_t *r)
{
    refusal_t shown = *r;
    if (!s->cfg->proxy_pass_error_message)
        shown.message = NULL;
    if (shown.message) /* one line only: the message goes inside a reply */
        for (char *p = shown.message; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = ' ';
    session_refuse(s, &shown);
    refusal_free(r);
}

static void on_refusal_wait(uv_timer_t *t)
{
    session_t *s = t->data;
    if (s->phase != PHASE_REFUSE_WAIT)
        return;
    refusal_t *r = s->pending_refusal;
    s->pending_refusal = NULL;
    send_refusal(s, r);
}

void session_hook_done(session_t *s, policy_outcome_t outcome, upstream_t *ups, int nups, refusal_t *r)
{
    s->hook = NULL;
    if (s->phase == PHASE_CLOSING) {
        upstreams_free(ups, nups);
        refusal_free(r);
        return;
    }
    if (s->phase == PHASE_CONNECT_HOOK) {
        uv_timer_stop(&s->timer);
        if (outcome == POLICY_CONTINUE) {
            start_protocol(s);
            if (s->phase == PHASE_PREAUTH && s->cin.len > 0) /* sent while the hook ran */
                process_input(s);
        } else if (outcome == POLICY_UPSTREAMS) {
            s->upstreams = ups;
            s->nupstreams = nups;
            s->upstream_idx = 0;
            s->splice = true;
            connect_next(s);
            ups = NULL;
        } else {
            s->close_reason = outcome == POLICY_REFUSE ? "refused by on_connect" : "on_connect failed";
            preauth_reply(s, REPLY_BYE, outcome == POLICY_REFUSE && r && r->message ? r->message
                                                                                : "Service temporarily unavailable");
            session_quit(s);
        }
        refusal_free(r);
        if (ups)
            upstreams_free(ups, nups);
        return;
    }
    if (s->phase != PHASE_AUTH_HOOK) {
        upstreams_free(ups, nups);
        refusal_free(r);
        return;
    }
    if (outcome == POLICY_UPSTREAMS && nups > 0) {
        refusal_free(r);
        s->upstreams = ups;
        s->nupstreams = nups;
        s->upstream_idx = 0;
        connect_next(s);
        return;
    }
    upstreams_free(ups, nups);
    if (!r) {
        r = xcalloc(1, sizeof *r);
        r->temporary = outcome != POLICY_REFUSE;
    }
    if (outcome == POLICY_ERROR) {
        free(r->message);
        r->message = NULL;
        r->temporary = true;
        r->wait = 0;
    }
    session_log(s, LL_INFO, "client login failed: \"%s\"", r->message ? r->message : "");
    if (r->wait > 0) {
        s->phase = PHASE_REFUSE_WAIT;
        s->pending_refusal = r;
        s->proto_timer = false;
        uv_timer_start(&s->timer, on_refusal_wait, (uint64_t)(r->wait * 1000), 0);
        return;
    }
    send_refusal(s, r);
}

/* ---- upstream: connect, log in, relay ---- */

static void relay_done(void *arg, const char *why, const char *detail)
{
    session_t *s = arg;
    if (detail && detail[0])
        session_log(s, LL_INFO, "%s", detail);
    session_close(s, why);
}

/* Logged in (or, for on_connect's splice, connected): relay. */
static void upstream_ready(session_t *s, const char *reply, size_t len, const char *rest, size_t restlen)
{
    if (s->phase != PHASE_UPSTREAM)
        return;
    session_log(s, LL_INFO, "client logged in");
    conn_t *up = upstream_conn(s->up);
    uv_timer_stop(&s->timer);
    s->phase = PHASE_RELAY;
    /* reading the client goes on: the relay takes over its handler below,
     * in this same turn of the loop (a stop and a start would cost two
     * epoll_ctl calls) */
    session_write(s, reply, len);
    /* Pipelined client bytes go to the upstream first, then the relay. */
    if (s->phase == PHASE_RELAY && s->cin.len && conn_write(up, s->cin.data, s->cin.len) < 0)
        session_close(s, "upstream write failed");
    s->bytes_in += s->cin.len;
    session_write(s, rest, restlen);
    s->bytes_out += restlen;
    buf_free(&s->cin);
    /* The password is not needed any more: do not keep it in memory. */
    str_wipe_free(&s->cred.password);
    login_free(s->login);
    s->login = NULL;
    /* s.vars lives on for on_close only: without one, nothing of this
     * session stays in Lua while it relays */
    if (!policy_has_hook(s->policy, "on_close"))
        policy_session_release(s);
    if (s->phase != PHASE_RELAY)
        return;
    relay_conf_t rc = { .buffer = s->cfg->proxy_buffer, .client_eof = s->client_eof, .bytes_in = &s->bytes_in,
                        .bytes_out = &s->bytes_out, .done = relay_done, .arg = s };
    uv_timer_start(&s->timer, on_timeout, (uint64_t)(s->cfg->proxy_timeout * 1000), 0);
    s->relay = relay_start(&s->client, up, &rc, uv_now(s->loop));
}

static void login_ok(void *owner, const char *reply, size_t len, const char *rest, size_t restlen)
{
    upstream_ready(owner, reply, len, rest, restlen);
}

/* The upstream refused the credentials: the client hears the upstream's
 * words, and may try again. */
static void login_no(void *owner, const char *reply, size_t len, const char *log_text)
{
    session_t *s = owner;
    if (s->phase != PHASE_UPSTREAM)
        return;
    session_log(s, LL_INFO, "upstream refused login: \"%.200s\"", log_text);
    session_write(s, reply, len);
    if (s->proto->attempt_failed)
        s->proto->attempt_failed(s);
    close_upstream(s);
    back_to_preauth(s);
}

/* The upstream could not be reached, or its login went wrong (not a refusal). */
static void up_failed(void *owner, const char *why)
{
    upstream_failed(owner, why);
}

static void login_log_line(void *owner, int level, const char *msg)
{
    session_log(owner, level, "%s", msg);
}

static const login_events_t login_events = {
    .ready = login_ok, .refused = login_no, .failed = up_failed, .log = login_log_line,
};

static void up_connected(void *owner, conn_t *c)
{
    session_t *s = owner;
    if (s->phase != PHASE_UPSTREAM)
        return;
    session_log(s, LL_DEBUG, "connected to upstream");
    if (s->splice) {
        upstream_ready(s, NULL, 0, NULL, 0);
        return;
    }
    /* The login gets the pre-auth `timeout`, as in nginx. */
    session_set_timeout(s, s->cfg->timeout);
    const upstream_t *u = &s->upstreams[s->upstream_idx - 1];
    login_params_t p = {
        .proto = s->proto,
        .pstate = s->pstate,
        .upstream = u,
        .listener = s->listener,
        .tls_client = u->tls != UPSTREAM_TLS_OFF ? config_tls_client((config_t *)s->cfg) : NULL,
        .user = u->user ? u->user : s->cred.user,
        .password = u->password ? u->password : s->cred.password,
        .cred = &s->cred,
        .tag = s->auth.tag,
        .client_ip = s->client_ip,
        .client_port = s->client_port,
        .server_name = s->cfg->server_name,
        .ev = &login_events,
        .owner = s,
    };
    s->login = login_new(c, &p);
    login_begin(s->login);
}

static const upstream_events_t upstream_events = { .connected = up_connected, .failed = up_failed };

/* Tries s->upstreams[s->upstream_idx++]. */
static void connect_next(session_t *s)
{
    const upstream_t *u = &s->upstreams[s->upstream_idx++];
    s->phase = PHASE_UPSTREAM;
    snprintf(s->upstream_name, sizeof s->upstream_name, "%s:%d", u->host, u->port);
    /* Connect and login share one budget per upstream: connect_timeout
     * until connected, then the login timeout. */
    session_set_timeout(s, s->cfg->connect_timeout);
    char hdr[PROXY_HEADER_OUT_MAX];
    size_t hl = u->proxy_protocol
                    ? proxy_format(u->proxy_protocol, s->client_ip, s->client_port, s->local_ip, s->local_port, hdr)
                    : 0;
    upstream_params_t p = {
        .u = u,
        .proxy_header = hl ? hdr : NULL,
        .proxy_header_len = hl,
        .ev = &upstream_events,
        .owner = s,
    };
    char err[200];
    s->up = upstream_connect(s->loop, &p, err, sizeof err);
    if (!s->up)
        upstream_failed(s, err);
}

/* The upstream misbehaved (bad greeting, closed, timed out): the next one,
 * or a temporary failure. */
static void upstream_failed(session_t *s, const char *why)
{
    if (s->phase != PHASE_UPSTREAM)
        return;
    session_log(s, LL_WARN, "%s", why);
    close_upstream(s);
    if (s->upstream_idx < s->nupstreams) {
        connect_next(s);
        return;
    }
    if (s->splice) {
        s->close_reason = "no upstream reachable";
        preauth_reply(s, REPLY_BYE, "Service temporarily unavailable");
        session_quit(s);
        return;
    }
    refusal_t r = { .message = NULL, .temporary = true };
    session_refuse(s, &r);
}
