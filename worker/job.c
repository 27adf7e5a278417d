/* job.c — one sandbox job, from a Kafka message to a terminal row.
 *
 * Every job is an explicit state machine; every change goes through
 * transition(), which logs "from -> to". The states:
 *
 *   RECORDING   sbx.record_run() in flight: the row exists (queued) or we
 *               learn it is already terminal (a redelivery: skip)
 *   LEASING     lease acquire (Redis) in flight
 *   WAITING     no free slot, the project is busy, or the job's own lease is
 *               still held by a previous owner; a timer retries (and a local
 *               release wakes us early)
 *   CLAIMING    we hold a lease; sbx.claim_run() stores its fencing token
 *   STARTING    provider start() called; PostgreSQL says provisioning
 *   RUNNING     the provider said STARTED; the lease is renewed on a timer
 *   FINISHING   the fenced terminal write is in flight
 *   RELEASING   lease release in flight after an end, a requeue or a loss
 *   DONE        offsets marked; the job is freed at the next safe point
 *
 * Ownership rules (see DESIGN-NOTES "Who owns a job"):
 *  - Kafka offsets are marked done only after the outcome is durable
 *    (terminal row written, or found terminal).
 *  - Every write after the claim names our token; a false answer means a newer
 *    owner exists, and we stop acting (fenced out).
 *  - We trust our lease only until sent_at + TTL - margin on the monotonic
 *    clock; past that without a renewal we cancel the build and write nothing.
 *
 * Async callbacks carry the job pointer; `ops` counts those outstanding so a
 * job is never freed under one.
 */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "text.h"
#include "worker.h"

/* Capacity waits poll at most this far apart (a local release wakes sooner). */
#define WAIT_MAX_MS 1000
/* Transient-error retries back off up to this. */
#define RETRY_MAX_MS 30000

typedef enum jstate {
    J_RECORDING, J_LEASING, J_WAITING, J_CLAIMING, J_STARTING, J_RUNNING,
    J_FINISHING, J_RELEASING, J_DONE,
} jstate;

static const char *const state_names[] = {
    "recording", "leasing", "waiting", "claiming", "starting", "running",
    "finishing", "releasing", "done",
};

/* What to do once the lease is released: finish (offsets done), wait and
 * try again, or hand the job back (shutdown: offsets stay unfinished, so the
 * next owner of the partition runs it). */
typedef enum after_release { AR_DONE, AR_WAIT, AR_HANDBACK } after_release;

struct job {
    job *hnext;                 /* hash chain */
    job *wprev, *wnext;         /* waiting FIFO */
    projq *pq;                  /* its project's waiters, when parked there */
    job *pprev, *pnext;
    int waiting_listed;
    job *dnext;                 /* dead list */
    sbx_worker *w;
    jstate st;
    char id[SBX_ID_MAX + 1];
    sbx_job *spec;
    char *raw;                  /* the message: recorded, and dead-lettered if need be */
    size_t rawlen;
    sbx_offset_ref *refs;       /* every delivery of this job we hold */
    int nrefs, caprefs;
    int attempt;                /* as counted by PostgreSQL */
    int64_t row_token;          /* the run row's newest token: floor for ours */
    int backoff;                /* consecutive local retries */
    int marked_waiting;         /* wrote waiting_capacity already */
    int ops;                    /* callbacks outstanding */
    int cancel;                 /* `sbx cancel` asked for it */
    const char *end_note;       /* why end_unclaimed() ends it (static text) */
    int handback;               /* shutdown: stop the build, requeue, release */
    /* lease */
    int have_lease;
    char slot[192];
    int64_t token;
    uint64_t lease_until_ms;
    uint64_t renew_sent_ms;
    uint64_t releases_seen;     /* w->releases when the acquire was sent */
    int lost;                   /* lease lost: no more writes or provider calls */
    after_release after;
    sbx_timer timer;            /* retries and waits */
    sbx_timer renew;
    /* build */
    sbx_run *run;
    const char *status;         /* terminal status being written */
    sbx_result *res;
    uint64_t started_ms;
};

static void transition(job *j, jstate to)
{
    if (j->st == to)
        return;
    sbx_debug("job", "%s %s -> %s", j->id, state_names[j->st], state_names[to]);
    j->st = to;
}

/* ---- table ---- */

static size_t hash(const char *s)
{
    size_t h = 1469598103934665603ull;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

static job *tab_find(sbx_jobtab *t, const char *id)
{
    if (!t->nslots)
        return NULL;
    for (job *j = t->slots[hash(id) % t->nslots]; j; j = j->hnext)
        if (strcmp(j->id, id) == 0)
            return j;
    return NULL;
}

static int tab_add(sbx_jobtab *t, job *j)
{
    if (t->count >= t->nslots) {
        size_t n = t->nslots ? t->nslots * 2 : 256;
        job **s = calloc(n, sizeof(*s));
        if (!s)
            return -ENOMEM;
        for (size_t i = 0; i < t->nslots; i++) {
            job *x = t->slots[i], *next;
            for (; x; x = next) {
                next = x->hnext;
                x->hnext = s[hash(x->id) % n];
                s[hash(x->id) % n] = x;
            }
        }
        free(t->slots);
        t->slots = s;
        t->nslots = n;
    }
    j->hnext = t->slots[hash(j->id) % t->nslots];
    t->slots[hash(j->id) % t->nslots] = j;
    t->count++;
    return 0;
}

static void tab_del(sbx_jobtab *t, job *j)
{
    job **pp = &t->slots[hash(j->id) % t->nslots];
    for (; *pp; pp = &(*pp)->hnext)
        if (*pp == j) {
            *pp = j->hnext;
            t->count--;
            return;
        }
}

size_t sbx__jobs_count(const sbx_worker *w) { return w->jobs.count; }

size_t sbx__jobs_leased_slots(const sbx_worker *w, const char **out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < w->jobs.nslots; i++)
        for (const job *j = w->jobs.slots[i]; j; j = j->hnext)
            if (j->have_lease && n < max)
                out[n++] = j->slot;
    return n;
}

