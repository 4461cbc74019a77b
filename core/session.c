/* session.c: the life of one client connection. Phases follow each other
 * (connect hook, pre-auth, auth hook, upstream login, relay); every
 * callback first checks that the session is not closing. All memory of a
 * session is freed in session_free(), once its last uv handle is closed. */
#include "session.h"

#include "log.h"
#include "lua_bridge.h"
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
    char data[];
} write_req_t;

static void session_free(session_t *s);
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
    session_t *s = calloc(1, sizeof *s);
    if (!s)
        return;
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

    s->pstate = calloc(1, s->proto->state_size);
    s->policy = lb_policy_acquire();
    s->next = sessions;
    if (sessions)
        sessions->prev = s;
    sessions = s;
    nsessions++;
    session_log(s, LL_INFO, "client connected");

    client_read_start(s);
    if (lb_has_hook(s->policy, "on_connect")) {
        s->phase = PHASE_CONNECT_HOOK;
        session_set_timeout(s, s->cfg->auth_timeout);
        lb_run_connect(s);
    } else {
        start_protocol(s);
    }
}

/* ---- client input before the relay ---- */

static void client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    session_t *s = h->data;
    (void)suggested;
    size_t want = buf_room(&s->cin);
    if (want > 16384)
        want = 16384;
    if (want == 0 || buf_reserve(&s->cin, want) < 0) {
        *b = uv_buf_init(NULL, 0);
        return;
    }
    *b = uv_buf_init(s->cin.data + s->cin.len, (unsigned)want);
}

static void process_input(session_t *s)
{
    if (s->phase != PHASE_PREAUTH || s->quit)
        return;
    s->proto->client_input(s);
    if (s->phase != PHASE_PREAUTH || s->quit || session_output_blocked(s))
        return;
    if (s->client_eof) /* every command the client sent before its EOF is answered */
        session_quit(s);
    else if (buf_room(&s->cin) > 0)
        client_read_start(s);
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
    s->cin.len += (size_t)nread;
    if (s->phase == PHASE_PREAUTH) {
        if (!s->proto_timer)
            session_set_timeout(s, s->cfg->timeout);
        process_input(s);
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

void session_write(session_t *s, const void *data, size_t len)
{
    if (s->phase == PHASE_CLOSING || len == 0)
        return;
    write_req_t *w = malloc(sizeof *w + len);
    if (!w) {
        session_close(s, "out of memory");
        return;
    }
    w->s = s;
    w->len = len;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    s->client_queued += len;
    int rc = uv_write(&w->req, (uv_stream_t *)&s->client, &b, 1, client_written);
    if (rc < 0) {
        s->client_queued -= len;
        free(w);
        session_close(s, uv_err_name(rc));
        return;
    }
    if (session_output_blocked(s) && s->client_reading && s->phase == PHASE_PREAUTH) {
        uv_read_stop((uv_stream_t *)&s->client);
        s->client_reading = false;
    }
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
    if (s->client_queued == 0)
        session_close(s, s->close_reason ? s->close_reason : "closed by server");
}

void session_error(session_t *s)
{
    if (++s->errors >= s->cfg->max_errors) {
        session_log(s, LL_INFO, "client sent too many invalid commands");
        s->close_reason = "too many invalid commands";
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
    case PHASE_PREAUTH:
        if (s->proto_timer) {
            s->proto_timer = false;
            s->proto->on_timer(s);
            return;
        }
        session_log(s, LL_INFO, "client timed out");
        s->close_reason = "client timed out";
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
    s->login_attempt++;
    s->phase = PHASE_AUTH_HOOK;
    session_set_timeout(s, s->cfg->auth_timeout);
    lb_run_authenticate(s);
}

/* After a refusal the client may try again, up to max_login_attempts. */
static void back_to_preauth(session_t *s)
{
    session_reset_credentials(s);
    upstreams_free(s->upstreams, s->nupstreams);
    s->upstreams = NULL;
    s->nupstreams = s->upstream_idx = 0;
    s->upstream_name[0] = '\0';
    if (s->login_attempt >= s->cfg->max_login_attempts) {
        session_log(s, LL_INFO, "client reached max_login_attempts (%d)", s->cfg->max_login_attempts);
        s->close_reason = "too many failed logins";
        s->proto->bye(s, "Too many failed login attempts");
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
        r = calloc(1, sizeof *r);
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

typedef struct up_write_req {
    uv_write_t req;
    size_t len;
    char data[];
} up_write_req_t;

static void upstream_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error on the same stream */
    up_write_req_t *w = (up_write_req_t *)req;
    explicit_bzero(w->data, w->len); /* login commands carry the password */
    free(req);
}

void session_upstream_write(session_t *s, const void *data, size_t len)
{
    uv_stream_t *st = upstream_stream(s);
    if (!st || len == 0)
        return;
    up_write_req_t *w = malloc(sizeof *w + len);
    if (!w) {
        session_close(s, "out of memory");
        return;
    }
    w->len = len;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, st, &b, 1, upstream_written) < 0) {
        free(w);
        session_upstream_failed(s, "write to upstream failed");
    }
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
