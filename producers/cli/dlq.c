/* dlq.c — `sbx dlq list`, `sbx dlq show` and `sbx dlq replay`: the CLI side
 * of sbx.dead_letters (migrations/0004_dead_letters.sql).
 *
 * list and show read what workers recorded and print only the redacted
 * text, never the original, so sbx_reader is enough for them. replay needs
 * the original (sbx.dead_letter_originals, readable by sbx_writer only) and
 * the brokers: it re-publishes the message's exact bytes, with the same key,
 * to the topic it came from, after the operator fixed what made it fail.
 *
 * A replay is refused, naming why, when it could not do what the operator
 * wants:
 *  - no original was kept (the message was over SBX_DLQ_PAYLOAD_MAX): only a
 *    redacted excerpt exists, and a job with its env values replaced would
 *    not be the job;
 *  - this sbx's parser refuses the message (it would only be dead-lettered
 *    again); --force sends it anyway, for a worker fleet newer than this CLI;
 *  - its job id has a run that is not dead_lettered: a job id runs once, so
 *    workers would skip one that ended and join one that is under way. There
 *    is no override: the way to run it again is a new job id.
 * A run the worker ended dead_lettered (retries exhausted) is reset to
 * queued by sbx.replay_dead_letter() in the transaction that waits for the
 * brokers' acknowledgement: a worker that reads the message finds a run it
 * may start (record_run waits for our commit on the row lock), and a publish
 * that fails leaves the run and the dead letter as they were.
 */
#include "cli.h"
#include "sbx.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_LIMIT 50
#define LIMIT_MAX 100000
#define DELIVERY_TIMEOUT_MS 30000
/* --since: the longest duration accepted, 100 years (as SBX_RETENTION). */
#define SINCE_MAX_S (36500LL * 86400)

static const char *val(const PGresult *r, int row, const char *col)
{
    int c = PQfnumber(r, col);
    return c < 0 || PQgetisnull(r, row, c) ? NULL : PQgetvalue(r, row, c);
}

static const char *or_dash(const char *s) { return s && *s ? s : "-"; }