/* ---- waiting ---- */

/* Jobs waiting for capacity sit on one FIFO. Those waiting on a busy project
 * also queue per project, and only the first of each project asks Redis
 * again; the others are parked until it leaves. Without that, a hundred
 * queued builds of one project would each poll every second (a lease storm
 * measured in the benchmarks), and the project's order would be left to
 * chance. */
#define PROJQ_BUCKETS 4096

struct projq {
    projq *next;            /* hash chain */
    job *head, *tail;
    char id[SBX_ID_MAX + 1];
};

static projq **projq_slot(sbx_worker *w, const char *id)
{
    projq **pp;
    if (!w->projq) {
        w->projq = calloc(PROJQ_BUCKETS, sizeof(*w->projq));
        if (!w->projq)
            return NULL;
    }
    for (pp = &w->projq[hash(id) % PROJQ_BUCKETS]; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->id, id) == 0)
            break;
    return pp;
}

/* Queues j behind the other waiters of its project; returns whether j is
 * the first (the one that keeps asking). */
static int proj_park(job *j)
{
    projq **pp, *q;
    if (j->pq)
        return j->pq->head == j;
    pp = projq_slot(j->w, j->spec->project_id);
    if (!pp)
        return 1;
    q = *pp;
    if (!q) {
        q = calloc(1, sizeof(*q));
        if (!q)
            return 1;
        snprintf(q->id, sizeof(q->id), "%s", j->spec->project_id);
        *pp = q;
    }
    j->pq = q;
    j->pprev = q->tail;
    j->pnext = NULL;
    if (q->tail)
        q->tail->pnext = j;
    else
        q->head = j;
    q->tail = j;
    return q->head == j;
}

static void proj_unpark(job *j)
{
    projq *q = j->pq, **pp;
    int was_head;
    if (!q)
        return;
    was_head = q->head == j;
    if (j->pprev)
        j->pprev->pnext = j->pnext;
    else
        q->head = j->pnext;
    if (j->pnext)
        j->pnext->pprev = j->pprev;
    else
        q->tail = j->pprev;
    j->pq = NULL;
    j->pprev = j->pnext = NULL;
    if (q->head) {
        if (was_head)
            sbx_timer_start(j->w->loop, &q->head->timer, 0);
        return;
    }
    pp = projq_slot(j->w, q->id);
    if (pp && *pp == q)
        *pp = q->next;
    free(q);
}

static void wait_unlist(job *j)
{
    sbx_worker *w = j->w;
    proj_unpark(j);
    if (!j->waiting_listed)
        return;
    if (j->wprev)
        j->wprev->wnext = j->wnext;
    else
        w->wait_head = j->wnext;
    if (j->wnext)
        j->wnext->wprev = j->wprev;
    else
        w->wait_tail = j->wprev;
    j->wprev = j->wnext = NULL;
    j->waiting_listed = 0;
}

static void wait_list(job *j)
{
    sbx_worker *w = j->w;
    if (j->waiting_listed)
        return;
    j->wprev = w->wait_tail;
    j->wnext = NULL;
    if (w->wait_tail)
        w->wait_tail->wnext = j;
    else
        w->wait_head = j;
    w->wait_tail = j;
    j->waiting_listed = 1;
}

void sbx__jobs_wake(sbx_worker *w, const char *project)
{
    projq **pp = project ? projq_slot(w, project) : NULL;
    job *same = pp && *pp ? (*pp)->head : NULL, *any = w->wait_head;
    if (same)
        sbx_timer_start(w->loop, &same->timer, 0);
    if (any && any != same && (!any->pq || any->pq->head == any))
        sbx_timer_start(w->loop, &any->timer, 0);
}

/* ---- life ---- */

static void step(job *j);

static void finish(job *j)
{
    sbx_worker *w = j->w;
    transition(j, J_DONE);
    sbx_timer_stop(w->loop, &j->timer);
    sbx_timer_stop(w->loop, &j->renew);
    wait_unlist(j);
    for (int i = 0; i < j->nrefs; i++)
        sbx_kafka_done(w->kafka, &j->refs[i]);
    j->nrefs = 0;
    tab_del(&w->jobs, j);
    j->dnext = w->dead;
    w->dead = j;
}

/* Shutdown: forget a job without marking its offsets; it was requeued (or
 * never claimed) and the partition's next owner runs it. */
static void hand_back(job *j)
{
    sbx_worker *w = j->w;
    sbx_info("job", "%s handed back (was %s)", j->id, state_names[j->st]);
    transition(j, J_DONE);
    sbx_timer_stop(w->loop, &j->timer);
    sbx_timer_stop(w->loop, &j->renew);
    wait_unlist(j);
    tab_del(&w->jobs, j);
    j->dnext = w->dead;
    w->dead = j;
}

