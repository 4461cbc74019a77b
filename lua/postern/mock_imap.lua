-- postern.mock_imap: a scriptable mock IMAP4rev1 backend for specs.
--
-- Runs as a separate process:
--
--   luajit lua/postern/mock_imap.lua OPTIONS_FILE
--
-- OPTIONS_FILE is a Lua file that returns the options table (written for
-- you by postern.testing.mock_imap). Every option is optional:
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

local socket = require "socket"
local mime = require "mime"

local opts_file = arg and arg[1]
if not opts_file then
  io.stderr:write("usage: luajit mock_imap.lua OPTIONS_FILE\n")
  os.exit(2)
end
local opts = assert(dofile(opts_file), "options file must return a table")

local NAME = opts.name or "mock"
local CAPS = opts.capabilities or "IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN"
local LOGIN_OK = opts.login_ok_text or "[CAPABILITY IMAP4rev1 LITERAL+ IDLE] Logged in"
local LIT_KEEP = 65536          -- literal bytes kept for parsing/recording
local INBUF_MAX = 1024 * 1024   -- stop reading a client above this
local OUTBUF_HIGH = 256 * 1024  -- a writer waits above this

-- the one message ------------------------------------------------------------
local HEADER = table.concat({
  "From: Mock Sender <sender@example.com>",
  "To: alice@example.com",
  "Subject: Hello from mock",
  "Date: Mon, 01 Jan 2024 00:00:00 +0000",
  "Message-ID: <1@" .. NAME:gsub("[^%w%.%-]", "_") .. ".mock>",
  "MIME-Version: 1.0",
  "Content-Type: text/plain; charset=us-ascii",
  "", "",
}, "\r\n")
local BODY = "mock-body from " .. NAME .. "\r\n"
local MESSAGE = HEADER .. BODY

-- record file -----------------------------------------------------------------
local rec
if opts.record then
  rec = assert(io.open(opts.record, "a"))
else
  rec = io.stdout
end
local function record(s)
  rec:write(s, "\n")
  rec:flush()
end

local function escape_literal(s)
  return (s:gsub("\r", "\\r"):gsub("\n", "\\n"))
end

-- connections: each one runs a coroutine with blocking-style I/O ----------------
local conns = {}      -- sock -> conn
local next_id = 0

local function now() return socket.gettime() end

