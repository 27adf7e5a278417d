/* provider_bench.c — the `bench` provider (provider_bench.h): builds that do
 * nothing, so a benchmark measures the worker's own cost per job (Kafka,
 * Redis, PostgreSQL, the state machine), not a sandbox's.
 *
 * A run is STARTED and then FINISHED with exit code 0 (SUCCEEDED): both at
 * once from the loop when hold_ms is 0, or FINISHED hold_ms after STARTED
 * (the "10,000 builds that each last a minute" case). cancel() ends a run
 * CANCELED from the loop. Nothing is ever delivered from inside start() or
 * cancel(), as provider.h promises.
 *
 * Why it is shaped so: it runs 100,000 jobs in a row or holds 10,000 at once,
 * so its own cost must stay out of the figures.
 *  - Slot ids "bench/<node>/<i>" are formatted once, into one buffer, and
 *    start() finds a slot by parsing the number after the pool prefix
 *    instead of searching 100,000 strings.
 *  - A run is a small fixed-size struct with its timer embedded (loop.h:
 *    starting a timer never allocates). Runs come from a free list refilled
 *    a chunk at a time, so the hot path does not call malloc; chunks are kept
 *    until destroy(). At most one run per slot exists (busy bitmap), so the
 *    chunks never outgrow nslots runs.
 *  - The sbx_result handed to callbacks is the provider's, zeroed once:
 *    it is 9 KB, and clearing one per event would be most of this file's cost.
 *  - Per-run log lines are at debug level only.
 */
#include "provider_bench.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Runs allocated per refill of the free list: 256 * ~100 bytes is a page
 * group, small next to the 10,000-run case and one malloc per 256 starts in
 * the worst case. */
#define RUN_CHUNK 256
/* The node becomes part of slot ids, which lease keys and run rows carry
 * (the job state machine keeps slots in 192 bytes). */
#define NODE_MAX 64
/* The worker config caps SBX_BENCH_SLOTS at 10,000,000; the same bound keeps
 * the id buffer (about 25 bytes a slot) under 256 MB. */
#define BENCH_SLOTS_MAX 10000000

typedef enum bstate {
    B_STARTING,   /* start() returned; STARTED is due at the next loop turn */
    B_HOLDING,    /* STARTED delivered; FINISHED due when the hold timer fires */
} bstate;

struct sbx_run {
    struct bench *p;
    struct sbx_run *prev, *next;  /* live list; next links the free list too */
    sbx_timer t;
    sbx_run_cb cb;
    void *arg;
    int64_t token;
    uint32_t slot;
    uint8_t st;                   /* bstate */
    uint8_t canceled;
};

typedef struct chunk {
    struct chunk *next;
    struct sbx_run runs[RUN_CHUNK];
} chunk;

typedef struct bench {
    sbx_provider base;
    char pool[sizeof("bench/") + NODE_MAX];
    size_t pool_len;
    int nslots;
    int hold_ms;
    char *id_buf;                 /* every slot id, NUL-separated */
    const char **ids;             /* ids[i] points into id_buf */
    uint64_t *busy;               /* bitmap: slot i runs something */
    struct sbx_run *live;         /* every run not yet FINISHED */
    struct sbx_run *free_runs;
    chunk *chunks;
    size_t nlive;
    sbx_result res;               /* handed to callbacks; see the top */
} bench;

static int busy_get(const bench *p, uint32_t i) { return (p->busy[i / 64] >> (i % 64)) & 1; }
static void busy_set(bench *p, uint32_t i) { p->busy[i / 64] |= UINT64_C(1) << (i % 64); }
static void busy_clear(bench *p, uint32_t i) { p->busy[i / 64] &= ~(UINT64_C(1) << (i % 64)); }

/* "<pool>/<i>" -> i, or -1. The final strcmp refuses "007" and "+7", which
 * the table would not hold. */
