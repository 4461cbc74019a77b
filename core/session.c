/* session.c: the life of one client connection. Phases follow each other
 * (connect hook, pre-auth, auth hook, upstream login, relay); every
 * callback first checks that the session is not closing. All memory of a
 * session is freed in session_free(), once its last uv handle is closed. */
#include "session.h"
#include "mem.h"

#include "log.h"
#include "proxy_proto.h"
#include "lua_bridge.h"
#include "tls.h"
#include "relay.h"
#include "upstream.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OUT_HIGH (64 * 1024)   /* stop parsing client input above this much queued output */
#define OUT_LOW (16 * 1024)

static session_t *sessions;
static int nsessions;
static uint64_t next_id;

typedef struct write_req {
    uv_write_t req;
    session_t *s;
    size_t len;
    char *data;
} write_req_t;

#define SESSION_RAW_SIZE 16384 /* one read of ciphertext */

static void session_free(session_t *s);
static void session_ready(session_t *s);
static void session_begin(session_t *s);
static void proxy_header_input(session_t *s);
static void client_tls_input(session_t *s, const char *data, size_t len);
static void process_input(session_t *s);
static void back_to_preauth(session_t *s);
static void tls_handshake_finished(session_t *s);
static void client_read_start(session_t *s);
static void on_timeout(uv_timer_t *t);

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

void session_handle_closed(session_t *s)
{
    if (--s->handles == 0)
        session_free(s);
}

static void on_handle_closed(uv_handle_t *h)
{
    session_handle_closed(h->data);
}

static void addr_to_string(const struct sockaddr_storage *ss, char *ip, size_t iplen, int *port)
{
    ip[0] = '\0';
    *port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        uv_ip4_name(a, ip, iplen);
        *port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, ip, iplen);
        *port = ntohs(a->sin6_port);
    }
}

static void start_protocol(session_t *s)
{
    s->phase = PHASE_PREAUTH;
    session_set_timeout(s, s->cfg->timeout);
    s->proto->start(s);
}

void session_accept(uv_stream_t *server, config_t *cfg, const listen_conf_t *l)
{
    session_t *s = xcalloc(1, sizeof *s);
    s->loop = server->loop;
    s->cfg = config_acquire(cfg);
    s->listener = l;
    s->proto = l->proto;
    s->vars_ref = -2; /* LUA_NOREF */
    s->id = ++next_id;
    s->start_ms = uv_now(s->loop);
    buf_init(&s->cin, cfg->client_buffer);
    buf_init(&s->uin, 64 * 1024);
    uv_tcp_init(s->loop, &s->client);
    s->client.data = s;
    s->handles = 1;
    if (uv_accept(server, (uv_stream_t *)&s->client) != 0) {
        s->phase = PHASE_CLOSING;
        uv_close((uv_handle_t *)&s->client, on_handle_closed);
        return;
    }
    uv_timer_init(s->loop, &s->timer);
    s->timer.data = s;
    s->handles++;
    uv_tcp_nodelay(&s->client, 1);

    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&s->client, (struct sockaddr *)&ss, &len) == 0)
        addr_to_string(&ss, s->client_ip, sizeof s->client_ip, &s->client_port);
    len = sizeof ss;
    if (uv_tcp_getsockname(&s->client, (struct sockaddr *)&ss, &len) == 0)
        addr_to_string(&ss, s->local_ip, sizeof s->local_ip, &s->local_port);

    s->pstate = xcalloc(1, s->proto->state_size);
    s->policy = lb_policy_acquire();
    s->next = sessions;
    if (sessions)
        sessions->prev = s;
    sessions = s;
    nsessions++;
    session_log(s, LL_INFO, "client connected");

    if (l->proxy_protocol) { /* the balancer's header comes before anything else, TLS included */
        s->phase = PHASE_PROXY_HEADER;
        session_set_timeout(s, s->cfg->timeout);
        client_read_start(s);
        return;
    }
    session_begin(s);
}

/* The client's addresses are known: TLS on a TLS port, then session_ready. */
static void session_begin(session_t *s)
{
    if (s->listener->tls) { /* implicit TLS: the handshake comes before anything else */
        s->ctls = tls_conn_server(s->listener->tls_server);
        if (!s->ctls) {
            session_close(s, "cannot set up TLS");
            return;
        }
        s->phase = PHASE_TLS_HANDSHAKE;
        session_set_timeout(s, s->cfg->timeout);
        client_read_start(s);
        return;
    }
    client_read_start(s);
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
        s->cin.len = 0;
        session_begin(s);
        if (early && s->phase == PHASE_TLS_HANDSHAKE)
            client_tls_input(s, early, len);
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
    if (lb_has_hook(s->policy, "on_connect")) {
        s->phase = PHASE_CONNECT_HOOK;
        session_set_timeout(s, s->cfg->auth_timeout);
        lb_run_connect(s);
    } else {
        start_protocol(s);
    }
}

