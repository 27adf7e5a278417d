/* leasewatch.h — the agent holds each running build to its worker's lease
 * in Redis: a build whose lease is no longer renewed is killed before the
 * lease can expire and be taken over (leasewatch.c says how).
 *
 *   sbx_leasewatch_new() ... sbx_leasewatch_stop() (before the runs go)
 *   ... sbx_redis_free() ... sbx_leasewatch_free()
 */
#ifndef SBX_AGENT_LEASEWATCH_H
#define SBX_AGENT_LEASEWATCH_H

#include "loop.h"
#include "redis.h"
#include "runs.h"

typedef struct sbx_leasewatch sbx_leasewatch;

/* Starts checking every running build of runs. 0 or -ENOMEM. */
int sbx_leasewatch_new(sbx_loop *loop, sbx_redis *redis, sbx_runs *runs, sbx_leasewatch **out);
/* No more checks, and answers still in flight are ignored: call it before
 * runs is freed. Idempotent. */
void sbx_leasewatch_stop(sbx_leasewatch *lw);
/* After sbx_redis_free() (which drops the callbacks still pending). NULL is
 * fine. */
void sbx_leasewatch_free(sbx_leasewatch *lw);

#endif
