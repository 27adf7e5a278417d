/* sbx.c — the `sbx` command: submit jobs and look at their runs.
 *
 * One program with subcommands, each in its own file: enqueue.c (Kafka),
 * runs.c (status, wait, cancel: the sbx.runs tables), sessions.c (the
 * sbx.sessions table), dlq.c (list, show and
 * replay dead letters: sbx.dead_letters), migrate.c (the schema),
 * topics.c (the Kafka topics) and serve.c (the web console). This file
 * holds what they share: configuration from the environment with flags overriding, usage text, and the database
 * connection. Messages for people go to stderr; what scripts read (job ids,
 * statuses, JSON) goes to stdout.
 */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbx.h"

static const struct command {
    const char *name;
    int (*run)(int argc, char **argv, struct sbx__cli_config *cfg);
    const char *usage;
} commands[] = {
    { "enqueue", sbx__cmd_enqueue,
      "usage: sbx enqueue [options] (-- ARGV... | --script TEXT | --json FILE|-)\n"
      "Publishes a job to Kafka (keyed by its project_id), waits for the brokers to\n"
      "acknowledge it, and prints its job id. The message is checked against\n"
      "schemas/job.v1.schema.json first: a refused message is never sent (exit 2).\n"
      "With a database URL the job is first recorded in sbx.runs as \"submitted\"\n"
      "(env values redacted), so status and cancel work at once; a publish that\n"
      "fails deletes the row again, and a job id already used by another payload\n"
      "is refused (exit 1, nothing sent).\n"
      "  --project P            project id (required unless --json)\n"
      "  --job-id J             job id (default: a new random id)\n"
      "  --timeout S            timeout_s of the job\n"
      "  --env K=V              an environment variable (repeatable); --env K takes\n"
      "                         the value of K from this environment\n"
      "  --file PATH=CONTENT    a file written into the workspace (repeatable)\n"
      "  --network              give the sandbox network access\n"
      "  --provider NAME        any, local, vmpool, docker or fly\n"
      "  --session ID           run in the project's session ID: the same sandbox and\n"
      "                         workspace as the session's earlier jobs (`sbx session`)\n"
      "  --pause-after S        with --session: idle seconds before its sandbox is\n"
      "                         paused (default 300)\n"
      "  --idle-timeout S       with --session: idle seconds before it ends (default 900)\n"
      "  --max-lifetime S       with --session: seconds from its first job to its end\n"
      "                         (default 86400); each at most 604800\n"
      "  --preview-port P       with --session: its dev server's port in the sandbox,\n"
      "                         served at the session's preview URL (sbx session show)\n"
      "  --image I              image reference for the provider\n"
      "  -- ARGV...             the command to run (no shell)\n"
      "  --script TEXT          shell text to run with /bin/sh -c\n"
      "  --json FILE|-          send the message(s) in FILE or stdin as they are: one\n"
      "                         JSON document, or one message per line (all are\n"
      "                         checked before any is sent; a message without job_id\n"
      "                         gets a new one); prints one job id per line\n"
      "  --raw                  with --json: send the bytes unchecked as one message,\n"
      "                         keyed by --project if given (for dead-letter tests);\n"
      "                         never recorded in the database\n"
      "  --no-database          publish without recording the job as submitted\n"
      "  --delivery-timeout S   how long to wait for the brokers (default 30)\n"
      "  -X, --kafka KEY=VALUE  a librdkafka setting (repeatable)\n" },
    { "status", sbx__cmd_status,
      "usage: sbx status JOB_ID [--json] [--history]\n"
      "Prints a run from sbx.runs: status, attempt, exit code, error, provider and\n"
      "slot, worker, times, preview URL and the end of its log. Statuses: submitted\n"
      "(recorded by `sbx enqueue`, not consumed yet), queued, waiting_capacity,\n"
      "provisioning, running, then succeeded, failed, timed_out, canceled or\n"
      "dead_lettered.\n"
      "  --json      print the run as one JSON object, schemas/run.v1.schema.json\n"
      "  --history   also print its transitions (sbx.run_events), oldest first\n"
      "Exit status: 0 found, 1 unknown job.\n" },
    { "wait", sbx__cmd_wait,
      "usage: sbx wait JOB_ID... [--timeout S] [--json]\n"
      "Waits until every job is finished (succeeded, failed, timed_out, canceled or\n"
      "dead_lettered), then prints \"JOB_ID STATUS\" for each. An id with no run is\n"
      "an error at once (exit 4): `sbx enqueue` with a database URL records its job\n"
      "before it returns.\n"
      "  --timeout S   give up after S seconds (default 600)\n"
      "  --json        print each run as it finishes, one JSON object per line\n"
      "                (schemas/run.v1.schema.json), instead of the status lines\n"
      "Exit status: 0 all succeeded, 1 some failed, timed out, were canceled or\n"
      "dead-lettered, 2 usage, 3 not all finished in time (statuses so far are\n"
      "printed), 4 unknown job.\n" },
    { "list", sbx__cmd_list,
      "usage: sbx list [--project P] [--status S] [--since T] [--limit N] [--json]\n"
      "Lists runs from sbx.runs, newest first: job, project, status, attempt, exit\n"
      "code, age. --status takes a status (submitted, queued, waiting_capacity,\n"
      "provisioning, running, succeeded, failed, timed_out, canceled, dead_lettered),\n"
      "or active / finished for the two groups; --since a duration (90s, 15m, 12h,\n"
      "30d: created that recently) or an RFC 3339 time; --limit at most 10000\n"
      "(default 50). --json prints one JSON array of runs as\n"
      "schemas/run.v1.schema.json.\n"
      "Exit status: 0 done (an empty list too), 1 failed, 2 usage.\n" },
    { "logs", sbx__cmd_logs,
      "usage: sbx logs JOB_ID [-f|--follow] [--json] [--attempt N]\n"
      "Prints a build's output from sbx.run_logs: the build's stdout to stdout, its\n"
      "stderr and sbx's own notes (a truncated log's marker) to stderr, attempt by\n"
      "attempt (a line \"--- attempt N ---\" on stderr between them). -f follows the\n"
      "run live (LISTEN sbx_logs) until it has finished and its log is all printed.\n"
      "--attempt N prints that attempt only. --json prints one JSON object per\n"
      "chunk, as schemas/log.v1.schema.json, everything on stdout.\n"
      "Exit status: 0 done, 1 failed, 2 usage, 4 unknown job.\n" },
    { "cancel", sbx__cmd_cancel,
      "usage: sbx cancel JOB_ID\n"
      "Marks the run cancel_requested and notifies channel sbx_cancel, which the\n"
      "worker running it listens to. A finished run is left alone. A job not yet\n"
      "consumed (submitted) ends canceled at once; an id with no run at all (sent\n"
      "without a database URL, or not sent yet) is recorded as canceled, so the job\n"
      "never runs when a worker consumes it.\n"
      "Exit status: 0 done (or already finished).\n" },
    { "session", sbx__cmd_session,
      "usage: sbx session list [--project P] [--state S] [--limit N] [--json]\n"
      "       sbx session show PROJECT SESSION [--json]\n"
      "       sbx session stop PROJECT SESSION\n"
      "       sbx session watch PROJECT SESSION [--timeout S] [--json]\n"
      "Sessions from sbx.sessions: many jobs of a project (`sbx enqueue --session`)\n"
      "run one at a time in one sandbox. States: busy (a job holds it), idle,\n"
      "paused (after its pause_after_s idle), ended (after idle_timeout_s idle,\n"
      "max_lifetime_s in all, or `sbx session stop`; its sandbox destroyed). A job\n"
      "naming an ended session begins it again (generation + 1).\n"
      "  list      most recently used first: project, session, state (* = stop\n"
      "            requested), generation, jobs, provider, idle seconds\n"
      "    --state S   busy, idle, paused, ended, or live (not ended)\n"
      "    --limit N   at most N, 1..10000 (default 50)\n"
      "    --json      one JSON array of schemas/session.v1.schema.json objects\n"
      "  show      the session and its history (sbx.session_events), oldest first;\n"
      "            --json prints it as one session.v1 object with \"events\"\n"
      "  stop      asks for its end (sbx.stop_session): a worker ends it and destroys\n"
      "            its sandbox once no job holds it. Needs sbx_submitter\n"
      "  watch     prints the session now and each change of its state (LISTEN\n"
      "            sbx_sessions) until it has ended; --json: one session.v1 a line;\n"
      "            --timeout S gives up after S seconds (default 30 days)\n"
      "Exit status: 0 done (an empty list, a session already ended too), 1 failed\n"
      "or no such session, 2 usage, 3 watch: not ended in time.\n" },
    { "dlq", sbx__cmd_dlq,
      "usage: sbx dlq list [--reason R] [--since DUR] [--limit N]\n"
      "       sbx dlq show ID [--json]\n"
      "       sbx dlq replay ID... [--force]\n"
      "Dead letters as recorded in sbx.dead_letters, one per message a worker will\n"
      "never run (refused at intake, or retries exhausted), newest first.\n"
      "  list      a table: id, time, reason, job id, partition@offset, size, replays\n"
      "    --reason R    only this reason (invalid_json, schema_violation, not_utf8,\n"
      "                  too_large, retries_exhausted, ...)\n"
      "    --since DUR   only those recorded in the last DUR (90s, 15m, 12h, 7d)\n"
      "    --limit N     at most N rows (default 50)\n"
      "  show      every field, and the payload with env values redacted (or its\n"
      "            excerpt); --json prints the row as one JSON object\n"
      "  replay    re-publishes each dead letter's original message, same key, to\n"
      "            the topic it came from, after you fixed its cause; a run that\n"
      "            ended dead_lettered is queued again (attempts reset). Refused,\n"
      "            with the reason: a message over SBX_DLQ_PAYLOAD_MAX (no original\n"
      "            kept), a job id whose run ended otherwise or is under way (a job\n"
      "            id runs once: use a new one), and a message this sbx's parser\n"
      "            refuses (--force sends it anyway). Needs the sbx_writer role (the\n"
      "            original holds env values) and SBX_BROKERS.\n"
      "Exit status: 0 done, 1 not found, refused or failed, 2 usage.\n" },
    { "migrate", sbx__cmd_migrate,
      "usage: sbx migrate [--dir DIR] [--list]\n"
      "Applies the migrations built into sbx (migrations/NNNN_*.sql at build time)\n"
      "in order, each in its own transaction, and records them in\n"
      "public.sbx_schema_migrations with their sha256. Works from any directory.\n"
      "Safe to run twice or concurrently (it holds an advisory lock). A migration\n"
      "whose text changed after it was applied is an error.\n"
      "  --dir DIR   read DIR/NNNN_*.sql instead (default: $SBX_MIGRATIONS_DIR if\n"
      "              set, else the built-in ones)\n"
      "  --list      print the migrations (name, size) in order and exit; no database\n" },
    { "topics", sbx__cmd_topics,
      "usage: sbx topics create [--partitions N] [--replication R] [--dlq-partitions N]\n"
      "                         [--retention DUR] [--dlq-retention DUR] [--timeout S]\n"
      "                         [--dlq-topic T] [-X KEY=VALUE]...\n"
      "       sbx topics describe [--dlq-topic T] [-X KEY=VALUE]...\n"
      "create makes the job topic and the dead-letter topic with Kafka's admin API\n"
      "and waits until every partition has a leader. A topic that exists with the\n"
      "same settings is fine (exit 0, says so); one with other settings is left as\n"
      "it is and each difference is printed (exit 1). describe prints both topics.\n"
      "  --partitions N     job topic partitions: at least the number of workers, a\n"
      "                     few per worker to rebalance well (default 12)\n"
      "  --replication R    replicas of each partition (default: 3, or the number of\n"
      "                     brokers if fewer); min.insync.replicas is 2 when R >= 3\n"
      "  --dlq-partitions N dead-letter topic partitions (default 1)\n"
      "  --retention DUR    how long the job topic keeps messages (default 3d); with\n"
      "                     segment.ms (as long, at most 1d) it must stay below\n"
      "                     SBX_RETENTION and SBX_DLQ_RETENTION (worker defaults 7d,\n"
      "                     30d), or a replay would run a forgotten job again\n"
      "  --dlq-retention DUR  how long the dead-letter topic keeps envelopes\n"
      "                     (default: SBX_DLQ_RETENTION, else 30d; 0: forever)\n"
      "  --dlq-topic T      SBX_DLQ_TOPIC, default sbx.jobs.dlq\n"
      "  --timeout S        give up after S seconds (default 30)\n"
      "  -X, --kafka KEY=VALUE  a librdkafka setting (repeatable: TLS, SASL)\n"
      "Exit status: 0 created or already right, 1 differs or failed, 2 usage.\n" },
    { "serve", sbx__cmd_serve,
      "usage: sbx serve [--listen HOST:PORT]\n"
      "The web console: runs with filters and live status, a run's history and live\n"
      "log, slots and agents per pool (Redis), consumer lag per partition (Kafka),\n"
      "dead letters; JSON under /api/ (README: \"The web console\"). Read-only\n"
      "unless SBX_CONSOLE_TOKEN is set: then replay and cancel work for whoever\n"
      "types that token into the page. Runs until SIGINT or SIGTERM.\n"
      "  --listen HOST:PORT   SBX_CONSOLE_LISTEN (default 127.0.0.1:8070; port 0:\n"
      "                       any free one, printed at start)\n"
      "  SBX_DATABASE_URL     reads (an sbx_reader login is enough)\n"
      "  SBX_CONSOLE_ACTION_DATABASE_URL  the actions' login (replay needs\n"
      "                       sbx_writer, cancel sbx_submitter); default SBX_DATABASE_URL\n"
      "  SBX_CONSOLE_TOKEN    the operator token (at least 16 characters)\n"
      "  SBX_REDIS_URL        slots and agents; SBX_BROKERS, SBX_GROUP: lag, replay\n" },
};