static long slot_index(const bench *p, const char *slot)
{
    const char *s;
    long i = 0;

    if (!slot || strncmp(slot, p->pool, p->pool_len) != 0 || slot[p->pool_len] != '/')
        return -1;
    s = slot + p->pool_len + 1;
    if (*s < '0' || *s > '9')
        return -1;
    for (; *s >= '0' && *s <= '9'; s++) {
        i = i * 10 + (*s - '0');
        if (i >= p->nslots)
            return -1;
    }
    if (*s || strcmp(p->ids[i], slot) != 0)
        return -1;
    return i;
}

static int refill(bench *p)
{
    chunk *c = malloc(sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->next = p->chunks;
    p->chunks = c;
    for (int i = RUN_CHUNK - 1; i >= 0; i--) {
        c->runs[i].next = p->free_runs;
        p->free_runs = &c->runs[i];
    }
    return 0;
}

static void unlink_run(bench *p, struct sbx_run *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        p->live = r->next;
    if (r->next)
        r->next->prev = r->prev;
    p->nlive--;
}

/* Forgets the run before telling: the callback may start the next build in
 * this slot, and may reuse this very struct through start(). */
static void finish(struct sbx_run *r)
{
    bench *p = r->p;
    sbx_run_cb cb = r->cb;
    void *arg = r->arg;
    int canceled = r->canceled;

    sbx_timer_stop(p->base.loop, &r->t);
    sbx_debug("bench", "run end slot=%s token=%" PRId64 " outcome=%s", p->ids[r->slot], r->token,
              canceled ? "canceled" : "succeeded");
    busy_clear(p, r->slot);
    unlink_run(p, r);
    r->next = p->free_runs;
    p->free_runs = r;

    p->res.outcome = canceled ? SBX_OUTCOME_CANCELED : SBX_OUTCOME_SUCCEEDED;
    p->res.exit_code = canceled ? -1 : 0;
    cb(arg, SBX_RUN_FINISHED, &p->res);
}

static void on_timer(sbx_timer *t)
{
    struct sbx_run *r = t->data;
    bench *p = r->p;

    if (r->st == B_STARTING) {
        r->st = B_HOLDING;
        p->res.outcome = SBX_OUTCOME_SUCCEEDED;
        p->res.exit_code = -1;
        r->cb(r->arg, SBX_RUN_STARTED, &p->res);
        /* The callback may have canceled the run (timer restarted at 0):
         * end it now either way rather than one more loop turn later. */
        if (!r->canceled && p->hold_ms > 0) {
            sbx_timer_start(p->base.loop, &r->t, (uint64_t)p->hold_ms);
            return;
        }
    }
    finish(r);
}

static int bench_start(sbx_provider *bp, const sbx_run_req *req, sbx_run_cb cb, void *arg,
                       sbx_run **out, char *err, size_t errlen)
{
    bench *p = (bench *)bp;
    struct sbx_run *r;
    long i = slot_index(p, req->slot);
    int rc;

    if (i < 0) {
        snprintf(err, errlen, "slot %.128s is not one of %s's", req->slot ? req->slot : "(null)",
                 p->pool);
        return -EINVAL;
    }
    if (busy_get(p, (uint32_t)i)) {
        snprintf(err, errlen, "slot %s is busy", p->ids[i]);
        return -EBUSY;
    }
    if (!p->free_runs && (rc = refill(p)) != 0) {
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    r = p->free_runs;
    sbx_timer_init(&r->t, on_timer, r);
    /* STARTED comes from the loop, never from inside start(). */
    sbx_timer_start(p->base.loop, &r->t, 0);
    p->free_runs = r->next;
    r->p = p;
    r->cb = cb;
    r->arg = arg;
    r->token = req->token;
    r->slot = (uint32_t)i;
    r->st = B_STARTING;
    r->canceled = 0;
    r->prev = NULL;
    r->next = p->live;
    if (p->live)
        p->live->prev = r;
    p->live = r;
    p->nlive++;
    busy_set(p, (uint32_t)i);
    sbx_debug("bench", "run start slot=%s token=%" PRId64 " job=%s attempt=%d", p->ids[i],
              req->token, req->job ? req->job->job_id : "-", req->attempt);
    *out = r;
    return 0;
}

static void bench_cancel(sbx_provider *bp, sbx_run *r)
{
    bench *p = (bench *)bp;
    if (r->canceled)
        return;
    r->canceled = 1;
    sbx_debug("bench", "run cancel slot=%s token=%" PRId64, p->ids[r->slot], r->token);
    /* A run still STARTING ends at its pending 0 ms timer; a holding one is
     * brought forward. If the heap cannot grow, the hold timer stays and
     * ends it CANCELED later: late, never lost. */
    if (r->st == B_HOLDING)
        sbx_timer_start(p->base.loop, &r->t, 0);
}

static size_t bench_slots(sbx_provider *bp, const char ***ids)
{
    bench *p = (bench *)bp;
    *ids = p->ids;
    return (size_t)p->nslots;
}

static const char *bench_pool(sbx_provider *bp) { return ((bench *)bp)->pool; }

static void free_provider(bench *p)
{
    if (!p)
        return;
    while (p->chunks) {
        chunk *c = p->chunks;
        p->chunks = c->next;
        free(c);
    }
    free(p->busy);
    free(p->ids);
    free(p->id_buf);
    free(p);
}

static void bench_destroy(sbx_provider *bp)
{
    bench *p = (bench *)bp;
    size_t n = p->nlive;

    for (struct sbx_run *r = p->live; r; r = r->next)
        sbx_timer_stop(p->base.loop, &r->t);
    sbx_info("bench", "provider closed pool=%s dropped=%zu", p->pool, n);
    free_provider(p);
}

static const sbx_provider_ops bench_ops = {
    .name = "bench",
    .start = bench_start,
    .cancel = bench_cancel,
    .slots = bench_slots,
    .pool = bench_pool,
    .destroy = bench_destroy,
};

int sbx_bench_new(sbx_loop *loop, const char *node, int slots, int hold_ms, sbx_provider **out,
                  char *err, size_t errlen)
{
    bench *p = NULL;
    size_t per_id, cap, used = 0;
    int rc = 0;

    if (err && errlen)
        err[0] = '\0';
    if (!loop || !out) {
        snprintf(err, errlen, "bench: missing loop or out");
        return -EINVAL;
    }
    if (!node || !node[0] || strchr(node, '/') || strlen(node) > NODE_MAX) {
        snprintf(err, errlen, "bench: node must be a name of 1..%d bytes without '/'", NODE_MAX);
        return -EINVAL;
    }
    if (slots < 1 || slots > BENCH_SLOTS_MAX) {
        snprintf(err, errlen, "bench: slots must be 1..%d", BENCH_SLOTS_MAX);
        return -EINVAL;
    }
    if (hold_ms < 0) {
        snprintf(err, errlen, "bench: hold_ms must be >= 0");
        return -EINVAL;
    }
    p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    p->base.ops = &bench_ops;
    p->base.loop = loop;
    p->nslots = slots;
    p->hold_ms = hold_ms;
    p->res.exit_code = -1;
    snprintf(p->pool, sizeof(p->pool), "bench/%s", node);
    p->pool_len = strlen(p->pool);

    /* "<pool>/<i>\0" with i of at most 8 digits (BENCH_SLOTS_MAX - 1). */
    per_id = p->pool_len + 1 + 8 + 1;
    cap = per_id * (size_t)slots;
    p->id_buf = malloc(cap);
    p->ids = malloc((size_t)slots * sizeof(*p->ids));
    p->busy = calloc(((size_t)slots + 63) / 64, sizeof(*p->busy));
    if (!p->id_buf || !p->ids || !p->busy) {
        rc = -ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (int i = 0; i < slots; i++) {
        int n = snprintf(p->id_buf + used, cap - used, "%s/%d", p->pool, i);
        p->ids[i] = p->id_buf + used;
        used += (size_t)n + 1;
    }
    sbx_info("bench", "provider ready pool=%s slots=%d hold_ms=%d", p->pool, slots, hold_ms);
    *out = &p->base;
    p = NULL;
out:
    free_provider(p);
    return rc;
}
