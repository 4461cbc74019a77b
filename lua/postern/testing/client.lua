-- postern.testing.client: the line client core (testing.client). One TCP
-- connection, optionally bound to a chosen source address (all of
-- 127.0.0.0/8 is loopback, so a spec can test routing by client IP), with
-- reads that wait at most a timeout and errors that show what arrived.
--
--   local c = client.new { port, host = "127.0.0.1", bind, timeout = 5 }
--   c:send(data) c:line(timeout) c:expect(pattern, timeout)
--   c:read_bytes(n, timeout) c:closed(timeout) c:close()
--
-- The protocol methods are mixed into the same object, so one client can
-- speak any of them: IMAP (c:response, c:command) from
-- postern.testing.client_imap, POP3 (c:pop3, c:pop3_multi) from
-- postern.testing.client_pop3, SMTP (c:smtp) from postern.testing.client_smtp.
local socket = require "socket"
local util = require "postern.testing.util"

local show = util.show

local client = {}

local Client = {}
Client.__index = Client
client.Client = Client

function client.new(opts)
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

for _, proto in ipairs { "imap", "pop3", "smtp" } do
  for name, method in pairs(require("postern.testing.client_" .. proto)) do Client[name] = method end
end

return client
