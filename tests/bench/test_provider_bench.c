/* test_provider_bench.c — the bench provider (tests/bench/provider_bench.c):
 * slot ids and pool, the order and timing of STARTED/FINISHED with and
 * without a hold, every way to cancel, refused slots, reuse of run structs
 * from the free list, and destroy with runs live (ASan checks the memory). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "provider_bench.h"

/* Deadlines: generous for sanitizers and a loaded machine. */
#define WAIT_MS 5000
/* Runs at once in the many-runs scenario: more than one chunk of the free
 * list, a fraction of the 10,000 the benchmark holds. */
#define MANY 3000

typedef struct rec {
    int started, finished;
    int in_start;               /* set while start() runs: callbacks must not come */
    int cb_during_start;
    sbx_outcome outcome;
    int exit_code;
    uint64_t started_ms, finished_ms;
    sbx_provider *p;
    sbx_run *run;
    int cancel_on_started;
    int restart_on_finished;    /* start again in the same slot from FINISHED */
    const char *slot;
} rec;

static sbx_job job = {.job_id = "j1", .project_id = "p1"};

static void on_run(void *arg, sbx_run_event ev, const sbx_result *res);

static int start(rec *r, const char *slot)
{
    sbx_run_req req = {.job = &job, .slot = slot, .token = 7, .attempt = 1};
    char err[256] = "";
    int rc;
    r->slot = slot;
    r->in_start = 1;
    rc = r->p->ops->start(r->p, &req, on_run, r, &r->run, err, sizeof(err));
    r->in_start = 0;
    if (rc)
        assert_true(err[0] != '\0');
    return rc;
}

static void on_run(void *arg, sbx_run_event ev, const sbx_result *res)
{
    rec *r = arg;
    if (r->in_start)
        r->cb_during_start++;
    if (ev == SBX_RUN_STARTED) {
        assert_int_equal(r->finished, 0);
        r->started++;
        r->started_ms = sbx_now_ms();
        if (r->cancel_on_started)
            r->p->ops->cancel(r->p, r->run);
        return;
    }
    assert_int_equal(r->started, 1);
    r->finished++;
    r->finished_ms = sbx_now_ms();
    r->outcome = res->outcome;
    r->exit_code = res->exit_code;
    assert_int_equal(res->log_tail_len, 0);
    assert_string_equal(res->error, "");
    if (r->restart_on_finished) {
        r->restart_on_finished = 0;
        r->started = r->finished = 0;
        assert_int_equal(start(r, r->slot), 0);
    }
}

static void run_until(sbx_loop *l, const int *flag, int want)
{
    uint64_t deadline = sbx_now_ms() + WAIT_MS;
    while (*flag < want && sbx_now_ms() < deadline)
        sbx_loop_once(l, 50);
    assert_true(*flag >= want);
}

static sbx_provider *make(sbx_loop *l, int slots, int hold_ms)
{
    sbx_provider *p = NULL;
    char err[256];
    assert_int_equal(sbx_bench_new(l, "n1", slots, hold_ms, &p, err, sizeof(err)), 0);
    return p;
}

static void test_slots_and_pool(void **state)
{
    sbx_loop *l;
    sbx_provider *p;
    const char **ids;
    (void)state;
    assert_int_equal(sbx_loop_new(&l), 0);
    p = make(l, 12, 0);
    assert_string_equal(p->ops->name, "bench");
    assert_string_equal(p->ops->pool(p), "bench/n1");
    assert_int_equal(p->ops->slots(p, &ids), 12);
    assert_string_equal(ids[0], "bench/n1/0");
    assert_string_equal(ids[11], "bench/n1/11");
    p->ops->destroy(p);
    sbx_loop_free(l);
}

static void test_bad_config_refused(void **state)
{
    sbx_loop *l;
    sbx_provider *p = NULL;
    char err[256];
    (void)state;
    assert_int_equal(sbx_loop_new(&l), 0);
    assert_int_equal(sbx_bench_new(l, "a/b", 1, 0, &p, err, sizeof(err)), -EINVAL);
    assert_int_equal(sbx_bench_new(l, "", 1, 0, &p, err, sizeof(err)), -EINVAL);
    assert_int_equal(sbx_bench_new(l, "n", 0, 0, &p, err, sizeof(err)), -EINVAL);
    assert_int_equal(sbx_bench_new(l, "n", 1, -1, &p, err, sizeof(err)), -EINVAL);
    assert_null(p);
    sbx_loop_free(l);
}

