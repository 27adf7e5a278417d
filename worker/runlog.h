/* runlog.h — a build's live output, cleaned, cut into chunks and stored in
 * sbx.run_logs (migrations/0006_run_logs.sql) while the build runs.
 *
 * One runlog per attempt: job.c creates it before the provider's start(),
 * hands sbx__runlog_output() to the provider as the run's output sink
 * (provider.h), and ends it when the provider reports FINISHED, before it
 * queues the terminal write. Everything the runlog writes goes through the
 * worker's one PostgreSQL connection (db.c), whose statements run in the
 * order they were queued: so every chunk is durable before the terminal
 * status is, and a reader that sees `succeeded` finds the whole log.
 *
 * The cleaning rule, the same for every provider (the sink is the only
 * place output is cleaned), per stream, across any split of the input:
 *  - UTF-8 is decoded strictly (no overlongs, surrogates, or past
 *    U+10FFFF); each maximal invalid subpart becomes one U+FFFD (Unicode's
 *    "best practice", what Python's errors="replace" and WHATWG's decoder
 *    do); a character split between two writes is joined, never cut;
 *  - CR LF becomes LF, and a CR alone becomes LF too (a progress bar's
 *    redraws become lines, as a terminal would have shown them one after
 *    the other, instead of one line full of U+FFFD);
 *  - every other control character, C0 (NUL and ESC included), DEL and C1
 *    (U+0080..U+009F), becomes U+FFFD: colour codes show as U+FFFD[31m,
 *    readable, and nothing moves a viewer's cursor. \n and \t stay.
 * The stored text is what log.v1.schema.json allows.
 *
 * Chunks: one stream each, at most RUNLOG_CHUNK_MAX bytes of text, cut after
 * a newline when there is one (else at a character boundary). A batch of
 * chunks is one sbx.append_logs() call (one NOTIFY sbx_logs):
 *  - at once when complete lines wait and no append of this run is in
 *    flight (so a quiet build's line reaches a reader in one round trip);
 *  - at the latest 250 ms (RUNLOG_FLUSH_MS) after the first byte waiting,
 *    partial line included;
 *  - at once when RUNLOG_BATCH_MAX bytes wait.
 * A batch that cannot be queued (the database queue is full) waits for the
 * next tick; one that failed is logged and not retried (statements are
 * replayed by db.c after a lost connection; a failure is a bug).
 *
 * Cap: at most max_bytes of text per attempt (SBX_LOG_MAX_BYTES). The rest
 * is counted, not kept, and the attempt's last chunk, on stream 'sbx', says
 * how many bytes of output were dropped.
 *
 * Memory: text not yet handed to db.c is at most RUNLOG_BATCH_MAX plus one
 * chunk; text handed over lives in db.c's queue until PostgreSQL answers. So
 * one attempt holds at most max_bytes (10 MiB by default) + 80 KiB, and only
 * while PostgreSQL is away or slower than the build: the cap bounds it.
 */
#ifndef SBX_RUNLOG_H
#define SBX_RUNLOG_H

#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "loop.h"
#include "provider.h"

/* Text per chunk: a screenful of lines, small next to a NOTIFY's reader. */
#define RUNLOG_CHUNK_MAX 16384
/* Text waiting before a batch goes at once. */
#define RUNLOG_BATCH_MAX 65536
#define RUNLOG_FLUSH_MS 250
/* SBX_LOG_MAX_BYTES's default. */
#define RUNLOG_MAX_BYTES_DEFAULT (10 * 1024 * 1024)

typedef struct sbx_runlog sbx_runlog;

/* One batch of chunks, for the sender: arrays of n. */
typedef struct sbx_runlog_batch {
    int n;
    const int *seq;
    const char *const *stream;    /* "stdout", "stderr", "sbx" */
    const char *const *data;      /* NUL-terminated clean text */
    const size_t *len;
    const size_t *bytes;          /* raw bytes behind each chunk */
} sbx_runlog_batch;

/* Where batches go. The default (send NULL) is sbx.append_logs() on db.
 * A sender returns 0 and calls sbx__runlog_sent() once, later, from the
 * loop; or a negative errno (nothing queued: the batch is offered again). */
typedef int (*sbx_runlog_send_fn)(void *arg, sbx_runlog *l, const sbx_runlog_batch *b);

typedef struct sbx_runlog_cfg {
    sbx_loop *loop;
    sbx_db *db;
    const char *job_id;
    int64_t token;
    int attempt;
    size_t max_bytes;
    sbx_runlog_send_fn send;      /* tests; NULL: the database */
    void *send_arg;
    sbx_runlog **registry;        /* every live runlog is on this list (may be NULL) */
} sbx_runlog_cfg;

/* NULL when out of memory (the build then runs without a live log). */
sbx_runlog *sbx__runlog_new(const sbx_runlog_cfg *cfg);
/* The provider's sink (sbx_output_fn): arg is the runlog. */
void sbx__runlog_output(void *arg, sbx_stream stream, const char *data, size_t len);
/* The build is over: what waits goes now (with the truncation marker), and
 * the runlog frees itself once its last batch is answered. l may be NULL. */
void sbx__runlog_end(sbx_runlog *l);
/* At exit, after the database connection is gone (its callbacks never
 * come): frees every runlog on the list, sending nothing. */
void sbx__runlog_free_all(sbx_runlog **registry);
/* A custom sender's answer for its batch. */
void sbx__runlog_sent(sbx_runlog *l);

/* For tests and the admin view. */
typedef struct sbx_runlog_stats {
    uint64_t raw_bytes;        /* all output handed in */
    uint64_t text_bytes;       /* text kept */
    uint64_t dropped_bytes;    /* raw bytes past the cap */
    int next_seq;
    int inflight;
} sbx_runlog_stats;
void sbx__runlog_stats(const sbx_runlog *l, sbx_runlog_stats *st);

#endif
