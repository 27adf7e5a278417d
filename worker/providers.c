/* providers.c — builds the provider named by SBX_PROVIDER from the worker's
 * configuration. The job state machine sees only provider.h; this is the one
 * place that knows every backend. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "provider_bench.h"
#include "provider_docker.h"
#include "provider_fly.h"
#include "provider_vmpool.h"
#include "log.h"
#include "worker.h"

/* SBX_DOCKER_HOSTS entries; a worker drives a handful of engines. */
#define DOCKER_HOSTS_MAX 32

static int make_local(sbx_worker *w, char *err, size_t errlen)
{
    sbx_local_config lc;
    memset(&lc, 0, sizeof(lc));
    lc.node = w->cfg.node;
    lc.slots = w->cfg.local_slots;
    lc.work_dir = w->cfg.work_dir;
    lc.uid_base = w->cfg.uid_base;
    lc.allow_network = w->cfg.allow_network;
    lc.default_memory_mb = 1024;
    lc.default_pids = 256;
    lc.default_cpus = 1;
    lc.kill_grace_ms = 2000;
    lc.bwrap = "bwrap";
    return sbx_local_new(w->loop, &lc, &w->prov, err, errlen);
}

/* "name=endpoint@capacity,..." — the endpoint may hold ':' and '/', so the
 * capacity is after the last '@'. The strings are cut in place in buf. */
static int parse_docker_hosts(char *buf, sbx_docker_host *hosts, size_t *n, char *err,
                              size_t errlen)
{
    *n = 0;
    for (char *item = strtok(buf, ","); item; item = strtok(NULL, ",")) {
        char *eq = strchr(item, '='), *at = strrchr(item, '@'), *end;
        long cap;
        if (*n == DOCKER_HOSTS_MAX) {
            snprintf(err, errlen, "SBX_DOCKER_HOSTS: more than %d hosts", DOCKER_HOSTS_MAX);
            return -EINVAL;
        }
        if (!eq || !at || at < eq) {
            snprintf(err, errlen, "SBX_DOCKER_HOSTS entry '%s' is not name=endpoint@capacity",
                     item);
            return -EINVAL;
        }
        *eq = *at = '\0';
        cap = strtol(at + 1, &end, 10);
        if (*end || cap < 1 || cap > 10000) {
            snprintf(err, errlen, "SBX_DOCKER_HOSTS: capacity of %s must be 1..10000", item);
            return -EINVAL;
        }
        hosts[*n].name = item;
        hosts[*n].endpoint = eq + 1;
        hosts[*n].capacity = (int)cap;
        (*n)++;
    }
    return 0;
}

static int make_docker(sbx_worker *w, char *err, size_t errlen)
{
    static char buf[sizeof(w->cfg.docker_hosts)];
    static sbx_docker_host hosts[DOCKER_HOSTS_MAX];
    sbx_docker_config dc;
    size_t n;
    int rc;

    snprintf(buf, sizeof(buf), "%s", w->cfg.docker_hosts);
    rc = parse_docker_hosts(buf, hosts, &n, err, errlen);
    if (rc)
        return rc;
    memset(&dc, 0, sizeof(dc));
    dc.worker_id = w->cfg.worker_id;
    dc.hosts = hosts;
    dc.nhosts = n;
    dc.default_image = w->cfg.docker_image[0] ? w->cfg.docker_image : NULL;
    dc.allow_network = w->cfg.allow_network;
    return sbx_docker_new(w->loop, &dc, &w->prov, err, errlen);
}

static int make_fly(sbx_worker *w, char *err, size_t errlen)
{
    sbx_fly_config fc;
    int rc = sbx_fly_config_from_env(&fc, w->cfg.worker_id, err, errlen);
    if (rc)
        return rc;
    return sbx_fly_new(w->loop, &fc, &w->prov, err, errlen);
}

static int make_vmpool(sbx_worker *w, char *err, size_t errlen)
{
    sbx_vmpool_config vc;
    /* From the environment only, so the key never shows in `ps`. */
    const char *key = getenv("SBX_VMPOOL_KEY");
    if (!key || !*key) {
        snprintf(err, errlen, "SBX_VMPOOL_KEY is not set: set it to the agents' SBX_AGENT_KEY");
        return -EINVAL;
    }
    memset(&vc, 0, sizeof(vc));
    vc.redis_url = w->cfg.redis_url;
    vc.service_key = key;
    return sbx_vmpool_new(w->loop, &vc, &w->prov, err, errlen);
}

static void on_fly_swept(void *arg, int destroyed, int failed, const char *err)
{
    (void)arg;
    if (destroyed || failed || (err && *err))
        sbx_info("fly", "sweep: %d orphaned machines destroyed, %d failed%s%s", destroyed, failed,
                 err && *err ? ": " : "", err ? err : "");
}

void sbx__provider_sweep(sbx_worker *w)
{
    /* Orphans: sandboxes labelled with this worker's id that no run of ours
     * watches (a crashed predecessor with the same SBX_WORKER_ID). The local
     * provider kills leftovers of a slot's uid before every build instead;
     * vmpool agents refuse stale tokens and stop older builds themselves. */
    if (strcmp(w->cfg.provider, "docker") == 0)
        sbx_docker_sweep(w->prov, NULL, NULL);
    else if (strcmp(w->cfg.provider, "fly") == 0)
        sbx_fly_sweep(w->prov, NULL, on_fly_swept, w);
}

int sbx__provider_new(sbx_worker *w, char *err, size_t errlen)
{
    if (strcmp(w->cfg.provider, "vmpool") == 0)
        return make_vmpool(w, err, errlen);
    if (strcmp(w->cfg.provider, "bench") == 0)
        return sbx_bench_new(w->loop, w->cfg.node, w->cfg.bench_slots, w->cfg.bench_hold_ms,
                             &w->prov, err, errlen);
    if (strcmp(w->cfg.provider, "docker") == 0)
        return make_docker(w, err, errlen);
    if (strcmp(w->cfg.provider, "fly") == 0)
        return make_fly(w, err, errlen);
    return make_local(w, err, errlen);
}
