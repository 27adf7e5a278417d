/* db.c — libpq, non-blocking, pipeline mode, driven by the sbx loop.
 *
 * States of the connection:
 *   DOWN        no PGconn; a reconnect timer is armed (100 ms doubling to 5 s)
 *   CONNECTING  PQconnectStart done, PQconnectPoll drives it
 *   READY       in pipeline mode; statements flow
 * Requests live on one FIFO: [in flight (sent, awaiting Sync)] [waiting].
 * When the link breaks, the in-flight ones simply become waiting again.
 *
 * Group commit: what waited while a round was in flight is sent as the next
 * round — up to ROUND_MAX statements followed by ONE Sync, so they run as one
 * implicit transaction and share one commit (one WAL flush) instead of one
 * each: that is where throughput comes from under load. If any statement of
 * a round fails, the whole round rolled back; its statements are sent again
 * each with its own Sync ("solo"), so only the failing one reports an error.
 * One round is in flight at a time, which keeps answers and retries in the
 * order statements were queued.
 *
 * Merged calls (sbx_db_batched): PostgreSQL spends most of a small function
 * call on the statement around the row (parse, plan, executor and trigger
 * set-up), so before a round is sent the calls of one kind waiting in it are
 * unlinked and become ONE statement with array parameters (a "group" req
 * holding them as its members). The group stands where the kind's last call
 * stood: a call moves later, never earlier, so it still runs after
 * everything queued before it (a build's log chunks before its outcome). A
 * statement that needs a call's effect is queued once the call has
 * answered, as job.c does; it must not count on queue order alone. Two calls
 * of different kinds may so run in either order: the one such pair job.c has
 * in flight at once is a job's wait mark and its claim, and wait_run never
 * moves a run back (only queued -> waiting_capacity). All of a round commits
 * together either way. A group's answer is one row per member, handed to
 * each member's callback as a one-row result; a group whose round failed is
 * split back into its members, sent solo as the kind's one-call statement.
 */
#include "db.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "assert.h"
#include "buf.h"
#include "log.h"

#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 5000
/* Statements per round (one transaction). More buys little once a commit's
 * flush is shared by this many, and a failed round costs its size in solo
 * retries. */
#define ROUND_MAX 256
#define PARAMS_MAX 12
/* Calls merged into one statement. Its array parameters hold every member's
 * values (a transition carries a log tail of up to SBX_LOG_TAIL_MAX), so
 * this bounds one statement to a few MiB. */
#define GROUP_MAX 512
/* ...and to this many bytes of parameters, escaping counted at its worst
 * (every byte escaped): 512 transitions with 8 KiB log tails fit. A call
 * larger than that alone goes as its one-call statement. */
#define GROUP_ARRAY_MAX (16u << 20)
/* Kinds merged per round; sbx has four. Calls of more kinds go one by one. */
#define KINDS_MAX 8

typedef struct req {
    struct req *next;
    char *sql;              /* not owned: callers pass static strings */
    int nparams;
    char *params[PARAMS_MAX];
    sbx_db_cb cb;
    void *arg;
    PGresult *res;          /* first result received for it */
    int solo;               /* send with its own Sync (its round failed) */
    const sbx_db_batch *kind;   /* a call that may merge, or a group */
    struct req *members;    /* a group: its calls, in order (via next) */
    size_t nmembers;        /* a group: how many; 0 for any other req */
    size_t cost;            /* a call's share of its group's arrays, at most */
    uint64_t queued_us;     /* when the call was queued (a group: unused) */
    uint64_t sent_us;       /* when it was last sent */
} req;

enum conn_state { DB_DOWN, DB_CONNECTING, DB_READY };

struct sbx_db {
    sbx_loop *loop;
    char *conninfo;
    PGconn *conn;
    enum conn_state state;
    sbx_io io;
    sbx_timer reconnect;
    uint64_t backoff_ms;
    req *head, *tail;       /* FIFO */
    size_t inflight;        /* the first `inflight` of the FIFO were sent */
    size_t syncs;           /* Syncs of the round not answered yet */
    int round_solo;         /* the round in flight is solo statements */
    req *rcur;              /* the statement whose results arrive now */
    size_t queued;          /* length of the FIFO */
    sbx_db_state_cb state_cb;
    void *state_arg;
    char listen_sql[128];       /* "LISTEN <channel>", "" if none */
    sbx_db_notify_cb notify_cb;
    void *notify_arg;
    char last_err[256];         /* first line of the last connect failure; "" when ready */
    uint64_t calls;             /* answered, to their callbacks */
    uint64_t statements;        /* sent (a group is one; a resend counts again) */
    uint64_t wait_us;           /* summed over calls: queued until sent */
    uint64_t round_us;          /* summed over calls: sent until answered */
};

