# tests/bench/bench.mk — `make bench`: the benchmark figures of sbx-worker
# (dispatch rate, latency, builds in flight, instructions per job) and of its
# peer BullMQ, against real Kafka, Redis and PostgreSQL. BENCH_QUICK=1 runs a
# small version in about three minutes; see tests/bench/bench.py for every
# knob. The table lands on stdout and in $(BUILD)/bench/last-results.md;
# `make bench BENCH_OUT=tests/bench/last-results.md` replaces the published
# table (the committed one) on purpose.
# sbx-bench-pace (the latency figures' paced producer) is a test tool, not
# one of BINS: it is neither installed nor built by `make`.
# test_provider_bench (the bench provider's unit test) runs with the unit
# tests of `make unit`.
SBX_BENCH_PACE  := $(BUILD)/bench/sbx-bench-pace
BENCH_NPM_STAMP := tests/bench/bullmq/node_modules/.package-lock.json

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

bench: bins $(SBX_WORKER_BENCH) $(SBX_BENCH_PACE) $(BENCH_NPM_STAMP)
	SBX_BUILD=$(BUILD) python3 tests/bench/bench.py
