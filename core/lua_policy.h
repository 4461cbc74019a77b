/* lua_policy.h: the Lua policy. It is loaded (and reloaded) into a Lua
 * state of its own; each hook call runs as a task (lua_task.h) so it can
 * wait on timers and I/O while other sessions go on, and reports back
 * through session_hook_done(). Every session pins the policy that was
 * current when it was accepted. */
#ifndef POSTERN_LUA_POLICY_H
#define POSTERN_LUA_POLICY_H

#include "config.h"

#include <uv.h>

#include <stdbool.h>
#include <stddef.h>

struct session;
typedef struct policy policy_t;
typedef struct policy_call policy_call_t;

/* Loads the configuration's policy and makes it current: PT_OK, or
 * PT_ERROR (the previous policy, if any, stays current; err says why,
 * with file:line). */
int policy_load(uv_loop_t *loop, config_t *cfg, char *err, size_t errlen);
void policy_shutdown(void);                 /* cancel every call, drop the current policy */

policy_t *policy_acquire(void);             /* the current policy, pinned */
void policy_release(policy_t *p);
bool policy_has_hook(const policy_t *p, const char *name);

void policy_run_connect(struct session *s);
void policy_run_authenticate(struct session *s);
void policy_run_close(struct session *s);   /* runs on its own after the session is gone */
void policy_cancel(policy_call_t *c);       /* the session closes under a waiting hook */
void policy_session_release(struct session *s);

#endif
