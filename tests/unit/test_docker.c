/* test_docker.c — the docker provider against a real engine: Podman's
 * compatible service or dockerd (`make unit` runs it against both).
 *
 * Needs SBX_TEST_DOCKER_SOCK (the engine's unix socket) and
 * SBX_TEST_DOCKER_IMAGE (an image with /bin/sh and coreutils);
 * tests/services/podman/podman-service.sh and
 * tests/services/dockerd/dockerd-service.sh provide both. Without them the
 * program says why and exits 77 (skipped). What no real engine here can be
 * made to do (an old API version, an error inside the wait's 200 body, a
 * pull refused inside its 200 stream) is played by a scripted fake engine
 * on a socket of its own (fake_engine below).
 *
 * First the scenarios every provider passes (conformance.c), then what
 * only this provider promises: containers deleted once FINISHED, job files
 * with their modes and owner, the sandbox settings as the engine reports
 * them and as the build sees them, labels, slots per host, the orphan sweep
 * (on demand and at start), logs of commands that exit at once, engine
 * errors, destroy, and the latency from create to running (median of 20).
 *
 * Container processes run on this host, so the conformance scenarios also
 * check in /proc that nothing is left after timeout, cancel and destroy.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conformance.h"
#include "docker_logs.h"
#include "http.h"
#include "loop.h"
#include "provider.h"
#include "provider_docker.h"

static const char *SOCK, *IMAGE;
static char WORKER[64];
static sbx_loop *L;
static sbx_http *H;          /* the test's own line to the engine */
static sbx_provider *P;

/* Two "hosts" on the one service: enough to see slots routed per host. */
static sbx_docker_host HOSTS[2] = {{"a", NULL, 3}, {"b", NULL, 2}};
static char ENDPOINT[160];

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

static long engine(const char *method, const char *path, const char *body, reply *r)
{
    char url[512];
    const char *hdrs[] = {"Content-Type: application/json", NULL};
    sbx_http_req q = {.method = method, .url = url, .unix_socket_path = SOCK, .headers = hdrs,
                      .body = body, .body_len = body ? strlen(body) : 0, .timeout_ms = 30000};
    snprintf(url, sizeof(url), "http://d/v1.41%s", path);
    memset(r, 0, sizeof(*r));
    assert_int_equal(sbx_http_request(H, &q, on_reply, r, NULL), 0);
    run_until(&r->done, 1, 35000);
    assert_true(r->done);
    return r->status;
}

static long inspect(const char *id, json_object **out)
{
    static reply r;
    char path[256];
    long st;
    snprintf(path, sizeof(path), "/containers/%s/json", id);
    st = engine("GET", path, NULL, &r);
    *out = st == 200 ? json_tokener_parse(r.body) : NULL;
    return st;
}

/* json_object at a "/"-separated path, or NULL. */
static json_object *jget(json_object *o, const char *path)
{
    char buf[128], *save = NULL;
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *k = strtok_r(buf, "/", &save); k && o; k = strtok_r(NULL, "/", &save))
        if (!json_object_object_get_ex(o, k, &o))
            return NULL;
    return o;
}

/* Creates and starts a container outside the provider, with given labels. */
static void make_container(const char *worker, const char *slot, const char *token, char id[65])
{
    static reply r;
    char body[1024], path[128];
    json_object *o, *v;
    snprintf(body, sizeof(body),
             "{\"Image\":\"%s\",\"Cmd\":[\"/bin/sh\",\"-c\",\"sleep 60\"],"
             "\"Labels\":{\"sbx.worker\":\"%s\",\"sbx.pool\":\"docker\",\"sbx.slot\":\"%s\","
             "\"sbx.token\":\"%s\",\"sbx.job\":\"orphan\"},\"HostConfig\":{\"NetworkMode\":\"none\"}}",
             IMAGE, worker, slot, token);
    assert_int_equal(engine("POST", "/containers/create", body, &r), 201);
    o = json_tokener_parse(r.body);
    assert_non_null(o);
    assert_true(json_object_object_get_ex(o, "Id", &v));
    snprintf(id, 65, "%s", json_object_get_string(v));
    json_object_put(o);
    snprintf(path, sizeof(path), "/containers/%s/start", id);
    assert_int_equal(engine("POST", path, NULL, &r), 204);
}

static void remove_container(const char *id)
{
    static reply r;
    char path[128];
    snprintf(path, sizeof(path), "/containers/%s?force=1", id);
    engine("DELETE", path, NULL, &r);
}

/* ---- jobs and runs ---- */

typedef struct tjob {
    sbx_job job;
    char *argv[8];
    sbx_kv env[4];
    sbx_kv files[4];
} tjob;

static void job_init(tjob *t, const char *script)
{
    static int n;
    memset(t, 0, sizeof(*t));
    snprintf(t->job.job_id, sizeof(t->job.job_id), "j-%d-%d", (int)getpid(), ++n);
    snprintf(t->job.project_id, sizeof(t->job.project_id), "p-%d", n);
    t->job.script = (char *)script;
    t->job.timeout_s = 60;
    t->job.env = t->env;
    t->job.files = t->files;
}

/* What the live sink got, per stream, and when it first got something. */
typedef struct outbuf {
    char *p[3];
    size_t len[3], cap[3];
    size_t chunks;
    uint64_t t_first;
    int after_finished;  /* calls after FINISHED: provider.h forbids them */
} outbuf;

typedef struct rec {
    int started, finished;
    uint64_t t_start, t_started, t_finished;
    char instance[128];
    sbx_result res;
    sbx_run *run;
    int cancel_on_start;
    outbuf *out;         /* NULL: no live sink */
} rec;

static void on_output(void *arg, sbx_stream stream, const char *data, size_t len)
{
    rec *r = arg;
    outbuf *o = r->out;
    assert_true(stream == SBX_STREAM_STDOUT || stream == SBX_STREAM_STDERR);
    assert_true(len > 0);
    if (r->finished)
        o->after_finished++;
    if (!o->chunks++)
        o->t_first = sbx_now_us();
    if (o->len[stream] + len + 1 > o->cap[stream]) {
        /* Doubling: a build of 10^5 lines calls this 10^5 times. */
        size_t cap = o->cap[stream] ? o->cap[stream] : 4096;
        while (cap < o->len[stream] + len + 1)
            cap *= 2;
        o->p[stream] = realloc(o->p[stream], cap);
        assert_non_null(o->p[stream]);
        o->cap[stream] = cap;
    }
    memcpy(o->p[stream] + o->len[stream], data, len);
    o->len[stream] += len;
    o->p[stream][o->len[stream]] = '\0';
}

