/* sbx.h — the public API of libsbx, the sbx producer library.
 *
 * Two halves:
 *  1. The job message (schema sbx.job.v1, schemas/job.v1.schema.json): parse
 *     and validate a message exactly as the JSON Schema does. The worker uses
 *     the same code, so the CLI, the worker and any JSON Schema validator agree
 *     on every vector in schemas/examples/.
 *  2. A producer handle that publishes jobs to Kafka keyed by project_id and
 *     waits for the delivery report.
 *
 * Errors: functions return an sbx_err (0 = SBX_OK); where a message can be
 * wrong, a caller-supplied buffer receives one human-readable line.
 * Ownership: what sbx_*_parse()/sbx_*_new() returns is the caller's and is
 * released with the matching sbx_*_free(); free functions accept NULL.
 */
#ifndef SBX_H
#define SBX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum sbx_err {
    SBX_OK = 0,
    SBX_EINVAL,      /* invalid argument or message; see the error text */
    SBX_ENOMEM,
    SBX_EKAFKA,      /* Kafka client error; see the error text */
    SBX_ETIMEDOUT,
    SBX_EIO,
} sbx_err;

const char *sbx_strerror(sbx_err e);

/* Limits of the v1 message (the schema says the same numbers). */
#define SBX_MSG_MAX_BYTES     (1024 * 1024) /* whole message: Kafka's default message.max.bytes */
/* The largest record batch libsbx sends: one message of SBX_MSG_MAX_BYTES plus
 * its key (<= SBX_ID_MAX) and Kafka's record and batch headers, with room to
 * spare. Job topics need a max.message.bytes of at least this much
 * (`sbx topics create` sets it). */
#define SBX_RECORD_MAX_BYTES  (SBX_MSG_MAX_BYTES + 64 * 1024)
#define SBX_ID_MAX            128           /* job_id, project_id */
#define SBX_ARGV_MAX          256
#define SBX_ENV_MAX           128
#define SBX_FILES_MAX         64
#define SBX_FILES_BYTES_MAX   (512 * 1024)  /* sum of inline file contents */
#define SBX_TIMEOUT_MAX_S     86400
#define SBX_EGRESS_ITEMS_MAX  32            /* "egress" entries */
#define SBX_EGRESS_ITEM_MAX   253           /* one entry: a DNS name is at most 253 */
#define SBX_DEFAULT_TIMEOUT_S 600
/* "session": defaults and bounds of its timeouts, in seconds. */
#define SBX_SESSION_PAUSE_S      300     /* idle this long: paused */
#define SBX_SESSION_IDLE_S       900     /* idle this long: ended, its sandbox destroyed */
#define SBX_SESSION_LIFETIME_S   86400   /* at most this long from its first job */
#define SBX_SESSION_TIMEOUT_MAX_S 604800

/* Why a message was refused: the "reason" of a dead-letter envelope. */
typedef enum sbx_reject {
    SBX_REJECT_NONE = 0,
    SBX_REJECT_TOO_LARGE,      /* "too_large" */
    SBX_REJECT_NOT_UTF8,       /* "not_utf8" */
    SBX_REJECT_INVALID_JSON,   /* "invalid_json" */
    SBX_REJECT_SCHEMA,         /* "schema_violation" */
} sbx_reject;
const char *sbx_reject_name(sbx_reject r);

typedef struct sbx_kv { char *key; char *value; } sbx_kv;

typedef struct sbx_job {
    char job_id[SBX_ID_MAX + 1];
    char project_id[SBX_ID_MAX + 1];
    char **argv;         /* "command": argv, NULL-terminated; NULL if "script" */
    size_t argc;
    char *script;        /* "script": run with /bin/sh -c; NULL if "command" */
    sbx_kv *env;         /* "env" */
    size_t nenv;
    sbx_kv *files;       /* "files": path -> content, written into the workspace */
    size_t nfiles;
    char *image;         /* "image" or NULL */
    int timeout_s;       /* "timeout_s", default SBX_DEFAULT_TIMEOUT_S */
    double cpus;         /* "resources.cpus", 0 = provider default */
    int memory_mb;       /* "resources.memory_mb", 0 = provider default */
    int pids;            /* "resources.pids", 0 = provider default */
    int disk_mb;         /* "resources.disk_mb", 0 = provider default */
    bool network;        /* "network", default false */
    char **egress;       /* "egress": IPv4 CIDRs and host names the build may reach
                            (narrowing the host's policy), NULL-terminated; NULL when
                            absent, {NULL} when [] (no destination at all) */
    size_t negress;
    char provider[16];   /* "provider"; "" when absent or "any" */
    char *traceparent;   /* "trace.traceparent" or NULL */
    char *tracestate;    /* "trace.tracestate" or NULL */
    sbx_kv *metadata;    /* "metadata": labels for the run and the sandbox */
    size_t nmetadata;
    /* "session": the job runs in its project's session of this id, in the
     * sandbox (and workspace) its earlier jobs used; "" when absent. */
    char session_id[SBX_ID_MAX + 1];
    int session_pause_s;     /* "session.pause_after_s": idle this long, paused */
    int session_idle_s;      /* "session.idle_timeout_s": idle this long, ended */
    int session_lifetime_s;  /* "session.max_lifetime_s": ended this long after it began */
    int session_preview_port; /* "session.preview_port": the session's dev server listens
                                 here inside the sandbox, served at its preview URL; 0 none */
} sbx_job;

