/* ssh_tunnel.h — a supervised `ssh -N -L` that makes a remote engine's unix
 * socket appear as a local one, for docker hosts given as ssh://.
 *
 * The worker spawns OpenSSH's client itself rather than speaking SSH: ssh
 * brings host-key checking, key types, agent and config handling that we
 * would otherwise have to get right, and a forwarded unix socket is all the
 * HTTP client needs (it talks to it like to a local engine). The price is a
 * child process, so this file owns its whole life:
 *
 *   spawn ─▶ starting ─▶ up (the local socket exists) ─▶ exited ─▶ backoff ─▶ spawn
 *
 * ssh runs with no user config (-F none), BatchMode (never a prompt),
 * StrictHostKeyChecking=yes against the known_hosts file given and no other
 * (GlobalKnownHostsFile=/dev/null), ExitOnForwardFailure (no half-open
 * tunnel) and keepalives, so a dead peer ends the process and the
 * supervisor starts a new one: 1 s after the first exit, doubling to 30 s,
 * back to 1 s once a tunnel stayed up for a minute. Its stderr is read on
 * the loop: every line is logged, and the last one is kept as the reason
 * the tunnel is down ("Host key verification failed.").
 *
 * The child gets PR_SET_PDEATHSIG, so a worker that dies without cleaning
 * up does not leave ssh behind; sbx_ssh_tunnel_free() kills and reaps it.
 */
#ifndef SBX_SSH_TUNNEL_H
#define SBX_SSH_TUNNEL_H

#include <sys/types.h>

#include "loop.h"

typedef struct sbx_ssh_tunnel sbx_ssh_tunnel;

typedef struct sbx_ssh_tunnel_config {
    const char *name;            /* in log lines: the docker host's name */
    const char *destination;     /* "user@host" */
    int port;                    /* 0: 22 */
    const char *remote_socket;   /* the engine's socket on the far side */
    const char *local_socket;    /* where ssh listens here; removed before each spawn */
    const char *known_hosts;     /* required: the only host keys trusted */
    const char *identity;        /* private key file; NULL or "": ssh's defaults */
    const char *ssh;             /* the client; NULL: "ssh" from PATH */
    /* Called from the loop when the tunnel comes up (up = 1) or goes down. */
    void (*on_state)(void *arg, int up);
    void *arg;
} sbx_ssh_tunnel_config;

/* Copies cfg and spawns ssh at once. 0, or -errno with err set (the
 * settings are wrong, or fork failed); the tunnel is then not made. */
int sbx_ssh_tunnel_new(sbx_loop *loop, const sbx_ssh_tunnel_config *cfg, sbx_ssh_tunnel **out,
                       char *err, size_t errlen);
/* Kills and reaps ssh, removes the local socket. NULL is fine. */
void sbx_ssh_tunnel_free(sbx_ssh_tunnel *t);

/* ssh runs and its local socket exists. */
int sbx_ssh_tunnel_up(const sbx_ssh_tunnel *t);
/* Why it is down: ssh's last line, or how it exited; "" while up. */
const char *sbx_ssh_tunnel_error(const sbx_ssh_tunnel *t);
/* ssh processes started so far (1 after new). */
unsigned sbx_ssh_tunnel_spawns(const sbx_ssh_tunnel *t);
/* The running ssh's pid, or 0 between processes (for tests). */
pid_t sbx_ssh_tunnel_pid(const sbx_ssh_tunnel *t);

#endif