static void job_free(job *j)
{
    sbx_timer_stop(j->w->loop, &j->timer);
    sbx_timer_stop(j->w->loop, &j->renew);
    sbx_job_free(j->spec);
    free(j->raw);
    free(j->refs);
    free(j->res);
    free(j);
}

void sbx__jobs_reap(sbx_worker *w)
{
    job **pp = &w->dead;
    while (*pp) {
        job *j = *pp;
        if (j->ops == 0) {
            *pp = j->dnext;
            job_free(j);
        } else {
            pp = &j->dnext;
        }
    }
}

static uint64_t jitter(uint64_t ms)
{
    return ms / 2 + (uint64_t)rand() % (ms / 2 + 1);
}

/* Retry the current step after a growing delay (transient errors). */
static void retry_later(job *j, const char *why)
{
    uint64_t d = (uint64_t)j->w->cfg.retry_base_ms << (j->backoff < 16 ? j->backoff : 16);
    if (d > RETRY_MAX_MS)
        d = RETRY_MAX_MS;
    j->backoff++;
    j->w->stats.retries++;
    sbx_warn("job", "%s %s: %s; retrying in ~%" PRIu64 " ms", j->id, state_names[j->st], why, d);
    sbx_timer_start(j->w->loop, &j->timer, jitter(d));
}

/* ---- PostgreSQL steps ---- */

static const char *const TERMINAL[] = {"succeeded", "failed", "timed_out", "canceled",
                                       "dead_lettered"};

static int is_terminal(const char *s)
{
    for (size_t i = 0; i < sizeof(TERMINAL) / sizeof(TERMINAL[0]); i++)
        if (strcmp(s, TERMINAL[i]) == 0)
            return 1;
    return 0;
}

static void on_fire_and_forget(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    (void)res;
    j->ops--;
    if (err)
        sbx_warn("job", "%s: %s", j->id, err);
}

/* Ends a job nobody has claimed (its cancel was asked, or policy "reject"):
 * one unfenced statement that answers whether it did. If it did not, the job
 * was claimed elsewhere or moved on; the normal path (and the claim, which
 * sees a cancel flag) takes over. */
static void on_ended_unclaimed(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    j->ops--;
    if (j->st == J_DONE)
        return;
    if (res && strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
        sbx_info("job", "%s %s", j->id, j->end_note);
        j->w->stats.canceled++;
        finish(j);
        return;
    }
    if (err)
        sbx_warn("job", "%s %s: %s", j->id, j->end_note, err);
    transition(j, J_LEASING);
    step(j);
}

static void end_unclaimed(job *j, const char *sql, int nparams, const char *const *params,
                          const char *note)
{
    sbx_timer_stop(j->w->loop, &j->timer);
    wait_unlist(j);
    j->end_note = note;
    transition(j, J_RECORDING); /* a write in flight; no timer acts on it */
    if (sbx_db_query(j->w->db, sql, nparams, params, on_ended_unclaimed, j) == 0)
        j->ops++;
    else
        retry_later(j, "database queue full");
}

static void cancel_unclaimed(job *j)
{
    const char *p[2] = {j->id, j->w->cfg.worker_id};
    end_unclaimed(j, "SELECT sbx.cancel_unclaimed($1,$2)", 2, p, "canceled before it started");
}

static void on_recorded(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    j->ops--;
    if (j->st != J_RECORDING)
        return;
    if (!res || PQntuples(res) != 1) {
        retry_later(j, err ? err : "record_run returned no row");
        return;
    }
    j->backoff = 0;
    j->attempt = atoi(PQgetvalue(res, 0, 1));
    j->row_token = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    if (is_terminal(PQgetvalue(res, 0, 0))) {
        sbx_info("job", "%s already %s; skipped", j->id, PQgetvalue(res, 0, 0));
        j->w->stats.duplicates++;
        finish(j);
        return;
    }
    j->marked_waiting = strcmp(PQgetvalue(res, 0, 0), "waiting_capacity") == 0;
    if (strcmp(PQgetvalue(res, 0, 3), "t") == 0) {
        cancel_unclaimed(j);
        return;
    }
    if (j->w->cfg.policy == SBX_POLICY_SUPERSEDE) {
        const char *p[1] = {j->id};
        if (sbx_db_query(j->w->db, "SELECT sbx.supersede_older($1)", 1, p, on_fire_and_forget,
                         j) == 0)
            j->ops++;
    }
    transition(j, J_LEASING);
    step(j);
}

static void record(job *j)
{
    sbx_worker *w = j->w;
    char part[16], off[24];
    const char *p[6];
    snprintf(part, sizeof(part), "%d", (int)j->refs[0].partition);
    snprintf(off, sizeof(off), "%" PRId64, j->refs[0].offset);
    p[0] = j->id;
    p[1] = j->spec->project_id;
    p[2] = j->raw;
    p[3] = w->cfg.worker_id;
    p[4] = part;
    p[5] = off;
    if (sbx_db_query(w->db, "SELECT status, attempt, lease_token, cancel_requested"
                            " FROM sbx.record_run($1,$2,$3,$4,$5,$6)",
                     6, p, on_recorded, j) != 0) {
        retry_later(j, "database queue full");
        return;
    }
    j->ops++;
}

static void mark_waiting(job *j, const char *why)
{
    const char *p[3] = {j->id, j->w->cfg.worker_id, why};
    if (j->marked_waiting)
        return;
    j->marked_waiting = 1;
    if (sbx_db_query(j->w->db, "SELECT sbx.wait_run($1,$2,$3)", 3, p, on_fire_and_forget, j) == 0)
        j->ops++;
}

