-- scripts/throttle.lua: failed logins counted per client IP and per user
-- in Redis; past max_failures, logins are refused with a wait that doubles
-- each time; the counters are shared by every postern using that Redis.
--
-- Unit specs call the wrapped policy's authenticate directly from busted
-- with fabricated sessions around a stub inner policy; Redis is a real
-- redis-server (spec/helpers/redis.lua) and the calls are real (require
-- "postern" blocks until they are done). End to end specs run two postern
-- processes on one Redis, and throttle around static_users.
--
-- Redis down: the throttle FAILS OPEN by default (the inner policy decides
-- alone, a warning is logged); fail_open = false refuses every login
-- temporarily instead. Both are specified below.
local testing = require "postern.testing"
local redis = require "helpers.redis"

local SCRIPT = testing.root .. "/scripts/throttle.lua"
local UPSTREAM = { host = "10.0.0.1", port = 143 }

-- the inner policy: "right" is the password of everybody; "tempfail" gets a
-- temporary refusal, "boom" an error; calls are counted
local function stub()
  local inner = { calls = 0 }
  function inner.authenticate(s)
    inner.calls = inner.calls + 1
    if s.user == "boom" then error("inner policy exploded") end
    if s.user == "tempfail" then return nil, { message = "auth backend down", temporary = true } end
    if s.password == "right" then return UPSTREAM end
    return nil, { message = "Invalid login or password", wait = 0 }
  end
  function inner.on_connect() end
  function inner.on_close() end
  return inner
end

local function session(user, password, ip)
  return { id = 1, protocol = "imap", user = user, password = password, mechanism = "plain",
    client_ip = ip or "192.0.2.1", client_port = 40000, login_attempt = 1, vars = {} }
end

