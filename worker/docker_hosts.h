/* docker_hosts.h — how the docker provider reaches its engines: the
 * SBX_DOCKER_HOSTS list, the rules each endpoint must pass, and a host's
 * link once made.
 *
 * Endpoints (the forms and why plain HTTP is loopback-only are in
 * provider_docker.h) are checked here once, without the network, by the
 * worker's settings check, `--check-config` and sbx_docker_new() alike, so
 * all three refuse the same things with the same line. A link is what a
 * request needs to reach one host: the base URL, the unix socket (a local
 * engine's, or the local end of the host's ssh tunnel) and the TLS files.
 * provider_docker.c keeps one link per host and lets it fill in every
 * request (sbx__docker_link_req); it never looks at an endpoint itself, so
 * the engine calls do not know how a host is reached.
 */
#ifndef SBX_DOCKER_HOSTS_H
#define SBX_DOCKER_HOSTS_H

#include <stddef.h>

#include "http.h"
#include "loop.h"
#include "provider_docker.h"
#include "ssh_tunnel.h"

/* SBX_DOCKER_HOSTS, "name=endpoint@capacity[,...]": the endpoint may hold
 * ':', '/' and '@' (ssh://user@host), so the capacity is after the last
 * '@'. Cuts buf in place; hosts[] point into it. 0, or -EINVAL with err. */
int sbx_docker_parse_hosts(char *buf, sbx_docker_host *hosts, size_t max, size_t *n, char *err,
                           size_t errlen);
/* Everything sbx_docker_new() would refuse in cfg, without the network:
 * names, capacities, endpoints, plain HTTP to a non-loopback address, the
 * TLS files and known_hosts readable. 0, or -EINVAL with one line in err
 * that names the setting and the fix. */
int sbx_docker_check_config(const sbx_docker_config *cfg, char *err, size_t errlen);

/* `sbx-worker --check-config`: reaches every host of cfg through the same
 * links runs use (on a loop of its own: TLS files, ssh tunnels) and asks
 * GET /_ping, all within timeout_ms. report is called once per host, in
 * order, with ok = 1 and how it answered, or ok = 0 and why not. Returns the
 * hosts that failed, or -errno when cfg is refused (err says why). Blocks.
 * Touches no container: a check run beside a live worker is harmless. */
typedef void (*sbx_docker_probe_cb)(void *arg, const char *host, int ok, const char *msg);
int sbx_docker_probe(const sbx_docker_config *cfg, int timeout_ms, sbx_docker_probe_cb report,
                     void *arg, char *err, size_t errlen);

/* Bounded by the setting the endpoint comes from (SBX_DOCKER_HOSTS, 2 KiB
 * for all hosts). */
#define SBX__DOCKER_FIELD_MAX 256

typedef struct sbx__docker_link {
    char base[SBX__DOCKER_FIELD_MAX];   /* "https://h:p", or "http://docker" over a socket */
    char *unix_path;                    /* NULL over TCP */
    char *tls_ca, *tls_cert, *tls_key;  /* https: PEM files; else NULL */
    sbx_ssh_tunnel *tunnel;             /* ssh: unix_path is its local end */
    char *tunnel_dir;                   /* ssh: the private dir of that socket */
    char remote_socket[SBX__DOCKER_FIELD_MAX];  /* ssh: the engine's socket over there */
} sbx__docker_link;

/* Checks host h of cfg (as sbx_docker_check_config does) and makes its
 * link; an ssh host's tunnel starts at once, and on_state (may be NULL) is
 * called from the loop when it comes up or goes down. On failure the link
 * holds nothing; sbx__docker_link_free() is fine either way. */
int sbx__docker_link_new(sbx_loop *loop, const sbx_docker_config *cfg, const sbx_docker_host *h,
                         void (*on_state)(void *arg, int up), void *arg, sbx__docker_link *out,
                         char *err, size_t errlen);
void sbx__docker_link_free(sbx__docker_link *l);
/* Sets q's transport fields (socket, TLS files); q->url is the caller's,
 * l->base followed by the path. */
void sbx__docker_link_req(const sbx__docker_link *l, sbx_http_req *q);
/* The same for a plain libcurl easy handle (CURL *), for the blocking
 * deletes at worker exit. */
void sbx__docker_link_curl(const sbx__docker_link *l, void *easy);
/* 1 unless an ssh host's tunnel is down; *why (may be NULL) says ssh's
 * reason, "" when up. */
int sbx__docker_link_up(const sbx__docker_link *l, const char **why);

#endif
