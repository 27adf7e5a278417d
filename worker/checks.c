/* checks.c — `sbx-worker --check-config`, the half that needs the network:
 * try each service the way the worker will use it and say, one line per
 * check, "ok" or the problem and its fix.
 *
 *   redis     connect, AUTH and SELECT as SBX_REDIS_URL says, PING
 *   postgres  connect, then the sbx schema: the functions the worker calls
 *             exist (a migration not applied shows as one missing)
 *   kafka     a broker answers metadata (over TLS and SASL as SBX_KAFKA_*
 *             say; a refused login or certificate ends the wait at once);
 *             the job topic and the dead-letter topic exist (the worker
 *             creates neither)
 *   docker    (SBX_PROVIDER=docker) each host answers GET /_ping, reached
 *             as runs reach it: its TLS files, its ssh tunnel
 *
 * Blocking clients, each bounded (CHECK_TIMEOUT_S, KAFKA_WAIT_MS,
 * DOCKER_WAIT_MS; the docker probe runs a loop of its own): this runs
 * before any loop, and an operator waits at a prompt for it. Nothing
 * printed holds a password: URLs go through sbx_log_redact(), Redis error
 * replies that quote the password are not shown (as in common/redis.c), and
 * libpq's and librdkafka's messages never carry one.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "log.h"
#include "redis.h"
#include "worker.h"

/* Each connection attempt (Redis, PostgreSQL) and each Redis command. */
#define CHECK_TIMEOUT_S 3
/* Kafka: the whole metadata wait, asked in METADATA_STEP_MS slices so that
 * "every broker refused" ends it early. */
#define KAFKA_WAIT_MS 5000
#define METADATA_STEP_MS 500
/* Docker hosts: all of them at once, ssh tunnels included (a login takes
 * well under a second; ssh's own ConnectTimeout is 10 s). */
#define DOCKER_WAIT_MS 10000
/* One problem line: a service's error is a sentence; the URL is capped by
 * the settings (1 KiB). */
#define LINE_MAX 2048

/* The functions of schema sbx the worker calls (job.c, prune.c, session.c,
 * main.c); a migration that adds one the worker starts to call adds it here. */
static const char *const SCHEMA_FUNCTIONS =
    "{record_run,wait_run,cancel_unclaimed,reject_run,supersede_older,claim_run,transition,"
    "requeue_run,unclaim_run,dead_letter_run,prune_runs,record_dead_letter,dead_letter_published,"
    "prune_dead_letters,record_runs,wait_runs,claim_runs,transitions,sessions_due,park_session,"
    "set_price}";

