#!/bin/sh
# run.sh — runs libFuzzer targets for a bounded time each; used by
# `make fuzz-smoke` and `make fuzz` (tests/fuzz/fuzz.mk).
#
#   sh tests/fuzz/run.sh BUILD_FUZZ_DIR SECONDS TARGET...
#   sh tests/fuzz/run.sh BUILD_FUZZ_DIR merge TARGET...
#
# Per target: first replays every file in tests/fuzz/regressions/TARGET/
# (inputs that once found a bug must keep passing), then fuzzes for SECONDS
# from the grown corpus tests/fuzz/corpus/TARGET/ (not in git) plus the seed
# directories and flags of tests/fuzz/TARGET.conf. Prints the executions of
# each target and ends with "fuzz: N passed, M failed"; exits 1 if any
# target failed. A finding is saved under BUILD_FUZZ_DIR/artifacts/TARGET/;
# reproduce it with `BUILD_FUZZ_DIR/fuzz_TARGET FILE`, and keep it in
# tests/fuzz/regressions/TARGET/ once the bug is understood.
#
# "merge" instead of SECONDS shrinks each grown corpus to a subset with the
# same coverage (libFuzzer -merge=1); long runs leave thousands of files.
set -u

dir=$1 secs=$2
shift 2
here=$(dirname "$0")
passed=0 failed=0

# Hard stop for one target, in case libFuzzer itself wedges: the run's own
# bound plus time to load the corpus and print the report.
case $secs in merge) limit=0 ;; *) limit=$((secs + 120)) ;; esac

for t in "$@"; do
    bin=$dir/fuzz_$t
    FLAGS= SEEDS=
    [ -f "$here/$t.conf" ] && . "$here/$t.conf"
    corpus=$here/corpus/$t
    mkdir -p "$dir/logs"

    if [ "$secs" = merge ]; then
        [ -d "$corpus" ] || continue
        before=$(find "$corpus" -type f | wc -l)
        rm -rf "$corpus.merged"
        mkdir -p "$corpus.merged"
        # shellcheck disable=SC2086
        if "$bin" $FLAGS -merge=1 "$corpus.merged" "$corpus" >"$dir/logs/$t.merge.log" 2>&1; then
            rm -rf "$corpus"
            mv "$corpus.merged" "$corpus"
            echo "fuzz $t: corpus $before -> $(find "$corpus" -type f | wc -l) files"
            passed=$((passed + 1))
        else
            rm -rf "$corpus.merged"
            echo "fuzz $t: merge failed; log $dir/logs/$t.merge.log"
            failed=$((failed + 1))
        fi
        continue
    fi
    art=$dir/artifacts/$t/
    log=$dir/logs/$t.log
    regs=$here/regressions/$t
    mkdir -p "$corpus" "$art"
    ok=1

    # 1. Regressions: each file once.
    nreg=0
    if [ -d "$regs" ]; then
        nreg=$(find "$regs" -type f ! -name '.*' | wc -l)
    fi
    if [ "$nreg" -gt 0 ]; then
        # shellcheck disable=SC2086
        if ! timeout "$limit" "$bin" $FLAGS -runs=1 $(find "$regs" -type f ! -name '.*' | sort) \
                >"$dir/logs/$t.regressions.log" 2>&1; then
            echo "fuzz $t: a regression input fails again:"
            grep -E 'Running:|FUZZ CHECK|ERROR|SUMMARY' "$dir/logs/$t.regressions.log" | tail -n 20
            ok=0
        fi
    fi

    # 2. Fuzzing.
    seeds=
    for s in $SEEDS "$regs"; do
        [ -d "$s" ] && seeds="$seeds $s"
    done
    start=$(date +%s)
    # shellcheck disable=SC2086
    timeout "$limit" "$bin" $FLAGS -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$art" "$corpus" $seeds >"$log" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    units=$(find "$corpus" -type f | wc -l)
    if [ "$rc" -ne 0 ]; then
        ok=0
        echo "fuzz $t: FAILED (exit $rc) after ${took}s; log $log"
        grep -E -A2 'FUZZ CHECK|ERROR: [A-Z]|runtime error' "$log" | grep -v -E '^ +#|^--' | head -n 8
        # The stack without libFuzzer's and the C library's frames.
        grep -E '^ +#[0-9]+ ' "$log" | grep -v -E 'fuzzer::|__sanitizer|libc\.so|nptl|stdlib/|signal/|csu/|_start' |
            head -n 10
        sed -n 's/.*Test unit written to /  input: /p' "$log"
    fi
    echo "fuzz $t: ${execs:-?} executions in ${took}s, $nreg regression inputs, corpus $units files"
    if [ "$ok" -eq 1 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
done

echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
