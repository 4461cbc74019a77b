--- postern.testing: test your policy with busted against the real postern
--- binary and scripted mock backends.
--
-- Run specs from the repo root with:
--   busted spec/my_policy_spec.lua        (.busted sets lua = "luajit" and lpath)
-- or without .busted (busted --lua=... re-executes itself through sh and would
-- split an unquoted ';' lpath):
--   luajit /usr/bin/busted --ignore-lua --lpath='lua/?.lua;lua/?/init.lua;spec/?.lua' spec/my_policy_spec.lua
--
-- A complete spec (spec/my_policy_spec.lua):
--
--   local testing = require "postern.testing"
--
--   describe("my policy", function()
--     local a, b, proxy
--
--     setup(function()
--       a = testing.mock_imap { name = "backend-a", users = { alice = "secret" } }
--       b = testing.mock_imap { name = "backend-b" }
--       proxy = testing.start {
--         policy_source = ([[
--           return {
--             authenticate = function(s)
--               if s.user == "alice" and s.password == "secret" then
--                 return { host = "127.0.0.1", port = %d }
--               end
--               if s.client_ip == "127.0.0.2" then
--                 return { host = "127.0.0.1", port = %d }
--               end
--               return nil, "Invalid login or password"
--             end,
--           }
--         ]]):format(a.port, b.port),
--         config = { timeout = 5 },
--       }
--     end)
--
--     teardown(function()
--       if proxy then proxy:stop() end   -- errors on [alert]/[crit]/sanitizer reports
--       if a then a:stop() end
--       if b then b:stop() end
--     end)
--
--     it("routes alice to backend-a", function()
--       local c = testing.client { port = proxy.port }
--       c:expect("^%* OK")
--       local tagged = c:command("a1", "LOGIN alice secret")
--       assert.matches("^a1 OK", tagged)
--       local _, untagged = c:command("a2", "LIST \"\" *")
--       assert.matches("backend%-a", table.concat(untagged, "\n"))
--       a:wait_for("^AUTH alice secret")      -- what the proxy sent upstream
--       assert.equals("alice", a:logins()[1].user)
--       c:command("a3", "LOGOUT")
--       assert.is_true(c:closed(2))
--     end)
--
--     it("refuses a bad password", function()
--       local c = testing.client { port = proxy.port }
--       c:expect("^%* OK")
--       assert.matches("^a1 NO", (c:command("a1", "LOGIN alice wrong")))
--       c:close()
--     end)
--
--     it("routes by client address", function()
--       local c = testing.client { port = proxy.port, bind = "127.0.0.2" }
--       c:expect("^%* OK")
--       assert.matches("^a1 OK", (c:command("a1", "LOGIN bob x")))
--       c:close()
--       b:wait_for("^AUTH bob x")
--     end)
--   end)
--
-- API
--   testing.root, testing.bin, testing.luajit
--   testing.free_port() -> port
--   testing.sleep(sec), testing.now()
--   testing.serialize(value) -> Lua source text;  testing.write_config(path, table)
--   testing.mock_imap(opts) -> mock   (options: see lua/postern/testing/mock_imap.lua)
--   testing.mock_pop3(opts) -> mock   (options: see lua/postern/testing/mock_pop3.lua)
--   testing.mock_smtp(opts) -> mock   (options: see lua/postern/testing/mock_smtp.lua)
--   testing.mock_sieve(opts) -> mock  (options: see lua/postern/testing/mock_sieve.lua)
--     mock.port, mock.host, mock.record_path, mock.log_path
--     mock:lines() mock:wait_for(pattern, timeout=3) mock:logins() mock:log() mock:stop()
--     mock:messages()  SMTP: messages received by DATA, { {bytes=, lines=, subject=}, ... }
--   testing.mock_http(opts) -> mock   an HTTP/1.1 server (keep-alive) that records every
--                                     request and answers by a script (options: see
--                                     lua/postern/testing/mock_http.lua): opts.status, headers, body,
--                                     delay, close, responses = { answer, ... },
--                                     handler = [[ return function(req) return answer end ]]
--     mock:url(path="/auth") -> "http://127.0.0.1:<port>/auth"
--     mock:requests() -> { { n, conn, method, path, version, headers = { {name, value}, ... }
--                          (in the order received), h = { [lower-case name] = value },
--                          lines = { raw header lines }, body, status (of the answer) }, ... }
--     mock:wait_requests(n, timeout=3) -> requests, once at least n have arrived
--     mock:connections() -> number of TCP connections accepted (keep-alive reuse shows here)
--   testing.start(opts) -> proxy      opts: policy | policy_source, config, env
--                                     (one worker unless config.workers says otherwise)
--     proxy.port, proxy.ports, proxy.dir, proxy.log_path, proxy.conf_path, proxy.pid
--     proxy:log() proxy:wait_log(pattern, timeout=3) proxy:signal("HUP")
--     proxy:alive() proxy:stop() -> exit status
--     proxy:workers() -> the worker processes' pids (proxy.pid is the master's)
--   testing.check_config(table_or_path) -> ok, output
--   testing.client{ port, host, bind, timeout } -> client
--     c:send(data) c:line(timeout) c:expect(pattern, timeout) c:command(tag, text, timeout)
--     c:read_bytes(n, timeout) c:closed(timeout) c:close()
--     c:response(timeout)  one line plus the literals it announces ({n} at line end);
--                          c:command uses it, so a FETCH's untagged entry is
--                          '* 1 FETCH (BODY[] {n}\r\n<n bytes>)'
--     c:pop3(cmd, timeout)       sends cmd.."\r\n" (unless cmd is nil), returns the status line
--     c:pop3_multi(cmd, timeout) -> status, lines: the multi-line body after +OK, dot-unstuffed,
--                          without the final "." (nil after -ERR); linear in the body size
--     c:smtp(cmd, timeout) -> code, texts, last: sends cmd (unless nil), reads one reply,
--                          "250-a" / "250 b" gives 250, { "a", "b" }, "250 b"
--
-- POP3 (a listener with protocol = "pop3" in config.listen):
--
--   local m = testing.mock_pop3 { name = "pop-a", users = { alice = "secret" }, apop = true }
--   local c = testing.client { port = proxy.port }     -- or m.port to talk to the mock
--   assert.matches("^%+OK", c:pop3())                  -- the greeting
--   assert.matches("^%+OK", c:pop3("USER alice"))
--   assert.matches("^%+OK", c:pop3("PASS secret"))
--   local status, lines = c:pop3_multi("RETR 1")
--   assert.matches("pop3%-body from pop%-a", table.concat(lines, "\n"))
--   c:pop3("QUIT"); assert.is_true(c:closed(2))
--   m:wait_for("^AUTH alice secret user$")             -- what the proxy sent upstream
--   -- APOP against the mock: local ts = greeting:match("<.->")
--   --   c:pop3("APOP alice " .. require("postern.md5").hex(ts .. "secret"))
--
-- SMTP (protocol = "smtp"):
--
--   local m = testing.mock_smtp { name = "mx-a", users = { alice = "secret" }, xclient = true }
--   local c = testing.client { port = proxy.port }
--   assert.equals(220, (c:smtp()))                     -- the greeting
--   local code, kw = c:smtp("EHLO client.example")     -- kw[1] is the server name
--   assert.equals(235, (c:smtp("AUTH PLAIN " .. require("mime").b64("\0alice\0secret"))))
--   c:send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")   -- pipelined
--   assert.equals(250, (c:smtp())); assert.equals(250, (c:smtp())); assert.equals(354, (c:smtp()))
--   assert.equals(250, (c:smtp("Subject: hi\r\n\r\nbody\r\n.")))
--   assert.equals("hi", m:messages()[1].subject)
--   m:wait_for("^XCLIENT ADDR=127%.0%.0%.1")           -- when the policy asks for xclient
--   c:smtp("QUIT"); assert.is_true(c:closed(2))
--
-- Leftovers: a mock or proxy that is garbage-collected (or still running
-- when busted closes its Lua state) gets SIGTERM; always stop() in teardown.
--
-- Mock record lines (mock:lines()): "CONNECT <id> <ip> <port>", "<id> <command as
-- received>", "AUTH <user> <password> <mechanism>", "CLOSE <id>"; POP3 mechanisms
-- user|apop|plain|login|xoauth2|oauthbearer (apop: the digest in the password
-- field); SMTP also "XCLIENT <raw args>" and "MESSAGE <bytes> <lines> <subject>".
--
-- Where things are: this file assembles the kit from lua/postern/testing/:
--   env.lua        root, bin, luajit (testing.root/bin/luajit read and write it)
--   util.lua       files, shell quoting, temporary directories, polling, ports
--   process.lua    background processes: spawn, alive, kill, the GC guard
--   serialize.lua  serialize, write_config
--   proxy.lua      testing.start and testing.check_config: the real binary
--   mock.lua       the handle on a mock process (lines, wait_for, stop, ...)
--   client.lua     testing.client: the line client, with the protocol methods
--                  of client_imap.lua, client_pop3.lua and client_smtp.lua
--   mock_server.lua  the event loop the mocks share
--   mock_imap.lua, mock_pop3.lua, mock_smtp.lua, mock_sieve.lua, mock_http.lua: the mocks,
--                  modules with run(opts), each started as a process of its
--                  own by run_mock.lua (requiring one starts nothing)
--
-- Signals: processes are started in the background by /bin/sh, which makes
-- them ignore SIGINT and SIGQUIT unless they install their own handlers.

