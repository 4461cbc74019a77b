-- postern.testing.mock_server: the event loop and helpers shared by the
-- mock backends (mock_imap, mock_pop3, mock_smtp, mock_http). Requiring it
-- does nothing; a mock's run(opts) calls
--
--   local srv = mock_server.start("mock_pop3", opts)  -- binds, opens the record file
--   srv.record(text)
--   srv.run(function(c) ... end)                      -- one coroutine per connection;
--                                                     -- never returns
--
-- opts.host, opts.port: the listen address (127.0.0.1; port 0 = any free
-- port); opts.record names the record file (default: stdout), whose first
-- line is `READY <port>` once listening; every record is one line, flushed
-- at once. The process is a mock's whole life: SIGTERM ends it at once
-- (default action). postern.testing starts each mock as its own process
-- through lua/postern/testing/run_mock.lua.
--
-- Inside the session function, with blocking style:
--   c:send(s) c:sendline(s) c:send_big(s) c:sleep(sec)
--   c:readline() -> line without CRLF | nil at EOF
--   c:readn(n, keep) -> the n bytes (nil when n > keep), count | nil, count at EOF
-- Returning from the session function flushes what was sent and closes.

local socket = require "socket"
local mime = require "mime"

local _M = {}

local INBUF_MAX = 1024 * 1024   -- stop reading a client above this
local OUTBUF_HIGH = 256 * 1024  -- a writer waits above this

local function now() return socket.gettime() end

