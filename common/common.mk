# common/common.mk — code both programs link: the event loop, logging, the
# Redis connection, text helpers, the settings-table engine and the
# bubblewrap sandbox. COMMON_OBJS is what sbx-worker and sbx-agent link;
# nothing here may include a header from worker/ or agent/.
COMMON_SRCS := common/loop.c common/log.c common/redis.c common/text.c common/opts.c common/buf.c \
               common/sandbox.c
COMMON_OBJS := $(COMMON_SRCS:%.c=$(BUILD)/obj/%.o)
COMMON_INC  := -Icommon

$(BUILD)/obj/common/%.o: CFLAGS += $(COMMON_INC)
