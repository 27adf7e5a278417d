/* sbx_redact.h — what of a job message may be written down. Internal
 * (sbx__ names), in libsbx because both sides store the same form: the
 * worker (sbx.runs.spec, the dead-letter envelope) and the producer, which
 * records a job as `submitted` before it publishes it (producers/lib/submit.c).
 * One copy of the rule, so the two never disagree on what a stored spec is.
 *
 * Env values are secrets (schemas/job.v1.schema.json: "sbx never logs
 * them"): the build gets them from the parsed job in memory, and nothing else
 * does. Every copy of a message the worker stores — the run row's spec
 * (sbx.runs, read by every UI backend) and the dead-letter envelope's payload
 * — is made here, from the parsed JSON and never from the original bytes:
 *  - "env": every value becomes SBX_REDACTED, the names stay (an operator
 *    still sees which variables a job set); an "env" that is not an object
 *    is replaced whole.
 *  - a top-level member the schema does not name: its value becomes
 *    SBX_REDACTED. Only a refused message can have one, and a misspelt
 *    "enviroment" or an invented "secrets" is where its secrets would be.
 *  - anything that is not a UTF-8 JSON object (strict RFC 8259 as json-c
 *    reads it, at most SBX_REDACT_DEPTH deep, nothing after it): nothing is
 *    kept, since no part of it can be told apart as not secret.
 * Re-serialised by json-c, which keeps the last of repeated member names, so
 * no earlier copy of a value survives either.
 */
#ifndef SBX_REDACT_H_INTERNAL
#define SBX_REDACT_H_INTERNAL

#include <stddef.h>

#define SBX_REDACTED "<redacted>"
/* json-c's default nesting limit; a valid job nests 2 deep. */
#define SBX_REDACT_DEPTH 32

/* Sets *out to the redacted message as JSON text (malloc'd) and returns 0;
 * -EINVAL when msg is not a JSON object (nothing may be kept); -ENOMEM. */
int sbx__redact_job(const char *msg, size_t len, char **out);

/* A job's fingerprint (sbx.runs.payload_sha256): the SHA-256, as 64 hex
 * digits, of its redacted text, never of the original bytes (a hash of a
 * message whose other members a reader sees lets them test guesses of a
 * short secret; schemas/README.md). The same value as the dead-letter
 * envelope's payload_sha256 of that message, so an operator can match the
 * two. Two messages that differ only in env values have the same one.
 * *redacted (if not NULL) receives the redacted text (malloc'd). Returns
 * what sbx__redact_job() does. */
int sbx__job_fingerprint(const char *msg, size_t len, char **redacted, char hex[65]);

#endif
