/* fuzz_job.c — libFuzzer target for sbx_job_parse() and sbx_job_peek_ids()
 * (producers/lib/message.c): every byte string a Kafka producer can send.
 *
 * What one input checks:
 *  1. Differential: a reference model (ref.c's strict JSON parser plus the
 *     schema rules below, written from schemas/job.v1.schema.json with
 *     Ajv's semantics: numbers are IEEE doubles, lengths count code points,
 *     "integer" is any finite number without a fraction) decides accept or
 *     refuse and the dead-letter reason; sbx_job_parse() must agree exactly.
 *  2. On acceptance, the struct holds what the message said (ids, argv or
 *     script, maps, numbers, defaults), and the promises downstream code
 *     relies on hold without the model: ids valid, exactly one of argv and
 *     script, every limit, file paths that cannot leave the workspace.
 *  3. The error line is one line of valid UTF-8 within errlen, and a shorter
 *     errlen yields a prefix of the same line with the same verdict.
 *  4. peek_ids returns "" or a valid id that appears quoted in the input,
 *     and for an accepted message exactly its unescaped ids.
 *  5. Allocation failure (alloc.h): failing the k-th allocation of job.c
 *     yields SBX_ENOMEM, no job and no leak.
 * Crashes, leaks (LeakSanitizer) and hangs (-timeout) are libFuzzer's part.
 */
#include "sbx.h"

#include <ctype.h>
#include <math.h>
#include <string.h>

#include "alloc.h"
#include "ref.h"

/* Mirror of job.c's nesting bound; the README of schemas/ states it too. */
#define JOB_DEPTH_MAX 32
#define NO_VERDICT (-1)

/* ---- the schema, as the reference reads it ---- */

static bool is_alnum(uint32_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_str(const ref_val *v, size_t min_chars, size_t max_chars)
{
    if (!v || v->type != REF_STR)
        return false;
    size_t n = ref_utf8_count(v->str, v->len);
    return n >= min_chars && n <= max_chars;
}

/* JSON Schema "integer": a number whose value has no fraction. */
static bool is_int(const ref_val *v, double min, double max)
{
    return v->type == REF_NUM && isfinite(v->num) && v->num == floor(v->num) && v->num >= min &&
           v->num <= max;
}

/* ^[A-Za-z0-9][A-Za-z0-9._:-]*$ with 1..128 characters */
static bool id_pattern(const char *s, size_t n)
{
    if (n < 1 || n > SBX_ID_MAX || !is_alnum((unsigned char)s[0]))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!is_alnum((unsigned char)s[i]) && !memchr("._:-", s[i], 4))
            return false;
    return true;
}

/* ^[A-Za-z_][A-Za-z0-9_]*$ */
static bool env_pattern(const char *s, size_t n)
{
    if (n == 0 || (!is_alnum((unsigned char)s[0]) && s[0] != '_') || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!is_alnum((unsigned char)s[i]) && s[i] != '_')
            return false;
    return true;
}

/* ^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$ */
static bool meta_pattern(const char *s, size_t n)
{
    if (n < 1 || n > 63 || !is_alnum((unsigned char)s[0]))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!is_alnum((unsigned char)s[i]) && !memchr("._/-", s[i], 4))
            return false;
    return true;
}

/* The files pattern, one '/'-separated component at a time, over code
 * points. A component is one of [^/.C][^/C]*, \.[^/.C][^/C]*, \.\.[^/C]+
 * where C is U+0000-U+001F and U+007F. */
static bool ctl(uint32_t c) { return c < 0x20 || c == 0x7F; }

static bool component(const uint32_t *c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ctl(c[i]))
            return false;
    if (n >= 1 && c[0] != '.')
        return true;
    if (n >= 2 && c[0] == '.' && c[1] != '.')
        return true;
    return n >= 3 && c[0] == '.' && c[1] == '.';
}

