/* provider.h — the one interface every build backend implements.
 *
 * A provider turns a leased slot plus a job into a build and reports its end.
 * The job state machine (job.c) never knows which backend it talks to.
 *
 * Life of a run:
 *   ops->start()  ->  cb(SBX_RUN_STARTED)  ->  cb(SBX_RUN_FINISHED)
 * cb(SBX_RUN_FINISHED) is called exactly once per successful start(), always
 * from the event loop, never from inside start() or cancel(). After it the
 * provider has forgotten the run; the sbx_run pointer is dangling.
 * When start() returns an error, cb is never called.
 *
 * Whose fault. A provider error (SBX_OUTCOME_ERROR, or start() failing with
 * any code but those below) is the provider's or the host's: the job is
 * retried, then dead-lettered. What the job's own content causes (a file
 * name too long for the filesystem, `files` entries that clash, an image
 * that does not exist, a configuration the backend refuses as invalid) would
 * fail the same way on every attempt, so the provider says so: start()
 * returns -EINVAL, or the run ends SBX_OUTCOME_JOB_ERROR, with the reason in
 * err / res->error; the run then ends `failed` at once, with that reason.
 *
 * Every call carries the lease's fencing token (req->token): a provider that
 * talks to a remote agent sends it along so the remote side can refuse a
 * stale owner.
 *
 * Sessions (issue 13). A job may name a session (req->session, a name-safe
 * key the caller derives from project and session id: [a-z0-9-], at most
 * SBX_SESSION_NAME_MAX characters). Its sandbox lives on one slot, held by
 * the session between its jobs (the lease layer never gives that slot to
 * anyone else meanwhile), and the provider:
 *  - on start(): runs the job in the session's sandbox on req->slot when
 *    there is one (resuming it first if paused), else creates it; the
 *    result's `sandbox` says which (NEW, REUSED, RESUMED), so the run can say
 *    its session lost its sandbox. The workspace (/workspace) is the
 *    session's: what earlier jobs wrote is there; job->files are written
 *    over it. Limits, image and network come from the job that created the
 *    sandbox.
 *  - after FINISHED: keeps the sandbox. On cancel or timeout it kills the
 *    job's processes; it may destroy the sandbox to do so (the next job then
 *    reports NEW).
 *  - session_op(PAUSE | DESTROY): called by the worker's session sweeper,
 *    under a lease of the session's slot with its own newer token.
 *  - sweep(): never removes a session's sandbox (sessions end by DESTROY).
 *  - previews: when the job names session.preview_port and the worker serves
 *    previews (p->previews, common/preview.h; NULL: SBX_PREVIEW_LISTEN is
 *    unset), start() opens the session's preview under its session name with
 *    a dial() that connects to that port inside the sandbox (a provider whose
 *    remote side serves previews itself, vmpool's agent, returns the agent's
 *    URL instead), and puts the URL in the result's preview_url at STARTED
 *    and FINISHED; DESTROY closes it. The URL is the session's for its life.
 *  - destroy(): sandboxes that live in this process (local) die with it;
 *    remote ones (agent, engine, Fly) stay for the session's next owner.
 */
#ifndef SBX_PROVIDER_H
#define SBX_PROVIDER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "sbx.h"
#include "buf.h"
#include "loop.h"

typedef struct sbx_provider sbx_provider;
typedef struct sbx_run sbx_run;

typedef enum sbx_outcome {
    SBX_OUTCOME_SUCCEEDED,   /* exit code 0 */
    SBX_OUTCOME_FAILED,      /* exit code != 0, or killed by a limit (memory, pids) */
    SBX_OUTCOME_TIMED_OUT,   /* outlived job->timeout_s; all its processes are gone */
    SBX_OUTCOME_CANCELED,    /* cancel() was called */
    SBX_OUTCOME_ERROR,       /* the provider could not run it (transient: retry) */
    SBX_OUTCOME_BUSY,        /* the slot was not free on the provider's side (an older
                              * lease's build still there, or it knows a newer token):
                              * no build happened; wait for capacity, not an attempt */
    SBX_OUTCOME_JOB_ERROR,   /* the job's own content cannot run as given (see
                              * "Whose fault" above): final, never retried */
} sbx_outcome;

