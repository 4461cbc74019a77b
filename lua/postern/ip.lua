-- postern.ip: IPv4 and IPv6 addresses, CIDR networks and fast lists of
-- networks, in pure Lua (LuaJIT's bit library, no C).
--
-- Use in a policy:
--
--   local ip = require "postern.ip"
--
--   -- a list compiled once, when the policy loads
--   local internal = assert(ip.list { "10.0.0.0/8", "192.168.0.0/16", "::1/128", "fd00::/8" })
--
--   function policy.authenticate(s)
--     if internal:contains(s.client_ip) then
--       return { host = "10.0.0.5", port = 143 }
--     end
--     return { host = "10.0.0.6", port = 143 }
--   end
--
--   -- a routing table: the longest matching prefix wins
--   local routes = assert(ip.list {
--     { "10.0.0.0/8",  "pool_a" },
--     { "10.1.0.0/16", "pool_b" },       -- more specific: 10.1.x.x goes here
--   })
--   routes:lookup("10.1.2.3")            --> "pool_b", "10.1.0.0/16"
--   routes:lookup("10.2.0.1")            --> "pool_a", "10.0.0.0/8"
--   routes:lookup("192.0.2.1")           --> nil
--
-- API
--   ip.parse(text)    -> address | nil, err
--       text is an IPv4 dotted quad ("192.0.2.1") or any RFC 4291 IPv6 text
--       form ("::", "::1", "2001:DB8::1", "1:2:3:4:5:6:7:8",
--       "::ffff:192.0.2.1", "64:ff9b::192.0.2.1").
--       address.version   4 or 6
--       address.bytes     the address in network order (4 or 16 bytes)
--       address.value     IPv4 only: the address as an integer (0 .. 2^32-1)
--       address:tostring() (also tostring(address)): the canonical text;
--                         IPv6 as RFC 5952 says (lower case, longest run of
--                         zero groups as "::", "::ffff:a.b.c.d" for mapped)
--       address:is_ipv4_mapped() -> true for ::ffff:a.b.c.d
--       address:ipv4()    -> the IPv4 address inside a mapped one (or itself)
--       a == b            same address (an IPv4 address and its mapped form
--                         are different objects and not ==; use ip.equal)
--   ip.equal(a, b)    -> true when a and b (text or addresses) are the same
--                        address, counting a.b.c.d == ::ffff:a.b.c.d
--   ip.version(text)  -> 4, 6, or nil when text is not an address
--   ip.cidr(text)     -> network | nil, err
--       "10.0.0.0/8", "2001:db8::/32"; a bare address is a /32 or /128.
--       Host bits set after the prefix are allowed and cleared (normalised):
--       ip.cidr("10.1.2.3/8") is 10.0.0.0/8, like nginx's allow/deny.
--       network.version, network.prefix (the length), network.address (the
--       normalised network address), network:tostring() ("10.0.0.0/8"),
--       network:contains(address_or_text) -> true | false
--   ip.list(entries)  -> list | nil, err
--       entries: CIDR strings, or { cidr, value } pairs (value: any non-nil
--       Lua value; a string entry's value is true). An invalid entry makes
--       ip.list return nil and a message naming it.
--       list:contains(address_or_text) -> true | false
--       list:lookup(address_or_text) -> value, "network/prefix" of the most
--           specific matching entry (longest prefix; among equal networks,
--           the first listed), or nil
--       list.count        number of entries
--
-- What is accepted, what is refused
--   IPv4: exactly four decimal parts 0-255, no leading zeros ("010.0.0.1"
--   is refused: some parsers read it as octal), no short forms ("10.1"),
--   no spaces. IPv6: groups of 1-4 hex digits (either case), at most one
--   "::" standing for one or more zero groups, an optional dotted IPv4 tail
--   for the last 32 bits. Zone indexes ("fe80::1%eth0") are refused.
--   Prefix lengths: decimal 0-32 (IPv4) or 0-128 (IPv6), no sign, no
--   leading zeros.
--
-- IPv4-mapped IPv6 addresses
--   ::ffff:a.b.c.d is the same host as a.b.c.d (a dual-stack listener
--   reports IPv4 clients that way), so matching treats them as one:
--   ip.cidr("10.0.0.0/8"):contains("::ffff:10.1.2.3") is true,
--   ip.cidr("::ffff:10.0.0.0/104"):contains("10.1.2.3") is true, and a list
--   with "::/0" contains every IPv4 address too.
--
-- Speed
--   A list is compiled into one hash set per prefix length in use, keyed by
--   the masked address; a lookup parses the address once and probes at most
--   33 (IPv4) or 129 (IPv6) sets, longest first, whatever the list's size.
--   spec/unit/ip_spec.lua prints the rate for 100k lookups over 1000 networks.

local bit = require "bit"

local band, lshift, rshift, tobit = bit.band, bit.lshift, bit.rshift, bit.tobit
local byte, char, sub, format = string.byte, string.char, string.sub, string.format
local concat = table.concat
local type, tonumber, ipairs = type, tonumber, ipairs
local setmetatable, getmetatable = setmetatable, getmetatable

local _M = {}

local B_0, B_9, B_DOT, B_COLON = 48, 57, 46, 58
local B_a, B_f, B_A, B_F = 97, 102, 65, 70

local MAPPED_PREFIX = "\0\0\0\0\0\0\0\0\0\0\255\255"

-- parsing ---------------------------------------------------------------------

-- A dotted quad in s[i..j] -> the address as a signed 32-bit number, or nil.
local function parse4(s, i, j)
  local n, parts = 0, 0
  while true do
    local start, v = i, 0
    while i <= j do
      local c = byte(s, i)
      if c < B_0 or c > B_9 then break end
      v = v * 10 + (c - B_0)
      i = i + 1
    end
    local digits = i - start
    if digits == 0 or digits > 3 or v > 255 then return nil end
    if digits > 1 and byte(s, start) == B_0 then return nil end   -- leading zero
    n = n * 256 + v
    parts = parts + 1
    if parts == 4 then
      if i <= j then return nil end
      return tobit(n)
    end
    if i > j or byte(s, i) ~= B_DOT then return nil end
    i = i + 1
  end
end

local function hexval(c)
  if c >= B_0 and c <= B_9 then return c - B_0 end
  if c >= B_a and c <= B_f then return c - B_a + 10 end
  if c >= B_A and c <= B_F then return c - B_A + 10 end
  return nil
end

local groups_buf = {}

-- IPv6 text in s[1..j] -> 16 raw bytes, or nil.
local function parse6(s, j)
  if j < 2 or j > 45 then return nil end
  local g, n, gap = groups_buf, 0, nil
  local i = 1
  if byte(s, 1) == B_COLON then
    if byte(s, 2) ~= B_COLON then return nil end        -- ":1::" and the like
    gap, i = 0, 3
  end
  while i <= j do
    local start, v = i, 0
    while i <= j do
      local d = hexval(byte(s, i))
      if not d then break end
      v = v * 16 + d
      i = i + 1
    end
    local digits = i - start
    if i <= j and byte(s, i) == B_DOT then
      -- the dotted IPv4 tail: the last 32 bits
      if n > 6 then return nil end
      local v4 = parse4(s, start, j)
      if not v4 then return nil end
      g[n + 1] = rshift(v4, 16)
      g[n + 2] = band(v4, 0xffff)
      n = n + 2
      break
    end
    if digits == 0 or digits > 4 then return nil end
    n = n + 1
    if n > 8 then return nil end
    g[n] = v
    if i > j then break end
    if byte(s, i) ~= B_COLON then return nil end
    i = i + 1
    if i > j then return nil end                          -- a trailing single ':'
    if byte(s, i) == B_COLON then
      if gap then return nil end                          -- a second '::'
      gap = n
      i = i + 1
    end
  end
  if gap then
    if n > 7 then return nil end                          -- '::' must stand for a group
    local missing = 8 - n
    for k = n, gap + 1, -1 do g[k + missing] = g[k] end
    for k = gap + 1, gap + missing do g[k] = 0 end
  elseif n ~= 8 then
    return nil
  end
  return char(
    rshift(g[1], 8), band(g[1], 255), rshift(g[2], 8), band(g[2], 255),
    rshift(g[3], 8), band(g[3], 255), rshift(g[4], 8), band(g[4], 255),
    rshift(g[5], 8), band(g[5], 255), rshift(g[6], 8), band(g[6], 255),
    rshift(g[7], 8), band(g[7], 255), rshift(g[8], 8), band(g[8], 255))
end

-- text -> 4, number (signed 32-bit) | 6, 16 bytes | nil
local function parse_raw(s)
  if type(s) ~= "string" then return nil end
  local j = #s
  if j == 0 or j > 45 then return nil end
  for k = 1, j do
    local c = byte(s, k)
    if c == B_COLON then
      local b = parse6(s, j)
      if b then return 6, b end
      return nil
    end
    if c == B_DOT then break end
  end
  local n = parse4(s, 1, j)
  if n then return 4, n end
  return nil
end

local function v4_bytes(n)
  return char(band(rshift(n, 24), 255), band(rshift(n, 16), 255), band(rshift(n, 8), 255), band(n, 255))
end

local function bytes_v4(b, at)
  return tobit(((byte(b, at) * 256 + byte(b, at + 1)) * 256 + byte(b, at + 2)) * 256 + byte(b, at + 3))
end

local function is_mapped(b)
  return sub(b, 1, 12) == MAPPED_PREFIX
end

local function unsigned(n)
  if n < 0 then return n + 4294967296 end
  return n
end

-- formatting ------------------------------------------------------------------

local function format4(n)
  return format("%d.%d.%d.%d", band(rshift(n, 24), 255), band(rshift(n, 16), 255),
    band(rshift(n, 8), 255), band(n, 255))
end

local function format6(b)
  if is_mapped(b) then
    return "::ffff:" .. format4(bytes_v4(b, 13))
  end
  local g = {}
  for k = 1, 8 do g[k] = byte(b, 2 * k - 1) * 256 + byte(b, 2 * k) end
  -- the longest run of two or more zero groups (the first one on a tie)
  local best_at, best_len, k = nil, 1, 1
  while k <= 8 do
    if g[k] == 0 then
      local e = k
      while e < 8 and g[e + 1] == 0 do e = e + 1 end
      if e - k + 1 > best_len then best_at, best_len = k, e - k + 1 end
      k = e + 1
    else
      k = k + 1
    end
  end
  local out = {}
  k = 1
  while k <= 8 do
    if k == best_at then
      out[#out + 1] = (k == 1) and "::" or ":"
      k = k + best_len
      if k > 8 then break end
    else
      out[#out + 1] = format("%x", g[k])
      if k < 8 then out[#out + 1] = ":" end
      k = k + 1
    end
  end
  return concat(out)
end

-- address objects -----------------------------------------------------------------

local Address = {}
Address.__index = Address

local function new_address(version, raw)
  local a
  if version == 4 then
    a = { version = 4, value = unsigned(raw), bytes = v4_bytes(raw), _n = raw }
  else
    a = { version = 6, bytes = raw }
  end
  return setmetatable(a, Address)
end

function Address:tostring()
  if self.version == 4 then return format4(self._n) end
  return format6(self.bytes)
end

Address.__tostring = Address.tostring

function Address.__eq(a, b)
  return a.bytes == b.bytes
end

function Address:is_ipv4_mapped()
  return self.version == 6 and is_mapped(self.bytes)
end

function Address:ipv4()
  if self.version == 4 then return self end
  if is_mapped(self.bytes) then return new_address(4, bytes_v4(self.bytes, 13)) end
  return nil
end

function _M.parse(s)
  if type(s) ~= "string" then
    return nil, "expected an address string, got " .. type(s)
  end
  local version, raw = parse_raw(s)
  if not version then
    return nil, format("invalid IP address %q", s)
  end
  return new_address(version, raw)
end

function _M.version(s)
  return (parse_raw(s))
end

-- text or address object -> 4, number | 6, 16 bytes | nil; mapped IPv6
-- addresses come back as IPv4
local function normalise(a)
  local version, raw
  if type(a) == "string" then
    version, raw = parse_raw(a)
  elseif type(a) == "table" and getmetatable(a) == Address then
    version = a.version
    raw = version == 4 and a._n or a.bytes
  else
    return nil
  end
  if version == 6 and is_mapped(raw) then
    return 4, bytes_v4(raw, 13)
  end
  return version, raw
end

function _M.equal(a, b)
  local va, ra = normalise(a)
  local vb, rb = normalise(b)
  return va ~= nil and va == vb and ra == rb
end

-- masks -------------------------------------------------------------------------------

local MASK4 = {}        -- prefix length -> 32-bit mask
for len = 0, 32 do
  MASK4[len] = len == 0 and 0 or lshift(-1, 32 - len)
end

local MASK8 = {}        -- bits kept in a partial byte
for r = 0, 8 do MASK8[r] = band(lshift(0xff, 8 - r), 0xff) end

-- 16 bytes, prefix length -> the masked key (the prefix's whole bytes and
-- its partial byte, masked)
local function key6(b, len)
  local whole, r = rshift(len, 3), band(len, 7)
  if r == 0 then return sub(b, 1, whole) end
  return sub(b, 1, whole) .. char(band(byte(b, whole + 1), MASK8[r]))
end

local function pad6(key)
  return key .. string.rep("\0", 16 - #key)
end

-- networks ---------------------------------------------------------------------------

local Network = {}
Network.__index = Network

-- text -> version, prefix, raw (masked: number or 16 bytes) | nil, err
local function parse_cidr(s)
  if type(s) ~= "string" then
    return nil, "expected a CIDR string, got " .. type(s)
  end
  local addr, plen = s, nil
  local slash = s:find("/", 1, true)
  if slash then
    addr = sub(s, 1, slash - 1)
    local p = sub(s, slash + 1)
    if not p:match("^%d%d?%d?$") or (#p > 1 and byte(p, 1) == B_0) then
      return nil, format("invalid prefix length in %q", s)
    end
    plen = tonumber(p)
  end
  local version, raw = parse_raw(addr)
  if not version then
    return nil, format("invalid address in %q", s)
  end
  local max = version == 4 and 32 or 128
  plen = plen or max
  if plen > max then
    return nil, format("prefix length out of range (0-%d) in %q", max, s)
  end
  if version == 4 then
    raw = band(raw, MASK4[plen])
  else
    raw = pad6(key6(raw, plen))
  end
  return version, plen, raw
end

-- an IPv6 network inside ::ffff:0:0/96 -> the IPv4 network it stands for
local function as_v4_network(version, plen, raw)
  if version == 6 and plen >= 96 and is_mapped(raw) then
    return 4, plen - 96, bytes_v4(raw, 13)
  end
  return version, plen, raw
end

function _M.cidr(s)
  local version, plen, raw = parse_cidr(s)
  if not version then return nil, plen end
  local net = setmetatable({
    version = version,
    prefix = plen,
    address = new_address(version, raw),
  }, Network)
  net._v, net._p, net._raw = as_v4_network(version, plen, raw)
  return net
end

function Network:tostring()
  return self.address:tostring() .. "/" .. self.prefix
end

Network.__tostring = Network.tostring

function Network:contains(a)
  local version, raw = normalise(a)
  if not version then return false end
  local nv, np, nraw = self._v, self._p, self._raw
  if version == 4 then
    if nv == 4 then return band(raw, MASK4[np]) == nraw end
    -- an IPv6 network shorter than /96 may hold the mapped form
    raw = MAPPED_PREFIX .. v4_bytes(raw)
  elseif nv == 4 then
    return false
  end
  return key6(raw, np) == key6(nraw, np)
end

-- lists ------------------------------------------------------------------------------

local List = {}
List.__index = List

local function descending(a, b) return a > b end

function _M.list(entries)
  if type(entries) ~= "table" then
    return nil, "ip.list: expected a list of CIDR strings, got " .. type(entries)
  end
  local sets4, sets6 = {}, {}      -- prefix length -> { masked key -> entry }
  local lens4, lens6 = {}, {}
  local count = 0
  for i, e in ipairs(entries) do
    local text, value = e, true
    if type(e) == "table" then
      text, value = e[1], e[2]
      if value == nil then
        return nil, format("ip.list: entry %d: { cidr, value } without a value", i)
      end
    end
    local version, plen, raw = parse_cidr(text)
    if not version then
      return nil, format("ip.list: entry %d: %s", i, plen)
    end
    local net_text = new_address(version, raw):tostring() .. "/" .. plen
    version, plen, raw = as_v4_network(version, plen, raw)
    local sets, lens = sets4, lens4
    local key = raw
    if version == 6 then
      sets, lens = sets6, lens6
      key = key6(raw, plen)
    end
    local set = sets[plen]
    if not set then
      set = {}
      sets[plen] = set
      lens[#lens + 1] = plen
    end
    if set[key] == nil then                   -- the first listed wins
      set[key] = { value = value, text = net_text }
    end
    count = count + 1
  end
  table.sort(lens4, descending)
  table.sort(lens6, descending)
  -- the IPv6 lengths short enough to hold mapped IPv4 addresses
  local lens6_short = {}
  for _, l in ipairs(lens6) do
    if l < 96 then lens6_short[#lens6_short + 1] = l end
  end
  local masks4 = {}
  for k, l in ipairs(lens4) do masks4[k] = MASK4[l] end
  return setmetatable({
    count = count,
    _sets4 = sets4, _sets6 = sets6,
    _lens4 = lens4, _masks4 = masks4, _lens6 = lens6, _lens6_short = lens6_short,
  }, List)
end

-- the entry of the most specific network holding `a`, or nil
local function find(self, a)
  local version, raw = normalise(a)
  if not version then return nil end
  local lens, sets
  if version == 4 then
    lens, sets = self._lens4, self._sets4
    local masks = self._masks4
    for k = 1, #lens do
      local hit = sets[lens[k]][band(raw, masks[k])]
      if hit then return hit end
    end
    lens = self._lens6_short
    if lens[1] == nil then return nil end
    raw = MAPPED_PREFIX .. v4_bytes(raw)
  else
    lens = self._lens6
  end
  sets = self._sets6
  for k = 1, #lens do
    local l = lens[k]
    local hit = sets[l][key6(raw, l)]
    if hit then return hit end
  end
  return nil
end

function List:contains(a)
  return find(self, a) ~= nil
end

function List:lookup(a)
  local hit = find(self, a)
  if hit then return hit.value, hit.text end
  return nil
end

return _M
