/* provider_fly.c — one build = one Fly Machine, driven through the Machines
 * API on the worker's event loop.
 *
 * A run walks these states; every transition goes through run_set(), which
 * logs "from -> to":
 *
 *   CREATING     POST /apps/{app}/machines, when the app's create pacer
 *                (one token bucket for all runs: Fly allows ~1 create/s per
 *                app, burst 3) lets it go; a 429 holds every create until its
 *                Retry-After and costs no attempt. A capacity refusal (the
 *                body's status "insufficient_capacity" whatever the code, or
 *                flyd's phrases on a 409, as fly-go reads them) moves on to
 *                the next configured region.
 *   ADOPTING     a create answered 408, 5xx or nothing at all (or 409 because
 *                this run's unique name is taken) may have made the machine.
 *                Fly's list is eventually consistent, so after settle_ms
 *                (flyctl waits ~500 ms) list ?metadata.sbx_run=<this run>,
 *                destroyed ones included, and once more after another
 *                settle; adopt what is there, else create again. A build
 *                never gets two machines: the name guards the rest.
 *   BOOTING      GET .../wait?state=started. Slices start short (first_wait_s)
 *                and double: a build that exits before the wait is served
 *                leaves the machine `stopped`, and wait(started) would then
 *                sit out its whole timeout.
 *   PROBING      after a wait answered anything but 200, GET the machine:
 *                `failed` and `launch_failed` are ERRORs, a version replaced
 *                or migrated under the build is an ERROR (the new version
 *                runs the build again, so the machine is destroyed),
 *                stopped/destroyed means it already ran (the events have its
 *                exit), started waits for stopped, anything else waits again
 *                until boot_timeout_s says it is wedged. A 404 soon after the
 *                create is "not replicated yet" (flyctl PR #4618), waited out.
 *   RUNNING      STARTED reported; GET .../wait?state=stopped&instance_id=..
 *                in slices of at most 60 s (the documented maximum) until the
 *                job's deadline, which the deadline timer enforces. A wait
 *                error ("failed to reach desired state") goes to PROBING.
 *   INSPECTING   GET the machine: the exit code is in the newest `exit`
 *                event, request.exit_event.exit_code (or under MonitorEvent);
 *                Go's omitempty drops a 0, so a missing code means 0.
 *   STOPPING     timeout or cancel: POST .../stop {SIGTERM, grace}.
 *   STOP_WAIT    wait?state=stopped for the grace plus a margin.
 *   LOGS         the logs API read to its end (below).
 *   DESTROYING   DELETE ?force=true; 404 is fine (auto_destroy got there).
 *
 * Whose fault (provider.h): a create refused with 400 or 422 for anything
 * but capacity, a size no Fly preset holds, and files that cannot be written
 * as given (start() says -EINVAL), are the job's: SBX_OUTCOME_JOB_ERROR,
 * failed at once. Every other failure is SBX_OUTCOME_ERROR.
 *
 * Retries: every call but create is retried on 429, transport errors and
 * 5xx with exponential backoff and full jitter, never sooner than a
 * Retry-After, at most max_attempts failures (429s do not count); that layer
 * (sbx__fly_call) is fly_api.c. Waits are not failures when they answer 408;
 * they are simply issued again.
 *
 * Cancel and timeout never call back from inside cancel(): a running machine
 * is stopped then destroyed, a create in flight is let finish (and an
 * adoption its looks) so the reply says whether there is a machine to
 * destroy, and a run with nothing to undo finishes from a zero-delay timer.
 *
 * Output: the Machines API has no logs endpoint; Fly serves machine logs
 * over its HTTP logs API by instance, which fly_logs.c reads for each run
 * from the moment its machine exists (live output and the log tail), and
 * reads to the end in LOGS, after the machine stopped.
 * Machines get auto_destroy so a lost worker leaves nothing billing after
 * its builds end; builds that never end are what sbx_fly_sweep() is for.
 *
 * Sessions (provider.h): a job naming one runs in the session's long-lived
 * machine through exec, not in a machine of its own; fly_session.c owns
 * that and PAUSE/DESTROY. Here a session run is only a slot and a callback
 * (sbx_run.sess); the sweep skips machines with sbx_session metadata, and
 * destroy() leaves them for the session's next owner. Previews and the warm
 * pool (ops->warm, fly_warm.c) are fly_session.c's too; here the sweep
 * passes over this pool's warm machines (metadata sbx_warm = its tag) and
 * destroys an earlier process's, and destroy() reaps the pool's. One-off
 * jobs take no warm machine: each runs as its machine's main process
 * (config.init, auto_destroy, output from the logs API), and turning a warm
 * machine's idle init into that is an update, which restarts it: a cold
 * boot, nothing gained.
 *
 * Not available on Fly and ignored: job->pids, job->disk_mb, and network=false
 * (Machines always have a network; the VM is the isolation boundary). Jobs run
 * under /bin/sh in /workspace, where job->files are written (config.files),
 * so the image needs a /bin/sh.
 */
#include "provider_fly.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "fly_api.h"
#include "fly_logs.h"
#include "fly_session.h"
#include "fly_warm.h"
#include "http.h"
#include "jobfiles.h"
#include "log.h"
#include "text.h"

#define FLY_DEFAULT_URL "https://api.machines.dev/v1"
/* The wait endpoint takes 1..60 s (machines-resource); longer requests are cut
 * by Fly's proxy, which is why its Go client caps them the same way. */
#define FLY_WAIT_MAX_S 60
/* The stopped-wait never answers for a machine that went `failed`; a short
 * slice bounds how late that is noticed (one request per slice per machine,
 * well inside the per-machine rate limit). */
#define FLY_RUN_WAIT_S 5
/* How much longer than a wait's own timeout the HTTP request may take. */
#define FLY_WAIT_SLACK_MS 15000
/* An instance id, kept for wait?instance_id=; the URL bounds are fly_api.h's. */
#define FLY_IID_MAX 64
/* Region codes are three letters; 15 allows anything Fly might add. */
#define FLY_REGION_MAX 15
#define FLY_REGIONS_MAX 16
/* "fly/" + app + "/" + a size_t index */
#define FLY_SLOT_MAX (4 + SBX_FLY_APP_MAX + 1 + 20 + 1)
/* A sanity bound on configured slots, far above any Fly org's quota. */
#define FLY_MAX_MACHINES 4096
/* Machines one sweep destroys; more wait for the next sweep. */
#define FLY_SWEEP_MAX 512
/* How long destroy() keeps deleting machines at worker exit. */
#define FLY_EXIT_REAP_MS 5000
/* A machine a create just made may 404 on wait/GET for a moment: the API is
 * eventually consistent (flyctl PR #4618 retries that 404). Within this long
 * after the create reply, a 404 means "not replicated yet", not "gone". */
#define FLY_NEW_404_MS 5000
/* Lists after an ambiguous create: one after the settle delay, one retry. */
#define FLY_ADOPT_LOOKS 2
/* Wait replies that are neither 200 nor 408 in a row before the run gives up;
 * each one is followed by a GET that says what the machine is doing. */
#define FLY_WAIT_ERRORS_MAX 5
#define FLY_DEFAULT_LOGS_URL "https://api.fly.io"
/* Fly's bucket counts from when our requests arrive, ours from when they
 * leave: a request delayed on the way (a loaded host, a slow link) makes
 * Fly's refill later than ours. This much behind it costs nothing and keeps
 * a paced create from being the one answered 429. */
#define FLY_PACE_MARGIN_MS 25
#define FLY_WORKSPACE "/workspace"

typedef struct fly_provider fly_provider;
typedef struct fly_sweep fly_sweep;

typedef enum fly_state {
    FLY_CREATING,
    FLY_ADOPTING,
    FLY_BOOTING,
    FLY_PROBING,
    FLY_RUNNING,
    FLY_INSPECTING,
    FLY_STOPPING,
    FLY_STOP_WAIT,
    FLY_LOGS,                     /* draining the logs API after the machine stopped */
    FLY_DESTROYING,
    FLY_DONE,
} fly_state;

static const char *const state_names[] = {
    "creating", "adopting", "booting", "probing", "running", "inspecting",
    "stopping", "stop_wait", "logs", "destroying", "done",
};

typedef void (*fly_step)(sbx_run *r);

struct sbx_run {
    fly_provider *f;
    sbx_run *prev, *next;
    fly_state state;
    char job_id[SBX_ID_MAX + 1];
    size_t slot;                  /* index into the provider's slots */
    int64_t token;
    char run_id[17];              /* metadata sbx_run: finds a create whose reply was lost */
    json_object *create;          /* the create body; "region" changes per try */
    size_t region_idx;
    int creates;                  /* create requests sent */
    int throttled;                /* creates answered 429 */
    int looks;                    /* lists since the last ambiguous create */
    sbx_run *pace_next;           /* in the provider's create queue */
    int pacing;                   /* ... while this is set */
    int wait_errors;              /* wait replies neither 200 nor 408, in a row */
    uint64_t created_ms;          /* when the machine id became known */
    char id[SBX_FLY_ID_MAX + 1];
    char instance_id[FLY_IID_MAX + 1];
    int wait_s;                   /* next wait?state=started slice */
    int timeout_s;
    uint64_t deadline_ms, boot_deadline_ms;
    int started;                  /* STARTED was reported */
    int aborting;                 /* cancel or timeout asked; abort says which */
    sbx_outcome abort;
    int error;                    /* res.error says what went wrong: ERROR */
    int job_fault;                /* ... and the job caused it: JOB_ERROR (provider.h) */
    sbx_result res;
    sbx__fly_call call;
    sbx_timer deadline_t;
    sbx_timer defer_t;            /* runs `deferred` from the loop */
    fly_step deferred;
    sbx_run_cb cb;
    void *arg;
    sbx__fly_logs logs;           /* output: polled while it runs, drained in LOGS */
    sbx__fly_srun *sess;          /* a session's run (fly_session.c), or NULL */
};

