-- Specs of postern.testing's POP3 part, without the postern binary: the
-- mock POP3 backend talked to directly, and the client helpers c:pop3 and
-- c:pop3_multi.
local testing = require "postern.testing"
local md5 = require "postern.md5"
local mime = require "mime"
local socket = require "socket"

local function b64(s) return (mime.b64(s)) end

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
      assert.matches("^%+OK", status)
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
