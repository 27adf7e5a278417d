/* registry.c — the calls behind registry.h: common/lua/beat.lua and
 * leave.lua, each one EVALSHA.
 *
 * Both scripts derive the slot ids from the id and the capacity, so a call
 * carries 8 arguments whatever the capacity (redis.c caps EVAL arguments).
 * Time is Redis' own (TIME), like the lease scripts: the acquire script
 * compares heartbeat_ms with its own clock, never with ours.
 */
#include "registry.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_config.h"
#include "rscripts.h"

struct sbx_registry {
    sbx_redis *r;
    sbx_redis_script *beat, *leave;
    char *id, *base_url, *labels;
    char capacity[16], ttl[16];
    int ncap;
    int registered;   /* a full beat went through on this connection */
};

typedef struct call {
    sbx_registry *g;
    sbx_registry_cb cb;
    void *arg;
    int full;
} call;

int sbx_registry_new(sbx_redis *r, const sbx_registry_config *cfg, sbx_registry **out)
{
    sbx_registry *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->r = r;
    g->beat = sbx_redis_script_new(sbx_lua_beat);
    g->leave = sbx_redis_script_new(sbx_lua_leave);
    g->id = strdup(cfg->id);
    g->base_url = strdup(cfg->base_url);
    g->labels = strdup(cfg->labels ? cfg->labels : "");
    g->ncap = cfg->capacity;
    snprintf(g->capacity, sizeof(g->capacity), "%d", cfg->capacity);
    snprintf(g->ttl, sizeof(g->ttl), "%d", cfg->ttl_ms);
    if (!g->beat || !g->leave || !g->id || !g->base_url || !g->labels ||
        cfg->capacity < 1 || cfg->capacity > SBX_AGENT_CAPACITY_MAX) {
        sbx_registry_free(g);
        return cfg->capacity < 1 || cfg->capacity > SBX_AGENT_CAPACITY_MAX ? -EINVAL : -ENOMEM;
    }
    *out = g;
    return 0;
}

void sbx_registry_free(sbx_registry *g)
{
    if (!g)
        return;
    sbx_redis_script_free(g->beat);
    sbx_redis_script_free(g->leave);
    free(g->id);
    free(g->base_url);
    free(g->labels);
    free(g);
}

static void on_reply(void *arg, redisReply *rep)
{
    call *c = arg;
    const char *error = NULL;

    if (!rep)
        error = "redis connection lost";
    else if (rep->type == REDIS_REPLY_ERROR)
        error = rep->str;
    else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2)
        error = "unexpected reply shape from registry script";
    if (!error && c->full)
        c->g->registered = 1;
    if (c->cb)
        c->cb(c->arg, error == NULL, error);
    free(c);
}

static int eval(sbx_registry *g, sbx_redis_script *s, int full, int argc, const char **argv,
                sbx_registry_cb cb, void *arg)
{
    size_t lens[16];
    call *c;
    int rc;

    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->g = g;
    c->cb = cb;
    c->arg = arg;
    c->full = full;
    rc = sbx_redis_evalsha(g->r, s, on_reply, c, argc, argv, lens);
    if (rc)
        free(c);
    return rc;
}

int sbx_registry_beat(sbx_registry *g, const char *state, const int *busy, sbx_registry_cb cb,
                      void *arg)
{
    char flags[SBX_AGENT_CAPACITY_MAX + 1];
    const char *argv[9];
    int full;

    if (!sbx_redis_connected(g->r)) {
        g->registered = 0;
        return -ENOTCONN;
    }
    for (int i = 0; i < g->ncap; i++)
        flags[i] = busy && busy[i] ? '1' : '0';
    flags[g->ncap] = '\0';
    full = !g->registered;
    argv[0] = "0";
    argv[1] = g->id;
    argv[2] = g->capacity;
    argv[3] = g->base_url;
    argv[4] = g->labels;
    argv[5] = g->ttl;
    argv[6] = state;
    argv[7] = flags;
    argv[8] = full ? "1" : "0";
    return eval(g, g->beat, full, 9, argv, cb, arg);
}

void sbx_registry_reset(sbx_registry *g) { g->registered = 0; }

int sbx_registry_leave(sbx_registry *g, sbx_registry_cb cb, void *arg)
{
    const char *argv[] = {"0", g->id, g->capacity};
    return eval(g, g->leave, 0, 3, argv, cb, arg);
}
