-- Upstream login (issue item 5, first half): once the policy has chosen an
-- upstream, postern connects to it, reads its greeting, logs in with the
-- client's credentials (or the policy's override) and hands the
-- upstream's tagged reply to the client under the client's own tag.
--
-- Every test checks both sides: what the client got, and what the mock
-- backend received (its record file).
local testing = require "postern.testing"
local scene = require "helpers.scene"
local mime = require "mime"

-- a listening port whose accept queue is full: connecting to it hangs
-- (the SYN is dropped) until the connecting side gives up
local function black_hole()
  local socket = require "socket"
  local srv = assert(socket.bind("127.0.0.1", 0, 0))
  local _, port = srv:getsockname()
  local filler = socket.tcp()
  filler:settimeout(1)
  assert(filler:connect("127.0.0.1", port))
  return tonumber(port), function() filler:close(); srv:close() end
end

local function plain_b64(user, pass)
  return (mime.b64("\0" .. user .. "\0" .. pass))
end

describe("upstream login", function()
  describe("with LOGIN", function()
    it("sends the client's credentials as quoted strings under the client's tag", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      assert.equal("x.17 OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] Logged in",
        (c:command("x.17", "LOGIN alice secret")))
      assert.same({ 'x.17 LOGIN "alice" "secret"' }, scene.commands(m))
      assert.same({ { user = "alice", password = "secret", mechanism = "login" } }, m:logins())
    end)

    it("escapes \" and \\ in the quoted strings it sends", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      assert.matches("^a1 OK ", (c:command("a1", [[LOGIN "o\"neil" "se\"cr\\et"]])))
      assert.same({ [[a1 LOGIN "o\"neil" "se\"cr\\et"]] }, scene.commands(m))
      assert.same({ user = 'o"neil', password = 'se"cr\\et', mechanism = "login" }, m:logins()[1])
    end)

    it("sends a UTF-8 password as a non-synchronizing literal {n+} when the upstream has LITERAL+", function()
      local pw = "p\195\164ssw\195\182rd" -- "pässwörd", 10 bytes
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", capabilities = "IMAP4rev1 LITERAL+ ID AUTH=PLAIN" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      c:send("a1 LOGIN alice {" .. #pw .. "+}\r\n" .. pw .. "\r\n")
      c:expect("^a1 OK ")
      local cmds = scene.commands(m)
      assert.equal(1, #cmds)
      local user_part, pass_part = cmds[1]:match("^a1 LOGIN (%S+) (.*)$")
      assert.is_true(user_part == '"alice"' or user_part == "{5+}alice", "user sent as " .. tostring(user_part))
      assert.equal("{10+}" .. pw, pass_part)
      assert.same({ user = "alice", password = pw, mechanism = "login" }, m:logins()[1])
    end)

    it("sends a UTF-8 password as a synchronizing literal {n} without LITERAL+, and the login succeeds", function()
      local pw = "p\195\164ssw\195\182rd"
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", capabilities = "IMAP4rev1 ID AUTH=PLAIN" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      c:send("a1 LOGIN alice {" .. #pw .. "+}\r\n" .. pw .. "\r\n")
      c:expect("^a1 OK ")
      local cmds = scene.commands(m)
      assert.equal(1, #cmds)
      local user_part, pass_part = cmds[1]:match("^a1 LOGIN (%S+) (.*)$")
      assert.is_true(user_part == '"alice"' or user_part == "{5}alice", "user sent as " .. tostring(user_part))
      assert.equal("{10}" .. pw, pass_part)
      assert.same({ user = "alice", password = pw, mechanism = "login" }, m:logins()[1])
      -- the session is usable afterwards: the continuation did not leak to the client
      local tagged, untagged = c:command("a2", 'LIST "" *')
      assert.equal("a2 OK LIST completed", tagged)
      assert.equal('* LIST (\\HasNoChildren) "/" INBOX', untagged[1])
    end)

    it("sends a UTF-8 user name as a literal too, and the login succeeds", function()
      local user = "j\195\182rg" -- "jörg", 5 bytes
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", capabilities = "IMAP4rev1 ID AUTH=PLAIN" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      c:send("a1 LOGIN {5+}\r\n" .. user .. " secret\r\n")
      c:expect("^a1 OK ")
      local cmds = scene.commands(m)
      assert.equal(1, #cmds)
      local rest = cmds[1]:match("^a1 LOGIN {5}" .. user .. " (.*)$")
      assert.is_true(rest == '"secret"' or rest == "{6}secret", "sent " .. cmds[1])
      assert.same({ user = user, password = "secret", mechanism = "login" }, m:logins()[1])
    end)

    it("logs in upstream with LOGIN after the client used AUTHENTICATE PLAIN", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      assert.matches("^a1 OK ", (c:command("a1", "AUTHENTICATE PLAIN " .. plain_b64("alice", "secret"))))
      assert.same({ 'a1 LOGIN "alice" "secret"' }, scene.commands(m))
    end)

    it("logs in with the policy's upstream user and password instead of the client's", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend" }
      local p = sc:proxy { ["*"] = sc.route(m, { user = "master*alice", password = "pr0xy pass" }) }
      local c = sc:client(p)
      assert.matches("^a1 OK ", (c:command("a1", "LOGIN alice secret")))
      assert.same({ 'a1 LOGIN "master*alice" "pr0xy pass"' }, scene.commands(m))
      assert.same({ { user = "master*alice", password = "pr0xy pass", mechanism = "login" } }, m:logins())
      for _, l in ipairs(m:lines()) do
        assert.is_nil(l:find("secret", 1, true), "the client's password reached the upstream: " .. l)
      end
    end)
  end)

  describe("with a policy password holding CR LF", function()
    it("treats it as an invalid policy result and sends nothing upstream", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend" }
      local evil = "x\r\nz2 DELETE INBOX"
      local p = sc:proxy { ["*"] = sc.route(m, { password = evil }) }
      local c = sc:client(p)
      assert.matches("^a1 NO %[UNAVAILABLE%]", (c:command("a1", "LOGIN alice secret")))
      for _, l in ipairs(m:lines()) do
        assert.is_nil(l:match("^%d+ "), "a command reached the upstream: " .. l)
      end
      assert.truthy(p:wait_log("must not contain CR, LF or NUL"))
    end)
  end)

  describe("with AUTHENTICATE PLAIN", function()
    it("uses one AUTHENTICATE PLAIN line when the upstream has LOGINDISABLED, AUTH=PLAIN and SASL-IR", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", capabilities = "IMAP4rev1 LOGINDISABLED AUTH=PLAIN SASL-IR" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      assert.matches("^a1 OK ", (c:command("a1", "LOGIN alice secret")))
      assert.same({ "a1 AUTHENTICATE PLAIN " .. plain_b64("alice", "secret") }, scene.commands(m))
      assert.same({ { user = "alice", password = "secret", mechanism = "plain" } }, m:logins())
    end)

    it("waits for the + continuation before sending the response when the upstream lacks SASL-IR", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", capabilities = "IMAP4rev1 LOGINDISABLED AUTH=PLAIN" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      assert.matches("^a1 OK ", (c:command("a1", "LOGIN alice secret")))
      assert.same({ "a1 AUTHENTICATE PLAIN", plain_b64("alice", "secret") }, scene.commands(m))
      assert.same({ { user = "alice", password = "secret", mechanism = "plain" } }, m:logins())
    end)

    it("answers NO [UNAVAILABLE] and sends no credentials when the upstream has LOGINDISABLED without AUTH=PLAIN",
      function()
        local sc = scene.new(finally)
        local m = sc:mock { name = "backend", capabilities = "IMAP4rev1 LOGINDISABLED AUTH=GSSAPI" }
        local p = sc:proxy { ["*"] = sc.route(m) }
        local c = sc:client(p)
        assert.matches("^a1 NO %[UNAVAILABLE%]", (c:command("a1", "LOGIN alice secret")))
        assert.same({}, scene.commands(m))
        assert.same({}, m:logins())
        assert.equal("a2 OK NOOP completed", (c:command("a2", "NOOP")))
      end)
  end)

  describe("reading the greeting", function()
    it("asks CAPABILITY first when the greeting has no [CAPABILITY] code", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", greeting_capabilities = false }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      assert.matches("^a1 OK ", (c:command("a1", "LOGIN alice secret")))
      local cmds = scene.commands(m)
      assert.equal(2, #cmds, table.concat(cmds, "\n"))
      assert.matches("^%S+ CAPABILITY$", cmds[1])
      assert.equal('a1 LOGIN "alice" "secret"', cmds[2])
    end)

    it("learns LOGINDISABLED from the CAPABILITY reply when the greeting has no code", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", greeting_capabilities = false,
        capabilities = "IMAP4rev1 LOGINDISABLED AUTH=PLAIN" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      assert.matches("^a1 OK ", (c:command("a1", "LOGIN alice secret")))
      local cmds = scene.commands(m)
      assert.matches("^%S+ CAPABILITY$", cmds[1])
      assert.same({ "a1 AUTHENTICATE PLAIN", plain_b64("alice", "secret") }, { cmds[2], cmds[3] })
    end)

    it("answers the client with a tagged OK when the upstream greets with PREAUTH, without sending a login", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", greeting = "* PREAUTH [CAPABILITY IMAP4rev1 IDLE] welcome, alice" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      assert.equal("a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in", (c:command("a1", "LOGIN alice secret")))
      assert.same({}, m:logins())
      local tagged, untagged = c:command("a2", 'LIST "" *')
      assert.equal("a2 OK LIST completed", tagged)
      assert.equal(2, #untagged)
      assert.same({ 'a2 LIST "" *' }, scene.commands(m))
    end)

    it("moves on to the next upstream of the list when the first greets with BYE", function()
      local sc = scene.new(finally)
      local busy = sc:mock { name = "busy", greeting = "* BYE too busy, go away" }
      local good = sc:mock { name = "good" }
      local p = sc:proxy { ["*"] = { sc.route(busy), sc.route(good) } }
      local c = sc:client(p)
      assert.matches("^a1 OK ", (c:command("a1", "LOGIN alice secret")))
      assert.same({}, scene.commands(busy))
      assert.equal(1, #scene.records(busy, "CONNECT"))
      assert.same({ 'a1 LOGIN "alice" "secret"' }, scene.commands(good))
      local _, untagged = c:command("a2", 'LIST "" *')
      assert.equal('* LIST (\\HasNoChildren) "/" "good"', untagged[2])
    end)
  end)

  describe("passing on the upstream's reply", function()
    it("passes the upstream's [CAPABILITY ...] response code and text under the client's tag", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", login_ok_text = "[CAPABILITY IMAP4rev1 IDLE UIDPLUS MOVE] Hello alice" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      local tagged, untagged = c:command("Tag9", "LOGIN alice secret")
      assert.equal("Tag9 OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS MOVE] Hello alice", tagged)
      assert.same({}, untagged)
    end)

    it("passes every untagged line the upstream sends before its tagged OK, in order", function()
      local lines = {
        "* CAPABILITY IMAP4rev1 IDLE UIDPLUS",
        "* OK [ALERT] Your mailbox is 95% full",
        "* NO [ALERT] Your password expires in 3 days",
      }
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", login_untagged = lines, login_ok_text = "Logged in" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      local tagged, untagged = c:command("a1", "LOGIN alice secret")
      assert.equal("a1 OK Logged in", tagged)
      assert.same(lines, untagged)
    end)

    it("forwards commands pipelined behind LOGIN in the same packet once the login is done", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      c:send('a1 LOGIN alice secret\r\na2 LIST "" *\r\na3 NOOP\r\n')
      c:expect("^a1 OK ")
      assert.equal('* LIST (\\HasNoChildren) "/" INBOX', c:line())
      assert.equal('* LIST (\\HasNoChildren) "/" "backend"', c:line())
      assert.equal("a2 OK LIST completed", c:line())
      assert.equal("a3 OK NOOP completed", c:line())
      assert.same({ 'a1 LOGIN "alice" "secret"', 'a2 LIST "" *', "a3 NOOP" }, scene.commands(m))
    end)
  end)

  describe("with an upstream scripted byte by byte", function()
    it("reads a greeting that arrives in pieces", function()
      local sc = scene.new(finally)
      local up = sc:raw_upstream()
      local p = sc:proxy { ["*"] = sc.route(up.port) }
      local c = sc:client(p)
      c:send("a1 LOGIN alice secret\r\n")
      up:accept()
      up:send("* OK [CAPABILITY IMAP4")
      testing.sleep(0.1)
      up:send("rev1 LITERAL+] hel")
      testing.sleep(0.1)
      up:send("lo\r")
      testing.sleep(0.1)
      up:send("\n")
      assert.equal('a1 LOGIN "alice" "secret"', up:line())
      up:send("a1 OK Logged in\r\n")
      assert.equal("a1 OK Logged in", c:line())
    end)

    it("passes on data the upstream sends right behind its tagged OK, in the same packet", function()
      local sc = scene.new(finally)
      local up = sc:raw_upstream()
      local p = sc:proxy { ["*"] = sc.route(up.port) }
      local c = sc:client(p)
      c:send("a1 LOGIN alice secret\r\n")
      up:accept()
      up:send("* OK [CAPABILITY IMAP4rev1] hi\r\n")
      assert.equal('a1 LOGIN "alice" "secret"', up:line())
      up:send("* CAPABILITY IMAP4rev1 IDLE\r\na1 OK Logged in\r\n* 3 EXISTS\r\n* OK [ALERT] hello\r\n")
      assert.equal("* CAPABILITY IMAP4rev1 IDLE", c:line())
      assert.equal("a1 OK Logged in", c:line())
      assert.equal("* 3 EXISTS", c:line())
      assert.equal("* OK [ALERT] hello", c:line())
      c:send("a2 NOOP\r\n")
      assert.equal("a2 NOOP", up:line())
    end)

    it("waits for each + before sending the next piece of a synchronizing literal LOGIN", function()
      local sc = scene.new(finally)
      local up = sc:raw_upstream()
      local p = sc:proxy { ["*"] = sc.route(up.port) }
      local c = sc:client(p)
      local pw = "caf\195\169"
      c:send("a1 LOGIN alice {" .. #pw .. "+}\r\n" .. pw .. "\r\n")
      up:accept()
      up:send("* OK [CAPABILITY IMAP4rev1] hi\r\n")
      local first = up:line()
      assert.is_true(first == 'a1 LOGIN "alice" {5}' or first == "a1 LOGIN {5}", "got " .. first)
      -- nothing more may come before the continuation
      up.s:settimeout(0.3)
      local early, err = up.s:receive(1)
      assert.is_nil(early)
      assert.equal("timeout", err)
      up.s:settimeout(5)
      up:send("+ go on\r\n")
      if first == "a1 LOGIN {5}" then
        assert.equal("alice {5}", up:line())
        up:send("+ go on\r\n")
      end
      assert.equal(pw, up:line())
      up:send("a1 OK welcome\r\n")
      assert.equal("a1 OK welcome", c:line())
    end)

    it("answers NO [UNAVAILABLE] and stays bounded when the upstream greets with a line over 64 KiB", function()
      local sc = scene.new(finally)
      local up = sc:raw_upstream()
      local p = sc:proxy { ["*"] = sc.route(up.port) }
      local c = sc:client(p)
      c:send("a1 LOGIN alice secret\r\n")
      up:accept()
      up.s:settimeout(0.2)
      up.s:send("* OK " .. string.rep("x", 200000))
      assert.matches("^a1 NO %[UNAVAILABLE%]", c:line())
      assert.is_true(up:closed(2), "postern kept the upstream connection")
    end)

    it("answers NO [UNAVAILABLE] when the upstream floods untagged lines during the login", function()
      local sc = scene.new(finally)
      local up = sc:raw_upstream()
      local p = sc:proxy { ["*"] = sc.route(up.port) }
      local c = sc:client(p)
      c:send("a1 LOGIN alice secret\r\n")
      up:accept()
      up:send("* OK [CAPABILITY IMAP4rev1] hi\r\n")
      assert.equal('a1 LOGIN "alice" "secret"', up:line())
      up.s:settimeout(0.2)
      up.s:send(string.rep("* OK spam spam spam spam spam spam spam\r\n", 5000))
      assert.matches("^a1 NO %[UNAVAILABLE%]", c:line())
      assert.equal("a2 OK NOOP completed", (c:command("a2", "NOOP")))
    end)

    it("answers NO [UNAVAILABLE], without passing the BYE on, when the upstream says BYE and closes during the login",
      function()
        local sc = scene.new(finally)
        local up = sc:raw_upstream()
        local p = sc:proxy { ["*"] = sc.route(up.port) }
        local c = sc:client(p)
        c:send("a1 LOGIN alice secret\r\n")
        up:accept()
        up:send("* OK [CAPABILITY IMAP4rev1] hi\r\n")
        assert.equal('a1 LOGIN "alice" "secret"', up:line())
        up:send("* BYE shutting down\r\n")
        up.s:close()
        up.s = nil
        assert.matches("^a1 NO %[UNAVAILABLE%]", c:line())
        assert.equal("a2 OK NOOP completed", (c:command("a2", "NOOP")))
      end)

    it("gives the client a well-formed NO when the upstream's refusal has no text", function()
      local sc = scene.new(finally)
      local up = sc:raw_upstream()
      local p = sc:proxy { ["*"] = sc.route(up.port) }
      local c = sc:client(p)
      c:send("a1 LOGIN alice secret\r\n")
      up:accept()
      up:send("* OK [CAPABILITY IMAP4rev1] hi\r\n")
      assert.equal('a1 LOGIN "alice" "secret"', up:line())
      up:send("a1 NO\r\n")
      local tagged = c:line()
      assert.matches("^a1 NO %S", tagged)
      assert.is_nil(tagged:find("NO NO", 1, true), "got " .. tagged)
    end)

    it("answers NO [UNAVAILABLE] when the upstream sends a continuation nobody asked for", function()
      local sc = scene.new(finally)
      local up = sc:raw_upstream()
      local p = sc:proxy { ["*"] = sc.route(up.port) }
      local c = sc:client(p)
      c:send("a1 LOGIN alice secret\r\n")
      up:accept()
      up:send("* OK [CAPABILITY IMAP4rev1] hi\r\n")
      assert.equal('a1 LOGIN "alice" "secret"', up:line())
      up:send("+ what?\r\n")
      assert.matches("^a1 NO %[UNAVAILABLE%]", c:line())
    end)
  end)

  describe("client input that arrives during the upstream login", function()
    it("forwards a 100 KB upload pipelined right behind LOGIN, larger than the pre-login buffer", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", login_delay = 0.3 }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      c:send("a1 LOGIN alice secret\r\na2 XSINK {100000+}\r\n" .. string.rep("y", 100000) .. "\r\na3 NOOP\r\n")
      c:expect("^a1 OK ", 10)
      assert.equal("a2 OK received 100000", c:line(10))
      assert.equal("a3 OK NOOP completed", c:line(10))
      assert.same({ 'a1 LOGIN "alice" "secret"', "a2 XSINK {100000+}<100000 bytes>", "a3 NOOP" }, scene.commands(m))
    end)

    it("forwards commands the client sends while the upstream login is still going on", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", login_delay = 0.5 }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      c:send("a1 LOGIN alice secret\r\n")
      m:wait_for("^AUTH alice secret")
      c:send("a2 NOOP\r\n")
      c:expect("^a1 OK ")
      assert.equal("a2 OK NOOP completed", c:line())
      assert.same({ 'a1 LOGIN "alice" "secret"', "a2 NOOP" }, scene.commands(m))
    end)
  end)

  describe("when the upstream refuses or fails", function()
    it("passes a refused login to the client as NO with the upstream's text, and allows a retry", function()
      local sc = scene.new(finally)
      local refusing = sc:mock { name = "refusing", refuse = "nope" }
      local good = sc:mock { name = "good" }
      local p = sc:proxy { alice = sc.route(refusing), bob = sc.route(good) }
      local c = sc:client(p)
      local tagged = c:command("a1", "LOGIN alice secret")
      assert.matches("^a1 NO .*nope$", tagged)
      assert.equal("a1 NO [AUTHENTICATIONFAILED] nope", tagged)
      assert.same({ { user = "alice", password = "secret", mechanism = "login" } }, refusing:logins())
      -- same connection, second attempt, other credentials: nothing stale is sent
      assert.matches("^a2 OK ", (c:command("a2", "LOGIN bob hunter2")))
      assert.same({ 'a2 LOGIN "bob" "hunter2"' }, scene.commands(good))
      assert.same({ { user = "bob", password = "hunter2", mechanism = "login" } }, good:logins())
    end)

    it("does not try the next upstream of the list when the first refuses the login", function()
      local sc = scene.new(finally)
      local refusing = sc:mock { name = "refusing", refuse = "wrong password" }
      local good = sc:mock { name = "good" }
      local p = sc:proxy { ["*"] = { sc.route(refusing), sc.route(good) } }
      local c = sc:client(p)
      assert.equal("a1 NO [AUTHENTICATIONFAILED] wrong password", (c:command("a1", "LOGIN alice secret")))
      assert.same({}, good:lines())
    end)

    it("answers commands pipelined behind a refused login itself, as before login", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", refuse = "nope" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      c:send('a1 LOGIN alice secret\r\na2 LIST "" *\r\na3 NOOP\r\n')
      assert.equal("a1 NO [AUTHENTICATIONFAILED] nope", c:line())
      assert.matches("^a2 BAD ", c:line())
      assert.equal("a3 OK NOOP completed", c:line())
      assert.same({ 'a1 LOGIN "alice" "secret"' }, scene.commands(m))
    end)

    it("answers NO [UNAVAILABLE] when the only upstream greets with BYE", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "busy", greeting = "* BYE too busy" }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      assert.matches("^a1 NO %[UNAVAILABLE%]", (c:command("a1", "LOGIN alice secret")))
      assert.same({}, scene.commands(m))
    end)

    it("moves on to the next upstream of the list when nobody listens on the first", function()
      local sc = scene.new(finally)
      local good = sc:mock { name = "good" }
      local p = sc:proxy { ["*"] = { sc.route(testing.free_port()), sc.route(good) } }
      local c = sc:client(p)
      assert.matches("^a1 OK ", (c:command("a1", "LOGIN alice secret")))
      assert.same({ 'a1 LOGIN "alice" "secret"' }, scene.commands(good))
    end)

    it("closes the upstream connection when the client goes away during the upstream login", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", login_delay = 1 }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      c:send("a1 LOGIN alice secret\r\n")
      m:wait_for("^AUTH alice secret")
      c:close()
      m:wait_for("^CLOSE ", 4)
      p:wait_log("session closed %(client closed connection%)")
    end)

    it("answers NO [UNAVAILABLE] when the upstream closes the connection on the login command", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", close_on_login = true }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      assert.matches("^a1 NO %[UNAVAILABLE%]", (c:command("a1", "LOGIN alice secret")))
      assert.same({ 'a1 LOGIN "alice" "secret"' }, scene.commands(m))
      assert.equal("a2 OK NOOP completed", (c:command("a2", "NOOP")))
    end)

    it("answers NO [UNAVAILABLE] when the upstream closes right after its greeting", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", close_after_greeting = true }
      local p = sc:proxy { ["*"] = sc.route(m) }
      local c = sc:client(p)
      assert.matches("^a1 NO %[UNAVAILABLE%]", (c:command("a1", "LOGIN alice secret")))
      assert.equal(1, #scene.records(m, "CONNECT"))
      assert.same({}, m:logins())
    end)

    it("answers NO [UNAVAILABLE] within the login timeout when the upstream is slow to greet", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", delay = 3 }
      local p = sc:proxy({ ["*"] = sc.route(m) }, { timeout = 1 })
      local c = sc:client(p)
      local t0 = testing.now()
      local tagged = c:command("a1", "LOGIN alice secret", 5)
      local elapsed = testing.now() - t0
      assert.matches("^a1 NO %[UNAVAILABLE%]", tagged)
      assert.is_true(elapsed >= 0.8, ("answered after %.2f s, before the timeout"):format(elapsed))
      assert.is_true(elapsed < 2.5, ("answered after %.2f s"):format(elapsed))
      assert.same({}, m:logins())
    end)

    it("answers NO [UNAVAILABLE] when nobody listens on the upstream port", function()
      local sc = scene.new(finally)
      local p = sc:proxy { ["*"] = sc.route(testing.free_port()) }
      local c = sc:client(p)
      assert.matches("^a1 NO %[UNAVAILABLE%]", (c:command("a1", "LOGIN alice secret")))
      p:wait_log("connect%(%) to upstream failed")
      assert.equal("a2 OK NOOP completed", (c:command("a2", "NOOP")))
    end)

    it("gives up connecting after connect_timeout and answers NO [UNAVAILABLE]", function()
      local sc = scene.new(finally)
      local port, close_hole = black_hole()
      sc.stops[#sc.stops + 1] = close_hole
      local p = sc:proxy({ ["*"] = sc.route(port) }, { connect_timeout = 1, timeout = 5 })
      local c = sc:client(p)
      local t0 = testing.now()
      local tagged = c:command("a1", "LOGIN alice secret", 6)
      local elapsed = testing.now() - t0
      assert.matches("^a1 NO %[UNAVAILABLE%]", tagged)
      assert.is_true(elapsed >= 0.8 and elapsed < 2.5, ("answered after %.2f s"):format(elapsed))
    end)

    it("tries the next upstream of the list after connect_timeout", function()
      local sc = scene.new(finally)
      local port, close_hole = black_hole()
      sc.stops[#sc.stops + 1] = close_hole
      local good = sc:mock { name = "good" }
      local p = sc:proxy({ ["*"] = { sc.route(port), sc.route(good) } }, { connect_timeout = 1, timeout = 5 })
      local c = sc:client(p)
      local t0 = testing.now()
      assert.matches("^a1 OK ", (c:command("a1", "LOGIN alice secret", 6)))
      assert.is_true(testing.now() - t0 < 2.5)
      assert.same({ 'a1 LOGIN "alice" "secret"' }, scene.commands(good))
    end)

    it("answers NO [UNAVAILABLE] when the upstream's login reply never comes in time", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend", login_delay = 3 }
      local p = sc:proxy({ ["*"] = sc.route(m) }, { timeout = 1 })
      local c = sc:client(p)
      local t0 = testing.now()
      assert.matches("^a1 NO %[UNAVAILABLE%]", (c:command("a1", "LOGIN alice secret", 5)))
      assert.is_true(testing.now() - t0 < 2.5)
      assert.same({ 'a1 LOGIN "alice" "secret"' }, scene.commands(m))
    end)
  end)
end)