bool sbx__dlq_id_ok(const char *s)
{
    if (!*s || strlen(s) > 18)
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

/* ---- list ---- */

struct list_flags {
    const char *reason, *since;
    char since_s[24];
    long long limit;
};

static int list_flag(int c, const char *arg, void *ctx)
{
    struct list_flags *f = ctx;
    long long secs;
    char *end;

    switch (c) {
    case 'r': f->reason = arg; return 0;
    case 's':
        if (sbx__cli_parse_duration(arg, SINCE_MAX_S, &secs) != 0) {
            fprintf(stderr, "sbx dlq list: --since %s is not a duration (90s, 15m, 12h, 7d)\n",
                    arg);
            return SBX_EXIT_USAGE;
        }
        snprintf(f->since_s, sizeof f->since_s, "%lld", secs);
        f->since = f->since_s;
        return 0;
    case 'l':
        f->limit = strtoll(arg, &end, 10);
        if (*end || end == arg || f->limit < 1 || f->limit > LIMIT_MAX) {
            fprintf(stderr, "sbx dlq list: --limit must be 1..%d\n", LIMIT_MAX);
            return SBX_EXIT_USAGE;
        }
        return 0;
    }
    return -1;
}

/* The one boolean flag of show (--json) and replay (--force). */
static int bool_flag(int c, const char *arg, void *ctx)
{
    (void)arg;
    if (c != 'b')
        return -1;
    *(bool *)ctx = true;
    return 0;
}

static int cmd_list(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = {
        { "reason", required_argument, NULL, 'r' },
        { "since", required_argument, NULL, 's' },
        { "limit", required_argument, NULL, 'l' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    static const char sql[] =
        "SELECT id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS at,"
        "       reason, job_id, kafka_partition, kafka_offset, payload_bytes, replays"
        "  FROM sbx.dead_letters"
        " WHERE ($1::text IS NULL OR reason = $1)"
        "   AND ($2::bigint IS NULL OR created_at >= now() - make_interval(secs => $2::bigint))"
        " ORDER BY id DESC LIMIT $3::integer";
    struct list_flags f = { .limit = DEFAULT_LIMIT };
    char limit_s[16];
    PGconn *conn = NULL;
    PGresult *r = NULL;
    int rc = sbx__cli_options("dlq", argc, argv, cfg, opts, list_flag, &f);

    if (rc != SBX_EXIT_OK)
        return rc < 0 ? SBX_EXIT_OK : rc;
    if (optind < argc) {
        fprintf(stderr, "sbx dlq list: unexpected argument \"%s\"\n", argv[optind]);
        return SBX_EXIT_USAGE;
    }
    snprintf(limit_s, sizeof limit_s, "%lld", f.limit);
    if (!(conn = sbx__cli_db_connect(cfg, &rc)))
        return rc;
    const char *params[3] = { f.reason, f.since, limit_s };
    r = PQexecParams(conn, sql, 3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error("dlq list", conn, r);
        rc = SBX_EXIT_FAIL;
        goto out;
    }
    printf("%-8s %-20s %-18s %-40s %-18s %10s %s\n", "ID", "TIME", "REASON", "JOB",
           "PARTITION@OFFSET", "BYTES", "REPLAYED");
    for (int i = 0; i < PQntuples(r); i++) {
        char where[48];
        snprintf(where, sizeof where, "%s@%s", val(r, i, "kafka_partition"),
                 val(r, i, "kafka_offset"));
        printf("%-8s %-20s %-18s %-40s %-18s %10s %s\n", val(r, i, "id"), val(r, i, "at"),
               val(r, i, "reason"), or_dash(val(r, i, "job_id")), where,
               val(r, i, "payload_bytes"),
               strcmp(val(r, i, "replays"), "0") == 0 ? "-" : val(r, i, "replays"));
    }
    rc = SBX_EXIT_OK;
out:
    PQclear(r);
    PQfinish(conn);
    return rc;
}

/* ---- show ---- */

static void field(const char *label, const char *value)
{
    printf("%-11s ", label);
    sbx__cli_print_clean(or_dash(value), "");
}

static int cmd_show(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = {
        { "json", no_argument, NULL, 'b' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    static const char sql[] =
        "SELECT d.*, encode(d.kafka_key, 'escape') AS key_text, r.status AS run_status,"
        "       (to_jsonb(d) - 'kafka_key') || jsonb_build_object('key', encode(d.kafka_key, "
        "       'escape'), 'run_status', r.status) AS json"
        "  FROM sbx.dead_letters d LEFT JOIN sbx.runs r ON r.job_id = d.job_id"
        " WHERE d.id = $1::bigint";
    bool json = false;
    PGconn *conn = NULL;
    PGresult *r = NULL;
    char buf[512];
    int rc = sbx__cli_options("dlq", argc, argv, cfg, opts, bool_flag, &json);

    if (rc != SBX_EXIT_OK)
        return rc < 0 ? SBX_EXIT_OK : rc;
    rc = SBX_EXIT_USAGE;
    if (argc - optind != 1 || !sbx__dlq_id_ok(argv[optind])) {
        fprintf(stderr, "sbx dlq show: give one dead letter id (a number from `sbx dlq list`)\n");
        return SBX_EXIT_USAGE;
    }
    if (!(conn = sbx__cli_db_connect(cfg, &rc)))
        return rc;
    const char *params[1] = { argv[optind] };
    r = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0);
    rc = SBX_EXIT_FAIL;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error("dlq show", conn, r);
        goto out;
    }
    if (PQntuples(r) == 0) {
        fprintf(stderr, "sbx dlq show: no dead letter %s\n", argv[optind]);
        goto out;
    }
    rc = SBX_EXIT_OK;
    if (json) {
        printf("%s\n", val(r, 0, "json"));
        goto out;
    }
    field("id", val(r, 0, "id"));
    field("reason", val(r, 0, "reason"));
    field("detail", val(r, 0, "detail"));
    field("job", val(r, 0, "job_id"));
    field("project", val(r, 0, "project_id"));
    field("run", val(r, 0, "run_status"));
    snprintf(buf, sizeof buf, "topic %s, partition %s, offset %s", val(r, 0, "topic"),
             val(r, 0, "kafka_partition"), val(r, 0, "kafka_offset"));
    field("kafka", buf);
    field("key", val(r, 0, "key_text"));
    field("worker", val(r, 0, "worker_id"));
    field("attempts", val(r, 0, "attempts"));
    field("created", val(r, 0, "created_at"));
    snprintf(buf, sizeof buf, "%s%s%s", strcmp(val(r, 0, "published"), "t") == 0 ? "yes" : "no",
             val(r, 0, "published_at") ? ", " : "",
             val(r, 0, "published_at") ? val(r, 0, "published_at") : "");
    field("published", buf);
    snprintf(buf, sizeof buf, "%s%s%s", val(r, 0, "replays"),
             val(r, 0, "replayed_at") ? ", last " : "",
             val(r, 0, "replayed_at") ? val(r, 0, "replayed_at") : "");
    field("replays", buf);
    snprintf(buf, sizeof buf, "%s bytes%s", val(r, 0, "payload_bytes"),
             strcmp(val(r, 0, "payload_truncated"), "t") == 0 ? ", truncated" : "");
    field("size", buf);
    field("sha256", val(r, 0, "payload_sha256"));
    field("replayable", strcmp(val(r, 0, "original_kept"), "t") == 0
                            ? "yes (the original is kept; readable by sbx_writer only)"
                            : "no (the message was longer than SBX_DLQ_PAYLOAD_MAX: no original "
                              "kept)");
    if (val(r, 0, "payload")) {
        printf("payload (env values redacted):\n");
        sbx__cli_print_clean(val(r, 0, "payload"), "  | ");
    } else if (val(r, 0, "payload_excerpt")) {
        printf("payload excerpt (env values redacted, cut):\n");
        sbx__cli_print_clean(val(r, 0, "payload_excerpt"), "  | ");
    } else {
        printf("payload     - (not a JSON object, or too large to read: only its size is kept)\n");
    }
out:
    PQclear(r);
    PQfinish(conn);
    return rc;
}

/* ---- replay ---- */

static PGresult *exec(PGconn *conn, const char *sql, int n, const char *const *params, int binary)
{
    return PQexecParams(conn, sql, n, NULL, params, NULL, NULL, binary);
}

static void rollback(PGconn *conn) { PQclear(PQexec(conn, "ROLLBACK")); }

/* cli.h. The `sbx serve` console calls this too, with its own out and err. */
int sbx__dlq_replay(PGconn *conn, const struct sbx__cli_config *cfg, const char *id, bool force,
                   const char *by, FILE *out, FILE *err)
{
    static const char meta_sql[] =
        "SELECT d.topic, d.reason, d.job_id, d.project_id, d.payload_bytes, d.original_kept,"
        "       r.status AS run_status"
        "  FROM sbx.dead_letters d LEFT JOIN sbx.runs r ON r.job_id = d.job_id"
        " WHERE d.id = $1::bigint";
    static const char bytes_sql[] =
        "SELECT d.kafka_key, o.payload FROM sbx.dead_letters d"
        "  JOIN sbx.dead_letter_originals o ON o.id = d.id WHERE d.id = $1::bigint";
    const char *params[2] = { id, by };
    PGresult *meta = NULL, *bytes = NULL, *r = NULL;
    sbx_producer *p = NULL;
    char why_s[512], *key = NULL, *msg = NULL;
    const char *run, *job, *send_key;
    size_t msg_len = 0;
    int rc = SBX_EXIT_FAIL;

    PQclear(PQexec(conn, "BEGIN"));
    /* The dead letter's row, locked until COMMIT or ROLLBACK (migration
     * 0007), so a second replay waits here and then sees the first one's
     * outcome: its own statement, so the read below has a snapshot taken
     * after the wait (READ COMMITTED). */
    r = exec(conn, "SELECT sbx.lock_dead_letter($1::bigint)", 1, params, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error_to(err, "dlq replay (run `sbx migrate`?)", conn, r);
        goto out;
    }
    PQclear(r);
    r = NULL;
    meta = exec(conn, meta_sql, 1, params, 0);
    if (PQresultStatus(meta) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error_to(err, "dlq replay", conn, meta);
        goto out;
    }
    if (PQntuples(meta) == 0) {
        fprintf(err, "sbx dlq replay: no dead letter %s\n", id);
        goto out;
    }
    job = val(meta, 0, "job_id");
    run = val(meta, 0, "run_status");
    if (strcmp(val(meta, 0, "original_kept"), "t") != 0) {
        fprintf(err, "sbx dlq replay: %s refused: the message was %s bytes, more than the worker "
                        "keeps (SBX_DLQ_PAYLOAD_MAX), so only a redacted excerpt was kept and not "
                        "the original; send the job again from its producer\n",
                id, val(meta, 0, "payload_bytes"));
        goto out;
    }
    if (run && strcmp(run, "dead_lettered") != 0) {
        bool over = strcmp(run, "succeeded") == 0 || strcmp(run, "failed") == 0 ||
                    strcmp(run, "timed_out") == 0 || strcmp(run, "canceled") == 0;
        fprintf(err, over ? "sbx dlq replay: %s refused: job %s already ended %s, and a job id "
                               "runs once (workers would skip it); send it under a new job id\n"
                             : "sbx dlq replay: %s refused: job %s is %s now; a replay would only "
                               "join it\n",
                id, job, run);
        goto out;
    }
    bytes = exec(conn, bytes_sql, 1, params, 1);
    if (PQresultStatus(bytes) != PGRES_TUPLES_OK || PQntuples(bytes) != 1) {
        if (PQresultStatus(bytes) == PGRES_TUPLES_OK)
            fprintf(err, "sbx dlq replay: %s: its original is gone (pruned meanwhile?)\n", id);
        else if (strcmp(or_dash(PQresultErrorField(bytes, PG_DIAG_SQLSTATE)), "42501") == 0)
            fprintf(err, "sbx dlq replay: %s: reading the original needs the sbx_writer role "
                            "(it holds the job's env values)\n", id);
        else
            sbx__cli_pg_error_to(err, "dlq replay", conn, bytes);
        goto out;
    }
    msg_len = (size_t)PQgetlength(bytes, 0, 1);
    if (!(msg = malloc(msg_len + 1)))
        goto nomem;
    memcpy(msg, PQgetvalue(bytes, 0, 1), msg_len);
    msg[msg_len] = '\0';
    /* The same key; one that holds a NUL cannot go through the producer's
     * C-string key, so the project id (the key libsbx uses) stands in. */
    send_key = val(meta, 0, "project_id");
    if (!PQgetisnull(bytes, 0, 0) &&
        !memchr(PQgetvalue(bytes, 0, 0), '\0', (size_t)PQgetlength(bytes, 0, 0))) {
        size_t klen = (size_t)PQgetlength(bytes, 0, 0);
        if (!(key = malloc(klen + 1)))
            goto nomem;
        memcpy(key, PQgetvalue(bytes, 0, 0), klen);
        key[klen] = '\0';
        send_key = key;
    }
    if (!force) {
        sbx_reject why;
        if (sbx_job_parse(msg, msg_len, NULL, &why, why_s, sizeof why_s) != SBX_OK) {
            fprintf(err, "sbx dlq replay: %s refused: the message would be refused again (%s: "
                            "%s); fix it at its producer, or pass --force if the workers accept "
                            "what this sbx does not\n", id, sbx_reject_name(why), why_s);
            goto out;
        }
    }
    r = exec(conn, "SELECT sbx.replay_dead_letter($1::bigint, $2)", 2, params, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error_to(err, "dlq replay", conn, r);
        goto out;
    }
    if (!cfg->brokers || !*cfg->brokers) {
        fprintf(err, "sbx dlq replay: no Kafka brokers configured: set SBX_BROKERS "
                        "(e.g. 127.0.0.1:9092) or pass --brokers\n");
        rc = SBX_EXIT_USAGE;
        goto out;
    }
    {
        char timeout_setting[48];
        const char *extra[2] = { timeout_setting, NULL };
        struct sbx__cli_kafka *settings;
        int bad;
        snprintf(timeout_setting, sizeof timeout_setting, "message.timeout.ms=%d",
                 DELIVERY_TIMEOUT_MS);
        if (!(settings = sbx__cli_kafka_settings("dlq replay", extra))) {
            rc = SBX_EXIT_USAGE;
            goto out;
        }
        bad = sbx_producer_new(cfg->brokers, val(meta, 0, "topic"), settings->kv, &p, why_s,
                               sizeof why_s) != SBX_OK;
        sbx__cli_kafka_free(settings);
        if (bad || sbx_producer_send_raw(p, send_key, msg, msg_len, DELIVERY_TIMEOUT_MS + 5000,
                                         why_s, sizeof why_s)) {
            fprintf(err, "sbx dlq replay: %s: not sent: %s; nothing changed\n", id, why_s);
            goto out;
        }
    }
    PQclear(r);
    r = PQexec(conn, "COMMIT");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        /* Sent, but the run was not reset: workers skip the message. */
        sbx__cli_pg_error_to(err, "dlq replay: sent, but not recorded", conn, r);
        goto out;
    }
    fprintf(out, "%s replayed to %s%s%s%s\n", id, val(meta, 0, "topic"), job ? " (job " : "",
           job ? job : "", job ? (run ? ", its run queued again)" : ")") : "");
    rc = SBX_EXIT_OK;
    goto out;
nomem:
    fprintf(err, "sbx dlq replay: out of memory\n");
out:
    if (rc != SBX_EXIT_OK)
        rollback(conn);
    sbx_producer_free(p);
    PQclear(meta);
    PQclear(bytes);
    PQclear(r);
    free(key);
    free(msg);
    return rc;
}

static int cmd_replay(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = {
        { "force", no_argument, NULL, 'b' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    bool force = false;
    PGconn *conn;
    int rc = sbx__cli_options("dlq", argc, argv, cfg, opts, bool_flag, &force), one;

    if (rc != SBX_EXIT_OK)
        return rc < 0 ? SBX_EXIT_OK : rc;
    if (optind >= argc) {
        fprintf(stderr, "sbx dlq replay: give one or more dead letter ids (from `sbx dlq list`)\n");
        return SBX_EXIT_USAGE;
    }
    for (int i = optind; i < argc; i++) {
        if (!sbx__dlq_id_ok(argv[i])) {
            fprintf(stderr, "sbx dlq replay: \"%s\" is not a dead letter id\n", argv[i]);
            return SBX_EXIT_USAGE;
        }
    }
    if (!(conn = sbx__cli_db_connect(cfg, &rc)))
        return rc;
    for (int i = optind; i < argc; i++) {
        one = sbx__dlq_replay(conn, cfg, argv[i], force, "sbx dlq replay", stdout, stderr);
        if (one != SBX_EXIT_OK && rc == SBX_EXIT_OK)
            rc = one;
    }
    PQfinish(conn);
    if (fflush(stdout) != 0 && rc == SBX_EXIT_OK)
        rc = SBX_EXIT_FAIL;
    return rc;
}

int sbx__cmd_dlq(int argc, char **argv, struct sbx__cli_config *cfg)
{
    const char *sub = argc > 1 ? argv[1] : "";

    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0) {
        sbx__cli_usage("dlq", false);
        return SBX_EXIT_OK;
    }
    /* The subcommand's own argv: its name is argv[0] for getopt. */
    if (strcmp(sub, "list") == 0)
        return cmd_list(argc - 1, argv + 1, cfg);
    if (strcmp(sub, "show") == 0)
        return cmd_show(argc - 1, argv + 1, cfg);
    if (strcmp(sub, "replay") == 0)
        return cmd_replay(argc - 1, argv + 1, cfg);
    fprintf(stderr, "sbx dlq: %s%s%s; use list, show or replay (`sbx dlq --help`)\n",
            *sub ? "unknown subcommand \"" : "missing subcommand", sub, *sub ? "\"" : "");
    return SBX_EXIT_USAGE;
}
