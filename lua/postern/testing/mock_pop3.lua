-- postern.testing.mock_pop3: a scriptable mock POP3 backend for specs
-- (RFC 1939, RFC 2449 CAPA, RFC 5034 SASL).
--
-- Requiring it does nothing. run(opts) serves until the process is killed,
-- so it runs as a process of its own, which postern.testing.mock_pop3
-- starts for you (through lua/postern/testing/run_mock.lua):
--
--   luajit lua/postern/testing/run_mock.lua mock_pop3 OPTIONS_FILE
--
-- OPTIONS_FILE is a Lua file that returns the options table (written by
-- postern.testing.mock_pop3). Every option is optional:
--
--   host, port          listen address (127.0.0.1; port 0 = any free port)
--   record              record file path (default: stdout)
--   name                identity ("mock"): in the greeting, the APOP
--                       timestamp and the message body
--   users               { alice = "secret" } accepted logins; nil = any
--                       (for XOAUTH2/OAUTHBEARER the token is the password)
--   apop                true: the greeting carries <pid.clock@name> and APOP
--                       is accepted (digest checked against users)
--   capa                CAPA lines, default { "TOP", "UIDL", "USER",
--                       "SASL PLAIN LOGIN XOAUTH2", "PIPELINING" }
--   sasl                mechanisms AUTH accepts (list or "A B" string),
--                       default { "PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER" }
--   greeting            full raw greeting line ("-ERR go away" closes after it)
--   delay               seconds before the greeting
--   login_delay         seconds before answering a login
--   close_after_greeting  close right after the greeting
--   close_on_login      close (no reply) when a login arrives
--   refuse              "text": every login gets -ERR [AUTH] text
--   big                 N: add message 2 of exactly N bytes (N >= 64)
--
-- Mailbox: message 1 (Subject "Hello from mock pop3", body
-- "pop3-body from <name>" and a line starting with a dot), plus message 2
-- when `big` is set. UIDs are "uid-1", "uid-2". Each connection starts
-- with the full mailbox; DELE marks, RSET unmarks, nothing is expunged.
--
-- Record file (one record per line, flushed at once):
--   READY <port>                 first line, once listening
--   CONNECT <id> <ip> <port>     a client connected
--   <id> <line>                  every line received, without CRLF
--                                (commands and SASL responses alike)
--   AUTH <user> <password> <mechanism>   each login attempt, decoded;
--                                mechanism: user|apop|plain|login|xoauth2|
--                                oauthbearer; for apop the password field
--                                is the client's digest
--   CLOSE <id>                   the connection is gone
-- SIGTERM ends the process at once (default action).

local ffi = require "ffi"
local socket = require "socket"
local mock_server = require "postern.testing.mock_server"
local md5 = require "postern.md5"

pcall(ffi.cdef, "int getpid(void);")  -- already declared: fine

local _M = {}

