/* http.c — libcurl's multi interface driven by sbx_loop.
 *
 * curl tells us which sockets it wants watched (CURLMOPT_SOCKETFUNCTION) and
 * when it next needs a call without I/O (CURLMOPT_TIMERFUNCTION). We keep one
 * sbx_io per socket and one sbx_timer, and hand every readiness event back to
 * curl_multi_socket_action(); after each call we collect finished transfers
 * and run their callbacks. This is the "multi_socket" pattern of curl's
 * docs/examples (ephiperfifo.c), on our loop instead of libevent.
 *
 * Three things curl forbids shape the code:
 *  - curl_multi_socket_action() must not be called from inside curl's timer
 *    callback, so that callback only (re)starts our timer; the timer's own
 *    callback drives curl.
 *  - A handle must not be removed from inside a curl callback (the write
 *    callback runs chunk_cb). Cancels made while we are inside curl mark the
 *    handle, make the write callback refuse further data, and queue it; the
 *    queue is emptied as soon as curl returns.
 *  - curl may stop watching a socket while the loop's current epoll batch
 *    still holds a pointer to its sbx_io (loop.h's rule), so a dead socket's
 *    memory waits on a list freed by a zero-delay "reap" timer, which runs
 *    after the io phase.
 *
 * Completed transfers are reported in the order curl finishes them; done_cb
 * runs outside curl, so it may start new requests or cancel other ones.
 */
#include "http.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

typedef struct http_sock http_sock;
struct http_sock {
    sbx_io io;
    sbx_http *http;
    http_sock *prev, *next;   /* live list, or next on the dead list */
};

struct sbx_http_handle {
    sbx_http *http;
    CURL *easy;
    struct curl_slist *hdrs;
    sbx_http_done_cb done_cb;
    sbx_http_chunk_cb chunk_cb;
    void *arg;
    sbx_buf body;             /* capped at the request's max_response_bytes */
    int too_big;
    int aborted;              /* chunk_cb asked to stop */
    int canceled;
    sbx_http_handle *prev, *next;   /* pending list */
    sbx_http_handle *next_cancel;   /* canceled while inside curl */
    char errbuf[CURL_ERROR_SIZE];
};

struct sbx_http {
    sbx_loop *loop;
    CURLM *multi;
    sbx_timer timer;          /* curl's timeout */
    sbx_timer reap;           /* frees dead sockets after the io phase */
    int in_curl;              /* depth of curl_multi_socket_action() calls */
    size_t npending;
    sbx_http_handle *pending;
    sbx_http_handle *canceled;
    http_sock *socks;
    http_sock *dead;
};

static void handle_free(sbx_http_handle *h)
{
    if (h->easy)
        curl_easy_cleanup(h->easy);
    curl_slist_free_all(h->hdrs);
    sbx_buf_free(&h->body);
    free(h);
}

static void pending_unlink(sbx_http_handle *h)
{
    sbx_http *http = h->http;
    if (h->prev)
        h->prev->next = h->next;
    else
        http->pending = h->next;
    if (h->next)
        h->next->prev = h->prev;
    h->prev = h->next = NULL;
    http->npending--;
}

/* Takes a handle out of curl and frees it; never from inside curl. */
static void handle_release(sbx_http_handle *h)
{
    curl_multi_remove_handle(h->http->multi, h->easy);
    handle_free(h);
}

static void flush_canceled(sbx_http *http)
{
    while (http->canceled) {
        sbx_http_handle *h = http->canceled;
        http->canceled = h->next_cancel;
        handle_release(h);
    }
}

const char *sbx_http_res_header(const sbx_http_res *res, const char *name)
{
    struct curl_header *hh;
    if (!res->easy_ || curl_easy_header(res->easy_, name, 0, CURLH_HEADER, -1, &hh) != CURLHE_OK)
        return NULL;
    return hh->value;
}

static void finish(sbx_http_handle *h, CURLcode result)
{
    sbx_http_res res;
    char msg[CURL_ERROR_SIZE + 64];
    long status = 0;

    curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &status);
    memset(&res, 0, sizeof(res));
    res.status = status;
    res.error = "";
    res.easy_ = h->easy;
    {
        curl_off_t ra = 0;
        if (curl_easy_getinfo(h->easy, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0)
            res.retry_after_s = (long)ra;
    }
    if (result != CURLE_OK) {
        if (h->too_big) {
            res.code = SBX_HTTP_ETOOBIG;
            snprintf(msg, sizeof(msg), "response body larger than %zu bytes", h->body.max);
        } else if (h->aborted) {
            res.code = SBX_HTTP_EABORTED;
            snprintf(msg, sizeof(msg), "stream stopped by its reader");
        } else {
            res.code = result == CURLE_OPERATION_TIMEDOUT ? SBX_HTTP_ETIMEDOUT : SBX_HTTP_ETRANSPORT;
            snprintf(msg, sizeof(msg), "%s", h->errbuf[0] ? h->errbuf : curl_easy_strerror(result));
        }
        res.error = msg;
    }
    res.body = sbx_buf_str(&h->body);
    res.body_len = h->body.len;

    pending_unlink(h);
    curl_multi_remove_handle(h->http->multi, h->easy);
    h->done_cb(h->arg, &res);
    handle_free(h);
}

