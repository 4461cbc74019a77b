-- postern.users: users files (user:hash[:upstream] lines, the format of a
-- Dovecot passwd-file) with crypt(3) hashes: load, verify, hash. Pure Lua
-- over libcrypt through the FFI: no proxy here. The policy built on it,
-- scripts/static_users.lua, is specified in spec/policies/static_users_spec.lua.
local users = require "postern.users"

local tmpfiles = {}

local function write_file(content)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(content)
  f:close()
  tmpfiles[#tmpfiles + 1] = path
  return path
end

local function load_error(content)
  local path = write_file(content)
  local ok, err = pcall(users.load, path)
  assert.is_false(ok)
  return path, err
end

-- computed once: bcrypt at a low cost keeps the suite fast
local SHA = users.hash("s3cret")
local BCRYPT = users.hash("hunter2", "bcrypt", 4)

describe("postern.users", function()
  teardown(function()
    for _, p in ipairs(tmpfiles) do
      os.remove(p)
    end
  end)

  describe("load", function()
    it("reads user:hash:upstream lines and skips comments and blank lines", function()
      local path = write_file(table.concat({
        "# a comment",
        "",
        "   ",
        "alice:" .. SHA .. ":imap1",
        "  # an indented comment",
        "bob:" .. BCRYPT,
        "carol:" .. SHA .. ":",
      }, "\n") .. "\n")
      local db = users.load(path)
      assert.are.equal(3, db.count)
      assert.are.same({ user = "alice", hash = SHA, upstream = "imap1" }, db:lookup("alice"))
      assert.are.same({ user = "bob", hash = BCRYPT }, db:lookup("bob"))
      assert.is_nil(db:lookup("bob").upstream)
      assert.is_nil(db:lookup("carol").upstream)
      assert.is_nil(db:lookup("dave"))
      assert.is_nil(db:lookup("# a comment"))
    end)

    it("accepts CRLF line endings", function()
      local db = users.load(write_file("alice:" .. SHA .. ":imap1\r\n"))
      assert.are.equal("imap1", db:lookup("alice").upstream)
      assert.is_true(db:verify("alice", "s3cret"))
    end)

    it("lookup returns a copy that cannot change the database", function()
      local db = users.load(write_file("alice:" .. SHA .. "\n"))
      db:lookup("alice").hash = "x"
      assert.are.equal(SHA, db:lookup("alice").hash)
    end)

    it("names file:line of a line without a hash field", function()
      local path, err = load_error("# header\nalice:" .. SHA .. "\nthis line is wrong\n")
      assert.are.equal(path .. ":3: expected user:hash[:upstream]", err)
    end)

    it("names file:line of a line with too many fields", function()
      local path, err = load_error("alice:" .. SHA .. ":imap1:extra\n")
      assert.are.equal(path .. ":1: too many fields (expected user:hash[:upstream])", err)
    end)

    it("rejects an empty user name with file:line", function()
      local path, err = load_error(":" .. SHA .. "\n")
      assert.are.equal(path .. ":1: bad user name", err)
    end)

    it("rejects a duplicate user with file:line", function()
      local path, err = load_error("alice:" .. SHA .. "\nalice:" .. SHA .. "\n")
      assert.are.equal(path .. ':2: duplicate user "alice"', err)
    end)

    it("rejects {PLAIN} cleartext passwords with file:line", function()
      local path, err = load_error("# x\nalice:{PLAIN}secret\n")
      assert.are.equal(path .. ":2:", err:sub(1, #path + 3))
      assert.matches("cleartext password scheme {PLAIN} is not supported", err, 1, true)
    end)

    it("rejects unknown schemes with file:line", function()
      local path, err = load_error("alice:{SSHA}abcdef\n")
      assert.are.equal(path .. ":1: unsupported password scheme {SSHA}"
        .. " (use SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT or CRYPT)", err)
    end)

    it("rejects a hash that is not a crypt(3) string", function()
      local path, err = load_error("alice:secret\n")
      assert.are.equal(path .. ":1: unrecognised password hash", err:sub(1, #path + 30))
    end)

    it("rejects a truncated SHA512-CRYPT hash", function()
      local path, err = load_error("alice:" .. SHA:sub(1, -2) .. "\n")
      assert.are.equal(path .. ":1: unrecognised password hash", err:sub(1, #path + 30))
    end)

    it("rejects a scheme tag that does not match the hash", function()
      local path, err = load_error("alice:{BLF-CRYPT}" .. SHA .. "\n")
      assert.are.equal(path .. ":1: {BLF-CRYPT} tag does not match a sha512 hash", err)
    end)

    it("raises 'cannot open' for a missing file", function()
      local ok, err = pcall(users.load, "/nonexistent/postern-users.txt")
      assert.is_false(ok)
      assert.are.equal("cannot open users file: /nonexistent/postern-users.txt:"
        .. " No such file or directory", err)
    end)

    it("strips the {SHA512-CRYPT}, {BLF-CRYPT} and {CRYPT} tags", function()
      local db = users.load(write_file("alice:{SHA512-CRYPT}" .. SHA .. "\n"
        .. "bob:{BLF-CRYPT}" .. BCRYPT .. "\ncarol:{CRYPT}" .. SHA .. ":imap2\n"))
      assert.are.equal(SHA, db:lookup("alice").hash)
      assert.are.equal(BCRYPT, db:lookup("bob").hash)
      assert.are.equal(SHA, db:lookup("carol").hash)
      assert.are.equal("imap2", db:lookup("carol").upstream)
      assert.is_true(db:verify("alice", "s3cret"))
      assert.is_true(db:verify("bob", "hunter2"))
      assert.is_false(db:verify("alice", "{SHA512-CRYPT}" .. SHA))
    end)
  end)

  describe("verify", function()
    local db
    setup(function()
      db = users.load(write_file(table.concat({
        "alice:" .. SHA,
        "bob:" .. BCRYPT,
        "yves:" .. BCRYPT:gsub("^%$2b%$", "$2y$"),
        -- SHA256-CRYPT test vector from the glibc/Drepper specification
        "sam:$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
      }, "\n")))
    end)

    it("accepts the right SHA512-CRYPT password", function()
      assert.is_true(db:verify("alice", "s3cret"))
    end)

    it("refuses a wrong SHA512-CRYPT password", function()
      assert.is_false(db:verify("alice", "s3cret!"))
      assert.is_false(db:verify("alice", "S3cret"))
      assert.is_false(db:verify("alice", ""))
    end)

    it("accepts the right bcrypt ($2b$) password and refuses a wrong one", function()
      assert.is_true(db:verify("bob", "hunter2"))
      assert.is_false(db:verify("bob", "hunter3"))
    end)

    it("accepts the right bcrypt ($2y$) password and refuses a wrong one", function()
      assert.are.equal("$2y$", db:lookup("yves").hash:sub(1, 4))
      assert.is_true(db:verify("yves", "hunter2"))
      assert.is_false(db:verify("yves", "hunter"))
    end)

    it("accepts the right SHA256-CRYPT password and refuses a wrong one", function()
      assert.is_true(db:verify("sam", "Hello world!"))
      assert.is_false(db:verify("sam", "Hello world"))
    end)

    it("returns false for an unknown user, even with a known password", function()
      assert.is_false(db:verify("mallory", "s3cret"))
      assert.is_false(db:verify("", "s3cret"))
      assert.is_false(db:verify(nil, "s3cret"))
    end)

    it("returns false for a missing password", function()
      assert.is_false(db:verify("alice", nil))
    end)

    it("refuses a password that only matches up to a NUL byte", function()
      assert.is_false(db:verify("alice", "s3cret\0anything"))
    end)

    it("spends a crypt on unknown users, so timing does not reveal them", function()
      -- first user's hash is the dummy: bcrypt cost 9 is ~30 ms of CPU
      local slow = users.load(write_file("bob:" .. users.hash("x", "bcrypt", 9) .. "\n"))
      local t0 = os.clock()
      assert.is_false(slow:verify("nobody", "x"))
      assert.is_true(os.clock() - t0 > 0.005)
    end)
  end)

  describe("hash", function()
    it("makes a SHA512-CRYPT hash by default that verifies", function()
      local h = users.hash("pässword with spaces")
      assert.matches("^%$6%$[./0-9A-Za-z]+%$[./0-9A-Za-z]+$", h)
      assert.are.equal(86, #h:match("([^$]+)$"))
      local db = users.load(write_file("u:" .. h .. "\n"))
      assert.is_true(db:verify("u", "pässword with spaces"))
      assert.is_false(db:verify("u", "password with spaces"))
    end)

    it("makes a bcrypt hash (cost 10 by default) that verifies", function()
      local h = users.hash("correct horse", "bcrypt")
      assert.are.equal("$2b$10$", h:sub(1, 7))
      assert.are.equal(60, #h)
      local db = users.load(write_file("u:" .. h .. "\n"))
      assert.is_true(db:verify("u", "correct horse"))
      assert.is_false(db:verify("u", "correct horse "))
    end)

    it("honours rounds", function()
      assert.are.equal("$2b$05$", users.hash("x", "bcrypt", 5):sub(1, 7))
      assert.are.equal("$6$rounds=6000$", users.hash("x", "sha512", 6000):sub(1, 15))
    end)

    it("uses a new random salt every time", function()
      local a, b = users.hash("same"), users.hash("same")
      assert.are_not.equal(a, b)
      assert.are_not.equal(a:match("^%$6%$([^$]+)"), b:match("^%$6%$([^$]+)"))
    end)

    it("rejects an unknown scheme", function()
      local ok, err = pcall(users.hash, "x", "md5")
      assert.is_false(ok)
      assert.matches('unknown scheme "md5"', err, 1, true)
    end)
  end)
end)
