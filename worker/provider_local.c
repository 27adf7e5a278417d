/* provider_local.c — the `local` provider: builds in bubblewrap sandboxes on
 * the worker's own host.
 *
 * This file is the thin part: it maps slots to sandboxes and jobs to sandbox
 * specs, and sandbox endings to outcomes. sandbox.c does the processes,
 * limits, output and cleanup, and its design comment says how each is
 * bounded (a cgroup per sandbox, v2 or v1, when root; rlimits always).
 *
 * Slots. The host offers cfg->slots slots, "local/<node>/<i>", in the pool
 * "local/<node>". start() refuses an id not in that list (-ENOENT) and a slot
 * that already runs something (-EBUSY): the lease in Redis should make that
 * impossible, so it means a bug or a stale lease, and running two builds in
 * one slot would share a uid and its limits.
 *
 * One uid per slot. When the worker runs as root, slot i's builds run as
 * uid/gid cfg->uid_base + i, so RLIMIT_NPROC counts one sandbox, and
 * "kill every process of uid X" is a complete way to end one. Those uids must
 * be reserved for sandboxes on this host. At startup we sweep them and remove
 * workspaces a crashed predecessor left in work_dir: one provider per
 * (work_dir, uid range) on a host. As non-root (development), builds run as
 * the worker's uid: no sweeps, and RLIMIT_NPROC counts every process of it.
 *
 * Limits from the job, else the config (0 = none):
 *   memory_mb -> the sandbox's memory cgroup (all its processes and tmpfs
 *   pages) and RLIMIT_AS per process; pids -> pids.max and RLIMIT_NPROC of
 *   the slot uid; cpus -> the cgroup's CPU quota (fractions too);
 *   disk_mb (default LOCAL_DEFAULT_DISK_MB) -> as root, one tmpfs of that
 *   size for the workspace and /tmp together (disk_total), RLIMIT_FSIZE per
 *   file, and the size of /dev/shm (at most memory_mb: it is RAM);
 *   timeout_s -> wall timer (TIMED_OUT);
 *   RLIMIT_CPU = timeout_s * max(cpus, 1): a single process may always use
 *   its whole wall time; a backstop behind the quota (and the only CPU
 *   bound without cgroups).
 *
 * Network: a job with "network": true on a host with allow_network gets a
 * network namespace of its own with a NAT and the egress filter (netns.c,
 * egress.c): the operator's SBX_EGRESS_ALLOW / SBX_EGRESS_DENY, resolved
 * here at start-up, narrowed by the job's "egress" list.
 *
 * Sessions (provider.h). A slot held by a session keeps its sandbox between
 * jobs: a session sandbox of sandbox.c (a holder process owning workspace
 * <work_dir>/<slot>-<session>, the slot's uid, cgroup and namespaces), in
 * which each job of the session runs; what a job leaves running stays.
 * Limits, network and disk come from the job that created it. PAUSE freezes
 * its cgroup; the next start() thaws it (RESUMED, resume_ms). DESTROY, or a
 * timeout or cancel of one of its jobs, kills it all (the next job: NEW).
 * A session of another name found on the slot is an ended one nobody
 * destroyed: it is killed first. Sessions live in this process: they die
 * with the worker (destroy()), and a restarted worker removes what is left
 * like any crashed predecessor's workspace. The token is not checked: there
 * is no remote side, and the lease gives the slot to one owner at a time.
 *
 * Previews. A session job naming session.preview_port opens the session's
 * preview (p->previews, common/preview.c) under its name; the proxy's dial
 * makes its socket inside the session's network namespace
 * (sbx_sandbox_session_dial), so the dev server needs no port of the host's
 * and another session's 127.0.0.1 is out of reach. The session's end closes
 * it; a new sandbox of the same session opens it again, on the same port
 * (the proxy's ports follow the name).
 *
 * Warm pool (ops->warm). Up to n session sandboxes are made ahead on free
 * slots with the provider's defaults (no network), each warmed by one `true`
 * run (the holder up, the run path in the page cache) and then frozen, tied
 * to no session. A session's first job whose limits are the defaults takes
 * one: thawed, renamed to the session (result WARM; its workspace directory
 * keeps its warm name). A warm sandbox belongs to a uid, not really to a
 * slot: slots that hold nothing may swap uids, so the pool serves whichever
 * free slot the lease picked (the warm sandbox moves to it with its uid),
 * and a one-off landing on a warm slot moves the warm sandbox to another
 * free slot, or, with none free, destroys it. Slot i starts with uid
 * uid_base + i; the uid range and the start-up sweep are unchanged. A new
 * warm sandbox is made from a timer after one is taken or a slot frees up.
 * They die with the provider.
 *
 * Lease: trust() gives the sandbox's supervisor (common/supervise.c) the
 * end of the lease's trust window; a build it killed ends ERROR ("killed by
 * its supervisor"), which the worker, past that window, never writes.
 *
 * Outcomes: canceled -> CANCELED (even if the build ended meanwhile: the
 * caller asked, provider.h promises it); wall timer -> TIMED_OUT; bwrap never
 * reached the command -> ERROR (a host problem, worth a retry); exit 0 ->
 * SUCCEEDED; anything else, including limits killing it -> FAILED, with the
 * limit named in the error when the sandbox knows it was one (the memory
 * cgroup's OOM killer, a full disk), which the worker stores in the run. A
 * job whose files cannot be written as given (a name too long, paths that
 * clash: the sandbox's -EINVAL) is refused by start() with -EINVAL, the
 * job's fault.
 */
#include "provider.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "preview.h"
#include "sandbox.h"

_Static_assert(SBX_SANDBOX_TAIL_MAX == SBX_LOG_TAIL_MAX, "the sandbox keeps what the runs table stores");

