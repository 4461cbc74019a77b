-- The process model: the process started is the master; it binds the
-- listeners and forks `workers` workers that accept from them, restarts a
-- worker that dies, and turns signals into the instance's life cycle
-- (docs/process-model.md). Reload and its listeners: reload_spec.lua.
local testing = require "postern.testing"
local shell = require "helpers.shell"

local function route_ok(backend_port)
  return ([[
    return {
      authenticate = function(s)
        if s.password == "ok" then return { host = "127.0.0.1", port = %d } end
        return nil, "wrong"
      end,
    }
  ]]):format(backend_port)
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local t = f:read("*a")
  f:close()
  return t
end

local function alive(pid)
  return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == 0
end

local function wait_until(timeout, fn)
  local deadline = testing.now() + timeout
  repeat
    local v = fn()
    if v then return v end
    testing.sleep(0.05)
  until testing.now() > deadline
  return nil
end

local function login(port, user)
  local c = testing.client { port = port }
  c:expect("^%* OK")
  local tagged = c:command("a1", "LOGIN " .. (user or "alice") .. " ok")
  return c, tagged
end

-- the pid that logged a session's "client connected" line, by client port
local function worker_of(proxy, c)
  local _, port = c.sock:getsockname()
  local line = proxy:wait_log("client connected, client: 127%.0%.0%.%d+:" .. port .. ",")
  return tonumber(line:match("%] (%d+): "))
end

