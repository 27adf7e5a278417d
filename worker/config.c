/* config.c — one table drives defaults, environment, flags, help and checks. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

enum kind { STR, INT, BOOL };

typedef struct opt {
    const char *env, *flag, *def, *help;
    enum kind kind;
    size_t off, size;   /* STR: buffer in sbx_config; INT/BOOL: int */
    long min, max;
    int required;
} opt;

#define S(f) offsetof(sbx_config, f), sizeof(((sbx_config *)0)->f)
#define I(f) offsetof(sbx_config, f), sizeof(int)

static const opt opts[] = {
    {"SBX_BROKERS", "brokers", NULL, "Kafka bootstrap servers, host:port[,host:port]", STR, S(brokers), 0, 0, 1},
    {"SBX_TOPIC", "topic", "sbx.jobs", "topic of job messages", STR, S(topic), 0, 0, 0},
    {"SBX_DLQ_TOPIC", "dlq-topic", "sbx.jobs.dlq", "dead-letter topic", STR, S(dlq_topic), 0, 0, 0},
    {"SBX_GROUP", "group", "sbx-workers", "Kafka consumer group", STR, S(group), 0, 0, 0},
    {"SBX_REDIS_URL", "redis-url", "redis://127.0.0.1:6379", "Redis for leases: redis://host:port[/db] or unix:/path", STR, S(redis_url), 0, 0, 0},
    {"SBX_DATABASE_URL", "database-url", NULL, "PostgreSQL conninfo or URL (postgresql://user@host:port/db)", STR, S(database_url), 0, 0, 1},
    {"SBX_WORKER_ID", "worker-id", "", "this worker's name in leases and run rows (default: node-pid)", STR, S(worker_id), 0, 0, 0},
    {"SBX_NODE", "node", "", "host name for the local pool (default: hostname)", STR, S(node), 0, 0, 0},
    {"SBX_PROVIDER", "provider", "local", "build provider: local, vmpool (reads SBX_VMPOOL_KEY), docker or fly (reads SBX_FLY_*)", STR, S(provider), 0, 0, 0},
    {"SBX_LOCAL_SLOTS", "local-slots", "4", "concurrent builds on this host (local provider)", INT, I(local_slots), 1, 64, 0},
    {"SBX_WORK_DIR", "work-dir", "/var/tmp/sbx-work", "parent dir of build workspaces (local provider)", STR, S(work_dir), 0, 0, 0},
    {"SBX_UID_BASE", "uid-base", "60000", "when root, slot i builds as uid/gid base+i", INT, I(uid_base), 1000, 4000000000L / 2, 0},
    {"SBX_ALLOW_NETWORK", "allow-network", "0", "jobs may ask for network access (0/1)", BOOL, I(allow_network), 0, 1, 0},
    {"SBX_LEASE_TTL_MS", "lease-ttl-ms", "30000", "lease time-to-live; renewed every third of it", INT, I(lease_ttl_ms), 1000, 3600000, 0},
    {"SBX_MAX_INFLIGHT", "max-inflight", "1000", "unfinished jobs before intake pauses", INT, I(max_inflight), 1, 1000000, 0},
    {"SBX_MAX_ATTEMPTS", "max-attempts", "3", "tries of a job whose provider failed (not the build)", INT, I(max_attempts), 1, 100, 0},
    {"SBX_RETRY_BASE_MS", "retry-base-ms", "200", "first retry delay; doubles, with jitter, up to 30 s", INT, I(retry_base_ms), 1, 60000, 0},
    {"SBX_KAFKA_SESSION_TIMEOUT_MS", "kafka-session-timeout-ms", "10000", "how soon a dead worker's partitions move", INT, I(session_timeout_ms), 1000, 3600000, 0},
    {"SBX_SHUTDOWN_GRACE_MS", "shutdown-grace-ms", "30000", "on SIGTERM, how long running builds may finish", INT, I(shutdown_grace_ms), 0, 86400000, 0},
    {"SBX_PROJECT_POLICY", "project-policy", "queue", "when a project already has a build running: queue (wait), reject (end the new job canceled) or supersede (cancel the older builds)", STR, S(project_policy), 0, 0, 0},
    {"SBX_ADMIN_LISTEN", "admin-listen", "", "ip:port of /healthz, /readyz and /metrics (Prometheus); empty: off", STR, S(admin_listen), 0, 0, 0},
    {"SBX_LOG_LEVEL", "log-level", "info", "debug, info, warn or error", STR, S(log_level), 0, 0, 0},
    {"SBX_KAFKA_CONF", "kafka-conf", "", "extra librdkafka settings, k=v[,k=v]", STR, S(kafka_conf), 0, 0, 0},
    {"SBX_DOCKER_HOSTS", "docker-hosts", "", "docker provider: name=unix:///sock@capacity or name=tcp://host:port@capacity, comma-separated", STR, S(docker_hosts), 0, 0, 0},
    {"SBX_BENCH_SLOTS", "bench-slots", "100000", "bench provider (benchmarks only): slots", INT, I(bench_slots), 1, 10000000, 0},
    {"SBX_BENCH_HOLD_MS", "bench-hold-ms", "0", "bench provider: how long each build lasts", INT, I(bench_hold_ms), 0, 86400000, 0},
    {"SBX_DOCKER_IMAGE", "docker-image", "", "docker provider: image of jobs that name none", STR, S(docker_image), 0, 0, 0},
};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))