static const char program_usage[] =
    "usage: sbx [--brokers B] [--topic T] [--database-url URL] COMMAND [ARGS]\n"
    "       sbx --version\n"
    "Commands:\n"
    "  enqueue   publish a job to Kafka and print its id\n"
    "  status    show a run\n"
    "  wait      wait until runs finish\n"
    "  list      list runs\n"
    "  logs      print or follow a build's output\n"
    "  cancel    ask the worker to cancel a run\n"
    "  session   list, show, stop and watch sessions\n"
    "  dlq       list, show and replay dead letters\n"
    "  migrate   create or upgrade the database schema\n"
    "  topics    create or describe the job and dead-letter topics\n"
    "  serve     the web console\n"
    "Run `sbx COMMAND --help` for a command's options.\n";

static const char common_usage[] =
    "Configuration (flags override the environment):\n"
    "  --brokers B          SBX_BROKERS       Kafka bootstrap servers, host:port,...\n"
    "  --topic T            SBX_TOPIC         job topic (default sbx.jobs)\n"
    "  --database-url URL   SBX_DATABASE_URL  PostgreSQL connection string (TLS:\n"
    "                       ?sslmode=verify-full&sslrootcert=CA.pem)\n"
    "Kafka TLS and SASL (environment only; as sbx-worker reads them):\n"
    "  SBX_KAFKA_SECURITY_PROTOCOL  plaintext, ssl, sasl_ssl or sasl_plaintext\n"
    "  SBX_KAFKA_SSL_CA, SBX_KAFKA_SSL_CERT, SBX_KAFKA_SSL_KEY  PEM files\n"
    "  SBX_KAFKA_SASL_MECHANISM     PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512\n"
    "  SBX_KAFKA_SASL_USERNAME, SBX_KAFKA_SASL_PASSWORD_FILE (or SBX_KAFKA_SASL_PASSWORD)\n"
    "  SBX_KAFKA_CONF               more librdkafka settings, k=v[,k=v]\n";

