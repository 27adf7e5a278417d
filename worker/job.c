/* job.c — one sandbox job, from a Kafka message to a terminal row.
 *
 * Every job is an explicit state machine (curl multi.c's mstate(), disque's
 * job states). Every change of state goes through transition(), which checks
 * the move against `legal` below, logs "from -> to" and counts it; any other
 * move is a bug in sbx and is refused (see transition()). One meaning per
 * state:
 *
 *   RECORDING    sbx.record_run() in flight (or retried on a timer): the row
 *                exists (queued), or we learn it is already terminal (a
 *                redelivery: skip), or that the id holds another payload
 *                (the message is dead-lettered as job_id_reused, the run
 *                that holds the id left alone)
 *   ENDING       a job nobody claimed is being ended canceled: its cancel was
 *                asked, or policy "reject" refused it; one unfenced write
 *                (cancel_unclaimed / reject_run) in flight
 *   LEASING      lease acquire (Redis) in flight
 *   WAITING      no free slot, the project is busy, or the job's own lease is
 *                still held by a previous owner; a timer retries (and a local
 *                release wakes us early)
 *   CLAIMING     we hold a lease; sbx.claim_run() stores its fencing token
 *   STARTING     provider start() called; PostgreSQL says provisioning
 *   RUNNING      the provider said STARTED; the lease is renewed on a timer
 *   FINISHING    the fenced terminal write is in flight (or retried)
 *   UNCLAIMING   a claimed run hands its claim back without an outcome
 *                (requeue_run after a provider error or at shutdown,
 *                unclaim_run when the provider's slot was busy): fenced
 *                write in flight
 *   RELEASING    lease release in flight; `after` says what comes next
 *   DONE         the outcome is durable and the offsets are marked; the job
 *                is freed at the next safe point
 *   HANDED_BACK  forgotten without marking offsets (shutdown, or a refused
 *                move): the partition's next owner runs it; freed likewise
 *
 * Ownership rules (see DESIGN-NOTES "Who owns a job"):
 *  - Kafka offsets are marked done only after the outcome is durable
 *    (terminal row written, or found terminal).
 *  - Every write after the claim names our token; a false answer means a newer
 *    owner exists, and we stop acting (fenced out).
 *  - We trust our lease only until sent_at + TTL - margin on the monotonic
 *    clock; past that without a renewal we cancel the build and write nothing.
 *    The provider gets the same deadline (ops->trust) and kills the build by
 *    itself if we are frozen when it passes.
 *
 * Async callbacks carry the job pointer; `ops` counts those outstanding (a
 * started build counts as one until it reports FINISHED), so a job is never
 * freed under one. Callbacks always run from the loop: a request that could
 * not even be sent fails through the job's `late` timer (zero delay), never
 * by calling its callback from inside the call that failed.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "assert.h"
#include "log.h"
#include "runlog.h"
#include "sbx_redact.h"
#include "session.h"
#include "text.h"
#include "worker.h"

/* The hot writes, merged per round by db.c (migrations/0009_batches.sql)
 * from 8 calls of a kind: the array forms cost ~0.75 ms a statement and
 * ~0.03 ms a call where the one-call statement costs ~0.14 ms, so below ~7
 * calls one by one is cheaper (pg_stat_statements, the bench's dispatch and
 * latency runs; merging 4-5 calls raised the executor time per job at
 * 956 jobs/s from 0.55 to 0.76 ms and the p50 to the provider call from 6
 * to 21 ms). */
static const sbx_db_batch RECORD = {
    "SELECT status, attempt, lease_token, cancel_requested, reused, first_sha"
    " FROM sbx.record_run($1,$2,$3,$4,$5,$6,$7)",
    "SELECT * FROM sbx.record_runs($1::text[],$2::text[],$3::jsonb[],$4::text[],"
    "$5::integer[],$6::bigint[],$7::text[])", 7, 8};
static const sbx_db_batch WAIT = {
    "SELECT sbx.wait_run($1,$2,$3)",
    "SELECT * FROM sbx.wait_runs($1::text[],$2::text[],$3::text[])", 3, 8};
static const sbx_db_batch CLAIM = {
    "SELECT result, status, attempt, lease_token FROM sbx.claim_run($1,$2,$3,$4,$5)",
    "SELECT * FROM sbx.claim_runs($1::text[],$2::bigint[],$3::text[],$4::text[],$5::text[])", 5,
    8};
static const sbx_db_batch TRANSITION = {
    "SELECT sbx.transition($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
    "SELECT * FROM sbx.transitions($1::text[],$2::bigint[],$3::text[],$4::text[],$5::text[],"
    "$6::integer[],$7::text[],$8::text[],$9::text[],$10::text[])", 10, 8};

/* A line about job j: its job and project ids ride along as fields (log.h). */
#define jlog(lvl, j, ...) sbx_log_job((lvl), "job", (j)->id, (j)->spec->project_id, __VA_ARGS__)

/* Each histogram counts a job once, however often it is retried. */
#define SEEN_CLAIMED 1u
#define SEEN_RUNNING 2u

/* Capacity waits poll at most this far apart (a local release wakes sooner). */
#define WAIT_MAX_MS 1000
/* Transient-error retries back off up to this. */
#define RETRY_MAX_MS 30000

typedef enum jstate {
    J_RECORDING, J_ENDING, J_LEASING, J_WAITING, J_CLAIMING, J_STARTING, J_RUNNING,
    J_FINISHING, J_UNCLAIMING, J_RELEASING, J_DONE, J_HANDED_BACK,
    J_NSTATES
} jstate;

static const char *const state_names[J_NSTATES] = {
    "recording", "ending", "leasing", "waiting", "claiming", "starting", "running",
    "finishing", "unclaiming", "releasing", "done", "handed_back",
};

/* The legal moves, from -> to. Nothing moves out of DONE or HANDED_BACK, and
 * no state moves to itself (a retry stays put without a move). */
