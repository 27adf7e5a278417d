/* server.c — the HTTP API of server.h, on libmicrohttpd driven by sbx_loop.
 *
 * Why libmicrohttpd and not an own parser: the agent listens on a VM's
 * network, so its parser meets whatever reaches that port. libmicrohttpd
 * (Debian: libmicrohttpd-dev, runtime libmicrohttpd12) is a small C
 * library made for embedding, maintained and fuzzed as part of GNU, and it
 * can run without threads inside someone else's loop: started with
 * MHD_USE_EPOLL and no internal thread, it exposes one epoll descriptor,
 * which sits in sbx_loop like any socket, and a timeout (MHD_get_timeout)
 * that drives one sbx_timer. MHD_run() then does all socket work in our
 * thread, so request handlers call runs.c directly, without locks. What we
 * would have written by hand instead (request line and header parsing,
 * keep-alive, chunked encoding, pipelining, Expect: 100-continue, timeouts
 * of idle clients) is exactly the part that is easy to get subtly wrong.
 *
 * Requests that wait (a long poll on a run, a log being followed) are
 * suspended connections (MHD_ALLOW_SUSPEND_RESUME): each one is a `waiter`
 * on a list with the run id it waits for and a deadline. A runs.c event for
 * that run, or the deadline, resumes it; MHD then calls the handler (long
 * poll) or the content reader (log) again. A follower with nothing new is
 * resumed every FOLLOW_KEEPALIVE_MS anyway, because a suspended connection
 * does not notice its client going away.
 *
 * Bounds: cfg->conn_max connections (each at most one waiter), request
 * bodies WAKE_BODY_MAX (a job message is at most SBX_MSG_MAX_BYTES), MHD's
 * per-connection memory for headers, idle connections closed after
 * CONN_TIMEOUT_S.
 *
 * Hostile clients. The port is reachable without the key, and MHD's
 * connection timeout is an idle timeout: a client sending one header byte
 * every few seconds holds its connection forever, and a few hundred of them
 * used to take every connection there was. So each connection (an `hconn`,
 * MHD's socket context from MHD_OPTION_NOTIFY_CONNECTION) is in a phase:
 *   pending  accepted, or answered and kept alive: its next request's
 *            headers must be complete by accept (or answer) +
 *            cfg->header_timeout_ms;
 *   body     headers read: the body must be complete by then +
 *            cfg->body_timeout_ms;
 *   active   the request is being answered (long polls and followed logs
 *            can take long; they carried the key).
 * Both deadlines are totals, not idle times. Pending and body connections
 * sit on two lists in deadline order (every entry of a list waited the same
 * time, so appending keeps the order), and one timer shuts down the socket
 * of each that is past its deadline; MHD then sees the end and closes it.
 * Beyond that, at most cfg->pending_max connections may be pending, and
 * cfg->pending_per_ip of them from one address (IPv6: one /64): the oldest
 * one over either cap is closed at once. A real client sends its headers
 * within a round trip of connecting, so the oldest pending ones are the
 * slow ones, and the cfg->conn_max - cfg->pending_max connections left are
 * for requests being answered. An attacker then only takes room from other
 * clients that have not sent their headers yet, and keeps it for at most
 * the header deadline. There is no per-address cap on answered requests:
 * those carried the key (or were /livez or a 401, answered at once).
 *
 * GET /livez answers 200 "ok" without the key (a load balancer's or
 * supervisor's probe); it says nothing about runs.
 *
 * What a client sent (method, path, MHD's messages about the request) is
 * logged only through sbx__log_field() (common/text.h): a "%0a" in a path,
 * which MHD decodes, cannot end the line or forge the next one.
 *
 * Tokens from the future (tokens.c has the rule): a wake or cancel whose
 * token is above the newest issued token this server knows of is held
 * (suspended, like a long poll) while cfg->fence_ask reads {sbx}:fence, then
 * refused (409 "future_token") if it is still above, or 503
 * "token_unverified" if the counter could not be read in FENCE_WAIT_MS.
 */
#include "server.h"
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <linux/openat2.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent_config.h"
#include "buf.h"
#include "log.h"
#include "text.h"

/* A /wake body is the job message plus a few fields. */
#define WAKE_BODY_MAX (SBX_MSG_MAX_BYTES + 64 * 1024)
#define CONN_TIMEOUT_S 60
/* Descriptors besides the connections: the listener, epoll, Redis, and each
 * build's log, workspace, pidfd and pipes (a dozen at most, for up to
 * SBX_AGENT_CAPACITY_MAX builds). */
#define FD_RESERVE (64 + 12 * SBX_AGENT_CAPACITY_MAX)
/* How long a wake or cancel waits for {sbx}:fence: Redis answers in
 * milliseconds, a worker's request times out in tens of seconds. */
#define FENCE_WAIT_MS 2000
/* A request path in a log line (SBX_LOG_LINE_MAX is 2048). */
#define LOG_URL_MAX 512
/* Longest long poll: well below any proxy's idle timeout. */
#define WAIT_MAX_MS 30000
#define FOLLOW_KEEPALIVE_MS 10000
/* One read of a followed log: MHD's chunk. */
#define FOLLOW_BLOCK (64 * 1024)
/* A DESTROY waits for the sandbox to be gone (processes killed, tmpfs
 * emptied: well under a second) at most this long, below the worker's
 * request timeout (provider_vmpool.c SESSION_TIMEOUT_MS); past it, busy. */
#define SESSION_WAIT_MS 10000
/* MHD asks to be run again within this at the latest (a safety net). */
#define MHD_RUN_MAX_MS 1000
/* GET /metrics: about 40 lines (metrics.h), well under 8 KiB. */
#define METRICS_PAGE_MAX 8192

typedef enum wkind { W_POLL, W_FOLLOW, W_FENCE, W_SESSION } wkind;

typedef struct waiter {
    struct waiter *prev, *next;
    struct MHD_Connection *conn;
    wkind kind;
    char run_id[SBX_RUN_ID_MAX];
    uint64_t deadline_ms;
    int listed;
} waiter;

typedef enum cphase { C_PENDING, C_BODY, C_ACTIVE, C_CLOSING } cphase;

/* One connection (MHD's socket context). */
typedef struct hconn {
    struct hconn *prev, *next;     /* on the list of its phase (pending, body) */
    int fd;
    cphase phase;
    uint64_t deadline_ms;
    /* The client's address for the per-address cap: a family byte, then
     * the IPv4 address or the first 8 bytes (the /64) of an IPv6 one. */
    unsigned char addr[9];
} hconn;

typedef struct clist {
    hconn *head, *tail;            /* head: the earliest deadline */
    size_t n;
} clist;

