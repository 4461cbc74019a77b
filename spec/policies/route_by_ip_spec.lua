-- scripts/route_by_ip.lua: client networks to upstream pools. First its
-- authenticate hook called directly with fabricated sessions, then the
-- real binary with clients bound to 127.0.0.2 / 127.0.0.3 / 127.0.0.4 (all
-- of 127.0.0.0/8 is loopback), where a thin wrapper logs the s.client_ip
-- the policy was given, so each test also shows that s.client_ip is the
-- client's own source address and that a policy's log line carries the
-- session's context.
local testing = require "postern.testing"

local SCRIPT = testing.root .. "/scripts/route_by_ip.lua"

local A1 = { host = "10.0.1.1", port = 143 }
local A2 = { host = "10.0.1.2", port = 143 }
local B_IMAP = { host = "10.0.2.1", port = 143 }
local B_POP3 = { host = "10.0.2.1", port = 110 }
local B_SMTP = { host = "10.0.2.1", port = 587 }
local D = { host = "10.0.9.9", port = 143 }

local function session(client_ip, protocol, user, password)
  return { client_ip = client_ip, protocol = protocol or "imap", user = user or "alice",
           password = password or "secret", mechanism = "plain", login_attempt = 1, vars = {} }
end

-- a fresh copy of the policy, configured like a user would
local function configured()
  local policy = dofile(SCRIPT)
  policy.networks = {
    { "10.0.0.0/8", "a" },
    { "10.99.0.0/16", "b" },            -- more specific than 10.0.0.0/8
    { "192.168.0.0/16", "b" },
    { "2001:db8:1::/48", "a" },
  }
  policy.pools = {
    a = { A1, A2 },
    b = { imap = B_IMAP, pop3 = B_POP3, smtp = B_SMTP },
    d = D,
  }
  policy.default_pool = "d"
  return policy
end