/* disk_mb when the job gives none: a generous build tree per file and tmpfs. */
#define LOCAL_DEFAULT_DISK_MB 4096
/* More slots than this on one host would be a configuration mistake; it also
 * bounds the uid range we reserve and sweep. */
#define LOCAL_SLOTS_MAX 1024
/* uid sweep at startup: how long orphans of a crashed worker may take. */
#define LOCAL_SWEEP_MS 2000
/* A warm sandbox's `true` run: far more than a holder takes to come up. */
#define LOCAL_WARMUP_TIMEOUT_S 60
/* After a warm sandbox failed to come up: wait this long before the next,
 * so a broken host does not spin making them. */
#define LOCAL_WARM_RETRY_MS 5000
/* A new warm sandbox once one was taken or a slot freed, this much later:
 * making one forks bwrap on the loop, which must not delay the run that
 * just started (its STARTED, its first output). */
#define LOCAL_WARM_AFTER_MS 250

typedef struct local_provider {
    sbx_provider base;
    char *node;
    char *work_dir;
    char *bwrap;
    char *pool;                  /* "local/<node>" */
    char **ids;                  /* "local/<node>/<i>" */
    int nslots;
    int uid_base;                /* -1 when not root */
    int allow_network;
    sbx_netns_host net;          /* set up when allow_network */
    int default_memory_mb;
    int default_pids;
    double default_cpus;
    int kill_grace_ms;
    struct sbx_run **busy;       /* per slot, NULL when free */
    struct local_session **sess; /* per slot, NULL when no session sandbox */
    struct local_op *ops;        /* session_op answers not yet delivered */
    int *uids;                   /* per slot, the uid its sandboxes run as (-1: not
                                  * root); a permutation of the range (warm pool) */
    int warm_n;                  /* ops->warm: how many to keep; 0 none */
    unsigned warm_seq;           /* names warm sandboxes apart */
    sbx_timer warm_t;            /* makes the missing ones */
} local_provider;

/* A session's sandbox on one slot. */
typedef struct local_session {
    local_provider *p;
    int slot;
    char name[SBX_SESSION_NAME_MAX + 1];
    sbx_sandbox_session *ss;
    struct local_op *destroying; /* a DESTROY waiting for its end */
    int warm;                    /* in the warm pool: tied to no session yet */
    int failed;                  /* a warm one that did not come up: retry later */
    sbx_sandbox *warmup;         /* a warm one's `true` run, until it ends */
    int preview_port;            /* the dev server's, inside; 0: no preview */
    char preview_url[SBX_PREVIEW_URL_MAX]; /* "" while none is open */
} local_session;

/* One session_op, answered from the loop. */
typedef struct local_op {
    local_provider *p;
    struct local_op *next;       /* in p->ops once answered, until delivered */
    sbx_timer t;
    sbx_session_cb cb;
    void *arg;
    int rc;
    char why[128];
} local_op;

struct sbx_run {
    local_provider *p;
    int slot;
    int64_t token;
    char job_id[SBX_ID_MAX + 1];
    sbx_sandbox *sb;
    sbx_run_cb cb;
    void *arg;
    int canceled;
    int pid;
    sbx_output_fn output;        /* req->output: the sandbox's reads go there */
    void *output_arg;
    local_session *ls;           /* a session's run; NULL for a one-off */
    sbx_sandbox_use use;
    int resume_ms;
};

static const char *const outcome_names[] = {"succeeded", "failed", "timed_out", "canceled",
                                            "error", "busy", "job_error"};

static int slot_index(const local_provider *p, const char *slot)
{
    if (!slot)
        return -1;
    for (int i = 0; i < p->nslots; i++)
        if (strcmp(p->ids[i], slot) == 0)
            return i;
    return -1;
}

static void set_instance(const struct sbx_run *r, sbx_result *res)
{
    snprintf(res->instance, sizeof(res->instance), "%s:%d", r->p->node, r->pid);
    res->sandbox = r->use;
    res->resume_ms = r->resume_ms;
    if (r->ls)
        snprintf(res->preview_url, sizeof(res->preview_url), "%s", r->ls->preview_url);
}

static void warm_soon(local_provider *p, uint64_t after_ms);

static void on_sb_start(void *arg, sbx_sandbox *sb)
{
    struct sbx_run *r = arg;
    sbx_result res;

    r->pid = (int)sbx_sandbox_pid(sb); /* a session's run forks once its sandbox is up */
    memset(&res, 0, sizeof(res));
    res.exit_code = -1;
    set_instance(r, &res);
    r->cb(r->arg, SBX_RUN_STARTED, &res);
}

/* stdout and stderr in two pipes, each read handed on as it comes. */
static void on_sb_output(void *arg, int stream, const char *data, size_t len)
{
    struct sbx_run *r = arg;
    sbx_run_output(r->output, r->output_arg, stream == 2 ? SBX_STREAM_STDERR : SBX_STREAM_STDOUT,
                   data, len);
}

