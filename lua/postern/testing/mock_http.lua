-- postern.testing.mock_http: a scriptable mock HTTP/1.1 server for specs (an nginx
-- auth_http server, a JSON auth API, ...). It records every request exactly
-- as received and answers from a script.
--
-- Requiring it does nothing. run(opts) serves until the process is killed,
-- so it runs as a process of its own, which postern.testing.mock_http
-- starts for you (through lua/postern/testing/run_mock.lua):
--
--   luajit lua/postern/testing/run_mock.lua mock_http OPTIONS_FILE
--
-- OPTIONS_FILE is a Lua file that returns the options table (written by
-- postern.testing.mock_http). Every option is optional:
--
--   host, port     listen address (127.0.0.1; port 0 = any free port)
--   record         record file path (default: stdout)
--   name           identity, only for messages
--   status         status code of the default answer (200)
--   headers        headers of the default answer: { {"Auth-Status", "OK"}, ... }
--                  (a list keeps the order; a name = value table is sorted)
--   body           body of the default answer ("")
--   delay          seconds to wait before answering each request
--   close          true: close every connection without answering
--   responses      a list of answers: the n-th request gets responses[n],
--                  and once the list is used up the last one is repeated
--   handler        Lua source text returning function(req) -> answer; it
--                  runs in the mock process, so it can compute the answer
--                  from the request (see `req` below). An error in it gives
--                  a 500 answer and a line on the mock's stderr (its log).
--
-- An answer is a table, every field optional (defaults from the options):
--   { status = 200, reason = "OK", headers = { {"Auth-Status", "OK"} },
--     body = "", delay = 0.5,            -- seconds before this answer
--     close = true,                      -- close without answering
--     keep_alive = false,                -- answer with Connection: close, then close
--     raw = "HTTP/1.0 200 OK\r\n..." }   -- bytes sent as they are (then close)
-- Content-Length is added unless the answer's headers have one.
--
-- `req` given to the handler: { n (1, 2, ... over the whole run), conn (the
-- connection id), method, path, version ("HTTP/1.1"), headers = { {name,
-- value}, ... } in the order received, h = { ["lower-case name"] = value }
-- (the last one wins), body }.
--
-- Connections: HTTP/1.1 requests keep the connection open (persistent) unless
-- the client sends "Connection: close"; HTTP/1.0 requests are answered and
-- closed unless the client asks for keep-alive. Bodies: Content-Length or
-- chunked.
--
-- Record file (one record per line, flushed at once; a request's lines are
-- written together when the whole request has arrived):
--   READY <port>                   first line, once listening
--   CONNECT <conn> <ip> <port>     a client connected
--   <conn> <request line>          e.g. `1 GET /auth HTTP/1.1`
--   <conn> <header line>           every header line as received: `1 Auth-User: alice`
--   <conn>                         (the id and a space) the empty line ending the head
--   BODY <conn> <length> <body>    the body, escaped (\\ \r \n \xHH)
--   RESPONSE <conn> <status>       the answer was sent
--   DROP <conn>                    closed without answering (close option)
--   CLOSE <conn>                   the connection is gone
-- Header values are escaped the same way as bodies (CR, LF, other control
-- bytes and the backslash), so a record is always one line.
--
-- SIGTERM ends the process at once (default action).

local mock_server = require "postern.testing.mock_server"

local _M = {}

