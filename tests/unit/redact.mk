# tests/unit/redact.mk — SBX_REDIS_URL's parser and the one password
# redaction (common/redis.c, common/log.c); pure functions, no services.
TEST_BINS += $(BUILD)/tests/test_redact
