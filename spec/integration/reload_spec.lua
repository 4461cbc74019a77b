-- Hot reload: SIGHUP (or `postern -s reload`) reads proxy.conf.lua and the
-- policy again. New sessions get them; sessions that are relaying, or in
-- the middle of a hook, keep what they started with; a configuration or
-- policy that fails to load is refused and the running one stays.
local testing = require "postern.testing"
local shell = require "helpers.shell"

-- a policy that answers with its version in the refusal, logs in "ok"
-- users to the backend, and makes "slow" users wait one second
local function policy(version, backend_port)
  return ([[
    local postern = require "postern"
    return {
      authenticate = function(s)
        if s.user == "slow" then postern.sleep(1) end
        if s.password == "ok" then return { host = "127.0.0.1", port = %d } end
        return nil, "policy %s"
      end,
    }
  ]]):format(backend_port, version)
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

describe("hot reload #reload", function()
  local backend, proxy, policy_path

  before_each(function()
    backend = testing.mock_imap { name = "backend" }
    proxy = testing.start {
      policy_source = policy("v1", backend.port),
      config = { server_name = "one.test", pidfile = "postern.pid" },
    }
    policy_path = proxy.dir .. "/policy.lua"
  end)

  after_each(function()
    if proxy then proxy:stop() end
    if backend then backend:stop() end
  end)

  local function refusal()
    local c = testing.client { port = proxy.port }
    c:expect("^%* OK")
    local tagged = c:command("a1", "LOGIN bob wrong")
    c:close()
    return tagged
  end

  local function reload_and_wait(n)
    proxy:signal("HUP")
    -- each reload logs one line; wait for the n-th
    local deadline = testing.now() + 5
    while testing.now() < deadline do
      local _, count = proxy:log():gsub("reload[a-z]*[ :]", "")
      if count >= n then return end
      testing.sleep(0.02)
    end
    error("no reload line in the log")
  end

  it("gives new sessions the new policy", function()
    assert.matches("policy v1$", refusal())
    write(policy_path, policy("v2", backend.port))
    reload_and_wait(2)
    assert.truthy(proxy:wait_log("reloaded: configuration"))
    assert.matches("policy v2$", refusal())
  end)

  it("applies the new configuration to new sessions", function()
    local conf = proxy.config
    conf.server_name = "two.test"
    testing.write_config(proxy.conf_path, conf)
    proxy:signal("HUP")
    proxy:wait_log("reloaded: configuration")
    local c = testing.client { port = proxy.port }
    assert.matches("two%.test", c:line())
    c:close()
  end)

  it("leaves a relaying session alone", function()
    local c = testing.client { port = proxy.port }
    c:expect("^%* OK")
    assert.matches("^a1 OK", (c:command("a1", "LOGIN alice ok")))
    write(policy_path, policy("v2", 1)) -- would route nowhere
    proxy:signal("HUP")
    proxy:wait_log("reloaded: configuration")
    local tagged, untagged = c:command("a2", 'LIST "" *')
    assert.matches("^a2 OK", tagged)
    assert.matches("INBOX", table.concat(untagged, "\n"))
    c:close()
  end)

  it("lets a session in the middle of a hook finish with the old policy", function()
    local c = testing.client { port = proxy.port }
    c:expect("^%* OK")
    c:send("a1 LOGIN slow wrong\r\n")
    proxy:wait_log('login: "slow"', 3) -- the hook has started (and sleeps 1 s)
    write(policy_path, policy("v2", backend.port))
    proxy:signal("HUP")
    proxy:wait_log("reloaded: configuration")
    assert.matches("policy v1$", c:line(5))
    c:close()
    assert.matches("policy v2$", refusal())
  end)

  it("refuses a policy with an error and keeps the running one", function()
    write(policy_path, "return { authenticate = function(s) end \n oops(")
    proxy:signal("HUP")
    assert.truthy(proxy:wait_log("reload refused, keeping the running configuration: .*policy%.lua:%d+:"))
    assert.matches("policy v1$", refusal())
  end)

  it("refuses a configuration with an unknown key and keeps the running one", function()
    local conf = proxy.config
    conf.server_nmae = "typo.test"
    testing.write_config(proxy.conf_path, conf)
    write(policy_path, policy("v2", backend.port))
    proxy:signal("HUP")
    assert.truthy(proxy:wait_log("reload refused.*server_nmae: unknown key"))
    assert.matches("policy v1$", refusal())
  end)

  it("opens a listener added to listen and closes a removed one", function()
    local conf = proxy.config
    local first = conf.listen[1]
    local added = { address = "127.0.0.1:" .. testing.free_port(), protocol = "pop3" }
    conf.listen = { first, added }
    testing.write_config(proxy.conf_path, conf)
    proxy:signal("HUP")
    proxy:wait_log("reloaded: configuration")
    local port = tonumber(added.address:match(":(%d+)$"))
    local c = testing.client { port = port }
    assert.matches("^%+OK", c:pop3())
    c:close()
    assert.matches("policy v1$", refusal())

    conf.listen = { added }
    testing.write_config(proxy.conf_path, conf)
    proxy:signal("HUP")
    assert.truthy(proxy:wait_log("no longer listening on 127%.0%.0%.1 port " .. proxy.port))
    proxy:wait_log("reloaded: configuration")
    local ok = pcall(testing.client, { port = proxy.port, timeout = 1 })
    assert.is_false(ok, "the removed listener still accepts")
    c = testing.client { port = port }
    assert.matches("^%+OK", c:pop3())
    c:close()
  end)

  it("refuses a listen address that cannot be bound, and keeps the running configuration", function()
    local taken = require("socket").bind("127.0.0.1", 0)
    local _, taken_port = taken:getsockname()
    local conf = proxy.config
    conf.listen = { conf.listen[1], { address = "127.0.0.1:" .. taken_port, protocol = "imap" } }
    testing.write_config(proxy.conf_path, conf)
    proxy:signal("HUP")
    assert.truthy(proxy:wait_log("reload refused.*listen%[2%]: cannot listen on 127%.0%.0%.1:" .. taken_port))
    taken:close()
    assert.matches("policy v1$", refusal())
  end)

  it("is sent by postern -s reload, through the pidfile", function()
    write(policy_path, policy("v2", backend.port))
    local out, rc = shell.run { testing.bin, "-s", "reload", "-c", proxy.conf_path }
    assert.equal(0, rc, out)
    proxy:wait_log("reloaded: configuration")
    assert.matches("policy v2$", refusal())
  end)

  it("loses no login while a client logs in again and again during 20 reloads", function()
    local logins, failures = 0, {}
    local reloads = 0
    local c
    for i = 1, 200 do
      c = testing.client { port = proxy.port }
      c:expect("^%* OK")
      local tagged = c:command("a" .. i, "LOGIN alice ok")
      if tagged:match("^a%d+ OK") then logins = logins + 1 else failures[#failures + 1] = tagged end
      c:close()
      if i % 10 == 0 then
        write(policy_path, policy("v" .. i, backend.port))
        proxy:signal("HUP")
        reloads = reloads + 1
      end
    end
    proxy:wait_log("reloaded: configuration")
    print(("%d logins, %d failed, %d reloads"):format(logins, #failures, reloads))
    assert.same({}, failures)
    assert.equal(200, logins)
    assert.equal(20, reloads)
    local _, done = proxy:log():gsub("reloaded: configuration", "")
    assert.is_true(done >= 15, "only " .. done .. " reloads completed")
  end)
end)
