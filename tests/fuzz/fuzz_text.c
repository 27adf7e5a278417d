/* fuzz_text.c — libFuzzer target for the text helpers of common/text.c, the
 * buffers of common/buf.c, and the text fields sbx-worker's dead-letter
 * envelope (worker/dlq.c) carries for a refused message.
 *
 * The input is the refused Kafka message. Properties:
 *  - sbx__utf8_valid() agrees with the reference decoder (RFC 3629).
 *  - sbx__utf8_sanitize() into a buffer of exactly cap bytes (cap taken from
 *    the input's first two bytes, so both cut and uncut copies occur):
 *    the result is valid UTF-8 without NUL, shorter than cap, terminated,
 *    and equal to the reference: each well-formed character copied, each
 *    byte that starts none (and NUL) turned into '?', stopping before the
 *    first unit that does not fit. ASan sees any write past cap.
 *  - sbx__base64() (job files sent to Fly) has the RFC 4648 length and
 *    alphabet and decodes back to the input (ref_base64_decode(), strict).
 *  - Text fields built the way the envelope builds them (detail from
 *    sbx_job_parse(), ids from sbx_job_peek_ids()), serialized by json-c with
 *    the worker's flags, parse as strict RFC 8259 JSON and give back exactly
 *    the text, the detail and the ids.
 *  - The buffers of common/buf.c, fed the input in pieces whose sizes the
 *    input picks: an sbx_tail (cap from the input) holds exactly the last
 *    cap bytes whenever it is read, and an sbx_buf (cap from the input)
 *    holds exactly the pieces that fit, refusing each one that does not
 *    with -E2BIG and nothing else.
 */
#include "sbx.h"

#include <errno.h>
#include <json-c/json.h>
#include <string.h>

#include "buf.h"
#include "ref.h"
#include "text.h"

/* The worker's error buffer for a refused message (worker/job.c, intake). */
#define DETAIL_BUF 256

static void check_utf8_valid(const char *s, size_t n)
{
    int got = sbx__utf8_valid(s, n);
    FUZZ_CHECK((got != 0) == ref_utf8_valid(s, n), "sbx__utf8_valid says %d over %zu bytes", got, n);
}

/* The reference sanitizer: the units of the full result, then the longest
 * run of whole units that fits in cap - 1 bytes. */
static size_t ref_sanitize(const unsigned char *in, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    uint32_t cp;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < n;) {
        size_t l = ref_utf8_decode(in + i, n - i, &cp);
        if (l == 0 || cp == 0) {
            if (o + 1 > cap - 1)
                break;
            out[o++] = '?';
            i++;
            continue;
        }
        if (o + l > cap - 1)
            break;
        memcpy(out + o, in + i, l);
        o += l;
        i += l;
    }
    out[o] = '\0';
    return o;
}

static void check_sanitize(const uint8_t *data, size_t size)
{
    size_t cap = size < 2 ? size : (size_t)(data[0] << 8 | data[1]) % (size + 8);
    /* Exactly cap bytes, so a write past the bound is a heap overflow. */
    char *out = malloc(cap ? cap : 1), *want = malloc(cap + 1);
    if (!out || !want)
        abort();
    size_t n = sbx__utf8_sanitize((const char *)data, size, out, cap);
    size_t wn = ref_sanitize(data, size, want, cap);
    if (cap == 0) {
        FUZZ_CHECK(n == 0, "cap 0 yet %zu bytes", n);
    } else {
        FUZZ_CHECK(n < cap && out[n] == '\0', "length %zu with cap %zu, or not terminated", n, cap);
        FUZZ_CHECK(memchr(out, 0, n) == NULL, "NUL inside the sanitized text");
        FUZZ_CHECK(ref_utf8_valid(out, n), "sanitized text not valid UTF-8");
        FUZZ_CHECK(n == wn && memcmp(out, want, n) == 0,
                   "sanitized %zu bytes, reference %zu (cap %zu, input %zu)", n, wn, cap, size);
    }
    free(out);
    free(want);
}