describe("throttle policy (unit, real Redis)", function()
  local r, throttle, inner, policy

  setup(function() r = redis.start() end)
  teardown(function() if r then r:stop() end end)

  before_each(function()
    r.cli("FLUSHALL")
    throttle = dofile(SCRIPT)
    inner = stub()
    policy = throttle.wrap(inner, { redis = { host = "127.0.0.1", port = r.port }, max_failures = 3,
      base_wait = 1, max_wait = 8, window = 60 })
  end)

  local function fail(user, ip) return policy.authenticate(session(user, "wrong", ip)) end

  it("passes an accepted login through to the inner policy's upstream", function()
    local up, refusal = policy.authenticate(session("alice", "right"))
    assert.is_nil(refusal)
    assert.same(UPSTREAM, up)
    assert.equals(1, inner.calls)
  end)

  it("passes the inner policy's refusal through and counts it per IP and per user, with an expiry", function()
    local up, refusal = fail("alice", "192.0.2.1")
    assert.is_nil(up)
    assert.same({ message = "Invalid login or password", wait = 0 }, refusal)
    assert.equals("1", r.cli("GET", "postern:throttle:ip:192.0.2.1"))
    assert.equals("1", r.cli("GET", "postern:throttle:user:alice"))
    local ttl = tonumber(r.cli("TTL", "postern:throttle:user:alice"))
    assert.is_true(ttl > 0 and ttl <= 60, tostring(ttl))
    fail("alice", "192.0.2.1")
    assert.equals("2", r.cli("GET", "postern:throttle:ip:192.0.2.1"))
  end)

  it("keeps the inner policy's other hooks", function()
    assert.equals(inner.on_connect, policy.on_connect)
    assert.equals(inner.on_close, policy.on_close)
  end)

  it("refuses an IP after max_failures, even with the right password, without asking the inner policy", function()
    fail("u1", "198.51.100.7")
    fail("u2", "198.51.100.7")
    fail("u3", "198.51.100.7")
    local calls = inner.calls
    local up, refusal = policy.authenticate(session("alice", "right", "198.51.100.7"))
    assert.is_nil(up)
    assert.same({ message = "Too many failed logins, try again later", wait = 1, temporary = true }, refusal)
    assert.equals(calls, inner.calls)
    -- another IP is not affected
    assert.same(UPSTREAM, (policy.authenticate(session("alice", "right", "198.51.100.8"))))
  end)

  it("refuses a user after max_failures from any IPs", function()
    fail("bob", "203.0.113.1")
    fail("bob", "203.0.113.2")
    fail("bob", "203.0.113.3")
    local up, refusal = policy.authenticate(session("bob", "right", "203.0.113.4"))
    assert.is_nil(up)
    assert.equals("Too many failed logins, try again later", refusal.message)
    -- another user from those IPs is fine (each IP has one failure only)
    assert.same(UPSTREAM, (policy.authenticate(session("carol", "right", "203.0.113.1"))))
  end)

  it("counts user names without regard to case", function()
    fail("Dave"); fail("DAVE", "192.0.2.2"); fail("dave", "192.0.2.3")
    assert.equals("3", r.cli("GET", "postern:throttle:user:dave"))
    assert.is_nil((policy.authenticate(session("dave", "right", "192.0.2.4"))))
  end)

  it("doubles the wait with every further attempt, up to max_wait", function()
    for _ = 1, 3 do fail("erin", "192.0.2.9") end
    local waits = {}
    for _ = 1, 6 do
      local _, refusal = policy.authenticate(session("erin", "right", "192.0.2.9"))
      waits[#waits + 1] = refusal.wait
    end
    assert.same({ 1, 2, 4, 8, 8, 8 }, waits)
    assert.equals("9", r.cli("GET", "postern:throttle:user:erin"))   -- throttled attempts count too
  end)

  it("clears the user's counter on a success, but not the IP's", function()
    fail("frank", "192.0.2.20")
    fail("frank", "192.0.2.20")
    assert.same(UPSTREAM, (policy.authenticate(session("frank", "right", "192.0.2.20"))))
    assert.equals("0", r.cli("EXISTS", "postern:throttle:user:frank"))
    assert.equals("2", r.cli("GET", "postern:throttle:ip:192.0.2.20"))
  end)

  it("clears the IP's counter too with reset_ip_on_success", function()
    policy = throttle.wrap(inner, { redis = { port = r.port }, max_failures = 3, reset_ip_on_success = true })
    fail("grace", "192.0.2.21")
    assert.same(UPSTREAM, (policy.authenticate(session("grace", "right", "192.0.2.21"))))
    assert.equals("0", r.cli("EXISTS", "postern:throttle:ip:192.0.2.21"))
  end)

  it("does not count the inner policy's temporary refusals or errors", function()
    local up, refusal = policy.authenticate(session("tempfail", "x"))
    assert.is_nil(up)
    assert.same({ message = "auth backend down", temporary = true }, refusal)
    assert.has_error(function() policy.authenticate(session("boom", "x")) end, nil)
    assert.equals("0", r.cli("EXISTS", "postern:throttle:user:tempfail"))
    assert.equals("0", r.cli("EXISTS", "postern:throttle:user:boom"))
    assert.equals("0", r.cli("EXISTS", "postern:throttle:ip:192.0.2.1"))
  end)

  it("forgets failures `window` seconds after the last one", function()
    policy = throttle.wrap(inner, { redis = { port = r.port }, max_failures = 2, window = 1 })
    fail("heidi"); fail("heidi")
    assert.is_nil((policy.authenticate(session("heidi", "right"))))
    testing.sleep(2.2)   -- the throttled attempt above renewed the expiry
    assert.same(UPSTREAM, (policy.authenticate(session("heidi", "right"))))
  end)

  it("uses max_failures_ip and max_failures_user when given", function()
    policy = throttle.wrap(inner, { redis = { port = r.port }, max_failures_ip = 4, max_failures_user = 2 })
    fail("ivan", "192.0.2.30"); fail("ivan", "192.0.2.31")
    assert.is_nil((policy.authenticate(session("ivan", "right", "192.0.2.32"))))     -- user limit 2
    fail("u1", "192.0.2.40"); fail("u2", "192.0.2.40"); fail("u3", "192.0.2.40")
    assert.same(UPSTREAM, (policy.authenticate(session("judy", "right", "192.0.2.40"))))  -- IP: 3 < 4
  end)

  it("accepts a bare authenticate function as the inner policy", function()
    local p = throttle.wrap(inner.authenticate, { redis = { port = r.port } })
    assert.same(UPSTREAM, (p.authenticate(session("alice", "right"))))
    assert.is_nil(p.on_connect)
  end)

  it("uses the Redis password, db and key prefix it is given", function()
    local pr = redis.start { password = "redis-pw" }
    local ok, e = pcall(function()
      local p = throttle.wrap(inner, { redis = { port = pr.port, password = "redis-pw", db = 2 },
        prefix = "mail:" })
      p.authenticate(session("kate", "wrong"))
      assert.equals("1", pr.cli("-n", "2", "GET", "mail:user:kate"))
      assert.equals("1", pr.cli("-n", "2", "GET", "mail:ip:192.0.2.1"))
    end)
    pr:stop()
    assert(ok, e)
  end)

  it("shares the counters between two instances on one Redis", function()
    local other = dofile(SCRIPT).wrap(stub(), { redis = { port = r.port }, max_failures = 3 })
    fail("leo", "192.0.2.50")
    other.authenticate(session("leo", "wrong", "192.0.2.51"))
    fail("leo", "192.0.2.52")
    assert.is_nil((other.authenticate(session("leo", "right", "192.0.2.53"))))
  end)

  describe("when Redis cannot be reached", function()
    local down

    before_each(function() down = testing.free_port() end)

    it("fails open by default: the inner policy decides alone, quickly", function()
      local p = throttle.wrap(inner, { redis = { port = down }, max_failures = 1 })
      local t0 = testing.now()
      assert.same(UPSTREAM, (p.authenticate(session("mia", "right"))))
      for _ = 1, 3 do
        local up, refusal = p.authenticate(session("mia", "wrong"))
        assert.is_nil(up)
        assert.equals("Invalid login or password", refusal.message)   -- never "too many"
      end
      assert.same(UPSTREAM, (p.authenticate(session("mia", "right"))))
      assert.is_true(testing.now() - t0 < 2, "took " .. (testing.now() - t0))
    end)

    it("refuses every login temporarily with fail_open = false", function()
      local p = throttle.wrap(inner, { redis = { port = down }, fail_open = false })
      local calls = inner.calls
      local up, refusal = p.authenticate(session("nina", "right"))
      assert.is_nil(up)
      assert.same({ message = "Temporary authentication failure, try again later", temporary = true }, refusal)
      assert.equals(calls, inner.calls)
    end)

    it("counts again once Redis is back", function()
      local p = throttle.wrap(inner, { redis = { port = r.port, timeout = 1 }, max_failures = 2 })
      r:kill()
      assert.same(UPSTREAM, (p.authenticate(session("olga", "right"))))
      r:restart()
      local ok
      for _ = 1, 2 do p.authenticate(session("olga", "wrong")) end
      ok = p.authenticate(session("olga", "right"))
      assert.is_nil(ok)
      assert.equals("3", r.cli("GET", "postern:throttle:user:olga"))
    end)
  end)

  it("is a policy by itself: static_users behind a throttle with throttle.defaults", function()
    throttle.defaults.redis = { host = "127.0.0.1", port = r.port }
    throttle.defaults.max_failures = 2
    local users = dofile(testing.root .. "/scripts/static_users.lua")
    users.fail_wait = 0
    throttle.inner = users
    local up = throttle.authenticate(session("demo", "demo"))
    assert.same(users.upstreams.demo.imap, up)
    throttle.authenticate(session("demo", "bad"))
    throttle.authenticate(session("demo", "bad"))
    local _, refusal = throttle.authenticate(session("demo", "demo"))
    assert.equals("Too many failed logins, try again later", refusal.message)
  end)
end)

describe("throttle around auth_http (an nginx auth server, unit)", function()
  local r, auth, policy

  setup(function()
    r = redis.start()
    auth = testing.mock_http {
      name = "nginx-auth",
      handler = [[
        return function(req)
          if req.h["auth-pass"] == "right" then
            return { headers = { { "Auth-Status", "OK" }, { "Auth-Server", "127.0.0.1" }, { "Auth-Port", "143" } } }
          end
          return { headers = { { "Auth-Status", "Invalid login or password" }, { "Auth-Wait", "1" } } }
        end
      ]],
    }
    local throttle = dofile(SCRIPT)
    local auth_http = require "postern.auth_http"
    policy = throttle.wrap({ authenticate = auth_http.new { url = auth:url("/auth") } },
      { redis = { host = "127.0.0.1", port = r.port }, max_failures = 3 })
  end)

  teardown(function()
    if auth then auth:stop() end
    if r then r:stop() end
  end)

  it("counts the auth server's refusals and stops asking it once the user is throttled", function()
    local up = policy.authenticate(session("alice", "right"))
    assert.equals("127.0.0.1", up.host)
    assert.equals(143, up.port)
    for i = 1, 3 do
      local _, refusal = policy.authenticate(session("alice", "guess" .. i, "192.0.2.7" .. i))
      assert.equals("Invalid login or password", refusal.message)
    end
    assert.equals(4, #auth:requests())
    local none, refusal = policy.authenticate(session("alice", "right", "192.0.2.80"))
    assert.is_nil(none)
    assert.equals("Too many failed logins, try again later", refusal.message)
    assert.equals(4, #auth:requests())     -- the guess never reached the auth server
  end)
end)

-- end to end ---------------------------------------------------------------

local GREETING = "^%* OK "

local function login(proxy, user, pass, bind)
  local c = testing.client { port = proxy.port, bind = bind, timeout = 10 }
  c:expect(GREETING)
  local t0 = testing.now()
  local line = c:command("a1", ("LOGIN %s %s"):format(user, pass))
  local took = testing.now() - t0
  c:close()
  return line, took
end

local THROTTLED = "a1 NO [UNAVAILABLE] Too many failed logins, try again later"
local WRONG = "a1 NO [AUTHENTICATIONFAILED] Invalid login or password"

describe("throttle policy (end to end, two postern instances sharing one Redis)", function()
  local r, backend, a, b

  local POLICY = [[
    local throttle = dofile(%q)
    local inner = {
      authenticate = function(s)
        if s.password == "right" then return { host = "127.0.0.1", port = %d } end
        return nil, "Invalid login or password"
      end,
    }
    return throttle.wrap(inner, { redis = { host = "127.0.0.1", port = %d, timeout = 0.5 },
      max_failures = 3, base_wait = 0.3, max_wait = 1, window = 60 })
  ]]

  setup(function()
    r = redis.start()
    backend = testing.mock_imap { name = "backend" }
    local source = POLICY:format(SCRIPT, backend.port, r.port)
    a = testing.start { policy_source = source }
    b = testing.start { policy_source = source }
  end)

  teardown(function()
    if a then a:stop() end
    if b then b:stop() end
    if backend then backend:stop() end
    if r then r:stop() end
  end)

  before_each(function() r.cli("FLUSHALL") end)

  it("logs a user in through either instance", function()
    assert.matches("^a1 OK", (login(a, "alice", "right")))
    assert.matches("^a1 OK", (login(b, "alice", "right")))
    assert.equals(2, #backend:logins())
  end)

  it("counts failures made on one instance on the other", function()
    assert.equals(WRONG, (login(a, "bob", "x1", "127.0.0.2")))
    assert.equals(WRONG, (login(b, "bob", "x2", "127.0.0.3")))
    assert.equals(WRONG, (login(a, "bob", "x3", "127.0.0.4")))
    assert.equals("3", r.cli("GET", "postern:throttle:user:bob"))
    -- bob is now throttled everywhere, even with his right password, after a wait
    local line, took = login(b, "bob", "right", "127.0.0.5")
    assert.equals(THROTTLED, line)
    assert.is_true(took >= 0.25, "answered after " .. took)
    line, took = login(a, "bob", "right", "127.0.0.6")
    assert.equals(THROTTLED, line)
    assert.is_true(took >= 0.55, "the wait doubles: " .. took)
  end)

  it("throttles a guessing client IP on both instances, and not its neighbours", function()
    for i = 1, 3 do
      local proxy = i % 2 == 0 and b or a
      assert.equals(WRONG, (login(proxy, "user" .. i, "guess", "127.0.0.7")))
    end
    assert.equals(THROTTLED, (login(b, "carol", "right", "127.0.0.7")))
    assert.equals(THROTTLED, (login(a, "carol", "right", "127.0.0.7")))
    assert.matches("^a1 OK", (login(a, "carol", "right", "127.0.0.8")))
  end)

  it("keeps logins working while Redis is down (fails open), and logs a warning", function()
    r:kill()
    local ok, e = pcall(function()
      local line, took = login(a, "dave", "right")
      assert.matches("^a1 OK", line)
      assert.is_true(took < 2, "took " .. took)
      assert.equals(WRONG, (login(b, "dave", "wrong")))
      a:wait_log("throttle: redis unavailable")
    end)
    r:restart()
    assert(ok, e)
    -- and counts again once it is back
    assert.equals(WRONG, (login(a, "erin", "wrong")))
    assert.equals("1", r.cli("GET", "postern:throttle:user:erin"))
  end)
end)

describe("throttle around static_users (end to end)", function()
  local r, backend, proxy

  setup(function()
    r = redis.start()
    backend = testing.mock_imap { name = "users-backend" }
    proxy = testing.start {
      policy_source = ([[
        local throttle = dofile(%q)
        local users = dofile(%q)
        users.upstreams = { demo = { host = "127.0.0.1", port = %d } }
        users.fail_wait = 0
        return throttle.wrap(users, { redis = { host = "127.0.0.1", port = %d }, max_failures = 2,
          base_wait = 0.2, max_wait = 0.5 })
      ]]):format(SCRIPT, testing.root .. "/scripts/static_users.lua", backend.port, r.port),
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if backend then backend:stop() end
    if r then r:stop() end
  end)

  it("lets demo in, throttles after two wrong passwords, and a success clears the user's counter", function()
    assert.matches("^a1 OK", (login(proxy, "demo", "demo")))
    backend:wait_for("^AUTH demo demo")
    assert.equals(WRONG, (login(proxy, "demo", "nope", "127.0.0.2")))
    assert.equals(WRONG, (login(proxy, "demo", "nope", "127.0.0.3")))
    assert.equals(THROTTLED, (login(proxy, "demo", "demo", "127.0.0.4")))
    r.cli("DEL", "postern:throttle:user:demo")     -- what `window` does in time
    assert.matches("^a1 OK", (login(proxy, "demo", "demo", "127.0.0.4")))
    assert.equals("0", r.cli("EXISTS", "postern:throttle:user:demo"))
  end)
end)

describe("scripts/throttle.lua as the configured policy", function()
  it("passes postern -t", function()
    local ok, out = testing.check_config {
      policy = testing.root .. "/scripts/throttle.lua",
      listen = { { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap" } },
    }
    assert.is_true(ok, out)
    assert.matches("configuration ok", out)
  end)
end)
