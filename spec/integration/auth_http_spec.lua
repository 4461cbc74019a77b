-- nginx auth_http compatibility: postern.auth_http speaks the protocol of
-- nginx's mail module (src/mail/ngx_mail_auth_http_module.c; the reference is
-- ../shared/reference/nginx-mail.md section 2), so an auth server written for
-- nginx works unchanged.
--
-- End to end: the real postern binary with IMAP, POP3, SMTP (AUTH) and SMTP
-- (auth none) listeners, mock mail backends, and the test kit's mock HTTP
-- server as the auth server. The mock records every request header in the
-- order it arrived and computes its answer from the request (the Auth-User
-- picks the scenario), so each test checks both directions: what postern
-- asked, and what it did with the answer.
--
-- The expected requests below are written from the nginx reference (header
-- order, names, %XX escaping), not from postern's code. One difference is
-- deliberate: postern speaks HTTP/1.1 with keep-alive (nginx: HTTP/1.0, one
-- connection per login).
--
-- At the end, unit tests call auth_http's authenticate directly from busted
-- with fabricated sessions and the real asynchronous library (postern.so).
local testing = require "postern.testing"
local md5 = require "postern.md5"
local mime = require "mime"

local function b64(s) return (mime.b64(s)) end
local function unb64(s) return (mime.unb64(s)) end