-- connection methods (run inside the connection's coroutine) -------------------
local Conn = {}
Conn.__index = Conn

function Conn:send(s)
  if self.dead then error("dead", 0) end
  self.out[#self.out + 1] = s
  self.outlen = self.outlen + #s
  while self.outlen > OUTBUF_HIGH do
    self.wait = "write"
    coroutine.yield()
    if self.dead then error("dead", 0) end
  end
end

function Conn:sendline(s) self:send(s .. "\r\n") end

-- send a big string in slices so the writer's backpressure applies
function Conn:send_big(s)
  local step = 65536
  for i = 1, #s, step do self:send(s:sub(i, i + step - 1)) end
end

function Conn:sleep(sec)
  if not sec or sec <= 0 then return end
  self.wait = "sleep"
  self.deadline = now() + sec
  coroutine.yield()
end

function Conn:buffered() return #self.inbuf - self.inpos + 1 end

-- next line without CRLF (a bare LF is tolerated); nil on EOF
function Conn:readline()
  while true do
    local i = self.inbuf:find("\n", self.inpos, true)
    if i then
      local line = self.inbuf:sub(self.inpos, i - 1)
      self.inpos = i + 1
      if line:sub(-1) == "\r" then line = line:sub(1, -2) end
      return line
    end
    if self.eof then return nil end
    self.wait = "read"
    coroutine.yield()
  end
end

-- read n bytes; keep them only when n <= keep (big literals are counted, not
-- stored); returns the data (or nil) and n, or nil and the count at EOF
function Conn:readn(n, keep)
  local parts, got = {}, 0
  while got < n do
    local avail = self:buffered()
    if avail == 0 then
      if self.eof then return nil, got end
      self.wait = "read"
      coroutine.yield()
    else
      local take = math.min(n - got, avail)
      if got + take <= keep then parts[#parts + 1] = self.inbuf:sub(self.inpos, self.inpos + take - 1) end
      self.inpos = self.inpos + take
      got = got + take
    end
  end
  if n <= keep then return table.concat(parts), n end
  return nil, n
end

-- SASL helpers ------------------------------------------------------------------

-- base64 decode; "=" (RFC 4954/5034: an empty response) is ""; nil when invalid
function _M.unb64(s)
  if s == "=" then return "" end
  if not s:match("^[%w%+/]*=?=?$") or #s % 4 ~= 0 then return nil end
  return (mime.unb64(s)) or ""
end

function _M.b64(s) return (mime.b64(s)) or "" end

-- PLAIN: authzid \0 user \0 password -> user, password, authzid
function _M.decode_plain(raw)
  local authzid, user, pass = raw:match("^([^%z]*)%z([^%z]*)%z([^%z]*)$")
  return user, pass, authzid
end

-- XOAUTH2: "user=U\1auth=Bearer T\1\1" -> user, token
function _M.decode_xoauth2(raw)
  local user, token
  for kv in raw:gmatch("[^\1]+") do
    local k, v = kv:match("^([^=]+)=(.*)$")
    if k == "user" then user = v
    elseif k == "auth" then token = v:match("^[Bb]earer (.*)$") end
  end
  return user, token
end

-- OAUTHBEARER (RFC 7628): "n,a=U,\1auth=Bearer T\1\1" -> user, token
function _M.decode_oauthbearer(raw)
  local gs2, rest = raw:match("^([^\1]*)\1(.*)$")
  if not gs2 then return nil end
  local user = gs2:match("^[nyp][^,]*,a=([^,]*),")
  if user then user = user:gsub("=2[Cc]", ","):gsub("=3[Dd]", "=") end
  local token
  for kv in rest:gmatch("[^\1]+") do
    local k, v = kv:match("^([^=]+)=(.*)$")
    if k == "auth" then token = v:match("^[Bb]earer (.*)$") end
  end
  return user, token
end

-- the server ------------------------------------------------------------------------

function _M.start(label, opts)
  assert(type(opts) == "table", label .. ": options must be a table")

  local rec
  if opts.record then
    rec = assert(io.open(opts.record, "a"))
  else
    rec = io.stdout
  end
  local function record(s)
    rec:write(s, "\n")
    rec:flush()
  end

  local server = assert(socket.bind(opts.host or "127.0.0.1", opts.port or 0, 128))
  server:settimeout(0)
  local _, bound_port = server:getsockname()

  local srv = { opts = opts, record = record, port = tonumber(bound_port) }

  function srv.run(session)
    local conns = {}
    local next_id = 0
    record("READY " .. bound_port)

    local function close_conn(c)
      if c.closed then return end
      c.closed = true
      c.dead = true
      conns[c.sock] = nil
      c.sock:close()
      record("CLOSE " .. c.id)
    end

    local function resume(c)
      c.wait = nil
      local ok, err = coroutine.resume(c.co)
      if not ok then
        if err ~= "dead" then
          io.stderr:write(label .. ": connection " .. c.id .. ": " .. tostring(err) .. "\n")
        end
        c.finished = true
        c.out, c.outlen = {}, 0
      elseif coroutine.status(c.co) == "dead" then
        c.finished = true
      end
    end

    local function flush(c)
      while #c.out > 0 do
        local s = c.out[1]
        local last, err, partial = c.sock:send(s, c.outpos)
        local sent = last or partial or (c.outpos - 1)
        if last then
          c.outlen = c.outlen - (#s - c.outpos + 1)
          table.remove(c.out, 1)
          c.outpos = 1
        else
          c.outlen = c.outlen - (sent - c.outpos + 1)
          c.outpos = sent + 1
          if err ~= "timeout" then close_conn(c) end
          return
        end
      end
    end

    while true do
      local rset, wset = { server }, {}
      local timeout = 1
      local t = now()
      for sock, c in pairs(conns) do
        if not c.eof and c:buffered() < INBUF_MAX and not c.finished then rset[#rset + 1] = sock end
        if #c.out > 0 then wset[#wset + 1] = sock end
        if c.wait == "sleep" then timeout = math.max(0, math.min(timeout, c.deadline - t)) end
      end
      local readable, writable = socket.select(rset, wset, timeout)

      while true do
        local s = server:accept()
        if not s then break end
        s:settimeout(0)
        s:setoption("tcp-nodelay", true)
        next_id = next_id + 1
        local ip, port = s:getpeername()
        local c = setmetatable({ sock = s, id = next_id, inbuf = "", inpos = 1, out = {}, outlen = 0,
          outpos = 1 }, Conn)
        c.co = coroutine.create(function() session(c) end)
        conns[s] = c
        record(("CONNECT %d %s %s"):format(c.id, tostring(ip), tostring(port)))
        resume(c)
      end

      for _, sock in ipairs(readable or {}) do
        local c = conns[sock]
        if c then
          local got, total = {}, c:buffered()
          while total < INBUF_MAX do
            local data, err, partial = sock:receive(65536)
            data = data or partial
            if data and #data > 0 then
              got[#got + 1] = data
              total = total + #data
            end
            if err == "closed" or (err and err ~= "timeout") then
              c.eof = true
              break
            end
            if err then break end
          end
          if #got > 0 then
            c.inbuf = c.inbuf:sub(c.inpos) .. table.concat(got)
            c.inpos = 1
          end
          if c.wait == "read" then resume(c) end
        end
      end

      for _, sock in ipairs(writable or {}) do
        local c = conns[sock]
        if c then flush(c) end
      end

      for _, c in pairs(conns) do
        local progress = true
        while progress and not c.closed do
          progress = false
          if #c.out > 0 then flush(c) end
          if c.closed or c.finished then break end
          if (c.wait == "sleep" and now() >= c.deadline)
            or (c.wait == "write" and c.outlen <= OUTBUF_HIGH)
            or (c.wait == "read" and c.eof) then
            resume(c)
            progress = true
          end
        end
        if not c.closed and c.finished and #c.out == 0 then close_conn(c) end
      end
    end
  end

  return srv
end

return _M
