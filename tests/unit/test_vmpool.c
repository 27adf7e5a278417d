/* test_vmpool.c — the vmpool provider against real sbx-agent processes.
 *
 * One private redis-server on a free port and three sbx-agent processes on
 * free 127.0.0.1 ports (capacities 1, 1 and 2, so both slot forms appear:
 * "<id>" and "<id>#<i>"), each with its own work dir and a uid range
 * derived from our pid (a plain and an ASan run at once never sweep each
 * other's builds). Everything is real: bwrap sandboxes on the agents, HTTP
 * between provider and agents, Lua in Redis.
 *
 * First the shared provider scenarios (conformance.c) run through the
 * provider. The scenarios pick slots with slots(), which a vmpool provider
 * leaves empty (agents register themselves), so the factory wraps the
 * provider in a thin pass-through that reports the slots the agents
 * registered in Redis. Then what only the vmpool promises: jobs spread over
 * the agents; stale tokens refused by /wake and cancel, also after an agent
 * restart; a newer lease takes a busy slot over; the service key enforced
 * and never logged; previews served from the VM that built them, without
 * escaping the preview tree (copied out of the build's disk tmpfs: no
 * symlink, FIFO or oversized tree kept); the disk quota over /workspace and
 * /tmp together; the log followed while it is written; a
 * kill -9'd agent turned into ERROR within a bounded time; a stale
 * heartbeat keeping a VM out of the pool, and registration bringing it
 * back; bad configuration; draining on SIGTERM; and the start -> STARTED
 * latency (median of 20).
 *
 * Sessions (issue 13): five runs of one session share the sandbox (a file
 * of run 1 read by run 5) and a background process of run 1 is alive in
 * the later runs; session_op(PAUSE) freezes it and the next run reports
 * RESUMED with resume_ms (printed), the process still alive;
 * session_op(DESTROY) leaves nothing running and the next run is NEW; both
 * refuse a stale token; a run of another session, or of none, on a slot
 * holding a session's sandbox gets the slot once that sandbox is gone; a
 * canceled or timed-out run takes the sandbox with it; a session's sandbox,
 * even paused, dies with its agent (kill -9 and restart, or SIGTERM); the
 * /sessions endpoints raw, and the agent's session metrics.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "conformance.h"
#include "http.h"
#include "lease.h"
#include "log.h"
#include "provider_vmpool.h"
#include "redis.h"
#include "svc.h"

#ifndef SBX_AGENT_BIN
#define SBX_AGENT_BIN "build/bin/sbx-agent"
#endif

#define KEY "vmpool-test-key-6f1d2c9a8b7e"
#define NAGENTS 3
#define HEARTBEAT_MS 250
#define TTL_MS 2000
/* What the tests' providers wait before calling an agent dead. */
#define UNREACHABLE_MS 2000

typedef struct agent_proc {
    char id[40];
    int capacity;
    int port;
    int uid_base;
    pid_t pid;
    char dir[192];
    char log[224];
    char url[64];
} agent_proc;

static test_redis g_redis;
static char g_redis_url[64];
static char g_root[64];
static agent_proc g_agents[NAGENTS];
static redisContext *g_rc;

/* ---- Redis, synchronously, for checks ---- */

static redisReply *rcmd(const char *fmt, ...)
{
    va_list ap;
    redisReply *r;
    va_start(ap, fmt);
    r = redisvCommand(g_rc, fmt, ap);
    va_end(ap);
    return r;
}

static long long rint_(const char *fmt, const char *arg)
{
    redisReply *r = rcmd(fmt, arg);
    long long v = -1;
    if (r && r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    else if (r && r->type == REDIS_REPLY_STRING)
        v = strtoll(r->str, NULL, 10);
    freeReplyObject(r);
    return v;
}

static int64_t next_token(void) { return rint_("INCR %s", "{sbx}:fence"); }

static uint64_t redis_now_ms(void)
{
    redisReply *r = rcmd("TIME");
    uint64_t v = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2)
        v = (uint64_t)strtoull(r->element[0]->str, NULL, 10) * 1000 +
            (uint64_t)strtoull(r->element[1]->str, NULL, 10) / 1000;
    freeReplyObject(r);
    return v;
}

