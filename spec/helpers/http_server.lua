-- spec/helpers/http_server.lua: a scriptable HTTP/1.1 server (keep-alive,
-- one thread per connection, optional TLS with a self-signed certificate)
-- run as a separate python3 process; see http_server.py for the route
-- format.
--
--   local http_server = require "helpers.http_server"
--   local srv = http_server.start {
--     routes = { { path = "/auth", method = "POST", status = 200,
--                  headers = { ["Content-Type"] = "application/json" },
--                  body = '{"status":"ok"}', delay = 0.5 } },
--     tls = false,              -- true: HTTPS with a self-signed cert for 127.0.0.1/localhost
--   }
--   srv.port, srv.url            -- "http://127.0.0.1:PORT" (https:// with tls)
--   srv:set_routes(routes[, default])   -- answers change at once
--   srv:requests()   -> { { conn=, method=, path=, query=, headers = { lower-case name = value },
--                           header_list = { {name, value}, ... }, body= }, ... }
--   srv:connections() -> number of TCP connections accepted so far
--   srv:wait_requests(n, timeout) -> requests (error if fewer than n arrive)
--   srv:stop()

local cjson = require "cjson"
local socket = require "socket"
local testing = require "postern.testing"

local M = {}

local HERE = testing.root .. "/spec/helpers"

local function q(s)
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

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function poll(timeout, fn)
  local deadline = socket.gettime() + timeout
  while true do
    local r = fn()
    if r ~= nil then return r end
    if socket.gettime() >= deadline then return nil end
    socket.sleep(0.02)
  end
end

-- a JSON array stays an array even when empty
local function routes_json(routes, default)
  local doc = { routes = routes or {}, default = default }
  if #doc.routes == 0 then doc.routes = cjson.empty_array end
  return cjson.encode(doc)
end

local Server = {}
Server.__index = Server

-- a self-signed certificate for CN=localhost, IP 127.0.0.1
function M.self_signed(dir)
  local cert, key = dir .. "/cert.pem", dir .. "/key.pem"
  local out = capture(("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
    .. "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout %s -out %s 2>&1; echo rc=$?")
    :format(q(key), q(cert)))
  assert(out:match("rc=0"), "openssl failed: " .. out)
  return cert, key
end

function M.start(opts)
  opts = opts or {}
  local dir = (capture("mktemp -d /tmp/postern-http.XXXXXX"):gsub("%s+$", ""))
  assert(dir ~= "", "mktemp failed")
  local s = setmetatable({ dir = dir, record_path = dir .. "/record.jsonl", log_path = dir .. "/server.log",
    tls = opts.tls and true or false }, Server)
  write_file(dir .. "/routes.json", routes_json(opts.routes, opts.default))
  write_file(s.record_path, "")
  local tls_args = ""
  if s.tls then
    s.cert, s.key = M.self_signed(dir)
    tls_args = (" --tls %s %s"):format(q(s.cert), q(s.key))
  end
  s.pid = tonumber(capture(("exec python3 %s %s%s </dev/null >%s 2>&1 & echo $!"):format(
    q(HERE .. "/http_server.py"), q(dir), tls_args, q(s.log_path))))
  assert(s.pid, "could not start the HTTP server")
  local port = poll(10, function()
    local p = tonumber(read_file(dir .. "/ready") or "")
    if p then return p end
    if not testing.alive(s.pid) then return false end
  end)
  if not port then
    local log = read_file(s.log_path) or ""
    s:stop()
    error("the HTTP server did not start; log:\n" .. log, 2)
  end
  s.port = port
  s.url = (s.tls and "https" or "http") .. "://127.0.0.1:" .. port
  return s
end

function Server:set_routes(routes, default)
  write_file(self.dir .. "/routes.tmp", routes_json(routes, default))
  os.rename(self.dir .. "/routes.tmp", self.dir .. "/routes.json")
end

function Server:events()
  local out = {}
  for line in (read_file(self.record_path) or ""):gmatch("[^\n]+") do
    local ok, ev = pcall(cjson.decode, line)
    if ok then out[#out + 1] = ev end
  end
  return out
end

function Server:requests()
  local out = {}
  for _, ev in ipairs(self:events()) do
    if ev.event == "request" then
      ev.header_list = ev.headers
      local h = {}
      for _, kv in ipairs(ev.headers) do h[kv[1]:lower()] = kv[2] end
      ev.headers = h
      out[#out + 1] = ev
    end
  end
  return out
end

function Server:connections()
  local n = 0
  for _, ev in ipairs(self:events()) do
    if ev.event == "connect" then n = n + 1 end
  end
  return n
end

function Server:wait_requests(n, timeout)
  local reqs = poll(timeout or 3, function()
    local r = self:requests()
    if #r >= n then return r end
  end)
  if not reqs then
    error(("HTTP server: expected %d request(s), got %d; log:\n%s"):format(n, #self:requests(),
      read_file(self.log_path) or ""), 2)
  end
  return reqs
end

function Server:log() return read_file(self.log_path) or "" end

function Server:stop()
  if self.stopped then return end
  self.stopped = true
  if self.pid then
    os.execute(("kill -TERM %d >/dev/null 2>&1"):format(self.pid))
    if not poll(5, function() return not testing.alive(self.pid) or nil end) then
      os.execute(("kill -KILL %d >/dev/null 2>&1"):format(self.pid))
      poll(2, function() return not testing.alive(self.pid) or nil end)
    end
  end
  if self.dir:match("^/tmp/postern%-http%.") then os.execute("rm -rf " .. q(self.dir)) end
end

return M
