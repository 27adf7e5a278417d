/* kafka.c — librdkafka 2.0 on the sbx loop.
 *
 * librdkafka runs its own threads; we talk to it only through queues. Each
 * queue (the consumer's, the dead-letter producer's) writes a byte into a
 * pipe when it goes from empty to non-empty (rd_kafka_queue_io_event_enable),
 * and the loop watches the pipe. Because that wake-up is edge-like, a wake-up
 * drains the queue; to bound one iteration's work, at most DRAIN_BUDGET
 * messages are taken and a 0 ms timer continues. A 1 s timer polls as well so
 * max.poll.interval.ms is never hit while idle; no message waits for it (the
 * io event comes with the first message into an unserved queue). How long
 * messages waited from their timestamp until the loop took them is kept per
 * millisecond (sbx_kafka_intake_wait_ms; the stats line shows p50 and p99),
 * so a slow intake can be told from a slow broker or a slow database.
 *
 * Dead letters: an envelope (dlq.c keeps it small enough for the topic)
 * stays ours until the broker acknowledges it. A publish that fails (the
 * topic missing, over its max.message.bytes, no broker) is tried again on
 * a timer, 0.5 s doubling to 30 s with jitter, for as long as it takes: its
 * offset is unfinished meanwhile and the partition's commit waits, which
 * /metrics and /readyz show (sbx_kafka_stalls). Giving up instead would
 * leave the offset unfinished for good, and the partition with it.
 *
 * Rebalance: the eager `range` strategy (cooperative-sticky has known bugs
 * before librdkafka 2.1). On revoke we commit what is stored and drop the
 * partitions' trackers; builds keep running (the new owner sees the job's
 * live lease and waits for it; see job.c).
 *
 * Membership (deps.c decides when): sbx_kafka_join() subscribes,
 * sbx_kafka_leave() unsubscribes. librdkafka then revokes through the same
 * callback as a rebalance (commit what is stored, drop the trackers) and
 * sends LeaveGroup, so the group rebalances at once instead of after
 * session.timeout.ms; a later subscribe joins again as a new member. While
 * out, messages still queued for the old assignment are skipped untracked,
 * so no job is started and no offset stored for a partition being given up.
 *
 * The dead-letter producer never asks the broker to create its topic
 * (allow.auto.create.topics=false): a topic born from a metadata request
 * gets the broker's defaults (its retention would delete dead letters), and
 * a misspelt SBX_DLQ_TOPIC would fill a topic nobody reads. A missing topic
 * is a failed publish like any other (retried, a stall in /readyz) until
 * someone creates it; `sbx-worker --check-config` says so up front.
 *
 * Latency: fetch.min.bytes stays 1, so the broker answers a fetch as soon as
 * a message is appended (fetch.wait.max.ms only bounds an idle fetch), and
 * the consumer's socket has Nagle off: a fetch request written while a
 * heartbeat or commit is still unacknowledged would otherwise wait for that
 * acknowledgement.
 *
 * Extra settings (config.c: the SBX_KAFKA_* TLS and SASL ones, then
 * SBX_KAFKA_CONF) configure the consumer; those that say how to reach and
 * authenticate to the brokers (security.*, sasl.*, ssl.*) configure the
 * dead-letter producer as well, or it would talk plaintext to a TLS port.
 */
#include "kafka.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include <json-c/json.h>

#include "log.h"
#include "sbx.h"

/* Messages handled per loop iteration before yielding to other sockets. */
#define DRAIN_BUDGET 512
/* The queue of messages fetched ahead: small, since intake is paused by
 * back-pressure anyway, and a pause purges what was prefetched. */
#define QUEUED_MAX_KB "4096"

/* The intake wait is kept in 1 ms buckets up to SBX_KAFKA_WAIT_MS_MAX, the
 * last holding everything beyond: 80 KiB a worker, for percentiles exact to
 * the millisecond that Kafka's timestamps have anyway, and counters that do
 * not wrap. */
#define WAIT_BUCKETS (SBX_KAFKA_WAIT_MS_MAX + 1)

/* Partitions whose lag is kept (the job topic has tens). */
#define SBX_KAFKA_LAG_MAX 1024

/* Retries of a dead-letter publish: 0.5 s doubling up to 30 s, each
 * jittered down to half, so workers that lost the topic together do not
 * come back in step. */
