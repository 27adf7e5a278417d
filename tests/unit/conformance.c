/* conformance.c — provider scenarios, shared by every provider's unit test.
 *
 * Each scenario is a cmocka test with its own loop and provider (made by the
 * factory in setup, destroyed in teardown), so a failure in one leaves
 * nothing behind for the next. Runs are observed through the provider's
 * callback only: counts and times of STARTED and FINISHED, and a copy of the
 * result. Every wait drives the loop until a condition holds or a deadline
 * passes; there are no bare sleeps.
 *
 * Marker commands ("sleep 1XXXXXXXX", unique per test process) make
 * leftovers findable in /proc when the provider's processes are visible
 * there (opts.host_procs). A scenario first sees the marker process itself
 * alive (its exact command line: the shell running the script carries the
 * text too), so the "none left" check could fail.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "conformance.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static sbx_conformance_make g_make;
static sbx_conformance_opts g_opts;
static int64_t g_token = 1000;

/* What a run's output sink kept of a stream: the first OUT_KEEP bytes and
 * the count of all (t_big_output's 10.9 MB are counted, not kept). */
#define OUT_KEEP 4096
typedef struct cout {
    char head[OUT_KEEP + 1];
    size_t n;
} cout;

/* One run as the callback saw it. */
typedef struct crun {
    sbx_run *run;
    int started, finished;
    int order_bad;            /* FINISHED before STARTED, or anything after FINISHED */
    uint64_t t_start_us, t_started_us, t_finished_us;
    sbx_result res;
    cout out[3];              /* by sbx_stream: [1] stdout, [2] stderr */
    uint64_t t_first_out_us;
    int out_bad;              /* output after FINISHED, or an unknown stream */
} crun;

typedef struct cenv {
    sbx_loop *loop;
    sbx_provider *p;
    const char **slots;
    size_t nslots;
} cenv;

static uint64_t ms(uint64_t base_ms) { return base_ms * (uint64_t)g_opts.time_scale; }

static void on_event(void *arg, sbx_run_event ev, const sbx_result *res)
{
    crun *c = arg;
    if (c->finished)
        c->order_bad = 1;
    if (ev == SBX_RUN_STARTED) {
        c->started++;
        c->t_started_us = sbx_now_us();
        return;
    }
    if (!c->started)
        c->order_bad = 1;
    c->finished++;
    c->t_finished_us = sbx_now_us();
    c->res = *res;
}

/* The output sink of every run started here (provider.h's rules). */
static void on_output(void *arg, sbx_stream stream, const char *data, size_t len)
{
    crun *c = arg;
    cout *o;
    if (c->finished || (stream != SBX_STREAM_STDOUT && stream != SBX_STREAM_STDERR) || len == 0) {
        c->out_bad = 1;
        return;
    }
    if (!c->t_first_out_us)
        c->t_first_out_us = sbx_now_us();
    o = &c->out[stream];
    if (o->n < OUT_KEEP) {
        size_t k = len < OUT_KEEP - o->n ? len : OUT_KEEP - o->n;
        memcpy(o->head + o->n, data, k);
        o->head[o->n + k] = '\0';
    }
    o->n += len;
}

void sbx_conformance_marker(char out[64], int k)
{
    snprintf(out, 64, "sleep %d", 100000000 + (int)(getpid() % 1000000) * 100 + k);
}

int sbx_conformance_procs_with(const char *needle, int exact)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    int n = 0;
    pid_t self = getpid();

    if (!d)
        return -1;
    while ((de = readdir(d)) != NULL) {
        char path[64], buf[4096];
        ssize_t len;
        int fd;
        if (de->d_name[0] < '1' || de->d_name[0] > '9' || atoi(de->d_name) == self)
            continue;
        snprintf(path, sizeof(path), "/proc/%.32s/cmdline", de->d_name);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        len = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (len <= 0)
            continue;
        for (ssize_t i = 0; i < len; i++)
            if (buf[i] == '\0')
                buf[i] = ' ';
        buf[len] = '\0';
        if (len > 0 && buf[len - 1] == ' ')
            buf[len - 1] = '\0';
        if (exact ? strcmp(buf, needle) == 0 : strstr(buf, needle) != NULL)
            n++;
    }
    closedir(d);
    return n;
}

