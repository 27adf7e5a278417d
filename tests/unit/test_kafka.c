/* test_kafka.c — the Kafka intake (worker/kafka.c, with worker/offsets.c)
 * against the real broker of the test services (SBX_BROKERS; `make
 * unit-kafka` starts one). Without SBX_BROKERS it exits 77.
 *
 * Every test makes its own topics and consumer group, produces with
 * librdkafka, drives the intake on an sbx loop, and reads what the group
 * committed back from the broker (rd_kafka_committed), so what is checked is
 * what a restarted worker would see.
 *
 * Checks: joining the group and delivering every message in order with its
 * key; wake-ups through the queue's io event (not the 1 s tick); bounded work
 * per loop iteration; offsets committed only below finished messages, and a
 * restart redelivering exactly the unfinished suffix; pause at max_inflight,
 * resume at half, hold for shutdown; a rebalance committing what is finished,
 * redelivering the rest once and ignoring stale handles; the dead-letter
 * producer finishing an offset only once the broker has the envelope, and
 * retrying a refused one with backoff (a stall, shown with its offset)
 * until the dead-letter topic takes it;
 * reachability and consumer lag from the statistics; settings refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <librdkafka/rdkafka.h>

#include "kafka.h"
#include "log.h"
#include "svc.h"

/* Messages one intake records; the largest test sends 3000. */
#define MSGS_MAX 4096
/* worker/kafka.c's DRAIN_BUDGET: messages handled per wake-up. */
#define DRAIN_BUDGET 512
/* Long enough for three of the intake's 500 ms auto-commits: when a commit
 * must not happen, this is how long we watch for it. */
#define QUIET_MS 1600
#define WAIT_MS 20000

typedef struct got {
    int32_t partition;
    int64_t offset;
    char topic[96];
    char key[32];
    int has_key;
    char payload[64];
    sbx_offset_ref ref;
} got;

typedef struct intake {
    sbx_kafka *k;
    got msgs[MSGS_MAX];
    int n;
} intake;

static const char *brokers;
static sbx_loop *L;
static rd_kafka_t *P;           /* the tests' own producer */
static int delivery_errors;
static intake A, B;
static int seq;

/* Heartbeats every 500 ms so a rebalance starts within a second, not three. */
static const char *const fast_hb[] = {"heartbeat.interval.ms=500", NULL};

/* ---- broker helpers ---- */

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err) {
        fprintf(stderr, "test_kafka: produce failed: %s\n", rd_kafka_err2str(m->err));
        delivery_errors++;
    }
}

static void name(char *out, size_t len, const char *what)
{
    snprintf(out, len, "tk-%s-%d-%llu-%d", what, (int)getpid(), (unsigned long long)sbx_now_ms(),
             ++seq);
}

static int topic_led(const char *topic, int parts)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *t = rd_kafka_topic_new(P, topic, NULL);
    int ok = 0;
    if (rd_kafka_metadata(P, 0, t, &md, 5000) == 0 && md->topic_cnt == 1 &&
        md->topics[0].err == 0 && md->topics[0].partition_cnt == parts) {
        ok = 1;
        for (int i = 0; i < parts; i++)
            if (md->topics[0].partitions[i].err || md->topics[0].partitions[i].leader < 0)
                ok = 0;
    }
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    return ok;
}

/* Creates a topic (replication 1) and waits until every partition has a
 * leader, as tests/services/sbxsvc.py's create_topics() does. */
/* max_bytes: the topic's max.message.bytes, or NULL for the broker's. */
static void mk_topic_max(const char *topic, int parts, const char *max_bytes)
{
    char err[256];
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, parts, 1, err, sizeof(err));
    rd_kafka_queue_t *q = rd_kafka_queue_new(P);
    rd_kafka_event_t *ev;
    const rd_kafka_topic_result_t **res;
    size_t cnt = 0;
    uint64_t end = sbx_now_ms() + WAIT_MS;

    assert_non_null(nt);
    if (max_bytes)
        assert_int_equal(rd_kafka_NewTopic_set_config(nt, "max.message.bytes", max_bytes), 0);
    rd_kafka_CreateTopics(P, &nt, 1, NULL, q);
    ev = rd_kafka_queue_poll(q, WAIT_MS);
    assert_non_null(ev);
    assert_int_equal(rd_kafka_event_type(ev), RD_KAFKA_EVENT_CREATETOPICS_RESULT);
    res = rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &cnt);
    assert_int_equal(cnt, 1);
    if (rd_kafka_topic_result_error(res[0]))
        fail_msg("create %s: %s", topic, rd_kafka_topic_result_error_string(res[0]));
    rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    while (!topic_led(topic, parts) && sbx_now_ms() < end)
        usleep(50 * 1000);
    assert_true(topic_led(topic, parts));
}

static void mk_topic(const char *topic, int parts) { mk_topic_max(topic, parts, NULL); }

/* Sets the topic's max.message.bytes (AlterConfigs: librdkafka 2.0 has no
 * incremental form; the test topics set nothing else). */
