# tests/bench/bench.mk — `make bench`: the benchmark figures of sbx-worker
# (dispatch rate, latency, builds in flight, instructions per job) and of its
# peers (River, the Node pipeline, BullMQ), against real Kafka, Redis and
# PostgreSQL. BENCH_QUICK=1 runs a smaller version (20,000 jobs a run; about
# two minutes with BENCH_RUNS=1); see tests/bench/bench.py for every
# knob. The table lands on stdout and in $(BUILD)/bench/last-results.md;
# `make bench BENCH_OUT=tests/bench/last-results.md` replaces the published
# table (the committed one) on purpose.
# sbx-bench-pace (the latency figures' paced producer) is a test tool, not
# one of BINS: it is neither installed nor built by `make`.
# test_provider_bench (the bench provider's unit test) runs with the unit
# tests of `make unit`.
SBX_BENCH_PACE  := $(BUILD)/bench/sbx-bench-pace
BENCH_NPM_STAMP := tests/bench/bullmq/node_modules/.package-lock.json
BENCH_NODEPIPE_STAMP := tests/bench/nodepipe/node_modules/.package-lock.json
# The peers are built from their lock files (go.sum, package-lock.json) and
# run as programs of their own: nothing of them is linked into sbx.
BENCH_RIVER := $(BUILD)/bench/river-bench

$(SBX_BENCH_PACE): $(BUILD)/obj/tests/bench/pace.o $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

TEST_BINS += $(BUILD)/tests/test_provider_bench

$(BUILD)/tests/test_provider_bench: $(BUILD)/obj/tests/bench/test_provider_bench.o \
                                    $(BUILD)/obj/tests/bench/provider_bench.o $(WORKER_LIB_OBJS) $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o %.a,$^) $(PKG_LIBS) $(UNIT_LIBS)

$(BENCH_NPM_STAMP): tests/bench/bullmq/package.json tests/bench/bullmq/package-lock.json
	cd tests/bench/bullmq && npm ci --no-audit --no-fund
	@touch $@

$(BENCH_NODEPIPE_STAMP): tests/bench/nodepipe/package.json tests/bench/nodepipe/package-lock.json
	cd tests/bench/nodepipe && npm ci --no-audit --no-fund
	@touch $@

# River and its drivers come from the Go module proxy, pinned by go.sum. Go
# itself is needed by this peer only, so it is checked here, not by
# docker/install-deps.sh (which `make test` runs).
$(BENCH_RIVER): tests/bench/river/main.go tests/bench/river/go.mod tests/bench/river/go.sum
	@command -v go >/dev/null 2>&1 || { echo "make bench: the River peer needs Go 1.21 or later on PATH (Debian 12's golang-go, 1.19, is too old); see https://go.dev/doc/install" >&2; exit 1; }
	@mkdir -p $(dir $@)
	cd tests/bench/river && go build -mod=readonly -o $(abspath $@) .

# sbx-worker-bench: sbx-worker plus the benchmark provider (SBX_PROVIDER=bench),
# which the production binary does not carry.
SBX_WORKER_BENCH := $(BUILD)/bench/sbx-worker-bench
$(BUILD)/obj/tests/bench/providers.o: worker/providers.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WORKER_INC) -Itests/bench -DSBX_WITH_BENCH $(PKG_CFLAGS) -c $< -o $@
$(SBX_WORKER_BENCH): $(BUILD)/obj/worker/main.o $(WORKER_CORE_OBJS) $(BUILD)/obj/tests/bench/providers.o \
                     $(BUILD)/obj/tests/bench/provider_bench.o $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

bench: bins $(SBX_WORKER_BENCH) $(SBX_BENCH_PACE) $(BENCH_NPM_STAMP) $(BENCH_NODEPIPE_STAMP) \
       $(BENCH_RIVER)
	SBX_BUILD=$(BUILD) python3 tests/bench/bench.py
