/* topics.c — `sbx topics create|describe`: the job topic and the dead-letter
 * topic, made with librdkafka's admin API (CreateTopics, DescribeConfigs,
 * Metadata), so a deployment needs neither Kafka's shell tools nor a JVM.
 *
 * Why each setting is what it is:
 * - partitions: the consumer group hands each partition to one worker, so a
 *   worker beyond the partition count idles; a few per worker let a
 *   rebalance after a host's death spread its share over the others instead
 *   of doubling one worker's load. The key is the project id: more
 *   partitions never split one project's messages.
 * - replication: 3 (the usual production choice) or as many brokers as
 *   answer if fewer, with min.insync.replicas 2 from 3 replicas on, because
 *   libsbx produces with acks=all: one broker may die without losing an
 *   acknowledged job or refusing new ones.
 * - max.message.bytes: SBX_RECORD_MAX_BYTES on both topics, the largest
 *   batch libsbx sends (one job of SBX_MSG_MAX_BYTES plus key and headers).
 *   Kafka's default (1048588) refuses the largest valid job. Dead-letter
 *   envelopes are far smaller (SBX_DLQ_PAYLOAD_MAX, at most 256 KiB, of
 *   payload; the worker's producer sends at most librdkafka's 1000000), and
 *   `sbx dlq replay` sends originals back to the job topic.
 * - retention.ms + segment.ms, the longest a job message stays (Kafka drops
 *   whole segments), must stay below the worker's SBX_RETENTION and
 *   SBX_DLQ_RETENTION: a run or dead letter forgotten while its message is
 *   still in the topic would run, or be dead-lettered, again on a replay.
 *   segment.ms is the retention itself, at most a day.
 * - cleanup.policy=delete, said explicitly: a compacted job topic would keep
 *   only the newest job of each project.
 *
 * Idempotent, never destructive: an existing topic is compared with what
 * would have been made, and each difference is printed with the tool that
 * changes it; nothing is altered, because adding partitions moves keys and
 * shrinking is impossible, which an operator decides, not a set-up script.
 */
#include "cli.h"
#include "sbx.h"

#include <librdkafka/rdkafka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_PARTITIONS 12
#define DEFAULT_DLQ_PARTITIONS 1
#define DEFAULT_REPLICATION 3
#define DEFAULT_RETENTION_S (3LL * 86400)
#define DEFAULT_WORKER_RETENTION_S (7LL * 86400)      /* sbx-worker's SBX_RETENTION */
#define DEFAULT_WORKER_DLQ_RETENTION_S (30LL * 86400) /* and SBX_DLQ_RETENTION */
#define DEFAULT_TIMEOUT_S 30
#define SEGMENT_MAX_S 86400LL
/* Durations: at most 100 years, as SBX_RETENTION. */
#define DURATION_MAX_S (36500LL * 86400)
/* Kafka's own limit on partitions per topic is far above this; more than a
 * worker per partition of this many is no deployment sbx was measured on. */
#define PARTITIONS_MAX 10000
#define REPLICATION_MAX 16
/* Metadata is asked for again this often while waiting for leaders. */
#define POLL_MS 200

/* The configs sbx sets, in the order they are printed. */
enum { C_MAX_BYTES, C_RETENTION, C_SEGMENT, C_MIN_ISR, C_CLEANUP, NCONF };
static const char *const conf_names[NCONF] = {
    "max.message.bytes", "retention.ms", "segment.ms", "min.insync.replicas", "cleanup.policy",
};

struct topic {
    const char *name;
    int partitions, replication;
    char want[NCONF][24];   /* what create sets */
    char have[NCONF][64];   /* what the broker says ("" unknown) */
    int have_partitions, have_replication;   /* -1: no such topic */
};

