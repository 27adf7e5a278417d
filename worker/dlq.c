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
 * and schemas/README.md say why a hash of the original is not kept).
 *
 * Each dead letter is then a small state machine of its own (sbx__dl):
 * RECORDING (sbx.record_dead_letter: the row, or the news that it exists)
 * -> PUBLISHING (kafka.c, retried until the broker has it) -> MARKING
 * (sbx.dead_letter_published) -> the offset done, or the job told. A row
 * that says "published" skips the middle. The steps are ordered so that a
 * crash anywhere leaves the offset unfinished and the next owner repeats
 * only what is missing; the row is the dedupe key a topic replay meets. The
 * row goes to PostgreSQL as the envelope itself (jsonb) minus its key, with
 * the key and the original as bytea, so the two never disagree. */
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

/* "\x" and the bytes in hex: a bytea literal in text form, which is how
 * db.c sends every parameter. NULL when out of memory. */
static char *bytea_hex(const char *b, size_t len)
{
    static const char digits[] = "0123456789abcdef";
    char *out = malloc(2 * len + 3), *p = out;
    if (!out)
        return NULL;
    *p++ = '\\';
    *p++ = 'x';
    for (size_t i = 0; i < len; i++) {
        *p++ = digits[(unsigned char)b[i] >> 4];
        *p++ = digits[(unsigned char)b[i] & 15];
    }
    *p = '\0';
    return out;
}

/* m's envelope as JSON text in *env, and the same without "key" in *row
 * (the row keeps the key's bytes apart: a key may hold a NUL, which jsonb
 * refuses). Both malloc'd; -ENOMEM leaves both NULL. */
static int envelope(const sbx_kafka_msg *m, const char *worker_id, const char *reason,
                    const char *detail, int attempts, size_t keep_max, char **env, char **row)
{
    char jid[SBX_ID_MAX + 1], pid[SBX_ID_MAX + 1], ts[32], sha[65];
    /* The detail may quote the message, cut anywhere by its buffer: as
     * valid UTF-8 it can go into jsonb (the row) and any reader's parser. */
    char clean[1024];
    json_object *o = json_object_new_object();
    char *kept = NULL;
    size_t kept_len = 0;
    int truncated = m->len > DLQ_PARSE_MAX, whole, rc = -ENOMEM;
    time_t now = time(NULL);
    struct tm tm;

    *env = *row = NULL;
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
    sbx__utf8_sanitize(detail, strlen(detail), clean, sizeof(clean));
    json_object_object_add(o, "detail", json_object_new_string(clean));
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
    if (!(*env = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                             JSON_C_TO_STRING_NOSLASHESCAPE))))
        goto out;
    json_object_object_del(o, "key");
    if (!(*row = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                             JSON_C_TO_STRING_NOSLASHESCAPE))))
        goto out;
    rc = 0;
out:
    if (rc) {
        free(*env);
        *env = NULL;
    }
    json_object_put(o);
    free(kept);
    return rc;
}

/* ---- one dead letter: record, publish, mark ---- */

/* Retries of a statement PostgreSQL refused (not a lost connection: db.c
 * sends those again itself): 0.5 s doubling to 30 s, like the publish's. */
#define DL_RETRY_BASE_MS 500
#define DL_RETRY_MAX_MS 30000

typedef enum dl_state {
    DL_RECORDING,   /* sbx.record_dead_letter() in flight, or waiting to retry */
    DL_PUBLISHING,  /* the envelope is kafka.c's until the broker has it */
    DL_MARKING,     /* sbx.dead_letter_published() in flight, or waiting to retry */
} dl_state;

struct sbx__dl {
    sbx_worker *w;
    dl_state st;
    char *env, *row;            /* the envelope; it without "key", for the row */
    char *key_hex, *orig_hex;   /* bytea literals, or NULL */
    char *key;                  /* the key to publish with (copy), or NULL */
    size_t key_len;
    sbx_offset_ref ref;
    int has_ref;                /* intake: finish this offset at the end */
    sbx__dead_letter_cb cb;     /* the job's: call at the end instead */
    void *cb_arg;
    char id[24];                /* the row's id, as text */
    char where[48];             /* "p3@1234", for the log */
    int backoff;
    sbx_timer retry;
    sbx__dl *prev, *next;       /* w->dls */
};

static void dl_free(sbx__dl *d)
{
    sbx_worker *w = d->w;
    sbx_timer_stop(w->loop, &d->retry);
    if (d->prev)
        d->prev->next = d->next;
    else
        w->dls = d->next;
    if (d->next)
        d->next->prev = d->prev;
    free(d->env);
    free(d->row);
    free(d->key_hex);
    free(d->orig_hex);
    free(d->key);
    free(d);
}

/* Recorded and published: the offset (or the job) may go on. */
static void dl_complete(sbx__dl *d)
{
    if (d->cb)
        d->cb(d->cb_arg, 1);
    else if (d->has_ref)
        sbx_kafka_done(d->w->kafka, &d->ref);
    dl_free(d);
}

static void dl_retry(sbx__dl *d, const char *what, const char *err)
{
    uint64_t delay = DL_RETRY_MAX_MS;
    if (d->backoff < 16 && ((uint64_t)DL_RETRY_BASE_MS << d->backoff) < delay)
        delay = (uint64_t)DL_RETRY_BASE_MS << d->backoff;
    d->backoff++;
    delay = delay / 2 + (uint64_t)rand() % (delay / 2 + 1);
    sbx_error("dlq", "dead letter of %s: %s failed (%d times): %.*s; retrying in %llu ms, its "
                     "offset stays unfinished", d->where, what, d->backoff,
              err ? (int)strcspn(err, "\n") : 7, err ? err : "no row", (unsigned long long)delay);
    sbx_timer_start(d->w->loop, &d->retry, delay);
}

