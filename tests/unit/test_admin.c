/* test_admin.c — the operations endpoint (worker/admin.c) over real HTTP on
 * 127.0.0.1, served from an sbx loop whose worker holds real connections:
 * a private redis-server, the test services' PostgreSQL (SBX_DATABASE_URL;
 * without it the program exits 77), and a Kafka intake joined to
 * librdkafka's in-process mock cluster, whose broker the test can take down
 * (the real broker of test_kafka cannot be stopped from a unit test).
 *
 * Requests are raw bytes written by a client thread, so the test controls
 * every byte (methods, sizes, a client that stops mid-request) while the main
 * thread turns the loop that serves them.
 *
 * Checks: /healthz; /readyz with everything up, and with Kafka, Redis,
 * PostgreSQL down and while stopping; /metrics as Prometheus text with the
 * counters, gauges, dependency states and consumer lag, complete lines even
 * when the lag lines overflow the page; unknown paths; methods other than
 * GET; slow, idle, oversized and too many clients; bad listen addresses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "admin.h"
#include "log.h"
#include "sbx.h"
#include "svc.h"
#include "worker.h"

#define WAIT_MS 15000
/* A response is a few kilobytes (admin.c's page is 32 KiB at most). */
#define RESP_MAX 65536
/* admin.c's MHD_OPTION_CONNECTION_LIMIT and MHD_OPTION_CONNECTION_TIMEOUT. */
#define CONN_LIMIT 64
#define CONN_TIMEOUT_S 10
#define PAGE_MAX 32768
#define TOPIC "sbx.jobs"

static sbx_loop *L;
static sbx_worker W;
static sbx_admin *ADM;
static int port;
static test_redis srv;
static int redis_up, db_up;
static rd_kafka_t *mock_host, *P;
static rd_kafka_mock_cluster_t *MC;
static char mock_brokers[256];
static sbx_offset_ref first_p0;
static int consumed, have_first_p0;

/* ---- the loop ---- */

typedef int (*cond_fn)(const void *arg);

static int until(cond_fn f, const void *arg, int timeout_ms)
{
    uint64_t end = sbx_now_ms() + (uint64_t)timeout_ms;
    while (!f(arg) && sbx_now_ms() < end)
        sbx_loop_once(L, 20);
    return f(arg);
}

static void run_for(int ms)
{
    uint64_t end = sbx_now_ms() + (uint64_t)ms;
    while (sbx_now_ms() < end)
        sbx_loop_once(L, 20);
}

/* ---- a client on its own thread ---- */

typedef struct req {
    const char *raw;
    size_t rawlen;
    size_t send_first;      /* when non-zero: send this much, wait, then the rest */
    int pause_ms;
    char resp[RESP_MAX + 1];
    size_t len;
    int connect_err;
    volatile int done;
} req;

