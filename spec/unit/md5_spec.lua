-- postern.md5: RFC 1321 test vectors, HMAC-MD5 (RFC 2104/2202), the CRAM-MD5
-- example of RFC 2195 and the APOP example of RFC 1939; cross-checked with
-- coreutils md5sum around the padding boundaries.
local md5 = require "postern.md5"

describe("postern.md5", function()
  it("gives the RFC 1321 test-suite digests", function()
    local vectors = {
      { "", "d41d8cd98f00b204e9800998ecf8427e" },
      { "a", "0cc175b9c0f1b6a831c399e269772661" },
      { "abc", "900150983cd24fb0d6963f7d28e17f72" },
      { "message digest", "f96b697d7cb7938d525a2f31aaf161d0" },
      { "abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b" },
      { "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "d174ab98d277d9f5a5611c2c9f419d9f" },
      { ("1234567890"):rep(8), "57edf4a22be3c955ac49da2e2107b67a" },
    }
    for _, v in ipairs(vectors) do
      assert.equals(v[2], md5.hex(v[1]), "md5 of " .. ("%q"):format(v[1]))
    end
  end)

  it("sum gives the 16 raw bytes behind hex", function()
    local raw = md5.sum("abc")
    assert.equals(16, #raw)
    assert.equals("900150983cd24fb0d6963f7d28e17f72",
      (raw:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)))
  end)

  it("agrees with md5sum at the block and padding boundaries, for all byte values", function()
    local path = os.tmpname()
    for _, n in ipairs { 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 65537 } do
      local t = {}
      for i = 1, n do t[i] = string.char((i * 37 + 11) % 256) end
      local s = table.concat(t)
      local f = assert(io.open(path, "wb")); f:write(s); f:close()
      local p = assert(io.popen("md5sum " .. path))
      local want = p:read("*a"):match("^(%x+)")
      p:close()
      assert.equals(want, md5.hex(s), "length " .. n)
    end
    os.remove(path)
  end)

  it("gives the RFC 1939 APOP example digest", function()
    assert.equals("c4c9334bac560ecc979e58001b3e22fb",
      md5.hex("<1896.697170952@dbc.mtview.ca.us>tanstaaf"))
  end)

  it("gives the RFC 2195 CRAM-MD5 example digest", function()
    assert.equals("b913a602c7eda7a495b4e6e7334d3890",
      md5.hmac_hex("tanstaaftanstaaf", "<1896.697170952@postoffice.reston.mci.net>"))
  end)

  it("gives the RFC 2202 HMAC-MD5 test cases (short, long and over-block-size keys)", function()
    assert.equals("9294727a3638bb1c13f48ef8158bfc9d", md5.hmac_hex(("\11"):rep(16), "Hi There"))
    assert.equals("750c783e6ab0b503eaa86e310a5db738", md5.hmac_hex("Jefe", "what do ya want for nothing?"))
    assert.equals("56be34521d144c88dbb8c733f0e8b3f6", md5.hmac_hex(("\170"):rep(16), ("\221"):rep(50)))
    assert.equals("6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd",
      md5.hmac_hex(("\170"):rep(80), "Test Using Larger Than Block-Size Key - Hash Key First"))
    assert.equals(16, #md5.hmac("k", "m"))
  end)

  it("rejects non-string input", function()
    assert.has_error(function() md5.hex(nil) end)
    assert.has_error(function() md5.hmac_hex("k", 5) end)
  end)
end)