static bool path_pattern(const char *s, size_t n)
{
    uint32_t *cps = malloc((n + 1) * sizeof *cps);
    size_t m = 0, start = 0;
    bool ok = true;
    if (!cps)
        abort();
    for (size_t i = 0; i < n;) {
        size_t l = ref_utf8_decode((const unsigned char *)s + i, n - i, &cps[m++]);
        i += l ? l : 1;
    }
    for (size_t i = 0; i <= m && ok; i++) {
        if (i < m && cps[i] != '/')
            continue;
        ok = component(cps + start, i - start);
        start = i + 1;
    }
    free(cps);
    return ok;
}

/* ^[!-~]+$ */
static bool printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '!' || s[i] > '~')
            return false;
    return n > 0;
}

static bool hex(const char *s, size_t n, bool *zero)
{
    *zero = true;
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
        *zero &= s[i] == '0';
    }
    return true;
}

/* ^(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$ */
static bool traceparent_pattern(const char *s, size_t n)
{
    bool z;
    return n == 55 && hex(s, 2, &z) && memcmp(s, "ff", 2) != 0 && s[2] == '-' &&
           hex(s + 3, 32, &z) && !z && s[35] == '-' && hex(s + 36, 16, &z) && !z &&
           s[52] == '-' && hex(s + 53, 2, &z);
}

static bool ndigits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})$ */
static bool timestamp_pattern(const char *s, size_t n)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    size_t i = 0;
    if (n < 19)
        return false;
    for (; i < 19; i++)
        if (shape[i] == 'd' ? !ndigits(s + i, 1) : s[i] != shape[i])
            return false;
    if (i < n && s[i] == '.') {
        size_t f = ++i;
        while (i < n && ndigits(s + i, 1))
            i++;
        if (i == f || i - f > 9)
            return false;
    }
    if (n - i == 1)
        return s[i] == 'Z';
    return n - i == 6 && (s[i] == '+' || s[i] == '-') && ndigits(s + i + 1, 2) && s[i + 3] == ':' &&
           ndigits(s + i + 4, 2);
}

/* A number written the way printf("%u") writes it (no sign, no leading zero)
 * and at most max: decoded, then printed back and compared. */
static bool canonical_uint(const char *s, size_t n, unsigned max)
{
    char in[8], back[16];
    unsigned long v;
    if (n == 0 || n > 3 || !ndigits(s, n))
        return false;
    memcpy(in, s, n);
    in[n] = '\0';
    v = strtoul(in, NULL, 10);
    snprintf(back, sizeof back, "%lu", v);
    return v <= max && strcmp(back, in) == 0;
}

/* One "egress" item (RFC 791 dotted quad with an optional prefix length, or
 * an RFC 1123 host name whose last label starts with a letter), judged by
 * cutting a copy of the text at its separators. */
static bool egress_item(const char *s, size_t n)
{
    char name[256], *last, *slash;
    size_t parts = 0;
    bool quad = true;

    if (n == 0 || n > 253 || memchr(s, '\0', n))
        return false;
    memcpy(name, s, n);
    name[n] = '\0';
    slash = strchr(name, '/');
    for (char *p = name, *dot; quad && p; p = dot ? dot + 1 : NULL) {
        dot = strpbrk(p, "./");
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        quad = ++parts <= 4 && canonical_uint(p, len, 255);
        if (dot && *dot == '/')
            dot = NULL;
    }
    if (quad && parts == 4)
        return !slash || canonical_uint(slash + 1, strlen(slash + 1), 32);
    last = strrchr(name, '.');
    last = last ? last + 1 : name;
    if (!isalpha((unsigned char)last[0]))
        return false;
    for (char *p = name, *dot; p; p = dot ? dot + 1 : NULL) {
        dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (len == 0 || len > 63 || p[0] == '-' || p[len - 1] == '-')
            return false;
        for (size_t k = 0; k < len; k++)
            if (!isalnum((unsigned char)p[k]) && p[k] != '-')
                return false;
    }
    return true;
}

