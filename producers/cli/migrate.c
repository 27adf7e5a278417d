/* migrate.c — `sbx migrate`: bring the database schema up to date.
 *
 * Migrations are NNNN_name.sql, built into the binary from migrations/ at
 * build time (migrations.h), so `sbx migrate` needs no file and works from
 * any directory; --dir DIR (or SBX_MIGRATIONS_DIR) reads them from DIR
 * instead, for a schema change being written. Either way they are applied in
 * version order, each in
 * its own transaction together with its row in public.sbx_schema_migrations
 * (version, name, sha256, applied_at): a migration is either applied and
 * recorded or neither. The table lives in public, not in schema sbx, because
 * it must exist before the first migration creates sbx.
 *
 * Concurrency: every run holds a session advisory lock (MIGRATE_LOCK) from
 * before it creates the bookkeeping table until it is done, so two runs
 * started together apply each migration once; the second sees the first's
 * rows and has nothing to do.
 *
 * Drift: a recorded migration whose file now has another sha256 is an error
 * and nothing is applied: the database was built from different SQL than
 * the file says, and a person must decide. So is a file older than the newest
 * applied version that was never applied: applying it late would run it
 * against a schema it was not written for. The hash is computed by the server
 * (sha256(), PostgreSQL 11+), which spares the CLI a crypto library.
 * Migration files must not contain BEGIN/COMMIT of their own.
 */
#include "cli.h"
#include "migrations.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* pg_advisory_lock key: "sbxmigr" in ASCII, unlikely to meet anyone else's. */
#define MIGRATE_LOCK "32483653180901746"
/* Bounds on what we read: a schema migration is a few KiB; these only keep a
 * wrong --dir from loading a disk into memory. */
#define MIGRATION_MAX_BYTES (16 * 1024 * 1024)
#define MIGRATIONS_MAX 1000
#define NAME_MAX_LEN 255

struct migration {
    int version;
    char name[NAME_MAX_LEN + 1];
    char *sql;
    size_t len;
    char sha256[65];
    bool applied;
};

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct migration *)a)->name, ((const struct migration *)b)->name);
}

/* NNNN_*.sql */
static bool migration_name(const char *n, int *version)
{
    size_t len = strlen(n);
    if (len < 9 || len > NAME_MAX_LEN || n[4] != '_' || strcmp(n + len - 4, ".sql") != 0)
        return false;
    for (int i = 0; i < 4; i++)
        if (n[i] < '0' || n[i] > '9')
            return false;
    *version = (n[0] - '0') * 1000 + (n[1] - '0') * 100 + (n[2] - '0') * 10 + (n[3] - '0');
    return true;
}

static int read_file(const char *path, char **out, size_t *outlen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len;
    if (!f)
        return -1;
    buf = malloc(MIGRATION_MAX_BYTES + 1);
    if (!buf) {
        fclose(f);
        return -1;
    }
    len = fread(buf, 1, MIGRATION_MAX_BYTES + 1, f);
    if (ferror(f) || len > MIGRATION_MAX_BYTES) {
        if (!ferror(f))
            errno = EFBIG;
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(f);
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    return 0;
}

static int load_dir(const char *dir, struct migration **out, size_t *n)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    struct migration *m = NULL;
    int rc = SBX_EXIT_FAIL;

    *n = 0;
    if (!d) {
        fprintf(stderr, "sbx migrate: %s: %s\n", dir, strerror(errno));
        return SBX_EXIT_USAGE;
    }
    if (!(m = calloc(MIGRATIONS_MAX, sizeof *m)))
        goto oom;
    while ((e = readdir(d))) {
        int version;
        if (e->d_name[0] == '.')
            continue;
        if (!migration_name(e->d_name, &version)) {
            size_t l = strlen(e->d_name);
            if (l > 4 && strcmp(e->d_name + l - 4, ".sql") == 0)
                fprintf(stderr, "sbx migrate: ignoring %s/%s (not NNNN_name.sql)\n", dir, e->d_name);
            continue;
        }
        if (*n == MIGRATIONS_MAX) {
            fprintf(stderr, "sbx migrate: %s: more than %d migrations\n", dir, MIGRATIONS_MAX);
            goto out;
        }
        m[*n].version = version;
        snprintf(m[*n].name, sizeof m[*n].name, "%s", e->d_name);
        (*n)++;
    }
    qsort(m, *n, sizeof *m, by_name);
    for (size_t i = 0; i < *n; i++) {
        char path[4096];
        if (i > 0 && m[i].version == m[i - 1].version) {
            fprintf(stderr, "sbx migrate: %s and %s have the same version\n", m[i - 1].name, m[i].name);
            goto out;
        }
        snprintf(path, sizeof path, "%s/%s", dir, m[i].name);
        if (read_file(path, &m[i].sql, &m[i].len)) {
            fprintf(stderr, "sbx migrate: %s: %s\n", path, strerror(errno));
            goto out;
        }
    }
    *out = m;
    m = NULL;
    rc = SBX_EXIT_OK;
    goto out;
oom:
    fprintf(stderr, "sbx migrate: out of memory\n");
out:
    if (m)
        for (size_t i = 0; i < *n; i++)
            free(m[i].sql);
    free(m);
    closedir(d);
    return rc;
}

