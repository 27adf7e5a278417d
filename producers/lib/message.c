/* job.c — the v1 job message: from untrusted bytes to a validated sbx_job.
 *
 * The schema (schemas/job.v1.schema.json) is the contract; this file is its C
 * implementation, and tests/schema/check.mjs runs both over every vector in
 * schemas/examples/ plus mutated ones and fails on any disagreement. A message
 * goes through four gates, cheapest first, and the first gate it fails names
 * the dead-letter reason:
 *
 *   1. size     > SBX_MSG_MAX_BYTES                         -> too_large
 *   2. UTF-8    strict (RFC 3629: no overlongs, surrogates)  -> not_utf8
 *               (utf8.c, the one validator of sbx)
 *   3. text     RFC 8259 grammar, checked by scan() below,   -> invalid_json
 *               plus sbx's text rules: no "\u0000" and no
 *               unpaired surrogate escape in any string (they
 *               cannot become C strings or valid UTF-8), and
 *               unique member names (RFC 7493, I-JSON)
 *   4. schema   every rule of the schema, plus two it cannot -> schema_violation
 *               express: nesting <= JSON_DEPTH_MAX and the sum
 *               of files contents <= SBX_FILES_BYTES_MAX bytes
 *
 * Why our own scanner in front of json-c: json-c 0.16 accepts non-JSON even
 * with JSON_TOKENER_STRICT (NaN, Infinity, single quotes, "1.", "00", raw
 * control characters in strings) and turns an unpaired surrogate escape into
 * U+FFFD, so on its own it would accept messages that every other JSON parser
 * refuses. scan() is a non-recursive RFC 8259 recognizer that also measures
 * the nesting depth and counts name/value pairs; json-c then builds the tree
 * (bounded to JSON_DEPTH_MAX) that the rules walk.
 *
 * Duplicate member names are refused (invalid_json): a later consumer that
 * keeps the first value while we validated the last would run a job nobody
 * validated. json-c keeps the last value of a repeated name, so a tree with
 * fewer pairs than scan() counted had duplicates; that is exact because gate
 * 3 already refused the only escapes ("\u0000", lone surrogates) that could
 * make two different names collide in json-c. A document nested deeper than
 * JSON_DEPTH_MAX is refused as schema_violation before duplicates are looked
 * for, since its tree is never built.
 */
#include "sbx.h"
#include "sbx_utf8.h"

#include <json-c/json.h>

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* A valid v1 job nests 2 deep (object -> env/files/command/...); 32 leaves
 * room for later versions while keeping json-c's tree, which json-c frees
 * recursively, shallow. */
#define JSON_DEPTH_MAX 32

/* Schema numbers that sbx.h does not already name. */
#define ARG_MAX_CHARS       4096
#define SCRIPT_MAX_CHARS    65536
#define ENV_NAME_MAX_CHARS  256
#define ENV_VALUE_MAX_CHARS 4096
#define PATH_MAX_CHARS      1024
#define IMAGE_MAX_CHARS     512
#define TRACESTATE_MAX      512
#define META_MAX            32
#define META_NAME_MAX_CHARS 63
#define META_VALUE_MAX      1024

/* Error text quotes at most this many bytes of a name taken from the message. */
#define QUOTE_MAX 48

const char *sbx_strerror(sbx_err e)
{
    switch (e) {
    case SBX_OK:        return "ok";
    case SBX_EINVAL:    return "invalid argument or message";
    case SBX_ENOMEM:    return "out of memory";
    case SBX_EKAFKA:    return "Kafka error";
    case SBX_ETIMEDOUT: return "timed out";
    case SBX_EIO:       return "I/O error";
    }
    return "unknown error";
}

const char *sbx_reject_name(sbx_reject r)
{
    switch (r) {
    case SBX_REJECT_NONE:         return "none";
    case SBX_REJECT_TOO_LARGE:    return "too_large";
    case SBX_REJECT_NOT_UTF8:     return "not_utf8";
    case SBX_REJECT_INVALID_JSON: return "invalid_json";
    case SBX_REJECT_SCHEMA:       return "schema_violation";
    }
    return "unknown";
}

/* ---- text helpers ---- */

/* Where a cut of s at n bytes must move back to so no character is split. */
static size_t utf8_cut(const char *s, size_t n)
{
    size_t j = n;
    while (j > 0 && ((unsigned char)s[j - 1] & 0xC0) == 0x80)
        j--;
    if (j == 0)
        return 0;
    unsigned c = (unsigned char)s[j - 1];
    size_t need = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    return (j - 1) + need <= n ? n : j - 1;
}

/* Unicode code points in valid UTF-8: JSON Schema's string length. */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        count += ((unsigned char)s[i] & 0xC0) != 0x80;
    return count;
}

/* One line into err, valid UTF-8 even when cut short: it may end up in the
 * dead-letter envelope, which is JSON. */
__attribute__((format(printf, 3, 4)))
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    if (n < 0) {
        err[0] = '\0';
        return;
    }
    size_t len = (size_t)n < errlen ? (size_t)n : errlen - 1;
    len = utf8_cut(err, len);
    err[len] = '\0';
    /* One line for every reader: C0 controls, DEL, and the Unicode line
     * breaks NEL, LS and PS become spaces. */
    for (size_t i = 0; i < len; i++) {
        unsigned char *u = (unsigned char *)err + i;
        if (u[0] < 0x20 || u[0] == 0x7f)
            u[0] = ' ';
        else if (u[0] == 0xC2 && i + 1 < len && u[1] == 0x85)
            memset(u, ' ', 2);
        else if (u[0] == 0xE2 && i + 2 < len && u[1] == 0x80 && (u[2] == 0xA8 || u[2] == 0xA9))
            memset(u, ' ', 3);
    }
}

