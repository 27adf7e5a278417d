/* test_db.c — the pipelined libpq connection and the fencing SQL functions,
 * against the real PostgreSQL of the test services (SBX_DATABASE_URL, with
 * migrations applied; `make test` provides both).
 *
 * Checks: answers come back in order and one failing statement aborts no
 * other; a connection killed under in-flight statements reconnects and sends
 * them again; a stale fencing token changes nothing; replays are harmless;
 * calls merged into one statement (sbx_db_batched, migrations/0009) answer
 * and change exactly what the same calls one by one do, in every case the
 * worker meets, a failing call included. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "db.h"
#include "svc.h"

static sbx_loop *L;
static sbx_db *D;
static volatile int up;
static char run_tag[32];

static void on_state(void *arg, int c) { (void)arg; up = c; }

static int setup(void **state)
{
    const char *url = getenv("SBX_DATABASE_URL");
    (void)state;
    if (!url) {
        fprintf(stderr, "test_db: SBX_DATABASE_URL is not set; run it through `make test`\n");
        return -1;
    }
    snprintf(run_tag, sizeof(run_tag), "t%d-%lu", (int)getpid(), (unsigned long)sbx_now_ms());
    sbx_loop_new(&L);
    sbx_db_new(L, url, on_state, NULL, &D);
    return test_run_until(L, &up, 10000) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    sbx_db_free(D);
    sbx_loop_free(L);
    return 0;
}

typedef struct ans {
    int n;
    int order[512];
    char val[512][2048];   /* the merged-calls test compares whole run histories */
    int failed[512];
} ans;
static ans A;
static volatile int done_all;
static int expect;

/* The answer's row, its columns joined by '|' (NULL as ~). */
static void on_ans(void *arg, PGresult *res, const char *err)
{
    int i = (int)(intptr_t)arg, used = 0;
    A.order[A.n] = i;
    A.failed[A.n] = err != NULL;
    if (err)
        fprintf(stderr, "test_db: call %d failed: %s", i, err);
    A.val[A.n][0] = '\0';
    for (int c = 0; res && PQntuples(res) && c < PQnfields(res); c++)
        used += snprintf(A.val[A.n] + used, sizeof(A.val[0]) - (size_t)used, "%s%s", c ? "|" : "",
                         PQgetisnull(res, 0, c) ? "~" : PQgetvalue(res, 0, c));
    if (++A.n == expect)
        done_all = 1;
}

static void q(const char *sql, int n, const char *const *p, int tag)
{
    assert_int_equal(sbx_db_query(D, sql, n, p, on_ans, (void *)(intptr_t)tag), 0);
}

static void reset(int n)
{
    memset(&A, 0, sizeof(A));
    done_all = 0;
    expect = n;
}

static void test_pipeline_order_and_isolated_errors(void **state)
{
    char buf[300][16];
    (void)state;
    reset(300);
    for (int i = 0; i < 300; i++) {
        const char *p[1] = {buf[i]};
        snprintf(buf[i], sizeof(buf[i]), "%d", i);
        if (i == 150)
            q("SELECT 1/0", 0, NULL, i);
        else
            q("SELECT $1::int * 2", 1, p, i);
    }
    assert_true(test_run_until(L, &done_all, 10000));
    for (int i = 0; i < 300; i++) {
        char want[16];
        assert_int_equal(A.order[i], i);
        assert_int_equal(A.failed[i], i == 150);
        snprintf(want, sizeof(want), "%d", i * 2);
        if (i != 150)
            assert_string_equal(A.val[i], want);
    }
}

static const char *val_of(const char *sql, int n, const char *const *p);

