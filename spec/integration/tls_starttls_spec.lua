-- STARTTLS towards the client: IMAP STARTTLS, POP3 STLS and SMTP STARTTLS
-- with starttls = "on" and "only", and the STARTTLS command injection
-- class (plaintext pipelined behind STARTTLS is dropped, never executed).
local testing = require "postern.testing"
local tls = require "helpers.tls"
local tl = require "helpers.tls_listeners"
local uniq = tl.uniq
local policy_line = tl.policy_line
local field = tl.field
local no_policy_call = tl.no_policy_call
local b64 = tl.b64
local plain = tl.plain
local starttls = tl.starttls
local client_port = tl.client_port
local ehlo = tl.ehlo
local has_prefix = tl.has_prefix
local capa = tl.capa
local words = tl.words
local imap_caps = tl.imap_caps

-- the shared proxy and its backends, set by tl.start()
local C, im, pm, sm, p

describe("TLS towards clients #tls", function()
  setup(function()
    local s = tl.start()
    C, im, pm, sm, p = s.C, s.im, s.pm, s.sm, s.p
  end)

  teardown(tl.stop)
  after_each(tl.close_clients)

  -- ---- STARTTLS ----------------------------------------------------------------

  describe("IMAP STARTTLS", function()
    it("on: STARTTLS and AUTH= offered before, STARTTLS gone after; a second STARTTLS is refused; login", function()
      local c = plain("imap_on")
      local g = c:line()
      local before = words(g:match("%[CAPABILITY (.-)%]"))
      assert.truthy(before.STARTTLS)
      assert.truthy(before["AUTH=PLAIN"])
      assert.is_nil(before.LOGINDISABLED)
      assert.same(before, imap_caps(c, "a0"))
      assert.equal("a1 OK Begin TLS negotiation now", (c:command("a1", "STARTTLS")))
      starttls(c)
      local after = imap_caps(c, "a2")
      assert.is_nil(after.STARTTLS, "STARTTLS still offered over TLS")
      assert.truthy(after["AUTH=PLAIN"])
      assert.matches("^a3 BAD", (c:command("a3", "STARTTLS")))
      local u = uniq("imap-on")
      assert.matches("^a4 OK ", (c:command("a4", "LOGIN " .. u .. " secret")))
      assert.equal("true", field(policy_line(u), "tls"))
      assert.matches("^a5 OK", (c:command("a5", "NOOP")))
    end)

    it("only: LOGINDISABLED and no AUTH= before TLS, LOGIN and AUTHENTICATE refused; after TLS the login works",
      function()
        local c = plain("imap_only")
        local before = words(c:line():match("%[CAPABILITY (.-)%]"))
        assert.truthy(before.STARTTLS)
        assert.truthy(before.LOGINDISABLED)
        for w in pairs(before) do assert.is_nil(w:match("^AUTH="), "offered before TLS: " .. w) end
        assert.same(before, imap_caps(c, "a0"))
        local u = uniq("imap-only")
        assert.equal("a1 NO [PRIVACYREQUIRED] Use STARTTLS first", (c:command("a1", "LOGIN " .. u .. " secret")))
        assert.equal("a2 NO [PRIVACYREQUIRED] Use STARTTLS first",
          (c:command("a2", "AUTHENTICATE PLAIN " .. b64("\0" .. u .. "\0secret"))))
        assert.is_true(no_policy_call(u), "the policy was asked before TLS")
        assert.equal("a3 OK Begin TLS negotiation now", (c:command("a3", "STARTTLS")))
        starttls(c)
        local after = imap_caps(c, "a4")
        assert.is_nil(after.STARTTLS)
        assert.is_nil(after.LOGINDISABLED)
        assert.truthy(after["AUTH=PLAIN"])
        assert.matches("^a5 OK ", (c:command("a5", "LOGIN " .. u .. " secret")))
        assert.equal("true", field(policy_line(u), "tls"))
      end)

    it("off: no STARTTLS in the capabilities, and the command is refused", function()
      local c = plain("imap_plain")
      local g = c:line()
      assert.is_nil(g:find("STARTTLS"))
      assert.is_nil(imap_caps(c, "a0").STARTTLS)
      assert.matches("^a1 BAD", (c:command("a1", "STARTTLS")))
      assert.matches("^a2 OK", (c:command("a2", "NOOP")))
      local u = uniq("imap-plain")
      assert.matches("^a3 OK ", (c:command("a3", "LOGIN " .. u .. " secret")))
      local line = policy_line(u)
      assert.equal("false", field(line, "tls"))
      assert.equal("-", field(line, "sni"))
      assert.equal("-", field(line, "protocol"))
      assert.equal("-", field(line, "cert"))
    end)
  end)

  describe("POP3 STLS", function()
    it("on: STLS, USER and SASL offered before, STLS gone after; a second STLS is refused; login and RETR", function()
      local c = plain("pop3_on")
      assert.matches("^%+OK", c:pop3())
      local before = capa(c)
      assert.truthy(before.STLS)
      assert.truthy(before.USER)
      assert.truthy(before.SASL)
      -- a USER given before STLS is forgotten: after TLS a PASS alone is refused
      local early = uniq("pop3-early")
      assert.matches("^%+OK", c:pop3("USER " .. early))
      assert.equal("+OK Begin TLS negotiation", c:pop3("STLS"))
      starttls(c)
      assert.matches("^%-ERR", c:pop3("PASS secret"))
      assert.is_true(no_policy_call(early), "the USER from before STLS was used")
      local after = capa(c)
      assert.is_nil(after.STLS, "STLS still offered over TLS")
      assert.truthy(after.USER)
      assert.truthy(after.SASL)
      assert.matches("^%-ERR", c:pop3("STLS"))
      local u = uniq("pop3-on")
      assert.matches("^%+OK", c:pop3("USER " .. u))
      assert.matches("^%+OK", c:pop3("PASS secret"))
      assert.equal("true", field(policy_line(u), "tls"))
      local status, lines = c:pop3_multi("RETR 1")
      assert.matches("^%+OK", status)
      assert.matches("pop3%-body", table.concat(lines, "\n"))
    end)

    it("only: CAPA without USER and SASL, USER/PASS/APOP/AUTH refused before TLS; after TLS the login works",
      function()
        local c = plain("pop3_only")
        local greeting = c:pop3()
        assert.matches("^%+OK", greeting)
        local before = capa(c)
        assert.truthy(before.STLS)
        assert.is_nil(before.USER, "USER offered before TLS")
        assert.is_nil(before.SASL, "SASL offered before TLS")
        local u = uniq("pop3-only")
        assert.equal("-ERR Use STLS first", c:pop3("USER " .. u))
        assert.equal("-ERR Use STLS first", c:pop3("PASS secret"))
        assert.equal("-ERR Use STLS first", c:pop3("APOP " .. u .. " 0123456789abcdef0123456789abcdef"))
        assert.equal("-ERR Use STLS first", c:pop3("AUTH PLAIN " .. b64("\0" .. u .. "\0secret")))
        assert.equal("-ERR Use STLS first", c:pop3("AUTH"))
        assert.is_true(no_policy_call(u), "the policy was asked before TLS")
        assert.equal("+OK Begin TLS negotiation", c:pop3("STLS"))
        starttls(c)
        local after = capa(c)
        assert.is_nil(after.STLS)
        assert.truthy(after.USER)
        assert.matches("^%+OK", c:pop3("USER " .. u))
        assert.matches("^%+OK", c:pop3("PASS secret"))
        assert.equal("true", field(policy_line(u), "tls"))
      end)

    it("off: no STLS in CAPA, and STLS is refused", function()
      local c = plain("pop3_plain")
      c:pop3()
      assert.is_nil(capa(c).STLS)
      assert.matches("^%-ERR", c:pop3("STLS"))
      assert.equal("+OK", c:pop3("NOOP"))
    end)
  end)

  describe("SMTP STARTTLS", function()
    it("on: STARTTLS and AUTH before, AUTH without STARTTLS after; EHLO is forgotten; a second STARTTLS is refused",
      function()
        local c = plain("smtp_on")
        assert.equal(220, (c:smtp()))
        local before = ehlo(c, "before.example")
        assert.truthy(before.STARTTLS)
        assert.truthy(has_prefix(before, "AUTH "))
        local code, _, last = c:smtp("STARTTLS")
        assert.equal("220 2.0.0 Ready to start TLS", last)
        assert.equal(220, code)
        starttls(c)
        local u = uniq("smtp-on")
        -- RFC 3207 §4.2: the EHLO before TLS is forgotten
        code = c:smtp("AUTH PLAIN " .. b64("\0" .. u .. "\0secret"))
        assert.equal(503, code)
        local after = ehlo(c, "after.example")
        assert.is_nil(after.STARTTLS, "STARTTLS still offered over TLS")
        assert.truthy(has_prefix(after, "AUTH "))
        assert.equal(503, (c:smtp("STARTTLS")))
        assert.equal(235, (c:smtp("AUTH PLAIN " .. b64("\0" .. u .. "\0secret"))))
        local line = policy_line(u)
        assert.equal("true", field(line, "tls"))
        assert.equal("after.example", field(line, "helo"))
        assert.equal(250, (c:smtp("MAIL FROM:<a@example.test>")))
        assert.equal(250, (c:smtp("RCPT TO:<b@example.test>")))
        assert.equal(354, (c:smtp("DATA")))
        local subject = uniq("smtp-on-subject")
        assert.equal(250, (c:smtp("Subject: " .. subject .. "\r\n\r\nhi\r\n.")))
        sm:wait_for("^MESSAGE %d+ %d+ " .. subject:gsub("%p", "%%%0") .. "$")
      end)

    it("only: EHLO without AUTH and AUTH refused with 530 before TLS; after TLS AUTH is offered and works", function()
      local c = plain("smtp_only")
      assert.equal(220, (c:smtp()))
      local before = ehlo(c)
      assert.truthy(before.STARTTLS)
      assert.is_false(has_prefix(before, "AUTH"), "AUTH offered before TLS")
      local u = uniq("smtp-only")
      local _, _, last = c:smtp("AUTH PLAIN " .. b64("\0" .. u .. "\0secret"))
      assert.equal("530 5.7.0 Must issue a STARTTLS command first", last)
      assert.is_true(no_policy_call(u), "the policy was asked before TLS")
      assert.equal(220, (c:smtp("STARTTLS")))
      starttls(c)
      local after = ehlo(c)
      assert.is_nil(after.STARTTLS)
      assert.truthy(has_prefix(after, "AUTH "))
      assert.equal(235, (c:smtp("AUTH PLAIN " .. b64("\0" .. u .. "\0secret"))))
      assert.equal("true", field(policy_line(u), "tls"))
    end)

    it("auth none: the MAIL FROM given before STARTTLS is forgotten", function()
      local c = plain("smtp_none_on")
      assert.equal(220, (c:smtp()))
      ehlo(c, "before.example")
      assert.equal(250, (c:smtp("MAIL FROM:<before@example.test>")))
      assert.equal(220, (c:smtp("STARTTLS")))
      starttls(c)
      ehlo(c, "after.example")
      local code, _, last = c:smtp("RCPT TO:<b@example.test>")
      assert.equal(503, code, last)
      assert.equal(250, (c:smtp("MAIL FROM:<after@example.test>")))
      assert.equal(250, (c:smtp("RCPT TO:<b@example.test>")))
      local line = p:wait_log("policy: |user=%-|.*|mail_from=after@example%.test|")
      assert.equal("true", field(line, "tls"))
      assert.equal("after.example", field(line, "helo"))
      assert.equal(221, (c:smtp("QUIT")))
    end)

    it("off: no STARTTLS in EHLO, and the command gets 502 5.5.1 (not offered: RFC 5321 4.2.4; nginx 500)", function()
      local c = plain("smtp_plain")
      c:smtp()
      assert.is_nil(ehlo(c).STARTTLS)
      local code, _, last = c:smtp("STARTTLS")
      assert.equal(502, code)
      assert.matches("^502 5%.5%.1 ", last)
      assert.equal(250, (c:smtp("NOOP")))
    end)
  end)

  -- ---- STARTTLS command injection (CVE-2011-0411 class) ---------------------------

  describe("plaintext pipelined behind STARTTLS is dropped, never executed", function()
    local function dropped_line(c, n)
      return p:wait_log("dropped " .. n .. " bytes sent after STARTTLS.*client: 127%.0%.0%.1:" .. client_port(c) .. ",")
    end

    for _, name in ipairs { "imap_on", "imap_only" } do
      it("IMAP (" .. name .. "): 'a STARTTLS\\r\\nb LOGIN x y\\r\\n' in one packet", function()
        local c = plain(name)
        c:line()
        local u = uniq("inject-imap")
        local injected = "b LOGIN " .. u .. " secret\r\n"
        c:send("a STARTTLS\r\n" .. injected)
        assert.equal("a OK Begin TLS negotiation now", c:line())
        starttls(c)   -- fails if any plaintext answer to b followed the OK
        -- a fresh, not logged-in session: postern answers NOOP itself, and LOGIN works
        local tagged, untagged = c:command("c", "CAPABILITY")
        assert.equal("c OK CAPABILITY completed", tagged)
        assert.equal(1, #untagged)
        assert.equal("d OK NOOP completed", (c:command("d", "NOOP")))
        dropped_line(c, #injected)
        assert.is_true(no_policy_call(u), "the injected LOGIN reached the policy")
        for _, l in ipairs(im:lines()) do assert.is_nil(l:find(u, 1, true), "the upstream saw: " .. l) end
        assert.matches("^e OK ", (c:command("e", "LOGIN " .. uniq("inject-imap-real") .. " secret")))
      end)
    end

    it("IMAP: a LOGIN sent in a second packet before the handshake is not executed either", function()
      local c = plain("imap_on")
      c:line()
      local u = uniq("inject-late")
      c:send("a STARTTLS\r\n")
      testing.sleep(0.05)
      c:send("b LOGIN " .. u .. " secret\r\n")
      assert.equal("a OK Begin TLS negotiation now", c:line())
      -- either postern had both packets at once (the LOGIN is dropped, the handshake works)
      -- or it reads the LOGIN as the start of a handshake (which then fails); never executed
      local ok = tls.try_starttls(c, { cafile = C.ca, sni = "mail.test" })
      if ok then
        dropped_line(c, #("b LOGIN " .. u .. " secret\r\n"))
        assert.equal("c OK NOOP completed", (c:command("c", "NOOP")))
      else
        p:wait_log("TLS handshake.*client: 127%.0%.0%.1:" .. client_port(c) .. ",")
      end
      assert.is_true(no_policy_call(u), "the LOGIN sent before the handshake reached the policy")
    end)

    for _, name in ipairs { "pop3_on", "pop3_only" } do
      it("POP3 (" .. name .. "): 'STLS\\r\\nUSER x\\r\\nPASS y\\r\\n' in one packet", function()
        local c = plain(name)
        c:pop3()
        local u = uniq("inject-pop3")
        local injected = "USER " .. u .. "\r\nPASS secret\r\n"
        c:send("STLS\r\n" .. injected)
        assert.equal("+OK Begin TLS negotiation", c:pop3())
        starttls(c)
        -- not logged in: a PASS without USER is refused by postern, STAT is not allowed
        assert.matches("^%-ERR", c:pop3("PASS secret"))
        assert.matches("^%-ERR", c:pop3("STAT"))
        dropped_line(c, #injected)
        assert.is_true(no_policy_call(u), "the injected USER/PASS reached the policy")
        for _, l in ipairs(pm:lines()) do assert.is_nil(l:find(u, 1, true), "the upstream saw: " .. l) end
      end)
    end

    for _, name in ipairs { "smtp_on", "smtp_only" } do
      it("SMTP (" .. name .. "): 'STARTTLS\\r\\nAUTH PLAIN ...\\r\\n' in one packet", function()
        local c = plain(name)
        c:smtp()
        ehlo(c)
        local u = uniq("inject-smtp")
        local injected = "AUTH PLAIN " .. b64("\0" .. u .. "\0secret") .. "\r\nMAIL FROM:<evil@example.test>\r\n"
        c:send("STARTTLS\r\n" .. injected)
        assert.equal("220 2.0.0 Ready to start TLS", select(3, c:smtp()))
        starttls(c)
        ehlo(c)
        -- not authenticated: MAIL is refused
        local code, _, last = c:smtp("MAIL FROM:<a@example.test>")
        assert.equal(530, code, last)
        dropped_line(c, #injected)
        assert.is_true(no_policy_call(u), "the injected AUTH reached the policy")
        for _, l in ipairs(sm:lines()) do assert.is_nil(l:find(u, 1, true), "the upstream saw: " .. l) end
      end)
    end
  end)
end)
