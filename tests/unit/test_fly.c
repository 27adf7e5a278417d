/* test_fly.c — the fly provider against the Machines API emulator.
 *
 * Fly.io cannot be reached from here, so this test starts tests/flyemu/
 * flyemu.py (path from SBX_FLYEMU, else compiled in; python from
 * SBX_PYTHON, else python3) on a free port. The emulator runs every build as
 * a real bubblewrap sandbox on this host, so the shared conformance
 * scenarios can also check that no process is left (host_procs).
 *
 * Then Fly-only scenarios, with faults injected through the emulator's
 * /_emu/faults and checked in its request log (/_emu/requests):
 *   429 on create retried no sooner than Retry-After; 503 on create followed
 *   by a look for the machine and exactly one create that succeeds; a
 *   create that made its machine but answered 500 is adopted, not repeated;
 *   capacity
 *   409 falls back to the next region, or ERROR when none is left; a
 *   machine that goes `failed` is an ERROR; waits that time out (408) are
 *   issued again; the orphan sweep destroys unwatched machines of this
 *   worker only; the create -> STARTED latency over 20 runs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conformance.h"
#include "http.h"
#include "loop.h"
#include "preview.h"
#include "provider_fly.h"

#ifndef SBX_FLYEMU_PATH
#define SBX_FLYEMU_PATH "tests/flyemu/flyemu.py"
#endif

#define TOKEN "test-token-fly"
#define APP "sbx-unit"
#define WORKER "w-unit"
#define IMAGE "registry-1.docker.io/library/alpine:3.19"

static pid_t emu_pid;
static char emu_base[64];
static char api_url[96];
static char logs_url[96];

/* ---- the emulator process ---- */

