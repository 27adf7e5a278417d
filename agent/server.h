/* server.h — the agent's HTTP API on the agent's event loop.
 *
 * Every request but /livez must carry "Authorization: Bearer <service key>"
 * (compared in constant time; 401 otherwise). The key is never logged.
 *
 *   GET  /livez                     200 "ok" without the key: the process
 *                                   answers HTTP (nothing about runs)
 *   GET  /health                    {"id","state","capacity","slots","running":[...],
 *                                   "sessions":[{"slot","session","state"}]}
 *   GET  /metrics                   Prometheus text (metrics.h): capacity, runs
 *                                   active, builds by outcome, build duration,
 *                                   version. Behind the key too: the port is open
 *                                   to the VM's whole network, and build counts
 *                                   and timings say what the tenants on this VM
 *                                   are doing; Prometheus sends the key with
 *                                   `authorization: {credentials_file: ...}`
 *   POST /wake                      {"slot","token","job":{...},"attempt"[,"session"]}
 *                                   -> {"run_id","existing"[,"sandbox","resume_ms"]}
 *                                   (sandbox: "new"|"reused"|"resumed", a session's run)
 *                                   409 {"error":"stale_token"|"busy"|"future_token"},
 *                                   503 draining or token_unverified
 *   POST /sessions/{name}/pause     {"slot","token"} -> {"session","slot","state":
 *   POST /sessions/{name}/destroy   "paused"|"destroyed"|"absent"}, destroy answered
 *                                   once the sandbox is gone (at most 10 s, else busy);
 *                                   409 stale_token, future_token or busy (a run is
 *                                   on the slot: an older lease's is canceled);
 *                                   404 unknown_slot; 501 not_supported (pause
 *                                   without a freezer); 503 token_unverified
 *   GET  /runs/{id}[?wait_ms=N]     the run; with wait_ms, answers when the run
 *                                   ends or N ms (at most 30 s) pass: a long poll
 *   GET  /runs/{id}/log[?follow=1][&offset=N]  the whole log, or from byte N
 *                                   (chunked while following, until the run ends)
 *   POST /runs/{id}/cancel          {"token"} -> the run; 409 stale_token or
 *                                   future_token, 503 token_unverified
 *   GET  /preview/{id}/{path}       files of the run's public/ (or dist/)
 *
 * A connection must deliver its request headers within header_timeout_ms
 * of accept (or of its previous answer) and its body within
 * body_timeout_ms after them, or it is closed; server.c "Hostile clients"
 * has the whole defence.
 */
#ifndef SBX_AGENT_SERVER_H
#define SBX_AGENT_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"
#include "runs.h"

typedef struct sbx_server sbx_server;

typedef struct sbx_server_config {
    const char *host;          /* numeric IPv4 or IPv6 */
    int port;
    const char *key;
    const char *agent_id;
    const char *base_url;      /* for preview URLs */
    int conn_max;              /* agent_config.h: SBX_AGENT_CONN_MAX... */
    int pending_max;           /* < conn_max */
    int pending_per_ip;
    int header_timeout_ms;
    int body_timeout_ms;
    /* Asks for the newest fencing token issued ({sbx}:fence); the answer
     * comes back later, from the loop, through sbx_server_fence(). Returns
     * 0, or a negative errno when it cannot ask. NULL: tokens are not
     * checked against what was issued. */
    int (*fence_ask)(void *arg);
    void *fence_arg;
} sbx_server_config;

/* Binds and listens. Returns 0, or a negative errno and one line in err. */
int sbx_server_new(sbx_loop *loop, sbx_runs *runs, const sbx_server_config *cfg,
                   sbx_server **out, char *err, size_t errlen);
/* A run's log grew or it ended: answer the requests waiting for it. Must
 * not be called from inside a request callback (runs.h events never are). */
void sbx_server_notify(sbx_server *s, const char *run_id, sbx_runs_event ev);
/* The answer to fence_ask: the newest token issued, or -1 if it could not
 * be read. Not from inside fence_ask. */
void sbx_server_fence(sbx_server *s, int64_t issued);
/* Ends waiting requests, closes every connection and the listener. */
void sbx_server_free(sbx_server *s);

#endif
