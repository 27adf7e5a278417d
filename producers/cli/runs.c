/* runs.c — `sbx status`, `sbx wait` and `sbx cancel`: the CLI side of the
 * sbx.runs tables (migrations/0001_runs.sql).
 *
 * These read what workers write. The one write is cancel's, through
 * sbx.request_cancel (migrations/0005_submitted.sql): a consumed run gets the
 * cancel_requested flag, which the worker that owns it acts on (it LISTENs to
 * sbx_cancel); a run not consumed yet, or an id with no run at all, ends
 * canceled there, so the job never runs when a worker consumes it. `wait` LISTENs to sbx_runs, whose
 * payload carries the new status, and also re-reads the rows every
 * RECHECK_MS, because NOTIFY is a hint: a notification sent while we were
 * connecting, or before the job's row existed, is not replayed.
 */
#include "cli.h"
#include "sbx.h"

#include <json-c/json.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RECHECK_MS 2000
#define DEFAULT_WAIT_S 600
#define STATUS_MAX 24   /* longest status is "waiting_capacity" */

static bool is_terminal(const char *status) { return sbx__cli_terminal(status); }

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Parses "JOB_ID [flags]" style arguments: flags from opts, the rest into
 * *ids. Returns -1 after --help, else an exit code (0 = go on). */
static int parse_args(const char *cmd, int argc, char **argv, struct sbx__cli_config *cfg,
                      const struct option *opts, int (*flag)(int c, const char *arg, void *ctx),
                      void *ctx, char ***ids, int *nids)
{
    int rc = sbx__cli_options(cmd, argc, argv, cfg, opts, flag, ctx);
    if (rc != SBX_EXIT_OK)
        return rc;
    *ids = argv + optind;
    *nids = argc - optind;
    for (int i = 0; i < *nids; i++) {
        if (!sbx_id_valid((*ids)[i])) {
            fprintf(stderr, "sbx %s: \"%s\" is not a job id (1..128 of A-Z a-z 0-9 . _ : -, "
                            "starting with a letter or digit)\n", cmd, (*ids)[i]);
            return SBX_EXIT_USAGE;
        }
    }
    return SBX_EXIT_OK;
}

/* ---- status ---- */

struct status_flags { bool json, history; };

static int status_flag(int c, const char *arg, void *ctx)
{
    struct status_flags *f = ctx;
    (void)arg;
    if (c == 'j') f->json = true;
    else if (c == 'H') f->history = true;
    else return -1;
    return 0;
}

static const char *val(const PGresult *r, int row, const char *col)
{
    int c = PQfnumber(r, col);
    return c < 0 || PQgetisnull(r, row, c) ? NULL : PQgetvalue(r, row, c);
}

static void line(const char *label, const char *value)
{
    printf("%-11s %s\n", label, value && *value ? value : "-");
}

static int status_json(PGconn *conn, const char *id, bool history)
{
    static const char sql[] = "SELECT sbx.run_v1(r) FROM sbx.runs r WHERE r.job_id = $1";
    static const char sql_events[] =
        "SELECT sbx.run_v1_events(r) FROM sbx.runs r WHERE r.job_id = $1";
    const char *params[1] = { id };
    PGresult *r = PQexecParams(conn, history ? sql_events : sql, 1, NULL, params, NULL, NULL, 0);
    int rc = SBX_EXIT_FAIL;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error("status", conn, r);
    } else if (PQntuples(r) == 0) {
        fprintf(stderr, "sbx status: unknown job %s\n", id);
    } else {
        printf("%s\n", PQgetvalue(r, 0, 0));
        rc = SBX_EXIT_OK;
    }
    PQclear(r);
    return rc;
}

