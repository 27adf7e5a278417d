/* metrics.c — see metrics.h. The page is a few dozen lines: one bounded
 * buffer, filled line by line; a line that does not fit ends the page
 * there, so a scrape never sees half a line (as worker/admin.c). */
#include "metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sbx.h"

typedef struct page {
    char *b;
    size_t n, cap;
    int full;
} page;

static void put(page *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(page *p, const char *fmt, ...)
{
    va_list ap;
    int w;
    if (p->full)
        return;
    va_start(ap, fmt);
    w = vsnprintf(p->b + p->n, p->cap - p->n, fmt, ap);
    va_end(ap);
    if (w < 0 || (size_t)w >= p->cap - p->n) {
        p->full = 1;
        p->b[p->n] = '\0';
        return;
    }
    p->n += (size_t)w;
}

void sbx__metrics_run_ended(sbx_agent_metrics *m, const sbx_run_view *v)
{
    if (v->state <= SBX_RS_RUNNING || v->state >= SBX_AGENT_OUTCOMES)
        return;
    m->builds[v->state]++;
    if (v->sandbox > SBX_RUNS_ONE_OFF && v->sandbox <= SBX_RUNS_RESUMED)
        m->session_runs[v->sandbox]++;
    if (v->finished_ms >= v->started_ms && v->started_ms)
        sbx_hist_observe(&m->build, (double)(v->finished_ms - v->started_ms) / 1000.0);
}

size_t sbx__metrics_page(const sbx_agent_metrics *m, sbx_runs *runs, char *out, size_t outlen)
{
    page p = {out, 0, outlen, 0};
    /* One histogram's text: 19 lines of at most ~120 bytes. */
    char h[4096];
    int hn;

    if (outlen == 0)
        return 0;
    out[0] = '\0';
    put(&p, "# HELP sbx_agent_capacity build slots of this agent\n"
            "# TYPE sbx_agent_capacity gauge\nsbx_agent_capacity %zu\n", sbx_runs_capacity(runs));
    put(&p, "# HELP sbx_agent_runs_active builds running now\n"
            "# TYPE sbx_agent_runs_active gauge\nsbx_agent_runs_active %zu\n", sbx_runs_active(runs));
    put(&p, "# HELP sbx_agent_draining 1 once the agent refuses new builds (stopping)\n"
            "# TYPE sbx_agent_draining gauge\nsbx_agent_draining %d\n", sbx_runs_draining(runs));
    put(&p, "# HELP sbx_agent_builds_total builds this agent ran to an end, by outcome\n"
            "# TYPE sbx_agent_builds_total counter\n");
    for (int s = SBX_RS_SUCCEEDED; s < SBX_AGENT_OUTCOMES; s++)
        put(&p, "sbx_agent_builds_total{outcome=\"%s\"} %" PRIu64 "\n",
            sbx_run_state_name((sbx_run_state)s), m->builds[s]);
    {
        static const char *const states[] = {"idle", "running", "paused", "dying"};
        size_t count[4] = {0, 0, 0, 0};
        for (size_t i = 0; i < sbx_runs_capacity(runs); i++) {
            const char *name, *state;
            if (!sbx_runs_slot_session(runs, i, &name, &state))
                continue;
            for (size_t k = 0; k < 4; k++)
                count[k] += strcmp(state, states[k]) == 0;
        }
        put(&p, "# HELP sbx_agent_sessions session sandboxes kept on this agent's slots, by state\n"
                "# TYPE sbx_agent_sessions gauge\n");
        for (size_t k = 0; k < 4; k++)
            put(&p, "sbx_agent_sessions{state=\"%s\"} %zu\n", states[k], count[k]);
    }
    put(&p, "# HELP sbx_agent_session_runs_total runs of sessions that ended, by the sandbox "
            "they got\n# TYPE sbx_agent_session_runs_total counter\n");
    for (int k = SBX_RUNS_NEW; k <= SBX_RUNS_RESUMED; k++)
        put(&p, "sbx_agent_session_runs_total{sandbox=\"%s\"} %" PRIu64 "\n",
            sbx_runs_sandbox_name((sbx_runs_sandbox)k), m->session_runs[k]);
    hn = sbx_hist_format(&m->build, "sbx_agent_build_duration_seconds",
                         "from a build's sandbox start to its end", "", h, sizeof(h));
    if (hn > 0 && (size_t)hn < sizeof(h))
        put(&p, "%s", h);
    put(&p, "# HELP sbx_build_info the running sbx-agent's version\n"
            "# TYPE sbx_build_info gauge\n"
            "sbx_build_info{program=\"sbx-agent\",version=\"%s\",git=\"%s\"} 1\n",
        sbx_version(), sbx_version_git());
    return p.n;
}