struct topics_opts {
    int partitions, dlq_partitions, replication;
    long long retention_s, dlq_retention_s;
    const char *dlq_topic;
    const char **kafka;
    size_t nkafka;
    int timeout_s;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int left_ms(long long deadline)
{
    long long l = deadline - now_ms();
    return l > 0 ? (int)l : 0;
}

/* The admin client: the TLS and SASL settings every command shares
 * (sbx__cli_kafka_settings: SBX_KAFKA_*, SBX_KAFKA_CONF), then -X ones. */
static rd_kafka_t *admin_new(const struct sbx__cli_config *cfg, const struct topics_opts *o)
{
    char e[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    struct sbx__cli_kafka *settings = sbx__cli_kafka_settings("topics", o->kafka);
    rd_kafka_t *rk = NULL;

    if (!settings) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    /* A metadata request never creates a topic with the broker's defaults. */
    if (rd_kafka_conf_set(conf, "bootstrap.servers", cfg->brokers, e, sizeof e) ||
        rd_kafka_conf_set(conf, "allow.auto.create.topics", "false", e, sizeof e) ||
        rd_kafka_conf_set(conf, "client.id", "sbx-topics", e, sizeof e))
        goto fail;
    for (const char *const *kv = settings->kv; *kv; kv++) {
        char key[128];
        const char *eq = strchr(*kv, '=');
        if (!eq || eq == *kv || (size_t)(eq - *kv) >= sizeof key) {
            snprintf(e, sizeof e, "kafka setting \"%s\": expected key=value", *kv);
            goto fail;
        }
        memcpy(key, *kv, (size_t)(eq - *kv));
        key[eq - *kv] = '\0';
        if (rd_kafka_conf_set(conf, key, eq + 1, e, sizeof e))
            goto fail;
    }
    /* rd_kafka_new takes conf only when it succeeds. */
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof e);
    if (rk)
        goto out;
fail:
    rd_kafka_conf_destroy(conf);
    fprintf(stderr, "sbx topics: %s\n", e);
out:
    sbx__cli_kafka_free(settings);
    return rk;
}

/* Waits for the result event of one admin call. */
static rd_kafka_event_t *wait_result(rd_kafka_queue_t *q, long long deadline)
{
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, left_ms(deadline) + 1000);
    if (!ev) {
        fprintf(stderr, "sbx topics: no answer from the brokers in time\n");
        return NULL;
    }
    if (rd_kafka_event_error(ev)) {
        fprintf(stderr, "sbx topics: %s\n", rd_kafka_event_error_string(ev));
        rd_kafka_event_destroy(ev);
        return NULL;
    }
    return ev;
}

static rd_kafka_AdminOptions_t *admin_options(rd_kafka_t *rk, rd_kafka_admin_op_t op,
                                              long long deadline)
{
    char e[256];
    rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(rk, op);
    int ms = left_ms(deadline) > 1000 ? left_ms(deadline) : 1000;
    rd_kafka_AdminOptions_set_request_timeout(ao, ms, e, sizeof e);
    if (op == RD_KAFKA_ADMIN_OP_CREATETOPICS)
        rd_kafka_AdminOptions_set_operation_timeout(ao, ms, e, sizeof e);
    return ao;
}

/* Fills have_partitions/have_replication of each topic from one metadata
 * answer (-1: absent); *brokers gets the cluster's broker count; *led is
 * set when every partition of every present topic has a leader. */
static int read_metadata(rd_kafka_t *rk, struct topic *t, int n, long long deadline, int *brokers,
                         int *led)
{
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 1, NULL, &md, left_ms(deadline) + 1000);
    if (err) {
        fprintf(stderr, "sbx topics: metadata: %s\n", rd_kafka_err2str(err));
        return -1;
    }
    *brokers = md->broker_cnt;
    *led = 1;
    for (int i = 0; i < n; i++) {
        t[i].have_partitions = t[i].have_replication = -1;
        for (int j = 0; j < md->topic_cnt; j++) {
            const rd_kafka_metadata_topic_t *mt = &md->topics[j];
            if (strcmp(mt->topic, t[i].name) != 0 || mt->err)
                continue;
            t[i].have_partitions = mt->partition_cnt;
            t[i].have_replication = mt->partition_cnt ? mt->partitions[0].replica_cnt : 0;
            for (int p = 0; p < mt->partition_cnt; p++)
                if (mt->partitions[p].leader < 0 || mt->partitions[p].err)
                    *led = 0;
        }
    }
    rd_kafka_metadata_destroy(md);
    return 0;
}