struct sbx_server {
    sbx_loop *loop;
    sbx_runs *runs;
    struct MHD_Daemon *d;
    sbx_io io;
    sbx_timer mhd_t;
    sbx_timer wait_t;
    sbx_timer deadline_t;
    char *key;
    size_t keylen;
    char *agent_id;
    char *base_url;
    waiter *waiters;
    int closing;
    clist pending, body;
    size_t pending_max, pending_per_ip;
    uint64_t header_ms, body_ms;
    int (*fence_ask)(void *arg);
    void *fence_arg;
    int64_t fence_issued;          /* newest issued token we know of */
    int fence_asking;              /* a question is out since fence_asked_ms */
    int fence_unknown;             /* the last answer was "could not read" */
    uint64_t fence_asked_ms;
    sbx_agent_metrics metrics;     /* GET /metrics (metrics.h) */
};

/* One request (MHD's con_cls). */
typedef struct req {
    sbx_server *s;
    int answered;          /* a 401 or /livez is queued; ignore the rest */
    sbx_buf body;          /* capped at WAKE_BODY_MAX */
    int too_big;
    int waited;            /* the long poll was suspended once already */
    int fence_asked;       /* held once for {sbx}:fence already */
    waiter w;
} req;

/* One log response (the content reader's cls). */
typedef struct follow {
    sbx_server *s;
    int fd;
    int follow;
    uint64_t offset;        /* ?offset=N: the log from byte N (a reader resuming) */
    waiter w;
} follow;

/* ---- waiters ---- */

static void rearm_wait(sbx_server *s);

static void waiter_add(sbx_server *s, waiter *w, uint64_t after_ms)
{
    w->deadline_ms = sbx_now_ms() + after_ms;
    w->prev = NULL;
    w->next = s->waiters;
    if (s->waiters)
        s->waiters->prev = w;
    s->waiters = w;
    w->listed = 1;
    rearm_wait(s);
}

static void waiter_unlink(sbx_server *s, waiter *w)
{
    if (!w->listed)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        s->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->listed = 0;
}

static void waiter_resume(sbx_server *s, waiter *w)
{
    waiter_unlink(s, w);
    MHD_resume_connection(w->conn);
    /* Resumed connections are handled by the next MHD_run. */
    sbx_timer_start(s->loop, &s->mhd_t, 0);
}

static void rearm_wait(sbx_server *s)
{
    uint64_t next = UINT64_MAX, now = sbx_now_ms();
    for (waiter *w = s->waiters; w; w = w->next)
        if (w->deadline_ms < next)
            next = w->deadline_ms;
    if (next == UINT64_MAX)
        sbx_timer_stop(s->loop, &s->wait_t);
    else
        sbx_timer_start(s->loop, &s->wait_t, next > now ? next - now : 0);
}

static void on_wait_timer(sbx_timer *t)
{
    sbx_server *s = t->data;
    uint64_t now = sbx_now_ms();
    waiter *w = s->waiters;
    while (w) {
        waiter *next = w->next;
        if (w->deadline_ms <= now)
            waiter_resume(s, w);
        w = next;
    }
    rearm_wait(s);
}

void sbx_server_notify(sbx_server *s, const char *run_id, sbx_runs_event ev)
{
    waiter *w = s->waiters;
    sbx_run_view v;

    if (ev == SBX_RUNS_SESSION_END) {
        /* run_id is a slot's: the DESTROYs waiting look again. */
        while (w) {
            waiter *next = w->next;
            if (w->kind == W_SESSION)
                waiter_resume(s, w);
            w = next;
        }
        rearm_wait(s);
        return;
    }
    if (ev == SBX_RUNS_END && sbx_runs_view(s->runs, run_id, &v) == 0)
        sbx__metrics_run_ended(&s->metrics, &v);
    while (w) {
        waiter *next = w->next;
        if (strcmp(w->run_id, run_id) == 0 && (ev == SBX_RUNS_END || w->kind == W_FOLLOW))
            waiter_resume(s, w);
        w = next;
    }
    rearm_wait(s);
}

/* ---- connections: phases and deadlines ---- */

static void clist_unlink(clist *l, hconn *h)
{
    if (h->prev)
        h->prev->next = h->next;
    else
        l->head = h->next;
    if (h->next)
        h->next->prev = h->prev;
    else
        l->tail = h->prev;
    h->prev = h->next = NULL;
    l->n--;
}

static void clist_append(clist *l, hconn *h)
{
    h->prev = l->tail;
    h->next = NULL;
    if (l->tail)
        l->tail->next = h;
    else
        l->head = h;
    l->tail = h;
    l->n++;
}

static clist *phase_list(sbx_server *s, cphase p)
{
    return p == C_PENDING ? &s->pending : p == C_BODY ? &s->body : NULL;
}

static void rearm_deadline(sbx_server *s)
{
    uint64_t next = UINT64_MAX, now = sbx_now_ms();
    if (s->pending.head)
        next = s->pending.head->deadline_ms;
    if (s->body.head && s->body.head->deadline_ms < next)
        next = s->body.head->deadline_ms;
    if (next == UINT64_MAX)
        sbx_timer_stop(s->loop, &s->deadline_t);
    else
        sbx_timer_start(s->loop, &s->deadline_t, next > now ? next - now : 0);
}

/* Moves h to phase p; pending and body start their deadline now. */
static void set_phase(sbx_server *s, hconn *h, cphase p)
{
    clist *from = phase_list(s, h->phase), *to = phase_list(s, p);
    if (h->phase == C_CLOSING)
        return;
    if (from)
        clist_unlink(from, h);
    h->phase = p;
    if (to) {
        h->deadline_ms = sbx_now_ms() + (p == C_PENDING ? s->header_ms : s->body_ms);
        clist_append(to, h);
    }
    rearm_deadline(s);
}

/* Ends h from outside MHD: MHD reads the end of the stream on its next run
 * and closes the connection (and calls notify_conn). */
static void close_conn(sbx_server *s, hconn *h, const char *why)
{
    sbx_debug("http", "closing connection fd=%d: %s", h->fd, why);
    set_phase(s, h, C_CLOSING);
    shutdown(h->fd, SHUT_RDWR);
    sbx_timer_start(s->loop, &s->mhd_t, 0);
}

static void on_deadline_timer(sbx_timer *t)
{
    sbx_server *s = t->data;
    uint64_t now = sbx_now_ms();
    while (s->pending.head && s->pending.head->deadline_ms <= now)
        close_conn(s, s->pending.head, "request headers not complete in time");
    while (s->body.head && s->body.head->deadline_ms <= now)
        close_conn(s, s->body.head, "request body not complete in time");
    rearm_deadline(s);
}

static void addr_key(const struct sockaddr *sa, unsigned char key[9])
{
    memset(key, 0, 9);
    if (!sa)
        return;
    if (sa->sa_family == AF_INET) {
        key[0] = 4;
        memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            key[0] = 4;
            memcpy(key + 1, a->s6_addr + 12, 4);
        } else {
            key[0] = 6;
            memcpy(key + 1, a->s6_addr, 8);
        }
    }
}

/* A new pending connection h: over the per-address or the total cap, the
 * oldest pending one goes (possibly h itself, when the cap is 1 and it is
 * the only one of its address). */
