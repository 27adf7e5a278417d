/* prune.h — retention: terminal runs and their history older than
 * SBX_RETENTION are deleted, a small batch at a time, by one worker at a
 * time. The SQL is sbx.prune_runs() (migrations/0003_retention.sql). */
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

/* keep_s: age in seconds of what is pruned (> 0). Statements go through db;
 * free the pruner after db (sbx_db_free drops pending callbacks). */
int sbx_prune_new(sbx_loop *loop, sbx_db *db, long long keep_s, int batch, uint64_t pause_ms,
                  sbx_prune **out);
void sbx_prune_free(sbx_prune *p);
/* Starts a pass (batches until one comes back short) unless one is under
 * way. */
void sbx_prune_pass(sbx_prune *p);
int sbx_prune_running(const sbx_prune *p);
/* Runs this worker removed so far; 0 for NULL (retention off). */
uint64_t sbx_prune_total(const sbx_prune *p);

#endif
