/* lease.c — the Lua scripts behind lease.h and their typed replies.
 *
 * Each script is the whole decision: Redis runs a script atomically, so
 * "is the project busy? is a slot free? take it, stamp a token" cannot
 * interleave with another worker. The scripts return flat arrays whose first
 * element is the status word.
 */
#include "lease.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reaping is bounded per call so one acquire never runs long inside Redis. */
/* A pool registers at most this many slots per call (redis.c EVAL_MAX_ARGS). */
#define EVAL_ARGS_MAX_LEASE 64

#define REAP_LUA                                                                          \
    "local t = redis.call('TIME')\n"                                                      \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"            \
    "local reaped = 0\n"                                                                  \
    "for _, slot in ipairs(redis.call('ZRANGEBYSCORE', '{sbx}:deadlines', '-inf', now,"  \
    " 'LIMIT', 0, 64)) do\n"                                                              \
    "  local lk = '{sbx}:lease:' .. slot\n"                                               \
    "  local l = redis.call('HMGET', lk, 'project', 'pool')\n"                            \
    "  if l[1] and redis.call('GET', '{sbx}:project:' .. l[1]) == slot then\n"            \
    "    redis.call('DEL', '{sbx}:project:' .. l[1])\n"                                   \
    "  end\n"                                                                             \
    "  redis.call('DEL', lk)\n"                                                           \
    "  redis.call('ZREM', '{sbx}:deadlines', slot)\n"                                     \
    "  if l[2] and redis.call('SISMEMBER', '{sbx}:slots:' .. l[2], slot) == 1 then\n"    \
    "    redis.call('SADD', '{sbx}:free:' .. l[2], slot)\n"                               \
    "  end\n"                                                                             \
    "  reaped = reaped + 1\n"                                                             \
    "end\n"

/* ARGV: pool, project, job, worker, ttl_ms, token floor */
static const char acquire_lua[] =
    REAP_LUA
    "local pool, project, job, worker, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4],"
    " tonumber(ARGV[5])\n"
    "local held = redis.call('GET', '{sbx}:project:' .. project)\n"
    "if held then\n"
    "  local l = redis.call('HMGET', '{sbx}:lease:' .. held, 'job', 'expires')\n"
    "  local left = (tonumber(l[2]) or now) - now\n"
    "  if l[1] == job then return {'HELD', held, 0, left, reaped} end\n"
    "  return {'BUSY', held, 0, left, reaped}\n"
    "end\n"
    /* A slot on a VM whose agent stopped heartbeating is never handed out:
     * it leaves the pool (the agent registers again when it comes back).
     * Slots without a {sbx}:vm: hash (local, docker, fly) skip the check. */
    "local slot\n"
    "for _ = 1, 64 do\n"
    "  slot = redis.call('SPOP', '{sbx}:free:' .. pool)\n"
    "  if not slot then return {'NOCAP', '', 0, 0, reaped} end\n"
    "  local vm = string.match(slot, '^[^#]+')\n"
    "  local hb = redis.call('HMGET', '{sbx}:vm:' .. vm, 'heartbeat_ms', 'ttl_ms')\n"
    "  if not hb[1] or tonumber(hb[1]) + tonumber(hb[2] or 90000) >= now then break end\n"
    "  redis.call('SREM', '{sbx}:slots:' .. pool, slot)\n"
    "  redis.call('HSET', '{sbx}:vm:' .. vm, 'state', 'dead')\n"
    "  slot = nil\n"
    "end\n"
    "if not slot then return {'NOCAP', '', 0, 0, reaped} end\n"
    /* Tokens must outgrow every token PostgreSQL has seen, even after Redis
     * lost its data: the caller passes the run row's token as a floor. */
    "if (tonumber(redis.call('GET', '{sbx}:fence')) or 0) < tonumber(ARGV[6]) then\n"
    "  redis.call('SET', '{sbx}:fence', ARGV[6])\n"
    "end\n"
    "local token = redis.call('INCR', '{sbx}:fence')\n"
    "redis.call('HSET', '{sbx}:lease:' .. slot, 'job', job, 'project', project, 'worker',"
    " worker, 'token', token, 'pool', pool, 'expires', now + ttl)\n"
    "redis.call('SET', '{sbx}:project:' .. project, slot)\n"
    "redis.call('ZADD', '{sbx}:deadlines', now + ttl, slot)\n"
    "return {'OK', slot, token, ttl, reaped}\n";

