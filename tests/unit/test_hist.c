/* test_hist.c — common/hist.c: buckets are cumulative and end at +Inf,
 * sum and count agree, a page too small gets nothing usable but the length. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "hist.h"

static void test_buckets(void **state)
{
    sbx_hist h;
    char buf[4096];
    int n;
    (void)state;
    memset(&h, 0, sizeof(h));
    sbx_hist_observe(&h, 0.01);     /* on a bound: le="0.01" */
    sbx_hist_observe(&h, 0.3);
    sbx_hist_observe(&h, -2);       /* skewed clocks: 0 */
    sbx_hist_observe(&h, 7200);     /* beyond an hour: +Inf only */
    n = sbx_hist_format(&h, "x_seconds", "help", "", buf, sizeof(buf));
    assert_true(n > 0 && (size_t)n < sizeof(buf));
    assert_non_null(strstr(buf, "# TYPE x_seconds histogram\n"));
    assert_non_null(strstr(buf, "x_seconds_bucket{le=\"0.01\"} 2\n"));
    assert_non_null(strstr(buf, "x_seconds_bucket{le=\"0.25\"} 2\n"));
    assert_non_null(strstr(buf, "x_seconds_bucket{le=\"0.5\"} 3\n"));
    assert_non_null(strstr(buf, "x_seconds_bucket{le=\"3600\"} 3\n"));
    assert_non_null(strstr(buf, "x_seconds_bucket{le=\"+Inf\"} 4\n"));
    assert_non_null(strstr(buf, "x_seconds_sum 7200.310000\n"));
    assert_non_null(strstr(buf, "x_seconds_count 4\n"));
    n = sbx_hist_format(&h, "y", "h", "provider=\"local\"", buf, sizeof(buf));
    assert_non_null(strstr(buf, "y_bucket{provider=\"local\",le=\"+Inf\"} 4\n"));
    assert_non_null(strstr(buf, "y_count{provider=\"local\"} 4\n"));
    /* Too small: the length it needs, as snprintf. */
    assert_int_equal(sbx_hist_format(&h, "y", "h", "provider=\"local\"", buf, 10), n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