/* An object of strings: maxProperties, propertyNames, value lengths. */
static bool map_ok(const ref_val *v, size_t max_props, size_t name_max_chars,
                   bool (*name_ok)(const char *, size_t), size_t value_max_chars, size_t *bytes)
{
    if (v->type != REF_OBJ || v->n > max_props)
        return false;
    *bytes = 0;
    for (size_t i = 0; i < v->n; i++) {
        const ref_member *m = &v->members[i];
        if (ref_utf8_count(m->name, m->name_len) > name_max_chars || !name_ok(m->name, m->name_len))
            return false;
        if (!is_str(m->val, 0, value_max_chars))
            return false;
        *bytes += m->val->len;
    }
    return true;
}

static bool resources_ok(const ref_val *v)
{
    if (v->type != REF_OBJ)
        return false;
    for (size_t i = 0; i < v->n; i++) {
        const char *k = v->members[i].name;
        const ref_val *x = v->members[i].val;
        bool ok;
        if (strcmp(k, "cpus") == 0 && v->members[i].name_len == 4)
            ok = x->type == REF_NUM && x->num > 0 && x->num <= 64;
        else if (strcmp(k, "memory_mb") == 0 && v->members[i].name_len == 9)
            ok = is_int(x, 16, 65536);
        else if (strcmp(k, "pids") == 0 && v->members[i].name_len == 4)
            ok = is_int(x, 1, 4096);
        else if (strcmp(k, "disk_mb") == 0 && v->members[i].name_len == 7)
            ok = is_int(x, 1, 1048576);
        else
            ok = false;
        if (!ok)
            return false;
    }
    return true;
}

static bool trace_ok(const ref_val *v)
{
    bool parent = false;
    if (v->type != REF_OBJ)
        return false;
    for (size_t i = 0; i < v->n; i++) {
        const ref_member *m = &v->members[i];
        if (m->name_len == 11 && memcmp(m->name, "traceparent", 11) == 0) {
            if (m->val->type != REF_STR || !traceparent_pattern(m->val->str, m->val->len))
                return false;
            parent = true;
        } else if (m->name_len == 10 && memcmp(m->name, "tracestate", 10) == 0) {
            if (!is_str(m->val, 0, 512))
                return false;
        } else {
            return false;
        }
    }
    return parent;
}

static bool name_is(const ref_member *m, const char *name)
{
    return m->name_len == strlen(name) && memcmp(m->name, name, m->name_len) == 0;
}

/* "session": an id (required) and three timeouts and a port, nothing else. */
static bool session_ok(const ref_val *v)
{
    bool id = false;
    if (v->type != REF_OBJ)
        return false;
    for (size_t i = 0; i < v->n; i++) {
        const ref_member *m = &v->members[i];
        const ref_val *x = m->val;
        bool ok;
        if (name_is(m, "id"))
            ok = id = x->type == REF_STR && id_pattern(x->str, x->len);
        else if (name_is(m, "pause_after_s") || name_is(m, "idle_timeout_s") ||
                 name_is(m, "max_lifetime_s"))
            ok = is_int(x, 1, SBX_SESSION_TIMEOUT_MAX_S);
        else if (name_is(m, "preview_port"))
            ok = is_int(x, 1, 65535);
        else
            ok = false;
        if (!ok)
            return false;
    }
    return id;
}

