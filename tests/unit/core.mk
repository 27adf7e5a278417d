# Unit tests of the worker's core modules.
TEST_BINS += $(BUILD)/tests/test_loop $(BUILD)/tests/test_offsets $(BUILD)/tests/test_text $(BUILD)/tests/test_buf \
             $(BUILD)/tests/test_lease $(BUILD)/tests/test_db
$(BUILD)/tests/test_lease: $(BUILD)/obj/tests/unit/svc.o
$(BUILD)/tests/test_db: $(BUILD)/obj/tests/unit/svc.o
# Retention (worker/prune.c, migrations/0003_retention.sql), against PostgreSQL.
TEST_BINS += $(BUILD)/tests/test_prune
$(BUILD)/tests/test_prune: $(BUILD)/obj/tests/unit/svc.o
# The Redis contract: the scripts name only the keys common/rkeys.h lists.
TEST_BINS += $(BUILD)/tests/test_rkeys
# Log lines: text and SBX_LOG_FORMAT=json (common/log.c).
TEST_BINS += $(BUILD)/tests/test_log
# Latency histograms (common/hist.c).
TEST_BINS += $(BUILD)/tests/test_hist
# The preview proxy (common/preview.c): a real browser-like client and dev
# server (tests/unit/preview_check.py) through it, HTTP and WebSocket.
TEST_BINS += $(BUILD)/tests/test_preview
