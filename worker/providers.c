/* providers.c — builds the providers SBX_PROVIDER names from the worker's
 * configuration (one, or several in spill-over order). The job state machine
 * sees only provider.h; this is the one place that knows every backend, and
 * the one table of their names.
 *
 * The benchmark provider (tests/bench/provider_bench.c) is compiled in only
 * when this file is built with SBX_WITH_BENCH, for the sbx-worker-bench
 * binary of `make bench`; a production sbx-worker does not know its name. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "docker_hosts.h"
#include "provider_docker.h"
#include "provider_fly.h"
#include "provider_vmpool.h"
#include "log.h"
#include "worker.h"
#ifdef SBX_WITH_BENCH
#include "provider_bench.h"
#endif

/* SBX_DOCKER_HOSTS entries; a worker drives a handful of engines. */
#define DOCKER_HOSTS_MAX 32

static int make_local(sbx_worker *w, sbx_provider **out, char *err, size_t errlen)
{
    sbx_local_config lc;
    memset(&lc, 0, sizeof(lc));
    lc.node = w->cfg.node;
    lc.slots = w->cfg.local_slots;
    lc.work_dir = w->cfg.work_dir;
    lc.uid_base = w->cfg.uid_base;
    lc.allow_network = w->cfg.allow_network;
    lc.egress_allow = w->cfg.egress_allow;
    lc.egress_deny = w->cfg.egress_deny;
    lc.default_memory_mb = 1024;
    lc.default_pids = 256;
    lc.default_cpus = 1;
    lc.kill_grace_ms = 2000;
    lc.bwrap = "bwrap";
    return sbx_local_new(w->loop, &lc, out, err, errlen);
}

/* The docker provider's config from SBX_DOCKER_*; hosts point into buf. */
static int docker_settings(const sbx_config *cfg, char *buf, size_t buflen, sbx_docker_host *hosts,
                           sbx_docker_config *dc, char *err, size_t errlen)
{
    size_t n;
    int rc;

    snprintf(buf, buflen, "%s", cfg->docker_hosts);
    if ((rc = sbx_docker_parse_hosts(buf, hosts, DOCKER_HOSTS_MAX, &n, err, errlen)) < 0)
        return rc;
    memset(dc, 0, sizeof(*dc));
    dc->worker_id = cfg->worker_id;
    dc->hosts = hosts;
    dc->nhosts = n;
    dc->default_image = cfg->docker_image[0] ? cfg->docker_image : NULL;
    dc->registry_auth = cfg->docker_registry_auth[0] ? cfg->docker_registry_auth : NULL;
    dc->allow_network = cfg->allow_network;
    dc->insecure_tcp = cfg->docker_insecure_tcp;
    dc->cert_dir = cfg->docker_cert_dir;
    dc->ssh_known_hosts = cfg->docker_ssh_known_hosts;
    dc->ssh_key = cfg->docker_ssh_key;
    return 0;
}

int sbx__docker_check(const sbx_config *cfg, char *err, size_t errlen)
{
    char buf[sizeof(cfg->docker_hosts)];
    sbx_docker_host hosts[DOCKER_HOSTS_MAX];
    sbx_docker_config dc;
    int rc = docker_settings(cfg, buf, sizeof(buf), hosts, &dc, err, errlen);
    return rc ? rc : sbx_docker_check_config(&dc, err, errlen);
}

int sbx__docker_probe(const sbx_config *cfg, int timeout_ms,
                      void (*report)(void *arg, const char *host, int ok, const char *msg),
                      void *arg, char *err, size_t errlen)
{
    char buf[sizeof(cfg->docker_hosts)];
    sbx_docker_host hosts[DOCKER_HOSTS_MAX];
    sbx_docker_config dc;
    int rc = docker_settings(cfg, buf, sizeof(buf), hosts, &dc, err, errlen);
    return rc ? rc : sbx_docker_probe(&dc, timeout_ms, report, arg, err, errlen);
}

static int make_docker(sbx_worker *w, sbx_provider **out, char *err, size_t errlen)
{
    /* static: the provider keeps pointers into neither, but its config
     * names them while it is made. */
    static char buf[sizeof(w->cfg.docker_hosts)];
    static sbx_docker_host hosts[DOCKER_HOSTS_MAX];
    sbx_docker_config dc;
    int rc = docker_settings(&w->cfg, buf, sizeof(buf), hosts, &dc, err, errlen);
    if (rc)
        return rc;
    return sbx_docker_new(w->loop, &dc, out, err, errlen);
}

