/* test_runlog.c — worker/runlog.c without a database: a sender that records
 * the batches, and the loop for the 250 ms flush. The cleaning rule against
 * fixed vectors and against every split of the same bytes; chunks cut at
 * line ends and at RUNLOG_CHUNK_MAX; the cap and its marker; the batching
 * (at once when idle, coalesced while a batch is out, the timer for a line
 * begun). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "loop.h"
#include "runlog.h"

#define FFFD "\xEF\xBF\xBD"
#define MAXCH 4096

typedef struct rec {
    int nch;
    int seq[MAXCH];
    char stream[MAXCH][8];
    char *data[MAXCH];
    size_t bytes[MAXCH];
    int batches;
    int outstanding;
    int refuse;         /* the sender says the queue is full */
} rec;

static int rec_send(void *arg, sbx_runlog *l, const sbx_runlog_batch *b)
{
    rec *r = arg;
    (void)l;
    if (r->refuse)
        return -105; /* -ENOBUFS */
    for (int i = 0; i < b->n; i++) {
        assert_true(r->nch < MAXCH);
        assert_int_equal(strlen(b->data[i]), b->len[i]);
        r->seq[r->nch] = b->seq[i];
        snprintf(r->stream[r->nch], sizeof(r->stream[0]), "%s", b->stream[i]);
        r->data[r->nch] = strdup(b->data[i]);
        r->bytes[r->nch] = b->bytes[i];
        r->nch++;
    }
    r->batches++;
    r->outstanding++;
    return 0;
}

static void rec_free(rec *r)
{
    for (int i = 0; i < r->nch; i++)
        free(r->data[i]);
    free(r);
}

typedef struct fixture {
    sbx_loop *loop;
    rec *r;
    sbx_runlog *l;
} fixture;

static void setup_with(fixture *f, size_t max)
{
    sbx_runlog_cfg c = {0};
    assert_int_equal(sbx_loop_new(&f->loop), 0);
    f->r = calloc(1, sizeof(*f->r));
    c.loop = f->loop;
    c.job_id = "j1";
    c.token = 7;
    c.attempt = 1;
    c.max_bytes = max;
    c.send = rec_send;
    c.send_arg = f->r;
    f->l = sbx__runlog_new(&c);
    assert_non_null(f->l);
}

/* Answers every batch out; the runlog may send again meanwhile. */
static void answer_all(fixture *f)
{
    while (f->r->outstanding > 0) {
        f->r->outstanding--;
        sbx__runlog_sent(f->l);
    }
}

/* Ends the log, answers everything (freeing it) and returns the whole text. */
static char *end_all(fixture *f)
{
    size_t n = 0;
    char *all;
    sbx__runlog_end(f->l);
    answer_all(f);
    f->l = NULL;
    for (int i = 0; i < f->r->nch; i++)
        n += strlen(f->r->data[i]);
    all = calloc(1, n + 1);
    for (int i = 0; i < f->r->nch; i++) {
        assert_int_equal(f->r->seq[i], i); /* from 0, no gaps, in order */
        strcat(all, f->r->data[i]);
    }
    return all;
}

static void teardown(fixture *f)
{
    rec_free(f->r);
    sbx_loop_free(f->loop);
}

static void out(fixture *f, sbx_stream s, const char *p, size_t n)
{
    sbx__runlog_output(f->l, s, p, n);
}

/* The text one output makes, fed whole, one byte at a time, or in the
 * pieces given by step. Every way gives the same text. */
static char *clean(const char *in, size_t n, size_t step)
{
    fixture f;
    char *all;
    uint64_t raw = 0;
    setup_with(&f, 1 << 20);
    for (size_t i = 0; i < n; i += step)
        out(&f, SBX_STREAM_STDOUT, in + i, n - i < step ? n - i : step);
    all = end_all(&f);
    for (int i = 0; i < f.r->nch; i++)
        raw += f.r->bytes[i];
    assert_int_equal(raw, n); /* bytes: every raw byte stands behind one chunk */
    teardown(&f);
    return all;
}

