/* lease.c — the calls behind lease.h and their typed replies.
 *
 * Each script (common/lua/acquire.lua, renew, fence, release, register) is
 * the whole decision: Redis runs a script atomically, so "is the project
 * busy? is a slot free? take it, stamp a token" cannot interleave with
 * another worker. The scripts return arrays whose first element is the
 * status word; here each becomes an sbx_lease_reply.
 *
 * Batches. Acquires, renewals and releases are not sent one by one: a call
 * is queued, and a zero-delay timer (the next loop turn) sends every call
 * queued meanwhile as one script call per kind and per BATCH_MAX jobs. The
 * script decides job after job with the same steps as a call of its own and
 * replies one array per job, so each job's decision stays atomic and in call
 * order; what changes is one EVALSHA (one Redis script run, one reply) for
 * many jobs, where a loaded worker made one per job. A whole-batch failure
 * (connection lost, an error reply, Redis down at the flush) fails every
 * call of the batch once through its callback, as a failed call did alone;
 * an error inside one job's decision fails that job only (the script's
 * pcall, "ERR"). Calls queue only while Redis is connected: when it is not,
 * they are refused at once, as before. Fence and register are rare and go
 * at once, ahead of anything still queued; nothing depends on that order
 * (an acquire carries its own token floor, a registration leaves leased
 * slots alone).
 *
 * Local answers. A worker asks Redis about a project far more often than the
 * answer can be "yes": jobs of one project arrive together, and all but the
 * first were refused BUSY by Redis (1.95 refused acquires per job in the
 * bench). This worker knows who of its own jobs holds or is acquiring a
 * project's lease (the holders table), so:
 *  - a project held here (lease granted, not past its ttl): another job of
 *    it is answered BUSY here, with the holder's slot and time left, and
 *    parks in job.c's waitq until our release wakes it;
 *  - a project being acquired here: another job's acquire waits for that
 *    reply. If the lease was granted it is answered BUSY (the older job
 *    first); if not (another worker holds it, no slot, an error), its acquire
 *    goes to Redis after all, because only Redis knows.
 * A local answer only ever refuses, never grants, so it cannot break "one
 * build per project" nor the token order (every grant is Redis', with its
 * floor); at worst it is stale by less than one ttl (a lease of ours that
 * Redis let expire or lost, where Redis would have said OK or QUIET), the
 * delay the lease itself would have caused.
 * A holder is dropped when its release or a LOST renewal is answered, and
 * is ignored once its ttl has passed without a renewal, so one that is never
 * released (a job that vanished) holds nobody back for longer.
 */
#include "lease.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "assert.h"
#include "jobtable.h"
#include "log.h"
#include "rscripts.h"

/* A pool registers at most this many slots per call (the chunk of
 * sbx_lease_register; each its own script call, so a 10,000-slot pool never
 * blocks Redis in one long script). */
#define EVAL_ARGS_MAX_LEASE 64

/* Jobs per batched script call. Redis serves nobody else while a script
 * runs: 64 acquires are ~1,000 Redis commands, well under a millisecond, so
 * other workers and the agents' heartbeats wait no longer than for one
 * slow command; and 64 already cuts the per-call cost (the EVALSHA, its
 * parse, the reply, a read and write on each side) to under 2 % of what it
 * was per job. 64 * 7 arguments stays under redis.c's EVAL_MAX_ARGS. */
#define BATCH_MAX 64

/* Buckets of the holders table: a power of two above the leases one worker
 * holds at once (its in-flight jobs, 1,000 by default). */
#define HOLDER_BUCKETS 4096

enum kind { K_ACQUIRE, K_RENEW, K_RELEASE, K_BATCHED, K_ONE = K_BATCHED };
static const int NARGS[K_BATCHED] = {7, 7, 3};

typedef struct holder holder;

typedef struct call {
    sbx_lease_cb cb;
    void *arg;
    struct call *prev, *next;   /* outstanding calls, freed with sbx_leases */
    struct call *qnext;         /* its queue: to send, to answer, or behind a holder */
    sbx_leases *l;
    enum kind kind;
    holder *h;                  /* acquire: the holder this call is acquiring */
    sbx_lease_reply local;      /* answered here: the reply to deliver */
    const char *argv[7];        /* a batched call's arguments, in buf */
    char buf[];
} call;

