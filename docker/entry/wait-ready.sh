#!/bin/sh
# sbx-wait-ready — run COMMAND once `sbx-worker --check-config` passes:
#
#   sbx-wait-ready sbx-worker [ARGS...]
#
# For a stack started all at once (docker/compose.yaml): the check asks
# Redis, PostgreSQL (schema migrated) and Kafka (both topics exist) with the
# worker's own settings, so the worker starts only when everything it needs
# is there, whatever order the services came up in. Gives up, printing the
# last check, after SBX_READY_TIMEOUT_S (300) seconds.
set -eu
limit=${SBX_READY_TIMEOUT_S:-300}
start=$(date +%s)
until out=$(sbx-worker --check-config 2>&1); do
    if [ $(( $(date +%s) - start )) -ge "$limit" ]; then
        printf '%s\n' "$out" >&2
        echo "sbx-wait-ready: dependencies not ready after $limit s" >&2
        exit 1
    fi
    sleep 1
done
echo "sbx-wait-ready: dependencies ready after $(( $(date +%s) - start )) s" >&2
exec "$@"