/* Parses and validates one message. On refusal returns SBX_EINVAL, sets
 * *reject (if not NULL) and writes one line into err ("job_id: required");
 * the line is valid UTF-8 without control characters, cut to errlen.
 * Gates, in order: size (too_large), UTF-8 (not_utf8), RFC 8259 text with
 * unique member names and no "\u0000" or unpaired surrogate escape
 * (invalid_json), then the schema (schema_violation). See producers/lib/message.c.
 * SBX_ENOMEM leaves *reject at SBX_REJECT_NONE. */
sbx_err sbx_job_parse(const char *buf, size_t len, sbx_job **out,
                      sbx_reject *reject, char *err, size_t errlen);
void sbx_job_free(sbx_job *job);

/* Whether path is a safe "files" key: relative, with no empty, "." or ".."
 * component and no control character — never outside the workspace. The
 * parser applies it; providers that write the files check it again. */
bool sbx_job_path_ok(const char *path);

/* Best effort: pulls "job_id" and "project_id" out of a refused message, for
 * the dead-letter envelope, even from truncated or otherwise invalid JSON
 * when they come before the damage. Leaves "" where absent, escaped, or not a
 * valid id (so what it returns is always safe ASCII). */
void sbx_job_peek_ids(const char *buf, size_t len,
                      char job_id[SBX_ID_MAX + 1], char project_id[SBX_ID_MAX + 1]);

/* Whether s is a valid job_id / project_id: 1..128 characters matching
 * ^[A-Za-z0-9][A-Za-z0-9._:-]*$. */
bool sbx_id_valid(const char *s);

/* ---- producer ----
 * A handle is used by one thread at a time. Delivery reports are served
 * inside sbx_producer_send(), sbx_producer_send_raw() and sbx_producer_flush(). */
typedef struct sbx_producer sbx_producer;

/* brokers: "host:port,..."; topic: e.g. "sbx.jobs". extra: NULL or a
 * NULL-terminated list of "key=value" librdkafka settings. */
sbx_err sbx_producer_new(const char *brokers, const char *topic,
                         const char *const *extra, sbx_producer **out,
                         char *err, size_t errlen);
/* Validates msg, publishes it keyed by its project_id and waits up to
 * timeout_ms for the delivery report. job_id_out (if not NULL) receives the id.
 * SBX_EINVAL: refused by sbx_job_parse (nothing sent). SBX_ETIMEDOUT: no
 * report in time; the message may still be delivered later, and sending it
 * again is safe because workers run a job_id once. */
sbx_err sbx_producer_send(sbx_producer *p, const char *msg, size_t len, int timeout_ms,
                          char job_id_out[SBX_ID_MAX + 1], char *err, size_t errlen);
/* Publishes without validating (for tests of the dead-letter path). */
sbx_err sbx_producer_send_raw(sbx_producer *p, const char *key, const char *msg,
                              size_t len, int timeout_ms, char *err, size_t errlen);

/* Bulk publishing: sbx_producer_queue() validates msg and queues it without
 * waiting; cb (if not NULL) is called once with the outcome, from inside a
 * later send/flush/free call of the same handle. Any error return means
 * nothing was queued and cb is never called; SBX_EINVAL: a refused message. */
typedef void sbx_delivery_fn(void *arg, const char *job_id, sbx_err err, const char *errstr);
sbx_err sbx_producer_queue(sbx_producer *p, const char *msg, size_t len,
                           sbx_delivery_fn *cb, void *arg,
                           char job_id_out[SBX_ID_MAX + 1], char *err, size_t errlen);