function _M.run(opts)
  local srv = mock_server.start("mock_pop3", opts)
  local record = srv.record

  local NAME = opts.name or "mock"
  local SAFE_NAME = NAME:gsub("[^%w%.%-]", "_")
  local CAPA = opts.capa or { "TOP", "UIDL", "USER", "SASL PLAIN LOGIN XOAUTH2", "PIPELINING" }
  local SASL = {}
  local SASL_LIST = {}
  do
    local s = opts.sasl or { "PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER" }
    if type(s) == "string" then
      local t = {}
      for w in s:gmatch("%S+") do t[#t + 1] = w end
      s = t
    end
    for _, m in ipairs(s) do
      SASL[m:upper()] = true
      SASL_LIST[#SASL_LIST + 1] = m:upper()
    end
  end

  -- the mailbox -------------------------------------------------------------------
  local MESSAGES = {}
  MESSAGES[1] = table.concat({
    "From: Mock Sender <sender@example.com>",
    "To: alice@example.com",
    "Subject: Hello from mock pop3",
    "Date: Mon, 01 Jan 2024 00:00:00 +0000",
    "Message-ID: <1@" .. SAFE_NAME .. ".mock>",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=us-ascii",
    "",
    "pop3-body from " .. NAME,
    ".a line that starts with a dot",
    "",
  }, "\r\n")

  if opts.big then
    local n = math.floor(tonumber(opts.big) or 0)
    local head = "From: Mock Sender <sender@example.com>\r\nSubject: big message from mock pop3\r\n\r\n"
    assert(n >= #head + 2, "big: at least " .. (#head + 2) .. " bytes")
    local parts, left = { head }, n - #head
    local line = ("x"):rep(78) .. "\r\n"
    local i = 0
    while left > 0 do
      local len = math.min(80, left)
      if left - len == 1 then len = len - 1 end   -- keep room for a final CRLF
      i = i + 1
      local l = line:sub(1, len - 2) .. "\r\n"
      if i % 100 == 1 and len > 2 then l = "." .. l:sub(2) end   -- some lines need dot-stuffing
      parts[#parts + 1] = l
      left = left - len
    end
    MESSAGES[2] = table.concat(parts)
    assert(#MESSAGES[2] == n)
  end

  local STUFFED = {}
  for i, m in ipairs(MESSAGES) do
    STUFFED[i] = (m:gsub("^%.", ".."):gsub("\n%.", "\n.."))
  end

  -- headers, blank line and the first k body lines, dot-stuffed
  local function top(i, k)
    local m = MESSAGES[i]
    local hend = m:find("\r\n\r\n", 1, true)
    local out = m
    if hend then
      local pos = hend + 4
      for _ = 1, k do
        if pos > #m then break end
        pos = (m:find("\r\n", pos, true) or #m) + 2
      end
      out = m:sub(1, pos - 1)
    end
    return (out:gsub("^%.", ".."):gsub("\n%.", "\n.."))
  end

  -- login ----------------------------------------------------------------------------
  -- returns true if logged in, false if refused, "close" when the connection must end
  local function do_login(c, user, password, mech, check)
    if opts.close_on_login then return "close" end
    record(("AUTH %s %s %s"):format(user, password, mech))
    c:sleep(opts.login_delay)
    if opts.refuse then
      c:sendline("-ERR [AUTH] " .. opts.refuse)
      return false
    end
    local ok
    if check then
      ok = check()
    else
      ok = not opts.users or opts.users[user] == password
    end
    if not ok then
      c:sendline("-ERR [AUTH] Authentication failed.")
      return false
    end
    c:sendline("+OK Logged in.")
    return true
  end

  local function readline(c)
    local l = c:readline()
    if l then record(c.id .. " " .. l) end
    return l
  end

  -- SASL exchange: returns the decoded credentials, or nil after answering -ERR
  local function sasl(c, mech, ir)
    local function ask(challenge)
      c:sendline("+ " .. challenge)
      local l = readline(c)
      if not l then return nil, "eof" end
      if l == "*" then
        c:sendline("-ERR Authentication cancelled")
        return nil, "cancelled"
      end
      return l
    end
    local function decode(b64)
      local raw = mock_server.unb64(b64)
      if not raw then c:sendline("-ERR Invalid base64 data") end
      return raw
    end
    if mech == "PLAIN" or mech == "XOAUTH2" or mech == "OAUTHBEARER" then
      local resp = ir
      if not resp then
        local err
        resp, err = ask("")
        if not resp then return nil, err end
      end
      local raw = decode(resp)
      if not raw then return nil end
      local user, pass
      if mech == "PLAIN" then
        user, pass = mock_server.decode_plain(raw)
      elseif mech == "XOAUTH2" then
        user, pass = mock_server.decode_xoauth2(raw)
      else
        user, pass = mock_server.decode_oauthbearer(raw)
      end
      if not user or not pass then
        c:sendline("-ERR Invalid " .. mech .. " response")
        return nil
      end
      return user, pass
    elseif mech == "LOGIN" then
      local user
      if ir then
        user = decode(ir)
        if not user then return nil end
      else
        local l, err = ask("VXNlcm5hbWU6")
        if not l then return nil, err end
        user = decode(l)
        if not user then return nil end
      end
      local l, err = ask("UGFzc3dvcmQ6")
      if not l then return nil, err end
      local pass = decode(l)
      if not pass then return nil end
      return user, pass
    end
  end

  -- the session -----------------------------------------------------------------------
  local function stamp(c)
    return ("<%d.%d@%s>"):format(ffi.C.getpid(), math.floor(socket.gettime() * 1000) * 1000 + c.id % 1000,
      SAFE_NAME)
  end

  local function session(c)
    c:sleep(opts.delay)
    local timestamp
    if opts.greeting then
      c:sendline(opts.greeting)
      if opts.greeting:match("^%-ERR") then return end
    else
      local g = "+OK " .. NAME .. " POP3 mock ready"
      if opts.apop then
        timestamp = stamp(c)
        g = g .. " " .. timestamp
      end
      c:sendline(g)
    end
    if opts.close_after_greeting then return end

    local authed, user = false, nil
    local deleted = {}

    local function msgno(a)
      local i = tonumber(a or "")
      if not i or i ~= math.floor(i) or not MESSAGES[i] or deleted[i] then return nil end
      return i
    end

    while true do
      local line = readline(c)
      if not line then return end
      local verb, rest = line:match("^(%S*)%s*(.-)$")
      verb = verb:upper()
      local args = {}
      for w in rest:gmatch("%S+") do args[#args + 1] = w end

      if verb == "CAPA" then
        c:sendline("+OK Capability list follows")
        for _, l in ipairs(CAPA) do c:sendline(l) end
        c:sendline(".")
      elseif verb == "QUIT" then
        c:sendline("+OK " .. NAME .. " POP3 mock signing off")
        return
      elseif verb == "NOOP" and #args == 0 then
        c:sendline("+OK")
      elseif not authed then
        if verb == "USER" and args[1] then
          user = rest
          c:sendline("+OK")
        elseif verb == "PASS" then
          if not user then
            c:sendline("-ERR USER first")
          else
            local r = do_login(c, user, rest, "user")
            if r == "close" then return end
            authed = r
            if not authed then user = nil end
          end
        elseif verb == "APOP" then
          if not timestamp then
            c:sendline("-ERR APOP not supported")
          elseif #args ~= 2 then
            c:sendline("-ERR APOP needs a name and a digest")
          else
            local name, digest = args[1], args[2]
            local r = do_login(c, name, digest, "apop", function()
              if not opts.users then return true end
              local pass = opts.users[name]
              return pass ~= nil and md5.hex(timestamp .. pass) == digest:lower()
            end)
            if r == "close" then return end
            authed = r
          end
          user = nil
        elseif verb == "AUTH" then
          user = nil
          if not args[1] then
            c:sendline("+OK")
            for _, m in ipairs(SASL_LIST) do c:sendline(m) end
            c:sendline(".")
          else
            local mech = args[1]:upper()
            if not SASL[mech] or not (mech == "PLAIN" or mech == "LOGIN" or mech == "XOAUTH2"
                or mech == "OAUTHBEARER") then
              c:sendline("-ERR Unsupported authentication mechanism")
            else
              local u, p = sasl(c, mech, args[2])
              if u then
                local r = do_login(c, u, p, mech:lower())
                if r == "close" then return end
                authed = r
              elseif p == "eof" then
                return
              end
            end
          end
        else
          c:sendline("-ERR Unknown command or not logged in")
        end
      elseif verb == "STAT" and #args == 0 then
        local n, size = 0, 0
        for i, m in ipairs(MESSAGES) do
          if not deleted[i] then n, size = n + 1, size + #m end
        end
        c:sendline(("+OK %d %d"):format(n, size))
      elseif (verb == "LIST" or verb == "UIDL") and #args <= 1 then
        local function item(i)
          return verb == "LIST" and ("%d %d"):format(i, #MESSAGES[i]) or ("%d uid-%d"):format(i, i)
        end
        if args[1] then
          local i = msgno(args[1])
          if i then c:sendline("+OK " .. item(i)) else c:sendline("-ERR No such message") end
        else
          local n, size = 0, 0
          for i, m in ipairs(MESSAGES) do
            if not deleted[i] then n, size = n + 1, size + #m end
          end
          c:sendline(verb == "LIST" and ("+OK %d messages (%d octets)"):format(n, size) or "+OK")
          for i in ipairs(MESSAGES) do
            if not deleted[i] then c:sendline(item(i)) end
          end
          c:sendline(".")
        end
      elseif verb == "RETR" and #args == 1 then
        local i = msgno(args[1])
        if not i then
          c:sendline("-ERR No such message")
        else
          c:sendline(("+OK %d octets"):format(#MESSAGES[i]))
          c:send_big(STUFFED[i])
          c:sendline(".")
        end
      elseif verb == "TOP" and #args == 2 then
        local i = msgno(args[1])
        local k = tonumber(args[2])
        if not i then
          c:sendline("-ERR No such message")
        elseif not k or k < 0 or k ~= math.floor(k) then
          c:sendline("-ERR Invalid line count")
        else
          c:sendline("+OK")
          c:send_big(top(i, k))
          c:sendline(".")
        end
      elseif verb == "DELE" and #args == 1 then
        local i = msgno(args[1])
        if not i then
          c:sendline("-ERR No such message")
        else
          deleted[i] = true
          c:sendline(("+OK message %d deleted"):format(i))
        end
      elseif verb == "RSET" and #args == 0 then
        deleted = {}
        c:sendline("+OK")
      else
        c:sendline("-ERR Unknown command")
      end
    end
  end

  srv.run(session)
end

return _M
