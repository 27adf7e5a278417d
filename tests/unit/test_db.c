/* test_db.c — the pipelined libpq connection and the fencing SQL functions,
 * against the real PostgreSQL of the test services (SBX_DATABASE_URL, with
 * migrations applied; `make test` provides both).
 *
 * Checks: answers come back in order and one failing statement aborts no
 * other; a connection killed under in-flight statements reconnects and sends
 * them again; a stale fencing token changes nothing; replays are harmless. */
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
    char val[512][128];
    int failed[512];
} ans;
static ans A;
static volatile int done_all;
static int expect;

static void on_ans(void *arg, PGresult *res, const char *err)
{
    int i = (int)(intptr_t)arg;
    A.order[A.n] = i;
    A.failed[A.n] = err != NULL;
    snprintf(A.val[A.n], sizeof(A.val[0]), "%s", res && PQntuples(res) ? PQgetvalue(res, 0, 0) : "");
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipeline_order_and_isolated_errors),
        cmocka_unit_test(test_reconnect_replays_inflight),
        cmocka_unit_test(test_group_commit),
        cmocka_unit_test(test_fencing_functions),
        cmocka_unit_test(test_one_active_build_per_project),
    };
    return cmocka_run_group_tests_name("db", tests, setup, teardown);
}
