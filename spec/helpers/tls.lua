-- helpers.tls: TLS for the specs' line clients (lua-sec), and TLS fronts
-- for the plaintext mock backends (spec/helpers/tls_front.py).
--
--   local tls = require "helpers.tls"
--   local c = tls.client { port = p.port, cafile = certs.ca, sni = "mail.test" }
--                                  -- testing.client over TLS (implicit), handshake done
--   local c = testing.client { port = p.port } ... tls.starttls(c, opts)
--                                  -- the same client switches to TLS (after "a OK Begin TLS")
--   local c, err = tls.try_client { ... }   -- nil, "handshake: ..." instead of an error
--   tls.peer_subject(c)            -- "CN=mail.test,O=Postern Tests"-like text of the served cert
--   c.tls_cipher, c.tls_protocol
--
-- Client options: port, host, bind, timeout (as testing.client), sni,
-- cafile (verify the chain against it; default: no verification),
-- certificate + key (a client certificate).
--
--   local f = tls.front { target = mock.port, cert = certs.server, key = certs.server_key,
--                         mode = "implicit" | "starttls", proto = "imap" | "pop3" | "smtp",
--                         no_starttls = true, inject = true }
--   f.port, f:lines(), f:wait_for(pattern, timeout), f:stop()
--   records: see tls_front.py ("CONNECT n", "n PLAIN line", "n FIRST hex", "n TLS ...", "n TLSFAIL ...", "n CLOSE")
--
--   local d = tls.drip { target = p.port, chunk = 1, delay = 0.001 }   -- d.port, d:stop()
--   a relay that splits what the client sends into tiny writes (spec/helpers/drip.py)
local testing = require "postern.testing"
local socket = require "socket"
local ssl = require "ssl"

local _M = {}

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- ---- clients ---------------------------------------------------------------------

-- Client:_recv for a lua-sec socket: "wantread"/"wantwrite" mean "nothing now"
local function tls_recv(self, deadline)
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
        if err ~= "timeout" and err ~= "wantread" and err ~= "wantwrite" then
          self.eof = true
          self.eof_reason = err
        end
        break
      end
    end
    if #got > 0 then return table.concat(got) end
    if self.eof then return nil, "closed" end
    local left = deadline - socket.gettime()
    if left <= 0 then return nil, "timeout" end
    if not s:dirty() then socket.select({ s }, nil, math.min(left, 0.5)) end
  end
end

local function params(opts)
  local p = {
    mode = "client",
    protocol = "any",
    options = { "all" },
    verify = opts.cafile and "peer" or "none",
    cafile = opts.cafile,
    certificate = opts.certificate,
    key = opts.key,
  }
  return p
end

-- switch a connected testing.client to TLS; true or nil, reason
function _M.try_starttls(c, opts)
  opts = opts or {}
  if #c.buf > 0 then
    return nil, "plaintext left unread before the handshake: " .. c.buf
  end
  local conn, err = ssl.wrap(c.sock, params(opts))
  if not conn then return nil, "wrap: " .. tostring(err) end
  if opts.sni then conn:sni(opts.sni) end
  conn:settimeout(opts.timeout or c.timeout or 5)
  local ok, herr = conn:dohandshake()
  c.sock = conn
  c._recv = tls_recv
  if not ok then
    c.eof = true
    return nil, "handshake: " .. tostring(herr)
  end
  local info = conn:info() or {}
  c.tls_cipher = info.cipher
  c.tls_protocol = info.protocol
  return true
end

function _M.starttls(c, opts)
  local ok, err = _M.try_starttls(c, opts)
  if not ok then error("TLS " .. err, 2) end
  return c
end

function _M.try_client(opts)
  local c = testing.client(opts)
  local ok, err = _M.try_starttls(c, opts)
  if not ok then
    c:close()
    return nil, err
  end
  return c
end

function _M.client(opts)
  local c, err = _M.try_client(opts)
  if not c then error("TLS " .. err, 2) end
  return c
end

