-- TLS towards upstreams: the policy's `tls = "on"` (implicit) and
-- `"starttls"`, certificate verification (on by default, against
-- tls.upstream_ca or the system bundle, the name being `sni` or `host`),
-- `verify = false`, and no plaintext fallback ever.
--
-- Upstreams: the plaintext mocks behind helpers/tls_front.py (a TLS front
-- that records what arrives in plaintext and where the handshake starts)
-- and raw sockets scripted from the test. A real Dovecot with TLS as the
-- upstream: spec/compat/dovecot_tls_spec.lua.
local testing = require "postern.testing"
local certs_helper = require "helpers.certs"
local tls = require "helpers.tls"
local scene = require "helpers.scene"
local mime = require "mime"


-- busted keeps a single `finally` per test: `local finally = collect(finally)` at
-- the top of a test makes every later finally(fn) add to one list, run last-in first-out
local function collect(real_finally)
  local list = {}
  real_finally(function()
    local first
    for i = #list, 1, -1 do
      local ok, err = pcall(list[i])
      if not ok and not first then first = err end
    end
    if first then error(first, 0) end
  end)
  return function(fn) list[#list + 1] = fn end
end

local function b64(s) return (mime.b64(s)) end
local function esc(s) return (s:gsub("%p", "%%%0")) end

-- the policy: routes[s.user] (an upstream table or a list), else a refusal
local function policy_source(routes)
  return "local routes = " .. testing.serialize(routes) .. [[

local postern = require "postern"
return {
  authenticate = function(s)
    postern.log("info", "policy: user=", tostring(s.user), " tls=", tostring(s.tls))
    local r = routes[s.user]
    if not r then return nil, "no route for this user" end
    return r
  end,
}
]]
end

-- records of one front connection id, and checks that nothing but the
-- STARTTLS prelude went in plaintext and that the handshake began with a ClientHello
local function front_conns(f)
  local conns = {}
  for _, l in ipairs(f:lines()) do
    local id = l:match("^CONNECT (%d+)$")
    if id then conns[#conns + 1] = tonumber(id) end
  end
  return conns
end

local function assert_no_plaintext(f, secrets, allowed)
  for _, l in ipairs(f:lines()) do
    for _, s in ipairs(secrets) do
      assert.is_nil(l:find(s, 1, true), "the upstream front saw " .. s .. " in: " .. l)
    end
    local cmd = l:match("^%d+ PLAIN (.*)$")
    if cmd then
      local ok = false
      for _, a in ipairs(allowed or {}) do
        if cmd:upper():find(a, 1, true) then ok = true end
      end
      assert.is_true(ok, "a plaintext command other than the STARTTLS prelude: " .. cmd)
    end
    local first = l:match("^%d+ FIRST (.*)$")
    if first then
      assert.matches("^16 03", first, "the handshake did not start with a TLS record: " .. l)
    end
  end
end

describe("TLS towards upstreams #tls", function()
  local C, im, pm, sm, smx, p
  local F = {}          -- fronts by name
  local routes = {}
  local clients = {}
  local n_user = 0

  local function uniq(prefix)
    n_user = n_user + 1
    return ("%s-%d"):format(prefix, n_user)
  end

  local function client(listener)
    local c = testing.client { port = p.ports[listener] }
    clients[#clients + 1] = c
    return c
  end

  local function imap_login(user, pass)
    local c = client(1)
    c:expect("^%* OK ")
    return c, (c:command("a1", "LOGIN " .. user .. " " .. (pass or "secret"), 15))
  end

  setup(function()
    C = certs_helper.get()
    im = testing.mock_imap { name = "imap-backend" }
    pm = testing.mock_pop3 { name = "pop-backend" }
    sm = testing.mock_smtp { name = "mx-backend" }
    smx = testing.mock_smtp { name = "mx-xclient", xclient = true }
    local function front(name, target, o)
      o.target = target.port
      o.cert = o.cert or C.server
      o.key = o.key or C.server_key
      F[name] = tls.front(o)
    end
    front("imap_on", im, { proto = "imap" })
    front("imap_st", im, { proto = "imap", mode = "starttls" })
    front("pop3_on", pm, { proto = "pop3" })
    front("pop3_st", pm, { proto = "pop3", mode = "starttls" })
    front("smtp_on", sm, { proto = "smtp" })
    front("smtp_st", sm, { proto = "smtp", mode = "starttls" })
    front("untrusted", im, { proto = "imap", cert = C.untrusted, key = C.untrusted_key })
    front("untrusted_st", im, { proto = "imap", mode = "starttls", cert = C.untrusted, key = C.untrusted_key })
    front("wrongname", im, { proto = "imap", cert = C.wrongname, key = C.wrongname_key })
    front("expired", im, { proto = "imap", cert = C.expired, key = C.expired_key })
    front("imap_nostarttls", im, { proto = "imap", mode = "starttls", no_starttls = true })
    front("pop3_nostarttls", pm, { proto = "pop3", mode = "starttls", no_starttls = true })
    front("smtp_nostarttls", sm, { proto = "smtp", mode = "starttls", no_starttls = true })
    front("pop3_untrusted", pm, { proto = "pop3", cert = C.untrusted, key = C.untrusted_key })
    front("smtp_untrusted_st", sm, { proto = "smtp", mode = "starttls", cert = C.untrusted, key = C.untrusted_key })
    front("imap_inject", im, { proto = "imap", mode = "starttls", inject = true })
    front("smtp_inject", sm, { proto = "smtp", mode = "starttls", inject = true })
    front("smtp_xclient_st", smx, { proto = "smtp", mode = "starttls" })
    front("needs_cert", im, { proto = "imap", client_ca = C.ca })

    local function up(name, extra)
      local u = { host = "127.0.0.1", port = F[name].port }
      for k, v in pairs(extra or {}) do u[k] = v end
      return u
    end
    local T = { sni = "mail.test" }
    local function on(x) local t = { tls = "on" }; for k, v in pairs(x or {}) do t[k] = v end; return t end
    local function st(x) local t = { tls = "starttls" }; for k, v in pairs(x or {}) do t[k] = v end; return t end
    routes = {
      ["imap-on"] = up("imap_on", on(T)),
      ["imap-st"] = up("imap_st", st(T)),
      ["pop3-on"] = up("pop3_on", on(T)),
      ["pop3-st"] = up("pop3_st", st(T)),
      ["smtp-on"] = up("smtp_on", on(T)),
      ["smtp-st"] = up("smtp_st", st(T)),
      ["by-host"] = { host = "localhost", port = F.imap_on.port, tls = "on" },     -- the name checked is host
      ["by-host-wrong"] = { host = "localhost", port = F.wrongname.port, tls = "on" },
      untrusted = up("untrusted", on(T)),
      ["untrusted-st"] = up("untrusted_st", st(T)),
      wrongname = up("wrongname", on(T)),
      expired = up("expired", on(T)),
      ["untrusted-noverify"] = up("untrusted", on { sni = "mail.test", verify = false }),
      ["untrusted-st-noverify"] = up("untrusted_st", st { verify = false }),
      ["wrongname-noverify"] = up("wrongname", on { sni = "mail.test", verify = false }),
      ["expired-noverify"] = up("expired", on { verify = false }),
      ["wrongname-sni"] = up("wrongname", on { sni = "other.test" }),   -- sni is the name checked
      ["server-sni-other"] = up("imap_on", on { sni = "other.test" }),
      ["imap-nostarttls"] = up("imap_nostarttls", st(T)),
      ["pop3-nostarttls"] = up("pop3_nostarttls", st(T)),
      ["smtp-nostarttls"] = up("smtp_nostarttls", st(T)),
      ["pop3-untrusted"] = up("pop3_untrusted", on(T)),
      ["smtp-untrusted-st"] = up("smtp_untrusted_st", st(T)),
      ["imap-inject"] = up("imap_inject", st(T)),
      ["smtp-inject"] = up("smtp_inject", st(T)),
      ["smtp-xclient"] = up("smtp_xclient_st", st { sni = "mail.test", xclient = true }),
      ["with-cert"] = up("needs_cert", on { sni = "mail.test", certificate = C.client, key = C.client_key }),
      ["without-cert"] = up("needs_cert", on(T)),
      -- a failing TLS upstream, then a good one: the list goes on (over TLS again)
      ["failover"] = { up("untrusted", on(T)), up("imap_on", on(T)) },
    }
    p = testing.start {
      policy_source = policy_source(routes),
      config = {
        timeout = 10,
        tls = { certificate = C.server, key = C.server_key, upstream_ca = C.ca },
        listen = { { protocol = "imap" }, { protocol = "pop3" }, { protocol = "smtp" } },
      },
    }
  end)

  teardown(function()
    for _, c in ipairs(clients) do pcall(c.close, c) end
    if p then p:stop() end
    for _, f in pairs(F) do f:stop() end
    if im then im:stop() end
    if pm then pm:stop() end
    if sm then sm:stop() end
    if smx then smx:stop() end
  end)

  after_each(function()
    for _, c in ipairs(clients) do pcall(c.close, c) end
    clients = {}
  end)

  -- ---- working TLS upstreams --------------------------------------------------------

  describe("IMAP", function()
    it("tls = \"on\": the login goes over TLS (SNI sent) and the session relays both ways", function()
      local before = #front_conns(F.imap_on)
      local c, tagged = imap_login("imap-on")
      assert.matches("^a1 OK ", tagged)
      im:wait_for("^AUTH imap%-on secret ")
      local conns = front_conns(F.imap_on)
      assert.equal(before + 1, #conns)
      F.imap_on:wait_for("^" .. conns[#conns] .. " TLS TLSv1%.2 %S+ sni=mail%.test$")
      assert_no_plaintext(F.imap_on, { "secret" })
      -- a 2 MB download decrypted, a 100 KB upload encrypted
      c:send("a2 XECHO 2000000\r\n")
      assert.equal("* XECHO {2000000}", c:line(30))
      local data = c:read_bytes(2000000, 30)
      assert.is_nil(data:find("[^x]"), "the download was altered")
      assert.equal("", c:line())
      assert.equal("a2 OK XECHO completed", c:line())
      local up = string.rep("0123456789", 10000)
      c:send("a3 XSINK {100000+}\r\n" .. up .. "\r\n")
      assert.equal("a3 OK received 100000", c:line(15))
      assert.matches("^a4 OK", (c:command("a4", "NOOP")))
      -- the upstream ends the session: the client sees BYE, OK, then the end
      local t5, u5 = c:command("a5", "LOGOUT")
      assert.matches("^a5 OK", t5)
      assert.matches("^%* BYE", u5[1])
      assert.is_true(c:closed(3), "the session stayed open after the upstream closed")
    end)

    it("shows the policy's client certificate to an upstream that requires one", function()
      local before = #front_conns(F.needs_cert)
      local _, tagged = imap_login("with-cert")
      assert.matches("^a1 OK ", tagged)
      local conns = front_conns(F.needs_cert)
      assert.equal(before + 1, #conns)
      F.needs_cert:wait_for("^" .. conns[#conns] .. " PEER client1$")
    end)

    it("fails temporarily when an upstream requires a client certificate and the policy gives none", function()
      local _, tagged = imap_login("without-cert")
      assert.matches("^a1 NO %[UNAVAILABLE%]", tagged)
    end)

    it("tls = \"on\": a client that does not read a 20 MB download does not make postern's memory grow", function()
      local c, tagged = imap_login("imap-on")
      assert.matches("^a1 OK ", tagged)
      local rss0 = assert(scene.rss_kib(p.pid))
      c:send("a2 XECHO 20000000\r\n")
      local peak = rss0
      local t_end = testing.now() + 2.5
      while testing.now() < t_end do
        testing.sleep(0.25)
        local rss = scene.rss_kib(p.pid)
        if not rss then error("postern is gone; log:\n" .. p:log()) end
        peak = math.max(peak, rss)
      end
      assert.is_true(peak - rss0 < 10 * 1024,
        ("postern's resident memory grew by %d KiB while the client did not read"):format(peak - rss0))
      assert.equal("* XECHO {20000000}", c:line(30))
      local got = 0
      while got < 20000000 do
        local chunk = c:read_bytes(math.min(1000000, 20000000 - got), 60)
        assert.is_nil(chunk:find("[^x]"), "the download was altered")
        got = got + #chunk
      end
      assert.equal("", c:line())
      assert.equal("a2 OK XECHO completed", c:line())
    end)

    it("tls = \"starttls\": only STARTTLS goes in plaintext; CAPABILITY is asked again over TLS; login and relay",
      function()
        local c, tagged = imap_login("imap-st")
        assert.matches("^a1 OK ", tagged)
        F.imap_st:wait_for("^%d+ PLAIN P0 STARTTLS$")
        F.imap_st:wait_for("^%d+ TLS TLSv1%.2 %S+ sni=mail%.test$")
        assert_no_plaintext(F.imap_st, { "secret" }, { "STARTTLS" })
        -- after TLS the mock (behind the front) got CAPABILITY first, then the login
        local cmds = scene.commands(im)
        local cap_i, login_i
        for i, l in ipairs(cmds) do
          if l == "P1 CAPABILITY" then cap_i = i end
          if l:find("imap-st", 1, true) and cap_i and not login_i then login_i = i end
        end
        assert.is_not_nil(cap_i, "no CAPABILITY after STARTTLS:\n" .. table.concat(cmds, "\n"))
        assert.is_not_nil(login_i)
        assert.matches("^a2 OK", (c:command("a2", "SELECT INBOX")))
        local t3, u3 = c:command("a3", "FETCH 1 BODY[]")
        assert.matches("^a3 OK", t3)
        assert.matches("mock%-body from imap%-backend", table.concat(u3, "\n"))
      end)

    it("the name checked is `host` when there is no `sni`", function()
      local _, tagged = imap_login("by-host")
      assert.matches("^a1 OK ", tagged)
      local _, t2 = imap_login("by-host-wrong")
      assert.matches("^a1 NO %[UNAVAILABLE%]", t2)
      p:wait_log("certificate verification failed.*login: \"by%-host%-wrong\"")
    end)
  end)

  describe("POP3 and SMTP", function()
    for _, name in ipairs { "pop3-on", "pop3-st" } do
      it(name .. ": login over TLS and RETR", function()
        local c = client(2)
        assert.matches("^%+OK", c:pop3())
        assert.matches("^%+OK", c:pop3("USER " .. name))
        assert.matches("^%+OK", c:pop3("PASS secret", 15))
        local status, lines = c:pop3_multi("RETR 1")
        assert.matches("^%+OK", status)
        assert.matches("pop3%-body from pop%-backend", table.concat(lines, "\n"))
        local f = name == "pop3-on" and F.pop3_on or F.pop3_st
        f:wait_for("^%d+ TLS TLSv1%.2 ")
        assert_no_plaintext(f, { "secret" }, { "STLS" })
        if name == "pop3-st" then f:wait_for("^%d+ PLAIN STLS$") end
        pm:wait_for("^AUTH " .. esc(name) .. " secret ")
      end)
    end

    for _, name in ipairs { "smtp-on", "smtp-st" } do
      it(name .. ": AUTH over TLS and a message", function()
        local c = client(3)
        assert.equal(220, (c:smtp()))
        assert.equal(250, (c:smtp("EHLO client.test")))
        local code, _, last = c:smtp("AUTH PLAIN " .. b64("\0" .. name .. "\0secret"), 15)
        assert.equal(235, code, last)
        assert.equal(250, (c:smtp("MAIL FROM:<a@example.test>")))
        assert.equal(250, (c:smtp("RCPT TO:<b@example.test>")))
        assert.equal(354, (c:smtp("DATA")))
        local subject = uniq(name)
        assert.equal(250, (c:smtp("Subject: " .. subject .. "\r\n\r\nhi\r\n.")))
        sm:wait_for("^MESSAGE %d+ %d+ " .. esc(subject) .. "$")
        local f = name == "smtp-on" and F.smtp_on or F.smtp_st
        f:wait_for("^%d+ TLS TLSv1%.2 ")
        assert_no_plaintext(f, { "secret", b64("\0" .. name .. "\0secret") }, { "EHLO", "STARTTLS" })
        if name == "smtp-st" then f:wait_for("^%d+ PLAIN STARTTLS$") end
      end)
    end
    it("SMTP STARTTLS then XCLIENT: the EHLO after TLS is what counts, XCLIENT goes over TLS", function()
      local c = client(3)
      assert.equal(220, (c:smtp()))
      assert.equal(250, (c:smtp("EHLO client.test")))
      local code, _, last = c:smtp("AUTH PLAIN " .. b64("\0smtp-xclient\0secret"), 15)
      assert.equal(235, code, last)
      smx:wait_for("^XCLIENT ADDR=127%.0%.0%.1")
      -- the front's plaintext EHLO reply had no XCLIENT: only the one after TLS offered it
      assert_no_plaintext(F.smtp_xclient_st, { "secret", "XCLIENT" }, { "EHLO", "STARTTLS" })
      assert.equal(250, (c:smtp("MAIL FROM:<a@example.test>")))
      assert.equal(221, (c:smtp("QUIT")))
    end)
  end)

  -- ---- verification -----------------------------------------------------------------

  describe("certificate verification (on by default)", function()
    local cases = {
      { "untrusted", "untrusted", "not correctly signed by the trusted CA" },
      { "untrusted-st", "untrusted_st", "not correctly signed by the trusted CA" },
      { "wrongname", "wrongname", "Common Name %(CN%) does not match" },
      { "expired", "expired", "validity has expired" },
      { "server-sni-other", "imap_on", "Common Name %(CN%) does not match" },
    }
    for _, case in ipairs(cases) do
      local user, fname, why = case[1], case[2], case[3]
      it(user .. ": a temporary failure for the client, a clear log line, nothing in plaintext", function()
        local f = F[fname]
        local before = #front_conns(f)
        local mock_auths = #im:logins()
        local c, tagged = imap_login(user)
        assert.matches("^a1 NO %[UNAVAILABLE%] ", tagged)
        local line = p:wait_log("certificate verification failed.*login: \"" .. esc(user) .. "\"")
        assert.matches(why, line)
        -- exactly one connection to the upstream, a handshake that the proxy aborted
        testing.sleep(0.2)
        local conns = front_conns(f)
        assert.equal(before + 1, #conns, "postern connected again (a plaintext fallback?)")
        f:wait_for("^" .. conns[#conns] .. " TLSFAIL ")
        assert_no_plaintext(f, { user .. " secret", "LOGIN " .. user }, { "STARTTLS" })
        assert.equal(mock_auths, #im:logins(), "the login reached the backend")
        -- the session is still usable (a temporary failure, not a dropped client)
        assert.matches("^a2 OK", (c:command("a2", "NOOP")))
      end)
    end

    it("POP3: an untrusted upstream gives -ERR [SYS/TEMP]", function()
      local c = client(2)
      c:pop3()
      c:pop3("USER pop3-untrusted")
      assert.matches("^%-ERR %[SYS/TEMP%]", c:pop3("PASS secret", 15))
      p:wait_log("certificate verification failed.*login: \"pop3%-untrusted\"")
      assert_no_plaintext(F.pop3_untrusted, { "secret" })
    end)

    it("SMTP: an untrusted STARTTLS upstream gives a 4xx reply", function()
      local c = client(3)
      c:smtp()
      c:smtp("EHLO client.test")
      local code, _, last = c:smtp("AUTH PLAIN " .. b64("\0smtp-untrusted-st\0secret"), 15)
      assert.is_true(code >= 400 and code < 500, last)
      p:wait_log("certificate verification failed.*login: \"smtp%-untrusted%-st\"")
      assert_no_plaintext(F.smtp_untrusted_st, { "secret", b64("\0smtp-untrusted-st\0secret") },
        { "EHLO", "STARTTLS", "QUIT" })
    end)

    for _, user in ipairs { "untrusted-noverify", "untrusted-st-noverify", "wrongname-noverify", "expired-noverify" } do
      it(user .. ": verify = false accepts the certificate", function()
        local c, tagged = imap_login(user)
        assert.matches("^a1 OK ", tagged)
        im:wait_for("^AUTH " .. esc(user) .. " secret ")
        assert.matches("^a2 OK", (c:command("a2", "NOOP")))
      end)
    end

    it("sni is the name checked (and sent)", function()
      local _, tagged = imap_login("wrongname-sni")
      assert.matches("^a1 OK ", tagged)
      F.wrongname:wait_for("^%d+ TLS TLSv1%.2 %S+ sni=other%.test$")
    end)

    it("a list of upstreams: a verification failure moves on to the next one, over TLS again", function()
      local _, tagged = imap_login("failover")
      assert.matches("^a1 OK ", tagged)
      im:wait_for("^AUTH failover secret ")
      p:wait_log("certificate verification failed.*login: \"failover\"")
    end)
  end)

  -- ---- no plaintext fallback -----------------------------------------------------------

  describe("no fallback to plaintext", function()
    it("IMAP: an upstream that refuses STARTTLS gives a temporary failure; no LOGIN in plaintext", function()
      local _, tagged = imap_login("imap-nostarttls")
      assert.matches("^a1 NO %[UNAVAILABLE%]", tagged)
      p:wait_log("STARTTLS.*login: \"imap%-nostarttls\"")
      F.imap_nostarttls:wait_for("^%d+ PLAIN P0 STARTTLS$")
      assert_no_plaintext(F.imap_nostarttls, { "secret" }, { "STARTTLS", "LOGOUT" })
    end)

    it("POP3: an upstream that refuses STLS gives -ERR [SYS/TEMP]; no USER/PASS in plaintext", function()
      local c = client(2)
      c:pop3()
      c:pop3("USER pop3-nostarttls")
      assert.matches("^%-ERR %[SYS/TEMP%]", c:pop3("PASS secret", 15))
      F.pop3_nostarttls:wait_for("^%d+ PLAIN STLS$")
      assert_no_plaintext(F.pop3_nostarttls, { "secret", "pop3-nostarttls" }, { "STLS", "QUIT" })
    end)

    it("SMTP: an upstream without STARTTLS in EHLO gives a 4xx; no AUTH in plaintext", function()
      local c = client(3)
      c:smtp()
      c:smtp("EHLO client.test")
      local code, _, last = c:smtp("AUTH PLAIN " .. b64("\0smtp-nostarttls\0secret"), 15)
      assert.is_true(code >= 400 and code < 500, last)
      p:wait_log("STARTTLS.*login: \"smtp%-nostarttls\"")
      assert_no_plaintext(F.smtp_nostarttls, { "secret", b64("\0smtp-nostarttls\0secret") }, { "EHLO", "QUIT" })
    end)

    -- raw upstreams scripted from the test
    it("IMAP STARTTLS: a PREAUTH greeting is refused (STARTTLS stripping); nothing is sent to it", function()
      local finally = collect(finally)
      local sc = scene.new(finally)
      local raw = sc:raw_upstream()
      local px = testing.start {
        policy_source = policy_source { ["*"] = nil, preauth = { host = "127.0.0.1", port = raw.port,
          tls = "starttls", sni = "mail.test" } },
        config = { tls = { certificate = C.server, key = C.server_key, upstream_ca = C.ca } },
      }
      sc.stops[#sc.stops + 1] = function() px:stop() end
      local c = testing.client { port = px.port }
      sc.stops[#sc.stops + 1] = function() c:close() end
      c:expect("^%* OK")
      c:send("a1 LOGIN preauth secret\r\n")
      raw:accept()
      raw:send("* PREAUTH [CAPABILITY IMAP4rev1] logged in already\r\n")
      assert.matches("^a1 NO %[UNAVAILABLE%]", c:line(10))
      raw.s:settimeout(1)
      local got, err, partial = raw.s:receive("*a")
      local all = got or partial or ""
      assert.is_nil(all:find("LOGIN", 1, true), "sent to a PREAUTH upstream: " .. all)
      assert.is_nil(all:find("secret", 1, true), "sent to a PREAUTH upstream: " .. all)
      assert.is_true(err == "closed" or err == "timeout")
    end)

    it("IMAP tls = \"on\": an upstream that answers in plaintext gets nothing but a ClientHello", function()
      local finally = collect(finally)
      local sc = scene.new(finally)
      local raw = sc:raw_upstream()
      local px = testing.start {
        policy_source = policy_source { plain = { host = "127.0.0.1", port = raw.port, tls = "on",
          sni = "mail.test" } },
        config = { tls = { certificate = C.server, key = C.server_key, upstream_ca = C.ca } },
      }
      sc.stops[#sc.stops + 1] = function() px:stop() end
      local c = testing.client { port = px.port }
      sc.stops[#sc.stops + 1] = function() c:close() end
      c:expect("^%* OK")
      c:send("a1 LOGIN plain secret\r\n")
      raw:accept()
      raw.s:settimeout(5)
      local head = assert(raw.s:receive(3))
      assert.equal("\22\3", head:sub(1, 2), "not a TLS record")
      raw:send("* OK [CAPABILITY IMAP4rev1] plaintext server\r\n")
      assert.matches("^a1 NO %[UNAVAILABLE%]", c:line(10))
      raw.s:settimeout(1)
      local got, _, partial = raw.s:receive("*a")
      local all = head .. (got or partial or "")
      assert.is_nil(all:find("LOGIN", 1, true), "plaintext sent after a failed handshake: " .. all)
      assert.is_nil(all:find("secret", 1, true))
      px:wait_log("TLS with the upstream failed")
    end)

    it("IMAP STARTTLS: after the upstream's OK, the next bytes are a ClientHello, never the LOGIN", function()
      local finally = collect(finally)
      local sc = scene.new(finally)
      local raw = sc:raw_upstream()
      local px = testing.start {
        policy_source = policy_source { st = { host = "127.0.0.1", port = raw.port, tls = "starttls",
          sni = "mail.test" } },
        config = { tls = { certificate = C.server, key = C.server_key, upstream_ca = C.ca } },
      }
      sc.stops[#sc.stops + 1] = function() px:stop() end
      local c = testing.client { port = px.port }
      sc.stops[#sc.stops + 1] = function() c:close() end
      c:expect("^%* OK")
      c:send("a1 LOGIN st secret\r\n")
      raw:accept()
      raw:send("* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
      local tag = raw:line():match("^(%S+) STARTTLS\r?$")
      assert.is_not_nil(tag, "expected STARTTLS first")
      raw:send(tag .. " OK go ahead\r\n")
      local head = assert(raw.s:receive(3))
      assert.equal("\22\3", head:sub(1, 2), "not a TLS record after STARTTLS")
      raw:send("* BYE no TLS here after all\r\n")
      assert.matches("^a1 NO %[UNAVAILABLE%]", c:line(10))
      raw.s:settimeout(1)
      local got, _, partial = raw.s:receive("*a")
      local all = got or partial or ""
      assert.is_nil(all:find("LOGIN", 1, true), "plaintext sent after a failed handshake: " .. all)
    end)

    it("an upstream that never answers the ClientHello: a temporary failure after `timeout`", function()
      local finally = collect(finally)
      local sc = scene.new(finally)
      local raw = sc:raw_upstream()
      local px = testing.start {
        policy_source = policy_source { mute = { host = "127.0.0.1", port = raw.port, tls = "on",
          sni = "mail.test" } },
        config = { timeout = 1, tls = { certificate = C.server, key = C.server_key, upstream_ca = C.ca } },
      }
      sc.stops[#sc.stops + 1] = function() px:stop() end
      local c = testing.client { port = px.port }
      sc.stops[#sc.stops + 1] = function() c:close() end
      c:expect("^%* OK")
      c:send("a1 LOGIN mute secret\r\n")
      raw:accept()
      local head = assert(raw.s:receive(3))
      assert.equal("\22\3", head:sub(1, 2))
      local t0 = testing.now()
      assert.matches("^a1 NO %[UNAVAILABLE%]", c:line(5))
      assert.is_true(testing.now() - t0 < 4)
      raw.s:settimeout(3)
      local rest, err = raw.s:receive("*a")   -- whatever postern sends (an alert at most), then EOF
      assert.is_not_nil(rest, "postern kept the upstream connection: " .. tostring(err))
      assert.matches("^a2 OK", (c:command("a2", "NOOP")))
    end)

    it("STARTTLS response injection: plaintext after the upstream's go-ahead never reaches the client", function()
      for _, case in ipairs { { "imap-inject", 1 }, { "smtp-inject", 3 } } do
        local c = client(case[2])
        local reply
        if case[2] == 1 then
          c:expect("^%* OK ")
          local tagged, untagged = c:command("a1", "LOGIN imap-inject secret", 15)
          reply = tagged .. "\n" .. table.concat(untagged, "\n")
          assert.is_true(tagged:match("^a1 OK ") ~= nil or tagged:match("^a1 NO %[UNAVAILABLE%]") ~= nil, tagged)
          if tagged:match("^a1 OK") then
            local t2, u2 = c:command("a2", "CAPABILITY")
            reply = reply .. "\n" .. t2 .. "\n" .. table.concat(u2, "\n")
          end
        else
          c:smtp()
          c:smtp("EHLO client.test")
          local code, texts, last = c:smtp("AUTH PLAIN " .. b64("\0smtp-inject\0secret"), 15)
          reply = table.concat(texts, "\n") .. last
          assert.is_true(code == 235 or (code >= 400 and code < 500), last)
        end
        assert.is_nil(reply:find("INJECTED", 1, true), "the injected response reached the client: " .. reply)
        assert.is_nil(reply:find("injected", 1, true), "the injected response reached the client: " .. reply)
        assert.is_true(p:alive())
      end
    end)
  end)

  describe("the CA", function()
    it("without upstream_ca the system bundle is used: the test CA is not trusted", function()
      local finally = collect(finally)
      local px = testing.start {
        policy_source = policy_source { x = { host = "127.0.0.1", port = F.imap_on.port, tls = "on",
          sni = "mail.test" } },
        config = { tls = { certificate = C.server, key = C.server_key } },
      }
      finally(function() px:stop() end)
      local c = testing.client { port = px.port }
      finally(function() c:close() end)
      c:expect("^%* OK")
      assert.matches("^a1 NO %[UNAVAILABLE%]", (c:command("a1", "LOGIN x secret", 15)))
      px:wait_log("certificate verification failed")
    end)

    it("without any tls section, a TLS upstream still verifies against the system bundle", function()
      local finally = collect(finally)
      local px = testing.start {
        policy_source = policy_source { x = { host = "127.0.0.1", port = F.imap_on.port, tls = "on",
          sni = "mail.test" }, y = { host = "127.0.0.1", port = F.untrusted.port, tls = "on", verify = false } },
      }
      finally(function() px:stop() end)
      local c = testing.client { port = px.port }
      finally(function() c:close() end)
      c:expect("^%* OK")
      assert.matches("^a1 NO %[UNAVAILABLE%]", (c:command("a1", "LOGIN x secret", 15)))
      px:wait_log("certificate verification failed")
      assert.matches("^a2 OK ", (c:command("a2", "LOGIN y secret", 15)))
    end)
  end)
end)
