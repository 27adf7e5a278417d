/* fly_session.h — sessions on Fly Machines (provider.h, "Sessions"), for
 * provider_fly.c, on the worker's event loop.
 *
 * A session is one long-lived Machine, named after the session (Fly machine
 * names are unique in an app, so two workers racing to create it make one)
 * and found again by metadata sbx_session=<name> by whichever worker holds
 * the session next. It runs an idle init; each job runs inside it through
 * the exec endpoint. See fly_session.c for why exec is used the way it is.
 *
 * One sbx__fly_sessions per provider holds what the session runs and the
 * sweeper's PAUSE/DESTROY operations share, the list of operations in
 * flight (so closing the provider can drop them without callbacks), the
 * sessions' previews (the machine's 6PN address and the dev server's port,
 * what the worker's proxy dials) and the warm pool (fly_warm.h), if any.
 */
#ifndef SBX_FLY_SESSION_H
#define SBX_FLY_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "fly_api.h"
#include "provider.h"

typedef struct sbx__fly_srun sbx__fly_srun;
typedef struct sbx__fly_sop sbx__fly_sop;
typedef struct sbx__fly_pv sbx__fly_pv;
typedef struct sbx__fly_warm sbx__fly_warm;

/* A machine's private_ip: an IPv6 address in text. */
#define SBX_FLY_IP_MAX 45

typedef struct sbx__fly_sessions {
    sbx__fly_api *api;
    sbx_loop *loop;
    const char *app;              /* the provider's; outlives every session run */
    const char *cpu_kind;
    int poll_ms;                  /* exec polls of a running job */
    int stop_grace_s;             /* timeout/cancel: SIGTERM, SIGKILL after this */
    int boot_timeout_s;           /* starting or resuming longer than this is wedged */
    int settle_ms;                /* the list is eventually consistent: look again after */
    sbx__fly_sop *ops;            /* PAUSE/DESTROY in flight */
    sbx_provider *prov;           /* its previews (set after _new; NULL: off) */
    sbx__fly_pv *pvs;             /* the sessions' open previews */
    sbx__fly_warm *warm;          /* the warm pool, or NULL */
} sbx__fly_sessions;

/* The body of a create for an idle machine (a session's, or a warm one):
 * name, image, size and metadata (key, value pairs, nmeta of them). */
json_object *sbx__fly_idle_machine(const sbx__fly_sessions *S, const char *name, const char *image,
                                   int cpus, int mem_mb, const char *const *meta, size_t nmeta);

/* What a session run tells its owner; res is valid only during the call.
 * FINISHED comes exactly once, from the loop; after it the run is freed. */
typedef void (*sbx__fly_srun_cb)(void *owner, sbx_run_event ev, sbx_result *res);

/* Starts a job in session req->session (name-safe: [a-z0-9-], at most
 * SBX_SESSION_NAME_MAX). image, cpus and mem_mb size the machine when the
 * session has none yet. Returns 0 and sets *out, or -EINVAL (the job's
 * fault: err says why) or -ENOMEM; then cb never runs. */
int sbx__fly_srun_start(sbx__fly_sessions *S, const sbx_run_req *req, const char *image,
                        int cpus, int mem_mb, sbx__fly_srun_cb cb, void *owner,
                        sbx__fly_srun **out, char *err, size_t errlen);
/* Cancel or timeout (outcome CANCELED or TIMED_OUT): the job's processes are
 * killed, the machine stays; FINISHED follows from the loop. */
void sbx__fly_srun_abort(sbx__fly_srun *s, sbx_outcome why);
/* Drops a run without callbacks (worker exit); its machine stays for the
 * session's next owner. */
void sbx__fly_srun_free(sbx__fly_srun *s);

/* PAUSE (suspend) or DESTROY (DELETE ?force=true) the session's machine.
 * cb runs once from the loop: 0 done (DESTROY with no machine included),
 * -ENOTSUP PAUSE cannot be done for this machine (see fly_session.c), other
 * codes failed. Returns 0, or -ENOMEM and cb never runs. */
int sbx__fly_sop_start(sbx__fly_sessions *S, sbx_session_op op, const char *session,
                       sbx_session_cb cb, void *arg);

/* Drops every operation in flight without callbacks. */
void sbx__fly_sessions_close(sbx__fly_sessions *S);

#endif
