--- postern.testing: test your policy with busted against the real postern
--- binary and scripted mock backends.
--
-- Run specs from the repo root with:
--   busted spec/my_policy_spec.lua        (.busted sets lua = "luajit" and lpath)
-- or without .busted (busted --lua=... re-executes itself through sh and would
-- split an unquoted ';' lpath):
--   luajit /usr/bin/busted --ignore-lua --lpath='lua/?.lua;lua/?/init.lua;spec/?.lua' spec/my_policy_spec.lua
--
-- A complete spec (spec/my_policy_spec.lua):
--
--   local testing = require "postern.testing"
--
--   describe("my policy", function()
--     local a, b, proxy
--
--     setup(function()
--       a = testing.mock_imap { name = "backend-a", users = { alice = "secret" } }
--       b = testing.mock_imap { name = "backend-b" }
--       proxy = testing.start {
--         policy_source = ([[
--           return {
--             authenticate = function(s)
--               if s.user == "alice" and s.password == "secret" then
--                 return { host = "127.0.0.1", port = %d }
--               end
--               if s.client_ip == "127.0.0.2" then
--                 return { host = "127.0.0.1", port = %d }
--               end
--               return nil, "Invalid login or password"
--             end,
--           }
--         ]]):format(a.port, b.port),
--         config = { timeout = 5 },
--       }
--     end)
--
--     teardown(function()
--       if proxy then proxy:stop() end   -- errors on [alert]/[crit]/sanitizer reports
--       if a then a:stop() end
--       if b then b:stop() end
--     end)
--
--     it("routes alice to backend-a", function()
--       local c = testing.client { port = proxy.port }
--       c:expect("^%* OK")
--       local tagged = c:command("a1", "LOGIN alice secret")
--       assert.matches("^a1 OK", tagged)
--       local _, untagged = c:command("a2", "LIST \"\" *")
--       assert.matches("backend%-a", table.concat(untagged, "\n"))
--       a:wait_for("^AUTH alice secret")      -- what the proxy sent upstream
--       assert.equals("alice", a:logins()[1].user)
--       c:command("a3", "LOGOUT")
--       assert.is_true(c:closed(2))
--     end)
--
--     it("refuses a bad password", function()
--       local c = testing.client { port = proxy.port }
--       c:expect("^%* OK")
--       assert.matches("^a1 NO", (c:command("a1", "LOGIN alice wrong")))
--       c:close()
--     end)
--
--     it("routes by client address", function()
--       local c = testing.client { port = proxy.port, bind = "127.0.0.2" }
--       c:expect("^%* OK")
--       assert.matches("^a1 OK", (c:command("a1", "LOGIN bob x")))
--       c:close()
--       b:wait_for("^AUTH bob x")
--     end)
--   end)
--
-- API
--   testing.root, testing.bin, testing.luajit
--   testing.free_port() -> port
--   testing.sleep(sec), testing.now()
--   testing.serialize(value) -> Lua source text;  testing.write_config(path, table)
--   testing.mock_imap(opts) -> mock   (options: see lua/postern/mock_imap.lua)
--   testing.mock_pop3(opts) -> mock   (options: see lua/postern/mock_pop3.lua)
--   testing.mock_smtp(opts) -> mock   (options: see lua/postern/mock_smtp.lua)
--     mock.port, mock.host, mock.record_path, mock.log_path
--     mock:lines() mock:wait_for(pattern, timeout=3) mock:logins() mock:log() mock:stop()
--     mock:messages()  SMTP: messages received by DATA, { {bytes=, lines=, subject=}, ... }
--   testing.mock_http(opts) -> mock   an HTTP/1.1 server (keep-alive) that records every
--                                     request and answers by a script (options: see
--                                     lua/postern/mock_http.lua): opts.status, headers, body,
--                                     delay, close, responses = { answer, ... },
--                                     handler = [[ return function(req) return answer end ]]
--     mock:url(path="/auth") -> "http://127.0.0.1:<port>/auth"
--     mock:requests() -> { { n, conn, method, path, version, headers = { {name, value}, ... }
--                          (in the order received), h = { [lower-case name] = value },
--                          lines = { raw header lines }, body, status (of the answer) }, ... }
--     mock:wait_requests(n, timeout=3) -> requests, once at least n have arrived
--     mock:connections() -> number of TCP connections accepted (keep-alive reuse shows here)
--   testing.start(opts) -> proxy      opts: policy | policy_source, config, env
--     proxy.port, proxy.ports, proxy.dir, proxy.log_path, proxy.conf_path, proxy.pid
--     proxy:log() proxy:wait_log(pattern, timeout=3) proxy:signal("HUP")
--     proxy:alive() proxy:stop() -> exit status
--   testing.check_config(table_or_path) -> ok, output
--   testing.client{ port, host, bind, timeout } -> client
--     c:send(data) c:line(timeout) c:expect(pattern, timeout) c:command(tag, text, timeout)
--     c:read_bytes(n, timeout) c:closed(timeout) c:close()
--     c:response(timeout)  one line plus the literals it announces ({n} at line end);
--                          c:command uses it, so a FETCH's untagged entry is
--                          '* 1 FETCH (BODY[] {n}\r\n<n bytes>)'
--     c:pop3(cmd, timeout)       sends cmd.."\r\n" (unless cmd is nil), returns the status line
--     c:pop3_multi(cmd, timeout) -> status, lines: the multi-line body after +OK, dot-unstuffed,
--                          without the final "." (nil after -ERR); linear in the body size
--     c:smtp(cmd, timeout) -> code, texts, last: sends cmd (unless nil), reads one reply,
--                          "250-a" / "250 b" gives 250, { "a", "b" }, "250 b"
--
-- POP3 (a listener with protocol = "pop3" in config.listen):
--
--   local m = testing.mock_pop3 { name = "pop-a", users = { alice = "secret" }, apop = true }
--   local c = testing.client { port = proxy.port }     -- or m.port to talk to the mock
--   assert.matches("^%+OK", c:pop3())                  -- the greeting
--   assert.matches("^%+OK", c:pop3("USER alice"))
--   assert.matches("^%+OK", c:pop3("PASS secret"))
--   local status, lines = c:pop3_multi("RETR 1")
--   assert.matches("pop3%-body from pop%-a", table.concat(lines, "\n"))
--   c:pop3("QUIT"); assert.is_true(c:closed(2))
--   m:wait_for("^AUTH alice secret user$")             -- what the proxy sent upstream
--   -- APOP against the mock: local ts = greeting:match("<.->")
--   --   c:pop3("APOP alice " .. require("postern.md5").hex(ts .. "secret"))
--
-- SMTP (protocol = "smtp"):
--
--   local m = testing.mock_smtp { name = "mx-a", users = { alice = "secret" }, xclient = true }
--   local c = testing.client { port = proxy.port }
--   assert.equals(220, (c:smtp()))                     -- the greeting
--   local code, kw = c:smtp("EHLO client.example")     -- kw[1] is the server name
--   assert.equals(235, (c:smtp("AUTH PLAIN " .. require("mime").b64("\0alice\0secret"))))
--   c:send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")   -- pipelined
--   assert.equals(250, (c:smtp())); assert.equals(250, (c:smtp())); assert.equals(354, (c:smtp()))
--   assert.equals(250, (c:smtp("Subject: hi\r\n\r\nbody\r\n.")))
--   assert.equals("hi", m:messages()[1].subject)
--   m:wait_for("^XCLIENT ADDR=127%.0%.0%.1")           -- when the policy asks for xclient
--   c:smtp("QUIT"); assert.is_true(c:closed(2))
--
-- Leftovers: a mock or proxy that is garbage-collected (or still running
-- when busted closes its Lua state) gets SIGTERM; always stop() in teardown.
--
-- Mock record lines (mock:lines()): "CONNECT <id> <ip> <port>", "<id> <command as
-- received>", "AUTH <user> <password> <mechanism>", "CLOSE <id>"; POP3 mechanisms
-- user|apop|plain|login|xoauth2|oauthbearer (apop: the digest in the password
-- field); SMTP also "XCLIENT <raw args>" and "MESSAGE <bytes> <lines> <subject>".
--
-- Signals: processes are started in the background by /bin/sh, which makes
-- them ignore SIGINT and SIGQUIT unless they install their own handlers.

