-- scripts/remote_auth.lua: the policy that POSTs the credentials as JSON to
-- an HTTP API and gets the upstream (or a refusal) back, caching the
-- successful answers.
--
-- Unit specs call its authenticate hook directly from busted with
-- fabricated sessions; the HTTP calls are real (require "postern" blocks
-- until they are done) and go to the test kit's mock HTTP server
-- (testing.mock_http), which answers by the JSON "user" and records every
-- request, so a cache hit shows as a request that never came. The end to
-- end specs run the same policy in the real binary in front of a mock IMAP
-- backend.
local testing = require "postern.testing"
local http_server = require "helpers.http_server"   -- only for HTTPS (a self-signed certificate)
local cjson = require "cjson"

local SCRIPT = testing.root .. "/scripts/remote_auth.lua"

-- user -> answer of the mock auth service
local function ok_json(answer, extra)
  local a = { status = 200, headers = { { "Content-Type", "application/json" } }, body = cjson.encode(answer) }
  for k, v in pairs(extra or {}) do a[k] = v end
  return a
end

-- a mock auth service: POST /auth answered by the "user" of the JSON body
-- (404 for users it does not know)
local function auth_service(answers)
  return testing.mock_http {
    name = "auth-service",
    handler = ([[
      local cjson = require "cjson"
      local answers = %s
      return function(req)
        local ok, doc = pcall(cjson.decode, req.body)
        local a = req.method == "POST" and req.path == "/auth" and ok and type(doc) == "table"
          and answers[doc.user]
        return a or { status = 404, body = "unknown user" }
      end
    ]]):format(testing.serialize(answers)),
  }
end