static void outbuf_free(outbuf *o)
{
    free(o->p[1]);
    free(o->p[2]);
    memset(o, 0, sizeof(*o));
}

static void on_run(void *arg, sbx_run_event ev, const sbx_result *res)
{
    rec *r = arg;
    if (ev == SBX_RUN_STARTED) {
        assert_int_equal(r->finished, 0);
        r->started++;
        r->t_started = sbx_now_us();
        snprintf(r->instance, sizeof(r->instance), "%s", res->instance);
        if (r->cancel_on_start)
            P->ops->cancel(P, r->run);
        return;
    }
    r->finished++;
    r->t_finished = sbx_now_us();
    memcpy(&r->res, res, sizeof(*res));
}

static int start_on(const char *slot, tjob *t, rec *r)
{
    char err[256] = "";
    sbx_run_req req = {.job = &t->job, .slot = slot, .token = 1000 + (int64_t)(sbx_now_us() % 100000),
                       .attempt = 1};
    outbuf *out = r->out;
    int rc;
    memset(r, 0, sizeof(*r));
    r->out = out;
    if (out) {
        req.output = on_output;
        req.output_arg = r;
    }
    r->t_start = sbx_now_us();
    rc = P->ops->start(P, &req, on_run, r, &r->run, err, sizeof(err));
    if (rc == 0)
        assert_int_equal(r->finished, 0); /* never from inside start() */
    else
        assert_true(err[0] != '\0');
    return rc;
}

static void run_job(const char *slot, tjob *t, rec *r, int ms)
{
    assert_int_equal(start_on(slot, t, r), 0);
    run_until(&r->finished, 1, ms);
    assert_int_equal(r->finished, 1);
}

static int tail_has(const rec *r, const char *s) { return strstr(r->res.log_tail, s) != NULL; }

static void assert_gone(const char *id)
{
    json_object *o;
    assert_int_equal(inspect(id, &o), 404);
}

/* ---- fixtures ---- */

static int provider_up(void **state)
{
    sbx_docker_config cfg = {0};
    char err[256];
    (void)state;
    cfg.worker_id = WORKER;
    cfg.hosts = HOSTS;
    cfg.nhosts = 2;
    cfg.default_image = IMAGE;
    cfg.default_memory_mb = 256;
    cfg.request_timeout_ms = 30000;
    cfg.kill_grace_ms = 10000;
    cfg.no_start_sweep = 1;
    if (sbx_loop_new(&L) < 0 || sbx_http_new(L, &H) < 0)
        return -1;
    if (sbx_docker_new(L, &cfg, &P, err, sizeof(err)) < 0) {
        fprintf(stderr, "sbx_docker_new: %s\n", err);
        return -1;
    }
    return 0;
}

static int provider_down(void **state)
{
    (void)state;
    if (P) {
        assert_int_equal(sbx_docker_active(P), 0);
        P->ops->destroy(P);
        P = NULL;
    }
    sbx_http_free(H);
    sbx_loop_free(L);
    return 0;
}

/* ---- scenarios every provider passes ---- */

static void test_success(void **state)
{
    tjob t;
    rec r = {0};
    (void)state;
    job_init(&t, "echo hello; echo oops >&2; exit 0");
    run_job("docker/a/0", &t, &r, 30000);
    assert_int_equal(r.started, 1);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.exit_code, 0);
    assert_string_equal(r.res.error, "");
    assert_true(tail_has(&r, "hello\n"));
    assert_true(tail_has(&r, "oops\n"));
    assert_int_equal(strlen(r.res.instance), 64);
    assert_string_equal(r.res.instance, r.instance);
    assert_gone(r.res.instance); /* deleted before FINISHED */
}

static void test_argv_env_and_files(void **state)
{
    tjob t;
    rec r = {0};
    (void)state;
    job_init(&t, NULL);
    t.argv[0] = "/bin/sh";
    t.argv[1] = "-c";
    t.argv[2] = "echo \"$GREETING\" \"$HOME\" \"$0\"; cat in.txt; ./sub/dir/run.sh; ls -ld /tmp";
    t.argv[3] = "arg0";
    t.job.argv = t.argv;
    t.job.argc = 4;
    t.env[0] = (sbx_kv){"GREETING", "hi there"};
    t.job.nenv = 1;
    t.files[0] = (sbx_kv){"in.txt", "from a file\n"};
    t.files[1] = (sbx_kv){"sub/dir/run.sh", "#!/bin/sh\necho script ran as $(id -u)\n"};
    t.job.nfiles = 2;
    run_job("docker/a/1", &t, &r, 30000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_true(tail_has(&r, "hi there /workspace arg0\n"));
    assert_true(tail_has(&r, "from a file\n"));
    assert_true(tail_has(&r, "script ran as 65534\n"));
    assert_true(tail_has(&r, "drwxrwxrwt"));
}

static void test_bad_file_path_refused(void **state)
{
    tjob t;
    rec r = {0};
    char longname[301] = "";
    (void)state;
    job_init(&t, "true");
    t.files[0] = (sbx_kv){"../escape", "x"};
    t.job.nfiles = 1;
    assert_int_equal(start_on("docker/a/0", &t, &r), -EINVAL);
    t.files[0] = (sbx_kv){"/abs", "x"};
    assert_int_equal(start_on("docker/a/0", &t, &r), -EINVAL);
    /* What the schema cannot see is the job's too: a file and a directory
     * of one path, a name longer than any filesystem takes. */
    t.files[0] = (sbx_kv){"a", "1"};
    t.files[1] = (sbx_kv){"a/b", "2"};
    t.job.nfiles = 2;
    assert_int_equal(start_on("docker/a/0", &t, &r), -EINVAL);
    memset(longname, 'n', sizeof(longname) - 1);
    t.files[1] = (sbx_kv){longname, "2"};
    assert_int_equal(start_on("docker/a/0", &t, &r), -EINVAL);
    assert_int_equal(sbx_docker_active(P), 0);
}

static void test_timeout(void **state)
{
    tjob t;
    rec r = {0};
    (void)state;
    job_init(&t, "echo started; sleep 30");
    t.job.timeout_s = 1;
    run_job("docker/a/0", &t, &r, 20000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_TIMED_OUT);
    assert_true(tail_has(&r, "started"));
    assert_true((r.t_finished - r.t_start) / 1000 >= 1000);
    assert_true((r.t_finished - r.t_start) / 1000 < 6000);
    assert_gone(r.res.instance);
}

static void test_cancel_running(void **state)
{
    tjob t;
    rec r = {0};
    uint64_t t0;
    (void)state;
    job_init(&t, "echo before-cancel; sleep 30");
    assert_int_equal(start_on("docker/b/0", &t, &r), 0);
    run_until(&r.started, 1, 20000);
    assert_int_equal(r.started, 1);
    t0 = sbx_now_ms();
    P->ops->cancel(P, r.run);
    assert_int_equal(r.finished, 0); /* never from inside cancel() */
    run_until(&r.finished, 1, 15000);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);
    assert_true(sbx_now_ms() - t0 < 5000);
    assert_gone(r.res.instance);
}