static void tls_handshake_finished(session_t *s)
{
    if (s->listener->verify_client && tls_peer_cert_failed(s->ctls)) {
        /* "optional" lets a client without a certificate in; one whose
         * certificate does not verify is refused, as nginx does */
        session_log(s, LL_INFO, "client certificate refused: %s", tls_peer_verify_error(s->ctls));
        s->close_reason = "client certificate error";
        s->proto->bye(s, "SSL certificate error");
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
    if (s->proto->tls_started)
        s->proto->tls_started(s);
}

void session_starttls(session_t *s)
{
    if (s->phase != PHASE_PREAUTH || s->ctls || !s->listener->tls_server)
        return;
    /* Whatever the client pipelined behind STARTTLS is plaintext an
     * attacker could have injected: it is dropped, never executed. */
    if (s->cin.len)
        session_log(s, LL_INFO, "dropped %zu bytes sent after STARTTLS", s->cin.len);
    s->cin.len = 0;
    s->ctls = tls_conn_server(s->listener->tls_server);
    if (!s->ctls) {
        session_close(s, "cannot set up TLS");
        return;
    }
    s->starttls = true;
    s->phase = PHASE_TLS_HANDSHAKE;
    session_set_timeout(s, s->cfg->timeout);
    client_read_start(s);
}

const char *session_capabilities(const session_t *s)
{
    const listen_conf_t *l = s->listener;
    return l->starttls && !s->tls_active && l->capabilities_starttls ? l->capabilities_starttls : l->capabilities;
}

bool session_tls_required(const session_t *s)
{
    return s->listener->starttls == 2 && !s->tls_active;
}

/* ---- client input before the relay ---- */

static void client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    session_t *s = h->data;
    (void)suggested;
    if (s->ctls) { /* ciphertext goes to a scratch buffer, plaintext to cin */
        if (!s->raw)
            s->raw = xmalloc(SESSION_RAW_SIZE);
        *b = uv_buf_init(s->raw, s->raw ? SESSION_RAW_SIZE : 0);
        return;
    }
    size_t want = buf_room(&s->cin);
    if (want > 16384)
        want = 16384;
    if (want == 0 || buf_reserve(&s->cin, want) < 0) {
        *b = uv_buf_init(NULL, 0);
        return;
    }
    *b = uv_buf_init(s->cin.data + s->cin.len, (unsigned)want);
}

static int client_decrypt(session_t *s);

static void process_input(session_t *s)
{
    if (s->phase != PHASE_PREAUTH || s->quit)
        return;
    do
        s->proto->client_input(s);
    while (s->phase == PHASE_PREAUTH && !s->quit && !session_output_blocked(s) && s->ctls &&
           tls_pending(s->ctls) && client_decrypt(s) > 0);
    if (s->phase != PHASE_PREAUTH || s->quit || session_output_blocked(s))
        return;
    if (s->client_eof) /* every command the client sent before its EOF is answered */
        session_quit(s);
    else if (buf_room(&s->cin) > 0)
        client_read_start(s);
}

/* New bytes in pre-auth. The idle timer restarts only once everything
 * received so far made whole commands: a client that drips a line a
 * byte at a time cannot keep its connection past `timeout`. */
static void preauth_input(session_t *s)
{
    process_input(s);
    if (s->phase == PHASE_PREAUTH && !s->quit && !s->proto_timer && s->cin.len == 0)
        session_set_timeout(s, s->cfg->timeout);
}

/* ---- TLS towards the client ---- */

static void write_raw(session_t *s, char *data, size_t len); /* takes data */

static void flush_tls(session_t *s)
{
    size_t n;
    char *out = tls_out_take(s->ctls, &n);
    if (out)
        write_raw(s, out, n);
}

/* Plaintext from the TLS context into cin: > 0 bytes added, 0 none now,
 * -1 the session was closed. */