/* A name from the message, made safe to quote in an error line. */
static void quote(char out[QUOTE_MAX + 4], const char *s)
{
    size_t n = strlen(s), cut = n > QUOTE_MAX ? utf8_cut(s, QUOTE_MAX) : n;
    for (size_t i = 0; i < cut; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c < 0x20 || c == 0x7f || c == '"' || c == '\\') ? '?' : (char)c;
    }
    strcpy(out + cut, cut < n ? "..." : "");
}

/* ---- gate 3: the RFC 8259 scanner ---- */

struct scan {
    const unsigned char *s;
    size_t len, pos;
    size_t pairs;           /* name/value pairs, to detect duplicate names */
    size_t depth, maxdepth;
    unsigned char top;      /* first byte of the top-level value */
    const char *problem;    /* why the text was refused; NULL if it was not */
    /* Capture of top-level "job_id"/"project_id" strings, for peek_ids. */
    char *capture[2];
};

enum { CAP_NONE = -1, CAP_JOB = 0, CAP_PROJECT = 1 };

static bool scan_fail(struct scan *sc, const char *problem)
{
    sc->problem = problem;
    return false;
}

static void scan_ws(struct scan *sc)
{
    while (sc->pos < sc->len) {
        unsigned char c = sc->s[sc->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        sc->pos++;
    }
}

static int hex4(const unsigned char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

/* A string at sc->pos (the opening quote). *raw and *rawlen: the bytes between
 * the quotes; *escaped: whether any backslash occurred. */
static bool scan_string(struct scan *sc, const unsigned char **raw, size_t *rawlen, bool *escaped)
{
    size_t start = ++sc->pos;
    *escaped = false;
    while (sc->pos < sc->len) {
        unsigned char c = sc->s[sc->pos];
        if (c == '"') {
            *raw = sc->s + start;
            *rawlen = sc->pos - start;
            sc->pos++;
            return true;
        }
        if (c < 0x20)
            return scan_fail(sc, "control character in string");
        if (c != '\\') {
            sc->pos++;
            continue;
        }
        *escaped = true;
        if (sc->pos + 1 >= sc->len)
            break;
        c = sc->s[sc->pos + 1];
        if (strchr("\"\\/bfnrt", c) && c != '\0') {
            sc->pos += 2;
            continue;
        }
        if (c != 'u')
            return scan_fail(sc, "invalid escape in string");
        int cp = sc->len - sc->pos >= 6 ? hex4(sc->s + sc->pos + 2) : -1;
        if (cp < 0)
            return scan_fail(sc, "invalid \\u escape in string");
        if (cp == 0)
            return scan_fail(sc, "\\u0000 in string");
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return scan_fail(sc, "unpaired surrogate escape in string");
        sc->pos += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            int lo = (sc->len - sc->pos >= 6 && sc->s[sc->pos] == '\\' && sc->s[sc->pos + 1] == 'u')
                         ? hex4(sc->s + sc->pos + 2) : -1;
            if (lo < 0xDC00 || lo > 0xDFFF)
                return scan_fail(sc, "unpaired surrogate escape in string");
            sc->pos += 6;
        }
    }
    return scan_fail(sc, "unterminated string");
}

static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static bool scan_number(struct scan *sc)
{
    const unsigned char *s = sc->s;
    size_t p = sc->pos, n = sc->len;
    if (p < n && s[p] == '-')
        p++;
    if (p < n && s[p] == '0')
        p++;
    else if (p < n && s[p] >= '1' && s[p] <= '9')
        while (p < n && is_digit(s[p])) p++;
    else
        return scan_fail(sc, "invalid number");
    if (p < n && s[p] == '.') {
        if (++p >= n || !is_digit(s[p]))
            return scan_fail(sc, "invalid number");
        while (p < n && is_digit(s[p])) p++;
    }
    if (p < n && (s[p] == 'e' || s[p] == 'E')) {
        p++;
        if (p < n && (s[p] == '+' || s[p] == '-'))
            p++;
        if (p >= n || !is_digit(s[p]))
            return scan_fail(sc, "invalid number");
        while (p < n && is_digit(s[p])) p++;
    }
    sc->pos = p;
    return true;
}

static bool scan_literal(struct scan *sc)
{
    static const char *const lits[] = { "true", "false", "null" };
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(lits[i]);
        if (sc->len - sc->pos >= n && memcmp(sc->s + sc->pos, lits[i], n) == 0) {
            sc->pos += n;
            return true;
        }
    }
    return scan_fail(sc, "unexpected character");
}

static void capture(struct scan *sc, int which, const unsigned char *raw, size_t n)
{
    if (!sc->capture[which] || n > SBX_ID_MAX)
        return;
    memcpy(sc->capture[which], raw, n);
    sc->capture[which][n] = '\0';
}

/* Recognizes one JSON text, iteratively: the container stack is a bit per
 * level (1 = object), on the heap only past 2048 levels. */
