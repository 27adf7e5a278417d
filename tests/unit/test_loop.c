/* test_loop.c — the event loop: timer order, stop inside callbacks, fds,
 * and the intrusive timer heap against random start/restart/stop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <unistd.h>

#include "loop.h"

static int order[16], norder;
static sbx_loop *L;

static void rec(sbx_timer *t) { order[norder++] = (int)(intptr_t)t->data; }

static void test_timers_fire_in_due_order(void **state)
{
    sbx_timer t[5];
    int after[5] = {30, 10, 20, 10, 0};
    (void)state;
    norder = 0;
    assert_int_equal(sbx_loop_new(&L), 0);
    for (int i = 0; i < 5; i++) {
        sbx_timer_init(&t[i], rec, (void *)(intptr_t)i);
        sbx_timer_start(L, &t[i], (uint64_t)after[i]);
    }
    sbx_timer_stop(L, &t[2]);
    assert_false(sbx_timer_active(&t[2]));
    uint64_t deadline = sbx_now_ms() + 2000;
    while (norder < 4 && sbx_now_ms() < deadline)
        sbx_loop_once(L, 100);
    assert_int_equal(norder, 4);
    assert_int_equal(order[0], 4);
    assert_int_equal(order[1], 1); /* ties fire in start order */
    assert_int_equal(order[2], 3);
    assert_int_equal(order[3], 0);
    sbx_loop_free(L);
}

static sbx_timer self_t;
static int self_runs;
static void restart_self(sbx_timer *t)
{
    if (++self_runs < 3)
        sbx_timer_start(L, t, 0);
}

static void test_zero_timer_restart_waits_a_turn(void **state)
{
    (void)state;
    self_runs = 0;
    assert_int_equal(sbx_loop_new(&L), 0);
    sbx_timer_init(&self_t, restart_self, NULL);
    sbx_timer_start(L, &self_t, 0);
    sbx_loop_once(L, 0);
    assert_int_equal(self_runs, 1); /* not 3: the restart waits for the next turn */
    sbx_loop_once(L, 0);
    sbx_loop_once(L, 0);
    assert_int_equal(self_runs, 3);
    sbx_loop_free(L);
}

static int got_events;
static void on_pipe(sbx_io *io, int events)
{
    char b[8];
    got_events |= events;
    (void)!read(io->fd, b, sizeof(b));
    sbx_io_stop(io);
}

static void test_io_read_then_stop(void **state)
{
    int p[2];
    sbx_io io;
    (void)state;
    got_events = 0;
    assert_int_equal(pipe(p), 0);
    assert_int_equal(sbx_loop_new(&L), 0);
    sbx_io_init(&io, p[0], on_pipe, NULL);
    assert_int_equal(sbx_io_set(L, &io, SBX_READ), 0);
    assert_int_equal(write(p[1], "x", 1), 1);
    sbx_loop_once(L, 1000);
    assert_true(got_events & SBX_READ);
    assert_null(io.loop);
    close(p[0]);
    close(p[1]);
    sbx_loop_free(L);
}

static void test_many_timers_heap(void **state)
{
    enum { N = 500 };
    static sbx_timer ts[N];
    (void)state;
    norder = 0;
    assert_int_equal(sbx_loop_new(&L), 0);
    for (int i = 0; i < N; i++) {
        sbx_timer_init(&ts[i], rec, (void *)(intptr_t)0);
        sbx_timer_start(L, &ts[i], (uint64_t)((i * 7919) % 50));
    }
    for (int i = 0; i < N; i += 2)
        sbx_timer_stop(L, &ts[i]);
    for (int i = 0; i < N; i++)
        assert_true(sbx_timer_active(&ts[i]) == (i % 2 == 1));
    for (int i = 1; i < N; i += 2)
        sbx_timer_stop(L, &ts[i]);
    sbx_loop_free(L);
}

/* Random starts, restarts and stops of many timers, then every timer still
 * started fires exactly once, in (due, start order) order, and no stopped
 * one fires: the heap's links stay a valid min-heap through every removal
 * position (root, inner node, last leaf). Starting never fails or allocates. */
static uint64_t fired_due[2000], fired_seq[2000];
static int nfired, fired_count[2000];
static sbx_timer many[2000];

static void rec_many(sbx_timer *t)
{
    int i = (int)(t - many);
    fired_due[nfired] = t->due_ms;
    fired_seq[nfired] = t->seq;
    nfired++;
    fired_count[i]++;
}

static void test_heap_random_ops(void **state)
{
    enum { N = 2000, OPS = 20000 };
    unsigned seed = 12345;
    int active = 0;
    (void)state;
    nfired = 0;
    assert_int_equal(sbx_loop_new(&L), 0);
    for (int i = 0; i < N; i++) {
        sbx_timer_init(&many[i], rec_many, NULL);
        fired_count[i] = 0;
    }
    for (int k = 0; k < OPS; k++) {
        int i;
        seed = seed * 1103515245u + 12345u;
        i = (int)((seed >> 8) % N);
        if ((seed >> 4) % 3 == 0)
            sbx_timer_stop(L, &many[i]);
        else
            sbx_timer_start(L, &many[i], (seed >> 16) % 40);
    }
    for (int i = 0; i < N; i++)
        active += sbx_timer_active(&many[i]);
    while (nfired < active)
        assert_int_equal(sbx_loop_once(L, 50), 0);
    for (int i = 1; i < nfired; i++)
        assert_true(fired_due[i - 1] < fired_due[i] ||
                    (fired_due[i - 1] == fired_due[i] && fired_seq[i - 1] < fired_seq[i]));
    for (int i = 0; i < N; i++) {
        assert_false(sbx_timer_active(&many[i]));
        assert_true(fired_count[i] <= 1);
    }
    sbx_loop_free(L);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timers_fire_in_due_order),
        cmocka_unit_test(test_zero_timer_restart_waits_a_turn),
        cmocka_unit_test(test_io_read_then_stop),
        cmocka_unit_test(test_many_timers_heap),
        cmocka_unit_test(test_heap_random_ops),
    };
    return cmocka_run_group_tests_name("loop", tests, NULL, NULL);
}
