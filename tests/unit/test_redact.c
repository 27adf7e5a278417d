/* test_redact.c — SBX_REDIS_URL's parser (common/redis.c) and the one
 * redaction (common/log.c sbx_log_redact): every accepted form, the refused
 * ones, and for each password form that the printed text never holds the
 * password. No services: pure functions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "log.h"
#include "redis.h"

static sbx_redis_url parse_ok(const char *url)
{
    sbx_redis_url u;
    char err[256] = "";
    int rc = sbx_redis_parse_url(url, &u, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s refused: %s", url, err);
    return u;
}

static void parse_bad(const char *url, const char *why, const char *secret)
{
    sbx_redis_url u;
    char err[256] = "";
    assert_int_not_equal(sbx_redis_parse_url(url, &u, err, sizeof(err)), 0);
    if (!strstr(err, why))
        fail_msg("%s: error '%s' does not say '%s'", url, err, why);
    /* The message never quotes the URL, so never its password. */
    if (secret)
        assert_null(strstr(err, secret));
    assert_string_equal(u.pass, "");
}

static void test_parse_plain(void **state)
{
    sbx_redis_url u;
    (void)state;
    u = parse_ok("redis://127.0.0.1:6380/3");
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 3);
    assert_string_equal(u.user, "");
    assert_string_equal(u.pass, "");
    u = parse_ok("redis://cache");
    assert_string_equal(u.host, "cache");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    u = parse_ok("redis://cache:7000/");
    assert_int_equal(u.port, 7000);
    assert_int_equal(u.db, 0);
    u = parse_ok("redis://[::1]:6390/2");
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 6390);
    assert_int_equal(u.db, 2);
    u = parse_ok("unix:/run/redis.sock");
    assert_string_equal(u.unix_path, "/run/redis.sock");
    assert_string_equal(u.pass, "");
}

static void test_parse_credentials(void **state)
{
    sbx_redis_url u;
    (void)state;
    u = parse_ok("redis://:s3cret@h:1/0");
    assert_string_equal(u.user, "");
    assert_string_equal(u.pass, "s3cret");
    assert_string_equal(u.host, "h");
    u = parse_ok("redis://sbx:s3cret@h:2/5");
    assert_string_equal(u.user, "sbx");
    assert_string_equal(u.pass, "s3cret");
    assert_int_equal(u.port, 2);
    assert_int_equal(u.db, 5);
    /* Raw '@', ':' and '/' in the password: the userinfo ends at the last '@'. */
    u = parse_ok("redis://sbx:p@ss:w/rd@h:3/1");
    assert_string_equal(u.user, "sbx");
    assert_string_equal(u.pass, "p@ss:w/rd");
    assert_string_equal(u.host, "h");
    assert_int_equal(u.port, 3);
    assert_int_equal(u.db, 1);
    /* Percent-decoding of user and password; %40 is '@', %25 '%'. */
    u = parse_ok("redis://a%3Ab%40c:x%40y%25z%2F%3a@h");
    assert_string_equal(u.user, "a:b@c");
    assert_string_equal(u.pass, "x@y%z/:");
    u = parse_ok("redis://:%40@h");
    assert_string_equal(u.pass, "@");
    /* A password with spaces, '?', '#', '&' needs no escaping before '@'. */
    u = parse_ok("redis://:a b?c#d&e@h");
    assert_string_equal(u.pass, "a b?c#d&e");
    u = parse_ok("unix:/tmp/r.sock?password=p%26w%40x&user=sbx&db=4");
    assert_string_equal(u.unix_path, "/tmp/r.sock");
    assert_string_equal(u.pass, "p&w@x");
    assert_string_equal(u.user, "sbx");
    assert_int_equal(u.db, 4);
    u = parse_ok("unix:/tmp/r.sock?db=2&password=a:b/c@d");
    assert_string_equal(u.pass, "a:b/c@d");
    assert_int_equal(u.db, 2);
}

