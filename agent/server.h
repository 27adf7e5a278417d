/* server.h — the agent's HTTP API on the agent's event loop.
 *
 * Every request must carry "Authorization: Bearer <service key>" (compared
 * in constant time; 401 otherwise). The key is never logged.
 *
 *   GET  /health                    {"id","state","capacity","slots","running":[...]}
 *   POST /wake                      {"slot","token","job":{...},"attempt"} -> {"run_id"}
 *                                   409 {"error":"stale_token"|"busy"}, 503 draining
 *   GET  /runs/{id}[?wait_ms=N]     the run; with wait_ms, answers when the run
 *                                   ends or N ms (at most 30 s) pass: a long poll
 *   GET  /runs/{id}/log[?follow=1]  the whole log (chunked while following,
 *                                   until the run ends)
 *   POST /runs/{id}/cancel          {"token"} -> the run; 409 stale_token
 *   GET  /preview/{id}/{path}       files of the run's public/ (or dist/)
 */
#ifndef SBX_AGENT_SERVER_H
#define SBX_AGENT_SERVER_H

#include <stddef.h>

#include "loop.h"
#include "runs.h"

typedef struct sbx_server sbx_server;

typedef struct sbx_server_config {
    const char *host;          /* numeric IPv4 or IPv6 */
    int port;
    const char *key;
    const char *agent_id;
    const char *base_url;      /* for preview URLs */
} sbx_server_config;

/* Binds and listens. Returns 0, or a negative errno and one line in err. */
int sbx_server_new(sbx_loop *loop, sbx_runs *runs, const sbx_server_config *cfg,
                   sbx_server **out, char *err, size_t errlen);
/* A run's log grew or it ended: answer the requests waiting for it. Must
 * not be called from inside a request callback (runs.h events never are). */
void sbx_server_notify(sbx_server *s, const char *run_id, sbx_runs_event ev);
/* Ends waiting requests, closes every connection and the listener. */
void sbx_server_free(sbx_server *s);

#endif
