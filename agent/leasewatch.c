/* leasewatch.c — no build on this agent outlives its worker's lease.
 *
 * A worker frozen (SIGSTOP) or cut off from Redis stops renewing its lease;
 * the lease expires in Redis and another worker takes the job over with a
 * newer token and wakes a slot for it, maybe on another VM. The frozen
 * worker cannot tell us to stop its build, so the agent checks for itself:
 * every LW_PERIOD_MS, for each running build, one lease_left.lua call asks
 * whether the slot's lease still carries the build's token and how long it
 * has left, and the answer gives the build's sandbox a deadline
 * (sbx_runs_trust, i.e. the sandbox's supervisor process of
 * common/supervise.c, so a frozen agent cannot overrun it either):
 *
 *     deadline = sent + left - margin,  margin = a tenth of the longest left
 *                                       seen for the build (>= LW_MARGIN_MIN_MS)
 *
 * The worker renews every third of the TTL, so the longest left is about
 * the TTL, and the deadline falls where the worker's own trust window (90 %
 * of the TTL after a renewal was sent) ends: strictly before the lease can
 * expire and be reaped. `sent` is our clock when the call left, earlier
 * than Redis' TIME inside it, so the error is on the safe side.
 *   OK    push the deadline.
 *   LOST  another token holds the slot: deadline now (SIGKILL at once).
 *   GONE  no lease: released (the build is ending), reaped after expiry (the
 *         last deadline has passed already), or Redis lost its data (the
 *         worker restores the lease at its next renewal, renew.lua): keep
 *         the last deadline, neither push nor kill.
 *   no answer (Redis down): keep the last deadline; the worker cannot renew
 *         either, and stops trusting its lease at about the same time.
 * A build has no deadline until its first answer (at most one period after
 * its start, while its lease is fresh).
 *
 * Why read Redis rather than have the worker push each renewal to the agent
 * (a /renew call): the lease in Redis is what the taking-over worker acts
 * on. A worker partitioned from the agent but not from Redis still holds its
 * lease (a push would kill a healthy build); one partitioned from Redis but
 * not from the agent has lost it (a push would keep a build that must die).
 * It needs no endpoint and nothing from the worker; it costs one small
 * script call per running build per period.
 *
 * The period bounds how late a renewal is seen: the deadline must not pass
 * between two renewals of a live worker, i.e. LW_PERIOD_MS < TTL * (2/3 -
 * 1/10) (a renewal every third of the TTL, the margin a tenth): TTL >= 1 s
 * (the worker's minimum) allows 560 ms.
 */
#include "leasewatch.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_config.h"
#include "log.h"
#include "rscripts.h"

/* How often the running builds' leases are read (see above for the bound). */
#define LW_PERIOD_MS 250
/* The smallest margin before expiry, whatever the TTL. */
#define LW_MARGIN_MIN_MS 100

/* One check per slot (checks[i] is slot i's); its next call waits for the
 * answer to the last. */
typedef struct check {
    sbx_leasewatch *lw;
    int pending;
    char run_id[SBX_RUN_ID_MAX];
    int64_t token;
    uint64_t sent_ms;
    int64_t left_max;           /* the longest left seen for run_id */
} check;

struct sbx_leasewatch {
    sbx_loop *loop;
    sbx_redis *redis;
    sbx_runs *runs;             /* NULL once stopped */
    sbx_redis_script *script;
    sbx_timer t;
    check checks[SBX_AGENT_CAPACITY_MAX];
};

