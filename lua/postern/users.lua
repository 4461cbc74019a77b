-- postern.users: a users file with crypt(3)-hashed passwords.
--
-- The file looks like Dovecot's passwd-file, one user per line:
--
--   # user:hash[:upstream]
--   alice:$6$3Zk9.../ZB0r1X...:imap1
--   bob:{BLF-CRYPT}$2b$10$Qm1...
--
-- `hash` is a crypt(3) string: SHA512-CRYPT ($6$), SHA256-CRYPT ($5$),
-- bcrypt ($2b$, $2y$, $2a$) or yescrypt ($y$). A Dovecot scheme tag in
-- front ({SHA512-CRYPT}, {SHA256-CRYPT}, {BLF-CRYPT}, {CRYPT}) is accepted
-- and stripped; cleartext ({PLAIN}) and other schemes are refused when the
-- file loads. `upstream` is an optional name the policy may route by.
-- Blank lines and lines starting with # are ignored. Add or change a user
-- with `scripts/adduser FILE USER [UPSTREAM]` (the password is read from
-- stdin).
--
-- Use in a policy:
--
--   local users = require "postern.users"
--   local db = users.load("/etc/postern/users.txt")
--
--   function policy.authenticate(s)
--     if s.password and db:verify(s.user, s.password) then
--       return { host = "10.0.0.5", port = 143 }
--     end
--     return nil, { message = "Invalid login or password", wait = 1 }
--   end
--
-- API:
--   users.load(path)                 -> db; raises "path:line: message"
--   db:lookup(user)                  -> { user =, hash =, upstream = } or nil
--   db:verify(user, password)        -> true | false
--   users.hash(password [, scheme [, rounds]])
--                                    -> new crypt string; scheme "sha512"
--                                       (default) or "bcrypt"
--
-- Verification calls crypt_r(3) from libcrypt (libxcrypt) through the
-- LuaJIT FFI. It blocks the calling thread for the duration of one hash
-- (a few milliseconds for SHA512-CRYPT, more for bcrypt with a high cost).
-- Note that bcrypt only looks at the first 72 bytes of a password.

local ffi = require "ffi"
local bit = require "bit"

local _M = {}

local byte, sub, find, format = string.byte, string.sub, string.find, string.format
local bxor, bor = bit.bxor, bit.bor

local CRYPT_GENSALT_OUTPUT_SIZE = 192

pcall(ffi.cdef, [[
struct crypt_data {
  char output[384];
  char setting[384];
  char input[512];
  char reserved[767];
  char initialized;
  char internal[30720];
};
]])

pcall(ffi.cdef, [[
char *crypt_r(const char *phrase, const char *setting, struct crypt_data *data);
char *crypt_gensalt_rn(const char *prefix, unsigned long count,
                       const char *rbytes, int nrbytes,
                       char *output, int output_size);
]])