typedef struct cqueue {
    call *head, *tail;
    int n;
} cqueue;

/* A project this worker holds, or is acquiring, a lease on. */
struct holder {
    holder *pnext, *snext;      /* project chain; slot chain while granted */
    int granted;
    call *acq;                  /* !granted: the acquire in flight */
    cqueue behind;              /* !granted: other jobs' acquires waiting for it */
    char slot[SBX_LEASE_SLOT_MAX + 1];
    int64_t token;
    uint64_t until_ms;          /* granted: trusted until (sbx_now_ms) */
    char *project, *job;
};

typedef struct batch {
    sbx_leases *l;
    struct batch *prev, *next;  /* in flight */
    enum kind kind;
    int n;
    call *calls[BATCH_MAX];
} batch;

struct sbx_leases {
    sbx_redis *r;
    sbx_loop *loop;
    sbx_redis_script *acquire, *renew, *release, *reg, *fence;
    call *calls;                /* outstanding: sbx_redis_free() drops their callbacks */
    batch *batches;             /* in flight */
    cqueue sendq[K_BATCHED];
    cqueue answers;             /* answered here, delivered on the next turn */
    sbx_timer flush;
    holder **holders, **slots;  /* HOLDER_BUCKETS each, by project and by slot */
    sbx_leases_stats st;
};

static void q_push(cqueue *q, call *c)
{
    c->qnext = NULL;
    if (q->tail)
        q->tail->qnext = c;
    else
        q->head = c;
    q->tail = c;
    q->n++;
}

static call *q_pop(cqueue *q)
{
    call *c = q->head;
    if (!c)
        return NULL;
    q->head = c->qnext;
    if (!q->head)
        q->tail = NULL;
    q->n--;
    c->qnext = NULL;
    return c;
}

static void unlink_call(call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->l->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
}

/* argv: a batched call's arguments (copied), or none (argc 0). */
static call *call_new(sbx_leases *l, enum kind kind, sbx_lease_cb cb, void *arg, int argc,
                      const char **argv)
{
    size_t len = 0;
    call *c;
    char *p;

    for (int i = 0; i < argc; i++)
        len += strlen(argv[i]) + 1;
    c = calloc(1, sizeof(*c) + len);
    if (!c)
        return NULL;
    c->cb = cb;
    c->arg = arg;
    c->l = l;
    c->kind = kind;
    p = c->buf;
    for (int i = 0; i < argc; i++) {
        size_t n = strlen(argv[i]) + 1;
        memcpy(p, argv[i], n);
        c->argv[i] = p;
        p += n;
    }
    c->next = l->calls;
    if (l->calls)
        l->calls->prev = c;
    l->calls = c;
    return c;
}

static void call_free(call *c)
{
    unlink_call(c);
    free(c);
}

/* ---- holders ---- */

static holder **by_project(sbx_leases *l, const char *project)
{
    holder **pp = &l->holders[sbx__str_hash(project) % HOLDER_BUCKETS];
    while (*pp && strcmp((*pp)->project, project) != 0)
        pp = &(*pp)->pnext;
    return pp;
}

static holder **by_slot(sbx_leases *l, const char *slot)
{
    holder **pp = &l->slots[sbx__str_hash(slot) % HOLDER_BUCKETS];
    while (*pp && strcmp((*pp)->slot, slot) != 0)
        pp = &(*pp)->snext;
    return pp;
}

static holder *holder_new(sbx_leases *l, const char *project, const char *job)
{
    holder *h;
    if (!l->holders) {
        l->holders = calloc(HOLDER_BUCKETS, sizeof(*l->holders));
        l->slots = calloc(HOLDER_BUCKETS, sizeof(*l->slots));
        if (!l->holders || !l->slots) {
            free(l->holders);
            free(l->slots);
            l->holders = l->slots = NULL;
            return NULL;
        }
    }
    h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->project = strdup(project);
    h->job = strdup(job);
    if (!h->project || !h->job) {
        free(h->project);
        free(h->job);
        free(h);
        return NULL;
    }
    h->pnext = l->holders[sbx__str_hash(project) % HOLDER_BUCKETS];
    l->holders[sbx__str_hash(project) % HOLDER_BUCKETS] = h;
    return h;
}

