/* fly_logs.c — a machine's output from Fly's HTTP logs API; see fly_logs.h.
 *
 * A reader is a timer (t) and one call: the timer asks for a page, the reply
 * feeds its lines out and sets the next timer: at once after a page that
 * brought lines, poll_ms after an empty one. Draining asks every 250 ms at
 * most and ends at the first empty page asked for drain_ms after the stop.
 */
#include "fly_logs.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "text.h"

/* Failed polls in a row before live output is given up for the run. */
#define FLY_LOGS_FAILURES_MAX 5
/* After the drain window, pages that still bring lines are read for at most
 * this much longer (a build that printed a lot just before it ended). */
#define FLY_LOGS_DRAIN_MAX_MS 30000
/* Poll interval while draining, at most. */
#define FLY_LOGS_DRAIN_POLL_MS 250

static void poll_page(sbx__fly_logs *l);

static void fire(sbx_timer *t)
{
    poll_page(t->data);
}

void sbx__fly_logs_init(sbx__fly_logs *l, sbx__fly_api *api, const char *base, const char *app,
                        int poll_ms, int drain_ms, sbx_output_fn out, void *out_arg,
                        sbx__fly_logs_cb done, void *owner)
{
    memset(l, 0, sizeof(*l));
    l->base = base;
    l->app = app;
    l->poll_ms = poll_ms;
    l->drain_ms = drain_ms;
    l->out = out;
    l->out_arg = out_arg;
    l->done = done;
    l->owner = owner;
    sbx__fly_call_init(&l->call, api, l);
    sbx_timer_init(&l->t, fire, l);
}

void sbx__fly_logs_stop(sbx__fly_logs *l)
{
    l->on = 0;
    l->busy = 0;
    l->draining = 0;
    sbx__fly_call_cancel(&l->call);
    sbx_timer_stop(l->call.api->loop, &l->t);
}

void sbx__fly_logs_free(sbx__fly_logs *l)
{
    sbx__fly_logs_stop(l);
    sbx__fly_call_free(&l->call);
}

void sbx__fly_logs_start(sbx__fly_logs *l, const char *machine_id)
{
    if (!l->base || l->on)
        return;
    snprintf(l->machine, sizeof(l->machine), "%s", machine_id);
    l->on = 1;
    sbx_timer_start(l->call.api->loop, &l->t, (uint64_t)l->poll_ms);
}

/* Ends a drain (if one runs): done is the last thing, l may be gone after. */
static void finish(sbx__fly_logs *l)
{
    int was_draining = l->draining;
    sbx__fly_logs_stop(l);
    if (was_draining)
        l->done(l);
}

static void give_up(sbx__fly_logs *l, const char *why)
{
    sbx_warn("fly", "live output of machine %s given up: %s", l->machine, why);
    snprintf(l->error, sizeof(l->error), "output incomplete: logs API: %.150s", why);
    finish(l);
}

static void emit(sbx__fly_logs *l, const char *data, size_t n)
{
    if (n >= sizeof(l->tail)) {
        memcpy(l->tail, data + n - sizeof(l->tail), sizeof(l->tail));
        l->tail_len = sizeof(l->tail);
    } else {
        if (l->tail_len + n > sizeof(l->tail)) {
            size_t drop = l->tail_len + n - sizeof(l->tail);
            memmove(l->tail, l->tail + drop, l->tail_len - drop);
            l->tail_len -= drop;
        }
        memcpy(l->tail + l->tail_len, data, n);
        l->tail_len += n;
    }
    sbx_run_output(l->out, l->out_arg, SBX_STREAM_STDOUT, data, n);
}

static json_object *member(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? v : NULL;
}

/* One page: {"data": [{"id", "attributes": {"message", "instance", ...}}],
 * "meta": {"next_token"}}; an entry is one line without its newline. Fly's
 * entries do not say which stream a line came from (flyctl logs/entry.go),
 * so everything goes to stdout. Returns the entries read. */