/* HGET {sbx}:vm:<id> field into out ("" when absent). */
static void vm_field(const char *id, const char *field, char *out, size_t len)
{
    redisReply *r = rcmd("HGET {sbx}:vm:%s %s", id, field);
    snprintf(out, len, "%s", r && r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
}

static int is_member(const char *set, const char *slot)
{
    redisReply *r = rcmd("SISMEMBER %s %s", set, slot);
    int v = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return v;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- agent processes ---- */

static const char *agent_bin(void)
{
    const char *b = getenv("SBX_AGENT_BIN");
    return b && *b ? b : SBX_AGENT_BIN;
}

static pid_t spawn_agent(const agent_proc *a, const char *const *env_over)
{
    pid_t pid = fork();
    if (pid == 0) {
        char v[64];
        int fd = open(a->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        /* A crashed test must not leave agents behind. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        setenv("SBX_AGENT_KEY", KEY, 1);
        setenv("SBX_AGENT_ID", a->id, 1);
        snprintf(v, sizeof(v), "127.0.0.1:%d", a->port);
        setenv("SBX_AGENT_LISTEN", v, 1);
        setenv("SBX_REDIS_URL", g_redis_url, 1);
        snprintf(v, sizeof(v), "%d", a->capacity);
        setenv("SBX_AGENT_CAPACITY", v, 1);
        setenv("SBX_WORK_DIR", a->dir, 1);
        snprintf(v, sizeof(v), "%d", a->uid_base);
        setenv("SBX_UID_BASE", v, 1);
        snprintf(v, sizeof(v), "%d", HEARTBEAT_MS);
        setenv("SBX_AGENT_HEARTBEAT_MS", v, 1);
        snprintf(v, sizeof(v), "%d", TTL_MS);
        setenv("SBX_AGENT_TTL_MS", v, 1);
        setenv("SBX_SHUTDOWN_GRACE_MS", "10000", 1);
        setenv("SBX_AGENT_LABELS", "zone=test", 1);
        for (const char *const *e = env_over; e && *e; e += 2) {
            if (e[1])
                setenv(e[0], e[1], 1);
            else
                unsetenv(e[0]);
        }
        execl(agent_bin(), "sbx-agent", (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Starts the agent and waits until it heartbeats after its start. */
static int agent_start(agent_proc *a)
{
    uint64_t t0 = redis_now_ms(), until = sbx_now_ms() + 15000;
    char hb[32], url[96];

    a->pid = spawn_agent(a, NULL);
    if (a->pid < 0)
        return -1;
    while (sbx_now_ms() < until) {
        int st;
        vm_field(a->id, "heartbeat_ms", hb, sizeof(hb));
        vm_field(a->id, "base_url", url, sizeof(url));
        if (hb[0] && strtoull(hb, NULL, 10) >= t0 && strcmp(url, a->url) == 0)
            return 0;
        if (waitpid(a->pid, &st, WNOHANG) == a->pid) {
            a->pid = 0;
            return -1;
        }
        sleep_ms(20);
    }
    return -1;
}

/* Waits for the agent to exit; its status, or -1 after timeout_ms. */
static int agent_wait(agent_proc *a, int timeout_ms)
{
    uint64_t until = sbx_now_ms() + (uint64_t)timeout_ms;
    int st;
    while (a->pid > 0 && sbx_now_ms() < until) {
        if (waitpid(a->pid, &st, WNOHANG) == a->pid) {
            a->pid = 0;
            return st;
        }
        sleep_ms(10);
    }
    return -1;
}

static void agent_kill(agent_proc *a)
{
    if (a->pid > 0) {
        kill(a->pid, SIGCONT);
        kill(a->pid, SIGKILL);
        waitpid(a->pid, NULL, 0);
        a->pid = 0;
    }
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "re");
    char *buf;
    long n;
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = calloc(1, (size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

/* ---- a provider with the slots the agents registered ---- */

typedef struct shim {
    sbx_provider base;
    sbx_provider *inner;
    char ids[8][64];
    const char *ptrs[8];
    size_t n;
} shim;

static int shim_start(sbx_provider *bp, const sbx_run_req *req, sbx_run_cb cb, void *arg,
                      sbx_run **out, char *err, size_t errlen)
{
    shim *s = (shim *)bp;
    return s->inner->ops->start(s->inner, req, cb, arg, out, err, errlen);
}

static void shim_cancel(sbx_provider *bp, sbx_run *r)
{
    shim *s = (shim *)bp;
    s->inner->ops->cancel(s->inner, r);
}

static size_t shim_slots(sbx_provider *bp, const char ***ids)
{
    shim *s = (shim *)bp;
    *ids = s->ptrs;
    return s->n;
}

static const char *shim_pool(sbx_provider *bp)
{
    shim *s = (shim *)bp;
    return s->inner->ops->pool(s->inner);
}

static int shim_session_op(sbx_provider *bp, sbx_session_op op, const char *slot,
                           const char *session, int64_t token, sbx_session_cb cb, void *arg)
{
    shim *s = (shim *)bp;
    return s->inner->ops->session_op(s->inner, op, slot, session, token, cb, arg);
}

static void shim_destroy(sbx_provider *bp)
{
    shim *s = (shim *)bp;
    s->inner->ops->destroy(s->inner);
    free(s);
}

static const sbx_provider_ops shim_ops = {
    .name = "vmpool-test", .start = shim_start, .cancel = shim_cancel,
    .slots = shim_slots, .pool = shim_pool, .session_op = shim_session_op,
    .destroy = shim_destroy,
};

static sbx_provider *make_vmpool(sbx_loop *loop)
{
    sbx_vmpool_config cfg;
    sbx_provider *p = NULL;
    char err[256];

    memset(&cfg, 0, sizeof(cfg));
    cfg.redis_url = g_redis_url;
    cfg.service_key = KEY;
    cfg.unreachable_ms = UNREACHABLE_MS;
    cfg.busy_retry_ms = 8000;
    cfg.poll_ms = 1000;
    if (sbx_vmpool_new(loop, &cfg, &p, err, sizeof(err)) != 0) {
        print_error("sbx_vmpool_new: %s\n", err);
        return NULL;
    }
    return p;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static sbx_provider *make_shim(sbx_loop *loop)
{
    shim *s = calloc(1, sizeof(*s));
    redisReply *r;

    if (!s)
        return NULL;
    s->inner = make_vmpool(loop);
    r = rcmd("SMEMBERS {sbx}:slots:vmpool");
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements && s->n < 8; i++)
        snprintf(s->ids[s->n++], sizeof(s->ids[0]), "%s", r->element[i]->str);
    freeReplyObject(r);
    qsort(s->ids, s->n, sizeof(s->ids[0]), cmp_str);
    for (size_t i = 0; i < s->n; i++)
        s->ptrs[i] = s->ids[i];
    if (!s->inner) {
        free(s);
        return NULL;
    }
    s->base.ops = &shim_ops;
    s->base.loop = loop;
    return &s->base;
}

/* ---- per-test environment ---- */

typedef struct tenv {
    sbx_loop *loop;
    sbx_provider *p;
    sbx_redis *redis;
    sbx_leases *leases;
    sbx_http *http;
} tenv;

typedef struct vrun {
    sbx_run *run;
    int started, finished;
    uint64_t t0_us, t_started_us, t_finished_us;
    sbx_result res;
} vrun;

static void on_ev(void *arg, sbx_run_event ev, const sbx_result *res)
{
    vrun *v = arg;
    if (ev == SBX_RUN_STARTED) {
        v->started++;
        v->t_started_us = sbx_now_us();
        return;
    }
    v->finished++;
    v->t_finished_us = sbx_now_us();
    v->res = *res;
}

static void job_init(sbx_job *j, const char *id, const char *script, int timeout_s)
{
    memset(j, 0, sizeof(*j));
    snprintf(j->job_id, sizeof(j->job_id), "%s", id);
    snprintf(j->project_id, sizeof(j->project_id), "p-%s", id);
    j->script = (char *)script;
    j->timeout_s = timeout_s;
}

static int start_in(tenv *e, const char *slot, int64_t token, const sbx_job *job,
                    const char *session, vrun *v)
{
    sbx_run_req req = {0}; /* output: NULL unless a test sets it */
    char err[256] = "";
    int rc;
    memset(v, 0, sizeof(*v));
    memset(&req, 0, sizeof(req));
    req.job = job;
    req.slot = slot;
    req.token = token;
    req.attempt = 1;
    req.session = session;
    v->t0_us = sbx_now_us();
    rc = e->p->ops->start(e->p, &req, on_ev, v, &v->run, err, sizeof(err));
    if (rc)
        print_error("start on %s: %s\n", slot, err);
    return rc;
}

static int start_job(tenv *e, const char *slot, int64_t token, const sbx_job *job, vrun *v)
{
    return start_in(e, slot, token, job, NULL, v);
}

static int wait_finished(tenv *e, vrun *const *vs, size_t n, int timeout_ms)
{
    uint64_t until = sbx_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        size_t done = 0;
        for (size_t i = 0; i < n; i++)
            done += vs[i]->finished > 0;
        if (done == n)
            return 1;
        if (sbx_now_ms() >= until)
            return 0;
        sbx_loop_once(e->loop, 20);
    }
}

static int wait_one(tenv *e, vrun *v, int timeout_ms) { return wait_finished(e, &v, 1, timeout_ms); }

static int wait_started(tenv *e, vrun *v, int timeout_ms)
{
    uint64_t until = sbx_now_ms() + (uint64_t)timeout_ms;
    while (!v->started && !v->finished && sbx_now_ms() < until)
        sbx_loop_once(e->loop, 20);
    return v->started;
}

static int setup(void **state)
{
    tenv *e = calloc(1, sizeof(*e));
    char err[256];
    uint64_t until;

    if (!e || sbx_loop_new(&e->loop) != 0)
        return -1;
    e->p = make_vmpool(e->loop);
    if (!e->p || sbx_http_new(e->loop, &e->http) != 0 ||
        sbx_redis_new(e->loop, g_redis_url, NULL, NULL, &e->redis, err, sizeof(err)) != 0 ||
        sbx_leases_new(e->redis, &e->leases) != 0)
        return -1;
    until = sbx_now_ms() + 5000;
    while (!sbx_redis_connected(e->redis) && sbx_now_ms() < until)
        sbx_loop_once(e->loop, 20);
    *state = e;
    return sbx_redis_connected(e->redis) ? 0 : -1;
}

static int teardown(void **state)
{
    tenv *e = *state;
    if (!e)
        return 0;
    if (e->p)
        e->p->ops->destroy(e->p);
    sbx_http_free(e->http);
    sbx_leases_free(e->leases);
    sbx_redis_free(e->redis);
    sbx_loop_free(e->loop);
    free(e);
    return 0;
}

/* ---- leases ---- */

typedef struct lres {
    int done;
    sbx_lease_status status;
    char slot[192];
    int64_t token;
} lres;

static void on_lease(void *arg, const sbx_lease_reply *rep)
{
    lres *l = arg;
    l->status = rep->status;
    snprintf(l->slot, sizeof(l->slot), "%s", rep->slot);
    l->token = rep->token;
    l->done = 1;
}

static int acquire(tenv *e, const char *project, lres *l)
{
    memset(l, 0, sizeof(*l));
    if (sbx_lease_acquire(e->leases, SBX_VMPOOL_POOL, project, project, "test-worker", 60000, 0,
                          on_lease, l) != 0)
        return -1;
    test_run_until(e->loop, &l->done, 5000);
    return l->done ? 0 : -1;
}

static void release(tenv *e, const lres *l)
{
    lres r;
    memset(&r, 0, sizeof(r));
    if (sbx_lease_release(e->leases, l->slot, l->token, on_lease, &r) == 0)
        test_run_until(e->loop, &r.done, 5000);
}

/* ---- raw HTTP to an agent ---- */

typedef struct hres {
    int done;
    sbx_http_code code;
    long status;
    char body[16384];
    uint64_t first_chunk_ms;
    uint64_t done_ms;
    size_t len;
} hres;

static void on_http(void *arg, const sbx_http_res *res)
{
    hres *h = arg;
    h->code = res->code;
    h->status = res->status;
    if (res->body && res->body_len && !h->len) {
        h->len = res->body_len < sizeof(h->body) - 1 ? res->body_len : sizeof(h->body) - 1;
        memcpy(h->body, res->body, h->len);
        h->body[h->len] = '\0';
    }
    h->done_ms = sbx_now_ms();
    h->done = 1;
}

static int on_chunk(void *arg, const char *data, size_t len)
{
    hres *h = arg;
    if (!h->first_chunk_ms)
        h->first_chunk_ms = sbx_now_ms();
    if (h->len + len < sizeof(h->body)) {
        memcpy(h->body + h->len, data, len);
        h->len += len;
        h->body[h->len] = '\0';
    }
    return 0;
}

/* auth: NULL = the right key, "" = none, else a whole header line. */
static int http(tenv *e, const char *method, const char *url, const char *auth, const char *body,
                hres *h)
{
    char line[128];
    const char *headers[3] = {NULL, NULL, NULL};
    sbx_http_req req;
    int n = 0;

    memset(h, 0, sizeof(*h));
    if (!auth) {
        snprintf(line, sizeof(line), "Authorization: Bearer %s", KEY);
        headers[n++] = line;
    } else if (*auth) {
        headers[n++] = auth;
    }
    memset(&req, 0, sizeof(req));
    req.method = method;
    req.url = url;
    req.headers = headers;
    req.body = body;
    req.body_len = body ? strlen(body) : 0;
    req.timeout_ms = 20000;
    if (sbx_http_request(e->http, &req, on_http, h, NULL) != 0)
        return -1;
    test_run_until(e->loop, &h->done, 25000);
    return h->done && h->code == SBX_HTTP_OK ? 0 : -1;
}

static void wake_body(char *out, size_t len, const char *slot, int64_t token, const char *job_id,
                      const char *script)
{
    snprintf(out, len,
             "{\"slot\":\"%s\",\"token\":%" PRId64 ",\"attempt\":1,\"job\":{\"job_id\":\"%s\","
             "\"project_id\":\"p-%s\",\"script\":\"%s\",\"timeout_s\":60}}",
             slot, token, job_id, job_id, script);
}

/* Pulls "name":"value" out of a flat JSON reply. */
static void json_str(const char *body, const char *name, char *out, size_t len)
{
    char pat[64];
    const char *p, *end;
    snprintf(pat, sizeof(pat), "\"%s\":\"", name);
    out[0] = '\0';
    p = strstr(body, pat);
    if (!p)
        return;
    p += strlen(pat);
    end = strchr(p, '"');
    if (end && (size_t)(end - p) < len) {
        memcpy(out, p, (size_t)(end - p));
        out[end - p] = '\0';
    }
}

static agent_proc *agent_of(const char *vm)
{
    for (int i = 0; i < NAGENTS; i++)
        if (strcmp(g_agents[i].id, vm) == 0)
            return &g_agents[i];
    return NULL;
}

/* ---- scenarios ---- */

static void t_spread(void **state)
{
    tenv *e = *state;
    lres l[4];
    vrun v[4], *vs[4];
    sbx_job jobs[4];
    char ids[4][32];
    int seen[NAGENTS] = {0}, distinct = 0;

    for (int i = 0; i < 4; i++) {
        char project[32];
        snprintf(project, sizeof(project), "spread-%d", i);
        assert_int_equal(acquire(e, project, &l[i]), 0);
        assert_int_equal(l[i].status, SBX_LEASE_OK);
    }
    for (int i = 0; i < 4; i++) {
        snprintf(ids[i], sizeof(ids[i]), "j-spread-%d", i);
        job_init(&jobs[i], ids[i], "sleep 1; echo spread-ok", 60);
        assert_int_equal(start_job(e, l[i].slot, l[i].token, &jobs[i], &v[i]), 0);
        vs[i] = &v[i];
    }
    assert_true(wait_finished(e, vs, 4, 30000));
    for (int i = 0; i < 4; i++) {
        agent_proc *a = agent_of(v[i].res.instance);
        assert_int_equal(v[i].res.outcome, SBX_OUTCOME_SUCCEEDED);
        assert_string_equal(v[i].res.log_tail, "spread-ok\n");
        assert_non_null(a);
        assert_int_equal(strncmp(l[i].slot, a->id, strlen(a->id)), 0);
        seen[a - g_agents]++;
        release(e, &l[i]);
    }
    for (int i = 0; i < NAGENTS; i++)
        distinct += seen[i] > 0;
    print_message("    4 leased jobs ran on %d agents (%d/%d/%d)\n", distinct, seen[0], seen[1], seen[2]);
    assert_int_equal(distinct, NAGENTS);
}

static void t_stale_token(void **state)
{
    tenv *e = *state;
    agent_proc *a = &g_agents[0];
    char url[160], body[1024], run[64], run2[64], run3[64];
    int64_t t = next_token(), t2, t3;
    hres h;
    uint64_t until;

    /* A run with token t, then the same slot with t - 1: refused. */
    snprintf(url, sizeof(url), "%s/wake", a->url);
    wake_body(body, sizeof(body), a->id, t, "j-stale-1", "sleep 30");
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 200);
    json_str(h.body, "run_id", run, sizeof(run));
    assert_true(run[0] != '\0');
    wake_body(body, sizeof(body), a->id, t - 1, "j-stale-old", "echo must-not-run");
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 409);
    assert_non_null(strstr(h.body, "\"stale_token\""));

    /* The same token again is the same run (a retried wake). */
    wake_body(body, sizeof(body), a->id, t, "j-stale-1", "sleep 30");
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 200);
    json_str(h.body, "run_id", run2, sizeof(run2));
    assert_string_equal(run, run2);
    assert_non_null(strstr(h.body, "\"existing\":true"));

    /* The same token for another job: a token is one lease of one job. */
    wake_body(body, sizeof(body), a->id, t, "j-stale-other", "echo must-not-run");
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 409);
    assert_non_null(strstr(h.body, "\"stale_token\""));

    /* Cancel with an old token: refused, the run goes on. */
    snprintf(url, sizeof(url), "%s/runs/%s/cancel", a->url, run);
    snprintf(body, sizeof(body), "{\"token\":%" PRId64 "}", t - 1);
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 409);
    assert_non_null(strstr(h.body, "\"stale_token\""));
    snprintf(url, sizeof(url), "%s/runs/%s", a->url, run);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_non_null(strstr(h.body, "\"state\":\"running\""));

    /* A newer lease on the busy slot: busy, and the old build is stopped;
     * the wake goes through once the slot is free. */
    t2 = next_token();
    snprintf(url, sizeof(url), "%s/wake", a->url);
    wake_body(body, sizeof(body), a->id, t2, "j-stale-2", "echo taken-over");
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 409);
    assert_non_null(strstr(h.body, "\"busy\""));
    until = sbx_now_ms() + 10000;
    do {
        sleep_ms(50);
        assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    } while (h.status == 409 && sbx_now_ms() < until);
    assert_int_equal(h.status, 200);
    json_str(h.body, "run_id", run3, sizeof(run3));
    snprintf(url, sizeof(url), "%s/runs/%s", a->url, run);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_non_null(strstr(h.body, "\"state\":\"canceled\""));
    /* The first owner cannot cancel the new run either. */
    snprintf(url, sizeof(url), "%s/runs/%s/cancel", a->url, run3);
    snprintf(body, sizeof(body), "{\"token\":%" PRId64 "}", t);
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 409);
    snprintf(url, sizeof(url), "%s/runs/%s?wait_ms=10000", a->url, run3);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_non_null(strstr(h.body, "\"state\":\"succeeded\""));
    assert_non_null(strstr(h.body, "taken-over"));

    /* And a newer token still can cancel (here: a run already over). */
    t3 = next_token();
    snprintf(url, sizeof(url), "%s/runs/%s/cancel", a->url, run3);
    snprintf(body, sizeof(body), "{\"token\":%" PRId64 "}", t3);
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 200);
}