static int make_fly(sbx_worker *w, sbx_provider **out, char *err, size_t errlen)
{
    sbx_fly_config fc;
    int rc = sbx_fly_config_from_env(&fc, w->cfg.worker_id, err, errlen);
    if (rc)
        return rc;
    return sbx_fly_new(w->loop, &fc, out, err, errlen);
}

static int make_vmpool(sbx_worker *w, sbx_provider **out, char *err, size_t errlen)
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
    return sbx_vmpool_new(w->loop, &vc, out, err, errlen);
}

#ifdef SBX_WITH_BENCH
/* Read here, not in the settings table: a production worker has no such
 * settings. */
static int bench_env(const char *name, int def, int min, int max, int *out, char *err,
                     size_t errlen)
{
    const char *v = getenv(name);
    char *end;
    long n;
    *out = def;
    if (!v || !*v)
        return 0;
    n = strtol(v, &end, 10);
    if (*end || n < min || n > max) {
        snprintf(err, errlen, "%s=%s is not valid: use a number in %d..%d", name, v, min, max);
        return -EINVAL;
    }
    *out = (int)n;
    return 0;
}

static int make_bench(sbx_worker *w, sbx_provider **out, char *err, size_t errlen)
{
    int slots, hold_ms, rc;
    if ((rc = bench_env("SBX_BENCH_SLOTS", 100000, 1, 10000000, &slots, err, errlen)) ||
        (rc = bench_env("SBX_BENCH_HOLD_MS", 0, 0, 86400000, &hold_ms, err, errlen)))
        return rc;
    return sbx_bench_new(w->loop, w->cfg.node, slots, hold_ms, out, err, errlen);
}
#endif

static const struct {
    const char *name;
    sbx_provider_kind kind;
    int (*make)(sbx_worker *w, sbx_provider **out, char *err, size_t errlen);
} kinds[] = {
    {"local", SBX_PROVIDER_LOCAL, make_local},
    {"vmpool", SBX_PROVIDER_VMPOOL, make_vmpool},
    {"docker", SBX_PROVIDER_DOCKER, make_docker},
    {"fly", SBX_PROVIDER_FLY, make_fly},
#ifdef SBX_WITH_BENCH
    {"bench", SBX_PROVIDER_BENCH, make_bench},
#endif
};
#define NKINDS (sizeof(kinds) / sizeof(kinds[0]))

int sbx__provider_parse(const char *name, sbx_provider_kind *out)
{
    for (size_t i = 0; i < NKINDS; i++)
        if (strcmp(kinds[i].name, name) == 0) {
            *out = kinds[i].kind;
            return 0;
        }
    return -EINVAL;
}

void sbx__provider_sweep(sbx_worker *w)
{
    for (int i = 0; i < w->nprov; i++)
        if (w->provs[i]->ops->sweep)
            w->provs[i]->ops->sweep(w->provs[i]);
}

sbx_provider *sbx__provider_named(const sbx_worker *w, const char *name)
{
    for (int i = 0; i < w->nprov; i++)
        if (strcmp(w->provs[i]->ops->name, name) == 0)
            return w->provs[i];
    return NULL;
}

sbx_provider *sbx__provider_of_pool(const sbx_worker *w, const char *pool)
{
    for (int i = 0; i < w->nprov; i++)
        if (strcmp(w->provs[i]->ops->pool(w->provs[i]), pool) == 0)
            return w->provs[i];
    return NULL;
}

int sbx__provider_new(sbx_worker *w, char *err, size_t errlen)
{
    size_t off = 0;
    for (int k = 0; k < w->cfg.nproviders; k++) {
        size_t i = 0;
        const char *pool;
        int rc;
        while (i < NKINDS && kinds[i].kind != w->cfg.provider_kinds[k])
            i++;
        if (i == NKINDS) {
            snprintf(err, errlen, "a provider of %s is not built into this binary",
                     w->cfg.provider);
            return -EINVAL;
        }
        if ((rc = kinds[i].make(w, &w->provs[w->nprov], err, errlen)) != 0) {
            char why[512];
            snprintf(why, sizeof(why), "%s", err);
            snprintf(err, errlen, "provider %s: %s", kinds[i].name, why);
            return rc;
        }
        pool = w->provs[w->nprov]->ops->pool(w->provs[w->nprov]);
        w->nprov++;
        off += (size_t)snprintf(w->pools + off, sizeof(w->pools) - off, "%s%s", off ? "," : "",
                                pool);
    }
    return 0;
}
