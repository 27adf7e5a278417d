# tests/unit/intake.mk — the Kafka intake (worker/kafka.c) and the admin
# endpoint (worker/admin.c).
# Both run with the other unit programs (`make unit`). test_admin takes
# Kafka outages from librdkafka's in-process mock cluster (fault injection:
# it can take the broker down at will); test_kafka runs against the real
# broker `make unit` starts (about 35 s) and exits 77 without SBX_BROKERS.
TEST_BINS += $(BUILD)/tests/test_admin $(BUILD)/tests/test_kafka

$(BUILD)/tests/test_admin: $(BUILD)/obj/tests/unit/svc.o
$(BUILD)/tests/test_kafka: $(BUILD)/obj/tests/unit/svc.o