static void test_reconnect_replays_inflight(void **state)
{
    char pid[32], cmd[512];
    (void)state;
    snprintf(pid, sizeof(pid), "%s", val_of("SELECT pg_backend_pid()", 0, NULL));
    /* Three statements in flight; another session kills our backend while
     * the first sleeps. All three must complete, in order, after the
     * connection comes back. */
    reset(3);
    q("SELECT 'slept' FROM pg_sleep(1)", 0, NULL, 0);
    q("SELECT 'after-1'", 0, NULL, 1);
    q("SELECT 'after-2'", 0, NULL, 2);
    snprintf(cmd, sizeof(cmd),
             "sleep 0.3; psql -q -At '%s' -c 'SELECT pg_terminate_backend(%s)' >/dev/null",
             getenv("SBX_DATABASE_URL"), pid);
    assert_int_equal(system(cmd), 0);
    assert_true(test_run_until(L, &done_all, 15000));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(A.order[i], i);
        assert_false(A.failed[i]);
    }
    assert_string_equal(A.val[0], "slept");
    assert_string_equal(A.val[2], "after-2");
    assert_true(test_run_until(L, &up, 10000));
    assert_string_not_equal(val_of("SELECT pg_backend_pid()", 0, NULL), pid);
}

static const char *val_of(const char *sql, int n, const char *const *p)
{
    reset(1);
    q(sql, n, p, 0);
    assert_true(test_run_until(L, &done_all, 10000));
    assert_false(A.failed[0]);
    return A.val[0];
}

static void test_group_commit(void **state)
{
    int distinct = 0;
    (void)state;
    /* Statements queued together share a transaction (one commit, one WAL
     * flush): they see the same transaction id. One per statement would be
     * 200 ids. */
    reset(200);
    for (int i = 0; i < 200; i++)
        q("SELECT pg_current_xact_id()::text", 0, NULL, i);
    assert_true(test_run_until(L, &done_all, 10000));
    for (int i = 0; i < 200; i++) {
        int seen = 0;
        assert_false(A.failed[i]);
        for (int k = 0; k < i && !seen; k++)
            seen = strcmp(A.val[k], A.val[i]) == 0;
        distinct += !seen;
    }
    fprintf(stderr, "test_db: 200 statements in %d transactions\n", distinct);
    assert_true(distinct <= 10);
}

static void test_fencing_functions(void **state)
{
    char job[64], proj[64];
    (void)state;
    snprintf(job, sizeof(job), "fence-%s", run_tag);
    snprintf(proj, sizeof(proj), "proj-%s", run_tag);
    {
        const char *p[6] = {job, proj, "{\"job_id\":\"x\"}", "w1", "0", "1"};
        assert_string_equal(val_of("SELECT status FROM sbx.record_run($1,$2,$3,$4,$5,$6)", 6, p),
                            "queued");
        /* Recording again is harmless. */
        assert_string_equal(val_of("SELECT status FROM sbx.record_run($1,$2,$3,$4,$5,$6)", 6, p),
                            "queued");
    }
    {
        const char *p[5] = {job, "10", "w1", "local", "s0"};
        assert_string_equal(val_of("SELECT result FROM sbx.claim_run($1,$2,$3,$4,$5)", 5, p),
                            "claimed");
        /* A replay of the same claim (lost answer) is still ours. */
        assert_string_equal(val_of("SELECT result FROM sbx.claim_run($1,$2,$3,$4,$5)", 5, p),
                            "claimed");
        const char *old[5] = {job, "9", "w0", "local", "s1"};
        assert_string_equal(val_of("SELECT result FROM sbx.claim_run($1,$2,$3,$4,$5)", 5, old),
                            "stale");
    }
    {
        const char *stale[10] = {job, "9", "w0", "succeeded", NULL, "0", NULL, "zombie", NULL, NULL};
        const char *ok[10] = {job, "10", "w1", "running", NULL, NULL, NULL, NULL, NULL, NULL};
        const char *fin[10] = {job, "10", "w1", "failed", NULL, "3", NULL, "tail", NULL, NULL};
        const char *sql = "SELECT sbx.transition($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)";
        assert_string_equal(val_of(sql, 10, stale), "f");
        assert_string_equal(val_of(sql, 10, ok), "t");
        assert_string_equal(val_of(sql, 10, fin), "t");
        assert_string_equal(val_of(sql, 10, fin), "t");   /* replay */
        assert_string_equal(val_of(sql, 10, ok), "f");    /* terminal is final */
    }
    {
        const char *p[1] = {job};
        assert_string_equal(
            val_of("SELECT status || ' ' || exit_code || ' ' || log_tail FROM sbx.runs WHERE job_id=$1",
                   1, p),
            "failed 3 tail");
        assert_string_equal(
            val_of("SELECT string_agg(coalesce(from_status,'-') || '>' || to_status, ',' ORDER BY id)"
                   " FROM sbx.run_events WHERE job_id=$1", 1, p),
            "->queued,queued>provisioning,provisioning>running,running>failed");
    }
}

