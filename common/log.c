/* log.c — timestamped lines on stderr, one write(2) per line so lines of
 * concurrent processes sharing a file never interleave mid-line; as text
 * (default) or as one JSON object per line (SBX_LOG_FORMAT=json), for log
 * shippers that index fields. */
#include "log.h"
#include "assert.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* One log line as text; longer lines are cut and end in "...". The message
 * of a JSON line has the same cap; its line has room for the message
 * escaped and its fields again (LOG_JSON_MAX), and is cut (still valid
 * JSON, with "truncated":true) beyond. */
#define SBX_LOG_LINE_MAX 2048
#define LOG_JSON_MAX 8192
/* What a cut JSON line still needs: '"', ,"truncated":true, '}', '\n'. */
#define LOG_JSON_TAIL 24
/* key=value fields taken from one message at most (a line has a dozen). */
#define LOG_FIELDS_MAX 32
#define LOG_KEY_MAX 32

static enum sbx_log_level min_level = SBX_LOG_INFO;
static enum sbx_log_format format = SBX_LOG_TEXT;
static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const format_names[] = {"text", "json"};

void sbx_log_set_level(enum sbx_log_level lvl) { min_level = lvl; }

void sbx_log_set_format(enum sbx_log_format f) { format = f; }

int sbx_log_parse_level(const char *s, enum sbx_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum sbx_log_level)i;
            return 0;
        }
    }
    return -1;
}

int sbx_log_parse_format(const char *s, enum sbx_log_format *out)
{
    for (int i = 0; i < 2; i++) {
        if (strcasecmp(s, format_names[i]) == 0) {
            *out = (enum sbx_log_format)i;
            return 0;
        }
    }
    return -1;
}

/* ---- text ---- */

typedef struct tline {
    char b[SBX_LOG_LINE_MAX];
    size_t n;
    int cut;
} tline;

static void tput(tline *t, const char *s)
{
    size_t len = strlen(s);
    if (t->cut)
        return;
    /* Room for "...\n" at the end. */
    if (len > sizeof(t->b) - 4 - t->n) {
        len = sizeof(t->b) - 4 - t->n;
        t->cut = 1;
    }
    memcpy(t->b + t->n, s, len);
    t->n += len;
}

static void text_line(const char *ts, enum sbx_log_level lvl, const char *comp, const char *job,
                      const char *project, const char *msg, int msg_cut)
{
    tline t;
    char head[96];

    t.n = 0;
    t.cut = 0;
    snprintf(head, sizeof(head), "%s %-5s %-7s ", ts, level_names[lvl], comp);
    tput(&t, head);
    if (job) {
        tput(&t, job);
        tput(&t, " ");
    }
    tput(&t, msg);
    if (project && *project) {
        tput(&t, " project=");
        tput(&t, project);
    }
    if (t.cut || msg_cut) {
        memcpy(t.b + t.n, "...", 3);
        t.n += 3;
    }
    t.b[t.n++] = '\n';
    (void)!write(STDERR_FILENO, t.b, t.n);
}

/* ---- JSON ----
 *
 * {"ts":..,"level":..,"area":..,["job":..,"project":..,]<fields>,"msg":..}
 * The fields are the message's key=value words (key: [a-z_][a-z0-9_.]*;
 * value: up to the next space, or a "quoted" run), a value of digits alone
 * as a number; the message is kept whole as well. A key the line already has
 * (ts, level, area, msg, job and project of a job line, an earlier field) is
 * left in the message only. Bytes that are not UTF-8 become U+FFFD, so
 * every line parses. */

typedef struct jline {
    char b[LOG_JSON_MAX];
    size_t n;
    int cut;
} jline;

static void jraw(jline *j, const char *s, size_t len)
{
    if (j->cut || len > sizeof(j->b) - LOG_JSON_TAIL - j->n) {
        j->cut = 1;
        return;
    }
    memcpy(j->b + j->n, s, len);
    j->n += len;
}

