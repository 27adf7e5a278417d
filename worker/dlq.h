/* dlq.h — dead letters: what a message that will never run becomes, on the
 * dead-letter topic (schemas/dlq.v1.schema.json) and as a row of
 * sbx.dead_letters (migrations/0004_dead_letters.sql).
 *
 * Two kinds of message end there: one refused at intake (not UTF-8, not
 * JSON, against the schema: `reason` is the sbx_reject name) and one whose
 * provider failed on every attempt ("retries_exhausted"). The envelope
 * says where the message came from and why, and carries it with its env
 * values redacted (sbx_redact.h) when it is a JSON object, else only its size:
 * the dead-letter topic is read by operators and their tools, and a secret
 * must not rest there in clear.
 *
 * An envelope always fits the topic: at most SBX_DLQ_PAYLOAD_MAX bytes of
 * the redacted text are kept, the rest is cut and said to be (dlq.c). A
 * poison pill of any size therefore ends as one small dead letter instead
 * of an offset that can never finish.
 *
 * Dead letters as data: each is recorded once per (topic, partition,
 * offset). The row is written first (sbx.record_dead_letter, which says
 * whether the envelope was published already), the envelope published only
 * if not, then the row marked published; only then is the offset finished
 * (or the job told). So a replay of the job topic, or a redelivery after a
 * crash between the steps, publishes nothing twice, and while PostgreSQL is
 * down the offset simply stays unfinished: nothing is lost. A statement
 * PostgreSQL refuses is retried with backoff (0.5 s doubling to 30 s).
 * The row also keeps the original bytes (when at most SBX_DLQ_PAYLOAD_MAX)
 * in a table only sbx_writer reads, so `sbx dlq replay` can send the job
 * again after the operator fixed its cause.
 */
#ifndef SBX_DLQ_H
#define SBX_DLQ_H

#include <stddef.h>

#include "kafka.h"

typedef struct sbx_worker sbx_worker;
typedef struct sbx__dl sbx__dl;

/* Dead-letters m (intake). With mark_done its offset is done once the
 * dead letter is recorded and published; else the offset is the caller's.
 * A worker that exits first leaves the offset for redelivery. */
void sbx__dead_letter(sbx_worker *w, const sbx_kafka_msg *m, const char *reason,
                      const char *detail, int attempts, int mark_done);

/* Dead-letters a job's message (m->ref is not finished here): cb(arg, 1)
 * once it is recorded and published, from the loop. cb is never called
 * when this returns non-zero (-ENOMEM), nor after sbx__dead_letters_free(). */
typedef void (*sbx__dead_letter_cb)(void *arg, int ok);
int sbx__dead_letter_job(sbx_worker *w, const sbx_kafka_msg *m, const char *reason,
                         const char *detail, int attempts, sbx__dead_letter_cb cb, void *arg);

/* Exit: frees the dead letters still under way, calling nothing (their
 * offsets stay unfinished and are redelivered). After sbx_kafka_close and
 * sbx_db_free, which drop the callbacks that point at them. */
void sbx__dead_letters_free(sbx_worker *w);
/* How many are under way (a gauge in /metrics). */
size_t sbx__dead_letters_pending(const sbx_worker *w);

#endif
