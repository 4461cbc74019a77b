-- The PROXY protocol (HAProxy's proxy-protocol.txt), both ways:
--  * a listener with proxy_protocol = true sits behind a load balancer:
--    each connection starts with a v1 or v2 header, whose addresses become
--    s.client_ip / s.client_port / s.local_ip / s.local_port (the
--    balancer's own address is s.peer_ip); a connection without a valid
--    header is closed without a greeting; with proxy_protocol_trusted,
--    a connection from a sender outside those networks is closed at once,
--    before a byte is read, with a warning naming it;
--  * an upstream with proxy_protocol = 1 or 2 gets a header with the
--    client's address before anything else (before TLS too), so a Dovecot
--    with haproxy = yes logs the real client.
local testing = require "postern.testing"
local scene = require "helpers.scene"
local dovecot = require "helpers.dovecot"
local certs = require "helpers.certs"
local tls = require "helpers.tls"

local V2SIG = "\r\n\r\n\0\r\nQUIT\n"

local function be16(n) return string.char(math.floor(n / 256), n % 256) end
local function v2_tcp4(src, dst, sport, dport, tlvs)
  local function a4(ip)
    local a, b, c, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    return string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
  end
  local body = a4(src) .. a4(dst) .. be16(sport) .. be16(dport) .. (tlvs or "")
  return V2SIG .. "\x21\x11" .. be16(#body) .. body
end

-- A client bound to `bind` sends LOGIN through a postern whose upstream is
-- a raw_upstream asking for a PROXY header of `version`; returns the
-- client, the upstream (its connection accepted, nothing read yet) and
-- the proxy.
local function login_through(sc, version, bind)
  local up = sc:raw_upstream()
  local p = sc:proxy { ["*"] = { host = "127.0.0.1", port = up.port, proxy_protocol = version } }
  local c = sc:client(p, { bind = bind })
  c:send("a1 LOGIN alice secret\r\n")
  up:accept()
  return c, up, p
end

-- the upstream's side of the login, once the test has read the header;
-- the client gets its tagged OK
local function finish_login(c, up)
  up:send("* OK upstream ready\r\n")
  for _ = 1, 3 do
    local line = up:line()
    local tag, cmd = line:match("^(%S+) (%S+)")
    if cmd == "CAPABILITY" then
      up:send("* CAPABILITY IMAP4rev1\r\n" .. tag .. " OK done\r\n")
    else
      assert.matches('^%S+ LOGIN "alice" "secret"$', line)
      up:send(tag .. " OK done\r\n")
      assert.matches("^a1 OK", c:response())
      return
    end
  end
  error("no LOGIN")
end

-- a policy that reports what it saw and routes everyone to `port`
local function reporting_policy(port, extra)
  return ([[
    local postern = require "postern"
    return {
      authenticate = function(s)
        postern.log("info", "saw client=", s.client_ip, ":", s.client_port, " local=", s.local_ip, ":",
          s.local_port, " peer=", tostring(s.peer_ip), " ppaddr=", tostring(s.proxy_protocol_addr))
        return { host = "127.0.0.1", port = %d %s }
      end,
    }
  ]]):format(port, extra or "")
end

describe("a listener with proxy_protocol = true", function()
  local backend, proxy, tls_port, C

  setup(function()
    C = certs.get()
    backend = testing.mock_imap { name = "pp-backend" }
    tls_port = testing.free_port()
    proxy = testing.start {
      policy_source = reporting_policy(backend.port),
      config = {
        tls = { certificate = C.server, key = C.server_key },
        listen = {
          { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", proxy_protocol = true },
          { address = "127.0.0.1:" .. tls_port, protocol = "imap", tls = true, proxy_protocol = true },
        },
        timeout = 2,
      },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if backend then backend:stop() end
  end)

  it("takes the client's address from a v1 header, and the greeting follows it", function()
    local c = testing.client { port = proxy.port }
    c:send("PROXY TCP4 192.0.2.7 198.51.100.1 56324 143\r\n")
    c:expect("^%* OK")
    assert.matches("^a1 OK", c:command("a1", "LOGIN alice secret"))
    local line = proxy:wait_log("saw client=")
    assert.matches("saw client=192%.0%.2%.7:56324 local=198%.51%.100%.1:143 peer=127%.0%.0%.1 ppaddr=192%.0%.2%.7", line)
    c:close()
  end)

  it("takes the client's address from a v2 header, TLVs and all", function()
    local c = testing.client { port = proxy.port }
    c:send(v2_tcp4("203.0.113.9", "198.51.100.2", 40000, 993, "\x04\x00\x03abc"))
    c:expect("^%* OK")
    assert.matches("^a1 OK", c:command("a1", "LOGIN bob pw"))
    assert.matches("client=203%.0%.113%.9:40000 local=198%.51%.100%.2:993", proxy:wait_log("saw client=203"))
    c:close()
  end)

  it("takes commands sent in the same packet as the header", function()
    local c = testing.client { port = proxy.port }
    c:send("PROXY TCP6 2001:db8::7 2001:db8::1 5000 143\r\na0 CAPABILITY\r\n")
    c:expect("^%* OK")
    c:expect("^%* CAPABILITY")
    c:expect("^a0 OK")
    assert.matches("^a1 OK", c:command("a1", "LOGIN carol pw"))
    assert.matches("client=2001:db8::7:5000", proxy:wait_log("saw client=2001"))
    c:close()
  end)

  it("keeps the socket's addresses for PROXY UNKNOWN and a v2 LOCAL header", function()
    local c = testing.client { port = proxy.port, bind = "127.0.0.5" }
    c:send("PROXY UNKNOWN\r\n")
    c:expect("^%* OK")
    assert.matches("^a1 OK", c:command("a1", "LOGIN dave pw"))
    assert.matches("client=127%.0%.0%.5:%d+ .*peer=nil ppaddr=nil", proxy:wait_log("saw client=127%.0%.0%.5"))
    c:close()
    c = testing.client { port = proxy.port }
    c:send(V2SIG .. "\x20\x00\x00\x00")
    c:expect("^%* OK")
    c:close()
  end)

  it("closes a connection that does not start with a header, without a greeting", function()
    local c = testing.client { port = proxy.port }
    c:send("a1 LOGIN alice secret\r\n")
    assert.is_true(c:closed(2))
    assert.equals("", c.buf)   -- not even a greeting
    proxy:wait_log("no PROXY protocol header")
    c = testing.client { port = proxy.port }
    c:send("PROXY TCP4 192.0.2.7 198.51.100.1 99999 143\r\n")
    assert.is_true(c:closed(2))
    proxy:wait_log("bad PROXY v1 port")
  end)

  it("closes a connection whose header does not come in time", function()
    local c = testing.client { port = proxy.port }
    c:send("PROXY TCP4 192.0.2.7")
    assert.is_true(c:closed(4))
    proxy:wait_log("no PROXY protocol header in time")
  end)

  it("reads the header before the TLS handshake on a tls = true listener", function()
    local c = testing.client { port = tls_port }
    c:send("PROXY TCP4 192.0.2.44 198.51.100.1 1234 993\r\n")
    tls.starttls(c, { cafile = C.ca, sni = "mail.test" })
    c:expect("^%* OK")
    assert.matches("^a1 OK", c:command("a1", "LOGIN erin pw"))
    assert.matches("client=192%.0%.2%.44:1234", proxy:wait_log("saw client=192%.0%.2%.44"))
    c:close()
  end)

  it("is refused in the configuration when it is not a boolean", function()
    local ok, out = testing.check_config {
      policy = os.getenv("PWD") .. "/scripts/route_by_ip.lua",
      listen = { { address = "127.0.0.1:1143", protocol = "imap", proxy_protocol = "yes" } },
    }
    assert.is_false(ok)
    assert.matches("listen%[1%]%.proxy_protocol", out)
  end)
end)

describe("a listener with proxy_protocol_trusted", function()
  local backend, proxy, port

  setup(function()
    backend = testing.mock_imap { name = "pp-trusted-backend" }
    port = testing.free_port()
    proxy = testing.start {
      policy_source = reporting_policy(backend.port),
      config = {
        listen = {
          { address = "127.0.0.1:" .. port, protocol = "imap", proxy_protocol = true,
            proxy_protocol_trusted = { "192.0.2.0/24", "127.0.0.1/32", "2001:db8::/32" } },
        },
        timeout = 5,
      },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if backend then backend:stop() end
  end)

  it("serves a sender in the list with the client address of its header", function()
    local c = testing.client { port = port, bind = "127.0.0.1" }
    c:send("PROXY TCP4 198.51.100.77 198.51.100.1 41000 143\r\n")
    c:expect("^%* OK")
    assert.matches("^a1 OK", c:command("a1", "LOGIN alice secret"))
    assert.matches("client=198%.51%.100%.77:41000 .*peer=127%.0%.0%.1 ",
      proxy:wait_log("saw client=198%.51%.100%.77"))
    c:close()
  end)

  it("closes a sender outside the list at once, without a greeting, and says so", function()
    local c = testing.client { port = port, bind = "127.0.0.3" }
    -- well within timeout (5 s): not the wait for a header that never comes
    assert.is_true(c:closed(2))
    assert.equals("", c.buf)
    local line = proxy:wait_log("PROXY protocol sender 127%.0%.0%.3 ")
    assert.matches("%[warn%]", line)
    assert.matches("PROXY protocol sender 127%.0%.0%.3 is not in proxy_protocol_trusted of listener 127%.0%.0%.1:"
      .. port .. ": closed$", line)
    -- no session was started for it: no "client connected", no header read
    assert.is_nil(proxy:log():find("client: 127%.0%.0%.3:"))
    -- the trusted sender is still served
    local ok = testing.client { port = port, bind = "127.0.0.1" }
    ok:send("PROXY TCP4 198.51.100.78 198.51.100.1 41001 143\r\n")
    ok:expect("^%* OK")
    ok:close()
  end)

  it("takes a changed list on reload, for new connections", function()
    local conf = proxy.config
    conf.listen[1].proxy_protocol_trusted = { "127.0.0.3" }
    testing.write_config(proxy.conf_path, conf)
    proxy:signal("HUP")
    proxy:wait_log("reloaded: configuration")
    local c = testing.client { port = port, bind = "127.0.0.3" }
    c:send("PROXY TCP4 198.51.100.79 198.51.100.1 41002 143\r\n")
    c:expect("^%* OK")
    c:close()
    c = testing.client { port = port, bind = "127.0.0.1" }
    assert.is_true(c:closed(2))
    assert.equals("", c.buf)
    proxy:wait_log("PROXY protocol sender 127%.0%.0%.1 is not in proxy_protocol_trusted")
  end)

  it("is checked by postern -t", function()
    local policy = os.getenv("PWD") .. "/scripts/route_by_ip.lua"
    local function check(listener)
      listener.address = "127.0.0.1:1143"
      listener.protocol = "imap"
      return testing.check_config { policy = policy, listen = { listener } }
    end
    local ok, out = check { proxy_protocol = true, proxy_protocol_trusted = { "10.0.0.0/8", "::ffff:192.0.2.1", "2001:db8::5" } }
    assert.is_true(ok, out)

    ok, out = check { proxy_protocol = true, proxy_protocol_trusted = { "10.0.0.0/8", "10.0.0.300" } }
    assert.is_false(ok)
    assert.matches('listen%[1%]%.proxy_protocol_trusted%[2%]: "10%.0%.0%.300": not an IPv4 or IPv6 address', out)

    ok, out = check { proxy_protocol = true, proxy_protocol_trusted = { "10.0.0.0/33" } }
    assert.is_false(ok)
    assert.matches("listen%[1%]%.proxy_protocol_trusted%[1%]: .*prefix length above 32", out)

    ok, out = check { proxy_protocol = true, proxy_protocol_trusted = { "10.0.0.1/8" } }
    assert.is_false(ok)
    assert.matches("listen%[1%]%.proxy_protocol_trusted%[1%]: .*bits set past the prefix", out)

    ok, out = check { proxy_protocol = true, proxy_protocol_trusted = "10.0.0.0/8" }
    assert.is_false(ok)
    assert.matches("listen%[1%]%.proxy_protocol_trusted: expected a list", out)

    ok, out = check { proxy_protocol = true, proxy_protocol_trusted = { 10 } }
    assert.is_false(ok)
    assert.matches("listen%[1%]%.proxy_protocol_trusted%[1%]: expected a string", out)

    ok, out = check { proxy_protocol = true, proxy_protocol_trusted = {} }
    assert.is_false(ok)
    assert.matches("listen%[1%]%.proxy_protocol_trusted: an empty list trusts no sender", out)

    ok, out = check { proxy_protocol_trusted = { "10.0.0.0/8" } }
    assert.is_false(ok)
    assert.matches("listen%[1%]%.proxy_protocol_trusted: needs proxy_protocol = true", out)
    ok, out = check { proxy_protocol = false, proxy_protocol_trusted = { "10.0.0.0/8" } }
    assert.is_false(ok)
    assert.matches("listen%[1%]%.proxy_protocol_trusted: needs proxy_protocol = true", out)
  end)
end)

describe("an upstream with proxy_protocol", function()
  it("gets a v1 header with the client's address before the greeting", function()
    local sc = scene.new(finally)
    local c, up, p = login_through(sc, 1, "127.0.0.6")
    assert.matches("^PROXY TCP4 127%.0%.0%.6 127%.0%.0%.1 %d+ " .. p.port .. "$", up:line())
    finish_login(c, up)
  end)

  it("gets a v2 header, binary, with the client's address", function()
    local sc = scene.new(finally)
    local c, up, p = login_through(sc, 2, "127.0.0.7")
    local header = assert(up.s:receive(28))
    assert.equals(V2SIG .. "\x21\x11\x00\x0c", header:sub(1, 16))
    assert.equals("\127\0\0\7\127\0\0\1", header:sub(17, 24))
    assert.equals(be16(p.port), header:sub(27, 28))
    finish_login(c, up)
  end)

  it("refuses a value other than 1 or 2 as a policy error", function()
    local sc = scene.new(finally)
    local m = sc:mock { name = "m" }
    local p = sc:proxy { ["*"] = { host = "127.0.0.1", port = m.port, proxy_protocol = 3 } }
    local c = sc:client(p)
    assert.matches("^a1 NO %[UNAVAILABLE%]", c:command("a1", "LOGIN alice secret"))
    p:wait_log("proxy_protocol: must be 1 or 2")
  end)

  for _, version in ipairs { 1, 2 } do
    it("logs in to a real Dovecot with haproxy = yes, which sees the client's address (v" .. version .. ")", function()
      -- busted keeps one finally per test: the scene's stops Dovecot too (last)
      local sc = scene.new(finally)
      local d = dovecot.start { users = { alice = "secret" }, haproxy = true }
      sc.stops[#sc.stops + 1] = function() d:stop() end
      local p = sc:proxy { ["*"] = { host = "127.0.0.1", port = d.imap_port, proxy_protocol = version } }
      local c = testing.client { port = p.port, bind = "127.0.0.9" }
      sc.stops[#sc.stops + 1] = function() c:close() end
      c:expect("^%* OK")
      assert.matches("^a1 OK", c:command("a1", "LOGIN alice secret"))
      local _, untagged = c:command("a2", 'LIST "" *')
      assert.matches("INBOX", table.concat(untagged, "\n"))
      -- Dovecot's login line names the remote address it took from the header
      local deadline = testing.now() + 3
      local log
      repeat
        local f = io.open(d.log, "r")
        log = f and f:read("*a") or ""
        if f then f:close() end
        if log:find("Login: user=<alice>", 1, true) then break end
        testing.sleep(0.1)
      until testing.now() > deadline
      assert.matches("Login: user=<alice>.-rip=127%.0%.0%.9", log)
    end)
  end
end)