static void job_init(sbx_job *j, const char *script, int timeout_s)
{
    memset(j, 0, sizeof(*j));
    snprintf(j->job_id, sizeof(j->job_id), "j_conformance_%" PRId64, g_token);
    snprintf(j->project_id, sizeof(j->project_id), "p_conformance");
    j->script = (char *)script;
    j->timeout_s = timeout_s;
    j->image = (char *)g_opts.image;
}

static int start_on(cenv *e, size_t slot, const sbx_job *job, crun *c, char *err, size_t errlen)
{
    sbx_run_req req = {0}; /* output: NULL unless a test sets it */
    memset(c, 0, sizeof(*c));
    memset(&req, 0, sizeof(req));
    req.job = job;
    req.slot = e->slots[slot];
    req.token = g_token++;
    req.attempt = 1;
    req.output = on_output;
    req.output_arg = c;
    c->t_start_us = sbx_now_us();
    return e->p->ops->start(e->p, &req, on_event, c, &c->run, err, errlen);
}

/* Drives the loop until every run finished or deadline_ms passed. */
static int wait_finished(cenv *e, crun **cs, size_t n, uint64_t deadline_ms)
{
    uint64_t until = sbx_now_ms() + deadline_ms;
    for (;;) {
        size_t done = 0;
        for (size_t i = 0; i < n; i++)
            done += cs[i]->finished > 0;
        if (done == n)
            return 1;
        if (sbx_now_ms() >= until)
            return 0;
        sbx_loop_once(e->loop, 20);
    }
}

static int wait_one(cenv *e, crun *c, uint64_t deadline_ms) { return wait_finished(e, &c, 1, deadline_ms); }

static int wait_started(cenv *e, crun *c, uint64_t deadline_ms)
{
    uint64_t until = sbx_now_ms() + deadline_ms;
    while (!c->started && !c->finished && sbx_now_ms() < until)
        sbx_loop_once(e->loop, 20);
    return c->started;
}

/* Waits until a marker process is visible (the build is really running). */
static int wait_marker(cenv *e, crun *c, const char *marker, uint64_t deadline_ms)
{
    uint64_t until = sbx_now_ms() + deadline_ms;
    if (!g_opts.host_procs)
        return 1;
    while (sbx_now_ms() < until && !c->finished) {
        if (sbx_conformance_procs_with(marker, 1) > 0)
            return 1;
        sbx_loop_once(e->loop, 10);
    }
    return 0;
}

static void spin(cenv *e, uint64_t for_ms)
{
    uint64_t until = sbx_now_ms() + for_ms;
    while (sbx_now_ms() < until)
        sbx_loop_once(e->loop, 10);
}

static void assert_no_marker(const char *marker)
{
    if (g_opts.host_procs)
        assert_int_equal(sbx_conformance_procs_with(marker, 0), 0);
}

static void assert_once_in_order(const crun *c)
{
    assert_int_equal(c->started, 1);
    assert_int_equal(c->finished, 1);
    assert_false(c->order_bad);
    assert_true(c->t_started_us <= c->t_finished_us);
    assert_int_equal(strlen(c->res.log_tail), c->res.log_tail_len);
}

static int setup(void **state)
{
    cenv *e = calloc(1, sizeof(*e));
    if (!e || sbx_loop_new(&e->loop) != 0)
        return -1;
    e->p = g_make(e->loop);
    if (!e->p)
        return -1;
    e->nslots = e->p->ops->slots(e->p, &e->slots);
    if (e->nslots < 1)
        return -1;
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    cenv *e = *state;
    if (!e)
        return 0;
    if (e->p)
        e->p->ops->destroy(e->p);
    sbx_loop_free(e->loop);
    free(e);
    return 0;
}

/* ---- scenarios ---- */