static void test_no_hold_starts_and_succeeds_from_the_loop(void **state)
{
    sbx_loop *l;
    rec r = {0};
    (void)state;
    assert_int_equal(sbx_loop_new(&l), 0);
    r.p = make(l, 4, 0);
    assert_int_equal(start(&r, "bench/n1/3"), 0);
    assert_int_equal(r.started + r.finished, 0);
    sbx_loop_once(l, 100);
    /* Both in the same turn. */
    assert_int_equal(r.started, 1);
    assert_int_equal(r.finished, 1);
    assert_int_equal(r.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.exit_code, 0);
    assert_int_equal(r.cb_during_start, 0);
    r.p->ops->destroy(r.p);
    sbx_loop_free(l);
}

static void test_hold_lasts_hold_ms(void **state)
{
    sbx_loop *l;
    rec r = {0};
    uint64_t t0;
    (void)state;
    assert_int_equal(sbx_loop_new(&l), 0);
    r.p = make(l, 4, 200);
    t0 = sbx_now_ms();
    assert_int_equal(start(&r, "bench/n1/0"), 0);
    run_until(l, &r.started, 1);
    assert_int_equal(r.finished, 0);
    run_until(l, &r.finished, 1);
    assert_true(r.finished_ms - t0 >= 200);
    assert_int_equal(r.outcome, SBX_OUTCOME_SUCCEEDED);
    assert_int_equal(r.exit_code, 0);
    r.p->ops->destroy(r.p);
    sbx_loop_free(l);
}

static void test_cancel_while_holding(void **state)
{
    sbx_loop *l;
    rec r = {0};
    (void)state;
    assert_int_equal(sbx_loop_new(&l), 0);
    r.p = make(l, 4, 60000);
    assert_int_equal(start(&r, "bench/n1/1"), 0);
    run_until(l, &r.started, 1);
    r.in_start = 1; /* cancel(), like start(), must not call back */
    r.p->ops->cancel(r.p, r.run);
    r.p->ops->cancel(r.p, r.run); /* twice is once */
    r.in_start = 0;
    assert_int_equal(r.finished, 0);
    run_until(l, &r.finished, 1);
    assert_int_equal(r.cb_during_start, 0);
    assert_int_equal(r.outcome, SBX_OUTCOME_CANCELED);
    assert_true(r.finished_ms - r.started_ms < 1000);
    r.p->ops->destroy(r.p);
    sbx_loop_free(l);
}

static void test_cancel_before_started(void **state)
{
    sbx_loop *l;
    rec r = {0};
    (void)state;
    assert_int_equal(sbx_loop_new(&l), 0);
    r.p = make(l, 4, 60000);
    assert_int_equal(start(&r, "bench/n1/2"), 0);
    r.p->ops->cancel(r.p, r.run);
    run_until(l, &r.finished, 1);
    assert_int_equal(r.started, 1); /* STARTED still comes first */
    assert_int_equal(r.outcome, SBX_OUTCOME_CANCELED);
    r.p->ops->destroy(r.p);
    sbx_loop_free(l);
}

static void test_cancel_inside_started(void **state)
{
    sbx_loop *l;
    rec r = {0};
    (void)state;
    assert_int_equal(sbx_loop_new(&l), 0);
    r.p = make(l, 4, 60000);
    r.cancel_on_started = 1;
    assert_int_equal(start(&r, "bench/n1/2"), 0);
    run_until(l, &r.finished, 1);
    assert_int_equal(r.outcome, SBX_OUTCOME_CANCELED);
    assert_true(r.finished_ms - r.started_ms < 1000);
    r.p->ops->destroy(r.p);
    sbx_loop_free(l);
}

static void test_busy_and_unknown_slots_refused(void **state)
{
    sbx_loop *l;
    rec r = {0}, o = {0};
    const char *bad[] = {"bench/n1/4", "bench/n1/007", "bench/n1/-1", "bench/n1/", "bench/n1",
                         "bench/n2/1", "local/n1/1", "bench/n1/1x", "bench/n1/99999999999999"};
    (void)state;
    assert_int_equal(sbx_loop_new(&l), 0);
    r.p = o.p = make(l, 4, 60000);
    assert_int_equal(start(&r, "bench/n1/1"), 0);
    assert_int_equal(start(&o, "bench/n1/1"), -EBUSY);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(start(&o, bad[i]), -EINVAL);
    assert_int_equal(start(&o, NULL), -EINVAL);
    /* A refused start never calls back. */
    run_until(l, &r.started, 1);
    assert_int_equal(o.started + o.finished, 0);
    r.p->ops->destroy(r.p);
    sbx_loop_free(l);
}

