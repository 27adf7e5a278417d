/* admin.h — the worker's operations endpoint (SBX_ADMIN_LISTEN):
 *   GET /healthz  200 while the event loop turns (liveness)
 *   GET /readyz   200 when Kafka, Redis and PostgreSQL are reachable and the
 *                 worker takes jobs; 503 otherwise, with what is down (JSON)
 *   GET /metrics  Prometheus text: job counters, jobs in flight, pending
 *                 offsets, the database queue, dependency state, consumer lag
 * Served by libmicrohttpd on the worker's loop (no thread). */
#ifndef SBX_ADMIN_H
#define SBX_ADMIN_H

#include <stddef.h>

typedef struct sbx_worker sbx_worker;
typedef struct sbx_admin sbx_admin;

/* addr: "127.0.0.1:9464" (port 0: any free port, logged). */
int sbx_admin_new(sbx_worker *w, const char *addr, sbx_admin **out, char *err, size_t errlen);
void sbx_admin_free(sbx_admin *a);

#endif
