-- Specs of postern.testing's SMTP part, without the postern binary: the
-- mock SMTP backend talked to directly, and the client helper c:smtp.
local testing = require "postern.testing"
local mime = require "mime"

local function b64(s) return (mime.b64(s)) end

-- code and texts of one SMTP reply, as a table for assert.same
local function reply(c, cmd)
  local code, texts = c:smtp(cmd)
  return { code, texts }
end

-- the id of the newest connection the mock recorded (after its greeting was read)
local function last_id(m)
  local id
  for _, l in ipairs(m:lines()) do id = l:match("^CONNECT (%d+) ") or id end
  return id
end

local function connect(m)
  return testing.client { port = m.port }
end

describe("postern.testing SMTP", function()
  local DEFAULT_EHLO = { "PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES",
    "AUTH PLAIN LOGIN XOAUTH2" }

  describe("mock_smtp", function()
    local m

    setup(function()
      m = testing.mock_smtp { name = "mx-a", users = { alice = "secret", tok = "ya29.token" } }
    end)

    teardown(function()
      if m then m:stop() end
    end)

    local function greeted(ehlo)
      local c = connect(m)
      assert.equals(220, (c:smtp()))
      if ehlo ~= false then assert.equals(250, (c:smtp("EHLO client.example"))) end
      return c
    end

    it("greets with 220 and its name", function()
      local c = connect(m)
      local code, texts, last = c:smtp()
      assert.equals(220, code)
      assert.same({ "mx-a ESMTP mock" }, texts)
      assert.equals("220 mx-a ESMTP mock", last)
      c:close()
    end)

    it("EHLO lists the keywords; HELO gives one line", function()
      local c = greeted(false)
      local code, texts = c:smtp("EHLO client.example")
      assert.equals(250, code)
      local want = { "mx-a" }
      for _, k in ipairs(DEFAULT_EHLO) do want[#want + 1] = k end
      assert.same(want, texts)
      assert.same({ 250, { "mx-a" } }, reply(c, "HELO client.example"))
      assert.equals(501, (c:smtp("EHLO")))
      c:close()
    end)

    it("AUTH PLAIN with an initial response: good and bad passwords", function()
      local c = greeted()
      local code, texts = c:smtp("AUTH PLAIN " .. b64("\0alice\0wrong"))
      assert.equals(535, code)
      assert.matches("^5%.7%.8 ", texts[1])
      m:wait_for("^AUTH alice wrong plain$")
      assert.equals(235, (c:smtp("AUTH PLAIN " .. b64("\0alice\0secret"))))
      m:wait_for("^AUTH alice secret plain$")
      assert.equals(503, (c:smtp("AUTH PLAIN " .. b64("\0alice\0secret"))), "already authenticated")
      c:close()
    end)

    it("AUTH PLAIN without an initial response prompts with 334", function()
      local c = greeted()
      local _, _, last = c:smtp("AUTH PLAIN")
      assert.equals("334 ", last)
      assert.equals(235, (c:smtp(b64("alice\0alice\0secret"))))
      c:close()
      c = greeted()
      c:smtp("AUTH PLAIN")
      assert.equals(501, (c:smtp("*")), "* cancels")
      assert.equals(501, (c:smtp("AUTH PLAIN %%%%")), "bad base64")
      c:close()
    end)

    it("AUTH LOGIN: prompts, good and bad passwords, records every line", function()
      local c = greeted()
      local id = last_id(m)
      assert.same({ 334, { "VXNlcm5hbWU6" } }, reply(c, "AUTH LOGIN"))
      assert.same({ 334, { "UGFzc3dvcmQ6" } }, reply(c, b64("alice")))
      assert.equals(535, (c:smtp(b64("bad"))))
      assert.same({ 334, { "UGFzc3dvcmQ6" } }, reply(c, "AUTH LOGIN " .. b64("alice")))
      assert.equals(235, (c:smtp(b64("secret"))))
      m:wait_for("^AUTH alice bad login$")
      m:wait_for("^AUTH alice secret login$")
      m:wait_for("^" .. id .. " " .. b64("secret") .. "$")
      c:close()
    end)

    it("AUTH XOAUTH2 takes the token as the password", function()
      local c = greeted()
      assert.equals(535, (c:smtp("AUTH XOAUTH2 " .. b64("user=tok\1auth=Bearer nope\1\1"))))
      assert.equals(235, (c:smtp("AUTH XOAUTH2 " .. b64("user=tok\1auth=Bearer ya29.token\1\1"))))
      m:wait_for("^AUTH tok ya29%.token xoauth2$")
      c:close()
    end)

    it("AUTH needs EHLO first and an advertised mechanism", function()
      local c = greeted(false)
      assert.equals(503, (c:smtp("AUTH PLAIN " .. b64("\0alice\0secret"))))
      c:smtp("EHLO x")
      assert.equals(504, (c:smtp("AUTH CRAM-MD5")))
      assert.equals(504, (c:smtp("AUTH OAUTHBEARER")), "not in the default AUTH keyword")
      c:close()
    end)

    it("answers pipelined MAIL, RCPT and DATA in order and records the message", function()
      local c = greeted()
      c:send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
      assert.same({ 250, { "2.1.0 Ok" } }, reply(c))
      assert.same({ 250, { "2.1.5 Ok" } }, reply(c))
      assert.same({ 250, { "2.1.5 Ok" } }, reply(c))
      assert.equals(354, (c:smtp()))
      local body = "From: a@example.com\r\nSubject: Pipelined hello\r\nSubject: second\r\n\r\n"
        .. "..dot line\r\nSubject: not a header\r\nend\r\n"
      local code, texts = c:smtp(body .. ".")
      assert.equals(250, code)
      local n = tonumber(texts[1]:match("^2%.0%.0 Ok: queued as (%d+)$"))
      assert.is_truthy(n)
      -- unstuffed: "..dot line" counts as ".dot line"
      local bytes = #body - 1
      m:wait_for("^MESSAGE " .. bytes .. " 7 Pipelined hello$")
      local found
      for _, msg in ipairs(m:messages()) do
        if msg.subject == "Pipelined hello" then found = msg end
      end
      assert.same({ bytes = bytes, lines = 7, subject = "Pipelined hello" }, found)
      -- the transaction is over: a second message gets the next queue id
      c:send("MAIL FROM:<>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nno header at all\r\n.\r\n")
      c:smtp(); c:smtp(); c:smtp()
      code, texts = c:smtp()
      assert.equals(250, code)
      assert.equals(n + 1, tonumber(texts[1]:match("(%d+)$")))
      m:wait_for("^MESSAGE 18 1 $")
      c:close()
    end)

    it("keeps the envelope rules: sequence errors, RSET, NOOP, unknown commands", function()
      local c = greeted()
      assert.equals(503, (c:smtp("RCPT TO:<b@x>")))
      assert.equals(503, (c:smtp("DATA")))
      assert.equals(501, (c:smtp("MAIL <a@x>")))
      assert.equals(250, (c:smtp("MAIL FROM:<a@x>")))
      assert.equals(503, (c:smtp("MAIL FROM:<a@x>")))
      assert.equals(503, (c:smtp("DATA")), "no recipient yet")
      assert.same({ 250, { "2.0.0 Ok" } }, reply(c, "RSET"))
      assert.equals(503, (c:smtp("RCPT TO:<b@x>")), "RSET ended the transaction")
      assert.equals(250, (c:smtp("NOOP")))
      assert.same({ 502, { "5.5.2 Error: command not recognized" } }, reply(c, "VRFY alice"))
      assert.equals(502, (c:smtp("XCLIENT ADDR=1.2.3.4")), "XCLIENT is off by default")
      assert.equals(502, (c:smtp("STARTTLS")))
      c:close()
    end)

    it("MAIL needs EHLO first", function()
      local c = greeted(false)
      assert.equals(503, (c:smtp("MAIL FROM:<a@x>")))
      c:close()
    end)

    it("QUIT answers 221 and closes", function()
      local c = greeted()
      assert.same({ 221, { "2.0.0 Bye" } }, reply(c, "QUIT"))
      assert.is_true(c:closed(2))
      m:wait_for("^%d+ QUIT$")
    end)
  end)

  describe("mock_smtp options", function()
    local mocks = {}
    local function mock(o)
      local m = testing.mock_smtp(o)
      mocks[#mocks + 1] = m
      return m
    end
    after_each(function()
      for _, m in ipairs(mocks) do m:stop() end
      mocks = {}
    end)

    it("xclient: advertised, recorded, followed by a new 220, EHLO state forgotten", function()
      local m = mock { name = "mx-x", xclient = true }
      local c = connect(m)
      c:smtp()
      local _, texts = c:smtp("EHLO proxy.example")
      assert.equals("XCLIENT ADDR NAME LOGIN HELO PROTO", texts[#texts])
      local args = "ADDR=192.0.2.7 NAME=[UNAVAILABLE] HELO=client.example PROTO=ESMTP"
      local code, t2, last = c:smtp("XCLIENT " .. args)
      assert.equals(220, code)
      assert.equals("220 mx-x ESMTP mock", last)
      assert.same({ "mx-x ESMTP mock" }, t2)
      m:wait_for("^XCLIENT " .. args:gsub("[%.%[%]%-]", "%%%0") .. "$")
      assert.equals(503, (c:smtp("MAIL FROM:<a@x>")), "EHLO must be sent again")
      assert.equals(250, (c:smtp("EHLO proxy.example")))
      assert.equals(250, (c:smtp("MAIL FROM:<a@x>")))
      assert.equals(503, (c:smtp("XCLIENT ADDR=192.0.2.8")), "not inside a transaction")
      c:smtp("RSET")
      assert.equals(501, (c:smtp("XCLIENT FOO=bar")))
      assert.equals(501, (c:smtp("XCLIENT")))
      c:close()
      local n = 0
      for _, l in ipairs(m:lines()) do
        if l:match("^XCLIENT ") then n = n + 1 end
      end
      assert.equals(1, n, "only the accepted XCLIENT is recorded as such")
    end)

    it("require_auth: MAIL before AUTH or XCLIENT gets 530", function()
      local m = mock { require_auth = true, xclient = true }
      local c = connect(m)
      c:smtp(); c:smtp("EHLO x")
      assert.same({ 530, { "5.7.0 Authentication required" } }, reply(c, "MAIL FROM:<a@x>"))
      assert.equals(235, (c:smtp("AUTH PLAIN " .. b64("\0u\0p"))))
      assert.equals(250, (c:smtp("MAIL FROM:<a@x>")))
      c:close()
      c = connect(m)
      c:smtp(); c:smtp("EHLO x")
      assert.equals(530, (c:smtp("MAIL FROM:<a@x>")))
      assert.equals(220, (c:smtp("XCLIENT ADDR=192.0.2.1")))
      c:smtp("EHLO x")
      assert.equals(250, (c:smtp("MAIL FROM:<a@x>")))
      c:close()
    end)

    it("ehlo replaces the keywords and the AUTH mechanisms", function()
      local m = mock { name = "mx-e", ehlo = { "8BITMIME", "AUTH LOGIN OAUTHBEARER" } }
      local c = connect(m)
      c:smtp()
      assert.same({ 250, { "mx-e", "8BITMIME", "AUTH LOGIN OAUTHBEARER" } }, reply(c, "EHLO x"))
      assert.equals(504, (c:smtp("AUTH PLAIN " .. b64("\0u\0p"))))
      assert.equals(235, (c:smtp("AUTH OAUTHBEARER " .. b64("n,a=u=2Cv,\1auth=Bearer t\1\1"))))
      m:wait_for("^AUTH u,v t oauthbearer$")
      c:close()
      local m2 = mock { ehlo = {} }
      c = connect(m2)
      c:smtp()
      assert.same({ 250, { "mock" } }, reply(c, "EHLO x"))
      assert.equals(503, (c:smtp("AUTH PLAIN " .. b64("\0u\0p"))), "no AUTH keyword, no AUTH")
      c:close()
    end)

    it("refuse gives 535 5.7.8 with the text and records the attempt", function()
      local m = mock { refuse = "go away" }
      local c = connect(m)
      c:smtp(); c:smtp("EHLO x")
      assert.same({ 535, { "5.7.8 go away" } }, reply(c, "AUTH PLAIN " .. b64("\0alice\0secret")))
      m:wait_for("^AUTH alice secret plain$")
      c:close()
    end)

    it("accepts any login without users", function()
      local m = mock {}
      local c = connect(m)
      c:smtp(); c:smtp("EHLO x")
      assert.equals(235, (c:smtp("AUTH PLAIN " .. b64("\0anyone\0anything"))))
      c:close()
    end)

    it("close_after_greeting and close_on_login close the connection", function()
      local m = mock { close_after_greeting = true }
      local c = connect(m)
      assert.equals(220, (c:smtp()))
      assert.is_true(c:closed(2))
      local m2 = mock { close_on_login = true }
      c = connect(m2)
      c:smtp(); c:smtp("EHLO x")
      c:send("AUTH PLAIN " .. b64("\0alice\0secret") .. "\r\n")
      assert.is_true(c:closed(2))
      assert.equals("", c.buf)
    end)

    it("greeting: a non-220 greeting answers 503 to all but QUIT", function()
      local m = mock { greeting = "554 5.3.2 no service today" }
      local c = connect(m)
      assert.same({ 554, { "5.3.2 no service today" } }, reply(c))
      assert.equals(503, (c:smtp("EHLO x")))
      assert.equals(221, (c:smtp("QUIT")))
      assert.is_true(c:closed(2))
    end)

    it("delay postpones the greeting, login_delay the AUTH answer", function()
      local m = mock { delay = 0.5, login_delay = 0.4 }
      local t0 = testing.now()
      local c = connect(m)
      assert.has_error(function() c:smtp(nil, 0.2) end)
      assert.equals(220, (c:smtp(nil, 2)))
      assert.is_true(testing.now() - t0 >= 0.45)
      c:smtp("EHLO x")
      t0 = testing.now()
      assert.equals(235, (c:smtp("AUTH PLAIN " .. b64("\0a\0b"))))
      assert.is_true(testing.now() - t0 >= 0.35)
      c:close()
    end)

    it("is gone after stop", function()
      local m = mock {}
      local pid = m.pid
      assert.is_true(testing.alive(pid))
      local t0 = testing.now()
      m:stop()
      assert.is_true(testing.now() - t0 < 1, "SIGTERM should end the mock at once")
      assert.is_false(testing.alive(pid))
      assert.is_nil(io.open(m.record_path))
      assert.has_error(function() testing.client { port = m.port, timeout = 1 } end)
    end)
  end)
end)