static void test_parse_refused(void **state)
{
    (void)state;
    parse_bad("http://h", "must look like", NULL);
    parse_bad("rediss://:pw@h", "hiredis 1.0", "pw");
    parse_bad("redis://onlyuser@h", "a user needs a password", "onlyuser");
    parse_bad("redis://sbx:@h", "empty", NULL);
    parse_bad("redis://:@h", "empty", NULL);
    parse_bad("redis://:ab%4@h", "two hex digits", "ab");
    parse_bad("redis://:ab%zz@h", "two hex digits", "ab");
    parse_bad("redis://:ab%00cd@h", "%00", "ab");
    parse_bad("redis://:pw@", "missing host", "pw");
    parse_bad("redis://:pw@h:0", "bad port", "pw");
    parse_bad("redis://:pw@h:70000", "bad port", "pw");
    parse_bad("redis://:pw@h:x", "bad port", "pw");
    parse_bad("redis://h:1/x", "database", NULL);
    parse_bad("redis://h:1/1?password=pw", "database", "pw");
    parse_bad("redis://h?password=pw", "unix: form", "pw");
    parse_bad("redis://[::1", "']'", NULL);
    parse_bad("unix:", "socket path", NULL);
    parse_bad("unix:/s?password=", "empty", NULL);
    parse_bad("unix:/s?user=sbx", "needs password", NULL);
    parse_bad("unix:/s?password=pw&password=pw2", "twice", "pw");
    parse_bad("unix:/s?password=pw&bogus", "key=value", "pw");
    parse_bad("unix:/s?password=pw&port=1", "unknown", "pw");
    parse_bad("unix:/s?db=x", "database", NULL);
}

static void test_parse_limits(void **state)
{
    char url[1200], err[256];
    sbx_redis_url u;
    (void)state;
    /* The longest password a 511-byte setting can hold fits. */
    memcpy(url, "redis://:", 9);
    memset(url + 9, 'p', 500);
    strcpy(url + 509, "@h");
    assert_int_equal(sbx_redis_parse_url(url, &u, err, sizeof(err)), 0);
    assert_int_equal(strlen(u.pass), 500);
    memset(url + 9, 'p', 1100);
    strcpy(url + 1109, "@h");
    assert_int_not_equal(sbx_redis_parse_url(url, &u, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "longer than"));
    memcpy(url, "unix:/", 6);
    memset(url + 6, 'd', 200);
    url[206] = '\0';
    assert_int_not_equal(sbx_redis_parse_url(url, &u, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "socket path"));
}

/* Redacts in and checks the result is want and holds no secret. */
static void red(const char *in, const char *want, const char *secret)
{
    char out[512];
    sbx_log_redact(in, out, sizeof(out));
    if (want && strcmp(out, want) != 0)
        fail_msg("redact(%s) = '%s', want '%s'", in, out, want);
    if (secret && strstr(out, secret))
        fail_msg("redact(%s) = '%s' still holds '%s'", in, out, secret);
}

static void test_redact_urls(void **state)
{
    (void)state;
    red("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", NULL);
    red("redis://:hunter2@h:1/0", "redis://:***@h:1/0", "hunter2");
    red("redis://sbx:hunter2@h:1/0", "redis://sbx:***@h:1/0", "hunter2");
    /* The Redis parser takes a lone userinfo for a misplaced password. */
    red("redis://hunter2@h", "redis://***@h", "hunter2");
    red("rediss://u:hunter2@h", "rediss://u:***@h", "hunter2");
    red("redis://sbx:p@ss:w/rd@h:3/1", "redis://sbx:***@h:3/1", "ss:w");
    red("redis://sbx:hun%40ter2@h", "redis://sbx:***@h", "ter2");
    red("redis://:a b?c#d&e@h", "redis://:***@h", "c#d");
    red("unix:/s?password=hunter2", "unix:/s?password=***", "hunter2");
    red("unix:/s?db=1&password=hunter2&user=sbx", "unix:/s?db=1&password=***&user=sbx", "hunter2");
    /* A raw '&' not starting key=value stays inside the hidden value. */
    red("unix:/s?password=hun&ter2", "unix:/s?password=***", "ter2");
    red("postgresql://sbx:hunter2@db:5432/sbx", "postgresql://sbx:***@db:5432/sbx", "hunter2");
    red("postgresql://sbx@db/sbx", "postgresql://sbx@db/sbx", NULL);
    red("postgres://db/sbx?user=sbx&password=hunter2&sslmode=require",
        "postgres://db/sbx?user=sbx&password=***&sslmode=require", "hunter2");
    red("postgresql://db/sbx?sslmode=require&sslpassword=hunter2",
        "postgresql://db/sbx?sslmode=require&sslpassword=***", "hunter2");
    red("postgresql://u:pw1@db/sbx?PassWord=pw2", "postgresql://u:***@db/sbx?PassWord=***", "pw");
    /* Docker endpoints: host:port@capacity is not userinfo. */
    red("a=tcp://10.0.0.1:2375@4,b=unix:///var/run/docker.sock@2",
        "a=tcp://10.0.0.1:2375@4,b=unix:///var/run/docker.sock@2", NULL);
    red("http://agent:8080", "http://agent:8080", NULL);
    /* Two URLs: hiding the span between them is fine, showing a password not. */
    red("redis://:pw1@h1 and redis://:pw2@h2", NULL, "pw");
}