static bool scan(struct scan *sc)
{
    enum { VALUE, FIRST_VALUE, NAME, FIRST_NAME, AFTER } state = VALUE;
    unsigned char small[256], *stack = small;
    size_t cap = sizeof small * 8;
    int cap_pending = CAP_NONE;
    bool ok = false;

    scan_ws(sc);
    sc->top = sc->pos < sc->len ? sc->s[sc->pos] : 0;
    for (;;) {
        scan_ws(sc);
        if (state == AFTER && sc->depth == 0) {
            ok = sc->pos == sc->len || scan_fail(sc, "unexpected data after the JSON value");
            goto out;
        }
        if (sc->pos >= sc->len) {
            scan_fail(sc, "unexpected end of input");
            goto out;
        }
        unsigned char c = sc->s[sc->pos];
        bool in_object = sc->depth > 0 &&
                         (stack[(sc->depth - 1) / 8] >> ((sc->depth - 1) % 8) & 1);
        switch (state) {
        case FIRST_VALUE:
            if (c == ']') {
                sc->pos++;
                sc->depth--;
                state = AFTER;
                break;
            }
            state = VALUE;
            /* fall through */
        case VALUE: {
            int cap_which = cap_pending;
            cap_pending = CAP_NONE;
            if (c == '{' || c == '[') {
                if (sc->depth == cap) {
                    size_t ncap = (sc->len + 8) / 8 * 8; /* depth <= input bytes */
                    unsigned char *ns = malloc(ncap / 8);
                    if (!ns) {
                        scan_fail(sc, "out of memory");
                        goto out;
                    }
                    memcpy(ns, stack, cap / 8);
                    if (stack != small)
                        free(stack);
                    stack = ns;
                    cap = ncap;
                }
                unsigned char bit = (unsigned char)(1u << (sc->depth % 8));
                if (c == '{') stack[sc->depth / 8] |= bit;
                else stack[sc->depth / 8] &= (unsigned char)~bit;
                sc->depth++;
                if (sc->depth > sc->maxdepth)
                    sc->maxdepth = sc->depth;
                sc->pos++;
                state = c == '{' ? FIRST_NAME : FIRST_VALUE;
            } else if (c == '"') {
                const unsigned char *raw;
                size_t n;
                bool esc;
                if (!scan_string(sc, &raw, &n, &esc))
                    goto out;
                if (cap_which != CAP_NONE && !esc)
                    capture(sc, cap_which, raw, n);
                state = AFTER;
            } else if (c == '-' || is_digit(c)) {
                if (!scan_number(sc))
                    goto out;
                state = AFTER;
            } else {
                if (!scan_literal(sc))
                    goto out;
                state = AFTER;
            }
            break;
        }
        case FIRST_NAME:
            if (c == '}') {
                sc->pos++;
                sc->depth--;
                state = AFTER;
                break;
            }
            /* fall through */
        case NAME: {
            const unsigned char *raw;
            size_t n;
            bool esc;
            if (c != '"') {
                scan_fail(sc, "expected a member name in double quotes");
                goto out;
            }
            if (!scan_string(sc, &raw, &n, &esc))
                goto out;
            if (sc->depth == 1 && !esc) {
                if (n == 6 && memcmp(raw, "job_id", 6) == 0) cap_pending = CAP_JOB;
                else if (n == 10 && memcmp(raw, "project_id", 10) == 0) cap_pending = CAP_PROJECT;
            }
            scan_ws(sc);
            if (sc->pos >= sc->len || sc->s[sc->pos] != ':') {
                scan_fail(sc, "expected ':' after a member name");
                goto out;
            }
            sc->pos++;
            sc->pairs++;
            state = VALUE;
            break;
        }
        case AFTER:
            if (c == ',') {
                sc->pos++;
                state = in_object ? NAME : VALUE;
            } else if (c == (in_object ? '}' : ']')) {
                sc->pos++;
                sc->depth--;
            } else {
                scan_fail(sc, in_object ? "expected ',' or '}'" : "expected ',' or ']'");
                goto out;
            }
            break;
        }
    }
out:
    if (stack != small)
        free(stack);
    return ok;
}

/* ---- gate 4: the schema ---- */

static const char *type_name(json_object *v)
{
    switch (json_object_get_type(v)) {
    case json_type_null:    return "null";
    case json_type_boolean: return "boolean";
    case json_type_double:
    case json_type_int:     return "number";
    case json_type_object:  return "object";
    case json_type_array:   return "array";
    case json_type_string:  return "string";
    }
    return "?";
}

static size_t count_pairs(json_object *v)
{
    size_t n = 0;
    if (json_object_is_type(v, json_type_object)) {
        struct json_object_iterator it = json_object_iter_begin(v), end = json_object_iter_end(v);
        for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it))
            n += 1 + count_pairs(json_object_iter_peek_value(&it));
    } else if (json_object_is_type(v, json_type_array)) {
        size_t len = json_object_array_length(v);
        for (size_t i = 0; i < len; i++)
            n += count_pairs(json_object_array_get_idx(v, i));
    }
    return n;
}

/* Where a problem is, for the error line: "resources.cpus", "env[\"X\"]". */
struct path {
    const char *field;   /* top-level member */
    const char *sub;     /* member of a fixed object (resources, trace) or NULL */
    const char *key;     /* key of a map (env, files, metadata) or NULL */
    long index;          /* index in command, or -1 */
};

static void path_str(const struct path *p, char *out, size_t outlen)
{
    char q[QUOTE_MAX + 4];
    if (p->sub)
        snprintf(out, outlen, "%s.%s", p->field, p->sub);
    else if (p->key) {
        quote(q, p->key);
        snprintf(out, outlen, "%s[\"%s\"]", p->field, q);
    } else if (p->index >= 0)
        snprintf(out, outlen, "%s[%ld]", p->field, p->index);
    else
        snprintf(out, outlen, "%s", p->field);
}

#define PATHBUF (2 * QUOTE_MAX + 32)

__attribute__((format(printf, 4, 5)))
static sbx_err bad(const struct path *p, char *err, size_t errlen, const char *fmt, ...)
{
    char where[PATHBUF], what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    path_str(p, where, sizeof where);
    seterr(err, errlen, "%s: %s", where, what);
    return SBX_EINVAL;
}

static sbx_err want_type(json_object *v, json_type t, const char *tname,
                         const struct path *p, char *err, size_t errlen)
{
    if (json_object_is_type(v, t))
        return SBX_OK;
    return bad(p, err, errlen, "expected %s, got %s", tname, type_name(v));
}

/* A string of min..max code points; *s and *n receive it. */
static sbx_err get_string(json_object *v, size_t min, size_t max, const struct path *p,
                          const char **s, size_t *n, char *err, size_t errlen)
{
    if (want_type(v, json_type_string, "a string", p, err, errlen))
        return SBX_EINVAL;
    *s = json_object_get_string(v);
    *n = (size_t)json_object_get_string_len(v);
    size_t chars = utf8_chars(*s, *n);
    if (chars < min)
        return bad(p, err, errlen, "must not be empty");
    if (chars > max)
        return bad(p, err, errlen, "longer than %zu characters", max);
    return SBX_OK;
}

