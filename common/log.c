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

void sbx_log_redact(const char *in, char *out, unsigned long outlen)
{
    const char *p;
    size_t n;

    snprintf(out, outlen, "%s", in);
    /* URL form: scheme://user:password@host */
    p = strstr(in, "://");
    if (p) {
        const char *at = strchr(p + 3, '@');
        const char *colon = strchr(p + 3, ':');
        if (at && colon && colon < at) {
            n = (size_t)(colon + 1 - in);
            snprintf(out, outlen, "%.*s***%s", (int)n, in, at);
        }
        return;
    }
    /* keyword form: ... password=secret ... */
    p = strstr(in, "password=");
    if (p) {
        const char *end = strchr(p, ' ');
        n = (size_t)(p + 9 - in);
        snprintf(out, outlen, "%.*s***%s", (int)n, in, end ? end : "");
    }
}

void sbx__assert_failed(const char *file, int line, const char *cond)
{
    sbx_log(SBX_LOG_ERROR, "assert", "invariant broken at %s:%d: %s", file, line, cond);
#ifndef NDEBUG
    abort();
#endif
}
