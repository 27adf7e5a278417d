# tests/unit/job.mk — the job message parser (producers/lib/job.c) over every
# vector in schemas/examples/job/, plus its limits. SBX_EXAMPLES overrides
# the compiled-in directory at run time.
TEST_BINS += $(BUILD)/tests/test_job

$(BUILD)/obj/tests/unit/test_job.o: CFLAGS += -DSBX_EXAMPLES_DIR='"$(CURDIR)/schemas/examples/job"'

# Only libsbx: this test must not wait for the worker to build.
$(BUILD)/tests/test_job: $(BUILD)/obj/tests/unit/test_job.o $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(UNIT_LIBS)
