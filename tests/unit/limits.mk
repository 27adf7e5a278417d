# tests/unit/limits.mk — hostile builds against the whole-sandbox limits
# (cgroup memory, CPU quota, pids; the workspace+/tmp tmpfs) through the
# local provider. Real bwrap and cgroups; needs root, else skipped.
TEST_BINS += $(BUILD)/tests/test_limits

$(BUILD)/tests/test_limits: $(BUILD)/obj/worker/provider_local.o $(BUILD)/obj/common/sandbox.o \
                            $(BUILD)/obj/common/cgroup.o
