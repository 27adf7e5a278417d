/* test_limits.c — hostile builds against the limits of a whole sandbox:
 * memory (several processes plus /tmp and /dev/shm files together), CPU
 * (more threads of work than cpus), pids (a fork bomb) and disk (the
 * workspace and /tmp together). Each build reports how far it got on
 * stdout; the run's log tail holds the last figure, which must stay within
 * 10 % of the limit, and the run's error must name the limit.
 *
 * Real bwrap and real cgroups, through the local provider as the worker
 * runs it. Needs root (per-slot uids, cgroups, the per-sandbox tmpfs):
 * skipped otherwise. Each build is bounded: a hog stops by itself at four
 * times its limit, so a broken limit fails the test instead of the host.
 * The uid range differs from test_local's so both may run at once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cgroup.h"
#include "log.h"
#include "provider.h"
#include "sandbox.h"

static char g_work_dir[256];
static int g_uid_base;
static int64_t g_token = 9000;

typedef struct lrun {
    sbx_run *run;
    int started, finished;
    sbx_result res;
} lrun;

static void on_event(void *arg, sbx_run_event ev, const sbx_result *res)
{
    lrun *r = arg;
    if (ev == SBX_RUN_STARTED) {
        r->started++;
        return;
    }
    r->finished++;
    r->res = *res;
}

static sbx_provider *make_provider(sbx_loop *loop)
{
    sbx_local_config cfg;
    sbx_provider *p = NULL;
    char err[256];

    memset(&cfg, 0, sizeof(cfg));
    cfg.node = "limitbox";
    cfg.slots = 1;
    cfg.work_dir = g_work_dir;
    cfg.uid_base = g_uid_base;
    cfg.default_memory_mb = 512;
    cfg.default_pids = 64;
    cfg.default_cpus = 1;
    cfg.kill_grace_ms = 1000;
    cfg.bwrap = "bwrap";
    if (sbx_local_new(loop, &cfg, &p, err, sizeof(err)) != 0) {
        print_error("sbx_local_new: %s\n", err);
        return NULL;
    }
    return p;
}

/* Runs job in slot 0 to the end; the result is in r->res. */
static void run_job(sbx_job *job, lrun *r)
{
    sbx_loop *loop = NULL;
    sbx_provider *p;
    const char **slots;
    sbx_run_req req = {0}; /* output: NULL unless a test sets it */
    char err[256] = "";
    uint64_t until;

    assert_int_equal(sbx_loop_new(&loop), 0);
    p = make_provider(loop);
    assert_non_null(p);
    p->ops->slots(p, &slots);
    memset(r, 0, sizeof(*r));
    memset(&req, 0, sizeof(req));
    snprintf(job->job_id, sizeof(job->job_id), "j_limits_%" PRId64, g_token);
    snprintf(job->project_id, sizeof(job->project_id), "p_limits");
    req.job = job;
    req.slot = slots[0];
    req.token = g_token++;
    req.attempt = 1;
    if (p->ops->start(p, &req, on_event, r, &r->run, err, sizeof(err)) != 0)
        print_error("start: %s\n", err);
    assert_non_null(r->run);
    until = sbx_now_ms() + 120000;
    while (!r->finished && sbx_now_ms() < until)
        sbx_loop_once(loop, 20);
    assert_int_equal(r->finished, 1);
    p->ops->destroy(p);
    sbx_loop_free(loop);
}

/* The last "<key>=<number>" in the log tail; -1 if none. */
static double last_figure(const char *tail, const char *key)
{
    char pat[32];
    const char *p = tail, *hit = NULL;
    snprintf(pat, sizeof(pat), "%s=", key);
    while ((p = strstr(p, pat)) != NULL)
        hit = p++;
    return hit ? atof(hit + strlen(pat)) : -1;
}

static void need_cgroups(void)
{
    if (geteuid() != 0 || !sbx_cgroup_mode()) {
        print_message("    needs root and a writable cgroup hierarchy\n");
        skip();
    }
}

/* ---- memory: processes, /tmp and /dev/shm together ---- */

/* 64 MB into /tmp, 64 MB into /dev/shm, then children of 32 MB each, held
 * at once; total= is what is held. A child that dies (the OOM killer) ends
 * the build, so the last figure was all alive together. */
