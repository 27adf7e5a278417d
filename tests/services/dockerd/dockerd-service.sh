#!/bin/sh
# dockerd-service.sh — a private Docker Engine (dockerd) for the docker
# provider's tests, the twin of tests/services/podman/podman-service.sh.
#
#   tests/services/dockerd/dockerd-service.sh [--env-file FILE] [-- COMMAND ...]
#
# Starts dockerd on unix://<tmpdir>/docker.sock with its own --data-root,
# --exec-root and --pidfile under the temp dir (so no system dockerd, image
# or container is touched; dockerd starts its own containerd under the exec
# root), without touching the host's network: no bridge, no iptables, no
# masquerading (every test container runs with NetworkMode none). It
# imports a tiny test image built from this host's /bin/sh and a few
# coreutils through the engine's own import endpoint (no registry is
# reachable), and prints
#   SBX_TEST_DOCKER_SOCK=<tmpdir>/docker.sock
#   SBX_TEST_DOCKER_IMAGE=localhost/sbx-test:latest
#   SBX_TEST_DOCKER_ENGINE=dockerd
# With a COMMAND it runs it with those variables exported and exits with its
# status; without one it waits until SIGINT/SIGTERM. Either way, at exit it
# removes every container, stops dockerd (and its containerd) and deletes
# the temp dir. --env-file also writes the lines to FILE once the engine
# answers (for a caller that runs this in the background).
#
# Cost on the 2-core dev box (measured; each phase's time is printed on
# stderr): dockerd answering 0.15-0.4 s after its start, image build +
# import 0.4-0.7 s, teardown 0.03-1.1 s. test_docker under it takes 23-28 s
# (25 s ASan), against 53-63 s under Podman.
#
# Needs root, dockerd (Debian's docker.io, 20.10), containerd, runc, curl,
# ldd, tar. Storage driver: overlay2, falling back to vfs where overlay
# cannot mount (a temp dir on overlayfs), or SBX_DOCKERD_STORAGE_DRIVER.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)

ENV_FILE=
while [ $# -gt 0 ]; do
    case $1 in
    --env-file) ENV_FILE=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [--env-file FILE] [-- COMMAND ...]" >&2; exit 2 ;;
    esac
done

IMAGE=localhost/sbx-test:latest
# The exec root holds containerd's socket, whose path must stay under the
# 108 bytes of sun_path: a short temp dir name.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sbx-dockerd.XXXXXX")
SOCK=$WORK/docker.sock
SVC_PID=

case $WORK in *[[:space:]]*) echo "dockerd-service: TMPDIR must not contain spaces" >&2; exit 2 ;; esac
DRIVER=${SBX_DOCKERD_STORAGE_DRIVER:-overlay2}

ms() { date +%s%3N; }
phase() { echo "dockerd-service: $1 in $(( $(ms) - $2 )) ms" >&2; }
api() { curl -sS --max-time 60 --unix-socket "$SOCK" "$@"; }

stop_engine() {
    if [ -n "$SVC_PID" ]; then
        kill "$SVC_PID" 2>/dev/null || true
        # dockerd stops its containers and its containerd before it exits.
        wait "$SVC_PID" 2>/dev/null || true
        SVC_PID=
    fi
    # The data root and exec root keep mounts (overlay layers, netns, shm):
    # deepest first.
    grep -o " $WORK/[^ ]*" /proc/self/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
}

