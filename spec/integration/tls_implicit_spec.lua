-- TLS towards the client on implicit TLS listeners (IMAP, POP3, SMTP):
-- the handshake and what the session sees, handshake failures, a stalled
-- handshake, records split at every byte and uploads over TLS.
local testing = require "postern.testing"
local shell = require "helpers.shell"
local certs_helper = require "helpers.certs"
local tls = require "helpers.tls"
local scene = require "helpers.scene"
local tl = require "helpers.tls_listeners"
local collect = tl.collect
local uniq = tl.uniq
local policy_line = tl.policy_line
local field = tl.field
local b64 = tl.b64
local plain = tl.plain
local secure = tl.secure
local client_port = tl.client_port
local read_xecho = tl.read_xecho
local ehlo = tl.ehlo
local has_prefix = tl.has_prefix
local capa = tl.capa

-- the shared proxy and its backends, set by tl.start()
local sm, p, port

describe("TLS towards clients #tls", function()
  setup(function()
    local s = tl.start()
    sm, p, port = s.sm, s.p, s.port
  end)

  teardown(tl.stop)
  after_each(tl.close_clients)

  -- ---- implicit TLS ------------------------------------------------------------

  describe("implicit TLS listeners", function()
    it("IMAP: greeting over TLS, login, a 2 MB download and a message fetch; s.tls reaches the policy", function()
      local c = secure("imaps")
      local greeting = c:line()
      assert.matches("^%* OK %[CAPABILITY IMAP4rev1 .*AUTH=PLAIN.*%] postern%.test ready$", greeting)
      assert.is_nil(greeting:find("STARTTLS"), "STARTTLS offered on a TLS port: " .. greeting)
      assert.equal("TLSv1.2", c.tls_protocol)
      local u = uniq("imaps")
      assert.matches("^a1 OK ", (c:command("a1", "LOGIN " .. u .. " secret")))
      local line = policy_line(u)
      assert.equal("true", field(line, "tls"))
      assert.equal("TLSv1.2", field(line, "protocol"))
      assert.matches("^TLS%-", field(line, "cipher"))
      assert.equal("mail.test", field(line, "sni"))
      c:send("a2 XECHO 2000000\r\n")
      local got, all_x = read_xecho(c, "a2", 2000000, 30)
      assert.equal(2000000, got)
      assert.is_true(all_x, "the download was altered")
      assert.matches("^a3 OK", (c:command("a3", "SELECT INBOX")))
      local tagged, untagged = c:command("a3", "FETCH 1 BODY[]")
      assert.matches("^a3 OK", tagged)
      assert.matches("mock%-body from imap%-backend", table.concat(untagged, "\n"))
      local t2, u2 = c:command("a4", "LOGOUT")
      assert.matches("^a4 OK", t2)
      assert.matches("^%* BYE", u2[1])
      assert.is_true(c:closed(3))
    end)

    it("IMAP: a client that does not read a 20 MB download does not make postern's memory grow; others are served",
      function()
        local c = secure("imaps")
        c:line()
        assert.matches("^a1 OK ", (c:command("a1", "LOGIN " .. uniq("bp") .. " secret")))
        local rss0 = assert(scene.rss_kib(p.pid))
        c:send("a2 XECHO 20000000\r\n")
        local peak = rss0
        local other_ok = false
        local t_end = testing.now() + 2.5
        while testing.now() < t_end do
          testing.sleep(0.25)
          local rss = scene.rss_kib(p.pid)
          if not rss then error("postern is gone; log:\n" .. p:log()) end
          peak = math.max(peak, rss)
          if not other_ok then
            local o = secure("imaps")
            o:line()
            assert.matches("^b1 OK ", (o:command("b1", "LOGIN " .. uniq("bp-other") .. " secret")))
            other_ok = o:command("b2", "NOOP", 3) == "b2 OK NOOP completed"
            o:close()
          end
        end
        assert.is_true(other_ok, "another TLS session was held up")
        assert.is_true(peak - rss0 < 10 * 1024,
          ("postern's resident memory grew by %d KiB while the TLS client did not read"):format(peak - rss0))
        local got, all_x = read_xecho(c, "a2", 20000000, 90)
        assert.equal(20000000, got)
        assert.is_true(all_x, "the download was altered")
        assert.equal("a5 OK NOOP completed", (c:command("a5", "NOOP")))
      end)

    it("IMAP: 20000 pipelined commands over TLS are all answered in order (output backpressure before login)",
      function()
        local c = secure("imaps")
        c:line()
        local N = 20000
        local parts = {}
        for i = 1, N do parts[i] = "t" .. i .. " NOOP\r\n" end
        local data = table.concat(parts)
        local s = c.sock
        local sent, count, rest, last_tag = 0, 0, "", nil
        local deadline = testing.now() + 60
        while count < N do
          assert.is_true(testing.now() < deadline,
            ("stalled: %d of %d bytes sent, %d of %d answers"):format(sent, #data, count, N))
          if sent < #data then
            s:settimeout(0)
            local last, _, partial = s:send(data, sent + 1, math.min(#data, sent + 32768))
            local upto = last or partial
            if upto and upto > sent then sent = upto end
          end
          local chunk = c:_recv(testing.now() + 0.02)
          if chunk then
            rest = rest .. chunk
            local consumed = 0
            for line, e in rest:gmatch("([^\r\n]*)\r\n()") do
              local tag = line:match("^(t%d+) OK NOOP completed$")
              assert.is_not_nil(tag, "unexpected answer: " .. line)
              count = count + 1
              assert.equal("t" .. count, tag)
              last_tag = tag
              consumed = e - 1
            end
            rest = rest:sub(consumed + 1)
          end
        end
        assert.equal("t" .. N, last_tag)
        assert.matches("^z OK ", (c:command("z", "LOGIN " .. uniq("pipelined") .. " secret")))
      end)

    it("IMAP: a login pipelined with a 100 KB upload and more commands, over TLS, while the policy is slow",
      function()
        local c = secure("imaps")
        c:line()
        local up = string.rep("abcdefghij", 10000)
        c:send("a1 LOGIN " .. uniq("slow-imap") .. " secret\r\na2 XSINK {100000+}\r\n" .. up .. "\r\na3 NOOP\r\n")
        assert.matches("^a1 OK ", c:line(10))
        assert.equal("a2 OK received 100000", c:line(10))
        assert.matches("^a3 OK", c:line(10))
      end)

    it("SMTP: EHLO, AUTH, MAIL, RCPT and DATA pipelined over TLS while the policy is slow", function()
      local c = secure("smtps")
      assert.equal(220, (c:smtp()))
      c:send("EHLO client.test\r\nAUTH PLAIN " .. b64("\0" .. uniq("slow-smtp") .. "\0secret")
        .. "\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
      assert.equal(250, (c:smtp(nil, 10)))
      assert.equal(235, (c:smtp(nil, 10)))
      assert.equal(250, (c:smtp(nil, 10)))
      assert.equal(250, (c:smtp(nil, 10)))
      assert.equal(354, (c:smtp(nil, 10)))
      local subject = uniq("pipelined-subject")
      local body = string.rep(string.rep("z", 98) .. "\r\n", 1000)
      assert.equal(250, (c:smtp("Subject: " .. subject .. "\r\n\r\n" .. body .. ".", 15)))
      sm:wait_for("^MESSAGE %d+ %d+ " .. subject:gsub("%p", "%%%0") .. "$")
    end)

    it("IMAP: a line longer than client_buffer over TLS gets BAD and the connection is closed", function()
      local c = secure("imaps")
      c:line()
      c:send("a1 NOOP " .. ("x"):rep(16384 - 8))
      local reply = c:line()
      assert.is_truthy(reply:match("^%* BAD") or reply:match("^a1 BAD"), reply)
      assert.is_true(c:closed(3))
      local c2 = secure("imaps")
      c2:line()
      pcall(c2.send, c2, ("y"):rep(256 * 1024))
      assert.is_true(c2:closed(5), "a client streaming without a line end was kept")
      assert.is_true(p:alive())
    end)

    it("POP3: greeting over TLS, CAPA without STLS, USER/PASS, RETR of a 1 MB message", function()
      local c = secure("pop3s")
      assert.matches("^%+OK", c:pop3())
      local set = capa(c)
      assert.is_nil(set.STLS, "STLS offered on a TLS port")
      assert.truthy(set.USER)
      local u = uniq("pop3s")
      assert.matches("^%+OK", c:pop3("USER " .. u))
      assert.matches("^%+OK", c:pop3("PASS secret"))
      assert.equal("true", field(policy_line(u), "tls"))
      local status, lines = c:pop3_multi("RETR 1")
      assert.matches("^%+OK", status)
      assert.matches("pop3%-body from pop%-backend", table.concat(lines, "\n"))
      status, lines = c:pop3_multi("RETR 2", 30)
      assert.matches("^%+OK", status)
      local total = 0
      for _, l in ipairs(lines) do total = total + #l + 2 end
      assert.is_true(total >= 1000000 - 2 and total <= 1000000 + 2, "RETR 2 gave " .. total .. " bytes")
      assert.matches("^%+OK", c:pop3("QUIT"))
      assert.is_true(c:closed(3))
    end)

    it("SMTP: greeting over TLS, EHLO without STARTTLS, AUTH, and a 300 KB message relayed", function()
      local c = secure("smtps")
      assert.equal(220, (c:smtp()))
      local set = ehlo(c)
      assert.is_nil(set.STARTTLS, "STARTTLS offered on a TLS port")
      assert.truthy(has_prefix(set, "AUTH "))
      local u = uniq("smtps")
      assert.equal(235, (c:smtp("AUTH PLAIN " .. b64("\0" .. u .. "\0secret"))))
      assert.equal("true", field(policy_line(u), "tls"))
      assert.equal(250, (c:smtp("MAIL FROM:<a@example.test>")))
      assert.equal(250, (c:smtp("RCPT TO:<b@example.test>")))
      assert.equal(354, (c:smtp("DATA")))
      local body = {}
      for i = 1, 4000 do body[i] = ("line %05d "):format(i) .. string.rep("y", 64) end
      local subject = uniq("smtps-subject")
      assert.equal(250, (c:smtp("Subject: " .. subject .. "\r\n\r\n" .. table.concat(body, "\r\n") .. "\r\n.", 30)))
      local rec = sm:wait_for("^MESSAGE %d+ %d+ " .. subject:gsub("%p", "%%%0") .. "$", 10)
      assert.equal(4002, tonumber(rec:match("^MESSAGE %d+ (%d+)")))
      assert.equal(221, (c:smtp("QUIT")))
    end)
  end)

  -- ---- handshake failures ---------------------------------------------------------

  describe("handshake failures", function()
    it("plaintext sent to a TLS port: closed, logged at info with the client address; others unaffected", function()
      local c = plain("imaps")
      local cport = client_port(c)
      c:send("a1 LOGIN x y\r\n")
      assert.is_true(c:closed(5), "postern kept a connection that sent garbage")
      assert.matches("%[info%]", p:wait_log("client: 127%.0%.0%.1:" .. cport .. ",.*$"))
      local line = p:wait_log("TLS.*client: 127%.0%.0%.1:" .. cport .. ",")
      assert.matches("%[info%]", line)
      local o = secure("imaps")
      assert.matches("^%* OK", o:line())
    end)

    it("random binary garbage, a truncated ClientHello and an abort mid-handshake: no crash", function()
      -- a real ClientHello's first bytes, cut short, then the connection goes away
      local hello = "\22\3\1\2\0\1\0\1\252\3\3" .. string.rep("\1", 32)
      local cs = {}
      for i = 1, 20 do
        local c = plain("imaps")
        if i % 3 == 0 then
          c:send(hello)
        elseif i % 3 == 1 then
          local bytes = {}
          for j = 1, 600 do bytes[j] = string.char((i * 37 + j * 101) % 256) end
          c:send(table.concat(bytes))
        else
          c:send("\22\3\3\255\255" .. string.rep("A", 1000))   -- a record longer than allowed
        end
        cs[#cs + 1] = c
      end
      for i, c in ipairs(cs) do
        if i % 3 == 0 then c:close() end
      end
      for i, c in ipairs(cs) do
        if i % 3 ~= 0 then assert.is_true(c:closed(5), "garbage connection " .. i .. " stayed open") end
      end
      assert.is_true(p:alive())
      local o = secure("imaps")
      o:line()
      assert.matches("^a1 OK", (o:command("a1", "LOGIN " .. uniq("after-garbage") .. " secret")))
    end)

    it("a client without a common protocol version (TLS 1.1 only) fails cleanly", function()
      local out = select(1, shell.run { "timeout", "10", "openssl", "s_client", "-connect",
        "127.0.0.1:" .. port.imaps, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-noservername" })
      assert.is_nil(out:find("\nNew, TLSv1%.1"), out)
      assert.is_true(p:alive())
      local o = secure("imaps")
      assert.matches("^%* OK", o:line())
    end)

    it("a STARTTLS client that sends garbage instead of a ClientHello is closed; the port keeps working", function()
      local c = plain("imap_on")
      c:line()
      assert.equal("a OK Begin TLS negotiation now", (c:command("a", "STARTTLS")))
      c:send("b LOGIN x y\r\n")
      assert.is_true(c:closed(5))
      local o = plain("imap_on")
      assert.matches("^%* OK", o:line())
    end)
  end)
end)

-- ---- a stalled handshake and the strict teardown ------------------------------------

describe("TLS handshake timeout #tls", function()
  it("a client that never completes the handshake is closed after `timeout`, logged at info; stop() is clean",
    function()
      local finally = collect(finally)
      local C2 = certs_helper.get()
      local m = testing.mock_imap { name = "b" }
      finally(function() m:stop() end)
      local px = testing.start {
        policy_source = scene.policy_source { ["*"] = scene.route(m) },
        config = { timeout = 1, tls = { certificate = C2.server, key = C2.server_key },
          listen = { { protocol = "imap", tls = true }, { protocol = "imap", starttls = "on" } } },
      }
      local stopped = false
      finally(function() if not stopped then pcall(px.stop, px) end end)
      local silent = testing.client { port = px.ports[1] }
      finally(function() silent:close() end)
      local _, sport = silent.sock:getsockname()
      local half = testing.client { port = px.ports[1] }
      finally(function() half:close() end)
      half:send("\22\3\1\2\0\1\0\1\252\3\3")
      local st = testing.client { port = px.ports[2] }
      finally(function() st:close() end)
      st:line()
      assert.equal("a OK Begin TLS negotiation now", (st:command("a", "STARTTLS")))
      -- meanwhile a normal session works
      local ok = tls.client { port = px.ports[1], cafile = C2.ca, sni = "mail.test" }
      finally(function() ok:close() end)
      assert.matches("^%* OK", ok:line())
      assert.is_true(silent:closed(4), "a silent client was kept past the timeout")
      assert.is_true(half:closed(4), "a half handshake was kept past the timeout")
      assert.is_true(st:closed(4), "a STARTTLS client that never shook hands was kept past the timeout")
      local line = px:wait_log("TLS handshake timed out, client: 127%.0%.0%.1:" .. sport .. ",")
      assert.matches("%[info%]", line)
      -- a handshake in progress when postern stops: the teardown stays clean
      local last = testing.client { port = px.ports[1] }
      finally(function() last:close() end)
      last:send("\22\3\1\2\0\1\0\1\252\3\3")
      testing.sleep(0.1)
      stopped = true
      assert.equal(0, px:stop())
    end)
end)

-- ---- fragmentation and upload backpressure ---------------------------------------------

describe("TLS records split at every byte, and uploads over TLS #tls", function()
  it("a client whose bytes arrive one by one: handshake, STARTTLS, login and commands all work", function()
    local finally = collect(finally)
    local C10 = certs_helper.get()
    local m = testing.mock_imap { name = "b" }
    finally(function() m:stop() end)
    local px = testing.start {
      policy_source = scene.policy_source { ["*"] = scene.route(m) },
      config = { tls = { certificate = C10.server, key = C10.server_key },
        listen = { { protocol = "imap", tls = true }, { protocol = "imap", starttls = "on" },
          { protocol = "smtp", starttls = "on" } } },
    }
    finally(function() px:stop() end)
    for i, chunk in ipairs { 1 } do
      local d1 = tls.drip { target = px.ports[1], chunk = chunk, delay = 0.0003 }
      finally(function() d1:stop() end)
      local c = tls.client { port = d1.port, cafile = C10.ca, sni = "mail.test", timeout = 15 }
      finally(function() c:close() end)
      assert.matches("^%* OK", c:line())
      assert.matches("^a1 OK", (c:command("a1", "LOGIN drip" .. i .. " secret")))
      assert.matches("^a2 OK", (c:command("a2", "NOOP")))
      c:send("a3 XSINK {500+}\r\n" .. string.rep("q", 500) .. "\r\n")
      assert.equal("a3 OK received 500", c:line(15))
      c:close()

      local d2 = tls.drip { target = px.ports[2], chunk = chunk, delay = 0.0003 }
      finally(function() d2:stop() end)
      local s = testing.client { port = d2.port, timeout = 15 }
      finally(function() s:close() end)
      s:line()
      assert.equal("a OK Begin TLS negotiation now", (s:command("a", "STARTTLS")))
      tls.starttls(s, { cafile = C10.ca, sni = "mail.test" })
      assert.matches("^b OK", (s:command("b", "LOGIN dripst" .. i .. " secret")))
      s:close()

      local d3 = tls.drip { target = px.ports[3], chunk = chunk, delay = 0.0003 }
      finally(function() d3:stop() end)
      local sm3 = testing.client { port = d3.port, timeout = 15 }
      finally(function() sm3:close() end)
      assert.equal(220, (sm3:smtp()))
      assert.equal(250, (sm3:smtp("EHLO drip.test")))
      assert.equal(220, (sm3:smtp("STARTTLS")))
      tls.starttls(sm3, { cafile = C10.ca, sni = "mail.test" })
      assert.equal(250, (sm3:smtp("EHLO drip.test")))
      assert.equal(221, (sm3:smtp("QUIT")))
    end
    assert.is_true(px:alive())
  end)

  it("a TLS client uploading to an upstream that does not read does not make postern's memory grow", function()
    local finally = collect(finally)
    local C11 = certs_helper.get()
    local sc = scene.new(finally)
    local raw = sc:raw_upstream()
    local px = testing.start {
      policy_source = scene.policy_source { ["*"] = scene.route(raw.port) },
      config = { tls = { certificate = C11.server, key = C11.server_key },
        listen = { { protocol = "imap", tls = true } } },
    }
    sc.stops[#sc.stops + 1] = function() px:stop() end
    local c = tls.client { port = px.port, cafile = C11.ca, sni = "mail.test" }
    sc.stops[#sc.stops + 1] = function() c:close() end
    c:line()
    c:send("a1 LOGIN alice secret\r\n")
    raw:accept()
    raw:send("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] raw\r\n")
    local login = raw:line()
    local tag = login:match("^(%S+) ")
    raw:send(tag .. " OK logged in\r\n")
    assert.matches("^a1 OK", c:line(10))
    -- the upstream reads nothing from now on; the client pushes 20 MB
    local rss0 = assert(scene.rss_kib(px.pid))
    local chunk = string.rep("u", 65536)
    local sent, peak = 0, rss0
    local s = c.sock
    local t_end = testing.now() + 3
    while testing.now() < t_end and sent < 20 * 1024 * 1024 do
      s:settimeout(0.05)
      local last, _, partial = s:send(chunk)
      sent = sent + (last or partial or 0)
      peak = math.max(peak, scene.rss_kib(px.pid) or error("postern is gone; log:\n" .. px:log()))
    end
    testing.sleep(0.5)
    peak = math.max(peak, scene.rss_kib(px.pid) or error("postern is gone"))
    assert.is_true(sent < 20 * 1024 * 1024, "all 20 MB went through an upstream that reads nothing")
    assert.is_true(peak - rss0 < 10 * 1024,
      ("postern's resident memory grew by %d KiB while the upstream did not read"):format(peak - rss0))
    -- and postern still serves others
    local o = tls.client { port = px.port, cafile = C11.ca, sni = "mail.test" }
    sc.stops[#sc.stops + 1] = function() o:close() end
    assert.matches("^%* OK", o:line())
  end)
end)
