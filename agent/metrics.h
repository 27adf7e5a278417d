/* metrics.h — what the agent's GET /metrics reports (Prometheus text):
 *   sbx_agent_capacity, sbx_agent_runs_active, sbx_agent_draining  gauges
 *   sbx_agent_builds_total{outcome}                                counter
 *   sbx_agent_sessions{state}                                      gauge
 *   sbx_agent_session_runs_total{sandbox} (new, reused, resumed)   counter
 *   sbx_agent_build_duration_seconds                               histogram
 *   sbx_build_info{program="sbx-agent",version,git}                gauge (1)
 * The counts live here, fed by server.c with every run that ends (runs.h's
 * SBX_RUNS_END, once per run); the gauges are read from runs.c when the
 * page is made. Behind the service key like every endpoint but /livez
 * (server.h says why).
 */
#ifndef SBX_AGENT_METRICS_H
#define SBX_AGENT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "hist.h"
#include "runs.h"

/* One counter per terminal state of runs.h (SBX_RS_SUCCEEDED .. ERROR). */
#define SBX_AGENT_OUTCOMES (SBX_RS_ERROR + 1)

typedef struct sbx_agent_metrics {
    uint64_t builds[SBX_AGENT_OUTCOMES];
    uint64_t session_runs[SBX_RUNS_RESUMED + 1]; /* by runs.h's sbx_runs_sandbox */
    sbx_hist build;
} sbx_agent_metrics;

/* A run ended (its view, from sbx_runs_view()). */
void sbx__metrics_run_ended(sbx_agent_metrics *m, const sbx_run_view *v);
/* The page into out (NUL-terminated, whole lines only); its length. */
size_t sbx__metrics_page(const sbx_agent_metrics *m, sbx_runs *runs, char *out, size_t outlen);

#endif
