-- What the TLS handshake with the client negotiates: the certificate
-- chosen by SNI, session resumption, and ALPN (ALPACA cross-protocol
-- attacks).
local shell = require "helpers.shell"
local tls = require "helpers.tls"
local tl = require "helpers.tls_listeners"
local uniq = tl.uniq
local policy_line = tl.policy_line
local field = tl.field
local plain = tl.plain
local secure = tl.secure
local starttls = tl.starttls

-- the shared proxy and its backends, set by tl.start()
local C, port

describe("TLS towards clients #tls", function()
  setup(function()
    local s = tl.start()
    C, port = s.C, s.port
  end)

  teardown(tl.stop)
  after_each(tl.close_clients)

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
end)
