/* admin.c — see admin.h. libmicrohttpd runs without threads (MHD_USE_EPOLL):
 * its epoll descriptor sits in the sbx loop like any socket and its timeout
 * drives one timer, as in agent/server.c. Answers are small and built in one
 * bounded buffer per request. */
#include "admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hist.h"
#include "log.h"
#include "sbx.h"
#include "session.h"
#include "worker.h"

/* /metrics with a few dozen series and three histograms (~1.5 KiB each)
 * fits easily; partitions' lag lines are capped at ADMIN_LAG_LINES_MAX so
 * the page stays bounded. */
#define ADMIN_PAGE_MAX 32768
/* One histogram's text: 19 lines of at most ~120 bytes. */
#define ADMIN_HIST_MAX 4096
#define ADMIN_LAG_LINES_MAX 256
/* /readyz names at most this many stalled partitions (and counts them all
 * up to ADMIN_LAG_LINES_MAX), so the answer stays one short JSON line. */
#define ADMIN_STALLS_SHOWN 16
#define MHD_RUN_MAX_MS 1000

struct sbx_admin {
    sbx_worker *w;
    struct MHD_Daemon *d;
    sbx_io io;
    sbx_timer t;
};

typedef struct page {
    char buf[ADMIN_PAGE_MAX];
    size_t len;
    int full;       /* a put() did not fit; the page ends before it */
} page;

/* Each call writes whole lines. One that does not fit is left out, with all
 * that follows, so a full page ends at a line's end and still parses (a line
 * cut in the middle would make Prometheus drop the whole scrape). */