static int status_text(PGconn *conn, const char *id, bool history)
{
    static const char sql[] =
        "SELECT job_id, project_id, status, attempt, exit_code, error, provider, slot, instance,"
        "       worker_id, lease_token, cancel_requested, preview_url, log_tail,"
        "       kafka_partition, kafka_offset, created_at, started_at, finished_at, updated_at"
        "  FROM sbx.runs WHERE job_id = $1";
    static const char events_sql[] =
        "SELECT at, from_status, to_status, lease_token, worker_id, detail"
        "  FROM sbx.run_events WHERE job_id = $1 ORDER BY id";
    const char *params[1] = { id };
    PGresult *r = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0), *ev = NULL;
    char buf[512];
    int rc = SBX_EXIT_FAIL;

    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error("status", conn, r);
        goto out;
    }
    if (PQntuples(r) == 0) {
        fprintf(stderr, "sbx status: unknown job %s\n", id);
        goto out;
    }
    line("job", val(r, 0, "job_id"));
    line("project", val(r, 0, "project_id"));
    snprintf(buf, sizeof buf, "%s (attempt %s)%s", val(r, 0, "status"), val(r, 0, "attempt"),
             strcmp(val(r, 0, "cancel_requested"), "t") == 0 ? ", cancel requested" : "");
    line("status", buf);
    line("exit code", val(r, 0, "exit_code"));
    line("error", val(r, 0, "error"));
    snprintf(buf, sizeof buf, "%s, slot %s, instance %s",
             val(r, 0, "provider") ? val(r, 0, "provider") : "-",
             val(r, 0, "slot") ? val(r, 0, "slot") : "-",
             val(r, 0, "instance") ? val(r, 0, "instance") : "-");
    line("provider", buf);
    snprintf(buf, sizeof buf, "%s (lease token %s)",
             val(r, 0, "worker_id") ? val(r, 0, "worker_id") : "-", val(r, 0, "lease_token"));
    line("worker", buf);
    line("created", val(r, 0, "created_at"));
    line("started", val(r, 0, "started_at"));
    line("finished", val(r, 0, "finished_at"));
    line("updated", val(r, 0, "updated_at"));
    line("preview", val(r, 0, "preview_url"));
    if (val(r, 0, "kafka_partition")) {
        snprintf(buf, sizeof buf, "partition %s, offset %s", val(r, 0, "kafka_partition"),
                 val(r, 0, "kafka_offset") ? val(r, 0, "kafka_offset") : "-");
        line("kafka", buf);
    }
    if (val(r, 0, "log_tail")) {
        printf("log tail:\n");
        sbx__cli_print_clean(val(r, 0, "log_tail"), "  | ");
    }
    if (history) {
        ev = PQexecParams(conn, events_sql, 1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(ev) != PGRES_TUPLES_OK) {
            sbx__cli_pg_error("status: history", conn, ev);
            goto out;
        }
        printf("history:\n");
        for (int i = 0; i < PQntuples(ev); i++) {
            const char *from = val(ev, i, "from_status"), *detail = val(ev, i, "detail");
            snprintf(buf, sizeof buf, "%s  %s -> %s  token %s  worker %s%s%s", val(ev, i, "at"),
                     from ? from : "(new)", val(ev, i, "to_status"),
                     val(ev, i, "lease_token") ? val(ev, i, "lease_token") : "-",
                     val(ev, i, "worker_id") ? val(ev, i, "worker_id") : "-",
                     detail ? "  " : "", detail ? detail : "");
            sbx__cli_print_clean(buf, "  ");
        }
    }
    rc = SBX_EXIT_OK;
out:
    PQclear(ev);
    PQclear(r);
    return rc;
}

