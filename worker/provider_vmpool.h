/* provider_vmpool.h — builds on a pool of VMs, each running sbx-agent
 * (agent/), in the pool "vmpool".
 *
 * The worker does not list VMs: every agent registers its own slots in
 * Redis ({sbx}:slots:vmpool, {sbx}:free:vmpool) and keeps a heartbeat in
 * {sbx}:vm:<vm id>, so slots() offers nothing and the lease script hands
 * out agents' slots ("<vm id>" or "<vm id>#<i>"). start() reads the VM's
 * base_url from that hash, POSTs /wake with the lease's token and follows
 * the run by long-polling GET /runs/{id} until it ends.
 *
 * Outcomes: the agent's state maps one to one (succeeded, failed,
 * timed_out, canceled; its "error" -> SBX_OUTCOME_ERROR). The agent being
 * unreachable for unreachable_ms in a row, answering 5xx, not knowing the
 * run (restarted), refusing the key, the slot or the token -> ERROR, which
 * the worker retries, on another VM since the lease moves. A cancel()ed run
 * always ends CANCELED, as with every provider. sbx_result.instance is the
 * VM id; preview_url is the agent's, so it points at the VM that built it.
 *
 * Sessions: the agent keeps a session's sandbox on its slot between runs
 * (agent/runs.h) and says which sandbox a run got; session_op() pauses
 * (cgroup freezer) or destroys it through the agent, fenced by the token.
 * Cancel and timeout of a session's run end its sandbox (the next is NEW).
 */
#ifndef SBX_PROVIDER_VMPOOL_H
#define SBX_PROVIDER_VMPOOL_H

#include <stddef.h>

#include "provider.h"
#include "rkeys.h"   /* SBX_VMPOOL_POOL, the pool name */

typedef struct sbx_vmpool_config {
    const char *redis_url;     /* where agents register (the worker's SBX_REDIS_URL) */
    const char *service_key;   /* SBX_VMPOOL_KEY: the agents' SBX_AGENT_KEY */
    int unreachable_ms;        /* agent silent this long -> ERROR; 0: 10000 */
    int busy_retry_ms;         /* how long "409 busy" is retried while the agent stops
                                  an older lease's build; 0: 10000 */
    int poll_ms;               /* long-poll wait of one GET /runs/{id}; 0: 1000 */
} sbx_vmpool_config;

/* Opens its own Redis connection (so its lookups can be dropped with the
 * provider) and HTTP client. Returns 0, or an errno-style code and a line
 * in err. */
int sbx_vmpool_new(sbx_loop *loop, const sbx_vmpool_config *cfg, sbx_provider **out,
                   char *err, size_t errlen);

#endif