static const char mem_hog[] =
    "import os, signal, sys\n"
    "MB = 1 << 20\n"
    "total = 0\n"
    "def report():\n"
    "    print('total=%d' % total, flush=True)\n"
    "for path in ('/tmp/fill', '/dev/shm/fill'):\n"
    "    with open(path, 'wb') as f:\n"
    "        for i in range(64):\n"
    "            f.write(b'x' * MB); f.flush(); total += 1\n"
    "            if i % 8 == 7: report()\n"
    "kids = []\n"
    "while total < 1024:\n"
    "    r, w = os.pipe()\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        os.close(r)\n"
    "        hold = bytearray(32 * MB)\n"
    "        for i in range(0, len(hold), 4096): hold[i] = 1\n"
    "        os.write(w, b'x')\n"
    "        os.close(w)\n"
    "        signal.pause()\n"
    "    os.close(w)\n"
    "    ok = os.read(r, 1)\n"
    "    os.close(r)\n"
    "    if not ok or any(os.waitpid(k, os.WNOHANG)[0] for k in kids):\n"
    "        print('a child died', flush=True); sys.exit(1)\n"
    "    kids.append(pid); total += 32; report()\n"
    "print('cap reached', flush=True)\n";

static void t_memory_whole_sandbox(void **state)
{
    sbx_job job;
    char *argv[] = {"python3", "-c", (char *)mem_hog, NULL};
    lrun r;
    double total;
    (void)state;
    need_cgroups();

    memset(&job, 0, sizeof(job));
    job.argv = argv;
    job.timeout_s = 60;
    job.memory_mb = 256;
    job.disk_mb = 1024;
    run_job(&job, &r);
    total = last_figure(r.res.log_tail, "total");
    print_message("    memory_mb=256: the build held %.0f MB (processes + /tmp + /dev/shm)\n", total);
    if (!strstr(r.res.error, "memory limit"))
        print_error("outcome %d error '%s' tail:\n%s\n", r.res.outcome, r.res.error,
                    r.res.log_tail);
    assert_true(total >= 128);           /* it got past the files */
    assert_true(total <= 256 * 1.1);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_FAILED);
    assert_non_null(strstr(r.res.error, "memory limit of 256 MB reached: killed by the OOM killer"));
}

/* ---- CPU: three busy processes, one core ---- */

static const char cpu_hog[] =
    "import os, time\n"
    "t0 = time.time()\n"
    "kids = []\n"
    "for k in range(3):\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        while time.time() - t0 < 4: pass\n"
    "        os._exit(0)\n"
    "    kids.append(pid)\n"
    "for k in kids: os.waitpid(k, 0)\n"
    "t = os.times()\n"
    "print('cores=%.3f' % ((t.children_user + t.children_system) / (time.time() - t0)), flush=True)\n";

static void t_cpu_quota(void **state)
{
    sbx_job job;
    char *argv[] = {"python3", "-c", (char *)cpu_hog, NULL};
    lrun r;
    double cores;
    (void)state;
    need_cgroups();

    memset(&job, 0, sizeof(job));
    job.argv = argv;
    job.timeout_s = 60;
    job.cpus = 1;
    run_job(&job, &r);
    cores = last_figure(r.res.log_tail, "cores");
    print_message("    cpus=1: three spinning processes used %.2f cores\n", cores);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_true(cores > 0.1); /* measured at all; the host may be busy */
    assert_true(cores <= 1.1);
}

/* ---- pids: a fork bomb ---- */