/* A JSON number; JSON Schema's "integer" is any number without a fraction,
 * so 5.0 and 5e0 count as integers here too. */
static bool get_number(json_object *v, double *out)
{
    if (json_object_is_type(v, json_type_int)) {
        *out = (double)json_object_get_int64(v);
        return true;
    }
    if (json_object_is_type(v, json_type_double)) {
        *out = json_object_get_double(v);
        return isfinite(*out);
    }
    return false;
}

static sbx_err get_int(json_object *v, long min, long max, const struct path *p,
                       int *out, char *err, size_t errlen)
{
    double d;
    if (!get_number(v, &d) || d != floor(d))
        return bad(p, err, errlen, "expected an integer, got %s", type_name(v));
    if (d < (double)min || d > (double)max)
        return bad(p, err, errlen, "must be between %ld and %ld", min, max);
    *out = (int)d;
    return SBX_OK;
}

static bool is_alnum(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c);
}

/* ^[A-Za-z0-9][A-Za-z0-9._:-]*$ */
static bool id_ok(const char *s, size_t n)
{
    if (n == 0 || n > SBX_ID_MAX || !is_alnum((unsigned char)s[0]))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!is_alnum((unsigned char)s[i]) && !strchr("._:-", s[i]))
            return false;
    return true;
}

/* ^[A-Za-z_][A-Za-z0-9_]*$ */
static bool env_name_ok(const char *s, size_t n)
{
    if (n == 0 || !(is_alnum((unsigned char)s[0]) || s[0] == '_') || is_digit((unsigned char)s[0]))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!is_alnum((unsigned char)s[i]) && s[i] != '_')
            return false;
    return true;
}

/* ^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$ */
static bool meta_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > META_NAME_MAX_CHARS || !is_alnum((unsigned char)s[0]))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!is_alnum((unsigned char)s[i]) && !strchr("._/-", s[i]))
            return false;
    return true;
}

/* Components separated by '/', none empty, "." or "..", no control
 * characters: never absolute, never outside the workspace. */
static bool relpath_ok(const char *s, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '/') {
            unsigned char c = (unsigned char)s[i];
            if (c < 0x20 || c == 0x7f)
                return false;
            continue;
        }
        size_t clen = i - start;
        if (clen == 0 || (clen == 1 && s[start] == '.') ||
            (clen == 2 && s[start] == '.' && s[start + 1] == '.'))
            return false;
        start = i + 1;
    }
    return true;
}

bool sbx_job_path_ok(const char *path)
{
    return path && relpath_ok(path, strlen(path));
}

static bool hex_lower(const char *s, size_t n, bool *all_zero)
{
    *all_zero = true;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit((unsigned char)s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
            return false;
        *all_zero = *all_zero && s[i] == '0';
    }
    return true;
}

/* W3C Trace Context: version-traceid-parentid-flags, version != ff,
 * neither id all zeros. */
static bool traceparent_ok(const char *s, size_t n)
{
    bool zero;
    if (n != 55 || s[2] != '-' || s[35] != '-' || s[52] != '-')
        return false;
    if (!hex_lower(s, 2, &zero) || (s[0] == 'f' && s[1] == 'f'))
        return false;
    if (!hex_lower(s + 3, 32, &zero) || zero)
        return false;
    if (!hex_lower(s + 36, 16, &zero) || zero)
        return false;
    return hex_lower(s + 53, 2, &zero);
}

static bool digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_digit((unsigned char)s[i]))
            return false;
    return true;
}

/* YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|+HH:MM|-HH:MM), the schema's pattern. */
static bool timestamp_ok(const char *s, size_t n)
{
    if (n < 20 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
        !digits(s + 8, 2) || s[10] != 'T' || !digits(s + 11, 2) || s[13] != ':' ||
        !digits(s + 14, 2) || s[16] != ':' || !digits(s + 17, 2))
        return false;
    size_t i = 19;
    if (s[i] == '.') {
        size_t f = ++i;
        while (i < n && is_digit((unsigned char)s[i])) i++;
        if (i == f || i - f > 9)
            return false;
    }
    if (i < n && s[i] == 'Z')
        return i + 1 == n;
    return n - i == 6 && (s[i] == '+' || s[i] == '-') && digits(s + i + 1, 2) &&
           s[i + 3] == ':' && digits(s + i + 4, 2);
}

/* ^[!-~]+$ */
static bool printable_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '!' || s[i] > '~')
            return false;
    return true;
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* One member of the top-level object. */
typedef sbx_err field_fn(json_object *v, sbx_job *job, char *err, size_t errlen);

static sbx_err f_version(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    struct path p = { "v", NULL, NULL, -1 };
    double d;
    (void)job;
    if (!get_number(v, &d) || d != 1.0)
        return bad(&p, err, errlen, "must be 1");
    return SBX_OK;
}

static sbx_err f_id(json_object *v, const char *field, char out[SBX_ID_MAX + 1],
                    char *err, size_t errlen)
{
    struct path p = { field, NULL, NULL, -1 };
    const char *s;
    size_t n;
    if (get_string(v, 1, SBX_ID_MAX, &p, &s, &n, err, errlen))
        return SBX_EINVAL;
    if (!id_ok(s, n))
        return bad(&p, err, errlen, "must match ^[A-Za-z0-9][A-Za-z0-9._:-]*$");
    memcpy(out, s, n + 1);
    return SBX_OK;
}

static sbx_err f_job_id(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    return f_id(v, "job_id", job->job_id, err, errlen);
}

static sbx_err f_project_id(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    return f_id(v, "project_id", job->project_id, err, errlen);
}