static int dial(void)
{
    struct sockaddr_in a;
    struct timeval tv = {WAIT_MS / 1000, 0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void read_to_end(int fd, req *r)
{
    ssize_t got;
    while (r->len < RESP_MAX && (got = recv(fd, r->resp + r->len, RESP_MAX - r->len, 0)) > 0)
        r->len += (size_t)got;
    r->resp[r->len] = '\0';
}

static void *client(void *arg)
{
    req *r = arg;
    int fd = dial();
    if (fd < 0) {
        r->connect_err = 1;
        goto out;
    }
    if (r->send_first) {
        if (send_all(fd, r->raw, r->send_first) == 0)
            usleep((useconds_t)r->pause_ms * 1000);
        (void)send_all(fd, r->raw + r->send_first, r->rawlen - r->send_first);
    } else {
        /* The server may answer and close before it read everything (an
         * oversized request): what it answered is still read below. */
        (void)send_all(fd, r->raw, r->rawlen);
    }
    read_to_end(fd, r);
    close(fd);
out:
    r->done = 1;
    return NULL;
}

static int req_done(const void *arg) { return ((const req *)arg)->done; }

static void start_req(req *r, pthread_t *th)
{
    r->len = 0;
    r->done = 0;
    r->connect_err = 0;
    assert_int_equal(pthread_create(th, NULL, client, r), 0);
}

static void finish_req(req *r, pthread_t th)
{
    assert_true(until(req_done, r, WAIT_MS + 5000));
    pthread_join(th, NULL);
}

/* Sends raw, serves until the answer is complete; returns the status (0 if
 * there was no HTTP answer). */
static int http_raw(req *r, const char *raw, size_t len)
{
    pthread_t th;
    r->raw = raw;
    r->rawlen = len;
    start_req(r, &th);
    finish_req(r, th);
    if (r->len < 12 || strncmp(r->resp, "HTTP/1.", 7) != 0)
        return 0;
    return atoi(r->resp + 9);
}

static req R;

static int http(const char *method, const char *path)
{
    char raw[1024];
    int n = snprintf(raw, sizeof(raw), "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                     method, path);
    return http_raw(&R, raw, (size_t)n);
}

static const char *body(const req *r)
{
    const char *b = strstr(r->resp, "\r\n\r\n");
    return b ? b + 4 : "";
}

/* The value of a response header, copied to out ("" when absent). */
static const char *header(const req *r, const char *name, char *out, size_t outlen)
{
    const char *p = r->resp, *end = strstr(r->resp, "\r\n\r\n");
    size_t nl = strlen(name);
    out[0] = '\0';
    while (p && end && p < end) {
        const char *eol = strstr(p, "\r\n");
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            snprintf(out, outlen, "%.*s", (int)(eol - v), v);
            return out;
        }
        p = eol ? eol + 2 : NULL;
    }
    return out;
}

/* ---- readiness ---- */

static json_object *readyz(int *status)
{
    json_object *j;
    char type[64];
    *status = http("GET", "/readyz");
    assert_string_equal(header(&R, "Content-Type", type, sizeof(type)), "application/json");
    j = json_tokener_parse(body(&R));
    if (!j)
        fail_msg("/readyz body is not JSON: %s", body(&R));
    return j;
}

static const char *jstr(json_object *j, const char *k)
{
    json_object *v;
    assert_true(json_object_object_get_ex(j, k, &v));
    return json_object_get_string(v);
}

static int jint(json_object *j, const char *k)
{
    json_object *v;
    assert_true(json_object_object_get_ex(j, k, &v));
    return json_object_get_int(v);
}

static int jbool(json_object *j, const char *k)
{
    json_object *v;
    assert_true(json_object_object_get_ex(j, k, &v));
    assert_true(json_object_is_type(v, json_type_boolean));
    return json_object_get_boolean(v);
}

static void expect_ready(int want_ready, const char *kafka, const char *redis, const char *pg)
{
    int status;
    json_object *j = readyz(&status);
    assert_int_equal(status, want_ready ? 200 : 503);
    assert_int_equal(jbool(j, "ready"), want_ready);
    assert_string_equal(jstr(j, "kafka"), kafka);
    assert_string_equal(jstr(j, "redis"), redis);
    assert_string_equal(jstr(j, "postgres"), pg);
    assert_int_equal(jbool(j, "stopping"), W.stopping != 0);
    assert_int_equal(jint(j, "jobs"), 0);
    json_object_put(j);
}

static int kafka_is(const void *arg) { return sbx_kafka_up(W.kafka) == *(const int *)arg; }
static int redis_is(const void *arg) { return sbx_redis_connected(W.redis) == *(const int *)arg; }
static int flag_set(const void *arg) { return *(const int *)arg; }

static int all_up(const void *arg)
{
    (void)arg;
    return sbx_kafka_up(W.kafka) && sbx_redis_connected(W.redis) && sbx_db_connected(W.db) &&
           sbx_kafka_assigned_count(W.kafka) == 2;
}

/* ---- /metrics ---- */

/* Every line is complete and is a comment (# HELP / # TYPE) or a sample of
 * a family whose TYPE came before it, with a number for value; a
 * histogram's samples are its name with _bucket, _sum or _count. */
static void check_exposition(const char *page)
{
    char families[64][96];
    int nf = 0;
    const char *p = page;
    size_t len = strlen(page);
    assert_true(len > 0);
    assert_int_equal(page[len - 1], '\n');
    while (*p) {
        const char *eol = strchr(p, '\n');
        char line[512], fam[96];
        assert_non_null(eol);
        assert_true((size_t)(eol - p) < sizeof(line));
        snprintf(line, sizeof(line), "%.*s", (int)(eol - p), p);
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char type[32];
            assert_int_equal(sscanf(line + 7, "%95s %31s", fam, type), 2);
            assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                        strcmp(type, "histogram") == 0);
            assert_true(nf < 64);
            snprintf(families[nf++], sizeof(families[0]), "%s", fam);
        } else if (strncmp(line, "# HELP ", 7) == 0) {
            assert_true(strchr(line + 7, ' ') != NULL);
        } else {
            char *sp = strrchr(line, ' '), *endp;
            size_t n = strcspn(line, "{ ");
            int known = 0;
            assert_non_null(sp);
            strtod(sp + 1, &endp);
            if (sp[1] == '\0' || *endp != '\0')
                fail_msg("sample value is not a number: %s", line);
            snprintf(fam, sizeof(fam), "%.*s", (int)n, line);
            for (int i = 0; i < nf; i++)
                known |= strcmp(families[i], fam) == 0;
            for (int i = 0; i < nf && !known; i++) {
                size_t fl = strlen(families[i]);
                known = strncmp(families[i], fam, fl) == 0 &&
                        (strcmp(fam + fl, "_bucket") == 0 || strcmp(fam + fl, "_sum") == 0 ||
                         strcmp(fam + fl, "_count") == 0);
            }
            if (!known)
                fail_msg("sample before its # TYPE: %s", line);
            if (line[n] == '{')
                assert_non_null(strstr(line + n, "} "));
        }
        p = eol + 1;
    }
}