/* ---- leases ---- */

static void release(job *j, after_release after);
static void reject(job *j, const char *busy_slot);

static void on_acquired(void *arg, const sbx_lease_reply *rep)
{
    job *j = arg;
    sbx_worker *w = j->w;
    uint64_t d;

    j->ops--;
    if (j->st != J_LEASING)
        return;
    if (w->stopping) {
        if (rep->status == SBX_LEASE_OK) {
            snprintf(j->slot, sizeof(j->slot), "%s", rep->slot);
            j->token = rep->token;
            j->have_lease = 1;
            release(j, AR_HANDBACK);
        } else {
            hand_back(j);
        }
        return;
    }
    switch (rep->status) {
    case SBX_LEASE_OK:
        j->have_lease = 1;
        j->lost = 0;
        snprintf(j->slot, sizeof(j->slot), "%s", rep->slot);
        j->token = rep->token;
        j->lease_until_ms = j->renew_sent_ms + (uint64_t)w->cfg.lease_ttl_ms * 9 / 10;
        j->backoff = 0;
        wait_unlist(j);
        sbx_info("job", "%s leased %s token=%" PRId64, j->id, j->slot, j->token);
        transition(j, J_CLAIMING);
        step(j);
        return;
    case SBX_LEASE_BUSY:
        if (w->cfg.policy == SBX_POLICY_REJECT) {
            reject(j, rep->slot);
            return;
        }
        /* fall through */
    case SBX_LEASE_NOCAP:
        w->stats.lease_waits++;
        mark_waiting(j, rep->status == SBX_LEASE_BUSY ? "project busy" : "no capacity");
        /* A lease of ours was released after this acquire left: its wake-up
         * found nobody waiting yet, so ask again now. */
        d = w->releases != j->releases_seen ? 0 : WAIT_MAX_MS;
        if (rep->status == SBX_LEASE_BUSY && !proj_park(j)) {
            /* Parked behind an earlier job of the project, which asks for
             * both; it wakes us when it leaves the queue. */
            transition(j, J_WAITING);
            wait_list(j);
            return;
        }
        break;
    case SBX_LEASE_HELD:
        /* A previous owner (killed, or still running after a rebalance)
         * holds this job's lease: wait for it to end or expire. */
        w->stats.lease_waits++;
        sbx_info("job", "%s lease still held on %s for %" PRId64 " ms; waiting", j->id,
                 rep->slot, rep->ttl_left_ms);
        d = rep->ttl_left_ms > 0 ? (uint64_t)rep->ttl_left_ms + 50 : 100;
        if (d > (uint64_t)w->cfg.lease_ttl_ms)
            d = (uint64_t)w->cfg.lease_ttl_ms;
        break;
    default:
        transition(j, J_WAITING);
        wait_list(j);
        retry_later(j, rep->error ? rep->error : "lease error");
        return;
    }
    if (rep->reaped)
        sbx_info("lease", "reaped %d expired leases", rep->reaped);
    transition(j, J_WAITING);
    wait_list(j);
    sbx_timer_start(w->loop, &j->timer, d ? jitter(d) + 10 : 0);
}

/* Policy "reject": the project has a build running; end this job. */
static void reject(job *j, const char *busy_slot)
{
    char detail[300];
    const char *p[3] = {j->id, j->w->cfg.worker_id, detail};
    snprintf(detail, sizeof(detail), "rejected: project %s has a build running on %s "
             "(SBX_PROJECT_POLICY=reject)", j->spec->project_id, busy_slot);
    end_unclaimed(j, "SELECT sbx.reject_run($1,$2,$3)", 3, p,
                  "rejected: its project is busy (policy reject)");
}

static void acquire(job *j)
{
    sbx_worker *w = j->w;
    int rc;
    j->renew_sent_ms = sbx_now_ms();
    j->releases_seen = w->releases;
    rc = sbx_lease_acquire(w->leases, w->prov->ops->pool(w->prov), j->spec->project_id, j->id,
                           w->cfg.worker_id, w->cfg.lease_ttl_ms, j->row_token, on_acquired, j);
    if (rc) {
        transition(j, J_WAITING);
        wait_list(j);
        retry_later(j, "redis unavailable");
        return;
    }
    j->ops++;
}

static void lose_lease(job *j, const char *why)
{
    if (j->lost)
        return;
    j->lost = 1;
    j->w->stats.fenced_out++;
    sbx_warn("job", "%s lost its lease on %s (%s): stopping the build, writing nothing", j->id,
             j->slot, why);
    sbx_timer_stop(j->w->loop, &j->renew);
    if (j->run)
        j->w->prov->ops->cancel(j->w->prov, j->run);
}

static void on_renewed(void *arg, const sbx_lease_reply *rep)
{
    job *j = arg;
    sbx_worker *w = j->w;
    j->ops--;
    if (!j->have_lease || j->lost || j->st == J_DONE)
        return;
    if (rep->status == SBX_LEASE_OK) {
        j->lease_until_ms = j->renew_sent_ms + (uint64_t)w->cfg.lease_ttl_ms * 9 / 10;
        if (rep->reaped)
            sbx_warn("job", "%s lease on %s was gone from Redis; restored", j->id, j->slot);
    } else if (rep->status == SBX_LEASE_LOST) {
        lose_lease(j, "renewal refused: a newer owner or expired");
        return;
    } else if (sbx_now_ms() >= j->lease_until_ms) {
        lose_lease(j, "could not renew before it expired");
        return;
    }
    sbx_timer_start(w->loop, &j->renew, (uint64_t)w->cfg.lease_ttl_ms / 3);
}

