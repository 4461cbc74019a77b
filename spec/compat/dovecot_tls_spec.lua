-- A real Dovecot with TLS as postern's upstream (implicit TLS and
-- STARTTLS/STLS, IMAP and POP3), with real clients in front (Python's
-- imaplib and poplib through spec/helpers/tls_clients.py). The TLS to
-- upstreams in general: spec/integration/tls_upstream_spec.lua.
local testing = require "postern.testing"
local shell = require "helpers.shell"
local certs_helper = require "helpers.certs"
local dovecot = require "helpers.dovecot"

local HELPERS = testing.root .. "/spec/helpers"

-- ---- a real Dovecot with TLS behind postern ------------------------------------------

describe("Dovecot with TLS behind postern #tls #dovecot", function()
  local C, d, p

  setup(function()
    C = certs_helper.get()
    d = dovecot.start { users = { alice = "secret" }, pop3 = true, ssl = { cert = C.server, key = C.server_key } }
    local up = function(port, mode) return { host = "127.0.0.1", port = port, tls = mode, sni = "mail.test" } end
    local ports = {}
    for i = 1, 4 do ports[i] = testing.free_port() end
    local routes = {
      ["imap:" .. ports[1]] = up(d.imaps_port, "on"),
      ["imap:" .. ports[2]] = up(d.imap_port, "starttls"),
      ["pop3:" .. ports[3]] = up(d.pop3s_port, "on"),
      ["pop3:" .. ports[4]] = up(d.pop3_port, "starttls"),
    }
    p = testing.start {
      policy_source = ([[
        local routes = %s
        return { authenticate = function(s) return routes[s.protocol .. ":" .. s.local_port] end }
      ]]):format(testing.serialize(routes)),
      config = {
        tls = { certificate = C.server, key = C.server_key, upstream_ca = C.ca },
        listen = {
          { address = "127.0.0.1:" .. ports[1], protocol = "imap", tls = true },         -- Dovecot imaps
          { address = "127.0.0.1:" .. ports[2], protocol = "imap", starttls = "only" },  -- Dovecot STARTTLS
          { address = "127.0.0.1:" .. ports[3], protocol = "pop3", tls = true },         -- Dovecot pop3s
          { address = "127.0.0.1:" .. ports[4], protocol = "pop3", starttls = "on" },    -- Dovecot STLS
        },
      },
    }
  end)

  teardown(function()
    if p then p:stop() end
    if d then d:stop() end
  end)

  -- Dovecot's login lines say TLS when the leg from postern was TLS
  local function dovecot_tls_logins()
    local f = io.open(d.log, "r")
    local n = 0
    if f then
      for l in f:lines() do
        if l:find("Login: user=<alice>", 1, true) and l:find(", TLS", 1, true) then n = n + 1 end
      end
      f:close()
    end
    return n
  end

  local function wait_more_tls_logins(before)
    local deadline = testing.now() + 5
    while dovecot_tls_logins() <= before and testing.now() < deadline do testing.sleep(0.05) end
    return dovecot_tls_logins() > before
  end

  it("curl imaps:// -> postern -> Dovecot imaps", function()
    local before = dovecot_tls_logins()
    local out, rc = shell.run { "curl", "-sS", "--max-time", "15", "--cacert", C.ca, "--resolve",
      "mail.test:" .. p.ports[1] .. ":127.0.0.1", "-u", "alice:secret",
      ("imaps://mail.test:%d/INBOX;UID=1"):format(p.ports[1]) }
    assert.equal(0, rc, out)
    assert.matches("postern%-dovecot%-test%-body", out)
    assert.is_true(wait_more_tls_logins(before), "Dovecot did not log a TLS login")
  end)

  it("curl imap:// --ssl-reqd -> postern (starttls only) -> Dovecot with STARTTLS", function()
    local before = dovecot_tls_logins()
    local out, rc = shell.run { "curl", "-sS", "--max-time", "15", "--ssl-reqd", "--cacert", C.ca, "--resolve",
      "mail.test:" .. p.ports[2] .. ":127.0.0.1", "-u", "alice:secret",
      ("imap://mail.test:%d/INBOX;UID=1"):format(p.ports[2]) }
    assert.equal(0, rc, out)
    assert.matches("postern%-dovecot%-test%-body", out)
    assert.is_true(wait_more_tls_logins(before), "Dovecot did not log a TLS login")
  end)

  it("Python imaplib IMAP4_SSL and starttls(), through postern to Dovecot over TLS", function()
    for _, case in ipairs { { "imap-ssl", 1 }, { "imap-starttls", 2 } } do
      local before = dovecot_tls_logins()
      local out, rc = shell.run { "python3", HELPERS .. "/tls_clients.py", case[1], "127.0.0.1",
        tostring(p.ports[case[2]]), "alice", "secret", C.ca }
      assert.equal(0, rc, out)
      assert.matches("postern%-dovecot%-test%-body", out)
      assert.is_true(wait_more_tls_logins(before), "Dovecot did not log a TLS login for " .. case[1])
    end
  end)

  it("POP3: curl pop3s:// and poplib stls(), to Dovecot's pop3s and STLS", function()
    local before = dovecot_tls_logins()
    local out, rc = shell.run { "curl", "-sS", "--max-time", "15", "--cacert", C.ca, "-u", "alice:secret",
      ("pop3s://127.0.0.1:%d/1"):format(p.ports[3]) }
    assert.equal(0, rc, out)
    assert.matches("postern%-dovecot%-test%-body", out)
    assert.is_true(wait_more_tls_logins(before))
    before = dovecot_tls_logins()
    out, rc = shell.run { "python3", HELPERS .. "/tls_clients.py", "pop3-stls", "127.0.0.1",
      tostring(p.ports[4]), "alice", "secret", C.ca }
    assert.equal(0, rc, out)
    assert.matches("postern%-dovecot%-test%-body", out)
    assert.is_true(wait_more_tls_logins(before))
  end)
end)
