/* supervise.h — a watchdog process that kills one sandbox when its owner
 * stops vouching for it, even while the owner itself is frozen.
 *
 *   sbx_supervisor_start(until) -> sbx_supervisor_trust(later) ... ->
 *   sbx_supervisor_stop()
 *
 * The owner (a worker holding a lease, or an agent checking one) pushes a
 * deadline forward each time it has renewed its right to run the build;
 * when the deadline passes without a push, or the owner dies (the pipe's
 * write end closes), the supervisor SIGKILLs everything of the sandbox by
 * descriptors it was handed (the sandbox's cgroup, bwrap's pidfd), never by
 * pid or uid, so it can never hit a later build of the same slot.
 * supervise.c's design comment says why it is a process and not a timer.
 */
#ifndef SBX_SUPERVISE_H
#define SBX_SUPERVISE_H

#include <stdint.h>
#include <sys/types.h>

typedef struct sbx_supervisor sbx_supervisor;

/* What the supervisor kills, all descriptors (-1: none); it keeps its own
 * copies, the caller keeps its own. */
typedef struct sbx_supervise_target {
    int pidfd;          /* bwrap: its --die-with-parent takes the pid namespace */
    int cgroup_kill;    /* cgroup v2 cgroup.kill, opened for writing */
    int cgroup_procs;   /* cgroup v1 cgroup.procs, opened for reading */
} sbx_supervise_target;

/* Forks the supervisor, armed to fire at until_ms (sbx_now_ms() clock).
 * Returns 0 and *out, or a negative errno. */
int sbx_supervisor_start(const sbx_supervise_target *t, uint64_t until_ms,
                         sbx_supervisor **out);
/* Moves the deadline to until_ms (earlier or later). One non-blocking write
 * of 8 bytes: never waits for the supervisor. */
void sbx_supervisor_trust(sbx_supervisor *sv, uint64_t until_ms);
/* The deadline last pushed (sbx_now_ms() clock). */
uint64_t sbx_supervisor_until(const sbx_supervisor *sv);
/* Ends the supervisor without letting it fire (SIGKILL, then a reap that
 * cannot block for long: it has nothing to finish), frees sv. Returns 1 if
 * it had fired before, else 0. NULL is fine (returns 0). */
int sbx_supervisor_stop(sbx_supervisor *sv);

#endif
