/* test_job.c — the job state machine of sbx-worker (worker/job.c), driven
 * end to end against the real Redis and PostgreSQL of the test services
 * (SBX_REDIS_URL, SBX_DATABASE_URL, migrations applied by run.sh).
 *
 * The worker is wired as main.c wires it: its loop, lease scripts, pipelined
 * PostgreSQL connection (LISTENing to sbx_cancel) and Kafka client (the real
 * broker when SBX_BROKERS is set, else librdkafka's in-process mock cluster:
 * the tests hand messages to sbx__job_intake() themselves, and only
 * dead-lettering produces). The one stand-in is the build provider: a test
 * provider (provider.h) whose every start() follows a plan the test wrote
 * for that job (succeed, fail, error, busy slot, hold until told...).
 *
 * Scenarios: success, build failure, provider error retried then
 * dead-lettered, busy slot, project busy then run, cancel while waiting (with
 * and without the database's flag), cancel while running, policies reject and
 * supersede, shutdown at each stage and redelivery after it, lease lost while
 * starting and running, a terminal write fenced out, a table lock that makes
 * record_run fail, redelivery of a terminal job, its id reused with another
 * payload (after it finished, and while it runs). Then: every legal move of
 * the table was taken at least once; the table equals this file's own list
 * over the whole from x to matrix; and an illegal move (a provider that
 * reports FINISHED twice) aborts a debug build, in a forked child.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <librdkafka/rdkafka.h>

#include "log.h"
#include "svc.h"
#include "worker.h"

#define SLOTS 3
#define WAIT_MS 15000

/* ---- the test provider ---- */

struct sbx_run {
    struct sbx_run *next;       /* live runs */
    sbx_timer t;
    char job[SBX_ID_MAX + 1];
    char mode;                  /* the plan's letter for this start */
    int phase;                  /* 0: STARTED next, 1: FINISHED next, 2: held */
    int canceled;
    sbx_outcome finish_as;      /* set by tp_finish() */
    sbx_run_cb cb;
    void *arg;
};

typedef struct plan {
    char job[SBX_ID_MAX + 1];
    char steps[16];             /* one letter per start(); 'S' once used up */
    int used;
} plan;

static struct {
    sbx_provider base;
    char pool[64];
    char slot_ids[SLOTS][64];
    const char *slot_ptrs[SLOTS];
    sbx_run *runs;
    plan plans[64];
    int nplans;
    int starts;
} TP;

static char next_step(const char *job)
{
    for (int i = 0; i < TP.nplans; i++)
        if (strcmp(TP.plans[i].job, job) == 0) {
            plan *p = &TP.plans[i];
            return p->steps[p->used] ? p->steps[p->used++] : 'S';
        }
    return 'S';
}

static void tp_unlink(sbx_run *r)
{
    for (sbx_run **pp = &TP.runs; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            return;
        }
}

static void emit_finished(sbx_run *r, sbx_outcome o)
{
    sbx_result res;
    memset(&res, 0, sizeof(res));
    res.outcome = o;
    res.exit_code = o == SBX_OUTCOME_SUCCEEDED ? 0 : o == SBX_OUTCOME_FAILED ? 1 : -1;
    if (o == SBX_OUTCOME_ERROR)
        snprintf(res.error, sizeof(res.error), "test provider: injected error");
    res.log_tail_len = (size_t)snprintf(res.log_tail, sizeof(res.log_tail), "log of %s\n", r->job);
    r->cb(r->arg, SBX_RUN_FINISHED, &res);
}

static void on_run_timer(sbx_timer *t)
{
    sbx_run *r = t->data;
    sbx_result res;

    if (r->phase == 0 && !r->canceled && r->mode != 'N') {
        memset(&res, 0, sizeof(res));
        res.exit_code = -1;
        snprintf(res.instance, sizeof(res.instance), "inst-%.*s", 100, r->job);
        r->phase = 1;
        r->cb(r->arg, SBX_RUN_STARTED, &res);
        if (r->mode == 'H') {
            r->phase = 2;
            return;
        }
        sbx_timer_start(TP.base.loop, &r->t, 20);
        return;
    }
    if (!r->canceled && r->phase != 3 && (r->mode == 'H' || r->mode == 'N'))
        return; /* held: tp_finish() or cancel() ends it */
    tp_unlink(r);
    if (r->canceled)
        emit_finished(r, SBX_OUTCOME_CANCELED);
    else if (r->phase == 3)
        emit_finished(r, r->finish_as);
    else if (r->mode == 'F')
        emit_finished(r, SBX_OUTCOME_FAILED);
    else if (r->mode == 'E')
        emit_finished(r, SBX_OUTCOME_ERROR);
    else if (r->mode == 'D') {
        /* A broken provider: FINISHED twice. */
        emit_finished(r, SBX_OUTCOME_SUCCEEDED);
        emit_finished(r, SBX_OUTCOME_SUCCEEDED);
    } else
        emit_finished(r, SBX_OUTCOME_SUCCEEDED);
    free(r);
}