static const unsigned char legal[J_NSTATES][J_NSTATES] = {
    /* recorded; found terminal; cancel asked before; shutdown during a retry */
    [J_RECORDING] = {[J_LEASING] = 1, [J_DONE] = 1, [J_ENDING] = 1, [J_HANDED_BACK] = 1},
    /* ended; or not (claimed elsewhere, no cancel flag): go on */
    [J_ENDING] = {[J_DONE] = 1, [J_LEASING] = 1},
    /* leased; no lease; policy reject; leased or not during shutdown */
    [J_LEASING] = {[J_CLAIMING] = 1, [J_WAITING] = 1, [J_ENDING] = 1, [J_RELEASING] = 1,
                   [J_HANDED_BACK] = 1},
    /* ask again; `sbx cancel`; shutdown */
    [J_WAITING] = {[J_LEASING] = 1, [J_ENDING] = 1, [J_HANDED_BACK] = 1},
    /* claimed; claimed during shutdown; terminal, stale, busy or lease gone */
    [J_CLAIMING] = {[J_STARTING] = 1, [J_UNCLAIMING] = 1, [J_RELEASING] = 1},
    /* started; an outcome without STARTED (a job error start() found, too);
     * provider error or busy slot; lease lost */
    [J_STARTING] = {[J_RUNNING] = 1, [J_FINISHING] = 1, [J_UNCLAIMING] = 1,
                    [J_RELEASING] = 1},
    /* an outcome; provider error or shutdown; lease lost */
    [J_RUNNING] = {[J_FINISHING] = 1, [J_UNCLAIMING] = 1, [J_RELEASING] = 1},
    /* written, refused, or the lease ran out first: the lease goes either way */
    [J_FINISHING] = {[J_RELEASING] = 1},
    [J_UNCLAIMING] = {[J_RELEASING] = 1},
    /* finished; shutdown; wait and try again */
    [J_RELEASING] = {[J_DONE] = 1, [J_HANDED_BACK] = 1, [J_WAITING] = 1},
};

static unsigned long moves[J_NSTATES][J_NSTATES];

/* What to do once the lease is released: finish (offsets done), wait and
 * try again, or hand the job back (shutdown: offsets stay unfinished, so the
 * next owner of the partition runs it). */
typedef enum after_release { AR_DONE, AR_WAIT, AR_HANDBACK } after_release;

/* How a job nobody claimed ends (ENDING). */
typedef enum end_kind { END_CANCEL, END_REJECT } end_kind;

/* Failures of requests that could not be sent, waiting for the `late` timer. */
enum {
    LATE_START = 1,         /* provider start() refused: FINISHED with an error */
    LATE_RUNNING = 2,       /* the "running" write */
    LATE_TERMINAL = 4,      /* the terminal write */
    LATE_RELEASE = 8,       /* the lease release */
};

struct job {
    sbx_jobtab_entry te;        /* in w->jobs */
    sbx_waiter wt;              /* in w->waits */
    job *dnext;                 /* dead list */
    sbx_worker *w;
    jstate st;
    char id[SBX_ID_MAX + 1];
    sbx_job *spec;
    char *raw;                  /* the message, env values and all: only in memory; what
                                 * is stored or dead-lettered is redacted (sbx_redact.h) */
    size_t rawlen;
    char sha[65];               /* its fingerprint (sbx_redact.h); "" until recorded */
    sbx_offset_ref *refs;       /* every delivery of this job we hold */
    int nrefs, caprefs;
    int attempt;                /* as counted by PostgreSQL */
    int64_t row_token;          /* the run row's newest token: floor for ours */
    int backoff;                /* consecutive local retries */
    int marked_waiting;         /* wrote waiting_capacity already */
    int ops;                    /* callbacks outstanding */
    int cancel;                 /* `sbx cancel` asked for it */
    int handback;               /* shutdown: stop the build, requeue, release */
    /* ENDING */
    end_kind end;
    const char *end_note;       /* static text for the log */
    /* reject_run's detail: the project id, the busy slot and the policy */
    char end_detail[SBX_ID_MAX + SBX_LEASE_SLOT_MAX + 80];
    /* lease */
    int have_lease;
    /* The provider of the lease (the pool's); NULL until one is leased.
     * pools: what acquire asks for, the worker's pools in spill-over order
     * for a job of provider "any", else its provider's one. */
    sbx_provider *prov;
    const char *pools;
    char slot[SBX_LEASE_SLOT_MAX + 1];
    char session[SBX_SESSION_NAME_MAX + 1]; /* its session's sandbox name, "" none */
    int64_t token;
    uint64_t lease_until_ms;
    uint64_t renew_sent_ms;
    uint64_t releases_seen;     /* w->releases when the acquire was sent */
    int acquiring;              /* an acquire is in flight: a wake-up must not send another */
    int held_logged;            /* "lease still held" said once (it is asked each second) */
    int lost;                   /* lease lost: no more writes or provider calls */
    after_release after;
    sbx_timer timer;            /* retries and waits */
    sbx_timer renew;
    /* failures delivered from the loop */
    sbx_timer late_t;
    unsigned late;              /* LATE_* bits pending */
    sbx_outcome late_outcome;   /* LATE_START: what start()'s error means */
    char late_error[256];       /* LATE_START: sbx_result.error */
    /* build */
    sbx_run *run;
    sbx_runlog *log;            /* the attempt's live output, until FINISHED */
    const char *status;         /* terminal status being written */
    sbx_result *res;
    uint64_t started_ms;
    int64_t enqueued_ms;        /* Kafka timestamp (wall clock); <= 0: unknown */
    unsigned seen;              /* SEEN_* histograms this job was counted in */
};

int sbx__job_nstates(void) { return J_NSTATES; }

const char *sbx__job_state_name(int s)
{
    return s >= 0 && s < J_NSTATES ? state_names[s] : "?";
}

int sbx__job_move_legal(int from, int to)
{
    return from >= 0 && from < J_NSTATES && to >= 0 && to < J_NSTATES && legal[from][to];
}

const unsigned long *sbx__job_moves(void) { return &moves[0][0]; }

int sbx__job_state(const sbx_worker *w, const char *job_id)
{
    const job *j = sbx__jobtab_find(&w->jobs, job_id);
    return j ? (int)j->st : -1;
}

static int over(const job *j) { return j->st == J_DONE || j->st == J_HANDED_BACK; }

/* One outstanding callback has come back. */
static void op_done(job *j)
{
    if (SBX_ASSERT(j->ops > 0))
        j->ops--;
}

/* Takes a job out of the worker (its table, the waiters) onto the dead list,
 * where it is freed once no callback of its is outstanding. */
static void forget(job *j)
{
    sbx_worker *w = j->w;
    sbx_timer_stop(w->loop, &j->timer);
    sbx_timer_stop(w->loop, &j->renew);
    sbx__waitq_unlist(&w->waits, &j->wt);
    sbx__jobtab_del(&w->jobs, &j->te);
    j->dnext = w->dead;
    w->dead = j;
}

