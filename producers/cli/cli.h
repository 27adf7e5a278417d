/* cli.h — what the `sbx` subcommands share: configuration, exit codes, the
 * database connection. Internal to producers/cli/. */
#ifndef SBX_CLI_H
#define SBX_CLI_H

#include <getopt.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdio.h>

#include "sbx.h"

/* Exit codes of every subcommand. */
enum {
    SBX_EXIT_OK = 0,
    SBX_EXIT_FAIL = 1,     /* the operation failed, or (status) the job is unknown */
    SBX_EXIT_USAGE = 2,    /* bad arguments, missing configuration, refused message */
    SBX_EXIT_TIMEOUT = 3,  /* wait: not every job finished in time */
    SBX_EXIT_UNKNOWN = 4,  /* wait, logs: no run with that id */
};

#define SBX_CLI_STR_(x) #x
#define SBX_CLI_STR(x) SBX_CLI_STR_(x)

/* Whether a run status is terminal (succeeded, failed, timed_out, canceled,
 * dead_lettered). */
bool sbx__cli_terminal(const char *status);

/* From the environment, overridden by flags. NULL = not configured. */
struct sbx__cli_config {
    const char *brokers;       /* SBX_BROKERS, --brokers */
    const char *topic;         /* SBX_TOPIC, --topic; default "sbx.jobs" */
    const char *database_url;  /* SBX_DATABASE_URL, --database-url */
};

/* The librdkafka settings of a command that talks to Kafka: the SBX_KAFKA_*
 * TLS and SASL ones, SBX_KAFKA_CONF's entries (k=v,k=v, as sbx-worker reads
 * it), then the command's own (NULL-terminated; its timeout, -X ones), later
 * ones winning. NULL after printing one line "sbx <what>: <problem>" to
 * stderr. sbx__cli_kafka_free() wipes the password copy it holds. */
struct sbx__cli_kafka {
    char security[SBX_KAFKA_SECURITY_BUF];
    char *conf;             /* SBX_KAFKA_CONF, split in place */
    const char *kv[];       /* "key=value", NULL-terminated */
};
struct sbx__cli_kafka *sbx__cli_kafka_settings(const char *what, const char *const *own);
void sbx__cli_kafka_free(struct sbx__cli_kafka *k);

/* Options every subcommand accepts; the short codes are out of the char range
 * so they never collide with a subcommand's own. */
enum { OPT_BROKERS = 1000, OPT_TOPIC, OPT_DATABASE_URL, OPT_HELP, OPT_VERSION };
#define SBX_CLI_COMMON_OPTIONS                                          \
    { "brokers", required_argument, NULL, OPT_BROKERS },                \
    { "topic", required_argument, NULL, OPT_TOPIC },                    \
    { "database-url", required_argument, NULL, OPT_DATABASE_URL },      \
    { "help", no_argument, NULL, OPT_HELP }

/* Applies a common option; returns false if c is not one. */
bool sbx__cli_common_option(struct sbx__cli_config *cfg, int c, const char *arg);
/* A subcommand's option loop: --help, the common options, then flag() for
 * the command's own (0: taken; -1: not its own, the usage follows; an exit
 * code: a bad value it already reported). Returns -1 after --help, else an
 * exit code (0 = go on, operands from argv[optind]). */
int sbx__cli_options(const char *cmd, int argc, char **argv, struct sbx__cli_config *cfg,
                     const struct option *opts, int (*flag)(int c, const char *arg, void *ctx),
                     void *ctx);
/* The same loop with short options too (getopt's "f" or "n:"); -h is always
 * --help, in every subcommand. */
int sbx__cli_options_short(const char *cmd, int argc, char **argv, struct sbx__cli_config *cfg,
                           const char *shortopts, const struct option *opts,
                           int (*flag)(int c, const char *arg, void *ctx), void *ctx);

/* Prints the usage of cmd ("" for the program) to stdout or stderr. */
void sbx__cli_usage(const char *cmd, bool to_stderr);

/* Connects to cfg->database_url; on failure prints one line and returns NULL
 * with *exit_code set (2: not configured, 1: connection failed). */
PGconn *sbx__cli_db_connect(const struct sbx__cli_config *cfg, int *exit_code);

/* Prints a libpq error as one line: "sbx: <what>: <message>" (to stderr,
 * or to f). */
void sbx__cli_pg_error(const char *what, PGconn *conn, const PGresult *res);
void sbx__cli_pg_error_to(FILE *f, const char *what, PGconn *conn, const PGresult *res);
/* Waits up to timeout_ms for conn to have input (a NOTIFY) and reads it;
 * -1 after printing the error when the connection broke. */
int sbx__cli_pg_await(PGconn *conn, int timeout_ms, const char *what);

/* Prints text someone else wrote (a build's output, a producer's message)
 * to the terminal, each line after indent: control characters (terminal
 * escapes included) are shown as '?'. */
void sbx__cli_print_clean(const char *s, const char *indent);

/* "30d", "12h", "15m", "90s" or plain seconds, at most max_s; 0 or -1. */
int sbx__cli_parse_duration(const char *s, long long max_s, long long *out);

int sbx__cmd_enqueue(int argc, char **argv, struct sbx__cli_config *cfg);
int sbx__cmd_status(int argc, char **argv, struct sbx__cli_config *cfg);
int sbx__cmd_wait(int argc, char **argv, struct sbx__cli_config *cfg);
int sbx__cmd_cancel(int argc, char **argv, struct sbx__cli_config *cfg);
int sbx__cmd_list(int argc, char **argv, struct sbx__cli_config *cfg);
int sbx__cmd_logs(int argc, char **argv, struct sbx__cli_config *cfg);
int sbx__cmd_migrate(int argc, char **argv, struct sbx__cli_config *cfg);
int sbx__cmd_dlq(int argc, char **argv, struct sbx__cli_config *cfg);
int sbx__cmd_topics(int argc, char **argv, struct sbx__cli_config *cfg);
int sbx__cmd_serve(int argc, char **argv, struct sbx__cli_config *cfg);
int sbx__cmd_session(int argc, char **argv, struct sbx__cli_config *cfg);

/* A dead letter id as sbx.dead_letters numbers them: decimal digits, at
 * most 18 (a bigint). */
bool sbx__dlq_id_ok(const char *s);

/* The two actions `sbx serve` shares with the CLI, so the console does what
 * `sbx dlq replay` and `sbx cancel` do and says what they say: what people
 * read goes to out (the result) or err (why not); an exit code as the
 * command's. by: who replayed, recorded in sbx.dead_letters. Each may be
 * called from any thread with its own conn. */
int sbx__dlq_replay(PGconn *conn, const struct sbx__cli_config *cfg, const char *id, bool force,
                    const char *by, FILE *out, FILE *err);
int sbx__run_cancel(PGconn *conn, const char *id, FILE *out, FILE *err);

#endif
