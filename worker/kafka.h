/* kafka.h — intake: the consumer group, commit watermarks, the dead-letter
 * producer, and back-pressure.
 *
 * Offsets are stored for commit only through sbx_kafka_done(), which the job
 * state machine calls once a job's outcome is durable in PostgreSQL (or its
 * message is safely in the dead-letter topic). librdkafka's auto-commit then
 * commits only those stored offsets (enable.auto.offset.store=false).
 */
#ifndef SBX_KAFKA_H
#define SBX_KAFKA_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"
#include "offsets.h"

typedef struct sbx_kafka sbx_kafka;

typedef struct sbx_kafka_msg {
    const char *topic;
    int32_t partition;
    int64_t offset;
    const char *key;        /* NUL-terminated copy, or NULL */
    size_t key_len;
    const char *payload;
    size_t len;
    int64_t timestamp_ms;   /* the message's Kafka timestamp (wall clock, ms); -1: none */
    sbx_offset_ref ref;     /* hand to sbx_kafka_done() when finished */
} sbx_kafka_msg;

typedef void (*sbx_kafka_msg_cb)(void *arg, const sbx_kafka_msg *m);

typedef struct sbx_kafka_config {
    const char *brokers, *topic, *dlq_topic, *group, *client_id;
    int session_timeout_ms;
    int max_inflight;               /* intake pauses at this many unfinished offsets */
    int join_later;                 /* 1: do not subscribe yet (sbx_kafka_join() will) */
    const char *const *extra;       /* "key=value" librdkafka settings, NULL-terminated */
} sbx_kafka_config;

int sbx_kafka_new(sbx_loop *loop, const sbx_kafka_config *cfg, sbx_kafka_msg_cb cb, void *arg,
                  sbx_kafka **out, char *err, size_t errlen);
/* Leaves the group (commits stored offsets) and frees. */
void sbx_kafka_close(sbx_kafka *k);
/* Group membership. join subscribes to the job topic (0, or -EIO); leave
 * unsubscribes: the partitions are revoked like in a rebalance (stored
 * offsets committed, unfinished ones not, trackers dropped; running jobs
 * untouched) and the group rebalances at once. Both are idempotent. */
int sbx_kafka_join(sbx_kafka *k);
void sbx_kafka_leave(sbx_kafka *k);
int sbx_kafka_member(const sbx_kafka *k);

void sbx_kafka_done(sbx_kafka *k, const sbx_offset_ref *ref);
/* Publishes a dead-letter envelope (JSON, copied) keyed like the original;
 * once the broker acknowledged it, ref is marked done (unless ref is NULL).
 * A publish that fails is retried with backoff until it succeeds or the
 * intake closes; only -ENOMEM is returned. */
int sbx_kafka_dead_letter(sbx_kafka *k, const char *key, size_t key_len, const char *json,
                          size_t len, const sbx_offset_ref *ref);
/* The same, but once the broker has it cb(arg, 1) is called instead of
 * marking ref done (the caller has more to do first: dlq.c records it);
 * cb(arg, 0) when it was dropped because ref's partition was revoked. ref
 * still names the offset whose commit waits (sbx_kafka_stalls) and whose
 * revocation drops the envelope. Never called once sbx_kafka_close began. */
typedef void (*sbx_kafka_dlq_cb)(void *arg, int published);
int sbx_kafka_dead_letter_cb(sbx_kafka *k, const char *key, size_t key_len, const char *json,
                             size_t len, const sbx_offset_ref *ref, sbx_kafka_dlq_cb cb,
                             void *arg);
/* Dead letters whose publish has failed (or has not been acknowledged for
 * 10 s) and whose offset therefore holds its partition's commit back: where,
 * since when (sbx_now_ms of the first failure, or of the publish), how often
 * it failed, the last error. At most max; returns how many. */
typedef struct sbx_kafka_stall {
    int32_t partition;
    int64_t offset;
    uint64_t since_ms;
    int failures;
    char error[128];
} sbx_kafka_stall;
int sbx_kafka_stalls(const sbx_kafka *k, sbx_kafka_stall *out, int max);
/* The oldest unfinished offset of each assigned partition (offsets.h). */
int sbx_kafka_oldest(const sbx_kafka *k, sbx_offset_oldest *out, int max);
/* Stop / start taking new messages (shutdown). */
void sbx_kafka_hold(sbx_kafka *k, int hold);
size_t sbx_kafka_pending(const sbx_kafka *k);
/* Whether a broker is reachable: from librdkafka's statistics (every
 * statistics.interval.ms, 5 s by default) and its all-brokers-down error. */
int sbx_kafka_up(const sbx_kafka *k);
typedef struct sbx_kafka_lag {
    int32_t partition;
    int64_t lag;
} sbx_kafka_lag;
/* Consumer lag per assigned partition, as of the last statistics. */
int sbx_kafka_lag_get(const sbx_kafka *k, sbx_kafka_lag *out, int max);
int sbx_kafka_assigned_count(const sbx_kafka *k);
/* The intake wait: from a message's timestamp (the producer's CreateTime, or
 * the broker's append on a LogAppendTime topic) to the moment the loop took
 * it from librdkafka, over every message taken so far. Returns the wait in
 * ms at percentile pct (0-100; SBX_KAFKA_WAIT_MS_MAX means that or more) and
 * sets *n to how many messages it is over; -1 before the first. */
#define SBX_KAFKA_WAIT_MS_MAX 10000
int sbx_kafka_intake_wait_ms(const sbx_kafka *k, double pct, uint64_t *n);

#endif