/* After a refused move nothing about the job can be trusted, so it ends the
 * way that is safe whatever went wrong: no more writes (PostgreSQL keeps its
 * last good state), offsets left unfinished (the message is redelivered and
 * its next owner redoes the job with a newer token), the build stopped (its
 * FINISHED still comes and is ignored), the lease left to expire. */
static void end_safely(job *j)
{
    if (over(j))
        return;
    j->lost = 1;
    if (j->run)
        j->prov->ops->cancel(j->prov, j->run);
    j->st = J_HANDED_BACK;
    forget(j);
}

/* Returns 1 when the move was made. 0: it was illegal, and release builds
 * (NDEBUG) have ended the job safely; the caller must return at once. */
static int transition(job *j, jstate to)
{
    jstate from = j->st;
    int ok = sbx__job_move_legal((int)from, (int)to);
    if (!ok)
        jlog(SBX_LOG_ERROR, j, "illegal move %s -> %s", state_names[from], state_names[to]);
    if (!SBX_ASSERT(ok)) {
        end_safely(j);
        return 0;
    }
    jlog(SBX_LOG_DEBUG, j, "%s -> %s", state_names[from], state_names[to]);
    moves[from][to]++;
    j->st = to;
    return 1;
}

/* ---- life ---- */

static void step(job *j);

static void finish(job *j)
{
    if (!transition(j, J_DONE))
        return;
    for (int i = 0; i < j->nrefs; i++)
        sbx_kafka_done(j->w->kafka, &j->refs[i]);
    j->nrefs = 0;
    forget(j);
}

/* Shutdown: forget a job without marking its offsets; it was requeued (or
 * never claimed) and the partition's next owner runs it. */
static void hand_back(job *j)
{
    jlog(SBX_LOG_INFO, j, "handed back (was %s)", state_names[j->st]);
    if (!transition(j, J_HANDED_BACK))
        return;
    forget(j);
}

static void job_free(job *j)
{
    SBX_ASSERT(j->ops == 0);
    sbx_timer_stop(j->w->loop, &j->timer);
    sbx_timer_stop(j->w->loop, &j->renew);
    sbx_timer_stop(j->w->loop, &j->late_t);
    /* j->log is set only when the provider was destroyed before FINISHED
     * (exit): the database is gone too, and main frees the runlogs. */
    j->log = NULL;
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

size_t sbx__jobs_count(const sbx_worker *w) { return w->jobs.count; }

typedef struct leased {
    const sbx_provider *prov;
    const char **out;
    size_t n, max;
} leased;

static void add_leased(job *j, void *arg)
{
    leased *l = arg;
    if (j->have_lease && (!l->prov || j->prov == l->prov) && l->n < l->max)
        l->out[l->n++] = j->slot;
}

size_t sbx__jobs_leased_slots(const sbx_worker *w, const sbx_provider *prov, const char **out,
                              size_t max)
{
    leased l = {prov, out, 0, max};
    sbx__jobtab_each((sbx_jobtab *)&w->jobs, add_leased, &l);
    return l.n;
}

/* Seconds since the job was enqueued, into h once (bit). The producer's
 * clock is another host's: a skewed one shows as 0 or as a long wait. */
static void observe_since_enqueue(job *j, sbx_hist *h, unsigned bit)
{
    struct timespec now;
    if (j->seen & bit || j->enqueued_ms <= 0)
        return;
    j->seen |= bit;
    clock_gettime(CLOCK_REALTIME, &now);
    sbx_hist_observe(h, ((double)now.tv_sec * 1000 + (double)now.tv_nsec / 1e6 -
                         (double)j->enqueued_ms) / 1000.0);
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
    jlog(SBX_LOG_WARN, j, "%s: %s; retrying in ~%" PRIu64 " ms", state_names[j->st], why, d);
    sbx_timer_start(j->w->loop, &j->timer, jitter(d));
}

/* A request of `what` could not be sent: its failure reaches its callback
 * from the loop, like any other failure, and counts as outstanding until
 * then. */
static void fail_later(job *j, unsigned what)
{
    if (!SBX_ASSERT(!(j->late & what)))
        return;
    j->late |= what;
    j->ops++;
    sbx_timer_start(j->w->loop, &j->late_t, 0);
}

static void wait_for_capacity(job *j) { sbx__waitq_list(&j->w->waits, &j->wt); }

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
    op_done(j);
    if (err)
        jlog(SBX_LOG_WARN, j, "%s", err);
}

/* Ends a job nobody has claimed (its cancel was asked, or policy "reject"):
 * one unfenced statement that answers whether it did. If it did not, the job
 * was claimed elsewhere or moved on; the normal path (and the claim, which
 * sees a cancel flag) takes over. */
static void on_ended_unclaimed(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    op_done(j);
    if (j->st != J_ENDING)
        return;
    if (res && strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
        jlog(SBX_LOG_INFO, j, "%s", j->end_note);
        j->w->stats.canceled++;
        finish(j);
        return;
    }
    if (err)
        jlog(SBX_LOG_WARN, j, "%s: %s", j->end_note, err);
    if (transition(j, J_LEASING))
        step(j);
}

static void send_end(job *j)
{
    const char *p[3] = {j->id, j->w->cfg.worker_id, j->end_detail};
    int rc = j->end == END_CANCEL
                 ? sbx_db_query(j->w->db, "SELECT sbx.cancel_unclaimed($1,$2)", 2, p,
                                on_ended_unclaimed, j)
                 : sbx_db_query(j->w->db, "SELECT sbx.reject_run($1,$2,$3)", 3, p,
                                on_ended_unclaimed, j);
    if (rc == 0)
        j->ops++;
    else
        retry_later(j, "database queue full");
}

static void end_unclaimed(job *j, end_kind end, const char *note)
{
    sbx_timer_stop(j->w->loop, &j->timer);
    sbx__waitq_unlist(&j->w->waits, &j->wt);
    j->end = end;
    j->end_note = note;
    if (transition(j, J_ENDING))
        send_end(j);
}

static void cancel_unclaimed(job *j)
{
    end_unclaimed(j, END_CANCEL, "canceled before it started");
}

/* The message of delivery `ref` of j as the dead-letter path takes it. Its
 * key is the project id, as every producer of sbx keys jobs. */
static void message_of(const job *j, const sbx_offset_ref *ref, sbx_kafka_msg *m)
{
    memset(m, 0, sizeof(*m));
    m->topic = j->w->cfg.topic;
    m->partition = ref->partition;
    m->offset = ref->offset;
    m->ref = *ref;
    m->key = j->spec->project_id;
    m->key_len = strlen(j->spec->project_id);
    m->payload = j->raw;
    m->len = j->rawlen;
}