static void enforce_pending_caps(sbx_server *s, hconn *h)
{
    hconn *oldest = NULL;
    size_t same = 0;
    for (hconn *p = s->pending.head; p; p = p->next) {
        if (memcmp(p->addr, h->addr, sizeof(h->addr)) == 0) {
            if (!oldest)
                oldest = p;
            same++;
        }
    }
    if (same > s->pending_per_ip && oldest)
        close_conn(s, oldest, "too many connections without headers from one address");
    if (s->pending.n > s->pending_max)
        close_conn(s, s->pending.head, "too many connections without headers");
}

static void notify_conn(void *cls, struct MHD_Connection *c, void **socket_context,
                        enum MHD_ConnectionNotificationCode toe)
{
    sbx_server *s = cls;
    const union MHD_ConnectionInfo *fi, *ai;
    hconn *h = *socket_context;

    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        if (h) {
            set_phase(s, h, C_CLOSING);
            free(h);
        }
        *socket_context = NULL;
        return;
    }
    fi = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    ai = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!fi)
        return;
    h = calloc(1, sizeof(*h));
    if (!h) {
        /* Unaccounted, it could outstay every deadline: refuse it. */
        shutdown(fi->connect_fd, SHUT_RDWR);
        return;
    }
    h->fd = fi->connect_fd;
    h->phase = C_ACTIVE;
    addr_key(ai ? ai->client_addr : NULL, h->addr);
    *socket_context = h;
    set_phase(s, h, C_PENDING);
    enforce_pending_caps(s, h);
}

static hconn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *i = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i ? i->socket_context : NULL;
}

/* ---- MHD on the loop ---- */

static void run_mhd(sbx_server *s)
{
    MHD_UNSIGNED_LONG_LONG to = MHD_RUN_MAX_MS;
    MHD_run(s->d);
    if (MHD_get_timeout(s->d, &to) != MHD_YES || to > MHD_RUN_MAX_MS)
        to = MHD_RUN_MAX_MS;
    sbx_timer_start(s->loop, &s->mhd_t, to);
}

static void on_mhd_io(sbx_io *io, int events)
{
    (void)events;
    run_mhd(io->data);
}

static void on_mhd_timer(sbx_timer *t) { run_mhd(t->data); }

/* MHD's messages may quote the request (a header it could not parse). */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512], clean[4 * sizeof(line)];
    size_t n;
    (void)cls;
    vsnprintf(line, sizeof(line), fmt, ap);
    n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    sbx__log_field(line, n, clean, sizeof(clean));
    sbx_warn("http", "%s", clean);
}

/* ---- replies ---- */

static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, json_object *o)
{
    const char *txt = o ? json_object_to_json_string_ext(
                              o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)
                        : NULL;
    struct MHD_Response *r;
    enum MHD_Result ret;

    if (!txt) {
        json_object_put(o);
        return MHD_NO;
    }
    r = MHD_create_response_from_buffer(strlen(txt), (void *)txt, MHD_RESPMEM_MUST_COPY);
    json_object_put(o);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *code,
                                   const char *msg)
{
    json_object *o = json_object_new_object();
    if (!o)
        return MHD_NO;
    json_object_object_add(o, "error", json_object_new_string(code));
    if (msg && *msg) {
        char clean[512];
        sbx__utf8_sanitize(msg, strlen(msg), clean, sizeof(clean));
        json_object_object_add(o, "message", json_object_new_string(clean));
    }
    return reply_json(c, status, o);
}

/* 409 for a token older than the slot's newest (stale) or a slot in use
 * (busy): the newest token seen, and the run in the way when there is one. */
static enum MHD_Result reply_conflict(struct MHD_Connection *c, int stale, const char *msg,
                                      int64_t newest, const char *run_id)
{
    json_object *o = json_object_new_object();
    if (!o)
        return MHD_NO;
    json_object_object_add(o, "error", json_object_new_string(stale ? "stale_token" : "busy"));
    json_object_object_add(o, "message", json_object_new_string(msg));
    json_object_object_add(o, "newest_token", json_object_new_int64(newest));
    if (run_id && run_id[0])
        json_object_object_add(o, "run_id", json_object_new_string(run_id));
    return reply_json(c, MHD_HTTP_CONFLICT, o);
}

static enum MHD_Result reply_401(struct MHD_Connection *c)
{
    static const char msg[] = "{\"error\":\"unauthorized\"}";
    struct MHD_Response *r =
        MHD_create_response_from_buffer(sizeof(msg) - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret;
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"sbx-agent\"");
    ret = MHD_queue_response(c, MHD_HTTP_UNAUTHORIZED, r);
    MHD_destroy_response(r);
    return ret;
}

static void rfc3339(char *out, size_t len, uint64_t wall_ms)
{
    time_t sec = (time_t)(wall_ms / 1000);
    struct tm tm;
    size_t n;
    gmtime_r(&sec, &tm);
    n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, len - n, ".%03uZ", (unsigned)(wall_ms % 1000));
}

static json_object *run_json(sbx_server *s, const sbx_run_view *v)
{
    json_object *o = json_object_new_object();
    char tail[SBX_RUNS_TAIL_MAX + 1], clean[SBX_RUNS_TAIL_MAX + 1], ts[40], url[512];
    long n;

    if (!o)
        return NULL;
    json_object_object_add(o, "id", json_object_new_string(v->id));
    json_object_object_add(o, "slot", json_object_new_string(v->slot));
    json_object_object_add(o, "job_id", json_object_new_string(v->job_id));
    json_object_object_add(o, "token", json_object_new_int64(v->token));
    json_object_object_add(o, "attempt", json_object_new_int(v->attempt));
    json_object_object_add(o, "state", json_object_new_string(sbx_run_state_name(v->state)));
    json_object_object_add(o, "exit_code", v->exit_code >= 0 ? json_object_new_int(v->exit_code) : NULL);
    n = sbx_runs_tail(s->runs, v->id, tail, sizeof(tail));
    /* Build output is bytes; JSON strings are text. Invalid bytes become
     * '?', one for one, so the tail keeps its length. */
    sbx__utf8_sanitize(tail, n > 0 ? (size_t)n : 0, clean, sizeof(clean));
    json_object_object_add(o, "log_tail", json_object_new_string_len(clean, (int)strlen(clean)));
    json_object_object_add(o, "log_bytes", json_object_new_int64((int64_t)v->log_bytes));
    rfc3339(ts, sizeof(ts), v->started_ms);
    json_object_object_add(o, "started_at", json_object_new_string(ts));
    if (v->finished_ms) {
        rfc3339(ts, sizeof(ts), v->finished_ms);
        json_object_object_add(o, "finished_at", json_object_new_string(ts));
    } else {
        json_object_object_add(o, "finished_at", NULL);
    }
    /* A session's live preview wins over the static copy of public/: it
     * is what the session is for, and the copy is still at /preview/. */
    if (v->live_url && v->live_url[0]) {
        json_object_object_add(o, "preview_url", json_object_new_string(v->live_url));
    } else if (v->has_preview) {
        snprintf(url, sizeof(url), "%s/preview/%s/", s->base_url, v->id);
        json_object_object_add(o, "preview_url", json_object_new_string(url));
    } else {
        json_object_object_add(o, "preview_url", NULL);
    }
    json_object_object_add(o, "error", v->error[0] ? json_object_new_string(v->error) : NULL);
    if (v->session[0]) {
        json_object_object_add(o, "session", json_object_new_string(v->session));
        json_object_object_add(o, "sandbox", json_object_new_string(sbx_runs_sandbox_name(v->sandbox)));
        json_object_object_add(o, "resume_ms", json_object_new_int(v->resume_ms));
    }
    return o;
}

