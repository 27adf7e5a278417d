# tests/unit/vmpool.mk — the vmpool provider against real sbx-agent
# processes (three of them, a private redis-server, real bwrap sandboxes).
# Needs root (per-slot uids); otherwise it exits 77.
TEST_BINS += $(BUILD)/tests/test_vmpool

$(BUILD)/obj/tests/unit/test_vmpool.o: CFLAGS += -DSBX_AGENT_BIN='"$(abspath $(BUILD))/bin/sbx-agent"'

# The agent binary is a prerequisite so it is built first; the link rule
# keeps only objects and archives.
$(BUILD)/tests/test_vmpool: $(BUILD)/obj/worker/provider_vmpool.o $(BUILD)/obj/worker/http.o \
                            $(BUILD)/obj/tests/unit/conformance.o $(BUILD)/obj/tests/unit/svc.o \
                            $(BUILD)/bin/sbx-agent