static int emu_start(void)
{
    const char *path = getenv("SBX_FLYEMU") ? getenv("SBX_FLYEMU") : SBX_FLYEMU_PATH;
    const char *py = getenv("SBX_PYTHON") ? getenv("SBX_PYTHON") : "python3";
    char line[32];
    size_t n = 0;
    int fds[2];
    uint64_t deadline;

    if (pipe(fds) != 0)
        return -1;
    emu_pid = fork();
    if (emu_pid < 0)
        return -1;
    if (emu_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execlp(py, py, path, "--port", "0", "--print-port", "--token", TOKEN, "--regions",
               "iad=16,ord=16", "--destroyed-grace-ms", "1000", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    /* The first line is the port; python needs well under 10 s to get there. */
    deadline = sbx_now_ms() + 10000;
    while (n < sizeof(line) - 1 && sbx_now_ms() < deadline) {
        struct pollfd p = {fds[0], POLLIN, 0};
        ssize_t r;
        if (poll(&p, 1, 100) <= 0)
            continue;
        r = read(fds[0], line + n, 1);
        if (r <= 0)
            break;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    close(fds[0]);
    if (n == 0 || atoi(line) <= 0) {
        fprintf(stderr, "test_fly: the emulator (%s %s) did not start\n", py, path);
        return -1;
    }
    snprintf(emu_base, sizeof(emu_base), "http://127.0.0.1:%d", atoi(line));
    snprintf(api_url, sizeof(api_url), "%s/v1", emu_base);
    snprintf(logs_url, sizeof(logs_url), "%s", emu_base);
    return 0;
}

static void emu_stop(void)
{
    if (emu_pid > 0) {
        kill(emu_pid, SIGTERM);
        waitpid(emu_pid, NULL, 0);
        emu_pid = 0;
    }
}

/* ---- synchronous calls to the emulator, on a loop of their own ---- */

typedef struct emu_res {
    int done;
    long status;
    char *body;
} emu_res;

static void emu_done(void *arg, const sbx_http_res *res)
{
    emu_res *er = arg;
    er->done = 1;
    er->status = res->code == SBX_HTTP_OK ? res->status : -1;
    er->body = strdup(res->body ? res->body : "");
}

/* Returns the HTTP status; *out (if not NULL) gets the parsed JSON body. */
static long emu_call(const char *method, const char *path, const char *body, json_object **out)
{
    static const char *const hdrs[] = {"Authorization: Bearer " TOKEN,
                                       "Content-Type: application/json", NULL};
    sbx_loop *loop;
    sbx_http *http;
    sbx_http_req req;
    emu_res er = {0, 0, NULL};
    char url[512];
    uint64_t until = sbx_now_ms() + 20000;

    assert_int_equal(sbx_loop_new(&loop), 0);
    assert_int_equal(sbx_http_new(loop, &http), 0);
    snprintf(url, sizeof(url), "%s%s", emu_base, path);
    memset(&req, 0, sizeof(req));
    req.method = method;
    req.url = url;
    req.headers = hdrs;
    req.body = body;
    req.body_len = body ? strlen(body) : 0;
    req.timeout_ms = 15000;
    assert_int_equal(sbx_http_request(http, &req, emu_done, &er, NULL), 0);
    while (!er.done && sbx_now_ms() < until)
        sbx_loop_once(loop, 50);
    sbx_http_free(http);
    sbx_loop_free(loop);
    assert_true(er.done);
    if (out)
        *out = json_tokener_parse(er.body);
    free(er.body);
    return er.status;
}

static void emu_post(const char *path, const char *body)
{
    assert_int_equal(emu_call("POST", path, body, NULL), 200);
}

/* ---- the provider ---- */

static sbx_fly_config base_cfg(void)
{
    sbx_fly_config c;
    memset(&c, 0, sizeof(c));
    c.api_url = api_url;
    c.app = APP;
    c.token = TOKEN;
    c.regions = "iad,ord";
    c.worker_id = WORKER;
    c.max_machines = 4;
    c.image = IMAGE;
    c.logs_url = logs_url;
    c.backoff_base_ms = 100;
    c.backoff_max_ms = 2000;
    c.stop_grace_s = 2;
    c.logs_poll_ms = 200;
    c.logs_drain_ms = 250;   /* the emulator ships lines 100 ms late */
    return c;
}

/* Fly-specific scenarios whose subject is not the rate limit: the emulator's
 * and the provider's create budgets raised (t_create_pacer_at_fly_limits and
 * the conformance run keep Fly's defaults). */
static sbx_fly_config fast_cfg(void)
{
    sbx_fly_config c = base_cfg();
    c.create_rate = 50;
    c.create_burst = 50;
    return c;
}

static void emu_relax(void)
{
    emu_post("/_emu/faults", "{\"create_rate\": 50, \"create_burst\": 50}");
}

static sbx_provider *make_provider(sbx_loop *loop)
{
    sbx_fly_config c = base_cfg();
    sbx_provider *p = NULL;
    char err[256] = "";
    if (sbx_fly_new(loop, &c, &p, err, sizeof(err)) != 0) {
        fprintf(stderr, "sbx_fly_new: %s\n", err);
        return NULL;
    }
    return p;
}

typedef struct frun {
    sbx_run *run;
    int started, finished;
    uint64_t t0_us, started_us, finished_us;
    sbx_result res;
    char out[4096];          /* live output (stdout), as the sink got it */
    size_t out_len;
    int err_chunks;          /* chunks on stderr */
    int after_finish;        /* chunks after FINISHED: a broken contract */
    uint64_t first_out_us;   /* when the first chunk came */
} frun;

static void on_output(void *arg, sbx_stream stream, const char *data, size_t len)
{
    frun *r = arg;
    if (r->finished)
        r->after_finish++;
    if (!r->first_out_us)
        r->first_out_us = sbx_now_us();
    if (stream == SBX_STREAM_STDERR) {
        r->err_chunks++;
        return;
    }
    if (r->out_len + len < sizeof(r->out)) {
        memcpy(r->out + r->out_len, data, len);
        r->out_len += len;
        r->out[r->out_len] = '\0';
    }
}

static void on_event(void *arg, sbx_run_event ev, const sbx_result *res)
{
    frun *r = arg;
    if (ev == SBX_RUN_STARTED) {
        r->started++;
        r->started_us = sbx_now_us();
        return;
    }
    r->finished++;
    r->finished_us = sbx_now_us();
    r->res = *res;
}

typedef struct fenv {
    sbx_loop *loop;
    sbx_provider *p;
    const char **slots;
    sbx_job job;
    char id[64];
} fenv;

static int64_t next_token = 5000;

static int run_start(fenv *e, size_t slot, const char *script, int timeout_s, frun *r)
{
    sbx_run_req req = {0}; /* output: NULL unless a test sets it */
    char err[256] = "";
    int rc;

    memset(r, 0, sizeof(*r));
    memset(&e->job, 0, sizeof(e->job));
    snprintf(e->job.job_id, sizeof(e->job.job_id), "j_fly_%" PRId64, next_token);
    snprintf(e->job.project_id, sizeof(e->job.project_id), "p_fly");
    e->job.script = (char *)script;
    e->job.timeout_s = timeout_s;
    req.job = &e->job;
    req.slot = e->slots[slot];
    req.token = next_token++;
    req.attempt = 1;
    req.output = on_output;
    req.output_arg = r;
    r->t0_us = sbx_now_us();
    rc = e->p->ops->start(e->p, &req, on_event, r, &r->run, err, sizeof(err));
    if (rc)
        fprintf(stderr, "start: %s\n", err);
    return rc;
}

static int drive_until(fenv *e, const int *flag, uint64_t ms)
{
    uint64_t until = sbx_now_ms() + ms;
    while (!*flag && sbx_now_ms() < until)
        sbx_loop_once(e->loop, 20);
    return *flag;
}

static int setup_with(void **state, const sbx_fly_config *c)
{
    fenv *e = calloc(1, sizeof(*e));
    char err[256] = "";
    if (!e || sbx_loop_new(&e->loop) != 0)
        return -1;
    if (sbx_fly_new(e->loop, c, &e->p, err, sizeof(err)) != 0) {
        fprintf(stderr, "sbx_fly_new: %s\n", err);
        return -1;
    }
    e->p->ops->slots(e->p, &e->slots);
    emu_post("/_emu/reset", "{}");
    if (c->create_rate > 1)
        emu_relax();
    *state = e;
    return 0;
}

static int setup(void **state)
{
    sbx_fly_config c = fast_cfg();
    return setup_with(state, &c);
}

/* Session jobs poll through exec, which Fly limits to 1 request/s per machine
 * (burst 3): the provider's default 1 s poll, against the emulator's limit. */
static int setup_sessions(void **state)
{
    sbx_fly_config c = fast_cfg();
    c.logs_poll_ms = 1000;
    /* every test starts without the session's machine */
    emu_post("/_emu/reset", "{\"machines\": true}");
    return setup_with(state, &c);
}

static int setup_short_waits(void **state)
{
    sbx_fly_config c = fast_cfg();
    c.run_wait_s = 1;
    return setup_with(state, &c);
}

/* Two attempts per call: a 429 that counted as one would end the run. */
static int setup_two_attempts(void **state)
{
    sbx_fly_config c = fast_cfg();
    c.max_attempts = 2;
    return setup_with(state, &c);
}

/* Fly's documented limits on both sides: 1 create/s per app, burst 3. */
static int setup_fly_limits(void **state)
{
    sbx_fly_config c = base_cfg();
    return setup_with(state, &c);
}

static int teardown(void **state)
{
    fenv *e = *state;
    if (!e)
        return 0;
    if (e->p)
        e->p->ops->destroy(e->p);
    sbx_loop_free(e->loop);
    free(e);
    emu_post("/_emu/reset", "{}");
    return 0;
}

/* Requests of one action in the emulator's log, in order: statuses and times. */
static size_t requests_of(const char *action, const char *method, long *status, double *t,
                          size_t max)
{
    json_object *log = NULL;
    size_t n = 0;

    assert_int_equal(emu_call("GET", "/_emu/requests", NULL, &log), 200);
    for (size_t i = 0; i < json_object_array_length(log) && n < max; i++) {
        json_object *r = json_object_array_get_idx(log, i), *v;
        json_object_object_get_ex(r, "action", &v);
        if (strcmp(json_object_get_string(v), action) != 0)
            continue;
        json_object_object_get_ex(r, "method", &v);
        if (method && strcmp(json_object_get_string(v), method) != 0)
            continue;
        json_object_object_get_ex(r, "status", &v);
        status[n] = json_object_get_int(v);
        json_object_object_get_ex(r, "t", &v);
        t[n] = json_object_get_double(v);
        n++;
    }
    json_object_put(log);
    return n;
}

/* The machine as the emulator remembers it (destroyed ones too). */
static json_object *emu_machine(const char *id)
{
    json_object *all = NULL, *found = NULL;
    assert_int_equal(emu_call("GET", "/_emu/machines", NULL, &all), 200);
    for (size_t i = 0; i < json_object_array_length(all); i++) {
        json_object *m = json_object_array_get_idx(all, i), *v;
        json_object_object_get_ex(m, "id", &v);
        if (strcmp(json_object_get_string(v), id) == 0)
            found = json_object_get(m);
    }
    json_object_put(all);
    return found;
}

/* The id of the job's machine, from the (eventually consistent) list. */
static const char *job_machine(const char *job_id)
{
    static char id[64];
    char q[256];
    uint64_t until = sbx_now_ms() + 5000;

    snprintf(q, sizeof(q), "/v1/apps/" APP "/machines?metadata.sbx_job=%s", job_id);
    id[0] = '\0';
    while (!id[0] && sbx_now_ms() < until) {
        json_object *list = NULL, *v;
        assert_int_equal(emu_call("GET", q, NULL, &list), 200);
        if (json_object_array_length(list) == 1) {
            json_object_object_get_ex(json_object_array_get_idx(list, 0), "id", &v);
            snprintf(id, sizeof(id), "%s", json_object_get_string(v));
        }
        json_object_put(list);
        if (!id[0])
            usleep(50000);
    }
    assert_true(id[0] != '\0');
    return id;
}

/* Machines ever made for a job (destroyed ones too). */
static size_t machines_of_job(const char *job_id)
{
    json_object *all = NULL;
    size_t n = 0;
    assert_int_equal(emu_call("GET", "/_emu/machines", NULL, &all), 200);
    for (size_t i = 0; i < json_object_array_length(all); i++) {
        json_object *m = json_object_array_get_idx(all, i), *cfg, *meta, *v;
        if (json_object_object_get_ex(m, "config", &cfg) &&
            json_object_object_get_ex(cfg, "metadata", &meta) &&
            json_object_object_get_ex(meta, "sbx_job", &v) &&
            strcmp(json_object_get_string(v), job_id) == 0)
            n++;
    }
    json_object_put(all);
    return n;
}

/* ---- scenarios ---- */

static void t_429_retried_after_retry_after(void **state)
{
    fenv *e = *state;
    frun r;
    long st[8];
    double t[8];
    size_t n;

    /* three 429s with max_attempts 2: a 429 asks us to wait, it is not a
     * failed attempt (setup_two_attempts) */
    emu_post("/_emu/faults", "{\"throttle\": {\"action\": \"create\", \"count\": 3, "
                             "\"retry_after\": 1}}");
    assert_int_equal(run_start(e, 0, "echo throttled-ok", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(r.res.log_tail, "throttled-ok"));
    n = requests_of("create", "POST", st, t, 8);
    assert_int_equal(n, 4);
    assert_int_equal(st[0], 429);
    assert_int_equal(st[1], 429);
    assert_int_equal(st[2], 429);
    assert_int_equal(st[3], 200);
    print_message("    429 -> retry after %.3f s, %.3f s (Retry-After: 1)\n", t[1] - t[0],
                  t[2] - t[1]);
    assert_true(t[1] - t[0] >= 0.99);
    assert_true(t[2] - t[1] >= 0.99);
}

static void t_wait_429_and_408_loop(void **state)
{
    fenv *e = *state;
    frun r;
    long st[64];
    double t[64];
    size_t n, n408 = 0, n429 = 0;

    /* run_wait_s = 1: a 4 s build outlives the two throttled waits and sees 408s */
    emu_post("/_emu/faults", "{\"throttle\": {\"action\": \"wait\", \"count\": 2, "
                             "\"retry_after\": 1}}");
    assert_int_equal(run_start(e, 0, "sleep 4; echo waited-ok; exit 4", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 30000));
    assert_int_equal(r.started, 1);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_FAILED);
    assert_int_equal(r.res.exit_code, 4);
    assert_non_null(strstr(r.res.log_tail, "waited-ok"));
    n = requests_of("wait", "GET", st, t, 64);
    for (size_t i = 0; i < n; i++) {
        n408 += st[i] == 408;
        n429 += st[i] == 429;
    }
    assert_int_equal(n429, 2);
    assert_true(n408 >= 1);
}

static void t_503_create_retried_once(void **state)
{
    fenv *e = *state;
    frun r;
    long st[8];
    double t[8];
    size_t n, ok = 0;

    emu_post("/_emu/faults", "{\"fail_creates\": 2, \"fail_status\": 503}");
    assert_int_equal(run_start(e, 0, "echo after-503", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(r.res.log_tail, "after-503"));
    n = requests_of("create", "POST", st, t, 8);
    assert_int_equal(n, 3);
    assert_int_equal(st[0], 503);
    assert_int_equal(st[1], 503);
    for (size_t i = 0; i < n; i++)
        ok += st[i] == 200;
    assert_int_equal(ok, 1);
    /* each 503 made the provider look for a machine it might have created:
     * after the settle delay, and once more */
    assert_int_equal(requests_of("list", "GET", st, t, 8), 4);
}

static void t_lost_create_reply_adopted(void **state)
{
    fenv *e = *state;
    frun r;
    json_object *list = NULL;
    char q[256];
    long st[8];
    double t[8], t0;

    /* the create makes the machine but answers 500: no second machine may run */
    emu_post("/_emu/faults", "{\"lose_creates\": 1}");
    assert_int_equal(run_start(e, 0, "echo adopted-ok", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(r.res.log_tail, "adopted-ok"));
    assert_int_equal(requests_of("create", "POST", st, t, 8), 1);
    assert_int_equal(st[0], 500);
    t0 = t[0];
    /* the list is eventually consistent: the first look waits the settle delay */
    assert_true(requests_of("list", "GET", st, t, 8) >= 1);
    assert_true(t[0] - t0 >= 0.45);
    snprintf(q, sizeof(q), "/v1/apps/" APP "/machines?include_deleted=true&metadata.sbx_job=%s",
             e->job.job_id);
    assert_int_equal(emu_call("GET", q, NULL, &list), 200);
    assert_int_equal(json_object_array_length(list), 1);
    json_object_put(list);
}

static void t_region_fallback(void **state)
{
    fenv *e = *state;
    frun r;
    json_object *m, *v;
    long st[8];
    double t[8];

    emu_post("/_emu/faults", "{\"capacity\": {\"iad\": 0}}");
    assert_int_equal(run_start(e, 0, "echo in-ord", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_true(r.res.instance[0] != '\0');
    m = emu_machine(r.res.instance);
    assert_non_null(m);
    json_object_object_get_ex(m, "region", &v);
    assert_string_equal(json_object_get_string(v), "ord");
    json_object_put(m);
    assert_int_equal(requests_of("create", "POST", st, t, 8), 2);
    assert_int_equal(st[0], 409);
    assert_int_equal(st[1], 200);

    /* no room anywhere: an ERROR the worker may retry later */
    emu_post("/_emu/faults", "{\"capacity\": {\"iad\": 0, \"ord\": 0}}");
    assert_int_equal(run_start(e, 0, "echo nowhere", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    assert_non_null(strstr(r.res.error, "capacity"));
    assert_string_equal(r.res.instance, "");
    emu_post("/_emu/faults", "{\"capacity\": {\"iad\": 16, \"ord\": 16}}");
}

static void t_failed_machine_is_error(void **state)
{
    fenv *e = *state;
    frun r;

    emu_post("/_emu/faults", "{\"fail_boots\": 1}");
    assert_int_equal(run_start(e, 0, "echo never", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    assert_non_null(strstr(r.res.error, "failed to start"));
}

static void t_failed_while_running_is_error(void **state)
{
    fenv *e = *state;
    frun r;
    json_object *list = NULL, *v;
    char q[256], path[128], marker[64];

    sbx_conformance_marker(marker, 80);
    assert_int_equal(run_start(e, 0, marker, 60, &r), 0);
    assert_true(drive_until(e, &r.started, 20000));
    /* the machine of this job, found the way the sweep finds machines */
    (void)q;
    (void)list;
    (void)v;
    snprintf(path, sizeof(path), "/_emu/fail/%s", job_machine(e->job.job_id));
    emu_post(path, "{}");
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    assert_non_null(strstr(r.res.error, "failed"));
    assert_int_equal(sbx_conformance_procs_with(marker, 0), 0);
}

static int swept, sweep_failed, sweep_done;
static char sweep_err[256];

static void on_sweep(void *arg, int destroyed, int failed, const char *err)
{
    (void)arg;
    swept = destroyed;
    sweep_failed = failed;
    sweep_done = 1;
    snprintf(sweep_err, sizeof(sweep_err), "%s", err);
}

/* A machine made behind the provider's back, running `marker`. */
static char *create_direct(const char *worker, const char *job, const char *marker)
{
    char body[512];
    json_object *m = NULL, *v;
    char *id;

    snprintf(body, sizeof(body),
             "{\"config\": {\"image\": \"%s\", \"init\": {\"exec\": [\"/bin/sh\", \"-c\", "
             "\"%s\"]}, \"restart\": {\"policy\": \"no\"}, \"auto_destroy\": true, "
             "\"metadata\": {\"sbx_worker\": \"%s\", \"sbx_job\": \"%s\"}}}",
             IMAGE, marker, worker, job);
    assert_int_equal(emu_call("POST", "/v1/apps/" APP "/machines", body, &m), 200);
    json_object_object_get_ex(m, "id", &v);
    id = strdup(json_object_get_string(v));
    json_object_put(m);
    return id;
}

/* Destroy answers while the machine is `destroying`; `destroyed` follows. */
static int becomes_destroyed(const char *id)
{
    uint64_t until = sbx_now_ms() + 5000;
    while (sbx_now_ms() < until) {
        json_object *m = emu_machine(id), *v;
        int yes;
        assert_non_null(m);
        json_object_object_get_ex(m, "state", &v);
        yes = strcmp(json_object_get_string(v), "destroyed") == 0;
        json_object_put(m);
        if (yes)
            return 1;
        usleep(20000);
    }
    return 0;
}

static const char *machine_state(const char *id)
{
    static char st[32];
    json_object *m = emu_machine(id), *v;
    assert_non_null(m);
    json_object_object_get_ex(m, "state", &v);
    snprintf(st, sizeof(st), "%s", json_object_get_string(v));
    json_object_put(m);
    return st;
}

static void t_orphan_sweep(void **state)
{
    fenv *e = *state;
    frun r;
    char lost[64], theirs[64], mine[64];
    char *orphan1, *orphan2, *other;

    sbx_conformance_marker(lost, 90);
    sbx_conformance_marker(theirs, 91);
    sbx_conformance_marker(mine, 92);
    orphan1 = create_direct(WORKER, "j_lost_1", lost);
    orphan2 = create_direct(WORKER, "j_lost_2", lost);
    other = create_direct("w-someone-else", "j_theirs", theirs);
    /* the list is eventually consistent: a sweep sees what the list shows */
    (void)job_machine("j_lost_1");
    (void)job_machine("j_lost_2");
    (void)job_machine("j_theirs");
    assert_int_equal(run_start(e, 0, mine, 120, &r), 0);
    assert_true(drive_until(e, &r.started, 20000));
    sweep_done = 0;
    assert_int_equal(sbx_fly_sweep(e->p, NULL, on_sweep, NULL), 0);
    assert_true(drive_until(e, &sweep_done, 30000));
    assert_string_equal(sweep_err, "");
    assert_int_equal(swept, 2);
    assert_int_equal(sweep_failed, 0);
    assert_true(becomes_destroyed(orphan1));
    assert_true(becomes_destroyed(orphan2));
    assert_string_not_equal(machine_state(other), "destroyed");
    assert_int_equal(r.finished, 0);       /* the watched build is left alone */
    assert_int_equal(sbx_conformance_procs_with(lost, 1), 0);
    assert_true(sbx_conformance_procs_with(mine, 1) > 0);

    e->p->ops->cancel(e->p, r.run);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);

    /* another worker's leftovers, swept by name (a reaper for dead workers) */
    sweep_done = 0;
    assert_int_equal(sbx_fly_sweep(e->p, "w-someone-else", on_sweep, NULL), 0);
    assert_true(drive_until(e, &sweep_done, 30000));
    assert_int_equal(swept, 1);
    assert_true(becomes_destroyed(other));
    assert_int_equal(sbx_conformance_procs_with(theirs, 0), 0);
    free(orphan1);
    free(orphan2);
    free(other);
}

/* ---- issue 15: Fly as it behaves ---- */

/* A create answered 408 made its machine all the same. The list shows it only
 * 800 ms later here, so the first look (after 500 ms) misses it and the one
 * retry finds it: one create, one machine, the build's output. */
static void t_create_408_adopted_after_settle(void **state)
{
    fenv *e = *state;
    frun r;
    long st[8];
    double t[8];

    emu_post("/_emu/faults", "{\"timeout_creates\": 1, \"list_delay_ms\": 800}");
    assert_int_equal(run_start(e, 0, "echo adopted-408", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(r.res.log_tail, "adopted-408"));
    assert_int_equal(requests_of("create", "POST", st, t, 8), 1);
    assert_int_equal(st[0], 408);
    assert_int_equal(requests_of("list", "GET", st, t, 8), 2);
    assert_int_equal(machines_of_job(e->job.job_id), 1);
}

/* The reply is lost on the way (connection closed, no status). */
static void t_create_reply_dropped_adopted(void **state)
{
    fenv *e = *state;
    frun r;
    long st[8];
    double t[8];

    emu_post("/_emu/faults", "{\"drop_creates\": 1}");
    assert_int_equal(run_start(e, 0, "echo adopted-dropped", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(r.res.log_tail, "adopted-dropped"));
    assert_int_equal(requests_of("create", "POST", st, t, 8), 1);
    assert_int_equal(machines_of_job(e->job.job_id), 1);
}

/* fly-go decides capacity from the body's status, whatever the code. */
static void t_capacity_in_body_any_code(void **state)
{
    static const char *const codes[] = {"412", "200"};
    fenv *e = *state;
    frun r;
    json_object *m, *v;
    char faults[128];

    for (size_t i = 0; i < 2; i++) {
        snprintf(faults, sizeof(faults),
                 "{\"capacity\": {\"iad\": 0, \"ord\": 16}, \"capacity_status\": %s}", codes[i]);
        emu_post("/_emu/faults", faults);
        assert_int_equal(run_start(e, 0, "echo in-ord", 60, &r), 0);
        assert_true(drive_until(e, &r.finished, 20000));
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        m = emu_machine(r.res.instance);
        assert_non_null(m);
        json_object_object_get_ex(m, "region", &v);
        assert_string_equal(json_object_get_string(v), "ord");
        json_object_put(m);
    }
    emu_post("/_emu/faults", "{\"capacity\": {\"iad\": 16, \"ord\": 16}}");
}

/* Fly's limits on both sides (1 create/s per app, burst 3): four runs at
 * once are paced by the provider, so Fly never has to say 429. */
static void t_create_pacer_at_fly_limits(void **state)
{
    fenv *e = *state;
    frun r[4];
    long st[16];
    double t[16];
    size_t n;
    int done = 0;

    for (size_t i = 0; i < 4; i++)
        assert_int_equal(run_start(e, i, "echo paced", 60, &r[i]), 0);
    for (uint64_t until = sbx_now_ms() + 30000; done < 4 && sbx_now_ms() < until;) {
        sbx_loop_once(e->loop, 20);
        done = r[0].finished + r[1].finished + r[2].finished + r[3].finished;
    }
    assert_int_equal(done, 4);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(r[i].res.outcome, SBX_OUTCOME_SUCCEEDED);
    n = requests_of("create", "POST", st, t, 16);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(st[i], 200);
    print_message("    4 creates at Fly's limits: at %.2f %.2f %.2f %.2f s\n", 0.0, t[1] - t[0],
                  t[2] - t[0], t[3] - t[0]);
    assert_true(t[3] - t[0] >= 0.9);
}

static void t_launch_failed_is_error(void **state)
{
    fenv *e = *state;
    frun r;

    emu_post("/_emu/faults", "{\"launch_fails\": 1}");
    assert_int_equal(run_start(e, 0, "echo never", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    assert_non_null(strstr(r.res.error, "launch_failed"));
}

/* Fly replaces or migrates the machine under a running build: the new
 * version runs the build again, so the provider destroys the machine and
 * says ERROR (the job is retried). */
static void moved_under_build(fenv *e, const char *how, const char *want)
{
    frun r;
    char path[128], marker[64];
    const char *id;

    sbx_conformance_marker(marker, strcmp(how, "migrate") == 0 ? 81 : 82);
    assert_int_equal(run_start(e, 0, marker, 60, &r), 0);
    assert_true(drive_until(e, &r.started, 20000));
    id = job_machine(e->job.job_id);
    snprintf(path, sizeof(path), "/_emu/%s/%s", how, id);
    emu_post(path, "{}");
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    assert_non_null(strstr(r.res.error, want));
    assert_true(becomes_destroyed(id));
    assert_int_equal(sbx_conformance_procs_with(marker, 0), 0);
}

static void t_migrated_is_error(void **state)
{
    moved_under_build(*state, "migrate", "version was migrated");
}

static void t_replaced_is_error(void **state)
{
    moved_under_build(*state, "replace", "version was replaced");
}

/* A wait that answers "failed to reach desired state" is not the end: the
 * machine is still running the build, and the run goes on. */
static void t_wait_error_looks_at_machine(void **state)
{
    fenv *e = *state;
    frun r;

    assert_int_equal(run_start(e, 0, "sleep 2; echo survived-wait-errors", 60, &r), 0);
    assert_true(drive_until(e, &r.started, 20000));
    emu_post("/_emu/faults", "{\"wait_errors\": 2, \"wait_error_status\": 400}");
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(r.res.log_tail, "survived-wait-errors"));
}

/* A machine just made may 404 for a moment (eventual consistency). */
static void t_new_machine_404_waited_out(void **state)
{
    fenv *e = *state;
    frun r;

    emu_post("/_emu/faults", "{\"new_404_ms\": 1200}");
    assert_int_equal(run_start(e, 0, "sleep 1.5; echo found-later", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(r.res.log_tail, "found-later"));
}

/* The exit under request.MonitorEvent.exit_event, the nesting fly-go's
 * GetExitCode reads first. */
static void t_exit_under_monitor_event(void **state)
{
    fenv *e = *state;
    frun r;

    emu_post("/_emu/faults", "{\"monitor_exit\": true}");
    assert_int_equal(run_start(e, 0, "echo monitored; exit 6", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_FAILED);
    assert_int_equal(r.res.exit_code, 6);
}

/* Fly's presets: an impossible size is the job's fault, at once, with why. */
static void t_sizes_checked_against_presets(void **state)
{
    fenv *e = *state;
    frun r;
    sbx_run_req req;
    json_object *m, *cfg, *guest, *v;
    char err[256];

    memset(&e->job, 0, sizeof(e->job));
    snprintf(e->job.job_id, sizeof(e->job.job_id), "j_fly_size");
    e->job.script = "true";
    memset(&req, 0, sizeof(req));
    req.job = &e->job;
    req.slot = e->slots[0];
    req.token = next_token++;
    req.attempt = 1;

    e->job.cpus = 16;                      /* shared CPUs stop at 8 */
    err[0] = '\0';
    assert_int_equal(e->p->ops->start(e->p, &req, on_event, &r, &r.run, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "at most 8 CPUs"));
    e->job.cpus = 0;
    e->job.memory_mb = 20000;              /* 8 shared CPUs x 2048 MB at most */
    err[0] = '\0';
    assert_int_equal(e->p->ops->start(e->p, &req, on_event, &r, &r.run, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "at most 16384 MB"));
    /* a size in between is rounded up to a preset and runs */
    e->job.cpus = 3;
    e->job.memory_mb = 300;
    memset(&r, 0, sizeof(r));
    assert_int_equal(e->p->ops->start(e->p, &req, on_event, &r, &r.run, err, sizeof(err)), 0);
    assert_true(drive_until(e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    m = emu_machine(r.res.instance);
    assert_non_null(m);
    json_object_object_get_ex(m, "config", &cfg);
    json_object_object_get_ex(cfg, "guest", &guest);
    json_object_object_get_ex(guest, "cpus", &v);
    assert_int_equal(json_object_get_int(v), 4);
    json_object_object_get_ex(guest, "memory_mb", &v);
    assert_int_equal(json_object_get_int(v), 1024);   /* 4 shared CPUs x 256 MB at least */
    json_object_put(m);
}

/* Live output from the logs API: in order, once each, before FINISHED, and
 * while the build still runs. Fly's log entries do not say which stream a
 * line came from, so stderr arrives in the stdout stream, in its place. */
static void t_live_output_from_logs_api(void **state)
{
    fenv *e = *state;
    frun r;
    const char *want = "first-line\nto-stderr\nsecond-line\n";

    assert_int_equal(run_start(e, 0, "echo first-line; echo to-stderr >&2; sleep 2; "
                                     "echo second-line", 60, &r), 0);
    assert_true(drive_until(e, &r.finished, 30000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_string_equal(r.out, want);
    assert_int_equal(r.err_chunks, 0);
    assert_int_equal(r.after_finish, 0);
    print_message("    first output %.2f s before FINISHED\n",
                  (double)(r.finished_us - r.first_out_us) / 1e6);
    assert_true(r.first_out_us > 0 && r.finished_us - r.first_out_us >= 1500000);
    assert_string_equal(r.res.log_tail, want);
}

static void t_bad_config_refused(void **state)
{
    sbx_fly_config c = base_cfg();
    sbx_provider *p = NULL;
    sbx_loop *loop = NULL;
    char err[256] = "";
    (void)state;

    assert_int_equal(sbx_loop_new(&loop), 0);
    c.token = "";
    assert_int_equal(sbx_fly_new(loop, &c, &p, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "TOKEN"));
    c = base_cfg();
    c.app = "Bad App";
    assert_int_equal(sbx_fly_new(loop, &c, &p, err, sizeof(err)), -EINVAL);
    c = base_cfg();
    c.regions = "iad,ORD";
    assert_int_equal(sbx_fly_new(loop, &c, &p, err, sizeof(err)), -EINVAL);
    c = base_cfg();
    c.memory_mb = 300;
    assert_int_equal(sbx_fly_new(loop, &c, &p, err, sizeof(err)), -EINVAL);
    sbx_loop_free(loop);
}

static void t_config_from_env(void **state)
{
    sbx_fly_config c;
    char err[256] = "";
    (void)state;

    setenv("SBX_FLY_APP", "env-app", 1);
    setenv("SBX_FLY_API_TOKEN", "env-token", 1);
    setenv("SBX_FLY_REGIONS", "ams,iad", 1);
    setenv("SBX_FLY_MAX_MACHINES", "7", 1);
    setenv("SBX_FLY_MEMORY_MB", "512", 1);
    assert_int_equal(sbx_fly_config_from_env(&c, "w-env", err, sizeof(err)), 0);
    assert_string_equal(c.app, "env-app");
    assert_string_equal(c.token, "env-token");
    assert_string_equal(c.regions, "ams,iad");
    assert_string_equal(c.worker_id, "w-env");
    assert_int_equal(c.max_machines, 7);
    assert_int_equal(c.memory_mb, 512);
    unsetenv("SBX_FLY_API_TOKEN");
    setenv("FLY_API_TOKEN", "fly-token", 1);
    setenv("SBX_FLY_CPUS", "two", 1);
    assert_int_equal(sbx_fly_config_from_env(&c, "w-env", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "SBX_FLY_CPUS"));
    unsetenv("SBX_FLY_CPUS");
    assert_int_equal(sbx_fly_config_from_env(&c, "w-env", err, sizeof(err)), 0);
    assert_string_equal(c.token, "fly-token");
    unsetenv("FLY_API_TOKEN");
    unsetenv("SBX_FLY_APP");
    unsetenv("SBX_FLY_REGIONS");
    unsetenv("SBX_FLY_MAX_MACHINES");
    unsetenv("SBX_FLY_MEMORY_MB");
}

static void t_wrong_token_is_error(void **state)
{
    sbx_fly_config c = base_cfg();
    fenv e;
    frun r;
    char err[256] = "";
    (void)state;

    memset(&e, 0, sizeof(e));
    c.token = "not-the-token";
    assert_int_equal(sbx_loop_new(&e.loop), 0);
    assert_int_equal(sbx_fly_new(e.loop, &c, &e.p, err, sizeof(err)), 0);
    e.p->ops->slots(e.p, &e.slots);
    assert_int_equal(run_start(&e, 0, "echo no", 60, &r), 0);
    assert_true(drive_until(&e, &r.finished, 20000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    assert_non_null(strstr(r.res.error, "401"));
    assert_null(strstr(r.res.error, "not-the-token"));
    e.p->ops->destroy(e.p);
    sbx_loop_free(e.loop);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void t_create_to_running_latency(void **state)
{
    enum { RUNS = 20 };
    fenv *e = *state;
    uint64_t lat[RUNS];
    frun r;

    for (int i = 0; i < RUNS; i++) {
        assert_int_equal(run_start(e, 0, "sleep 0.3", 60, &r), 0);
        assert_true(drive_until(e, &r.finished, 20000));
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        assert_int_equal(r.started, 1);
        lat[i] = r.started_us - r.t0_us;
    }
    qsort(lat, RUNS, sizeof(lat[0]), cmp_u64);
    print_message("    create -> STARTED over %d runs: median %.1f ms, p95 %.1f ms, "
                  "max %.1f ms (emulated boot 100-300 ms)\n",
                  RUNS, (double)lat[RUNS / 2] / 1000.0, (double)lat[RUNS * 95 / 100] / 1000.0,
                  (double)lat[RUNS - 1] / 1000.0);
    assert_true(lat[RUNS / 2] < 1000000);   /* the seed plan's p50 < 1 s */
}


/* ---- sessions (fly_session.c): one long-lived machine, jobs through exec ---- */

#define SESSION "s-0123456789abcdef0123456789abcdef"

static int sess_preview_port;     /* session.preview_port of the next sess_run */

static int sess_run(fenv *e, sbx_provider *p, const char *session, const char *script,
                    int timeout_s, frun *r, sbx_kv *files, size_t nfiles)
{
    sbx_run_req req = {0};
    char err[256] = "";
    int rc;

    memset(r, 0, sizeof(*r));
    memset(&e->job, 0, sizeof(e->job));
    snprintf(e->job.job_id, sizeof(e->job.job_id), "j_sess_%" PRId64, next_token);
    snprintf(e->job.project_id, sizeof(e->job.project_id), "p_fly");
    e->job.script = (char *)script;
    e->job.timeout_s = timeout_s;
    e->job.files = files;
    e->job.nfiles = nfiles;
    e->job.session_preview_port = sess_preview_port;
    req.job = &e->job;
    req.slot = e->slots[0];
    req.token = next_token++;
    req.attempt = 1;
    req.output = on_output;
    req.output_arg = r;
    req.session = session;
    r->t0_us = sbx_now_us();
    rc = p->ops->start(p, &req, on_event, r, &r->run, err, sizeof(err));
    if (rc)
        fprintf(stderr, "start: %s\n", err);
    return rc;
}

/* Runs one job of the session to its end; returns the outcome. */
static sbx_outcome sess_job(fenv *e, sbx_provider *p, const char *script, int timeout_s,
                            frun *r)
{
    assert_int_equal(sess_run(e, p, SESSION, script, timeout_s, r, NULL, 0), 0);
    assert_true(drive_until(e, &r->finished, 60000));
    assert_int_equal(r->started, 1);
    assert_int_equal(r->after_finish, 0);
    if (r->res.outcome != SBX_OUTCOME_SUCCEEDED)
        print_message("    outcome %d: %s\n", (int)r->res.outcome, r->res.error);
    return r->res.outcome;
}

typedef struct sop_res {
    int done, rc;
    char why[200];
} sop_res;

static void on_sop(void *arg, int rc, const char *why)
{
    sop_res *o = arg;
    o->done = 1;
    o->rc = rc;
    snprintf(o->why, sizeof(o->why), "%s", why);
}

static int sess_op(fenv *e, sbx_session_op op)
{
    sop_res o = {0, 0, ""};
    assert_int_equal(e->p->ops->session_op(e->p, op, e->slots[0], SESSION, next_token++,
                                           on_sop, &o), 0);
    assert_int_equal(o.done, 0);          /* never from inside the call */
    assert_true(drive_until(e, &o.done, 90000));
    if (o.rc)
        print_message("    session_op %d: rc=%d %s\n", (int)op, o.rc, o.why);
    return o.rc;
}

static const char *session_machine_state(void)
{
    static char st[32];
    json_object *list = NULL, *v;
    st[0] = '\0';
    assert_int_equal(emu_call("GET", "/v1/apps/" APP "/machines?metadata.sbx_session=" SESSION,
                              NULL, &list), 200);
    for (size_t i = 0; i < json_object_array_length(list); i++)
        if (json_object_object_get_ex(json_object_array_get_idx(list, i), "state", &v))
            snprintf(st, sizeof(st), "%s", json_object_get_string(v));
    json_object_put(list);
    return st[0] ? st : "none";
}

/* Five jobs of one session share /workspace and its machine; job->files are
 * written over the workspace; a process one job leaves in the background is
 * still there for the next (the machine keeps running between jobs). */
static void t_session_five_jobs_share_workspace(void **state)
{
    fenv *e = *state;
    frun r;
    char inst[128];
    sbx_kv file = {"sub/f.txt", "from files\n"};

    assert_int_equal(sess_job(e, e->p, "echo one > /workspace/a; sleep 600 > /dev/null 2>&1 &"
                                       " echo $! > bg.pid; echo first", 30, &r),
                     SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_non_null(strstr(r.out, "first"));
    snprintf(inst, sizeof(inst), "%s", r.res.instance);
    assert_true(inst[0]);
    for (int i = 2; i <= 4; i++) {
        if (i == 3) {
            assert_int_equal(sess_run(e, e->p, SESSION, "cat sub/f.txt; echo $((2+1)) >> a", 30,
                                      &r, &file, 1), 0);
            assert_true(drive_until(e, &r.finished, 60000));
            assert_non_null(strstr(r.out, "from files"));
        } else {
            assert_int_equal(sess_job(e, e->p, "echo x >> a; echo >&2 to-stderr", 30, &r),
                             SBX_OUTCOME_SUCCEEDED);
            assert_true(r.err_chunks > 0);
        }
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
        assert_string_equal(r.res.instance, inst);
    }
    assert_int_equal(sess_job(e, e->p, "cat a; kill -0 $(cat bg.pid) && echo bg-alive; exit 3",
                              30, &r),
                     SBX_OUTCOME_FAILED);
    assert_int_equal(r.res.exit_code, 3);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_non_null(strstr(r.out, "one\nx\n3\nx\n"));
    assert_non_null(strstr(r.out, "bg-alive"));
    assert_non_null(strstr(r.res.log_tail, "bg-alive"));
    assert_string_equal(session_machine_state(), "started");
    /* the sweep never removes a session's machine */
    sweep_done = 0;
    assert_int_equal(sbx_fly_sweep(e->p, NULL, on_sweep, NULL), 0);
    assert_true(drive_until(e, &sweep_done, 30000));
    assert_int_equal(swept, 0);
    assert_string_equal(session_machine_state(), "started");
    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);
}

/* PAUSE suspends the machine; the next job resumes it (RESUMED, resume_ms),
 * and what ran in the background survived with the workspace. */
static void t_session_pause_then_resume(void **state)
{
    fenv *e = *state;
    frun r;
    char inst[128];

    assert_int_equal(sess_job(e, e->p, "echo kept > k; sleep 600 > /dev/null 2>&1 &"
                                       " echo $! > bg.pid", 30, &r),
                     SBX_OUTCOME_SUCCEEDED);
    snprintf(inst, sizeof(inst), "%s", r.res.instance);
    assert_int_equal(sess_op(e, SBX_SESSION_PAUSE), 0);
    assert_string_equal(session_machine_state(), "suspended");
    assert_int_equal(sess_op(e, SBX_SESSION_PAUSE), 0);   /* already paused: done */
    assert_int_equal(sess_job(e, e->p, "cat k; kill -0 $(cat bg.pid) && echo bg-alive", 30, &r),
                     SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_RESUMED);
    assert_string_equal(r.res.instance, inst);
    assert_non_null(strstr(r.out, "kept\nbg-alive"));
    assert_true(r.res.resume_ms > 0 && r.res.resume_ms < 5000);
    print_message("    fly session resume_ms=%d (emulated resume 200-400 ms: Fly's \"a few "
                  "hundred ms\")\n", r.res.resume_ms);
    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);
}

/* DESTROY removes the machine and all in it; the next job gets a new one
 * with an empty workspace; DESTROY with nothing there is done too. */
static void t_session_destroy_then_new(void **state)
{
    fenv *e = *state;
    frun r;
    char inst[128];

    assert_int_equal(sess_job(e, e->p, "echo gone > g", 30, &r), SBX_OUTCOME_SUCCEEDED);
    snprintf(inst, sizeof(inst), "%s", r.res.instance);
    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);
    assert_true(becomes_destroyed(inst));
    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);
    assert_int_equal(sess_job(e, e->p, "test -f g && echo still-there || echo empty", 30, &r),
                     SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_string_not_equal(r.res.instance, inst);
    assert_non_null(strstr(r.out, "empty"));
    snprintf(inst, sizeof(inst), "%s", r.res.instance);
    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);
    assert_true(becomes_destroyed(inst));
    assert_string_equal(session_machine_state(), "none");
}

/* Another worker (a second provider, as after a kill -9 of the first) finds
 * the session's machine by its metadata and runs in it. */
static void t_session_found_by_second_provider(void **state)
{
    fenv *e = *state;
    sbx_fly_config c = fast_cfg();
    sbx_provider *p2 = NULL;
    char err[256] = "", inst[128];
    frun r;

    assert_int_equal(sess_job(e, e->p, "echo mine > m", 30, &r), SBX_OUTCOME_SUCCEEDED);
    snprintf(inst, sizeof(inst), "%s", r.res.instance);
    c.worker_id = "w-fly-second";
    assert_int_equal(sbx_fly_new(e->loop, &c, &p2, err, sizeof(err)), 0);
    assert_int_equal(sess_job(e, p2, "cat m", 30, &r), SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_string_equal(r.res.instance, inst);
    assert_non_null(strstr(r.out, "mine"));
    p2->ops->destroy(p2);           /* worker exit: the session's machine stays */
    assert_string_equal(session_machine_state(), "started");
    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);
}

/* A job that outlives its timeout is killed with everything it started; the
 * machine and workspace stay for the next job. */
static void t_session_timeout_kills_job_keeps_machine(void **state)
{
    fenv *e = *state;
    frun r;

    assert_int_equal(sess_job(e, e->p, "sleep 600 > /dev/null 2>&1 & echo $! > t.pid; sleep 600",
                              2, &r),
                     SBX_OUTCOME_TIMED_OUT);
    assert_true(r.finished_us - r.t0_us < 20000000);
    assert_int_equal(sess_job(e, e->p, "kill -0 $(cat t.pid) 2>/dev/null && echo alive ||"
                                       " echo dead", 30, &r),
                     SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_non_null(strstr(r.out, "dead"));
    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);
}

/* Fly suspends machines of at most 2 GB (suspend-resume, "Requirements"):
 * PAUSE of a bigger one is -ENOTSUP, and the machine keeps running. */
static void t_session_pause_big_machine_not_supported(void **state)
{
    fenv *e = *state;
    sbx_run_req req = {0};
    char err[256] = "";
    frun r;

    memset(&r, 0, sizeof(r));
    memset(&e->job, 0, sizeof(e->job));
    snprintf(e->job.job_id, sizeof(e->job.job_id), "j_sess_big");
    e->job.script = (char *)"true";
    e->job.timeout_s = 30;
    e->job.memory_mb = 4096;
    req.job = &e->job;
    req.slot = e->slots[0];
    req.token = next_token++;
    req.attempt = 1;
    req.session = SESSION;
    assert_int_equal(e->p->ops->start(e->p, &req, on_event, &r, &r.run, err, sizeof(err)), 0);
    assert_true(drive_until(e, &r.finished, 60000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(sess_op(e, SBX_SESSION_PAUSE), -ENOTSUP);
    assert_string_equal(session_machine_state(), "started");
    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);
}


/* The worker running a job dies (kill -9: its provider goes without a word);
 * the session's next owner finds the machine, kills the abandoned job and
 * everything it started before its own job runs, so nothing runs twice. */
static void t_session_abandoned_job_killed_by_next_owner(void **state)
{
    fenv *e = *state;
    sbx_fly_config c = fast_cfg();
    sbx_provider *p1 = NULL;
    char err[256] = "";
    frun r1, r;

    c.worker_id = "w-fly-dies";
    c.logs_poll_ms = 1000;
    assert_int_equal(sbx_fly_new(e->loop, &c, &p1, err, sizeof(err)), 0);
    assert_int_equal(sess_run(e, p1, SESSION, "sleep 600 > /dev/null 2>&1 & echo $! > a.pid;"
                              " echo running > state; sleep 600", 600, &r1, NULL, 0), 0);
    assert_true(drive_until(e, &r1.started, 30000));
    p1->ops->destroy(p1);
    assert_int_equal(sess_job(e, e->p, "cat state; kill -0 $(cat a.pid) 2>/dev/null &&"
                                       " echo alive || echo dead", 30, &r),
                     SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_non_null(strstr(r.out, "running\ndead"));
    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);
}

/* cancel() of a session's job: CANCELED, never from inside cancel(), the
 * job's processes gone, the machine kept. */
static void t_session_cancel(void **state)
{
    fenv *e = *state;
    frun r;

    assert_int_equal(sess_run(e, e->p, SESSION, "echo $$ > c.pid; sleep 600", 600, &r, NULL, 0),
                     0);
    assert_true(drive_until(e, &r.started, 30000));
    e->p->ops->cancel(e->p, r.run);
    assert_int_equal(r.finished, 0);
    assert_true(drive_until(e, &r.finished, 30000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);
    assert_int_equal(sess_job(e, e->p, "kill -0 $(cat c.pid) 2>/dev/null && echo alive ||"
                                       " echo dead", 30, &r),
                     SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_non_null(strstr(r.out, "dead"));
    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);
}


/* Fencing: the session's machine remembers the newest lease token that
 * started a job in it; an older one (a stale owner) gets BUSY, no job. */
static void t_session_stale_token_busy(void **state)
{
    fenv *e = *state;
    int64_t saved = next_token;
    frun r;

    assert_int_equal(sess_job(e, e->p, "echo new-owner > owner", 30, &r), SBX_OUTCOME_SUCCEEDED);
    next_token = 10;                  /* far older than any token used so far */
    assert_int_equal(sess_run(e, e->p, SESSION, "echo stale > owner", 30, &r, NULL, 0), 0);
    next_token = saved;
    assert_true(drive_until(e, &r.finished, 60000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_BUSY);
    assert_non_null(strstr(r.res.error, "newer lease"));
    assert_int_equal(sess_job(e, e->p, "cat owner", 30, &r), SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(r.out, "new-owner"));
    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);
}

/* ---- previews and the warm pool ---- */

#define DEVSERVER_PY "tests/devserver/devserver.py"
#define PREVIEW_PORT 8000

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    rewind(f);
    buf = calloc(1, (size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return buf;
}

/* The browser (fly_preview_check.py) against the proxy, while our loop runs
 * the proxy. Returns its exit status. */
static int browse(fenv *e, const char *url, const char *text)
{
    int status = -1;
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        execlp("python3", "python3", "tests/unit/fly_preview_check.py", url, text, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 3000 && waitpid(child, &status, WNOHANG) != child; i++)
        sbx_loop_once(e->loop, 10);
    if (!WIFEXITED(status) && waitpid(child, &status, WNOHANG) == 0) {
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
        fail_msg("fly_preview_check.py did not finish in 30 s");
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static sbx_previews *previews_on(fenv *e, sbx_provider *p, int off)
{
    sbx_previews_cfg cfg = {0};
    sbx_previews *ps = NULL;
    int base = 22000 + (int)(getpid() % 1000) * 20 + off;
    char err[256] = "";

    cfg.loop = e->loop;
    cfg.bind_host = "127.0.0.1";
    cfg.port_min = base;
    cfg.port_max = base + 9;
    cfg.secret = "fly-test-secret";
    assert_int_equal(sbx_previews_new(&cfg, &ps, err, sizeof(err)), 0);
    p->previews = ps;
    return ps;
}

static int url_answers(const char *url)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "python3 -c \"import socket,sys; socket.create_connection("
             "('127.0.0.1', %d), timeout=2)\" 2>/dev/null", atoi(strrchr(url, ':') + 1));
    return system(cmd) == 0;
}

/* A dev server started in the background by one job of the session is the
 * session's preview: the worker's proxy dials the machine's private_ip (its
 * 6PN address) and the dev server's port; a real client needs the URL's
 * token (401 without), gets the page and a WebSocket echo; after PAUSE, a
 * job that resumes the machine (naming no port) still has the preview, and
 * it answers again; another worker that takes the session over with a job
 * naming no port opens it too (the machine recorded the port); DESTROY
 * closes it. */
static void t_session_preview_through_proxy(void **state)
{
    fenv *e = *state;
    sbx_previews *ps = previews_on(e, e->p, 0), *ps2;
    sbx_kv file = {"devserver.py", NULL};
    sbx_fly_config c = fast_cfg();
    sbx_provider *p2 = NULL;
    char url[SBX_PREVIEW_URL_MAX], url1[SBX_PREVIEW_URL_MAX], err[256] = "";
    frun r;

    file.value = slurp(DEVSERVER_PY);
    sess_preview_port = PREVIEW_PORT;
    assert_int_equal(sess_run(e, e->p, SESSION,
                              "echo hello-from-the-machine > index.html; "
                              "nohup python3 devserver.py 8000 . > dev.log 2>&1 & "
                              "for i in $(seq 50); do grep -q listening dev.log && break; "
                              "sleep 0.1; done; cat dev.log",
                              30, &r, &file, 1), 0);
    sess_preview_port = 0;
    assert_true(drive_until(e, &r.finished, 60000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(r.out, "listening on 8000"));
    assert_non_null(strstr(r.res.preview_url, "?sbx_token="));
    snprintf(url, sizeof(url), "%s", r.res.preview_url);
    assert_int_equal(browse(e, url, "hello-from-the-machine"), 0);

    assert_int_equal(sess_op(e, SBX_SESSION_PAUSE), 0);
    assert_string_equal(session_machine_state(), "suspended");
    assert_int_equal(sess_job(e, e->p, "echo again", 30, &r), SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_RESUMED);
    assert_string_equal(r.res.preview_url, url);
    assert_int_equal(browse(e, url, "hello-from-the-machine"), 0);
    snprintf(url1, sizeof(url1), "%s", url);
    print_message("    fly preview %.*s: HTTP and WebSocket through private_ip, before and "
                  "after a pause (resume_ms=%d)\n", (int)strcspn(url, "?"), url,
                  r.res.resume_ms);

    c.worker_id = "w-fly-second";
    assert_int_equal(sbx_fly_new(e->loop, &c, &p2, err, sizeof(err)), 0);
    ps2 = previews_on(e, p2, 10);
    assert_int_equal(sess_job(e, p2, "echo taken-over", 30, &r), SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_non_null(strstr(r.res.preview_url, "?sbx_token="));
    assert_string_not_equal(r.res.preview_url, url);      /* its own proxy's port */
    snprintf(url, sizeof(url), "%s", r.res.preview_url);
    assert_int_equal(browse(e, url, "hello-from-the-machine"), 0);
    p2->ops->destroy(p2);
    sbx_previews_free(ps2);

    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);
    sbx_loop_once(e->loop, 0);
    assert_false(url_answers(url1));
    free((char *)file.value);
    e->p->previews = NULL;
    sbx_previews_free(ps);
}

/* Machines of the emulator with metadata sbx_warm, and how many are in st. */
static size_t warm_machines(const char *st, size_t *in_state)
{
    json_object *list = NULL, *v;
    size_t n = 0;
    *in_state = 0;
    assert_int_equal(emu_call("GET", "/_emu/machines", NULL, &list), 200);
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *m = json_object_array_get_idx(list, i), *cfg, *md;
        if (!json_object_object_get_ex(m, "config", &cfg) ||
            !json_object_object_get_ex(cfg, "metadata", &md) ||
            !json_object_object_get_ex(md, "sbx_warm", &v) ||
            json_object_object_get_ex(md, "sbx_session", &v))
            continue;
        json_object_object_get_ex(m, "state", &v);
        if (strcmp(json_object_get_string(v), "destroyed") == 0)
            continue;
        n++;
        if (strcmp(json_object_get_string(v), st) == 0)
            (*in_state)++;
    }
    json_object_put(list);
    return n;
}

static int warm_ready(fenv *e, uint64_t ms)
{
    uint64_t until = sbx_now_ms() + ms;
    size_t ready = 0;
    while (sbx_now_ms() < until) {
        sbx_loop_once(e->loop, 50);
        warm_machines("suspended", &ready);
        if (ready)
            return 1;
    }
    return 0;
}

/* The warm pool: with warm(p, 1) a session's first job takes the suspended
 * machine made ahead (WARM, resumed instead of created and booted), a new
 * one is made behind it, the sweep passes over this pool's and destroys a
 * dead pool's (same worker id, another tag), and destroy() reaps the pool.
 * Create-to-running (start() to STARTED) cold against warm is printed. */
static void t_session_warm_pool(void **state)
{
    fenv *e = *state;
    sbx_fly_config c = fast_cfg();
    sbx_provider *p2 = NULL;
    char err[256] = "", inst[128];
    size_t n, ready;
    double cold_ms, warm_ms;
    frun r;

    assert_int_equal(sess_job(e, e->p, "echo cold", 30, &r), SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    cold_ms = (double)(r.started_us - r.t0_us) / 1000.0;
    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);

    e->p->ops->warm(e->p, 1);
    assert_true(warm_ready(e, 30000));
    assert_int_equal(sess_job(e, e->p, "echo warm; test -d /workspace && echo ws", 30, &r),
                     SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_WARM);
    assert_non_null(strstr(r.out, "warm\nws"));
    warm_ms = (double)(r.started_us - r.t0_us) / 1000.0;
    snprintf(inst, sizeof(inst), "%s", r.res.instance);
    print_message("    fly create-to-running: cold %.0f ms, warm %.0f ms (resume %d ms; "
                  "emulated boot 100-300 ms, resume 200-400 ms)\n",
                  cold_ms, warm_ms, r.res.resume_ms);
    /* the session keeps it: found again by its metadata */
    assert_int_equal(sess_job(e, e->p, "echo again", 30, &r), SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_string_equal(r.res.instance, inst);
    /* a replacement was made behind it */
    assert_true(warm_ready(e, 30000));

    /* our sweep passes over our pool (and the session's machine) */
    sweep_done = 0;
    assert_int_equal(sbx_fly_sweep(e->p, NULL, on_sweep, NULL), 0);
    assert_true(drive_until(e, &sweep_done, 30000));
    assert_int_equal(swept, 0);
    assert_int_equal(warm_machines("suspended", &ready), 1);
    /* a later process with this worker id: the pool before it is dead */
    assert_int_equal(sbx_fly_new(e->loop, &c, &p2, err, sizeof(err)), 0);
    sweep_done = 0;
    assert_int_equal(sbx_fly_sweep(p2, NULL, on_sweep, NULL), 0);
    assert_true(drive_until(e, &sweep_done, 30000));
    assert_int_equal(swept, 1);
    assert_string_equal(session_machine_state(), "started");
    p2->ops->destroy(p2);

    assert_int_equal(sess_op(e, SBX_SESSION_DESTROY), 0);

    /* destroy() reaps the pool: a new warm machine, made and then left */
    assert_int_equal(sbx_fly_new(e->loop, &c, &p2, err, sizeof(err)), 0);
    p2->ops->warm(p2, 1);
    assert_true(warm_ready(e, 30000));
    p2->ops->destroy(p2);
    n = warm_machines("suspended", &ready);
    for (int i = 0; i < 50 && n; i++) {
        usleep(100000);
        n = warm_machines("suspended", &ready);
    }
    assert_int_equal(n, 0);
}

int main(void)
{
    const struct CMUnitTest fly_tests[] = {
        cmocka_unit_test(t_bad_config_refused),
        cmocka_unit_test(t_config_from_env),
        cmocka_unit_test(t_wrong_token_is_error),
        cmocka_unit_test_setup_teardown(t_429_retried_after_retry_after, setup_two_attempts,
                                        teardown),
        cmocka_unit_test_setup_teardown(t_wait_429_and_408_loop, setup_short_waits, teardown),
        cmocka_unit_test_setup_teardown(t_503_create_retried_once, setup, teardown),
        cmocka_unit_test_setup_teardown(t_lost_create_reply_adopted, setup, teardown),
        cmocka_unit_test_setup_teardown(t_region_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(t_failed_machine_is_error, setup, teardown),
        cmocka_unit_test_setup_teardown(t_failed_while_running_is_error, setup_short_waits,
                                        teardown),
        cmocka_unit_test_setup_teardown(t_orphan_sweep, setup, teardown),
        cmocka_unit_test_setup_teardown(t_create_to_running_latency, setup, teardown),
        cmocka_unit_test_setup_teardown(t_create_408_adopted_after_settle, setup, teardown),
        cmocka_unit_test_setup_teardown(t_create_reply_dropped_adopted, setup, teardown),
        cmocka_unit_test_setup_teardown(t_capacity_in_body_any_code, setup, teardown),
        cmocka_unit_test_setup_teardown(t_create_pacer_at_fly_limits, setup_fly_limits,
                                        teardown),
        cmocka_unit_test_setup_teardown(t_launch_failed_is_error, setup, teardown),
        cmocka_unit_test_setup_teardown(t_migrated_is_error, setup_short_waits, teardown),
        cmocka_unit_test_setup_teardown(t_replaced_is_error, setup_short_waits, teardown),
        cmocka_unit_test_setup_teardown(t_wait_error_looks_at_machine, setup_short_waits,
                                        teardown),
        cmocka_unit_test_setup_teardown(t_new_machine_404_waited_out, setup, teardown),
        cmocka_unit_test_setup_teardown(t_sizes_checked_against_presets, setup, teardown),
        cmocka_unit_test_setup_teardown(t_exit_under_monitor_event, setup, teardown),
        cmocka_unit_test_setup_teardown(t_live_output_from_logs_api, setup, teardown),
        cmocka_unit_test_setup_teardown(t_session_five_jobs_share_workspace, setup_sessions,
                                        teardown),
        cmocka_unit_test_setup_teardown(t_session_pause_then_resume, setup_sessions, teardown),
        cmocka_unit_test_setup_teardown(t_session_destroy_then_new, setup_sessions, teardown),
        cmocka_unit_test_setup_teardown(t_session_found_by_second_provider, setup_sessions,
                                        teardown),
        cmocka_unit_test_setup_teardown(t_session_timeout_kills_job_keeps_machine,
                                        setup_sessions, teardown),
        cmocka_unit_test_setup_teardown(t_session_pause_big_machine_not_supported,
                                        setup_sessions, teardown),
        cmocka_unit_test_setup_teardown(t_session_abandoned_job_killed_by_next_owner,
                                        setup_sessions, teardown),
        cmocka_unit_test_setup_teardown(t_session_cancel, setup_sessions, teardown),
        cmocka_unit_test_setup_teardown(t_session_stale_token_busy, setup_sessions, teardown),
        cmocka_unit_test_setup_teardown(t_session_preview_through_proxy, setup_sessions,
                                        teardown),
        cmocka_unit_test_setup_teardown(t_session_warm_pool, setup_sessions, teardown),
    };
    sbx_conformance_opts opts;
    int failed = 0;

    signal(SIGPIPE, SIG_IGN);
    if (emu_start() != 0)
        return 1;
    memset(&opts, 0, sizeof(opts));
    opts.host_procs = 1;   /* the emulator's sandboxes run on this host */
    opts.output_lossy = 1; /* the emulator keeps the last 200,000 lines per app */
    opts.image = IMAGE;
    /* SBX_TEST_FILTER=t_session* runs the matching tests only (no conformance run) */
    if (getenv("SBX_TEST_FILTER"))
        cmocka_set_test_filter(getenv("SBX_TEST_FILTER"));
    else
        failed = sbx_conformance_run("fly_conformance", make_provider, &opts);
    failed += cmocka_run_group_tests_name("fly", fly_tests, NULL, NULL);
    emu_stop();
    return failed ? 1 : 0;
}