static void set_state(sbx_db *db, enum conn_state s)
{
    static const char *const names[] = {"down", "connecting", "ready"};
    if (db->state == s)
        return;
    sbx_debug("db", "connection %s -> %s", names[db->state], names[s]);
    db->state = s;
    if (db->state_cb && (s == DB_READY || s == DB_DOWN))
        db->state_cb(db->state_arg, s == DB_READY);
}

static void req_free(req *r)
{
    req *m, *n;
    for (m = r->members; m; m = n) {
        n = m->next;
        req_free(m);
    }
    for (int i = 0; i < r->nparams; i++)
        free(r->params[i]);
    if (r->res)
        PQclear(r->res);
    free(r);
}

static void schedule_reconnect(sbx_db *db)
{
    uint64_t d = db->backoff_ms / 2 + (uint64_t)(rand() % (int)(db->backoff_ms + 1));
    db->backoff_ms = db->backoff_ms * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : db->backoff_ms * 2;
    sbx_timer_start(db->loop, &db->reconnect, d);
}

static void drop_conn(sbx_db *db, const char *why)
{
    if (db->conn) {
        /* libpq's messages span lines; the log keeps the first. */
        if (db->state == DB_READY)
            sbx_warn("db", "connection lost: %.*s (%zu statements will be sent again)",
                     (int)strcspn(why, "\n"), why, db->inflight);
        snprintf(db->last_err, sizeof(db->last_err), "%.*s", (int)strcspn(why, "\n"), why);
        sbx_io_stop(&db->io);
        PQfinish(db->conn);
        db->conn = NULL;
    }
    for (req *r = db->head; r; r = r->next)
        if (r->res) {
            PQclear(r->res);
            r->res = NULL;
        }
    db->inflight = 0;
    db->syncs = 0;
    db->rcur = NULL;
    set_state(db, DB_DOWN);
    schedule_reconnect(db);
}

static void watch(sbx_db *db, int want_write)
{
    sbx_io_set(db->loop, &db->io, SBX_READ | (want_write ? SBX_WRITE : 0));
}

/* One array literal: {"v1",NULL,"v2"}, each value quoted with \\ and "
 * escaped (PostgreSQL's array input syntax). */
static int add_array(sbx_buf *b, const req *members, int k)
{
    int rc = sbx_buf_add(b, "{", 1);
    for (const req *m = members; m && rc == 0; m = m->next) {
        const char *v = m->params[k];
        if (m != members)
            rc = sbx_buf_add(b, ",", 1);
        if (rc == 0 && !v) {
            rc = sbx_buf_add(b, "NULL", 4);
            continue;
        }
        if (rc == 0)
            rc = sbx_buf_add(b, "\"", 1);
        while (rc == 0 && *v) {
            size_t n = strcspn(v, "\\\"");
            rc = sbx_buf_add(b, v, n);
            v += n;
            if (rc == 0 && *v) {
                char esc[2] = {'\\', *v++};
                rc = sbx_buf_add(b, esc, 2);
            }
        }
        if (rc == 0)
            rc = sbx_buf_add(b, "\"", 1);
    }
    return rc ? rc : sbx_buf_add(b, "}", 1);
}

static int send_group(sbx_db *db, req *g)
{
    sbx_buf arrays[PARAMS_MAX];
    const char *vals[PARAMS_MAX];
    int k, n = g->kind->nparams, rc = 0, ok = 0;

    for (k = 0; k < n; k++)
        sbx_buf_init(&arrays[k], GROUP_ARRAY_MAX);
    for (k = 0; k < n && rc == 0; k++) {
        rc = add_array(&arrays[k], g->members, k);
        vals[k] = sbx_buf_str(&arrays[k]);
    }
    if (rc == 0)
        ok = PQsendQueryParams(db->conn, g->kind->many, n, NULL, vals, NULL, NULL, 0);
    else
        sbx_warn("db", "no memory for a statement of %zu calls: %s", g->nmembers, strerror(-rc));
    for (k = 0; k < n; k++)
        sbx_buf_free(&arrays[k]);
    return ok;
}

