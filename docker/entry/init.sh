#!/bin/sh
# sbx-init — the compose stack's one-shot set-up, with the worker's
# settings (SBX_BROKERS, SBX_DATABASE_URL, SBX_TOPIC, SBX_DLQ_TOPIC):
#  1. `sbx migrate` (idempotent), retried until PostgreSQL accepts it;
#  2. the job and dead-letter topics, created by asking for their metadata
#     (kcat -L -t T: a producer's metadata request, which a broker with
#     auto.create.topics.enable answers by creating T with its
#     num.partitions), repeated until each has a leader.
# The broker's defaults then apply to both topics; a production cluster
# creates them by hand with the partitions and retention it wants (README).
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
topic_led() {
    m=$(kcat -b "$SBX_BROKERS" -m 5 -L -t "$1" 2>&1) || { printf '%s\n' "$m"; return 1; }
    printf '%s\n' "$m" | grep -q "partition 0, leader [0-9]" || { printf '%s\n' "$m"; return 1; }
}
retry "sbx migrate" sbx migrate
for t in "${SBX_TOPIC:-sbx.jobs}" "${SBX_DLQ_TOPIC:-sbx.jobs.dlq}"; do
    retry "topic $t" topic_led "$t"
done