static bool schema_ok(const ref_val *root)
{
    static const char *const providers[] = { "any", "local", "vmpool", "docker", "fly" };
    bool has_job = false, has_project = false, has_command = false, has_script = false;
    size_t bytes;

    for (size_t i = 0; i < root->n; i++) {
        const ref_member *m = &root->members[i];
        const ref_val *v = m->val;
        bool ok = false;
        if (name_is(m, "v")) {
            ok = v->type == REF_NUM && v->num == 1;
        } else if (name_is(m, "job_id") || name_is(m, "project_id")) {
            ok = v->type == REF_STR && id_pattern(v->str, v->len);
            *(name_is(m, "job_id") ? &has_job : &has_project) = true;
        } else if (name_is(m, "command")) {
            ok = v->type == REF_ARR && v->n >= 1 && v->n <= 256;
            for (size_t k = 0; ok && k < v->n; k++)
                ok = is_str(v->items[k], 0, 4096);
            has_command = true;
        } else if (name_is(m, "script")) {
            ok = is_str(v, 1, 65536);
            has_script = true;
        } else if (name_is(m, "env")) {
            ok = map_ok(v, 128, 256, env_pattern, 4096, &bytes);
        } else if (name_is(m, "files")) {
            ok = map_ok(v, 64, 1024, path_pattern, 524288, &bytes) && bytes <= 524288;
        } else if (name_is(m, "image")) {
            ok = is_str(v, 1, 512) && printable(v->str, v->len);
        } else if (name_is(m, "timeout_s")) {
            ok = is_int(v, 1, 86400);
        } else if (name_is(m, "resources")) {
            ok = resources_ok(v);
        } else if (name_is(m, "network")) {
            ok = v->type == REF_BOOL;
        } else if (name_is(m, "egress")) {
            ok = v->type == REF_ARR && v->n <= 32;
            for (size_t k = 0; ok && k < v->n; k++)
                ok = v->items[k]->type == REF_STR && egress_item(v->items[k]->str, v->items[k]->len);
        } else if (name_is(m, "provider")) {
            for (size_t k = 0; k < 5 && !ok; k++)
                ok = v->type == REF_STR && v->len == strlen(providers[k]) &&
                     memcmp(v->str, providers[k], v->len) == 0;
        } else if (name_is(m, "trace")) {
            ok = trace_ok(v);
        } else if (name_is(m, "metadata")) {
            ok = map_ok(v, 32, SIZE_MAX, meta_pattern, 1024, &bytes);
        } else if (name_is(m, "session")) {
            ok = session_ok(v);
        } else if (name_is(m, "submitted_at")) {
            ok = v->type == REF_STR && timestamp_pattern(v->str, v->len);
        }
        if (!ok)
            return false;
    }
    return has_job && has_project && has_command != has_script;
}

/* The reference verdict: an sbx_reject, or NO_VERDICT for text nested past
 * what the reference parses (then only "refused, as text or schema"). */
static int reference(const char *buf, size_t len, ref_doc *doc)
{
    doc->root = NULL;
    if (len > SBX_MSG_MAX_BYTES)
        return SBX_REJECT_TOO_LARGE;
    if (!ref_utf8_valid(buf, len))
        return SBX_REJECT_NOT_UTF8;
    ref_json_parse(buf, len, doc);
    if (doc->text == REF_TEXT_TOO_DEEP)
        return NO_VERDICT;
    if (doc->text == REF_TEXT_INVALID)
        return SBX_REJECT_INVALID_JSON;
    if (doc->root->type != REF_OBJ || doc->maxdepth > JOB_DEPTH_MAX)
        return SBX_REJECT_SCHEMA;
    if (doc->duplicate)
        return SBX_REJECT_INVALID_JSON;
    return schema_ok(doc->root) ? SBX_REJECT_NONE : SBX_REJECT_SCHEMA;
}

/* ---- what an accepted job must hold ---- */

static bool same(const char *got, const ref_val *want)
{
    return got && want && want->type == REF_STR && strlen(got) == want->len &&
           memcmp(got, want->str, want->len) == 0;
}

static void check_map(const char *field, const sbx_kv *kv, size_t n, const ref_val *want)
{
    size_t expect = want ? want->n : 0;
    FUZZ_CHECK(n == expect, "%s: %zu entries, message has %zu", field, n, expect);
    FUZZ_CHECK(n == 0 || kv, "%s: entries but no array", field);
    for (size_t i = 0; i < expect; i++) {
        const ref_member *m = &want->members[i];
        bool found = false;
        for (size_t k = 0; k < n && !found; k++)
            found = strlen(kv[k].key) == m->name_len && memcmp(kv[k].key, m->name, m->name_len) == 0;
        FUZZ_CHECK(found, "%s: entry %zu of the message missing", field, i);
        for (size_t k = 0; k < n; k++)
            if (strlen(kv[k].key) == m->name_len && memcmp(kv[k].key, m->name, m->name_len) == 0)
                FUZZ_CHECK(same(kv[k].value, m->val), "%s[\"%s\"]: value differs", field, kv[k].key);
    }
}

