-- lua/postern/testing/run_mock.lua: the one launcher of the mock backends.
-- postern.testing starts every mock as a process of its own with it, so a
-- mock runs independently of the proxy under test and of busted:
--
--   luajit lua/postern/testing/run_mock.lua MODULE OPTIONS_FILE
--
-- MODULE is mock_imap, mock_pop3, mock_smtp, mock_sieve or mock_http (short for
-- postern.testing.<name>), or any module name on LUA_PATH whose run(opts)
-- serves until the process is killed. OPTIONS_FILE is a Lua file that
-- returns the options table. The lua/ directory this file lives in comes
-- first on package.path, so the mocks load this checkout's modules.

local here = (arg and arg[0] or ""):match("^(.*)/postern/testing/[^/]*$")
if here then package.path = here .. "/?.lua;" .. here .. "/?/init.lua;" .. package.path end

local name, opts_file = arg and arg[1], arg and arg[2]
if not name or not opts_file then
  io.stderr:write("usage: luajit run_mock.lua MODULE OPTIONS_FILE\n")
  os.exit(2)
end
if not name:find(".", 1, true) then name = "postern.testing." .. name end

local opts = assert(dofile(opts_file), "options file must return a table")
require(name).run(opts)
