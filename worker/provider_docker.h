/* provider_docker.h — builds in containers through the Docker Engine API,
 * of dockerd or of Podman's compatible service (`podman system service`).
 *
 * Several engine hosts, each with a capacity, make one pool "docker"; slot
 * i of host H is "docker/H/i". The lease layer picks a slot (the least
 * loaded host, from sbx_docker_host_slots()) and the run goes to that host.
 *
 * SBX_RUN_STARTED is reported when the engine's start returned. A run that
 * is canceled, timed out or refused by the engine before that still reports
 * STARTED, right before FINISHED, so every run has both (provider.h).
 *
 * The engine is dockerd (API 1.41 and up) or Podman's compatible service;
 * the API version is negotiated per host (provider_docker.c).
 *
 * Hosts are reached as their endpoint says (the transport is this
 * provider's; the engine calls do not see it):
 *   unix:///run/docker.sock            a local engine's socket
 *   https://host:port                  TLS: the engine's certificate verified
 *                                      against the host's CA, and a client
 *                                      certificate shown (dockerd --tlsverify)
 *   ssh://[user@]host[:port][/socket]  through `ssh -N -L` to the engine's
 *                                      socket there (default
 *                                      /var/run/docker.sock), the host key
 *                                      checked against ssh_known_hosts; the
 *                                      tunnel is supervised (ssh_tunnel.h)
 *   tcp://host:port, http://host:port  plain HTTP, which lets anyone on the
 *                                      path run containers as the engine: to
 *                                      loopback addresses only, unless
 *                                      insecure_tcp
 * docker_hosts.h parses and checks endpoints and makes each host's link;
 * its error lines name the worker's settings (SBX_DOCKER_*) that fill the
 * config, since that is where an operator fixes them.
 *
 * Every container carries the labels sbx.job, sbx.project, sbx.token,
 * sbx.slot, sbx.worker and sbx.pool=docker, so orphans are found by asking
 * the engine, not our database: sbx_docker_sweep() removes containers of
 * this worker id that no run of this provider owns. A session's container
 * (provider.h's sessions; named after the session and slot, labelled
 * sbx.session) is never an orphan: it stays until session_op(DESTROY). It runs once when the
 * provider starts and is meant for the worker's cron.
 */
#ifndef SBX_PROVIDER_DOCKER_H
#define SBX_PROVIDER_DOCKER_H

#include <stddef.h>

#include "provider.h"

#define SBX_DOCKER_POOL "docker"

typedef struct sbx_docker_host {
    const char *name;       /* in slot ids; letters, digits, '.', '_', '-' */
    const char *endpoint;   /* one of the forms above */
    int capacity;           /* concurrent containers on this host */
} sbx_docker_host;

typedef struct sbx_docker_config {
    const char *worker_id;          /* label sbx.worker; keep it stable across restarts
                                     * so the start-up sweep finds what a crashed
                                     * predecessor left running */
    const sbx_docker_host *hosts;
    size_t nhosts;
    const char *default_image;      /* for jobs that name none */
    const char *user;               /* "uid:gid"; NULL = "65534:65534" */
    int allow_network;              /* else every container gets NetworkMode "none" */
    int default_memory_mb;          /* 0 = 1024 */
    int default_pids;               /* 0 = 512 */
    double default_cpus;            /* 0 = 1 */
    int default_disk_mb;            /* /workspace tmpfs size; 0 = 1024 */
    int tmp_mb;                     /* /tmp tmpfs size; 0 = 256 */
    int request_timeout_ms;         /* each engine call but wait (reading the logs
                                     * too); 0 = 30000 */
    int kill_grace_ms;              /* kill -> engine reports exit; 0 = 10000 */
    int no_start_sweep;             /* tests, --check-config: do not sweep in
                                     * sbx_docker_new() nor when a tunnel is up */
    int insecure_tcp;               /* tcp:// and http:// to any address */
    const char *cert_dir;           /* https host H's files, Docker's layout:
                                     * cert_dir/H/ca.pem, cert.pem, key.pem;
                                     * NULL: SBX_DOCKER_CERT_DIR_DEFAULT */
    const char *ssh_known_hosts;    /* ssh hosts: the host keys trusted; required */
    const char *ssh_key;            /* ssh hosts: private key; NULL: ssh's defaults */
    const char *ssh_command;        /* NULL: "ssh" from PATH */
    const char *run_dir;            /* tunnels' local sockets go in a private
                                     * directory under it; NULL:
                                     * $RUNTIME_DIRECTORY (systemd), else /tmp */
    const char *registry_auth;      /* X-Registry-Auth sent with pulls (base64url of
                                     * {"username":..,"password":..,"serveraddress":..}
                                     * or {"identitytoken":..}); NULL: none */
} sbx_docker_config;

#define SBX_DOCKER_CERT_DIR_DEFAULT "/etc/sbx/docker"
/* A host name's length: it is part of every slot id ("docker/<name>/<i>"). */
#define SBX_DOCKER_HOST_NAME_MAX 48

int sbx_docker_new(sbx_loop *loop, const sbx_docker_config *cfg, sbx_provider **out,
                   char *err, size_t errlen);

/* Lists every host's containers labelled sbx.pool=docker and sbx.worker=<us>
 * and force-removes those no run of ours owns (matched on sbx.slot and
 * sbx.token, so a container whose create reply is still in flight is safe).
 * done (may be NULL) is called once from the loop with the counts. Returns
 * 0, or -EBUSY while a sweep is already running (done is then not called). */
typedef void (*sbx_docker_sweep_cb)(void *arg, int removed, int failed);
int sbx_docker_sweep(sbx_provider *p, sbx_docker_sweep_cb done, void *arg);

size_t sbx_docker_host_count(sbx_provider *p);
const char *sbx_docker_host_name(sbx_provider *p, size_t host);
/* The slot ids of one host; ids[i] point into provider memory. */
size_t sbx_docker_host_slots(sbx_provider *p, size_t host, const char ***ids);
/* 1 when the host can be reached as far as we know: always for unix, tcp
 * and https hosts, and for ssh hosts while the tunnel is up; else 0 and
 * *why (may be NULL) says what ssh said. */
int sbx_docker_host_up(sbx_provider *p, size_t host, const char **why);
/* Runs started and not yet finished. */
size_t sbx_docker_active(sbx_provider *p);

#endif