/* Serves delivery reports until none is outstanding (SBX_OK) or timeout_ms
 * has passed (SBX_ETIMEDOUT). */
sbx_err sbx_producer_flush(sbx_producer *p, int timeout_ms);
/* Purges what was never sent (their callbacks run with SBX_EKAFKA), waits
 * briefly for in-flight reports, and destroys the handle. */
void sbx_producer_free(sbx_producer *p);

/* Visible from the moment it is sent (issue 10). With a database attached,
 * sbx_producer_send() and sbx_producer_queue() first record each job in
 * sbx.runs as `submitted` (its spec with env values redacted, as workers
 * store it, and its fingerprint: migrations/0005_submitted.sql), and only
 * then publish it, so `sbx status` and `sbx cancel` work before any worker
 * consumes it. A job whose publish fails (a refused produce, an error
 * report, a purge at sbx_producer_free) has its row deleted again; one
 * whose report never comes keeps it. The record is part of the send: when
 * it fails the job is not sent (SBX_EIO, the error text says why), and a
 * job id whose row holds another payload is refused (SBX_EINVAL) instead of
 * being dead-lettered later as job_id_reused. A resend of the same job
 * finds its row and is sent. database_url: a libpq connection string or
 * URL, for a role granted sbx_submitter; NULL detaches. SBX_EIO: could not
 * connect (the handle keeps what it had). */
sbx_err sbx_producer_set_database(sbx_producer *p, const char *database_url, char *err,
                                  size_t errlen);

/* ---- Kafka security ----
 * TLS and SASL to the brokers, as sbx-worker and `sbx` read them from the
 * environment (README "TLS and authentication"). NULL or "" is unset. */
typedef struct sbx_kafka_security {
    const char *protocol;           /* SBX_KAFKA_SECURITY_PROTOCOL: plaintext (unset), ssl,
                                       sasl_plaintext or sasl_ssl */
    const char *sasl_mechanism;     /* SBX_KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256, -512 */
    const char *sasl_username;      /* SBX_KAFKA_SASL_USERNAME */
    const char *sasl_password;      /* SBX_KAFKA_SASL_PASSWORD */
    const char *sasl_password_file; /* SBX_KAFKA_SASL_PASSWORD_FILE: first line is the password */
    const char *ssl_ca;             /* SBX_KAFKA_SSL_CA: PEM CA file; unset: the system's CAs */
    const char *ssl_cert;           /* SBX_KAFKA_SSL_CERT: client certificate (PEM), mutual TLS */
    const char *ssl_key;            /* SBX_KAFKA_SSL_KEY: its private key (PEM, unencrypted) */
} sbx_kafka_security;

/* Settings sbx_kafka_security_settings() may produce, the bytes of their
 * text (three paths, a user name and a password), and the longest password
 * it reads from a file (SASL passwords are far shorter). */
#define SBX_KAFKA_SECURITY_MAX 9
#define SBX_KAFKA_SECURITY_BUF 4096
#define SBX_KAFKA_SECURITY_PASSWORD_MAX 1023

/* Fills s from the SBX_KAFKA_* variables (pointers into the environment). */
void sbx_kafka_security_from_env(sbx_kafka_security *s);
/* Checks s and writes the librdkafka settings it stands for ("key=value",
 * for sbx_producer_new()'s extra) into kv, NULL-terminated, their text in
 * buf (SBX_KAFKA_SECURITY_BUF bytes). buf then holds the SASL password,
 * read from its file if so configured: wipe it (explicit_bzero) once the
 * client is created. SBX_EINVAL: one line in err naming the variable and
 * the fix (never a password); kv is then empty. */
sbx_err sbx_kafka_security_settings(const sbx_kafka_security *s, char *buf, const char **kv,
                                    char *err, size_t errlen);

/* Generates a random job id: "j_" + 26 characters of lowercase Crockford
 * base32, 48 bits of milliseconds then 80 random bits (getrandom()), so ids
 * sort by creation time. */
void sbx_new_job_id(char out[SBX_ID_MAX + 1]);

/* The release (the VERSION file, "0.3.0") and the commit it was built from
 * (`git describe --always --dirty`; "" outside a git checkout). */
const char *sbx_version(void);
const char *sbx_version_git(void);
/* "<prog> 0.3.0 (git 1a2b3c4)", or "<prog> 0.3.0" without a commit: what
 * every program's --version prints. */
void sbx_version_line(const char *prog, char *out, size_t outlen);

#endif