static void process_done(sbx_http *http)
{
    CURLMsg *m;
    int left;

    flush_canceled(http);
    while ((m = curl_multi_info_read(http->multi, &left))) {
        sbx_http_handle *h = NULL;
        if (m->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&h);
        finish(h, m->data.result);
    }
}

static void drive(sbx_http *http, curl_socket_t fd, int flags)
{
    int running;
    http->in_curl++;
    curl_multi_socket_action(http->multi, fd, flags, &running);
    http->in_curl--;
    process_done(http);
}

static void on_io(sbx_io *io, int events)
{
    http_sock *sk = io->data;
    int flags = 0;
    if (events & SBX_READ)
        flags |= CURL_CSELECT_IN;
    if (events & SBX_WRITE)
        flags |= CURL_CSELECT_OUT;
    if (events & SBX_ERROR)
        flags |= CURL_CSELECT_ERR;
    drive(sk->http, io->fd, flags);
}

static void on_timer(sbx_timer *t)
{
    drive(t->data, CURL_SOCKET_TIMEOUT, 0);
}

static void on_reap(sbx_timer *t)
{
    sbx_http *http = t->data;
    while (http->dead) {
        http_sock *sk = http->dead;
        http->dead = sk->next;
        free(sk);
    }
}

static void sock_kill(sbx_http *http, http_sock *sk)
{
    sbx_io_stop(&sk->io);
    if (sk->prev)
        sk->prev->next = sk->next;
    else
        http->socks = sk->next;
    if (sk->next)
        sk->next->prev = sk->prev;
    sk->prev = NULL;
    sk->next = http->dead;
    http->dead = sk;
    if (!sbx_timer_active(&http->reap))
        sbx_timer_start(http->loop, &http->reap, 0);
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    sbx_http *http = userp;
    http_sock *sk = socketp;
    int events = 0;
    (void)easy;

    if (what == CURL_POLL_REMOVE) {
        if (sk) {
            curl_multi_assign(http->multi, fd, NULL);
            sock_kill(http, sk);
        }
        return 0;
    }
    if (!sk) {
        sk = calloc(1, sizeof(*sk));
        if (!sk)
            return -1;
        sbx_io_init(&sk->io, fd, on_io, sk);
        sk->http = http;
        sk->next = http->socks;
        if (http->socks)
            http->socks->prev = sk;
        http->socks = sk;
        curl_multi_assign(http->multi, fd, sk);
    }
    if (what & CURL_POLL_IN)
        events |= SBX_READ;
    if (what & CURL_POLL_OUT)
        events |= SBX_WRITE;
    return sbx_io_set(http->loop, &sk->io, events) < 0 ? -1 : 0;
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    sbx_http *http = userp;
    (void)multi;
    if (timeout_ms < 0) {
        sbx_timer_stop(http->loop, &http->timer);
        return 0;
    }
    sbx_timer_start(http->loop, &http->timer, (uint64_t)timeout_ms);
    return 0;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *userp)
{
    sbx_http_handle *h = userp;
    size_t n = size * nmemb;

    if (h->canceled)
        return 0;
    if (h->chunk_cb) {
        long status = 0;
        curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200 && status < 300) {
            if (h->chunk_cb(h->arg, data, n) != 0 && !h->canceled)
                h->aborted = 1;
            return h->aborted || h->canceled ? 0 : n;
        }
    }
    switch (sbx_buf_add(&h->body, data, n)) {
    case 0:
        return n;
    case -E2BIG:
        h->too_big = 1;
        return 0;
    default:
        return 0;             /* out of memory: curl ends it as a write error */
    }
}