#define DLQ_RETRY_BASE_MS 500
#define DLQ_RETRY_MAX_MS 30000
/* A dead letter not acknowledged after this long counts as a stall even
 * before it failed: librdkafka keeps a message for a topic it cannot find
 * (auto-creation off) queued for message.timeout.ms, 5 min by default. */
#define DLQ_STALL_AFTER_MS 10000
/* How soon the dead-letter producer gives up on a topic the broker says it
 * does not know (librdkafka's default: 30 s), and how often it asks again:
 * a topic created meanwhile is seen within this, not after librdkafka's
 * 5 min refresh. One metadata request per 10 s is nothing to a broker. */
#define DLQ_TOPIC_REFRESH_MS "10000"

typedef struct dlq_op {
    sbx_offset_ref ref;
    int has_ref;
    sbx_kafka_dlq_cb cb;            /* called instead of marking ref done */
    void *cb_arg;
    sbx_kafka *k;
    char *key, *json;
    size_t key_len, len;
    int failures;
    uint64_t created_ms, first_failure_ms;
    char last_error[128];
    sbx_timer retry;
    struct dlq_op *prev, *next;     /* every op not yet acknowledged: k->ops */
} dlq_op;

struct sbx_kafka {
    sbx_loop *loop;
    rd_kafka_t *rk, *dlq;
    rd_kafka_queue_t *q, *dlq_q;
    rd_kafka_topic_partition_list_t *assigned;
    int pipe_c[2], pipe_d[2];
    sbx_io io_c, io_d;
    sbx_timer drain, tick;
    char *topic, *dlq_topic;
    sbx_offsets *offsets;
    sbx_kafka_msg_cb cb;
    void *arg;
    int max_inflight;
    int paused;     /* by back-pressure */
    int held;       /* by shutdown */
    int closing;
    int member;     /* subscribed (sbx_kafka_join), not left */
    int up;         /* -1 unknown yet, 0 no broker reachable, 1 reachable */
    sbx_kafka_lag lag[SBX_KAFKA_LAG_MAX];
    int nlag;
    dlq_op *ops;
    uint64_t wait_ms[WAIT_BUCKETS];     /* intake wait: messages per ms */
    uint64_t waits;
};

static void op_free(dlq_op *op);

static int conf_set(rd_kafka_conf_t *c, const char *k, const char *v, char *err, size_t errlen)
{
    char e[256], kv[600], shown[600];
    if (rd_kafka_conf_set(c, k, v, e, sizeof(e)) != RD_KAFKA_CONF_OK) {
        /* sasl.password=... is shown as ***. */
        snprintf(kv, sizeof(kv), "%s=%s", k, v);
        sbx_log_redact(kv, shown, sizeof(shown));
        explicit_bzero(kv, sizeof(kv));
        snprintf(err, errlen, "kafka setting %s: %s", shown, e);
        return -EINVAL;
    }
    return 0;
}

/* Settings the dead-letter producer needs as much as the consumer: how to
 * reach and authenticate to the brokers (and librdkafka's test hooks).
 * The rest (fetch sizes, timeouts) is the consumer's. */
static int client_wide(const char *key)
{
    return strncmp(key, "security.", 9) == 0 || strncmp(key, "sasl.", 5) == 0 ||
           strncmp(key, "ssl.", 4) == 0 || strncmp(key, "enable.ssl.", 11) == 0 ||
           strncmp(key, "test.", 5) == 0;
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    sbx_log(level <= 3 ? SBX_LOG_ERROR : level <= 4 ? SBX_LOG_WARN : level <= 6 ? SBX_LOG_INFO
                                                                              : SBX_LOG_DEBUG,
            "kafka", "%s: %s", fac, buf);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    sbx_kafka *k = opaque;
    (void)rk;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN && k)
        k->up = 0;
    /* A refused password or an untrusted certificate does not heal by
     * retrying (librdkafka retries anyway, in case the broker side is being
     * fixed): say which settings to look at. */
    if (err == RD_KAFKA_RESP_ERR__AUTHENTICATION)
        sbx_error("kafka", "%s: %s; check SBX_KAFKA_SASL_MECHANISM, SBX_KAFKA_SASL_USERNAME and "
                           "the password", rd_kafka_err2name(err), reason);
    else if (err == RD_KAFKA_RESP_ERR__SSL)
        sbx_error("kafka", "%s: %s; check SBX_KAFKA_SSL_CA (the CA of the brokers' "
                           "certificates), SBX_BROKERS (a TLS listener, by a name its "
                           "certificate holds), and SBX_KAFKA_SSL_CERT/KEY if the brokers "
                           "require a client certificate",
                  rd_kafka_err2name(err), reason);
    else
        sbx_warn("kafka", "%s: %s", rd_kafka_err2name(err), reason);
}

