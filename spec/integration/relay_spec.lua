-- The relay (issue item 5, second half): after the upstream login postern
-- passes bytes both ways unchanged, with fixed buffers (a client that reads
-- slowly pauses the upstream instead of making postern buffer), closes an
-- idle session after proxy_timeout, and ends the session when either side
-- closes.
--
-- The mock backend's extra commands do the heavy lifting:
--   XECHO <n>      answers `* XECHO {n}` and n bytes of "x"
--   XSINK {n}      reads an n-byte literal, answers `tag OK received n`
local testing = require "postern.testing"
local scene = require "helpers.scene"

-- log in as alice; returns the tagged reply
local function login(c)
  local tagged = c:command("a1", "LOGIN alice secret")
  assert.matches("^a1 OK ", tagged)
  return tagged
end

-- read the `* XECHO {n}` answer to `tag XECHO n` without keeping the n
-- bytes: returns the number of bytes read and whether they were all "x"
local function read_xecho(c, tag, n, timeout)
  assert.equal("* XECHO {" .. n .. "}", c:line(timeout))
  local deadline = testing.now() + timeout
  local got, all_x = 0, true
  local function take(data)
    local need = n - got
    if #data > need then
      c.buf = data:sub(need + 1) .. c.buf
      data = data:sub(1, need)
    end
    if data:find("[^x]") then all_x = false end
    got = got + #data
  end
  local pending = c.buf
  c.buf = ""
  take(pending)
  while got < n do
    local data, err = c:_recv(deadline)
    if not data then
      error(("%s after %d of %d bytes"):format(tostring(err), got, n), 2)
    end
    take(data)
  end
  assert.equal("", c:line(timeout))
  assert.equal(tag .. " OK XECHO completed", c:line(timeout))
  return got, all_x
end

