-- throttle.lua: slow down password guessing. Failed logins are counted
-- per client IP and per user in Redis; once a counter reaches
-- `max_failures`, logins from that IP (or for that user) are refused with
-- a wait that doubles with every further attempt, up to `max_wait`.
-- Several postern instances sharing one Redis share the counters, so an
-- attacker gains nothing by spreading attempts over them.
--
-- It WRAPS another policy: throttle.wrap(inner, options) returns a policy
-- whose authenticate asks the inner policy, records a failure when the
-- inner policy refuses, and clears the user's counter when it accepts.
-- The inner policy's other hooks (on_connect, on_close) are kept.
--
-- Around auth_http (an nginx auth server, unchanged):
--
--   local throttle = dofile("/etc/postern/throttle.lua")
--   local auth_http = require "postern.auth_http"
--   return throttle.wrap(
--     { authenticate = auth_http.new { url = "http://127.0.0.1:9000/auth" } },
--     { redis = { host = "127.0.0.1", port = 6379 }, max_failures = 5 })
--
-- Around static_users (a users file):
--
--   local throttle = dofile("/etc/postern/throttle.lua")
--   local users = dofile("/etc/postern/static_users.lua")
--   users.users_file = "/etc/postern/users.txt"
--   return throttle.wrap(users, {
--     redis = { host = "10.0.0.2", port = 6379, password = "...", db = 1 },
--     max_failures = 5, window = 900, base_wait = 1, max_wait = 60,
--   })
--
-- (throttle.wrap also accepts a bare authenticate function as `inner`.)
-- Used as the policy itself (policy = "scripts/throttle.lua"), it wraps
-- static_users.lua next to it with throttle.defaults (Redis on
-- 127.0.0.1:6379); change throttle.defaults or throttle.inner before the
-- first login to adapt it.
--
-- Options (throttle.defaults holds the defaults):
--   redis          { host, port, password, db, timeout }: where the counters live
--   max_failures   failures (per IP, and per user) before logins are refused (5)
--   max_failures_ip, max_failures_user   the same, for one kind of counter only
--   window         seconds a counter lives after its last failure (900)
--   base_wait      the wait of the first refused attempt, in seconds (1);
--                  each further attempt doubles it: base_wait * 2^(failures - max_failures)
--   max_wait       the longest wait (60)
--   message        what a throttled client is told
--   temporary      throttled logins get a temporary refusal (true: IMAP
--                  NO [UNAVAILABLE], SMTP 454), not "wrong password"
--   prefix         the Redis key prefix ("postern:throttle:"); keys are
--                  PREFIX.."ip:"..client_ip and PREFIX.."user:"..lower(user)
--   reset_ip_on_success  a success also clears the client IP's counter
--                  (false: one valid account must not let an attacker
--                  reset the counter of the IP it guesses from)
--   fail_open      what happens when Redis cannot be reached (true):
--                  true  = the inner policy decides alone (logins keep
--                          working, unthrottled, a warning is logged);
--                  false = every login is refused temporarily (nobody can
--                          guess while the throttle is blind, nobody can log in)
--
-- What counts as a failure: a refusal of the inner policy that is not
-- temporary (a temporary one, e.g. "auth server down", is not the user's
-- fault), and every attempt made while throttled. A throttled attempt is
-- refused without asking the inner policy, so a guess gets no answer, right
-- or wrong, until the counter expires (`window` after the last failure).
-- An error thrown by the inner policy is not a failure: it propagates.

local postern = require "postern"

local throttle = {}

throttle.defaults = {
  redis = { host = "127.0.0.1", port = 6379, timeout = 0.5 },
  max_failures = 5,
  window = 900,
  base_wait = 1,
  max_wait = 60,
  message = "Too many failed logins, try again later",
  temporary = true,
  prefix = "postern:throttle:",
  reset_ip_on_success = false,
  fail_open = true,
  fail_message = "Temporary authentication failure, try again later",
}

-- increments each key and (re)sets its expiry in one atomic step: a
-- counter can never be left without an expiry
local RECORD = [[
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('INCR', key)
  redis.call('EXPIRE', key, ARGV[1])
end
return out
]]

local function printable(s)
  return (tostring(s):gsub("%c", "?"))
end

