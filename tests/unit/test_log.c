/* test_log.c — common/log.c: SBX_LOG_FORMAT=json lines parse as JSON
 * (json-c) whatever the message holds, carry the key=value words as fields
 * and a job line's ids; text lines keep their shape. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <json-c/json.h>

#include "log.h"

/* Output of one call, read back from a temporary file put on stderr. */
static char out[16384];

static const char *capture_begin(FILE **f, int *saved)
{
    fflush(stderr);
    *f = tmpfile();
    assert_non_null(*f);
    *saved = dup(STDERR_FILENO);
    dup2(fileno(*f), STDERR_FILENO);
    return out;
}

static void capture_end(FILE *f, int saved)
{
    size_t n;
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(f);
    n = fread(out, 1, sizeof(out) - 1, f);
    out[n] = '\0';
    fclose(f);
}

#define CAPTURE(call)                                                                      \
    do {                                                                                   \
        FILE *f_;                                                                          \
        int s_;                                                                            \
        capture_begin(&f_, &s_);                                                           \
        call;                                                                              \
        capture_end(f_, s_);                                                               \
    } while (0)

static json_object *parse_line(void)
{
    json_object *o;
    size_t n = strlen(out);
    assert_true(n > 0 && out[n - 1] == '\n');
    assert_null(memchr(out, '\n', n - 1)); /* one line */
    o = json_tokener_parse(out);
    if (!o)
        fail_msg("not JSON: %s", out);
    return o;
}

static const char *str(json_object *o, const char *k)
{
    json_object *v;
    if (!json_object_object_get_ex(o, k, &v))
        fail_msg("no %s in %s", k, json_object_to_json_string(o));
    return json_object_get_string(v);
}

static void test_json_job_line(void **state)
{
    json_object *o, *v;
    (void)state;
    sbx_log_set_format(SBX_LOG_JSON);
    CAPTURE(sbx_log_job(SBX_LOG_INFO, "job", "j-1", "acme", "leased local-0 token=42 why=\"a b\" "
                        "job=forged x=1 x=2 n=007"));
    o = parse_line();
    assert_string_equal(str(o, "level"), "info");
    assert_string_equal(str(o, "area"), "job");
    assert_string_equal(str(o, "job"), "j-1");
    assert_string_equal(str(o, "project"), "acme");
    assert_true(json_object_object_get_ex(o, "token", &v));
    assert_true(json_object_is_type(v, json_type_int));
    assert_int_equal(json_object_get_int(v), 42);
    assert_string_equal(str(o, "why"), "a b");
    assert_string_equal(str(o, "x"), "1");       /* the first of a repeated key */
    assert_string_equal(str(o, "n"), "007");     /* not a JSON number: kept as text */
    assert_non_null(strstr(str(o, "msg"), "job=forged"));
    assert_non_null(strstr(str(o, "ts"), "Z"));
    json_object_put(o);
    sbx_log_set_format(SBX_LOG_TEXT);
}

static void test_json_hostile_message(void **state)
{
    char big[5000];
    json_object *o;
    (void)state;
    sbx_log_set_format(SBX_LOG_JSON);
    /* Quotes, controls, a newline, bytes that are not UTF-8, U+20AC. */
    CAPTURE(sbx_log(SBX_LOG_WARN, "agent", "path=/x\"y\\ \n\x01\xff\xc3(\xe2\x82\xac end"));
    o = parse_line();
    assert_non_null(strstr(str(o, "msg"), "\xe2\x82\xac end"));
    assert_string_equal(str(o, "path"), "/x\"y\\");
    json_object_put(o);
    /* Longer than a line: cut, still one valid object, marked. */
    memset(big, '"', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CAPTURE(sbx_log(SBX_LOG_ERROR, "x", "k=%s", big));
    o = parse_line();
    assert_true(json_object_get_boolean(json_object_object_get(o, "truncated")));
    json_object_put(o);
    sbx_log_set_format(SBX_LOG_TEXT);
}

static void test_text_unchanged(void **state)
{
    (void)state;
    CAPTURE(sbx_log_job(SBX_LOG_INFO, "job", "j-2", "acme", "already succeeded; skipped"));
    assert_non_null(strstr(out, " info  job     j-2 already succeeded; skipped project=acme\n"));
    CAPTURE(sbx_log(SBX_LOG_INFO, "worker", "ready"));
    assert_non_null(strstr(out, "Z info  worker  ready\n"));
}

static void test_parse_format(void **state)
{
    enum sbx_log_format f;
    (void)state;
    assert_int_equal(sbx_log_parse_format("json", &f), 0);
    assert_int_equal(f, SBX_LOG_JSON);
    assert_int_equal(sbx_log_parse_format("TEXT", &f), 0);
    assert_int_equal(f, SBX_LOG_TEXT);
    assert_int_equal(sbx_log_parse_format("logfmt", &f), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_job_line),
        cmocka_unit_test(test_json_hostile_message),
        cmocka_unit_test(test_text_unchanged),
        cmocka_unit_test(test_parse_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
