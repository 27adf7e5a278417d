/* tokens.h — the newest fencing token each slot has seen, kept on disk.
 *
 * A worker whose lease was taken over still holds its old token; the agent
 * refuses /wake and cancel with a token older than the newest it has seen
 * for that slot (see DESIGN-NOTES "Fencing"). The promise must survive an
 * agent restart, or a restarted agent would obey the old owner again, so
 * every raise is written to a small file (write to a temporary, fsync,
 * rename, fsync the directory) before the agent acts on it.
 */
#ifndef SBX_AGENT_TOKENS_H
#define SBX_AGENT_TOKENS_H

#include <stddef.h>
#include <stdint.h>

typedef struct sbx_tokens sbx_tokens;

/* Loads path if it exists. A file that cannot be read back exactly is an
 * error (-EINVAL, with the line in err): silently starting from zero would
 * accept stale tokens. */
int sbx_tokens_open(const char *path, sbx_tokens **out, char *err, size_t errlen);
void sbx_tokens_free(sbx_tokens *t);

/* The newest token seen for slot, 0 if none. */
int64_t sbx_tokens_get(const sbx_tokens *t, const char *slot);
/* Records token for slot if it is newer, durably. Returns 0 (also when it
 * was not newer) or a negative errno; on error the old value stays. */
int sbx_tokens_raise(sbx_tokens *t, const char *slot, int64_t token);

#endif
