/* console.h — what the files of `sbx serve` share (serve.c: the HTTP server,
 * routing and the operator token; console_data.c: the JSON the API answers
 * from PostgreSQL, Redis and Kafka; console_feed.c: the live feed). Internal
 * to producers/cli/.
 *
 * Every request runs on its own thread (libmicrohttpd's thread per
 * connection), so a handler may block: it opens its own PostgreSQL and Redis
 * connection and closes it before it returns. The one object threads share
 * is struct sbx__console, read-only after start-up except for the counters
 * and the Kafka handle (which librdkafka makes thread-safe).
 */
#ifndef SBX_CONSOLE_H
#define SBX_CONSOLE_H

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "cli.h"

/* At most this many live feeds at once: each holds a PostgreSQL connection
 * for as long as a page is open, and max_connections is the server's. */
#define SBX_CONSOLE_FEEDS_MAX 32

struct sbx__console {
    struct sbx__cli_config *cfg;
    const char *reader_url;       /* SBX_DATABASE_URL: every read */
    const char *action_url;       /* SBX_CONSOLE_ACTION_DATABASE_URL, else reader_url */
    const char *redis_url;        /* SBX_REDIS_URL */
    const char *group;            /* SBX_GROUP: whose committed offsets are the lag */
    char token_sha256[65];        /* of SBX_CONSOLE_TOKEN; "" = read-only */
    rd_kafka_t *rk;               /* NULL without SBX_BROKERS: /api/lag says so */
    atomic_int feeds;
    volatile sig_atomic_t stopping;
};

/* An answer: a status and a body the handler allocated (malloc; the server
 * frees it), JSON unless type says otherwise. */
struct sbx__answer {
    unsigned status;
    char *body;
    size_t len;
    const char *type;
};

/* Sets a {"error": msg} answer. */
void sbx__answer_error(struct sbx__answer *a, unsigned status, const char *msg);

/* The request's query arguments a handler reads (NULL: not given). */
struct sbx__query {
    const char *project, *status, *since, *attempt, *after, *limit, *job;
};

/* console_data.c: GET handlers. id is checked by the caller (sbx_id_valid
 * for a job, digits for a dead letter). */
void sbx__console_runs(struct sbx__console *con, const struct sbx__query *q, struct sbx__answer *a);
void sbx__console_run(struct sbx__console *con, const char *id, struct sbx__answer *a);
void sbx__console_logs(struct sbx__console *con, const char *id, const struct sbx__query *q,
                       struct sbx__answer *a);
void sbx__console_dead_letters(struct sbx__console *con, const struct sbx__query *q,
                               struct sbx__answer *a);
void sbx__console_slots(struct sbx__console *con, struct sbx__answer *a);
void sbx__console_lag(struct sbx__console *con, struct sbx__answer *a);

/* A PostgreSQL connection to url for one request; NULL with *a set. */
PGconn *sbx__console_pg(const char *url, struct sbx__answer *a);

/* RFC 3339 UTC text of a timestamptz column, as run.v1 and log.v1 write it
 * (their objects come from sbx.run_v1() and sbx.log_v1(),
 * migrations/0008_json_shapes.sql): for the dead letters' times. */
#define SBX_CONSOLE_TS(c) "to_char(" c " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* console_feed.c: the Server-Sent Events stream of /api/feed. Returns a
 * libmicrohttpd response (NULL with *a set when it cannot start). */
struct MHD_Response;
struct MHD_Response *sbx__console_feed(struct sbx__console *con, const struct sbx__query *q,
                                       const char *last_event_id, struct sbx__answer *a);

/* The page's files, embedded at build time (producers/producers.mk runs
 * common/lua/embed.awk over producers/console/). */
#include "migrations.h"
extern const struct sbx__embedded sbx__console_assets[];
extern const unsigned long sbx__console_assets_count;

#endif