static void test_cancel_while_creating(void **state)
{
    tjob t;
    rec r = {0};
    static reply lr;
    char path[256];
    (void)state;
    job_init(&t, "echo never; sleep 30");
    assert_int_equal(start_on("docker/b/1", &t, &r), 0);
    P->ops->cancel(P, r.run);
    run_until(&r.finished, 1, 15000);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.started, 1); /* reported right before FINISHED */
    assert_true(r.t_started <= r.t_finished);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);
    assert_int_equal(r.res.exit_code, -1); /* it never ran */
    /* Nothing of it is left on the engine. */
    snprintf(path, sizeof(path),
             "/containers/json?all=1&filters=%%7B%%22label%%22%%3A%%5B%%22sbx.job%%3D%s%%22%%5D%%7D",
             t.job.job_id);
    assert_int_equal(engine("GET", path, NULL, &lr), 200);
    assert_true(strncmp(lr.body, "[]", 2) == 0);
}

static void test_cancel_from_started_callback(void **state)
{
    tjob t;
    rec r = {0};
    (void)state;
    job_init(&t, "sleep 30");
    assert_int_equal(start_on("docker/a/2", &t, &r), 0);
    r.cancel_on_start = 1;
    run_until(&r.finished, 1, 20000);
    assert_int_equal(r.started, 1);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);
}

static void test_slots_per_host(void **state)
{
    tjob t, t2;
    rec r = {0}, r2 = {0};
    const char **ids;
    (void)state;
    assert_string_equal(P->ops->pool(P), "docker");
    assert_int_equal(P->ops->slots(P, &ids), 5);
    assert_string_equal(ids[0], "docker/a/0");
    assert_string_equal(ids[4], "docker/b/1");
    assert_int_equal(sbx_docker_host_count(P), 2);
    assert_string_equal(sbx_docker_host_name(P, 1), "b");
    assert_int_equal(sbx_docker_host_slots(P, 1, &ids), 2);
    assert_string_equal(ids[0], "docker/b/0");

    job_init(&t, "sleep 30");
    assert_int_equal(start_on("docker/a/0", &t, &r), 0);
    job_init(&t2, "true");
    assert_int_equal(start_on("docker/a/0", &t2, &r2), -EBUSY);
    assert_int_equal(start_on("docker/a/3", &t2, &r2), -ENOENT);
    assert_int_equal(start_on("docker/zz/0", &t2, &r2), -ENOENT);
    assert_int_equal(start_on("local/a/0", &t2, &r2), -ENOENT);
    P->ops->cancel(P, r.run);
    run_until(&r.finished, 1, 20000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);
    /* The slot is free again. */
    run_job("docker/a/0", &t2, &r2, 30000);
    assert_int_equal(r2.res.outcome, SBX_OUTCOME_SUCCEEDED);
}

static void test_sandbox_as_engine_and_build_see_it(void **state)
{
    tjob t;
    outbuf out = {0};
    rec r = {.out = &out};
    json_object *o, *v;
    uint64_t end;
    const char *labels[][2] = {{"sbx.slot", "docker/b/1"}, {"sbx.pool", "docker"},
                               {"sbx.worker", WORKER}};
    (void)state;
    job_init(&t, "id -u; id -g; ls /sys/class/net | tr '\\n' ' '; echo;"
                 " (: > /etc/probe) 2>/dev/null && echo root-writable || echo root-readonly;"
                 " echo x > /workspace/w && echo ws-writable; echo x > /tmp/t && echo tmp-writable;"
                 " sleep 30");
    t.job.memory_mb = 300;
    t.job.pids = 77;
    t.job.network = true; /* asked for, but the provider does not allow it */
    assert_int_equal(start_on("docker/b/1", &t, &r), 0);
    run_until(&r.started, 1, 20000);
    assert_int_equal(r.started, 1);

    assert_int_equal(inspect(r.instance, &o), 200);
    assert_int_equal(json_object_get_int64(jget(o, "HostConfig/Memory")), 300LL * 1024 * 1024);
    assert_int_equal(json_object_get_int64(jget(o, "HostConfig/PidsLimit")), 77);
    assert_true(json_object_get_boolean(jget(o, "HostConfig/ReadonlyRootfs")));
    assert_string_equal(json_object_get_string(jget(o, "HostConfig/NetworkMode")), "none");
    v = jget(o, "HostConfig/CapDrop");
    assert_non_null(v);
    /* Podman lists what ALL dropped; dockerd keeps "ALL". */
    assert_true(json_object_array_length(v) > 10 ||
                strcmp(json_object_get_string(json_object_array_get_idx(v, 0)), "ALL") == 0);
    assert_string_equal(json_object_get_string(jget(o, "Config/User")), "65534:65534");
    assert_non_null(strstr(json_object_to_json_string(jget(o, "HostConfig/SecurityOpt")),
                           "no-new-privileges"));
    assert_string_equal(json_object_get_string(jget(o, "Config/Labels/sbx.job")), t.job.job_id);
    assert_string_equal(json_object_get_string(jget(o, "Config/Labels/sbx.project")), t.job.project_id);
    assert_non_null(jget(o, "Config/Labels/sbx.token"));
    {
        json_object *lab = jget(o, "Config/Labels"), *x;
        for (size_t i = 0; i < sizeof(labels) / sizeof(labels[0]); i++) {
            assert_true(json_object_object_get_ex(lab, labels[i][0], &x));
            assert_string_equal(json_object_get_string(x), labels[i][1]);
        }
    }
    json_object_put(o);

    /* The build has said it all (the live output shows it) before the
     * cancel: the kill must not race its first lines. */
    end = sbx_now_ms() + 20000;
    while (sbx_now_ms() < end && !(out.p[1] && strstr(out.p[1], "tmp-writable")))
        sbx_loop_once(L, 20);
    P->ops->cancel(P, r.run);
    run_until(&r.finished, 1, 20000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);
    outbuf_free(&out);
    assert_true(tail_has(&r, "65534\n65534\n"));
    assert_true(tail_has(&r, "\nlo \n")); /* loopback only */
    assert_true(tail_has(&r, "root-readonly"));
    assert_true(tail_has(&r, "ws-writable"));
    assert_true(tail_has(&r, "tmp-writable"));
}