static void on_sb_exit(void *arg, sbx_sandbox *sb, const sbx_sandbox_status *st)
{
    struct sbx_run *r = arg;
    local_provider *p = r->p;
    sbx_run_cb cb = r->cb;
    void *cb_arg = r->arg;
    sbx_result res;

    if (!r->pid)
        r->pid = (int)sbx_sandbox_pid(sb);
    memset(&res, 0, sizeof(res));
    res.exit_code = st->exit_code;
    if (r->canceled)
        res.outcome = SBX_OUTCOME_CANCELED;
    else if (st->expired)
        res.outcome = SBX_OUTCOME_ERROR;
    else if (st->end == SBX_SANDBOX_TIMED_OUT)
        res.outcome = SBX_OUTCOME_TIMED_OUT;
    else if (!st->ran || st->lost)
        res.outcome = SBX_OUTCOME_ERROR;
    else
        res.outcome = st->exit_code == 0 ? SBX_OUTCOME_SUCCEEDED : SBX_OUTCOME_FAILED;
    if (res.outcome == SBX_OUTCOME_ERROR && st->expired) {
        snprintf(res.error, sizeof(res.error), "%s", st->error);
        res.exit_code = -1;
    } else if (res.outcome == SBX_OUTCOME_ERROR && st->lost) {
        snprintf(res.error, sizeof(res.error), "sandbox killed from outside (signal %d)",
                 st->exit_code - 128);
        res.exit_code = -1;
    } else if (res.outcome == SBX_OUTCOME_ERROR) {
        snprintf(res.error, sizeof(res.error),
                 "sandbox did not start the command (bwrap exit %d)%s%s", st->exit_code,
                 st->error[0] ? ": " : "", st->error);
        res.exit_code = -1;
    } else if (res.outcome == SBX_OUTCOME_FAILED && st->limit[0]) {
        snprintf(res.error, sizeof(res.error), "%s%s%s", st->limit, st->error[0] ? "; " : "",
                 st->error);
    } else if (st->error[0]) {
        snprintf(res.error, sizeof(res.error), "%s", st->error);
    } else if (res.outcome == SBX_OUTCOME_TIMED_OUT) {
        snprintf(res.error, sizeof(res.error), "killed after the timeout");
    }
    if (r->ls && !sbx_sandbox_session_alive(r->ls->ss) &&
        (res.outcome == SBX_OUTCOME_SUCCEEDED || res.outcome == SBX_OUTCOME_FAILED)) {
        size_t n = strlen(res.error);
        snprintf(res.error + n, sizeof(res.error) - n, "%sthe session's sandbox ended",
                 n ? "; " : "");
    }
    memcpy(res.log_tail, st->tail, st->tail_len);
    res.log_tail[st->tail_len] = '\0';
    res.log_tail_len = st->tail_len;
    set_instance(r, &res);
    sbx_log(st->error[0] || res.outcome == SBX_OUTCOME_ERROR ? SBX_LOG_WARN : SBX_LOG_INFO,
        "local",
        "run end slot=%s token=%" PRId64 " job=%s pid=%d outcome=%s exit_code=%d out_bytes=%" PRIu64
        " duration_ms=%" PRIu64 "%s%s%s%s",
        p->ids[r->slot], r->token, r->job_id, r->pid, outcome_names[res.outcome], st->exit_code,
        st->out_bytes, st->duration_ms, r->ls ? " session=" : "", r->ls ? r->ls->name : "",
        res.error[0] ? " error=" : "", res.error);

    /* Forget the run before telling: the callback may start the next build
     * in this slot, and the sbx_run pointer is dangling once it is told. */
    p->busy[r->slot] = NULL;
    sbx_sandbox_free(sb);
    if (!r->ls)
        warm_soon(p, LOCAL_WARM_AFTER_MS); /* a slot came free */
    free(r);
    cb(cb_arg, SBX_RUN_FINISHED, &res);
}

/* ---- sessions ---- */

static void op_fire(sbx_timer *t)
{
    local_op *op = t->data, **pp;
    sbx_session_cb cb = op->cb;
    void *arg = op->arg;
    int rc = op->rc;
    char why[sizeof(op->why)];

    for (pp = &op->p->ops; *pp != op; pp = &(*pp)->next)
        ;
    *pp = op->next;
    memcpy(why, op->why, sizeof(why));
    free(op);
    cb(arg, rc, why);
}

/* From the loop, never from inside session_op (provider.h). */
static void op_answer(local_op *op, int rc, const char *why)
{
    op->rc = rc;
    snprintf(op->why, sizeof(op->why), "%s", why);
    op->next = op->p->ops;
    op->p->ops = op;
    sbx_timer_start(op->p->base.loop, &op->t, 0);
}

/* Synchronous: what is left of it is killed, reaped and removed. */
static void session_drop(local_session *ls)
{
    local_provider *p = ls->p;

    p->sess[ls->slot] = NULL;
    if (ls->preview_url[0] && p->base.previews)
        sbx_preview_close(p->base.previews, ls->name);
    sbx_sandbox_free(ls->warmup); /* a run of the session: freed before it */
    sbx_sandbox_session_free(ls->ss);
    if (ls->destroying)
        op_answer(ls->destroying, 0, "");
    warm_soon(p, ls->failed ? LOCAL_WARM_RETRY_MS : LOCAL_WARM_AFTER_MS);
    free(ls);
}

/* The preview proxy's way in (preview.h): a socket made in the session's
 * network namespace. */
static int local_dial(void *arg, char *err, size_t errlen)
{
    local_session *ls = arg;
    return sbx_sandbox_session_dial(ls->ss, ls->preview_port, err, errlen);
}

/* Opening again is fine (preview.h): same port, the new dial. A preview
 * that cannot open costs the job nothing; it just has no URL. */
static void preview_open(local_provider *p, local_session *ls, int port)
{
    char err[256];
    int rc;

    ls->preview_port = port;
    rc = sbx_preview_open(p->base.previews, ls->name, local_dial, ls, ls->preview_url, err,
                          sizeof(err));
    if (rc) {
        ls->preview_url[0] = '\0';
        sbx_warn("local", "preview not opened slot=%s session=%s port=%d: %s", p->ids[ls->slot],
                 ls->name, port, err);
    }
}

/* sandbox.c: the session's sandbox is gone, everything cleaned up. */
static void on_session_end(void *arg, sbx_sandbox_session *ss)
{
    local_session *ls = arg;
    (void)ss;

    sbx_info("local", "session sandbox ended slot=%s session=%s", ls->p->ids[ls->slot], ls->name);
    session_drop(ls);
}