static void holder_drop(sbx_leases *l, holder *h);

static void holder_grant(sbx_leases *l, holder *h, const char *slot, int64_t token,
                         int64_t ttl_ms)
{
    holder *old;
    SBX_ASSERT(!h->granted && !h->behind.head);
    h->granted = 1;
    h->acq = NULL;
    snprintf(h->slot, sizeof(h->slot), "%s", slot);
    h->token = token;
    h->until_ms = sbx_now_ms() + (uint64_t)(ttl_ms > 0 ? ttl_ms : 0);
    old = *by_slot(l, h->slot);
    if (old) /* a stale holder of the slot: a lease of ours Redis let expire */
        holder_drop(l, old);
    h->snext = l->slots[sbx__str_hash(h->slot) % HOLDER_BUCKETS];
    l->slots[sbx__str_hash(h->slot) % HOLDER_BUCKETS] = h;
}

/* Unlinks h; the acquires behind it are the caller's (h->behind). */
static void holder_drop(sbx_leases *l, holder *h)
{
    holder **pp = by_project(l, h->project);
    if (*pp == h)
        *pp = h->pnext;
    if (h->granted) {
        pp = by_slot(l, h->slot);
        if (*pp == h)
            *pp = h->snext;
    }
    if (h->acq)
        h->acq->h = NULL;
    free(h->project);
    free(h->job);
    free(h);
}

/* The granted holder of slot with token, if any. */
static holder *holder_of(sbx_leases *l, const char *slot, int64_t token)
{
    holder *h;
    if (!l->slots)
        return NULL;
    h = *by_slot(l, slot);
    return h && h->token == token ? h : NULL;
}

/* ---- sending ---- */

static void arm(sbx_leases *l)
{
    if (!sbx_timer_active(&l->flush))
        sbx_timer_start(l->loop, &l->flush, 0);
}

static int64_t int_elem(const redisReply *e)
{
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    if (e->type == REDIS_REPLY_STRING)
        return strtoll(e->str, NULL, 10);
    return 0;
}

/* One job's {status, slot, token, ttl, reaped[, pool]}; error NULL when it
 * parsed. */
static const char *parse(const redisReply *rep, sbx_lease_reply *out)
{
    static const struct { const char *word; sbx_lease_status st; } words[] = {
        {"OK", SBX_LEASE_OK},       {"BUSY", SBX_LEASE_BUSY}, {"HELD", SBX_LEASE_HELD},
        {"NOCAP", SBX_LEASE_NOCAP}, {"LOST", SBX_LEASE_LOST}, {"QUIET", SBX_LEASE_QUIET},
        {"GONE", SBX_LEASE_GONE},
    };

    memset(out, 0, sizeof(*out));
    out->status = SBX_LEASE_ERROR;
    if (rep->type == REDIS_REPLY_ERROR)
        return rep->str;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 5 || rep->elements > 6 ||
        rep->element[0]->type != REDIS_REPLY_STRING)
        return "unexpected reply shape from lease script";
    if (strcmp(rep->element[0]->str, "ERR") == 0)
        return rep->element[1]->type == REDIS_REPLY_STRING ? rep->element[1]->str
                                                           : "lease script error";
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strcmp(rep->element[0]->str, words[i].word) == 0)
            out->status = words[i].st;
    if (rep->element[1]->type == REDIS_REPLY_STRING)
        snprintf(out->slot, sizeof(out->slot), "%s", rep->element[1]->str);
    out->token = int_elem(rep->element[2]);
    out->ttl_left_ms = int_elem(rep->element[3]);
    out->reaped = (int)int_elem(rep->element[4]);
    if (rep->elements == 6 && rep->element[5]->type == REDIS_REPLY_STRING)
        snprintf(out->pool, sizeof(out->pool), "%s", rep->element[5]->str);
    return out->status == SBX_LEASE_ERROR ? "unknown status word from lease script" : NULL;
}

