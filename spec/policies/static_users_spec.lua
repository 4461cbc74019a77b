-- scripts/static_users.lua, the default policy: a users file with hashed
-- passwords (postern.users, specified in spec/unit/users_spec.lua), users
-- routed to named upstreams. First its authenticate hook called directly
-- with fabricated session tables (no proxy, no sockets), then end to end:
-- the real binary, the shipped users file, and the upstream replaced by a
-- mock.
local testing = require "postern.testing"

local users = require "postern.users"

local SCRIPT = "scripts/static_users.lua"

local tmpfiles = {}

local function write_file(content)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(content)
  f:close()
  tmpfiles[#tmpfiles + 1] = path
  return path
end

-- a fresh policy table for every test (dofile, not require: no caching)
local function fresh_policy()
  return dofile(SCRIPT)
end

describe("scripts/static_users.lua", function()
  describe("authenticate, called directly", function()
    local policy

    before_each(function()
      policy = fresh_policy()
    end)

    teardown(function()
      for _, p in ipairs(tmpfiles) do
        os.remove(p)
      end
    end)

    it("ships the users.txt next to the script and a demo upstream", function()
      assert.are.equal("scripts/users.txt", policy.users_file)
      assert.are.same({
        imap = { host = "127.0.0.1", port = 1144 },
        pop3 = { host = "127.0.0.1", port = 1145 },
        smtp = { host = "127.0.0.1", port = 1146 },
        sieve = { host = "127.0.0.1", port = 1147 },
      }, policy.upstreams.demo)
      assert.are.equal("demo", policy.default_upstream)
      assert.are.equal(1, policy.fail_wait)
      assert.is_function(policy.authenticate)
    end)

    it("loads the users file lazily, on the first login", function()
      assert.is_nil(policy.db)
      policy.authenticate({ user = "demo", password = "demo", protocol = "imap" })
      assert.is_not_nil(policy.db)
      assert.are.equal("demo", policy.db:lookup("demo").upstream)
    end)

    it("routes demo/demo (SHA512-CRYPT) to the demo upstream", function()
      local upstream, refusal = policy.authenticate({ user = "demo", password = "demo", protocol = "imap" })
      assert.is_nil(refusal)
      assert.are.same({ host = "127.0.0.1", port = 1144 }, upstream)
      assert.are.equal(policy.upstreams.demo.imap, upstream)
    end)

    it("picks the demo upstream's entry for the session's protocol", function()
      assert.are.same({ host = "127.0.0.1", port = 1145 },
        (policy.authenticate({ user = "demo", password = "demo", protocol = "pop3" })))
      assert.are.same({ host = "127.0.0.1", port = 1146 },
        (policy.authenticate({ user = "demo", password = "demo", protocol = "smtp" })))
      assert.are.same({ host = "127.0.0.1", port = 1147 },
        (policy.authenticate({ user = "demo", password = "demo", protocol = "sieve" })))
    end)

    it("routes bob/bob (bcrypt) to the demo upstream", function()
      assert.are.equal("$2b$", users.load("scripts/users.txt"):lookup("bob").hash:sub(1, 4))
      local upstream = policy.authenticate({ user = "bob", password = "bob", protocol = "imap" })
      assert.are.same({ host = "127.0.0.1", port = 1144 }, upstream)
    end)

    it("refuses a wrong password with a message and a wait", function()
      local upstream, refusal = policy.authenticate({ user = "demo", password = "wrong" })
      assert.is_nil(upstream)
      assert.are.same({ message = "Invalid login or password", wait = 1 }, refusal)
    end)

    it("refuses an unknown user the same way as a wrong password", function()
      local upstream, refusal = policy.authenticate({ user = "nobody", password = "demo" })
      assert.is_nil(upstream)
      assert.are.same({ message = "Invalid login or password", wait = 1 }, refusal)
    end)

    it("refuses a session without a cleartext password (CRAM-MD5, APOP)", function()
      local upstream, refusal = policy.authenticate({
        user = "demo", mechanism = "cram-md5", salt = "<1.2@x>", digest = "00",
      })
      assert.is_nil(upstream)
      assert.are.same({ message = "Invalid login or password", wait = 1 }, refusal)
    end)

    it("refuses a PLAIN login that asks to act as another user (authzid, RFC 4616), accepts authzid = user", function()
      local upstream, refusal = policy.authenticate({ user = "demo", password = "demo", authzid = "bob" })
      assert.is_nil(upstream)
      assert.are.same({ message = "Invalid login or password", wait = 1 }, refusal)
      assert.is_table((policy.authenticate({ user = "demo", password = "demo", authzid = "demo", protocol = "imap" })))
      assert.is_table((policy.authenticate({ user = "demo", password = "demo", authzid = "", protocol = "imap" })))
    end)

    it("refuses a session without a user name", function()
      local upstream, refusal = policy.authenticate({ password = "demo" })
      assert.is_nil(upstream)
      assert.are.equal("Invalid login or password", refusal.message)
    end)

    it("uses fail_wait and fail_message in refusals", function()
      policy.fail_wait = 3
      policy.fail_message = "Go away"
      local upstream, refusal = policy.authenticate({ user = "demo", password = "x" })
      assert.is_nil(upstream)
      assert.are.same({ message = "Go away", wait = 3 }, refusal)
    end)

    it("uses an overridden users_file and upstreams", function()
      policy.users_file = write_file(table.concat({
        "carol:" .. users.hash("c-pass") .. ":imap2",
        "dave:" .. users.hash("d-pass"),
      }, "\n") .. "\n")
      policy.upstreams = {
        imap1 = { host = "10.0.0.5", port = 143 },
        imap2 = { host = "10.0.0.6", port = 993, tls = "on" },
      }
      policy.default_upstream = "imap1"

      assert.are.same({ host = "10.0.0.6", port = 993, tls = "on" },
        (policy.authenticate({ user = "carol", password = "c-pass" })))
      assert.are.same({ host = "10.0.0.5", port = 143 },
        (policy.authenticate({ user = "dave", password = "d-pass" })))
      -- the shipped demo user is not in the new file
      local upstream, refusal = policy.authenticate({ user = "demo", password = "demo" })
      assert.is_nil(upstream)
      assert.are.equal("Invalid login or password", refusal.message)
    end)

    it("reloads when users_file changes after the first login", function()
      assert.is_not_nil((policy.authenticate({ user = "demo", password = "demo", protocol = "imap" })))
      policy.users_file = write_file("erin:" .. users.hash("e-pass") .. ":demo\n")
      assert.are.same({ host = "127.0.0.1", port = 1144 },
        (policy.authenticate({ user = "erin", password = "e-pass", protocol = "imap" })))
      assert.is_nil((policy.authenticate({ user = "demo", password = "demo" })))
    end)

    it("uses a db a wrapper sets instead of loading users_file", function()
      policy.db = users.load(write_file("frank:" .. users.hash("f-pass") .. "\n"))
      assert.are.same({ host = "127.0.0.1", port = 1144 },
        (policy.authenticate({ user = "frank", password = "f-pass", protocol = "imap" })))
      assert.is_nil((policy.authenticate({ user = "demo", password = "demo" })))
    end)

    it("throws when a user's upstream name is unknown", function()
      policy.users_file = write_file("gina:" .. users.hash("g-pass") .. ":nowhere\n")
      local ok, err = pcall(policy.authenticate, { user = "gina", password = "g-pass" })
      assert.is_false(ok)
      assert.matches('no upstream named "nowhere"', err, 1, true)
    end)

    it("throws when the users file is missing", function()
      policy.users_file = "/nonexistent/users.txt"
      local ok, err = pcall(policy.authenticate, { user = "demo", password = "demo" })
      assert.is_false(ok)
      assert.matches("cannot open users file: /nonexistent/users.txt", err, 1, true)
    end)

    describe("with the postern C module present", function()
      local saved, lines

      before_each(function()
        saved = package.loaded.postern
        lines = {}
        package.loaded.postern = {
          log = function(level, ...)
            lines[#lines + 1] = level .. " " .. table.concat({ ... })
          end,
        }
        policy = fresh_policy()
      end)

      after_each(function()
        package.loaded.postern = saved
      end)

      it("logs failed logins with the user name but never the password", function()
        policy.authenticate({ user = "demo", password = "hunter2-secret" })
        local text = table.concat(lines, "\n")
        assert.matches("login failed for demo", text, 1, true)
        assert.is_nil(text:find("hunter2-secret", 1, true))
      end)

      it("keeps control characters of user names out of log lines", function()
        policy.authenticate({ user = "evil\nforged line", password = "x" })
        local text = table.concat(lines, "\n")
        assert.matches("login failed for evil?forged line", text, 1, true)
      end)
    end)
  end)

  describe("through postern #scripts", function()
    local backend, proxy

    setup(function()
      backend = testing.mock_imap { name = "demo-backend" }
      proxy = testing.start {
        policy_source = ([[
          local policy = dofile(%q)
          policy.upstreams.demo.imap = { host = "127.0.0.1", port = %d }
          policy.fail_wait = 0.1
          return policy
        ]]):format(testing.root .. "/scripts/static_users.lua", backend.port),
      }
    end)

    teardown(function()
      if proxy then proxy:stop() end
      if backend then backend:stop() end
    end)

    it("logs the demo user (SHA512-CRYPT) in to the demo upstream", function()
      local c = testing.client { port = proxy.port }
      c:expect("^%* OK")
      assert.matches("^a1 OK", (c:command("a1", "LOGIN demo demo")))
      backend:wait_for("^AUTH demo demo")
      c:close()
    end)

    it("logs bob (bcrypt) in", function()
      local c = testing.client { port = proxy.port }
      c:expect("^%* OK")
      assert.matches("^a1 OK", (c:command("a1", "LOGIN bob bob")))
      c:close()
    end)

    it("refuses a wrong password with the policy's message", function()
      local c = testing.client { port = proxy.port }
      c:expect("^%* OK")
      assert.equal("a1 NO [AUTHENTICATIONFAILED] Invalid login or password", (c:command("a1", "LOGIN demo nope")))
      c:close()
    end)
  end)
end)