static int client_decrypt(session_t *s)
{
    int added = 0;
    while (buf_room(&s->cin) > 0) {
        size_t want = buf_room(&s->cin) < 16384 ? buf_room(&s->cin) : 16384;
        if (buf_reserve(&s->cin, want) < 0)
            break;
        int n = tls_read(s->ctls, s->cin.data + s->cin.len, want);
        if (n > 0) {
            s->cin.len += (size_t)n;
            added += n;
            continue;
        }
        if (n == PT_AGAIN)
            break;
        flush_tls(s);
        if (n == PT_EOF) {
            if (s->cin.len > 0 && s->phase != PHASE_CONNECT_HOOK) {
                s->client_eof = true;
                s->close_reason = "client closed connection";
                return added;
            }
            session_close(s, "client closed connection");
        } else {
            session_log(s, LL_INFO, "%s", tls_error(s->ctls));
            session_close(s, "TLS error");
        }
        return -1;
    }
    flush_tls(s); /* mbedTLS may have answered something (alerts) */
    return added;
}

static void client_tls_input(session_t *s, const char *data, size_t len)
{
    if (tls_feed(s->ctls, data, len) < 0) {
        session_close(s, "TLS input too large");
        return;
    }
    if (!tls_handshake_done(s->ctls)) {
        int rc = tls_handshake(s->ctls);
        flush_tls(s);
        if (rc == PT_AGAIN)
            return;
        if (rc == PT_ERROR) {
            session_log(s, LL_INFO, "%s", tls_error(s->ctls));
            session_close(s, "TLS handshake failed");
            return;
        }
        s->tls_active = true;
        session_log(s, LL_DEBUG, "TLS handshake done: %s, %s%s%s", tls_protocol(s->ctls), tls_cipher(s->ctls),
                    tls_sni(s->ctls) ? ", SNI " : "", tls_sni(s->ctls) ? tls_sni(s->ctls) : "");
        if (s->phase == PHASE_TLS_HANDSHAKE) {
            tls_handshake_finished(s);
            if (s->phase == PHASE_CLOSING)
                return;
        }
    }
    int added = client_decrypt(s);
    if (added < 0)
        return;
    if (s->phase == PHASE_PREAUTH) {
        if (added > 0 || s->client_eof) /* a partial TLS record is no command: the timer goes on */
            preauth_input(s);
    } else if (buf_room(&s->cin) == 0 && s->client_reading) {
        uv_read_stop((uv_stream_t *)&s->client);
        s->client_reading = false;
    }
}

static void client_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    session_t *s = st->data;
    (void)b;
    if (s->phase == PHASE_CLOSING)
        return;
    if (nread == UV_ENOBUFS) {
        uv_read_stop(st);
        s->client_reading = false;
        return;
    }
    if (nread < 0 && s->phase == PHASE_PROXY_HEADER) {
        session_close(s, "client closed connection before its PROXY header");
        return;
    }
    if (nread == UV_EOF && s->ctls && s->tls_active && client_decrypt(s) < 0)
        return; /* the last records before the EOF are plaintext too */
    if (nread == UV_EOF && s->cin.len > 0 && s->phase != PHASE_CONNECT_HOOK) {
        /* A half-close after pipelined commands (printf ... | nc -N):
         * answer them all, then close (see process_input and the relay).
         * With nothing left to answer, an EOF ends the session at once,
         * even in the middle of a login: the client is gone. */
        s->client_eof = true;
        s->close_reason = "client closed connection";
        uv_read_stop(st);
        s->client_reading = false;
        if (s->phase == PHASE_PREAUTH)
            process_input(s);
        return;
    }
    if (nread < 0) {
        s->client_eof = true;
        session_close(s, nread == UV_EOF ? "client closed connection" : uv_err_name((int)nread));
        return;
    }
    if (nread == 0)
        return;
    if (s->ctls) {
        client_tls_input(s, b->base, (size_t)nread);
        return;
    }
    s->cin.len += (size_t)nread;
    if (s->phase == PHASE_PROXY_HEADER) {
        proxy_header_input(s);
        return;
    }
    if (s->phase == PHASE_PREAUTH) {
        preauth_input(s);
    } else if (buf_room(&s->cin) == 0) {
        /* Busy elsewhere (a hook, the upstream login): keep what came,
         * read no more until we get back to it. */
        uv_read_stop(st);
        s->client_reading = false;
    }
}

static void client_read_start(session_t *s)
{
    if (s->client_reading || s->phase == PHASE_CLOSING || s->quit || s->client_eof)
        return;
    if (uv_read_start((uv_stream_t *)&s->client, client_alloc, client_read) == 0)
        s->client_reading = true;
}