/* ARGV: slot, token, ttl_ms, job, project, worker, pool.
 * A lease whose key is gone (Redis restarted without its data) is taken
 * back when neither the slot nor the project has another holder: the build
 * goes on, and the fence counter is lifted above the token. An expired lease
 * is lost for good (its owner stopped trusting it before it expired). */
static const char renew_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local slot, tok, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"
    "local job, project, worker, pool = ARGV[4], ARGV[5], ARGV[6], ARGV[7]\n"
    "local lk = '{sbx}:lease:' .. slot\n"
    "local l = redis.call('HMGET', lk, 'token', 'expires')\n"
    "local restored = 0\n"
    "if not l[1] then\n"
    "  local held = redis.call('GET', '{sbx}:project:' .. project)\n"
    "  if held and held ~= slot then return {'LOST', '', 0, 0, 0} end\n"
    "  if (tonumber(redis.call('GET', '{sbx}:fence')) or 0) < tonumber(tok) then\n"
    "    redis.call('SET', '{sbx}:fence', tok)\n"
    "  end\n"
    "  redis.call('HSET', lk, 'job', job, 'project', project, 'worker', worker, 'token', tok,"
    " 'pool', pool)\n"
    "  redis.call('SREM', '{sbx}:free:' .. pool, slot)\n"
    "  redis.call('SET', '{sbx}:project:' .. project, slot)\n"
    "  restored = 1\n"
    "elseif l[1] ~= tok or tonumber(l[2]) < now then\n"
    "  return {'LOST', '', 0, 0, 0}\n"
    "end\n"
    "redis.call('HSET', lk, 'expires', now + ttl)\n"
    "redis.call('ZADD', '{sbx}:deadlines', now + ttl, slot)\n"
    "return {'OK', slot, tonumber(tok), ttl, restored}\n";

/* ARGV: floor. Lifts the token counter to at least floor: after Redis lost
 * its data, workers feed it the newest token PostgreSQL recorded, so no
 * token is ever handed out twice to one slot or run. */
static const char fence_lua[] =
    "if (tonumber(redis.call('GET', '{sbx}:fence')) or 0) < tonumber(ARGV[1]) then\n"
    "  redis.call('SET', '{sbx}:fence', ARGV[1])\n"
    "  return {'OK', '', tonumber(ARGV[1]), 0, 1}\n"
    "end\n"
    "return {'OK', '', tonumber(redis.call('GET', '{sbx}:fence')), 0, 0}\n";

/* ARGV: slot, token */
static const char release_lua[] =
    "local slot = ARGV[1]\n"
    "local lk = '{sbx}:lease:' .. slot\n"
    "local l = redis.call('HMGET', lk, 'token', 'project', 'pool')\n"
    "if l[1] ~= ARGV[2] then return {'LOST', '', 0, 0, 0} end\n"
    "if redis.call('GET', '{sbx}:project:' .. l[2]) == slot then\n"
    "  redis.call('DEL', '{sbx}:project:' .. l[2])\n"
    "end\n"
    "redis.call('DEL', lk)\n"
    "redis.call('ZREM', '{sbx}:deadlines', slot)\n"
    "if redis.call('SISMEMBER', '{sbx}:slots:' .. l[3], slot) == 1 then\n"
    "  redis.call('SADD', '{sbx}:free:' .. l[3], slot)\n"
    "end\n"
    "return {'OK', slot, tonumber(ARGV[2]), 0, 0}\n";

/* ARGV: pool, registrant, phase, slot...  A slot written "!<id>" is busy
 * with a build of the registrant's: registered, but not free (after Redis
 * lost its data, the lease that said so is gone). A pool's slot list may be long
 * (the bench provider registers 100k), so it arrives in chunks: phase
 * "first"/"more"/"last", or "only" for one chunk. Each chunk adds its slots
 * (free unless leased) and collects them in a per-registrant set; the last
 * drops the pool's slots that no chunk named. */
