-- An example to copy: test your own policy end to end with the real
-- postern binary, a mock IMAP backend and a line client.
--
--   cp spec/example_policy_spec.lua spec/my_policy_spec.lua
--   busted spec/my_policy_spec.lua
--
-- Point `policy` at your policy file instead of the inline source below.
local testing = require "postern.testing"

describe("example policy #example", function()
  local backend, proxy

  setup(function()
    backend = testing.mock_imap { name = "backend-a", users = { alice = "secret" } }
    proxy = testing.start {
      -- policy = "scripts/my_policy.lua",
      policy_source = ([[
        return {
          authenticate = function(s)
            if s.user == "alice" and s.password == "secret" then
              return { host = "127.0.0.1", port = %d }
            end
            return nil, { message = "Invalid login or password", wait = 0.2 }
          end,
        }
      ]]):format(backend.port),
      config = { timeout = 5 },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end   -- fails on an [alert] or a sanitizer report in the log
    if backend then backend:stop() end
  end)

  it("logs alice in to backend-a with her own credentials", function()
    local c = testing.client { port = proxy.port }
    c:expect("^%* OK")
    assert.matches("^a1 OK", (c:command("a1", "LOGIN alice secret")))
    local _, untagged = c:command("a2", 'LIST "" *')
    assert.matches("backend%-a", table.concat(untagged, "\n"))
    assert.same({ user = "alice", password = "secret", mechanism = "login" }, backend:logins()[1])
    c:close()
  end)

  it("refuses a wrong password with the policy's message, and allows a retry", function()
    local c = testing.client { port = proxy.port }
    c:expect("^%* OK")
    assert.equal("a1 NO [AUTHENTICATIONFAILED] Invalid login or password", (c:command("a1", "LOGIN alice wrong")))
    assert.matches("^a2 OK", (c:command("a2", "LOGIN alice secret")))
    c:close()
  end)
end)
