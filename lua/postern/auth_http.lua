--- postern.auth_http: nginx's auth_http protocol, so an auth server written
--- for the nginx mail module works with postern unchanged.
--
-- A whole policy (the shipped one is scripts/auth_http.lua):
--
--   return { authenticate = require("postern.auth_http").new{ url = "http://127.0.0.1:9000/auth" } }
--
-- auth_http.new(opts) -> authenticate(s), with opts:
--   url               nginx's `auth_http`: "http://host[:port][/uri]" (the scheme
--                     may be left out, as in nginx; "https://" works too, with
--                     certificate verification). Required.
--   headers           nginx's `auth_http_header`: extra headers sent after the
--                     standard ones, { ["X-Auth-Key"] = "secret" } (sent sorted by
--                     name) or { {"X-A", "1"}, {"X-B", "2"} } (sent in that order).
--   timeout           nginx's `auth_http_timeout`, seconds (60). postern's own
--                     `auth_timeout` (proxy.conf.lua, 30 by default) bounds the
--                     whole hook, WAIT rounds included: raise it with this one.
--   pass_client_cert  nginx's `auth_http_pass_client_cert` (false).
--   verify            check the auth server's certificate with https (true).
--
-- The request is what nginx sends (reference: nginx src/mail/
-- ngx_mail_auth_http_module.c, ngx_mail_auth_http_create_request), a GET
-- with these headers in this order:
--   Host                  the URL's host, without the port
--   Auth-Method           plain (IMAP LOGIN, USER/PASS, PLAIN and LOGIN), apop,
--                         cram-md5, external, none (SMTP without AUTH); postern's
--                         extra mechanisms are sent by name: xoauth2, oauthbearer
--   Auth-User, Auth-Pass  %-escaped as nginx does (bytes 0x00-0x1F, space and %
--                         become %XX); for APOP and CRAM-MD5 Auth-Pass is the
--                         client's digest
--   Auth-Salt             APOP and CRAM-MD5: the challenge the digest is made from
--   Auth-Protocol         imap, pop3 or smtp
--   Auth-Login-Attempt    1, 2, ... on this connection (the same on a WAIT retry)
--   Client-IP
--   Client-Host           SMTP only: s.client_host when the core provides a
--                         confirmed PTR name, else [UNAVAILABLE] (nginx without
--                         a resolver)
--   Proxy-Protocol-Addr, -Port, -Server-Addr, -Server-Port
--                         when the session carries the PROXY header's fields
--                         (s.proxy_protocol_addr, ...)
--   Auth-SMTP-Helo, -From, -To   Auth-Method none only: the HELO/EHLO argument and
--                         the whole MAIL and RCPT command lines
--   Auth-SSL: on, Auth-SSL-Protocol, -Cipher, -Verify, -Subject, -Issuer,
--   -Serial, -Fingerprint, -Cert   when the client connection is TLS (s.tls and,
--                         as the core provides them, s.tls_protocol, s.tls_cipher,
--                         s.tls_verify, s.tls_subject, s.tls_issuer, s.tls_serial,
--                         s.tls_fingerprint, s.tls_cert)
--   the `headers` option
--
-- The answer means what it means to nginx. The HTTP status code and the
-- body are ignored; header names are case-insensitive:
--   Auth-Status: OK       route to Auth-Server:Auth-Port (a host name is resolved
--                         with postern.dns.resolve: nginx wants an IP address);
--                         Auth-User and Auth-Pass replace the credentials used
--                         upstream. Without Auth-Pass the client's password is
--                         used; after APOP or CRAM-MD5 (no cleartext known) an
--                         IMAP or POP3 answer without Auth-Pass is an error.
--   Auth-Status: WAIT     ask again after Auth-Wait seconds (at once without it)
--   Auth-Status: <text>   refuse with <text>. With Auth-Wait: N the reply comes
--                         after N seconds and the client may try again; without
--                         it the reply is sent and the connection closed. SMTP:
--                         the reply code is Auth-Error-Code (default "535 5.7.0").
-- A failure to reach the auth server, a timeout, a missing or invalid
-- Auth-Server/Auth-Port, or a missing password is nginx's "internal server
-- error": a temporary failure (SMTP 451 4.3.2), then close, and a log line.
--
-- The request goes over postern.http (libcurl): HTTP/1.1 with keep-alive, so
-- one connection to the auth server serves many sessions (nginx opens one
-- per login), and many sessions wait on it at once without blocking each
-- other. The answer is not limited to nginx's 1024 bytes.
--
-- Also exported for tests and for policies that build on it:
--   auth_http.escape(s), auth_http.method(mechanism), auth_http.parse_url(url),
--   auth_http.request_headers(s, conf) -> { {name, value}, ... },
--   auth_http.interpret(s, headers) -> decision (see below),
--   auth_http.query(s, conf) -> decision, or nil, message.