struct fly_sweep {
    fly_provider *f;
    fly_sweep *next;
    sbx__fly_call call;
    char (*ids)[SBX_FLY_ID_MAX + 1];
    size_t n, i;
    int destroyed, failed;
    sbx_fly_sweep_cb cb;
    void *arg;
};

struct fly_provider {
    sbx_provider base;            /* first: the vtable's sbx_provider * is this */
    sbx__fly_api api;             /* URL, secret, HTTP client, retry policy */
    char app[SBX_FLY_APP_MAX + 1];
    char worker_id[SBX_FLY_WORKER_MAX + 1];
    char regions[FLY_REGIONS_MAX][FLY_REGION_MAX + 1];
    size_t nregions;
    char cpu_kind[16];
    int cpus, memory_mb;
    char *image;
    char *logs_url;               /* the logs API's base, or NULL: no output */
    int stop_grace_s, boot_timeout_s, first_wait_s, run_wait_s;
    int settle_ms, logs_poll_ms, logs_drain_ms;
    /* The create pacer: one token bucket per app, shared by every run, so a
     * burst of slots does not spend its attempts on 429s (Fly allows about
     * 1 create/s per app, burst 3). Runs wait in FIFO order. */
    int create_rate, create_burst;
    double pace_tokens;
    uint64_t pace_last_ms;
    uint64_t pace_blocked_until;  /* a 429's Retry-After holds every run */
    sbx_run *pace_head, *pace_tail;
    sbx_timer pace_t;
    char **slot_ids;
    sbx_run **slot_runs;          /* the run holding each slot, or NULL */
    size_t nslots;
    sbx_run *runs;
    size_t nruns;
    fly_sweep *sweeps;
    sbx__fly_sessions sessions;   /* what session runs and PAUSE/DESTROY share */
};

/* ---- small helpers ---- */

static int valid_chars(const char *s, size_t max, const char *extra)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isdigit(c) || (c >= 'a' && c <= 'z') || strchr(extra, c)))
            return 0;
    }
    return 1;
}

/* Percent-encodes s for a query value (RFC 3986 unreserved pass through). */
static void url_escape(const char *s, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *s && o + 4 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
}

/* A create refused for lack of room. As Fly's Go client decides it (fly-go
 * flaps/flaps_error.go, CapacityScopeOf): the body's "status" says
 * "insufficient_capacity" whatever the HTTP code; only a body without a
 * status falls back to flyd's phrases, and only on a 409. */
static int capacity_error(const sbx_http_res *res)
{
    json_object *o;
    const char *st, *msg;
    int yes = 0;

    if (res->code != SBX_HTTP_OK || !res->body)
        return 0;
    o = json_tokener_parse(res->body);
    st = sbx__fly_jstr(o, "status");
    msg = sbx__fly_jstr(o, "error");
    if (st && *st)
        yes = strcmp(st, "insufficient_capacity") == 0;
    else if (res->status == 409 && msg)
        yes = strstr(msg, "available to fulfill request") != NULL ||
              (strlen(msg) >= 11 && strcmp(msg + strlen(msg) - 11, "no capacity") == 0);
    json_object_put(o);
    return yes;
}

/* A create whose reply proves nothing: no reply at all (lost, timed out, cut),
 * a 408, or a 5xx. The machine may exist and run. */
static int ambiguous(const sbx_http_res *res)
{
    if (res->code == SBX_HTTP_EABORTED)
        return 0;
    if (res->code != SBX_HTTP_OK)
        return 1;
    return res->status == 408 || res->status >= 500;
}

/* 409 because this run's name is taken: an earlier create of ours made it
 * (machines-resource: "name: Unique name for this Machine"). */
static int name_taken(const sbx_http_res *res)
{
    return res->code == SBX_HTTP_OK && res->status == 409 && res->body &&
           strstr(res->body, "already exists") != NULL;
}

/* ---- runs ---- */

static void run_set(sbx_run *r, fly_state s)
{
    sbx_debug("fly", "run %s machine=%s %s -> %s", r->job_id, r->id[0] ? r->id : "-",
              state_names[r->state], state_names[s]);
    r->state = s;
}

static void run_defer(sbx_run *r, fly_step step, uint64_t after_ms)
{
    r->deferred = step;
    sbx_timer_start(r->f->base.loop, &r->defer_t, after_ms);
}

static void defer_fire(sbx_timer *t)
{
    sbx_run *r = t->data;
    fly_step step = r->deferred;
    r->deferred = NULL;
    if (step)
        step(r);
}

