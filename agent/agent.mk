# agent/agent.mk — sbx-agent, deployed on every VM of the vmpool. It shares
# the worker's loop, log, Redis connection and sandbox (the same objects),
# plus libsbx for the job message, and serves HTTP with libmicrohttpd
# (Debian: libmicrohttpd-dev).
AGENT_SRCS     := agent/main.c agent/agent_config.c agent/runs.c agent/tokens.c \
                  agent/registry.c agent/server.c
AGENT_OBJS     := $(AGENT_SRCS:%.c=$(BUILD)/obj/%.o)
AGENT_WORKER   := worker/loop.c worker/log.c worker/redis.c worker/sandbox.c worker/text.c \
                  worker/opts.c
AGENT_LIBS      = $(shell pkg-config --libs libmicrohttpd)
SBX_AGENT      := $(BUILD)/bin/sbx-agent
BINS           += $(SBX_AGENT)

$(AGENT_OBJS): CFLAGS += -Iagent $(shell pkg-config --cflags libmicrohttpd)

$(SBX_AGENT): $(AGENT_OBJS) $(AGENT_WORKER:%.c=$(BUILD)/obj/%.o) $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) $(AGENT_LIBS)
