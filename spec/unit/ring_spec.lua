-- postern.ring: consistent hashing of keys over weighted backends. Pure
-- Lua: no proxy here.
local ring = require "postern.ring"
local testing = require "postern.testing"

local function keys(n)
  local out = {}
  for i = 1, n do out[i] = ("user%d@example.com"):format(i) end
  return out
end

local function backends(names, weights)
  local out = {}
  for i, name in ipairs(names) do
    out[i] = { name = name, weight = weights and weights[i], host = "10.0.0." .. i, port = 143 }
  end
  return out
end

-- key -> backend name, for every key
local function assign(r, ks)
  local out = {}
  for _, k in ipairs(ks) do out[k] = r:get(k).name end
  return out
end

local function shares(r, ks)
  local count = {}
  for _, k in ipairs(ks) do
    local name = r:get(k).name
    count[name] = (count[name] or 0) + 1
  end
  return count
end

describe("postern.ring", function()
  describe("ring.hash (MurmurHash3 x86_32)", function()
    it("gives the reference implementation's values", function()
      -- values from Austin Appleby's MurmurHash3_x86_32 (smhasher)
      assert.equals(0, ring.hash(""))
      assert.equals(0x248bfa47, ring.hash("hello"))
      assert.equals(0x2e4ff723, ring.hash("The quick brown fox jumps over the lazy dog"))
      assert.equals(3017643002, ring.hash("abc"))
      assert.equals(1009084850, ring.hash("a"))
      assert.equals(2613040991, ring.hash("ab"))
      assert.equals(1139631978, ring.hash("abcd"))
      assert.equals(3317223669, ring.hash("\255\254\253\128\1"))
      assert.equals(0x514e28b7, ring.hash("", 1))
      assert.equals(0x81f16f39, ring.hash("", 0xffffffff))
      assert.equals(0x2fa826cd, ring.hash("The quick brown fox jumps over the lazy dog", 0x9747b28c))
      assert.equals(0x24884cba, ring.hash("Hello, world!", 0x9747b28c))
    end)

    it("returns integers in 0 .. 2^32-1", function()
      for _, k in ipairs(keys(2000)) do
        local h = ring.hash(k)
        assert.is_true(h >= 0 and h < 2 ^ 32 and h == math.floor(h), k)
      end
    end)
  end)

  describe("ring.new", function()
    it("hands back the very tables it was given", function()
      local list = backends { "a", "b" }
      local r = assert(ring.new(list))
      local b = r:get("alice")
      assert.is_true(b == list[1] or b == list[2])
      assert.equals(2, r.count)
    end)

    it("names a backend host:port when it has no name", function()
      local a = { host = "10.0.0.1", port = 143 }
      local same = { name = "10.0.0.1:143", host = "10.0.0.9", port = 1 }
      local r1 = assert(ring.new { a, { name = "b" } })
      local r2 = assert(ring.new { same, { name = "b" } })
      for _, k in ipairs(keys(200)) do
        assert.equals(r1:get(k) == a, r2:get(k) == same, k)
      end
    end)

    it("refuses a backend without a name, host or port", function()
      local r, err = ring.new { { name = "a" }, { host = "10.0.0.1" } }
      assert.is_nil(r)
      assert.matches("backend 2: no name", err)
    end)

    it("refuses the same name twice", function()
      local r, err = ring.new { { name = "a" }, { name = "a" } }
      assert.is_nil(r)
      assert.matches('name "a" is used twice', err)
    end)

    it("refuses a negative or non-number weight, and bad options", function()
      local r, err = ring.new { { name = "a", weight = -1 } }
      assert.is_nil(r)
      assert.matches("weight must be a number >= 0", err)
      r, err = ring.new { { name = "a", weight = "2" } }
      assert.is_nil(r)
      assert.matches("weight", err)
      r, err = ring.new({ { name = "a" } }, { points = 0 })
      assert.is_nil(r)
      assert.matches("points", err)
      r, err = ring.new("a,b")
      assert.is_nil(r)
      assert.matches("expected a list", err)
      r, err = ring.new { "a" }
      assert.is_nil(r)
      assert.matches("backend 1: expected a table", err)
    end)

    it("with no backend (or only weight 0) gets nil and an empty sequence", function()
      for _, r in ipairs { assert(ring.new {}), assert(ring.new { { name = "a", weight = 0 } }) } do
        assert.is_nil(r:get("alice"))
        assert.same({}, r:sequence("alice"))
        assert.equals(0, r.count)
      end
    end)
  end)

  describe("placement", function()
    local ks = keys(10000)

    it("gives the same key the same backend every time", function()
      local r = assert(ring.new(backends { "a", "b", "c" }))
      for _, k in ipairs(ks) do
        assert.equals(r:get(k), r:get(k))
      end
      assert.equals(r:get(42), r:get("42"))
    end)

    it("does not depend on the order of the backends list", function()
      local r1 = assert(ring.new(backends { "a", "b", "c", "d" }))
      local r2 = assert(ring.new(backends { "d", "b", "a", "c" }))
      assert.same(assign(r1, ks), assign(r2, ks))
    end)

    it("is the same in another process", function()
      local r = assert(ring.new(backends { "a", "b", "c" }))
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write(([[
        package.path = %q .. "/lua/?.lua;" .. package.path
        local ring = require "postern.ring"
        local r = ring.new { { name = "c" }, { name = "a" }, { name = "b" } }
        for i = 1, 500 do io.write(r:get("user" .. i .. "@example.com").name) end
      ]]):format(testing.root))
      f:close()
      local p = assert(io.popen(testing.luajit .. " " .. script))
      local out = p:read("*a")
      p:close()
      os.remove(script)
      local expected = {}
      for i = 1, 500 do expected[i] = r:get(ks[i]).name end
      assert.equals(table.concat(expected), out)
    end)

    it("spreads keys evenly over equal backends", function()
      local r = assert(ring.new(backends { "a", "b", "c", "d" }))
      local count = shares(r, ks)
      for _, name in ipairs { "a", "b", "c", "d" } do
        local share = count[name] / #ks
        assert.is_true(share > 0.20 and share < 0.30, name .. ": " .. share)
      end
    end)

    it("gives a weight-2 backend about twice the keys of a weight-1 one", function()
      local r = assert(ring.new(backends({ "a", "b", "c" }, { 1, 2, 1 })))
      local count = shares(r, ks)
      local ratio_a = count.b / count.a
      local ratio_c = count.b / count.c
      assert.is_true(ratio_a > 1.6 and ratio_a < 2.4, "b/a = " .. ratio_a)
      assert.is_true(ratio_c > 1.6 and ratio_c < 2.4, "b/c = " .. ratio_c)
      local share_b = count.b / #ks
      assert.is_true(share_b > 0.42 and share_b < 0.58, "b: " .. share_b)
    end)

    it("sends no key to a backend of weight 0", function()
      local r = assert(ring.new(backends({ "a", "b", "c" }, { 1, 0, 1 })))
      local count = shares(r, ks)
      assert.is_nil(count.b)
      assert.equals(#ks, count.a + count.c)
      assert.equals(2, r.count)
    end)

    it("takes more points per weight unit with options.points, for an even spread", function()
      local coarse = assert(ring.new(backends { "a", "b", "c", "d", "e" }, { points = 1 }))
      local fine = assert(ring.new(backends { "a", "b", "c", "d", "e" }, { points = 500 }))
      local function spread(r)
        local c = shares(r, ks)
        local lo, hi = math.huge, 0
        for _, n in ipairs { "a", "b", "c", "d", "e" } do
          lo, hi = math.min(lo, c[n] or 0), math.max(hi, c[n] or 0)
        end
        return hi - lo
      end
      assert.is_true(spread(fine) < 0.1 * #ks, "fine: " .. spread(fine))
      assert.is_true(spread(fine) < spread(coarse))
    end)
  end)

  describe("stability", function()
    local ks = keys(10000)

    it("removing one backend of 5 moves only its keys: about 1/5 of them", function()
      local before = assert(ring.new(backends { "a", "b", "c", "d", "e" }))
      local after = assert(ring.new(backends { "a", "b", "d", "e" }))
      local moved = 0
      for _, k in ipairs(ks) do
        local was, now = before:get(k).name, after:get(k).name
        if was ~= now then
          moved = moved + 1
          assert.equals("c", was, k .. " moved from " .. was)
        end
      end
      local fraction = moved / #ks
      assert.is_true(fraction > 0.13 and fraction < 0.27, "moved " .. fraction)
    end)

    it("adding a fifth backend moves about 1/5 of the keys, all to the new one", function()
      local before = assert(ring.new(backends { "a", "b", "c", "d" }))
      local after = assert(ring.new(backends { "a", "b", "c", "d", "e" }))
      local moved = 0
      for _, k in ipairs(ks) do
        local was, now = before:get(k).name, after:get(k).name
        if was ~= now then
          moved = moved + 1
          assert.equals("e", now, k .. " moved to " .. now)
        end
      end
      local fraction = moved / #ks
      assert.is_true(fraction > 0.13 and fraction < 0.27, "moved " .. fraction)
    end)

    it("doubling one backend's weight moves keys only to that backend", function()
      local before = assert(ring.new(backends({ "a", "b", "c" }, { 1, 1, 1 })))
      local after = assert(ring.new(backends({ "a", "b", "c" }, { 1, 2, 1 })))
      local moved = 0
      for _, k in ipairs(ks) do
        local was, now = before:get(k).name, after:get(k).name
        if was ~= now then
          moved = moved + 1
          assert.equals("b", now)
        end
      end
      -- b goes from 1/3 to 1/2 of the keys
      local fraction = moved / #ks
      assert.is_true(fraction > 0.10 and fraction < 0.24, "moved " .. fraction)
    end)
  end)

  describe("ring:sequence", function()
    local list = backends { "a", "b", "c", "d", "e" }
    local r = assert(ring.new(list))

    it("starts with the key's own backend and lists each backend once", function()
      for _, k in ipairs(keys(500)) do
        local seq = r:sequence(k)
        assert.equals(5, #seq)
        assert.equals(r:get(k), seq[1])
        local seen = {}
        for _, b in ipairs(seq) do
          assert.is_nil(seen[b])
          seen[b] = true
        end
      end
    end)

    it("stops at n backends, and at the number of backends", function()
      assert.equals(2, #r:sequence("alice", 2))
      assert.equals(1, #r:sequence("alice", 1))
      assert.equals(5, #r:sequence("alice", 50))
      assert.same(r:sequence("alice", 3), { unpack(r:sequence("alice"), 1, 3) })
    end)

    it("is the failover order: without its first backend, the key goes to the second", function()
      for _, k in ipairs(keys(300)) do
        local seq = r:sequence(k)
        local rest = {}
        for _, b in ipairs(list) do
          if b ~= seq[1] then rest[#rest + 1] = b end
        end
        local without = assert(ring.new(rest))
        assert.equals(seq[2], without:get(k), k)
        assert.same({ unpack(seq, 2) }, without:sequence(k))
      end
    end)

    it("leaves out backends of weight 0", function()
      local z = assert(ring.new(backends({ "a", "b", "c" }, { 1, 0, 1 })))
      local seq = z:sequence("alice")
      assert.equals(2, #seq)
      for _, b in ipairs(seq) do assert.not_equals("b", b.name) end
    end)
  end)
end)
