/* fly_warm.c — the fly provider's warm pool: n machines created, booted and
 * suspended ahead (fly_warm.h).
 *
 * Why suspended: Fly's own answer to slow starts is a machine created ahead
 * and suspended, which a start resumes in "a few hundred ms" (fly.io/docs/
 * reference/suspend-resume, "Typical performance"; the same page puts
 * suspend forward for fast starts over stop/start, which boots afresh). A
 * suspended machine costs its storage only. So each slot of the pool walks
 * CREATE -> BOOT (wait started) -> SUSPEND -> SETTLE (wait suspended) ->
 * READY; a take hands a READY machine to a session run (fly_session.c
 * resumes it there) and the slot starts over at once. A slot that fails
 * anywhere destroys what it made and tries again after FLY_WARM_RETRY_MS;
 * a machine of the defaults that Fly cannot suspend (more than 2 GB: the
 * page's "Requirements") turns that slot off rather than keep a started
 * machine billing.
 *
 * Each slot has one API call at a time (its own sbx__fly_call), so the
 * pool's requests stay within Fly's per-machine rate (1 req/s, burst 3).
 * Creates go out unretried, as every create here does (a 5xx may have made
 * the machine): a lost one is an orphan with this pool's tag, which the
 * provider destroys at exit only if it knew its id; the next process with
 * this worker id sweeps any other (its tag differs).
 */
#include "fly_warm.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Far above any sensible SBX_WARM for one worker's slots; bounds the array. */
#define FLY_WARM_MAX 64
#define FLY_WARM_RETRY_MS 5000
#define FLY_WARM_WAIT_S 10
#define FLY_WARM_WAIT_SLACK_MS 15000
/* Machines being destroyed after a failed adoption, at most (more are left
 * to the next process's sweep). */
#define FLY_WARM_DROPS 16

typedef enum wstate { W_OFF, W_CREATE, W_BOOT, W_SUSPEND, W_SETTLE, W_READY, W_DROP } wstate;

static const char *const wnames[] = {"off", "create", "boot", "suspend", "settle", "ready",
                                     "drop"};

typedef struct wslot {
    sbx__fly_warm *w;
    wstate st;
    char id[SBX_FLY_ID_MAX + 1];
    char ip[SBX_FLY_IP_MAX + 1];
    uint64_t t0, deadline_ms;
    int off;                      /* the defaults cannot be suspended: stay empty */
    sbx__fly_call call;
    sbx_timer retry_t;
} wslot;

/* A taken machine whose adoption failed: destroyed on its own call. */
typedef struct wdrop {
    int used;
    sbx__fly_call call;
} wdrop;

struct sbx__fly_warm {
    sbx__fly_sessions *S;
    char tag[17];
    char worker[128];
    char image[256];
    int cpus, mem_mb;
    size_t n;
    wslot slots[FLY_WARM_MAX];
    wdrop drops[FLY_WARM_DROPS];
};

static void wset(wslot *x, wstate st)
{
    sbx_debug("fly", "warm machine %s %s -> %s", x->id[0] ? x->id : "-", wnames[x->st],
              wnames[st]);
    x->st = st;
}

static void w_create(wslot *x);

static void retry_fire(sbx_timer *t) { w_create(t->data); }

static void on_dropped(sbx__fly_call *c, const sbx_http_res *res)
{
    wslot *x = c->owner;
    (void)res;                    /* a machine not destroyed is the next sweep's */
    x->id[0] = x->ip[0] = '\0';
    if (x->off) {
        wset(x, W_OFF);
        return;
    }
    wset(x, W_CREATE);
    sbx_timer_start(x->w->S->loop, &x->retry_t, FLY_WARM_RETRY_MS);
}

/* Something failed: destroy what the slot made, then start over later. */
static void w_fail(wslot *x, const char *what, const sbx_http_res *res)
{
    char why[200];
    sbx__fly_api_error(res, why, sizeof(why));
    sbx_warn("fly", "warm machine %s: %s: %s; trying again", x->id[0] ? x->id : "-", what, why);
    if (!x->id[0]) {
        wset(x, W_CREATE);
        sbx_timer_start(x->w->S->loop, &x->retry_t, FLY_WARM_RETRY_MS);
        return;
    }
    wset(x, W_DROP);
    sbx__fly_call_start(&x->call, "DELETE", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX,
                        on_dropped, "/apps/%s/machines/%s?force=true", x->w->S->app, x->id);
}

