-- postern.testing.proxy: the real postern binary, started on free ports
-- in a temporary directory, stopped with SIGTERM (testing.start,
-- testing.check_config).
--
--   local p = proxy.start { policy = path | policy_source = text, config = {...}, env = {...} }
--   p.port, p.ports, p.dir, p.log_path, p.conf_path, p.pid, p.config
--   p:log() p:wait_log(pattern, timeout=3) p:signal("HUP") p:alive()
--   p:workers() -> the worker processes' pids (p.pid is the master)
--   p:stop() -> exit status; fails when postern logged [alert], [crit] or a
--               sanitizer report, or did not exit 0 (p.allow_log = { pattern, ... }:
--               lines that a spec provokes on purpose, e.g. a worker it killed)
--   proxy.check_config(table_or_path) -> ok, output of `postern -t`
--
-- The binary is env.bin (testing.bin), run from env.root (testing.root).
local socket = require "socket"
local util = require "postern.testing.util"
local process = require "postern.testing.process"
local serialize = require "postern.testing.serialize"
local env = require "postern.testing.env"

local sh_quote, read_file, write_file, poll = util.sh_quote, util.read_file, util.write_file, util.poll
local alive, kill = process.alive, process.kill

local proxy = {}

local Proxy = {}
Proxy.__index = Proxy
proxy.Proxy = Proxy

local BAD_LOG = { "[alert]", "[crit]", "AddressSanitizer", "LeakSanitizer", "runtime error:" }

local function port_of(address)
  return tonumber(tostring(address):match(":(%d+)$"))
end

