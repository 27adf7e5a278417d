/* log.h — one line per event, logfmt-ish: "ts level comp msg key=value ...",
 * or with SBX_LOG_FORMAT=json one JSON object per line:
 *   {"ts":"2026-12-04T17:26:24.123Z","level":"info","area":"job",
 *    "job":"j-1","project":"acme","token":7,"msg":"leased local-0 token=7"}
 * where the message's key=value words are fields as well (log.c says how).
 *
 * Secrets never go through here: callers log ids, states and sizes, never a
 * job's env values, service keys or connection passwords (sbx_log_redact()).
 */
#ifndef SBX_LOG_H
#define SBX_LOG_H

enum sbx_log_level { SBX_LOG_DEBUG, SBX_LOG_INFO, SBX_LOG_WARN, SBX_LOG_ERROR };
enum sbx_log_format { SBX_LOG_TEXT, SBX_LOG_JSON };

void sbx_log_set_level(enum sbx_log_level lvl);
int sbx_log_parse_level(const char *s, enum sbx_log_level *out);
void sbx_log_set_format(enum sbx_log_format f);
/* "text" or "json"; -1 for anything else. */
int sbx_log_parse_format(const char *s, enum sbx_log_format *out);
void sbx_log(enum sbx_log_level lvl, const char *comp, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A line about one job: its ids are fields of their own ("job", "project")
 * in JSON; as text the line reads "<job> <msg> project=<project>", so a
 * grep for the job id finds every line of the job either way. */
void sbx_log_job(enum sbx_log_level lvl, const char *comp, const char *job, const char *project,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define sbx_debug(comp, ...) sbx_log(SBX_LOG_DEBUG, comp, __VA_ARGS__)
#define sbx_info(comp, ...)  sbx_log(SBX_LOG_INFO, comp, __VA_ARGS__)
#define sbx_warn(comp, ...)  sbx_log(SBX_LOG_WARN, comp, __VA_ARGS__)
#define sbx_error(comp, ...) sbx_log(SBX_LOG_ERROR, comp, __VA_ARGS__)

/* Copies in into out (outlen bytes with the NUL, cut short to fit) with
 * every password replaced by "***": the userinfo of a URL (Redis,
 * PostgreSQL, ...), query parameters (?password=, &sslpassword=), libpq
 * conninfo keywords (password=..., quoted or not) and k=v lists
 * (sasl.password=...). The one redaction of the project: whatever prints a
 * setting or an error quoting one goes through here. log.c says how
 * ambiguous input is read (hide more, never less). */
void sbx_log_redact(const char *in, char *out, unsigned long outlen);

#endif
