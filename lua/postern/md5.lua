--- postern.md5: MD5 (RFC 1321) and HMAC-MD5 (RFC 2104) in pure LuaJIT.
--
-- For APOP (RFC 1939) and CRAM-MD5 (RFC 2195) in mocks and policies; not for
-- new security designs.
--
--   local md5 = require "postern.md5"
--   md5.sum(s)            -> 16 raw bytes
--   md5.hex(s)            -> 32 lowercase hex digits
--   md5.hmac(key, msg)    -> 16 raw bytes
--   md5.hmac_hex(key, msg) -> 32 lowercase hex digits
--
--   md5.hex("<1896.697170952@dbc.mtview.ca.us>tanstaaf")   -- an APOP digest
--   md5.hmac_hex("tanstaaftanstaaf", challenge)            -- a CRAM-MD5 digest

local bit = require "bit"

local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rol, tobit, tohex = bit.rol, bit.tobit, bit.tohex
local byte, char, rep = string.byte, string.char, string.rep
local floor = math.floor

local _M = {}

-- per-round constants K[i] = floor(abs(sin(i + 1)) * 2^32), shifts S[i]
local K, S = {}, {}
for i = 0, 63 do
  K[i] = tobit(floor(math.abs(math.sin(i + 1)) * 2 ^ 32))
end
do
  local shifts = { { 7, 12, 17, 22 }, { 5, 9, 14, 20 }, { 4, 11, 16, 23 }, { 6, 10, 15, 21 } }
  for i = 0, 63 do S[i] = shifts[floor(i / 16) + 1][i % 4 + 1] end
end

local X = {}

-- one 64-byte block of s starting at byte offset pos (1-based)
local function block(s, pos, a0, b0, c0, d0)
  for j = 0, 15 do
    local p = pos + j * 4
    local x1, x2, x3, x4 = byte(s, p, p + 3)
    X[j] = bor(x1, x2 * 256, x3 * 65536, x4 * 16777216)
  end
  local a, b, c, d = a0, b0, c0, d0
  for i = 0, 63 do
    local f, g
    if i < 16 then
      f = bor(band(b, c), band(bnot(b), d))
      g = i
    elseif i < 32 then
      f = bor(band(d, b), band(bnot(d), c))
      g = (5 * i + 1) % 16
    elseif i < 48 then
      f = bxor(b, c, d)
      g = (3 * i + 5) % 16
    else
      f = bxor(c, bor(b, bnot(d)))
      g = (7 * i) % 16
    end
    local t = d
    d = c
    c = b
    b = tobit(b + rol(tobit(a + f + K[i] + X[g]), S[i]))
    a = t
  end
  return tobit(a0 + a), tobit(b0 + b), tobit(c0 + c), tobit(d0 + d)
end

local function le32(x)
  return char(band(x, 255), band(bit.rshift(x, 8), 255), band(bit.rshift(x, 16), 255),
    band(bit.rshift(x, 24), 255))
end

function _M.sum(s)
  assert(type(s) == "string", "md5.sum: string expected")
  local n = #s
  -- padding: 0x80, zeros to 56 mod 64, then the bit length (64-bit little endian)
  local bits = n * 8
  local lo = bits % 2 ^ 32
  local hi = floor(bits / 2 ^ 32)
  local tail = char(128) .. rep("\0", (55 - n) % 64) .. le32(tobit(lo)) .. le32(tobit(hi))
  local a, b, c, d = tobit(0x67452301), tobit(0xefcdab89), tobit(0x98badcfe), tobit(0x10325476)
  local full = n - n % 64
  for pos = 1, full, 64 do
    a, b, c, d = block(s, pos, a, b, c, d)
  end
  local last = s:sub(full + 1) .. tail
  for pos = 1, #last, 64 do
    a, b, c, d = block(last, pos, a, b, c, d)
  end
  return le32(a) .. le32(b) .. le32(c) .. le32(d)
end

local function hex(raw)
  return (raw:gsub(".", function(ch) return tohex(byte(ch), 2) end))
end

function _M.hex(s) return hex(_M.sum(s)) end

function _M.hmac(key, msg)
  assert(type(key) == "string" and type(msg) == "string", "md5.hmac: strings expected")
  if #key > 64 then key = _M.sum(key) end
  key = key .. rep("\0", 64 - #key)
  local ipad = key:gsub(".", function(ch) return char(bxor(byte(ch), 0x36)) end)
  local opad = key:gsub(".", function(ch) return char(bxor(byte(ch), 0x5c)) end)
  return _M.sum(opad .. _M.sum(ipad .. msg))
end

function _M.hmac_hex(key, msg) return hex(_M.hmac(key, msg)) end

return _M
