/* sessions.c — `sbx session list|show|stop|watch`: the CLI side of
 * sbx.sessions (migrations/0010_sessions.sql).
 *
 * A session is many jobs of one project in one sandbox. Its row is written
 * by the trigger that follows its runs and by the worker's sweeper; this
 * file only reads it, as session.v1 (sbx.session_v1(), the shape the
 * clients read too), and asks for its end through sbx.stop_session, which
 * sets stop_requested: the sweeper ends the session once no job holds it.
 *
 * `watch` LISTENs to sbx_sessions ({"project_id","session_id","state"})
 * before its first read and re-reads every RECHECK_MS, because NOTIFY is a
 * hint (see runs.c). It prints a session when its state, generation or
 * stop_requested changed since it last printed it, which is what the
 * notifications announce.
 */
#include "cli.h"
#include "sbx.h"

#include <json-c/json.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RECHECK_MS 2000
#define LIST_DEFAULT 50
#define LIST_MAX 10000
#define WATCH_MAX_S (30L * 24 * 3600)

/* session.v1, with its history as "events" when $3 (0010's
 * sbx.session_v1_events; the clients send the same statement). */
#define SESSION_SQL                                                                          \
    "SELECT CASE WHEN $3::boolean THEN sbx.session_v1_events(s) ELSE sbx.session_v1(s) END"  \
    " AS session FROM sbx.sessions s WHERE s.project_id = $1 AND s.session_id = $2"

static const char *const states[] = { "busy", "idle", "paused", "ended", "live" };

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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

/* PROJECT SESSION operands, both ids as a job message spells them. */
static int two_ids(const char *cmd, int argc, char **argv, const char **project,
                   const char **session)
{
    if (argc - optind != 2) {
        fprintf(stderr, "sbx session %s: expected PROJECT SESSION; run `sbx session %s --help`\n",
                cmd, cmd);
        return SBX_EXIT_USAGE;
    }
    *project = argv[optind];
    *session = argv[optind + 1];
    for (int i = 0; i < 2; i++) {
        if (!sbx_id_valid(argv[optind + i])) {
            fprintf(stderr, "sbx session %s: \"%s\" is not an id (1..128 of A-Z a-z 0-9 . _ : -, "
                            "starting with a letter or digit)\n", cmd, argv[optind + i]);
            return SBX_EXIT_USAGE;
        }
    }
    return SBX_EXIT_OK;
}

/* The start of show, stop and watch: the options, PROJECT SESSION, a
 * connection. NULL when the command ends here, *rc its exit code. */
static PGconn *session_open(const char *cmd, int argc, char **argv, struct sbx__cli_config *cfg,
                            const struct option *opts,
                            int (*flag)(int c, const char *arg, void *ctx), void *ctx,
                            const char **project, const char **session, int *rc)
{
    int o = sbx__cli_options("session", argc, argv, cfg, opts, flag, ctx);

    if (o) {
        *rc = o < 0 ? SBX_EXIT_OK : o;
        return NULL;
    }
    if ((*rc = two_ids(cmd, argc, argv, project, session)))
        return NULL;
    return sbx__cli_db_connect(cfg, rc);
}

/* ---- list ---- */

struct list_flags {
    const char *project, *state;
    long limit;
    bool json;
};

static int list_flag(int c, const char *arg, void *ctx)
{
    struct list_flags *f = ctx;
    char *end;
    switch (c) {
    case 'p':
        f->project = arg;
        return 0;
    case 's':
        for (size_t i = 0; i < sizeof states / sizeof *states; i++)
            if (strcmp(arg, states[i]) == 0) {
                f->state = arg;
                return 0;
            }
        fprintf(stderr, "sbx session list: --state: unknown state \"%s\"\n", arg);
        return SBX_EXIT_USAGE;
    case 'l':
        f->limit = strtol(arg, &end, 10);
        if (!*arg || *end || f->limit < 1 || f->limit > LIST_MAX) {
            fprintf(stderr, "sbx session list: --limit: expected 1..%d, got \"%s\"\n", LIST_MAX,
                    arg);
            return SBX_EXIT_USAGE;
        }
        return 0;
    case 'j':
        f->json = true;
        return 0;
    }
    return -1;
}