-- the JSON bodies the service received
local function bodies(srv)
  local out = {}
  for _, r in ipairs(srv:requests()) do
    local ok, doc = pcall(cjson.decode, r.body)
    out[#out + 1] = ok and doc or {}
  end
  return out
end

local function requests_for(srv, user)
  local n = 0
  for _, doc in ipairs(bodies(srv)) do
    if doc.user == user then n = n + 1 end
  end
  return n
end

-- a fabricated session, as the core would pass it
local function session(fields)
  local s = { id = 1, protocol = "imap", client_ip = "192.0.2.10", client_port = 53211,
    local_ip = "127.0.0.1", local_port = 143, server_name = "mail.test", tls = false,
    mechanism = "plain", login_attempt = 1, vars = {} }
  for k, v in pairs(fields or {}) do s[k] = v end
  return s
end

local ANSWERS = {
  alice = ok_json { status = "ok", host = "10.0.0.5", port = 143 },
  bob = ok_json { status = "ok", host = "mail-b.internal", port = "1143",
    user = "bob@backend", password = "backend-secret" },
  carol = ok_json { status = "ok", upstreams = { { host = "10.0.0.7", port = 143 },
    { host = "10.0.0.8", port = 143 } } },
  dave = ok_json { status = "refused", message = "Invalid login or password", wait = 2 },
  erin = ok_json { status = "unavailable", message = "Mailbox being moved", wait = 1 },
  frank = ok_json { status = "ok", host = "10.0.0.9", port = 143, ttl = 0 },
  broken500 = ok_json({ status = "ok" }, { status = 500 }),
  notjson = { status = 200, body = "<html>oops</html>" },
  noport = ok_json { status = "ok", host = "10.0.0.5" },
  badport = ok_json { status = "ok", host = "10.0.0.5", port = 70000 },
  nostatus = ok_json { host = "10.0.0.5", port = 143 },
  emptylist = { status = 200, body = '{"status": "ok", "upstreams": []}' },
  slow = ok_json({ status = "ok", host = "10.0.0.5", port = 143 }, { delay = 2 }),
  digest = ok_json { status = "ok", host = "10.0.0.5", port = 110 },
}

describe("remote_auth policy (unit, real HTTP)", function()
  local srv, policy

  setup(function()
    srv = auth_service(ANSWERS)
  end)
  teardown(function()
    if srv then srv:stop() end
  end)

  before_each(function()
    policy = dofile(SCRIPT)   -- a fresh policy, with an empty cache
    policy.url = srv:url("/auth")
    policy.timeout = 1
  end)

  local function count(user) return requests_for(srv, user) end

  it("POSTs the session's credentials and context as JSON, with the configured headers", function()
    policy.headers = { Authorization = "Bearer t0ken" }
    local before = #srv:requests()
    policy.authenticate(session { user = "alice", password = "s3cret", authzid = "admin" })
    local req = srv:requests()[before + 1]
    assert.equals("POST", req.method)
    assert.equals("/auth", req.path)
    assert.equals("application/json", req.h["content-type"])
    assert.equals("application/json", req.h["accept"])
    assert.equals("Bearer t0ken", req.h["authorization"])
    assert.same({
      user = "alice", password = "s3cret", protocol = "imap", mechanism = "plain", authzid = "admin",
      login_attempt = 1, client_ip = "192.0.2.10", client_port = 53211, local_ip = "127.0.0.1",
      local_port = 143, server_name = "mail.test",
    }, cjson.decode(req.body))
  end)

  it("sends SMTP's envelope, and CRAM-MD5's salt and digest in place of a password", function()
    local before = #srv:requests()
    policy.authenticate(session { protocol = "smtp", user = "digest", mechanism = "cram-md5",
      salt = "<1.2@mail.test>", digest = "0123456789abcdef0123456789abcdef",
      helo = "client.example", mail_from = "a@example.com", rcpt_to = { "b@example.com", "c@example.com" } })
    local doc = cjson.decode(srv:requests()[before + 1].body)
    assert.is_nil(doc.password)
    assert.equals("<1.2@mail.test>", doc.salt)
    assert.equals("0123456789abcdef0123456789abcdef", doc.digest)
    assert.equals("client.example", doc.helo)
    assert.equals("a@example.com", doc.mail_from)
    assert.same({ "b@example.com", "c@example.com" }, doc.rcpt_to)
  end)

  it("routes to the upstream of an \"ok\" answer", function()
    local up, refusal = policy.authenticate(session { user = "alice", password = "s3cret" })
    assert.is_nil(refusal)
    assert.same({ host = "10.0.0.5", port = 143 }, up)
  end)

  it("passes a host name, a string port and upstream credentials through", function()
    local up = policy.authenticate(session { user = "bob", password = "pw" })
    assert.same({ host = "mail-b.internal", port = 1143, user = "bob@backend", password = "backend-secret" }, up)
  end)

  it("returns an \"upstreams\" list as a list to try in order", function()
    local up = policy.authenticate(session { user = "carol", password = "pw" })
    assert.same({ { host = "10.0.0.7", port = 143 }, { host = "10.0.0.8", port = 143 } }, up)
  end)

  it("turns \"refused\" into a refusal with the service's message and wait", function()
    local up, refusal = policy.authenticate(session { user = "dave", password = "wrong" })
    assert.is_nil(up)
    assert.same({ message = "Invalid login or password", wait = 2, temporary = false }, refusal)
  end)

  it("turns \"unavailable\" into a temporary refusal", function()
    local up, refusal = policy.authenticate(session { user = "erin", password = "pw" })
    assert.is_nil(up)
    assert.same({ message = "Mailbox being moved", wait = 1, temporary = true }, refusal)
  end)

  describe("refuses temporarily (fail_message, NO [UNAVAILABLE]) when the service", function()
    local function assert_failure(user)
      local up, refusal = policy.authenticate(session { user = user, password = "pw" })
      assert.is_nil(up)
      assert.same({ message = "Temporary authentication failure, try again later", wait = 0, temporary = true },
        refusal)
    end

    it("answers another HTTP status than 200", function() assert_failure("broken500") end)
    it("answers something that is not JSON", function() assert_failure("notjson") end)
    it("answers an upstream without a port", function() assert_failure("noport") end)
    it("answers a port out of range", function() assert_failure("badport") end)
    it("answers without a status", function() assert_failure("nostatus") end)
    it("answers an empty upstreams list", function() assert_failure("emptylist") end)

    it("does not answer within `timeout`", function()
      local t0 = testing.now()
      assert_failure("slow")
      assert.is_true(testing.now() - t0 < 1.8)
    end)

    it("cannot be reached", function()
      policy.url = "http://127.0.0.1:" .. testing.free_port() .. "/auth"
      assert_failure("alice")
    end)

    it("has a certificate that does not verify (https)", function()
      local tls = http_server.start { tls = true, routes = { { path = "/auth",
        body = cjson.encode { status = "ok", host = "10.0.0.5", port = 143 } } } }
      local ok, e = pcall(function()
        policy.url = tls.url .. "/auth"
        assert_failure("alice")
        assert.equals(0, #tls:requests())
        policy.verify = false            -- tests only
        assert.same({ host = "10.0.0.5", port = 143 }, (policy.authenticate(session { user = "alice", password = "x" })))
      end)
      tls:stop()
      assert(ok, e)
    end)

    it("uses fail_message and fail_wait when set", function()
      policy.fail_message = "Try later"
      policy.fail_wait = 3
      local _, refusal = policy.authenticate(session { user = "broken500", password = "pw" })
      assert.same({ message = "Try later", wait = 3, temporary = true }, refusal)
    end)
  end)

  describe("cache", function()
    it("answers a repeated login from the cache: the service sees one request", function()
      local before = count("alice")
      for _ = 1, 3 do
        assert.same({ host = "10.0.0.5", port = 143 }, (policy.authenticate(session { user = "alice", password = "s3cret" })))
      end
      assert.equals(before + 1, count("alice"))
      assert.equals(1, policy.cache_count())
    end)

    it("asks again for another password, another user or another protocol", function()
      local before = count("alice")
      policy.authenticate(session { user = "alice", password = "s3cret" })
      policy.authenticate(session { user = "alice", password = "other" })
      policy.authenticate(session { user = "alice", password = "s3cret", protocol = "pop3" })
      assert.equals(before + 3, count("alice"))
      policy.authenticate(session { user = "alice", password = "s3cret" })
      assert.equals(before + 3, count("alice"))
    end)

    it("does not cache refusals, failures, logins without a password, or answers with ttl 0", function()
      for _, user in ipairs({ "dave", "erin", "broken500", "frank" }) do
        local before = count(user)
        policy.authenticate(session { user = user, password = "pw" })
        policy.authenticate(session { user = user, password = "pw" })
        assert.equals(before + 2, count(user), user)
      end
      local before = count("digest")
      for _ = 1, 2 do
        policy.authenticate(session { user = "digest", mechanism = "cram-md5", salt = "<1@x>",
          digest = "0123456789abcdef0123456789abcdef" })
      end
      assert.equals(before + 2, count("digest"))
      assert.equals(0, policy.cache_count())
    end)

    it("expires an answer after cache_ttl seconds", function()
      policy.cache_ttl = 0.5
      local before = count("alice")
      policy.authenticate(session { user = "alice", password = "s3cret" })
      policy.authenticate(session { user = "alice", password = "s3cret" })
      assert.equals(before + 1, count("alice"))
      testing.sleep(0.7)
      policy.authenticate(session { user = "alice", password = "s3cret" })
      assert.equals(before + 2, count("alice"))
    end)

    it("is off with cache_ttl = 0", function()
      policy.cache_ttl = 0
      local before = count("alice")
      policy.authenticate(session { user = "alice", password = "s3cret" })
      policy.authenticate(session { user = "alice", password = "s3cret" })
      assert.equals(before + 2, count("alice"))
    end)

    it("keeps at most cache_max entries", function()
      policy.cache_max = 2
      for _, pw in ipairs({ "a", "b", "c", "d", "e" }) do
        policy.authenticate(session { user = "alice", password = pw })
        assert.is_true(policy.cache_count() <= 2)
      end
      assert.is_true(policy.cache_count() >= 1)
    end)

    it("never stores the password in clear, in keys or values", function()
      policy.authenticate(session { user = "alice", password = "very-secret-password" })
      policy.authenticate(session { user = "bob", password = "another-secret" })
      local cache
      for i = 1, 20 do
        local name, value = debug.getupvalue(policy.cache_clear, i)
        if name == "cache" then cache = value end
        if not name then break end
      end
      assert.is_table(cache)
      local seen = 0
      local function scan(v)
        if type(v) == "string" then
          assert.is_nil(v:find("very-secret-password", 1, true), "cache holds the password")
          assert.is_nil(v:find("another-secret", 1, true), "cache holds the password")
        elseif type(v) == "table" then
          for k, x in pairs(v) do scan(k); scan(x) end
        end
      end
      for k, v in pairs(cache) do
        seen = seen + 1
        scan(k)
        scan(v)
      end
      assert.equals(2, seen)
    end)

    it("is emptied by cache_clear()", function()
      local before = count("alice")
      policy.authenticate(session { user = "alice", password = "s3cret" })
      policy.cache_clear()
      assert.equals(0, policy.cache_count())
      policy.authenticate(session { user = "alice", password = "s3cret" })
      assert.equals(before + 2, count("alice"))
    end)
  end)
end)

describe("remote_auth policy (end to end, through postern)", function()
  local srv, backend, proxy

  local GREETING = "^%* OK "

  local function login(user, pass)
    local c = testing.client { port = proxy.port, timeout = 10 }
    c:expect(GREETING)
    local line = c:command("a1", ("LOGIN %s %s"):format(user, pass))
    c:close()
    return line
  end

  local function count(user) return requests_for(srv, user) end

  setup(function()
    backend = testing.mock_imap { name = "backend" }
    srv = auth_service {
      alice = ok_json { status = "ok", host = "127.0.0.1", port = backend.port },
      bob = ok_json { status = "ok", host = "localhost", port = backend.port,
        user = "bob@backend", password = "upstream-pw" },
      dave = ok_json { status = "refused", message = "Invalid login or password" },
      erin = ok_json { status = "unavailable", message = "Mailbox being moved" },
    }
    proxy = testing.start {
      policy_source = ([[
        local policy = dofile(%q)
        policy.url = %q
        policy.timeout = 2
        policy.cache_ttl = 1
        return policy
      ]]):format(SCRIPT, srv:url("/auth")),
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if srv then srv:stop() end
    if backend then backend:stop() end
  end)

  it("logs alice in to the upstream the service names, then serves her again from the cache", function()
    assert.matches("^a1 OK", login("alice", "s3cret"))
    backend:wait_for("^AUTH alice s3cret")
    assert.equals(1, count("alice"))
    local doc = bodies(srv)[1]
    assert.equals("127.0.0.1", doc.client_ip)
    assert.equals("imap", doc.protocol)
    assert.equals(proxy.port, doc.local_port)
    -- within cache_ttl: no new request
    assert.matches("^a1 OK", login("alice", "s3cret"))
    assert.equals(1, count("alice"))
    -- after cache_ttl: asked again
    testing.sleep(1.2)
    assert.matches("^a1 OK", login("alice", "s3cret"))
    assert.equals(2, count("alice"))
    assert.equals(3, #backend:logins())
  end)

  it("logs in upstream with the credentials the service gives, to a host name", function()
    assert.matches("^a1 OK", login("bob", "client-pw"))
    backend:wait_for("^AUTH bob@backend upstream%-pw")
  end)

  it("gives the service's refusal to the client", function()
    assert.equals("a1 NO [AUTHENTICATIONFAILED] Invalid login or password", login("dave", "x"))
    assert.equals("a1 NO [UNAVAILABLE] Mailbox being moved", login("erin", "x"))
  end)

  it("gives a temporary failure when the service does not know the user (HTTP 404)", function()
    assert.equals("a1 NO [UNAVAILABLE] Temporary authentication failure, try again later", login("zoe", "x"))
    proxy:wait_log("remote_auth: the auth service answered HTTP 404")
  end)

  it("never writes the password in the log", function()
    login("alice", "log-me-not")
    login("dave", "log-me-not")
    assert.is_nil(proxy:log():find("log-me-not", 1, true))
  end)
end)

describe("scripts/remote_auth.lua as the configured policy", function()
  it("passes postern -t", function()
    local ok, out = testing.check_config {
      policy = testing.root .. "/scripts/remote_auth.lua",
      listen = { { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap" } },
    }
    assert.is_true(ok, out)
    assert.matches("configuration ok", out)
  end)
end)