/* ---- the warm pool ---- */

/* What every sandbox of the provider starts from: the slot's uid and the
 * defaults; the job's own values go over it (local_start). */
static void base_spec(const local_provider *p, int i, const char *name, sbx_sandbox_spec *spec)
{
    memset(spec, 0, sizeof(*spec));
    spec->bwrap = p->bwrap;
    spec->work_dir = p->work_dir;
    spec->name = name;
    spec->uid = p->uids[i];
    spec->gid = spec->uid;
    spec->net = &p->net;
    spec->memory_mb = p->default_memory_mb;
    spec->pids = p->default_pids;
    spec->cpus = p->default_cpus;
    spec->disk_mb = LOCAL_DEFAULT_DISK_MB;
    spec->disk_total = 1;
    spec->kill_grace_ms = p->kill_grace_ms;
}

/* A job's session sandbox would be what a warm one is. */
static int fits_warm(const local_provider *p, const sbx_sandbox_spec *spec)
{
    return !spec->network && spec->memory_mb == p->default_memory_mb &&
           spec->pids == p->default_pids && spec->cpus == p->default_cpus &&
           spec->disk_mb == LOCAL_DEFAULT_DISK_MB;
}

static int warm_ready(const local_session *ls)
{
    return ls && ls->warm && !ls->warmup && sbx_sandbox_session_alive(ls->ss) &&
           sbx_sandbox_session_paused(ls->ss);
}

static int slot_free(const local_provider *p, int i) { return !p->busy[i] && !p->sess[i]; }

/* Slot from's warm sandbox goes to slot to, which holds nothing, with its
 * uid: the two swap uids. Neither uid has a process outside what moves (a
 * slot with no run and no sandbox has none), so every uid still belongs to
 * one slot and what runs under it. */
static void warm_move(local_provider *p, int from, int to)
{
    local_session *ls = p->sess[from];
    int uid = p->uids[from];

    p->uids[from] = p->uids[to];
    p->uids[to] = uid;
    p->sess[to] = ls;
    p->sess[from] = NULL;
    ls->slot = to;
    sbx_debug("local", "warm sandbox moved %s -> %s uid=%d", p->ids[from], p->ids[to], uid);
}

/* Slot i is wanted for something the warm sandbox on it cannot be: it moves
 * to another free slot, or, with none, is destroyed. */
static void warm_away(local_provider *p, int i)
{
    for (int k = 0; k < p->nslots; k++)
        if (k != i && slot_free(p, k)) {
            warm_move(p, i, k);
            return;
        }
    sbx_info("local", "warm sandbox dropped: its slot %s is wanted and none is free", p->ids[i]);
    session_drop(p->sess[i]);
}

/* Never later than it already is: a stream of one-offs freeing slots must
 * not keep pushing the pool's fill away. */
static void warm_soon(local_provider *p, uint64_t after_ms)
{
    if (p->warm_n <= 0 || (p->warm_t.active && p->warm_t.due_ms <= sbx_now_ms() + after_ms))
        return;
    sbx_timer_start(p->base.loop, &p->warm_t, after_ms);
}

static void warm_started(void *arg, sbx_sandbox *sb)
{
    (void)arg;
    (void)sb;
}

/* The `true` run ended: up and warm, so frozen until taken; anything else,
 * the sandbox goes and the pool tries again later. */
static void warm_exited(void *arg, sbx_sandbox *sb, const sbx_sandbox_status *st)
{
    local_session *ls = arg;
    local_provider *p = ls->p;
    int rc = -EIO;

    ls->warmup = NULL;
    if (st->ran && st->end == SBX_SANDBOX_EXITED && st->exit_code == 0)
        rc = sbx_sandbox_session_pause(ls->ss);
    if (rc) {
        sbx_warn("local", "warm sandbox did not come up slot=%s exit_code=%d: %s",
                 p->ids[ls->slot], st->exit_code, st->error[0] ? st->error : strerror(-rc));
        ls->failed = 1;
        sbx_sandbox_free(sb);
        sbx_sandbox_session_kill(ls->ss); /* on_session_end drops it */
        return;
    }
    sbx_info("local", "warm sandbox ready slot=%s name=%s uid=%d ms=%" PRIu64, p->ids[ls->slot],
             ls->name, p->uids[ls->slot], st->duration_ms);
    sbx_sandbox_free(sb);
}

static int warm_make(local_provider *p, int i)
{
    sbx_sandbox_spec spec;
    local_session *ls;
    char name[64], err[256];
    int rc;

    ls = calloc(1, sizeof(*ls));
    if (!ls)
        return -ENOMEM;
    ls->p = p;
    ls->slot = i;
    ls->warm = 1;
    /* Never a session's name ("s-..."): session_op and start() pass it by. */
    snprintf(ls->name, sizeof(ls->name), "warm-%u", ++p->warm_seq);
    snprintf(name, sizeof(name), "%d-s-%s", i, ls->name);
    base_spec(p, i, name, &spec);
    rc = sbx_sandbox_session_new(p->base.loop, &spec, on_session_end, ls, &ls->ss, err,
                                 sizeof(err));
    if (rc) {
        sbx_warn("local", "warm sandbox not made slot=%s: %s", p->ids[i], err);
        free(ls);
        return rc;
    }
    p->sess[i] = ls;
    spec.script = "true";
    spec.timeout_s = LOCAL_WARMUP_TIMEOUT_S;
    spec.session = ls->ss;
    rc = sbx_sandbox_spawn(p->base.loop, &spec, warm_started, warm_exited, ls, &ls->warmup, err,
                           sizeof(err));
    if (rc) {
        sbx_warn("local", "warm sandbox not warmed slot=%s: %s", p->ids[i], err);
        ls->failed = 1;
        session_drop(ls);
        return rc;
    }
    sbx_debug("local", "warm sandbox making slot=%s name=%s uid=%d", p->ids[i], ls->name,
              spec.uid);
    return 0;
}

