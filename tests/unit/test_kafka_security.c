/* test_kafka_security.c — sbx_kafka_security_settings() (producers/lib/
 * kafka_security.c): which librdkafka settings each protocol gives, and each
 * refusal as the one line an operator reads. The files it checks (CA,
 * certificate, key, password) are made in a temporary directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "sbx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64], ca[128], pwfile[128], longpw[128], empty[128];

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/sbx-kafka-sec-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(ca, sizeof ca, "%s/ca.pem", dir);
    snprintf(pwfile, sizeof pwfile, "%s/pw", dir);
    snprintf(longpw, sizeof longpw, "%s/long", dir);
    snprintf(empty, sizeof empty, "%s/empty", dir);
    write_file(ca, "-----BEGIN CERTIFICATE-----\n");
    write_file(pwfile, "s3cret,with=odd chars\r\nsecond line ignored\n");
    write_file(empty, "\n");
    {
        char big[SBX_KAFKA_SECURITY_PASSWORD_MAX + 2];
        memset(big, 'x', sizeof big - 1);
        big[sizeof big - 1] = '\0';
        write_file(longpw, big);
    }
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    (void)state;
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Runs the function; returns its error text ("" on success) and leaves the
 * settings joined by spaces in joined. */
static const char *settings(const sbx_kafka_security *s, char *joined, size_t len)
{
    static char err[512];
    char buf[SBX_KAFKA_SECURITY_BUF];
    const char *kv[SBX_KAFKA_SECURITY_MAX + 1];

    err[0] = joined[0] = '\0';
    if (sbx_kafka_security_settings(s, buf, kv, err, sizeof err) != SBX_OK) {
        assert_null(kv[0]);
        assert_true(err[0] != '\0');
        return err;
    }
    for (int i = 0; kv[i]; i++)
        snprintf(joined + strlen(joined), len - strlen(joined), "%s%s", i ? " " : "", kv[i]);
    return "";
}

static void test_plaintext_default(void **state)
{
    sbx_kafka_security s = {0};
    char j[1024];
    (void)state;
    assert_string_equal(settings(&s, j, sizeof j), "");
    assert_string_equal(j, "security.protocol=plaintext");
}

static void test_sasl_ssl_with_password_file(void **state)
{
    sbx_kafka_security s = {.protocol = "SASL_SSL", .sasl_mechanism = "scram-sha-256",
                            .sasl_username = "alice", .sasl_password_file = pwfile,
                            .ssl_ca = ca};
    char j[1024];
    (void)state;
    assert_string_equal(settings(&s, j, sizeof j), "");
    assert_non_null(strstr(j, "security.protocol=sasl_ssl "));
    assert_non_null(strstr(j, " ssl.endpoint.identification.algorithm=https "));
    assert_non_null(strstr(j, " ssl.ca.location=/tmp/sbx-kafka-sec-"));
    assert_non_null(strstr(j, " sasl.mechanisms=SCRAM-SHA-256 sasl.username=alice "));
    /* The first line, as written: commas and '=' are the password's. */
    assert_non_null(strstr(j, " sasl.password=s3cret,with=odd chars"));
    assert_null(strstr(j, "second line"));
}

static void test_mtls(void **state)
{
    sbx_kafka_security s = {.protocol = "ssl", .ssl_ca = ca, .ssl_cert = ca, .ssl_key = ca};
    char j[1024];
    (void)state;
    assert_string_equal(settings(&s, j, sizeof j), "");
    assert_non_null(strstr(j, "ssl.certificate.location="));
    assert_non_null(strstr(j, "ssl.key.location="));
    assert_null(strstr(j, "sasl"));
}

static void test_refusals(void **state)
{
    static const struct {
        sbx_kafka_security s;
        const char *want;
    } cases[] = {
        {{.protocol = "tls"}, "SBX_KAFKA_SECURITY_PROTOCOL=tls is not known"},
        {{.sasl_username = "a"}, "SBX_KAFKA_SASL_USERNAME is set but "
                                 "SBX_KAFKA_SECURITY_PROTOCOL=plaintext sends no SASL"},
        {{.protocol = "sasl_plaintext", .ssl_ca = "/x"}, "SBX_KAFKA_SSL_CA is set but "
                                 "SBX_KAFKA_SECURITY_PROTOCOL=sasl_plaintext does not use TLS"},
        {{.protocol = "sasl_ssl"}, "SBX_KAFKA_SASL_MECHANISM=(unset): use PLAIN"},
        {{.protocol = "sasl_ssl", .sasl_mechanism = "GSSAPI"}, "SBX_KAFKA_SASL_MECHANISM=GSSAPI"},
        {{.protocol = "sasl_ssl", .sasl_mechanism = "PLAIN"}, "SBX_KAFKA_SASL_USERNAME is not set"},
        {{.protocol = "sasl_ssl", .sasl_mechanism = "PLAIN", .sasl_username = "a"},
         "needs the password in exactly one of"},
        {{.protocol = "sasl_ssl", .sasl_mechanism = "PLAIN", .sasl_username = "a",
          .sasl_password = "p", .sasl_password_file = "/f"}, "needs the password in exactly one"},
        {{.protocol = "sasl_ssl", .sasl_mechanism = "PLAIN", .sasl_username = "a",
          .sasl_password_file = "/nonexistent"},
         "SBX_KAFKA_SASL_PASSWORD_FILE=/nonexistent cannot be read (No such file"},
        {{.protocol = "ssl", .ssl_cert = "/c"}, "SBX_KAFKA_SSL_CERT is set without SBX_KAFKA_SSL_KEY"},
        {{.protocol = "ssl", .ssl_ca = "/nonexistent"}, "SBX_KAFKA_SSL_CA=/nonexistent cannot be read"},
    };
    char j[1024];
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *e = settings(&cases[i].s, j, sizeof j);
        if (!strstr(e, cases[i].want))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, e, cases[i].want);
        assert_null(strchr(e, '\n'));
    }
}

static void test_password_file_limits(void **state)
{
    sbx_kafka_security s = {.protocol = "sasl_ssl", .sasl_mechanism = "PLAIN",
                            .sasl_username = "a", .sasl_password_file = empty};
    char j[1024];
    (void)state;
    assert_non_null(strstr(settings(&s, j, sizeof j), "the file is empty"));
    s.sasl_password_file = longpw;
    assert_non_null(strstr(settings(&s, j, sizeof j), "the password is longer than 1023 bytes"));
}

static void test_from_env(void **state)
{
    sbx_kafka_security s;
    (void)state;
    setenv("SBX_KAFKA_SECURITY_PROTOCOL", "ssl", 1);
    setenv("SBX_KAFKA_SSL_CA", ca, 1);
    unsetenv("SBX_KAFKA_SASL_USERNAME");
    sbx_kafka_security_from_env(&s);
    assert_string_equal(s.protocol, "ssl");
    assert_string_equal(s.ssl_ca, ca);
    assert_null(s.sasl_username);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plaintext_default),
        cmocka_unit_test(test_sasl_ssl_with_password_file),
        cmocka_unit_test(test_mtls),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_password_file_limits),
        cmocka_unit_test(test_from_env),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
