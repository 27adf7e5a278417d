/* provider_vmpool.c — the vmpool provider (provider_vmpool.h): a run is a
 * conversation with the sbx-agent of the leased slot's VM.
 *
 * States of a run (set_state() logs every transition):
 *   LOOKUP  HGET {sbx}:vm:<vm> base_url (retried while Redis is away)
 *   WAKE    POST /wake {slot, token, job, attempt} (retried on transport
 *           errors: the agent answers a repeated token with the same run,
 *           so a wake whose answer was lost is not a second build; 409 busy
 *           is retried while the agent stops an older lease's build)
 *   FOLLOW  GET /runs/{id}?wait_ms=poll_ms, one long poll after another: the
 *           agent answers as soon as the run ends, so the end is seen at
 *           once, and every poll is also a liveness check of the agent
 *   DONE    FINISHED delivered; the run is freed
 * STARTED is reported when the agent has the build (wake answered with a
 * run id): it then runs in a sandbox on the VM.
 *
 * Live output (req->output): in FOLLOW, beside the long poll, one streamed
 * GET /runs/{id}/log?follow=1&offset=N hands each piece to the sink as the
 * agent's log file grows; N is what arrived so far, so a broken stream
 * resumes where it stopped (after LOG_RETRY_MS) and no byte comes twice.
 * The agent writes stdout and stderr into that one file (agent/runs.c), so
 * the output reaches the sink as stdout. When the poll sees the run end,
 * FINISHED waits until the stream has ended too (the agent ends it once the
 * run is over and the file is read), at most LOG_DRAIN_MS; past that the
 * stream is cut and the result's error says the log may be incomplete
 * (provider.h: all output before FINISHED). A run that ends before that
 * (cancel, error) still gets STARTED first, as provider.h's order promises.
 *
 * Liveness: every failed exchange (no connection, reset, timeout) starts or
 * continues a "silent" streak; a streak longer than unreachable_ms ends the
 * run with SBX_OUTCOME_ERROR. A wake the agent answers 400 or 422 (the job
 * itself is unacceptable: agent/server.c's "invalid") ends the run
 * SBX_OUTCOME_JOB_ERROR, failed at once. Retries back off from 100 ms, doubling to 1 s,
 * with jitter. A killed VM (or agent) thus costs at most about
 * unreachable_ms + 1 s before the worker moves on.
 *
 * cancel(): POST /runs/{id}/cancel {token} beside the running long poll; the
 * poll then sees the run end. Before the wake answered, the cancel is sent
 * as soon as it does; before the wake was sent, nothing is sent at all.
 *
 * destroy() (worker exit) asks the agents to cancel what runs, on a private
 * loop for at most DESTROY_WAIT_MS, so a build does not outlive its worker
 * when the agent is reachable; when it is not, the lease expires and the
 * next owner's newer token makes the agent stop it (runs.c on the agent).
 *
 * Sessions (provider.h "Sessions"). A session's run sends its sandbox name
 * along ("session" in the wake body); the agent keeps that sandbox on the
 * slot between runs and says in its answer whether the run got it new,
 * reused or resumed (with resume_ms), which the result carries. An agent
 * that says nothing (one from before sessions) ran it in a fresh sandbox:
 * NEW. session_op() is a small state machine of its own (an `sop`):
 * LOOKUP the VM's base_url as a run does, then POST /sessions/<name>/pause
 * or /destroy {slot, token}; transport errors and 503 are retried with the
 * same backoff for up to unreachable_ms, 409 busy (a run of the session, or
 * an older lease's, still on the slot; the agent stops the older one) for
 * up to busy_retry_ms. The callback always comes from the loop.
 *
 * Previews and the warm pool live on the agent (issue 13: its proxy
 * reaches into its sandboxes; SBX_AGENT_PREVIEW_*, SBX_AGENT_WARM): the wake
 * answer's preview_url is the session's live preview, carried at STARTED
 * and (from GET /runs) at FINISHED; "sandbox":"warm" is SBX_SANDBOX_WARM.
 * The worker's p->previews and ops->warm are not used here.
 *
 * The service key only ever goes into the Authorization header; it is not
 * logged and not part of any error text.
 */
#include "provider_vmpool.h"

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "http.h"
#include "log.h"
#include "redis.h"
#include "rkeys.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 1000
/* Lookups while Redis reconnects follow the same backoff. */
#define DEFAULT_UNREACHABLE_MS 10000
#define DEFAULT_BUSY_RETRY_MS 10000
#define DEFAULT_POLL_MS 1000
/* Beyond the long-poll wait, how long a GET /runs may take. */
#define POLL_SLACK_MS 5000
/* A wake forks a sandbox on the agent: seconds at worst. */
#define WAKE_TIMEOUT_MS 15000
#define CANCEL_TIMEOUT_MS 5000
/* Pausing freezes a cgroup; destroying kills a sandbox and empties its
 * tmpfs: the agent answers when that is done, seconds at worst. */
#define SESSION_TIMEOUT_MS 15000
#define CONNECT_TIMEOUT_MS 2000
/* Agent replies we parse are small JSON objects (an 8 KiB tail at most);
 * 64 KiB is ample and keeps a confused server from costing memory. */
#define REPLY_MAX (64 * 1024)
/* A run still "running" this long after its timeout_s means the agent lost
 * track of it: give up with TIMED_OUT rather than hold the lease forever. */
#define AGENT_TIMEOUT_SLACK_MS 60000
#define DESTROY_WAIT_MS 2000
/* A broken log stream is asked again this much later (from its offset). */
#define LOG_RETRY_MS 250
/* After the run ended, how long its log may take to arrive. */
#define LOG_DRAIN_MS 5000
/* "<vm id>#<i>": the id is a job-id-like name (agent's SBX_AGENT_ID). */
#define SLOT_MAX 191
/* An agent id (SBX_AGENT_ID) is at most 100 bytes. */
#define VM_ID_MAX 100
#define BASE_URL_MAX 255

typedef enum vstate { V_LOOKUP, V_WAKE, V_FOLLOW, V_DONE } vstate;
static const char *const state_names[] = {"lookup", "wake", "follow", "done"};
static const char *const outcome_names[] = {"succeeded", "failed", "timed_out", "canceled", "error",
                                            "busy", "job_error"};

typedef struct vmpool {
    sbx_provider base;
    sbx_redis *redis;
    sbx_http *http;
    char *auth;                   /* "Authorization: Bearer <key>" */
    int unreachable_ms, busy_retry_ms, poll_ms;
    struct sbx_run *runs;         /* every run not yet FINISHED */
    struct sop *sops;             /* every session_op not yet answered */
} vmpool;