static void on_renew_timer(sbx_timer *t)
{
    job *j = t->data;
    sbx_worker *w = j->w;
    sbx_lease_id id;
    if (!j->have_lease || j->lost)
        return;
    if (sbx_now_ms() >= j->lease_until_ms) {
        lose_lease(j, "lease ran out without a renewal");
        return;
    }
    j->renew_sent_ms = sbx_now_ms();
    id.pool = w->prov->ops->pool(w->prov);
    id.slot = j->slot;
    id.project = j->spec->project_id;
    id.job = j->id;
    id.worker = w->cfg.worker_id;
    id.token = j->token;
    if (sbx_lease_renew(w->leases, &id, w->cfg.lease_ttl_ms, on_renewed, j) == 0)
        j->ops++;
    else
        sbx_timer_start(w->loop, &j->renew, 500); /* Redis down: try again soon */
}

static void on_released(void *arg, const sbx_lease_reply *rep)
{
    job *j = arg;
    sbx_worker *w = j->w;
    j->ops--;
    if (j->st != J_RELEASING)
        return;
    if (rep->status == SBX_LEASE_ERROR) {
        /* Redis down: the lease expires by itself; the reaper returns the slot. */
        sbx_warn("job", "%s release of %s failed (%s); it will expire", j->id, j->slot,
                 rep->error ? rep->error : "?");
    }
    j->have_lease = 0;
    w->releases++;
    sbx__jobs_wake(w, j->spec->project_id);
    if (j->after == AR_DONE) {
        finish(j);
        return;
    }
    if (j->after == AR_HANDBACK || w->stopping) {
        hand_back(j);
        return;
    }
    transition(j, J_WAITING);
    wait_list(j);
    sbx_timer_start(w->loop, &j->timer, jitter((uint64_t)w->cfg.retry_base_ms << (j->backoff < 8 ? j->backoff : 8)));
    j->backoff++;
}

static void release(job *j, after_release after)
{
    sbx_worker *w = j->w;
    sbx_lease_reply fake;

    sbx_timer_stop(w->loop, &j->renew);
    j->after = after;
    transition(j, J_RELEASING);
    if (sbx_lease_release(w->leases, j->slot, j->token, on_released, j) == 0) {
        j->ops++;
        return;
    }
    memset(&fake, 0, sizeof(fake));
    fake.status = SBX_LEASE_ERROR;
    fake.error = "redis unavailable";
    j->ops++;
    on_released(j, &fake);
}

/* ---- claim, run, finish ---- */

static void on_provider(void *arg, sbx_run_event ev, const sbx_result *res);
static void requeue(job *j, const char *why);
static void unclaim(job *j, const char *why);

static void start_build(job *j)
{
    sbx_worker *w = j->w;
    sbx_run_req req;
    char err[256] = "";
    int rc;

    if (j->lost || sbx_now_ms() >= j->lease_until_ms) {
        lose_lease(j, "lease ran out before the build started");
        release(j, AR_WAIT);
        return;
    }
    req.job = j->spec;
    req.slot = j->slot;
    req.token = j->token;
    req.attempt = j->attempt;
    transition(j, J_STARTING);
    j->started_ms = sbx_now_ms();
    rc = w->prov->ops->start(w->prov, &req, on_provider, j, &j->run, err, sizeof(err));
    if (rc) {
        sbx_result r;
        memset(&r, 0, sizeof(r));
        r.outcome = rc == -EBUSY ? SBX_OUTCOME_BUSY : SBX_OUTCOME_ERROR;
        r.exit_code = -1;
        snprintf(r.error, sizeof(r.error), "provider start: %s", err[0] ? err : strerror(-rc));
        j->run = NULL;
        on_provider(j, SBX_RUN_FINISHED, &r);
        return;
    }
    sbx_timer_start(w->loop, &j->renew, (uint64_t)w->cfg.lease_ttl_ms / 3);
}

static void on_claimed(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    const char *result;
    j->ops--;
    if (j->st != J_CLAIMING)
        return;
    if (!res || PQntuples(res) != 1) {
        sbx_warn("job", "%s claim failed: %s", j->id, err ? err : "no row");
        release(j, AR_WAIT);
        return;
    }
    result = PQgetvalue(res, 0, 0);
    j->attempt = atoi(PQgetvalue(res, 0, 2));
    if (strtoll(PQgetvalue(res, 0, 3), NULL, 10) > j->row_token)
        j->row_token = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    if (strcmp(result, "claimed") == 0) {
        if (j->w->stopping) {
            requeue(j, "worker shutting down");
            return;
        }
        start_build(j);
        return;
    }
    if (strcmp(result, "terminal") == 0) {
        sbx_info("job", "%s already %s; releasing", j->id, PQgetvalue(res, 0, 1));
        release(j, AR_DONE);
        return;
    }
    sbx_info("job", "%s claim: %s (status %s); waiting", j->id, result, PQgetvalue(res, 0, 1));
    if (strcmp(result, "stale") == 0)
        j->w->stats.fenced_out++;
    release(j, AR_WAIT);
}