static enum MHD_Result reply_run(sbx_server *s, struct MHD_Connection *c, const char *id)
{
    sbx_run_view v;
    if (sbx_runs_view(s->runs, id, &v) != 0)
        return reply_error(c, MHD_HTTP_NOT_FOUND, "unknown_run", "no such run on this agent");
    return reply_json(c, MHD_HTTP_OK, run_json(s, &v));
}

/* ---- auth ---- */

/* Constant time in the length of our key: the loop always runs over all of
 * it and branches on nothing derived from it. */
static int key_equal(const char *key, size_t klen, const char *given)
{
    size_t glen = strlen(given);
    volatile unsigned char d = (unsigned char)(glen != klen);
    for (size_t i = 0; i < klen; i++)
        d |= (unsigned char)(key[i] ^ given[i < glen ? i : glen]);
    return d == 0;
}

static int authorized(const sbx_server *s, struct MHD_Connection *c)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    while (*h == ' ')
        h++;
    return key_equal(s->key, s->keylen, h);
}

/* ---- handlers ---- */

static enum MHD_Result h_health(sbx_server *s, struct MHD_Connection *c)
{
    json_object *o = json_object_new_object(), *running, *slots, *sessions;
    const char *ids[SBX_AGENT_CAPACITY_MAX];
    size_t n, cap = sbx_runs_capacity(s->runs);

    if (!o)
        return MHD_NO;
    n = sbx_runs_running_ids(s->runs, ids, SBX_AGENT_CAPACITY_MAX);
    running = json_object_new_array();
    slots = json_object_new_array();
    for (size_t i = 0; i < n; i++)
        json_object_array_add(running, json_object_new_string(ids[i]));
    for (size_t i = 0; i < cap; i++)
        json_object_array_add(slots, json_object_new_string(sbx_runs_slot_id(s->runs, i)));
    json_object_object_add(o, "id", json_object_new_string(s->agent_id));
    json_object_object_add(o, "state", json_object_new_string(
                                           sbx_runs_draining(s->runs) ? "draining"
                                           : n ? "busy" : "idle"));
    json_object_object_add(o, "capacity", json_object_new_int((int)cap));
    json_object_object_add(o, "slots", slots);
    json_object_object_add(o, "running", running);
    sessions = json_object_new_array();
    for (size_t i = 0; i < cap; i++) {
        const char *name, *state;
        json_object *e;
        if (!sbx_runs_slot_session(s->runs, i, &name, &state) || !(e = json_object_new_object()))
            continue;
        json_object_object_add(e, "slot", json_object_new_string(sbx_runs_slot_id(s->runs, i)));
        json_object_object_add(e, "session", json_object_new_string(name));
        json_object_object_add(e, "state", json_object_new_string(state));
        json_object_array_add(sessions, e);
    }
    json_object_object_add(o, "sessions", sessions);
    return reply_json(c, MHD_HTTP_OK, o);
}

static json_object *parse_body(const req *q, char *err, size_t errlen)
{
    json_tokener *tok;
    json_object *o;

    if (q->body.len == 0) {
        snprintf(err, errlen, "a JSON body is required");
        return NULL;
    }
    tok = json_tokener_new();
    if (!tok) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    o = json_tokener_parse_ex(tok, sbx_buf_str(&q->body), (int)q->body.len);
    if (!o || json_tokener_get_error(tok) != json_tokener_success ||
        (size_t)json_tokener_get_parse_end(tok) != q->body.len ||
        !json_object_is_type(o, json_type_object)) {
        snprintf(err, errlen, "the body is not one JSON object");
        json_object_put(o);
        o = NULL;
    }
    json_tokener_free(tok);
    return o;
}

/* Tokens and attempts are positive. json-c clamps an out-of-range integer
 * to INT64_MAX/MIN without a word; such a value is refused, or one request
 * could make a slot refuse every later (real) token. */
static int get_int64(json_object *o, const char *name, int64_t *out)
{
    json_object *v;
    int64_t n;
    if (!json_object_object_get_ex(o, name, &v) || !json_object_is_type(v, json_type_int))
        return -1;
    n = json_object_get_int64(v);
    if (n <= 0 || n == INT64_MAX)
        return -1;
    *out = n;
    return 0;
}

/* ---- tokens from the future (tokens.c) ---- */

void sbx_server_fence(sbx_server *s, int64_t issued)
{
    waiter *w = s->waiters;
    s->fence_asking = 0;
    s->fence_unknown = issued < 0;
    if (issued > s->fence_issued)
        s->fence_issued = issued;
    while (w) {
        waiter *next = w->next;
        if (w->kind == W_FENCE)
            waiter_resume(s, w);
        w = next;
    }
    rearm_wait(s);
}

/* Whether the handler may act on token now. If not, *ret is what it
 * returns: the connection is suspended until {sbx}:fence has answered (the
 * handler then runs again), or a refusal is queued. */
static int fence_ok(sbx_server *s, req *q, struct MHD_Connection *c, int64_t token,
                    enum MHD_Result *ret)
{
    char msg[160];
    uint64_t now = sbx_now_ms();

    if (!s->fence_ask || token <= s->fence_issued)
        return 1;
    if (!q->fence_asked) {
        q->fence_asked = 1;
        if (!s->fence_asking || now - s->fence_asked_ms >= FENCE_WAIT_MS) {
            if (s->fence_ask(s->fence_arg) != 0) {
                *ret = reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "token_unverified",
                                   "cannot read the newest issued token (is Redis reachable?)");
                return 0;
            }
            s->fence_asking = 1;
            s->fence_asked_ms = now;
        }
        q->w.conn = c;
        q->w.kind = W_FENCE;
        q->w.run_id[0] = '\0';
        waiter_add(s, &q->w, FENCE_WAIT_MS);
        MHD_suspend_connection(c);
        *ret = MHD_YES;
        return 0;
    }
    if (s->fence_asking || s->fence_unknown) {
        *ret = reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "token_unverified",
                           "cannot read the newest issued token (is Redis reachable?)");
        return 0;
    }
    sbx_warn("http", "refused token %" PRId64 ": never issued (newest issued %" PRId64 ")", token,
             s->fence_issued);
    snprintf(msg, sizeof(msg), "token %" PRId64 " was never issued (newest issued: %" PRId64 ")",
             token, s->fence_issued);
    *ret = reply_error(c, MHD_HTTP_CONFLICT, "future_token", msg);
    return 0;
}

