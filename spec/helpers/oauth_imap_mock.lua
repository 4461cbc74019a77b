-- spec/helpers/oauth_imap_mock.lua: a small IMAP backend for spec/integration/sasl_spec.lua
-- that, unlike postern.testing.mock_imap, accepts AUTHENTICATE XOAUTH2 and
-- OAUTHBEARER (besides LOGIN and AUTHENTICATE PLAIN), so the OAuth login
-- postern forwards upstream can be seen to succeed or fail.
--
-- A module like the kit's mocks: requiring it does nothing, run(opts)
-- serves; helpers.sasl_protocols starts it as a process of its own:
--
--   LUA_PATH='spec/?.lua;;' luajit lua/postern/testing/run_mock.lua helpers.oauth_imap_mock OPTIONS_FILE
--
-- Options (all optional): host, port, record, name ("mock"),
--   sasl_ir        false: the greeting does not announce SASL-IR (a
--                  mechanism's response then comes after a "+ ")
--   refuse         "text": every login fails; an OAuth one first gets the
--                  RFC 7628 error challenge, then (after the client's
--                  answer) "tag NO [AUTHENTICATIONFAILED] text"
--
-- Records (mock_imap's format): READY <port>, CONNECT <id> <ip> <port>,
-- "<id> <line>" for every line received, AUTH <user> <password> <mech>
-- (mech login|plain|xoauth2|oauthbearer), CLOSE <id>.
-- After a login every command gets "tag OK <name> <VERB> completed".

local mock_server = require "postern.testing.mock_server"

local ERROR_JSON = '{"status":"invalid_token","schemes":"bearer","scope":"mail"}'

-- tokens of a command line: atoms and "quoted" strings (no literals)
local function tokens(line)
  local out, i = {}, 1
  while i <= #line do
    local ch = line:sub(i, i)
    if ch == " " then
      i = i + 1
    elseif ch == '"' then
      local buf, j = {}, i + 1
      while j <= #line do
        local d = line:sub(j, j)
        if d == "\\" then
          buf[#buf + 1] = line:sub(j + 1, j + 1)
          j = j + 2
        elseif d == '"' then
          break
        else
          buf[#buf + 1] = d
          j = j + 1
        end
      end
      out[#out + 1] = table.concat(buf)
      i = j + 1
    else
      local j = line:find(" ", i, true) or (#line + 1)
      out[#out + 1] = line:sub(i, j - 1)
      i = j
    end
  end
  return out
end

local _M = {}

function _M.run(opts)
  local srv = mock_server.start("oauth_imap_mock", opts)
  local record = srv.record
  local NAME = opts.name or "mock"
  local CAPS = "IMAP4rev1 " .. (opts.sasl_ir == false and "" or "SASL-IR ")
    .. "AUTH=PLAIN AUTH=XOAUTH2 AUTH=OAUTHBEARER"

  local function session(c)
    c:sendline("* OK [CAPABILITY " .. CAPS .. "] " .. NAME .. " ready")
    local function readline()
      local l = c:readline()
      if l then record(c.id .. " " .. l) end
      return l
    end
    local authed = false
    while true do
      local line = readline()
      if not line then return end
      local t = tokens(line)
      local tag, verb = t[1] or "*", (t[2] or ""):upper()
      if verb == "LOGOUT" then
        c:sendline("* BYE " .. NAME .. " logging out")
        c:sendline(tag .. " OK LOGOUT completed")
        return
      elseif authed then
        c:sendline(("%s OK %s %s completed"):format(tag, NAME, verb))
      elseif verb == "CAPABILITY" then
        c:sendline("* CAPABILITY " .. CAPS)
        c:sendline(tag .. " OK CAPABILITY completed")
      elseif verb == "NOOP" then
        c:sendline(tag .. " OK NOOP completed")
      elseif verb == "LOGIN" and t[3] and t[4] then
        record(("AUTH %s %s login"):format(t[3], t[4]))
        if opts.refuse then
          c:sendline(tag .. " NO [AUTHENTICATIONFAILED] " .. opts.refuse)
        else
          authed = true
          c:sendline(tag .. " OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
        end
      elseif verb == "AUTHENTICATE" and t[3] then
        local mech = t[3]:upper()
        local resp = t[4]
        if mech ~= "PLAIN" and mech ~= "XOAUTH2" and mech ~= "OAUTHBEARER" then
          c:sendline(tag .. " NO [CANNOT] unsupported mechanism")
        else
          if not resp then
            c:sendline("+ ")
            resp = readline()
            if not resp then return end
          end
          local raw = resp ~= "*" and mock_server.unb64(resp)
          local user, pass
          if raw then
            if mech == "PLAIN" then user, pass = mock_server.decode_plain(raw)
            elseif mech == "XOAUTH2" then user, pass = mock_server.decode_xoauth2(raw)
            else user, pass = mock_server.decode_oauthbearer(raw) end
          end
          if resp == "*" then
            c:sendline(tag .. " BAD AUTHENTICATE cancelled")
          elseif not user or not pass then
            c:sendline(tag .. " BAD invalid " .. mech .. " response")
          else
            record(("AUTH %s %s %s"):format(user, pass, mech:lower()))
            if opts.refuse then
              if mech ~= "PLAIN" then
                c:sendline("+ " .. mock_server.b64(ERROR_JSON))
                if not readline() then return end
              end
              c:sendline(tag .. " NO [AUTHENTICATIONFAILED] " .. opts.refuse)
            else
              authed = true
              c:sendline(tag .. " OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
            end
          end
        end
      else
        c:sendline(tag .. " BAD unknown command or not authenticated")
      end
    end
  end

  srv.run(session)
end

return _M
