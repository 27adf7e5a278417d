/* test_text.c — UTF-8 validation and sanitising, log fields, base64. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "text.h"

static void test_utf8(void **state)
{
    char out[64];
    (void)state;
    assert_true(sbx__utf8_valid("héllo €𝄞", strlen("héllo €𝄞")));
    assert_false(sbx__utf8_valid("\xc3\x28", 2));          /* bad continuation */
    assert_false(sbx__utf8_valid("\xc0\xaf", 2));          /* overlong '/' */
    assert_false(sbx__utf8_valid("\xed\xa0\x80", 3));      /* surrogate */
    assert_false(sbx__utf8_valid("\xf4\x90\x80\x80", 4));  /* > U+10FFFF */
    assert_false(sbx__utf8_valid("\xe2\x82", 2));          /* truncated */
    assert_int_equal(sbx__utf8_sanitize("a\xff" "b\0c", 5, out, sizeof(out)), 5);
    assert_string_equal(out, "a?b?c");
    /* Never splits a sequence when out is short. */
    assert_int_equal(sbx__utf8_sanitize("ab€", 5, out, 4), 2);
    assert_string_equal(out, "ab");
}

/* A request path cannot end a log line or fake an escape. */
static void test_log_field(void **state)
{
    char out[128];
    (void)state;
    assert_int_equal(sbx__log_field("/a b/é€", strlen("/a b/é€"), out, sizeof(out)),
                     strlen("/a b/é€"));
    assert_string_equal(out, "/a b/é€");
    sbx__log_field("x\n\r\x1b[2J\x7f\\y", 10, out, sizeof(out));
    assert_string_equal(out, "x\\x0a\\x0d\\x1b[2J\\x7f\\\\y");
    /* NUL, a stray byte, C1 NEL and U+2028 */
    sbx__log_field("a\0\xff\xc2\x85\xe2\x80\xa8z", 9, out, sizeof(out));
    assert_string_equal(out, "a\\x00\\xff\\xc2\\x85\\xe2\\x80\\xa8z");
    /* Cut before an escape that does not fit, never inside one. */
    assert_int_equal(sbx__log_field("ab\ncd", 5, out, 5), 2);
    assert_string_equal(out, "ab");
}

static void test_base64(void **state)
{
    const char *v[][2] = {{"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"},
                          {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
    (void)state;
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char *b = sbx__base64((const unsigned char *)v[i][0], strlen(v[i][0]));
        assert_string_equal(b, v[i][1]);
        free(b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_log_field),
        cmocka_unit_test(test_base64),
    };
    return cmocka_run_group_tests_name("text", tests, NULL, NULL);
}