static void warm_fill(sbx_timer *t)
{
    local_provider *p = t->data;
    int have = 0;

    for (int i = 0; i < p->nslots; i++)
        have += p->sess[i] && p->sess[i]->warm;
    for (int i = 0; i < p->nslots && have < p->warm_n; i++) {
        if (!slot_free(p, i))
            continue;
        if (warm_make(p, i) != 0) {
            warm_soon(p, LOCAL_WARM_RETRY_MS);
            return;
        }
        have++;
    }
}

static void local_warm(sbx_provider *bp, int n)
{
    local_provider *p = (local_provider *)bp;

    p->warm_n = n < 0 ? 0 : n > p->nslots ? p->nslots : n;
    sbx_info("local", "warm pool of %d (asked %d)", p->warm_n, n);
    warm_soon(p, 0);
}

/* The session takes the warm sandbox on slot i: thawed and renamed. On
 * failure it is dropped and the caller makes a new one. */
static int warm_take(local_provider *p, local_session *ls, const char *name, struct sbx_run *r)
{
    int rc = sbx_sandbox_session_resume(ls->ss, &r->resume_ms);

    if (rc) {
        sbx_warn("local", "warm sandbox not taken slot=%s: resume: %s", p->ids[ls->slot],
                 strerror(-rc));
        session_drop(ls);
        return rc;
    }
    sbx_info("local", "warm sandbox taken slot=%s warm=%s session=%s uid=%d resume_ms=%d",
             p->ids[ls->slot], ls->name, name, p->uids[ls->slot], r->resume_ms);
    snprintf(ls->name, sizeof(ls->name), "%s", name);
    ls->warm = 0;
    r->ls = ls;
    r->use = SBX_SANDBOX_WARM;
    warm_soon(p, LOCAL_WARM_AFTER_MS);
    return 0;
}

/* The session's sandbox on slot i, found (resumed if paused), taken from
 * the warm pool, or made. Returns 0 and sets r->ls, r->use, r->resume_ms. */
static int session_for(local_provider *p, int i, const char *name, const sbx_sandbox_spec *spec,
                       struct sbx_run *r, char *err, size_t errlen)
{
    local_session *ls;
    int rc, fits = fits_warm(p, spec);

    /* The workspace's name, which a restarted worker's clean-up must know
     * as ours (is_workspace_name), and the cgroup's. */
    if (strlen(name) > SBX_SESSION_NAME_MAX || strncmp(name, "s-", 2) != 0 || !name[2] ||
        strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(name)) {
        snprintf(err, errlen, "session name %.64s: not a session sandbox name", name);
        return -EINVAL;
    }
    /* One sandbox per session: when the lease layer gave the session
     * another slot (its binding in Redis was dropped), the sandbox it left
     * on the old one must not serve a later job again (CI once saw jobs 3
     * and 4 of a session in a new sandbox and job 5 back in the old one). */
    for (int k = 0; k < p->nslots; k++)
        if (k != i && p->sess[k] && !p->sess[k]->warm && !p->busy[k] &&
            strcmp(p->sess[k]->name, name) == 0) {
            sbx_warn("local", "session sandbox moved slot=%s from=%s session=%s: the old one "
                     "is destroyed", p->ids[i], p->ids[k], name);
            session_drop(p->sess[k]);
        }
    ls = p->sess[i];
    if (ls && ls->warm && !(fits && warm_ready(ls))) {
        warm_away(p, i);
        ls = NULL;
    }
    if (ls && !ls->warm && (strcmp(ls->name, name) != 0 || !sbx_sandbox_session_alive(ls->ss))) {
        sbx_info("local", "session sandbox replaced slot=%s old=%s alive=%d new=%s", p->ids[i],
                 ls->name, sbx_sandbox_session_alive(ls->ss), name);
        session_drop(ls);
        ls = NULL;
    }
    if (!ls && fits) {
        for (int k = 0; k < p->nslots; k++)
            if (warm_ready(p->sess[k])) {
                warm_move(p, k, i);
                ls = p->sess[i];
                break;
            }
    }
    if (ls && ls->warm) {
        if (warm_take(p, ls, name, r) == 0)
            return 0;
        ls = NULL;
    }
    if (ls) {
        if (sbx_sandbox_session_paused(ls->ss)) {
            rc = sbx_sandbox_session_resume(ls->ss, &r->resume_ms);
            if (rc) {
                snprintf(err, errlen, "session %s: resume: %s", name, strerror(-rc));
                return rc;
            }
            r->use = SBX_SANDBOX_RESUMED;
        } else {
            r->use = SBX_SANDBOX_REUSED;
        }
        r->ls = ls;
        return 0;
    }
    ls = calloc(1, sizeof(*ls));
    if (!ls) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    ls->p = p;
    ls->slot = i;
    snprintf(ls->name, sizeof(ls->name), "%s", name);
    rc = sbx_sandbox_session_new(p->base.loop, spec, on_session_end, ls, &ls->ss, err, errlen);
    if (rc) {
        free(ls);
        return rc;
    }
    p->sess[i] = ls;
    r->ls = ls;
    r->use = SBX_SANDBOX_NEW;
    return 0;
}