static int report(FILE *out, const char *what, int ok, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int report(FILE *out, const char *what, int ok, const char *fmt, ...)
{
    char line[LINE_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* Services answer in several lines (libpq); the check is one. */
    for (char *c = line; *c; c++)
        if (*c == '\n' || *c == '\r' || *c == '\t')
            *c = ' ';
    fprintf(out, "%s: %s%s\n", what, ok ? "ok, " : "PROBLEM: ", line);
    return ok ? 0 : 1;
}

/* ---- Redis ---- */

/* A reply that is an error, as text safe to print. */
static const char *reply_error(const redisReply *r, const sbx_redis_url *u)
{
    if (!r)
        return "no answer";
    if (r->type != REDIS_REPLY_ERROR)
        return NULL;
    if (u->pass[0] && strstr(r->str, u->pass))
        return "(reply not shown: it quotes the password)";
    return r->str;
}

static int check_redis(const sbx_config *cfg, FILE *out)
{
    sbx_redis_url u;
    char why[256], shown[600], err[1400] = "";
    struct timeval tv = {CHECK_TIMEOUT_S, 0};
    redisContext *c = NULL;
    redisReply *r = NULL;
    const char *e;
    int bad = 1;

    sbx_log_redact(cfg->redis_url, shown, sizeof(shown));
    if (sbx_redis_parse_url(cfg->redis_url, &u, why, sizeof(why)) != 0) {
        bad = report(out, "redis", 0, "SBX_REDIS_URL=%s: %s", shown, why);
        goto out;
    }
    c = u.unix_path[0] ? redisConnectUnixWithTimeout(u.unix_path, tv)
                       : redisConnectWithTimeout(u.host, u.port, tv);
    if (!c || c->err) {
        bad = report(out, "redis", 0, "%s: connect failed: %s; start Redis there or fix "
                     "SBX_REDIS_URL", shown, c ? c->errstr : "out of memory");
        goto out;
    }
    redisSetTimeout(c, tv);
    if (u.pass[0]) {
        r = u.user[0] ? redisCommand(c, "AUTH %s %s", u.user, u.pass)
                      : redisCommand(c, "AUTH %s", u.pass);
        if ((e = reply_error(r, &u)) != NULL) {
            snprintf(err, sizeof(err), "AUTH%s%s refused: %s; fix the user and password in "
                     "SBX_REDIS_URL", u.user[0] ? " as user " : "", u.user,
                     r ? e : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
        r = NULL;
    }
    if (u.db > 0) {
        r = redisCommand(c, "SELECT %d", u.db);
        if ((e = reply_error(r, &u)) != NULL) {
            snprintf(err, sizeof(err), "SELECT %d refused: %s; fix the /db of SBX_REDIS_URL",
                     u.db, r ? e : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
        r = NULL;
    }
    r = redisCommand(c, "PING");
    if ((e = reply_error(r, &u)) != NULL) {
        if (r && strncmp(e, "NOAUTH", 6) == 0)
            snprintf(err, sizeof(err), "%s; give the password in SBX_REDIS_URL "
                     "(redis://:PASSWORD@host)", e);
        else
            snprintf(err, sizeof(err), "PING: %s", r ? e : c->errstr);
        goto fail;
    }
    bad = report(out, "redis", 1, "%s answered PING", shown);
    goto out;
fail:
    bad = report(out, "redis", 0, "%s: %s", shown, err);
out:
    if (r)
        freeReplyObject(r);
    if (c)
        redisFree(c);
    explicit_bzero(&u, sizeof(u));
    return bad;
}

/* ---- PostgreSQL ---- */

static int check_postgres(const sbx_config *cfg, FILE *out)
{
    static const char *const keys[] = {"dbname", "connect_timeout", NULL};
    const char *vals[3], *params[1] = {SCHEMA_FUNCTIONS};
    char shown[1200], timeout[16];
    PGconn *c;
    PGresult *r = NULL;
    int bad;

    sbx_log_redact(cfg->database_url, shown, sizeof(shown));
    snprintf(timeout, sizeof(timeout), "%d", CHECK_TIMEOUT_S);
    vals[0] = cfg->database_url;
    vals[1] = timeout;
    vals[2] = NULL;
    c = PQconnectdbParams(keys, vals, 1);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        const char *m = c ? PQerrorMessage(c) : "out of memory";
        const char *fix = strstr(m, "password") || strstr(m, "authentication")
                              ? "fix the user or password in SBX_DATABASE_URL"
                          : strstr(m, "SSL") || strstr(m, "certificate") || strstr(m, "pg_hba")
                              ? "fix sslmode and sslrootcert (the CA of the server's certificate) "
                                "in SBX_DATABASE_URL, e.g. ?sslmode=verify-full&sslrootcert=/etc/"
                                "sbx/pg-ca.pem"
                              : strstr(m, "does not exist")
                                    ? "create the database or fix SBX_DATABASE_URL"
                                    : "start PostgreSQL there or fix SBX_DATABASE_URL";
        bad = report(out, "postgres", 0, "%s: %.*s; %s", shown, (int)strcspn(m, "\n"), m, fix);
        goto out;
    }
    r = PQexecParams(c,
                     "SELECT to_regnamespace('sbx') IS NOT NULL, "
                     "coalesce(string_agg(f, ', ' ORDER BY f), '') "
                     "FROM unnest($1::text[]) f WHERE NOT EXISTS (SELECT 1 FROM pg_proc p "
                     "JOIN pg_namespace n ON n.oid = p.pronamespace "
                     "WHERE n.nspname = 'sbx' AND p.proname = f)",
                     1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        const char *m = PQresultErrorMessage(r);
        bad = report(out, "postgres", 0, "%s: schema check failed: %.*s", shown,
                     (int)strcspn(m, "\n"), m);
    } else if (strcmp(PQgetvalue(r, 0, 0), "t") != 0) {
        bad = report(out, "postgres", 0, "%s: schema sbx does not exist; run `sbx migrate` "
                     "with this SBX_DATABASE_URL", shown);
    } else if (*PQgetvalue(r, 0, 1)) {
        bad = report(out, "postgres", 0, "%s: schema sbx lacks %s (a migration is not "
                     "applied); run `sbx migrate`", shown, PQgetvalue(r, 0, 1));
    } else {
        bad = report(out, "postgres", 1, "%s answered; schema sbx is migrated (server %d)",
                     shown, PQserverVersion(c));
    }
out:
    PQclear(r);
    PQfinish(c);
    return bad;
}

/* ---- Kafka ---- */

typedef struct kafka_probe {
    int all_down;
    int refused;            /* RD_KAFKA_RESP_ERR__AUTHENTICATION or __SSL: retrying won't help */
    char error[512];        /* librdkafka's reason: a TLS failure's runs to ~300 bytes */
} kafka_probe;

static void on_kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    kafka_probe *p = opaque;
    (void)rk;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        p->all_down = 1;
    else if (!p->refused)
        snprintf(p->error, sizeof(p->error), "%s", reason);
    /* A broker that wants a client certificate refuses it with a TLS alert,
     * which librdkafka reports as a transport error. */
    if (err == RD_KAFKA_RESP_ERR__AUTHENTICATION || err == RD_KAFKA_RESP_ERR__SSL)
        p->refused = err;
    else if (err == RD_KAFKA_RESP_ERR__TRANSPORT && strstr(reason, "SSL routines"))
        p->refused = RD_KAFKA_RESP_ERR__SSL;
}

/* librdkafka's own lines would interleave with ours; its errors reach us
 * through on_kafka_error. */
static void on_kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    (void)level;
    (void)fac;
    (void)buf;
}

static int topic_line(FILE *out, const rd_kafka_metadata_t *md, const char *topic,
                      const char *setting)
{
    for (int i = 0; i < md->topic_cnt; i++) {
        const rd_kafka_metadata_topic_t *t = &md->topics[i];
        if (strcmp(t->topic, topic) != 0)
            continue;
        if (t->err)
            return report(out, "kafka", 0, "topic %s (%s): %s", topic, setting,
                          rd_kafka_err2str(t->err));
        return report(out, "kafka", 1, "topic %s (%s) exists, %d partitions", topic, setting,
                      t->partition_cnt);
    }
    return report(out, "kafka", 0, "topic %s (%s) does not exist; create it (kafka-topics.sh "
                  "--create --topic %s ...) or fix %s: sbx-worker does not create topics",
                  topic, setting, topic, setting);
}

static int check_kafka(const sbx_config *cfg, FILE *out)
{
    char e[512];
    sbx_kafka_settings ks;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
    kafka_probe probe;
    rd_kafka_t *rk;
    uint64_t end = sbx_now_ms() + KAFKA_WAIT_MS;
    int bad = 0;

    memset(&probe, 0, sizeof(probe));
    if (rd_kafka_conf_set(conf, "bootstrap.servers", cfg->brokers, e, sizeof(e)) ||
        rd_kafka_conf_set(conf, "allow.auto.create.topics", "false", e, sizeof(e))) {
        rd_kafka_conf_destroy(conf);
        return report(out, "kafka", 0, "SBX_BROKERS: %s", e);
    }
    /* TLS and SASL (SBX_KAFKA_*), then SBX_KAFKA_CONF: as the worker's clients. */
    if (sbx__config_kafka_settings(cfg, &ks, e, sizeof(e)) != 0) {
        rd_kafka_conf_destroy(conf);
        return report(out, "kafka", 0, "%s", e);
    }
    for (int i = 0; ks.kv[i]; i++) {
        char kv[SBX_KAFKA_SECURITY_BUF], shown[SBX_KAFKA_SECURITY_BUF];
        char *eq;
        snprintf(kv, sizeof(kv), "%s", ks.kv[i]);
        eq = strchr(kv, '=');
        if (!eq || (*eq = '\0', rd_kafka_conf_set(conf, kv, eq + 1, e, sizeof(e))) !=
                       RD_KAFKA_CONF_OK) {
            sbx_log_redact(ks.kv[i], shown, sizeof(shown));
            explicit_bzero(kv, sizeof(kv));
            sbx__config_kafka_settings_wipe(&ks);
            rd_kafka_conf_destroy(conf);
            return report(out, "kafka", 0, "SBX_KAFKA_CONF entry %s: %s", shown,
                          eq ? e : "not key=value");
        }
        explicit_bzero(kv, sizeof(kv));
    }
    sbx__config_kafka_settings_wipe(&ks);
    rd_kafka_conf_set_error_cb(conf, on_kafka_error);
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    rd_kafka_conf_set_opaque(conf, &probe);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof(e));
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return report(out, "kafka", 0, "client: %s; fix SBX_KAFKA_CONF", e);
    }
    while (sbx_now_ms() < end && !probe.all_down && !probe.refused) {
        err = rd_kafka_metadata(rk, 1, NULL, &md, METADATA_STEP_MS);
        if (!err)
            break;
        md = NULL;
        rd_kafka_poll(rk, 0);
    }
    if (!md && probe.refused == RD_KAFKA_RESP_ERR__AUTHENTICATION) {
        bad = report(out, "kafka", 0, "%s refused the login (%s); fix SBX_KAFKA_SASL_MECHANISM, "
                     "SBX_KAFKA_SASL_USERNAME or the password (SBX_KAFKA_SASL_PASSWORD_FILE)",
                     cfg->brokers, probe.error);
        goto out;
    }
    if (!md && probe.refused == RD_KAFKA_RESP_ERR__SSL) {
        bad = report(out, "kafka", 0, "TLS to %s failed (%s); fix SBX_KAFKA_SSL_CA (the CA that "
                     "signed the brokers' certificates), SBX_BROKERS (a TLS listener, by a name its "
                     "certificate holds), or SBX_KAFKA_SSL_CERT/KEY if the brokers require a "
                     "client certificate",
                     cfg->brokers, probe.error);
        goto out;
    }
    if (!md) {
        bad = report(out, "kafka", 0, "no broker of %s answered within %d ms (%s); start Kafka "
                     "or fix SBX_BROKERS (and SBX_KAFKA_SECURITY_PROTOCOL if the listener "
                     "uses TLS or SASL)",
                     cfg->brokers, KAFKA_WAIT_MS,
                     probe.error[0] ? probe.error : rd_kafka_err2str(err));
        goto out;
    }
    report(out, "kafka", 1, "%s answered, %d brokers", cfg->brokers, md->broker_cnt);
    bad |= topic_line(out, md, cfg->topic, "SBX_TOPIC");
    bad |= topic_line(out, md, cfg->dlq_topic, "SBX_DLQ_TOPIC");
    rd_kafka_metadata_destroy(md);
out:
    rd_kafka_destroy(rk);
    return bad;
}

/* ---- docker hosts ---- */

static void docker_report(void *arg, const char *host, int ok, const char *msg)
{
    char what[80];
    snprintf(what, sizeof(what), "docker %s", host);
    report(arg, what, ok, "%s", msg);
}

static int check_docker(const sbx_config *cfg, FILE *out)
{
    char err[512];
    int rc = sbx__docker_probe(cfg, DOCKER_WAIT_MS, docker_report, out, err, sizeof(err));
    if (rc < 0)
        return report(out, "docker", 0, "%s", err);
    return rc;
}

int sbx__check_services(const sbx_config *cfg, FILE *out)
{
    int problems = 0;

    problems += check_redis(cfg, out);
    problems += check_postgres(cfg, out);
    problems += check_kafka(cfg, out);
    if (sbx__config_runs(cfg, SBX_PROVIDER_DOCKER))
        problems += check_docker(cfg, out);
    fflush(out);
    return problems;
}
