-- scripts/auth_http.lua, the nginx-migration policy: postern.auth_http
-- pointed at an existing nginx auth_http server, here a mock HTTP server.
-- The protocol itself (every header, every answer) is specified in
-- spec/integration/auth_http_spec.lua.
local testing = require "postern.testing"

describe("scripts/auth_http.lua (the nginx-migration policy)", function()
  it("routes through the auth server named by its url field (here from POSTERN_AUTH_HTTP_URL)", function()
    local backend = testing.mock_imap { name = "imap-b", users = { carol = "pw" } }
    local srv = testing.mock_http {
      handler = ([[ return function(req)
        return { headers = { { "Auth-Status", "OK" }, { "Auth-Server", "127.0.0.1" }, { "Auth-Port", "%d" },
                             { "Auth-Pass", "pw" } } }
      end ]]):format(backend.port),
    }
    local p
    finally(function()
      if p then p:stop() end
      srv:stop()
      backend:stop()
    end)
    p = testing.start { policy = "scripts/auth_http.lua", env = { POSTERN_AUTH_HTTP_URL = srv:url("/mail-auth") } }
    local c = testing.client { port = p.port }
    c:expect("^%* OK")
    assert.matches("^a1 OK", (c:command("a1", "LOGIN carol pw")))
    c:close()
    local r = srv:wait_requests(1)[1]
    assert.equals("/mail-auth", r.path)
    assert.equals("carol", r.h["auth-user"])
    backend:wait_for("^AUTH carol pw")
  end)
end)