int sbx_http_new(sbx_loop *loop, sbx_http **out)
{
    sbx_http *http;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -ENOMEM;
    http = calloc(1, sizeof(*http));
    if (!http)
        goto fail_global;
    http->loop = loop;
    http->multi = curl_multi_init();
    if (!http->multi)
        goto fail_http;
    sbx_timer_init(&http->timer, on_timer, http);
    sbx_timer_init(&http->reap, on_reap, http);
    curl_multi_setopt(http->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(http->multi, CURLMOPT_SOCKETDATA, http);
    curl_multi_setopt(http->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(http->multi, CURLMOPT_TIMERDATA, http);
    *out = http;
    return 0;

fail_http:
    free(http);
fail_global:
    curl_global_cleanup();
    return -ENOMEM;
}

void sbx_http_free(sbx_http *http)
{
    if (!http)
        return;
    flush_canceled(http);
    while (http->pending) {
        sbx_http_handle *h = http->pending;
        pending_unlink(h);
        handle_release(h);
    }
    /* Closing the connection cache may still report sockets as removed. */
    curl_multi_cleanup(http->multi);
    while (http->socks)
        sock_kill(http, http->socks);
    sbx_timer_stop(http->loop, &http->timer);
    sbx_timer_stop(http->loop, &http->reap);
    on_reap(&http->reap);
    free(http);
    curl_global_cleanup();
}

static int is_method(const char *m, const char *want) { return strcmp(m, want) == 0; }

static int start(sbx_http *http, const sbx_http_req *req, sbx_http_chunk_cb chunk_cb,
                 sbx_http_done_cb done_cb, void *arg, sbx_http_handle **handle)
{
    sbx_http_handle *h;
    CURL *e;
    const char *method = req->method ? req->method : "GET";
    int rc = -ENOMEM;

    h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->http = http;
    h->done_cb = done_cb;
    h->chunk_cb = chunk_cb;
    h->arg = arg;
    sbx_buf_init(&h->body, req->max_response_bytes ? req->max_response_bytes
                                                    : SBX_HTTP_DEFAULT_MAX_RESPONSE);
    h->easy = e = curl_easy_init();
    if (!e)
        goto out_free;

    /* A body above 1 MiB would make curl wait a second for "100 Continue",
     * which engines do not send; "Expect:" with no value turns that off. */
    h->hdrs = curl_slist_append(NULL, "Expect:");
    if (!h->hdrs)
        goto out_free;
    for (const char *const *hd = req->headers; hd && *hd; hd++) {
        struct curl_slist *l = curl_slist_append(h->hdrs, *hd);
        if (!l)
            goto out_free;
        h->hdrs = l;
    }

    rc = -EINVAL;
    if (curl_easy_setopt(e, CURLOPT_URL, req->url) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK)
        goto out_free;
    curl_easy_setopt(e, CURLOPT_PRIVATE, h);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, h->errbuf);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, h);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    if (req->unix_socket_path &&
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, req->unix_socket_path) != CURLE_OK)
        goto out_free;
    /* curl's defaults, said again so no later edit can drop them. */
    if (curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK ||
        (req->tls_ca && curl_easy_setopt(e, CURLOPT_CAINFO, req->tls_ca) != CURLE_OK) ||
        (req->tls_cert && curl_easy_setopt(e, CURLOPT_SSLCERT, req->tls_cert) != CURLE_OK) ||
        (req->tls_key && curl_easy_setopt(e, CURLOPT_SSLKEY, req->tls_key) != CURLE_OK))
        goto out_free;
    if (req->timeout_ms)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)req->timeout_ms);
    if (req->connect_timeout_ms)
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)req->connect_timeout_ms);

    rc = -ENOMEM;
    if (req->body_len > 0 || is_method(method, "POST") || is_method(method, "PUT")) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        if (curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, req->body_len ? req->body : "") != CURLE_OK)
            goto out_free;
        if (!is_method(method, "POST"))
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    } else if (!is_method(method, "GET")) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }

    if (curl_multi_add_handle(http->multi, e) != CURLM_OK)
        goto out_free;
    h->next = http->pending;
    if (http->pending)
        http->pending->prev = h;
    http->pending = h;
    http->npending++;
    if (handle)
        *handle = h;
    return 0;

out_free:
    handle_free(h);
    return rc;
}

int sbx_http_request(sbx_http *http, const sbx_http_req *req,
                     sbx_http_done_cb done_cb, void *arg, sbx_http_handle **handle)
{
    return start(http, req, NULL, done_cb, arg, handle);
}

int sbx_http_stream(sbx_http *http, const sbx_http_req *req, sbx_http_chunk_cb chunk_cb,
                    sbx_http_done_cb done_cb, void *arg, sbx_http_handle **handle)
{
    return start(http, req, chunk_cb, done_cb, arg, handle);
}

void sbx_http_cancel(sbx_http_handle *h)
{
    sbx_http *http;
    if (!h || h->canceled)
        return;
    http = h->http;
    h->canceled = 1;
    pending_unlink(h);
    if (http->in_curl) {
        h->next_cancel = http->canceled;
        http->canceled = h;
        return;
    }
    handle_release(h);
}

size_t sbx_http_pending(const sbx_http *http) { return http->npending; }
