-- helpers.smtp_scene: a postern with an SMTP listener and mock SMTP
-- backends for one `it`, torn down by the test's `finally` (busted keeps a
-- single finally per block, so everything started through the scene is
-- stopped from that one function; the proxy first, so its stop() checks
-- the log for alerts and leaks).
--
--   local smtp_scene = require "helpers.smtp_scene"
--   it("...", function()
--     local sc = smtp_scene.new(finally)
--     local m = sc:mock { name = "mx-a" }
--     local p = sc:proxy { users = { ["*"] = sc.route(m) } }
--     local c = sc:client(p)            -- the 220 greeting read already
--     ...
--   end)
--
-- The policy (smtp_scene.policy_source) logs what it got on one line
--   policy: mechanism=<m> user=<u> authzid=<a> helo=<h> mail_from=<f> rcpt=<r1,r2> attempt=<n> |
-- and decides:
--   mechanism "none" (auth = { "none" }): routes.domains[<domain of the last
--     recipient>] or routes.domains["*"]
--   otherwise: routes.users[s.user] or routes.users["*"]
-- A route is an upstream table, a list of them, a string (the refusal
-- message) or { refusal = <refusal table> }; no route is a refusal.
local testing = require "postern.testing"
local mime = require "mime"

local smtp_scene = {}
smtp_scene.__index = smtp_scene

function smtp_scene.new(finally)
  assert(type(finally) == "function", "smtp_scene.new(finally): pass busted's finally")
  local sc = setmetatable({ stops = {} }, smtp_scene)
  finally(function() sc:stop_all() end)
  return sc
end

function smtp_scene:stop_all()
  local first
  for i = #self.stops, 1, -1 do
    local ok, err = pcall(self.stops[i])
    if not ok and not first then first = err end
  end
  self.stops = {}
  if first then error(first, 0) end
end

-- run fn(...) at teardown (for processes started by the test itself)
function smtp_scene:on_stop(fn)
  self.stops[#self.stops + 1] = fn
end

-- an upstream scripted byte by byte from the test: the same as
-- helpers.scene's (up.port, up:accept(), up:send(data), up:line(), ...),
-- stopped with the scene
smtp_scene.raw_upstream = require("helpers.scene").raw_upstream

function smtp_scene:mock(opts)
  local m = testing.mock_smtp(opts)
  self.stops[#self.stops + 1] = function() m:stop() end
  return m
end

-- an upstream table for a mock (or a bare port), with extra fields
function smtp_scene.route(m, extra)
  local u = { host = "127.0.0.1", port = type(m) == "number" and m or m.port }
  for k, v in pairs(extra or {}) do u[k] = v end
  return u
end

function smtp_scene.policy_source(routes)
  return "local routes = " .. testing.serialize(routes) .. [[

local postern = require "postern"

local function pick(r)
  if r == nil then return nil, "no route" end
  if type(r) == "string" then return nil, r end
  if r.refusal then return nil, r.refusal end
  return r
end

return {
  authenticate = function(s)
    local rcpt = s.rcpt_to or {}
    postern.log("info", "policy: mechanism=", tostring(s.mechanism), " user=", tostring(s.user),
      " authzid=", tostring(s.authzid), " helo=", tostring(s.helo), " mail_from=", tostring(s.mail_from),
      " rcpt=", table.concat(rcpt, ","), " attempt=", tostring(s.login_attempt), " |")
    if s.mechanism == "none" then
      local domain = (rcpt[#rcpt] or ""):match("@([^@]*)$")
      local d = routes.domains or {}
      return pick(d[domain] or d["*"])
    end
    local u = routes.users or {}
    return pick(u[s.user] or u["*"])
  end,
}
]]
end

-- routes: see the header; opts: auth (the listener's list, default
-- { "plain", "login" }), listener (extra listener keys), config (extra
-- top-level keys), env
function smtp_scene:proxy(routes, opts)
  opts = opts or {}
  return self:proxy_source(smtp_scene.policy_source(routes), opts)
end

-- the same with a policy of the test's own (Lua source text)
function smtp_scene:proxy_source(source, opts)
  opts = opts or {}
  local listener = { protocol = "smtp", auth = opts.auth or { "plain", "login" } }
  for k, v in pairs(opts.listener or {}) do listener[k] = v end
  local config = { listen = { listener } }
  for k, v in pairs(opts.config or {}) do config[k] = v end
  local p = testing.start { policy_source = source, config = config, env = opts.env }
  self.stops[#self.stops + 1] = function() p:stop() end
  return p
end

-- a client connected to p (or a port); greeted = read the 220 greeting
function smtp_scene:client(p, opts)
  opts = opts or {}
  local port = type(p) == "number" and p or p.port
  local c = testing.client { port = port, bind = opts.bind, timeout = opts.timeout }
  self.stops[#self.stops + 1] = function() c:close() end
  if opts.greeted ~= false then
    local code, _, last = c:smtp()
    assert(code == 220, "expected a 220 greeting, got " .. tostring(last))
  end
  return c
end

-- a client that has said EHLO (or HELO with opts.helo_verb = "HELO")
function smtp_scene:ehlo_client(p, opts)
  opts = opts or {}
  local c = self:client(p, opts)
  local code, _, last = c:smtp((opts.helo_verb or "EHLO") .. " " .. (opts.helo or "client.example"))
  assert(code == 250, "EHLO: " .. tostring(last))
  return c
end

function smtp_scene.plain(user, pass, authzid)
  return (mime.b64((authzid or "") .. "\0" .. user .. "\0" .. pass))
end

function smtp_scene.b64(s) return (mime.b64(s)) end

-- the raw reply lines of one (multi-line) reply
function smtp_scene.raw_reply(c, cmd, timeout)
  if cmd then c:send(cmd .. "\r\n") end
  local lines = {}
  while true do
    local l = c:line(timeout)
    lines[#lines + 1] = l
    if not l:match("^%d%d%d%-") then return lines end
  end
end

-- the commands a mock received, in order, without the connection id
-- (CONNECT, AUTH, XCLIENT, MESSAGE and CLOSE records left out)
function smtp_scene.commands(m)
  local out = {}
  for _, l in ipairs(m:lines()) do
    local rest = l:match("^%d+ (.*)$")
    if rest then out[#out + 1] = rest end
  end
  return out
end

-- the record lines of one kind ("CONNECT", "AUTH", "XCLIENT", "MESSAGE", "CLOSE")
function smtp_scene.records(m, kind)
  local out = {}
  for _, l in ipairs(m:lines()) do
    if l:sub(1, #kind + 1) == kind .. " " then out[#out + 1] = l end
  end
  return out
end

-- the "policy:" log line fields of the proxy, in order: { {mechanism=, user=, ...}, ... }
function smtp_scene.policy_calls(p)
  local out = {}
  for l in p:log():gmatch("[^\n]+") do
    local rest = l:match("policy: (mechanism=.-) |")
    if rest then
      local t = {}
      for k, v in rest:gmatch("([%w_]+)=(%S*)") do t[k] = v end
      out[#out + 1] = t
    end
  end
  return out
end

-- wait until the mock has recorded a line matching pattern, return all lines
function smtp_scene.wait(m, pattern, timeout)
  m:wait_for(pattern, timeout or 3)
  return m:lines()
end

return smtp_scene