int sbx__cmd_status(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = {
        { "json", no_argument, NULL, 'j' },
        { "history", no_argument, NULL, 'H' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    struct status_flags f = { 0 };
    char **ids;
    int nids, rc = parse_args("status", argc, argv, cfg, opts, status_flag, &f, &ids, &nids);
    if (rc)
        return rc < 0 ? SBX_EXIT_OK : rc;
    if (nids != 1) {
        fprintf(stderr, "sbx status: expected one JOB_ID; run `sbx status --help`\n");
        return SBX_EXIT_USAGE;
    }
    PGconn *conn = sbx__cli_db_connect(cfg, &rc);
    if (!conn)
        return rc;
    rc = f.json ? status_json(conn, ids[0], f.history) : status_text(conn, ids[0], f.history);
    PQfinish(conn);
    if (fflush(stdout) != 0 && rc == SBX_EXIT_OK)
        rc = SBX_EXIT_FAIL;
    return rc;
}

/* ---- wait ---- */

struct tracked {
    const char *id;
    char status[STATUS_MAX];   /* "" until the row exists */
    bool printed;              /* --json: its run was printed */
};

static int tracked_cmp(const void *a, const void *b)
{
    return strcmp(((const struct tracked *)a)->id, ((const struct tracked *)b)->id);
}

static struct tracked *find(struct tracked *t, size_t n, const char *id)
{
    struct tracked key = { .id = id };
    return bsearch(&key, t, n, sizeof *t, tracked_cmp);
}

static void set_status(struct tracked *t, const char *status)
{
    snprintf(t->status, sizeof t->status, "%s", status);
}

static size_t unfinished(const struct tracked *t, size_t n)
{
    size_t left = 0;
    for (size_t i = 0; i < n; i++)
        left += !is_terminal(t[i].status);
    return left;
}

/* Re-reads the status of every unfinished job in one query. */
static int recheck(PGconn *conn, struct tracked *t, size_t n)
{
    size_t cap = 3, len = 0;
    for (size_t i = 0; i < n; i++)
        cap += strlen(t[i].id) + 3;
    char *arr = malloc(cap);
    if (!arr) {
        fprintf(stderr, "sbx wait: out of memory\n");
        return -1;
    }
    /* Ids are checked to be [A-Za-z0-9._:-]: safe inside a quoted array element. */
    arr[len++] = '{';
    for (size_t i = 0; i < n; i++) {
        if (is_terminal(t[i].status))
            continue;
        len += (size_t)snprintf(arr + len, cap - len, "%s\"%s\"", arr[len - 1] == '{' ? "" : ",", t[i].id);
    }
    snprintf(arr + len, cap - len, "}");
    const char *params[1] = { arr };
    PGresult *r = PQexecParams(conn, "SELECT job_id, status FROM sbx.runs WHERE job_id = ANY($1::text[])",
                               1, NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error("wait", conn, r);
        rc = -1;
    } else {
        for (int i = 0; i < PQntuples(r); i++) {
            struct tracked *x = find(t, n, PQgetvalue(r, i, 0));
            if (x)
                set_status(x, PQgetvalue(r, i, 1));
        }
    }
    PQclear(r);
    free(arr);
    return rc;
}

/* Applies {"job_id": ..., "status": ...} payloads of sbx_runs. */
static void drain_notifications(PGconn *conn, struct tracked *t, size_t n)
{
    PGnotify *note;
    while ((note = PQnotifies(conn))) {
        json_object *v = json_tokener_parse(note->extra), *id, *st;
        if (v && json_object_object_get_ex(v, "job_id", &id) && json_object_object_get_ex(v, "status", &st) &&
            json_object_is_type(id, json_type_string) && json_object_is_type(st, json_type_string)) {
            struct tracked *x = find(t, n, json_object_get_string(id));
            if (x)
                set_status(x, json_object_get_string(st));
        }
        json_object_put(v);
        PQfreemem(note);
    }
}

struct wait_flags { long timeout_s; bool json; };

static int wait_flag(int c, const char *arg, void *ctx)
{
    struct wait_flags *f = ctx;
    char *end;
    long s;
    if (c == 'j') {
        f->json = true;
        return 0;
    }
    if (c != 't')
        return -1;
    s = strtol(arg, &end, 10);
    if (!*arg || *end || s < 0 || s > 30L * 24 * 3600) {
        fprintf(stderr, "sbx wait: --timeout: expected seconds, got \"%s\"\n", arg);
        return -1;
    }
    f->timeout_s = s;
    return 0;
}

/* --json: prints the run of each job that has finished since the last call,
 * one run.v1 object per line. -1 after a database error. */
static int print_finished(PGconn *conn, struct tracked *t, size_t n)
{
    static const char sql[] = "SELECT sbx.run_v1(r) FROM sbx.runs r WHERE r.job_id = $1";
    for (size_t i = 0; i < n; i++) {
        if (t[i].printed || !is_terminal(t[i].status))
            continue;
        const char *params[1] = { t[i].id };
        PGresult *r = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
            sbx__cli_pg_error("wait", conn, r);
            PQclear(r);
            return -1;
        }
        printf("%s\n", PQgetvalue(r, 0, 0));
        PQclear(r);
        t[i].printed = true;
    }
    fflush(stdout);
    return 0;
}

int sbx__cmd_wait(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = {
        { "timeout", required_argument, NULL, 't' },
        { "json", no_argument, NULL, 'j' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    struct wait_flags f = { DEFAULT_WAIT_S, false };
    long timeout_s;
    bool first = true;
    char **ids;
    int nids, rc = parse_args("wait", argc, argv, cfg, opts, wait_flag, &f, &ids, &nids);
    struct tracked *t = NULL;
    size_t n = 0;
    PGconn *conn = NULL;

    if (rc)
        return rc < 0 ? SBX_EXIT_OK : rc;
    if (nids < 1) {
        fprintf(stderr, "sbx wait: expected JOB_ID...; run `sbx wait --help`\n");
        return SBX_EXIT_USAGE;
    }
    timeout_s = f.timeout_s;
    if (!(conn = sbx__cli_db_connect(cfg, &rc)))
        return rc;
    rc = SBX_EXIT_FAIL;
    t = calloc((size_t)nids, sizeof *t);
    if (!t) {
        fprintf(stderr, "sbx wait: out of memory\n");
        goto out;
    }
    for (int i = 0; i < nids; i++)
        t[i].id = ids[i];
    qsort(t, (size_t)nids, sizeof *t, tracked_cmp);
    for (int i = 0; i < nids; i++)   /* the same id twice is one job */
        if (n == 0 || strcmp(t[n - 1].id, t[i].id) != 0)
            t[n++] = t[i];

    /* LISTEN before the first read: a change between the two is then seen. */
    PGresult *l = PQexec(conn, "LISTEN sbx_runs");
    if (PQresultStatus(l) != PGRES_COMMAND_OK) {
        sbx__cli_pg_error("wait: LISTEN", conn, l);
        PQclear(l);
        goto out;
    }
    PQclear(l);
    long long deadline = now_ms() + timeout_s * 1000, next_check = 0;
    for (;;) {
        long long now = now_ms();
        if (now >= next_check) {
            if (recheck(conn, t, n))
                goto out;
            next_check = now + RECHECK_MS;
        }
        if (first) {
            /* An id with no run would be waited for in vain: say so now. */
            size_t unknown = 0;
            for (size_t i = 0; i < n; i++)
                if (!t[i].status[0]) {
                    fprintf(stderr, "sbx wait: unknown job %s\n", t[i].id);
                    unknown++;
                }
            if (unknown) {
                rc = SBX_EXIT_UNKNOWN;
                goto out;
            }
            first = false;
        }
        if (f.json && print_finished(conn, t, n))
            goto out;
        if (unfinished(t, n) == 0) {
            rc = SBX_EXIT_OK;
            for (size_t i = 0; i < n; i++)
                if (strcmp(t[i].status, "succeeded") != 0)
                    rc = SBX_EXIT_FAIL;
            break;
        }
        if (now >= deadline) {
            fprintf(stderr, "sbx wait: %zu of %zu job%s not finished after %ld s\n", unfinished(t, n), n,
                    n == 1 ? "" : "s", timeout_s);
            rc = SBX_EXIT_TIMEOUT;
            break;
        }
        long long until = next_check < deadline ? next_check : deadline;
        if (sbx__cli_pg_await(conn, (int)(until - now), "wait"))
            goto out;
        drain_notifications(conn, t, n);
    }
    for (int i = 0; i < nids && !f.json; i++) {
        struct tracked *x = find(t, n, ids[i]);
        printf("%s %s\n", ids[i], x->status[0] ? x->status : "unknown");
    }
out:
    free(t);
    PQfinish(conn);
    if (fflush(stdout) != 0 && rc == SBX_EXIT_OK)
        rc = SBX_EXIT_FAIL;
    return rc;
}

/* ---- cancel ---- */

/* cli.h. The `sbx serve` console calls this too, with its own out and err. */
int sbx__run_cancel(PGconn *conn, const char *id, FILE *out, FILE *err)
{
    const char *params[1] = { id };
    /* One statement: the flag and the notification commit together, and a
     * finished run is neither flagged nor announced. */
    PGresult *r = PQexecParams(conn, "SELECT status, outcome FROM sbx.request_cancel($1)",
                               1, NULL, params, NULL, NULL, 0);
    int rc = SBX_EXIT_FAIL;

    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        sbx__cli_pg_error_to(err, "cancel (run `sbx migrate`?)", conn, r);
        goto out;
    }
    const char *status = PQgetvalue(r, 0, 0), *outcome = PQgetvalue(r, 0, 1);
    if (strcmp(outcome, "finished") == 0)
        fprintf(out, "%s already finished (%s); nothing to cancel\n", id, status);
    else if (strcmp(outcome, "canceled") == 0)
        fprintf(out, "%s: canceled before any worker consumed it; it will not run\n", id);
    else if (strcmp(outcome, "recorded") == 0)
        fprintf(out, "%s: no such job yet; recorded as canceled, so it will not run when it "
                     "arrives\n", id);
    else
        fprintf(out, "%s: cancel requested (status %s); notified sbx_cancel\n", id, status);
    rc = SBX_EXIT_OK;
out:
    PQclear(r);
    return rc;
}

int sbx__cmd_cancel(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = { SBX_CLI_COMMON_OPTIONS, { 0, 0, 0, 0 } };
    char **ids;
    int nids, rc = parse_args("cancel", argc, argv, cfg, opts, NULL, NULL, &ids, &nids);
    PGconn *conn;

    if (rc)
        return rc < 0 ? SBX_EXIT_OK : rc;
    if (nids != 1) {
        fprintf(stderr, "sbx cancel: expected one JOB_ID; run `sbx cancel --help`\n");
        return SBX_EXIT_USAGE;
    }
    if (!(conn = sbx__cli_db_connect(cfg, &rc)))
        return rc;
    rc = sbx__run_cancel(conn, ids[0], stdout, stderr);
    PQfinish(conn);
    return rc;
}