static int send_one(sbx_db *db, req *r)
{
    if (r->members)
        return send_group(db, r);
    return PQsendQueryParams(db->conn, r->sql, r->nparams, NULL, (const char *const *)r->params,
                             NULL, NULL, 0);
}

static int mergeable(const req *r) { return r->kind && !r->members && !r->solo; }

/* Merges the calls of each kind in the next round into one group req, put
 * where the kind's last call in the round stands. The round: from the head
 * until a solo statement, ROUND_MAX statements or a full group; returns the
 * first req after it (NULL: the queue's end), where the round must stop, or
 * what waits there would be sent one call per statement. */
static req *merge(sbx_db *db)
{
    struct { const sbx_db_batch *kind; req *last, *first, *tail; size_t n, cost; } g[KINDS_MAX];
    size_t ng = 0, stmts = 0, i;
    req *r, *prev = NULL, *end = NULL;

    /* Pass 1: the round's extent and each kind's last call in it. */
    for (r = db->head; r && !r->solo; r = r->next) {
        if (mergeable(r)) {
            for (i = 0; i < ng && g[i].kind != r->kind; i++)
                ;
            if (i == ng && ng < KINDS_MAX) {
                g[ng].kind = r->kind;
                g[ng].first = g[ng].tail = NULL;
                g[ng].n = g[ng].cost = 0;
                ng++;
                stmts++;
            }
            if (i < ng) {
                if (g[i].n == GROUP_MAX || (g[i].n && g[i].cost + r->cost > GROUP_ARRAY_MAX))
                    break;
                g[i].last = r;
                g[i].n++;
                g[i].cost += r->cost;
                continue;
            }
        }
        if (++stmts > ROUND_MAX)
            break;
    }
    end = r;
    /* Pass 2: unlink every member but the last; the last becomes the group. */
    for (r = db->head; r != end;) {
        req *next = r->next;
        for (i = 0; i < ng && !(mergeable(r) && g[i].kind == r->kind); i++)
            ;
        if (i == ng || g[i].n < 2 || g[i].n < (size_t)g[i].kind->merge_min) {
            prev = r;
            r = next;
            continue;
        }
        if (g[i].tail)
            g[i].tail->next = r;
        else
            g[i].first = r;
        g[i].tail = r;
        r->next = NULL;
        if (r != g[i].last) {
            if (prev)
                prev->next = next;
            else
                db->head = next;
            r = next;
            continue;
        }
        {
            req *grp = calloc(1, sizeof(*grp));
            if (!grp) {
                /* Put the members back where the last one stood, unmerged. */
                g[i].tail->next = next;
                grp = g[i].first;
            } else {
                grp->kind = g[i].kind;
                grp->members = g[i].first;
                grp->nmembers = g[i].n;
                grp->next = next;
            }
            if (prev)
                prev->next = grp;
            else
                db->head = grp;
            if (!next)
                db->tail = grp->members ? grp : g[i].tail;
            prev = grp->members ? grp : g[i].tail;
            g[i].n = 0;
            r = next;
        }
    }
    return end;
}

/* Sends the next round if none is in flight. */
static void pump(sbx_db *db)
{
    req *r = db->head, *end = NULL;

    if (db->state != DB_READY || db->inflight > 0 || !r)
        return;
    if (!r->solo) {
        end = merge(db);
        r = db->head;
    }
    db->round_solo = r->solo;
    db->rcur = r;
    while (r && r != end && db->inflight < ROUND_MAX && r->solo == db->round_solo) {
        if (!send_one(db, r) || (db->round_solo && !PQpipelineSync(db->conn))) {
            drop_conn(db, PQerrorMessage(db->conn));
            return;
        }
        r->sent_us = sbx_now_us();
        db->inflight++;
        db->statements++;
        db->syncs += db->round_solo;
        r = r->next;
    }
    if (!db->round_solo) {
        if (!PQpipelineSync(db->conn)) {
            drop_conn(db, PQerrorMessage(db->conn));
            return;
        }
        db->syncs = 1;
    }
    {
        int f = PQflush(db->conn);
        if (f < 0) {
            drop_conn(db, PQerrorMessage(db->conn));
            return;
        }
        watch(db, f == 1);
    }
}