static void test_one_active_build_per_project(void **state)
{
    char j1[64], j2[64], proj[64];
    (void)state;
    snprintf(j1, sizeof(j1), "a1-%s", run_tag);
    snprintf(j2, sizeof(j2), "a2-%s", run_tag);
    snprintf(proj, sizeof(proj), "one-%s", run_tag);
    const char *r1[6] = {j1, proj, "{}", "w", "0", "1"};
    const char *r2[6] = {j2, proj, "{}", "w", "0", "2"};
    val_of("SELECT status FROM sbx.record_run($1,$2,$3,$4,$5,$6)", 6, r1);
    val_of("SELECT status FROM sbx.record_run($1,$2,$3,$4,$5,$6)", 6, r2);
    const char *c1[5] = {j1, "100", "w", "local", "s0"};
    const char *c2[5] = {j2, "101", "w", "local", "s1"};
    assert_string_equal(val_of("SELECT result FROM sbx.claim_run($1,$2,$3,$4,$5)", 5, c1), "claimed");
    assert_string_equal(val_of("SELECT result FROM sbx.claim_run($1,$2,$3,$4,$5)", 5, c2), "busy");
}


/* ---- merged calls (migrations/0009_batches.sql) ---- */

static const sbx_db_batch RECORD = {
    "SELECT * FROM sbx.record_run($1,$2,$3,$4,$5,$6,$7)",
    "SELECT * FROM sbx.record_runs($1::text[],$2::text[],$3::jsonb[],$4::text[],$5::integer[],"
    "$6::bigint[],$7::text[])", 7, 2};
static const sbx_db_batch WAIT = {
    "SELECT sbx.wait_run($1,$2,$3)", "SELECT * FROM sbx.wait_runs($1,$2,$3)", 3, 2};
static const sbx_db_batch CLAIM = {
    "SELECT * FROM sbx.claim_run($1,$2,$3,$4,$5)",
    "SELECT * FROM sbx.claim_runs($1::text[],$2::bigint[],$3,$4,$5)", 5, 2};
static const sbx_db_batch TRANSITION = {
    "SELECT sbx.transition($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
    "SELECT * FROM sbx.transitions($1::text[],$2::bigint[],$3,$4,$5,$6::integer[],$7,$8,$9,$10)",
    10, 2};

#define CALLS_MAX 12
#define PARTS_MAX 10

/* One call of a phase: its parameters, "%s" standing for the mode's id prefix. */
typedef struct call { const char *p[PARTS_MAX]; } call;

#define PHASES 5
static char answers[2][PHASES][CALLS_MAX][sizeof(A.val[0])];
static int merged_phases;
static int answer_failed[2][PHASES][CALLS_MAX];

static void fill(char out[PARTS_MAX][96], const call *c, int n, const char *pre,
                 const char *ps[PARTS_MAX])
{
    for (int k = 0; k < n; k++) {
        ps[k] = NULL;
        if (c->p[k]) {
            snprintf(out[k], 96, c->p[k], pre);
            ps[k] = out[k];
        }
    }
}

/* Runs a phase's calls: one by one (each after the last one's answer), or
 * queued together behind a statement in flight so that they merge. */
