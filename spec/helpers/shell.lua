-- spec/helpers/shell.lua: run a real client program (curl, python3) from a
-- spec and get its output and exit status.
local _M = {}

function _M.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- run({ "curl", "-s", url }) -> combined stdout+stderr, exit status
function _M.run(argv)
  local q = {}
  for i, a in ipairs(argv) do
    q[i] = _M.quote(a)
  end
  local p = assert(io.popen(table.concat(q, " ") .. " 2>&1; echo \"__RC=$?\""))
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("__RC=(%d+)%s*$"))
  return (out:gsub("__RC=%d+%s*$", "")), rc
end

return _M