static int has_line(const char *page, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = page; (p = strstr(p, line)) != NULL; p++)
        if ((p == page || p[-1] == '\n') && p[n] == '\n')
            return 1;
    return 0;
}

static void expect_line(const char *page, const char *line)
{
    if (!has_line(page, line))
        fail_msg("/metrics lacks the line \"%s\":\n%s", line, page);
}

static const char *metrics(void)
{
    char type[64];
    assert_int_equal(http("GET", "/metrics"), 200);
    assert_string_equal(header(&R, "Content-Type", type, sizeof(type)), "text/plain; version=0.0.4");
    check_exposition(body(&R));
    return body(&R);
}

/* ---- the worker's connections ---- */

static void on_redis(void *arg, int up) { (void)arg; redis_up = up; }
static void on_db(void *arg, int up) { (void)arg; db_up = up; }

static void on_msg(void *arg, const sbx_kafka_msg *m)
{
    (void)arg;
    consumed++;
    if (m->partition == 0 && m->offset == 0) {
        first_p0 = m->ref;
        have_first_p0 = 1;
    }
}

static int open_kafka_at(const char *brokers, const char *topic, const char *group, sbx_kafka **out)
{
    /* Statistics (reachability, lag) every 100 ms instead of 5 s, and quick
     * reconnects after the mock broker comes back. */
    static const char *const extra[] = {"statistics.interval.ms=100", "reconnect.backoff.max.ms=200",
                                        "heartbeat.interval.ms=500", NULL};
    char err[256] = "";
    sbx_kafka_config cfg = {
        .brokers = brokers,
        .topic = topic,
        .dlq_topic = "sbx.jobs.dlq",
        .group = group,
        .client_id = "test_admin",
        .session_timeout_ms = 6000,
        .max_inflight = 1000,
        .extra = extra,
    };
    int rc = sbx_kafka_new(L, &cfg, on_msg, NULL, out, err, sizeof(err));
    if (rc)
        fprintf(stderr, "test_admin: sbx_kafka_new: %s\n", err);
    return rc;
}

static int open_kafka(const char *topic, const char *group, sbx_kafka **out)
{
    return open_kafka_at(mock_brokers, topic, group, out);
}

static int start_redis(void)
{
    char url[64], err[128];
    if (test_redis_start(&srv) != 0)
        return -1;
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", srv.port);
    redis_up = 0;
    if (sbx_redis_new(L, url, on_redis, NULL, &W.redis, err, sizeof(err)) != 0)
        return -1;
    return until(flag_set, &redis_up, WAIT_MS) ? 0 : -1;
}

