/* console_feed.c — /api/feed, the console's live feed: Server-Sent Events
 * from PostgreSQL's LISTEN sbx_runs and sbx_logs.
 *
 *   GET /api/feed              every status change: "event: run", data one
 *                              run.v1 (as /api/runs/{id}, without events)
 *   GET /api/feed?job=ID[&attempt=A&after=S]
 *                              that job's changes, and its log: "event: log",
 *                              data a log.v1 array, "id: A:S" its last chunk
 *
 * A notification is a hint that says which run changed; the feed reads the
 * row (or the chunks after its cursor) and sends what it read, so a page
 * never shows a state that was not committed. It LISTENs before its first
 * read, so nothing committed after that read is missed; the browser's
 * EventSource reconnects by itself with Last-Event-ID set to the last
 * chunk it got, and the log goes on from there without a gap or a repeat.
 * Runs have no cursor: the runs page reloads its list on every (re)connect.
 *
 * Each feed is one libmicrohttpd connection thread blocked in feed_read()
 * with its own PostgreSQL connection; at most SBX_CONSOLE_FEEDS_MAX at
 * once. A comment line every PING_MS shows a dead client (the write fails)
 * and keeps proxies from closing an idle stream.
 */
#include "console.h"

#include <errno.h>
#include <json-c/json.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sbx.h"

#define PING_MS 15000
/* How often a blocked feed looks at con->stopping. */
#define WAKE_MS 1000
/* Chunks per "log" event; more are sent in the next event at once. */
#define LOG_BATCH 500
/* Runs read per query when many changed at once. */
#define RUN_BATCH 100
/* An id's longest text in an array literal: 128 characters and quotes. */
#define ID_MAX 128

