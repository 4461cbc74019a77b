-- SASL on all three protocols (issue 3): PLAIN (RFC 4616), LOGIN
-- (draft-murchison-sasl-login), CRAM-MD5 (RFC 2195), XOAUTH2 (Google) and
-- OAUTHBEARER (RFC 7628), wrapped as IMAP AUTHENTICATE (RFC 9051, SASL-IR
-- RFC 4959), POP3 AUTH (RFC 5034) and SMTP AUTH (RFC 4954).
--
-- The same exchanges run through the real binary for each protocol; the
-- helper in spec/helpers/sasl_protocols.lua knows how each one wraps a
-- challenge ("+ x" / "334 x") and its final replies (tagged OK/NO/BAD,
-- +OK/-ERR, 235/5xx). The policy logs every call it gets, so each test can
-- check what the policy saw (or that it saw nothing), and the mock
-- backends record the upstream login postern made.
local testing = require "postern.testing"
local sp = require "helpers.sasl_protocols"
local md5 = require "postern.md5"
local mime = require "mime"

local function b64(s) return (mime.b64(s)) or "" end
local function unb64(s) return (mime.unb64(s)) or "" end

local function xoauth2(user, token)
  return b64("user=" .. user .. "\1auth=Bearer " .. token .. "\1\1")
end

local function oauthbearer(user, token)
  return b64("n,a=" .. user .. ",\1auth=Bearer " .. token .. "\1\1")
end

-- IMAP NO or BAD, POP3 -ERR, SMTP 4xx/5xx: any final failure
local ANY_FAILURE = { imap = "^a1 [NB][OA]D? ", pop3 = "^%-ERR", smtp = "^[45]%d%d " }