static void t_auth(void **state)
{
    tenv *e = *state;
    agent_proc *a = &g_agents[1];
    static const char wrong_same_len[] = "vmpool-test-key-6f1d2c9a8b7X";
    char url[160], line[128], body[1024], *log;
    hres h;

    _Static_assert(sizeof(wrong_same_len) == sizeof(KEY), "same length as the key");
    snprintf(url, sizeof(url), "%s/health", a->url);
    assert_int_equal(http(e, "GET", url, "", NULL, &h), 0);
    assert_int_equal(h.status, 401);
    assert_int_equal(http(e, "GET", url, "Authorization: Bearer nope", NULL, &h), 0);
    assert_int_equal(h.status, 401);
    snprintf(line, sizeof(line), "Authorization: Bearer %s", wrong_same_len);
    assert_int_equal(http(e, "GET", url, line, NULL, &h), 0);
    assert_int_equal(h.status, 401);
    snprintf(line, sizeof(line), "Authorization: Basic %s", KEY);
    assert_int_equal(http(e, "GET", url, line, NULL, &h), 0);
    assert_int_equal(h.status, 401);
    snprintf(line, sizeof(line), "Authorization: Bearer %s-", KEY);
    assert_int_equal(http(e, "GET", url, line, NULL, &h), 0);
    assert_int_equal(h.status, 401);

    /* A wake with a wrong key starts nothing. */
    snprintf(url, sizeof(url), "%s/wake", a->url);
    wake_body(body, sizeof(body), a->id, next_token(), "j-auth", "echo must-not-run");
    snprintf(line, sizeof(line), "Authorization: Bearer %s", wrong_same_len);
    assert_int_equal(http(e, "POST", url, line, body, &h), 0);
    assert_int_equal(h.status, 401);
    snprintf(url, sizeof(url), "%s/health", a->url);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 200);
    assert_non_null(strstr(h.body, "\"running\":[]"));

    log = read_file(a->log);
    assert_non_null(log);
    assert_non_null(strstr(log, "401 GET /health"));
    assert_null(strstr(log, KEY));
    assert_null(strstr(log, wrong_same_len));
    free(log);
}