struct feed {
    struct sbx__console *con;
    PGconn *pg;
    char job[ID_MAX + 1];         /* "" = every run */
    long long attempt, seq;       /* the last chunk sent */
    bool started, more_logs;
    char *out;                    /* what is being sent (open_memstream) */
    size_t len, off;
    long long last_ms;
    /* Ids of runs that changed, gathered while draining notifications. */
    char ids[RUN_BATCH * (ID_MAX + 3) + 3];
    int nids;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writes one "run" event per changed run in f->ids; false on a database error. */
static bool send_runs(struct feed *f, FILE *m)
{
    static const char sql[] =
        "SELECT sbx.run_v1(r)::text FROM sbx.runs r WHERE r.job_id = ANY($1::text[])"
        " ORDER BY r.updated_at";
    const char *params[1] = { f->ids };
    PGresult *r;
    bool ok;

    if (f->nids == 0)
        return true;
    strcat(f->ids, "}");
    r = PQexecParams(f->pg, sql, 1, NULL, params, NULL, NULL, 0);
    ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    for (int i = 0; ok && i < PQntuples(r); i++)
        fprintf(m, "event: run\ndata: %s\n\n", PQgetvalue(r, i, 0));
    PQclear(r);
    f->nids = 0;
    return ok;
}

/* Adds a run id (checked: ids hold no quote or comma) to the next query. */
static bool note_run(struct feed *f, const char *id, FILE *m)
{
    if (!sbx_id_valid(id) || (f->job[0] && strcmp(id, f->job) != 0))
        return true;
    if (f->nids == RUN_BATCH && !send_runs(f, m))
        return false;
    if (f->nids == 0)
        strcpy(f->ids, "{");
    /* The same id twice in one batch is one row: ANY() reads it once. */
    snprintf(f->ids + strlen(f->ids), sizeof f->ids - strlen(f->ids), "%s\"%s\"",
             f->nids ? "," : "", id);
    f->nids++;
    return true;
}

/* Writes the job's chunks after the cursor as one "log" event. */
static bool send_logs(struct feed *f, FILE *m)
{
    static const char sql[] =
        "SELECT jsonb_agg(x.j ORDER BY x.attempt, x.seq)::text,"
        "       (array_agg(x.attempt ORDER BY x.attempt DESC, x.seq DESC))[1],"
        "       (array_agg(x.seq ORDER BY x.attempt DESC, x.seq DESC))[1], count(*) FROM ("
        "SELECT sbx.log_v1(l) AS j, l.attempt, l.seq FROM sbx.run_logs l"
        " WHERE l.job_id = $1 AND (l.attempt, l.seq) > ($2::integer, $3::integer)"
        " ORDER BY l.attempt, l.seq LIMIT $4::integer) x";
    char a_s[24], s_s[24], lim_s[24];
    const char *params[4] = { f->job, a_s, s_s, lim_s };
    PGresult *r;
    bool ok;

    snprintf(a_s, sizeof a_s, "%lld", f->attempt);
    snprintf(s_s, sizeof s_s, "%lld", f->seq);
    snprintf(lim_s, sizeof lim_s, "%d", LOG_BATCH);
    r = PQexecParams(f->pg, sql, 4, NULL, params, NULL, NULL, 0);
    ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    f->more_logs = false;
    if (ok && !PQgetisnull(r, 0, 0)) {
        f->attempt = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
        f->seq = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
        f->more_logs = strtoll(PQgetvalue(r, 0, 3), NULL, 10) == LOG_BATCH;
        fprintf(m, "id: %lld:%lld\nevent: log\ndata: %s\n\n", f->attempt, f->seq,
                PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    return ok;
}

/* Waits up to WAKE_MS for notifications and turns them into events. */
static bool wait_and_read(struct feed *f, FILE *m)
{
    struct pollfd p = { .fd = PQsocket(f->pg), .events = POLLIN };
    bool logs = false;
    PGnotify *n;

    if (poll(&p, 1, WAKE_MS) < 0 && errno != EINTR)
        return false;
    if (!PQconsumeInput(f->pg))
        return false;
    while ((n = PQnotifies(f->pg))) {
        json_object *v = json_tokener_parse(n->extra), *id;
        const char *job = v && json_object_object_get_ex(v, "job_id", &id)
                              ? json_object_get_string(id) : NULL;
        bool ok = true;
        if (job && strcmp(n->relname, "sbx_runs") == 0)
            ok = note_run(f, job, m);
        else if (job && f->job[0] && strcmp(job, f->job) == 0)
            logs = true;
        json_object_put(v);
        PQfreemem(n);
        if (!ok)
            return false;
    }
    return send_runs(f, m) && (!logs || send_logs(f, m));
}

static ssize_t feed_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct feed *f = cls;
    FILE *m;
    bool ok = true;
    (void)pos;

    while (f->off == f->len) {
        free(f->out);
        f->out = NULL;
        f->len = f->off = 0;
        if (f->con->stopping)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (!(m = open_memstream(&f->out, &f->len)))
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (!f->started) {
            /* The browser reconnects after 2 s; the page shows the job as
             * it is now, then its log from the cursor. */
            f->started = true;
            fputs("retry: 2000\n\n", m);
            if (f->job[0])
                ok = note_run(f, f->job, m) && send_runs(f, m) && send_logs(f, m);
        } else if (f->more_logs) {
            ok = send_logs(f, m);
        } else {
            ok = wait_and_read(f, m);
        }
        if (ok && ftell(m) == 0 && now_ms() - f->last_ms >= PING_MS)
            fputs(": ping\n\n", m);
        if (fclose(m) != 0 || !ok)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = f->len - f->off < max ? f->len - f->off : max;
    memcpy(buf, f->out + f->off, n);
    f->off += n;
    f->last_ms = now_ms();
    return (ssize_t)n;
}

static void feed_free(void *cls)
{
    struct feed *f = cls;
    PQfinish(f->pg);
    free(f->out);
    atomic_fetch_sub(&f->con->feeds, 1);
    free(f);
}

/* "A:S", the id of the last "log" event the browser got. */
static bool parse_cursor(const char *s, long long *attempt, long long *seq)
{
    char *end;
    long long a = strtoll(s, &end, 10), q;

    if (end == s || *end != ':' || a < 0)
        return false;
    s = end + 1;
    q = strtoll(s, &end, 10);
    if (end == s || *end || q < -1)
        return false;
    *attempt = a;
    *seq = q;
    return true;
}

struct MHD_Response *sbx__console_feed(struct sbx__console *con, const struct sbx__query *q,
                                       const char *last_event_id, struct sbx__answer *a)
{
    struct feed *f = NULL;
    struct MHD_Response *r = NULL;
    PGresult *res;
    char cursor[64];

    if (q->job && !sbx_id_valid(q->job)) {
        sbx__answer_error(a, MHD_HTTP_BAD_REQUEST, "not a job id");
        return NULL;
    }
    if (atomic_fetch_add(&con->feeds, 1) >= SBX_CONSOLE_FEEDS_MAX) {
        atomic_fetch_sub(&con->feeds, 1);
        sbx__answer_error(a, MHD_HTTP_SERVICE_UNAVAILABLE, "too many live feeds open");
        return NULL;
    }
    if (!(f = calloc(1, sizeof *f))) {
        sbx__answer_error(a, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        goto fail;
    }
    f->con = con;
    f->seq = -1;
    f->last_ms = now_ms();
    if (q->job) {
        snprintf(f->job, sizeof f->job, "%s", q->job);
        snprintf(cursor, sizeof cursor, "%s:%s", q->attempt ? q->attempt : "0",
                 q->after ? q->after : "-1");
        if (!parse_cursor(last_event_id ? last_event_id : cursor, &f->attempt, &f->seq)) {
            sbx__answer_error(a, MHD_HTTP_BAD_REQUEST, "attempt and after must be numbers");
            goto fail;
        }
    }
    if (!(f->pg = sbx__console_pg(con->reader_url, a)))
        goto fail;
    /* LISTEN before the first read (feed_read): a change in between is
     * then both read and notified, never neither. */
    res = PQexec(f->pg, f->job[0] ? "LISTEN sbx_runs; LISTEN sbx_logs" : "LISTEN sbx_runs");
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        PQclear(res);
        sbx__answer_error(a, MHD_HTTP_SERVICE_UNAVAILABLE, "PostgreSQL: LISTEN failed");
        goto fail;
    }
    PQclear(res);
    r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, feed_read, f, feed_free);
    if (!r) {
        sbx__answer_error(a, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        goto fail;
    }
    return r;
fail:
    if (f) {
        PQfinish(f->pg);
        free(f);
    }
    atomic_fetch_sub(&con->feeds, 1);
    return NULL;
}
