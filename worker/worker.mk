# worker/worker.mk — sbx-worker. WORKER_LIB_OBJS is everything but main, so
# unit tests link the same objects the daemon runs.
WORKER_LIB_SRCS := worker/loop.c worker/log.c worker/offsets.c worker/redis.c worker/lease.c worker/db.c \
                   worker/text.c worker/config.c worker/kafka.c worker/job.c \
                   worker/sandbox.c worker/provider_local.c worker/http.c \
                   worker/provider_docker.c worker/provider_fly.c worker/providers.c \
                   worker/provider_bench.c worker/provider_vmpool.c worker/admin.c worker/opts.c
WORKER_LIB_OBJS := $(WORKER_LIB_SRCS:%.c=$(BUILD)/obj/%.o)
SBX_WORKER      := $(BUILD)/bin/sbx-worker
BINS            += $(SBX_WORKER)

$(SBX_WORKER): $(BUILD)/obj/worker/main.o $(WORKER_LIB_OBJS) $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)