void sbx__cli_usage(const char *cmd, bool to_stderr)
{
    FILE *f = to_stderr ? stderr : stdout;
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        if (strcmp(cmd, commands[i].name) == 0) {
            fprintf(f, "%s%s", commands[i].usage, common_usage);
            return;
        }
    }
    fprintf(f, "%s%s", program_usage, common_usage);
}

bool sbx__cli_common_option(struct sbx__cli_config *cfg, int c, const char *arg)
{
    switch (c) {
    case OPT_BROKERS:      cfg->brokers = arg; return true;
    case OPT_TOPIC:        cfg->topic = arg; return true;
    case OPT_DATABASE_URL: cfg->database_url = arg; return true;
    }
    return false;
}

int sbx__cli_options(const char *cmd, int argc, char **argv, struct sbx__cli_config *cfg,
                     const struct option *opts, int (*flag)(int c, const char *arg, void *ctx),
                     void *ctx)
{
    return sbx__cli_options_short(cmd, argc, argv, cfg, "", opts, flag, ctx);
}

bool sbx__cli_terminal(const char *status)
{
    static const char *const terminal[] = {"succeeded", "failed", "timed_out", "canceled",
                                           "dead_lettered"};
    for (size_t i = 0; status && i < sizeof terminal / sizeof *terminal; i++)
        if (strcmp(status, terminal[i]) == 0)
            return true;
    return false;
}

