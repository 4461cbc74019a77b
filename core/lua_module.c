/* lua_module.c: the entry point of postern.so, the library a plain Lua
 * interpreter (busted) loads with require "postern". */
#include "lua_lib.h"

__attribute__((visibility("default"))) int luaopen_postern(lua_State *L);

int luaopen_postern(lua_State *L)
{
    return lib_open_standalone(L);
}