/* Session names (req->session) are at most this long: "s-" + 32 hex. */
#define SBX_SESSION_NAME_MAX 34

/* What the promise above says a session name is: 1..SBX_SESSION_NAME_MAX of
 * [a-z0-9-]; it goes into container and machine names, paths and URLs as
 * it is. */
static inline int sbx_session_name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    return n > 0 && n <= SBX_SESSION_NAME_MAX &&
           strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-") == n;
}

typedef enum sbx_sandbox_use {
    SBX_SANDBOX_ONE_OFF = 0, /* no session: a fresh sandbox, gone after the run */
    SBX_SANDBOX_NEW,         /* the session had no sandbox on the slot (first job, or it died) */
    SBX_SANDBOX_REUSED,      /* the session's sandbox, as the last job left it */
    SBX_SANDBOX_RESUMED,     /* the session's sandbox, paused until this run */
    SBX_SANDBOX_WARM,        /* none yet: one of the warm pool's (ops->warm) was taken */
} sbx_sandbox_use;

typedef struct sbx_result {
    sbx_outcome outcome;
    int exit_code;                 /* -1 when there is none */
    char error[256];               /* "" or why */
    char log_tail[SBX_LOG_TAIL_MAX + 1];
    size_t log_tail_len;           /* bytes in log_tail, which is NUL-terminated */
    char preview_url[256];         /* "" when the provider has none */
    char instance[128];            /* vm / machine / container id, "" if none */
    sbx_sandbox_use sandbox;       /* a session's run: was its sandbox new? */
    int resume_ms;                 /* SBX_SANDBOX_RESUMED: how long resuming took */
} sbx_result;

typedef enum sbx_run_event { SBX_RUN_STARTED, SBX_RUN_FINISHED } sbx_run_event;

/* res is valid only during the call. */
typedef void (*sbx_run_cb)(void *arg, sbx_run_event ev, const sbx_result *res);

/* Live output. A provider hands the build's output to the job as it
 * arrives, so readers see it while the build runs (the job batches it into
 * sbx.run_logs, worker/runlog.c). Rules every provider keeps:
 *  - called only from the event loop, after start() returned 0 and before
 *    the FINISHED callback (never after it; the output all comes first);
 *  - per stream, bytes in the order the build wrote them, none twice, none
 *    left out unless the provider itself could not read them (then it says
 *    so in the result's error);
 *  - data is raw: any split, any bytes (UTF-8 cut mid-character, control
 *    characters, NULs); cleaning is the sink's job, the same for everyone;
 *  - a provider that only learns the output at the end calls it then, in
 *    order, before FINISHED. */
typedef enum sbx_stream { SBX_STREAM_STDOUT = 1, SBX_STREAM_STDERR = 2 } sbx_stream;
typedef void (*sbx_output_fn)(void *arg, sbx_stream stream, const char *data, size_t len);

typedef struct sbx_run_req {
    const sbx_job *job;      /* valid until FINISHED */
    const char *slot;        /* the leased slot id */
    int64_t token;           /* fencing token of the lease */
    int attempt;             /* 1-based */
    sbx_output_fn output;    /* NULL: nobody reads the output live */
    void *output_arg;
    const char *session;     /* NULL, or the session's sandbox name (see "Sessions") */
} sbx_run_req;

typedef enum sbx_session_op { SBX_SESSION_PAUSE, SBX_SESSION_DESTROY } sbx_session_op;

/* rc: 0 done (DESTROY: nothing of the session is left on the slot, which
 * includes "there was nothing"); -ENOTSUP, PAUSE is not something this
 * provider can do (the session stays idle until it ends); anything else, it
 * failed (why says so): the sweeper tries again later. */
typedef void (*sbx_session_cb)(void *arg, int rc, const char *why);

/* Providers call this rather than the pointer (it may be NULL). */
static inline void sbx_run_output(sbx_output_fn fn, void *arg, sbx_stream stream,
                                  const char *data, size_t len)
{
    if (fn && len > 0)
        fn(arg, stream, data, len);
}