/* Fills have[] of each present topic with the broker's values. */
static int read_configs(rd_kafka_t *rk, rd_kafka_queue_t *q, struct topic *t, int n,
                        long long deadline)
{
    rd_kafka_ConfigResource_t *res[2];
    int nres = 0, rc = -1;
    rd_kafka_event_t *ev = NULL;
    rd_kafka_AdminOptions_t *ao;

    for (int i = 0; i < n && nres < 2; i++)
        if (t[i].have_partitions >= 0)
            res[nres++] = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, t[i].name);
    if (nres == 0)
        return 0;
    ao = admin_options(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS, deadline);
    rd_kafka_DescribeConfigs(rk, res, (size_t)nres, ao, q);
    ev = wait_result(q, deadline);
    if (!ev)
        goto out;
    size_t cnt, centries;
    const rd_kafka_ConfigResource_t **got =
        rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev), &cnt);
    for (size_t r = 0; r < cnt; r++) {
        struct topic *tp = NULL;
        for (int i = 0; i < n; i++)
            if (strcmp(t[i].name, rd_kafka_ConfigResource_name(got[r])) == 0)
                tp = &t[i];
        if (!tp)
            continue;
        if (rd_kafka_ConfigResource_error(got[r])) {
            fprintf(stderr, "sbx topics: %s: configs: %s\n", tp->name,
                    rd_kafka_ConfigResource_error_string(got[r]));
            goto out;
        }
        const rd_kafka_ConfigEntry_t **ents = rd_kafka_ConfigResource_configs(got[r], &centries);
        for (size_t e = 0; e < centries; e++)
            for (int c = 0; c < NCONF; c++)
                if (strcmp(rd_kafka_ConfigEntry_name(ents[e]), conf_names[c]) == 0) {
                    const char *v = rd_kafka_ConfigEntry_value(ents[e]);
                    snprintf(tp->have[c], sizeof tp->have[c], "%s", v ? v : "");
                }
    }
    rc = 0;
out:
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(ao);
    for (int i = 0; i < nres; i++)
        rd_kafka_ConfigResource_destroy(res[i]);
    return rc;
}

/* Creates the absent topics; *created[i] says which were made now. */
static int create(rd_kafka_t *rk, rd_kafka_queue_t *q, struct topic *t, int n, int created[],
                  long long deadline)
{
    rd_kafka_NewTopic_t *nt[2];
    int nnt = 0, rc = 0;
    char e[512];
    rd_kafka_event_t *ev = NULL;
    rd_kafka_AdminOptions_t *ao = NULL;

    for (int i = 0; i < n && nnt < 2; i++) {
        if (t[i].have_partitions >= 0)
            continue;
        nt[nnt] = rd_kafka_NewTopic_new(t[i].name, t[i].partitions, t[i].replication, e, sizeof e);
        if (!nt[nnt]) {
            fprintf(stderr, "sbx topics: %s: %s\n", t[i].name, e);
            rc = -1;
            goto out;
        }
        for (int c = 0; c < NCONF; c++)
            rd_kafka_NewTopic_set_config(nt[nnt], conf_names[c], t[i].want[c]);
        nnt++;
    }
    if (nnt == 0)
        return 0;
    ao = admin_options(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS, deadline);
    rd_kafka_CreateTopics(rk, nt, (size_t)nnt, ao, q);
    ev = wait_result(q, deadline);
    if (!ev) {
        rc = -1;
        goto out;
    }
    size_t cnt;
    const rd_kafka_topic_result_t **res =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &cnt);
    for (size_t r = 0; r < cnt; r++) {
        rd_kafka_resp_err_t err = rd_kafka_topic_result_error(res[r]);
        for (int i = 0; i < n; i++) {
            if (strcmp(t[i].name, rd_kafka_topic_result_name(res[r])) != 0)
                continue;
            if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                created[i] = 1;
            } else if (err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                /* Made by someone else meanwhile: compared below like any other. */
                const char *why = rd_kafka_topic_result_error_string(res[r]);
                fprintf(stderr, "sbx topics: %s: not created: %s\n", t[i].name,
                        why ? why : rd_kafka_err2str(err));
                rc = -1;
            }
        }
    }
out:
    if (ev)
        rd_kafka_event_destroy(ev);
    if (ao)
        rd_kafka_AdminOptions_destroy(ao);
    for (int i = 0; i < nnt; i++)
        rd_kafka_NewTopic_destroy(nt[i]);
    return rc;
}

static void print_settings(const struct topic *t)
{
    printf("%s: %d partitions, replication %d", t->name, t->have_partitions,
           t->have_replication);
    for (int c = 0; c < NCONF; c++)
        printf(", %s=%s", conf_names[c], t->have[c][0] ? t->have[c] : "?");
    printf("\n");
}