/* ---- client output ---- */

bool session_output_blocked(const session_t *s)
{
    return s->client_queued > OUT_HIGH;
}

static void client_written(uv_write_t *req, int status)
{
    write_req_t *w = (write_req_t *)req;
    session_t *s = w->s;
    s->client_queued -= w->len;
    free(w->data);
    free(w);
    if (s->phase == PHASE_CLOSING)
        return;
    if (status < 0) {
        session_close(s, uv_err_name(status));
        return;
    }
    if (s->quit && s->client_queued == 0) {
        session_close(s, s->close_reason ? s->close_reason : "closed by server");
        return;
    }
    if (s->phase == PHASE_PREAUTH && s->client_queued < OUT_LOW && !s->client_reading)
        process_input(s);
}

/* Queues bytes as they are on the wire; takes ownership of data. */
static void write_raw(session_t *s, char *data, size_t len)
{
    if (s->phase == PHASE_CLOSING || len == 0) {
        free(data);
        return;
    }
    write_req_t *w = xmalloc(sizeof *w);
    w->s = s;
    w->len = len;
    w->data = data;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    s->client_queued += len;
    int rc = uv_write(&w->req, (uv_stream_t *)&s->client, &b, 1, client_written);
    if (rc < 0) {
        s->client_queued -= len;
        free(w->data);
        free(w);
        session_close(s, uv_err_name(rc));
        return;
    }
    if (session_output_blocked(s) && s->client_reading && s->phase == PHASE_PREAUTH) {
        uv_read_stop((uv_stream_t *)&s->client);
        s->client_reading = false;
    }
}

void session_write(session_t *s, const void *data, size_t len)
{
    if (s->phase == PHASE_CLOSING || len == 0)
        return;
    if (s->ctls && s->tls_active) {
        if (tls_write(s->ctls, data, len) < 0) {
            session_log(s, LL_INFO, "%s", tls_error(s->ctls));
            session_close(s, "TLS error");
            return;
        }
        flush_tls(s);
        return;
    }
    char *copy = xmalloc(len);
    memcpy(copy, data, len);
    write_raw(s, copy, len);
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
    if (s->client_reading) {
        uv_read_stop((uv_stream_t *)&s->client);
        s->client_reading = false;
    }
    if (s->ctls && s->tls_active) { /* a clean TLS end (close_notify) after the last words */
        tls_close_notify(s->ctls);
        flush_tls(s);
    }
    if (s->client_queued == 0)
        session_close(s, s->close_reason ? s->close_reason : "closed by server");
}

void session_error(session_t *s)
{
    if (++s->errors >= s->cfg->max_errors) {
        session_log(s, LL_INFO, "client sent too many invalid commands");
        s->close_reason = "too many invalid commands";
        if (!s->proto->no_last_words)
            s->proto->bye(s, "Too many invalid commands");
        session_quit(s);
    }
}

/* ---- closing ---- */