static void set_topic_max(const char *topic, const char *max_bytes)
{
    rd_kafka_ConfigResource_t *r = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic);
    rd_kafka_queue_t *q = rd_kafka_queue_new(P);
    rd_kafka_event_t *ev;
    const rd_kafka_ConfigResource_t **res;
    size_t cnt = 0;

    assert_int_equal(rd_kafka_ConfigResource_set_config(r, "max.message.bytes", max_bytes), 0);
    rd_kafka_AlterConfigs(P, &r, 1, NULL, q);
    ev = rd_kafka_queue_poll(q, WAIT_MS);
    assert_non_null(ev);
    assert_int_equal(rd_kafka_event_type(ev), RD_KAFKA_EVENT_ALTERCONFIGS_RESULT);
    assert_int_equal(rd_kafka_event_error(ev), 0);
    res = rd_kafka_AlterConfigs_result_resources(rd_kafka_event_AlterConfigs_result(ev), &cnt);
    assert_int_equal(cnt, 1);
    assert_int_equal(rd_kafka_ConfigResource_error(res[0]), 0);
    rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_ConfigResource_destroy(r);
}

static void produce(const char *topic, int32_t part, const char *key, const char *val)
{
    assert_int_equal(rd_kafka_producev(P, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(part),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                       RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
                                       RD_KAFKA_V_VALUE((void *)val, strlen(val)),
                                       RD_KAFKA_V_END),
                     0);
}

static void produce_n(const char *topic, int32_t part, int n)
{
    char key[32], val[64];
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "k%d-%d", (int)part, i);
        snprintf(val, sizeof(val), "{\"p\":%d,\"i\":%d}", (int)part, i);
        produce(topic, part, key, val);
    }
}

static void flush(void)
{
    assert_int_equal(rd_kafka_flush(P, WAIT_MS), 0);
    assert_int_equal(delivery_errors, 0);
}

/* A consumer handle of `group` that never joins it: it only asks the group
 * coordinator for committed offsets. */
static rd_kafka_t *checker(const char *group)
{
    char err[256];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_t *rk;
    assert_int_equal(rd_kafka_conf_set(c, "bootstrap.servers", brokers, err, sizeof(err)), 0);
    assert_int_equal(rd_kafka_conf_set(c, "group.id", group, err, sizeof(err)), 0);
    assert_int_equal(rd_kafka_conf_set(c, "enable.auto.commit", "false", err, sizeof(err)), 0);
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof(err));
    assert_non_null(rk);
    return rk;
}

static void checker_free(rd_kafka_t *rk)
{
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
}

/* The group's committed offset, RD_KAFKA_OFFSET_INVALID when none. */
static int64_t committed_with(rd_kafka_t *rk, const char *topic, int32_t part)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    int64_t off;
    rd_kafka_topic_partition_list_add(l, topic, part);
    assert_int_equal(rd_kafka_committed(rk, l, 10000), 0);
    assert_int_equal(l->elems[0].err, 0);
    off = l->elems[0].offset;
    rd_kafka_topic_partition_list_destroy(l);
    return off;
}

static int64_t committed(const char *group, const char *topic, int32_t part)
{
    rd_kafka_t *rk = checker(group);
    int64_t off = committed_with(rk, topic, part);
    checker_free(rk);
    return off;
}

/* ---- the loop ---- */

static void run_for(int ms)
{
    uint64_t end = sbx_now_ms() + (uint64_t)ms;
    while (sbx_now_ms() < end)
        sbx_loop_once(L, 20);
}

typedef int (*cond_fn)(const void *arg);

static int until(cond_fn f, const void *arg, int timeout_ms)
{
    uint64_t end = sbx_now_ms() + (uint64_t)timeout_ms;
    while (!f(arg) && sbx_now_ms() < end)
        sbx_loop_once(L, 20);
    return f(arg);
}

/* Runs the loop until the group has committed `want`; the last value seen. */
static int64_t wait_committed(const char *group, const char *topic, int32_t part, int64_t want)
{
    rd_kafka_t *rk = checker(group);
    uint64_t end = sbx_now_ms() + WAIT_MS;
    int64_t off;
    while ((off = committed_with(rk, topic, part)) != want && sbx_now_ms() < end)
        run_for(100);
    checker_free(rk);
    return off;
}

/* ---- the intake under test ---- */

static void on_msg(void *arg, const sbx_kafka_msg *m)
{
    intake *in = arg;
    got *g;
    assert_true(in->n < MSGS_MAX);
    g = &in->msgs[in->n++];
    memset(g, 0, sizeof(*g));
    g->partition = m->partition;
    g->offset = m->offset;
    g->ref = m->ref;
    snprintf(g->topic, sizeof(g->topic), "%s", m->topic);
    if (m->key) {
        assert_int_equal(strlen(m->key), m->key_len);
        snprintf(g->key, sizeof(g->key), "%s", m->key);
        g->has_key = 1;
    }
    assert_true(m->len < sizeof(g->payload));
    memcpy(g->payload, m->payload, m->len);
}

static int open_with(intake *in, const char *brk, const char *topic, const char *dlq,
                     const char *group, int max_inflight, const char *const *extra, char *err,
                     size_t errlen)
{
    sbx_kafka_config cfg = {
        .brokers = brk,
        .topic = topic,
        .dlq_topic = dlq ? dlq : "sbx.jobs.dlq",
        .group = group,
        .client_id = "test_kafka",
        .session_timeout_ms = 6000,
        .max_inflight = max_inflight,
        .extra = extra,
    };
    memset(in, 0, sizeof(*in));
    return sbx_kafka_new(L, &cfg, on_msg, in, &in->k, err, errlen);
}

static void open_intake(intake *in, const char *topic, const char *dlq, const char *group,
                        int max_inflight, const char *const *extra)
{
    char err[256] = "";
    if (open_with(in, brokers, topic, dlq, group, max_inflight, extra, err, sizeof(err)) != 0)
        fail_msg("sbx_kafka_new: %s", err);
}