static double num_or(const ref_val *v, double dflt) { return v ? v->num : dflt; }

static void check_matches_message(const sbx_job *job, const ref_val *root)
{
    const ref_val *command = ref_obj_get(root, "command"), *script = ref_obj_get(root, "script");
    const ref_val *res = ref_obj_get(root, "resources"), *trace = ref_obj_get(root, "trace");
    const ref_val *provider = ref_obj_get(root, "provider"), *image = ref_obj_get(root, "image");
    const ref_val *network = ref_obj_get(root, "network");

    FUZZ_CHECK(same(job->job_id, ref_obj_get(root, "job_id")), "job_id differs: %s", job->job_id);
    FUZZ_CHECK(same(job->project_id, ref_obj_get(root, "project_id")), "project_id differs");
    if (command) {
        FUZZ_CHECK(job->argv && job->argc == command->n && !job->script, "argv: %zu items, message has %zu",
                   job->argc, command->n);
        for (size_t i = 0; i < command->n; i++)
            FUZZ_CHECK(same(job->argv[i], command->items[i]), "argv[%zu] differs", i);
    } else {
        FUZZ_CHECK(!job->argv && job->argc == 0 && same(job->script, script), "script differs");
    }
    check_map("env", job->env, job->nenv, ref_obj_get(root, "env"));
    check_map("files", job->files, job->nfiles, ref_obj_get(root, "files"));
    check_map("metadata", job->metadata, job->nmetadata, ref_obj_get(root, "metadata"));
    FUZZ_CHECK(image ? same(job->image, image) : !job->image, "image differs");
    FUZZ_CHECK(job->timeout_s == (int)num_or(ref_obj_get(root, "timeout_s"), SBX_DEFAULT_TIMEOUT_S),
               "timeout_s %d differs", job->timeout_s);
    FUZZ_CHECK(job->cpus == num_or(ref_obj_get(res, "cpus"), 0), "cpus %g differs", job->cpus);
    FUZZ_CHECK(job->memory_mb == (int)num_or(ref_obj_get(res, "memory_mb"), 0), "memory_mb differs");
    FUZZ_CHECK(job->pids == (int)num_or(ref_obj_get(res, "pids"), 0), "pids differs");
    FUZZ_CHECK(job->disk_mb == (int)num_or(ref_obj_get(res, "disk_mb"), 0), "disk_mb differs");
    FUZZ_CHECK(job->network == (network && network->b), "network differs");
    const ref_val *egress = ref_obj_get(root, "egress");
    FUZZ_CHECK(egress ? job->egress && job->negress == egress->n : !job->egress,
               "egress: %zu items", job->negress);
    for (size_t i = 0; egress && i < egress->n; i++)
        FUZZ_CHECK(same(job->egress[i], egress->items[i]), "egress[%zu] differs", i);
    FUZZ_CHECK(!egress || !job->egress[egress->n], "egress: not NULL-terminated");
    if (!provider || strcmp(provider->str, "any") == 0)
        FUZZ_CHECK(job->provider[0] == '\0', "provider \"%s\", expected \"\"", job->provider);
    else
        FUZZ_CHECK(same(job->provider, provider), "provider \"%s\" differs", job->provider);
    const ref_val *tp = ref_obj_get(trace, "traceparent"), *ts = ref_obj_get(trace, "tracestate");
    FUZZ_CHECK(tp ? same(job->traceparent, tp) : !job->traceparent, "traceparent differs");
    FUZZ_CHECK(ts ? same(job->tracestate, ts) : !job->tracestate, "tracestate differs");
    const ref_val *sess = ref_obj_get(root, "session");
    FUZZ_CHECK(sess ? same(job->session_id, ref_obj_get(sess, "id")) : !job->session_id[0],
               "session id differs");
    FUZZ_CHECK(job->session_pause_s ==
                   (int)num_or(ref_obj_get(sess, "pause_after_s"), sess ? SBX_SESSION_PAUSE_S : 0),
               "session pause_after_s %d differs", job->session_pause_s);
    FUZZ_CHECK(job->session_idle_s ==
                   (int)num_or(ref_obj_get(sess, "idle_timeout_s"), sess ? SBX_SESSION_IDLE_S : 0),
               "session idle_timeout_s %d differs", job->session_idle_s);
    FUZZ_CHECK(job->session_lifetime_s == (int)num_or(ref_obj_get(sess, "max_lifetime_s"),
                                                      sess ? SBX_SESSION_LIFETIME_S : 0),
               "session max_lifetime_s %d differs", job->session_lifetime_s);
    FUZZ_CHECK(job->session_preview_port == (int)num_or(ref_obj_get(sess, "preview_port"), 0),
               "session preview_port differs");
}

