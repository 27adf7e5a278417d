# tests/fuzz/fuzz.mk — libFuzzer targets for the code that reads untrusted
# bytes (see tests/fuzz/README.md):
#   make fuzz-smoke   every target for FUZZ_SMOKE_SECONDS (CI; replays
#                     tests/fuzz/regressions/ first; non-zero on any finding)
#   make fuzz FUZZ_SECONDS=600   the same, longer, on demand
#   make fuzz-merge   shrink the grown corpora to the same coverage
#   make fuzz-build   only build them
# Built with clang (Debian's clang 14 ships libFuzzer in libclang-rt-14-dev)
# and ASan + UBSan, from the project's .c files directly: gcc objects from
# $(BUILD)/obj carry neither coverage nor the sanitizers.
FUZZ_CC            ?= clang
FUZZ_SECONDS       ?= 600
FUZZ_SMOKE_SECONDS ?= 25
FUZZ_TARGETS       := job text offsets agent docker_logs runlog
FUZZ_DIR           := $(BUILD)/fuzz
FUZZ_BINS          := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)

FUZZ_CFLAGS := -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
               -fno-sanitize-recover=all -std=c11 -D_GNU_SOURCE $(WARN) \
               -Iproducers/include -Icommon -Iworker -Itests/fuzz $(shell pkg-config --cflags json-c)
FUZZ_LIBS   := $(shell pkg-config --libs json-c) -lm
# Project files whose allocations the targets make fail (tests/fuzz/alloc.h).
FUZZ_ALLOC_REDIRECT := -Dmalloc=fuzz_malloc -Dcalloc=fuzz_calloc -Drealloc=fuzz_realloc

fuzzobj = $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(1))
FUZZ_COMMON := $(call fuzzobj,tests/fuzz/ref.c tests/fuzz/alloc.c)

$(call fuzzobj,producers/lib/message.c): FUZZ_EXTRA := $(FUZZ_ALLOC_REDIRECT)

$(FUZZ_DIR)/obj/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_EXTRA) -MMD -MP -c $< -o $@

$(FUZZ_DIR)/fuzz_job: $(call fuzzobj,tests/fuzz/fuzz_job.c producers/lib/message.c producers/lib/utf8.c) \
                      $(FUZZ_COMMON)
$(FUZZ_DIR)/fuzz_text: $(call fuzzobj,tests/fuzz/fuzz_text.c common/text.c common/buf.c producers/lib/message.c \
                                      producers/lib/utf8.c) $(FUZZ_COMMON)
# offsets.c asserts that each ref is marked once; this model also feeds it
# forged and repeated refs, which must answer -1. So offsets.c, and the log
# its check goes through, are built as in release (NDEBUG: the check logs and
# answers -1) in a directory of their own.
FUZZ_NDEBUG_OBJS := $(FUZZ_DIR)/obj/ndebug/worker/offsets.o $(FUZZ_DIR)/obj/ndebug/common/log.o
$(FUZZ_DIR)/obj/ndebug/worker/offsets.o: FUZZ_EXTRA := $(FUZZ_ALLOC_REDIRECT)
$(FUZZ_DIR)/obj/ndebug/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -DNDEBUG $(FUZZ_EXTRA) -MMD -MP -c $< -o $@
$(FUZZ_DIR)/fuzz_offsets: $(call fuzzobj,tests/fuzz/fuzz_offsets.c) $(FUZZ_NDEBUG_OBJS) $(FUZZ_COMMON)
$(FUZZ_DIR)/fuzz_docker_logs: $(call fuzzobj,tests/fuzz/fuzz_docker_logs.c worker/docker_logs.c) $(FUZZ_COMMON)
# The agent's server and runs, hosted in the target (fuzz_agent.c; needs bwrap
# and libmicrohttpd-dev, no Redis).
FUZZ_AGENT_SRCS := tests/fuzz/fuzz_agent.c agent/server.c agent/runs.c agent/tokens.c agent/metrics.c \
                   common/loop.c common/log.c common/sandbox.c common/supervise.c common/cgroup.c common/seccomp_filter.c \
                   common/netns.c common/egress.c common/text.c common/buf.c common/hist.c \
                   common/preview.c producers/lib/sha256.c \
                   producers/lib/message.c producers/lib/utf8.c producers/lib/version.c
$(call fuzzobj,tests/fuzz/fuzz_agent.c agent/server.c agent/runs.c agent/tokens.c agent/metrics.c): \
    FUZZ_EXTRA := -Iagent $(shell pkg-config --cflags libmicrohttpd)
$(FUZZ_DIR)/fuzz_agent: FUZZ_LIBS += $(shell pkg-config --libs libmicrohttpd libseccomp)
$(FUZZ_DIR)/fuzz_agent: $(call fuzzobj,$(FUZZ_AGENT_SRCS)) $(FUZZ_COMMON)

# The live log's cleaning and chunking (fuzz_runlog.c): runlog.c with a
# recording sender; db.c is linked for the default sender, never called.
FUZZ_RUNLOG_SRCS := tests/fuzz/fuzz_runlog.c worker/runlog.c worker/db.c common/loop.c common/log.c \
                    common/text.c common/buf.c producers/lib/utf8.c
$(call fuzzobj,tests/fuzz/fuzz_runlog.c worker/runlog.c worker/db.c): \
    FUZZ_EXTRA := $(shell pkg-config --cflags libpq)
$(FUZZ_DIR)/fuzz_runlog: FUZZ_LIBS += $(shell pkg-config --libs libpq)
$(FUZZ_DIR)/fuzz_runlog: $(call fuzzobj,$(FUZZ_RUNLOG_SRCS)) $(FUZZ_COMMON)

$(FUZZ_BINS):
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $^ $(FUZZ_LIBS)

.PHONY: fuzz fuzz-smoke fuzz-merge fuzz-build
fuzz-build: $(FUZZ_BINS)

fuzz-smoke: fuzz-build
	sh tests/fuzz/run.sh $(FUZZ_DIR) $(FUZZ_SMOKE_SECONDS) $(FUZZ_TARGETS)

fuzz: fuzz-build
	sh tests/fuzz/run.sh $(FUZZ_DIR) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-merge: fuzz-build
	sh tests/fuzz/run.sh $(FUZZ_DIR) merge $(FUZZ_TARGETS)

-include $(shell find $(FUZZ_DIR)/obj -name '*.d' 2>/dev/null)
