-- TLS towards the client: implicit TLS listeners (IMAP, POP3, SMTP),
-- STARTTLS / STLS with starttls = "on" and "only", the STARTTLS command
-- injection class, SNI, session resumption, client certificates,
-- handshake failures, real clients (openssl s_client, curl, Python) and
-- `postern -t` on certificate problems.
--
-- The backends are the plaintext mocks; the test PKI comes from
-- helpers.certs (CA, mail.test, mail.example.org, *.example.net, client1).
local testing = require "postern.testing"
local shell = require "helpers.shell"
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
local HELPERS = testing.root .. "/spec/helpers"

-- the listeners of the shared proxy, by name (the name is not a config key)
local LISTENERS = {
  { "imaps", { protocol = "imap", tls = true } },
  { "pop3s", { protocol = "pop3", tls = true } },
  { "smtps", { protocol = "smtp", tls = true } },
  { "imap_on", { protocol = "imap", starttls = "on" } },
  { "imap_only", { protocol = "imap", starttls = "only" } },
  { "pop3_on", { protocol = "pop3", starttls = "on", auth = { "user", "plain", "apop" } } },
  { "pop3_only", { protocol = "pop3", starttls = "only", auth = { "user", "plain", "apop" } } },
  { "smtp_on", { protocol = "smtp", starttls = "on" } },
  { "smtp_only", { protocol = "smtp", starttls = "only" } },
  { "smtp_none_on", { protocol = "smtp", starttls = "on", auth = { "none" } } },
  { "imap_plain", { protocol = "imap" } },
  { "pop3_plain", { protocol = "pop3" } },
  { "smtp_plain", { protocol = "smtp" } },
  { "cc_optional", { protocol = "imap", tls = true, verify_client = "optional", client_ca = "CA" } },
  { "cc_required", { protocol = "imap", tls = true, verify_client = "on", client_ca = "CA" } },
}

-- The policy logs what it got on one line, then routes by protocol.
local POLICY = [[
local postern = require "postern"
local routes = %s
local function v(x) if x == nil then return "-" end return tostring(x) end
return {
  authenticate = function(s)
    local cc = s.client_cert or {}
    postern.log("info", "policy: |user=", v(s.user), "|tls=", v(s.tls), "|sni=", v(s.sni),
      "|protocol=", v(s.tls_protocol), "|cipher=", v(s.tls_cipher), "|helo=", v(s.helo),
      "|mail_from=", v(s.mail_from), "|cert=", v(cc.subject), "|issuer=", v(cc.issuer),
      "|serial=", v(cc.serial), "|fp=", v(cc.fingerprint), "|")
    if s.user and s.user:match("^slow") then postern.sleep(0.5) end
    if s.mechanism ~= "none" and s.password ~= "secret" then
      return nil, "Invalid login or password"
    end
    return routes[s.protocol]
  end,
}
]]

local C, im, pm, sm, p
local port = {}
local n_user = 0

local function uniq(prefix)
  n_user = n_user + 1
  return ("%s-%d"):format(prefix, n_user)
end

-- the policy's line for user u, and one field of it
local function policy_line(u, timeout)
  return p:wait_log("policy: |user=" .. u:gsub("%p", "%%%0") .. "|", timeout)
end

local function field(line, name)
  return line:match("|" .. name .. "=([^|]*)|")
end

local function no_policy_call(u)
  return not p:log():find("policy: |user=" .. u .. "|", 1, true)
end

local function b64(s) return (mime.b64(s)) end
local b64_ext = b64

