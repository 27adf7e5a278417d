/* registry.c — the Lua behind registry.h.
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

#define SLOTS_LUA                                                                     \
    "local id, cap = ARGV[1], tonumber(ARGV[2])\n"                                    \
    "local function slot(i)\n"                                                         \
    "  if cap == 1 then return id end\n"                                               \
    "  return id .. '#' .. (i - 1)\n"                                                  \
    "end\n"

/* ARGV: id, capacity, base_url, labels, ttl_ms, state, busy flags ("0"/"1"
 * per slot), full ("1": first beat after connecting: also drop slots of
 * this id that an earlier capacity left in the pool). */
static const char beat_lua[] =
    SLOTS_LUA
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local state = ARGV[6]\n"
    "redis.call('HSET', '{sbx}:vm:' .. id, 'base_url', ARGV[3], 'capacity', ARGV[2],"
    " 'labels', ARGV[4], 'heartbeat_ms', now, 'ttl_ms', ARGV[5], 'state', state)\n"
    "if state == 'draining' then return {now, 0} end\n"
    "local mine = {}\n"
    "for i = 1, cap do mine[slot(i)] = true end\n"
    "if ARGV[8] == '1' then\n"
    "  for _, s in ipairs(redis.call('SMEMBERS', '{sbx}:slots:vmpool')) do\n"
    "    if not mine[s] and (s == id or string.sub(s, 1, #id + 1) == id .. '#') then\n"
    "      redis.call('SREM', '{sbx}:slots:vmpool', s)\n"
    "      redis.call('SREM', '{sbx}:free:vmpool', s)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local freed = 0\n"
    "for i = 1, cap do\n"
    "  local s = slot(i)\n"
    "  redis.call('SADD', '{sbx}:slots:vmpool', s)\n"
    "  if redis.call('EXISTS', '{sbx}:lease:' .. s) == 0 then\n"
    "    if string.sub(ARGV[7], i, i) == '0' then\n"
    "      freed = freed + redis.call('SADD', '{sbx}:free:vmpool', s)\n"
    "    else\n"
    /* A build runs here whose lease is gone (its worker died and the lease
     * was reaped): handing the slot out now would only meet 409 busy. */
    "      redis.call('SREM', '{sbx}:free:vmpool', s)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return {now, freed}\n";

/* ARGV: id, capacity */
static const char leave_lua[] =
    SLOTS_LUA
    "redis.call('HSET', '{sbx}:vm:' .. id, 'state', 'draining')\n"
    "local kept = 0\n"
    "for i = 1, cap do\n"
    "  local s = slot(i)\n"
    "  if redis.call('EXISTS', '{sbx}:lease:' .. s) == 0 then\n"
    "    redis.call('SREM', '{sbx}:slots:vmpool', s)\n"
    "    redis.call('SREM', '{sbx}:free:vmpool', s)\n"
    "  else\n"
    "    kept = kept + 1\n"
    "  end\n"
    "end\n"
    "return {0, kept}\n";

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
    g->beat = sbx_redis_script_new(beat_lua);
    g->leave = sbx_redis_script_new(leave_lua);
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
