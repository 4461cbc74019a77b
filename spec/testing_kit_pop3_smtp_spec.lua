-- Specs of postern.testing's POP3 and SMTP parts, without the postern binary:
-- the mock POP3 and SMTP backends talked to directly, and the client helpers
-- c:pop3, c:pop3_multi and c:smtp.
local testing = require "postern.testing"
local md5 = require "postern.md5"
local mime = require "mime"
local socket = require "socket"

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

-- a one-connection raw server for the client-helper specs
local function raw_pair()
  local server = assert(socket.bind("127.0.0.1", 0))
  local _, port = server:getsockname()
  local c = testing.client { port = port }
  local s = server:accept()
  server:close()
  s:setoption("tcp-nodelay", true)
  return c, s
end

describe("postern.testing POP3", function()
  describe("mock_pop3", function()
    local m

    setup(function()
      m = testing.mock_pop3 { name = "pop-a", users = { alice = "secret", tok = "ya29.token" } }
    end)

    teardown(function()
      if m then m:stop() end
    end)

    local function logged_in()
      local c = connect(m)
      c:pop3()
      assert.matches("^%+OK", c:pop3("USER alice"))
      assert.equals("+OK Logged in.", c:pop3("PASS secret"))
      return c
    end

    it("greets with its name and no APOP timestamp by default", function()
      local c = connect(m)
      assert.equals("+OK pop-a POP3 mock ready", c:pop3())
      c:close()
    end)

    it("USER/PASS: a good password logs in and is recorded, every line too", function()
      local c = connect(m)
      c:pop3()
      local id = last_id(m)
      assert.equals("+OK", c:pop3("USER alice"))
      assert.equals("+OK Logged in.", c:pop3("PASS secret"))
      m:wait_for("^AUTH alice secret user$")
      m:wait_for("^" .. id .. " USER alice$")
      m:wait_for("^" .. id .. " PASS secret$")
      c:close()
    end)

    it("USER/PASS: a bad password or unknown user gets -ERR [AUTH]; then a good one works", function()
      local c = connect(m)
      c:pop3()
      c:pop3("USER alice")
      assert.equals("-ERR [AUTH] Authentication failed.", c:pop3("PASS wrong"))
      assert.matches("^%-ERR", c:pop3("PASS secret"), "USER is forgotten after a failure")
      c:pop3("USER mallory")
      assert.matches("^%-ERR %[AUTH%]", c:pop3("PASS secret"))
      c:pop3("USER alice")
      assert.matches("^%+OK", c:pop3("PASS secret"))
      m:wait_for("^AUTH alice wrong user$")
      c:close()
    end)

    it("refuses mailbox commands before login", function()
      local c = connect(m)
      c:pop3()
      assert.matches("^%-ERR", c:pop3("STAT"))
      assert.matches("^%-ERR", c:pop3("RETR 1"))
      assert.equals("+OK", c:pop3("NOOP"))
      assert.matches("^%-ERR", c:pop3("APOP alice 0123456789abcdef0123456789abcdef"),
        "APOP is off without the apop option")
      c:close()
    end)

    it("CAPA lists the default capabilities, before and after login", function()
      local c = connect(m)
      c:pop3()
      local want = { "TOP", "UIDL", "USER", "SASL PLAIN LOGIN XOAUTH2", "PIPELINING" }
      local status, lines = c:pop3_multi("CAPA")
      assert.matches("^%+OK", status)
      assert.same(want, lines)
      c:pop3("USER alice"); c:pop3("PASS secret")
      status, lines = c:pop3_multi("CAPA")
      assert.same(want, lines)
      c:close()
    end)

    it("bare AUTH lists the mechanisms", function()
      local c = connect(m)
      c:pop3()
      local status, lines = c:pop3_multi("AUTH")
      assert.equals("+OK", status)
      assert.same({ "PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER" }, lines)
      c:close()
    end)

    it("AUTH PLAIN with an initial response, and with a + prompt", function()
      local c = connect(m)
      c:pop3()
      assert.equals("+OK Logged in.", c:pop3("AUTH PLAIN " .. b64("\0alice\0secret")))
      m:wait_for("^AUTH alice secret plain$")
      c:close()
      c = connect(m)
      c:pop3()
      assert.equals("+ ", c:pop3("AUTH PLAIN"))
      assert.matches("^%-ERR %[AUTH%]", c:pop3(b64("admin\0alice\0nope")))
      m:wait_for("^AUTH alice nope plain$")
      assert.matches("^%+ ", c:pop3("AUTH PLAIN"))
      assert.matches("^%-ERR", c:pop3("*"), "* cancels")
      assert.matches("^%-ERR", c:pop3("AUTH PLAIN !!!notbase64"))
      c:close()
    end)

    it("AUTH LOGIN asks for user name and password", function()
      local c = connect(m)
      c:pop3()
      assert.equals("+ VXNlcm5hbWU6", c:pop3("AUTH LOGIN"))
      assert.equals("+ UGFzc3dvcmQ6", c:pop3(b64("alice")))
      assert.equals("+OK Logged in.", c:pop3(b64("secret")))
      m:wait_for("^AUTH alice secret login$")
      c:close()
    end)

    it("AUTH XOAUTH2 and OAUTHBEARER take the token as the password", function()
      local c = connect(m)
      c:pop3()
      assert.equals("+OK Logged in.", c:pop3("AUTH XOAUTH2 " .. b64("user=tok\1auth=Bearer ya29.token\1\1")))
      m:wait_for("^AUTH tok ya29%.token xoauth2$")
      c:close()
      c = connect(m)
      c:pop3()
      assert.matches("^%-ERR %[AUTH%]", c:pop3("AUTH XOAUTH2 " .. b64("user=tok\1auth=Bearer bad\1\1")))
      assert.equals("+ ", c:pop3("AUTH OAUTHBEARER"))
      assert.equals("+OK Logged in.", c:pop3(b64("n,a=tok,\1host=x\1auth=Bearer ya29.token\1\1")))
      m:wait_for("^AUTH tok ya29%.token oauthbearer$")
      c:close()
    end)

    it("STAT, LIST and UIDL describe the one message", function()
      local c = logged_in()
      local status = c:pop3("STAT")
      local n, size = status:match("^%+OK (%d+) (%d+)$")
      assert.equals("1", n)
      local _, lines = c:pop3_multi("LIST")
      assert.same({ "1 " .. size }, lines)
      assert.equals("+OK 1 " .. size, c:pop3("LIST 1"))
      assert.matches("^%-ERR", c:pop3("LIST 2"))
      _, lines = c:pop3_multi("UIDL")
      assert.same({ "1 uid-1" }, lines)
      assert.equals("+OK 1 uid-1", c:pop3("UIDL 1"))
      c:close()
    end)

    it("RETR returns the message, its size matching LIST", function()
      local c = logged_in()
      local size = tonumber(c:pop3("LIST 1"):match("(%d+)$"))
      local status, lines = c:pop3_multi("RETR 1")
      assert.equals("+OK " .. size .. " octets", status)
      local msg = table.concat(lines, "\r\n") .. "\r\n"
      assert.equals(size, #msg)
      assert.matches("\r\nSubject: Hello from mock pop3\r\n", msg, 1, true)
      assert.matches("\r\n\r\npop3%-body from pop%-a\r\n", msg)
      assert.equals(".a line that starts with a dot", lines[#lines])
      c:close()
    end)

    it("dot-stuffs a line that starts with a dot on the wire", function()
      local c = logged_in()
      c:pop3("RETR 1")
      local raw = {}
      repeat raw[#raw + 1] = c:line() until raw[#raw] == "."
      assert.equals("..a line that starts with a dot", raw[#raw - 1])
      c:close()
    end)

    it("TOP gives the header and the first lines of the body", function()
      local c = logged_in()
      local _, lines = c:pop3_multi("TOP 1 0")
      assert.equals("", lines[#lines])
      assert.equals("Subject: Hello from mock pop3", lines[3])
      local _, lines1 = c:pop3_multi("TOP 1 1")
      assert.equals(#lines + 1, #lines1)
      assert.equals("pop3-body from pop-a", lines1[#lines1])
      assert.matches("^%-ERR", c:pop3("TOP 1 x"))
      c:close()
    end)

    it("DELE marks, RSET unmarks; unknown commands get -ERR", function()
      local c = logged_in()
      assert.equals("+OK message 1 deleted", c:pop3("DELE 1"))
      assert.matches("^%-ERR", c:pop3("DELE 1"))
      assert.matches("^%-ERR", c:pop3("RETR 1"))
      assert.equals("+OK 0 0", c:pop3("STAT"))
      assert.equals("+OK", c:pop3("RSET"))
      assert.matches("^%+OK 1 %d+$", c:pop3("STAT"))
      assert.equals("+OK", c:pop3("NOOP"))
      assert.equals("-ERR Unknown command", c:pop3("FROB"))
      c:close()
    end)

    it("answers pipelined commands in order", function()
      local c = connect(m)
      c:pop3()
      c:send("USER alice\r\nPASS secret\r\nSTAT\r\nLIST 1\r\nNOOP\r\nQUIT\r\n")
      assert.equals("+OK", c:pop3())
      assert.equals("+OK Logged in.", c:pop3())
      assert.matches("^%+OK 1 %d+$", c:pop3())
      assert.matches("^%+OK 1 %d+$", c:pop3())
      assert.equals("+OK", c:pop3())
      assert.matches("^%+OK pop%-a POP3 mock signing off", c:pop3())
      assert.is_true(c:closed(2))
    end)

    it("QUIT answers +OK and closes, and the close is recorded", function()
      local c = connect(m)
      c:pop3()
      local id = last_id(m)
      assert.matches("^%+OK", c:pop3("QUIT"))
      assert.is_true(c:closed(2))
      m:wait_for("^" .. id .. " QUIT$")
      m:wait_for("^CLOSE " .. id .. "$")
    end)
  end)

  describe("mock_pop3 options", function()
    local mocks = {}
    local function mock(o)
      local m = testing.mock_pop3(o)
      mocks[#mocks + 1] = m
      return m
    end
    after_each(function()
      for _, m in ipairs(mocks) do m:stop() end
      mocks = {}
    end)

    it("apop: the greeting has a timestamp and APOP checks md5(timestamp .. password)", function()
      local m = mock { name = "pa", apop = true, users = { alice = "secret" } }
      local c = connect(m)
      local ts = c:pop3():match("^%+OK pa POP3 mock ready (<%d+%.%d+@pa>)$")
      assert.is_truthy(ts)
      local wrong = md5.hex(ts .. "nope")
      assert.matches("^%-ERR %[AUTH%]", c:pop3("APOP alice " .. wrong))
      local digest = md5.hex(ts .. "secret")
      assert.equals("+OK Logged in.", c:pop3("APOP alice " .. digest))
      m:wait_for("^AUTH alice " .. digest .. " apop$")
      m:wait_for("^AUTH alice " .. wrong .. " apop$")
      c:close()
      -- each connection gets its own timestamp
      local c2 = connect(m)
      local ts2 = c2:pop3():match("(<.->)")
      assert.not_equals(ts, ts2)
      assert.matches("^%-ERR", c2:pop3("APOP alice " .. digest), "a digest for another timestamp")
      c2:close()
    end)

    it("accepts any login without users", function()
      local m = mock {}
      local c = connect(m)
      c:pop3()
      c:pop3("USER anyone")
      assert.equals("+OK Logged in.", c:pop3("PASS anything"))
      c:close()
    end)

    it("refuse gives -ERR [AUTH] with the text and records the attempt", function()
      local m = mock { refuse = "go away" }
      local c = connect(m)
      c:pop3()
      c:pop3("USER alice")
      assert.equals("-ERR [AUTH] go away", c:pop3("PASS secret"))
      assert.equals("-ERR [AUTH] go away", c:pop3("AUTH PLAIN " .. b64("\0alice\0secret")))
      m:wait_for("^AUTH alice secret plain$")
      c:close()
    end)

    it("capa and sasl replace the capability list and the accepted mechanisms", function()
      local m = mock { capa = { "USER", "SASL PLAIN" }, sasl = "PLAIN" }
      local c = connect(m)
      c:pop3()
      local _, lines = c:pop3_multi("CAPA")
      assert.same({ "USER", "SASL PLAIN" }, lines)
      _, lines = c:pop3_multi("AUTH")
      assert.same({ "PLAIN" }, lines)
      assert.matches("^%-ERR", c:pop3("AUTH LOGIN"))
      assert.matches("^%-ERR", c:pop3("AUTH XOAUTH2 " .. b64("user=a\1auth=Bearer t\1\1")))
      assert.matches("^%+OK", c:pop3("AUTH PLAIN " .. b64("\0a\0b")))
      c:close()
    end)

    it("big adds message 2 of exactly N bytes", function()
      local n = 300000
      local m = mock { big = n }
      local c = connect(m)
      c:pop3(); c:pop3("USER a"); c:pop3("PASS b")
      local _, list = c:pop3_multi("LIST")
      assert.equals(2, #list)
      assert.equals("2 " .. n, list[2])
      local status, lines = c:pop3_multi("RETR 2")
      assert.equals("+OK " .. n .. " octets", status)
      local total, dotted = 0, 0
      for _, l in ipairs(lines) do
        total = total + #l + 2
        if l:sub(1, 1) == "." then dotted = dotted + 1 end
      end
      assert.equals(n, total)
      assert.is_true(dotted > 0, "some lines need dot-stuffing")
      assert.matches("^%+OK", c:pop3("NOOP"), "the stream is in step after the body")
      c:close()
    end)

    it("close_after_greeting closes the connection", function()
      local m = mock { close_after_greeting = true }
      local c = connect(m)
      assert.matches("^%+OK", c:pop3())
      assert.is_true(c:closed(2))
    end)

    it("close_on_login closes without a reply", function()
      local m = mock { close_on_login = true }
      local c = connect(m)
      c:pop3()
      assert.equals("+OK", c:pop3("USER alice"))
      c:send("PASS secret\r\n")
      assert.is_true(c:closed(2))
      assert.equals("", c.buf)
    end)

    it("greeting overrides the line; an -ERR greeting closes", function()
      local m = mock { greeting = "-ERR go away" }
      local c = connect(m)
      assert.equals("-ERR go away", c:pop3())
      assert.is_true(c:closed(2))
      local m2 = mock { greeting = "+OK hello there" }
      c = connect(m2)
      assert.equals("+OK hello there", c:pop3())
      assert.is_false(c:closed(0.2))
      c:close()
    end)

    it("delay postpones the greeting, login_delay the login answer", function()
      local m = mock { delay = 0.5, login_delay = 0.4 }
      local t0 = testing.now()
      local c = connect(m)
      assert.has_error(function() c:pop3(nil, 0.2) end)
      c:pop3(nil, 2)
      assert.is_true(testing.now() - t0 >= 0.45)
      c:pop3("USER a")
      t0 = testing.now()
      assert.matches("^%+OK", c:pop3("PASS b"))
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

  describe("client helpers", function()
    it("pop3_multi unstuffs dots and finds the end across packet boundaries", function()
      local c, s = raw_pair()
      local reply = "+OK here\r\nline 1\r\n..dotted\r\n\r\nlast\r\n.\r\n+OK next\r\n"
      -- one byte per packet, so the terminator is split every possible way
      local co = coroutine.wrap(function()
        for i = 1, #reply do
          s:send(reply:sub(i, i))
          coroutine.yield()
        end
      end)
      for _ = 1, #reply do co() end
      local status, lines = c:pop3_multi()
      assert.equals("+OK here", status)
      assert.same({ "line 1", ".dotted", "", "last" }, lines)
      assert.equals("+OK next", c:pop3())
      s:close(); c:close()
    end)

    it("pop3_multi: empty body, -ERR, and a connection closed mid-body", function()
      local c, s = raw_pair()
      s:send("+OK empty\r\n.\r\n-ERR nope\r\n+OK cut\r\npartial\r\n")
      local status, lines = c:pop3_multi("CMD")
      assert.equals("+OK empty", status)
      assert.same({}, lines)
      status, lines = c:pop3_multi()
      assert.equals("-ERR nope", status)
      assert.is_nil(lines)
      assert.equals("CMD\r\n", s:receive(5))
      s:close()
      assert.has_error(function() c:pop3_multi() end)
      c:close()
    end)

    it("smtp reads a multi-line reply and rejects a malformed one", function()
      local c, s = raw_pair()
      s:send("250-first\r\n250-second\r\n250 last\r\n220\r\n354 go\r\nhello\r\n")
      local code, texts, last = c:smtp("EHLO x")
      assert.equals(250, code)
      assert.same({ "first", "second", "last" }, texts)
      assert.equals("250 last", last)
      assert.equals("EHLO x\r\n", s:receive(8))
      code, texts = c:smtp()
      assert.equals(220, code)
      assert.same({ "" }, texts)
      assert.equals(354, (c:smtp()))
      assert.has_error(function() c:smtp() end)
      s:close(); c:close()
    end)
  end)
end)

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
