/* lua_lib.h: the C side of require "postern", the library policies use
 * (docs/lua-api.md): postern.log, .now, .sleep and .version here, and the
 * modules in their own files, each adding its table to the module table at
 * the stack top. Adding postern.foo is one line in lua_lib.c's registry
 * and a foo_open below. The modules depend only on lua_task.h. */
#ifndef POSTERN_LUA_LIB_H
#define POSTERN_LUA_LIB_H

#include <lua.h>

/* The postern table, for a policy's state (package.preload). */
int lib_open(lua_State *L);
/* The same for a plain interpreter (postern.so), where waits block. */
int lib_open_standalone(lua_State *L);
/* The modules' shared connections (HTTP, Redis) are closed. */
void lib_shutdown(void);

void dns_open(lua_State *L);    /* postern.dns (dns.c) */
void http_open(lua_State *L);   /* postern.http (http_client.c) */
void redis_open(lua_State *L);  /* postern.redis (redis.c) */
void http_shutdown(void);
void redis_shutdown(void);

#endif
