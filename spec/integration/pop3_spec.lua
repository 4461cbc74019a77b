-- POP3 through postern (issue 3; RFC 1939, RFC 2449 CAPA and PIPELINING,
-- RFC 5034 SASL, RFC 3206 response codes): the front end a client sees
-- before login, and the login postern makes upstream (USER/PASS, APOP,
-- AUTH PLAIN, AUTH LOGIN, XOAUTH2) against mock POP3 backends, then the
-- relay. nginx's known faults are checked to be absent: a 128-byte
-- command buffer, CR/LF in SASL-decoded credentials reaching the
-- upstream, pipelined input cut at the buffer boundary.
--
-- Every test checks both sides where there are two: what the client got,
-- and what the mock backend received (its record file).
local testing = require "postern.testing"
local pop3_scene = require "helpers.pop3_scene"
local md5 = require "postern.md5"
local mime = require "mime"
local socket = require "socket"

local commands, records, timestamp = pop3_scene.commands, pop3_scene.records, pop3_scene.timestamp
local route, sorted = pop3_scene.route, pop3_scene.sorted

local function b64(s) return (mime.b64(s)) end
local function unb64(s) return (mime.unb64(s)) end

local ALL_MECHS = { "user", "apop", "plain", "login", "cram-md5", "xoauth2", "oauthbearer" }

