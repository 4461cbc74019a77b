-- postern.testing.client_imap: the IMAP methods of the line client.
--   c:response(timeout)  one line plus the literals it announces ({n} at line end):
--                        '* 1 FETCH (BODY[] {n}\r\n<n bytes>)'
--   c:command(tag, text, timeout) -> tagged line, { untagged responses }
local _M = {}

function _M.response(self, timeout)
  local ok, line = pcall(self.line, self, timeout)
  if not ok then error(line, 2) end
  local parts = { line }
  while true do
    local n = tonumber(line:match("{(%d+)}$"))
    if not n then break end
    local ok2, data = pcall(self.read_bytes, self, n, timeout)
    if not ok2 then error(data, 2) end
    ok, line = pcall(self.line, self, timeout)
    if not ok then error(line, 2) end
    parts[#parts + 1] = "\r\n" .. data .. line
  end
  return table.concat(parts)
end

function _M.command(self, tag, text, timeout)
  self:send(tag .. " " .. text .. "\r\n")
  local untagged = {}
  local prefix = tag .. " "
  while true do
    local ok, line = pcall(self.response, self, timeout)
    if not ok then
      error(("%s; untagged so far:\n%s"):format(line, table.concat(untagged, "\n")), 2)
    end
    if line:sub(1, #prefix) == prefix then return line, untagged end
    untagged[#untagged + 1] = line
  end
end

return _M
