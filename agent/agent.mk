# agent/agent.mk — sbx-agent, deployed on every VM of the vmpool. It links
# common/ (loop, log, Redis connection, sandbox) plus libsbx for the job
# message, and serves HTTP with libmicrohttpd (Debian: libmicrohttpd-dev).
AGENT_SRCS     := agent/main.c agent/agent_config.c agent/runs.c agent/tokens.c agent/metrics.c agent/leasewatch.c \
                  agent/registry.c agent/server.c
AGENT_OBJS     := $(AGENT_SRCS:%.c=$(BUILD)/obj/%.o)
AGENT_INC      := -Iagent $(COMMON_INC)
AGENT_LIBS      = $(shell pkg-config --libs libmicrohttpd)
SBX_AGENT      := $(BUILD)/bin/sbx-agent
BINS           += $(SBX_AGENT)

$(BUILD)/obj/agent/%.o: CFLAGS += $(AGENT_INC) $(shell pkg-config --cflags libmicrohttpd)

$(SBX_AGENT): $(AGENT_OBJS) $(COMMON_OBJS) $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(AGENT_LIBS)