static const char register_lua[] =
    "local pool, tmp, phase = ARGV[1], '{sbx}:slots_new:' .. ARGV[1] .. ':' .. ARGV[2], ARGV[3]\n"
    "if phase == 'first' or phase == 'only' then redis.call('DEL', tmp) end\n"
    "for i = 4, #ARGV do\n"
    "  local s, busy = ARGV[i], false\n"
    "  if string.sub(s, 1, 1) == '!' then s, busy = string.sub(s, 2), true end\n"
    "  redis.call('SADD', tmp, s)\n"
    "  redis.call('SADD', '{sbx}:slots:' .. pool, s)\n"
    "  if busy then\n"
    "    redis.call('SREM', '{sbx}:free:' .. pool, s)\n"
    "  elseif redis.call('EXISTS', '{sbx}:lease:' .. s) == 0 then\n"
    "    redis.call('SADD', '{sbx}:free:' .. pool, s)\n"
    "  end\n"
    "end\n"
    "if phase == 'last' or phase == 'only' then\n"
    "  for _, s in ipairs(redis.call('SMEMBERS', '{sbx}:slots:' .. pool)) do\n"
    "    if redis.call('SISMEMBER', tmp, s) == 0 then\n"
    "      redis.call('SREM', '{sbx}:slots:' .. pool, s)\n"
    "      redis.call('SREM', '{sbx}:free:' .. pool, s)\n"
    "    end\n"
    "  end\n"
    "  redis.call('DEL', tmp)\n"
    "end\n"
    "return {'OK', '', 0, 0, 0}\n";

typedef struct call {
    sbx_lease_cb cb;
    void *arg;
    struct call *prev, *next;   /* outstanding calls, freed with sbx_leases */
    sbx_leases *l;
} call;

struct sbx_leases {
    sbx_redis *r;
    sbx_redis_script *acquire, *renew, *release, *reg, *fence;
    call *calls;    /* in flight: sbx_redis_free() drops their callbacks */
};

static void unlink_call(call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->l->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
}

const char *sbx_lease_status_name(sbx_lease_status s)
{
    static const char *const names[] = {"ok", "busy", "held", "no_capacity", "lost", "error"};
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}

int sbx_leases_new(sbx_redis *r, sbx_leases **out)
{
    sbx_leases *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->r = r;
    l->acquire = sbx_redis_script_new(acquire_lua);
    l->renew = sbx_redis_script_new(renew_lua);
    l->release = sbx_redis_script_new(release_lua);
    l->reg = sbx_redis_script_new(register_lua);
    l->fence = sbx_redis_script_new(fence_lua);
    if (!l->acquire || !l->renew || !l->release || !l->reg || !l->fence) {
        sbx_leases_free(l);
        return -ENOMEM;
    }
    *out = l;
    return 0;
}

void sbx_leases_free(sbx_leases *l)
{
    if (!l)
        return;
    while (l->calls) {
        call *c = l->calls;
        unlink_call(c);
        free(c);
    }
    sbx_redis_script_free(l->acquire);
    sbx_redis_script_free(l->renew);
    sbx_redis_script_free(l->release);
    sbx_redis_script_free(l->reg);
    sbx_redis_script_free(l->fence);
    free(l);
}

static int64_t int_elem(const redisReply *e)
{
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    if (e->type == REDIS_REPLY_STRING)
        return strtoll(e->str, NULL, 10);
    return 0;
}

