/* list.c — `sbx list`: the runs of sbx.runs, newest first, filtered by
 * project, status and age, as a table or as a JSON array of run.v1 objects
 * (schemas/run.v1.schema.json). One SELECT: the filters are parameters that
 * are NULL when not given, so there is one statement text whatever the
 * flags (runs_by_project serves --project). */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIST_DEFAULT 50
#define LIST_MAX 10000
/* --since as a duration: at most ten years back. */
#define SINCE_MAX_S (3650LL * 86400)

static const char *const statuses[] = {
    "submitted", "queued", "waiting_capacity", "provisioning", "running",
    "succeeded", "failed", "timed_out", "canceled", "dead_lettered", "active", "finished",
};

struct list_flags {
    const char *project, *status, *since;
    char since_s[24];       /* --since as seconds, or "" when it is a time */
    long limit;
    bool json;
};

static int list_flag(int c, const char *arg, void *ctx)
{
    struct list_flags *f = ctx;
    char *end;
    long long s;
    switch (c) {
    case 'p':
        f->project = arg;
        return 0;
    case 's':
        for (size_t i = 0; i < sizeof statuses / sizeof *statuses; i++)
            if (strcmp(arg, statuses[i]) == 0) {
                f->status = arg;
                return 0;
            }
        fprintf(stderr, "sbx list: --status: unknown status \"%s\"\n", arg);
        return SBX_EXIT_USAGE;
    case 'S':
        f->since = arg;
        f->since_s[0] = '\0';
        if (sbx__cli_parse_duration(arg, SINCE_MAX_S, &s) == 0)
            snprintf(f->since_s, sizeof f->since_s, "%lld", s);
        return 0;
    case 'l':
        f->limit = strtol(arg, &end, 10);
        if (!*arg || *end || f->limit < 1 || f->limit > LIST_MAX) {
            fprintf(stderr, "sbx list: --limit: expected 1..%d, got \"%s\"\n", LIST_MAX, arg);
            return SBX_EXIT_USAGE;
        }
        return 0;
    case 'j':
        f->json = true;
        return 0;
    }
    return -1;
}

/* "3s", "5m", "2h", "4d": how long ago, for the table. */
static void age(const char *secs, char *out, size_t len)
{
    long long s = secs ? atoll(secs) : 0;
    if (!secs)
        snprintf(out, len, "-");
    else if (s < 120)
        snprintf(out, len, "%llds", s);
    else if (s < 7200)
        snprintf(out, len, "%lldm", s / 60);
    else if (s < 172800)
        snprintf(out, len, "%lldh", s / 3600);
    else
        snprintf(out, len, "%lldd", s / 86400);
}

int sbx__cmd_list(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = {
        { "project", required_argument, NULL, 'p' },
        { "status", required_argument, NULL, 's' },
        { "since", required_argument, NULL, 'S' },
        { "limit", required_argument, NULL, 'l' },
        { "json", no_argument, NULL, 'j' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    /* $1 project, $2 status (or active/finished), $3 since as seconds, $4
     * since as a time, $5 limit. */
    static const char where[] =
        " FROM sbx.runs r"
        " WHERE ($1::text IS NULL OR r.project_id = $1)"
        "   AND ($2::text IS NULL OR r.status = $2"
        "        OR ($2 = 'active' AND NOT sbx.is_terminal(r.status))"
        "        OR ($2 = 'finished' AND sbx.is_terminal(r.status)))"
        "   AND ($3::bigint IS NULL OR r.created_at >= now() - make_interval(secs => $3::bigint))"
        "   AND ($4::timestamptz IS NULL OR r.created_at >= $4::timestamptz)"
        " ORDER BY r.created_at DESC, r.job_id LIMIT $5::integer";
    static const char sql_json[] =
        "SELECT coalesce(jsonb_agg(x.run ORDER BY x.created_at DESC, x.job_id), '[]'::jsonb)"
        "  FROM (SELECT sbx.run_v1(r) AS run, r.created_at, r.job_id";
    static const char sql_text[] =
        "SELECT r.job_id, r.project_id, r.status, r.attempt, r.exit_code,"
        "       floor(extract(epoch FROM now() - r.created_at))::bigint AS age";
    struct list_flags f = { .limit = LIST_DEFAULT };
    char limit[24], *sql = NULL;
    const char *params[5];
    PGconn *conn = NULL;
    PGresult *r = NULL;
    int rc = sbx__cli_options("list", argc, argv, cfg, opts, list_flag, &f);

    if (rc)
        return rc < 0 ? SBX_EXIT_OK : rc;
    if (optind < argc) {
        fprintf(stderr, "sbx list: unexpected argument \"%s\"; run `sbx list --help`\n",
                argv[optind]);
        return SBX_EXIT_USAGE;
    }
    if (!(conn = sbx__cli_db_connect(cfg, &rc)))
        return rc;
    rc = SBX_EXIT_FAIL;
    snprintf(limit, sizeof limit, "%ld", f.limit);
    params[0] = f.project;
    params[1] = f.status;
    params[2] = f.since && f.since_s[0] ? f.since_s : NULL;
    params[3] = f.since && !f.since_s[0] ? f.since : NULL;
    params[4] = limit;
    sql = malloc(sizeof sql_json + sizeof where + 8);
    if (!sql) {
        fprintf(stderr, "sbx list: out of memory\n");
        goto out;
    }
    if (f.json)
        sprintf(sql, "%s%s) x", sql_json, where);
    else
        sprintf(sql, "%s%s", sql_text, where);
    r = PQexecParams(conn, sql, 5, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        /* A --since that is neither a duration nor a time lands here. */
        sbx__cli_pg_error("list", conn, r);
        goto out;
    }
    if (f.json) {
        printf("%s\n", PQgetvalue(r, 0, 0));
    } else {
        if (PQntuples(r) > 0)
            printf("%-40s %-24s %-16s %7s %4s %5s\n", "JOB", "PROJECT", "STATUS", "ATTEMPT",
                   "EXIT", "AGE");
        for (int i = 0; i < PQntuples(r); i++) {
            char a[24];
            age(PQgetisnull(r, i, 5) ? NULL : PQgetvalue(r, i, 5), a, sizeof a);
            printf("%-40s %-24s %-16s %7s %4s %5s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                   PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
                   PQgetisnull(r, i, 4) ? "-" : PQgetvalue(r, i, 4), a);
        }
    }
    rc = SBX_EXIT_OK;
out:
    free(sql);
    PQclear(r);
    PQfinish(conn);
    if (fflush(stdout) != 0 && rc == SBX_EXIT_OK)
        rc = SBX_EXIT_FAIL;
    return rc;
}
