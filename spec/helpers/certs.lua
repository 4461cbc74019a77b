-- helpers.certs: a throw-away test PKI made with the openssl CLI.
--
--   local certs = require "helpers.certs"
--   local c = certs.get()      -- made once per busted run (same Lua state), then reused
--   c.ca            CA certificate ("CN=Postern Test CA"), c.ca_key
--   c.server        leaf for mail.test, SANs mail.test, localhost, IP 127.0.0.1 (signed by the CA)
--   c.server_key
--   c.org           leaf for mail.example.org (SNI), c.org_key
--   c.wild          leaf for *.example.net (wildcard SNI), c.wild_key
--   c.client        client certificate "CN=client1,O=Postern Tests" (signed by the CA, clientAuth), c.client_key
--   c.untrusted     self-signed leaf that also says mail.test/localhost (not signed by the CA), c.untrusted_key
--   c.expired       leaf for mail.test signed by the CA, valid 2020-01-01 .. 2021-01-01, c.expired_key
--   c.wrongname     leaf for other.test signed by the CA, c.wrongname_key
--   c.bundle        server then CA, one file (a chain)
--   c.dir           the directory (under /tmp, removed when the Lua state closes)
--   c.subject(path) -> "subject=CN = mail.test" style text from openssl x509 -noout -subject
--
-- Keys are RSA 2048 (PKCS#8 PEM); everything takes ~1 s to make.
local _M = {}

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  return out
end

local function write_file(path, content)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
end

-- run a shell command; error with its output when it fails
local function must(cmd)
  local out = capture("(" .. cmd .. ") 2>&1; echo \"__RC=$?\"")
  local rc = tonumber(out:match("__RC=(%d+)%s*$"))
  if rc ~= 0 then
    error(("helpers.certs: command failed (%s): %s\n%s"):format(tostring(rc), cmd,
      (out:gsub("__RC=%d+%s*$", ""))), 3)
  end
  return (out:gsub("__RC=%d+%s*$", ""))
end

local cached

local function make()
  local dir = capture("mktemp -d /tmp/postern-certs.XXXXXX"):gsub("%s+$", "")
  assert(dir:match("^/tmp/postern%-certs%."), "mktemp failed")
  must("chmod 0755 " .. sh_quote(dir))  -- dovecot's processes read these too
  local c = { dir = dir }
  local function p(name) return dir .. "/" .. name end

  local function key(name)
    must(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s"):format(sh_quote(p(name .. ".key"))))
    must("chmod 0644 " .. sh_quote(p(name .. ".key")))
    return p(name .. ".key")
  end

  -- extensions file for a leaf
  local function ext(name, lines)
    write_file(p(name .. ".ext"), table.concat(lines, "\n") .. "\n")
    return p(name .. ".ext")
  end

  -- CA
  c.ca_key = key("ca")
  c.ca = p("ca.pem")
  write_file(p("ca.ext"), table.concat({
    "[req]", "distinguished_name = dn", "[dn]",
    "[v3_ca]", "basicConstraints = critical, CA:TRUE", "keyUsage = critical, keyCertSign, cRLSign",
    "subjectKeyIdentifier = hash",
  }, "\n") .. "\n")
  must(("openssl req -x509 -new -key %s -sha256 -days 3650 -subj '/O=Postern Tests/CN=Postern Test CA' "
    .. "-config %s -extensions v3_ca -out %s"):format(sh_quote(c.ca_key), sh_quote(p("ca.ext")), sh_quote(c.ca)))

  local serial = 100
  -- a leaf signed by the CA (or self-signed when self_signed)
  local function leaf(name, subj, exts, opts)
    opts = opts or {}
    local k = key(name)
    local e = ext(name, exts)
    local csr = p(name .. ".csr")
    local crt = p(name .. ".pem")
    if opts.self_signed then
      write_file(e, "[req]\ndistinguished_name = dn\n[dn]\n[v3]\n" .. table.concat(exts, "\n") .. "\n")
      must(("openssl req -x509 -new -key %s -sha256 -days 3650 -subj %s -config %s -extensions v3 -out %s")
        :format(sh_quote(k), sh_quote(subj), sh_quote(e), sh_quote(crt)))
    elseif opts.dates then
      -- `openssl ca` is the one that takes explicit validity dates
      local cadir = p("ca-" .. name)
      must("mkdir -p " .. sh_quote(cadir))
      write_file(cadir .. "/index.txt", "")
      write_file(cadir .. "/serial", ("%04X\n"):format(serial))
      serial = serial + 1
      write_file(cadir .. "/ca.cnf", table.concat({
        "[ca]", "default_ca = tca", "[tca]",
        "dir = " .. cadir, "database = $dir/index.txt", "serial = $dir/serial",
        "new_certs_dir = $dir", "default_md = sha256", "policy = anything",
        "copy_extensions = none", "unique_subject = no",
        "[anything]", "commonName = supplied", "organizationName = optional",
        "[v3]", table.concat(exts, "\n"),
      }, "\n") .. "\n")
      must(("openssl req -new -key %s -subj %s -out %s"):format(sh_quote(k), sh_quote(subj), sh_quote(csr)))
      must(("openssl ca -batch -notext -config %s -extensions v3 -cert %s -keyfile %s -in %s -out %s "
        .. "-startdate %s -enddate %s"):format(sh_quote(cadir .. "/ca.cnf"), sh_quote(c.ca), sh_quote(c.ca_key),
        sh_quote(csr), sh_quote(crt), opts.dates[1], opts.dates[2]))
    else
      must(("openssl req -new -key %s -subj %s -out %s"):format(sh_quote(k), sh_quote(subj), sh_quote(csr)))
      must(("openssl x509 -req -in %s -CA %s -CAkey %s -set_serial %d -days 825 -sha256 -extfile %s -out %s")
        :format(sh_quote(csr), sh_quote(c.ca), sh_quote(c.ca_key), serial, sh_quote(e), sh_quote(crt)))
      serial = serial + 1
    end
    must("chmod 0644 " .. sh_quote(crt))
    c[name] = crt
    c[name .. "_key"] = k
  end

  local server_ext = { "basicConstraints = CA:FALSE", "keyUsage = critical, digitalSignature, keyEncipherment",
    "extendedKeyUsage = serverAuth" }
  local function with(list, more)
    local out = {}
    for _, l in ipairs(list) do out[#out + 1] = l end
    for _, l in ipairs(more) do out[#out + 1] = l end
    return out
  end

  leaf("server", "/O=Postern Tests/CN=mail.test",
    with(server_ext, { "subjectAltName = DNS:mail.test, DNS:localhost, IP:127.0.0.1" }))
  leaf("org", "/O=Postern Tests/CN=mail.example.org",
    with(server_ext, { "subjectAltName = DNS:mail.example.org" }))
  leaf("wild", "/O=Postern Tests/CN=*.example.net",
    with(server_ext, { "subjectAltName = DNS:*.example.net" }))
  leaf("client", "/O=Postern Tests/CN=client1",
    { "basicConstraints = CA:FALSE", "keyUsage = critical, digitalSignature",
      "extendedKeyUsage = clientAuth" })
  leaf("untrusted", "/O=Mallory/CN=mail.test",
    with(server_ext, { "subjectAltName = DNS:mail.test, DNS:localhost, IP:127.0.0.1",
      "extendedKeyUsage = serverAuth, clientAuth" }), { self_signed = true })
  leaf("expired", "/O=Postern Tests/CN=mail.test",
    with(server_ext, { "subjectAltName = DNS:mail.test, DNS:localhost" }),
    { dates = { "20200101000000Z", "20210101000000Z" } })
  leaf("wrongname", "/O=Postern Tests/CN=other.test",
    with(server_ext, { "subjectAltName = DNS:other.test" }))

  c.bundle = p("server-chain.pem")
  must(("cat %s %s > %s"):format(sh_quote(c.server), sh_quote(c.ca), sh_quote(c.bundle)))

  function c.subject(path)
    return (must("openssl x509 -noout -subject -in " .. sh_quote(path)):gsub("%s+$", ""))
  end

  -- remove the directory when the Lua state goes away
  local gc = newproxy(true)
  getmetatable(gc).__gc = function() os.execute("rm -rf " .. sh_quote(dir)) end
  c._gc = gc
  return c
end

-- the test PKI, made on first use
function _M.get()
  if not cached then cached = make() end
  return cached
end

return _M
