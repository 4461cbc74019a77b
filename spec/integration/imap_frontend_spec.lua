-- The IMAP front end before login (RFC 9051 / 3501, SASL-IR RFC 4959,
-- LITERAL+ RFC 7888, ID RFC 2971, PLAIN RFC 4616), through the real
-- binary.
--
-- The policy below refuses everybody, and its refusal message shows
-- exactly what it was given (user, password, authzid, mechanism), so each
-- test can see what reached it. Users whose name starts with "route" go to
-- a mock backend instead, for the cases where a real login matters.
local testing = require "postern.testing"
local mime = require "mime"

local SERVER_NAME = "imap.example.test"

local POLICY = [[
local function show(v) return "<" .. tostring(v) .. ">" end
return {
  authenticate = function(s)
    if s.user:sub(1, 5) == "route" then
      return { host = "127.0.0.1", port = %d }
    end
    return nil, "user" .. show(s.user) .. " pass" .. show(s.password) ..
      " authzid" .. show(s.authzid) .. " mech" .. show(s.mechanism)
  end,
}
]]

local function b64(s) return (mime.b64(s)) end

-- the refusal the policy above sends for these credentials
local function echo(tag, user, pass, authzid, mech)
  return ("%s NO [AUTHENTICATIONFAILED] user<%s> pass<%s> authzid<%s> mech<%s>"):format(
    tag, user, pass, tostring(authzid), mech)
end

local function words(s)
  local set = {}
  for w in s:gmatch("%S+") do set[w:upper()] = true end
  return set
end

-- "a1 BAD ..." or "a1 NO ...": the status word of a tagged line
local function status_of(line, tag)
  return line:match("^" .. tag:gsub("%p", "%%%0") .. " (%u+)")
end

-- the session still works: a NOOP gets its tagged OK
local function assert_usable(c, tag)
  tag = tag or "z9"
  assert.matches("^" .. tag .. " OK", (c:command(tag, "NOOP")))
end

local function greeted(port)
  local c = testing.client { port = port }
  c:expect("^%* OK")
  return c
end