static void test_redact_conninfo(void **state)
{
    (void)state;
    red("host=db dbname=sbx", "host=db dbname=sbx", NULL);
    red("host=db password=hunter2 dbname=sbx", "host=db password=*** dbname=sbx", "hunter2");
    red("password=hunter2", "password=***", "hunter2");
    red("host=db password = hunter2 user=sbx", "host=db password = *** user=sbx", "hunter2");
    red("host=db password='hun ter2' user=sbx", "host=db password=*** user=sbx", "ter2");
    red("host=db password='it\\'s hunter2' user=sbx", "host=db password=*** user=sbx", "hunter2");
    red("host=db password=hun\\ ter2 user=sbx", "host=db password=*** user=sbx", "ter2");
    red("host=db password='unterminated hunter2", "host=db password=***", "hunter2");
    red("host=db sslpassword=hunter2", "host=db sslpassword=***", "hunter2");
    red("host=db PASSWORD=hunter2", "host=db PASSWORD=***", "hunter2");
    /* librdkafka settings (SBX_KAFKA_CONF). */
    red("security.protocol=sasl_ssl,sasl.password=hunter2",
        "security.protocol=sasl_ssl,sasl.password=***", "hunter2");
    red("sasl.password=hunter2", "sasl.password=***", "hunter2");
    red("ssl.key.password=hunter2 x", "ssl.key.password=*** x", "hunter2");
    red("client_secret=hunter2", "client_secret=***", "hunter2");
    red("pass=hunter2 pwd=hunter3", "pass=*** pwd=***", "hunter");
    /* Not secrets. */
    red("passport=abc user=me", "passport=abc user=me", NULL);
    red("/var/lib/sbx", "/var/lib/sbx", NULL);
    red("", "", NULL);
}

static void test_redact_bounds(void **state)
{
    char out[16], big[9000];
    (void)state;
    /* Cut short: the cut is made after hiding, so no password head shows. */
    sbx_log_redact("redis://:hunter2hunter2@host:6379", out, sizeof(out));
    assert_string_equal(out, "redis://:***@ho");
    sbx_log_redact("redis://:hunter2@h", out, 1);
    assert_string_equal(out, "");
    sbx_log_redact("redis://:hunter2@h", out, 11);
    assert_string_equal(out, "redis://:*");
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big, "password=", 9);
    {
        char o[256];
        sbx_log_redact(big, o, sizeof(o));
        assert_non_null(strstr(o, "not shown"));
    }
}

/* Random passwords over the characters URLs make hard, in both forms:
 * the parser gets each back exactly and the redaction never shows it. */
static void test_random_passwords(void **state)
{
    static const char alphabet[] = "ab9@:/?#&%= '\\~[]+";
    unsigned seed = 12345;
    (void)state;
    for (int round = 0; round < 2000; round++) {
        char pw[24], enc[80], url[200], out[256], err[256];
        size_t n = 6 + (size_t)(round % 12), e = 0;
        sbx_redis_url u;

        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            pw[i] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
        }
        pw[n] = '\0';
        /* TCP form: only '%' needs escaping. */
        for (size_t i = 0; i < n; i++)
            e += (size_t)snprintf(enc + e, sizeof(enc) - e, pw[i] == '%' ? "%%25" : "%c", pw[i]);
        snprintf(url, sizeof(url), "redis://sbx:%s@h:1/2", enc);
        assert_int_equal(sbx_redis_parse_url(url, &u, err, sizeof(err)), 0);
        assert_string_equal(u.pass, pw);
        assert_string_equal(u.host, "h");
        sbx_log_redact(url, out, sizeof(out));
        assert_string_equal(out, "redis://sbx:***@h:1/2");
        /* Unix form: every byte percent-encoded but letters. */
        e = 0;
        for (size_t i = 0; i < n; i++)
            e += (size_t)snprintf(enc + e, sizeof(enc) - e,
                                  (pw[i] >= 'a' && pw[i] <= 'z') ? "%c" : "%%%02X",
                                  (unsigned char)pw[i]);
        snprintf(url, sizeof(url), "unix:/s?password=%s&db=3", enc);
        assert_int_equal(sbx_redis_parse_url(url, &u, err, sizeof(err)), 0);
        assert_string_equal(u.pass, pw);
        assert_int_equal(u.db, 3);
        sbx_log_redact(url, out, sizeof(out));
        assert_string_equal(out, "unix:/s?password=***&db=3");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_plain),
        cmocka_unit_test(test_parse_credentials),
        cmocka_unit_test(test_parse_refused),
        cmocka_unit_test(test_parse_limits),
        cmocka_unit_test(test_redact_urls),
        cmocka_unit_test(test_redact_conninfo),
        cmocka_unit_test(test_redact_bounds),
        cmocka_unit_test(test_random_passwords),
    };
    return cmocka_run_group_tests_name("redact", tests, NULL, NULL);
}