static int tp_start(sbx_provider *p, const sbx_run_req *req, sbx_run_cb cb, void *arg,
                    sbx_run **out, char *err, size_t errlen)
{
    char mode = next_step(req->job->job_id);
    sbx_run *r;
    (void)p;
    TP.starts++;
    if (mode == 'X') {
        snprintf(err, errlen, "test provider: start refused");
        return -EIO;
    }
    if (mode == 'B') {
        snprintf(err, errlen, "test provider: slot busy");
        return -EBUSY;
    }
    r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    snprintf(r->job, sizeof(r->job), "%s", req->job->job_id);
    r->mode = mode;
    r->cb = cb;
    r->arg = arg;
    sbx_timer_init(&r->t, on_run_timer, r);
    sbx_timer_start(TP.base.loop, &r->t, 0);
    r->next = TP.runs;
    TP.runs = r;
    *out = r;
    return 0;
}

static void tp_cancel(sbx_provider *p, sbx_run *r)
{
    (void)p;
    r->canceled = 1;
    sbx_timer_start(TP.base.loop, &r->t, 0);
}

static size_t tp_slots(sbx_provider *p, const char ***ids)
{
    (void)p;
    *ids = TP.slot_ptrs;
    return SLOTS;
}

static const char *tp_pool(sbx_provider *p)
{
    (void)p;
    return TP.pool;
}

static void tp_destroy(sbx_provider *p)
{
    (void)p;
    while (TP.runs) {
        sbx_run *r = TP.runs;
        TP.runs = r->next;
        sbx_timer_stop(TP.base.loop, &r->t);
        free(r);
    }
}

static const sbx_provider_ops tp_ops = {
    .name = "test", .start = tp_start, .cancel = tp_cancel, .slots = tp_slots,
    .pool = tp_pool, .sweep = NULL, .destroy = tp_destroy,
};

static void tp_plan(const char *job, const char *steps)
{
    plan *p = &TP.plans[TP.nplans++];
    snprintf(p->job, sizeof(p->job), "%s", job);
    snprintf(p->steps, sizeof(p->steps), "%s", steps);
}

static sbx_run *tp_find(const char *job)
{
    for (sbx_run *r = TP.runs; r; r = r->next)
        if (strcmp(r->job, job) == 0)
            return r;
    return NULL;
}

/* Ends a held run with outcome o (from the loop, as a provider must). */
static void tp_finish(const char *job, sbx_outcome o)
{
    sbx_run *r = tp_find(job);
    assert_non_null(r);
    r->phase = 3;
    r->finish_as = o;
    sbx_timer_start(TP.base.loop, &r->t, 0);
}

/* ---- the worker, wired as main.c wires it ---- */

static sbx_worker W;
static PGconn *PG;              /* the test's own look at the tables */
static char tag[32];
static volatile int redis_up, db_up, pool_ok;
static int64_t next_offset;

static void on_redis_state(void *arg, int up) { (void)arg; redis_up = up; }
static void on_db_state(void *arg, int up) { (void)arg; db_up = up; }
static void on_cancel_notify(void *arg, const char *job_id) { sbx__jobs_cancel(arg, job_id); }
static void before_sleep(void *arg) { sbx__jobs_reap(arg); }
static void on_kafka_msg(void *arg, const sbx_kafka_msg *m) { (void)arg; (void)m; }

static void on_registered(void *arg, const sbx_lease_reply *rep)
{
    (void)arg;
    pool_ok = rep->status == SBX_LEASE_OK ? 1 : -1;
}

/* The worker's dead-letter producer does not create topics (a missing one
 * is a stall an operator must see), so the test creates its own, as an
 * operator does with `sbx topics create`. 0, or -1 with the reason printed. */
static int create_topic(const char *brokers, const char *topic)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk = NULL;
    rd_kafka_NewTopic_t *nt = NULL;
    rd_kafka_queue_t *q = NULL;
    rd_kafka_event_t *ev = NULL;
    const rd_kafka_topic_result_t **res;
    size_t cnt = 0;
    int rc = -1;

    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof(err)) != RD_KAFKA_CONF_OK)
        goto out;
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (!rk)
        goto out;
    conf = NULL;
    nt = rd_kafka_NewTopic_new(topic, 1, 1, err, sizeof(err));
    q = rd_kafka_queue_new(rk);
    if (!nt)
        goto out;
    rd_kafka_CreateTopics(rk, &nt, 1, NULL, q);
    ev = rd_kafka_queue_poll(q, 10000);
    if (!ev || rd_kafka_event_type(ev) != RD_KAFKA_EVENT_CREATETOPICS_RESULT) {
        snprintf(err, sizeof(err), "no answer to CreateTopics");
        goto out;
    }
    res = rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &cnt);
    if (cnt != 1 || (rd_kafka_topic_result_error(res[0]) &&
                     rd_kafka_topic_result_error(res[0]) != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)) {
        snprintf(err, sizeof(err), "%s", cnt ? rd_kafka_topic_result_error_string(res[0]) : "?");
        goto out;
    }
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "test_job: create topic %s: %s\n", topic, err);
    if (ev)
        rd_kafka_event_destroy(ev);
    if (q)
        rd_kafka_queue_destroy(q);
    if (nt)
        rd_kafka_NewTopic_destroy(nt);
    if (rk)
        rd_kafka_destroy(rk);
    if (conf)
        rd_kafka_conf_destroy(conf);
    return rc;
}