static enum MHD_Result h_wake(sbx_server *s, req *q, struct MHD_Connection *c)
{
    json_object *body, *slot, *job, *o, *session = NULL;
    sbx_run_view v;
    char err[512], run_id[SBX_RUN_ID_MAX];
    const char *job_txt;
    int64_t token = 0, attempt = 1, newest = 0;
    sbx_wake_req w;
    sbx_wake_status st;
    enum MHD_Result ret;

    if (q->too_big)
        return reply_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "too_large", "request body too large");
    body = parse_body(q, err, sizeof(err));
    if (!body)
        return reply_error(c, MHD_HTTP_BAD_REQUEST, "invalid", err);
    if (!json_object_object_get_ex(body, "slot", &slot) || !json_object_is_type(slot, json_type_string) ||
        get_int64(body, "token", &token) != 0 || !json_object_object_get_ex(body, "job", &job) ||
        !json_object_is_type(job, json_type_object) ||
        (json_object_object_get_ex(body, "attempt", NULL) && get_int64(body, "attempt", &attempt) != 0)) {
        json_object_put(body);
        return reply_error(c, MHD_HTTP_BAD_REQUEST, "invalid",
                           "need slot (string), token (integer), job (object), attempt (integer)");
    }
    if (json_object_object_get_ex(body, "session", &session) &&
        (!json_object_is_type(session, json_type_string) ||
         !sbx_runs_session_ok(json_object_get_string(session),
                              (size_t)json_object_get_string_len(session)))) {
        json_object_put(body);
        return reply_error(c, MHD_HTTP_BAD_REQUEST, "invalid",
                           "session: a sandbox name of [a-z0-9-], at most 34 characters");
    }
    /* A slot name is compared as a C string: one with a NUL inside
     * ("a\u0000b") would name another slot. */
    if (strlen(json_object_get_string(slot)) != (size_t)json_object_get_string_len(slot)) {
        json_object_put(body);
        return reply_error(c, MHD_HTTP_BAD_REQUEST, "invalid", "slot contains a NUL character");
    }
    if (!fence_ok(s, q, c, token, &ret)) {
        json_object_put(body);
        return ret;
    }
    job_txt = json_object_to_json_string_ext(job, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    memset(&w, 0, sizeof(w));
    w.slot = json_object_get_string(slot);
    w.token = token;
    w.attempt = attempt > 0 && attempt < INT_MAX ? (int)attempt : 1;
    w.job = job_txt;
    w.job_len = job_txt ? strlen(job_txt) : 0;
    w.session = session ? json_object_get_string(session) : NULL;
    run_id[0] = '\0';
    st = sbx_runs_wake(s->runs, &w, run_id, &newest, err, sizeof(err));
    json_object_put(body);

    switch (st) {
    case SBX_WAKE_STARTED:
    case SBX_WAKE_EXISTING:
        o = json_object_new_object();
        if (!o)
            return MHD_NO;
        json_object_object_add(o, "run_id", json_object_new_string(run_id));
        json_object_object_add(o, "existing", json_object_new_boolean(st == SBX_WAKE_EXISTING));
        if (sbx_runs_view(s->runs, run_id, &v) == 0 && v.session[0]) {
            json_object_object_add(o, "sandbox", json_object_new_string(sbx_runs_sandbox_name(v.sandbox)));
            json_object_object_add(o, "resume_ms", json_object_new_int(v.resume_ms));
            if (v.live_url[0])
                json_object_object_add(o, "preview_url", json_object_new_string(v.live_url));
        }
        return reply_json(c, MHD_HTTP_OK, o);
    case SBX_WAKE_STALE:
    case SBX_WAKE_BUSY:
        return reply_conflict(c, st == SBX_WAKE_STALE, err, newest, run_id);
    case SBX_WAKE_NO_SLOT:
        return reply_error(c, MHD_HTTP_NOT_FOUND, "unknown_slot", err);
    case SBX_WAKE_INVALID:
        return reply_error(c, MHD_HTTP_BAD_REQUEST, "invalid", err);
    case SBX_WAKE_DRAINING:
        return reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "draining", err);
    case SBX_WAKE_FAILED:
        break;
    }
    ret = reply_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal", err);
    return ret;
}

static enum MHD_Result h_cancel(sbx_server *s, req *q, struct MHD_Connection *c, const char *id)
{
    json_object *body, *o;
    char err[256];
    int64_t token, newest = 0;
    enum MHD_Result ret;

    if (q->too_big)
        return reply_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "too_large", "request body too large");
    body = parse_body(q, err, sizeof(err));
    if (!body)
        return reply_error(c, MHD_HTTP_BAD_REQUEST, "invalid", err);
    if (get_int64(body, "token", &token) != 0) {
        json_object_put(body);
        return reply_error(c, MHD_HTTP_BAD_REQUEST, "invalid", "need token (integer)");
    }
    json_object_put(body);
    if (!fence_ok(s, q, c, token, &ret))
        return ret;
    switch (sbx_runs_cancel(s->runs, id, token, &newest)) {
    case SBX_CANCEL_UNKNOWN:
        return reply_error(c, MHD_HTTP_NOT_FOUND, "unknown_run", "no such run on this agent");
    case SBX_CANCEL_STALE:
        o = json_object_new_object();
        if (!o)
            return MHD_NO;
        json_object_object_add(o, "error", json_object_new_string("stale_token"));
        json_object_object_add(o, "newest_token", json_object_new_int64(newest));
        return reply_json(c, MHD_HTTP_CONFLICT, o);
    case SBX_CANCEL_OK:
        break;
    }
    return reply_run(s, c, id);
}

/* POST /sessions/{name}/pause|destroy {"slot","token"}: fenced like a
 * wake (stale, future tokens). A sandbox being removed holds the request
 * (suspended, like a long poll) until it is gone, then the handler runs
 * again and finds it absent: the worker's DESTROY is answered when nothing
 * is left, without polling. */
