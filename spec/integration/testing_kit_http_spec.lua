-- The test kit's mock HTTP server (testing.mock_http, lua/postern/testing/mock_http.lua):
-- a separate process that records every request exactly as received and
-- answers from options, a list of answers, or a handler given as Lua source.
-- These specs talk to it with a raw line client, so they see the bytes.
local testing = require "postern.testing"

-- one HTTP/1.1 answer: status line, headers (ordered), body
local function read_answer(c)
  local status = c:line()
  local headers, h = {}, {}
  while true do
    local l = c:line()
    if l == "" then break end
    local name, value = l:match("^([^:]+):%s*(.-)%s*$")
    headers[#headers + 1] = { name, value }
    h[name:lower()] = value
  end
  local body = c:read_bytes(tonumber(h["content-length"] or 0))
  return { status = tonumber(status:match("^HTTP/1%.%d (%d+)")), status_line = status, headers = headers, h = h,
    body = body }
end

local function get(c, path, extra)
  c:send("GET " .. path .. " HTTP/1.1\r\nHost: t\r\n" .. (extra or "") .. "\r\n")
  return read_answer(c)
end

describe("testing.mock_http", function()
  it("records the method, path, every header in order as received, and the body; answers 200 with Content-Length", function()
    local m = testing.mock_http {}
    finally(function() m:stop() end)
    local c = testing.client { port = m.port }
    c:send("POST /a/b?x=1 HTTP/1.1\r\nHost: t\r\nX-B: 2\r\nx-a:  one two \r\nContent-Length: 7\r\n\r\nab\r\ncd\1")
    local a = read_answer(c)
    c:close()
    assert.equals(200, a.status)
    assert.equals("0", a.h["content-length"])
    local r = m:wait_requests(1)[1]
    assert.equals("POST", r.method)
    assert.equals("/a/b?x=1", r.path)
    assert.equals("HTTP/1.1", r.version)
    assert.same({ { "Host", "t" }, { "X-B", "2" }, { "x-a", "one two" }, { "Content-Length", "7" } }, r.headers)
    assert.same({ "Host: t", "X-B: 2", "x-a:  one two ", "Content-Length: 7" }, r.lines)
    assert.equals("one two", r.h["x-a"])
    assert.equals("ab\r\ncd\1", r.body)
    assert.equals(200, r.status)
  end)

  it("answers with the options' status, headers (in order) and body", function()
    local m = testing.mock_http { status = 401, headers = { { "Auth-Status", "No" }, { "Auth-Wait", "3" } }, body = "nope" }
    finally(function() m:stop() end)
    local c = testing.client { port = m.port }
    local a = get(c, "/")
    c:close()
    assert.equals("HTTP/1.1 401 Unauthorized", a.status_line)
    assert.same({ "Auth-Status", "No" }, a.headers[1])
    assert.same({ "Auth-Wait", "3" }, a.headers[2])
    assert.equals("nope", a.body)
  end)

  it("gives the n-th request responses[n], then repeats the last one", function()
    local m = testing.mock_http { responses = { { status = 500 }, { status = 200, body = "ok" } } }
    finally(function() m:stop() end)
    local c = testing.client { port = m.port }
    assert.equals(500, get(c, "/1").status)
    assert.equals("ok", get(c, "/2").body)
    assert.equals("ok", get(c, "/3").body)
    c:close()
  end)

  it("computes the answer with the handler from the request, keeping state between requests", function()
    local m = testing.mock_http { handler = [[
      local n = 0
      return function(req)
        n = n + 1
        return { headers = { { "X-User", req.h["auth-user"] or "-" }, { "X-N", tostring(n) } }, body = req.path }
      end
    ]] }
    finally(function() m:stop() end)
    local c = testing.client { port = m.port }
    local a = get(c, "/p", "Auth-User: alice\r\n")
    assert.equals("alice", a.h["x-user"])
    assert.equals("1", a.h["x-n"])
    assert.equals("/p", a.body)
    assert.equals("2", get(c, "/q").h["x-n"])
    c:close()
  end)

  it("answers 500 when the handler throws, and says why in its log", function()
    local m = testing.mock_http { handler = [[ return function(req) error("boom") end ]] }
    finally(function() m:stop() end)
    local c = testing.client { port = m.port }
    assert.equals(500, get(c, "/").status)
    c:close()
    assert.matches("boom", m:log())
  end)

  it("keeps HTTP/1.1 connections open (one CONNECT for many requests) and closes HTTP/1.0 ones", function()
    local m = testing.mock_http {}
    finally(function() m:stop() end)
    local c = testing.client { port = m.port }
    get(c, "/1")
    get(c, "/2")
    assert.is_false(c:closed(0.2))
    c:close()
    local c10 = testing.client { port = m.port }
    c10:send("GET / HTTP/1.0\r\nHost: t\r\n\r\n")
    local a = read_answer(c10)
    assert.equals("close", a.h["connection"])
    assert.is_true(c10:closed(2))
    local reqs = m:wait_requests(3)
    assert.equals(reqs[1].conn, reqs[2].conn)
    assert.not_equals(reqs[2].conn, reqs[3].conn)
    assert.equals(2, m:connections())
  end)

  it("waits `delay` seconds before answering", function()
    local m = testing.mock_http { responses = { { delay = 0.5, body = "late" } } }
    finally(function() m:stop() end)
    local c = testing.client { port = m.port }
    local t0 = testing.now()
    assert.equals("late", get(c, "/").body)
    assert.is_true(testing.now() - t0 >= 0.45)
    c:close()
  end)

  it("with close, drops the connection without answering (recorded as DROP)", function()
    local m = testing.mock_http { close = true }
    finally(function() m:stop() end)
    local c = testing.client { port = m.port }
    c:send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert.is_true(c:closed(2))
    assert.equals("", c.buf)
    m:wait_for("^DROP 1$")
    assert.is_true(m:requests()[1].dropped)
  end)

  it("reads chunked request bodies", function()
    local m = testing.mock_http {}
    finally(function() m:stop() end)
    local c = testing.client { port = m.port }
    c:send("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert.equals(200, read_answer(c).status)
    c:close()
    assert.equals("abcde", m:wait_requests(1)[1].body)
  end)

  it("gives a ready URL", function()
    local m = testing.mock_http {}
    finally(function() m:stop() end)
    assert.equals("http://127.0.0.1:" .. m.port .. "/auth", m:url())
    assert.equals("http://127.0.0.1:" .. m.port .. "/x", m:url("/x"))
  end)
end)
