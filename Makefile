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

.PHONY: all build deps run test unit spec clean

all: build

deps:
	@scripts/install-deps

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null

build: $(BUILD)/Makefile
	@$(MAKE) --no-print-directory -C $(BUILD) -j$(JOBS)

run: deps build
	scripts/demo

unit: build
	cd $(BUILD) && ctest --output-on-failure

spec: build
	POSTERN_BIN=$(CURDIR)/$(BUILD)/postern $(BUSTED) $(BUSTED_ARGS)

test: build
	@cd $(BUILD) && ctest --output-on-failure
	@POSTERN_BIN=$(CURDIR)/$(BUILD)/postern $(BUSTED) $(BUSTED_ARGS)

clean:
	rm -rf build build-asan
