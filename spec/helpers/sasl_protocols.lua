-- helpers.sasl_protocols: what spec/integration/sasl_spec.lua needs to run the same SASL
-- exchanges over IMAP, POP3 and SMTP.
--
--   local sp = require "helpers.sasl_protocols"
--   local P = sp.protocols.smtp
--   local c = testing.client { port = proxy.port }
--   P.greet(c)                          -- greeting (and EHLO for SMTP)
--   P.auth(c, "PLAIN", b64)             -- "a1 AUTHENTICATE PLAIN x" / "AUTH PLAIN x"
--   local kind, data = P.answer(c)      -- "challenge", base64 text  |  "final", reply line
--   P.respond(c, "")                    -- a continuation line
--   assert.matches(P.ok, data)          -- P.ok, P.failed, P.temporary, P.cancelled,
--                                       -- P.bad_base64, P.bad_message, P.unsupported
--   P.mechanisms(c)                     -- { PLAIN = true, ... } as advertised
--   P.noop(c)                           -- a command sent after login (relayed);
--                                       -- P.noop_record matches its mock record
--
-- sp.oauth_imap_mock(opts): starts spec/helpers/oauth_imap_mock.lua (an IMAP
-- backend that also takes XOAUTH2 and OAUTHBEARER) as the kit starts its
-- own mocks; the same handle: port, lines(), wait_for(), logins(), stop().
local testing = require "postern.testing"
local mock = require "postern.testing.mock"

local sp = {}

local T = 5 -- seconds to wait for a line: generous, the machine is shared

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- the IMAP OAuth mock -------------------------------------------------------------

-- the kit's own launcher and handle, with spec/ on the mock's LUA_PATH
function sp.oauth_imap_mock(opts)
  local m = mock.start("helpers.oauth_imap_mock", opts, testing.root .. "/spec/?.lua", "oauth_imap_mock")
  return m
end

-- the three protocols ------------------------------------------------------------------

local imap = {
  name = "imap",
  -- every mechanism postern implements, and a listener that offers PLAIN only
  all_auth = { "plain", "login", "cram-md5", "xoauth2", "oauthbearer" },
  plain_auth = { "plain" },
  -- how the mock records the upstream login of a client that used PLAIN,
  -- LOGIN or CRAM-MD5 (postern logs in with the IMAP LOGIN command)
  cleartext_upstream_mech = "login",
  ok = "^a1 OK ",
  failed = "^a1 NO %[AUTHENTICATIONFAILED%] ",
  temporary = "^a1 NO %[UNAVAILABLE%] ",
  cancelled = "^a1 BAD ",
  bad_base64 = "^a1 BAD ",
  bad_message = "^a1 BAD ",
  unsupported = "^a1 NO ",
  noop_record = "^%d+ a2 NOOP$",
}

function imap.greet(c) c:expect("^%* OK ", T) end

function imap.auth(c, mech, ir)
  c:send("a1 AUTHENTICATE " .. mech .. (ir and (" " .. ir) or "") .. "\r\n")
end

function imap.answer(c)
  while true do
    local l = c:line(T)
    if l == "+" or l:match("^%+ ") then return "challenge", l:sub(3) end
    if l:match("^a1 ") then return "final", l end
    -- an untagged line: not expected during AUTHENTICATE, read on
  end
end

function imap.mechanisms(c)
  local tagged, untagged = c:command("a0", "CAPABILITY", T)
  assert(tagged:match("^a0 OK"), tagged)
  local set = {}
  for _, l in ipairs(untagged) do
    for m in l:gmatch("AUTH=(%S+)") do set[m:upper()] = true end
  end
  return set
end

function imap.noop(c)
  local tagged = c:command("a2", "NOOP", T)
  return tagged
end

local pop3 = {
  name = "pop3",
  all_auth = { "user", "plain", "login", "cram-md5", "xoauth2", "oauthbearer" },
  plain_auth = { "user", "plain" },
  cleartext_upstream_mech = "user", -- USER/PASS
  ok = "^%+OK",
  failed = "^%-ERR %[AUTH%] ",
  temporary = "^%-ERR %[SYS/TEMP%] ",
  cancelled = "^%-ERR",
  bad_base64 = "^%-ERR",
  bad_message = "^%-ERR",
  unsupported = "^%-ERR",
  noop_record = "^%d+ UIDL 1$",
}

function pop3.greet(c) assert(c:pop3(nil, T):match("^%+OK")) end

function pop3.auth(c, mech, ir)
  c:send("AUTH " .. mech .. (ir and (" " .. ir) or "") .. "\r\n")
end

function pop3.answer(c)
  local l = c:line(T)
  if l == "+" or l:match("^%+ ") then return "challenge", l:sub(3) end
  return "final", l
end

