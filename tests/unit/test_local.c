/* test_local.c — the local provider: first the shared conformance scenarios,
 * then what only a bubblewrap sandbox on this host promises: the slot's uid,
 * no network unless both sides allow it, read-only host, rlimits, a fork
 * bomb and a memory hog contained, file paths that escape refused, graceful
 * cancel, daemons killed, secrets kept off the host's command lines, and the
 * host chores (uid sweep, stale workspaces).
 *
 * Real bwrap, real processes. Runs as root to test the per-slot uids (the
 * worker's production mode); as another user those tests are skipped. The
 * uid range is derived from our pid so two runs at once (plain and ASan
 * builds) never sweep each other's builds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "conformance.h"
#include "log.h"
#include "provider.h"
#include "cgroup.h"
#include "preview.h"
#include "sandbox.h"

static char g_work_dir[256];
static int g_uid_base;
static int g_root;
static int64_t g_token = 5000;

/* ---- a provider with a given config ---- */

typedef struct lcfg {
    int allow_network;
    int kill_grace_ms;
    const char *bwrap;
} lcfg;

static sbx_provider *make_cfg(sbx_loop *loop, const lcfg *o)
{
    sbx_local_config cfg;
    sbx_provider *p = NULL;
    char err[256];

    memset(&cfg, 0, sizeof(cfg));
    cfg.node = "testbox";
    cfg.slots = 2;
    cfg.work_dir = g_work_dir;
    cfg.uid_base = g_uid_base;
    cfg.allow_network = o->allow_network;
    cfg.default_memory_mb = 512;
    cfg.default_pids = 64;
    cfg.default_cpus = 1;
    cfg.kill_grace_ms = o->kill_grace_ms;
    cfg.bwrap = o->bwrap;
    if (sbx_local_new(loop, &cfg, &p, err, sizeof(err)) != 0) {
        print_error("sbx_local_new: %s\n", err);
        return NULL;
    }
    return p;
}

static sbx_provider *make_default(sbx_loop *loop)
{
    lcfg o = {0, 1000, "bwrap"};
    return make_cfg(loop, &o);
}

/* ---- running one job ---- */

typedef struct lrun {
    sbx_run *run;
    int started, finished, order_bad;
    uint64_t t_start_ms, t_started_ms, t_finished_ms;
    int64_t token;
    sbx_result res;
    char started_url[256];    /* preview_url at STARTED */
    sbx_sandbox_use started_use;
} lrun;

typedef struct lenv {
    sbx_loop *loop;
    sbx_provider *p;
    const char **slots;
} lenv;

static void on_event(void *arg, sbx_run_event ev, const sbx_result *res)
{
    lrun *r = arg;
    if (r->finished)
        r->order_bad = 1;
    if (ev == SBX_RUN_STARTED) {
        r->started++;
        r->t_started_ms = sbx_now_ms();
        snprintf(r->started_url, sizeof(r->started_url), "%s", res->preview_url);
        r->started_use = res->sandbox;
        return;
    }
    if (!r->started)
        r->order_bad = 1;
    r->finished++;
    r->t_finished_ms = sbx_now_ms();
    r->res = *res;
}

static int env_open(lenv *e, const lcfg *o)
{
    memset(e, 0, sizeof(*e));
    if (sbx_loop_new(&e->loop) != 0)
        return -1;
    e->p = o ? make_cfg(e->loop, o) : make_default(e->loop);
    if (!e->p)
        return -1;
    e->p->ops->slots(e->p, &e->slots);
    return 0;
}

static void env_close(lenv *e)
{
    if (e->p)
        e->p->ops->destroy(e->p);
    if (e->loop)
        sbx_loop_free(e->loop);
}

static void job_init(sbx_job *j, const char *script, int timeout_s)
{
    memset(j, 0, sizeof(*j));
    snprintf(j->job_id, sizeof(j->job_id), "j_local_%" PRId64, g_token);
    snprintf(j->project_id, sizeof(j->project_id), "p_local");
    j->script = (char *)script;
    j->timeout_s = timeout_s;
}

static int start(lenv *e, int slot, const sbx_job *job, lrun *r, char *err, size_t errlen)
{
    sbx_run_req req = {0}; /* output: NULL unless a test sets it */
    memset(r, 0, sizeof(*r));
    r->token = g_token++;
    req.job = job;
    req.slot = e->slots[slot];
    req.token = r->token;
    req.attempt = 1;
    r->t_start_ms = sbx_now_ms();
    return e->p->ops->start(e->p, &req, on_event, r, &r->run, err, errlen);
}

static int wait_done(lenv *e, lrun *r, uint64_t deadline_ms)
{
    uint64_t until = sbx_now_ms() + deadline_ms;
    while (!r->finished && sbx_now_ms() < until)
        sbx_loop_once(e->loop, 20);
    return r->finished;
}

/* Starts, waits, checks the callback contract; the result is in r->res. */
static void run_job(lenv *e, int slot, const sbx_job *job, lrun *r)
{
    char err[256] = "";
    int rc = start(e, slot, job, r, err, sizeof(err));
    if (rc)
        print_error("start: %s\n", err);
    assert_int_equal(rc, 0);
    assert_true(wait_done(e, r, 30000));
    assert_int_equal(r->started, 1);
    assert_int_equal(r->finished, 1);
    assert_false(r->order_bad);
}

static void run_script(const char *script, int slot, lrun *r)
{
    lenv e;
    sbx_job job;
    assert_int_equal(env_open(&e, NULL), 0);
    job_init(&job, script, 60);
    run_job(&e, slot, &job, r);
    env_close(&e);
}

static int wait_marker(lenv *e, lrun *r, const char *marker)
{
    uint64_t until = sbx_now_ms() + 5000;
    while (sbx_now_ms() < until && !r->finished) {
        if (sbx_conformance_procs_with(marker, 1) > 0)
            return 1;
        sbx_loop_once(e->loop, 10);
    }
    return 0;
}

static int limit_of(const char *limits, const char *name, long long *soft, long long *hard)
{
    const char *l = strstr(limits, name);
    char s[32], h[32];
    if (!l || sscanf(l + strlen(name), " %31s %31s", s, h) != 2)
        return -1;
    *soft = strcmp(s, "unlimited") == 0 ? -1 : atoll(s);
    *hard = strcmp(h, "unlimited") == 0 ? -1 : atoll(h);
    return 0;
}