/* Length of the UTF-8 sequence at s (at most n bytes), 0 if it is none. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 && s[0] < 0xe0 ? 2 : 0;
    if (len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    /* Overlong 3- and 4-byte forms, surrogates, beyond U+10FFFF. */
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) ||
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))
        return 0;
    return len;
}

/* A JSON string of s[0..len); cut short (and closed) where the line is full. */
static void jstr(jline *j, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;

    jraw(j, "\"", 1);
    if (j->cut)
        return;
    while (i < len) {
        char e[8];
        const char *piece = e;
        size_t plen = 1, adv = 1;
        if (u[i] == '"' || u[i] == '\\') {
            e[0] = '\\';
            e[1] = (char)u[i];
            plen = 2;
        } else if (u[i] < 0x20 || u[i] == 0x7f) {
            plen = (size_t)snprintf(e, sizeof(e), "\\u%04x", u[i]);
        } else if (u[i] < 0x80) {
            e[0] = (char)u[i];
        } else if ((adv = utf8_len(u + i, len - i)) > 0) {
            piece = s + i;
            plen = adv;
        } else {
            piece = "\\ufffd";
            plen = 6;
            adv = 1;
        }
        if (plen > sizeof(j->b) - LOG_JSON_TAIL - j->n) {
            j->cut = 1;
            break;
        }
        memcpy(j->b + j->n, piece, plen);
        j->n += plen;
        i += adv;
    }
    /* The closing quote is part of LOG_JSON_TAIL. */
    j->b[j->n++] = '"';
}

static void jfield(jline *j, const char *key, const char *v, size_t vlen)
{
    jraw(j, ",", 1);
    jstr(j, key, strlen(key));
    jraw(j, ":", 1);
    jstr(j, v, vlen);
}

static int is_number(const char *v, size_t n)
{
    size_t i = v[0] == '-';
    /* 15 digits: exact in a double, which is what most JSON readers use. */
    if (n == i || n - i > 15 || (v[i] == '0' && n - i > 1))
        return 0;
    for (; i < n; i++)
        if (v[i] < '0' || v[i] > '9')
            return 0;
    return 1;
}

static void json_fields(jline *j, const char *msg, int job_line)
{
    static const char *const reserved[] = {"ts", "level", "area", "msg", "job", "project"};
    char keys[LOG_FIELDS_MAX][LOG_KEY_MAX];
    int nkeys = 0;

    for (const char *p = msg; *p && nkeys < LOG_FIELDS_MAX;) {
        const char *k = p, *v, *e;
        size_t klen;
        int taken = 0;

        if (p != msg && p[-1] != ' ') {
            p++;
            continue;
        }
        while ((*p >= 'a' && *p <= 'z') || *p == '_' || (p > k && ((*p >= '0' && *p <= '9') || *p == '.')))
            p++;
        klen = (size_t)(p - k);
        if (klen == 0 || klen >= LOG_KEY_MAX || *p != '=') {
            p += *p ? 1 : 0;
            continue;
        }
        v = ++p;
        if (*v == '"' && strchr(v + 1, '"')) {
            e = strchr(v + 1, '"');
            p = e + 1;
            v++;
        } else {
            e = v + strcspn(v, " ");
            p = e;
        }
        for (size_t r = 0; r < sizeof(reserved) / sizeof(*reserved); r++)
            if (strlen(reserved[r]) == klen && memcmp(reserved[r], k, klen) == 0)
                taken = r < 4 || job_line;
        for (int i = 0; i < nkeys && !taken; i++)
            taken = strlen(keys[i]) == klen && memcmp(keys[i], k, klen) == 0;
        if (taken)
            continue;
        memcpy(keys[nkeys], k, klen);
        keys[nkeys][klen] = '\0';
        if (is_number(v, (size_t)(e - v))) {
            jraw(j, ",", 1);
            jstr(j, keys[nkeys], klen);
            jraw(j, ":", 1);
            jraw(j, v, (size_t)(e - v));
        } else {
            jfield(j, keys[nkeys], v, (size_t)(e - v));
        }
        nkeys++;
    }
}

