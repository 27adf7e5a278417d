# tests/unit/intake.mk — the Kafka intake (worker/kafka.c) and the admin
# endpoint (worker/admin.c).
# test_admin runs with the other unit programs (`make unit`): its Kafka is
# librdkafka's in-process mock cluster, which it can take down at will.
# test_kafka needs a real broker: `make unit-kafka` (part of `make test`)
# starts Kafka alone (ready in 3-8 s; the tests then take about 35 s) and runs
# it; without SBX_BROKERS the program exits 77.
TEST_BINS       += $(BUILD)/tests/test_admin
KAFKA_TEST_BINS := $(BUILD)/tests/test_kafka

$(BUILD)/tests/test_admin: $(BUILD)/obj/tests/unit/svc.o
$(BUILD)/tests/test_kafka: $(BUILD)/obj/tests/unit/svc.o

.PHONY: unit-kafka
unit-kafka: $(KAFKA_TEST_BINS)
	python3 tests/services/sbxsvc.py run --no-redis --no-postgres -- \
	    sh -c 'for t; do echo "== $$t"; "$$t" || exit; done' sh $(KAFKA_TEST_BINS)
test: unit-kafka