static sbx_err f_command(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    struct path p = { "command", NULL, NULL, -1 };
    if (want_type(v, json_type_array, "an array", &p, err, errlen))
        return SBX_EINVAL;
    size_t n = json_object_array_length(v);
    if (n < 1 || n > SBX_ARGV_MAX)
        return bad(&p, err, errlen, "must have 1 to %d items", SBX_ARGV_MAX);
    job->argv = calloc(n + 1, sizeof *job->argv);
    if (!job->argv)
        return SBX_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        p.index = (long)i;
        if (get_string(json_object_array_get_idx(v, i), 0, ARG_MAX_CHARS, &p, &s, &len, err, errlen))
            return SBX_EINVAL;
        if (!(job->argv[i] = dupn(s, len)))
            return SBX_ENOMEM;
        job->argc = i + 1;
    }
    return SBX_OK;
}

static sbx_err f_script(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    struct path p = { "script", NULL, NULL, -1 };
    const char *s;
    size_t n;
    if (get_string(v, 1, SCRIPT_MAX_CHARS, &p, &s, &n, err, errlen))
        return SBX_EINVAL;
    return (job->script = dupn(s, n)) ? SBX_OK : SBX_ENOMEM;
}

/* What a map (object of string values) accepts. */
struct map_rules {
    const char *field;
    size_t max_entries;
    bool (*name_ok)(const char *s, size_t n);
    const char *name_rule;      /* for the error line */
    size_t name_max_chars;
    size_t value_max_chars;
};

static sbx_err get_map(json_object *v, const struct map_rules *r, sbx_kv **out, size_t *nout,
                       size_t *value_bytes, char *err, size_t errlen)
{
    struct path p = { r->field, NULL, NULL, -1 };
    if (want_type(v, json_type_object, "an object", &p, err, errlen))
        return SBX_EINVAL;
    size_t n = (size_t)json_object_object_length(v);
    if (n > r->max_entries)
        return bad(&p, err, errlen, "more than %zu entries", r->max_entries);
    *value_bytes = 0;
    if (n == 0)
        return SBX_OK;
    *out = calloc(n, sizeof **out);
    if (!*out)
        return SBX_ENOMEM;
    struct json_object_iterator it = json_object_iter_begin(v), end = json_object_iter_end(v);
    for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        const char *k = json_object_iter_peek_name(&it), *s;
        size_t klen = strlen(k), len;
        p.key = k;
        if (utf8_chars(k, klen) > r->name_max_chars)
            return bad(&p, err, errlen, "name longer than %zu characters", r->name_max_chars);
        if (!r->name_ok(k, klen))
            return bad(&p, err, errlen, "name must be %s", r->name_rule);
        if (get_string(json_object_iter_peek_value(&it), 0, r->value_max_chars, &p, &s, &len, err, errlen))
            return SBX_EINVAL;
        sbx_kv *kv = &(*out)[*nout];
        if (!(kv->key = dupn(k, klen)) || !(kv->value = dupn(s, len))) {
            free(kv->key);
            kv->key = NULL;
            return SBX_ENOMEM;
        }
        (*nout)++;
        *value_bytes += len;
    }
    return SBX_OK;
}

static sbx_err f_env(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    static const struct map_rules r = {
        "env", SBX_ENV_MAX, env_name_ok, "a variable name (^[A-Za-z_][A-Za-z0-9_]*$)",
        ENV_NAME_MAX_CHARS, ENV_VALUE_MAX_CHARS,
    };
    size_t bytes;
    return get_map(v, &r, &job->env, &job->nenv, &bytes, err, errlen);
}

static sbx_err f_files(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    static const struct map_rules r = {
        "files", SBX_FILES_MAX, relpath_ok,
        "a relative path without empty, '.' or '..' components or control characters",
        PATH_MAX_CHARS, SBX_FILES_BYTES_MAX,
    };
    struct path p = { "files", NULL, NULL, -1 };
    size_t bytes;
    sbx_err rc = get_map(v, &r, &job->files, &job->nfiles, &bytes, err, errlen);
    if (rc == SBX_OK && bytes > SBX_FILES_BYTES_MAX)
        return bad(&p, err, errlen, "contents add up to %zu bytes, more than %d", bytes,
                   SBX_FILES_BYTES_MAX);
    return rc;
}

static sbx_err f_metadata(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    static const struct map_rules r = {
        "metadata", META_MAX, meta_name_ok, "a label name (^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$)",
        META_NAME_MAX_CHARS, META_VALUE_MAX,
    };
    size_t bytes;
    return get_map(v, &r, &job->metadata, &job->nmetadata, &bytes, err, errlen);
}

static sbx_err f_image(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    struct path p = { "image", NULL, NULL, -1 };
    const char *s;
    size_t n;
    if (get_string(v, 1, IMAGE_MAX_CHARS, &p, &s, &n, err, errlen))
        return SBX_EINVAL;
    if (!printable_ascii(s, n))
        return bad(&p, err, errlen, "must be printable ASCII without spaces");
    return (job->image = dupn(s, n)) ? SBX_OK : SBX_ENOMEM;
}

static sbx_err f_timeout(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    struct path p = { "timeout_s", NULL, NULL, -1 };
    return get_int(v, 1, SBX_TIMEOUT_MAX_S, &p, &job->timeout_s, err, errlen);
}