static int mock_start(void)
{
    char err[256];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "log_level", "3", err, sizeof(err));
    /* The mock cluster lives inside a client handle (as in mockbroker.c). */
    mock_host = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
    if (!mock_host)
        return -1;
    MC = rd_kafka_mock_cluster_new(mock_host, 1);
    if (!MC || rd_kafka_mock_topic_create(MC, TOPIC, 2, 1) ||
        rd_kafka_mock_topic_create(MC, "sbx.jobs.dlq", 1, 1))
        return -1;
    snprintf(mock_brokers, sizeof(mock_brokers), "%s", rd_kafka_mock_cluster_bootstraps(MC));
    c = rd_kafka_conf_new();
    if (rd_kafka_conf_set(c, "bootstrap.servers", mock_brokers, err, sizeof(err)) ||
        rd_kafka_conf_set(c, "log_level", "0", err, sizeof(err)))
        return -1;
    P = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
    return P ? 0 : -1;
}

static int setup(void **state)
{
    const char *url = getenv("SBX_DATABASE_URL");
    char addr[64], err[256];
    (void)state;
    if (!url)
        return -1;
    sbx_loop_new(&L);
    memset(&W, 0, sizeof(W));
    W.loop = L;
    snprintf(W.cfg.topic, sizeof(W.cfg.topic), "%s", TOPIC);
    if (start_redis() || sbx_db_new(L, url, on_db, NULL, &W.db) || mock_start())
        return -1;
    /* Five messages on partition 0; finishing the first leaves a lag of 4. */
    for (int i = 0; i < 5; i++)
        if (rd_kafka_producev(P, RD_KAFKA_V_TOPIC(TOPIC), RD_KAFKA_V_PARTITION(0),
                              RD_KAFKA_V_VALUE("{}", 2), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                              RD_KAFKA_V_END))
            return -1;
    if (rd_kafka_flush(P, WAIT_MS) || open_kafka(TOPIC, "test-admin", &W.kafka))
        return -1;
    if (!until(all_up, NULL, WAIT_MS) || !until(flag_set, &have_first_p0, WAIT_MS)) {
        fprintf(stderr, "test_admin: kafka %d (%d partitions) redis %d postgres %d\n",
                sbx_kafka_up(W.kafka), sbx_kafka_assigned_count(W.kafka),
                sbx_redis_connected(W.redis), sbx_db_connected(W.db));
        return -1;
    }
    sbx_kafka_done(W.kafka, &first_p0);
    port = test_free_port();
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    if (sbx_admin_new(&W, addr, &ADM, err, sizeof(err))) {
        fprintf(stderr, "test_admin: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sbx_admin_free(ADM);
    sbx_kafka_close(W.kafka);
    sbx_redis_free(W.redis);
    sbx_db_free(W.db);
    test_redis_stop(&srv);
    rd_kafka_destroy(P);
    rd_kafka_mock_cluster_destroy(MC);
    rd_kafka_destroy(mock_host);
    sbx_loop_free(L);
    return 0;
}

/* ---- tests ---- */

static void t_healthz(void **state)
{
    char type[64];
    (void)state;
    assert_int_equal(http("GET", "/healthz"), 200);
    assert_string_equal(body(&R), "ok\n");
    assert_string_equal(header(&R, "Content-Type", type, sizeof(type)), "text/plain; version=0.0.4");
    /* A query string does not change the path. */
    assert_int_equal(http("GET", "/healthz?verbose=1"), 200);
}

static void t_readyz_all_up(void **state)
{
    int status;
    json_object *j;
    (void)state;
    j = readyz(&status);
    assert_int_equal(status, 200);
    assert_true(jbool(j, "ready"));
    assert_string_equal(jstr(j, "kafka"), "up");
    assert_string_equal(jstr(j, "redis"), "up");
    assert_string_equal(jstr(j, "postgres"), "up");
    assert_false(jbool(j, "stopping"));
    assert_int_equal(jint(j, "jobs"), 0);
    assert_int_equal(jint(j, "assigned_partitions"), 2);
    json_object_put(j);
}

typedef struct want_lag {
    int64_t p0, p1;
} want_lag;

static int lag_is(const void *arg)
{
    const want_lag *w = arg;
    sbx_kafka_lag lag[4];
    int n = sbx_kafka_lag_get(W.kafka, lag, 4), ok = 0;
    for (int i = 0; i < n; i++)
        ok += (lag[i].partition == 0 && lag[i].lag == w->p0) ||
              (lag[i].partition == 1 && lag[i].lag == w->p1);
    return n == 2 && ok == 2;
}

static void t_metrics(void **state)
{
    const char *page;
    want_lag lag = {4, 0};
    (void)state;
    W.stats = (sbx_stats){.received = 11, .duplicates = 2, .dead_lettered = 3, .succeeded = 5,
                          .failed = 7, .timed_out = 13, .canceled = 17, .lease_waits = 19,
                          .fenced_out = 23, .retries = 29, .id_reused = 31};
    sbx_hist_observe(&W.stats.build, 2.0);
    sbx_hist_observe(&W.stats.queue_wait, 0.2);
    assert_true(until(lag_is, &lag, WAIT_MS));
    page = metrics();
    expect_line(page, "# TYPE sbx_build_duration_seconds histogram");
    expect_line(page, "sbx_build_duration_seconds_bucket{le=\"1\"} 0");
    expect_line(page, "sbx_build_duration_seconds_bucket{le=\"2.5\"} 1");
    expect_line(page, "sbx_build_duration_seconds_bucket{le=\"+Inf\"} 1");
    expect_line(page, "sbx_build_duration_seconds_count 1");
    expect_line(page, "sbx_queue_wait_seconds_bucket{le=\"0.25\"} 1");
    expect_line(page, "sbx_create_to_running_seconds_count 0");
    expect_line(page, "# TYPE sbx_slots_total gauge");
    expect_line(page, "# TYPE sbx_slots_busy gauge");
    {
        char info[256];
        snprintf(info, sizeof(info), "sbx_build_info{program=\"sbx-worker\",version=\"%s\",git=\"%s\"} 1",
                 sbx_version(), sbx_version_git());
        expect_line(page, info);
    }
    expect_line(page, "# TYPE sbx_jobs_received_total counter");
    expect_line(page, "sbx_jobs_received_total 11");
    expect_line(page, "sbx_jobs_finished_total{status=\"succeeded\"} 5");
    expect_line(page, "sbx_jobs_finished_total{status=\"failed\"} 7");
    expect_line(page, "sbx_jobs_finished_total{status=\"timed_out\"} 13");
    expect_line(page, "sbx_jobs_finished_total{status=\"canceled\"} 17");
    expect_line(page, "sbx_dead_lettered_total 3");
    expect_line(page, "sbx_duplicates_total 2");
    expect_line(page, "# TYPE sbx_jobs_id_reused_total counter");
    expect_line(page, "sbx_jobs_id_reused_total 31");
    expect_line(page, "sbx_lease_waits_total 19");
    expect_line(page, "sbx_fenced_out_total 23");
    expect_line(page, "sbx_retries_total 29");
    expect_line(page, "# TYPE sbx_jobs_in_flight gauge");
    expect_line(page, "sbx_jobs_in_flight 0");
    expect_line(page, "sbx_offsets_pending 4");
    expect_line(page, "sbx_db_queue 0");
    expect_line(page, "sbx_up{dep=\"kafka\"} 1");
    expect_line(page, "sbx_up{dep=\"redis\"} 1");
    expect_line(page, "sbx_up{dep=\"postgres\"} 1");
    expect_line(page, "# TYPE sbx_kafka_consumer_lag gauge");
    expect_line(page, "sbx_kafka_consumer_lag{topic=\"sbx.jobs\",partition=\"0\"} 4");
    expect_line(page, "sbx_kafka_consumer_lag{topic=\"sbx.jobs\",partition=\"1\"} 0");
    W.stats = (sbx_stats){0};
}

/* Lag lines are many when partitions are: the page is cut at its cap, but
 * only between lines, so what Prometheus reads still parses. */
static sbx_kafka *many_k, *saved_kafka;
static char saved_topic[sizeof(W.cfg.topic)];

static int restore_worker(void **state)
{
    (void)state;
    if (many_k) {
        W.kafka = saved_kafka;
        memcpy(W.cfg.topic, saved_topic, sizeof(saved_topic));
        sbx_kafka_close(many_k);
        many_k = NULL;
    }
    return 0;
}

static void t_metrics_page_cap_keeps_lines_whole(void **state)
{
    char topic[128];
    sbx_kafka *k;
    int all = 1;
    const char *page;
    (void)state;
    /* A long topic name (Kafka allows 249 characters; the worker 127) and
     * more partitions than the page has room for. */
    memset(topic, 't', 120);
    snprintf(topic + 120, sizeof(topic) - 120, "-%d", (int)getpid() % 100000);
    assert_int_equal(rd_kafka_mock_topic_create(MC, topic, 300, 1), 0);
    assert_int_equal(open_kafka(topic, "test-admin-many", &many_k), 0);
    k = many_k;
    saved_kafka = W.kafka;
    memcpy(saved_topic, W.cfg.topic, sizeof(saved_topic));
    snprintf(W.cfg.topic, sizeof(W.cfg.topic), "%s", topic);
    W.kafka = k;
    {
        sbx_kafka_lag lag[300];
        uint64_t end = sbx_now_ms() + WAIT_MS;
        while (sbx_kafka_lag_get(k, lag, 300) < 256 && sbx_now_ms() < end)
            sbx_loop_once(L, 20);
        assert_true(sbx_kafka_lag_get(k, lag, 300) >= 256);
    }
    page = metrics();
    assert_true(strlen(page) < PAGE_MAX);
    /* Each lag line says a value; none is cut. */
    for (const char *p = page; (p = strstr(p, "sbx_kafka_consumer_lag{")) != NULL; p++)
        all &= strstr(p, "} ") != NULL && strstr(p, "} ") < strchr(p, '\n');
    assert_true(all);
}

static void t_readyz_reports_outages(void **state)
{
    int down = 0, up = 1;
    sbx_db *db = W.db, *dead = NULL;
    sbx_kafka *k = W.kafka, *dead_k = NULL;
    sbx_redis *r = W.redis;
    char conninfo[128];
    (void)state;
    expect_ready(1, "up", "up", "up");

    /* Kafka: the only broker goes away and comes back. */
    rd_kafka_mock_broker_set_down(MC, 1);
    assert_true(until(kafka_is, &down, WAIT_MS));
    expect_ready(0, "down", "up", "up");
    expect_line(metrics(), "sbx_up{dep=\"kafka\"} 0");
    /* Liveness is not readiness. */
    assert_int_equal(http("GET", "/healthz"), 200);
    rd_kafka_mock_broker_set_up(MC, 1);
    assert_true(until(kafka_is, &up, WAIT_MS));
    expect_ready(1, "up", "up", "up");
    /* Settled: back in the group with both partitions. */
    assert_true(until(all_up, NULL, WAIT_MS));

    /* Redis: the server dies; a new one takes over. */
    test_redis_stop(&srv);
    assert_true(until(redis_is, &down, WAIT_MS));
    expect_ready(0, "up", "down", "up");
    expect_line(metrics(), "sbx_up{dep=\"redis\"} 0");
    assert_int_equal(start_redis(), 0);
    sbx_redis_free(r);
    expect_ready(1, "up", "up", "up");

    /* PostgreSQL: the worker's connection points at a port nobody serves
     * (the test services' server is shared and stays up). */
    snprintf(conninfo, sizeof(conninfo), "postgresql://postgres@127.0.0.1:%d/sbx", test_free_port());
    assert_int_equal(sbx_db_new(L, conninfo, NULL, NULL, &dead), 0);
    W.db = dead;
    run_for(300);
    expect_ready(0, "up", "up", "down");
    expect_line(metrics(), "sbx_up{dep=\"postgres\"} 0");
    W.db = db;
    expect_ready(1, "up", "up", "up");

    /* Draining for shutdown: not ready, whatever the dependencies. */
    W.stopping = 1;
    expect_ready(0, "up", "up", "up");
    W.stopping = 0;

    /* Everything at once; this time Kafka is an intake whose broker
     * address nobody serves (a second down/up of the mock broker can leave
     * a coordinator connection open but mute, which is the mock's doing). */
    snprintf(conninfo, sizeof(conninfo), "127.0.0.1:%d", test_free_port());
    assert_int_equal(open_kafka_at(conninfo, TOPIC, "test-admin-none", &dead_k), 0);
    W.kafka = dead_k;
    W.db = dead;
    r = W.redis;
    test_redis_stop(&srv);
    assert_true(until(redis_is, &down, WAIT_MS));
    assert_true(until(kafka_is, &down, WAIT_MS));
    expect_ready(0, "down", "down", "down");
    assert_int_equal(start_redis(), 0);
    sbx_redis_free(r);
    W.db = db;
    W.kafka = k;
    sbx_db_free(dead);
    sbx_kafka_close(dead_k);
    assert_true(until(all_up, NULL, WAIT_MS));
    expect_ready(1, "up", "up", "up");
}

static void t_unknown_paths(void **state)
{
    const char *paths[] = {"/", "/healthz/", "/metricsx", "/readyz/x", "/HEALTHZ", "/admin"};
    (void)state;
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        assert_int_equal(http("GET", paths[i]), 404);
        assert_string_equal(body(&R), "not found: /healthz, /readyz, /metrics\n");
    }
}

static void t_only_get(void **state)
{
    const char *methods[] = {"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"};
    static const char post[] = "POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                               "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    char allow[32];
    (void)state;
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        assert_int_equal(http(methods[i], "/metrics"), 405);
        /* RFC 9110 15.5.6: a 405 names the methods that would work. */
        assert_string_equal(header(&R, "Allow", allow, sizeof(allow)), "GET");
        if (strcmp(methods[i], "HEAD") != 0)
            assert_string_equal(body(&R), "GET only\n");
    }
    /* A request with a body is answered too, without hanging on it. */
    assert_int_equal(http_raw(&R, post, sizeof(post) - 1), 405);
    assert_int_equal(http("GET", "/healthz"), 200);
}