static void json_line(const char *ts, enum sbx_log_level lvl, const char *comp, const char *job,
                      const char *project, const char *msg, int msg_cut)
{
    jline j;

    j.n = 0;
    j.cut = 0;
    jraw(&j, "{\"ts\":", 6);
    jstr(&j, ts, strlen(ts));
    jraw(&j, ",\"level\":", 9);
    jstr(&j, level_names[lvl], strlen(level_names[lvl]));
    jfield(&j, "area", comp, strlen(comp));
    if (job) {
        jfield(&j, "job", job, strlen(job));
        jfield(&j, "project", project ? project : "", project ? strlen(project) : 0);
    }
    json_fields(&j, msg, job != NULL);
    jfield(&j, "msg", msg, strlen(msg));
    if (j.cut || msg_cut) {
        memcpy(j.b + j.n, ",\"truncated\":true", 17);
        j.n += 17;
    }
    j.b[j.n++] = '}';
    j.b[j.n++] = '\n';
    (void)!write(STDERR_FILENO, j.b, j.n);
}

static void vlog(enum sbx_log_level lvl, const char *comp, const char *job, const char *project,
                 const char *fmt, va_list ap)
{
    char msg[SBX_LOG_LINE_MAX], ts[40];
    struct timespec now;
    struct tm tm;
    size_t n;
    int w;

    if (lvl < min_level)
        return;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", now.tv_nsec / 1000000L);
    w = vsnprintf(msg, sizeof(msg), fmt, ap);
    if (w < 0)
        msg[0] = '\0';
    if (format == SBX_LOG_JSON)
        json_line(ts, lvl, comp, job, project, msg, w >= (int)sizeof(msg));
    else
        text_line(ts, lvl, comp, job, project, msg, w >= (int)sizeof(msg));
}

void sbx_log(enum sbx_log_level lvl, const char *comp, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(lvl, comp, NULL, NULL, fmt, ap);
    va_end(ap);
}

void sbx_log_job(enum sbx_log_level lvl, const char *comp, const char *job, const char *project,
                 const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(lvl, comp, job, project, fmt, ap);
    va_end(ap);
}

/* ---- redaction ----
 *
 * Secrets are found on the whole input first (a byte mask), then the copy
 * is written: cutting the copy short first could cut off the '@' that shows
 * where a password ends. Where the syntax is ambiguous the span grows, so a
 * mistake hides too much, never too little:
 *   URL userinfo   scheme://[user]:PASSWORD@host   everything from the first
 *                  ':' to the LAST '@' of the input, as the Redis URL parser
 *                  reads it (raw '@', ':', '/' in a password stay hidden);
 *                  for redis:// and rediss:// a lone userinfo is hidden
 *                  whole, as it can only be a misplaced password.
 *   query          ?password=...&  &sslpassword=...  up to a '&' that starts
 *                  the next key=value (a '&' without '=' after it is taken
 *                  as part of the value), or the end.
 *   keyword        password=... / password = '...' (libpq conninfo: quotes
 *                  and backslash escapes), sasl.password=... (librdkafka):
 *                  up to unescaped whitespace.
 * A key is secret when it ends in "password", "passwd" or "secret", or is
 * "pass" or "pwd" (any case). tcp:// and unix:// (docker endpoints, whose
 * "host:port@capacity" is not userinfo) are skipped.
 */

/* Settings are at most 2048 bytes (SBX_DOCKER_HOSTS); URLs quoted in
 * errors are settings. Anything longer is not shown. */
#define REDACT_IN_MAX 8192

static int key_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-';
}