static void on_settled(sbx__fly_call *c, const sbx_http_res *res)
{
    wslot *x = c->owner;
    if (res->code == SBX_HTTP_OK && res->status == 200) {
        wset(x, W_READY);
        sbx_info("fly", "warm machine %s ready (created and suspended in %llu ms)", x->id,
                 (unsigned long long)(sbx_now_ms() - x->t0));
        return;
    }
    w_fail(x, "waiting for suspended", res);
}

static void on_suspend(sbx__fly_call *c, const sbx_http_res *res)
{
    wslot *x = c->owner;
    char why[200];

    if (res->code == SBX_HTTP_OK && res->status == 200) {
        wset(x, W_SETTLE);
        sbx__fly_call_start(&x->call, "GET", NULL, 60000u + FLY_WARM_WAIT_SLACK_MS,
                            SBX_FLY_RETRY_5XX, on_settled,
                            "/apps/%s/machines/%s/wait?state=suspended&timeout=60",
                            x->w->S->app, x->id);
        return;
    }
    sbx__fly_api_error(res, why, sizeof(why));
    if (res->code == SBX_HTTP_OK && res->status == 412 && strstr(why, "cannot be suspended")) {
        sbx_warn("fly", "warm pool: the default machine cannot be suspended (%s); this slot "
                 "stays empty", why);
        x->off = 1;
        wset(x, W_DROP);
        sbx__fly_call_start(&x->call, "DELETE", NULL, SBX_FLY_CALL_TIMEOUT_MS,
                            SBX_FLY_RETRY_5XX, on_dropped, "/apps/%s/machines/%s?force=true",
                            x->w->S->app, x->id);
        return;
    }
    w_fail(x, "suspending", res);
}

static void w_boot(wslot *x);

static void on_boot(sbx__fly_call *c, const sbx_http_res *res)
{
    wslot *x = c->owner;
    if (res->code == SBX_HTTP_OK && res->status == 200) {
        wset(x, W_SUSPEND);
        sbx__fly_call_start(&x->call, "POST", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX,
                            on_suspend, "/apps/%s/machines/%s/suspend", x->w->S->app, x->id);
        return;
    }
    /* 408: not yet; 404: just created, not replicated (flyctl PR #4618) */
    if (sbx_now_ms() < x->deadline_ms &&
        (res->code != SBX_HTTP_OK || res->status == 408 || res->status == 404)) {
        w_boot(x);
        return;
    }
    w_fail(x, "booting", res);
}

static void w_boot(wslot *x)
{
    wset(x, W_BOOT);
    sbx__fly_call_start(&x->call, "GET", NULL, FLY_WARM_WAIT_S * 1000u + FLY_WARM_WAIT_SLACK_MS,
                        SBX_FLY_RETRY_5XX, on_boot,
                        "/apps/%s/machines/%s/wait?state=started&timeout=%d", x->w->S->app,
                        x->id, FLY_WARM_WAIT_S);
}

static void on_create(sbx__fly_call *c, const sbx_http_res *res)
{
    wslot *x = c->owner;
    json_object *m = NULL;
    const char *id, *ip;

    if (res->code == SBX_HTTP_OK && res->status == 200 && (m = json_tokener_parse(res->body)) &&
        (id = sbx__fly_jstr(m, "id")) && strlen(id) <= SBX_FLY_ID_MAX) {
        snprintf(x->id, sizeof(x->id), "%s", id);
        ip = sbx__fly_jstr(m, "private_ip");
        snprintf(x->ip, sizeof(x->ip), "%s", ip && strlen(ip) <= SBX_FLY_IP_MAX ? ip : "");
        json_object_put(m);
        x->deadline_ms = sbx_now_ms() + (uint64_t)x->w->S->boot_timeout_s * 1000u;
        w_boot(x);
        return;
    }
    json_object_put(m);
    if (res->code == SBX_HTTP_EABORTED)
        return;
    w_fail(x, "creating", res);
}

static void w_create(wslot *x)
{
    sbx__fly_warm *w = x->w;
    char name[32];
    const char *meta[] = {"sbx_warm", w->tag, "sbx_worker", w->worker};
    json_object *body;
    const char *b;

    if (x->off)
        return;
    x->id[0] = x->ip[0] = '\0';
    x->t0 = sbx_now_ms();
    snprintf(name, sizeof(name), "sbx-warm-%016llx",
             (unsigned long long)sbx__fly_api_rand(w->S->api));
    body = sbx__fly_idle_machine(w->S, name, w->image, w->cpus, w->mem_mb, meta, 2);
    b = body ? json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN |
                                                        JSON_C_TO_STRING_NOSLASHESCAPE)
             : NULL;
    wset(x, W_CREATE);
    sbx__fly_call_start(&x->call, "POST", b ? strdup(b) : NULL, SBX_FLY_CALL_TIMEOUT_MS, 0,
                        on_create, "/apps/%s/machines", w->S->app);
    json_object_put(body);
}

