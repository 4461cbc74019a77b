-- TLS with reload and hooks: certificates read again on reload, on_connect
-- and the policy on TLS listeners, renegotiation.
local testing = require "postern.testing"
local shell = require "helpers.shell"
local certs_helper = require "helpers.certs"
local tls = require "helpers.tls"
local scene = require "helpers.scene"
local tl = require "helpers.tls_listeners"
local collect = tl.collect

-- ---- reload, on_connect, renegotiation -------------------------------------------------

describe("TLS with reload and hooks #tls", function()
  it("HUP with a new default certificate: new sessions get it, sessions already running keep working", function()
    local finally = collect(finally)
    local C5 = certs_helper.get()
    local m = testing.mock_imap { name = "b" }
    finally(function() m:stop() end)
    local px = testing.start {
      policy_source = scene.policy_source { ["*"] = scene.route(m) },
      config = { tls = { certificate = C5.server, key = C5.server_key },
        listen = { { protocol = "imap", tls = true }, { protocol = "imap", starttls = "on" } } },
    }
    local stopped = false
    finally(function() if not stopped then pcall(px.stop, px) end end)
    local cs = {}
    finally(function() for _, c in ipairs(cs) do pcall(c.close, c) end end)
    local function new(i, sni)
      local c = tls.client { port = px.ports[i or 1], cafile = C5.ca, sni = sni or "mail.test" }
      cs[#cs + 1] = c
      return c
    end
    local relaying = new()
    relaying:line()
    assert.matches("^a1 OK", (relaying:command("a1", "LOGIN alice secret")))
    local preauth = new()
    preauth:line()
    local plain_pre = testing.client { port = px.ports[2] }
    cs[#cs + 1] = plain_pre
    plain_pre:line()

    local conf = px.config
    conf.tls = { certificate = C5.org, key = C5.org_key }
    testing.write_config(px.conf_path, conf)
    px:signal("HUP")
    px:wait_log("reloaded: configuration", 5)

    local fresh = new(1, "mail.example.org")
    assert.equal("organizationName=Postern Tests,commonName=mail.example.org", tls.peer_subject(fresh))
    assert.matches("^%* OK", fresh:line())
    -- the sessions from before the reload
    assert.matches("^a2 OK", (relaying:command("a2", "NOOP")))
    relaying:send("a3 XECHO 300000\r\n")
    assert.equal("* XECHO {300000}", relaying:line())
    relaying:read_bytes(300000)
    assert.equal("", relaying:line())
    assert.equal("a3 OK XECHO completed", relaying:line())
    assert.matches("^b1 OK", (preauth:command("b1", "LOGIN bob secret")))
    -- STARTTLS on a connection accepted before the reload: the certificate of its own configuration
    assert.equal("s1 OK Begin TLS negotiation now", (plain_pre:command("s1", "STARTTLS")))
    tls.starttls(plain_pre, { cafile = C5.ca, sni = "mail.test" })
    assert.equal("organizationName=Postern Tests,commonName=mail.test", tls.peer_subject(plain_pre))
    assert.matches("^s2 OK", (plain_pre:command("s2", "LOGIN carol secret")))

    -- a reload with a broken pair is refused; the running certificate stays
    conf.tls = { certificate = C5.server, key = C5.org_key }
    testing.write_config(px.conf_path, conf)
    px:signal("HUP")
    px:wait_log("reload refused", 5)
    local after = new(1, "x.test")
    assert.equal("organizationName=Postern Tests,commonName=mail.example.org", tls.peer_subject(after))
    for _, c in ipairs(cs) do c:close() end
    stopped = true
    assert.equal(0, px:stop())
  end)

  it("on_connect sees s.tls and s.sni on a TLS port, and can refuse or splice over TLS", function()
    local finally = collect(finally)
    local C6 = certs_helper.get()
    local m = testing.mock_imap { name = "spliced" }
    finally(function() m:stop() end)
    local px = testing.start {
      policy_source = ([[
        local postern = require "postern"
        return {
          on_connect = function(s)
            postern.log("info", "on_connect: tls=", tostring(s.tls), " sni=", tostring(s.sni))
            if s.sni == "refuse.example.net" then return false, "not you" end
            if s.sni == "splice.example.net" then return { host = "127.0.0.1", port = %d } end
          end,
          authenticate = function(s) return nil, "no" end,
        }
      ]]):format(m.port),
      config = { tls = { certificate = C6.server, key = C6.server_key },
        listen = { { protocol = "imap", tls = true } } },
    }
    finally(function() px:stop() end)
    local a = tls.client { port = px.port, cafile = C6.ca, sni = "mail.test" }
    finally(function() a:close() end)
    assert.matches("^%* OK %[CAPABILITY", a:line())
    px:wait_log("on_connect: tls=true sni=mail%.test")
    local r = tls.client { port = px.port, sni = "refuse.example.net" }
    finally(function() r:close() end)
    assert.matches("^%* BYE not you", r:line())
    assert.is_true(r:closed(3))
    local sp = tls.client { port = px.port, sni = "splice.example.net" }
    finally(function() sp:close() end)
    assert.matches("^%* OK .*spliced", sp:line())
    assert.matches("^a1 OK", (sp:command("a1", "LOGIN alice secret")))
    m:wait_for("^AUTH alice secret")
  end)

  it("a client asking for renegotiation does not break the session or postern", function()
    local finally = collect(finally)
    local C7 = certs_helper.get()
    local m = testing.mock_imap { name = "b" }
    finally(function() m:stop() end)
    local px = testing.start {
      policy_source = scene.policy_source { ["*"] = scene.route(m) },
      config = { tls = { certificate = C7.server, key = C7.server_key },
        listen = { { protocol = "imap", tls = true } } },
    }
    finally(function() px:stop() end)
    -- s_client's interactive "R" renegotiates; then a login and LOGOUT
    local q = { "openssl", "s_client", "-connect", "127.0.0.1:" .. px.port, "-CAfile", C7.ca,
      "-servername", "mail.test", "-tls1_2", "-crlf" }
    for i, a in ipairs(q) do q[i] = shell.quote(a) end
    local h = io.popen(("(sleep 0.5; printf 'R\\n'; sleep 0.5; printf 'a1 LOGIN alice secret\\na2 LOGOUT\\n'; sleep 2) 2>/dev/null "
      .. "| timeout 10 %s 2>&1"):format(table.concat(q, " ")))
    local out = h:read("*a")
    h:close()
    assert.matches("RENEGOTIATING", out)
    assert.is_true(px:alive())
    -- either refused (the session goes on) or the connection closed; never a crash
    local c = tls.client { port = px.port, cafile = C7.ca, sni = "mail.test" }
    finally(function() c:close() end)
    assert.matches("^%* OK", c:line())
    if out:find("a1 OK", 1, true) then assert.matches("a2 OK", out) end
  end)

  it("a client that rejects postern's certificate (fatal alert) is logged at info", function()
    local finally = collect(finally)
    local C8 = certs_helper.get()
    local px = testing.start {
      policy_source = "return { authenticate = function() return nil, 'no' end }",
      config = { tls = { certificate = C8.untrusted, key = C8.untrusted_key },
        listen = { { protocol = "imap", tls = true } } },
    }
    finally(function() px:stop() end)
    local raw = testing.client { port = px.port }
    local _, cport = raw.sock:getsockname()
    local ok, err = tls.try_starttls(raw, { cafile = C8.ca })
    raw:close()
    assert.is_nil(ok)
    assert.matches("certificate verify failed", err)
    px:wait_log("client: 127%.0%.0%.1:" .. cport .. ".*$")
    local line = px:wait_log("TLS.*client: 127%.0%.0%.1:" .. cport .. ",")
    assert.matches("%[info%]", line)
  end)
end)
