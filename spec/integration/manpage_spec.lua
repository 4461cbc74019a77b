-- The man page docs/postern.8 (issue 15, item 4): it renders with man(1)
-- and groff without a warning, has its sections, and documents what
-- README.md documents. README.md is the source of truth, so the lists
-- checked here are read from it: the top-level keys from the first column
-- of the "Configuration reference" table, the signals and their `-s`
-- names from the "Command line" table, the tls keys from its `tls = {...}`
-- example. A key added to README's table without the page fails here.
-- Needs no binary: man-db and groff-base (scripts/install-deps).

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local root = here .. "/../.."
local page = root .. "/docs/postern.8"

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("*a")
  f:close()
  return text
end

-- run a shell command; returns its stdout and its stderr
local function run(cmd)
  local err_file = os.tmpname()
  local p = assert(io.popen(cmd .. " 2>" .. sh_quote(err_file)))
  local out = p:read("*a")
  p:close()
  local err = read(err_file)
  os.remove(err_file)
  return out, err
end

local function lines(text)
  local t = {}
  for l in (text .. "\n"):gmatch("([^\n]*)\n") do t[#t + 1] = l end
  return t
end

-- the lines of README.md's `## heading` section
local function readme_section(readme, heading)
  local out, inside = {}, false
  for _, l in ipairs(lines(readme)) do
    if l:match("^## ") then inside = (l == "## " .. heading) elseif inside then out[#out + 1] = l end
  end
  assert(#out > 0, "README.md has no section " .. heading)
  return out
end

-- the rows of the first markdown table in `section` whose header row
-- matches `header`: a list of rows, each a list of cells
local function table_rows(section, header)
  local rows, started = {}, false
  for _, l in ipairs(section) do
    if not started then
      started = l:match("^|") and l:match(header) ~= nil
    elseif l:match("^|") then
      if not l:match("^|%s*%-%-%-") then
        local cells = {}
        for cell in l:gsub("^|", ""):gmatch("([^|]*)|") do cells[#cells + 1] = cell end
        rows[#rows + 1] = cells
      end
    else
      break
    end
  end
  assert(#rows > 0, "no table with header " .. header)
  return rows
end

local function backticked(cell)
  local t = {}
  for name in cell:gmatch("`([^`]+)`") do t[#t + 1] = name end
  return t
end

-- the rendered page, split into its sections (NAME, SYNOPSIS, ...), each
-- a list of lines
local function sections_of(text)
  local secs, order, cur = {}, {}, nil
  for _, l in ipairs(lines(text)) do
    if l:match("^%u[%u ]+$") then
      cur = l
      secs[cur] = {}
      order[#order + 1] = cur
    elseif cur then
      table.insert(secs[cur], l)
    end
  end
  return secs, order
end

-- the names of a tag line of an indented list ("     user, group (none)",
-- "     auth    Mechanisms ..."), or nil when the line is body text
local function tag_names(line, indent)
  local head = line:match("^" .. indent .. "(%S.*)$")
  if not head then return nil end
  head = head:gsub("%s%s+.*$", ""):gsub("%s+%(.*%)$", "")
  local names = {}
  for item in (head .. ","):gmatch("%s*([^,]*),") do
    if not item:match("^[%l_][%w_]*$") then return nil end
    names[#names + 1] = item
  end
  return names
end

-- the tags of the list in lines[from..] at `indent`, up to a subsection
local function tags(sec_lines, indent, from)
  local found = {}
  for i = from or 1, #sec_lines do
    local l = sec_lines[i]
    if i > (from or 1) and l:match("^   %S") then break end
    for _, n in ipairs(tag_names(l, indent) or {}) do found[n] = true end
  end
  return found
end

local function subsection(sec_lines, title)
  for i, l in ipairs(sec_lines) do
    if l == "   " .. title then return i end
  end
  error("no subsection " .. title)
end

describe("postern(8)", function()
  local readme, text, secs, order

  setup(function()
    readme = read(root .. "/README.md")
    local err
    text, err = run(("LC_ALL=C MANWIDTH=80 man -P cat -l %s | col -bx"):format(sh_quote(page)))
    assert.equal("", err)
    secs, order = sections_of(text)
  end)

  it("renders with groff and man without a warning", function()
    local out, err = run("groff -mandoc -ww -z " .. sh_quote(page))
    assert.equal("", out .. err)
    assert.matches("^POSTERN%(8%)", text)
  end)

  it("has the sections of a manual page, in order", function()
    assert.same({ "NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SIGNALS", "CONFIGURATION", "FILES",
                  "EXIT STATUS", "EXAMPLES", "SEE ALSO", "STANDARDS" }, order)
    assert.matches("^%s+postern %-%- ", secs.NAME[1])
  end)

  it("shows every way to run postern in SYNOPSIS", function()
    local synopsis = table.concat(secs.SYNOPSIS, "\n")
    for _, form in ipairs { "postern [-c file]", "postern -t [-c file]", "postern -s signal [-c file]",
                            "postern -v", "postern init dir" } do
      assert.truthy(synopsis:find(form, 1, true), form)
    end
  end)

  it("documents each signal of README's command-line table with its -s name", function()
    local rows = table_rows(readme_section(readme, "Command line"), "^| signal |")
    local seen = 0
    for _, row in ipairs(rows) do
      local name = backticked(row[2])[1]
      assert.is_string(name, row[1])
      for _, sig in ipairs(backticked(row[1])) do
        local found = false
        for _, l in ipairs(secs.SIGNALS) do
          if l:match("^     SIG") and l:find("SIG" .. sig .. "%f[^%w]") and l:find("(-s " .. name .. ")", 1, true) then
            found = true
          end
        end
        assert.is_true(found, ("SIG%s (-s %s) in SIGNALS"):format(sig, name))
        seen = seen + 1
      end
    end
    assert.equal(6, seen) -- HUP QUIT TERM INT USR1 USR2
  end)

  it("documents every top-level key of README's configuration table, and no other", function()
    local rows = table_rows(readme_section(readme, "Configuration reference"), "^| key |")
    local keys = {}
    for _, row in ipairs(rows) do
      for _, k in ipairs(backticked(row[1])) do keys[#keys + 1] = k end
    end
    assert.is_true(#keys >= 20, "parsed only " .. #keys .. " keys from README.md")
    local documented = tags(secs.CONFIGURATION, "     ")
    for _, k in ipairs(keys) do
      assert.is_true(documented[k] == true, k .. " is in README's table but not in CONFIGURATION")
    end
    -- and the page invents none: `tls` is README's too, described below its table
    local in_readme = { tls = true }
    for _, k in ipairs(keys) do in_readme[k] = true end
    for k in pairs(documented) do
      assert.is_true(in_readme[k], k .. " is in CONFIGURATION but not in README's table")
    end
  end)

  it("documents the keys of README's tls table", function()
    local block = readme:match("\ntls = {\n(.-)\n},?\n")
    assert.is_string(block, "README.md's tls = { ... } example")
    local documented = tags(secs.CONFIGURATION, "     ", subsection(secs.CONFIGURATION, "The tls table"))
    local n = 0
    for _, l in ipairs(lines(block)) do
      for k in l:gsub("%-%-.*$", ""):gmatch("([%l_][%w_]*)%s*=") do
        assert.is_true(documented[k] == true, "tls." .. k .. " is not in 'The tls table'")
        n = n + 1
      end
    end
    assert.is_true(n >= 8)
  end)

  it("documents the listener keys", function()
    local documented = tags(secs.CONFIGURATION, "     ", subsection(secs.CONFIGURATION, "Listeners"))
    for _, k in ipairs { "address", "protocol", "auth", "capabilities", "xclient", "tls", "starttls",
                         "verify_client", "client_ca", "proxy_protocol", "proxy_protocol_trusted" } do
      assert.is_true(documented[k] == true, "listener key " .. k)
    end
  end)
end)
