/* prune.c — retention of sbx.runs and sbx.run_events, and of
 * sbx.dead_letters (its own age, SBX_DLQ_RETENTION: one pruner each, the
 * same machinery, a different function and advisory lock in SQL).
 *
 * A pass is a chain of statements, never more than one in flight:
 * `SELECT sbx.prune_runs(keep, batch)` deletes up to `batch` of the oldest
 * terminal runs past `keep` with their history and says how many it removed;
 * a full batch means more may be waiting, so the next one is sent after a
 * pause; a short one (or 0) ends the pass. The cron starts a pass now and
 * then (main.c); a pass under way is never started twice.
 *
 * Why this shape:
 * - Small batches with pauses: one DELETE of a month of runs would hold
 *   locks, bloat WAL and stall the commits of running jobs that share its
 *   round (db.c's group commit); a thousand at a time costs milliseconds.
 * - One worker at a time: the function takes a transaction-level advisory
 *   lock with pg_try_advisory_xact_lock and returns -1 when another session
 *   holds it, so this pass simply ends and the cron tries again later. No
 *   worker waits on another, and N workers do not delete N times the rows
 *   per second.
 * - Through db.c like every other statement: the loop never blocks, and a
 *   statement lost with a connection is sent again (a batch is idempotent:
 *   it deletes whatever is old at the time it runs). A batch may share a
 *   group-commit round with job writes; if it fails (migration 0003 not
 *   applied yet) the round is sent again statement by statement, once per
 *   cron period, and the pass ends with a warning.
 */
#include "prune.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* What each table's pruner calls, and what it says it removed. */
static const struct {
    const char *sql, *fn, *removed;
} tables[] = {
    [SBX_PRUNE_RUNS] = {"SELECT sbx.prune_runs($1::interval, $2::integer)", "sbx.prune_runs",
                        "runs finished more than %s ago, with their history"},
    [SBX_PRUNE_DEAD_LETTERS] = {"SELECT sbx.prune_dead_letters($1::interval, $2::integer)",
                                "sbx.prune_dead_letters", "dead letters recorded more than %s ago"},
};

struct sbx_prune {
    sbx_prune_table table;
    sbx_loop *loop;
    sbx_db *db;
    char keep[32];          /* "%lld seconds", an interval literal */
    char batch[16];
    int batch_n;
    uint64_t pause_ms;
    sbx_timer pause;
    int running;            /* a statement is in flight or the pause armed */
    uint64_t pass_total;    /* runs removed by the pass under way */
    uint64_t total;
};

static void end_pass(sbx_prune *p)
{
    char what[160];
    if (p->pass_total > 0) {
        snprintf(what, sizeof(what), tables[p->table].removed, p->keep);
        sbx_info("prune", "removed %" PRIu64 " %s", p->pass_total, what);
    }
    p->running = 0;
}

static void on_batch(void *arg, PGresult *res, const char *err)
{
    sbx_prune *p = arg;
    long n;

    if (!res || PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        sbx_warn("prune", "%s failed (run `sbx migrate`?): %.*s", tables[p->table].fn,
                 err ? (int)strcspn(err, "\n") : 6, err ? err : "no row");
        end_pass(p);
        return;
    }
    n = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    if (n < 0) {
        sbx_debug("prune", "another worker is pruning; this pass ends");
        end_pass(p);
        return;
    }
    p->total += (uint64_t)n;
    p->pass_total += (uint64_t)n;
    if (n < p->batch_n) {
        end_pass(p);
        return;
    }
    sbx_timer_start(p->loop, &p->pause, p->pause_ms);
}

static void send_batch(sbx_prune *p)
{
    const char *params[2] = {p->keep, p->batch};
    int rc = sbx_db_query(p->db, tables[p->table].sql, 2, params, on_batch, p);
    if (rc != 0) {
        sbx_warn("prune", "not queued: %s", strerror(-rc));
        end_pass(p);
    }
}

static void on_pause(sbx_timer *t) { send_batch(t->data); }

int sbx_prune_new(sbx_loop *loop, sbx_db *db, long long keep_s, int batch, uint64_t pause_ms,
                  sbx_prune **out)
{
    return sbx_prune_new_table(loop, db, SBX_PRUNE_RUNS, keep_s, batch, pause_ms, out);
}

int sbx_prune_new_table(sbx_loop *loop, sbx_db *db, sbx_prune_table table, long long keep_s,
                        int batch, uint64_t pause_ms, sbx_prune **out)
{
    sbx_prune *p;

    if (keep_s <= 0 || batch < 1 || (table != SBX_PRUNE_RUNS && table != SBX_PRUNE_DEAD_LETTERS))
        return -EINVAL;
    p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->table = table;
    p->loop = loop;
    p->db = db;
    snprintf(p->keep, sizeof(p->keep), "%lld seconds", keep_s);
    snprintf(p->batch, sizeof(p->batch), "%d", batch);
    p->batch_n = batch;
    p->pause_ms = pause_ms;
    sbx_timer_init(&p->pause, on_pause, p);
    *out = p;
    return 0;
}

void sbx_prune_free(sbx_prune *p)
{
    if (!p)
        return;
    sbx_timer_stop(p->loop, &p->pause);
    free(p);
}

void sbx_prune_pass(sbx_prune *p)
{
    if (p->running)
        return;
    p->running = 1;
    p->pass_total = 0;
    send_batch(p);
}

int sbx_prune_running(const sbx_prune *p) { return p->running; }
uint64_t sbx_prune_total(const sbx_prune *p) { return p ? p->total : 0; }
