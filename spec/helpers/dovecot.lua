-- Test helper: run a private, throw-away Dovecot (IMAP, optional POP3 and ManageSieve)
-- on 127.0.0.1 for busted specs.
--
--   local dovecot = require "helpers.dovecot"
--   local d = dovecot.start{ users = { alice = "secret" }, pop3 = true }
--   -- d.imap_port, d.pop3_port (nil unless pop3 = true), d.sieve_port (sieve = true), d.dir, d.pid
--   d:stop()   -- or d.stop()
--
-- Everything (config, base_dir, state_dir, logs, passwd file, mail homes)
-- lives in a fresh temp directory; /etc/dovecot and the system base_dir
-- (/run/dovecot) are never used.
--
-- User/uid choice: Dovecot refuses to run mail processes (imap, pop3) as
-- uid 0 and, by default, as any uid below first_valid_uid (500), which
-- also rules out the `dovecot` system user (uid ~100).  We therefore run
-- the mail processes as `nobody:nogroup` (65534), which is above the
-- default first_valid_uid and is neither default_internal_user (dovecot)
-- nor default_login_user (dovenull), so no first_valid_uid / mail_uid
-- tweaking is needed.  The temp dir is made world-traversable (0755) and
-- the mail homes are chown'ed to nobody:nogroup.  The master itself must
-- run as root (it binds ports, chroots login processes, setuid()s).

local socket = require "socket"

local _M = {}

local MAIL_USER = "nobody"
local MAIL_GROUP = "nogroup"
local START_TIMEOUT = 10
local STOP_TIMEOUT = 5

-- /usr/sbin is not always on PATH; DOVECOT_BIN overrides
local function dovecot_bin()
  local env = os.getenv("DOVECOT_BIN")
  if env and env ~= "" then
    return env
  end
  local f = io.open("/usr/sbin/dovecot", "r")
  if f then
    f:close()
    return "/usr/sbin/dovecot"
  end
  return "dovecot"
end

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function run(cmd)
  local ok, how, code = os.execute(cmd)
  -- LuaJIT (5.1 semantics) returns a number; 5.2+ returns true/nil
  if ok == true or ok == 0 then
    return true
  end
  return false, ("command failed (%s %s): %s"):format(tostring(how), tostring(code), cmd)
end

local function must(cmd)
  local ok, err = run(cmd)
  if not ok then
    error(err, 2)
  end
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  return out
end

local function write_file(path, content, mode)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  if mode then
    must("chmod " .. mode .. " " .. sh_quote(path))
  end
end

local function read_tail(path, n)
  local f = io.open(path, "rb")
  if not f then
    return "(no log file " .. path .. ")"
  end
  local data = f:read("*a")
  f:close()
  n = n or 3000
  if #data > n then
    data = "..." .. data:sub(-n)
  end
  return data
end

-- shares testing's record of handed-out ports, so that Dovecot and postern are
-- never given the same one
local free_port = require("postern.testing").free_port

local function sleep(t)
  socket.sleep(t)
end

