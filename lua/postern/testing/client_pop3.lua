-- postern.testing.client_pop3: the POP3 methods of the line client.
--   c:pop3(cmd, timeout)       sends cmd.."\r\n" (unless cmd is nil), returns the status line
--   c:pop3_multi(cmd, timeout) -> status, lines: the multi-line body after +OK,
--                              dot-unstuffed, without the final "." (nil after -ERR)
local socket = require "socket"
local util = require "postern.testing.util"

local show = util.show

local _M = {}

-- POP3: send cmd (unless nil), return the status line ("+OK ..." / "-ERR ..." / "+ ...")
function _M.pop3(self, cmd, timeout)
  if cmd then self:send(cmd .. "\r\n") end
  local ok, line = pcall(self.line, self, timeout)
  if not ok then error(line, 2) end
  return line
end

-- POP3 multi-line: status line, then (after +OK) the body lines dot-unstuffed,
-- without the final "."; after -ERR the body is nil. Linear in the body size.
function _M.pop3_multi(self, cmd, timeout)
  if cmd then self:send(cmd .. "\r\n") end
  local ok, status = pcall(self.line, self, timeout)
  if not ok then error(status, 2) end
  if status:sub(1, 3) ~= "+OK" then return status, nil end
  local deadline = socket.gettime() + (timeout or self.timeout)
  -- find "\r\n.\r\n" (a virtual CRLF precedes the body, so an empty body is
  -- ".\r\n") scanning each byte once: only the last 4 bytes are carried over
  local parts, total, tail = {}, 0, "\r\n"
  local body_len, rest
  local data = self.buf
  self.buf = ""
  while true do
    if #data > 0 then
      local window = tail .. data
      local i = window:find("\r\n.\r\n", 1, true)
      parts[#parts + 1] = data
      if i then
        -- the body ends with the CRLF at window[i+1]; window[k] is data[k - #tail]
        body_len = total + (i + 1 - #tail)
        rest = window:sub(i + 5)
        break
      end
      total = total + #data
      tail = window:sub(-4)
    end
    local err
    data, err = self:_recv(deadline)
    if not data then
      local got = table.concat(parts)
      error(("%s while reading a POP3 multi-line body after %q; got %d bytes: %s"):format(
        err == "closed" and "connection closed" or "timeout", status, #got, show(got:sub(-200))), 2)
    end
  end
  self.buf = rest
  local body = table.concat(parts):sub(1, body_len)
  -- body now starts right after the status line and ends with CRLF (or is "")
  local lines = {}
  for l in body:gmatch("(.-)\r\n") do
    if l:sub(1, 1) == "." then l = l:sub(2) end
    lines[#lines + 1] = l
  end
  return status, lines
end

return _M
