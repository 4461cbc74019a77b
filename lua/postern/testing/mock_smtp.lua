-- postern.testing.mock_smtp: a scriptable mock SMTP/submission backend for specs
-- (RFC 5321, RFC 4954 AUTH, Postfix XCLIENT).
--
-- Requiring it does nothing. run(opts) serves until the process is killed,
-- so it runs as a process of its own, which postern.testing.mock_smtp
-- starts for you (through lua/postern/testing/run_mock.lua):
--
--   luajit lua/postern/testing/run_mock.lua mock_smtp OPTIONS_FILE
--
-- OPTIONS_FILE is a Lua file that returns the options table (written by
-- postern.testing.mock_smtp). Every option is optional:
--
--   host, port          listen address (127.0.0.1; port 0 = any free port)
--   record              record file path (default: stdout)
--   name                identity ("mock"): in the greeting and the EHLO reply
--   users               { alice = "secret" } accepted logins; nil = any
--                       (for XOAUTH2/OAUTHBEARER the token is the password)
--   ehlo                EHLO keywords, default { "PIPELINING", "SIZE 10240000",
--                       "8BITMIME", "ENHANCEDSTATUSCODES", "AUTH PLAIN LOGIN XOAUTH2" };
--                       AUTH accepts the mechanisms of the AUTH keyword
--                       (PLAIN, LOGIN, XOAUTH2, OAUTHBEARER are implemented)
--   xclient             true: advertise XCLIENT ADDR NAME LOGIN HELO PROTO and
--                       accept XCLIENT; after it a fresh 220 greeting, EHLO
--                       state forgotten
--   greeting            full raw greeting line, default "220 <name> ESMTP mock";
--                       a non-220 greeting answers 503 to all but QUIT
--   delay               seconds before the greeting
--   login_delay         seconds before answering AUTH
--   close_after_greeting  close right after the greeting
--   close_on_login      close (no reply) when AUTH credentials arrive
--   refuse              "text": every AUTH gets "535 5.7.8 text"
--   require_auth        MAIL before a successful AUTH or XCLIENT gets
--                       "530 5.7.0 Authentication required"
--
-- Commands: EHLO HELO AUTH MAIL RCPT DATA RSET NOOP QUIT (and XCLIENT);
-- anything else is "502 5.5.2 Error: command not recognized". Pipelined
-- commands are answered in order.
--
-- Record file (one record per line, flushed at once):
--   READY <port>                 first line, once listening
--   CONNECT <id> <ip> <port>     a client connected
--   <id> <line>                  every command line and SASL response as
--                                received, without CRLF (not DATA content)
--   AUTH <user> <password> <mechanism>   each AUTH attempt, decoded;
--                                mechanism: plain|login|xoauth2|oauthbearer
--   XCLIENT <raw args>           an accepted XCLIENT command's attributes
--   MESSAGE <bytes> <lines> <subject>   a message received by DATA: its
--                                size and line count after dot-unstuffing
--                                (CRLF counted as 2 bytes) and the value of
--                                its first Subject header ("" if none)
--   CLOSE <id>                   the connection is gone
-- SIGTERM ends the process at once (default action).

local mock_server = require "postern.testing.mock_server"

local _M = {}

