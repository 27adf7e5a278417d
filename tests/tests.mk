# tests/tests.mk — `make test` = unit tests (cmocka, one program per module,
# each run in its own process, against a private Redis/PostgreSQL) + schema
# vectors (Ajv vs the C validator) + end-to-end tests (pytest driving real sbx
# processes against a real Kafka broker, Redis and PostgreSQL).
# `make unit` starts no Kafka (quicker); the programs that need the real
# broker run in `make unit-kafka` (tests/unit/intake.mk), also part of test.
# A test run leaves the work tree as it found it: no pytest cache and no
# __pycache__ beside the harness; what it makes goes to $(BUILD), apart from
# npm's node_modules (ignored).
UNIT_LIBS := -lcmocka
PYTEST    ?= python3 -m pytest
export PYTHONDONTWRITEBYTECODE := 1

-include tests/unit/*.mk tests/fuzz/*.mk tests/bench/*.mk tests/chaos/*.mk

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(WORKER_LIB_OBJS) $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o %.a,$^) $(PKG_LIBS) $(UNIT_LIBS)

# The preview tests' dev server (tests/devserver/devserver.c): static, so a
# test image with no runtime can carry it.
DEVSERVER := $(BUILD)/bin/sbx-devserver
$(DEVSERVER): tests/devserver/devserver.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -Wall -Wextra -Werror -static -o $@ $<

# One set of services for every unit program: a real Kafka broker (test_kafka,
# test_job), Redis, PostgreSQL and a rootful Podman API. Then the docker
# provider's programs once more, on Docker Engine itself (a private dockerd;
# ~2 s to start and stop, ~25 s of tests and ~15 s of sessions).
unit: $(TEST_BINS) $(BUILD)/bin/sbx $(DEVSERVER)
	SBX_BUILD=$(BUILD) tests/services/podman/podman-service.sh -- \
	    python3 tests/services/sbxsvc.py run -- sh tests/unit/run.sh $(BUILD) $(TEST_BINS)
	SBX_BUILD=$(BUILD) tests/services/dockerd/dockerd-service.sh -- \
	    sh -c '$(BUILD)/tests/test_docker && $(BUILD)/tests/test_docker_session'

e2e: bins $(DEVSERVER)
	SBX_BUILD=$(BUILD) $(PYTEST) -q -ra -p no:cacheprovider tests/e2e

test: bins unit schema-test e2e

# Sessions' create-to-running per provider, cold / warm / reused / resumed
# (tests/e2e/bench_sessions.py; a measurement, not part of test).
bench-sessions: bins $(DEVSERVER)
	SBX_BUILD=$(BUILD) $(PYTEST) -q -s -p no:cacheprovider tests/e2e/bench_sessions.py

# Tests may look inside any module they test.
$(BUILD)/obj/tests/%.o: CFLAGS += $(WORKER_INC) $(AGENT_INC) -Itests/bench