static int local_session_op(sbx_provider *bp, sbx_session_op op, const char *slot,
                            const char *session, int64_t token, sbx_session_cb cb, void *arg)
{
    local_provider *p = (local_provider *)bp;
    int i = slot_index(p, slot);
    local_session *ls;
    local_op *o;
    int rc;

    if (i < 0 || !session)
        return -ENOENT;
    o = calloc(1, sizeof(*o));
    if (!o)
        return -ENOMEM;
    o->p = p;
    o->cb = cb;
    o->arg = arg;
    sbx_timer_init(&o->t, op_fire, o);
    ls = p->sess[i];
    if (ls && strcmp(ls->name, session) != 0)
        ls = NULL; /* another session's: not this op's business */
    sbx_info("local", "session %s slot=%s session=%s token=%" PRId64 " sandbox=%s",
             op == SBX_SESSION_PAUSE ? "pause" : "destroy", p->ids[i], session, token,
             !ls ? "none" : sbx_sandbox_session_alive(ls->ss) ? "alive" : "ended");
    if (op == SBX_SESSION_PAUSE) {
        if (!ls || !sbx_sandbox_session_alive(ls->ss)) {
            op_answer(o, 0, "no sandbox");
        } else if (p->busy[i]) {
            op_answer(o, -EBUSY, "a job of the session is running");
        } else {
            rc = sbx_sandbox_session_pause(ls->ss);
            op_answer(o, rc, rc ? strerror(-rc) : "");
        }
        return 0;
    }
    if (!ls) {
        op_answer(o, 0, "no sandbox");
        return 0;
    }
    if (ls->destroying) {
        op_answer(o, -EBUSY, "being destroyed");
        return 0;
    }
    /* Answered once its end has cleaned everything up (on_session_end). A
     * job still running there ends CANCELED first. */
    ls->destroying = o;
    if (p->busy[i])
        p->busy[i]->canceled = 1;
    sbx_sandbox_session_kill(ls->ss);
    return 0;
}

