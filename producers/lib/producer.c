/* producer.c — publishes job messages to Kafka and reports their delivery.
 *
 * Delivery is what a submitter needs to know: a job is accepted when the
 * brokers have it (acks=all), not when it sits in a local queue. So every
 * message carries a heap record as its librdkafka opaque; the delivery-report
 * callback fills it in, and sbx_producer_send() polls until its own record is
 * done or its deadline passes. Records are linked on the handle so the ones
 * librdkafka never reports (destroyed with messages still queued) are freed
 * by sbx_producer_free().
 *
 * Settings, and why:
 *  - enable.idempotence=true (implies acks=all): a retried produce is not
 *    written twice, and per-partition order holds across retries, so jobs of
 *    one project keep their order.
 *  - partitioner=murmur2_random: the Java client's key hash, so a project maps
 *    to the same partition whichever client published it.
 *  - linger.ms=5: small batches for bulk enqueue without slowing one-off sends.
 *  - message.max.bytes: room for the largest valid job (SBX_MSG_MAX_BYTES)
 *    plus key and record overhead; librdkafka's default (1000000) is lower.
 * Callers' extra settings are applied last and may override any of these.
 *
 * With a database attached (sbx_producer_set_database), each job is first
 * recorded as `submitted` (submit.c) and then produced; its delivery record
 * remembers that, so a publish that fails, whenever its report comes (or
 * the purge at sbx_producer_free), takes the row back. A record whose report
 * never comes keeps its row: the message may have reached the brokers.
 */
#include "sbx.h"
#include "submit.h"
#include "libsbx.h"

#include <librdkafka/rdkafka.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* SBX_MSG_MAX_BYTES plus key and record headers (sbx.h). */
#define PRODUCER_MSG_MAX SBX_RECORD_MAX_BYTES

/* How long sbx_producer_free() waits for in-flight reports. */
#define FREE_WAIT_MS 5000

struct delivery {
    struct delivery *prev, *next;
    sbx_delivery_fn *cb;       /* async: called with the outcome, then freed */
    void *arg;
    bool done;                 /* sync: the report arrived */
    bool abandoned;            /* sync: the waiter gave up; the report frees it */
    rd_kafka_resp_err_t err;
    char job_id[SBX_ID_MAX + 1];
    bool recorded;             /* we made its `submitted` row (submit.c) */
    char sha[65];              /* its fingerprint, when recorded */
};

struct sbx_producer {
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    struct delivery *pending;  /* produced, not yet reported */
    sbx__submitter *db;        /* NULL: jobs are not recorded before the publish */
    char last_error[256];      /* from the error callback, for timeouts */
};

void sbx__seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void unlink_delivery(sbx_producer *p, struct delivery *d)
{
    if (d->prev) d->prev->next = d->next;
    else p->pending = d->next;
    if (d->next) d->next->prev = d->prev;
    d->prev = d->next = NULL;
}

static sbx_err map_err(rd_kafka_resp_err_t e)
{
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        return SBX_OK;
    if (e == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT || e == RD_KAFKA_RESP_ERR__TIMED_OUT)
        return SBX_ETIMEDOUT;
    return SBX_EKAFKA;
}