static void run_fail(sbx_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void run_fail(sbx_run *r, const char *fmt, ...)
{
    va_list ap;
    if (r->error)
        return;                   /* the first cause is the one worth keeping */
    r->error = 1;
    va_start(ap, fmt);
    vsnprintf(r->res.error, sizeof(r->res.error), fmt, ap);
    va_end(ap);
}

static long remaining_s(const sbx_run *r)
{
    uint64_t now = sbx_now_ms();
    if (now >= r->deadline_ms)
        return 0;
    return (long)((r->deadline_ms - now + 999) / 1000);
}

static int wait_slice(long want, long left)
{
    long s = want < left ? want : left;
    if (s > FLY_WAIT_MAX_S)
        s = FLY_WAIT_MAX_S;
    return s < 1 ? 1 : (int)s;
}

static void pace_remove(sbx_run *r);
static void run_unlink(sbx_run *r);

static void run_finish(sbx_run *r)
{
    fly_provider *f = r->f;
    sbx_result *res = &r->res;
    sbx_run_cb cb = r->cb;
    void *arg = r->arg;

    run_set(r, FLY_DONE);
    pace_remove(r);
    sbx__fly_logs_free(&r->logs);
    sbx__fly_call_free(&r->call);
    sbx_timer_stop(f->base.loop, &r->deadline_t);
    sbx_timer_stop(f->base.loop, &r->defer_t);
    res->log_tail_len = sbx__utf8_sanitize(r->logs.tail, r->logs.tail_len, res->log_tail,
                                           sizeof(res->log_tail));
    /* provider.h's life of a run is STARTED then FINISHED, and the other
     * providers and the conformance scenarios read it as "always both": a
     * run that ended before its machine started still gets STARTED first. */
    if (!r->started) {
        r->started = 1;
        cb(arg, SBX_RUN_STARTED, res);
    }
    if (r->aborting) {
        res->outcome = r->abort;
        if (!res->error[0])
            snprintf(res->error, sizeof(res->error), "%s",
                     r->abort == SBX_OUTCOME_TIMED_OUT ? "timed out" : "canceled");
    } else if (r->error) {
        res->outcome = r->job_fault ? SBX_OUTCOME_JOB_ERROR : SBX_OUTCOME_ERROR;
    } else {
        res->outcome = res->exit_code == 0 ? SBX_OUTCOME_SUCCEEDED : SBX_OUTCOME_FAILED;
    }
    /* provider.h: output the provider could not read is said in the error */
    if (!res->error[0] && r->logs.error[0])
        snprintf(res->error, sizeof(res->error), "%s", r->logs.error);
    sbx_info("fly", "run %s machine=%s outcome=%d exit=%d %s", r->job_id,
             r->id[0] ? r->id : "-", (int)res->outcome, res->exit_code, res->error);
    run_unlink(r);
    json_object_put(r->create);
    r->create = NULL;
    cb(arg, SBX_RUN_FINISHED, res);
    free(r);
}

/* Reports STARTED once. Returns 0 when the callback canceled the run, which
 * then already moved on (the caller must not touch the call). */
static int run_started(sbx_run *r)
{
    if (!r->started) {
        r->started = 1;
        r->cb(r->arg, SBX_RUN_STARTED, &r->res);
    }
    return !r->aborting;
}

static void step_create(sbx_run *r);
static void step_boot_wait(sbx_run *r);
static void step_run_wait(sbx_run *r);
static void step_probe(sbx_run *r);
static void step_inspect(sbx_run *r);
static void step_stop(sbx_run *r);
static void step_destroy(sbx_run *r);

/* Reads the exit code from a machine's events. Returns 0, or -1 when there
 * is no exit event. */
static int parse_exit(sbx_run *r, json_object *m)
{
    json_object *events = sbx__fly_jobj(m, "events"), *best = NULL, *req, *ee, *v;
    int64_t best_ts = INT64_MIN;
    size_t n;

    if (!events || !json_object_is_type(events, json_type_array))
        return -1;
    n = json_object_array_length(events);
    for (size_t i = 0; i < n; i++) {
        json_object *ev = json_object_array_get_idx(events, i);
        const char *type = sbx__fly_jstr(ev, "type");
        int64_t ts = json_object_get_int64(sbx__fly_jobj(ev, "timestamp"));
        if (type && strcmp(type, "exit") == 0 && ts > best_ts) {
            best = ev;
            best_ts = ts;
        }
    }
    if (!best)
        return -1;
    req = sbx__fly_jobj(best, "request");
    ee = sbx__fly_jobj(sbx__fly_jobj(req, "MonitorEvent"), "exit_event");
    if (!ee)
        ee = sbx__fly_jobj(req, "exit_event");
    v = sbx__fly_jobj(ee, "exit_code");
    r->res.exit_code = v ? json_object_get_int(v) : 0;
    v = sbx__fly_jobj(ee, "oom_killed");
    if (v && json_object_get_boolean(v)) {
        if (r->res.exit_code == 0)
            r->res.exit_code = 137;
        snprintf(r->res.error, sizeof(r->res.error), "out of memory");
    }
    return 0;
}

/* ---- live output (fly_logs.c) ---- */

static void on_logs_drained(sbx__fly_logs *l)
{
    step_destroy(l->owner);
}

/* What comes after the build stopped (or was found stopped): read the logs
 * to their end, then destroy. */
static void step_after_stop(sbx_run *r)
{
    run_set(r, FLY_LOGS);
    if (sbx__fly_logs_drain(&r->logs) != 0)
        step_destroy(r);
}

/* ---- creating: the per-app pacer, ambiguous replies, adoption ---- */

static void pace_refill(fly_provider *f, uint64_t now)
{
    if (now > f->pace_last_ms) {
        f->pace_tokens += (double)(now - f->pace_last_ms) * f->create_rate / 1000.0;
        if (f->pace_tokens > f->create_burst)
            f->pace_tokens = f->create_burst;
    }
    f->pace_last_ms = now;
}

/* 0 and a token taken, or how many ms until one is there. */
static uint64_t pace_take(fly_provider *f)
{
    uint64_t now = sbx_now_ms();

    pace_refill(f, now);
    if (now < f->pace_blocked_until)
        return f->pace_blocked_until - now;
    if (f->pace_tokens >= 1.0) {
        f->pace_tokens -= 1.0;
        return 0;
    }
    return (uint64_t)((1.0 - f->pace_tokens) * 1000.0 / f->create_rate) + FLY_PACE_MARGIN_MS;
}

static void step_create_now(sbx_run *r);

static void pace_kick(fly_provider *f)
{
    while (f->pace_head) {
        sbx_run *r = f->pace_head;
        uint64_t d = pace_take(f);
        if (d) {
            sbx_timer_start(f->base.loop, &f->pace_t, d);
            return;
        }
        f->pace_head = r->pace_next;
        if (!f->pace_head)
            f->pace_tail = NULL;
        r->pace_next = NULL;
        r->pacing = 0;
        step_create_now(r);
    }
}

static void pace_fire(sbx_timer *t)
{
    pace_kick(t->data);
}

/* front: a run Fly just throttled keeps its place at the head. */
static void pace_enqueue(sbx_run *r, int front)
{
    fly_provider *f = r->f;

    r->pacing = 1;
    if (front) {
        r->pace_next = f->pace_head;
        f->pace_head = r;
        if (!f->pace_tail)
            f->pace_tail = r;
    } else {
        r->pace_next = NULL;
        if (f->pace_tail)
            f->pace_tail->pace_next = r;
        else
            f->pace_head = r;
        f->pace_tail = r;
    }
    pace_kick(f);
}

static void pace_remove(sbx_run *r)
{
    fly_provider *f = r->f;
    sbx_run **pp = &f->pace_head, *prev = NULL;

    if (!r->pacing)
        return;
    while (*pp && *pp != r) {
        prev = *pp;
        pp = &(*pp)->pace_next;
    }
    if (*pp) {
        *pp = r->pace_next;
        if (f->pace_tail == r)
            f->pace_tail = prev;
    }
    r->pace_next = NULL;
    r->pacing = 0;
}

static int take_machine(sbx_run *r, json_object *m)
{
    const char *id = sbx__fly_jstr(m, "id"), *iid = sbx__fly_jstr(m, "instance_id");
    if (!id || !valid_chars(id, SBX_FLY_ID_MAX, "") || !iid || strlen(iid) > FLY_IID_MAX)
        return -1;
    snprintf(r->id, sizeof(r->id), "%s", id);
    snprintf(r->instance_id, sizeof(r->instance_id), "%s", iid);
    snprintf(r->res.instance, sizeof(r->res.instance), "%s", id);
    r->created_ms = sbx_now_ms();
    return 0;
}

static void on_created(sbx_run *r, json_object *m)
{
    if (take_machine(r, m) != 0) {
        run_fail(r, "create: reply has no usable machine id");
        run_finish(r);
        return;
    }
    sbx_info("fly", "run %s machine=%s region=%s", r->job_id, r->id,
             sbx__fly_jstr(m, "region") ? sbx__fly_jstr(m, "region") : "?");
    if (r->aborting) {
        step_destroy(r);
        return;
    }
    sbx__fly_logs_start(&r->logs, r->id);
    r->wait_s = r->f->first_wait_s;
    step_boot_wait(r);
}

static void step_adopt_look(sbx_run *r);

static void on_adopt(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx_run *r = c->owner;
    fly_provider *f = r->f;
    json_object *list = NULL, *found = NULL;
    const char *st;
    char why[200];

    if (res->code != SBX_HTTP_OK || res->status != 200 ||
        !(list = json_tokener_parse(res->body)) || !json_object_is_type(list, json_type_array)) {
        sbx__fly_api_error(res, why, sizeof(why));
        run_fail(r, "create failed and the machine list too (%s); a sweep removes any leftover",
                 why);
        json_object_put(list);
        run_finish(r);
        return;
    }
    /* Destroyed ones count too: a short build may have run and ended (and
     * auto_destroy removed its machine) before the list showed it; creating
     * again would run it twice. A live one is preferred. */
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *m = json_object_array_get_idx(list, i);
        const char *ms = sbx__fly_jstr(m, "state");
        if (!found || (ms && strcmp(ms, "destroyed") != 0 && strcmp(ms, "destroying") != 0))
            found = m;
    }
    st = found ? sbx__fly_jstr(found, "state") : NULL;
    if (found && st && strcmp(st, "started") != 0 && strcmp(st, "starting") != 0 &&
        strcmp(st, "created") != 0 && take_machine(r, found) == 0 && parse_exit(r, found) == 0) {
        /* it already ran (and may be gone): its exit is in the list's events */
        sbx_info("fly", "run %s: adopting machine %s, which already ran (%s)", r->job_id, r->id,
                 st);
        sbx__fly_logs_start(&r->logs, r->id);
        if (run_started(r))
            step_after_stop(r);
    } else if (found) {
        sbx_info("fly", "run %s: adopting machine %s from a create whose reply proved nothing",
                 r->job_id, sbx__fly_jstr(found, "id") ? sbx__fly_jstr(found, "id") : "?");
        on_created(r, found);
    } else if (r->looks < FLY_ADOPT_LOOKS) {
        /* the list may not show it yet: settle once more and look again */
        run_defer(r, step_adopt_look, (uint64_t)f->settle_ms);
    } else if (r->aborting) {
        run_finish(r);
    } else if (r->creates >= f->api.max_attempts) {
        run_fail(r, "create: gave up after %d attempts", r->creates);
        run_finish(r);
    } else {
        run_set(r, FLY_CREATING);
        run_defer(r, step_create, sbx__fly_backoff_ms(&f->api, r->creates, 0));
    }
    json_object_put(list);
}

static void step_adopt_look(sbx_run *r)
{
    fly_provider *f = r->f;

    r->looks++;
    sbx__fly_call_start(&r->call, "GET", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX,
                        on_adopt, "/apps/%s/machines?include_deleted=true&metadata.sbx_run=%s",
                        f->app, r->run_id);
}