static void check(const char *in, size_t n, const char *want)
{
    for (size_t step = 1; step <= n + 1; step++) {
        char *got = clean(in, n, step);
        if (strcmp(got, want) != 0)
            fail_msg("split %zu: got \"%s\" want \"%s\"", step, got, want);
        free(got);
    }
}

#define CHECK(in, want) check((in), sizeof(in) - 1, (want))

static void test_clean(void **state)
{
    (void)state;
    CHECK("hello\n", "hello\n");
    CHECK("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\n", "café € 😀\n");
    /* tab and newline stay; other C0, DEL and C1 controls do not */
    CHECK("a\tb\x00" "c\x1b[31md\x7f" "e\xC2\x85" "f\xC2\xA0g", "a\tb" FFFD "c" FFFD "[31md" FFFD "e" FFFD "f\xC2\xA0g");
    /* CR LF and a CR alone are line ends */
    CHECK("a\r\nb\rc\r", "a\nb\nc\n");
    CHECK("\r\r\n", "\n\n");
    /* invalid UTF-8: one U+FFFD per maximal subpart (as Python's "replace") */
    CHECK("\xff", FFFD);
    CHECK("\xC0\xAF", FFFD FFFD);                       /* overlong lead */
    CHECK("\xE0\x80\x80", FFFD FFFD FFFD);              /* overlong 3-byte */
    CHECK("\xED\xA0\x80", FFFD FFFD FFFD);              /* surrogate */
    CHECK("\xF4\x90\x80\x80", FFFD FFFD FFFD FFFD);     /* past U+10FFFF */
    CHECK("\xE2\x82" "x", FFFD "x");                    /* truncated, then ASCII */
    CHECK("\xF0\x9F\x98", FFFD);                        /* truncated at the end */
    CHECK("\xE2\x82\xE2\x82\xAC", FFFD "€");
    CHECK("\x80\xBF", FFFD FFFD);                       /* lone continuations */
}

/* Random bytes, with many of the interesting ones: every split gives what
 * the whole gives. */
static void test_clean_random_splits(void **state)
{
    static const unsigned char pool[] = {'a', '\n', '\r', '\t', 0, 0x1b, 0x7f, 0x80, 0xBF, 0xC2,
                                         0xC3, 0xA9, 0xE0, 0xE2, 0x82, 0xAC, 0xED, 0xA0, 0xF0,
                                         0xF4, 0x90, 0x9F, 0xFF};
    unsigned seed = 12345;
    (void)state;
    for (int round = 0; round < 200; round++) {
        unsigned char in[64];
        size_t n = 1 + (size_t)(round % 63);
        char *whole, *split;
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            in[i] = pool[(seed >> 16) % sizeof(pool)];
        }
        whole = clean((const char *)in, n, n);
        split = clean((const char *)in, n, 1 + round % 5);
        assert_string_equal(whole, split);
        free(whole);
        free(split);
    }
}

/* Streams keep their order; each chunk one stream; a character split across
 * the other stream's output is still joined. */
static void test_streams(void **state)
{
    fixture f;
    char *all;
    (void)state;
    setup_with(&f, 1 << 20);
    f.r->refuse = 1; /* hold everything until the end */
    out(&f, SBX_STREAM_STDOUT, "out1 \xC3", 6);
    out(&f, SBX_STREAM_STDERR, "err1\n", 5);
    out(&f, SBX_STREAM_STDOUT, "\xA9\n", 2);
    f.r->refuse = 0;
    all = end_all(&f);
    assert_int_equal(f.r->nch, 3);
    assert_string_equal(f.r->stream[0], "stdout");
    assert_string_equal(f.r->data[0], "out1 ");
    assert_string_equal(f.r->stream[1], "stderr");
    assert_string_equal(f.r->data[1], "err1\n");
    assert_string_equal(f.r->stream[2], "stdout");
    assert_string_equal(f.r->data[2], "é\n");
    assert_int_equal(f.r->bytes[0] + f.r->bytes[2], 8);
    free(all);
    teardown(&f);
}