static bool text_ok(const char *s)
{
    return s && ref_utf8_valid(s, strlen(s));
}

/* Promises to code downstream (sandbox, providers, SQL), checked on the
 * struct alone. */
static void check_invariants(const sbx_job *job)
{
    static const char *const providers[] = { "", "local", "vmpool", "docker", "fly" };
    bool known = false;
    size_t bytes = 0;

    FUZZ_CHECK(sbx_id_valid(job->job_id) && sbx_id_valid(job->project_id), "invalid id accepted");
    FUZZ_CHECK((job->argv != NULL) != (job->script != NULL), "need exactly one of argv and script");
    if (job->argv) {
        FUZZ_CHECK(job->argc >= 1 && job->argc <= SBX_ARGV_MAX && !job->argv[job->argc],
                   "argc %zu or argv not NULL-terminated", job->argc);
        for (size_t i = 0; i < job->argc; i++)
            FUZZ_CHECK(text_ok(job->argv[i]) && ref_utf8_count(job->argv[i], strlen(job->argv[i])) <= 4096,
                       "argv[%zu] not text or too long", i);
    } else {
        size_t n = strlen(job->script);
        FUZZ_CHECK(n > 0 && text_ok(job->script) && ref_utf8_count(job->script, n) <= 65536, "script");
    }
    FUZZ_CHECK(job->nenv <= SBX_ENV_MAX && job->nfiles <= SBX_FILES_MAX && job->nmetadata <= 32,
               "too many entries: env %zu files %zu metadata %zu", job->nenv, job->nfiles, job->nmetadata);
    for (size_t i = 0; i < job->nenv; i++)
        FUZZ_CHECK(env_pattern(job->env[i].key, strlen(job->env[i].key)) && text_ok(job->env[i].value),
                   "env entry %zu", i);
    for (size_t i = 0; i < job->nfiles; i++) {
        const char *p = job->files[i].key;
        /* The sandbox writes these under the workspace: never absolute,
         * never a "." or ".." component, never an empty one. */
        FUZZ_CHECK(p[0] && p[0] != '/' && !strstr(p, "//") && p[strlen(p) - 1] != '/',
                   "file path \"%s\"", p);
        for (const char *c = p; c; c = strchr(c, '/') ? strchr(c, '/') + 1 : NULL)
            FUZZ_CHECK(strncmp(c, "./", 2) && strcmp(c, ".") && strncmp(c, "../", 3) && strcmp(c, ".."),
                       "file path \"%s\" has a dot component", p);
        FUZZ_CHECK(text_ok(p) && text_ok(job->files[i].value), "file %zu not text", i);
        bytes += strlen(job->files[i].value);
    }
    FUZZ_CHECK(bytes <= SBX_FILES_BYTES_MAX, "files hold %zu bytes", bytes);
    for (size_t i = 0; i < job->nmetadata; i++)
        FUZZ_CHECK(meta_pattern(job->metadata[i].key, strlen(job->metadata[i].key)) &&
                   text_ok(job->metadata[i].value), "metadata entry %zu", i);
    FUZZ_CHECK(!job->image || printable(job->image, strlen(job->image)), "image");
    FUZZ_CHECK(job->timeout_s >= 1 && job->timeout_s <= SBX_TIMEOUT_MAX_S, "timeout_s %d", job->timeout_s);
    FUZZ_CHECK(job->cpus == 0 || (job->cpus > 0 && job->cpus <= 64), "cpus %g", job->cpus);
    FUZZ_CHECK(job->memory_mb == 0 || (job->memory_mb >= 16 && job->memory_mb <= 65536), "memory_mb");
    FUZZ_CHECK(job->pids == 0 || (job->pids >= 1 && job->pids <= 4096), "pids");
    FUZZ_CHECK(job->disk_mb == 0 || (job->disk_mb >= 1 && job->disk_mb <= 1048576), "disk_mb");
    for (size_t i = 0; i < 5; i++)
        known |= strcmp(job->provider, providers[i]) == 0;
    FUZZ_CHECK(known, "provider \"%s\"", job->provider);
    FUZZ_CHECK(!job->traceparent || traceparent_pattern(job->traceparent, strlen(job->traceparent)),
               "traceparent");
    FUZZ_CHECK(!job->tracestate || text_ok(job->tracestate), "tracestate");
}

