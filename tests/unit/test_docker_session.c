/* test_docker_session.c — the docker provider's sessions (issue 13) against
 * a real engine: Podman's compatible service or dockerd (`make unit` runs
 * it under both).
 *
 * Needs SBX_TEST_DOCKER_SOCK and SBX_TEST_DOCKER_IMAGE, as test_docker does
 * (tests/services/podman/podman-service.sh, tests/services/dockerd/
 * dockerd-service.sh); without them it exits 77 (skipped).
 *
 * What provider.h's "Sessions" promises, seen through start() with
 * req.session and session_op(): five runs share one container and one
 * /workspace (files of later runs written over it); a background process
 * of one run is alive in the next (one that keeps the run's stdout open
 * does not hold the run up: its time is printed); PAUSE freezes the container and the next
 * start() says RESUMED with the time it took (printed, median of a few, per
 * engine) and the process survived; DESTROY removes the container and is
 * fine when there is none; the run after it is NEW; a new provider (a
 * worker restarted with the same id, its start-up sweep included) finds the
 * session's container and reuses it; a session's run that times out or is
 * canceled has its processes killed and the session goes on (REUSED), or,
 * when the kill cannot reach them, its container goes (NEW); either way no
 * build process is left on the host.
 *
 * Previews (issue 13, item 3): a dev server (the image's static
 * /bin/sbx-devserver, tests/devserver/devserver.c) started in the background
 * by one run is reachable through the worker's proxy (common/preview.h) at
 * the run's preview_url by a real HTTP client and over a WebSocket (a small
 * Python client, PREVIEW_CLIENT), 401 without the token, still after PAUSE
 * and a run that resumes it and after a restart of the provider; DESTROY
 * closes it. The warm pool (item 4): with warm(1) a session's first run
 * takes the paused warm container (WARM), another one is made, a job that
 * does not fit the defaults gets a new one; create-to-running (start() to
 * STARTED) cold and warm is printed per engine.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <curl/curl.h>

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>

#include "conformance.h"
#include "http.h"
#include "loop.h"
#include "preview.h"
#include "provider.h"
#include "provider_docker.h"

static const char *SOCK, *IMAGE, *ENGINE;
static char WORKER[64];
static sbx_loop *L;
static sbx_http *H;
static sbx_provider *P;
static sbx_docker_host HOSTS[1] = {{"a", NULL, 2}};
static char ENDPOINT[160];
static const char SLOT[] = "docker/a/0";
static char SESSION[40];
static int64_t TOKEN = 5000;

/* ---- the engine, asked directly ---- */

typedef struct reply {
    int done;
    long status;
    char body[65536];
} reply;

static void on_reply(void *arg, const sbx_http_res *res)
{
    reply *r = arg;
    r->done = 1;
    r->status = res->code == SBX_HTTP_OK ? res->status : -1;
    snprintf(r->body, sizeof(r->body), "%s", res->code == SBX_HTTP_OK ? res->body : res->error);
}

static void run_until(const int *flag, int want, int ms)
{
    uint64_t end = sbx_now_ms() + (uint64_t)ms;
    while (*flag < want && sbx_now_ms() < end)
        sbx_loop_once(L, 20);
}

static long engine(const char *method, const char *path, reply *r)
{
    char url[512];
    sbx_http_req q = {.method = method, .url = url, .unix_socket_path = SOCK, .timeout_ms = 30000};
    snprintf(url, sizeof(url), "http://d/v1.41%s", path);
    memset(r, 0, sizeof(*r));
    assert_int_equal(sbx_http_request(H, &q, on_reply, r, NULL), 0);
    run_until(&r->done, 1, 35000);
    assert_true(r->done);
    return r->status;
}

static long engine_json(const char *path, const char *body, reply *r)
{
    char url[512];
    const char *hdrs[] = {"Content-Type: application/json", NULL};
    sbx_http_req q = {.method = "POST", .url = url, .unix_socket_path = SOCK, .timeout_ms = 30000,
                      .headers = hdrs, .body = body, .body_len = strlen(body)};
    snprintf(url, sizeof(url), "http://d/v1.41%s", path);
    memset(r, 0, sizeof(*r));
    assert_int_equal(sbx_http_request(H, &q, on_reply, r, NULL), 0);
    run_until(&r->done, 1, 35000);
    assert_true(r->done);
    return r->status;
}