static bool dlq_base64_pattern(const char *s, size_t n)
{
    /* ^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$ */
    if (n % 4)
        return false;
    for (size_t i = 0; i < n; i++) {
        bool alpha = (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
                     (s[i] >= '0' && s[i] <= '9') || s[i] == '+' || s[i] == '/';
        bool pad_ok = s[i] == '=' && i + 4 >= n && (i % 4 == 3 || (i % 4 == 2 && s[n - 1] == '='));
        if (!alpha && !pad_ok)
            return false;
    }
    return true;
}

static char *check_base64(const uint8_t *data, size_t size)
{
    char *b64 = sbx__base64(data, size);
    FUZZ_CHECK(b64, "sbx__base64 returned NULL for %zu bytes", size);
    size_t n = strlen(b64), back_len = 0;
    FUZZ_CHECK(n == (size + 2) / 3 * 4, "base64 of %zu bytes has %zu characters", size, n);
    FUZZ_CHECK(dlq_base64_pattern(b64, n), "base64 breaks the envelope's pattern: %.64s", b64);
    unsigned char *back = ref_base64_decode(b64, n, &back_len);
    FUZZ_CHECK(back, "base64 not canonical RFC 4648: %.64s", b64);
    FUZZ_CHECK(back_len == size && memcmp(back, data, size) == 0, "base64 does not decode back");
    free(back);
    return b64;
}

static void check_field(const ref_val *root, const char *name, const char *want, size_t want_len)
{
    const ref_val *v = ref_obj_get(root, name);
    FUZZ_CHECK(v, "envelope lacks %s", name);
    if (!want) {
        FUZZ_CHECK(v->type == REF_NULL, "envelope %s should be null", name);
        return;
    }
    FUZZ_CHECK(v->type == REF_STR && v->len == want_len && memcmp(v->str, want, want_len) == 0,
               "envelope %s does not read back as written", name);
}

static void check_envelope(const uint8_t *data, size_t size, const char *b64)
{
    const char *payload = (const char *)data;
    char detail[DETAIL_BUF], jid[SBX_ID_MAX + 1], pid[SBX_ID_MAX + 1];
    sbx_reject why = SBX_REJECT_NONE;
    bool text = sbx__utf8_valid(payload, size) && !memchr(payload, 0, size);

    if (sbx_job_parse(payload, size, NULL, &why, detail, sizeof detail) != SBX_EINVAL)
        strcpy(detail, "retries exhausted");   /* accepted: an envelope of a later failure */
    check_utf8_valid(detail, strlen(detail));
    FUZZ_CHECK(ref_utf8_count(detail, strlen(detail)) <= 1024, "detail longer than the schema allows");
    sbx_job_peek_ids(payload, size, jid, pid);

    json_object *o = json_object_new_object();
    if (!o)
        abort();
    json_object_object_add(o, "detail", json_object_new_string(detail));
    json_object_object_add(o, "job_id", jid[0] ? json_object_new_string(jid) : NULL);
    json_object_object_add(o, "project_id", pid[0] ? json_object_new_string(pid) : NULL);
    json_object_object_add(o, "payload", text ? json_object_new_string_len(payload, (int)size) : NULL);
    json_object_object_add(o, "files_base64", json_object_new_string(b64));
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t slen = strlen(s);

    ref_doc doc;
    FUZZ_CHECK(ref_utf8_valid(s, slen), "envelope not valid UTF-8");
    ref_json_parse(s, slen, &doc);
    FUZZ_CHECK(doc.text == REF_TEXT_OK && doc.root->type == REF_OBJ && !doc.duplicate,
               "envelope is not strict JSON: %.200s", s);
    check_field(doc.root, "detail", detail, strlen(detail));
    check_field(doc.root, "job_id", jid[0] ? jid : NULL, strlen(jid));
    check_field(doc.root, "project_id", pid[0] ? pid : NULL, strlen(pid));
    check_field(doc.root, "payload", text ? payload : NULL, size);
    check_field(doc.root, "files_base64", b64, strlen(b64));
    ref_json_free(&doc);
    json_object_put(o);
}

static void check_buffers(const uint8_t *data, size_t size)
{
    size_t tcap = size < 1 ? 0 : data[0] % 64, bmax = size < 2 ? 0 : (size_t)data[1] * 4;
    char *mem = malloc(tcap + 1), *all = malloc(size + 1), *want = malloc(size + 1);
    size_t alen = 0, kept = 0;
    sbx_tail t;
    sbx_buf b;

    if (!mem || !all || !want)
        abort();
    sbx_tail_init(&t, mem, tcap);
    sbx_buf_init(&b, bmax);
    /* Each input byte picks the size of the piece that starts at it (0..96
     * bytes; an empty piece moves on by one byte) and whether to read the
     * tail afterwards. */
    for (size_t i = 0; i < size;) {
        size_t n = data[i] % 97;
        int look = data[i] & 0x80;
        if (n > size - i)
            n = size - i;
        sbx_tail_add(&t, data + i, n);
        memcpy(all + alen, data + i, n);
        alen += n;
        int rc = sbx_buf_add(&b, data + i, n);
        if (kept + n <= bmax) {
            FUZZ_CHECK(rc == 0, "sbx_buf_add refused %zu bytes at %zu of %zu", n, kept, bmax);
            memcpy(want + kept, data + i, n);
            kept += n;
        } else {
            FUZZ_CHECK(rc == -E2BIG, "sbx_buf_add past the cap returned %d", rc);
        }
        if (look) {
            size_t tl = alen < tcap ? alen : tcap;
            const char *got = sbx_tail_str(&t);
            FUZZ_CHECK(t.len == tl && memcmp(got, all + alen - tl, tl) == 0 && got[tl] == '\0',
                       "tail of %zu bytes (cap %zu) is not the last ones", alen, tcap);
        }
        i += n ? n : 1;
    }
    FUZZ_CHECK(b.len == kept && memcmp(sbx_buf_str(&b), want, kept) == 0 &&
               sbx_buf_str(&b)[kept] == '\0', "sbx_buf does not hold what it accepted");
    sbx_buf_free(&b);
    free(mem);
    free(all);
    free(want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_utf8_valid((const char *)data, size);
    check_sanitize(data, size);
    char *b64 = check_base64(data, size);
    check_envelope(data, size, b64);
    free(b64);
    check_buffers(data, size);
    return 0;
}