/* librdkafka's statistics JSON: broker states and per-partition consumer
 * lag. Runs on our thread (from a poll). */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    sbx_kafka *k = opaque;
    json_object *root = json_tokener_parse(json), *brokers, *topics, *t, *parts;
    int up = 0;
    (void)rk;
    (void)len;
    if (!root)
        return 0;
    if (json_object_object_get_ex(root, "brokers", &brokers)) {
        json_object_object_foreach(brokers, name, b) {
            json_object *st, *id;
            (void)name;
            if (json_object_object_get_ex(b, "nodeid", &id) && json_object_get_int(id) >= 0 &&
                json_object_object_get_ex(b, "state", &st) &&
                strcmp(json_object_get_string(st), "UP") == 0)
                up = 1;
        }
        k->up = up;
    }
    k->nlag = 0;
    if (json_object_object_get_ex(root, "topics", &topics) &&
        json_object_object_get_ex(topics, k->topic, &t) &&
        json_object_object_get_ex(t, "partitions", &parts)) {
        json_object_object_foreach(parts, pid, p) {
            json_object *lag;
            int id = atoi(pid);
            if (id < 0 || k->nlag == SBX_KAFKA_LAG_MAX || !sbx_offsets_assigned(k->offsets, id))
                continue;
            if (json_object_object_get_ex(p, "consumer_lag", &lag)) {
                k->lag[k->nlag].partition = id;
                k->lag[k->nlag].lag = json_object_get_int64(lag) < 0 ? 0 : json_object_get_int64(lag);
                k->nlag++;
            }
        }
    }
    json_object_put(root);
    return 0;
}

int sbx_kafka_up(const sbx_kafka *k)
{
    return k->up == 1 || (k->up == -1 && k->assigned && k->assigned->cnt > 0);
}

int sbx_kafka_lag_get(const sbx_kafka *k, sbx_kafka_lag *out, int max)
{
    int n = k->nlag < max ? k->nlag : max;
    memcpy(out, k->lag, (size_t)n * sizeof(*out));
    return n;
}

/* ---- partitions and back-pressure ---- */

static void set_paused(sbx_kafka *k, int paused)
{
    rd_kafka_resp_err_t e;
    if (!k->assigned || k->assigned->cnt == 0)
        return;
    e = paused ? rd_kafka_pause_partitions(k->rk, k->assigned)
               : rd_kafka_resume_partitions(k->rk, k->assigned);
    if (e)
        sbx_warn("kafka", "%s partitions: %s", paused ? "pause" : "resume", rd_kafka_err2str(e));
}

static void update_pause(sbx_kafka *k)
{
    size_t pending = sbx_offsets_pending(k->offsets);
    int want = k->held || pending >= (size_t)k->max_inflight;
    /* Resume at half so a busy worker does not flap per message. */
    if (k->paused && !k->held && pending > (size_t)k->max_inflight / 2)
        want = 1;
    if (want == k->paused)
        return;
    k->paused = want;
    sbx_info("kafka", "intake %s (%zu jobs in flight, max %d)", want ? "paused" : "resumed",
             pending, k->max_inflight);
    set_paused(k, want);
}

/* A dead letter waiting for its retry whose partition was revoked is
 * dropped: its offset is not committed, so the partition's next owner
 * dead-letters the message itself, and publishing ours too would make two.
 * One in librdkafka's hands is dropped when its publish fails. */