static void on_left(void *arg, redisReply *rep)
{
    check *c = arg;
    sbx_leasewatch *lw = c->lw;
    const char *st;
    int64_t left, margin;
    uint64_t until;

    c->pending = 0;
    if (!lw->runs || !rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING || rep->element[1]->type != REDIS_REPLY_INTEGER)
        return; /* stopped, or no answer: the last deadline stands */
    st = rep->element[0]->str;
    left = rep->element[1]->integer;
    if (strcmp(st, "LOST") == 0) {
        if (sbx_runs_trust(lw->runs, c->run_id, sbx_now_ms()) == 0)
            sbx_warn("leasewatch", "run %s: its lease (token %" PRId64 ") has a newer owner; "
                     "killing it", c->run_id, c->token);
        return;
    }
    if (strcmp(st, "OK") != 0)
        return; /* GONE */
    if (left > c->left_max)
        c->left_max = left;
    margin = c->left_max / 10 > LW_MARGIN_MIN_MS ? c->left_max / 10 : LW_MARGIN_MIN_MS;
    until = left > margin ? c->sent_ms + (uint64_t)(left - margin) : sbx_now_ms();
    sbx_runs_trust(lw->runs, c->run_id, until);
}

static void check_all(sbx_leasewatch *lw)
{
    const char *ids[SBX_AGENT_CAPACITY_MAX];
    size_t n = sbx_runs_running_ids(lw->runs, ids, SBX_AGENT_CAPACITY_MAX);

    size_t cap = sbx_runs_capacity(lw->runs);

    for (size_t i = 0; i < n; i++) {
        sbx_run_view v;
        check *c = NULL;
        char tok[24];
        const char *argv[3];
        size_t lens[3];

        if (sbx_runs_view(lw->runs, ids[i], &v) != 0)
            continue;
        for (size_t k = 0; k < cap && k < SBX_AGENT_CAPACITY_MAX && !c; k++)
            if (strcmp(sbx_runs_slot_id(lw->runs, k), v.slot) == 0)
                c = &lw->checks[k];
        if (!c || c->pending)
            continue; /* the slot's last answer first: it names its own run */
        if (strcmp(c->run_id, v.id) != 0) {
            snprintf(c->run_id, sizeof(c->run_id), "%s", v.id);
            c->left_max = 0;
        }
        c->token = v.token;
        snprintf(tok, sizeof(tok), "%" PRId64, v.token);
        argv[0] = "0";
        argv[1] = v.slot;
        argv[2] = tok;
        for (int k = 0; k < 3; k++)
            lens[k] = strlen(argv[k]);
        c->sent_ms = sbx_now_ms();
        if (sbx_redis_evalsha(lw->redis, lw->script, on_left, c, 3, argv, lens) == 0)
            c->pending = 1;
    }
}

static void on_timer(sbx_timer *t)
{
    sbx_leasewatch *lw = t->data;
    if (!lw->runs)
        return;
    if (sbx_redis_connected(lw->redis))
        check_all(lw);
    sbx_timer_start(lw->loop, &lw->t, LW_PERIOD_MS);
}

int sbx_leasewatch_new(sbx_loop *loop, sbx_redis *redis, sbx_runs *runs, sbx_leasewatch **out)
{
    sbx_leasewatch *lw = calloc(1, sizeof(*lw));
    if (!lw)
        return -ENOMEM;
    lw->script = sbx_redis_script_new(sbx_lua_lease_left);
    if (!lw->script) {
        free(lw);
        return -ENOMEM;
    }
    lw->loop = loop;
    lw->redis = redis;
    lw->runs = runs;
    for (size_t k = 0; k < SBX_AGENT_CAPACITY_MAX; k++)
        lw->checks[k].lw = lw;
    sbx_timer_init(&lw->t, on_timer, lw);
    sbx_timer_start(loop, &lw->t, LW_PERIOD_MS);
    *out = lw;
    return 0;
}

void sbx_leasewatch_stop(sbx_leasewatch *lw)
{
    if (!lw)
        return;
    lw->runs = NULL;
    sbx_timer_stop(lw->loop, &lw->t);
}

void sbx_leasewatch_free(sbx_leasewatch *lw)
{
    if (!lw)
        return;
    sbx_leasewatch_stop(lw);
    sbx_redis_script_free(lw->script);
    free(lw);
}