local postern = require "postern"

local M = {}

-- ngx_escape_uri(..., NGX_ESCAPE_MAIL_AUTH): 0x00-0x1F, space and % as %XX
function M.escape(s)
  return (tostring(s or ""):gsub("[%z\1-\31 %%]", function(c)
    return ("%%%02X"):format(c:byte())
  end))
end

local METHODS = {
  plain = "plain", login = "plain", apop = "apop", ["cram-md5"] = "cram-md5",
  external = "external", none = "none", xoauth2 = "xoauth2", oauthbearer = "oauthbearer",
}

-- postern's s.mechanism -> nginx's Auth-Method
function M.method(mechanism)
  if mechanism == nil then return "plain" end
  return METHODS[mechanism] or mechanism
end

-- "http://host[:port][/uri]" (scheme optional) -> { url, host_header, uri }
function M.parse_url(url)
  if type(url) ~= "string" or url == "" then return nil, "url: expected a string" end
  if url:match("^unix:") then return nil, "url: unix sockets are not supported, use http://" end
  local scheme, rest = url:match("^(https?)://(.*)$")
  if not scheme then
    if url:match("^%a[%w+.-]*://") then return nil, "url: only http:// and https:// are supported" end
    scheme, rest = "http", url
  end
  local authority, uri = rest:match("^([^/]*)(.*)$")
  if uri == "" then uri = "/" end
  local host
  if authority:sub(1, 1) == "[" then
    host = authority:match("^(%[[^%]]+%])")
  else
    host = authority:match("^([^:]+)")
  end
  if not host or host == "" then return nil, "url: no host in " .. url end
  local port = authority:sub(#host + 1)
  if port ~= "" and not port:match("^:%d+$") then return nil, "url: bad port in " .. url end
  return { url = scheme .. "://" .. authority .. uri, host_header = host, uri = uri,
    name = authority ~= "" and authority or host }
end

local function valid_host_name(h)
  return h:match("^[A-Za-z0-9.-]+$") ~= nil
end

-- the request headers, in nginx's order
function M.request_headers(s, conf)
  local h = {}
  local function add(name, value) h[#h + 1] = { name, tostring(value) } end
  local method = M.method(s.mechanism)
  add("Host", conf.host_header)
  add("Auth-Method", method)
  add("Auth-User", M.escape(s.user or ""))
  local pass = s.password
  if (method == "apop" or method == "cram-md5") and s.digest then pass = s.digest end
  add("Auth-Pass", M.escape(pass or ""))
  if method ~= "plain" and s.salt and s.salt ~= "" then add("Auth-Salt", s.salt) end
  add("Auth-Protocol", s.protocol or "")
  add("Auth-Login-Attempt", math.floor(tonumber(s.login_attempt) or 1))
  add("Client-IP", s.client_ip or "")
  if s.protocol == "smtp" then
    local ch = s.client_host
    if ch == nil or ch == "" then
      ch = "[UNAVAILABLE]"
    elseif not (ch == "[UNAVAILABLE]" or ch == "[TEMPUNAVAIL]" or valid_host_name(ch)) then
      ch = "[TEMPUNAVAIL]"
    end
    add("Client-Host", ch)
  end
  if s.proxy_protocol_addr then
    add("Proxy-Protocol-Addr", s.proxy_protocol_addr)
    add("Proxy-Protocol-Port", s.proxy_protocol_port or "")
    add("Proxy-Protocol-Server-Addr", s.proxy_protocol_server_addr or "")
    add("Proxy-Protocol-Server-Port", s.proxy_protocol_server_port or "")
  end
  if method == "none" then
    add("Auth-SMTP-Helo", s.helo or "")
    local from = s.mail_line
    if not from then from = s.mail_from and ("MAIL FROM:<" .. s.mail_from .. ">") or "" end
    add("Auth-SMTP-From", from)
    local to = s.rcpt_line
    if not to then
      local r = s.rcpt_to
      r = type(r) == "table" and r[#r] or nil
      to = r and ("RCPT TO:<" .. r .. ">") or ""
    end
    add("Auth-SMTP-To", to)
  end
  if s.tls then
    add("Auth-SSL", "on")
    if s.tls_protocol and s.tls_protocol ~= "" then add("Auth-SSL-Protocol", s.tls_protocol) end
    if s.tls_cipher and s.tls_cipher ~= "" then add("Auth-SSL-Cipher", s.tls_cipher) end
    if s.tls_verify and s.tls_verify ~= "" then add("Auth-SSL-Verify", s.tls_verify) end
    if s.tls_subject and s.tls_subject ~= "" then add("Auth-SSL-Subject", s.tls_subject) end
    if s.tls_issuer and s.tls_issuer ~= "" then add("Auth-SSL-Issuer", s.tls_issuer) end
    if s.tls_serial and s.tls_serial ~= "" then add("Auth-SSL-Serial", s.tls_serial) end
    if s.tls_fingerprint and s.tls_fingerprint ~= "" then add("Auth-SSL-Fingerprint", s.tls_fingerprint) end
    if conf.pass_client_cert and s.tls_cert and s.tls_cert ~= "" then
      add("Auth-SSL-Cert", M.escape(s.tls_cert))
    end
  end
  for _, e in ipairs(conf.extra_headers or {}) do add(e[1], e[2]) end
  return h
end

local function is_ip_literal(h)
  return h:match("^%d+%.%d+%.%d+%.%d+$") ~= nil or h:find(":", 1, true) ~= nil
end

-- The answer's headers (a name -> value table, any case) -> a decision:
--   { kind = "ok", host, port, user, password }
--   { kind = "error", message, wait, code }        nginx's error status
--   { kind = "wait", wait }                        Auth-Status: WAIT
--   { kind = "internal", reason }                  nginx's internal server error
-- The host is returned as sent (query() resolves names).
function M.interpret(s, headers)
  local h = {}
  for k, v in pairs(headers or {}) do h[tostring(k):lower()] = tostring(v) end
  local status = h["auth-status"]
  local wait = 0
  if h["auth-wait"] and h["auth-wait"]:match("^%d+$") then wait = tonumber(h["auth-wait"]) end
  local smtp = s.protocol == "smtp"
  -- an empty Auth-Status is no error for SMTP in nginx (an empty error text)
  if status and status ~= "OK" and status ~= "WAIT" and not (smtp and status == "") then
    local d = { kind = "error", message = status, wait = wait }
    if smtp then
      local code = h["auth-error-code"]
      d.code = (code and code ~= "") and code or "535 5.7.0"
    end
    return d
  end
  if status == "WAIT" then return { kind = "wait", wait = wait } end
  local server, port = h["auth-server"], h["auth-port"]
  if not server or server == "" or not port or port == "" then
    return { kind = "internal", reason = "did not send server or port" }
  end
  local password = h["auth-pass"]
  if password == nil then
    local m = M.method(s.mechanism)
    if m == "apop" or m == "cram-md5" or s.password == nil then
      if not smtp then return { kind = "internal", reason = "did not send password" } end
    else
      password = s.password
    end
  end
  local host = server:match("^%[(.*)%]$") or server
  local p = port:match("^%d+$") and tonumber(port)
  if not p or p < 1 or p > 65535 then
    return { kind = "internal", reason = ('sent invalid server port:"%s"'):format(port) }
  end
  if not (is_ip_literal(host) or valid_host_name(host)) then
    return { kind = "internal", reason = ('sent invalid server address:"%s"'):format(server) }
  end
  local user = h["auth-user"]
  if user == nil then user = s.user end
  return { kind = "ok", host = host, port = p, user = user, password = password }
end

-- postern.http.request with the headers in order. The core takes an
-- ordered list of { name, value } pairs; a core without that takes only a
-- name = value table (order lost, empty values dropped): fall back to it.
local ordered_headers = nil

local function http_get(conf, list)
  local req = { method = "GET", url = conf.url, timeout = conf.timeout, verify = conf.verify }
  if ordered_headers ~= false then
    req.headers = list
    local ok, res, err, code = pcall(postern.http.request, req)
    if ok then
      ordered_headers = true
      return res, err, code
    end
    if ordered_headers == true or not tostring(res):find("headers must be", 1, true) then
      error(res, 0)
    end
    ordered_headers = false
  end
  local map = { ["User-Agent"] = "", Accept = "" }   -- curl's own: not sent (nginx sends neither)
  for _, e in ipairs(list) do map[e[1]] = e[2] end
  req.headers = map
  return postern.http.request(req)
end

-- one round trip: the decision, or nil, message when the server could not be asked
function M.query(s, conf)
  local res, err = http_get(conf, M.request_headers(s, conf))
  if not res then return nil, err end
  return M.interpret(s, res.headers)
end

local function internal(s, conf, reason)
  postern.log("error", "auth http server ", conf.name, " ", reason)
  return nil, { temporary = true, close = true, code = s.protocol == "smtp" and "451 4.3.2" or nil }
end

local function extra_headers(headers)
  local out = {}
  if headers == nil then return out end
  assert(type(headers) == "table", "auth_http: headers must be a table")
  if headers[1] ~= nil then
    for i, e in ipairs(headers) do
      assert(type(e) == "table" and type(e[1]) == "string" and e[2] ~= nil,
        "auth_http: headers[" .. i .. "] must be { name, value }")
      out[#out + 1] = { e[1], tostring(e[2]) }
    end
  else
    local names = {}
    for k in pairs(headers) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do out[#out + 1] = { k, tostring(headers[k]) } end
  end
  for _, e in ipairs(out) do
    assert(e[1]:match("^[%w%-_]+$"), "auth_http: bad header name " .. ("%q"):format(e[1]))
    assert(not e[2]:find("[\r\n]"), "auth_http: header " .. e[1] .. " has CR or LF")
  end
  return out
end

function M.new(opts)
  opts = opts or {}
  local u, err = M.parse_url(opts.url)
  if not u then error("auth_http: " .. err, 2) end
  local conf = {
    url = u.url, host_header = u.host_header, name = u.name,
    timeout = opts.timeout or 60,
    pass_client_cert = opts.pass_client_cert and true or false,
    verify = opts.verify,
    extra_headers = extra_headers(opts.headers),
  }
  return function(s)
    while true do
      local d, qerr = M.query(s, conf)
      if not d then
        return internal(s, conf, qerr == "timeout" and "timed out" or ("failed: " .. tostring(qerr)))
      end
      if d.kind == "wait" then
        if d.wait > 0 then postern.sleep(d.wait) end
      elseif d.kind == "error" then
        return nil, { message = d.message, wait = d.wait > 0 and d.wait or nil, code = d.code,
          close = d.wait == 0 or nil }
      elseif d.kind == "internal" then
        return internal(s, conf, d.reason)
      else
        local host = d.host
        if not is_ip_literal(host) then
          local addrs, rerr = postern.dns.resolve(host)
          if not addrs or not addrs[1] then
            return internal(s, conf, ('sent server "%s" that does not resolve: %s'):format(host,
              tostring(rerr or "no address")))
          end
          host = addrs[1]
        end
        return { host = host, port = d.port, user = d.user, password = d.password }
      end
    end
  end
end

return M
