-- postern.testing.mock_imap: a scriptable mock IMAP4rev1 backend for specs.
--
-- Requiring it does nothing. run(opts) serves until the process is killed,
-- so it runs as a process of its own, which postern.testing.mock_imap
-- starts for you (through lua/postern/testing/run_mock.lua):
--
--   luajit lua/postern/testing/run_mock.lua mock_imap OPTIONS_FILE
--
-- OPTIONS_FILE is a Lua file that returns the options table (written by
-- postern.testing.mock_imap). Every option is optional:
--
--   host, port          listen address (127.0.0.1; port 0 = any free port)
--   record              record file path (default: stdout)
--   name                identity ("mock"): in the greeting, as an extra
--                       mailbox in LIST, in the message body, in ID
--   users               { alice = "secret" } accepted logins; nil = any
--   capabilities        "IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN"
--   greeting_capabilities  false: greeting without [CAPABILITY ...]
--   greeting            full raw greeting line ("* PREAUTH hi", "* BYE no")
--   login_untagged      untagged lines sent before the tagged OK of a login
--   login_ok_text       "[CAPABILITY IMAP4rev1 LITERAL+ IDLE] Logged in"
--   delay               seconds before the greeting
--   login_delay         seconds before answering LOGIN/AUTHENTICATE
--   close_after_greeting  close right after the greeting
--   close_on_login      close (no reply) when a login arrives
--   refuse              "text": every login gets NO [AUTHENTICATIONFAILED] text
--
-- Record file (one record per line, flushed at once):
--   READY <port>                 first line, once listening
--   CONNECT <id> <ip> <port>     a client connected
--   <id> <command>               a command as received, without CRLF;
--                                literals are inlined after their marker:
--                                `a LOGIN {5}alice {6}secret` (CR and LF
--                                inside a literal are written \r and \n;
--                                literals over 64 KiB as <N bytes>)
--   <id> <line>                  continuation lines (AUTHENTICATE, DONE)
--   AUTH <user> <password> <mechanism>   decoded credentials (login|plain)
--   CLOSE <id>                   the connection is gone
--
-- Extra commands (after login): XECHO <n> answers `* XECHO {n}` + n bytes
-- of "x"; XSINK {n} reads an n-byte literal and answers `tag OK received n`.
-- SIGTERM ends the process at once (default action).

local mime = require "mime"
local mock_server = require "postern.testing.mock_server"

local _M = {}

local LIT_KEEP = 65536          -- literal bytes kept for parsing/recording

local function escape_literal(s)
  return (s:gsub("\r", "\\r"):gsub("\n", "\\n"))
end