local util = require "postern.testing.util"
local env = require "postern.testing.env"
local process = require "postern.testing.process"
local serialize = require "postern.testing.serialize"
local proxy = require "postern.testing.proxy"
local mock = require "postern.testing.mock"
local client = require "postern.testing.client"

local testing = {}

-- testing.root, testing.bin and testing.luajit are the fields of env, so a
-- spec that sets testing.bin changes the binary the next start() runs
local ENV_KEYS = { root = true, bin = true, luajit = true }
setmetatable(testing, {
  __index = function(_, k) if ENV_KEYS[k] then return env[k] end end,
  __newindex = function(t, k, v)
    if ENV_KEYS[k] then env[k] = v else rawset(t, k, v) end
  end,
})

testing.sleep = util.sleep
testing.now = util.now
testing.free_port = util.free_port
testing.alive = process.alive
testing.serialize = serialize.serialize
testing.write_config = serialize.write_config

testing.start = proxy.start
testing.check_config = proxy.check_config

testing.client = client.new

-- (not tail calls: an error names the spec's line that started the mock)
function testing.mock_imap(opts) local m = mock.start("mock_imap", opts); return m end
function testing.mock_pop3(opts) local m = mock.start("mock_pop3", opts); return m end
function testing.mock_smtp(opts) local m = mock.start("mock_smtp", opts); return m end
function testing.mock_http(opts) local m = mock.start("mock_http", opts); return m end
function testing.mock_sieve(opts) local m = mock.start("mock_sieve", opts); return m end

return testing