/* Prints what differs from what create would make; returns the count. */
static int differences(const struct topic *t)
{
    int n = 0;
    if (t->have_partitions != t->partitions) {
        printf("%s: has %d partitions, not %d (more: kafka-topics.sh --alter --partitions; "
               "fewer: a new topic)\n", t->name, t->have_partitions, t->partitions);
        n++;
    }
    if (t->have_replication != t->replication) {
        printf("%s: has replication %d, not %d (kafka-reassign-partitions.sh)\n", t->name,
               t->have_replication, t->replication);
        n++;
    }
    for (int c = 0; c < NCONF; c++)
        if (strcmp(t->have[c], t->want[c]) != 0) {
            printf("%s: has %s=%s, not %s (kafka-configs.sh --alter --entity-type topics "
                   "--entity-name %s --add-config %s=%s)\n", t->name, conf_names[c],
                   t->have[c][0] ? t->have[c] : "?", t->want[c], t->name, conf_names[c],
                   t->want[c]);
            n++;
        }
    return n;
}

/* The specs of both topics from the options; checks the retention rule. */
static int make_specs(const struct topics_opts *o, const struct sbx__cli_config *cfg,
                      struct topic t[2])
{
    long long worker_ret = DEFAULT_WORKER_RETENTION_S, worker_dlq_ret = DEFAULT_WORKER_DLQ_RETENTION_S;
    const char *env[2] = { getenv("SBX_RETENTION"), getenv("SBX_DLQ_RETENTION") };
    long long *into[2] = { &worker_ret, &worker_dlq_ret };

    for (int i = 0; i < 2; i++)
        if (env[i] && *env[i] && sbx__cli_parse_duration(env[i], DURATION_MAX_S, into[i]) != 0) {
            fprintf(stderr, "sbx topics: %s=%s is not a duration (7d, 24h, 3600s)\n",
                    i ? "SBX_DLQ_RETENTION" : "SBX_RETENTION", env[i]);
            return -1;
        }

    memset(t, 0, 2 * sizeof *t);
    t[0].name = cfg->topic;
    t[0].partitions = o->partitions;
    t[1].name = o->dlq_topic;
    t[1].partitions = o->dlq_partitions;
    const long long ret[2] = { o->retention_s, o->dlq_retention_s };
    for (int i = 0; i < 2; i++) {
        struct topic *tp = &t[i];
        long long seg = ret[i] == 0 || ret[i] > SEGMENT_MAX_S ? SEGMENT_MAX_S : ret[i];
        snprintf(tp->want[C_MAX_BYTES], sizeof tp->want[0], "%d", SBX_RECORD_MAX_BYTES);
        /* 0: keep forever, which is Kafka's -1. */
        snprintf(tp->want[C_RETENTION], sizeof tp->want[0], "%lld",
                 ret[i] ? ret[i] * 1000 : -1LL);
        snprintf(tp->want[C_SEGMENT], sizeof tp->want[0], "%lld", seg * 1000);
        snprintf(tp->want[C_CLEANUP], sizeof tp->want[0], "delete");
    }

    /* The job topic's messages must be gone before their runs and dead letters. */
    for (int i = 0; i < 2; i++) {
        long long limit = i ? worker_dlq_ret : worker_ret;
        long long keep = o->retention_s + (o->retention_s > SEGMENT_MAX_S ? SEGMENT_MAX_S
                                                                          : o->retention_s);
        if (limit == 0)
            continue;  /* the worker keeps them forever */
        if (o->retention_s == 0 || keep >= limit) {
            char kept[32];
            if (o->retention_s)
                snprintf(kept, sizeof kept, "%llds", keep);
            else
                snprintf(kept, sizeof kept, "forever");
            fprintf(stderr,
                    "sbx topics: the job topic would keep a message %s (--retention plus its "
                    "segment.ms), but %s is %llds: a replay would %s; lower --retention or "
                    "raise %s\n",
                    kept, i ? "SBX_DLQ_RETENTION" : "SBX_RETENTION", limit,
                    i ? "dead-letter a forgotten message again" : "run a forgotten job again",
                    i ? "SBX_DLQ_RETENTION" : "SBX_RETENTION");
            return -1;
        }
    }
    return 0;
}