/* The migrations built in (already sorted by name: producers.mk). */
static int load_embedded(struct migration **out, size_t *n)
{
    struct migration *m = calloc(sbx__migrations_count ? sbx__migrations_count : 1, sizeof *m);
    int rc = SBX_EXIT_FAIL;

    *n = 0;
    if (!m) {
        fprintf(stderr, "sbx migrate: out of memory\n");
        return rc;
    }
    for (size_t i = 0; i < sbx__migrations_count; i++) {
        const struct sbx__embedded *e = &sbx__migrations[i];
        if (!migration_name(e->name, &m[i].version) ||
            (i > 0 && m[i].version <= m[i - 1].version)) {
            fprintf(stderr, "sbx migrate: built-in %s is out of order or misnamed\n", e->name);
            goto out;
        }
        snprintf(m[i].name, sizeof m[i].name, "%s", e->name);
        if (!(m[i].sql = malloc(e->len + 1))) {
            fprintf(stderr, "sbx migrate: out of memory\n");
            goto out;
        }
        memcpy(m[i].sql, e->text, e->len + 1);
        m[i].len = e->len;
        (*n)++;
    }
    *out = m;
    m = NULL;
    rc = SBX_EXIT_OK;
out:
    if (m)
        for (size_t i = 0; i < *n; i++)
            free(m[i].sql);
    free(m);
    return rc;
}

static bool exec_ok(PGconn *conn, const char *sql, const char *what)
{
    PGresult *r = PQexec(conn, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok)
        sbx__cli_pg_error(what, conn, r);
    PQclear(r);
    return ok;
}

static int hash_files(PGconn *conn, struct migration *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *params[1] = { m[i].sql };
        int lens[1] = { (int)m[i].len }, formats[1] = { 1 };
        PGresult *r = PQexecParams(conn, "SELECT encode(sha256($1::bytea), 'hex')", 1, NULL, params,
                                   lens, formats, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            sbx__cli_pg_error("migrate: sha256", conn, r);
            PQclear(r);
            return -1;
        }
        snprintf(m[i].sha256, sizeof m[i].sha256, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    return 0;
}

/* Marks applied migrations; fails on drift (see the top of the file). */
static int check_recorded(PGconn *conn, struct migration *m, size_t n)
{
    PGresult *r = PQexec(conn, "SELECT version, name, sha256 FROM public.sbx_schema_migrations ORDER BY version");
    int rc = -1, newest = -1;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        sbx__cli_pg_error("migrate", conn, r);
        goto out;
    }
    rc = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        int version = atoi(PQgetvalue(r, i, 0));
        const char *name = PQgetvalue(r, i, 1), *sha = PQgetvalue(r, i, 2);
        struct migration *x = NULL;
        for (size_t k = 0; k < n && !x; k++)
            if (m[k].version == version)
                x = &m[k];
        newest = version > newest ? version : newest;
        if (!x) {
            fprintf(stderr, "sbx migrate: warning: %s was applied but has no file here\n", name);
            continue;
        }
        x->applied = true;
        if (strcmp(x->sha256, sha) != 0) {
            fprintf(stderr, "sbx migrate: %s changed after it was applied as %s (sha256 %s, now %s); "
                            "restore the file or write a new migration\n", x->name, name, sha, x->sha256);
            rc = -1;
        }
    }
    for (size_t k = 0; k < n; k++) {
        if (!m[k].applied && m[k].version < newest) {
            fprintf(stderr, "sbx migrate: %s was never applied but is older than the applied version %04d; "
                            "renumber it after %04d\n", m[k].name, newest, newest);
            rc = -1;
        }
    }
