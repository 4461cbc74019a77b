-- Real TLS clients towards postern (openssl s_client, curl, Python) on
-- the listeners of the shared TLS scene (helpers.tls_listeners).
local shell = require "helpers.shell"
local tl = require "helpers.tls_listeners"
local collect = tl.collect
local uniq = tl.uniq
local policy_line = tl.policy_line
local field = tl.field
local b64 = tl.b64
local HELPERS = tl.HELPERS

-- the shared proxy and its backends, set by tl.start()
local C, sm, port

describe("TLS towards clients #tls", function()
  setup(function()
    local s = tl.start()
    C, sm, port = s.C, s.sm, s.port
  end)

  teardown(tl.stop)
  after_each(tl.close_clients)

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
