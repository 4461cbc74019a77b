-- Real mail clients through postern: curl and Python's imaplib log in
-- and fetch a message from a mock backend, with each login method.
local testing = require "postern.testing"
local shell = require "helpers.shell"

local HELPERS = testing.root .. "/spec/helpers"

describe("real clients through postern #clients", function()
  local backend, proxy

  setup(function()
    backend = testing.mock_imap { name = "backend-a", users = { alice = "secret" } }
    proxy = testing.start {
      policy_source = ([[
        local postern = require "postern"
        return {
          authenticate = function(s)
            postern.log("info", "mechanism=", s.mechanism)
            if s.user == "alice" and s.password == "secret" then
              return { host = "127.0.0.1", port = %d }
            end
            return nil, "Invalid login or password"
          end,
        }
      ]]):format(backend.port),
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if backend then backend:stop() end
  end)

  local function url(path)
    return ("imap://127.0.0.1:%d/%s"):format(proxy.port, path or "")
  end

  it("curl lists the mailboxes of the upstream", function()
    local out, rc = shell.run { "curl", "-sS", "--max-time", "10", "-u", "alice:secret", url() }
    assert.equal(0, rc, out)
    assert.matches("INBOX", out)
    assert.matches("backend%-a", out)
  end)

  it("curl fetches a message", function()
    local out, rc = shell.run { "curl", "-sS", "--max-time", "10", "-u", "alice:secret", url("INBOX;UID=1") }
    assert.equal(0, rc, out)
    assert.matches("Subject: Hello from mock", out)
    assert.matches("mock%-body from backend%-a", out)
  end)

  for _, mech in ipairs { "PLAIN", "LOGIN" } do
    it("curl logs in with AUTHENTICATE " .. mech, function()
      local out, rc = shell.run { "curl", "-sS", "--max-time", "10", "-u", "alice:secret",
                                  "--login-options", "AUTH=" .. mech, url() }
      assert.equal(0, rc, out)
      assert.matches("INBOX", out)
      assert.truthy(proxy:wait_log("mechanism=" .. mech:lower()))
    end)
  end

  it("curl gets a login failure for a wrong password", function()
    local out, rc = shell.run { "curl", "-sS", "--max-time", "10", "-u", "alice:wrong", url() }
    assert.equal(67, rc, out) -- CURLE_LOGIN_DENIED
  end)

  it("Python imaplib logs in, selects INBOX and fetches the message", function()
    local out, rc = shell.run { "python3", HELPERS .. "/imap_client.py", "127.0.0.1", tostring(proxy.port),
                                "alice", "secret" }
    assert.equal(0, rc, out)
    assert.matches("mock%-body from backend%-a", out)
  end)

  it("Python imaplib authenticates with PLAIN", function()
    local script = ([[
import imaplib
m = imaplib.IMAP4("127.0.0.1", %d)
typ, _ = m.authenticate("PLAIN", lambda _: b"\0alice\0secret")
assert typ == "OK", typ
typ, data = m.select("INBOX")
assert typ == "OK" and data[0] == b"1", data
typ, data = m.fetch("1", "(RFC822)")
print(data[0][1].decode())
m.logout()
]]):format(proxy.port)
    local out, rc = shell.run { "python3", "-c", script }
    assert.equal(0, rc, out)
    assert.matches("mock%-body from backend%-a", out)
  end)

  it("Python imaplib sees the refusal as an error", function()
    local out, rc = shell.run { "python3", HELPERS .. "/imap_client.py", "127.0.0.1", tostring(proxy.port),
                                "alice", "nope" }
    assert.are_not.equal(0, rc)
    assert.matches("AUTHENTICATIONFAILED", out)
  end)
end)
