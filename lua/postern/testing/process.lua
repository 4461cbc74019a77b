-- postern.testing.process: the kit's background processes (postern, the
-- mocks): started by /bin/sh, watched through /proc, stopped by signal.
--
-- Signals: processes are started in the background by /bin/sh, which makes
-- them ignore SIGINT and SIGQUIT unless they install their own handlers.
local util = require "postern.testing.util"

local process = {}

-- run a shell command line in the background; returns its pid (the line
-- should `exec` the program, so the pid is the program's)
function process.spawn(cmdline)
  return tonumber(util.capture(cmdline .. " & echo $!"))
end

-- process state from /proc: gone or zombie (PID 1 here may not reap) = not alive
function process.alive(pid)
  local stat = util.read_file("/proc/" .. tostring(pid) .. "/stat")
  if not stat then return false end
  local state = stat:match("%) (%a)")
  return state ~= "Z" and state ~= "X"
end

function process.kill(pid, sig)
  os.execute(("kill -s %s %d >/dev/null 2>&1"):format(sig or "TERM", pid))
end

-- SIGTERM obj.pid when obj is collected without stop() (LuaJIT: no __gc on tables)
function process.guard(obj)
  local proxy = newproxy and newproxy(true)
  if not proxy then return end
  getmetatable(proxy).__gc = function()
    if not obj.stopped and obj.pid then
      process.kill(obj.pid, "TERM")
      if obj.record_path then util.rm_rf(obj.dir) end   -- a mock's files are of no use later
    end
  end
  obj._guard = proxy
end

return process
