/* fuzz_offsets.c — stateful libFuzzer target for the commit watermarks of
 * worker/offsets.c.
 *
 * The input is a program: each byte picks an operation (assign, revoke,
 * track, done with a handed-out ref, done with a forged or stale ref, an
 * allocation failure for the next call) and the following bytes its
 * arguments. The same operations run against a reference model that keeps,
 * per partition, every offset tracked since the last assign with a done
 * flag and nothing else; the watermark is the first offset not done (one
 * past the last tracked when all are). After every operation the code and
 * the model must agree on return values, assignment and pending counts, and:
 *  - a returned watermark never passes an unfinished offset (the promise
 *    that makes at-least-once delivery hold: a crash redelivers from it);
 *  - within one assignment the returned watermark never goes back;
 *  - a stale ref (from before a revoke or re-assign) changes nothing.
 * Offsets grow in small steps from a base below 2^40, as Kafka's do.
 */
#include "offsets.h"

#include <errno.h>
#include <string.h>

#include "alloc.h"
#include "ref.h"

#define NPART 10       /* partition ids the program can name (8 small, -1, INT32_MAX) */
#define MAX_REFS 4096  /* refs remembered for later done/forgery; an input is a few KiB */

typedef struct mentry {
    int64_t offset;
    bool done;
} mentry;

typedef struct mpart {
    bool exists, assigned;
    uint32_t gen;
    int64_t last;
    mentry *e;
    size_t n, cap;
    int64_t last_wm;       /* last watermark returned in this assignment, -1 if none */
} mpart;

typedef struct prog {
    const uint8_t *d;
    size_t n, pos;
} prog;

static uint8_t next(prog *p) { return p->pos < p->n ? p->d[p->pos++] : 0; }

static int32_t part_id(int i)
{
    return i < 8 ? i : i == 8 ? -1 : INT32_MAX;
}

static size_t model_pending(const mpart *m)
{
    size_t k = 0;
    for (size_t i = 0; i < m->n; i++)
        k += !m->e[i].done;
    return k;
}

/* The first tracked offset not done; or one past the last tracked. */
static int64_t model_watermark(const mpart *m)
{
    for (size_t i = 0; i < m->n; i++)
        if (!m->e[i].done)
            return m->e[i].offset;
    return m->last + 1;
}

static void model_clear(mpart *m)
{
    m->n = 0;
    m->last = -1;
    m->last_wm = -1;
}

static void model_track(mpart *m, int64_t off)
{
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 16;
        m->e = realloc(m->e, m->cap * sizeof *m->e);
        if (!m->e)
            abort();
    }
    m->e[m->n++] = (mentry){ off, false };
    m->last = off;
}

static mentry *model_find(mpart *m, const sbx_offset_ref *ref)
{
    if (!m->exists || !m->assigned || ref->gen != m->gen)
        return NULL;
    for (size_t i = 0; i < m->n; i++)
        if (m->e[i].offset == ref->offset)
            return m->e[i].done ? NULL : &m->e[i];
    return NULL;
}

