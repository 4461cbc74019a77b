/* http_client.c: postern.http.request{ method, url, headers, body, timeout,
 * max_size, verify } -> { status, headers, body } or nil, message.
 *
 * libcurl's multi interface driven by the libuv loop (curl's
 * docs/examples/multi-uv.c): one uv_poll per curl socket, one uv_timer for
 * curl's timeout. Connections are kept alive and reused by the multi
 * handle. Lua is resumed only from the completion drain, never from inside
 * a curl callback (curl forbids re-entering it there). */
#include "buf.h"
#include "lua_lib.h"
#include "lua_task.h"
#include "mem.h"
#include "status.h"

#include <curl/curl.h>
#include <lauxlib.h>
#include <lua.h>

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define HTTP_MAX_SIZE_DEFAULT (1024 * 1024)
#define HTTP_MAX_HEADERS (64 * 1024)

typedef struct http_req {
    task_wait_t w;
    CURL *easy;
    struct curl_slist *headers;
    char *body;           /* request body */
    buf_t resp;           /* response body, up to max_size */
    buf_t resp_headers;   /* raw header lines of the last response */
    bool too_big;
} http_req_t;

typedef struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
} sock_ctx_t;

static CURLM *multi;
static uv_timer_t curl_timer;
static bool timer_open;

static void req_free(http_req_t *r)
{
    if (r->easy)
        curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    free(r->body);
    buf_free(&r->resp);
    buf_free(&r->resp_headers);
    free(r);
}

/* ---- completion ---- */

static void push_headers(lua_State *L, const buf_t *h)
{
    lua_newtable(L);
    size_t pos = 0;
    while (pos < h->len) {
        const char *line = h->data + pos;
        const char *nl = memchr(line, '\n', h->len - pos);
        size_t ll = nl ? (size_t)(nl - line) : h->len - pos;
        pos += ll + 1;
        while (ll && (line[ll - 1] == '\r' || line[ll - 1] == ' '))
            ll--;
        const char *colon = memchr(line, ':', ll);
        if (!colon || colon == line)
            continue; /* the status line */
        char name[128];
        size_t nlen = (size_t)(colon - line) < sizeof name - 1 ? (size_t)(colon - line) : sizeof name - 1;
        for (size_t i = 0; i < nlen; i++)
            name[i] = (char)tolower((unsigned char)line[i]);
        name[nlen] = '\0';
        const char *v = colon + 1;
        while (v < line + ll && *v == ' ')
            v++;
        lua_getfield(L, -1, name);
        if (lua_isstring(L, -1)) { /* a repeated header: joined as RFC 9110 allows */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, v, (size_t)(line + ll - v));
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, v, (size_t)(line + ll - v));
        }
        lua_setfield(L, -2, name);
    }
}

static void drain(void)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode result = msg->data.result;
        http_req_t *r = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
        curl_multi_remove_handle(multi, easy);
        lua_State *L = task_wait_state(&r->w);
        int n;
        if (r->too_big) {
            lua_pushnil(L);
            lua_pushliteral(L, "response larger than max_size");
            n = 2;
        } else if (result != CURLE_OK) {
            lua_pushnil(L);
            lua_pushstring(L, result == CURLE_OPERATION_TIMEDOUT ? "timeout" : curl_easy_strerror(result));
            lua_pushinteger(L, (lua_Integer)result);
            n = 3;
        } else {
            long status = 0;
            curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
            lua_createtable(L, 0, 3);
            lua_pushinteger(L, status);
            lua_setfield(L, -2, "status");
            push_headers(L, &r->resp_headers);
            lua_setfield(L, -2, "headers");
            lua_pushlstring(L, r->resp.data ? r->resp.data : "", r->resp.len);
            lua_setfield(L, -2, "body");
            n = 1;
        }
        task_wait_t *w = &r->w;
        task_wait_done(w, n);
        req_free(r);
    }
}

/* ---- curl <-> libuv ---- */

static void poll_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    sock_ctx_t *c = p->data;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR; /* libuv has stopped the handle: tell curl */
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(multi, c->fd, flags, &running);
    drain();
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)userp;
    sock_ctx_t *c = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (c) {
            uv_poll_stop(&c->poll);
            uv_close((uv_handle_t *)&c->poll, poll_closed);
            curl_multi_assign(multi, s, NULL);
        }
        return 0;
    }
    if (!c) {
        c = xcalloc(1, sizeof *c);
        c->fd = s;
        if (uv_poll_init_socket(task_loop(), &c->poll, s) < 0) {
            free(c);
            return -1;
        }
        c->poll.data = c;
        curl_multi_assign(multi, s, c);
    }
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    uv_poll_start(&c->poll, events, on_poll);
    return 0;
}

static void on_curl_timer(uv_timer_t *t)
{
    (void)t;
    int running;
    curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain();
}

