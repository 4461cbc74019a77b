-- ManageSieve (RFC 5804), the fourth protocol: postern's side before
-- login (capabilities, NOOP, LOGOUT, STARTTLS, AUTHENTICATE with strings
-- and literals, refusals) with a line client, and the upstream login
-- against an upstream the spec scripts line by line. Against a real
-- Dovecot Pigeonhole and sieve-connect: spec/compat/sieve_dovecot_spec.lua.
local testing = require "postern.testing"
local scene = require "helpers.scene"
local certs_helper = require "helpers.certs"
local tls = require "helpers.tls"

local function b64(s)
  return (require "mime").b64(s)
end

-- A policy: alice/secret goes to ROUTE (filled in per test), bob is
-- refused, carol gets a temporary failure; every hook logs s.protocol.
local POLICY = [[
local route = %s
return {
  authenticate = function(s)
    postern.log("info", "policy saw protocol=", s.protocol, " user=", s.user, " mechanism=", s.mechanism)
    if s.user == "alice" and s:check_password("secret") then return route end
    if s.user == "carol" then return nil, { message = "Backend busy", temporary = true } end
    return nil, "Invalid login"
  end,
}
]]

local function start(sc, route, config)
  config = config or {}
  config.listen = config.listen or { { protocol = "sieve" } }
  config.server_name = "sieve.test"
  local p = testing.start {
    policy_source = "local postern = require 'postern'\n" .. POLICY:format(testing.serialize(route or false)),
    config = config,
  }
  sc.stops[#sc.stops + 1] = function() p:stop() end
  return p
end

-- the capability lines up to the OK that ends them
local function capabilities(c)
  local caps = {}
  while true do
    local l = c:line()
    if l:match("^OK") then return caps, l end
    local name, value = l:match('^"([^"]+)" "(.*)"$')
    name = name or l:match('^"([^"]+)"$')
    assert(name, "not a capability line: " .. l)
    caps[name] = value or true
  end
end

local function client(sc, p, opts)
  opts = opts or {}
  opts.port = opts.port or p.port
  local c = testing.client(opts)
  sc.stops[#sc.stops + 1] = function() c:close() end
  return c
end

describe("ManageSieve before login #sieve", function()
  it("greets with its capabilities (SASL, VERSION, the SIEVE extensions) and OK", function()
    local sc = scene.new(finally)
    local p = start(sc)
    local c = client(sc, p)
    local caps, ok = capabilities(c)
    assert.equal('OK "sieve.test ready"', ok)
    assert.equal("PLAIN LOGIN", caps.SASL)
    assert.equal("1.0", caps.VERSION)
    assert.equal("postern", caps.IMPLEMENTATION)
    assert.matches("fileinto", caps.SIEVE)
    assert.is_nil(caps.STARTTLS)
  end)

  it("answers CAPABILITY, NOOP with and without a tag, and LOGOUT", function()
    local sc = scene.new(finally)
    local p = start(sc)
    local c = client(sc, p)
    capabilities(c)
    c:send("capability\r\n")
    local caps, ok = capabilities(c)
    assert.equal('OK "Capability completed"', ok)
    assert.equal("PLAIN LOGIN", caps.SASL)
    c:send("NOOP\r\n")
    assert.equal('OK "NOOP completed"', c:line())
    c:send('NOOP "resync \\"1\\""\r\n')
    assert.equal('OK (TAG "resync \\"1\\"") "Done"', c:line()) -- RFC 5804 §2.11
    c:send("NOOP {3+}\r\nabc\r\n")
    assert.equal('OK (TAG "abc") "Done"', c:line())
    c:send("LOGOUT\r\n")
    assert.equal('OK "Logout completed"', c:line())
    assert.is_true(c:closed(3))
  end)

  it("says NO to commands that need a login, and drops the client after max_errors", function()
    local sc = scene.new(finally)
    local p = start(sc, nil, { max_errors = 3 })
    local c = client(sc, p)
    capabilities(c)
    c:send('PUTSCRIPT "s" {5+}\r\nkeep;\r\n')
    assert.matches('^NO "Unknown command', c:line())
    c:send("AUTHENTICATE PLAIN\r\n") -- the mechanism must be a string
    assert.matches('^NO "Syntax: AUTHENTICATE', c:line())
    c:send("LISTSCRIPTS\r\n")
    assert.matches("^NO", c:line())
    assert.equal('BYE "Too many invalid commands"', c:line())
    assert.is_true(c:closed(3))
  end)

  it("takes the initial response as a quoted string or a literal, and tells the policy s.protocol == \"sieve\"", function()
    local sc = scene.new(finally)
    local up = sc:raw_upstream()
    local p = start(sc, { host = "127.0.0.1", port = up.port })
    local c = client(sc, p)
    capabilities(c)
    c:send(('AUTHENTICATE "PLAIN" {%d+}\r\n%s\r\n'):format(#b64("\0alice\0secret"), b64("\0alice\0secret")))
    up:accept()
    up:send('"IMPLEMENTATION" "upstream"\r\n"SASL" "PLAIN"\r\nOK "ready"\r\n')
    assert.equal('AUTHENTICATE "PLAIN" "' .. b64("\0alice\0secret") .. '"', up:line())
    up:send('OK "Logged in."\r\n')
    assert.equal('OK "Logged in."', c:line())
    -- relayed from here
    c:send("LISTSCRIPTS\r\n")
    assert.equal("LISTSCRIPTS", up:line())
    up:send('"s" ACTIVE\r\nOK "Listscripts completed."\r\n')
    assert.equal('"s" ACTIVE', c:line())
    assert.truthy(p:wait_log("policy saw protocol=sieve user=alice mechanism=plain", 3))
  end)

  it("runs the exchange without an initial response: an empty challenge, then the client's string", function()
    local sc = scene.new(finally)
    local p = start(sc)
    local c = client(sc, p)
    capabilities(c)
    c:send('AUTHENTICATE "PLAIN"\r\n')
    assert.equal('""', c:line())
    c:send('"' .. b64("\0bob\0nope") .. '"\r\n')
    assert.equal('NO "Invalid login"', c:line())
    -- LOGIN, with its two challenges, and "*" to give up
    c:send('AUTHENTICATE "LOGIN"\r\n')
    assert.equal('"' .. b64("Username:") .. '"', c:line())
    c:send('"*"\r\n')
    assert.equal('NO "Authentication cancelled"', c:line())
    c:send('AUTHENTICATE "PLAIN" "not base64!"\r\n')
    assert.equal('NO "Invalid base64 data"', c:line())
    c:send('AUTHENTICATE "CRAM-MD5"\r\n')
    assert.equal('NO "Unsupported authentication mechanism"', c:line())
  end)

  it("refuses with TRYLATER when the policy's failure is temporary", function()
    local sc = scene.new(finally)
    local p = start(sc)
    local c = client(sc, p)
    capabilities(c)
    c:send('AUTHENTICATE "PLAIN" "' .. b64("\0carol\0x") .. '"\r\n')
    assert.equal('NO (TRYLATER) "Backend busy"', c:line())
  end)

  it("passes the upstream's NO on, and the client may try again", function()
    local sc = scene.new(finally)
    local up = sc:raw_upstream()
    local p = start(sc, { host = "127.0.0.1", port = up.port })
    local c = client(sc, p)
    capabilities(c)
    c:send('AUTHENTICATE "PLAIN" "' .. b64("\0alice\0secret") .. '"\r\n')
    up:accept()
    up:send('"SASL" "PLAIN"\r\nOK "ready"\r\n')
    up:line()
    up:send('NO "Authentication failed."\r\n')
    assert.equal('NO "Authentication failed."', c:line())
    c:send("NOOP\r\n")
    assert.equal('OK "NOOP completed"', c:line())
  end)

  it("fails over to a temporary NO when the upstream greets with BYE", function()
    local sc = scene.new(finally)
    local up = sc:raw_upstream()
    local p = start(sc, { host = "127.0.0.1", port = up.port })
    local c = client(sc, p)
    capabilities(c)
    c:send('AUTHENTICATE "PLAIN" "' .. b64("\0alice\0secret") .. '"\r\n')
    up:accept()
    up:send('BYE "Server shutting down"\r\n')
    assert.matches('^NO %(TRYLATER%)', c:line())
  end)

  it("relays a whole session to the test kit's mock_sieve: put, list and get a script", function()
    local sc = scene.new(finally)
    local m = testing.mock_sieve { name = "sieve-a", users = { alice = "secret" } }
    sc.stops[#sc.stops + 1] = function() m:stop() end
    local p = start(sc, { host = "127.0.0.1", port = m.port })
    local c = client(sc, p)
    capabilities(c)
    c:send('AUTHENTICATE "PLAIN" "' .. b64("\0alice\0secret") .. '"\r\n')
    assert.equal('OK "Logged in."', c:line())
    c:send('PUTSCRIPT "vacation" {7+}\r\nkeep;\r\n\r\nSETACTIVE "vacation"\r\nLISTSCRIPTS\r\nGETSCRIPT "vacation"\r\n')
    assert.equal('OK "Putscript completed."', c:line())
    assert.equal('OK "Setactive completed."', c:line())
    assert.equal('"vacation" ACTIVE', c:line())
    assert.equal('OK "Listscripts completed."', c:line())
    assert.equal("{7}", c:line())
    assert.equal("keep;", c:line())
    assert.equal("", c:line())
    assert.equal('OK "Getscript completed."', c:line())
    assert.truthy(m:wait_for("^AUTH alice secret plain$"))
  end)

  it("announces the configured sieve_capabilities", function()
    local sc = scene.new(finally)
    local p = start(sc, nil, { sieve_capabilities = { "IMPLEMENTATION Example Sieve", "SIEVE fileinto vacation",
                                                      "MAXREDIRECTS 4" } })
    local c = client(sc, p)
    local caps = capabilities(c)
    assert.equal("Example Sieve", caps.IMPLEMENTATION)
    assert.equal("fileinto vacation", caps.SIEVE)
    assert.equal("4", caps.MAXREDIRECTS)
    assert.is_nil(caps.NOTIFY)
  end)
end)

describe("ManageSieve with TLS #sieve #tls", function()
  local C

  setup(function() C = certs_helper.get() end)

  it("offers STARTTLS, and after the handshake sends its capabilities again, without it", function()
    local sc = scene.new(finally)
    local p = start(sc, nil, { tls = { certificate = C.server, key = C.server_key },
                               listen = { { protocol = "sieve", starttls = "on" } } })
    local c = client(sc, p)
    local caps = capabilities(c)
    assert.is_true(caps.STARTTLS)
    assert.equal("PLAIN LOGIN", caps.SASL)
    c:send("STARTTLS\r\n")
    assert.equal('OK "Begin TLS negotiation now"', c:line())
    tls.starttls(c, { cafile = C.ca, sni = "mail.test" })
    local after, ok = capabilities(c) -- RFC 5804 §2.2: unasked
    assert.equal('OK "TLS negotiation successful"', ok)
    assert.is_nil(after.STARTTLS)
    assert.equal("PLAIN LOGIN", after.SASL)
    c:send("STARTTLS\r\n")
    assert.equal('NO "TLS is already active"', c:line())
  end)

  it("with starttls = \"only\": an empty SASL list and ENCRYPT-NEEDED before TLS", function()
    local sc = scene.new(finally)
    local p = start(sc, nil, { tls = { certificate = C.server, key = C.server_key },
                               listen = { { protocol = "sieve", starttls = "only" } } })
    local c = client(sc, p)
    local caps = capabilities(c)
    assert.equal("", caps.SASL) -- RFC 5804 §1.7: empty only beside STARTTLS
    assert.is_true(caps.STARTTLS)
    c:send('AUTHENTICATE "PLAIN" "' .. b64("\0alice\0secret") .. '"\r\n')
    assert.equal('NO (ENCRYPT-NEEDED) "Use STARTTLS first"', c:line())
    c:send("STARTTLS\r\n")
    c:line()
    tls.starttls(c, { cafile = C.ca, sni = "mail.test" })
    local after = capabilities(c)
    assert.equal("PLAIN LOGIN", after.SASL)
  end)

  it("logs in to an upstream over STARTTLS, reading the capabilities it sends again", function()
    local sc = scene.new(finally)
    local up = sc:raw_upstream()
    local p = start(sc, { host = "127.0.0.1", port = up.port, tls = "starttls", sni = "mail.test" },
                    { tls = { certificate = C.server, key = C.server_key, upstream_ca = C.ca } })
    local c = client(sc, p)
    capabilities(c)
    c:send('AUTHENTICATE "PLAIN" "' .. b64("\0alice\0secret") .. '"\r\n')
    up:accept()
    up:send('"SASL" "PLAIN"\r\n"STARTTLS"\r\nOK "ready"\r\n')
    assert.equal("STARTTLS", up:line())
    up:send('OK "Begin TLS negotiation now."\r\n')
    local ssl = require "ssl"
    local s = assert(ssl.wrap(up.s, { mode = "server", protocol = "any", certificate = C.server, key = C.server_key }))
    s:settimeout(5)
    assert(s:dohandshake())
    assert(s:send('"SASL" "PLAIN"\r\nOK "TLS negotiation successful."\r\n'))
    assert.equal('AUTHENTICATE "PLAIN" "' .. b64("\0alice\0secret") .. '"', s:receive("*l"))
    assert(s:send('OK "Logged in."\r\n'))
    assert.equal('OK "Logged in."', c:line())
    s:close()
  end)
end)

describe("ManageSieve configuration #sieve", function()
  it("postern -t takes a listener on port 4190 as ManageSieve, with a sieve_capabilities list", function()
    local ok, out = testing.check_config {
      policy = testing.root .. "/scripts/static_users.lua",
      sieve_capabilities = { "IMPLEMENTATION Example", "SIEVE fileinto" },
      listen = { { address = "127.0.0.1:4190" } },
    }
    assert.is_true(ok, out)
    assert.matches("configuration ok", out)
  end)

  it("postern -t refuses a mechanism ManageSieve cannot offer", function()
    local ok, out = testing.check_config {
      policy = testing.root .. "/scripts/static_users.lua",
      listen = { { address = "127.0.0.1:4190", protocol = "sieve", auth = { "apop" } } },
    }
    assert.is_false(ok)
    assert.matches('listen%[1%]%.auth%[1%]: "apop" is not a mechanism sieve offers here', out)
  end)
end)