static void do_done(sbx_offsets *o, mpart *parts, const sbx_offset_ref *ref)
{
    int pi = -1;
    for (int i = 0; i < NPART; i++)
        if (part_id(i) == ref->partition)
            pi = i;
    mpart *m = pi >= 0 ? &parts[pi] : NULL;
    mentry *e = m ? model_find(m, ref) : NULL;
    int64_t before = e ? model_watermark(m) : 0;
    int64_t got = sbx_offsets_done(o, ref);

    if (!e) {
        FUZZ_CHECK(got == -1, "done(p%d@%lld gen %u) on a stale or unknown ref returned %lld",
                   ref->partition, (long long)ref->offset, ref->gen, (long long)got);
        return;
    }
    e->done = true;
    int64_t after = model_watermark(m);
    FUZZ_CHECK(got == (after != before ? after : -1),
               "done(p%d@%lld): watermark %lld -> %lld, returned %lld", ref->partition,
               (long long)ref->offset, (long long)before, (long long)after, (long long)got);
    if (got >= 0) {
        for (size_t i = 0; i < m->n; i++)
            FUZZ_CHECK(m->e[i].done || m->e[i].offset >= got,
                       "watermark %lld passes unfinished offset %lld of p%d", (long long)got,
                       (long long)m->e[i].offset, ref->partition);
        FUZZ_CHECK(got >= m->last_wm, "watermark went back from %lld to %lld", (long long)m->last_wm,
                   (long long)got);
        m->last_wm = got;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    prog p = { data, size, 0 };
    mpart parts[NPART];
    sbx_offset_ref *refs = malloc(MAX_REFS * sizeof *refs);
    size_t nrefs = 0;
    sbx_offsets *o;

    if (!refs)
        abort();
    memset(parts, 0, sizeof parts);
    for (int i = 0; i < NPART; i++)
        model_clear(&parts[i]);
    fuzz_alloc_reset(0);
    o = sbx_offsets_new();
    FUZZ_CHECK(o, "sbx_offsets_new failed");

    while (p.pos < p.n) {
        uint8_t op = next(&p);
        int pi = next(&p) % NPART;
        mpart *m = &parts[pi];
        int32_t part = part_id(pi);
        size_t allocs;

        switch (op % 8) {
        case 0: /* assign: a rebalance handing us the partition (again) */
            allocs = fuzz_alloc_count;
            sbx_offsets_assign(o, part);
            if (fuzz_alloc_failed() && fuzz_alloc_count > allocs && !m->exists) {
                /* The partition table could not grow: documented to leave
                 * the partition unassigned, so track() refuses it. */
                fuzz_alloc_reset(0);
                break;
            }
            if (!m->exists)
                m->gen = 0;
            m->exists = true;
            m->assigned = true;
            m->gen++;
            model_clear(m);
            break;
        case 1: /* revoke */
            sbx_offsets_revoke(o, part);
            if (m->exists) {
                m->assigned = false;
                m->gen++;
                model_clear(m);
            }
            break;
        case 2:
        case 3: { /* track the next offset, usually a little above the last */
            uint8_t b = next(&p);
            int64_t base = m->last >= 0 ? m->last : (int64_t)next(&p) << 32;
            int64_t off = b == 0xFF ? base + ((int64_t)1 << 32) : base + (int64_t)b - 8;
            sbx_offset_ref ref = { -7, -7, 7 };
            allocs = fuzz_alloc_count;
            int rc = sbx_offsets_track(o, part, off, &ref);
            bool oom = fuzz_alloc_failed() && fuzz_alloc_count > allocs;
            int want = !m->exists || !m->assigned ? -ENOENT : off <= m->last ? -EALREADY
                                                            : oom ? -ENOMEM : 0;
            FUZZ_CHECK(rc == want, "track(p%d@%lld) = %d, model %d", part, (long long)off, rc, want);
            if (oom)
                fuzz_alloc_reset(0);
            if (rc != 0)
                break;
            FUZZ_CHECK(ref.partition == part && ref.offset == off, "ref names p%d@%lld", ref.partition,
                       (long long)ref.offset);
            model_track(m, off);
            if (nrefs < MAX_REFS)
                refs[nrefs++] = ref;
            break;
        }
        case 4:
        case 5: /* done with a ref handed out earlier (maybe stale, maybe done) */
            if (nrefs)
                do_done(o, parts, &refs[(next(&p) | next(&p) << 8) % nrefs]);
            break;
        case 6: { /* done with a forged ref: another partition, offset or generation */
            if (!nrefs)
                break;
            sbx_offset_ref ref = refs[next(&p) % nrefs];
            uint8_t how = next(&p);
            if (how & 1)
                ref.partition = part;
            if (how & 2)
                ref.offset += (int8_t)next(&p);
            if (how & 4)
                ref.gen += (uint32_t)(int8_t)next(&p);
            do_done(o, parts, &ref);
            break;
        }
        case 7: /* the next allocation inside offsets.c fails */
            fuzz_alloc_reset(1);
            break;
        }

        size_t want = 0;
        for (int i = 0; i < NPART; i++) {
            want += model_pending(&parts[i]);
            FUZZ_CHECK(sbx_offsets_assigned(o, part_id(i)) == (parts[i].exists && parts[i].assigned),
                       "assigned(p%d) disagrees", part_id(i));
        }
        FUZZ_CHECK(sbx_offsets_pending(o) == want, "pending %zu, model %zu", sbx_offsets_pending(o), want);
    }

    fuzz_alloc_reset(0);
    sbx_offsets_free(o);
    for (int i = 0; i < NPART; i++)
        free(parts[i].e);
    free(refs);
    return 0;
}