static void submit_acquire(sbx_leases *l, call *c, int may_wait);

/* The local answer to an acquire behind h, now granted. */
static void answer_busy(const holder *h, sbx_lease_reply *out)
{
    uint64_t now = sbx_now_ms();
    memset(out, 0, sizeof(*out));
    out->status = SBX_LEASE_BUSY;
    snprintf(out->slot, sizeof(out->slot), "%s", h->slot);
    out->ttl_left_ms = h->until_ms > now ? (int64_t)(h->until_ms - now) : 0;
}

/* Keeps the holders true to what Redis answered c; runs before c's
 * callback, so whatever the callback asks next sees it. */
static void note(sbx_leases *l, call *c, const sbx_lease_reply *rep)
{
    holder *h;
    switch (c->kind) {
    case K_ACQUIRE:
        if (rep->status == SBX_LEASE_OK)
            l->st.granted++;
        else
            l->st.refused_remote += rep->status != SBX_LEASE_ERROR;
        h = c->h;
        if (!h && rep->status == SBX_LEASE_OK) {
            /* A lease for a job that asked untracked (a holder was in the
             * way, now stale): track it unless another job is acquiring. */
            holder *old = l->holders ? *by_project(l, c->argv[1]) : NULL;
            if (old && old->granted) {
                holder_drop(l, old);
                old = NULL;
            }
            if (!old && (h = holder_new(l, c->argv[1], c->argv[2])) != NULL)
                h->acq = c;
        }
        if (!h)
            return;
        c->h = NULL;
        h->acq = NULL;
        if (rep->status == SBX_LEASE_OK) {
            cqueue behind = h->behind;
            memset(&h->behind, 0, sizeof(h->behind));
            holder_grant(l, h, rep->slot, rep->token, strtoll(c->argv[4], NULL, 10));
            /* Answered after c's own callback (the older job first). */
            while ((c = q_pop(&behind)) != NULL) {
                answer_busy(h, &c->local);
                l->st.local_busy++;
                q_push(&l->answers, c);
                arm(l);
            }
        } else {
            /* Only Redis knows who holds it or when a slot frees: the jobs
             * behind ask it, in their order, in the next batch. */
            cqueue behind = h->behind;
            holder_drop(l, h);
            while ((c = q_pop(&behind)) != NULL)
                submit_acquire(l, c, 0);
        }
        return;
    case K_RENEW:
        h = holder_of(l, c->argv[0], strtoll(c->argv[1], NULL, 10));
        if (h && rep->status == SBX_LEASE_OK)
            h->until_ms = sbx_now_ms() + (uint64_t)strtoll(c->argv[2], NULL, 10);
        else if (h && rep->status == SBX_LEASE_LOST)
            holder_drop(l, h);
        return;
    case K_RELEASE:
        /* Whatever the answer: the lease is gone, or Redis is down and it
         * expires there by itself; either way only Redis knows now. */
        h = holder_of(l, c->argv[0], strtoll(c->argv[1], NULL, 10));
        if (h)
            holder_drop(l, h);
        return;
    default:
        return;
    }
}

static void deliver(call *c, const sbx_lease_reply *rep)
{
    sbx_lease_cb cb = c->cb;
    void *arg = c->arg;
    call_free(c);
    if (cb)
        cb(arg, rep);
}

/* A call that will not reach Redis: ERROR, once. */
static void fail(sbx_leases *l, call *c, const char *why)
{
    sbx_lease_reply out;
    memset(&out, 0, sizeof(out));
    out.status = SBX_LEASE_ERROR;
    out.error = why;
    note(l, c, &out);
    deliver(c, &out);
}

static void batch_free(batch *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        b->l->batches = b->next;
    if (b->next)
        b->next->prev = b->prev;
    free(b);
}

