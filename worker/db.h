/* db.h — one non-blocking PostgreSQL connection in pipeline mode.
 *
 * Callers queue parameterised statements; the connection sends them without
 * waiting for earlier answers (libpq pipeline mode; what queued while a round
 * was in flight goes as the next round, one transaction, and a round that
 * fails is sent again one statement per transaction, so one failure aborts
 * nothing else: db.c) and calls back in order. While PostgreSQL is away the queue keeps growing up to
 * SBX_DB_QUEUE_MAX and the connection retries with backoff; statements that
 * were in flight when the link broke are sent again after reconnecting, so
 * every statement sent through here must be idempotent (the sbx.* functions
 * of migrations/ are: see their comments).
 */
#ifndef SBX_DB_H
#define SBX_DB_H

#include <stddef.h>
#include <stdint.h>
#include <libpq-fe.h>

#include "loop.h"

/* Statements waiting or in flight. Bounded so an outage cannot eat memory:
 * about 4 KiB each with a log tail, so 64k is ~256 MiB at worst; the worker
 * stops taking jobs long before (max in-flight jobs). */
#define SBX_DB_QUEUE_MAX 65536

typedef struct sbx_db sbx_db;

/* res is NULL when the statement failed (err says why); it is cleared after
 * the call. A failed statement is not retried: the caller decides. */
typedef void (*sbx_db_cb)(void *arg, PGresult *res, const char *err);
typedef void (*sbx_db_state_cb)(void *arg, int connected);

int sbx_db_new(sbx_loop *loop, const char *conninfo, sbx_db_state_cb state_cb, void *arg,
               sbx_db **out);
void sbx_db_free(sbx_db *db);
int sbx_db_connected(const sbx_db *db);
/* Why the last connection attempt failed or the link broke (libpq's first
 * line: never the password), "" once connected; for the start-up wait. */
const char *sbx_db_last_error(const sbx_db *db);
size_t sbx_db_queued(const sbx_db *db);
/* Since start, for the worker's stats line and /metrics: calls answered and
 * statements sent (their ratio is what merging saves), and, summed over the
 * calls, the time each waited in the queue (for the round before it, at
 * most) and the time its round took (PostgreSQL and the link). */
typedef struct sbx_db_count {
    uint64_t calls, statements, wait_us, round_us;
} sbx_db_count;
void sbx_db_counts(const sbx_db *db, sbx_db_count *c);

/* Notifications: after every (re)connect the connection LISTENs to channel
 * and calls cb(arg, payload) for each NOTIFY on it. A notification sent while
 * the link was down is lost: callers re-check state after reconnecting
 * (state_cb). One channel per connection is all sbx needs. */
typedef void (*sbx_db_notify_cb)(void *arg, const char *payload);
int sbx_db_listen(sbx_db *db, const char *channel, sbx_db_notify_cb cb, void *arg);

/* Queues a statement; params are copied. Returns 0 (cb will be called once),
 * or -ENOBUFS when the queue is full (cb will not be called). */
int sbx_db_query(sbx_db *db, const char *sql, int nparams, const char *const *params,
                 sbx_db_cb cb, void *arg);

/* A statement that merges: the calls of one kind that wait for the same
 * round are sent as ONE statement, `many`, whose parameters are arrays (the
 * n-th element of $k is the n-th call's k-th parameter, NULL kept) and which
 * answers one row per call, in call order, with the columns `one` answers.
 * Each call still gets its own callback with a one-row result. Calls of a
 * kind fewer than its merge_min in a round, or sent again after their round
 * failed, go as `one`, so a failing call reports its own error. `many` must give exactly the answers
 * the calls one by one would (migrations/0009_batches.sql). */
typedef struct sbx_db_batch {
    const char *one;    /* one call: $1..$nparams */
    const char *many;   /* many calls: $1..$nparams are text arrays */
    int nparams;
    /* Merge from this many calls in a round; fewer go one by one. The array
     * form has a fixed cost (its set-up statements) that only enough calls
     * pay back. */
    int merge_min;
} sbx_db_batch;

/* Queues one call of a kind; returns as sbx_db_query(). */
int sbx_db_batched(sbx_db *db, const sbx_db_batch *kind, const char *const *params,
                   sbx_db_cb cb, void *arg);

#endif
