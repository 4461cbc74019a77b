-- luacheck (Debian's lua-check) over lua/, scripts/ and spec/: `make lint`,
-- which `make test` runs before the busted specs. The defaults hold
-- (unused variables and arguments, shadowing, globals, 120 columns) except
-- where a comment below says why.
std = "luajit"
exclude_files = { "build/", "build-asan/", ".demo/" }

files["spec/"] = {
  -- busted's globals: describe, it, setup, teardown, finally, assert, spy, ...
  std = "+busted",
  -- a test's name states the behaviour in full, and expected protocol lines
  -- are quoted whole, so a spec line may run past 120 columns (not past 150)
  max_line_length = 150,
}
