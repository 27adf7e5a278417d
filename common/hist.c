/* hist.c — see hist.h. The page writers (worker/admin.c, agent/server.c)
 * put the whole text in or leave it out, so a histogram never appears
 * half-written in a scrape. */
#include "hist.h"

#include <inttypes.h>
#include <stdio.h>

/* Prometheus' default buckets reach 10 s; builds and queue waits need
 * minutes, so the scale goes on to an hour. */
const double sbx_hist_bounds[SBX_HIST_BUCKETS] = {
    0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
};

void sbx_hist_observe(sbx_hist *h, double seconds)
{
    int i = 0;

    if (!(seconds > 0))
        seconds = 0;
    while (i < SBX_HIST_BUCKETS && seconds > sbx_hist_bounds[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += seconds;
}

int sbx_hist_format(const sbx_hist *h, const char *name, const char *help, const char *labels,
                    char *out, size_t outlen)
{
    const char *sep = *labels ? "," : "";
    uint64_t cum = 0;
    size_t n = 0;
    int w;

/* Appends; past the end only counts, as snprintf does. */
#define PUT(...)                                                                       \
    do {                                                                               \
        w = snprintf(n < outlen ? out + n : NULL, n < outlen ? outlen - n : 0, __VA_ARGS__); \
        if (w < 0)                                                                     \
            return w;                                                                  \
        n += (size_t)w;                                                                \
    } while (0)

    PUT("# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < SBX_HIST_BUCKETS; i++) {
        cum += h->counts[i];
        PUT("%s_bucket{%s%sle=\"%g\"} %" PRIu64 "\n", name, labels, sep, sbx_hist_bounds[i], cum);
    }
    cum += h->counts[SBX_HIST_BUCKETS];
    PUT("%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, sep, cum);
    if (*labels) {
        PUT("%s_sum{%s} %.6f\n%s_count{%s} %" PRIu64 "\n", name, labels, h->sum, name, labels,
            h->count);
    } else {
        PUT("%s_sum %.6f\n%s_count %" PRIu64 "\n", name, h->sum, name, h->count);
    }
#undef PUT
    return (int)n;
}
