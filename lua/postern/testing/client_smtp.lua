-- postern.testing.client_smtp: the SMTP method of the line client.
--   c:smtp(cmd, timeout) -> code, texts, last: sends cmd (unless nil), reads one
--                           reply: "250-a" / "250 b" gives 250, { "a", "b" }, "250 b"
local util = require "postern.testing.util"

local show = util.show

local _M = {}

-- SMTP: send cmd (unless nil), read one possibly multi-line reply; returns
-- code (number), the text lines without "250-" / "250 ", and the raw last line
function _M.smtp(self, cmd, timeout)
  if cmd then self:send(cmd .. "\r\n") end
  local texts = {}
  while true do
    local ok, line = pcall(self.line, self, timeout)
    if not ok then error(line, 2) end
    local code, sep, text = line:match("^(%d%d%d)([ %-]?)(.*)$")
    if not code or (sep == "" and text ~= "") then
      error("not an SMTP reply line: " .. show(line), 2)
    end
    texts[#texts + 1] = text
    if sep ~= "-" then return tonumber(code), texts, line end
  end
end

return _M