static void on_batch(void *arg, redisReply *rep)
{
    batch *b = arg;
    sbx_leases *l = b->l;
    const char *whole = NULL;

    if (!rep)
        whole = "redis connection lost";
    else if (rep->type == REDIS_REPLY_ERROR)
        whole = rep->str;
    else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != (size_t)b->n)
        whole = "unexpected reply shape from lease script";
    /* Detached first: a callback may queue calls and free nothing of b. */
    if (b->prev)
        b->prev->next = b->next;
    else
        l->batches = b->next;
    if (b->next)
        b->next->prev = b->prev;
    b->prev = b->next = NULL;
    for (int i = 0; i < b->n; i++) {
        call *c = b->calls[i];
        sbx_lease_reply out;
        const char *err = whole;
        if (!err)
            err = parse(rep->element[i], &out);
        if (err) {
            fail(l, c, err);
            continue;
        }
        note(l, c, &out);
        deliver(c, &out);
    }
    free(b);
}

static sbx_redis_script *script_of(sbx_leases *l, enum kind kind)
{
    return kind == K_ACQUIRE ? l->acquire : kind == K_RENEW ? l->renew : l->release;
}

/* One script call for up to BATCH_MAX queued calls of a kind. */
static void send_batch(sbx_leases *l, enum kind kind)
{
    const char *argv[1 + BATCH_MAX * 7];
    size_t lens[1 + BATCH_MAX * 7];
    cqueue *q = &l->sendq[kind];
    batch *b = calloc(1, sizeof(*b));
    int argc = 1, rc = -ENOMEM;

    if (b) {
        b->l = l;
        b->kind = kind;
        argv[0] = "0";
        lens[0] = 1;
        while (b->n < BATCH_MAX && q->head) {
            call *c = q_pop(q);
            b->calls[b->n++] = c;
            for (int i = 0; i < NARGS[kind]; i++) {
                argv[argc] = c->argv[i];
                lens[argc++] = strlen(c->argv[i]);
            }
        }
        rc = sbx_redis_evalsha(l->r, script_of(l, kind), on_batch, b, argc, argv, lens);
    }
    if (rc == 0) {
        b->next = l->batches;
        if (l->batches)
            l->batches->prev = b;
        l->batches = b;
        l->st.script_calls++;
        if (kind == K_ACQUIRE)
            l->st.acquires_sent += (uint64_t)b->n;
        return;
    }
    if (!b) {
        fail(l, q_pop(q), "out of memory");
        return;
    }
    for (int i = 0; i < b->n; i++)
        fail(l, b->calls[i], rc == -ENOTCONN ? "redis connection lost" : "redis send failed");
    free(b);
}

/* Everything queued goes out: answers first (they were decided first),
 * then the batches. Callbacks run here (answers, batches Redis refused at
 * once) may queue more; those wait for the next turn, so one flush ends. */
static void flush_queued(sbx_leases *l)
{
    cqueue answers = l->answers;
    int batches[K_BATCHED];
    call *c;

    memset(&l->answers, 0, sizeof(l->answers));
    for (int k = 0; k < K_BATCHED; k++)
        batches[k] = (l->sendq[k].n + BATCH_MAX - 1) / BATCH_MAX;
    while ((c = q_pop(&answers)) != NULL) {
        sbx_lease_reply rep = c->local;
        deliver(c, &rep);
    }
    for (int k = 0; k < K_BATCHED; k++)
        while (batches[k]-- > 0 && l->sendq[k].head)
            send_batch(l, (enum kind)k);
}

static void on_flush(sbx_timer *t) { flush_queued(t->data); }

/* An acquire to Redis, or behind this worker's holder of its project
 * (may_wait), or answered here. */