static void on_create(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx_run *r = c->owner;
    fly_provider *f = r->f;
    json_object *m;
    char why[200];

    /* before the 200 case: Fly marks capacity in the body whatever the code */
    if (capacity_error(res)) {
        sbx_info("fly", "run %s: no capacity in %s (HTTP %ld)", r->job_id,
                 f->nregions ? f->regions[r->region_idx] : "the default region", res->status);
        if (!r->aborting && r->region_idx + 1 < f->nregions) {
            r->region_idx++;
            step_create(r);
            return;
        }
        run_fail(r, "no capacity in any configured region");
        run_finish(r);
        return;
    }
    if (res->code == SBX_HTTP_OK && res->status == 429 && !r->aborting) {
        /* Fly asks every create of this app to wait: the pacer holds them
         * all, and this run keeps its place; not a failed attempt. */
        uint64_t until = sbx_now_ms() + sbx__fly_retry_after_ms(res);
        r->creates--;
        if (++r->throttled <= SBX_FLY_MAX_THROTTLED) {
            if (until > f->pace_blocked_until)
                f->pace_blocked_until = until;
            sbx_debug("fly", "run %s: create throttled (%d), all creates wait %llu ms",
                      r->job_id, r->throttled,
                      (unsigned long long)(f->pace_blocked_until - sbx_now_ms()));
            run_set(r, FLY_CREATING);
            pace_enqueue(r, 1);
            return;
        }
    }
    if (res->code == SBX_HTTP_OK && res->status == 200) {
        m = json_tokener_parse(res->body);
        on_created(r, m);
        json_object_put(m);
        return;
    }
    if (ambiguous(res) || name_taken(res)) {
        /* Maybe created. Fly's list is eventually consistent, so look only
         * after a settle delay (flyctl waits ~500 ms), then once more. */
        sbx__fly_api_error(res, why, sizeof(why));
        sbx_warn("fly", "run %s: create answered %s; looking for the machine in %d ms",
                 r->job_id, why, f->settle_ms);
        run_set(r, FLY_ADOPTING);
        r->looks = 0;
        run_defer(r, step_adopt_look, (uint64_t)f->settle_ms);
        return;
    }
    sbx__fly_api_error(res, why, sizeof(why));
    /* 400/422 that is not about capacity: the machine config the job made
     * (its image, its files, its size) is refused, and would be again. */
    if (!r->error && (res->status == 400 || res->status == 422))
        r->job_fault = 1;
    run_fail(r, "create: %s", why);
    run_finish(r);
}

/* Queues the create behind the app's pacer. */
static void step_create(sbx_run *r)
{
    if (r->aborting) {
        run_finish(r);
        return;
    }
    run_set(r, FLY_CREATING);
    pace_enqueue(r, 0);
}

static void step_create_now(sbx_run *r)
{
    fly_provider *f = r->f;
    const char *body;
    char *copy;

    if (f->nregions)
        json_object_object_add(r->create, "region",
                               json_object_new_string(f->regions[r->region_idx]));
    body = json_object_to_json_string_ext(r->create, JSON_C_TO_STRING_PLAIN |
                                                     JSON_C_TO_STRING_NOSLASHESCAPE);
    copy = body ? strdup(body) : NULL;
    if (!copy) {
        run_fail(r, "create: out of memory");
        run_defer(r, run_finish, 0);
        return;
    }
    r->creates++;
    sbx__fly_call_start(&r->call, "POST", copy, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_OWN_429,
                        on_create, "/apps/%s/machines", f->app);
}

/* The build's version is gone: Fly replaced it (an update) or migrated it to
 * another host; the machine runs the same config again as a new version
 * (machine-states: replaced, migrated). Returns what happened, or NULL. */
static const char *version_lost(const sbx_run *r, json_object *m)
{
    const char *st = sbx__fly_jstr(m, "state"), *iid = sbx__fly_jstr(m, "instance_id");

    if (st && (strcmp(st, "replaced") == 0 || strcmp(st, "migrated") == 0 ||
               strcmp(st, "replacing") == 0))
        return st;
    if (iid && r->instance_id[0] && strcmp(iid, r->instance_id) != 0) {
        /* the newest event that says how, if any */
        json_object *evs = sbx__fly_jobj(m, "events");
        size_t n = evs && json_object_is_type(evs, json_type_array)
                       ? json_object_array_length(evs) : 0;
        int64_t best_ts = INT64_MIN;
        const char *how = "replaced by a new version";
        for (size_t i = 0; i < n; i++) {
            json_object *ev = json_object_array_get_idx(evs, i);
            const char *es = sbx__fly_jstr(ev, "status");
            int64_t ts = json_object_get_int64(sbx__fly_jobj(ev, "timestamp"));
            if (es && (strcmp(es, "migrated") == 0 || strcmp(es, "replaced") == 0) &&
                ts > best_ts) {
                best_ts = ts;
                how = es;
            }
        }
        return how;
    }
    return NULL;
}

/* The machine as a GET shows it, after BOOTING's wait ran out. */
static void on_probe(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx_run *r = c->owner;
    json_object *m = NULL;
    const char *st, *lost;
    char why[200];

    if (res->code == SBX_HTTP_OK && res->status == 404 && !r->started &&
        sbx_now_ms() < r->created_ms + FLY_NEW_404_MS) {
        /* not replicated yet (flyctl PR #4618): look again after a settle */
        sbx_debug("fly", "run %s: new machine %s not found yet", r->job_id, r->id);
        run_defer(r, step_boot_wait, (uint64_t)r->f->settle_ms);
        return;
    }
    if (res->code != SBX_HTTP_OK || res->status != 200 || !(m = json_tokener_parse(res->body))) {
        sbx__fly_api_error(res, why, sizeof(why));
        run_fail(r, "machine %s: %s", r->id, why);
        if (res->status == 404)
            run_finish(r);
        else
            step_destroy(r);
        return;
    }
    st = sbx__fly_jstr(m, "state");
    st = st ? st : "";
    if ((lost = version_lost(r, m)) != NULL) {
        /* DELETE ?force=true also stops the new version's second run */
        run_fail(r, "machine %s: the build's version was %s by Fly; retried", r->id, lost);
        step_destroy(r);
    } else if (strcmp(st, "launch_failed") == 0) {
        run_fail(r, "machine %s failed to launch (launch_failed)", r->id);
        step_destroy(r);
    } else if (strcmp(st, "started") == 0) {
        if (run_started(r))
            step_run_wait(r);
    } else if (strcmp(st, "stopped") == 0 || strcmp(st, "destroying") == 0 ||
               strcmp(st, "destroyed") == 0) {
        /* It ran and ended between two looks: the events have the exit. */
        if (run_started(r)) {
            if (parse_exit(r, m) != 0)
                run_fail(r, "machine %s %s without an exit event", r->id, st);
            step_after_stop(r);
        }
    } else if (strcmp(st, "failed") == 0) {
        run_fail(r, "machine %s failed%s", r->id, r->started ? "" : " to start");
        step_destroy(r);
    } else if (sbx_now_ms() >= r->boot_deadline_ms) {
        run_fail(r, "machine %s stuck in %s", r->id, st);
        step_destroy(r);
    } else {
        r->wait_s *= 2;
        step_boot_wait(r);
    }
    json_object_put(m);
}

static void step_probe(sbx_run *r)
{
    run_set(r, FLY_PROBING);
    sbx__fly_call_start(&r->call, "GET", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX, on_probe,
                        "/apps/%s/machines/%s", r->f->app, r->id);
}

static void on_boot_wait(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx_run *r = c->owner;

    if (res->code == SBX_HTTP_OK && res->status == 200) {
        if (run_started(r))
            step_run_wait(r);
        return;
    }
    /* 408, or anything else: look at the machine to know what it is doing. */
    step_probe(r);
}

static void step_boot_wait(sbx_run *r)
{
    int s = wait_slice(r->wait_s, remaining_s(r));
    run_set(r, FLY_BOOTING);
    sbx__fly_call_start(&r->call, "GET", NULL, (uint32_t)s * 1000u + FLY_WAIT_SLACK_MS, SBX_FLY_RETRY_5XX,
                        on_boot_wait, "/apps/%s/machines/%s/wait?state=started&timeout=%d",
                        r->f->app, r->id, s);
}

static void on_run_wait(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx_run *r = c->owner;
    char why[200];

    if (res->code == SBX_HTTP_OK && (res->status == 200 || res->status == 404)) {
        r->wait_errors = 0;
        step_inspect(r);          /* 404: gone already; the GET says how */
    } else if (res->code == SBX_HTTP_OK && res->status == 408) {
        r->wait_errors = 0;
        step_probe(r);            /* still started: wait again; the deadline timer ends this */
    } else if (++r->wait_errors < FLY_WAIT_ERRORS_MAX) {
        /* "failed to reach desired state" and the like: the machine's state
         * says what happened (failed, replaced, migrated, or still running) */
        sbx__fly_api_error(res, why, sizeof(why));
        sbx_info("fly", "run %s: wait on machine %s answered %s; looking at it", r->job_id,
                 r->id, why);
        step_probe(r);
    } else {
        sbx__fly_api_error(res, why, sizeof(why));
        run_fail(r, "waiting for machine %s: %s", r->id, why);
        step_stop(r);
    }
}

static void step_run_wait(sbx_run *r)
{
    int s = wait_slice(r->f->run_wait_s, remaining_s(r));
    run_set(r, FLY_RUNNING);
    sbx__fly_call_start(&r->call, "GET", NULL, (uint32_t)s * 1000u + FLY_WAIT_SLACK_MS, SBX_FLY_RETRY_5XX,
                        on_run_wait,
                        "/apps/%s/machines/%s/wait?state=stopped&instance_id=%s&timeout=%d",
                        r->f->app, r->id, r->instance_id, s);
}

