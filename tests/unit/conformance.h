/* conformance.h — the scenarios every provider must pass, whatever runs the
 * build (bubblewrap, Podman, a VM agent, Fly Machines).
 *
 * A provider's test program calls sbx_conformance_run() with a factory that
 * makes a fresh provider on a given loop; every scenario makes its own loop
 * and provider, drives the loop itself with a deadline, and destroys both.
 * Scenarios only use provider.h: success, failing build, argv command,
 * env and files, timeout, cancel (running and not yet started), 10 MB of
 * output, busy and unknown slots, all slots at once, destroy with builds
 * running, and start/cancel latency, which it prints.
 *
 * Jobs run POSIX sh scripts using only sh builtins, sleep, seq, cat and echo.
 */
#ifndef SBX_CONFORMANCE_H
#define SBX_CONFORMANCE_H

#include "provider.h"

typedef sbx_provider *(*sbx_conformance_make)(sbx_loop *loop);

typedef struct sbx_conformance_opts {
    int host_procs;      /* the sandbox's processes show in this host's /proc, so
                            "nothing left after timeout/cancel/destroy" is checked there */
    int concurrency;     /* builds at once in the concurrency scenario; 0 = all slots, at most 8 */
    int time_scale;      /* multiply deadlines for slow providers or sanitizers; 0 = 1 */
    const char *image;   /* job->image for providers that need one; may be NULL */
    int output_apart;    /* the sink must get stdout and stderr apart; else one
                            stream (all stdout, in order) is accepted too */
    int output_at_end;   /* the sink gets the output only when the build ended */
    int output_lossy;    /* the provider reads output from a store that keeps only
                            so much (Fly's logs API: "these logs ... do not persist
                            very long", fly.io docs, exporting logs): of a big
                            output the sink gets what the store still held when
                            read, in order and once, not every byte */
} sbx_conformance_opts;

/* Runs the scenarios as one cmocka group called name (cmocka's summary is
 * printed). Returns the number of failed scenarios. */
int sbx_conformance_run(const char *name, sbx_conformance_make make,
                        const sbx_conformance_opts *opts);

/* Counts processes, other than this one, whose command line (arguments
 * joined by spaces) contains needle, or is exactly needle. */
int sbx_conformance_procs_with(const char *needle, int exact);
/* A marker command unique to this test process and k ("sleep 1XXXXXXXX"),
 * so two test programs running at once never see each other's markers. */
void sbx_conformance_marker(char out[64], int k);

#endif