/* ---- the error line ---- */

static void check_err_line(const char *err, size_t errlen, bool refused)
{
    size_t n = strnlen(err, errlen);
    FUZZ_CHECK(n < errlen, "error line not NUL-terminated within %zu bytes", errlen);
    FUZZ_CHECK(!refused || errlen == 1 || n > 0, "refused without an error line");
    FUZZ_CHECK(refused || n == 0, "accepted with an error line: %s", err);
    FUZZ_CHECK(ref_utf8_valid(err, n), "error line not valid UTF-8");
    for (size_t i = 0; i < n; i++) {
        const unsigned char *u = (const unsigned char *)err + i;
        FUZZ_CHECK(u[0] >= 0x20 && u[0] != 0x7F, "control byte 0x%02x in the error line", u[0]);
        FUZZ_CHECK(!(u[0] == 0xC2 && u[1] == 0x85) &&
                   !(u[0] == 0xE2 && u[1] == 0x80 && (u[2] == 0xA8 || u[2] == 0xA9)),
                   "line break character in the error line");
    }
}

/* ---- peek_ids ---- */

static bool quoted_in(const uint8_t *data, size_t size, const char *id)
{
    size_t n = strlen(id);
    for (size_t i = 0; i + n + 2 <= size; i++)
        if (data[i] == '"' && memcmp(data + i + 1, id, n) == 0 && data[i + n + 1] == '"')
            return true;
    return false;
}

static void check_peek(const uint8_t *data, size_t size, const sbx_job *job, const ref_val *root)
{
    char jid[SBX_ID_MAX + 1], pid[SBX_ID_MAX + 1];
    sbx_job_peek_ids((const char *)data, size, jid, pid);
    for (int i = 0; i < 2; i++) {
        const char *id = i ? pid : jid;
        FUZZ_CHECK(!id[0] || (sbx_id_valid(id) && quoted_in(data, size, id)),
                   "peek_ids returned \"%s\", not a quoted valid id of the input", id);
    }
    if (job) {
        /* peek_ids reads only what needs no unescaping, name and value. */
        const ref_member *j = ref_obj_member(root, "job_id"), *p = ref_obj_member(root, "project_id");
        bool jesc = j->name_escaped || j->val->escaped, pesc = p->name_escaped || p->val->escaped;
        FUZZ_CHECK(strcmp(jid, jesc ? "" : job->job_id) == 0, "peek job_id \"%s\"", jid);
        FUZZ_CHECK(strcmp(pid, pesc ? "" : job->project_id) == 0, "peek project_id \"%s\"", pid);
    }
}

/* ---- the target ---- */

static uint64_t fnv1a(const uint8_t *d, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ d[i]) * 0x100000001b3ull;
    return h;
}