static void put(page *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(page *p, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (p->full)
        return;
    va_start(ap, fmt);
    n = vsnprintf(p->buf + p->len, sizeof(p->buf) - p->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(p->buf) - p->len) {
        p->full = 1;
        p->buf[p->len] = '\0';
        return;
    }
    p->len += (size_t)n;
}

static void metric(page *p, const char *name, const char *type, const char *help, uint64_t v)
{
    put(p, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", name, help, name, type, name, v);
}

/* A histogram goes in whole or not at all (put()'s rule). */
static void histogram(page *p, const sbx_hist *h, const char *name, const char *help)
{
    char buf[ADMIN_HIST_MAX];
    int n = sbx_hist_format(h, name, help, "", buf, sizeof(buf));
    if (n > 0 && (size_t)n < sizeof(buf))
        put(p, "%s", buf);
}

void sbx__sessions_stats(const sbx_worker *w, sbx_sessions_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < w->nprov; i++)
        if (w->sessions[i])
            sbx_sessions_add_stats(w->sessions[i], out);
}

/* Slots of each of this worker's providers: how many it offers (0 for
 * vmpool, whose agents register their own slots) and how many this
 * worker's jobs lease. */
static void slots(sbx_worker *w, page *p)
{
    const char **ids, **held = NULL;
    size_t njobs = sbx__jobs_count(w);

    if (njobs)
        held = malloc(njobs * sizeof(*held));
    put(p, "# HELP sbx_slots_total build slots this worker's provider offers (vmpool: 0, the "
           "agents offer theirs)\n# TYPE sbx_slots_total gauge\n");
    for (int i = 0; i < w->nprov; i++)
        put(p, "sbx_slots_total{provider=\"%s\"} %zu\n", w->provs[i]->ops->name,
            w->provs[i]->ops->slots(w->provs[i], &ids));
    put(p, "# HELP sbx_slots_busy slots this worker's jobs hold a lease on\n"
           "# TYPE sbx_slots_busy gauge\n");
    for (int i = 0; i < w->nprov; i++)
        put(p, "sbx_slots_busy{provider=\"%s\"} %zu\n", w->provs[i]->ops->name,
            held ? sbx__jobs_leased_slots(w, w->provs[i], held, njobs) : 0);
    free(held);
}

/* Per partition: the oldest unfinished offset and its age (a long build
 * holds it too, so age alone is no alarm), and whether a dead letter that
 * cannot be published holds it (that is: stalled until the topic takes it). */
static void partitions(sbx_worker *w, page *p)
{
    sbx_offset_oldest old[ADMIN_LAG_LINES_MAX];
    sbx_kafka_stall st[ADMIN_LAG_LINES_MAX];
    int nold = sbx_kafka_oldest(w->kafka, old, ADMIN_LAG_LINES_MAX);
    int nst = sbx_kafka_stalls(w->kafka, st, ADMIN_LAG_LINES_MAX);
    uint64_t now = sbx_now_ms();

    put(p, "# HELP sbx_partition_oldest_unfinished_offset the partition's oldest offset not "
           "yet finished (its commit waits for it)\n"
           "# TYPE sbx_partition_oldest_unfinished_offset gauge\n");
    for (int i = 0; i < nold; i++)
        put(p, "sbx_partition_oldest_unfinished_offset{topic=\"%s\",partition=\"%d\"} %" PRId64
               "\n", w->cfg.topic, (int)old[i].partition, old[i].offset);
    put(p, "# HELP sbx_partition_oldest_unfinished_age_seconds how long that offset has been "
           "unfinished\n# TYPE sbx_partition_oldest_unfinished_age_seconds gauge\n");
    for (int i = 0; i < nold; i++)
        put(p, "sbx_partition_oldest_unfinished_age_seconds{topic=\"%s\",partition=\"%d\"} "
               "%.3f\n", w->cfg.topic, (int)old[i].partition,
            (double)(now - old[i].since_ms) / 1000.0);
    put(p, "# HELP sbx_partition_stalled_offset an offset whose dead letter could not be "
           "published yet (retried with backoff)\n"
           "# TYPE sbx_partition_stalled_offset gauge\n");
    for (int i = 0; i < nst; i++)
        put(p, "sbx_partition_stalled_offset{topic=\"%s\",partition=\"%d\"} %" PRId64 "\n",
            w->cfg.topic, (int)st[i].partition, st[i].offset);
    put(p, "# HELP sbx_dead_letter_publish_failures failed publishes of the dead letter that "
           "stalls the partition\n# TYPE sbx_dead_letter_publish_failures gauge\n");
    for (int i = 0; i < nst; i++)
        put(p, "sbx_dead_letter_publish_failures{topic=\"%s\",partition=\"%d\"} %d\n",
            w->cfg.topic, (int)st[i].partition, st[i].failures);
}

/* The "stalled" member of /readyz: the first ADMIN_STALLS_SHOWN. The last
 * error comes from librdkafka's fixed strings; quoted safely anyway. */
static void stalls_json(sbx_worker *w, page *p)
{
    sbx_kafka_stall st[ADMIN_STALLS_SHOWN];
    int n = sbx_kafka_stalls(w->kafka, st, ADMIN_STALLS_SHOWN);
    uint64_t now = sbx_now_ms();

    put(p, "\"stalled\":[");
    for (int i = 0; i < n; i++) {
        for (char *c = st[i].error; *c; c++)
            if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20)
                *c = '?';
        put(p, "%s{\"partition\":%d,\"offset\":%" PRId64 ",\"seconds\":%" PRIu64
               ",\"failures\":%d,\"error\":\"%s\"}", i ? "," : "", (int)st[i].partition,
            st[i].offset, (now - st[i].since_ms) / 1000, st[i].failures, st[i].error);
    }
    put(p, "]");
}

/* Group membership (deps.c): whether this worker is in the consumer group,
 * and how long each dependency has been down as deps.c counts it (the
 * grace that makes the worker leave runs on this number). */