describe("scripts/route_by_ip.lua", function()
  describe("authenticate, called directly", function()
    local policy
    before_each(function() policy = configured() end)

    it("sends a client of 10.0.0.0/8 to pool a, the whole pool in failover order", function()
      local up, refusal = policy.authenticate(session("10.1.2.3"))
      assert.is_nil(refusal)
      assert.same({ A1, A2 }, up)
      assert.equals(A1, up[1])
    end)

    it("picks the most specific network whatever the order of the list", function()
      assert.same({ B_IMAP }, policy.authenticate(session("10.99.7.7")))
      assert.same({ A1, A2 }, policy.authenticate(session("10.98.7.7")))
    end)

    it("gives a per-protocol pool's upstream for the session's protocol", function()
      assert.same({ B_IMAP }, policy.authenticate(session("192.168.1.10", "imap")))
      assert.same({ B_POP3 }, policy.authenticate(session("192.168.1.10", "pop3")))
      assert.same({ B_SMTP }, policy.authenticate(session("192.168.1.10", "smtp")))
    end)

    it("routes IPv6 clients, and IPv4-mapped clients as IPv4", function()
      assert.same({ A1, A2 }, policy.authenticate(session("2001:db8:1:2::5")))
      assert.same({ B_IMAP }, policy.authenticate(session("::ffff:192.168.3.4")))
      assert.same({ D }, policy.authenticate(session("2001:db8:2::5")))
    end)

    it("sends clients of no listed network to the default pool", function()
      assert.same({ D }, policy.authenticate(session("172.16.0.1")))
      assert.same({ D }, policy.authenticate(session("::1")))
    end)

    it("refuses clients of no listed network when there is no default pool", function()
      policy.default_pool = nil
      policy.fail_wait = 0.5
      local up, refusal = policy.authenticate(session("172.16.0.1"))
      assert.is_nil(up)
      assert.same({ message = "Not allowed from your network", wait = 0.5 }, refusal)
      policy.refuse_message = "Go away"
      assert.equals("Go away", select(2, policy.authenticate(session("172.16.0.1"))).message)
    end)

    it("does not check the password: the upstream does", function()
      assert.same({ A1, A2 }, policy.authenticate(session("10.1.2.3", "imap", "anyone", "any-password")))
      local s = session("10.1.2.3")
      s.password = nil               -- CRAM-MD5: no cleartext at all
      assert.same({ A1, A2 }, policy.authenticate(s))
    end)

    it("follows a new networks table assigned after the first login", function()
      assert.same({ A1, A2 }, policy.authenticate(session("10.1.2.3")))
      policy.networks = { { "10.1.0.0/16", "d" } }
      assert.same({ D }, policy.authenticate(session("10.1.2.3")))
      assert.same({ D }, policy.authenticate(session("192.168.0.1")))   -- the default
    end)

    it("tells which pool a client address belongs to", function()
      assert.same({ "b", "10.99.0.0/16" }, { policy.pool_for("10.99.1.1") })
      assert.is_nil(policy.pool_for("172.16.0.1"))
    end)

    it("flattens lists of per-protocol servers, skipping those without the protocol", function()
      policy.pools.a = {
        { imap = { host = "10.0.1.1", port = 143 }, pop3 = { host = "10.0.1.1", port = 110 } },
        { imap = { host = "10.0.1.2", port = 143 } },
      }
      assert.same({ { host = "10.0.1.1", port = 143 }, { host = "10.0.1.2", port = 143 } },
        policy.authenticate(session("10.1.1.1", "imap")))
      assert.same({ { host = "10.0.1.1", port = 110 } }, policy.authenticate(session("10.1.1.1", "pop3")))
    end)

    it("raises a configuration error for a network naming an unknown pool", function()
      policy.networks = { { "10.0.0.0/8", "nope" } }
      assert.has_error(function() policy.authenticate(session("10.1.2.3")) end,
        'route_by_ip: networks[1] (10.0.0.0/8): no pool named "nope" in policy.pools')
    end)

    it("raises a configuration error for an invalid network", function()
      policy.networks = { { "10.0.0.0/8", "a" }, { "10.0.0.0/40", "a" } }
      local ok, err = pcall(policy.authenticate, session("10.1.2.3"))
      assert.is_false(ok)
      assert.matches("entry 2: prefix length out of range", err)
    end)

    it("raises a configuration error for a pool without the session's protocol", function()
      assert.has_error(function() policy.authenticate(session("192.168.1.1", "lmtp")) end,
        'route_by_ip: pool "b" has no upstream for lmtp')
    end)

    it("raises a configuration error for an unknown default pool", function()
      policy.default_pool = "missing"
      assert.has_error(function() policy.authenticate(session("172.16.0.1")) end,
        'route_by_ip: no pool named "missing" in policy.pools')
    end)

    describe("composed with another policy in policy.auth", function()
      local inner_calls
      before_each(function()
        inner_calls = {}
        policy.auth = {
          authenticate = function(s)
            inner_calls[#inner_calls + 1] = s.user
            if s.password == "secret" then
              return { host = "192.0.2.99", port = 1 }     -- ignored: the route is ours
            end
            return nil, { message = "Invalid login or password", wait = 2 }
          end,
        }
      end)

      it("routes by network once the inner policy accepts", function()
        assert.same({ A1, A2 }, policy.authenticate(session("10.1.2.3", "imap", "alice", "secret")))
        assert.same({ "alice" }, inner_calls)
      end)

      it("passes the inner policy's refusal to the client as it is", function()
        local up, refusal = policy.authenticate(session("10.1.2.3", "imap", "alice", "wrong"))
        assert.is_nil(up)
        assert.same({ message = "Invalid login or password", wait = 2 }, refusal)
      end)

      it("accepts a plain function as policy.auth", function()
        policy.auth = function(s) return s.user == "bob" end
        assert.same({ D }, policy.authenticate(session("172.16.0.1", "imap", "bob")))
        local up, refusal = policy.authenticate(session("172.16.0.1", "imap", "eve"))
        assert.is_nil(up)
        assert.equals("Invalid login or password", refusal)
      end)

      it("composes with the shipped static_users.lua", function()
        policy.auth = dofile(testing.root .. "/scripts/static_users.lua")
        policy.auth.fail_wait = 0
        assert.same({ A1, A2 }, policy.authenticate(session("10.1.2.3", "imap", "demo", "demo")))
        local up, refusal = policy.authenticate(session("10.1.2.3", "imap", "demo", "wrong"))
        assert.is_nil(up)
        assert.equals("Invalid login or password", refusal.message)
      end)
    end)

    it("ships a configuration that sends loopback clients to the demo backends", function()
      local shipped = dofile(SCRIPT)
      assert.same({ { host = "127.0.0.1", port = 1144 } }, shipped.authenticate(session("127.0.0.1", "imap")))
      assert.same({ { host = "127.0.0.1", port = 1145 } }, shipped.authenticate(session("::1", "pop3")))
      assert.is_nil(shipped.default_pool)
      assert.is_nil((shipped.authenticate(session("192.0.2.1"))))
    end)
  end)

  describe("through postern", function()
    local a, b, b_pop3, proxy

    setup(function()
      a = testing.mock_imap { name = "backend-a" }
      b = testing.mock_imap { name = "backend-b", users = { bob = "bob-pw" } }
      b_pop3 = testing.mock_pop3 { name = "pop-b" }
      local dead = testing.free_port()       -- nothing listens there
      proxy = testing.start {
        policy_source = ([[
          local policy = dofile(%q)
          policy.networks = {
            { "127.0.0.2/32", "pool_a" },
            { "127.0.0.3/32", "pool_b" },
          }
          policy.pools = {
            -- the first of pool_a is down: postern fails over to backend-a
            pool_a = { { host = "127.0.0.1", port = %d }, { host = "127.0.0.1", port = %d } },
            pool_b = { imap = { host = "127.0.0.1", port = %d }, pop3 = { host = "127.0.0.1", port = %d } },
          }
          policy.default_pool = nil
          policy.fail_wait = 0
          local postern = require "postern"
          local authenticate = policy.authenticate
          policy.authenticate = function(s)
            postern.log("info", "routing by client_ip=[", s.client_ip, "]")
            return authenticate(s)
          end
          return policy
        ]]):format(SCRIPT, dead, a.port, b.port, b_pop3.port),
        config = {
          connect_timeout = 2,
          listen = { { protocol = "imap" }, { protocol = "pop3" } },
        },
      }
    end)

    teardown(function()
      if proxy then proxy:stop() end
      if a then a:stop() end
      if b then b:stop() end
      if b_pop3 then b_pop3:stop() end
    end)

    local function login_from(bind, user, pass)
      local c = testing.client { port = proxy.port, bind = bind }
      c:expect("^%* OK")
      return c, c:command("a1", ("LOGIN %s %s"):format(user, pass))
    end

    it("lands a client from 127.0.0.2 on backend-a (after the dead first of its pool)", function()
      local c, tagged = login_from("127.0.0.2", "ann", "ann-pw")
      assert.matches("^a1 OK", tagged)
      a:wait_for("^AUTH ann ann%-pw login$")
      proxy:wait_log("connect%(%) to upstream failed %(ECONNREFUSED%)")
      local _, untagged = c:command("a2", 'LIST "" *')
      local list = table.concat(untagged, "\n")
      assert.matches("backend%-a", list)
      assert.not_matches("backend%-b", list)
      for _, l in ipairs(b:logins()) do assert.not_equals("ann", l.user) end
      local line = proxy:wait_log('routing by client_ip=%[127%.0%.0%.2%].*login: "ann"')
      assert.matches("client: 127%.0%.0%.2:%d+", line)
      c:close()
    end)

    it("lands a client from 127.0.0.3 on backend-b", function()
      local c, tagged = login_from("127.0.0.3", "bob", "bob-pw")
      assert.matches("^a1 OK", tagged)
      b:wait_for("^AUTH bob bob%-pw login$")
      local _, untagged = c:command("a2", 'LIST "" *')
      local list = table.concat(untagged, "\n")
      assert.matches("backend%-b", list)
      assert.not_matches("backend%-a", list)
      for _, l in ipairs(a:logins()) do assert.not_equals("bob", l.user) end
      proxy:wait_log('routing by client_ip=%[127%.0%.0%.3%].*login: "bob"')
      c:close()
    end)

    it("lands a POP3 client from 127.0.0.3 on pool_b's POP3 upstream", function()
      local c = testing.client { port = proxy.ports[2], bind = "127.0.0.3" }
      assert.matches("^%+OK", c:pop3())
      assert.matches("^%+OK", c:pop3("USER pat"))
      assert.matches("^%+OK", c:pop3("PASS pat-pw"))
      b_pop3:wait_for("^AUTH pat pat%-pw user$")
      local _, lines = c:pop3_multi("RETR 1")
      assert.matches("pop%-b", table.concat(lines, "\n"))
      c:pop3("QUIT")
      assert.is_true(c:closed(2))
    end)

    it("passes the upstream's refusal of a wrong password to the client", function()
      local c, tagged = login_from("127.0.0.3", "bob", "wrong")
      assert.matches("^a1 NO ", tagged)
      assert.is_false(c:closed(0.2))
      c:close()
    end)

    it("refuses a client from a network with no pool and no default, given s.client_ip as its own source address", function()
      local c, tagged = login_from("127.0.0.4", "cat", "cat-pw")
      assert.equals("a1 NO [AUTHENTICATIONFAILED] Not allowed from your network", tagged)
      proxy:wait_log('routing by client_ip=%[127%.0%.0%.4%].*login: "cat"')
      c:close()
      for _, l in ipairs(a:logins()) do assert.not_equals("cat", l.user) end
      for _, l in ipairs(b:logins()) do assert.not_equals("cat", l.user) end
    end)
  end)
end)