for _, P in ipairs(sp.order) do
  describe("SASL over " .. P.name:upper(), function()
    local good, refusing, no_ir, proxy, log_path
    local clients = {}

    setup(function()
      log_path = os.tmpname()
      if P.name == "imap" then
        good = sp.oauth_imap_mock { name = "imap-good" }
        refusing = sp.oauth_imap_mock { name = "imap-refusing", refuse = "Token rejected upstream" }
        no_ir = sp.oauth_imap_mock { name = "imap-no-sasl-ir", sasl_ir = false }
      elseif P.name == "pop3" then
        good = testing.mock_pop3 { name = "pop3-good" }
        refusing = testing.mock_pop3 { name = "pop3-refusing", refuse = "Token rejected upstream" }
      else
        local ehlo = { "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER" }
        good = testing.mock_smtp { name = "smtp-good", ehlo = ehlo }
        refusing = testing.mock_smtp { name = "smtp-refusing", ehlo = ehlo, refuse = "Token rejected upstream" }
      end
      local routes = { [P.name] = { good = good.port, refuse = refusing.port, no_ir = no_ir and no_ir.port } }
      proxy = testing.start {
        policy_source = sp.policy_source(log_path, routes),
        config = {
          max_errors = 100,
          listen = {
            { protocol = P.name, auth = P.all_auth },   -- proxy.ports[1]
            { protocol = P.name, auth = P.plain_auth }, -- proxy.ports[2]
          },
        },
      }
    end)

    teardown(function()
      for _, c in ipairs(clients) do c:close() end
      local ok, err = true, nil
      if proxy then ok, err = pcall(proxy.stop, proxy) end
      if good then good:stop() end
      if refusing then refusing:stop() end
      if no_ir then no_ir:stop() end
      if log_path then os.remove(log_path) end
      if not ok then error(err, 0) end
    end)

    -- a greeted client on listener `which` (1: every mechanism, 2: PLAIN only)
    local function connect(which)
      local c = testing.client { port = proxy.ports[which or 1], timeout = 5 }
      clients[#clients + 1] = c
      P.greet(c)
      local _, port = c.sock:getsockname()
      c.lport = tonumber(port)
      return c
    end

    -- AUTH/AUTHENTICATE `mech` with initial response `ir` (nil: none); each
    -- challenge is answered with the next of `responses` (a string, or a
    -- function of the challenge). Returns the final reply line and the list
    -- of challenges (base64, as sent). Responses left over are not sent.
    local function exchange(c, mech, ir, responses)
      P.auth(c, mech, ir)
      local challenges, i = {}, 1
      while true do
        local kind, data = P.answer(c)
        if kind == "final" then return data, challenges end
        challenges[#challenges + 1] = data
        local r = (responses or {})[i]
        i = i + 1
        if r == nil then error("unexpected challenge " .. ("%q"):format(data) .. " (decoded: " .. ("%q"):format(unb64(data)) .. ")", 2) end
        if type(r) == "function" then r = r(data) end
        P.respond(c, r)
      end
    end

    local function policy_calls(c) return sp.policy_calls(log_path, c.lport) end

    -- mock records appended after `mark` (= #m:lines() taken earlier)
    local function since(m, mark)
      local out = {}
      local lines = m:lines()
      for i = mark + 1, #lines do out[#out + 1] = lines[i] end
      return out
    end

    local function logins_since(m, mark)
      local out = {}
      for _, l in ipairs(since(m, mark)) do
        local user, pass, mech = l:match("^AUTH (%S*) (.*) (%S+)$")
        if user then out[#out + 1] = { user = user, password = pass, mechanism = mech } end
      end
      return out
    end

    -- the session now talks to `m`: a command reaches it and is answered
    local function assert_relayed_to(c, m, mark)
      local reply = P.noop(c)
      assert.is_truthy(reply and #reply > 0)
      local deadline = testing.now() + 3
      repeat
        for _, l in ipairs(since(m, mark)) do
          if l:find(P.noop_record) then return end
        end
        testing.sleep(0.02)
      until testing.now() > deadline
      error("the command after login did not reach " .. tostring(m.name) .. "; records:\n"
        .. table.concat(since(m, mark), "\n"), 2)
    end

    local function plain_login_works(c)
      local final = exchange(c, "PLAIN", b64("\0alice\0secret"))
      assert.matches(P.ok, final)
    end

    describe("PLAIN", function()
      it("passes the authorization identity as s.authzid and the authentication identity as s.user", function()
        local mark = #good:lines()
        local c = connect()
        local final, challenges = exchange(c, "PLAIN", b64("admin\0alice\0secret"))
        assert.matches(P.ok, final)
        assert.same({}, challenges)
        local calls = policy_calls(c)
        assert.equal(1, #calls)
        assert.equal("plain", calls[1].mechanism)
        assert.equal("alice", calls[1].user)
        assert.equal("admin", calls[1].authzid)
        assert.equal("secret", calls[1].password)
        assert.same({ { user = "alice", password = "secret", mechanism = P.cleartext_upstream_mech } },
          logins_since(good, mark))
        assert_relayed_to(c, good, mark)
      end)

      it("sends an empty challenge without an initial response, then takes the credentials (no authzid: nil)", function()
        local mark = #good:lines()
        local c = connect()
        local final, challenges = exchange(c, "PLAIN", nil, { b64("\0alice\0secret") })
        assert.same({ "" }, challenges)
        assert.matches(P.ok, final)
        local calls = policy_calls(c)
        assert.equal(1, #calls)
        assert.equal("alice", calls[1].user)
        assert.is_nil(calls[1].authzid)
        assert.equal(1, #logins_since(good, mark))
      end)

      it("takes \"=\" as an empty initial response, which PLAIN refuses without calling the policy", function()
        -- RFC 4959/5034/4954: "=" is a zero-length response, not a request for
        -- a challenge; an empty PLAIN message is malformed (RFC 4616)
        local c = connect()
        local final, challenges = exchange(c, "PLAIN", "=")
        assert.same({}, challenges)
        assert.matches(P.bad_message, final)
        assert.same({}, policy_calls(c))
        plain_login_works(c)
      end)
    end)

    describe("LOGIN", function()
      it("asks for Username: and Password: and gives the policy both", function()
        local mark = #good:lines()
        local c = connect()
        local final, challenges = exchange(c, "LOGIN", nil, { b64("alice"), b64("secret") })
        assert.matches(P.ok, final)
        assert.equal(2, #challenges)
        assert.equal("Username:", unb64(challenges[1]))
        assert.equal("Password:", unb64(challenges[2]))
        local calls = policy_calls(c)
        assert.equal(1, #calls)
        assert.equal("login", calls[1].mechanism)
        assert.equal("alice", calls[1].user)
        assert.equal("secret", calls[1].password)
        assert.is_nil(calls[1].authzid)
        assert.same({ { user = "alice", password = "secret", mechanism = P.cleartext_upstream_mech } },
          logins_since(good, mark))
        assert_relayed_to(c, good, mark)
      end)

      it("takes the user name as initial response and asks only for the password", function()
        local c = connect()
        local final, challenges = exchange(c, "LOGIN", b64("alice"), { b64("secret") })
        assert.matches(P.ok, final)
        assert.equal(1, #challenges)
        assert.equal("Password:", unb64(challenges[1]))
        assert.equal("alice", policy_calls(c)[1].user)
      end)

      it("refuses a NUL inside the user name instead of cutting the name there", function()
        local mark = #good:lines()
        local c = connect()
        local final = exchange(c, "LOGIN", nil, { b64("alice\0evil"), b64("secret") })
        assert.matches(P.bad_message, final)
        assert.same({}, policy_calls(c))
        assert.same({}, logins_since(good, mark))
      end)
    end)

    describe("CRAM-MD5", function()
      local function answer(user, password)
        return function(challenge) return b64(user .. " " .. md5.hmac_hex(password, unb64(challenge))) end
      end

      it("challenges with <...@server_name>; the policy gets user, salt and digest and checks them with s:check_password", function()
        local c = connect()
        local final, challenges = exchange(c, "CRAM-MD5", nil, { answer("cram", "secret") })
        assert.matches(P.ok, final)
        assert.equal(1, #challenges)
        local salt = unb64(challenges[1])
        assert.matches("^<[^<>@%s]+@postern%.test>$", salt)
        local calls = policy_calls(c)
        assert.equal(1, #calls)
        local call = calls[1]
        assert.equal("cram-md5", call.mechanism)
        assert.equal("cram", call.user)
        assert.equal(salt, call.salt)
        assert.equal(md5.hmac_hex("secret", salt), call.digest)
        assert.is_nil(call.password)
        assert.is_true(call.check_secret)
        assert.is_false(call.check_wrong)
      end)

      it("logs in upstream with the cleartext password the policy returned in the upstream table", function()
        local mark = #good:lines()
        local c = connect()
        local final = exchange(c, "CRAM-MD5", nil, { answer("cram", "secret") })
        assert.matches(P.ok, final)
        assert.same({ { user = "cram", password = "secret", mechanism = P.cleartext_upstream_mech } },
          logins_since(good, mark))
        assert_relayed_to(c, good, mark)
      end)

      it("gives a temporary failure when the policy returns no password for the upstream", function()
        local mark = #good:lines()
        local c = connect()
        local final = exchange(c, "CRAM-MD5", nil, { answer("nopass", "secret") })
        assert.matches(P.temporary, final)
        assert.equal(1, #policy_calls(c))
        assert.same({}, logins_since(good, mark))
        -- the client may try again on the same connection
        plain_login_works(c)
      end)

      it("refuses a digest made with the wrong password (check_password is false)", function()
        local mark = #good:lines()
        local c = connect()
        local final = exchange(c, "CRAM-MD5", nil, { answer("cram", "wrong") })
        assert.matches(P.failed, final)
        local calls = policy_calls(c)
        assert.equal(1, #calls)
        assert.is_false(calls[1].check_secret)
        assert.is_true(calls[1].check_wrong)
        assert.same({}, logins_since(good, mark))
      end)

      it("uses a fresh challenge for every exchange", function()
        local c1, c2 = connect(), connect()
        local _, ch1 = exchange(c1, "CRAM-MD5", nil, { "*" })
        local _, ch2 = exchange(c2, "CRAM-MD5", nil, { "*" })
        assert.equal(1, #ch1)
        assert.equal(1, #ch2)
        assert.are_not.equal(unb64(ch1[1]), unb64(ch2[1]))
      end)

      it("refuses an initial response (the server speaks first, RFC 2195)", function()
        local c = connect()
        local final = exchange(c, "CRAM-MD5", b64("cram 0123456789abcdef0123456789abcdef"), { "*" })
        assert.matches(ANY_FAILURE[P.name], final)
        assert.same({}, policy_calls(c))
      end)
    end)

    describe("XOAUTH2", function()
      it("with an initial response: the policy gets the user and the token as s.password; the upstream gets XOAUTH2 with the same token", function()
        local mark = #good:lines()
        local c = connect()
        local final, challenges = exchange(c, "XOAUTH2", xoauth2("alice@example.com", "good-token"))
        assert.matches(P.ok, final)
        assert.same({}, challenges)
        local calls = policy_calls(c)
        assert.equal(1, #calls)
        assert.equal("xoauth2", calls[1].mechanism)
        assert.equal("alice@example.com", calls[1].user)
        assert.equal("good-token", calls[1].password)
        assert.same({ { user = "alice@example.com", password = "good-token", mechanism = "xoauth2" } },
          logins_since(good, mark))
        assert_relayed_to(c, good, mark)
      end)

      it("without an initial response sends an empty challenge first", function()
        local mark = #good:lines()
        local c = connect()
        local final, challenges = exchange(c, "XOAUTH2", nil, { xoauth2("alice@example.com", "good-token") })
        assert.same({ "" }, challenges)
        assert.matches(P.ok, final)
        assert.equal("good-token", policy_calls(c)[1].password)
        assert.same({ { user = "alice@example.com", password = "good-token", mechanism = "xoauth2" } },
          logins_since(good, mark))
      end)

      it("answers a refused token with a base64 JSON error challenge, and fails after the client's empty reply", function()
        local mark = #good:lines()
        local c = connect()
        local final, challenges = exchange(c, "XOAUTH2", xoauth2("alice@example.com", "bad-token"), { "" })
        assert.equal(1, #challenges)
        local json = unb64(challenges[1])
        assert.matches('^{.*"status"%s*:%s*"[^"]+".*}$', json)
        assert.matches(P.failed, final)
        assert.matches("Invalid token", final)
        assert.same({}, logins_since(good, mark))
        -- the exchange is over: the client may try again
        plain_login_works(c)
      end)

      it("gives the client a failure when the upstream refuses the token", function()
        local mark = #refusing:lines()
        local c = connect()
        local final = exchange(c, "XOAUTH2", xoauth2("upstream-refuses", "good-token"), { "" })
        assert.matches(ANY_FAILURE[P.name], final)
        assert.matches("Token rejected upstream", final)
        assert.same({ { user = "upstream-refuses", password = "good-token", mechanism = "xoauth2" } },
          logins_since(refusing, mark))
        if P.name == "imap" then
          -- the mock sent its error challenge: postern answered with an empty line (XOAUTH2)
          local recs = since(refusing, mark)
          local answered = false
          for _, l in ipairs(recs) do
            if l:match("^%d+ $") then answered = true end
          end
          assert.is_true(answered, table.concat(recs, "\n"))
        end
      end)
    end)

    if P.name == "imap" then
      describe("towards an IMAP upstream without SASL-IR", function()
        for _, mech in ipairs { "XOAUTH2", "OAUTHBEARER" } do
          it("sends AUTHENTICATE " .. mech .. " alone and the token after the upstream's \"+\"", function()
            local mark = #no_ir:lines()
            local c = connect()
            local ir = mech == "XOAUTH2" and xoauth2("no-sasl-ir", "good-token") or oauthbearer("no-sasl-ir", "good-token")
            assert.matches(P.ok, (exchange(c, mech, ir)))
            local recs = since(no_ir, mark)
            local cmd
            for _, l in ipairs(recs) do
              cmd = cmd or l:match("^%d+ (%S+ AUTHENTICATE .*)$")
            end
            assert.matches("^%S+ AUTHENTICATE " .. mech .. "$", cmd)
            assert.same({ { user = "no-sasl-ir", password = "good-token", mechanism = mech:lower() } },
              logins_since(no_ir, mark))
          end)
        end
      end)
    end

    describe("OAUTHBEARER", function()
      it("with an initial response: the policy gets the a= user and the token; the upstream gets OAUTHBEARER with the same token", function()
        local mark = #good:lines()
        local c = connect()
        local final, challenges = exchange(c, "OAUTHBEARER", oauthbearer("alice@example.com", "good-token"))
        assert.matches(P.ok, final)
        assert.same({}, challenges)
        local calls = policy_calls(c)
        assert.equal(1, #calls)
        assert.equal("oauthbearer", calls[1].mechanism)
        assert.equal("alice@example.com", calls[1].user)
        assert.equal("good-token", calls[1].password)
        assert.same({ { user = "alice@example.com", password = "good-token", mechanism = "oauthbearer" } },
          logins_since(good, mark))
        assert_relayed_to(c, good, mark)
      end)

      it("without an initial response sends an empty challenge first", function()
        local c = connect()
        local final, challenges = exchange(c, "OAUTHBEARER", nil, { oauthbearer("alice@example.com", "good-token") })
        assert.same({ "" }, challenges)
        assert.matches(P.ok, final)
        assert.equal("oauthbearer", policy_calls(c)[1].mechanism)
      end)

      it("answers a refused token with a JSON error challenge, and fails after the client's %x01 (\"AQ==\")", function()
        local mark = #good:lines()
        local c = connect()
        local final, challenges = exchange(c, "OAUTHBEARER", oauthbearer("alice@example.com", "bad-token"), { "AQ==" })
        assert.equal(1, #challenges)
        assert.matches('^{.*"status"%s*:%s*"[^"]+".*}$', unb64(challenges[1]))
        assert.matches(P.failed, final)
        assert.same({}, logins_since(good, mark))
        plain_login_works(c)
      end)

      it("gives the client a failure when the upstream refuses the token", function()
        local mark = #refusing:lines()
        local c = connect()
        local final = exchange(c, "OAUTHBEARER", oauthbearer("upstream-refuses", "good-token"), { "AQ==" })
        assert.matches(ANY_FAILURE[P.name], final)
        assert.matches("Token rejected upstream", final)
        assert.same({ { user = "upstream-refuses", password = "good-token", mechanism = "oauthbearer" } },
          logins_since(refusing, mark))
        if P.name == "imap" then
          -- RFC 7628 §3.2.3: the client side answers the error challenge with %x01
          local answered = false
          for _, l in ipairs(since(refusing, mark)) do
            if l:match("^%d+ AQ==$") then answered = true end
          end
          assert.is_true(answered, table.concat(since(refusing, mark), "\n"))
        end
      end)

      it("takes a message without an authzid (\"n,,\", RFC 7628 3.1): the policy gets user \"\" and names the user", function()
        local mark = #good:lines()
        local c = connect()
        local final = exchange(c, "OAUTHBEARER", b64("n,,\1auth=Bearer good-token\1\1"))
        assert.matches(P.ok, final)
        local call = policy_calls(c)[1]
        assert.equal("", call.user)
        assert.equal("good-token", call.password)
        assert.same({ { user = "token-owner", password = "good-token", mechanism = "oauthbearer" } },
          logins_since(good, mark))
      end)

      it("decodes =2C and =3D in the a= name (RFC 5801) and keeps the name upstream", function()
        local mark = #good:lines()
        local c = connect()
        local final = exchange(c, "OAUTHBEARER", oauthbearer("cn=3Dalice=2Cdc=3Dexample", "good-token"))
        assert.matches(P.ok, final)
        assert.equal("cn=alice,dc=example", policy_calls(c)[1].user)
        assert.same({ { user = "cn=alice,dc=example", password = "good-token", mechanism = "oauthbearer" } },
          logins_since(good, mark))
      end)
    end)

    describe("\"*\" cancels", function()
      local cases = {
        { "PLAIN at its empty challenge", "PLAIN", nil, { "*" } },
        { "LOGIN at Username:", "LOGIN", nil, { "*" } },
        { "LOGIN at Password:", "LOGIN", nil, { b64("alice"), "*" } },
        { "CRAM-MD5 at its challenge", "CRAM-MD5", nil, { "*" } },
        { "XOAUTH2 at its empty challenge", "XOAUTH2", nil, { "*" } },
        { "OAUTHBEARER at its empty challenge", "OAUTHBEARER", nil, { "*" } },
        { "XOAUTH2 at the error challenge", "XOAUTH2", xoauth2("alice", "bad-token"), { "*" } },
        { "OAUTHBEARER at the error challenge", "OAUTHBEARER", oauthbearer("alice", "bad-token"), { "*" } },
      }
      for _, case in ipairs(cases) do
        local what, mech, ir, responses = case[1], case[2], case[3], case[4]
        it(what .. ", and the client may then log in", function()
          local mark = #good:lines()
          local c = connect()
          local final, challenges = exchange(c, mech, ir, responses)
          assert.equal(#responses, #challenges)
          assert.matches(P.cancelled, final)
          assert.same({}, logins_since(good, mark))
          plain_login_works(c)
          if not ir then
            -- only the PLAIN login reached the policy
            local calls = policy_calls(c)
            assert.equal(1, #calls)
            assert.equal("plain", calls[1].mechanism)
          end
        end)
      end
    end)

    describe("bad base64", function()
      local plain = b64("\0alice\0secret") -- "AGFsaWNlAHNlY3JldA=="
      local cases = {
        { "an unpadded initial response", plain:gsub("=", ""), nil },
        { "an initial response with an illegal character", plain:sub(1, 8) .. "!" .. plain:sub(10), nil },
        { "an initial response with \"=\" in the middle", plain:sub(1, 6) .. "=" .. plain:sub(8), nil },
        { "an unpadded continuation", nil, plain:gsub("=", "") },
        { "a continuation with an illegal character", nil, plain:sub(1, 8) .. "!" .. plain:sub(10) },
        { "a continuation with a space inside", nil, plain:sub(1, 8) .. " " .. plain:sub(9, -2) },
      }
      for _, case in ipairs(cases) do
        local what, ir, cont = case[1], case[2], case[3]
        it("is refused in " .. what .. " and never reaches the policy", function()
          local mark = #good:lines()
          local c = connect()
          local final = exchange(c, "PLAIN", ir, { cont })
          assert.matches(P.bad_base64, final)
          assert.same({}, policy_calls(c))
          assert.same({}, logins_since(good, mark))
          plain_login_works(c)
        end)
      end
    end)

    describe("CR or LF inside decoded credentials", function()
      local cases = {
        { "a PLAIN password", "PLAIN", b64("\0alice\0sec\r\nret"), {} },
        { "a PLAIN user name", "PLAIN", b64("\0ali\nce\0secret"), {} },
        { "a PLAIN authorization identity", "PLAIN", b64("ad\rmin\0alice\0secret"), {} },
        { "a LOGIN user name", "LOGIN", nil, { b64("alice\r\na2 LOGOUT"), b64("secret") } },
        { "a LOGIN password", "LOGIN", nil, { b64("alice"), b64("sec\nret") } },
        { "an XOAUTH2 token", "XOAUTH2", xoauth2("alice", "good-token\r\nQUIT"), {} },
        { "an XOAUTH2 user", "XOAUTH2", xoauth2("ali\rce", "good-token"), {} },
        { "an OAUTHBEARER token", "OAUTHBEARER", oauthbearer("alice", "good-token\nQUIT"), {} },
      }
      for _, case in ipairs(cases) do
        local what, mech, ir, responses = case[1], case[2], case[3], case[4]
        it("in " .. what .. " is refused and reaches neither the policy nor the upstream", function()
          local mark = #good:lines()
          local c = connect()
          local final = exchange(c, mech, ir, responses)
          assert.matches(P.bad_message, final)
          assert.same({}, policy_calls(c))
          -- nothing went upstream (CLOSE records of earlier tests' upstream legs aside)
          local upstream = {}
          for _, l in ipairs(since(good, mark)) do
            if not l:match("^CLOSE ") then upstream[#upstream + 1] = l end
          end
          assert.same({}, upstream)
        end)
      end
    end)

    describe("a NUL inside decoded credentials", function()
      -- a NUL may not be cut off quietly: the policy would judge another
      -- name or token than the one the client sent
      local cases = {
        { "a LOGIN password", "LOGIN", nil, { b64("alice"), b64("secret\0junk") } },
        { "an XOAUTH2 user", "XOAUTH2", xoauth2("alice\0evil", "good-token"), {} },
        { "an XOAUTH2 token", "XOAUTH2", xoauth2("alice", "good-token\0junk"), {} },
        { "an OAUTHBEARER token", "OAUTHBEARER", oauthbearer("alice", "good-token\0junk"), {} },
        { "a PLAIN password (a third NUL)", "PLAIN", b64("\0alice\0secret\0junk"), {} },
      }
      for _, case in ipairs(cases) do
        local what, mech, ir, responses = case[1], case[2], case[3], case[4]
        it("in " .. what .. " is refused, not cut off", function()
          local mark = #good:lines()
          local c = connect()
          local final = exchange(c, mech, ir, responses)
          assert.matches(P.bad_message, final)
          assert.same({}, policy_calls(c))
          assert.same({}, logins_since(good, mark))
        end)
      end
    end)

    describe("credentials of a failed attempt", function()
      it("do not leak into the next: a refused PLAIN with authzid, then LOGIN sees no authzid", function()
        local c = connect()
        assert.matches(P.failed, (exchange(c, "PLAIN", b64("admin\0alice\0wrong"))))
        assert.matches(P.ok, (exchange(c, "LOGIN", nil, { b64("alice"), b64("secret") })))
        local calls = policy_calls(c)
        assert.equal(2, #calls)
        assert.equal("admin", calls[1].authzid)
        assert.equal("login", calls[2].mechanism)
        assert.is_nil(calls[2].authzid)
        assert.equal("secret", calls[2].password)
      end)

      it("do not leak into the next: a refused CRAM-MD5, then PLAIN sees no salt or digest", function()
        local c = connect()
        local final = exchange(c, "CRAM-MD5", nil, {
          function(ch) return b64("cram " .. md5.hmac_hex("wrong", unb64(ch))) end })
        assert.matches(P.failed, final)
        plain_login_works(c)
        local calls = policy_calls(c)
        assert.equal(2, #calls)
        assert.is_string(calls[1].salt)
        assert.equal("plain", calls[2].mechanism)
        assert.is_nil(calls[2].salt)
        assert.is_nil(calls[2].digest)
      end)

      it("do not leak into the next: a cancelled LOGIN after its user name, then XOAUTH2", function()
        local c = connect()
        assert.matches(P.cancelled, (exchange(c, "LOGIN", nil, { b64("mallory"), "*" })))
        assert.matches(P.ok, (exchange(c, "XOAUTH2", nil, { xoauth2("alice", "good-token") })))
        local calls = policy_calls(c)
        assert.equal(1, #calls)
        assert.equal("alice", calls[1].user)
        assert.equal("xoauth2", calls[1].mechanism)
      end)
    end)

    describe("a listener's auth list", function()
      it("advertises every mechanism it offers", function()
        local c = connect(1)
        assert.same({ PLAIN = true, LOGIN = true, ["CRAM-MD5"] = true, XOAUTH2 = true, OAUTHBEARER = true },
          P.mechanisms(c))
      end)

      it("advertises only the mechanisms it offers", function()
        local c = connect(2)
        assert.same({ PLAIN = true }, P.mechanisms(c))
      end)

      local refused = {
        { "LOGIN", nil }, { "CRAM-MD5", nil }, { "XOAUTH2", xoauth2("alice", "good-token") },
        { "OAUTHBEARER", oauthbearer("alice", "good-token") }, { "DIGEST-MD5", nil }, { "EXTERNAL", "=" },
      }
      for _, case in ipairs(refused) do
        local mech, ir = case[1], case[2]
        it("refuses " .. mech .. " when it is not offered", function()
          local c = connect(2)
          P.auth(c, mech, ir)
          local kind, data = P.answer(c)
          assert.equal("final", kind)
          assert.matches(P.unsupported, data)
          assert.same({}, policy_calls(c))
          plain_login_works(c)
        end)
      end
    end)
  end)
end
