# common/common.mk — code both programs link: the event loop, logging, the
# Redis connection, text helpers, the settings-table engine, latency
# histograms (hist.c) and the
# bubblewrap sandbox with its cgroups, seccomp filter and network (netns.c,
# egress.c). COMMON_OBJS is what sbx-worker and sbx-agent link; nothing here
# may include a header from worker/ or agent/.
COMMON_SRCS := common/loop.c common/log.c common/redis.c common/text.c common/opts.c common/buf.c \
               common/sandbox.c common/supervise.c common/cgroup.c common/seccomp_filter.c common/netns.c \
               common/egress.c common/hist.c common/preview.c
COMMON_OBJS := $(COMMON_SRCS:%.c=$(BUILD)/obj/%.o)
COMMON_INC  := -Icommon

$(BUILD)/obj/common/%.o: CFLAGS += $(COMMON_INC)

# The start-up both main()s share (daemon.h).
COMMON_OBJS += $(BUILD)/obj/common/daemon.o

# The Redis scripts: common/lua/<name>.lua becomes sbx_lua_<name> (rscripts.h)
# in a generated file under $(BUILD), never in the source tree.
RSCRIPTS     := acquire renew fence release register beat leave lease_left
RSCRIPTS_GEN := $(BUILD)/gen/common/rscripts.c
COMMON_OBJS  += $(BUILD)/obj/common/rscripts.o

$(RSCRIPTS_GEN): common/lua/embed.awk $(wildcard common/lua/*.lua) common/common.mk
	@mkdir -p $(dir $@)
	awk -f common/lua/embed.awk $(RSCRIPTS:%=common/lua/%.lua) > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/common/rscripts.o: $(RSCRIPTS_GEN) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -c $< -o $@
