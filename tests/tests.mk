# tests/tests.mk — `make test` = unit tests (cmocka, one program per module,
# each run in its own process) + schema vectors (ajv vs C) + end-to-end tests
# (pytest driving real sbx processes against real Kafka, Redis, PostgreSQL).
UNIT_LIBS := -lcmocka

-include tests/unit/*.mk

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(WORKER_LIB_OBJS) $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(UNIT_LIBS)

unit: $(TEST_BINS)
	@set -e; for t in $(TEST_BINS); do echo "== $$t"; $$t; done

test: bins unit