static void dl_step(sbx__dl *d);

static void on_published(void *arg, int ok)
{
    sbx__dl *d = arg;
    if (!ok) {
        /* The partition was revoked: its next owner dead-letters the message
         * and finds this row. */
        if (d->cb)
            d->cb(d->cb_arg, 0);
        dl_free(d);
        return;
    }
    d->w->stats.dead_lettered++;
    d->st = DL_MARKING;
    d->backoff = 0;
    dl_step(d);
}

static void on_marked(void *arg, PGresult *res, const char *err)
{
    sbx__dl *d = arg;
    if (!res) {
        dl_retry(d, "sbx.dead_letter_published", err);
        return;
    }
    dl_complete(d);
}

static void on_recorded(void *arg, PGresult *res, const char *err)
{
    sbx__dl *d = arg;
    if (!res || PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        dl_retry(d, "sbx.record_dead_letter (run `sbx migrate`?)", err);
        return;
    }
    snprintf(d->id, sizeof(d->id), "%s", PQgetvalue(res, 0, 0));
    d->backoff = 0;
    if (strcmp(PQgetvalue(res, 0, 1), "t") == 0) {
        sbx_info("dlq", "dead letter of %s already recorded and published (row %s); not "
                        "published again", d->where, d->id);
        dl_complete(d);
        return;
    }
    sbx_debug("dlq", "dead letter of %s recorded as row %s (%s)", d->where, d->id,
              strcmp(PQgetvalue(res, 0, 2), "t") == 0 ? "new" : "not yet published");
    d->st = DL_PUBLISHING;
    /* Once handed over, kafka.c retries the publish until the broker has
     * it; only running out of memory fails here. */
    if (sbx_kafka_dead_letter_cb(d->w->kafka, d->key, d->key_len, d->env, strlen(d->env),
                                 d->has_ref ? &d->ref : NULL, on_published, d) != 0) {
        d->st = DL_RECORDING;
        dl_retry(d, "the publish", "out of memory");
    }
}

static void dl_step(sbx__dl *d)
{
    const char *p[3] = {d->row, d->key_hex, d->orig_hex};
    int rc;

    if (d->st == DL_RECORDING)
        rc = sbx_db_query(d->w->db, "SELECT id, published, fresh FROM "
                                    "sbx.record_dead_letter($1::jsonb, $2::bytea, $3::bytea)",
                          3, p, on_recorded, d);
    else if (d->st == DL_MARKING)
        rc = sbx_db_query(d->w->db, "SELECT sbx.dead_letter_published($1::bigint)", 1,
                          (const char *[]){d->id}, on_marked, d);
    else
        rc = 0;
    if (rc)
        dl_retry(d, "queueing the statement", "database queue full");
}

static void on_dl_retry(sbx_timer *t) { dl_step(t->data); }

static int dead_letter(sbx_worker *w, const sbx_kafka_msg *m, const char *reason,
                       const char *detail, int attempts, int mark_done, sbx__dead_letter_cb cb,
                       void *arg)
{
    sbx__dl *d = calloc(1, sizeof(*d));

    sbx_warn("job", "p%d@%" PRId64 " dead-lettered: %s: %s", (int)m->partition, m->offset,
             reason, detail);
    if (!d || envelope(m, w->cfg.worker_id, reason, detail, attempts,
                       (size_t)w->cfg.dlq_payload_max, &d->env, &d->row) != 0)
        goto nomem;
    /* The original is kept (for `sbx dlq replay`) as far as the envelope
     * keeps text: a longer one only as its excerpt, redacted. */
    if (m->key && !(d->key_hex = bytea_hex(m->key, m->key_len)))
        goto nomem;
    if (m->len <= (size_t)w->cfg.dlq_payload_max && !(d->orig_hex = bytea_hex(m->payload, m->len)))
        goto nomem;
    if (m->key) {
        if (!(d->key = malloc(m->key_len ? m->key_len : 1)))
            goto nomem;
        memcpy(d->key, m->key, m->key_len);
        d->key_len = m->key_len;
    }
    d->w = w;
    d->ref = m->ref;
    d->has_ref = mark_done;
    d->cb = cb;
    d->cb_arg = arg;
    snprintf(d->where, sizeof(d->where), "p%d@%" PRId64, (int)m->partition, m->offset);
    sbx_timer_init(&d->retry, on_dl_retry, d);
    d->next = w->dls;
    if (w->dls)
        w->dls->prev = d;
    w->dls = d;
    d->st = DL_RECORDING;
    dl_step(d);
    return 0;
nomem:
    if (d) {
        free(d->env);
        free(d->row);
        free(d->key_hex);
        free(d->orig_hex);
        free(d->key);
        free(d);
    }
    sbx_error("job", "p%d@%" PRId64 " stays unfinished: dead letter not built (out of memory)",
              (int)m->partition, m->offset);
    return -ENOMEM;
}

void sbx__dead_letter(sbx_worker *w, const sbx_kafka_msg *m, const char *reason,
                      const char *detail, int attempts, int mark_done)
{
    dead_letter(w, m, reason, detail, attempts, mark_done, NULL, NULL);
}

int sbx__dead_letter_job(sbx_worker *w, const sbx_kafka_msg *m, const char *reason,
                         const char *detail, int attempts, sbx__dead_letter_cb cb, void *arg)
{
    return dead_letter(w, m, reason, detail, attempts, 0, cb, arg);
}

void sbx__dead_letters_free(sbx_worker *w)
{
    while (w->dls)
        dl_free(w->dls);
}

size_t sbx__dead_letters_pending(const sbx_worker *w)
{
    size_t n = 0;
    for (const sbx__dl *d = w->dls; d; d = d->next)
        n++;
    return n;
}
