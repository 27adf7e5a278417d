/* offsets.h — per-partition commit watermarks for at-least-once intake.
 *
 * A Kafka offset may be committed only when every job at or below it is
 * finished (terminal in PostgreSQL, or dead-lettered). Jobs finish out of
 * order (a 2 s build after a 30 min one), so each partition keeps the offsets
 * it handed out, in order, with a done flag; the watermark is the first not
 * done (or one past the last seen). Only it is stored for commit, so a crash
 * redelivers exactly the unfinished suffix and never skips a job.
 *
 * Rebalances: a revoked partition's entries are dropped; jobs still running
 * hold a handle whose generation no longer matches, so marking them done is
 * a no-op (the new owner will see them again and skip them as terminal).
 */
#ifndef SBX_OFFSETS_H
#define SBX_OFFSETS_H

#include <stddef.h>
#include <stdint.h>

typedef struct sbx_offsets sbx_offsets;

typedef struct sbx_offset_ref {
    int32_t partition;
    int64_t offset;
    uint32_t gen;
} sbx_offset_ref;

sbx_offsets *sbx_offsets_new(void);
void sbx_offsets_free(sbx_offsets *o);

void sbx_offsets_assign(sbx_offsets *o, int32_t partition);
void sbx_offsets_revoke(sbx_offsets *o, int32_t partition);
int sbx_offsets_assigned(const sbx_offsets *o, int32_t partition);

/* Records a consumed offset. Offsets of a partition must grow; an offset at
 * or below one already tracked (a redelivery after seek) returns -EALREADY. */
int sbx_offsets_track(sbx_offsets *o, int32_t partition, int64_t offset, sbx_offset_ref *out);

/* Marks it done. Returns the new watermark (next offset to commit) when it
 * moved, or -1 when it did not (or the ref is stale: its partition was
 * revoked since). Each tracked offset is marked once: marking one twice, or
 * one never tracked, is a bug (SBX_ASSERT; -1 with NDEBUG). */
int64_t sbx_offsets_done(sbx_offsets *o, const sbx_offset_ref *ref);

/* Offsets tracked and not done, over all partitions. */
size_t sbx_offsets_pending(const sbx_offsets *o);

/* Per assigned partition with an unfinished offset: the oldest one, and
 * since when (sbx_now_ms) it was tracked. At most max; returns how many. */
typedef struct sbx_offset_oldest {
    int32_t partition;
    int64_t offset;
    uint64_t since_ms;
} sbx_offset_oldest;
int sbx_offsets_oldest(const sbx_offsets *o, sbx_offset_oldest *out, int max);

#endif
