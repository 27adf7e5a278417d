/* console_data.c — the JSON `sbx serve` answers with (console.h): runs and
 * their logs (run.v1 and log.v1, schemas/), dead letters, slots and agents
 * per pool from Redis, and the consumer lag per partition from Kafka.
 *
 * PostgreSQL builds the JSON itself (jsonb_build_object, jsonb_agg; runs
 * and chunks through sbx.run_v1() and sbx.log_v1(), the one definition of
 * those shapes, migrations/0008_json_shapes.sql), so a row reaches the page
 * in the shape of the schema with no C copy of each field, and one query
 * answers one request. Redis is read with the key
 * layout of common/rkeys.h, the worker's and agent's contract, through a
 * plain blocking hiredis connection per request (the handler has its own
 * thread). Every list is capped (LIMIT_MAX, SLOTS_MAX, AGENTS_MAX) so a
 * request costs a bounded amount whatever the fleet.
 */
#include "console.h"

#include <hiredis/hiredis.h>
#include <json-c/json.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis.h"
#include "rkeys.h"

/* A list answers at most this many rows; the page asks for fewer. */
#define LIMIT_DEFAULT 100
#define LIMIT_MAX 1000
/* Log chunks in one answer; the page asks again from the last one. */
#define LOG_LIMIT_DEFAULT 1000
#define LOG_LIMIT_MAX 5000
/* --since as a duration: at most 100 years (as the CLI's). */
#define SINCE_MAX_S (36500LL * 86400)
/* Slots listed per pool and agents listed: a console lists a fleet a
 * person can read; the counts are exact beyond it. */
#define SLOTS_MAX 2000
#define AGENTS_MAX 500
#define POOLS_MAX 64
#define REDIS_TIMEOUT_MS 3000
#define KAFKA_TIMEOUT_MS 5000
#define PARTITIONS_MAX 10000

