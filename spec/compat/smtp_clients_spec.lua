-- Real SMTP clients and a real SMTP server through postern: Python's
-- smtplib and curl's smtp:// log in (AUTH PLAIN and LOGIN) and send a
-- message to a mock upstream; Postfix's smtp-sink is the upstream for the
-- no-auth (MX-style) mode, for an upstream without AUTH, and for XCLIENT.
--
-- smtp-sink comes with the postfix package (scripts/install-deps); the
-- system Postfix is never configured nor started. Each test starts its own
-- smtp-sink on a free loopback port and stops it afterwards. Its -d option
-- writes each message it accepts to a file, headed by X-Client-Addr,
-- X-Helo-Args, X-Mail-Args and X-Rcpt-Args lines.
local testing = require "postern.testing"
local shell = require "helpers.shell"
local smtp_scene = require "helpers.smtp_scene"

local SMTP_CLIENT = testing.root .. "/spec/helpers/smtp_client.py"
local SMTP_SINK = "/usr/sbin/smtp-sink"

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function alive(pid)
  local stat = read_file("/proc/" .. tostring(pid) .. "/stat")
  return stat ~= nil and not stat:match("%) [ZX]")
end

local function poll(timeout, fn)
  local deadline = testing.now() + timeout
  repeat
    local v = fn()
    if v then return v end
    testing.sleep(0.05)
  until testing.now() > deadline
  return nil
end