static void drop_dead_letters(sbx_kafka *k, int32_t partition)
{
    for (dlq_op *op = k->ops, *next; op; op = next) {
        next = op->next;
        if (!op->has_ref || op->ref.partition != partition || !sbx_timer_active(&op->retry))
            continue;
        sbx_warn("kafka", "dead letter of p%d@%lld dropped: the partition was revoked; its next "
                          "owner dead-letters it", (int)partition, (long long)op->ref.offset);
        if (op->cb && !k->closing)
            op->cb(op->cb_arg, 0);
        op_free(op);
    }
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    sbx_kafka *k = opaque;
    int i;

    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        /* Which partitions, so an operator (and the multi-host test) can
         * see who took over a dead host's share; cut at the buffer's end. */
        char list[256];
        size_t used = 0;
        list[0] = '\0';
        for (i = 0; i < parts->cnt; i++) {
            sbx_offsets_assign(k->offsets, parts->elems[i].partition);
            if (used < sizeof(list)) {
                int n = snprintf(list + used, sizeof(list) - used, "%s%d", i ? "," : "",
                                 (int)parts->elems[i].partition);
                used += n > 0 ? (size_t)n : 0;
            }
        }
        sbx_info("kafka", "assigned %d partitions: %s", parts->cnt, list);
        rd_kafka_assign(rk, parts);
        if (k->assigned)
            rd_kafka_topic_partition_list_destroy(k->assigned);
        k->assigned = rd_kafka_topic_partition_list_copy(parts);
        if (k->paused)
            set_paused(k, 1);
        return;
    }
    /* Revoke: commit what is durable, then let go. */
    {
        rd_kafka_resp_err_t ce = rd_kafka_commit(rk, NULL, 0);
        if (ce && ce != RD_KAFKA_RESP_ERR__NO_OFFSET)
            sbx_warn("kafka", "commit on revoke: %s", rd_kafka_err2str(ce));
    }
    for (i = 0; i < parts->cnt; i++) {
        sbx_offsets_revoke(k->offsets, parts->elems[i].partition);
        drop_dead_letters(k, parts->elems[i].partition);
    }
    sbx_info("kafka", "revoked %d partitions", parts->cnt);
    rd_kafka_assign(rk, NULL);
    if (k->assigned) {
        rd_kafka_topic_partition_list_destroy(k->assigned);
        k->assigned = NULL;
    }
}

/* ---- consuming ---- */

static void handle(sbx_kafka *k, rd_kafka_message_t *m)
{
    sbx_kafka_msg msg;
    char keybuf[512];
    int rc;

    if (m->err) {
        if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            sbx_warn("kafka", "consume: %s", rd_kafka_message_errstr(m));
        return;
    }
    if (!k->member) {
        sbx_debug("kafka", "p%d@%lld skipped: leaving the group", (int)m->partition,
                  (long long)m->offset);
        return;
    }
    memset(&msg, 0, sizeof(msg));
    rc = sbx_offsets_track(k->offsets, m->partition, m->offset, &msg.ref);
    if (rc == -EALREADY) {
        sbx_debug("kafka", "p%d@%lld seen already", (int)m->partition, (long long)m->offset);
        return;
    }
    if (rc) {
        sbx_warn("kafka", "p%d@%lld arrived for a partition not assigned; skipped",
                 (int)m->partition, (long long)m->offset);
        return;
    }
    msg.topic = rd_kafka_topic_name(m->rkt);
    msg.partition = m->partition;
    msg.offset = m->offset;
    if (m->key && m->key_len < sizeof(keybuf)) {
        memcpy(keybuf, m->key, m->key_len);
        keybuf[m->key_len] = '\0';
        msg.key = keybuf;
        msg.key_len = m->key_len;
    }
    msg.payload = m->payload ? m->payload : "";
    msg.len = m->len;
    /* CreateTime as the producer set it (LogAppendTime on a topic that says
     * so): when the job was enqueued, for the queue-wait histograms. */
    msg.timestamp_ms = rd_kafka_message_timestamp(m, NULL);
    if (msg.timestamp_ms > 0) {
        int64_t w = (int64_t)sbx_wall_ms() - msg.timestamp_ms;
        /* Clocks of other hosts may run ahead: that counts as no wait. */
        k->wait_ms[w < 0 ? 0 : w >= WAIT_BUCKETS ? WAIT_BUCKETS - 1 : w]++;
        k->waits++;
    }
    k->cb(k->arg, &msg);
}

