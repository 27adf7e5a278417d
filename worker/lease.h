/* lease.h — slot leases and fencing tokens in Redis, one Lua script per
 * operation (acquire, renew, release, register, fence; common/lua/).
 * Acquires, renewals and releases are batched: the calls of one loop turn
 * go to Redis as one EVALSHA per kind (up to 64 jobs each), each job still
 * decided atomically on its own; an acquire of a project this worker
 * already holds or is acquiring is answered here, without Redis (lease.c).
 *
 * The keys ({sbx}:fence, :slots:, :free:, :lease:, :project:, :deadlines)
 * are described in common/rkeys.h. Time comes from redis.call('TIME')
 * inside the scripts, never from workers. Expired leases are reaped at the
 * start of every acquire (any worker may reap, reaping twice is harmless),
 * so a killed worker's slots come back without a separate process.
 */
#ifndef SBX_LEASE_H
#define SBX_LEASE_H

#include <stdint.h>

#include "redis.h"

typedef enum sbx_lease_status {
    SBX_LEASE_OK,        /* acquired / renewed / released */
    SBX_LEASE_BUSY,      /* the project has a build on another job */
    SBX_LEASE_HELD,      /* this very job holds a lease (another worker, or our past self) */
    SBX_LEASE_NOCAP,     /* no free slot in the pool */
    SBX_LEASE_QUIET,     /* Redis lost its data just now: no new lease for ttl_left_ms */
    SBX_LEASE_LOST,      /* renew/release: the token is no longer the slot's */
    SBX_LEASE_GONE,      /* a sweeper's acquire: the session keeps no slot (token: a
                            fresh one, to fence the sweeper's write with) */
    SBX_LEASE_ERROR,     /* Redis down or a script error: retry later */
} sbx_lease_status;


/* Longest slot id (sbx_lease_reply.slot holds it). */
#define SBX_LEASE_SLOT_MAX 191

typedef struct sbx_lease_reply {
    sbx_lease_status status;
    char slot[SBX_LEASE_SLOT_MAX + 1]; /* OK on acquire */
    char pool[SBX_LEASE_SLOT_MAX + 1]; /* OK on acquire: the pool slot is in */
    int64_t token;          /* OK on acquire */
    int64_t ttl_left_ms;    /* BUSY/HELD: how long the holder's lease still runs;
                               QUIET: how long new leases are held back */
    int reaped;             /* expired leases this call reaped */
    const char *error;      /* ERROR: Redis' text, valid during the callback */
} sbx_lease_reply;

typedef void (*sbx_lease_cb)(void *arg, const sbx_lease_reply *rep);

typedef struct sbx_leases sbx_leases;

int sbx_leases_new(sbx_redis *r, sbx_leases **out);
void sbx_leases_free(sbx_leases *l);

/* Every call returns 0 and later calls cb once (never from inside the call),
 * or returns an error and never calls cb (Redis down). A batched call whose
 * batch fails (connection lost, Redis down by the time it is sent) gets
 * ERROR once. */
/* token_floor: the newest token the caller knows (the job's run row, or any
 * it saw); the new token is above it even if Redis lost its counter
 * (restart without data). A counter below it is that loss seen: the reply
 * is QUIET, and so is every acquire for one ttl (acquire.lua says why). */
int sbx_lease_acquire(sbx_leases *l, const char *pool, const char *project, const char *job,
                      const char *worker, int64_t ttl_ms, int64_t token_floor, sbx_lease_cb cb,
                      void *arg);
/* pool may name several pools, comma-separated, tried in that order: the
 * first with a free slot gives it (spill-over; reply.pool says which). */
/* The same for a job of a session (session: its sandbox name, "" none): the
 * session's slot again when it keeps one (kept from its last job; BUSY while
 * someone leases it), else a free slot that the session then keeps. With
 * session "!<name>" it is the session sweeper's: the session's slot or
 * GONE, never another slot. The project's one-lease rule holds either way. */
int sbx_lease_acquire_session(sbx_leases *l, const char *pool, const char *project,
                              const char *job, const char *worker, int64_t ttl_ms,
                              int64_t token_floor, const char *session, sbx_lease_cb cb,
                              void *arg);
/* Who holds a lease: what renew needs to take a lease back that Redis lost
 * (restarted without its data). */
typedef struct sbx_lease_id {
    const char *pool, *slot, *project, *job, *worker;
    int64_t token;
} sbx_lease_id;

/* OK (reaped = 1 when the lease had to be restored), or LOST. */
int sbx_lease_renew(sbx_leases *l, const sbx_lease_id *id, int64_t ttl_ms, sbx_lease_cb cb,
                    void *arg);
/* Lifts the token counter to at least floor (the newest token PostgreSQL
 * recorded) so tokens keep growing after Redis lost its data; a lift also
 * holds new leases back for ttl_ms (acquire replies QUIET). */
int sbx_lease_fence_floor(sbx_leases *l, int64_t floor, int64_t ttl_ms, sbx_lease_cb cb,
                          void *arg);
int sbx_lease_release(sbx_leases *l, const char *slot, int64_t token, sbx_lease_cb cb,
                      void *arg);
/* A session's lease leaves its slot kept for the session (release does that
 * by itself); end != 0 also ends the session's hold: the slot is free. */
int sbx_lease_release_session(sbx_leases *l, const char *slot, int64_t token, int end,
                              sbx_lease_cb cb, void *arg);
/* Makes the pool's slot set exactly `slots` (free unless leased, or marked
 * busy as "!<slot>" by the registrant); any
 * number of slots (sent in chunks). registrant names the caller (its worker
 * id) so two registrations of one pool never mix their chunks. */
int sbx_lease_register(sbx_leases *l, const char *pool, const char *registrant,
                       const char *const *slots, int nslots, sbx_lease_cb cb, void *arg);

/* What the batching and the local answers saved, for the stats line and the
 * tests. */
typedef struct sbx_leases_stats {
    uint64_t script_calls;     /* EVALSHA/EVAL sent, every kind */
    uint64_t acquires_sent;    /* acquires that reached Redis */
    uint64_t granted;          /* of those: OK */
    uint64_t refused_remote;   /* of those: BUSY, HELD, NOCAP, QUIET */
    uint64_t local_busy;       /* answered BUSY here: the project is ours */
    uint64_t waited;           /* waited for another job's acquire here */
} sbx_leases_stats;

void sbx_leases_get_stats(const sbx_leases *l, sbx_leases_stats *out);

#endif