static void submit_acquire(sbx_leases *l, call *c, int may_wait)
{
    const char *project = c->argv[1], *job = c->argv[2];
    holder **pp = l->holders ? by_project(l, project) : NULL, *h = pp ? *pp : NULL;

    if (h && h->granted && h->until_ms <= sbx_now_ms()) {
        /* Its ttl passed without a renewal we saw: Redis decides. */
        holder_drop(l, h);
        h = NULL;
    }
    if (h && strcmp(h->job, job) != 0) {
        if (h->granted) {
            answer_busy(h, &c->local);
            l->st.local_busy++;
            q_push(&l->answers, c);
            arm(l);
            return;
        }
        if (may_wait) {
            l->st.waited++;
            q_push(&h->behind, c);
            return;
        }
    }
    if (!h && (h = holder_new(l, project, job)) != NULL) {
        h->acq = c;
        c->h = h;
    }
    q_push(&l->sendq[K_ACQUIRE], c);
    arm(l);
}

int sbx_leases_new(sbx_redis *r, sbx_leases **out)
{
    sbx_leases *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->r = r;
    l->loop = sbx_redis_loop(r);
    sbx_timer_init(&l->flush, on_flush, l);
    l->acquire = sbx_redis_script_new(sbx_lua_acquire);
    l->renew = sbx_redis_script_new(sbx_lua_renew);
    l->release = sbx_redis_script_new(sbx_lua_release);
    l->reg = sbx_redis_script_new(sbx_lua_register);
    l->fence = sbx_redis_script_new(sbx_lua_fence);
    if (!l->acquire || !l->renew || !l->release || !l->reg || !l->fence) {
        sbx_leases_free(l);
        return -ENOMEM;
    }
    *out = l;
    return 0;
}

void sbx_leases_free(sbx_leases *l)
{
    if (!l)
        return;
    if (l->loop)
        sbx_timer_stop(l->loop, &l->flush);
    sbx_info("lease", "lease totals: script calls=%" PRIu64 " acquires sent=%" PRIu64
             " granted=%" PRIu64 " refused by redis=%" PRIu64 " answered here=%" PRIu64
             " waited for an acquire here=%" PRIu64,
             l->st.script_calls, l->st.acquires_sent, l->st.granted, l->st.refused_remote,
             l->st.local_busy, l->st.waited);
    while (l->calls)
        call_free(l->calls);
    while (l->batches)
        batch_free(l->batches);
    for (size_t i = 0; l->holders && i < HOLDER_BUCKETS; i++)
        while (l->holders[i]) {
            holder *h = l->holders[i];
            l->holders[i] = h->pnext;
            free(h->project);
            free(h->job);
            free(h);
        }
    free(l->holders);
    free(l->slots);
    sbx_redis_script_free(l->acquire);
    sbx_redis_script_free(l->renew);
    sbx_redis_script_free(l->release);
    sbx_redis_script_free(l->reg);
    sbx_redis_script_free(l->fence);
    free(l);
}

void sbx_leases_get_stats(const sbx_leases *l, sbx_leases_stats *out) { *out = l->st; }

/* fence and register: a script call of their own, with the flat reply. */
static void on_one(void *arg, redisReply *rep)
{
    call *c = arg;
    sbx_lease_reply out;
    const char *err = rep ? parse(rep, &out) : "redis connection lost";
    if (err) {
        memset(&out, 0, sizeof(out));
        out.status = SBX_LEASE_ERROR;
        out.error = err;
    }
    deliver(c, &out);
}

static int eval_one(sbx_leases *l, sbx_redis_script *s, sbx_lease_cb cb, void *arg, int argc,
                    const char **argv)
{
    size_t lens[EVAL_ARGS_MAX_LEASE];
    call *c;
    int rc;

    if (!sbx_redis_connected(l->r))
        return -ENOTCONN;
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    c = call_new(l, K_ONE, cb, arg, 0, NULL);
    if (!c)
        return -ENOMEM;
    rc = sbx_redis_evalsha(l->r, s, on_one, c, argc, argv, lens);
    if (rc)
        call_free(c);
    else
        l->st.script_calls++;
    return rc;
}

/* A batched call: refused at once when Redis is down (as a call of its own
 * was), otherwise queued for the next flush. */
static call *queued(sbx_leases *l, enum kind kind, sbx_lease_cb cb, void *arg,
                    const char **argv, int *rc)
{
    call *c;
    *rc = -ENOTCONN;
    if (!sbx_redis_connected(l->r))
        return NULL;
    *rc = -ENOMEM;
    c = call_new(l, kind, cb, arg, NARGS[kind], argv);
    if (c)
        *rc = 0;
    return c;
}