/* The job of d was not published: its `submitted` row goes. */
static void unrecord(sbx_producer *p, struct delivery *d)
{
    if (d->recorded && p->db)
        sbx__submit_forget(p->db, d->job_id, d->sha);
    d->recorded = false;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    sbx_producer *p = opaque;
    struct delivery *d = m->_private;
    (void)rk;
    if (!d)
        return;
    unlink_delivery(p, d);
    if (m->err)
        unrecord(p, d);
    if (d->cb) {
        d->cb(d->arg, d->job_id, map_err(m->err), m->err ? rd_kafka_err2str(m->err) : NULL);
        free(d);
        return;
    }
    d->done = true;
    d->err = m->err;
    if (d->abandoned)
        free(d);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    sbx_producer *p = opaque;
    (void)rk;
    snprintf(p->last_error, sizeof p->last_error, "%s: %s",
             rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

/* librdkafka would print its log lines to stderr; a library has no business
 * there. What matters reaches the caller through on_error and the error text
 * of a failed send. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    (void)level;
    (void)fac;
    (void)buf;
}

static int set(rd_kafka_conf_t *conf, const char *key, const char *value, char *err, size_t errlen)
{
    char e[256];
    if (rd_kafka_conf_set(conf, key, value, e, sizeof e) != RD_KAFKA_CONF_OK) {
        sbx__seterr(err, errlen, "kafka setting %s: %s", key, e);
        return -1;
    }
    return 0;
}

sbx_err sbx_producer_new(const char *brokers, const char *topic,
                         const char *const *extra, sbx_producer **out,
                         char *err, size_t errlen)
{
    sbx_producer *p = NULL;
    rd_kafka_conf_t *conf = NULL;
    char e[512], maxbytes[32];
    sbx_err rc = SBX_EINVAL;

    *out = NULL;
    if (!brokers || !*brokers || !topic || !*topic) {
        sbx__seterr(err, errlen, "brokers and topic are required");
        return SBX_EINVAL;
    }
    p = calloc(1, sizeof *p);
    conf = rd_kafka_conf_new();
    if (!p || !conf) {
        rc = SBX_ENOMEM;
        sbx__seterr(err, errlen, "out of memory");
        goto out;
    }
    snprintf(maxbytes, sizeof maxbytes, "%d", PRODUCER_MSG_MAX);
    if (set(conf, "bootstrap.servers", brokers, err, errlen) ||
        set(conf, "client.id", "sbx", err, errlen) ||
        set(conf, "enable.idempotence", "true", err, errlen) ||
        set(conf, "acks", "all", err, errlen) ||
        set(conf, "linger.ms", "5", err, errlen) ||
        set(conf, "partitioner", "murmur2_random", err, errlen) ||
        set(conf, "message.max.bytes", maxbytes, err, errlen))
        goto out;
    for (size_t i = 0; extra && extra[i]; i++) {
        char key[128];
        const char *eq = strchr(extra[i], '=');
        if (!eq || eq == extra[i] || (size_t)(eq - extra[i]) >= sizeof key) {
            sbx__seterr(err, errlen, "kafka setting \"%s\": expected key=value", extra[i]);
            goto out;
        }
        memcpy(key, extra[i], (size_t)(eq - extra[i]));
        key[eq - extra[i]] = '\0';
        if (set(conf, key, eq + 1, err, errlen))
            goto out;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_opaque(conf, p);

    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof e);
    if (!p->rk) {
        sbx__seterr(err, errlen, "kafka: %s", e);
        goto out;
    }
    conf = NULL; /* owned by rk now */
    p->rkt = rd_kafka_topic_new(p->rk, topic, NULL);
    if (!p->rkt) {
        sbx__seterr(err, errlen, "kafka topic %s: %s", topic, rd_kafka_err2str(rd_kafka_last_error()));
        rc = SBX_EKAFKA;
        goto out;
    }
    *out = p;
    p = NULL;
    rc = SBX_OK;
out:
    if (conf)
        rd_kafka_conf_destroy(conf);
    sbx_producer_free(p);
    return rc;
}

/* Hands one message to librdkafka, waiting while its queue is full. */
static sbx_err produce(sbx_producer *p, const char *key, const char *msg, size_t len,
                       struct delivery *d, long long deadline, char *err, size_t errlen)
{
    for (;;) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            p->rk, RD_KAFKA_V_RKT(p->rkt),
            RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
            RD_KAFKA_V_VALUE((void *)msg, len),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_OPAQUE(d), RD_KAFKA_V_END);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
            d->next = p->pending;
            if (p->pending)
                p->pending->prev = d;
            p->pending = d;
            return SBX_OK;
        }
        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL && now_ms() < deadline) {
            rd_kafka_poll(p->rk, 50);
            continue;
        }
        if (e == RD_KAFKA_RESP_ERR__FATAL) {
            char why[256];
            rd_kafka_fatal_error(p->rk, why, sizeof why);
            sbx__seterr(err, errlen, "kafka: fatal: %s", why);
        } else {
            sbx__seterr(err, errlen, "kafka: produce: %s", rd_kafka_err2str(e));
        }
        return e == RD_KAFKA_RESP_ERR__QUEUE_FULL ? SBX_ETIMEDOUT : SBX_EKAFKA;
    }
}

/* Produces msg and polls until its report or the deadline. */
static sbx_err send_and_wait(sbx_producer *p, const char *key, const char *job_id,
                             const char *msg, size_t len, int timeout_ms, struct delivery *d,
                             char *err, size_t errlen)
{
    long long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    sbx_err rc;

    snprintf(d->job_id, sizeof d->job_id, "%s", job_id);
    p->last_error[0] = '\0';
    rc = produce(p, key, msg, len, d, deadline, err, errlen);
    if (rc) {
        unrecord(p, d);
        free(d);
        return rc;
    }
    while (!d->done) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            /* The report may still come; on_delivery frees the record then. */
            d->abandoned = true;
            sbx__seterr(err, errlen, "kafka: no delivery report within %d ms%s%s", timeout_ms,
                   p->last_error[0] ? "; last error: " : "", p->last_error);
            return SBX_ETIMEDOUT;
        }
        rd_kafka_poll(p->rk, (int)(left < 100 ? left : 100));
    }
    rc = map_err(d->err);
    if (rc)
        sbx__seterr(err, errlen, "kafka: delivery failed: %s%s%s", rd_kafka_err2str(d->err),
               p->last_error[0] ? "; last error: " : "", p->last_error);
    free(d);
    return rc;
}