static int failed(const req *r)
{
    ExecStatusType st = r->res ? PQresultStatus(r->res) : PGRES_FATAL_ERROR;
    return st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK;
}

/* One row of a group's answer as a result of its own, for a member's
 * callback (which reads row 0 as it would of the one-call statement). */
static PGresult *row_of(const PGresult *res, int row)
{
    PGresult *one = PQcopyResult(res, PG_COPYRES_ATTRS);
    for (int c = 0; one && c < PQnfields(res); c++) {
        int null = PQgetisnull(res, row, c);
        if (!PQsetvalue(one, 0, c, null ? NULL : PQgetvalue(res, row, c),
                        null ? -1 : PQgetlength(res, row, c))) {
            PQclear(one);
            one = NULL;
        }
    }
    return one;
}

static void complete_group(req *g, const char *err)
{
    int rows = err ? 0 : PQntuples(g->res), i = 0;
    char msg[96];

    if (!err && !SBX_ASSERT((size_t)rows == g->nmembers)) {
        snprintf(msg, sizeof(msg), "%d rows answered %zu calls", rows, g->nmembers);
        err = msg;
    }
    for (req *m = g->members; m; m = m->next, i++) {
        PGresult *one = err ? NULL : row_of(g->res, i);
        if (m->cb)
            m->cb(m->arg, one, one ? NULL : err ? err : "out of memory");
        if (one)
            PQclear(one);
    }
}

/* Each call's time in the queue and in its round, for sbx_db_counts(). */
static void account(sbx_db *db, const req *r)
{
    uint64_t now = sbx_now_us();
    const req *m;
    if (!r->members) {
        db->wait_us += r->sent_us - r->queued_us;
        db->round_us += now - r->sent_us;
        return;
    }
    for (m = r->members; m; m = m->next) {
        db->wait_us += r->sent_us - m->queued_us;
        db->round_us += now - r->sent_us;
    }
}

static void complete_head(sbx_db *db)
{
    req *r = db->head;
    const char *err = NULL;

    db->head = r->next;
    if (!db->head)
        db->tail = NULL;
    db->inflight--;
    db->queued -= r->members ? r->nmembers : 1;
    db->calls += r->members ? r->nmembers : 1;
    account(db, r);
    if (failed(r))
        err = r->res ? PQresultErrorMessage(r->res) : "no result";
    if (r->members)
        complete_group(r, err);
    else if (r->cb)
        r->cb(r->arg, err ? NULL : r->res, err);
    req_free(r);
}

/* A group whose round failed: its members take its place, each to be sent
 * solo as its kind's one-call statement. Returns the last of them. */
static req *split(sbx_db *db, req *prev, req *g)
{
    req *m = g->members, *last = m;
    for (m->solo = 1; last->next; last = last->next)
        last->next->solo = 1;
    last->next = g->next;
    if (prev)
        prev->next = m;
    else
        db->head = m;
    if (db->tail == g)
        db->tail = last;
    g->members = NULL;
    g->next = NULL;
    req_free(g);
    return last;
}

/* The round's Sync arrived: hand out its answers, or, if a statement of a
 * multi-statement round failed (and rolled the others back), mark them all
 * solo to be sent again one by one. */
static void end_round(sbx_db *db)
{
    size_t n = db->inflight, i;
    req *r = db->head, *prev = NULL;
    int any_failed = 0;

    for (i = 0; i < n && r; i++, r = r->next)
        any_failed |= failed(r);
    if (any_failed && (n > 1 || db->head->members)) {
        for (i = 0, r = db->head; i < n && r; i++, prev = r, r = r->next) {
            if (r->res)
                PQclear(r->res);
            r->res = NULL;
            if (r->members)
                r = split(db, prev, r);
            r->solo = 1;
        }
        db->inflight = 0;
        return;
    }
    while (n-- > 0)
        complete_head(db);
}

