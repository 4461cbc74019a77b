/* lua_bridge.h: the Lua policy. Each hook call runs in its own coroutine
 * (a "task") so it can wait on timers and I/O while other sessions go on.
 * A task reports back through session_hook_done(). */
#ifndef POSTERN_LUA_BRIDGE_H
#define POSTERN_LUA_BRIDGE_H

#include "config.h"

#include <lua.h>
#include <uv.h>

#include <stdbool.h>
#include <stddef.h>

struct session;
typedef struct lb_policy lb_policy_t;
typedef struct lb_task lb_task_t;

/* Loads the configuration's policy and makes it current. On failure the
 * previous policy (if any) stays current and err says why (file:line). */
int lb_load(uv_loop_t *loop, const config_t *cfg, char *err, size_t errlen);
void lb_shutdown(void);                   /* drop the current policy */

lb_policy_t *lb_policy_acquire(void);     /* the current policy, pinned */
void lb_policy_release(lb_policy_t *p);
bool lb_has_hook(const lb_policy_t *p, const char *name);

void lb_run_connect(struct session *s);
void lb_run_authenticate(struct session *s);
void lb_run_close(struct session *s);     /* runs on its own after the session is gone */
void lb_task_cancel(lb_task_t *t);        /* the session closes under a waiting hook */
void lb_session_release(struct session *s);
int lb_tasks_running(void);
uv_loop_t *lb_loop(void);

/* ---- for the modules behind postern.sleep, .http, .dns, .redis ----
 *
 * An asynchronous Lua function calls lb_wait_check (which raises a Lua
 * error where waiting is impossible: while the policy loads, inside
 * table.sort...) before it allocates anything, then embeds an lb_wait_t
 * in its request, calls lb_wait_begin, starts its libuv work and
 * returns lb_wait_yield(L, w). Its completion callback pushes the results
 * on lb_wait_state(w) and calls lb_wait_done(w, n); after that the request
 * may be freed. If the hook goes away first, cancel(w) is called instead:
 * stop the work and free the request, never resume.
 *
 * In a plain Lua interpreter (busted loading postern.so) there is no hook:
 * lb_wait_yield then runs the event loop until the operation completes, so
 * a policy's hooks can be called directly from unit tests with real I/O. */
typedef struct lb_wait {
    void (*cancel)(struct lb_wait *w);
    lb_task_t *task;         /* NULL when blocking */
    lua_State *L;
    int *done, *nresults;    /* blocking mode: the waiter's own variables */
} lb_wait_t;

void lb_wait_check(lua_State *L, const char *fname); /* raises where waiting is impossible */
void lb_wait_begin(lua_State *L, lb_wait_t *w);       /* after the check: cannot fail */
int lb_wait_yield(lua_State *L, lb_wait_t *w);
lua_State *lb_wait_state(lb_wait_t *w);
void lb_wait_done(lb_wait_t *w, int nresults);

/* The C side of require "postern", for a plain Lua interpreter. */
int lb_open_module(lua_State *L);

#endif
