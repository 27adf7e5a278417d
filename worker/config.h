/* config.h — sbx-worker settings: environment variables, overridden by flags.
 *
 * Every setting has one environment name (SBX_*) and one flag (--kebab-case);
 * README.md's configuration table is generated from the same list
 * (`sbx-worker --help`). Validation happens once at start; each bad setting
 * prints one line naming the variable and the fix, and start-up stops.
 */
#ifndef SBX_CONFIG_H
#define SBX_CONFIG_H

#include <stdio.h>

#include "sbx.h"

/* SBX_PROVIDER, parsed once (the names live in providers.c). */
typedef enum sbx_provider_kind {
    SBX_PROVIDER_LOCAL, SBX_PROVIDER_VMPOOL, SBX_PROVIDER_DOCKER, SBX_PROVIDER_FLY,
    SBX_PROVIDER_BENCH,         /* only in sbx-worker-bench (make bench) */
} sbx_provider_kind;

/* A worker runs each kind at most once. */
#define SBX_PROVIDERS_MAX 5

/* SBX_PROJECT_POLICY: what a job does when its project already has a build. */
typedef enum sbx_project_policy {
    SBX_POLICY_QUEUE,           /* wait for the running build */
    SBX_POLICY_REJECT,          /* end the new job canceled */
    SBX_POLICY_SUPERSEDE,       /* cancel the older builds, run the newest */
} sbx_project_policy;

typedef struct sbx_config {
    char brokers[512];
    char topic[128];
    char dlq_topic[128];
    /* SBX_DLQ_PAYLOAD_MAX: bytes of redacted payload a dead letter keeps.
     * Default 64 KiB: with JSON escaping (at most 2x on json-c's output) and
     * the other fields an envelope stays far below Kafka's default 1 MB
     * message.max.bytes; the cap of 256 KiB keeps it below in any case. */
    int dlq_payload_max;
    int log_max_bytes;          /* SBX_LOG_MAX_BYTES: live log text per attempt (runlog.h) */
    char group[128];
    char redis_url[512];
    char database_url[1024];
    char worker_id[128];
    char node[128];
    char provider[64];          /* SBX_PROVIDER as given: one name, or several in spill-over order */
    sbx_provider_kind provider_kinds[SBX_PROVIDERS_MAX];
    int nproviders;
    int local_slots;
    char work_dir[512];
    int uid_base;
    int allow_network;
    char egress_allow[2048];    /* SBX_EGRESS_ALLOW: CIDRs and host names, comma-separated */
    char egress_deny[2048];     /* SBX_EGRESS_DENY */
    int lease_ttl_ms;
    int max_inflight;
    int max_attempts;
    char price_per_hour[128];       /* SBX_PRICE_PER_HOUR: a decimal or name=decimal,...; "" unset */
    int warm;                       /* SBX_WARM */
    char preview_listen[64];        /* SBX_PREVIEW_LISTEN: "" no previews */
    char preview_ports[32];
    int preview_port_min, preview_port_max;
    char preview_public_host[128];
    char preview_secret[128];
    char price_paused_per_hour[128]; /* SBX_PRICE_PAUSED_PER_HOUR, the same form */
    int retry_base_ms;
    int session_timeout_ms;
    int shutdown_grace_ms;
    int startup_wait_ms;        /* deps.c: wait for Redis and PostgreSQL at start */
    int dependency_grace_ms;    /* deps.c: a dependency down this long: leave the group */
    char log_level[16];
    char log_format[8];         /* SBX_LOG_FORMAT: text or json */
    char project_policy[16];
    sbx_project_policy policy;
    char admin_listen[64];      /* "" = no admin endpoint */
    char kafka_conf[1024];  /* extra librdkafka settings, comma-separated k=v */
    /* SBX_KAFKA_*: TLS and SASL to the brokers (libsbx's sbx_kafka_security). */
    char kafka_security_protocol[32];
    char kafka_ssl_ca[512];
    char kafka_ssl_cert[512];
    char kafka_ssl_key[512];
    char kafka_sasl_mechanism[32];
    char kafka_sasl_username[256];
    char kafka_sasl_password[256];
    char kafka_sasl_password_file[512];
    char docker_hosts[2048];/* name=endpoint@capacity[,...] */
    char docker_image[512];
    char docker_cert_dir[512];          /* https hosts: <dir>/<name>/{ca,cert,key}.pem */
    char docker_ssh_known_hosts[512];
    char docker_ssh_key[512];
    int docker_insecure_tcp;            /* tcp:// to non-loopback addresses allowed */

    char docker_registry_auth[4096]; /* base64url JSON: a token or user/password/server */
    char retention[32];         /* SBX_RETENTION as given: 7d, 24h, 3600s, 0 */
    long long retention_s;      /* the same in seconds; 0 = keep runs forever */
    char dlq_retention[32];     /* SBX_DLQ_RETENTION, the same for sbx.dead_letters */
    long long dlq_retention_s;
} sbx_config;

/* Fills cfg from the environment and argv. Returns 0, or 1 after printing
 * one line per problem to err, or 2 when --help was asked (usage printed). */
int sbx_config_load(sbx_config *cfg, int argc, char **argv, FILE *err);
/* The provider name's kind (providers.c); -EINVAL when not built in. */
int sbx__provider_parse(const char *name, sbx_provider_kind *out);
void sbx_config_print(const sbx_config *cfg, FILE *out);
/* Whether SBX_PROVIDER names kind. */
int sbx__config_runs(const sbx_config *cfg, sbx_provider_kind kind);
/* provider's price in list (SBX_PRICE_PER_HOUR or ..._PAUSED_...: one
 * price for all, or name=price,...) into out: 1, or 0 when it has none. */
int sbx__config_price(const char *list, const char *provider, char *out, size_t outlen);
/* The SBX_DOCKER_* settings checked as the docker provider will check them
 * (providers.c); 0, or -EINVAL with one line in err. */
int sbx__docker_check(const sbx_config *cfg, char *err, size_t errlen);
/* --check-config: every docker host asked GET /_ping the way runs reach it
 * (providers.c, sbx_docker_probe()); report once per host. Returns the
 * hosts that failed, or -errno with err. */
int sbx__docker_probe(const sbx_config *cfg, int timeout_ms,
                      void (*report)(void *arg, const char *host, int ok, const char *msg),
                      void *arg, char *err, size_t errlen);

/* Every librdkafka setting of the worker's clients: the SBX_KAFKA_*
 * security ones first, then SBX_KAFKA_CONF's entries (which may override
 * them). The SASL password is in it: wipe it once the clients exist. */
#define SBX_KAFKA_SETTINGS_MAX (SBX_KAFKA_SECURITY_MAX + 32)
typedef struct sbx_kafka_settings {
    char security[SBX_KAFKA_SECURITY_BUF];
    char conf[sizeof(((sbx_config *)0)->kafka_conf)];
    const char *kv[SBX_KAFKA_SETTINGS_MAX + 1];     /* "key=value", NULL-terminated */
} sbx_kafka_settings;
/* 0, or -1 with one line in err naming the variable and the fix. */
int sbx__config_kafka_settings(const sbx_config *cfg, sbx_kafka_settings *ks, char *err,
                               size_t errlen);
void sbx__config_kafka_settings_wipe(sbx_kafka_settings *ks);

#endif
