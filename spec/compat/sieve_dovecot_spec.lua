-- ManageSieve through postern to a real Dovecot Pigeonhole (Debian's
-- dovecot-managesieved), with a real client: sieve-connect, run
-- unattended (--passwordfd). Uploads, lists, activates and fetches a
-- script, over plaintext and over STARTTLS on both legs.
local testing = require "postern.testing"
local shell = require "helpers.shell"
local certs_helper = require "helpers.certs"
local dovecot = require "helpers.dovecot"

local SCRIPT = 'require "fileinto";\nif header :contains "subject" "postern" { fileinto "Postern"; }\n'

describe("ManageSieve in front of Dovecot with sieve-connect #sieve #dovecot", function()
  local C, d, p, dir, plain_port, tls_port

  setup(function()
    C = certs_helper.get()
    d = dovecot.start { users = { alice = "secret" }, sieve = true, ssl = { cert = C.server, key = C.server_key } }
    plain_port, tls_port = testing.free_port(), testing.free_port()
    p = testing.start {
      policy_source = ([[
        local postern = require "postern"
        return {
          authenticate = function(s)
            postern.log("info", "sieve policy: protocol=", s.protocol, " user=", s.user)
            -- Dovecot checks the password itself; the STARTTLS listener
            -- logs in upstream with STARTTLS too
            local tls = s.local_port == %d and "starttls" or "off"
            return { host = "127.0.0.1", port = %d, tls = tls, sni = "mail.test" }
          end,
        }
      ]]):format(tls_port, d.sieve_port),
      config = {
        tls = { certificate = C.server, key = C.server_key, upstream_ca = C.ca },
        listen = {
          { address = "127.0.0.1:" .. plain_port, protocol = "sieve" },
          { address = "127.0.0.1:" .. tls_port, protocol = "sieve", starttls = "only" },
        },
      },
    }
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. shell.quote(dir)))
    local f = assert(io.open(dir .. "/script.sieve", "w"))
    f:write(SCRIPT)
    f:close()
    f = assert(io.open(dir .. "/password", "w"))
    f:write("secret\n")
    f:close()
    f = assert(io.open(dir .. "/wrong", "w"))
    f:write("nope\n")
    f:close()
  end)

  teardown(function()
    if p then p:stop() end
    if d then d:stop() end
    if dir then os.execute("rm -rf " .. shell.quote(dir)) end
  end)

  -- sieve-connect with the password on fd 3; tls: "plain" or "verify"
  local function sieve_connect(port, tls, password_file, ...)
    local argv = { "sieve-connect", "--server", "127.0.0.1", "--port", tostring(port), "--user", "alice",
                   "--passwordfd", "3" }
    if tls == "plain" then
      argv[#argv + 1] = "--clearchan"
    else
      argv[#argv + 1] = "--tlscafile"
      argv[#argv + 1] = C.ca
    end
    for _, a in ipairs { ... } do argv[#argv + 1] = a end
    local q = {}
    for i, a in ipairs(argv) do q[i] = shell.quote(a) end
    return shell.run { "sh", "-c", "exec timeout 20 " .. table.concat(q, " ") .. " 3<" .. shell.quote(password_file)
      .. " </dev/null" }
  end

  local function dovecot_log()
    local f = io.open(d.log, "r")
    local s = f and f:read("*a") or ""
    if f then f:close() end
    return s
  end

  it("uploads, lists, activates and fetches a script through postern", function()
    local pw = dir .. "/password"
    local out, rc = sieve_connect(plain_port, "plain", pw, "--upload", "--localsieve", dir .. "/script.sieve",
                                  "--remotesieve", "postern-test")
    assert.equal(0, rc, out)
    out, rc = sieve_connect(plain_port, "plain", pw, "--activate", "--remotesieve", "postern-test")
    assert.equal(0, rc, out)
    out, rc = sieve_connect(plain_port, "plain", pw, "--list")
    assert.equal(0, rc, out)
    assert.matches('"postern%-test"%s+ACTIVE', out) -- the listing is the upstream's, relayed
    out, rc = sieve_connect(plain_port, "plain", pw, "--download", "--remotesieve", "postern-test",
                            "--localsieve", "-")
    assert.equal(0, rc, out)
    assert.equal(SCRIPT, out)
    -- the script is Dovecot's, on its disk, and active
    local f = assert(io.open(d.dir .. "/home/alice/sieve/postern-test.sieve", "r"))
    assert.equal(SCRIPT, f:read("*a"))
    f:close()
    assert.matches("postern%-test", shell.run { "readlink", d.dir .. "/home/alice/.dovecot.sieve" })
    assert.truthy(p:wait_log("sieve policy: protocol=sieve user=alice", 3))
  end)

  it("speaks STARTTLS to the client and to Dovecot, verified on both legs", function()
    local out, rc = sieve_connect(tls_port, "verify", dir .. "/password", "--list")
    assert.equal(0, rc, out)
    assert.truthy(p:wait_log("TLS handshake done", 3))
    -- Dovecot saw a TLS login from postern
    local logins = 0
    for l in dovecot_log():gmatch("[^\n]+") do
      if l:find("managesieve-login: Info: Login: user=<alice>", 1, true) and l:find("TLS", 1, true) then
        logins = logins + 1
      end
    end
    assert.is_true(logins >= 1, dovecot_log())
  end)

  it("passes Dovecot's refusal of a wrong password on to sieve-connect", function()
    local out, rc = sieve_connect(plain_port, "plain", dir .. "/wrong", "--list")
    assert.is_not.equal(0, rc)
    assert.matches("[Aa]uthentication failed", out)
    assert.truthy(p:wait_log("upstream refused login", 3))
  end)
end)
