-- helpers.scene: a postern with mock backends for one `it`, torn down by
-- the test's `finally` (busted keeps a single finally per block, so every
-- process started through the scene is stopped from that one function).
--
--   local scene = require "helpers.scene"
--   it("...", function()
--     local sc = scene.new(finally)
--     local m = sc:mock { name = "backend" }
--     local p = sc:proxy { ["*"] = sc.route(m) }          -- user -> upstream(s)
--     local c = sc:client(p)                               -- greeted already
--     ...
--   end)
--
-- The policy routes by user name: routes[s.user] or routes["*"]; a string
-- value is a refusal message.
local testing = require "postern.testing"

local scene = {}
scene.__index = scene

-- `finally` is busted's, from the test's environment: scene.new(finally)
function scene.new(finally)
  assert(type(finally) == "function", "scene.new(finally): pass busted's finally")
  local sc = setmetatable({ stops = {} }, scene)
  finally(function() sc:stop_all() end)
  return sc
end

function scene:stop_all()
  local first
  for i = #self.stops, 1, -1 do
    local ok, err = pcall(self.stops[i])
    if not ok and not first then first = err end
  end
  self.stops = {}
  if first then error(first, 0) end
end

function scene:mock(opts)
  local m = testing.mock_imap(opts)
  self.stops[#self.stops + 1] = function() m:stop() end
  return m
end

-- an upstream table for a mock (or a bare port), with extra fields
function scene.route(m, extra)
  local u = { host = "127.0.0.1", port = type(m) == "number" and m or m.port }
  for k, v in pairs(extra or {}) do u[k] = v end
  return u
end

function scene.policy_source(routes)
  return "local routes = " .. testing.serialize(routes) .. [[

return {
  authenticate = function(s)
    local r = routes[s.user] or routes["*"]
    if r == nil then return nil, "no route for this user" end
    if type(r) == "string" then return nil, r end
    return r
  end,
}
]]
end

function scene:proxy(routes, config)
  local p = testing.start { policy_source = scene.policy_source(routes), config = config }
  -- the proxy stops first (its stop() checks the log for alerts and leaks)
  self.stops[#self.stops + 1] = function() p:stop() end
  return p
end

-- a client that has read the greeting
function scene:client(p, opts)
  opts = opts or {}
  opts.port = p.port
  local c = testing.client(opts)
  self.stops[#self.stops + 1] = function() c:close() end
  c:expect("^%* OK ")
  return c
end

-- the commands a mock received, in order, without the connection id
-- (CONNECT, AUTH and CLOSE records left out)
function scene.commands(m)
  local out = {}
  for _, l in ipairs(m:lines()) do
    if not l:match("^CONNECT ") and not l:match("^CLOSE ") and not l:match("^AUTH ") then
      out[#out + 1] = l:match("^%d+ (.*)$") or l
    end
  end
  return out
end

-- the record lines of one kind ("CONNECT", "CLOSE", "AUTH")
function scene.records(m, kind)
  local out = {}
  for _, l in ipairs(m:lines()) do
    if l:sub(1, #kind + 1) == kind .. " " then out[#out + 1] = l end
  end
  return out
end

-- an upstream scripted byte by byte from the test (one connection):
-- up.port, up:accept(), up:send(data), up:line() (without CRLF),
-- up:closed(timeout), up.s (the luasocket of the accepted connection)
function scene.raw_upstream(sc)   -- called as sc:raw_upstream()
  local socket = require "socket"
  local srv = assert(socket.bind("127.0.0.1", 0))
  srv:settimeout(5)
  local r = { port = tonumber((select(2, srv:getsockname()))) }
  function r:accept()
    self.s = assert(srv:accept())
    self.s:settimeout(5)
    self.s:setoption("tcp-nodelay", true)
  end
  function r:send(data) assert(self.s:send(data)) end
  function r:line() return assert(self.s:receive("*l")) end
  function r:closed(timeout)
    self.s:settimeout(timeout)
    local _, err = self.s:receive(1)
    return err == "closed"
  end
  sc.stops[#sc.stops + 1] = function()
    if r.s then r.s:close() end
    srv:close()
  end
  return r
end

-- resident memory of a process in KiB (nil when it is gone)
function scene.rss_kib(pid)
  local f = io.open("/proc/" .. tostring(pid) .. "/status", "r")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

return scene
