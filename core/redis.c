/* redis.c: postern.redis.connect{ host, port, password, db, timeout } and
 * client:call(cmd, ...) -> reply or nil, message.
 *
 * hiredis's async API on the libuv loop. One connection per (host, port,
 * db, password), shared by every session and kept open; it is opened on
 * first use and again after a failure. Each call has a timeout: a call
 * that times out drops the connection (replies come in order, so one lost
 * reply would block all later ones) and the next call reconnects.
 * hiredis 0.14's own libuv adapter ignores poll errors (a refused
 * connection would hang for ever), so the adapter is here, fixed. */
#include "lua_lib.h"
#include "lua_task.h"
#include "mem.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <lua.h>

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REDIS_MAX_ARGS 1024
#define REDIS_META "postern.redis.client"

typedef struct redis_conn {
    char host[64];
    int port, db;
    char *password;
    redisAsyncContext *ac;   /* NULL when not connected */
    struct redis_conn *next;
} redis_conn_t;

typedef struct redis_client {  /* the Lua object */
    redis_conn_t *conn;
    double timeout;
} redis_client_t;

typedef struct redis_call {
    task_wait_t w;
    redis_conn_t *conn;
    uv_timer_t timer;
    bool waiting, replied, timer_open;
} redis_call_t;

static redis_conn_t *conns;

/* ---- the libuv adapter ---- */

typedef struct redis_events {
    uv_poll_t poll;
    redisAsyncContext *ac;
    int events;
} redis_events_t;

