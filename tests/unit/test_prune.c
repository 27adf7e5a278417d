/* test_prune.c — retention: sbx.prune_runs() (migrations/0003_retention.sql)
 * and its driver worker/prune.c, against the real PostgreSQL of the test
 * services (SBX_DATABASE_URL, with migrations applied; `make unit` provides
 * it). Fixture rows are written through plain blocking libpq sessions, which
 * also play the other worker in the lock test.
 *
 * Checks: old terminal runs and their history go in batches of the size
 * asked, oldest first; recent ones, unfinished ones of any age and the run
 * with the newest fencing token stay; a writer-role session may call it; a
 * second pruner gets -1 and deletes nothing while the first one's
 * transaction is open; the driver sends batch after batch with its pause
 * and counts what went; the migration runs twice. The dead-letter pruner
 * (sbx.prune_dead_letters, migrations/0004_dead_letters.sql): old rows go
 * with their originals, new ones stay, and its lock is its own (a runs
 * pass in progress does not stop it). */
#include <errno.h>
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
#include "prune.h"
#include "svc.h"

#define WAIT_MS 15000
/* The migration file, relative to the repository root (run.sh's cwd). */
#define MIGRATION "migrations/0003_retention.sql"
#define MIGRATION_MAX (64 * 1024)

static sbx_loop *L;
static sbx_db *D;
static PGconn *C1, *C2;
static volatile int up;
static char tag[32];

static void on_state(void *arg, int c) { (void)arg; up = c; }

/* Runs sql on c and returns the first value ("" when none); fails the test
 * when the statement fails. The buffer is reused by the next call. */
