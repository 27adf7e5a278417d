# The live log's cleaning, chunking and batching (worker/runlog.c).
TEST_BINS += $(BUILD)/tests/test_runlog
