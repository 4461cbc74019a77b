-- remote_auth.lua: ask a JSON HTTP API where each login goes.
--
-- For every login, postern POSTs the credentials as JSON to `url` and the
-- service answers with the upstream, or a refusal. Successful answers are
-- cached for `cache_ttl` seconds, so a client that logs in every minute
-- does not cost one HTTP request each time.
--
-- The request (fields the session does not have are left out):
--
--   POST /auth HTTP/1.1
--   Content-Type: application/json
--   Accept: application/json
--
--   {"user": "alice", "password": "secret", "protocol": "imap",
--    "mechanism": "plain", "authzid": "...", "login_attempt": 1,
--    "client_ip": "192.0.2.10", "client_port": 53211,
--    "local_ip": "10.0.0.1", "local_port": 143, "server_name": "mail.example.com",
--    "salt": "...", "digest": "...",          (CRAM-MD5 and APOP: no password)
--    "helo": "...", "mail_from": "...", "rcpt_to": ["..."]}   (SMTP)
--
-- The answer: HTTP 200 and a JSON object, one of
--
--   {"status": "ok", "host": "10.0.0.5", "port": 143}
--       log in there; optional: "user" and "password" (log in upstream
--       with other credentials), "ttl" (seconds to cache this answer,
--       0 = do not cache; default cache_ttl). "host" may be a host name.
--   {"status": "ok", "upstreams": [{"host": "10.0.0.5", "port": 143},
--                                  {"host": "10.0.0.6", "port": 143}]}
--       a list tried in order when one cannot be reached ("ttl" allowed)
--   {"status": "refused", "message": "Invalid login or password", "wait": 3}
--       the client gets NO [AUTHENTICATIONFAILED] message after `wait`
--       seconds (both optional)
--   {"status": "unavailable", "message": "Mailbox being moved", "wait": 5}
--       a temporary refusal: NO [UNAVAILABLE] message
--
-- Anything else (no answer within `timeout`, a status other than 200, a
-- body that is not such an object, an upstream without a valid host and
-- port) is a temporary failure: the client gets `fail_message` with
-- NO [UNAVAILABLE] and may try again. Refusals and failures are never
-- cached.
--
-- The cache lives in postern's memory (a reload empties it). Its key is
-- the protocol, the user and an HMAC-MD5 of the password under a random
-- per-process key: the password itself is never stored, and a different
-- password misses the cache and asks the service again.
--
-- Use it without editing it: load it from your own policy and set the
-- fields before the first login.
--
--   local policy = dofile("/etc/postern/remote_auth.lua")
--   policy.url = "https://auth.example.com/v1/mail-login"
--   policy.headers = { Authorization = "Bearer 0123456789" }
--   policy.cache_ttl = 300
--   return policy
--
-- Or put a throttle in front of it (see throttle.lua):
--
--   local throttle = dofile("/etc/postern/throttle.lua")
--   return throttle.wrap(dofile("/etc/postern/remote_auth.lua"), { redis = { host = "127.0.0.1", port = 6379 } })
--
-- Fields:
--   url            the service (http:// or https://; certificates are verified)
--   timeout        seconds to wait for the answer (default 5)
--   headers        extra request headers, e.g. an API key
--   verify         false: accept any certificate (tests only)
--   cache_ttl      seconds a successful answer is reused (default 60; 0 = no cache)
--   cache_max      entries kept at most (default 10000)
--   fail_message   the client's message when the service fails
--   fail_wait      seconds to delay that message (default 0)

local postern = require "postern"
local cjson = require "cjson.safe"
local md5 = require "postern.md5"

local policy = {
  url = "http://127.0.0.1:8080/auth",
  timeout = 5,
  headers = {},
  verify = true,
  cache_ttl = 60,
  cache_max = 10000,
  fail_message = "Temporary authentication failure, try again later",
  fail_wait = 0,
}

-- the cache: key -> { expires = t, upstream = ... }
local cache, cache_size = {}, 0

-- a random key for the password HMAC, new in every process
local secret
do
  local f = io.open("/dev/urandom", "rb")
  if f then
    secret = f:read(32)
    f:close()
  end
  if not secret or #secret < 32 then
    math.randomseed(os.time() + os.clock() * 1e6)
    local t = {}
    for i = 1, 32 do t[i] = string.char(math.random(0, 255)) end
    secret = table.concat(t)
  end
end

local function printable(s)
  return (tostring(s):gsub("%c", "?"))
end

local function cache_key(s)
  if type(s.password) ~= "string" or type(s.user) ~= "string" then return nil end
  return s.protocol .. "\0" .. s.user .. "\0" .. md5.hmac_hex(secret, s.password)
end

local function copy(t)
  if type(t) ~= "table" then return t end
  local out = {}
  for k, v in pairs(t) do out[k] = copy(v) end
  return out
end

local function cache_get(key, now)
  local e = key and cache[key]
  if not e then return nil end
  if e.expires <= now then
    cache[key] = nil
    cache_size = cache_size - 1
    return nil
  end
  return copy(e.upstream)
end

local function cache_put(key, upstream, ttl, now)
  if not key or ttl ~= ttl or ttl <= 0 then return end   -- ttl ~= ttl: NaN
  if not cache[key] then
    if cache_size >= policy.cache_max then
      for k, e in pairs(cache) do          -- drop what has expired ...
        if e.expires <= now then cache[k] = nil; cache_size = cache_size - 1 end
      end
      if cache_size >= policy.cache_max then cache, cache_size = {}, 0 end   -- ... or everything
    end
    cache_size = cache_size + 1
  end
  cache[key] = { expires = now + ttl, upstream = copy(upstream) }
end

-- empty the cache (e.g. from a test, or after changing routes)
function policy.cache_clear()
  cache, cache_size = {}, 0
end

function policy.cache_count()
  return cache_size
end

local function request_body(s)
  local doc = {}
  for _, k in ipairs({ "user", "password", "protocol", "mechanism", "authzid", "login_attempt",
    "client_ip", "client_port", "local_ip", "local_port", "server_name", "salt", "digest",
    "helo", "mail_from" }) do
    if s[k] ~= nil then doc[k] = s[k] end
  end
  if type(s.rcpt_to) == "table" and #s.rcpt_to > 0 then doc.rcpt_to = s.rcpt_to end
  return cjson.encode(doc)
end

local function failure(why, s)
  postern.log("error", "remote_auth: ", why, " (user ", printable(s.user), ")")
  return nil, { message = policy.fail_message, wait = policy.fail_wait, temporary = true }
end

-- one upstream of the answer, or nil and what is wrong with it
local function upstream_of(u)
  if type(u) ~= "table" then return nil, "an upstream is not an object" end
  local port = tonumber(u.port)
  if type(u.host) ~= "string" or u.host == "" then return nil, "upstream without a host" end
  if not port or port < 1 or port > 65535 or port % 1 ~= 0 then return nil, "upstream without a valid port" end
  local out = { host = u.host, port = port }
  if type(u.user) == "string" then out.user = u.user end
  if type(u.password) == "string" then out.password = u.password end
  return out
end

function policy.authenticate(s)
  local now = postern.now()
  local key = policy.cache_ttl > 0 and cache_key(s) or nil
  local hit = cache_get(key, now)
  if hit then
    postern.log("debug", "remote_auth: cached answer for ", printable(s.user))
    return hit
  end

  local headers = { ["Content-Type"] = "application/json", Accept = "application/json" }
  for k, v in pairs(policy.headers or {}) do headers[k] = v end
  local res, err = postern.http.request {
    method = "POST", url = policy.url, headers = headers, body = request_body(s),
    timeout = policy.timeout, verify = policy.verify,
  }
  if not res then return failure("the auth service failed: " .. tostring(err), s) end
  if res.status ~= 200 then return failure("the auth service answered HTTP " .. res.status, s) end
  local answer = cjson.decode(res.body)
  if type(answer) ~= "table" then return failure("the auth service's answer is not a JSON object", s) end

  local status = answer.status
  if status == "refused" or status == "unavailable" then
    local message = type(answer.message) == "string" and answer.message or nil
    postern.log("info", "remote_auth: ", printable(s.user), " ", status, ": ", printable(message or ""))
    return nil, { message = message, wait = tonumber(answer.wait) or 0, temporary = status == "unavailable" }
  end
  if status ~= "ok" then return failure("the auth service's answer has no valid status", s) end

  local upstream, why
  if answer.upstreams ~= nil then
    if type(answer.upstreams) ~= "table" or #answer.upstreams == 0 then
      return failure("the auth service's upstreams is not a non-empty list", s)
    end
    upstream = {}
    for i, u in ipairs(answer.upstreams) do
      upstream[i], why = upstream_of(u)
      if not upstream[i] then return failure("the auth service's answer: " .. why, s) end
    end
  else
    upstream, why = upstream_of(answer)
    if not upstream then return failure("the auth service's answer: " .. why, s) end
  end
  cache_put(key, upstream, tonumber(answer.ttl) or policy.cache_ttl, now)
  return upstream
end

return policy