static void t_preview(void **state)
{
    tenv *e = *state;
    lres l;
    vrun v;
    sbx_job job;
    agent_proc *a;
    char url[512], want[128];
    hres h;
    int fd;
    struct sockaddr_in sa;
    char req[512], resp[256];
    ssize_t n;

    assert_int_equal(acquire(e, "preview", &l), 0);
    assert_int_equal(l.status, SBX_LEASE_OK);
    job_init(&job, "j-preview",
             "mkdir -p public/sub && echo '<h1>preview</h1>' > public/index.html && "
             "echo a > public/sub/a.txt && ln -s /etc/passwd public/evil && ln -s .. public/up && "
             "ln -s /etc public/etc && mkfifo public/fifo && ln public/sub/a.txt public/hard && "
             "echo built",
             60);
    assert_int_equal(start_job(e, l.slot, l.token, &job, &v), 0);
    assert_true(wait_one(e, &v, 20000));
    release(e, &l);
    assert_int_equal(v.res.outcome, SBX_OUTCOME_SUCCEEDED);
    a = agent_of(v.res.instance);
    assert_non_null(a);
    /* The preview lives on the VM that built it. */
    snprintf(want, sizeof(want), "%s/preview/", a->url);
    assert_int_equal(strncmp(v.res.preview_url, want, strlen(want)), 0);
    assert_int_equal(v.res.preview_url[strlen(v.res.preview_url) - 1], '/');

    assert_int_equal(http(e, "GET", v.res.preview_url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 200);
    assert_string_equal(h.body, "<h1>preview</h1>\n");
    snprintf(url, sizeof(url), "%ssub/a.txt", v.res.preview_url);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 200);
    assert_string_equal(h.body, "a\n");
    snprintf(url, sizeof(url), "%ssub", v.res.preview_url);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 301);
    snprintf(url, sizeof(url), "%sevil", v.res.preview_url);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 404);
    snprintf(url, sizeof(url), "%sup/tokens", v.res.preview_url);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 404);
    snprintf(url, sizeof(url), "%setc/passwd", v.res.preview_url);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 404);
    snprintf(url, sizeof(url), "%sfifo", v.res.preview_url);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 404);
    snprintf(url, sizeof(url), "%shard", v.res.preview_url);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 200);
    assert_string_equal(h.body, "a\n");
    /* The build's disk is a tmpfs of its own: the preview was copied, and
     * the copy on the agent's disk holds no symlink and no FIFO at all. */
    {
        char dir[512], p[640];
        struct stat st;
        const char *run = strstr(v.res.preview_url, "/preview/") + strlen("/preview/");
        snprintf(dir, sizeof(dir), "%s/previews/%.*s", a->dir, (int)strcspn(run, "/"), run);
        snprintf(p, sizeof(p), "%s/index.html", dir);
        assert_int_equal(lstat(p, &st), 0);
        assert_true(S_ISREG(st.st_mode));
        const char *gone[] = {"evil", "up", "etc", "fifo"};
        for (size_t i = 0; i < sizeof(gone) / sizeof(gone[0]); i++) {
            snprintf(p, sizeof(p), "%s/%s", dir, gone[i]);
            assert_int_equal(lstat(p, &st), -1);
        }
    }
    assert_int_equal(http(e, "GET", v.res.preview_url, "", NULL, &h), 0);
    assert_int_equal(h.status, 401);

    /* ".." sent as is (curl would squash it): still inside the preview. */
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)a->port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    snprintf(req, sizeof(req),
             "GET %s../../tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Connection: close\r\n\r\n",
             strstr(v.res.preview_url + 8, "/preview/"), KEY);
    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    n = read(fd, resp, sizeof(resp) - 1);
    close(fd);
    assert_true(n > 12);
    resp[n] = '\0';
    assert_int_equal(strncmp(resp, "HTTP/1.1 404", 12), 0);
}

/* One job on a fresh lease, run to its end. */
static void run_job(tenv *e, const char *id, const char *script, int disk_mb, vrun *v)
{
    lres l;
    sbx_job job;

    assert_int_equal(acquire(e, id, &l), 0);
    assert_int_equal(l.status, SBX_LEASE_OK);
    job_init(&job, id, script, 60);
    job.disk_mb = disk_mb;
    assert_int_equal(start_job(e, l.slot, l.token, &job, v), 0);
    assert_true(wait_one(e, v, 40000));
    release(e, &l);
}

/* /workspace and /tmp share disk_mb: 15 MB into each of a 20 MB quota
 * stops at 20 MB (+10 %), and the run says which limit it hit. */
static void t_disk_total(void **state)
{
    tenv *e = *state;
    vrun v;
    const char *t;
    long long total;

    /* The first echo gives the log its page, so the last fits a full disk. */
    run_job(e, "j-disk",
            "echo start; dd if=/dev/zero of=/workspace/a bs=1M count=15 2>/dev/null; "
            "dd if=/dev/zero of=/tmp/b bs=1M count=15 2>/dev/null; rc=$?; "
            "echo total=$(( $(stat -c %s /workspace/a) + $(stat -c %s /tmp/b) )); exit $rc",
            20, &v);
    assert_int_equal(v.res.outcome, SBX_OUTCOME_FAILED);
    assert_non_null(strstr(v.res.error, "disk limit of 20 MB reached"));
    t = strstr(v.res.log_tail, "total=");
    assert_non_null(t);
    total = atoll(t + 6);
    print_message("disk_total: wrote %lld bytes of 30 MB asked, quota 20 MB\n", total);
    assert_true(total > 0 && total <= 22LL * 1024 * 1024);
}

/* The log of the agent that ran v says why its preview was not kept. */
static void assert_agent_said(const vrun *v, const char *why)
{
    agent_proc *a = agent_of(v->res.instance);
    char *log;
    assert_non_null(a);
    log = read_file(a->log);
    assert_non_null(log);
    if (!strstr(log, why))
        print_error("agent %s log lacks \"%s\":\n%s\n", a->id, why, log);
    assert_non_null(strstr(log, why));
    free(log);
}

/* A public/ over a cap of the copy is not kept, the run itself is not
 * harmed, and the agent goes on serving the next build's preview. */
