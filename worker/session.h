/* session.h — sessions seen from the worker: the name of a session's
 * sandbox, and the sweeper that pauses and ends idle sessions (session.c).
 */
#ifndef SBX_SESSION_H
#define SBX_SESSION_H

#include <stdint.h>

#include "db.h"
#include "lease.h"
#include "loop.h"
#include "provider.h"

/* The name of a project's session's sandbox: "s-" + 32 hex of SHA-256 of
 * project and session id. Name-safe everywhere (directories, container and
 * machine names, Redis keys) and the same in every worker. */
void sbx__session_name(const char *project, const char *session_id,
                       char out[SBX_SESSION_NAME_MAX + 1]);

typedef struct sbx_sessions sbx_sessions;

typedef struct sbx_sessions_cfg {
    sbx_loop *loop;
    sbx_db *db;
    sbx_leases *leases;
    sbx_redis *redis;         /* reads {sbx}:kept for the reconciliation */
    sbx_provider *prov;
    const char *provider;     /* its name, as runs record it (SBX_PROVIDER) */
    const char *worker_id;
    int64_t lease_ttl_ms;
} sbx_sessions_cfg;

typedef struct sbx_sessions_stats {
    uint64_t paused, ended, failed;
} sbx_sessions_stats;

int sbx_sessions_new(const sbx_sessions_cfg *cfg, sbx_sessions **out);
/* One pass: asks PostgreSQL which sessions are due and works through them;
 * a pass under way is never started twice (the cron calls it each second). */
void sbx_sessions_pass(sbx_sessions *s);
/* Adds this sweeper's counters to out. */
void sbx_sessions_add_stats(const sbx_sessions *s, sbx_sessions_stats *out);
/* Drops what is under way without callbacks (leases expire). */
void sbx_sessions_free(sbx_sessions *s);

#endif
