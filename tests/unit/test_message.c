/* test_message.c — the job message parser (producers/lib/message.c).
 *
 * Two parts. First, one test per file in schemas/examples/job/{valid,invalid,
 * malformed}/ (directory from $SBX_EXAMPLES, else SBX_EXAMPLES_DIR compiled
 * in): valid must parse, invalid must be refused as schema_violation,
 * malformed as invalid_json or not_utf8. tests/schema/check.mjs holds the same
 * vectors to Ajv; this holds them to the C code under ASan in `make asan`.
 * Second, the rules no example file can show: the size limit at its edge,
 * nesting far past the limit, the files byte budget, what lands in the
 * struct, peek_ids on damaged input, and job ids.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "sbx.h"
#include "sbx_redact.h"
#include "sbx_sha256.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef SBX_EXAMPLES_DIR
#define SBX_EXAMPLES_DIR "schemas/examples/job"
#endif

enum expect { EXPECT_OK, EXPECT_SCHEMA, EXPECT_MALFORMED };

struct vector {
    char path[4096 + 512];   /* a directory path + "/" + a file name */
    enum expect expect;
};

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

static void test_vector(void **state)
{
    const struct vector *v = *state;
    size_t len;
    char *buf = slurp(v->path, &len), err[512];
    sbx_job *job = NULL;
    sbx_reject why = SBX_REJECT_NONE;
    sbx_err rc = sbx_job_parse(buf, len, &job, &why, err, sizeof err);

    switch (v->expect) {
    case EXPECT_OK:
        if (rc != SBX_OK)
            fail_msg("%s: refused: %s: %s", v->path, sbx_reject_name(why), err);
        assert_non_null(job);
        assert_int_equal(why, SBX_REJECT_NONE);
        assert_true(sbx_id_valid(job->job_id) && sbx_id_valid(job->project_id));
        assert_true((job->argv != NULL) != (job->script != NULL));
        break;
    case EXPECT_SCHEMA:
        if (rc != SBX_EINVAL || why != SBX_REJECT_SCHEMA)
            fail_msg("%s: expected schema_violation, got %s (%s)", v->path, sbx_reject_name(why), err);
        assert_null(job);
        break;
    case EXPECT_MALFORMED:
        if (rc != SBX_EINVAL || (why != SBX_REJECT_INVALID_JSON && why != SBX_REJECT_NOT_UTF8))
            fail_msg("%s: expected invalid_json or not_utf8, got %s (%s)", v->path, sbx_reject_name(why), err);
        assert_null(job);
        break;
    }
    if (rc != SBX_OK) {
        /* One line "path: problem". */
        assert_non_null(strstr(err, ": "));
        assert_null(strchr(err, '\n'));
    }
    sbx_job_free(job);
    free(buf);
}

/* ---- limits ---- */

static sbx_err parse(const char *s, sbx_job **job, sbx_reject *why, char *err, size_t errlen)
{
    return sbx_job_parse(s, strlen(s), job, why, err, errlen);
}

static void test_size_limit(void **state)
{
    (void)state;
    const char *head = "{\"job_id\":\"a\",\"project_id\":\"b\",\"script\":\"true\"}";
    size_t max = SBX_MSG_MAX_BYTES;
    char *buf = malloc(max + 2), err[256];
    sbx_reject why;
    assert_non_null(buf);
    /* Exactly at the limit: trailing whitespace is still JSON. */
    memset(buf, ' ', max + 1);
    memcpy(buf, head, strlen(head));
    assert_int_equal(sbx_job_parse(buf, max, NULL, &why, err, sizeof err), SBX_OK);
    /* One byte more is too large, whatever the bytes are. */
    assert_int_equal(sbx_job_parse(buf, max + 1, NULL, &why, err, sizeof err), SBX_EINVAL);
    assert_int_equal(why, SBX_REJECT_TOO_LARGE);
    assert_string_equal(sbx_reject_name(why), "too_large");
    buf[max] = (char)0xff;
    assert_int_equal(sbx_job_parse(buf, max + 1, NULL, &why, err, sizeof err), SBX_EINVAL);
    assert_int_equal(why, SBX_REJECT_TOO_LARGE);
    free(buf);
}