static void read_results(sbx_db *db)
{
    while (db->syncs > 0 && db->conn && !PQisBusy(db->conn)) {
        PGresult *res = PQgetResult(db->conn);
        if (!res) {
            /* End of one statement's results. */
            if (db->rcur)
                db->rcur = db->rcur->next;
            continue;
        }
        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            db->syncs--;
            if (db->round_solo)
                complete_head(db);
            else
                end_round(db);
            if (db->syncs == 0) {
                db->inflight = 0;
                db->rcur = NULL;
                pump(db);
            }
            continue;
        }
        if (db->rcur && !db->rcur->res)
            db->rcur->res = res;
        else
            PQclear(res);
    }
}

static void on_io(sbx_io *io, int events);

static void deliver_notifies(sbx_db *db)
{
    PGnotify *n;
    while (db->conn && (n = PQnotifies(db->conn)) != NULL) {
        if (db->notify_cb)
            db->notify_cb(db->notify_arg, n->extra);
        PQfreemem(n);
    }
}

static int push_front(sbx_db *db, const char *sql, sbx_db_cb cb, void *arg);

static void connect_poll(sbx_db *db)
{
    PostgresPollingStatusType st = PQconnectPoll(db->conn);

    /* libpq may move to another socket while trying a host's addresses. */
    if (db->conn && PQsocket(db->conn) != db->io.fd) {
        sbx_io_stop(&db->io);
        sbx_io_init(&db->io, PQsocket(db->conn), on_io, db);
    }
    switch (st) {
    case PGRES_POLLING_READING:
        sbx_io_set(db->loop, &db->io, SBX_READ);
        return;
    case PGRES_POLLING_WRITING:
        sbx_io_set(db->loop, &db->io, SBX_WRITE);
        return;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(db->conn, 1) != 0 || !PQenterPipelineMode(db->conn)) {
            drop_conn(db, PQerrorMessage(db->conn));
            return;
        }
        sbx_info("db", "connected (server %d)", PQserverVersion(db->conn));
        db->last_err[0] = '\0';
        db->backoff_ms = RECONNECT_MIN_MS;
        if (db->listen_sql[0])
            push_front(db, db->listen_sql, NULL, NULL);
        set_state(db, DB_READY);
        watch(db, 0);
        pump(db);
        return;
    default: {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(db->conn));
        msg[strcspn(msg, "\n")] = '\0';
        sbx_warn("db", "connect failed: %s", msg);
        memcpy(db->last_err, msg, sizeof(db->last_err));
        sbx_io_stop(&db->io);
        PQfinish(db->conn);
        db->conn = NULL;
        set_state(db, DB_DOWN);
        schedule_reconnect(db);
        return;
    }
    }
}

static void on_io(sbx_io *io, int events)
{
    sbx_db *db = io->data;

    if (db->state == DB_CONNECTING) {
        connect_poll(db);
        return;
    }
    if (events & SBX_READ) {
        if (!PQconsumeInput(db->conn)) {
            drop_conn(db, PQerrorMessage(db->conn));
            return;
        }
        read_results(db);
        deliver_notifies(db);
        /* A server gone away shows as EOF here. */
        if (db->conn && PQstatus(db->conn) == CONNECTION_BAD) {
            drop_conn(db, "server closed the connection");
            return;
        }
    }
    if (db->conn && db->state == DB_READY) {
        int f = PQflush(db->conn);
        if (f < 0) {
            drop_conn(db, PQerrorMessage(db->conn));
            return;
        }
        pump(db);
    }
}

static void start_connect(sbx_db *db)
{
    db->conn = PQconnectStart(db->conninfo);
    if (!db->conn || PQstatus(db->conn) == CONNECTION_BAD) {
        const char *why = db->conn ? PQerrorMessage(db->conn) : "out of memory";
        snprintf(db->last_err, sizeof(db->last_err), "%.*s", (int)strcspn(why, "\n"), why);
        sbx_warn("db", "connect failed: %s", db->last_err);
        if (db->conn)
            PQfinish(db->conn);
        db->conn = NULL;
        schedule_reconnect(db);
        return;
    }
    set_state(db, DB_CONNECTING);
    sbx_io_init(&db->io, PQsocket(db->conn), on_io, db);
    sbx_io_set(db->loop, &db->io, SBX_WRITE);
}