local function load_libcrypt()
  local errs = {}
  for _, name in ipairs({ "crypt", "libcrypt.so.1" }) do
    local ok, lib = pcall(ffi.load, name)
    if ok then
      return lib
    end
    errs[#errs + 1] = tostring(lib)
  end
  error("postern.users: cannot load libcrypt: " .. table.concat(errs, "; "), 2)
end

local libcrypt = load_libcrypt()

-- One work area, reused: it is large (32 KiB) and crypt_r never yields.
local crypt_data = ffi.new("struct crypt_data")
local gensalt_buf = ffi.new("char[?]", CRYPT_GENSALT_OUTPUT_SIZE)

-- crypt(3) a password against a setting (a full stored hash works as the
-- setting). Returns the result string, or nil when crypt refused it.
local function crypt(password, setting)
  if find(password, "\0", 1, true) then
    return nil
  end
  local out = libcrypt.crypt_r(password, setting, crypt_data)
  local res
  if out ~= nil then
    res = ffi.string(out)
  end
  -- do not leave the password in memory longer than needed
  ffi.fill(crypt_data, ffi.sizeof(crypt_data))
  if res == nil or res == "" or sub(res, 1, 1) == "*" then
    return nil
  end
  return res
end

-- Compare two strings in time that depends only on #a (the computed hash,
-- whose length is fixed by the scheme), not on where they differ.
local function equal_ct(a, b)
  local diff = bxor(#a, #b)
  for i = 1, #a do
    diff = bor(diff, bxor(byte(a, i), byte(b, i) or 256))
  end
  return diff == 0
end

local B64 = "^[./0-9A-Za-z]*$"

local function b64(s, len)
  return s ~= nil and find(s, B64) ~= nil and (len == nil or #s == len)
end

-- Check the shape of a crypt string; returns the scheme family or nil.
local function crypt_family(h)
  local id = h:match("^%$([^$]+)%$")
  if id == "6" or id == "5" then
    local rest = sub(h, 4)
    local rounds = rest:match("^rounds=(%d+)%$")
    if rounds then
      rest = sub(rest, #"rounds=" + #rounds + 2)
    end
    local salt, digest = rest:match("^([^$]*)%$([^$]*)$")
    if salt and #salt <= 16 and not find(salt, "[:%s]")
        and b64(digest, id == "6" and 86 or 43) then
      return id == "6" and "sha512" or "sha256"
    end
  elseif id == "2a" or id == "2b" or id == "2y" then
    local cost, rest = h:match("^%$2[aby]%$(%d%d)%$(.*)$")
    if cost and b64(rest, 53) then
      return "bcrypt"
    end
  elseif id == "y" then
    local params, salt, digest = h:match("^%$y%$([^$]+)%$([^$]+)%$([^$]+)$")
    if params and b64(params) and b64(salt) and b64(digest, 43) then
      return "yescrypt"
    end
  end
  return nil
end

local TAGS = {
  ["SHA512-CRYPT"] = "sha512",
  ["SHA256-CRYPT"] = "sha256",
  ["BLF-CRYPT"] = "bcrypt",
  ["CRYPT"] = true,  -- any crypt(3) string we understand
}

-- Turn the hash field into a bare crypt string, or return nil, message.
local function parse_hash(field)
  local tag, rest = field:match("^{([^}]*)}(.*)$")
  if tag then
    local want = TAGS[tag:upper()]
    if tag:upper() == "PLAIN" or tag:upper() == "CLEARTEXT" or tag:upper() == "CLEAR" then
      return nil, format("cleartext password scheme {%s} is not supported;"
        .. " store a crypt hash (scripts/adduser makes one)", tag)
    end
    if not want then
      return nil, format("unsupported password scheme {%s} (use SHA512-CRYPT,"
        .. " SHA256-CRYPT, BLF-CRYPT or CRYPT)", tag)
    end
    local family = crypt_family(rest)
    if not family then
      return nil, format("malformed {%s} hash", tag)
    end
    if want ~= true and want ~= family then
      return nil, format("{%s} tag does not match a %s hash", tag, family)
    end
    return rest
  end
  if field == "" then
    return nil, "empty password hash"
  end
  if not crypt_family(field) then
    return nil, "unrecognised password hash (expected a crypt(3) string"
      .. " such as $6$... or $2b$...)"
  end
  return field
end

local DB = {}
DB.__index = DB

--- Load a users file. Raises an error naming path:line on a bad line.
function _M.load(path)
  assert(type(path) == "string", "users.load: path must be a string")
  local f, err = io.open(path, "r")
  if not f then
    error("cannot open users file: " .. tostring(err), 0)
  end
  local entries, order = {}, {}
  local n = 0
  for line in f:lines() do
    n = n + 1
    line = line:gsub("^%s+", ""):gsub("%s+$", "")
    if line ~= "" and sub(line, 1, 1) ~= "#" then
      local fields = {}
      for field in (line .. ":"):gmatch("([^:]*):") do
        fields[#fields + 1] = field
      end
      local function bad(msg)
        f:close()
        error(format("%s:%d: %s", path, n, msg), 0)
      end
      if #fields < 2 then
        bad("expected user:hash[:upstream]")
      elseif #fields > 3 then
        bad("too many fields (expected user:hash[:upstream])")
      end
      local user, hash_field, upstream = fields[1], fields[2], fields[3]
      if user == "" or find(user, "%s") then
        bad("bad user name")
      end
      if entries[user] then
        bad(format("duplicate user %q", user))
      end
      local hash, msg = parse_hash(hash_field)
      if not hash then
        bad(msg)
      end
      if upstream == "" then
        upstream = nil
      elseif upstream and find(upstream, "%s") then
        bad("bad upstream name")
      end
      entries[user] = { user = user, hash = hash, upstream = upstream }
      order[#order + 1] = user
    end
  end
  f:close()
  -- Unknown users are checked against a hash of the same kind as the
  -- file's first user, so a miss costs about as much as a wrong password.
  local dummy = "$6$postern.dummy$"
  if order[1] then
    dummy = entries[order[1]].hash
  end
  return setmetatable({ path = path, count = #order, _entries = entries,
    _dummy = dummy }, DB)
end

--- The entry for `user` (a copy): { user =, hash =, upstream = } or nil.
function DB:lookup(user)
  local e = type(user) == "string" and self._entries[user]
  if not e then
    return nil
  end
  return { user = e.user, hash = e.hash, upstream = e.upstream }
end

--- True when `password` matches the stored hash of `user`.
function DB:verify(user, password)
  if type(password) ~= "string" then
    return false
  end
  local e = type(user) == "string" and self._entries[user] or nil
  if not e then
    crypt(password, self._dummy)  -- same work as for a real user
    return false
  end
  local out = crypt(password, e.hash)
  if not out then
    return false
  end
  return equal_ct(out, e.hash)
end

local PREFIX = { sha512 = "$6$", bcrypt = "$2b$" }

--- A new crypt string for `password` with a random salt.
-- scheme: "sha512" (default, SHA512-CRYPT) or "bcrypt". rounds: optional
-- cost (SHA512 rounds, default 5000; bcrypt log2 cost, default 10).
function _M.hash(password, scheme, rounds)
  assert(type(password) == "string", "users.hash: password must be a string")
  if find(password, "\0", 1, true) then
    error("users.hash: password contains a NUL byte", 2)
  end
  scheme = scheme or "sha512"
  local prefix = PREFIX[scheme]
  if not prefix then
    error(format("users.hash: unknown scheme %q (use \"sha512\" or \"bcrypt\")",
      tostring(scheme)), 2)
  end
  if rounds == nil and scheme == "bcrypt" then
    rounds = 10
  end
  local salt = libcrypt.crypt_gensalt_rn(prefix, rounds or 0, nil, 0,
    gensalt_buf, CRYPT_GENSALT_OUTPUT_SIZE)
  if salt == nil then
    error("users.hash: crypt_gensalt failed", 2)
  end
  local setting = ffi.string(salt)
  local h = crypt(password, setting)
  if not h then
    error("users.hash: crypt failed", 2)
  end
  return h
end

return _M