static enum MHD_Result h_session(sbx_server *s, req *q, struct MHD_Connection *c, const char *name,
                                 sbx_sop op)
{
    json_object *body, *slot, *o;
    char err[512], slot_id[256];
    int64_t token = 0, newest = 0;
    enum MHD_Result ret;
    sbx_sop_status st;

    if (q->too_big)
        return reply_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "too_large", "request body too large");
    body = parse_body(q, err, sizeof(err));
    if (!body)
        return reply_error(c, MHD_HTTP_BAD_REQUEST, "invalid", err);
    if (!json_object_object_get_ex(body, "slot", &slot) || !json_object_is_type(slot, json_type_string) ||
        get_int64(body, "token", &token) != 0 ||
        strlen(json_object_get_string(slot)) != (size_t)json_object_get_string_len(slot) ||
        (size_t)json_object_get_string_len(slot) >= sizeof(slot_id)) {
        json_object_put(body);
        return reply_error(c, MHD_HTTP_BAD_REQUEST, "invalid", "need slot (string), token (integer)");
    }
    snprintf(slot_id, sizeof(slot_id), "%s", json_object_get_string(slot));
    json_object_put(body);
    if (!fence_ok(s, q, c, token, &ret))
        return ret;
    st = sbx_runs_session_op(s->runs, op, slot_id, name, token, &newest, err, sizeof(err));
    if (st == SBX_SOP_REMOVING && !q->waited && !s->closing) {
        q->waited = 1;
        q->w.conn = c;
        q->w.kind = W_SESSION;
        q->w.run_id[0] = '\0';
        waiter_add(s, &q->w, SESSION_WAIT_MS);
        MHD_suspend_connection(c);
        return MHD_YES;
    }
    switch (st) {
    case SBX_SOP_DONE:
    case SBX_SOP_ABSENT:
        o = json_object_new_object();
        if (!o)
            return MHD_NO;
        json_object_object_add(o, "session", json_object_new_string(name));
        json_object_object_add(o, "slot", json_object_new_string(slot_id));
        /* Absent after waiting for the removal: a DESTROY's doing. */
        json_object_object_add(o, "state", json_object_new_string(
                                               op == SBX_SOP_PAUSE
                                                   ? (st == SBX_SOP_DONE ? "paused" : "absent")
                                                   : (st == SBX_SOP_DONE || q->waited ? "destroyed"
                                                                                      : "absent")));
        return reply_json(c, MHD_HTTP_OK, o);
    case SBX_SOP_STALE:
    case SBX_SOP_BUSY:
    case SBX_SOP_REMOVING:
        return reply_conflict(c, st == SBX_SOP_STALE, err, newest, NULL);
    case SBX_SOP_NO_SLOT:
        return reply_error(c, MHD_HTTP_NOT_FOUND, "unknown_slot", err);
    case SBX_SOP_UNSUPPORTED:
        return reply_error(c, MHD_HTTP_NOT_IMPLEMENTED, "not_supported", err);
    case SBX_SOP_FAILED:
        break;
    }
    return reply_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal", err);
}

static enum MHD_Result h_run(sbx_server *s, req *q, struct MHD_Connection *c, const char *id)
{
    const char *wait = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "wait_ms");
    sbx_run_view v;
    long ms = 0;

    if (sbx_runs_view(s->runs, id, &v) != 0)
        return reply_error(c, MHD_HTTP_NOT_FOUND, "unknown_run", "no such run on this agent");
    if (wait) {
        char *end;
        ms = strtol(wait, &end, 10);
        if (end == wait || *end || ms < 0)
            return reply_error(c, MHD_HTTP_BAD_REQUEST, "invalid", "wait_ms: a number of milliseconds");
        if (ms > WAIT_MAX_MS)
            ms = WAIT_MAX_MS;
    }
    if (ms > 0 && !q->waited && v.state == SBX_RS_RUNNING && !s->closing) {
        q->waited = 1;
        q->w.conn = c;
        q->w.kind = W_POLL;
        snprintf(q->w.run_id, sizeof(q->w.run_id), "%s", id);
        waiter_add(s, &q->w, (uint64_t)ms);
        MHD_suspend_connection(c);
        return MHD_YES;
    }
    return reply_json(c, MHD_HTTP_OK, run_json(s, &v));
}

static ssize_t follow_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    follow *f = cls;
    sbx_run_view v;
    ssize_t n;

    pos += f->offset;
    n = pread(f->fd, buf, max, (off_t)pos);
    if (n > 0)
        return n;
    if (n < 0)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (!f->follow || f->s->closing || sbx_runs_view(f->s->runs, f->w.run_id, &v) != 0 ||
        v.state != SBX_RS_RUNNING) {
        /* Every writer is gone once the run has ended: one more look. */
        n = pread(f->fd, buf, max, (off_t)pos);
        return n > 0 ? n : MHD_CONTENT_READER_END_OF_STREAM;
    }
    waiter_add(f->s, &f->w, FOLLOW_KEEPALIVE_MS);
    MHD_suspend_connection(f->w.conn);
    return 0;
}

static void follow_free(void *cls)
{
    follow *f = cls;
    waiter_unlink(f->s, &f->w);
    if (f->fd >= 0)
        close(f->fd);
    free(f);
}

static enum MHD_Result h_log(sbx_server *s, struct MHD_Connection *c, const char *id)
{
    const char *fl = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "follow");
    const char *off = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "offset");
    struct MHD_Response *r;
    enum MHD_Result ret;
    follow *f;
    int fd = sbx_runs_log_open(s->runs, id);

    if (fd == -ENOENT)
        return reply_error(c, MHD_HTTP_NOT_FOUND, "unknown_run", "no such run on this agent");
    if (fd == -ENODATA) {
        /* Only the tail outlives a slot's next run (runs.h). */
        char tail[SBX_RUNS_TAIL_MAX + 1];
        long n = sbx_runs_tail(s->runs, id, tail, sizeof(tail));
        r = MHD_create_response_from_buffer(n > 0 ? (size_t)n : 0, tail, MHD_RESPMEM_MUST_COPY);
        if (!r)
            return MHD_NO;
        MHD_add_response_header(r, "X-Sbx-Log", "tail");
    } else if (fd < 0) {
        return reply_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal", strerror(-fd));
    } else {
        f = calloc(1, sizeof(*f));
        if (!f) {
            close(fd);
            return MHD_NO;
        }
        f->s = s;
        f->fd = fd;
        f->follow = fl && strcmp(fl, "1") == 0;
        if (off) {
            char *end;
            unsigned long long v = strtoull(off, &end, 10);
            if (*off < '0' || *off > '9' || *end || v > INT64_MAX) {
                follow_free(f);
                return reply_error(c, MHD_HTTP_BAD_REQUEST, "invalid", "offset: a byte count");
            }
            f->offset = (uint64_t)v;
        }
        f->w.conn = c;
        f->w.kind = W_FOLLOW;
        snprintf(f->w.run_id, sizeof(f->w.run_id), "%s", id);
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, FOLLOW_BLOCK, follow_read, f, follow_free);
        if (!r) {
            follow_free(f);
            return MHD_NO;
        }
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain");
    ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static const char *content_type(const char *path)
{
    static const struct { const char *ext, *type; } types[] = {
        {".html", "text/html; charset=utf-8"}, {".htm", "text/html; charset=utf-8"},
        {".css", "text/css"}, {".js", "text/javascript"}, {".mjs", "text/javascript"},
        {".json", "application/json"}, {".svg", "image/svg+xml"}, {".png", "image/png"},
        {".jpg", "image/jpeg"}, {".jpeg", "image/jpeg"}, {".gif", "image/gif"},
        {".webp", "image/webp"}, {".ico", "image/x-icon"}, {".txt", "text/plain; charset=utf-8"},
        {".wasm", "application/wasm"}, {".woff2", "font/woff2"}, {".xml", "application/xml"},
    };
    const char *dot = strrchr(path, '.');
    if (dot && !strchr(dot, '/'))
        for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
            if (strcasecmp(dot, types[i].ext) == 0)
                return types[i].type;
    return "application/octet-stream";
}