/* Nesting of a whole megabyte: refused without recursion or a deep tree. */
static void test_depth(void **state)
{
    (void)state;
    const char *head = "{\"job_id\":\"a\",\"project_id\":\"b\",\"script\":\"x\",\"m\":";
    size_t hl = strlen(head), d = (SBX_MSG_MAX_BYTES - hl - 1) / 2;
    char *buf = malloc(SBX_MSG_MAX_BYTES + 1), err[256];
    sbx_reject why;
    assert_non_null(buf);
    memcpy(buf, head, hl);
    memset(buf + hl, '[', d);
    memset(buf + hl + d, ']', d);
    buf[hl + 2 * d] = '}';
    size_t len = hl + 2 * d + 1;
    assert_int_equal(sbx_job_parse(buf, len, NULL, &why, err, sizeof err), SBX_EINVAL);
    assert_int_equal(why, SBX_REJECT_SCHEMA);
    assert_non_null(strstr(err, "nested"));
    /* The same, unbalanced: not JSON at all. */
    buf[len - 2] = '}';
    assert_int_equal(sbx_job_parse(buf, len, NULL, &why, err, sizeof err), SBX_EINVAL);
    assert_int_equal(why, SBX_REJECT_INVALID_JSON);
    /* 32 levels is the limit: 31 inside the top-level object pass the text
     * gates and fail only on the schema's type of "metadata". */
    char small[256];
    snprintf(small, sizeof small, "{\"job_id\":\"a\",\"project_id\":\"b\",\"script\":\"x\",\"metadata\":%.*s%.*s}",
             31, "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", 31, "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]");
    assert_int_equal(parse(small, NULL, &why, err, sizeof err), SBX_EINVAL);
    assert_int_equal(why, SBX_REJECT_SCHEMA);
    assert_non_null(strstr(err, "metadata"));
    free(buf);
}

static char *files_message(size_t total, size_t nfiles)
{
    size_t cap = total + 256 + nfiles * 32;
    char *buf = malloc(cap), *p = buf;
    assert_non_null(buf);
    p += sprintf(p, "{\"job_id\":\"a\",\"project_id\":\"b\",\"script\":\"x\",\"files\":{");
    for (size_t i = 0; i < nfiles; i++) {
        size_t n = total / nfiles + (i == 0 ? total % nfiles : 0);
        p += sprintf(p, "%s\"f%zu\":\"", i ? "," : "", i);
        memset(p, 'x', n);
        p += n;
        *p++ = '"';
    }
    strcpy(p, "}}");
    return buf;
}

/* The one rule JSON Schema cannot state: the sum of file contents. */
static void test_files_budget(void **state)
{
    (void)state;
    char err[256];
    sbx_reject why;
    sbx_job *job = NULL;
    char *ok = files_message(SBX_FILES_BYTES_MAX, 4), *over = files_message(SBX_FILES_BYTES_MAX + 1, 4);
    assert_int_equal(parse(ok, &job, &why, err, sizeof err), SBX_OK);
    assert_int_equal(job->nfiles, 4);
    size_t sum = 0;
    for (size_t i = 0; i < job->nfiles; i++)
        sum += strlen(job->files[i].value);
    assert_int_equal(sum, SBX_FILES_BYTES_MAX);
    sbx_job_free(job);
    assert_int_equal(parse(over, &job, &why, err, sizeof err), SBX_EINVAL);
    assert_int_equal(why, SBX_REJECT_SCHEMA);
    assert_null(job);
    assert_non_null(strstr(err, "files: "));
    free(ok);
    free(over);
    /* Bytes, not characters: 2-byte characters reach the budget at half the count. */
    size_t n = SBX_FILES_BYTES_MAX / 2 + 1;
    char *wide = malloc(2 * n + 128), *p = wide;
    assert_non_null(wide);
    p += sprintf(p, "{\"job_id\":\"a\",\"project_id\":\"b\",\"script\":\"x\",\"files\":{\"w\":\"");
    for (size_t i = 0; i < n; i++) {
        *p++ = (char)0xc3;
        *p++ = (char)0xa9;
    }
    strcpy(p, "\"}}");
    assert_int_equal(parse(wide, NULL, &why, err, sizeof err), SBX_EINVAL);
    assert_int_equal(why, SBX_REJECT_SCHEMA);
    free(wide);
}

