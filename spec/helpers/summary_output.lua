-- busted output handler: the usual terminal output, then one last line
-- "N passed, N failed, N skipped" (failed counts failures and errors) that
-- scripts and CI can grep.
return function(options)
  local busted = require "busted"
  local ok, term = pcall(require, "term")
  local isatty = ok and io.type(io.stdout) == "file" and term.isatty(io.stdout)
  local base = isatty and "busted.outputHandlers.utfTerminal"
    or "busted.outputHandlers.plainTerminal"
  local handler = require(base)(options)
  local subscribe = handler.subscribe

  handler.subscribe = function(self, opts)
    subscribe(self, opts)
    -- subscribed last, so it runs after the terminal handler's summary
    busted.subscribe({ "suite", "end" }, function()
      io.write(("%d passed, %d failed, %d skipped\n"):format(
        handler.successesCount, handler.failuresCount + handler.errorsCount,
        handler.pendingsCount))
      io.flush()
      return nil, true
    end)
  end

  return handler
end
