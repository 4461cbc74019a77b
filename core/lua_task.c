/* lua_task.c: coroutines that wait on the event loop (see lua_task.h).
 * A registry table maps each coroutine to its task, so an asynchronous
 * function finds the task it runs in from its own lua_State. */
#include "lua_task.h"

#include "log.h"

#include <lauxlib.h>

#include <stdlib.h>

static task_t *tasks;
static bool standalone;
static uv_loop_t *the_loop;
static const char tasks_key = 0; /* its address: the registry key of the coroutine -> task table */

void task_state_init(lua_State *L, uv_loop_t *loop)
{
    lua_pushlightuserdata(L, (void *)&tasks_key);
    lua_newtable(L);
    lua_rawset(L, LUA_REGISTRYINDEX);
    the_loop = loop;
}

void task_standalone(void)
{
    standalone = true;
}

uv_loop_t *task_loop(void)
{
    return the_loop ? the_loop : uv_default_loop();
}

task_t *task_first(void)
{
    return tasks;
}

/* Pushes the coroutine -> task table (nil in a plain interpreter). */
static void push_tasks(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&tasks_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
}

task_t *task_of(lua_State *L)
{
    push_tasks(L);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    lua_pushthread(L);
    lua_rawget(L, -2);
    task_t *t = lua_touserdata(L, -1);
    lua_pop(L, 2);
    return t;
}

void task_log(lua_State *L, int level, const char *msg)
{
    task_t *t = task_of(L);
    if (t && t->log)
        t->log(t, level, msg);
    else
        log_msg(level, "%s", msg);
}

void task_init(task_t *t, lua_State *L)
{
    t->L = L;
    t->co = lua_newthread(L);
    t->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->wait = NULL;
    push_tasks(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->co_ref);
    lua_pushlightuserdata(L, t);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    t->prev = NULL;
    t->next = tasks;
    if (tasks)
        tasks->prev = t;
    tasks = t;
}

void task_release(task_t *t)
{
    if (t->wait) {
        task_wait_t *w = t->wait;
        t->wait = NULL;
        w->cancel(w);
    }
    lua_State *L = t->L;
    push_tasks(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->co_ref);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, t->co_ref);
    if (t->prev)
        t->prev->next = t->next;
    else
        tasks = t->next;
    if (t->next)
        t->next->prev = t->prev;
}

void task_resume(task_t *t, int nargs)
{
    int rc = lua_resume(t->co, nargs);
    if (rc == LUA_YIELD)
        return;
    t->finished(t, rc);
}

/* ---- waiting ---- */

void task_wait_check(lua_State *L, const char *fname)
{
    task_t *t = task_of(L);
    if (!t && standalone)
        return;
    if (!t) {
        luaL_where(L, 1);
        lua_pushfstring(L, "%s can only be called inside a hook (on_connect, authenticate, on_close), "
                           "not while the policy loads or from a coroutine of its own",
                        fname);
        lua_concat(L, 2);
        lua_error(L);
    }
    if (!lua_isyieldable(L))
        luaL_error(L, "%s cannot wait here (inside a C function such as table.sort or string.gsub)", fname);
    if (t->wait)
        luaL_error(L, "%s: the hook is already waiting", fname);
}

void task_wait_begin(lua_State *L, task_wait_t *w)
{
    if (standalone) /* the loop sleeps between calls: its clock is stale */
        uv_update_time(task_loop());
    task_t *t = task_of(L);
    w->task = t;
    w->L = L;
    w->done = w->nresults = NULL;
    if (t)
        t->wait = w;
}

int task_wait_yield(lua_State *L, task_wait_t *w)
{
    if (w->task)
        return lua_yield(L, 0);
    /* blocking: one wait at a time (callbacks run no Lua), so the flags
     * can be static; w itself may be freed by the time done is set */
    static int done, n;
    done = n = 0;
    w->done = &done;
    w->nresults = &n;
    while (!done)
        uv_run(task_loop(), UV_RUN_ONCE);
    return n;
}

lua_State *task_wait_state(task_wait_t *w)
{
    if (w->task)
        lua_settop(w->L, 0);
    return w->L;
}

void task_wait_done(task_wait_t *w, int nresults)
{
    task_t *t = w->task;
    if (!t) {
        *w->done = 1;
        *w->nresults = nresults;
        /* done inside a timer callback, uv_run(ONCE) would still poll with
         * no timeout if another handle (a Redis socket) is active */
        uv_stop(task_loop());
        return;
    }
    t->wait = NULL;
    task_resume(t, nresults);
}
