/* rkeys.h — the Redis key layout sbx-worker and sbx-agent share: every key,
 * its type, who writes it and how long it lives. The Lua scripts that
 * change these keys are the .lua files of common/lua/ (rscripts.h); C code
 * builds keys from the macros below. The Python tests read a few keys by
 * name (tests/chaos/chaos.py, tests/e2e/providers.py, test_chaos_short.py).
 *
 * Every key carries the {sbx} hash tag, so all of them hash to one slot and
 * the scripts also run on a Redis Cluster node. The scripts take no KEYS
 * (numkeys 0): they build the key names themselves from their ARGV.
 *
 * No key has a Redis TTL (EXPIRE). Leases expire by {sbx}:deadlines and the
 * reaping at the start of acquire.lua, so an expired lease, its project key
 * and its slot's way back into the free set go away in one script; VMs age
 * by heartbeat_ms + ttl_ms against Redis' TIME. Time is always Redis' own.
 *
 *   {sbx}:fence                  string (integer counter). Every acquire
 *                                INCRs it, so fencing tokens only grow;
 *                                acquire, renew and fence.lua lift it to the
 *                                newest token PostgreSQL holds after Redis
 *                                lost its data. Writer: worker.
 *   {sbx}:quiet_until            string: ms (Redis clock) before which
 *                                acquire.lua hands out no lease. Set to now
 *                                + ttl by the script that finds {sbx}:fence
 *                                below a token a worker knows (Redis lost
 *                                its data): the owners of the leases it
 *                                forgot take them back meanwhile (renew).
 *                                Writer: worker.
 *   {sbx}:slots:<pool>           set: the pool's registered slots. Writers:
 *                                worker (register.lua, for the pools whose
 *                                slots the worker knows: local, docker, fly),
 *                                agent (beat/leave.lua, pool "vmpool"); a
 *                                dead VM's slots are removed by acquire.lua
 *                                and provider_vmpool.c.
 *   {sbx}:slots_new:<pool>:<registrant>
 *                                set: scratch of a registration sent in
 *                                chunks; the last chunk deletes it (the
 *                                registrant's next "first" chunk does, if
 *                                it died midway). Writer: worker.
 *   {sbx}:free:<pool>            set: registered slots free to lease
 *                                (acquire SPOPs one). Writers: every script;
 *                                provider_vmpool.c (dead VM).
 *   {sbx}:lease:<slot>           hash job, project, worker, token, pool,
 *                                session (a session's job or sweeper),
 *                                expires (ms, Redis clock). Written by
 *                                acquire and renew (which also restores a
 *                                lease Redis lost), deleted by release or
 *                                the reaping. Writer: worker; the agent's
 *                                scripts only test it exists.
 *   {sbx}:project:<project>      string: the slot the project's one build
 *                                holds. Same life as its lease.
 *   {sbx}:session:<name>         hash slot, pool: the slot a session's sandbox
 *                                lives on (<name>: worker/session.h). Set by
 *                                acquire when the session's first job leases
 *                                a slot; deleted by release mode "end" (the
 *                                sweeper ended it) or by acquire when the slot
 *                                left its pool. Writer: worker.
 *   {sbx}:kept                   hash slot -> session name: the same, the
 *                                other way round. A kept slot is never put
 *                                in {sbx}:free: (acquire's reaping, release,
 *                                register and beat all skip it); only its
 *                                session's jobs and sweeper lease it.
 *   {sbx}:marked                 hash slot -> pool: slots register.lua
 *                                marked busy ("!<slot>") for a build whose
 *                                lease Redis lost. renew.lua drops the mark
 *                                when it takes the lease back; a release
 *                                that finds no lease drops it and frees the
 *                                slot (its owner is done with it).
 *   {sbx}:deadlines              sorted set slot -> lease expiry (ms, Redis
 *                                clock): what the reaping looks at.
 *   {sbx}:vm:<vm id>             hash base_url, capacity, labels,
 *                                heartbeat_ms (Redis TIME), ttl_ms, state
 *                                idle|busy|draining|dead. Writer: agent
 *                                (beat.lua every SBX_AGENT_HEARTBEAT_MS,
 *                                leave.lua); state=dead by acquire.lua (the
 *                                heartbeat is older than ttl_ms) and by
 *                                provider_vmpool.c (the agent stopped
 *                                answering). Readers: acquire.lua (liveness),
 *                                provider_vmpool.c (base_url). Stays after
 *                                the VM is gone; a VM that comes back
 *                                registers again.
 *
 * Slot ids are the provider's; a VM's are "<vm id>" (capacity 1) or
 * "<vm id>#<i>", and acquire.lua finds the {sbx}:vm: hash from the part
 * before '#' (a slot with no such hash skips the heartbeat check).
 */
#ifndef SBX_RKEYS_H
#define SBX_RKEYS_H

/* Whole keys. */
#define SBX_RKEY_FENCE     "{sbx}:fence"
#define SBX_RKEY_DEADLINES "{sbx}:deadlines"
#define SBX_RKEY_QUIET     "{sbx}:quiet_until"
#define SBX_RKEY_KEPT      "{sbx}:kept"
#define SBX_RKEY_MARKED    "{sbx}:marked"

/* Prefixes: the key is the prefix followed by the id named above. */
#define SBX_RKEY_SLOTS     "{sbx}:slots:"
#define SBX_RKEY_SLOTS_NEW "{sbx}:slots_new:"
#define SBX_RKEY_FREE      "{sbx}:free:"
#define SBX_RKEY_LEASE     "{sbx}:lease:"
#define SBX_RKEY_PROJECT   "{sbx}:project:"
#define SBX_RKEY_VM        "{sbx}:vm:"
#define SBX_RKEY_SESSION   "{sbx}:session:"

/* The pool whose slots the agents register (worker provider "vmpool"). */
#define SBX_VMPOOL_POOL "vmpool"

/* Fields and states of {sbx}:vm:<vm id> that C code reads or writes. */
#define SBX_RKEY_VM_BASE_URL "base_url"
#define SBX_RKEY_VM_STATE    "state"
#define SBX_VM_IDLE          "idle"
#define SBX_VM_BUSY          "busy"
#define SBX_VM_DRAINING      "draining"
#define SBX_VM_DEAD          "dead"

#endif
