/* config.c — sbx-worker's settings table (opts.h does the reading) and the
 * checks that span settings. */
#include "config.h"

#include <string.h>
#include <unistd.h>

#include "egress.h"
#include "opts.h"
#include "redis.h"

#define STR SBX_OPT_STR
#define INT SBX_OPT_INT
#define BOOL SBX_OPT_BOOL
#define S(f) SBX_OPT_STR_FIELD(sbx_config, f)
#define I(f) SBX_OPT_INT_FIELD(sbx_config, f)

static const sbx_opt opts[] = {
    {"SBX_BROKERS", "brokers", NULL, "Kafka bootstrap servers, host:port[,host:port]", STR, S(brokers), 0, 0, 1, 0},
    {"SBX_TOPIC", "topic", "sbx.jobs", "topic of job messages", STR, S(topic), 0, 0, 0, 0},
    {"SBX_DLQ_TOPIC", "dlq-topic", "sbx.jobs.dlq", "dead-letter topic", STR, S(dlq_topic), 0, 0, 0, 0},
    {"SBX_DLQ_PAYLOAD_MAX", "dlq-payload-max", "65536", "bytes of a dead letter's redacted payload kept; a longer one is cut, marked truncated, with its size and SHA-256", INT, I(dlq_payload_max), 0, 262144, 0, 0},
    {"SBX_GROUP", "group", "sbx-workers", "Kafka consumer group", STR, S(group), 0, 0, 0, 0},
    {"SBX_REDIS_URL", "redis-url", SBX_REDIS_URL_DEFAULT, "Redis for leases: " SBX_REDIS_URL_FORMS, STR, S(redis_url), 0, 0, 0, 0},
    {"SBX_DATABASE_URL", "database-url", NULL, "PostgreSQL conninfo or URL (postgresql://user@host:port/db)", STR, S(database_url), 0, 0, 1, 0},
    {"SBX_WORKER_ID", "worker-id", "", "this worker's name in leases and run rows (default: node-pid)", STR, S(worker_id), 0, 0, 0, 0},
    {"SBX_NODE", "node", "", "host name for the local pool (default: hostname)", STR, S(node), 0, 0, 0, 0},
    {"SBX_PROVIDER", "provider", "local", "build provider: local, vmpool (reads SBX_VMPOOL_KEY), docker or fly (reads SBX_FLY_*)", STR, S(provider), 0, 0, 0, 0},
    {"SBX_LOCAL_SLOTS", "local-slots", "4", "concurrent builds on this host (local provider)", INT, I(local_slots), 1, 64, 0, 0},
    {"SBX_WORK_DIR", "work-dir", "/var/tmp/sbx-work", "parent dir of build workspaces (local provider)", STR, S(work_dir), 0, 0, 0, 0},
    {"SBX_UID_BASE", "uid-base", "60000", "when root, slot i builds as uid/gid base+i", INT, I(uid_base), 1000, 4000000000L / 2, 0, 0},
    {"SBX_ALLOW_NETWORK", "allow-network", "0", "jobs may ask for network access (0/1)", BOOL, I(allow_network), 0, 1, 0, 0},
    {"SBX_EGRESS_ALLOW", "egress-allow", "", "networked builds may reach only these CIDRs and host names (comma-separated; names resolved at start-up); empty: any public IPv4 address", STR, S(egress_allow), 0, 0, 0, 0},
    {"SBX_EGRESS_DENY", "egress-deny", "", "networked builds may never reach these CIDRs and host names, on top of loopback, private, link-local, CGNAT and metadata ranges and this host's addresses", STR, S(egress_deny), 0, 0, 0, 0},
    {"SBX_LEASE_TTL_MS", "lease-ttl-ms", "30000", "lease time-to-live; renewed every third of it", INT, I(lease_ttl_ms), 1000, 3600000, 0, 0},
    {"SBX_MAX_INFLIGHT", "max-inflight", "1000", "unfinished jobs before intake pauses", INT, I(max_inflight), 1, 1000000, 0, 0},
    {"SBX_MAX_ATTEMPTS", "max-attempts", "3", "tries of a job whose provider failed (not the build)", INT, I(max_attempts), 1, 100, 0, 0},
    {"SBX_RETRY_BASE_MS", "retry-base-ms", "200", "first retry delay; doubles, with jitter, up to 30 s", INT, I(retry_base_ms), 1, 60000, 0, 0},
    {"SBX_KAFKA_SESSION_TIMEOUT_MS", "kafka-session-timeout-ms", "10000", "how soon a dead worker's partitions move", INT, I(session_timeout_ms), 1000, 3600000, 0, 0},
    {"SBX_SHUTDOWN_GRACE_MS", "shutdown-grace-ms", "30000", "on SIGTERM, how long running builds may finish", INT, I(shutdown_grace_ms), 0, 86400000, 0, 0},
    {"SBX_PROJECT_POLICY", "project-policy", "queue", "when a project already has a build running: queue (wait), reject (end the new job canceled) or supersede (cancel the older builds)", STR, S(project_policy), 0, 0, 0, 0},
    {"SBX_ADMIN_LISTEN", "admin-listen", "", "ip:port of /healthz, /readyz and /metrics (Prometheus); empty: off", STR, S(admin_listen), 0, 0, 0, 0},
    {"SBX_LOG_LEVEL", "log-level", "info", "debug, info, warn or error", STR, S(log_level), 0, 0, 0, 0},
    {"SBX_KAFKA_CONF", "kafka-conf", "", "extra librdkafka settings, k=v[,k=v]", STR, S(kafka_conf), 0, 0, 0, 0},
    {"SBX_DOCKER_HOSTS", "docker-hosts", "", "docker provider: name=unix:///sock@capacity or name=tcp://host:port@capacity, comma-separated", STR, S(docker_hosts), 0, 0, 0, 0},
    {"SBX_DOCKER_IMAGE", "docker-image", "", "docker provider: image of jobs that name none", STR, S(docker_image), 0, 0, 0, 0},
};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))

