/* opts.c — see opts.h. Every value it prints, in the settings printout or
 * in an error, goes through sbx_log_redact() (a value given in the wrong
 * place may well be a URL with a password). */
#include "opts.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* A value as printed: the longest setting (2 KiB) with room for the "***"
 * that may replace a one-byte password. */
#define SHOWN_MAX 4096

static int set(const char *prog, void *cfg, const sbx_opt *o, const char *v, const char *src,
               FILE *err)
{
    char *p = (char *)cfg + o->off;
    char *end;
    long n;

    if (o->kind == SBX_OPT_STR) {
        if (strlen(v) >= o->size) {
            fprintf(err, "%s: %s is too long (max %zu bytes); shorten it\n", prog, src,
                    o->size - 1);
            return 1;
        }
        memcpy(p, v, strlen(v) + 1);
        return 0;
    }
    errno = 0;
    n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < o->min || n > o->max) {
        char shown[SHOWN_MAX];
        sbx_log_redact(v, shown, sizeof(shown));
        fprintf(err, "%s: %s=%s is not valid: set it to %s from %ld to %ld\n", prog, src, shown,
                o->kind == SBX_OPT_BOOL ? "0 or 1," : "an integer", o->min, o->max);
        return 1;
    }
    *(int *)p = (int)n;
    return 0;
}

static void usage(const char *prog, const sbx_opt *opts, size_t n, FILE *out)
{
    fprintf(out, "usage: %s [--flag value]...\n"
                 "Every flag has an environment variable; the flag wins.\n\n", prog);
    for (size_t i = 0; i < n; i++) {
        const sbx_opt *o = &opts[i];
        char flag[48];
        int has_def = o->def && *o->def;
        snprintf(flag, sizeof(flag), "%s%s", o->flag ? "--" : "", o->flag ? o->flag : "");
        fprintf(out, "  %-28s %-30s %s%s%s%s\n", flag, o->env, o->help,
                has_def ? " (default " : "", has_def ? o->def : "",
                o->required ? " (required)" : has_def ? ")" : "");
    }
}

void sbx_opts_print(const sbx_opt *opts, size_t n, const void *cfg, FILE *out)
{
    for (size_t i = 0; i < n; i++) {
        const char *p = (const char *)cfg + opts[i].off;
        if (opts[i].kind != SBX_OPT_STR) {
            fprintf(out, "%s=%d\n", opts[i].env, *(const int *)p);
        } else if (opts[i].secret) {
            fprintf(out, "%s=***\n", opts[i].env);
        } else {
            char red[SHOWN_MAX];
            sbx_log_redact(p, red, sizeof(red));
            fprintf(out, "%s=%s\n", opts[i].env, red);
        }
    }
}

int sbx_opts_load(const char *prog, const sbx_opt *opts, size_t n, void *cfg, int argc,
                  char **argv, FILE *err)
{
    int bad = 0;

    for (size_t i = 0; i < n; i++) {
        const char *v = getenv(opts[i].env);
        if (opts[i].def)
            set(prog, cfg, &opts[i], opts[i].def, opts[i].env, err);
        if (v)
            bad |= set(prog, cfg, &opts[i], v, opts[i].env, err);
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a], *val = NULL;
        char name[64], src[96];
        size_t i;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(prog, opts, n, stdout);
            return 2;
        }
        if (strncmp(arg, "--", 2) != 0) {
            char shown[SHOWN_MAX];
            sbx_log_redact(arg, shown, sizeof(shown));
            fprintf(err, "%s: unexpected argument '%s'; see %s --help\n", prog, shown, prog);
            bad = 1;
            continue;
        }
        snprintf(name, sizeof(name), "%s", arg + 2);
        if (strchr(name, '=')) {
            *strchr(name, '=') = '\0';
            val = strchr(arg, '=') + 1;
        }
        for (i = 0; i < n; i++)
            if (opts[i].flag && strcmp(opts[i].flag, name) == 0)
                break;
        if (i == n) {
            fprintf(err, "%s: unknown flag --%s; see %s --help%s\n", prog, name, prog,
                    strstr(name, "key") ? " (keys are read from the environment only)" : "");
            bad = 1;
            continue;
        }
        if (!val) {
            if (a + 1 >= argc) {
                fprintf(err, "%s: --%s needs a value\n", prog, name);
                bad = 1;
                continue;
            }
            val = argv[++a];
        }
        snprintf(src, sizeof(src), "--%s", name);
        bad |= set(prog, cfg, &opts[i], val, src, err);
    }
    for (size_t i = 0; i < n; i++) {
        const char *p = (const char *)cfg + opts[i].off;
        if (opts[i].required && opts[i].kind == SBX_OPT_STR && !*p) {
            if (opts[i].flag)
                fprintf(err, "%s: %s is not set: %s (or pass --%s)\n", prog, opts[i].env,
                        opts[i].help, opts[i].flag);
            else
                fprintf(err, "%s: %s is not set: %s\n", prog, opts[i].env, opts[i].help);
            bad = 1;
        }
    }
    return bad ? 1 : 0;
}

int sbx_opts_log_level(const char *prog, const char *level, FILE *err)
{
    enum sbx_log_level lvl;

    if (sbx_log_parse_level(level, &lvl) != 0) {
        fprintf(err, "%s: SBX_LOG_LEVEL=%s is not valid: use debug, info, warn or error\n", prog,
                level);
        return 1;
    }
    sbx_log_set_level(lvl);
    return 0;
}

int sbx_opts_log_format(const char *prog, const char *fmt, FILE *err)
{
    enum sbx_log_format f;

    if (sbx_log_parse_format(fmt, &f) != 0) {
        char shown[SHOWN_MAX];
        sbx_log_redact(fmt, shown, sizeof(shown));
        fprintf(err, "%s: SBX_LOG_FORMAT=%s is not valid: use text (the default) or json (one "
                     "JSON object per line)\n", prog, shown);
        return 1;
    }
    sbx_log_set_format(f);
    return 0;
}