static void on_reconnect(sbx_timer *t)
{
    sbx_db *db = t->data;
    if (db->state == DB_DOWN)
        start_connect(db);
}

int sbx_db_new(sbx_loop *loop, const char *conninfo, sbx_db_state_cb state_cb, void *arg,
               sbx_db **out)
{
    sbx_db *db = calloc(1, sizeof(*db));
    if (!db)
        return -ENOMEM;
    db->loop = loop;
    db->conninfo = strdup(conninfo);
    if (!db->conninfo) {
        free(db);
        return -ENOMEM;
    }
    db->state_cb = state_cb;
    db->state_arg = arg;
    db->backoff_ms = RECONNECT_MIN_MS;
    sbx_timer_init(&db->reconnect, on_reconnect, db);
    start_connect(db);
    *out = db;
    return 0;
}

void sbx_db_free(sbx_db *db)
{
    req *r, *n;
    if (!db)
        return;
    sbx_timer_stop(db->loop, &db->reconnect);
    if (db->conn) {
        sbx_io_stop(&db->io);
        PQfinish(db->conn);
    }
    for (r = db->head; r; r = n) {
        n = r->next;
        req_free(r);
    }
    free(db->conninfo);
    free(db);
}

/* Puts a statement first in line (nothing is in flight right after a
 * connect, so it is sent before anything replayed). */
static int push_front(sbx_db *db, const char *sql, sbx_db_cb cb, void *arg)
{
    req *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->sql = (char *)sql;
    r->cb = cb;
    r->arg = arg;
    r->queued_us = sbx_now_us();
    r->next = db->head;
    db->head = r;
    if (!db->tail)
        db->tail = r;
    db->queued++;
    return 0;
}

int sbx_db_listen(sbx_db *db, const char *channel, sbx_db_notify_cb cb, void *arg)
{
    snprintf(db->listen_sql, sizeof(db->listen_sql), "LISTEN %s", channel);
    db->notify_cb = cb;
    db->notify_arg = arg;
    if (db->state == DB_READY && db->inflight == 0) {
        int rc = push_front(db, db->listen_sql, NULL, NULL);
        pump(db);
        return rc;
    }
    if (db->state == DB_READY)
        return sbx_db_query(db, db->listen_sql, 0, NULL, NULL, NULL);
    return 0;
}

int sbx_db_connected(const sbx_db *db) { return db->state == DB_READY; }
const char *sbx_db_last_error(const sbx_db *db) { return db->last_err; }
size_t sbx_db_queued(const sbx_db *db) { return db->queued; }

void sbx_db_counts(const sbx_db *db, sbx_db_count *c)
{
    c->calls = db->calls;
    c->statements = db->statements;
    c->wait_us = db->wait_us;
    c->round_us = db->round_us;
}

static int enqueue(sbx_db *db, const char *sql, int nparams, const char *const *params,
                   const sbx_db_batch *kind, sbx_db_cb cb, void *arg)
{
    req *r;
    if (db->queued >= SBX_DB_QUEUE_MAX || nparams > PARAMS_MAX)
        return -ENOBUFS;
    r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->sql = (char *)sql;
    r->kind = kind;
    r->cb = cb;
    r->arg = arg;
    for (int i = 0; i < nparams; i++) {
        if (params[i] && !(r->params[i] = strdup(params[i]))) {
            r->nparams = i;
            req_free(r);
            return -ENOMEM;
        }
    }
    r->nparams = nparams;
    r->queued_us = sbx_now_us();
    for (int i = 0; kind && i < nparams; i++)
        r->cost += 2 * (params[i] ? strlen(params[i]) : 0) + 8;
    if (db->tail)
        db->tail->next = r;
    else
        db->head = r;
    db->tail = r;
    db->queued++;
    pump(db);
    return 0;
}

int sbx_db_query(sbx_db *db, const char *sql, int nparams, const char *const *params,
                 sbx_db_cb cb, void *arg)
{
    return enqueue(db, sql, nparams, params, NULL, cb, arg);
}

int sbx_db_batched(sbx_db *db, const sbx_db_batch *kind, const char *const *params,
                   sbx_db_cb cb, void *arg)
{
    return enqueue(db, kind->one, kind->nparams, params, kind, cb, arg);
}