static void t_preview_caps(void **state)
{
    tenv *e = *state;
    vrun v;
    hres h;

    /* 70 levels: over RUN_COPY_DEPTH (64). */
    run_job(e, "j-deep",
            "d=public; for i in $(seq 70); do d=$d/d; done; mkdir -p $d && echo x > $d/f && "
            "echo deep",
            0, &v);
    assert_int_equal(v.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_string_equal(v.res.preview_url, "");
    assert_agent_said(&v, "preview not kept: deeper than 64 levels");
    /* 100001 empty files: over RUN_COPY_ENTRIES, within any disk quota. */
    run_job(e, "j-wide", "mkdir -p public/w && cd public/w && seq 100001 | xargs touch && echo wide",
            0, &v);
    assert_int_equal(v.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_string_equal(v.res.preview_url, "");
    assert_agent_said(&v, "preview not kept: more than 100000 entries");
    /* One 3 MB file under four names: 12 MB to copy, disk_mb 8. */
    run_job(e, "j-links",
            "mkdir public && dd if=/dev/zero of=public/big bs=1M count=3 2>/dev/null && "
            "ln public/big public/l1 && ln public/big public/l2 && ln public/big public/l3 && "
            "echo links",
            8, &v);
    assert_int_equal(v.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_string_equal(v.res.preview_url, "");
    assert_agent_said(&v, "preview not kept: more than 8 MB");

    run_job(e, "j-after", "mkdir public && echo fine > public/index.html", 0, &v);
    assert_int_equal(v.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_true(v.res.preview_url[0] != '\0');
    assert_int_equal(http(e, "GET", v.res.preview_url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 200);
    assert_string_equal(h.body, "fine\n");
}

static void t_log_follow(void **state)
{
    tenv *e = *state;
    agent_proc *a = &g_agents[0];
    char url[160], body[1024], run[64];
    hres h, f;
    sbx_http_req req;
    char line[128];
    const char *headers[] = {line, NULL};

    snprintf(url, sizeof(url), "%s/wake", a->url);
    wake_body(body, sizeof(body), a->id, next_token(), "j-follow",
              "for i in 1 2 3 4 5; do echo follow-$i; sleep 0.3; done");
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 200);
    json_str(h.body, "run_id", run, sizeof(run));

    snprintf(url, sizeof(url), "%s/runs/%s/log?follow=1", a->url, run);
    snprintf(line, sizeof(line), "Authorization: Bearer %s", KEY);
    memset(&req, 0, sizeof(req));
    memset(&f, 0, sizeof(f));
    req.method = "GET";
    req.url = url;
    req.headers = headers;
    req.timeout_ms = 20000;
    assert_int_equal(sbx_http_stream(e->http, &req, on_chunk, on_http, &f, NULL), 0);
    test_run_until(e->loop, &f.done, 20000);
    assert_true(f.done);
    assert_int_equal(f.code, SBX_HTTP_OK);
    assert_int_equal(f.status, 200);
    assert_string_equal(f.body, "follow-1\nfollow-2\nfollow-3\nfollow-4\nfollow-5\n");
    print_message("    log follow: first bytes %" PRIu64 " ms before the end of the stream\n",
                  f.done_ms - f.first_chunk_ms);
    /* Streamed as written, not delivered at the end. */
    assert_true(f.done_ms - f.first_chunk_ms >= 800);

    /* Without follow: what is there, at once. */
    snprintf(url, sizeof(url), "%s/runs/%s/log", a->url, run);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 200);
    assert_string_equal(h.body, "follow-1\nfollow-2\nfollow-3\nfollow-4\nfollow-5\n");
}

/* ---- sessions ---- */

typedef struct sopres {
    int done, rc;
    char why[256];
} sopres;

static void on_sop(void *arg, int rc, const char *why)
{
    sopres *o = arg;
    o->done++;
    o->rc = rc;
    snprintf(o->why, sizeof(o->why), "%s", why ? why : "");
}

/* session_op to its answer; the answer never comes from inside the call. */
static int sop(tenv *e, sbx_session_op op, const char *slot, const char *session, int64_t token)
{
    sopres o;
    int rc;
    memset(&o, 0, sizeof(o));
    rc = e->p->ops->session_op(e->p, op, slot, session, token, on_sop, &o);
    if (rc)
        return rc;
    assert_int_equal(o.done, 0);
    test_run_until(e->loop, &o.done, 30000);
    assert_int_equal(o.done, 1);
    if (o.rc)
        print_message("    session %s: rc=%d %s\n", op == SBX_SESSION_PAUSE ? "pause" : "destroy",
                      o.rc, o.why);
    return o.rc;
}

/* One job of session (NULL: none) on slot under a fresh token, to its end. */
static void session_run(tenv *e, const char *slot, const char *session, const char *id,
                        const char *script, vrun *v)
{
    sbx_job job;
    job_init(&job, id, script, 60);
    assert_int_equal(start_in(e, slot, next_token(), &job, session, v), 0);
    assert_true(wait_one(e, v, 40000));
    if (v->res.outcome != SBX_OUTCOME_SUCCEEDED)
        print_error("%s: outcome %d error %s log %s\n", id, v->res.outcome, v->res.error,
                    v->res.log_tail);
    assert_int_equal(v->res.outcome, SBX_OUTCOME_SUCCEEDED);
}

/* The agent's /health "sessions" entry for slot: its state, "" if none. */
static void agent_session(tenv *e, const agent_proc *a, const char *slot, char *state, size_t len)
{
    char url[160], pat[128];
    const char *p;
    hres h;
    snprintf(url, sizeof(url), "%s/health", a->url);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 200);
    state[0] = '\0';
    snprintf(pat, sizeof(pat), "{\"slot\":\"%s\",\"session\":", slot);
    p = strstr(h.body, pat);
    if (p)
        json_str(p, "state", state, len);
}

static void session_name(char out[40], int k)
{
    snprintf(out, 40, "s-%024x%08x", (unsigned)getpid(), (unsigned)k);
}

/* Size of a file in the workspace of a session sandbox of agent a's slot
 * index i, seen from the host (-1 if absent): the workspace is ws/ of the
 * sandbox's tmpfs (sandbox.c, disk_total as root). */
static long long ws_file_size(const agent_proc *a, const char *session, int i, const char *name)
{
    char path[512];
    struct stat st;
    snprintf(path, sizeof(path), "%s/ws/%s-%d/ws/%s", a->dir, session, i, name);
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/* The resume_us= of the agent's last "sandbox=resumed" run line, or -1. */
static long long agent_resume_us(const agent_proc *a)
{
    char *log = read_file(a->log), *p, *last = NULL;
    long long us = -1;
    for (p = log; p && (p = strstr(p, "sandbox=resumed resume_us=")) != NULL; p++)
        last = p;
    if (last)
        us = atoll(last + strlen("sandbox=resumed resume_us="));
    free(log);
    return us;
}

static void t_session(void **state)
{
    tenv *e = *state;
    agent_proc *a = &g_agents[0];
    char ss[40], m[64], script[512], st[32], id[32];
    int64_t t_pause;
    uint64_t t0, pause_us;
    long long size;
    vrun v;

    session_name(ss, 1);
    sbx_conformance_marker(m, 60);
    /* Run 1: a file, a process that outlives the run, and one that ticks
     * into a file every 50 ms (to see the pause). */
    snprintf(script, sizeof(script),
             "echo from-run-1 > /workspace/f1; %s </dev/null >/dev/null 2>&1 & echo $! > bg.pid; "
             "(while :; do echo t >> tick; sleep 0.05; done) </dev/null >/dev/null 2>&1 & "
             "echo one", m);
    session_run(e, a->id, ss, "j-sess-1", script, &v);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_NEW);
    assert_string_equal(v.res.log_tail, "one\n");
    assert_true(sbx_conformance_procs_with(m, 1) > 0);
    agent_session(e, a, a->id, st, sizeof(st));
    assert_string_equal(st, "idle");
    /* Runs 2-5: the same sandbox, the same workspace, run 1's process alive. */
    for (int i = 2; i <= 5; i++) {
        snprintf(id, sizeof(id), "j-sess-%d", i);
        snprintf(script, sizeof(script),
                 "kill -0 $(cat bg.pid) && echo $(cat f1) alive-%d", i);
        session_run(e, a->id, ss, id, script, &v);
        assert_int_equal(v.res.sandbox, SBX_SANDBOX_REUSED);
        snprintf(script, sizeof(script), "from-run-1 alive-%d\n", i);
        assert_string_equal(v.res.log_tail, script);
        assert_true(sbx_conformance_procs_with(m, 1) > 0);
    }

    /* PAUSE: frozen, the process kept; a stale token is refused for both ops. */
    t_pause = next_token();
    t0 = sbx_now_us();
    assert_int_equal(sop(e, SBX_SESSION_PAUSE, a->id, ss, t_pause), 0);
    pause_us = sbx_now_us() - t0;
    agent_session(e, a, a->id, st, sizeof(st));
    assert_string_equal(st, "paused");
    /* Frozen: the ticker writes nothing while paused. */
    size = ws_file_size(a, ss, 0, "tick");
    assert_true(size > 0);
    sleep_ms(400);
    assert_int_equal(ws_file_size(a, ss, 0, "tick"), size);
    assert_int_equal(sop(e, SBX_SESSION_PAUSE, a->id, ss, t_pause - 1), -ESTALE);
    assert_int_equal(sop(e, SBX_SESSION_DESTROY, a->id, ss, t_pause - 1), -ESTALE);
    agent_session(e, a, a->id, st, sizeof(st));
    assert_string_equal(st, "paused");
    assert_true(sbx_conformance_procs_with(m, 1) > 0);
    /* Pausing again is fine. */
    assert_int_equal(sop(e, SBX_SESSION_PAUSE, a->id, ss, t_pause), 0);

    /* The next run resumes it. */
    session_run(e, a->id, ss, "j-sess-6", "kill -0 $(cat bg.pid) && cat f1", &v);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_RESUMED);
    assert_string_equal(v.res.log_tail, "from-run-1\n");
    assert_true(v.res.resume_ms >= 0);
    print_message("    vmpool session: PAUSE then start() -> RESUMED, resume_ms=%d (agent: thaw "
                  "%lld us; start -> STARTED %.1f ms, start -> FINISHED %.1f ms)\n",
                  v.res.resume_ms, agent_resume_us(a), (double)(v.t_started_us - v.t0_us) / 1000.0,
                  (double)(v.t_finished_us - v.t0_us) / 1000.0);
    /* Thawed: the ticker goes on. */
    size = ws_file_size(a, ss, 0, "tick");
    for (uint64_t until = sbx_now_ms() + 3000;
         ws_file_size(a, ss, 0, "tick") == size && sbx_now_ms() < until;)
        sleep_ms(20);
    assert_true(ws_file_size(a, ss, 0, "tick") > size);
    agent_session(e, a, a->id, st, sizeof(st));
    assert_string_equal(st, "idle");
    {
        char url[160];
        hres h;
        snprintf(url, sizeof(url), "%s/metrics", a->url);
        assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
        assert_int_equal(h.status, 200);
        assert_non_null(strstr(h.body, "sbx_agent_sessions{state=\"idle\"} 1\n"));
        assert_non_null(strstr(h.body, "sbx_agent_session_runs_total{sandbox=\"resumed\"} 1\n"));
        assert_non_null(strstr(h.body, "sbx_agent_session_runs_total{sandbox=\"reused\"} 4\n"));
    }

    /* DESTROY: nothing left; then NEW, with an empty workspace. */
    t0 = sbx_now_us();
    assert_int_equal(sop(e, SBX_SESSION_DESTROY, a->id, ss, next_token()), 0);
    print_message("    vmpool session_op round trips: PAUSE %.1f ms, DESTROY %.1f ms (until gone)\n",
                  (double)pause_us / 1000.0, (double)(sbx_now_us() - t0) / 1000.0);
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    agent_session(e, a, a->id, st, sizeof(st));
    assert_string_equal(st, "");
    assert_int_equal(ws_file_size(a, ss, 0, "."), -1);
    /* A session the agent does not have: DESTROY is done, PAUSE has nothing to do. */
    assert_int_equal(sop(e, SBX_SESSION_DESTROY, a->id, ss, next_token()), 0);
    assert_int_equal(sop(e, SBX_SESSION_PAUSE, a->id, ss, next_token()), 0);
    session_run(e, a->id, ss, "j-sess-7", "test ! -e f1 && echo fresh", &v);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_NEW);
    assert_string_equal(v.res.log_tail, "fresh\n");
    assert_int_equal(sop(e, SBX_SESSION_DESTROY, a->id, ss, next_token()), 0);
}

/* The slot holds one session's sandbox; a run of another session, or of
 * none, ends it first (the agent answers busy until it is gone, the
 * provider retries), and nothing of it is left. */