struct sbx_run {
    vmpool *p;
    struct sbx_run *prev, *next;
    vstate st;
    char slot[SLOT_MAX + 1];
    char vm[VM_ID_MAX + 1];
    char job_id[SBX_ID_MAX + 1];
    int64_t token;
    int attempt;
    int timeout_s;
    char *wake_body;
    char base_url[BASE_URL_MAX + 1];
    char run_id[64];
    int has_session;              /* req->session was given */
    sbx_sandbox_use sandbox;      /* what the agent said in its wake answer */
    int resume_ms;
    char preview_url[256];        /* the session's live preview, from the wake answer */
    sbx_http_handle *h;           /* wake or poll in flight */
    sbx_http_handle *hc;          /* cancel in flight */
    int lookup_pending;           /* a Redis reply is due (it cannot be withdrawn) */
    sbx_timer t;                  /* backoff, or the asynchronous first step */
    uint64_t backoff_ms;
    uint64_t silent_since_ms;     /* 0 while the agent answers */
    uint64_t busy_since_ms;
    uint64_t started_ms;
    int started;                  /* STARTED delivered */
    int canceled;
    int cancel_sent;
    sbx_run_cb cb;
    void *arg;
    /* live output */
    sbx_output_fn out;
    void *out_arg;
    sbx_http_handle *hl;          /* the log stream, while it flows */
    sbx_timer lt;                 /* LOG_RETRY_MS, then LOG_DRAIN_MS once ended */
    uint64_t log_off;             /* bytes of the agent's log handed to out */
    int log_done;                 /* the agent ended the stream: the log is whole */
    sbx_result *ended;            /* the run's result, held while the log drains */
};

static void step(struct sbx_run *r);

static void set_state(struct sbx_run *r, vstate to)
{
    sbx_debug("vmpool", "run %s slot=%s state %s -> %s", r->job_id, r->slot, state_names[r->st],
              state_names[to]);
    r->st = to;
}

static void init_result(const struct sbx_run *r, sbx_result *res)
{
    memset(res, 0, sizeof(*res));
    res->exit_code = -1;
    snprintf(res->instance, sizeof(res->instance), "%s", r->vm);
    res->sandbox = r->sandbox;
    res->resume_ms = r->sandbox == SBX_SANDBOX_RESUMED ? r->resume_ms : 0;
    snprintf(res->preview_url, sizeof(res->preview_url), "%s", r->preview_url);
}

static void report_started(struct sbx_run *r)
{
    sbx_result res;
    if (r->started)
        return;
    r->started = 1;
    init_result(r, &res);
    r->cb(r->arg, SBX_RUN_STARTED, &res);
}