local function merged(opts)
  local o = {}
  for k, v in pairs(throttle.defaults) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end

-- the counters that apply to this session: { key = ..., limit = ... }
local function counters(o, s)
  local out = {}
  if type(s.client_ip) == "string" and s.client_ip ~= "" then
    out[#out + 1] = { key = o.prefix .. "ip:" .. s.client_ip, limit = o.max_failures_ip or o.max_failures, kind = "ip" }
  end
  if type(s.user) == "string" and s.user ~= "" then
    out[#out + 1] = { key = o.prefix .. "user:" .. s.user:lower(), limit = o.max_failures_user or o.max_failures,
      kind = "user" }
  end
  return out
end

local function keys_of(list)
  local keys = {}
  for i, c in ipairs(list) do keys[i] = c.key end
  return keys
end

function throttle.wrap(inner, opts)
  local o = merged(opts)
  local inner_auth = type(inner) == "function" and inner or inner.authenticate
  assert(type(inner_auth) == "function", "throttle.wrap: the inner policy has no authenticate function")
  local client

  local function redis_client()
    if not client then
      local r = o.redis
      client = postern.redis.connect { host = r.host, port = r.port, password = r.password, db = r.db,
        timeout = r.timeout or 0.5 }
    end
    return client
  end

  local function blind(err, s)
    postern.log("warn", "throttle: redis unavailable (", tostring(err), "), ",
      o.fail_open and "not throttling" or "refusing", " the login of ", printable(s.user))
  end

  local function record_failure(list, s)
    if #list == 0 then return end
    local keys = keys_of(list)
    local args = { "EVAL", RECORD, #keys }
    for _, k in ipairs(keys) do args[#args + 1] = k end
    args[#args + 1] = o.window
    local ok, err = redis_client():call(unpack(args))
    if not ok then blind(err, s) end
  end

  local policy = {}
  if type(inner) == "table" then
    policy.on_connect = inner.on_connect
    policy.on_close = inner.on_close
  end
  policy.inner = inner
  policy.options = o

  function policy.authenticate(s)
    local list = counters(o, s)
    if #list > 0 then
      local counts, err = redis_client():call("MGET", unpack(keys_of(list)))
      if type(counts) ~= "table" then
        blind(err, s)
        if not o.fail_open then
          return nil, { message = o.fail_message, temporary = true }
        end
        return inner_auth(s)
      end
      -- how far past its limit the worst counter is
      local over, which
      for i, c in ipairs(list) do
        local n = tonumber(counts[i]) or 0
        if n >= c.limit and (not over or n - c.limit > over) then
          over, which = n - c.limit, c.kind
        end
      end
      if over then
        record_failure(list, s)
        local wait = math.min(o.max_wait, o.base_wait * 2 ^ over)
        postern.log("info", "throttle: refusing ", printable(s.user), " from ", tostring(s.client_ip),
          " (too many failures by ", which, "), wait ", wait, " s")
        return nil, { message = o.message, wait = wait, temporary = o.temporary }
      end
    end

    local upstream, refusal = inner_auth(s)
    if upstream then
      local clear = {}
      for _, c in ipairs(list) do
        if c.kind == "user" or o.reset_ip_on_success then clear[#clear + 1] = c.key end
      end
      if #clear > 0 then
        local ok, err = redis_client():call("DEL", unpack(clear))
        if ok == nil and err then blind(err, s) end
      end
      return upstream, refusal
    end
    if not (type(refusal) == "table" and refusal.temporary) then
      record_failure(list, s)
    end
    return upstream, refusal
  end

  return policy
end

-- Used as the policy itself: static_users.lua (next to this file) behind
-- a throttle with throttle.defaults, built at the first login.
local function script_dir()
  local src = debug.getinfo(1, "S").source
  if src:sub(1, 1) == "@" then
    return src:sub(2):match("^(.*)/[^/]*$") or "."
  end
  return "."
end
local here = script_dir()

throttle.inner = nil     -- nil: static_users.lua from this directory
local default

local function default_policy()
  if not default then
    local inner = throttle.inner or dofile(here .. "/static_users.lua")
    default = throttle.wrap(inner, {})
  end
  return default
end

function throttle.authenticate(s)
  return default_policy().authenticate(s)
end

return throttle
