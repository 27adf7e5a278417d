/* log.h — one line per event, logfmt-ish: "ts level comp msg key=value ...".
 *
 * Secrets never go through here: callers log ids, states and sizes, never a
 * job's env values, service keys or connection passwords (sbx_log_redact()).
 */
#ifndef SBX_LOG_H
#define SBX_LOG_H

enum sbx_log_level { SBX_LOG_DEBUG, SBX_LOG_INFO, SBX_LOG_WARN, SBX_LOG_ERROR };

void sbx_log_set_level(enum sbx_log_level lvl);
int sbx_log_parse_level(const char *s, enum sbx_log_level *out);
void sbx_log(enum sbx_log_level lvl, const char *comp, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

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
