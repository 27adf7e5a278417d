/* dlq.c — see dlq.h. The envelope is built with json-c, as the schema's
 * fields in its order; null where the message gave nothing usable (no ids
 * in an unparsable payload, a key that is not UTF-8, a payload that is not a
 * JSON object, of which nothing is kept). */
#include "dlq.h"

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "redact.h"
#include "text.h"
#include "worker.h"

/* The envelope of m as JSON text (malloc'd), or NULL when out of memory. */
static char *envelope(const sbx_kafka_msg *m, const char *worker_id, const char *reason,
                      const char *detail, int attempts)
{
    char jid[SBX_ID_MAX + 1], pid[SBX_ID_MAX + 1], ts[32];
    json_object *o = json_object_new_object();
    char *kept = NULL, *out = NULL;
    time_t now = time(NULL);
    struct tm tm;

    if (!o || sbx__redact_job(m->payload, m->len, &kept) == -ENOMEM)
        goto out;
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
    json_object_object_add(o, "payload", kept ? json_object_new_string(kept) : NULL);
    json_object_object_add(o, "payload_bytes", json_object_new_int64((int64_t)m->len));
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
    char *json = envelope(m, w->cfg.worker_id, reason, detail, attempts);

    sbx_warn("job", "p%d@%" PRId64 " dead-lettered: %s: %s", (int)m->partition, m->offset,
             reason, detail);
    w->stats.dead_lettered++;
    if (!json || sbx_kafka_dead_letter(w->kafka, m->key, m->key_len, json, strlen(json),
                                       mark_done ? &m->ref : NULL) != 0)
        sbx_error("job", "p%d@%" PRId64 " stays unfinished: dead-letter publish failed",
                  (int)m->partition, m->offset);
    free(json);
}
