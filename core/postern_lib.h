/* postern_lib.h: the parts of require "postern" that live in their own
 * files; each adds its table to the module table at the stack top. */
#ifndef POSTERN_LIB_H
#define POSTERN_LIB_H

#include <lua.h>

void dns_open(lua_State *L);    /* postern.dns */
void http_open(lua_State *L);   /* postern.http */
void redis_open(lua_State *L);  /* postern.redis */
void http_shutdown(void);
void redis_shutdown(void);

#endif