static void unlink_run(struct sbx_run *r)
{
    vmpool *p = r->p;
    if (r->prev)
        r->prev->next = r->next;
    else if (p->runs == r)
        p->runs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void run_free(struct sbx_run *r)
{
    sbx_timer_stop(r->p->base.loop, &r->t);
    sbx_timer_stop(r->p->base.loop, &r->lt);
    if (r->h)
        sbx_http_cancel(r->h);
    if (r->hc)
        sbx_http_cancel(r->hc);
    if (r->hl)
        sbx_http_cancel(r->hl);
    free(r->ended);
    free(r->wake_body);
    free(r);
}

/* Delivers FINISHED (after STARTED) and forgets the run. res->outcome is
 * forced to CANCELED for a canceled run. */
static void finish(struct sbx_run *r, sbx_result *res)
{
    sbx_run_cb cb = r->cb;
    void *arg = r->arg;

    if (r->canceled)
        res->outcome = SBX_OUTCOME_CANCELED;
    report_started(r);
    set_state(r, V_DONE);
    sbx_log(res->outcome >= SBX_OUTCOME_ERROR ? SBX_LOG_WARN : SBX_LOG_INFO, "vmpool",
            "run end job=%s slot=%s token=%" PRId64 " run=%s outcome=%s exit_code=%d%s%s", r->job_id,
            r->slot, r->token, r->run_id[0] ? r->run_id : "-", outcome_names[res->outcome],
            res->exit_code, res->error[0] ? " error=" : "", res->error);
    unlink_run(r);
    run_free(r);
    cb(arg, SBX_RUN_FINISHED, res);
}

static void end_with(struct sbx_run *r, sbx_outcome outcome, const char *fmt, va_list ap)
{
    sbx_result res;
    init_result(r, &res);
    res.outcome = outcome;
    vsnprintf(res.error, sizeof(res.error), fmt, ap);
    finish(r, &res);
}

static void fail(struct sbx_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct sbx_run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    end_with(r, SBX_OUTCOME_ERROR, fmt, ap);
    va_end(ap);
}

/* The job cannot run as given: the run ends failed, not retried. */
static void job_refused(struct sbx_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void job_refused(struct sbx_run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    end_with(r, SBX_OUTCOME_JOB_ERROR, fmt, ap);
    va_end(ap);
}

/* The agent would not take the slot (still busy with an older lease's build,
 * or it has seen a newer token): no build happened, the worker waits. */
static void refused(struct sbx_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void refused(struct sbx_run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    end_with(r, SBX_OUTCOME_BUSY, fmt, ap);
    va_end(ap);
}

/* The next wait of a backoff that starts at BACKOFF_MIN_MS and doubles to
 * BACKOFF_MAX_MS, with +-20 % jitter. */
static uint64_t backoff_next(uint64_t *backoff_ms)
{
    uint64_t d = *backoff_ms ? *backoff_ms : BACKOFF_MIN_MS;
    *backoff_ms = d * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : d * 2;
    return d * 4 / 5 + (uint64_t)(rand() % (int)(d * 2 / 5 + 1));
}

static void retry_later(struct sbx_run *r)
{
    sbx_timer_start(r->p->base.loop, &r->t, backoff_next(&r->backoff_ms));
}

static void redis_do(vmpool *p, int argc, const char **argv)
{
    size_t lens[4];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    (void)sbx_redis_cmd(p->redis, NULL, NULL, argc, argv, lens);
}

/* An agent that stopped answering mid-build is taken out of the pool at
 * once (not only when its heartbeat ages past its TTL), so the retry goes to
 * another VM; the agent registers again when it comes back. */
static void drop_vm(struct sbx_run *r)
{
    char key[VM_ID_MAX + 16];
    const char *srem_slots[] = {"SREM", SBX_RKEY_SLOTS SBX_VMPOOL_POOL, r->slot};
    const char *srem_free[] = {"SREM", SBX_RKEY_FREE SBX_VMPOOL_POOL, r->slot};
    const char *hset[] = {"HSET", key, SBX_RKEY_VM_STATE, SBX_VM_DEAD};
    snprintf(key, sizeof(key), SBX_RKEY_VM "%s", r->vm);
    redis_do(r->p, 3, srem_slots);
    redis_do(r->p, 3, srem_free);
    redis_do(r->p, 4, hset);
    sbx_warn("vmpool", "vm %s dropped from the pool: its agent stopped answering", r->vm);
}

/* The agent did not answer; 1 = keep trying, 0 = the run was ended. */
static int silent(struct sbx_run *r, const char *what)
{
    uint64_t now = sbx_now_ms();
    if (!r->silent_since_ms)
        r->silent_since_ms = now;
    if (now - r->silent_since_ms >= (uint64_t)r->p->unreachable_ms) {
        if (r->st == V_LOOKUP)
            fail(r, "redis unreachable for %" PRIu64 " ms: %s", now - r->silent_since_ms, what);
        else {
            drop_vm(r);
            fail(r, "agent of %s unreachable for %" PRIu64 " ms: %s", r->vm,
                 now - r->silent_since_ms, what);
        }
        return 0;
    }
    sbx_debug("vmpool", "run %s: %s; retrying", r->job_id, what);
    retry_later(r);
    return 1;
}

static void heard(struct sbx_run *r)
{
    r->silent_since_ms = 0;
    r->backoff_ms = 0;
}

static json_object *parse_reply(const sbx_http_res *res)
{
    json_object *o;
    json_tokener *tok;
    if (!res->body || res->body_len == 0)
        return NULL;
    tok = json_tokener_new();
    if (!tok)
        return NULL;
    o = json_tokener_parse_ex(tok, res->body, (int)res->body_len);
    if (o && !json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        o = NULL;
    }
    json_tokener_free(tok);
    return o;
}

static const char *str_field(json_object *o, const char *name)
{
    json_object *v;
    if (o && json_object_object_get_ex(o, name, &v) && json_object_is_type(v, json_type_string))
        return json_object_get_string(v);
    return NULL;
}

/* "unknown_slot: slot x is not on this agent" from an agent's error body. */
static void agent_error(const sbx_http_res *res, char *out, size_t len)
{
    json_object *o = parse_reply(res);
    const char *e = str_field(o, "error"), *m = str_field(o, "message");
    snprintf(out, len, "HTTP %ld %s%s%s", res->status, e ? e : "", m ? ": " : "", m ? m : "");
    json_object_put(o);
}

static int agent_request(vmpool *p, const char *base_url, const char *method, const char *path,
                         const char *body, uint32_t timeout_ms, sbx_http_done_cb cb, void *arg,
                         sbx_http_handle **h)
{
    const char *headers[] = {p->auth, "Content-Type: application/json", NULL};
    char url[BASE_URL_MAX + 128];
    sbx_http_req req;

    snprintf(url, sizeof(url), "%s%s", base_url, path);
    memset(&req, 0, sizeof(req));
    req.method = method;
    req.url = url;
    req.headers = headers;
    req.body = body;
    req.body_len = body ? strlen(body) : 0;
    req.timeout_ms = timeout_ms;
    req.connect_timeout_ms = CONNECT_TIMEOUT_MS;
    req.max_response_bytes = REPLY_MAX;
    return sbx_http_request(p->http, &req, cb, arg, h);
}

static int request(struct sbx_run *r, const char *method, const char *path, const char *body,
                   uint32_t timeout_ms, sbx_http_done_cb cb, sbx_http_handle **h)
{
    return agent_request(r->p, r->base_url, method, path, body, timeout_ms, cb, r, h);
}

/* ---- cancel ---- */

static void on_cancel_done(void *arg, const sbx_http_res *res)
{
    struct sbx_run *r = arg;
    r->hc = NULL;
    if (res->code != SBX_HTTP_OK) {
        /* The poll's own liveness check decides about the agent; ask again. */
        r->cancel_sent = 0;
        sbx_debug("vmpool", "run %s: cancel not delivered: %s", r->job_id, res->error);
        return;
    }
    if (res->status == 409)
        sbx_warn("vmpool", "run %s: cancel refused, a newer lease owns slot %s", r->job_id, r->slot);
    else if (res->status >= 300)
        sbx_warn("vmpool", "run %s: cancel answered HTTP %ld", r->job_id, res->status);
}

static void send_cancel(struct sbx_run *r)
{
    char path[96], body[64];
    if (r->cancel_sent || r->hc || !r->run_id[0])
        return;
    snprintf(path, sizeof(path), "/runs/%s/cancel", r->run_id);
    snprintf(body, sizeof(body), "{\"token\":%" PRId64 "}", r->token);
    if (request(r, "POST", path, body, CANCEL_TIMEOUT_MS, on_cancel_done, &r->hc) == 0)
        r->cancel_sent = 1;
}

/* ---- follow ---- */

static sbx_outcome outcome_of(const char *state, int *terminal)
{
    static const struct { const char *name; sbx_outcome o; } map[] = {
        {"succeeded", SBX_OUTCOME_SUCCEEDED}, {"failed", SBX_OUTCOME_FAILED},
        {"timed_out", SBX_OUTCOME_TIMED_OUT}, {"canceled", SBX_OUTCOME_CANCELED},
        {"error", SBX_OUTCOME_ERROR},
    };
    *terminal = 0;
    for (size_t i = 0; state && i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(state, map[i].name) == 0) {
            *terminal = 1;
            return map[i].o;
        }
    return SBX_OUTCOME_ERROR;
}

static void follow_log(struct sbx_run *r);

/* FINISHED once the log is whole (or LOG_DRAIN_MS passed): see the top. */
static void finish_after_log(struct sbx_run *r, sbx_result *res)
{
    if (!r->out || r->log_done) {
        finish(r, res);
        return;
    }
    r->ended = malloc(sizeof(*r->ended));
    if (!r->ended) {
        finish(r, res);
        return;
    }
    *r->ended = *res;
    sbx_timer_stop(r->p->base.loop, &r->lt);
    if (!r->hl)
        follow_log(r); /* it was waiting to retry: the last look, now */
    if (r->ended)
        sbx_timer_start(r->p->base.loop, &r->lt, LOG_DRAIN_MS);
}

static void finish_from(struct sbx_run *r, json_object *o, sbx_outcome out)
{
    sbx_result res;
    json_object *v;
    const char *s;

    init_result(r, &res);
    res.outcome = out;
    if (json_object_object_get_ex(o, "exit_code", &v) && json_object_is_type(v, json_type_int))
        res.exit_code = json_object_get_int(v);
    if (json_object_object_get_ex(o, "log_tail", &v) && json_object_is_type(v, json_type_string)) {
        size_t n = (size_t)json_object_get_string_len(v);
        /* The tail is bounded on the agent too; keep the last bytes if not. */
        const char *t = sbx_tail_of(json_object_get_string(v), &n, SBX_LOG_TAIL_MAX);
        memcpy(res.log_tail, t, n);
        res.log_tail[n] = '\0';
        res.log_tail_len = strlen(res.log_tail);
    }
    if ((s = str_field(o, "preview_url")) != NULL)
        snprintf(res.preview_url, sizeof(res.preview_url), "%s", s);
    if ((s = str_field(o, "error")) != NULL)
        snprintf(res.error, sizeof(res.error), "%s", s);
    finish_after_log(r, &res);
}

/* ---- the live log ---- */

static int on_log_chunk(void *arg, const char *data, size_t len)
{
    struct sbx_run *r = arg;
    r->log_off += len;
    sbx_run_output(r->out, r->out_arg, SBX_STREAM_STDOUT, data, len);
    return 0;
}

static void on_log_done(void *arg, const sbx_http_res *res)
{
    struct sbx_run *r = arg;
    r->hl = NULL;
    if (res->code == SBX_HTTP_OK && res->status == 200) {
        r->log_done = 1; /* the agent ends the stream only when the run is over */
    } else if (!r->ended) {
        sbx_debug("vmpool", "run %s: log stream: %s (HTTP %ld); again from byte %" PRIu64,
                  r->job_id, res->code != SBX_HTTP_OK ? res->error : "refused", res->status,
                  r->log_off);
        sbx_timer_start(r->p->base.loop, &r->lt, LOG_RETRY_MS);
        return;
    }
    if (r->ended) {
        sbx_result done = *r->ended;
        if (!r->log_done && !done.error[0])
            snprintf(done.error, sizeof(done.error), "live log incomplete: %s",
                     res->code != SBX_HTTP_OK ? res->error : "the agent refused it");
        finish(r, &done);
    }
}

static void follow_log(struct sbx_run *r)
{
    const char *headers[] = {r->p->auth, NULL};
    char url[BASE_URL_MAX + 160];
    sbx_http_req req;

    snprintf(url, sizeof(url), "%s/runs/%s/log?follow=1&offset=%" PRIu64, r->base_url, r->run_id,
             r->log_off);
    memset(&req, 0, sizeof(req));
    req.method = "GET";
    req.url = url;
    req.headers = headers;
    req.connect_timeout_ms = CONNECT_TIMEOUT_MS;
    /* No timeout: the stream lasts as long as the build; the poll watches the agent. */
    if (sbx_http_stream(r->p->http, &req, on_log_chunk, on_log_done, r, &r->hl) != 0) {
        r->hl = NULL;
        if (!r->ended)
            sbx_timer_start(r->p->base.loop, &r->lt, LOG_RETRY_MS);
    }
}

static void on_log_timer(sbx_timer *t)
{
    struct sbx_run *r = t->data;
    if (r->ended) {
        /* LOG_DRAIN_MS passed: FINISHED now, with what arrived. */
        sbx_result done = *r->ended;
        if (!done.error[0])
            snprintf(done.error, sizeof(done.error),
                     "live log incomplete: the agent's log stream did not end within %d ms",
                     LOG_DRAIN_MS);
        finish(r, &done);
        return;
    }
    if (!r->hl)
        follow_log(r);
}

static void on_poll_done(void *arg, const sbx_http_res *res)
{
    struct sbx_run *r = arg;
    json_object *o;
    int terminal;
    sbx_outcome out;
    char why[256];

    r->h = NULL;
    if (res->code != SBX_HTTP_OK) {
        silent(r, res->error);
        return;
    }
    if (res->status == 404) {
        agent_error(res, why, sizeof(why));
        fail(r, "agent of %s lost run %s (restarted?): %s", r->vm, r->run_id, why);
        return;
    }
    if (res->status != 200) {
        agent_error(res, why, sizeof(why));
        fail(r, "agent of %s: GET /runs/%s: %s", r->vm, r->run_id, why);
        return;
    }
    heard(r);
    o = parse_reply(res);
    out = outcome_of(str_field(o, "state"), &terminal);
    if (!o || (!terminal && strcmp(str_field(o, "state") ? str_field(o, "state") : "", "running") != 0)) {
        json_object_put(o);
        fail(r, "agent of %s: unexpected run reply", r->vm);
        return;
    }
    if (terminal) {
        finish_from(r, o, out);
        json_object_put(o);
        return;
    }
    json_object_put(o);
    if (r->canceled)
        send_cancel(r); /* again, if the last try did not get through */
    if (sbx_now_ms() - r->started_ms > (uint64_t)r->timeout_s * 1000 + AGENT_TIMEOUT_SLACK_MS) {
        sbx_result rs;
        init_result(r, &rs);
        rs.outcome = SBX_OUTCOME_TIMED_OUT;
        snprintf(rs.error, sizeof(rs.error), "agent of %s still runs it %d s past its timeout",
                 r->vm, AGENT_TIMEOUT_SLACK_MS / 1000);
        finish(r, &rs);
        return;
    }
    step(r);
}

static void poll_run(struct sbx_run *r)
{
    char path[128];
    int rc;
    snprintf(path, sizeof(path), "/runs/%s?wait_ms=%d", r->run_id, r->p->poll_ms);
    rc = request(r, "GET", path, NULL, (uint32_t)(r->p->poll_ms + POLL_SLACK_MS), on_poll_done, &r->h);
    if (rc)
        silent(r, "cannot start a request");
}

/* ---- wake ---- */

static const char *const sandbox_names[] = {"one_off", "new", "reused", "resumed", "warm"};

/* The wake answer's "sandbox" and "resume_ms". An agent that does not say
 * (one from before sessions) ran the job in a fresh sandbox: NEW. */
static void sandbox_of(json_object *o, sbx_sandbox_use *use, int *resume_ms)
{
    const char *s = str_field(o, "sandbox");
    json_object *v;

    *use = SBX_SANDBOX_NEW;
    *resume_ms = 0;
    if (s && strcmp(s, "reused") == 0)
        *use = SBX_SANDBOX_REUSED;
    else if (s && strcmp(s, "resumed") == 0)
        *use = SBX_SANDBOX_RESUMED;
    else if (s && strcmp(s, "warm") == 0)
        *use = SBX_SANDBOX_WARM;
    if (*use == SBX_SANDBOX_RESUMED && json_object_object_get_ex(o, "resume_ms", &v) &&
        json_object_is_type(v, json_type_int)) {
        int64_t ms = json_object_get_int64(v);
        *resume_ms = ms < 0 ? 0 : ms > INT32_MAX ? INT32_MAX : (int)ms;
    }
}

static void on_wake_done(void *arg, const sbx_http_res *res)
{
    struct sbx_run *r = arg;
    json_object *o;
    const char *id, *err;
    char why[256];

    r->h = NULL;
    if (res->code != SBX_HTTP_OK) {
        silent(r, res->error);
        return;
    }
    heard(r);
    o = parse_reply(res);
    if (res->status == 200 && (id = str_field(o, "run_id")) != NULL && strlen(id) < sizeof(r->run_id)) {
        snprintf(r->run_id, sizeof(r->run_id), "%s", id);
        if (r->has_session) {
            const char *u = str_field(o, "preview_url");
            sandbox_of(o, &r->sandbox, &r->resume_ms);
            /* The agent serves the session's live preview (its proxy). */
            snprintf(r->preview_url, sizeof(r->preview_url), "%s", u ? u : "");
        }
        json_object_put(o);
        r->started_ms = sbx_now_ms();
        set_state(r, V_FOLLOW);
        sbx_info("vmpool", "run start job=%s slot=%s token=%" PRId64 " attempt=%d run=%s agent=%s%s%s",
                 r->job_id, r->slot, r->token, r->attempt, r->run_id, r->base_url,
                 r->has_session ? " sandbox=" : "", r->has_session ? sandbox_names[r->sandbox] : "");
        report_started(r);
        /* The callback may have canceled us; the run is still ours either way. */
        if (r->canceled)
            send_cancel(r);
        if (r->out)
            follow_log(r);
        step(r);
        return;
    }
    err = str_field(o, "error");
    if (res->status == 409 && err && strcmp(err, "busy") == 0) {
        uint64_t now = sbx_now_ms();
        json_object_put(o);
        if (!r->busy_since_ms)
            r->busy_since_ms = now;
        if (now - r->busy_since_ms < (uint64_t)r->p->busy_retry_ms && !r->canceled) {
            retry_later(r);
            return;
        }
        refused(r, "slot %s stayed busy for %" PRIu64 " ms", r->slot, now - r->busy_since_ms);
        return;
    }
    if (res->status == 409 && err && strcmp(err, "stale_token") == 0) {
        json_object_put(o);
        agent_error(res, why, sizeof(why));
        refused(r, "agent of %s refused the token: %s", r->vm, why);
        return;
    }
    json_object_put(o);
    agent_error(res, why, sizeof(why));
    if (res->status == 400 || res->status == 422) {
        /* The agent found the job itself unacceptable (its files clash or
         * name what no filesystem takes, it does not parse): the job's
         * fault, final (provider.h). */
        job_refused(r, "agent of %s refused the job: %s", r->vm, why);
        return;
    }
    fail(r, "agent of %s refused the wake: %s", r->vm, why);
}

static json_object *kv_object(const sbx_kv *kv, size_t n)
{
    json_object *o = json_object_new_object();
    for (size_t i = 0; o && i < n; i++)
        json_object_object_add(o, kv[i].key, json_object_new_string(kv[i].value ? kv[i].value : ""));
    return o;
}

/* The job message again (schemas/job.v1.schema.json), from the parsed job. */
static json_object *job_json(const sbx_job *j)
{
    json_object *o = json_object_new_object(), *res;

    if (!o)
        return NULL;
    json_object_object_add(o, "job_id", json_object_new_string(j->job_id));
    json_object_object_add(o, "project_id", json_object_new_string(j->project_id));
    if (j->script) {
        json_object_object_add(o, "script", json_object_new_string(j->script));
    } else {
        json_object *a = json_object_new_array();
        for (size_t i = 0; a && j->argv && j->argv[i]; i++)
            json_object_array_add(a, json_object_new_string(j->argv[i]));
        json_object_object_add(o, "command", a);
    }
    if (j->nenv)
        json_object_object_add(o, "env", kv_object(j->env, j->nenv));
    if (j->nfiles)
        json_object_object_add(o, "files", kv_object(j->files, j->nfiles));
    if (j->image)
        json_object_object_add(o, "image", json_object_new_string(j->image));
    if (j->timeout_s > 0)
        json_object_object_add(o, "timeout_s", json_object_new_int(j->timeout_s));
    if (j->cpus > 0 || j->memory_mb > 0 || j->pids > 0 || j->disk_mb > 0) {
        res = json_object_new_object();
        if (j->cpus > 0)
            json_object_object_add(res, "cpus", json_object_new_double(j->cpus));
        if (j->memory_mb > 0)
            json_object_object_add(res, "memory_mb", json_object_new_int(j->memory_mb));
        if (j->pids > 0)
            json_object_object_add(res, "pids", json_object_new_int(j->pids));
        if (j->disk_mb > 0)
            json_object_object_add(res, "disk_mb", json_object_new_int(j->disk_mb));
        json_object_object_add(o, "resources", res);
    }
    if (j->network)
        json_object_object_add(o, "network", json_object_new_boolean(1));
    if (j->provider[0])
        json_object_object_add(o, "provider", json_object_new_string(j->provider));
    if (j->traceparent) {
        json_object *t = json_object_new_object();
        json_object_object_add(t, "traceparent", json_object_new_string(j->traceparent));
        if (j->tracestate)
            json_object_object_add(t, "tracestate", json_object_new_string(j->tracestate));
        json_object_object_add(o, "trace", t);
    }
    if (j->nmetadata)
        json_object_object_add(o, "metadata", kv_object(j->metadata, j->nmetadata));
    if (j->session_id[0]) {
        /* The agent opens the live preview of the dev server's port; the
         * timeouts are the worker's business (worker/session.c). */
        json_object *s = json_object_new_object();
        json_object_object_add(s, "id", json_object_new_string(j->session_id));
        if (j->session_preview_port > 0)
            json_object_object_add(s, "preview_port", json_object_new_int(j->session_preview_port));
        json_object_object_add(o, "session", s);
    }
    return o;
}

static char *wake_body(const sbx_run_req *req)
{
    json_object *o = json_object_new_object(), *job = job_json(req->job);
    char *out = NULL;

    if (o && job) {
        json_object_object_add(o, "slot", json_object_new_string(req->slot));
        if (req->session)
            json_object_object_add(o, "session", json_object_new_string(req->session));
        json_object_object_add(o, "token", json_object_new_int64(req->token));
        json_object_object_add(o, "attempt", json_object_new_int(req->attempt));
        json_object_object_add(o, "job", job);
        job = NULL;
        out = strdup(json_object_to_json_string_ext(
            o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    }
    json_object_put(job);
    json_object_put(o);
    return out;
}

static void wake(struct sbx_run *r)
{
    if (request(r, "POST", "/wake", r->wake_body, WAKE_TIMEOUT_MS, on_wake_done, &r->h) != 0)
        silent(r, "cannot start a request");
}

/* ---- lookup ---- */

static void on_lookup(void *arg, redisReply *rep)
{
    struct sbx_run *r = arg;

    r->lookup_pending = 0;
    if (r->canceled) {
        sbx_result res;
        init_result(r, &res);
        finish(r, &res);
        return;
    }
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        silent(r, rep ? rep->str : "redis connection lost");
        return;
    }
    if (rep->type != REDIS_REPLY_STRING || rep->len == 0) {
        fail(r, "vm %s is not registered ({sbx}:vm:%s has no base_url)", r->vm, r->vm);
        return;
    }
    if (rep->len > BASE_URL_MAX) {
        fail(r, "vm %s: base_url longer than %d bytes", r->vm, BASE_URL_MAX);
        return;
    }
    memcpy(r->base_url, rep->str, rep->len);
    r->base_url[rep->len] = '\0';
    heard(r);
    set_state(r, V_WAKE);
    step(r);
}

static void lookup(struct sbx_run *r)
{
    char key[SLOT_MAX + 16];
    const char *argv[] = {"HGET", key, SBX_RKEY_VM_BASE_URL};
    size_t lens[3];

    snprintf(key, sizeof(key), SBX_RKEY_VM "%s", r->vm);
    for (int i = 0; i < 3; i++)
        lens[i] = strlen(argv[i]);
    if (sbx_redis_cmd(r->p->redis, on_lookup, r, 3, argv, lens) == 0) {
        r->lookup_pending = 1;
        return;
    }
    silent(r, "redis unreachable");
}

/* ---- the driver ---- */

static void step(struct sbx_run *r)
{
    switch (r->st) {
    case V_LOOKUP:
        if (r->canceled) {
            sbx_result res;
            init_result(r, &res);
            finish(r, &res);
            return;
        }
        lookup(r);
        return;
    case V_WAKE:
        wake(r);
        return;
    case V_FOLLOW:
        poll_run(r);
        return;
    case V_DONE:
        return;
    }
}

static void on_timer(sbx_timer *t) { step(t->data); }

/* ---- ops ---- */

/* "<id>" or "<id>#<digits>", id as an agent's SBX_AGENT_ID. */
static int slot_vm(const char *slot, char vm[VM_ID_MAX + 1])
{
    const char *hash = slot ? strchr(slot, '#') : NULL;
    size_t n;
    if (!slot || strlen(slot) > SLOT_MAX)
        return -1;
    n = hash ? (size_t)(hash - slot) : strlen(slot);
    if (n > VM_ID_MAX)
        return -1;
    memcpy(vm, slot, n);
    vm[n] = '\0';
    if (!sbx_id_valid(vm))
        return -1;
    if (hash) {
        const char *d = hash + 1;
        if (!*d)
            return -1;
        for (; *d; d++)
            if (*d < '0' || *d > '9')
                return -1;
    }
    return 0;
}

static int vm_start(sbx_provider *bp, const sbx_run_req *req, sbx_run_cb cb, void *arg,
                    sbx_run **out, char *err, size_t errlen)
{
    vmpool *p = (vmpool *)bp;
    struct sbx_run *r;
    char vm[VM_ID_MAX + 1];

    if (slot_vm(req->slot, vm) != 0) {
        snprintf(err, errlen, "slot %.128s is not a vmpool slot (<vm id> or <vm id>#<n>)",
                 req->slot ? req->slot : "(null)");
        return -ENOENT;
    }
    for (r = p->runs; r; r = r->next)
        if (strcmp(r->slot, req->slot) == 0) {
            snprintf(err, errlen, "slot %s is busy with job %s (token %" PRId64 ")", r->slot,
                     r->job_id, r->token);
            return -EBUSY;
        }
    if (!req->job || (!req->job->script && !(req->job->argv && req->job->argv[0]))) {
        snprintf(err, errlen, "job has neither command nor script");
        return -EINVAL;
    }
    if (req->session && !sbx_session_name_ok(req->session)) {
        snprintf(err, errlen, "session name %.64s is not [a-z0-9-]{1,%d}", req->session,
                 SBX_SESSION_NAME_MAX);
        return -EINVAL;
    }
    r = calloc(1, sizeof(*r));
    if (!r || !(r->wake_body = wake_body(req))) {
        free(r);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    r->p = p;
    r->cb = cb;
    r->arg = arg;
    r->token = req->token;
    r->attempt = req->attempt;
    r->has_session = req->session != NULL;
    r->out = req->output;
    r->out_arg = req->output_arg;
    r->timeout_s = req->job->timeout_s > 0 ? req->job->timeout_s : SBX_DEFAULT_TIMEOUT_S;
    snprintf(r->slot, sizeof(r->slot), "%s", req->slot);
    snprintf(r->vm, sizeof(r->vm), "%s", vm);
    snprintf(r->job_id, sizeof(r->job_id), "%s", req->job->job_id);
    r->st = V_LOOKUP;
    sbx_timer_init(&r->t, on_timer, r);
    sbx_timer_init(&r->lt, on_log_timer, r);
    /* The first step runs from the loop: no callback from inside start(). */
    sbx_timer_start(bp->loop, &r->t, 0);
    r->next = p->runs;
    if (p->runs)
        p->runs->prev = r;
    p->runs = r;
    *out = r;
    return 0;
}

static void vm_cancel(sbx_provider *bp, sbx_run *r)
{
    (void)bp;
    if (r->canceled)
        return;
    sbx_info("vmpool", "run cancel job=%s slot=%s token=%" PRId64 " run=%s", r->job_id, r->slot,
             r->token, r->run_id[0] ? r->run_id : "-");
    r->canceled = 1;
    switch (r->st) {
    case V_LOOKUP:
        /* Nothing sent yet: end without waking (from the loop, not here). */
        if (!r->lookup_pending) {
            sbx_timer_stop(bp->loop, &r->t);
            sbx_timer_start(bp->loop, &r->t, 0);
        }
        return;
    case V_WAKE:
        /* Whether the build exists yet only the wake's answer tells (an
         * earlier try may have reached the agent): on_wake_done cancels. */
        return;
    case V_FOLLOW:
        send_cancel(r);
        return;
    case V_DONE:
        return;
    }
}

/* ---- session_op ---- */

typedef enum sopstate { S_LOOKUP, S_SEND } sopstate;

typedef struct sop {
    vmpool *p;
    struct sop *prev, *next;
    sopstate st;
    sbx_session_op op;
    char slot[SLOT_MAX + 1];
    char vm[VM_ID_MAX + 1];
    char session[SBX_SESSION_NAME_MAX + 1];
    int64_t token;
    char base_url[BASE_URL_MAX + 1];
    sbx_http_handle *h;
    sbx_timer t;
    uint64_t backoff_ms, silent_since_ms, busy_since_ms;
    sbx_session_cb cb;
    void *arg;
} sop;

static const char *sop_name(const sop *o) { return o->op == SBX_SESSION_PAUSE ? "pause" : "destroy"; }

static void sop_unlink(sop *o)
{
    vmpool *p = o->p;
    if (o->prev)
        o->prev->next = o->next;
    else if (p->sops == o)
        p->sops = o->next;
    if (o->next)
        o->next->prev = o->prev;
    o->prev = o->next = NULL;
}

static void sop_free(sop *o)
{
    sbx_timer_stop(o->p->base.loop, &o->t);
    if (o->h)
        sbx_http_cancel(o->h);
    free(o);
}

/* The answer, once; always from the loop (a timer, an HTTP or Redis reply). */
static void sop_done(sop *o, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void sop_done(sop *o, int rc, const char *fmt, ...)
{
    sbx_session_cb cb = o->cb;
    void *arg = o->arg;
    char why[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    sbx_log(rc ? SBX_LOG_WARN : SBX_LOG_INFO, "vmpool",
            "session %s %s slot=%s token=%" PRId64 " rc=%d%s%s", sop_name(o), o->session, o->slot,
            o->token, rc, why[0] ? " " : "", why);
    sop_unlink(o);
    sop_free(o);
    cb(arg, rc, why);
}

/* No answer (Redis or the agent): again after a backoff, until
 * unreachable_ms of silence. */
static void sop_silent(sop *o, const char *what)
{
    uint64_t now = sbx_now_ms();
    if (!o->silent_since_ms)
        o->silent_since_ms = now;
    if (now - o->silent_since_ms >= (uint64_t)o->p->unreachable_ms) {
        sop_done(o, -EHOSTUNREACH, "%s of %s unreachable for %" PRIu64 " ms: %s",
                 o->st == S_LOOKUP ? "redis, asked for the agent" : "agent", o->vm,
                 now - o->silent_since_ms, what);
        return;
    }
    sbx_timer_start(o->p->base.loop, &o->t, backoff_next(&o->backoff_ms));
}

static void on_sop_done(void *arg, const sbx_http_res *res)
{
    sop *o = arg;
    json_object *j;
    const char *e, *st;
    char why[256];
    uint64_t now = sbx_now_ms();

    o->h = NULL;
    if (res->code != SBX_HTTP_OK) {
        sop_silent(o, res->error);
        return;
    }
    if (res->status == 503) {
        /* Stopping, or its Redis did not confirm the token yet: a pause
         * could come through later; the agent stays the one to ask. */
        agent_error(res, why, sizeof(why));
        sop_silent(o, why);
        return;
    }
    o->silent_since_ms = 0;
    o->backoff_ms = 0;
    j = parse_reply(res);
    e = str_field(j, "error");
    if (res->status == 200) {
        st = str_field(j, "state");
        sop_done(o, 0, "%s", st ? st : "");
        json_object_put(j);
        return;
    }
    if (res->status == 409 && e && strcmp(e, "busy") == 0) {
        json_object_put(j);
        if (!o->busy_since_ms)
            o->busy_since_ms = now;
        if (now - o->busy_since_ms < (uint64_t)o->p->busy_retry_ms) {
            sbx_timer_start(o->p->base.loop, &o->t, backoff_next(&o->backoff_ms));
            return;
        }
        agent_error(res, why, sizeof(why));
        sop_done(o, -EBUSY, "slot stayed busy for %" PRIu64 " ms: %s", now - o->busy_since_ms, why);
        return;
    }
    agent_error(res, why, sizeof(why));
    if (res->status == 409 && e && (strcmp(e, "stale_token") == 0 || strcmp(e, "future_token") == 0))
        sop_done(o, -ESTALE, "agent of %s refused the token: %s", o->vm, why);
    else if (res->status == 404 && e && strcmp(e, "unknown_slot") == 0)
        sop_done(o, -ENOENT, "agent of %s: %s", o->vm, why);
    else if (res->status == 501)
        sop_done(o, -ENOTSUP, "agent of %s: %s", o->vm, why);
    else
        sop_done(o, -EIO, "agent of %s: %s", o->vm, why);
    json_object_put(j);
}

static void sop_send(sop *o)
{
    char path[SBX_SESSION_NAME_MAX + 32], body[SLOT_MAX + 64];
    json_object *j = json_object_new_object();
    const char *txt;

    snprintf(path, sizeof(path), "/sessions/%s/%s", o->session, sop_name(o));
    if (!j) {
        sop_done(o, -ENOMEM, "out of memory");
        return;
    }
    json_object_object_add(j, "slot", json_object_new_string(o->slot));
    json_object_object_add(j, "token", json_object_new_int64(o->token));
    txt = json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN);
    snprintf(body, sizeof(body), "%s", txt ? txt : "");
    json_object_put(j);
    if (agent_request(o->p, o->base_url, "POST", path, body, SESSION_TIMEOUT_MS, on_sop_done, o,
                      &o->h) != 0)
        sop_silent(o, "cannot start a request");
}

static void on_sop_lookup(void *arg, redisReply *rep)
{
    sop *o = arg;

    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        sop_silent(o, rep ? rep->str : "redis connection lost");
        return;
    }
    if (rep->type != REDIS_REPLY_STRING || rep->len == 0 || rep->len > BASE_URL_MAX) {
        sop_done(o, -ENOENT, "vm %s is not registered ({sbx}:vm:%s has no usable base_url)", o->vm,
                 o->vm);
        return;
    }
    memcpy(o->base_url, rep->str, rep->len);
    o->base_url[rep->len] = '\0';
    o->silent_since_ms = 0;
    o->backoff_ms = 0;
    o->st = S_SEND;
    sop_send(o);
}

static void on_sop_timer(sbx_timer *t)
{
    sop *o = t->data;
    char key[VM_ID_MAX + 16];
    const char *argv[] = {"HGET", key, SBX_RKEY_VM_BASE_URL};
    size_t lens[3];

    if (o->st == S_SEND) {
        sop_send(o);
        return;
    }
    snprintf(key, sizeof(key), SBX_RKEY_VM "%s", o->vm);
    for (int i = 0; i < 3; i++)
        lens[i] = strlen(argv[i]);
    /* A reply due cannot be withdrawn; destroy() frees the connection,
     * which drops it, before it frees the op. */
    if (sbx_redis_cmd(o->p->redis, on_sop_lookup, o, 3, argv, lens) != 0)
        sop_silent(o, "redis unreachable");
}

static int vm_session_op(sbx_provider *bp, sbx_session_op op, const char *slot, const char *session,
                         int64_t token, sbx_session_cb cb, void *arg)
{
    vmpool *p = (vmpool *)bp;
    char vm[VM_ID_MAX + 1];
    sop *o;

    if (slot_vm(slot, vm) != 0)
        return -ENOENT;
    if (!session || !sbx_session_name_ok(session) || token <= 0 ||
        (op != SBX_SESSION_PAUSE && op != SBX_SESSION_DESTROY))
        return -EINVAL;
    o = calloc(1, sizeof(*o));
    if (!o)
        return -ENOMEM;
    o->p = p;
    o->op = op;
    o->token = token;
    o->cb = cb;
    o->arg = arg;
    o->st = S_LOOKUP;
    snprintf(o->slot, sizeof(o->slot), "%s", slot);
    snprintf(o->vm, sizeof(o->vm), "%s", vm);
    snprintf(o->session, sizeof(o->session), "%s", session);
    sbx_timer_init(&o->t, on_sop_timer, o);
    /* The first step runs from the loop: no callback from inside the call. */
    sbx_timer_start(bp->loop, &o->t, 0);
    o->next = p->sops;
    if (p->sops)
        p->sops->prev = o;
    p->sops = o;
    sbx_debug("vmpool", "session %s %s slot=%s token=%" PRId64, sop_name(o), session, slot, token);
    return 0;
}

static size_t vm_slots(sbx_provider *bp, const char ***ids)
{
    (void)bp;
    *ids = NULL;
    return 0;
}

static const char *vm_pool(sbx_provider *bp)
{
    (void)bp;
    return SBX_VMPOOL_POOL;
}

static void on_destroy_cancel(void *arg, const sbx_http_res *res)
{
    int *pending = arg;
    (void)res;
    (*pending)--;
}

/* Best effort, bounded: ask each agent to stop what we started there. */
static void cancel_remote(vmpool *p)
{
    sbx_loop *l = NULL;
    sbx_http *h = NULL;
    const char *headers[] = {p->auth, "Content-Type: application/json", NULL};
    int pending = 0;
    uint64_t until;

    for (struct sbx_run *r = p->runs; r; r = r->next)
        pending += r->run_id[0] != '\0';
    if (!pending || sbx_loop_new(&l) != 0)
        return;
    pending = 0;
    if (sbx_http_new(l, &h) == 0) {
        for (struct sbx_run *r = p->runs; r; r = r->next) {
            char url[BASE_URL_MAX + 128], body[64];
            sbx_http_req req;
            if (!r->run_id[0])
                continue;
            snprintf(url, sizeof(url), "%s/runs/%s/cancel", r->base_url, r->run_id);
            snprintf(body, sizeof(body), "{\"token\":%" PRId64 "}", r->token);
            memset(&req, 0, sizeof(req));
            req.method = "POST";
            req.url = url;
            req.headers = headers;
            req.body = body;
            req.body_len = strlen(body);
            req.timeout_ms = DESTROY_WAIT_MS;
            req.connect_timeout_ms = CONNECT_TIMEOUT_MS;
            if (sbx_http_request(h, &req, on_destroy_cancel, &pending, NULL) == 0)
                pending++;
        }
        until = sbx_now_ms() + DESTROY_WAIT_MS;
        while (pending > 0 && sbx_now_ms() < until)
            sbx_loop_once(l, 50);
        sbx_http_free(h);
    }
    sbx_loop_free(l);
}

static void vm_destroy(sbx_provider *bp)
{
    vmpool *p = (vmpool *)bp;
    int n = 0;

    /* Nothing of ours may call back now: no HTTP callbacks, no Redis
     * replies (sbx_redis_free drops them), then the runs go. */
    sbx_http_free(p->http);
    p->http = NULL;
    sbx_redis_free(p->redis);
    p->redis = NULL;
    cancel_remote(p);
    while (p->runs) {
        struct sbx_run *r = p->runs;
        p->runs = r->next;
        sbx_timer_stop(bp->loop, &r->t);
        r->h = r->hc = r->hl = NULL; /* went with p->http */
        sbx_info("vmpool", "run abandoned at shutdown job=%s slot=%s token=%" PRId64 " run=%s",
                 r->job_id, r->slot, r->token, r->run_id[0] ? r->run_id : "-");
        run_free(r);
        n++;
    }
    while (p->sops) {
        sop *o = p->sops;
        p->sops = o->next;
        o->h = NULL; /* went with p->http */
        sbx_info("vmpool", "session %s %s abandoned at shutdown slot=%s", sop_name(o), o->session,
                 o->slot);
        sop_free(o);
    }
    sbx_info("vmpool", "provider closed abandoned=%d", n);
    free(p->auth);
    free(p);
}

static const sbx_provider_ops vmpool_ops = {
    .name = "vmpool",
    .start = vm_start,
    .cancel = vm_cancel,
    .slots = vm_slots,
    .pool = vm_pool,
    .session_op = vm_session_op,
    .destroy = vm_destroy,
};

int sbx_vmpool_new(sbx_loop *loop, const sbx_vmpool_config *cfg, sbx_provider **out,
                   char *err, size_t errlen)
{
    vmpool *p;
    size_t n;
    int rc;

    if (!cfg->service_key || !*cfg->service_key) {
        snprintf(err, errlen, "SBX_VMPOOL_KEY is not set: the service key of the agents");
        return -EINVAL;
    }
    for (const char *k = cfg->service_key; *k; k++)
        if (*k < '!' || *k > '~') {
            snprintf(err, errlen, "SBX_VMPOOL_KEY is not valid: printable characters without spaces");
            return -EINVAL;
        }
    p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    p->base.ops = &vmpool_ops;
    p->base.loop = loop;
    p->unreachable_ms = cfg->unreachable_ms > 0 ? cfg->unreachable_ms : DEFAULT_UNREACHABLE_MS;
    p->busy_retry_ms = cfg->busy_retry_ms > 0 ? cfg->busy_retry_ms : DEFAULT_BUSY_RETRY_MS;
    p->poll_ms = cfg->poll_ms > 0 ? cfg->poll_ms : DEFAULT_POLL_MS;
    n = strlen("Authorization: Bearer ") + strlen(cfg->service_key) + 1;
    p->auth = malloc(n);
    if (!p->auth) {
        free(p);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    snprintf(p->auth, n, "Authorization: Bearer %s", cfg->service_key);
    rc = sbx_http_new(loop, &p->http);
    if (rc) {
        snprintf(err, errlen, "http client: %s", strerror(-rc));
        goto fail;
    }
    rc = sbx_redis_new(loop, cfg->redis_url ? cfg->redis_url : SBX_REDIS_URL_DEFAULT, NULL,
                       NULL, &p->redis, err, errlen);
    if (rc)
        goto fail;
    *out = &p->base;
    return 0;
fail:
    sbx_http_free(p->http);
    free(p->auth);
    free(p);
    return rc;
}
