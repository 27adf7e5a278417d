/* dlq.h — the dead-letter envelope: what a message that will never run
 * becomes on the dead-letter topic (schemas/dlq.v1.schema.json).
 *
 * Two kinds of message end there: one refused at intake (not UTF-8, not
 * JSON, against the schema: `reason` is the sbx_reject name) and one whose
 * provider failed on every attempt ("retries_exhausted"). The envelope
 * says where the message came from and why, and carries it with its env
 * values redacted (sbx_redact.h) when it is a JSON object, else only its size:
 * the dead-letter topic is read by operators and their tools, and a secret
 * must not rest there in clear. An operator inspects it, and replays the
 * job from its producer (which has the secrets), not from the envelope.
 *
 * An envelope always fits the topic: at most SBX_DLQ_PAYLOAD_MAX bytes of
 * the redacted text are kept, the rest is cut and said to be (dlq.c). A
 * poison pill of any size therefore ends as one small dead letter instead
 * of an offset that can never finish.
 */
#ifndef SBX_DLQ_H
#define SBX_DLQ_H

#include "kafka.h"

typedef struct sbx_worker sbx_worker;

/* Publishes m's envelope. With mark_done the message's offset is done once
 * the broker has it; else the caller finishes it (a run that also ends with
 * a terminal row). A publish that fails is retried by kafka.c until the
 * broker takes it, the offset unfinished meanwhile (a stall /readyz and
 * /metrics show); a worker that exits first leaves it for redelivery. */
void sbx__dead_letter(sbx_worker *w, const sbx_kafka_msg *m, const char *reason,
                      const char *detail, int attempts, int mark_done);

#endif