static char NAME[128]; /* the session's container on SLOT */

/* The session container's State.Status, or "" when there is none. */
static const char *container_status(char *out, size_t outlen)
{
    static reply r;
    char path[256];
    json_object *o, *v;
    out[0] = '\0';
    snprintf(path, sizeof(path), "/containers/%s/json", NAME);
    if (engine("GET", path, &r) != 200)
        return out;
    o = json_tokener_parse(r.body);
    if (o && json_object_object_get_ex(o, "State", &v) && json_object_object_get_ex(v, "Status", &v))
        snprintf(out, outlen, "%s", json_object_get_string(v));
    json_object_put(o);
    return out;
}

/* ---- runs ---- */

typedef struct tjob {
    sbx_job job;
    sbx_kv files[2];
    sbx_kv env[2];
    char *argv[4];
} tjob;

typedef struct rec {
    int started, finished;
    uint64_t t_started_ms;   /* when STARTED came */
    sbx_result res;
    sbx_run *run;
    char out[8192];
    size_t out_len;
    size_t total;        /* every byte the sink got */
} rec;

static void on_output(void *arg, sbx_stream stream, const char *data, size_t len)
{
    rec *r = arg;
    (void)stream;
    assert_int_equal(r->finished, 0);
    r->total += len;
    if (r->out_len + len < sizeof(r->out)) {
        memcpy(r->out + r->out_len, data, len);
        r->out_len += len;
        r->out[r->out_len] = '\0';
    }
}

static void on_run(void *arg, sbx_run_event ev, const sbx_result *res)
{
    rec *r = arg;
    if (ev == SBX_RUN_STARTED) {
        r->started++;
        r->t_started_ms = sbx_now_ms();
        return;
    }
    r->finished++;
    memcpy(&r->res, res, sizeof(*res));
}

static void job_init(tjob *t, const char *script, int timeout_s)
{
    static int n;
    memset(t, 0, sizeof(*t));
    snprintf(t->job.job_id, sizeof(t->job.job_id), "sj-%d-%d", (int)getpid(), ++n);
    snprintf(t->job.project_id, sizeof(t->job.project_id), "p-sess");
    t->job.script = (char *)script;
    t->job.timeout_s = timeout_s;
    t->job.files = t->files;
    t->job.env = t->env;
}

/* One run of the session on SLOT, to its end. */
static void session_run(tjob *t, rec *r, int ms)
{
    char err[256] = "";
    sbx_run_req req = {.job = &t->job, .slot = SLOT, .token = ++TOKEN, .attempt = 1,
                       .output = on_output, .session = SESSION};
    memset(r, 0, sizeof(*r));
    req.output_arg = r;
    assert_int_equal(P->ops->start(P, &req, on_run, r, &r->run, err, sizeof(err)), 0);
    assert_int_equal(r->finished, 0);
    run_until(&r->finished, 1, ms);
    assert_int_equal(r->finished, 1);
    assert_int_equal(r->started, 1);
    if (r->res.outcome == SBX_OUTCOME_ERROR || r->res.outcome == SBX_OUTCOME_JOB_ERROR)
        fprintf(stderr, "run: outcome %d exit %d error \"%s\" output \"%s\"\n", (int)r->res.outcome,
                r->res.exit_code, r->res.error, r->out);
}

static void run_script(const char *script, rec *r)
{
    tjob t;
    job_init(&t, script, 60);
    session_run(&t, r, 70000);
}

typedef struct opres {
    int done, rc;
    char why[256];
} opres;

static void on_op(void *arg, int rc, const char *why)
{
    opres *o = arg;
    o->done++;
    o->rc = rc;
    snprintf(o->why, sizeof(o->why), "%s", why ? why : "");
}

static int session_op(sbx_session_op op)
{
    opres o = {0};
    assert_int_equal(P->ops->session_op(P, op, SLOT, SESSION, ++TOKEN, on_op, &o), 0);
    assert_int_equal(o.done, 0); /* never from inside the call */
    run_until(&o.done, 1, 35000);
    assert_int_equal(o.done, 1);
    if (o.rc != 0)
        fprintf(stderr, "session_op %d: rc %d: %s\n", (int)op, o.rc, o.why);
    return o.rc;
}

/* ---- fixtures ---- */

