#!/usr/bin/env bash
# demo.sh BUILD — what `make run` shows a newcomer: Redis and PostgreSQL on
# free ports (tests/services/sbxsvc.py), librdkafka's mock cluster as an
# embedded Kafka (sbx-mockbroker; the tests use a real broker), the
# migrations, one sbx-worker with the local bubblewrap provider, and demo
# jobs moving from queued to a terminal status.
#
# Runs until Ctrl-C (SBX_DEMO_EXIT=1: exit once the demo jobs finished).
set -euo pipefail
build=${1:-build}
bin=$build/bin
dir=$(mktemp -d /tmp/sbx-demo-XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting Redis and PostgreSQL on free 127.0.0.1 ports"
python3 tests/services/sbxsvc.py env --no-kafka >"$dir/env" 2>"$dir/services.log" &
pids+=($!)
for _ in $(seq 1 300); do grep -q '^# serving' "$dir/env" 2>/dev/null && break; sleep 0.1; done
grep -q '^# serving' "$dir/env" || { cat "$dir/services.log"; exit 1; }
# shellcheck disable=SC1090
source <(grep '^export' "$dir/env")

say "starting the embedded Kafka (librdkafka mock cluster; demo only)"
"$bin/sbx-mockbroker" >"$dir/broker" &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^BROKERS=' "$dir/broker" 2>/dev/null && break; sleep 0.05; done
export SBX_BROKERS=$(sed -n 's/^BROKERS=//p' "$dir/broker")
echo "brokers $SBX_BROKERS, redis $SBX_REDIS_URL, postgres $SBX_DATABASE_URL"

say "sbx migrate"
"$bin/sbx" migrate

say "starting sbx-worker (log: $dir/worker.log)"
mkdir -p "$dir/work" && chmod 755 "$dir/work"
SBX_WORK_DIR=$dir/work SBX_LOCAL_SLOTS=2 SBX_WORKER_ID=demo-worker \
    "$bin/sbx-worker" >"$dir/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q 'assigned' "$dir/worker.log" && break; sleep 0.1; done
tail -n 5 "$dir/worker.log"

say "enqueueing demo jobs"
ids=()
ids+=($("$bin/sbx" enqueue --project shop -- sh -c 'echo building shop; sleep 2; echo done'))
ids+=($("$bin/sbx" enqueue --project shop -- sh -c 'echo second build of shop waits its turn'))
ids+=($("$bin/sbx" enqueue --project blog --file index.html='<h1>hi</h1>' -- sh -c 'ls -l; cat index.html'))
ids+=($("$bin/sbx" enqueue --project blog -- sh -c 'echo tests fail; exit 3'))
ids+=($("$bin/sbx" enqueue --project wiki --timeout 2 -- sh -c 'echo hanging; sleep 60'))
ids+=($("$bin/sbx" enqueue --project wiki -- sh -c 'id; cat /etc/hostname 2>&1; ping -c1 127.0.0.1 2>&1 | head -1'))
printf '%s\n' "${ids[@]}"

say "watching sbx.runs (what a UI backend reads)"
list=$(printf "'%s'," "${ids[@]}"); list=${list%,}
last=""
for _ in $(seq 1 120); do
    now=$(psql -X -q -At -F ' ' "$SBX_DATABASE_URL" -c \
        "SELECT rpad(project_id, 6), job_id, status FROM sbx.runs WHERE job_id IN ($list) ORDER BY created_at")
    if [ "$now" != "$last" ]; then
        printf '\n%s\n' "$(date +%T)"; echo "$now"; last=$now
    fi
    left=$(psql -X -q -At "$SBX_DATABASE_URL" -c "SELECT count(*) FROM sbx.runs WHERE job_id IN ($list)
           AND status IN ('succeeded','failed','timed_out','canceled','dead_lettered')")
    [ "$left" -eq "${#ids[@]}" ] && break
    sleep 0.5
done

say "sbx status ${ids[2]} --history"
"$bin/sbx" status "${ids[2]}" --history

if [ "${SBX_DEMO_EXIT:-0}" = 1 ]; then
    exit 0
fi
say "the worker keeps running; try, in another shell:"
echo "  export SBX_BROKERS=$SBX_BROKERS SBX_DATABASE_URL=$SBX_DATABASE_URL"
echo "  $bin/sbx enqueue --project me -- sh -c 'echo hello'"
echo "  $bin/sbx status JOB_ID"
echo "Ctrl-C stops everything."
tail -f "$dir/worker.log" &
pids+=($!)
wait