static void close_intake(intake *in)
{
    sbx_kafka_close(in->k);
    in->k = NULL;
}

static const got *find(const intake *in, int from, int32_t part, int64_t off)
{
    for (int i = from; i < in->n; i++)
        if (in->msgs[i].partition == part && in->msgs[i].offset == off)
            return &in->msgs[i];
    return NULL;
}

static void done(intake *in, int32_t part, int64_t off)
{
    const got *g = find(in, 0, part, off);
    assert_non_null(g);
    sbx_kafka_done(in->k, &g->ref);
}

typedef struct want_n {
    const intake *in;
    int n;
} want_n;

static int has_n(const void *arg)
{
    const want_n *w = arg;
    return w->in->n >= w->n;
}

static void wait_n(const intake *in, int n)
{
    want_n w = {in, n};
    if (!until(has_n, &w, WAIT_MS))
        fail_msg("%d messages delivered, waited for %d", in->n, n);
}

typedef struct want_assigned {
    const intake *a, *b;
    int na, nb;
} want_assigned;

static int has_assigned(const void *arg)
{
    const want_assigned *w = arg;
    return sbx_kafka_assigned_count(w->a->k) == w->na &&
           (!w->b || sbx_kafka_assigned_count(w->b->k) == w->nb);
}

static void wait_assigned(const intake *in, int n)
{
    want_assigned w = {in, NULL, n, 0};
    assert_true(until(has_assigned, &w, WAIT_MS));
}

/* ---- tests ---- */

static void t_settings_refused(void **state)
{
    const char *const no_eq[] = {"heartbeat.interval.ms", NULL};
    const char *const unknown[] = {"no.such.setting=1", NULL};
    char err[256] = "";
    (void)state;
    assert_int_not_equal(open_with(&A, brokers, "t", NULL, "g", 10, no_eq, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "not key=value"));
    err[0] = '\0';
    assert_int_not_equal(open_with(&A, brokers, "t", NULL, "g", 10, unknown, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "no.such.setting"));
}

static void t_join_and_deliver(void **state)
{
    char topic[96], group[96];
    int lat[5];
    (void)state;
    name(topic, sizeof(topic), "join");
    name(group, sizeof(group), "g");
    mk_topic(topic, 2);
    produce_n(topic, 0, 5);
    produce_n(topic, 1, 5);
    flush();

    open_intake(&A, topic, NULL, group, 1000, NULL);
    wait_n(&A, 10);
    assert_int_equal(sbx_kafka_assigned_count(A.k), 2);
    assert_true(sbx_kafka_up(A.k));
    assert_int_equal(sbx_kafka_pending(A.k), 10);
    for (int32_t p = 0; p < 2; p++) {
        int64_t next = 0;
        for (int i = 0; i < A.n; i++) {
            const got *g = &A.msgs[i];
            char key[32], val[64];
            if (g->partition != p)
                continue;
            /* In order within a partition, each once. */
            assert_int_equal(g->offset, next);
            snprintf(key, sizeof(key), "k%d-%d", (int)p, (int)next);
            snprintf(val, sizeof(val), "{\"p\":%d,\"i\":%d}", (int)p, (int)next);
            assert_string_equal(g->topic, topic);
            assert_true(g->has_key);
            assert_string_equal(g->key, key);
            assert_string_equal(g->payload, val);
            next++;
        }
        assert_int_equal(next, 5);
    }

    /* A message produced while the intake idles arrives through the
     * consumer queue's io event, well before the 1 s tick would poll it.
     * One of five may meet a slow moment of the shared machine. */
    for (int i = 0; i < 5; i++) {
        uint64_t t0;
        char val[32];
        snprintf(val, sizeof(val), "late-%d", i);
        produce(topic, 0, NULL, val);
        flush();
        t0 = sbx_now_ms();
        wait_n(&A, 11 + i);
        lat[i] = (int)(sbx_now_ms() - t0);
        assert_false(A.msgs[10 + i].has_key);
        assert_string_equal(A.msgs[10 + i].payload, val);
        run_for(50);
    }
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            if (lat[j] < lat[i]) {
                int t = lat[i];
                lat[i] = lat[j];
                lat[j] = t;
            }
    print_message("io-event latencies (ms, sorted): %d %d %d %d %d\n", lat[0], lat[1], lat[2],
                  lat[3], lat[4]);
    assert_true(lat[3] < 400);
    assert_int_equal(A.n, 15);
    close_intake(&A);
}

/* A wake-up handles at most DRAIN_BUDGET messages; a 0 ms timer continues,
 * so other handles get their turn between batches. */
static int probe_last, probe_max_batch;
static sbx_timer probe;

static void probe_count(void)
{
    int batch = A.n - probe_last;
    if (batch > probe_max_batch)
        probe_max_batch = batch;
    probe_last = A.n;
}

static void on_probe(sbx_timer *t)
{
    probe_count();
    sbx_timer_start(L, t, 0);
}

