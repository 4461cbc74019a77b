/* lua_bridge.h: the Lua policy. Each hook call runs in its own coroutine
 * (a "task") so it can wait on timers and I/O while other sessions go on.
 * A task reports back through session_hook_done(). */
#ifndef POSTERN_LUA_BRIDGE_H
#define POSTERN_LUA_BRIDGE_H

#include "config.h"

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

#endif
