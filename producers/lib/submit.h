/* submit.h — libsbx's side of "visible from the moment it is sent": a job
 * recorded as `submitted` in sbx.runs before it is published. Private to
 * producers/lib (producer.c calls it); the public face is
 * sbx_producer_set_database() in sbx.h.
 */
#ifndef SBX_SUBMIT_H
#define SBX_SUBMIT_H

#include <stdbool.h>
#include <stddef.h>

#include "sbx.h"

typedef struct sbx__submitter sbx__submitter;

/* Connects to database_url (a libpq connection string or URL). */
sbx_err sbx__submitter_new(const char *database_url, sbx__submitter **out, char *err,
                           size_t errlen);
void sbx__submitter_free(sbx__submitter *s);

/* Records job (msg, len is its message, already parsed into job) as
 * submitted, with its spec redacted and its fingerprint, which sha receives.
 * *recorded: whether this call made the row (only then may a failed publish
 * take it back). SBX_EINVAL: the id holds another payload already (err says
 * whose status and fingerprint); SBX_EIO: the database failed. Either way
 * the caller must not publish. */
sbx_err sbx__submit(sbx__submitter *s, const sbx_job *job, const char *msg, size_t len,
                    char sha[65], bool *recorded, char *err, size_t errlen);

/* The publish of a job this handle recorded failed: deletes its row if it is
 * still `submitted` with this fingerprint. Best effort (a row left behind
 * stays `submitted`; migrations/0005_submitted.sql says what then). */
void sbx__submit_forget(sbx__submitter *s, const char *job_id, const char *sha);

#endif
