/* dlq.h — the dead-letter envelope: what a message that will never run
 * becomes on the dead-letter topic (schemas/dlq.v1.schema.json).
 *
 * Two kinds of message end there: one refused at intake (not UTF-8, not
 * JSON, against the schema: `reason` is the sbx_reject name) and one whose
 * provider failed on every attempt ("retries_exhausted"). The envelope
 * says where the message came from and why, and carries it with its env
 * values redacted (redact.h) when it is a JSON object, else only its size:
 * the dead-letter topic is read by operators and their tools, and a secret
 * must not rest there in clear. An operator inspects it, and replays the
 * job from its producer (which has the secrets), not from the envelope.
 */
#ifndef SBX_DLQ_H
#define SBX_DLQ_H

#include "kafka.h"

typedef struct sbx_worker sbx_worker;

/* Publishes m's envelope. With mark_done the message's offset is done once
 * the broker has it; else the caller finishes it (a run that also ends with
 * a terminal row). A publish that fails leaves the offset unfinished, so the
 * message is redelivered and dead-lettered again rather than lost. */
void sbx__dead_letter(sbx_worker *w, const sbx_kafka_msg *m, const char *reason,
                      const char *detail, int attempts, int mark_done);

#endif