static void claim(job *j)
{
    sbx_worker *w = j->w;
    char tok[24];
    const char *p[5];
    snprintf(tok, sizeof(tok), "%" PRId64, j->token);
    p[0] = j->id;
    p[1] = tok;
    p[2] = w->cfg.worker_id;
    p[3] = w->prov->ops->name;
    p[4] = j->slot;
    if (sbx_db_query(w->db, "SELECT result, status, attempt, lease_token"
                            " FROM sbx.claim_run($1,$2,$3,$4,$5)", 5,
                     p, on_claimed, j) != 0) {
        release(j, AR_WAIT);
        return;
    }
    j->ops++;
}

static void on_running_written(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    j->ops--;
    if (err) {
        sbx_warn("job", "%s running write: %s", j->id, err);
        return;
    }
    if (res && strcmp(PQgetvalue(res, 0, 0), "f") == 0 && j->st == J_RUNNING)
        lose_lease(j, "the run row has a newer token");
}

static void write_fenced(job *j, const char *to, const char *detail, const sbx_result *r,
                         sbx_db_cb cb)
{
    sbx_worker *w = j->w;
    char tok[24], code[16], *tail = NULL;
    const char *p[10];

    snprintf(tok, sizeof(tok), "%" PRId64, j->token);
    p[0] = j->id;
    p[1] = tok;
    p[2] = w->cfg.worker_id;
    p[3] = to;
    p[4] = detail;
    p[5] = NULL;
    p[6] = NULL;
    p[7] = NULL;
    p[8] = NULL;
    p[9] = NULL;
    if (r) {
        if (r->exit_code >= 0) {
            snprintf(code, sizeof(code), "%d", r->exit_code);
            p[5] = code;
        }
        p[6] = r->error[0] ? r->error : NULL;
        tail = malloc(r->log_tail_len + 1);
        if (tail) {
            sbx__utf8_sanitize(r->log_tail, r->log_tail_len, tail, r->log_tail_len + 1);
            p[7] = tail;
        }
        p[8] = r->preview_url[0] ? r->preview_url : NULL;
        p[9] = r->instance[0] ? r->instance : NULL;
    }
    j->ops++;
    if (sbx_db_query(w->db, "SELECT sbx.transition($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)", 10, p, cb,
                     j) != 0)
        cb(j, NULL, "database queue full");
    free(tail);
}

static void on_terminal_written(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    sbx_worker *w = j->w;
    j->ops--;
    if (j->st != J_FINISHING)
        return;
    if (!res) {
        /* Not a lost connection (those are replayed): a statement error.
         * Keep the result and try again; the offset stays unfinished. */
        retry_later(j, err ? err : "terminal write failed");
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        w->stats.fenced_out++;
        sbx_warn("job", "%s terminal write refused: a newer owner holds the run", j->id);
        release(j, AR_WAIT);
        return;
    }
    if (strcmp(j->status, "succeeded") == 0)
        w->stats.succeeded++;
    else if (strcmp(j->status, "timed_out") == 0)
        w->stats.timed_out++;
    else if (strcmp(j->status, "canceled") == 0)
        w->stats.canceled++;
    else
        w->stats.failed++;
    sbx_info("job", "%s %s exit=%d attempt=%d in %" PRIu64 " ms", j->id, j->status,
             j->res ? j->res->exit_code : -1, j->attempt, sbx_now_ms() - j->started_ms);
    release(j, AR_DONE);
}

static void write_terminal(job *j)
{
    if (j->lost || sbx_now_ms() >= j->lease_until_ms) {
        lose_lease(j, "lease ran out before the result was written");
        release(j, AR_WAIT);
        return;
    }
    transition(j, J_FINISHING);
    write_fenced(j, j->status, j->res->error[0] ? j->res->error : NULL, j->res,
                 on_terminal_written);
}

static void dead_letter(sbx_worker *w, const sbx_kafka_msg *m, const char *reason,
                        const char *detail, int attempts, int mark_done);

/* The provider failed on every attempt: the original message goes to the
 * dead-letter topic with the last error, and the run ends dead_lettered. */
static void retries_exhausted(job *j, const char *error)
{
    sbx_kafka_msg m;
    char detail[320];
    memset(&m, 0, sizeof(m));
    m.topic = j->w->cfg.topic;
    m.partition = j->refs[0].partition;
    m.offset = j->refs[0].offset;
    m.ref = j->refs[0];
    m.key = j->spec->project_id;
    m.key_len = strlen(j->spec->project_id);
    m.payload = j->raw;
    m.len = j->rawlen;
    snprintf(detail, sizeof(detail), "provider failed %d times; last: %s", j->attempt, error);
    dead_letter(j->w, &m, "retries_exhausted", detail, j->attempt, 0);
}

static void on_claim_handed_back(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    (void)res;
    j->ops--;
    if (err)
        sbx_warn("job", "%s hand-back: %s", j->id, err);
    if (j->st == J_FINISHING)
        release(j, j->w->stopping ? AR_HANDBACK : AR_WAIT);
}

/* A claimed run leaves its claim (fenced: requeue_run or unclaim_run), then
 * its lease is released and the job waits or is handed back. */
static void hand_claim_back(job *j, const char *sql, const char *why)
{
    sbx_worker *w = j->w;
    char tok[24];
    const char *p[4] = {j->id, tok, w->cfg.worker_id, why};
    snprintf(tok, sizeof(tok), "%" PRId64, j->token);
    transition(j, J_FINISHING);
    j->status = NULL;
    if (sbx_db_query(w->db, sql, 4, p, on_claim_handed_back, j) == 0)
        j->ops++;
    else
        release(j, w->stopping ? AR_HANDBACK : AR_WAIT);
}

