-- postern.testing.env: where the kit finds things. One table, shared by the
-- kit's modules and read at each use, so a spec may change a field for a
-- while (testing.bin = a stand-in binary; it is the same table):
--   root     the checkout (the directory that holds lua/ and build/)
--   bin      the postern binary: $POSTERN_BIN, else <root>/build/postern
--   luajit   the interpreter that runs the mocks: $LUAJIT, else luajit
local util = require "postern.testing.util"

local env = {}

do
  local src = debug.getinfo(1, "S").source
  local file = src:sub(1, 1) == "@" and src:sub(2) or "lua/postern/testing/env.lua"
  file = util.absolute(file)
  local dir = file:match("^(.*)/[^/]*$") or "."
  local root = dir:gsub("/lua/postern/testing$", "")
  if root == dir then root = dir .. "/../../.." end
  env.root = root
end
env.bin = os.getenv("POSTERN_BIN") or (env.root .. "/build/postern")
env.luajit = os.getenv("LUAJIT") or "luajit"

return env
