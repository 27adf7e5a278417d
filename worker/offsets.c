/* offsets.c — a ring of (offset, done) per partition; see offsets.h.
 *
 * Partitions are few (a consumer owns tens at most), so they sit in a small
 * array searched linearly. Each ring grows by doubling; its size is bounded
 * by the worker's max in-flight jobs, because intake pauses at that number.
 */
#include "offsets.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>

#include "assert.h"

typedef struct entry {
    int64_t offset;
    int done;
    uint64_t at_ms;     /* when tracked: the age of the oldest unfinished */
} entry;

typedef struct part {
    int32_t partition;
    int assigned;
    uint32_t gen;
    entry *ring;
    size_t cap, head, count;
    int64_t last;       /* highest offset tracked, -1 if none */
    size_t pending;     /* entries not done */
} part;

struct sbx_offsets {
    part *parts;
    size_t nparts, cap;
    size_t pending;
};

sbx_offsets *sbx_offsets_new(void) { return calloc(1, sizeof(sbx_offsets)); }

void sbx_offsets_free(sbx_offsets *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < o->nparts; i++)
        free(o->parts[i].ring);
    free(o->parts);
    free(o);
}

/* sbx_now_ms()'s clock (CLOCK_MONOTONIC, ms), read here: this file links
 * without the loop into the fuzz target (tests/fuzz/fuzz.mk). */
static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static part *find(const sbx_offsets *o, int32_t partition)
{
    for (size_t i = 0; i < o->nparts; i++)
        if (o->parts[i].partition == partition)
            return &o->parts[i];
    return NULL;
}

static void clear(sbx_offsets *o, part *p)
{
    o->pending -= p->pending;
    p->pending = 0;
    p->head = p->count = 0;
    p->last = -1;
}

void sbx_offsets_assign(sbx_offsets *o, int32_t partition)
{
    part *p = find(o, partition);
    if (!p) {
        if (o->nparts == o->cap) {
            size_t cap = o->cap ? o->cap * 2 : 16;
            part *np = realloc(o->parts, cap * sizeof(*np));
            if (!np)
                return; /* track() then refuses this partition: ENOENT */
            o->parts = np;
            o->cap = cap;
        }
        p = &o->parts[o->nparts++];
        memset(p, 0, sizeof(*p));
        p->partition = partition;
    }
    clear(o, p);
    p->assigned = 1;
    p->gen++;
}

void sbx_offsets_revoke(sbx_offsets *o, int32_t partition)
{
    part *p = find(o, partition);
    if (!p)
        return;
    clear(o, p);
    p->assigned = 0;
    p->gen++;
}

int sbx_offsets_assigned(const sbx_offsets *o, int32_t partition)
{
    const part *p = find(o, partition);
    return p && p->assigned;
}

int sbx_offsets_track(sbx_offsets *o, int32_t partition, int64_t offset, sbx_offset_ref *out)
{
    part *p = find(o, partition);
    if (!p || !p->assigned)
        return -ENOENT;
    if (offset <= p->last)
        return -EALREADY;
    if (p->count == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        entry *r = malloc(cap * sizeof(*r));
        if (!r)
            return -ENOMEM;
        for (size_t i = 0; i < p->count; i++)
            r[i] = p->ring[(p->head + i) % p->cap];
        free(p->ring);
        p->ring = r;
        p->cap = cap;
        p->head = 0;
    }
    p->ring[(p->head + p->count) % p->cap] = (entry){offset, 0, now_ms()};
    p->count++;
    p->last = offset;
    p->pending++;
    o->pending++;
    out->partition = partition;
    out->offset = offset;
    out->gen = p->gen;
    return 0;
}

int64_t sbx_offsets_done(sbx_offsets *o, const sbx_offset_ref *ref)
{
    part *p = find(o, ref->partition);
    size_t lo, hi, moved = 0;

    if (!p || !p->assigned || p->gen != ref->gen)
        return -1; /* revoked since: the partition's new owner decides */
    /* Offsets in the ring grow: binary search. */
    lo = 0;
    hi = p->count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (p->ring[(p->head + mid) % p->cap].offset < ref->offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* A ref of the current generation names an offset tracked and not yet
     * done: each job marks each of its offsets once. */
    if (!SBX_ASSERT(ref->offset <= p->last && lo < p->count &&
                    p->ring[(p->head + lo) % p->cap].offset == ref->offset &&
                    !p->ring[(p->head + lo) % p->cap].done))
        return -1;
    p->ring[(p->head + lo) % p->cap].done = 1;
    p->pending--;
    o->pending--;
    while (p->count > 0 && p->ring[p->head].done) {
        p->head = (p->head + 1) % p->cap;
        p->count--;
        moved = 1;
    }
    if (!moved)
        return -1;
    return p->count > 0 ? p->ring[p->head].offset : p->last + 1;
}

size_t sbx_offsets_pending(const sbx_offsets *o) { return o->pending; }

int sbx_offsets_oldest(const sbx_offsets *o, sbx_offset_oldest *out, int max)
{
    int n = 0;
    for (size_t i = 0; i < o->nparts && n < max; i++) {
        const part *p = &o->parts[i];
        /* done() pops finished entries off the head, so the head is the
         * oldest unfinished. */
        if (!p->assigned || p->count == 0)
            continue;
        out[n].partition = p->partition;
        out[n].offset = p->ring[p->head].offset;
        out[n].since_ms = p->ring[p->head].at_ms;
        n++;
    }
    return n;
}