static void on_inspect(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx_run *r = c->owner;
    json_object *m = NULL;
    const char *st, *lost;
    char why[200];

    if (res->code != SBX_HTTP_OK || res->status != 200 || !(m = json_tokener_parse(res->body))) {
        sbx__fly_api_error(res, why, sizeof(why));
        run_fail(r, "reading machine %s after it stopped: %s", r->id, why);
        if (res->status == 404)
            run_finish(r);
        else
            step_destroy(r);
        return;
    }
    st = sbx__fly_jstr(m, "state");
    if ((lost = version_lost(r, m)) != NULL) {
        run_fail(r, "machine %s: the build's version was %s by Fly; retried", r->id, lost);
        json_object_put(m);
        step_destroy(r);
        return;
    }
    if (st && strcmp(st, "failed") == 0)
        run_fail(r, "machine %s failed", r->id);
    else if (st && strcmp(st, "launch_failed") == 0)
        run_fail(r, "machine %s failed to launch (launch_failed)", r->id);
    else if (parse_exit(r, m) != 0)
        run_fail(r, "machine %s stopped without an exit event", r->id);
    json_object_put(m);
    step_after_stop(r);
}

static void step_inspect(sbx_run *r)
{
    run_set(r, FLY_INSPECTING);
    sbx__fly_call_start(&r->call, "GET", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX, on_inspect,
                        "/apps/%s/machines/%s", r->f->app, r->id);
}

static void on_stop_wait(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx_run *r = c->owner;
    (void)res;                    /* stopped or not, DELETE ?force=true follows */
    step_after_stop(r);
}

static void on_stop(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx_run *r = c->owner;
    int s = r->f->stop_grace_s + 5;

    if (res->code == SBX_HTTP_OK && res->status == 404) {
        run_finish(r);
        return;
    }
    if (res->code != SBX_HTTP_OK || res->status != 200) {
        step_destroy(r);
        return;
    }
    run_set(r, FLY_STOP_WAIT);
    sbx__fly_call_start(&r->call, "GET", NULL,
                        (uint32_t)wait_slice(s, s) * 1000u + FLY_WAIT_SLACK_MS, SBX_FLY_RETRY_5XX, on_stop_wait,
                        "/apps/%s/machines/%s/wait?state=stopped&instance_id=%s&timeout=%d",
                        r->f->app, r->id, r->instance_id, wait_slice(s, s));
}

static void step_stop(sbx_run *r)
{
    char body[64];
    snprintf(body, sizeof(body), "{\"signal\":\"SIGTERM\",\"timeout\":\"%ds\"}",
             r->f->stop_grace_s);
    run_set(r, FLY_STOPPING);
    /* NULL from strdup only costs the signal: Fly's default stop then applies */
    sbx__fly_call_start(&r->call, "POST", strdup(body), SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX, on_stop,
                        "/apps/%s/machines/%s/stop", r->f->app, r->id);
}

static void on_destroy(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx_run *r = c->owner;

    if (res->code != SBX_HTTP_OK || (res->status != 200 && res->status != 404)) {
        char why[200];
        sbx__fly_api_error(res, why, sizeof(why));
        sbx_warn("fly", "run %s: machine %s not destroyed (%s); the sweep will", r->job_id,
                 r->id, why);
    }
    run_finish(r);
}

static void step_destroy(sbx_run *r)
{
    run_set(r, FLY_DESTROYING);
    sbx__fly_call_start(&r->call, "DELETE", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX, on_destroy,
                        "/apps/%s/machines/%s?force=true", r->f->app, r->id);
}

/* Cancel or timeout. Never calls back from here (see provider.h). */
static void run_abort(sbx_run *r, sbx_outcome why)
{
    if (r->aborting)
        return;
    r->aborting = 1;
    r->abort = why;
    switch (r->state) {
    case FLY_CREATING:
        if (r->call.h)
            return;               /* its reply says whether a machine exists */
        pace_remove(r);
        sbx__fly_call_cancel(&r->call);
        run_defer(r, run_finish, 0);
        return;
    case FLY_ADOPTING:
        return;                   /* the looks say whether there is a machine to destroy */
    case FLY_BOOTING:
    case FLY_PROBING:
    case FLY_RUNNING:
        sbx__fly_call_cancel(&r->call);
        sbx_timer_stop(r->f->base.loop, &r->defer_t);
        r->deferred = NULL;
        step_stop(r);
        return;
    default:
        return;                   /* already on its way to DESTROYING */
    }
}

static void deadline_fire(sbx_timer *t)
{
    sbx_run *r = t->data;
    if (r->aborting)
        return;
    snprintf(r->res.error, sizeof(r->res.error), "timed out after %d s", r->timeout_s);
    run_abort(r, SBX_OUTCOME_TIMED_OUT);
}

/* ---- the create body ---- */

/* Fly's guest presets (fly.io/docs/machines/guides-examples/machine-sizing,
 * and the presets in fly-go's machine_types.go): shared CPUs come in 1, 2, 4
 * or 8, performance CPUs in 1, 2, 4, 8 or 16; memory in multiples of 256 MB,
 * per CPU between 256 and 2048 MB (shared) or 2048 and 8192 MB
 * (performance). */
static int max_cpus(int perf)
{
    return perf ? 16 : 8;
}

static int preset_cpus(int n, int perf)
{
    return n == 1 || n == 2 || n == 4 || n == 8 || (perf && n == 16);
}

/* The smallest preset that fits the job (never below the configured size).
 * More memory than the CPUs allow takes more CPUs. A size no preset holds is
 * the job's fault: -1 and the reason in err. */
static int size_guest(const fly_provider *f, const sbx_job *job, int *cpus, int *mem, char *err,
                      size_t errlen)
{
    int perf = strcmp(f->cpu_kind, "performance") == 0;
    int lo = perf ? 2048 : 256, hi = perf ? 8192 : 2048, top = max_cpus(perf);
    long m = job->memory_mb > f->memory_mb ? job->memory_mb : f->memory_mb;
    int c = f->cpus;

    if (job->cpus > top) {
        snprintf(err, errlen, "cpus=%g: a Fly %s machine has at most %d CPUs", job->cpus,
                 f->cpu_kind, top);
        return -1;
    }
    while (c < job->cpus)
        c *= 2;
    m = (m + 255) / 256 * 256;
    while (m > (long)hi * c && c < top)
        c *= 2;
    if (m > (long)hi * c) {
        snprintf(err, errlen, "memory_mb=%d: a Fly %s machine has at most %d MB (%d CPUs x %d MB)",
                 job->memory_mb, f->cpu_kind, hi * top, top, hi);
        return -1;
    }
    if (m < (long)lo * c)
        m = (long)lo * c;
    *cpus = c;
    *mem = (int)m;
    return 0;
}

static json_object *build_create(fly_provider *f, const sbx_run_req *req, const char *image,
                                 int cpus, int mem, const char *run_id)
{
    const sbx_job *job = req->job;
    json_object *body = json_object_new_object(), *cfg = json_object_new_object();
    json_object *guest = json_object_new_object(), *env = json_object_new_object();
    json_object *meta = json_object_new_object(), *init = json_object_new_object();
    json_object *restart = json_object_new_object(), *exec;
    char tok[24];

    json_object_object_add(cfg, "image", json_object_new_string(image));
    json_object_object_add(guest, "cpu_kind", json_object_new_string(f->cpu_kind));
    json_object_object_add(guest, "cpus", json_object_new_int(cpus));
    json_object_object_add(guest, "memory_mb", json_object_new_int(mem));
    json_object_object_add(cfg, "guest", guest);
    for (size_t i = 0; i < job->nenv; i++)
        json_object_object_add(env, job->env[i].key, json_object_new_string(job->env[i].value));
    json_object_object_add(cfg, "env", env);

    /* /bin/sh puts the build in the workspace; "$@" keeps argv exact. */
    if (job->argv) {
        static const char *const pre[] = {
            "/bin/sh", "-c",
            "mkdir -p " FLY_WORKSPACE " && cd " FLY_WORKSPACE " || exit 126; exec \"$@\"", "sbx"};
        exec = sbx__fly_str_array(pre, 4);
        for (size_t i = 0; i < job->argc; i++)
            json_object_array_add(exec, json_object_new_string(job->argv[i]));
    } else {
        static const char prefix[] = "mkdir -p " FLY_WORKSPACE " && cd " FLY_WORKSPACE
                                     " || exit 126\n";
        size_t n = sizeof(prefix) + strlen(job->script);
        char *s = malloc(n);
        const char *sh[3] = {"/bin/sh", "-c", s};
        if (!s)
            goto fail;
        snprintf(s, n, "%s%s", prefix, job->script);
        exec = sbx__fly_str_array(sh, 3);
        free(s);
    }
    json_object_object_add(init, "exec", exec);
    json_object_object_add(cfg, "init", init);

    if (job->nfiles) {
        json_object *files = json_object_new_array();
        for (size_t i = 0; i < job->nfiles; i++) {
            json_object *fo = json_object_new_object();
            char path[SBX_ID_MAX * 8];
            char *b64 = sbx__base64((const unsigned char *)job->files[i].value,
                                    strlen(job->files[i].value));
            if (!b64) {
                json_object_put(files);
                json_object_put(fo);
                goto fail;
            }
            snprintf(path, sizeof(path), FLY_WORKSPACE "/%s", job->files[i].key);
            json_object_object_add(fo, "guest_path", json_object_new_string(path));
            json_object_object_add(fo, "raw_value", json_object_new_string(b64));
            free(b64);
            json_object_array_add(files, fo);
        }
        json_object_object_add(cfg, "files", files);
    }

    snprintf(tok, sizeof(tok), "%lld", (long long)req->token);
    json_object_object_add(meta, "sbx_job", json_object_new_string(job->job_id));
    json_object_object_add(meta, "sbx_token", json_object_new_string(tok));
    json_object_object_add(meta, "sbx_worker", json_object_new_string(f->worker_id));
    json_object_object_add(meta, "sbx_slot", json_object_new_string(req->slot));
    json_object_object_add(meta, "sbx_run", json_object_new_string(run_id));
    json_object_object_add(cfg, "metadata", meta);
    json_object_object_add(cfg, "auto_destroy", json_object_new_boolean(1));
    json_object_object_add(restart, "policy", json_object_new_string("no"));
    json_object_object_add(cfg, "restart", restart);
    json_object_object_add(body, "config", cfg);
    {
        /* a unique name per run: a second create of the same run is refused
         * (409) instead of making a second machine */
        char name[32];
        snprintf(name, sizeof(name), "sbx-%s", run_id);
        json_object_object_add(body, "name", json_object_new_string(name));
    }
    return body;
fail:
    json_object_put(body);
    json_object_put(cfg);
    json_object_put(init);
    json_object_put(restart);
    json_object_put(meta);
    return NULL;
}