static void test_memory_limit_kills(void **state)
{
    tjob t;
    rec r = {0};
    (void)state;
    /* dd's 64 MiB block buffer fits in 256 MiB but not in 32 MiB, where the
     * kernel's OOM killer ends it (SIGKILL: 128 + 9). */
    job_init(&t, "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null && echo survived");
    t.job.memory_mb = 256;
    run_job("docker/a/0", &t, &r, 30000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_true(tail_has(&r, "survived"));

    job_init(&t, "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null && echo survived");
    t.job.memory_mb = 32;
    run_job("docker/a/0", &t, &r, 30000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_FAILED);
    assert_int_equal(r.res.exit_code, 137);
    assert_false(tail_has(&r, "survived"));
}

static void test_fast_exit_keeps_logs(void **state)
{
    (void)state;
    for (int i = 0; i < 8; i++) {
        tjob t;
        rec r = {0};
        job_init(&t, i % 2 ? "printf no-newline" : "echo fast; exit 5");
        run_job("docker/b/0", &t, &r, 30000);
        if (i % 2) {
            assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
            assert_string_equal(r.res.log_tail, "no-newline");
        } else {
            assert_int_equal(r.res.outcome, SBX_OUTCOME_FAILED);
            assert_int_equal(r.res.exit_code, 5);
            assert_string_equal(r.res.log_tail, "fast\n");
        }
    }
}

static int swept, swept_removed, swept_failed;
static void on_swept(void *arg, int removed, int failed)
{
    (void)arg;
    swept++;
    swept_removed = removed;
    swept_failed = failed;
}

static void test_orphan_sweep(void **state)
{
    char orphan[65], foreign[65];
    tjob t;
    rec r = {0};
    json_object *o;
    (void)state;
    /* Ours by label but owned by no run: an orphan. */
    make_container(WORKER, "docker/a/1", "424242", orphan);
    /* Another worker's: not ours to judge. */
    make_container("some-other-worker", "docker/a/1", "1", foreign);
    /* A live run of ours on the same slot label: must survive. */
    job_init(&t, "sleep 30");
    assert_int_equal(start_on("docker/a/1", &t, &r), 0);
    run_until(&r.started, 1, 20000);
    assert_int_equal(r.started, 1);

    swept = 0;
    assert_int_equal(sbx_docker_sweep(P, on_swept, NULL), 0);
    assert_int_equal(sbx_docker_sweep(P, on_swept, NULL), -EBUSY);
    assert_int_equal(swept, 0); /* never from inside the call */
    run_until(&swept, 1, 30000);
    assert_int_equal(swept, 1);
    print_message("swept removed=%d failed=%d\n", swept_removed, swept_failed);
    assert_int_equal(swept_removed, 1);
    assert_int_equal(swept_failed, 0);
    assert_gone(orphan);
    assert_int_equal(inspect(foreign, &o), 200);
    json_object_put(o);
    assert_int_equal(inspect(r.instance, &o), 200);
    json_object_put(o);
    assert_int_equal(r.finished, 0);

    remove_container(foreign);
    P->ops->cancel(P, r.run);
    run_until(&r.finished, 1, 20000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);
}

static void test_sweep_at_provider_start(void **state)
{
    char orphan[65], worker[80];
    sbx_docker_config cfg = {0};
    sbx_provider *p2;
    char err[256];
    json_object *o;
    uint64_t end;
    long st = 0;
    (void)state;
    /* A predecessor with this worker id crashed and left a container. */
    snprintf(worker, sizeof(worker), "%s-restart", WORKER);
    make_container(worker, "docker/a/0", "7", orphan);
    cfg.worker_id = worker;
    cfg.hosts = HOSTS;
    cfg.nhosts = 1;
    cfg.default_image = IMAGE;
    assert_int_equal(sbx_docker_new(L, &cfg, &p2, err, sizeof(err)), 0);
    end = sbx_now_ms() + 30000;
    /* 200 until the sweep gets to it, a 500 while it is being removed. */
    while (sbx_now_ms() < end && (st = inspect(orphan, &o)) != 404)
        json_object_put(o);
    assert_int_equal(st, 404);
    p2->ops->destroy(p2);
}

static void test_engine_errors(void **state)
{
    tjob t;
    rec r = {0};
    sbx_docker_host gone = {"gone", "unix:///nonexistent/podman.sock", 1};
    sbx_docker_config cfg = {0};
    sbx_provider *p2, *saved = P;
    char err[256];
    (void)state;

    /* The engine refuses what the job asked for (an image it does not
     * have, a reference it cannot parse, a command that does not exist):
     * the job's fault, with the engine's message. */
    job_init(&t, "true");
    t.job.image = "localhost/sbx-no-such-image:latest";
    run_job("docker/a/0", &t, &r, 30000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_JOB_ERROR);
    assert_int_equal(r.res.exit_code, -1);
    assert_string_equal(r.res.instance, ""); /* nothing was created */
    assert_non_null(strstr(r.res.error, "image not found: localhost/sbx-no-such-image:latest: "));
    print_message("engine error: %s\n", r.res.error);
    job_init(&t, "true");
    t.job.image = "Not/A:Valid:Reference";
    run_job("docker/a/0", &t, &r, 30000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_JOB_ERROR);
    job_init(&t, NULL);
    t.argv[0] = "/no/such/command";
    t.job.argv = t.argv;
    t.job.argc = 1;
    run_job("docker/a/0", &t, &r, 30000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_JOB_ERROR);
    assert_non_null(strstr(r.res.error, "start: engine said"));
    print_message("bad command: %s\n", r.res.error);

    /* The socket is not there. */
    cfg.worker_id = WORKER;
    cfg.hosts = &gone;
    cfg.nhosts = 1;
    cfg.default_image = IMAGE;
    cfg.no_start_sweep = 1;
    assert_int_equal(sbx_docker_new(L, &cfg, &p2, err, sizeof(err)), 0);
    P = p2;
    job_init(&t, "true");
    run_job("docker/gone/0", &t, &r, 30000);
    P = saved;
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    assert_non_null(strstr(r.res.error, "version: "));
    print_message("socket error: %s\n", r.res.error);
    p2->ops->destroy(p2);

    /* Bad configurations are refused up front. */
    gone.endpoint = "ftp://x";
    assert_int_equal(sbx_docker_new(L, &cfg, &p2, err, sizeof(err)), -EINVAL);
    gone.endpoint = ENDPOINT;
    cfg.user = "0:0";
    assert_int_equal(sbx_docker_new(L, &cfg, &p2, err, sizeof(err)), -EINVAL);
}

static void test_destroy_removes_containers(void **state)
{
    sbx_docker_config cfg = {0};
    sbx_provider *p2, *saved = P;
    tjob t;
    rec r = {0};
    char err[256], id[128];
    (void)state;
    cfg.worker_id = WORKER;
    cfg.hosts = HOSTS;
    cfg.nhosts = 1;
    cfg.default_image = IMAGE;
    cfg.no_start_sweep = 1;
    assert_int_equal(sbx_docker_new(L, &cfg, &p2, err, sizeof(err)), 0);
    P = p2;
    job_init(&t, "sleep 60");
    assert_int_equal(start_on("docker/a/0", &t, &r), 0);
    run_until(&r.started, 1, 20000);
    P = saved;
    assert_int_equal(r.started, 1);
    snprintf(id, sizeof(id), "%s", r.instance);
    p2->ops->destroy(p2);
    assert_int_equal(r.finished, 0); /* no callbacks after destroy */
    assert_gone(id);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_create_to_running_latency(void **state)
{
    enum { N = 20 };
    uint64_t us[N];
    (void)state;
    for (int i = 0; i < N; i++) {
        tjob t;
        rec r = {0};
        job_init(&t, "true");
        run_job(i % 2 ? "docker/a/0" : "docker/b/0", &t, &r, 30000);
        assert_int_equal(r.started, 1);
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        us[i] = r.t_started - r.t_start;
    }
    qsort(us, N, sizeof(us[0]), cmp_u64);
    print_message("create->running over %d runs: median %.1f ms, min %.1f ms, max %.1f ms\n", N,
                  (double)(us[N / 2 - 1] + us[N / 2]) / 2000.0, (double)us[0] / 1000.0,
                  (double)us[N - 1] / 1000.0);
    assert_true(us[N / 2] < 5000000);
}


/* ---- live output (provider.h's sink) ---- */

static void test_live_output_while_running(void **state)
{
    tjob t;
    outbuf o = {0};
    rec r = {.out = &o};
    (void)state;
    job_init(&t, "echo first; echo err-first >&2; sleep 2; echo second; printf tail-no-newline; "
                 "echo err-second >&2");
    run_job("docker/a/0", &t, &r, 30000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    /* Seen while it ran: the first line a second before the end (the
     * provider reads every 500 ms; the build sleeps 2 s). */
    assert_true(o.chunks > 0);
    print_message("first output %.0f ms before FINISHED\n", (double)(r.t_finished - o.t_first) / 1000.0);
    assert_true(r.t_finished - o.t_first > 1000000);
    assert_int_equal(o.after_finished, 0);
    /* Per stream, in order, each byte once, nothing else. */
    assert_string_equal(o.p[SBX_STREAM_STDOUT], "first\nsecond\ntail-no-newline");
    assert_string_equal(o.p[SBX_STREAM_STDERR], "err-first\nerr-second\n");
    /* The result's tail is as it was. */
    assert_true(tail_has(&r, "first\n"));
    assert_true(tail_has(&r, "tail-no-newline"));
    outbuf_free(&o);
}

/* Much output on both streams, up to the exit, once all at once and once
 * in bursts over 3 s (reads while it runs cut into it, and the read after
 * the exit must deliver exactly the rest). Every line is numbered: a loss,
 * a repeat or a swap shows. */
static void live_output_complete(const char *script)
{
    enum { N_OUT = 120000, N_ERR = 30000 };
    tjob t;
    outbuf o = {0};
    rec r = {.out = &o};
    char *want;
    size_t wl = 0;
    job_init(&t, script);
    run_job("docker/b/0", &t, &r, 60000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    print_message("live output: %zu chunks, stdout %zu bytes, stderr %zu bytes\n", o.chunks,
                  o.len[1], o.len[2]);
    want = malloc(N_OUT * 8);
    assert_non_null(want);
    for (int i = 1; i <= N_OUT; i++)
        wl += (size_t)sprintf(want + wl, "%d\n", i);
    assert_int_equal(o.len[SBX_STREAM_STDOUT], wl);
    assert_memory_equal(o.p[SBX_STREAM_STDOUT], want, wl);
    wl = 0;
    for (int i = 1; i <= N_ERR; i++)
        wl += (size_t)sprintf(want + wl, "%d\n", i);
    assert_int_equal(o.len[SBX_STREAM_STDERR], wl);
    assert_memory_equal(o.p[SBX_STREAM_STDERR], want, wl);
    free(want);
    outbuf_free(&o);
}

static void test_live_output_complete(void **state)
{
    (void)state;
    live_output_complete("seq 1 30000 >&2 & seq 1 120000; wait");
    live_output_complete("(for i in 0 1 2 3 4 5; do seq $((i * 5000 + 1)) $((i * 5000 + 5000)); "
                         "sleep 0.5; done) >&2 & "
                         "for i in 0 1 2 3 4 5; do seq $((i * 20000 + 1)) $((i * 20000 + 20000)); "
                         "sleep 0.5; done; wait");
}

/* ---- limits the engine would refuse ---- */

static void test_limits_capped_and_refused(void **state)
{
    tjob t;
    rec r = {0};
    json_object *o;
    int64_t nano;
    (void)state;
    /* More CPUs than the host has: dockerd refuses the create; we cap. */
    job_init(&t, "sleep 30");
    t.job.cpus = 4096;
    assert_int_equal(start_on("docker/a/2", &t, &r), 0);
    run_until(&r.started, 1, 20000);
    assert_int_equal(r.started, 1);
    assert_string_not_equal(r.instance, "");
    assert_int_equal(inspect(r.instance, &o), 200);
    nano = json_object_get_int64(jget(o, "HostConfig/NanoCpus"));
    print_message("cpus 4096 -> NanoCpus %" PRId64 " (sysconf says %ld CPUs)\n", nano,
                  sysconf(_SC_NPROCESSORS_ONLN));
    assert_true(nano >= 1000000000LL && nano <= 1024LL * 1000000000LL);
    assert_true(nano < 4096LL * 1000000000LL);
    assert_string_equal(json_object_get_string(jget(o, "HostConfig/LogConfig/Type")), "json-file");
    json_object_put(o);
    P->ops->cancel(P, r.run);
    run_until(&r.finished, 1, 20000);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);

    /* Below the 6 MB an engine runs: the job's own error, up front. */
    job_init(&t, "true");
    t.job.memory_mb = 4;
    assert_int_equal(start_on("docker/a/0", &t, &r), -EINVAL);
    t.job.memory_mb = 6;
    run_job("docker/a/0", &t, &r, 30000);
    assert_true(r.res.outcome == SBX_OUTCOME_SUCCEEDED || r.res.outcome == SBX_OUTCOME_FAILED);
}

/* ---- the log reader alone (docker_logs.c): two reads, nothing twice ---- */

typedef struct lbuf {
    char s[3][4096];
    size_t n[3];
} lbuf;

static void on_log_out(void *arg, sbx_stream stream, const char *p, size_t n)
{
    lbuf *b = arg;
    assert_true(n > 0);
    assert_true(b->n[stream] + n < sizeof(b->s[stream]));
    memcpy(b->s[stream] + b->n[stream], p, n);
    b->n[stream] += n;
}

static size_t frame(char *out, int stream, const char *payload)
{
    size_t n = strlen(payload);
    out[0] = (char)stream;
    out[1] = out[2] = out[3] = 0;
    out[4] = (char)(n >> 24);
    out[5] = (char)(n >> 16);
    out[6] = (char)(n >> 8);
    out[7] = (char)n;
    memcpy(out + 8, payload, n);
    return n + 8;
}

static void test_log_reader_two_reads(void **state)
{
    /* Podman-like whole seconds (several messages per stamp), a dockerd-like
     * nanosecond stamp, an offset, a message without a newline, and the
     * streams' stamps out of order with each other. */
    static const struct { int stream; const char *payload; } msgs[] = {
        {1, "2026-12-04T20:40:04Z one\n"},
        {1, "2026-12-04T20:40:04Z two\n"},
        {1, "2026-12-04T20:40:04Z three\n"},
        {1, "2026-12-04T20:40:06.000000001Z four\n"},
        {2, "2026-12-04T20:40:04.5Z err-late-stamp\n"},
        {2, "2026-12-04T20:40:05Z err-a\n"},
        {1, "2026-12-04T21:40:06.000000002+01:00 five\n"},
        {2, "2026-12-04T20:40:07Z err-b\n"},
        {1, "2026-12-04T20:40:07Z no-newline"},
    };
    const char *want1 = "one\ntwo\nthree\nfour\nfive\nno-newline";
    const char *want2 = "err-late-stamp\nerr-a\nerr-b\n";
    char log[2048];
    size_t len = 0;
    (void)state;
    for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++)
        len += frame(log + len, msgs[i].stream, msgs[i].payload);
    assert_int_equal(sbx__docker_log_ts("2026-12-04T21:40:06.000000002+01:00"),
                     sbx__docker_log_ts("2026-12-04T20:40:06.000000002Z"));
    assert_int_equal(sbx__docker_log_ts("2026-12-04 20:40:06Z"), -1);
    assert_int_equal(sbx__docker_log_ts("2026-12-04T20:40:06"), -1);
    /* The follow dropped after any byte k, then the whole log read again
     * (split in pieces of any size): each stream exactly once, in order. */
    for (size_t k = 0; k <= len; k++) {
        for (size_t piece = 1; piece <= 7; piece += 3) {
            sbx_docker_logs l;
            lbuf b = {0};
            sbx__docker_logs_init(&l, on_log_out, &b);
            for (size_t i = 0; i < k; i += piece)
                sbx__docker_logs_feed(&l, log + i, k - i < piece ? k - i : piece);
            sbx__docker_logs_read(&l);
            for (size_t i = 0; i < len; i += piece)
                sbx__docker_logs_feed(&l, log + i, len - i < piece ? len - i : piece);
            b.s[1][b.n[1]] = b.s[2][b.n[2]] = '\0';
            if (strcmp(b.s[1], want1) != 0 || strcmp(b.s[2], want2) != 0)
                fail_msg("cut at %zu, pieces of %zu: stdout [%s] stderr [%s]", k, piece, b.s[1], b.s[2]);
            /* A third read after everything: nothing more. */
            sbx__docker_logs_read(&l);
            sbx__docker_logs_feed(&l, log, len);
            assert_int_equal(b.n[1], strlen(want1));
            assert_int_equal(b.n[2], strlen(want2));
            if (k == len)
                /* since: a second before the earlier stream's last stamp */
                assert_int_equal(sbx__docker_logs_since_s(&l),
                                 sbx__docker_log_ts("2026-12-04T20:40:07Z") / 1000000000 - 1);
        }
    }
    /* A stream that printed once, long ago, does not hold every later read
     * back there once a read went to the end of the log. */
    {
        sbx_docker_logs l;
        lbuf b = {0};
        len = frame(log, 2, "2026-12-04T20:00:00Z early\n");
        len += frame(log + len, 1, "2026-12-04T20:10:00Z late\n");
        sbx__docker_logs_init(&l, on_log_out, &b);
        sbx__docker_logs_feed(&l, log, len);
        assert_int_equal(sbx__docker_logs_since_s(&l),
                         sbx__docker_log_ts("2026-12-04T20:00:00Z") / 1000000000 - 1);
        sbx__docker_logs_read_done(&l);
        assert_int_equal(sbx__docker_logs_since_s(&l),
                         sbx__docker_log_ts("2026-12-04T20:10:00Z") / 1000000000 - 1);
    }
}

/* ---- a scripted fake engine, for what no real engine here does ---- */

typedef struct fake {
    pid_t pid;
    char sock[108];
    char logf[128];
} fake;

static const char FAKE_ID[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static void fake_reply(int c, int status, const char *api, const char *body)
{
    char h[512];
    int n = snprintf(h, sizeof(h),
                     "HTTP/1.1 %d X\r\nApi-Version: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     status, api, strlen(body));
    /* The client may be gone (the provider drops the log follow when the
     * wait answers first): that is fine. */
    if (write(c, h, (size_t)n) == n)
        (void)!write(c, body, strlen(body));
}

/* The child: answers one request per connection, from the routes below,
 * and appends each request line (and its X-Registry-Auth) to logf. The
 * create answers 201, or 404 (image_missing 1), or 400 "client version"
 * (2: an engine downgraded under us). */
static void fake_serve(int ls, const char *api, const char *wait_body, int image_missing,
                       const char *logf)
{
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        char req[65536], line[512];
        size_t have = 0;
        char *end, *auth;
        FILE *lf;
        int c = accept(ls, NULL, NULL);
        if (c < 0)
            _exit(0);
        while (have < sizeof(req) - 1) {
            ssize_t k = read(c, req + have, sizeof(req) - 1 - have);
            if (k <= 0)
                break;
            have += (size_t)k;
            req[have] = '\0';
            if ((end = strstr(req, "\r\n\r\n"))) {
                char *cl = strcasestr(req, "Content-Length: ");
                size_t want = (size_t)(end + 4 - req) + (cl ? strtoul(cl + 16, NULL, 10) : 0);
                if (have >= want)
                    break;
            }
        }
        req[have] = '\0';
        snprintf(line, sizeof(line), "%.*s", (int)strcspn(req, "\r\n"), req);
        if ((lf = fopen(logf, "a"))) {
            fprintf(lf, "%s\n", line);
            if ((auth = strcasestr(req, "X-Registry-Auth: ")))
                fprintf(lf, "auth %.*s\n", (int)strcspn(auth + 17, "\r\n"), auth + 17);
            fclose(lf);
        }
        if (strstr(line, "GET /_ping"))
            fake_reply(c, 200, api, "OK");
        else if (strstr(line, "/info"))
            fake_reply(c, 200, api, "{\"NCPU\":2,\"MemTotal\":1073741824}");
        else if (strstr(line, "POST ") && strstr(line, "/containers/create")) {
            char b[128];
            snprintf(b, sizeof(b), "{\"Id\":\"%s\",\"Warnings\":[]}", FAKE_ID);
            if (image_missing == 2)
                fake_reply(c, 400, api, "{\"message\":\"client version 1.47 is too new. Maximum "
                                        "supported API version is 1.45\"}");
            else if (image_missing)
                fake_reply(c, 404, api, "{\"message\":\"No such image: x\"}");
            else
                fake_reply(c, 201, api, b);
        } else if (strstr(line, "/images/create"))
            fake_reply(c, 200, api,
                       "{\"status\":\"Pulling from x\"}\r\n"
                       "{\"errorDetail\":{\"message\":\"pull access denied\"},\"error\":\"pull access denied\"}\r\n");
        else if (strstr(line, "/wait"))
            fake_reply(c, 200, api, wait_body);
        else if (strstr(line, "/logs"))
            fake_reply(c, 200, api, "");
        else if (strstr(line, "/start") || strstr(line, "DELETE ") || strstr(line, "/kill"))
            fake_reply(c, 204, api, "");
        else if (strstr(line, "/containers/json"))
            fake_reply(c, 200, api, "[]");
        else
            fake_reply(c, 404, api, "{\"message\":\"fake: no route\"}");
        close(c);
    }
}

static void fake_start(fake *f, const char *api, const char *wait_body, int image_missing)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int ls;
    snprintf(f->sock, sizeof(f->sock), "/tmp/sbx-fake-engine-%d.sock", (int)getpid());
    snprintf(f->logf, sizeof(f->logf), "/tmp/sbx-fake-engine-%d.log", (int)getpid());
    unlink(f->sock);
    unlink(f->logf);
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", f->sock);
    ls = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(ls >= 0);
    assert_int_equal(bind(ls, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(ls, 16), 0);
    f->pid = fork();
    assert_true(f->pid >= 0);
    if (f->pid == 0)
        fake_serve(ls, api, wait_body, image_missing, f->logf);
    close(ls);
}

/* What the fake engine was asked, one line a request. */
static char *fake_stop(fake *f)
{
    static char log[16384];
    FILE *lf;
    size_t n = 0;
    kill(f->pid, SIGKILL);
    waitpid(f->pid, NULL, 0);
    if ((lf = fopen(f->logf, "r"))) {
        n = fread(log, 1, sizeof(log) - 1, lf);
        fclose(lf);
    }
    log[n] = '\0';
    unlink(f->sock);
    unlink(f->logf);
    return log;
}

/* runs runs, one after the other, on the fake engine with a provider of
 * their own; r is the last one's. */
static void fake_runs(fake *f, const char *registry_auth, rec *r, int runs)
{
    sbx_docker_host h = {"fake", NULL, 1};
    sbx_docker_config cfg = {0};
    sbx_provider *saved = P;
    char ep[160], err[256];
    tjob t;
    snprintf(ep, sizeof(ep), "unix://%s", f->sock);
    h.endpoint = ep;
    cfg.worker_id = WORKER;
    cfg.hosts = &h;
    cfg.nhosts = 1;
    cfg.default_image = "example.com/team/app";
    cfg.no_start_sweep = 1;
    cfg.registry_auth = registry_auth;
    assert_int_equal(sbx_docker_new(L, &cfg, &P, err, sizeof(err)), 0);
    for (int i = 0; i < runs; i++) {
        job_init(&t, "true");
        run_job("docker/fake/0", &t, r, 20000);
    }
    P->ops->destroy(P);
    P = saved;
}

static void fake_run(fake *f, const char *registry_auth, rec *r) { fake_runs(f, registry_auth, r, 1); }

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

static void test_api_version_negotiated(void **state)
{
    fake f;
    rec r = {0};
    char *log;
    (void)state;
    /* A newer engine: we speak our newest, in every path. */
    fake_start(&f, "1.52", "{\"StatusCode\":0,\"Error\":null}", 0);
    fake_run(&f, NULL, &r);
    log = fake_stop(&f);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(log, "GET /_ping "));
    assert_non_null(strstr(log, "POST /v1.47/containers/create "));
    assert_non_null(strstr(log, "POST /v1.47/containers/" ));
    assert_null(strstr(log, "/v1.41/"));
    /* An engine as old as ours: its version. */
    fake_start(&f, "1.41", "{\"StatusCode\":0,\"Error\":null}", 0);
    fake_run(&f, NULL, &r);
    log = fake_stop(&f);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(log, "POST /v1.41/containers/create "));
    /* Older than we speak: refused, nothing created, a clear error. */
    fake_start(&f, "1.40", "{\"StatusCode\":0,\"Error\":null}", 0);
    fake_run(&f, NULL, &r);
    log = fake_stop(&f);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    print_message("old engine: %s\n", r.res.error);
    assert_non_null(strstr(r.res.error, "engine API 1.40 on host fake is older than 1.41"));
    assert_null(strstr(log, "/containers/create"));
    /* The engine says our version no longer suits it: the provider's error
     * (retried), and the next run negotiates again. */
    fake_start(&f, "1.47", "{\"StatusCode\":0,\"Error\":null}", 2);
    fake_runs(&f, NULL, &r, 2);
    log = fake_stop(&f);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    assert_non_null(strstr(r.res.error, "client version"));
    assert_int_equal(count_of(log, "GET /_ping "), 2);
}

static void test_wait_error_in_body(void **state)
{
    fake f;
    rec r = {0};
    (void)state;
    fake_start(&f, "1.41", "{\"StatusCode\":0,\"Error\":{\"Message\":\"container state lost\"}}", 0);
    fake_run(&f, NULL, &r);
    fake_stop(&f);
    /* StatusCode 0 is not the build's: the engine's error, retried. */
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    assert_non_null(strstr(r.res.error, "wait: engine said: container state lost"));
}

static void test_pull_refused_in_stream(void **state)
{
    fake f;
    rec r = {0};
    char *log;
    (void)state;
    fake_start(&f, "1.41", "{\"StatusCode\":0,\"Error\":null}", 1);
    fake_run(&f, "eyJ1c2VybmFtZSI6InUiLCJwYXNzd29yZCI6InAifQ==", &r);
    log = fake_stop(&f);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_JOB_ERROR);
    assert_string_equal(r.res.error, "image not found: example.com/team/app: pull access denied");
    /* The tag the reference lacked, and the configured credentials. */
    assert_non_null(strstr(log, "POST /v1.41/images/create?fromImage=example.com%2Fteam%2Fapp&tag=latest "));
    assert_non_null(strstr(log, "auth eyJ1c2VybmFtZSI6InUiLCJwYXNzd29yZCI6InAifQ==\n"));
}

