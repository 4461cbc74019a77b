-- Real POP3 clients and a real POP3 server with postern in between (issue 3):
-- Python's poplib and curl's pop3:// log in through postern to a mock POP3
-- backend with each login method, and poplib reads mail from a Dovecot
-- POP3 server started by the spec on loopback.
local testing = require "postern.testing"
local pop3_scene = require "helpers.pop3_scene"
local dovecot = require "helpers.dovecot"
local shell = require "helpers.shell"

-- run a Python script with the proxy's port as argv[1]
local function python(script, port, ...)
  return shell.run { "python3", "-c", script, tostring(port), ... }
end

local POPLIB_PRELUDE = [[
import base64, poplib, sys
port = int(sys.argv[1])
p = poplib.POP3("127.0.0.1", port, timeout=15)
]]

describe("POP3 clients through postern #clients", function()
  local m, proxy

  setup(function()
    m = testing.mock_pop3 { name = "pop-a", users = { alice = "secret" }, apop = true }
    proxy = testing.start {
      policy_source = pop3_scene.policy_source {
        upstream = { host = "127.0.0.1", port = m.port },
        users = { alice = "secret" },
        give_password = true, -- for APOP clients
      },
      config = { listen = { { protocol = "pop3", auth = { "user", "apop", "plain", "login" } } } },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if m then m:stop() end
  end)

  -- the mechanism of the policy's newest call
  local function last_mechanism()
    local calls = pop3_scene.policy_calls(proxy)
    return calls[#calls] and calls[#calls].mechanism
  end

  describe("Python poplib", function()
    it("logs in with user and pass_, lists and retrieves the message", function()
      local out, rc = python(POPLIB_PRELUDE .. [[
print(p.user("alice").decode())
print(p.pass_("secret").decode())
print("STAT", p.stat())
resp, lines, octets = p.retr(1)
print(b"\n".join(lines).decode())
print(p.quit().decode())
]], proxy.port)
      assert.equal(0, rc, out)
      assert.matches("%+OK Logged in%.", out)
      assert.matches("STAT %(1, %d+%)", out)
      assert.matches("Subject: Hello from mock pop3", out)
      assert.matches("pop3%-body from pop%-a", out)
      assert.matches("\n%.a line that starts with a dot", out) -- poplib un-stuffed it
      assert.matches("signing off", out)
      assert.equal("plain", last_mechanism())
    end)

    it("logs in with apop, the policy checking the digest and postern using APOP upstream", function()
      local before = #m:logins()
      local out, rc = python(POPLIB_PRELUDE .. [[
print(p.apop("alice", "secret").decode())
resp, lines, octets = p.retr(1)
print(b"\n".join(lines).decode())
p.quit()
]], proxy.port)
      assert.equal(0, rc, out)
      assert.matches("%+OK Logged in%.", out)
      assert.matches("pop3%-body from pop%-a", out)
      assert.equal("apop", last_mechanism())
      local logins = m:logins()
      assert.equal(before + 1, #logins)
      assert.same({ "alice", "apop" }, { logins[#logins].user, logins[#logins].mechanism })
    end)

    it("sees USER, SASL and PIPELINING in capa(), then logs in with AUTH PLAIN", function()
      local out, rc = python(POPLIB_PRELUDE .. [[
caps = p.capa()
print("CAPS", sorted(caps))
print("SASL", caps["SASL"])
ir = base64.b64encode(b"\0alice\0secret").decode()
print(p._shortcmd("AUTH PLAIN " + ir).decode())
print("STAT", p.stat())
p.quit()
]], proxy.port)
      assert.equal(0, rc, out)
      assert.matches("'USER'", out)
      assert.matches("'PIPELINING'", out)
      assert.matches("SASL %['PLAIN', 'LOGIN'%]", out)
      assert.matches("%+OK Logged in%.", out)
      assert.matches("STAT %(1, %d+%)", out)
      assert.equal("plain", last_mechanism())
    end)

    it("gets an error_proto with -ERR [AUTH] for a wrong password", function()
      local out, rc = python(POPLIB_PRELUDE .. [[
p.user("alice")
try:
    p.pass_("wrong")
except poplib.error_proto as e:
    print("ERROR", e.args[0].decode())
    sys.exit(3)
]], proxy.port)
      assert.equal(3, rc, out)
      assert.matches("ERROR %-ERR %[AUTH%]", out)
    end)
  end)

  describe("curl pop3://", function()
    local function url(path)
      return ("pop3://127.0.0.1:%d/%s"):format(proxy.port, path or "")
    end

    it("lists the messages", function()
      local out, rc = shell.run { "curl", "-sS", "--max-time", "10", "-u", "alice:secret", url() }
      assert.equal(0, rc, out)
      assert.matches("^1 %d+\r?\n$", out)
    end)

    it("retrieves message 1", function()
      local out, rc = shell.run { "curl", "-sS", "--max-time", "10", "-u", "alice:secret", url("1") }
      assert.equal(0, rc, out)
      assert.matches("Subject: Hello from mock pop3", out)
      assert.matches("pop3%-body from pop%-a", out)
    end)

    for _, mech in ipairs { "PLAIN", "LOGIN" } do
      it("logs in with --login-options AUTH=" .. mech, function()
        local out, rc = shell.run { "curl", "-sS", "--max-time", "10", "-u", "alice:secret",
                                    "--login-options", "AUTH=" .. mech, url("1") }
        assert.equal(0, rc, out)
        assert.matches("pop3%-body from pop%-a", out)
        assert.equal(mech:lower(), last_mechanism())
      end)
    end

    it("logs in with APOP (--login-options AUTH=+APOP)", function()
      local out, rc = shell.run { "curl", "-sS", "--max-time", "10", "-u", "alice:secret",
                                  "--login-options", "AUTH=+APOP", url() }
      assert.equal(0, rc, out)
      assert.matches("^1 %d+", out)
      assert.equal("apop", last_mechanism())
    end)

    it("exits with 67 (login denied) for a wrong password", function()
      local out, rc = shell.run { "curl", "-sS", "--max-time", "10", "-u", "alice:wrong", url() }
      assert.equal(67, rc, out)
    end)
  end)
end)

describe("POP3 through postern to Dovecot #dovecot", function()
  local d, proxy, proxy_plain

  setup(function()
    d = dovecot.start { users = { alice = "secret" }, pop3 = true }
    -- Dovecot checks the password itself: everybody is passed on
    proxy = testing.start {
      policy_source = pop3_scene.policy_source { upstream = { host = "127.0.0.1", port = d.pop3_port } },
      config = { listen = { { protocol = "pop3" } } },
    }
    proxy_plain = testing.start {
      policy_source = pop3_scene.policy_source {
        upstream = { host = "127.0.0.1", port = d.pop3_port, auth = "plain" } },
      config = { listen = { { protocol = "pop3" } } },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if proxy_plain then proxy_plain:stop() end
    if d then d:stop() end
  end)

  local RETR_SCRIPT = POPLIB_PRELUDE .. [[
p.user(sys.argv[2])
print(p.pass_(sys.argv[3]).decode())
print("STAT", p.stat())
resp, lines, octets = p.retr(1)
print(b"\n".join(lines).decode())
p.quit()
]]

  it("poplib logs in and retrieves Dovecot's message", function()
    local out, rc = python(RETR_SCRIPT, proxy.port, "alice", "secret")
    assert.equal(0, rc, out)
    assert.matches("%+OK", out)
    assert.matches("STAT %(1, %d+%)", out)
    assert.matches("Subject: Hello from Dovecot", out)
    assert.matches("postern%-dovecot%-test%-body", out)
  end)

  it("logs in to Dovecot with AUTH PLAIN when the policy's upstream says auth = \"plain\"", function()
    local out, rc = python(RETR_SCRIPT, proxy_plain.port, "alice", "secret")
    assert.equal(0, rc, out)
    assert.matches("postern%-dovecot%-test%-body", out)
  end)

  it("passes Dovecot's -ERR for a wrong password to the client, which may retry", function()
    local c = testing.client { port = proxy.port }
    assert.matches("^%+OK", c:pop3())
    c:pop3("USER alice")
    local refusal = c:pop3("PASS wrong")
    assert.matches("^%-ERR %[AUTH%] ", refusal)
    c:pop3("USER alice")
    assert.matches("^%+OK", c:pop3("PASS secret"))
    local status, lines = c:pop3_multi("RETR 1")
    assert.matches("^%+OK", status)
    assert.matches("postern%-dovecot%-test%-body", table.concat(lines, "\n"))
    c:pop3("QUIT")
    assert.is_true(c:closed(5))
    c:close()
  end)

  it("curl retrieves Dovecot's message through postern", function()
    local out, rc = shell.run { "curl", "-sS", "--max-time", "10", "-u", "alice:secret",
                                ("pop3://127.0.0.1:%d/1"):format(proxy.port) }
    assert.equal(0, rc, out)
    assert.matches("postern%-dovecot%-test%-body", out)
  end)
end)