static sbx_err f_resources(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    struct path p = { "resources", NULL, NULL, -1 };
    if (want_type(v, json_type_object, "an object", &p, err, errlen))
        return SBX_EINVAL;
    struct json_object_iterator it = json_object_iter_begin(v), end = json_object_iter_end(v);
    for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        const char *k = json_object_iter_peek_name(&it);
        json_object *x = json_object_iter_peek_value(&it);
        sbx_err rc;
        p.sub = k;
        if (strcmp(k, "cpus") == 0) {
            double d;
            if (!get_number(x, &d))
                return bad(&p, err, errlen, "expected a number, got %s", type_name(x));
            if (!(d > 0 && d <= 64))
                return bad(&p, err, errlen, "must be > 0 and <= 64");
            job->cpus = d;
            continue;
        }
        if (strcmp(k, "memory_mb") == 0)
            rc = get_int(x, 16, 65536, &p, &job->memory_mb, err, errlen);
        else if (strcmp(k, "pids") == 0)
            rc = get_int(x, 1, 4096, &p, &job->pids, err, errlen);
        else if (strcmp(k, "disk_mb") == 0)
            rc = get_int(x, 1, 1048576, &p, &job->disk_mb, err, errlen);
        else {
            char q[QUOTE_MAX + 4];
            quote(q, k);
            p.sub = NULL;
            return bad(&p, err, errlen, "unknown property \"%s\"", q);
        }
        if (rc)
            return rc;
    }
    return SBX_OK;
}

static sbx_err f_network(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    struct path p = { "network", NULL, NULL, -1 };
    if (want_type(v, json_type_boolean, "a boolean", &p, err, errlen))
        return SBX_EINVAL;
    job->network = json_object_get_boolean(v);
    return SBX_OK;
}

/* 0..255 in decimal without a leading zero: the schema's
 * 25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]. */
static bool octet_ok(const char *s, size_t n)
{
    int v = 0;
    if (n < 1 || n > 3 || (n > 1 && s[0] == '0') || !digits(s, n))
        return false;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v <= 255;
}

/* a.b.c.d with an optional /0../32 (no leading zero). */
static bool ipv4_cidr_ok(const char *s, size_t n)
{
    const char *slash = memchr(s, '/', n);
    size_t alen = slash ? (size_t)(slash - s) : n, start = 0, parts = 0;
    for (size_t i = 0; i <= alen; i++) {
        if (i < alen && s[i] != '.')
            continue;
        if (++parts > 4 || !octet_ok(s + start, i - start))
            return false;
        start = i + 1;
    }
    if (parts != 4)
        return false;
    if (slash) {
        const char *b = slash + 1;
        size_t blen = n - alen - 1;
        if (blen < 1 || blen > 2 || (blen == 2 && b[0] == '0') || !digits(b, blen))
            return false;
        if ((blen == 2 ? (b[0] - '0') * 10 + (b[1] - '0') : b[0] - '0') > 32)
            return false;
    }
    return true;
}

/* Labels of 1..63 letters, digits and inner '-', dot-separated, the last one
 * starting with a letter: the schema's
 * (?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])? */
static bool hostname_ok(const char *s, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '.') {
            if (!is_alnum((unsigned char)s[i]) && s[i] != '-')
                return false;
            continue;
        }
        size_t len = i - start;
        if (len < 1 || len > 63 || s[start] == '-' || s[i - 1] == '-')
            return false;
        if (i == n && is_digit((unsigned char)s[start]))
            return false;
        start = i + 1;
    }
    return true;
}

static sbx_err f_egress(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    struct path p = { "egress", NULL, NULL, -1 };
    if (want_type(v, json_type_array, "an array", &p, err, errlen))
        return SBX_EINVAL;
    size_t n = json_object_array_length(v);
    if (n > SBX_EGRESS_ITEMS_MAX)
        return bad(&p, err, errlen, "must have at most %d items", SBX_EGRESS_ITEMS_MAX);
    job->egress = calloc(n + 1, sizeof *job->egress);
    if (!job->egress)
        return SBX_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        p.index = (long)i;
        if (get_string(json_object_array_get_idx(v, i), 0, SBX_EGRESS_ITEM_MAX, &p, &s, &len,
                       err, errlen))
            return SBX_EINVAL;
        if (!ipv4_cidr_ok(s, len) && !hostname_ok(s, len))
            return bad(&p, err, errlen, "must be an IPv4 address or CIDR, or a host name");
        if (!(job->egress[i] = dupn(s, len)))
            return SBX_ENOMEM;
        job->negress = i + 1;
    }
    return SBX_OK;
}

static sbx_err f_provider(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    static const char *const names[] = { "any", "local", "vmpool", "docker", "fly" };
    struct path p = { "provider", NULL, NULL, -1 };
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
            if (strcmp(s, names[i]) == 0 && strlen(names[i]) == (size_t)json_object_get_string_len(v)) {
                /* One spelling for "no preference": "" (see sbx.h). */
                snprintf(job->provider, sizeof job->provider, "%s", i == 0 ? "" : names[i]);
                return SBX_OK;
            }
        }
    }
    return bad(&p, err, errlen, "must be one of any, local, vmpool, docker, fly");
}

/* "session": {id, pause_after_s, idle_timeout_s, max_lifetime_s,
 * preview_port}. The id
 * follows the job id's rule, so it is safe in keys, names and paths. */
static sbx_err f_session(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    struct path p = { "session", NULL, NULL, -1 };
    if (want_type(v, json_type_object, "an object", &p, err, errlen))
        return SBX_EINVAL;
    job->session_pause_s = SBX_SESSION_PAUSE_S;
    job->session_idle_s = SBX_SESSION_IDLE_S;
    job->session_lifetime_s = SBX_SESSION_LIFETIME_S;
    struct json_object_iterator it = json_object_iter_begin(v), end = json_object_iter_end(v);
    for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        const char *k = json_object_iter_peek_name(&it);
        json_object *x = json_object_iter_peek_value(&it);
        sbx_err rc;
        p.sub = k;
        if (strcmp(k, "id") == 0)
            rc = f_id(x, "session.id", job->session_id, err, errlen);
        else if (strcmp(k, "pause_after_s") == 0)
            rc = get_int(x, 1, SBX_SESSION_TIMEOUT_MAX_S, &p, &job->session_pause_s, err, errlen);
        else if (strcmp(k, "idle_timeout_s") == 0)
            rc = get_int(x, 1, SBX_SESSION_TIMEOUT_MAX_S, &p, &job->session_idle_s, err, errlen);
        else if (strcmp(k, "max_lifetime_s") == 0)
            rc = get_int(x, 1, SBX_SESSION_TIMEOUT_MAX_S, &p, &job->session_lifetime_s, err,
                         errlen);
        else if (strcmp(k, "preview_port") == 0)
            rc = get_int(x, 1, 65535, &p, &job->session_preview_port, err, errlen);
        else {
            char q[QUOTE_MAX + 4];
            quote(q, k);
            p.sub = NULL;
            return bad(&p, err, errlen, "unknown property \"%s\"", q);
        }
        if (rc)
            return rc;
    }
    if (!job->session_id[0]) {
        p.sub = "id";
        return bad(&p, err, errlen, "required");
    }
    return SBX_OK;
}