static void t_success(void **state)
{
    cenv *e = *state;
    sbx_job job;
    crun c;
    char err[256] = "";

    job_init(&job, "echo conformance-out; echo conformance-err >&2; exit 0", 60);
    assert_int_equal(start_on(e, 0, &job, &c, err, sizeof(err)), 0);
    assert_true(wait_one(e, &c, ms(20000)));
    assert_once_in_order(&c);
    assert_int_equal(c.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(c.res.exit_code, 0);
    assert_non_null(strstr(c.res.log_tail, "conformance-out\n"));
    assert_non_null(strstr(c.res.log_tail, "conformance-err\n"));
    /* Nothing more arrives for a finished run. */
    spin(e, 200);
    assert_int_equal(c.started, 1);
    assert_int_equal(c.finished, 1);
}

static void t_failure(void **state)
{
    cenv *e = *state;
    sbx_job job;
    crun c;
    char err[256] = "";

    job_init(&job, "echo failing-build; exit 3", 60);
    assert_int_equal(start_on(e, 0, &job, &c, err, sizeof(err)), 0);
    assert_true(wait_one(e, &c, ms(20000)));
    assert_once_in_order(&c);
    assert_int_equal(c.res.outcome, SBX_OUTCOME_FAILED);
    assert_int_equal(c.res.exit_code, 3);
    assert_non_null(strstr(c.res.log_tail, "failing-build"));
}

static void t_argv(void **state)
{
    cenv *e = *state;
    char *argv[] = {"echo", "argv-ok", "two  words", NULL};
    sbx_job job;
    crun c;
    char err[256] = "";

    job_init(&job, NULL, 60);
    job.argv = argv;
    job.argc = 3;
    assert_int_equal(start_on(e, 0, &job, &c, err, sizeof(err)), 0);
    assert_true(wait_one(e, &c, ms(20000)));
    assert_once_in_order(&c);
    assert_int_equal(c.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_string_equal(c.res.log_tail, "argv-ok two  words\n");
}

static void t_env_files(void **state)
{
    cenv *e = *state;
    sbx_kv env[] = {{"SBX_CONF_A", "alpha beta"}, {"SBX_CONF_B", "$not-expanded"}};
    sbx_kv files[] = {{"conf/in.txt", "file-content\n"}, {"top.txt", "top\n"}};
    sbx_job job;
    crun c;
    char err[256] = "";

    setenv("SBX_CONF_HOST_LEAK", "leak", 1);
    job_init(&job,
             "printf 'A=%s B=%s\\n' \"$SBX_CONF_A\" \"$SBX_CONF_B\"; cat conf/in.txt top.txt; "
             "echo \"leak=${SBX_CONF_HOST_LEAK:-none}\"",
             60);
    job.env = env;
    job.nenv = 2;
    job.files = files;
    job.nfiles = 2;
    assert_int_equal(start_on(e, 0, &job, &c, err, sizeof(err)), 0);
    assert_true(wait_one(e, &c, ms(20000)));
    unsetenv("SBX_CONF_HOST_LEAK");
    assert_once_in_order(&c);
    assert_int_equal(c.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(c.res.log_tail, "A=alpha beta B=$not-expanded\n"));
    assert_non_null(strstr(c.res.log_tail, "file-content\ntop\n"));
    assert_non_null(strstr(c.res.log_tail, "leak=none\n"));
}

static void t_timeout(void **state)
{
    cenv *e = *state;
    sbx_job job;
    crun c;
    char err[256] = "", m[64], script[256];
    uint64_t took_ms;

    /* Ignores SIGTERM and leaves a background child: nothing may survive. */
    sbx_conformance_marker(m, 1);
    snprintf(script, sizeof(script), "trap '' TERM; %s & %s; wait", m, m);
    job_init(&job, script, 1);
    assert_int_equal(start_on(e, 0, &job, &c, err, sizeof(err)), 0);
    assert_true(wait_marker(e, &c, m, ms(5000)));
    assert_true(wait_one(e, &c, 1000 + ms(8000)));
    took_ms = (c.t_finished_us - c.t_start_us) / 1000;
    print_message("    timeout_s=1 -> FINISHED after %" PRIu64 " ms\n", took_ms);
    assert_once_in_order(&c);
    assert_int_equal(c.res.outcome, SBX_OUTCOME_TIMED_OUT);
    assert_true(took_ms >= 900);
    assert_no_marker(m);
}

static void t_cancel(void **state)
{
    cenv *e = *state;
    sbx_job job;
    crun c;
    char err[256] = "", m[64], script[256];
    uint64_t t_cancel;

    sbx_conformance_marker(m, 2);
    snprintf(script, sizeof(script), "echo before-cancel; %s", m);
    job_init(&job, script, 600);
    assert_int_equal(start_on(e, 0, &job, &c, err, sizeof(err)), 0);
    assert_true(wait_started(e, &c, ms(10000)));
    assert_true(wait_marker(e, &c, m, ms(5000)));
    t_cancel = sbx_now_us();
    e->p->ops->cancel(e->p, c.run);
    assert_true(wait_one(e, &c, ms(10000)));
    print_message("    cancel -> FINISHED: %.2f ms\n", (double)(c.t_finished_us - t_cancel) / 1000.0);
    assert_once_in_order(&c);
    assert_int_equal(c.res.outcome, SBX_OUTCOME_CANCELED);
    assert_no_marker(m);
}

static void t_cancel_before_started(void **state)
{
    cenv *e = *state;
    sbx_job job;
    crun c;
    char err[256] = "", m[64];

    sbx_conformance_marker(m, 3);
    job_init(&job, m, 600);
    assert_int_equal(start_on(e, 0, &job, &c, err, sizeof(err)), 0);
    e->p->ops->cancel(e->p, c.run); /* before the loop ran once */
    assert_true(wait_one(e, &c, ms(10000)));
    spin(e, 100);
    assert_int_equal(c.finished, 1);
    assert_false(c.order_bad);
    assert_int_equal(c.res.outcome, SBX_OUTCOME_CANCELED);
    assert_no_marker(m);
}

static void t_big_output(void **state)
{
    enum { N = 1500000 };
    cenv *e = *state;
    sbx_job job;
    crun c;
    char err[256] = "";
    char *want;
    size_t len = 0;

    /* seq 1 N: about 10.9 MB; only the last SBX_LOG_TAIL_MAX bytes come back. */
    want = malloc((size_t)N * 8 + 1);
    assert_non_null(want);
    for (int i = 1; i <= N; i++)
        len += (size_t)sprintf(want + len, "%d\n", i);
    job_init(&job, "seq 1 1500000", 120);
    assert_int_equal(start_on(e, 0, &job, &c, err, sizeof(err)), 0);
    assert_true(wait_one(e, &c, ms(60000)));
    assert_once_in_order(&c);
    assert_int_equal(c.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(c.res.log_tail_len, SBX_LOG_TAIL_MAX);
    assert_int_equal(c.res.log_tail[SBX_LOG_TAIL_MAX], '\0');
    assert_memory_equal(c.res.log_tail, want + len - SBX_LOG_TAIL_MAX, SBX_LOG_TAIL_MAX);
    /* The sink got every byte once, in order (its head is the start). */
    assert_false(c.out_bad);
    if (g_opts.output_lossy) {
        assert_true(c.out[SBX_STREAM_STDOUT].n + c.out[SBX_STREAM_STDERR].n <= len);
    } else {
        assert_int_equal(c.out[SBX_STREAM_STDOUT].n + c.out[SBX_STREAM_STDERR].n, len);
        assert_memory_equal(c.out[SBX_STREAM_STDOUT].head, want, OUT_KEEP);
    }
    free(want);
}

/* The output sink: stdout and stderr apart (or, unless opts.output_apart,
 * both as stdout), in order, nothing after FINISHED; live unless the provider only
 * learns the output at the end: the first line arrives while the build
 * still sleeps. */
static void t_live_output(void **state)
{
    cenv *e = *state;
    sbx_job job;
    crun c;
    char err[256] = "";

    job_init(&job, "echo live-out-1; echo live-err-1 >&2; sleep 2; echo live-out-2", 60);
    assert_int_equal(start_on(e, 0, &job, &c, err, sizeof(err)), 0);
    assert_true(wait_one(e, &c, ms(30000)));
    assert_once_in_order(&c);
    assert_int_equal(c.res.outcome, SBX_OUTCOME_SUCCEEDED);
    spin(e, 200);
    assert_false(c.out_bad);
    if (!g_opts.output_apart && c.out[SBX_STREAM_STDERR].n == 0) {
        /* One stream (vmpool's agent keeps one log file). */
        assert_string_equal(c.out[SBX_STREAM_STDOUT].head, "live-out-1\nlive-err-1\nlive-out-2\n");
    } else {
        assert_string_equal(c.out[SBX_STREAM_STDOUT].head, "live-out-1\nlive-out-2\n");
        assert_string_equal(c.out[SBX_STREAM_STDERR].head, "live-err-1\n");
    }
    if (!g_opts.output_at_end)
        assert_true(c.t_first_out_us + 1000000 < c.t_finished_us);
}

static void t_busy_slot(void **state)
{
    cenv *e = *state;
    sbx_job job, job2;
    crun a, b, u;
    char err[256] = "";
    sbx_run_req req = {0}; /* output: NULL unless a test sets it */
    int rc;

    job_init(&job, "sleep 600", 600);
    assert_int_equal(start_on(e, 0, &job, &a, err, sizeof(err)), 0);
    assert_true(wait_started(e, &a, ms(10000)));

    err[0] = '\0';
    job_init(&job2, "echo must-not-run", 60);
    rc = start_on(e, 0, &job2, &b, err, sizeof(err));
    assert_int_equal(rc, -EBUSY);
    assert_true(err[0] != '\0');

    err[0] = '\0';
    memset(&u, 0, sizeof(u));
    memset(&req, 0, sizeof(req));
    req.job = &job2;
    req.slot = "no-such-pool/no-such-slot";
    req.token = g_token++;
    req.attempt = 1;
    rc = e->p->ops->start(e->p, &req, on_event, &u, &u.run, err, sizeof(err));
    assert_true(rc < 0);
    assert_true(err[0] != '\0');

    e->p->ops->cancel(e->p, a.run);
    assert_true(wait_one(e, &a, ms(10000)));
    assert_int_equal(a.res.outcome, SBX_OUTCOME_CANCELED);
    spin(e, 100);
    assert_int_equal(b.started + b.finished + u.started + u.finished, 0);

    /* The slot is free again. */
    job_init(&job2, "echo slot-free-again", 60);
    assert_int_equal(start_on(e, 0, &job2, &b, err, sizeof(err)), 0);
    assert_true(wait_one(e, &b, ms(20000)));
    assert_int_equal(b.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(b.res.log_tail, "slot-free-again"));
}

static void t_concurrency(void **state)
{
    enum { MAXN = 8 };
    cenv *e = *state;
    sbx_job jobs[MAXN];
    crun cs[MAXN], *ps[MAXN];
    char scripts[MAXN][64], want[32], err[256] = "";
    size_t n = g_opts.concurrency > 0 ? (size_t)g_opts.concurrency : e->nslots;
    uint64_t t0 = sbx_now_ms(), took;
    int all_running = 0;

    if (n > e->nslots)
        n = e->nslots;
    if (n > MAXN)
        n = MAXN;
    for (size_t i = 0; i < n; i++) {
        snprintf(scripts[i], sizeof(scripts[i]), "sleep 2; echo done-%zu", i);
        job_init(&jobs[i], scripts[i], 60);
        assert_int_equal(start_on(e, i, &jobs[i], &cs[i], err, sizeof(err)), 0);
        ps[i] = &cs[i];
    }
    /* All of them STARTED and none FINISHED at some moment. */
    while (!all_running && sbx_now_ms() < t0 + ms(10000)) {
        size_t st = 0, fin = 0;
        for (size_t i = 0; i < n; i++) {
            st += cs[i].started > 0;
            fin += cs[i].finished > 0;
        }
        if (fin)
            break;
        all_running = st == n;
        sbx_loop_once(e->loop, 10);
    }
    assert_true(all_running);
    assert_true(wait_finished(e, ps, n, ms(30000)));
    took = sbx_now_ms() - t0;
    print_message("    %zu builds of 2 s at once took %" PRIu64 " ms\n", n, took);
    for (size_t i = 0; i < n; i++) {
        assert_once_in_order(&cs[i]);
        assert_int_equal(cs[i].res.outcome, SBX_OUTCOME_SUCCEEDED);
        snprintf(want, sizeof(want), "done-%zu\n", i);
        assert_string_equal(cs[i].res.log_tail, want);
    }
    if (n >= 2)
        assert_true(took < 2000 * n - 500); /* not one after the other */
}

static void t_destroy_running(void **state)
{
    cenv *e = *state;
    sbx_job jobs[2];
    crun cs[2];
    char err[256] = "", m[64];
    size_t n = e->nslots >= 2 ? 2 : 1;

    sbx_conformance_marker(m, 4);
    for (size_t i = 0; i < n; i++) {
        job_init(&jobs[i], m, 600);
        assert_int_equal(start_on(e, i, &jobs[i], &cs[i], err, sizeof(err)), 0);
        assert_true(wait_started(e, &cs[i], ms(10000)));
        assert_true(wait_marker(e, &cs[i], m, ms(5000)));
    }
    e->p->ops->destroy(e->p);
    e->p = NULL;
    spin(e, 300);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(cs[i].finished, 0);
    assert_no_marker(m);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void t_latency(void **state)
{
    enum { RUNS = 10 };
    cenv *e = *state;
    uint64_t st[RUNS], fin[RUNS];
    sbx_job job;
    crun c;
    char err[256] = "";

    for (int i = 0; i < RUNS; i++) {
        job_init(&job, "true", 60);
        assert_int_equal(start_on(e, 0, &job, &c, err, sizeof(err)), 0);
        assert_true(wait_one(e, &c, ms(20000)));
        assert_once_in_order(&c);
        assert_int_equal(c.res.outcome, SBX_OUTCOME_SUCCEEDED);
        st[i] = c.t_started_us - c.t_start_us;
        fin[i] = c.t_finished_us - c.t_start_us;
    }
    qsort(st, RUNS, sizeof(st[0]), cmp_u64);
    qsort(fin, RUNS, sizeof(fin[0]), cmp_u64);
    print_message("    start -> STARTED: median %.2f ms, max %.2f ms; start -> FINISHED (true): "
                  "median %.2f ms, max %.2f ms\n",
                  (double)st[RUNS / 2] / 1000.0, (double)st[RUNS - 1] / 1000.0,
                  (double)fin[RUNS / 2] / 1000.0, (double)fin[RUNS - 1] / 1000.0);
}

int sbx_conformance_run(const char *name, sbx_conformance_make make,
                        const sbx_conformance_opts *opts)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(t_success, setup, teardown),
        cmocka_unit_test_setup_teardown(t_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(t_argv, setup, teardown),
        cmocka_unit_test_setup_teardown(t_env_files, setup, teardown),
        cmocka_unit_test_setup_teardown(t_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(t_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(t_cancel_before_started, setup, teardown),
        cmocka_unit_test_setup_teardown(t_big_output, setup, teardown),
        cmocka_unit_test_setup_teardown(t_live_output, setup, teardown),
        cmocka_unit_test_setup_teardown(t_busy_slot, setup, teardown),
        cmocka_unit_test_setup_teardown(t_concurrency, setup, teardown),
        cmocka_unit_test_setup_teardown(t_destroy_running, setup, teardown),
        cmocka_unit_test_setup_teardown(t_latency, setup, teardown),
    };
    g_make = make;
    memset(&g_opts, 0, sizeof(g_opts));
    if (opts)
        g_opts = *opts;
    if (g_opts.time_scale <= 0)
        g_opts.time_scale = 1;
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
