/* cgroup.h — one control group per sandbox: memory, CPU quota and pids for
 * everything the sandbox runs, together, where rlimits count per process.
 *
 *   sbx_cgroup_new() -> (fork) sbx_cgroup_join() in the child -> exec
 *   ... the sandbox ends, its processes are gone ...
 *   sbx_cgroup_usage() -> sbx_cgroup_free()
 *
 * group names the caller's parent cgroup, one per sandbox slot (sandbox.c:
 * work_dir and the slot's uid), so two workers on a host never clash and a
 * restarted one can sweep what its crashed predecessor left:
 * <own cgroup>/sbx/<group>/s-<name>. Needs a writable cgroup hierarchy
 * (root): cgroup v2 when the unified hierarchy offers memory, cpu and pids,
 * else the v1 memory (required), cpu, pids and freezer hierarchies.
 */
#ifndef SBX_CGROUP_H
#define SBX_CGROUP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct sbx_cgroup sbx_cgroup;

typedef struct sbx_cgroup_limits {
    int memory_mb;   /* memory (tmpfs pages included), no swap; 0: none */
    double cpus;     /* CFS quota in cores; 0: none */
    int pids;        /* tasks at once; 0: none */
} sbx_cgroup_limits;

typedef struct sbx_cgroup_usage {
    uint64_t oom_kills;    /* processes the memory limit's OOM killer killed */
    uint64_t memory_peak;  /* bytes; 0 when the kernel does not say */
} sbx_cgroup_usage;

/* "v1", "v2", or NULL when no writable hierarchy with a memory controller
 * exists (not root, read-only /sys/fs/cgroup): limits are then the caller's
 * rlimits alone. Probed once per process. */
const char *sbx_cgroup_mode(void);

/* Creates the cgroup (a leftover of the same name is emptied and replaced)
 * and sets the limits. Returns 0 and *out, -ENOTSUP when sbx_cgroup_mode()
 * is NULL, or another negative errno and one line in err. */
int sbx_cgroup_new(const char *group, const char *name, const sbx_cgroup_limits *lim,
                   sbx_cgroup **out, char *err, size_t errlen);
/* Moves the calling process into cg: for the forked child before it execs,
 * so everything it starts is inside. Async-signal-safe (write(2) on fds
 * opened by sbx_cgroup_new). 0 or -errno. */
int sbx_cgroup_join(const sbx_cgroup *cg);
void sbx_cgroup_usage_of(const sbx_cgroup *cg, sbx_cgroup_usage *u);
/* New descriptors that let another process kill everything inside without
 * naming a pid or a path (supervise.h): cgroup.kill for writing (v2, kernel
 * 5.14+), and cgroup.procs for reading (v1's memory hierarchy, or v2's);
 * each -1 when not available. The caller closes them. */
void sbx_cgroup_kill_fds(const sbx_cgroup *cg, int *kill_fd, int *procs_fd);
/* Freezes (frozen = 1) or thaws (0) every process inside, and returns once
 * the kernel reports it done (bounded by a couple of seconds: -ETIMEDOUT).
 * v2's cgroup.freeze, or v1's freezer hierarchy when mounted; -ENOTSUP
 * without either. Freed cgroups are thawed first, so their SIGKILLs take. */
int sbx_cgroup_freeze(sbx_cgroup *cg, int frozen);
/* Thaws the cgroup process pid is in when it is one of ours (below sbx/):
 * for uid sweeps, whose SIGKILL a frozen task takes only once thawed. */
void sbx_cgroup_thaw_of(pid_t pid);
/* SIGKILLs anything still inside, removes the cgroup, frees cg. 0, or
 * -EBUSY when it could not be removed (logged). NULL is fine. */
int sbx_cgroup_free(sbx_cgroup *cg);
/* Empties and removes every cgroup under group (a crashed predecessor's),
 * then group itself when nothing runs in it. */
void sbx_cgroup_sweep(const char *group);

#endif
