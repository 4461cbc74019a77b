/* dns.c: postern.dns.resolve(name [, timeout]) -> { "192.0.2.1", "2001:db8::1", ... }
 * or nil, message. getaddrinfo runs on libuv's thread pool; it cannot be
 * interrupted, so a timeout (or the hook going away) abandons the request
 * and its late result is dropped. */
#include "lua_lib.h"
#include "lua_task.h"
#include "mem.h"

#include <lauxlib.h>
#include <lua.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct dns_req {
    task_wait_t w;
    uv_getaddrinfo_t gai;
    uv_timer_t timer;
    bool waiting;        /* the Lua side still waits for us */
    bool gai_running;
    bool timer_open;
} dns_req_t;

static void maybe_free(dns_req_t *r)
{
    if (!r->waiting && !r->gai_running && !r->timer_open)
        free(r);
}

static void timer_closed(uv_handle_t *h)
{
    dns_req_t *r = h->data;
    r->timer_open = false;
    maybe_free(r);
}

static void finish(dns_req_t *r)
{
    r->waiting = false;
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, timer_closed);
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    dns_req_t *r = req->data;
    r->gai_running = false;
    if (!r->waiting) {
        uv_freeaddrinfo(res);
        maybe_free(r);
        return;
    }
    lua_State *L = task_wait_state(&r->w);
    int n = 0;
    if (status < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot resolve: %s", uv_strerror(status));
        n = 2;
    } else {
        lua_newtable(L);
        int i = 0;
        /* IPv4 first, then IPv6, whatever the resolver's order: the same
         * answer on every machine ("localhost" is 127.0.0.1, not ::1) */
        for (int pass = 0; pass < 2; pass++)
            for (struct addrinfo *a = res; a; a = a->ai_next) {
                char ip[INET6_ADDRSTRLEN];
                if (a->ai_family == AF_INET && pass == 0)
                    uv_ip4_name((struct sockaddr_in *)a->ai_addr, ip, sizeof ip);
                else if (a->ai_family == AF_INET6 && pass == 1)
                    uv_ip6_name((struct sockaddr_in6 *)a->ai_addr, ip, sizeof ip);
                else
                    continue;
                int dup = 0; /* one entry per address, not per socket type */
                for (int k = 1; k <= i && !dup; k++) {
                    lua_rawgeti(L, -1, k);
                    dup = strcmp(lua_tostring(L, -1), ip) == 0;
                    lua_pop(L, 1);
                }
                if (!dup) {
                    lua_pushstring(L, ip);
                    lua_rawseti(L, -2, ++i);
                }
            }
        n = 1;
    }
    uv_freeaddrinfo(res);
    finish(r);
    task_wait_done(&r->w, n);
}

static void timed_out(uv_timer_t *t)
{
    dns_req_t *r = t->data;
    if (!r->waiting)
        return;
    lua_State *L = task_wait_state(&r->w);
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    finish(r);
    task_wait_done(&r->w, 2);
}

static void cancel(task_wait_t *w)
{
    dns_req_t *r = (dns_req_t *)w;
    uv_cancel((uv_req_t *)&r->gai); /* only helps if it has not started */
    finish(r);
}

static int l_resolve(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    double timeout = luaL_optnumber(L, 2, 5);
    if (!(timeout > 0))
        return luaL_argerror(L, 2, "must be a number of seconds > 0");
    /* an address is its own answer */
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1) {
        lua_newtable(L);
        lua_pushstring(L, name);
        lua_rawseti(L, -2, 1);
        return 1;
    }
    if (!name[0] || strlen(name) > 253)
        return luaL_argerror(L, 1, "not a host name");
    task_wait_check(L, "postern.dns.resolve");
    dns_req_t *r = xcalloc(1, sizeof *r);
    r->w.cancel = cancel;
    r->gai.data = r;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    int rc = uv_getaddrinfo(task_loop(), &r->gai, resolved, name, NULL, &hints);
    if (rc < 0) {
        free(r);
        lua_pushnil(L);
        lua_pushfstring(L, "cannot resolve: %s", uv_strerror(rc));
        return 2;
    }
    r->gai_running = true;
    r->waiting = true;
    uv_timer_init(task_loop(), &r->timer);
    r->timer.data = r;
    r->timer_open = true;
    task_wait_begin(L, &r->w); /* before the timer: it updates the loop's clock */
    uv_timer_start(&r->timer, timed_out, (uint64_t)(timeout * 1000), 0);
    return task_wait_yield(L, &r->w);
}

void dns_open(lua_State *L)
{
    lua_newtable(L);
    lua_pushcfunction(L, l_resolve);
    lua_setfield(L, -2, "resolve");
    lua_setfield(L, -2, "dns");
}