function _M.run(opts)
  local srv = mock_server.start("mock_http", opts)
  local record = srv.record

  local MAX_HEAD = 64 * 1024
  local MAX_BODY = 8 * 1024 * 1024

  local REASONS = {
    [200] = "OK", [201] = "Created", [204] = "No Content", [301] = "Moved Permanently",
    [302] = "Found", [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden",
    [404] = "Not Found", [429] = "Too Many Requests", [500] = "Internal Server Error",
    [502] = "Bad Gateway", [503] = "Service Unavailable", [504] = "Gateway Timeout",
  }

  local function escape(s)
    return (s:gsub("[%c\\]", function(ch)
      if ch == "\\" then return "\\\\" end
      if ch == "\r" then return "\\r" end
      if ch == "\n" then return "\\n" end
      return ("\\x%02X"):format(ch:byte())
    end))
  end

  -- the handler, compiled once
  local handler
  if opts.handler then
    local chunk, err = loadstring(opts.handler, "=handler")
    if not chunk then
      io.stderr:write("mock_http: handler does not compile: " .. err .. "\n")
      os.exit(2)
    end
    handler = chunk()
    if type(handler) ~= "function" then
      io.stderr:write("mock_http: handler source must return a function\n")
      os.exit(2)
    end
  end

  local function ordered(headers)
    if not headers then return {} end
    if headers[1] ~= nil or next(headers) == nil then return headers end
    local names = {}
    for k in pairs(headers) do names[#names + 1] = k end
    table.sort(names)
    local out = {}
    for i, k in ipairs(names) do out[i] = { k, headers[k] } end
    return out
  end

  local nreq = 0

  local function answer_for(req)
    local a
    if handler then
      local ok, res = pcall(handler, req)
      if not ok then
        io.stderr:write("mock_http: handler error: " .. tostring(res) .. "\n")
        return { status = 500, headers = {}, body = "handler error\n" }
      end
      a = res
    elseif opts.responses and #opts.responses > 0 then
      a = opts.responses[math.min(req.n, #opts.responses)]
    end
    a = a or {}
    local out = {}
    for k, v in pairs(a) do out[k] = v end
    if out.status == nil then out.status = opts.status or 200 end
    if out.headers == nil then out.headers = opts.headers end
    if out.body == nil then out.body = opts.body or "" end
    if out.delay == nil then out.delay = opts.delay end
    if out.close == nil then out.close = opts.close end
    out.headers = ordered(out.headers)
    return out
  end

  -- raw read helpers over mock_server's connection buffer
  local function read_bytes(c, n)
    while c:buffered() < n do
      if c.eof then return nil end
      c.wait = "read"
      coroutine.yield()
    end
    local s = c.inbuf:sub(c.inpos, c.inpos + n - 1)
    c.inpos = c.inpos + n
    return s
  end

  local function read_head(c)
    -- wait for the blank line; returns the raw lines (without CRLF) or nil
    local lines, size = {}, 0
    while true do
      local line = c:readline()
      if line == nil then return nil end
      -- blank lines before a request are tolerated (RFC 9112 2.2)
      if #lines > 0 or line ~= "" then
        size = size + #line + 2
        if size > MAX_HEAD then return nil, "head too large" end
        if line == "" then return lines end
        lines[#lines + 1] = line
      end
    end
  end

  local function read_chunked(c)
    local parts = {}
    local total = 0
    while true do
      local sz = c:readline()
      if not sz then return nil end
      local n = tonumber(sz:match("^%s*(%x+)"), 16)
      if not n then return nil end
      if n == 0 then
        -- trailers until the blank line
        while true do
          local t = c:readline()
          if t == nil or t == "" then break end
        end
        return table.concat(parts)
      end
      total = total + n
      if total > MAX_BODY then return nil end
      local data = read_bytes(c, n)
      if not data then return nil end
      parts[#parts + 1] = data
      c:readline()
    end
  end

  local function send_answer(c, req, a)
    if a.raw then
      c:send(a.raw)
      return false
    end
    local status = tonumber(a.status) or 200
    local out = { ("HTTP/1.1 %d %s\r\n"):format(status, a.reason or REASONS[status] or "Status") }
    local has_length, keep = false, req.keep_alive and a.keep_alive ~= false
    for _, h in ipairs(a.headers) do
      local name, value = h[1], h[2]
      if name:lower() == "content-length" then has_length = true end
      if name:lower() == "connection" and tostring(value):lower() == "close" then keep = false end
      out[#out + 1] = name .. ": " .. tostring(value) .. "\r\n"
    end
    local body = a.body or ""
    if not has_length then out[#out + 1] = "Content-Length: " .. #body .. "\r\n" end
    if not keep then out[#out + 1] = "Connection: close\r\n" end
    out[#out + 1] = "\r\n"
    if req.method ~= "HEAD" then out[#out + 1] = body end
    c:send(table.concat(out))
    return keep
  end

  local function session(c)
    while true do
      local head = read_head(c)
      if not head then return end
      local method, path, version = head[1]:match("^(%S+) (%S+) (HTTP/%d%.%d)$")
      local rec = { c.id .. " " .. escape(head[1]) }
      local headers, h = {}, {}
      for i = 2, #head do
        rec[#rec + 1] = c.id .. " " .. escape(head[i])
        local name, value = head[i]:match("^([^:]+):[ \t]*(.-)[ \t]*$")
        if name then
          headers[#headers + 1] = { name, value }
          h[name:lower()] = value
        end
      end
      rec[#rec + 1] = c.id .. " "
      if not method then
        record(table.concat(rec, "\n"))
        record(("BODY %d 0 "):format(c.id))
        c:send("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        record(("RESPONSE %d 400"):format(c.id))
        return
      end
      local body = ""
      if (h["transfer-encoding"] or ""):lower():find("chunked", 1, true) then
        body = read_chunked(c)
        if not body then return end
      elseif h["content-length"] then
        local n = tonumber(h["content-length"])
        if not n or n > MAX_BODY then return end
        body = read_bytes(c, n)
        if not body then return end
      end
      nreq = nreq + 1
      local conn_hdr = (h["connection"] or ""):lower()
      local keep_alive
      if version == "HTTP/1.0" then
        keep_alive = conn_hdr:find("keep-alive", 1, true) ~= nil
      else
        keep_alive = not conn_hdr:find("close", 1, true)
      end
      local req = { n = nreq, conn = c.id, method = method, path = path, version = version,
        headers = headers, h = h, body = body, keep_alive = keep_alive }
      rec[#rec + 1] = ("BODY %d %d %s"):format(c.id, #body, escape(body))
      record(table.concat(rec, "\n"))

      local a = answer_for(req)
      if a.delay and a.delay > 0 then c:sleep(a.delay) end
      if a.close then
        record("DROP " .. c.id)
        return
      end
      local keep = send_answer(c, req, a)
      record(("RESPONSE %d %s"):format(c.id, a.raw and "raw" or tostring(tonumber(a.status) or 200)))
      if not keep then return end
    end
  end

  srv.run(session)
end

return _M