static void t_drain_is_bounded(void **state)
{
    char topic[96], group[96];
    const int total = 3000;
    (void)state;
    name(topic, sizeof(topic), "drain");
    name(group, sizeof(group), "g");
    mk_topic(topic, 1);
    produce_n(topic, 0, total);
    flush();

    probe_last = probe_max_batch = 0;
    sbx_timer_start(L, &probe, 0);
    open_intake(&A, topic, NULL, group, 100000, NULL);
    wait_n(&A, total);
    sbx_timer_stop(L, &probe);
    probe_count();
    for (int i = 0; i < total; i++)
        assert_int_equal(A.msgs[i].offset, i);
    print_message("largest batch between two turns of a 0 ms timer: %d of %d\n",
                  probe_max_batch, total);
    /* One iteration may run the io callback, the drain timer and the 1 s
     * tick: three budgets at most. */
    assert_true(probe_max_batch > 0);
    assert_true(probe_max_batch <= 3 * DRAIN_BUDGET);
    close_intake(&A);
}

static void t_commits_only_below_finished(void **state)
{
    char topic[96], group[96];
    (void)state;
    name(topic, sizeof(topic), "wm");
    name(group, sizeof(group), "g");
    mk_topic(topic, 1);
    produce_n(topic, 0, 6);
    flush();
    open_intake(&A, topic, NULL, group, 1000, NULL);
    wait_n(&A, 6);
    assert_int_equal(committed(group, topic, 0), RD_KAFKA_OFFSET_INVALID);

    /* Finished out of order: 0 is still running, nothing may be committed. */
    done(&A, 0, 1);
    done(&A, 0, 3);
    done(&A, 0, 4);
    assert_int_equal(sbx_kafka_pending(A.k), 3);
    run_for(QUIET_MS);
    assert_int_equal(committed(group, topic, 0), RD_KAFKA_OFFSET_INVALID);

    done(&A, 0, 0);
    assert_int_equal(wait_committed(group, topic, 0, 2), 2);
    done(&A, 0, 2);
    assert_int_equal(wait_committed(group, topic, 0, 5), 5);
    assert_int_equal(sbx_kafka_pending(A.k), 1);
    done(&A, 0, 5);
    assert_int_equal(wait_committed(group, topic, 0, 6), 6);
    /* (Finishing an offset twice is a caller bug that offsets.c asserts
     * against: test_offsets checks it.) */
    assert_int_equal(sbx_kafka_pending(A.k), 0);
    run_for(QUIET_MS);
    assert_int_equal(committed(group, topic, 0), 6);
    assert_int_equal(A.n, 6);
    close_intake(&A);
}

