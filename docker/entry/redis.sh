#!/bin/sh
# sbx-redis — the sbx-redis image's entrypoint: Debian's redis-server with
# the password from REDIS_PASSWORD (required: the leases are the one thing a
# stranger on the network must not touch), no persistence (leases are
# renewed every few seconds; a restart is a lost-dependency pause the
# workers ride out), listening on every address of the container.
# The password reaches redis-server on standard input, not its argv.
set -eu
[ -n "${REDIS_PASSWORD:-}" ] || { echo "sbx-redis: set REDIS_PASSWORD" >&2; exit 2; }
case $REDIS_PASSWORD in *[[:space:]\"]*) echo "sbx-redis: REDIS_PASSWORD must not hold spaces or quotes" >&2; exit 2 ;; esac
printf 'bind 0.0.0.0\nprotected-mode no\nport 6379\nsave ""\nappendonly no\nrequirepass "%s"\n' "$REDIS_PASSWORD" \
    | exec redis-server -
