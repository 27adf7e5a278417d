/* submit.c — see submit.h. One blocking libpq connection per producer
 * handle, used from the thread that uses the handle (sbx.h: one thread at a
 * time), so the record always commits before the publish starts: a worker
 * that consumes the message finds the row, and `sbx status` / `sbx cancel`
 * work from the moment sbx_producer_send() returns, and before.
 *
 * What is stored is what a worker would store (migrations/0005_submitted.sql):
 * the spec redacted by the one rule both link (sbx_redact.h), so no env
 * value travels to the database or rests there, and its fingerprint, which
 * record_run compares when the message is consumed. The database redacts
 * again (sbx.redact_spec), as it does for workers.
 *
 * A connection that broke (the server restarted since the last job) is
 * reset once before a statement is given up on.
 */
#include "submit.h"

#include <libpq-fe.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbx_redact.h"
#include "libsbx.h"

struct sbx__submitter {
    PGconn *conn;
};

/* libpq's message as one line. */
static void pg_error(char *err, size_t errlen, const char *what, PGconn *c, const PGresult *r)
{
    const char *msg = r ? PQresultErrorMessage(r) : "";
    char line[512];
    if (!msg || !*msg)
        msg = c ? PQerrorMessage(c) : "out of memory";
    snprintf(line, sizeof line, "%s", msg);
    for (char *p = line; *p; p++)
        if (*p == '\n')
            *p = p[1] ? ' ' : '\0';
    sbx__seterr(err, errlen, "database: %s: %s", what, line);
}

sbx_err sbx__submitter_new(const char *database_url, sbx__submitter **out, char *err,
                           size_t errlen)
{
    /* dbname last: settings in the URL win over these defaults. */
    const char *const keys[] = {"application_name", "connect_timeout", "dbname", NULL};
    const char *const vals[] = {"sbx-producer", "10", database_url, NULL};
    sbx__submitter *s;

    *out = NULL;
    if (!database_url || !*database_url) {
        sbx__seterr(err, errlen, "database: no URL given");
        return SBX_EINVAL;
    }
    if (!(s = calloc(1, sizeof *s))) {
        sbx__seterr(err, errlen, "out of memory");
        return SBX_ENOMEM;
    }
    s->conn = PQconnectdbParams(keys, vals, 1);
    if (!s->conn || PQstatus(s->conn) != CONNECTION_OK) {
        pg_error(err, errlen, "connect", s->conn, NULL);
        sbx__submitter_free(s);
        return SBX_EIO;
    }
    *out = s;
    return SBX_OK;
}

void sbx__submitter_free(sbx__submitter *s)
{
    if (!s)
        return;
    PQfinish(s->conn);
    free(s);
}

/* Runs one statement, resetting a broken connection once. */
static PGresult *exec(sbx__submitter *s, const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(s->conn, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQstatus(s->conn) == CONNECTION_BAD) {
        PQclear(r);
        PQreset(s->conn);
        r = PQexecParams(s->conn, sql, n, NULL, params, NULL, NULL, 0);
    }
    return r;
}

sbx_err sbx__submit(sbx__submitter *s, const sbx_job *job, const char *msg, size_t len,
                    char sha[65], bool *recorded, char *err, size_t errlen)
{
    char *spec = NULL;
    PGresult *r = NULL;
    sbx_err rc = SBX_EIO;
    int fr;

    *recorded = false;
    fr = sbx__job_fingerprint(msg, len, &spec, sha);
    if (fr) {
        /* A message sbx_job_parse() took is a JSON object: only memory fails. */
        sbx__seterr(err, errlen, "out of memory redacting the spec");
        return SBX_ENOMEM;
    }
    {
        const char *params[4] = {job->job_id, job->project_id, spec, sha};
        r = exec(s, "SELECT inserted, status, reused, first_sha"
                    " FROM sbx.submit_run($1, $2, $3::jsonb, $4)", 4, params);
    }
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pg_error(err, errlen, "recording the job as submitted (run `sbx migrate`?)", s->conn, r);
        goto out;
    }
    if (strcmp(PQgetvalue(r, 0, 2), "t") == 0) {
        sbx__seterr(err, errlen, "job id %s is already used by another payload (its run is %s, "
                            "payload_sha256 %s; this one's is %s); nothing sent",
               job->job_id, PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 3), sha);
        rc = SBX_EINVAL;
        goto out;
    }
    *recorded = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    rc = SBX_OK;
out:
    PQclear(r);
    free(spec);
    return rc;
}

void sbx__submit_forget(sbx__submitter *s, const char *job_id, const char *sha)
{
    const char *params[2] = {job_id, sha};
    PQclear(exec(s, "SELECT sbx.forget_submitted($1, $2)", 2, params));
}