static void test_struct_contents(void **state)
{
    (void)state;
    const char *msg =
        "{\"job_id\":\"j1\",\"project_id\":\"p1\",\"command\":[\"sh\",\"-c\",\"echo \\u00e9\"],"
        "\"env\":{\"B\":\"2\",\"A\":\"1\"},\"files\":{\"src/a.c\":\"int x;\"},"
        "\"image\":\"alpine:3\",\"timeout_s\":30.0,\"resources\":{\"cpus\":0.5,\"memory_mb\":256,"
        "\"pids\":64,\"disk_mb\":100},\"network\":true,\"provider\":\"docker\","
        "\"trace\":{\"traceparent\":\"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\","
        "\"tracestate\":\"a=b\"},\"metadata\":{\"team\":\"x\"}}";
    sbx_job *job = NULL;
    char err[256];
    assert_int_equal(parse(msg, &job, NULL, err, sizeof err), SBX_OK);
    assert_string_equal(job->job_id, "j1");
    assert_string_equal(job->project_id, "p1");
    assert_int_equal(job->argc, 3);
    assert_string_equal(job->argv[2], "echo \xc3\xa9");
    assert_null(job->argv[3]);
    assert_null(job->script);
    assert_int_equal(job->nenv, 2);
    assert_string_equal(job->env[0].key, "B"); /* message order */
    assert_string_equal(job->env[1].value, "1");
    assert_string_equal(job->files[0].key, "src/a.c");
    assert_string_equal(job->image, "alpine:3");
    assert_int_equal(job->timeout_s, 30);
    assert_true(job->cpus == 0.5);
    assert_int_equal(job->memory_mb, 256);
    assert_int_equal(job->pids, 64);
    assert_int_equal(job->disk_mb, 100);
    assert_true(job->network);
    assert_string_equal(job->provider, "docker");
    assert_string_equal(job->tracestate, "a=b");
    assert_int_equal(job->nmetadata, 1);
    sbx_job_free(job);

    /* Defaults, and "any" spelled as "". */
    assert_int_equal(parse("{\"job_id\":\"j\",\"project_id\":\"p\",\"script\":\"true\",\"provider\":\"any\"}",
                           &job, NULL, err, sizeof err), SBX_OK);
    assert_int_equal(job->timeout_s, SBX_DEFAULT_TIMEOUT_S);
    assert_string_equal(job->provider, "");
    assert_false(job->network);
    assert_null(job->argv);
    assert_string_equal(job->script, "true");
    assert_int_equal(job->cpus == 0 && job->memory_mb == 0 && job->nenv == 0, 1);
    sbx_job_free(job);
    sbx_job_free(NULL);
}

static void test_error_text(void **state)
{
    (void)state;
    char err[256], tiny[12];
    sbx_reject why;
    assert_int_equal(parse("{\"project_id\":\"p\",\"script\":\"x\"}", NULL, &why, err, sizeof err), SBX_EINVAL);
    assert_string_equal(err, "job_id: required");
    assert_int_equal(parse("{\"job_id\":\"j\",\"project_id\":\"p\",\"script\":\"x\",\"resources\":{\"cpus\":0}}",
                           NULL, &why, err, sizeof err), SBX_EINVAL);
    assert_string_equal(err, "resources.cpus: must be > 0 and <= 64");
    /* A name from the message is quoted safely: no newline, no quote. */
    assert_int_equal(parse("{\"job_id\":\"j\",\"project_id\":\"p\",\"script\":\"x\",\"env\":{\"a\\nb\\\"\":\"1\"}}",
                           NULL, &why, err, sizeof err), SBX_EINVAL);
    assert_string_equal(err, "env[\"a?b?\"]: name must be a variable name (^[A-Za-z_][A-Za-z0-9_]*$)");
    /* Cut to the buffer, never inside a UTF-8 character. */
    assert_int_equal(parse("{\"job_id\":\"j\",\"project_id\":\"p\",\"script\":\"x\",\"\xc3\xa9\xc3\xa9\xc3\xa9\":1}",
                           NULL, &why, tiny, sizeof tiny), SBX_EINVAL);
    assert_true(strlen(tiny) < sizeof tiny);
    assert_int_equal(strcmp(tiny, "message: un"), 0);
    /* NULL and zero-length error buffers are allowed. */
    assert_int_equal(parse("[]", NULL, &why, NULL, 0), SBX_EINVAL);
    assert_int_equal(why, SBX_REJECT_SCHEMA);
    assert_int_equal(sbx_job_parse(NULL, 0, NULL, &why, err, sizeof err), SBX_EINVAL);
    assert_int_equal(why, SBX_REJECT_INVALID_JSON);
    assert_string_equal(sbx_strerror(SBX_OK), "ok");
    assert_string_equal(sbx_reject_name(SBX_REJECT_SCHEMA), "schema_violation");
    assert_string_equal(sbx_reject_name(SBX_REJECT_NOT_UTF8), "not_utf8");
    assert_string_equal(sbx_reject_name(SBX_REJECT_INVALID_JSON), "invalid_json");
}