static void on_reply(void *arg, redisReply *rep)
{
    call *c = arg;
    sbx_lease_reply out;
    static const struct { const char *word; sbx_lease_status st; } words[] = {
        {"OK", SBX_LEASE_OK},       {"BUSY", SBX_LEASE_BUSY}, {"HELD", SBX_LEASE_HELD},
        {"NOCAP", SBX_LEASE_NOCAP}, {"LOST", SBX_LEASE_LOST},
    };

    memset(&out, 0, sizeof(out));
    out.status = SBX_LEASE_ERROR;
    if (!rep) {
        out.error = "redis connection lost";
    } else if (rep->type == REDIS_REPLY_ERROR) {
        out.error = rep->str;
    } else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 5 ||
               rep->element[0]->type != REDIS_REPLY_STRING) {
        out.error = "unexpected reply shape from lease script";
    } else {
        for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
            if (strcmp(rep->element[0]->str, words[i].word) == 0)
                out.status = words[i].st;
        if (rep->element[1]->type == REDIS_REPLY_STRING)
            snprintf(out.slot, sizeof(out.slot), "%s", rep->element[1]->str);
        out.token = int_elem(rep->element[2]);
        out.ttl_left_ms = int_elem(rep->element[3]);
        out.reaped = (int)int_elem(rep->element[4]);
        if (out.status == SBX_LEASE_ERROR)
            out.error = "unknown status word from lease script";
    }
    unlink_call(c);
    if (c->cb)
        c->cb(c->arg, &out);
    free(c);
}

static int eval(sbx_leases *l, sbx_redis_script *s, sbx_lease_cb cb, void *arg, int argc,
                const char **argv)
{
    size_t lens[EVAL_ARGS_MAX_LEASE];
    call *c;
    int rc;

    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    c = malloc(sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->cb = cb;
    c->arg = arg;
    c->l = l;
    c->prev = NULL;
    c->next = l->calls;
    if (l->calls)
        l->calls->prev = c;
    l->calls = c;
    rc = sbx_redis_evalsha(l->r, s, on_reply, c, argc, argv, lens);
    if (rc) {
        unlink_call(c);
        free(c);
    }
    return rc;
}

int sbx_lease_acquire(sbx_leases *l, const char *pool, const char *project, const char *job,
                      const char *worker, int64_t ttl_ms, int64_t token_floor, sbx_lease_cb cb,
                      void *arg)
{
    char ttl[24], floor[24];
    const char *argv[] = {"0", pool, project, job, worker, ttl, floor};
    snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_ms);
    snprintf(floor, sizeof(floor), "%" PRId64, token_floor);
    return eval(l, l->acquire, cb, arg, 7, argv);
}

int sbx_lease_renew(sbx_leases *l, const sbx_lease_id *id, int64_t ttl_ms, sbx_lease_cb cb,
                    void *arg)
{
    char tok[24], ttl[24];
    const char *argv[] = {"0", id->slot, tok, ttl, id->job, id->project, id->worker, id->pool};
    snprintf(tok, sizeof(tok), "%" PRId64, id->token);
    snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_ms);
    return eval(l, l->renew, cb, arg, 8, argv);
}

int sbx_lease_fence_floor(sbx_leases *l, int64_t floor, sbx_lease_cb cb, void *arg)
{
    char f[24];
    const char *argv[] = {"0", f};
    snprintf(f, sizeof(f), "%" PRId64, floor);
    return eval(l, l->fence, cb, arg, 2, argv);
}

int sbx_lease_release(sbx_leases *l, const char *slot, int64_t token, sbx_lease_cb cb,
                      void *arg)
{
    char tok[24];
    const char *argv[] = {"0", slot, tok};
    snprintf(tok, sizeof(tok), "%" PRId64, token);
    return eval(l, l->release, cb, arg, 3, argv);
}

int sbx_lease_register(sbx_leases *l, const char *pool, const char *registrant,
                       const char *const *slots, int nslots, sbx_lease_cb cb, void *arg)
{
    /* 4 leading arguments ("0", pool, registrant, phase) plus the chunk. */
    enum { CHUNK = EVAL_ARGS_MAX_LEASE - 4 };
    const char *argv[EVAL_ARGS_MAX_LEASE];
    int done = 0;

    argv[0] = "0";
    argv[1] = pool;
    argv[2] = registrant;
    do {
        int n = nslots - done < CHUNK ? nslots - done : CHUNK;
        int last = done + n == nslots;
        int rc;
        argv[3] = done == 0 ? (last ? "only" : "first") : (last ? "last" : "more");
        for (int i = 0; i < n; i++)
            argv[i + 4] = slots[done + i];
        /* Only the last chunk reports; Redis runs the chunks in order. */
        rc = eval(l, l->reg, last ? cb : NULL, last ? arg : NULL, n + 4, argv);
        if (rc)
            return rc;
        done += n;
    } while (done < nslots);
    return 0;
}