void sbx_config_print(const sbx_config *cfg, FILE *out) { sbx_opts_print(opts, NOPTS, cfg, out); }

int sbx_config_load(sbx_config *cfg, int argc, char **argv, FILE *err)
{
    int bad;

    memset(cfg, 0, sizeof(*cfg));
    bad = sbx_opts_load("sbx-worker", opts, NOPTS, cfg, argc, argv, err);
    if (bad == 2)
        return 2;
    if (sbx_opts_log_level("sbx-worker", cfg->log_level, err))
        bad = 1;
    if (sbx__provider_parse(cfg->provider, &cfg->provider_kind) != 0) {
        fprintf(err, "sbx-worker: SBX_PROVIDER=%s is not known: use local, vmpool, docker or fly\n",
                cfg->provider);
        bad = 1;
    }
    if (strcmp(cfg->project_policy, "queue") == 0) {
        cfg->policy = SBX_POLICY_QUEUE;
    } else if (strcmp(cfg->project_policy, "reject") == 0) {
        cfg->policy = SBX_POLICY_REJECT;
    } else if (strcmp(cfg->project_policy, "supersede") == 0) {
        cfg->policy = SBX_POLICY_SUPERSEDE;
    } else {
        fprintf(err, "sbx-worker: SBX_PROJECT_POLICY=%s is not known: use queue, reject or "
                     "supersede\n", cfg->project_policy);
        bad = 1;
    }
    {
        char e[256];
        if (sbx_egress_check("SBX_EGRESS_ALLOW", cfg->egress_allow, e, sizeof(e)) ||
            sbx_egress_check("SBX_EGRESS_DENY", cfg->egress_deny, e, sizeof(e))) {
            fprintf(err, "sbx-worker: %s\n", e);
            bad = 1;
        }
    }
    if (cfg->provider_kind == SBX_PROVIDER_DOCKER && !*cfg->docker_hosts) {
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