/* Most schema limits are lengths (ids 128, arguments 4096, labels 63, nine
 * fraction digits), and the seeds sit at or next to them; blind byte
 * mutation rarely makes the one edit that crosses such a bound. So a quarter
 * of the mutations lengthen or shorten a run of letters and digits by one
 * character at a random place; the rest are libFuzzer's own. */
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull;
    if (size > 1 && (x >> 60) < 4) {
        size_t pos = (size_t)(x >> 8) % size;
        uint8_t c = data[pos];
        bool word = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (word && (x & 1) && size < max_size) {
            memmove(data + pos + 1, data + pos, size - pos);
            return size + 1;
        }
        if (word) {
            memmove(data + pos, data + pos + 1, size - pos - 1);
            return size - 1;
        }
    }
    return LLVMFuzzerMutate(data, size, max_size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    char err[256], short_err[24];
    sbx_job *job = NULL;
    sbx_reject why = SBX_REJECT_NONE, why2 = SBX_REJECT_NONE;
    ref_doc doc;

    /* 1. Differential verdict. */
    fuzz_alloc_reset(0);
    sbx_err rc = sbx_job_parse(buf, size, &job, &why, err, sizeof err);
    size_t allocs = fuzz_alloc_count;
    int want = reference(buf, size, &doc);

    FUZZ_CHECK(rc == SBX_OK || rc == SBX_EINVAL, "rc %d (%s) without an allocation failure", rc, err);
    FUZZ_CHECK((rc == SBX_OK) == (job != NULL) && (rc == SBX_OK) == (why == SBX_REJECT_NONE),
               "rc %d, job %p, reject %s disagree", rc, (void *)job, sbx_reject_name(why));
    if (want == NO_VERDICT)
        FUZZ_CHECK(why == SBX_REJECT_INVALID_JSON || why == SBX_REJECT_SCHEMA,
                   "nested past %d levels, yet %s", REF_DEPTH_CAP, sbx_reject_name(why));
    else
        FUZZ_CHECK((int)why == want, "libsbx says %s (%s), the reference says %s",
                   sbx_reject_name(why), err, sbx_reject_name((sbx_reject)want));
    check_err_line(err, sizeof err, rc != SBX_OK);

    /* 2. The accepted job. */
    if (job) {
        check_invariants(job);
        check_matches_message(job, doc.root);
    }

    /* 3. Same verdict with a short error buffer and no job wanted. */
    size_t errlen = 1 + size % sizeof short_err;
    fuzz_alloc_reset(0);
    sbx_err rc2 = sbx_job_parse(buf, size, NULL, &why2, short_err, errlen);
    FUZZ_CHECK(rc2 == rc && why2 == why, "second parse: rc %d/%d, %s/%s", rc, rc2,
               sbx_reject_name(why), sbx_reject_name(why2));
    check_err_line(short_err, errlen, rc != SBX_OK);
    FUZZ_CHECK(strncmp(short_err, err, strlen(short_err)) == 0,
               "cut error line \"%s\" is not a prefix of \"%s\"", short_err, err);

    /* 4. peek_ids. */
    check_peek(data, size, job, doc.root);

    /* 5. One allocation failure, at a point chosen by the input. */
    if (allocs > 0) {
        sbx_job *job3 = NULL;
        sbx_reject why3 = SBX_REJECT_SCHEMA;
        size_t at = 1 + fnv1a(data, size) % allocs;
        fuzz_alloc_reset(at);
        sbx_err rc3 = sbx_job_parse(buf, size, &job3, &why3, err, sizeof err);
        FUZZ_CHECK(fuzz_alloc_failed(), "allocation %zu of %zu never happened", at, allocs);
        FUZZ_CHECK(rc3 == SBX_ENOMEM && !job3 && why3 == SBX_REJECT_NONE,
                   "allocation %zu of %zu failed: rc %d, job %p, reject %s (%s)", at, allocs, rc3,
                   (void *)job3, sbx_reject_name(why3), err);
        check_err_line(err, sizeof err, true);
        fuzz_alloc_reset(0);
        sbx_job_free(job3);
    }

    sbx_job_free(job);
    ref_json_free(&doc);
    return 0;
}