/* A job id reused with another payload (issue 10): the message is refused as
 * a dead letter of its own reason, and the run that holds the id is left as
 * it is. `first` names that run's status and fingerprint. */
static void dead_letter_reused(sbx_worker *w, const sbx_kafka_msg *m, const char *job_id,
                               const char *first, const char *first_sha, const char *sha)
{
    /* The id, two fingerprints (64 each), `first` (a status, or a state and
     * a worker id) and about 110 bytes of text; the schema's cap on detail
     * is 1024. */
    char detail[2 * SBX_ID_MAX + 400];
    snprintf(detail, sizeof(detail),
             "job id %s is already used by another payload (its run is %s, payload_sha256 %s); "
             "this message's payload_sha256 is %s",
             job_id, first, first_sha && *first_sha ? first_sha : "unknown", sha);
    w->stats.id_reused++;
    sbx__dead_letter(w, m, "job_id_reused", detail, 0, 1);
}

/* record_run found the id taken by another payload: every delivery of this
 * message is dead-lettered (each offset is done once its dead letter is on
 * the broker), and the job ends without a write. */
static void refuse_reused(job *j, const char *first_status, const char *first_sha)
{
    sbx_kafka_msg m;
    for (int i = 0; i < j->nrefs; i++) {
        message_of(j, &j->refs[i], &m);
        dead_letter_reused(j->w, &m, j->id, first_status, first_sha, j->sha);
    }
    j->nrefs = 0;
    finish(j);
}

static void on_recorded(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    op_done(j);
    if (j->st != J_RECORDING)
        return;
    if (!res || PQntuples(res) != 1) {
        retry_later(j, err ? err : "record_run returned no row");
        return;
    }
    j->backoff = 0;
    if (strcmp(PQgetvalue(res, 0, 4), "t") == 0) {
        refuse_reused(j, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 5));
        return;
    }
    j->attempt = atoi(PQgetvalue(res, 0, 1));
    j->row_token = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    if (is_terminal(PQgetvalue(res, 0, 0))) {
        jlog(SBX_LOG_INFO, j, "already %s; skipped", PQgetvalue(res, 0, 0));
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
    if (transition(j, J_LEASING))
        step(j);
}

/* The row keeps the message with its env values redacted (sbx_redact.h): the
 * build alone gets them, from j->spec. */
