-- The command line (-v, -t, -c) and the checks of proxy.conf.lua and of
-- the policy file: every mistake is an exit status of 1 and one message
-- that names what is wrong (a key path, or file:line for Lua errors).
local testing = require "postern.testing"
local socket = require "socket"

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- run postern with these arguments (bounded by `timeout` so a hang fails
-- instead of blocking the suite); returns its output (stdout and stderr)
-- and exit status
local function run(args)
  local p = assert(io.popen(("cd %s && timeout 20 %s %s 2>&1; echo EXIT=$?"):format(
    sh_quote(testing.root), sh_quote(testing.bin), args)))
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("EXIT=(%d+)%s*$"))
  return out:gsub("EXIT=%d+%s*$", ""), code
end

local function plain(s) return (s:gsub("%p", "%%%0")) end

describe("postern command line", function()
  local dir, good_policy

  -- a configuration table with a good policy; `extra` keys are merged in
  local function conf(extra)
    local c = {
      policy = good_policy,
      error_log = "stderr",
      listen = { { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap" } },
    }
    for k, v in pairs(extra or {}) do c[k] = v end
    return c
  end

  -- a policy file with this source, and a config using it; returns the config path
  local function with_policy(name, source)
    local policy = write(dir .. "/" .. name, source)
    local c = conf { policy = policy }
    return testing.write_config(dir .. "/" .. name .. ".conf.lua", c), policy
  end

  setup(function()
    local p = io.popen("mktemp -d /tmp/postern-cli.XXXXXX")
    dir = p:read("*l")
    p:close()
    assert(dir and dir:match("^/tmp/postern%-cli%."))
    good_policy = write(dir .. "/good_policy.lua",
      "return { authenticate = function(s) return nil, 'no' end }\n")
  end)

  teardown(function()
    if dir then os.execute("rm -rf " .. sh_quote(dir)) end
  end)

  describe("-v", function()
    it("prints the versions of postern, LuaJIT, libuv and mbed TLS and exits 0", function()
      local out, code = run("-v")
      assert.equals(0, code, out)
      assert.matches("postern %d+%.%d+", out)
      assert.matches("LuaJIT %d+%.%d+", out)
      assert.matches("libuv %d+%.%d+", out)
      assert.matches("mbed TLS %d+%.%d+", out)
    end)
  end)

  it("rejects an unknown option with the usage and a non-zero status", function()
    local out, code = run("-x")
    assert.is_true(code ~= 0, out)
    assert.matches("usage", out)
  end)

  it("exits 1 and names the file when the configuration file does not exist", function()
    local out, code = run("-t -c " .. sh_quote(dir .. "/nowhere.conf.lua"))
    assert.equals(1, code, out)
    assert.matches("nowhere%.conf%.lua", out)
    assert.is_nil(out:find("configuration ok", 1, true))
  end)

  describe("-t on a good configuration", function()
    it("prints \"configuration ok\" and exits 0", function()
      local path = testing.write_config(dir .. "/good.conf.lua", conf())
      local out, code = run("-t -c " .. sh_quote(path))
      assert.equals(0, code, out)
      assert.matches("configuration ok", out)
    end)

    it("accepts every documented key", function()
      local ok, out = testing.check_config(conf {
        server_name = "mail.example.com",
        log_level = "warn",
        pidfile = dir .. "/postern.pid",
        proxy_pass_error_message = false,
        timeout = 30, proxy_timeout = 300, connect_timeout = 5, auth_timeout = 10,
        max_errors = 3, max_login_attempts = 2,
        client_buffer = 8192, proxy_buffer = 32768,
        imap_capabilities = { "IMAP4rev1", "IDLE" },
        listen = {
          { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap",
            auth = { "plain", "login" }, capabilities = { "IMAP4rev1" } },
        },
      })
      assert.is_true(ok, out)
      assert.matches("configuration ok", out)
    end)

    it("does not bind the listening ports", function()
      local server = assert(socket.bind("127.0.0.1", 0))
      local _, port = server:getsockname()
      local ok, out = testing.check_config(conf { listen = { { address = "127.0.0.1:" .. port, protocol = "imap" } } })
      server:close()
      assert.is_true(ok, out)
    end)

    it("checks the repository's own proxy.conf.lua", function()
      os.execute(testing.root .. "/scripts/demo-cert >/dev/null") -- its demo certificate
      local ok, out = testing.check_config(testing.root .. "/proxy.conf.lua")
      assert.is_true(ok, out)
    end)
  end)

  describe("configuration errors", function()
    local function check_fails(c)
      local ok, out = testing.check_config(c)
      assert.is_false(ok, out)
      assert.is_nil(out:find("configuration ok", 1, true), out)
      return out
    end

    it("names an unknown top-level key", function()
      local out = check_fails(conf { protocl = "imap" })
      assert.matches("protocl: unknown key", out)
    end)

    it("names an unknown key in a listener with its index", function()
      local out = check_fails(conf {
        listen = {
          { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap" },
          { address = "127.0.0.1:" .. testing.free_port(), protocl = "imap" },
        },
      })
      assert.matches(plain("listen[2].protocl: unknown key"), out)
    end)

    it("exits with status 1 on an unknown key, with the message on the output", function()
      local path = testing.write_config(dir .. "/unknown.conf.lua", conf { protocl = "imap" })
      local out, code = run("-t -c " .. sh_quote(path))
      assert.equals(1, code, out)
      assert.matches(plain(path) .. ": protocl: unknown key", out)
    end)

    it("exits 1 on an unknown key when run without -t as well", function()
      local path = testing.write_config(dir .. "/unknown2.conf.lua", conf { protocl = "imap" })
      local out, code = run("-c " .. sh_quote(path))
      assert.equals(1, code, out)
      assert.matches("protocl: unknown key", out)
    end)

    it("names a key whose value has the wrong type", function()
      local out = check_fails(conf { timeout = "ten" })
      assert.matches("timeout: expected a number", out)
    end)

    it("names a wrong type inside a listener", function()
      local out = check_fails(conf { listen = { { address = 1143, protocol = "imap" } } })
      assert.matches(plain("listen[1].address"), out)
    end)

    it("names a wrong type in a list of strings", function()
      local out = check_fails(conf { imap_capabilities = { "IMAP4rev1", 42 } })
      assert.matches("imap_capabilities", out)
    end)

    it("names a value out of range", function()
      local out = check_fails(conf { max_errors = 0 })
      assert.matches("max_errors", out)
    end)

    it("names an unknown log_level", function()
      local out = check_fails(conf { log_level = "verbose" })
      assert.matches("log_level", out)
    end)

    it("names an unknown protocol in a listener", function()
      local out = check_fails(conf { listen = { { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap5" } } })
      assert.matches(plain("listen[1].protocol"), out)
    end)

    it("names an unknown mechanism in a listener's auth", function()
      local out = check_fails(conf {
        listen = { { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", auth = { "plain", "rot13" } } },
      })
      assert.matches(plain("listen[1].auth[2]"), out)
    end)

    it("names a listener address that is not ADDRESS:PORT", function()
      local out = check_fails(conf { listen = { { address = "localhost:imap", protocol = "imap" } } })
      assert.matches(plain("listen[1].address"), out)
    end)

    it("requires a protocol on a port that does not imply one", function()
      local out = check_fails(conf { listen = { { address = "127.0.0.1:" .. testing.free_port() } } })
      assert.matches(plain("listen[1].protocol"), out)
    end)

    it("requires listen", function()
      local c = conf()
      c.listen = nil
      local out = check_fails(c)
      assert.matches("listen", out)
    end)

    it("requires policy", function()
      local c = conf()
      c.policy = nil
      local out = check_fails(c)
      assert.matches("policy", out)
    end)

    it("names policy when the policy file does not exist", function()
      local out = check_fails(conf { policy = dir .. "/no_such_policy.lua" })
      assert.matches("policy", out)
      assert.matches("no_such_policy%.lua", out)
    end)

    -- a configuration written as text, for values the serializer cannot write
    local function raw_conf(name, extra)
      return write(dir .. "/" .. name, ("return {\n  policy = %q,\n  %s,\n  listen = { { address = %q, protocol = \"imap\" } },\n}\n")
        :format(good_policy, extra, "127.0.0.1:" .. testing.free_port()))
    end

    for _, case in ipairs {
      { "timeout", "timeout = 0/0" },
      { "client_buffer", "client_buffer = 0/0" },
    } do
      it("rejects NaN for " .. case[1] .. ", naming the key", function()
        local path = raw_conf("nan_" .. case[1] .. ".conf.lua", case[2])
        local out, code = run("-t -c " .. sh_quote(path))
        assert.equals(1, code, out)
        assert.matches(case[1], out)
      end)
    end

    it("rejects a server_name with a line break (it goes into the greeting)", function()
      local out = check_fails(conf { server_name = "mail.example.com\r\n* BYE injected" })
      assert.matches("server_name", out)
    end)

    it("rejects a capability word with a line break", function()
      local out = check_fails(conf { imap_capabilities = { "IMAP4rev1", "XFOO\r\n* BYE" } })
      assert.matches("imap_capabilities", out)
    end)

    it("rejects a capability word with a ] that would end the greeting's response code", function()
      local out = check_fails(conf { listen = {
        { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", capabilities = { "IMAP4rev1]", "X" } },
      } })
      assert.matches(plain("listen[1].capabilities"), out)
    end)

    it("reports a Lua syntax error in the configuration as file:line:", function()
      local path = write(dir .. "/syntax.conf.lua", "return {\n  timeout = 10,\n  policy = = 'x',\n}\n")
      local out, code = run("-t -c " .. sh_quote(path))
      assert.equals(1, code, out)
      assert.matches(plain(path) .. ":3:", out)
    end)

    it("reports an error thrown by the configuration as file:line:", function()
      local path = write(dir .. "/throws.conf.lua", "local x = 1\nerror('no config today')\n")
      local out, code = run("-t -c " .. sh_quote(path))
      assert.equals(1, code, out)
      assert.matches(plain(path) .. ":2: no config today", out)
    end)

    it("says so when the configuration does not return a table", function()
      local path = write(dir .. "/notable.conf.lua", "return 42\n")
      local out, code = run("-t -c " .. sh_quote(path))
      assert.equals(1, code, out)
      assert.matches("table", out)
    end)
  end)

  describe("policy errors", function()
    it("reports a syntax error in the policy as its file:line:", function()
      local path, policy = with_policy("syntax_policy.lua",
        "local x = 1\nreturn { authenticate = function(s) return nil 'no' end end }\n")
      local out, code = run("-t -c " .. sh_quote(path))
      assert.equals(1, code, out)
      assert.matches(plain(policy) .. ":2:", out)
    end)

    it("reports an error thrown by the policy's main chunk as its file:line:", function()
      local path, policy = with_policy("throwing_policy.lua",
        "local x = 1\nlocal y = 2\nerror('policy refuses to load')\nreturn {}\n")
      local out, code = run("-t -c " .. sh_quote(path))
      assert.equals(1, code, out)
      assert.matches(plain(policy) .. ":3: policy refuses to load", out)
    end)

    it("says clearly when the policy has no authenticate function", function()
      local path, policy = with_policy("no_auth_policy.lua",
        "return { on_connect = function(s) end }\n")
      local out, code = run("-t -c " .. sh_quote(path))
      assert.equals(1, code, out)
      assert.matches(plain(policy), out)
      assert.matches("authenticate", out)
    end)

    it("says so when a hook is not a function", function()
      local path = with_policy("hook_type_policy.lua",
        "return { authenticate = function(s) end, on_close = 'later' }\n")
      local out, code = run("-t -c " .. sh_quote(path))
      assert.equals(1, code, out)
      assert.matches("on_close", out)
    end)

    it("says so when the policy does not return a table", function()
      local path = with_policy("nil_policy.lua", "local x = 1\n")
      local out, code = run("-t -c " .. sh_quote(path))
      assert.equals(1, code, out)
      assert.matches("table", out)
    end)

    it("refuses postern.sleep while the policy loads, naming the line", function()
      local path, policy = with_policy("sleepy_policy.lua",
        "local postern = require 'postern'\npostern.sleep(0.1)\nreturn { authenticate = function(s) end }\n")
      local out, code = run("-t -c " .. sh_quote(path))
      assert.equals(1, code, out)
      assert.matches(plain(policy) .. ":2:", out)
      assert.matches("postern%.sleep", out)
    end)

    it("accepts a policy that calls postern.now while it loads", function()
      local path = with_policy("requiring_policy.lua",
        "local postern = require 'postern'\nassert(postern.now() > 0)\nreturn { authenticate = function(s) end }\n")
      local out, code = run("-t -c " .. sh_quote(path))
      assert.equals(0, code, out)
      assert.matches("configuration ok", out)
    end)
  end)

  describe("starting", function()
    it("exits 1 with a clear message when a listening port is already in use", function()
      local server = assert(socket.bind("127.0.0.1", 0))
      local _, port = server:getsockname()
      local c = conf { listen = {
        { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap" },
        { address = "127.0.0.1:" .. port, protocol = "imap" },
      } }
      local path = testing.write_config(dir .. "/inuse.conf.lua", c)
      local out, code = run("-c " .. sh_quote(path))
      server:close()
      assert.equals(1, code, out)
      assert.matches(plain("127.0.0.1:" .. port), out)
      assert.matches("[Aa]ddress already in use", out)
      assert.matches(plain("listen[2]"), out)
    end)
  end)
end)