out:
    PQclear(r);
    return rc;
}

static int apply(PGconn *conn, const struct migration *m)
{
    char version[16], what[NAME_MAX_LEN + 32];
    const char *params[3] = { version, m->name, m->sha256 };
    PGresult *r;

    snprintf(version, sizeof version, "%d", m->version);
    snprintf(what, sizeof what, "migrate: %s", m->name);
    if (!exec_ok(conn, "BEGIN", what))
        return -1;
    if (!exec_ok(conn, m->sql, what))
        goto rollback;
    r = PQexecParams(conn, "INSERT INTO public.sbx_schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
                     3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        sbx__cli_pg_error(what, conn, r);
        PQclear(r);
        goto rollback;
    }
    PQclear(r);
    if (!exec_ok(conn, "COMMIT", what))
        goto rollback;
    return 0;
rollback:
    PQclear(PQexec(conn, "ROLLBACK"));
    return -1;
}


int sbx__cmd_migrate(int argc, char **argv, struct sbx__cli_config *cfg)
{
    static const struct option opts[] = {
        { "dir", required_argument, NULL, 'd' },
        { "list", no_argument, NULL, 'l' },
        SBX_CLI_COMMON_OPTIONS,
        { 0, 0, 0, 0 },
    };
    const char *dir = NULL;
    struct migration *m = NULL;
    size_t n = 0, applied = 0;
    PGconn *conn = NULL;
    bool list = false;
    int c, rc;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'd')
            dir = optarg;
        else if (c == 'l')
            list = true;
        else if (c == OPT_HELP || c == 'h') {
            sbx__cli_usage("migrate", false);
            return SBX_EXIT_OK;
        } else if (!sbx__cli_common_option(cfg, c, optarg)) {
            sbx__cli_usage("migrate", true);
            return SBX_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sbx migrate: unexpected argument \"%s\"; run `sbx migrate --help`\n", argv[optind]);
        return SBX_EXIT_USAGE;
    }
    if (!dir && getenv("SBX_MIGRATIONS_DIR") && *getenv("SBX_MIGRATIONS_DIR"))
        dir = getenv("SBX_MIGRATIONS_DIR");
    if ((rc = dir ? load_dir(dir, &m, &n) : load_embedded(&m, &n)))
        return rc;
    if (n == 0) {
        fprintf(stderr, "sbx migrate: no NNNN_name.sql files in %s\n", dir ? dir : "this build");
        rc = SBX_EXIT_USAGE;
        goto out;
    }
    if (list) {
        /* What would be applied, in order, without touching a database. */
        for (size_t i = 0; i < n; i++)
            printf("%s %zu bytes\n", m[i].name, m[i].len);
        rc = SBX_EXIT_OK;
        goto out;
    }
    if (!(conn = sbx__cli_db_connect(cfg, &rc)))
        goto out;
    rc = SBX_EXIT_FAIL;
    if (!exec_ok(conn, "SELECT pg_advisory_lock(" MIGRATE_LOCK ")", "migrate: lock") ||
        !exec_ok(conn, "CREATE TABLE IF NOT EXISTS public.sbx_schema_migrations ("
                       " version integer PRIMARY KEY,"
                       " name text NOT NULL,"
                       " sha256 text NOT NULL,"
                       " applied_at timestamptz NOT NULL DEFAULT now())", "migrate") ||
        hash_files(conn, m, n) || check_recorded(conn, m, n))
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (m[i].applied)
            continue;
        if (apply(conn, &m[i]))
            goto out;
        printf("applied %s\n", m[i].name);
        fflush(stdout);
        applied++;
    }
    printf("migrate: %zu applied, %zu already applied\n", applied, n - applied);
    rc = SBX_EXIT_OK;
out:
    if (conn) {
        /* Closing the session releases the lock too; this is for tidiness. */
        PQclear(PQexec(conn, "SELECT pg_advisory_unlock(" MIGRATE_LOCK ")"));
        PQfinish(conn);
    }
    for (size_t i = 0; i < n; i++)
        free(m[i].sql);
    free(m);
    return rc;
}
