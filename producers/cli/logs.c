/* logs.c — `sbx logs`: a build's output from sbx.run_logs
 * (migrations/0006_run_logs.sql), printed or followed live.
 *
 * A follower does what any UI backend does: LISTEN sbx_logs (and sbx_runs,
 * for the end), then read the chunks after the last one it printed, in
 * (attempt, seq) order; NOTIFY only says when to read again, and a read
 * every RECHECK_MS covers a notification that came while we were reading.
 * It stops once it has seen the run terminal and then read once more: the
 * worker makes every chunk durable before the terminal status (runlog.h),
 * so that read finds the rest. Reads go in pages of PAGE rows, so a 10 MiB
 * log never sits in memory at once.
 *
 * Chunks are clean already (valid UTF-8, no control character but newline
 * and tab: the worker's rule), so they are written as they are.
 */
#include "cli.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RECHECK_MS 1000
/* Rows per read: chunks are at most 16 KiB, so a page is at most ~4 MiB. */
#define PAGE 256

struct logs_flags {
    bool follow, json;
    int attempt;            /* 0: every attempt */
};

static int logs_flag(int c, const char *arg, void *ctx)
{
    struct logs_flags *f = ctx;
    char *end;
    long v;
    switch (c) {
    case 'f':
        f->follow = true;
        return 0;
    case 'j':
        f->json = true;
        return 0;
    case 'a':
        v = strtol(arg, &end, 10);
        if (!*arg || *end || v < 1 || v > 1000000) {
            fprintf(stderr, "sbx logs: --attempt: expected a number from 1, got \"%s\"\n", arg);
            return SBX_EXIT_USAGE;
        }
        f->attempt = (int)v;
        return 0;
    }
    return -1;
}

struct cursor {
    int attempt, seq;       /* the last chunk printed; (0, -1) before any */
    int shown_attempt;      /* the attempt whose header was printed */
};

/* The run's status into st (STATUS_MAX); 0, 1 when there is no run, -1 on
 * a database error. */
static int run_status(PGconn *conn, const char *id, char *st, size_t len)
{
    const char *params[1] = { id };
    PGresult *r = PQexecParams(conn, "SELECT status FROM sbx.runs WHERE job_id = $1", 1, NULL,
                               params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error("logs", conn, r);
        rc = -1;
    } else if (PQntuples(r) == 0) {
        rc = 1;
    } else {
        snprintf(st, len, "%s", PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    return rc;
}

/* Prints every chunk after the cursor. Returns 0 or -1 (database error). */
static int read_new(PGconn *conn, const char *id, const struct logs_flags *f, struct cursor *c)
{
    static const char sql[] =
        "SELECT l.attempt, l.seq, l.stream, l.data, sbx.log_v1(l)"
        "  FROM sbx.run_logs l"
        " WHERE l.job_id = $1 AND (l.attempt, l.seq) > ($2::integer, $3::integer)"
        "   AND ($4::integer IS NULL OR l.attempt = $4::integer)"
        " ORDER BY l.attempt, l.seq LIMIT " SBX_CLI_STR(PAGE);
    for (;;) {
        char a[16], s[16], only[16];
        const char *params[4] = { id, a, s, f->attempt ? only : NULL };
        PGresult *r;
        int n;
        snprintf(a, sizeof a, "%d", c->attempt);
        snprintf(s, sizeof s, "%d", c->seq);
        snprintf(only, sizeof only, "%d", f->attempt);
        r = PQexecParams(conn, sql, 4, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            sbx__cli_pg_error("logs (run `sbx migrate`?)", conn, r);
            PQclear(r);
            return -1;
        }
        n = PQntuples(r);
        for (int i = 0; i < n; i++) {
            int attempt = atoi(PQgetvalue(r, i, 0));
            const char *stream = PQgetvalue(r, i, 2), *data = PQgetvalue(r, i, 3);
            if (f->json) {
                printf("%s\n", PQgetvalue(r, i, 4));
            } else {
                if (attempt != c->shown_attempt && (c->shown_attempt || attempt > 1) &&
                    !f->attempt) {
                    fflush(stdout);
                    fprintf(stderr, "--- attempt %d ---\n", attempt);
                }
                if (strcmp(stream, "stdout") == 0) {
                    fputs(data, stdout);
                } else {
                    fflush(stdout);
                    fputs(data, stderr);
                }
            }
            c->shown_attempt = attempt;
            c->attempt = attempt;
            c->seq = atoi(PQgetvalue(r, i, 1));
        }
        PQclear(r);
        fflush(stdout);
        if (n < PAGE)
            return 0;
    }
}

int sbx__cmd_logs(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = {
        { "follow", no_argument, NULL, 'f' },
        { "json", no_argument, NULL, 'j' },
        { "attempt", required_argument, NULL, 'a' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    struct logs_flags f = { 0 };
    struct cursor cur = { 0, -1, 0 };
    char status[32] = "";
    const char *id;
    PGconn *conn = NULL;
    int rc = sbx__cli_options_short("logs", argc, argv, cfg, "f", opts, logs_flag, &f);

    if (rc)
        return rc < 0 ? SBX_EXIT_OK : rc;
    if (argc - optind != 1) {
        fprintf(stderr, "sbx logs: expected one JOB_ID; run `sbx logs --help`\n");
        return SBX_EXIT_USAGE;
    }
    id = argv[optind];
    if (!sbx_id_valid(id)) {
        fprintf(stderr, "sbx logs: \"%s\" is not a job id\n", id);
        return SBX_EXIT_USAGE;
    }
    if (!(conn = sbx__cli_db_connect(cfg, &rc)))
        return rc;
    rc = SBX_EXIT_FAIL;
    if (f.follow) {
        /* LISTEN before the first read: a chunk between the two is then seen. */
        PGresult *l = PQexec(conn, "LISTEN sbx_logs; LISTEN sbx_runs");
        if (PQresultStatus(l) != PGRES_COMMAND_OK) {
            sbx__cli_pg_error("logs: LISTEN", conn, l);
            PQclear(l);
            goto out;
        }
        PQclear(l);
    }
    for (;;) {
        /* The status first, the chunks after: see the top. */
        int st = run_status(conn, id, status, sizeof status);
        if (st < 0)
            goto out;
        if (st > 0) {
            fprintf(stderr, "sbx logs: unknown job %s\n", id);
            rc = SBX_EXIT_UNKNOWN;
            goto out;
        }
        if (read_new(conn, id, &f, &cur))
            goto out;
        if (!f.follow || sbx__cli_terminal(status))
            break;
        struct pollfd pfd = { .fd = PQsocket(conn), .events = POLLIN };
        if (poll(&pfd, 1, RECHECK_MS) > 0 && !PQconsumeInput(conn)) {
            sbx__cli_pg_error("logs", conn, NULL);
            goto out;
        }
        /* Any notification means "read again"; which job it names matters
         * little next to one more indexed read. */
        PGnotify *note;
        while ((note = PQnotifies(conn)))
            PQfreemem(note);
    }
    rc = SBX_EXIT_OK;
out:
    PQfinish(conn);
    if (fflush(stdout) != 0 && rc == SBX_EXIT_OK)
        rc = SBX_EXIT_FAIL;
    return rc;
}