int sbx__fly_warm_new(sbx__fly_sessions *S, const char *worker_id, const char *image, int cpus,
                      int mem_mb, int n, sbx__fly_warm **out)
{
    sbx__fly_warm *w;

    if (!image || !*image || strlen(image) >= sizeof(w->image) || n <= 0 ||
        strlen(worker_id) >= sizeof(w->worker))
        return -EINVAL;
    if (n > FLY_WARM_MAX) {
        sbx_warn("fly", "SBX_WARM=%d: the fly provider keeps at most %d warm machines", n,
                 FLY_WARM_MAX);
        n = FLY_WARM_MAX;
    }
    w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->S = S;
    snprintf(w->tag, sizeof(w->tag), "%016llx", (unsigned long long)sbx__fly_api_rand(S->api));
    snprintf(w->worker, sizeof(w->worker), "%s", worker_id);
    snprintf(w->image, sizeof(w->image), "%s", image);
    w->cpus = cpus;
    w->mem_mb = mem_mb;
    w->n = (size_t)n;
    for (size_t i = 0; i < w->n; i++) {
        wslot *x = &w->slots[i];
        x->w = w;
        x->st = W_CREATE;
        sbx__fly_call_init(&x->call, S->api, x);
        sbx_timer_init(&x->retry_t, retry_fire, x);
        /* from the loop: _new's caller is not ready for callbacks */
        sbx_timer_start(S->loop, &x->retry_t, 0);
    }
    for (size_t i = 0; i < FLY_WARM_DROPS; i++)
        sbx__fly_call_init(&w->drops[i].call, S->api, &w->drops[i]);
    sbx_info("fly", "warm pool: %d machines of %s, %d cpus, %d MB, tag %s", n, image, cpus,
             mem_mb, w->tag);
    *out = w;
    return 0;
}

int sbx__fly_warm_take(sbx__fly_warm *w, const char *image, int cpus, int mem_mb,
                       char id[SBX_FLY_ID_MAX + 1], char ip[SBX_FLY_IP_MAX + 1])
{
    if (strcmp(image, w->image) != 0 || cpus != w->cpus || mem_mb != w->mem_mb)
        return 0;
    for (size_t i = 0; i < w->n; i++) {
        wslot *x = &w->slots[i];
        if (x->st != W_READY)
            continue;
        snprintf(id, SBX_FLY_ID_MAX + 1, "%s", x->id);
        snprintf(ip, SBX_FLY_IP_MAX + 1, "%s", x->ip);
        x->id[0] = '\0';
        w_create(x);              /* the replacement */
        return 1;
    }
    return 0;
}

static void on_drop_done(sbx__fly_call *c, const sbx_http_res *res)
{
    wdrop *d = c->owner;
    (void)res;                    /* a machine not destroyed is the next sweep's */
    d->used = 0;
}

void sbx__fly_warm_done(sbx__fly_warm *w, const char *id, int adopted)
{
    if (!w || adopted)
        return;
    for (size_t i = 0; i < FLY_WARM_DROPS; i++) {
        wdrop *d = &w->drops[i];
        if (d->used)
            continue;
        d->used = 1;
        sbx__fly_call_start(&d->call, "DELETE", NULL, SBX_FLY_CALL_TIMEOUT_MS, SBX_FLY_RETRY_5XX,
                            on_drop_done, "/apps/%s/machines/%s?force=true", w->S->app, id);
        return;
    }
    sbx_warn("fly", "warm machine %s not destroyed (too many at once); the next sweep will", id);
}

const char *sbx__fly_warm_tag(const sbx__fly_warm *w)
{
    return w->tag;
}

size_t sbx__fly_warm_ids(const sbx__fly_warm *w, char (*ids)[SBX_FLY_ID_MAX + 1], size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < w->n && k < cap; i++)
        if (w->slots[i].id[0])
            memcpy(ids[k++], w->slots[i].id, sizeof(ids[0]));
    return k;
}

void sbx__fly_warm_free(sbx__fly_warm *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++) {
        sbx__fly_call_free(&w->slots[i].call);
        sbx_timer_stop(w->S->loop, &w->slots[i].retry_t);
    }
    for (size_t i = 0; i < FLY_WARM_DROPS; i++)
        sbx__fly_call_free(&w->drops[i].call);
    free(w);
}
