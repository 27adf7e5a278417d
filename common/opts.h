/* opts.h — a program's settings as one table: defaults, environment
 * variables, flags (the flag wins), --help, a printout with secrets and URL
 * passwords hidden, and range checks that print one line naming the
 * variable and the fix. sbx-worker (config.c) and sbx-agent
 * (agent/agent_config.c) each own a table; checks across fields stay theirs. */
#ifndef SBX_OPTS_H
#define SBX_OPTS_H

#include <stddef.h>
#include <stdio.h>

typedef enum sbx_opt_kind { SBX_OPT_STR, SBX_OPT_INT, SBX_OPT_BOOL } sbx_opt_kind;

typedef struct sbx_opt {
    const char *env;    /* SBX_... */
    const char *flag;   /* "kebab-case"; NULL: environment only (secrets) */
    const char *def;    /* NULL: no default */
    const char *help;
    sbx_opt_kind kind;
    size_t off, size;   /* STR: char buffer in the config struct; INT/BOOL: int */
    long min, max;      /* INT/BOOL */
    int required;
    int secret;         /* printed as *** */
} sbx_opt;

#define SBX_OPT_STR_FIELD(type, f) offsetof(type, f), sizeof(((type *)0)->f)
#define SBX_OPT_INT_FIELD(type, f) offsetof(type, f), sizeof(int)

/* Fills cfg (zeroed first) from defaults, the environment and argv.
 * Returns 0; 1 after printing one line per problem to err; 2 when --help
 * was asked (usage printed on stdout). */
int sbx_opts_load(const char *prog, const sbx_opt *opts, size_t n, void *cfg, int argc,
                  char **argv, FILE *err);
void sbx_opts_print(const sbx_opt *opts, size_t n, const void *cfg, FILE *out);
/* SBX_LOG_LEVEL's value: sets the log level and returns 0, or prints the
 * line naming the fix and returns 1. */
int sbx_opts_log_level(const char *prog, const char *level, FILE *err);
/* SBX_LOG_FORMAT's value (text or json), likewise. */
int sbx_opts_log_format(const char *prog, const char *fmt, FILE *err);

#endif