/* Idle: a whole line goes at once; a line begun waits for its end, or for
 * the timer; while a batch is out, lines coalesce into the next one. */
static void test_batching(void **state)
{
    fixture f;
    uint64_t t0;
    char *all;
    (void)state;
    setup_with(&f, 1 << 20);
    out(&f, SBX_STREAM_STDOUT, "one\ntw", 6);
    assert_int_equal(f.r->batches, 1);
    assert_string_equal(f.r->data[0], "one\n");
    out(&f, SBX_STREAM_STDOUT, "o\nthree\n", 8);
    assert_int_equal(f.r->batches, 1); /* the first is still out */
    answer_all(&f);
    assert_int_equal(f.r->batches, 2);  /* the answer sends what waited */
    assert_string_equal(f.r->data[1], "two\nthree\n");
    answer_all(&f);
    out(&f, SBX_STREAM_STDOUT, "partial", 7);
    assert_int_equal(f.r->batches, 2);
    t0 = sbx_now_ms();
    while (f.r->batches == 2 && sbx_now_ms() - t0 < 2000)
        sbx_loop_once(f.loop, 50);
    assert_int_equal(f.r->batches, 3);
    assert_true(sbx_now_ms() - t0 >= RUNLOG_FLUSH_MS - 10);
    assert_true(sbx_now_ms() - t0 < RUNLOG_FLUSH_MS + 200);
    assert_string_equal(f.r->data[2], "partial");
    all = end_all(&f);
    assert_string_equal(all, "one\ntwo\nthree\npartial");
    free(all);
    teardown(&f);
}

/* A queue that refuses keeps the chunks (and their seqs unused) for later. */
static void test_refused_send(void **state)
{
    fixture f;
    char *all;
    (void)state;
    setup_with(&f, 1 << 20);
    f.r->refuse = 1;
    out(&f, SBX_STREAM_STDOUT, "a\n", 2);
    out(&f, SBX_STREAM_STDOUT, "b\n", 2);
    assert_int_equal(f.r->batches, 0);
    f.r->refuse = 0;
    all = end_all(&f);
    assert_string_equal(all, "a\nb\n");
    assert_int_equal(f.r->batches, 1);
    free(all);
    teardown(&f);
}

/* Chunks: at most RUNLOG_CHUNK_MAX bytes, cut after a newline when there is
 * one; a batch goes as soon as RUNLOG_BATCH_MAX bytes wait. */
