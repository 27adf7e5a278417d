/* deps.c — consumer-group membership follows the dependencies.
 *
 * A worker in the group holds partitions; if it cannot reach Redis (leases)
 * or PostgreSQL (runs), their jobs wait as `queued` behind it while healthy
 * workers idle. So membership is decided here, from the two connections'
 * state, sampled every TICK_MS (their own callbacks belong to main.c and
 * db.c's callers; a poll keeps this file the only one that knows):
 *
 *   STARTING  not in the group. Joins once Redis and PostgreSQL both
 *             answer; logs one line per dependency it waits for (which,
 *             where with the password hidden, the error). After
 *             SBX_STARTUP_WAIT_MS it gives up: one line per dependency on
 *             stderr and the loop stops, so the process exits non-zero
 *             instead of idling as a member that cannot work.
 *   JOINED    in the group. A dependency down for SBX_DEPENDENCY_GRACE_MS
 *             makes it leave (sbx_kafka_leave: revoke as in a rebalance,
 *             LeaveGroup, so the others take the partitions at once).
 *             Shorter outages are ridden out as before (README "Outages").
 *   OUT       left. Rejoins once both have answered for REJOIN_AFTER_MS,
 *             so a dependency that flaps does not rebalance the group on
 *             every blip.
 *
 * Leaving is not SIGTERM's hand-back: w->stopping stays 0, running builds
 * keep running (their leases' trust window decides, as in any Redis
 * outage), their offsets stay unfinished and so uncommitted, and the new
 * owner of a partition meets those jobs again, where the live lease, the
 * fencing token and record_run keep them from running twice. Only jobs
 * that wait for capacity (holding nothing) are handed back, as the soft
 * shutdown does: the partition's new owner runs them.
 */
#include "deps.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "worker.h"

/* Sampling period of the connections' state: the resolution of the grace
 * and of the start-up wait. */
#define TICK_MS 250
/* Both dependencies up this long before an OUT worker rejoins. */
#define REJOIN_AFTER_MS 5000
/* A dependency still down this long into the start-up wait is logged even
 * if its first attempt has not failed yet (a connect that hangs). */
#define FIRST_WAIT_LOG_MS 2000
/* A redacted URL: the settings cap SBX_DATABASE_URL at 1 KiB. */
#define URL_SHOWN_MAX 1100

enum { DEP_REDIS, DEP_PG, NDEPS };
static const char *const dep_names[NDEPS] = {"redis", "postgres"};

struct sbx_deps {
    sbx_worker *w;
    sbx_timer tick;
    sbx_deps_state st;
    uint64_t started_ms;            /* sbx__deps_new() */
    uint64_t changed_ms;            /* the last join or leave */
    uint64_t down_since[NDEPS];     /* 0: up */
    uint64_t up_since[NDEPS];       /* 0: down */
    int wait_logged[NDEPS];         /* STARTING: its wait line is out */
    int left_for;                   /* OUT: the dependency that made us leave */
};

static int dep_up(const sbx_deps *d, int i)
{
    return i == DEP_REDIS ? sbx_redis_connected(d->w->redis) : sbx_db_connected(d->w->db);
}

static const char *dep_error(const sbx_deps *d, int i)
{
    const char *e = i == DEP_REDIS ? sbx_redis_last_error(d->w->redis)
                                   : sbx_db_last_error(d->w->db);
    return *e ? e : "no answer yet";
}

static void dep_where(const sbx_deps *d, int i, char *out, size_t len)
{
    sbx_log_redact(i == DEP_REDIS ? d->w->cfg.redis_url : d->w->cfg.database_url, out, len);
}

static void sample(sbx_deps *d, uint64_t now)
{
    for (int i = 0; i < NDEPS; i++) {
        if (dep_up(d, i)) {
            d->down_since[i] = 0;
            if (!d->up_since[i])
                d->up_since[i] = now;
        } else {
            d->up_since[i] = 0;
            if (!d->down_since[i])
                d->down_since[i] = now;
        }
    }
}

static void join(sbx_deps *d, uint64_t now, const char *why)
{
    if (sbx_kafka_join(d->w->kafka) != 0)
        return;     /* logged; tried again next tick */
    sbx_info("deps", "%s: joining the consumer group", why);
    d->st = SBX_DEPS_JOINED;
    d->changed_ms = now;
}

