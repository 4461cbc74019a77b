-- nginx auth_http compatibility, end to end for what only real connections
-- carry: the Auth-SSL-* headers of a TLS client with a certificate (checked
-- against OpenSSL's own rendering, which is what nginx sends: RFC 2253
-- names, upper-case hex serial, lower-case SHA-1 fingerprint, the PEM
-- %-escaped), and the Proxy-Protocol-* headers of a listener behind a load
-- balancer.
local testing = require "postern.testing"
local certs = require "helpers.certs"
local tls = require "helpers.tls"
local shell = require "helpers.shell"

local function openssl_x509(path, what)
  local h = assert(io.popen("openssl x509 -in " .. shell.quote(path) .. " -noout -nameopt RFC2253 " .. what))
  local out = h:read("*a")
  h:close()
  return (out:gsub("\n$", ""))
end
local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

describe("postern.auth_http on real TLS and PROXY protocol connections", function()
  local C, backend, auth, proxy, tls_port, pp_port

  setup(function()
    C = certs.get()
    backend = testing.mock_imap { name = "imap-a" }
    auth = testing.mock_http {
      name = "auth",
      handler = ([[
        return function(req)
          return { headers = { { "Auth-Status", "OK" }, { "Auth-Server", "127.0.0.1" },
                               { "Auth-Port", "%d" } } }
        end
      ]]):format(backend.port),
    }
    tls_port, pp_port = testing.free_port(), testing.free_port()
    proxy = testing.start {
      policy_source = ([[
        return { authenticate = require("postern.auth_http").new { url = %q, pass_client_cert = true } }
      ]]):format(auth:url()),
      config = {
        tls = { certificate = C.server, key = C.server_key },
        listen = {
          { address = "127.0.0.1:" .. tls_port, protocol = "imap", tls = true,
            verify_client = "optional", client_ca = C.ca },
          { address = "127.0.0.1:" .. pp_port, protocol = "imap", proxy_protocol = true },
        },
      },
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if auth then auth:stop() end
    if backend then backend:stop() end
  end)

  -- c (connected, not yet greeted) logs in and leaves; the auth server's request for it
  local function request_for(c)
    local before = #auth:requests()
    c:expect("^%* OK")
    assert.matches("^a1 OK", c:command("a1", "LOGIN alice secret"))
    c:close()
    local reqs = auth:wait_requests(before + 1)
    return reqs[#reqs]
  end

  it("sends the client certificate's fields as nginx renders them with OpenSSL", function()
    local h = request_for(tls.client { port = tls_port, cafile = C.ca, sni = "mail.test",
                                       certificate = C.client, key = C.client_key }).h
    assert.equals("on", h["auth-ssl"])
    assert.equals("TLSv1.2", h["auth-ssl-protocol"])
    assert.equals("SUCCESS", h["auth-ssl-verify"])
    assert.equals(openssl_x509(C.client, "-subject"):match("^subject=(.*)$"), h["auth-ssl-subject"])
    assert.equals(openssl_x509(C.client, "-issuer"):match("^issuer=(.*)$"), h["auth-ssl-issuer"])
    assert.equals(openssl_x509(C.client, "-serial"):match("^serial=(.*)$"), h["auth-ssl-serial"])
    local fp = openssl_x509(C.client, "-fingerprint -sha1"):match("=(.*)$"):gsub(":", ""):lower()
    assert.equals(fp, h["auth-ssl-fingerprint"])
    -- the PEM, escaped as nginx does (newlines and spaces as %0A, %20)
    local pem = read_file(C.client):match("%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-.-%-%-%-%-%-END CERTIFICATE%-%-%-%-%-\n")
    local escaped = pem:gsub("[%z\1-\32%%]", function(ch) return ("%%%02X"):format(ch:byte()) end)
    assert.equals(escaped, h["auth-ssl-cert"])
  end)

  it("sends Auth-SSL-Verify: NONE and no certificate fields for a client without one", function()
    local h = request_for(tls.client { port = tls_port, cafile = C.ca, sni = "mail.test" }).h
    assert.equals("on", h["auth-ssl"])
    assert.equals("NONE", h["auth-ssl-verify"])
    assert.is_nil(h["auth-ssl-subject"])
    assert.is_nil(h["auth-ssl-fingerprint"])
    assert.is_nil(h["auth-ssl-cert"])
  end)

  it("sends the PROXY header's addresses as Client-IP and Proxy-Protocol-*, after Client-IP", function()
    local c = testing.client { port = pp_port }
    c:send("PROXY TCP4 203.0.113.9 198.51.100.1 5555 143\r\n")
    local req = request_for(c)
    assert.equals("203.0.113.9", req.h["client-ip"])
    local names = {}
    for i, e in ipairs(req.headers) do names[e[1]] = i end
    assert.equals("203.0.113.9", req.h["proxy-protocol-addr"])
    assert.equals("5555", req.h["proxy-protocol-port"])
    assert.equals("198.51.100.1", req.h["proxy-protocol-server-addr"])
    assert.equals("143", req.h["proxy-protocol-server-port"])
    assert.is_true(names["Client-IP"] < names["Proxy-Protocol-Addr"])
    assert.is_nil(req.h["auth-ssl"])
  end)
end)
