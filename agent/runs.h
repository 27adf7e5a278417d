/* runs.h — the builds of one agent: its slots, their runs, fencing tokens,
 * build logs and previews.
 *
 * A slot runs one build at a time in a bubblewrap sandbox (common/sandbox.h,
 * the same one the local provider uses). A run is found by its id, which is
 * unique across restarts of the agent (a random boot prefix), so a worker
 * following a run on a restarted agent gets "unknown run", never another
 * run's state.
 *
 * What is kept, and for how long (every bound is a number in runs.c):
 *  - finished runs: the last SBX_RUNS_HISTORY, with their log tail;
 *  - a run's whole log: while it runs and, per slot, for the last finished
 *    run, until the slot's next run starts (readers that opened it keep
 *    their own descriptor until they are done);
 *  - a preview (the run's public/ or dist/ directory, regular files and
 *    directories only, within the copy caps of runs.c): per slot, the last
 *    run that produced one.
 *
 * Sessions (issue 13; worker/provider.h "Sessions"). A wake may name a
 * session (a sandbox name). Its sandbox then outlives the run: the slot
 * keeps it, with its workspace and whatever the runs left running, and the
 * session's next run on the slot goes into it (REUSED, or RESUMED when it
 * was paused). One sandbox per slot: a run naming another session, or
 * none, destroys the slot's session sandbox first (the lease layer never
 * does that; when it happens anyway, the newest lease owns the slot, as
 * fencing says). A session's sandbox ends by DESTROY, the agent's exit, or
 * a cancel/timeout of one of its runs (the run's processes are killed with
 * the sandbox; the next run says NEW). Pause and destroy are fenced like
 * wake and cancel.
 *
 * Events (log grew, run ended) go to one callback, always from the loop and
 * never from inside a call into this module; they carry the run id, not a
 * pointer, because a run may be gone by the time a listener looks.
 */
#ifndef SBX_AGENT_RUNS_H
#define SBX_AGENT_RUNS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "loop.h"
#include "sbx.h"

/* Finished runs answered by GET /runs/{id}. */
#define SBX_RUNS_HISTORY 256
/* A run id: "r" + 8 hex digits of boot nonce + "-" + a counter. */
#define SBX_RUN_ID_MAX 40
/* Bytes of log a run keeps as its tail: what the runs table stores. */
#define SBX_RUNS_TAIL_MAX SBX_LOG_TAIL_MAX
/* A session's sandbox name: worker/provider.h's SBX_SESSION_NAME_MAX
 * ("s-" + 32 hex), [a-z0-9-]. */
#define SBX_RUNS_SESSION_MAX 34

typedef struct sbx_runs sbx_runs;

typedef enum sbx_run_state {
    SBX_RS_RUNNING,
    SBX_RS_SUCCEEDED,
    SBX_RS_FAILED,      /* exit code != 0, or killed by a limit */
    SBX_RS_TIMED_OUT,
    SBX_RS_CANCELED,
    SBX_RS_ERROR,       /* the sandbox never reached the command (host problem) */
} sbx_run_state;

const char *sbx_run_state_name(sbx_run_state s);

/* Which sandbox a run got (worker/provider.h's sbx_sandbox_use). */
typedef enum sbx_runs_sandbox {
    SBX_RUNS_ONE_OFF,      /* no session */
    SBX_RUNS_NEW,          /* the session had no sandbox on the slot */
    SBX_RUNS_REUSED,
    SBX_RUNS_RESUMED,      /* it was paused; thawed for this run */
} sbx_runs_sandbox;

const char *sbx_runs_sandbox_name(sbx_runs_sandbox s);
/* Whether s is a session name this agent accepts. */
int sbx_runs_session_ok(const char *s, size_t len);

typedef struct sbx_runs_config {
    const char *agent_id;
    const char *work_dir;      /* absolute; created if missing */
    const char *bwrap;         /* name or path */
    int capacity;
    int uid_base;              /* slot i builds as uid_base + i when root */
    int allow_network;
    const char *egress_allow;  /* SBX_EGRESS_ALLOW / _DENY (common/egress.h) */
    const char *egress_deny;
    int kill_grace_ms;
} sbx_runs_config;

typedef enum sbx_runs_event {
    SBX_RUNS_LOG,              /* the run's log grew */
    SBX_RUNS_END,              /* the run reached a terminal state */
    SBX_RUNS_SESSION_END,      /* a slot's session sandbox is gone; the id is the slot's */
} sbx_runs_event;

typedef void (*sbx_runs_event_cb)(void *arg, const char *run_id, sbx_runs_event ev);

/* Prepares work_dir (workspaces, previews, the token file), kills leftovers
 * of a previous agent (the slot uids, old workspaces and previews) and loads
 * the tokens. Returns 0, or a negative errno and one line in err. */
int sbx_runs_new(sbx_loop *loop, const sbx_runs_config *cfg, sbx_runs_event_cb cb, void *arg,
                 sbx_runs **out, char *err, size_t errlen);
/* Kills every running build (synchronously, without events) and frees. */
void sbx_runs_free(sbx_runs *r);

size_t sbx_runs_capacity(const sbx_runs *r);
const char *sbx_runs_slot_id(const sbx_runs *r, size_t i);
int sbx_runs_slot_busy(const sbx_runs *r, size_t i);
/* Slot i's session sandbox: 1 and its name and state ("idle", "running",
 * "paused", "dying"), or 0 when it has none. */
