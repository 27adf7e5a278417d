/* fly_api.h — requests to the Fly Machines API with retries, for
 * provider_fly.c, on the worker's event loop (http.h).
 *
 * One sbx__fly_api per provider holds what every request shares: the base
 * URL, the Authorization header (a secret, never logged), the HTTP client
 * and the retry policy. One sbx__fly_call is one logical request and its
 * retries; it lives inside its owner (a run or a sweep), which starts it
 * again for each step, and has at most one request in flight.
 *
 * Retries: a 429 always, unless the call takes its 429s itself
 * (SBX_FLY_OWN_429: creates, which the provider's per-app pacer schedules);
 * transport errors and 5xx only when the call allows it (SBX_FLY_RETRY_5XX;
 * not a create: a 5xx may have made a machine, and the provider looks before
 * it creates again). Exponential backoff with full jitter, never sooner than
 * the server's Retry-After (or, for a 429 without one, Fly's documented rate
 * window). At most max_attempts requests per call fail; a 429 is Fly asking
 * us to slow down, not a failure, so it does not count, up to
 * SBX_FLY_MAX_THROTTLED of them (a server that only ever says 429 is broken).
 * A request that cannot even be started counts as a transport error.
 *
 * It also holds the few readers and writers of Fly's JSON that the provider,
 * its sessions and its warm pool all use, so there is one copy of each.
 *
 * Callback rule (libuv's): after sbx__fly_call_start() returns 0 the call's
 * cb runs exactly once, from the loop, never from inside the start; after
 * sbx__fly_call_cancel() or sbx__fly_call_free() it does not run.
 */
#ifndef SBX_FLY_API_H
#define SBX_FLY_API_H

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "http.h"
#include "loop.h"

/* Bounds of what goes into a URL, checked in sbx_fly_new(): the base URL, an
 * app name (Fly: at most 63 characters), a machine id (14 hex characters
 * today; 32 leaves room) and a query with a percent-encoded worker id or
 * logs API token. */
#define SBX_FLY_API_URL_MAX 512
#define SBX_FLY_APP_MAX 63
#define SBX_FLY_ID_MAX 32
#define SBX_FLY_WORKER_MAX 128
/* next_token values of the logs API are opaque; flyctl passes them back as is. */
#define SBX_FLY_LOG_TOKEN_MAX 256
#define SBX_FLY_URL_MAX (SBX_FLY_API_URL_MAX + SBX_FLY_APP_MAX + SBX_FLY_ID_MAX + \
                         3 * SBX_FLY_WORKER_MAX + 3 * SBX_FLY_LOG_TOKEN_MAX + 128)
/* Plain calls answer in well under a second; 30 s means something is broken. */
#define SBX_FLY_CALL_TIMEOUT_MS 30000
#define SBX_FLY_CONNECT_TIMEOUT_MS 10000
/* 429s one call waits out before it gives up: at Fly's 1 request/s that is
 * minutes of being told to wait, far beyond any burst of ours. */
#define SBX_FLY_MAX_THROTTLED 120

/* flags of sbx__fly_call_start() */
#define SBX_FLY_RETRY_5XX 1   /* transport errors and 5xx are retried */
#define SBX_FLY_OWN_429 2     /* a 429 goes to the callback, not to a retry */

typedef struct sbx__fly_api {
    sbx_loop *loop;
    sbx_http *http;
    char url[SBX_FLY_API_URL_MAX + 1];   /* no trailing '/' */
    char *auth;                          /* "Authorization: ..." */
    const char *headers[4];              /* auth, JSON in and out, NULL */
    int max_attempts, backoff_base_ms, backoff_max_ms;
    uint64_t rng;
} sbx__fly_api;

typedef struct sbx__fly_call sbx__fly_call;
/* res is valid only during the call. */
typedef void (*sbx__fly_call_cb)(sbx__fly_call *c, const sbx_http_res *res);

struct sbx__fly_call {
    sbx__fly_api *api;
    const char *method;           /* a string literal */
    char url[SBX_FLY_URL_MAX];
    size_t path_off;              /* where the path starts in url, for logs */
    char *body;                   /* NULL or a JSON document we own */
    uint32_t timeout_ms;
    int attempt;                  /* 1-based; 429s do not count */
    int throttled;                /* 429s answered so far */
    int flags;                    /* SBX_FLY_RETRY_5XX | SBX_FLY_OWN_429 */
    int start_failed;             /* sbx_http_request() itself failed */
    sbx_http_handle *h;           /* the request in flight, or NULL */
    sbx_timer retry_t;
    sbx__fly_call_cb cb;
    void *owner;
};

/* url (url_len bytes, at most SBX_FLY_API_URL_MAX) and token were checked by
 * the caller; the token gets "Bearer " unless it starts "FlyV1 ". max_attempts
 * and the backoffs are > 0. Returns 0 or -ENOMEM; on an error nothing needs
 * closing. */
int sbx__fly_api_init(sbx__fly_api *a, sbx_loop *loop, const char *url, size_t url_len,
                      const char *token, int max_attempts, int backoff_base_ms,
                      int backoff_max_ms);
/* Frees the HTTP client (pending requests end without callbacks) and wipes
 * the secret. Every call must have been freed. */
void sbx__fly_api_close(sbx__fly_api *a);
/* splitmix64: jitter and run ids need spread, not secrecy. */
uint64_t sbx__fly_api_rand(sbx__fly_api *a);
/* Full jitter for the attempt-th try, never below retry_after_ms. */
uint64_t sbx__fly_backoff_ms(sbx__fly_api *a, int attempt, uint64_t retry_after_ms);
/* How long a 429 asks us to wait: its Retry-After, else Fly's documented
 * rate window; 0 for anything but a 429. */
uint64_t sbx__fly_retry_after_ms(const sbx_http_res *res);
/* One line for a failed reply: the transport error, or the "error" of a Fly
 * error body, or the start of the raw body. */
void sbx__fly_api_error(const sbx_http_res *res, char *out, size_t cap);
/* Fly's JSON, read and written alike by the provider, its sessions and its
 * warm pool: o's string member key (NULL when o is NULL, key is missing or
 * not a string), o's member key of any type, and a new array of n strings. */
const char *sbx__fly_jstr(json_object *o, const char *key);
json_object *sbx__fly_jobj(json_object *o, const char *key);
json_object *sbx__fly_str_array(const char *const *v, size_t n);
/* A machine object's config.metadata, or NULL. */
json_object *sbx__fly_meta(json_object *m);

void sbx__fly_call_init(sbx__fly_call *c, sbx__fly_api *a, void *owner);
/* Cancels what c had in flight and starts method on the API's url + the
 * formatted path; body (may be NULL) becomes the call's. Returns 0, or
 * -ENAMETOOLONG when the URL does not fit (nothing is sent, body is freed,
 * cb never runs). */
int sbx__fly_call_start(sbx__fly_call *c, const char *method, char *body, uint32_t timeout_ms,
                        int flags, sbx__fly_call_cb cb, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
/* The same on another base URL (Fly's logs API lives on api.fly.io). */
int sbx__fly_call_start_at(sbx__fly_call *c, const char *base, const char *method, char *body,
                           uint32_t timeout_ms, int flags, sbx__fly_call_cb cb,
                           const char *fmt, ...) __attribute__((format(printf, 8, 9)));
void sbx__fly_call_cancel(sbx__fly_call *c);
/* Cancels and frees the body; the owner may then free c. */
void sbx__fly_call_free(sbx__fly_call *c);

#endif
