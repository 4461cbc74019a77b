-- helpers.tls_listeners: the shared scene of the TLS-towards-clients specs
-- (spec/integration/tls_*_spec.lua and spec/compat/tls_clients_spec.lua):
-- one postern with fifteen listeners (implicit TLS, STARTTLS "on" and
-- "only", plaintext, client certificates optional and required) in front
-- of plaintext mock backends, a policy that logs what it got on one line,
-- and the small helpers the specs share.
--
--   local tl = require "helpers.tls_listeners"
--   describe("TLS towards clients #tls", function()
--     setup(function() local s = tl.start() ... s.C, s.im, s.pm, s.sm, s.p, s.port end)
--     teardown(tl.stop)               -- strict: fails on [alert]/[crit], sanitizer reports
--     after_each(tl.close_clients)
--     ... tl.plain("imap_on"), tl.secure("imaps"), tl.starttls(c), tl.policy_line(user) ...
--   end)
--
-- The test PKI comes from helpers.certs (CA, mail.test, mail.example.org,
-- *.example.net, client1).
local testing = require "postern.testing"
local certs_helper = require "helpers.certs"
local tls = require "helpers.tls"
local mime = require "mime"
-- a required module does not get busted's environment: luassert is the same
-- assert the specs use (read_xecho, ehlo, capa and imap_caps assert)
local assert = require "luassert"

local M = {}