static int parse_opts(int argc, char **argv, struct sbx__cli_config *cfg, struct topics_opts *o)
{
    enum { O_PARTS = 1, O_DLQ_PARTS, O_REPL, O_RET, O_DLQ_RET, O_DLQ_TOPIC, O_TIMEOUT };
    static const struct option opts[] = {
        SBX_CLI_COMMON_OPTIONS,
        { "partitions", required_argument, NULL, O_PARTS },
        { "dlq-partitions", required_argument, NULL, O_DLQ_PARTS },
        { "replication", required_argument, NULL, O_REPL },
        { "retention", required_argument, NULL, O_RET },
        { "dlq-retention", required_argument, NULL, O_DLQ_RET },
        { "dlq-topic", required_argument, NULL, O_DLQ_TOPIC },
        { "timeout", required_argument, NULL, O_TIMEOUT },
        { "kafka", required_argument, NULL, 'X' },
        { 0, 0, 0, 0 },
    };
    const char *dlq_ret = getenv("SBX_DLQ_RETENTION");
    int c;

    o->partitions = DEFAULT_PARTITIONS;
    o->dlq_partitions = DEFAULT_DLQ_PARTITIONS;
    o->replication = 0;  /* from the cluster's size */
    o->retention_s = DEFAULT_RETENTION_S;
    o->dlq_retention_s = DEFAULT_WORKER_DLQ_RETENTION_S;
    if (dlq_ret && *dlq_ret && sbx__cli_parse_duration(dlq_ret, DURATION_MAX_S, &o->dlq_retention_s))
        o->dlq_retention_s = DEFAULT_WORKER_DLQ_RETENTION_S;  /* make_specs says why */
    o->dlq_topic = getenv("SBX_DLQ_TOPIC");
    if (!o->dlq_topic || !*o->dlq_topic)
        o->dlq_topic = "sbx.jobs.dlq";
    o->timeout_s = DEFAULT_TIMEOUT_S;
    o->kafka = calloc((size_t)argc + 1, sizeof *o->kafka);
    if (!o->kafka) {
        fprintf(stderr, "sbx topics: out of memory\n");
        return SBX_EXIT_FAIL;
    }
    opterr = 1;
    while ((c = getopt_long(argc, argv, "hX:", opts, NULL)) != -1) {
        char *end = NULL;
        long v = 0;
        if (c == O_PARTS || c == O_DLQ_PARTS || c == O_REPL || c == O_TIMEOUT)
            v = strtol(optarg, &end, 10);
        switch (c) {
        case O_PARTS:
        case O_DLQ_PARTS:
            if (*end || v < 1 || v > PARTITIONS_MAX) {
                fprintf(stderr, "sbx topics: --%s must be 1 to %d\n",
                        c == O_PARTS ? "partitions" : "dlq-partitions", PARTITIONS_MAX);
                return SBX_EXIT_USAGE;
            }
            *(c == O_PARTS ? &o->partitions : &o->dlq_partitions) = (int)v;
            break;
        case O_REPL:
            if (*end || v < 1 || v > REPLICATION_MAX) {
                fprintf(stderr, "sbx topics: --replication must be 1 to %d\n", REPLICATION_MAX);
                return SBX_EXIT_USAGE;
            }
            o->replication = (int)v;
            break;
        case O_TIMEOUT:
            if (*end || v < 1 || v > 3600) {
                fprintf(stderr, "sbx topics: --timeout must be 1 to 3600 seconds\n");
                return SBX_EXIT_USAGE;
            }
            o->timeout_s = (int)v;
            break;
        case O_RET:
        case O_DLQ_RET:
            if (sbx__cli_parse_duration(optarg, DURATION_MAX_S,
                                        c == O_RET ? &o->retention_s : &o->dlq_retention_s)) {
                fprintf(stderr, "sbx topics: --%s %s is not a duration (3d, 12h, 90m, 3600s)\n",
                        c == O_RET ? "retention" : "dlq-retention", optarg);
                return SBX_EXIT_USAGE;
            }
            break;
        case O_DLQ_TOPIC: o->dlq_topic = optarg; break;
        case 'X': o->kafka[o->nkafka++] = optarg; break;
        case OPT_HELP:
        case 'h':
            sbx__cli_usage("topics", false);
            return -1;
        default:
            if (!sbx__cli_common_option(cfg, c, optarg)) {
                sbx__cli_usage("topics", true);
                return SBX_EXIT_USAGE;
            }
        }
    }
    if (!cfg->brokers || !*cfg->brokers) {
        fprintf(stderr, "sbx topics: no brokers configured: set SBX_BROKERS or pass --brokers\n");
        return SBX_EXIT_USAGE;
    }
    if (strcmp(cfg->topic, o->dlq_topic) == 0) {
        fprintf(stderr, "sbx topics: the job topic and the dead-letter topic are both %s\n",
                o->dlq_topic);
        return SBX_EXIT_USAGE;
    }
    return SBX_EXIT_OK;
}

