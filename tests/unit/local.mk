# tests/unit/local.mk — the local (bubblewrap) provider and the provider
# conformance scenarios other providers' tests reuse (conformance.o).
# Runs real bwrap; as root it also tests the per-slot uids.
TEST_BINS += $(BUILD)/tests/test_local

# sandbox.o and provider_local.o are in WORKER_LIB_OBJS once worker.mk lists
# them; naming them again here is harmless ($^ drops duplicates).
$(BUILD)/tests/test_local: $(BUILD)/obj/worker/provider_local.o $(BUILD)/obj/common/sandbox.o \
                           $(BUILD)/obj/tests/unit/conformance.o
