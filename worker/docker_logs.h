/* docker_logs.h — the docker provider's reader of a container's log, read
 * more than once without delivering a byte twice.
 *
 * The provider reads the log every half second while the build runs and
 * once more after the exit (provider_docker.c says why). Every read asks for
 * timestamps=1, so the engine sends Docker's multiplexed frames (8-byte
 * header {stream, 0, 0, 0, big-endian u32 size}, then the payload), one
 * message per frame, each payload "<RFC 3339 timestamp> <text>". This
 * reader keeps, per stream, a cursor of what it delivered: the timestamp
 * of the last message, how many whole messages of that timestamp, and how
 * many bytes of the next one (a read dropped mid-message). A later read,
 * from a second before that (`since` is whole seconds),
 * skips exactly that, so each byte of the text reaches deliver once, in
 * order per stream. Timestamps are monotonic per stream on dockerd and
 * Podman, not across streams (two copiers stamp them), hence a cursor per
 * stream; Podman stamps whole seconds, which the count covers.
 *
 * Frames and timestamps arrive split at any byte: the reader keeps its
 * place across feeds. Not framed (a TTY stream) or not stamped (an engine
 * that ignored timestamps=1): the bytes are delivered as they come, and
 * nothing can be de-duplicated.
 *
 * An exec's output (a session's run, POST /exec/{id}/start) is the same
 * frames without timestamps, read once as it streams: after
 * sbx__docker_logs_plain() each frame's payload is delivered as it comes.
 */
#ifndef SBX_DOCKER_LOGS_H
#define SBX_DOCKER_LOGS_H

#include <stddef.h>
#include <stdint.h>

#include "provider.h"

/* The engine's timestamp before each message, RFC 3339 with nanoseconds
 * and an offset: 35 bytes; a little more for safety. */
#define SBX_DOCKER_LOG_TS_MAX 48

typedef void (*sbx_docker_deliver_fn)(void *arg, sbx_stream stream, const char *p, size_t n);

typedef struct sbx_docker_logs {
    sbx_docker_deliver_fn deliver;
    void *arg;
    /* Per stream (SBX_STREAM_*): delivered is every message before ts_ns,
     * the first n at ts_ns, and `partial` bytes of the one after them. */
    struct {
        int64_t ts_ns;           /* 0: nothing delivered on this stream */
        unsigned n;
        size_t partial;
    } cur[3];
    /* The read in progress. */
    unsigned char hdr[8];
    size_t hdr_have;
    uint32_t frame_left;         /* payload bytes of the current frame still to come */
    int stream;                  /* SBX_STREAM_* of the current frame */
    char ts[SBX_DOCKER_LOG_TS_MAX + 1];
    size_t ts_have;
    int in_ts;                   /* still reading the timestamp */
    int deliver_mode;            /* 0 skip, 1 deliver and count, 2 deliver uncounted */
    size_t skip;                 /* bytes of this message delivered before */
    int64_t seen_ts[3];          /* per stream: the last timestamp of this read ... */
    unsigned seen_n[3];          /* ... and messages with it so far */
    int raw;                     /* the stream was not framed */
    int plain;                   /* frames carry no timestamps (an exec's stream) */
    int64_t read_max_ts;         /* the latest stamp this read saw */
    int64_t done_ts;             /* ... of the last read that went to its end */
} sbx_docker_logs;

void sbx__docker_logs_init(sbx_docker_logs *l, sbx_docker_deliver_fn deliver, void *arg);
/* The stream to come is an exec's: frames without timestamps. */
void sbx__docker_logs_plain(sbx_docker_logs *l);
/* A new read begins (the cursors stay). */
void sbx__docker_logs_read(sbx_docker_logs *l);
/* The read went to the end of the log: what is not delivered is after it. */
void sbx__docker_logs_read_done(sbx_docker_logs *l);
void sbx__docker_logs_feed(sbx_docker_logs *l, const char *p, size_t n);
/* The `since` (unix seconds) for the next read: a second before the
 * latest stamp of the last read that went to its end (what is not
 * delivered comes after that in the log), or before that, a second before
 * the earliest place a stream got to; 0: from the beginning. */
int64_t sbx__docker_logs_since_s(const sbx_docker_logs *l);
/* "2026-12-04T20:31:05.123456789Z" (or "+01:00", or no fraction) in ns
 * since the epoch; -1 if it is not one. */
int64_t sbx__docker_log_ts(const char *s);

#endif