/* The provider would not take the slot: undo the claim (the attempt is not
 * counted), give the lease back and wait for capacity. */
static void unclaim(job *j, const char *why)
{
    sbx_info("job", "%s: slot %s not free on the provider's side (%s); waiting", j->id, j->slot,
             why);
    j->w->stats.lease_waits++;
    j->marked_waiting = 1;
    j->backoff = j->backoff < 3 ? 3 : j->backoff; /* the slot stays busy a while */
    hand_claim_back(j, "SELECT sbx.unclaim_run($1,$2,$3,$4)", why);
}

/* A claimed run goes back to queued: after a provider error (to retry) or at
 * shutdown (to hand back). */
static void requeue(job *j, const char *why)
{
    hand_claim_back(j, "SELECT sbx.requeue_run($1,$2,$3,$4)", why);
}

static void on_provider(void *arg, sbx_run_event ev, const sbx_result *res)
{
    job *j = arg;
    sbx_worker *w = j->w;

    if (ev == SBX_RUN_STARTED) {
        if (j->st != J_STARTING)
            return;
        transition(j, J_RUNNING);
        if (!j->lost)
            write_fenced(j, "running", res && res->instance[0] ? res->instance : NULL, res,
                         on_running_written);
        return;
    }
    j->run = NULL;
    if (j->lost) {
        release(j, w->stopping ? AR_HANDBACK : AR_WAIT);
        return;
    }
    if (j->handback) {
        requeue(j, "worker shut down before the build finished");
        return;
    }
    if (!j->res)
        j->res = malloc(sizeof(*j->res));
    if (!j->res) {
        release(j, AR_WAIT);
        return;
    }
    *j->res = *res;
    switch (res->outcome) {
    case SBX_OUTCOME_SUCCEEDED: j->status = "succeeded"; break;
    case SBX_OUTCOME_FAILED: j->status = "failed"; break;
    case SBX_OUTCOME_TIMED_OUT: j->status = "timed_out"; break;
    case SBX_OUTCOME_CANCELED: j->status = "canceled"; break;
    case SBX_OUTCOME_BUSY:
        unclaim(j, res->error);
        return;
    case SBX_OUTCOME_ERROR:
        if (j->attempt < w->cfg.max_attempts) {
            sbx_warn("job", "%s provider error on attempt %d/%d: %s", j->id, j->attempt,
                     w->cfg.max_attempts, res->error);
            requeue(j, res->error);
            return;
        }
        retries_exhausted(j, res->error);
        j->status = "dead_lettered";
        break;
    }
    write_terminal(j);
}

/* ---- the driver ---- */

static void step(job *j)
{
    switch (j->st) {
    case J_RECORDING: record(j); break;
    case J_LEASING: acquire(j); break;
    case J_WAITING:
        transition(j, J_LEASING);
        acquire(j);
        break;
    case J_CLAIMING: claim(j); break;
    case J_FINISHING: write_terminal(j); break;
    default:
        break; /* waiting for a callback */
    }
}

static void on_timer(sbx_timer *t)
{
    job *j = t->data;
    if (j->w->stopping && (j->st == J_WAITING || j->st == J_LEASING || j->st == J_RECORDING)) {
        hand_back(j);
        return;
    }
    step(j);
}

/* ---- intake ---- */

/* Publishes the dead-letter envelope (schemas/dlq.v1.schema.json) of m.
 * With mark_done the message's offset is done once the broker has it; else
 * the caller finishes it (a run that also ends with a terminal row). */
static void dead_letter(sbx_worker *w, const sbx_kafka_msg *m, const char *reason,
                        const char *detail, int attempts, int mark_done)
{
    char jid[SBX_ID_MAX + 1], pid[SBX_ID_MAX + 1], ts[32];
    json_object *o = json_object_new_object();
    char *b64 = sbx__base64((const unsigned char *)m->payload, m->len);
    const char *json;
    time_t now = time(NULL);
    struct tm tm;

    sbx_job_peek_ids(m->payload, m->len, jid, pid);
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_object_object_add(o, "v", json_object_new_int(1));
    json_object_object_add(o, "reason", json_object_new_string(reason));
    json_object_object_add(o, "detail", json_object_new_string(detail));
    json_object_object_add(o, "job_id", jid[0] ? json_object_new_string(jid) : NULL);
    json_object_object_add(o, "project_id", pid[0] ? json_object_new_string(pid) : NULL);
    json_object_object_add(o, "topic", json_object_new_string(m->topic));
    json_object_object_add(o, "partition", json_object_new_int(m->partition));
    json_object_object_add(o, "offset", json_object_new_int64(m->offset));
    json_object_object_add(o, "key", m->key && sbx__utf8_valid(m->key, m->key_len)
                                         ? json_object_new_string_len(m->key, (int)m->key_len)
                                         : NULL);
    json_object_object_add(o, "worker_id", json_object_new_string(w->cfg.worker_id));
    json_object_object_add(o, "attempts", json_object_new_int(attempts));
    json_object_object_add(o, "dead_lettered_at", json_object_new_string(ts));
    json_object_object_add(o, "payload", sbx__utf8_valid(m->payload, m->len) &&
                                                 memchr(m->payload, 0, m->len) == NULL
                                             ? json_object_new_string_len(m->payload, (int)m->len)
                                             : NULL);
    json_object_object_add(o, "payload_base64", json_object_new_string(b64 ? b64 : ""));
    json = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    sbx_warn("job", "p%d@%" PRId64 " dead-lettered: %s: %s", (int)m->partition, m->offset,
             reason, detail);
    w->stats.dead_lettered++;
    if (sbx_kafka_dead_letter(w->kafka, m->key, m->key_len, json, strlen(json),
                              mark_done ? &m->ref : NULL) != 0)
        sbx_error("job", "p%d@%" PRId64 " stays unfinished: dead-letter publish failed",
                  (int)m->partition, m->offset);
    json_object_put(o);
    free(b64);
}

