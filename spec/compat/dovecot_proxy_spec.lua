-- postern in front of a real Dovecot (Debian's dovecot-imapd), started by
-- the spec on a loopback port with its own configuration and passwd-file.
local testing = require "postern.testing"
local dovecot = require "helpers.dovecot"
local shell = require "helpers.shell"

local HELPERS = testing.root .. "/spec/helpers"

describe("postern in front of Dovecot #dovecot", function()
  local d, proxy

  setup(function()
    d = dovecot.start { users = { alice = "secret", bob = "hunter2" } }
    proxy = testing.start {
      policy_source = ([[
        return {
          authenticate = function(s)
            -- Dovecot checks the password itself: pass everybody on.
            return { host = "127.0.0.1", port = %d }
          end,
        }
      ]]):format(d.imap_port),
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if d then d:stop() end
  end)

  it("curl lists Dovecot's mailboxes through postern", function()
    local out, rc = shell.run { "curl", "-sS", "--max-time", "10", "-u", "alice:secret",
                                ("imap://127.0.0.1:%d/"):format(proxy.port) }
    assert.equal(0, rc, out)
    assert.matches("INBOX", out)
  end)

  it("curl fetches the message Dovecot holds", function()
    local out, rc = shell.run { "curl", "-sS", "--max-time", "10", "-u", "bob:hunter2",
                                ("imap://127.0.0.1:%d/INBOX;UID=1"):format(proxy.port) }
    assert.equal(0, rc, out)
    assert.matches("postern%-dovecot%-test%-body", out)
  end)

  it("Python imaplib logs in and fetches through postern", function()
    local out, rc = shell.run { "python3", HELPERS .. "/imap_client.py", "127.0.0.1", tostring(proxy.port),
                                "alice", "secret" }
    assert.equal(0, rc, out)
    assert.matches("Subject: Hello from Dovecot", out)
  end)

  it("passes Dovecot's refusal to the client, which may retry on the same connection", function()
    local c = testing.client { port = proxy.port }
    c:expect("^%* OK")
    local tagged = c:command("a1", "LOGIN alice wrong")
    assert.matches("^a1 NO ", tagged)
    assert.matches("^a2 OK", (c:command("a2", "LOGIN alice secret")))
    local _, untagged = c:command("a3", "SELECT INBOX")
    assert.matches("1 EXISTS", table.concat(untagged, "\n"))
    c:command("a4", "LOGOUT")
    assert.is_true(c:closed(3))
  end)

  it("hands Dovecot's tagged OK with its CAPABILITY code to the client", function()
    local c = testing.client { port = proxy.port }
    c:expect("^%* OK")
    local tagged = c:command("x7", 'LOGIN "alice" "secret"')
    assert.matches("^x7 OK %[CAPABILITY IMAP4rev1", tagged)
    c:close()
  end)
end)