int sbx__cli_options_short(const char *cmd, int argc, char **argv, struct sbx__cli_config *cfg,
                           const char *shortopts, const struct option *opts,
                           int (*flag)(int c, const char *arg, void *ctx), void *ctx)
{
    /* "h" and a subcommand's few short options: bounded by the alphabet. */
    char shorts[64];
    int c, rc;
    snprintf(shorts, sizeof shorts, "h%s", shortopts);
    while ((c = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
        if (c == OPT_HELP || c == 'h') {
            sbx__cli_usage(cmd, false);
            return -1;
        }
        if (sbx__cli_common_option(cfg, c, optarg))
            continue;
        rc = flag ? flag(c, optarg, ctx) : -1;
        if (rc == 0)
            continue;
        if (rc < 0)
            sbx__cli_usage(cmd, true);
        return SBX_EXIT_USAGE;
    }
    return SBX_EXIT_OK;
}

int sbx__cli_parse_duration(const char *s, long long max_s, long long *out)
{
    char *end;
    long long n, mult = 1;
    errno = 0;
    n = strtoll(s, &end, 10);
    if (errno || end == s || n < 0 || !isdigit((unsigned char)*s))
        return -1;
    if (*end) {
        if (end[1])
            return -1;
        switch (*end) {
        case 's': mult = 1; break;
        case 'm': mult = 60; break;
        case 'h': mult = 3600; break;
        case 'd': mult = 86400; break;
        default: return -1;
        }
    }
    if (n > max_s / mult)
        return -1;
    *out = n * mult;
    return 0;
}

void sbx__cli_pg_error(const char *what, PGconn *conn, const PGresult *res)
{
    sbx__cli_pg_error_to(stderr, what, conn, res);
}

int sbx__cli_pg_await(PGconn *conn, int timeout_ms, const char *what)
{
    struct pollfd pfd = { .fd = PQsocket(conn), .events = POLLIN };

    if (poll(&pfd, 1, timeout_ms) > 0 && !PQconsumeInput(conn)) {
        sbx__cli_pg_error(what, conn, NULL);
        return -1;
    }
    return 0;
}

void sbx__cli_pg_error_to(FILE *f, const char *what, PGconn *conn, const PGresult *res)
{
    const char *msg = res ? PQresultErrorMessage(res) : "";
    char line[1024];
    if (!msg || !*msg)
        msg = conn ? PQerrorMessage(conn) : "unknown error";
    snprintf(line, sizeof line, "%s", msg);
    for (char *p = line; *p; p++)
        if (*p == '\n')
            *p = p[1] ? ' ' : '\0';
    fprintf(f, "sbx: %s: %s\n", what, line);
}

void sbx__cli_print_clean(const char *s, const char *indent)
{
    fputs(indent, stdout);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n') {
            if (s[1])
                printf("\n%s", indent);
            continue;
        }
        putchar((c < 0x20 && c != '\t') || c == 0x7f ? '?' : c);
    }
    putchar('\n');
}