static void phase(int mode, int ph, const sbx_db_batch *kind, const call *calls, int n,
                  const char *pre)
{
    char vals[PARTS_MAX][96];
    const char *ps[PARTS_MAX];
    if (mode == 0) {
        for (int i = 0; i < n; i++) {
            fill(vals, &calls[i], kind->nparams, pre, ps);
            reset(1);
            q(kind->one, kind->nparams, ps, 0);
            assert_true(test_run_until(L, &done_all, 10000));
            snprintf(answers[0][ph][i], sizeof(answers[0][ph][i]), "%s", A.val[0]);
            answer_failed[0][ph][i] = A.failed[0];
        }
        return;
    }
    sbx_db_count c0, c1;
    reset(n + 1);
    q("SELECT 'first' FROM pg_sleep(0.05)", 0, NULL, -1);
    sbx_db_counts(D, &c0);
    for (int i = 0; i < n; i++) {
        fill(vals, &calls[i], kind->nparams, pre, ps);
        assert_int_equal(sbx_db_batched(D, kind, ps, on_ans, (void *)(intptr_t)i), 0);
    }
    assert_true(test_run_until(L, &done_all, 10000));
    sbx_db_counts(D, &c1);
    assert_int_equal(c1.calls - c0.calls, n + 1);
    /* The n calls waited for the sleep's round, ~50 ms each. */
    assert_true(c1.wait_us - c0.wait_us >= (uint64_t)n * 30000);
    /* Merged: one statement for the n calls, or (the phase with a failing
     * call) that one and then each call solo. */
    assert_true(c1.statements - c0.statements == 1 ||
                c1.statements - c0.statements == (uint64_t)n + 1);
    merged_phases += c1.statements - c0.statements == 1;
    for (int i = 0; i < n; i++) {
        assert_int_equal(A.order[i + 1], i);
        snprintf(answers[1][ph][i], sizeof(answers[1][ph][i]), "%s", A.val[i + 1]);
        answer_failed[1][ph][i] = A.failed[i + 1];
    }
}

static void exec_fmt(const char *fmt, const char *pre)
{
    char sql[1024];
    snprintf(sql, sizeof(sql), fmt, pre, pre, pre, pre, pre, pre);
    val_of(sql, 0, NULL);
}

/* The runs' rows and histories with the mode's prefix taken out. */
static void state_of(const char *pre, char *out, size_t cap)
{
    char sql[1024];
    const char *p[1] = {pre};
    snprintf(sql, sizeof(sql),
             "SELECT string_agg(substr(r.job_id, length($1) + 1) || ':' || r.status || '/' ||"
             " r.attempt || '/' || r.lease_token || '/' || coalesce(r.exit_code::text, '~') ||"
             " '/' || coalesce(r.log_tail, '~') || '/' || coalesce(r.instance, '~') || '/' ||"
             " (r.started_at IS NOT NULL) || (r.finished_at IS NOT NULL) || ' [' ||"
             " (SELECT string_agg(coalesce(e.from_status, '-') || '>' || e.to_status ||"
             "  coalesce(':' || e.detail, ''), ',' ORDER BY e.id) FROM sbx.run_events e"
             "  WHERE e.job_id = r.job_id) || ']', ' ' ORDER BY r.job_id)"
             " FROM sbx.runs r WHERE r.job_id LIKE $1 || '%%'");
    snprintf(out, cap, "%s", val_of(sql, 1, p));
}

