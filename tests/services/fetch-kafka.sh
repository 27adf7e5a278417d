#!/bin/sh
# fetch-kafka.sh — put a Kafka 3.9.x broker's jars in the cache, print where.
#
# The test broker is the real Kafka, run from its Maven Central jars rather
# than a tarball: Maven Central is a registry every machine here reaches, and
# `mvn dependency:copy-dependencies` resolves the exact runtime classpath.
# 3.9.1 is tried first, then 3.9.0. The jars land in
#   ${SBX_CACHE:-~/.cache/sbx}/kafka-<version>/libs
# and a `.complete` stamp beside them marks a finished copy, so a second run
# only looks for the stamp. A lock serialises concurrent first runs.
#
# Prints the libs directory on stdout; everything else goes to stderr.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache=${SBX_CACHE:-${HOME:-/root}/.cache/sbx}
versions=${SBX_KAFKA_VERSIONS:-"3.9.1 3.9.0"}

cached() {
    for v in $versions; do
        if [ -f "$cache/kafka-$v/.complete" ]; then
            echo "$cache/kafka-$v/libs"
            return 0
        fi
    done
    return 1
}

cached && exit 0

mkdir -p "$cache"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache/.kafka-fetch.lock"
    flock -w 600 9 || { echo "fetch-kafka: waited 600 s for $cache/.kafka-fetch.lock" >&2; exit 1; }
    cached && exit 0
fi

command -v mvn >/dev/null 2>&1 || { echo "fetch-kafka: mvn not found (sh docker/install-deps.sh installs maven)" >&2; exit 1; }

for v in $versions; do
    dest="$cache/kafka-$v"
    tmp="$dest.tmp.$$"
    rm -rf "$tmp"
    echo "fetch-kafka: fetching org.apache.kafka:kafka_2.13:$v and its runtime dependencies" >&2
    log="$cache/kafka-$v.fetch.log"
    if mvn -B -q -f "$here/kafka/pom.xml" -Dkafka.version="$v" \
            dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$tmp/libs" </dev/null >"$log" 2>&1 \
        && ls "$tmp/libs"/kafka_2.13-"$v".jar >/dev/null 2>&1; then
        rm -rf "$dest"
        mv "$tmp" "$dest"
        touch "$dest/.complete"
        rm -f "$log"
        echo "$dest/libs"
        exit 0
    fi
    rm -rf "$tmp"
    echo "fetch-kafka: kafka $v failed; last lines of $log:" >&2
    tail -n 20 "$log" >&2
done
echo "fetch-kafka: no Kafka version of '$versions' could be fetched" >&2
exit 1
