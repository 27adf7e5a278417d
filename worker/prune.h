/* prune.h — retention: terminal runs and their history older than
 * SBX_RETENTION are deleted, a small batch at a time, by one worker at a
 * time. The SQL is sbx.prune_runs() (migrations/0003_retention.sql); dead
 * letters older than SBX_DLQ_RETENTION go the same way through
 * sbx.prune_dead_letters() (migrations/0004_dead_letters.sql). */
#ifndef SBX_PRUNE_H
#define SBX_PRUNE_H

#include <stdint.h>

#include "db.h"
#include "loop.h"

/* Runs per statement: with their history (a handful of events each) a batch
 * is a few thousand rows, milliseconds of work that no other statement waits
 * behind for long. The SQL function refuses more than 10,000. */
#define SBX_PRUNE_BATCH 1000
/* Pause between two full batches, so a large backlog drains at a few
 * thousand runs a second instead of as fast as the database can delete. */
#define SBX_PRUNE_PAUSE_MS 200

typedef struct sbx_prune sbx_prune;

/* Which table a pruner keeps short. */
typedef enum sbx_prune_table { SBX_PRUNE_RUNS, SBX_PRUNE_DEAD_LETTERS } sbx_prune_table;

/* keep_s: age in seconds of what is pruned (> 0). Statements go through db;
 * free the pruner after db (sbx_db_free drops pending callbacks). */
int sbx_prune_new(sbx_loop *loop, sbx_db *db, long long keep_s, int batch, uint64_t pause_ms,
                  sbx_prune **out);
/* The same for another table (sbx_prune_new is SBX_PRUNE_RUNS). */
int sbx_prune_new_table(sbx_loop *loop, sbx_db *db, sbx_prune_table table, long long keep_s,
                        int batch, uint64_t pause_ms, sbx_prune **out);
void sbx_prune_free(sbx_prune *p);
/* Starts a pass (batches until one comes back short) unless one is under
 * way. */
void sbx_prune_pass(sbx_prune *p);
int sbx_prune_running(const sbx_prune *p);
/* Rows (runs, or dead letters) this worker removed so far; 0 for NULL
 * (retention off). */
uint64_t sbx_prune_total(const sbx_prune *p);

#endif