static void test_merged_calls_equal_one_by_one(void **state)
{
    static const call records[] = {
        {{"%snew", "%sp1", "{\"cmd\":[\"true\"]}", "w", "0", "1", "sha-new"}},
        {{"%sdup", "%sp2", "{\"x\":1}", "w", "0", "2", "sha-dup"}},           /* redelivery */
        {{"%sreused", "%sp3", "{\"x\":\"other\"}", "w", "0", "3", "sha-other"}}, /* id reused */
        {{"%snew", "%sp1", "{\"cmd\":[\"true\"]}", "w", "0", "4", "sha-new"}}, /* twice here */
        {{"%ssub", "%sp4", "{\"x\":4}", "w", "0", "5", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}},           /* submitted */
        {{"%snew2", "%sp5", "{\"env\":{\"K\":\"secret\"}}", "w", "1", "6", "sha-n2"}},
    };
    static const call waits[] = {
        {{"%snew", "w", "project busy"}}, {{"%snew", "w", "project busy"}},
        {{"%sterm", "w", "no capacity"}}, {{"%sbusyB", "w", "project busy"}},
    };
    static const call claims[] = {
        {{"%snew", "10", "w", "local", "s1"}},
        {{"%sstale", "40", "w", "local", "s2"}},   /* the row holds 50 */
        {{"%sterm", "60", "w", "local", "s3"}},    /* succeeded already */
        {{"%scancel", "70", "w", "local", "s4"}},  /* cancel asked */
        {{"%sbusyB", "80", "w", "local", "s5"}},   /* busyA of its project runs */
        {{"%sdup", "90", "w", "local", "s6"}},
        {{"%snew2", "95", "w", "local", "s7"}},
    };
    static const call unknown[] = {
        {{"%sdup", "91", "w", "local", "s6"}},     /* a replay... of a newer token */
        {{"%snobody", "92", "w", "local", "s8"}},  /* no such run: an error */
        {{"%sdup", "90", "w", "local", "s6"}},     /* a replay of our claim */
    };
    static const call moves[] = {
        {{"%snew", "10", "w", "running", NULL, NULL, NULL, NULL, NULL, "i-1"}},
        {{"%snew", "10", "w", "succeeded", "done", "0", NULL, "tail", NULL, NULL}},
        {{"%sdup", "91", "w", "running", NULL, NULL, NULL, NULL, NULL, NULL}},
        {{"%sdup", "91", "w", "running", NULL, NULL, NULL, NULL, NULL, NULL}},  /* replay */
        {{"%sstale", "40", "w", "running", NULL, NULL, NULL, NULL, NULL, NULL}},
        {{"%sbusyA", "5", "w", "succeeded", NULL, "0", NULL, NULL, NULL, NULL}},
        {{"%sbusyA", "5", "w", "failed", NULL, "1", NULL, NULL, NULL, NULL}},  /* after the end */
        {{"%snew2", "95", "w", "failed", "early", "2", "boom", NULL, NULL, NULL}},
        {{"%snew2", "96", "w", "running", NULL, NULL, NULL, NULL, NULL, NULL}},  /* other token */
    };
    char st[2][4096], pre[2][48];
    (void)state;

    for (int mode = 0; mode < 2; mode++) {
        snprintf(pre[mode], sizeof(pre[mode]), "%s-%s-", mode ? "many" : "one", run_tag);
        /* The same starting rows for both modes. */
        exec_fmt("SELECT sbx.record_run('%1$sdup','%1$sp2','{\"x\":1}','w',0,2,'sha-dup')",
                 pre[mode]);
        exec_fmt("SELECT sbx.record_run('%1$sreused','%1$sp3','{\"x\":3}','w',0,3,'sha-first')",
                 pre[mode]);
        exec_fmt("SELECT sbx.submit_run('%1$ssub','%1$sp4','{\"x\":4}','aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa')", pre[mode]);
        exec_fmt("SELECT sbx.record_run('%1$sstale','%1$sp6','{}','w',0,7,'s')", pre[mode]);
        exec_fmt("SELECT sbx.claim_run('%1$sstale',50,'w2','local','s9')", pre[mode]);
        exec_fmt("SELECT sbx.record_run('%1$sterm','%1$sp7','{}','w',0,8,'s')", pre[mode]);
        exec_fmt("SELECT sbx.claim_run('%1$sterm',3,'w','local','s9')", pre[mode]);
        exec_fmt("SELECT sbx.transition('%1$sterm',3,'w','succeeded',NULL,0,NULL,NULL,NULL,NULL)",
                 pre[mode]);
        exec_fmt("SELECT sbx.record_run('%1$scancel','%1$sp8','{}','w',0,9,'s')", pre[mode]);
        exec_fmt("SELECT sbx.request_cancel('%1$scancel')", pre[mode]);
        exec_fmt("SELECT sbx.record_run('%1$sbusyA','%1$sp9','{}','w',0,10,'s')", pre[mode]);
        exec_fmt("SELECT sbx.record_run('%1$sbusyB','%1$sp9','{}','w',0,11,'s')", pre[mode]);
        exec_fmt("SELECT sbx.claim_run('%1$sbusyA',5,'w','local','s0')", pre[mode]);

        phase(mode, 0, &RECORD, records, 6, pre[mode]);
        phase(mode, 1, &WAIT, waits, 4, pre[mode]);
        phase(mode, 2, &CLAIM, claims, 7, pre[mode]);
        phase(mode, 3, &CLAIM, unknown, 3, pre[mode]);
        phase(mode, 4, &TRANSITION, moves, 9, pre[mode]);
        state_of(pre[mode], st[mode], sizeof(st[mode]));
    }
    for (int ph = 0; ph < PHASES; ph++)
        for (int i = 0; i < CALLS_MAX; i++) {
            assert_string_equal(answers[1][ph][i], answers[0][ph][i]);
            assert_int_equal(answer_failed[1][ph][i], answer_failed[0][ph][i]);
        }
    fprintf(stderr, "test_db: one by one and merged leave: %s\n", st[0]);
    assert_int_equal(merged_phases, PHASES - 1);
    assert_string_equal(st[1], st[0]);
    /* The cases are what they say (so the comparison is not of two failures). */
    assert_string_equal(answers[0][2][0], "claimed|provisioning|1|10");
    assert_string_equal(answers[0][2][1], "stale|provisioning|1|50");
    assert_string_equal(answers[0][2][4], "busy|waiting_capacity|0|0");
    assert_true(answer_failed[0][3][1]);
    assert_false(answer_failed[0][3][0] || answer_failed[0][3][2]);
    assert_string_equal(answers[0][4][0], "t");
    assert_string_equal(answers[0][4][4], "f");
}

