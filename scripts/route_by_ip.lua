-- route_by_ip.lua: send each client to an upstream pool chosen by the
-- client's network (its source address), with a default pool for the rest.
--
-- This policy does NOT check passwords: it passes the client's credentials
-- on to the upstream, which accepts or refuses the login (the client sees
-- the upstream's answer). To check credentials in postern as well, set
-- `policy.auth` to another policy (below).
--
-- Copy it into your own policy file and change the fields:
--
--   -- /etc/postern/policy.lua
--   local policy = dofile("/usr/share/postern/scripts/route_by_ip.lua")
--
--   policy.networks = {                       -- CIDR -> pool name
--     { "10.0.0.0/8",       "office" },
--     { "10.99.0.0/16",     "lab" },          -- the longest prefix wins
--     { "192.168.0.0/16",   "office" },
--     { "2001:db8:1::/48",  "office" },
--   }
--   policy.pools = {
--     -- a list: postern tries them in order when one cannot be reached
--     office = { { host = "10.0.0.5", port = 143 }, { host = "10.0.0.6", port = 143 } },
--     lab    = { host = "10.99.0.2", port = 143 },
--     -- one entry per protocol, each an upstream or a list of them
--     public = {
--       imap = { { host = "10.1.0.5", port = 143 }, { host = "10.1.0.6", port = 143 } },
--       pop3 = { host = "10.1.0.5", port = 110 },
--       smtp = { host = "10.1.0.7", port = 587 },
--     },
--   }
--   policy.default_pool = "public"            -- nil: refuse other networks
--   return policy
--
-- Composition: let another policy decide on the credentials, this one on
-- the route. `policy.auth` is a policy table (its `authenticate` is called
-- first; a refusal is passed to the client as it is, an accepted login is
-- routed by network; the upstream it returns is ignored) or a function
-- with the same signature as authenticate:
--
--   local policy = dofile("/usr/share/postern/scripts/route_by_ip.lua")
--   policy.auth = dofile("/usr/share/postern/scripts/static_users.lua")
--   policy.auth.users_file = "/etc/postern/users.txt"
--   ...
--
-- Fields:
--   networks       a list of { "cidr", "pool name" } (IPv4 and IPv6; see
--                  postern.ip: a.b.c.d and ::ffff:a.b.c.d are the same
--                  client). The most specific network holding the client
--                  wins, whatever the order; for the same network twice,
--                  the first. Compiled on the first login, and again
--                  whenever you assign a new table.
--   pools          pool name -> an upstream { host =, port = }, a list of
--                  upstreams (failover order), or a table keyed by protocol
--                  ("imap", "pop3", "smtp") whose values are one of these.
--                  A list may also hold per-protocol tables (one server
--                  with a port per protocol).
--   default_pool   the pool for clients in no listed network; nil refuses
--                  them with refuse_message
--   refuse_message the refusal for those clients
--                  (default "Not allowed from your network")
--   fail_wait      seconds to delay that refusal (default 1)
--   auth           nil, or the policy (or function) that checks credentials
--
-- A pool name that does not exist, or a pool without an upstream for the
-- session's protocol, is a configuration error: the hook raises it, the
-- client gets a temporary failure and the log says what is missing.

local ip = require "postern.ip"

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

local policy = {
  networks = {
    { "127.0.0.0/8", "local" },
    { "::1/128", "local" },
  },
  pools = {
    ["local"] = {
      imap = { host = "127.0.0.1", port = 1144 },
      pop3 = { host = "127.0.0.1", port = 1145 },
      smtp = { host = "127.0.0.1", port = 1146 },
    },
  },
  default_pool = nil,
  refuse_message = "Not allowed from your network",
  fail_wait = 1,
  auth = nil,
}

-- the compiled networks, and the table they were compiled from
local compiled, compiled_from

local function matcher()
  local networks = policy.networks
  if compiled and compiled_from == networks then
    return compiled
  end
  if type(networks) ~= "table" then
    error("route_by_ip: policy.networks must be a list of { cidr, pool }", 0)
  end
  local entries = {}
  for i, n in ipairs(networks) do
    if type(n) ~= "table" or type(n[2]) ~= "string" then
      error(("route_by_ip: networks[%d] must be { \"cidr\", \"pool name\" }"):format(i), 0)
    end
    if policy.pools[n[2]] == nil then
      error(("route_by_ip: networks[%d] (%s): no pool named %q in policy.pools"):format(
        i, tostring(n[1]), n[2]), 0)
    end
    entries[i] = { n[1], n[2] }
  end
  local list, err = ip.list(entries)
  if not list then
    error("route_by_ip: policy.networks: " .. err, 0)
  end
  compiled, compiled_from = list, networks
  return list
end

local PROTOCOLS = { imap = true, pop3 = true, smtp = true }

-- a pool for one protocol -> a flat list of upstreams
local function resolve(entry, protocol, out)
  if type(entry) ~= "table" then return out end
  if entry.host ~= nil then
    out[#out + 1] = entry
    return out
  end
  local by_protocol = false
  for p in pairs(PROTOCOLS) do
    if entry[p] ~= nil then by_protocol = true end
  end
  if by_protocol then
    return resolve(entry[protocol], protocol, out)
  end
  for _, e in ipairs(entry) do
    resolve(e, protocol, out)
  end
  return out
end

-- the upstreams of pool `name` for `protocol` (a list, failover order)
function policy.upstreams(name, protocol)
  local pool = policy.pools[name]
  if pool == nil then
    error(("route_by_ip: no pool named %q in policy.pools"):format(tostring(name)), 0)
  end
  local list = resolve(pool, protocol, {})
  if #list == 0 then
    error(("route_by_ip: pool %q has no upstream for %s"):format(tostring(name), tostring(protocol)), 0)
  end
  return list
end

-- the pool name for a client address, and the network that chose it
-- (nil when the address is in no listed network)
function policy.pool_for(client_ip)
  return matcher():lookup(client_ip)
end

function policy.authenticate(s)
  local networks = matcher()          -- a configuration error shows at once
  local auth = policy.auth
  if auth ~= nil then
    local check = type(auth) == "function" and auth or auth.authenticate
    local ok, refusal = check(s)
    if not ok then
      return nil, refusal or "Invalid login or password"
    end
  end
  local name, network = networks:lookup(s.client_ip)
  if name == nil then
    name = policy.default_pool
    if name == nil then
      log("info", "client ", tostring(s.client_ip), " is in no listed network: refused")
      return nil, { message = policy.refuse_message, wait = policy.fail_wait }
    end
    network = "default"
  end
  log("debug", "client ", tostring(s.client_ip), " (", network, ") -> pool ", name)
  return policy.upstreams(name, s.protocol)
end

return policy
