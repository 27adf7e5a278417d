# producers/producers.mk — libsbx (the job message and the Kafka producer),
# the `sbx` CLI and `sbx-validate`, and `make schema-test`, which holds the
# JSON Schemas, their examples and the C validator to one another
# (tests/schema/check.mjs; needs Node.js and npm).
LIBSBX_SRCS := producers/lib/message.c producers/lib/producer.c producers/lib/utf8.c \
               producers/lib/redact.c producers/lib/sha256.c producers/lib/submit.c
LIBSBX_OBJS := $(LIBSBX_SRCS:%.c=$(BUILD)/obj/%.o)
LIBSBX      := $(BUILD)/lib/libsbx.a

SBX_CLI_SRCS := producers/cli/sbx.c producers/cli/enqueue.c producers/cli/runs.c producers/cli/migrate.c
SBX_CLI_OBJS := $(SBX_CLI_SRCS:%.c=$(BUILD)/obj/%.o)

BINS += $(BUILD)/bin/sbx $(BUILD)/bin/sbx-validate

$(LIBSBX): $(LIBSBX_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/bin/sbx: $(SBX_CLI_OBJS) $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/bin/sbx-validate: $(BUILD)/obj/producers/cli/validate.o $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

# SCHEMA_MUTANTS: how many mutated messages to compare C and Ajv on, beyond
# the examples (tests/schema/check.mjs --mutants).
SCHEMA_MUTANTS ?= 3000
.PHONY: schema-test
schema-test: $(BUILD)/bin/sbx-validate
	@test -d tests/schema/node_modules || (cd tests/schema && npm ci --no-audit --no-fund)
	node tests/schema/check.mjs --validator $(BUILD)/bin/sbx-validate --mutants $(SCHEMA_MUTANTS)