static sbx_provider *make_docker(sbx_loop *loop)
{
    sbx_docker_config cfg = {0};
    sbx_provider *p = NULL;
    char err[256];
    cfg.worker_id = WORKER;
    cfg.hosts = HOSTS;
    cfg.nhosts = 2;
    cfg.default_image = IMAGE;
    cfg.kill_grace_ms = 10000;
    if (sbx_docker_new(loop, &cfg, &p, err, sizeof(err)) < 0) {
        print_error("sbx_docker_new: %s\n", err);
        return NULL;
    }
    return p;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_success, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_argv_env_and_files, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_bad_file_path_refused, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_timeout, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_cancel_running, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_cancel_while_creating, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_cancel_from_started_callback, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_slots_per_host, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_sandbox_as_engine_and_build_see_it, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_memory_limit_kills, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_fast_exit_keeps_logs, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_orphan_sweep, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_sweep_at_provider_start, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_engine_errors, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_destroy_removes_containers, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_create_to_running_latency, provider_up, provider_down),
        cmocka_unit_test(test_log_reader_two_reads),
        cmocka_unit_test_setup_teardown(test_live_output_while_running, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_live_output_complete, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_limits_capped_and_refused, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_api_version_negotiated, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_wait_error_in_body, provider_up, provider_down),
        cmocka_unit_test_setup_teardown(test_pull_refused_in_stream, provider_up, provider_down),
    };
    sbx_conformance_opts opts = {0};
    const char *scale = getenv("SBX_TEST_TIME_SCALE");
    int failed;

    SOCK = getenv("SBX_TEST_DOCKER_SOCK");
    IMAGE = getenv("SBX_TEST_DOCKER_IMAGE");
    if (!SOCK || !*SOCK || !IMAGE || !*IMAGE) {
        printf("test_docker: skipped: SBX_TEST_DOCKER_SOCK and SBX_TEST_DOCKER_IMAGE are not set "
               "(run it under tests/services/podman/podman-service.sh or "
               "tests/services/dockerd/dockerd-service.sh)\n");
        return 77;
    }
    if (access(SOCK, W_OK) != 0) {
        printf("test_docker: %s: %s\n", SOCK, strerror(errno));
        return 1;
    }
    snprintf(ENDPOINT, sizeof(ENDPOINT), "unix://%s", SOCK);
    snprintf(WORKER, sizeof(WORKER), "test-docker-%d", (int)getpid());
    HOSTS[0].endpoint = HOSTS[1].endpoint = ENDPOINT;

    opts.host_procs = 1;
    opts.time_scale = scale ? atoi(scale) : 1;
    opts.image = IMAGE;
    failed = sbx_conformance_run("docker conformance", make_docker, &opts);
    failed += cmocka_run_group_tests_name("docker", tests, NULL, NULL);
    return failed ? 1 : 0;
}