/* Opens path under root without following any symlink and without leaving
 * root ("..", absolute paths, mount points): the preview tree belongs to
 * the build. */
static int open_beneath(int root, const char *path)
{
    struct open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
    return (int)syscall(SYS_openat2, root, path, &how, sizeof(how));
}

static enum MHD_Result h_preview(sbx_server *s, struct MHD_Connection *c, const char *id,
                                 const char *rest)
{
    char path[PATH_MAX];
    struct MHD_Response *r;
    struct stat st;
    enum MHD_Result ret;
    int root, fd;

    root = sbx_runs_preview_open(s->runs, id);
    if (root < 0)
        return reply_error(c, MHD_HTTP_NOT_FOUND, "no_preview", "this run has no preview here");
    while (*rest == '/')
        rest++;
    /* Room for "/index.html" after it. */
    if ((size_t)snprintf(path, sizeof(path), "%s", *rest ? rest : ".") >= sizeof(path) - 16) {
        close(root);
        return reply_error(c, MHD_HTTP_NOT_FOUND, "not_found", "path too long");
    }
    fd = open_beneath(root, path);
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n = strlen(path);
        close(fd);
        fd = -1;
        if (*rest && path[n - 1] != '/') {
            /* Relative links in index.html need the trailing slash. */
            char loc[PATH_MAX + 128];
            close(root);
            snprintf(loc, sizeof(loc), "/preview/%s/%s/", id, rest);
            r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
            if (!r)
                return MHD_NO;
            MHD_add_response_header(r, MHD_HTTP_HEADER_LOCATION, loc);
            ret = MHD_queue_response(c, MHD_HTTP_MOVED_PERMANENTLY, r);
            MHD_destroy_response(r);
            return ret;
        }
        snprintf(path + n, sizeof(path) - n, "%sindex.html", path[n - 1] == '/' ? "" : "/");
        fd = open_beneath(root, path);
    }
    close(root);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return reply_error(c, MHD_HTTP_NOT_FOUND, "not_found", "no such file in the preview");
    }
    r = MHD_create_response_from_fd64((uint64_t)st.st_size, fd); /* owns fd now */
    if (!r) {
        close(fd);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type(path));
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static int run_id_ok(const char *id, size_t n)
{
    if (n == 0 || n >= SBX_RUN_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9') || id[i] == '-'))
            return 0;
    return 1;
}

static enum MHD_Result method_not_allowed(struct MHD_Connection *c, const char *allow)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret;
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    ret = MHD_queue_response(c, MHD_HTTP_METHOD_NOT_ALLOWED, r);
    MHD_destroy_response(r);
    return ret;
}

/* Prometheus text; the page is small (metrics.h), made on the stack. */
static enum MHD_Result h_metrics(sbx_server *s, struct MHD_Connection *c)
{
    char page[METRICS_PAGE_MAX];
    size_t n = sbx__metrics_page(&s->metrics, s->runs, page, sizeof(page));
    struct MHD_Response *r = MHD_create_response_from_buffer(n, page, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ret;

    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; version=0.0.4");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result route(sbx_server *s, req *q, struct MHD_Connection *c, const char *url,
                             const char *method)
{
    int get = !strcmp(method, MHD_HTTP_METHOD_GET) || !strcmp(method, MHD_HTTP_METHOD_HEAD);
    int post = !strcmp(method, MHD_HTTP_METHOD_POST);
    char id[SBX_RUN_ID_MAX];
    const char *p, *slash;
    size_t n;

    if (!strcmp(url, "/health"))
        return get ? h_health(s, c) : method_not_allowed(c, "GET, HEAD");
    if (!strcmp(url, "/metrics"))
        return get ? h_metrics(s, c) : method_not_allowed(c, "GET, HEAD");
    if (!strcmp(url, "/wake"))
        return post ? h_wake(s, q, c) : method_not_allowed(c, "POST");
    if (!strncmp(url, "/sessions/", 10)) {
        char name[SBX_RUNS_SESSION_MAX + 1];
        p = url + 10;
        slash = strchr(p, '/');
        n = slash ? (size_t)(slash - p) : strlen(p);
        if (!slash || n > SBX_RUNS_SESSION_MAX || !sbx_runs_session_ok(p, n))
            return reply_error(c, MHD_HTTP_NOT_FOUND, "not_found", "no such endpoint");
        memcpy(name, p, n);
        name[n] = '\0';
        if (strcmp(slash, "/pause") && strcmp(slash, "/destroy"))
            return reply_error(c, MHD_HTTP_NOT_FOUND, "not_found", "no such endpoint");
        if (!post)
            return method_not_allowed(c, "POST");
        return h_session(s, q, c, name, slash[1] == 'p' ? SBX_SOP_PAUSE : SBX_SOP_DESTROY);
    }
    if (!strncmp(url, "/runs/", 6) || !strncmp(url, "/preview/", 9)) {
        int preview = url[1] == 'p';
        p = url + (preview ? 9 : 6);
        slash = strchr(p, '/');
        n = slash ? (size_t)(slash - p) : strlen(p);
        if (!run_id_ok(p, n))
            return reply_error(c, MHD_HTTP_NOT_FOUND, "unknown_run", "no such run on this agent");
        memcpy(id, p, n);
        id[n] = '\0';
        if (preview)
            return get ? h_preview(s, c, id, slash ? slash : "") : method_not_allowed(c, "GET, HEAD");
        if (!slash)
            return get ? h_run(s, q, c, id) : method_not_allowed(c, "GET, HEAD");
        if (!strcmp(slash, "/log"))
            return get ? h_log(s, c, id) : method_not_allowed(c, "GET, HEAD");
        if (!strcmp(slash, "/cancel"))
            return post ? h_cancel(s, q, c, id) : method_not_allowed(c, "POST");
    }
    return reply_error(c, MHD_HTTP_NOT_FOUND, "not_found", "no such endpoint");
}

/* Liveness without the key: the process answers HTTP, nothing more. */
static enum MHD_Result h_livez(struct MHD_Connection *c, int get)
{
    static const char ok[] = "ok\n";
    struct MHD_Response *r;
    enum MHD_Result ret;

