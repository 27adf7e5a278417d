/* buf.h — the two bounded buffers every provider and the agent use.
 *
 * sbx_buf is a growable byte buffer with a hard cap fixed at init (curl's
 * lib/curlx/dynbuf.c): an append that would pass the cap fails with -E2BIG
 * and leaves the buffer as it was, so a confused server or an oversized job
 * can never make a process hold more than its owner decided. The owner's
 * comment says where its cap comes from. The bytes are always followed by a
 * NUL, so a text body is a C string as soon as it is complete.
 *
 * sbx_tail keeps the last `cap` bytes of a stream (a build's output) in a
 * ring over memory the caller provides, so appending never allocates and
 * cannot fail; sbx_tail_str() puts the bytes in order, NUL-terminated, at
 * the start of that memory. sbx_tail_of() is the same cut for bytes that are
 * already whole in memory.
 *
 * SBX_LOG_TAIL_MAX is one contract between the worker, the agent and the
 * runs table (migrations/0001_runs.sql keeps at most this many bytes of a
 * build's output): every provider keeps the last SBX_LOG_TAIL_MAX bytes.
 */
#ifndef SBX_BUF_H
#define SBX_BUF_H

#include <stddef.h>

#define SBX_LOG_TAIL_MAX 8192

/* ---- sbx_buf: capped and growable ---- */

typedef struct sbx_buf {
    char *p;         /* NULL until the first byte; then p[len] == '\0' */
    size_t len;      /* bytes held, not counting the NUL */
    size_t cap;      /* bytes allocated */
    size_t max;      /* hard cap on len, set at init */
} sbx_buf;

/* An empty buffer that will hold at most max bytes; allocates nothing. */
void sbx_buf_init(sbx_buf *b, size_t max);
/* Appends n bytes (n == 0 is a no-op and allocates nothing). Returns 0, -E2BIG if len would pass
 * max, or -ENOMEM; on an error the buffer is unchanged. */
int sbx_buf_add(sbx_buf *b, const void *p, size_t n);
/* Appends n bytes of value c (padding); same returns as sbx_buf_add(). */
int sbx_buf_fill(sbx_buf *b, int c, size_t n);
/* The bytes as a C string: "" while nothing is held. */
const char *sbx_buf_str(const sbx_buf *b);
/* Empties the buffer and keeps its memory and cap, for reuse. */
void sbx_buf_reset(sbx_buf *b);
/* Frees the memory; the buffer is empty again with the same cap. */
void sbx_buf_free(sbx_buf *b);
/* Hands the memory (NUL-terminated; NULL if nothing was ever added) and its
 * length to the caller, who frees it; the buffer is empty again. */
char *sbx_buf_take(sbx_buf *b, size_t *len);

/* ---- sbx_tail: the last cap bytes ---- */

typedef struct sbx_tail {
    char *mem;       /* cap + 1 bytes, the caller's */
    size_t cap;
    size_t start;    /* oldest byte; non-zero only once the ring is full */
    size_t len;      /* bytes kept, at most cap */
} sbx_tail;

/* mem must hold cap + 1 bytes and outlive the tail. Starts empty. */
void sbx_tail_init(sbx_tail *t, char *mem, size_t cap);
/* Appends n bytes; older bytes beyond cap are dropped. Never fails. */
void sbx_tail_add(sbx_tail *t, const void *p, size_t n);
/* Rotates the kept bytes into order at mem[0..len) and NUL-terminates them;
 * returns mem. Appending afterwards carries on correctly. */
const char *sbx_tail_str(sbx_tail *t);
void sbx_tail_reset(sbx_tail *t);

/* The last keep bytes of p[0..*n): returns where they start and sets *n to
 * their count. For output that is already whole in memory. */
const char *sbx_tail_of(const char *p, size_t *n, size_t keep);

#endif