-- run smtp_client.py against port with the given options table
local function smtplib(port, o)
  local argv = { "python3", SMTP_CLIENT, "127.0.0.1", tostring(port), "--from", o.from or "alice@example.com" }
  for _, to in ipairs(o.to or { "bob@example.org" }) do
    argv[#argv + 1] = "--to"
    argv[#argv + 1] = to
  end
  for _, k in ipairs { "user", "password", "helo", "subject", "body" } do
    if o[k] then
      argv[#argv + 1] = "--" .. k
      argv[#argv + 1] = o[k]
    end
  end
  return shell.run(argv)
end

-- a file with a small message for curl -T
local function message_file(sc, subject)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write("From: <alice@example.com>\r\nTo: <bob@example.org>\r\nSubject: " .. subject ..
    "\r\n\r\nSent by curl through postern.\r\n")
  f:close()
  sc:on_stop(function() os.remove(path) end)
  return path
end

-- smtp-sink on a free port, as nobody, dumping each message into its own
-- directory; sink.port, sink:messages() -> { file contents... }, sink:log()
local function start_sink(sc, extra_args)
  local dir = assert(io.popen("mktemp -d /tmp/postern-sink.XXXXXX")):read("*l")
  assert(dir and dir:match("^/tmp/postern%-sink%."), "mktemp failed")
  -- smtp-sink runs as nobody: it must reach the dump directory and write there
  os.execute("chmod 755 " .. dir .. " && mkdir " .. dir .. "/dump && chmod 777 " .. dir .. "/dump")
  local port = testing.free_port()
  local args = { SMTP_SINK, "-v", "-d", dir .. "/dump/" }
  for _, a in ipairs(extra_args or {}) do args[#args + 1] = a end
  -- as root smtp-sink must drop to another user once it listens
  local uid = assert(io.popen("id -u")):read("*l")
  if uid == "0" then
    args[#args + 1] = "-u"
    args[#args + 1] = "nobody"
  end
  args[#args + 1] = "127.0.0.1:" .. port
  args[#args + 1] = "100"
  local q = {}
  for i, a in ipairs(args) do q[i] = shell.quote(a) end
  local pid = tonumber(assert(io.popen(("exec %s >%s 2>&1 </dev/null & echo $!"):format(
    table.concat(q, " "), shell.quote(dir .. "/sink.log")))):read("*l"))
  assert(pid, "could not start smtp-sink")
  local sink = { port = port, pid = pid, dir = dir }
  function sink.log() return read_file(dir .. "/sink.log") or "" end
  function sink.messages()
    local out = {}
    local ls = io.popen("ls " .. shell.quote(dir .. "/dump"))
    for name in ls:lines() do out[#out + 1] = read_file(dir .. "/dump/" .. name) end
    ls:close()
    return out
  end
  -- wait for one message to be dumped (smtp-sink writes it as it arrives)
  function sink:wait_message(timeout)
    return poll(timeout or 5, function()
      local m = self:messages()
      if #m > 0 and m[1]:find("\n\n", 1, true) then return m end
    end)
  end
  sc:on_stop(function()
    os.execute("kill " .. pid .. " 2>/dev/null")
    if not poll(5, function() return not alive(pid) end) then
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
    end
    os.execute("rm -rf " .. shell.quote(dir))
  end)
  local up = poll(5, function()
    if not alive(pid) then return false end
    local s = require("socket").tcp()
    s:settimeout(0.2)
    local ok = s:connect("127.0.0.1", port)
    s:close()
    return ok and true or nil
  end)
  assert(up, "smtp-sink did not start listening; its log:\n" .. sink:log())
  return sink
end

-- the X-... header lines smtp-sink puts before a dumped message
local function sink_headers(dump)
  local h = {}
  for k, v in dump:gmatch("(X%-[%w%-]+): ([^\n]*)") do
    if h[k] then h[k] = h[k] .. "," .. v else h[k] = v end
  end
  return h
end

describe("SMTP clients through postern #clients", function()
  describe("Python smtplib", function()
    -- one listener that offers only PLAIN, one that offers only LOGIN:
    -- smtplib's login() picks the mechanism from the EHLO AUTH line
    local function proxy_with_two_listeners(sc, m)
      return sc:proxy({ users = { alice = smtp_scene.route(m), ["*"] = "Invalid login or password" } },
        { config = { listen = {
          { protocol = "smtp", auth = { "plain" } },
          { protocol = "smtp", auth = { "login" } },
        } } })
    end

    it("logs in with AUTH PLAIN and sends a message with sendmail", function()
      local sc = smtp_scene.new(finally)
      local m = sc:mock { name = "mx-a", users = { alice = "secret" } }
      local p = proxy_with_two_listeners(sc, m)
      local out, rc = smtplib(p.ports[1], { user = "alice", password = "secret", subject = "smtplib plain" })
      assert.equal(0, rc, out)
      assert.matches("login 235", out)
      assert.matches("sent", out)
      assert.equal("plain", smtp_scene.policy_calls(p)[1].mechanism)
      assert.same({ { user = "alice", password = "secret", mechanism = "plain" } }, m:logins())
      m:wait_for("^MESSAGE ")
      assert.equal("smtplib plain", m:messages()[1].subject)
    end)

    it("logs in with AUTH LOGIN and sends a message with sendmail", function()
      local sc = smtp_scene.new(finally)
      local m = sc:mock { name = "mx-a", users = { alice = "secret" } }
      local p = proxy_with_two_listeners(sc, m)
      local out, rc = smtplib(p.ports[2], { user = "alice", password = "secret", subject = "smtplib login" })
      assert.equal(0, rc, out)
      assert.matches("login 235", out)
      assert.equal("login", smtp_scene.policy_calls(p)[1].mechanism)
      assert.same({ { user = "alice", password = "secret", mechanism = "plain" } }, m:logins())
      m:wait_for("^MESSAGE ")
      assert.equal("smtplib login", m:messages()[1].subject)
    end)

    it("gets SMTPAuthenticationError with the policy's 535 for a wrong password", function()
      local sc = smtp_scene.new(finally)
      local m = sc:mock { name = "mx-a", users = { alice = "secret" } }
      local p = proxy_with_two_listeners(sc, m)
      local out, rc = smtplib(p.ports[1], { user = "mallory", password = "guess" })
      assert.equal(1, rc, out)
      assert.matches("SMTPAuthenticationError", out)
      assert.matches("535", out)
      assert.matches("Invalid login or password", out)
      assert.same({}, m:messages())
    end)

    it("sends to two recipients in the no-auth mode", function()
      local sc = smtp_scene.new(finally)
      local m = sc:mock { name = "mx-a" }
      local p = sc:proxy({ domains = { ["*"] = smtp_scene.route(m) } }, { auth = { "none" } })
      local out, rc = smtplib(p.port, { to = { "bob@example.org", "carol@example.org" }, subject = "two" })
      assert.equal(0, rc, out)
      m:wait_for("^MESSAGE ")
      local cmds = smtp_scene.commands(m)
      -- (smtplib writes its verbs in lower case; postern replays them as they came)
      assert.equal("rcpt to:<bob@example.org>", cmds[3]:lower())
      assert.equal("rcpt to:<carol@example.org>", cmds[4]:lower())
      assert.equal("two", m:messages()[1].subject)
    end)
  end)

  describe("curl smtp://", function()
    local function curl(sc, p, args, subject)
      local argv = { "curl", "-sS", "--max-time", "15", ("smtp://127.0.0.1:%d/client.example"):format(p.port),
        "--mail-from", "alice@example.com", "--mail-rcpt", "bob@example.org", "-T", message_file(sc, subject) }
      for _, a in ipairs(args) do argv[#argv + 1] = a end
      return shell.run(argv)
    end

    for _, mech in ipairs { "PLAIN", "LOGIN" } do
      it("logs in with --login-options AUTH=" .. mech .. " and the message reaches the upstream", function()
        local sc = smtp_scene.new(finally)
        local m = sc:mock { name = "mx-a", users = { alice = "secret" } }
        local p = sc:proxy { users = { alice = smtp_scene.route(m), ["*"] = "Invalid login or password" } }
        local out, rc = curl(sc, p, { "-u", "alice:secret", "--login-options", "AUTH=" .. mech }, "curl " .. mech)
        assert.equal(0, rc, out)
        assert.equal(mech:lower(), smtp_scene.policy_calls(p)[1].mechanism)
        m:wait_for("^MESSAGE ")
        assert.equal("curl " .. mech, m:messages()[1].subject)
        assert.equal("alice", m:logins()[1].user)
      end)
    end

    it("fails with curl's login-denied error (67) for a wrong password", function()
      local sc = smtp_scene.new(finally)
      local m = sc:mock { name = "mx-a", users = { alice = "secret" } }
      local p = sc:proxy { users = { alice = smtp_scene.route(m), ["*"] = "Invalid login or password" } }
      local out, rc = curl(sc, p, { "-u", "mallory:guess" }, "never")
      assert.equal(67, rc, out)
      assert.same({}, m:messages())
    end)

    it("sends without a login in the no-auth mode", function()
      local sc = smtp_scene.new(finally)
      local m = sc:mock { name = "mx-a" }
      local p = sc:proxy({ domains = { ["example.org"] = smtp_scene.route(m) } }, { auth = { "none" } })
      local out, rc = curl(sc, p, {}, "curl no auth")
      assert.equal(0, rc, out)
      m:wait_for("^MESSAGE ")
      assert.equal("curl no auth", m:messages()[1].subject)
      assert.equal("client.example", smtp_scene.policy_calls(p)[1].helo)
    end)
  end)

  describe("Postfix smtp-sink as the upstream", function()
    it("takes a message in the no-auth mode: MAIL and RCPT replayed, DATA relayed", function()
      local sc = smtp_scene.new(finally)
      local sink = start_sink(sc)
      local p = sc:proxy({ domains = { ["sink.example"] = smtp_scene.route(sink.port) } }, { auth = { "none" } })
      local out, rc = smtplib(p.port, { from = "alice@sender.example", to = { "bob@sink.example" },
        subject = "to the sink", body = "Hello smtp-sink." })
      assert.equal(0, rc, out)
      local dumps = sink:wait_message()
      assert.is_truthy(dumps, "smtp-sink dumped no message; its log:\n" .. sink:log())
      assert.equal(1, #dumps)
      local h = sink_headers(dumps[1])
      assert.equal("127.0.0.1", h["X-Client-Addr"])
      assert.equal("postern.test", h["X-Helo-Args"])
      -- smtplib adds SIZE= since postern advertises SIZE; postern replays the line as it came
      assert.matches("^<alice@sender%.example> size=%d+$", h["X-Mail-Args"])
      assert.equal("<bob@sink.example>", h["X-Rcpt-Args"])
      assert.matches("\nSubject: to the sink\n", dumps[1])
      assert.matches("\nHello smtp%-sink%.\n", dumps[1])
    end)

    it("takes a message over TLS: smtp-sink behind a TLS terminator, upstream tls = \"on\" verified", function()
      local certs = require("helpers.certs").get()
      local tls = require "helpers.tls"
      local sc = smtp_scene.new(finally)
      local sink = start_sink(sc)
      local front = tls.front { target = sink.port, cert = certs.server, key = certs.server_key, proto = "smtp" }
      sc:on_stop(function() front:stop() end)
      local up = { host = "127.0.0.1", port = front.port, tls = "on", sni = "mail.test" }
      local p = sc:proxy({ domains = { ["sink.example"] = up } }, { auth = { "none" },
        config = { tls = { certificate = certs.server, key = certs.server_key, upstream_ca = certs.ca } } })
      local out, rc = smtplib(p.port, { from = "alice@sender.example", to = { "bob@sink.example" },
        subject = "over tls", body = "Hello smtp-sink over TLS." })
      assert.equal(0, rc, out)
      local dumps = sink:wait_message()
      assert.is_truthy(dumps, "smtp-sink dumped no message; its log:\n" .. sink:log())
      assert.matches("\nSubject: over tls\n", dumps[1])
      front:wait_for(" TLS TLSv1%.2 ")
    end)

    it("takes a whole pipelined transaction in one send, even when it does not offer PIPELINING itself (-p)", function()
      local sc = smtp_scene.new(finally)
      local sink = start_sink(sc, { "-p" })
      local p = sc:proxy({ domains = { ["*"] = smtp_scene.route(sink.port) } }, { auth = { "none" } })
      local c = sc:ehlo_client(p)
      c:send("MAIL FROM:<a@sender.example>\r\nRCPT TO:<b@sink.example>\r\nRCPT TO:<c@sink.example>\r\n" ..
        "DATA\r\nSubject: piped to the sink\r\n\r\nbody line\r\n..leading dot\r\n.\r\nQUIT\r\n")
      local codes = {}
      for _ = 1, 6 do codes[#codes + 1] = (c:smtp()) end
      assert.same({ 250, 250, 250, 354, 250, 221 }, codes)
      assert.is_true(c:closed(3))
      local dumps = sink:wait_message()
      assert.is_truthy(dumps, "smtp-sink dumped no message; its log:\n" .. sink:log())
      local h = sink_headers(dumps[1])
      assert.equal("<a@sender.example>", h["X-Mail-Args"])
      assert.equal("<b@sink.example>,<c@sink.example>", h["X-Rcpt-Args"])
      assert.matches("\nSubject: piped to the sink\n\nbody line\n%.leading dot\n", dumps[1])
    end)

    it("passes the upstream's refusal of the replayed RCPT to the client (smtp-sink -f RCPT)", function()
      local sc = smtp_scene.new(finally)
      local sink = start_sink(sc, { "-f", "RCPT" })
      local p = sc:proxy({ domains = { ["*"] = smtp_scene.route(sink.port) } }, { auth = { "none" } })
      local c = sc:ehlo_client(p)
      assert.equal(250, (c:smtp("MAIL FROM:<a@sender.example>")))
      local code, _, last = c:smtp("RCPT TO:<nobody@sink.example>")
      assert.equal(500, code)
      assert.equal("500 5.3.0 Error: command failed", last)
      assert.equal(221, (c:smtp("QUIT")))
      assert.same({}, sink:messages())
    end)

    it("takes a message after an AUTH login when the upstream offers no AUTH (smtp-sink -a)", function()
      local sc = smtp_scene.new(finally)
      local sink = start_sink(sc, { "-a" })
      local p = sc:proxy { users = { alice = smtp_scene.route(sink.port), ["*"] = "Invalid login or password" } }
      local out, rc = smtplib(p.port, { user = "alice", password = "secret", to = { "bob@example.org", "carol@example.org" },
        subject = "authenticated" })
      assert.equal(0, rc, out)
      assert.matches("login 235", out)
      local dumps = sink:wait_message()
      assert.is_truthy(dumps, "smtp-sink dumped no message; its log:\n" .. sink:log())
      local h = sink_headers(dumps[1])
      assert.matches("^<alice@example%.com> size=%d+$", h["X-Mail-Args"])
      assert.equal("<bob@example.org>,<carol@example.org>", h["X-Rcpt-Args"])
      assert.matches("\nSubject: authenticated\n", dumps[1])
      assert.is_nil(sink:log():find("AUTH", 1, true), "postern sent AUTH to an upstream that offers none")
    end)

    -- smtp-sink announces AUTH PLAIN LOGIN but answers AUTH with "250 2.0.0 Ok"
    -- instead of 235 (RFC 4954): no login happened, and the client must not
    -- be told otherwise with a 2xx
    it("answers the client 4xx/5xx, never 2xx, when the upstream answers AUTH with 250 instead of 235", function()
      local sc = smtp_scene.new(finally)
      local sink = start_sink(sc)
      local p = sc:proxy { users = { alice = smtp_scene.route(sink.port) } }
      local c = sc:ehlo_client(p)
      local code, _, last = c:smtp("AUTH PLAIN " .. smtp_scene.plain("alice", "secret"))
      assert.is_true(code >= 400 and code < 600, "AUTH answered with " .. last)
      assert.equal(530, (c:smtp("MAIL FROM:<a@x>"))) -- still not logged in
    end)

    it("takes a message with XCLIENT (smtp-sink answers XCLIENT with 250, as Postfix before 2.3 did)", function()
      local sc = smtp_scene.new(finally)
      local sink = start_sink(sc)
      local p = sc:proxy({ domains = { ["*"] = smtp_scene.route(sink.port, { xclient = true }) } },
        { auth = { "none" } })
      local out, rc = smtplib(p.port, { helo = "laptop.example", subject = "with xclient" })
      assert.equal(0, rc, out)
      local dumps = sink:wait_message()
      assert.is_truthy(dumps, "smtp-sink dumped no message; its log:\n" .. sink:log())
      local h = sink_headers(dumps[1])
      assert.equal("laptop.example", h["X-Helo-Args"])
      local xclient = sink:log():match("XCLIENT [^\n]*")
      assert.is_truthy(xclient, "no XCLIENT in smtp-sink's log:\n" .. sink:log())
      assert.matches("HELO=laptop%.example", xclient)
      -- smtp-sink announces "XCLIENT NAME HELO": only those attributes may be sent
      assert.is_nil(xclient:find("ADDR=", 1, true), xclient)
      assert.is_nil(xclient:find("PROTO=", 1, true), xclient)
      assert.matches("\nSubject: with xclient\n", dumps[1])
    end)
  end)
end)