static void t_fork_bomb(void **state)
{
    sbx_loop *loop = NULL;
    sbx_provider *p;
    const char **slots;
    sbx_job job;
    sbx_run_req req = {0}; /* output: NULL unless a test sets it */
    lrun r;
    char err[256] = "";
    int max = 0;
    uint64_t until;
    (void)state;
    need_cgroups();

    assert_int_equal(sbx_loop_new(&loop), 0);
    p = make_provider(loop);
    assert_non_null(p);
    p->ops->slots(p, &slots);
    memset(&job, 0, sizeof(job));
    snprintf(job.job_id, sizeof(job.job_id), "j_limits_bomb");
    job.script = "bomb() { bomb | bomb & }; bomb; sleep 3; echo bomb-survived";
    job.timeout_s = 5;
    job.pids = 32;
    memset(&r, 0, sizeof(r));
    memset(&req, 0, sizeof(req));
    req.job = &job;
    req.slot = slots[0];
    req.token = g_token++;
    req.attempt = 1;
    assert_int_equal(p->ops->start(p, &req, on_event, &r, &r.run, err, sizeof(err)), 0);
    until = sbx_now_ms() + 30000;
    while (!r.finished && sbx_now_ms() < until) {
        int n = sbx_sandbox_count_uid((uid_t)g_uid_base);
        if (n > max)
            max = n;
        sbx_loop_once(loop, 5);
    }
    assert_true(r.finished);
    print_message("    pids=32: the fork bomb reached %d processes (limit 32 + bwrap's 2)\n", max);
    assert_true(max > 2);
    assert_true(max <= 32 + 2);
    assert_int_equal(sbx_sandbox_count_uid((uid_t)g_uid_base), 0);
    p->ops->destroy(p);
    sbx_loop_free(loop);
}

/* ---- disk: the workspace and /tmp together ---- */

static const char disk_hog[] =
    "import sys\n"
    "MB = 1 << 20\n"
    "total = 0\n"
    "try:\n"
    "    for path in ('/workspace/fill', '/tmp/fill'):\n"
    "        with open(path, 'wb') as f:\n"
    "            for i in range(48):\n"
    "                f.write(b'x' * MB); f.flush(); total += 1\n"
    "                if i % 4 == 3: print('total=%d' % total, flush=True)\n"
    "except OSError as e:\n"
    "    print('total=%d %s' % (total, e), flush=True); sys.exit(1)\n"
    "print('wrote all', flush=True)\n";

static void t_disk_workspace_and_tmp(void **state)
{
    sbx_job job;
    char *argv[] = {"python3", "-c", (char *)disk_hog, NULL};
    lrun r;
    double total;
    (void)state;
    need_cgroups();

    memset(&job, 0, sizeof(job));
    job.argv = argv;
    job.timeout_s = 60;
    job.memory_mb = 512;
    job.disk_mb = 64;
    run_job(&job, &r);
    total = last_figure(r.res.log_tail, "total");
    print_message("    disk_mb=64: the build wrote %.0f MB (/workspace + /tmp)\n", total);
    if (!strstr(r.res.error, "disk limit"))
        print_error("outcome %d error '%s' tail:\n%s\n", r.res.outcome, r.res.error,
                    r.res.log_tail);
    assert_true(total >= 48);            /* the workspace file fitted */
    assert_true(total <= 64 * 1.1);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_FAILED);
    assert_non_null(strstr(r.res.log_tail, "No space left"));
    assert_string_equal(r.res.error, "disk limit of 64 MB reached");
}

/* Nothing of the sandboxes above is left mounted or in a cgroup. */
static void t_nothing_left(void **state)
{
    char line[1024];
    FILE *f;
    int mounts = 0;
    (void)state;
    need_cgroups();

    f = fopen("/proc/self/mountinfo", "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f))
        if (strstr(line, g_work_dir))
            mounts++;
    fclose(f);
    assert_int_equal(mounts, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_memory_whole_sandbox),
        cmocka_unit_test(t_cpu_quota),
        cmocka_unit_test(t_fork_bomb),
        cmocka_unit_test(t_disk_workspace_and_tmp),
        cmocka_unit_test(t_nothing_left),
    };
    int failed;

    if (getenv("SBX_TEST_FILTER"))
        cmocka_set_test_filter(getenv("SBX_TEST_FILTER"));
    sbx_log_set_level(getenv("SBX_TEST_DEBUG") ? SBX_LOG_DEBUG : SBX_LOG_WARN);
    g_uid_base = 600000 + (int)(getpid() % 100000) * 4;
    snprintf(g_work_dir, sizeof(g_work_dir), "/tmp/sbx-test-limits-%d", (int)getpid());
    if (mkdir(g_work_dir, 0711) < 0 || chmod(g_work_dir, 0711) < 0) {
        fprintf(stderr, "mkdir %s: %s\n", g_work_dir, strerror(errno));
        return 1;
    }
    failed = cmocka_run_group_tests_name("limits", tests, NULL, NULL);
    sbx_sandbox_sweep_cgroups(g_work_dir, g_uid_base);
    sbx_sandbox_remove_tree(g_work_dir);
    return failed ? 1 : 0;
}
