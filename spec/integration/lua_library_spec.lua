-- The asynchronous library of `require "postern"` (issue 4, item 1):
-- postern.http.request, postern.dns.resolve, postern.redis, postern.sleep,
-- postern.now and postern.log.
--
-- Each function is specified twice:
--   * directly in busted: `require "postern"` loads build/postern.so, whose
--     asynchronous functions then block until done (this is how a user
--     unit-tests a policy with real HTTP, DNS and Redis);
--   * inside hooks of the real binary, where each call yields the hook's
--     coroutine: here we also prove that calls are bounded by timeouts,
--     that a closed session's pending call is dropped without resuming the
--     hook, that calls made at load time are refused with the file and
--     line, and that 50 waiting sessions wait at the same time.
--
-- The HTTP peers are spec/helpers/http_server.py (keep-alive, TLS with a
-- self-signed certificate, per-route delays), Redis is Debian's
-- redis-server started on a free port (spec/helpers/redis.lua).
local testing = require "postern.testing"
local http_server = require "helpers.http_server"
local redis = require "helpers.redis"
local postern = require "postern"

local function elapsed_since(t0) return testing.now() - t0 end

-- a port where nothing listens
local function dead_port() return testing.free_port() end

describe("postern library, called directly from busted (blocking)", function()
  local srv

  setup(function()
    srv = http_server.start {
      routes = {
        { path = "/hello", method = "GET", status = 200, body = "hello world",
          headers = { ["X-Answer"] = "42", ["Content-Type"] = "text/plain" } },
        { path = "/echo", echo = true, headers = { ["Content-Type"] = "application/json" } },
        { path = "/slow", delay = 2, body = "late" },
        { path = "/big", body_size = 2 * 1024 * 1024 },
        { path = "/small", body_size = 200 },
        { path = "/error", status = 503, body = "down for maintenance" },
        { path = "/twice", headers = { ["Set-Cookie"] = "a=1" }, body = "" },
      },
    }
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  describe("postern.http.request", function()
    it("GETs a URL and returns status, lower-cased response headers and body", function()
      local r, err = postern.http.request { url = srv.url .. "/hello" }
      assert.is_nil(err)
      assert.equals(200, r.status)
      assert.equals("hello world", r.body)
      assert.equals("42", r.headers["x-answer"])
      assert.equals("text/plain", r.headers["content-type"])
      assert.equals("11", r.headers["content-length"])
    end)

    it("sends the request headers it is given, with a postern User-Agent", function()
      local r = assert(postern.http.request {
        url = srv.url .. "/echo?x=1",
        headers = { ["X-Request-Id"] = "abc-123", Accept = "application/json" },
      })
      assert.equals(200, r.status)
      local last = srv:requests()[#srv:requests()]
      assert.equals("GET", last.method)
      assert.equals("/echo", last.path)
      assert.equals("x=1", last.query)
      assert.equals("abc-123", last.headers["x-request-id"])
      assert.equals("application/json", last.headers["accept"])
      assert.matches("^postern/", last.headers["user-agent"])
    end)

    it("POSTs a body with its Content-Length", function()
      local body = '{"user":"alice","password":"s3cret"}'
      local r = assert(postern.http.request {
        method = "POST", url = srv.url .. "/echo", body = body,
        headers = { ["Content-Type"] = "application/json" },
      })
      assert.equals(200, r.status)
      local seen = require("cjson").decode(r.body)
      assert.equals("POST", seen.method)
      assert.equals(body, seen.body)
      assert.equals(tostring(#body), seen.headers["content-length"])
      assert.equals("application/json", seen.headers["content-type"])
    end)

    it("uses any other method as given (PUT, DELETE)", function()
      for _, m in ipairs({ "PUT", "DELETE" }) do
        local r = assert(postern.http.request { method = m, url = srv.url .. "/echo", body = "b" })
        assert.equals(m, require("cjson").decode(r.body).method)
      end
    end)

    it("returns an HTTP error status as a response, not as a failure", function()
      local r, err = postern.http.request { url = srv.url .. "/error" }
      assert.is_nil(err)
      assert.equals(503, r.status)
      assert.equals("down for maintenance", r.body)
    end)

    it("fails with nil, \"timeout\" when the server answers after `timeout`", function()
      local t0 = testing.now()
      local r, err = postern.http.request { url = srv.url .. "/slow", timeout = 0.3 }
      local took = elapsed_since(t0)
      assert.is_nil(r)
      assert.equals("timeout", err)
      assert.is_true(took >= 0.25 and took < 1.5, "took " .. took)
    end)

    it("fails with nil, a message and curl's code when the connection is refused", function()
      local t0 = testing.now()
      local r, err, code = postern.http.request { url = "http://127.0.0.1:" .. dead_port() .. "/" }
      assert.is_nil(r)
      assert.matches("[Cc]onnect", err)
      assert.equals(7, code)   -- CURLE_COULDNT_CONNECT
      assert.is_true(elapsed_since(t0) < 2)
    end)

    it("fails with nil and a message when the server closes without answering", function()
      local closing = testing.mock_http { name = "closer", close = true }
      local ok, e = pcall(function()
        local r, err = postern.http.request { url = closing:url("/x"), timeout = 5 }
        assert.is_nil(r)
        assert.is_string(err)
        assert.is_not.equals("timeout", err)
        assert.equals(1, #closing:wait_requests(1))
      end)
      closing:stop()
      assert(ok, e)
    end)

    it("fails with nil and a message when the body exceeds max_size (1 MiB by default)", function()
      local r, err = postern.http.request { url = srv.url .. "/big" }
      assert.is_nil(r)
      assert.equals("response larger than max_size", err)
      r, err = postern.http.request { url = srv.url .. "/small", max_size = 100 }
      assert.is_nil(r)
      assert.equals("response larger than max_size", err)
      r = assert(postern.http.request { url = srv.url .. "/small", max_size = 1000 })
      assert.equals(200, #r.body)
    end)

    it("keeps the connection alive: two requests to one server use one TCP connection", function()
      local own = http_server.start { routes = { { path = "/k", body = "kept" } } }
      local ok, e = pcall(function()
        assert.equals("kept", assert(postern.http.request { url = own.url .. "/k" }).body)
        assert.equals("kept", assert(postern.http.request { url = own.url .. "/k" }).body)
        assert.equals(2, #own:requests())
        assert.equals(1, own:connections())
        assert.equals(own:requests()[1].conn, own:requests()[2].conn)
      end)
      own:stop()
      assert(ok, e)
    end)

    it("verifies HTTPS certificates by default; verify = false accepts a self-signed one", function()
      local tls = http_server.start { tls = true, routes = { { path = "/s", body = "secret stuff" } } }
      local ok, e = pcall(function()
        local r, err = postern.http.request { url = tls.url .. "/s", timeout = 5 }
        assert.is_nil(r)
        assert.matches("certificate", err)
        assert.equals(0, #tls:requests())   -- nothing was sent over the unverified channel
        r = assert(postern.http.request { url = tls.url .. "/s", verify = false, timeout = 5 })
        assert.equals(200, r.status)
        assert.equals("secret stuff", r.body)
      end)
      tls:stop()
      assert(ok, e)
    end)

    it("refuses non-HTTP URLs and header values with CR or LF (header injection)", function()
      assert.has_error(function() postern.http.request { url = "file:///etc/passwd" } end)
      assert.has_error(function() postern.http.request { url = "ftp://127.0.0.1/" } end)
      assert.has_error(function()
        postern.http.request { url = srv.url .. "/echo", headers = { ["X-A"] = "1\r\nX-Injected: 1" } }
      end)
      assert.has_error(function() postern.http.request { url = srv.url .. "/echo", timeout = 0 } end)
    end)
  end)

  describe("postern.dns.resolve", function()
    it("resolves localhost to the loopback address", function()
      local addrs, err = postern.dns.resolve("localhost")
      assert.is_nil(err)
      assert.is_table(addrs)
      local found = false
      for _, a in ipairs(addrs) do
        assert.is_truthy(a:match("^[%d%.]+$") or a:match(":"), a)
        if a == "127.0.0.1" or a == "::1" then found = true end
      end
      assert.is_true(found, table.concat(addrs, ","))
    end)

    it("returns an IP literal as its own answer (IPv4 and IPv6)", function()
      assert.same({ "192.0.2.7" }, postern.dns.resolve("192.0.2.7"))
      assert.same({ "2001:db8::1" }, postern.dns.resolve("2001:db8::1"))
    end)

    it("returns nil and a message for a name that does not exist", function()
      local addrs, err = postern.dns.resolve("no-such-host.invalid", 5)
      assert.is_nil(addrs)
      assert.is_string(err)
      assert.matches("resolve", err)
    end)
  end)

  describe("postern.redis", function()
    local r

    setup(function() r = redis.start() end)
    teardown(function() if r then r:stop() end end)

    it("connects and runs SET, GET, INCR and HGETALL with Lua values as replies", function()
      local c = postern.redis.connect { host = "127.0.0.1", port = r.port }
      assert.equals("OK", c:call("SET", "greeting", "hello"))
      assert.equals("hello", c:call("GET", "greeting"))
      assert.equals(1, c:call("INCR", "counter"))
      assert.equals(2, c:call("INCR", "counter"))
      assert.equals(7, c:call("INCRBY", "counter", 5))
      assert.equals(2, c:call("HSET", "h", "a", "1", "b", "2"))
      local flat = c:call("HGETALL", "h")
      local h = {}
      for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
      assert.same({ a = "1", b = "2" }, h)
      assert.equals("7", r.cli("GET", "counter"))   -- it really is in the server
    end)

    it("returns nil without an error for a nil reply, and binary-safe strings", function()
      local c = postern.redis.connect { host = "localhost", port = r.port }
      local v, err = c:call("GET", "missing-key")
      assert.is_nil(v)
      assert.is_nil(err)
      assert.equals("OK", c:call("SET", "bin", "a\0b\r\nc"))
      assert.equals("a\0b\r\nc", c:call("GET", "bin"))
    end)

    it("returns nil and Redis's message for an error reply (\"ERR ...\")", function()
      local c = postern.redis.connect { port = r.port }
      c:call("SET", "text", "abc")
      local v, err = c:call("INCR", "text")
      assert.is_nil(v)
      assert.matches("^ERR value is not an integer", err)
      v, err = c:call("NOSUCHCOMMAND", "x")
      assert.is_nil(v)
      assert.matches("^ERR unknown command", err)
      assert.equals("PONG", c:call("PING"))   -- the connection is still good
    end)

    it("refuses a host name it would have to resolve, and arguments that are not strings or numbers", function()
      assert.has_error(function() postern.redis.connect { host = "redis.example", port = r.port } end)
      local c = postern.redis.connect { port = r.port }
      assert.has_error(function() c:call("SET", "k", {}) end)
      assert.has_error(function() c:call() end)
    end)

    it("logs in with `password` and selects `db`", function()
      local pr = redis.start { password = "p4ss word" }
      local ok, e = pcall(function()
        local c = postern.redis.connect { port = pr.port, password = "p4ss word", db = 3 }
        assert.equals("OK", c:call("SET", "in-db-3", "yes"))
        assert.equals("yes", pr.cli("-n", "3", "GET", "in-db-3"))
        assert.equals("", pr.cli("-n", "0", "GET", "in-db-3"))
        -- without the password, Redis refuses the command
        local anon = postern.redis.connect { port = pr.port, timeout = 2 }
        local v, err = anon:call("GET", "in-db-3")
        assert.is_nil(v)
        assert.matches("NOAUTH", err)
        -- with a wrong one too
        local wrong = postern.redis.connect { port = pr.port, password = "nope", timeout = 2 }
        v, err = wrong:call("GET", "in-db-3")
        assert.is_nil(v)
        assert.matches("NOAUTH", err)
      end)
      pr:stop()
      assert(ok, e)
    end)

    it("gives nil and a message at once when nothing listens on the port", function()
      local c = postern.redis.connect { port = dead_port(), timeout = 2 }
      local t0 = testing.now()
      local v, err = c:call("PING")
      assert.is_nil(v)
      assert.matches("redis: .*[Rr]efused", err)
      assert.is_true(elapsed_since(t0) < 1, "took " .. elapsed_since(t0))
    end)

    it("gives \"timeout\" when something accepts the connection but never answers", function()
      local silent = assert(require("socket").bind("127.0.0.1", 0))   -- never accepts, never answers
      local _, port = silent:getsockname()
      local ok, e = pcall(function()
        local c = postern.redis.connect { port = tonumber(port), timeout = 0.3 }
        local t0 = testing.now()
        local v, err = c:call("PING")
        assert.is_nil(v)
        assert.equals("timeout", err)
        assert.is_true(elapsed_since(t0) < 1.5, "took " .. elapsed_since(t0))
      end)
      silent:close()
      assert(ok, e)
    end)

    it("gives nil and a message when the server is stopped, and reconnects after a restart", function()
      local c = postern.redis.connect { port = r.port, timeout = 2 }
      assert.equals("PONG", c:call("PING"))
      r:kill()
      local t0 = testing.now()
      local v, err = c:call("PING")
      assert.is_nil(v)
      assert.matches("^redis: ", err)
      assert.is_true(elapsed_since(t0) < 1.5, "took " .. elapsed_since(t0))
      v, err = c:call("PING")                 -- still down: refused, quickly
      assert.is_nil(v)
      assert.matches("^redis: ", err)
      r:restart()
      -- the next call finds the new server
      assert.equals("PONG", c:call("PING"))
      assert.equals("OK", c:call("SET", "after-restart", "1"))
    end)

    it("fails a call that outlives `timeout` with nil, \"timeout\"; the next call works", function()
      local c = postern.redis.connect { port = r.port, timeout = 0.3 }
      local t0 = testing.now()
      local v, err = c:call("BLPOP", "empty-list", 5)
      local took = elapsed_since(t0)
      assert.is_nil(v)
      assert.equals("timeout", err)
      assert.is_true(took >= 0.25 and took < 1.5, "took " .. took)
      assert.equals("PONG", c:call("PING"))
      assert.equals("OK", c:call("SET", "after-timeout", "yes"))
      assert.equals("yes", c:call("GET", "after-timeout"))
    end)
  end)

  describe("mixing HTTP and Redis", function()
    -- Run in a child process under `timeout`: a wait that never ends must
    -- fail this spec, not hang the suite.
    it("finishes 200 alternating HTTP and Redis calls (no hang when a request completes inside curl's timer)", function()
      local r = redis.start()
      local web = testing.mock_http { name = "fast", body = "fast" }
      local script = os.tmpname()
      local ok, e = pcall(function()
        local f = assert(io.open(script, "w"))
        f:write(([[
          io.stdout:setvbuf("no")
          package.cpath = %q .. "/build/?.so;" .. package.cpath
          local postern = require "postern"
          local c = postern.redis.connect { port = %d, timeout = 2 }
          local n = 0
          for i = 1, 100 do
            local res, err = postern.http.request { url = %q, timeout = 3 }
            print(i, "http", res and res.status, err)
            if res and res.status == 200 then n = n + 1 end
            local del, rerr = c:call("DEL", "a")
            print(i, "redis", del, rerr)
            if del then n = n + 1 end
          end
          print("answered " .. n)
        ]]):format(testing.root, r.port, web:url("/x")))
        f:close()
        local t0 = testing.now()
        local p = io.popen(("timeout 20 %s %s 2>&1; echo rc=$?"):format(testing.luajit, script))
        local out = p:read("*a")
        p:close()
        print(("\n200 alternating HTTP/Redis calls in blocking mode: %.2f s"):format(elapsed_since(t0)))
        assert.matches("answered 200", out)
        assert.matches("rc=0", out)
      end)
      os.remove(script)
      web:stop()
      r:stop()
      assert(ok, e)
    end)
  end)

  describe("postern.sleep, postern.now, postern.log", function()
    it("sleeps for the given seconds", function()
      local t0 = testing.now()
      postern.sleep(0.3)
      local took = elapsed_since(t0)
      assert.is_true(took >= 0.28 and took < 1.5, "took " .. took)
    end)

    it("refuses a negative or non-numeric duration", function()
      assert.has_error(function() postern.sleep(-1) end)
      assert.has_error(function() postern.sleep("soon") end)
    end)

    it("tells the time in seconds with a fraction", function()
      local a = postern.now()
      assert.is_true(math.abs(a - os.time()) <= 1)
      assert.is_true(math.abs(a - testing.now()) < 0.5)
      local seen_fraction = false
      for _ = 1, 5 do
        local n = postern.now()
        if n ~= math.floor(n) then seen_fraction = true end
        postern.sleep(0.01)
      end
      assert.is_true(seen_fraction)
    end)

    it("checks the log level", function()
      assert.has_no_error(function() postern.log("debug", "a debug line from a spec") end)
      assert.has_error(function() postern.log("loud", "x") end)
    end)

    it("carries the version", function()
      assert.matches("^%d+%.%d+", postern.version)
    end)
  end)
end)

-- the binary ------------------------------------------------------------------

local GREETING = "^%* OK %[CAPABILITY [^%]]*%] postern%.test ready$"

local function connect(proxy)
  local c = testing.client { port = proxy.port, timeout = 10 }
  c:expect(GREETING)
  return c
end

-- log in as `case`: the policy runs that case and sends its result back as
-- the refusal message ("a1 NO [AUTHENTICATIONFAILED] R <result>")
local function run_case(proxy, case, timeout)
  local c = connect(proxy)
  local line = c:command("a1", "LOGIN " .. case .. " x", timeout or 10)
  c:close()
  return line
end

local function result_of(line)
  return line:match("^a1 NO %[AUTHENTICATIONFAILED%] R (.*)$")
end

local CASES_POLICY = [[
local postern = require "postern"
local HTTP, HTTPS, REDIS, DEAD = %q, %q, %d, %d

local function show(v, err, code)
  if v == nil then return "nil " .. tostring(err) .. (code and (" code=" .. code) or "") end
  return tostring(v)
end

local cases = {}

function cases.http_get(s)
  local r, err = postern.http.request { url = HTTP .. "/hello", headers = { ["X-User"] = s.user } }
  if not r then return show(r, err) end
  return ("status=%%d body=%%s answer=%%s"):format(r.status, r.body, r.headers["x-answer"])
end

function cases.http_post(s)
  local r, err = postern.http.request { method = "POST", url = HTTP .. "/echo", body = "user=" .. s.user,
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } }
  if not r then return show(r, err) end
  return ("status=%%d len=%%d"):format(r.status, #r.body)
end

function cases.http_timeout()
  local t0 = postern.now()
  local r, err = postern.http.request { url = HTTP .. "/slow", timeout = 0.3 }
  return show(r, err) .. (" took=%%.2f"):format(postern.now() - t0)
end

function cases.http_refused()
  return show(postern.http.request { url = "http://127.0.0.1:" .. DEAD .. "/" })
end

function cases.http_too_big()
  return show(postern.http.request { url = HTTP .. "/big" })
end

function cases.https_default()
  return show(postern.http.request { url = HTTPS .. "/s", timeout = 5 })
end

function cases.https_noverify()
  local r, err = postern.http.request { url = HTTPS .. "/s", verify = false, timeout = 5 }
  if not r then return show(r, err) end
  return "status=" .. r.status .. " body=" .. r.body
end

function cases.dns_localhost()
  local a, err = postern.dns.resolve("localhost")
  if not a then return show(a, err) end
  return table.concat(a, ",")
end

function cases.dns_literal() return table.concat(postern.dns.resolve("198.51.100.9"), ",") end

function cases.dns_missing() return show(postern.dns.resolve("no-such-host.invalid", 5)) end

local function rc(opts)
  opts = opts or {}
  return postern.redis.connect { host = "127.0.0.1", port = opts.port or REDIS, timeout = opts.timeout or 2 }
end

function cases.redis_basic()
  local c = rc()
  local out = { c:call("SET", "k", "v"), c:call("GET", "k"), c:call("INCR", "n"), c:call("INCR", "n") }
  c:call("DEL", "h")
  c:call("HSET", "h", "f", "x")
  out[#out + 1] = table.concat(c:call("HGETALL", "h"), ":")
  return table.concat(out, " ")
end

function cases.redis_error()
  local c = rc()
  c:call("SET", "text", "abc")
  return show(c:call("INCR", "text"))
end

-- a dead Redis is an error the script sees, not a stuck session
function cases.redis_dead()
  local v, err = rc { port = DEAD }:call("PING")
  if v == nil then return nil, { message = "R redis down: " .. tostring(err), temporary = true } end
  return "unexpected " .. tostring(v)
end

-- the same, letting the error escape: the core's temporary failure
function cases.redis_dead_assert()
  return assert(rc { port = DEAD }:call("PING"))
end

function cases.redis_ping() return show(rc():call("PING")) end

function cases.redis_timeout()
  local c = rc { timeout = 0.3 }
  local t0 = postern.now()
  local v, err = c:call("BLPOP", "empty", 5)
  local took = postern.now() - t0
  return show(v, err) .. (" took=%%.2f then=%%s"):format(took, show(c:call("PING")))
end

function cases.sleep()
  local t0 = postern.now()
  postern.sleep(0.3)
  return ("slept=%%.2f"):format(postern.now() - t0)
end

function cases.log(s)
  postern.log("info", "hello from ", s.user, " number ", 42, " ", true)
  return "logged"
end

function cases.now() return ("%%.3f"):format(postern.now()) end

-- waits that outlive their session: the line after them must never run
function cases.slow_http()
  postern.log("info", "waiting on http")
  local r = postern.http.request { url = HTTP .. "/slow", timeout = 5 }
  postern.log("warn", "RESUMED after http")
  return "resumed"
end

function cases.slow_redis()
  postern.log("info", "waiting on redis")
  local v = rc { timeout = 5 }:call("BLPOP", "wake-me", 4)
  postern.log("warn", "RESUMED after redis")
  return "resumed"
end

function cases.slow_sleep()
  postern.log("info", "waiting on sleep")
  postern.sleep(1)
  postern.log("warn", "RESUMED after sleep")
  return "resumed"
end

function cases.slow_dns()
  postern.log("info", "waiting on dns")
  postern.dns.resolve("localhost")
  postern.sleep(1)
  postern.log("warn", "RESUMED after dns")
  return "resumed"
end

-- where a hook cannot wait: its own coroutines, and C functions that call back
function cases.own_coroutine()
  local ok, err = coroutine.wrap(function() return pcall(postern.sleep, 0.01) end)()
  return tostring(ok) .. " " .. tostring(err)
end

function cases.inside_sort()
  local ok, err = pcall(table.sort, { 3, 1, 2 }, function(a, b) postern.sleep(0.01) return a < b end)
  return tostring(ok) .. " " .. tostring(err)
end

-- waiting inside pcall is fine
function cases.inside_pcall()
  local ok, r = pcall(postern.http.request, { url = HTTP .. "/hello" })
  return tostring(ok) .. " " .. tostring(r and r.status)
end

-- concurrency: each session waits one second
function cases.wait_sleep()
  postern.sleep(1)
  return "done"
end

function cases.wait_http()
  local r, err = postern.http.request { url = HTTP .. "/one-second", timeout = 10 }
  return r and ("status=" .. r.status) or show(r, err)
end

-- on_close may wait too: it records the end of the sessions that asked for
-- it (s.vars carries data from one hook to the next; after a refused login
-- the credentials are gone from s)
local function on_close(s, info)
  if not s.vars.record_close then return end
  local c = rc()
  c:call("INCR", "closed")
  postern.sleep(0.1)
  c:call("SET", "closed_reason", tostring(info.reason))
  postern.log("info", "on_close recorded")
end

function cases.on_close_redis(s)
  s.vars.record_close = true
  return "bye"
end

return {
  on_close = on_close,
  authenticate = function(s)
    local f = cases[s.user]
    if not f then return nil, "no case " .. s.user end
    local out, refusal = f(s)
    if out == nil then return nil, refusal end
    return nil, "R " .. out
  end,
}
]]

describe("postern library inside hooks of the real binary", function()
  local srv, tls, r, proxy, dead

  setup(function()
    srv = http_server.start {
      routes = {
        { path = "/hello", body = "hi", headers = { ["X-Answer"] = "42" } },
        { path = "/echo", echo = true },
        { path = "/slow", delay = 2, body = "late" },
        { path = "/one-second", delay = 1, body = "ok" },
        { path = "/big", body_size = 2 * 1024 * 1024 },
      },
    }
    tls = http_server.start { tls = true, routes = { { path = "/s", body = "secure" } } }
    r = redis.start()
    dead = dead_port()
    proxy = testing.start {
      policy_source = CASES_POLICY:format(srv.url, tls.url, r.port, dead),
      config = { timeout = 20, auth_timeout = 20, max_login_attempts = 100 },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if srv then srv:stop() end
    if tls then tls:stop() end
    if r then r:stop() end
  end)

  describe("postern.http.request", function()
    it("GETs with the hook's headers and returns status, headers and body", function()
      assert.equals("status=200 body=hi answer=42", result_of(run_case(proxy, "http_get")))
      local last = srv:requests()[#srv:requests()]
      assert.equals("/hello", last.path)
      assert.equals("http_get", last.headers["x-user"])
    end)

    it("POSTs a body", function()
      assert.matches("^status=200 len=%d+$", result_of(run_case(proxy, "http_post")))
      local last = srv:requests()[#srv:requests()]
      assert.equals("POST", last.method)
      assert.equals("user=http_post", last.body)
      assert.equals("application/x-www-form-urlencoded", last.headers["content-type"])
    end)

    it("times out with nil, \"timeout\" without holding the session", function()
      local res = result_of(run_case(proxy, "http_timeout"))
      local took = tonumber(res:match("took=([%d%.]+)"))
      assert.matches("^nil timeout ", res)
      assert.is_true(took >= 0.25 and took < 1.5, res)
    end)

    it("reports a refused connection as nil, message and code", function()
      assert.matches("^nil .*[Cc]onnect.* code=7$", result_of(run_case(proxy, "http_refused")))
    end)

    it("reports a response over max_size", function()
      assert.equals("nil response larger than max_size", result_of(run_case(proxy, "http_too_big")))
    end)

    it("refuses an unverified certificate by default and accepts it with verify = false", function()
      assert.matches("^nil .*certificate", result_of(run_case(proxy, "https_default")))
      assert.equals("status=200 body=secure", result_of(run_case(proxy, "https_noverify")))
    end)

    it("reuses kept-alive connections across sessions", function()
      local own = http_server.start { routes = { { path = "/hello", body = "hi", headers = { ["X-Answer"] = "1" } } } }
      local p = testing.start { policy_source = CASES_POLICY:format(own.url, tls.url, r.port, dead) }
      local ok, e = pcall(function()
        for _ = 1, 3 do
          assert.equals("status=200 body=hi answer=1", result_of(run_case(p, "http_get")))
        end
        assert.equals(3, #own:requests())
        assert.equals(1, own:connections())
      end)
      p:stop()
      own:stop()
      assert(ok, e)
    end)
  end)

  describe("postern.dns.resolve", function()
    it("resolves localhost, returns IP literals as they are, and fails on unknown names", function()
      assert.matches("127%.0%.0%.1", result_of(run_case(proxy, "dns_localhost")))
      assert.equals("198.51.100.9", result_of(run_case(proxy, "dns_literal")))
      assert.matches("^nil cannot resolve", result_of(run_case(proxy, "dns_missing")))
    end)
  end)

  describe("postern.redis", function()
    it("runs SET, GET, INCR and HGETALL", function()
      r.cli("DEL", "n")
      assert.equals("OK v 1 2 f:x", result_of(run_case(proxy, "redis_basic")))
      assert.equals("v", r.cli("GET", "k"))
    end)

    it("returns an error reply as nil, \"ERR ...\"", function()
      assert.matches("^nil ERR value is not an integer", result_of(run_case(proxy, "redis_error")))
    end)

    it("shares one connection between sessions", function()
      for _ = 1, 3 do assert.equals("PONG", result_of(run_case(proxy, "redis_ping"))) end
      -- redis-cli itself is one client: postern adds exactly one
      local clients = tonumber(r.cli("INFO", "clients"):match("connected_clients:(%d+)"))
      assert.equals(2, clients)
    end)

    it("gives the script an error quickly when Redis is dead, never a stuck session", function()
      local t0 = testing.now()
      local line = run_case(proxy, "redis_dead")
      assert.matches("^a1 NO %[UNAVAILABLE%] R redis down: redis: .*[Rr]efused", line)
      assert.is_true(elapsed_since(t0) < 2, "took " .. elapsed_since(t0))
      -- an error the script lets escape gives the core's temporary failure
      assert.equals("a1 NO [UNAVAILABLE] Temporary authentication failure, try again later",
        run_case(proxy, "redis_dead_assert"))
    end)

    it("reconnects after Redis restarts", function()
      assert.equals("PONG", result_of(run_case(proxy, "redis_ping")))
      r:kill()
      assert.matches("^nil redis: ", result_of(run_case(proxy, "redis_ping")))
      r:restart()
      assert.equals("PONG", result_of(run_case(proxy, "redis_ping")))
    end)

    it("fails a call past its timeout with \"timeout\" and the next call works", function()
      local res = result_of(run_case(proxy, "redis_timeout"))
      assert.matches("^nil timeout took=[%d%.]+ then=PONG$", res)
      local took = tonumber(res:match("took=([%d%.]+)"))
      assert.is_true(took >= 0.25 and took < 1.5, res)
      assert.equals("PONG", result_of(run_case(proxy, "redis_ping")))
    end)
  end)

  describe("postern.sleep, postern.now, postern.log", function()
    it("sleeps inside a hook", function()
      local took = tonumber(result_of(run_case(proxy, "sleep")):match("slept=([%d%.]+)"))
      assert.is_true(took >= 0.28 and took < 1.5, tostring(took))
    end)

    it("tells the time", function()
      local now = tonumber(result_of(run_case(proxy, "now")))
      assert.is_true(math.abs(now - testing.now()) < 2)
    end)

    it("logs the concatenated arguments with the session's context", function()
      assert.equals("logged", result_of(run_case(proxy, "log")))
      local line = proxy:wait_log("hello from log number 42 true")
      assert.matches("%[info%]", line)
      assert.matches("%[lua%] hello from log number 42 true", line)
      assert.matches("%*%d+", line)    -- the session id
    end)
  end)

  describe("where a hook may wait", function()
    it("refuses to wait in a coroutine of the policy's own, with a clear error", function()
      assert.matches("^false .*postern%.sleep can only be called inside a hook", result_of(run_case(proxy, "own_coroutine")))
    end)

    it("refuses to wait inside a C function that calls back (table.sort)", function()
      assert.matches("^false .*postern%.sleep cannot wait here", result_of(run_case(proxy, "inside_sort")))
    end)

    it("waits inside pcall", function()
      assert.equals("true 200", result_of(run_case(proxy, "inside_pcall")))
    end)
  end)

  describe("on_close", function()
    it("may call Redis and sleep after the session is gone", function()
      r.cli("DEL", "closed", "closed_reason")
      assert.equals("bye", result_of(run_case(proxy, "on_close_redis")))
      proxy:wait_log("on_close recorded", 5)
      assert.equals("1", r.cli("GET", "closed"))
      assert.is_true(#r.cli("GET", "closed_reason") > 0)
    end)
  end)

  describe("a session that closes while its hook waits", function()
    local function close_while_waiting(case, started, wake)
      local c = connect(proxy)
      c:send("a1 LOGIN " .. case .. " x\r\n")
      started()
      c:close()
      if wake then wake() end
      testing.sleep(2.5)
      assert.same({}, (function()
        local found = {}
        for l in proxy:log():gmatch("[^\n]+") do
          if l:find("RESUMED after", 1, true) then found[#found + 1] = l end
        end
        return found
      end)())
      assert.is_true(proxy:alive())
      assert.equals("PONG", result_of(run_case(proxy, "redis_ping")))
    end

    it("drops a pending HTTP request and never resumes the hook", function()
      local before = #srv:requests()
      close_while_waiting("slow_http", function()
        srv:wait_requests(before + 1, 5)
      end)
    end)

    it("drops a pending Redis call (whose reply comes later) and never resumes the hook", function()
      r.cli("DEL", "wake-me")
      close_while_waiting("slow_redis", function()
        proxy:wait_log("waiting on redis")
        local deadline = testing.now() + 5
        while not r.cli("CLIENT", "LIST"):find("cmd=blpop", 1, true) and testing.now() < deadline do
          testing.sleep(0.05)
        end
        assert.matches("cmd=blpop", r.cli("CLIENT", "LIST"))
      end, function()
        testing.sleep(0.2)
        r.cli("RPUSH", "wake-me", "now")   -- the late reply arrives for a gone session
      end)
    end)

    it("stops a pending sleep and never resumes the hook", function()
      close_while_waiting("slow_sleep", function() proxy:wait_log("waiting on sleep") end)
    end)

    it("stops a wait that follows a DNS lookup and never resumes the hook", function()
      close_while_waiting("slow_dns", function() proxy:wait_log("waiting on dns") end)
    end)
  end)

  describe("concurrency", function()
    -- n clients log in at once; returns the seconds until the last answer
    local function all_at_once(n, case)
      local clients = {}
      for i = 1, n do clients[i] = connect(proxy) end
      local t0 = testing.now()
      for i = 1, n do clients[i]:send("a1 LOGIN " .. case .. " x\r\n") end
      local lines = {}
      for i = 1, n do
        lines[i] = clients[i]:line(30)
        clients[i]:close()
      end
      return elapsed_since(t0), lines
    end

    it("50 sessions each sleeping 1 s finish in about 1 s, not 50", function()
      local took, lines = all_at_once(50, "wait_sleep")
      print(("\n50 sessions x postern.sleep(1): %.2f s"):format(took))
      for i = 1, 50 do assert.equals("a1 NO [AUTHENTICATIONFAILED] R done", lines[i]) end
      assert.is_true(took >= 0.95, "took " .. took)
      assert.is_true(took < 5, "took " .. took)
    end)

    it("50 sessions each waiting on a 1-second HTTP answer finish in about 1 s", function()
      local before = #srv:requests()
      local took, lines = all_at_once(50, "wait_http")
      print(("50 sessions x 1-second HTTP answer: %.2f s"):format(took))
      for i = 1, 50 do assert.equals("a1 NO [AUTHENTICATIONFAILED] R status=200", lines[i]) end
      assert.equals(before + 50, #srv:requests())
      assert.is_true(took >= 0.95, "took " .. took)
      assert.is_true(took < 5, "took " .. took)
    end)
  end)
end)

describe("a hook that outlives auth_timeout while it waits on HTTP", function()
  local auth, proxy

  setup(function()
    auth = testing.mock_http { name = "slow-auth", delay = 3, body = "too late" }
    proxy = testing.start {
      policy_source = ([[
        local postern = require "postern"
        return { authenticate = function(s)
          postern.log("info", "asking the slow service")
          local r = postern.http.request { url = %q, timeout = 10 }
          postern.log("warn", "RESUMED after auth_timeout")
          return nil, "too late"
        end }
      ]]):format(auth:url("/auth")),
      config = { auth_timeout = 1 },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end   -- strict: no alert, no sanitizer report, exit 0
    if auth then auth:stop() end
  end)

  it("gets a temporary failure after auth_timeout; the request is dropped and the hook never resumed", function()
    local c = connect(proxy)
    local t0 = testing.now()
    local line = c:command("a1", "LOGIN alice secret", 10)
    local took = elapsed_since(t0)
    assert.equals("a1 NO [UNAVAILABLE] Temporary authentication failure, try again later", line)
    assert.is_true(took >= 0.9 and took < 2.5, "took " .. took)
    assert.equals(1, #auth:wait_requests(1))
    testing.sleep(2.5)    -- past the service's answer
    assert.is_nil(proxy:log():find("RESUMED after auth_timeout", 1, true))
    -- the session is still usable
    assert.matches("^a2 NO", (c:command("a2", "LOGIN alice secret", 10)))
    c:close()
  end)
end)

describe("bad arguments to postern.http.request", function()
  local BAD = {
    { "a list of strings", '{ "X-A: 1" }' },
    { "a list of booleans", "{ true }" },
    { "a pair without a value", '{ { "X-A" } }' },
    { "a pair with a table value", '{ { "X-A", {} } }' },
    { "a name with a colon", '{ { "X-A:", "1" } }' },
  }

  it("raise a Lua error, never crash, when called directly (in a child process)", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(("package.cpath = %q .. '/build/?.so;' .. package.cpath\n"):format(testing.root),
      "local postern = require 'postern'\n")
    for i, b in ipairs(BAD) do
      f:write(("print(%d, pcall(postern.http.request, { url = 'http://127.0.0.1:1/', headers = %s }))\n")
        :format(i, b[2]))
    end
    f:write("print('survived')\n")
    f:close()
    local p = io.popen(("timeout 20 %s %s 2>&1; echo rc=$?"):format(testing.luajit, script))
    local out = p:read("*a")
    p:close()
    os.remove(script)
    assert.matches("survived", out)
    assert.matches("rc=0", out)
    for i, b in ipairs(BAD) do
      assert.matches("\n" .. i .. "\tfalse\t[^\n]*headers must be", "\n" .. out, nil, false, b[1])
    end
  end)

  it("raise a Lua error in a hook, never crash the proxy", function()
    local cases = {}
    for i, b in ipairs(BAD) do
      cases[#cases + 1] = ("[%q] = function() return pcall(postern.http.request, { url = 'http://127.0.0.1:1/', headers = %s }) end,")
        :format("bad" .. i, b[2])
    end
    local p = testing.start { policy_source = ([[
      local postern = require "postern"
      local cases = { %s }
      return { authenticate = function(s)
        local ok, err = cases[s.user]()
        return nil, "R " .. tostring(ok) .. " " .. tostring(err)
      end }
    ]]):format(table.concat(cases, "\n")) }
    local ok, e = pcall(function()
      for i = 1, #BAD do
        local line = run_case(p, "bad" .. i)
        assert.matches("^a1 NO %[AUTHENTICATIONFAILED%] R false .*headers must be", line, nil, false, BAD[i][1])
        assert.is_true(p:alive())
      end
    end)
    local stopped, serr = pcall(p.stop, p)
    assert(ok, e)
    assert(stopped, serr)
  end)
end)

describe("stopping postern while hooks wait", function()
  it("exits cleanly (status 0, nothing leaked) with hooks waiting on HTTP, Redis and sleep", function()
    local r = redis.start()
    local slow = testing.mock_http { name = "never-answers-in-time", delay = 8 }
    local p = testing.start { policy_source = ([[
      local postern = require "postern"
      return { authenticate = function(s)
        postern.log("info", "waiting: ", s.user)
        if s.user == "http" then postern.http.request { url = %q, timeout = 10 } end
        if s.user == "redis" then postern.redis.connect { port = %d, timeout = 10 }:call("BLPOP", "x", 8) end
        if s.user == "sleep" then postern.sleep(8) end
        return nil, "no"
      end }
    ]]):format(slow:url("/"), r.port) }
    local ok, e = pcall(function()
      local clients = {}
      for _, user in ipairs({ "http", "redis", "sleep" }) do
        local c = connect(p)
        c:send("a1 LOGIN " .. user .. " x\r\n")
        clients[#clients + 1] = c
        p:wait_log("waiting: " .. user)
      end
      slow:wait_requests(1)
      local t0 = testing.now()
      assert.equals(0, p:stop())       -- strict: also fails on a sanitizer report
      assert.is_true(elapsed_since(t0) < 3, "stopping took " .. elapsed_since(t0))
      for _, c in ipairs(clients) do assert.is_true(c:closed(2)) end
    end)
    if not p.stopped then pcall(p.stop, p) end
    slow:stop()
    r:stop()
    assert(ok, e)
  end)
end)

describe("asynchronous functions called while the policy loads", function()
  local dir

  setup(function()
    dir = (io.popen("mktemp -d /tmp/postern-loadtime.XXXXXX"):read("*l"))
  end)
  teardown(function()
    if dir and dir:match("^/tmp/postern%-loadtime") then os.execute("rm -rf '" .. dir .. "'") end
  end)

  local function check(name, call)
    local path = dir .. "/" .. name .. ".lua"
    local f = assert(io.open(path, "w"))
    f:write("local postern = require \"postern\"\n",
      "-- line 2\n",
      call, "\n",                               -- line 3
      "return { authenticate = function() return nil, 'no' end }\n")
    f:close()
    local ok, out = testing.check_config {
      policy = path,
      listen = { { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap" } },
    }
    return ok, out, path
  end

  for _, c in ipairs({
    { "postern.sleep", "postern.sleep(0.1)" },
    { "postern.http.request", "postern.http.request { url = 'http://127.0.0.1:1/' }" },
    { "postern.dns.resolve", "postern.dns.resolve('localhost')" },
    { "client:call", "postern.redis.connect { port = 1 }:call('PING')" },
  }) do
    it("makes postern -t fail naming the file and line for " .. c[1], function()
      local ok, out, path = check(c[1]:gsub("[^%w]", "_"), c[2])
      assert.is_false(ok)
      assert.truthy(out:find(path .. ":3:", 1, true), out)
      assert.truthy(out:find(c[1] .. " can only be called inside a hook", 1, true), out)
    end)
  end

  it("lets the policy create a Redis client at load time (connecting is not a wait)", function()
    local ok, out = check("redis_connect", "local c = postern.redis.connect { port = 1 }")
    assert.is_true(ok, out)
    assert.matches("configuration ok", out)
  end)
end)
