-- postern.testing.serialize: Lua values as Lua source text (configuration
-- files, mock options): serialize(value) -> text; write_config(path, table)
-- writes "return <table>" and returns path. Keys are sorted, so the text of
-- a table is always the same.
local util = require "postern.testing.util"

local _M = {}

local keywords = {}
for w in ([[and break do else elseif end false for function goto if in local nil
  not or repeat return then true until while]]):gmatch("%a+") do keywords[w] = true end

local function ser(v, indent, seen)
  local t = type(v)
  if t == "string" then
    return (("%q"):format(v):gsub("\\\n", "\\n"))
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then error("cannot serialize " .. tostring(v)) end
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
    return ("%.17g"):format(v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    if seen[v] then error("cannot serialize a table that contains itself") end
    seen[v] = true
    local n = #v
    local inner = indent .. "  "
    local out = {}
    for i = 1, n do out[#out + 1] = inner .. ser(v[i], inner, seen) .. "," end
    local keys = {}
    for k in pairs(v) do
      if not (type(k) == "number" and k >= 1 and k <= n and k == math.floor(k)) then
        keys[#keys + 1] = k
      end
    end
    table.sort(keys, function(a, b)
      if type(a) == type(b) then return a < b end
      return type(a) == "number"
    end)
    for _, k in ipairs(keys) do
      local ks
      if type(k) == "string" and k:match("^[%a_][%w_]*$") and not keywords[k] then
        ks = k
      else
        ks = "[" .. ser(k, inner, seen) .. "]"
      end
      out[#out + 1] = inner .. ks .. " = " .. ser(v[k], inner, seen) .. ","
    end
    seen[v] = nil
    if #out == 0 then return "{}" end
    return "{\n" .. table.concat(out, "\n") .. "\n" .. indent .. "}"
  else
    error("cannot serialize a " .. t)
  end
end

function _M.serialize(v) return ser(v, "", {}) end

function _M.write_config(path, tbl)
  util.write_file(path, "return " .. _M.serialize(tbl) .. "\n")
  return path
end

return _M
