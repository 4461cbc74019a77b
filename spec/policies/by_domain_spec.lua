-- scripts/by_domain.lua: user@domain to the domain's pool, the same
-- upstream for the same user (consistent hashing), the rest of the pool
-- behind it for failover. First the hooks called directly with fabricated
-- sessions, then the real binary with two mock backends.
local testing = require "postern.testing"

local SCRIPT = testing.root .. "/scripts/by_domain.lua"

local function session(user, protocol, password)
  return { client_ip = "192.0.2.10", protocol = protocol or "imap", user = user,
           password = password or "secret", mechanism = "plain", login_attempt = 1, vars = {} }
end

local function member(name, n, weight)
  return { name = name, host = "10.0.1." .. n, port = 143, weight = weight }
end

local function configured()
  local policy = dofile(SCRIPT)
  policy.pools = {
    eu = { member("eu1", 1), member("eu2", 2), member("eu3", 3) },
    us = {
      { name = "us1", imap = { host = "10.0.2.1", port = 143 }, pop3 = { host = "10.0.2.1", port = 110 } },
      { name = "us2", imap = { host = "10.0.2.2", port = 143 }, pop3 = { host = "10.0.2.2", port = 110 } },
    },
    catchall = { member("spare", 9) },
  }
  policy.domains = { ["example.com"] = "eu", ["example.org"] = "eu", ["example.net"] = "us" }
  policy.default_pool = "catchall"
  policy.default_domain = "example.com"
  return policy
end

-- the name of the first upstream chosen for user
local function first(policy, user, protocol)
  local up, refusal = policy.authenticate(session(user, protocol))
  assert(up, refusal and (refusal.message or refusal))
  return up[1].name
end

local function users(n, domain)
  local out = {}
  for i = 1, n do out[i] = ("user%d@%s"):format(i, domain or "example.com") end
  return out
end