/* ---- session runs (fly_session.c) ---- */

static void run_unlink(sbx_run *r)
{
    fly_provider *f = r->f;
    if (r->prev)
        r->prev->next = r->next;
    else
        f->runs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    f->nruns--;
    f->slot_runs[r->slot] = NULL;
}

static void run_link(sbx_run *r, size_t slot)
{
    fly_provider *f = r->f;
    r->slot = slot;
    r->next = f->runs;
    if (f->runs)
        f->runs->prev = r;
    f->runs = r;
    f->nruns++;
    f->slot_runs[slot] = r;
}

static void on_sess_event(void *owner, sbx_run_event ev, sbx_result *res)
{
    sbx_run *r = owner;
    sbx_run_cb cb = r->cb;
    void *arg = r->arg;

    if (ev == SBX_RUN_STARTED) {
        cb(arg, ev, res);
        return;
    }
    run_unlink(r);                /* the session run frees itself after this */
    free(r);
    cb(arg, ev, res);
}

static int sess_start(fly_provider *f, sbx_run *r, const sbx_run_req *req, const char *image,
                      int cpus, int mem, size_t slot, char *err, size_t errlen)
{
    int rc;

    snprintf(r->job_id, sizeof(r->job_id), "%s", req->job->job_id);
    rc = sbx__fly_srun_start(&f->sessions, req, image, cpus, mem, on_sess_event, r, &r->sess,
                             err, errlen);
    if (rc == 0)
        run_link(r, slot);
    return rc;
}

/* ---- the provider ops ---- */

static int fly_start(sbx_provider *p, const sbx_run_req *req, sbx_run_cb cb, void *arg,
                     sbx_run **out, char *err, size_t errlen)
{
    fly_provider *f = (fly_provider *)p;
    const sbx_job *job = req->job;
    const char *image = job->image ? job->image : f->image;
    sbx_run *r = NULL;
    size_t slot = 0;
    int cpus, mem, rc = 0;

    if (!image) {
        snprintf(err, errlen, "job has no image and SBX_FLY_IMAGE is not set");
        rc = -EINVAL;
        goto out;
    }
    if (size_guest(f, job, &cpus, &mem, err, errlen) != 0) {
        rc = -EINVAL;
        goto out;
    }
    for (size_t i = 0; i < job->nfiles; i++)
        if (strlen(job->files[i].key) > SBX_ID_MAX * 6) {
            snprintf(err, errlen, "file path too long for config.files");
            rc = -EINVAL;
            goto out;
        }
    if ((rc = sbx__job_files_check(job, err, errlen)) < 0)
        goto out;
    while (slot < f->nslots && strcmp(f->slot_ids[slot], req->slot) != 0)
        slot++;
    if (slot == f->nslots) {
        snprintf(err, errlen, "unknown slot %.64s", req->slot);
        rc = -ENOENT;
        goto out;
    }
    if (f->slot_runs[slot]) {
        snprintf(err, errlen, "slot %s is busy with %s", req->slot, f->slot_runs[slot]->job_id);
        rc = -EBUSY;
        goto out;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        rc = -ENOMEM;
        goto out;
    }
    r->f = f;
    r->cb = cb;
    r->arg = arg;
    r->token = req->token;
    if (req->session) {
        rc = sess_start(f, r, req, image, cpus, mem, slot, err, errlen);
        if (rc == 0)
            *out = r;
        else
            free(r);
        return rc;
    }
    r->timeout_s = job->timeout_s > 0 ? job->timeout_s : SBX_DEFAULT_TIMEOUT_S;
    snprintf(r->job_id, sizeof(r->job_id), "%s", job->job_id);
    r->slot = slot;
    snprintf(r->run_id, sizeof(r->run_id), "%016llx",
             (unsigned long long)sbx__fly_api_rand(&f->api));
    r->res.exit_code = -1;
    r->create = build_create(f, req, image, cpus, mem, r->run_id);
    if (!r->create) {
        rc = -ENOMEM;
        goto out;
    }
    sbx__fly_call_init(&r->call, &f->api, r);
    sbx__fly_logs_init(&r->logs, &f->api, f->logs_url, f->app, f->logs_poll_ms, f->logs_drain_ms,
                       req->output, req->output_arg, on_logs_drained, r);
    sbx_timer_init(&r->deadline_t, deadline_fire, r);
    sbx_timer_init(&r->defer_t, defer_fire, r);
    r->deadline_ms = sbx_now_ms() + (uint64_t)r->timeout_s * 1000u;
    r->boot_deadline_ms = sbx_now_ms() + (uint64_t)f->boot_timeout_s * 1000u;
    sbx_timer_start(p->loop, &r->deadline_t, (uint64_t)r->timeout_s * 1000u);
    run_link(r, slot);
    sbx_info("fly", "run %s slot=%s attempt=%d image=%s cpus=%d memory_mb=%d", r->job_id,
             req->slot, req->attempt, image, cpus, mem);
    step_create(r);
    *out = r;
    r = NULL;
out:
    if (r) {
        json_object_put(r->create);
        free(r);
    }
    return rc;
}

static void fly_cancel(sbx_provider *p, sbx_run *r)
{
    (void)p;
    if (r->sess)
        sbx__fly_srun_abort(r->sess, SBX_OUTCOME_CANCELED);
    else
        run_abort(r, SBX_OUTCOME_CANCELED);
}

static int fly_session_op(sbx_provider *p, sbx_session_op op, const char *slot,
                          const char *session, int64_t token, sbx_session_cb cb, void *arg)
{
    fly_provider *f = (fly_provider *)p;
    size_t i = 0;

    (void)token;                  /* fly_session.c, "Fencing" */
    while (i < f->nslots && strcmp(f->slot_ids[i], slot) != 0)
        i++;
    if (i == f->nslots)
        return -ENOENT;
    return sbx__fly_sop_start(&f->sessions, op, session, cb, arg);
}

static size_t fly_slots(sbx_provider *p, const char ***ids)
{
    fly_provider *f = (fly_provider *)p;
    *ids = (const char **)f->slot_ids;
    return f->nslots;
}

static const char *fly_pool(sbx_provider *p)
{
    (void)p;
    return "fly";
}

/* ---- destroy: best-effort deletes on a private loop ---- */

typedef struct exit_reap {
    int pending, done;
} exit_reap;

static void on_exit_delete(void *arg, const sbx_http_res *res)
{
    exit_reap *er = arg;
    er->pending--;
    if (res->code == SBX_HTTP_OK && (res->status == 200 || res->status == 404))
        er->done++;
}

/* The worker is exiting: its loop is no longer run, so the DELETEs go out on a
 * loop of our own, for at most FLY_EXIT_REAP_MS. What is left the next
 * worker's sweep destroys. */
static void reap_on_exit(fly_provider *f, char (*ids)[SBX_FLY_ID_MAX + 1], size_t n)
{
    sbx_loop *loop = NULL;
    sbx_http *http = NULL;
    exit_reap er = {0, 0};
    char url[SBX_FLY_URL_MAX];
    uint64_t deadline = sbx_now_ms() + FLY_EXIT_REAP_MS;

    if (sbx_loop_new(&loop) != 0 || sbx_http_new(loop, &http) != 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        sbx_http_req req;
        memset(&req, 0, sizeof(req));
        snprintf(url, sizeof(url), "%s/apps/%s/machines/%s?force=true", f->api.url, f->app,
                 ids[i]);
        req.method = "DELETE";
        req.url = url;
        req.headers = f->api.headers;
        req.timeout_ms = FLY_EXIT_REAP_MS;
        req.connect_timeout_ms = SBX_FLY_CONNECT_TIMEOUT_MS;
        if (sbx_http_request(http, &req, on_exit_delete, &er, NULL) == 0)
            er.pending++;
    }
    while (er.pending > 0 && sbx_now_ms() < deadline)
        sbx_loop_once(loop, 100);
    sbx_info("fly", "exit: destroyed %d of %zu machines", er.done, n);
out:
    sbx_http_free(http);
    sbx_loop_free(loop);
}