-- CAPA lines sorted, without RESP-CODES and AUTH-RESP-CODE (checked on their own)
local function capa_set(lines)
  local out = {}
  for _, l in ipairs(lines) do
    if l ~= "RESP-CODES" and l ~= "AUTH-RESP-CODE" then out[#out + 1] = l end
  end
  return sorted(out)
end

-- the size of a message of the mock, from LIST n
local function list_size(c, n)
  local line = c:pop3("LIST " .. n)
  return tonumber(line:match("^%+OK %d+ (%d+)$")), line
end

describe("POP3", function()
  describe("greeting", function()
    it("is +OK without a timestamp when APOP is not offered", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = { "user", "plain" } }
      local _, greeting = sc:client(p)
      assert.matches("^%+OK ", greeting)
      assert.is_nil(greeting:find("[<>]"))
    end)

    it("ends with an APOP timestamp <pid.time@server_name> when APOP is offered", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = { "user", "apop" }, config = { server_name = "pop.example.test" } }
      local _, greeting = sc:client(p)
      local ts = timestamp(greeting)
      assert.is_string(ts, greeting)
      -- RFC 1939 section 7: msg-id syntax, the host part is the server name
      assert.matches("^<[%w%.%-]+@pop%.example%.test>$", ts)
      -- the process id of the worker that serves the session, as nginx's
      assert.equal(tostring(p:workers()[1]), ts:match("^<(%d+)%."), "the timestamp starts with the process id")
      local now, has_time = os.time(), false
      for field in ts:match("^<(.-)@"):gmatch("%d+") do
        if math.abs(tonumber(field) - now) < 300 then has_time = true end
      end
      assert.is_true(has_time, "the timestamp carries the current time: " .. ts)
    end)

    it("gives every connection a different APOP timestamp", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = { "user", "apop" } }
      local seen = {}
      for _ = 1, 5 do
        local _, greeting = sc:client(p)
        local ts = timestamp(greeting)
        assert.is_string(ts)
        assert.is_nil(seen[ts], "timestamp used twice: " .. ts)
        seen[ts] = true
      end
    end)
  end)

  describe("CAPA", function()
    it("lists TOP and UIDL, USER, the SASL mechanisms and PIPELINING by default, ending with a dot", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy {}
      local c = sc:client(p)
      local status, lines = c:pop3_multi("CAPA")
      assert.matches("^%+OK", status)
      assert.same(sorted { "TOP", "UIDL", "USER", "SASL PLAIN", "PIPELINING" }, capa_set(lines))
      -- and the session goes on after the final "."
      assert.equal("+OK", c:pop3("NOOP"))
    end)

    it("lists the configured pop3_capabilities one per CRLF line, arguments included", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = { "user" },
        config = { pop3_capabilities = { "TOP", "UIDL", "EXPIRE 30", "IMPLEMENTATION postern" } } }
      local c = sc:client(p)
      c:send("CAPA\r\n")
      -- read raw: every line must end in CRLF (c:line refuses a bare LF)
      local got = {}
      assert.matches("^%+OK", c:line())
      repeat
        local l = c:line()
        got[#got + 1] = l
      until l == "."
      assert.same(sorted { "TOP", "UIDL", "EXPIRE 30", "IMPLEMENTATION postern", "USER", "PIPELINING", "." },
        capa_set(got))
    end)

    it("advertises RESP-CODES and AUTH-RESP-CODE, as its refusals carry [AUTH] and [SYS/TEMP] (RFC 2449, 3206)",
      function()
        local sc = pop3_scene.new(finally)
        local p = sc:proxy { config = { pop3_capabilities = { "TOP" } } }
        local c = sc:client(p)
        local _, lines = c:pop3_multi("CAPA")
        local set = {}
        for _, l in ipairs(lines) do set[l] = true end
        assert.is_true(set["RESP-CODES"], table.concat(lines, " / "))
        assert.is_true(set["AUTH-RESP-CODE"], table.concat(lines, " / "))
      end)

    it("leaves USER out when the listener does not offer user", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = { "plain", "login" } }
      local c = sc:client(p)
      local _, lines = c:pop3_multi("CAPA")
      assert.same(sorted { "TOP", "UIDL", "SASL PLAIN LOGIN", "PIPELINING" }, capa_set(lines))
    end)

    it("has no SASL line when only user and apop are offered (APOP is not a SASL mechanism)", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = { "user", "apop" } }
      local c = sc:client(p)
      local _, lines = c:pop3_multi("CAPA")
      assert.same(sorted { "TOP", "UIDL", "USER", "PIPELINING" }, capa_set(lines))
    end)

    it("names exactly the listener's SASL mechanisms", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = ALL_MECHS }
      local c = sc:client(p)
      local _, lines = c:pop3_multi("CAPA")
      local sasl
      for _, l in ipairs(lines) do
        if l:match("^SASL ") then
          assert.is_nil(sasl, "two SASL lines")
          sasl = l
        end
      end
      local mechs = {}
      for w in sasl:sub(6):gmatch("%S+") do mechs[#mechs + 1] = w end
      assert.same(sorted { "PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER" }, sorted(mechs))
    end)

    it("uses a listener's own capabilities instead of pop3_capabilities", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = { "user" }, capabilities = { "TOP" },
        config = { pop3_capabilities = { "UIDL" } } }
      local c = sc:client(p)
      local _, lines = c:pop3_multi("CAPA")
      assert.same(sorted { "TOP", "USER", "PIPELINING" }, capa_set(lines))
    end)

    it("AUTH without a mechanism lists the mechanisms the listener offers", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = { "user", "plain", "cram-md5" } }
      local c = sc:client(p)
      local status, lines = c:pop3_multi("AUTH")
      assert.matches("^%+OK", status)
      assert.same(sorted { "PLAIN", "CRAM-MD5" }, sorted(lines))
    end)
  end)

  describe("USER and PASS", function()
    it("log in upstream with USER/PASS and give the client the upstream's +OK", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      assert.matches("^%+OK", c:pop3("USER alice"))
      assert.equal("+OK Logged in.", c:pop3("PASS secret"))
      assert.same({ "USER alice", "PASS secret" }, commands(m))
      assert.same({ { user = "alice", password = "secret", mechanism = "user" } }, m:logins())
      -- the policy saw them as nginx names them
      local calls = pop3_scene.policy_calls(p)
      assert.equal(1, #calls)
      assert.same({ "plain", "alice", "secret" }, { calls[1].mechanism, calls[1].user, calls[1].password })
      -- and now the upstream answers
      local status, lines = c:pop3_multi("RETR 1")
      assert.matches("^%+OK", status)
      assert.matches("pop3%-body from pop%-a", table.concat(lines, "\n"))
      assert.matches("signing off", c:pop3("QUIT"))
      assert.is_true(c:closed(3))
    end)

    it("keep the spaces of a password: PASS takes the rest of the line (RFC 1939)", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "correct horse  battery" } }
      local p = sc:proxy { upstream = route(m), users = { alice = "correct horse  battery" } }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.equal("+OK Logged in.", c:pop3("PASS correct horse  battery"))
      assert.same({ "USER alice", "PASS correct horse  battery" }, commands(m))
      assert.equal("correct horse  battery", pop3_scene.policy_calls(p)[1].password)
    end)

    it("refuse PASS without USER with -ERR, and nothing reaches the upstream", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a" }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      assert.matches("^%-ERR", c:pop3("PASS secret"))
      assert.equal("+OK", c:pop3("NOOP"))
      assert.same({}, m:lines())
      assert.same({}, pop3_scene.policy_calls(p))
    end)

    it("refuse USER with -ERR when the listener does not offer user", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a" }
      local p = sc:proxy { upstream = route(m), auth = { "plain" } }
      local c = sc:client(p)
      assert.matches("^%-ERR", c:pop3("USER alice"))
      assert.matches("^%-ERR", c:pop3("PASS secret"))
      assert.equal("+OK", c:pop3("NOOP"))
      assert.same({}, m:lines())
    end)

    it("refuse a bare CR or a NUL inside USER or PASS with -ERR, and nothing reaches the upstream", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a" }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      assert.matches("^%-ERR", c:pop3("USER alice\rDELE 1"))
      assert.matches("^%-ERR", c:pop3("USER al\0ice"))
      assert.equal("+OK", c:pop3("USER alice"))
      assert.matches("^%-ERR", c:pop3("PASS secret\rDELE 1"))
      -- the USER before it is forgotten: a PASS alone is not a login
      assert.matches("^%-ERR", c:pop3("PASS secret"))
      assert.equal("+OK", c:pop3("NOOP"))
      assert.same({}, m:lines())
      assert.same({}, pop3_scene.policy_calls(p))
    end)

    it("refuse USER without a name with -ERR", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy {}
      local c = sc:client(p)
      assert.matches("^%-ERR", c:pop3("USER"))
      assert.matches("^%-ERR", c:pop3("PASS secret"))
    end)

    it("give the policy's refusal as -ERR [AUTH] and let the client try again", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a" }
      local p = sc:proxy { upstream = route(m), users = { alice = "secret" } }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.equal("-ERR [AUTH] Invalid login or password", c:pop3("PASS wrong"))
      assert.same({}, m:lines())
      assert.matches("^%+OK", c:pop3("USER alice"))
      assert.equal("+OK Logged in.", c:pop3("PASS secret"))
      assert.same({ { user = "alice", password = "secret", mechanism = "user" } }, m:logins())
    end)

    it("give a temporary refusal as -ERR [SYS/TEMP] (RFC 3206)", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { users = { alice = "secret" },
        refusal = { message = "Backend in maintenance", temporary = true } }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.equal("-ERR [SYS/TEMP] Backend in maintenance", c:pop3("PASS wrong"))
    end)

    it("close the connection after max_login_attempts refusals", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { users = { alice = "secret" }, config = { max_login_attempts = 2 } }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.matches("^%-ERR %[AUTH%]", c:pop3("PASS one"))
      c:pop3("USER alice")
      assert.matches("^%-ERR", c:pop3("PASS two"))
      assert.is_true(c:closed(3))
      assert.equal("", c.buf)   -- one reply per command (RFC 1939): no second -ERR before the close
    end)
  end)

  describe("APOP", function()
    it("logs in with a correct digest; the policy checks it with s:check_password", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" }, apop = true }
      local p = sc:proxy { upstream = route(m), auth = { "user", "apop" }, users = { alice = "secret" },
        give_password = true }
      local c, greeting = sc:client(p)
      local ts = timestamp(greeting)
      local digest = md5.hex(ts .. "secret")
      assert.equal("+OK Logged in.", c:pop3("APOP alice " .. digest))
      local call = pop3_scene.policy_calls(p)[1]
      assert.same({ "apop", "alice", "", ts, digest },
        { call.mechanism, call.user, call.password, call.salt, call.digest })
    end)

    it("accepts the digest in upper case (hex digits are case-insensitive)", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" }, apop = true }
      local p = sc:proxy { upstream = route(m), auth = { "user", "apop" }, users = { alice = "secret" },
        give_password = true }
      local c, greeting = sc:client(p)
      assert.equal("+OK Logged in.", c:pop3("APOP alice " .. md5.hex(timestamp(greeting) .. "secret"):upper()))
    end)

    it("refuses a wrong digest with -ERR [AUTH], and nothing reaches the upstream", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" }, apop = true }
      local p = sc:proxy { upstream = route(m), auth = { "user", "apop" }, users = { alice = "secret" },
        give_password = true }
      local c, greeting = sc:client(p)
      local wrong = md5.hex(timestamp(greeting) .. "wrong")
      assert.matches("^%-ERR %[AUTH%]", c:pop3("APOP alice " .. wrong))
      assert.same({}, m:lines())
      -- a digest over another timestamp is wrong too (no replay)
      assert.matches("^%-ERR %[AUTH%]", c:pop3("APOP alice " .. md5.hex("<1.2@other>secret")))
      assert.same({}, m:lines())
    end)

    it("sends APOP upstream, over the upstream's own timestamp, with the policy's cleartext password", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" }, apop = true }
      local p = sc:proxy { upstream = route(m), auth = { "user", "apop" }, users = { alice = "secret" },
        give_password = true }
      local c, greeting = sc:client(p)
      local client_digest = md5.hex(timestamp(greeting) .. "secret")
      assert.equal("+OK Logged in.", c:pop3("APOP alice " .. client_digest))
      local cmds = commands(m)
      assert.equal(1, #cmds, table.concat(cmds, "\n"))
      local user, digest = cmds[1]:match("^APOP (%S+) (%x+)$")
      assert.equal("alice", user)
      assert.equal(32, #digest)
      assert.are_not.equal(client_digest, digest) -- the upstream's timestamp differs from ours
      assert.same({ { user = "alice", password = digest, mechanism = "apop" } }, m:logins())
    end)

    it("falls back to USER/PASS upstream when the upstream offers no APOP timestamp", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m), auth = { "user", "apop" }, users = { alice = "secret" },
        give_password = true }
      local c, greeting = sc:client(p)
      assert.equal("+OK Logged in.", c:pop3("APOP alice " .. md5.hex(timestamp(greeting) .. "secret")))
      assert.same({ "USER alice", "PASS secret" }, commands(m))
    end)

    it("gives -ERR [SYS/TEMP] when the policy returns no cleartext password for the upstream", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" }, apop = true }
      local p = sc:proxy { upstream = route(m), auth = { "user", "apop" }, users = { alice = "secret" } }
      local c, greeting = sc:client(p)
      assert.matches("^%-ERR %[SYS/TEMP%]", c:pop3("APOP alice " .. md5.hex(timestamp(greeting) .. "secret")))
      assert.same({}, m:logins())
      assert.equal("+OK", c:pop3("NOOP"))
    end)

    it("is refused with -ERR when the listener does not offer apop", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", apop = true }
      local p = sc:proxy { upstream = route(m), auth = { "user", "plain" } }
      local c = sc:client(p)
      assert.matches("^%-ERR", c:pop3("APOP alice " .. md5.hex("<1.2@x>secret")))
      assert.same({}, m:lines())
    end)

    it("refuses APOP whose digest is not 32 hex digits with -ERR", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = { "user", "apop" } }
      local c = sc:client(p)
      assert.matches("^%-ERR", c:pop3("APOP alice 1234"))
      assert.matches("^%-ERR", c:pop3("APOP alice"))
      assert.matches("^%-ERR", c:pop3("APOP " .. md5.hex("x")))
      assert.equal("+OK", c:pop3("NOOP"))
      assert.same({}, pop3_scene.policy_calls(p))
    end)
  end)

  describe("AUTH on the client side (RFC 5034)", function()
    it("PLAIN with an initial response logs in", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      assert.equal("+OK Logged in.", c:pop3("AUTH PLAIN " .. b64("\0alice\0secret")))
      assert.same({ { user = "alice", password = "secret", mechanism = "user" } }, m:logins())
    end)

    it("PLAIN with an empty challenge \"+ \" then the response; the authzid goes to the policy", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      assert.equal("+ ", c:pop3("AUTH PLAIN"))
      assert.equal("+OK Logged in.", c:pop3(b64("admin\0alice\0secret")))
      local call = pop3_scene.policy_calls(p)[1]
      assert.same({ "plain", "alice", "secret", "admin" }, { call.mechanism, call.user, call.password, call.authzid })
    end)

    it("LOGIN asks Username: and Password: in base64", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m), auth = { "user", "login" } }
      local c = sc:client(p)
      assert.equal("+ VXNlcm5hbWU6", c:pop3("AUTH LOGIN"))
      assert.equal("+ UGFzc3dvcmQ6", c:pop3(b64("alice")))
      assert.equal("+OK Logged in.", c:pop3(b64("secret")))
      assert.equal("login", pop3_scene.policy_calls(p)[1].mechanism)
    end)

    it("CRAM-MD5 sends a challenge; the policy checks the digest and gives the password upstream", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m), auth = { "user", "cram-md5" }, users = { alice = "secret" },
        give_password = true }
      local c = sc:client(p)
      local challenge = unb64(c:pop3("AUTH CRAM-MD5"):match("^%+ (%S+)$"))
      assert.matches("^<.+@postern%.test>$", challenge)
      assert.equal("+OK Logged in.", c:pop3(b64("alice " .. md5.hmac_hex("secret", challenge))))
      assert.same({ "USER alice", "PASS secret" }, commands(m))
    end)

    it("\"*\" cancels an exchange with -ERR and the session goes on", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = { "user", "plain", "login" } }
      local c = sc:client(p)
      c:pop3("AUTH LOGIN")
      assert.matches("^%-ERR", c:pop3("*"))
      assert.equal("+OK", c:pop3("NOOP"))
      assert.same({}, pop3_scene.policy_calls(p))
    end)

    it("answers a refused XOAUTH2 login with the error challenge, then -ERR (RFC 7628)", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = { "xoauth2" }, users = { alice = "good-token" } }
      local c = sc:client(p)
      local challenge = c:pop3("AUTH XOAUTH2 " .. b64("user=alice\1auth=Bearer bad-token\1\1"))
      local json = unb64(challenge:match("^%+ (%S+)$"))
      assert.matches('"status"%s*:%s*"invalid_token"', json)
      assert.matches("^%-ERR %[AUTH%]", c:pop3(""))
      assert.equal("+OK", c:pop3("NOOP"))
    end)

    it("refuses bad base64 and an unknown or unoffered mechanism with -ERR", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { auth = { "user", "plain" } }
      local c = sc:client(p)
      assert.matches("^%-ERR", c:pop3("AUTH PLAIN ###"))
      assert.matches("^%-ERR", c:pop3("AUTH LOGIN"))
      assert.matches("^%-ERR", c:pop3("AUTH KERBEROS_V4"))
      assert.equal("+OK", c:pop3("NOOP"))
      assert.same({}, pop3_scene.policy_calls(p))
    end)
  end)

  describe("login upstream", function()
    it("uses AUTH PLAIN when the policy's upstream says auth = \"plain\"", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m, { auth = "plain" }) }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.equal("+OK Logged in.", c:pop3("PASS secret"))
      assert.same({ "AUTH PLAIN " .. b64("\0alice\0secret") }, commands(m))
      assert.same({ { user = "alice", password = "secret", mechanism = "plain" } }, m:logins())
    end)

    it("uses AUTH LOGIN when the policy's upstream says auth = \"login\"", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m, { auth = "login" }) }
      local c = sc:client(p)
      assert.equal("+OK Logged in.", c:pop3("AUTH PLAIN " .. b64("\0alice\0secret")))
      assert.same({ "AUTH LOGIN", b64("alice"), b64("secret") }, commands(m))
      assert.same({ { user = "alice", password = "secret", mechanism = "login" } }, m:logins())
    end)

    it("refuses a policy password with CR/LF instead of sending it upstream (-ERR [SYS/TEMP])", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a" }
      local p = sc:proxy { upstream = route(m, { password = "x\r\nDELE 1" }) }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.matches("^%-ERR %[SYS/TEMP%]", c:pop3("PASS secret"))
      for _, l in ipairs(commands(m)) do assert.is_nil(l:match("^DELE"), "injected: " .. l) end
      assert.same({}, m:logins())
    end)

    it("forces APOP upstream with auth = \"apop\" for a USER/PASS client", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" }, apop = true }
      local p = sc:proxy { upstream = route(m, { auth = "apop" }) }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.equal("+OK Logged in.", c:pop3("PASS secret"))
      local cmds = commands(m)
      assert.equal(1, #cmds)
      assert.matches("^APOP alice %x+$", cmds[1])
    end)

    it("never sends the password in the clear when the upstream is asked for auth = \"cram-md5\"", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" }, sasl = "PLAIN LOGIN CRAM-MD5" }
      local p = sc:proxy { upstream = route(m, { auth = "cram-md5" }) }
      local c = sc:client(p)
      c:pop3("USER alice")
      c:pop3("PASS secret")
      local cmds = commands(m)
      for _, l in ipairs(cmds) do
        assert.is_nil(l:find("secret", 1, true), l)
        for word in l:gmatch("%S+") do
          local raw = unb64(word) or ""
          assert.is_nil(raw:find("secret", 1, true), "base64 of the password sent: " .. l)
        end
      end
      -- RFC 2195: the server speaks first, a CRAM-MD5 command has no initial response
      if cmds[1] then assert.equal("AUTH CRAM-MD5", cmds[1]) end
    end)

    it("treats an unknown upstream auth value as a policy error: -ERR [SYS/TEMP], no login upstream", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m, { auth = "kerberos" }) }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.matches("^%-ERR %[SYS/TEMP%]", c:pop3("PASS secret"))
      assert.same({}, m:logins())
    end)

    it("logs in with the policy's user and password when the upstream table has them", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { ["alice@backend"] = "master-pw" } }
      local p = sc:proxy { upstream = route(m, { user = "alice@backend", password = "master-pw" }) }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.equal("+OK Logged in.", c:pop3("PASS secret"))
      assert.same({ "USER alice@backend", "PASS master-pw" }, commands(m))
    end)

    it("forwards an XOAUTH2 token with XOAUTH2", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "ya29.token" } }
      local p = sc:proxy { upstream = route(m), auth = { "xoauth2" } }
      local c = sc:client(p)
      local ir = b64("user=alice\1auth=Bearer ya29.token\1\1")
      assert.equal("+OK Logged in.", c:pop3("AUTH XOAUTH2 " .. ir))
      assert.same({ { user = "alice", password = "ya29.token", mechanism = "xoauth2" } }, m:logins())
    end)

    it("gives the client the upstream's -ERR, and the client may try again", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.equal("-ERR [AUTH] Authentication failed.", c:pop3("PASS wrong"))
      assert.matches("^%+OK", c:pop3("NOOP"))
      c:pop3("USER alice")
      assert.equal("+OK Logged in.", c:pop3("PASS secret"))
      assert.same({ { user = "alice", password = "wrong", mechanism = "user" },
                    { user = "alice", password = "secret", mechanism = "user" } }, m:logins())
      assert.equal(2, #records(m, "CONNECT"))
    end)

    it("gives -ERR [SYS/TEMP] when no upstream can be reached", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { upstream = route(testing.free_port()) }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.matches("^%-ERR %[SYS/TEMP%]", c:pop3("PASS secret"))
      assert.equal("+OK", c:pop3("NOOP"))
    end)

    it("gives -ERR [SYS/TEMP] when the upstream closes instead of answering the login", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", close_on_login = true }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.matches("^%-ERR %[SYS/TEMP%]", c:pop3("PASS secret"))
      assert.equal("+OK", c:pop3("NOOP"))
    end)

    it("gives -ERR [SYS/TEMP] when the upstream does not answer the login within timeout", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", login_delay = 4 }
      local p = sc:proxy { upstream = route(m), config = { timeout = 1 } }
      local c = sc:client(p)
      c:pop3("USER alice")
      local t0 = socket.gettime()
      assert.matches("^%-ERR %[SYS/TEMP%]", c:pop3("PASS secret", 6))
      local waited = socket.gettime() - t0
      assert.is_true(waited > 0.7 and waited < 3.5, "answered after " .. waited .. " s")
    end)

    it("answers commands pipelined after a PASS the upstream refuses itself, as before login", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      c:send("USER alice\r\nPASS wrong\r\nSTAT\r\nNOOP\r\n")
      assert.matches("^%+OK", c:pop3())
      assert.equal("-ERR [AUTH] Authentication failed.", c:pop3())
      assert.matches("^%-ERR", c:pop3()) -- STAT: not logged in
      assert.equal("+OK", c:pop3())
      assert.same({ "USER alice", "PASS wrong" }, commands(m))
    end)

    it("logs in with AUTH PLAIN upstream for a user name with a space, which USER cannot carry", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { ["john smith"] = "secret" } }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      assert.equal("+OK Logged in.", c:pop3("AUTH PLAIN " .. b64("\0john smith\0secret")))
      assert.same({ "AUTH PLAIN " .. b64("\0john smith\0secret") }, commands(m))
      m:wait_for("^AUTH john smith secret plain$")
    end)

    it("tries the next upstream of a list when one greets with -ERR", function()
      local sc = pop3_scene.new(finally)
      local bad = sc:mock { name = "pop-bad", greeting = "-ERR go away" }
      local good = sc:mock { name = "pop-good" }
      local p = sc:proxy { upstream = { route(bad), route(good) } }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.equal("+OK Logged in.", c:pop3("PASS secret"))
      assert.same({}, bad:logins())
      assert.same({ "USER alice", "PASS secret" }, commands(good))
    end)
  end)

  describe("before login", function()
    it("answers NOOP and RSET with +OK, and nothing reaches an upstream", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a" }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      assert.equal("+OK", c:pop3("NOOP"))
      assert.equal("+OK", c:pop3("RSET"))
      assert.equal("+OK", c:pop3("noop"))
      assert.same({}, m:lines())
    end)

    it("answers QUIT with +OK and closes", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy {}
      local c = sc:client(p)
      assert.matches("^%+OK", c:pop3("QUIT"))
      assert.is_true(c:closed(3))
    end)

    it("answers -ERR to the TRANSACTION commands (STAT, LIST, RETR, DELE, UIDL, TOP)", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a" }
      local p = sc:proxy { upstream = route(m), config = { max_errors = 10 } }
      local c = sc:client(p)
      for _, cmd in ipairs { "STAT", "LIST", "RETR 1", "DELE 1", "UIDL", "TOP 1 0" } do
        assert.matches("^%-ERR", c:pop3(cmd), cmd)
      end
      assert.equal("+OK", c:pop3("NOOP"))
      assert.same({}, m:lines())
    end)

    it("closes after max_errors unknown commands, the last one still answered -ERR", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { config = { max_errors = 3 } }
      local c = sc:client(p)
      assert.matches("^%-ERR", c:pop3("STAT"))
      assert.equal("+OK", c:pop3("NOOP")) -- good commands do not reset the count
      assert.matches("^%-ERR", c:pop3("XYZZY"))
      assert.matches("^%-ERR", c:pop3("LIST"))
      assert.is_true(c:closed(3))
      assert.equal("", c.buf)   -- one reply per command (RFC 1939): no second -ERR before the close
    end)

    it("answers STLS with -ERR where TLS is not configured", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy {}
      local c = sc:client(p)
      assert.matches("^%-ERR", c:pop3("STLS"))
      assert.equal("+OK", c:pop3("NOOP"))
    end)

    it("takes a bare LF as the end of a line", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy {}
      local c = sc:client(p)
      c:send("NOOP\n")
      assert.equal("+OK", c:pop3())
    end)

    it("refuses a command with a NUL byte with -ERR", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy {}
      local c = sc:client(p)
      assert.matches("^%-ERR", c:pop3("NO\0OP"))
      assert.equal("+OK", c:pop3("NOOP"))
    end)

    it("answers -ERR and closes when a line is longer than client_buffer", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { config = { client_buffer = 1024 } }
      local c = sc:client(p)
      -- no line end at all: postern must not wait for one
      c:send("USER " .. ("a"):rep(2000))
      assert.matches("^%-ERR", c:pop3(nil, 3))
      assert.is_true(c:closed(3))
    end)

    it("takes a line of exactly client_buffer bytes, CRLF included, and closes on one byte more", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { config = { client_buffer = 4096 } }
      local c = sc:client(p)
      local fits = "XYZZY " .. ("a"):rep(4096 - 8) .. "\r\n"
      assert.equal(4096, #fits)
      c:send(fits)
      assert.matches("^%-ERR", c:pop3())
      assert.equal("+OK", c:pop3("NOOP"))
      c:send("XYZZY " .. ("a"):rep(4096 - 7) .. "\r\n")
      assert.matches("^%-ERR", c:pop3())
      assert.is_true(c:closed(3))
    end)

    it("accepts a 4 KiB AUTH PLAIN initial response (nginx's buffer is 128 bytes)", function()
      local pw = ("p"):rep(3000)
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = pw } }
      local p = sc:proxy { upstream = route(m, { auth = "plain" }) }
      local c = sc:client(p)
      local ir = b64("\0alice\0" .. pw)
      assert.is_true(#ir > 4000)
      assert.equal("+OK Logged in.", c:pop3("AUTH PLAIN " .. ir))
      assert.same({ { user = "alice", password = pw, mechanism = "plain" } }, m:logins())
    end)

    it("accepts a 4 KiB XOAUTH2 token and forwards it whole", function()
      local token = "ya29." .. ("T"):rep(3200)
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = token } }
      local p = sc:proxy { upstream = route(m), auth = { "xoauth2" } }
      local c = sc:client(p)
      local ir = b64("user=alice\1auth=Bearer " .. token .. "\1\1")
      assert.is_true(#ir > 4096)
      assert.equal("+OK Logged in.", c:pop3("AUTH XOAUTH2 " .. ir))
      assert.same({ { user = "alice", password = token, mechanism = "xoauth2" } }, m:logins())
    end)

    it("closes the connection without a word after timeout seconds of silence (RFC 1939 section 3)", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { config = { timeout = 1 } }
      local c = sc:client(p)
      assert.matches("^%+OK", c:pop3("USER alice"))
      local t0 = socket.gettime()
      assert.is_true(c:closed(5))
      local waited = socket.gettime() - t0
      assert.equal("", c.buf)
      assert.is_true(waited > 0.7 and waited < 4, "closed after " .. waited .. " s")
    end)
  end)

  describe("CR and LF in SASL-decoded credentials", function()
    it("AUTH PLAIN with CRLF in the password is refused and nothing reaches the upstream", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a" }
      local p = sc:proxy { upstream = route(m, { auth = "login" }) }
      local c = sc:client(p)
      assert.matches("^%-ERR", c:pop3("AUTH PLAIN " .. b64("\0alice\0pa\r\nDELE 1")))
      assert.same({}, pop3_scene.policy_calls(p))
      assert.equal("+OK", c:pop3("NOOP"))
      assert.same({}, m:lines())
    end)

    it("AUTH LOGIN with a LF in the user name or the password is refused", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a" }
      local p = sc:proxy { upstream = route(m), auth = { "login" } }
      local c = sc:client(p)
      c:pop3("AUTH LOGIN")
      assert.matches("^%+ ", c:pop3(b64("alice")))
      assert.matches("^%-ERR", c:pop3(b64("pa\nDELE 1")))
      local reply = c:pop3("AUTH LOGIN " .. b64("alice\r\nDELE 1"))
      if reply:match("^%+ ") then reply = c:pop3(b64("secret")) end
      assert.matches("^%-ERR", reply)
      assert.same({}, pop3_scene.policy_calls(p))
      assert.same({}, m:lines())
    end)
  end)

  describe("pipelining (RFC 2449)", function()
    it("answers pipelined commands before login in order", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy {}
      local c = sc:client(p)
      c:send("NOOP\r\nCAPA\r\nSTAT\r\nRSET\r\n")
      assert.equal("+OK", c:pop3())
      local status, lines = c:pop3_multi()
      assert.matches("^%+OK", status)
      assert.truthy(lines[1])
      assert.matches("^%-ERR", c:pop3())
      assert.equal("+OK", c:pop3())
    end)

    it("USER, PASS, STAT and LIST in one send: all answered in order, STAT and LIST by the upstream", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      c:send("USER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\n")
      assert.matches("^%+OK", c:pop3())
      assert.equal("+OK Logged in.", c:pop3())
      local stat = c:pop3()
      assert.matches("^%+OK 1 %d+$", stat)
      local status, lines = c:pop3_multi()
      assert.matches("^%+OK", status)
      assert.same({ "1 " .. stat:match("(%d+)$") }, lines)
      assert.same({ "USER alice", "PASS secret", "STAT", "LIST" }, commands(m))
    end)

    it("answers a whole pipelined session even when the client half-closes right after sending it", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      c:send("USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n")
      c.sock:shutdown("send") -- like `printf ... | nc -N`: no more bytes, still reading
      assert.matches("^%+OK", c:pop3())
      assert.equal("+OK Logged in.", c:pop3())
      assert.matches("^%+OK 1 %d+$", c:pop3())
      assert.equal("+OK pop-a POP3 mock signing off", c:pop3())
      assert.same({ "USER alice", "PASS secret", "STAT", "QUIT" }, commands(m))
    end)

    it("relays a client's half-close after login: the upstream still answers what came before", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.equal("+OK Logged in.", c:pop3("PASS secret"))
      c:send("STAT\r\nQUIT\r\n")
      c.sock:shutdown("send")
      assert.matches("^%+OK 1 %d+$", c:pop3())
      assert.equal("+OK pop-a POP3 mock signing off", c:pop3())
      assert.is_true(c:closed(3))
    end)

    it("a burst after PASS larger than the 16 KiB buffer reaches the upstream whole and in order", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      local n = 3000 -- 3000 * 8 bytes: crosses 16384 with a command cut in two
      local burst = { "USER alice\r\nPASS secret\r\n" }
      for i = 1, n do burst[#burst + 1] = ("LIST %d\r\n"):format(i % 2 + 1) end
      c:send(table.concat(burst))
      assert.matches("^%+OK", c:pop3())
      assert.equal("+OK Logged in.", c:pop3())
      for i = 1, n do
        local l = c:pop3()
        if i % 2 == 0 then
          assert.matches("^%+OK 1 %d+$", l, "reply " .. i)
        else
          assert.equal("-ERR No such message", l, "reply " .. i)
        end
      end
      local cmds = commands(m)
      assert.equal(n + 2, #cmds)
      assert.equal("LIST 2", cmds[3])
      assert.equal("LIST 1", cmds[n + 2])
    end)

    it("a pre-login burst larger than the 16 KiB buffer is answered whole, then the login works", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" } }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      local n = 3000 -- 6 bytes each: "NOOP\r\n" number 2731 straddles byte 16384
      c:send(("NOOP\r\n"):rep(n) .. "USER alice\r\nPASS secret\r\nSTAT\r\n")
      for i = 1, n do assert.equal("+OK", c:pop3(), "reply " .. i) end
      assert.matches("^%+OK", c:pop3())
      assert.equal("+OK Logged in.", c:pop3())
      assert.matches("^%+OK 1 %d+$", c:pop3())
      assert.same({ "USER alice", "PASS secret", "STAT" }, commands(m))
    end)

    it("a command cut exactly at the 16 KiB buffer boundary is not \"too long\"", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { config = { client_buffer = 16384 } }
      local c = sc:client(p)
      -- 16380 bytes of NOOPs, then "CAPA\r\n" whose "\r\n" falls after byte 16384
      c:send(("NOOP\r\n"):rep(2730) .. "CAPA\r\nNOOP\r\n")
      for i = 1, 2730 do assert.equal("+OK", c:pop3(), "reply " .. i) end
      local status = c:pop3_multi()
      assert.matches("^%+OK", status)
      assert.equal("+OK", c:pop3())
    end)
  end)

  describe("clients that go away", function()
    it("closes the upstream when the client disconnects during the upstream login, and serves the next", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", login_delay = 0.5 }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      c:send("USER alice\r\nPASS secret\r\n")
      m:wait_for("^AUTH alice secret user$")
      c:close()
      m:wait_for("^CLOSE 1$")
      local c2 = sc:client(p)
      c2:pop3("USER bob")
      assert.equal("+OK Logged in.", c2:pop3("PASS pw"))
      p:wait_log("session closed %(client closed connection%)")
    end)

    it("forgets a client that disconnects while its refusal is delayed by wait", function()
      local sc = pop3_scene.new(finally)
      local p = sc:proxy { users = { alice = "secret" }, refusal = { message = "no", wait = 0.5 } }
      local c = sc:client(p)
      c:send("USER alice\r\nPASS wrong\r\n")
      p:wait_log("policy: mechanism=plain")
      c:close()
      testing.sleep(0.8)
      local c2 = sc:client(p)
      assert.equal("+OK", c2:pop3("NOOP"))
      assert.truthy(p:wait_log("session closed %(client closed connection%)"))
    end)
  end)

  describe("relay", function()
    it("RETR of a big message arrives complete and dot-unstuffed", function()
      local size = 1000000
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a", users = { alice = "secret" }, big = size }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      c:pop3("USER alice")
      assert.equal("+OK Logged in.", c:pop3("PASS secret"))
      assert.equal(size, (list_size(c, 2)))
      local status, lines = c:pop3_multi("RETR 2", 30)
      assert.matches("^%+OK", status)
      local total = 0
      for _, l in ipairs(lines) do total = total + #l + 2 end
      assert.equal(size, total)
      assert.matches("^Subject: big message", lines[2])
      assert.equal("+OK", c:pop3("NOOP"))
    end)

    it("QUIT after login goes to the upstream, whose reply ends the session", function()
      local sc = pop3_scene.new(finally)
      local m = sc:mock { name = "pop-a" }
      local p = sc:proxy { upstream = route(m) }
      local c = sc:client(p)
      c:pop3("USER alice")
      c:pop3("PASS secret")
      assert.equal("+OK pop-a POP3 mock signing off", c:pop3("QUIT"))
      assert.is_true(c:closed(3))
      m:wait_for("^CLOSE ")
    end)
  end)
end)