void session_close(session_t *s, const char *why)
{
    if (s->phase == PHASE_CLOSING)
        return;
    s->phase = PHASE_CLOSING;
    s->close_reason = why;
    if (s->task) {
        lb_task_cancel(s->task);
        s->task = NULL;
    }
    upstream_close(s);
    uv_timer_stop(&s->timer);
    session_log(s, LL_INFO, "session closed (%s), %llu bytes from client, %llu bytes to client", why,
                (unsigned long long)s->bytes_in, (unsigned long long)s->bytes_out);
    if (lb_has_hook(s->policy, "on_close"))
        lb_run_close(s);
    s->client.data = s; /* the relay may have pointed it elsewhere */
    uv_close((uv_handle_t *)&s->client, on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
}

void session_close_all(void)
{
    for (session_t *s = sessions; s; s = s->next)
        session_close(s, "shutting down");
}

void session_reset_credentials(session_t *s)
{
    credentials_clear(&s->cred);
}

void envelope_clear(envelope_t *e)
{
    free(e->helo);
    free(e->mail_from);
    free(e->mail_line);
    free(e->rcpt_line);
    for (int i = 0; i < e->nrcpt; i++)
        free(e->rcpt_to[i]);
    memset(e, 0, sizeof *e);
}

void refusal_free(refusal_t *r)
{
    if (!r)
        return;
    free(r->message);
    free(r->code);
    free(r);
}

void upstreams_free(upstream_t *u, int n)
{
    for (int i = 0; i < n; i++) {
        free(u[i].host);
        free(u[i].user);
        free(u[i].auth);
        free(u[i].sni);
        free(u[i].certificate);
        free(u[i].key);
        if (u[i].password) {
            explicit_bzero(u[i].password, strlen(u[i].password));
            free(u[i].password);
        }
    }
    free(u);
}

static void session_free(session_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else if (sessions == s)
        sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    nsessions--;
    relay_free(s->relay);
    refusal_free(s->pending_refusal);
    tls_conn_free(s->ctls);
    free(s->raw);
    upstreams_free(s->upstreams, s->nupstreams);
    session_reset_credentials(s);
    envelope_clear(&s->env);
    buf_free(&s->cin);
    buf_free(&s->uin);
    if (s->pstate) {
        s->proto->cleanup(s);
        explicit_bzero(s->pstate, s->proto->state_size);
        free(s->pstate);
    }
    lb_session_release(s);
    lb_policy_release(s->policy);
    config_release((config_t *)s->cfg);
    free(s);
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
            s->proto->on_timer(s);
            return;
        }
        session_log(s, LL_INFO, "client timed out");
        s->close_reason = "client timed out";
        if (!s->proto->no_last_words)
            s->proto->bye(s, "Autologout; idle for too long");
        session_quit(s);
        return;
    case PHASE_CONNECT_HOOK:
    case PHASE_AUTH_HOOK: {
        session_log(s, LL_ERROR, "policy hook timed out after %gs", s->cfg->auth_timeout);
        lb_task_cancel(s->task);
        s->task = NULL;
        session_hook_done(s, HOOK_ERROR, NULL, 0, NULL);
        return;
    }
    case PHASE_UPSTREAM:
        session_upstream_failed(s, "upstream timed out");
        return;
    case PHASE_REFUSE_WAIT:
    case PHASE_RELAY:
        /* their own callbacks are installed on the timer */
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
    if (s->cred.mechanism && strcmp(s->cred.mechanism, "external") == 0) {
        /* EXTERNAL: the verified client certificate is the credential */
        char subject[512], issuer[512], serial[128], fp[128];
        if (!s->ctls || !s->tls_active ||
            !tls_peer_cert(s->ctls, subject, sizeof subject, issuer, sizeof issuer, serial, sizeof serial, fp,
                           sizeof fp)) {
            s->login_attempt++;
            refusal_t r = { .message = "No verified client certificate" };
            s->proto->auth_refused(s, &r);
            back_to_preauth(s);
            return;
        }
        if (!s->cred.user) { /* the user: the authzid, else the certificate's CN */
            const char *cn = strstr(subject, "CN=");
            const char *id = s->cred.authzid ? s->cred.authzid : cn ? cn + 3 : subject;
            s->cred.user = xstrndup(id, strcspn(id, ","));
        }
    }
    s->login_attempt++;
    s->phase = PHASE_AUTH_HOOK;
    session_set_timeout(s, s->cfg->auth_timeout);
    lb_run_authenticate(s);
}

/* After a refusal the client may try again, up to max_login_attempts. */
static void back_to_preauth(session_t *s)
{
    /* SMTP without AUTH asks the policy per recipient: a refused
     * recipient is not a failed login, and an MX must not drop a
     * transaction for a few unknown addresses (its valid recipients would
     * be deferred). Those get the envelope's own, larger limit. */
    bool envelope = s->cred.mechanism && strcmp(s->cred.mechanism, "none") == 0;
    int limit = envelope ? ENVELOPE_MAX_RCPT : s->cfg->max_login_attempts;
    session_reset_credentials(s);
    upstreams_free(s->upstreams, s->nupstreams);
    s->upstreams = NULL;
    s->nupstreams = s->upstream_idx = 0;
    s->upstream_name[0] = '\0';
    if (s->login_attempt >= limit) {
        session_log(s, LL_INFO, envelope ? "client reached %d refused recipients" : "client reached max_login_attempts (%d)",
                    limit);
        s->close_reason = envelope ? "too many refused recipients" : "too many failed logins";
        if (!s->proto->no_last_words)
            s->proto->bye(s, envelope ? "Too many refused recipients" : "Too many failed login attempts");
        session_quit(s);
        return;
    }
    s->phase = PHASE_PREAUTH;
    session_set_timeout(s, s->cfg->timeout);
    process_input(s);
    client_read_start(s);
}

