-- SMTP and submission through the real binary (RFC 5321, RFC 4954 AUTH,
-- RFC 2920 PIPELINING, RFC 3463 enhanced status codes, Postfix XCLIENT):
-- the front end postern speaks to clients before the login, the policy's
-- refusals, the login to the upstream (AUTH PLAIN or LOGIN, XCLIENT), the
-- no-auth mode (auth = { "none" }) where MAIL FROM and RCPT TO decide the
-- route, and the hand-over to the relay with pipelined commands.
--
-- Upstreams are mock SMTP servers (lua/postern/testing/mock_smtp.lua) whose record
-- file shows every line postern sent them.
local smtp_scene = require "helpers.smtp_scene"
local testing = require "postern.testing"

local plain, b64 = smtp_scene.plain, smtp_scene.b64
local commands, records = smtp_scene.commands, smtp_scene.records

-- a proxy whose users all go to one mock (alice's password: secret)
local function one_backend(sc, opts, mock_opts, route_extra)
  local m = sc:mock(mock_opts or { name = "mx-a", users = { alice = "secret" } })
  local p = sc:proxy({ users = { ["*"] = smtp_scene.route(m, route_extra) } }, opts)
  return m, p
end

-- send one message with DATA after a successful login; returns the final code
local function send_message(c, subject, from, to)
  assert.equal(250, (c:smtp("MAIL FROM:<" .. (from or "a@x") .. ">")))
  assert.equal(250, (c:smtp("RCPT TO:<" .. (to or "b@y") .. ">")))
  assert.equal(354, (c:smtp("DATA")))
  return (c:smtp("Subject: " .. subject .. "\r\n\r\nhello\r\n."))
end

describe("SMTP front end", function()
  describe("greeting", function()
    it("greets with 220, the server_name and ESMTP", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc)
      local c = sc:client(p, { greeted = false })
      assert.equal("220 postern.test ESMTP ready", c:line())
    end)

    it("with smtp_greeting_delay, rejects a client that talks before the greeting with 5xx and closes", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { smtp_greeting_delay = 1 } })
      local c = sc:client(p, { greeted = false })
      c:send("EHLO spambot.example\r\n")
      local line = c:line(4)
      assert.matches("^5%d%d ", line)
      assert.is_true(c:closed(3))
      assert.is_nil(c.buf:find("220", 1, true), "a greeting was sent after the rejection: " .. c.buf)
    end)

    it("with smtp_greeting_delay, greets a client that waits, after the delay", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { smtp_greeting_delay = 1 } })
      local t0 = testing.now()
      local c = sc:client(p, { greeted = false })
      assert.equal("220 postern.test ESMTP ready", c:line(5))
      assert.is_true(testing.now() - t0 >= 0.9, "greeted too early")
      assert.equal(250, (c:smtp("EHLO client.example")))
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
    end)
  end)

  describe("EHLO and HELO", function()
    it("EHLO lists PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES and the listener's AUTH mechanisms, 250- then 250", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc)
      local c = sc:client(p)
      assert.same({
        "250-postern.test",
        "250-PIPELINING",
        "250-SIZE 10485760",
        "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES",
        "250 AUTH PLAIN LOGIN",
      }, smtp_scene.raw_reply(c, "EHLO client.example"))
    end)

    it("the AUTH line lists exactly the listener's mechanisms", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { auth = { "login", "cram-md5" } })
      local c = sc:client(p)
      local code, kw = c:smtp("EHLO client.example")
      assert.equal(250, code)
      local auth = kw[#kw]
      assert.matches("^AUTH ", auth)
      local mechs = {}
      for m in auth:gmatch("%S+") do if m ~= "AUTH" then mechs[#mechs + 1] = m end end
      table.sort(mechs)
      assert.same({ "CRAM-MD5", "LOGIN" }, mechs)
    end)

    it("smtp_capabilities replaces the default keywords; AUTH is still added", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { smtp_capabilities = { "SIZE 1000", "DSN" } } })
      local c = sc:client(p)
      assert.same({
        "250-postern.test",
        "250-SIZE 1000",
        "250-DSN",
        "250 AUTH PLAIN LOGIN",
      }, smtp_scene.raw_reply(c, "EHLO client.example"))
    end)

    it("a listener's own capabilities replace smtp_capabilities", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { smtp_capabilities = { "SIZE 1000" } },
        listener = { capabilities = { "PIPELINING", "CHUNKING" } } })
      local c = sc:client(p)
      assert.same({
        "250-postern.test",
        "250-PIPELINING",
        "250-CHUNKING",
        "250 AUTH PLAIN LOGIN",
      }, smtp_scene.raw_reply(c, "EHLO client.example"))
    end)

    it("HELO gets a one-line 250 with the server name", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc)
      local c = sc:client(p)
      assert.same({ "250 postern.test" }, smtp_scene.raw_reply(c, "HELO client.example"))
    end)

    it("EHLO or HELO without an argument gets 501", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc)
      local c = sc:client(p)
      local code, _, last = c:smtp("EHLO")
      assert.equal(501, code)
      assert.matches("^501 5%.5%.4 ", last)
      assert.equal(501, (c:smtp("HELO")))
      -- the session goes on
      assert.equal(250, (c:smtp("EHLO client.example")))
    end)

    it("an EHLO name with a control character (TAB, bare CR) gets 501 5.5.4: it would be replayed upstream", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { max_errors = 10 } })
      local c = sc:client(p)
      for _, name in ipairs { "a\tb", "x\ry", "\1\2garbage", "two words" } do
        local code, _, last = c:smtp("EHLO " .. name)
        assert.equal(501, code, name)
        assert.matches("^501 5%.5%.4 ", last)
      end
      assert.equal(250, (c:smtp("EHLO [192.0.2.1]")))
    end)
  end)

  describe("AUTH", function()
    it("is refused with 503 before EHLO", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc)
      local c = sc:client(p)
      local code, _, last = c:smtp("AUTH PLAIN " .. plain("alice", "secret"))
      assert.equal(503, code)
      assert.matches("^503 5%.5%.1 ", last)
      assert.same({}, records(m, "CONNECT"))
      -- and works once EHLO was said
      assert.equal(250, (c:smtp("EHLO client.example")))
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
    end)

    it("PLAIN with an initial response logs in: 235 2.7.0", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc)
      local c = sc:ehlo_client(p)
      local code, _, last = c:smtp("AUTH PLAIN " .. plain("alice", "secret"))
      assert.equal(235, code)
      assert.equal("235 2.7.0 Authentication successful", last)
      assert.same({ { user = "alice", password = "secret", mechanism = "plain" } }, m:logins())
      local calls = smtp_scene.policy_calls(p)
      assert.equal("plain", calls[1].mechanism)
      assert.equal("alice", calls[1].user)
      assert.equal("client.example", calls[1].helo) -- the policy sees the EHLO name in AUTH mode too
    end)

    it("PLAIN without an initial response asks with an empty 334 challenge", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc)
      local c = sc:ehlo_client(p)
      local code, _, last = c:smtp("AUTH PLAIN")
      assert.equal(334, code)
      assert.equal("334 ", last)
      assert.equal(235, (c:smtp(plain("alice", "secret"))))
      assert.equal("alice", m:logins()[1].user)
    end)

    it("PLAIN passes the authorization identity to the policy as s.authzid", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc)
      local c = sc:ehlo_client(p)
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret", "shared@example"))))
      local calls = smtp_scene.policy_calls(p)
      assert.equal("alice", calls[1].user)
      assert.equal("shared@example", calls[1].authzid)
    end)

    it("LOGIN prompts for Username: and Password: (334 VXNlcm5hbWU6, 334 UGFzc3dvcmQ6)", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc)
      local c = sc:ehlo_client(p)
      local _, _, last = c:smtp("AUTH LOGIN")
      assert.equal("334 VXNlcm5hbWU6", last)
      _, _, last = c:smtp(b64("alice"))
      assert.equal("334 UGFzc3dvcmQ6", last)
      assert.equal(235, (c:smtp(b64("secret"))))
      assert.equal("alice", m:logins()[1].user)
      assert.equal("login", smtp_scene.policy_calls(p)[1].mechanism)
    end)

    it("LOGIN with an initial response takes it as the user name and asks only for the password", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc)
      local c = sc:ehlo_client(p)
      local _, _, last = c:smtp("AUTH LOGIN " .. b64("alice"))
      assert.equal("334 UGFzc3dvcmQ6", last)
      assert.equal(235, (c:smtp(b64("secret"))))
      assert.same({ user = "alice", password = "secret", mechanism = "plain" }, m:logins()[1])
    end)

    it("\"*\" cancels the exchange with 501; a new AUTH works", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc)
      local c = sc:ehlo_client(p)
      assert.equal(334, (c:smtp("AUTH LOGIN")))
      assert.equal(334, (c:smtp(b64("alice"))))
      local code, _, last = c:smtp("*")
      assert.equal(501, code)
      assert.matches("^501 5%.%d+%.%d+ ", last)
      assert.same({}, smtp_scene.policy_calls(p))
      assert.equal(334, (c:smtp("AUTH PLAIN")))
      assert.equal(501, (c:smtp("*")))
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
      assert.equal(1, #m:logins())
    end)

    it("bad base64 gets 501, as an initial response and as a continuation", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc)
      local c = sc:ehlo_client(p)
      local code, _, last = c:smtp("AUTH PLAIN !!notbase64!!")
      assert.equal(501, code)
      assert.matches("^501 5%.5%.2 ", last)
      assert.equal(334, (c:smtp("AUTH LOGIN")))
      assert.equal(501, (c:smtp("%%%")))
      assert.same({}, smtp_scene.policy_calls(p))
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
    end)

    it("an unknown mechanism, or one the listener does not offer, gets 504", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc)
      local c = sc:ehlo_client(p)
      local code, _, last = c:smtp("AUTH GSSAPI")
      assert.equal(504, code)
      assert.matches("^504 5%.5%.4 ", last)
      assert.equal(504, (c:smtp("AUTH CRAM-MD5")))
      assert.equal(250, (c:smtp("NOOP")))
    end)

    it("a PLAIN message whose credentials hold CR or LF is refused before the policy", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc)
      local c = sc:ehlo_client(p)
      local code = c:smtp("AUTH PLAIN " .. plain("alice", "secret\r\nRSET"))
      assert.is_true(code >= 500 and code < 600, "got " .. tostring(code))
      assert.same({}, smtp_scene.policy_calls(p))
      assert.same({}, records(m, "CONNECT"))
    end)
  end)

  describe("CRAM-MD5", function()
    it("sends a base64 <...@server_name> challenge; the policy verifies the digest and gives the upstream password", function()
      local md5 = require "postern.md5"
      local sc = smtp_scene.new(finally)
      local m = sc:mock { name = "mx-a", users = { alice = "secret" } }
      local p = sc:proxy_source(([[
        local postern = require "postern"
        return { authenticate = function(s)
          postern.log("info", "cram: mechanism=", s.mechanism, " user=", s.user, " |")
          if s.user == "alice" and s:check_password("secret") then
            return { host = "127.0.0.1", port = %d, password = "secret" }
          end
          return nil, "Invalid login or password"
        end }
      ]]):format(m.port), { auth = { "cram-md5" } })
      local c = sc:ehlo_client(p)
      local code, texts = c:smtp("AUTH CRAM-MD5")
      assert.equal(334, code)
      local challenge = require("mime").unb64(texts[1])
      assert.matches("^<[^<>]+@postern%.test>$", challenge)
      local function hmac_md5(key, msg)
        local bit = require "bit"
        if #key > 64 then key = md5.sum(key) end
        key = key .. ("\0"):rep(64 - #key)
        local ipad, opad = {}, {}
        for i = 1, 64 do
          local k = key:byte(i)
          ipad[i] = string.char(bit.bxor(k, 0x36))
          opad[i] = string.char(bit.bxor(k, 0x5c))
        end
        return md5.hex(table.concat(opad) .. md5.sum(table.concat(ipad) .. msg))
      end
      -- a wrong digest is refused
      assert.equal(535, (c:smtp(b64("alice " .. hmac_md5("wrong", challenge)))))
      code, texts = c:smtp("AUTH CRAM-MD5")
      assert.equal(334, code)
      challenge = require("mime").unb64(texts[1])
      assert.equal(235, (c:smtp(b64("alice " .. hmac_md5("secret", challenge)))))
      assert.same({ { user = "alice", password = "secret", mechanism = "plain" } }, m:logins())
      p:wait_log("cram: mechanism=cram%-md5 user=alice")
    end)

    -- RFC 4954 section 4: an initial response to a mechanism where the server
    -- speaks first "MUST" be rejected with 501
    it("refuses CRAM-MD5 with an initial response (the server speaks first) with 501", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { auth = { "cram-md5", "plain" } })
      local c = sc:ehlo_client(p)
      local code, _, last = c:smtp("AUTH CRAM-MD5 " .. b64("alice 0123456789abcdef0123456789abcdef"))
      assert.equal(501, code, last)
      assert.same({}, smtp_scene.policy_calls(p))
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
    end)
  end)

  describe("other commands before the login", function()
    it("MAIL, RCPT and DATA before AUTH get 530 5.7.0 when the listener requires AUTH", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc)
      local c = sc:ehlo_client(p)
      local code, _, last = c:smtp("MAIL FROM:<a@x>")
      assert.equal(530, code)
      assert.matches("^530 5%.7%.0 ", last)
      assert.equal(530, (c:smtp("RCPT TO:<b@y>")))
      assert.equal(530, (c:smtp("DATA")))
      assert.same({}, records(m, "CONNECT"))
    end)

    it("RSET and NOOP get 250 2.0.0; QUIT gets 221 and the connection is closed", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc)
      local c = sc:ehlo_client(p)
      local _, _, last = c:smtp("RSET")
      assert.matches("^250 2%.0%.0 ", last)
      _, _, last = c:smtp("NOOP")
      assert.matches("^250 2%.0%.0 ", last)
      _, _, last = c:smtp("QUIT")
      assert.matches("^221 2%.0%.0 ", last)
      assert.is_true(c:closed(3))
    end)

    it("an unknown command gets 500 5.5.1 (RFC 5321 4.2.4, as nginx); max_errors of them close the connection", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { max_errors = 3 } })
      local c = sc:ehlo_client(p)
      local code, _, last = c:smtp("FROB x")
      assert.equal(500, code)
      assert.equal("500 5.5.1 Invalid command", last)
      assert.equal(500, (c:smtp("WIBBLE")))
      assert.equal(500, (c:smtp("XYZZY")))
      -- the third error ends the session: 421 (RFC 5321 4.2.3, "closing transmission channel") and close
      local code2, _, last2 = c:smtp()
      assert.equal(421, code2)
      assert.matches("^421 4%.%d+%.%d+ postern%.test ", last2)
      assert.is_true(c:closed(3))
    end)

    it("a command with a NUL byte gets 500 and counts as an error", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { max_errors = 2 } })
      local c = sc:ehlo_client(p)
      local code, _, last = c:smtp("NOOP\0x")
      assert.equal(500, code)
      assert.matches("^500 5%.5%.%d ", last)
      assert.equal(500, (c:smtp("FROB")))
      assert.equal(421, (c:smtp()))
      assert.is_true(c:closed(3))
    end)

    it("a line longer than client_buffer gets 500 and the connection is closed", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { client_buffer = 1024 } })
      local c = sc:ehlo_client(p)
      c:send("NOOP " .. ("x"):rep(3000) .. "\r\n")
      local code, _, last = c:smtp()
      assert.equal(500, code)
      assert.matches("^500 5%.5%.%d ", last)
      assert.is_true(c:closed(3))
    end)
  end)

  describe("commands in general", function()
    it("verbs and mechanism names are case-insensitive", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc)
      local c = sc:client(p)
      assert.equal(250, (c:smtp("ehlo client.example")))
      assert.equal(250, (c:smtp("NoOp")))
      assert.equal(235, (c:smtp("auth plain " .. plain("alice", "secret"))))
      assert.equal("alice", m:logins()[1].user)
    end)

    it("every reply after EHLO carries an enhanced status code (RFC 2034)", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { max_errors = 50 } })
      local c = sc:ehlo_client(p)
      local cmds = { "NOOP", "RSET", "MAIL FROM:<a@x>", "RCPT TO:<b@y>", "DATA", "FROB", "EHLO",
        "AUTH", "AUTH GSSAPI", "AUTH PLAIN !!", "STARTTLS", "AUTH PLAIN " .. b64("no nuls here"),
        "AUTH PLAIN " .. plain("nobody", "x"), "QUIT" }
      for _, cmd in ipairs(cmds) do
        local code, _, last = c:smtp(cmd)
        assert.is_true(code >= 200, cmd .. " -> " .. last)
        assert.matches("^%d%d%d [245]%.%d%d?%d?%.%d%d?%d? ", last, nil, false, cmd .. " -> " .. last)
        assert.equal(tostring(code):sub(1, 1), last:sub(5, 5), cmd .. ": class of the enhanced code: " .. last)
      end
    end)

    it("answers pipelined commands in order, across the end of a small client_buffer", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { client_buffer = 1024 } })
      local c = sc:ehlo_client(p)
      local burst = {}
      for i = 1, 400 do burst[i] = (i % 2 == 1) and "NOOP\r\n" or "RSET\r\n" end -- 2400 bytes
      c:send(table.concat(burst) .. "AUTH PLAIN " .. plain("alice", "secret") .. "\r\n")
      for i = 1, 400 do
        local code, _, last = c:smtp()
        assert.equal(250, code, "reply " .. i .. ": " .. last)
      end
      assert.equal(235, (c:smtp()))
    end)

    it("a new EHLO ends the MAIL transaction (no-auth mode)", function()
      local sc = smtp_scene.new(finally)
      local m = sc:mock { name = "mx-a" }
      local p = sc:proxy({ domains = { ["*"] = smtp_scene.route(m) } }, { auth = { "none" } })
      local c = sc:ehlo_client(p)
      assert.equal(250, (c:smtp("MAIL FROM:<a@x>")))
      assert.equal(250, (c:smtp("EHLO again.example")))
      assert.equal(503, (c:smtp("RCPT TO:<b@y>")))
      assert.equal(250, (c:smtp("MAIL FROM:<a2@x>")))
      assert.equal(250, (c:smtp("RSET")))
      assert.equal(503, (c:smtp("RCPT TO:<b@y>")))
      assert.same({}, smtp_scene.policy_calls(p))
    end)

    it("RSET and QUIT with an argument get 501 (syntax error in parameters), NOOP ignores its argument", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { max_errors = 10 } })
      local c = sc:ehlo_client(p)
      assert.equal(250, (c:smtp("NOOP anything at all"))) -- RFC 5321 4.1.1.9: "NOOP" [ SP String ]
      assert.equal(501, (c:smtp("RSET now")))              -- 4.1.1.5: "RSET" CRLF
      assert.equal(501, (c:smtp("QUIT now")))              -- 4.1.1.10: "QUIT" CRLF
      assert.equal(221, (c:smtp("QUIT")))
    end)

    it("an idle client is dropped after timeout with 421", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { timeout = 1 } })
      local c = sc:ehlo_client(p)
      local code, _, last = c:smtp(nil, 5)
      assert.equal(421, code)
      assert.matches("^421 4%.%d+%.%d+ postern%.test ", last)
      assert.is_true(c:closed(3))
    end)

    it("max_login_attempts failed logins close the connection with 421", function()
      local sc = smtp_scene.new(finally)
      local _, p = one_backend(sc, { config = { max_login_attempts = 2 } })
      local c = sc:ehlo_client(p)
      local code = c:smtp("AUTH PLAIN " .. plain("alice", "wrong"))
      assert.equal(535, code)
      code = c:smtp("AUTH PLAIN " .. plain("alice", "wrong2"))
      assert.equal(535, code)
      local code2, _, last2 = c:smtp()
      assert.equal(421, code2)
      assert.matches("^421 4%.%d+%.%d+ postern%.test ", last2)
      assert.is_true(c:closed(3))
    end)
  end)

  describe("policy refusals", function()
    it("a policy that throws gives 454 4.7.0 in AUTH mode and 451 4.3.0 in the no-auth mode", function()
      local sc = smtp_scene.new(finally)
      local source = [[ return { authenticate = function(s) error("boom") end } ]]
      local p = sc:proxy_source(source)
      local c = sc:ehlo_client(p)
      local _, _, last = c:smtp("AUTH PLAIN " .. plain("alice", "secret"))
      assert.matches("^454 4%.7%.0 ", last)
      local p2 = sc:proxy_source(source, { auth = { "none" } })
      local c2 = sc:ehlo_client(p2)
      assert.equal(250, (c2:smtp("MAIL FROM:<a@x>")))
      _, _, last = c2:smtp("RCPT TO:<b@y>")
      assert.matches("^451 4%.3%.0 ", last)
    end)

    it("with proxy_pass_error_message = false the client gets a generic 535 5.7.8 text", function()
      local sc = smtp_scene.new(finally)
      local p = sc:proxy({ users = { ["*"] = "user alice is locked: see ticket 4711" } },
        { config = { proxy_pass_error_message = false } })
      local c = sc:ehlo_client(p)
      local _, _, last = c:smtp("AUTH PLAIN " .. plain("alice", "secret"))
      assert.matches("^535 5%.7%.8 ", last)
      assert.is_nil(last:find("4711", 1, true), last)
    end)

    it("an on_connect refusal is answered with 421 or 554 instead of the greeting, and the connection closed", function()
      local sc = smtp_scene.new(finally)
      local p = sc:proxy_source([[ return {
        on_connect = function(s) return false, "No service for you" end,
        authenticate = function(s) return nil, "no" end,
      } ]])
      local c = sc:client(p, { greeted = false })
      local code, _, last = c:smtp()
      assert.is_true(code == 421 or code == 554, last)
      assert.matches("No service for you", last)
      assert.is_true(c:closed(3))
    end)

    local function refusing(sc, route)
      local m = sc:mock { name = "mx-a" }
      local p = sc:proxy { users = { alice = smtp_scene.route(m), ["*"] = route } }
      return m, p
    end

    it("a refusal message gets 535 5.7.8 <message>, and the client may try again", function()
      local sc = smtp_scene.new(finally)
      local m, p = refusing(sc, "Invalid login or password")
      local c = sc:ehlo_client(p)
      local _, _, last = c:smtp("AUTH PLAIN " .. plain("mallory", "guess"))
      assert.equal("535 5.7.8 Invalid login or password", last)
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
      assert.equal("alice", m:logins()[1].user)
      assert.equal(1, #m:logins())
    end)

    it("a temporary refusal gets 454 4.7.0 <message>", function()
      local sc = smtp_scene.new(finally)
      local _, p = refusing(sc, { refusal = { message = "Try later", temporary = true } })
      local c = sc:ehlo_client(p)
      local _, _, last = c:smtp("AUTH PLAIN " .. plain("bob", "x"))
      assert.equal("454 4.7.0 Try later", last)
    end)

    it("a refusal code \"451 4.3.0\" is used as given", function()
      local sc = smtp_scene.new(finally)
      local _, p = refusing(sc, { refusal = { message = "Backend down", code = "451 4.3.0" } })
      local c = sc:ehlo_client(p)
      local _, _, last = c:smtp("AUTH PLAIN " .. plain("bob", "x"))
      assert.equal("451 4.3.0 Backend down", last)
    end)

    it("a refusal code 550 is honoured, with a 5.x.x enhanced code", function()
      local sc = smtp_scene.new(finally)
      local _, p = refusing(sc, { refusal = { message = "Account disabled", code = 550 } })
      local c = sc:ehlo_client(p)
      local _, _, last = c:smtp("AUTH PLAIN " .. plain("bob", "x"))
      assert.matches("^550 5%.%d+%.%d+ Account disabled$", last)
    end)
  end)
end)

