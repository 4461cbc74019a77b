-- The default demo policy: users and their hashed passwords in a file,
-- each user routed to a named upstream.
--
-- users.txt (next to this script) holds `user:hash[:upstream]` lines; add
-- a user with `scripts/adduser scripts/users.txt alice [UPSTREAM]`. The
-- demo users are demo/demo and bob/bob, both routed to the "demo" upstream.
--
-- Adapt it without editing it: load it from your own policy and change
-- the fields before the first login.
--
--   local policy = dofile("scripts/static_users.lua")
--   policy.users_file = "/etc/postern/users.txt"
--   policy.upstreams = {
--     imap1 = { host = "10.0.0.5", port = 143 },
--     mail2 = {                      -- one upstream per protocol
--       imap = { host = "10.0.0.6", port = 143 },
--       pop3 = { host = "10.0.0.6", port = 110 },
--       smtp = { host = "10.0.0.6", port = 587 },
--       sieve = { host = "10.0.0.6", port = 4190 },
--     },
--   }
--   policy.default_upstream = "imap1"
--   return policy
--
-- Fields:
--   users_file        path of the users file (default: users.txt here)
--   upstreams         upstream name -> upstream table
--   default_upstream  name used for users without an upstream field
--   fail_wait         seconds to delay a failed login's reply (default 1)
--   fail_message      message of a refused login
--   db                the users database (postern.users); loaded on the
--                     first login, reloaded if users_file changes; set it
--                     to nil to force a reload, or to your own db

local users = require "postern.users"

-- postern's binary preloads a C module "postern"; under plain busted it
-- does not exist, so logging is then skipped.
local has_postern, postern = pcall(require, "postern")
if not has_postern or type(postern) ~= "table" then
  postern = nil
end

local function log(level, ...)
  if postern and postern.log then
    postern.log(level, ...)
  end
end

-- user names come from the client: keep control characters out of logs
local function printable(s)
  return (tostring(s):gsub("%c", "?"))
end

local function script_dir()
  local src = debug.getinfo(1, "S").source
  if src:sub(1, 1) == "@" then
    return src:sub(2):match("^(.*)/[^/]*$") or "."
  end
  return "."
end

local policy = {
  users_file = script_dir() .. "/users.txt",
  -- an upstream is one table, or one per protocol
  upstreams = {
    demo = {
      imap = { host = "127.0.0.1", port = 1144 },
      pop3 = { host = "127.0.0.1", port = 1145 },
      smtp = { host = "127.0.0.1", port = 1146 },
      sieve = { host = "127.0.0.1", port = 1147 },
    },
  },
  default_upstream = "demo",
  fail_wait = 1,
  fail_message = "Invalid login or password",
  db = nil,
}

-- the db this script loaded, and from which file (a db set by a wrapper
-- is used as it is)
local loaded_db, loaded_from

local function get_db()
  local db = policy.db
  if db == nil or (db == loaded_db and loaded_from ~= policy.users_file) then
    loaded_db = users.load(policy.users_file)
    loaded_from = policy.users_file
    policy.db = loaded_db
    log("info", "loaded ", policy.db.count, " users from ", policy.users_file)
  end
  return policy.db
end

local function refuse()
  return nil, { message = policy.fail_message, wait = policy.fail_wait }
end

function policy.authenticate(s)
  local db = get_db()
  local user, password = s.user, s.password
  if type(user) ~= "string" or user == "" then
    log("info", "login refused: no user name")
    return refuse()
  end
  if s.authzid and s.authzid ~= "" and s.authzid ~= user then
    -- SASL PLAIN "act as someone else" (RFC 4616 section 2): nobody here
    -- may; a policy with administrators would check its own list
    log("info", "login refused for ", printable(user), ": may not act as ", printable(s.authzid))
    return refuse()
  end
  if type(password) ~= "string" then
    -- CRAM-MD5, APOP and the like: a hash cannot check their digests
    log("info", "login refused for ", printable(user), ": mechanism ",
      printable(s.mechanism), " has no cleartext password")
    return refuse()
  end
  if not db:verify(user, password) then
    log("info", "login failed for ", printable(user))
    return refuse()
  end
  local entry = db:lookup(user)
  local name = entry.upstream or policy.default_upstream
  local upstream = name and policy.upstreams[name]
  if upstream and not upstream.host then
    upstream = upstream[s.protocol]
  end
  if not upstream then
    error(("no upstream named %q for %s (user %q, users file %s)"):format(
      tostring(name), tostring(s.protocol), user, policy.users_file))
  end
  return upstream
end

return policy