static void drain_consumer(sbx_kafka *k)
{
    char buf[64];
    int n;

    while (read(k->pipe_c[0], buf, sizeof(buf)) > 0)
        ;
    for (n = 0; n < DRAIN_BUDGET; n++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(k->rk, 0);
        if (!m)
            break;
        handle(k, m);
        rd_kafka_message_destroy(m);
        update_pause(k);
    }
    if (n == DRAIN_BUDGET)
        sbx_timer_start(k->loop, &k->drain, 0);
}

static void on_consumer_io(sbx_io *io, int events)
{
    (void)events;
    drain_consumer(io->data);
}

static void on_drain_timer(sbx_timer *t) { drain_consumer(t->data); }

/* ---- dead letters ---- */

static void op_free(dlq_op *op)
{
    sbx_kafka *k = op->k;
    sbx_timer_stop(k->loop, &op->retry);
    if (op->prev)
        op->prev->next = op->next;
    else
        k->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    free(op->key);
    free(op->json);
    free(op);
}

static void op_failed(dlq_op *op, const char *why)
{
    sbx_kafka *k = op->k;
    uint64_t delay = DLQ_RETRY_MAX_MS;

    if (op->failures++ == 0)
        op->first_failure_ms = sbx_now_ms();
    snprintf(op->last_error, sizeof(op->last_error), "%s", why);
    if (op->failures < 16 && ((uint64_t)DLQ_RETRY_BASE_MS << (op->failures - 1)) < delay)
        delay = (uint64_t)DLQ_RETRY_BASE_MS << (op->failures - 1);
    delay = delay / 2 + (uint64_t)rand() % (delay / 2 + 1);
    if (op->has_ref)
        sbx_error("kafka", "dead-letter publish for p%d@%lld failed (%d times): %s; "
                           "retrying in %llu ms, the partition's commit waits",
                  (int)op->ref.partition, (long long)op->ref.offset, op->failures, why,
                  (unsigned long long)delay);
    else
        sbx_error("kafka", "dead-letter publish failed (%d times): %s; retrying in %llu ms",
                  op->failures, why, (unsigned long long)delay);
    sbx_timer_start(k->loop, &op->retry, delay);
}

/* Hands op to librdkafka; a refusal on the spot is retried like a failed
 * delivery. */
static void op_publish(dlq_op *op)
{
    sbx_kafka *k = op->k;
    rd_kafka_resp_err_t e;

    e = rd_kafka_producev(k->dlq, RD_KAFKA_V_TOPIC(k->dlq_topic),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_KEY(op->key, op->key ? op->key_len : 0),
                          RD_KAFKA_V_VALUE(op->json, op->len), RD_KAFKA_V_OPAQUE(op),
                          RD_KAFKA_V_END);
    if (e)
        op_failed(op, rd_kafka_err2str(e));
}

static void on_retry(sbx_timer *t) { op_publish(t->data); }

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    dlq_op *op = m->_private;
    sbx_kafka *k = op->k;
    (void)rk;
    (void)opaque;
    if (m->err && !k->closing &&
        (!op->has_ref || sbx_offsets_assigned(k->offsets, op->ref.partition))) {
        op_failed(op, rd_kafka_err2str(m->err));
        return;
    }
    if (m->err && !k->closing) {
        sbx_warn("kafka", "dead letter of p%d@%lld dropped after a failed publish: the partition "
                          "was revoked; its next owner dead-letters it",
                 (int)op->ref.partition, (long long)op->ref.offset);
        if (op->cb)
            op->cb(op->cb_arg, 0);
    } else if (m->err) {
        /* Closing: the offset stays unfinished, so the message is
         * redelivered and dead-lettered by the next owner. */
        sbx_error("kafka", "dead-letter publish abandoned at exit: %s", rd_kafka_err2str(m->err));
    } else {
        if (op->failures)
            sbx_info("kafka", "dead-letter publish succeeded after %d failures", op->failures);
        if (op->cb && !k->closing)
            op->cb(op->cb_arg, 1);
        else if (op->has_ref && !op->cb)
            sbx_kafka_done(k, &op->ref);
    }
    op_free(op);
}

static void drain_dlq(sbx_kafka *k)
{
    char buf[64];
    while (read(k->pipe_d[0], buf, sizeof(buf)) > 0)
        ;
    rd_kafka_poll(k->dlq, 0);
}

static void on_dlq_io(sbx_io *io, int events)
{
    (void)events;
    drain_dlq(io->data);
}