static void send_refusal(session_t *s, refusal_t *r)
{
    refusal_t shown = *r;
    if (!s->cfg->proxy_pass_error_message)
        shown.message = NULL;
    if (shown.message) /* one line only: the message goes inside a reply */
        for (char *p = shown.message; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = ' ';
    s->proto->auth_refused(s, &shown);
    bool close = r->close;
    refusal_free(r);
    if (close) {
        s->close_reason = "refused by the policy";
        session_quit(s);
        return;
    }
    back_to_preauth(s);
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

void session_hook_done(session_t *s, hook_outcome_t outcome, upstream_t *ups, int nups, refusal_t *r)
{
    s->task = NULL;
    if (s->phase == PHASE_CLOSING) {
        upstreams_free(ups, nups);
        refusal_free(r);
        return;
    }
    if (s->phase == PHASE_CONNECT_HOOK) {
        uv_timer_stop(&s->timer);
        if (outcome == HOOK_CONTINUE) {
            start_protocol(s);
            if (s->phase == PHASE_PREAUTH && s->cin.len > 0) /* sent while the hook ran */
                process_input(s);
        } else if (outcome == HOOK_UPSTREAMS) {
            s->upstreams = ups;
            s->nupstreams = nups;
            s->upstream_idx = 0;
            s->splice = true;
            upstream_connect_next(s);
            ups = NULL;
        } else {
            s->close_reason = outcome == HOOK_REFUSE ? "refused by on_connect" : "on_connect failed";
            s->proto->bye(s, outcome == HOOK_REFUSE && r && r->message ? r->message
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
    if (outcome == HOOK_UPSTREAMS && nups > 0) {
        refusal_free(r);
        s->upstreams = ups;
        s->nupstreams = nups;
        s->upstream_idx = 0;
        upstream_connect_next(s);
        return;
    }
    upstreams_free(ups, nups);
    if (!r) {
        r = xcalloc(1, sizeof *r);
        r->temporary = outcome != HOOK_REFUSE;
    }
    if (outcome == HOOK_ERROR) {
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

/* ---- upstream login ---- */

const upstream_t *session_upstream(const session_t *s)
{
    return s->upstream_idx > 0 ? &s->upstreams[s->upstream_idx - 1] : NULL;
}

const char *session_upstream_user(const session_t *s)
{
    const upstream_t *u = session_upstream(s);
    return u && u->user ? u->user : s->cred.user;
}

const char *session_upstream_password(const session_t *s)
{
    const upstream_t *u = session_upstream(s);
    return u && u->password ? u->password : s->cred.password;
}

void session_upstream_write(session_t *s, const void *data, size_t len)
{
    upstream_write(s, data, len);
}

void session_upstream_ready(session_t *s, const char *reply, size_t len)
{
    if (s->phase != PHASE_UPSTREAM)
        return;
    session_log(s, LL_INFO, "client logged in");
    session_write(s, reply, len);
    uv_timer_stop(&s->timer);
    s->phase = PHASE_RELAY;
    if (s->client_reading) {
        uv_read_stop((uv_stream_t *)&s->client);
        s->client_reading = false;
    }
    /* Pipelined client bytes go to the upstream first, then the relay. */
    if (s->cin.len)
        session_upstream_write(s, s->cin.data, s->cin.len);
    s->bytes_in += s->cin.len;
    if (s->uin.len)
        session_write(s, s->uin.data, s->uin.len);
    s->bytes_out += s->uin.len;
    buf_free(&s->cin);
    buf_free(&s->uin);
    /* The password is not needed any more: do not keep it in memory. */
    if (s->cred.password) {
        explicit_bzero(s->cred.password, strlen(s->cred.password));
        free(s->cred.password);
        s->cred.password = NULL;
    }
    if (relay_start(s) < 0)
        session_close(s, "relay failed to start");
}

void session_upstream_refused(session_t *s)
{
    if (s->phase != PHASE_UPSTREAM)
        return;
    session_log(s, LL_INFO, "upstream refused the login");
    upstream_close(s);
    back_to_preauth(s);
}

void session_upstream_failed(session_t *s, const char *why)
{
    if (s->phase != PHASE_UPSTREAM)
        return;
    session_log(s, LL_WARN, "%s", why);
    upstream_close(s);
    if (s->upstream_idx < s->nupstreams) {
        upstream_connect_next(s);
        return;
    }
    if (s->splice) {
        s->close_reason = "no upstream reachable";
        s->proto->bye(s, "Service temporarily unavailable");
        session_quit(s);
        return;
    }
    refusal_t r = { .message = NULL, .temporary = true };
    s->proto->auth_refused(s, &r);
    back_to_preauth(s);
}