local function c_send(c, s)
  if c.dead then error("dead", 0) end
  c.out[#c.out + 1] = s
  c.outlen = c.outlen + #s
  while c.outlen > OUTBUF_HIGH do
    c.wait = "write"
    coroutine.yield()
    if c.dead then error("dead", 0) end
  end
end

local function c_sendline(c, s) c_send(c, s .. "\r\n") end

local function c_sleep(c, sec)
  if not sec or sec <= 0 then return end
  c.wait = "sleep"
  c.deadline = now() + sec
  coroutine.yield()
end

-- next line without CRLF (a bare LF is tolerated); nil on EOF
local function c_readline(c)
  while true do
    local i = c.inbuf:find("\n", 1, true)
    if i then
      local line = c.inbuf:sub(1, i - 1)
      c.inbuf = c.inbuf:sub(i + 1)
      if line:sub(-1) == "\r" then line = line:sub(1, -2) end
      return line
    end
    if c.eof then return nil end
    c.wait = "read"
    coroutine.yield()
  end
end

-- read n bytes; keep at most `keep` of them; returns kept data (or nil) and count
local function c_readn(c, n, keep)
  local parts, got = {}, 0
  while got < n do
    if #c.inbuf == 0 then
      if c.eof then return nil, got end
      c.wait = "read"
      coroutine.yield()
    else
      local take = math.min(n - got, #c.inbuf)
      if got + take <= keep then parts[#parts + 1] = c.inbuf:sub(1, take) end
      c.inbuf = c.inbuf:sub(take + 1)
      got = got + take
    end
  end
  if n <= keep then return table.concat(parts), n end
  return nil, n
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

-- read one command with its literals; returns {tokens=, text=, literals=} or nil
local function read_command(c)
  local line = c_readline(c)
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
    if plus == "" then c_sendline(c, "+ go ahead") end
    local data, got = c_readn(c, n, LIT_KEEP)
    if got < n then return nil end
    lits[#lits + 1] = n
    toks[#toks + 1] = { value = data or "", literal = n }
    shown[#shown + 1] = line .. (data and escape_literal(data) or ("<" .. n .. " bytes>"))
    line = c_readline(c)
    if not line then return nil end
  end
  local text = table.concat(shown)
  record(c.id .. " " .. text)
  return { tokens = toks, text = text, literals = lits }
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

local function fetch_response(items, uid_cmd)
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

-- login handling ---------------------------------------------------------------
-- returns true if logged in; "close" if the connection must end
local function do_login(c, tag, user, password, mech)
  if opts.close_on_login then return "close" end
  record(("AUTH %s %s %s"):format(user, password, mech))
  c_sleep(c, opts.login_delay)
  if opts.refuse then
    c_sendline(c, tag .. " NO [AUTHENTICATIONFAILED] " .. opts.refuse)
    return false
  end
  if opts.users and opts.users[user] ~= password then
    c_sendline(c, tag .. " NO [AUTHENTICATIONFAILED] Authentication failed.")
    return false
  end
  for _, l in ipairs(opts.login_untagged or {}) do c_sendline(c, l) end
  c_sendline(c, tag .. " OK " .. LOGIN_OK)
  return true
end

local function decode_plain(b64)
  if b64 == "=" then b64 = "" end
  local raw = mime.unb64(b64)
  if not raw then return nil end
  local authzid, user, pass = raw:match("^([^%z]*)%z([^%z]*)%z([^%z]*)$")
  return user, pass, authzid
end

local function mailbox_exists(mb)
  return mb:upper() == "INBOX" or mb == NAME
end

local function session(c)
  c_sleep(c, opts.delay)
  local authed = false
  if opts.greeting then
    c_sendline(c, opts.greeting)
    if opts.greeting:match("^%* BYE") then return end
    if opts.greeting:match("^%* PREAUTH") then authed = true end
  elseif opts.greeting_capabilities == false then
    c_sendline(c, "* OK " .. NAME .. " ready")
  else
    c_sendline(c, "* OK [CAPABILITY " .. CAPS .. "] " .. NAME .. " ready")
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
      c_sendline(c, tag .. " BAD missing command")
    elseif verb == "CAPABILITY" then
      c_sendline(c, "* CAPABILITY " .. CAPS)
      c_sendline(c, tag .. " OK CAPABILITY completed")
    elseif verb == "NOOP" or verb == "CHECK" then
      c_sendline(c, tag .. " OK " .. verb .. " completed")
    elseif verb == "LOGOUT" then
      c_sendline(c, "* BYE " .. NAME .. " logging out")
      c_sendline(c, tag .. " OK LOGOUT completed")
      return
    elseif verb == "ID" then
      c_sendline(c, '* ID ("name" "postern-mock-imap" "backend" ' .. imap_string(NAME) .. ")")
      c_sendline(c, tag .. " OK ID completed")
    elseif verb == "STARTTLS" then
      c_sendline(c, tag .. " NO STARTTLS not supported by the mock")
    elseif verb == "LOGIN" and not authed then
      if not a1 or not a2 then
        c_sendline(c, tag .. " BAD LOGIN needs user and password")
      else
        local r = do_login(c, tag, a1, a2, "login")
        if r == "close" then return end
        authed = r
      end
    elseif verb == "AUTHENTICATE" and not authed then
      local mech = (a1 or ""):upper()
      if mech ~= "PLAIN" then
        c_sendline(c, tag .. " NO [CANNOT] unsupported mechanism")
      else
        local resp = a2
        if not resp then
          c_sendline(c, "+ ")
          resp = c_readline(c)
          if not resp then return end
          record(c.id .. " " .. resp)
        end
        if resp == "*" then
          c_sendline(c, tag .. " BAD AUTHENTICATE cancelled")
        else
          local user, pass = decode_plain(resp)
          if not user then
            c_sendline(c, tag .. " BAD invalid SASL PLAIN response")
          else
            local r = do_login(c, tag, user, pass, "plain")
            if r == "close" then return end
            authed = r
          end
        end
      end
    elseif not authed then
      c_sendline(c, tag .. " BAD unknown command or not authenticated")
    elseif verb == "LIST" or verb == "LSUB" then
      local pat = a2 or "*"
      if pat == "" then
        c_sendline(c, "* " .. verb .. ' (\\Noselect) "/" ""')
      else
        c_sendline(c, "* " .. verb .. ' (\\HasNoChildren) "/" INBOX')
        c_sendline(c, "* " .. verb .. ' (\\HasNoChildren) "/" ' .. imap_string(NAME))
      end
      c_sendline(c, tag .. " OK " .. verb .. " completed")
    elseif verb == "SELECT" or verb == "EXAMINE" then
      if not a1 or not mailbox_exists(a1) then
        selected = nil
        c_sendline(c, tag .. " NO [NONEXISTENT] no such mailbox")
      else
        selected = a1:upper() == "INBOX" and 1 or 0
        c_sendline(c, "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)")
        c_sendline(c, "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.")
        c_sendline(c, "* " .. selected .. " EXISTS")
        c_sendline(c, "* 0 RECENT")
        c_sendline(c, "* OK [UIDVALIDITY 1] UIDs valid")
        c_sendline(c, "* OK [UIDNEXT " .. (selected + 1) .. "] Predicted next UID")
        c_sendline(c, tag .. " OK [" .. (verb == "SELECT" and "READ-WRITE" or "READ-ONLY") .. "] "
          .. verb .. " completed")
      end
    elseif verb == "STATUS" then
      if not a1 or not mailbox_exists(a1) then
        c_sendline(c, tag .. " NO [NONEXISTENT] no such mailbox")
      else
        local n = a1:upper() == "INBOX" and 1 or 0
        local vals = { MESSAGES = n, RECENT = 0, UIDNEXT = n + 1, UIDVALIDITY = 1, UNSEEN = 0 }
        local out = {}
        for i = argi + 1, #t do
          local v = t[i].value and t[i].value:upper()
          if v and vals[v] then out[#out + 1] = v .. " " .. vals[v] end
        end
        c_sendline(c, "* STATUS " .. imap_string(a1) .. " (" .. table.concat(out, " ") .. ")")
        c_sendline(c, tag .. " OK STATUS completed")
      end
    elseif verb == "FETCH" or verb == "UID FETCH" then
      local set, rest = cmd.text:match("^%S+%s+%S+%s+" .. (uid and "%S+%s+" or "") .. "(%S+)%s*(.*)$")
      if not selected then
        c_sendline(c, tag .. " BAD no mailbox selected")
      elseif not set or rest == "" then
        c_sendline(c, tag .. " BAD FETCH needs a set and items")
      else
        if selected == 1 and set_has_one(set) then
          c_sendline(c, fetch_response(fetch_items(rest), uid))
        end
        c_sendline(c, tag .. " OK " .. verb .. " completed")
      end
    elseif verb == "SEARCH" or verb == "UID SEARCH" then
      c_sendline(c, "* SEARCH" .. (selected == 1 and " 1" or ""))
      c_sendline(c, tag .. " OK SEARCH completed")
    elseif verb == "CLOSE" or verb == "UNSELECT" or verb == "EXPUNGE" then
      if verb ~= "EXPUNGE" then selected = nil end
      c_sendline(c, tag .. " OK " .. verb .. " completed")
    elseif verb == "IDLE" then
      c_sendline(c, "+ idling")
      local l = c_readline(c)
      if not l then return end
      record(c.id .. " " .. l)
      c_sendline(c, tag .. " OK IDLE terminated")
    elseif verb == "XECHO" then
      local n = tonumber(a1 or "")
      if not n or n < 0 then
        c_sendline(c, tag .. " BAD XECHO needs a byte count")
      else
        c_send(c, "* XECHO {" .. n .. "}\r\n")
        local chunk = string.rep("x", 65536)
        local left = n
        while left > 0 do
          local k = math.min(left, #chunk)
          c_send(c, k == #chunk and chunk or chunk:sub(1, k))
          left = left - k
        end
        c_send(c, "\r\n")
        c_sendline(c, tag .. " OK XECHO completed")
      end
    elseif verb == "XSINK" then
      local n = cmd.literals[1]
      if not n then
        c_sendline(c, tag .. " BAD XSINK needs a literal")
      else
        c_sendline(c, tag .. " OK received " .. n)
      end
    else
      c_sendline(c, tag .. " BAD unknown command")
    end
  end
end

-- the event loop ------------------------------------------------------------------
local server = assert(socket.bind(opts.host or "127.0.0.1", opts.port or 0, 128))
server:settimeout(0)
local _, bound_port = server:getsockname()
record("READY " .. bound_port)

local function close_conn(c)
  if c.closed then return end
  c.closed = true
  c.dead = true
  conns[c.sock] = nil
  c.sock:close()
  record("CLOSE " .. c.id)
end

local function resume(c)
  c.wait = nil
  local ok, err = coroutine.resume(c.co)
  if not ok then
    if err ~= "dead" then io.stderr:write("mock_imap: connection " .. c.id .. ": " .. tostring(err) .. "\n") end
    c.finished = true
    c.out, c.outlen = {}, 0
  elseif coroutine.status(c.co) == "dead" then
    c.finished = true
  end
end

local function flush(c)
  while #c.out > 0 do
    local s = c.out[1]
    local last, err, partial = c.sock:send(s, c.outpos)
    local sent = last or partial or (c.outpos - 1)
    if last then
      c.outlen = c.outlen - (#s - c.outpos + 1)
      table.remove(c.out, 1)
      c.outpos = 1
    else
      c.outlen = c.outlen - (sent - c.outpos + 1)
      c.outpos = sent + 1
      if err ~= "timeout" then
        close_conn(c)
      end
      return
    end
  end
end

while true do
  local rset, wset = { server }, {}
  local timeout = 1
  local t = now()
  for sock, c in pairs(conns) do
    if not c.eof and #c.inbuf < INBUF_MAX and not c.finished then rset[#rset + 1] = sock end
    if #c.out > 0 then wset[#wset + 1] = sock end
    if c.wait == "sleep" then timeout = math.max(0, math.min(timeout, c.deadline - t)) end
  end
  local readable, writable = socket.select(rset, wset, timeout)

  -- new connections
  while true do
    local s = server:accept()
    if not s then break end
    s:settimeout(0)
    s:setoption("tcp-nodelay", true)
    next_id = next_id + 1
    local ip, port = s:getpeername()
    local c = { sock = s, id = next_id, inbuf = "", out = {}, outlen = 0, outpos = 1 }
    c.co = coroutine.create(function() session(c) end)
    conns[s] = c
    record(("CONNECT %d %s %s"):format(c.id, tostring(ip), tostring(port)))
    resume(c)
  end

  for _, sock in ipairs(readable or {}) do
    local c = conns[sock]
    if c then
      local got, total = {}, #c.inbuf
      while total < INBUF_MAX do
        local data, err, partial = sock:receive(65536)
        data = data or partial
        if data and #data > 0 then
          got[#got + 1] = data
          total = total + #data
        end
        if err == "closed" or (err and err ~= "timeout") then
          c.eof = true
          break
        end
        if err then break end
      end
      c.inbuf = c.inbuf .. table.concat(got)
      if c.wait == "read" then resume(c) end
    end
  end

  for _, sock in ipairs(writable or {}) do
    local c = conns[sock]
    if c then flush(c) end
  end

  for _, c in pairs(conns) do
    -- run the connection until it waits for something that is not there yet
    local progress = true
    while progress and not c.closed do
      progress = false
      if #c.out > 0 then flush(c) end
      if c.closed or c.finished then break end
      if (c.wait == "sleep" and now() >= c.deadline)
        or (c.wait == "write" and c.outlen <= OUTBUF_HIGH)
        or (c.wait == "read" and c.eof) then
        resume(c)
        progress = true
      end
    end
    if not c.closed and c.finished and #c.out == 0 then close_conn(c) end
  end
end