static void on_tick(sbx_timer *t)
{
    sbx_kafka *k = t->data;
    drain_consumer(k);
    drain_dlq(k);
    sbx_timer_start(k->loop, &k->tick, 1000);
}

int sbx_kafka_dead_letter(sbx_kafka *k, const char *key, size_t key_len, const char *json,
                          size_t len, const sbx_offset_ref *ref)
{
    return sbx_kafka_dead_letter_cb(k, key, key_len, json, len, ref, NULL, NULL);
}

int sbx_kafka_dead_letter_cb(sbx_kafka *k, const char *key, size_t key_len, const char *json,
                             size_t len, const sbx_offset_ref *ref, sbx_kafka_dlq_cb cb,
                             void *arg)
{
    dlq_op *op = calloc(1, sizeof(*op));

    if (!op || !(op->json = malloc(len ? len : 1)) ||
        (key && !(op->key = malloc(key_len ? key_len : 1)))) {
        if (op)
            free(op->json);
        free(op);
        return -ENOMEM;
    }
    memcpy(op->json, json, len);
    op->len = len;
    if (key) {
        memcpy(op->key, key, key_len);
        op->key_len = key_len;
    }
    op->k = k;
    op->cb = cb;
    op->cb_arg = arg;
    if (ref) {
        op->ref = *ref;
        op->has_ref = 1;
    }
    sbx_timer_init(&op->retry, on_retry, op);
    op->created_ms = sbx_now_ms();
    op->next = k->ops;
    if (k->ops)
        k->ops->prev = op;
    k->ops = op;
    op_publish(op);
    return 0;
}

int sbx_kafka_stalls(const sbx_kafka *k, sbx_kafka_stall *out, int max)
{
    uint64_t now = sbx_now_ms();
    int n = 0;
    for (const dlq_op *op = k->ops; op && n < max; op = op->next) {
        if (!op->has_ref || (!op->failures && now - op->created_ms < DLQ_STALL_AFTER_MS) ||
            !sbx_offsets_assigned(k->offsets, op->ref.partition))
            continue;
        out[n].partition = op->ref.partition;
        out[n].offset = op->ref.offset;
        out[n].since_ms = op->failures ? op->first_failure_ms : op->created_ms;
        out[n].failures = op->failures;
        snprintf(out[n].error, sizeof(out[n].error), "%s",
                 op->failures ? op->last_error : "not acknowledged yet");
        n++;
    }
    return n;
}

int sbx_kafka_oldest(const sbx_kafka *k, sbx_offset_oldest *out, int max)
{
    return sbx_offsets_oldest(k->offsets, out, max);
}

/* ---- life ---- */

void sbx_kafka_done(sbx_kafka *k, const sbx_offset_ref *ref)
{
    int64_t wm = sbx_offsets_done(k->offsets, ref);
    if (wm >= 0) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, k->topic, ref->partition)->offset = wm;
        rd_kafka_resp_err_t e = rd_kafka_offsets_store(k->rk, l);
        if (e)
            sbx_warn("kafka", "store offset p%d@%lld: %s", (int)ref->partition, (long long)wm,
                     rd_kafka_err2str(e));
        rd_kafka_topic_partition_list_destroy(l);
    }
    update_pause(k);
}

void sbx_kafka_hold(sbx_kafka *k, int hold)
{
    k->held = hold;
    update_pause(k);
}

size_t sbx_kafka_pending(const sbx_kafka *k) { return sbx_offsets_pending(k->offsets); }
int sbx_kafka_member(const sbx_kafka *k) { return k->member; }

int sbx_kafka_join(sbx_kafka *k)
{
    rd_kafka_topic_partition_list_t *topics;
    rd_kafka_resp_err_t e;

    if (k->member)
        return 0;
    topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, k->topic, RD_KAFKA_PARTITION_UA);
    e = rd_kafka_subscribe(k->rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (e) {
        sbx_error("kafka", "subscribe to %s: %s", k->topic, rd_kafka_err2str(e));
        return -EIO;
    }
    k->member = 1;
    sbx_info("kafka", "joining group (topic %s)", k->topic);
    return 0;
}

