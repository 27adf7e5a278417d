/* registry.h — this VM in Redis: the {sbx}:vm:<id> hash and its slots in
 * the pool sets {sbx}:slots:vmpool and {sbx}:free:vmpool (common/rkeys.h
 * describes them).
 *
 * The agent registers itself (workers never list VMs): one Lua script both
 * registers and heartbeats, so a heartbeat also repairs whatever a Redis
 * restart or the acquire script's dead-VM sweep took away. Slot ids are
 * "<id>" for capacity 1 and "<id>#<i>" otherwise; the acquire script finds
 * the VM hash from the part before '#'.
 */
#ifndef SBX_AGENT_REGISTRY_H
#define SBX_AGENT_REGISTRY_H

#include <stdint.h>

#include "redis.h"
#include "rkeys.h"

typedef struct sbx_registry sbx_registry;

typedef struct sbx_registry_config {
    const char *id;
    const char *base_url;
    const char *labels;
    int capacity;
    int ttl_ms;
} sbx_registry_config;

/* Called once per beat/leave with ok = 1 or 0 (error says why). */
typedef void (*sbx_registry_cb)(void *arg, int ok, const char *error);

int sbx_registry_new(sbx_redis *r, const sbx_registry_config *cfg, sbx_registry **out);
void sbx_registry_free(sbx_registry *g);

/* Writes the hash with a fresh heartbeat and puts the slots in the pool.
 * state: SBX_VM_IDLE, SBX_VM_BUSY or SBX_VM_DRAINING (draining frees
 * nothing). busy[i] says slot i runs a build here, so it is kept out of the
 * free set even if its lease is gone. Returns 0 and calls cb later, or -ENOTCONN. */
int sbx_registry_beat(sbx_registry *g, const char *state, const int *busy, sbx_registry_cb cb,
                      void *arg);
/* state = draining; removes the slots that are not leased from both pool
 * sets (a leased one stays so its holder's release works as usual). */
/* The connection dropped: the next beat registers in full (Redis may have
 * come back empty, or a restarted agent may have changed capacity). */
void sbx_registry_reset(sbx_registry *g);
int sbx_registry_leave(sbx_registry *g, sbx_registry_cb cb, void *arg);

#endif