static sbx_err f_trace(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    struct path p = { "trace", NULL, NULL, -1 };
    if (want_type(v, json_type_object, "an object", &p, err, errlen))
        return SBX_EINVAL;
    struct json_object_iterator it = json_object_iter_begin(v), end = json_object_iter_end(v);
    for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        const char *k = json_object_iter_peek_name(&it), *s;
        json_object *x = json_object_iter_peek_value(&it);
        size_t n;
        p.sub = k;
        if (strcmp(k, "traceparent") == 0) {
            if (get_string(x, 0, 55, &p, &s, &n, err, errlen))
                return SBX_EINVAL;
            if (!traceparent_ok(s, n))
                return bad(&p, err, errlen, "must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)");
            if (!(job->traceparent = dupn(s, n)))
                return SBX_ENOMEM;
        } else if (strcmp(k, "tracestate") == 0) {
            if (get_string(x, 0, TRACESTATE_MAX, &p, &s, &n, err, errlen))
                return SBX_EINVAL;
            if (!(job->tracestate = dupn(s, n)))
                return SBX_ENOMEM;
        } else {
            char q[QUOTE_MAX + 4];
            quote(q, k);
            p.sub = NULL;
            return bad(&p, err, errlen, "unknown property \"%s\"", q);
        }
    }
    if (!job->traceparent) {
        p.sub = "traceparent";
        return bad(&p, err, errlen, "required");
    }
    return SBX_OK;
}

static sbx_err f_submitted_at(json_object *v, sbx_job *job, char *err, size_t errlen)
{
    struct path p = { "submitted_at", NULL, NULL, -1 };
    const char *s;
    size_t n;
    (void)job;
    if (get_string(v, 0, 64, &p, &s, &n, err, errlen))
        return SBX_EINVAL;
    if (!timestamp_ok(s, n))
        return bad(&p, err, errlen, "must be an RFC 3339 time (YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM))");
    return SBX_OK;
}

static const struct field {
    const char *name;
    field_fn *check;
} fields[] = {
    { "v", f_version },
    { "job_id", f_job_id },
    { "project_id", f_project_id },
    { "command", f_command },
    { "script", f_script },
    { "env", f_env },
    { "files", f_files },
    { "image", f_image },
    { "timeout_s", f_timeout },
    { "resources", f_resources },
    { "network", f_network },
    { "egress", f_egress },
    { "provider", f_provider },
    { "trace", f_trace },
    { "metadata", f_metadata },
    { "session", f_session },
    { "submitted_at", f_submitted_at },
};

static sbx_err check_job(json_object *root, sbx_job *job, char *err, size_t errlen)
{
    struct json_object_iterator it = json_object_iter_begin(root), end = json_object_iter_end(root);
    bool seen_command = false, seen_script = false;
    for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        const char *k = json_object_iter_peek_name(&it);
        const struct field *f = NULL;
        for (size_t i = 0; i < sizeof fields / sizeof *fields && !f; i++)
            if (strcmp(k, fields[i].name) == 0)
                f = &fields[i];
        if (!f) {
            char q[QUOTE_MAX + 4];
            quote(q, k);
            seterr(err, errlen, "message: unknown property \"%s\"", q);
            return SBX_EINVAL;
        }
        sbx_err rc = f->check(json_object_iter_peek_value(&it), job, err, errlen);
        if (rc)
            return rc;
        seen_command |= f->check == f_command;
        seen_script |= f->check == f_script;
    }
    if (!job->job_id[0] || !job->project_id[0]) {
        seterr(err, errlen, "%s: required", !job->job_id[0] ? "job_id" : "project_id");
        return SBX_EINVAL;
    }
    if (seen_command == seen_script) {
        seterr(err, errlen, "message: %s", seen_command
               ? "command and script are mutually exclusive"
               : "one of command or script is required");
        return SBX_EINVAL;
    }
    return SBX_OK;
}

void sbx_job_free(sbx_job *job)
{
    if (!job)
        return;
    for (size_t i = 0; job->argv && job->argv[i]; i++)
        free(job->argv[i]);
    free(job->argv);
    for (size_t i = 0; job->egress && job->egress[i]; i++)
        free(job->egress[i]);
    free(job->egress);
    free(job->script);
    sbx_kv *maps[] = { job->env, job->files, job->metadata };
    size_t counts[] = { job->nenv, job->nfiles, job->nmetadata };
    for (size_t m = 0; m < 3; m++) {
        for (size_t i = 0; i < counts[m]; i++) {
            free(maps[m][i].key);
            free(maps[m][i].value);
        }
        free(maps[m]);
    }
    free(job->image);
    free(job->traceparent);
    free(job->tracestate);
    free(job);
}