static void fly_warm(sbx_provider *p, int n)
{
    fly_provider *f = (fly_provider *)p;
    sbx_job none;
    char err[200];
    int cpus, mem, rc;

    if (n <= 0 || f->sessions.warm)
        return;
    /* the size a job that asks for none gets: what the pool's machines fit */
    memset(&none, 0, sizeof(none));
    if (size_guest(f, &none, &cpus, &mem, err, sizeof(err)) != 0) {
        sbx_warn("fly", "warm pool off: %s", err);
        return;
    }
    rc = sbx__fly_warm_new(&f->sessions, f->worker_id, f->image, cpus, mem, n,
                           &f->sessions.warm);
    if (rc != 0)
        sbx_warn("fly", "warm pool off: %s", rc == -EINVAL ? "no SBX_FLY_IMAGE" : strerror(-rc));
}

static void fly_destroy(sbx_provider *p)
{
    fly_provider *f = (fly_provider *)p;
    size_t cap = f->nruns + 64;   /* 64: fly_warm.c's FLY_WARM_MAX */
    char (*ids)[SBX_FLY_ID_MAX + 1] = calloc(cap, sizeof(*ids));
    size_t n = 0;

    while (f->runs) {
        sbx_run *r = f->runs;
        f->runs = r->next;
        if (r->sess) {
            /* the session's machine stays for its next owner (provider.h) */
            sbx__fly_srun_free(r->sess);
            free(r);
            continue;
        }
        if (r->id[0] && ids)
            memcpy(ids[n++], r->id, sizeof(r->id));
        sbx__fly_call_free(&r->call);
        sbx__fly_logs_free(&r->logs);
        sbx_timer_stop(p->loop, &r->deadline_t);
        sbx_timer_stop(p->loop, &r->defer_t);
        json_object_put(r->create);
        free(r);
    }
    if (p->loop)
        sbx_timer_stop(p->loop, &f->pace_t);
    if (f->sessions.warm) {
        /* they hold nobody's work (provider.h) */
        if (ids)
            n += sbx__fly_warm_ids(f->sessions.warm, ids + n, cap - n);
        sbx__fly_warm_free(f->sessions.warm);
        f->sessions.warm = NULL;
    }
    sbx__fly_sessions_close(&f->sessions);
    while (f->sweeps) {
        fly_sweep *s = f->sweeps;
        f->sweeps = s->next;
        sbx__fly_call_free(&s->call);
        free(s->ids);
        free(s);
    }
    sbx_http_free(f->api.http); /* pending requests end without callbacks */
    f->api.http = NULL;
    if (n)
        reap_on_exit(f, ids, n);
    sbx__fly_api_close(&f->api);
    free(ids);
    for (size_t i = 0; i < f->nslots; i++)
        free(f->slot_ids[i]);
    free(f->slot_ids);
    free(f->slot_runs);
    free(f->image);
    free(f->logs_url);
    free(f);
}

/* Sweeps for this worker's id; sweep_end() logs what it did. */
static void fly_sweep_op(sbx_provider *p) { (void)sbx_fly_sweep(p, NULL, NULL, NULL); }

static const sbx_provider_ops fly_ops = {
    .name = "fly",
    .start = fly_start,
    .cancel = fly_cancel,
    .slots = fly_slots,
    .pool = fly_pool,
    .sweep = fly_sweep_op,
    .session_op = fly_session_op,
    .warm = fly_warm,
    .destroy = fly_destroy,
};

/* ---- sweep ---- */

static void sweep_end(fly_sweep *s, const char *err)
{
    fly_provider *f = s->f;
    fly_sweep **pp = &f->sweeps;
    sbx_fly_sweep_cb cb = s->cb;
    void *arg = s->arg;
    int destroyed = s->destroyed, failed = s->failed;

    while (*pp != s)
        pp = &(*pp)->next;
    *pp = s->next;
    sbx__fly_call_free(&s->call);
    free(s->ids);
    free(s);
    sbx_info("fly", "sweep: destroyed=%d failed=%d %s", destroyed, failed, err);
    if (cb)
        cb(arg, destroyed, failed, err);
}

static void sweep_next(fly_sweep *s);

static void on_sweep_delete(sbx__fly_call *c, const sbx_http_res *res)
{
    fly_sweep *s = c->owner;
    if (res->code == SBX_HTTP_OK && res->status == 200) {
        s->destroyed++;
    } else if (!(res->code == SBX_HTTP_OK && res->status == 404)) {
        char why[200];
        sbx__fly_api_error(res, why, sizeof(why));
        sbx_warn("fly", "sweep: machine %s: %s", s->ids[s->i], why);
        s->failed++;
    }
    s->i++;
    sweep_next(s);
}

static void sweep_next(fly_sweep *s)
{
    if (s->i >= s->n) {
        sweep_end(s, "");
        return;
    }
    sbx_info("fly", "sweep: destroying orphan machine %s", s->ids[s->i]);
    sbx__fly_call_start(&s->call, "DELETE", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX, on_sweep_delete,
                        "/apps/%s/machines/%s?force=true", s->f->app, s->ids[s->i]);
}

/* A machine belongs to a live run when its id, job or run id is one of ours
 * (a run still creating has no id yet, but its machine already has metadata). */
static int known_machine(const fly_provider *f, const char *id, json_object *meta)
{
    const char *job = sbx__fly_jstr(meta, "sbx_job"), *run = sbx__fly_jstr(meta, "sbx_run");
    for (const sbx_run *r = f->runs; r; r = r->next)
        if ((id && strcmp(r->id, id) == 0) || (job && strcmp(r->job_id, job) == 0) ||
            (run && strcmp(r->run_id, run) == 0))
            return 1;
    return 0;
}

static void on_sweep_list(sbx__fly_call *c, const sbx_http_res *res)
{
    fly_sweep *s = c->owner;
    json_object *list = NULL;
    size_t n;

    if (res->code != SBX_HTTP_OK || res->status != 200 ||
        !(list = json_tokener_parse(res->body)) || !json_object_is_type(list, json_type_array)) {
        char why[200];
        sbx__fly_api_error(res, why, sizeof(why));
        json_object_put(list);
        sweep_end(s, why);
        return;
    }
    n = json_object_array_length(list);
    s->ids = calloc(n ? (n < FLY_SWEEP_MAX ? n : FLY_SWEEP_MAX) : 1, sizeof(*s->ids));
    if (!s->ids) {
        json_object_put(list);
        sweep_end(s, "out of memory");
        return;
    }
    for (size_t i = 0; i < n && s->n < FLY_SWEEP_MAX; i++) {
        json_object *m = json_object_array_get_idx(list, i);
        const char *id = sbx__fly_jstr(m, "id"), *st = sbx__fly_jstr(m, "state"), *warm;
        if (!id || !valid_chars(id, SBX_FLY_ID_MAX, "") || !st || strcmp(st, "destroyed") == 0 ||
            strcmp(st, "destroying") == 0)
            continue;
        if (known_machine(s->f, id, sbx__fly_meta(m)))
            continue;
        /* a session's machine outlives every run; only DESTROY ends it */
        if (sbx__fly_jstr(sbx__fly_meta(m), "sbx_session"))
            continue;
        /* this pool's warm machines are ours while we live; another tag is
         * a pool that died with its process */
        if (s->f->sessions.warm && (warm = sbx__fly_jstr(sbx__fly_meta(m), "sbx_warm")) &&
            strcmp(warm, sbx__fly_warm_tag(s->f->sessions.warm)) == 0)
            continue;
        snprintf(s->ids[s->n++], sizeof(s->ids[0]), "%s", id);
    }
    json_object_put(list);
    sweep_next(s);
}

int sbx_fly_sweep(sbx_provider *p, const char *worker_id, sbx_fly_sweep_cb cb, void *arg)
{
    fly_provider *f = (fly_provider *)p;
    fly_sweep *s;
    char enc[3 * SBX_FLY_WORKER_MAX + 1];

    if (p->ops != &fly_ops)
        return -EINVAL;
    worker_id = worker_id ? worker_id : f->worker_id;
    if (strlen(worker_id) == 0 || strlen(worker_id) > SBX_FLY_WORKER_MAX)
        return -EINVAL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->f = f;
    s->cb = cb;
    s->arg = arg;
    sbx__fly_call_init(&s->call, &f->api, s);
    s->next = f->sweeps;
    f->sweeps = s;
    url_escape(worker_id, enc, sizeof(enc));
    sbx__fly_call_start(&s->call, "GET", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX, on_sweep_list,
                        "/apps/%s/machines?metadata.sbx_worker=%s", f->app, enc);
    return 0;
}

/* ---- construction ---- */

static int env_int(const char *name, int *out, char *err, size_t errlen)
{
    const char *v = getenv(name);
    char *end;
    long n;

    if (!v || !*v)
        return 0;
    errno = 0;
    n = strtol(v, &end, 10);
    if (errno || *end || n < 0 || n > 1000000) {
        snprintf(err, errlen, "%s=%s: expected a non-negative integer", name, v);
        return -EINVAL;
    }
    *out = (int)n;
    return 0;
}

