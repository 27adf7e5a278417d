/* hist.h — a latency histogram in Prometheus' shape, with fixed buckets.
 *
 * The buckets are the same for every histogram of sbx (seconds, from 10 ms
 * to an hour: a queue wait and a build both fall somewhere in there), so a
 * histogram is a plain struct with no allocation and observing is a short
 * scan; it can live inside the worker or the agent and be read by their
 * /metrics pages at any time (one thread: the loop).
 *
 *   sbx_hist h = {0};
 *   sbx_hist_observe(&h, 0.42);
 *   n = sbx_hist_format(&h, "sbx_build_duration_seconds", "help text", "", buf, sizeof(buf));
 */
#ifndef SBX_HIST_H
#define SBX_HIST_H

#include <stddef.h>
#include <stdint.h>

/* Upper bounds (seconds) of the buckets below +Inf: sbx_hist_bounds[]. */
#define SBX_HIST_BUCKETS 16

typedef struct sbx_hist {
    uint64_t counts[SBX_HIST_BUCKETS + 1];  /* per bucket, not cumulative; last: +Inf */
    uint64_t count;
    double sum;                             /* seconds */
} sbx_hist;

extern const double sbx_hist_bounds[SBX_HIST_BUCKETS];

/* Counts one observation; a negative one (a clock that stepped back
 * between two hosts) counts as 0. */
void sbx_hist_observe(sbx_hist *h, double seconds);
/* Writes "# HELP", "# TYPE", the cumulative name_bucket{le=...} lines,
 * name_sum and name_count into out, labels (`provider="local"` or "") on
 * every line. Like snprintf: returns the length the text needs; when that
 * is >= outlen, out holds nothing usable. */
int sbx_hist_format(const sbx_hist *h, const char *name, const char *help, const char *labels,
                    char *out, size_t outlen);

#endif
