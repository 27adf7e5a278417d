/* test_buf.c — the capped buffer and the tail ring of common/buf.c, at
 * their edges: exact cap, zero-length appends, cap overflow, a tail that
 * wraps, an append larger than the whole tail, and a long random stream
 * checked against the obvious model (keep everything, cut at the end). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <errno.h>

#include "buf.h"

static void test_buf_exact_cap(void **state)
{
    sbx_buf b;
    (void)state;
    sbx_buf_init(&b, 8);
    assert_string_equal(sbx_buf_str(&b), "");
    assert_int_equal(sbx_buf_add(&b, "abcd", 4), 0);
    assert_int_equal(sbx_buf_add(&b, "efgh", 4), 0);     /* exactly max */
    assert_int_equal(b.len, 8);
    assert_string_equal(sbx_buf_str(&b), "abcdefgh");
    assert_true(b.cap <= 9);                             /* never more than max + NUL */
    assert_int_equal(sbx_buf_add(&b, "", 0), 0);         /* zero bytes fit even when full */
    assert_int_equal(sbx_buf_add(&b, "i", 1), -E2BIG);
    assert_int_equal(sbx_buf_fill(&b, 0, 1), -E2BIG);
    assert_string_equal(sbx_buf_str(&b), "abcdefgh");   /* unchanged by the refusals */
    sbx_buf_free(&b);
    assert_null(b.p);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.max, 8);
}

static void test_buf_overflow(void **state)
{
    sbx_buf b;
    (void)state;
    sbx_buf_init(&b, 5);
    assert_int_equal(sbx_buf_add(&b, "abc", 3), 0);
    assert_int_equal(sbx_buf_add(&b, "def", 3), -E2BIG);
    assert_int_equal(b.len, 3);
    assert_string_equal(sbx_buf_str(&b), "abc");
    /* A length that would wrap len + n around is refused too. */
    assert_int_equal(sbx_buf_add(&b, "x", (size_t)-1), -E2BIG);
    assert_int_equal(sbx_buf_add(&b, "de", 2), 0);
    assert_string_equal(sbx_buf_str(&b), "abcde");
    sbx_buf_free(&b);
}

static void test_buf_zero(void **state)
{
    sbx_buf b;
    (void)state;
    sbx_buf_init(&b, 0);
    assert_int_equal(sbx_buf_add(&b, NULL, 0), 0);
    assert_null(b.p);                                    /* nothing allocated */
    assert_int_equal(sbx_buf_add(&b, "a", 1), -E2BIG);
    assert_null(sbx_buf_take(&b, NULL));
    sbx_buf_init(&b, 100);
    assert_int_equal(sbx_buf_fill(&b, 'z', 0), 0);
    assert_null(b.p);
    sbx_buf_free(&b);
}

static void test_buf_grow_reset_take(void **state)
{
    sbx_buf b;
    char chunk[1000];
    size_t len;
    char *p;
    (void)state;
    memset(chunk, 'q', sizeof(chunk));
    sbx_buf_init(&b, 1 << 20);
    for (int i = 0; i < 100; i++)
        assert_int_equal(sbx_buf_add(&b, chunk, sizeof(chunk)), 0);
    assert_int_equal(b.len, 100000);
    assert_int_equal(b.p[b.len], '\0');
    assert_int_equal(sbx_buf_fill(&b, 0, 12), 0);
    assert_int_equal(b.len, 100012);
    assert_int_equal(b.p[100011], 0);
    sbx_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_non_null(b.p);                                /* memory kept for reuse */
    assert_string_equal(sbx_buf_str(&b), "");
    assert_int_equal(sbx_buf_add(&b, "xy", 2), 0);
    p = sbx_buf_take(&b, &len);
    assert_int_equal(len, 2);
    assert_string_equal(p, "xy");
    free(p);
    assert_null(b.p);
    assert_int_equal(b.max, 1 << 20);
    assert_int_equal(sbx_buf_add(&b, "z", 1), 0);
    assert_string_equal(sbx_buf_str(&b), "z");
    sbx_buf_free(&b);
}

