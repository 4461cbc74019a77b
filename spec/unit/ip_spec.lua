-- postern.ip: IPv4/IPv6 parsing (RFC 4291 text forms, RFC 5952 output),
-- CIDR networks and compiled lists of networks. Pure Lua: no proxy here.
local ip = require "postern.ip"

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

describe("postern.ip", function()
  describe("ip.parse with IPv4", function()
    local good = {
      { "0.0.0.0", 0 },
      { "127.0.0.1", 2130706433 },
      { "192.0.2.1", 3221225985 },
      { "10.20.30.40", 169090600 },
      { "255.255.255.255", 4294967295 },
      { "1.0.0.0", 16777216 },
    }
    for _, case in ipairs(good) do
      it(("reads %s as version 4 with value %d"):format(case[1], case[2]), function()
        local a = assert(ip.parse(case[1]))
        assert.equals(4, a.version)
        assert.equals(case[2], a.value)
        assert.equals(4, #a.bytes)
        assert.equals(case[1], a:tostring())
        assert.equals(case[1], tostring(a))
      end)
    end

    it("gives the address bytes in network order", function()
      assert.equals("c0000201", hex(assert(ip.parse("192.0.2.1")).bytes))
    end)

    local bad = {
      "", "1", "1.2", "1.2.3", "1.2.3.4.5", "256.0.0.1", "1.2.3.256", "1.2.3.999",
      "1.2.3.-1", "01.2.3.4", "1.02.3.4", "010.0.0.1", "1.2.3.4 ", " 1.2.3.4",
      "1..2.3", "1.2.3.", ".1.2.3", "1.2.3.4/8", "a.b.c.d", "0x7f.0.0.1",
      "1.2.3.4\0", "1234.1.1.1", "1.2.3.4.", "localhost", "+1.2.3.4",
    }
    for _, s in ipairs(bad) do
      it(("refuses %q with nil and a message"):format(s), function()
        local a, err = ip.parse(s)
        assert.is_nil(a)
        assert.matches("invalid IP address", err)
      end)
    end

    it("refuses a non-string with a message naming the type", function()
      local a, err = ip.parse(12)
      assert.is_nil(a)
      assert.matches("got number", err)
    end)
  end)

  describe("ip.parse with IPv6", function()
    -- input, canonical text (RFC 5952), the 16 bytes in hex
    local good = {
      { "::", "::", "00000000000000000000000000000000" },
      { "::1", "::1", "00000000000000000000000000000001" },
      { "1::", "1::", "00010000000000000000000000000000" },
      { "2001:db8::1", "2001:db8::1", "20010db8000000000000000000000001" },
      { "2001:DB8::1", "2001:db8::1", "20010db8000000000000000000000001" },
      { "2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1", "20010db8000000000000000000000001" },
      { "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8", "00010002000300040005000600070008" },
      { "1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0", "00010002000300040005000600070000" },
      { "::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8", "00000002000300040005000600070008" },
      { "1:0:0:2:0:0:0:3", "1:0:0:2::3", "00010000000000020000000000000003" },
      { "1:0:0:2:2:0:0:3", "1::2:2:0:0:3", "00010000000000020002000000000003" },
      { "2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1", "20010db8000000010001000100010001" },
      { "fe80::1:2", "fe80::1:2", "fe800000000000000000000000010002" },
      { "FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "ffffffffffffffffffffffffffffffff" },
      { "::ffff:192.0.2.1", "::ffff:192.0.2.1", "00000000000000000000ffffc0000201" },
      { "::FFFF:c000:0201", "::ffff:192.0.2.1", "00000000000000000000ffffc0000201" },
      { "0:0:0:0:0:ffff:192.0.2.1", "::ffff:192.0.2.1", "00000000000000000000ffffc0000201" },
      { "::1.2.3.4", "::102:304", "00000000000000000000000001020304" },
      { "64:ff9b::192.0.2.33", "64:ff9b::c000:221", "0064ff9b0000000000000000c0000221" },
      { "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304", "00010002000300040005000601020304" },
      { "::1:2.3.4.5", "::1:203:405", "00000000000000000000000102030405" },
      { "0::0", "::", "00000000000000000000000000000000" },
      { "0:0:0:0:0:0:0:0", "::", "00000000000000000000000000000000" },
    }
    for _, case in ipairs(good) do
      it(("reads %s as %s"):format(case[1], case[2]), function()
        local a = assert(ip.parse(case[1]))
        assert.equals(6, a.version)
        assert.equals(case[3], hex(a.bytes))
        assert.equals(case[2], a:tostring())
        assert.is_nil(a.value)
      end)
    end

    it("writes back what it reads: the canonical text parses to the same bytes", function()
      for _, case in ipairs(good) do
        assert.equals(case[3], hex(assert(ip.parse(case[2])).bytes))
      end
    end)

    local bad = {
      ":", ":::", "1:::2", ":1::", "1::2:", ":1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:",
      "1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7:8::", "::1:2:3:4:5:6:7:8",
      "1::2::3", "12345::", "g::1", "::ffff:1.2.3", "::ffff:1.2.3.256",
      "::ffff:01.2.3.4", "1.2.3.4::", "::1.2.3.4:5", "1:2:3:4:5:6:7:1.2.3.4",
      "fe80::1%eth0", "[::1]", "::1 ", " ::1", "2001:db8::/32", "::-1", "1:2:3:4:5:6:7:8:1.2.3.4",
      "1:2:3:4:5:6:7:8:9:10:11:12:13:14:15:16:17:18:19:20",
    }
    for _, s in ipairs(bad) do
      it(("refuses %q"):format(s), function()
        local a, err = ip.parse(s)
        assert.is_nil(a)
        assert.matches("invalid IP address", err)
      end)
    end
  end)

  describe("addresses", function()
    it("are == when their bytes are equal, whatever the spelling", function()
      assert.is_true(ip.parse("2001:db8::1") == ip.parse("2001:0DB8:0:0:0:0:0:1"))
      assert.is_true(ip.parse("10.0.0.1") == ip.parse("10.0.0.1"))
      assert.is_false(ip.parse("10.0.0.1") == ip.parse("10.0.0.2"))
    end)

    it("know an IPv4-mapped address and give the IPv4 address inside", function()
      local m = assert(ip.parse("::ffff:10.1.2.3"))
      assert.is_true(m:is_ipv4_mapped())
      local v4 = m:ipv4()
      assert.equals(4, v4.version)
      assert.equals("10.1.2.3", v4:tostring())
      assert.is_false(assert(ip.parse("::10.1.2.3")):is_ipv4_mapped())
      assert.is_nil(assert(ip.parse("2001:db8::1")):ipv4())
      assert.equals("10.1.2.3", assert(ip.parse("10.1.2.3")):ipv4():tostring())
    end)

    it("ip.equal counts a.b.c.d and ::ffff:a.b.c.d as the same address", function()
      assert.is_true(ip.equal("10.1.2.3", "::ffff:10.1.2.3"))
      assert.is_true(ip.equal("::FFFF:a01:203", "10.1.2.3"))
      assert.is_true(ip.equal(ip.parse("2001:db8::1"), "2001:db8:0::1"))
      assert.is_false(ip.equal("10.1.2.3", "::10.1.2.3"))
      assert.is_false(ip.equal("10.1.2.3", "garbage"))
      assert.is_false(ip.equal("garbage", "garbage"))
    end)
  end)

  describe("ip.version", function()
    it("is 4 for IPv4, 6 for IPv6 (mapped ones too) and nil for anything else", function()
      assert.equals(4, ip.version("192.0.2.1"))
      assert.equals(6, ip.version("::1"))
      assert.equals(6, ip.version("::ffff:192.0.2.1"))
      assert.is_nil(ip.version("300.1.1.1"))
      assert.is_nil(ip.version("mail.example.com"))
      assert.is_nil(ip.version(""))
      assert.is_nil(ip.version(nil))
      assert.is_nil(ip.version("10.0.0.0/8"))
    end)
  end)

  describe("ip.cidr", function()
    it("reads an IPv4 network", function()
      local n = assert(ip.cidr("10.0.0.0/8"))
      assert.equals(4, n.version)
      assert.equals(8, n.prefix)
      assert.equals("10.0.0.0", n.address:tostring())
      assert.equals("10.0.0.0/8", n:tostring())
      assert.equals("10.0.0.0/8", tostring(n))
    end)

    it("reads an IPv6 network", function()
      local n = assert(ip.cidr("2001:DB8::/32"))
      assert.equals(6, n.version)
      assert.equals(32, n.prefix)
      assert.equals("2001:db8::/32", n:tostring())
    end)

    it("takes a bare address as a /32 or a /128", function()
      assert.equals("192.0.2.1/32", ip.cidr("192.0.2.1"):tostring())
      assert.equals("::1/128", ip.cidr("::1"):tostring())
      assert.is_true(ip.cidr("192.0.2.1"):contains("192.0.2.1"))
      assert.is_false(ip.cidr("192.0.2.1"):contains("192.0.2.2"))
    end)

    it("clears host bits set after the prefix (normalises, like nginx's allow)", function()
      assert.equals("10.0.0.0/8", ip.cidr("10.1.2.3/8"):tostring())
      assert.equals("192.168.0.0/23", ip.cidr("192.168.1.77/23"):tostring())
      assert.equals("2001:db8::/32", ip.cidr("2001:db8:ffff::1/32"):tostring())
      assert.equals("2001:db8:ff00::/40", ip.cidr("2001:db8:ffff::1/40"):tostring())
      assert.equals("0.0.0.0/0", ip.cidr("1.2.3.4/0"):tostring())
      assert.equals("::/0", ip.cidr("ffff::1/0"):tostring())
    end)

    local bad = {
      { "10.0.0.0/33", "out of range" }, { "::/129", "out of range" },
      { "10.0.0.0/-1", "invalid prefix" }, { "10.0.0.0/", "invalid prefix" },
      { "10.0.0.0/08", "invalid prefix" }, { "10.0.0.0/8/8", "invalid prefix" },
      { "10.0.0.0/ 8", "invalid prefix" }, { "10.0.0.0/8 ", "invalid prefix" },
      { "10.0.0.0/a", "invalid prefix" }, { "10.0.0.0/1000", "invalid prefix" },
      { "/8", "invalid address" }, { "10.0.0/8", "invalid address" },
      { "2001:db8:::/32", "invalid address" }, { "", "invalid address" },
      { "example.com/24", "invalid address" },
    }
    for _, case in ipairs(bad) do
      it(("refuses %q (%s)"):format(case[1], case[2]), function()
        local n, err = ip.cidr(case[1])
        assert.is_nil(n)
        assert.matches(case[2], err)
      end)
    end

    it("accepts the prefix lengths at the edges: /0, /32, /128", function()
      assert.is_truthy(ip.cidr("0.0.0.0/0"))
      assert.is_truthy(ip.cidr("1.2.3.4/32"))
      assert.is_truthy(ip.cidr("::/0"))
      assert.is_truthy(ip.cidr("::1/128"))
      assert.is_truthy(ip.cidr("::ffff:1.2.3.4/128"))
    end)

    it("contains the addresses of its range and no others", function()
      local n = ip.cidr("192.168.4.0/22")
      assert.is_true(n:contains("192.168.4.0"))
      assert.is_true(n:contains("192.168.7.255"))
      assert.is_false(n:contains("192.168.3.255"))
      assert.is_false(n:contains("192.168.8.0"))
      assert.is_true(n:contains(ip.parse("192.168.5.1")))
    end)

    it("handles prefixes that are not a multiple of 8 in IPv6", function()
      local n = ip.cidr("2001:db8:80::/41")
      assert.is_true(n:contains("2001:db8:80::1"))
      assert.is_true(n:contains("2001:db8:ff:ffff::1"))
      assert.is_false(n:contains("2001:db8:7f:ffff::1"))
      assert.is_false(n:contains("2001:db8:100::"))
    end)

    it("0.0.0.0/0 contains every IPv4 address, ::/0 every address", function()
      local all4, all = ip.cidr("0.0.0.0/0"), ip.cidr("::/0")
      assert.is_true(all4:contains("0.0.0.0"))
      assert.is_true(all4:contains("255.255.255.255"))
      assert.is_false(all4:contains("2001:db8::1"))
      assert.is_true(all:contains("2001:db8::1"))
      assert.is_true(all:contains("10.0.0.1"))   -- as ::ffff:10.0.0.1
    end)

    it("matches IPv4-mapped IPv6 addresses against IPv4 networks and back", function()
      assert.is_true(ip.cidr("10.0.0.0/8"):contains("::ffff:10.1.2.3"))
      assert.is_false(ip.cidr("10.0.0.0/8"):contains("::ffff:11.1.2.3"))
      assert.is_true(ip.cidr("::ffff:10.0.0.0/104"):contains("10.1.2.3"))
      assert.is_false(ip.cidr("::ffff:10.0.0.0/104"):contains("11.1.2.3"))
      assert.is_true(ip.cidr("::ffff:0:0/96"):contains("192.0.2.1"))
      assert.is_false(ip.cidr("10.0.0.0/8"):contains("::10.1.2.3"))  -- not mapped
    end)

    it("does not contain an IPv6 address in an IPv4 network, or garbage", function()
      assert.is_false(ip.cidr("0.0.0.0/0"):contains("::1"))
      assert.is_false(ip.cidr("10.0.0.0/8"):contains("10.0.0"))
      assert.is_false(ip.cidr("::/0"):contains("not an address"))
      assert.is_false(ip.cidr("::/0"):contains(nil))
    end)
  end)

  describe("ip.list", function()
    local list = assert(ip.list { "10.0.0.0/8", "192.168.0.0/16", "::1/128", "2001:db8::/32" })

    it("contains the addresses of any of its networks", function()
      assert.is_true(list:contains("10.255.0.1"))
      assert.is_true(list:contains("192.168.77.1"))
      assert.is_true(list:contains("::1"))
      assert.is_true(list:contains("2001:db8:1234::5"))
      assert.is_true(list:contains(ip.parse("10.0.0.1")))
      assert.equals(4, list.count)
    end)

    it("does not contain other addresses, or garbage", function()
      assert.is_false(list:contains("11.0.0.1"))
      assert.is_false(list:contains("192.169.0.1"))
      assert.is_false(list:contains("::2"))
      assert.is_false(list:contains("2001:db9::1"))
      assert.is_false(list:contains("banana"))
      assert.is_false(list:contains(""))
      assert.is_false(list:contains(nil))
    end)

    it("matches IPv4-mapped client addresses against its IPv4 networks", function()
      assert.is_true(list:contains("::ffff:10.1.2.3"))
      assert.is_true(list:contains("::ffff:192.168.0.1"))
      assert.is_false(list:contains("::ffff:172.16.0.1"))
    end)

    it("matches IPv4 clients against mapped IPv6 networks and short IPv6 prefixes", function()
      local l = assert(ip.list { "::ffff:172.16.0.0/108", { "::/0", "any" } })
      assert.is_true(l:contains("172.16.1.1"))
      assert.same({ true, "::ffff:172.16.0.0/108" }, { l:lookup("172.16.1.1") })
      assert.same({ "any", "::/0" }, { l:lookup("8.8.8.8") })
    end)

    it("looks up the most specific network, whatever the order of the list", function()
      local routes = assert(ip.list {
        { "0.0.0.0/0", "default" },
        { "10.0.0.0/8", "a" },
        { "10.1.2.0/24", "c" },
        { "10.1.0.0/16", "b" },
        { "10.1.2.3/32", "d" },
        { "2001:db8::/32", "v6" },
        { "2001:db8:1::/48", "v6-more" },
      })
      assert.same({ "d", "10.1.2.3/32" }, { routes:lookup("10.1.2.3") })
      assert.same({ "c", "10.1.2.0/24" }, { routes:lookup("10.1.2.4") })
      assert.same({ "b", "10.1.0.0/16" }, { routes:lookup("10.1.3.1") })
      assert.same({ "a", "10.0.0.0/8" }, { routes:lookup("10.2.0.1") })
      assert.same({ "default", "0.0.0.0/0" }, { routes:lookup("192.0.2.1") })
      assert.same({ "v6-more", "2001:db8:1::/48" }, { routes:lookup("2001:db8:1::9") })
      assert.same({ "v6", "2001:db8::/32" }, { routes:lookup("2001:db8:2::9") })
      assert.is_nil(routes:lookup("2001:db9::1"))
    end)

    it("keeps the first entry when the same network is listed twice", function()
      local l = assert(ip.list { { "10.0.0.0/8", "first" }, { "10.9.9.9/8", "second" } })
      assert.equals("first", (l:lookup("10.1.1.1")))
      assert.equals(2, l.count)
    end)

    it("gives the normalised network text of the entry that matched", function()
      local l = assert(ip.list { "10.1.2.3/8", "2001:DB8::1/32" })
      assert.same({ true, "10.0.0.0/8" }, { l:lookup("10.9.9.9") })
      assert.same({ true, "2001:db8::/32" }, { l:lookup("2001:db8::7") })
    end)

    it("an empty list contains nothing", function()
      local l = assert(ip.list {})
      assert.is_false(l:contains("10.0.0.1"))
      assert.is_false(l:contains("::1"))
      assert.equals(0, l.count)
    end)

    it("refuses an invalid entry with a message naming it", function()
      local l, err = ip.list { "10.0.0.0/8", "10.0.0.0/33" }
      assert.is_nil(l)
      assert.matches("entry 2", err)
      assert.matches("out of range", err)
      l, err = ip.list { "10.0.0.0/8", { "bogus", "x" } }
      assert.is_nil(l)
      assert.matches("entry 2: invalid address", err)
      l, err = ip.list { { "10.0.0.0/8" } }
      assert.is_nil(l)
      assert.matches("entry 1: .*without a value", err)
      l, err = ip.list("10.0.0.0/8")
      assert.is_nil(l)
      assert.matches("expected a list", err)
    end)

    -- a deterministic pseudo-random generator (the same numbers on every run)
    local function lcg(seed)
      local x = seed
      return function(n)
        x = (x * 48271) % 2147483647                 -- Park-Miller
        return x % n
      end
    end

    local function random_v4(r)
      return ("%d.%d.%d.%d"):format(r(256), r(256), r(256), r(256))
    end

    local function random_v6(r)
      local g = {}
      for k = 1, 8 do g[k] = ("%x"):format(r(65536)) end
      g[1] = "2001"                                  -- keep them close together
      g[2] = ("%x"):format(r(4))
      return table.concat(g, ":")
    end

    it("agrees with a linear scan of ip.cidr on random networks and addresses", function()
      local r = lcg(7)
      local texts, nets = {}, {}
      for k = 1, 300 do
        local t
        if k % 3 == 0 then
          t = random_v6(r) .. "/" .. (30 + r(99))
        else
          t = random_v4(r) .. "/" .. (8 + r(25))
        end
        texts[k], nets[k] = t, assert(ip.cidr(t))
      end
      local l = assert(ip.list(texts))
      local hits = 0
      for k = 1, 3000 do
        local a
        if k % 3 == 0 then
          a = nets[1 + r(#nets)].address:tostring()    -- a network's own address
        else
          a = (k % 3 == 1) and random_v6(r) or random_v4(r)
        end
        local expected = false
        for _, n in ipairs(nets) do
          if n:contains(a) then expected = true break end
        end
        assert.equals(expected, l:contains(a), a)
        if expected then hits = hits + 1 end
      end
      assert.is_true(hits >= 1000 and hits < 2900, "hits: " .. hits)
    end)

    it("looks up 100k addresses against 1000 networks (prints the rate)", function()
      local r = lcg(42)
      local texts, inside = {}, {}
      for k = 1, 1000 do
        -- networks in 10.0.0.0/8, prefix /16 to /28
        local plen = 16 + r(13)
        local t = ("10.%d.%d.%d/%d"):format(r(256), r(256), r(256), plen)
        texts[k] = t
        inside[k] = assert(ip.cidr(t))
      end
      local l = assert(ip.list(texts))
      -- half the addresses inside a listed network, half in 172.16.0.0/12
      local addrs = {}
      for k = 1, 100000 do
        if k % 2 == 0 then
          local n = inside[1 + r(1000)]
          local v = n.address.value + r(2 ^ (32 - n.prefix))
          addrs[k] = ("%d.%d.%d.%d"):format(math.floor(v / 16777216) % 256,
            math.floor(v / 65536) % 256, math.floor(v / 256) % 256, v % 256)
        else
          addrs[k] = ("172.%d.%d.%d"):format(16 + r(16), r(256), r(256))
        end
      end
      local t0 = os.clock()
      local hits = 0
      for k = 1, #addrs do
        if l:contains(addrs[k]) then hits = hits + 1 end
      end
      local elapsed = os.clock() - t0
      print(("\n  ip.list: 100000 lookups against 1000 networks in %.3f s (%.0f lookups/s)"):format(
        elapsed, 100000 / math.max(elapsed, 1e-9)))
      assert.equals(50000, hits)
    end)
  end)
end)
