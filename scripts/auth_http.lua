-- The nginx-migration policy: ask the auth server you already run for the
-- nginx mail module (its `auth_http`), with the same request and the same
-- meaning of the answer (see lua/postern/auth_http.lua and
-- docs/migrating-from-nginx.md). Point `url` at it and you are done:
--
--   -- proxy.conf.lua
--   return { policy = "scripts/auth_http.lua", listen = { ... } }
--
-- Change the fields below, or, without editing this file, load it from
-- your own policy and set them before the first login:
--
--   local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
--   local policy = dofile(dir .. "auth_http.lua")
--   policy.url = "http://10.0.0.2:9000/mail/auth"           -- auth_http
--   policy.headers = { ["X-Auth-Key"] = "s3cret" }           -- auth_http_header
--   policy.timeout = 5                                       -- auth_http_timeout
--   return policy
--
-- Policies compose: wrap its authenticate in your own, e.g. to refuse some
-- networks before the auth server is asked, or to count failures:
--
--   local inner = dofile(dir .. "auth_http.lua")
--   inner.url = "http://10.0.0.2:9000/mail/auth"
--   return {
--     authenticate = function(s)
--       if s.client_ip:match("^10%.99%.") then
--         return nil, { message = "Not from this network", wait = 2 }
--       end
--       local upstream, refusal = inner.authenticate(s)
--       if not upstream then require("postern").log("info", "auth server refused ", s.user) end
--       return upstream, refusal
--     end,
--   }
--
-- Fields:
--   url               the auth server (nginx's auth_http); the environment
--                     variable POSTERN_AUTH_HTTP_URL overrides the default
--   headers           extra request headers (auth_http_header)
--   timeout           seconds for one request (auth_http_timeout, 60); keep
--                     proxy.conf.lua's auth_timeout above it
--   pass_client_cert  send the client's certificate (auth_http_pass_client_cert)
-- They are read at the first login; set policy.authenticator = nil to make
-- the next login read them again.

local auth_http = require "postern.auth_http"

local policy = {
  url = os.getenv("POSTERN_AUTH_HTTP_URL") or "http://127.0.0.1:9000/auth",
  headers = {},
  timeout = 60,
  pass_client_cert = false,
  authenticator = nil,
}

function policy.authenticate(s)
  if not policy.authenticator then
    policy.authenticator = auth_http.new {
      url = policy.url,
      headers = policy.headers,
      timeout = policy.timeout,
      pass_client_cert = policy.pass_client_cert,
    }
  end
  return policy.authenticator(s)
end

return policy