static void test_chunk_cuts(void **state)
{
    fixture f;
    char line[101], *all, *want;
    size_t total = 0;
    (void)state;
    memset(line, 'x', 99);
    line[99] = '\n';
    line[100] = '\0';
    setup_with(&f, 1 << 20);
    /* one batch stays out, so output accumulates */
    out(&f, SBX_STREAM_STDOUT, "first\n", 6);
    for (int i = 0; i < 1000; i++)
        out(&f, SBX_STREAM_STDOUT, line, 100);
    assert_true(f.r->batches >= 2); /* RUNLOG_BATCH_MAX forced some out */
    for (int i = 1; i < f.r->nch; i++) {
        size_t n = strlen(f.r->data[i]);
        assert_true(n <= RUNLOG_CHUNK_MAX);
        assert_true(n > 0 && f.r->data[i][n - 1] == '\n');
        total += n;
    }
    all = end_all(&f);
    want = calloc(1, 6 + 100 * 1000 + 1);
    strcpy(want, "first\n");
    for (int i = 0; i < 1000; i++)
        strcat(want, line);
    assert_string_equal(all, want);
    for (int i = 0; i < f.r->nch; i++)
        assert_true(strlen(f.r->data[i]) <= RUNLOG_CHUNK_MAX);
    /* A line longer than a chunk is cut at a character boundary. */
    free(all);
    free(want);
    teardown(&f);
    (void)total;

    setup_with(&f, 1 << 20);
    f.r->refuse = 1;
    {
        char *big = malloc(RUNLOG_CHUNK_MAX * 2);
        for (size_t i = 0; i < RUNLOG_CHUNK_MAX * 2; i += 2)
            memcpy(big + i, "\xC3\xA9", 2); /* é: a cut at an odd byte would split one */
        out(&f, SBX_STREAM_STDOUT, big, RUNLOG_CHUNK_MAX * 2);
        free(big);
    }
    f.r->refuse = 0;
    all = end_all(&f);
    assert_true(f.r->nch >= 2);
    for (int i = 0; i < f.r->nch; i++)
        assert_int_equal(strlen(f.r->data[i]) % 2, 0);
    assert_int_equal(strlen(all), RUNLOG_CHUNK_MAX * 2);
    free(all);
    teardown(&f);

    /* A newline, then a line that nearly fills the chunk, then a 3-byte
     * character: what follows the newline is too long for it even after
     * the cut there, so the line itself is cut. */
    setup_with(&f, 1 << 20);
    out(&f, SBX_STREAM_STDOUT, "first\n", 6); /* out and unanswered: the rest waits */
    {
        char *big = malloc(RUNLOG_CHUNK_MAX);
        memset(big, 'y', RUNLOG_CHUNK_MAX);
        out(&f, SBX_STREAM_STDOUT, "\n", 1);
        out(&f, SBX_STREAM_STDOUT, big, RUNLOG_CHUNK_MAX - 2);
        out(&f, SBX_STREAM_STDOUT, "\xE2\x82\xAC", 3);
        free(big);
    }
    all = end_all(&f);
    assert_string_equal(f.r->data[0], "first\n");
    assert_string_equal(f.r->data[1], "\n");
    for (int i = 0; i < f.r->nch; i++)
        assert_true(strlen(f.r->data[i]) <= RUNLOG_CHUNK_MAX);
    assert_int_equal(strlen(all), 6 + RUNLOG_CHUNK_MAX - 1 + 3);
    free(all);
    teardown(&f);
}

/* The cap: text up to max_bytes (never half a character), the rest counted,
 * and one last chunk on stream sbx saying how much was dropped. */
static void test_cap(void **state)
{
    fixture f;
    char *all, want[64];
    sbx_runlog_stats st;
    (void)state;
    setup_with(&f, 10);
    out(&f, SBX_STREAM_STDOUT, "12345678", 8);
    out(&f, SBX_STREAM_STDERR, "\xC3\xA9\xC3\xA9xyz\n", 8); /* é fits (10), the next not */
    sbx__runlog_stats(f.l, &st);
    assert_int_equal(st.text_bytes, 10);
    assert_int_equal(st.dropped_bytes, 6);
    assert_int_equal(st.raw_bytes, 16);
    all = end_all(&f);
    snprintf(want, sizeof(want), "12345678é");
    assert_memory_equal(all, want, strlen(want));
    assert_string_equal(f.r->stream[f.r->nch - 1], "sbx");
    assert_non_null(strstr(f.r->data[f.r->nch - 1], "6 bytes of output dropped"));
    assert_int_equal(f.r->bytes[f.r->nch - 1], 0);
    for (int i = 0; i < f.r->nch - 1; i++)
        assert_string_not_equal(f.r->stream[i], "sbx");
    free(all);
    teardown(&f);

    /* Under the cap: no marker. */
    setup_with(&f, 10);
    out(&f, SBX_STREAM_STDOUT, "123456789\n", 10);
    all = end_all(&f);
    assert_string_equal(f.r->stream[f.r->nch - 1], "stdout");
    free(all);
    teardown(&f);
}

/* Nothing written, ended: nothing sent, nothing leaked. */
static void test_empty(void **state)
{
    fixture f;
    char *all;
    (void)state;
    setup_with(&f, 100);
    all = end_all(&f);
    assert_int_equal(f.r->nch, 0);
    assert_int_equal(f.r->batches, 0);
    free(all);
    teardown(&f);
    sbx__runlog_end(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clean),
        cmocka_unit_test(test_clean_random_splits),
        cmocka_unit_test(test_streams),
        cmocka_unit_test(test_batching),
        cmocka_unit_test(test_refused_send),
        cmocka_unit_test(test_chunk_cuts),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
