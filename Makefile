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

.PHONY: all build module deps run test unit lint spec clean

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

clean:
	rm -rf build build-asan
