# tests/unit/kafka_security.mk — the SBX_KAFKA_* TLS and SASL variables as
# librdkafka settings (producers/lib/kafka_security.c); files in a temporary
# directory, no services. The same table against a real broker:
# tests/e2e/test_tls.py.
TEST_BINS += $(BUILD)/tests/test_kafka_security

# Only libsbx: this test must not wait for the worker to build.
$(BUILD)/tests/test_kafka_security: $(BUILD)/obj/tests/unit/test_kafka_security.o $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(UNIT_LIBS)
