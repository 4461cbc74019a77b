-- postern.testing.util: the small helpers the kit's modules share (files,
-- shell quoting, temporary directories, polling, free ports, time).
local socket = require "socket"

local util = {}

function util.sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- run cmd through the shell, return what it printed on stdout
function util.capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  return out
end

function util.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function util.write_file(path, content)
  local f = assert(io.open(path, "wb"))
  assert(f:write(content))
  assert(f:close())
end

function util.trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

function util.absolute(path)
  if path:sub(1, 1) == "/" then return path end
  return util.trim(util.capture("pwd")) .. "/" .. path:gsub("^%./", "")
end

function util.mktemp_dir(prefix)
  local d = util.trim(util.capture("mktemp -d /tmp/" .. prefix .. ".XXXXXX"))
  assert(d ~= "", "mktemp failed")
  return d
end

-- removes only the kit's own temporary directories
function util.rm_rf(dir)
  if dir and dir:match("^/tmp/postern") then os.execute("rm -rf " .. util.sh_quote(dir)) end
end

function util.lines_of(s)
  local out = {}
  for l in (s or ""):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

-- a string for an error message: quoted, cut at 200 bytes
function util.show(s)
  if #s > 200 then s = s:sub(1, 200) .. "..." end
  return ("%q"):format(s)
end

function util.sleep(sec) socket.sleep(sec) end
function util.now() return socket.gettime() end

-- call fn until it returns non-nil (false aborts at once) or timeout (-> nil)
function util.poll(timeout, fn)
  local deadline = socket.gettime() + timeout
  while true do
    local r = fn()
    if r ~= nil then return r end
    if socket.gettime() >= deadline then return nil end
    socket.sleep(0.02)
  end
end

-- The kernel may hand the same ephemeral port to two bind(0) calls in a row once
-- the first socket is closed, so remember what was handed out: two listeners of
-- one spec must never be given the same port.
local handed_ports = {}
function util.free_port()
  for _ = 1, 100 do
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    port = tonumber(port)
    if not handed_ports[port] then
      handed_ports[port] = true
      return port
    end
  end
  error("no free port found that was not handed out already")
end

return util