/* The endpoint runs on the worker's loop: a client that stops halfway must
 * not hold up anyone else, nor the loop. */
static void t_slow_client_does_not_block(void **state)
{
    static const char raw[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    static req slow;
    pthread_t th;
    uint64_t t0;
    (void)state;
    slow.raw = raw;
    slow.rawlen = sizeof(raw) - 1;
    slow.send_first = 10;
    slow.pause_ms = 1500;
    start_req(&slow, &th);
    run_for(100);
    t0 = sbx_now_ms();
    assert_int_equal(http("GET", "/metrics"), 200);
    assert_true(sbx_now_ms() - t0 < 1000);
    assert_false(slow.done);
    finish_req(&slow, th);
    assert_true(slow.len > 12);
    assert_int_equal(atoi(slow.resp + 9), 200);
}

static void *idle_client(void *arg)
{
    req *r = arg;
    int fd = dial();
    if (fd < 0)
        r->connect_err = 1;
    else {
        read_to_end(fd, r);
        close(fd);
    }
    r->done = 1;
    return NULL;
}

/* A connection that never sends a byte is closed after the connection
 * timeout, so idle sockets cannot pile up to the limit for ever. */
static void t_idle_connection_times_out(void **state)
{
    static req idle;
    pthread_t th;
    uint64_t t0 = sbx_now_ms(), took;
    (void)state;
    idle.len = 0;
    idle.done = 0;
    assert_int_equal(pthread_create(&th, NULL, idle_client, &idle), 0);
    assert_true(until(req_done, &idle, (CONN_TIMEOUT_S + 5) * 1000));
    pthread_join(th, NULL);
    took = sbx_now_ms() - t0;
    assert_false(idle.connect_err);
    assert_int_equal(idle.len, 0);
    assert_true(took >= (CONN_TIMEOUT_S - 1) * 1000u);
    assert_true(took <= (CONN_TIMEOUT_S + 3) * 1000u);
}

static void t_oversized_requests(void **state)
{
    const size_t big = 100 * 1024;
    char *raw = malloc(big + 256), *p;
    int status;
    (void)state;
    assert_non_null(raw);

    /* A 100 KiB header: refused with a 4xx, not buffered. */
    p = raw + sprintf(raw, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Big: ");
    memset(p, 'a', big);
    p += big;
    p += sprintf(p, "\r\n\r\n");
    status = http_raw(&R, raw, (size_t)(p - raw));
    assert_true(status >= 400 && status < 500);

    /* A 100 KiB path, likewise. */
    p = raw + sprintf(raw, "GET /");
    memset(p, 'b', big);
    p += big;
    p += sprintf(p, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    status = http_raw(&R, raw, (size_t)(p - raw));
    assert_true(status >= 400 && status < 500);
    free(raw);

    /* Not HTTP at all. */
    status = http_raw(&R, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 15);
    assert_true(status == 0 || (status >= 400 && status < 500));
    assert_int_equal(http("GET", "/healthz"), 200);
}

/* At the connection limit libmicrohttpd stops accepting: one more client
 * waits in the listen backlog, unserved, until a connection ends. */
static void t_connection_limit(void **state)
{
    static const char raw[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    static req extra;
    int fds[CONN_LIMIT];
    pthread_t th;
    uint64_t t0;
    (void)state;
    for (int i = 0; i < CONN_LIMIT; i++) {
        fds[i] = dial();
        assert_true(fds[i] >= 0);
    }
    run_for(300);
    extra.raw = raw;
    extra.rawlen = sizeof(raw) - 1;
    extra.send_first = 0;
    start_req(&extra, &th);
    run_for(1500);
    assert_false(extra.done);
    for (int i = 0; i < CONN_LIMIT; i++)
        close(fds[i]);
    t0 = sbx_now_ms();
    finish_req(&extra, th);
    assert_true(sbx_now_ms() - t0 < 3000);
    assert_int_equal(atoi(extra.resp + 9), 200);
    assert_int_equal(http("GET", "/healthz"), 200);
}

static void t_parallel_clients(void **state)
{
    enum { N = 16 };
    static req rs[N];
    static const char raw[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    pthread_t th[N];
    (void)state;
    for (int i = 0; i < N; i++) {
        rs[i].raw = raw;
        rs[i].rawlen = sizeof(raw) - 1;
        rs[i].send_first = 0;
        start_req(&rs[i], &th[i]);
    }
    for (int i = 0; i < N; i++) {
        finish_req(&rs[i], th[i]);
        assert_int_equal(atoi(rs[i].resp + 9), 200);
        check_exposition(body(&rs[i]));
        assert_true(has_line(body(&rs[i]), "sbx_up{dep=\"kafka\"} 1"));
    }
}

static void t_bad_listen_addresses(void **state)
{
    sbx_admin *a = NULL;
    char err[256], addr[64];
    (void)state;
    err[0] = '\0';
    assert_int_equal(sbx_admin_new(&W, "9464", &a, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "ip:port"));
    err[0] = '\0';
    assert_int_equal(sbx_admin_new(&W, "localhost:9464", &a, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not an IPv4 address"));
    err[0] = '\0';
    assert_int_equal(sbx_admin_new(&W, "1111111111111111111111111111111111111111111111111111111111111111111:1",
                                   &a, err, sizeof(err)),
                     -EINVAL);
    /* The port is the running endpoint's. */
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    err[0] = '\0';
    assert_int_equal(sbx_admin_new(&W, addr, &a, err, sizeof(err)), -EADDRINUSE);
    assert_non_null(strstr(err, addr));
    assert_null(a);
    /* Port 0 takes any free port. */
    assert_int_equal(sbx_admin_new(&W, "127.0.0.1:0", &a, err, sizeof(err)), 0);
    sbx_admin_free(a);
    assert_int_equal(http("GET", "/healthz"), 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_healthz),
        cmocka_unit_test(t_readyz_all_up),
        cmocka_unit_test(t_metrics),
        cmocka_unit_test_teardown(t_metrics_page_cap_keeps_lines_whole, restore_worker),
        cmocka_unit_test(t_readyz_reports_outages),
        cmocka_unit_test(t_unknown_paths),
        cmocka_unit_test(t_only_get),
        cmocka_unit_test(t_slow_client_does_not_block),
        cmocka_unit_test(t_idle_connection_times_out),
        cmocka_unit_test(t_oversized_requests),
        cmocka_unit_test(t_connection_limit),
        cmocka_unit_test(t_parallel_clients),
        cmocka_unit_test(t_bad_listen_addresses),
    };
    if (!getenv("SBX_DATABASE_URL")) {
        fprintf(stderr, "test_admin: skipped: SBX_DATABASE_URL is not set (run it through "
                        "`make unit`)\n");
        return 77;
    }
    /* librdkafka's complaints while the mock broker is down are expected. */
    sbx_log_set_level(SBX_LOG_ERROR);
    return cmocka_run_group_tests_name("admin", tests, setup, teardown);
}
