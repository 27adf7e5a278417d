/* dlq.c — see dlq.h. The envelope is built with json-c, as the schema's
 * fields in its order; null where the message gave nothing usable (no ids
 * in an unparsable payload, a key that is not UTF-8, a payload that is not a
 * JSON object, of which nothing is kept).
 *
 * A dead letter must always fit the dead-letter topic, or the offset it
 * finishes would wait forever (issue 10). So the redacted text is kept whole
 * only up to SBX_DLQ_PAYLOAD_MAX bytes; a longer one is cut to that many
 * bytes at a character boundary and kept as "payload_excerpt" (a string,
 * since a cut JSON text is no JSON value), with "payload" null and
 * "payload_truncated" true. "payload_sha256" is the SHA-256 of the whole
 * redacted text, never of the original: it lets an operator tell two dead
 * letters apart or match one against a producer's copy after redacting it
 * the same way, and a hash of text whose secrets are already replaced by
 * "<redacted>" tells a reader nothing the text itself would not (sbx_redact.h
 * and schemas/README.md say why a hash of the original is not kept). */
#include "dlq.h"

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "sbx_redact.h"
#include "sbx_sha256.h"
#include "text.h"
#include "worker.h"

/* Messages longer than this are not parsed for redaction (nothing of them
 * is kept, only their size): json-c spends tens of bytes per value, so a
 * 20 MB array of zeros would cost the worker gigabytes for a message that
 * will never run. Twice the largest job message, so one refused as
 * too_large by a small margin still shows what it was. */
#define DLQ_PARSE_MAX (2u * SBX_MSG_MAX_BYTES)

/* ---- the envelope ---- */

/* The length of the longest prefix of s (valid UTF-8, len bytes) of at most
 * max bytes that ends at a character boundary. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80)
        max--;
    return max;
}

/* The envelope of m as JSON text (malloc'd), or NULL when out of memory. */
static char *envelope(const sbx_kafka_msg *m, const char *worker_id, const char *reason,
                      const char *detail, int attempts, size_t keep_max)
{
    char jid[SBX_ID_MAX + 1], pid[SBX_ID_MAX + 1], ts[32], sha[65];
    json_object *o = json_object_new_object();
    char *kept = NULL, *out = NULL;
    size_t kept_len = 0;
    int truncated = m->len > DLQ_PARSE_MAX, whole;
    time_t now = time(NULL);
    struct tm tm;

    if (!o || (!truncated && sbx__redact_job(m->payload, m->len, &kept) == -ENOMEM))
        goto out;
    if (kept) {
        kept_len = strlen(kept);
        sbx__sha256_hex(kept, kept_len, sha);
    }
    whole = kept && kept_len <= keep_max;
    truncated = truncated || (kept && !whole);
    sbx_job_peek_ids(m->payload, m->len, jid, pid);
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_object_object_add(o, "v", json_object_new_int(1));
    json_object_object_add(o, "reason", json_object_new_string(reason));
    json_object_object_add(o, "detail", json_object_new_string(detail));
    json_object_object_add(o, "job_id", jid[0] ? json_object_new_string(jid) : NULL);
    json_object_object_add(o, "project_id", pid[0] ? json_object_new_string(pid) : NULL);
    json_object_object_add(o, "topic", json_object_new_string(m->topic));
    json_object_object_add(o, "partition", json_object_new_int(m->partition));
    json_object_object_add(o, "offset", json_object_new_int64(m->offset));
    json_object_object_add(o, "key", m->key && sbx__utf8_valid(m->key, m->key_len)
                                         ? json_object_new_string_len(m->key, (int)m->key_len)
                                         : NULL);
    json_object_object_add(o, "worker_id", json_object_new_string(worker_id));
    json_object_object_add(o, "attempts", json_object_new_int(attempts));
    json_object_object_add(o, "dead_lettered_at", json_object_new_string(ts));
    json_object_object_add(o, "payload", whole ? json_object_new_string(kept) : NULL);
    json_object_object_add(o, "payload_bytes", json_object_new_int64((int64_t)m->len));
    json_object_object_add(o, "payload_truncated", json_object_new_boolean(truncated));
    json_object_object_add(o, "payload_excerpt",
                           kept && !whole
                               ? json_object_new_string_len(
                                     kept, (int)utf8_cut(kept, kept_len, keep_max))
                               : NULL);
    json_object_object_add(o, "payload_sha256", kept ? json_object_new_string(sha) : NULL);
    out = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                       JSON_C_TO_STRING_NOSLASHESCAPE));
out:
    json_object_put(o);
    free(kept);
    return out;
}

void sbx__dead_letter(sbx_worker *w, const sbx_kafka_msg *m, const char *reason,
                      const char *detail, int attempts, int mark_done)
{
    char *json = envelope(m, w->cfg.worker_id, reason, detail, attempts,
                          (size_t)w->cfg.dlq_payload_max);

    sbx_warn("job", "p%d@%" PRId64 " dead-lettered: %s: %s", (int)m->partition, m->offset,
             reason, detail);
    w->stats.dead_lettered++;
    /* Once handed over, kafka.c retries the publish until the broker has it;
     * only running out of memory here leaves the offset for redelivery. */
    if (!json || sbx_kafka_dead_letter(w->kafka, m->key, m->key_len, json, strlen(json),
                                       mark_done ? &m->ref : NULL) != 0)
        sbx_error("job", "p%d@%" PRId64 " stays unfinished: dead letter not built (out of "
                         "memory)", (int)m->partition, m->offset);
    free(json);
}
