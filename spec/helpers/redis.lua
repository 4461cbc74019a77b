-- spec/helpers/redis.lua: a real redis-server (Debian's) for specs, on a
-- free loopback port, with its own temporary directory and no persistence.
--
--   local redis = require "helpers.redis"
--   local r = redis.start { password = nil }   -- password: requirepass
--   r.port                                     -- 127.0.0.1:r.port
--   r.cli("SET", "k", "v")  -> "OK"            -- redis-cli's raw output, trimmed
--   r:stop()                                   -- SIGTERM, wait, rm -rf its dir
--   r:restart()                                -- the same port again (after stop)
--
-- The server runs in the foreground of its own process (--daemonize no)
-- started in the background by sh; start() waits until it answers PING.

local socket = require "socket"
local testing = require "postern.testing"

local M = {}

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  return out
end

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local function poll(timeout, fn)
  local deadline = socket.gettime() + timeout
  while true do
    local r = fn()
    if r ~= nil then return r end
    if socket.gettime() >= deadline then return nil end
    socket.sleep(0.02)
  end
end

local Redis = {}
Redis.__index = Redis

-- redis-cli's output for one command (raw mode: no type annotations)
function Redis:cli(...)
  local args = { "redis-cli", "--raw", "-h", "127.0.0.1", "-p", tostring(self.port) }
  if self.password then
    args[#args + 1] = "--no-auth-warning"
    args[#args + 1] = "-a"
    args[#args + 1] = self.password
  end
  for _, a in ipairs({ ... }) do args[#args + 1] = tostring(a) end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = q(a) end
  return trim(capture(table.concat(quoted, " ") .. " 2>&1"))
end

function Redis:_launch()
  self.log_path = self.dir .. "/redis.log"
  local args = {
    "redis-server", "--port", tostring(self.port), "--bind", "127.0.0.1",
    "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
    "--logfile", self.log_path,
  }
  if self.password then
    args[#args + 1] = "--requirepass"
    args[#args + 1] = self.password
  end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = q(a) end
  self.pid = tonumber(capture(("exec %s </dev/null >/dev/null 2>&1 & echo $!"):format(
    table.concat(quoted, " "))))
  assert(self.pid, "could not start redis-server")
  self.stopped = false
  local ok = poll(10, function()
    if not testing.alive(self.pid) then return false end
    if self:cli("PING") == "PONG" then return true end
  end)
  if not ok then
    local f = io.open(self.log_path)
    local log = f and f:read("*a") or ""
    if f then f:close() end
    self:stop()
    error("redis-server did not answer PING on port " .. self.port .. "; log:\n" .. log, 3)
  end
end

function M.start(opts)
  opts = opts or {}
  local dir = trim(capture("mktemp -d /tmp/postern-redis.XXXXXX"))
  assert(dir ~= "", "mktemp failed")
  local r = setmetatable({ dir = dir, port = opts.port or testing.free_port(),
    password = opts.password }, Redis)
  -- r.cli(...) works too (not only r:cli(...))
  local cli = Redis.cli
  r.cli = function(first, ...)
    if first == r then return cli(r, ...) end
    return cli(r, first, ...)
  end
  for _, name in ipairs({ "stop", "kill", "restart" }) do
    local method = Redis[name]
    r[name] = function() return method(r) end   -- r.stop() and r:stop() alike
  end
  r:_launch()
  return r
end

-- stop the server but keep its directory and port (restart() follows)
function Redis:kill()
  if self.stopped then return end
  self.stopped = true
  if self.pid then
    os.execute(("kill -TERM %d >/dev/null 2>&1"):format(self.pid))
    if not poll(5, function() return not testing.alive(self.pid) or nil end) then
      os.execute(("kill -KILL %d >/dev/null 2>&1"):format(self.pid))
      poll(2, function() return not testing.alive(self.pid) or nil end)
    end
  end
end

function Redis:restart()
  self:kill()
  self:_launch()
end

function Redis:stop()
  self:kill()
  if self.dir and self.dir:match("^/tmp/postern%-redis%.") then
    os.execute("rm -rf " .. q(self.dir))
  end
end

return M