local clients = {}
local function track(c) clients[#clients + 1] = c; return c end

local function plain(name, opts)
  opts = opts or {}
  opts.port = port[name]
  local c = track(testing.client(opts))
  c.local_port = tonumber((select(2, c.sock:getsockname())))
  return c
end

local function secure(name, opts)
  opts = opts or {}
  opts.port = port[name]
  opts.cafile = opts.cafile or C.ca
  opts.sni = opts.sni == nil and "mail.test" or opts.sni or nil
  return track(tls.client(opts))
end

local function starttls(c, opts)
  opts = opts or {}
  opts.cafile = opts.cafile or C.ca
  opts.sni = opts.sni == nil and "mail.test" or opts.sni or nil
  return tls.starttls(c, opts)
end

-- the local port of a client (to find its log lines)
local function client_port(c)
  if c.local_port then return c.local_port end
  local _, cport = c.sock:getsockname()
  return tonumber(cport)
end

-- read the `* XECHO {n}` answer to `tag XECHO n` without keeping the n bytes
local function read_xecho(c, tag, n, timeout)
  assert.equal("* XECHO {" .. n .. "}", c:line(timeout))
  local deadline = testing.now() + timeout
  local got, all_x = 0, true
  local function take(data)
    local need = n - got
    if #data > need then
      c.buf = data:sub(need + 1) .. c.buf
      data = data:sub(1, need)
    end
    if data:find("[^x]") then all_x = false end
    got = got + #data
  end
  local pending = c.buf
  c.buf = ""
  take(pending)
  while got < n do
    local data, err = c:_recv(deadline)
    if not data then error(("%s after %d of %d bytes"):format(tostring(err), got, n), 2) end
    take(data)
  end
  assert.equal("", c:line(timeout))
  assert.equal(tag .. " OK XECHO completed", c:line(timeout))
  return got, all_x
end

local function ehlo(c, name)
  local code, kw = c:smtp("EHLO " .. (name or "client.test"))
  assert.equal(250, code)
  local set = {}
  for i = 2, #kw do set[kw[i]] = true end
  return set, kw
end

local function has_prefix(set, prefix)
  for k in pairs(set) do
    if k:sub(1, #prefix) == prefix then return true end
  end
  return false
end

-- CAPA lines as a set
local function capa(c)
  local status, lines = c:pop3_multi("CAPA")
  assert.matches("^%+OK", status)
  local set = {}
  for _, l in ipairs(lines) do set[l:match("^(%S+)")] = true end
  return set, lines
end

local function words(s)
  local set = {}
  for w in s:gmatch("%S+") do set[w] = true end
  return set
end

local function imap_caps(c, tag)
  local tagged, untagged = c:command(tag, "CAPABILITY")
  assert.equal(tag .. " OK CAPABILITY completed", tagged)
  assert.equal(1, #untagged)
  return words(untagged[1]:match("^%* CAPABILITY (.*)$"))
end

describe("TLS towards clients #tls", function()
  setup(function()
    C = certs_helper.get()
    im = testing.mock_imap { name = "imap-backend" }
    pm = testing.mock_pop3 { name = "pop-backend", big = 1000000 }
    sm = testing.mock_smtp { name = "mx-backend" }
    local listen = {}
    for i, l in ipairs(LISTENERS) do
      local e = {}
      for k, val in pairs(l[2]) do e[k] = val == "CA" and C.ca or val end
      listen[i] = e
    end
    p = testing.start {
      policy_source = POLICY:format(testing.serialize {
        imap = { host = "127.0.0.1", port = im.port },
        pop3 = { host = "127.0.0.1", port = pm.port },
        smtp = { host = "127.0.0.1", port = sm.port },
      }),
      config = {
        timeout = 10,
        tls = {
          certificate = C.server, key = C.server_key,
          certificates = {
            ["mail.example.org"] = { certificate = C.org, key = C.org_key },
            ["*.example.net"] = { certificate = C.wild, key = C.wild_key },
          },
        },
        listen = listen,
      },
    }
    for i, l in ipairs(LISTENERS) do port[l[1]] = p.ports[i] end
  end)

  teardown(function()
    for _, c in ipairs(clients) do pcall(c.close, c) end
    -- strict: fails on [alert]/[crit], sanitizer reports, a non-zero exit
    if p then p:stop() end
    if im then im:stop() end
    if pm then pm:stop() end
    if sm then sm:stop() end
  end)

  after_each(function()
    for _, c in ipairs(clients) do pcall(c.close, c) end
    clients = {}
  end)

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

  -- ---- SNI ---------------------------------------------------------------------------

  describe("SNI", function()
    -- openssl s_client's view of the served certificate: subject line, verify result
    local function served(listener, servername, extra)
      local argv = { "openssl", "s_client", "-connect", "127.0.0.1:" .. port[listener], "-CAfile", C.ca }
      if servername then
        argv[#argv + 1] = "-servername"
        argv[#argv + 1] = servername
      else
        argv[#argv + 1] = "-noservername"
      end
      for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
      local q = {}
      for i, a in ipairs(argv) do q[i] = shell.quote(a) end
      local h = io.popen("timeout 10 " .. table.concat(q, " ") .. " </dev/null 2>&1")
      local out = h:read("*a")
      h:close()
      return out:match("\nsubject=([^\n]*)"), out
    end

    local cases = {
      { "mail.example.org", "CN = mail.example.org" },
      { "MAIL.Example.ORG", "CN = mail.example.org" },
      { "imap.example.net", "CN = *.example.net" },
      { "a.b.example.net", "CN = mail.test" },      -- a wildcard covers one label
      { "unknown.test", "CN = mail.test" },
      { false, "CN = mail.test" },                   -- no SNI: the default
    }
    for _, case in ipairs(cases) do
      it(("picks %s for %s"):format(case[2], case[1] or "a client without SNI"), function()
        local subject, out = served("imaps", case[1] or nil)
        assert.is_not_nil(subject, out)
        assert.matches(case[2]:gsub("%p", "%%%0") .. "$", subject)
      end)
    end

    it("works after STARTTLS too (openssl s_client -starttls imap -servername)", function()
      local subject, out = served("imap_on", "mail.example.org", { "-starttls", "imap" })
      assert.is_not_nil(subject, out)
      assert.matches("CN = mail%.example%.org$", subject)
      assert.matches("Verify return code: 0 %(ok%)", out)
    end)

    it("s.sni reaches the policy (implicit TLS and STARTTLS), and is nil without SNI", function()
      local c = secure("imaps", { sni = "mail.example.org" })
      c:line()
      assert.equal("organizationName=Postern Tests,commonName=mail.example.org", tls.peer_subject(c))
      local u = uniq("sni")
      assert.matches("^a1 OK", (c:command("a1", "LOGIN " .. u .. " secret")))
      assert.equal("mail.example.org", field(policy_line(u), "sni"))

      local s = plain("imap_on")
      s:line()
      s:command("a1", "STARTTLS")
      starttls(s, { sni = "imap.example.net" })
      local u2 = uniq("sni-starttls")
      assert.matches("^a2 OK", (s:command("a2", "LOGIN " .. u2 .. " secret")))
      assert.equal("imap.example.net", field(policy_line(u2), "sni"))

      local n = secure("imaps", { sni = false })
      n:line()
      local u3 = uniq("nosni")
      assert.matches("^a1 OK", (n:command("a1", "LOGIN " .. u3 .. " secret")))
      local line = policy_line(u3)
      assert.equal("-", field(line, "sni"))
      assert.equal("true", field(line, "tls"))
    end)
  end)

  -- openssl s_client with these arguments and no input: everything it printed
  local function openssl_s_client(args)
    local q = {}
    for i, a in ipairs(args) do q[i] = shell.quote(a) end
    local h = io.popen("timeout 10 openssl s_client " .. table.concat(q, " ") .. " </dev/null 2>&1")
    local out = h:read("*a")
    h:close()
    return out
  end

  -- ---- session resumption ---------------------------------------------------------

  describe("session resumption", function()
    local function resumes(listener, extra)
      local dir = (io.popen("mktemp -d /tmp/postern-sess.XXXXXX"):read("*l"))
      finally(function() os.execute("rm -rf " .. shell.quote(dir)) end)
      local base = { "-connect", "127.0.0.1:" .. port[listener], "-CAfile", C.ca, "-servername", "mail.test" }
      for _, a in ipairs(extra or {}) do base[#base + 1] = a end
      local first = {}
      for _, a in ipairs(base) do first[#first + 1] = a end
      first[#first + 1] = "-sess_out"
      first[#first + 1] = dir .. "/sess.pem"
      local out1 = openssl_s_client(first)
      assert.matches("\nNew, TLSv1%.2", out1)
      local second = {}
      for _, a in ipairs(base) do second[#second + 1] = a end
      second[#second + 1] = "-sess_in"
      second[#second + 1] = dir .. "/sess.pem"
      local out2 = openssl_s_client(second)
      assert.matches("\nReused, TLSv1%.2", out2)
    end

    it("with session tickets (openssl s_client -sess_out / -sess_in)", function()
      resumes("imaps")
    end)

    it("with the session cache (no tickets)", function()
      resumes("imaps", { "-no_ticket" })
    end)

    it("after STARTTLS", function()
      resumes("smtp_on", { "-starttls", "smtp" })
    end)
  end)

  -- ---- ALPN (ALPACA cross-protocol attacks) ------------------------------------------

  describe("ALPN", function()
    for _, case in ipairs { { "imaps", "imap" }, { "pop3s", "pop3" }, { "smtps", "smtp" } } do
      local listener, id = case[1], case[2]
      it(listener .. ": a client asking for http/1.1 is refused (no_application_protocol), one asking for " .. id
        .. " gets it, one without ALPN is served", function()
        local base = { "-connect", "127.0.0.1:" .. port[listener], "-CAfile", C.ca, "-servername", "mail.test" }
        local function with(extra)
          local a = {}
          for _, x in ipairs(base) do a[#a + 1] = x end
          for _, x in ipairs(extra) do a[#a + 1] = x end
          return openssl_s_client(a)
        end
        local wrong = with { "-alpn", "http/1.1" }
        assert.matches("no application protocol", wrong)
        assert.not_matches("\nNew, TLSv1%.2", wrong)
        local right = with { "-alpn", "h2," .. id }
        assert.matches("ALPN protocol: " .. id, right)
        local none = with {}
        assert.matches("No ALPN negotiated", none)
        assert.matches("\nNew, TLSv1%.2", none)
      end)
    end

    it("LOGOUT on a TLS connection ends with close_notify, not a bare TCP close (openssl: no unexpected eof)", function()
      local h = io.popen("printf 'a LOGOUT\\n' | timeout 10 openssl s_client -quiet -crlf -connect 127.0.0.1:"
        .. port.imaps .. " -CAfile " .. shell.quote(C.ca) .. " -servername mail.test 2>&1")
      local out = h:read("*a")
      h:close()
      assert.matches("a OK LOGOUT", out)
      assert.not_matches("unexpected eof", out)
    end)

    it("STARTTLS is checked the same way", function()
      local out = openssl_s_client { "-connect", "127.0.0.1:" .. port.imap_on, "-CAfile", C.ca, "-starttls", "imap",
                             "-alpn", "smtp" }
      assert.matches("no application protocol", out)
    end)
  end)

  -- ---- client certificates ----------------------------------------------------------

  describe("client certificates", function()
    local function fingerprint(path)
      local h = io.popen("openssl x509 -noout -fingerprint -sha256 -in " .. shell.quote(path))
      local out = h:read("*a")
      h:close()
      return out:match("=([%x:]+)")
    end

    it("optional: without a certificate the session works and s.client_cert is nil", function()
      local c = secure("cc_optional")
      c:line()
      local u = uniq("cc-none")
      assert.matches("^a1 OK", (c:command("a1", "LOGIN " .. u .. " secret")))
      local line = policy_line(u)
      assert.equal("true", field(line, "tls"))
      assert.equal("-", field(line, "cert"))
    end)

    it("optional: a CA-signed certificate gives s.client_cert (subject, issuer, serial, fingerprint)", function()
      local c = secure("cc_optional", { certificate = C.client, key = C.client_key })
      c:line()
      local u = uniq("cc-opt")
      assert.matches("^a1 OK", (c:command("a1", "LOGIN " .. u .. " secret")))
      local line = policy_line(u)
      assert.matches("CN=client1", field(line, "cert"))
      assert.matches("O=Postern Tests", field(line, "cert"))
      assert.matches("CN=Postern Test CA", field(line, "issuer"))
      assert.is_not.equal("-", field(line, "serial"))
      assert.equal(fingerprint(C.client):upper(), field(line, "fp"):upper())
    end)

    it("optional: a certificate the CA did not sign is refused after the handshake with BYE, as nginx does", function()
      local c = tls.client { port = port.cc_optional, cafile = C.ca, sni = "mail.test",
                             certificate = C.untrusted, key = C.untrusted_key }
      track(c)
      assert.matches("^%* BYE SSL certificate error", c:line())
      assert.is_true(c:closed(2))
      p:wait_log("%[info%].*client certificate refused: .*client: 127%.0%.0%.1:")
    end)

    it("required: without a certificate the handshake fails, logged at info with the client address", function()
      local raw = testing.client { port = port.cc_required }
      local cport = client_port(raw)
      local ok, err = tls.try_starttls(raw, { cafile = C.ca, sni = "mail.test" })
      raw:close()
      assert.is_nil(ok, "the handshake succeeded without a client certificate")
      assert.is_string(err)
      p:wait_log("%[info%].*client: 127%.0%.0%.1:" .. cport .. ",")
      assert.is_true(p:alive())
    end)

    it("required: a certificate the CA did not sign is refused", function()
      local c, err = tls.try_client { port = port.cc_required, cafile = C.ca, sni = "mail.test",
                                      certificate = C.untrusted, key = C.untrusted_key }
      if c then c:close() end
      assert.is_nil(c, "the handshake succeeded with an untrusted client certificate")
      assert.is_string(err)
    end)

    it("required: with the CA-signed certificate the subject reaches the policy", function()
      local c = secure("cc_required", { certificate = C.client, key = C.client_key })
      c:line()
      local u = uniq("cc-req")
      assert.matches("^a1 OK", (c:command("a1", "LOGIN " .. u .. " secret")))
      assert.matches("CN=client1", field(policy_line(u), "cert"))
    end)

    it("openssl s_client -cert: the certificate is reported on a full and on a resumed handshake", function()
      local finally = collect(finally)
      local dir = (io.popen("mktemp -d /tmp/postern-sess.XXXXXX"):read("*l"))
      finally(function() os.execute("rm -rf " .. shell.quote(dir)) end)
      local function run(u, sess_flag)
        local q = { "openssl", "s_client", "-connect", "127.0.0.1:" .. port.cc_required, "-CAfile", C.ca,
          "-servername", "mail.test", "-cert", C.client, "-key", C.client_key, "-ign_eof", "-nocommands",
          "-crlf", sess_flag, dir .. "/sess.pem" }
        for i, a in ipairs(q) do q[i] = shell.quote(a) end
        local h = io.popen(("(sleep 0.5; printf 'a1 LOGIN %s secret\\na2 LOGOUT\\n'; sleep 2) | timeout 10 %s 2>&1")
          :format(u, table.concat(q, " ")))
        local out = h:read("*a")
        h:close()
        return out
      end
      local u1 = uniq("cc-sclient")
      local out1 = run(u1, "-sess_out")
      assert.matches("\nNew, TLSv1%.2", out1)
      assert.matches("a1 OK", out1)
      assert.matches("CN=client1", field(policy_line(u1), "cert"))
      local u2 = uniq("cc-sclient-resumed")
      local out2 = run(u2, "-sess_in")
      assert.matches("\nReused, TLSv1%.2", out2)
      assert.matches("a1 OK", out2)
      assert.matches("CN=client1", field(policy_line(u2), "cert"))
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

  -- ---- real clients ------------------------------------------------------------------

  describe("real clients", function()
    local function s_client(listener, starttls_proto, script)
      local argv = { "openssl", "s_client", "-connect", "127.0.0.1:" .. port[listener], "-CAfile", C.ca,
        "-verify_return_error", "-verify_hostname", "mail.test", "-servername", "mail.test",
        "-quiet", "-nocommands", "-crlf" }
      if starttls_proto then
        argv[#argv + 1] = "-starttls"
        argv[#argv + 1] = starttls_proto
      end
      local q = {}
      for i, a in ipairs(argv) do q[i] = shell.quote(a) end
      -- lines go out one by one; the server closes after the last (LOGOUT/QUIT)
      local feed = {}
      for _, l in ipairs(script) do feed[#feed + 1] = "printf '%s\\n' " .. shell.quote(l) .. "; sleep 0.2" end
      local cmd = ("(sleep 0.5; %s; sleep 2) | timeout 15 %s 2>&1; echo \"__RC=$?\""):format(
        table.concat(feed, "; "), table.concat(q, " "))
      local h = io.popen(cmd)
      local out = h:read("*a")
      h:close()
      return out
    end

    it("openssl s_client -starttls imap", function()
      local u = uniq("sclient-imap")
      local out = s_client("imap_only", "imap", { "a1 CAPABILITY", "a2 LOGIN " .. u .. " secret", "a3 LOGOUT" })
      assert.matches("a1 OK", out)
      assert.matches("a2 OK", out)
      assert.matches("a3 OK", out)
      assert.equal("true", field(policy_line(u), "tls"))
    end)

    it("openssl s_client -starttls pop3", function()
      local u = uniq("sclient-pop3")
      local out = s_client("pop3_only", "pop3", { "USER " .. u, "PASS secret", "STAT", "QUIT" })
      assert.matches("%+OK", out)
      assert.matches("%+OK 2 ", out)   -- STAT relayed from the mock: two messages
      assert.equal("true", field(policy_line(u), "tls"))
    end)

    it("openssl s_client -starttls smtp", function()
      local u = uniq("sclient-smtp")
      local subject = uniq("sclient-subject")
      local out = s_client("smtp_only", "smtp", { "EHLO sclient.test", "AUTH PLAIN " .. b64("\0" .. u .. "\0secret"),
        "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>", "DATA", "Subject: " .. subject, "", "hi", ".",
        "QUIT" })
      assert.matches("235 ", out)
      assert.matches("221 ", out)
      sm:wait_for("^MESSAGE %d+ %d+ " .. subject:gsub("%p", "%%%0") .. "$")
    end)

    it("openssl s_client on the implicit TLS ports", function()
      local u = uniq("sclient-imaps")
      local out = s_client("imaps", nil, { "a1 LOGIN " .. u .. " secret", "a2 LOGOUT" })
      assert.matches("a1 OK", out)
      local u2 = uniq("sclient-pop3s")
      out = s_client("pop3s", nil, { "USER " .. u2, "PASS secret", "QUIT" })
      assert.matches("%+OK", out)
      assert.equal("true", field(policy_line(u2), "tls"))
    end)

    local function curl(args)
      local argv = { "curl", "-sS", "--max-time", "15", "--cacert", C.ca }
      for _, a in ipairs(args) do argv[#argv + 1] = a end
      return shell.run(argv)
    end

    local function resolve(listener)
      return "mail.test:" .. port[listener] .. ":127.0.0.1"
    end

    it("curl imap:// --ssl-reqd (STARTTLS, name checked) and imaps://", function()
      local u = uniq("curl-imap")
      local out, rc = curl { "--ssl-reqd", "--resolve", resolve("imap_only"), "-u", u .. ":secret",
        ("imap://mail.test:%d/"):format(port.imap_only) }
      assert.equal(0, rc, out)
      assert.matches("INBOX", out)
      local line = policy_line(u)
      assert.equal("true", field(line, "tls"))
      assert.equal("mail.test", field(line, "sni"))
      u = uniq("curl-imaps")
      out, rc = curl { "--resolve", resolve("imaps"), "-u", u .. ":secret",
        ("imaps://mail.test:%d/INBOX;UID=1"):format(port.imaps) }
      assert.equal(0, rc, out)
      assert.matches("mock%-body from imap%-backend", out)
      -- -k, by address
      out, rc = shell.run { "curl", "-sS", "-k", "--max-time", "15", "-u", uniq("curl-k") .. ":secret",
        ("imaps://127.0.0.1:%d/"):format(port.imaps) }
      assert.equal(0, rc, out)
      assert.matches("INBOX", out)
    end)

    it("curl refuses a server without STARTTLS when --ssl-reqd, and postern's certificate under another name", function()
      local out, rc = curl { "--ssl-reqd", "-u", "x:secret", ("imap://127.0.0.1:%d/"):format(port.imap_plain) }
      assert.is_not.equal(0, rc, out)
      out, rc = curl { "--resolve", "wrong.test:" .. port.imaps .. ":127.0.0.1", "-u", "x:secret",
        ("imaps://wrong.test:%d/"):format(port.imaps) }
      assert.equal(60, rc, out)   -- CURLE_PEER_FAILED_VERIFICATION
    end)

    it("curl pop3:// --ssl-reqd and pop3s://", function()
      local u = uniq("curl-pop3")
      local out, rc = curl { "--ssl-reqd", "--resolve", resolve("pop3_only"), "-u", u .. ":secret",
        ("pop3://mail.test:%d/1"):format(port.pop3_only) }
      assert.equal(0, rc, out)
      assert.matches("pop3%-body from pop%-backend", out)
      assert.equal("true", field(policy_line(u), "tls"))
      out, rc = curl { "--resolve", resolve("pop3s"), "-u", uniq("curl-pop3s") .. ":secret",
        ("pop3s://mail.test:%d/"):format(port.pop3s) }
      assert.equal(0, rc, out)
      assert.matches("1 %d+", out)
    end)

    it("curl smtp:// --ssl-reqd and smtps:// send a message", function()
      local finally = collect(finally)
      local dir = (io.popen("mktemp -d /tmp/postern-curl.XXXXXX"):read("*l"))
      finally(function() os.execute("rm -rf " .. shell.quote(dir)) end)
      for _, case in ipairs {
        { "smtp_only", "smtp", { "--ssl-reqd" } },
        { "smtps", "smtps", {} },
      } do
        local subject = uniq("curl-" .. case[2])
        local f = io.open(dir .. "/msg.txt", "wb")
        f:write("From: a@example.test\r\nTo: b@example.test\r\nSubject: " .. subject .. "\r\n\r\nhello\r\n")
        f:close()
        local args = {}
        for _, a in ipairs(case[3]) do args[#args + 1] = a end
        for _, a in ipairs { "--resolve", resolve(case[1]), "-u", uniq("curl-smtp") .. ":secret",
          "--mail-from", "a@example.test", "--mail-rcpt", "b@example.test", "-T", dir .. "/msg.txt",
          ("%s://mail.test:%d"):format(case[2], port[case[1]]) } do
          args[#args + 1] = a
        end
        local out, rc = curl(args)
        assert.equal(0, rc, out)
        sm:wait_for("^MESSAGE %d+ %d+ " .. subject:gsub("%p", "%%%0") .. "$")
      end
    end)

    for _, case in ipairs {
      { "imap-ssl", "imaps", "mock%-body from imap%-backend" },
      { "imap-starttls", "imap_only", "mock%-body from imap%-backend" },
      { "pop3-ssl", "pop3s", "pop3%-body from pop%-backend" },
      { "pop3-stls", "pop3_only", "pop3%-body from pop%-backend" },
      { "smtp-ssl", "smtps", "sent" },
      { "smtp-starttls", "smtp_only", "sent" },
    } do
      it("Python " .. case[1] .. " (certificate verified against the test CA)", function()
        local u = uniq("py-" .. case[1])
        local out, rc = shell.run { "python3", HELPERS .. "/tls_clients.py", case[1], "127.0.0.1",
          tostring(port[case[2]]), u, "secret", C.ca }
        assert.equal(0, rc, out)
        assert.matches(case[3], out)
        assert.equal("true", field(policy_line(u), "tls"))
        if case[1] == "smtp-starttls" or case[1] == "smtp-ssl" then
          sm:wait_for("^MESSAGE %d+ %d+ tls test via " .. case[1]:gsub("%p", "%%%0") .. "$")
        end
      end)
    end
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

-- ---- reload, on_connect, renegotiation -------------------------------------------------

describe("TLS with reload and hooks #tls", function()
  it("HUP with a new default certificate: new sessions get it, sessions already running keep working", function()
    local finally = collect(finally)
    local C5 = certs_helper.get()
    local m = testing.mock_imap { name = "b" }
    finally(function() m:stop() end)
    local px = testing.start {
      policy_source = scene.policy_source { ["*"] = scene.route(m) },
      config = { tls = { certificate = C5.server, key = C5.server_key },
        listen = { { protocol = "imap", tls = true }, { protocol = "imap", starttls = "on" } } },
    }
    local stopped = false
    finally(function() if not stopped then pcall(px.stop, px) end end)
    local cs = {}
    finally(function() for _, c in ipairs(cs) do pcall(c.close, c) end end)
    local function new(i, sni)
      local c = tls.client { port = px.ports[i or 1], cafile = C5.ca, sni = sni or "mail.test" }
      cs[#cs + 1] = c
      return c
    end
    local relaying = new()
    relaying:line()
    assert.matches("^a1 OK", (relaying:command("a1", "LOGIN alice secret")))
    local preauth = new()
    preauth:line()
    local plain_pre = testing.client { port = px.ports[2] }
    cs[#cs + 1] = plain_pre
    plain_pre:line()

    local conf = px.config
    conf.tls = { certificate = C5.org, key = C5.org_key }
    testing.write_config(px.conf_path, conf)
    px:signal("HUP")
    px:wait_log("reloaded: configuration", 5)

    local fresh = new(1, "mail.example.org")
    assert.equal("organizationName=Postern Tests,commonName=mail.example.org", tls.peer_subject(fresh))
    assert.matches("^%* OK", fresh:line())
    -- the sessions from before the reload
    assert.matches("^a2 OK", (relaying:command("a2", "NOOP")))
    relaying:send("a3 XECHO 300000\r\n")
    assert.equal("* XECHO {300000}", relaying:line())
    relaying:read_bytes(300000)
    assert.equal("", relaying:line())
    assert.equal("a3 OK XECHO completed", relaying:line())
    assert.matches("^b1 OK", (preauth:command("b1", "LOGIN bob secret")))
    -- STARTTLS on a connection accepted before the reload: the certificate of its own configuration
    assert.equal("s1 OK Begin TLS negotiation now", (plain_pre:command("s1", "STARTTLS")))
    tls.starttls(plain_pre, { cafile = C5.ca, sni = "mail.test" })
    assert.equal("organizationName=Postern Tests,commonName=mail.test", tls.peer_subject(plain_pre))
    assert.matches("^s2 OK", (plain_pre:command("s2", "LOGIN carol secret")))

    -- a reload with a broken pair is refused; the running certificate stays
    conf.tls = { certificate = C5.server, key = C5.org_key }
    testing.write_config(px.conf_path, conf)
    px:signal("HUP")
    px:wait_log("reload refused", 5)
    local after = new(1, "x.test")
    assert.equal("organizationName=Postern Tests,commonName=mail.example.org", tls.peer_subject(after))
    for _, c in ipairs(cs) do c:close() end
    stopped = true
    assert.equal(0, px:stop())
  end)

  it("on_connect sees s.tls and s.sni on a TLS port, and can refuse or splice over TLS", function()
    local finally = collect(finally)
    local C6 = certs_helper.get()
    local m = testing.mock_imap { name = "spliced" }
    finally(function() m:stop() end)
    local px = testing.start {
      policy_source = ([[
        local postern = require "postern"
        return {
          on_connect = function(s)
            postern.log("info", "on_connect: tls=", tostring(s.tls), " sni=", tostring(s.sni))
            if s.sni == "refuse.example.net" then return false, "not you" end
            if s.sni == "splice.example.net" then return { host = "127.0.0.1", port = %d } end
          end,
          authenticate = function(s) return nil, "no" end,
        }
      ]]):format(m.port),
      config = { tls = { certificate = C6.server, key = C6.server_key },
        listen = { { protocol = "imap", tls = true } } },
    }
    finally(function() px:stop() end)
    local a = tls.client { port = px.port, cafile = C6.ca, sni = "mail.test" }
    finally(function() a:close() end)
    assert.matches("^%* OK %[CAPABILITY", a:line())
    px:wait_log("on_connect: tls=true sni=mail%.test")
    local r = tls.client { port = px.port, sni = "refuse.example.net" }
    finally(function() r:close() end)
    assert.matches("^%* BYE not you", r:line())
    assert.is_true(r:closed(3))
    local sp = tls.client { port = px.port, sni = "splice.example.net" }
    finally(function() sp:close() end)
    assert.matches("^%* OK .*spliced", sp:line())
    assert.matches("^a1 OK", (sp:command("a1", "LOGIN alice secret")))
    m:wait_for("^AUTH alice secret")
  end)

  it("a client asking for renegotiation does not break the session or postern", function()
    local finally = collect(finally)
    local C7 = certs_helper.get()
    local m = testing.mock_imap { name = "b" }
    finally(function() m:stop() end)
    local px = testing.start {
      policy_source = scene.policy_source { ["*"] = scene.route(m) },
      config = { tls = { certificate = C7.server, key = C7.server_key },
        listen = { { protocol = "imap", tls = true } } },
    }
    finally(function() px:stop() end)
    -- s_client's interactive "R" renegotiates; then a login and LOGOUT
    local q = { "openssl", "s_client", "-connect", "127.0.0.1:" .. px.port, "-CAfile", C7.ca,
      "-servername", "mail.test", "-tls1_2", "-crlf" }
    for i, a in ipairs(q) do q[i] = shell.quote(a) end
    local h = io.popen(("(sleep 0.5; printf 'R\\n'; sleep 0.5; printf 'a1 LOGIN alice secret\\na2 LOGOUT\\n'; sleep 2) 2>/dev/null "
      .. "| timeout 10 %s 2>&1"):format(table.concat(q, " ")))
    local out = h:read("*a")
    h:close()
    assert.matches("RENEGOTIATING", out)
    assert.is_true(px:alive())
    -- either refused (the session goes on) or the connection closed; never a crash
    local c = tls.client { port = px.port, cafile = C7.ca, sni = "mail.test" }
    finally(function() c:close() end)
    assert.matches("^%* OK", c:line())
    if out:find("a1 OK", 1, true) then assert.matches("a2 OK", out) end
  end)

  it("a client that rejects postern's certificate (fatal alert) is logged at info", function()
    local finally = collect(finally)
    local C8 = certs_helper.get()
    local px = testing.start {
      policy_source = "return { authenticate = function() return nil, 'no' end }",
      config = { tls = { certificate = C8.untrusted, key = C8.untrusted_key },
        listen = { { protocol = "imap", tls = true } } },
    }
    finally(function() px:stop() end)
    local raw = testing.client { port = px.port }
    local _, cport = raw.sock:getsockname()
    local ok, err = tls.try_starttls(raw, { cafile = C8.ca })
    raw:close()
    assert.is_nil(ok)
    assert.matches("certificate verify failed", err)
    local line = px:wait_log("client: 127%.0%.0%.1:" .. cport .. ".*$")
    line = px:wait_log("TLS.*client: 127%.0%.0%.1:" .. cport .. ",")
    assert.matches("%[info%]", line)
  end)
end)

-- ---- SASL EXTERNAL -----------------------------------------------------------------

describe("SASL EXTERNAL with client certificates #tls", function()
  local C9, m, pm9, sm9, px
  setup(function()
    C9 = certs_helper.get()
    m = testing.mock_imap { name = "ext-imap" }
    pm9 = testing.mock_pop3 { name = "ext-pop" }
    sm9 = testing.mock_smtp { name = "ext-mx" }
    local cc = { verify_client = "optional", client_ca = C9.ca }
    local function l(t) for k, v in pairs(cc) do t[k] = v end return t end
    px = testing.start {
      policy_source = ([[
        local postern = require "postern"
        local ports = { imap = %d, pop3 = %d, smtp = %d }
        return { authenticate = function(s)
          local cc = s.client_cert
          postern.log("info", "policy: |mech=", tostring(s.mechanism), "|user=", tostring(s.user),
            "|authzid=", tostring(s.authzid), "|cert=", tostring(cc and cc.subject), "|")
          if s.mechanism == "external" then
            -- the certificate is the credential; the upstream gets a login of the policy's choice
            return { host = "127.0.0.1", port = ports[s.protocol], user = s.user, password = "upstream-pw" }
          end
          return { host = "127.0.0.1", port = ports[s.protocol] }
        end }
      ]]):format(m.port, pm9.port, sm9.port),
      config = { tls = { certificate = C9.server, key = C9.server_key }, listen = {
        l { protocol = "imap", tls = true, auth = { "plain", "external" } },
        l { protocol = "imap", starttls = "on", auth = { "plain", "external" } },
        l { protocol = "pop3", tls = true, auth = { "user", "external" } },
        l { protocol = "smtp", tls = true, auth = { "plain", "external" } },
      } },
    }
  end)
  teardown(function()
    if px then px:stop() end
    if m then m:stop() end
    if pm9 then pm9:stop() end
    if sm9 then sm9:stop() end
  end)

  local function with_cert(i)
    return tls.client { port = px.ports[i], cafile = C9.ca, sni = "mail.test",
      certificate = C9.client, key = C9.client_key }
  end

  it("IMAP: AUTH=EXTERNAL is offered; the certificate's CN is s.user and the upstream gets the policy's login",
    function()
      local finally = collect(finally)
      local c = with_cert(1)
      finally(function() c:close() end)
      assert.matches("AUTH=EXTERNAL", c:line())
      assert.matches("^a1 OK ", (c:command("a1", "AUTHENTICATE EXTERNAL =")))
      local line = px:wait_log("policy: |mech=external|user=client1|")
      assert.matches("|authzid=nil|", line, 1, true)
      assert.matches("CN=client1", line)
      m:wait_for("^AUTH client1 upstream%-pw ")
    end)

  it("IMAP: EXTERNAL without a verified certificate is refused and the policy is not asked", function()
    local finally = collect(finally)
    local c = tls.client { port = px.ports[1], cafile = C9.ca, sni = "mail.test" }
    finally(function() c:close() end)
    c:line()
    local before = select(2, px:log():gsub("mech=external", ""))
    assert.matches("^a1 NO %[AUTHENTICATIONFAILED%]", (c:command("a1", "AUTHENTICATE EXTERNAL =")))
    assert.equal(before, select(2, px:log():gsub("mech=external", "")))
    assert.matches("^a2 OK", (c:command("a2", "NOOP")))
  end)

  it("IMAP STARTTLS: EXTERNAL is offered only after TLS, and then works with the certificate", function()
    local finally = collect(finally)
    local c = testing.client { port = px.ports[2] }
    finally(function() c:close() end)
    local g = c:line()
    assert.is_nil(g:find("AUTH=EXTERNAL", 1, true), "EXTERNAL offered before TLS: " .. g)
    assert.matches("^a1 NO", (c:command("a1", "AUTHENTICATE EXTERNAL =")))
    assert.equal("a2 OK Begin TLS negotiation now", (c:command("a2", "STARTTLS")))
    tls.starttls(c, { cafile = C9.ca, sni = "mail.test", certificate = C9.client, key = C9.client_key })
    local _, untagged = c:command("a3", "CAPABILITY")
    assert.matches("AUTH=EXTERNAL", untagged[1])
    -- no initial response: the server asks with "+ ", the client answers "=" (empty)
    c:send("a4 AUTHENTICATE EXTERNAL\r\n")
    assert.matches("^%+", c:line())
    c:send("=\r\n")
    assert.matches("^a4 OK ", c:line(10))
  end)

  it("an authorization identity in EXTERNAL is passed as s.authzid, next to the certificate that was verified",
    function()
      local finally = collect(finally)
      local c = with_cert(1)
      finally(function() c:close() end)
      c:line()
      c:command("a1", "AUTHENTICATE EXTERNAL " .. b64_ext("shared-mailbox"))
      local line = px:wait_log("policy: |mech=external|user=[^|]*|authzid=shared%-mailbox|")
      assert.matches("CN=client1", line)
    end)

  it("POP3 and SMTP: AUTH EXTERNAL", function()
    local finally = collect(finally)
    local c = with_cert(3)
    finally(function() c:close() end)
    assert.matches("^%+OK", c:pop3())
    assert.matches("^%+OK", c:pop3("AUTH EXTERNAL ="))
    pm9:wait_for("^AUTH client1 upstream%-pw ")
    local s = with_cert(4)
    finally(function() s:close() end)
    assert.equal(220, (s:smtp()))
    local _, kw = s:smtp("EHLO client.test")
    assert.matches("EXTERNAL", table.concat(kw, "\n"))
    local code, _, last = s:smtp("AUTH EXTERNAL =", 10)
    assert.equal(235, code, last)
    sm9:wait_for("^AUTH client1 upstream%-pw ")
  end)

  it("postern -t: \"external\" needs verify_client", function()
    local ok, out = testing.check_config {
      policy = px.dir .. "/policy.lua",
      tls = { certificate = C9.server, key = C9.server_key },
      listen = { { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", tls = true,
        auth = { "plain", "external" } } },
    }
    assert.is_false(ok, out)
    assert.matches("external", out)
  end)
end)

-- ---- protocols and ciphers -----------------------------------------------------------

describe("TLS protocols and ciphers #tls", function()
  it("`ciphers` limits the suites offered, and s.tls_cipher names the one in use", function()
    local finally = collect(finally)
    local C4 = certs_helper.get()
    local m = testing.mock_imap { name = "b" }
    finally(function() m:stop() end)
    local px = testing.start {
      policy_source = [[
        local postern = require "postern"
        return { authenticate = function(s)
          postern.log("info", "policy: cipher=", tostring(s.tls_cipher), " protocol=", tostring(s.tls_protocol))
          return nil, "no"
        end }
      ]],
      config = { tls = { certificate = C4.server, key = C4.server_key, protocols = "TLSv1.2",
        ciphers = "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256" },
        listen = { { protocol = "imap", tls = true } } },
    }
    finally(function() px:stop() end)
    local c = tls.client { port = px.port, cafile = C4.ca, sni = "mail.test" }
    finally(function() c:close() end)
    assert.equal("ECDHE-RSA-AES128-GCM-SHA256", c.tls_cipher)
    c:line()
    c:command("a1", "LOGIN x y")
    px:wait_log("policy: cipher=TLS%-ECDHE%-RSA%-WITH%-AES%-128%-GCM%-SHA256 protocol=TLSv1%.2")
    -- a client that offers only other suites does not get in
    local out = shell.run { "timeout", "10", "openssl", "s_client", "-connect", "127.0.0.1:" .. px.port,
      "-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305", "-noservername" }
    assert.is_nil(out:find("\nNew, TLSv1%.2"), out)
    assert.is_true(px:alive())
  end)
end)

-- ---- postern -t ----------------------------------------------------------------------

describe("postern -t and TLS files #tls", function()
  local C3, dir
  setup(function()
    C3 = certs_helper.get()
    dir = (io.popen("mktemp -d /tmp/postern-tcheck.XXXXXX"):read("*l"))
    local f = io.open(dir .. "/policy.lua", "w")
    f:write("return { authenticate = function() return nil, 'no' end }\n")
    f:close()
    f = io.open(dir .. "/garbage.pem", "w")
    f:write("this is not a certificate\n")
    f:close()
    os.execute("mkdir " .. shell.quote(dir .. "/a-directory.pem"))
  end)
  teardown(function() if dir then os.execute("rm -rf " .. shell.quote(dir)) end end)

  local function conf(tls_conf, listener)
    return {
      policy = dir .. "/policy.lua",
      error_log = dir .. "/check.log",
      tls = tls_conf,
      listen = { listener or { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", tls = true } },
    }
  end

  it("accepts a good pair (and SNI certificates, a client CA)", function()
    local ok, out = testing.check_config(conf({ certificate = C3.server, key = C3.server_key,
      certificates = { ["mail.example.org"] = { certificate = C3.org, key = C3.org_key } } },
      { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", tls = true,
        verify_client = "optional", client_ca = C3.ca }))
    assert.is_true(ok, out)
    assert.matches("configuration ok", out)
  end)

  local bad = {
    { "a missing certificate file", function() return { certificate = dir .. "/nope.pem", key = C3.server_key } end,
      "nope%.pem" },
    { "a missing key file", function() return { certificate = C3.server, key = dir .. "/nope.key" } end,
      "nope%.key" },
    { "a certificate that is a directory", function()
      return { certificate = dir .. "/a-directory.pem", key = C3.server_key } end, "a%-directory%.pem" },
    { "a file that is not PEM", function() return { certificate = dir .. "/garbage.pem", key = C3.server_key } end,
      "garbage%.pem" },
    { "a key that does not match the certificate", function()
      return { certificate = C3.server, key = C3.org_key } end, "does not match" },
    { "an SNI certificate with a wrong key", function()
      return { certificate = C3.server, key = C3.server_key,
        certificates = { ["mail.example.org"] = { certificate = C3.org, key = C3.server_key } } } end,
      "does not match" },
  }
  for _, case in ipairs(bad) do
    it("reports " .. case[1] .. " under the key path \"tls\"", function()
      local ok, out = testing.check_config(conf(case[2]()))
      assert.is_false(ok, out)
      assert.matches("tls", out)
      assert.matches(case[3], out)
      assert.is_nil(out:find("configuration ok", 1, true))
    end)
  end

  for _, case in ipairs {
    { "protocols older than TLSv1.2", { protocols = "TLSv1.1" }, "protocols" },
    { "an unknown cipher suite", { ciphers = "TLS-NO-SUCH-CIPHER" }, "TLS%-NO%-SUCH%-CIPHER" },
    { "a too short ticket_lifetime", { ticket_lifetime = 1 }, "tls%.ticket_lifetime" },
  } do
    it("reports " .. case[1], function()
      local t = { certificate = C3.server, key = C3.server_key }
      for k, v in pairs(case[2]) do t[k] = v end
      local ok, out = testing.check_config(conf(t))
      assert.is_false(ok, out)
      assert.matches(case[3], out)
    end)
  end

  it("a TLS or STARTTLS listener without a certificate names the listener", function()
    local ok, out = testing.check_config(conf(nil))
    assert.is_false(ok, out)
    assert.matches("listen%[1%]%.tls", out)
    ok, out = testing.check_config(conf(nil, { address = "127.0.0.1:" .. testing.free_port(), protocol = "pop3",
      starttls = "only" }))
    assert.is_false(ok, out)
    assert.matches("listen%[1%]%.starttls", out)
  end)

  it("verify_client without client_ca, and an unreadable upstream_ca, are reported", function()
    local ok, out = testing.check_config(conf({ certificate = C3.server, key = C3.server_key },
      { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", tls = true, verify_client = "on" }))
    assert.is_false(ok, out)
    assert.matches("verify_client", out)
    ok, out = testing.check_config(conf({ certificate = C3.server, key = C3.server_key,
      upstream_ca = dir .. "/nope-ca.pem" }))
    assert.is_false(ok, out)
    assert.matches("tls%.upstream_ca", out)
  end)

  it("a client_ca or an upstream_ca that is a directory is reported, without a crash", function()
    local ok, out = testing.check_config(conf({ certificate = C3.server, key = C3.server_key },
      { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", tls = true, verify_client = "on",
        client_ca = dir .. "/a-directory.pem" }))
    assert.is_false(ok, out)
    assert.matches("a%-directory%.pem", out)
    assert.is_nil(out:find("Sanitizer", 1, true), out)
    ok, out = testing.check_config(conf({ certificate = C3.server, key = C3.server_key,
      upstream_ca = dir .. "/a-directory.pem" }))
    assert.is_false(ok, out)
    assert.matches("upstream_ca", out)
    assert.is_nil(out:find("Sanitizer", 1, true), out)
  end)

  it("an upstream_ca that is not a PEM CA file is reported (not only at the first TLS upstream)", function()
    local ok, out = testing.check_config(conf({ certificate = C3.server, key = C3.server_key,
      upstream_ca = dir .. "/garbage.pem" }))
    assert.is_false(ok, "postern -t accepted a garbage upstream_ca: " .. out)
    assert.matches("upstream_ca", out)
  end)
end)

describe("TLS protocols and ciphers #tls", function()
  local C, proxy

  setup(function()
    C = certs_helper.get()
    proxy = testing.start {
      policy_source = "return { authenticate = function(s) return nil, 'no' end }",
      config = {
        tls = { certificate = C.server, key = C.server_key, protocols = "TLSv1.2",
                ciphers = "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256" },
        listen = { { protocol = "imap", tls = true } },
      },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
  end)

  local function s_client(extra)
    local argv = { "timeout", "10", "openssl", "s_client", "-connect", "127.0.0.1:" .. proxy.port,
                   "-CAfile", C.ca, "-servername", "mail.test", "-ign_eof" }
    for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
    local script = "printf 'a LOGOUT\\r\\n' | " .. table.concat((function()
      local q = {}
      for i, a in ipairs(argv) do q[i] = shell.quote(a) end
      return q
    end)(), " ") .. " 2>&1"
    local p = io.popen(script)
    local out = p:read("*a")
    p:close()
    return out
  end

  it("offers only the configured cipher suite", function()
    local out = s_client()
    assert.matches("Cipher is ECDHE%-RSA%-AES128%-GCM%-SHA256", out)
    assert.matches("%* OK", out)
  end)

  it("refuses a client that only speaks a cipher suite not in the list", function()
    local out = s_client { "-cipher", "ECDHE-RSA-AES256-GCM-SHA384", "-tls1_2" }
    assert.is_nil(out:find("* OK", 1, true), out)
  end)

  it("refuses TLS 1.1 and older (TLS 1.2 at least)", function()
    local out = s_client { "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0" }
    assert.is_nil(out:find("* OK", 1, true), out)
  end)

  it("names an unknown cipher suite when the configuration is checked", function()
    local ok, out = testing.check_config {
      policy = proxy.config.policy,
      tls = { certificate = C.server, key = C.server_key, ciphers = "TLS-NO-SUCH-CIPHER" },
      listen = { { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", tls = true } },
    }
    assert.is_false(ok)
    assert.matches("unknown cipher suite \"TLS%-NO%-SUCH%-CIPHER\"", out)
  end)
end)