static size_t read_page(sbx__fly_logs *l, json_object *o, int *bad_token)
{
    json_object *data = member(o, "data");
    json_object *next = member(member(o, "meta"), "next_token");
    size_t n = 0;

    if (data && json_object_is_type(data, json_type_array)) {
        n = json_object_array_length(data);
        for (size_t i = 0; i < n; i++) {
            json_object *msg = member(member(json_object_array_get_idx(data, i), "attributes"),
                                      "message");
            if (!msg || !json_object_is_type(msg, json_type_string))
                continue;
            emit(l, json_object_get_string(msg), (size_t)json_object_get_string_len(msg));
            emit(l, "\n", 1);
        }
    }
    /* flyctl keeps its token when a reply has none (logs/polling.go); one
     * we cannot send back would mean reading lines twice */
    if (next && json_object_is_type(next, json_type_string) &&
        json_object_get_string_len(next) > 0) {
        if ((size_t)json_object_get_string_len(next) > SBX_FLY_LOG_TOKEN_MAX)
            *bad_token = 1;
        else
            snprintf(l->token, sizeof(l->token), "%s", json_object_get_string(next));
    }
    return n;
}

static void on_page(sbx__fly_call *c, const sbx_http_res *res)
{
    sbx__fly_logs *l = c->owner;
    sbx_loop *loop = c->api->loop;
    json_object *o = NULL;
    size_t got = 0;
    uint64_t now = sbx_now_ms();
    int bad_token = 0;

    l->busy = 0;
    if (res->code == SBX_HTTP_OK && res->status == 200 && (o = json_tokener_parse(res->body))) {
        got = read_page(l, o, &bad_token);
        l->failures = 0;
        json_object_put(o);
        if (bad_token) {
            give_up(l, "next_token longer than 256 bytes");
            return;
        }
    } else {
        char why[200];
        sbx__fly_api_error(res, why, sizeof(why));
        /* 401/403/404: a wrong URL or token; asking again will not help */
        if (++l->failures >= FLY_LOGS_FAILURES_MAX ||
            (res->code == SBX_HTTP_OK &&
             (res->status == 401 || res->status == 403 || res->status == 404))) {
            give_up(l, why);
            return;
        }
    }
    if (!l->draining) {
        sbx_timer_start(loop, &l->t, got ? 0 : (uint64_t)l->poll_ms);
        return;
    }
    if (got == 0 && l->asked_ms >= l->stopped_ms + (uint64_t)l->drain_ms) {
        finish(l);
        return;
    }
    if (now > l->stopped_ms + (uint64_t)l->drain_ms + FLY_LOGS_DRAIN_MAX_MS) {
        give_up(l, "still bringing lines long after the machine stopped");
        return;
    }
    sbx_timer_start(loop, &l->t,
                    got ? 0 : (uint64_t)(l->poll_ms < FLY_LOGS_DRAIN_POLL_MS
                                             ? l->poll_ms : FLY_LOGS_DRAIN_POLL_MS));
}

/* Percent-encodes s for a query value (RFC 3986 unreserved pass through). */
static void url_escape(const char *s, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *s && o + 4 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~') {
            out[o++] = (char)ch;
        } else {
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = '\0';
}

static void poll_page(sbx__fly_logs *l)
{
    char tok[3 * SBX_FLY_LOG_TOKEN_MAX + 1];

    if (!l->on || l->busy)
        return;
    url_escape(l->token, tok, sizeof(tok));
    l->busy = 1;
    l->asked_ms = sbx_now_ms();
    if (sbx__fly_call_start_at(&l->call, l->base, "GET", NULL, SBX_FLY_CALL_TIMEOUT_MS,
                               SBX_FLY_RETRY_5XX, on_page,
                               "/api/v1/apps/%s/logs?instance=%s&next_token=%s", l->app,
                               l->machine, tok) != 0) {
        l->busy = 0;
        give_up(l, "URL too long");
    }
}

int sbx__fly_logs_drain(sbx__fly_logs *l)
{
    if (!l->on)
        return -1;
    l->draining = 1;
    l->stopped_ms = sbx_now_ms();
    if (!l->busy) {
        sbx_timer_stop(l->call.api->loop, &l->t);
        poll_page(l);
    }
    return 0;
}