static int worker_up(sbx_worker *w, int with_kafka)
{
    char brokers[512], kconf[64] = "", err[512], ttl[] = "3000";
    const char *b = getenv("SBX_BROKERS");
    char wid[64], topic[64], dlq[64], group[64];
    char *argv[32];
    int argc = 0;
    sbx_kafka_config kc;
    const char *extra[2] = {NULL, NULL};

    snprintf(brokers, sizeof(brokers), "%s", b ? b : "127.0.0.1:1");
    if (!b)
        snprintf(kconf, sizeof(kconf), "test.mock.num.brokers=1");
    snprintf(wid, sizeof(wid), "w-%s", tag);
    snprintf(topic, sizeof(topic), "sbx-test-job-%s", tag);
    snprintf(dlq, sizeof(dlq), "sbx-test-job-%s.dlq", tag);
    snprintf(group, sizeof(group), "sbx-test-job-%s", tag);
    argv[argc++] = "test_job";
    argv[argc++] = "--brokers";
    argv[argc++] = brokers;
    argv[argc++] = "--worker-id";
    argv[argc++] = wid;
    argv[argc++] = "--topic";
    argv[argc++] = topic;
    argv[argc++] = "--dlq-topic";
    argv[argc++] = dlq;
    argv[argc++] = "--group";
    argv[argc++] = group;
    argv[argc++] = "--lease-ttl-ms";
    argv[argc++] = ttl;
    argv[argc++] = "--retry-base-ms";
    argv[argc++] = "20";
    argv[argc++] = "--max-attempts";
    argv[argc++] = "2";
    argv[argc++] = "--log-level";
    argv[argc++] = getenv("SBX_TEST_DEBUG") ? "debug" : "warn";
    argv[argc] = NULL;

    memset(w, 0, sizeof(*w));
    if (sbx_config_load(&w->cfg, argc, argv, stderr) != 0)
        return -1;
    if (sbx_loop_new(&w->loop) != 0)
        return -1;
    TP.base.ops = &tp_ops;
    TP.base.loop = w->loop;
    w->provs[0] = &TP.base;
    w->nprov = 1;
    snprintf(w->pools, sizeof(w->pools), "%s", TP.pool);
    redis_up = db_up = pool_ok = 0;
    if (sbx_redis_new(w->loop, w->cfg.redis_url, on_redis_state, w, &w->redis, err,
                      sizeof(err)) != 0 ||
        sbx_leases_new(w->redis, &w->leases) != 0 ||
        sbx_db_new(w->loop, w->cfg.database_url, on_db_state, w, &w->db) != 0) {
        fprintf(stderr, "test_job: %s\n", err);
        return -1;
    }
    test_run_until(w->loop, &redis_up, 10000);
    test_run_until(w->loop, &db_up, 10000);
    if (!redis_up || !db_up)
        return -1;
    sbx_db_listen(w->db, "sbx_cancel", on_cancel_notify, w);
    if (sbx_lease_register(w->leases, TP.pool, w->cfg.worker_id, TP.slot_ptrs, SLOTS,
                           on_registered, w) != 0)
        return -1;
    test_run_until(w->loop, &pool_ok, 10000);
    if (pool_ok != 1)
        return -1;
    sbx_loop_before_sleep(w->loop, before_sleep, w);
    if (!with_kafka)
        return 0;
    if (b && create_topic(b, w->cfg.dlq_topic) != 0)
        return -1;
    memset(&kc, 0, sizeof(kc));
    extra[0] = kconf[0] ? kconf : NULL;
    kc.brokers = w->cfg.brokers;
    kc.topic = w->cfg.topic;
    kc.dlq_topic = w->cfg.dlq_topic;
    kc.group = w->cfg.group;
    kc.client_id = w->cfg.worker_id;
    kc.session_timeout_ms = w->cfg.session_timeout_ms;
    kc.max_inflight = w->cfg.max_inflight;
    kc.extra = extra;
    if (sbx_kafka_new(w->loop, &kc, on_kafka_msg, w, &w->kafka, err, sizeof(err)) != 0) {
        fprintf(stderr, "test_job: kafka: %s\n", err);
        return -1;
    }
    return 0;
}

