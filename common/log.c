/* log.c — timestamped lines on stderr, one write(2) per line so lines of
 * concurrent processes sharing a file never interleave mid-line. */
#include "log.h"
#include "assert.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* One log line; longer lines are cut and end in "...". */
#define SBX_LOG_LINE_MAX 2048

static enum sbx_log_level min_level = SBX_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void sbx_log_set_level(enum sbx_log_level lvl) { min_level = lvl; }

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

void sbx_log(enum sbx_log_level lvl, const char *comp, const char *fmt, ...)
{
    char line[SBX_LOG_LINE_MAX];
    struct timespec ts;
    struct tm tm;
    size_t n;
    int w;
    va_list ap;

    if (lvl < min_level)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    w = snprintf(line + n, sizeof(line) - n, ".%03ldZ %-5s %-7s ", ts.tv_nsec / 1000000L,
                 level_names[lvl], comp);
    n += (size_t)(w > 0 ? w : 0);
    va_start(ap, fmt);
    w = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    if (w < 0)
        w = 0;
    if ((size_t)w >= sizeof(line) - n - 1) {
        n = sizeof(line) - 5;
        memcpy(line + n, "...", 3);
        n += 3;
    } else {
        n += (size_t)w;
    }
    line[n++] = '\n';
    (void)!write(STDERR_FILENO, line, n);
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