int sbx_fly_config_from_env(sbx_fly_config *cfg, const char *worker_id, char *err,
                            size_t errlen)
{
    const char *tok = getenv("SBX_FLY_API_TOKEN");

    memset(cfg, 0, sizeof(*cfg));
    cfg->api_url = getenv("SBX_FLY_API_URL");
    cfg->app = getenv("SBX_FLY_APP");
    cfg->token = tok && *tok ? tok : getenv("FLY_API_TOKEN");
    cfg->regions = getenv("SBX_FLY_REGIONS");
    cfg->cpu_kind = getenv("SBX_FLY_CPU_KIND");
    cfg->image = getenv("SBX_FLY_IMAGE");
    cfg->logs_url = getenv("SBX_FLY_LOGS_URL");
    cfg->worker_id = worker_id;
    if (env_int("SBX_FLY_MAX_MACHINES", &cfg->max_machines, err, errlen) ||
        env_int("SBX_FLY_CPUS", &cfg->cpus, err, errlen) ||
        env_int("SBX_FLY_MEMORY_MB", &cfg->memory_mb, err, errlen) ||
        env_int("SBX_FLY_CREATE_RATE", &cfg->create_rate, err, errlen) ||
        env_int("SBX_FLY_CREATE_BURST", &cfg->create_burst, err, errlen))
        return -EINVAL;
    return 0;
}

static int bad(char *err, size_t errlen, const char *msg)
{
    snprintf(err, errlen, "%s", msg);
    return -EINVAL;
}

static int parse_regions(fly_provider *f, const char *s, char *err, size_t errlen)
{
    while (s && *s) {
        size_t n = strcspn(s, ",");
        char r[FLY_REGION_MAX + 1];
        if (n > 0) {
            if (n > FLY_REGION_MAX || f->nregions == FLY_REGIONS_MAX)
                return bad(err, errlen, "SBX_FLY_REGIONS: at most 16 codes of up to 15 letters");
            memcpy(r, s, n);
            r[n] = '\0';
            if (!valid_chars(r, FLY_REGION_MAX, ""))
                return bad(err, errlen, "SBX_FLY_REGIONS: codes are lowercase letters/digits");
            memcpy(f->regions[f->nregions++], r, n + 1);
        }
        s += n + (s[n] == ',');
    }
    return 0;
}

static int logs_url_ok(const char *u)
{
    if (!u || !*u || strcmp(u, "off") == 0)
        return 1;
    return strlen(u) <= SBX_FLY_API_URL_MAX &&
           (strncmp(u, "http://", 7) == 0 || strncmp(u, "https://", 8) == 0);
}

static int dflt(int v, int d)
{
    return v > 0 ? v : d;
}

int sbx_fly_new(sbx_loop *loop, const sbx_fly_config *cfg, sbx_provider **out, char *err,
                size_t errlen)
{
    fly_provider *f;
    const char *url = cfg->api_url && *cfg->api_url ? cfg->api_url : FLY_DEFAULT_URL;
    size_t ulen = strlen(url);
    int rc = 0;

    f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    f->base.ops = &fly_ops;
    f->base.loop = loop;
    while (ulen > 0 && url[ulen - 1] == '/')
        ulen--;
    if ((strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) ||
        ulen > SBX_FLY_API_URL_MAX) {
        rc = bad(err, errlen, "SBX_FLY_API_URL: an http(s) URL of at most 512 bytes");
        goto out;
    }
    if (!cfg->app || !valid_chars(cfg->app, SBX_FLY_APP_MAX, "-")) {
        rc = bad(err, errlen, "SBX_FLY_APP: the Fly app name (lowercase, digits, '-')");
        goto out;
    }
    snprintf(f->app, sizeof(f->app), "%s", cfg->app);
    if (!cfg->token || !*cfg->token || strpbrk(cfg->token, "\r\n")) {
        rc = bad(err, errlen, "SBX_FLY_API_TOKEN (or FLY_API_TOKEN) is required");
        goto out;
    }
    if (!cfg->worker_id || !*cfg->worker_id || strlen(cfg->worker_id) > SBX_FLY_WORKER_MAX) {
        rc = bad(err, errlen, "fly: a worker id of 1..128 bytes is required");
        goto out;
    }
    snprintf(f->worker_id, sizeof(f->worker_id), "%s", cfg->worker_id);
    rc = parse_regions(f, cfg->regions, err, errlen);
    if (rc)
        goto out;
    snprintf(f->cpu_kind, sizeof(f->cpu_kind), "%s",
             cfg->cpu_kind && *cfg->cpu_kind ? cfg->cpu_kind : "shared");
    if (strcmp(f->cpu_kind, "shared") != 0 && strcmp(f->cpu_kind, "performance") != 0) {
        rc = bad(err, errlen, "SBX_FLY_CPU_KIND: shared or performance");
        goto out;
    }
    f->cpus = dflt(cfg->cpus, 1);
    if (!preset_cpus(f->cpus, strcmp(f->cpu_kind, "performance") == 0)) {
        rc = bad(err, errlen, "SBX_FLY_CPUS: 1, 2, 4 or 8 (shared); 1, 2, 4, 8 or 16 (performance)");
        goto out;
    }
    f->memory_mb = dflt(cfg->memory_mb, 256);
    if (f->memory_mb % 256) {
        rc = bad(err, errlen, "SBX_FLY_MEMORY_MB: a multiple of 256");
        goto out;
    }
    f->create_rate = dflt(cfg->create_rate, 1);
    f->create_burst = dflt(cfg->create_burst, 3);
    f->pace_tokens = f->create_burst;
    f->pace_last_ms = sbx_now_ms();
    sbx_timer_init(&f->pace_t, pace_fire, f);
    f->nslots = (size_t)dflt(cfg->max_machines, 4);
    if (f->nslots > FLY_MAX_MACHINES) {
        rc = bad(err, errlen, "SBX_FLY_MAX_MACHINES: at most 4096");
        goto out;
    }
    if (!logs_url_ok(cfg->logs_url)) {
        rc = bad(err, errlen, "SBX_FLY_LOGS_URL: an http(s) URL of at most 512 bytes, or off");
        goto out;
    }
    f->stop_grace_s = dflt(cfg->stop_grace_s, 5);
    f->boot_timeout_s = dflt(cfg->boot_timeout_s, 300);
    f->first_wait_s = dflt(cfg->first_wait_s, 1);
    f->run_wait_s = dflt(cfg->run_wait_s, FLY_RUN_WAIT_S);
    f->settle_ms = dflt(cfg->settle_ms, 500);
    f->logs_poll_ms = dflt(cfg->logs_poll_ms, 1000);
    f->logs_drain_ms = dflt(cfg->logs_drain_ms, 2000);

    f->image = cfg->image && *cfg->image ? strdup(cfg->image) : NULL;
    if (!cfg->logs_url || !*cfg->logs_url)
        f->logs_url = strdup(FLY_DEFAULT_LOGS_URL);
    else if (strcmp(cfg->logs_url, "off") != 0)
        f->logs_url = strndup(cfg->logs_url, strlen(cfg->logs_url) -
                                                 (cfg->logs_url[strlen(cfg->logs_url) - 1] == '/'));
    f->slot_ids = calloc(f->nslots, sizeof(char *));
    f->slot_runs = calloc(f->nslots, sizeof(sbx_run *));
    if (!f->slot_runs || (cfg->image && *cfg->image && !f->image) ||
        (!f->logs_url && !(cfg->logs_url && strcmp(cfg->logs_url, "off") == 0)) ||
        !f->slot_ids) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < f->nslots; i++) {
        f->slot_ids[i] = malloc(FLY_SLOT_MAX);
        if (!f->slot_ids[i]) {
            rc = -ENOMEM;
            goto out;
        }
        snprintf(f->slot_ids[i], FLY_SLOT_MAX, "fly/%s/%zu", f->app, i);
    }
    rc = sbx__fly_api_init(&f->api, loop, url, ulen, cfg->token, dflt(cfg->max_attempts, 6),
                           dflt(cfg->backoff_base_ms, 200), dflt(cfg->backoff_max_ms, 10000));
    if (rc)
        goto out;
    f->sessions.api = &f->api;
    f->sessions.loop = loop;
    f->sessions.app = f->app;
    f->sessions.cpu_kind = f->cpu_kind;
    f->sessions.poll_ms = f->logs_poll_ms;
    f->sessions.stop_grace_s = f->stop_grace_s;
    f->sessions.boot_timeout_s = f->boot_timeout_s;
    f->sessions.settle_ms = f->settle_ms;
    f->sessions.prov = &f->base;
    sbx_info("fly", "provider: api=%s app=%s regions=%s slots=%zu logs=%s creates=%d/s burst %d",
             f->api.url, f->app, cfg->regions && *cfg->regions ? cfg->regions : "(fly picks)",
             f->nslots, f->logs_url ? f->logs_url : "off", f->create_rate, f->create_burst);
    *out = &f->base;
    f = NULL;
out:
    if (f) {
        if (rc == -ENOMEM && err[0] == '\0')
            snprintf(err, errlen, "out of memory");
        f->runs = NULL;
        fly_destroy(&f->base);
    }
    return rc;
}
