# tests/unit/fly.mk — the fly provider against the Machines API emulator
# (tests/flyemu/flyemu.py, started by the test; SBX_FLYEMU / SBX_PYTHON
# override where it is and which python runs it), and the emulator's own
# checks against the documented API (pytest, part of `make test`).
TEST_BINS += $(BUILD)/tests/test_fly

$(BUILD)/obj/tests/unit/test_fly.o: CFLAGS += -DSBX_FLYEMU_PATH='"$(CURDIR)/tests/flyemu/flyemu.py"'
$(BUILD)/tests/test_fly: $(BUILD)/obj/worker/http.o $(BUILD)/obj/worker/provider_fly.o \
                         $(BUILD)/obj/worker/fly_api.o $(BUILD)/obj/worker/fly_logs.o \
                         $(BUILD)/obj/worker/fly_session.o $(BUILD)/obj/worker/fly_warm.o \
                         $(BUILD)/obj/tests/unit/conformance.o

.PHONY: flyemu-test
flyemu-test:
	$(PYTEST) -q -p no:cacheprovider tests/flyemu
test: flyemu-test
