-- TLS protocols, ciphers and ECDHE curves towards the client
-- (tls.protocols, tls.ciphers, tls.curves).
local testing = require "postern.testing"
local shell = require "helpers.shell"
local certs_helper = require "helpers.certs"
local tls = require "helpers.tls"
local tl = require "helpers.tls_listeners"
local collect = tl.collect

-- ---- protocols and ciphers -----------------------------------------------------------

describe("TLS protocols and ciphers #tls", function()
  it("`ciphers` limits the suites offered, and s.tls_cipher names the one in use", function()
    local finally = collect(finally)
    local C4 = certs_helper.get()
    local m = testing.mock_imap { name = "b" }
    finally(function() m:stop() end)
    local px = testing.start {
      policy_source = [[
        local postern = require "postern"
        return { authenticate = function(s)
          postern.log("info", "policy: cipher=", tostring(s.tls_cipher), " protocol=", tostring(s.tls_protocol))
          return nil, "no"
        end }
      ]],
      config = { tls = { certificate = C4.server, key = C4.server_key, protocols = "TLSv1.2",
        ciphers = "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256" },
        listen = { { protocol = "imap", tls = true } } },
    }
    finally(function() px:stop() end)
    local c = tls.client { port = px.port, cafile = C4.ca, sni = "mail.test" }
    finally(function() c:close() end)
    assert.equal("ECDHE-RSA-AES128-GCM-SHA256", c.tls_cipher)
    c:line()
    c:command("a1", "LOGIN x y")
    px:wait_log("policy: cipher=TLS%-ECDHE%-RSA%-WITH%-AES%-128%-GCM%-SHA256 protocol=TLSv1%.2")
    -- a client that offers only other suites does not get in
    local out = shell.run { "timeout", "10", "openssl", "s_client", "-connect", "127.0.0.1:" .. px.port,
      "-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305", "-noservername" }
    assert.is_nil(out:find("\nNew, TLSv1%.2"), out)
    assert.is_true(px:alive())
  end)
end)

describe("TLS protocols and ciphers #tls", function()
  local C, proxy

  setup(function()
    C = certs_helper.get()
    proxy = testing.start {
      policy_source = "return { authenticate = function(s) return nil, 'no' end }",
      config = {
        tls = { certificate = C.server, key = C.server_key, protocols = "TLSv1.2",
                ciphers = "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256" },
        listen = { { protocol = "imap", tls = true } },
      },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
  end)

  local function s_client(extra)
    local argv = { "timeout", "10", "openssl", "s_client", "-connect", "127.0.0.1:" .. proxy.port,
                   "-CAfile", C.ca, "-servername", "mail.test", "-ign_eof" }
    for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
    local script = "printf 'a LOGOUT\\r\\n' | " .. table.concat((function()
      local q = {}
      for i, a in ipairs(argv) do q[i] = shell.quote(a) end
      return q
    end)(), " ") .. " 2>&1"
    local p = io.popen(script)
    local out = p:read("*a")
    p:close()
    return out
  end

  it("offers only the configured cipher suite", function()
    local out = s_client()
    assert.matches("Cipher is ECDHE%-RSA%-AES128%-GCM%-SHA256", out)
    assert.matches("%* OK", out)
  end)

  it("refuses a client that only speaks a cipher suite not in the list", function()
    local out = s_client { "-cipher", "ECDHE-RSA-AES256-GCM-SHA384", "-tls1_2" }
    assert.is_nil(out:find("* OK", 1, true), out)
  end)

  it("refuses TLS 1.1 and older (TLS 1.2 at least)", function()
    local out = s_client { "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0" }
    assert.is_nil(out:find("* OK", 1, true), out)
  end)

  it("names an unknown cipher suite when the configuration is checked", function()
    local ok, out = testing.check_config {
      policy = proxy.config.policy,
      tls = { certificate = C.server, key = C.server_key, ciphers = "TLS-NO-SUCH-CIPHER" },
      listen = { { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", tls = true } },
    }
    assert.is_false(ok)
    assert.matches("unknown cipher suite \"TLS%-NO%-SUCH%-CIPHER\"", out)
  end)
end)

-- ---- curves and the default preferences ------------------------------------------------

describe("TLS curves and default preferences #tls", function()
  local C = certs_helper.get()

  -- what openssl s_client reports for one connection, with extra options
  local function negotiate(port, extra)
    local argv = { "timeout", "10", "openssl", "s_client", "-connect", "127.0.0.1:" .. port,
                   "-tls1_2", "-noservername" }
    for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
    return shell.run(argv)
  end

  local function start(tls_conf)
    local t = { certificate = C.server, key = C.server_key }
    for k, v in pairs(tls_conf) do t[k] = v end
    return testing.start {
      policy_source = "return { authenticate = function(s) return nil, 'no' end }",
      config = { tls = t, listen = { { protocol = "imap", tls = true } } },
    }
  end

  local function cpu_has_aes()
    local f = io.open("/proc/cpuinfo")
    local info = f and f:read("*a") or ""
    if f then f:close() end
    return info:find("%saes%s") ~= nil
  end

  it("prefers X25519, then P-256, by default (not mbedTLS's secp521r1)", function()
    local px = start {}
    finally(function() px:stop() end)
    -- a client offering secp521r1 first still gets X25519: the server's order decides
    local out = negotiate(px.port, { "-curves", "secp521r1:secp384r1:prime256v1:X25519" })
    assert.matches("Server Temp Key: X25519", out)
    out = negotiate(px.port, { "-curves", "secp521r1:secp384r1:prime256v1" })
    assert.matches("Server Temp Key: ECDH, prime256v1", out)
    -- and every other curve stays available to clients that have nothing better
    out = negotiate(px.port, { "-curves", "secp521r1" })
    assert.matches("Server Temp Key: ECDH, secp521r1", out)
  end)

  it("prefers AES-GCM when the CPU has AES instructions, ChaCha20-Poly1305 when not", function()
    local px = start {}
    finally(function() px:stop() end)
    local out = negotiate(px.port, { "-cipher", "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256" })
    if cpu_has_aes() then
      assert.matches("Cipher is ECDHE%-RSA%-AES128%-GCM%-SHA256", out)
    else
      assert.matches("Cipher is ECDHE%-RSA%-CHACHA20%-POLY1305", out)
    end
  end)

  it("`curves` sets the ECDHE curves and their order (OpenSSL's names, as nginx's ssl_ecdh_curve)", function()
    local px = start { curves = "secp384r1:prime256v1" }
    finally(function() px:stop() end)
    local out = negotiate(px.port, { "-curves", "X25519:prime256v1:secp384r1" })
    assert.matches("Server Temp Key: ECDH, secp384r1", out)
    -- a client with none of them does not get an ECDHE suite
    out = negotiate(px.port, { "-curves", "X25519", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256" })
    assert.is_nil(out:find("Server Temp Key", 1, true), out)
    assert.is_true(px:alive())
  end)
end)
