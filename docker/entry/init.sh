#!/bin/sh
# sbx-init — the compose stack's one-shot set-up, with the worker's
# settings (SBX_BROKERS, SBX_DATABASE_URL, SBX_TOPIC, SBX_DLQ_TOPIC):
#  1. `sbx migrate` (idempotent), retried until PostgreSQL accepts it;
#  2. `sbx topics create` (idempotent): the job and dead-letter topics with
#     SBX_PARTITIONS (8) partitions, replication 1 (one broker), and the
#     message size and retention sbx needs, retried until the broker answers.
# Exits 0 when done, 1 after SBX_READY_TIMEOUT_S (300) seconds.
set -eu
limit=${SBX_READY_TIMEOUT_S:-300}
start=$(date +%s)
retry() {
    what=$1; shift
    n=0
    t0=$(date +%s)
    until out=$("$@" 2>&1); do
        n=$((n + 1))
        # Every tenth failure, and a slow one, says why, so a slow start can
        # be read in the log.
        if [ $((n % 10)) -eq 0 ] || [ $(( $(date +%s) - t0 )) -ge 3 ]; then
            printf 'sbx-init: %s: not yet after %d s: %s\n' "$what" $(( $(date +%s) - start )) \
                "$(printf '%s' "$out" | tail -n 3 | tr '\n' ' ')" >&2
        fi
        if [ $(( $(date +%s) - start )) -ge "$limit" ]; then
            printf '%s\n' "$out" >&2
            echo "sbx-init: $what: not done after $limit s" >&2
            exit 1
        fi
        sleep 1
        t0=$(date +%s)
    done
    echo "sbx-init: $what: done after $(( $(date +%s) - start )) s" >&2
}
retry "sbx migrate" sbx migrate
retry "sbx topics create" sbx topics create --partitions "${SBX_PARTITIONS:-8}" --replication 1