static int dir_entries(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *de;
    int n = 0;
    if (!d)
        return -1;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

/* ---- identity and filesystem ---- */

static void t_identity(void **state)
{
    lrun r;
    char want[64];
    (void)state;

    run_script("id -u; id -g; id -G; whoami; pwd; echo \"HOME=$HOME\"; hostname; "
               "for p in /root /home /var /work /etc/shadow /etc/sudoers /sys /run; do "
               "test -e $p && echo HAS$p; done; ls /etc | tr '\\n' ' '; echo",
               0, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    if (g_root) {
        snprintf(want, sizeof(want), "%d\n%d\n%d\nbuild\n", g_uid_base, g_uid_base, g_uid_base);
        assert_true(strncmp(r.res.log_tail, want, strlen(want)) == 0);
    }
    assert_non_null(strstr(r.res.log_tail, "\n/workspace\nHOME=/workspace\nsbx\n"));
    assert_null(strstr(r.res.log_tail, "HAS/"));
    assert_non_null(strstr(r.res.log_tail, "group "));
    assert_non_null(strstr(r.res.log_tail, "passwd "));
    assert_null(strstr(r.res.log_tail, "shadow"));
}

static void t_second_slot_uid(void **state)
{
    lrun r;
    char want[32];
    (void)state;
    if (!g_root)
        skip();
    run_script("id -u", 1, &r);
    snprintf(want, sizeof(want), "%d\n", g_uid_base + 1);
    assert_string_equal(r.res.log_tail, want);
}

static void t_read_only_host(void **state)
{
    lrun r;
    (void)state;
    run_script("touch /usr/x 2>/dev/null && echo W_USR; touch /x 2>/dev/null && echo W_ROOT; "
               "touch /etc/passwd 2>/dev/null && echo W_ETC; touch /dev/x 2>/dev/null && echo W_DEV; "
               "touch /tmp/x && echo TMP_OK; touch /workspace/x && echo WS_OK; "
               "touch /dev/shm/x && echo SHM_OK; echo > /dev/null && echo DEVNULL_OK; "
               "unshare -U true 2>/dev/null && echo USERNS; true",
               0, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_null(strstr(r.res.log_tail, "W_"));
    assert_null(strstr(r.res.log_tail, "USERNS"));
    assert_non_null(strstr(r.res.log_tail, "TMP_OK\nWS_OK\nSHM_OK\nDEVNULL_OK\n"));
}

static void t_workspace_lifecycle(void **state)
{
    lenv e;
    sbx_job job;
    sbx_kv files[] = {{"src/in.txt", "input\n"}};
    lrun r;
    char err[256] = "", ws[512], out[600], in[600];
    struct stat st;
    uint64_t until;
    (void)state;

    assert_int_equal(env_open(&e, NULL), 0);
    job_init(&job, "cat src/in.txt > out.txt; sleep 1", 60);
    job.files = files;
    job.nfiles = 1;
    assert_int_equal(start(&e, 0, &job, &r, err, sizeof(err)), 0);
    /* As root the workspace is ws/ on the sandbox's own tmpfs (disk_total). */
    snprintf(ws, sizeof(ws), "%s/0-%" PRId64 "%s", g_work_dir, r.token, g_root ? "/ws" : "");
    snprintf(out, sizeof(out), "%s/out.txt", ws);
    snprintf(in, sizeof(in), "%s/src/in.txt", ws);
    until = sbx_now_ms() + 5000;
    while (stat(out, &st) != 0 && sbx_now_ms() < until && !r.finished)
        sbx_loop_once(e.loop, 10);
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(stat(ws, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    if (g_root) {
        assert_int_equal(st.st_uid, (uid_t)g_uid_base);
        assert_int_equal(stat(in, &st), 0);
        assert_int_equal(st.st_uid, (uid_t)g_uid_base);
    }
    assert_true(wait_done(&e, &r, 10000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    /* Gone by the time FINISHED is delivered. */
    assert_int_equal(lstat(ws, &st), -1);
    assert_int_equal(errno, ENOENT);
    env_close(&e);
}

static void t_files_escaping_refused(void **state)
{
    static const char *const bad[] = {"../escape", "/etc/evil", "a/../../escape", "", "a//b",
                                      "./x", "a/", "..", "a/./b"};
    lenv e;
    sbx_job job;
    sbx_kv files[2];
    lrun r;
    char err[256], path[512];
    struct stat st;
    (void)state;

    assert_int_equal(env_open(&e, NULL), 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        job_init(&job, "echo must-not-run", 60);
        files[0].key = (char *)bad[i];
        files[0].value = "x";
        job.files = files;
        job.nfiles = 1;
        err[0] = '\0';
        assert_int_equal(start(&e, 0, &job, &r, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "files"));
    }
    /* Clashing paths are found while writing: the half-made workspace goes. */
    files[0].key = "a";
    files[0].value = "1";
    files[1].key = "a/b";
    files[1].value = "2";
    job.nfiles = 2;
    err[0] = '\0';
    assert_int_equal(start(&e, 0, &job, &r, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "files"));
    sbx_loop_once(e.loop, 50);
    assert_int_equal(r.started + r.finished, 0);
    assert_int_equal(dir_entries(g_work_dir), 0);
    snprintf(path, sizeof(path), "%s/../escape", g_work_dir);
    assert_int_equal(stat(path, &st), -1);
    /* The slot was never taken. */
    job_init(&job, "echo fine", 60);
    run_job(&e, 0, &job, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    env_close(&e);
}

static void t_env_not_on_cmdline(void **state)
{
    lenv e;
    sbx_job job;
    sbx_kv env[] = {{"SBX_SECRET", "hunter2-not-for-ps"}};
    lrun r;
    char err[256] = "", m[64], script[128];
    (void)state;

    sbx_conformance_marker(m, 20);
    snprintf(script, sizeof(script), "echo \"len=${#SBX_SECRET}\"; %s", m);
    assert_int_equal(env_open(&e, NULL), 0);
    job_init(&job, script, 60);
    job.env = env;
    job.nenv = 1;
    assert_int_equal(start(&e, 0, &job, &r, err, sizeof(err)), 0);
    assert_true(wait_marker(&e, &r, m));
    assert_int_equal(sbx_conformance_procs_with("hunter2", 0), 0);
    e.p->ops->cancel(e.p, r.run);
    assert_true(wait_done(&e, &r, 10000));
    assert_non_null(strstr(r.res.log_tail, "len=18\n"));
    env_close(&e);
}

/* ---- network ---- */

static int listen_local(int *port)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 1) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        return -1;
    *port = ntohs(a.sin_port);
    return fd;
}

/* Whether the sandbox sees our listening socket in its /proc/net/tcp. */
static int sees_host_socket(int allow_network, int job_network, int port)
{
    lcfg o = {allow_network, 1000, "bwrap"};
    lenv e;
    sbx_job job;
    lrun r;
    char script[128];
    int seen;

    snprintf(script, sizeof(script), "grep -c ':%04X ' /proc/net/tcp; true", port);
    assert_int_equal(env_open(&e, &o), 0);
    job_init(&job, script, 60);
    job.network = job_network;
    run_job(&e, 0, &job, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    seen = atoi(r.res.log_tail) > 0;
    env_close(&e);
    return seen;
}

static void t_network(void **state)
{
    int port = 0, fd = listen_local(&port);
    (void)state;
    assert_true(fd >= 0);
    assert_false(sees_host_socket(0, 1, port)); /* the job asks, the host refuses */
    assert_false(sees_host_socket(1, 0, port)); /* the host allows, the job does not ask */
    /* Both: the build has network, in a namespace of its own (netns.c), so
     * the host's sockets stay out of its /proc/net/tcp. */
    assert_false(sees_host_socket(1, 1, port));
    close(fd);
}

/* ---- limits ---- */

static void t_rlimits(void **state)
{
    lenv e;
    sbx_job job;
    lrun r;
    long long s, h;
    (void)state;

    assert_int_equal(env_open(&e, NULL), 0);
    job_init(&job, "cat /proc/self/limits", 30);
    job.memory_mb = 256;
    job.pids = 40;
    job.disk_mb = 16;
    job.cpus = 2;
    run_job(&e, 0, &job, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(limit_of(r.res.log_tail, "Max address space", &s, &h), 0);
    assert_true(s == 256LL << 20 && h == 256LL << 20);
    assert_int_equal(limit_of(r.res.log_tail, "Max processes", &s, &h), 0);
    assert_true(s == 42 && h == 42);
    assert_int_equal(limit_of(r.res.log_tail, "Max file size", &s, &h), 0);
    assert_true(s == 16LL << 20 && h == 16LL << 20);
    assert_int_equal(limit_of(r.res.log_tail, "Max cpu time", &s, &h), 0);
    assert_true(s == 60 && h == 65);
    assert_int_equal(limit_of(r.res.log_tail, "Max core file size", &s, &h), 0);
    assert_true(s == 0 && h == 0);
    env_close(&e);
}

static void t_fork_bomb_contained(void **state)
{
    lenv e;
    sbx_job job;
    lrun r;
    char err[256] = "";
    int max = 0;
    uint64_t until;
    (void)state;
    if (!g_root)
        skip();

    assert_int_equal(env_open(&e, NULL), 0);
    job_init(&job, "bomb() { bomb | bomb & }; bomb; sleep 3; echo bomb-survived", 4);
    job.pids = 32;
    assert_int_equal(start(&e, 0, &job, &r, err, sizeof(err)), 0);
    until = sbx_now_ms() + 20000;
    while (!r.finished && sbx_now_ms() < until) {
        int n = sbx_sandbox_count_uid((uid_t)g_uid_base);
        if (n > max)
            max = n;
        sbx_loop_once(e.loop, 5);
    }
    assert_true(r.finished);
    print_message("    fork bomb: at most %d processes of the slot uid (limit 32 + 2)\n", max);
    assert_true(max > 2);
    assert_true(max <= 32 + 2);
    assert_non_null(strstr(r.res.log_tail, "fork"));
    assert_int_equal(sbx_sandbox_count_uid((uid_t)g_uid_base), 0);
    env_close(&e);
}

/* pids is what the build gets: its shell plus pids-1 children. */
static void t_pids_limit_exact(void **state)
{
    lenv e;
    sbx_job job;
    lrun r;
    const char *last;
    (void)state;
    if (!g_root)
        skip();

    assert_int_equal(env_open(&e, NULL), 0);
    job_init(&job, "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); echo $i; done", 30);
    job.pids = 32;
    run_job(&e, 0, &job, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_FAILED);
    assert_non_null(strstr(r.res.log_tail, "Cannot fork"));
    last = strstr(r.res.log_tail, "\n31\n");
    if (!last)
        print_error("tail: %s\n", r.res.log_tail);
    assert_non_null(last);
    assert_null(strstr(r.res.log_tail, "\n32\n"));
    assert_int_equal(sbx_sandbox_count_uid((uid_t)g_uid_base), 0);
    env_close(&e);
}

static void t_memory_hog_killed(void **state)
{
    lenv e;
    sbx_job job;
    lrun r;
    (void)state;

    assert_int_equal(env_open(&e, NULL), 0);
    job_init(&job, "dd if=/dev/zero of=/dev/null bs=256M count=1", 30);
    job.memory_mb = 64;
    run_job(&e, 0, &job, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_FAILED);
    assert_non_null(strstr(r.res.log_tail, "memory exhausted"));
    /* The same with room for it works: the limit is what stopped it. */
    job_init(&job, "dd if=/dev/zero of=/dev/null bs=256M count=1 2>/dev/null && echo dd-ok", 30);
    job.memory_mb = 1024;
    run_job(&e, 0, &job, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_string_equal(r.res.log_tail, "dd-ok\n");
    env_close(&e);
}

static void t_disk_limits(void **state)
{
    lenv e;
    sbx_job job;
    lrun r;
    (void)state;

    assert_int_equal(env_open(&e, NULL), 0);
    job_init(&job, "head -c 4000000 /dev/zero > big", 30);
    job.disk_mb = 1;
    run_job(&e, 0, &job, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_FAILED);
    assert_int_equal(r.res.exit_code, 128 + SIGXFSZ);
    job_init(&job, "for i in 1 2 3; do head -c 700000 /dev/zero > /tmp/f$i || echo TMP_FULL; done", 30);
    job.disk_mb = 1;
    run_job(&e, 0, &job, &r);
    assert_non_null(strstr(r.res.log_tail, "TMP_FULL"));
    env_close(&e);
}

/* /tmp is RAM: its size is the smaller of disk_mb and memory_mb. */
static void t_tmpfs_size(void **state)
{
    lenv e;
    sbx_job job;
    lrun r;
    long long blocks, bsize;
    const char *p;
    (void)state;

    assert_int_equal(env_open(&e, NULL), 0);
    job_init(&job, "stat -f -c 'tmp=%b*%S' /tmp; stat -f -c 'shm=%b*%S' /dev/shm", 30);
    job.disk_mb = 16;
    job.memory_mb = 256;
    run_job(&e, 0, &job, &r);
    p = strstr(r.res.log_tail, "tmp=");
    assert_non_null(p);
    assert_int_equal(sscanf(p, "tmp=%lld*%lld", &blocks, &bsize), 2);
    assert_true(blocks * bsize == 16LL << 20);
    job_init(&job, "stat -f -c 'tmp=%b*%S' /tmp; stat -f -c 'shm=%b*%S' /dev/shm", 30);
    job.disk_mb = 4096;
    job.memory_mb = 64;
    run_job(&e, 0, &job, &r);
    p = strstr(r.res.log_tail, "shm=");
    assert_non_null(p);
    assert_int_equal(sscanf(p, "shm=%lld*%lld", &blocks, &bsize), 2);
    assert_true(blocks * bsize == 64LL << 20);
    env_close(&e);
}

static void t_signal_exit_code(void **state)
{
    lrun r;
    (void)state;
    run_script("kill -SEGV $$", 0, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_FAILED);
    assert_int_equal(r.res.exit_code, 128 + SIGSEGV);
}

/* ---- ending builds ---- */

static void t_cancel_graceful(void **state)
{
    lenv e;
    sbx_job job;
    lrun r;
    char err[256] = "", m[64], script[160];
    uint64_t t;
    (void)state;

    sbx_conformance_marker(m, 21);
    snprintf(script, sizeof(script), "trap 'echo got-term; exit 0' TERM; %s & wait", m);
    assert_int_equal(env_open(&e, NULL), 0); /* grace 1000 ms */
    job_init(&job, script, 600);
    assert_int_equal(start(&e, 0, &job, &r, err, sizeof(err)), 0);
    assert_true(wait_marker(&e, &r, m));
    t = sbx_now_ms();
    e.p->ops->cancel(e.p, r.run);
    assert_true(wait_done(&e, &r, 10000));
    print_message("    graceful cancel -> FINISHED: %" PRIu64 " ms\n", r.t_finished_ms - t);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);
    assert_non_null(strstr(r.res.log_tail, "got-term"));
    assert_true(r.t_finished_ms - t < 900); /* the build's own exit, not the SIGKILL */
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    env_close(&e);
}

static void t_cancel_term_ignored(void **state)
{
    lenv e;
    sbx_job job;
    lrun r;
    char err[256] = "", m[64], script[160];
    uint64_t t, took;
    (void)state;

    sbx_conformance_marker(m, 22);
    snprintf(script, sizeof(script), "trap '' TERM; %s & wait", m);
    assert_int_equal(env_open(&e, NULL), 0); /* grace 1000 ms */
    job_init(&job, script, 600);
    assert_int_equal(start(&e, 0, &job, &r, err, sizeof(err)), 0);
    assert_true(wait_marker(&e, &r, m));
    t = sbx_now_ms();
    e.p->ops->cancel(e.p, r.run);
    assert_true(wait_done(&e, &r, 10000));
    took = r.t_finished_ms - t;
    print_message("    cancel ignoring SIGTERM -> FINISHED: %" PRIu64 " ms (grace 1000)\n", took);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);
    assert_true(took >= 950 && took < 4000);
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    env_close(&e);
}

static void t_daemons_killed(void **state)
{
    lrun r;
    char m1[64], m2[64], script[256];
    (void)state;
    sbx_conformance_marker(m1, 23);
    sbx_conformance_marker(m2, 24);
    snprintf(script, sizeof(script),
             "setsid %s >/dev/null 2>&1 </dev/null & (%s >/dev/null 2>&1 &); echo parent-done", m1,
             m2);
    run_script(script, 0, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_string_equal(r.res.log_tail, "parent-done\n");
    assert_int_equal(sbx_conformance_procs_with(m1, 0), 0);
    assert_int_equal(sbx_conformance_procs_with(m2, 0), 0);
}

static void t_bwrap_failure_is_error(void **state)
{
    lcfg broken = {0, 1000, "/bin/false"}, missing = {0, 1000, "/nonexistent/bwrap"};
    lenv e;
    sbx_job job;
    lrun r;
    sbx_provider *p = NULL;
    sbx_local_config cfg;
    char err[256] = "";
    (void)state;

    assert_int_equal(env_open(&e, &broken), 0);
    job_init(&job, "echo never", 30);
    run_job(&e, 0, &job, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    assert_int_equal(r.res.exit_code, -1);
    assert_true(r.res.error[0] != '\0');
    env_close(&e);

    memset(&cfg, 0, sizeof(cfg));
    cfg.node = "testbox";
    cfg.slots = 1;
    cfg.work_dir = g_work_dir;
    cfg.uid_base = g_uid_base;
    cfg.bwrap = missing.bwrap;
    assert_int_equal(sbx_loop_new(&e.loop), 0);
    assert_int_equal(sbx_local_new(e.loop, &cfg, &p, err, sizeof(err)), -ENOENT);
    assert_null(p);
    assert_non_null(strstr(err, "bwrap"));
    cfg.bwrap = "bwrap";
    cfg.slots = 0;
    assert_int_equal(sbx_local_new(e.loop, &cfg, &p, err, sizeof(err)), -EINVAL);
    sbx_loop_free(e.loop);
}

/* ---- host chores ---- */

static void t_leftover_of_slot_uid_swept(void **state)
{
    lenv e;
    sbx_job job;
    lrun r;
    int status;
    pid_t pid;
    uint64_t until;
    char m[64];
    (void)state;
    if (!g_root)
        skip();

    sbx_conformance_marker(m, 25);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        uid_t u = (uid_t)(g_uid_base + 1);
        if (setresgid(u, u, u) == 0 && setresuid(u, u, u) == 0)
            execl("/bin/sleep", "sleep", m + 6, (char *)NULL);
        _exit(127);
    }
    until = sbx_now_ms() + 5000;
    while (sbx_conformance_procs_with(m, 1) == 0 && sbx_now_ms() < until)
        usleep(5000);
    assert_int_equal(sbx_conformance_procs_with(m, 1), 1);

    assert_int_equal(env_open(&e, NULL), 0); /* sweeps the slot uids */
    assert_int_equal(sbx_conformance_procs_with(m, 1), 0);
    /* A zombie child of ours with a sandbox uid is reaped by the sweep. */
    if (waitpid(pid, &status, WNOHANG) == pid)
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    else
        assert_int_equal(errno, ECHILD);
    job_init(&job, "echo slot-1-clean", 30);
    run_job(&e, 1, &job, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    env_close(&e);
}

static void t_stale_workspaces_removed(void **state)
{
    lenv e;
    char stale[512], keep[512], f[600];
    struct stat st;
    FILE *fp;
    (void)state;

    snprintf(stale, sizeof(stale), "%s/1-77", g_work_dir);
    snprintf(keep, sizeof(keep), "%s/keep-me", g_work_dir);
    assert_int_equal(mkdir(stale, 0700), 0);
    snprintf(f, sizeof(f), "%s/junk", stale);
    fp = fopen(f, "w");
    assert_non_null(fp);
    fputs("junk", fp);
    fclose(fp);
    assert_int_equal(mkdir(keep, 0700), 0);
    assert_int_equal(env_open(&e, NULL), 0);
    assert_int_equal(stat(stale, &st), -1);
    assert_int_equal(stat(keep, &st), 0);
    assert_int_equal(rmdir(keep), 0);
    env_close(&e);
}

/* Every process of the slot uids, zombies too: a zombie nobody reaps still
 * counts against RLIMIT_NPROC. Runs last, over everything above. */
static void t_nothing_left_of_slot_uids(void **state)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    int n = 0;
    (void)state;
    if (!g_root)
        skip();
    assert_non_null(d);
    while ((de = readdir(d)) != NULL) {
        char path[64], buf[1025];
        const char *u;
        unsigned r;
        ssize_t len;
        int fd;
        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%.32s/status", de->d_name);
        fd = open(path, O_RDONLY);
        if (fd < 0)
            continue;
        len = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (len <= 0)
            continue;
        buf[len] = '\0';
        u = strstr(buf, "\nUid:\t");
        if (u && sscanf(u, "\nUid:\t%u", &r) == 1 && (r == (unsigned)g_uid_base ||
                                                       r == (unsigned)g_uid_base + 1)) {
            const char *st = strstr(buf, "State:"), *pp = strstr(buf, "PPid:");
            print_error("left: pid %s uid %u name %.20s %.12s %.12s\n", de->d_name, r, buf + 6,
                        st ? st : "", pp ? pp : "");
            n++;
        }
    }
    closedir(d);
    assert_int_equal(n, 0);
}

/* ---- the lease's watchdog (provider trust, common/supervise.c) ---- */

/* The build's own clock: the last line of <workspace>/clock (ns since the
 * epoch, `date +%s%N`), read from the host while the workspace exists. */
static long long last_tick(int slot, int64_t token)
{
    char path[512], buf[4096];
    long long last = 0;
    FILE *f;

    snprintf(path, sizeof(path), "%s/%d-%" PRId64 "/ws/clock", g_work_dir, slot, token);
    f = fopen(path, "r");
    if (!f) {
        snprintf(path, sizeof(path), "%s/%d-%" PRId64 "/clock", g_work_dir, slot, token);
        f = fopen(path, "r");
    }
    if (!f)
        return 0;
    while (fgets(buf, sizeof(buf), f))
        if (strlen(buf) > 10)
            last = atoll(buf);
    fclose(f);
    return last;
}

static long long wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#define TICKS "while :; do date +%s%N >>/workspace/clock; sleep 0.02; done"

/* The owner stops running (its loop is not turned: as frozen as a SIGSTOP
 * makes it) with the deadline 800 ms ahead: the build's own clock must stop
 * at the deadline, before the owner runs again. */
static void t_frozen_owner_build_killed(void **state)
{
    lenv e;
    sbx_job job;
    lrun r;
    char err[256] = "", m[64], script[256];
    long long deadline_ns, tick, killed_after_ms;
    uint64_t until;
    (void)state;

    sbx_conformance_marker(m, 26);
    snprintf(script, sizeof(script), "%s & %s", m, TICKS);
    assert_int_equal(env_open(&e, NULL), 0);
    job_init(&job, script, 600);
    assert_int_equal(start(&e, 0, &job, &r, err, sizeof(err)), 0);
    assert_true(wait_marker(&e, &r, m));
    while (last_tick(0, r.token) == 0 && !r.finished)
        sbx_loop_once(e.loop, 10);
    until = sbx_now_ms() + 800;
    deadline_ns = wall_ns() + 800 * 1000000LL;
    e.p->ops->trust(e.p, r.run, until);
    /* Frozen: no loop turn, no timer, no callback for 2.5 s. */
    usleep(2500 * 1000);
    tick = last_tick(0, r.token);
    killed_after_ms = (tick - deadline_ns) / 1000000LL;
    print_message("    frozen owner: the build's last tick %lld ms after the deadline\n",
                  killed_after_ms);
    assert_true(tick > 0);
    assert_true(killed_after_ms > -300 && killed_after_ms < 200);
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    /* Thawed: the run reports that its supervisor ended it. */
    assert_true(wait_done(&e, &r, 10000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    assert_non_null(strstr(r.res.error, "supervisor"));
    env_close(&e);
}

/* An owner that keeps vouching keeps its build, well past the first
 * deadline; the build then ends as it would have. */
static void t_trusted_build_runs_on(void **state)
{
    lenv e;
    sbx_job job;
    lrun r;
    char err[256] = "";
    (void)state;

    assert_int_equal(env_open(&e, NULL), 0);
    job_init(&job, "sleep 1.5; echo done", 60);
    assert_int_equal(start(&e, 0, &job, &r, err, sizeof(err)), 0);
    e.p->ops->trust(e.p, r.run, sbx_now_ms() + 400);
    while (!r.finished) {
        uint64_t next = sbx_now_ms() + 100;
        while (sbx_now_ms() < next && !r.finished)
            sbx_loop_once(e.loop, 10);
        if (!r.finished)
            e.p->ops->trust(e.p, r.run, sbx_now_ms() + 400);
    }
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_string_equal(r.res.log_tail, "done\n");
    env_close(&e);
}

/* kill -9 of the owner: its sandbox dies with it (bwrap's PDEATHSIG, and
 * the supervisor sees its pipe close), long before any deadline. */
static void t_killed_owner_build_killed(void **state)
{
    char m[64], script[256];
    pid_t owner;
    uint64_t until;
    int status, up = 0;
    (void)state;

    sbx_conformance_marker(m, 27);
    snprintf(script, sizeof(script), "%s & %s", m, TICKS);
    owner = fork();
    assert_true(owner >= 0);
    if (owner == 0) {
        lenv e;
        sbx_job job;
        lrun r;
        char err[256] = "";
        if (env_open(&e, NULL) != 0)
            _exit(1);
        job_init(&job, script, 600);
        if (start(&e, 0, &job, &r, err, sizeof(err)) != 0)
            _exit(2);
        e.p->ops->trust(e.p, r.run, sbx_now_ms() + 600000);
        for (;;)
            sbx_loop_once(e.loop, 100);
    }
    until = sbx_now_ms() + 10000;
    while (!(up = sbx_conformance_procs_with(m, 1) > 0) && sbx_now_ms() < until)
        usleep(10000);
    assert_true(up);
    usleep(200 * 1000); /* the supervisor is forked right after the start */
    kill(owner, SIGKILL);
    assert_int_equal(waitpid(owner, &status, 0), owner);
    until = sbx_now_ms() + 2000;
    while (sbx_conformance_procs_with(m, 0) > 0 && sbx_now_ms() < until)
        usleep(10000);
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    /* What the dead owner left on disk goes with the next provider's sweep. */
    {
        lenv e;
        assert_int_equal(env_open(&e, NULL), 0);
        env_close(&e);
    }
}

/* ---- sessions (issue 13) ---- */

#define SESS_A "s-0123456789abcdef0123456789abcdef"
#define SESS_B "s-fedcba9876543210fedcba9876543210"

static int start_s(lenv *e, int slot, const sbx_job *job, const char *session, lrun *r, char *err,
                   size_t errlen)
{
    sbx_run_req req = {0};
    memset(r, 0, sizeof(*r));
    r->token = g_token++;
    req.job = job;
    req.slot = e->slots[slot];
    req.token = r->token;
    req.attempt = 1;
    req.session = session;
    r->t_start_ms = sbx_now_ms();
    return e->p->ops->start(e->p, &req, on_event, r, &r->run, err, errlen);
}

static void run_s(lenv *e, int slot, const char *session, const char *script, int timeout_s,
                  lrun *r)
{
    sbx_job job;
    char err[256] = "";
    int rc;
    job_init(&job, script, timeout_s);
    rc = start_s(e, slot, &job, session, r, err, sizeof(err));
    if (rc)
        print_error("start: %s\n", err);
    assert_int_equal(rc, 0);
    assert_true(wait_done(e, r, 30000));
    assert_int_equal(r->started, 1);
    assert_int_equal(r->finished, 1);
    assert_false(r->order_bad);
}

typedef struct sop {
    int done, rc;
    char why[128];
} sop;

static void on_sop(void *arg, int rc, const char *why)
{
    sop *o = arg;
    o->done++;
    o->rc = rc;
    snprintf(o->why, sizeof(o->why), "%s", why);
}

static int session_op(lenv *e, sbx_session_op op, int slot, const char *session)
{
    sop o = {0};
    uint64_t until = sbx_now_ms() + 15000;
    int rc = e->p->ops->session_op(e->p, op, e->slots[slot], session, g_token++, on_sop, &o);
    if (rc)
        return rc;
    assert_int_equal(o.done, 0); /* never from inside the call */
    while (!o.done && sbx_now_ms() < until)
        sbx_loop_once(e->loop, 10);
    assert_int_equal(o.done, 1);
    if (o.rc)
        print_message("    session_op: %d %s\n", o.rc, o.why);
    return o.rc;
}

/* A background process may exec just after the job's command exited. */
static int procs_become(const char *marker, int n)
{
    uint64_t until = sbx_now_ms() + 3000;
    while (sbx_now_ms() < until) {
        if (sbx_conformance_procs_with(marker, 1) == n)
            return 1;
        usleep(10000);
    }
    return 0;
}

static void session_ws(int slot, const char *session, char out[512])
{
    snprintf(out, 512, "%s/%d-%s", g_work_dir, slot, session);
}

/* The slot's uid has no process left, within a few seconds (cleanup of a
 * killed session runs from the loop). */
static int uid_empties(lenv *e, int slot)
{
    uint64_t until = sbx_now_ms() + 5000;
    if (!g_root)
        return 1;
    while (sbx_now_ms() < until) {
        if (sbx_sandbox_count_uid((uid_t)(g_uid_base + slot)) == 0)
            return 1;
        sbx_loop_once(e->loop, 10);
    }
    return 0;
}

/* Five jobs of one session: one workspace, a background process left by
 * the first is alive in every later one, the job's files land over it. */
static void t_session_five_jobs(void **state)
{
    lenv e;
    lrun r;
    char m[64], script[512], ws[512];
    struct stat st;
    (void)state;

    sbx_conformance_marker(m, 40);
    assert_int_equal(env_open(&e, NULL), 0);
    snprintf(script, sizeof(script),
             "echo one > first.txt; (%s >/dev/null 2>&1 & echo $! > bg.pid); "
             "(while :; do echo tick; sleep 0.05; done & echo $! > tick.pid); echo started", m);
    run_s(&e, 0, SESS_A, script, 60, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_non_null(strstr(r.res.log_tail, "started"));
    /* Ended at the command's exit although the loop keeps the pipe open. */
    assert_true(r.t_finished_ms - r.t_start_ms < 5000);
    assert_true(procs_become(m, 1));
    session_ws(0, SESS_A, ws);
    assert_int_equal(stat(ws, &st), 0);
    for (int k = 2; k <= 5; k++) {
        snprintf(script, sizeof(script),
                 "cat first.txt && kill -0 $(cat bg.pid) && echo bg-alive && echo %d >> runs.txt "
                 "&& cat runs.txt | wc -l", k);
        run_s(&e, 0, SESS_A, script, 60, &r);
        if (r.res.outcome != SBX_OUTCOME_SUCCEEDED)
            print_error("job %d: %s / %s\n", k, r.res.error, r.res.log_tail);
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
        assert_non_null(strstr(r.res.log_tail, "one\nbg-alive\n"));
    }
    assert_non_null(strstr(r.res.log_tail, "bg-alive\n4\n"));
    /* The ticker kept writing into the first job's output after it ended:
     * still alive (drained, not SIGPIPEd), and none of it in later jobs. */
    assert_null(strstr(r.res.log_tail, "tick"));
    run_s(&e, 0, SESS_A, "kill -0 $(cat tick.pid) && echo ticker-alive", 60, &r);
    assert_string_equal(r.res.log_tail, "ticker-alive\n");
    assert_true(procs_become(m, 1));
    /* Job files land over the workspace, replacing what is there. */
    {
        sbx_job job;
        sbx_kv files[1] = {{"first.txt", "replaced"}};
        char err[256] = "";
        job_init(&job, "cat first.txt; echo; ls", 60);
        job.files = files;
        job.nfiles = 1;
        assert_int_equal(start_s(&e, 0, &job, SESS_A, &r, err, sizeof(err)), 0);
        assert_true(wait_done(&e, &r, 30000));
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        assert_non_null(strstr(r.res.log_tail, "replaced\n"));
        assert_non_null(strstr(r.res.log_tail, "runs.txt"));
    }
    /* A one-off on the other slot is unaffected by, and does not touch, the session. */
    {
        sbx_job job;
        char err[256] = "";
        job_init(&job, "ls /workspace | wc -l", 60);
        assert_int_equal(start(&e, 1, &job, &r, err, sizeof(err)), 0);
        assert_true(wait_done(&e, &r, 30000));
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        assert_int_equal(r.res.sandbox, SBX_SANDBOX_ONE_OFF);
        assert_string_equal(r.res.log_tail, "0\n");
    }
    assert_true(procs_become(m, 1));
    assert_int_equal(session_op(&e, SBX_SESSION_DESTROY, 0, SESS_A), 0);
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    assert_int_not_equal(stat(ws, &st), 0);
    assert_true(uid_empties(&e, 0));
    env_close(&e);
}

/* PAUSE freezes everything of the session; start() resumes it (RESUMED,
 * resume_ms) and the background process carries on. */
static void t_session_pause_resume(void **state)
{
    lenv e;
    lrun r;
    char m[64], script[512], ws[512], path[600], a[64] = "", b[64] = "";
    long long t;
    FILE *f;
    (void)state;

    if (!sbx_cgroup_mode()) {
        print_message("    no writable cgroups: pause not testable here\n");
        skip();
    }
    sbx_conformance_marker(m, 41);
    assert_int_equal(env_open(&e, NULL), 0);
    snprintf(script, sizeof(script),
             "(%s >/dev/null 2>&1 & echo $! > bg.pid); "
             "(n=0; while :; do n=$((n+1)); echo $n > count.tmp; mv count.tmp count; sleep 0.02; "
             "done) >/dev/null 2>&1 & while [ ! -s count ]; do sleep 0.01; done; echo started", m);
    run_s(&e, 0, SESS_A, script, 60, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_int_equal(session_op(&e, SBX_SESSION_PAUSE, 0, SESS_A), 0);
    /* Paused: the counter stands still. */
    session_ws(0, SESS_A, ws);
    snprintf(path, sizeof(path), "%s/%scount", ws, g_root ? "ws/" : "");
    f = fopen(path, "r");
    assert_non_null(f);
    assert_non_null(fgets(a, sizeof(a), f));
    fclose(f);
    usleep(300000);
    f = fopen(path, "r");
    assert_non_null(f);
    assert_non_null(fgets(b, sizeof(b), f));
    fclose(f);
    assert_string_equal(a, b);
    /* PAUSE again, and of a session with no sandbox here: both fine. */
    assert_int_equal(session_op(&e, SBX_SESSION_PAUSE, 0, SESS_A), 0);
    assert_int_equal(session_op(&e, SBX_SESSION_PAUSE, 1, SESS_B), 0);
    t = wall_ns();
    {
        sbx_job job;
        char err[256] = "";
        job_init(&job, "kill -0 $(cat bg.pid) && echo bg-alive; c=$(cat count); sleep 0.3; "
                       "[ $(cat count) -gt $c ] && echo counting", 60);
        assert_int_equal(start_s(&e, 0, &job, SESS_A, &r, err, sizeof(err)), 0);
        t = wall_ns() - t;
        assert_true(wait_done(&e, &r, 30000));
    }
    print_message("    local session resume_ms=%d (PAUSE -> start(): RESUMED; start() returned "
                  "after %.2f ms, thaw included)\n", r.res.resume_ms, (double)t / 1e6);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_RESUMED);
    assert_true(r.res.resume_ms >= 0 && r.res.resume_ms < 2000);
    assert_non_null(strstr(r.res.log_tail, "bg-alive\ncounting\n"));
    /* A paused session is destroyed as well. */
    assert_int_equal(session_op(&e, SBX_SESSION_PAUSE, 0, SESS_A), 0);
    assert_int_equal(session_op(&e, SBX_SESSION_DESTROY, 0, SESS_A), 0);
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    assert_true(uid_empties(&e, 0));
    assert_int_not_equal(access(ws, F_OK), 0);
    env_close(&e);
}

/* DESTROY leaves nothing; the next job of the session gets a new sandbox;
 * DESTROY of nothing is success. */
static void t_session_destroy_then_new(void **state)
{
    lenv e;
    lrun r;
    char m[64], script[256], ws[512];
    (void)state;

    sbx_conformance_marker(m, 42);
    assert_int_equal(env_open(&e, NULL), 0);
    snprintf(script, sizeof(script), "echo x > keep; setsid %s >/dev/null 2>&1 < /dev/null &", m);
    run_s(&e, 0, SESS_A, script, 60, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_true(procs_become(m, 1));
    assert_int_equal(session_op(&e, SBX_SESSION_DESTROY, 0, SESS_A), 0);
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    assert_true(uid_empties(&e, 0));
    session_ws(0, SESS_A, ws);
    assert_int_not_equal(access(ws, F_OK), 0);
    assert_int_equal(session_op(&e, SBX_SESSION_DESTROY, 0, SESS_A), 0);
    run_s(&e, 0, SESS_A, "ls keep || echo fresh", 60, &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_non_null(strstr(r.res.log_tail, "fresh"));
    /* Another session on the slot replaces an ended one left there. */
    snprintf(script, sizeof(script), "(%s >/dev/null 2>&1 &); echo b", m);
    run_s(&e, 0, SESS_B, script, 60, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_true(procs_become(m, 1));
    /* And so does a one-off. */
    {
        sbx_job job;
        char err[256] = "";
        job_init(&job, "ls /workspace | wc -l", 60);
        assert_int_equal(start(&e, 0, &job, &r, err, sizeof(err)), 0);
        assert_true(wait_done(&e, &r, 30000));
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        assert_string_equal(r.res.log_tail, "0\n");
        assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
        session_ws(0, SESS_B, ws);
        assert_int_not_equal(access(ws, F_OK), 0);
    }
    run_s(&e, 0, SESS_B, "echo b", 60, &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    env_close(&e);
    /* destroy() took the session's sandbox with it. */
    session_ws(0, SESS_B, ws);
    assert_int_not_equal(access(ws, F_OK), 0);
    if (g_root)
        assert_int_equal(sbx_sandbox_count_uid((uid_t)g_uid_base), 0);
}

/* The lease layer may give a session another slot (its slot left the
 * pool): its job there gets a new sandbox, and the old slot's is destroyed,
 * so no later job of the session ever runs in it again. */
static void t_session_moved_to_another_slot(void **state)
{
    lenv e;
    lrun r;
    char m[64], script[256], ws[512];
    (void)state;

    sbx_conformance_marker(m, 43);
    assert_int_equal(env_open(&e, NULL), 0);
    snprintf(script, sizeof(script), "echo one >> notes; setsid %s >/dev/null 2>&1 < /dev/null &",
             m);
    run_s(&e, 0, SESS_A, script, 60, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_true(procs_become(m, 1));
    run_s(&e, 1, SESS_A, "cat notes 2>/dev/null || echo fresh", 60, &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_non_null(strstr(r.res.log_tail, "fresh"));
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    session_ws(0, SESS_A, ws);
    assert_int_not_equal(access(ws, F_OK), 0);
    /* Back on slot 0 it is new again, never the old one. */
    run_s(&e, 0, SESS_A, "cat notes 2>/dev/null || echo fresh", 60, &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    assert_non_null(strstr(r.res.log_tail, "fresh"));
    env_close(&e);
}

/* A timeout kills the job's processes (here: its whole sandbox); the next
 * job of the session reports NEW. Cancel likewise. */
static void t_session_timeout_and_cancel(void **state)
{
    lenv e;
    lrun r;
    sbx_job job;
    char m[64], m2[64], script[256], err[256] = "";
    (void)state;

    sbx_conformance_marker(m, 43);
    sbx_conformance_marker(m2, 44);
    assert_int_equal(env_open(&e, NULL), 0);
    snprintf(script, sizeof(script), "(%s >/dev/null 2>&1 &); echo ok", m);
    run_s(&e, 0, SESS_A, script, 60, &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    snprintf(script, sizeof(script), "trap '' TERM; %s", m2);
    run_s(&e, 0, SESS_A, script, 1, &r);
    print_message("    session timeout_s=1 -> FINISHED after %" PRIu64 " ms\n",
                  r.t_finished_ms - r.t_start_ms);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_TIMED_OUT);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_int_equal(sbx_conformance_procs_with(m2, 0), 0);
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    assert_true(uid_empties(&e, 0));
    run_s(&e, 0, SESS_A, "echo again", 60, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    /* Cancel: SIGTERM to the job's command first (it exits by itself). */
    snprintf(script, sizeof(script), "trap 'echo got-term; exit 0' TERM; %s & wait", m2);
    job_init(&job, script, 600);
    assert_int_equal(start_s(&e, 0, &job, SESS_A, &r, err, sizeof(err)), 0);
    assert_true(wait_marker(&e, &r, m2));
    e.p->ops->cancel(e.p, r.run);
    assert_true(wait_done(&e, &r, 10000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);
    assert_non_null(strstr(r.res.log_tail, "got-term"));
    assert_int_equal(sbx_conformance_procs_with(m2, 0), 0);
    assert_true(uid_empties(&e, 0));
    run_s(&e, 0, SESS_A, "echo after-cancel", 60, &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    /* DESTROY while a job of the session runs: it ends CANCELED. */
    job_init(&job, script, 600);
    assert_int_equal(start_s(&e, 0, &job, SESS_A, &r, err, sizeof(err)), 0);
    assert_true(wait_marker(&e, &r, m2));
    assert_int_equal(session_op(&e, SBX_SESSION_DESTROY, 0, SESS_A), 0);
    assert_true(wait_done(&e, &r, 10000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_CANCELED);
    assert_int_equal(sbx_conformance_procs_with(m2, 0), 0);
    assert_true(uid_empties(&e, 0));
    env_close(&e);
}

/* The session's limits hold across its jobs: the cgroup is the session's,
 * the seccomp filter and no capabilities in every job, the slot's uid. */
static void t_session_confined(void **state)
{
    lenv e;
    lrun r;
    char want[64];
    (void)state;

    assert_int_equal(env_open(&e, NULL), 0);
    run_s(&e, 0, SESS_A, "true", 60, &r);
    run_s(&e, 0, SESS_A,
          "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; "
          "unshare -U true 2>/dev/null && echo userns-allowed; hostname; "
          "touch /usr/x 2>/dev/null && echo usr-writable; ls /proc | grep -c '^[0-9]'", 60, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    if (g_root) {
        snprintf(want, sizeof(want), "%d\n", g_uid_base);
        assert_true(strncmp(r.res.log_tail, want, strlen(want)) == 0);
    }
    assert_non_null(strstr(r.res.log_tail, "CapEff:\t0000000000000000"));
    assert_non_null(strstr(r.res.log_tail, "CapBnd:\t0000000000000000"));
    assert_non_null(strstr(r.res.log_tail, "NoNewPrivs:\t1"));
    assert_non_null(strstr(r.res.log_tail, "Seccomp:\t2"));
    assert_null(strstr(r.res.log_tail, "userns-allowed"));
    assert_null(strstr(r.res.log_tail, "usr-writable"));
    assert_non_null(strstr(r.res.log_tail, "sbx\n"));
    env_close(&e);
}

/* A server one job starts in the background answers the next job of the
 * session on its loopback (the session's network namespace), with and
 * without network. */
static void session_server(int network)
{
    lcfg o = {1, 1000, "bwrap"};
    lenv e;
    lrun r;
    sbx_job job;
    char err[256] = "";
    const char *serve =
        "python3 -c \"import socket\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', 8080)); s.listen(5); open('up','w').close()\n"
        "while True:\n"
        "    c,_=s.accept(); c.sendall(b'hello from the dev server'); c.close()\n"
        "\" >/dev/null 2>&1 & while [ ! -e up ]; do sleep 0.02; done; echo serving";
    const char *ask = "python3 -c \"import socket\n"
                      "s=socket.create_connection(('127.0.0.1', 8080)); print(s.recv(100).decode())\"";

    assert_int_equal(env_open(&e, &o), 0);
    job_init(&job, serve, 60);
    job.network = network;
    assert_int_equal(start_s(&e, 0, &job, SESS_A, &r, err, sizeof(err)), 0);
    assert_true(wait_done(&e, &r, 30000));
    if (r.res.outcome != SBX_OUTCOME_SUCCEEDED)
        print_error("serve: %s / %s\n", r.res.error, r.res.log_tail);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    for (int k = 0; k < 2; k++) {
        if (k == 1)
            assert_int_equal(session_op(&e, SBX_SESSION_PAUSE, 0, SESS_A), 0);
        job_init(&job, ask, 60);
        assert_int_equal(start_s(&e, 0, &job, SESS_A, &r, err, sizeof(err)), 0);
        assert_true(wait_done(&e, &r, 30000));
        if (r.res.outcome != SBX_OUTCOME_SUCCEEDED)
            print_error("ask: %s / %s\n", r.res.error, r.res.log_tail);
        assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
        assert_int_equal(r.res.sandbox, k ? SBX_SANDBOX_RESUMED : SBX_SANDBOX_REUSED);
        assert_string_equal(r.res.log_tail, "hello from the dev server\n");
    }
    assert_int_equal(session_op(&e, SBX_SESSION_DESTROY, 0, SESS_A), 0);
    assert_true(uid_empties(&e, 0));
    env_close(&e);
}

static void t_session_server_loopback(void **state)
{
    (void)state;
    session_server(0);
}

static void t_session_server_network(void **state)
{
    (void)state;
    session_server(1);
}

/* The lease's supervisor guards a session's job as a one-off's: a frozen
 * owner's session is killed at the deadline; the next job gets a new one. */
static void t_session_frozen_owner(void **state)
{
    lenv e;
    sbx_job job;
    lrun r;
    char err[256] = "", m[64], script[256];
    (void)state;

    sbx_conformance_marker(m, 45);
    snprintf(script, sizeof(script), "(%s >/dev/null 2>&1 &); sleep 600", m);
    assert_int_equal(env_open(&e, NULL), 0);
    job_init(&job, script, 600);
    assert_int_equal(start_s(&e, 0, &job, SESS_A, &r, err, sizeof(err)), 0);
    assert_true(wait_marker(&e, &r, m));
    e.p->ops->trust(e.p, r.run, sbx_now_ms() + 500);
    usleep(1500 * 1000); /* frozen: no loop turn */
    assert_int_equal(sbx_conformance_procs_with(m, 0), 0);
    assert_true(wait_done(&e, &r, 10000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_ERROR);
    assert_non_null(strstr(r.res.error, "supervisor"));
    assert_true(uid_empties(&e, 0));
    run_s(&e, 0, SESS_A, "echo next", 60, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    env_close(&e);
}

/* kill -9 of the worker: its sessions die with it (they are its children);
 * a paused one is frozen and cannot die until thawed, which the next
 * provider's start-up sweep does. */
static void t_session_killed_owner(void **state)
{
    char m[64], m2[64];
    pid_t owner;
    int status;
    (void)state;

    if (!g_root) {
        print_message("    not root: no per-slot uids or cgroups to sweep\n");
        skip();
    }
    sbx_conformance_marker(m, 46);
    sbx_conformance_marker(m2, 47);
    owner = fork();
    assert_true(owner >= 0);
    if (owner == 0) {
        lenv e;
        lrun r;
        sbx_job job;
        sop paused = {0};
        char err[256] = "", script[256];
        if (env_open(&e, NULL) != 0)
            _exit(1);
        snprintf(script, sizeof(script), "(%s >/dev/null 2>&1 &); echo ok", m);
        job_init(&job, script, 60);
        if (start_s(&e, 0, &job, SESS_A, &r, err, sizeof(err)) != 0 || !wait_done(&e, &r, 30000))
            _exit(2);
        snprintf(script, sizeof(script), "(%s >/dev/null 2>&1 &); echo ok", m2);
        job_init(&job, script, 60);
        if (start_s(&e, 1, &job, SESS_B, &r, err, sizeof(err)) != 0 || !wait_done(&e, &r, 30000))
            _exit(3);
        if (!procs_become(m2, 1) ||
            e.p->ops->session_op(e.p, SBX_SESSION_PAUSE, e.slots[1], SESS_B, 1, on_sop,
                                 &paused) != 0)
            _exit(4);
        while (!paused.done)
            sbx_loop_once(e.loop, 10);
        _exit(paused.rc == 0 ? 100 : 5);
    }
    assert_int_equal(waitpid(owner, &status, 0), owner);
    assert_int_equal(WEXITSTATUS(status), 100);
    /* _exit is as sudden as kill -9 for the children: no cleanup ran. */
    {
        uint64_t until = sbx_now_ms() + 3000;
        while (sbx_conformance_procs_with(m, 1) > 0 && sbx_now_ms() < until)
            usleep(10000);
    }
    assert_int_equal(sbx_conformance_procs_with(m, 1), 0);
    assert_int_equal(sbx_conformance_procs_with(m2, 1), 1); /* frozen */
    /* A uid sweep alone (what the VM agent does at start-up) thaws it. */
    assert_int_equal(sbx_sandbox_sweep_uid((uid_t)g_uid_base + 1, 2000), 0);
    assert_int_equal(sbx_conformance_procs_with(m2, 1), 0);
    {
        lenv e;
        assert_int_equal(env_open(&e, NULL), 0);
        assert_int_equal(sbx_sandbox_count_uid((uid_t)g_uid_base), 0);
        assert_int_equal(sbx_sandbox_count_uid((uid_t)g_uid_base + 1), 0);
        assert_int_equal(dir_entries(g_work_dir), 0);
        env_close(&e);
    }
}

/* The sandbox API itself, as the VM agent uses it: a run spawned before the
 * session is up waits for it; one run at a time; pause/resume timed;
 * kill ends it with on_end once, everything removed. */
typedef struct sapi {
    int started, exited, ended, exit_code, ran;
    char tail[256];
} sapi;

static void sapi_start(void *arg, sbx_sandbox *s)
{
    (void)s;
    ((sapi *)arg)->started++;
}

static void sapi_exit(void *arg, sbx_sandbox *s, const sbx_sandbox_status *st)
{
    sapi *a = arg;
    a->exited++;
    a->exit_code = st->exit_code;
    a->ran = st->ran;
    snprintf(a->tail, sizeof(a->tail), "%s", st->tail);
    sbx_sandbox_free(s);
}

static void sapi_end(void *arg, sbx_sandbox_session *ss)
{
    (void)ss;
    ((sapi *)arg)->ended++;
}

static void t_sandbox_session_api(void **state)
{
    sbx_loop *loop;
    sbx_sandbox_session *ss;
    sbx_sandbox *sb, *sb2;
    sbx_sandbox_spec spec;
    sapi end = {0}, a = {0};
    char err[256] = "", ws[600], *bwrap = sbx_sandbox_resolve_exe("bwrap");
    char *const argv[] = {"sh", "-c", "echo $((6 * 7)) > answer; cat answer", NULL};
    struct timespec t0, t1;
    int ms = -1;
    uint64_t until;
    (void)state;

    assert_non_null(bwrap);
    assert_int_equal(sbx_loop_new(&loop), 0);
    memset(&spec, 0, sizeof(spec));
    spec.bwrap = bwrap;
    spec.work_dir = g_work_dir;
    spec.name = "api-session";
    spec.uid = spec.gid = g_root ? g_uid_base : -1;
    spec.memory_mb = 256;
    spec.pids = 32;
    spec.disk_mb = 64;
    spec.disk_total = 1;
    assert_int_equal(sbx_sandbox_session_new(loop, &spec, sapi_end, &end, &ss, err, sizeof(err)), 0);
    snprintf(ws, sizeof(ws), "%s", sbx_sandbox_session_workspace(ss));
    assert_int_equal(access(ws, F_OK), 0);
    spec.session = ss;
    spec.argv = argv;
    spec.timeout_s = 30;
    assert_int_equal(sbx_sandbox_spawn(loop, &spec, sapi_start, sapi_exit, &a, &sb, err,
                                       sizeof(err)), 0);
    assert_true(sbx_sandbox_session_busy(ss));
    assert_int_equal(sbx_sandbox_spawn(loop, &spec, sapi_start, sapi_exit, &a, &sb2, err,
                                       sizeof(err)), -EBUSY);
    assert_int_equal(sbx_sandbox_session_pause(ss), -EBUSY);
    until = sbx_now_ms() + 10000;
    while (!a.exited && sbx_now_ms() < until)
        sbx_loop_once(loop, 10);
    assert_int_equal(a.started, 1);
    assert_int_equal(a.exited, 1);
    assert_int_equal(a.ran, 1);
    assert_int_equal(a.exit_code, 0);
    assert_string_equal(a.tail, "42\n");
    assert_false(sbx_sandbox_session_busy(ss));
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(sbx_sandbox_session_pause(ss), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(sbx_sandbox_session_paused(ss));
    print_message("    sandbox session pause: %.3f ms\n",
                  (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(sbx_sandbox_session_resume(ss, &ms), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    print_message("    sandbox session resume: %.3f ms (resume_ms=%d)\n",
                  (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6,
                  ms);
    /* Paused again: spawn resumes by itself. */
    assert_int_equal(sbx_sandbox_session_pause(ss), 0);
    memset(&a, 0, sizeof(a));
    spec.argv = (char *const[]){"cat", "answer", NULL};
    assert_int_equal(sbx_sandbox_spawn(loop, &spec, sapi_start, sapi_exit, &a, &sb, err,
                                       sizeof(err)), 0);
    assert_false(sbx_sandbox_session_paused(ss));
    until = sbx_now_ms() + 10000;
    while (!a.exited && sbx_now_ms() < until)
        sbx_loop_once(loop, 10);
    assert_string_equal(a.tail, "42\n");
    sbx_sandbox_session_kill(ss);
    assert_false(sbx_sandbox_session_alive(ss));
    assert_int_equal(sbx_sandbox_spawn(loop, &spec, sapi_start, sapi_exit, &a, &sb, err,
                                       sizeof(err)), -ESRCH);
    until = sbx_now_ms() + 10000;
    while (!end.ended && sbx_now_ms() < until)
        sbx_loop_once(loop, 10);
    assert_int_equal(end.ended, 1);
    for (int i = 0; i < 10; i++)
        sbx_loop_once(loop, 5);
    assert_int_equal(end.ended, 1);
    assert_int_not_equal(access(ws, F_OK), 0);
    if (g_root)
        assert_int_equal(sbx_sandbox_count_uid((uid_t)g_uid_base), 0);
    sbx_sandbox_session_free(ss);
    sbx_loop_free(loop);
    free(bwrap);
}

/* ---- previews and the warm pool (issue 13, items 3 and 4) ---- */

#define PREVIEW_PORT 8000

/* A job starting tests/devserver/devserver.py in the background (shipped in
 * the job's files: the sandbox sees the host's python3, not our tree). */
static char *g_devserver;

static int load_devserver(void)
{
    FILE *f;
    long n;

    if (g_devserver)
        return 0;
    f = fopen("tests/devserver/devserver.py", "r");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    g_devserver = calloc(1, (size_t)n + 1);
    if (!g_devserver || fread(g_devserver, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}

/* Runs tests/unit/preview_client.py against url while our loop (the
 * proxy's) turns; 1 when every check held. */
static int browser_checks(lenv *e, const char *url, const char *text)
{
    int status = -1;
    pid_t child = fork();

    if (child < 0)
        return 0;
    if (child == 0) {
        execlp("python3", "python3", "tests/unit/preview_client.py", url, text, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 3000 && waitpid(child, &status, WNOHANG) == 0; i++)
        sbx_loop_once(e->loop, 10);
    if (waitpid(child, &status, WNOHANG) == 0) {
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
        return 0;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int url_connects(const char *url)
{
    const char *c = strrchr(url, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)(c ? atoi(c + 1) : 0)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
    ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/* A dev server one job starts is reachable through the session's preview
 * URL (HTTP and WebSocket, the token needed), between jobs and after PAUSE
 * and a run that resumed it; DESTROY closes the preview. */
static void session_preview(int network)
{
    lcfg o = {1, 1000, "bwrap"};
    lenv e;
    lrun r;
    sbx_job job;
    sbx_previews *ps;
    sbx_previews_cfg pc = {0};
    sbx_kv files[1];
    char err[256] = "", url[256];
    int base = 30000 + (int)(getpid() % 1000) * 10;
    const char *serve =
        "echo hello-from-the-workspace > index.html; "
        "python3 devserver.py 8000 . > dev.log 2>&1 & "
        "for i in $(seq 50); do case $(cat dev.log) in *listening*) break;; esac; "
        "sleep 0.1; done; cat dev.log";

    assert_int_equal(load_devserver(), 0);
    assert_int_equal(env_open(&e, &o), 0);
    pc.loop = e.loop;
    pc.bind_host = "127.0.0.1";
    pc.port_min = base;
    pc.port_max = base + 9;
    pc.secret = "test-local-secret";
    assert_int_equal(sbx_previews_new(&pc, &ps, err, sizeof(err)), 0);
    e.p->previews = ps;

    job_init(&job, serve, 60);
    job.network = network;
    job.session_preview_port = PREVIEW_PORT;
    files[0].key = "devserver.py";
    files[0].value = g_devserver;
    job.files = files;
    job.nfiles = 1;
    assert_int_equal(start_s(&e, 0, &job, SESS_A, &r, err, sizeof(err)), 0);
    assert_true(wait_done(&e, &r, 30000));
    if (r.res.outcome != SBX_OUTCOME_SUCCEEDED)
        print_error("serve: %s / %s\n", r.res.error, r.res.log_tail);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_non_null(strstr(r.res.log_tail, "listening"));
    snprintf(url, sizeof(url), "%s", r.res.preview_url);
    assert_non_null(strstr(url, "?sbx_token="));
    assert_string_equal(r.started_url, url);
    assert_true(browser_checks(&e, url, "hello-from-the-workspace"));

    /* A job that names no preview port still reports the session's URL. */
    run_s(&e, 0, SESS_A, "echo between", 60, &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_string_equal(r.res.preview_url, url);
    assert_true(browser_checks(&e, url, "hello-from-the-workspace"));

    assert_int_equal(session_op(&e, SBX_SESSION_PAUSE, 0, SESS_A), 0);
    run_s(&e, 0, SESS_A, "echo again > index.html", 60, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_RESUMED);
    assert_string_equal(r.res.preview_url, url);
    assert_true(browser_checks(&e, url, "again"));

    assert_int_equal(session_op(&e, SBX_SESSION_DESTROY, 0, SESS_A), 0);
    sbx_loop_once(e.loop, 0);
    assert_false(url_connects(url));
    assert_true(uid_empties(&e, 0));
    env_close(&e);
    sbx_previews_free(ps); /* after the provider, as the worker does */
}

static void t_session_preview_loopback(void **state)
{
    (void)state;
    session_preview(0);
}

static void t_session_preview_network(void **state)
{
    (void)state;
    session_preview(1);
}

/* Waits for the dialed socket's connect; returns what SO_ERROR says. */
static int dial_result(int fd)
{
    struct pollfd pf = {.fd = fd, .events = POLLOUT};
    int e = -1;
    socklen_t len = sizeof(e);

    if (poll(&pf, 1, 5000) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
        return -1;
    return e;
}

/* sbx_sandbox_session_dial: a socket in the session's network namespace
 * reaches its loopback (a server a run left there), not the host's (a port
 * the host listens on is refused inside); -EAGAIN before the session is up,
 * -ESRCH once it is gone. The caller's namespace stays the host's. */
static void t_session_dial(void **state)
{
    sbx_loop *loop;
    sbx_sandbox_session *ss;
    sbx_sandbox *sb;
    sbx_sandbox_spec spec;
    sapi end = {0}, a = {0};
    char err[256] = "", buf[64] = "", *bwrap = sbx_sandbox_resolve_exe("bwrap");
    char host_ns[64] = "", ns_after[64] = "";
    char *const argv[] = {"sh", "-c",
        "python3 -c \"import socket\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', 8001)); s.listen(5); open('up','w').close()\n"
        "while True:\n"
        "    c,_=s.accept(); c.sendall(b'inside'); c.close()\n"
        "\" >/dev/null 2>&1 & while [ ! -e up ]; do sleep 0.02; done", NULL};
    int host_port, hl = listen_local(&host_port), fd;
    uint64_t until;
    ssize_t n;
    (void)state;

    assert_true(hl >= 0);
    assert_non_null(bwrap);
    assert_true(readlink("/proc/thread-self/ns/net", host_ns, sizeof(host_ns) - 1) > 0);
    assert_int_equal(sbx_loop_new(&loop), 0);
    memset(&spec, 0, sizeof(spec));
    spec.bwrap = bwrap;
    spec.work_dir = g_work_dir;
    spec.name = "dial-session";
    spec.uid = spec.gid = g_root ? g_uid_base : -1;
    spec.memory_mb = 256;
    spec.pids = 32;
    spec.disk_mb = 64;
    spec.disk_total = 1;
    assert_int_equal(sbx_sandbox_session_new(loop, &spec, sapi_end, &end, &ss, err, sizeof(err)),
                     0);
    assert_int_equal(sbx_sandbox_session_dial(ss, 8001, err, sizeof(err)), -EAGAIN);
    spec.session = ss;
    spec.argv = argv;
    spec.timeout_s = 30;
    assert_int_equal(sbx_sandbox_spawn(loop, &spec, sapi_start, sapi_exit, &a, &sb, err,
                                       sizeof(err)), 0);
    until = sbx_now_ms() + 10000;
    while (!a.exited && sbx_now_ms() < until)
        sbx_loop_once(loop, 10);
    assert_int_equal(a.exit_code, 0);

    fd = sbx_sandbox_session_dial(ss, 8001, err, sizeof(err));
    if (fd < 0)
        print_error("dial: %s\n", err);
    assert_true(fd >= 0);
    assert_int_equal(dial_result(fd), 0);
    for (int i = 0; i < 500 && (n = read(fd, buf, sizeof(buf) - 1)) < 0 && errno == EAGAIN; i++)
        usleep(10000);
    assert_string_equal(buf, "inside");
    close(fd);
    fd = sbx_sandbox_session_dial(ss, host_port, err, sizeof(err));
    assert_true(fd >= 0 || fd == -ECONNREFUSED);
    if (fd >= 0) {
        assert_int_equal(dial_result(fd), ECONNREFUSED);
        close(fd);
    }
    assert_true(readlink("/proc/thread-self/ns/net", ns_after, sizeof(ns_after) - 1) > 0);
    assert_string_equal(ns_after, host_ns);
    /* Paused: the kernel still connects (the server answers once thawed). */
    assert_int_equal(sbx_sandbox_session_pause(ss), 0);
    fd = sbx_sandbox_session_dial(ss, 8001, err, sizeof(err));
    assert_true(fd >= 0);
    assert_int_equal(dial_result(fd), 0);
    close(fd);

    sbx_sandbox_session_kill(ss);
    assert_int_equal(sbx_sandbox_session_dial(ss, 8001, err, sizeof(err)), -ESRCH);
    until = sbx_now_ms() + 10000;
    while (!end.ended && sbx_now_ms() < until)
        sbx_loop_once(loop, 10);
    assert_int_equal(end.ended, 1);
    sbx_sandbox_session_free(ss);
    sbx_loop_free(loop);
    free(bwrap);
    close(hl);
}

/* start() to the first line of the job's command: the job prints the
 * wall clock in ns first (a `date`, the same in both measurements). */
static double to_running_ms(lenv *e, int slot, const char *session, const char *rest, lrun *r)
{
    struct timespec t0;
    char script[256];
    long long ns;

    snprintf(script, sizeof(script), "date +%%s%%N; %s", rest);
    clock_gettime(CLOCK_REALTIME, &t0);
    run_s(e, slot, session, script, 60, r);
    assert_int_equal(r->res.outcome, SBX_OUTCOME_SUCCEEDED);
    ns = atoll(r->res.log_tail);
    return (double)(ns - (t0.tv_sec * 1000000000LL + t0.tv_nsec)) / 1e6;
}

/* SBX_WARM=1: a session's first job on either slot takes the warm sandbox
 * (WARM; on the other slot it moves there with its uid), a new one is made
 * behind it, a one-off or a session with other limits never takes one, and
 * nothing is left after destroy(). Prints create-to-running cold and warm:
 * start() to the job's command running, and start() to STARTED. */
static void t_warm_pool(void **state)
{
    lenv e;
    lrun r;
    sbx_job job;
    char err[256] = "", want[32];
    const char *nl;
    uint64_t cold_ms, warm_ms, until;
    double cold_run, warm_run;
    (void)state;

    assert_int_equal(env_open(&e, NULL), 0);
    cold_run = to_running_ms(&e, 0, SESS_A, "echo cold", &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);
    cold_ms = r.t_started_ms - r.t_start_ms;
    assert_int_equal(session_op(&e, SBX_SESSION_DESTROY, 0, SESS_A), 0);

    e.p->ops->warm(e.p, 1);
    until = sbx_now_ms() + 3000; /* made, warmed and frozen in the background */
    while (sbx_now_ms() < until)
        sbx_loop_once(e.loop, 20);
    /* Slot 1: the warm sandbox was made on slot 0, the first free one. */
    warm_run = to_running_ms(&e, 1, SESS_B, "id -u; echo warm > w.txt", &r);
    assert_int_equal(r.started_use, SBX_SANDBOX_WARM);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_WARM);
    warm_ms = r.t_started_ms - r.t_start_ms;
    nl = strchr(r.res.log_tail, '\n');
    assert_non_null(nl);
    if (g_root) {
        snprintf(want, sizeof(want), "%d\n", g_uid_base); /* slot 0's uid came with it */
        assert_true(strncmp(nl + 1, want, strlen(want)) == 0);
    }
    print_message("    local: create-to-running (start() to the command) cold %.1f ms, "
                  "warm %.1f ms; to STARTED cold %" PRIu64 " ms, warm %" PRIu64 " ms (thaw %d ms)\n",
                  cold_run, warm_run, cold_ms, warm_ms, r.res.resume_ms);
    run_s(&e, 1, SESS_B, "cat w.txt", 60, &r);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_REUSED);
    assert_string_equal(r.res.log_tail, "warm\n");

    /* A new warm one on slot 0; a one-off there drops it (no other slot is
     * free), and runs as the slot's uid now, slot 1's old one. */
    until = sbx_now_ms() + 3000;
    while (sbx_now_ms() < until)
        sbx_loop_once(e.loop, 20);
    job_init(&job, "id -u", 60);
    run_job(&e, 0, &job, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_ONE_OFF);
    if (g_root) {
        snprintf(want, sizeof(want), "%d\n", g_uid_base + 1);
        assert_string_equal(r.res.log_tail, want);
    }

    /* A session whose limits are not the defaults: a sandbox of its own. */
    until = sbx_now_ms() + 3000;
    while (sbx_now_ms() < until)
        sbx_loop_once(e.loop, 20);
    job_init(&job, "echo own", 60);
    job.memory_mb = 256;
    assert_int_equal(start_s(&e, 0, &job, SESS_A, &r, err, sizeof(err)), 0);
    assert_true(wait_done(&e, &r, 30000));
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_NEW);

    /* Slot 0 busy with that session: the new warm one is made on slot 1. A
     * one-off there, once slot 0 is free, moves it to slot 0, where the next
     * session finds it. */
    assert_int_equal(session_op(&e, SBX_SESSION_DESTROY, 1, SESS_B), 0);
    until = sbx_now_ms() + 3000;
    while (sbx_now_ms() < until)
        sbx_loop_once(e.loop, 20);
    assert_int_equal(session_op(&e, SBX_SESSION_DESTROY, 0, SESS_A), 0);
    job_init(&job, "echo one-off", 60);
    run_job(&e, 1, &job, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    run_s(&e, 0, SESS_B, "echo again", 60, &r);
    assert_int_equal(r.res.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.res.sandbox, SBX_SANDBOX_WARM);

    env_close(&e); /* the sessions and any warm sandbox die with it */
    if (g_root) {
        assert_int_equal(sbx_sandbox_count_uid((uid_t)g_uid_base), 0);
        assert_int_equal(sbx_sandbox_count_uid((uid_t)g_uid_base + 1), 0);
    }
}

static void t_slots_and_pool(void **state)
{
    lenv e;
    const char **ids;
    (void)state;
    assert_int_equal(env_open(&e, NULL), 0);
    assert_int_equal(e.p->ops->slots(e.p, &ids), 2);
    assert_string_equal(ids[0], "local/testbox/0");
    assert_string_equal(ids[1], "local/testbox/1");
    assert_string_equal(e.p->ops->pool(e.p), "local/testbox");
    assert_string_equal(e.p->ops->name, "local");
    env_close(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_slots_and_pool),
        cmocka_unit_test(t_session_five_jobs),
        cmocka_unit_test(t_session_pause_resume),
        cmocka_unit_test(t_session_destroy_then_new),
        cmocka_unit_test(t_session_moved_to_another_slot),
        cmocka_unit_test(t_session_timeout_and_cancel),
        cmocka_unit_test(t_session_confined),
        cmocka_unit_test(t_session_server_loopback),
        cmocka_unit_test(t_session_server_network),
        cmocka_unit_test(t_session_frozen_owner),
        cmocka_unit_test(t_session_killed_owner),
        cmocka_unit_test(t_sandbox_session_api),
        cmocka_unit_test(t_session_dial),
        cmocka_unit_test(t_session_preview_loopback),
        cmocka_unit_test(t_session_preview_network),
        cmocka_unit_test(t_warm_pool),
        cmocka_unit_test(t_identity),
        cmocka_unit_test(t_second_slot_uid),
        cmocka_unit_test(t_read_only_host),
        cmocka_unit_test(t_workspace_lifecycle),
        cmocka_unit_test(t_files_escaping_refused),
        cmocka_unit_test(t_env_not_on_cmdline),
        cmocka_unit_test(t_network),
        cmocka_unit_test(t_rlimits),
        cmocka_unit_test(t_fork_bomb_contained),
        cmocka_unit_test(t_pids_limit_exact),
        cmocka_unit_test(t_memory_hog_killed),
        cmocka_unit_test(t_disk_limits),
        cmocka_unit_test(t_tmpfs_size),
        cmocka_unit_test(t_signal_exit_code),
        cmocka_unit_test(t_cancel_graceful),
        cmocka_unit_test(t_cancel_term_ignored),
        cmocka_unit_test(t_daemons_killed),
        cmocka_unit_test(t_frozen_owner_build_killed),
        cmocka_unit_test(t_trusted_build_runs_on),
        cmocka_unit_test(t_killed_owner_build_killed),
        cmocka_unit_test(t_bwrap_failure_is_error),
        cmocka_unit_test(t_leftover_of_slot_uid_swept),
        cmocka_unit_test(t_stale_workspaces_removed),
        cmocka_unit_test(t_nothing_left_of_slot_uids),
    };
    sbx_conformance_opts opts;
    const char *scale = getenv("SBX_TEST_TIME_SCALE");
    int failed;

    /* SBX_TEST_FILTER=t_cancel* runs only the matching scenarios. */
    if (getenv("SBX_TEST_FILTER"))
        cmocka_set_test_filter(getenv("SBX_TEST_FILTER"));
    sbx_log_set_level(getenv("SBX_TEST_DEBUG") ? SBX_LOG_DEBUG : SBX_LOG_WARN);
    g_root = geteuid() == 0;
    /* SBX_TEST_UID_SHIFT keeps parallel test runs' uids apart, as in e2e. */
    g_uid_base = 200000 + (getenv("SBX_TEST_UID_SHIFT") ? atoi(getenv("SBX_TEST_UID_SHIFT")) : 0) +
                 (int)(getpid() % 100000) * 4;
    snprintf(g_work_dir, sizeof(g_work_dir), "/tmp/sbx-test-local-%d", (int)getpid());
    if (mkdir(g_work_dir, 0711) < 0 || chmod(g_work_dir, 0711) < 0) {
        fprintf(stderr, "mkdir %s: %s\n", g_work_dir, strerror(errno));
        return 1;
    }
    memset(&opts, 0, sizeof(opts));
    opts.host_procs = 1;
    opts.time_scale = scale ? atoi(scale) : 1;
    opts.output_apart = 1; /* two pipes */
    failed = sbx_conformance_run("local conformance", make_default, &opts);
    failed += cmocka_run_group_tests_name("local", tests, NULL, NULL);
    sbx_sandbox_remove_tree(g_work_dir);
    return failed ? 1 : 0;
}
