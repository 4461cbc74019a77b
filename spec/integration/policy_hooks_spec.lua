-- The Lua bridge (issue item 4), end to end through the real binary:
-- what the policy's hooks receive, what their return values do, and how
-- errors, waits and timeouts in a hook are kept to their own session.
--
-- Most behaviours share one proxy whose `authenticate` hook dispatches on
-- the user name (see MAIN_POLICY); options that change the whole proxy
-- (proxy_pass_error_message, max_login_attempts, auth_timeout, on_connect
-- outcomes) get a proxy of their own.
local testing = require "postern.testing"
local mime = require "mime"

local GREETING = "^%* OK %[CAPABILITY [^%]]*%] postern%.test ready$"

-- a client that has read postern's greeting
local function connect(proxy, opts)
  opts = opts or {}
  opts.port = proxy.port
  local c = testing.client(opts)
  c:expect(GREETING)
  return c
end

local function login(c, tag, user, pass, timeout)
  return (c:command(tag, ("LOGIN %s %s"):format(user, pass), timeout))
end

-- "k=v k=v ..." (as the policy's `describe` writes it) -> table
local function parse_fields(text)
  local t = {}
  for k, v in text:gmatch("([%w_]+)=(%S+)") do t[k] = v end
  return t
end

-- the lines of the proxy log that match a plain (not pattern) string
local function log_lines_with(proxy, needle)
  local out = {}
  for l in proxy:log():gmatch("[^\n]+") do
    if l:find(needle, 1, true) then out[#out + 1] = l end
  end
  return out
end

local function elapsed_since(t0) return testing.now() - t0 end

-- authenticate dispatches on s.user; unknown users go to backend A
local MAIN_POLICY = [[
local postern = require "postern"
local A, B, DEAD, DEAD2, BYE = %d, %d, %d, %d, %d

local function up(port, extra)
  local u = { host = "127.0.0.1", port = port }
  for k, v in pairs(extra or {}) do u[k] = v end
  return u
end

local FIELDS = { "id", "protocol", "client_ip", "client_port", "local_ip", "local_port", "server_name",
                 "tls", "user", "password", "mechanism", "authzid", "login_attempt" }
local function describe(s)
  local out = {}
  for _, k in ipairs(FIELDS) do out[#out + 1] = k .. "=" .. tostring(s[k]) end
  return table.concat(out, " ")
end

local users = {}

-- session fields, serialized into the refusal message
function users.fields(s) return nil, "fields " .. describe(s) end

-- s is read-only: this assignment raises an error
function users.readonly(s)
  s.user = "mallory"
  return up(A)
end

-- s.vars: set by on_connect, counted here across attempts
function users.vars(s)
  s.vars.tries = (s.vars.tries or 0) + 1
  return nil, ("vars greeted=%%s tries=%%d"):format(tostring(s.vars.greeted), s.vars.tries)
end

function users.checker(s)
  if s:check_password("open sesame") then return up(A) end
  return nil, "check_password said no"
end

function users.failover(s) return { up(DEAD), up(B) } end
function users.badgreet(s) return { up(BYE), up(B) } end
function users.override(s) return up(B, { user = "svc", password = "svc-pw" }) end
function users.nowhere(s) return { up(DEAD), up(DEAD2) } end
function users.refused(s) return nil, "No entry for you" end
function users.waiter(s) return nil, { message = "Slow down", wait = 1 } end
function users.tempfail(s) return nil, { message = "Backend maintenance", temporary = true } end
function users.boom(s)
  postern.sleep(0.3)
  error("boom")
end
function users.slowok(s)
  postern.sleep(0.3)
  return up(A)
end
function users.number(s) return 42 end
function users.noport(s) return { host = "127.0.0.1" } end
function users.nap(s)
  postern.sleep(1)
  return nil, "rested"
end
function users.logger(s)
  postern.log("info", "hello from the policy, attempt ", s.login_attempt)
  return nil, "logged"
end
function users.clock(s)
  local t1 = postern.now()
  postern.sleep(0.2)
  local t2 = postern.now()
  return nil, ("clock t1=%%.3f t2=%%.3f"):format(t1, t2)
end
function users.slowpoke(s)
  postern.sleep(1)
  postern.log("info", "slowpoke woke up")
  return up(A)
end

return {
  on_connect = function(s)
    s.vars.greeted = "yes"
  end,
  authenticate = function(s)
    local h = users[s.user]
    if h then return h(s) end
    return up(A)
  end,
  on_close = function(s, info)
    postern.log("info", "on_close user=", tostring(s.user), " bytes_in=", info.bytes_in,
      " bytes_out=", info.bytes_out, " duration=", info.duration, " upstream=", tostring(info.upstream),
      " reason=", (tostring(info.reason):gsub(" ", "_")))
  end,
}
]]

describe("policy hooks", function()
  local a, b, bye, proxy

  setup(function()
    a = testing.mock_imap { name = "backend-a" }
    b = testing.mock_imap { name = "backend-b" }
    bye = testing.mock_imap { name = "backend-bye", greeting = "* BYE not today" }
    proxy = testing.start {
      policy_source = MAIN_POLICY:format(a.port, b.port, testing.free_port(), testing.free_port(), bye.port),
      config = { timeout = 10, auth_timeout = 5, max_login_attempts = 5 },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end   -- strict: no alert, no sanitizer report, exit 0
    if a then a:stop() end
    if b then b:stop() end
    if bye then bye:stop() end
  end)

  describe("the session table given to authenticate", function()
    it("carries the connection, the LOGIN credentials and the attempt number", function()
      local c = connect(proxy)
      local my_ip, my_port = c.sock:getsockname()
      local reply = login(c, "a1", "fields", "pw1")
      local text = assert(reply:match("^a1 NO %[AUTHENTICATIONFAILED%] fields (.*)$"), reply)
      local f = parse_fields(text)
      assert.matches("^%d+$", f.id)
      assert.equals("imap", f.protocol)
      assert.equals(my_ip, f.client_ip)
      assert.equals(tostring(my_port), f.client_port)
      assert.equals("127.0.0.1", f.local_ip)
      assert.equals(tostring(proxy.port), f.local_port)
      assert.equals("postern.test", f.server_name)
      assert.equals("false", f.tls)
      assert.equals("fields", f.user)
      assert.equals("pw1", f.password)
      assert.equals("plain", f.mechanism)   -- nginx's name for the LOGIN command
      assert.equals("nil", f.authzid)
      assert.equals("1", f.login_attempt)

      -- a retry on the same connection: same session, next attempt
      local reply2 = login(c, "a2", "fields", "pw2")
      local f2 = parse_fields(assert(reply2:match("^a2 NO %[AUTHENTICATIONFAILED%] fields (.*)$"), reply2))
      assert.equals(f.id, f2.id)
      assert.equals("pw2", f2.password)
      assert.equals("2", f2.login_attempt)
      c:close()
    end)

    it("names AUTHENTICATE LOGIN's mechanism \"login\"", function()
      local c = connect(proxy)
      c:send("a1 AUTHENTICATE LOGIN\r\n")
      c:expect("^%+ VXNlcm5hbWU6$")   -- "Username:"
      c:send(mime.b64("fields") .. "\r\n")
      c:expect("^%+ UGFzc3dvcmQ6$")   -- "Password:"
      c:send(mime.b64("pw-login") .. "\r\n")
      local reply = c:line()
      local f = parse_fields(assert(reply:match("^a1 NO %[AUTHENTICATIONFAILED%] fields (.*)$"), reply))
      assert.equals("login", f.mechanism)
      assert.equals("fields", f.user)
      assert.equals("pw-login", f.password)
      assert.equals("nil", f.authzid)
      c:close()
    end)

    it("gives AUTHENTICATE PLAIN's authorization identity as authzid", function()
      local c = connect(proxy)
      local ir = mime.b64("admin\0fields\0pw-plain")
      local reply = (c:command("a1", "AUTHENTICATE PLAIN " .. ir))
      local f = parse_fields(assert(reply:match("^a1 NO %[AUTHENTICATIONFAILED%] fields (.*)$"), reply))
      assert.equals("plain", f.mechanism)
      assert.equals("admin", f.authzid)
      assert.equals("fields", f.user)
      assert.equals("pw-plain", f.password)
      assert.equals("1", f.login_attempt)
      -- the next attempt, with LOGIN, has nothing left over from the PLAIN one
      local reply2 = login(c, "a2", "fields", "pw-next")
      local f2 = parse_fields(assert(reply2:match("^a2 NO %[AUTHENTICATIONFAILED%] fields (.*)$"), reply2))
      assert.equals("nil", f2.authzid)
      assert.equals("pw-next", f2.password)
      assert.equals("2", f2.login_attempt)
      c:close()
    end)

    it("is read-only: assigning a field fails the hook with NO [UNAVAILABLE]", function()
      local c = connect(proxy)
      assert.equals("a1 NO [UNAVAILABLE] Temporary authentication failure, try again later",
        login(c, "a1", "readonly", "x"))
      proxy:wait_log("policy error in authenticate:.*session fields are read%-only")
      -- nothing reached a backend under the name the policy tried to set
      for _, m in ipairs { a, b } do
        for _, l in ipairs(m:logins()) do assert.not_equals("mallory", l.user) end
      end
      c:close()
    end)

    it("keeps s.vars from on_connect to authenticate and from one attempt to the next", function()
      local c = connect(proxy)
      assert.equals("a1 NO [AUTHENTICATIONFAILED] vars greeted=yes tries=1", login(c, "a1", "vars", "x"))
      assert.equals("a2 NO [AUTHENTICATIONFAILED] vars greeted=yes tries=2", login(c, "a2", "vars", "x"))
      c:close()
      -- another connection has vars of its own
      local c2 = connect(proxy)
      assert.equals("a1 NO [AUTHENTICATIONFAILED] vars greeted=yes tries=1", login(c2, "a1", "vars", "x"))
      c2:close()
    end)

    it("checks the password with s:check_password", function()
      local c = connect(proxy)
      assert.equals("a1 NO [AUTHENTICATIONFAILED] check_password said no",
        login(c, "a1", "checker", '"open sesam"'))
      assert.matches("^a2 OK", login(c, "a2", "checker", '"open sesame"'))
      a:wait_for("^AUTH checker open sesame login$")
      c:close()
    end)
  end)

  describe("an upstream returned by authenticate", function()
    it("is logged in to with the client's credentials", function()
      local c = connect(proxy)
      assert.matches("^a1 OK", login(c, "a1", "alice", "alice-pw"))
      a:wait_for("^AUTH alice alice%-pw login$")
      local _, untagged = c:command("a2", 'LIST "" *')
      assert.matches("backend%-a", table.concat(untagged, "\n"))
      c:close()
    end)

    it("in a list: an unreachable first one is skipped for the second", function()
      local c = connect(proxy)
      assert.matches("^a1 OK", login(c, "a1", "failover", "fo-pw"))
      b:wait_for("^AUTH failover fo%-pw login$")
      local _, untagged = c:command("a2", 'LIST "" *')
      assert.matches("backend%-b", table.concat(untagged, "\n"))
      for _, l in ipairs(a:logins()) do assert.not_equals("failover", l.user) end
      proxy:wait_log('connect%(%) to upstream failed.*login: "failover"')
      c:close()
    end)

    it("in a list: one that greets with BYE is skipped for the next", function()
      local c = connect(proxy)
      assert.matches("^a1 OK", login(c, "a1", "badgreet", "bg-pw"))
      b:wait_for("^AUTH badgreet bg%-pw login$")
      assert.same({}, bye:logins())
      c:close()
    end)

    it("may carry its own user and password for the upstream login", function()
      local c = connect(proxy)
      assert.matches("^a1 OK", login(c, "a1", "override", "client-pw"))
      b:wait_for("^AUTH svc svc%-pw login$")
      for _, m in ipairs { a, b } do
        for _, l in ipairs(m:logins()) do assert.not_equals("client-pw", l.password) end
      end
      c:close()
    end)

    it("when none can be reached gives NO [UNAVAILABLE], and the client may try again", function()
      local c = connect(proxy)
      assert.matches("^a1 NO %[UNAVAILABLE%]", login(c, "a1", "nowhere", "x"))
      assert.matches("^a2 OK", login(c, "a2", "alice", "again-pw"))
      a:wait_for("^AUTH alice again%-pw login$")
      c:close()
    end)
  end)

  describe("a refusal", function()
    it("given as a string is sent as NO [AUTHENTICATIONFAILED] with the message", function()
      local c = connect(proxy)
      assert.equals("a1 NO [AUTHENTICATIONFAILED] No entry for you", login(c, "a1", "refused", "x"))
      c:close()
    end)

    it("with wait = 1 arrives after about a second, and the client may try again", function()
      local c = connect(proxy)
      local t0 = testing.now()
      local reply = login(c, "a1", "waiter", "x")
      local took = elapsed_since(t0)
      assert.equals("a1 NO [AUTHENTICATIONFAILED] Slow down", reply)
      assert.is_true(took >= 0.9, ("the refusal came after %.2f s"):format(took))
      assert.is_true(took < 3, ("the refusal came after %.2f s"):format(took))
      assert.matches("^a2 OK", login(c, "a2", "alice", "after-wait"))
      c:close()
    end)

    it("with temporary = true is sent as NO [UNAVAILABLE] with the message", function()
      local c = connect(proxy)
      assert.equals("a1 NO [UNAVAILABLE] Backend maintenance", login(c, "a1", "tempfail", "x"))
      c:close()
    end)
  end)

  describe("a policy error", function()
    it("gives NO [UNAVAILABLE], is logged with its traceback, and leaves a concurrent login alone", function()
      local good = connect(proxy)
      local bad = connect(proxy)
      good:send("g1 LOGIN slowok good-pw\r\n")
      bad:send("b1 LOGIN boom x\r\n")
      assert.equals("b1 NO [UNAVAILABLE] Temporary authentication failure, try again later", bad:line())
      assert.matches("^g1 OK", good:line())
      local _, untagged = good:command("g2", 'LIST "" *')
      assert.matches("backend%-a", table.concat(untagged, "\n"))
      proxy:wait_log('%[error%].*policy error in authenticate:.*boom')
      proxy:wait_log("stack traceback")
      -- the failing client may try again on the same connection
      assert.matches("^b2 OK", login(bad, "b2", "alice", "after-boom"))
      good:close()
      bad:close()
    end)

    it("includes an invalid return value (a number): NO [UNAVAILABLE] and a log line", function()
      local c = connect(proxy)
      assert.matches("^a1 NO %[UNAVAILABLE%]", login(c, "a1", "number", "x"))
      proxy:wait_log('returned an invalid result.*login: "number"')
      c:close()
    end)

    it("includes an upstream without a port: NO [UNAVAILABLE] and a log line", function()
      local c = connect(proxy)
      assert.matches("^a1 NO %[UNAVAILABLE%]", login(c, "a1", "noport", "x"))
      proxy:wait_log('returned an invalid result: upstream%.port.*login: "noport"')
      c:close()
    end)
  end)

  describe("the postern library inside hooks", function()
    it("postern.sleep does not hold up other sessions (10 sleeping hooks take about 1 s)", function()
      local clients = {}
      for i = 1, 10 do clients[i] = connect(proxy) end
      local t0 = testing.now()
      for i, c in ipairs(clients) do c:send(("n%d LOGIN nap x\r\n"):format(i)) end
      for i, c in ipairs(clients) do
        assert.equals(("n%d NO [AUTHENTICATIONFAILED] rested"):format(i), c:line(8))
      end
      local took = elapsed_since(t0)
      assert.is_true(took >= 0.9, ("10 replies after %.2f s: the hook did not sleep"):format(took))
      assert.is_true(took < 4, ("10 replies after %.2f s: the sleeps ran one after another"):format(took))
      for _, c in ipairs(clients) do c:close() end
    end)

    it("postern.log writes to the proxy log with the session's context", function()
      local c = connect(proxy)
      local _, my_port = c.sock:getsockname()
      assert.equals("a1 NO [AUTHENTICATIONFAILED] logged", login(c, "a1", "logger", "x"))
      local line = proxy:wait_log("hello from the policy, attempt 1")
      assert.matches("%[info%]", line)
      assert.matches("client: 127%.0%.0%.1:" .. my_port, line)
      assert.matches('login: "logger"', line)
      c:close()
    end)

    it("postern.now gives the wall-clock time in seconds, with a fraction", function()
      local c = connect(proxy)
      local reply = login(c, "a1", "clock", "x")
      local t1, t2 = reply:match("^a1 NO %[AUTHENTICATIONFAILED%] clock t1=(%S+) t2=(%S+)$")
      t1, t2 = tonumber(t1), tonumber(t2)
      assert.is_number(t1, reply)
      assert.is_true(math.abs(t1 - os.time()) < 5, ("postern.now() = %s, os.time() = %d"):format(t1, os.time()))
      -- a 0.2 s sleep shows between the two readings: the clock is finer than seconds
      assert.is_true(t2 - t1 >= 0.15 and t2 - t1 < 2, ("t2 - t1 = %.3f"):format(t2 - t1))
      c:close()
    end)
  end)

  describe("on_close", function()
    it("receives the bytes each way, the duration, the upstream and the reason", function()
      local c = connect(proxy)
      assert.matches("^a1 OK", login(c, "a1", "closer", "x"))
      local sent, received = 0, 0
      local function relayed(tag, command)
        sent = sent + #(tag .. " " .. command .. "\r\n")
        local tagged, untagged = c:command(tag, command)
        for _, l in ipairs(untagged) do received = received + #l + 2 end
        received = received + #tagged + 2
        return tagged, untagged
      end
      local _, untagged = relayed("a2", 'LIST "" *')
      assert.matches("backend%-a", table.concat(untagged, "\n"))
      testing.sleep(0.3)
      relayed("a3", "LOGOUT")
      assert.is_true(c:closed(5))
      c:close()
      local line = proxy:wait_log("on_close user=closer ", 5)
      local info = parse_fields(line:match("on_close (.*)$"))
      -- at least what went through the relay after the login
      assert.is_true(tonumber(info.bytes_in) >= sent, ("sent %d; %s"):format(sent, line))
      assert.is_true(tonumber(info.bytes_out) >= received, ("received %d; %s"):format(received, line))
      assert.is_true(tonumber(info.duration) >= 0.25 and tonumber(info.duration) < 10, line)
      assert.equals("127.0.0.1:" .. a.port, info.upstream)
      assert.is_truthy(info.reason and info.reason ~= "nil" and info.reason ~= "", line)
    end)
  end)

  describe("a client that disconnects while its authenticate hook sleeps", function()
    it("ends its session without resuming the hook", function()
      local c = connect(proxy)
      c:send("a1 LOGIN slowpoke x\r\n")
      testing.sleep(0.2)
      c:close()
      proxy:wait_log('session closed.*login: "slowpoke"')
      -- past the hook's 1 s sleep: the coroutine was dropped, not resumed
      testing.sleep(1.3)
      assert.same({}, log_lines_with(proxy, "slowpoke woke up"))
      for _, l in ipairs(a:logins()) do assert.not_equals("slowpoke", l.user) end
      assert.is_true(proxy:alive())
      -- and other clients are still served
      local c2 = connect(proxy)
      assert.matches("^a1 OK", login(c2, "a1", "alice", "still-here"))
      c2:close()
    end)
  end)

  describe("the log at log_level debug", function()
    it("never shows a password, from a good login or a bad one", function()
      local good_pw, bad_pw = "Gd7-k2pX-secret", "Bd9-q4wZ-wrong"
      local c = connect(proxy)
      assert.equals("a1 NO [AUTHENTICATIONFAILED] No entry for you", login(c, "a1", "refused", bad_pw))
      assert.matches("^a2 OK", login(c, "a2", "alice", good_pw))
      a:wait_for("^AUTH alice " .. good_pw:gsub("%-", "%%-") .. " login$")
      c:close()
      local c2 = connect(proxy)
      local ir = mime.b64("\0alice\0" .. good_pw)
      assert.matches("^a1 OK", (c2:command("a1", "AUTHENTICATE PLAIN " .. ir)))
      c2:close()
      proxy:wait_log('client logged in.*login: "alice"')
      local log = proxy:log()
      assert.matches("%[debug%]", log)   -- the proxy really logs at debug level
      assert.is_nil(log:find(good_pw, 1, true))
      assert.is_nil(log:find(bad_pw, 1, true))
      assert.is_nil(log:find(ir, 1, true))
    end)
  end)
end)

describe("proxy_pass_error_message = false", function()
  local proxy

  setup(function()
    proxy = testing.start {
      policy_source = [[
        return { authenticate = function(s)
          if s.user == "temp" then return nil, { message = "Secret maintenance detail", temporary = true } end
          return nil, "Secret reason the user must not see"
        end }
      ]],
      config = { proxy_pass_error_message = false },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
  end)

  it("sends a generic message instead of the policy's", function()
    local c = connect(proxy)
    local reply = login(c, "a1", "bob", "x")
    assert.equals("a1 NO [AUTHENTICATIONFAILED] Authentication failed", reply)
    assert.is_nil(reply:find("Secret", 1, true))
    local reply2 = login(c, "a2", "temp", "x")
    assert.equals("a2 NO [UNAVAILABLE] Temporary authentication failure, try again later", reply2)
    c:close()
  end)
end)

describe("max_login_attempts = 2", function()
  local proxy

  setup(function()
    proxy = testing.start {
      policy_source = [[ return { authenticate = function(s) return nil, "Nope" end } ]],
      config = { max_login_attempts = 2 },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
  end)

  it("closes the connection with * BYE after the second failure", function()
    local c = connect(proxy)
    assert.equals("a1 NO [AUTHENTICATIONFAILED] Nope", login(c, "a1", "bob", "x"))
    assert.equals("a2 NO [AUTHENTICATIONFAILED] Nope", login(c, "a2", "bob", "y"))
    c:expect("^%* BYE ")
    assert.is_true(c:closed(3))
  end)
end)

describe("auth_timeout = 1", function()
  local proxy

  setup(function()
    proxy = testing.start {
      policy_source = [[
        local postern = require "postern"
        return { authenticate = function(s)
          postern.sleep(5)
          postern.log("info", "the late hook went on")
          return nil, "too late"
        end }
      ]],
      config = { auth_timeout = 1 },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
  end)

  it("answers NO [UNAVAILABLE] when the hook runs longer, and logs it", function()
    local c = connect(proxy)
    local t0 = testing.now()
    local reply = login(c, "a1", "bob", "x", 6)
    local took = elapsed_since(t0)
    assert.equals("a1 NO [UNAVAILABLE] Temporary authentication failure, try again later", reply)
    assert.is_true(took >= 0.9 and took < 3, ("the reply came after %.2f s"):format(took))
    proxy:wait_log('policy hook timed out.*login: "bob"')
    -- the connection is still usable
    assert.matches("^a2 OK", (c:command("a2", "NOOP")))
    c:close()
  end)
end)

describe("on_connect", function()
  describe("returning false and a reason", function()
    local proxy

    setup(function()
      proxy = testing.start {
        policy_source = [[
          return {
            on_connect = function(s) return false, "go away" end,
            authenticate = function(s) return nil, "unreachable" end,
          }
        ]],
      }
    end)

    teardown(function()
      if proxy then proxy:stop() end
    end)

    it("sends * BYE with the reason instead of the greeting and closes", function()
      local c = testing.client { port = proxy.port }
      assert.equals("* BYE go away", c:line())
      assert.is_true(c:closed(3))
    end)
  end)

  describe("returning an upstream", function()
    local spliced, proxy

    setup(function()
      spliced = testing.mock_imap { name = "backend-raw" }
      proxy = testing.start {
        policy_source = ([[
          return {
            on_connect = function(s) return { host = "127.0.0.1", port = %d } end,
            authenticate = function(s) return nil, "authenticate must not run" end,
          }
        ]]):format(spliced.port),
      }
    end)

    teardown(function()
      if proxy then proxy:stop() end
      if spliced then spliced:stop() end
    end)

    it("splices the raw connection: the client talks to the backend itself", function()
      local c = testing.client { port = proxy.port }
      assert.matches("^%* OK %[CAPABILITY [^%]]*%] backend%-raw ready$", c:line())
      assert.matches("^a1 OK", login(c, "a1", "carol", "carol-pw"))
      -- the backend got the client's own command, not a login postern made up
      spliced:wait_for("^%d+ a1 LOGIN carol carol%-pw$")
      local _, untagged = c:command("a2", 'LIST "" *')
      assert.matches("backend%-raw", table.concat(untagged, "\n"))
      c:close()
    end)
  end)
end)