function _M.run(opts)
  local srv = mock_server.start("mock_smtp", opts)
  local record = srv.record

  local NAME = opts.name or "mock"
  local EHLO = opts.ehlo or { "PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES",
    "AUTH PLAIN LOGIN XOAUTH2" }
  local XCLIENT_KEYWORD = "XCLIENT ADDR NAME LOGIN HELO PROTO"
  local XCLIENT_ATTRS = { ADDR = true, NAME = true, LOGIN = true, HELO = true, PROTO = true }
  local GREETING = opts.greeting or ("220 " .. NAME .. " ESMTP mock")

  local MECHS = {}
  for _, k in ipairs(EHLO) do
    local list = k:match("^[Aa][Uu][Tt][Hh][ =](.*)$")
    if list then
      for m in list:gmatch("%S+") do MECHS[m:upper()] = true end
    end
  end
  local IMPLEMENTED = { PLAIN = true, LOGIN = true, XOAUTH2 = true, OAUTHBEARER = true }

  local queued = 0

  local function readline(c)
    local l = c:readline()
    if l then record(c.id .. " " .. l) end
    return l
  end

  -- SASL exchange: returns user, password; or nil, "eof" | nil after answering
  local function sasl(c, mech, ir)
    local function ask(challenge)
      c:sendline("334 " .. challenge)
      local l = readline(c)
      if not l then return nil, "eof" end
      if l == "*" then
        c:sendline("501 5.7.0 Authentication aborted")
        return nil, "cancelled"
      end
      return l
    end
    local function decode(b64)
      local raw = mock_server.unb64(b64)
      if not raw then c:sendline("501 5.5.2 Cannot decode response") end
      return raw
    end
    if mech == "LOGIN" then
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
      c:sendline("501 5.5.2 Invalid " .. mech .. " response")
      return nil
    end
    return user, pass
  end

  local function session(c)
    c:sleep(opts.delay)
    c:sendline(GREETING)
    if opts.close_after_greeting then return end

    if not GREETING:match("^220") then
      while true do
        local line = readline(c)
        if not line then return end
        if line:upper() == "QUIT" then
          c:sendline("221 2.0.0 Bye")
          return
        end
        c:sendline("503 5.5.1 Error: no service")
      end
    end

    local helo = nil          -- set by EHLO/HELO, forgotten after XCLIENT
    local authed = false      -- AUTH succeeded (or XCLIENT LOGIN=)
    local xclient_done = false
    local mail = false        -- a MAIL transaction is open
    local rcpts = 0

    local function reset()
      mail, rcpts = false, 0
    end

    while true do
      local line = readline(c)
      if not line then return end
      local verb, rest = line:match("^(%S*)%s*(.-)%s*$")
      verb = verb:upper()

      if verb == "EHLO" or verb == "HELO" then
        if rest == "" then
          c:sendline("501 5.5.4 Syntax: " .. verb .. " hostname")
        else
          helo = rest
          reset()
          if verb == "HELO" then
            c:sendline("250 " .. NAME)
          else
            local kw = {}
            for _, k in ipairs(EHLO) do kw[#kw + 1] = k end
            if opts.xclient then kw[#kw + 1] = XCLIENT_KEYWORD end
            if #kw == 0 then
              c:sendline("250 " .. NAME)
            else
              c:sendline("250-" .. NAME)
              for i, k in ipairs(kw) do c:sendline((i == #kw and "250 " or "250-") .. k) end
            end
          end
        end
      elseif verb == "XCLIENT" and opts.xclient then
        local bad
        if rest == "" then bad = "501 5.5.4 Syntax: XCLIENT attribute=value..." end
        local login
        for attr in rest:gmatch("%S+") do
          local k, v = attr:match("^([^=]+)=(.*)$")
          if not k or not XCLIENT_ATTRS[k:upper()] then
            bad = bad or ("501 5.5.4 Bad XCLIENT attribute name: " .. (k or attr))
          elseif k:upper() == "LOGIN" and v ~= "[UNAVAILABLE]" and v ~= "[TEMPUNAVAIL]" and v ~= "" then
            login = v
          end
        end
        if mail then bad = "503 5.5.1 Error: MAIL transaction in progress" end
        if bad then
          c:sendline(bad)
        else
          record("XCLIENT " .. rest)
          xclient_done = true
          if login then authed = true end
          helo = nil
          reset()
          c:sendline(GREETING)
        end
      elseif verb == "AUTH" then
        local mech, ir = rest:match("^(%S+)%s*(%S*)$")
        mech = mech and mech:upper()
        if ir == "" then ir = nil end
        if not helo then
          c:sendline("503 5.5.1 Error: send HELO/EHLO first")
        elseif authed then
          c:sendline("503 5.5.1 Error: already authenticated")
        elseif mail then
          c:sendline("503 5.5.1 Error: MAIL transaction in progress")
        elseif not next(MECHS) then
          c:sendline("503 5.5.1 Error: authentication not enabled")
        elseif not mech then
          c:sendline("501 5.5.4 Syntax: AUTH mechanism")
        elseif not MECHS[mech] or not IMPLEMENTED[mech] then
          c:sendline("504 5.5.4 Unsupported authentication mechanism")
        else
          local user, pass = sasl(c, mech, ir)
          if user then
            if opts.close_on_login then return end
            record(("AUTH %s %s %s"):format(user, pass, mech:lower()))
            c:sleep(opts.login_delay)
            if opts.refuse then
              c:sendline("535 5.7.8 " .. opts.refuse)
            elseif opts.users and opts.users[user] ~= pass then
              c:sendline("535 5.7.8 Error: authentication failed: authentication failure")
            else
              authed = true
              c:sendline("235 2.7.0 Authentication successful")
            end
          elseif pass == "eof" then
            return
          end
        end
      elseif verb == "MAIL" then
        if not helo then
          c:sendline("503 5.5.1 Error: send HELO/EHLO first")
        elseif opts.require_auth and not authed and not xclient_done then
          c:sendline("530 5.7.0 Authentication required")
        elseif mail then
          c:sendline("503 5.5.1 Error: nested MAIL command")
        elseif not rest:upper():match("^FROM:") then
          c:sendline("501 5.5.4 Syntax: MAIL FROM:<address>")
        else
          mail = true
          c:sendline("250 2.1.0 Ok")
        end
      elseif verb == "RCPT" then
        if not mail then
          c:sendline("503 5.5.1 Error: need MAIL command")
        elseif not rest:upper():match("^TO:") then
          c:sendline("501 5.5.4 Syntax: RCPT TO:<address>")
        else
          rcpts = rcpts + 1
          c:sendline("250 2.1.5 Ok")
        end
      elseif verb == "DATA" then
        if rest ~= "" then
          c:sendline("501 5.5.4 Syntax: DATA")
        elseif not mail then
          c:sendline("503 5.5.1 Error: need MAIL command")
        elseif rcpts == 0 then
          c:sendline("503 5.5.1 Error: need RCPT command")
        else
          c:sendline("354 End data with <CR><LF>.<CR><LF>")
          local bytes, lines, subject, in_header = 0, 0, nil, true
          while true do
            local l = c:readline()
            if not l then return end
            if l == "." then break end
            if l:sub(1, 1) == "." then l = l:sub(2) end
            bytes = bytes + #l + 2
            lines = lines + 1
            if in_header then
              if l == "" then
                in_header = false
              elseif not subject then
                subject = l:match("^[Ss][Uu][Bb][Jj][Ee][Cc][Tt]:%s*(.-)%s*$")
              end
            end
          end
          record(("MESSAGE %d %d %s"):format(bytes, lines, subject or ""))
          queued = queued + 1
          reset()
          c:sendline("250 2.0.0 Ok: queued as " .. queued)
        end
      elseif verb == "RSET" then
        reset()
        c:sendline("250 2.0.0 Ok")
      elseif verb == "NOOP" then
        c:sendline("250 2.0.0 Ok")
      elseif verb == "QUIT" then
        c:sendline("221 2.0.0 Bye")
        return
      else
        c:sendline("502 5.5.2 Error: command not recognized")
      end
    end
  end

  srv.run(session)
end

return _M
