-- by_domain.lua: route user@domain to the pool of upstreams serving that
-- domain, and inside the pool always to the same upstream for the same
-- user (consistent hashing with postern.ring), with the pool's other
-- upstreams behind it for failover.
--
-- The policy returns every upstream of the pool, the user's own first and
-- the others in ring order: when the first cannot be reached (or greets
-- badly), postern tries the next. Adding or removing one upstream of a
-- pool of N moves only about 1/N of the users; the others keep their
-- server (and their caches, their IMAP IDLE, their sieve scripts...).
--
-- This policy does NOT check passwords: the upstream does, and the client
-- sees its answer. To check credentials in postern as well, set
-- `policy.auth` to another policy (below).
--
-- Copy it into your own policy file and change the fields:
--
--   -- /etc/postern/policy.lua
--   local policy = dofile("/usr/share/postern/scripts/by_domain.lua")
--
--   policy.pools = {
--     eu = {
--       { name = "eu1", host = "10.0.1.1", port = 143 },
--       { name = "eu2", host = "10.0.1.2", port = 143 },
--       { name = "eu3", host = "10.0.1.3", port = 143, weight = 2 },  -- twice the users
--     },
--     us = {                                    -- one server, a port per protocol
--       { name = "us1", imap = { host = "10.0.2.1", port = 143 },
--                       pop3 = { host = "10.0.2.1", port = 110 },
--                       smtp = { host = "10.0.2.1", port = 587 } },
--       { name = "us2", imap = { host = "10.0.2.2", port = 143 },
--                       pop3 = { host = "10.0.2.2", port = 110 },
--                       smtp = { host = "10.0.2.2", port = 587 } },
--     },
--   }
--   policy.domains = { ["example.com"] = "eu", ["example.org"] = "eu", ["example.net"] = "us" }
--   policy.default_pool = nil                   -- refuse other domains
--   policy.default_domain = "example.com"       -- "alice" is alice@example.com
--   return policy
--
-- Composition: let another policy decide on the credentials, this one on
-- the route. `policy.auth` is a policy table (its `authenticate` is called
-- first; a refusal is passed to the client as it is, an accepted login is
-- routed by domain; the upstream it returns is ignored) or a function with
-- the same signature as authenticate:
--
--   local policy = dofile("/usr/share/postern/scripts/by_domain.lua")
--   policy.auth = dofile("/usr/share/postern/scripts/static_users.lua")
--
-- Fields:
--   pools          pool name -> a list of members. A member is an upstream
--                  table plus `name` (its place on the ring: keep it when
--                  the address changes; default "host:port") and `weight`
--                  (default 1; 0 takes it off the ring: no user is
--                  sent there, not even for failover), or
--                  { name =, weight =, imap = upstream, pop3 =, smtp = } to
--                  give one server a port per protocol (name required).
--                  The upstreams returned are copies without `weight`
--                  and with `name` set to the member's name.
--   domains        domain (lower case) -> pool name
--   default_pool   the pool for domains not listed; nil refuses them
--   default_domain the domain of a user name without "@"; nil treats such
--                  users as an unknown domain
--   points         ring points per unit of weight (default 160)
--   refuse_message the refusal for an unknown domain or a missing user
--                  name (default "Unknown domain")
--   fail_wait      seconds to delay that refusal (default 1)
--   auth           nil, or the policy (or function) that checks credentials
--
-- The key hashed is the lower-cased "local@domain" (the login, or for SMTP
-- without authentication the first recipient), so "Alice@Example.COM" and
-- "alice@example.com" land on the same upstream, and the same user lands
-- on the same upstream from every protocol (members are placed by name).
-- The rings are built on the first login and again whenever you assign a
-- new `pools` table. policy.route(address, protocol) gives the upstream
-- list for an address without a session (handy in specs and scripts).

local ring = require "postern.ring"

-- postern.log when running inside postern (or with build/postern.so)
local has_postern, postern = pcall(require, "postern")
if not has_postern or type(postern) ~= "table" then
  postern = nil
end

local function log(level, ...)
  if postern and postern.log then
    postern.log(level, ...)
  end
end

local function printable(s)
  return (tostring(s):gsub("%c", "?"))
end