static void t_session_takeover(void **state)
{
    tenv *e = *state;
    agent_proc *a = &g_agents[1];
    char s1[40], s2[40], m[64], script[256], st[32];
    vrun v;

    session_name(s1, 2);
    session_name(s2, 3);
    sbx_conformance_marker(m, 61);
    snprintf(script, sizeof(script), "%s </dev/null >/dev/null 2>&1 & echo x > f1", m);
    session_run(e, a->id, s1, "j-take-1", script, &v);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_NEW);
    assert_true(sbx_conformance_procs_with(m, 1) > 0);
    session_run(e, a->id, s2, "j-take-2", "test ! -e f1 && echo other", &v);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_NEW);
    assert_string_equal(v.res.log_tail, "other\n");
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    agent_session(e, a, a->id, st, sizeof(st));
    assert_string_equal(st, "idle");
    /* A one-off run: the session's sandbox goes, the run is ONE_OFF. */
    session_run(e, a->id, NULL, "j-take-3", "test ! -e f1 && echo plain", &v);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_ONE_OFF);
    assert_string_equal(v.res.log_tail, "plain\n");
    agent_session(e, a, a->id, st, sizeof(st));
    assert_string_equal(st, "");
    /* DESTROY of s1 (long gone) on the slot: done. */
    assert_int_equal(sop(e, SBX_SESSION_DESTROY, a->id, s1, next_token()), 0);
}

/* Cancel and timeout kill the session's processes with its sandbox (the
 * agent's choice, provider.h allows it): the next run is NEW. */
static void t_session_cancel(void **state)
{
    tenv *e = *state;
    agent_proc *a = &g_agents[0];
    char ss[40], m[64], script[256], st[32];
    sbx_job job;
    vrun v;

    session_name(ss, 5);
    sbx_conformance_marker(m, 62);
    snprintf(script, sizeof(script), "%s </dev/null >/dev/null 2>&1 & echo x > f1", m);
    session_run(e, a->id, ss, "j-scan-1", script, &v);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_NEW);
    job_init(&job, "j-scan-2", "sleep 30", 60);
    assert_int_equal(start_in(e, a->id, next_token(), &job, ss, &v), 0);
    assert_true(wait_started(e, &v, 10000));
    e->p->ops->cancel(e->p, v.run);
    assert_true(wait_one(e, &v, 20000));
    assert_int_equal(v.res.outcome, SBX_OUTCOME_CANCELED);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_REUSED);
    session_run(e, a->id, ss, "j-scan-3", "test ! -e f1 && echo after-cancel", &v);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_NEW);
    assert_string_equal(v.res.log_tail, "after-cancel\n");
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);

    /* Timeout: the same. */
    job_init(&job, "j-scan-4", "echo y > f2; sleep 30", 1);
    assert_int_equal(start_in(e, a->id, next_token(), &job, ss, &v), 0);
    assert_true(wait_one(e, &v, 20000));
    assert_int_equal(v.res.outcome, SBX_OUTCOME_TIMED_OUT);
    session_run(e, a->id, ss, "j-scan-5", "test ! -e f2 && echo after-timeout", &v);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_NEW);
    assert_int_equal(sop(e, SBX_SESSION_DESTROY, a->id, ss, next_token()), 0);
    agent_session(e, a, a->id, st, sizeof(st));
    assert_string_equal(st, "");
}

/* A session's sandbox does not outlive its agent: after kill -9 and a
 * restart nothing of it runs, and the session's next run is NEW. Paused
 * first, the hard case: a frozen process does not die of SIGKILL until it
 * is thawed, so the restart's sweep has to thaw it. */
static void t_session_agent_restart(void **state)
{
    tenv *e = *state;
    agent_proc *a = &g_agents[1];
    char ss[40], m[64], script[256];
    vrun v;

    session_name(ss, 6);
    sbx_conformance_marker(m, 63);
    snprintf(script, sizeof(script), "%s </dev/null >/dev/null 2>&1 & echo x > f1", m);
    session_run(e, a->id, ss, "j-srst-1", script, &v);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_NEW);
    assert_true(sbx_conformance_procs_with(m, 1) > 0);
    assert_int_equal(sop(e, SBX_SESSION_PAUSE, a->id, ss, next_token()), 0);
    kill(a->pid, SIGKILL);
    waitpid(a->pid, NULL, 0);
    a->pid = 0;
    assert_int_equal(agent_start(a), 0);
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    session_run(e, a->id, ss, "j-srst-2", "test ! -e f1 && echo fresh", &v);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_NEW);
    assert_string_equal(v.res.log_tail, "fresh\n");
    assert_int_equal(sop(e, SBX_SESSION_DESTROY, a->id, ss, next_token()), 0);
}

/* A session run's public/ becomes its preview by a copy: the workspace
 * keeps it for the next run. */
static void t_session_preview(void **state)
{
    tenv *e = *state;
    agent_proc *a = &g_agents[0];
    char ss[40];
    hres h;
    vrun v;

    session_name(ss, 8);
    session_run(e, a->id, ss, "j-sprev-1", "mkdir -p public && echo hi > public/index.html", &v);
    assert_true(v.res.preview_url[0] != '\0');
    assert_int_equal(http(e, "GET", v.res.preview_url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 200);
    assert_string_equal(h.body, "hi\n");
    session_run(e, a->id, ss, "j-sprev-2", "cat public/index.html", &v);
    assert_int_equal(v.res.sandbox, SBX_SANDBOX_REUSED);
    assert_string_equal(v.res.log_tail, "hi\n");
    assert_int_equal(sop(e, SBX_SESSION_DESTROY, a->id, ss, next_token()), 0);
}

/* The agent's side of the protocol, raw: names, bodies, tokens. */
static void t_session_http(void **state)
{
    tenv *e = *state;
    agent_proc *a = &g_agents[0];
    char url[200], body[1024], ss[40];
    int64_t t = next_token();
    hres h;

    session_name(ss, 4);
    snprintf(url, sizeof(url), "%s/sessions/%s/destroy", a->url, ss);
    snprintf(body, sizeof(body), "{\"slot\":\"%s\",\"token\":%" PRId64 "}", a->id, t);
    assert_int_equal(http(e, "POST", url, "", body, &h), 0);
    assert_int_equal(h.status, 401);
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 200);
    assert_non_null(strstr(h.body, "\"state\":\"absent\""));
    snprintf(body, sizeof(body), "{\"slot\":\"%s\",\"token\":%" PRId64 "}", a->id, t - 1);
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 409);
    assert_non_null(strstr(h.body, "\"stale_token\""));
    snprintf(body, sizeof(body), "{\"slot\":\"nope\",\"token\":%" PRId64 "}", t);
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 404);
    assert_int_equal(http(e, "POST", url, NULL, "{\"slot\":\"x\"}", &h), 0);
    assert_int_equal(h.status, 400);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 405);
    snprintf(url, sizeof(url), "%s/sessions/%s/explode", a->url, ss);
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 404);
    snprintf(url, sizeof(url), "%s/sessions/Not_A_Name/pause", a->url);
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 404);
    /* A token far above anything issued is refused (tokens.c). */
    snprintf(url, sizeof(url), "%s/sessions/%s/pause", a->url, ss);
    snprintf(body, sizeof(body), "{\"slot\":\"%s\",\"token\":%" PRId64 "}", a->id,
             (int64_t)1 << 60);
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 409);
    assert_non_null(strstr(h.body, "\"future_token\""));
    /* A DESTROY of a live sandbox is answered once it is gone, in one request. */
    {
        vrun v;
        char st[32];
        session_run(e, a->id, ss, "j-shttp-1", "echo x > f1", &v);
        snprintf(url, sizeof(url), "%s/sessions/%s/destroy", a->url, ss);
        snprintf(body, sizeof(body), "{\"slot\":\"%s\",\"token\":%" PRId64 "}", a->id, next_token());
        assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
        assert_int_equal(h.status, 200);
        assert_non_null(strstr(h.body, "\"state\":\"destroyed\""));
        agent_session(e, a, a->id, st, sizeof(st));
        assert_string_equal(st, "");
    }
    /* A wake naming a bad session is the job's fault: 400. */
    snprintf(url, sizeof(url), "%s/wake", a->url);
    snprintf(body, sizeof(body),
             "{\"slot\":\"%s\",\"token\":%" PRId64 ",\"session\":\"BAD/../x\",\"job\":{\"job_id\":"
             "\"j-badsess\",\"project_id\":\"p\",\"script\":\"true\"}}",
             a->id, next_token());
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 400);
}

/* Acquires until NOCAP; no returned slot may be one of `never`'s. Releases
 * what it took. Returns the number acquired. */
static int acquire_all(tenv *e, const char *tag, const char *never)
{
    lres l[16];
    int n = 0;
    for (; n < 16; n++) {
        char project[48];
        snprintf(project, sizeof(project), "%s-%d", tag, n);
        assert_int_equal(acquire(e, project, &l[n]), 0);
        if (l[n].status != SBX_LEASE_OK)
            break;
        assert_int_not_equal(strncmp(l[n].slot, never, strlen(never)), 0);
    }
    assert_int_equal(l[n].status, SBX_LEASE_NOCAP);
    for (int i = 0; i < n; i++)
        release(e, &l[i]);
    return n;
}