void sbx_kafka_leave(sbx_kafka *k)
{
    rd_kafka_resp_err_t e;

    if (!k->member)
        return;
    k->member = 0;
    e = rd_kafka_unsubscribe(k->rk);
    if (e)
        sbx_warn("kafka", "unsubscribe: %s", rd_kafka_err2str(e));
    sbx_info("kafka", "leaving group (%zu offsets unfinished stay uncommitted)",
             sbx_offsets_pending(k->offsets));
}
int sbx_kafka_assigned_count(const sbx_kafka *k) { return k->assigned ? k->assigned->cnt : 0; }

int sbx_kafka_intake_wait_ms(const sbx_kafka *k, double pct, uint64_t *n)
{
    /* Nearest rank, as the bench computes its own percentiles. */
    uint64_t rank = (uint64_t)ceil(pct / 100.0 * (double)k->waits), seen = 0;
    *n = k->waits;
    if (!k->waits)
        return -1;
    if (rank < 1)
        rank = 1;
    for (int i = 0; i < WAIT_BUCKETS; i++) {
        seen += k->wait_ms[i];
        if (seen >= rank)
            return i;
    }
    return WAIT_BUCKETS - 1;
}

static int make_pipe(int p[2])
{
    return pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0 ? -errno : 0;
}

int sbx_kafka_new(sbx_loop *loop, const sbx_kafka_config *cfg, sbx_kafka_msg_cb cb, void *arg,
                  sbx_kafka **out, char *err, size_t errlen)
{
    sbx_kafka *k;
    rd_kafka_conf_t *cc = NULL, *pc = NULL;
    char e[512], num[32];
    int rc = -EINVAL;

    k = calloc(1, sizeof(*k));
    if (!k)
        return -ENOMEM;
    k->pipe_c[0] = k->pipe_c[1] = k->pipe_d[0] = k->pipe_d[1] = -1;
    k->loop = loop;
    k->cb = cb;
    k->arg = arg;
    k->max_inflight = cfg->max_inflight;
    k->up = -1;
    k->offsets = sbx_offsets_new();
    k->topic = strdup(cfg->topic);
    k->dlq_topic = strdup(cfg->dlq_topic);
    sbx_timer_init(&k->drain, on_drain_timer, k);
    sbx_timer_init(&k->tick, on_tick, k);
    if (!k->offsets || !k->topic || !k->dlq_topic || make_pipe(k->pipe_c) || make_pipe(k->pipe_d)) {
        snprintf(err, errlen, "out of memory or file descriptors");
        goto fail;
    }

    /* Consumer. */
    cc = rd_kafka_conf_new();
    pc = rd_kafka_conf_new();
    snprintf(num, sizeof(num), "%d", cfg->session_timeout_ms);
    if (conf_set(cc, "bootstrap.servers", cfg->brokers, err, errlen) ||
        conf_set(cc, "group.id", cfg->group, err, errlen) ||
        conf_set(cc, "client.id", cfg->client_id, err, errlen) ||
        conf_set(cc, "enable.auto.offset.store", "false", err, errlen) ||
        conf_set(cc, "enable.auto.commit", "true", err, errlen) ||
        conf_set(cc, "auto.commit.interval.ms", "500", err, errlen) ||
        conf_set(cc, "auto.offset.reset", "earliest", err, errlen) ||
        conf_set(cc, "partition.assignment.strategy", "range", err, errlen) ||
        conf_set(cc, "session.timeout.ms", num, err, errlen) ||
        conf_set(cc, "queued.max.messages.kbytes", QUEUED_MAX_KB, err, errlen) ||
        conf_set(cc, "statistics.interval.ms", "5000", err, errlen) ||
        conf_set(cc, "socket.nagle.disable", "true", err, errlen) ||
        conf_set(pc, "bootstrap.servers", cfg->brokers, err, errlen) ||
        conf_set(pc, "client.id", cfg->client_id, err, errlen) ||
        conf_set(pc, "enable.idempotence", "true", err, errlen) ||
        conf_set(pc, "linger.ms", "5", err, errlen) ||
        conf_set(pc, "allow.auto.create.topics", "false", err, errlen) ||
        conf_set(pc, "topic.metadata.propagation.max.ms", DLQ_TOPIC_REFRESH_MS, err, errlen) ||
        conf_set(pc, "topic.metadata.refresh.interval.ms", DLQ_TOPIC_REFRESH_MS, err, errlen))
        goto fail;
    for (const char *const *x = cfg->extra; x && *x; x++) {
        char kv[SBX_KAFKA_SECURITY_BUF], *eq;
        int bad;
        snprintf(kv, sizeof(kv), "%s", *x);
        eq = strchr(kv, '=');
        if (!eq) {
            sbx_log_redact(*x, e, sizeof(e));
            snprintf(err, errlen, "kafka setting '%s' is not key=value", e);
            goto fail;
        }
        *eq = '\0';
        bad = conf_set(cc, kv, eq + 1, err, errlen) ||
              (client_wide(kv) && conf_set(pc, kv, eq + 1, err, errlen));
        explicit_bzero(kv, sizeof(kv));
        if (bad)
            goto fail;
    }
    rd_kafka_conf_set_log_cb(cc, on_log);
    rd_kafka_conf_set_log_cb(pc, on_log);
    rd_kafka_conf_set_error_cb(cc, on_error);
    rd_kafka_conf_set_error_cb(pc, on_error);
    rd_kafka_conf_set_rebalance_cb(cc, on_rebalance);
    rd_kafka_conf_set_stats_cb(cc, on_stats);
    rd_kafka_conf_set_opaque(cc, k);
    rd_kafka_conf_set_dr_msg_cb(pc, on_delivery);

    k->rk = rd_kafka_new(RD_KAFKA_CONSUMER, cc, e, sizeof(e));
    if (!k->rk) {
        snprintf(err, errlen, "kafka consumer: %s", e);
        goto fail;
    }
    cc = NULL;
    k->dlq = rd_kafka_new(RD_KAFKA_PRODUCER, pc, e, sizeof(e));
    if (!k->dlq) {
        snprintf(err, errlen, "kafka producer: %s", e);
        goto fail;
    }
    pc = NULL;
    rd_kafka_poll_set_consumer(k->rk);
    k->q = rd_kafka_queue_get_consumer(k->rk);
    k->dlq_q = rd_kafka_queue_get_main(k->dlq);
    rd_kafka_queue_io_event_enable(k->q, k->pipe_c[1], "1", 1);
    rd_kafka_queue_io_event_enable(k->dlq_q, k->pipe_d[1], "1", 1);
    sbx_io_init(&k->io_c, k->pipe_c[0], on_consumer_io, k);
    sbx_io_init(&k->io_d, k->pipe_d[0], on_dlq_io, k);
    sbx_io_set(loop, &k->io_c, SBX_READ);
    sbx_io_set(loop, &k->io_d, SBX_READ);

    if (!cfg->join_later && sbx_kafka_join(k) != 0) {
        snprintf(err, errlen, "kafka subscribe to %s failed", cfg->topic);
        goto fail;
    }
    sbx_timer_start(loop, &k->tick, 1000);
    *out = k;
    return 0;
fail:
    if (cc)
        rd_kafka_conf_destroy(cc);
    if (pc)
        rd_kafka_conf_destroy(pc);
    sbx_kafka_close(k);
    return rc;
}