function proxy.start(opts)
  opts = opts or {}
  local dir = util.mktemp_dir("postern-test")
  local p = setmetatable({ dir = dir, log_path = dir .. "/postern.log",
    conf_path = dir .. "/proxy.conf.lua", pid_path = dir .. "/pid", exit_path = dir .. "/exit" }, Proxy)

  local policy
  if opts.policy_source then
    policy = dir .. "/policy.lua"
    write_file(policy, opts.policy_source)
  elseif opts.policy then
    policy = util.absolute(opts.policy)
  end

  local conf = {
    server_name = "postern.test",
    log_level = "debug",
    error_log = p.log_path,
    timeout = 10,
    policy = policy,
    listen = { { address = "127.0.0.1:" .. util.free_port(), protocol = "imap" } },
    -- one worker unless the spec asks for more: a policy's module-level
    -- state and the kept-alive connections of its library are then shared
    -- by every session of the spec, as one expects when testing a policy
    -- (config.workers = false leaves the key out: the binary's default)
    workers = 1,
  }
  for k, v in pairs(opts.config or {}) do conf[k] = v end
  if conf.workers == false then conf.workers = nil end -- false: the binary's default ("auto")
  if opts.config and opts.config.listen then
    local listen = {}
    for i, l in ipairs(opts.config.listen) do
      local e = {}
      for k, v in pairs(l) do e[k] = v end
      e.address = e.address or ("127.0.0.1:" .. util.free_port())
      listen[i] = e
    end
    conf.listen = listen
  end
  p.config = conf
  p.ports = {}
  for i, l in ipairs(conf.listen or {}) do p.ports[i] = port_of(l.address) end
  p.port = p.ports[1]
  serialize.write_config(p.conf_path, conf)
  write_file(p.log_path, "")

  -- inner.sh writes its own pid and execs postern (same pid); run.sh records the exit code
  local vars = {}
  for k, v in pairs(opts.env or {}) do vars[#vars + 1] = sh_quote(k .. "=" .. tostring(v)) end
  table.sort(vars)
  write_file(dir .. "/inner.sh", ("echo $$ >%s\nexec env %s %s -c %s\n"):format(
    sh_quote(p.pid_path), table.concat(vars, " "), sh_quote(env.bin), sh_quote(p.conf_path)))
  write_file(dir .. "/run.sh", ("sh %s >>%s 2>&1\necho $? >%s\n"):format(
    sh_quote(dir .. "/inner.sh"), sh_quote(p.log_path), sh_quote(p.exit_path)))
  util.capture(("cd %s && exec sh %s </dev/null >/dev/null 2>&1 & echo $!"):format(
    sh_quote(env.root), sh_quote(dir .. "/run.sh")))

  local function failed(why)
    if p.pid and alive(p.pid) then
      kill(p.pid, "KILL")
      poll(2, function() return not alive(p.pid) or nil end)
    end
    p.stopped = true
    error(("postern %s (dir %s); log:\n%s"):format(why, dir, p:log()), 3)
  end

  p.pid = poll(5, function() return tonumber((read_file(p.pid_path) or ""):match("%d+")) end)
  if not p.pid then failed("did not start") end
  process.guard(p)
  if not p.port then return p end
  local ready = poll(5, function()
    if read_file(p.exit_path) then return false end
    local s = socket.tcp()
    s:settimeout(0.2)
    local ok = s:connect("127.0.0.1", p.port)
    s:close()
    if ok then return true end
  end)
  if not ready then
    local code = read_file(p.exit_path)
    failed(code and ("exited with status " .. util.trim(code) .. " before listening")
      or ("did not accept on 127.0.0.1:" .. p.port .. " within 5 s"))
  end
  return p
end

function Proxy:log() return read_file(self.log_path) or "" end

function Proxy:alive() return self.pid ~= nil and alive(self.pid) end

function Proxy:wait_log(pattern, timeout)
  local line = poll(timeout or 3, function()
    for _, l in ipairs(util.lines_of(self:log())) do
      if l:find(pattern) then return l end
    end
  end)
  if not line then
    error(("postern log: nothing matching %q; log:\n%s"):format(pattern, self:log()), 2)
  end
  return line
end

-- The worker processes' pids (the master's children), sorted.
function Proxy:workers()
  local pids = {}
  if not self.pid then return pids end
  for pid in util.capture(("ps -o pid= --ppid %d"):format(self.pid)):gmatch("%d+") do
    pids[#pids + 1] = tonumber(pid)
  end
  table.sort(pids)
  return pids
end

function Proxy:signal(name)
  kill(self.pid, name or "TERM")
end

function Proxy:stop()
  if self.stopped then return self.exit_status end
  self.stopped = true
  if self.pid then kill(self.pid, "TERM") end
  local exited = poll(5, function()
    return (read_file(self.exit_path) ~= nil and not alive(self.pid)) or nil
  end)
  if not exited then
    kill(self.pid, "KILL")
    poll(2, function() return not alive(self.pid) or nil end)
    error(("postern did not exit within 5 s of SIGTERM (dir %s); log:\n%s"):format(self.dir, self:log()), 2)
  end
  -- the wrapper writes the file right after the exit: wait for its content
  local code = poll(1, function() return tonumber((read_file(self.exit_path) or ""):match("%d+")) end)
  self.exit_status = code
  local log = self:log()
  local bad = {}
  local function allowed(l)
    for _, pat in ipairs(self.allow_log or {}) do
      if l:find(pat) then return true end
    end
  end
  for _, l in ipairs(util.lines_of(log)) do
    for _, pat in ipairs(BAD_LOG) do
      if l:find(pat, 1, true) and not allowed(l) then
        bad[#bad + 1] = l
        break
      end
    end
  end
  if #bad > 0 then
    error(("postern log has %d bad line(s) (dir %s):\n%s"):format(#bad, self.dir, table.concat(bad, "\n")), 2)
  end
  if code ~= 0 then
    error(("postern exited with status %s (dir %s); log:\n%s"):format(tostring(code), self.dir, log), 2)
  end
  util.rm_rf(self.dir)
  return code
end

function proxy.check_config(conf)
  local path, dir
  if type(conf) == "table" then
    dir = util.mktemp_dir("postern-check")
    path = serialize.write_config(dir .. "/proxy.conf.lua", conf)
  else
    path = util.absolute(conf)
  end
  local out = util.capture(("cd %s && %s -t -c %s 2>&1; echo \"@@exit=$?\""):format(
    sh_quote(env.root), sh_quote(env.bin), sh_quote(path)))
  util.rm_rf(dir)
  local code = tonumber(out:match("@@exit=(%d+)%s*$"))
  out = out:gsub("@@exit=%d+%s*$", "")
  return code == 0, out
end

return proxy
