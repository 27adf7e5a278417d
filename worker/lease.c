/* lease.c — the calls behind lease.h and their typed replies.
 *
 * Each script (common/lua/acquire.lua, renew, fence, release, register) is
 * the whole decision: Redis runs a script atomically, so "is the project
 * busy? is a slot free? take it, stamp a token" cannot interleave with
 * another worker. The scripts return flat arrays whose first element is the
 * status word; here each becomes an sbx_lease_reply.
 */
#include "lease.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rscripts.h"

/* A pool registers at most this many slots per call (redis.c EVAL_MAX_ARGS). */
#define EVAL_ARGS_MAX_LEASE 64

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

int sbx_leases_new(sbx_redis *r, sbx_leases **out)
{
    sbx_leases *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->r = r;
    l->acquire = sbx_redis_script_new(sbx_lua_acquire);
    l->renew = sbx_redis_script_new(sbx_lua_renew);
    l->release = sbx_redis_script_new(sbx_lua_release);
    l->reg = sbx_redis_script_new(sbx_lua_register);
    l->fence = sbx_redis_script_new(sbx_lua_fence);
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
        {"NOCAP", SBX_LEASE_NOCAP}, {"LOST", SBX_LEASE_LOST}, {"QUIET", SBX_LEASE_QUIET},
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

int sbx_lease_fence_floor(sbx_leases *l, int64_t floor, int64_t ttl_ms, sbx_lease_cb cb,
                          void *arg)
{
    char f[24], ttl[24];
    const char *argv[] = {"0", f, ttl};
    snprintf(f, sizeof(f), "%" PRId64, floor);
    snprintf(ttl, sizeof(ttl), "%" PRId64, ttl_ms);
    return eval(l, l->fence, cb, arg, 3, argv);
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