static void worker_down(sbx_worker *w)
{
    w->provs[0]->ops->destroy(w->provs[0]);
    sbx_kafka_close(w->kafka);
    sbx_redis_free(w->redis);
    sbx_db_free(w->db);
    sbx__jobs_abandon(w);
    sbx_leases_free(w->leases);
    sbx_loop_free(w->loop);
}

static int setup(void **state)
{
    const char *url = getenv("SBX_DATABASE_URL");
    (void)state;
    if (!url || !getenv("SBX_REDIS_URL")) {
        fprintf(stderr, "test_job: SBX_DATABASE_URL and SBX_REDIS_URL must be set; run it "
                        "through `make unit`\n");
        return -1;
    }
    snprintf(tag, sizeof(tag), "%d-%lu", (int)getpid(), (unsigned long)(sbx_wall_ms() % 100000000));
    snprintf(TP.pool, sizeof(TP.pool), "test/%s", tag);
    for (int i = 0; i < SLOTS; i++) {
        snprintf(TP.slot_ids[i], sizeof(TP.slot_ids[i]), "tj-%s#%d", tag, i);
        TP.slot_ptrs[i] = TP.slot_ids[i];
    }
    PG = PQconnectdb(url);
    if (PQstatus(PG) != CONNECTION_OK)
        return -1;
    return worker_up(&W, 1);
}

static int teardown(void **state)
{
    (void)state;
    worker_down(&W);
    PQfinish(PG);
    return 0;
}

/* ---- helpers ---- */

static int state_of(const char *name)
{
    for (int s = 0; s < sbx__job_nstates(); s++)
        if (strcmp(sbx__job_state_name(s), name) == 0)
            return s;
    fail_msg("no state named %s", name);
    return -1;
}

/* A job id (and project id) unique to this run. */
static const char *id(const char *name)
{
    static char buf[16][SBX_ID_MAX + 1];
    static int n;
    char *b = buf[n++ % 16];
    snprintf(b, SBX_ID_MAX + 1, "%s-%s", name, tag);
    return b;
}

/* Hands the worker a message of job with `command` (a JSON array). */
static void intake_cmd(const char *job, const char *project, const char *command)
{
    char payload[512];
    sbx_kafka_msg m;
    memset(&m, 0, sizeof(m));
    snprintf(payload, sizeof(payload),
             "{\"job_id\":\"%s\",\"project_id\":\"%s\",\"command\":%s}", job, project,
             command);
    m.topic = W.cfg.topic;
    m.partition = 0;
    m.offset = next_offset++;
    m.key = project;
    m.key_len = strlen(project);
    m.payload = payload;
    m.len = strlen(payload);
    m.ref.partition = 0;
    m.ref.offset = m.offset;
    sbx__job_intake(&W, &m);
}

static void intake(const char *job, const char *project)
{
    intake_cmd(job, project, "[\"true\"]");
}