static void test_slot_reused_from_finished(void **state)
{
    sbx_loop *l;
    rec r = {0};
    (void)state;
    assert_int_equal(sbx_loop_new(&l), 0);
    r.p = make(l, 1, 0);
    r.restart_on_finished = 1;
    assert_int_equal(start(&r, "bench/n1/0"), 0);
    run_until(l, &r.finished, 1);
    /* The second run (started from the first's FINISHED) ended too. */
    assert_int_equal(r.restart_on_finished, 0);
    assert_int_equal(r.outcome, SBX_OUTCOME_SUCCEEDED);
    r.p->ops->destroy(r.p);
    sbx_loop_free(l);
}

static int ptr_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (sbx_run *const *)a, y = (uintptr_t) * (sbx_run *const *)b;
    return x < y ? -1 : x > y;
}

/* MANY runs at once, twice: the second round takes every run struct from the
 * free list the first filled (no allocation once warm). */
static void test_many_runs_reuse_run_structs(void **state)
{
    sbx_loop *l;
    sbx_provider *p;
    rec *r = calloc(MANY, sizeof(*r));
    sbx_run **first = calloc(MANY, sizeof(*first));
    char(*slots)[32] = calloc(MANY, sizeof(*slots));
    int finished;
    (void)state;
    assert_non_null(r);
    assert_non_null(first);
    assert_non_null(slots);
    assert_int_equal(sbx_loop_new(&l), 0);
    p = make(l, MANY, 20);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < MANY; i++) {
            memset(&r[i], 0, sizeof(r[i]));
            r[i].p = p;
            snprintf(slots[i], sizeof(slots[i]), "bench/n1/%d", i);
            assert_int_equal(start(&r[i], slots[i]), 0);
            if (round == 0)
                first[i] = r[i].run;
        }
        if (round == 0)
            qsort(first, MANY, sizeof(*first), ptr_cmp);
        else
            for (int i = 0; i < MANY; i++)
                assert_non_null(bsearch(&r[i].run, first, MANY, sizeof(*first), ptr_cmp));
        uint64_t deadline = sbx_now_ms() + WAIT_MS;
        do {
            sbx_loop_once(l, 50);
            finished = 0;
            for (int i = 0; i < MANY; i++)
                finished += r[i].finished;
        } while (finished < MANY && sbx_now_ms() < deadline);
        assert_int_equal(finished, MANY);
        for (int i = 0; i < MANY; i++)
            assert_int_equal(r[i].outcome, SBX_OUTCOME_SUCCEEDED);
    }
    p->ops->destroy(p);
    sbx_loop_free(l);
    free(r);
    free(first);
    free(slots);
}

static void test_destroy_with_runs_live(void **state)
{
    sbx_loop *l;
    rec r[3] = {{0}};
    (void)state;
    assert_int_equal(sbx_loop_new(&l), 0);
    r[0].p = r[1].p = r[2].p = make(l, 4, 60000);
    assert_int_equal(start(&r[0], "bench/n1/0"), 0);
    assert_int_equal(start(&r[1], "bench/n1/1"), 0);
    run_until(l, &r[0].started, 1);
    assert_int_equal(start(&r[2], "bench/n1/2"), 0); /* not yet started */
    r[0].p->ops->destroy(r[0].p);
    /* No callback after destroy, and no timer of the provider is left. */
    for (int i = 0; i < 3; i++)
        sbx_loop_once(l, 20);
    assert_int_equal(r[0].finished + r[1].finished + r[2].finished + r[2].started, 0);
    sbx_loop_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots_and_pool),
        cmocka_unit_test(test_bad_config_refused),
        cmocka_unit_test(test_no_hold_starts_and_succeeds_from_the_loop),
        cmocka_unit_test(test_hold_lasts_hold_ms),
        cmocka_unit_test(test_cancel_while_holding),
        cmocka_unit_test(test_cancel_before_started),
        cmocka_unit_test(test_cancel_inside_started),
        cmocka_unit_test(test_busy_and_unknown_slots_refused),
        cmocka_unit_test(test_slot_reused_from_finished),
        cmocka_unit_test(test_many_runs_reuse_run_structs),
        cmocka_unit_test(test_destroy_with_runs_live),
    };
    return cmocka_run_group_tests_name("provider_bench", tests, NULL, NULL);
}