sbx_err sbx_job_parse(const char *buf, size_t len, sbx_job **out,
                      sbx_reject *reject, char *err, size_t errlen)
{
    sbx_reject why = SBX_REJECT_NONE;
    sbx_err rc = SBX_EINVAL;
    struct json_tokener *tok = NULL;
    json_object *root = NULL;
    sbx_job *job = NULL;

    if (out)
        *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (!buf && len) {
        seterr(err, errlen, "message: NULL buffer");
        goto out;
    }

    /* 1. size: decided without reading the bytes. */
    if (len > SBX_MSG_MAX_BYTES) {
        why = SBX_REJECT_TOO_LARGE;
        seterr(err, errlen, "message: %zu bytes, more than %d", len, SBX_MSG_MAX_BYTES);
        goto out;
    }

    /* 2. UTF-8. */
    size_t good = sbx__utf8_prefix(buf, len);
    if (good < len) {
        why = SBX_REJECT_NOT_UTF8;
        seterr(err, errlen, "message: not valid UTF-8 at byte %zu", good);
        goto out;
    }

    /* 3. text. */
    struct scan sc = { .s = (const unsigned char *)buf, .len = len };
    if (!scan(&sc)) {
        if (strcmp(sc.problem, "out of memory") == 0) {
            rc = SBX_ENOMEM;
            goto out;
        }
        why = SBX_REJECT_INVALID_JSON;
        seterr(err, errlen, "message: invalid JSON at byte %zu: %s", sc.pos, sc.problem);
        goto out;
    }
    if (sc.top != '{') {
        why = SBX_REJECT_SCHEMA;
        seterr(err, errlen, "message: expected a JSON object");
        goto out;
    }
    if (sc.maxdepth > JSON_DEPTH_MAX) {
        why = SBX_REJECT_SCHEMA;
        seterr(err, errlen, "message: nested %zu levels deep, more than %d", sc.maxdepth,
               JSON_DEPTH_MAX);
        goto out;
    }
    tok = json_tokener_new_ex(JSON_DEPTH_MAX + 1);
    if (!tok) {
        rc = SBX_ENOMEM;
        goto out;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    root = json_tokener_parse_ex(tok, buf, (int)len);
    if (!root || !json_object_is_type(root, json_type_object)) {
        /* Can't happen for text scan() accepted; refuse rather than guess. */
        why = SBX_REJECT_INVALID_JSON;
        seterr(err, errlen, "message: invalid JSON: %s",
               json_tokener_error_desc(json_tokener_get_error(tok)));
        goto out;
    }
    if (count_pairs(root) != sc.pairs) {
        why = SBX_REJECT_INVALID_JSON;
        seterr(err, errlen, "message: duplicate member name in an object");
        goto out;
    }

    /* 4. schema. */
    job = calloc(1, sizeof *job);
    if (!job) {
        rc = SBX_ENOMEM;
        goto out;
    }
    job->timeout_s = SBX_DEFAULT_TIMEOUT_S;
    rc = check_job(root, job, err, errlen);
    if (rc == SBX_EINVAL)
        why = SBX_REJECT_SCHEMA;
    if (rc)
        goto out;
    if (out) {
        *out = job;
        job = NULL;
    }
    rc = SBX_OK;
out:
    if (rc == SBX_ENOMEM)
        seterr(err, errlen, "message: out of memory");
    if (reject)
        *reject = why;
    sbx_job_free(job);
    json_object_put(root);
    if (tok)
        json_tokener_free(tok);
    return rc;
}

void sbx_job_peek_ids(const char *buf, size_t len,
                      char job_id[SBX_ID_MAX + 1], char project_id[SBX_ID_MAX + 1])
{
    char ids[2][SBX_ID_MAX + 1] = { "", "" };
    struct scan sc = { .s = (const unsigned char *)buf, .len = buf ? len : 0,
                       .capture = { ids[CAP_JOB], ids[CAP_PROJECT] } };
    /* Captures what comes before any error: a truncated message still names
     * its job when the ids come first. */
    scan(&sc);
    if (job_id)
        snprintf(job_id, SBX_ID_MAX + 1, "%s", id_ok(ids[0], strlen(ids[0])) ? ids[0] : "");
    if (project_id)
        snprintf(project_id, SBX_ID_MAX + 1, "%s", id_ok(ids[1], strlen(ids[1])) ? ids[1] : "");
}

bool sbx_id_valid(const char *s)
{
    return s && id_ok(s, strnlen(s, SBX_ID_MAX + 1));
}

/* ---- job ids ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* 80 random bits. getrandom() only fails before the kernel's pool is ready
 * with GRND_NONBLOCK (not used) or on kernels without it; then mix the clock,
 * pid and a counter so ids from this process still differ. */
static void random_bits(unsigned char out[10])
{
    size_t got = 0;
    while (got < 10) {
        ssize_t n = getrandom(out + got, 10 - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (got == 10)
        return;
    static _Atomic uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t seed = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
                    ((uint64_t)getpid() << 32) ^ atomic_fetch_add(&counter, 1);
    uint64_t a = splitmix64(&seed), b = splitmix64(&seed);
    memcpy(out, &a, 8);
    memcpy(out + 8, &b, 2);
}

void sbx_new_job_id(char out[SBX_ID_MAX + 1])
{
    /* Crockford's base32 in lowercase: ids sort by creation time (like a
     * ULID) and survive case-insensitive places such as host names. */
    static const char b32[] = "0123456789abcdefghjkmnpqrstvwxyz";
    struct timespec ts;
    unsigned char rnd[10];
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = ((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000) & ((1ull << 48) - 1);
    random_bits(rnd);
    char *p = out;
    *p++ = 'j';
    *p++ = '_';
    for (int i = 9; i >= 0; i--)
        *p++ = b32[(ms >> (5 * i)) & 31];
    /* 80 bits -> 16 characters, 5 bits at a time from the most significant. */
    for (int i = 0; i < 16; i++) {
        int bit = i * 5, v = 0;
        for (int k = 0; k < 5; k++, bit++)
            v = v << 1 | (rnd[bit / 8] >> (7 - bit % 8) & 1);
        *p++ = b32[v];
    }
    *p = '\0';
}