static void sql(const char *q, const char *p1)
{
    const char *p[1] = {p1};
    PGresult *r = PQexecParams(PG, q, p1 ? 1 : 0, NULL, p, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", q, PQerrorMessage(PG));
    PQclear(r);
}

/* The run row's column `col`, "" when there is no row. */
static const char *row(const char *job, const char *col)
{
    static char out[256];
    char q[128];
    const char *p[1] = {job};
    PGresult *r;
    snprintf(q, sizeof(q), "SELECT %s::text FROM sbx.runs WHERE job_id = $1", col);
    r = PQexecParams(PG, q, 1, NULL, p, NULL, NULL, 0);
    snprintf(out, sizeof(out), "%s",
             PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 ? PQgetvalue(r, 0, 0)
                                                                       : "");
    PQclear(r);
    return out;
}

/* Runs the loop until cond() holds; fails after WAIT_MS. */
#define RUN_UNTIL(cond, what)                                                  \
    do {                                                                       \
        uint64_t end_ = sbx_now_ms() + WAIT_MS;                                \
        while (!(cond) && sbx_now_ms() < end_)                                 \
            sbx_loop_once(W.loop, 20);                                         \
        if (!(cond))                                                           \
            fail_msg("timed out waiting for %s", what);                        \
    } while (0)

/* Runs the loop one iteration at a time until the job is in `st`. */
static void until_state(const char *job, const char *st)
{
    int want = state_of(st);
    RUN_UNTIL(sbx__job_state(&W, job) == want, st);
}

/* The job has left the worker and its row says `status`. */
static void until_row(const char *job, const char *status)
{
    RUN_UNTIL(sbx__job_state(&W, job) == -1 && strcmp(row(job, "status"), status) == 0, status);
}

static void settle(int ms)
{
    uint64_t end = sbx_now_ms() + (uint64_t)ms;
    while (sbx_now_ms() < end)
        sbx_loop_once(W.loop, 10);
}

/* ---- scenarios ---- */

static void test_success(void **state)
{
    const char *j = id("ok"), *p = id("p-ok");
    uint64_t before = W.stats.succeeded;
    (void)state;
    intake(j, p);
    until_row(j, "succeeded");
    assert_int_equal(W.stats.succeeded, before + 1);
    assert_string_equal(row(j, "attempt"), "1");
    {
        char want[SBX_ID_MAX + 8];
        snprintf(want, sizeof(want), "inst-%s", j);
        assert_string_equal(row(j, "instance"), want);
    }
}

static void test_build_failure(void **state)
{
    const char *j = id("fail"), *p = id("p-fail");
    (void)state;
    tp_plan(j, "F");
    intake(j, p);
    until_row(j, "failed");
    assert_string_equal(row(j, "exit_code"), "1");
}

/* Attempt 1: the build reports a provider error after it started (requeued);
 * attempt 2 (the last of --max-attempts 2): start() itself fails, so the
 * message is dead-lettered and the run ends dead_lettered. */
static void test_provider_error_then_dead_letter(void **state)
{
    const char *j = id("dlq"), *p = id("p-dlq");
    uint64_t before = W.stats.dead_lettered;
    (void)state;
    tp_plan(j, "EX");
    intake(j, p);
    until_row(j, "dead_lettered");
    assert_int_equal(W.stats.dead_lettered, before + 1);
    assert_string_equal(row(j, "attempt"), "2");
    /* The dead letter was recorded and published before the run ended. */
    {
        const char *p[1] = {j};
        PGresult *r = PQexecParams(PG, "SELECT reason || ' ' || published::text FROM "
                                       "sbx.dead_letters WHERE job_id = $1",
                                   1, NULL, p, NULL, NULL, 0);
        assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
        assert_int_equal(PQntuples(r), 1);
        assert_string_equal(PQgetvalue(r, 0, 0), "retries_exhausted true");
        PQclear(r);
    }
}

/* The provider's slot is busy on its side: the claim is undone (no attempt
 * counted), the job waits and then runs. */
static void test_busy_slot(void **state)
{
    const char *j = id("busy"), *p = id("p-busy");
    (void)state;
    tp_plan(j, "BS");
    intake(j, p);
    until_row(j, "succeeded");
    assert_string_equal(row(j, "attempt"), "1");
}

/* Two jobs of one project: the second waits for the first's lease. */
static void test_project_busy_then_run(void **state)
{
    const char *a = id("pb-a"), *b = id("pb-b"), *p = id("p-pb");
    (void)state;
    tp_plan(a, "H");
    intake(a, p);
    until_state(a, "running");
    intake(b, p);
    until_state(b, "waiting");
    RUN_UNTIL(strcmp(row(b, "status"), "waiting_capacity") == 0, "waiting_capacity row");
    tp_finish(a, SBX_OUTCOME_SUCCEEDED);
    until_row(a, "succeeded");
    until_row(b, "succeeded");
}

/* `sbx cancel` of a waiting job: with the database's flag it ends canceled
 * unclaimed; a cancel the database does not confirm changes nothing. */
static void test_cancel_while_waiting(void **state)
{
    const char *a = id("cw-a"), *b = id("cw-b"), *c = id("cw-c"), *p = id("p-cw");
    (void)state;
    tp_plan(a, "H");
    intake(a, p);
    until_state(a, "running");
    intake(b, p);
    intake(c, p);
    until_state(b, "waiting");
    until_state(c, "waiting");
    sql("UPDATE sbx.runs SET cancel_requested = true WHERE job_id = $1", b);
    sql("SELECT pg_notify('sbx_cancel', $1)", b);
    until_row(b, "canceled");
    /* No flag in PostgreSQL: cancel_unclaimed says no, and c goes on. */
    until_state(c, "waiting");
    sbx__jobs_cancel(&W, c);
    settle(200);
    assert_int_not_equal(sbx__job_state(&W, c), -1);
    tp_finish(a, SBX_OUTCOME_SUCCEEDED);
    until_row(a, "succeeded");
    until_row(c, "succeeded");
}

static void test_cancel_while_running(void **state)
{
    const char *j = id("cr"), *p = id("p-cr");
    (void)state;
    tp_plan(j, "H");
    intake(j, p);
    until_state(j, "running");
    sql("UPDATE sbx.runs SET cancel_requested = true WHERE job_id = $1", j);
    sql("SELECT pg_notify('sbx_cancel', $1)", j);
    until_row(j, "canceled");
}

static void test_policy_reject(void **state)
{
    const char *a = id("rj-a"), *b = id("rj-b"), *p = id("p-rj");
    (void)state;
    tp_plan(a, "H");
    intake(a, p);
    until_state(a, "running");
    W.cfg.policy = SBX_POLICY_REJECT;
    intake(b, p);
    until_row(b, "canceled");
    W.cfg.policy = SBX_POLICY_QUEUE;
    assert_non_null(strstr(row(b, "error"), "rejected"));
    tp_finish(a, SBX_OUTCOME_SUCCEEDED);
    until_row(a, "succeeded");
}

/* A newer job of the project cancels the running older one, then runs. */
static void test_policy_supersede(void **state)
{
    const char *a = id("sp-a"), *b = id("sp-b"), *p = id("p-sp");
    (void)state;
    tp_plan(a, "H");
    intake(a, p);
    until_state(a, "running");
    W.cfg.policy = SBX_POLICY_SUPERSEDE;
    intake(b, p);
    until_row(a, "canceled");
    until_row(b, "succeeded");
    W.cfg.policy = SBX_POLICY_QUEUE;
}

/* Shutdown at every stage: each job is handed back (offsets unfinished,
 * nothing terminal written); redelivered afterwards, they finish. */
static void test_shutdown_hand_back(void **state)
{
    const char *run = id("sd-run"), *wait = id("sd-wait"), *p = id("p-sd");
    const char *lease = id("sd-lease"), *busy = id("sd-busy"), *claim = id("sd-claim");
    const char *rec = id("sd-rec");
    PGconn *locker;
    uint64_t retries;
    (void)state;

    /* Soft: a waiting job goes at once; a running one keeps running. */
    tp_plan(run, "H");
    intake(run, p);
    until_state(run, "running");
    intake(wait, p);
    until_state(wait, "waiting");
    W.stopping = 1;
    sbx__jobs_shutdown(&W, 0);
    assert_int_equal(sbx__job_state(&W, wait), -1);
    assert_int_equal(sbx__job_state(&W, run), state_of("running"));
    /* A job whose lease arrives during shutdown gives it back; one whose
     * project is busy is handed back at once. */
    intake(lease, id("p-sd-lease"));
    RUN_UNTIL(sbx__job_state(&W, lease) == -1, "lease handed back");
    intake(busy, p);
    RUN_UNTIL(sbx__job_state(&W, busy) == -1, "busy handed back");
    /* Hard: the running build is stopped, requeued and handed back. */
    W.stopping = 2;
    sbx__jobs_shutdown(&W, 1);
    RUN_UNTIL(sbx__job_state(&W, run) == -1, "running handed back");
    assert_string_equal(row(run, "status"), "queued");
    W.stopping = 0;

    /* Shutdown while the claim is in flight: claimed, then requeued. */
    intake(claim, id("p-sd-claim"));
    until_state(claim, "claiming");
    W.stopping = 1;
    RUN_UNTIL(sbx__job_state(&W, claim) == -1, "claim handed back");
    W.stopping = 0;
    assert_string_equal(row(claim, "status"), "queued");

    /* Shutdown while record_run is being retried: another session locks
     * sbx.runs, so the worker's record_run fails on its lock timeout. */
    sbx_db_query(W.db, "SET lock_timeout = '100ms'", 0, NULL, NULL, NULL);
    locker = PQconnectdb(getenv("SBX_DATABASE_URL"));
    assert_int_equal(PQstatus(locker), CONNECTION_OK);
    PQclear(PQexec(locker, "BEGIN"));
    PQclear(PQexec(locker, "LOCK TABLE sbx.runs IN ACCESS EXCLUSIVE MODE"));
    retries = W.stats.retries;
    intake(rec, id("p-sd-rec"));
    RUN_UNTIL(W.stats.retries > retries, "record_run retried");
    assert_int_equal(sbx__job_state(&W, rec), state_of("recording"));
    W.stopping = 1;
    RUN_UNTIL(sbx__job_state(&W, rec) == -1, "recording handed back");
    W.stopping = 0;
    PQclear(PQexec(locker, "ROLLBACK"));
    PQfinish(locker);
    sbx_db_query(W.db, "RESET lock_timeout", 0, NULL, NULL, NULL);

    /* Redelivered: the one whose cancel was asked meanwhile ends canceled
     * at once, the others run. */
    sql("UPDATE sbx.runs SET cancel_requested = true WHERE job_id = $1", wait);
    intake(wait, p);
    until_row(wait, "canceled");
    intake(run, p);
    until_row(run, "succeeded");
    intake(claim, id("p-sd-claim"));
    until_row(claim, "succeeded");
    intake(rec, id("p-sd-rec"));
    until_row(rec, "succeeded");
}

static volatile int redis_done;
static void on_redis_reply(void *arg, redisReply *rep)
{
    (void)arg;
    (void)rep;
    redis_done = 1;
}

/* Another owner took the slot's lease (its token in Redis is not ours): the
 * next renewal is refused, the build is stopped, nothing is written; once the
 * foreign lease expires the job runs again under a newer token. */
static void steal_lease(const char *job)
{
    char slot[128], key[192];
    const char *argv[4];
    size_t lens[4];
    snprintf(slot, sizeof(slot), "%s", row(job, "slot"));
    assert_true(slot[0]);
    snprintf(key, sizeof(key), "{sbx}:lease:%s", slot);
    argv[0] = "HSET";
    argv[1] = key;
    argv[2] = "token";
    argv[3] = "999999999999";
    for (int i = 0; i < 4; i++)
        lens[i] = strlen(argv[i]);
    redis_done = 0;
    assert_int_equal(sbx_redis_cmd(W.redis, on_redis_reply, NULL, 4, argv, lens), 0);
    RUN_UNTIL(redis_done, "HSET");
}

static void test_lease_lost(void **state)
{
    const char *r = id("ll-run"), *s = id("ll-start");
    uint64_t fenced = W.stats.fenced_out;
    (void)state;
    /* While running. */
    tp_plan(r, "HS");
    intake(r, id("p-ll-run"));
    until_state(r, "running");
    steal_lease(r);
    RUN_UNTIL(W.stats.fenced_out > fenced, "lease lost");
    until_row(r, "succeeded");
    assert_string_equal(row(r, "attempt"), "2");
    /* While starting (the provider never said STARTED). */
    fenced = W.stats.fenced_out;
    tp_plan(s, "NS");
    intake(s, id("p-ll-start"));
    until_state(s, "starting");
    RUN_UNTIL(strcmp(row(s, "status"), "provisioning") == 0, "provisioning");
    steal_lease(s);
    RUN_UNTIL(W.stats.fenced_out > fenced, "lease lost while starting");
    until_row(s, "succeeded");
}

/* A newer owner's token is on the row when the build ends: the terminal
 * write is refused (fenced out), the next claim is stale, and the job runs
 * again above that token. */
static void test_fenced_terminal_write(void **state)
{
    const char *j = id("fence"), *p = id("p-fence");
    uint64_t fenced = W.stats.fenced_out;
    (void)state;
    tp_plan(j, "HS");
    intake(j, p);
    until_state(j, "running");
    RUN_UNTIL(strcmp(row(j, "status"), "running") == 0, "running row");
    sql("UPDATE sbx.runs SET lease_token = lease_token + 1000000 WHERE job_id = $1", j);
    tp_finish(j, SBX_OUTCOME_SUCCEEDED);
    RUN_UNTIL(W.stats.fenced_out > fenced, "fenced out");
    until_row(j, "succeeded");
}

/* A job delivered again after it finished is skipped. */
static void test_redelivery_of_terminal(void **state)
{
    const char *j = id("ok"), *p = id("p-ok");
    uint64_t dup = W.stats.duplicates;
    int starts = TP.starts;
    (void)state;
    assert_string_equal(row(j, "status"), "succeeded");
    intake(j, p);
    RUN_UNTIL(sbx__job_state(&W, j) == -1 && W.stats.duplicates > dup, "skipped");
    assert_int_equal(TP.starts, starts);
}

/* The id of a finished job sent again with another payload: the message is
 * dead-lettered as job_id_reused, the run keeps its status and fingerprint,
 * nothing starts; the same payload again is still a plain duplicate. */
static void test_reused_id_after_finish(void **state)
{
    const char *j = id("ok"), *p = id("p-ok");
    uint64_t reused = W.stats.id_reused, dl = W.stats.dead_lettered, dup = W.stats.duplicates;
    int starts = TP.starts;
    char sha[65];
    (void)state;
    snprintf(sha, sizeof(sha), "%s", row(j, "payload_sha256"));
    assert_int_equal(strlen(sha), 64);
    intake_cmd(j, p, "[\"false\"]");
    /* The dead letter counts once its row and envelope are written. */
    RUN_UNTIL(sbx__job_state(&W, j) == -1 && W.stats.id_reused > reused &&
                  W.stats.dead_lettered > dl,
              "refused");
    assert_int_equal(W.stats.dead_lettered, dl + 1);
    assert_int_equal(W.stats.duplicates, dup);
    assert_string_equal(row(j, "status"), "succeeded");
    assert_string_equal(row(j, "payload_sha256"), sha);
    intake(j, p);
    RUN_UNTIL(sbx__job_state(&W, j) == -1 && W.stats.duplicates > dup, "skipped");
    assert_int_equal(W.stats.id_reused, reused + 1);
    assert_int_equal(TP.starts, starts);
}

/* The same while the first payload still runs in this worker: the second is
 * refused at once (the job table), the first runs on and finishes. */
static void test_reused_id_in_flight(void **state)
{
    const char *j = id("reuse-fly"), *p = id("p-reuse-fly");
    uint64_t reused = W.stats.id_reused;
    int starts;
    (void)state;
    tp_plan(j, "H");
    intake(j, p);
    until_state(j, "running");
    starts = TP.starts;
    intake_cmd(j, p, "[\"false\"]");
    assert_int_equal(W.stats.id_reused, reused + 1);
    assert_int_equal(sbx__job_state(&W, j), state_of("running"));
    tp_finish(j, SBX_OUTCOME_SUCCEEDED);
    until_row(j, "succeeded");
    assert_int_equal(TP.starts, starts);
}

/* ---- the table ---- */

/* This file's own list of the legal moves: the design, written twice. */
static const char *const expected[][2] = {
    {"recording", "leasing"},   {"recording", "done"},       {"recording", "ending"},
    {"recording", "handed_back"},
    {"ending", "done"},         {"ending", "leasing"},
    {"leasing", "claiming"},    {"leasing", "waiting"},      {"leasing", "ending"},
    {"leasing", "releasing"},   {"leasing", "handed_back"},
    {"waiting", "leasing"},     {"waiting", "ending"},       {"waiting", "handed_back"},
    {"claiming", "starting"},   {"claiming", "unclaiming"},  {"claiming", "releasing"},
    {"starting", "running"},    {"starting", "finishing"},   {"starting", "unclaiming"},
    {"starting", "releasing"},
    {"running", "finishing"},   {"running", "unclaiming"},   {"running", "releasing"},
    {"finishing", "releasing"},
    {"unclaiming", "releasing"},
    {"releasing", "done"},      {"releasing", "handed_back"}, {"releasing", "waiting"},
};
#define NEXPECTED (sizeof(expected) / sizeof(expected[0]))

static int expected_legal(int from, int to)
{
    for (size_t i = 0; i < NEXPECTED; i++)
        if (state_of(expected[i][0]) == from && state_of(expected[i][1]) == to)
            return 1;
    return 0;
}

static void test_move_table(void **state)
{
    int n = sbx__job_nstates(), legal = 0;
    (void)state;
    assert_int_equal(n, 12);
    for (int from = -1; from <= n; from++)
        for (int to = -1; to <= n; to++) {
            int want = from >= 0 && from < n && to >= 0 && to < n && expected_legal(from, to);
            if (sbx__job_move_legal(from, to) != want)
                fail_msg("%s -> %s: table says %d, expected %d", sbx__job_state_name(from),
                         sbx__job_state_name(to), sbx__job_move_legal(from, to), want);
            legal += want;
        }
    assert_int_equal(legal, (int)NEXPECTED);
    print_message("%d legal moves of %d x %d\n", legal, n, n);
}

/* Runs after every scenario above: each legal move was taken, no other. */
static void test_every_legal_move_taken(void **state)
{
    const unsigned long *m = sbx__job_moves();
    int n = sbx__job_nstates(), missing = 0;
    (void)state;
    for (int from = 0; from < n; from++)
        for (int to = 0; to < n; to++) {
            unsigned long k = m[from * n + to];
            if (sbx__job_move_legal(from, to) && k == 0) {
                print_error("never taken: %s -> %s\n", sbx__job_state_name(from),
                            sbx__job_state_name(to));
                missing++;
            }
            assert_false(!sbx__job_move_legal(from, to) && k != 0);
        }
    assert_int_equal(missing, 0);
}

/* An illegal move aborts a debug build: a provider that reports FINISHED
 * twice moves a finishing job to finishing again. In a child with a worker
 * (and connections) of its own. */
static void test_illegal_move_aborts(void **state)
{
    char logpath[64], buf[8192];
    int status = 0;
    size_t n;
    FILE *f;
    pid_t pid;
    (void)state;
    snprintf(logpath, sizeof(logpath), "/tmp/sbx-test-job-%d.log", (int)getpid());
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        const char *j = id("illegal");
        if (!freopen(logpath, "w", stderr))
            _exit(2);
        /* The parent's connections stay untouched: new ones, no Kafka (the
         * job aborts long before it would mark an offset). */
        TP.runs = NULL;
        if (worker_up(&W, 0) != 0)
            _exit(3);
        tp_plan(j, "D");
        intake(j, id("p-illegal"));
        settle(WAIT_MS);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    f = fopen(logpath, "r");
    assert_non_null(f);
    n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    unlink(logpath);
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT))
        fail_msg("child did not abort (status %d): %s", status, buf);
    assert_non_null(strstr(buf, "illegal move finishing -> finishing"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_move_table),
        cmocka_unit_test(test_success),
        cmocka_unit_test(test_build_failure),
        cmocka_unit_test(test_provider_error_then_dead_letter),
        cmocka_unit_test(test_busy_slot),
        cmocka_unit_test(test_project_busy_then_run),
        cmocka_unit_test(test_cancel_while_waiting),
        cmocka_unit_test(test_cancel_while_running),
        cmocka_unit_test(test_policy_reject),
        cmocka_unit_test(test_policy_supersede),
        cmocka_unit_test(test_shutdown_hand_back),
        cmocka_unit_test(test_lease_lost),
        cmocka_unit_test(test_fenced_terminal_write),
        cmocka_unit_test(test_redelivery_of_terminal),
        cmocka_unit_test(test_reused_id_after_finish),
        cmocka_unit_test(test_reused_id_in_flight),
        cmocka_unit_test(test_every_legal_move_taken),
        cmocka_unit_test(test_illegal_move_aborts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