void sbx_kafka_close(sbx_kafka *k)
{
    if (!k)
        return;
    sbx_timer_stop(k->loop, &k->drain);
    sbx_timer_stop(k->loop, &k->tick);
    sbx_io_stop(&k->io_c);
    sbx_io_stop(&k->io_d);
    k->closing = 1;
    if (k->dlq) {
        rd_kafka_flush(k->dlq, 5000);
        /* What the broker did not take in time fails now, and its op is
         * freed by its delivery report (closing: not retried). */
        rd_kafka_purge(k->dlq, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_poll(k->dlq, 0);
        if (k->dlq_q)
            rd_kafka_queue_destroy(k->dlq_q);
        rd_kafka_destroy(k->dlq);
    }
    if (k->rk) {
        if (k->q)
            rd_kafka_queue_destroy(k->q);
        rd_kafka_consumer_close(k->rk);
        rd_kafka_destroy(k->rk);
    }
    if (k->assigned)
        rd_kafka_topic_partition_list_destroy(k->assigned);
    for (int i = 0; i < 2; i++) {
        if (k->pipe_c[i] >= 0)
            close(k->pipe_c[i]);
        if (k->pipe_d[i] >= 0)
            close(k->pipe_d[i]);
    }
    while (k->ops)
        op_free(k->ops);
    sbx_offsets_free(k->offsets);
    free(k->topic);
    free(k->dlq_topic);
    free(k);
}