static void on_poll(uv_poll_t *h, int status, int events)
{
    redis_events_t *e = h->data;
    if (status < 0) /* a socket error: let hiredis do the I/O and see it */
        events = e->events;
    if (e->ac && (events & UV_READABLE))
        redisAsyncHandleRead(e->ac);
    if (e->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(e->ac);
}

static void update(redis_events_t *e)
{
    if (e->events)
        uv_poll_start(&e->poll, e->events, on_poll);
    else
        uv_poll_stop(&e->poll);
}

static void add_read(void *p) { ((redis_events_t *)p)->events |= UV_READABLE; update(p); }
static void del_read(void *p) { ((redis_events_t *)p)->events &= ~UV_READABLE; update(p); }
static void add_write(void *p) { ((redis_events_t *)p)->events |= UV_WRITABLE; update(p); }
static void del_write(void *p) { ((redis_events_t *)p)->events &= ~UV_WRITABLE; update(p); }

static void events_closed(uv_handle_t *h)
{
    free(h->data);
}

static void cleanup(void *p)
{
    redis_events_t *e = p;
    e->ac = NULL;
    uv_poll_stop(&e->poll);
    uv_close((uv_handle_t *)&e->poll, events_closed);
}

static int attach(redisAsyncContext *ac)
{
    redis_events_t *e = xcalloc(1, sizeof *e);
    if (uv_poll_init_socket(task_loop(), &e->poll, ac->c.fd) != 0) {
        free(e);
        return -1;
    }
    e->poll.data = e;
    e->ac = ac;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    ac->ev.data = e;
    return 0;
}

/* ---- the connection ---- */

static void on_connect(const redisAsyncContext *ac, int status)
{
    if (status == REDIS_OK)
        return;
    /* hiredis frees the context after this; pending calls get NULL */
    for (redis_conn_t *c = conns; c; c = c->next)
        if (c->ac == ac)
            c->ac = NULL;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    for (redis_conn_t *c = conns; c; c = c->next)
        if (c->ac == ac)
            c->ac = NULL;
}

static const char *conn_open(redis_conn_t *c)
{
    static char err[160];
    redisAsyncContext *ac = redisAsyncConnect(c->host, c->port);
    if (!ac)
        return "out of memory";
    if (ac->err) {
        snprintf(err, sizeof err, "redis: %s", ac->errstr);
        redisAsyncFree(ac);
        return err;
    }
    if (attach(ac) < 0) {
        redisAsyncFree(ac);
        return "redis: cannot watch the socket";
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    /* queued before any call: hiredis sends them once connected */
    if (c->password)
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", c->password);
    if (c->db)
        redisAsyncCommand(ac, NULL, NULL, "SELECT %d", c->db);
    return NULL;
}

/* ---- a call ---- */

static void call_maybe_free(redis_call_t *r)
{
    if (r->replied && !r->timer_open && !r->waiting)
        free(r);
}

static void timer_closed(uv_handle_t *h)
{
    redis_call_t *r = h->data;
    r->timer_open = false;
    call_maybe_free(r);
}

static void stop_timer(redis_call_t *r)
{
    if (r->timer_open && !uv_is_closing((uv_handle_t *)&r->timer)) {
        uv_timer_stop(&r->timer);
        uv_close((uv_handle_t *)&r->timer, timer_closed);
    }
}

static void push_reply(lua_State *L, const redisReply *rep, int depth)
{
    switch (rep->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, rep->str, rep->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushnumber(L, (lua_Number)rep->integer);
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)rep->elements, 0);
        for (size_t i = 0; i < rep->elements && depth < 16; i++) {
            push_reply(L, rep->element[i], depth + 1);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    default:
        lua_pushnil(L);
    }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_call_t *r = privdata;
    const redisReply *rep = reply;
    r->replied = true;
    stop_timer(r);
    if (!r->waiting) {
        call_maybe_free(r);
        return;
    }
    r->waiting = false;
    lua_State *L = task_wait_state(&r->w);
    int n = 1;
    if (!rep) {
        lua_pushnil(L);
        lua_pushfstring(L, "redis: %s", ac->errstr[0] ? ac->errstr : "connection lost");
        n = 2;
    } else if (rep->type == REDIS_REPLY_ERROR) {
        lua_pushnil(L);
        lua_pushlstring(L, rep->str, rep->len);
        n = 2;
    } else {
        push_reply(L, rep, 0);
    }
    /* hiredis is inside its callback: resume Lua once it returns */
    task_wait_done(&r->w, n);
    call_maybe_free(r);
}

static void on_timeout(uv_timer_t *t)
{
    redis_call_t *r = t->data;
    if (!r->waiting)
        return;
    r->waiting = false;
    /* Drop the connection before resuming Lua: replies come in order, so
     * the late one would block every later call. Our own reply callback
     * runs now with NULL (r lives until its timer has closed). */
    redis_conn_t *c = r->conn;
    if (c->ac) {
        redisAsyncContext *ac = c->ac;
        c->ac = NULL;
        redisAsyncFree(ac);
    }
    lua_State *L = task_wait_state(&r->w);
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    stop_timer(r);
    task_wait_done(&r->w, 2);
}

static void cancel(task_wait_t *w)
{
    redis_call_t *r = (redis_call_t *)w;
    r->waiting = false;
    stop_timer(r);
    call_maybe_free(r);
}

static int l_call(lua_State *L)
{
    redis_client_t *cl = luaL_checkudata(L, 1, REDIS_META);
    int argc = lua_gettop(L) - 1;
    if (argc < 1 || argc > REDIS_MAX_ARGS)
        return luaL_error(L, "client:call(command, args...)");
    const char *argv[REDIS_MAX_ARGS];
    size_t lens[REDIS_MAX_ARGS];
    for (int i = 0; i < argc; i++) {
        if (lua_type(L, i + 2) != LUA_TSTRING && lua_type(L, i + 2) != LUA_TNUMBER)
            return luaL_argerror(L, i + 2, "strings and numbers only");
        argv[i] = lua_tolstring(L, i + 2, &lens[i]);
    }
    task_wait_check(L, "client:call");
    redis_conn_t *c = cl->conn;
    if (!c->ac) {
        const char *err = conn_open(c);
        if (err) {
            lua_pushnil(L);
            lua_pushstring(L, err);
            return 2;
        }
    }
    redis_call_t *r = xcalloc(1, sizeof *r);
    r->w.cancel = cancel;
    r->conn = c;
    if (redisAsyncCommandArgv(c->ac, on_reply, r, argc, argv, lens) != REDIS_OK) {
        free(r);
        lua_pushnil(L);
        lua_pushfstring(L, "redis: %s", c->ac && c->ac->errstr[0] ? c->ac->errstr : "cannot send");
        return 2;
    }
    r->waiting = true;
    uv_timer_init(task_loop(), &r->timer);
    r->timer.data = r;
    r->timer_open = true;
    task_wait_begin(L, &r->w); /* before the timer: it updates the loop's clock */
    uv_timer_start(&r->timer, on_timeout, (uint64_t)(cl->timeout * 1000), 0);
    int n = task_wait_yield(L, &r->w);
    return n;
}

static int l_connect(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "host");
    const char *host = luaL_optstring(L, -1, "127.0.0.1");
    lua_getfield(L, 1, "port");
    int port = (int)luaL_optinteger(L, -1, 6379);
    lua_getfield(L, 1, "db");
    int db = (int)luaL_optinteger(L, -1, 0);
    lua_getfield(L, 1, "timeout");
    double timeout = luaL_optnumber(L, -1, 1);
    lua_getfield(L, 1, "password");
    const char *password = luaL_optstring(L, -1, NULL);
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    unsigned char a[16];
    if (inet_pton(AF_INET, host, a) != 1 && inet_pton(AF_INET6, host, a) != 1)
        return luaL_argerror(L, 1, "host must be an IP address (resolve names with postern.dns.resolve)");
    if (port < 1 || port > 65535 || db < 0 || !(timeout > 0))
        return luaL_argerror(L, 1, "bad port, db or timeout");
    redis_conn_t *c;
    for (c = conns; c; c = c->next)
        if (strcmp(c->host, host) == 0 && c->port == port && c->db == db &&
            ((!c->password && !password) || (c->password && password && strcmp(c->password, password) == 0)))
            break;
    if (!c) {
        c = xcalloc(1, sizeof *c);
        snprintf(c->host, sizeof c->host, "%s", host);
        c->port = port;
        c->db = db;
        c->password = password ? xstrdup(password) : NULL;
        c->next = conns;
        conns = c;
    }
    redis_client_t *cl = lua_newuserdata(L, sizeof *cl);
    cl->conn = c;
    cl->timeout = timeout;
    luaL_getmetatable(L, REDIS_META);
    lua_setmetatable(L, -2);
    return 1;
}

void redis_shutdown(void)
{
    while (conns) {
        redis_conn_t *c = conns;
        conns = c->next;
        if (c->ac)
            redisAsyncFree(c->ac);
        free(c->password);
        free(c);
    }
}

void redis_open(lua_State *L)
{
    if (luaL_newmetatable(L, REDIS_META)) {
        lua_newtable(L);
        lua_pushcfunction(L, l_call);
        lua_setfield(L, -2, "call");
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, l_connect);
    lua_setfield(L, -2, "connect");
    lua_setfield(L, -2, "redis");
}
