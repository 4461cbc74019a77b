-- postern.ring: consistent hashing of a key (a user name, say) over
-- weighted backends, in pure Lua (LuaJIT's bit library, no C).
--
-- Use in a policy:
--
--   local ring = require "postern.ring"
--
--   local backends = assert(ring.new {
--     { name = "mail1", host = "10.0.0.1", port = 143 },
--     { name = "mail2", host = "10.0.0.2", port = 143 },
--     { name = "mail3", host = "10.0.0.3", port = 143, weight = 2 },  -- twice the users
--   })
--
--   function policy.authenticate(s)
--     -- every upstream, the user's own first: postern tries the next one
--     -- when one cannot be reached
--     return backends:sequence(s.user:lower())
--   end
--
-- (postern refuses unknown keys in an upstream table; `weight` is one, so
-- return copies without it, as scripts/by_domain.lua does, or keep the
-- weight outside the upstream: ring.new{ { name =, weight =, upstream = {...} } }
-- and map the result. `name` is accepted in an upstream.)
--
-- API
--   ring.new(backends [, options]) -> ring | nil, err
--       backends: a list of tables, each with
--         name    unique within the ring; it alone places the backend on
--                 the ring, so keep it when a host's address changes
--                 (default: "host:port" when the table has both)
--         weight  a number >= 0 (default 1); the backend gets
--                 floor(weight * points + 0.5) points, so about weight
--                 shares of the keys; 0 takes it out (it is never chosen)
--       and any other fields of yours; the ring hands back these same tables.
--       options.points  points per unit of weight (default 160)
--   ring:get(key)          -> the backend owning key (a string or number),
--                             or nil when no backend has a weight above 0
--   ring:sequence(key [, n]) -> a list of up to n distinct backends (all by
--                             default): the owner first, then the next
--                             distinct ones clockwise; the failover order
--   ring.count             number of backends with points on the ring
--   ring.hash(s [, seed])  -> MurmurHash3 x86_32 of s, an integer in
--                             0 .. 2^32-1 (seed default 0)
--
-- How it works (ketama-like): each backend gets weight * points virtual
-- points on a 32-bit circle, at ring.hash(name .. "#" .. i) for i = 1, 2,
-- ...; a key belongs to the first point at or after ring.hash(key), going
-- round past 2^32-1 to the start. Adding or removing one backend of N
-- moves only the keys of the points it gains or loses, about 1/N of them;
-- every other key stays where it was. The hash is MurmurHash3 (x86, 32
-- bit, Austin Appleby's public domain reference; ring.hash("hello") is
-- 0x248bfa47) computed with bit operations, so the placement is the same
-- in every process, on every machine, whatever the order of `backends`
-- (points of equal hash are ordered by name).

local bit = require "bit"

local band, bxor, lshift, rshift, tobit = bit.band, bit.bxor, bit.lshift, bit.rshift, bit.tobit
local rol = bit.rol
local byte, format = string.byte, string.format
local floor = math.floor
local type, tostring, ipairs, setmetatable = type, tostring, ipairs, setmetatable

local _M = {}

-- a * b modulo 2^32, for 32-bit a and b (a double holds only 53 bits, so
-- the product is taken in two halves)
local function mul32(a, b)
  local lo, hi = band(a, 0xffff), rshift(a, 16)
  return tobit(tobit(lo * b) + lshift(tobit(hi * b), 16))
end

local C1, C2 = tobit(0xcc9e2d51), tobit(0x1b873593)
local F1, F2 = tobit(0x85ebca6b), tobit(0xc2b2ae35)
local N = tobit(0xe6546b64)

local function murmur3(s, seed)
  local h = tobit(seed or 0)
  local len = #s
  local blocks = len - len % 4
  for i = 1, blocks, 4 do
    local a, b, c, d = byte(s, i, i + 3)
    local k = tobit(a + b * 256 + c * 65536 + d * 16777216)
    k = mul32(rol(mul32(k, C1), 15), C2)
    h = bxor(h, k)
    h = tobit(mul32(rol(h, 13), 5) + N)
  end
  local rest = len - blocks
  if rest > 0 then
    local k = 0
    if rest == 3 then k = byte(s, blocks + 3) * 65536 end
    if rest >= 2 then k = k + byte(s, blocks + 2) * 256 end
    k = k + byte(s, blocks + 1)
    k = mul32(rol(mul32(k, C1), 15), C2)
    h = bxor(h, k)
  end
  h = bxor(h, len)
  h = bxor(h, rshift(h, 16))
  h = mul32(h, F1)
  h = bxor(h, rshift(h, 13))
  h = mul32(h, F2)
  h = bxor(h, rshift(h, 16))
  if h < 0 then h = h + 4294967296 end
  return h
end

_M.hash = murmur3

local Ring = {}
Ring.__index = Ring

function _M.new(backends, options)
  if type(backends) ~= "table" then
    return nil, "ring.new: expected a list of backends, got " .. type(backends)
  end
  local per = (options and options.points) or 160
  if type(per) ~= "number" or per < 1 then
    return nil, "ring.new: options.points must be a number >= 1"
  end
  local points, names, count = {}, {}, 0
  for i, b in ipairs(backends) do
    if type(b) ~= "table" then
      return nil, format("ring.new: backend %d: expected a table, got %s", i, type(b))
    end
    local name = b.name
    if name == nil and b.host ~= nil and b.port ~= nil then
      name = tostring(b.host) .. ":" .. tostring(b.port)
    end
    if type(name) ~= "string" and type(name) ~= "number" then
      return nil, format("ring.new: backend %d: no name (set name, or host and port)", i)
    end
    name = tostring(name)
    if names[name] then
      return nil, format("ring.new: backend %d: name %q is used twice", i, name)
    end
    names[name] = true
    local weight = b.weight
    if weight == nil then weight = 1 end
    if type(weight) ~= "number" or weight < 0 or weight ~= weight or weight == math.huge then
      return nil, format("ring.new: backend %d (%s): weight must be a number >= 0", i, name)
    end
    local n = floor(weight * per + 0.5)
    if n > 0 then count = count + 1 end
    for k = 1, n do
      points[#points + 1] = { murmur3(name .. "#" .. k), name, b }
    end
  end
  table.sort(points, function(x, y)
    if x[1] ~= y[1] then return x[1] < y[1] end
    return x[2] < y[2]
  end)
  local hashes, owners = {}, {}
  for k, p in ipairs(points) do
    hashes[k], owners[k] = p[1], p[3]
  end
  return setmetatable({ count = count, _hashes = hashes, _owners = owners }, Ring)
end

-- the index of the first point at or after hash(key)
local function first_point(self, key)
  local hashes = self._hashes
  local n = #hashes
  if n == 0 then return nil end
  local h = murmur3(type(key) == "string" and key or tostring(key))
  local lo, hi = 1, n + 1
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    if hashes[mid] < h then lo = mid + 1 else hi = mid end
  end
  if lo > n then lo = 1 end
  return lo
end

function Ring:get(key)
  local i = first_point(self, key)
  return i and self._owners[i]
end

function Ring:sequence(key, n)
  local out = {}
  local i = first_point(self, key)
  if not i then return out end
  n = n or self.count
  if n > self.count then n = self.count end
  local owners = self._owners
  local total = #owners
  local seen = {}
  for _ = 1, total do
    local b = owners[i]
    if not seen[b] then
      seen[b] = true
      out[#out + 1] = b
      if #out >= n then break end
    end
    i = i + 1
    if i > total then i = 1 end
  end
  return out
end

return _M
