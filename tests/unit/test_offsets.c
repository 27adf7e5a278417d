/* test_offsets.c — the commit watermark never passes an unfinished job. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "offsets.h"

static void test_out_of_order_finish(void **state)
{
    sbx_offsets *o = sbx_offsets_new();
    sbx_offset_ref r[5];
    (void)state;
    sbx_offsets_assign(o, 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(sbx_offsets_track(o, 0, 10 + i * 2, &r[i]), 0); /* gaps: 10,12,..18 */
    assert_int_equal(sbx_offsets_pending(o), 5);
    assert_int_equal(sbx_offsets_done(o, &r[2]), -1);  /* 14 done, 10 still running */
    assert_int_equal(sbx_offsets_done(o, &r[1]), -1);
    assert_int_equal(sbx_offsets_done(o, &r[0]), 16);  /* 10,12,14 done -> commit 16 */
    assert_int_equal(sbx_offsets_done(o, &r[4]), -1);
    assert_int_equal(sbx_offsets_done(o, &r[3]), 19);  /* all done -> one past last */
    assert_int_equal(sbx_offsets_pending(o), 0);
    sbx_offsets_free(o);
}

static void test_redelivery_and_unassigned(void **state)
{
    sbx_offsets *o = sbx_offsets_new();
    sbx_offset_ref r;
    (void)state;
    assert_int_equal(sbx_offsets_track(o, 3, 1, &r), -ENOENT);
    sbx_offsets_assign(o, 3);
    assert_int_equal(sbx_offsets_track(o, 3, 5, &r), 0);
    assert_int_equal(sbx_offsets_track(o, 3, 5, &r), -EALREADY);
    assert_int_equal(sbx_offsets_track(o, 3, 4, &r), -EALREADY);
    sbx_offsets_free(o);
}

static void test_revoke_makes_refs_stale(void **state)
{
    sbx_offsets *o = sbx_offsets_new();
    sbx_offset_ref old, fresh;
    (void)state;
    sbx_offsets_assign(o, 1);
    assert_int_equal(sbx_offsets_track(o, 1, 7, &old), 0);
    sbx_offsets_revoke(o, 1);
    assert_int_equal(sbx_offsets_pending(o), 0);
    assert_int_equal(sbx_offsets_done(o, &old), -1);
    sbx_offsets_assign(o, 1);
    assert_int_equal(sbx_offsets_track(o, 1, 7, &fresh), 0); /* redelivered after reassign */
    assert_int_equal(sbx_offsets_done(o, &old), -1);          /* stale generation */
    assert_int_equal(sbx_offsets_done(o, &fresh), 8);
    sbx_offsets_free(o);
}

static void test_ring_growth_keeps_order(void **state)
{
    enum { N = 10000 };
    sbx_offsets *o = sbx_offsets_new();
    sbx_offset_ref *r = calloc(N, sizeof(*r));
    int64_t wm = -1;
    (void)state;
    sbx_offsets_assign(o, 0);
    for (int i = 0; i < N / 2; i++)
        assert_int_equal(sbx_offsets_track(o, 0, i, &r[i]), 0);
    for (int i = 1; i < N / 2; i++)   /* all but the first finish */
        assert_int_equal(sbx_offsets_done(o, &r[i]), -1);
    for (int i = N / 2; i < N; i++)   /* wrap and grow while the head is stuck */
        assert_int_equal(sbx_offsets_track(o, 0, i, &r[i]), 0);
    wm = sbx_offsets_done(o, &r[0]);
    assert_int_equal(wm, N / 2);
    for (int i = N - 1; i >= N / 2; i--)
        wm = sbx_offsets_done(o, &r[i]);
    assert_int_equal(wm, N);
    free(r);
    sbx_offsets_free(o);
}

/* Marking an offset twice is a bug in the caller: debug builds abort (in a
 * child, so this process goes on). */
static void test_done_twice_asserts(void **state)
{
    int status = 0;
    pid_t pid;
    (void)state;
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        sbx_offsets *o = sbx_offsets_new();
        sbx_offset_ref r;
        (void)!freopen("/dev/null", "w", stderr);
        sbx_offsets_assign(o, 0);
        sbx_offsets_track(o, 0, 10, &r);
        sbx_offsets_done(o, &r);
        sbx_offsets_done(o, &r);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_out_of_order_finish),
        cmocka_unit_test(test_redelivery_and_unassigned),
        cmocka_unit_test(test_revoke_makes_refs_stale),
        cmocka_unit_test(test_ring_growth_keeps_order),
        cmocka_unit_test(test_done_twice_asserts),
    };
    return cmocka_run_group_tests_name("offsets", tests, NULL, NULL);
}