static sbx_provider *new_provider(int sweep_at_start)
{
    sbx_docker_config cfg = {0};
    sbx_provider *p = NULL;
    char err[256];
    cfg.worker_id = WORKER;
    cfg.hosts = HOSTS;
    cfg.nhosts = 1;
    cfg.default_image = IMAGE;
    cfg.default_memory_mb = 256;
    cfg.request_timeout_ms = 30000;
    cfg.kill_grace_ms = 3000;
    cfg.no_start_sweep = !sweep_at_start;
    if (sbx_docker_new(L, &cfg, &p, err, sizeof(err)) < 0)
        fail_msg("sbx_docker_new: %s", err);
    return p;
}

static int setup(void **state)
{
    static int n;
    (void)state;
    snprintf(SESSION, sizeof(SESSION), "s-%08x%024d", (unsigned)getpid(), ++n);
    snprintf(NAME, sizeof(NAME), "sbx-%s-a-0", SESSION);
    if (sbx_loop_new(&L) < 0 || sbx_http_new(L, &H) < 0)
        return -1;
    P = new_provider(0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (P) {
        assert_int_equal(sbx_docker_active(P), 0);
        assert_int_equal(session_op(SBX_SESSION_DESTROY), 0);
        P->ops->destroy(P);
        P = NULL;
    }
    sbx_http_free(H);
    sbx_loop_free(L);
    return 0;
}

/* Processes with this exact command line on the host, once those that
 * are on their way out (SIGKILLed with their group, the run already
 * reported) had a moment to go. */
static int procs_after_kill(const char *marker)
{
    uint64_t end = sbx_now_ms() + 3000;
    int n;
    while ((n = sbx_conformance_procs_with(marker, 1)) > 0 && sbx_now_ms() < end)
        usleep(20000);
    return n;
}

/* ---- scenarios ---- */

static void test_five_runs_share_workspace(void **state)
{
    char first[128], st[32];
    rec r;
    tjob t;
    (void)state;

    job_init(&t, "echo one > w1 && cat in.txt && pwd", 60);
    t.files[0] = (sbx_kv){"in.txt", "hello"};
    t.job.nfiles = 1;
    session_run(&t, &r, 70000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_non_null(strstr(r.out, "hello"));
    assert_non_null(strstr(r.out, "/workspace"));
    snprintf(first, sizeof(first), "%s", r.res.instance);
    assert_true(strlen(first) >= 12);
    assert_string_equal(container_status(st, sizeof(st)), "running"); /* kept after FINISHED */

    for (int i = 2; i <= 4; i++) {
        char script[128];
        snprintf(script, sizeof(script), "echo n%d >> w1 && cat in.txt", i);
        job_init(&t, script, 60);
        if (i == 3) { /* a later run's files go over the workspace */
            t.files[0] = (sbx_kv){"in.txt", "hello again"};
            t.job.nfiles = 1;
        }
        session_run(&t, &r, 70000);
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
        assert_string_equal(r.res.instance, first);
        assert_non_null(strstr(r.out, i < 3 ? "hello" : "hello again"));
    }
    run_script("cat w1; exit 3", &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_FAILED);
    assert_int_equal(r.res.exit_code, 3);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_string_equal(r.out, "one\nn2\nn3\nn4\n");
    /* Each run has its own job's command and environment. */
    job_init(&t, NULL, 60);
    t.argv[0] = "/bin/sh";
    t.argv[1] = "-c";
    t.argv[2] = "echo \"$FOO $HOME\"; cat w1 | head -1";
    t.job.argv = t.argv;
    t.job.argc = 3;
    t.env[0] = (sbx_kv){"FOO", "bar"};
    t.job.nenv = 1;
    session_run(&t, &r, 70000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_string_equal(r.out, "bar /workspace\none\n");
    run_script("echo \"[$FOO]\"", &r);
    assert_string_equal(r.out, "[]\n");
    /* A bigger output, every byte once, live from the exec's stream. */
    {
        size_t want = 0;
        char num[16];
        for (int i = 1; i <= 200000; i++)
            want += (size_t)snprintf(num, sizeof(num), "%d\n", i);
        run_script("seq 1 200000", &r);
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        assert_int_equal(r.total, want);
        assert_non_null(strstr(r.res.log_tail, "199999\n200000\n"));
    }
    /* stderr comes too, apart */
    run_script("echo to-err >&2", &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(r.res.log_tail, "to-err"));
}

static void test_background_process_pause_resume(void **state)
{
    char st[32];
    int ms[5];
    rec r;
    (void)state;

    /* The marker sleep outlives the run. */
    run_script("sleep 1234567 >/dev/null 2>&1 & echo $! > bg.pid; echo started", &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    run_script("kill -0 $(cat bg.pid) && echo alive", &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_non_null(strstr(r.out, "alive"));
    assert_int_equal(sbx_conformance_procs_with("sleep 1234567", 1), 1);
    /* One that keeps the build's stdout (a dev server started with `&`)
     * does not hold the run up. */
    {
        tjob t;
        uint64_t t0 = sbx_now_ms();
        job_init(&t, "sleep 1234575 & echo bg2", 60);
        session_run(&t, &r, 15000);
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        assert_string_equal(r.out, "bg2\n");
        printf("docker session run with a background process on stdout (%s): %" PRIu64 " ms\n", ENGINE,
               sbx_now_ms() - t0);
        assert_int_equal(sbx_conformance_procs_with("sleep 1234575", 1), 1);
    }

    for (int i = 0; i < 5; i++) {
        assert_int_equal(session_op(SBX_SESSION_PAUSE), 0);
        assert_string_equal(container_status(st, sizeof(st)), "paused");
        if (i == 0) /* twice is fine */
            assert_int_equal(session_op(SBX_SESSION_PAUSE), 0);
        run_script("kill -0 $(cat bg.pid) && echo still-alive", &r);
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        assert_int_equal(r.res.sandbox, SBX_SANDBOX_RESUMED);
        assert_non_null(strstr(r.out, "still-alive"));
        assert_true(r.res.resume_ms >= 0);
        ms[i] = r.res.resume_ms;
    }
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            if (ms[j] < ms[i]) {
                int x = ms[i];
                ms[i] = ms[j];
                ms[j] = x;
            }
    printf("docker session resume_ms (%s): median %d min %d max %d of 5\n", ENGINE, ms[2], ms[0], ms[4]);
    fflush(stdout);

    /* What the sweeper does to an idle session: pause, later destroy. */
    assert_int_equal(session_op(SBX_SESSION_PAUSE), 0);
    assert_string_equal(container_status(st, sizeof(st)), "paused");
    assert_int_equal(session_op(SBX_SESSION_DESTROY), 0);
    assert_string_equal(container_status(st, sizeof(st)), "");
    assert_int_equal(procs_after_kill("sleep 1234567"), 0);
    assert_int_equal(procs_after_kill("sleep 1234575"), 0);
    /* Nothing there: still success, for both. */
    assert_int_equal(session_op(SBX_SESSION_DESTROY), 0);
    assert_int_equal(session_op(SBX_SESSION_PAUSE), 0);
    run_script("ls; test -f bg.pid || echo empty", &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_string_equal(r.out, "empty\n");
}

static void on_swept(void *arg, int removed, int failed)
{
    int *d = arg;
    d[0]++;
    d[1] = removed;
    d[2] = failed;
}

/* A worker killed and started again (same worker id): its start-up sweep
 * leaves the session's container, and the session goes on in it. */
static void test_new_provider_finds_session(void **state)
{
    int swept[3] = {0};
    char first[128];
    rec r;
    (void)state;

    run_script("echo kept > k", &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    snprintf(first, sizeof(first), "%s", r.res.instance);
    /* The worker goes while a run is in its container: the build keeps
     * running there until the session's next run starts, which kills it
     * (it must not run beside the next one). */
    {
        tjob t;
        char err[256] = "";
        sbx_run_req req = {.job = &t.job, .slot = SLOT, .token = ++TOKEN, .attempt = 1,
                           .session = SESSION};
        job_init(&t, "sleep 1234573 >/dev/null 2>&1 & echo started; sleep 1234574", 60);
        memset(&r, 0, sizeof(r));
        assert_int_equal(P->ops->start(P, &req, on_run, &r, &r.run, err, sizeof(err)), 0);
        for (uint64_t end = sbx_now_ms() + 20000;
             sbx_conformance_procs_with("sleep 1234574", 1) == 0 && sbx_now_ms() < end;)
            sbx_loop_once(L, 20);
        assert_int_equal(sbx_conformance_procs_with("sleep 1234574", 1), 1);
    }
    P->ops->destroy(P);
    assert_int_equal(sbx_conformance_procs_with("sleep 1234574", 1), 1);
    P = new_provider(1);
    /* Its start-up sweep runs first; ours follows once that is done. */
    for (uint64_t end = sbx_now_ms() + 35000; sbx_docker_sweep(P, on_swept, swept) == -EBUSY &&
                                              sbx_now_ms() < end;)
        sbx_loop_once(L, 20);
    run_until(&swept[0], 1, 35000);
    assert_int_equal(swept[1], 0);
    run_script("cat k", &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_string_equal(r.res.instance, first);
    assert_string_equal(r.out, "kept\n");
    assert_int_equal(procs_after_kill("sleep 1234574"), 0);
    assert_int_equal(procs_after_kill("sleep 1234573"), 0);
    /* A sweep on demand leaves it too. */
    memset(swept, 0, sizeof(swept));
    assert_int_equal(sbx_docker_sweep(P, on_swept, swept), 0);
    run_until(&swept[0], 1, 35000);
    assert_int_equal(swept[0], 1);
    assert_int_equal(swept[1], 0);
    run_script("cat k", &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
}

/* A timeout kills the run's processes (its process group, background
 * ones included) and nothing else: the container, its workspace and a
 * process an earlier run left stay, and the next run is REUSED. */
static void test_timeout_kills_build(void **state)
{
    char st[32];
    rec r;
    tjob t;
    (void)state;

    run_script("echo before > b; sleep 1234569 >/dev/null 2>&1 &", &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    job_init(&t, "sleep 1234570 >/dev/null 2>&1 & echo started; sleep 1234568", 2);
    session_run(&t, &r, 30000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_TIMED_OUT);
    assert_non_null(strstr(r.out, "started"));
    assert_int_equal(procs_after_kill("sleep 1234568"), 0);
    assert_int_equal(procs_after_kill("sleep 1234570"), 0);
    assert_int_equal(sbx_conformance_procs_with("sleep 1234569", 1), 1);
    assert_string_equal(container_status(st, sizeof(st)), "running");
    run_script("cat b", &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_string_equal(r.out, "before\n");

    /* Cancel: the same. */
    job_init(&t, "echo started; sleep 1234571", 60);
    {
        char err[256] = "";
        sbx_run_req req = {.job = &t.job, .slot = SLOT, .token = ++TOKEN, .attempt = 1,
                           .output = on_output, .session = SESSION};
        memset(&r, 0, sizeof(r));
        req.output_arg = &r;
        assert_int_equal(P->ops->start(P, &req, on_run, &r, &r.run, err, sizeof(err)), 0);
        for (uint64_t end = sbx_now_ms() + 20000;
             sbx_conformance_procs_with("sleep 1234571", 1) == 0 && sbx_now_ms() < end;)
            sbx_loop_once(L, 20);
        P->ops->cancel(P, r.run);
        run_until(&r.finished, 1, 30000);
        assert_int_equal(r.finished, 1);
        assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);
    }
    assert_int_equal(procs_after_kill("sleep 1234571"), 0);
    run_script("cat b", &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
}

/* A build that hides from the kill (here: it overwrites the file that
 * names its process group) is stopped with its container: the next run is
 * NEW, and nothing is left running. */
static void test_timeout_unkillable_removes_container(void **state)
{
    char st[32];
    rec r;
    tjob t;
    (void)state;

    run_script("echo before > b", &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    job_init(&t, "echo 999999 > /tmp/.sbx-run; echo started; sleep 1234572", 2);
    session_run(&t, &r, 40000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_TIMED_OUT);
    assert_int_equal(procs_after_kill("sleep 1234572"), 0);
    assert_string_equal(container_status(st, sizeof(st)), "");
    run_script("test -f b || echo fresh", &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_string_equal(r.out, "fresh\n");
}

/* A session's container that stopped (its workspace, a tmpfs, went with
 * it) is replaced: NEW. */
static void test_stopped_container_replaced(void **state)
{
    static reply rp;
    char path[256];
    rec r;
    (void)state;

    run_script("echo x > x", &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    snprintf(path, sizeof(path), "/containers/%s/kill?signal=KILL", NAME);
    assert_int_equal(engine("POST", path, &rp), 204);
    run_script("test -f x || echo fresh", &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_string_equal(r.out, "fresh\n");
}

/* ---- previews ---- */

/* The browser: argv[1] the preview URL, argv[2] what the page must hold.
 * No token: 401; the URL's token: 302 with the cookie; with the cookie the
 * dev server's page, then a WebSocket echo. Exit 0 when all held. */
static const char PREVIEW_CLIENT[] =
    "import base64,hashlib,os,socket,sys,urllib.parse\n"
    "url,want=sys.argv[1],sys.argv[2]\n"
    "u=urllib.parse.urlsplit(url)\n"
    "def req(path,hdr=''):\n"
    "    s=socket.create_connection((u.hostname,u.port),timeout=10)\n"
    "    s.sendall(('GET %s HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n%s\\r\\n'%(path,hdr)).encode())\n"
    "    d=b''\n"
    "    while True:\n"
    "        c=s.recv(65536)\n"
    "        if not c: break\n"
    "        d+=c\n"
    "    h,_,b=d.partition(b'\\r\\n\\r\\n')\n"
    "    h=h.decode('latin-1').split('\\r\\n')\n"
    "    return int(h[0].split(' ')[1]),{k.lower():v.strip() for k,_,v in (l.partition(':') for l in h[1:])},b.decode('latin-1')\n"
    "st,h,b=req('/')\n"
    "assert st==401,('no token',st)\n"
    "st,h,b=req('/?'+u.query)\n"
    "assert st==302,('token',st,h)\n"
    "ck=h['set-cookie'].split(';')[0]\n"
    "st,h,b=req('/','Cookie: %s\\r\\n'%ck)\n"
    "assert st==200 and want in b,('page',st,b)\n"
    "s=socket.create_connection((u.hostname,u.port),timeout=10)\n"
    "k=base64.b64encode(os.urandom(16)).decode()\n"
    "s.sendall(('GET /ws HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n'\n"
    "  'Sec-WebSocket-Key: %s\\r\\nSec-WebSocket-Version: 13\\r\\nCookie: %s\\r\\n\\r\\n'%(k,ck)).encode())\n"
    "d=b''\n"
    "while b'\\r\\n\\r\\n' not in d: d+=s.recv(4096)\n"
    "h,_,rest=d.partition(b'\\r\\n\\r\\n')\n"
    "assert h.startswith(b'HTTP/1.1 101'),h\n"
    "m=os.urandom(4);p=b'hot-reload'\n"
    "s.sendall(bytes([0x81,0x80|len(p)])+m+bytes(x^m[i%4] for i,x in enumerate(p)))\n"
    "while len(rest)<2 or len(rest)<2+rest[1]: rest+=s.recv(4096)\n"
    "assert rest[2:2+rest[1]]==b'echo:hot-reload',rest\n"
    "print('preview client: all checks held')\n";

/* Runs PREVIEW_CLIENT against url while the loop (the proxy) turns; its
 * exit status. */
static int preview_client(const char *url, const char *want)
{
    int status = -1;
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        execlp("python3", "python3", "-c", PREVIEW_CLIENT, url, want, (char *)NULL);
        _exit(127);
    }
    for (uint64_t end = sbx_now_ms() + 30000; sbx_now_ms() < end;) {
        if (waitpid(child, &status, WNOHANG) == child)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        sbx_loop_once(L, 10);
    }
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    fail_msg("preview client did not finish in 30 s");
    return -1;
}

static int url_connects(const char *url)
{
    const char *c = strrchr(url, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(c + 1)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
    ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

#define DEV_PORT 8000
#define DEV_START "echo hello-preview > index.html; sbx-devserver 8000 . > dev.log 2>&1 & " \
                  "for i in $(seq 50); do grep -q listening dev.log && break; sleep 0.1; done; cat dev.log"

static void test_preview_through_proxy(void **state)
{
    sbx_previews *ps;
    sbx_previews_cfg cfg = {0};
    int base = 30000 + (int)(getpid() % 1000) * 10;
    char err[256] = "", url[SBX_PREVIEW_URL_MAX];
    rec r;
    tjob t;
    (void)state;

    cfg.loop = L;
    cfg.bind_host = "127.0.0.1";
    cfg.port_min = base;
    cfg.port_max = base + 9;
    cfg.secret = "test-docker-session";
    assert_int_equal(sbx_previews_new(&cfg, &ps, err, sizeof(err)), 0);
    P->previews = ps;

    job_init(&t, DEV_START, 60);
    t.job.session_preview_port = DEV_PORT;
    session_run(&t, &r, 70000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_non_null(strstr(r.out, "listening"));
    assert_non_null(strstr(r.res.preview_url, "?sbx_token="));
    snprintf(url, sizeof(url), "%s", r.res.preview_url);
    printf("docker preview (%s): %s\n", ENGINE, url);
    assert_int_equal(preview_client(url, "hello-preview"), 0);

    /* Paused, then a run resumes it: the same URL, the same dev server. */
    assert_int_equal(session_op(SBX_SESSION_PAUSE), 0);
    job_init(&t, "echo again", 60);
    t.job.session_preview_port = DEV_PORT;
    session_run(&t, &r, 70000);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_RESUMED);
    assert_string_equal(r.res.preview_url, url);
    assert_int_equal(preview_client(url, "hello-preview"), 0);

    /* A restarted worker opens it again from what inspect says. */
    P->ops->destroy(P);
    P = new_provider(1);
    P->previews = ps;
    session_run(&t, &r, 70000);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_non_null(strstr(r.res.preview_url, "?sbx_token="));
    snprintf(url, sizeof(url), "%s", r.res.preview_url);
    assert_int_equal(preview_client(url, "hello-preview"), 0);

    /* DESTROY closes it. */
    assert_int_equal(session_op(SBX_SESSION_DESTROY), 0);
    sbx_loop_once(L, 0);
    assert_false(url_connects(url));
    P->ops->destroy(P);
    P = new_provider(0);
    sbx_previews_free(ps);
}

/* ---- the warm pool ---- */

/* This worker's warm containers not taken yet, and of those, paused. */
static int warm_count(int *paused)
{
    static reply rp;
    char filters[256], path[512], *esc;
    json_object *arr;
    int n = 0;
    snprintf(filters, sizeof(filters), "{\"label\":[\"sbx.warm=1\",\"sbx.worker=%s\"]}", WORKER);
    esc = curl_escape(filters, 0);
    snprintf(path, sizeof(path), "/containers/json?all=1&filters=%s", esc);
    curl_free(esc);
    assert_int_equal(engine("GET", path, &rp), 200);
    arr = json_tokener_parse(rp.body);
    *paused = 0;
    for (size_t i = 0; arr && i < json_object_array_length(arr); i++) {
        json_object *c = json_object_array_get_idx(arr, i), *v;
        if (!json_object_object_get_ex(c, "Names", &v) ||
            strncmp(json_object_get_string(json_object_array_get_idx(v, 0)), "/sbx-warm-", 10) != 0)
            continue;
        n++;
        if (json_object_object_get_ex(c, "State", &v) && strcmp(json_object_get_string(v), "paused") == 0)
            (*paused)++;
    }
    json_object_put(arr);
    return n;
}

static void wait_warm_paused(int want)
{
    int paused = 0;
    for (uint64_t end = sbx_now_ms() + 30000; sbx_now_ms() < end;) {
        warm_count(&paused);
        if (paused >= want)
            break;
        for (int i = 0; i < 10; i++)
            sbx_loop_once(L, 10);
    }
    assert_true(paused >= want);
}

/* start() to STARTED of a session's first run; the run's sandbox use. */
static int first_run_ms(rec *r, const char *script, int memory_mb)
{
    tjob t;
    uint64_t t0 = sbx_now_ms();
    job_init(&t, script, 60);
    t.job.memory_mb = memory_mb;
    session_run(&t, r, 70000);
    assert_int_equal(r->res.outcome, SBX_OUTCOME_SUCCEEDED);
    return (int)(r->t_started_ms - t0);
}

static void test_warm_pool(void **state)
{
    int cold[3], warm[3], paused, swept[3] = {0};
    rec r;
    (void)state;

    /* Cold: a new container per session (each destroyed after). */
    for (int i = 0; i < 3; i++) {
        cold[i] = first_run_ms(&r, "echo cold", 0);
        assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
        assert_int_equal(session_op(SBX_SESSION_DESTROY), 0);
    }
    P->ops->warm(P, 1);
    for (int i = 0; i < 3; i++) {
        wait_warm_paused(1);
        warm[i] = first_run_ms(&r, "echo warm > w; cat w; id -u", 0);
        assert_int_equal(r.res.sandbox, SBX_SANDBOX_WARM);
        assert_string_equal(r.out, "warm\n65534\n");
        /* The session's own from now on: found by its name, REUSED. */
        run_script("cat w", &r);
        assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
        assert_string_equal(r.out, "warm\n");
        if (i == 0) {
            /* Paused and resumed like any session's. */
            assert_int_equal(session_op(SBX_SESSION_PAUSE), 0);
            run_script("cat w", &r);
            assert_int_equal(r.res.sandbox, SBX_SANDBOX_RESUMED);
        }
        assert_int_equal(session_op(SBX_SESSION_DESTROY), 0);
    }
    /* Another one is made in the background. */
    wait_warm_paused(1);
    assert_int_equal(warm_count(&paused), 1);
    /* A job off the defaults gets a container of its own. */
    first_run_ms(&r, "echo own", 128);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_int_equal(warm_count(&paused), 1);
    assert_int_equal(session_op(SBX_SESSION_DESTROY), 0);
    /* The sweeper leaves the pool of a live provider and a session that
     * took a warm container; it removes the warm one a dead predecessor
     * with this worker id left (made here as it would have). */
    {
        static reply rp;
        char body[512], st[32];
        snprintf(body, sizeof(body),
                 "{\"Image\":\"%s\",\"Cmd\":[\"/bin/sh\",\"-c\",\"sleep 1234576\"],"
                 "\"Labels\":{\"sbx.warm\":\"1\",\"sbx.worker\":\"%s\",\"sbx.pool\":\"docker\"},"
                 "\"HostConfig\":{\"NetworkMode\":\"none\"}}", IMAGE, WORKER);
        assert_int_equal(engine_json("/containers/create?name=sbx-warm-a-dead0000-1", body, &rp), 201);
        first_run_ms(&r, "echo taken", 0);
        assert_int_equal(r.res.sandbox, SBX_SANDBOX_WARM);
        wait_warm_paused(1);
        assert_int_equal(warm_count(&paused), 2); /* ours and the dead one's */
        assert_int_equal(sbx_docker_sweep(P, on_swept, swept), 0);
        run_until(&swept[0], 1, 35000);
        assert_int_equal(swept[1], 1);
        assert_int_equal(warm_count(&paused), 1);
        assert_int_equal(paused, 1);
        assert_string_equal(container_status(st, sizeof(st)), "running");
        assert_int_equal(session_op(SBX_SESSION_DESTROY), 0);
    }
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++) {
            if (cold[j] < cold[i]) {
                int x = cold[i];
                cold[i] = cold[j];
                cold[j] = x;
            }
            if (warm[j] < warm[i]) {
                int x = warm[i];
                warm[i] = warm[j];
                warm[j] = x;
            }
        }
    printf("docker create-to-running (%s): cold median %d ms (min %d max %d), warm median %d ms "
           "(min %d max %d), of 3\n", ENGINE, cold[1], cold[0], cold[2], warm[1], warm[0], warm[2]);
    fflush(stdout);
    /* The pool dies with the provider. */
    P->ops->destroy(P);
    P = new_provider(0);
    assert_int_equal(warm_count(&paused), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_five_runs_share_workspace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_background_process_pause_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_provider_finds_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_kills_build, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_unkillable_removes_container, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stopped_container_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_preview_through_proxy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_warm_pool, setup, teardown),
    };
    SOCK = getenv("SBX_TEST_DOCKER_SOCK");
    IMAGE = getenv("SBX_TEST_DOCKER_IMAGE");
    ENGINE = getenv("SBX_TEST_DOCKER_ENGINE");
    if (!SOCK || !*SOCK || !IMAGE || !*IMAGE) {
        fprintf(stderr, "test_docker_session: SBX_TEST_DOCKER_SOCK/IMAGE not set "
                        "(run under tests/services/podman/podman-service.sh); skipped\n");
        return 77;
    }
    if (!ENGINE || !*ENGINE)
        ENGINE = "podman";
    snprintf(WORKER, sizeof(WORKER), "test-sess-%d", (int)getpid());
    snprintf(ENDPOINT, sizeof(ENDPOINT), "unix://%s", SOCK);
    HOSTS[0].endpoint = ENDPOINT;
    if (getenv("SBX_TEST_FILTER")) /* one scenario, e.g. SBX_TEST_FILTER=test_warm_pool */
        cmocka_set_test_filter(getenv("SBX_TEST_FILTER"));
    return cmocka_run_group_tests_name("docker sessions", tests, NULL, NULL);
}
