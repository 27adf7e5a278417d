#!/bin/sh
# sbx-postgres — the sbx-postgres image's entrypoint: Debian's PostgreSQL 15
# with one database POSTGRES_DB (sbx) owned by POSTGRES_USER (sbx; CREATEROLE,
# for migration 0002's sbx_writer and sbx_reader) whose
# password is POSTGRES_PASSWORD (required), data in /var/lib/postgresql/data
# (a volume). The cluster is made on the first start only (initdb as user
# postgres, scram-sha-256 for every TCP client); later starts reuse it.
set -eu
[ -n "${POSTGRES_PASSWORD:-}" ] || { echo "sbx-postgres: set POSTGRES_PASSWORD" >&2; exit 2; }
db=${POSTGRES_DB:-sbx}
user=${POSTGRES_USER:-sbx}
data=/var/lib/postgresql/data
bin=/usr/lib/postgresql/15/bin
run() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

mkdir -p "$data" /run/postgresql
chown postgres:postgres "$data" /run/postgresql
chmod 700 "$data"
if [ ! -s "$data/PG_VERSION" ]; then
    run "$bin/initdb" -D "$data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' >>"$data/pg_hba.conf"
    # A private server on the socket only, to create the role and database.
    run "$bin/pg_ctl" -D "$data" -o "-c listen_addresses=''" -w start >/dev/null
    # The password goes through a file only postgres reads, into a psql
    # variable quoted by psql (:'pw'): never in an argv.
    pw=$data/.pw
    (umask 077 && printf '%s' "$POSTGRES_PASSWORD" >"$pw")
    chown postgres "$pw"
    run psql -v ON_ERROR_STOP=1 -q -U postgres <<SQL
\\set pw \`cat $pw\`
CREATE ROLE "$user" LOGIN CREATEROLE PASSWORD :'pw';
CREATE DATABASE "$db" OWNER "$user";
SQL
    rm -f "$pw"
    run "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    "$bin/postgres" -D "$data" -c listen_addresses='*' -c max_connections=100
