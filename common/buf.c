/* buf.c — the capped growable buffer and the tail ring; see buf.h. */
#include "buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* First allocation: most bodies (engine and agent replies, bwrap options)
 * fit in one page; larger ones double from there up to max + 1. */
#define BUF_START 4096

void sbx_buf_init(sbx_buf *b, size_t max)
{
    b->p = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

/* Makes room for n more bytes and the NUL. */
static int reserve(sbx_buf *b, size_t n)
{
    size_t need, cap;
    char *p;

    if (n > b->max - b->len)
        return -E2BIG;
    need = b->len + n + 1;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : BUF_START;
    while (cap < need)
        cap = cap > b->max / 2 ? b->max + 1 : cap * 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    p = realloc(b->p, cap);
    if (!p)
        return -ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int sbx_buf_add(sbx_buf *b, const void *p, size_t n)
{
    int rc = n ? reserve(b, n) : 0;
    if (rc || n == 0)
        return rc;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int sbx_buf_fill(sbx_buf *b, int c, size_t n)
{
    int rc = n ? reserve(b, n) : 0;
    if (rc || n == 0)
        return rc;
    memset(b->p + b->len, c, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

const char *sbx_buf_str(const sbx_buf *b) { return b->p ? b->p : ""; }

void sbx_buf_reset(sbx_buf *b)
{
    b->len = 0;
    if (b->p)
        b->p[0] = '\0';
}

void sbx_buf_free(sbx_buf *b)
{
    free(b->p);
    sbx_buf_init(b, b->max);
}

char *sbx_buf_take(sbx_buf *b, size_t *len)
{
    char *p = b->p;
    if (len)
        *len = b->len;
    sbx_buf_init(b, b->max);
    return p;
}

/* ---- the tail ---- */

void sbx_tail_init(sbx_tail *t, char *mem, size_t cap)
{
    t->mem = mem;
    t->cap = cap;
    t->start = t->len = 0;
    mem[0] = '\0';
}

void sbx_tail_reset(sbx_tail *t) { sbx_tail_init(t, t->mem, t->cap); }

void sbx_tail_add(sbx_tail *t, const void *data, size_t n)
{
    const char *p = sbx_tail_of(data, &n, t->cap);
    size_t w, first;

    if (n == 0)
        return;
    w = (t->start + t->len) % t->cap;
    first = t->cap - w < n ? t->cap - w : n;
    memcpy(t->mem + w, p, first);
    memcpy(t->mem, p + first, n - first);
    if (t->len + n > t->cap) {
        t->start = (w + n) % t->cap;   /* the oldest byte follows the newest */
        t->len = t->cap;
    } else {
        t->len += n;
    }
}

static void reverse(char *p, size_t n)
{
    for (size_t i = 0, j = n; i + 1 < j; i++, j--) {
        char c = p[i];
        p[i] = p[j - 1];
        p[j - 1] = c;
    }
}

const char *sbx_tail_str(sbx_tail *t)
{
    if (t->start) {
        /* Full and wrapped: rotate left by start in place (three reversals),
         * so no second buffer of cap bytes is needed. */
        reverse(t->mem, t->start);
        reverse(t->mem + t->start, t->cap - t->start);
        reverse(t->mem, t->cap);
        t->start = 0;
    }
    t->mem[t->len] = '\0';
    return t->mem;
}

const char *sbx_tail_of(const char *p, size_t *n, size_t keep)
{
    if (*n <= keep)
        return p;
    p += *n - keep;
    *n = keep;
    return p;
}