-- the served certificate's subject, e.g. "CN=mail.test,O=Postern Tests" (lua-sec's order)
function _M.peer_subject(c)
  local cert = c.sock:getpeercertificate()
  if not cert then return nil end
  local parts = {}
  for _, e in ipairs(cert:subject()) do parts[#parts + 1] = (e.name or e.oid) .. "=" .. e.value end
  return table.concat(parts, ",")
end

-- ---- TLS fronts for the mocks ---------------------------------------------------

local Front = {}
Front.__index = Front

local function spawn(f, argv, what)
  local q = {}
  for i, a in ipairs(argv) do q[i] = sh_quote(a) end
  local p = io.popen(("exec %s >%s 2>&1 </dev/null & echo $!"):format(table.concat(q, " "), sh_quote(f.log_path)))
  f.pid = tonumber(p:read("*a"))
  p:close()
  local deadline = socket.gettime() + 10
  while socket.gettime() < deadline do
    local port = (read_file(f.record_path) or ""):match("^READY (%d+)\n")
    if port then
      f.port = tonumber(port)
      return f
    end
    if not testing.alive(f.pid) then break end
    socket.sleep(0.02)
  end
  local log = read_file(f.log_path) or ""
  f:stop()
  error(what .. " did not start; log:\n" .. log, 3)
end

local function new_front()
  local dir = (io.popen("mktemp -d /tmp/postern-front.XXXXXX"):read("*l"))
  local f = setmetatable({ dir = dir, record_path = dir .. "/record", log_path = dir .. "/front.log" }, Front)
  -- a front that is garbage-collected (or alive when busted closes its Lua state) is stopped
  local guard = newproxy(true)
  getmetatable(guard).__gc = function() f:stop() end
  f._guard = guard
  return f
end

function _M.front(opts)
  assert(opts.target and opts.cert and opts.key, "tls.front: target, cert and key are required")
  local f = new_front()
  local argv = { "python3", testing.root .. "/spec/helpers/tls_front.py",
    "--target", tostring(opts.target), "--cert", opts.cert, "--key", opts.key,
    "--record", f.record_path, "--mode", opts.mode or "implicit", "--proto", opts.proto or "imap" }
  if opts.no_starttls then argv[#argv + 1] = "--no-starttls" end
  if opts.inject then argv[#argv + 1] = "--inject" end
  if opts.client_ca then
    argv[#argv + 1] = "--client-ca"
    argv[#argv + 1] = opts.client_ca
  end
  return spawn(f, argv, "tls_front")
end

-- a relay to 127.0.0.1:target that splits what the client sends into `chunk`-byte
-- writes `delay` seconds apart (spec/helpers/drip.py): f.port, f:stop()
function _M.drip(opts)
  local f = new_front()
  return spawn(f, { "python3", testing.root .. "/spec/helpers/drip.py", tostring(opts.target), f.record_path,
    tostring(opts.chunk or 1), tostring(opts.delay or 0.001) }, "drip")
end

function Front:lines()
  local out = {}
  for l in (read_file(self.record_path) or ""):gmatch("[^\n]+") do
    if not l:match("^READY ") then out[#out + 1] = l end
  end
  return out
end

function Front:wait_for(pattern, timeout)
  local deadline = socket.gettime() + (timeout or 3)
  while true do
    for _, l in ipairs(self:lines()) do
      if l:find(pattern) then return l end
    end
    if socket.gettime() >= deadline then break end
    socket.sleep(0.02)
  end
  error(("tls front: no record matching %q; records:\n%s\nlog:\n%s"):format(pattern,
    table.concat(self:lines(), "\n"), read_file(self.log_path) or ""), 2)
end

function Front:stop()
  if self.stopped then return end
  self.stopped = true
  if self.pid then
    os.execute("kill -TERM " .. self.pid .. " >/dev/null 2>&1")
    local deadline = socket.gettime() + 5
    while testing.alive(self.pid) and socket.gettime() < deadline do socket.sleep(0.02) end
    if testing.alive(self.pid) then os.execute("kill -KILL " .. self.pid .. " >/dev/null 2>&1") end
  end
  if self.dir and self.dir:match("^/tmp/postern%-front%.") then os.execute("rm -rf " .. sh_quote(self.dir)) end
end

return _M