static int set(sbx_config *cfg, const opt *o, const char *v, const char *src, FILE *err)
{
    char *p = (char *)cfg + o->off;
    if (o->kind == STR) {
        if (strlen(v) >= o->size) {
            fprintf(err, "sbx-worker: %s is too long (max %zu bytes); shorten it\n", src, o->size - 1);
            return 1;
        }
        memcpy(p, v, strlen(v) + 1);
        return 0;
    }
    {
        char *end;
        long n;
        errno = 0;
        n = strtol(v, &end, 10);
        if (errno || end == v || *end || n < o->min || n > o->max) {
            fprintf(err, "sbx-worker: %s=%s is not valid: set it to %s from %ld to %ld\n", src, v,
                    o->kind == BOOL ? "0 or 1," : "an integer", o->min, o->max);
            return 1;
        }
        *(int *)p = (int)n;
    }
    return 0;
}

void sbx_config_usage(FILE *out)
{
    fprintf(out, "usage: sbx-worker [--flag value]...\n"
                 "Every flag has an environment variable; the flag wins.\n\n");
    for (size_t i = 0; i < NOPTS; i++)
        fprintf(out, "  --%-26s %-30s %s%s%s%s\n", opts[i].flag, opts[i].env, opts[i].help,
                opts[i].def && *opts[i].def ? " (default " : "",
                opts[i].def && *opts[i].def ? opts[i].def : "",
                opts[i].required ? " (required)" : opts[i].def && *opts[i].def ? ")" : "");
}

void sbx_config_print(const sbx_config *cfg, FILE *out)
{
    for (size_t i = 0; i < NOPTS; i++) {
        const char *p = (const char *)cfg + opts[i].off;
        if (opts[i].kind == STR) {
            char red[1024];
            sbx_log_redact(p, red, sizeof(red));
            fprintf(out, "%s=%s\n", opts[i].env, red);
        } else {
            fprintf(out, "%s=%d\n", opts[i].env, *(const int *)p);
        }
    }
}

int sbx_config_load(sbx_config *cfg, int argc, char **argv, FILE *err)
{
    int bad = 0;
    enum sbx_log_level lvl;

    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NOPTS; i++) {
        const char *v = getenv(opts[i].env);
        char src[160];
        if (opts[i].def)
            set(cfg, &opts[i], opts[i].def, opts[i].env, err);
        if (v) {
            snprintf(src, sizeof(src), "%s", opts[i].env);
            bad |= set(cfg, &opts[i], v, src, err);
        }
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a], *val = NULL;
        char name[64];
        size_t i;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            sbx_config_usage(stdout);
            return 2;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(err, "sbx-worker: unexpected argument '%s'; see sbx-worker --help\n", arg);
            bad = 1;
            continue;
        }
        snprintf(name, sizeof(name), "%s", arg + 2);
        if (strchr(name, '=')) {
            *strchr(name, '=') = '\0';
            val = strchr(arg, '=') + 1;
        }
        for (i = 0; i < NOPTS; i++)
            if (strcmp(opts[i].flag, name) == 0)
                break;
        if (i == NOPTS) {
            fprintf(err, "sbx-worker: unknown flag --%s; see sbx-worker --help\n", name);
            bad = 1;
            continue;
        }
        if (!val) {
            if (a + 1 >= argc) {
                fprintf(err, "sbx-worker: --%s needs a value\n", name);
                bad = 1;
                continue;
            }
            val = argv[++a];
        }
        {
            char src[96];
            snprintf(src, sizeof(src), "--%s", name);
            bad |= set(cfg, &opts[i], val, src, err);
        }
    }
    for (size_t i = 0; i < NOPTS; i++) {
        const char *p = (const char *)cfg + opts[i].off;
        if (opts[i].required && opts[i].kind == STR && !*p) {
            fprintf(err, "sbx-worker: %s is not set: %s (or pass --%s)\n", opts[i].env,
                    opts[i].help, opts[i].flag);
            bad = 1;
        }
    }
    if (sbx_log_parse_level(cfg->log_level, &lvl) != 0) {
        fprintf(err, "sbx-worker: SBX_LOG_LEVEL=%s is not valid: use debug, info, warn or error\n",
                cfg->log_level);
        bad = 1;
    } else {
        sbx_log_set_level(lvl);
    }
    if (strcmp(cfg->provider, "local") != 0 && strcmp(cfg->provider, "docker") != 0 &&
        strcmp(cfg->provider, "fly") != 0 && strcmp(cfg->provider, "bench") != 0 &&
        strcmp(cfg->provider, "vmpool") != 0) {
        fprintf(err, "sbx-worker: SBX_PROVIDER=%s is not known: use local, vmpool, docker or fly\n",
                cfg->provider);
        bad = 1;
    }
    if (strcmp(cfg->project_policy, "queue") != 0 && strcmp(cfg->project_policy, "reject") != 0 &&
        strcmp(cfg->project_policy, "supersede") != 0) {
        fprintf(err, "sbx-worker: SBX_PROJECT_POLICY=%s is not known: use queue, reject or "
                     "supersede\n", cfg->project_policy);
        bad = 1;
    }
    if (strcmp(cfg->provider, "docker") == 0 && !*cfg->docker_hosts) {
        fprintf(err, "sbx-worker: SBX_DOCKER_HOSTS is not set: the docker provider needs "
                     "name=unix:///path/docker.sock@capacity[,...]\n");
        bad = 1;
    }
    if (!*cfg->node) {
        if (gethostname(cfg->node, sizeof(cfg->node)) != 0)
            snprintf(cfg->node, sizeof(cfg->node), "node");
        cfg->node[sizeof(cfg->node) - 1] = '\0';
    }
    if (!*cfg->worker_id)
        snprintf(cfg->worker_id, sizeof(cfg->worker_id), "%.100s-%d", cfg->node, (int)getpid());
    return bad ? 1 : 0;
}