struct sbx__cli_kafka *sbx__cli_kafka_settings(const char *what, const char *const *own)
{
    const char *env = getenv("SBX_KAFKA_CONF");
    size_t nown = 0, nconf = 0, n = 0;
    struct sbx__cli_kafka *k;
    sbx_kafka_security sec;
    char err[512];

    while (own && own[nown])
        nown++;
    for (const char *c = env ? env : ""; *c; c++)
        nconf += *c == ',';
    k = calloc(1, sizeof *k + (SBX_KAFKA_SECURITY_MAX + nconf + 1 + nown + 1) * sizeof k->kv[0]);
    if (!k || !(k->conf = strdup(env ? env : ""))) {
        fprintf(stderr, "sbx %s: out of memory\n", what);
        free(k);
        return NULL;
    }
    sbx_kafka_security_from_env(&sec);
    if (sbx_kafka_security_settings(&sec, k->security, k->kv, err, sizeof err) != SBX_OK) {
        fprintf(stderr, "sbx %s: %s\n", what, err);
        sbx__cli_kafka_free(k);
        return NULL;
    }
    while (k->kv[n])
        n++;
    for (char *save = NULL, *e = strtok_r(k->conf, ",", &save); e; e = strtok_r(NULL, ",", &save))
        k->kv[n++] = e;
    for (size_t i = 0; i < nown; i++)
        k->kv[n++] = own[i];
    k->kv[n] = NULL;
    return k;
}