static void intake_metrics(sbx_worker *w, page *p)
{
    if (!w->deps)
        return;
    metric(p, "sbx_consumer_group_member", "gauge",
           "1 while this worker is in the consumer group; 0 while it waits for its "
           "dependencies at start or left the group during an outage",
           sbx__deps_state(w->deps) == SBX_DEPS_JOINED);
    put(p, "# HELP sbx_dependency_down_seconds how long a dependency has been unreachable\n"
           "# TYPE sbx_dependency_down_seconds gauge\n");
    put(p, "sbx_dependency_down_seconds{dep=\"redis\"} %" PRIu64 "\n",
        sbx__deps_down_s(w->deps, "redis"));
    put(p, "sbx_dependency_down_seconds{dep=\"postgres\"} %" PRIu64 "\n",
        sbx__deps_down_s(w->deps, "postgres"));
}

static void metrics(sbx_worker *w, page *p)
{
    const sbx_stats *s = &w->stats;
    sbx_db_count c;
    sbx_kafka_lag lag[ADMIN_LAG_LINES_MAX];
    int nlag = sbx_kafka_lag_get(w->kafka, lag, ADMIN_LAG_LINES_MAX);

    metric(p, "sbx_jobs_received_total", "counter", "job messages consumed", s->received);
    put(p, "# HELP sbx_jobs_finished_total runs this worker ended, by status\n"
           "# TYPE sbx_jobs_finished_total counter\n");
    put(p, "sbx_jobs_finished_total{status=\"succeeded\"} %" PRIu64 "\n", s->succeeded);
    put(p, "sbx_jobs_finished_total{status=\"failed\"} %" PRIu64 "\n", s->failed);
    put(p, "sbx_jobs_finished_total{status=\"timed_out\"} %" PRIu64 "\n", s->timed_out);
    put(p, "sbx_jobs_finished_total{status=\"canceled\"} %" PRIu64 "\n", s->canceled);
    metric(p, "sbx_dead_lettered_total", "counter", "messages sent to the dead-letter topic",
           s->dead_lettered);
    metric(p, "sbx_duplicates_total", "counter", "deliveries of jobs already known",
           s->duplicates);
    metric(p, "sbx_jobs_id_reused_total", "counter",
           "messages dead-lettered because their job id holds another payload", s->id_reused);
    metric(p, "sbx_lease_waits_total", "counter", "acquires that found no slot or a busy project",
           s->lease_waits);
    metric(p, "sbx_fenced_out_total", "counter", "writes or runs refused for a stale token",
           s->fenced_out);
    metric(p, "sbx_retries_total", "counter", "transient errors retried", s->retries);
    metric(p, "sbx_runs_pruned_total", "counter",
           "terminal runs (with their history) this worker deleted past SBX_RETENTION",
           sbx_prune_total(w->prune));
    metric(p, "sbx_dead_letters_pruned_total", "counter",
           "rows of sbx.dead_letters this worker deleted past SBX_DLQ_RETENTION",
           sbx_prune_total(w->prune_dlq));
    metric(p, "sbx_dead_letters_pending", "gauge",
           "dead letters not yet recorded and published (their offsets wait)",
           sbx__dead_letters_pending(w));
    {
        sbx_sessions_stats ss;
        sbx__sessions_stats(w, &ss);
        metric(p, "sbx_sessions_paused_total", "counter",
               "idle sessions this worker's sweeper paused", ss.paused);
        metric(p, "sbx_sessions_ended_total", "counter",
               "sessions this worker's sweeper ended (idle, lifetime, stopped)", ss.ended);
        metric(p, "sbx_sessions_sweep_failures_total", "counter",
               "pauses or ends of a session that failed (tried again a second later)",
               ss.failed);
    }
    metric(p, "sbx_jobs_in_flight", "gauge", "jobs this worker holds", sbx__jobs_count(w));
    metric(p, "sbx_offsets_pending", "gauge", "consumed offsets not yet finished",
           sbx_kafka_pending(w->kafka));
    metric(p, "sbx_db_queue", "gauge", "statements waiting or in flight", sbx_db_queued(w->db));
    sbx_db_counts(w->db, &c);
    metric(p, "sbx_db_calls_total", "counter", "database calls answered", c.calls);
    metric(p, "sbx_db_statements_total", "counter",
           "statements sent to PostgreSQL (merged calls share one)", c.statements);
    metric(p, "sbx_db_wait_microseconds_total", "counter",
           "summed over calls: time queued behind the round in flight", c.wait_us);
    metric(p, "sbx_db_round_microseconds_total", "counter",
           "summed over calls: time from sent to answered", c.round_us);
    put(p, "# HELP sbx_up whether a dependency is reachable\n# TYPE sbx_up gauge\n");
    put(p, "sbx_up{dep=\"kafka\"} %d\n", sbx_kafka_up(w->kafka));
    put(p, "sbx_up{dep=\"redis\"} %d\n", sbx_redis_connected(w->redis));
    put(p, "sbx_up{dep=\"postgres\"} %d\n", sbx_db_connected(w->db));
    histogram(p, &s->queue_wait, "sbx_queue_wait_seconds",
              "from a job's enqueue (its Kafka timestamp) to its claim by this worker");
    histogram(p, &s->to_running, "sbx_create_to_running_seconds",
              "from a job's enqueue to its build running");
    histogram(p, &s->build, "sbx_build_duration_seconds",
              "from a build's start to its outcome written");
    slots(w, p);
    put(p, "# HELP sbx_build_info the running sbx-worker's version\n"
           "# TYPE sbx_build_info gauge\nsbx_build_info{program=\"sbx-worker\",version=\"%s\","
           "git=\"%s\"} 1\n", sbx_version(), sbx_version_git());
    intake_metrics(w, p);
    put(p, "# HELP sbx_kafka_consumer_lag messages behind the partition's end\n"
           "# TYPE sbx_kafka_consumer_lag gauge\n");
    for (int i = 0; i < nlag; i++)
        put(p, "sbx_kafka_consumer_lag{topic=\"%s\",partition=\"%d\"} %" PRId64 "\n",
            w->cfg.topic, (int)lag[i].partition, lag[i].lag);
    partitions(w, p);
}