/* A real lease on the slot `want` (others taken on the way are released). */
static void acquire_slot(tenv *e, const char *tag, const char *want, lres *out)
{
    lres other[16];
    int n = 0, found = 0;
    for (; n < 16 && !found; n++) {
        char project[48];
        snprintf(project, sizeof(project), "%s-%d", tag, n);
        assert_int_equal(acquire(e, project, &other[n]), 0);
        assert_int_equal(other[n].status, SBX_LEASE_OK);
        found = strcmp(other[n].slot, want) == 0;
    }
    assert_true(found);
    *out = other[n - 1];
    for (int i = 0; i < n - 1; i++)
        release(e, &other[i]);
}

static void wait_stale(agent_proc *a, int timeout_ms)
{
    uint64_t until = sbx_now_ms() + (uint64_t)timeout_ms;
    char hb[32], ttl[32];
    for (;;) {
        vm_field(a->id, "heartbeat_ms", hb, sizeof(hb));
        vm_field(a->id, "ttl_ms", ttl, sizeof(ttl));
        if (redis_now_ms() > strtoull(hb, NULL, 10) + strtoull(ttl, NULL, 10))
            return;
        assert_true(sbx_now_ms() < until);
        sleep_ms(50);
    }
}

static void t_kill9_restart(void **state)
{
    tenv *e = *state;
    agent_proc *a = &g_agents[1];
    sbx_job job;
    vrun v;
    char m[64], url[160], body[1024], st[32], lost[64];
    uint64_t t_kill, took;
    lres l;
    hres h;

    /* A build runs on the agent under a real lease; the agent dies. */
    acquire_slot(e, "kill9", a->id, &l);
    sbx_conformance_marker(m, 40);
    job_init(&job, "j-kill9", m, 600);
    assert_int_equal(start_job(e, a->id, l.token, &job, &v), 0);
    assert_true(wait_started(e, &v, 10000));
    for (uint64_t until = sbx_now_ms() + 5000;
         sbx_conformance_procs_with(m, 1) == 0 && sbx_now_ms() < until;)
        sbx_loop_once(e->loop, 10);
    assert_true(sbx_conformance_procs_with(m, 1) > 0);
    snprintf(url, sizeof(url), "%s/health", a->url);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    {
        const char *p = strstr(h.body, "\"running\":[\"");
        assert_non_null(p);
        snprintf(lost, sizeof(lost), "%.*s", (int)strcspn(p + 12, "\""), p + 12);
    }
    t_kill = sbx_now_ms();
    kill(a->pid, SIGKILL);
    waitpid(a->pid, NULL, 0);
    a->pid = 0;
    assert_true(wait_one(e, &v, UNREACHABLE_MS + 5000));
    took = sbx_now_ms() - t_kill;
    print_message("    kill -9 of the agent -> ERROR after %" PRIu64 " ms (unreachable_ms=%d): %s\n",
                  took, UNREACHABLE_MS, v.res.error);
    assert_int_equal(v.res.outcome, SBX_OUTCOME_ERROR);
    assert_true(took < UNREACHABLE_MS + 2500);
    assert_string_equal(v.res.instance, a->id);
    /* The build died with its agent (the sandbox's parent-death signal). */
    for (uint64_t until = sbx_now_ms() + 3000;
         sbx_conformance_procs_with(m, 0) > 0 && sbx_now_ms() < until;)
        sleep_ms(20);
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    /* The provider took the silent VM out of the pool at once (not only
     * once its heartbeat ages past the TTL): the worker's release does not
     * put the slot back, and the VM is marked dead. */
    release(e, &l);
    assert_false(is_member("{sbx}:free:vmpool", a->id));
    assert_false(is_member("{sbx}:slots:vmpool", a->id));
    vm_field(a->id, "state", st, sizeof(st));
    assert_string_equal(st, "dead");

    /* Restarted with the same id: registered and free again... */
    assert_int_equal(agent_start(a), 0);
    assert_true(is_member("{sbx}:slots:vmpool", a->id));
    assert_true(is_member("{sbx}:free:vmpool", a->id));
    vm_field(a->id, "state", st, sizeof(st));
    assert_string_equal(st, "idle");
    /* ...and it still refuses a token older than the newest it saw. */
    snprintf(url, sizeof(url), "%s/wake", a->url);
    wake_body(body, sizeof(body), a->id, l.token - 1, "j-after-restart", "echo must-not-run");
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 409);
    assert_non_null(strstr(h.body, "\"stale_token\""));
    /* The lost run is unknown to the new process (never someone else's). */
    snprintf(url, sizeof(url), "%s/runs/%s", a->url, lost);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_int_equal(h.status, 404);
}

