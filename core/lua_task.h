/* lua_task.h: Lua coroutines that wait on the event loop.
 *
 * A task is one coroutine, anchored in the registry, with at most one
 * pending wait. An asynchronous Lua function (postern.sleep, .http, .dns,
 * .redis) calls task_wait_check (which raises a Lua error where waiting is
 * impossible: while the policy loads, inside table.sort...) before it
 * allocates anything, then embeds a task_wait_t in its request, calls
 * task_wait_begin, starts its libuv work and returns task_wait_yield(L, w).
 * Its completion callback pushes the results on task_wait_state(w) and
 * calls task_wait_done(w, n); after that the request may be freed. If the
 * task goes away first, cancel(w) is called instead: stop the work and
 * free the request, never resume.
 *
 * In a plain Lua interpreter (busted loading postern.so: task_standalone)
 * there is no task: task_wait_yield then runs the event loop until the
 * operation completes, so a policy's hooks can be called directly from
 * unit tests with real I/O.
 *
 * This layer knows neither policies nor sessions: its owner (lua_policy.c)
 * embeds a task_t in its own struct and hears when the coroutine ends. */
#ifndef POSTERN_LUA_TASK_H
#define POSTERN_LUA_TASK_H

#include <lua.h>
#include <uv.h>

#include <stdbool.h>

typedef struct task task_t;

typedef struct task_wait {
    void (*cancel)(struct task_wait *w);
    task_t *task;            /* NULL when blocking (standalone) */
    lua_State *L;
    int *done, *nresults;    /* blocking mode: the waiter's own variables */
} task_wait_t;

struct task {
    lua_State *L;            /* the state the coroutine belongs to */
    lua_State *co;
    int co_ref;
    task_wait_t *wait;       /* the pending asynchronous call */
    /* The coroutine returned (rc 0: its results are on co's stack) or
     * failed (its error object on top). The owner reads them, then calls
     * task_release. */
    void (*finished)(task_t *t, int rc);
    /* A log line from inside the task (postern.log): with the owner's context. */
    void (*log)(task_t *t, int level, const char *msg);
    struct task *prev, *next;
};

/* Once per Lua state that runs tasks; loop is where they wait. */
void task_state_init(lua_State *L, uv_loop_t *loop);
/* A plain interpreter (postern.so): waits block on the default loop. */
void task_standalone(void);
uv_loop_t *task_loop(void);

/* A new coroutine of L in t (the owner's memory); push the function and
 * its arguments on t->co, then task_resume(t, nargs). */
void task_init(task_t *t, lua_State *L);
void task_resume(task_t *t, int nargs);
/* The owner is done with it: its wait (if any) is cancelled, the
 * coroutine unanchored and never resumed again. */
void task_release(task_t *t);
task_t *task_first(void);    /* all tasks, linked by next */

/* The task running the calling coroutine, or NULL. */
task_t *task_of(lua_State *L);
/* A log line with the context of the task running L, if any. */
void task_log(lua_State *L, int level, const char *msg);

void task_wait_check(lua_State *L, const char *fname); /* raises where waiting is impossible */
void task_wait_begin(lua_State *L, task_wait_t *w);    /* after the check: cannot fail */
int task_wait_yield(lua_State *L, task_wait_t *w);
lua_State *task_wait_state(task_wait_t *w);
void task_wait_done(task_wait_t *w, int nresults);

#endif