static const char *ex(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *ex(PGconn *c, const char *fmt, ...)
{
    static char out[128];
    char sql[2048];
    va_list ap;
    PGresult *r;
    ExecStatusType st;

    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    r = PQexec(c, sql);
    st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    snprintf(out, sizeof(out), "%s",
             st == PGRES_TUPLES_OK && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    return out;
}

static long num(PGconn *c, const char *fmt, const char *a, const char *b)
{
    return strtol(ex(c, fmt, a, b), NULL, 10);
}

static int setup(void **state)
{
    const char *url = getenv("SBX_DATABASE_URL");
    (void)state;
    if (!url) {
        fprintf(stderr, "test_prune: SBX_DATABASE_URL is not set; run it through `make unit`\n");
        return -1;
    }
    C1 = PQconnectdb(url);
    C2 = PQconnectdb(url);
    if (PQstatus(C1) != CONNECTION_OK || PQstatus(C2) != CONNECTION_OK) {
        fprintf(stderr, "test_prune: %s", PQerrorMessage(C1));
        return -1;
    }
    snprintf(tag, sizeof(tag), "pr%d", (int)getpid());
    sbx_loop_new(&L);
    sbx_db_new(L, url, on_state, NULL, &D);
    if (!test_run_until(L, &up, 10000))
        return -1;
    /* Start from no expired runs, so batch sizes below are exact. */
    while (strtol(ex(C1, "SELECT sbx.prune_runs('1 day', 10000)"), NULL, 10) == 10000)
        ;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sbx_db_free(D);
    sbx_loop_free(L);
    PQfinish(C1);
    PQfinish(C2);
    return 0;
}

/* n runs <tag>-<kind>-<i>, finished (or, unfinished, created) `age` ago
 * and i seconds more, so a higher i is older; status and token as given
 * (token may be an expression of the series g). */
static void seed(const char *kind, int n, const char *status, const char *age, const char *token)
{
    int terminal = strcmp(status, "queued") != 0 && strcmp(status, "running") != 0;
    ex(C1, "INSERT INTO sbx.runs (job_id, project_id, spec, status, lease_token, created_at, "
           "updated_at, finished_at) SELECT '%s-%s-' || g, '%s-%s-' || g, '{}', '%s', %s, "
           "now() - interval '%s' - interval '1 minute', now() - interval '%s', "
           "CASE WHEN %s THEN now() - interval '%s' - interval '1 second' * g END "
           "FROM generate_series(1, %d) g",
       tag, kind, tag, kind, status, token, age, age, terminal ? "true" : "false", age, n);
}

static void seed_events(const char *kind)
{
    ex(C1, "INSERT INTO sbx.run_events (job_id, from_status, to_status) SELECT r.job_id, NULL, "
           "'queued' FROM sbx.runs r, generate_series(1, 3) WHERE r.job_id LIKE '%s-%s-%%'",
       tag, kind);
}

static long runs_of(const char *kind)
{
    return num(C1, "SELECT count(*) FROM sbx.runs WHERE job_id LIKE '%s-%s-%%'", tag, kind);
}

static long events_of(const char *kind)
{
    return num(C1, "SELECT count(*) FROM sbx.run_events WHERE job_id LIKE '%s-%s-%%'", tag, kind);
}

static void test_sql_batches_keep_what_must_stay(void **state)
{
    char newest[32];
    (void)state;
    snprintf(newest, sizeof(newest), "%s",
             ex(C1, "SELECT coalesce(max(lease_token), 0) + 1000 FROM sbx.runs"));
    seed("old", 7, "succeeded", "10 days", "g");
    ex(C1, "UPDATE sbx.runs SET status = 'failed' WHERE job_id = '%s-old-2'", tag);
    ex(C1, "UPDATE sbx.runs SET status = 'dead_lettered' WHERE job_id = '%s-old-5'", tag);
    seed("recent", 2, "canceled", "1 hour", "0");
    seed("queued", 2, "queued", "30 days", "0");
    seed("running", 1, "running", "30 days", "5");
    seed("newest", 1, "timed_out", "30 days", newest);
    for (const char *const *k = (const char *const[]){"old", "recent", "queued", "running",
                                                      "newest", NULL}; *k; k++)
        seed_events(*k);
    assert_int_equal(events_of("old"), 21);

    /* The worker's role may call it (SECURITY DEFINER); it may not delete. */
    ex(C2, "SET ROLE sbx_writer");
    assert_string_equal(ex(C2, "SELECT sbx.prune_runs('1 day', 3)"), "3");
    assert_null(strstr(ex(C2, "SELECT has_table_privilege('sbx.runs', 'DELETE')::text"), "true"));
    ex(C2, "RESET ROLE");
    /* Oldest first: the three finished longest ago went. */
    assert_string_equal(ex(C1, "SELECT count(*) FROM sbx.runs WHERE job_id IN ('%s-old-7', "
                               "'%s-old-6', '%s-old-5')", tag, tag, tag), "0");
    assert_string_equal(ex(C1, "SELECT sbx.prune_runs('1 day', 3)"), "3");
    assert_string_equal(ex(C1, "SELECT sbx.prune_runs('1 day', 3)"), "1");
    assert_string_equal(ex(C1, "SELECT sbx.prune_runs('1 day', 3)"), "0");
    assert_int_equal(runs_of("old"), 0);
    assert_int_equal(events_of("old"), 0);
    assert_int_equal(runs_of("recent"), 2);
    assert_int_equal(events_of("recent"), 6);
    assert_int_equal(runs_of("queued"), 2);
    assert_int_equal(runs_of("running"), 1);
    assert_int_equal(runs_of("newest"), 1);
    assert_int_equal(events_of("newest"), 3);
    /* A shorter keep reaches the recent ones. */
    assert_string_equal(ex(C1, "SELECT sbx.prune_runs('1 minute', 10)"), "2");
    assert_int_equal(events_of("recent"), 0);
    /* Nonsense is refused rather than read as "everything". */
    {
        PGresult *r = PQexec(C1, "SELECT sbx.prune_runs('0 seconds', 10)");
        assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
        PQclear(r);
        r = PQexec(C1, "SELECT sbx.prune_runs('1 day', 20000)");
        assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
        PQclear(r);
    }
}

typedef struct waiter {
    sbx_timer t;
    sbx_prune *p;
    volatile int idle;
} waiter;

static void on_poll(sbx_timer *t)
{
    waiter *wt = t->data;
    if (!sbx_prune_running(wt->p))
        wt->idle = 1;
    else
        sbx_timer_start(L, t, 5);
}

/* Runs the loop until the pruner's pass ends. */
static void wait_idle(sbx_prune *p)
{
    waiter wt = {.p = p};
    sbx_timer_init(&wt.t, on_poll, &wt);
    sbx_timer_start(L, &wt.t, 5);
    assert_true(test_run_until(L, &wt.idle, WAIT_MS));
}

static void test_one_pruner_at_a_time(void **state)
{
    sbx_prune *p;
    (void)state;
    seed("lock", 4, "succeeded", "3 days", "0");
    seed_events("lock");
    assert_int_equal(sbx_prune_new(L, D, 86400, 100, 10, &p), 0);

    /* Worker one is mid-batch: its transaction holds the lock. */
    ex(C1, "BEGIN");
    assert_string_equal(ex(C1, "SELECT sbx.prune_runs('1 day', 2)"), "2");
    /* Worker two, by hand and through the driver, does nothing. */
    assert_string_equal(ex(C2, "SELECT sbx.prune_runs('1 day', 100)"), "-1");
    sbx_prune_pass(p);
    assert_true(sbx_prune_running(p));
    wait_idle(p);
    assert_int_equal(sbx_prune_total(p), 0);
    assert_int_equal(num(C2, "SELECT count(*) FROM sbx.runs WHERE job_id LIKE '%s-%s-%%'", tag,
                         "lock"), 4);
    ex(C1, "COMMIT");
    assert_int_equal(runs_of("lock"), 2);

    /* Lock free: the next pass takes the rest. */
    sbx_prune_pass(p);
    wait_idle(p);
    assert_int_equal(sbx_prune_total(p), 2);
    assert_int_equal(runs_of("lock"), 0);
    assert_int_equal(events_of("lock"), 0);
    sbx_prune_free(p);
}

static void test_driver_batches_with_pauses(void **state)
{
    sbx_prune *p;
    uint64_t t0;
    (void)state;
    seed("drv", 5, "failed", "2 days", "0");
    seed_events("drv");
    seed("drvnew", 1, "failed", "1 minute", "0");
    assert_int_equal(sbx_prune_new(L, D, 86400, 2, 100, &p), 0);
    assert_int_equal(sbx_prune_total(NULL), 0);

    t0 = sbx_now_ms();
    sbx_prune_pass(p);
    sbx_prune_pass(p);  /* a pass under way is not started twice */
    wait_idle(p);
    /* Batches of 2, 2, 1: two full ones, each followed by the pause. */
    assert_true(sbx_now_ms() - t0 >= 200);
    assert_int_equal(sbx_prune_total(p), 5);
    assert_int_equal(runs_of("drv"), 0);
    assert_int_equal(events_of("drv"), 0);
    assert_int_equal(runs_of("drvnew"), 1);

    /* Nothing left: a pass is one empty batch and counts nothing. */
    sbx_prune_pass(p);
    wait_idle(p);
    assert_int_equal(sbx_prune_total(p), 5);
    sbx_prune_free(p);
    assert_int_equal(sbx_prune_new(L, D, 0, 2, 100, &p), -EINVAL);
}

static void test_migration_runs_twice(void **state)
{
    FILE *f = fopen(MIGRATION, "r");
    char *sql = calloc(1, MIGRATION_MAX + 1);
    (void)state;
    assert_non_null(f);
    assert_non_null(sql);
    assert_true(fread(sql, 1, MIGRATION_MAX, f) > 0);
    fclose(f);
    ex(C1, "SET client_min_messages = warning");
    for (int i = 0; i < 2; i++) {
        PGresult *r = PQexec(C1, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            fail_msg("run %d: %s", i + 1, PQresultErrorMessage(r));
        PQclear(r);
    }
    free(sql);
    /* The batch scan uses the index of finished terminal runs. */
    ex(C1, "SET enable_seqscan = off");
    {
        PGresult *r = PQexec(C1, "EXPLAIN SELECT job_id FROM sbx.runs WHERE status IN "
                                 "('succeeded', 'failed', 'timed_out', 'canceled', "
                                 "'dead_lettered') AND finished_at < now() - interval '1 day' "
                                 "ORDER BY finished_at LIMIT 10");
        int found = 0;
        assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
        for (int i = 0; i < PQntuples(r); i++)
            found |= strstr(PQgetvalue(r, i, 0), "runs_finished") != NULL;
        PQclear(r);
        assert_true(found);
    }
    ex(C1, "RESET enable_seqscan");
}

/* Dead letters: n rows of this test's topic recorded `age` ago, each with
 * an original. */
static void seed_dead_letters(const char *name, int n, const char *age)
{
    ex(C1, "WITH d AS (INSERT INTO sbx.dead_letters (topic, kafka_partition, kafka_offset, "
           "reason, payload_bytes, original_kept, created_at) SELECT '%s-%s', 0, g, "
           "'invalid_json', 3, true, now() - interval '%s' FROM generate_series(1, %d) g "
           "RETURNING id) INSERT INTO sbx.dead_letter_originals (id, payload) "
           "SELECT id, '\\x7b7b7b' FROM d",
       tag, name, age, n);
}

static int dead_letters_of(const char *name)
{
    return (int)num(C2, "SELECT count(*) FROM sbx.dead_letters WHERE topic = '%s-%s'", tag, name);
}

static void test_dead_letters_pruned(void **state)
{
    sbx_prune *p;
    (void)state;
    seed_dead_letters("dlold", 5, "31 days");
    seed_dead_letters("dlnew", 2, "1 day");
    assert_int_equal(sbx_prune_new_table(L, D, SBX_PRUNE_DEAD_LETTERS, 30 * 86400LL, 2, 10,
                                         &p), 0);
    /* A runs pass holding its lock does not stop the dead letters'. */
    ex(C1, "BEGIN");
    ex(C1, "SELECT sbx.prune_runs('1 day', 1)");
    sbx_prune_pass(p);
    wait_idle(p);
    ex(C1, "COMMIT");
    assert_int_equal(dead_letters_of("dlold"), 0);
    assert_int_equal(dead_letters_of("dlnew"), 2);
    assert_true(sbx_prune_total(p) >= 5);
    assert_string_equal(ex(C2, "SELECT count(*) FROM sbx.dead_letter_originals o WHERE NOT "
                               "EXISTS (SELECT 1 FROM sbx.dead_letters d WHERE d.id = o.id)"),
                        "0");
    /* Its own lock: a second pruner gets -1 while one is mid-batch. */
    ex(C1, "BEGIN");
    ex(C1, "SELECT sbx.prune_dead_letters('1 hour', 1)");
    assert_string_equal(ex(C2, "SELECT sbx.prune_dead_letters('1 hour', 1)"), "-1");
    ex(C1, "ROLLBACK");
    sbx_prune_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sql_batches_keep_what_must_stay),
        cmocka_unit_test(test_one_pruner_at_a_time),
        cmocka_unit_test(test_driver_batches_with_pauses),
        cmocka_unit_test(test_migration_runs_twice),
        cmocka_unit_test(test_dead_letters_pruned),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