describe("relay", function()
  describe("with default timeouts", function()
    local m, p

    setup(function()
      m = testing.mock_imap { name = "backend" }
      p = testing.start {
        policy_source = scene.policy_source { ["*"] = scene.route(m) },
        config = { timeout = 5 },
      }
    end)

    teardown(function()
      local ok, err = pcall(function() if p then p:stop() end end)
      if m then m:stop() end
      assert(ok, err)
    end)

    local function client()
      local c = testing.client { port = p.port, timeout = 10 }
      c:expect("^%* OK ")
      return c
    end

    it("passes a 2 MB download from the upstream complete and exact", function()
      local c = client()
      finally(function() c:close() end)
      login(c)
      local tagged, untagged = c:command("a2", "XECHO 2000000", 30)
      assert.equal("a2 OK XECHO completed", tagged)
      assert.equal(1, #untagged)
      local expected = "* XECHO {2000000}\r\n" .. string.rep("x", 2000000)
      assert.equal(#expected, #untagged[1])
      assert.is_true(untagged[1] == expected, "the download was altered")
    end)

    it("passes a 1 MB upload (a synchronizing literal) to the upstream", function()
      local c = client()
      finally(function() c:close() end)
      login(c)
      c:send("a3 XSINK {1000000}\r\n")
      assert.matches("^%+", c:line())
      c:send(string.rep("y", 1000000) .. "\r\n")
      assert.equal("a3 OK received 1000000", c:line(30))
      m:wait_for("^%d+ a3 XSINK {1000000}<1000000 bytes>$")
    end)

    it("passes every byte value unaltered to the upstream", function()
      local c = client()
      finally(function() c:close() end)
      login(c)
      local bytes = {}
      for i = 0, 59999 do bytes[#bytes + 1] = string.char(i % 256) end
      local data = table.concat(bytes)
      c:send("a4 XSINK {60000+}\r\n" .. data .. "\r\n")
      assert.equal("a4 OK received 60000", c:line(10))
      local shown = data:gsub("\r", "\\r"):gsub("\n", "\\n")
      local want = "a4 XSINK {60000+}" .. shown
      local found
      for _, cmd in ipairs(scene.commands(m)) do
        if cmd:sub(1, 8) == "a4 XSINK" then found = cmd end
      end
      assert.is_true(found == want, "the upload was altered")
    end)

    it("does not buffer a download without bound while the client does not read, and serves other clients meanwhile",
      function()
        local c = client()
        finally(function() c:close() end)
        login(c)
        local rss0 = assert(scene.rss_kib(p.pid))
        c:send("a2 XECHO 50000000\r\n")
        local peak = rss0
        local t_end = testing.now() + 3
        local other_ok = false
        while testing.now() < t_end do
          testing.sleep(0.25)
          local rss = scene.rss_kib(p.pid)
          if not rss then error("postern is gone; log:\n" .. p:log()) end
          peak = math.max(peak, rss)
          if not other_ok then
            -- another session logs in and gets answers while this one is stalled
            local o = client()
            login(o)
            other_ok = o:command("b2", "NOOP", 3) == "b2 OK NOOP completed"
            o:close()
          end
        end
        assert.is_true(other_ok, "another session was held up")
        assert.is_true(peak - rss0 < 10 * 1024,
          ("postern's resident memory grew by %d KiB while the client did not read"):format(peak - rss0))
        -- the client reads it all, unaltered
        local t0 = testing.now()
        local got, all_x = read_xecho(c, "a2", 50000000, 60)
        assert.equal(50000000, got)
        assert.is_true(all_x, "the download was altered")
        assert.is_true(testing.now() - t0 < 60)
        -- and the session is still in step
        assert.equal("a5 OK NOOP completed", (c:command("a5", "NOOP")))
      end)

    it("ends the session and the upstream connection when the client goes away in the middle of a download",
      function()
        local before = #scene.records(m, "CLOSE")
        local c = client()
        login(c)
        c:send("a2 XECHO 50000000\r\n")
        assert.equal("* XECHO {50000000}", c:line())
        c:close()
        local deadline = testing.now() + 5
        while #scene.records(m, "CLOSE") <= before and testing.now() < deadline do testing.sleep(0.05) end
        assert.is_true(#scene.records(m, "CLOSE") > before, "the upstream connection stayed open")
        assert.is_true(p:alive())
      end)

    it("shows the upstream's BYE and tagged OK to the client, then the end of the connection, on LOGOUT", function()
      local c = client()
      finally(function() c:close() end)
      login(c)
      local tagged, untagged = c:command("a9", "LOGOUT")
      assert.same({ "* BYE backend logging out" }, untagged)
      assert.equal("a9 OK LOGOUT completed", tagged)
      assert.is_true(c:closed(3), "the client connection stayed open")
    end)

    it("closes the upstream connection when the client closes, and logs the bytes relayed each way", function()
      local before = #scene.records(m, "CLOSE")
      local c = client()
      login(c)
      local tagged, untagged = c:command("a2", 'LIST "" *')
      assert.equal("a2 OK LIST completed", tagged)
      assert.equal(2, #untagged)
      local port = select(2, c.sock:getsockname())
      c:close()
      local line = p:wait_log("session closed %(.-%).*client: 127%.0%.0%.1:" .. port .. ",", 3)
      local bytes_in, bytes_out = line:match("(%d+) bytes from client, (%d+) bytes to client")
      bytes_in, bytes_out = tonumber(bytes_in), tonumber(bytes_out)
      -- a2 LIST "" *\r\n is 14 bytes; the two LIST lines and the OK are 80
      assert.is_true(bytes_in >= 14 and bytes_in < 200, "bytes_in = " .. tostring(bytes_in))
      assert.is_true(bytes_out >= 80 and bytes_out < 300, "bytes_out = " .. tostring(bytes_out))
      local deadline = testing.now() + 3
      while #scene.records(m, "CLOSE") <= before and testing.now() < deadline do testing.sleep(0.05) end
      assert.is_true(#scene.records(m, "CLOSE") > before, "the mock saw no CLOSE")
    end)
  end)

  describe("with an upstream that stops reading", function()
    it("stops reading the client instead of buffering an upload without bound, and delivers it all later", function()
      local sc = scene.new(finally)
      local up = sc:raw_upstream()
      local p = sc:proxy { ["*"] = sc.route(up.port) }
      local c = sc:client(p)
      c:send("a1 LOGIN alice secret\r\n")
      up:accept()
      up:send("* OK [CAPABILITY IMAP4rev1] hi\r\n")
      assert.equal('a1 LOGIN "alice" "secret"', up:line())
      up:send("a1 OK Logged in\r\n")
      assert.equal("a1 OK Logged in", c:line())

      local rss0 = assert(scene.rss_kib(p.pid))
      local chunk = string.rep("z", 65536)
      local cap = 64 * 1024 * 1024
      local sent, stalled_since = 0, nil
      c.sock:settimeout(0)
      while sent < cap do
        local last, err, partial = c.sock:send(chunk)
        local n = last or partial or 0
        sent = sent + n
        if n < #chunk then
          assert.equal("timeout", err)
          -- keep the stream whole: push the rest of this chunk later
          chunk = chunk:sub(n + 1) .. string.rep("z", n)
          stalled_since = stalled_since or testing.now()
          if testing.now() - stalled_since > 0.5 then break end
          testing.sleep(0.05)
        else
          stalled_since = nil
        end
      end
      assert.is_true(sent < cap, "the client could push " .. sent .. " bytes into a non-reading upstream")
      testing.sleep(0.3)
      local rss1 = assert(scene.rss_kib(p.pid))
      assert.is_true(rss1 - rss0 < 10 * 1024,
        ("postern's resident memory grew by %d KiB while the upstream did not read"):format(rss1 - rss0))

      -- now the upstream reads: every byte the client sent arrives, unaltered
      local got, all_z = 0, true
      local deadline = testing.now() + 30
      up.s:settimeout(0.5)
      while got < sent and testing.now() < deadline do
        local data, err, part = up.s:receive(65536)
        data = data or part
        if data and #data > 0 then
          got = got + #data
          if data:find("[^z]") then all_z = false end
        elseif err == "closed" then
          break
        end
      end
      assert.equal(sent, got)
      assert.is_true(all_z, "the upload was altered")
    end)
  end)

  describe("with proxy_timeout = 1", function()
    it("closes a relayed session that stays idle for proxy_timeout", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend" }
      local p = sc:proxy({ ["*"] = sc.route(m) }, { proxy_timeout = 1, timeout = 5 })
      local c = sc:client(p)
      login(c)
      local t0 = testing.now()
      assert.is_true(c:closed(4), "the idle session was not closed")
      local elapsed = testing.now() - t0
      assert.is_true(elapsed >= 0.8, ("closed after %.2f s"):format(elapsed))
      assert.is_true(elapsed < 2.5, ("closed after %.2f s"):format(elapsed))
      p:wait_log("proxy timed out")
      m:wait_for("^CLOSE ")
    end)

    it("keeps a relayed session with traffic every 0.5 s open past proxy_timeout", function()
      local sc = scene.new(finally)
      local m = sc:mock { name = "backend" }
      local p = sc:proxy({ ["*"] = sc.route(m) }, { proxy_timeout = 1, timeout = 5 })
      local c = sc:client(p)
      login(c)
      local t_end = testing.now() + 3
      local n = 0
      while testing.now() < t_end do
        testing.sleep(0.5)
        n = n + 1
        assert.equal("n" .. n .. " OK NOOP completed", (c:command("n" .. n, "NOOP")))
      end
      assert.is_true(n >= 5)
      assert.is_nil(p:log():find("proxy timed out", 1, true))
      assert.same({}, scene.records(m, "CLOSE"))
    end)
  end)
end)
