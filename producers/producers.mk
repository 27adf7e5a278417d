# producers/producers.mk — libsbx (the job message and the Kafka producer),
# the `sbx` CLI and `sbx-validate`, and `make schema-test`, which holds the
# JSON Schemas, their examples and the C validator to one another
# (tests/schema/check.mjs; needs Node.js and npm).
LIBSBX_SRCS := producers/lib/message.c producers/lib/producer.c producers/lib/utf8.c \
               producers/lib/version.c producers/lib/kafka_security.c \
               producers/lib/redact.c producers/lib/sha256.c producers/lib/submit.c
LIBSBX_OBJS := $(LIBSBX_SRCS:%.c=$(BUILD)/obj/%.o)
LIBSBX      := $(BUILD)/lib/libsbx.a

SBX_CLI_SRCS := producers/cli/sbx.c producers/cli/enqueue.c producers/cli/runs.c producers/cli/migrate.c \
                producers/cli/dlq.c producers/cli/topics.c \
                producers/cli/serve.c producers/cli/console_data.c producers/cli/console_feed.c \
                producers/cli/list.c producers/cli/logs.c \
                producers/cli/sessions.c
SBX_CLI_OBJS := $(SBX_CLI_SRCS:%.c=$(BUILD)/obj/%.o)

# `sbx serve` reads Redis with the key layout and URL forms the daemons
# share (common/rkeys.h, common/redis.c; redis.o needs loop.o and log.o),
# and embeds the console's page (producers/console/) as the migrations are.
$(BUILD)/obj/producers/cli/console_data.o: CFLAGS += $(COMMON_INC)
SBX_CLI_OBJS += $(BUILD)/obj/common/redis.o $(BUILD)/obj/common/loop.o $(BUILD)/obj/common/log.o
CONSOLE_ASSETS := $(sort $(wildcard producers/console/*))
CONSOLE_GEN    := $(BUILD)/gen/producers/console_assets.c
SBX_CLI_OBJS   += $(BUILD)/obj/producers/console_assets.o

$(CONSOLE_GEN): common/lua/embed.awk $(CONSOLE_ASSETS) producers/producers.mk
	@mkdir -p $(dir $@)
	awk -v raw=1 -v prefix=sbx__console_ -v header=migrations.h -v table=sbx__console_assets \
	    -f common/lua/embed.awk $(CONSOLE_ASSETS) > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/producers/console_assets.o: $(CONSOLE_GEN) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Iproducers/cli -c $< -o $@

# The migrations, built into `sbx` so `sbx migrate` works from any directory
# (producers/cli/migrations.h); a new file in migrations/ is picked up here.
MIGRATIONS     := $(sort $(wildcard migrations/[0-9][0-9][0-9][0-9]_*.sql))
MIGRATIONS_GEN := $(BUILD)/gen/producers/migrations.c
SBX_CLI_OBJS   += $(BUILD)/obj/producers/migrations.o

$(MIGRATIONS_GEN): common/lua/embed.awk $(MIGRATIONS) producers/producers.mk
	@mkdir -p $(dir $@)
	awk -v raw=1 -v prefix=sbx__migration_ -v header=migrations.h -v table=sbx__migrations \
	    -f common/lua/embed.awk $(MIGRATIONS) > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/producers/migrations.o: $(MIGRATIONS_GEN) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Iproducers/cli -c $< -o $@

BINS += $(BUILD)/bin/sbx $(BUILD)/bin/sbx-validate

# sbx_version() (Makefile: SBX_VERSION, SBX_GIT, VERSION_STAMP).
$(BUILD)/obj/producers/lib/version.o: CFLAGS += -DSBX_VERSION='"$(SBX_VERSION)"' -DSBX_GIT='"$(SBX_GIT)"'
$(BUILD)/obj/producers/lib/version.o: $(VERSION_STAMP)

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