-- tokenizer over one text fragment: atoms, quoted strings, parens
local function tokenize_text(s, toks)
  local i, n = 1, #s
  while i <= n do
    local ch = s:sub(i, i)
    if ch == " " then
      i = i + 1
    elseif ch == "(" or ch == ")" then
      toks[#toks + 1] = { paren = ch }
      i = i + 1
    elseif ch == '"' then
      local buf, j = {}, i + 1
      while j <= n do
        local d = s:sub(j, j)
        if d == "\\" then
          buf[#buf + 1] = s:sub(j + 1, j + 1)
          j = j + 2
        elseif d == '"' then
          break
        else
          buf[#buf + 1] = d
          j = j + 1
        end
      end
      toks[#toks + 1] = { value = table.concat(buf), quoted = true }
      i = j + 1
    else
      local j = s:find("[ ()]", i) or n + 1
      toks[#toks + 1] = { value = s:sub(i, j - 1), atom = true }
      i = j
    end
  end
end

local function imap_string(s)
  return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

-- sequence set contains 1? (the mailbox has exactly one message)
local function set_has_one(set)
  for part in set:gmatch("[^,]+") do
    local a, b = part:match("^([%d%*]+):([%d%*]+)$")
    a = a or part
    b = b or part
    a = a == "*" and 1 or tonumber(a)
    b = b == "*" and 1 or tonumber(b)
    if a and b and math.min(a, b) <= 1 and math.max(a, b) >= 1 then return true end
  end
  return false
end

-- FETCH items: split "(UID BODY.PEEK[HEADER.FIELDS (A B)] FLAGS)" into names
local function fetch_items(s)
  s = s:gsub("^%s*%(", ""):gsub("%)%s*$", "")
  local items, i, n = {}, 1, #s
  while i <= n do
    if s:sub(i, i) == " " then
      i = i + 1
    else
      local j = i
      while j <= n and s:sub(j, j) ~= " " do
        if s:sub(j, j) == "[" then
          j = (s:find("]", j, true) or n)
        end
        j = j + 1
      end
      items[#items + 1] = s:sub(i, j - 1):upper()
      i = j
    end
  end
  return items
end

local function literal(s) return "{" .. #s .. "}\r\n" .. s end

-- the one message: header, body and both together, for a backend called name
local function message_of(name)
  local header = table.concat({
    "From: Mock Sender <sender@example.com>",
    "To: alice@example.com",
    "Subject: Hello from mock",
    "Date: Mon, 01 Jan 2024 00:00:00 +0000",
    "Message-ID: <1@" .. name:gsub("[^%w%.%-]", "_") .. ".mock>",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=us-ascii",
    "", "",
  }, "\r\n")
  local body = "mock-body from " .. name .. "\r\n"
  return header, body, header .. body
end

local function fetch_response(items, uid_cmd, HEADER, BODY, MESSAGE)
  local out, has_uid = {}, false
  local function add(x) out[#out + 1] = x end
  local expanded = {}
  for _, it in ipairs(items) do
    if it == "FAST" then
      for _, x in ipairs { "FLAGS", "INTERNALDATE", "RFC822.SIZE" } do expanded[#expanded + 1] = x end
    elseif it == "ALL" or it == "FULL" then
      for _, x in ipairs { "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE" } do expanded[#expanded + 1] = x end
    else
      expanded[#expanded + 1] = it
    end
  end
  for _, it in ipairs(expanded) do
    if it == "UID" then
      has_uid = true
      add("UID 1")
    elseif it == "FLAGS" then
      add("FLAGS (\\Seen)")
    elseif it == "RFC822.SIZE" then
      add("RFC822.SIZE " .. #MESSAGE)
    elseif it == "INTERNALDATE" then
      add('INTERNALDATE "01-Jan-2024 00:00:00 +0000"')
    elseif it == "ENVELOPE" then
      add('ENVELOPE ("Mon, 01 Jan 2024 00:00:00 +0000" "Hello from mock" NIL NIL NIL NIL NIL NIL NIL NIL)')
    elseif it == "RFC822" then
      add("RFC822 " .. literal(MESSAGE))
    elseif it == "RFC822.HEADER" then
      add("RFC822.HEADER " .. literal(HEADER))
    elseif it == "RFC822.TEXT" then
      add("RFC822.TEXT " .. literal(BODY))
    else
      local section = it:match("^BODY%.PEEK(%[.*%])") or it:match("^BODY(%[.*%])")
      if section then
        local sec = section:sub(2, -2)
        local data = MESSAGE
        if sec:match("^HEADER") then data = HEADER
        elseif sec == "TEXT" or sec == "1" then data = BODY end
        local name = "BODY[" .. sec .. "]"
        add(name .. " " .. literal(data))
      elseif it == "BODY" or it == "BODYSTRUCTURE" then
        add(it .. ' ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" ' .. #BODY .. " 1)")
      end
    end
  end
  if uid_cmd and not has_uid then table.insert(out, 1, "UID 1") end
  return "* 1 FETCH (" .. table.concat(out, " ") .. ")"
end

local function decode_plain(b64)
  if b64 == "=" then b64 = "" end
  local raw = mime.unb64(b64)
  if not raw then return nil end
  local authzid, user, pass = raw:match("^([^%z]*)%z([^%z]*)%z([^%z]*)$")
  return user, pass, authzid
end

function _M.run(opts)
  local srv = mock_server.start("mock_imap", opts)
  local record = srv.record
  local NAME = opts.name or "mock"
  local CAPS = opts.capabilities or "IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN"
  local LOGIN_OK = opts.login_ok_text or "[CAPABILITY IMAP4rev1 LITERAL+ IDLE] Logged in"
  local HEADER, BODY, MESSAGE = message_of(NAME)

  -- read one command with its literals; returns {tokens=, text=, literals=} or nil
  local function read_command(c)
    local line = c:readline()
    if not line then return nil end
    local toks, shown, lits = {}, {}, {}
    while true do
      local head, num, plus = line:match("^(.-){(%d+)(%+?)}$")
      if not head then
        tokenize_text(line, toks)
        shown[#shown + 1] = line
        break
      end
      tokenize_text(head, toks)
      local n = tonumber(num)
      if plus == "" then c:sendline("+ go ahead") end
      local data, got = c:readn(n, LIT_KEEP)
      if got < n then return nil end
      lits[#lits + 1] = n
      toks[#toks + 1] = { value = data or "", literal = n }
      shown[#shown + 1] = line .. (data and escape_literal(data) or ("<" .. n .. " bytes>"))
      line = c:readline()
      if not line then return nil end
    end
    local text = table.concat(shown)
    record(c.id .. " " .. text)
    return { tokens = toks, text = text, literals = lits }
  end

  -- login handling ---------------------------------------------------------------
  -- returns true if logged in; "close" if the connection must end
  local function do_login(c, tag, user, password, mech)
    if opts.close_on_login then return "close" end
    record(("AUTH %s %s %s"):format(user, password, mech))
    c:sleep(opts.login_delay)
    if opts.refuse then
      c:sendline(tag .. " NO [AUTHENTICATIONFAILED] " .. opts.refuse)
      return false
    end
    if opts.users and opts.users[user] ~= password then
      c:sendline(tag .. " NO [AUTHENTICATIONFAILED] Authentication failed.")
      return false
    end
    for _, l in ipairs(opts.login_untagged or {}) do c:sendline(l) end
    c:sendline(tag .. " OK " .. LOGIN_OK)
    return true
  end

  local function mailbox_exists(mb)
    return mb:upper() == "INBOX" or mb == NAME
  end

  local function session(c)
    c:sleep(opts.delay)
    local authed = false
    if opts.greeting then
      c:sendline(opts.greeting)
      if opts.greeting:match("^%* BYE") then return end
      if opts.greeting:match("^%* PREAUTH") then authed = true end
    elseif opts.greeting_capabilities == false then
      c:sendline("* OK " .. NAME .. " ready")
    else
      c:sendline("* OK [CAPABILITY " .. CAPS .. "] " .. NAME .. " ready")
    end
    if opts.close_after_greeting then return end

    local selected = nil
    while true do
      local cmd = read_command(c)
      if not cmd then return end
      local t = cmd.tokens
      local tag = t[1] and t[1].value or "*"
      local verb = (t[2] and t[2].value or ""):upper()
      local uid = false
      local argi = 3
      if verb == "UID" then
        uid = true
        verb = "UID " .. (t[3] and t[3].value or ""):upper()
        argi = 4
      end
      local a1 = t[argi] and t[argi].value
      local a2 = t[argi + 1] and t[argi + 1].value

      if #t < 2 then
        c:sendline(tag .. " BAD missing command")
      elseif verb == "CAPABILITY" then
        c:sendline("* CAPABILITY " .. CAPS)
        c:sendline(tag .. " OK CAPABILITY completed")
      elseif verb == "NOOP" or verb == "CHECK" then
        c:sendline(tag .. " OK " .. verb .. " completed")
      elseif verb == "LOGOUT" then
        c:sendline("* BYE " .. NAME .. " logging out")
        c:sendline(tag .. " OK LOGOUT completed")
        return
      elseif verb == "ID" then
        c:sendline('* ID ("name" "postern-mock-imap" "backend" ' .. imap_string(NAME) .. ")")
        c:sendline(tag .. " OK ID completed")
      elseif verb == "STARTTLS" then
        c:sendline(tag .. " NO STARTTLS not supported by the mock")
      elseif verb == "LOGIN" and not authed then
        if not a1 or not a2 then
          c:sendline(tag .. " BAD LOGIN needs user and password")
        else
          local r = do_login(c, tag, a1, a2, "login")
          if r == "close" then return end
          authed = r
        end
      elseif verb == "AUTHENTICATE" and not authed then
        local mech = (a1 or ""):upper()
        if mech ~= "PLAIN" then
          c:sendline(tag .. " NO [CANNOT] unsupported mechanism")
        else
          local resp = a2
          if not resp then
            c:sendline("+ ")
            resp = c:readline()
            if not resp then return end
            record(c.id .. " " .. resp)
          end
          if resp == "*" then
            c:sendline(tag .. " BAD AUTHENTICATE cancelled")
          else
            local user, pass = decode_plain(resp)
            if not user then
              c:sendline(tag .. " BAD invalid SASL PLAIN response")
            else
              local r = do_login(c, tag, user, pass, "plain")
              if r == "close" then return end
              authed = r
            end
          end
        end
      elseif not authed then
        c:sendline(tag .. " BAD unknown command or not authenticated")
      elseif verb == "LIST" or verb == "LSUB" then
        local pat = a2 or "*"
        if pat == "" then
          c:sendline("* " .. verb .. ' (\\Noselect) "/" ""')
        else
          c:sendline("* " .. verb .. ' (\\HasNoChildren) "/" INBOX')
          c:sendline("* " .. verb .. ' (\\HasNoChildren) "/" ' .. imap_string(NAME))
        end
        c:sendline(tag .. " OK " .. verb .. " completed")
      elseif verb == "SELECT" or verb == "EXAMINE" then
        if not a1 or not mailbox_exists(a1) then
          selected = nil
          c:sendline(tag .. " NO [NONEXISTENT] no such mailbox")
        else
          selected = a1:upper() == "INBOX" and 1 or 0
          c:sendline("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)")
          c:sendline("* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.")
          c:sendline("* " .. selected .. " EXISTS")
          c:sendline("* 0 RECENT")
          c:sendline("* OK [UIDVALIDITY 1] UIDs valid")
          c:sendline("* OK [UIDNEXT " .. (selected + 1) .. "] Predicted next UID")
          c:sendline(tag .. " OK [" .. (verb == "SELECT" and "READ-WRITE" or "READ-ONLY") .. "] "
            .. verb .. " completed")
        end
      elseif verb == "STATUS" then
        if not a1 or not mailbox_exists(a1) then
          c:sendline(tag .. " NO [NONEXISTENT] no such mailbox")
        else
          local n = a1:upper() == "INBOX" and 1 or 0
          local vals = { MESSAGES = n, RECENT = 0, UIDNEXT = n + 1, UIDVALIDITY = 1, UNSEEN = 0 }
          local out = {}
          for i = argi + 1, #t do
            local v = t[i].value and t[i].value:upper()
            if v and vals[v] then out[#out + 1] = v .. " " .. vals[v] end
          end
          c:sendline("* STATUS " .. imap_string(a1) .. " (" .. table.concat(out, " ") .. ")")
          c:sendline(tag .. " OK STATUS completed")
        end
      elseif verb == "FETCH" or verb == "UID FETCH" then
        local set, rest = cmd.text:match("^%S+%s+%S+%s+" .. (uid and "%S+%s+" or "") .. "(%S+)%s*(.*)$")
        if not selected then
          c:sendline(tag .. " BAD no mailbox selected")
        elseif not set or rest == "" then
          c:sendline(tag .. " BAD FETCH needs a set and items")
        else
          if selected == 1 and set_has_one(set) then
            c:sendline(fetch_response(fetch_items(rest), uid, HEADER, BODY, MESSAGE))
          end
          c:sendline(tag .. " OK " .. verb .. " completed")
        end
      elseif verb == "SEARCH" or verb == "UID SEARCH" then
        c:sendline("* SEARCH" .. (selected == 1 and " 1" or ""))
        c:sendline(tag .. " OK SEARCH completed")
      elseif verb == "CLOSE" or verb == "UNSELECT" or verb == "EXPUNGE" then
        if verb ~= "EXPUNGE" then selected = nil end
        c:sendline(tag .. " OK " .. verb .. " completed")
      elseif verb == "IDLE" then
        c:sendline("+ idling")
        local l = c:readline()
        if not l then return end
        record(c.id .. " " .. l)
        c:sendline(tag .. " OK IDLE terminated")
      elseif verb == "XECHO" then
        local n = tonumber(a1 or "")
        if not n or n < 0 then
          c:sendline(tag .. " BAD XECHO needs a byte count")
        else
          c:send("* XECHO {" .. n .. "}\r\n")
          local chunk = string.rep("x", 65536)
          local left = n
          while left > 0 do
            local k = math.min(left, #chunk)
            c:send(k == #chunk and chunk or chunk:sub(1, k))
            left = left - k
          end
          c:send("\r\n")
          c:sendline(tag .. " OK XECHO completed")
        end
      elseif verb == "XSINK" then
        local n = cmd.literals[1]
        if not n then
          c:sendline(tag .. " BAD XSINK needs a literal")
        else
          c:sendline(tag .. " OK received " .. n)
        end
      else
        c:sendline(tag .. " BAD unknown command")
      end
    end
  end


  srv.run(session)
end

return _M