static int on_timer_change(CURLM *m, long timeout_ms, void *userp)
{
    (void)m;
    (void)userp;
    if (timeout_ms < 0)
        uv_timer_stop(&curl_timer);
    else
        uv_timer_start(&curl_timer, on_curl_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static int ensure_multi(void)
{
    if (multi)
        return 0;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
        return PT_ERROR;
    multi = curl_multi_init();
    if (!multi)
        return PT_ERROR;
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, 64L);
    uv_timer_init(task_loop(), &curl_timer);
    timer_open = true;
    return 0;
}

void http_shutdown(void)
{
    if (!multi)
        return;
    curl_multi_cleanup(multi); /* closes the kept-alive connections */
    multi = NULL;
    if (timer_open) {
        uv_close((uv_handle_t *)&curl_timer, NULL);
        timer_open = false;
    }
    curl_global_cleanup();
}

/* ---- the request ---- */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    http_req_t *r = ud;
    if (buf_append(&r->resp, p, size * n) < 0) {
        r->too_big = true;
        return 0; /* makes curl stop with a write error */
    }
    return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    http_req_t *r = ud;
    if (size * n >= 5 && strncmp(p, "HTTP/", 5) == 0)
        buf_clear(&r->resp_headers); /* a new response (after 100 Continue or a redirect) */
    if (buf_append(&r->resp_headers, p, size * n) < 0)
        return 0;
    return size * n;
}

static void cancel(task_wait_t *w)
{
    http_req_t *r = (http_req_t *)w;
    curl_multi_remove_handle(multi, r->easy);
    req_free(r);
}

static int safe_header_part(const char *s)
{
    return !strpbrk(s, "\r\n");
}

static int l_request(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "url");
    const char *url = lua_tostring(L, -1);
    if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
        return luaL_argerror(L, 1, "url must be an http:// or https:// URL");
    lua_getfield(L, 1, "method");
    const char *method = luaL_optstring(L, -1, "GET");
    lua_getfield(L, 1, "timeout");
    double timeout = luaL_optnumber(L, -1, 10);
    lua_getfield(L, 1, "max_size");
    double max_size = luaL_optnumber(L, -1, HTTP_MAX_SIZE_DEFAULT);
    lua_getfield(L, 1, "verify");
    int verify = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
    lua_getfield(L, 1, "body");
    size_t body_len = 0;
    const char *body = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, &body_len);
    if (!(timeout > 0) || !(max_size >= 0) || strpbrk(method, " \r\n") || !method[0])
        return luaL_argerror(L, 1, "timeout must be > 0, max_size >= 0, method one word");
    lua_getfield(L, 1, "headers");
    int hidx = lua_gettop(L);
    if (!lua_isnil(L, hidx))
        luaL_checktype(L, hidx, LUA_TTABLE);

    task_wait_check(L, "postern.http.request");
    if (ensure_multi() < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "cannot initialise libcurl");
        return 2;
    }
    http_req_t *r = xcalloc(1, sizeof *r);
    r->w.cancel = cancel;
    buf_init(&r->resp, (size_t)max_size);
    buf_init(&r->resp_headers, HTTP_MAX_HEADERS);
    /* headers: { Name = "value" }, or an ordered list { {"Name", "value"}, ... }
     * that says exactly what goes out (in that order, empty values too,
     * and none of curl's own User-Agent and Accept) */
    bool exact = false;
    if (!lua_isnil(L, hidx)) {
        int n = (int)lua_objlen(L, hidx);
        exact = n > 0;
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, hidx, i);
            if (lua_type(L, -1) != LUA_TTABLE) {
                req_free(r);
                return luaL_argerror(L, 1, "headers must be { name, value } pairs without CR, LF (or : in names)");
            }
            lua_rawgeti(L, -1, 1);
            lua_rawgeti(L, -2, 2);
            const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
            if (!k || !v || !k[0] || !safe_header_part(k) || !safe_header_part(v) || strpbrk(k, ": ")) {
                req_free(r);
                return luaL_argerror(L, 1, "headers must be { name, value } pairs without CR, LF (or : in names)");
            }
            lua_pushfstring(L, v[0] ? "%s: %s" : "%s;", k, v); /* "Name;" is curl's empty header */
            r->headers = curl_slist_append(r->headers, lua_tostring(L, -1));
            lua_pop(L, 4);
        }
        if (!exact) {
            lua_pushnil(L);
            while (lua_next(L, hidx)) {
                const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
                if (lua_type(L, -2) != LUA_TSTRING || !v || !safe_header_part(k) || !safe_header_part(v) ||
                    strchr(k, ':')) {
                    req_free(r);
                    return luaL_argerror(L, 1, "headers must be name = value strings without CR, LF (or : in names)");
                }
                lua_pushfstring(L, v[0] ? "%s: %s" : "%s;", k, v);
                r->headers = curl_slist_append(r->headers, lua_tostring(L, -1));
                lua_pop(L, 2);
            }
        }
        if (exact)
            r->headers = curl_slist_append(r->headers, "Accept:"); /* "Name:" removes curl's own */
    }
    CURL *e = r->easy = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout * 1000));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (!exact)
        curl_easy_setopt(e, CURLOPT_USERAGENT, "postern/" POSTERN_VERSION);
    if (r->headers)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    if (body) {
        r->body = xmalloc(body_len + 1);
        memcpy(r->body, body, body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    if (strcmp(method, "GET") == 0 && !body)
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    else if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "POST") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (curl_multi_add_handle(multi, e) != CURLM_OK) {
        req_free(r);
        lua_pushnil(L);
        lua_pushliteral(L, "cannot start the request");
        return 2;
    }
    task_wait_begin(L, &r->w);
    return task_wait_yield(L, &r->w);
}

void http_open(lua_State *L)
{
    lua_newtable(L);
    lua_pushcfunction(L, l_request);
    lua_setfield(L, -2, "request");
    lua_setfield(L, -2, "http");
}