static void t_restart_redelivers_unfinished_suffix(void **state)
{
    char topic[96], group[96];
    (void)state;
    name(topic, sizeof(topic), "restart");
    name(group, sizeof(group), "g");
    mk_topic(topic, 1);
    produce_n(topic, 0, 5);
    flush();
    open_intake(&A, topic, NULL, group, 1000, NULL);
    wait_n(&A, 5);
    done(&A, 0, 0);
    done(&A, 0, 1);
    done(&A, 0, 3);
    /* Closing leaves the group and commits what is stored, at once. */
    close_intake(&A);
    assert_int_equal(committed(group, topic, 0), 2);

    /* The next owner sees 2, 3 and 4: 3 finished, but it sits above an
     * unfinished offset, so it comes again (at least once, never skipped). */
    open_intake(&B, topic, NULL, group, 1000, NULL);
    wait_n(&B, 3);
    run_for(QUIET_MS);
    assert_int_equal(B.n, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(B.msgs[i].offset, 2 + i);
    for (int i = 0; i < 3; i++)
        sbx_kafka_done(B.k, &B.msgs[i].ref);
    assert_int_equal(wait_committed(group, topic, 0, 5), 5);
    close_intake(&B);
}

static void t_backpressure_pause_resume(void **state)
{
    char topic[96], group[96];
    const int total = 20;
    (void)state;
    name(topic, sizeof(topic), "bp");
    name(group, sizeof(group), "g");
    mk_topic(topic, 1);
    produce_n(topic, 0, total);
    flush();

    /* Paused at 4 unfinished: what was fetched beyond them is not handed
     * out. */
    open_intake(&A, topic, NULL, group, 4, NULL);
    wait_n(&A, 4);
    run_for(QUIET_MS);
    assert_int_equal(A.n, 4);
    assert_int_equal(sbx_kafka_pending(A.k), 4);

    /* Resumes only at half (2), so a busy worker does not flap. */
    done(&A, 0, 0);
    run_for(QUIET_MS);
    assert_int_equal(A.n, 4);
    done(&A, 0, 1);
    wait_n(&A, 6);
    run_for(QUIET_MS);
    assert_int_equal(A.n, 6);
    for (int i = 0; i < A.n; i++)
        assert_int_equal(A.msgs[i].offset, i);

    /* Finishing everything as it comes drains the partition, in order. */
    {
        uint64_t end = sbx_now_ms() + WAIT_MS;
        int next_done = 2;
        while (next_done < total && sbx_now_ms() < end) {
            while (next_done < A.n)
                sbx_kafka_done(A.k, &A.msgs[next_done++].ref);
            assert_true(sbx_kafka_pending(A.k) <= 4);
            sbx_loop_once(L, 20);
        }
        assert_int_equal(next_done, total);
    }
    assert_int_equal(A.n, total);
    for (int i = 0; i < total; i++)
        assert_int_equal(A.msgs[i].offset, i);
    assert_int_equal(wait_committed(group, topic, 0, total), total);
    close_intake(&A);
}

static void t_hold_stops_intake(void **state)
{
    char topic[96], group[96];
    (void)state;
    name(topic, sizeof(topic), "hold");
    name(group, sizeof(group), "g");
    mk_topic(topic, 1);
    produce_n(topic, 0, 3);
    flush();

    /* Held before the group is joined: the assignment starts paused. */
    open_intake(&A, topic, NULL, group, 1000, NULL);
    sbx_kafka_hold(A.k, 1);
    wait_assigned(&A, 1);
    run_for(QUIET_MS);
    assert_int_equal(A.n, 0);
    sbx_kafka_hold(A.k, 0);
    wait_n(&A, 3);

    /* Held while assigned: new messages wait. */
    sbx_kafka_hold(A.k, 1);
    produce_n(topic, 0, 2);
    flush();
    run_for(QUIET_MS);
    assert_int_equal(A.n, 3);
    sbx_kafka_hold(A.k, 0);
    wait_n(&A, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(A.msgs[i].offset, i);
    close_intake(&A);
}

typedef struct split {
    const intake *a, *b;
    int base_a, base_b, want;
} split;

static int redelivered(const void *arg)
{
    const split *s = arg;
    return (s->a->n - s->base_a) + (s->b->n - s->base_b) >= s->want;
}

static void t_rebalance(void **state)
{
    char topic[96], group[96];
    static const struct {
        int32_t part;
        int64_t off;
    } again[] = {{0, 1}, {0, 2}, {1, 2}, {3, 0}, {3, 1}, {3, 2}};
    const int nagain = (int)(sizeof(again) / sizeof(again[0]));
    split s;
    want_assigned two = {&A, &B, 2, 2};
    got stale;
    (void)state;
    name(topic, sizeof(topic), "rb");
    name(group, sizeof(group), "g");
    mk_topic(topic, 4);
    for (int32_t p = 0; p < 4; p++)
        produce_n(topic, p, 3);
    flush();

    open_intake(&A, topic, NULL, group, 1000, fast_hb);
    wait_n(&A, 12);
    assert_int_equal(sbx_kafka_assigned_count(A.k), 4);
    /* Finished: p0 up to 0, p1 up to 1, p2 all; p3 nothing. */
    done(&A, 0, 0);
    done(&A, 1, 0);
    done(&A, 1, 1);
    done(&A, 2, 0);
    done(&A, 2, 1);
    done(&A, 2, 2);
    stale = *find(&A, 0, 3, 0);

    /* A second member joins: the eager `range` strategy revokes all four
     * from A, which commits what is finished before letting go, and gives
     * two to each. */
    s = (split){&A, &B, A.n, 0, nagain};
    open_intake(&B, topic, NULL, group, 1000, fast_hb);
    assert_true(until(has_assigned, &two, WAIT_MS));
    assert_int_equal(committed(group, topic, 0), 1);
    assert_int_equal(committed(group, topic, 1), 2);
    assert_int_equal(committed(group, topic, 2), 3);
    assert_int_equal(committed(group, topic, 3), RD_KAFKA_OFFSET_INVALID);

    /* Everything unfinished comes again, once, to whoever owns it now. */
    if (!until(redelivered, &s, WAIT_MS))
        fail_msg("redelivered %d + %d, want %d", A.n - s.base_a, B.n, nagain);
    run_for(QUIET_MS);
    assert_int_equal((A.n - s.base_a) + B.n, nagain);
    for (int i = 0; i < nagain; i++) {
        const got *ga = find(&A, s.base_a, again[i].part, again[i].off);
        const got *gb = find(&B, 0, again[i].part, again[i].off);
        assert_true((ga != NULL) != (gb != NULL));
    }
    assert_int_equal(sbx_kafka_pending(A.k) + sbx_kafka_pending(B.k), (size_t)nagain);

    /* A job that was running when its partition moved finishes: its handle
     * is of the old assignment, so nothing is stored. */
    sbx_kafka_done(A.k, &stale.ref);
    run_for(QUIET_MS);
    assert_int_equal(committed(group, topic, 3), RD_KAFKA_OFFSET_INVALID);
    assert_int_equal(sbx_kafka_pending(A.k) + sbx_kafka_pending(B.k), (size_t)nagain);

    /* The new owners finish theirs; every partition is committed to its end. */
    for (int i = s.base_a; i < A.n; i++)
        sbx_kafka_done(A.k, &A.msgs[i].ref);
    for (int i = 0; i < B.n; i++)
        sbx_kafka_done(B.k, &B.msgs[i].ref);
    for (int32_t p = 0; p < 4; p++)
        assert_int_equal(wait_committed(group, topic, p, 3), 3);

    /* B leaves: A takes all four back and receives nothing again. */
    s.base_a = A.n;
    close_intake(&B);
    wait_assigned(&A, 4);
    run_for(QUIET_MS);
    assert_int_equal(A.n, s.base_a);
    close_intake(&A);
}

static void t_dead_letter(void **state)
{
    char topic[96], dlq[96], group[96], *big;
    const size_t big_len = 2u << 20;   /* above the producer's message.max.bytes (1 MB) */
    const char *env0 = "{\"reason\":\"invalid\",\"n\":0}", *env1 = "{\"reason\":\"invalid\",\"n\":1}";
    rd_kafka_t *c;
    rd_kafka_conf_t *conf;
    rd_kafka_topic_partition_list_t *l;
    char err[256];
    int seen = 0;
    uint64_t end;
    (void)state;
    name(topic, sizeof(topic), "dl");
    name(dlq, sizeof(dlq), "dlq");
    name(group, sizeof(group), "g");
    mk_topic(topic, 1);
    mk_topic(dlq, 1);
    produce_n(topic, 0, 3);
    flush();
    open_intake(&A, topic, dlq, group, 1000, NULL);
    wait_n(&A, 3);

    /* The offset is finished once the broker has acknowledged the
     * envelope. */
    assert_int_equal(sbx_kafka_dead_letter(A.k, A.msgs[0].key, strlen(A.msgs[0].key), env0,
                                           strlen(env0), &A.msgs[0].ref),
                     0);
    assert_int_equal(wait_committed(group, topic, 0, 1), 1);
    assert_int_equal(sbx_kafka_pending(A.k), 2);

    /* Without a handle (and without a key) nothing is finished. */
    assert_int_equal(sbx_kafka_dead_letter(A.k, NULL, 0, env1, strlen(env1), NULL), 0);
    run_for(QUIET_MS);
    assert_int_equal(sbx_kafka_pending(A.k), 2);
    assert_int_equal(committed(group, topic, 0), 1);

    /* An envelope the producer refuses finishes nothing: it is kept and
     * tried again (dlq.c never builds one this big; this is the backstop),
     * and the partition shows as stalled at its offset meanwhile. */
    big = malloc(big_len + 1);
    assert_non_null(big);
    memset(big, 'x', big_len);
    big[big_len] = '\0';
    assert_int_equal(sbx_kafka_dead_letter(A.k, "k", 1, big, big_len, &A.msgs[1].ref), 0);
    free(big);
    run_for(QUIET_MS);
    assert_int_equal(sbx_kafka_pending(A.k), 2);
    assert_int_equal(committed(group, topic, 0), 1);
    {
        sbx_kafka_stall st[4];
        sbx_offset_oldest old[4];
        assert_int_equal(sbx_kafka_stalls(A.k, st, 4), 1);
        assert_int_equal(st[0].partition, 0);
        assert_int_equal(st[0].offset, 1);
        assert_true(st[0].failures >= 2);   /* 0.5 s, then 1 s at most: retried */
        assert_true(strlen(st[0].error) > 0);
        assert_int_equal(sbx_kafka_oldest(A.k, old, 4), 1);
        assert_int_equal(old[0].partition, 0);
        assert_int_equal(old[0].offset, 1);
        assert_true(old[0].since_ms <= sbx_now_ms());
    }

    /* The dead-letter topic holds the two envelopes, keyed like the
     * originals. */
    conf = rd_kafka_conf_new();
    assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof(err)), 0);
    /* librdkafka wants a group even for assign(); this one never joins. */
    assert_int_equal(rd_kafka_conf_set(conf, "group.id", dlq, err, sizeof(err)), 0);
    c = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    assert_non_null(c);
    l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, dlq, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    assert_int_equal(rd_kafka_assign(c, l), 0);
    rd_kafka_topic_partition_list_destroy(l);
    end = sbx_now_ms() + WAIT_MS;
    while (seen < 2 && sbx_now_ms() < end) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
        if (!m)
            continue;
        if (!m->err) {
            const char *want = seen == 0 ? env0 : env1;
            assert_int_equal(m->len, strlen(want));
            assert_memory_equal(m->payload, want, m->len);
            if (seen == 0) {
                assert_int_equal(m->key_len, strlen(A.msgs[0].key));
                assert_memory_equal(m->key, A.msgs[0].key, m->key_len);
            } else {
                assert_null(m->key);
            }
            seen++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_destroy_flags(c, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    assert_int_equal(seen, 2);
    close_intake(&A);
}

typedef struct want_stalls {
    const intake *in;
    int n;
} want_stalls;

static int stalls_are(const void *arg)
{
    const want_stalls *w = arg;
    sbx_kafka_stall st[4];
    return sbx_kafka_stalls(w->in->k, st, 4) == w->n;
}

/* A dead-letter topic that refuses the envelope (here: its max.message.bytes
 * is below the envelope's size) stalls the partition at that offset; the
 * publish is retried with backoff, and once the topic takes it the offset
 * is finished and committed, and the envelope is there once. */
static void t_dead_letter_retried_until_topic_fixed(void **state)
{
    char topic[96], dlq[96], group[96], env[600];
    want_stalls one = {&A, 1}, none = {&A, 0};
    rd_kafka_t *c;
    rd_kafka_conf_t *conf;
    rd_kafka_topic_partition_list_t *l;
    char err[256];
    int seen = 0;
    uint64_t end;
    (void)state;
    name(topic, sizeof(topic), "dlr");
    name(dlq, sizeof(dlq), "dlqr");
    name(group, sizeof(group), "g");
    mk_topic(topic, 1);
    mk_topic_max(dlq, 1, "200");
    produce_n(topic, 0, 2);
    flush();
    open_intake(&A, topic, dlq, group, 1000, NULL);
    wait_n(&A, 2);
    memset(env, 0, sizeof(env));
    snprintf(env, sizeof(env), "{\"reason\":\"too_large\",\"pad\":\"%0500d\"}", 0);

    assert_int_equal(sbx_kafka_dead_letter(A.k, "k", 1, env, strlen(env), &A.msgs[0].ref), 0);
    done(&A, 0, 1);
    if (!until(stalls_are, &one, WAIT_MS))
        fail_msg("the refused dead letter did not show as a stall");
    run_for(QUIET_MS);
    assert_int_equal(committed(group, topic, 0), RD_KAFKA_OFFSET_INVALID);
    assert_int_equal(sbx_kafka_pending(A.k), 1);

    set_topic_max(dlq, "100000");
    if (!until(stalls_are, &none, 40000))
        fail_msg("the dead letter was not published after the topic was fixed");
    assert_int_equal(wait_committed(group, topic, 0, 2), 2);
    assert_int_equal(sbx_kafka_pending(A.k), 0);

    conf = rd_kafka_conf_new();
    assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof(err)), 0);
    assert_int_equal(rd_kafka_conf_set(conf, "group.id", dlq, err, sizeof(err)), 0);
    c = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    assert_non_null(c);
    l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, dlq, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    assert_int_equal(rd_kafka_assign(c, l), 0);
    rd_kafka_topic_partition_list_destroy(l);
    end = sbx_now_ms() + 3000;
    while (sbx_now_ms() < end) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
        if (!m)
            continue;
        if (!m->err) {
            assert_int_equal(m->len, strlen(env));
            assert_memory_equal(m->payload, env, m->len);
            seen++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_destroy_flags(c, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    assert_int_equal(seen, 1);
    close_intake(&A);
}

/* A dead letter waiting for its retry when its partition is revoked is
 * dropped, not published late: the offset was not committed, so the new
 * owner gets the message again and dead-letters it itself. */
static void t_dead_letter_dropped_on_revoke(void **state)
{
    char topic[96], dlq[96], group[96], env[600];
    want_stalls one = {&A, 1}, none = {&A, 0};
    want_assigned split2 = {&A, &B, 1, 1};
    (void)state;
    name(topic, sizeof(topic), "dlv");
    name(dlq, sizeof(dlq), "dlqv");
    name(group, sizeof(group), "g");
    mk_topic(topic, 2);
    mk_topic_max(dlq, 1, "200");
    produce_n(topic, 0, 1);
    produce_n(topic, 1, 1);
    flush();
    open_intake(&A, topic, dlq, group, 1000, fast_hb);
    wait_n(&A, 2);
    snprintf(env, sizeof(env), "{\"reason\":\"too_large\",\"pad\":\"%0500d\"}", 0);
    assert_int_equal(sbx_kafka_dead_letter(A.k, "k", 1, env, strlen(env),
                                           &find(&A, 0, 0, 0)->ref), 0);
    if (!until(stalls_are, &one, WAIT_MS))
        fail_msg("the refused dead letter did not show as a stall");

    open_intake(&B, topic, dlq, group, 1000, fast_hb);
    assert_true(until(has_assigned, &split2, WAIT_MS));
    if (!until(stalls_are, &none, WAIT_MS))
        fail_msg("the stall of a revoked partition is still listed");
    /* Whoever owns p0 now has offset 0 again, uncommitted. */
    assert_int_equal(committed(group, topic, 0), RD_KAFKA_OFFSET_INVALID);
    set_topic_max(dlq, "100000");
    run_for(3000);
    {
        /* Nothing was published late: the dead-letter topic is empty. */
        rd_kafka_t *c = checker(dlq);
        int64_t lo = -1, hi = -1;
        assert_int_equal(rd_kafka_query_watermark_offsets(c, dlq, 0, &lo, &hi, 10000), 0);
        assert_int_equal(hi, 0);
        checker_free(c);
    }
    close_intake(&B);
    close_intake(&A);
}

typedef struct want_lag {
    const intake *in;
    int64_t p0, p1;
} want_lag;

static int lag_is(const void *arg)
{
    const want_lag *w = arg;
    sbx_kafka_lag lag[8];
    int n = sbx_kafka_lag_get(w->in->k, lag, 8), ok = 0;
    for (int i = 0; i < n; i++)
        ok += (lag[i].partition == 0 && lag[i].lag == w->p0) ||
              (lag[i].partition == 1 && lag[i].lag == w->p1);
    return n == 2 && ok == 2;
}

/* The intake wait goes from each message's timestamp to the loop taking
 * it: one stamped 20 s ago lands in the last bucket, one 3 s ago near 3 s,
 * one stamped ahead of our clock (another host's) counts as no wait. */
static void produce_at(const char *topic, const char *val, int64_t ts_ms)
{
    assert_int_equal(rd_kafka_producev(P, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                       RD_KAFKA_V_VALUE((void *)val, strlen(val)),
                                       RD_KAFKA_V_TIMESTAMP(ts_ms), RD_KAFKA_V_END),
                     0);
}

static void t_intake_wait(void **state)
{
    char topic[96], group[96];
    uint64_t n = 99, t0;
    int64_t now;
    int w;
    (void)state;
    name(topic, sizeof(topic), "wait");
    name(group, sizeof(group), "g");
    mk_topic(topic, 1);
    open_intake(&A, topic, NULL, group, 1000, NULL);
    wait_assigned(&A, 1);
    assert_int_equal(sbx_kafka_intake_wait_ms(A.k, 50, &n), -1);
    assert_int_equal(n, 0);

    t0 = sbx_now_ms();
    now = (int64_t)sbx_wall_ms();
    produce_at(topic, "ahead", now + 60000);
    for (int i = 0; i < 3; i++)
        produce_at(topic, "now", now);
    produce_at(topic, "3s", now - 3000);
    produce_at(topic, "20s", now - 20000);
    flush();
    wait_n(&A, 6);

    /* Nearest rank over 6: 1/6 is the one ahead, 5/6 the one 3 s old. */
    assert_int_equal(sbx_kafka_intake_wait_ms(A.k, 100.0 / 6, &n), 0);
    assert_int_equal(n, 6);
    w = sbx_kafka_intake_wait_ms(A.k, 50, &n);
    assert_true(w >= 0 && (uint64_t)w <= sbx_now_ms() - t0 + 1);
    w = sbx_kafka_intake_wait_ms(A.k, 80, &n);
    assert_true(w >= 3000 && (uint64_t)w <= 3000 + sbx_now_ms() - t0 + 1);
    assert_int_equal(sbx_kafka_intake_wait_ms(A.k, 100, &n), SBX_KAFKA_WAIT_MS_MAX);
    close_intake(&A);
}

static void t_up_and_lag(void **state)
{
    const char *const stats[] = {"statistics.interval.ms=200", NULL};
    char topic[96], group[96];
    want_lag w = {&A, 7, 0};
    (void)state;
    name(topic, sizeof(topic), "lag");
    name(group, sizeof(group), "g");
    mk_topic(topic, 2);
    produce_n(topic, 0, 10);
    produce_n(topic, 1, 4);
    flush();
    open_intake(&A, topic, NULL, group, 1000, stats);
    wait_n(&A, 14);
    for (int64_t o = 0; o < 3; o++)
        done(&A, 0, o);
    for (int64_t o = 0; o < 4; o++)
        done(&A, 1, o);
    /* Lag counts from what is finished, not from what was handed out. */
    if (!until(lag_is, &w, WAIT_MS)) {
        sbx_kafka_lag lag[8];
        int n = sbx_kafka_lag_get(A.k, lag, 8);
        for (int i = 0; i < n; i++)
            print_message("lag p%d = %lld\n", (int)lag[i].partition, (long long)lag[i].lag);
        fail_msg("lag not p0=7 p1=0");
    }
    assert_true(sbx_kafka_up(A.k));
    /* The caller's array bounds what is copied. */
    {
        sbx_kafka_lag one[1];
        assert_int_equal(sbx_kafka_lag_get(A.k, one, 1), 1);
    }
    close_intake(&A);
}

static void t_unreachable_broker_is_down(void **state)
{
    const char *const stats[] = {"statistics.interval.ms=200", "reconnect.backoff.max.ms=200",
                                 NULL};
    char brk[64], group[96];
    sbx_kafka_lag lag[4];
    uint64_t t0;
    (void)state;
    snprintf(brk, sizeof(brk), "127.0.0.1:%d", test_free_port());
    name(group, sizeof(group), "g");
    {
        char err[256] = "";
        if (open_with(&A, brk, "sbx.jobs", NULL, group, 10, stats, err, sizeof(err)) != 0)
            fail_msg("sbx_kafka_new must not need a broker to start: %s", err);
    }
    run_for(QUIET_MS);
    assert_false(sbx_kafka_up(A.k));
    assert_int_equal(sbx_kafka_assigned_count(A.k), 0);
    assert_int_equal(sbx_kafka_lag_get(A.k, lag, 4), 0);
    assert_int_equal(A.n, 0);
    /* Closing does not wait on the missing broker. */
    t0 = sbx_now_ms();
    close_intake(&A);
    assert_true(sbx_now_ms() - t0 < 10000);
}

/* After each test, passed or not: nothing of it stays on the loop. */
static int close_all(void **state)
{
    (void)state;
    sbx_timer_stop(L, &probe);
    if (A.k)
        close_intake(&A);
    if (B.k)
        close_intake(&B);
    return 0;
}

static int setup(void **state)
{
    char err[256];
    rd_kafka_conf_t *c;
    (void)state;
    sbx_loop_new(&L);
    sbx_timer_init(&probe, on_probe, NULL);
    c = rd_kafka_conf_new();
    if (rd_kafka_conf_set(c, "bootstrap.servers", brokers, err, sizeof(err)) ||
        rd_kafka_conf_set(c, "linger.ms", "1", err, sizeof(err)))
        return -1;
    rd_kafka_conf_set_dr_msg_cb(c, on_dr);
    P = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
    if (!P) {
        fprintf(stderr, "test_kafka: producer: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rd_kafka_flush(P, 5000);
    rd_kafka_destroy(P);
    sbx_loop_free(L);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(t_settings_refused, close_all),
        cmocka_unit_test_teardown(t_join_and_deliver, close_all),
        cmocka_unit_test_teardown(t_drain_is_bounded, close_all),
        cmocka_unit_test_teardown(t_commits_only_below_finished, close_all),
        cmocka_unit_test_teardown(t_restart_redelivers_unfinished_suffix, close_all),
        cmocka_unit_test_teardown(t_backpressure_pause_resume, close_all),
        cmocka_unit_test_teardown(t_hold_stops_intake, close_all),
        cmocka_unit_test_teardown(t_rebalance, close_all),
        cmocka_unit_test_teardown(t_dead_letter, close_all),
        cmocka_unit_test_teardown(t_dead_letter_retried_until_topic_fixed, close_all),
        cmocka_unit_test_teardown(t_dead_letter_dropped_on_revoke, close_all),
        cmocka_unit_test_teardown(t_up_and_lag, close_all),
        cmocka_unit_test_teardown(t_intake_wait, close_all),
        cmocka_unit_test_teardown(t_unreachable_broker_is_down, close_all),
    };
    brokers = getenv("SBX_BROKERS");
    if (!brokers || !*brokers) {
        fprintf(stderr, "test_kafka: skipped: SBX_BROKERS is not set (a real Kafka broker; "
                        "`make unit-kafka` starts one)\n");
        return 77;
    }
    /* The intake's own info lines (assignments, pauses) help read a failure. */
    sbx_log_set_level(SBX_LOG_INFO);
    return cmocka_run_group_tests_name("kafka", tests, setup, teardown);
}