/* A delivery record for job, which is first recorded as submitted when a
 * database is attached. NULL: out of memory or not recorded (err says). */
static struct delivery *new_delivery(sbx_producer *p, const sbx_job *job, const char *msg,
                                     size_t len, sbx_err *rc, char *err, size_t errlen)
{
    struct delivery *d = calloc(1, sizeof *d);
    if (!d) {
        sbx__seterr(err, errlen, "out of memory");
        *rc = SBX_ENOMEM;
        return NULL;
    }
    if (job) {
        memcpy(d->job_id, job->job_id, sizeof d->job_id);
        if (p->db && (*rc = sbx__submit(p->db, job, msg, len, d->sha, &d->recorded, err,
                                        errlen)) != SBX_OK) {
            free(d);
            return NULL;
        }
    }
    *rc = SBX_OK;
    return d;
}

sbx_err sbx_producer_send(sbx_producer *p, const char *msg, size_t len, int timeout_ms,
                          char job_id_out[SBX_ID_MAX + 1], char *err, size_t errlen)
{
    sbx_job *job = NULL;
    struct delivery *d;
    sbx_err rc = sbx_job_parse(msg, len, &job, NULL, err, errlen);
    if (rc)
        return rc;
    if (job_id_out)
        memcpy(job_id_out, job->job_id, sizeof job->job_id);
    d = new_delivery(p, job, msg, len, &rc, err, errlen);
    if (d)
        rc = send_and_wait(p, job->project_id, job->job_id, msg, len, timeout_ms, d, err,
                           errlen);
    sbx_job_free(job);
    return rc;
}

sbx_err sbx_producer_send_raw(sbx_producer *p, const char *key, const char *msg,
                              size_t len, int timeout_ms, char *err, size_t errlen)
{
    sbx_err rc;
    struct delivery *d = new_delivery(p, NULL, msg, len, &rc, err, errlen);
    return d ? send_and_wait(p, key, "", msg, len, timeout_ms, d, err, errlen) : rc;
}

sbx_err sbx_producer_queue(sbx_producer *p, const char *msg, size_t len,
                           sbx_delivery_fn *cb, void *arg,
                           char job_id_out[SBX_ID_MAX + 1], char *err, size_t errlen)
{
    sbx_job *job = NULL;
    struct delivery *d = NULL;
    sbx_err rc = sbx_job_parse(msg, len, &job, NULL, err, errlen);
    if (rc)
        return rc;
    if (!(d = new_delivery(p, job, msg, len, &rc, err, errlen)))
        goto out;
    d->cb = cb;
    d->arg = arg;
    /* A queue full for 60 s means the brokers are gone; say so. */
    rc = produce(p, job->project_id, msg, len, d, now_ms() + 60000, err, errlen);
    if (rc) {
        unrecord(p, d);
        goto out;
    }
    if (job_id_out)
        memcpy(job_id_out, job->job_id, sizeof job->job_id);
    d = NULL;
out:
    free(d);
    sbx_job_free(job);
    return rc;
}

sbx_err sbx_producer_flush(sbx_producer *p, int timeout_ms)
{
    long long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        /* Serve reports first: a report served here may be the last one. */
        rd_kafka_poll(p->rk, 0);
        if (rd_kafka_outq_len(p->rk) == 0 && !p->pending)
            return SBX_OK;
        long long left = deadline - now_ms();
        if (left <= 0)
            return SBX_ETIMEDOUT;
        rd_kafka_poll(p->rk, (int)(left < 100 ? left : 100));
    }
}

void sbx_producer_free(sbx_producer *p)
{
    if (!p)
        return;
    if (p->rk) {
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE);
        sbx_producer_flush(p, FREE_WAIT_MS);
        if (p->rkt)
            rd_kafka_topic_destroy(p->rkt);
        rd_kafka_destroy(p->rk);
    }
    while (p->pending) {
        struct delivery *d = p->pending;
        unlink_delivery(p, d);
        if (d->cb)
            d->cb(d->arg, d->job_id, SBX_EKAFKA, "producer closed before delivery");
        free(d);
    }
    sbx__submitter_free(p->db);
    free(p);
}

sbx_err sbx_producer_set_database(sbx_producer *p, const char *database_url, char *err,
                                  size_t errlen)
{
    sbx__submitter *db = NULL;
    sbx_err rc = SBX_OK;
    if (database_url && (rc = sbx__submitter_new(database_url, &db, err, errlen)) != SBX_OK)
        return rc;
    sbx__submitter_free(p->db);
    p->db = db;
    return SBX_OK;
}