int sbx__cmd_topics(int argc, char **argv, struct sbx__cli_config *cfg)
{
    struct topics_opts o = { 0 };
    struct topic t[2];
    int created[2] = { 0, 0 };
    int rc, brokers = 0, led = 0, describe;
    rd_kafka_t *rk = NULL;
    rd_kafka_queue_t *q = NULL;
    long long deadline;

    if (argc < 2 || (strcmp(argv[1], "create") != 0 && strcmp(argv[1], "describe") != 0)) {
        if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
            sbx__cli_usage("topics", false);
            return SBX_EXIT_OK;
        }
        sbx__cli_usage("topics", true);
        return SBX_EXIT_USAGE;
    }
    describe = strcmp(argv[1], "describe") == 0;
    rc = parse_opts(argc - 1, argv + 1, cfg, &o);
    if (rc)
        goto out;
    if (make_specs(&o, cfg, t)) {
        rc = SBX_EXIT_USAGE;
        goto out;
    }
    deadline = now_ms() + (long long)o.timeout_s * 1000;
    rc = SBX_EXIT_FAIL;
    if (!(rk = admin_new(cfg, &o)))
        goto out;
    q = rd_kafka_queue_new(rk);

    if (read_metadata(rk, t, 2, deadline, &brokers, &led) != 0)
        goto out;
    for (int i = 0; i < 2; i++) {
        t[i].replication = o.replication ? o.replication
                           : brokers < DEFAULT_REPLICATION ? (brokers > 0 ? brokers : 1)
                                                           : DEFAULT_REPLICATION;
        snprintf(t[i].want[C_MIN_ISR], sizeof t[i].want[0], "%d", t[i].replication >= 3 ? 2 : 1);
    }

    if (describe) {
        rc = SBX_EXIT_OK;
        if (read_configs(rk, q, t, 2, deadline) != 0) {
            rc = SBX_EXIT_FAIL;
            goto out;
        }
        for (int i = 0; i < 2; i++) {
            if (t[i].have_partitions < 0) {
                printf("%s: does not exist (sbx topics create)\n", t[i].name);
                rc = SBX_EXIT_FAIL;
            } else {
                print_settings(&t[i]);
            }
        }
        goto out;
    }

    if (create(rk, q, t, 2, created, deadline) != 0)
        goto out;
    /* Every partition led, so a worker started next finds the topic whole. */
    for (;;) {
        if (read_metadata(rk, t, 2, deadline, &brokers, &led) != 0)
            goto out;
        if (led && t[0].have_partitions >= 0 && t[1].have_partitions >= 0)
            break;
        if (left_ms(deadline) == 0) {
            fprintf(stderr, "sbx topics: partitions still without a leader after %d s\n",
                    o.timeout_s);
            goto out;
        }
        rd_kafka_poll(rk, POLL_MS);
    }
    if (read_configs(rk, q, t, 2, deadline) != 0)
        goto out;
    rc = SBX_EXIT_OK;
    for (int i = 0; i < 2; i++) {
        if (created[i]) {
            printf("%s: created with %d partitions, replication %d\n", t[i].name,
                   t[i].partitions, t[i].replication);
            if (differences(&t[i]) > 0)
                rc = SBX_EXIT_FAIL;   /* a broker policy changed what we asked */
        } else if (differences(&t[i]) == 0) {
            printf("%s: exists with these settings already\n", t[i].name);
        } else {
            rc = SBX_EXIT_FAIL;
        }
    }
    for (int i = 0; i < 2; i++)
        print_settings(&t[i]);
out:
    if (q)
        rd_kafka_queue_destroy(q);
    if (rk)
        rd_kafka_destroy(rk);
    free(o.kafka);
    return rc < 0 ? SBX_EXIT_OK : rc;
}
