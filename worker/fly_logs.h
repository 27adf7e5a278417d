/* fly_logs.h — a machine's output from Fly's HTTP logs API, for
 * provider_fly.c, on the worker's event loop.
 *
 * The Machines API has no logs endpoint; Fly serves machine logs over its
 * HTTP logs API, GET <base>/api/v1/apps/{app}/logs?instance=<machine id>
 * &next_token=<t>, which is what `flyctl logs` polls (flyctl logs/polling.go,
 * api/resource_logs.go). One sbx__fly_logs per run reads it: polling while
 * the machine runs, then, once the run says the machine stopped, reading
 * until a page asked for drain_ms after the stop comes back empty (lines
 * reach the API late). Every line goes to the live-output sink (provider.h)
 * and into a tail, once each: next_token carries on from the last line read.
 *
 * It lives inside its run and has at most one request in flight. done runs
 * once, from the loop, when a drain ends (read to the end, or given up);
 * never after sbx__fly_logs_stop().
 */
#ifndef SBX_FLY_LOGS_H
#define SBX_FLY_LOGS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "fly_api.h"
#include "provider.h"

typedef struct sbx__fly_logs sbx__fly_logs;
typedef void (*sbx__fly_logs_cb)(sbx__fly_logs *l);

struct sbx__fly_logs {
    const char *base;             /* the logs API's base URL, or NULL: no output */
    const char *app;
    char machine[SBX_FLY_ID_MAX + 1];
    int poll_ms, drain_ms;
    sbx_output_fn out;
    void *out_arg;
    sbx__fly_logs_cb done;
    void *owner;
    sbx__fly_call call;
    sbx_timer t;
    char token[SBX_FLY_LOG_TOKEN_MAX + 1];
    int on;                       /* polling: started, not stopped or given up */
    int busy;                     /* a page is being asked for */
    int draining;
    int failures;                 /* failed polls in a row */
    uint64_t asked_ms;            /* when the page in flight was asked for */
    uint64_t stopped_ms;          /* when the drain began */
    char error[200];              /* "" or why the output is incomplete */
    char tail[SBX_LOG_TAIL_MAX];  /* the last output bytes */
    size_t tail_len;
};

/* base and app must outlive l. Nothing starts yet. */
void sbx__fly_logs_init(sbx__fly_logs *l, sbx__fly_api *api, const char *base, const char *app,
                        int poll_ms, int drain_ms, sbx_output_fn out, void *out_arg,
                        sbx__fly_logs_cb done, void *owner);
/* The machine exists: poll its logs from now on (no-op without a base). */
void sbx__fly_logs_start(sbx__fly_logs *l, const char *machine_id);
/* The machine stopped: read to the end, then done. Returns 0 when done will
 * come, -1 when there is nothing to read (not started, or given up). */
int sbx__fly_logs_drain(sbx__fly_logs *l);
/* Stops polling; done does not run. Safe to call again. */
void sbx__fly_logs_stop(sbx__fly_logs *l);
/* Frees what l holds (after stop). */
void sbx__fly_logs_free(sbx__fly_logs *l);

#endif