static int local_start(sbx_provider *bp, const sbx_run_req *req, sbx_run_cb cb, void *arg,
                       sbx_run **out, char *err, size_t errlen)
{
    local_provider *p = (local_provider *)bp;
    const sbx_job *job = req->job;
    sbx_sandbox_spec spec;
    struct sbx_run *r;
    char name[64];
    double cpus, cpu_s;
    int i, rc, timeout_s;

    i = slot_index(p, req->slot);
    if (i < 0) {
        snprintf(err, errlen, "slot %.128s is not one of %s's", req->slot ? req->slot : "(null)",
                 p->pool);
        return -ENOENT;
    }
    if (p->busy[i]) {
        snprintf(err, errlen, "slot %s is busy with job %s (token %" PRId64 ")", p->ids[i],
                 p->busy[i]->job_id, p->busy[i]->token);
        return -EBUSY;
    }
    if (!job || (!job->script && !(job->argv && job->argv[0]))) {
        snprintf(err, errlen, "job has neither command nor script");
        return -EINVAL;
    }
    if (!req->session && p->sess[i] && p->sess[i]->warm) {
        warm_away(p, i); /* before the uid is read: moving swaps it */
    } else if (!req->session && p->sess[i]) {
        /* A one-off on a slot a session left behind: that session has ended
         * without DESTROY. Killed here, not by the spawn's uid sweep behind
         * its back. */
        sbx_info("local", "session sandbox dropped for a one-off slot=%s session=%s", p->ids[i],
                 p->sess[i]->name);
        session_drop(p->sess[i]);
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    r->p = p;
    r->slot = i;
    r->token = req->token;
    r->cb = cb;
    r->arg = arg;
    snprintf(r->job_id, sizeof(r->job_id), "%s", job->job_id);

    timeout_s = job->timeout_s > 0 ? job->timeout_s : SBX_DEFAULT_TIMEOUT_S;
    cpus = job->cpus > 0 ? job->cpus : p->default_cpus;
    if (req->session)
        snprintf(name, sizeof(name), "%d-%.*s", i, SBX_SESSION_NAME_MAX, req->session);
    else
        snprintf(name, sizeof(name), "%d-%" PRId64, i, req->token);
    base_spec(p, i, name, &spec);
    spec.argv = job->script ? NULL : job->argv;
    spec.script = job->script;
    spec.env = job->env;
    spec.nenv = job->nenv;
    spec.files = job->files;
    spec.nfiles = job->nfiles;
    spec.network = job->network && p->allow_network;
    spec.egress = job->egress;
    spec.memory_mb = job->memory_mb > 0 ? job->memory_mb : p->default_memory_mb;
    spec.pids = job->pids > 0 ? job->pids : p->default_pids;
    cpu_s = (double)timeout_s * (cpus > 1 ? cpus : 1);
    spec.cpu_s = cpu_s < INT32_MAX ? (int)cpu_s + ((double)(int)cpu_s < cpu_s) : INT32_MAX;
    spec.cpus = cpus;
    spec.disk_mb = job->disk_mb > 0 ? job->disk_mb : LOCAL_DEFAULT_DISK_MB;
    spec.timeout_s = timeout_s;
    if (req->output) {
        r->output = req->output;
        r->output_arg = req->output_arg;
        spec.output = on_sb_output;
        spec.output_arg = r;
    }

    rc = 0;
    if (req->session) {
        rc = session_for(p, i, req->session, &spec, r, err, errlen);
        spec.session = rc ? NULL : r->ls->ss;
        spec.uid = p->uids[i]; /* a warm sandbox brought its own (and the session's is used) */
        if (!rc && job->session_preview_port > 0 && p->base.previews)
            preview_open(p, r->ls, job->session_preview_port);
    }
    if (!rc)
        rc = sbx_sandbox_spawn(p->base.loop, &spec, on_sb_start, on_sb_exit, r, &r->sb, err,
                               errlen);
    if (rc) {
        sbx_warn("local", "run refused slot=%s token=%" PRId64 " job=%s: %s", p->ids[i],
                 req->token, r->job_id, err);
        free(r);
        return rc;
    }
    r->pid = (int)sbx_sandbox_pid(r->sb);
    p->busy[i] = r;
    sbx_info("local",
             "run start slot=%s token=%" PRId64 " job=%s attempt=%d pid=%d uid=%d network=%d "
             "memory_mb=%d pids=%d cpus=%g disk_mb=%d timeout_s=%d%s%s%s%d",
             p->ids[i], req->token, r->job_id, req->attempt, r->pid, spec.uid, spec.network,
             spec.memory_mb, spec.pids, cpus, spec.disk_mb, timeout_s,
             r->ls ? " session=" : "", r->ls ? r->ls->name : "",
             r->ls ? " sandbox=" : "", (int)r->use);
    if (job->network && !p->allow_network)
        sbx_info("local", "run job=%s asked for network; this host allows none", r->job_id);
    *out = r;
    return 0;
}

static void local_cancel(sbx_provider *bp, sbx_run *r)
{
    (void)bp;
    if (!r->canceled)
        sbx_info("local", "run cancel slot=%s token=%" PRId64 " job=%s pid=%d", r->p->ids[r->slot],
                 r->token, r->job_id, r->pid);
    r->canceled = 1;
    sbx_sandbox_cancel(r->sb);
}

/* The sandbox's supervisor holds the deadline (common/supervise.c). */
static void local_trust(sbx_provider *bp, sbx_run *r, uint64_t until_ms)
{
    (void)bp;
    sbx_sandbox_trust(r->sb, until_ms);
}

static size_t local_slots(sbx_provider *bp, const char ***ids)
{
    local_provider *p = (local_provider *)bp;
    *ids = (const char **)p->ids;
    return (size_t)p->nslots;
}

static const char *local_pool(sbx_provider *bp) { return ((local_provider *)bp)->pool; }

static void free_provider(local_provider *p)
{
    if (!p)
        return;
    if (p->ids)
        for (int i = 0; i < p->nslots; i++)
            free(p->ids[i]);
    free(p->ids);
    free(p->busy);
    free(p->sess);
    free(p->uids);
    sbx_netns_host_free(&p->net);
    free(p->node);
    free(p->work_dir);
    free(p->bwrap);
    free(p->pool);
    free(p);
}

static void local_destroy(sbx_provider *bp)
{
    local_provider *p = (local_provider *)bp;
    int killed = 0;

    p->warm_n = 0; /* no new ones while the old go */
    sbx_timer_stop(p->base.loop, &p->warm_t);
    for (int i = 0; i < p->nslots; i++) {
        struct sbx_run *r = p->busy[i];
        if (!r)
            continue;
        sbx_sandbox_free(r->sb); /* SIGKILL, reap, remove; no callbacks */
        sbx_info("local", "run killed at shutdown slot=%s token=%" PRId64 " job=%s pid=%d",
                 p->ids[i], r->token, r->job_id, r->pid);
        free(r);
        p->busy[i] = NULL;
        killed++;
    }
    /* Session sandboxes are this process's children: they go with it. */
    for (int i = 0; i < p->nslots; i++) {
        local_session *ls = p->sess[i];
        if (!ls)
            continue;
        sbx_info("local", "session sandbox killed at shutdown slot=%s session=%s", p->ids[i],
                 ls->name);
        if (ls->destroying) {
            free(ls->destroying); /* no callbacks follow destroy() */
            ls->destroying = NULL;
        }
        session_drop(ls);
    }
    while (p->ops) {
        local_op *op = p->ops;
        p->ops = op->next;
        sbx_timer_stop(p->base.loop, &op->t);
        free(op);
    }
    sbx_info("local", "provider closed pool=%s killed=%d", p->pool, killed);
    free_provider(p);
}

static const sbx_provider_ops local_ops = {
    .name = "local",
    .start = local_start,
    .cancel = local_cancel,
    .trust = local_trust,
    .session_op = local_session_op,
    .warm = local_warm,
    .slots = local_slots,
    .pool = local_pool,
    .destroy = local_destroy,
};

/* "<digits>-<token>" or a session's "<digits>-s-<name>": what a workspace
 * is named; anything else is not ours. */
static int is_workspace_name(const char *n)
{
    const char *c = n;
    if (*c < '0' || *c > '9')
        return 0;
    while (*c >= '0' && *c <= '9')
        c++;
    if (*c++ != '-')
        return 0;
    if (c[0] == 's' && c[1] == '-') {
        for (c += 2; *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-'))
                return 0;
        return 1;
    }
    if (*c == '-')
        c++;
    if (*c < '0' || *c > '9')
        return 0;
    while (*c >= '0' && *c <= '9')
        c++;
    return *c == '\0';
}

static void remove_stale_workspaces(local_provider *p)
{
    DIR *d = opendir(p->work_dir);
    struct dirent *de;
    char path[4096];
    int n = 0;

    if (!d)
        return;
    while ((de = readdir(d)) != NULL) {
        if (!is_workspace_name(de->d_name))
            continue;
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", p->work_dir, de->d_name) >= sizeof(path))
            continue;
        if (sbx_sandbox_remove_tree(path) == 0)
            n++;
        else
            sbx_warn("local", "stale workspace not removed path=%s", path);
    }
    closedir(d);
    if (n)
        sbx_info("local", "removed stale workspaces count=%d work_dir=%s", n, p->work_dir);
}

static int prepare_work_dir(const char *dir, int as_root, char *err, size_t errlen)
{
    struct stat st;

    if (mkdir(dir, 0711) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "work_dir %s: %s", dir, strerror(errno));
        return -errno;
    }
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "work_dir %s: not a directory", dir);
        return -ENOTDIR;
    }
    /* bwrap runs as the slot uid and must reach <work_dir>/<ws> to bind it. */
    if (as_root && !(st.st_mode & S_IXOTH)) {
        snprintf(err, errlen, "work_dir %s: sandbox uids cannot enter it (chmod o+x)", dir);
        return -EACCES;
    }
    return 0;
}

