/* pace.c — sbx-bench-pace: publishes no-op jobs at a fixed rate, each
 * stamped with the wall-clock time it was handed to the producer, for the
 * latency figures of tests/bench/bench.py.
 *
 *   sbx-bench-pace BROKERS TOPIC RATE COUNT PROJECTS PREFIX [WARMUP]
 *
 * Job i is {"job_id":"<PREFIX>-<i>","project_id":"p<i % PROJECTS>",
 * "command":["true"],"metadata":{"t_us":"<CLOCK_REALTIME in µs>"}}, due at
 * start + (WARMUP + i) / RATE on the monotonic clock. It goes through
 * libsbx's own producer (validated, keyed by project), as a control plane's
 * would, with linger.ms=0 and Nagle off (socket.nagle.disable: a produce
 * request written while the previous one is unacknowledged would otherwise
 * wait for that acknowledgement) so the figure is sbx's latency, not
 * batching in the producer.
 *
 * WARMUP jobs (default 0), "<PREFIX>-w<i>", go first at the same rate and
 * are not measured: the first fraction of a second of a new producer on a
 * new topic (connections, metadata, the idempotent producer's id, the
 * broker's first appends to each partition, the worker's first statements)
 * cost up to ~100 ms per job, and would be the p99 of a 5 s run.
 *
 * Why not kcat or `sbx enqueue`: enqueue reads all of its input before it
 * sends, and kcat hands lines read from a pipe to librdkafka in bursts of
 * seconds, which would be measured as sbx's latency.
 *
 * Prints one line "sent=N warmup=W failed=F late_ms=L" (L: how far behind
 * schedule the slowest measured send was) and exits 0 when every job was
 * acknowledged.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sbx.h"

/* A job here is ~150 bytes; ids and the prefix are bounded by SBX_ID_MAX. */
#define MSG_MAX 512
/* Acknowledgements of the last jobs, after the last send. */
#define FLUSH_TIMEOUT_MS 30000

static uint64_t now_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t mono_ns)
{
    struct timespec ts = {(time_t)(mono_ns / 1000000000u), (long)(mono_ns % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void on_delivery(void *arg, const char *job_id, sbx_err err, const char *errstr)
{
    long *failed = arg;
    if (err != SBX_OK) {
        (*failed)++;
        fprintf(stderr, "sbx-bench-pace: %s not delivered: %s\n", job_id, errstr);
    }
}

static int parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    *out = strtol(s, &end, 10);
    return errno || *end || *out < min || *out > max ? -1 : 0;
}

int main(int argc, char **argv)
{
    const char *extra[] = {"linger.ms=0", "socket.nagle.disable=true", NULL};
    sbx_producer *p = NULL;
    char err[256], msg[MSG_MAX], id[SBX_ID_MAX + 1];
    long count, projects, warmup = 0, failed = 0, sent = 0;
    double rate;
    uint64_t t0, late_ns = 0;
    int rc = 1;

    if (argc < 7 || argc > 8 || parse_long(argv[4], 1, 100000000, &count) ||
        parse_long(argv[5], 1, 100000000, &projects) || (rate = atof(argv[3])) <= 0 ||
        strlen(argv[6]) > 64 || (argc == 8 && parse_long(argv[7], 0, 100000000, &warmup))) {
        fprintf(stderr, "usage: sbx-bench-pace BROKERS TOPIC RATE COUNT PROJECTS PREFIX [WARMUP]\n");
        return 2;
    }
    if (sbx_producer_new(argv[1], argv[2], extra, &p, err, sizeof(err)) != SBX_OK) {
        fprintf(stderr, "sbx-bench-pace: %s\n", err);
        return 1;
    }
    t0 = now_ns(CLOCK_MONOTONIC);
    for (long s = 0; s < warmup + count; s++) {
        uint64_t due = t0 + (uint64_t)((double)s * 1e9 / rate), now = now_ns(CLOCK_MONOTONIC);
        int warm = s < warmup, n;
        long i = warm ? s : s - warmup;
        if (due > now)
            sleep_until(due);
        else if (!warm && now - due > late_ns)
            late_ns = now - due;
        n = snprintf(msg, sizeof(msg),
                     "{\"job_id\":\"%s-%s%ld\",\"project_id\":\"p%ld\",\"command\":[\"true\"],"
                     "\"metadata\":{\"t_us\":\"%" PRIu64 "\"}}",
                     argv[6], warm ? "w" : "", i, s % projects, now_ns(CLOCK_REALTIME) / 1000u);
        if (sbx_producer_queue(p, msg, (size_t)n, on_delivery, &failed, id, err, sizeof(err)) !=
            SBX_OK) {
            fprintf(stderr, "sbx-bench-pace: job %s%ld: %s\n", warm ? "w" : "", i, err);
            goto out;
        }
        sent += !warm;
        /* Serves delivery reports; never waits. */
        sbx_producer_flush(p, 0);
    }
    if (sbx_producer_flush(p, FLUSH_TIMEOUT_MS) != SBX_OK) {
        fprintf(stderr, "sbx-bench-pace: not all acknowledged within %d ms\n", FLUSH_TIMEOUT_MS);
        goto out;
    }
    rc = failed ? 1 : 0;
out:
    printf("sent=%ld warmup=%ld failed=%ld late_ms=%.1f\n", sent, warmup, failed,
           (double)late_ns / 1e6);
    sbx_producer_free(p);
    return rc;
}
