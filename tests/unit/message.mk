# tests/unit/message.mk — the job message parser (producers/lib/message.c)
# over every vector in schemas/examples/job/, plus its limits. SBX_EXAMPLES
# overrides the compiled-in directory at run time.
TEST_BINS += $(BUILD)/tests/test_message

$(BUILD)/obj/tests/unit/test_message.o: CFLAGS += -DSBX_EXAMPLES_DIR='"$(CURDIR)/schemas/examples/job"'

# Only libsbx: this test must not wait for the worker to build.
$(BUILD)/tests/test_message: $(BUILD)/obj/tests/unit/test_message.o $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(UNIT_LIBS)