describe("SMTP upstream login", function()
  it("logs in with AUTH PLAIN (EHLO <server_name> first) when the upstream offers PLAIN", function()
    local sc = smtp_scene.new(finally)
    local m, p = one_backend(sc)
    local c = sc:ehlo_client(p)
    assert.equal(334, (c:smtp("AUTH LOGIN " .. b64("alice"))))
    assert.equal(235, (c:smtp(b64("secret"))))
    assert.same({ "EHLO postern.test", "AUTH PLAIN " .. plain("alice", "secret") }, commands(m))
    assert.same({ { user = "alice", password = "secret", mechanism = "plain" } }, m:logins())
  end)

  it("logs in with AUTH LOGIN when the upstream offers only LOGIN", function()
    local sc = smtp_scene.new(finally)
    local m, p = one_backend(sc, nil, { name = "exchange", users = { alice = "secret" },
      ehlo = { "PIPELINING", "AUTH LOGIN" } })
    local c = sc:ehlo_client(p)
    assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
    assert.same({ "EHLO postern.test", "AUTH LOGIN " .. b64("alice"), b64("secret") }, commands(m))
    assert.same({ { user = "alice", password = "secret", mechanism = "login" } }, m:logins())
  end)

  it("logs in with the policy's user and password instead of the client's", function()
    local sc = smtp_scene.new(finally)
    local m, p = one_backend(sc, nil, { name = "mx-a" }, { user = "relay-user", password = "relay pass" })
    local c = sc:ehlo_client(p)
    assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
    assert.same({ { user = "relay-user", password = "relay pass", mechanism = "plain" } }, m:logins())
  end)

  it("passes the upstream's refusal (535) to the client, who may try again", function()
    local sc = smtp_scene.new(finally)
    local m, p = one_backend(sc)
    local c = sc:ehlo_client(p)
    local code, _, last = c:smtp("AUTH PLAIN " .. plain("alice", "wrong"))
    assert.equal(535, code)
    assert.equal("535 5.7.8 Error: authentication failed: authentication failure", last)
    assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
    assert.equal(2, #m:logins())
    assert.equal(2, #records(m, "CONNECT"))
  end)

  it("after 235 the client's MAIL, RCPT and DATA go to the upstream and the message arrives", function()
    local sc = smtp_scene.new(finally)
    local m, p = one_backend(sc)
    local c = sc:ehlo_client(p)
    assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
    local _, _, last = c:smtp("MAIL FROM:<alice@example.com>")
    assert.equal("250 2.1.0 Ok", last) -- the mock's own reply text
    assert.equal(250, (c:smtp("RCPT TO:<bob@example.org>")))
    assert.equal(354, (c:smtp("DATA")))
    local code = c:smtp("Subject: through postern\r\n\r\nHello Bob.\r\n..dot-stuffed line\r\n.")
    assert.equal(250, code)
    m:wait_for("^MESSAGE ")
    assert.same({ { bytes = 59, lines = 4, subject = "through postern" } }, m:messages())
    local cmds = commands(m)
    assert.same({ "MAIL FROM:<alice@example.com>", "RCPT TO:<bob@example.org>", "DATA" },
      { cmds[3], cmds[4], cmds[5] })
    assert.equal("221", (select(3, c:smtp("QUIT"))):sub(1, 3))
    assert.is_true(c:closed(3))
  end)

  it("PIPELINING after the hand-over: one send of MAIL, RCPT, RCPT, DATA gets its replies in order", function()
    local sc = smtp_scene.new(finally)
    local m, p = one_backend(sc)
    local c = sc:ehlo_client(p)
    assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
    c:send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n")
    assert.equal("250 2.1.0 Ok", select(3, c:smtp()))
    assert.equal("250 2.1.5 Ok", select(3, c:smtp()))
    assert.equal("250 2.1.5 Ok", select(3, c:smtp()))
    assert.equal(354, (c:smtp()))
    assert.equal(250, (c:smtp("Subject: piped\r\n\r\nx\r\n.")))
    local cmds = commands(m)
    assert.same({ "EHLO postern.test", "AUTH PLAIN " .. plain("alice", "secret"), "MAIL FROM:<a@x>",
      "RCPT TO:<b@y>", "RCPT TO:<c@y>", "DATA" }, cmds)
    assert.equal("piped", m:messages()[1].subject)
  end)

  it("PIPELINING across the hand-over: AUTH with MAIL, RCPT, DATA in one send loses and reorders nothing", function()
    local sc = smtp_scene.new(finally)
    local m, p = one_backend(sc)
    local c = sc:ehlo_client(p)
    c:send("AUTH PLAIN " .. plain("alice", "secret") .. "\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
    assert.equal(235, (c:smtp()))
    assert.equal(250, (c:smtp()))
    assert.equal(250, (c:smtp()))
    assert.equal(354, (c:smtp()))
    assert.equal(250, (c:smtp("Subject: in one go\r\n\r\nx\r\n.")))
    assert.same({ "EHLO postern.test", "AUTH PLAIN " .. plain("alice", "secret"), "MAIL FROM:<a@x>",
      "RCPT TO:<b@y>", "DATA" }, commands(m))
    assert.equal("in one go", m:messages()[1].subject)
  end)

  it("tries the next upstream of the list when the first greets with 554", function()
    local sc = smtp_scene.new(finally)
    local busy = sc:mock { name = "busy", greeting = "554 5.3.2 busy, go away" }
    local good = sc:mock { name = "good", users = { alice = "secret" } }
    local p = sc:proxy { users = { ["*"] = { smtp_scene.route(busy), smtp_scene.route(good) } } }
    local c = sc:ehlo_client(p)
    assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
    assert.equal(1, #records(busy, "CONNECT"))
    assert.same({}, records(busy, "AUTH"))
    assert.same({ { user = "alice", password = "secret", mechanism = "plain" } }, good:logins())
    assert.equal(250, send_message(c, "second one"))
    assert.equal("second one", good:messages()[1].subject)
  end)

  it("gives the client 454 4.7.0 when the upstream closes during the login", function()
    local sc = smtp_scene.new(finally)
    local m, p = one_backend(sc, nil, { name = "mx-a", close_on_login = true })
    local c = sc:ehlo_client(p)
    local code, _, last = c:smtp("AUTH PLAIN " .. plain("alice", "secret"))
    assert.equal(454, code)
    assert.matches("^454 4%.7%.0 ", last)
    assert.equal(250, (c:smtp("NOOP")))
    assert.equal(1, #records(m, "CONNECT"))
  end)

  it("gives the client 454 4.7.0 when the only upstream greets with 554", function()
    local sc = smtp_scene.new(finally)
    local _, p = one_backend(sc, nil, { name = "busy", greeting = "554 5.3.2 busy" })
    local c = sc:ehlo_client(p)
    local code, _, last = c:smtp("AUTH PLAIN " .. plain("alice", "secret"))
    assert.equal(454, code)
    assert.matches("^454 4%.7%.0 ", last)
  end)

  it("gives the client 454 4.7.0 when the upstream takes longer than timeout to answer AUTH", function()
    local sc = smtp_scene.new(finally)
    local _, p = one_backend(sc, { config = { timeout = 1 } }, { name = "slow", login_delay = 4 })
    local c = sc:ehlo_client(p)
    local t0 = testing.now()
    local code, _, last = c:smtp("AUTH PLAIN " .. plain("alice", "secret"), 5)
    assert.equal(454, code, last)
    assert.is_true(testing.now() - t0 < 3.5, "the upstream login was not timed out")
  end)

  it("relays a large 8-bit message unchanged after the hand-over", function()
    local sc = smtp_scene.new(finally)
    local m, p = one_backend(sc)
    local c = sc:ehlo_client(p)
    assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
    assert.equal(250, (c:smtp("MAIL FROM:<a@x> BODY=8BITMIME")))
    assert.equal(250, (c:smtp("RCPT TO:<b@y>")))
    assert.equal(354, (c:smtp("DATA")))
    local line = ("gr\195\188\195\159e "):rep(9) -- "grüße " x9: 72 bytes
    local body = {}
    for i = 1, 4000 do body[i] = line end
    c:send("Subject: big\r\n\r\n" .. table.concat(body, "\r\n") .. "\r\n.\r\n")
    assert.equal(250, (c:smtp(nil, 10)))
    assert.same({ { bytes = 14 + 2 + 4000 * (#line + 2), lines = 4002, subject = "big" } }, m:messages())
  end)

  describe("with XCLIENT", function()
    it("sends XCLIENT with ADDR, LOGIN, HELO and PROTO instead of AUTH when the upstream advertises it", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc, nil, { name = "mx-x", xclient = true, require_auth = true },
        { xclient = true })
      local c = sc:ehlo_client(p, { helo = "laptop.example" })
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
      local xc = records(m, "XCLIENT")
      assert.equal(1, #xc)
      assert.matches(" ADDR=127%.0%.0%.1", xc[1])
      assert.matches(" LOGIN=alice", xc[1])
      assert.matches(" HELO=laptop%.example", xc[1])
      assert.matches(" PROTO=ESMTP", xc[1])
      assert.same({}, records(m, "AUTH"))
      -- XCLIENT resets the upstream session: postern greets it again
      local cmds = commands(m)
      assert.equal("EHLO postern.test", cmds[1])
      assert.matches("^XCLIENT ", cmds[2])
      assert.matches("^EHLO ", cmds[3])
      assert.equal(250, send_message(c, "via xclient"))
      assert.equal("via xclient", m:messages()[1].subject)
    end)

    it("writes an IPv6 client address as ADDR=IPV6:<address>", function()
      local socket = require "socket"
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc, { config = { listen = {
        { protocol = "smtp", auth = { "plain" } },                                     -- (readiness check)
        { protocol = "smtp", auth = { "plain" }, address = "[::1]:" .. testing.free_port() },
      } } }, { name = "mx-x", xclient = true }, { xclient = true })
      local s6 = assert(socket.tcp6())
      s6:settimeout(5)
      assert(s6:connect("::1", p.ports[2]))
      sc:on_stop(function() s6:close() end)
      assert.matches("^220 ", (s6:receive("*l")))
      s6:send("EHLO v6.example\r\n")
      repeat local l = assert(s6:receive("*l")) until l:match("^250 ")
      s6:send("AUTH PLAIN " .. plain("alice", "secret") .. "\r\n")
      assert.matches("^235 ", (s6:receive("*l")))
      local xc = records(m, "XCLIENT")
      assert.equal(1, #xc)
      assert.matches(" ADDR=IPV6:::1 ", xc[1])
    end)

    it("xtext-encodes the LOGIN value: + and = become +2B and +3D", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc, nil, { name = "mx-x", xclient = true }, { xclient = true })
      local c = sc:ehlo_client(p)
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("a+b=c@example.com", "secret"))))
      local xc = records(m, "XCLIENT")
      assert.equal(1, #xc)
      assert.matches(" LOGIN=a%+2Bb%+3Dc@example%.com", xc[1])
    end)

    it("xtext-encodes spaces and non-ASCII bytes in LOGIN as +XX", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc, nil, { name = "mx-x", xclient = true }, { xclient = true })
      local c = sc:ehlo_client(p)
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("j\195\188rgen m", "secret"))))
      local xc = records(m, "XCLIENT")
      assert.equal(1, #xc)
      assert.matches(" LOGIN=j%+C3%+BCrgen%+20m", xc[1])
    end)

    it("sends the policy's upstream user as LOGIN when the policy gives one (as nginx's Auth-User)", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc, nil, { name = "mx-x", xclient = true },
        { xclient = true, user = "alice@corp.example" })
      local c = sc:ehlo_client(p)
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
      local xc = records(m, "XCLIENT")
      assert.equal(1, #xc)
      assert.matches(" LOGIN=alice@corp%.example", xc[1])
    end)

    it("falls back to AUTH when the upstream does not advertise XCLIENT", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc, nil, { name = "mx-a", users = { alice = "secret" } }, { xclient = true })
      local c = sc:ehlo_client(p)
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
      assert.same({}, records(m, "XCLIENT"))
      assert.same({ { user = "alice", password = "secret", mechanism = "plain" } }, m:logins())
    end)

    it("does not send XCLIENT unless the upstream table asks for it", function()
      local sc = smtp_scene.new(finally)
      local m, p = one_backend(sc, nil, { name = "mx-x", xclient = true, users = { alice = "secret" } })
      local c = sc:ehlo_client(p)
      assert.equal(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
      assert.same({}, records(m, "XCLIENT"))
      assert.equal(1, #m:logins())
    end)
  end)
end)

describe("SMTP without AUTH (auth = { \"none\" })", function()
  -- two MX-style backends chosen by the recipient's domain
  local function two_domains(sc, extra_a, mock_a, opts)
    local a = sc:mock(mock_a or { name = "mx-a" })
    local b = sc:mock { name = "mx-b" }
    local p = sc:proxy({ domains = {
      ["a.example"] = smtp_scene.route(a, extra_a),
      ["b.example"] = smtp_scene.route(b),
      ["blocked.example"] = { refusal = "Relay access denied" },
    } }, { auth = { "none" }, config = opts })
    return a, b, p
  end

  it("EHLO offers no AUTH", function()
    local sc = smtp_scene.new(finally)
    local _, _, p = two_domains(sc)
    local c = sc:client(p)
    local code, kw = c:smtp("EHLO client.example")
    assert.equal(250, code)
    for _, k in ipairs(kw) do assert.is_nil(k:match("^AUTH"), "AUTH offered: " .. k) end
    assert.equal("PIPELINING", kw[2])
  end)

  it("routes by recipient domain: the policy gets s.helo, s.mail_from and s.rcpt_to", function()
    local sc = smtp_scene.new(finally)
    local a, b, p = two_domains(sc)
    local c = sc:ehlo_client(p, { helo = "client.example" })
    assert.equal("250 2.1.0 Ok", select(3, c:smtp("MAIL FROM:<alice@sender.example>")))
    assert.equal(250, (c:smtp("RCPT TO:<bob@b.example>")))
    local calls = smtp_scene.policy_calls(p)
    assert.equal(1, #calls)
    assert.same({ mechanism = "none", user = "nil", authzid = "nil", helo = "client.example",
      mail_from = "alice@sender.example", rcpt = "bob@b.example", attempt = "1" }, calls[1])
    -- mx-b got EHLO, then the MAIL and RCPT replayed
    assert.same({ "EHLO postern.test", "MAIL FROM:<alice@sender.example>", "RCPT TO:<bob@b.example>" },
      commands(b))
    assert.same({}, records(a, "CONNECT"))
    -- then the client's DATA goes through
    assert.equal(354, (c:smtp("DATA")))
    assert.equal(250, (c:smtp("Subject: to b\r\n\r\nhi\r\n.")))
    assert.same({ { bytes = 21, lines = 3, subject = "to b" } }, b:messages())
  end)

  it("refused recipients are not failed logins: max_login_attempts does not end an MX transaction", function()
    local sc = smtp_scene.new(finally)
    local _, b, p = two_domains(sc, nil, nil, { max_login_attempts = 2 })
    local c = sc:ehlo_client(p)
    assert.equal(250, (c:smtp("MAIL FROM:<x@sender.example>")))
    for i = 1, 4 do
      local code, _, last = c:smtp("RCPT TO:<u" .. i .. "@blocked.example>")
      assert.equal(550, code, last)
    end
    assert.equal(250, (c:smtp("RCPT TO:<bob@b.example>")))
    assert.equal(354, (c:smtp("DATA")))
    assert.equal(250, (c:smtp("Subject: after refusals\r\n\r\nhi\r\n.")))
    assert.equal("after refusals", b:messages()[1].subject)
  end)

  it("checks MAIL FROM's SIZE= against the advertised SIZE (RFC 1870): 552 5.3.4 when larger, 501 when not a number", function()
    local sc = smtp_scene.new(finally)
    local _, b, p = two_domains(sc, nil, nil, { smtp_capabilities = { "PIPELINING", "SIZE 1000" } })
    local c = sc:ehlo_client(p)
    local code, _, last = c:smtp("MAIL FROM:<x@sender.example> SIZE=1001")
    assert.equal(552, code)
    assert.matches("^552 5%.3%.4 ", last)
    local code2, _, last2 = c:smtp("MAIL FROM:<x@sender.example> BODY=8BITMIME SIZE=lots")
    assert.equal(501, code2)
    assert.matches("^501 5%.5%.4 ", last2)
    assert.equal(250, (c:smtp("MAIL FROM:<x@sender.example> SIZE=1000 BODY=8BITMIME")))
    assert.equal(250, (c:smtp("RCPT TO:<bob@b.example>")))
    assert.same({ "EHLO postern.test", "MAIL FROM:<x@sender.example> SIZE=1000 BODY=8BITMIME",
      "RCPT TO:<bob@b.example>" }, commands(b))
  end)

  it("sends a recipient of the other domain to the other backend", function()
    local sc = smtp_scene.new(finally)
    local a, b, p = two_domains(sc)
    local c = sc:ehlo_client(p)
    assert.equal(250, (c:smtp("MAIL FROM:<x@sender.example>")))
    assert.equal(250, (c:smtp("RCPT TO:<carol@a.example>")))
    assert.same({ "EHLO postern.test", "MAIL FROM:<x@sender.example>", "RCPT TO:<carol@a.example>" },
      commands(a))
    assert.same({}, records(b, "CONNECT"))
  end)

  it("passes MAIL FROM parameters through in the replayed MAIL line", function()
    local sc = smtp_scene.new(finally)
    local a, _, p = two_domains(sc)
    local c = sc:ehlo_client(p)
    assert.equal(250, (c:smtp("MAIL FROM:<x@sender.example> SIZE=1234 BODY=8BITMIME")))
    assert.equal(250, (c:smtp("RCPT TO:<carol@a.example>")))
    assert.equal("x@sender.example", smtp_scene.policy_calls(p)[1].mail_from)
    assert.equal("MAIL FROM:<x@sender.example> SIZE=1234 BODY=8BITMIME", commands(a)[2])
  end)

  it("accepts the null reverse-path MAIL FROM:<> (bounces) and gives the policy an empty mail_from", function()
    local sc = smtp_scene.new(finally)
    local a, _, p = two_domains(sc)
    local c = sc:ehlo_client(p)
    assert.equal(250, (c:smtp("MAIL FROM:<>")))
    assert.equal(250, (c:smtp("RCPT TO:<carol@a.example>")))
    assert.equal("", smtp_scene.policy_calls(p)[1].mail_from)
    assert.equal("MAIL FROM:<>", commands(a)[2])
  end)

  it("refuses a recipient the policy refuses with 550 5.7.1, and the client may try another RCPT", function()
    local sc = smtp_scene.new(finally)
    local a, _, p = two_domains(sc)
    local c = sc:ehlo_client(p)
    assert.equal(250, (c:smtp("MAIL FROM:<x@sender.example>")))
    local _, _, last = c:smtp("RCPT TO:<eve@blocked.example>")
    assert.equal("550 5.7.1 Relay access denied", last)
    assert.equal(250, (c:smtp("RCPT TO:<carol@a.example>")))
    local calls = smtp_scene.policy_calls(p)
    assert.equal(2, #calls)
    assert.equal("carol@a.example", calls[2].rcpt)
    assert.equal("x@sender.example", calls[2].mail_from)
    assert.same({ "EHLO postern.test", "MAIL FROM:<x@sender.example>", "RCPT TO:<carol@a.example>" },
      commands(a))
    assert.equal(354, (c:smtp("DATA")))
    assert.equal(250, (c:smtp("Subject: second try\r\n\r\nhi\r\n.")))
    assert.equal("second try", a:messages()[1].subject)
  end)

  it("relays the upstream's own reply to the replayed RCPT", function()
    local sc = smtp_scene.new(finally)
    local a, _, p = two_domains(sc)
    local c = sc:ehlo_client(p)
    assert.equal(250, (c:smtp("MAIL FROM:<x@sender.example>")))
    assert.equal("250 2.1.5 Ok", select(3, c:smtp("RCPT TO:<carol@a.example>")))
    assert.equal(1, #records(a, "CONNECT"))
  end)

  it("RCPT before MAIL gets 503 and DATA before RCPT gets 503; MAIL without FROM:<> gets 501", function()
    local sc = smtp_scene.new(finally)
    local _, _, p = two_domains(sc)
    local c = sc:ehlo_client(p)
    assert.equal(503, (c:smtp("RCPT TO:<carol@a.example>")))
    assert.equal(501, (c:smtp("MAIL alice")))
    assert.equal(250, (c:smtp("MAIL FROM:<x@sender.example>")))
    assert.equal(503, (c:smtp("MAIL FROM:<y@sender.example>")))
    assert.equal(503, (c:smtp("DATA")))
    assert.same({}, smtp_scene.policy_calls(p))
  end)

  it("pipelined MAIL, RCPT, RCPT, DATA, the message and QUIT all arrive in order", function()
    local sc = smtp_scene.new(finally)
    local a, _, p = two_domains(sc)
    local c = sc:ehlo_client(p)
    c:send("MAIL FROM:<x@sender.example>\r\nRCPT TO:<carol@a.example>\r\nRCPT TO:<dave@a.example>\r\n" ..
      "DATA\r\nSubject: all at once\r\n\r\nline 1\r\n.\r\nQUIT\r\n")
    local got = {}
    for _ = 1, 6 do got[#got + 1] = (c:smtp()) end
    assert.same({ 250, 250, 250, 354, 250, 221 }, got)
    assert.is_true(c:closed(3))
    a:wait_for("^CLOSE ")
    assert.same({ "EHLO postern.test", "MAIL FROM:<x@sender.example>", "RCPT TO:<carol@a.example>",
      "RCPT TO:<dave@a.example>", "DATA", "QUIT" }, commands(a))
    assert.same({ { bytes = 32, lines = 3, subject = "all at once" } }, a:messages())
  end)

  it("pipelined RCPTs where the policy refuses the first: 550 for it, the next one routes, DATA goes through", function()
    local sc = smtp_scene.new(finally)
    local a, _, p = two_domains(sc)
    local c = sc:ehlo_client(p)
    c:send("MAIL FROM:<x@sender.example>\r\nRCPT TO:<eve@blocked.example>\r\nRCPT TO:<carol@a.example>\r\n" ..
      "DATA\r\n")
    local got = {}
    for _ = 1, 4 do got[#got + 1] = select(3, c:smtp()) end
    assert.same({ "250 2.1.0 Ok", "550 5.7.1 Relay access denied", "250 2.1.5 Ok" }, { got[1], got[2], got[3] })
    assert.matches("^354 ", got[4])
    assert.equal(250, (c:smtp("Subject: after a refusal\r\n\r\nx\r\n.")))
    assert.same({ "EHLO postern.test", "MAIL FROM:<x@sender.example>", "RCPT TO:<carol@a.example>", "DATA" },
      commands(a))
  end)

  it("a message larger than client_buffer pipelined without waiting for 354 arrives whole", function()
    local sc = smtp_scene.new(finally)
    local a, _, p = two_domains(sc)
    local c = sc:ehlo_client(p)
    local body = {}
    for i = 1, 3000 do body[i] = ("line %05d of a message sent with no wait for the 354 reply"):format(i) end
    c:send("MAIL FROM:<x@sender.example>\r\nRCPT TO:<carol@a.example>\r\nDATA\r\nSubject: blast\r\n\r\n" ..
      table.concat(body, "\r\n") .. "\r\n.\r\nQUIT\r\n")
    local got = {}
    for _ = 1, 5 do got[#got + 1] = (c:smtp(nil, 10)) end
    assert.same({ 250, 250, 354, 250, 221 }, got)
    assert.same({ { bytes = 16 + 2 + 3000 * (#body[1] + 2), lines = 3002, subject = "blast" } }, a:messages())
  end)

  it("with xclient = true, sends XCLIENT ADDR, HELO and PROTO (no LOGIN) before the replay", function()
    local sc = smtp_scene.new(finally)
    local a, _, p = two_domains(sc, { xclient = true }, { name = "mx-a", xclient = true })
    local c = sc:ehlo_client(p, { helo = "laptop.example" })
    assert.equal(250, (c:smtp("MAIL FROM:<x@sender.example>")))
    assert.equal(250, (c:smtp("RCPT TO:<carol@a.example>")))
    local xc = records(a, "XCLIENT")
    assert.equal(1, #xc)
    assert.matches(" ADDR=127%.0%.0%.1", xc[1])
    assert.matches(" HELO=laptop%.example", xc[1])
    assert.matches(" PROTO=ESMTP", xc[1])
    assert.is_nil(xc[1]:find("LOGIN=", 1, true), "LOGIN in no-auth mode: " .. xc[1])
    local cmds = commands(a)
    assert.equal("EHLO postern.test", cmds[1])
    assert.matches("^XCLIENT ", cmds[2])
    assert.same({ "EHLO laptop.example", "MAIL FROM:<x@sender.example>", "RCPT TO:<carol@a.example>" },
      { cmds[3], cmds[4], cmds[5] })
  end)

  it("with xclient = true after HELO, says PROTO=SMTP", function()
    local sc = smtp_scene.new(finally)
    local a, _, p = two_domains(sc, { xclient = true }, { name = "mx-a", xclient = true })
    local c = sc:ehlo_client(p, { helo_verb = "HELO", helo = "old.example" })
    assert.equal(250, (c:smtp("MAIL FROM:<x@sender.example>")))
    assert.equal(250, (c:smtp("RCPT TO:<carol@a.example>")))
    local xc = records(a, "XCLIENT")
    assert.equal(1, #xc)
    assert.matches(" HELO=old%.example", xc[1])
    assert.matches(" PROTO=SMTP", xc[1])
  end)
end)

describe("SMTP upstream replies that span several lines", function()
  local function expect(up, pattern) assert.matches(pattern, up:line()) end

  -- auth none: the client's first RCPT makes postern connect to a scripted
  -- upstream, which has accepted and greeted when this returns
  local function rcpt_through(sc, rcpt)
    local up = sc:raw_upstream()
    local p = sc:proxy({ domains = { ["*"] = smtp_scene.route(up.port) } }, { auth = { "none" } })
    local c = sc:ehlo_client(p)
    assert.equal(250, (c:smtp("MAIL FROM:<a@x.test>")))
    c:send("RCPT TO:<" .. rcpt .. ">\r\n")
    up:accept()
    up:send("220 up ESMTP\r\n")
    return c, up
  end

  it("passes every line of an upstream's refusal of the login to the client", function()
    local sc = smtp_scene.new(finally)
    local up = sc:raw_upstream()
    local p = sc:proxy { users = { ["*"] = smtp_scene.route(up.port) } }
    local c = sc:ehlo_client(p)
    c:send("AUTH PLAIN " .. smtp_scene.plain("alice", "secret") .. "\r\n")
    up:accept()
    up:send("220 up ESMTP\r\n")
    expect(up, "^EHLO ")
    up:send("250-up\r\n250 AUTH PLAIN\r\n")
    expect(up, "^AUTH PLAIN ")
    up:send("535-5.7.8 Your password has expired.\r\n535 5.7.8 Change it at https://example.test/pw\r\n")
    local code, texts = c:smtp()
    assert.equal(535, code)
    assert.same({ "5.7.8 Your password has expired.", "5.7.8 Change it at https://example.test/pw" }, texts)
    assert.equal(250, (c:smtp("NOOP")))   -- back before login, the session goes on
  end)

  it("falls back to HELO when the upstream does not know EHLO (RFC 5321 4.1.4)", function()
    local sc = smtp_scene.new(finally)
    local c, up = rcpt_through(sc, "b@y.test")
    expect(up, "^EHLO postern%.test$")
    up:send("502 5.5.1 Command not implemented\r\n")
    expect(up, "^HELO postern%.test$")
    up:send("250 old\r\n")
    expect(up, "^MAIL FROM:<a@x%.test>")
    up:send("250 Ok\r\n")
    expect(up, "^RCPT TO:<b@y%.test>")
    up:send("250 Ok\r\n")
    assert.equal(250, (c:smtp()))
  end)

  it("passes every line of the upstream's answer to the first RCPT (auth none)", function()
    local sc = smtp_scene.new(finally)
    local c, up = rcpt_through(sc, "gone@y.test")
    expect(up, "^EHLO ")
    up:send("250 up\r\n")
    expect(up, "^MAIL FROM:<a@x%.test>")
    up:send("250 2.1.0 Ok\r\n")
    expect(up, "^RCPT TO:<gone@y%.test>")
    up:send("550-5.1.1 The mailbox gone@y.test does not exist.\r\n550-5.1.1 Check the address\r\n550 5.1.1 and try again.\r\n")
    local code, texts = c:smtp()
    assert.equal(550, code)
    assert.same({ "5.1.1 The mailbox gone@y.test does not exist.", "5.1.1 Check the address",
                  "5.1.1 and try again." }, texts)
  end)
end)
