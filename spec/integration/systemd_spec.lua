-- systemd and logrotate: the unit (packaging/systemd/postern.service) and
-- the logrotate file (packaging/logrotate/postern) pass their tools'
-- checks, and postern speaks sd_notify(3) (core/sd_notify.c): READY=1 once
-- it accepts, RELOADING=1 then READY=1 around a SIGHUP reload, STOPPING=1
-- on SIGTERM and on SIGQUIT (the unit's KillSignal).
--
-- The datagram socket systemd passes in $NOTIFY_SOCKET is played by
-- luasocket's socket.unix (a path) or by spec/helpers/notify_socket.py
-- (an "@" name in the abstract namespace, which luasocket cannot bind).
local testing = require "postern.testing"
local util = require "postern.testing.util"
local process = require "postern.testing.process"
local shell = require "helpers.shell"
local unix = require "socket.unix"
local ffi = require "ffi"

local UNIT = testing.root .. "/packaging/systemd/postern.service"
local LOGROTATE = testing.root .. "/packaging/logrotate/postern"
local INSTALLED_BIN = "/usr/local/bin/postern" -- cmake's default prefix; see the unit's header
local POLICY = 'return { authenticate = function() return nil, "no" end }'

local function have(program)
  local _, rc = shell.run({ "sh", "-c", "command -v " .. program })
  return rc == 0
end

-- CLOCK_MONOTONIC in µs, the clock of MONOTONIC_USEC=
pcall(ffi.cdef, [[
  struct postern_spec_timespec { long tv_sec; long tv_nsec; };
  int clock_gettime(int clk, struct postern_spec_timespec *ts);
]])
local function monotonic_usec()
  local ts = ffi.new("struct postern_spec_timespec")
  assert(ffi.C.clock_gettime(1 --[[ CLOCK_MONOTONIC ]], ts) == 0)
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

-- the datagrams sent to a socket bound at a fresh path: n.path, n:next(), n:close()
local function notify_socket()
  local dir = util.mktemp_dir("postern-notify")
  local n = { dir = dir, path = dir .. "/notify", sock = unix.dgram() }
  assert(n.sock:bind(n.path))
  n.sock:settimeout(0.05)
  function n.next(_, timeout)
    return util.poll(timeout or 3, function() return (n.sock:receive()) end)
  end
  function n.close()
    n.sock:close()
    util.rm_rf(dir)
  end
  return n
end

describe("the systemd unit #systemd", function()
  it("passes systemd-analyze verify", function()
    if not have("systemd-analyze") then
      pending("systemd-analyze is not installed (Debian: systemd)")
      return
    end
    -- verify wants every Exec*= binary to exist, and postern is not
    -- installed here: check a copy whose ExecStartPre= and ExecStart= run
    -- the build's binary instead (the only lines that differ)
    local unit = assert(util.read_file(UNIT))
    local copy, n = unit:gsub("\n(Exec%a*=)" .. INSTALLED_BIN:gsub("%p", "%%%0") .. " ",
      function(key) return "\n" .. key .. testing.bin .. " " end)
    assert.equals(2, n)
    local dir = util.mktemp_dir("postern-unit")
    finally(function() util.rm_rf(dir) end)
    util.write_file(dir .. "/postern.service", copy)
    local out, rc = shell.run({ "systemd-analyze", "verify", dir .. "/postern.service" })
    assert.equals(0, rc, out)
    -- unknown keys and bad values are only warnings (exit status 0)
    for _, l in ipairs(util.lines_of(out)) do
      assert.is_nil(l:find("postern", 1, true), out)
    end
  end)

  it("starts the binary where the CMake install rule puts it", function()
    local cmake = assert(util.read_file(testing.root .. "/CMakeLists.txt"))
    local dest = assert(cmake:match("install%(TARGETS postern DESTINATION ([^%s%)]+)%)"))
    assert.equals(INSTALLED_BIN, "/usr/local/" .. dest .. "/postern")
    local unit = assert(util.read_file(UNIT))
    assert.equals(INSTALLED_BIN, unit:match("\nExecStart=(%S+)"))
    assert.equals(INSTALLED_BIN, unit:match("\nExecStartPre=(%S+) %-t "))
    assert.matches("\nType=notify\n", unit)
    assert.matches("\nKillSignal=SIGQUIT\n", unit)
    assert.matches("\nExecReload=/bin/kill %-HUP %$MAINPID\n", unit)
  end)
end)

describe("the logrotate file #systemd", function()
  it("renames the logs and sends SIGUSR1 to the pid of the pidfile", function()
    if not have("logrotate") then
      pending("logrotate is not installed")
      return
    end
    local dir = util.mktemp_dir("postern-logrotate")
    local pid
    finally(function()
      if pid then process.kill(pid, "KILL") end
      util.rm_rf(dir)
    end)
    util.write_file(dir .. "/error.log", "a line\n")
    -- a stand-in for postern that records each SIGUSR1
    pid = process.spawn(("exec sh -c 'trap \"echo usr1 >>%s/usr1\" USR1; while :; do sleep 0.05; done' >/dev/null 2>&1")
      :format(dir))
    util.write_file(dir .. "/postern.pid", pid .. "\n")
    -- the same file with /var/log/postern and /run/postern.pid moved into dir
    local conf, n = assert(util.read_file(LOGROTATE)):gsub("\n/var/log/postern/", "\n" .. dir .. "/")
    assert.equals(1, n)
    conf = conf:gsub("/run/postern%.pid", dir .. "/postern.pid")
    util.write_file(dir .. "/logrotate.conf", conf)
    local out, rc = shell.run({ "logrotate", "-f", "-s", dir .. "/state", dir .. "/logrotate.conf" })
    assert.equals(0, rc, out)
    assert.equals("a line\n", util.read_file(dir .. "/error.log.1"))
    assert.truthy(util.poll(3, function() return util.read_file(dir .. "/usr1") end), "no SIGUSR1")
  end)
end)

describe("sd_notify #systemd", function()
  local notify, proxy

  before_each(function()
    notify = notify_socket()
    proxy = testing.start { policy_source = POLICY, env = { NOTIFY_SOCKET = notify.path } }
  end)

  after_each(function()
    if proxy then proxy:stop() end
    if notify then notify:close() end
  end)

  it("sends READY=1 with its MAINPID once it accepts", function()
    local msg = notify:next()
    assert.equals("READY=1\nMAINPID=" .. proxy.pid, msg)
    local c = testing.client { port = proxy.port }
    c:expect("^%* OK")
    c:close()
  end)

  it("sends RELOADING=1 with MONOTONIC_USEC, then READY=1, on SIGHUP", function()
    assert.matches("^READY=1", notify:next())
    local before = monotonic_usec()
    proxy:signal("HUP")
    local usec = tonumber((notify:next() or ""):match("^RELOADING=1\nMONOTONIC_USEC=(%d+)$"))
    assert.truthy(usec, "no RELOADING=1 with MONOTONIC_USEC")
    assert.is_true(usec >= before - 1e3 and usec <= monotonic_usec() + 1e3, "MONOTONIC_USEC is not now: " .. usec)
    assert.equals("READY=1\nMAINPID=" .. proxy.pid, notify:next())
    proxy:wait_log("reloaded: configuration")
  end)

  it("sends READY=1 after a refused reload too (systemd leaves the reloading state)", function()
    assert.matches("^READY=1", notify:next())
    util.write_file(proxy.dir .. "/policy.lua", "return { oops(")
    proxy:signal("HUP")
    assert.matches("^RELOADING=1\n", notify:next())
    assert.matches("^READY=1\n", notify:next())
    proxy:wait_log("reload refused")
  end)

  it("sends STOPPING=1 on SIGTERM", function()
    assert.matches("^READY=1", notify:next())
    assert.equals(0, proxy:stop())
    assert.equals("STOPPING=1", notify:next())
  end)

  it("sends STOPPING=1 on SIGQUIT, the unit's KillSignal", function()
    assert.matches("^READY=1", notify:next())
    proxy:signal("QUIT")
    assert.equals("STOPPING=1", notify:next())
    assert.truthy(util.poll(5, function() return not proxy:alive() or nil end), "still running after SIGQUIT")
    assert.equals(0, proxy:stop())
  end)
end)

describe("sd_notify with other sockets #systemd", function()
  it("speaks to an abstract socket (NOTIFY_SOCKET=@name)", function()
    local dir = util.mktemp_dir("postern-notify")
    local record = dir .. "/record"
    local pid = process.spawn(("exec python3 %s %s %s >%s/log 2>&1"):format(
      util.sh_quote(testing.root .. "/spec/helpers/notify_socket.py"),
      util.sh_quote("@" .. dir:match("[^/]+$")), util.sh_quote(record), dir))
    local proxy
    finally(function()
      process.kill(pid, "TERM")
      if proxy then proxy:stop() end
      util.rm_rf(dir)
    end)
    local function messages()
      local out = {}
      for _, l in ipairs(util.lines_of(util.read_file(record))) do
        out[#out + 1] = l:gsub("\\(.)", function(c) return c == "n" and "\n" or c end)
      end
      return out
    end
    assert.truthy(util.poll(5, function() return messages()[1] == "READY" or nil end),
      "notify_socket.py did not start: " .. tostring(util.read_file(dir .. "/log")))
    proxy = testing.start { policy_source = POLICY, env = { NOTIFY_SOCKET = "@" .. dir:match("[^/]+$") } }
    assert.truthy(util.poll(3, function() return messages()[2] end), "no datagram")
    assert.equals("READY=1\nMAINPID=" .. proxy.pid, messages()[2])
    assert.equals(0, proxy:stop())
    assert.truthy(util.poll(3, function() return messages()[3] end), "no datagram after SIGTERM")
    assert.equals("STOPPING=1", messages()[3])
  end)

  it("runs as before when nobody listens at NOTIFY_SOCKET", function()
    local proxy = testing.start { policy_source = POLICY, env = { NOTIFY_SOCKET = "/nonexistent/notify" } }
    local c = testing.client { port = proxy.port }
    c:expect("^%* OK")
    c:close()
    assert.equals(0, proxy:stop())
  end)
end)
