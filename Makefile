# Thin wrapper over CMake and busted: `make run` and `make test` are the
# two commands a newcomer needs (see README.md).
BUILD ?= build
JOBS  ?= 2
ifeq ($(SANITIZE),1)
BUILD := build-asan
CMAKE_FLAGS += -DPOSTERN_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
export ASAN_OPTIONS ?= detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS ?= print_stacktrace=1
endif
BUSTED ?= busted --lua=luajit
LUACHECK ?= luacheck -q

.PHONY: all build module deps run test unit lint spec bench clean

all: build

deps:
	@scripts/install-deps

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null

build: $(BUILD)/Makefile
	@$(MAKE) --no-print-directory -C $(BUILD) -j$(JOBS)

# build/postern.so, what busted loads for `require "postern"` (policy unit
# tests): always the plain build, since the interpreter has no sanitizer.
module:
	@test -f build/Makefile || cmake -S . -B build >/dev/null
	@$(MAKE) --no-print-directory -C build -j$(JOBS) postern_lua

run: deps build
	scripts/demo

unit: build
	cd $(BUILD) && ctest --output-on-failure

# luacheck over the Lua code (configuration: .luacheckrc)
lint:
	@$(LUACHECK) lua scripts spec

spec: deps build module
	POSTERN_BIN=$(CURDIR)/$(BUILD)/postern $(BUSTED) $(BUSTED_ARGS)

# `make test` on a fresh machine installs what is missing first, as `make run` does
test: deps build module
	@cd $(BUILD) && ctest --output-on-failure
	@$(LUACHECK) lua scripts spec
	@POSTERN_BIN=$(CURDIR)/$(BUILD)/postern $(BUSTED) $(BUSTED_ARGS)

# The benchmark (bench/README.md, docs/performance.md): direct, nginx and
# postern in one bench/run.sh invocation, which prints one table. Takes about
# half an hour with the defaults; not part of `make test`. It needs
# `sudo bench/setup.sh` once (run here when make runs as root).
#   make bench BENCH_MODES="imap-login idle" REPS=1   (modes: space or comma separated)
# bench/run.sh's other knobs (LOGIN_N, TLS_N, PIN, ...) pass through the environment.
BENCH_TARGETS ?= direct,nginx,postern
comma := ,
bench: build
	@$(MAKE) --no-print-directory -s -C bench
	@if bench/setup.sh --check 2>/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then bench/setup.sh; \
	else bench/setup.sh --check || true; \
	  echo "make bench: run 'sudo bench/setup.sh' once (apt-installs nginx, libnginx-mod-mail, ...; idempotent), then make bench again" >&2; \
	  exit 1; fi
	POSTERN_BIN="$${POSTERN_BIN:-$(CURDIR)/$(BUILD)/postern}" bench/run.sh $(BENCH_TARGETS) $(subst $(comma), ,$(BENCH_MODES))

clean:
	rm -rf build build-asan