-- true while the process exists and is not a zombie (PID 1 in some
-- containers does not reap orphans; a zombie holds no resources)
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then
    return false
  end
  local stat = f:read("*l") or ""
  f:close()
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- pids (other than zombies) in the session led by `sid`
local function session_pids(sid)
  local out = capture("pgrep -s " .. tonumber(sid) .. " 2>/dev/null")
  local pids = {}
  for p in out:gmatch("%d+") do
    if alive(p) then
      pids[#pids + 1] = tonumber(p)
    end
  end
  return pids
end

local function wait_greeting(port, deadline, pid, haproxy)
  while socket.gettime() < deadline do
    if pid and not alive(pid) then
      return false, "dovecot exited"
    end
    local c = socket.tcp()
    c:settimeout(1)
    if c:connect("127.0.0.1", port) then
      if haproxy then c:send("PROXY UNKNOWN\r\n") end
      local line = c:receive("*l")
      c:close()
      if line and line:match("^%* OK") then
        return true
      end
    else
      c:close()
    end
    sleep(0.1)
  end
  return false, "timed out waiting for IMAP greeting on port " .. port
end

local function deliver(maildir, user)
  local now = os.time()
  local msg = table.concat({
    "Return-Path: <sender@example.test>",
    "Message-ID: <postern-dovecot-" .. user .. "-" .. now .. "@example.test>",
    "Date: " .. os.date("!%a, %d %b %Y %H:%M:%S +0000", now),
    "From: Postern Test <sender@example.test>",
    "To: " .. user .. "@example.test",
    "Subject: Hello from Dovecot",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=us-ascii",
    "",
    "Hi " .. user .. ",",
    "",
    "postern-dovecot-test-body",
    "",
  }, "\r\n")
  local name = ("%d.M1P1Q1.postern-test"):format(now)
  write_file(maildir .. "/new/" .. name, msg, "0600")
end

local function conf_text(o)
  local L = {}
  local function add(s) L[#L + 1] = s end
  add("# generated by spec/helpers/dovecot.lua -- test instance only")
  add("instance_name = " .. o.instance)
  add("base_dir = " .. o.dir .. "/run")
  add("state_dir = " .. o.dir .. "/state")
  add("log_path = " .. o.dir .. "/dovecot.log")
  add("info_log_path = " .. o.dir .. "/dovecot.log")
  add("debug_log_path = " .. o.dir .. "/dovecot.log")
  add("protocols = imap" .. (o.pop3_port and " pop3" or "") .. (o.sieve_port and " sieve" or ""))
  add("listen = 127.0.0.1")
  if o.ssl then
    -- ssl = yes: STARTTLS/STLS on the plain ports, and imaps/pop3s below
    add("ssl = yes")
    add("ssl_cert = <" .. o.ssl.cert)
    add("ssl_key = <" .. o.ssl.key)
    add("ssl_min_protocol = TLSv1.2")
  else
    add("ssl = no")
  end
  add("disable_plaintext_auth = no")
  add("auth_mechanisms = plain login")
  add("default_internal_user = dovecot")
  add("default_login_user = dovenull")
  add("mail_location = maildir:~/Maildir")
  add("login_trusted_networks =")
  if o.haproxy then add("haproxy_trusted_networks = 127.0.0.0/8") end
  add("shutdown_clients = yes")
  add("verbose_proctitle = yes")
  add("auth_verbose = yes")
  -- tests log in with wrong passwords on purpose: no 2 s failure delay
  -- and no anvil auth penalty (which grows to 15 s per IP); mode = 0 on
  -- the penalty socket is Dovecot's documented way to disable the latter
  add("auth_failure_delay = " .. (o.auth_failure_delay or 0))
  if o.debug then
    add("auth_debug = yes")
    add("mail_debug = yes")
  end
  add("passdb {")
  add("  driver = passwd-file")
  add("  args = scheme=PLAIN username_format=%u " .. o.dir .. "/passwd")
  add("}")
  add("userdb {")
  add("  driver = static")
  add(("  args = uid=%s gid=%s home=%s/home/%%u"):format(MAIL_USER, MAIL_GROUP, o.dir))
  add("}")
  add("service imap-login {")
  add("  inet_listener imap {")
  add("    address = 127.0.0.1")
  add("    port = " .. o.imap_port)
  if o.haproxy then add("    haproxy = yes") end
  add("  }")
  add("  inet_listener imaps {")
  if o.imaps_port then
    add("    address = 127.0.0.1")
    add("    port = " .. o.imaps_port)
    add("    ssl = yes")
  else
    add("    port = 0")
  end
  add("  }")
  add("}")
  add("service pop3-login {")
  add("  inet_listener pop3 {")
  add("    address = 127.0.0.1")
  add("    port = " .. (o.pop3_port or 0))
  add("  }")
  add("  inet_listener pop3s {")
  if o.pop3s_port then
    add("    address = 127.0.0.1")
    add("    port = " .. o.pop3s_port)
    add("    ssl = yes")
  else
    add("    port = 0")
  end
  add("  }")
  add("}")
  if o.sieve_port then
    -- ManageSieve (Debian's dovecot-managesieved): STARTTLS on this port when ssl is on
    add("service managesieve-login {")
    add("  inet_listener sieve {")
    add("    address = 127.0.0.1")
    add("    port = " .. o.sieve_port)
    add("  }")
    add("}")
    add("plugin {")
    add("  sieve = file:~/sieve;active=~/.dovecot.sieve")
    add("}")
  end
  add("service anvil {")
  add("  unix_listener anvil-auth-penalty {")
  add("    mode = 0")
  add("  }")
  add("}")
  if o.pop3_port then
    -- POP3 UIDLs without needing to store anything extra
    add("pop3_uidl_format = %08Xu%08Xv")
  end
  return table.concat(L, "\n") .. "\n"
end

local function make_stop(d)
  local stopped = false
  return function()
    if stopped then
      return true
    end
    stopped = true
    local pid = d.pid
    if pid and alive(pid) then
      run("kill -TERM " .. pid .. " 2>/dev/null")
      local deadline = socket.gettime() + STOP_TIMEOUT
      while alive(pid) and socket.gettime() < deadline do
        sleep(0.05)
      end
    end
    -- the master was started with setsid, so every child is in its
    -- session: wait briefly for them, then SIGKILL any straggler
    if pid then
      local deadline = socket.gettime() + 2
      while #session_pids(pid) > 0 and socket.gettime() < deadline do
        sleep(0.05)
      end
      local left = session_pids(pid)
      if #left > 0 then
        run("kill -KILL " .. table.concat(left, " ") .. " 2>/dev/null")
        sleep(0.1)
      end
    end
    if not d.keep and d.dir and d.dir:match("^/tmp/postern%-dovecot%.") then
      run("rm -rf " .. sh_quote(d.dir))
    end
    return true
  end
end

-- opts:
--   users = { name = "password", ... }  (default { alice = "secret" })
--   pop3  = true                         also listen for POP3
--   sieve = true                         also listen for ManageSieve (d.sieve_port)
--   debug = true                         auth_debug/mail_debug in the log
--   haproxy = true                       the IMAP listener wants a PROXY header (v1 or v2)
--   auth_failure_delay = "2 secs"        default 0 (fast failing specs)
--   ssl   = { cert = PEM, key = KEY }   TLS: STARTTLS/STLS, imaps, pop3s
--   keep  = true                         don't remove dir on stop
function _M.start(opts)
  opts = opts or {}
  local users = opts.users or { alice = "secret" }

  if capture("id -u"):match("%d+") ~= "0" then
    error("helpers.dovecot: must run as root (dovecot master binds, chroots and setuid()s)")
  end

  local dir = capture("mktemp -d /tmp/postern-dovecot.XXXXXX"):gsub("%s+$", "")
  assert(dir:match("^/tmp/postern%-dovecot%."), "mktemp failed")
  local d = { dir = dir, keep = opts.keep and true or nil }
  d.stop = make_stop(d)

  local ok, err = pcall(function()
    -- mail processes (nobody) must traverse dir to reach their home
    must("chmod 0755 " .. sh_quote(dir))
    must("mkdir -p " .. sh_quote(dir .. "/run") .. " " .. sh_quote(dir .. "/state")
      .. " " .. sh_quote(dir .. "/home"))

    local pw = {}
    local names = {}
    for name in pairs(users) do
      names[#names + 1] = name
    end
    table.sort(names)
    for _, name in ipairs(names) do
      local pass = users[name]
      assert(not name:find("[:%s/]"), "bad user name " .. name)
      assert(not tostring(pass):find("[:\n]"), "bad password for " .. name)
      pw[#pw + 1] = name .. ":{PLAIN}" .. pass .. "::::::"
      local maildir = dir .. "/home/" .. name .. "/Maildir"
      must("mkdir -p " .. sh_quote(maildir .. "/new") .. " " .. sh_quote(maildir .. "/cur")
        .. " " .. sh_quote(maildir .. "/tmp"))
      deliver(maildir, name)
    end
    -- read by the auth worker (root) only, but keep it simple
    write_file(dir .. "/passwd", table.concat(pw, "\n") .. "\n", "0644")
    must("chown -R " .. MAIL_USER .. ":" .. MAIL_GROUP .. " " .. sh_quote(dir .. "/home"))

    d.imap_port = free_port()
    local taken = { [d.imap_port] = true }
    local function another()
      local port
      repeat port = free_port() until not taken[port]
      taken[port] = true
      return port
    end
    if opts.pop3 then d.pop3_port = another() end
    if opts.sieve then d.sieve_port = another() end
    if opts.ssl then
      assert(opts.ssl.cert and opts.ssl.key, "helpers.dovecot: ssl = { cert = ..., key = ... }")
      d.imaps_port = another()
      if opts.pop3 then d.pop3s_port = another() end
    end

    local conf = dir .. "/dovecot.conf"
    write_file(conf, conf_text{
      dir = dir,
      instance = "postern-test-" .. dir:match("([^.]+)$"),
      imap_port = d.imap_port,
      pop3_port = d.pop3_port,
      imaps_port = d.imaps_port,
      pop3s_port = d.pop3s_port,
      sieve_port = d.sieve_port,
      ssl = opts.ssl,
      debug = opts.debug,
      auth_failure_delay = opts.auth_failure_delay,
      haproxy = opts.haproxy,
    })
    d.conf = conf
    d.log = dir .. "/dovecot.log"

    -- setsid: the master becomes a session leader (no fork: a background
    -- job of a non-interactive sh is not a group leader), so stop() can
    -- find every child by session id
    local out = capture("exec setsid " .. sh_quote(dovecot_bin()) .. " -F -c " .. sh_quote(conf)
      .. " >" .. sh_quote(dir .. "/stdout.log") .. " 2>&1 </dev/null & echo $!")
    d.pid = tonumber(out:match("%d+"))
    assert(d.pid, "could not start dovecot")

    local up, why = wait_greeting(d.imap_port, socket.gettime() + START_TIMEOUT, d.pid, opts.haproxy)
    if not up then
      error(why .. "\n--- dovecot.log ---\n" .. read_tail(d.log)
        .. "\n--- stdout/stderr ---\n" .. read_tail(dir .. "/stdout.log"), 0)
    end
  end)
  if not ok then
    d.stop()
    error("helpers.dovecot: " .. tostring(err), 2)
  end
  return d
end

-- exported for specs that want to check cleanup
_M.alive = alive
_M.session_pids = session_pids

return _M
