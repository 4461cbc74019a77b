-- `postern -t` and the TLS files of the configuration.
local testing = require "postern.testing"
local shell = require "helpers.shell"
local certs_helper = require "helpers.certs"

-- ---- postern -t ----------------------------------------------------------------------

describe("postern -t and TLS files #tls", function()
  local C3, dir
  setup(function()
    C3 = certs_helper.get()
    dir = (io.popen("mktemp -d /tmp/postern-tcheck.XXXXXX"):read("*l"))
    local f = io.open(dir .. "/policy.lua", "w")
    f:write("return { authenticate = function() return nil, 'no' end }\n")
    f:close()
    f = io.open(dir .. "/garbage.pem", "w")
    f:write("this is not a certificate\n")
    f:close()
    os.execute("mkdir " .. shell.quote(dir .. "/a-directory.pem"))
  end)
  teardown(function() if dir then os.execute("rm -rf " .. shell.quote(dir)) end end)

  local function conf(tls_conf, listener)
    return {
      policy = dir .. "/policy.lua",
      error_log = dir .. "/check.log",
      tls = tls_conf,
      listen = { listener or { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", tls = true } },
    }
  end

  it("accepts a good pair (and SNI certificates, a client CA)", function()
    local ok, out = testing.check_config(conf({ certificate = C3.server, key = C3.server_key,
      certificates = { ["mail.example.org"] = { certificate = C3.org, key = C3.org_key } } },
      { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", tls = true,
        verify_client = "optional", client_ca = C3.ca }))
    assert.is_true(ok, out)
    assert.matches("configuration ok", out)
  end)

  local bad = {
    { "a missing certificate file", function() return { certificate = dir .. "/nope.pem", key = C3.server_key } end,
      "nope%.pem" },
    { "a missing key file", function() return { certificate = C3.server, key = dir .. "/nope.key" } end,
      "nope%.key" },
    { "a certificate that is a directory", function()
      return { certificate = dir .. "/a-directory.pem", key = C3.server_key } end, "a%-directory%.pem" },
    { "a file that is not PEM", function() return { certificate = dir .. "/garbage.pem", key = C3.server_key } end,
      "garbage%.pem" },
    { "a key that does not match the certificate", function()
      return { certificate = C3.server, key = C3.org_key } end, "does not match" },
    { "an SNI certificate with a wrong key", function()
      return { certificate = C3.server, key = C3.server_key,
        certificates = { ["mail.example.org"] = { certificate = C3.org, key = C3.server_key } } } end,
      "does not match" },
  }
  for _, case in ipairs(bad) do
    it("reports " .. case[1] .. " under the key path \"tls\"", function()
      local ok, out = testing.check_config(conf(case[2]()))
      assert.is_false(ok, out)
      assert.matches("tls", out)
      assert.matches(case[3], out)
      assert.is_nil(out:find("configuration ok", 1, true))
    end)
  end

  for _, case in ipairs {
    { "protocols older than TLSv1.2", { protocols = "TLSv1.1" }, "protocols" },
    { "an unknown cipher suite", { ciphers = "TLS-NO-SUCH-CIPHER" }, "TLS%-NO%-SUCH%-CIPHER" },
    { "a too short ticket_lifetime", { ticket_lifetime = 1 }, "tls%.ticket_lifetime" },
    { "an unknown curve", { curves = "X25519:secp999r1" }, "unknown curve \"secp999r1\"" },
    { "curves that are not a string", { curves = { "X25519" } }, "tls%.curves" },
  } do
    it("reports " .. case[1], function()
      local t = { certificate = C3.server, key = C3.server_key }
      for k, v in pairs(case[2]) do t[k] = v end
      local ok, out = testing.check_config(conf(t))
      assert.is_false(ok, out)
      assert.matches(case[3], out)
    end)
  end

  it("a TLS or STARTTLS listener without a certificate names the listener", function()
    local ok, out = testing.check_config(conf(nil))
    assert.is_false(ok, out)
    assert.matches("listen%[1%]%.tls", out)
    ok, out = testing.check_config(conf(nil, { address = "127.0.0.1:" .. testing.free_port(), protocol = "pop3",
      starttls = "only" }))
    assert.is_false(ok, out)
    assert.matches("listen%[1%]%.starttls", out)
  end)

  it("verify_client without client_ca, and an unreadable upstream_ca, are reported", function()
    local ok, out = testing.check_config(conf({ certificate = C3.server, key = C3.server_key },
      { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", tls = true, verify_client = "on" }))
    assert.is_false(ok, out)
    assert.matches("verify_client", out)
    ok, out = testing.check_config(conf({ certificate = C3.server, key = C3.server_key,
      upstream_ca = dir .. "/nope-ca.pem" }))
    assert.is_false(ok, out)
    assert.matches("tls%.upstream_ca", out)
  end)

  it("a client_ca or an upstream_ca that is a directory is reported, without a crash", function()
    local ok, out = testing.check_config(conf({ certificate = C3.server, key = C3.server_key },
      { address = "127.0.0.1:" .. testing.free_port(), protocol = "imap", tls = true, verify_client = "on",
        client_ca = dir .. "/a-directory.pem" }))
    assert.is_false(ok, out)
    assert.matches("a%-directory%.pem", out)
    assert.is_nil(out:find("Sanitizer", 1, true), out)
    ok, out = testing.check_config(conf({ certificate = C3.server, key = C3.server_key,
      upstream_ca = dir .. "/a-directory.pem" }))
    assert.is_false(ok, out)
    assert.matches("upstream_ca", out)
    assert.is_nil(out:find("Sanitizer", 1, true), out)
  end)

  it("an upstream_ca that is not a PEM CA file is reported (not only at the first TLS upstream)", function()
    local ok, out = testing.check_config(conf({ certificate = C3.server, key = C3.server_key,
      upstream_ca = dir .. "/garbage.pem" }))
    assert.is_false(ok, "postern -t accepted a garbage upstream_ca: " .. out)
    assert.matches("upstream_ca", out)
  end)
end)