-- the auth server's script: the Auth-User (escaped, as sent) picks the answer
local HANDLER = [[
local PORTS = { imap = %d, pop3 = %d, smtp = %d }
local seen = {}
return function(req)
  local h = req.h
  local user, proto = h["auth-user"] or "", h["auth-protocol"] or "imap"
  local key = user .. "/" .. (h["auth-login-attempt"] or "")
  seen[key] = (seen[key] or 0) + 1
  local function ok(extra, server)
    local hs = { { "Auth-Status", "OK" }, { "Auth-Server", server or "127.0.0.1" },
                 { "Auth-Port", tostring(PORTS[proto]) } }
    for _, e in ipairs(extra or {}) do hs[#hs + 1] = e end
    return { headers = hs }
  end
  local secret = { { "Auth-Pass", "secret" } }
  if user == "alice" or user == "bob" then return ok(secret) end
  if user == "keep" then return ok() end                       -- no Auth-Pass
  if user == "rewrite" or user:find("%%", 1, true) then
    return ok({ { "Auth-User", "alice" }, { "Auth-Pass", "secret" } })
  end
  if user == "denied" then
    return { headers = { { "Auth-Status", "Invalid login or password" }, { "Auth-Wait", "1" } } }
  end
  if user == "retry" then
    if h["auth-login-attempt"] == "1" then
      return { headers = { { "Auth-Status", "Invalid login or password" }, { "Auth-Wait", "1" } } }
    end
    return ok(secret)
  end
  if user == "denied-now" then return { headers = { { "Auth-Status", "Account disabled" } } } end
  if user == "badwait" then
    return { headers = { { "Auth-Status", "Account disabled" }, { "Auth-Wait", "soon" } } }
  end
  if user == "smtpcode" then
    return { headers = { { "Auth-Status", "Temporary server problem, try again later" },
                         { "Auth-Error-Code", "451 4.3.0" }, { "Auth-Wait", "1" } } }
  end
  if user == "waitonce" then
    if seen[key] == 1 then return { headers = { { "Auth-Status", "WAIT" }, { "Auth-Wait", "1" } } } end
    return ok(secret)
  end
  if user == "waitzero" then
    if seen[key] <= 2 then return { headers = { { "Auth-Status", "WAIT" } } } end
    return ok(secret)
  end
  if user == "slow" then
    local a = ok(secret); a.delay = 1; return a
  end
  if user == "hang" then
    local a = ok(secret); a.delay = 4; return a
  end
  if user == "http500" then return { status = 500, body = "oops" } end
  if user == "status500ok" then local a = ok(secret); a.status = 500; a.body = "ignored"; return a end
  if user == "status401ok" then local a = ok(secret); a.status = 401; return a end
  if user == "drop" then return { close = true } end
  if user == "noserver" then return { headers = { { "Auth-Status", "OK" }, { "Auth-Pass", "secret" } } } end
  if user == "nostatus" then
    return { headers = { { "Auth-Server", "127.0.0.1" }, { "Auth-Port", tostring(PORTS[proto]) },
                         { "Auth-Pass", "secret" } } }
  end
  if user == "badport" then
    return { headers = { { "Auth-Status", "OK" }, { "Auth-Server", "127.0.0.1" }, { "Auth-Port", "99999" },
                         { "Auth-Pass", "secret" } } }
  end
  if user == "byname" then return ok(secret, "localhost") end
  if user == "lowercase" then
    return { headers = { { "auth-status", "OK" }, { "AUTH-SERVER", "127.0.0.1" },
                         { "auth-port", tostring(PORTS[proto]) }, { "Auth-pass", "secret" } } }
  end
  if user == "okcase" then return { headers = { { "Auth-Status", "ok" } } } end
  if user == "cram" or user == "apop" then
    return ok({ { "Auth-User", "alice" }, { "Auth-Pass", "secret" } })
  end
  if user == "cram-nopass" then return ok({ { "Auth-User", "alice" } }) end
  if h["auth-method"] == "none" then return ok() end
  return { headers = { { "Auth-Status", "Invalid login or password" } } }
end
]]

local auth, imap_backend, pop3_backend, smtp_backend, proxy
local IMAP, POP3, SMTP, SMTP_NONE            -- listener ports
local dead_port

-- the requests the auth server got for one Auth-User (as sent, escaped)
local function requests_for(user, n, timeout)
  local got
  local deadline = testing.now() + (timeout or 3)
  repeat
    got = {}
    for _, r in ipairs(auth:requests()) do
      if (r.h["auth-user"] or "") == user then got[#got + 1] = r end
    end
    if #got >= (n or 1) then return got end
    testing.sleep(0.02)
  until testing.now() > deadline
  error(("auth server: %d request(s) for Auth-User %q, wanted %d; records:\n%s"):format(#got, user, n or 1,
    table.concat(auth:lines(), "\n")), 2)
end

local function imap_client()
  local c = testing.client { port = IMAP }
  c:expect("^%* OK")
  return c
end

local function imap_login(user, pass, timeout)
  local c = imap_client()
  local line = c:command("a1", ("LOGIN %s %s"):format(user, pass), timeout)
  return c, line
end

local function smtp_client(port)
  local c = testing.client { port = port or SMTP }
  assert.equals(220, (c:smtp()))
  assert.equals(250, (c:smtp("EHLO client.example")))
  return c
end

local function plain(user, pass) return b64("\0" .. user .. "\0" .. pass) end

describe("nginx auth_http compatibility (postern.auth_http)", function()
  setup(function()
    -- the backends accept any login: the tests look at what they received
    imap_backend = testing.mock_imap { name = "imap-a" }
    pop3_backend = testing.mock_pop3 { name = "pop-a" }
    smtp_backend = testing.mock_smtp { name = "mx-a" }
    auth = testing.mock_http {
      name = "auth",
      handler = HANDLER:format(imap_backend.port, pop3_backend.port, smtp_backend.port),
    }
    dead_port = testing.free_port()
    proxy = testing.start {
      policy_source = ([[
        local auth_http = require "postern.auth_http"
        local main = auth_http.new {
          url = %q,
          headers = { { "X-Extra", "v" }, { "X-Tenant", "t1" } },
          timeout = 5,
        }
        local short = auth_http.new { url = %q, timeout = 1 }
        local dead = auth_http.new { url = "http://127.0.0.1:%d/auth", timeout = 2 }
        return {
          authenticate = function(s)
            if s.user == "hang" then return short(s) end
            if s.user == "refused" then return dead(s) end
            return main(s)
          end,
        }
      ]]):format(auth:url("/auth"), auth:url("/auth"), dead_port),
      config = {
        auth_timeout = 10,
        listen = {
          { protocol = "imap", auth = { "plain", "login", "cram-md5" } },
          { protocol = "pop3", auth = { "user", "plain", "apop" } },
          { protocol = "smtp", auth = { "plain", "login", "cram-md5" } },
          { protocol = "smtp", auth = { "none" } },
        },
      },
    }
    IMAP, POP3, SMTP, SMTP_NONE = proxy.ports[1], proxy.ports[2], proxy.ports[3], proxy.ports[4]
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if auth then auth:stop() end
    if imap_backend then imap_backend:stop() end
    if pop3_backend then pop3_backend:stop() end
    if smtp_backend then smtp_backend:stop() end
  end)

  describe("the request", function()
    it("IMAP LOGIN: a GET of the URI with nginx's headers in nginx's order, then auth_http_header's", function()
      local c, line = imap_login("alice", "secret")
      assert.matches("^a1 OK", line)
      c:close()
      local r = requests_for("alice")[1]
      assert.equals("GET", r.method)
      assert.equals("/auth", r.path)
      assert.same({
        { "Host", "127.0.0.1" },                  -- the URL's host, without the port
        { "Auth-Method", "plain" },
        { "Auth-User", "alice" },
        { "Auth-Pass", "secret" },
        { "Auth-Protocol", "imap" },
        { "Auth-Login-Attempt", "1" },
        { "Client-IP", "127.0.0.1" },
        { "X-Extra", "v" },
        { "X-Tenant", "t1" },
      }, r.headers)
      assert.equals("", r.body)
    end)

    it("escapes Auth-User and Auth-Pass as nginx: control bytes, space and % as %XX, the rest raw", function()
      -- SASL PLAIN carries any byte but NUL, CR and LF
      local user, pass = "j.doe 100%", "p\tw %x\127\195\169"
      local c = imap_client()
      assert.matches("^a1 OK", (c:command("a1", "AUTHENTICATE PLAIN " .. plain(user, pass))))
      c:close()
      local r = requests_for("j.doe%20100%25")[1]
      assert.equals("j.doe%20100%25", r.h["auth-user"])
      assert.equals("p%09w%20%25x\127\195\169", r.h["auth-pass"])
      assert.equals("plain", r.h["auth-method"])
      -- the answer's Auth-User/Auth-Pass went upstream
      imap_backend:wait_for("^AUTH alice secret")
    end)

    it("IMAP AUTHENTICATE LOGIN is Auth-Method plain, as in nginx", function()
      local c = imap_client()
      c:send("a1 AUTHENTICATE LOGIN\r\n")
      c:expect("^%+ ")
      c:send(b64("bob") .. "\r\n")
      c:expect("^%+ ")
      c:send(b64("secret") .. "\r\n")
      assert.matches("^a1 OK", c:line())
      c:close()
      local r = requests_for("bob")[1]
      assert.equals("plain", r.h["auth-method"])
      assert.equals("secret", r.h["auth-pass"])
    end)

    it("IMAP CRAM-MD5: Auth-Method cram-md5, Auth-Pass the client's digest, Auth-Salt the challenge, before Auth-Protocol", function()
      local c = imap_client()
      c:send("a1 AUTHENTICATE CRAM-MD5\r\n")
      local challenge = unb64(c:expect("^%+ "):sub(3))
      local digest = md5.hmac_hex("secret", challenge)
      c:send(b64("cram " .. digest) .. "\r\n")
      assert.matches("^a1 OK", c:line())
      c:close()
      local r = requests_for("cram")[1]
      assert.same({
        { "Host", "127.0.0.1" },
        { "Auth-Method", "cram-md5" },
        { "Auth-User", "cram" },
        { "Auth-Pass", digest },
        { "Auth-Salt", challenge },
        { "Auth-Protocol", "imap" },
        { "Auth-Login-Attempt", "1" },
        { "Client-IP", "127.0.0.1" },
        { "X-Extra", "v" },
        { "X-Tenant", "t1" },
      }, r.headers)
      -- the cleartext from the answer's Auth-Pass logs in upstream
      imap_backend:wait_for("^AUTH alice secret")
    end)

    it("POP3 USER/PASS: Auth-Method plain, Auth-Protocol pop3", function()
      local c = testing.client { port = POP3 }
      assert.matches("^%+OK", c:pop3())
      assert.matches("^%+OK", c:pop3("USER alice"))
      assert.matches("^%+OK", c:pop3("PASS secret"))
      c:pop3("QUIT")
      c:close()
      local reqs = requests_for("alice", 1)
      local r
      for _, x in ipairs(reqs) do if x.h["auth-protocol"] == "pop3" then r = x end end
      assert.is_table(r, "no POP3 request")
      assert.same({
        { "Host", "127.0.0.1" },
        { "Auth-Method", "plain" },
        { "Auth-User", "alice" },
        { "Auth-Pass", "secret" },
        { "Auth-Protocol", "pop3" },
        { "Auth-Login-Attempt", "1" },
        { "Client-IP", "127.0.0.1" },
        { "X-Extra", "v" },
        { "X-Tenant", "t1" },
      }, r.headers)
      pop3_backend:wait_for("^AUTH alice secret")
    end)

    it("POP3 APOP: Auth-Method apop, Auth-Pass the digest, Auth-Salt the greeting's timestamp; the answer's Auth-Pass logs in upstream", function()
      local c = testing.client { port = POP3 }
      local greeting = c:pop3()
      local ts = greeting:match("<.->")
      assert.is_string(ts, "no APOP timestamp in " .. greeting)
      local digest = md5.hex(ts .. "secret")
      assert.matches("^%+OK", c:pop3("APOP apop " .. digest))
      c:pop3("QUIT")
      c:close()
      local r = requests_for("apop")[1]
      assert.same({
        { "Host", "127.0.0.1" },
        { "Auth-Method", "apop" },
        { "Auth-User", "apop" },
        { "Auth-Pass", digest },
        { "Auth-Salt", ts },
        { "Auth-Protocol", "pop3" },
        { "Auth-Login-Attempt", "1" },
        { "Client-IP", "127.0.0.1" },
        { "X-Extra", "v" },
        { "X-Tenant", "t1" },
      }, r.headers)
      pop3_backend:wait_for("^AUTH alice secret")
    end)

    it("SMTP AUTH: Auth-Protocol smtp and Client-Host [UNAVAILABLE] (nginx without a resolver) after Client-IP", function()
      local c = smtp_client()
      assert.equals(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
      c:smtp("QUIT")
      c:close()
      local r
      for _, x in ipairs(requests_for("alice", 1)) do if x.h["auth-protocol"] == "smtp" then r = x end end
      assert.is_table(r, "no SMTP request")
      assert.same({
        { "Host", "127.0.0.1" },
        { "Auth-Method", "plain" },
        { "Auth-User", "alice" },
        { "Auth-Pass", "secret" },
        { "Auth-Protocol", "smtp" },
        { "Auth-Login-Attempt", "1" },
        { "Client-IP", "127.0.0.1" },
        { "Client-Host", "[UNAVAILABLE]" },
        { "X-Extra", "v" },
        { "X-Tenant", "t1" },
      }, r.headers)
    end)

    it("SMTP without AUTH (auth none): empty Auth-User/Auth-Pass, and Auth-SMTP-Helo/From/To with the whole MAIL and RCPT lines", function()
      local c = smtp_client(SMTP_NONE)
      assert.equals(250, (c:smtp("MAIL FROM:<a@x.example> SIZE=100")))
      assert.equals(250, (c:smtp("RCPT TO:<b@y.example>")))
      c:smtp("QUIT")
      c:close()
      local r = requests_for("")[1]
      assert.same({
        { "Host", "127.0.0.1" },
        { "Auth-Method", "none" },
        { "Auth-User", "" },
        { "Auth-Pass", "" },
        { "Auth-Protocol", "smtp" },
        { "Auth-Login-Attempt", "1" },
        { "Client-IP", "127.0.0.1" },
        { "Client-Host", "[UNAVAILABLE]" },
        { "Auth-SMTP-Helo", "client.example" },
        { "Auth-SMTP-From", "MAIL FROM:<a@x.example> SIZE=100" },
        { "Auth-SMTP-To", "RCPT TO:<b@y.example>" },
        { "X-Extra", "v" },
        { "X-Tenant", "t1" },
      }, r.headers)
    end)

    it("sends no header nginx does not send (no User-Agent, no Accept)", function()
      local c = imap_login("alice", "secret")
      c:close()
      for _, r in ipairs(requests_for("alice")) do
        assert.is_nil(r.h["user-agent"])
        assert.is_nil(r.h["accept"])
      end
    end)
  end)

  describe("the answer", function()
    it("Auth-Status OK routes to Auth-Server:Auth-Port and logs in with the answer's Auth-Pass", function()
      local c, line = imap_login("alice", "secret")
      assert.matches("^a1 OK", line)
      local _, untagged = c:command("a2", 'LIST "" *')
      assert.matches("imap%-a", table.concat(untagged, "\n"))
      c:close()
      imap_backend:wait_for("^AUTH alice secret")
    end)

    it("Auth-User and Auth-Pass replace the credentials used upstream", function()
      local c, line = imap_login("rewrite", "whatever")
      assert.matches("^a1 OK", line)
      c:close()
      local logins = imap_backend:logins()
      assert.same({ user = "alice", password = "secret" },
        { user = logins[#logins].user, password = logins[#logins].password })
    end)

    it("without Auth-Pass the client's own password goes upstream (as nginx after a cleartext login)", function()
      local c, line = imap_login("keep", "kept-pass")
      assert.matches("^a1 OK", line)
      c:close()
      imap_backend:wait_for("^AUTH keep kept%-pass")
    end)

    it("ignores the HTTP status code: a 500 or 401 with Auth-Status OK still routes", function()
      local c, line = imap_login("status500ok", "x")
      assert.matches("^a1 OK", line)
      c:close()
      c, line = imap_login("status401ok", "x")
      assert.matches("^a1 OK", line)
      c:close()
      assert.equals(500, requests_for("status500ok")[1].status)
    end)

    it("matches answer header names case-insensitively", function()
      local c, line = imap_login("lowercase", "x")
      assert.matches("^a1 OK", line)
      c:close()
    end)

    it("without Auth-Status, a server and port are a success (nginx checks only for an error or WAIT)", function()
      local c, line = imap_login("nostatus", "x")
      assert.matches("^a1 OK", line)
      c:close()
    end)

    it("Auth-Status other than exactly OK is the error text shown to the client ('ok' included)", function()
      local c, line = imap_login("okcase", "x")
      assert.matches("^a1 NO .*ok$", line)
      c:close()
    end)

    it("an error with Auth-Wait: the reply comes after the wait, then the client may try again (Auth-Login-Attempt 2)", function()
      local c = imap_client()
      local t0 = testing.now()
      local line = c:command("a1", "LOGIN retry secret")
      local waited = testing.now() - t0
      assert.matches("^a1 NO .*Invalid login or password$", line)
      assert.is_true(waited >= 0.9, ("the error came after %.2f s, Auth-Wait is 1"):format(waited))
      assert.matches("^a2 OK", (c:command("a2", "LOGIN retry secret")))
      c:close()
      local reqs = requests_for("retry", 2)
      assert.equals("1", reqs[1].h["auth-login-attempt"])
      assert.equals("2", reqs[2].h["auth-login-attempt"])
    end)

    it("an error with Auth-Wait is shown as POP3 -ERR <text>", function()
      local c = testing.client { port = POP3 }
      c:pop3()
      c:pop3("USER denied")
      local line = c:pop3("PASS x")
      assert.matches("^%-ERR .*Invalid login or password$", line)
      c:close()
    end)

    it("an error without Auth-Wait: the error, then the connection is closed", function()
      local c, line = imap_login("denied-now", "x")
      assert.matches("^a1 NO .*Account disabled$", line)
      assert.is_true(c:closed(3), "the connection stayed open")
    end)

    it("a non-numeric Auth-Wait is ignored (as 0): the error, then close", function()
      local c, line = imap_login("badwait", "x")
      assert.matches("^a1 NO .*Account disabled$", line)
      assert.is_true(c:closed(3), "the connection stayed open")
    end)

    it("SMTP: Auth-Error-Code replaces the reply code", function()
      local c = smtp_client()
      local code, _, last = c:smtp("AUTH PLAIN " .. plain("smtpcode", "x"))
      assert.equals(451, code)
      assert.equals("451 4.3.0 Temporary server problem, try again later", last)
      c:close()
    end)

    it("SMTP: without Auth-Error-Code the reply is nginx's 535 5.7.0 <text>", function()
      local c = smtp_client()
      local code, _, last = c:smtp("AUTH PLAIN " .. plain("denied", "x"))
      assert.equals(535, code)
      assert.equals("535 5.7.0 Invalid login or password", last)
      -- Auth-Wait 1: the client may try again
      assert.equals(235, (c:smtp("AUTH PLAIN " .. plain("alice", "secret"))))
      c:close()
    end)

    it("Auth-Status WAIT: asks again after Auth-Wait with the same Auth-Login-Attempt; the client sees only the final answer", function()
      local c = imap_client()
      local t0 = testing.now()
      local line, untagged = c:command("a1", "LOGIN waitonce secret")
      local took = testing.now() - t0
      assert.matches("^a1 OK", line)
      assert.same({}, untagged)
      assert.is_true(took >= 0.9, ("answered after %.2f s, Auth-Wait is 1"):format(took))
      c:close()
      local reqs = requests_for("waitonce", 2)
      assert.equals(2, #reqs)
      assert.equals("1", reqs[1].h["auth-login-attempt"])
      assert.equals("1", reqs[2].h["auth-login-attempt"])
    end)

    it("Auth-Status WAIT without Auth-Wait: asks again at once", function()
      local c = imap_client()
      local t0 = testing.now()
      assert.matches("^a1 OK", (c:command("a1", "LOGIN waitzero secret")))
      assert.is_true(testing.now() - t0 < 2)
      c:close()
      assert.equals(3, #requests_for("waitzero", 3))
    end)

    it("a host name in Auth-Server is resolved (nginx accepts only an IP address)", function()
      local c, line = imap_login("byname", "x")
      assert.matches("^a1 OK", line)
      c:close()
      imap_backend:wait_for("^AUTH alice secret")
    end)

    it("CRAM-MD5 answered without Auth-Pass is a temporary failure: no cleartext to log in upstream with", function()
      local c = imap_client()
      c:send("a1 AUTHENTICATE CRAM-MD5\r\n")
      local challenge = unb64(c:expect("^%+ "):sub(3))
      c:send(b64("cram-nopass " .. md5.hmac_hex("secret", challenge)) .. "\r\n")
      assert.matches("^a1 NO %[UNAVAILABLE%]", c:line())
      c:close()
    end)
  end)

  describe("auth server failures are a temporary failure (nginx's internal server error)", function()
    it("HTTP 500 without Auth-* headers", function()
      local c, line = imap_login("http500", "x")
      assert.matches("^a1 NO %[UNAVAILABLE%]", line)
      c:close()
    end)

    it("an answer without Auth-Server", function()
      local c, line = imap_login("noserver", "x")
      assert.matches("^a1 NO %[UNAVAILABLE%]", line)
      c:close()
    end)

    it("an invalid Auth-Port", function()
      local c, line = imap_login("badport", "x")
      assert.matches("^a1 NO %[UNAVAILABLE%]", line)
      c:close()
    end)

    it("the auth server closes without answering", function()
      local c, line = imap_login("drop", "x")
      assert.matches("^a1 NO %[UNAVAILABLE%]", line)
      c:close()
    end)

    it("the auth server does not answer within auth_http_timeout (timeout = 1)", function()
      local t0 = testing.now()
      local c, line = imap_login("hang", "x", 8)
      local took = testing.now() - t0
      assert.matches("^a1 NO %[UNAVAILABLE%]", line)
      assert.is_true(took >= 0.9 and took < 3.5, ("gave up after %.2f s"):format(took))
      c:close()
    end)

    it("the auth server refuses the connection", function()
      local c, line = imap_login("refused", "x")
      assert.matches("^a1 NO %[UNAVAILABLE%]", line)
      c:close()
      proxy:wait_log("auth http server 127%.0%.0%.1:" .. dead_port)
    end)

    it("SMTP: 451 4.3.2, nginx's internal-error code", function()
      local c = smtp_client()
      local code, _, last = c:smtp("AUTH PLAIN " .. plain("http500", "x"))
      assert.equals(451, code)
      assert.matches("^451 4%.3%.2 ", last)
      c:close()
    end)

    it("then the connection is closed, as nginx does", function()
      local c, line = imap_login("http500", "x")
      assert.matches("^a1 NO", line)
      assert.is_true(c:closed(3), "the connection stayed open")
    end)
  end)

  describe("the connection to the auth server", function()
    it("is kept alive and reused by the next sessions", function()
      for i = 1, 3 do
        local c, line = imap_login("alice", "secret")
        assert.matches("^a1 OK", line, "session " .. i)
        c:close()
      end
      local reqs = requests_for("alice", 3)
      local last3 = { reqs[#reqs - 2], reqs[#reqs - 1], reqs[#reqs] }
      assert.equals(last3[1].conn, last3[2].conn)
      assert.equals(last3[2].conn, last3[3].conn)
      assert.equals("HTTP/1.1", last3[3].version)
    end)

    it("serves 50 sessions waiting on a 1-second answer at once in about one second", function()
      local clients = {}
      for i = 1, 50 do
        clients[i] = testing.client { port = IMAP, timeout = 15 }
        clients[i]:expect("^%* OK")
      end
      local t0 = testing.now()
      for _, c in ipairs(clients) do c:send("a1 LOGIN slow secret\r\n") end
      local ok = 0
      for _, c in ipairs(clients) do
        if c:line(15):match("^a1 OK") then ok = ok + 1 end
      end
      local took = testing.now() - t0
      for _, c in ipairs(clients) do c:close() end
      print(("\n  50 sessions on a 1 s auth answer finished in %.2f s"):format(took))
      assert.equals(50, ok)
      assert.is_true(took >= 0.9, ("%.2f s: the answers were not delayed"):format(took))
      assert.is_true(took < 5, ("%.2f s: hooks blocked each other"):format(took))
    end)
  end)
end)

describe("auth_http unit (called from busted, real postern.so)", function()
  local auth_http = require "postern.auth_http"
  local postern = require "postern"

  local function session(fields)
    local s = { id = 1, protocol = "imap", client_ip = "192.0.2.7", client_port = 40000,
      local_ip = "127.0.0.1", local_port = 143, mechanism = "plain", user = "alice",
      password = "secret", login_attempt = 1, tls = false, vars = {} }
    for k, v in pairs(fields or {}) do s[k] = v end
    return s
  end

  describe("escape", function()
    it("turns bytes 0x00-0x1F, space and % into uppercase %XX and leaves the rest, 0x7F and UTF-8 included", function()
      assert.equals("a%20b%25c%09%0D%0A%01%1F", auth_http.escape("a b%c\t\r\n\1\31"))
      assert.equals("~!\"#$&'()*+,/:;<=>?@[\\]^_`{|}\127\195\169", auth_http.escape("~!\"#$&'()*+,/:;<=>?@[\\]^_`{|}\127\195\169"))
      assert.equals("%00x", auth_http.escape("\0x"))
      assert.equals("", auth_http.escape(nil))
    end)
  end)

  describe("Auth-Method", function()
    it("maps postern's mechanisms to nginx's names", function()
      assert.equals("plain", auth_http.method("plain"))
      assert.equals("plain", auth_http.method("login"))
      assert.equals("apop", auth_http.method("apop"))
      assert.equals("cram-md5", auth_http.method("cram-md5"))
      assert.equals("external", auth_http.method("external"))
      assert.equals("none", auth_http.method("none"))
      assert.equals("xoauth2", auth_http.method("xoauth2"))
      assert.equals("oauthbearer", auth_http.method("oauthbearer"))
    end)
  end)

  describe("url", function()
    it("takes nginx's forms: scheme optional, port 80 and uri / by default; Host is the host without the port", function()
      local u = auth_http.parse_url("http://auth.example:9000/mail/auth?x=1")
      assert.same({ "http://auth.example:9000/mail/auth?x=1", "auth.example", "/mail/auth?x=1" },
        { u.url, u.host_header, u.uri })
      u = auth_http.parse_url("127.0.0.1:8080")
      assert.same({ "http://127.0.0.1:8080/", "127.0.0.1", "/" }, { u.url, u.host_header, u.uri })
      u = auth_http.parse_url("http://[::1]:81/a")
      assert.equals("[::1]", u.host_header)
      assert.is_nil((auth_http.parse_url("unix:/run/auth.sock")))
      assert.is_nil((auth_http.parse_url("ftp://x/")))
      assert.has_error(function() auth_http.new { url = "http://x:port/" } end)
    end)
  end)

  describe("request headers", function()
    it("TLS sessions add Auth-SSL: on and the certificate fields in nginx's order; the PEM only with pass_client_cert, escaped", function()
      local s = session { tls = true, tls_protocol = "TLSv1.3", tls_cipher = "TLS_AES_256_GCM_SHA384",
        tls_verify = "SUCCESS", tls_subject = "CN=client.example", tls_issuer = "CN=Test CA",
        tls_serial = "1A2B", tls_fingerprint = "0123abcd", tls_cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" }
      local conf = { host_header = "auth.example", extra_headers = { { "X-A", "1" } }, pass_client_cert = true }
      assert.same({
        { "Host", "auth.example" },
        { "Auth-Method", "plain" },
        { "Auth-User", "alice" },
        { "Auth-Pass", "secret" },
        { "Auth-Protocol", "imap" },
        { "Auth-Login-Attempt", "1" },
        { "Client-IP", "192.0.2.7" },
        { "Auth-SSL", "on" },
        { "Auth-SSL-Protocol", "TLSv1.3" },
        { "Auth-SSL-Cipher", "TLS_AES_256_GCM_SHA384" },
        { "Auth-SSL-Verify", "SUCCESS" },
        { "Auth-SSL-Subject", "CN=client.example" },
        { "Auth-SSL-Issuer", "CN=Test CA" },
        { "Auth-SSL-Serial", "1A2B" },
        { "Auth-SSL-Fingerprint", "0123abcd" },
        { "Auth-SSL-Cert", "-----BEGIN%20CERTIFICATE-----%0AMIIB%0A-----END%20CERTIFICATE-----%0A" },
        { "X-A", "1" },
      }, auth_http.request_headers(s, conf))
      conf.pass_client_cert = false
      local h = auth_http.request_headers(s, conf)
      for _, e in ipairs(h) do assert.not_equals("Auth-SSL-Cert", e[1]) end
    end)

    it("PROXY protocol fields come after Client-IP/Client-Host; a Client-Host that is not [A-Za-z0-9.-] becomes [TEMPUNAVAIL]", function()
      local s = session { protocol = "smtp", client_host = "evil\tname", proxy_protocol_addr = "203.0.113.9",
        proxy_protocol_port = 5555, proxy_protocol_server_addr = "198.51.100.1", proxy_protocol_server_port = 25 }
      local h = auth_http.request_headers(s, { host_header = "a" })
      assert.same({ "Client-IP", "192.0.2.7" }, h[7])
      assert.same({ "Client-Host", "[TEMPUNAVAIL]" }, h[8])
      assert.same({ { "Proxy-Protocol-Addr", "203.0.113.9" }, { "Proxy-Protocol-Port", "5555" },
        { "Proxy-Protocol-Server-Addr", "198.51.100.1" }, { "Proxy-Protocol-Server-Port", "25" } },
        { h[9], h[10], h[11], h[12] })
      s = session { protocol = "smtp", client_host = "mx.client.example" }
      assert.same({ "Client-Host", "mx.client.example" }, auth_http.request_headers(s, { host_header = "a" })[8])
    end)

    it("SMTP auth none: empty Auth-User/Auth-Pass, then Auth-SMTP-Helo/From/To; the whole command lines when the session has them", function()
      local s = session { protocol = "smtp", mechanism = "none", helo = "client.example",
        mail_from = "a@x.example", rcpt_to = { "b@y.example" } }
      s.user, s.password = nil, nil
      local conf = { host_header = "auth.example" }
      assert.same({
        { "Host", "auth.example" },
        { "Auth-Method", "none" },
        { "Auth-User", "" },
        { "Auth-Pass", "" },
        { "Auth-Protocol", "smtp" },
        { "Auth-Login-Attempt", "1" },
        { "Client-IP", "192.0.2.7" },
        { "Client-Host", "[UNAVAILABLE]" },
        { "Auth-SMTP-Helo", "client.example" },
        { "Auth-SMTP-From", "MAIL FROM:<a@x.example>" },
        { "Auth-SMTP-To", "RCPT TO:<b@y.example>" },
      }, auth_http.request_headers(s, conf))
      s.mail_line, s.rcpt_line = "mail from:<a@x.example> SIZE=100", "RCPT TO:<b@y.example> NOTIFY=NEVER"
      local h = auth_http.request_headers(s, conf)
      assert.same({ "Auth-SMTP-From", "mail from:<a@x.example> SIZE=100" }, h[10])
      assert.same({ "Auth-SMTP-To", "RCPT TO:<b@y.example> NOTIFY=NEVER" }, h[11])
    end)
  end)

  describe("interpreting the answer", function()
    local imap, smtp = session(), session { protocol = "smtp" }

    it("OK with server and port; the password falls back to the client's", function()
      assert.same({ kind = "ok", host = "10.0.0.5", port = 143, user = "alice", password = "secret" },
        auth_http.interpret(imap, { ["auth-status"] = "OK", ["auth-server"] = "10.0.0.5", ["auth-port"] = "143" }))
      assert.same({ kind = "ok", host = "::1", port = 143, user = "u2", password = "p2" },
        auth_http.interpret(imap, { ["Auth-Status"] = "OK", ["Auth-Server"] = "::1", ["Auth-Port"] = "143",
          ["Auth-User"] = "u2", ["Auth-Pass"] = "p2" }))
    end)

    it("an error status is the message; Auth-Wait must be digits; SMTP gets Auth-Error-Code or 535 5.7.0", function()
      assert.same({ kind = "error", message = "No", wait = 3 },
        auth_http.interpret(imap, { ["auth-status"] = "No", ["auth-wait"] = "3" }))
      assert.same({ kind = "error", message = "No", wait = 0 },
        auth_http.interpret(imap, { ["auth-status"] = "No", ["auth-wait"] = "-3" }))
      assert.same({ kind = "error", message = "No", wait = 0, code = "535 5.7.0" },
        auth_http.interpret(smtp, { ["auth-status"] = "No" }))
      assert.same({ kind = "error", message = "Later", wait = 2, code = "451 4.3.0" },
        auth_http.interpret(smtp, { ["auth-status"] = "Later", ["auth-error-code"] = "451 4.3.0", ["auth-wait"] = "2" }))
    end)

    it("WAIT; and the internal errors: no server or port, a bad port, no password after CRAM-MD5 (IMAP/POP3)", function()
      assert.same({ kind = "wait", wait = 2 }, auth_http.interpret(imap, { ["auth-status"] = "WAIT", ["auth-wait"] = "2" }))
      assert.equals("internal", auth_http.interpret(imap, { ["auth-status"] = "OK" }).kind)
      assert.equals("internal", auth_http.interpret(imap, { ["auth-status"] = "OK", ["auth-server"] = "1.2.3.4",
        ["auth-port"] = "0" }).kind)
      assert.equals("internal", auth_http.interpret(imap, { ["auth-status"] = "OK", ["auth-server"] = "1.2.3.4",
        ["auth-port"] = "14x" }).kind)
      local cram = session { mechanism = "cram-md5", digest = ("a"):rep(32), salt = "<1.2@x>" }
      cram.password = nil
      assert.equals("internal", auth_http.interpret(cram, { ["auth-server"] = "1.2.3.4", ["auth-port"] = "143" }).kind)
      -- SMTP needs no password (XCLIENT)
      local none = session { protocol = "smtp", mechanism = "none" }
      none.user, none.password = nil, nil
      assert.same({ kind = "ok", host = "1.2.3.4", port = 25 },
        auth_http.interpret(none, { ["auth-status"] = "OK", ["auth-server"] = "1.2.3.4", ["auth-port"] = "25" }))
    end)
  end)

  describe("authenticate against the mock auth server", function()
    local srv

    setup(function()
      srv = testing.mock_http {
        handler = [[
          local n = 0
          return function(req)
            local u = req.h["auth-user"]
            if u == "waiter" then
              n = n + 1
              if n == 1 then return { headers = { { "Auth-Status", "WAIT" } } } end
            end
            if u == "nope" then
              return { headers = { { "Auth-Status", "Invalid login or password" }, { "Auth-Wait", "2" } } }
            end
            if u == "nope-now" then return { headers = { { "Auth-Status", "Account disabled" } } } end
            return { headers = { { "Auth-Status", "OK" }, { "Auth-Server", "localhost" }, { "Auth-Port", "1143" },
                                 { "Auth-Pass", "from-server" } } }
          end
        ]],
      }
    end)
    teardown(function() if srv then srv:stop() end end)

    it("returns the upstream { host, port, user, password }, the host name resolved", function()
      local authenticate = auth_http.new { url = srv:url(), headers = { ["X-Key"] = "k" } }
      local up, refusal = authenticate(session())
      assert.is_nil(refusal)
      assert.same({ host = "127.0.0.1", port = 1143, user = "alice", password = "from-server" }, up)
      local r = srv:wait_requests(1)[1]
      assert.equals("k", r.h["x-key"])
      assert.equals("192.0.2.7", r.h["client-ip"])
    end)

    it("returns a refusal with the message and the wait", function()
      local authenticate = auth_http.new { url = srv:url() }
      local up, refusal = authenticate(session { user = "nope" })
      assert.is_nil(up)
      assert.same({ message = "Invalid login or password", wait = 2 }, refusal)
    end)

    it("without Auth-Wait the refusal asks the core to close the connection, as nginx closes", function()
      local up, refusal = auth_http.new { url = srv:url() }(session { user = "nope-now" })
      assert.is_nil(up)
      assert.same({ message = "Account disabled", close = true }, refusal)
    end)

    it("retries after WAIT", function()
      local before = #srv:requests()
      local up = auth_http.new { url = srv:url() }(session { user = "waiter" })
      assert.equals(1143, up.port)
      assert.equals(before + 2, #srv:wait_requests(before + 2))
    end)

    it("a server that cannot be reached is a temporary failure that closes", function()
      local up, refusal = auth_http.new { url = "http://127.0.0.1:" .. testing.free_port() .. "/", timeout = 2 }(
        session())
      assert.is_nil(up)
      assert.same({ temporary = true, close = true }, refusal)
      local _, smtp_refusal = auth_http.new { url = "http://127.0.0.1:" .. testing.free_port() .. "/" }(
        session { protocol = "smtp" })
      assert.equals("451 4.3.2", smtp_refusal.code)
    end)

    it("uses the real asynchronous library (postern.so)", function()
      assert.is_function(postern.http.request)
      assert.is_function(postern.dns.resolve)
    end)
  end)
end)
