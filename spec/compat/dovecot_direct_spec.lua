-- Sanity check of spec/helpers/dovecot.lua: talk to the real Dovecot
-- directly (no proxy) with python's imaplib/poplib via the helper scripts.

-- spec/, the folder above this file's (spec/compat/)
local HERE = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*/[^/]*$") or "spec"

-- `busted --lua=luajit --lpath='a;b'` re-execs itself through the shell
-- with unquoted arguments, losing everything after the first ';' -- so
-- don't depend on the lpath to find our helper
if not package.path:find(HERE .. "/?.lua", 1, true) then
  package.path = HERE .. "/?.lua;" .. package.path
end

local dovecot = require "helpers.dovecot"
local IMAP_CLIENT = HERE .. "/helpers/imap_client.py"
local POP3_CLIENT = HERE .. "/helpers/pop3_client.py"

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- run a command, return its combined output and exit status
local function run(argv)
  local q = {}
  for i, a in ipairs(argv) do
    q[i] = sh_quote(a)
  end
  local p = assert(io.popen(table.concat(q, " ") .. " 2>&1; echo \"__RC=$?\""))
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("__RC=(%d+)%s*$"))
  return out:gsub("__RC=%d+%s*$", ""), rc
end

describe("helpers.dovecot #dovecot", function()
  local d

  setup(function()
    d = dovecot.start{ users = { alice = "secret", bob = "hunter2" }, pop3 = true }
  end)

  teardown(function()
    if d then
      d:stop()
    end
  end)

  it("returns ports, dir and a running process", function()
    assert.is_number(d.imap_port)
    assert.is_number(d.pop3_port)
    assert.are_not.equal(d.imap_port, d.pop3_port)
    assert.is_string(d.dir)
    assert.is_function(d.stop)
    assert.is_true(dovecot.alive(d.pid))
  end)

  it("serves the preloaded message over IMAP", function()
    for user, pass in pairs{ alice = "secret", bob = "hunter2" } do
      local out, rc = run{ "python3", IMAP_CLIENT, "127.0.0.1", d.imap_port, user, pass }
      assert.are.equal(0, rc, out)
      assert.matches("Subject: Hello from Dovecot", out, 1, true)
      assert.matches("postern-dovecot-test-body", out, 1, true)
      assert.matches("To: " .. user .. "@example.test", out, 1, true)
    end
  end)

  it("rejects a wrong IMAP password", function()
    local out, rc = run{ "python3", IMAP_CLIENT, "127.0.0.1", d.imap_port, "alice", "wrong" }
    assert.are_not.equal(0, rc, out)
    assert.matches("AUTHENTICATIONFAILED", out, 1, true)
  end)

  it("rejects an unknown user", function()
    local _, rc = run{ "python3", IMAP_CLIENT, "127.0.0.1", d.imap_port, "mallory", "secret" }
    assert.are_not.equal(0, rc)
  end)

  it("serves the preloaded message over POP3", function()
    local out, rc = run{ "python3", POP3_CLIENT, "127.0.0.1", d.pop3_port, "alice", "secret" }
    assert.are.equal(0, rc, out)
    assert.matches("Subject: Hello from Dovecot", out, 1, true)
    assert.matches("postern-dovecot-test-body", out, 1, true)
  end)

  it("rejects a wrong POP3 password", function()
    local _, rc = run{ "python3", POP3_CLIENT, "127.0.0.1", d.pop3_port, "bob", "nope" }
    assert.are_not.equal(0, rc)
  end)

  it("stops cleanly: no process left, port closed, dir removed", function()
    local pid, dir, port = d.pid, d.dir, d.imap_port
    d:stop()
    d.stop() -- idempotent, both call styles
    d = nil
    assert.is_false(dovecot.alive(pid))
    assert.are.same({}, dovecot.session_pids(pid))
    local _, rc = run{ "test", "-e", dir }
    assert.are_not.equal(0, rc)
    local c = require("socket").tcp()
    c:settimeout(1)
    assert.is_nil((c:connect("127.0.0.1", port)))
    c:close()
  end)
end)

describe("helpers.dovecot imap only #dovecot", function()
  it("starts without POP3 and never touches the system dovecot", function()
    local d = dovecot.start{ users = { carol = "pw" } }
    local ok, err = pcall(function()
      assert.is_nil(d.pop3_port)
      local out, rc = run{ "python3", IMAP_CLIENT, "127.0.0.1", d.imap_port, "carol", "pw" }
      assert.are.equal(0, rc, out)
      assert.matches("postern-dovecot-test-body", out, 1, true)
      local f = assert(io.open(d.dir .. "/dovecot.conf"))
      local conf = f:read("*a")
      f:close()
      assert.not_matches("/etc/dovecot", conf, 1, true)
      assert.matches("base_dir = " .. d.dir .. "/run", conf, 1, true)
      assert.matches("protocols = imap\n", conf, 1, true)
    end)
    local pid = d.pid
    d.stop()
    assert.is_false(dovecot.alive(pid))
    assert(ok, err)
  end)
end)
