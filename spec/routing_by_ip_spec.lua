-- Routing by client address: a policy that looks at s.client_ip sends
-- clients from two source addresses to two different backends. The test
-- clients bind 127.0.0.2 and 127.0.0.3 (all of 127.0.0.0/8 is loopback).
local testing = require "postern.testing"

describe("a policy routing by client IP", function()
  local a, b, proxy

  setup(function()
    a = testing.mock_imap { name = "backend-a" }
    b = testing.mock_imap { name = "backend-b" }
    proxy = testing.start {
      policy_source = ([[
        local postern = require "postern"
        local routes = {
          ["127.0.0.2"] = { host = "127.0.0.1", port = %d },
          ["127.0.0.3"] = { host = "127.0.0.1", port = %d },
        }
        return {
          authenticate = function(s)
            postern.log("info", "routing by client_ip=", s.client_ip)
            local up = routes[s.client_ip]
            if up then return up end
            return nil, "No route for " .. s.client_ip
          end,
        }
      ]]):format(a.port, b.port),
    }
  end)

  teardown(function()
    if proxy then proxy:stop() end
    if a then a:stop() end
    if b then b:stop() end
  end)

  local function log_in_from(bind, user, pass)
    local c = testing.client { port = proxy.port, bind = bind }
    c:expect("^%* OK")
    local tagged = c:command("a1", ("LOGIN %s %s"):format(user, pass))
    return c, tagged
  end

  it("sends a client from 127.0.0.2 to backend-a", function()
    local c, tagged = log_in_from("127.0.0.2", "ann", "ann-pw")
    assert.matches("^a1 OK", tagged)
    a:wait_for("^AUTH ann ann%-pw login$")
    local _, untagged = c:command("a2", 'LIST "" *')
    local list = table.concat(untagged, "\n")
    assert.matches("backend%-a", list)
    assert.not_matches("backend%-b", list)
    for _, l in ipairs(b:logins()) do assert.not_equals("ann", l.user) end
    local line = proxy:wait_log('routing by client_ip=127%.0%.0%.2.*login: "ann"')
    assert.matches("client: 127%.0%.0%.2:%d+", line)
    c:close()
  end)

  it("sends a client from 127.0.0.3 to backend-b", function()
    local c, tagged = log_in_from("127.0.0.3", "ben", "ben-pw")
    assert.matches("^a1 OK", tagged)
    b:wait_for("^AUTH ben ben%-pw login$")
    local _, untagged = c:command("a2", 'LIST "" *')
    local list = table.concat(untagged, "\n")
    assert.matches("backend%-b", list)
    assert.not_matches("backend%-a", list)
    for _, l in ipairs(a:logins()) do assert.not_equals("ben", l.user) end
    proxy:wait_log('routing by client_ip=127%.0%.0%.3.*login: "ben"')
    c:close()
  end)

  it("gives s.client_ip as the client's own source address", function()
    local c, tagged = log_in_from("127.0.0.4", "cat", "cat-pw")
    assert.equals("a1 NO [AUTHENTICATIONFAILED] No route for 127.0.0.4", tagged)
    c:close()
  end)
end)