PGconn *sbx__console_pg(const char *url, struct sbx__answer *a)
{
    const char *const keys[] = { "application_name", "connect_timeout", "dbname", NULL };
    const char *const vals[] = { "sbx serve", "5", url, NULL };
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    char msg[512];

    if (conn && PQstatus(conn) == CONNECTION_OK)
        return conn;
    snprintf(msg, sizeof msg, "PostgreSQL: %s", conn ? PQerrorMessage(conn) : "out of memory");
    msg[strcspn(msg, "\n")] = '\0';
    sbx__answer_error(a, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
    PQfinish(conn);
    return NULL;
}

static void set_body(struct sbx__answer *a, const char *s)
{
    free(a->body);
    a->status = MHD_HTTP_OK;
    a->type = "application/json";
    a->body = strdup(s);
    a->len = a->body ? strlen(a->body) : 0;
}

/* Runs sql, whose one row and column is the JSON answer (no row: 404
 * with not_found). Bad input PostgreSQL refused (class 22) is a 400. */
static void pg_json(const char *url, const char *sql, int n, const char *const *params,
                    const char *not_found, struct sbx__answer *a)
{
    PGconn *conn = sbx__console_pg(url, a);
    PGresult *r;
    char msg[512];

    if (!conn)
        return;
    r = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        snprintf(msg, sizeof msg, "PostgreSQL: %s", PQresultErrorMessage(r));
        msg[strcspn(msg, "\n")] = '\0';
        sbx__answer_error(a, state && strncmp(state, "22", 2) == 0 ? MHD_HTTP_BAD_REQUEST
                                                                   : MHD_HTTP_SERVICE_UNAVAILABLE,
                          msg);
    } else if (PQntuples(r) == 0 || PQgetisnull(r, 0, 0)) {
        sbx__answer_error(a, MHD_HTTP_NOT_FOUND, not_found);
    } else {
        set_body(a, PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    PQfinish(conn);
}

/* A decimal in [lo, hi] into out; false (and a 400) if not. */
static bool number(const char *s, const char *name, long long lo, long long hi, long long *out,
                   struct sbx__answer *a)
{
    char *end, msg[128];
    long long v;

    if (!s)
        return true;
    v = strtoll(s, &end, 10);
    if (*s && !*end && v >= lo && v <= hi) {
        *out = v;
        return true;
    }
    snprintf(msg, sizeof msg, "%s must be a number from %lld to %lld", name, lo, hi);
    sbx__answer_error(a, MHD_HTTP_BAD_REQUEST, msg);
    return false;
}

/* ---- PostgreSQL ---- */

void sbx__console_runs(struct sbx__console *con, const struct sbx__query *q, struct sbx__answer *a)
{
    static const char sql[] =
        "SELECT coalesce(jsonb_agg(x.j ORDER BY x.created_at DESC, x.job_id), '[]')::text FROM ("
        "SELECT sbx.run_v1(r) AS j, r.created_at, r.job_id FROM sbx.runs r"
        " WHERE ($1::text IS NULL OR r.project_id = $1)"
        "   AND ($2::text IS NULL OR r.status = $2)"
        "   AND ($3::bigint IS NULL OR r.created_at >= now() - make_interval(secs => $3::bigint))"
        "   AND ($4::timestamptz IS NULL OR r.created_at >= $4::timestamptz)"
        " ORDER BY r.created_at DESC, r.job_id LIMIT $5::integer) x";
    long long limit = LIMIT_DEFAULT, secs;
    char since_s[24], limit_s[24];
    const char *params[5] = { q->project && *q->project ? q->project : NULL,
                              q->status && *q->status ? q->status : NULL, NULL, NULL, limit_s };

    if (!number(q->limit, "limit", 1, LIMIT_MAX, &limit, a))
        return;
    snprintf(limit_s, sizeof limit_s, "%lld", limit);
    /* since: a duration back from now (15m, 12h, 7d) or a time (RFC 3339). */
    if (q->since && *q->since) {
        if (sbx__cli_parse_duration(q->since, SINCE_MAX_S, &secs) == 0) {
            snprintf(since_s, sizeof since_s, "%lld", secs);
            params[2] = since_s;
        } else {
            params[3] = q->since;
        }
    }
    pg_json(con->reader_url, sql, 5, params, "no runs", a);
}

void sbx__console_run(struct sbx__console *con, const char *id, struct sbx__answer *a)
{
    static const char sql[] =
        "SELECT sbx.run_v1_events(r)::text FROM sbx.runs r WHERE r.job_id = $1";
    const char *params[1] = { id };

    pg_json(con->reader_url, sql, 1, params, "no such job", a);
}

void sbx__console_logs(struct sbx__console *con, const char *id, const struct sbx__query *q,
                       struct sbx__answer *a)
{
    /* The readers' order (migrations/0006_run_logs.sql): (attempt, seq). */
    static const char sql[] =
        "SELECT coalesce(jsonb_agg(x.j ORDER BY x.attempt, x.seq), '[]')::text FROM ("
        "SELECT sbx.log_v1(l) AS j, l.attempt, l.seq FROM sbx.run_logs l"
        " WHERE l.job_id = $1 AND (l.attempt, l.seq) > ($2::integer, $3::integer)"
        " ORDER BY l.attempt, l.seq LIMIT $4::integer) x";
    long long attempt = 0, after = -1, limit = LOG_LIMIT_DEFAULT;
    char attempt_s[24], after_s[24], limit_s[24];
    const char *params[4] = { id, attempt_s, after_s, limit_s };

    /* The chunks after (attempt, after): a reader's cursor. */
    if (!number(q->attempt, "attempt", 0, 2147483647, &attempt, a) ||
        !number(q->after, "after", -1, 2147483647, &after, a) ||
        !number(q->limit, "limit", 1, LOG_LIMIT_MAX, &limit, a))
        return;
    snprintf(attempt_s, sizeof attempt_s, "%lld", attempt);
    snprintf(after_s, sizeof after_s, "%lld", after);
    snprintf(limit_s, sizeof limit_s, "%lld", limit);
    pg_json(con->reader_url, sql, 4, params, "no logs", a);
}

void sbx__console_dead_letters(struct sbx__console *con, const struct sbx__query *q,
                               struct sbx__answer *a)
{
    /* What `sbx dlq list` shows, and the run's status for the cancel
     * button; never the payload (the page links to `sbx dlq show`). */
    static const char sql[] =
        "SELECT coalesce(jsonb_agg(x.j ORDER BY x.id DESC), '[]')::text FROM ("
        "SELECT d.id, jsonb_build_object('id', d.id, 'created_at', "
        SBX_CONSOLE_TS("d.created_at") ", 'reason', d.reason, 'detail', d.detail,"
        " 'job_id', d.job_id, 'project_id', d.project_id, 'topic', d.topic,"
        " 'partition', d.kafka_partition, 'offset', d.kafka_offset,"
        " 'payload_bytes', d.payload_bytes, 'replays', d.replays,"
        " 'replayed_at', " SBX_CONSOLE_TS("d.replayed_at") ", 'replayable', d.original_kept,"
        " 'run_status', r.status) AS j"
        " FROM sbx.dead_letters d LEFT JOIN sbx.runs r ON r.job_id = d.job_id"
        " ORDER BY d.id DESC LIMIT $1::integer) x";
    long long limit = LIMIT_DEFAULT;
    char limit_s[24];
    const char *params[1] = { limit_s };

    if (!number(q->limit, "limit", 1, LIMIT_MAX, &limit, a))
        return;
    snprintf(limit_s, sizeof limit_s, "%lld", limit);
    pg_json(con->reader_url, sql, 1, params, "no dead letters", a);
}

/* ---- Redis ---- */

static void json_answer(struct sbx__answer *a, json_object *o)
{
    set_body(a, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

static redisContext *redis_open(const char *url, struct sbx__answer *a)
{
    struct timeval tv = { REDIS_TIMEOUT_MS / 1000, (REDIS_TIMEOUT_MS % 1000) * 1000 };
    sbx_redis_url u;
    redisContext *rc;
    redisReply *r;
    char err[256], msg[320];

    if (sbx_redis_parse_url(url && *url ? url : SBX_REDIS_URL_DEFAULT, &u, err, sizeof err)) {
        snprintf(msg, sizeof msg, "SBX_REDIS_URL: %s", err);
        sbx__answer_error(a, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
        return NULL;
    }
    rc = u.unix_path[0] ? redisConnectUnixWithTimeout(u.unix_path, tv)
                        : redisConnectWithTimeout(u.host, u.port, tv);
    if (!rc || rc->err) {
        snprintf(msg, sizeof msg, "Redis: %s", rc ? rc->errstr : "out of memory");
        goto fail;
    }
    redisSetTimeout(rc, tv);
    if (u.pass[0]) {
        r = u.user[0] ? redisCommand(rc, "AUTH %s %s", u.user, u.pass)
                      : redisCommand(rc, "AUTH %s", u.pass);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(msg, sizeof msg, "Redis refused the credentials of SBX_REDIS_URL");
            freeReplyObject(r);
            goto fail;
        }
        freeReplyObject(r);
    }
    if (u.db > 0) {
        r = redisCommand(rc, "SELECT %d", u.db);
        freeReplyObject(r);
    }
    explicit_bzero(&u, sizeof u);
    return rc;
fail:
    explicit_bzero(&u, sizeof u);
    sbx__answer_error(a, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
    if (rc)
        redisFree(rc);
    return NULL;
}

/* The names after prefix of every key matching prefix*, at most max. */
static int scan_ids(redisContext *rc, const char *prefix, json_object *out, int max)
{
    char cursor[32] = "0", pattern[64];
    size_t pl = strlen(prefix);

    snprintf(pattern, sizeof pattern, "%s*", prefix);
    do {
        redisReply *r = redisCommand(rc, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            freeReplyObject(r);
            return -1;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            const char *k = r->element[1]->element[i]->str;
            if (json_object_array_length(out) < (size_t)max && strlen(k) > pl)
                json_object_array_add(out, json_object_new_string(k + pl));
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

static const char *hash_get(const redisReply *h, const char *field)
{
    for (size_t i = 0; h && h->type == REDIS_REPLY_ARRAY && i + 1 < h->elements; i += 2)
        if (strcmp(h->element[i]->str, field) == 0)
            return h->element[i + 1]->str;
    return NULL;
}

static void add_str(json_object *o, const char *k, const char *v)
{
    json_object_object_add(o, k, v ? json_object_new_string(v) : NULL);
}

static void add_int(json_object *o, const char *k, const char *v)
{
    json_object_object_add(o, k, v ? json_object_new_int64(strtoll(v, NULL, 10)) : NULL);
}

static int by_slot(const void *a, const void *b)
{
    json_object *x, *y;
    json_object_object_get_ex(*(json_object *const *)a, "slot", &x);
    json_object_object_get_ex(*(json_object *const *)b, "slot", &y);
    return strcmp(json_object_get_string(x), json_object_get_string(y));
}

/* One pool: its slots, each free, leased (to a job) or held (out of the
 * free set with no lease: between a release and its return, or a dead VM's). */
static json_object *pool_json(redisContext *rc, const char *pool, long long now)
{
    json_object *o = json_object_new_object(), *slots = json_object_new_array();
    redisReply *members = redisCommand(rc, "SMEMBERS %s%s", SBX_RKEY_SLOTS, pool), *free_ = NULL;
    size_t n = members && members->type == REDIS_REPLY_ARRAY ? members->elements : 0, shown;
    int nfree = 0, nleased = 0;

    shown = n < SLOTS_MAX ? n : SLOTS_MAX;
    for (size_t i = 0; i < shown; i++) {
        redisAppendCommand(rc, "SISMEMBER %s%s %s", SBX_RKEY_FREE, pool,
                           members->element[i]->str);
        redisAppendCommand(rc, "HGETALL %s%s", SBX_RKEY_LEASE, members->element[i]->str);
    }
    for (size_t i = 0; i < shown; i++) {
        redisReply *isfree = NULL, *lease = NULL;
        json_object *s = json_object_new_object();
        const char *exp;
        if (redisGetReply(rc, (void **)&isfree) != REDIS_OK ||
            redisGetReply(rc, (void **)&lease) != REDIS_OK) {
            freeReplyObject(isfree);
            json_object_put(s);
            break;
        }
        bool is_free = isfree && isfree->type == REDIS_REPLY_INTEGER && isfree->integer == 1;
        bool leased = lease && lease->type == REDIS_REPLY_ARRAY && lease->elements > 0;
        add_str(s, "slot", members->element[i]->str);
        add_str(s, "state", leased ? "leased" : is_free ? "free" : "held");
        if (leased) {
            add_str(s, "job", hash_get(lease, "job"));
            add_str(s, "project", hash_get(lease, "project"));
            add_str(s, "worker", hash_get(lease, "worker"));
            add_int(s, "token", hash_get(lease, "token"));
            exp = hash_get(lease, "expires");
            json_object_object_add(s, "expires_in_ms", exp ? json_object_new_int64(
                                                           strtoll(exp, NULL, 10) - now) : NULL);
        }
        nfree += is_free;
        nleased += leased;
        json_object_array_add(slots, s);
        freeReplyObject(isfree);
        freeReplyObject(lease);
    }
    json_object_array_sort(slots, by_slot);
    free_ = redisCommand(rc, "SCARD %s%s", SBX_RKEY_FREE, pool);
    add_str(o, "pool", pool);
    json_object_object_add(o, "total", json_object_new_int64((int64_t)n));
    json_object_object_add(o, "free", json_object_new_int64(
        free_ && free_->type == REDIS_REPLY_INTEGER ? free_->integer : nfree));
    json_object_object_add(o, "leased_shown", json_object_new_int(nleased));
    json_object_object_add(o, "truncated", json_object_new_boolean(shown < n));
    json_object_object_add(o, "slots", slots);
    freeReplyObject(members);
    freeReplyObject(free_);
    return o;
}

static json_object *agent_json(redisContext *rc, const char *vm, long long now)
{
    redisReply *h = redisCommand(rc, "HGETALL %s%s", SBX_RKEY_VM, vm);
    json_object *o = json_object_new_object();
    const char *beat = hash_get(h, "heartbeat_ms"), *ttl = hash_get(h, "ttl_ms");

    add_str(o, "vm", vm);
    add_str(o, "state", hash_get(h, SBX_RKEY_VM_STATE));
    add_str(o, "base_url", hash_get(h, SBX_RKEY_VM_BASE_URL));
    add_int(o, "capacity", hash_get(h, "capacity"));
    add_str(o, "labels", hash_get(h, "labels"));
    add_int(o, "ttl_ms", ttl);
    json_object_object_add(o, "heartbeat_age_ms",
                           beat ? json_object_new_int64(now - strtoll(beat, NULL, 10)) : NULL);
    freeReplyObject(h);
    return o;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(json_object_get_string(*(json_object *const *)a),
                  json_object_get_string(*(json_object *const *)b));
}

void sbx__console_slots(struct sbx__console *con, struct sbx__answer *a)
{
    redisContext *rc = redis_open(con->redis_url, a);
    json_object *o, *pools, *names, *vms, *agents;
    redisReply *t;
    long long now = 0;

    if (!rc)
        return;
    /* Redis' clock, the one leases and heartbeats are written in. */
    t = redisCommand(rc, "TIME");
    if (t && t->type == REDIS_REPLY_ARRAY && t->elements == 2)
        now = strtoll(t->element[0]->str, NULL, 10) * 1000 +
              strtoll(t->element[1]->str, NULL, 10) / 1000;
    freeReplyObject(t);
    o = json_object_new_object();
    names = json_object_new_array();
    vms = json_object_new_array();
    if (scan_ids(rc, SBX_RKEY_SLOTS, names, POOLS_MAX) || scan_ids(rc, SBX_RKEY_VM, vms,
                                                                  AGENTS_MAX)) {
        json_object_put(names);
        json_object_put(vms);
        json_object_put(o);
        sbx__answer_error(a, MHD_HTTP_SERVICE_UNAVAILABLE, "Redis: SCAN failed");
        redisFree(rc);
        return;
    }
    json_object_array_sort(names, by_name);
    json_object_array_sort(vms, by_name);
    pools = json_object_new_array();
    agents = json_object_new_array();
    for (size_t i = 0; i < json_object_array_length(names); i++)
        json_object_array_add(pools, pool_json(rc, json_object_get_string(
                                                       json_object_array_get_idx(names, i)), now));
    for (size_t i = 0; i < json_object_array_length(vms); i++)
        json_object_array_add(agents, agent_json(rc, json_object_get_string(
                                                         json_object_array_get_idx(vms, i)), now));
    json_object_object_add(o, "now_ms", json_object_new_int64(now));
    json_object_object_add(o, "pools", pools);
    json_object_object_add(o, "agents", agents);
    json_object_put(names);
    json_object_put(vms);
    redisFree(rc);
    json_answer(a, o);
}

/* ---- Kafka ---- */

void sbx__console_lag(struct sbx__console *con, struct sbx__answer *a)
{
    const char *topic = con->cfg->topic;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *parts = NULL;
    rd_kafka_topic_t *t = NULL;
    rd_kafka_resp_err_t err;
    json_object *o = NULL, *list;
    long long total = 0;
    char msg[512];

    if (!con->rk) {
        sbx__answer_error(a, MHD_HTTP_SERVICE_UNAVAILABLE, "no Kafka brokers configured: start "
                                                           "sbx serve with SBX_BROKERS");
        return;
    }
    if (!(t = rd_kafka_topic_new(con->rk, topic, NULL))) {
        err = rd_kafka_last_error();
        goto kafka_error;
    }
    err = rd_kafka_metadata(con->rk, 0, t, &md, KAFKA_TIMEOUT_MS);
    if (!err && (md->topic_cnt != 1 || md->topics[0].err))
        err = md->topic_cnt == 1 ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
    if (err)
        goto kafka_error;
    parts = rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
    for (int i = 0; i < md->topics[0].partition_cnt && i < PARTITIONS_MAX; i++)
        rd_kafka_topic_partition_list_add(parts, topic, md->topics[0].partitions[i].id);
    if ((err = rd_kafka_committed(con->rk, parts, KAFKA_TIMEOUT_MS)))
        goto kafka_error;
    o = json_object_new_object();
    list = json_object_new_array();
    for (int i = 0; i < parts->cnt; i++) {
        rd_kafka_topic_partition_t *p = &parts->elems[i];
        int64_t lo = -1, hi = -1, lag;
        json_object *e = json_object_new_object();
        if ((err = rd_kafka_query_watermark_offsets(con->rk, topic, p->partition, &lo, &hi,
                                                    KAFKA_TIMEOUT_MS))) {
            json_object_put(e);
            goto kafka_error;
        }
        /* No commit yet: everything still in the log is behind. */
        lag = (p->err || p->offset < 0) ? hi - lo : hi - p->offset;
        total += lag;
        json_object_object_add(e, "partition", json_object_new_int(p->partition));
        json_object_object_add(e, "committed", p->offset >= 0 ? json_object_new_int64(p->offset)
                                                             : NULL);
        json_object_object_add(e, "low", json_object_new_int64(lo));
        json_object_object_add(e, "high", json_object_new_int64(hi));
        json_object_object_add(e, "lag", json_object_new_int64(lag));
        json_object_array_add(list, e);
    }
    add_str(o, "topic", topic);
    add_str(o, "group", con->group);
    json_object_object_add(o, "total_lag", json_object_new_int64(total));
    json_object_object_add(o, "partitions", list);
    json_answer(a, o);
    o = NULL;
    goto out;
kafka_error:
    snprintf(msg, sizeof msg, "Kafka (topic %s, group %s): %s", topic, con->group,
             rd_kafka_err2str(err));
    sbx__answer_error(a, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
out:
    json_object_put(o);
    if (parts)
        rd_kafka_topic_partition_list_destroy(parts);
    if (md)
        rd_kafka_metadata_destroy(md);
    if (t)
        rd_kafka_topic_destroy(t);
}