void sbx__cli_kafka_free(struct sbx__cli_kafka *k)
{
    if (!k)
        return;
    explicit_bzero(k->security, sizeof k->security);
    if (k->conf)
        explicit_bzero(k->conf, strlen(k->conf));
    free(k->conf);
    free(k);
}

PGconn *sbx__cli_db_connect(const struct sbx__cli_config *cfg, int *exit_code)
{
    if (!cfg->database_url || !*cfg->database_url) {
        fprintf(stderr, "sbx: no database configured: set SBX_DATABASE_URL (e.g. "
                        "postgresql://sbx@127.0.0.1:5432/sbx) or pass --database-url\n");
        *exit_code = SBX_EXIT_USAGE;
        return NULL;
    }
    /* dbname last: settings in the URL win over these defaults. */
    const char *const keys[] = { "application_name", "connect_timeout", "dbname", NULL };
    const char *const vals[] = { "sbx", "10", cfg->database_url, NULL };
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        sbx__cli_pg_error("database", conn, NULL);
        PQfinish(conn);
        *exit_code = SBX_EXIT_FAIL;
        return NULL;
    }
    /* IF NOT EXISTS and friends talk at NOTICE level; keep stderr for problems. */
    PQclear(PQexec(conn, "SET client_min_messages = warning"));
    return conn;
}

int main(int argc, char **argv)
{
    struct sbx__cli_config cfg = {
        .brokers = getenv("SBX_BROKERS"),
        .topic = getenv("SBX_TOPIC"),
        .database_url = getenv("SBX_DATABASE_URL"),
    };
    static const struct option opts[] = {
        SBX_CLI_COMMON_OPTIONS,
        { "version", no_argument, NULL, OPT_VERSION },
        { 0, 0, 0, 0 },
    };
    int c;

    if (!cfg.topic || !*cfg.topic)
        cfg.topic = "sbx.jobs";
    /* Options before the command; "+" stops at the command name. */
    opterr = 1;
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        if (c == OPT_HELP || c == 'h') {
            sbx__cli_usage("", false);
            return SBX_EXIT_OK;
        }
        if (c == OPT_VERSION) {
            char line[256];
            sbx_version_line("sbx", line, sizeof(line));
            printf("%s\n", line);
            return SBX_EXIT_OK;
        }
        if (!sbx__cli_common_option(&cfg, c, optarg)) {
            sbx__cli_usage("", true);
            return SBX_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        sbx__cli_usage("", true);
        return SBX_EXIT_USAGE;
    }
    const char *name = argv[optind];
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        if (strcmp(name, commands[i].name) == 0) {
            int sub_argc = argc - optind;
            char **sub_argv = argv + optind;
            optind = 0; /* glibc: 0 restarts getopt for the subcommand's argv */
            return commands[i].run(sub_argc, sub_argv, &cfg);
        }
    }
    if (strcmp(name, "help") == 0) {
        sbx__cli_usage(optind + 1 < argc ? argv[optind + 1] : "", false);
        return SBX_EXIT_OK;
    }
    fprintf(stderr, "sbx: unknown command \"%s\"; run `sbx --help`\n", name);
    return SBX_EXIT_USAGE;
}