int sbx_lease_acquire(sbx_leases *l, const char *pool, const char *project, const char *job,
                      const char *worker, int64_t ttl_ms, int64_t token_floor, sbx_lease_cb cb,
                      void *arg)
{
    return sbx_lease_acquire_session(l, pool, project, job, worker, ttl_ms, token_floor, "",
                                     cb, arg);
}

int sbx_lease_acquire_session(sbx_leases *l, const char *pool, const char *project,
                              const char *job, const char *worker, int64_t ttl_ms,
                              int64_t token_floor, const char *session, sbx_lease_cb cb,
                              void *arg)
{
    char ttl[24], floor[24];
    const char *argv[] = {pool, project, job, worker, ttl, floor, session};
    call *c;
    int rc;
    snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_ms);
    snprintf(floor, sizeof(floor), "%" PRId64, token_floor);
    if ((c = queued(l, K_ACQUIRE, cb, arg, argv, &rc)) != NULL)
        submit_acquire(l, c, 1);
    return rc;
}

int sbx_lease_renew(sbx_leases *l, const sbx_lease_id *id, int64_t ttl_ms, sbx_lease_cb cb,
                    void *arg)
{
    char tok[24], ttl[24];
    const char *argv[] = {id->slot, tok, ttl, id->job, id->project, id->worker, id->pool};
    call *c;
    int rc;
    snprintf(tok, sizeof(tok), "%" PRId64, id->token);
    snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_ms);
    if ((c = queued(l, K_RENEW, cb, arg, argv, &rc)) != NULL) {
        q_push(&l->sendq[K_RENEW], c);
        arm(l);
    }
    return rc;
}

int sbx_lease_release(sbx_leases *l, const char *slot, int64_t token, sbx_lease_cb cb,
                      void *arg)
{
    return sbx_lease_release_session(l, slot, token, 0, cb, arg);
}

int sbx_lease_release_session(sbx_leases *l, const char *slot, int64_t token, int end,
                              sbx_lease_cb cb, void *arg)
{
    char tok[24];
    const char *argv[] = {slot, tok, end ? "end" : ""};
    call *c;
    int rc;
    snprintf(tok, sizeof(tok), "%" PRId64, token);
    if ((c = queued(l, K_RELEASE, cb, arg, argv, &rc)) != NULL) {
        q_push(&l->sendq[K_RELEASE], c);
        arm(l);
    }
    return rc;
}

int sbx_lease_fence_floor(sbx_leases *l, int64_t floor, int64_t ttl_ms, sbx_lease_cb cb,
                          void *arg)
{
    char f[24], ttl[24];
    const char *argv[] = {"0", f, ttl};
    snprintf(f, sizeof(f), "%" PRId64, floor);
    snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_ms);
    return eval_one(l, l->fence, cb, arg, 3, argv);
}

int sbx_lease_register(sbx_leases *l, const char *pool, const char *registrant,
                       const char *const *slots, int nslots, sbx_lease_cb cb, void *arg)
{
    /* 4 leading arguments ("0", pool, registrant, phase) plus the chunk. */
    enum { CHUNK = EVAL_ARGS_MAX_LEASE - 4 };
    const char *argv[EVAL_ARGS_MAX_LEASE];
    int done = 0;

    argv[0] = "0";
    argv[1] = pool;
    argv[2] = registrant;
    do {
        int n = nslots - done < CHUNK ? nslots - done : CHUNK;
        int last = done + n == nslots;
        int rc;
        argv[3] = done == 0 ? (last ? "only" : "first") : (last ? "last" : "more");
        for (int i = 0; i < n; i++)
            argv[i + 4] = slots[done + i];
        /* Only the last chunk reports; Redis runs the chunks in order. */
        rc = eval_one(l, l->reg, last ? cb : NULL, last ? arg : NULL, n + 4, argv);
        if (rc)
            return rc;
        done += n;
    } while (done < nslots);
    return 0;
}