    if (!get)
        return method_not_allowed(c, "GET, HEAD");
    r = MHD_create_response_from_buffer(sizeof(ok) - 1, (void *)ok, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

/* method and url came from the client: escaped for the log line. */
static void log_request(enum sbx_log_level lvl, const char *what, const char *method, const char *url)
{
    char m[64], u[LOG_URL_MAX];
    sbx__log_field(method, strlen(method), m, sizeof(m));
    sbx__log_field(url, strlen(url), u, sizeof(u));
    sbx_log(lvl, "http", "%s%s%s %s", what, *what ? " " : "", m, u);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    sbx_server *s = cls;
    req *q = *con_cls;
    hconn *h = conn_of(c);
    (void)version;

    if (!q) {
        q = calloc(1, sizeof(*q));
        if (!q)
            return MHD_NO;
        q->s = s;
        sbx_buf_init(&q->body, WAKE_BODY_MAX);
        *con_cls = q;
        if (h)
            set_phase(s, h, C_BODY);
        if (!strcmp(url, "/livez")) {
            q->answered = 1;
            return h_livez(c, !strcmp(method, MHD_HTTP_METHOD_GET) ||
                                  !strcmp(method, MHD_HTTP_METHOD_HEAD));
        }
        if (!authorized(s, c)) {
            /* Answered before any body is read; the key is not logged,
             * only that one was missing or wrong. */
            q->answered = 1;
            log_request(SBX_LOG_INFO, "401", method, url);
            return reply_401(c);
        }
        return MHD_YES;
    }
    if (q->answered) {
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (!q->too_big) {
            int rc = sbx_buf_add(&q->body, upload, n);
            if (rc == -E2BIG)
                q->too_big = 1;   /* answered 413 once the body has been read */
            else if (rc)
                return MHD_NO;
        }
        return MHD_YES;
    }
    /* The whole request is in: no deadline while it is answered. */
    if (h)
        set_phase(s, h, C_ACTIVE);
    if (s->closing)
        return reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "draining", "agent is stopping");
    log_request(SBX_LOG_DEBUG, "", method, url);
    return route(s, q, c, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    sbx_server *s = cls;
    req *q = *con_cls;
    hconn *h = conn_of(c);
    (void)toe;
    /* Kept alive, the connection waits for its next request's headers. */
    if (h)
        set_phase(s, h, C_PENDING);
    if (!q)
        return;
    waiter_unlink(s, &q->w);
    sbx_buf_free(&q->body);
    free(q);
    *con_cls = NULL;
}

/* ---- setup ---- */

static int listen_on(const sbx_server_config *cfg, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int fd, one = 1, rc;

    memset(&ss, 0, sizeof(ss));
    if (strchr(cfg->host, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)cfg->port);
        inet_pton(AF_INET6, cfg->host, &a->sin6_addr);
        len = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)cfg->port);
        inet_pton(AF_INET, cfg->host, &a->sin_addr);
        len = sizeof(*a);
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 128) < 0) {
        rc = -errno;
        snprintf(err, errlen, "listen on %s port %d: %s", cfg->host, cfg->port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return rc;
    }
    return fd;
}

/* Room for conn_max connections besides FD_RESERVE: the soft limit is
 * raised up to the hard one (Debian's soft default, 1024, is too few). */
static int fd_room(unsigned conn_max, char *err, size_t errlen)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)conn_max + FD_RESERVE;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    if (rl.rlim_cur >= need)
        return 0;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
        snprintf(err, errlen, "SBX_AGENT_CONN_MAX=%u needs %llu descriptors, the hard limit is "
                 "%llu (lower it, or raise ulimit -Hn)", conn_max, (unsigned long long)need,
                 (unsigned long long)rl.rlim_max);
        return -EMFILE;
    }
    rl.rlim_cur = need;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        snprintf(err, errlen, "raising the descriptor limit to %llu: %s", (unsigned long long)need,
                 strerror(errno));
        return -errno;
    }
    return 0;
}

int sbx_server_new(sbx_loop *loop, sbx_runs *runs, const sbx_server_config *cfg,
                   sbx_server **out, char *err, size_t errlen)
{
    sbx_server *s = calloc(1, sizeof(*s));
    const union MHD_DaemonInfo *info;
    int lfd = -1, rc = 0;

    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->loop = loop;
    s->runs = runs;
    sbx_timer_init(&s->mhd_t, on_mhd_timer, s);
    sbx_timer_init(&s->wait_t, on_wait_timer, s);
    sbx_timer_init(&s->deadline_t, on_deadline_timer, s);
    s->pending_max = (size_t)cfg->pending_max;
    s->pending_per_ip = (size_t)cfg->pending_per_ip;
    s->header_ms = (uint64_t)cfg->header_timeout_ms;
    s->body_ms = (uint64_t)cfg->body_timeout_ms;
    s->fence_ask = cfg->fence_ask;
    s->fence_arg = cfg->fence_arg;
    if (cfg->conn_max <= 0 || cfg->pending_max <= 0 || cfg->pending_max >= cfg->conn_max ||
        cfg->pending_per_ip <= 0 || cfg->header_timeout_ms <= 0 || cfg->body_timeout_ms <= 0) {
        snprintf(err, errlen, "connection limits and deadlines must be positive, pending below total");
        rc = -EINVAL;
        goto out;
    }
    if ((rc = fd_room((unsigned)cfg->conn_max, err, errlen)) != 0)
        goto out;
    s->key = strdup(cfg->key);
    s->keylen = strlen(cfg->key);
    s->agent_id = strdup(cfg->agent_id);
    s->base_url = strdup(cfg->base_url);
    if (!s->key || !s->agent_id || !s->base_url) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    lfd = listen_on(cfg, err, errlen);
    if (lfd < 0) {
        rc = lfd;
        goto out;
    }
    s->d = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0,
                            NULL, NULL, on_request, s,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                            MHD_OPTION_LISTEN_SOCKET, (MHD_socket)lfd,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->conn_max,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONN_TIMEOUT_S,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_NOTIFY_CONNECTION, notify_conn, s,
                            MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "libmicrohttpd did not start on %s port %d", cfg->host, cfg->port);
        rc = -EIO;
        goto out;
    }
    lfd = -1; /* the daemon's now */
    info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info) {
        snprintf(err, errlen, "libmicrohttpd has no epoll descriptor");
        rc = -EIO;
        goto out;
    }
    sbx_io_init(&s->io, info->epoll_fd, on_mhd_io, s);
    if ((rc = sbx_io_set(loop, &s->io, SBX_READ)) != 0) {
        snprintf(err, errlen, "loop: %s", strerror(-rc));
        goto out;
    }
    sbx_timer_start(loop, &s->mhd_t, 0);
    *out = s;
    s = NULL;
out:
    if (lfd >= 0)
        close(lfd);
    if (s)
        sbx_server_free(s);
    return rc;
}

void sbx_server_free(sbx_server *s)
{
    if (!s)
        return;
    s->closing = 1;
    if (s->d) {
        /* MHD must not be stopped with suspended connections: resume them
         * all; their handlers answer 503 or end their streams. */
        while (s->waiters)
            waiter_resume(s, s->waiters);
        MHD_run(s->d);
        MHD_run(s->d);
        sbx_io_stop(&s->io);
        MHD_stop_daemon(s->d);
    }
    sbx_timer_stop(s->loop, &s->mhd_t);
    sbx_timer_stop(s->loop, &s->wait_t);
    sbx_timer_stop(s->loop, &s->deadline_t);
    free(s->key);
    free(s->agent_id);
    free(s->base_url);
    free(s);
}
