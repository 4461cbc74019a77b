-- postern.testing.mock: the handle on a mock backend process, what
-- testing.mock_imap, mock_pop3, mock_smtp and mock_http return.
--
--   local m = mock.start("mock_imap", opts)   -- any module with run(opts), see run_mock.lua
--   m.port, m.host, m.name, m.pid, m.record_path, m.log_path
--   m:lines() m:wait_for(pattern, timeout=3) m:logins() m:log() m:stop()
--   m:messages()                               SMTP: the messages received by DATA
--   m:url(path) m:requests() m:wait_requests(n, timeout=3) m:connections()   HTTP
--
-- The process writes `READY <port>` first in its record file once it
-- listens; start() waits (5 s) for that line.
local util = require "postern.testing.util"
local process = require "postern.testing.process"
local serialize = require "postern.testing.serialize"
local env = require "postern.testing.env"

local sh_quote, read_file, poll = util.sh_quote, util.read_file, util.poll

local mock = {}

local Mock = {}
Mock.__index = Mock
mock.Mock = Mock

-- start module (a short name such as "mock_imap", or a module name found
-- through lua_path) with opts as its own process; lua_path (optional) is
-- put first on the mock's LUA_PATH; `what` names it in errors
function mock.start(module, opts, lua_path, what)
  opts = opts or {}
  what = what or module
  local dir = util.mktemp_dir("postern-mock")
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.port = opts.port or 0
  o.host = opts.host or "127.0.0.1"
  o.record = dir .. "/record"
  local opts_path = dir .. "/options.lua"
  serialize.write_config(opts_path, o)
  util.write_file(o.record, "")
  local m = setmetatable({ dir = dir, host = o.host, record_path = o.record,
    log_path = dir .. "/mock.log", name = o.name }, Mock)
  local path = lua_path and ("env " .. sh_quote("LUA_PATH=" .. lua_path .. ";;") .. " ") or ""
  m.pid = process.spawn(("exec %s%s %s %s %s >%s 2>&1"):format(path, env.luajit,
    sh_quote(env.root .. "/lua/postern/testing/run_mock.lua"), sh_quote(module), sh_quote(opts_path),
    sh_quote(m.log_path)))
  assert(m.pid, "could not start the mock")
  process.guard(m)
  local port = poll(5, function()
    local first = (read_file(m.record_path) or ""):match("^READY (%d+)\n")
    if first then return tonumber(first) end
    if not process.alive(m.pid) then return false end
  end)
  if not port then
    local log = m:log()
    m:stop()
    error(what .. " did not become ready; log:\n" .. log, 3)
  end
  m.port = port
  return m
end

function Mock:log() return read_file(self.log_path) or "" end

function Mock:lines()
  local out = {}
  for _, l in ipairs(util.lines_of(read_file(self.record_path))) do
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
    process.kill(self.pid, "TERM")
    if not poll(5, function() return not process.alive(self.pid) or nil end) then
      process.kill(self.pid, "KILL")
      poll(2, function() return not process.alive(self.pid) or nil end)
    end
  end
  util.rm_rf(self.dir)
end

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

return mock