int sbx_runs_slot_session(const sbx_runs *r, size_t i, const char **name, const char **state);
size_t sbx_runs_active(const sbx_runs *r);
/* Ids of the running builds into ids (at most max), returns the count. */
size_t sbx_runs_running_ids(const sbx_runs *r, const char **ids, size_t max);
/* From now on /wake is refused (shutdown). */
void sbx_runs_drain(sbx_runs *r);
int sbx_runs_draining(const sbx_runs *r);

typedef enum sbx_wake_status {
    SBX_WAKE_STARTED,      /* a new run */
    SBX_WAKE_EXISTING,     /* this slot already ran or runs this token: that run */
    SBX_WAKE_STALE,        /* a newer token was seen for the slot */
    SBX_WAKE_BUSY,         /* the slot runs another token's build (now being canceled
                              if ours is newer: retry shortly) */
    SBX_WAKE_NO_SLOT,
    SBX_WAKE_INVALID,      /* the job or the request is not acceptable */
    SBX_WAKE_DRAINING,
    SBX_WAKE_FAILED,       /* could not persist the token or start the sandbox */
} sbx_wake_status;

typedef struct sbx_wake_req {
    const char *slot;
    int64_t token;
    int attempt;
    const char *job;       /* the job message JSON, validated here */
    size_t job_len;
    const char *session;   /* NULL, or the session's sandbox name (sbx_runs_session_ok) */
} sbx_wake_req;

/* run_id receives the run (STARTED, EXISTING, BUSY); for STALE, *newest
 * receives the newest token. err gets one line for refusals. */
sbx_wake_status sbx_runs_wake(sbx_runs *r, const sbx_wake_req *w, char run_id[SBX_RUN_ID_MAX],
                              int64_t *newest, char *err, size_t errlen);

typedef enum sbx_cancel_status {
    SBX_CANCEL_OK,         /* stopping, or already over */
    SBX_CANCEL_STALE,
    SBX_CANCEL_UNKNOWN,
} sbx_cancel_status;

sbx_cancel_status sbx_runs_cancel(sbx_runs *r, const char *run_id, int64_t token,
                                  int64_t *newest);

/* The run may go on until until_ms (sbx_now_ms() clock), and no longer,
 * even if the agent is frozen meanwhile (sbx_sandbox_trust: a supervisor
 * process kills the sandbox); called again to move it. 0, -ENOENT when the
 * run is not running, or another negative errno. */
int sbx_runs_trust(sbx_runs *r, const char *run_id, uint64_t until_ms);

typedef enum sbx_sop { SBX_SOP_PAUSE, SBX_SOP_DESTROY } sbx_sop;

typedef enum sbx_sop_status {
    SBX_SOP_DONE,          /* paused (or already), destroyed */
    SBX_SOP_ABSENT,        /* the slot holds no sandbox of this session: for
                              DESTROY that is done too; PAUSE has nothing to do */
    SBX_SOP_STALE,         /* a newer token was seen for the slot */
    SBX_SOP_BUSY,          /* a run is on the slot (an older lease's is being
                              canceled): retry shortly */
    SBX_SOP_REMOVING,      /* the sandbox is being removed (DESTROY, now or
                              before): SBX_RUNS_SESSION_END follows, then it is
                              absent */
    SBX_SOP_NO_SLOT,
    SBX_SOP_UNSUPPORTED,   /* PAUSE: no freezer here (not root, no cgroup) */
    SBX_SOP_FAILED,        /* could not persist the token, or the sandbox said no */
} sbx_sop_status;

/* Pauses or destroys the sandbox of session on slot, fenced by token like
 * a wake. For STALE, *newest receives the newest token; err gets one line
 * for anything but DONE. */
sbx_sop_status sbx_runs_session_op(sbx_runs *r, sbx_sop op, const char *slot, const char *session,
                                   int64_t token, int64_t *newest, char *err, size_t errlen);
/* A snapshot of a run; strings stay valid until the loop turns. */
typedef struct sbx_run_view {
    const char *id, *slot, *job_id;
    int64_t token;
    int attempt;
    sbx_run_state state;
    int exit_code;               /* -1 while running or when there is none */
    uint64_t started_ms, finished_ms;   /* wall clock; finished 0 while running */
    const char *error;           /* "" or why */
    int has_preview;
    uint64_t log_bytes;          /* output so far */
    const char *session;         /* "" for a run without one */
    sbx_runs_sandbox sandbox;
    int resume_ms;               /* RESUMED: how long thawing took */
} sbx_run_view;

int sbx_runs_view(sbx_runs *r, const char *run_id, sbx_run_view *v);
/* The last bytes of the run's output (at most cap - 1), NUL-terminated;
 * raw bytes, the caller makes them valid text. Returns the length, or -1
 * for an unknown run. */
long sbx_runs_tail(sbx_runs *r, const char *run_id, char *buf, size_t cap);
/* A descriptor of the run's whole log for the caller to read and close
 * (pread from 0). -ENOENT: unknown run; -ENODATA: only the tail is kept. */
int sbx_runs_log_open(sbx_runs *r, const char *run_id);
/* Opens the preview root of run_id (O_PATH directory) for the caller to
 * close; -ENOENT when the run has no preview (any more). */
int sbx_runs_preview_open(sbx_runs *r, const char *run_id);

#endif