static int is_space(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static int ends_with(const char *k, size_t n, const char *suffix)
{
    size_t sl = strlen(suffix);
    return n >= sl && strncasecmp(k + n - sl, suffix, sl) == 0;
}

static int secret_key(const char *k, size_t n)
{
    return ends_with(k, n, "password") || ends_with(k, n, "passwd") || ends_with(k, n, "secret") ||
           (n == 4 && strncasecmp(k, "pass", 4) == 0) || (n == 3 && strncasecmp(k, "pwd", 3) == 0);
}

/* Whether in[i..n) starts with key=: the next parameter of a query. */
static int starts_param(const char *in, size_t i, size_t n)
{
    size_t k = i;
    while (k < n && key_char((unsigned char)in[k]))
        k++;
    return k > i && k < n && in[k] == '=';
}

static void mask_userinfo(const char *in, size_t n, unsigned char *mask)
{
    for (size_t i = 0; i + 3 <= n; i++) {
        size_t s = i, at = n, j = i + 3;
        const char *colon;
        int redis;

        if (memcmp(in + i, "://", 3) != 0)
            continue;
        while (s > 0 && (key_char((unsigned char)in[s - 1]) || in[s - 1] == '+'))
            s--;
        if ((i - s == 3 && strncasecmp(in + s, "tcp", 3) == 0) ||
            (i - s == 4 && strncasecmp(in + s, "unix", 4) == 0))
            continue;
        for (size_t k = j; k < n; k++)
            if (in[k] == '@')
                at = k;
        if (at == n)
            return;
        redis = (i - s == 5 && strncasecmp(in + s, "redis", 5) == 0) ||
                (i - s == 6 && strncasecmp(in + s, "rediss", 6) == 0);
        colon = memchr(in + j, ':', at - j);
        if (colon)
            memset(mask + (colon + 1 - in), 1, at - (size_t)(colon + 1 - in));
        else if (redis)
            memset(mask + j, 1, at - j);
        /* No '@' after the last one: no other userinfo to find. */
        return;
    }
}

static void mask_keywords(const char *in, size_t n, unsigned char *mask)
{
    size_t i = 0;

    while (i < n) {
        char before = i ? in[i - 1] : ' ';
        int query = before == '?' || before == '&';
        size_t k = i, v;

        if (!(query || before == ',' || before == ';' || is_space((unsigned char)before)) ||
            !key_char((unsigned char)in[i])) {
            i++;
            continue;
        }
        while (k < n && key_char((unsigned char)in[k]))
            k++;
        v = k;
        if (!query)
            while (v < n && is_space((unsigned char)in[v]))
                v++;
        if (v >= n || in[v] != '=' || !secret_key(in + i, k - i)) {
            i = k;
            continue;
        }
        v++;
        if (query) {
            size_t e = v;
            while (e < n && !(in[e] == '&' && starts_param(in, e + 1, n)))
                e++;
            memset(mask + v, 1, e - v);
            i = e;
            continue;
        }
        while (v < n && is_space((unsigned char)in[v]))
            v++;
        i = v;
        if (i < n && in[i] == '\'') {
            for (i++; i < n && in[i] != '\''; i++)
                if (in[i] == '\\' && i + 1 < n)
                    i++;
            i += i < n;
        } else {
            for (; i < n && !is_space((unsigned char)in[i]); i++)
                if (in[i] == '\\' && i + 1 < n)
                    i++;
        }
        memset(mask + v, 1, i - v);
    }
}

void sbx_log_redact(const char *in, char *out, unsigned long outlen)
{
    unsigned char mask[REDACT_IN_MAX];
    size_t n = strlen(in), o = 0;

    if (outlen == 0)
        return;
    if (n > sizeof(mask)) {
        snprintf(out, outlen, "(%zu bytes, not shown: too long to hide passwords in)", n);
        return;
    }
    memset(mask, 0, n);
    mask_userinfo(in, n, mask);
    mask_keywords(in, n, mask);
    for (size_t i = 0; i < n && o + 1 < outlen;) {
        if (!mask[i]) {
            out[o++] = in[i++];
            continue;
        }
        for (const char *m = "***"; *m && o + 1 < outlen; m++)
            out[o++] = *m;
        while (i < n && mask[i])
            i++;
    }
    out[o] = '\0';
}

void sbx__assert_failed(const char *file, int line, const char *cond)
{
    sbx_log(SBX_LOG_ERROR, "assert", "invariant broken at %s:%d: %s", file, line, cond);
#ifndef NDEBUG
    abort();
#endif
}