describe("worker processes #process", function()
  local backend, proxy

  before_each(function()
    backend = testing.mock_imap { name = "backend" }
  end)

  after_each(function()
    if proxy then proxy:stop() end
    proxy = nil
    if backend then backend:stop() end
  end)

  it("runs the configured number of workers under one master", function()
    proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 3 } }
    local workers = wait_until(3, function() local w = proxy:workers(); return #w == 3 and w end)
    assert.is_table(workers, "expected 3 workers, got " .. #proxy:workers())
    for _, pid in ipairs(workers) do
      local stat = read("/proc/" .. pid .. "/stat")
      assert.equal(proxy.pid, tonumber(stat:match("^%d+ %b() %a (%d+)")))
    end
    assert.truthy(proxy:wait_log("started, policy .*, 3 workers"))
  end)

  it("keeps one worker with workers = 1", function()
    proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 1 } }
    assert.truthy(wait_until(3, function() return #proxy:workers() == 1 end))
    local c, tagged = login(proxy.port)
    assert.matches("^a1 OK", tagged)
    c:close()
  end)

  it("starts one worker per CPU with workers = \"auto\", the default", function()
    local cpus = tonumber(shell.run { "nproc" }:match("%d+"))
    proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = false } }
    assert.truthy(wait_until(3, function() return #proxy:workers() == math.min(cpus, 64) end),
      "workers: " .. #proxy:workers() .. ", CPUs: " .. cpus)
  end)

  it("spreads logins over the workers, and logs each session with its worker's pid", function()
    proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 2 } }
    assert.truthy(wait_until(3, function() return #proxy:workers() == 2 end))
    local seen, clients = {}, {}
    for i = 1, 40 do
      local c, tagged = login(proxy.port)
      assert.matches("^a1 OK", tagged)
      clients[i] = c -- kept open: each busy worker makes the next accept likelier elsewhere
      local pid = worker_of(proxy, c)
      seen[pid] = (seen[pid] or 0) + 1
    end
    for _, c in ipairs(clients) do c:close() end
    local workers = proxy:workers()
    print(("logins per worker: %d=%d %d=%d"):format(workers[1], seen[workers[1]] or 0,
      workers[2], seen[workers[2]] or 0))
    -- both serve (how evenly under load: bench/acceptbench, docs/process-model.md)
    assert.truthy(seen[workers[1]], "worker " .. workers[1] .. " took none")
    assert.truthy(seen[workers[2]], "worker " .. workers[2] .. " took none")
    assert.equal(40, (seen[workers[1]] or 0) + (seen[workers[2]] or 0))
  end)

  it("restarts a killed worker within a second and leaves the other worker's sessions alone", function()
    proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 2 } }
    assert.truthy(wait_until(3, function() return #proxy:workers() == 2 end))
    -- a relaying session on one worker; kill the other one
    local c, tagged = login(proxy.port)
    assert.matches("^a1 OK", tagged)
    local keep = worker_of(proxy, c)
    local victim
    for _, pid in ipairs(proxy:workers()) do if pid ~= keep then victim = pid end end
    os.execute("kill -KILL " .. victim)
    local t0 = testing.now()
    local line = proxy:wait_log("worker " .. victim .. " was killed by signal 9.*starting another", 2)
    assert.truthy(line:find("%[alert%]"), line)
    local replaced = wait_until(1, function()
      local w = proxy:workers()
      return #w == 2 and w[1] ~= victim and w[2] ~= victim
    end)
    assert.truthy(replaced, "no new worker within a second")
    assert.is_true(testing.now() - t0 < 1.5)
    -- the surviving session still relays, and new logins work
    local t2 = c:command("a2", 'LIST "" *')
    assert.matches("^a2 OK", t2)
    c:close()
    local c2, tagged2 = login(proxy.port)
    assert.matches("^a1 OK", tagged2)
    c2:close()
    proxy.allow_log = { "%[alert%] %d+: worker %d+ was killed by signal 9" }
  end)

  it("backs off a worker that dies as soon as it starts", function()
    local flag = os.tmpname()
    os.remove(flag)
    -- the master checked this policy before the flag existed; the workers
    -- started after the flag appears run the same text, and exit at once
    local policy = route_ok(backend.port):gsub("^", ("if io.open(%q) then os.exit(3) end\n"):format(flag))
    proxy = testing.start { policy_source = policy, config = { workers = 1 } }
    assert.truthy(wait_until(3, function() return #proxy:workers() == 1 end))
    proxy.allow_log = { "%[alert%] %d+: worker %d+ " }
    local f = assert(io.open(flag, "w"))
    f:close()
    os.execute("kill -KILL " .. proxy:workers()[1])
    testing.sleep(2.5)
    os.remove(flag)
    local log = proxy:log()
    local _, starts = log:gsub("worker %d+ started", "")
    local delays = {}
    for d in log:gmatch("exited with status 3; starting another in ([%d%.]+) s") do delays[#delays + 1] = tonumber(d) end
    -- 0, 0.25, 0.5, 1 ... : a handful of attempts in 2.5 s, not hundreds
    assert.is_true(starts <= 8, starts .. " workers started in 2.5 s")
    assert.is_true(#delays >= 2, "no back-off logged:\n" .. log)
    for i = 2, #delays do assert.is_true(delays[i] > delays[i - 1], "delays do not grow") end
    -- once the cause is gone, a worker stays up
    assert.truthy(wait_until(5, function() return #proxy:workers() == 1 end))
    testing.sleep(0.5)
    local c, tagged = login(proxy.port)
    assert.matches("^a1 OK", tagged)
    c:close()
  end)

  it("runs the policy the master checked, even if the file was changed without a reload", function()
    proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 1 } }
    assert.truthy(wait_until(3, function() return #proxy:workers() == 1 end))
    local f = assert(io.open(proxy.dir .. "/policy.lua", "w"))
    f:write("this is not Lua")
    f:close()
    local old = proxy:workers()[1]
    proxy.allow_log = { "%[alert%] %d+: worker %d+ was killed by signal 9" }
    os.execute("kill -KILL " .. old)
    assert.truthy(wait_until(2, function() local w = proxy:workers(); return #w == 1 and w[1] ~= old end))
    local c, tagged = login(proxy.port)
    assert.matches("^a1 OK", tagged)
    c:close()
  end)
end)

describe("graceful stop #process", function()
  local backend, proxy

  before_each(function()
    backend = testing.mock_imap { name = "backend" }
  end)

  after_each(function()
    if proxy then proxy:stop() end
    proxy = nil
    if backend then backend:stop() end
  end)

  local function exit_status()
    local code = wait_until(10, function() return read(proxy.exit_path) end)
    return code and tonumber(code:match("%d+"))
  end

  it("closes the listeners, tells sessions before login, lets relaying sessions finish, then exits 0", function()
    proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 2 } }
    local relaying, tagged = login(proxy.port)
    assert.matches("^a1 OK", tagged)
    local waiting = testing.client { port = proxy.port }
    waiting:expect("^%* OK")
    proxy:signal("QUIT")
    assert.matches("^%* BYE %[UNAVAILABLE%] Server shutting down", waiting:line(3))
    assert.is_true(waiting:closed(2))
    -- each worker closes its listening socket when it hears the master
    assert.truthy(wait_until(3, function()
      local _, n = proxy:log():gsub("stop requested: stopping gracefully", "")
      return n == 2
    end))
    assert.is_false((pcall(testing.client, { port = proxy.port, timeout = 1 })), "still accepting")
    -- the relaying session goes on
    local t2, untagged = relaying:command("a2", 'LIST "" *')
    assert.matches("^a2 OK", t2)
    assert.matches("INBOX", table.concat(untagged, "\n"))
    assert.is_true(proxy:alive())
    relaying:command("a3", "LOGOUT")
    relaying:close()
    assert.equal(0, exit_status())
    assert.is_false(proxy:alive())
  end)

  it("says so in each protocol: POP3 -ERR [SYS/TEMP], SMTP 421", function()
    proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 1,
      listen = { { protocol = "pop3" }, { protocol = "smtp" } } } }
    local pop = testing.client { port = proxy.ports[1] }
    assert.matches("^%+OK", pop:pop3())
    local smtp = testing.client { port = proxy.ports[2] }
    assert.equal(220, (smtp:smtp()))
    proxy:signal("QUIT")
    assert.matches("^%-ERR %[SYS/TEMP%] Server shutting down", pop:line(3))
    local code, _, last = smtp:smtp()
    assert.equal(421, code)
    assert.matches("^421 4%.7%.0 ", last)
    assert.equal(0, exit_status())
  end)

  it("closes relaying sessions at shutdown_timeout", function()
    proxy = testing.start { policy_source = route_ok(backend.port),
      config = { workers = 1, shutdown_timeout = 1 } }
    local c, tagged = login(proxy.port)
    assert.matches("^a1 OK", tagged)
    local t0 = testing.now()
    proxy:signal("QUIT")
    assert.is_true(c:closed(4))
    local took = testing.now() - t0
    assert.is_true(took > 0.8 and took < 3, "closed after " .. took .. " s")
    assert.equal(0, exit_status())
    assert.truthy(proxy:wait_log("shutdown_timeout %(1s%) reached: closing 1 session"))
  end)

  it("is sent by postern -s quit, through the pidfile", function()
    proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 1, pidfile = "postern.pid" } }
    local out, rc = shell.run { testing.bin, "-s", "quit", "-c", proxy.conf_path }
    assert.equal(0, rc, out)
    assert.equal(0, exit_status())
    assert.truthy(proxy:wait_log("stopping gracefully"))
  end)

  it("stops at once on SIGTERM, relaying sessions included", function()
    proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 2 } }
    local c, tagged = login(proxy.port)
    assert.matches("^a1 OK", tagged)
    proxy:signal("TERM")
    assert.is_true(c:closed(3))
    assert.equal(0, exit_status())
  end)
end)

