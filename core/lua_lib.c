/* lua_lib.c: require "postern" (see lua_lib.h): the registry of its
 * modules, and the functions small enough to live here: log, now, sleep. */
#include "lua_lib.h"

#include "log.h"
#include "lua_task.h"
#include "mem.h"

#include <lauxlib.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>

/* postern.log(level, ...) */
static int l_log(lua_State *L)
{
    const char *lv = luaL_checkstring(L, 1);
    int level = log_level_parse(lv);
    if (level < 0)
        return luaL_argerror(L, 1, "level must be \"error\", \"warn\", \"info\" or \"debug\"");
    if (!log_enabled(level))
        return 0;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    int n = lua_gettop(L);
    for (int i = 2; i <= n; i++) {
        lua_getglobal(L, "tostring");
        lua_pushvalue(L, i);
        lua_call(L, 1, 1);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    char msg[2048];
    snprintf(msg, sizeof msg, "[lua] %s", lua_tostring(L, -1));
    task_log(L, level, msg);
    return 0;
}

/* postern.now(): Unix time with microseconds */
static int l_now(lua_State *L)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    lua_pushnumber(L, (double)tv.tv_sec + tv.tv_usec / 1e6);
    return 1;
}

/* ---- postern.sleep(seconds) ---- */

typedef struct sleep_req {
    task_wait_t w;
    uv_timer_t timer;
} sleep_req_t;

static void sleep_closed(uv_handle_t *h)
{
    free(h->data);
}

static void sleep_cancel(task_wait_t *w)
{
    sleep_req_t *r = (sleep_req_t *)w;
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, sleep_closed);
}

static void sleep_done(uv_timer_t *h)
{
    sleep_req_t *r = h->data;
    task_wait_state(&r->w);
    uv_close((uv_handle_t *)h, sleep_closed);
    task_wait_done(&r->w, 0);
}

static int l_sleep(lua_State *L)
{
    double sec = luaL_checknumber(L, 1);
    if (!(sec >= 0))
        return luaL_argerror(L, 1, "must be a number of seconds >= 0");
    task_wait_check(L, "postern.sleep");
    sleep_req_t *r = xcalloc(1, sizeof *r);
    r->w.cancel = sleep_cancel;
    task_wait_begin(L, &r->w); /* before the timer: it updates the loop's clock */
    uv_timer_init(task_loop(), &r->timer);
    r->timer.data = r;
    uv_timer_start(&r->timer, sleep_done, (uint64_t)(sec * 1000 + 0.5), 0);
    return task_wait_yield(L, &r->w);
}

/* ---- the registry ---- */

static const luaL_Reg functions[] = {
    { "log", l_log },
    { "now", l_now },
    { "sleep", l_sleep },
    { NULL, NULL },
};

/* Each adds postern.<name> to the table at the top of the stack. */
static void (*const modules[])(lua_State *L) = { dns_open, http_open, redis_open };

int lib_open(lua_State *L)
{
    lua_newtable(L);
    luaL_register(L, NULL, functions);
    lua_pushstring(L, POSTERN_VERSION);
    lua_setfield(L, -2, "version");
    for (size_t i = 0; i < sizeof modules / sizeof *modules; i++)
        modules[i](L);
    return 1;
}

int lib_open_standalone(lua_State *L)
{
    task_standalone();
    signal(SIGPIPE, SIG_IGN);
    return lib_open(L);
}

void lib_shutdown(void)
{
    http_shutdown();
    redis_shutdown();
}