describe("scripts/by_domain.lua", function()
  describe("authenticate, called directly", function()
    local policy
    before_each(function() policy = configured() end)

    it("returns the whole pool, the user's own upstream first, without `weight`", function()
      policy.pools.eu[2].weight = 2
      local up, refusal = policy.authenticate(session("alice@example.com"))
      assert.is_nil(refusal)
      assert.equals(3, #up)
      local names = {}
      for _, u in ipairs(up) do
        names[u.name] = true
        assert.is_nil(u.weight)
        assert.equals(143, u.port)
        assert.matches("^10%.0%.1%.%d$", u.host)
      end
      assert.same({ eu1 = true, eu2 = true, eu3 = true }, names)
    end)

    it("sends the same user to the same upstream every time", function()
      local chosen = first(policy, "alice@example.com")
      for _ = 1, 20 do
        assert.equals(chosen, first(policy, "alice@example.com"))
      end
      -- and from a freshly loaded copy of the policy (another process, a reload)
      assert.equals(chosen, first(configured(), "alice@example.com"))
    end)

    it("ignores the case of the address", function()
      for _, u in ipairs(users(200)) do
        assert.equals(first(policy, u), first(policy, u:upper()))
      end
    end)

    it("spreads users over the pool's upstreams", function()
      local count = {}
      for _, u in ipairs(users(3000)) do
        local n = first(policy, u)
        count[n] = (count[n] or 0) + 1
      end
      for _, n in ipairs { "eu1", "eu2", "eu3" } do
        local share = (count[n] or 0) / 3000
        assert.is_true(share > 0.25 and share < 0.42, n .. ": " .. share)
      end
    end)

    it("gives an upstream of weight 2 about twice the users", function()
      policy.pools.eu[3].weight = 2
      local count = {}
      for _, u in ipairs(users(4000)) do
        local n = first(policy, u)
        count[n] = (count[n] or 0) + 1
      end
      local share = count.eu3 / 4000
      assert.is_true(share > 0.42 and share < 0.58, "eu3: " .. share)
    end)

    it("moves only the users of a removed upstream, to the next in their sequence", function()
      local before = {}
      local seqs = {}
      for _, u in ipairs(users(3000)) do
        local up = policy.authenticate(session(u))
        before[u], seqs[u] = up[1].name, up
      end
      policy.pools = { eu = { member("eu1", 1), member("eu3", 3) }, catchall = policy.pools.catchall }
      local moved = 0
      for _, u in ipairs(users(3000)) do
        local now = first(policy, u)
        if before[u] == "eu2" then
          moved = moved + 1
          assert.equals(seqs[u][2].name, now, u)          -- where failover sent them
        else
          assert.equals(before[u], now, u)                -- everybody else stays
        end
      end
      assert.is_true(moved > 600 and moved < 1400, "moved " .. moved)
    end)

    it("adding an upstream moves users only to it, about 1/4 of them", function()
      local before = {}
      for _, u in ipairs(users(3000)) do before[u] = first(policy, u) end
      policy.pools = { eu = { member("eu1", 1), member("eu2", 2), member("eu3", 3), member("eu4", 4) } }
      local moved = 0
      for _, u in ipairs(users(3000)) do
        local now = first(policy, u)
        if now ~= before[u] then
          moved = moved + 1
          assert.equals("eu4", now)
        end
      end
      assert.is_true(moved > 500 and moved < 1000, "moved " .. moved)
    end)

    it("routes each domain to its own pool", function()
      assert.matches("^eu%d$", first(policy, "alice@example.org"))
      assert.matches("^us%d$", first(policy, "alice@example.net"))
      assert.matches("^eu%d$", first(policy, "alice@EXAMPLE.COM"))
    end)

    it("sends the same user to the same server for every protocol of a per-protocol pool", function()
      for _, u in ipairs(users(100, "example.net")) do
        local imap = policy.authenticate(session(u, "imap"))
        local pop3 = policy.authenticate(session(u, "pop3"))
        assert.equals(143, imap[1].port)
        assert.equals(110, pop3[1].port)
        assert.equals(imap[1].host, pop3[1].host)
        assert.equals(imap[1].name, pop3[1].name)
        assert.equals(2, #imap)
      end
    end)

    it("raises a configuration error for a pool without the session's protocol", function()
      assert.has_error(function() policy.authenticate(session("bob@example.net", "smtp")) end,
        'by_domain: pool "us" has no upstream for smtp')
    end)

    it("sends an unknown domain to the default pool", function()
      local up = policy.authenticate(session("alice@elsewhere.test"))
      assert.same({ { name = "spare", host = "10.0.1.9", port = 143 } }, up)
    end)

    it("refuses an unknown domain when there is no default pool", function()
      policy.default_pool = nil
      policy.fail_wait = 0.5
      local up, refusal = policy.authenticate(session("alice@elsewhere.test"))
      assert.is_nil(up)
      assert.same({ message = "Unknown domain", wait = 0.5 }, refusal)
    end)

    it("takes a user without @ as a user of default_domain", function()
      for _, u in ipairs { "alice", "bob", "carol", "dave" } do
        assert.equals(first(policy, u .. "@example.com"), first(policy, u))
      end
    end)

    it("treats a user without @ as an unknown domain when default_domain is nil", function()
      policy.default_domain = nil
      assert.equals("spare", first(policy, "alice"))
      policy.default_pool = nil
      local up, refusal = policy.authenticate(session("alice"))
      assert.is_nil(up)
      assert.equals("Unknown domain", refusal.message)
    end)

    it("refuses a session without a user name", function()
      local up, refusal = policy.authenticate(session(nil))
      assert.is_nil(up)
      assert.equals("Unknown domain", refusal.message)
      assert.is_nil((policy.authenticate(session(""))))
    end)

    it("routes SMTP without authentication by the first recipient", function()
      policy.pools.eu = { { name = "mx1", smtp = { host = "10.0.3.1", port = 25 } } }
      local s = session(nil, "smtp")
      s.password, s.mechanism, s.rcpt_to = nil, "none", { "bob@example.com", "x@example.net" }
      assert.same({ { name = "mx1", host = "10.0.3.1", port = 25 } }, policy.authenticate(s))
    end)

    it("policy.route gives the upstreams of an address without a session", function()
      local up = policy.route("alice@example.com", "imap")
      assert.equals(first(policy, "alice@example.com"), up[1].name)
      assert.equals(3, #up)
    end)

    it("raises a configuration error for a domain naming an unknown pool", function()
      policy.domains["example.com"] = "nope"
      assert.has_error(function() policy.authenticate(session("alice@example.com")) end,
        'by_domain: no pool named "nope" in policy.pools')
    end)

    it("raises a configuration error for duplicate names in a pool", function()
      policy.pools.eu = { member("x", 1), member("x", 2) }
      local ok, err = pcall(policy.authenticate, session("alice@example.com"))
      assert.is_false(ok)
      assert.matches('pool "eu": .*name "x" is used twice', err)
    end)

    it("raises a configuration error for a per-protocol member without a name", function()
      policy.pools.eu = { { imap = { host = "10.0.0.1", port = 143 } } }
      local ok, err = pcall(policy.authenticate, session("alice@example.com"))
      assert.is_false(ok)
      assert.matches("needs a name", err)
    end)

    it("names a member (and its upstream) host:port when it has no name", function()
      policy.pools.eu = { { host = "10.0.1.1", port = 143 }, { host = "10.0.1.2", port = 143 } }
      local up = policy.authenticate(session("alice@example.com"))
      assert.equals(2, #up)
      assert.matches("^10%.0%.1%.[12]:143$", up[1].name)
      assert.not_equals(up[1].name, up[2].name)
    end)

    describe("composed with another policy in policy.auth", function()
      it("routes once the inner policy accepts and passes its refusal on", function()
        policy.auth = dofile(testing.root .. "/scripts/static_users.lua")
        policy.auth.fail_wait = 0
        policy.default_pool = "catchall"
        local up = policy.authenticate(session("demo", "imap", "demo"))
        assert.matches("^eu%d$", up[1].name)
        local none, refusal = policy.authenticate(session("demo", "imap", "wrong"))
        assert.is_nil(none)
        assert.same({ message = "Invalid login or password", wait = 0 }, refusal)
      end)

      it("accepts a plain function as policy.auth", function()
        policy.auth = function(s) return s.password == "secret" end
        assert.is_table(policy.authenticate(session("alice@example.com")))
        local up, refusal = policy.authenticate(session("alice@example.com", "imap", "nope"))
        assert.is_nil(up)
        assert.equals("Invalid login or password", refusal)
      end)
    end)

    it("ships a configuration that sends example.com to the demo backends", function()
      local shipped = dofile(SCRIPT)
      assert.same({ { name = "demo", host = "127.0.0.1", port = 1144 } },
        (shipped.authenticate(session("demo"))))   -- the imap part, named after its member
      assert.same({ { name = "demo", host = "127.0.0.1", port = 1145 } },
        shipped.authenticate(session("bob@example.com", "pop3")))
      assert.is_nil((shipped.authenticate(session("bob@example.org"))))
    end)
  end)

  describe("through postern", function()
    local a, b, proxy
    local pools_source = [[
      { p = { { name = "a", host = "127.0.0.1", port = %d },
              { name = "b", host = "127.0.0.1", port = %d } } }
    ]]
    -- users whose own backend is a, and b (the placement depends on the
    -- names only, so it can be computed here without the ports)
    local user_of = {}

    setup(function()
      local local_policy = dofile(SCRIPT)
      local_policy.pools = { p = { { name = "a", host = "x", port = 1 }, { name = "b", host = "x", port = 2 } } }
      local_policy.domains = { ["example.com"] = "p" }
      for i = 1, 100 do
        local u = ("user%d@example.com"):format(i)
        local n = local_policy.route(u, "imap")[1].name
        user_of[n] = user_of[n] or u
      end
      assert(user_of.a and user_of.b)

      a = testing.mock_imap { name = "backend-a" }
      b = testing.mock_imap { name = "backend-b" }
      proxy = testing.start {
        policy_source = ([[
          local policy = dofile(%q)
          policy.pools = ]] .. pools_source .. [[
          policy.domains = { ["example.com"] = "p" }
          policy.default_pool = nil
          policy.fail_wait = 0
          return policy
        ]]):format(SCRIPT, a.port, b.port),
        config = { connect_timeout = 2 },
      }
    end)

    teardown(function()
      if proxy then proxy:stop() end
      if a then a:stop() end
      if b then b:stop() end
    end)

    local function login(user)
      local c = testing.client { port = proxy.port }
      c:expect("^%* OK")
      return c, c:command("a1", ("LOGIN %s pw"):format(user))
    end

    local function mailbox_list(c)
      local _, untagged = c:command("a2", 'LIST "" *')
      return table.concat(untagged, "\n")
    end

    it("lands each user on the backend the ring gives them", function()
      local c, tagged = login(user_of.a)
      assert.matches("^a1 OK", tagged)
      assert.matches("backend%-a", mailbox_list(c))
      a:wait_for("^AUTH " .. user_of.a:gsub("%p", "%%%0") .. " pw login$")
      c:close()
      c, tagged = login(user_of.b)
      assert.matches("^a1 OK", tagged)
      assert.matches("backend%-b", mailbox_list(c))
      b:wait_for("^AUTH " .. user_of.b:gsub("%p", "%%%0") .. " pw login$")
      c:close()
    end)

    it("lands the same user on the same backend again", function()
      for _ = 1, 3 do
        local c, tagged = login(user_of.b)
        assert.matches("^a1 OK", tagged)
        assert.matches("backend%-b", mailbox_list(c))
        c:close()
      end
    end)

    it("refuses a domain that has no pool", function()
      local c, tagged = login("carol@elsewhere.test")
      assert.equals("a1 NO [AUTHENTICATIONFAILED] Unknown domain", tagged)
      c:close()
    end)

    it("fails over to the next backend when the user's own is stopped", function()
      a:stop()
      local c, tagged = login(user_of.a)
      assert.matches("^a1 OK", tagged)
      assert.matches("backend%-b", mailbox_list(c))
      b:wait_for("^AUTH " .. user_of.a:gsub("%p", "%%%0") .. " pw login$")
      proxy:wait_log("connect%(%) to upstream failed %(ECONNREFUSED%)")
      c:close()
      -- b's own users are not disturbed
      c, tagged = login(user_of.b)
      assert.matches("^a1 OK", tagged)
      assert.matches("backend%-b", mailbox_list(c))
      c:close()
    end)
  end)
end)