static int session_list(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = {
        { "project", required_argument, NULL, 'p' },
        { "state", required_argument, NULL, 's' },
        { "limit", required_argument, NULL, 'l' },
        { "json", no_argument, NULL, 'j' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    /* $1 project, $2 state (or live: not ended), $3 limit. Most recently
     * used first. */
    static const char where[] =
        " FROM sbx.sessions s"
        " WHERE ($1::text IS NULL OR s.project_id = $1)"
        "   AND ($2::text IS NULL OR s.state = $2 OR ($2 = 'live' AND s.state <> 'ended'))"
        " ORDER BY s.last_used_at DESC, s.project_id, s.session_id LIMIT $3::integer";
    static const char sql_json[] =
        "SELECT coalesce(jsonb_agg(x.session ORDER BY x.last_used_at DESC, x.project_id,"
        "                          x.session_id), '[]'::jsonb)"
        "  FROM (SELECT sbx.session_v1(s) AS session, s.last_used_at, s.project_id, s.session_id";
    static const char sql_text[] =
        "SELECT s.project_id, s.session_id, s.state, s.generation, s.jobs, s.provider,"
        "       s.stop_requested,"
        "       floor(extract(epoch FROM now() - s.last_used_at))::bigint AS idle";
    /* sql holds either head and the where clause, and ") x". */
    _Static_assert(sizeof sql_text <= sizeof sql_json, "sql is sized by sql_json");
    struct list_flags f = { .limit = LIST_DEFAULT };
    char limit[24], sql[sizeof sql_json + sizeof where + 8];
    const char *params[3];
    PGconn *conn = NULL;
    PGresult *r = NULL;
    int rc = sbx__cli_options("session", argc, argv, cfg, opts, list_flag, &f);

    if (rc)
        return rc < 0 ? SBX_EXIT_OK : rc;
    if (optind < argc) {
        fprintf(stderr, "sbx session list: unexpected argument \"%s\"; run `sbx session --help`\n",
                argv[optind]);
        return SBX_EXIT_USAGE;
    }
    if (!(conn = sbx__cli_db_connect(cfg, &rc)))
        return rc;
    rc = SBX_EXIT_FAIL;
    snprintf(limit, sizeof limit, "%ld", f.limit);
    params[0] = f.project;
    params[1] = f.state;
    params[2] = limit;
    if (f.json)
        snprintf(sql, sizeof sql, "%s%s) x", sql_json, where);
    else
        snprintf(sql, sizeof sql, "%s%s", sql_text, where);
    r = PQexecParams(conn, sql, 3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error("session list (run `sbx migrate`?)", conn, r);
        goto out;
    }
    if (f.json) {
        printf("%s\n", PQgetvalue(r, 0, 0));
    } else {
        if (PQntuples(r) > 0)
            printf("%-24s %-24s %-7s %4s %5s %-8s %6s\n", "PROJECT", "SESSION", "STATE", "GEN",
                   "JOBS", "PROVIDER", "IDLE");
        for (int i = 0; i < PQntuples(r); i++) {
            char state[32];
            snprintf(state, sizeof state, "%s%s", val(r, i, "state"),
                     strcmp(val(r, i, "stop_requested"), "t") == 0 ? "*" : "");
            printf("%-24s %-24s %-7s %4s %5s %-8s %5ss\n", val(r, i, "project_id"),
                   val(r, i, "session_id"), state, val(r, i, "generation"), val(r, i, "jobs"),
                   val(r, i, "provider") ? val(r, i, "provider") : "-", val(r, i, "idle"));
        }
    }
    rc = SBX_EXIT_OK;
out:
    PQclear(r);
    PQfinish(conn);
    return rc;
}

/* ---- show ---- */

struct show_flags { bool json; };

static int show_flag(int c, const char *arg, void *ctx)
{
    struct show_flags *f = ctx;
    (void)arg;
    if (c != 'j')
        return -1;
    f->json = true;
    return 0;
}

static void show_text(const PGresult *r, const PGresult *ev)
{
    char buf[512];
    line("project", val(r, 0, "project_id"));
    line("session", val(r, 0, "session_id"));
    snprintf(buf, sizeof buf, "%s (generation %s, %s job%s)%s", val(r, 0, "state"),
             val(r, 0, "generation"), val(r, 0, "jobs"),
             strcmp(val(r, 0, "jobs"), "1") == 0 ? "" : "s",
             strcmp(val(r, 0, "stop_requested"), "t") == 0 ? ", stop requested" : "");
    line("state", buf);
    line("ended", val(r, 0, "end_reason"));
    snprintf(buf, sizeof buf, "%s, slot %s",
             val(r, 0, "provider") ? val(r, 0, "provider") : "-",
             val(r, 0, "slot") ? val(r, 0, "slot") : "-");
    line("provider", buf);
    snprintf(buf, sizeof buf, "%s (lease token %s)",
             val(r, 0, "last_job_id") ? val(r, 0, "last_job_id") : "-", val(r, 0, "lease_token"));
    line("last job", buf);
    line("preview", val(r, 0, "preview_url"));
    snprintf(buf, sizeof buf, "pause after %s s, end after %s s idle or %s s in all",
             val(r, 0, "pause_after_s"), val(r, 0, "idle_timeout_s"),
             val(r, 0, "max_lifetime_s"));
    line("timeouts", buf);
    line("created", val(r, 0, "created_at"));
    line("last used", val(r, 0, "last_used_at"));
    line("updated", val(r, 0, "updated_at"));
    line("ends at", val(r, 0, "ends_at"));
    line("ended at", val(r, 0, "ended_at"));
    printf("history:\n");
    for (int i = 0; i < PQntuples(ev); i++) {
        const char *from = val(ev, i, "from_state"), *detail = val(ev, i, "detail"),
                   *job = val(ev, i, "job_id");
        snprintf(buf, sizeof buf, "%s  gen %s  %s -> %s  token %s%s%s%s%s", val(ev, i, "at"),
                 val(ev, i, "generation"), from ? from : "(new)", val(ev, i, "to_state"),
                 val(ev, i, "lease_token") ? val(ev, i, "lease_token") : "-",
                 job ? "  job " : "", job ? job : "", detail ? "  " : "", detail ? detail : "");
        sbx__cli_print_clean(buf, "  ");
    }
}

static int session_show(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = {
        { "json", no_argument, NULL, 'j' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    static const char sql_text[] =
        "SELECT project_id, session_id, state, generation, provider, slot, preview_url,"
        "       last_job_id, jobs, pause_after_s, idle_timeout_s, max_lifetime_s,"
        "       stop_requested, end_reason, lease_token, created_at, updated_at,"
        "       last_used_at, ends_at, ended_at"
        "  FROM sbx.sessions WHERE project_id = $1 AND session_id = $2";
    static const char sql_events[] =
        "SELECT at, generation, from_state, to_state, lease_token, job_id, detail"
        "  FROM sbx.session_events WHERE project_id = $1 AND session_id = $2 ORDER BY id";
    struct show_flags f = { 0 };
    const char *params[3], *project, *session;
    PGconn *conn = NULL;
    PGresult *r = NULL, *ev = NULL;
    int rc;

    if (!(conn = session_open("show", argc, argv, cfg, opts, show_flag, &f, &project, &session, &rc)))
        return rc;
    rc = SBX_EXIT_FAIL;
    params[0] = project;
    params[1] = session;
    params[2] = "true";
    r = f.json ? PQexecParams(conn, SESSION_SQL, 3, NULL, params, NULL, NULL, 0)
               : PQexecParams(conn, sql_text, 2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error("session show (run `sbx migrate`?)", conn, r);
        goto out;
    }
    if (PQntuples(r) == 0) {
        fprintf(stderr, "sbx session show: no session %s in project %s\n", session, project);
        goto out;
    }
    if (f.json) {
        printf("%s\n", PQgetvalue(r, 0, 0));
    } else {
        /* The history in a second statement: a change between the two shows
         * as an event newer than the row, which is harmless. */
        ev = PQexecParams(conn, sql_events, 2, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(ev) != PGRES_TUPLES_OK) {
            sbx__cli_pg_error("session show: history", conn, ev);
            goto out;
        }
        show_text(r, ev);
    }
    rc = SBX_EXIT_OK;
out:
    PQclear(ev);
    PQclear(r);
    PQfinish(conn);
    return rc;
}

/* ---- stop ---- */

static int session_stop(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = { SBX_CLI_COMMON_OPTIONS, { 0, 0, 0, 0 } };
    const char *params[2], *project, *session, *st;
    PGconn *conn = NULL;
    PGresult *r = NULL;
    int rc;

    if (!(conn = session_open("stop", argc, argv, cfg, opts, NULL, NULL, &project, &session, &rc)))
        return rc;
    rc = SBX_EXIT_FAIL;
    params[0] = project;
    params[1] = session;
    r = PQexecParams(conn, "SELECT sbx.stop_session($1, $2)", 2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        sbx__cli_pg_error("session stop (run `sbx migrate`?)", conn, r);
        goto out;
    }
    st = PQgetvalue(r, 0, 0);
    if (!*st) {
        fprintf(stderr, "sbx session stop: no session %s in project %s\n", session, project);
        goto out;
    }
    if (strcmp(st, "ended") == 0)
        printf("%s/%s already ended; nothing to stop\n", project, session);
    else if (strcmp(st, "busy") == 0)
        printf("%s/%s: stop requested; a job holds it now, it ends when that job is done\n",
               project, session);
    else
        printf("%s/%s: stop requested (%s); a worker ends it and destroys its sandbox\n", project,
               session, st);
    rc = SBX_EXIT_OK;
out:
    PQclear(r);
    PQfinish(conn);
    return rc;
}

/* ---- watch ---- */

struct watch_flags { long timeout_s; bool json; };

static int watch_flag(int c, const char *arg, void *ctx)
{
    struct watch_flags *f = ctx;
    char *end;
    if (c == 'j') {
        f->json = true;
        return 0;
    }
    if (c != 't')
        return -1;
    f->timeout_s = strtol(arg, &end, 10);
    if (!*arg || *end || f->timeout_s < 0 || f->timeout_s > WATCH_MAX_S) {
        fprintf(stderr, "sbx session watch: --timeout: expected seconds, got \"%s\"\n", arg);
        return SBX_EXIT_USAGE;
    }
    return 0;
}

/* What a watcher last printed of a session: its state, generation and
 * stop_requested, as one short string ("" before the first). */
#define SEEN_MAX 48

/* Reads the session; prints it if it changed since *seen. 1 when it is
 * ended, 0 when not (or it does not exist yet), -1 on a database error. */
static int watch_read(PGconn *conn, const char *project, const char *session, bool json,
                      char seen[SEEN_MAX])
{
    const char *params[3] = { project, session, "false" };
    PGresult *r = PQexecParams(conn, SESSION_SQL, 3, NULL, params, NULL, NULL, 0);
    json_object *o = NULL, *st, *gen, *stop, *job;
    char now[SEEN_MAX];
    int rc = -1;

    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error("session watch (run `sbx migrate`?)", conn, r);
        goto out;
    }
    rc = 0;
    if (PQntuples(r) == 0)
        goto out;
    rc = -1;
    o = json_tokener_parse(PQgetvalue(r, 0, 0));
    if (!o || !json_object_object_get_ex(o, "state", &st) ||
        !json_object_object_get_ex(o, "generation", &gen) ||
        !json_object_object_get_ex(o, "stop_requested", &stop) ||
        !json_object_object_get_ex(o, "last_job_id", &job)) {
        fprintf(stderr, "sbx session watch: unexpected row %s\n", PQgetvalue(r, 0, 0));
        goto out;
    }
    snprintf(now, sizeof now, "%s %d%s", json_object_get_string(st), json_object_get_int(gen),
             json_object_get_boolean(stop) ? " stop" : "");
    if (strcmp(now, seen) != 0) {
        if (json) {
            printf("%s\n", PQgetvalue(r, 0, 0));
        } else {
            char when[32];
            time_t t = time(NULL);
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
            printf("%s %s/%s %s generation %d%s%s%s\n", when, project, session,
                   json_object_get_string(st), json_object_get_int(gen),
                   json_object_get_boolean(stop) ? ", stop requested" : "",
                   json_object_is_type(job, json_type_string) ? ", last job " : "",
                   json_object_is_type(job, json_type_string) ? json_object_get_string(job) : "");
        }
        fflush(stdout);
        snprintf(seen, SEEN_MAX, "%s", now);
    }
    rc = strcmp(json_object_get_string(st), "ended") == 0;
out:
    json_object_put(o);
    PQclear(r);
    return rc;
}

/* Whether a pending notification names this session. */
static bool drain(PGconn *conn, const char *project, const char *session)
{
    PGnotify *note;
    bool ours = false;
    while ((note = PQnotifies(conn))) {
        json_object *v = json_tokener_parse(note->extra), *p, *s;
        if (!v || !json_object_object_get_ex(v, "project_id", &p) ||
            !json_object_object_get_ex(v, "session_id", &s) ||
            (strcmp(json_object_get_string(p), project) == 0 &&
             strcmp(json_object_get_string(s), session) == 0))
            ours = true;
        json_object_put(v);
        PQfreemem(note);
    }
    return ours;
}

static int session_watch(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = {
        { "timeout", required_argument, NULL, 't' },
        { "json", no_argument, NULL, 'j' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    struct watch_flags f = { WATCH_MAX_S, false };
    const char *project, *session;
    char seen[SEEN_MAX] = "";
    PGconn *conn = NULL;
    PGresult *l;
    int rc;

    if (!(conn = session_open("watch", argc, argv, cfg, opts, watch_flag, &f, &project, &session, &rc)))
        return rc;
    rc = SBX_EXIT_FAIL;
    /* LISTEN before the first read: a change between the two is then seen. */
    l = PQexec(conn, "LISTEN sbx_sessions");
    if (PQresultStatus(l) != PGRES_COMMAND_OK) {
        sbx__cli_pg_error("session watch: LISTEN", conn, l);
        PQclear(l);
        goto out;
    }
    PQclear(l);
    long long deadline = now_ms() + f.timeout_s * 1000, next_read = 0;
    for (;;) {
        long long now = now_ms();
        if (now >= next_read) {
            int ended = watch_read(conn, project, session, f.json, seen);
            if (ended < 0)
                goto out;
            if (ended) {
                rc = SBX_EXIT_OK;
                break;
            }
            next_read = now + RECHECK_MS;
        }
        if (now >= deadline) {
            fprintf(stderr, "sbx session watch: %s/%s not ended after %ld s\n", project, session,
                    f.timeout_s);
            rc = SBX_EXIT_TIMEOUT;
            break;
        }
        long long until = next_read < deadline ? next_read : deadline;
        if (sbx__cli_pg_await(conn, (int)(until - now), "session watch"))
            goto out;
        if (drain(conn, project, session))
            next_read = 0;
    }
out:
    PQfinish(conn);
    return rc;
}

int sbx__cmd_session(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct {
        const char *name;
        int (*run)(int argc, char **argv, struct sbx__cli_config *cfg);
    } subs[] = {
        { "list", session_list },
        { "show", session_show },
        { "stop", session_stop },
        { "watch", session_watch },
    };
    int rc = SBX_EXIT_USAGE;

    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        sbx__cli_usage("session", argc < 2);
        return argc < 2 ? SBX_EXIT_USAGE : SBX_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof subs / sizeof *subs; i++) {
        if (strcmp(argv[1], subs[i].name) == 0) {
            optind = 0;   /* glibc: 0 restarts getopt for the subcommand's argv */
            rc = subs[i].run(argc - 1, argv + 1, cfg);
            if (fflush(stdout) != 0 && rc == SBX_EXIT_OK)
                rc = SBX_EXIT_FAIL;
            return rc;
        }
    }
    fprintf(stderr, "sbx session: unknown subcommand \"%s\"; run `sbx session --help`\n", argv[1]);
    return rc;
}
