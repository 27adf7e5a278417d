# sbx — Makefile. `make` builds, `make test` runs every test against real
# services, `make run` starts a demo, `make asan` builds and tests with
# AddressSanitizer and UndefinedBehaviorSanitizer.
#
# Each part keeps its rules in its own fragment (producers/producers.mk,
# common/common.mk, worker/worker.mk, agent/agent.mk, tests/tests.mk); this
# file holds what they share. Objects go to $(BUILD)/obj, programs to
# $(BUILD)/bin.
#
# Include rule (ARCHITECTURE.md): producers/include is public to all;
# common/ sees only itself; worker/ and agent/ each see common/ and
# themselves, never each other. Each fragment sets its folder's -I flags.

BUILD    ?= build
CC       ?= cc
SANITIZE ?=
PKGS     := rdkafka hiredis libpq libcurl json-c libmicrohttpd libseccomp

WARN     := -Wall -Wextra -Werror -Wformat=2 -Wstrict-prototypes -Wno-format-nonliteral
CFLAGS   ?= -O2 -g
CFLAGS   += -std=c11 -D_GNU_SOURCE $(WARN) -Iproducers/include -MMD -MP
LDFLAGS  ?=
ifeq ($(SANITIZE),1)
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif
# Recursive on purpose: evaluated after $(DEPS_STAMP) has installed pkg-config files.
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   = $(shell pkg-config --libs $(PKGS)) -lm

# The version every program's --version prints and sbx_build_info reports:
# the VERSION file, plus the commit when built in a git checkout (a tarball
# or the Dockerfile's context has no .git: VERSION alone). The stamp is
# rewritten only when the text changes, so only producers/lib/version.o is
# rebuilt after a commit.
SBX_VERSION   := $(shell cat VERSION 2>/dev/null || echo 0.0.0)
SBX_GIT       := $(shell test -e .git && git describe --always --dirty 2>/dev/null)
VERSION_STAMP := $(BUILD)/gen/version.txt
$(shell mkdir -p $(BUILD)/gen && (echo '$(SBX_VERSION) $(SBX_GIT)' | cmp -s - $(VERSION_STAMP) || \
        echo '$(SBX_VERSION) $(SBX_GIT)' > $(VERSION_STAMP)))

DEPS_STAMP := $(BUILD)/.deps-ok
BINS       :=
TEST_BINS  :=

.PHONY: all deps test unit e2e run asan clean install check bench bench-sessions chaos
all: bins

$(DEPS_STAMP): docker/install-deps.sh
	@sh docker/install-deps.sh
	@mkdir -p $(dir $@) && touch $@
deps: $(DEPS_STAMP)

$(BUILD)/obj/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -c $< -o $@

include producers/producers.mk
include producers/clients.mk
include common/common.mk
include worker/worker.mk
include agent/agent.mk
include tests/tests.mk
include docker/images.mk

bins: $(BINS)

# The embedded Kafka of `make run` (librdkafka's mock cluster; never the tests').
$(BUILD)/bin/sbx-mockbroker: $(BUILD)/obj/tests/services/mockbroker.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

run: bins $(BUILD)/bin/sbx-mockbroker
	tests/services/demo.sh $(BUILD)

asan:
	$(MAKE) BUILD=build-asan SANITIZE=1 test

check: test

clean:
	rm -rf build build-asan

PREFIX ?= /usr/local
install: bins
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/sbx/migrations $(DESTDIR)$(PREFIX)/share/sbx/schemas
	install -m 755 $(BINS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 migrations/*.sql $(DESTDIR)$(PREFIX)/share/sbx/migrations/
	install -m 644 schemas/*.json $(DESTDIR)$(PREFIX)/share/sbx/schemas/
	install -d $(DESTDIR)$(PREFIX)/share/sbx/systemd
	install -m 644 docker/systemd/*.service docker/systemd/*.env.example $(DESTDIR)$(PREFIX)/share/sbx/systemd/

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