/* Fewer calls of a kind than its merge_min go one by one; as many, merged. */
static void test_merge_min(void **state)
{
    static const sbx_db_batch DOUBLE = {"SELECT $1::int * 2",
                                        "SELECT x * 2 FROM unnest($1::int[]) WITH ORDINALITY"
                                        " AS u(x, o) ORDER BY o", 1, 8};
    char v[8][8];
    (void)state;
    for (int n = 7; n <= 8; n++) {
        sbx_db_count c0, c1;
        reset(n + 1);
        q("SELECT 'first' FROM pg_sleep(0.05)", 0, NULL, -1);
        sbx_db_counts(D, &c0);
        for (int i = 0; i < n; i++) {
            const char *p[1] = {v[i]};
            snprintf(v[i], sizeof(v[i]), "%d", i);
            assert_int_equal(sbx_db_batched(D, &DOUBLE, p, on_ans, (void *)(intptr_t)i), 0);
        }
        assert_true(test_run_until(L, &done_all, 10000));
        sbx_db_counts(D, &c1);
        for (int i = 0; i < n; i++) {
            char want[8];
            snprintf(want, sizeof(want), "%d", 2 * i);
            assert_string_equal(A.val[i + 1], want);
        }
        /* The sleep was sent before c0. */
        assert_int_equal(c1.statements - c0.statements, n == 7 ? 7 : 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipeline_order_and_isolated_errors),
        cmocka_unit_test(test_reconnect_replays_inflight),
        cmocka_unit_test(test_group_commit),
        cmocka_unit_test(test_fencing_functions),
        cmocka_unit_test(test_one_active_build_per_project),
        cmocka_unit_test(test_merged_calls_equal_one_by_one),
        cmocka_unit_test(test_merge_min),
    };
    return cmocka_run_group_tests_name("db", tests, setup, teardown);
}