int sbx_local_new(sbx_loop *loop, const sbx_local_config *cfg, sbx_provider **out, char *err,
                  size_t errlen)
{
    local_provider *p = NULL;
    int as_root = geteuid() == 0, rc = 0;
    size_t n;

    if (err && errlen)
        err[0] = '\0';
    if (!loop || !cfg || !out) {
        snprintf(err, errlen, "local: missing loop, config or out");
        return -EINVAL;
    }
    if (!cfg->node || !cfg->node[0] || strchr(cfg->node, '/') || strlen(cfg->node) > 64) {
        snprintf(err, errlen, "local: node must be a short name without '/'");
        return -EINVAL;
    }
    if (cfg->slots < 1 || cfg->slots > LOCAL_SLOTS_MAX) {
        snprintf(err, errlen, "local: slots must be 1..%d", LOCAL_SLOTS_MAX);
        return -EINVAL;
    }
    if (!cfg->work_dir || cfg->work_dir[0] != '/') {
        snprintf(err, errlen, "local: work_dir must be an absolute path");
        return -EINVAL;
    }
    if (as_root && (cfg->uid_base <= 0 || cfg->uid_base > INT32_MAX - LOCAL_SLOTS_MAX)) {
        snprintf(err, errlen, "local: running as root needs uid_base > 0, a uid range reserved "
                              "for sandboxes");
        return -EINVAL;
    }
    p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    p->base.ops = &local_ops;
    p->base.loop = loop;
    p->nslots = cfg->slots;
    p->uid_base = as_root ? cfg->uid_base : -1;
    p->allow_network = cfg->allow_network;
    p->default_memory_mb = cfg->default_memory_mb > 0 ? cfg->default_memory_mb : 0;
    p->default_pids = cfg->default_pids > 0 ? cfg->default_pids : 0;
    p->default_cpus = cfg->default_cpus > 0 ? cfg->default_cpus : 1;
    p->kill_grace_ms = cfg->kill_grace_ms > 0 ? cfg->kill_grace_ms : 0;
    p->node = strdup(cfg->node);
    p->work_dir = strdup(cfg->work_dir);
    p->bwrap = sbx_sandbox_resolve_exe(cfg->bwrap && cfg->bwrap[0] ? cfg->bwrap : "bwrap");
    n = strlen(cfg->node) + sizeof("local/");
    p->pool = malloc(n);
    p->ids = calloc((size_t)p->nslots, sizeof(*p->ids));
    p->busy = calloc((size_t)p->nslots, sizeof(*p->busy));
    p->sess = calloc((size_t)p->nslots, sizeof(*p->sess));
    p->uids = calloc((size_t)p->nslots, sizeof(*p->uids));
    sbx_timer_init(&p->warm_t, warm_fill, p);
    if (!p->node || !p->work_dir || !p->pool || !p->ids || !p->busy || !p->sess || !p->uids) {
        rc = -ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    if (!p->bwrap) {
        rc = -ENOENT;
        snprintf(err, errlen, "local: bwrap %s: not found or not executable",
                 cfg->bwrap ? cfg->bwrap : "bwrap");
        goto out;
    }
    snprintf(p->pool, n, "local/%s", cfg->node);
    for (int i = 0; i < p->nslots; i++)
        p->uids[i] = as_root ? p->uid_base + i : -1;
    for (int i = 0; i < p->nslots; i++) {
        char id[128];
        snprintf(id, sizeof(id), "%s/%d", p->pool, i);
        p->ids[i] = strdup(id);
        if (!p->ids[i]) {
            rc = -ENOMEM;
            snprintf(err, errlen, "out of memory");
            goto out;
        }
    }
    rc = prepare_work_dir(p->work_dir, as_root, err, errlen);
    if (rc)
        goto out;
    if (p->allow_network) {
        rc = sbx_netns_host_init(&p->net, cfg->egress_allow, cfg->egress_deny, err, errlen);
        if (rc)
            goto out;
        sbx_info("local", "egress policy deny=%zu allow=%s", p->net.egress.deny.n,
                 p->net.egress.allow_set ? "set" : "any public IPv4");
    }

    /* Whatever a crashed predecessor left: its processes, then its disk.
     * Its cgroups first: a paused session's processes are frozen, and
     * take the uid sweep's SIGKILL only once thawed (cgroup.c does). */
    if (as_root)
        for (int i = 0; i < p->nslots; i++)
            sbx_sandbox_sweep_cgroups(p->work_dir, p->uid_base + i);
    if (as_root)
        for (int i = 0; i < p->nslots; i++)
            if (sbx_sandbox_sweep_uid((uid_t)(p->uid_base + i), LOCAL_SWEEP_MS) != 0)
                sbx_warn("local", "processes of uid %d survive SIGKILL; slot %s will refuse builds",
                         p->uid_base + i, p->ids[i]);
    remove_stale_workspaces(p);
    if (as_root)
        for (int i = 0; i < p->nslots; i++)
            sbx_sandbox_sweep_cgroups(p->work_dir, p->uid_base + i);

    if (!as_root)
        sbx_warn("local", "not root: builds run as uid %d, no per-slot uid, RLIMIT_NPROC counts "
                          "all of its processes", (int)geteuid());
    sbx_info("local", "provider ready pool=%s slots=%d work_dir=%s bwrap=%s uid_base=%d network=%d",
             p->pool, p->nslots, p->work_dir, p->bwrap, p->uid_base, p->allow_network);
    *out = &p->base;
    p = NULL;
out:
    free_provider(p);
    return rc;
}