static void starting(sbx_deps *d, uint64_t now)
{
    sbx_worker *w = d->w;
    uint64_t waited = now - d->started_ms;
    char where[URL_SHOWN_MAX];
    int down = 0;

    for (int i = 0; i < NDEPS; i++) {
        const char *err = i == DEP_REDIS ? sbx_redis_last_error(w->redis)
                                         : sbx_db_last_error(w->db);
        if (dep_up(d, i))
            continue;
        down++;
        if (d->wait_logged[i] || (!*err && waited < FIRST_WAIT_LOG_MS))
            continue;
        d->wait_logged[i] = 1;
        dep_where(d, i, where, sizeof(where));
        sbx_warn("deps", "waiting for %s at %s (%s); not joining the consumer group until it "
                         "answers, for up to SBX_STARTUP_WAIT_MS=%d",
                 dep_names[i], where, dep_error(d, i), w->cfg.startup_wait_ms);
    }
    if (!down) {
        char why[64];
        snprintf(why, sizeof(why), "redis and postgres answer after %llu ms",
                 (unsigned long long)waited);
        join(d, now, why);
        return;
    }
    if (waited < (uint64_t)w->cfg.startup_wait_ms)
        return;
    for (int i = 0; i < NDEPS; i++) {
        if (dep_up(d, i))
            continue;
        dep_where(d, i, where, sizeof(where));
        fprintf(stderr, "sbx-worker: %s at %s did not answer within SBX_STARTUP_WAIT_MS=%d (%s): "
                        "start it, or fix %s\n", dep_names[i], where, w->cfg.startup_wait_ms,
                dep_error(d, i), i == DEP_REDIS ? "SBX_REDIS_URL" : "SBX_DATABASE_URL");
    }
    d->st = SBX_DEPS_FAILED;
    sbx_loop_stop(w->loop);
}

static void joined(sbx_deps *d, uint64_t now)
{
    sbx_worker *w = d->w;
    int worst = -1;

    for (int i = 0; i < NDEPS; i++)
        if (d->down_since[i] && now - d->down_since[i] >= (uint64_t)w->cfg.dependency_grace_ms &&
            (worst < 0 || d->down_since[i] < d->down_since[worst]))
            worst = i;
    if (worst < 0)
        return;
    sbx_warn("deps", "%s down for %llu s (%s), longer than SBX_DEPENDENCY_GRACE_MS=%d: pausing "
                     "intake and leaving the consumer group so other workers take its "
                     "partitions; %zu jobs held stay as they are",
             dep_names[worst], (unsigned long long)((now - d->down_since[worst]) / 1000),
             dep_error(d, worst), w->cfg.dependency_grace_ms, sbx__jobs_count(w));
    sbx_kafka_leave(w->kafka);
    sbx__jobs_shutdown(w, 0);
    d->st = SBX_DEPS_OUT;
    d->left_for = worst;
    d->changed_ms = now;
}

static void outside(sbx_deps *d, uint64_t now)
{
    char why[96];

    for (int i = 0; i < NDEPS; i++)
        if (!d->up_since[i] || now - d->up_since[i] < REJOIN_AFTER_MS)
            return;
    snprintf(why, sizeof(why), "redis and postgres answer for %d s again (out %llu s)",
             REJOIN_AFTER_MS / 1000, (unsigned long long)((now - d->changed_ms) / 1000));
    join(d, now, why);
}

static void on_tick(sbx_timer *t)
{
    sbx_deps *d = t->data;
    uint64_t now = sbx_now_ms();

    sample(d, now);
    /* Stopping: the shutdown owns the consumer (held, then closed). */
    if (!d->w->stopping) {
        switch (d->st) {
        case SBX_DEPS_STARTING: starting(d, now); break;
        case SBX_DEPS_JOINED: joined(d, now); break;
        case SBX_DEPS_OUT: outside(d, now); break;
        case SBX_DEPS_FAILED: return;
        }
    }
    if (d->st != SBX_DEPS_FAILED)
        sbx_timer_start(d->w->loop, &d->tick, TICK_MS);
}

int sbx__deps_new(sbx_worker *w, sbx_deps **out)
{
    sbx_deps *d = calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    d->w = w;
    d->st = SBX_DEPS_STARTING;
    d->started_ms = d->changed_ms = sbx_now_ms();
    sbx_timer_init(&d->tick, on_tick, d);
    sbx_timer_start(w->loop, &d->tick, 0);
    *out = d;
    return 0;
}

void sbx__deps_free(sbx_deps *d)
{
    if (!d)
        return;
    sbx_timer_stop(d->w->loop, &d->tick);
    free(d);
}

sbx_deps_state sbx__deps_state(const sbx_deps *d) { return d->st; }

uint64_t sbx__deps_down_s(const sbx_deps *d, const char *dep)
{
    uint64_t now = sbx_now_ms();
    for (int i = 0; i < NDEPS; i++)
        if (strcmp(dep, dep_names[i]) == 0 && d->down_since[i])
            return (now - d->down_since[i]) / 1000;
    return 0;
}

void sbx__deps_describe(const sbx_deps *d, char *buf, size_t len)
{
    uint64_t now = sbx_now_ms();

    switch (d->st) {
    case SBX_DEPS_JOINED:
        snprintf(buf, len, "joined");
        break;
    case SBX_DEPS_OUT:
        if (d->down_since[d->left_for])
            snprintf(buf, len, "paused: %s down %llus", dep_names[d->left_for],
                     (unsigned long long)((now - d->down_since[d->left_for]) / 1000));
        else
            snprintf(buf, len, "paused: %s back, rejoining", dep_names[d->left_for]);
        break;
    case SBX_DEPS_STARTING:
        snprintf(buf, len, "waiting for%s%s (%llus)", d->down_since[DEP_REDIS] ? " redis" : "",
                 d->down_since[DEP_PG] ? " postgres" : "",
                 (unsigned long long)((now - d->started_ms) / 1000));
        break;
    case SBX_DEPS_FAILED:
        snprintf(buf, len, "failed: dependencies did not answer in time");
        break;
    }
}
