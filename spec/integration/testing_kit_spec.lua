-- Specs of postern.testing itself (no postern binary needed): the mock IMAP
-- backend, the line client and the config serializer.
local testing = require "postern.testing"
local mime = require "mime"

local function connect(m, opts)
  opts = opts or {}
  opts.port = m.port
  return testing.client(opts)
end

local function login(c, tag, user, pass)
  return (c:command(tag, ("LOGIN %s %s"):format(user, pass)))
end

describe("postern.testing", function()
  it("knows the repo root and the binary path", function()
    assert.is_truthy(io.open(testing.root .. "/lua/postern/testing/init.lua"))
    assert.matches("postern$", testing.bin)
  end)

  it("free_port gives a bindable port", function()
    local port = testing.free_port()
    assert.is_number(port)
    assert.is_true(port > 0)
    local s = assert(require("socket").bind("127.0.0.1", port))
    s:close()
  end)

  describe("mock_imap", function()
    local m

    setup(function()
      m = testing.mock_imap { name = "backend-a", users = { alice = "secret", ["bob"] = 'p"a\\ss' } }
    end)

    teardown(function()
      if m then m:stop() end
    end)

    it("greets with its capabilities and name", function()
      local c = connect(m)
      c:expect("^%* OK %[CAPABILITY IMAP4rev1 LITERAL%+ SASL%-IR ID AUTH=PLAIN%] backend%-a ready$")
      c:close()
    end)

    it("records LOGIN with quoted strings (escapes decoded)", function()
      local c = connect(m)
      c:line()
      local tagged = c:command("a1", [[LOGIN "bob" "p\"a\\ss"]])
      assert.equals("a1 OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] Logged in", tagged)
      m:wait_for('^AUTH bob p"a\\ss login$')
      m:wait_for('^%d+ a1 LOGIN "bob" "p\\"a\\\\ss"$')
      local found
      for _, l in ipairs(m:logins()) do
        if l.user == "bob" then found = l end
      end
      assert.same({ user = "bob", password = 'p"a\\ss', mechanism = "login" }, found)
      c:close()
    end)

    it("answers a synchronizing literal with + and records the password", function()
      local c = connect(m)
      c:line()
      c:send("a1 LOGIN alice {6}\r\n")
      c:expect("^%+ ")
      c:send("secret\r\n")
      c:expect("^a1 OK ")
      m:wait_for("^%d+ a1 LOGIN alice {6}secret$")
      m:wait_for("^AUTH alice secret login$")
      c:close()
    end)

    it("accepts a non-synchronizing literal without continuation", function()
      local c = connect(m)
      c:line()
      local tagged, untagged = c:command("a1", "LOGIN {5+}\r\nalice secret")
      assert.equals("a1 OK", tagged:sub(1, 5))
      assert.same({}, untagged)
      c:close()
    end)

    it("rejects a wrong password when users are given", function()
      local c = connect(m)
      c:line()
      assert.matches("^a1 NO %[AUTHENTICATIONFAILED%]", login(c, "a1", "alice", "wrong"))
      assert.matches("^a2 NO ", login(c, "a2", "mallory", "secret"))
      assert.matches("^a3 OK ", login(c, "a3", "alice", "secret"))
      c:close()
    end)

    it("supports AUTHENTICATE PLAIN with an initial response and with a continuation", function()
      local c = connect(m)
      c:line()
      local ir = mime.b64("\0alice\0secret")
      assert.matches("^a1 OK", (c:command("a1", "AUTHENTICATE PLAIN " .. ir)))
      c:close()
      c = connect(m)
      c:line()
      c:send("a1 AUTHENTICATE PLAIN\r\n")
      assert.equals("+ ", c:line())
      c:send(mime.b64("\0bob\0" .. 'p"a\\ss') .. "\r\n")
      c:expect("^a1 OK")
      m:wait_for('^AUTH bob p"a\\ss plain$')
      c:close()
    end)

    it("serves two concurrent clients", function()
      local c1, c2 = connect(m), connect(m)
      c1:expect("^%* OK"); c2:expect("^%* OK")
      c1:send("x1 NOOP\r\n")
      c2:send("y1 NOOP\r\n")
      c2:expect("^y1 OK")
      c1:expect("^x1 OK")
      -- a command split over several packets (partial lines)
      c1:send("x2 LOGIN al")
      testing.sleep(0.05)
      c1:send("ice sec")
      testing.sleep(0.05)
      c1:send("ret\r\n")
      c1:expect("^x2 OK")
      c2:close(); c1:close()
    end)

    it("LIST, SELECT and FETCH give the message", function()
      local c = connect(m)
      c:line()
      login(c, "a1", "alice", "secret")
      local tagged, untagged = c:command("a2", 'LIST "" "*"')
      assert.matches("^a2 OK", tagged)
      assert.same({ '* LIST (\\HasNoChildren) "/" INBOX', '* LIST (\\HasNoChildren) "/" "backend-a"' }, untagged)
      tagged, untagged = c:command("a3", "SELECT INBOX")
      assert.equals("a3 OK [READ-WRITE] SELECT completed", tagged)
      local all = table.concat(untagged, "\n")
      assert.matches("%* 1 EXISTS", all)
      assert.matches("%* 0 RECENT", all)
      assert.matches("%[UIDVALIDITY 1%]", all)
      assert.matches("%[UIDNEXT 2%]", all)
      tagged, untagged = c:command("a4", "FETCH 1 (UID RFC822.SIZE BODY.PEEK[])")
      assert.matches("^a4 OK", tagged)
      assert.equals(1, #untagged)
      local size, lit, msg = untagged[1]:match("^%* 1 FETCH %(UID 1 RFC822%.SIZE (%d+) BODY%[%] {(%d+)}\r\n(.*)%)$")
      assert.is_truthy(size)
      assert.equals(size, lit)
      assert.equals(tonumber(size), #msg)
      assert.matches("Subject: Hello from mock\r\n", msg, 1, true)
      assert.matches("\r\n\r\nmock%-body from backend%-a\r\n$", msg)
      tagged, untagged = c:command("a5", "UID FETCH 1 (RFC822)")
      assert.matches("^a5 OK", tagged)
      assert.matches("^%* 1 FETCH %(UID 1 RFC822 {%d+}\r\n", untagged[1])
      tagged, untagged = c:command("a6", "STATUS INBOX (MESSAGES UIDNEXT)")
      assert.matches("^a6 OK", tagged)
      assert.equals('* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2)', untagged[1])
      assert.matches("^a7 BAD", (c:command("a7", "FROB")))
      tagged, untagged = c:command("a8", "LOGOUT")
      assert.matches("^a8 OK", tagged)
      assert.matches("^%* BYE", untagged[1])
      assert.is_true(c:closed(2))
    end)

    it("XECHO returns exactly n bytes", function()
      local c = connect(m)
      c:line()
      login(c, "a1", "alice", "secret")
      c:send("a2 XECHO 100000\r\n")
      c:expect("^%* XECHO {100000}$")
      local data = c:read_bytes(100000)
      assert.equals(100000, #data)
      assert.is_nil(data:find("[^x]"))
      assert.equals("", c:line())       -- the CRLF that ends the response
      c:expect("^a2 OK")
      c:close()
    end)

    it("XSINK accepts a big literal", function()
      local c = connect(m)
      c:line()
      login(c, "a1", "alice", "secret")
      local n = 300000
      c:send("a2 XSINK {" .. n .. "+}\r\n" .. string.rep("y", n) .. "\r\n")
      c:expect("^a2 OK received " .. n .. "$")
      m:wait_for("a2 XSINK {" .. n .. "%+}<" .. n .. " bytes>")
      c:close()
    end)

    it("records CONNECT and CLOSE", function()
      local c = connect(m)
      c:line()
      c:close()
      local id = m:wait_for("^CONNECT %d+"):match("^CONNECT (%d+)")
      m:wait_for("^CLOSE %d+$")
      assert.is_truthy(id)
    end)
  end)

  describe("mock_imap options", function()
    local mocks = {}
    local function mock(o)
      local m = testing.mock_imap(o)
      mocks[#mocks + 1] = m
      return m
    end
    after_each(function()
      for _, m in ipairs(mocks) do m:stop() end
      mocks = {}
    end)

    it("refuse gives NO with the text", function()
      local m = mock { refuse = "go away" }
      local c = connect(m)
      c:line()
      assert.equals("a1 NO [AUTHENTICATIONFAILED] go away", login(c, "a1", "alice", "secret"))
      m:wait_for("^AUTH alice secret login$")
      c:close()
    end)

    it("accepts any login without users", function()
      local m = mock {}
      local c = connect(m)
      c:line()
      assert.matches("^a1 OK", login(c, "a1", "anyone", "anything"))
      c:close()
    end)

    it("close_after_greeting closes the connection", function()
      local m = mock { close_after_greeting = true }
      local c = connect(m)
      c:expect("^%* OK")
      assert.is_true(c:closed(2))
    end)

    it("an open connection is not reported closed", function()
      local m = mock {}
      local c = connect(m)
      c:expect("^%* OK")
      assert.is_false(c:closed(0.2))
      c:close()
    end)

    it("close_on_login closes without a reply", function()
      local m = mock { close_on_login = true }
      local c = connect(m)
      c:line()
      c:send("a1 LOGIN alice secret\r\n")
      assert.is_true(c:closed(2))
      assert.equals("", c.buf)
    end)

    it("delay postpones the greeting", function()
      local m = mock { delay = 0.5 }
      local t0 = testing.now()
      local c = connect(m)
      assert.has_error(function() c:line(0.2) end)
      c:expect("^%* OK", 2)
      assert.is_true(testing.now() - t0 >= 0.45)
      c:close()
    end)

    it("login_delay postpones the login answer", function()
      local m = mock { login_delay = 0.4 }
      local c = connect(m)
      c:line()
      local t0 = testing.now()
      login(c, "a1", "alice", "secret")
      assert.is_true(testing.now() - t0 >= 0.35)
      c:close()
    end)

    it("greeting_capabilities = false and login_untagged", function()
      local m = mock { greeting_capabilities = false, name = "b2", capabilities = "IMAP4rev1 X-TEST",
        login_untagged = { "* CAPABILITY IMAP4rev1 IDLE", "* OK [ALERT] hi" }, login_ok_text = "welcome" }
      local c = connect(m)
      assert.equals("* OK b2 ready", c:line())
      local _, untagged = c:command("a1", "CAPABILITY")
      assert.same({ "* CAPABILITY IMAP4rev1 X-TEST" }, untagged)
      local tagged
      tagged, untagged = c:command("a2", "LOGIN u p")
      assert.equals("a2 OK welcome", tagged)
      assert.same({ "* CAPABILITY IMAP4rev1 IDLE", "* OK [ALERT] hi" }, untagged)
      c:close()
    end)

    it("greeting overrides the whole line", function()
      local m = mock { greeting = "* BYE go away" }
      local c = connect(m)
      assert.equals("* BYE go away", c:line())
      assert.is_true(c:closed(2))
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

  describe("client", function()
    it("rejects a line ending in a bare LF", function()
      local server = assert(require("socket").bind("127.0.0.1", 0))
      local _, port = server:getsockname()
      local c = testing.client { port = port }
      local s = server:accept()
      s:send("good\r\nbad\n")
      assert.equals("good", c:line())
      assert.has_error(function() c:line() end)
      s:close(); server:close(); c:close()
    end)

    it("binds a chosen source address", function()
      local server = assert(require("socket").bind("127.0.0.1", 0))
      local _, port = server:getsockname()
      local c = testing.client { port = port, bind = "127.0.0.2" }
      local s = server:accept()
      assert.equals("127.0.0.2", (s:getpeername()))
      s:close(); server:close(); c:close()
    end)
  end)

  -- start/stop/check_config against a stand-in for the postern binary:
  -- a sh script (it is the process that gets the signals) running a LuaJIT
  -- listener that honours -t/-c, the config's listen list and error_log.
  describe("start and check_config with a stand-in binary", function()
    local dir, real_bin
    local FAKE_LUA = [==[
      local socket = require "socket"
      local mode, conf_path = arg[1], arg[2]
      local conf = dofile(conf_path)
      if mode == "check" then
        if conf.bad then print("proxy.conf.lua: bad: unknown key"); os.exit(1) end
        print("configuration ok"); os.exit(0)
      end
      local log = assert(io.open(conf.error_log, "a"))
      log:write("[info] policy=", tostring(conf.policy), " FOO=", tostring(os.getenv("FOO")), "\n")
      if os.getenv("FAKE_DIE") then log:write("[emerg] dying on purpose\n"); log:close(); os.exit(3) end
      if os.getenv("FAKE_ALERT") then log:write("[alert] something bad\n") end
      log:flush()
      local servers = {}
      for _, l in ipairs(conf.listen) do
        local h, p = l.address:match("^(.*):(%d+)$")
        servers[#servers + 1] = assert(socket.bind(h, tonumber(p)))
      end
      while true do
        local r = socket.select(servers, nil, 1)
        for _, s in ipairs(r) do local c = s:accept(); if c then c:close() end end
      end
    ]==]

    setup(function()
      dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. dir) == 0)
      local f = assert(io.open(dir .. "/fake.lua", "w")); f:write(FAKE_LUA); f:close()
      f = assert(io.open(dir .. "/postern", "w"))
      f:write(([[#!/bin/sh
if [ "$1" = "-t" ]; then exec luajit %s/fake.lua check "$3"; fi
luajit %s/fake.lua run "$2" &
child=$!
trap 'kill $child; wait $child; echo "[notice] exiting"; exit ${FAKE_EXIT:-0}' TERM
wait $child
]]):format(dir, dir))
      f:close()
      assert(os.execute("chmod +x " .. dir .. "/postern") == 0)
      real_bin = testing.bin
      testing.bin = dir .. "/postern"
    end)

    teardown(function()
      testing.bin = real_bin
      if dir then os.execute("rm -rf " .. dir) end
    end)

    it("starts, waits for the listener, passes env, stops with status 0", function()
      local p = testing.start { policy_source = "return {}", env = { FOO = "bar baz" } }
      assert.is_number(p.port)
      assert.same({ p.port }, p.ports)
      assert.is_true(p:alive())
      p:wait_log("FOO=bar baz")
      local conf = assert(loadfile(p.dir .. "/proxy.conf.lua"))()
      assert.equals("127.0.0.1:" .. p.port, conf.listen[1].address)
      assert.equals("imap", conf.listen[1].protocol)
      assert.equals(p.dir .. "/policy.lua", conf.policy)
      assert.equals(p.log_path, conf.error_log)
      assert.equals("postern.test", conf.server_name)
      local c = testing.client { port = p.port }
      c:close()
      local pid = p.pid
      assert.equals(0, p:stop())
      assert.is_false(testing.alive(pid))
      assert.is_nil(io.open(p.dir .. "/proxy.conf.lua"))
    end)

    it("merges config and fills listener addresses; policy paths become absolute", function()
      local p = testing.start { policy = "scripts/x.lua",
        config = { timeout = 3, listen = { { protocol = "imap" }, { protocol = "pop3" } } } }
      assert.equals(2, #p.ports)
      assert.are_not.equal(p.ports[1], p.ports[2])
      local conf = assert(loadfile(p.dir .. "/proxy.conf.lua"))()
      assert.equals(3, conf.timeout)
      assert.equals("debug", conf.log_level)
      assert.equals("pop3", conf.listen[2].protocol)
      assert.equals("127.0.0.1:" .. p.ports[2], conf.listen[2].address)
      assert.matches("^/.*/scripts/x%.lua$", conf.policy)
      local c = testing.client { port = p.ports[2] }
      c:close()
      p:stop()
    end)

    it("start fails with the log when the process dies", function()
      local ok, err = pcall(testing.start, { policy_source = "return {}", env = { FAKE_DIE = 1 } })
      assert.is_false(ok)
      assert.matches("dying on purpose", err)
      local left = err:match("%(dir (/tmp/postern%-test%.%w+)%)")
      assert.is_truthy(left)
      os.execute("rm -rf " .. left)
    end)

    it("stop is strict about [alert] lines", function()
      local p = testing.start { policy_source = "return {}", env = { FAKE_ALERT = 1 } }
      local ok, err = pcall(p.stop, p)
      assert.is_false(ok)
      assert.matches("%[alert%] something bad", err)
      os.execute("rm -rf " .. p.dir)   -- kept on failure for debugging
    end)

    it("stop fails on a non-zero exit status", function()
      local p = testing.start { policy_source = "return {}", env = { FAKE_EXIT = 3 } }
      local ok, err = pcall(p.stop, p)
      assert.is_false(ok)
      assert.matches("status 3", err)
      os.execute("rm -rf " .. p.dir)
    end)

    it("check_config runs -t", function()
      local ok, out = testing.check_config { listen = {} }
      assert.is_true(ok)
      assert.matches("configuration ok", out)
      ok, out = testing.check_config { bad = true, listen = {} }
      assert.is_false(ok)
      assert.matches("unknown key", out)
    end)
  end)

  describe("config serializer", function()
    it("round-trips through loadfile", function()
      local conf = {
        server_name = "mail.example.com",
        timeout = 60, ratio = 0.25, neg = -3,
        proxy_pass_error_message = true, off = false,
        odd = "quote \" backslash \\ newline \n cr \r nul \0 end",
        ["key with space"] = "x", ["end"] = 1,
        tls = { certificates = { ["mail.example.org"] = { certificate = "a.pem", key = "a.key" } } },
        listen = {
          { address = "127.0.0.1:1143", protocol = "imap", starttls = "on" },
          { address = "127.0.0.1:1110", protocol = "pop3", auth = { "plain", "apop" } },
        },
        empty = {},
      }
      local dir = os.tmpname()
      testing.write_config(dir, conf)
      local chunk = assert(loadfile(dir))
      os.remove(dir)
      assert.same(conf, chunk())
    end)

    it("refuses what it cannot write", function()
      assert.has_error(function() testing.serialize { f = print } end)
      local t = {}
      t.self = t
      assert.has_error(function() testing.serialize(t) end)
    end)
  end)
end)