cleanup() {
    rc=$?
    trap - EXIT INT TERM
    t=$(ms)
    if [ -n "$SVC_PID" ] && [ -S "$SOCK" ]; then
        for id in $(api "http://d/containers/json?all=1" 2>/dev/null | grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4); do
            api -X DELETE "http://d/containers/$id?force=1&v=1" >/dev/null 2>&1 || true
        done
    fi
    stop_engine
    rm -rf "$WORK"
    phase "stopped and cleaned" "$t"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

start_engine() {
    mkdir -p "$WORK/data" "$WORK/exec"
    # Its working directory is $WORK: nothing it or a shim writes lands in
    # the caller's directory. No system config file (--config-file points
    # at an empty one), so the host's /etc/docker/daemon.json cannot change
    # what the tests see.
    echo '{}' >"$WORK/daemon.json"
    # dockerd starts a containerd of its own under the exec root unless a
    # system one answers on /run/containerd/containerd.sock; then it uses
    # that, and a namespace of our own keeps the two apart.
    NS=sbx-test-$(basename "$WORK" | tr -cd 'a-zA-Z0-9' | tr 'A-Z' 'a-z')
    (cd "$WORK" && exec dockerd --config-file "$WORK/daemon.json" \
        -H "unix://$SOCK" --data-root "$WORK/data" --exec-root "$WORK/exec" \
        --pidfile "$WORK/dockerd.pid" --storage-driver "$DRIVER" \
        --bridge=none --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
        --userland-proxy=false --exec-opt native.cgroupdriver=cgroupfs \
        --containerd-namespace "$NS" --containerd-plugins-namespace "$NS-plugins" \
        --log-level warn) >"$WORK/dockerd.log" 2>&1 &
    SVC_PID=$!
    deadline=$(( $(ms) + 30000 ))
    until curl -sf --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; do
        if ! kill -0 "$SVC_PID" 2>/dev/null || [ "$(ms)" -gt "$deadline" ]; then
            echo "dockerd-service: dockerd did not come up:" >&2
            cat "$WORK/dockerd.log" >&2
            return 1
        fi
        sleep 0.05
    done
}

# ---- the engine ----
t=$(ms)
if ! start_engine; then
    if [ "$DRIVER" = overlay2 ] && [ -z "${SBX_DOCKERD_STORAGE_DRIVER:-}" ]; then
        echo "dockerd-service: overlay2 failed, using vfs" >&2
        stop_engine
        rm -rf "$WORK/data" "$WORK/exec"
        DRIVER=vfs
        start_engine || exit 1
    else
        exit 1
    fi
fi
phase "dockerd ($DRIVER) answering on $SOCK" "$t"

# ---- the test image: /bin/sh and a few tools with the libraries they load ----
t=$(ms)
ROOTFS=$WORK/rootfs
sh "$HERE/../test-rootfs.sh" "$ROOTFS"
# POST /images/create?fromSrc=- is `docker import`: the body is the rootfs.
tar -C "$ROOTFS" -cf "$WORK/rootfs.tar" .
if ! api -X POST -H 'Content-Type: application/x-tar' --data-binary "@$WORK/rootfs.tar" \
        "http://d/images/create?fromSrc=-&repo=localhost/sbx-test&tag=latest&changes=CMD%20%5B%22%2Fbin%2Fsh%22%5D" \
        >"$WORK/import.log" 2>&1 ||
   grep -q '"error' "$WORK/import.log" ||
   ! curl -sf --unix-socket "$SOCK" "http://d/images/$IMAGE/json" >/dev/null; then
    echo "dockerd-service: image import failed:" >&2
    cat "$WORK/import.log" >&2
    exit 1
fi
rm -rf "$ROOTFS" "$WORK/rootfs.tar"
phase "image $IMAGE imported" "$t"

export SBX_TEST_DOCKER_SOCK="$SOCK" SBX_TEST_DOCKER_IMAGE="$IMAGE" SBX_TEST_DOCKER_ENGINE=dockerd
echo "SBX_TEST_DOCKER_SOCK=$SOCK"
echo "SBX_TEST_DOCKER_IMAGE=$IMAGE"
echo "SBX_TEST_DOCKER_ENGINE=dockerd"
if [ -n "$ENV_FILE" ]; then
    printf 'SBX_TEST_DOCKER_SOCK=%s\nSBX_TEST_DOCKER_IMAGE=%s\nSBX_TEST_DOCKER_ENGINE=dockerd\n' \
        "$SOCK" "$IMAGE" >"$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
fi

if [ $# -gt 0 ]; then
    set +e
    "$@"
    status=$?
    set -e
    exit "$status"
fi
# No command: serve until told to stop (dockerd dying ends us too).
wait "$SVC_PID"