function pop3.mechanisms(c)
  local status, lines = c:pop3_multi("CAPA", T)
  assert(status:match("^%+OK"), status)
  local set = {}
  for _, l in ipairs(lines) do
    local list = l:match("^SASL (.*)$")
    if list then
      for m in list:gmatch("%S+") do set[m:upper()] = true end
    end
  end
  return set
end

function pop3.noop(c) return c:pop3("UIDL 1", T) end

local smtp = {
  name = "smtp",
  all_auth = { "plain", "login", "cram-md5", "xoauth2", "oauthbearer" },
  plain_auth = { "plain" },
  cleartext_upstream_mech = "plain", -- AUTH PLAIN
  ok = "^235 ",
  failed = "^535 5%.7%.8 ",
  temporary = "^454 4%.7%.0 ",
  cancelled = "^501 ",
  bad_base64 = "^501 ",
  bad_message = "^5%d%d ",
  unsupported = "^504 ",
  noop_record = "^%d+ NOOP$",
}

function smtp.greet(c)
  assert(c:smtp(nil, T) == 220)
  local code = c:smtp("EHLO client.example", T)
  assert(code == 250, "EHLO answered " .. tostring(code))
end

function smtp.auth(c, mech, ir)
  c:send("AUTH " .. mech .. (ir and (" " .. ir) or "") .. "\r\n")
end

function smtp.answer(c)
  local code, texts, last = c:smtp(nil, T)
  if code == 334 then return "challenge", texts[#texts] end
  return "final", last
end

function smtp.mechanisms(c)
  local code, kw = c:smtp("EHLO client.example", T)
  assert(code == 250)
  local set = {}
  for _, k in ipairs(kw) do
    local list = k:match("^AUTH[ =](.*)$")
    if list then
      for m in list:gmatch("%S+") do set[m:upper()] = true end
    end
  end
  return set
end

function smtp.noop(c)
  local _, _, last = c:smtp("NOOP", T)
  return last
end

for _, P in ipairs { imap, pop3, smtp } do
  function P.respond(c, line) c:send(line .. "\r\n") end
end

sp.protocols = { imap = imap, pop3 = pop3, smtp = smtp }
sp.order = { imap, pop3, smtp }

-- the policy used by sasl_spec: logs every call (one Lua table per line in
-- log_path) and routes
--   user "upstream-refuses"        -> routes[protocol].refuse (a mock that refuses)
--   xoauth2/oauthbearer            -> good when the token is "good-token"
--                                     (user "no-sasl-ir": routes[protocol].no_ir)
--   cram-md5                       -> good, with password = "secret" for the
--                                     upstream, when s:check_password("secret");
--                                     user "nopass": no password given
--   others                         -> good when the password is "secret"
function sp.policy_source(log_path, routes)
  return ([[
local LOG = %q
local ROUTES = %s
local function q(v)
  if v == nil then return "nil" end
  if type(v) ~= "string" then return tostring(v) end
  return (string.format("%%q", v):gsub("\\\n", "\\n"):gsub("\r", "\\r"))
end
local function to(port, extra)
  local u = { host = "127.0.0.1", port = port }
  for k, v in pairs(extra or {}) do u[k] = v end
  return u
end
return {
  authenticate = function(s)
    local f = assert(io.open(LOG, "a"))
    f:write("return { protocol = ", q(s.protocol), ", client_port = ", q(s.client_port),
      ", mechanism = ", q(s.mechanism), ", user = ", q(s.user), ", password = ", q(s.password),
      ", authzid = ", q(s.authzid), ", salt = ", q(s.salt), ", digest = ", q(s.digest),
      ", check_secret = ", q(s:check_password("secret")), ", check_wrong = ", q(s:check_password("wrong")),
      " }\n")
    f:close()
    local r = ROUTES[s.protocol]
    local user = s.user or ""
    if user == "upstream-refuses" then return to(r.refuse) end
    if s.mechanism == "xoauth2" or s.mechanism == "oauthbearer" then
      if s.password == "good-token" then
        -- OAUTHBEARER without an authzid: the token says who (here, always token-owner)
        if user == "" then return to(r.good, { user = "token-owner" }) end
        return to(user == "no-sasl-ir" and r.no_ir or r.good)
      end
      return nil, "Invalid token"
    end
    if not s:check_password("secret") then return nil, "Invalid login or password" end
    if s.mechanism == "cram-md5" then
      if user == "nopass" then return to(r.good) end
      return to(r.good, { password = "secret" })
    end
    return to(r.good)
  end,
}
]]):format(log_path, testing.serialize(routes))
end

-- the policy calls logged so far (a list of tables), optionally only those of
-- the client connected from local port `port`
function sp.policy_calls(log_path, port)
  local out = {}
  for l in (read_file(log_path) or ""):gmatch("[^\n]+") do
    local rec = assert(loadstring(l))()
    if not port or rec.client_port == port then out[#out + 1] = rec end
  end
  return out
end

return sp