typedef struct sbx_provider_ops {
    const char *name;
    /* Starts a build. Returns 0 and sets *out, or an errno-style code and
     * writes a line into err: -EBUSY, the slot is still busy here (the caller
     * waits for capacity); -EINVAL, the job's own fault (the run ends failed
     * with err); -ENOENT, the slot is not one of this provider's (a lease
     * from another pool: a bug); anything else, a provider error. */
    int (*start)(sbx_provider *p, const sbx_run_req *req, sbx_run_cb cb, void *arg,
                 sbx_run **out, char *err, size_t errlen);
    /* Asks a run to stop; FINISHED with SBX_OUTCOME_CANCELED follows. */
    void (*cancel)(sbx_provider *p, sbx_run *r);
    /* The slot ids this provider offers on this host (for pool registration).
     * Returns the count; ids[i] point into provider memory. */
    size_t (*slots)(sbx_provider *p, const char ***ids);
    /* The pool name the slots belong to ("local/<node>"). */
    const char *(*pool)(sbx_provider *p);
    /* Optional (NULL: nothing to sweep). Removes, from the provider's own
     * side, sandboxes labelled with this worker's id that no run of ours
     * watches (a crashed predecessor). Runs in the background and logs what
     * it did; called at start-up and every minute. */
    void (*sweep)(sbx_provider *p);
    /* Optional (NULL: nothing outside this process enforces the lease).
     * The run's lease is trusted until until_ms (sbx_now_ms() clock): called
     * right after start() and after every renewal. The provider kills the
     * build by itself when that passes without a newer call, even while this
     * process is frozen; FINISHED then reports SBX_OUTCOME_ERROR ("killed by
     * its supervisor"). Cheap and non-blocking: no network call. */
    void (*trust)(sbx_provider *p, sbx_run *r, uint64_t until_ms);
    /* Optional (NULL: the provider has no sessions, and a job naming one
     * ends failed, the job's own error). Pauses or destroys the session's
     * sandbox on slot. Returns 0 and calls cb once, from the loop, never from
     * inside this call; or an errno-style code, and cb is never called. */
    int (*session_op)(sbx_provider *p, sbx_session_op op, const char *slot,
                      const char *session, int64_t token, sbx_session_cb cb, void *arg);
    /* Optional (NULL: no warm pool). SBX_WARM: keep n sandboxes made and
     * paused ahead, with the provider's defaults (limits, image, network
     * off), tied to no session; start() of a session with no sandbox yet, and
     * of a one-off job the defaults fit, takes one (result.sandbox WARM; the
     * session's own name and slot from then on) and a new one is made in the
     * background. Called once after _new; the pool is filled in the
     * background and its sandboxes are destroyed with the provider (they hold
     * nobody's work). */
    void (*warm)(sbx_provider *p, int n);
    /* Kills every run at once (worker exit); no callbacks follow. */
    void (*destroy)(sbx_provider *p);
} sbx_provider_ops;

struct sbx_previews;

struct sbx_provider {
    const sbx_provider_ops *ops;
    sbx_loop *loop;
    struct sbx_previews *previews; /* the worker's preview proxy, or NULL (set after _new) */
};

/* ---- the local provider (provider_local.c) ---- */
typedef struct sbx_local_config {
    const char *node;          /* host name for the pool, e.g. "box1" */
    int slots;                 /* concurrent builds on this host */
    const char *work_dir;      /* parent of per-run workspaces */
    int uid_base;              /* slot i runs as uid/gid uid_base+i when root */
    int allow_network;         /* jobs may ask for network */
    const char *egress_allow;  /* SBX_EGRESS_ALLOW / _DENY (common/egress.h) */
    const char *egress_deny;
    int default_memory_mb;
    int default_pids;
    double default_cpus;
    int kill_grace_ms;         /* SIGTERM -> SIGKILL */
    const char *bwrap;         /* path of bwrap */
} sbx_local_config;

int sbx_local_new(sbx_loop *loop, const sbx_local_config *cfg, sbx_provider **out,
                  char *err, size_t errlen);

#endif