describe("connection limits across workers #process", function()
  local backend, proxy

  before_each(function()
    backend = testing.mock_imap { name = "backend" }
  end)

  after_each(function()
    if proxy then proxy:stop() end
    proxy = nil
    if backend then backend:stop() end
  end)

  local function open(port, bind)
    local c = testing.client { port = port, bind = bind }
    return c, c:line(3)
  end

  it("refuses a client address over max_connections_per_ip before the greeting, on whichever worker", function()
    proxy = testing.start { policy_source = route_ok(backend.port),
      config = { workers = 2, max_connections_per_ip = 3 } }
    testing.sleep(0.3) -- the harness's readiness probe has gone
    local held = {}
    for i = 1, 3 do
      local c, greeting = open(proxy.port, "127.0.0.1")
      assert.matches("^%* OK", greeting)
      held[i] = c
    end
    local c4, refused = open(proxy.port, "127.0.0.1")
    assert.matches("^%* BYE %[UNAVAILABLE%] Too many connections from your address", refused)
    assert.is_true(c4:closed(2))
    assert.truthy(proxy:wait_log("%[warn%].*refused: max_connections_per_ip %(3%) reached"))
    -- another address is not affected
    local other, greeting = open(proxy.port, "127.0.0.2")
    assert.matches("^%* OK", greeting)
    other:close()
    -- the count comes back down when sessions end
    held[1]:close()
    local again = wait_until(3, function()
      local c, g = open(proxy.port, "127.0.0.1")
      c:close()
      return g:match("^%* OK")
    end)
    assert.truthy(again, "the closed session was not given back")
    for i = 2, 3 do held[i]:close() end
  end)

  it("counts max_connections for the whole instance", function()
    proxy = testing.start { policy_source = route_ok(backend.port),
      config = { workers = 2, max_connections = 4 } }
    testing.sleep(0.3) -- the harness's readiness probe has gone
    local held = {}
    for i = 1, 4 do
      local c, greeting = open(proxy.port, "127.0.0." .. i)
      assert.matches("^%* OK", greeting)
      held[i] = c
    end
    local c5, refused = open(proxy.port, "127.0.0.5")
    assert.matches("^%* BYE %[UNAVAILABLE%] Too many connections", refused)
    c5:close()
    for _, c in ipairs(held) do c:close() end
  end)

  it("refuses in each protocol's words: POP3 -ERR [SYS/TEMP], SMTP 421 4.7.0", function()
    proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 1,
      max_connections_per_ip = 1, listen = { { protocol = "pop3" }, { protocol = "smtp" } } } }
    -- (the harness's readiness probe may still hold the count a moment)
    local function first(port, pattern)
      return wait_until(3, function()
        local c, g = open(port)
        if g and g:match(pattern) then return c end
        c:close()
      end)
    end
    local pop = first(proxy.ports[1], "^%+OK")
    local _, refused = open(proxy.ports[1])
    assert.matches("^%-ERR %[SYS/TEMP%] Too many connections", refused)
    pop:close()
    local smtp = first(proxy.ports[2], "^220")
    local _, refused_smtp = open(proxy.ports[2])
    assert.matches("^421 4%.7%.0 postern%.test Too many connections", refused_smtp)
    smtp:close()
  end)

  it("counts the client address from the PROXY header", function()
    proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 2,
      max_connections_per_ip = 1, listen = { { protocol = "imap", proxy_protocol = true } } } }
    local function via_balancer(client_ip)
      local c = testing.client { port = proxy.port }
      c:send(("PROXY TCP4 %s 127.0.0.1 40000 143\r\n"):format(client_ip))
      return c, c:line(3)
    end
    local a, g1 = via_balancer("192.0.2.1")
    assert.matches("^%* OK", g1)
    local _, g2 = via_balancer("192.0.2.1")
    assert.matches("^%* BYE %[UNAVAILABLE%]", g2)
    local b, g3 = via_balancer("192.0.2.2")
    assert.matches("^%* OK", g3)
    a:close()
    b:close()
  end)

  it("forgets the connections of a worker that was killed", function()
    proxy = testing.start { policy_source = route_ok(backend.port),
      config = { workers = 1, max_connections_per_ip = 1 } }
    local c = open(proxy.port)
    local victim = proxy:workers()[1]
    os.execute("kill -KILL " .. victim)
    assert.is_true(c:closed(2))
    local ok = wait_until(3, function()
      local ok, c2, g = pcall(open, proxy.port)
      if ok and g:match("^%* OK") then c2:close(); return true end
      if ok then c2:close() end
    end)
    assert.truthy(ok, "the dead worker's connection still counts")
    proxy.allow_log = { "%[alert%] %d+: worker %d+ was killed by signal 9" }
  end)
