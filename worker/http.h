/* http.h — an asynchronous HTTP client on the worker's event loop.
 *
 * One sbx_http owns one libcurl multi handle whose sockets and single timer
 * live on the sbx_loop, so hundreds of engine calls and log streams share the
 * one thread (see loop.h). Providers that talk HTTP (docker, fly, vm agent)
 * build on this instead of blocking in curl_easy_perform().
 *
 * Callback rules (libuv's):
 *  - sbx_http_request() either returns 0 and later calls done_cb exactly once,
 *    always from the event loop (never from inside sbx_http_request()), or
 *    returns an error and never calls anything.
 *  - After sbx_http_cancel(h) returns, neither done_cb nor chunk_cb of that
 *    request is called again. Cancel may be called from any callback,
 *    including the request's own chunk_cb; it must not be called on a request
 *    whose done_cb has started (the handle is gone then).
 *  - sbx_http_free() must not be called from inside any of its callbacks.
 *
 * An HTTP error status (4xx/5xx) is not a transport error: res->code is 0
 * and res->status says what the server said; res->body holds its message.
 */
#ifndef SBX_HTTP_H
#define SBX_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"

typedef struct sbx_http sbx_http;
typedef struct sbx_http_handle sbx_http_handle;

/* A buffered response body is capped: 1 MiB is far above the largest reply we
 * parse (a container inspect or a list of a host's containers is a few KiB
 * per container) and small enough that a confused server cannot make a worker
 * hold much. Streams (chunk_cb) are not buffered and not capped. */
#define SBX_HTTP_DEFAULT_MAX_RESPONSE (1024 * 1024)

typedef enum sbx_http_code {
    SBX_HTTP_OK = 0,
    SBX_HTTP_ETRANSPORT,   /* connect/send/receive failed; see res->error */
    SBX_HTTP_ETIMEDOUT,    /* timeout_ms passed before the response ended */
    SBX_HTTP_ETOOBIG,      /* the body passed max_response_bytes */
    SBX_HTTP_EABORTED,     /* chunk_cb returned non-zero */
} sbx_http_code;

typedef struct sbx_http_req {
    const char *method;            /* "GET", "POST", "PUT", "DELETE", ... */
    const char *url;               /* "http://host:port/path"; any host with unix_socket_path */
    const char *unix_socket_path;  /* NULL: TCP; else talk HTTP over this AF_UNIX socket */
    const char *const *headers;    /* NULL or NULL-terminated "Name: value" lines */
    const void *body;              /* copied; NULL with body_len 0 for none */
    size_t body_len;
    uint32_t timeout_ms;           /* whole request; 0 = none (long waits, log streams) */
    uint32_t connect_timeout_ms;   /* 0 = curl's default (300 s) */
    size_t max_response_bytes;     /* 0 = SBX_HTTP_DEFAULT_MAX_RESPONSE */
    /* https only. The server's certificate is always verified, chain and
     * host name (no option turns that off); these say against what, and
     * what we show in return. PEM file paths, read at each request. */
    const char *tls_ca;            /* CA bundle the server must chain to; NULL: the system's */
    const char *tls_cert;          /* client certificate, for servers that require one; NULL: none */
    const char *tls_key;           /* its private key (unencrypted) */
} sbx_http_req;

typedef struct sbx_http_res {
    sbx_http_code code;
    long status;          /* HTTP status, 0 when no response arrived */
    const char *body;     /* NUL-terminated; for streams only a non-2xx body */
    size_t body_len;
    const char *error;    /* "" when code is SBX_HTTP_OK */
    long retry_after_s;   /* the response's Retry-After in seconds, 0 if none */
    void *easy_;          /* http.c's own: for sbx_http_res_header() */
} sbx_http_res;

/* The value of the response's last header called name (any case), or NULL;
 * valid only during the done callback, like res. */
const char *sbx_http_res_header(const sbx_http_res *res, const char *name);

/* res and everything it points to are valid only during the call. */
typedef void (*sbx_http_done_cb)(void *arg, const sbx_http_res *res);
/* Called for each piece of a 2xx body as it arrives; pieces follow the
 * network, not any framing of the payload. Return non-zero to stop the
 * transfer (done_cb follows with SBX_HTTP_EABORTED). */
typedef int (*sbx_http_chunk_cb)(void *arg, const char *data, size_t len);

int sbx_http_new(sbx_loop *loop, sbx_http **out);
/* Aborts every pending request without calling their callbacks. */
void sbx_http_free(sbx_http *http);

/* Starts a buffered request. handle (may be NULL) receives a handle for
 * sbx_http_cancel(), valid until done_cb starts. Returns 0 or -errno. */
int sbx_http_request(sbx_http *http, const sbx_http_req *req,
                     sbx_http_done_cb done_cb, void *arg, sbx_http_handle **handle);
/* Starts a streaming request: a 2xx body goes to chunk_cb piece by piece
 * instead of being buffered (following a container's logs). */
int sbx_http_stream(sbx_http *http, const sbx_http_req *req, sbx_http_chunk_cb chunk_cb,
                    sbx_http_done_cb done_cb, void *arg, sbx_http_handle **handle);
void sbx_http_cancel(sbx_http_handle *h);

/* Requests started and not yet finished or canceled. */
size_t sbx_http_pending(const sbx_http *http);

#endif
