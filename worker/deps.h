/* deps.h — whether this worker can work, and so whether it is in the
 * consumer group: it joins only once Redis and PostgreSQL answer, leaves
 * when one of them stays down past SBX_DEPENDENCY_GRACE_MS, and joins again
 * once both are back. See deps.c.
 */
#ifndef SBX_DEPS_H
#define SBX_DEPS_H

#include <stddef.h>
#include <stdint.h>

typedef struct sbx_worker sbx_worker;
typedef struct sbx_deps sbx_deps;

/* The intake's state, for /readyz and /metrics. */
typedef enum sbx_deps_state {
    SBX_DEPS_STARTING,      /* not joined yet: waiting for the dependencies */
    SBX_DEPS_JOINED,        /* in the group */
    SBX_DEPS_OUT,           /* left: a dependency was down too long */
    SBX_DEPS_FAILED,        /* the start-up wait ran out; the loop is stopping */
} sbx_deps_state;

/* Starts watching w->redis and w->db (w->kafka created with join_later);
 * joins as soon as both answer. -ENOMEM. */
int sbx__deps_new(sbx_worker *w, sbx_deps **out);
void sbx__deps_free(sbx_deps *d);
sbx_deps_state sbx__deps_state(const sbx_deps *d);
/* One short line: "joined", "waiting for redis (12 s)", "paused: redis
 * down 45s". */
void sbx__deps_describe(const sbx_deps *d, char *out, size_t len);
/* Seconds the named dependency ("redis", "postgres") has been down, 0 when up. */
uint64_t sbx__deps_down_s(const sbx_deps *d, const char *dep);

#endif
