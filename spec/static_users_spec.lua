-- The demo policy (scripts/static_users.lua) end to end: the real binary,
-- the shipped users file, and the upstream replaced by a mock.
local testing = require "postern.testing"

describe("scripts/static_users.lua through postern #scripts", function()
  local backend, proxy

  setup(function()
    backend = testing.mock_imap { name = "demo-backend" }
    proxy = testing.start {
      policy_source = ([[
        local policy = dofile(%q)
        policy.upstreams.demo.imap = { host = "127.0.0.1", port = %d }
        policy.fail_wait = 0.1
        return policy
      ]]):format(testing.root .. "/scripts/static_users.lua", backend.port),
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if backend then backend:stop() end
  end)

  it("logs the demo user (SHA512-CRYPT) in to the demo upstream", function()
    local c = testing.client { port = proxy.port }
    c:expect("^%* OK")
    assert.matches("^a1 OK", (c:command("a1", "LOGIN demo demo")))
    backend:wait_for("^AUTH demo demo")
    c:close()
  end)

  it("logs bob (bcrypt) in", function()
    local c = testing.client { port = proxy.port }
    c:expect("^%* OK")
    assert.matches("^a1 OK", (c:command("a1", "LOGIN bob bob")))
    c:close()
  end)

  it("refuses a wrong password with the policy's message", function()
    local c = testing.client { port = proxy.port }
    c:expect("^%* OK")
    assert.equal("a1 NO [AUTHENTICATIONFAILED] Invalid login or password", (c:command("a1", "LOGIN demo nope")))
    c:close()
  end)
end)