describe("IMAP front end before login", function()
  local backend, proxy
  local port_default, port_plain, port_login

  setup(function()
    backend = testing.mock_imap { name = "frontend-backend" }
    proxy = testing.start {
      policy_source = POLICY:format(backend.port),
      config = {
        server_name = SERVER_NAME,
        imap_capabilities = { "IMAP4rev1", "XPOSTERN-GLOBAL", "ID" },
        listen = {
          { protocol = "imap" },
          { protocol = "imap", auth = { "plain" }, capabilities = { "IMAP4rev1", "XPOSTERN-LISTENER" } },
          { protocol = "imap", auth = { "login" } },
        },
      },
    }
    port_default, port_plain, port_login = proxy.ports[1], proxy.ports[2], proxy.ports[3]
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if backend then backend:stop() end
  end)

  local function client() return greeted(port_default) end

  describe("greeting and CAPABILITY", function()
    it("greets with * OK [CAPABILITY ...] and the configured server_name", function()
      local c = testing.client { port = port_default }
      local line = c:line()
      local caps, rest = line:match("^%* OK %[CAPABILITY ([^%]]+)%] (.*)$")
      assert.is_not_nil(caps, "greeting: " .. line)
      assert.matches("^" .. SERVER_NAME:gsub("%p", "%%%0") .. "[ ]", rest .. " ")
      assert.is_true(words(caps).IMAP4REV1)
      c:close()
    end)

    it("lists IMAP4rev1, SASL-IR, LITERAL+, ID, AUTH=PLAIN and AUTH=LOGIN by default", function()
      local c = client()
      local tagged, untagged = c:command("a1", "CAPABILITY")
      assert.matches("^a1 OK", tagged)
      assert.equals(1, #untagged)
      local caps = untagged[1]:match("^%* CAPABILITY (.*)$")
      assert.is_not_nil(caps, untagged[1])
      local set = words(caps)
      for _, w in ipairs { "IMAP4REV1", "SASL-IR", "LITERAL+", "ID", "AUTH=PLAIN", "AUTH=LOGIN" } do
        assert.is_true(set[w], w .. " missing from: " .. caps)
      end
      -- nothing is offered that this build cannot do
      assert.is_nil(set.STARTTLS)
      assert.is_nil(set.LOGINDISABLED)
      c:close()
    end)

    it("adds the configured imap_capabilities to the list", function()
      local c = client()
      local _, untagged = c:command("a1", "CAPABILITY")
      assert.is_true(words(untagged[1])["XPOSTERN-GLOBAL"], untagged[1])
      c:close()
    end)

    it("lists each capability once, even when the configuration already names one postern adds", function()
      local c = client()
      local _, untagged = c:command("a1", "CAPABILITY")
      local seen = {}
      for w in untagged[1]:gmatch("%S+") do
        assert.is_nil(seen[w:upper()], w .. " twice in: " .. untagged[1])
        seen[w:upper()] = true
      end
      c:close()
    end)

    it("advertises the same list in the greeting and in CAPABILITY", function()
      local c = testing.client { port = port_default }
      local greeting = c:line():match("%[CAPABILITY ([^%]]+)%]")
      local _, untagged = c:command("a1", "CAPABILITY")
      assert.same(words(greeting), words(untagged[1]:match("^%* CAPABILITY (.*)$")))
      c:close()
    end)

    it("offers only AUTH=PLAIN on a listener with auth = { \"plain\" }", function()
      local c = greeted(port_plain)
      local _, untagged = c:command("a1", "CAPABILITY")
      local set = words(untagged[1])
      assert.is_true(set["AUTH=PLAIN"], untagged[1])
      assert.is_nil(set["AUTH=LOGIN"], untagged[1])
      -- and the mechanism that is not offered is refused
      assert.equals("NO", status_of((c:command("a2", "AUTHENTICATE LOGIN")), "a2"))
      assert_usable(c)
      c:close()
    end)

    it("offers only AUTH=LOGIN on a listener with auth = { \"login\" }", function()
      local c = greeted(port_login)
      local _, untagged = c:command("a1", "CAPABILITY")
      local set = words(untagged[1])
      assert.is_true(set["AUTH=LOGIN"], untagged[1])
      assert.is_nil(set["AUTH=PLAIN"], untagged[1])
      assert.equals("NO", status_of((c:command("a2", "AUTHENTICATE PLAIN")), "a2"))
      c:close()
    end)

    it("uses a listener's own capabilities instead of imap_capabilities, still with SASL-IR, LITERAL+, ID", function()
      local c = greeted(port_plain)
      local _, untagged = c:command("a1", "CAPABILITY")
      local set = words(untagged[1])
      assert.is_true(set["XPOSTERN-LISTENER"], untagged[1])
      assert.is_nil(set["XPOSTERN-GLOBAL"], untagged[1])
      for _, w in ipairs { "IMAP4REV1", "SASL-IR", "LITERAL+", "ID" } do
        assert.is_true(set[w], w .. " missing from: " .. untagged[1])
      end
      c:close()
    end)

    it("accepts command names in any case", function()
      local c = client()
      local tagged, untagged = c:command("a1", "capability")
      assert.matches("^a1 OK", tagged)
      assert.matches("^%* CAPABILITY ", untagged[1])
      assert.matches("^a2 OK", (c:command("a2", "nOoP")))
      c:close()
    end)

    it("answers CAPABILITY with arguments with BAD", function()
      local c = client()
      assert.equals("BAD", status_of((c:command("a1", "CAPABILITY now")), "a1"))
      assert_usable(c)
      c:close()
    end)
  end)

  describe("NOOP and LOGOUT", function()
    it("answers NOOP with a tagged OK and nothing else", function()
      local c = client()
      local tagged, untagged = c:command("a1", "NOOP")
      assert.matches("^a1 OK", tagged)
      assert.same({}, untagged)
      c:close()
    end)

    it("ignores commands pipelined behind LOGOUT", function()
      local c = client()
      c:send("a1 LOGOUT\r\na2 NOOP\r\n")
      assert.matches("^%* BYE", c:line())
      assert.matches("^a1 OK", c:line())
      assert.is_true(c:closed(3))
      assert.equals("", c.buf)
    end)

    it("answers LOGOUT with * BYE, then a tagged OK, then closes the connection", function()
      local c = client()
      c:send("a1 LOGOUT\r\n")
      assert.matches("^%* BYE", c:line())
      assert.matches("^a1 OK", c:line())
      assert.is_true(c:closed(3))
      assert.equals("", c.buf)
    end)
  end)

  describe("ID (RFC 2971)", function()
    it("answers ID with a parameter list with an untagged * ID and a tagged OK", function()
      local c = client()
      local tagged, untagged = c:command("a1", 'ID ("name" "busted" "version" "1.0" "os" NIL)')
      assert.matches("^a1 OK", tagged)
      assert.equals(1, #untagged)
      assert.matches('^%* ID %(.*"name" "postern"', untagged[1])
      assert_usable(c)
      c:close()
    end)

    it("answers ID NIL with an untagged * ID and a tagged OK", function()
      local c = client()
      local tagged, untagged = c:command("a1", "ID NIL")
      assert.matches("^a1 OK", tagged)
      assert.equals(1, #untagged)
      assert.matches("^%* ID [%(N]", untagged[1])
      c:close()
    end)

    it("accepts a literal as an ID value", function()
      local c = client()
      c:send('a1 ID ("name" {6+}\r\nbusted)\r\n')
      assert.matches("^%* ID ", c:line())
      assert.matches("^a1 OK", c:line())
      c:close()
    end)

    for _, bad in ipairs {
      { "ID without arguments", "ID" },
      { "ID with a field and no value", 'ID ("name")' },
      { "ID with an unclosed list", 'ID ("name" "x"' },
      { "ID with an atom as a field name", 'ID (name "x")' },
      { "ID with a string instead of a list", 'ID "name"' },
      { "ID with more than 30 field-value pairs", "ID (" .. ('"f" "v" '):rep(31):sub(1, -2) .. ")" },
    } do
      it("answers " .. bad[1] .. " with BAD and keeps the session", function()
        local c = client()
        local tagged, untagged = c:command("a1", bad[2])
        assert.equals("BAD", status_of(tagged, "a1"), tagged)
        assert.same({}, untagged)
        assert_usable(c)
        c:close()
      end)
    end
  end)

  describe("LOGIN", function()
    it("passes atoms to the policy as user and password, with mechanism \"plain\"", function()
      local c = client()
      assert.equals(echo("a1", "alice", "secret", nil, "plain"), (c:command("a1", "LOGIN alice secret")))
      c:close()
    end)

    it("unescapes \\\" and \\\\ in quoted strings", function()
      local c = client()
      local tagged = c:command("a1", [[LOGIN "al\"ice" "p\\a ss\"word"]])
      assert.equals(echo("a1", 'al"ice', [[p\a ss"word]], nil, "plain"), tagged)
      c:close()
    end)

    it("accepts an empty quoted password", function()
      local c = client()
      assert.equals(echo("a1", "alice", "", nil, "plain"), (c:command("a1", 'LOGIN alice ""')))
      c:close()
    end)

    it("sends a + continuation for each synchronizing literal before reading its data", function()
      local c = client()
      local user, pass = 'a "b\\c', 'p w{1}'
      c:send(("a1 LOGIN {%d}\r\n"):format(#user))
      assert.matches("^%+ ", c:line())
      c:send(("%s {%d}\r\n"):format(user, #pass))
      assert.matches("^%+ ", c:line())
      c:send(pass .. "\r\n")
      assert.equals(echo("a1", user, pass, nil, "plain"), c:line())
      -- no stray continuation or reply was left behind
      local tagged, untagged = c:command("a2", "NOOP")
      assert.matches("^a2 OK", tagged)
      assert.same({}, untagged)
      c:close()
    end)

    it("sends no + for non-synchronizing literals {n+}", function()
      local c = client()
      local user, pass = "bob smith", "pa\"ss\\"
      c:send(("a1 LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n"):format(#user, user, #pass, pass))
      assert.equals(echo("a1", user, pass, nil, "plain"), c:line())
      assert_usable(c)
      c:close()
    end)

    it("sends a + continuation for a zero-length synchronizing literal {0}", function()
      local c = client()
      c:send("a1 LOGIN alice {0}\r\n")
      assert.matches("^%+ ", c:line(3))
      c:send("\r\n")
      assert.equals(echo("a1", "alice", "", nil, "plain"), c:line())
      c:close()
    end)

    it("passes UTF-8 in quoted strings through unchanged (IMAP4rev2)", function()
      local c = client()
      assert.equals(echo("a1", "jörg", "pässwörd", nil, "plain"), (c:command("a1", 'LOGIN "jörg" "pässwörd"')))
      c:close()
    end)

    it("refuses a user name with a NUL byte inside a literal instead of cutting it short", function()
      local c = client()
      c:send("a1 LOGIN {5+}\r\nal\0ce x\r\n")
      local tagged = c:line()
      local st = status_of(tagged, "a1")
      assert.is_true(st == "BAD" or st == "NO", tagged)
      assert.is_nil(tagged:find("user<", 1, true), tagged)
      assert_usable(c)
      c:close()
    end)

    it("mixes a literal user name with a quoted password", function()
      local c = client()
      c:send("a1 LOGIN {5}\r\n")
      assert.matches("^%+ ", c:line())
      c:send('carol "x y"\r\n')
      assert.equals(echo("a1", "carol", "x y", nil, "plain"), c:line())
      c:close()
    end)

    it("logs in upstream with the exact credentials given as synchronizing literals", function()
      local c = client()
      local user, pass = "route-literal", 'se "cr\\et'
      c:send(("a1 LOGIN {%d}\r\n"):format(#user))
      assert.matches("^%+ ", c:line())
      c:send(("%s {%d}\r\n"):format(user, #pass))
      assert.matches("^%+ ", c:line())
      c:send(pass .. "\r\n")
      assert.matches("^a1 OK", c:line())
      backend:wait_for("^AUTH route%-literal ")
      local found
      for _, l in ipairs(backend:logins()) do
        if l.user == user then found = l end
      end
      assert.same({ user = user, password = pass, mechanism = "login" }, found)
      c:close()
    end)

    for _, bad in ipairs {
      { "one argument", "LOGIN alice" },
      { "three arguments", "LOGIN alice secret extra" },
      { "no arguments", "LOGIN" },
      { "an empty user name", 'LOGIN "" secret' },
      { "a parenthesized list", "LOGIN (alice) secret" },
    } do
      it("refuses LOGIN with " .. bad[1] .. " with BAD, without asking the policy", function()
        local c = client()
        local tagged = c:command("a1", bad[2])
        assert.equals("BAD", status_of(tagged, "a1"), tagged)
        assert_usable(c)
        c:close()
      end)
    end
  end)

  describe("AUTHENTICATE", function()
    it("PLAIN: sends an empty + continuation, then reads the base64 response", function()
      local c = client()
      c:send("a1 AUTHENTICATE PLAIN\r\n")
      assert.equals("+ ", c:line())
      c:send(b64("\0alice\0secret") .. "\r\n")
      assert.equals(echo("a1", "alice", "secret", nil, "plain"), c:line())
      assert_usable(c)
      c:close()
    end)

    it("PLAIN: takes a SASL-IR initial response without a continuation", function()
      local c = client()
      local tagged, untagged = c:command("a1", "AUTHENTICATE PLAIN " .. b64("\0alice\0secret"))
      assert.equals(echo("a1", "alice", "secret", nil, "plain"), tagged)
      assert.same({}, untagged)
      c:close()
    end)

    it("PLAIN: accepts the mechanism name in lower case", function()
      local c = client()
      local tagged = c:command("a1", "authenticate plain " .. b64("\0dave\0pw"))
      assert.equals(echo("a1", "dave", "pw", nil, "plain"), tagged)
      c:close()
    end)

    it("PLAIN: gives the policy the authorization identity as s.authzid", function()
      local c = client()
      local tagged = c:command("a1", "AUTHENTICATE PLAIN " .. b64("admin\0alice\0secret"))
      assert.equals(echo("a1", "alice", "secret", "admin", "plain"), tagged)
      c:close()
    end)

    it("PLAIN: an empty initial response (=) fails without reaching the policy, and the session goes on", function()
      local c = client()
      local tagged = c:command("a1", "AUTHENTICATE PLAIN =")
      local st = status_of(tagged, "a1")
      assert.is_true(st == "BAD" or st == "NO", tagged)
      assert.is_nil(tagged:find("user<", 1, true), tagged)
      assert_usable(c)
      c:close()
    end)

    it("PLAIN: a message without the NUL separators is refused without reaching the policy", function()
      local c = client()
      local tagged = c:command("a1", "AUTHENTICATE PLAIN " .. b64("alice secret"))
      local st = status_of(tagged, "a1")
      assert.is_true(st == "BAD" or st == "NO", tagged)
      assert.is_nil(tagged:find("user<", 1, true), tagged)
      assert_usable(c)
      c:close()
    end)

    it("PLAIN: logs in upstream through the mock backend", function()
      local c = client()
      local tagged = c:command("a1", "AUTHENTICATE PLAIN " .. b64("\0route-plain\0pw-plain"))
      assert.matches("^a1 OK", tagged)
      backend:wait_for("^AUTH route%-plain pw%-plain ")
      c:close()
    end)

    it("LOGIN: prompts Username: and Password: in base64 and gives mechanism \"login\"", function()
      local c = client()
      c:send("a1 AUTHENTICATE LOGIN\r\n")
      assert.equals("+ " .. b64("Username:"), c:line())
      c:send(b64("alice") .. "\r\n")
      assert.equals("+ " .. b64("Password:"), c:line())
      c:send(b64("sec ret") .. "\r\n")
      assert.equals(echo("a1", "alice", "sec ret", nil, "login"), c:line())
      assert_usable(c)
      c:close()
    end)

    it("LOGIN: takes the user name as a SASL-IR initial response and prompts for the password", function()
      local c = client()
      c:send("a1 AUTHENTICATE LOGIN " .. b64("alice") .. "\r\n")
      assert.equals("+ " .. b64("Password:"), c:line())
      c:send(b64("secret") .. "\r\n")
      assert.equals(echo("a1", "alice", "secret", nil, "login"), c:line())
      c:close()
    end)

    it("cancels PLAIN with * : tagged BAD, and the session continues", function()
      local c = client()
      c:send("a1 AUTHENTICATE PLAIN\r\n")
      assert.equals("+ ", c:line())
      c:send("*\r\n")
      assert.equals("BAD", status_of(c:line(), "a1"))
      assert_usable(c)
      c:close()
    end)

    it("cancels LOGIN at the password prompt with * : tagged BAD, and the session continues", function()
      local c = client()
      c:send("a1 AUTHENTICATE LOGIN\r\n")
      c:expect("^%+ ")
      c:send(b64("alice") .. "\r\n")
      c:expect("^%+ ")
      c:send("*\r\n")
      assert.equals("BAD", status_of(c:line(), "a1"))
      assert_usable(c)
      c:close()
    end)

    it("answers a continuation that is not base64 with BAD, and the session continues", function()
      local c = client()
      c:send("a1 AUTHENTICATE PLAIN\r\n")
      assert.equals("+ ", c:line())
      c:send("!!not base64!!\r\n")
      assert.equals("BAD", status_of(c:line(), "a1"))
      assert_usable(c)
      c:close()
    end)

    it("answers base64 without its padding with BAD instead of decoding part of it", function()
      local c = client()
      -- "\0u\0p" is AHUAcA== when padded
      local tagged = c:command("a1", "AUTHENTICATE PLAIN AHUAcA")
      assert.equals("BAD", status_of(tagged, "a1"), tagged)
      assert_usable(c)
      c:close()
    end)

    it("answers an initial response that is not base64 with BAD", function()
      local c = client()
      local tagged = c:command("a1", "AUTHENTICATE PLAIN %%%%")
      assert.equals("BAD", status_of(tagged, "a1"), tagged)
      assert_usable(c)
      c:close()
    end)

    it("answers an unsupported mechanism with NO, and the session continues", function()
      local c = client()
      local tagged = c:command("a1", "AUTHENTICATE CRAM-MD5")
      assert.equals("NO", status_of(tagged, "a1"), tagged)
      assert_usable(c)
      c:close()
    end)

    it("answers AUTHENTICATE without a mechanism with BAD", function()
      local c = client()
      assert.equals("BAD", status_of((c:command("a1", "AUTHENTICATE")), "a1"))
      assert_usable(c)
      c:close()
    end)
  end)

  describe("pipelining and fragmentation", function()
    it("answers several commands sent in one packet, in order", function()
      local c = client()
      c:send("a1 NOOP\r\na2 CAPABILITY\r\na3 ID NIL\r\na4 LOGIN alice secret\r\n" ..
        "a5 LOGIN bob other\r\na6 NOOP\r\n")
      local got = {}
      for _ = 1, 8 do got[#got + 1] = c:line() end
      assert.matches("^a1 OK", got[1])
      assert.matches("^%* CAPABILITY ", got[2])
      assert.matches("^a2 OK", got[3])
      assert.matches("^%* ID ", got[4])
      assert.matches("^a3 OK", got[5])
      assert.equals(echo("a4", "alice", "secret", nil, "plain"), got[6])
      assert.equals(echo("a5", "bob", "other", nil, "plain"), got[7])
      assert.matches("^a6 OK", got[8])
      -- and nothing more was sent
      local tagged, untagged = c:command("a7", "NOOP")
      assert.matches("^a7 OK", tagged)
      assert.same({}, untagged)
      c:close()
    end)

    it("hands commands pipelined behind a successful LOGIN to the upstream", function()
      local c = client()
      c:send("a1 NOOP\r\na2 LOGIN route-pipe x\r\na3 XPIPED\r\n")
      assert.matches("^a1 OK", c:line())
      assert.matches("^a2 OK", c:line())
      assert.matches("^a3 ", c:line())      -- the backend's answer
      backend:wait_for(" a3 XPIPED$")
      backend:wait_for("^AUTH route%-pipe x ")
      c:close()
    end)

    it("parses a command sent one byte at a time", function()
      local c = client()
      local text = 'a1 NOOP\r\na2 LOGIN "al ice" {3+}\r\npw!\r\na3 AUTHENTICATE PLAIN ' ..
        b64("z\0u\0p") .. "\r\n"
      for i = 1, #text do
        c:send(text:sub(i, i))
        testing.sleep(0.002)
      end
      assert.matches("^a1 OK", c:line())
      assert.equals(echo("a2", "al ice", "pw!", nil, "plain"), c:line())
      assert.equals(echo("a3", "u", "p", "z", "plain"), c:line())
      c:close()
    end)

    it("answers a pipeline larger than the 16 KiB client buffer when each command fits", function()
      local c = client()
      local parts, n = {}, 1500
      for i = 1, n do parts[i] = ("t%05d NOOP\r\n"):format(i) end
      local pre = table.concat(parts)
      assert.is_true(#pre > 16384)
      -- a login with literals right at the 16 KiB mark, then more NOOPs
      local tail = "L1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\nL2 NOOP\r\n"
      c:send(pre .. tail)
      for i = 1, n do
        local line = c:line()
        assert.equals(("t%05d OK"):format(i), line:sub(1, 9))
      end
      assert.equals(echo("L1", "alice", "secret", nil, "plain"), c:line())
      assert.matches("^L2 OK", c:line())
      c:close()
    end)

    it("reads a literal whose data crosses the 16 KiB buffer boundary", function()
      local c = client()
      local user = ("u"):rep(200)     -- refusal messages are cut at 400 bytes
      local head = ("b1 LOGIN {%d+}\r\n"):format(#user)
      -- pad with NOOPs so that the literal's data straddles byte 16384
      local parts, size, i = {}, 0, 0
      while size + #head + 100 < 16384 do
        i = i + 1
        parts[i] = ("p%05d NOOP\r\n"):format(i)
        size = size + #parts[i]
      end
      local start = size + #head
      assert.is_true(start < 16384 and start + #user > 16384)
      c:send(table.concat(parts) .. head .. user .. " pw\r\n")
      for k = 1, i do assert.equals(("p%05d OK"):format(k), c:line():sub(1, 9)) end
      assert.equals(echo("b1", user, "pw", nil, "plain"), c:line())
      c:close()
    end)
  end)

  describe("commands not allowed before login", function()
    for _, cmd in ipairs { "SELECT INBOX", "FETCH 1 BODY[]", "LIST \"\" *", "STATUS INBOX (MESSAGES)" } do
      it("answers " .. cmd .. " with BAD and keeps the session", function()
        local c = client()
        local tagged, untagged = c:command("a1", cmd)
        assert.equals("BAD", status_of(tagged, "a1"), tagged)
        assert.same({}, untagged)
        assert_usable(c)
        c:close()
      end)
    end

    it("answers a command with an invalid tag with an untagged BAD", function()
      local c = client()
      c:send("a+ NOOP\r\n")
      assert.matches("^%* BAD", c:line())
      assert_usable(c)
      c:close()
    end)

    it("takes tags up to 128 characters (RFC 9051 sets no limit; Dovecot takes 100) and refuses longer ones", function()
      local c = client()
      local tag = ("t"):rep(128)
      c:send(tag .. " NOOP\r\n")
      assert.equals(tag .. " OK NOOP completed", c:line())
      c:send(("t"):rep(129) .. " NOOP\r\n")
      assert.matches("^%* BAD", c:line())
      assert_usable(c)
      c:close()
    end)

    it("answers a line without a tag with an untagged BAD", function()
      local c = client()
      c:send("\r\n")
      assert.matches("^%* BAD", c:line())
      assert_usable(c)
      c:close()
    end)
  end)

  describe("limits", function()
    it("answers a command line longer than client_buffer with BAD and closes", function()
      local c = client()
      -- exactly client_buffer bytes with no end of line: postern reads all of it
      local line = "a1 NOOP " .. ("x"):rep(16384 - 8)
      c:send(line)
      local reply = c:line()
      assert.is_truthy(reply:match("^%* BAD") or reply:match("^a1 BAD"), reply)
      assert.is_true(c:closed(3))
      assert.is_true(proxy:alive())
      local c2 = client()
      assert_usable(c2)
      c2:close()
    end)

    it("drops a client that streams far more than client_buffer without a line end, and keeps serving others", function()
      local c = client()
      -- postern may close (and reset) while this is still being sent
      pcall(c.send, c, ("y"):rep(256 * 1024))
      assert.is_true(c:closed(5))
      assert.is_true(proxy:alive())
      local c2 = client()
      assert_usable(c2)
      c2:close()
    end)

    it("answers a synchronizing literal bigger than client_buffer with BAD, without a +, and closes", function()
      local c = client()
      c:send("a1 LOGIN {20000}\r\n")
      local reply = c:line()
      assert.is_truthy(reply:match("^%* BAD") or reply:match("^a1 BAD"), reply)
      assert.is_true(c:closed(3))
      assert.is_true(proxy:alive())
      local c2 = client()
      assert_usable(c2)
      c2:close()
    end)

    it("answers a non-synchronizing literal bigger than client_buffer with BAD and closes", function()
      local c = client()
      c:send("a1 LOGIN {1000000+}\r\n")
      local reply = c:line()
      assert.is_truthy(reply:match("^%* BAD") or reply:match("^a1 BAD"), reply)
      assert.is_true(c:closed(3))
      assert.is_true(proxy:alive())
      local c2 = client()
      assert_usable(c2)
      c2:close()
    end)

    it("refuses an absurd literal size without overflowing", function()
      local c = client()
      c:send("a1 LOGIN {99999999999999999999999999}\r\n")
      local reply = c:line()
      assert.is_truthy(reply:match("BAD"), reply)
      assert.is_true(c:closed(3))
      assert.is_true(proxy:alive())
    end)
  end)

  describe("credentials with CR or LF", function()
    local function assert_refused(tagged, tag)
      local st = status_of(tagged, tag)
      assert.is_true(st == "BAD" or st == "NO", tagged)
    end

    -- a later good login on the same backend proves the earlier one was
    -- already processed; then nothing of the bad ones may be in the record
    local function assert_never_upstream(marker)
      local c = client()
      assert.matches("^m1 OK", (c:command("m1", "LOGIN " .. marker .. " x")))
      backend:wait_for("^AUTH " .. marker:gsub("%p", "%%%0") .. " ")
      c:close()
      for _, l in ipairs(backend:lines()) do
        assert.is_nil(l:find("DELETE", 1, true), "reached the upstream: " .. l)
        assert.is_nil(l:find("route-crlf", 1, true), "reached the upstream: " .. l)
      end
    end

    it("refuses a LOGIN user name with CR LF inside a literal; nothing reaches the upstream", function()
      local c = client()
      local user = "route-crlf\r\nX1 DELETE INBOX"
      c:send(("a1 LOGIN {%d+}\r\n%s x\r\n"):format(#user, user))
      assert_refused(c:line(), "a1")
      assert_usable(c)
      c:close()
      assert_never_upstream("route-marker1")
    end)

    it("refuses a LOGIN password with a bare LF inside a literal; nothing reaches the upstream", function()
      local c = client()
      local pass = "x\nX2 DELETE INBOX"
      c:send(("a1 LOGIN route-crlf2 {%d}\r\n"):format(#pass))
      c:expect("^%+ ")
      c:send(pass .. "\r\n")
      assert_refused(c:line(), "a1")
      c:close()
      assert_never_upstream("route-marker2")
    end)

    it("refuses an AUTHENTICATE PLAIN password that decodes to CR LF; nothing reaches the upstream", function()
      local c = client()
      local tagged = c:command("a1", "AUTHENTICATE PLAIN " .. b64("\0route-crlf3\0x\r\nX3 DELETE INBOX"))
      assert_refused(tagged, "a1")
      assert_usable(c)
      c:close()
      assert_never_upstream("route-marker3")
    end)

    it("refuses an AUTHENTICATE LOGIN user name that decodes to CR LF; nothing reaches the upstream", function()
      local c = client()
      c:send("a1 AUTHENTICATE LOGIN\r\n")
      c:expect("^%+ ")
      c:send(b64("route-crlf4\r\nX4 DELETE INBOX") .. "\r\n")
      local line = c:line()
      if line:match("^%+") then   -- refused only after the password: still acceptable
        c:send(b64("x") .. "\r\n")
        line = c:line()
      end
      assert_refused(line, "a1")
      c:close()
      assert_never_upstream("route-marker4")
    end)
  end)

  describe("credentials between attempts", function()
    it("after a refused AUTHENTICATE PLAIN with an authzid, LOGIN carries only the new credentials", function()
      local c = client()
      assert.equals(echo("a1", "alice", "wrong", "admin", "plain"),
        (c:command("a1", "AUTHENTICATE PLAIN " .. b64("admin\0alice\0wrong"))))
      assert.equals(echo("a2", "bob", "new", nil, "plain"), (c:command("a2", "LOGIN bob new")))
      c:close()
    end)

    it("after a cancelled AUTHENTICATE LOGIN, the next login does not see the old user name", function()
      local c = client()
      c:send("a1 AUTHENTICATE LOGIN\r\n")
      c:expect("^%+ ")
      c:send(b64("olduser") .. "\r\n")
      c:expect("^%+ ")
      c:send("*\r\n")
      assert.equals("BAD", status_of(c:line(), "a1"))
      assert.equals(echo("a2", "carol", "pw", nil, "plain"), (c:command("a2", "LOGIN carol pw")))
      c:send("a3 AUTHENTICATE LOGIN\r\n")
      c:expect("^%+ ")
      c:send(b64("dave") .. "\r\n")
      c:expect("^%+ ")
      c:send(b64("pw2") .. "\r\n")
      assert.equals(echo("a3", "dave", "pw2", nil, "login"), c:line())
      c:close()
    end)

    it("after a refused LOGIN, AUTHENTICATE PLAIN without authzid has none", function()
      local c = client()
      assert.equals(echo("a1", "erin", "one", nil, "plain"), (c:command("a1", "LOGIN erin one")))
      assert.equals(echo("a2", "frank", "two", nil, "plain"),
        (c:command("a2", "AUTHENTICATE PLAIN " .. b64("\0frank\0two"))))
      c:close()
    end)
  end)
end)

describe("IMAP front end: max_errors", function()
  local proxy

  setup(function()
    proxy = testing.start {
      policy_source = POLICY:format(1),
      config = { max_errors = 3 },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
  end)

  it("keeps a client that sent fewer bad commands than max_errors", function()
    local c = greeted(proxy.port)
    assert.equals("BAD", status_of((c:command("a1", "SELECT INBOX")), "a1"))
    assert.equals("BAD", status_of((c:command("a2", "LOGIN")), "a2"))
    assert_usable(c)
    c:close()
  end)

  it("closes the connection with * BYE after max_errors bad commands", function()
    local c = greeted(proxy.port)
    assert.equals("BAD", status_of((c:command("a1", "SELECT INBOX")), "a1"))
    assert.equals("BAD", status_of((c:command("a2", "FETCH 1 BODY[]")), "a2"))
    c:send("a3 XYZZY\r\n")
    assert.equals("BAD", status_of(c:line(), "a3"))
    assert.matches("^%* BYE", c:line())
    assert.is_true(c:closed(3))
  end)

  it("counts bad commands pipelined in one packet", function()
    local c = greeted(proxy.port)
    c:send("a1 XA\r\na2 XB\r\na3 XC\r\na4 NOOP\r\n")
    assert.equals("BAD", status_of(c:line(), "a1"))
    assert.equals("BAD", status_of(c:line(), "a2"))
    assert.equals("BAD", status_of(c:line(), "a3"))
    assert.matches("^%* BYE", c:line())
    assert.is_true(c:closed(3))
    assert.is_nil(c.buf:find("a4 OK", 1, true))
  end)
end)

describe("IMAP front end: pre-login timeout", function()
  local proxy

  setup(function()
    proxy = testing.start {
      policy_source = POLICY:format(1),
      config = { timeout = 1 },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
  end)

  it("sends * BYE to an idle client and closes the connection", function()
    local c = greeted(proxy.port)
    local t0 = testing.now()
    assert.matches("^%* BYE", c:line(5))
    assert.is_true(c:closed(3))
    local waited = testing.now() - t0
    assert.is_true(waited >= 0.8, "closed after " .. waited .. " s")
  end)

  it("restarts the timeout on every command", function()
    local c = greeted(proxy.port)
    for i = 1, 4 do
      testing.sleep(0.4)
      assert.matches("^n" .. i .. " OK", (c:command("n" .. i, "NOOP")))
    end
    -- 1.6 s after the greeting, still served; then idle again: closed
    assert.matches("^%* BYE", c:line(5))
    assert.is_true(c:closed(3))
  end)

  it("does not restart it for a command that arrives a byte at a time and never ends", function()
    local c = greeted(proxy.port)
    local t0 = testing.now()
    local line = "a1 LOGIN someone-with-a-long-name and-a-long-password-that-never-ends"
    local closed_at
    for i = 1, #line do
      c:send(line:sub(i, i))
      if c:closed(0.1) then closed_at = testing.now() - t0 break end
    end
    assert.truthy(closed_at, "still open after dripping " .. #line .. " bytes over " .. (testing.now() - t0) .. " s")
    assert.is_true(closed_at < 2, "closed after " .. tostring(closed_at) .. " s")
    assert.matches("^%* BYE", c.buf)
  end)

  it("also times out a client stuck in the middle of AUTHENTICATE", function()
    local c = greeted(proxy.port)
    c:send("a1 AUTHENTICATE PLAIN\r\n")
    assert.equals("+ ", c:line())
    assert.matches("^%* BYE", c:line(5))
    assert.is_true(c:closed(3))
  end)
end)
