/* migrations.h — the SQL migrations built into `sbx` (migrate.c).
 *
 * producers/producers.mk runs common/lua/embed.awk in raw mode over
 * migrations/NNNN_*.sql (every file there, sorted by name) into
 * $(BUILD)/gen/producers/migrations.c: each file's bytes unchanged, so the
 * sha256 `sbx migrate` records is the same as for the file on disk.
 */
#ifndef SBX_MIGRATIONS_H
#define SBX_MIGRATIONS_H

struct sbx__embedded {
    const char *name;       /* "0001_runs.sql" */
    const char *text;
    unsigned long len;
};

extern const struct sbx__embedded sbx__migrations[];
extern const unsigned long sbx__migrations_count;

#endif
