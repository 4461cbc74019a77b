-- helpers.pop3_scene: a postern with a POP3 listener and mock POP3
-- backends for one `it`, torn down by the test's `finally` (like
-- helpers.scene for IMAP).
--
--   local pop3_scene = require "helpers.pop3_scene"
--   it("...", function()
--     local sc = pop3_scene.new(finally)
--     local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
--     local p = sc:proxy { upstream = sc.route(m) }            -- everybody -> m
--     local c, greeting = sc:client(p)                         -- greeted already
--     ...
--   end)
--
-- sc:proxy(opts): opts.upstream  an upstream table (or a list of them) for
--                                every accepted login
--                 opts.users     { alice = "secret" }: the policy checks the
--                                password with s:check_password (so APOP and
--                                CRAM-MD5 work too); nil = everybody accepted
--                 opts.give_password  also hand the cleartext password to the
--                                upstream (needed for APOP/CRAM-MD5 clients)
--                 opts.refusal   the refusal (string or table) for a bad login
--                 opts.auth      the listener's auth list
--                 opts.capabilities  the listener's capabilities
--                 opts.config    more top-level configuration keys
-- The policy logs one line per login:
--   policy: mechanism=<m> user=[<u>] password=[<p>] authzid=[<a>] salt=[<s>] digest=[<d>]
local testing = require "postern.testing"

local pop3_scene = {}
pop3_scene.__index = pop3_scene

function pop3_scene.new(finally)
  assert(type(finally) == "function", "pop3_scene.new(finally): pass busted's finally")
  local sc = setmetatable({ stops = {} }, pop3_scene)
  finally(function() sc:stop_all() end)
  return sc
end

function pop3_scene:stop_all()
  local first
  for i = #self.stops, 1, -1 do
    local ok, err = pcall(self.stops[i])
    if not ok and not first then first = err end
  end
  self.stops = {}
  if first then error(first, 0) end
end

function pop3_scene:on_stop(fn)
  self.stops[#self.stops + 1] = fn
end

function pop3_scene:mock(opts)
  local m = testing.mock_pop3(opts)
  self:on_stop(function() m:stop() end)
  return m
end

-- an upstream table for a mock (or a bare port), with extra fields
function pop3_scene.route(m, extra)
  local u = { host = "127.0.0.1", port = type(m) == "number" and m or m.port }
  for k, v in pairs(extra or {}) do u[k] = v end
  return u
end

function pop3_scene.policy_source(opts)
  local cfg = {
    upstream = opts.upstream,
    users = opts.users,
    give_password = opts.give_password or false,
    refusal = opts.refusal or "Invalid login or password",
  }
  return "local cfg = " .. testing.serialize(cfg) .. [[

local postern = require "postern"
local function copy(t)
  local r = {}
  for k, v in pairs(t) do r[k] = v end
  return r
end
return {
  authenticate = function(s)
    postern.log("info", "policy: mechanism=", s.mechanism or "", " user=[", s.user or "",
      "] password=[", s.password or "", "] authzid=[", s.authzid or "", "] salt=[", s.salt or "",
      "] digest=[", s.digest or "", "]")
    if cfg.users then
      local want = cfg.users[s.user or ""]
      if not want or not s:check_password(want) then return nil, cfg.refusal end
    end
    if not cfg.upstream then return nil, cfg.refusal end
    local u
    if cfg.upstream[1] then
      u = {}
      for i, e in ipairs(cfg.upstream) do u[i] = copy(e) end
    else
      u = copy(cfg.upstream)
      if cfg.give_password then u.password = cfg.users[s.user] end
    end
    return u
  end,
}
]]
end

function pop3_scene:proxy(opts)
  opts = opts or {}
  local config = { timeout = 10 }
  for k, v in pairs(opts.config or {}) do config[k] = v end
  config.listen = { { protocol = "pop3", auth = opts.auth, capabilities = opts.capabilities } }
  local p = testing.start { policy_source = pop3_scene.policy_source(opts), config = config }
  -- the proxy stops first (its stop() checks the log for alerts and leaks)
  self:on_stop(function() p:stop() end)
  return p
end

-- a client that has read the greeting: returns the client and the greeting
function pop3_scene:client(p, opts)
  opts = opts or {}
  opts.port = opts.port or p.port
  local c = testing.client(opts)
  self:on_stop(function() c:close() end)
  local greeting = c:pop3()
  assert(greeting:match("^%+OK"), "greeting: " .. greeting)
  return c, greeting
end

-- the lines a mock received, in order, without the connection id
-- (CONNECT, AUTH and CLOSE records left out)
function pop3_scene.commands(m)
  local out = {}
  for _, l in ipairs(m:lines()) do
    if not l:match("^CONNECT ") and not l:match("^CLOSE ") and not l:match("^AUTH ") then
      out[#out + 1] = l:match("^%d+ (.*)$") or l
    end
  end
  return out
end

-- the record lines of one kind ("CONNECT", "CLOSE", "AUTH")
function pop3_scene.records(m, kind)
  local out = {}
  for _, l in ipairs(m:lines()) do
    if l:sub(1, #kind + 1) == kind .. " " then out[#out + 1] = l end
  end
  return out
end

-- the APOP timestamp at the end of a greeting, "<...>"
function pop3_scene.timestamp(greeting)
  return greeting:match("(<[^<>]*>)%s*$")
end

-- the policy's log lines, parsed: { { mechanism=, user=, password=, ... }, ... }
function pop3_scene.policy_calls(p)
  local out = {}
  for l in p:log():gmatch("[^\n]+") do
    local mech, user, pass, authzid, salt, digest = l:match(
      "policy: mechanism=(%S*) user=%[(.-)%] password=%[(.-)%] authzid=%[(.-)%] salt=%[(.-)%] digest=%[(.-)%]")
    if mech then
      out[#out + 1] = { mechanism = mech, user = user, password = pass, authzid = authzid, salt = salt,
                        digest = digest }
    end
  end
  return out
end

function pop3_scene.sorted(t)
  local r = {}
  for i, v in ipairs(t) do r[i] = v end
  table.sort(r)
  return r
end

return pop3_scene