void sbx__job_intake(sbx_worker *w, const sbx_kafka_msg *m)
{
    sbx_job *spec = NULL;
    sbx_reject why = SBX_REJECT_NONE;
    char err[256];
    job *j;

    w->stats.received++;
    switch (sbx_job_parse(m->payload, m->len, &spec, &why, err, sizeof(err))) {
    case SBX_OK:
        break;
    case SBX_EINVAL:
        dead_letter(w, m, sbx_reject_name(why), err, 0, 1);
        return;
    default:
        /* Out of memory is ours, not the message's: leave the offset
         * unfinished so it is redelivered, rather than dead-letter it. */
        sbx_error("job", "p%d@%" PRId64 " not parsed: %s; left unfinished", (int)m->partition,
                  m->offset, err);
        return;
    }
    j = tab_find(&w->jobs, spec->job_id);
    if (j) {
        /* Delivered again while we still work on it: finish both together. */
        if (j->nrefs == j->caprefs) {
            int cap = j->caprefs ? j->caprefs * 2 : 2;
            sbx_offset_ref *r = realloc(j->refs, (size_t)cap * sizeof(*r));
            if (!r) {
                sbx_job_free(spec);
                return; /* offset stays unfinished; redelivered later */
            }
            j->refs = r;
            j->caprefs = cap;
        }
        j->refs[j->nrefs++] = m->ref;
        w->stats.duplicates++;
        sbx_info("job", "%s delivered again (p%d@%" PRId64 "); joined the running one", j->id,
                 (int)m->partition, m->offset);
        sbx_job_free(spec);
        return;
    }
    j = calloc(1, sizeof(*j));
    if (!j || !(j->refs = malloc(2 * sizeof(*j->refs))) || !(j->raw = malloc(m->len + 1))) {
        if (j) {
            free(j->refs);
            free(j);
        }
        sbx_job_free(spec);
        sbx_error("job", "out of memory; p%d@%" PRId64 " left unfinished", (int)m->partition,
                  m->offset);
        return;
    }
    j->w = w;
    j->spec = spec;
    snprintf(j->id, sizeof(j->id), "%s", spec->job_id);
    memcpy(j->raw, m->payload, m->len);
    j->raw[m->len] = '\0';
    j->rawlen = m->len;
    j->caprefs = 2;
    j->refs[j->nrefs++] = m->ref;
    sbx_timer_init(&j->timer, on_timer, j);
    sbx_timer_init(&j->renew, on_renew_timer, j);
    j->st = J_RECORDING;
    if (tab_add(&w->jobs, j) != 0) {
        job_free(j);
        return;
    }
    sbx_debug("job", "%s received p%d@%" PRId64, j->id, (int)m->partition, m->offset);
    step(j);
}

void sbx__jobs_cancel(sbx_worker *w, const char *job_id)
{
    job *j = tab_find(&w->jobs, job_id);
    if (!j)
        return;
    sbx_info("job", "%s cancel requested (state %s)", j->id, state_names[j->st]);
    j->cancel = 1;
    switch (j->st) {
    case J_STARTING:
    case J_RUNNING:
        if (j->run && !j->lost)
            w->prov->ops->cancel(w->prov, j->run);
        break;
    case J_WAITING:
        cancel_unclaimed(j);
        break;
    default:
        /* In flight: claim_run sees the flag and ends the run canceled. */
        break;
    }
}

void sbx__jobs_shutdown(sbx_worker *w, int hard)
{
    for (size_t i = 0; i < w->jobs.nslots; i++) {
        job *j = w->jobs.slots[i], *next;
        for (; j; j = next) {
            next = j->hnext;
            if (j->st == J_WAITING) {
                hand_back(j);
            } else if (hard && (j->st == J_STARTING || j->st == J_RUNNING) && !j->handback) {
                j->handback = 1;
                if (j->run)
                    w->prov->ops->cancel(w->prov, j->run);
            }
        }
    }
}

void sbx__jobs_abandon(sbx_worker *w)
{
    /* Builds die with us; their leases expire and the next owner of the
     * partition reruns them with a newer token. Nothing is written. */
    for (size_t i = 0; i < w->jobs.nslots; i++) {
        job *j = w->jobs.slots[i], *next;
        for (; j; j = next) {
            next = j->hnext;
            j->dnext = w->dead;
            w->dead = j;
            j->ops = 0;
        }
        w->jobs.slots[i] = NULL;
    }
    w->jobs.count = 0;
    for (job *j = w->dead; j; j = j->dnext)
        j->ops = 0;
    sbx__jobs_reap(w);
    free(w->jobs.slots);
    w->jobs.slots = NULL;
    w->jobs.nslots = 0;
    for (size_t i = 0; w->projq && i < PROJQ_BUCKETS; i++)
        while (w->projq[i]) {
            projq *q = w->projq[i];
            w->projq[i] = q->next;
            free(q);
        }
    free(w->projq);
    w->projq = NULL;
}
