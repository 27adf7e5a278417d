/* netns.h — the network of one networked sandbox: its own namespace, a
 * user-mode NAT to the outside world, and the egress filter (egress.h),
 * set up from the loop while bwrap holds the command back.
 *
 * sandbox.c drives it in four calls:
 *
 *   sbx__netns_new()     before bwrap is forked: pipes and files for bwrap
 *                        (sbx__netns_bwrap_args at SBX_NETNS_FD_*)
 *   sbx__netns_start()   after the fork: reads the sandbox's pid from bwrap,
 *                        installs the rules, starts the NAT, then lets the
 *                        command run
 *   sbx__netns_stop()    bwrap is gone or being killed: the NAT is killed
 *   sbx__netns_free()    kills and reaps synchronously what is left
 *
 * cb(SBX_NETNS_FAILED, why) fires at most once, if setup fails before the
 * command was released: the caller must kill the sandbox (never merely let
 * bwrap go on: with the block fd closed, bwrap would start the command).
 * cb(SBX_NETNS_IDLE) fires after sbx__netns_stop() once the last helper
 * process has been reaped; sbx__netns_idle() asks the same. Callbacks run
 * from the loop (fd callbacks and timers), never from inside these calls.
 */
#ifndef SBX_NETNS_H
#define SBX_NETNS_H

#include <stddef.h>
#include <sys/types.h>

#include "egress.h"
#include "loop.h"

/* Where bwrap finds what it is given: fds 0-6 are sandbox.c's. */
#define SBX_NETNS_FD_INFO   8   /* --info-fd: bwrap writes the sandbox's pid */
#define SBX_NETNS_FD_BLOCK  9   /* --block-fd: the command waits for a byte */
#define SBX_NETNS_FD_RESOLV 10  /* /etc/resolv.conf naming the NAT's resolver */
#define SBX_NETNS_NFDS      3
/* Helper processes that run as the sandbox's uid at the same time (the
 * name lookup, then the NAT): headroom for its RLIMIT_NPROC. */
#define SBX_NETNS_PROCS     1

/* bwrap's options for the above, NULL-terminated; they replace --share-net. */
extern const char *const sbx__netns_bwrap_args[];

/* What the host sets up once, at start-up, when builds may have network. */
typedef struct sbx_netns_host {
    sbx_egress egress;
    char *nat;      /* slirp4netns */
    char *nft;
    char *getent;
} sbx_netns_host;

/* Parses SBX_EGRESS_ALLOW / SBX_EGRESS_DENY (resolving names: blocking) and
 * finds the tools. 0, or -EINVAL / -ENOENT with one line in err. */
int sbx_netns_host_init(sbx_netns_host *h, const char *allow, const char *deny, char *err,
                        size_t errlen);
void sbx_netns_host_free(sbx_netns_host *h);

typedef struct sbx_netns sbx_netns;

typedef enum sbx_netns_event { SBX_NETNS_FAILED, SBX_NETNS_IDLE } sbx_netns_event;
typedef void (*sbx_netns_cb)(void *arg, sbx_netns_event ev, const char *why);

typedef struct sbx_netns_spec {
    const sbx_netns_host *host;
    char *const *allow;      /* the job's "egress", NULL-terminated; NULL: not given */
    int uid, gid;            /* the sandbox's (-1: the caller's) */
    int setup_ms;            /* the whole setup, name lookups included */
} sbx_netns_spec;

/* 0 and *out, or a negative errno and one line in err (-EINVAL: an entry
 * of allow that is neither a CIDR nor a host name). */
int sbx__netns_new(sbx_loop *loop, const sbx_netns_spec *spec, sbx_netns_cb cb, void *arg,
                   sbx_netns **out, char *err, size_t errlen);
/* The fds bwrap's process must hold at SBX_NETNS_FD_INFO... in order. */
void sbx__netns_child_fds(const sbx_netns *ns, int fds[SBX_NETNS_NFDS]);
/* bwrap (pid) has been forked: closes its ends and begins. */
void sbx__netns_start(sbx_netns *ns, pid_t bwrap);
void sbx__netns_stop(sbx_netns *ns);
int sbx__netns_idle(const sbx_netns *ns);
void sbx__netns_free(sbx_netns *ns);

#endif
