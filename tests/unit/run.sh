#!/bin/sh
# run.sh BUILD TEST... — runs each unit test program in its own process
# against the services sbxsvc.py started (SBX_DATABASE_URL, SBX_REDIS_URL),
# after applying the migrations, and prints one summary line.
# A program that exits 77 was skipped (it says why); any other non-zero
# status is a failure.
set -u
build=$1
shift
"$build/bin/sbx" migrate >/dev/null || { echo "unit: sbx migrate failed"; exit 1; }
passed=0 failed=0 skipped=0 failures=""
for t in "$@"; do
    echo "== $t"
    "$t"
    rc=$?
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
    elif [ $rc -eq 77 ]; then
        skipped=$((skipped + 1))
    else
        failed=$((failed + 1))
        failures="$failures $(basename "$t")"
    fi
done
[ -n "$failures" ] && echo "unit: failed:$failures"
echo "unit programs: $passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