static void t_heartbeat_stale(void **state)
{
    tenv *e = *state;
    agent_proc *a = &g_agents[0];
    char st[32];
    uint64_t until;

    /* A frozen agent (a VM paused or cut off) stops heartbeating. */
    kill(a->pid, SIGSTOP);
    wait_stale(a, TTL_MS + 2000);
    acquire_all(e, "frozen", a->id);
    vm_field(a->id, "state", st, sizeof(st));
    assert_string_equal(st, "dead");
    kill(a->pid, SIGCONT);
    /* Its next heartbeat puts it back. */
    until = sbx_now_ms() + 5000;
    while (!is_member("{sbx}:free:vmpool", a->id) && sbx_now_ms() < until)
        sleep_ms(20);
    assert_true(is_member("{sbx}:free:vmpool", a->id));
    vm_field(a->id, "state", st, sizeof(st));
    assert_string_equal(st, "idle");
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void t_latency20(void **state)
{
    enum { RUNS = 20 };
    tenv *e = *state;
    uint64_t st[RUNS], fin[RUNS];
    sbx_job job;
    vrun v;

    for (int i = 0; i < RUNS; i++) {
        char id[32];
        snprintf(id, sizeof(id), "j-lat-%d", i);
        job_init(&job, id, "true", 60);
        assert_int_equal(start_job(e, g_agents[0].id, next_token(), &job, &v), 0);
        assert_true(wait_one(e, &v, 20000));
        assert_int_equal(v.res.outcome, SBX_OUTCOME_SUCCEEDED);
        st[i] = v.t_started_us - v.t0_us;
        fin[i] = v.t_finished_us - v.t0_us;
    }
    qsort(st, RUNS, sizeof(st[0]), cmp_u64);
    qsort(fin, RUNS, sizeof(fin[0]), cmp_u64);
    print_message("    vmpool start -> STARTED: median %.2f ms (min %.2f, max %.2f) of %d; "
                  "start -> FINISHED (true): median %.2f ms\n",
                  (double)(st[RUNS / 2 - 1] + st[RUNS / 2]) / 2000.0, (double)st[0] / 1000.0,
                  (double)st[RUNS - 1] / 1000.0, RUNS,
                  (double)(fin[RUNS / 2 - 1] + fin[RUNS / 2]) / 2000.0);
}

/* Runs the agent binary with env changes; its exit status and stderr. */
static int run_agent_cfg(const char *const *env_over, char *err, size_t errlen)
{
    agent_proc a;
    int st;
    char *log;

    memset(&a, 0, sizeof(a));
    snprintf(a.id, sizeof(a.id), "cfg-%d", (int)getpid());
    a.capacity = 1;
    a.port = test_free_port();
    a.uid_base = g_agents[0].uid_base + 50;
    snprintf(a.dir, sizeof(a.dir), "%s/cfg", g_root);
    snprintf(a.log, sizeof(a.log), "%s/cfg.log", g_root);
    unlink(a.log);
    a.pid = spawn_agent(&a, env_over);
    st = agent_wait(&a, 10000);
    if (st < 0)
        agent_kill(&a);
    log = read_file(a.log);
    snprintf(err, errlen, "%s", log ? log : "");
    free(log);
    return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int one_line(const char *s)
{
    const char *nl = strchr(s, '\n');
    return nl && nl[1] == '\0';
}

static void t_bad_config(void **state)
{
    const char *no_key[] = {"SBX_AGENT_KEY", NULL, NULL};
    const char *short_key[] = {"SBX_AGENT_KEY", "short-secret", NULL};
    const char *bad_listen[] = {"SBX_AGENT_LISTEN", "localhost", NULL};
    const char *bad_ttl[] = {"SBX_AGENT_TTL_MS", "100", NULL};
    const char *bad_cap[] = {"SBX_AGENT_CAPACITY", "0", NULL};
    char err[1024];
    (void)state;

    assert_int_equal(run_agent_cfg(no_key, err, sizeof(err)), 2);
    assert_non_null(strstr(err, "SBX_AGENT_KEY"));
    assert_true(one_line(err));
    assert_int_equal(run_agent_cfg(short_key, err, sizeof(err)), 2);
    assert_non_null(strstr(err, "SBX_AGENT_KEY"));
    assert_null(strstr(err, "short-secret"));
    assert_true(one_line(err));
    assert_int_equal(run_agent_cfg(bad_listen, err, sizeof(err)), 2);
    assert_non_null(strstr(err, "SBX_AGENT_LISTEN"));
    assert_true(one_line(err));
    assert_int_equal(run_agent_cfg(bad_ttl, err, sizeof(err)), 2);
    assert_non_null(strstr(err, "SBX_AGENT_TTL_MS"));
    assert_true(one_line(err));
    assert_int_equal(run_agent_cfg(bad_cap, err, sizeof(err)), 2);
    assert_non_null(strstr(err, "SBX_AGENT_CAPACITY"));
    assert_true(one_line(err));

    /* A token file it cannot read back: starting from zero would obey
     * stale owners, so it refuses to start. */
    {
        char dir[128], path[160];
        FILE *f;
        snprintf(dir, sizeof(dir), "%s/cfg", g_root);
        snprintf(path, sizeof(path), "%s/tokens", dir);
        mkdir(dir, 0711);
        f = fopen(path, "w");
        assert_non_null(f);
        fputs("sbx-agent-tokens v1\nslot-without-token\n", f);
        fclose(f);
        assert_int_equal(run_agent_cfg(NULL, err, sizeof(err)), 2);
        assert_non_null(strstr(err, "SBX_WORK_DIR"));
        assert_non_null(strstr(err, "tokens"));
        unlink(path);
    }
}

static void t_drain(void **state)
{
    tenv *e = *state;
    agent_proc *a = &g_agents[2];
    char url[160], body[1024], run[64], s0[64], s1[64], st[32], ss[40], m[64], script[256];
    hres h;
    vrun v;
    int status;

    snprintf(s0, sizeof(s0), "%s#0", a->id);
    snprintf(s1, sizeof(s1), "%s#1", a->id);
    /* A paused session's sandbox on the other slot goes with the agent. */
    session_name(ss, 7);
    sbx_conformance_marker(m, 64);
    snprintf(script, sizeof(script), "%s </dev/null >/dev/null 2>&1 &", m);
    session_run(e, s1, ss, "j-drain-sess", script, &v);
    assert_int_equal(sop(e, SBX_SESSION_PAUSE, s1, ss, next_token()), 0);
    assert_true(sbx_conformance_procs_with(m, 1) > 0);
    snprintf(url, sizeof(url), "%s/wake", a->url);
    wake_body(body, sizeof(body), s0, next_token(), "j-drain", "sleep 1; echo drained");
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 200);
    json_str(h.body, "run_id", run, sizeof(run));

    kill(a->pid, SIGTERM);
    /* Deregistered at once: out of the pool, state draining. */
    for (uint64_t until = sbx_now_ms() + 3000; is_member("{sbx}:slots:vmpool", s1) && sbx_now_ms() < until;)
        sleep_ms(10);
    assert_false(is_member("{sbx}:slots:vmpool", s1));
    assert_false(is_member("{sbx}:free:vmpool", s1));
    vm_field(a->id, "state", st, sizeof(st));
    assert_string_equal(st, "draining");
    /* New work is refused; the running build finishes. */
    wake_body(body, sizeof(body), s1, next_token(), "j-drain-2", "echo must-not-run");
    assert_int_equal(http(e, "POST", url, NULL, body, &h), 0);
    assert_int_equal(h.status, 503);
    snprintf(url, sizeof(url), "%s/runs/%s?wait_ms=5000", a->url, run);
    assert_int_equal(http(e, "GET", url, NULL, NULL, &h), 0);
    assert_non_null(strstr(h.body, "\"state\":\"succeeded\""));
    status = agent_wait(a, 8000);
    assert_true(status >= 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_false(is_member("{sbx}:slots:vmpool", s0));
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
}

/* Whatever the agents did, their logs hold no sanitizer report (ASan
 * builds) and no error line. */
static void t_agent_logs_clean(void **state)
{
    (void)state;
    for (int i = 0; i < NAGENTS; i++) {
        char *log = read_file(g_agents[i].log);
        int clean = log && !strstr(log, "Sanitizer") && !strstr(log, "runtime error") &&
                    !strstr(log, " error ");
        if (!clean)
            print_error("agent %s log:\n%s\n", g_agents[i].id, log ? log : "(unreadable)");
        free(log);
        assert_true(clean);
    }
}

/* ---- main ---- */

static void stop_all(void)
{
    char cmd[128];
    for (int i = 0; i < NAGENTS; i++)
        agent_kill(&g_agents[i]);
    if (g_rc)
        redisFree(g_rc);
    g_rc = NULL;
    test_redis_stop(&g_redis);
    if (g_root[0]) {
        snprintf(cmd, sizeof(cmd), "rm -rf %s", g_root);
        (void)!system(cmd);
    }
}

int main(void)
{
    sbx_conformance_opts opts;
    const char *shift = getenv("SBX_TEST_UID_SHIFT");
    /* Moves the uid ranges, as the e2e tests' (helpers of one host apart). */
    int uid_shift = shift ? atoi(shift) : 0;
    int failed = 0;
    const struct CMUnitTest own[] = {
        cmocka_unit_test_setup_teardown(t_spread, setup, teardown),
        cmocka_unit_test_setup_teardown(t_stale_token, setup, teardown),
        cmocka_unit_test_setup_teardown(t_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(t_preview, setup, teardown),
        cmocka_unit_test_setup_teardown(t_disk_total, setup, teardown),
        cmocka_unit_test_setup_teardown(t_preview_caps, setup, teardown),
        cmocka_unit_test_setup_teardown(t_log_follow, setup, teardown),
        cmocka_unit_test_setup_teardown(t_latency20, setup, teardown),
        cmocka_unit_test_setup_teardown(t_session, setup, teardown),
        cmocka_unit_test_setup_teardown(t_session_takeover, setup, teardown),
        cmocka_unit_test_setup_teardown(t_session_http, setup, teardown),
        cmocka_unit_test_setup_teardown(t_session_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(t_session_preview, setup, teardown),
        cmocka_unit_test_setup_teardown(t_session_agent_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(t_kill9_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(t_heartbeat_stale, setup, teardown),
        cmocka_unit_test_setup_teardown(t_bad_config, setup, teardown),
        cmocka_unit_test_setup_teardown(t_drain, setup, teardown),
        cmocka_unit_test(t_agent_logs_clean),
    };

    if (geteuid() != 0 || access("/usr/bin/bwrap", X_OK) != 0) {
        printf("test_vmpool: needs root and bubblewrap (the agents build in per-slot uids); skipped\n");
        return 77;
    }
    if (access(agent_bin(), X_OK) != 0) {
        printf("test_vmpool: %s not built\n", agent_bin());
        return 1;
    }
    sbx_log_set_level(SBX_LOG_WARN);
    signal(SIGPIPE, SIG_IGN);
    snprintf(g_root, sizeof(g_root), "/tmp/sbx-test-vmpool-XXXXXX");
    if (!mkdtemp(g_root) || chmod(g_root, 0711) != 0 || test_redis_start(&g_redis) != 0) {
        printf("test_vmpool: cannot start redis-server\n");
        return 1;
    }
    snprintf(g_redis_url, sizeof(g_redis_url), "redis://127.0.0.1:%d", g_redis.port);
    g_rc = redisConnect("127.0.0.1", g_redis.port);
    if (!g_rc || g_rc->err) {
        printf("test_vmpool: cannot connect to redis\n");
        stop_all();
        return 1;
    }
    for (int i = 0; i < NAGENTS; i++) {
        agent_proc *a = &g_agents[i];
        snprintf(a->id, sizeof(a->id), "vm%c-%d", 'a' + i, (int)getpid());
        a->capacity = i == 2 ? 2 : 1;
        a->port = test_free_port();
        /* Disjoint per agent and per test process (see the top comment). */
        a->uid_base = 300000 + uid_shift + (int)(getpid() % 5000) * 100 + i * 10;
        snprintf(a->dir, sizeof(a->dir), "%.63s/%.39s", g_root, a->id);
        snprintf(a->log, sizeof(a->log), "%.63s/%.39s.log", g_root, a->id);
        snprintf(a->url, sizeof(a->url), "http://127.0.0.1:%d", a->port);
        if (agent_start(a) != 0) {
            char *log = read_file(a->log);
            printf("test_vmpool: agent %s did not register:\n%s\n", a->id, log ? log : "");
            free(log);
            stop_all();
            return 1;
        }
    }

    memset(&opts, 0, sizeof(opts));
    opts.host_procs = 1;   /* the agents run on this host */
    opts.time_scale = 1;
    /* The conformance scenarios pick their own tokens (from 1000); the
     * agents refuse a token above {sbx}:fence (agent/tokens.c), so the
     * counter starts above them, as if those leases had been issued. The
     * agents' own tests take theirs from the counter. */
    freeReplyObject(rcmd("SET {sbx}:fence 1000000"));
    failed += sbx_conformance_run("vmpool conformance", make_shim, &opts);
    failed += cmocka_run_group_tests_name("vmpool agents", own, NULL, NULL);
    stop_all();
    return failed ? 1 : 0;
}