local socket = require "socket"

local testing = {}

-- small helpers -------------------------------------------------------------------

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  return out
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, content)
  local f = assert(io.open(path, "wb"))
  assert(f:write(content))
  assert(f:close())
end

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local function cwd()
  return trim(capture("pwd"))
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  return cwd() .. "/" .. path:gsub("^%./", "")
end

local function mktemp_dir(prefix)
  local d = trim(capture("mktemp -d /tmp/" .. prefix .. ".XXXXXX"))
  assert(d ~= "", "mktemp failed")
  return d
end

local function rm_rf(dir)
  if dir and dir:match("^/tmp/postern") then os.execute("rm -rf " .. sh_quote(dir)) end
end

function testing.sleep(sec) socket.sleep(sec) end
function testing.now() return socket.gettime() end

-- process state from /proc: gone or zombie (PID 1 here may not reap) = not alive
local function alive(pid)
  local stat = read_file("/proc/" .. tostring(pid) .. "/stat")
  if not stat then return false end
  local state = stat:match("%) (%a)")
  return state ~= "Z" and state ~= "X"
end
testing.alive = alive

local function kill(pid, sig)
  os.execute(("kill -s %s %d >/dev/null 2>&1"):format(sig or "TERM", pid))
end

-- SIGTERM the process when obj is collected without stop() (LuaJIT: no __gc on tables)
local function guard(obj)
  local proxy = newproxy and newproxy(true)
  if not proxy then return end
  getmetatable(proxy).__gc = function()
    if not obj.stopped and obj.pid then
      kill(obj.pid, "TERM")
      if obj.record_path then rm_rf(obj.dir) end   -- a mock's files are of no use later
    end
  end
  obj._guard = proxy