end)

describe("privileges #process", function()
  local is_root = (shell.run { "id", "-u" }):match("^0") ~= nil

  local it_as_root = is_root and it or function(name) pending(name .. " (needs root)") end

  it_as_root("runs the workers as `user` while the master keeps root", function()
    local backend = testing.mock_imap { name = "backend" }
    local proxy = testing.start { policy_source = route_ok(backend.port),
      config = { workers = 2, user = "nobody" } }
    local workers = wait_until(3, function() local w = proxy:workers(); return #w == 2 and w end)
    assert.truthy(workers)
    local function uid(pid) return tonumber(read("/proc/" .. pid .. "/status"):match("\nUid:%s+(%d+)")) end
    local nobody = tonumber((shell.run { "id", "-u", "nobody" }):match("%d+"))
    assert.equal(0, uid(proxy.pid))
    for _, pid in ipairs(workers) do assert.equal(nobody, uid(pid)) end
    -- and they still serve (the log file was given to them)
    local c, tagged = login(proxy.port)
    assert.matches("^a1 OK", tagged)
    c:close()
    proxy:stop()
    backend:stop()
  end)

  it("refuses an unknown user in postern -t", function()
    local ok, out = testing.check_config { policy = testing.root .. "/scripts/static_users.lua", user = "no-such-user-here",
      listen = { { address = "127.0.0.1:1", protocol = "imap" } } }
    assert.is_false(ok)
    assert.matches("user: no such user \"no%-such%-user%-here\"", out)
  end)
end)

describe("binary upgrade (SIGUSR2) #process #upgrade", function()
  local backend, proxy, new_master

  before_each(function()
    backend = testing.mock_imap { name = "backend" }
  end)

  after_each(function()
    if new_master and alive(new_master) then
      os.execute("kill -TERM " .. new_master)
      wait_until(5, function() return not alive(new_master) end)
    end
    new_master = nil
    if proxy then proxy:stop() end
    proxy = nil
    if backend then backend:stop() end
  end)

  local function pid_in(path)
    return tonumber((read(path) or ""):match("%d+"))
  end

  it("refuses no connection while a new master takes over under login load", function()
    proxy = testing.start { policy_source = route_ok(backend.port),
      config = { workers = 2, pidfile = "postern.pid" } }
    local pidfile = proxy.dir .. "/postern.pid"
    assert.truthy(wait_until(3, function() return #proxy:workers() == 2 end))
    local out_path = proxy.dir .. "/load.json"
    os.execute(("python3 spec/helpers/login_load.py %d 4 4 >%s 2>&1 &"):format(proxy.port, out_path))
    testing.sleep(0.7)
    local old_workers = proxy:workers()
    proxy:signal("USR2")
    new_master = wait_until(3, function()
      local pid = pid_in(pidfile)
      return pid and pid ~= proxy.pid and pid
    end)
    assert.truthy(new_master, "no new pidfile; log:\n" .. proxy:log())
    assert.equal(proxy.pid, pid_in(pidfile .. ".oldbin"))
    assert.truthy(proxy:wait_log("%] " .. new_master .. ": took over the listening sockets"))
    assert.truthy(wait_until(3, function()
      return #(shell.run { "ps", "-o", "pid=", "--ppid", tostring(new_master) }):gsub("%s", "") > 0
    end))
    testing.sleep(0.7)
    proxy:signal("QUIT")  -- the old master goes
    assert.truthy(wait_until(5, function() return read(proxy.exit_path) end), "the old master did not exit")
    assert.is_true(alive(new_master))
    local result = wait_until(8, function()
      local t = read(out_path)
      return t and t:match("^{") and t
    end)
    assert.truthy(result, "the load did not finish")
    local ok, failed = tonumber(result:match('"ok": (%d+)')), tonumber(result:match('"failed": (%d+)'))
    print(("logins across the upgrade: %d ok, %d failed"):format(ok, failed))
    assert.equal(0, failed, result)
    assert.is_true(ok > 50, result)
    -- both generations served some of them
    local served = {}
    for pid in proxy:log():gmatch("%] (%d+): %*%d+ client connected") do served[tonumber(pid)] = true end
    local old_served, new_served = false, false
    for pid in pairs(served) do
      if pid == old_workers[1] or pid == old_workers[2] then old_served = true else new_served = true end
    end
    assert.is_true(old_served and new_served)
    -- the new master answers the pidfile's signals
    local c, tagged = login(proxy.port)
    assert.matches("^a1 OK", tagged)
    c:close()
    os.execute("kill -TERM " .. new_master)
    assert.truthy(wait_until(5, function() return not alive(new_master) end))
    assert.is_nil(read(pidfile), "the new master left its pidfile")
  end)

  it("goes on serving, and restores the pidfile, when the new binary fails to start", function()
    proxy = testing.start { policy_source = route_ok(backend.port),
      config = { workers = 1, pidfile = "postern.pid" } }
    local pidfile = proxy.dir .. "/postern.pid"
    -- the new master reads the policy again: a broken one makes it exit
    local f = assert(io.open(proxy.dir .. "/policy.lua", "w"))
    f:write("oops(")
    f:close()
    proxy:signal("USR2")
    assert.truthy(proxy:wait_log("upgrade failed: the new binary exited with status 1; this process goes on serving", 5))
    assert.equal(proxy.pid, pid_in(pidfile))
    assert.is_nil(read(pidfile .. ".oldbin"))
    local c, tagged = login(proxy.port)
    assert.matches("^a1 OK", tagged)
    c:close()
  end)
end)

describe("log reopening (SIGUSR1) #process", function()
  it("reopens error_log in the master and every worker, for logrotate", function()
    local backend = testing.mock_imap { name = "backend" }
    local proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 2 } }
    assert.truthy(wait_until(3, function() return #proxy:workers() == 2 end))
    local rotated = proxy.log_path .. ".1"
    local _, before = proxy:log():gsub("client connected", "") -- the harness's readiness probe
    assert(os.rename(proxy.log_path, rotated))
    proxy:signal("USR1")
    assert.truthy(wait_until(3, function()
      local _, n = (read(proxy.log_path) or ""):gsub("error_log reopened", "")
      return n == 2
    end), "the workers did not reopen error_log")
    -- a session now logs to the new file, whichever worker takes it
    for _ = 1, 4 do
      local c, tagged = login(proxy.port)
      assert.matches("^a1 OK", tagged)
      c:close()
    end
    assert.truthy(wait_until(3, function()
      local _, n = (read(proxy.log_path) or ""):gsub("client connected", "")
      return n == 4
    end), "new file:\n" .. (read(proxy.log_path) or ""))
    local _, old = read(rotated):gsub("client connected", "")
    assert.equal(before, old)
    proxy:stop()
    backend:stop()
  end)
end)

describe("TLS resumption across workers #process #tls", function()
  it("resumes a session ticket on a different worker than the one that issued it", function()
    local certs = require("helpers.certs").get()
    local backend = testing.mock_imap { name = "backend" }
    local proxy = testing.start { policy_source = route_ok(backend.port), config = { workers = 2,
      tls = { certificate = certs.server, key = certs.server_key },
      listen = { { protocol = "imap", tls = true } } } }
    assert.truthy(wait_until(3, function() return #proxy:workers() == 2 end))
    -- rounds of one full handshake and 12 resumptions, until one of them
    -- lands on the other worker (sequential connections may all go to the
    -- same worker for a while)
    local issuer, other_worker_resumed, full_after, out = nil, 0, 0, ""
    for _ = 1, 6 do
      local rc
      out, rc = shell.run { "python3", "spec/helpers/tls_resume.py", "127.0.0.1", tostring(proxy.port), certs.ca, "12" }
      assert.equal(0, rc, out)
      local worker_by_port = {}
      for pid, cport in proxy:log():gmatch("%] (%d+): %*%d+ client connected, client: 127%.0%.0%.1:(%d+),") do
        worker_by_port[tonumber(cport)] = tonumber(pid)
      end
      issuer = nil
      for cport, how in out:gmatch("(%d+) (%a+)") do
        local pid = worker_by_port[tonumber(cport)]
        assert.truthy(pid, "no log line for client port " .. cport .. "\n" .. out)
        if not issuer then
          issuer = pid
        elseif how == "resumed" and pid ~= issuer then
          other_worker_resumed = other_worker_resumed + 1
        elseif how == "full" then
          full_after = full_after + 1
        end
      end
      if other_worker_resumed > 0 then break end
    end
    print(("ticket from worker %d: %d resumptions on the other worker, %d full handshakes"):format(
      issuer, other_worker_resumed, full_after))
    assert.equal(0, full_after, out)
    assert.is_true(other_worker_resumed > 0, "every connection went to the issuing worker:\n" .. out)
    proxy:stop()
    backend:stop()
  end)
end)

describe("process model configuration #process", function()
  local function check(extra)
    local conf = { policy = testing.root .. "/scripts/static_users.lua", listen = { { address = "127.0.0.1:1", protocol = "imap" } } }
    for k, v in pairs(extra) do conf[k] = v end
    return testing.check_config(conf)
  end

  it("takes workers = \"auto\" or a number from 1 to 64", function()
    assert.is_true((check { workers = "auto" }))
    assert.is_true((check { workers = 4 }))
    local ok, out = check { workers = "many" }
    assert.is_false(ok)
    assert.matches("workers: must be \"auto\" or a number of processes", out)
    ok, out = check { workers = 0 }
    assert.is_false(ok)
    assert.matches("workers", out)
    assert.is_false((check { workers = 65 }))
  end)

  it("checks the limits and shutdown_timeout", function()
    assert.is_true((check { max_connections = 10000, max_connections_per_ip = 20, shutdown_timeout = 5 }))
    assert.is_false((check { max_connections = -1 }))
    assert.is_false((check { max_connections_per_ip = "ten" }))
    assert.is_false((check { shutdown_timeout = -1 }))
  end)

  it("wants user with group", function()
    local ok, out = check { group = "nogroup" }
    assert.is_false(ok)
    assert.matches("group: needs user as well", out)
    assert.is_true((check { user = "nobody", group = "nogroup" }))
    ok, out = check { user = "nobody", group = "no-such-group-here" }
    assert.is_false(ok)
    assert.matches("group: no such group", out)
  end)
end)
