-- postern.testing.mock_sieve: a scriptable mock ManageSieve backend for
-- specs and the demo (RFC 5804).
--
-- Requiring it does nothing. run(opts) serves until the process is killed,
-- so it runs as a process of its own, which postern.testing.mock_sieve
-- starts for you (through lua/postern/testing/run_mock.lua):
--
--   luajit lua/postern/testing/run_mock.lua mock_sieve OPTIONS_FILE
--
-- Every option is optional:
--
--   host, port      listen address (127.0.0.1; port 0 = any free port)
--   record          record file path (default: stdout)
--   name            identity ("mock"): in the IMPLEMENTATION capability
--   users           { alice = "secret" } accepted logins; nil = any
--   refuse          "text": every login gets NO "text"
--
-- Before login: CAPABILITY, NOOP, LOGOUT, AUTHENTICATE "PLAIN" (initial
-- response as a quoted string or a literal, or after an empty challenge).
-- After login: LISTSCRIPTS, PUTSCRIPT, GETSCRIPT, SETACTIVE, DELETESCRIPT,
-- HAVESPACE, CHECKSCRIPT, CAPABILITY, NOOP, LOGOUT. Scripts are kept in
-- memory per user, for the life of the process.
--
-- Record file (one record per line, flushed at once):
--   READY <port>                 first line, once listening
--   CONNECT <id> <ip> <port>     a client connected
--   <id> <line>                  every command line received, without CRLF
--   AUTH <user> <password> plain each login attempt, decoded
--   CLOSE <id>                   the connection is gone
-- SIGTERM ends the process at once (default action).

local mock_server = require "postern.testing.mock_server"

local _M = {}

local function quote(s)
  return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

function _M.run(opts)
  local srv = mock_server.start("mock_sieve", opts)
  local record = srv.record
  local scripts = {}   -- user -> { name -> text }
  local active = {}    -- user -> name

  local function capabilities(c, authed)
    c:sendline('"IMPLEMENTATION" ' .. quote((opts.name or "mock") .. " sieve mock"))
    c:sendline('"SIEVE" "fileinto reject envelope vacation"')
    if not authed then c:sendline('"SASL" "PLAIN"') end
    c:sendline('"VERSION" "1.0"')
  end

  -- the strings of a command line: quoted, or literals read after the line
  local function strings(c, line)
    local out, pos = {}, 1
    while pos <= #line do
      local ch = line:sub(pos, pos)
      if ch == " " then
        pos = pos + 1
      elseif ch == '"' then
        local e = pos + 1
        local parts = {}
        while e <= #line and line:sub(e, e) ~= '"' do
          if line:sub(e, e) == "\\" then e = e + 1 end
          parts[#parts + 1] = line:sub(e, e)
          e = e + 1
        end
        out[#out + 1] = table.concat(parts)
        pos = e + 1
      else
        local n = line:match("^{(%d+)%+?}$", pos)
        if not n then
          out[#out + 1] = line:match("^(%S+)", pos)
          pos = pos + #out[#out]
        else
          local data = c:readn(tonumber(n), 1024 * 1024)
          if not data then return nil end
          out[#out + 1] = data
          local rest = c:readline() or ""
          for _, v in ipairs(strings(c, rest)) do out[#out + 1] = v end
          return out
        end
      end
    end
    return out
  end

  local function session(c)
    capabilities(c, false)
    c:sendline('OK "' .. (opts.name or "mock") .. ' ready."')
    local user
    while true do
      local line = c:readline()
      if not line then return end
      record(c.id .. " " .. line)
      local verb, rest = line:match("^(%S*)%s*(.-)$")
      verb = verb:upper()
      local args = strings(c, rest)
      if not args then return end
      if verb == "LOGOUT" then
        c:sendline('OK "Logout completed."')
        return
      elseif verb == "NOOP" then
        c:sendline('OK "NOOP completed."')
      elseif verb == "CAPABILITY" then
        capabilities(c, user ~= nil)
        c:sendline('OK "Capability completed."')
      elseif not user then
        if verb == "AUTHENTICATE" and (args[1] or ""):upper() == "PLAIN" then
          local ir = args[2]
          if not ir then
            c:sendline('""')
            local l = c:readline()
            if not l then return end
            ir = strings(c, l)[1] or ""
          end
          local u, p = mock_server.decode_plain(mock_server.unb64(ir) or "")
          record(("AUTH %s %s plain"):format(tostring(u), tostring(p)))
          if opts.refuse then
            c:sendline("NO " .. quote(opts.refuse))
          elseif u and p and (not opts.users or opts.users[u] == p) then
            user = u
            scripts[user] = scripts[user] or {}
            c:sendline('OK "Logged in."')
          else
            c:sendline('NO "Authentication failed."')
          end
        else
          c:sendline('NO "Error in MANAGESIEVE command received by server."')
        end
      else
        local mine = scripts[user]
        if verb == "LISTSCRIPTS" then
          local names = {}
          for name in pairs(mine) do names[#names + 1] = name end
          table.sort(names)
          for _, name in ipairs(names) do
            c:sendline(quote(name) .. (active[user] == name and " ACTIVE" or ""))
          end
          c:sendline('OK "Listscripts completed."')
        elseif verb == "PUTSCRIPT" and args[2] then
          mine[args[1]] = args[2]
          c:sendline('OK "Putscript completed."')
        elseif verb == "GETSCRIPT" and mine[args[1] or ""] then
          local text = mine[args[1]]
          c:sendline(("{%d}"):format(#text))
          c:send(text)
          c:sendline("")
          c:sendline('OK "Getscript completed."')
        elseif verb == "SETACTIVE" and (args[1] == "" or mine[args[1] or ""]) then
          active[user] = args[1] ~= "" and args[1] or nil
          c:sendline('OK "Setactive completed."')
        elseif verb == "DELETESCRIPT" and mine[args[1] or ""] then
          mine[args[1]] = nil
          c:sendline('OK "Deletescript completed."')
        elseif verb == "HAVESPACE" or verb == "CHECKSCRIPT" then
          c:sendline('OK "OK."')
        else
          c:sendline('NO "No such script or bad command."')
        end
      end
    end
  end

  srv.run(session)
end

return _M
