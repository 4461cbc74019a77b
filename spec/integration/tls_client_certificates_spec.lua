-- Client certificates: verify_client = "optional" and "on" with client_ca,
-- what the policy sees (s.client_cert), and SASL EXTERNAL.
local testing = require "postern.testing"
local shell = require "helpers.shell"
local certs_helper = require "helpers.certs"
local tls = require "helpers.tls"
local tl = require "helpers.tls_listeners"
local collect = tl.collect
local uniq = tl.uniq
local policy_line = tl.policy_line
local field = tl.field
local track = tl.track
local secure = tl.secure
local client_port = tl.client_port
local b64_ext = tl.b64_ext

-- the shared proxy and its backends, set by tl.start()
local C, p, port

describe("TLS towards clients #tls", function()
  setup(function()
    local s = tl.start()
    C, p, port = s.C, s.p, s.port
  end)

  teardown(tl.stop)
  after_each(tl.close_clients)

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