static void test_tail_basic(void **state)
{
    char mem[9];
    sbx_tail t;
    (void)state;
    sbx_tail_init(&t, mem, 8);
    assert_string_equal(sbx_tail_str(&t), "");
    sbx_tail_add(&t, "", 0);
    assert_int_equal(t.len, 0);
    sbx_tail_add(&t, "abc", 3);
    sbx_tail_add(&t, "defgh", 5);                        /* exactly full, no wrap */
    assert_int_equal(t.len, 8);
    assert_string_equal(sbx_tail_str(&t), "abcdefgh");
    sbx_tail_add(&t, "ij", 2);                           /* wraps */
    assert_int_equal(t.len, 8);
    assert_string_equal(sbx_tail_str(&t), "cdefghij");
    sbx_tail_add(&t, "klm", 3);                          /* after a flatten, wraps again */
    sbx_tail_add(&t, "n", 1);
    assert_string_equal(sbx_tail_str(&t), "ghijklmn");
    assert_string_equal(sbx_tail_str(&t), "ghijklmn");  /* idempotent */
    sbx_tail_reset(&t);
    assert_int_equal(t.len, 0);
    assert_string_equal(sbx_tail_str(&t), "");
}

static void test_tail_big_append(void **state)
{
    char mem[5];
    sbx_tail t;
    (void)state;
    sbx_tail_init(&t, mem, 4);
    sbx_tail_add(&t, "ab", 2);
    sbx_tail_add(&t, "0123456789", 10);                  /* larger than the whole tail */
    assert_string_equal(sbx_tail_str(&t), "6789");
    sbx_tail_add(&t, "x", 1);
    sbx_tail_add(&t, "WXYZ", 4);                         /* exactly cap while wrapped */
    assert_string_equal(sbx_tail_str(&t), "WXYZ");
    /* A zero-sized tail keeps nothing and stays a valid string. */
    sbx_tail_init(&t, mem, 0);
    sbx_tail_add(&t, "abc", 3);
    assert_int_equal(t.len, 0);
    assert_string_equal(sbx_tail_str(&t), "");
}

static void test_tail_of(void **state)
{
    const char *s = "hello world";
    size_t n = strlen(s);
    (void)state;
    assert_ptr_equal(sbx_tail_of(s, &n, 5), s + 6);
    assert_int_equal(n, 5);
    n = strlen(s);
    assert_ptr_equal(sbx_tail_of(s, &n, 11), s);         /* exactly keep */
    assert_int_equal(n, 11);
    assert_ptr_equal(sbx_tail_of(s, &n, 100), s);
    assert_int_equal(n, 11);
    n = 0;
    assert_ptr_equal(sbx_tail_of(s, &n, 0), s);
    n = 3;
    assert_ptr_equal(sbx_tail_of(s, &n, 0), s + 3);
    assert_int_equal(n, 0);
}

/* Random appends, flattens now and then, against the whole stream. */
static void test_tail_model(void **state)
{
    enum { CAP = 37, TOTAL = 20000 };
    char mem[CAP + 1], *all = malloc(TOTAL), chunk[100];
    size_t have = 0;
    sbx_tail t;
    (void)state;
    assert_non_null(all);
    srand(7);
    sbx_tail_init(&t, mem, CAP);
    while (have + sizeof(chunk) < TOTAL) {
        size_t n = (size_t)rand() % sizeof(chunk);
        for (size_t i = 0; i < n; i++)
            chunk[i] = (char)('a' + rand() % 26);
        sbx_tail_add(&t, chunk, n);
        memcpy(all + have, chunk, n);
        have += n;
        if (rand() % 5 == 0) {
            size_t want = have < CAP ? have : CAP;
            assert_int_equal(t.len, want);
            assert_memory_equal(sbx_tail_str(&t), all + have - want, want);
            assert_int_equal(mem[want], '\0');
        }
    }
    free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_exact_cap),
        cmocka_unit_test(test_buf_overflow),
        cmocka_unit_test(test_buf_zero),
        cmocka_unit_test(test_buf_grow_reset_take),
        cmocka_unit_test(test_tail_basic),
        cmocka_unit_test(test_tail_big_append),
        cmocka_unit_test(test_tail_of),
        cmocka_unit_test(test_tail_model),
    };
    return cmocka_run_group_tests_name("buf", tests, NULL, NULL);
}
