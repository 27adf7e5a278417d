/* worker.h — the process: one loop, its connections, and the jobs it owns.
 * Internal to sbx-worker (sbx__ names): main.c wires it, job.c runs the jobs
 * (their table is jobtable.c, their wait queues waitq.c, the dead-letter
 * envelope dlq.c), admin.c reports on it. */
#ifndef SBX_WORKER_H
#define SBX_WORKER_H

#include <stdint.h>

#include "config.h"
#include "db.h"
#include "deps.h"
#include "dlq.h"
#include "hist.h"
#include "jobtable.h"
#include "kafka.h"
#include "lease.h"
#include "loop.h"
#include "provider.h"
#include "prune.h"
#include "session.h"
#include "redis.h"
#include "waitq.h"

typedef struct sbx_worker sbx_worker;

/* Counters the cron logs and tests read from the log; histograms /metrics
 * shows (job.c observes each once per job and worker). */
typedef struct sbx_stats {
    uint64_t received, duplicates, dead_lettered, succeeded, failed, timed_out, canceled;
    uint64_t lease_waits, fenced_out, retries;
    sbx_hist queue_wait;        /* enqueued (Kafka timestamp) -> claimed */
    sbx_hist to_running;        /* enqueued -> the provider said STARTED */
    sbx_hist build;             /* build started -> its outcome written */
    uint64_t id_reused;           /* messages refused: their job id holds another payload */
} sbx_stats;

struct sbx_worker {
    sbx_config cfg;
    sbx_loop *loop;
    sbx_kafka *kafka;
    sbx_db *db;
    sbx_redis *redis;
    sbx_leases *leases;
    /* SBX_PROVIDER's providers, in its (spill-over) order; pools: their
     * pools comma-separated in that order, what a job of provider "any"
     * asks acquire.lua for. */
    sbx_provider *provs[SBX_PROVIDERS_MAX];
    int nprov;
    char pools[SBX_PROVIDERS_MAX * (SBX_LEASE_SLOT_MAX + 1)];
    sbx_prune *prune;             /* NULL: SBX_RETENTION=0 */
    sbx_prune *prune_dlq;         /* sbx.dead_letters; NULL: SBX_DLQ_RETENTION=0 */
    sbx_deps *deps;               /* group membership by dependency state; NULL in unit tests */
    /* the idle-session sweepers (session.c), one per provider that keeps
     * sessions; none in unit tests */
    struct sbx_sessions *sessions[SBX_PROVIDERS_MAX];
    sbx_jobtab jobs;              /* every job not yet finished, by id */
    sbx_waitq waits;              /* those waiting for capacity */
    uint64_t releases;            /* leases released by this worker so far */
    int64_t tokens_seen;          /* newest fencing token this worker knows: every
                                     acquire's floor, so it notices Redis lost data */
    job *dead;                    /* finished jobs, freed before the loop sleeps */
    struct sbx_runlog *runlogs;   /* live logs not yet answered (runlog.c); freed at exit */
    sbx__dl *dls;                 /* dead letters being recorded or published (dlq.c) */
    sbx_stats stats;
    int stopping;                 /* 1: draining; 2: grace over, handing back */
    uint64_t stop_deadline_ms;
};

void sbx__job_intake(sbx_worker *w, const sbx_kafka_msg *m);
/* Frees finished jobs (a safe point: no callback of theirs is on the stack). */
void sbx__jobs_reap(sbx_worker *w);
/* Shutdown, soft: jobs not yet running are handed back (offsets stay
 * unfinished). Hard (grace over): running builds are stopped, requeued and
 * their leases released, then handed back. */
void sbx__jobs_shutdown(sbx_worker *w, int hard);
/* Exit: frees every job left, writing nothing (leases expire). */
void sbx__jobs_abandon(sbx_worker *w);
/* `sbx cancel` (NOTIFY sbx_cancel): stops the job if this worker holds it. */
void sbx__jobs_cancel(sbx_worker *w, const char *job_id);
size_t sbx__jobs_count(const sbx_worker *w);
/* Slots this worker's jobs hold leases on from prov (NULL: any provider);
 * pointers into the jobs, valid until the loop runs again; at most max. */
size_t sbx__jobs_leased_slots(const sbx_worker *w, const sbx_provider *prov, const char **out,
                              size_t max);
/* The session sweepers' counters, summed (admin.c). */
void sbx__sessions_stats(const sbx_worker *w, sbx_sessions_stats *out);

/* The job state machine seen from tests (job.c): its states are numbered
 * 0 .. sbx__job_nstates()-1 and named by sbx__job_state_name(). */
int sbx__job_nstates(void);
const char *sbx__job_state_name(int state);
/* Whether transition() allows from -> to (the table of legal moves). */
int sbx__job_move_legal(int from, int to);
/* Moves taken since the process started, [from * nstates + to]. */
const unsigned long *sbx__job_moves(void);
/* The state of the job with this id, or -1 when this worker holds none. */
int sbx__job_state(const sbx_worker *w, const char *job_id);

/* --check-config's connection checks (checks.c): Redis, PostgreSQL and its
 * schema, Kafka and both topics; one line each on out. Returns the number
 * of problems. */
int sbx__check_services(const sbx_config *cfg, FILE *out);

/* Builds w->provs and w->pools from w->cfg (providers.c). */
int sbx__provider_new(sbx_worker *w, char *err, size_t errlen);
/* The provider of this name, or of this pool; NULL when this worker runs
 * none such. */
sbx_provider *sbx__provider_named(const sbx_worker *w, const char *name);
sbx_provider *sbx__provider_of_pool(const sbx_worker *w, const char *pool);
/* Removes sandboxes orphaned by a crashed predecessor (docker, fly). */
void sbx__provider_sweep(sbx_worker *w);

#endif