static void record(job *j)
{
    sbx_worker *w = j->w;
    char part[16], off[24], *stored = NULL;
    const char *p[7];
    int rc = sbx__job_fingerprint(j->raw, j->rawlen, &stored, j->sha);
    if (rc) {
        /* A message the parser took is a JSON object: only memory fails. */
        SBX_ASSERT(rc == -ENOMEM);
        retry_later(j, "out of memory redacting the spec");
        return;
    }
    snprintf(part, sizeof(part), "%d", (int)j->refs[0].partition);
    snprintf(off, sizeof(off), "%" PRId64, j->refs[0].offset);
    p[0] = j->id;
    p[1] = j->spec->project_id;
    p[2] = stored;
    p[3] = w->cfg.worker_id;
    p[4] = part;
    p[5] = off;
    p[6] = j->sha;
    rc = sbx_db_batched(w->db, &RECORD, p, on_recorded, j);
    free(stored);
    if (rc != 0) {
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
    if (sbx_db_batched(j->w->db, &WAIT, p, on_fire_and_forget, j) == 0)
        j->ops++;
}

/* ---- leases ---- */

static void release(job *j, after_release after);
static void reject(job *j, const char *busy_slot);

/* An OK: the lease is the job's, on the provider whose pool gave it. */
static int take_lease(job *j, const sbx_lease_reply *rep)
{
    snprintf(j->slot, sizeof(j->slot), "%s", rep->slot);
    j->token = rep->token;
    j->have_lease = 1;
    j->lost = 0;
    j->prov = sbx__provider_of_pool(j->w, rep->pool);
    if (SBX_ASSERT(j->prov != NULL))
        return 0;
    end_safely(j); /* a pool we did not ask for: leave the lease to expire */
    return -1;
}

static void on_acquired(void *arg, const sbx_lease_reply *rep)
{
    job *j = arg;
    sbx_worker *w = j->w;
    uint64_t d;

    op_done(j);
    j->acquiring = 0;
    if (j->st != J_LEASING)
        return;
    if (w->stopping) {
        if (rep->status == SBX_LEASE_OK) {
            if (take_lease(j, rep) == 0)
                release(j, AR_HANDBACK);
        } else {
            hand_back(j);
        }
        return;
    }
    switch (rep->status) {
    case SBX_LEASE_OK:
        if (take_lease(j, rep) != 0)
            return;
        if (j->token > w->tokens_seen)
            w->tokens_seen = j->token;
        j->lease_until_ms = j->renew_sent_ms + (uint64_t)w->cfg.lease_ttl_ms * 9 / 10;
        j->backoff = 0;
        sbx__waitq_unlist(&w->waits, &j->wt);
        jlog(SBX_LOG_INFO, j, "leased %s token=%" PRId64 " provider=%s", j->slot, j->token,
             j->prov->ops->name);
        if (transition(j, J_CLAIMING))
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
        /* Busy project or no free slot alike: a later job of the project
         * parks behind its earliest, which alone asks, so the project's jobs
         * take slots in their order (each polling on its own, the quickest
         * timer won: sessions' jobs ran 1,3,4,2,5 on a full pool). */
        if (!sbx__waitq_park(&w->waits, &j->wt)) {
            /* Parked behind an earlier job of the project, which asks for
             * both; it wakes us when it leaves the queue. */
            if (transition(j, J_WAITING))
                wait_for_capacity(j);
            return;
        }
        break;
    case SBX_LEASE_HELD:
    case SBX_LEASE_QUIET:
        /* HELD: a previous owner (killed, or still running after a
         * rebalance) holds this job's lease. QUIET: Redis lost its data, and
         * builds of leases it forgot may still run; their owners take those
         * leases back within one ttl. Either way, wait for it to end. */
        w->stats.lease_waits++;
        if (rep->status == SBX_LEASE_HELD && !j->held_logged)
            jlog(SBX_LOG_INFO, j, "lease still held on %s for %" PRId64 " ms; waiting",
                 rep->slot, rep->ttl_left_ms);
        else if (rep->status == SBX_LEASE_QUIET)
            jlog(SBX_LOG_WARN, j, "Redis lost its data; no new lease for %" PRId64 " ms",
                 rep->ttl_left_ms);
        j->held_logged |= rep->status == SBX_LEASE_HELD;
        d = rep->ttl_left_ms > 0 ? (uint64_t)rep->ttl_left_ms + 50 : 100;
        if (d > (uint64_t)w->cfg.lease_ttl_ms)
            d = (uint64_t)w->cfg.lease_ttl_ms;
        /* A previous owner that is still running releases the lease when
         * its build ends, on another worker (nothing wakes us): ask again
         * each WAIT_MAX_MS rather than wait out the whole ttl. A worker
         * that took over partitions in a rebalance sat 30 s on every job
         * the old owner was finishing (bench runs with two workers capped). */
        if (rep->status == SBX_LEASE_HELD && d > WAIT_MAX_MS)
            d = WAIT_MAX_MS;
        /* The project's later jobs park behind its earliest here too: each
         * polling on its own after a Redis wipe's quiet period, the quickest
         * won (a session's fifth job ran first in CI). */
        if (!sbx__waitq_park(&w->waits, &j->wt)) {
            if (transition(j, J_WAITING))
                wait_for_capacity(j);
            return;
        }
        break;
    default:
        if (!transition(j, J_WAITING))
            return;
        wait_for_capacity(j);
        retry_later(j, rep->error ? rep->error : "lease error");
        return;
    }
    if (rep->reaped)
        sbx_info("lease", "reaped %d expired leases", rep->reaped);
    if (!transition(j, J_WAITING))
        return;
    wait_for_capacity(j);
    sbx_timer_start(w->loop, &j->timer, d ? jitter(d) + 10 : 0);
}

/* Policy "reject": the project has a build running; end this job. */
static void reject(job *j, const char *busy_slot)
{
    snprintf(j->end_detail, sizeof(j->end_detail),
             "rejected: project %s has a build running on %s (SBX_PROJECT_POLICY=reject)",
             j->spec->project_id, busy_slot);
    end_unclaimed(j, END_REJECT, "rejected: its project is busy (policy reject)");
}

static void acquire(job *j)
{
    sbx_worker *w = j->w;
    int rc;
    j->renew_sent_ms = sbx_now_ms();
    j->releases_seen = w->releases;
    if (j->spec->session_id[0] && !j->session[0])
        sbx__session_name(j->spec->project_id, j->spec->session_id, j->session);
    rc = sbx_lease_acquire_session(w->leases, j->pools, j->spec->project_id,
                                   j->id, w->cfg.worker_id, w->cfg.lease_ttl_ms,
                                   j->row_token > w->tokens_seen ? j->row_token : w->tokens_seen,
                                   j->session, on_acquired, j);
    if (rc) {
        if (!transition(j, J_WAITING))
            return;
        wait_for_capacity(j);
        retry_later(j, "redis unavailable");
        return;
    }
    j->acquiring = 1;
    j->ops++;
}

static void lose_lease(job *j, const char *why)
{
    if (j->lost)
        return;
    j->lost = 1;
    j->w->stats.fenced_out++;
    jlog(SBX_LOG_WARN, j, "lost its lease on %s (%s): stopping the build, writing nothing",
             j->slot, why);
    sbx_timer_stop(j->w->loop, &j->renew);
    if (j->run)
        j->prov->ops->cancel(j->prov, j->run);
}

/* The provider's watchdog kills the build when our trust window ends
 * without a renewal, even if we are frozen then (provider.h trust). */
static void trust_build(job *j)
{
    if (j->run && j->prov->ops->trust)
        j->prov->ops->trust(j->prov, j->run, j->lease_until_ms);
}

static void on_renewed(void *arg, const sbx_lease_reply *rep)
{
    job *j = arg;
    sbx_worker *w = j->w;
    op_done(j);
    if (!j->have_lease || j->lost || over(j))
        return;
    if (rep->status == SBX_LEASE_OK) {
        j->lease_until_ms = j->renew_sent_ms + (uint64_t)w->cfg.lease_ttl_ms * 9 / 10;
        trust_build(j);
        if (rep->reaped)
            jlog(SBX_LOG_WARN, j, "lease on %s was gone from Redis; restored", j->slot);
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
    id.pool = j->prov->ops->pool(j->prov);
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
    op_done(j);
    if (j->st != J_RELEASING)
        return;
    if (rep->status == SBX_LEASE_ERROR) {
        /* Redis down: the lease expires by itself; the reaper returns the slot. */
        jlog(SBX_LOG_WARN, j, "release of %s failed (%s); it will expire", j->slot,
                 rep->error ? rep->error : "?");
    }
    j->have_lease = 0;
    w->releases++;
    sbx__waitq_wake(&w->waits, j->spec->project_id);
    if (j->after == AR_DONE) {
        finish(j);
        return;
    }
    if (j->after == AR_HANDBACK || w->stopping) {
        hand_back(j);
        return;
    }
    if (!transition(j, J_WAITING))
        return;
    wait_for_capacity(j);
    sbx_timer_start(w->loop, &j->timer,
                    jitter((uint64_t)w->cfg.retry_base_ms << (j->backoff < 8 ? j->backoff : 8)));
    j->backoff++;
}

static void release(job *j, after_release after)
{
    sbx_worker *w = j->w;

    sbx_timer_stop(w->loop, &j->renew);
    j->after = after;
    if (!transition(j, J_RELEASING))
        return;
    if (sbx_lease_release(w->leases, j->slot, j->token, on_released, j) == 0)
        j->ops++;
    else
        fail_later(j, LATE_RELEASE);
}

/* ---- claim, run, finish ---- */

static void on_provider(void *arg, sbx_run_event ev, const sbx_result *res);
static void requeue(job *j, const char *why);

static void start_build(job *j)
{
    sbx_worker *w = j->w;
    sbx_run_req req = {0};
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
    req.session = j->session[0] ? j->session : NULL;
    if (!transition(j, J_STARTING))
        return;
    j->started_ms = sbx_now_ms();
    {
        sbx_runlog_cfg lc = {0};
        lc.loop = w->loop;
        lc.db = w->db;
        lc.job_id = j->id;
        lc.token = j->token;
        lc.attempt = j->attempt;
        lc.max_bytes = (size_t)w->cfg.log_max_bytes;
        lc.registry = &w->runlogs;
        j->log = sbx__runlog_new(&lc);
    }
    req.output = j->log ? sbx__runlog_output : NULL;
    req.output_arg = j->log;
    if (req.session && !j->prov->ops->session_op) {
        snprintf(err, sizeof(err), "provider %s does not keep sessions", j->prov->ops->name);
        rc = -EINVAL;
    } else {
        rc = j->prov->ops->start(j->prov, &req, on_provider, j, &j->run, err, sizeof(err));
    }
    if (rc) {
        sbx__runlog_end(j->log);
        j->log = NULL;
        /* No build: its FINISHED, carrying the error, comes from the loop. */
        j->run = NULL;
        j->late_outcome = rc == -EBUSY    ? SBX_OUTCOME_BUSY
                          : rc == -EINVAL ? SBX_OUTCOME_JOB_ERROR
                                          : SBX_OUTCOME_ERROR;
        snprintf(j->late_error, sizeof(j->late_error), "%s%s",
                 rc == -EINVAL ? "job refused: " : "provider start: ",
                 err[0] ? err : strerror(-rc));
        fail_later(j, LATE_START);
        return;
    }
    j->ops++; /* the build, until FINISHED */
    trust_build(j);
    sbx_timer_start(w->loop, &j->renew, (uint64_t)w->cfg.lease_ttl_ms / 3);
}

static void on_claimed(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    const char *result;
    op_done(j);
    if (j->st != J_CLAIMING)
        return;
    if (!res || PQntuples(res) != 1) {
        jlog(SBX_LOG_WARN, j, "claim failed: %s", err ? err : "no row");
        release(j, AR_WAIT);
        return;
    }
    result = PQgetvalue(res, 0, 0);
    j->attempt = atoi(PQgetvalue(res, 0, 2));
    if (strtoll(PQgetvalue(res, 0, 3), NULL, 10) > j->row_token)
        j->row_token = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    if (strcmp(result, "claimed") == 0) {
        observe_since_enqueue(j, &j->w->stats.queue_wait, SEEN_CLAIMED);
        if (j->w->stopping) {
            requeue(j, "worker shutting down");
            return;
        }
        start_build(j);
        return;
    }
    if (strcmp(result, "terminal") == 0) {
        jlog(SBX_LOG_INFO, j, "already %s; releasing", PQgetvalue(res, 0, 1));
        release(j, AR_DONE);
        return;
    }
    jlog(SBX_LOG_INFO, j, "claim: %s (status %s); waiting", result, PQgetvalue(res, 0, 1));
    if (strcmp(result, "stale") == 0)
        j->w->stats.fenced_out++;
    release(j, AR_WAIT);
}

static void claim(job *j)
{
    sbx_worker *w = j->w;
    char tok[24];
    const char *p[5];
    if (!SBX_ASSERT(j->have_lease)) {
        end_safely(j);
        return;
    }
    snprintf(tok, sizeof(tok), "%" PRId64, j->token);
    p[0] = j->id;
    p[1] = tok;
    p[2] = w->cfg.worker_id;
    p[3] = j->prov->ops->name;
    p[4] = j->slot;
    if (sbx_db_batched(w->db, &CLAIM, p, on_claimed, j) != 0) {
        release(j, AR_WAIT);
        return;
    }
    j->ops++;
}

static void on_running_written(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    op_done(j);
    if (err) {
        jlog(SBX_LOG_WARN, j, "running write: %s", err);
        return;
    }
    if (res && strcmp(PQgetvalue(res, 0, 0), "f") == 0 && j->st == J_RUNNING)
        lose_lease(j, "the run row has a newer token");
}

static void on_terminal_written(void *arg, PGresult *res, const char *err);

/* A write fenced by our token (sbx.transition): `which` is LATE_RUNNING or
 * LATE_TERMINAL, naming the write and the callback its answer goes to. */
static void write_fenced(job *j, const char *to, const char *detail, const sbx_result *r,
                         unsigned which)
{
    sbx_worker *w = j->w;
    char tok[24], code[16], *tail = NULL;
    const char *p[10];

    /* Fenced writes name the token of a lease we hold. */
    if (!SBX_ASSERT(j->have_lease && !j->lost)) {
        end_safely(j);
        return;
    }
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
    if (sbx_db_batched(w->db, &TRANSITION, p,
                       which == LATE_TERMINAL ? on_terminal_written : on_running_written, j) == 0)
        j->ops++;
    else
        fail_later(j, which);
    free(tail);
}

static void write_terminal(job *j);

static void on_terminal_written(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    sbx_worker *w = j->w;
    op_done(j);
    if (j->st != J_FINISHING)
        return;
    if (!res) {
        /* Not a lost connection (those are replayed): a statement error, or
         * the queue was full. Keep the result and try again; the offset
         * stays unfinished. */
        retry_later(j, err ? err : "terminal write failed");
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        w->stats.fenced_out++;
        jlog(SBX_LOG_WARN, j, "terminal write refused: a newer owner holds the run");
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
    if (j->started_ms)
        sbx_hist_observe(&w->stats.build, (double)(sbx_now_ms() - j->started_ms) / 1000.0);
    jlog(SBX_LOG_INFO, j, "%s exit=%d attempt=%d in %" PRIu64 " ms", j->status,
             j->res ? j->res->exit_code : -1, j->attempt, sbx_now_ms() - j->started_ms);
    release(j, AR_DONE);
}

/* FINISHING: writes the outcome, unless the lease can no longer be trusted
 * (then nothing is written and the next owner redoes the job). */
static void write_terminal(job *j)
{
    if (j->lost || sbx_now_ms() >= j->lease_until_ms) {
        lose_lease(j, "lease ran out before the result was written");
        release(j, AR_WAIT);
        return;
    }
    write_fenced(j, j->status, j->res->error[0] ? j->res->error : NULL, j->res, LATE_TERMINAL);
}

/* The dead letter of a job whose retries ran out is recorded and published:
 * now the run ends dead_lettered (its offset after that, as for any job). */
static void on_dead_lettered(void *arg, int ok)
{
    job *j = arg;
    op_done(j);
    if (j->st != J_STARTING && j->st != J_RUNNING)
        return;
    if (!ok || j->lost) {
        release(j, j->w->stopping ? AR_HANDBACK : AR_WAIT);
        return;
    }
    j->status = "dead_lettered";
    if (transition(j, J_FINISHING))
        write_terminal(j);
}

/* The provider failed on every attempt: the original message goes to the
 * dead-letter topic and sbx.dead_letters with the last error, and the run
 * ends dead_lettered once it is there (on_dead_lettered). Returns 0 when
 * that is under way; else (out of memory) the run ends without it. */
static int retries_exhausted(job *j, const char *error)
{
    sbx_kafka_msg m;
    char detail[320];
    message_of(j, &j->refs[0], &m);
    snprintf(detail, sizeof(detail), "provider failed %d times; last: %s", j->attempt, error);
    if (sbx__dead_letter_job(j->w, &m, "retries_exhausted", detail, j->attempt, on_dead_lettered,
                             j) != 0)
        return -ENOMEM;
    j->ops++;
    return 0;
}

static void on_claim_handed_back(void *arg, PGresult *res, const char *err)
{
    job *j = arg;
    (void)res;
    op_done(j);
    if (err)
        jlog(SBX_LOG_WARN, j, "hand-back: %s", err);
    if (j->st == J_UNCLAIMING)
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
    if (!transition(j, J_UNCLAIMING))
        return;
    j->status = NULL;
    if (!SBX_ASSERT(j->have_lease)) {
        end_safely(j);
        return;
    }
    if (sbx_db_query(w->db, sql, 4, p, on_claim_handed_back, j) == 0)
        j->ops++;
    else
        release(j, w->stopping ? AR_HANDBACK : AR_WAIT);
}

/* The provider would not take the slot: undo the claim (the attempt is not
 * counted), give the lease back and wait for capacity. */
static void unclaim(job *j, const char *why)
{
    jlog(SBX_LOG_INFO, j, "slot %s not free on the provider's side (%s); waiting", j->slot,
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

/* The "running" history row's detail: the instance, and for a session's
 * run whether its sandbox was new (the first job, or the old one died),
 * reused or resumed (and how long resuming took). */
static const char *running_detail(const job *j, const sbx_result *res, char *buf, size_t len)
{
    static const char *const use[] = {
        [SBX_SANDBOX_NEW] = "new sandbox",
        [SBX_SANDBOX_REUSED] = "sandbox reused",
        [SBX_SANDBOX_RESUMED] = "sandbox resumed",
        [SBX_SANDBOX_WARM] = "warm sandbox",
    };
    const char *inst = res && res->instance[0] ? res->instance : NULL;
    if (!res || res->sandbox == SBX_SANDBOX_ONE_OFF)
        return inst;
    if (!j->session[0]) {
        snprintf(buf, len, "%s%s%s", inst ? inst : "", inst ? "; " : "", use[res->sandbox]);
        return buf;
    }
    if (res->sandbox == SBX_SANDBOX_RESUMED)
        snprintf(buf, len, "%s%ssession %s: %s in %d ms", inst ? inst : "", inst ? "; " : "",
                 j->spec->session_id, use[res->sandbox], res->resume_ms);
    else
        snprintf(buf, len, "%s%ssession %s: %s", inst ? inst : "", inst ? "; " : "",
                 j->spec->session_id, use[res->sandbox]);
    return buf;
}

static void on_provider(void *arg, sbx_run_event ev, const sbx_result *res)
{
    job *j = arg;
    sbx_worker *w = j->w;
    char detail[SBX_ID_MAX + 256];

    if (ev == SBX_RUN_STARTED) {
        if (j->st != J_STARTING)
            return;
        if (!transition(j, J_RUNNING))
            return;
        observe_since_enqueue(j, &w->stats.to_running, SEEN_RUNNING);
        if (!j->lost)
            write_fenced(j, "running", running_detail(j, res, detail, sizeof(detail)), res,
                         LATE_RUNNING);
        return;
    }
    /* The output is all in (provider.h): its last chunks are queued before
     * any write below, so they are durable before the run's outcome. */
    sbx__runlog_end(j->log);
    j->log = NULL;
    j->run = NULL;
    op_done(j);
    if (over(j))
        return; /* ended safely while it ran */
    if (!j->lost && sbx_now_ms() >= j->lease_until_ms)
        lose_lease(j, "the trust window ended while the build ran"); /* we were frozen */
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
    case SBX_OUTCOME_JOB_ERROR:
        /* Every attempt would meet the same content: end it now, with why. */
        jlog(SBX_LOG_INFO, j, "cannot run as given (attempt %d): %s", j->attempt, res->error);
        if (!j->res->error[0])
            snprintf(j->res->error, sizeof(j->res->error), "the provider refused the job");
        j->status = "failed";
        break;
    case SBX_OUTCOME_ERROR:
        if (j->attempt < w->cfg.max_attempts) {
            jlog(SBX_LOG_WARN, j, "provider error on attempt %d/%d: %s", j->attempt,
                     w->cfg.max_attempts, res->error);
            requeue(j, res->error);
            return;
        }
        if (retries_exhausted(j, res->error) == 0)
            return;
        j->status = "dead_lettered";
        break;
    }
    if (transition(j, J_FINISHING))
        write_terminal(j);
}

/* ---- the driver ---- */

static void step(job *j)
{
    switch (j->st) {
    case J_RECORDING: record(j); break;
    case J_ENDING: send_end(j); break;
    case J_LEASING:
        /* A wake-up (a release, the oldest waiter's turn) can find the job
         * with its acquire in flight: a second one's answer would land in
         * another state and be dropped, an OK too, leaving a lease nobody
         * knows of held until its ttl (every job of the project waits). */
        if (!j->acquiring)
            acquire(j);
        break;
    case J_WAITING:
        if (transition(j, J_LEASING))
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

/* Delivers, from the loop, the failures of requests that were never sent. */
static void on_late(sbx_timer *t)
{
    job *j = t->data;
    unsigned late = j->late;
    sbx_lease_reply rep;

    j->late = 0;
    if (late & LATE_START) {
        sbx_result r;
        memset(&r, 0, sizeof(r));
        r.outcome = j->late_outcome;
        r.exit_code = -1;
        snprintf(r.error, sizeof(r.error), "%s", j->late_error);
        on_provider(j, SBX_RUN_FINISHED, &r);
    }
    if (late & LATE_RUNNING)
        on_running_written(j, NULL, "database queue full");
    if (late & LATE_TERMINAL)
        on_terminal_written(j, NULL, "database queue full");
    if (late & LATE_RELEASE) {
        memset(&rep, 0, sizeof(rep));
        rep.status = SBX_LEASE_ERROR;
        rep.error = "redis unavailable";
        on_released(j, &rep);
    }
}

/* ---- intake ---- */

/* Whether m is j's message again: the same bytes, or the same redacted text
 * (what record_run compares: two that differ only in env values are one job).
 * Out of memory counts as the same: the message then joins j, as before
 * sbx compared them, rather than being refused for our lack of memory. */
static int same_job(job *j, const sbx_kafka_msg *m)
{
    char *a = NULL, *b = NULL, sha[65];
    int same;
    if (m->len == j->rawlen && memcmp(m->payload, j->raw, m->len) == 0)
        return 1;
    if (sbx__job_fingerprint(j->raw, j->rawlen, &a, sha) != 0 ||
        sbx__redact_job(m->payload, m->len, &b) != 0) {
        free(a);
        return 1;
    }
    if (!j->sha[0])
        memcpy(j->sha, sha, sizeof(sha));
    same = strcmp(a, b) == 0;
    free(a);
    free(b);
    return same;
}

static void on_run_dead_lettered(void *arg, PGresult *res, const char *err)
{
    (void)arg;
    (void)res;
    if (err)
        sbx_warn("job", "ending a run dead_lettered: %s", err);
}

/* A job for a provider this worker does not run: dead-lettered whole (the
 * operator replays it to a group that runs it) and its run, which its
 * producer may have recorded, ends dead_lettered with the reason. */
static void dead_letter_elsewhere(sbx_worker *w, const sbx_kafka_msg *m, const sbx_job *spec)
{
    char detail[512], *raw = strndup(m->payload, m->len);
    const char *p[5] = {spec->job_id, spec->project_id, raw, w->cfg.worker_id, detail};

    snprintf(detail, sizeof(detail), "provider %s is not run by worker %s (SBX_PROVIDER=%s): "
             "replay it to a consumer group whose workers run it", spec->provider,
             w->cfg.worker_id, w->cfg.provider);
    sbx__dead_letter(w, m, "provider_unavailable", detail, 0, 1);
    if (raw)
        sbx_db_query(w->db, "SELECT sbx.dead_letter_run($1, $2, $3::jsonb, $4, $5)", 5, p,
                     on_run_dead_lettered, NULL);
    free(raw);
}

void sbx__job_intake(sbx_worker *w, const sbx_kafka_msg *m)
{
    sbx_job *spec = NULL;
    sbx_reject why = SBX_REJECT_NONE;
    sbx_provider *named;
    char err[256];
    job *j;

    w->stats.received++;
    switch (sbx_job_parse(m->payload, m->len, &spec, &why, err, sizeof(err))) {
    case SBX_OK:
        break;
    case SBX_EINVAL:
        sbx__dead_letter(w, m, sbx_reject_name(why), err, 0, 1);
        return;
    default:
        /* Out of memory is ours, not the message's: leave the offset
         * unfinished so it is redelivered, rather than dead-letter it. */
        sbx_error("job", "p%d@%" PRId64 " not parsed: %s; left unfinished", (int)m->partition,
                  m->offset, err);
        return;
    }
    named = spec->provider[0] ? sbx__provider_named(w, spec->provider) : NULL;
    if (spec->provider[0] && !named) {
        /* Valid, but not for this group (its workers run the same list). */
        dead_letter_elsewhere(w, m, spec);
        sbx_job_free(spec);
        return;
    }
    j = sbx__jobtab_find(&w->jobs, spec->job_id);
    if (j && !same_job(j, m)) {
        /* The first payload is this worker's job: its state here stands for
         * the run's status, which may be behind it. */
        char sha[65] = "", first[SBX_ID_MAX + 32];
        sbx__job_fingerprint(m->payload, m->len, NULL, sha);
        sbx_job_free(spec);
        snprintf(first, sizeof(first), "%s on worker %s", state_names[j->st], w->cfg.worker_id);
        dead_letter_reused(w, m, j->id, first, j->sha, sha);
        return;
    }
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
        jlog(SBX_LOG_INFO, j, "delivered again (p%d@%" PRId64 "); joined the running one",
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
    j->pools = named ? named->ops->pool(named) : w->pools;
    snprintf(j->id, sizeof(j->id), "%s", spec->job_id);
    memcpy(j->raw, m->payload, m->len);
    j->raw[m->len] = '\0';
    j->rawlen = m->len;
    j->enqueued_ms = m->timestamp_ms;
    j->caprefs = 2;
    j->refs[j->nrefs++] = m->ref;
    j->te.id = j->id;
    j->te.job = j;
    sbx_timer_init(&j->timer, on_timer, j);
    sbx_timer_init(&j->renew, on_renew_timer, j);
    sbx_timer_init(&j->late_t, on_late, j);
    sbx__waiter_init(&j->wt, w->loop, j->spec->project_id, &j->timer);
    j->st = J_RECORDING;
    if (sbx__jobtab_add(&w->jobs, &j->te) != 0) {
        sbx_error("job", "out of memory; p%d@%" PRId64 " left unfinished", (int)m->partition,
                  m->offset);
        job_free(j);
        return;
    }
    jlog(SBX_LOG_DEBUG, j, "received p%d@%" PRId64, (int)m->partition, m->offset);
    step(j);
}

void sbx__jobs_cancel(sbx_worker *w, const char *job_id)
{
    job *j = sbx__jobtab_find(&w->jobs, job_id);
    if (!j)
        return;
    jlog(SBX_LOG_INFO, j, "cancel requested (state %s)", state_names[j->st]);
    j->cancel = 1;
    switch (j->st) {
    case J_STARTING:
    case J_RUNNING:
        if (j->run && !j->lost)
            j->prov->ops->cancel(j->prov, j->run);
        break;
    case J_WAITING:
        cancel_unclaimed(j);
        break;
    default:
        /* In flight: claim_run sees the flag and ends the run canceled. */
        break;
    }
}

static void shut_down(job *j, void *arg)
{
    int hard = *(int *)arg;
    if (j->st == J_WAITING) {
        hand_back(j);
    } else if (hard && (j->st == J_STARTING || j->st == J_RUNNING) && !j->handback) {
        j->handback = 1;
        if (j->run)
            j->prov->ops->cancel(j->prov, j->run);
    }
}

void sbx__jobs_shutdown(sbx_worker *w, int hard)
{
    sbx__jobtab_each(&w->jobs, shut_down, &hard);
}

static void abandon(job *j, void *arg)
{
    sbx_worker *w = arg;
    j->dnext = w->dead;
    w->dead = j;
}

void sbx__jobs_abandon(sbx_worker *w)
{
    /* Builds die with us (the provider was destroyed: no callback follows);
     * their leases expire and the next owner of the partition reruns them
     * with a newer token. Nothing is written. */
    sbx__jobtab_each(&w->jobs, abandon, w);
    sbx__jobtab_clear(&w->jobs);
    for (job *j = w->dead; j; j = j->dnext)
        j->ops = 0;
    sbx__jobs_reap(w);
    sbx__waitq_free(&w->waits);
}
