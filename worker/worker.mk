# worker/worker.mk — sbx-worker. WORKER_LIB_OBJS is everything but main, so
# unit tests link the same objects the daemon runs; WORKER_CORE_OBJS is that
# without the provider table (providers.c), which `make bench` compiles again
# with the benchmark provider (tests/bench/bench.mk).
WORKER_CORE_SRCS := worker/offsets.c worker/lease.c worker/db.c worker/config.c worker/kafka.c \
                    worker/jobtable.c worker/waitq.c worker/dlq.c \
                    worker/jobfiles.c worker/prune.c worker/session.c worker/deps.c worker/checks.c \
                    worker/job.c worker/provider_local.c worker/http.c \
                    worker/provider_docker.c worker/provider_fly.c \
                    worker/provider_vmpool.c worker/admin.c
WORKER_CORE_SRCS += worker/docker_tar.c worker/docker_logs.c worker/fly_api.c worker/fly_logs.c worker/fly_session.c worker/fly_warm.c
WORKER_CORE_SRCS += worker/ssh_tunnel.c worker/docker_hosts.c
WORKER_CORE_SRCS += worker/runlog.c
WORKER_CORE_OBJS := $(WORKER_CORE_SRCS:%.c=$(BUILD)/obj/%.o) $(COMMON_OBJS)
WORKER_LIB_OBJS  := $(WORKER_CORE_OBJS) $(BUILD)/obj/worker/providers.o
WORKER_INC      := -Iworker $(COMMON_INC)
SBX_WORKER      := $(BUILD)/bin/sbx-worker
BINS            += $(SBX_WORKER)

$(BUILD)/obj/worker/%.o: CFLAGS += $(WORKER_INC)

$(SBX_WORKER): $(BUILD)/obj/worker/main.o $(WORKER_LIB_OBJS) $(LIBSBX)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)
