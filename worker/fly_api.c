/* fly_api.c — Machines API requests and their retries; see fly_api.h.
 *
 * A call is a small state machine of its own: a request in flight (h), or a
 * retry timer waiting (retry_t), or idle. call_done() decides between a
 * retry and the owner's callback; a request that could not be started goes
 * through the same timer, so even that failure reaches the owner from the
 * loop, never from inside sbx__fly_call_start().
 */
#include "fly_api.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* Fly limits each action to 1 request/s per machine, creates per app
 * (fly.io/docs/machines/api/working-with-machines-api/#rate-limits): a 429
 * is never retried sooner than that window. */
#define FLY_RATE_WINDOW_MS 1000

int sbx__fly_api_init(sbx__fly_api *a, sbx_loop *loop, const char *url, size_t url_len,
                      const char *token, int max_attempts, int backoff_base_ms,
                      int backoff_max_ms)
{
    size_t need = strlen(token) + 32;
    int rc = -ENOMEM;

    memset(a, 0, sizeof(*a));
    a->loop = loop;
    memcpy(a->url, url, url_len < SBX_FLY_API_URL_MAX ? url_len : SBX_FLY_API_URL_MAX);
    a->max_attempts = max_attempts;
    a->backoff_base_ms = backoff_base_ms;
    a->backoff_max_ms = backoff_max_ms;
    a->rng = sbx_now_us() ^ ((uint64_t)getpid() << 32);
    a->auth = malloc(need);
    if (!a->auth)
        goto out;
    if (strncmp(token, "FlyV1 ", 6) == 0)
        snprintf(a->auth, need, "Authorization: %s", token);
    else
        snprintf(a->auth, need, "Authorization: Bearer %s", token);
    a->headers[0] = a->auth;
    a->headers[1] = "Content-Type: application/json";
    a->headers[2] = "Accept: application/json";
    a->headers[3] = NULL;
    rc = sbx_http_new(loop, &a->http);
out:
    if (rc)
        sbx__fly_api_close(a);
    return rc;
}

void sbx__fly_api_close(sbx__fly_api *a)
{
    sbx_http_free(a->http);
    a->http = NULL;
    if (a->auth) {
        memset(a->auth, 0, strlen(a->auth));
        free(a->auth);
        a->auth = NULL;
    }
}

uint64_t sbx__fly_api_rand(sbx__fly_api *a)
{
    uint64_t z = (a->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

const char *sbx__fly_jstr(json_object *o, const char *key)
{
    json_object *v;
    if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

json_object *sbx__fly_jobj(json_object *o, const char *key)
{
    json_object *v;
    if (!o || !json_object_object_get_ex(o, key, &v))
        return NULL;
    return v;
}

json_object *sbx__fly_str_array(const char *const *v, size_t n)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        json_object_array_add(a, json_object_new_string(v[i]));
    return a;
}

json_object *sbx__fly_meta(json_object *m)
{
    return sbx__fly_jobj(sbx__fly_jobj(m, "config"), "metadata");
}

void sbx__fly_api_error(const sbx_http_res *res, char *out, size_t cap)
{
    json_object *o, *m;
    const char *msg = NULL;

    if (res->code != SBX_HTTP_OK) {
        snprintf(out, cap, "%s", res->error);
        return;
    }
    o = res->body ? json_tokener_parse(res->body) : NULL;
    if (o && json_object_object_get_ex(o, "error", &m) && json_object_is_type(m, json_type_string))
        msg = json_object_get_string(m);
    if (msg)
        snprintf(out, cap, "HTTP %ld: %s", res->status, msg);
    else
        snprintf(out, cap, "HTTP %ld: %.120s", res->status, res->body ? res->body : "");
    json_object_put(o);
}

uint64_t sbx__fly_retry_after_ms(const sbx_http_res *res)
{
    if (res->code != SBX_HTTP_OK || res->status != 429)
        return 0;
    if (res->retry_after_s > 0)
        return (uint64_t)res->retry_after_s * 1000u;
    return FLY_RATE_WINDOW_MS;
}

/* Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
 * uniform in [0, min(max, base * 2^(attempt-1))], but never before the
 * server's Retry-After. */
uint64_t sbx__fly_backoff_ms(sbx__fly_api *a, int attempt, uint64_t retry_after_ms)
{
    uint64_t cap = (uint64_t)a->backoff_base_ms << (attempt > 20 ? 20 : attempt - 1);
    uint64_t d;
    if (cap > (uint64_t)a->backoff_max_ms)
        cap = (uint64_t)a->backoff_max_ms;
    d = sbx__fly_api_rand(a) % (cap + 1);
    return d < retry_after_ms ? retry_after_ms : d;
}

static int retryable(const sbx__fly_call *c, const sbx_http_res *res)
{
    if (res->code == SBX_HTTP_ETOOBIG || res->code == SBX_HTTP_EABORTED)
        return 0;
    if (res->code != SBX_HTTP_OK)
        return (c->flags & SBX_FLY_RETRY_5XX) != 0;
    if (res->status == 429)
        return !(c->flags & SBX_FLY_OWN_429) && c->throttled < SBX_FLY_MAX_THROTTLED;
    return res->status >= 500 && (c->flags & SBX_FLY_RETRY_5XX);
}

static void call_issue(sbx__fly_call *c);

static void call_done(void *arg, const sbx_http_res *res)
{
    sbx__fly_call *c = arg;
    sbx__fly_api *a = c->api;

    int throttle = res->code == SBX_HTTP_OK && res->status == 429;

    c->h = NULL;
    if ((throttle || c->attempt < a->max_attempts) && retryable(c, res)) {
        uint64_t d = sbx__fly_backoff_ms(a, c->attempt, sbx__fly_retry_after_ms(res));
        sbx_debug("fly", "%s %s: status=%ld code=%d, retry (attempt %d/%d, 429s %d) in %llu ms",
                  c->method, c->url + c->path_off, res->status, (int)res->code, c->attempt,
                  a->max_attempts, c->throttled, (unsigned long long)d);
        if (throttle)
            c->throttled++;
        else
            c->attempt++;
        sbx_timer_start(a->loop, &c->retry_t, d);
        return;
    }
    c->cb(c, res);
}

static void call_retry_fire(sbx_timer *t)
{
    sbx__fly_call *c = t->data;
    if (c->start_failed && c->attempt >= c->api->max_attempts) {
        sbx_http_res res;
        memset(&res, 0, sizeof(res));
        res.code = SBX_HTTP_ETRANSPORT;
        res.error = "could not start the HTTP request";
        res.body = "";
        c->start_failed = 0;
        c->cb(c, &res);
        return;
    }
    call_issue(c);
}

static void call_issue(sbx__fly_call *c)
{
    sbx__fly_api *a = c->api;
    sbx_http_req req;
    int rc;

    memset(&req, 0, sizeof(req));
    req.method = c->method;
    req.url = c->url;
    req.headers = a->headers;
    req.body = c->body;
    req.body_len = c->body ? strlen(c->body) : 0;
    req.timeout_ms = c->timeout_ms;
    req.connect_timeout_ms = SBX_FLY_CONNECT_TIMEOUT_MS;
    c->start_failed = 0;
    rc = sbx_http_request(a->http, &req, call_done, c, &c->h);
    if (rc != 0) {
        /* Reported from the loop like any other failure, after a backoff. */
        sbx_warn("fly", "%s: cannot start request: %s", c->method, strerror(-rc));
        c->h = NULL;
        c->start_failed = 1;
        if (c->attempt < a->max_attempts)
            c->attempt++;
        sbx_timer_start(a->loop, &c->retry_t, sbx__fly_backoff_ms(a, c->attempt, 0));
    }
}

void sbx__fly_call_init(sbx__fly_call *c, sbx__fly_api *a, void *owner)
{
    memset(c, 0, sizeof(*c));
    c->api = a;
    c->owner = owner;
    sbx_timer_init(&c->retry_t, call_retry_fire, c);
}

void sbx__fly_call_cancel(sbx__fly_call *c)
{
    if (c->h) {
        sbx_http_cancel(c->h);
        c->h = NULL;
    }
    sbx_timer_stop(c->api->loop, &c->retry_t);
    c->start_failed = 0;
}

static int vstart(sbx__fly_call *c, const char *base, const char *method, char *body,
                  uint32_t timeout_ms, int flags, sbx__fly_call_cb cb, const char *fmt,
                  va_list ap)
{
    size_t n = strlen(base);
    int len;

    sbx__fly_call_cancel(c);
    free(c->body);
    c->body = body;
    len = n < sizeof(c->url) ? vsnprintf(c->url + n, sizeof(c->url) - n, fmt, ap) : -1;
    if (len < 0 || (size_t)len >= sizeof(c->url) - n) {
        free(c->body);
        c->body = NULL;
        return -ENAMETOOLONG;
    }
    memcpy(c->url, base, n);
    c->path_off = n;
    c->method = method;
    c->timeout_ms = timeout_ms;
    c->flags = flags;
    c->cb = cb;
    c->attempt = 1;
    c->throttled = 0;
    call_issue(c);
    return 0;
}

int sbx__fly_call_start(sbx__fly_call *c, const char *method, char *body, uint32_t timeout_ms,
                        int flags, sbx__fly_call_cb cb, const char *fmt, ...)
{
    va_list ap;
    int rc;
    va_start(ap, fmt);
    rc = vstart(c, c->api->url, method, body, timeout_ms, flags, cb, fmt, ap);
    va_end(ap);
    return rc;
}

int sbx__fly_call_start_at(sbx__fly_call *c, const char *base, const char *method, char *body,
                           uint32_t timeout_ms, int flags, sbx__fly_call_cb cb,
                           const char *fmt, ...)
{
    va_list ap;
    int rc;
    va_start(ap, fmt);
    rc = vstart(c, base, method, body, timeout_ms, flags, cb, fmt, ap);
    va_end(ap);
    return rc;
}

void sbx__fly_call_free(sbx__fly_call *c)
{
    sbx__fly_call_cancel(c);
    free(c->body);
    c->body = NULL;
}