local policy = {
  pools = {
    demo = {
      { name = "demo",
        imap = { host = "127.0.0.1", port = 1144 },
        pop3 = { host = "127.0.0.1", port = 1145 },
        smtp = { host = "127.0.0.1", port = 1146 } },
    },
  },
  domains = { ["example.com"] = "demo" },
  default_pool = nil,
  default_domain = "example.com",
  points = 160,
  refuse_message = "Unknown domain",
  fail_wait = 1,
  auth = nil,
}

local PROTOCOLS = { "imap", "pop3", "smtp" }

-- an upstream as postern wants it: without `weight`, named after its member
local function clean(u, name)
  if type(u) ~= "table" then return nil end
  local c = {}
  for k, v in pairs(u) do
    if k ~= "weight" then c[k] = v end
  end
  c.name = name
  return c
end

-- pool name -> ring of nodes { name =, weight =, imap =, pop3 =, smtp = }
local rings, rings_from, rings_points = {}, nil, nil

local function pool_ring(name)
  if rings_from ~= policy.pools or rings_points ~= policy.points then
    rings, rings_from, rings_points = {}, policy.pools, policy.points
  end
  local r = rings[name]
  if r then return r end
  local pool = policy.pools[name]
  if type(pool) ~= "table" then
    error(("by_domain: no pool named %q in policy.pools"):format(tostring(name)), 0)
  end
  local nodes = {}
  for i, m in ipairs(pool) do
    if type(m) ~= "table" then
      error(("by_domain: pools[%q][%d]: expected a table"):format(name, i), 0)
    end
    local node = { name = m.name, weight = m.weight }
    if m.host ~= nil then
      if node.name == nil and m.port ~= nil then
        node.name = tostring(m.host) .. ":" .. tostring(m.port)
      end
      local up = clean(m, node.name)
      for _, p in ipairs(PROTOCOLS) do node[p] = up end
    else
      if m.name == nil then
        error(("by_domain: pools[%q][%d]: a member with an upstream per protocol needs a name"):format(
          name, i), 0)
      end
      for _, p in ipairs(PROTOCOLS) do node[p] = clean(m[p], m.name) end
    end
    nodes[i] = node
  end
  local err
  r, err = ring.new(nodes, { points = policy.points })
  if not r then
    error(("by_domain: pool %q: %s"):format(name, err), 0)
  end
  rings[name] = r
  return r
end

-- "Alice@Example.COM" -> "alice@example.com", "example.com"
-- (nil when there is no domain and no default_domain)
local function split(address)
  local localpart, domain = address:match("^(.*)@([^@]*)$")
  if not localpart then
    localpart, domain = address, policy.default_domain
    if domain == nil then return nil end
  end
  domain = domain:lower()
  return localpart:lower() .. "@" .. domain, domain
end

-- the upstreams for an address and protocol: a list, the user's own first;
-- or nil, refusal
function policy.route(address, protocol)
  if type(address) ~= "string" or address == "" then
    return nil, { message = policy.refuse_message, wait = policy.fail_wait }
  end
  local key, domain = split(address)
  local name = domain and policy.domains[domain]
  if name == nil then
    name = policy.default_pool
  end
  if name == nil then
    log("info", "no pool for ", printable(address), ": refused")
    return nil, { message = policy.refuse_message, wait = policy.fail_wait }
  end
  local out = {}
  for _, node in ipairs(pool_ring(name):sequence(key)) do
    out[#out + 1] = node[protocol]
  end
  if #out == 0 then
    error(("by_domain: pool %q has no upstream for %s"):format(tostring(name), tostring(protocol)), 0)
  end
  log("debug", printable(key), " -> pool ", name, ", first ", out[1].name)
  return out
end

function policy.authenticate(s)
  local auth = policy.auth
  if auth ~= nil then
    local check = type(auth) == "function" and auth or auth.authenticate
    local ok, refusal = check(s)
    if not ok then
      return nil, refusal or "Invalid login or password"
    end
  end
  local address = s.user
  if (address == nil or address == "") and s.protocol == "smtp" and type(s.rcpt_to) == "table" then
    address = s.rcpt_to[1]          -- SMTP without AUTH: the first recipient
    if type(address) == "string" then address = address:match("^<?(.-)>?$") end
  end
  return policy.route(address, s.protocol)
end

return policy