end

-- paths --------------------------------------------------------------------------

do
  local src = debug.getinfo(1, "S").source
  local file = src:sub(1, 1) == "@" and src:sub(2) or "lua/postern/testing.lua"
  file = absolute(file)
  local dir = file:match("^(.*)/[^/]*$") or "."
  local root = dir:gsub("/lua/postern$", "")
  if root == dir then root = dir .. "/../.." end
  testing.root = root
end
testing.bin = os.getenv("POSTERN_BIN") or (testing.root .. "/build/postern")
testing.luajit = os.getenv("LUAJIT") or "luajit"

-- The kernel may hand the same ephemeral port to two bind(0) calls in a row once
-- the first socket is closed, so remember what was handed out: two listeners of
-- one spec must never be given the same port.
local handed_ports = {}
function testing.free_port()
  for _ = 1, 100 do
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    port = tonumber(port)
    if not handed_ports[port] then
      handed_ports[port] = true
      return port
    end
  end
  error("no free port found that was not handed out already")
end

-- serializer ---------------------------------------------------------------------

local keywords = {}
for w in ([[and break do else elseif end false for function goto if in local nil
  not or repeat return then true until while]]):gmatch("%a+") do keywords[w] = true end

local function ser(v, indent, seen)
  local t = type(v)
  if t == "string" then
    return (("%q"):format(v):gsub("\\\n", "\\n"))
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then error("cannot serialize " .. tostring(v)) end
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
    return ("%.17g"):format(v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    if seen[v] then error("cannot serialize a table that contains itself") end
    seen[v] = true
    local n = #v
    local inner = indent .. "  "
    local out = {}
    for i = 1, n do out[#out + 1] = inner .. ser(v[i], inner, seen) .. "," end
    local keys = {}
    for k in pairs(v) do
      if not (type(k) == "number" and k >= 1 and k <= n and k == math.floor(k)) then
        keys[#keys + 1] = k
      end
    end
    table.sort(keys, function(a, b)
      if type(a) == type(b) then return a < b end
      return type(a) == "number"
    end)
    for _, k in ipairs(keys) do
      local ks
      if type(k) == "string" and k:match("^[%a_][%w_]*$") and not keywords[k] then
        ks = k
      else
        ks = "[" .. ser(k, inner, seen) .. "]"
      end
      out[#out + 1] = inner .. ks .. " = " .. ser(v[k], inner, seen) .. ","
    end
    seen[v] = nil
    if #out == 0 then return "{}" end
    return "{\n" .. table.concat(out, "\n") .. "\n" .. indent .. "}"
  else
    error("cannot serialize a " .. t)
  end
end

function testing.serialize(v) return ser(v, "", {}) end

function testing.write_config(path, tbl)
  write_file(path, "return " .. testing.serialize(tbl) .. "\n")
  return path
end

-- polling ------------------------------------------------------------------------

-- call fn until it returns non-nil (false aborts at once) or timeout (-> nil)
local function poll(timeout, fn)
  local deadline = socket.gettime() + timeout
  while true do
    local r = fn()
    if r ~= nil then return r end
    if socket.gettime() >= deadline then return nil end
    socket.sleep(0.02)
  end
end

local function lines_of(s)
  local out = {}
  for l in (s or ""):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

-- mock IMAP backend ----------------------------------------------------------------

local Mock = {}
Mock.__index = Mock

function testing.mock_imap(opts)
  opts = opts or {}
  local dir = mktemp_dir("postern-mock")
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.port = opts.port or 0
  o.host = opts.host or "127.0.0.1"
  o.record = dir .. "/record"
  local opts_path = dir .. "/options.lua"
  testing.write_config(opts_path, o)
  write_file(o.record, "")
  local m = setmetatable({ dir = dir, host = o.host, record_path = o.record,
    log_path = dir .. "/mock.log", name = o.name }, Mock)
  local cmd = ("exec %s %s %s >%s 2>&1 & echo $!"):format(testing.luajit,
    sh_quote(testing.root .. "/lua/postern/mock_imap.lua"), sh_quote(opts_path), sh_quote(m.log_path))
  m.pid = tonumber(capture(cmd))
  assert(m.pid, "could not start the mock")
  guard(m)
  local port = poll(5, function()
    local first = (read_file(m.record_path) or ""):match("^READY (%d+)\n")
    if first then return tonumber(first) end
    if not alive(m.pid) then return false end
  end)
  if not port then
    local log = m:log()
    m:stop()
    error("mock_imap did not become ready; log:\n" .. log, 2)
  end
  m.port = port
  return m
end

function Mock:log() return read_file(self.log_path) or "" end

function Mock:lines()
  local out = {}
  for _, l in ipairs(lines_of(read_file(self.record_path))) do
    if not l:match("^READY ") then out[#out + 1] = l end
  end
  return out
end

function Mock:wait_for(pattern, timeout)
  local line = poll(timeout or 3, function()
    for _, l in ipairs(self:lines()) do
      if l:find(pattern) then return l end
    end
  end)
  if not line then
    error(("mock %s: no record matching %q; records:\n%s"):format(self.name or self.port,
      pattern, table.concat(self:lines(), "\n")), 2)
  end
  return line
end

function Mock:logins()
  local out = {}
  for _, l in ipairs(self:lines()) do
    local user, pass, mech = l:match("^AUTH (%S*) (.*) (%S+)$")
    if user then out[#out + 1] = { user = user, password = pass, mechanism = mech } end
  end
  return out
end

function Mock:stop()
  if self.stopped then return end
  self.stopped = true
  if self.pid then
    kill(self.pid, "TERM")
    if not poll(5, function() return not alive(self.pid) or nil end) then
      kill(self.pid, "KILL")
      poll(2, function() return not alive(self.pid) or nil end)
    end
  end
  rm_rf(self.dir)
end

-- the real postern ---------------------------------------------------------------

local Proxy = {}
Proxy.__index = Proxy

local BAD_LOG = { "[alert]", "[crit]", "AddressSanitizer", "LeakSanitizer", "runtime error:" }

local function port_of(address)
  return tonumber(tostring(address):match(":(%d+)$"))
end

function testing.start(opts)
  opts = opts or {}
  local dir = mktemp_dir("postern-test")
  local p = setmetatable({ dir = dir, log_path = dir .. "/postern.log",
    conf_path = dir .. "/proxy.conf.lua", pid_path = dir .. "/pid", exit_path = dir .. "/exit" }, Proxy)

  local policy
  if opts.policy_source then
    policy = dir .. "/policy.lua"
    write_file(policy, opts.policy_source)
  elseif opts.policy then
    policy = absolute(opts.policy)
  end

  local conf = {
    server_name = "postern.test",
    log_level = "debug",
    error_log = p.log_path,
    timeout = 10,
    policy = policy,
    listen = { { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap" } },
  }
  for k, v in pairs(opts.config or {}) do conf[k] = v end
  if opts.config and opts.config.listen then
    local listen = {}
    for i, l in ipairs(opts.config.listen) do
      local e = {}
      for k, v in pairs(l) do e[k] = v end
      e.address = e.address or ("127.0.0.1:" .. testing.free_port())
      listen[i] = e
    end
    conf.listen = listen
  end
  p.config = conf
  p.ports = {}
  for i, l in ipairs(conf.listen or {}) do p.ports[i] = port_of(l.address) end
  p.port = p.ports[1]
  testing.write_config(p.conf_path, conf)
  write_file(p.log_path, "")

  -- inner.sh writes its own pid and execs postern (same pid); run.sh records the exit code
  local env = {}
  for k, v in pairs(opts.env or {}) do env[#env + 1] = sh_quote(k .. "=" .. tostring(v)) end
  table.sort(env)
  write_file(dir .. "/inner.sh", ("echo $$ >%s\nexec env %s %s -c %s\n"):format(
    sh_quote(p.pid_path), table.concat(env, " "), sh_quote(testing.bin), sh_quote(p.conf_path)))
  write_file(dir .. "/run.sh", ("sh %s >>%s 2>&1\necho $? >%s\n"):format(
    sh_quote(dir .. "/inner.sh"), sh_quote(p.log_path), sh_quote(p.exit_path)))
  capture(("cd %s && exec sh %s </dev/null >/dev/null 2>&1 & echo $!"):format(
    sh_quote(testing.root), sh_quote(dir .. "/run.sh")))

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
  guard(p)
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
    failed(code and ("exited with status " .. trim(code) .. " before listening")
      or ("did not accept on 127.0.0.1:" .. p.port .. " within 5 s"))
  end
  return p
end

function Proxy:log() return read_file(self.log_path) or "" end

function Proxy:alive() return self.pid ~= nil and alive(self.pid) end

function Proxy:wait_log(pattern, timeout)
  local line = poll(timeout or 3, function()
    for _, l in ipairs(lines_of(self:log())) do
      if l:find(pattern) then return l end
    end
  end)
  if not line then
    error(("postern log: nothing matching %q; log:\n%s"):format(pattern, self:log()), 2)
  end
  return line
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
  for _, l in ipairs(lines_of(log)) do
    for _, pat in ipairs(BAD_LOG) do
      if l:find(pat, 1, true) then
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
  rm_rf(self.dir)
  return code
end

function testing.check_config(conf)
  local path, dir
  if type(conf) == "table" then
    dir = mktemp_dir("postern-check")
    path = testing.write_config(dir .. "/proxy.conf.lua", conf)
  else
    path = absolute(conf)
  end
  local out = capture(("cd %s && %s -t -c %s 2>&1; echo \"@@exit=$?\""):format(
    sh_quote(testing.root), sh_quote(testing.bin), sh_quote(path)))
  rm_rf(dir)
  local code = tonumber(out:match("@@exit=(%d+)%s*$"))
  out = out:gsub("@@exit=%d+%s*$", "")
  return code == 0, out
end

-- line client ----------------------------------------------------------------------

local Client = {}
Client.__index = Client

function testing.client(opts)
  opts = opts or {}
  assert(opts.port, "testing.client: port is required")
  local host = opts.host or "127.0.0.1"
  local s = assert(socket.tcp())
  if opts.bind then
    local ok, err = s:bind(opts.bind, 0)
    if not ok then error("testing.client: bind " .. opts.bind .. ": " .. tostring(err), 2) end
  end
  local timeout = opts.timeout or 5
  s:settimeout(timeout)
  local ok, err = s:connect(host, opts.port)
  if not ok then
    s:close()
    error(("testing.client: connect %s:%s: %s"):format(host, opts.port, tostring(err)), 2)
  end
  s:setoption("tcp-nodelay", true)
  return setmetatable({ sock = s, buf = "", timeout = timeout, eof = false }, Client)
end

-- read whatever is available (waiting until deadline); returns chunk or nil, "timeout"|"closed"
function Client:_recv(deadline)
  if self.eof then return nil, "closed" end
  local s = self.sock
  while true do
    s:settimeout(0)
    local got = {}
    while true do
      local data, err, partial = s:receive(65536)
      data = data or partial
      if data and #data > 0 then got[#got + 1] = data end
      if err then
        if err ~= "timeout" then self.eof = true; self.eof_reason = err end
        break
      end
    end
    if #got > 0 then return table.concat(got) end
    if self.eof then return nil, "closed" end
    local left = deadline - socket.gettime()
    if left <= 0 then return nil, "timeout" end
    socket.select({ s }, nil, left)
  end
end

function Client:send(data)
  self.sock:settimeout(self.timeout)
  local ok, err = self.sock:send(data)
  if not ok then error("client send failed: " .. tostring(err), 2) end
  return true
end

local function show(s)
  if #s > 200 then s = s:sub(1, 200) .. "..." end
  return ("%q"):format(s)
end

function Client:line(timeout)
  local deadline = socket.gettime() + (timeout or self.timeout)
  while true do
    local i = self.buf:find("\n", 1, true)
    if i then
      local line = self.buf:sub(1, i - 1)
      self.buf = self.buf:sub(i + 1)
      if line:sub(-1) ~= "\r" then
        error("line not terminated by CRLF (bare LF): " .. show(line), 2)
      end
      return line:sub(1, -2)
    end
    local data, err = self:_recv(deadline)
    if not data then
      if err == "closed" then
        error("connection closed by peer while waiting for a line; partial: " .. show(self.buf), 2)
      end
      error("timeout waiting for a line; partial: " .. show(self.buf), 2)
    end
    self.buf = self.buf .. data
  end
end

function Client:expect(pattern, timeout)
  local ok, line = pcall(self.line, self, timeout)
  if not ok then error(line, 2) end
  if not line:find(pattern) then
    error(("expected a line matching %q, got %s"):format(pattern, show(line)), 2)
  end
  return line
end

function Client:read_bytes(n, timeout)
  local deadline = socket.gettime() + (timeout or self.timeout)
  local parts, have = {}, 0
  if #self.buf > 0 then
    local take = math.min(n, #self.buf)
    parts[1] = self.buf:sub(1, take)
    self.buf = self.buf:sub(take + 1)
    have = take
  end
  while have < n do
    local data, err = self:_recv(deadline)
    if not data then
      error(("%s after %d of %d bytes"):format(err == "closed" and "connection closed" or "timeout",
        have, n), 2)
    end
    local need = n - have
    if #data > need then
      self.buf = data:sub(need + 1)
      data = data:sub(1, need)
    end
    parts[#parts + 1] = data
    have = have + #data
  end
  return table.concat(parts)
end

-- a response line plus any literals it announces ("{n}" at the end of a line)
function Client:response(timeout)
  local ok, line = pcall(self.line, self, timeout)
  if not ok then error(line, 2) end
  local parts = { line }
  while true do
    local n = tonumber(line:match("{(%d+)}$"))
    if not n then break end
    local ok2, data = pcall(self.read_bytes, self, n, timeout)
    if not ok2 then error(data, 2) end
    ok, line = pcall(self.line, self, timeout)
    if not ok then error(line, 2) end
    parts[#parts + 1] = "\r\n" .. data .. line
  end
  return table.concat(parts)
end

function Client:command(tag, text, timeout)
  self:send(tag .. " " .. text .. "\r\n")
  local untagged = {}
  local prefix = tag .. " "
  while true do
    local ok, line = pcall(self.response, self, timeout)
    if not ok then
      error(("%s; untagged so far:\n%s"):format(line, table.concat(untagged, "\n")), 2)
    end
    if line:sub(1, #prefix) == prefix then return line, untagged end
    untagged[#untagged + 1] = line
  end
end

function Client:closed(timeout)
  local deadline = socket.gettime() + (timeout or self.timeout)
  while true do
    local data, err = self:_recv(deadline)
    if data then
      self.buf = self.buf .. data
    elseif err == "closed" then
      return true
    else
      return false
    end
  end
end

function Client:close()
  if self.sock then self.sock:close() end
  self.eof = true
end

-- mock POP3 and SMTP backends ------------------------------------------------------
-- Same process model as mock_imap: options file, record file, READY line, SIGTERM.

local function start_mock(script, opts, what)
  opts = opts or {}
  local dir = mktemp_dir("postern-mock")
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.port = opts.port or 0
  o.host = opts.host or "127.0.0.1"
  o.record = dir .. "/record"
  local opts_path = dir .. "/options.lua"
  testing.write_config(opts_path, o)
  write_file(o.record, "")
  local m = setmetatable({ dir = dir, host = o.host, record_path = o.record,
    log_path = dir .. "/mock.log", name = o.name }, Mock)
  local cmd = ("exec %s %s %s >%s 2>&1 & echo $!"):format(testing.luajit,
    sh_quote(testing.root .. "/lua/postern/" .. script), sh_quote(opts_path), sh_quote(m.log_path))
  m.pid = tonumber(capture(cmd))
  assert(m.pid, "could not start the mock")
  guard(m)
  local port = poll(5, function()
    local first = (read_file(m.record_path) or ""):match("^READY (%d+)\n")
    if first then return tonumber(first) end
    if not alive(m.pid) then return false end
  end)
  if not port then
    local log = m:log()
    m:stop()
    error(what .. " did not become ready; log:\n" .. log, 3)
  end
  m.port = port
  return m
end

function testing.mock_pop3(opts) return start_mock("mock_pop3.lua", opts, "mock_pop3") end
function testing.mock_smtp(opts) return start_mock("mock_smtp.lua", opts, "mock_smtp") end

-- messages a mock SMTP backend received by DATA: { {bytes=, lines=, subject=}, ... }
function Mock:messages()
  local out = {}
  for _, l in ipairs(self:lines()) do
    local bytes, lines, subject = l:match("^MESSAGE (%d+) (%d+) ?(.*)$")
    if bytes then
      out[#out + 1] = { bytes = tonumber(bytes), lines = tonumber(lines), subject = subject }
    end
  end
  return out
end

-- POP3 and SMTP client helpers -------------------------------------------------------

-- POP3: send cmd (unless nil), return the status line ("+OK ..." / "-ERR ..." / "+ ...")
function Client:pop3(cmd, timeout)
  if cmd then self:send(cmd .. "\r\n") end
  local ok, line = pcall(self.line, self, timeout)
  if not ok then error(line, 2) end
  return line
end

-- POP3 multi-line: status line, then (after +OK) the body lines dot-unstuffed,
-- without the final "."; after -ERR the body is nil. Linear in the body size.
function Client:pop3_multi(cmd, timeout)
  if cmd then self:send(cmd .. "\r\n") end
  local ok, status = pcall(self.line, self, timeout)
  if not ok then error(status, 2) end
  if status:sub(1, 3) ~= "+OK" then return status, nil end
  local deadline = socket.gettime() + (timeout or self.timeout)
  -- find "\r\n.\r\n" (a virtual CRLF precedes the body, so an empty body is
  -- ".\r\n") scanning each byte once: only the last 4 bytes are carried over
  local parts, total, tail, body_len, rest = {}, 0, "\r\n", nil, nil
  local data = self.buf
  self.buf = ""
  while true do
    if #data > 0 then
      local window = tail .. data
      local i = window:find("\r\n.\r\n", 1, true)
      parts[#parts + 1] = data
      if i then
        -- the body ends with the CRLF at window[i+1]; window[k] is data[k - #tail]
        body_len = total + (i + 1 - #tail)
        rest = window:sub(i + 5)
        break
      end
      total = total + #data
      tail = window:sub(-4)
    end
    local err
    data, err = self:_recv(deadline)
    if not data then
      local got = table.concat(parts)
      error(("%s while reading a POP3 multi-line body after %q; got %d bytes: %s"):format(
        err == "closed" and "connection closed" or "timeout", status, #got, show(got:sub(-200))), 2)
    end
  end
  self.buf = rest
  local body = table.concat(parts):sub(1, body_len)
  -- body now starts right after the status line and ends with CRLF (or is "")
  local lines = {}
  for l in body:gmatch("(.-)\r\n") do
    if l:sub(1, 1) == "." then l = l:sub(2) end
    lines[#lines + 1] = l
  end
  return status, lines
end

-- SMTP: send cmd (unless nil), read one possibly multi-line reply; returns
-- code (number), the text lines without "250-" / "250 ", and the raw last line
function Client:smtp(cmd, timeout)
  if cmd then self:send(cmd .. "\r\n") end
  local texts = {}
  while true do
    local ok, line = pcall(self.line, self, timeout)
    if not ok then error(line, 2) end
    local code, sep, text = line:match("^(%d%d%d)([ %-]?)(.*)$")
    if not code or (sep == "" and text ~= "") then
      error("not an SMTP reply line: " .. show(line), 2)
    end
    texts[#texts + 1] = text
    if sep ~= "-" then return tonumber(code), texts, line end
  end
end

-- mock HTTP server ------------------------------------------------------------------
-- Same process model as the mail mocks; see lua/postern/mock_http.lua.

function testing.mock_http(opts)
  local m = start_mock("mock_http.lua", opts, "mock_http")
  return m
end

function Mock:url(path)
  return ("http://%s:%d%s"):format(self.host, self.port, path or "/auth")
end

local function unescape_record(s)
  local out, i = {}, 1
  while i <= #s do
    local ch = s:sub(i, i)
    if ch == "\\" then
      local nx = s:sub(i + 1, i + 1)
      if nx == "r" then out[#out + 1] = "\r"; i = i + 2
      elseif nx == "n" then out[#out + 1] = "\n"; i = i + 2
      elseif nx == "\\" then out[#out + 1] = "\\"; i = i + 2
      elseif nx == "x" and s:sub(i + 2, i + 3):match("^%x%x$") then
        out[#out + 1] = string.char(tonumber(s:sub(i + 2, i + 3), 16)); i = i + 4
      else out[#out + 1] = ch; i = i + 1 end
    else
      local j = s:find("\\", i, true) or (#s + 1)
      out[#out + 1] = s:sub(i, j - 1)
      i = j
    end
  end
  return table.concat(out)
end

-- the requests an HTTP mock received, in the order they were complete
function Mock:requests()
  local done, cur, last_of = {}, {}, {}
  for _, l in ipairs(self:lines()) do
    local conn, len, body = l:match("^BODY (%d+) (%d+) ?(.*)$")
    if conn then
      local r = cur[conn]
      if r then
        r.body = unescape_record(body)
        r.body_length = tonumber(len)
        r.head_done = nil
        done[#done + 1] = r
        r.n = #done
        last_of[conn] = r
        cur[conn] = nil
      end
    else
      local c2, status = l:match("^RESPONSE (%d+) (%S+)$")
      if c2 then
        if last_of[c2] then last_of[c2].status = tonumber(status) or status end
      elseif l:match("^DROP %d+$") then
        local r = last_of[l:match("%d+")]
        if r then r.dropped = true end
      elseif not l:match("^CONNECT ") and not l:match("^CLOSE ") then
        local c3, text = l:match("^(%d+) (.*)$")
        if c3 then
          text = unescape_record(text)
          local r = cur[c3]
          if not r then
            local method, path, version = text:match("^(%S+) (%S+) (%S+)$")
            cur[c3] = { conn = tonumber(c3), method = method, path = path, version = version,
              request_line = text, headers = {}, h = {}, lines = {} }
          elseif not r.head_done then
            if text == "" then
              r.head_done = true
            else
              r.lines[#r.lines + 1] = text
              local name, value = text:match("^([^:]+):[ \t]*(.-)[ \t]*$")
              if name then
                r.headers[#r.headers + 1] = { name, value }
                r.h[name:lower()] = value
              end
            end
          end
        end
      end
    end
  end
  return done
end

function Mock:wait_requests(n, timeout)
  local got = poll(timeout or 3, function()
    local reqs = self:requests()
    if #reqs >= n then return reqs end
  end)
  if not got then
    error(("mock %s: expected %d request(s), got %d; records:\n%s"):format(self.name or self.port, n,
      #self:requests(), table.concat(self:lines(), "\n")), 2)
  end
  return got
end

function Mock:connections()
  local n = 0
  for _, l in ipairs(self:lines()) do
    if l:match("^CONNECT ") then n = n + 1 end
  end
  return n
end

return testing