static void test_peek_ids(void **state)
{
    (void)state;
    char job[SBX_ID_MAX + 1], project[SBX_ID_MAX + 1];
    const char *valid = "{\"job_id\":\"j-1\",\"project_id\":\"p.1\",\"timeout_s\":0}";
    sbx_job_peek_ids(valid, strlen(valid), job, project);
    assert_string_equal(job, "j-1");
    assert_string_equal(project, "p.1");
    /* Truncated after the ids: still found. */
    const char *cut = "{\"project_id\":\"p2\", \"job_id\" : \"j2\", \"command\":[\"ma";
    sbx_job_peek_ids(cut, strlen(cut), job, project);
    assert_string_equal(job, "j2");
    assert_string_equal(project, "p2");
    /* Not UTF-8 elsewhere: the ids are still plain ASCII. */
    const char *latin = "{\"job_id\":\"j3\",\"project_id\":\"p3\",\"script\":\"caf\xe9\"}";
    sbx_job_peek_ids(latin, strlen(latin), job, project);
    assert_string_equal(job, "j3");
    /* Nested ids are not the job's; invalid ids are not returned. */
    const char *nested = "{\"metadata\":{\"job_id\":\"x\"},\"project_id\":\"bad id\"}";
    sbx_job_peek_ids(nested, strlen(nested), job, project);
    assert_string_equal(job, "");
    assert_string_equal(project, "");
    const char *number = "{\"job_id\":7,\"project_id\":\"\xff\"}";
    sbx_job_peek_ids(number, strlen(number), job, project);
    assert_string_equal(job, "");
    assert_string_equal(project, "");
    sbx_job_peek_ids(NULL, 0, job, project);
    assert_string_equal(job, "");
    sbx_job_peek_ids("garbage", 7, NULL, project);
    assert_string_equal(project, "");
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_new_job_id(void **state)
{
    (void)state;
    enum { N = 10000 };
    char **ids = malloc(N * sizeof *ids);
    assert_non_null(ids);
    for (int i = 0; i < N; i++) {
        ids[i] = malloc(SBX_ID_MAX + 1);
        assert_non_null(ids[i]);
        sbx_new_job_id(ids[i]);
        assert_int_equal(strlen(ids[i]), 28);
        assert_memory_equal(ids[i], "j_", 2);
        assert_true(sbx_id_valid(ids[i]));
        assert_int_equal(strspn(ids[i] + 2, "0123456789abcdefghjkmnpqrstvwxyz"), 26);
    }
    /* Time first: an id made later never sorts before one made earlier,
     * except within the same millisecond. */
    assert_true(strncmp(ids[0], ids[N - 1], 12) <= 0);
    /* 80 random bits: no duplicates. */
    qsort(ids, N, sizeof *ids, cmp_str);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    for (int i = 0; i < N; i++)
        free(ids[i]);
    free(ids);
    assert_false(sbx_id_valid(""));
    assert_false(sbx_id_valid("-a"));
    assert_false(sbx_id_valid(NULL));
    char long_id[SBX_ID_MAX + 2];
    memset(long_id, 'a', sizeof long_id - 1);
    long_id[SBX_ID_MAX + 1] = '\0';
    assert_false(sbx_id_valid(long_id));
    long_id[SBX_ID_MAX] = '\0';
    assert_true(sbx_id_valid(long_id));
}

/* ---- the program ---- */

static int load_vectors(const char *root, struct vector **out, size_t *n)
{
    static const struct { const char *dir; enum expect expect; } folders[] = {
        { "valid", EXPECT_OK }, { "invalid", EXPECT_SCHEMA }, { "malformed", EXPECT_MALFORMED },
    };
    size_t cap = 0;
    *n = 0;
    *out = NULL;
    for (size_t f = 0; f < 3; f++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", root, folders[f].dir);
        DIR *d = opendir(dir);
        struct dirent *e;
        size_t before = *n;
        if (!d) {
            fprintf(stderr, "test_message: %s: cannot open (set SBX_EXAMPLES)\n", dir);
            return -1;
        }
        while ((e = readdir(d))) {
            size_t l = strlen(e->d_name);
            if (l < 6 || strcmp(e->d_name + l - 5, ".json") != 0)
                continue;
            if (*n == cap) {
                cap = cap ? cap * 2 : 256;
                *out = realloc(*out, cap * sizeof **out);
                if (!*out) {
                    closedir(d);
                    return -1;
                }
            }
            snprintf((*out)[*n].path, sizeof (*out)[*n].path, "%s/%s", dir, e->d_name);
            (*out)[*n].expect = folders[f].expect;
            (*n)++;
        }
        closedir(d);
        if (*n == before) {
            fprintf(stderr, "test_message: %s: no vectors\n", dir);
            return -1;
        }
    }
    return 0;
}

/* SHA-256 against FIPS 180-2's vectors (and a length that pads into a second
 * block), and the fingerprint: the digest of the redacted text, so two
 * messages that differ only in env values share it and others do not. */
static void test_sha256_and_fingerprint(void **state)
{
    char hex[65], a[65], b[65], c[65], *red = NULL;
    char m56[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    (void)state;
    sbx__sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sbx__sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    sbx__sha256_hex(m56, strlen(m56), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

    const char *j1 = "{\"job_id\":\"j\",\"project_id\":\"p\",\"script\":\"true\","
                     "\"env\":{\"T\":\"one\"}}";
    const char *j2 = "{\"job_id\":\"j\",\"project_id\":\"p\",\"script\":\"true\","
                     "\"env\":{\"T\":\"two\"}}";
    const char *j3 = "{\"job_id\":\"j\",\"project_id\":\"p\",\"script\":\"false\"}";
    assert_int_equal(sbx__job_fingerprint(j1, strlen(j1), &red, a), 0);
    assert_null(strstr(red, "one"));
    sbx__sha256_hex(red, strlen(red), hex);
    assert_string_equal(a, hex);
    free(red);
    assert_int_equal(sbx__job_fingerprint(j2, strlen(j2), NULL, b), 0);
    assert_int_equal(sbx__job_fingerprint(j3, strlen(j3), NULL, c), 0);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_int_not_equal(sbx__job_fingerprint("[1]", 3, NULL, c), 0);

    /* "session" is kept: sbx.runs.spec holds the redacted text, and the
     * trigger that follows a session's runs reads its id there (0010). */
    const char *js = "{\"job_id\":\"j\",\"project_id\":\"p\",\"script\":\"true\","
                     "\"session\":{\"id\":\"dev\",\"idle_timeout_s\":60},\"sesion\":1}";
    assert_int_equal(sbx__job_fingerprint(js, strlen(js), &red, c), 0);
    assert_non_null(strstr(red, "\"session\":{\"id\":\"dev\",\"idle_timeout_s\":60}"));
    assert_non_null(strstr(red, "\"sesion\":\"<redacted>\""));
    free(red);
}

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_files_budget),
        cmocka_unit_test(test_struct_contents),
        cmocka_unit_test(test_error_text),
        cmocka_unit_test(test_peek_ids),
        cmocka_unit_test(test_new_job_id),
        cmocka_unit_test(test_sha256_and_fingerprint),
    };
    const char *root = getenv("SBX_EXAMPLES");
    struct vector *v = NULL;
    size_t nv = 0, nfixed = sizeof fixed / sizeof *fixed;

    if (!root || !*root)
        root = SBX_EXAMPLES_DIR;
    if (load_vectors(root, &v, &nv))
        return 1;
    struct CMUnitTest *tests = calloc(nv + nfixed, sizeof *tests);
    if (!tests)
        return 1;
    for (size_t i = 0; i < nv; i++) {
        /* Test names: "valid/minimal.json", relative to the examples root. */
        tests[i].name = v[i].path + strlen(root) + 1;
        tests[i].test_func = test_vector;
        tests[i].initial_state = &v[i];
    }
    memcpy(tests + nv, fixed, sizeof fixed);
    int failed = _cmocka_run_group_tests("job", tests, nv + nfixed, NULL, NULL);
    free(tests);
    free(v);
    return failed;
}
