# tests/chaos/chaos.mk — the chaos suite (tests/chaos/chaos.py): faults while
# jobs flow, then the invariants. `make chaos` is the long run on its own
# services (≲ 10 min); `make chaos-short` the short one (≲ 2 min after the
# services' start), which `make test` also runs as tests/e2e/test_chaos_short.py.
# CHAOS_ARGS passes options: make chaos CHAOS_ARGS="--seed 42 --provider vmpool"
CHAOS_ARGS ?=

chaos: bins
	SBX_BUILD=$(BUILD) python3 tests/chaos/chaos.py $(CHAOS_ARGS)

chaos-short: bins
	SBX_BUILD=$(BUILD) python3 tests/chaos/chaos.py --short $(CHAOS_ARGS)

.PHONY: chaos chaos-short