static int ready(sbx_worker *w, page *p)
{
    int k = sbx_kafka_up(w->kafka), r = sbx_redis_connected(w->redis), d = sbx_db_connected(w->db);
    int member = !w->deps || sbx__deps_state(w->deps) == SBX_DEPS_JOINED;
    int ok = k && r && d && member && !w->stopping;
    char why[256], intake[96] = "joined";
    size_t n = 0;

    /* Why Redis is down (a refused password says so), as a JSON string:
     * the line is plain text from Redis or hiredis, never a password. */
    for (const char *c = sbx_redis_last_error(w->redis); *c && n + 1 < sizeof(why); c++)
        why[n++] = (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) ? '?' : *c;
    why[n] = '\0';
    put(p, "{\"ready\":%s,\"kafka\":\"%s\",\"redis\":\"%s\",\"postgres\":\"%s\","
           "\"stopping\":%s,\"jobs\":%zu,\"assigned_partitions\":%d,\"redis_error\":\"%s\",",
        ok ? "true" : "false", k ? "up" : "down", r ? "up" : "down", d ? "up" : "down",
        w->stopping ? "true" : "false", sbx__jobs_count(w), sbx_kafka_assigned_count(w->kafka),
        r ? "" : why);
    /* "intake": in the group, waiting to join, or out ("paused: redis down
     * 45s"): deps.c's own words, no quotes in them. */
    if (w->deps)
        sbx__deps_describe(w->deps, intake, sizeof(intake));
    put(p, "\"intake\":\"%s\",", intake);
    /* A stall leaves "ready" as it is: the worker still serves its other
     * partitions, and a restart or another owner would meet the same
     * dead-letter topic. It is listed for the operator, who fixes the topic. */
    stalls_json(w, p);
    put(p, "}\n");
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    sbx_admin *a = cls;
    page *p;
    unsigned status = MHD_HTTP_OK;
    const char *type = "text/plain; version=0.0.4";
    struct MHD_Response *r;
    enum MHD_Result ret;
    (void)version;
    (void)upload_data;
    (void)upload_size;
    (void)con_cls;

    if (strcmp(method, "GET") != 0)
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
    p = calloc(1, sizeof(*p));
    if (!p)
        return MHD_NO;
    if (status != MHD_HTTP_OK) {
        put(p, "GET only\n");
    } else if (strcmp(url, "/healthz") == 0) {
        put(p, "ok\n");
    } else if (strcmp(url, "/readyz") == 0) {
        type = "application/json";
        if (!ready(a->w, p))
            status = MHD_HTTP_SERVICE_UNAVAILABLE;
    } else if (strcmp(url, "/metrics") == 0) {
        metrics(a->w, p);
    } else {
        status = MHD_HTTP_NOT_FOUND;
        put(p, "not found: /healthz, /readyz, /metrics\n");
    }
    r = MHD_create_response_from_buffer(p->len, p->buf, MHD_RESPMEM_MUST_COPY);
    free(p);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    /* RFC 9110 15.5.6: a 405 says which methods would do. */
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET");
    ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static void run_mhd(sbx_admin *a)
{
    MHD_UNSIGNED_LONG_LONG to = MHD_RUN_MAX_MS;
    MHD_run(a->d);
    if (MHD_get_timeout(a->d, &to) != MHD_YES || to > MHD_RUN_MAX_MS)
        to = MHD_RUN_MAX_MS;
    sbx_timer_start(a->w->loop, &a->t, to);
}

static void on_io(sbx_io *io, int events)
{
    (void)events;
    run_mhd(io->data);
}

static void on_timer(sbx_timer *t) { run_mhd(t->data); }

int sbx_admin_new(sbx_worker *w, const char *addr, sbx_admin **out, char *err, size_t errlen)
{
    struct sockaddr_in sa;
    socklen_t salen = sizeof(sa);
    char host[64];
    const char *colon = strrchr(addr, ':');
    const union MHD_DaemonInfo *info;
    sbx_admin *a;
    int fd = -1, one = 1;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    if (!colon || (size_t)(colon - addr) >= sizeof(host)) {
        snprintf(err, errlen, "SBX_ADMIN_LISTEN=%s: use ip:port, e.g. 127.0.0.1:9464", addr);
        return -EINVAL;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        snprintf(err, errlen, "SBX_ADMIN_LISTEN=%s: %s is not an IPv4 address", addr, host);
        return -EINVAL;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
        snprintf(err, errlen, "SBX_ADMIN_LISTEN=%s: %s", addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -EADDRINUSE;
    }
    getsockname(fd, (struct sockaddr *)&sa, &salen);
    a = calloc(1, sizeof(*a));
    if (!a) {
        close(fd);
        return -ENOMEM;
    }
    a->w = w;
    a->d = MHD_start_daemon(MHD_USE_EPOLL, 0, NULL, NULL, on_request, a,
                            MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                            MHD_OPTION_CONNECTION_LIMIT, 64u,
                            MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    info = a->d ? MHD_get_daemon_info(a->d, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    if (!info) {
        snprintf(err, errlen, "SBX_ADMIN_LISTEN=%s: libmicrohttpd did not start", addr);
        if (a->d)
            MHD_stop_daemon(a->d);
        else
            close(fd);
        free(a);
        return -EIO;
    }
    sbx_io_init(&a->io, info->epoll_fd, on_io, a);
    sbx_io_set(w->loop, &a->io, SBX_READ);
    sbx_timer_init(&a->t, on_timer, a);
    sbx_timer_start(w->loop, &a->t, 0);
    sbx_info("admin", "serving /healthz /readyz /metrics on %s:%d", host, ntohs(sa.sin_port));
    *out = a;
    return 0;
}

void sbx_admin_free(sbx_admin *a)
{
    if (!a)
        return;
    sbx_io_stop(&a->io);
    sbx_timer_stop(a->w->loop, &a->t);
    MHD_stop_daemon(a->d);
    free(a);
}