-- busted keeps a single `finally` per test: `local finally = collect(finally)` at
-- the top of a test makes every later finally(fn) add to one list, run last-in first-out
local function collect(real_finally)
  local list = {}
  real_finally(function()
    local first
    for i = #list, 1, -1 do
      local ok, err = pcall(list[i])
      if not ok and not first then first = err end
    end
    if first then error(first, 0) end
  end)
  return function(fn) list[#list + 1] = fn end
end
local HELPERS = testing.root .. "/spec/helpers"

-- the listeners of the shared proxy, by name (the name is not a config key)
local LISTENERS = {
  { "imaps", { protocol = "imap", tls = true } },
  { "pop3s", { protocol = "pop3", tls = true } },
  { "smtps", { protocol = "smtp", tls = true } },
  { "imap_on", { protocol = "imap", starttls = "on" } },
  { "imap_only", { protocol = "imap", starttls = "only" } },
  { "pop3_on", { protocol = "pop3", starttls = "on", auth = { "user", "plain", "apop" } } },
  { "pop3_only", { protocol = "pop3", starttls = "only", auth = { "user", "plain", "apop" } } },
  { "smtp_on", { protocol = "smtp", starttls = "on" } },
  { "smtp_only", { protocol = "smtp", starttls = "only" } },
  { "smtp_none_on", { protocol = "smtp", starttls = "on", auth = { "none" } } },
  { "imap_plain", { protocol = "imap" } },
  { "pop3_plain", { protocol = "pop3" } },
  { "smtp_plain", { protocol = "smtp" } },
  { "cc_optional", { protocol = "imap", tls = true, verify_client = "optional", client_ca = "CA" } },
  { "cc_required", { protocol = "imap", tls = true, verify_client = "on", client_ca = "CA" } },
}

-- The policy logs what it got on one line, then routes by protocol.
local POLICY = [[
local postern = require "postern"
local routes = %s
local function v(x) if x == nil then return "-" end return tostring(x) end
return {
  authenticate = function(s)
    local cc = s.client_cert or {}
    postern.log("info", "policy: |user=", v(s.user), "|tls=", v(s.tls), "|sni=", v(s.sni),
      "|protocol=", v(s.tls_protocol), "|cipher=", v(s.tls_cipher), "|helo=", v(s.helo),
      "|mail_from=", v(s.mail_from), "|cert=", v(cc.subject), "|issuer=", v(cc.issuer),
      "|serial=", v(cc.serial), "|fp=", v(cc.fingerprint), "|")
    if s.user and s.user:match("^slow") then postern.sleep(0.5) end
    if s.mechanism ~= "none" and s.password ~= "secret" then
      return nil, "Invalid login or password"
    end
    return routes[s.protocol]
  end,
}
]]

-- the shared proxy and its backends, set by M.start()
local S = { port = {} }
local n_user = 0

local function uniq(prefix)
  n_user = n_user + 1
  return ("%s-%d"):format(prefix, n_user)
end

-- the policy's line for user u, and one field of it
local function policy_line(u, timeout)
  return S.p:wait_log("policy: |user=" .. u:gsub("%p", "%%%0") .. "|", timeout)
end

local function field(line, name)
  return line:match("|" .. name .. "=([^|]*)|")
end

local function no_policy_call(u)
  return not S.p:log():find("policy: |user=" .. u .. "|", 1, true)
end

local function b64(s) return (mime.b64(s)) end
local b64_ext = b64

local clients = {}
local function track(c) clients[#clients + 1] = c; return c end

local function plain(name, opts)
  opts = opts or {}
  opts.port = S.port[name]
  local c = track(testing.client(opts))
  c.local_port = tonumber((select(2, c.sock:getsockname())))
  return c
end

local function secure(name, opts)
  opts = opts or {}
  opts.port = S.port[name]
  opts.cafile = opts.cafile or S.C.ca
  opts.sni = opts.sni == nil and "mail.test" or opts.sni or nil
  return track(tls.client(opts))
end

local function starttls(c, opts)
  opts = opts or {}
  opts.cafile = opts.cafile or S.C.ca
  opts.sni = opts.sni == nil and "mail.test" or opts.sni or nil
  return tls.starttls(c, opts)
end

-- the local port of a client (to find its log lines)
local function client_port(c)
  if c.local_port then return c.local_port end
  local _, cport = c.sock:getsockname()
  return tonumber(cport)
end

-- read the `* XECHO {n}` answer to `tag XECHO n` without keeping the n bytes
local function read_xecho(c, tag, n, timeout)
  assert.equal("* XECHO {" .. n .. "}", c:line(timeout))
  local deadline = testing.now() + timeout
  local got, all_x = 0, true
  local function take(data)
    local need = n - got
    if #data > need then
      c.buf = data:sub(need + 1) .. c.buf
      data = data:sub(1, need)
    end
    if data:find("[^x]") then all_x = false end
    got = got + #data
  end
  local pending = c.buf
  c.buf = ""
  take(pending)
  while got < n do
    local data, err = c:_recv(deadline)
    if not data then error(("%s after %d of %d bytes"):format(tostring(err), got, n), 2) end
    take(data)
  end
  assert.equal("", c:line(timeout))
  assert.equal(tag .. " OK XECHO completed", c:line(timeout))
  return got, all_x
end

local function ehlo(c, name)
  local code, kw = c:smtp("EHLO " .. (name or "client.test"))
  assert.equal(250, code)
  local set = {}
  for i = 2, #kw do set[kw[i]] = true end
  return set, kw
end

local function has_prefix(set, prefix)
  for k in pairs(set) do
    if k:sub(1, #prefix) == prefix then return true end
  end
  return false
end

-- CAPA lines as a set
local function capa(c)
  local status, lines = c:pop3_multi("CAPA")
  assert.matches("^%+OK", status)
  local set = {}
  for _, l in ipairs(lines) do set[l:match("^(%S+)")] = true end
  return set, lines
end

local function words(s)
  local set = {}
  for w in s:gmatch("%S+") do set[w] = true end
  return set
end

local function imap_caps(c, tag)
  local tagged, untagged = c:command(tag, "CAPABILITY")
  assert.equal(tag .. " OK CAPABILITY completed", tagged)
  assert.equal(1, #untagged)
  return words(untagged[1]:match("^%* CAPABILITY (.*)$"))
end

-- the shared proxy ---------------------------------------------------------------

function M.start()
  S = { port = {} }
  local C = certs_helper.get()
  S.C = C
  local im = testing.mock_imap { name = "imap-backend" }
  local pm = testing.mock_pop3 { name = "pop-backend", big = 1000000 }
  local sm = testing.mock_smtp { name = "mx-backend" }
  local listen = {}
  for i, l in ipairs(LISTENERS) do
    local e = {}
    for k, val in pairs(l[2]) do e[k] = val == "CA" and C.ca or val end
    listen[i] = e
  end
  local p = testing.start {
    policy_source = POLICY:format(testing.serialize {
      imap = { host = "127.0.0.1", port = im.port },
      pop3 = { host = "127.0.0.1", port = pm.port },
      smtp = { host = "127.0.0.1", port = sm.port },
    }),
    config = {
      timeout = 10,
      tls = {
        certificate = C.server, key = C.server_key,
        certificates = {
          ["mail.example.org"] = { certificate = C.org, key = C.org_key },
          ["*.example.net"] = { certificate = C.wild, key = C.wild_key },
        },
      },
      listen = listen,
    },
  }
  for i, l in ipairs(LISTENERS) do S.port[l[1]] = p.ports[i] end
  S.im, S.pm, S.sm, S.p = im, pm, sm, p
  return S
end

function M.stop()
  for _, c in ipairs(clients) do pcall(c.close, c) end
  -- strict: fails on [alert]/[crit], sanitizer reports, a non-zero exit
  if S.p then S.p:stop() end
  if S.im then S.im:stop() end
  if S.pm then S.pm:stop() end
  if S.sm then S.sm:stop() end
  S = { port = {} }
end

function M.close_clients()
  for _, c in ipairs(clients) do pcall(c.close, c) end
  clients = {}
end

M.collect = collect
M.uniq = uniq
M.policy_line = policy_line
M.field = field
M.no_policy_call = no_policy_call
M.b64 = b64
M.track = track
M.plain = plain
M.secure = secure
M.starttls = starttls
M.client_port = client_port
M.read_xecho = read_xecho
M.ehlo = ehlo
M.has_prefix = has_prefix
M.capa = capa
M.words = words
M.imap_caps = imap_caps
M.b64_ext = b64_ext
M.HELPERS = HELPERS

return M
