#!/bin/sh
# podman-service.sh — a private, rootful Podman API service for the docker
# provider's tests.
#
#   tests/services/podman/podman-service.sh [--env-file FILE] [-- COMMAND ...]
#
# Starts `podman system service` on unix://<tmpdir>/podman.sock with its own
# storage (--root/--runroot/--tmpdir under the temp dir, so the host's images
# and containers are never touched), imports a tiny test image built from
# this host's /bin/sh and a few coreutils (no registry is reachable), and
# prints
#   SBX_TEST_DOCKER_SOCK=<tmpdir>/podman.sock
#   SBX_TEST_DOCKER_IMAGE=localhost/sbx-test:latest
# With a COMMAND it runs it with those variables exported and exits with its
# status; without one it waits until SIGINT/SIGTERM. Either way, at exit it
# removes every container of the private store, stops the service and
# deletes the temp dir. --env-file also writes the two lines to FILE once the
# service answers (for a caller that runs this in the background).
#
# Cost on the 2-core dev box (measured): image build + import 0.4-0.5 s,
# service answering 0.07-0.08 s later, teardown 0.04-0.16 s; each phase's
# time is printed on stderr. test_docker under it takes ~45 s (~60 s ASan).
#
# Needs root, podman (4.3), runc, conmon, curl, ldd. Storage driver:
# overlay, falling back to vfs if overlay cannot mount here, or
# SBX_PODMAN_STORAGE_DRIVER to choose.
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
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sbx-podman.XXXXXX")
SOCK=$WORK/podman.sock
SVC_PID=
export CONTAINERS_CONF="$HERE/containers.conf"

case $WORK in *[[:space:]]*) echo "podman-service: TMPDIR must not contain spaces" >&2; exit 2 ;; esac
DRIVER=${SBX_PODMAN_STORAGE_DRIVER:-overlay}
set_flags() {
    PODMAN_FLAGS="--root $WORK/root --runroot $WORK/runroot --tmpdir $WORK/libpod
        --volumepath $WORK/volumes --network-config-dir $WORK/net
        --storage-driver $DRIVER --cgroup-manager cgroupfs --events-backend file"
}
set_flags
# shellcheck disable=SC2086 # PODMAN_FLAGS is split on purpose
pm() { podman $PODMAN_FLAGS "$@"; }

ms() { date +%s%3N; }
phase() { echo "podman-service: $1 in $(( $(ms) - $2 )) ms" >&2; }

cleanup() {
    rc=$?
    trap - EXIT INT TERM
    t=$(ms)
    pm rm --all --force --time 0 >/dev/null 2>&1 || true
    if [ -n "$SVC_PID" ]; then
        kill "$SVC_PID" 2>/dev/null || true
        wait "$SVC_PID" 2>/dev/null || true
    fi
    # Storage keeps its own mounts (overlay home, shm); take them down
    # deepest first before deleting the tree.
    grep -o " $WORK/[^ ]*" /proc/self/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$WORK"
    phase "stopped and cleaned" "$t"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

# ---- the test image: /bin/sh and a few tools with the libraries they load ----
t=$(ms)
ROOTFS=$WORK/rootfs
sh "$HERE/../test-rootfs.sh" "$ROOTFS"
import_image() {
    tar -C "$ROOTFS" -cf - . | pm import --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null 2>"$WORK/import.log"
}
if ! import_image; then
    # overlay cannot mount where the temp dir itself sits on overlayfs
    # (some CI containers); vfs always works, only slower to create.
    if [ "$DRIVER" = overlay ] && [ -z "${SBX_PODMAN_STORAGE_DRIVER:-}" ]; then
        echo "podman-service: overlay storage failed, using vfs:" >&2
        cat "$WORK/import.log" >&2
        grep -o " $WORK/[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
        rm -rf "$WORK/root" "$WORK/runroot" "$WORK/libpod"
        DRIVER=vfs
        set_flags
        import_image || { cat "$WORK/import.log" >&2; exit 1; }
    else
        cat "$WORK/import.log" >&2
        exit 1
    fi
fi
rm -rf "$ROOTFS"
phase "image $IMAGE imported" "$t"

# ---- the service ----
t=$(ms)
# Not through pm(): $! must be podman itself (the subshell execs it), to
# stop it. Its working directory is $WORK because the conmon of every
# container inherits it, and conmon 2.1 creates an empty file `oom` in its
# working directory when the container is OOM-killed (test_docker's memory
# limit test does that): from the caller's directory that was the repo root.
# shellcheck disable=SC2086
(cd "$WORK" && exec podman $PODMAN_FLAGS system service --time=0 "unix://$SOCK") >"$WORK/service.log" 2>&1 &
SVC_PID=$!
deadline=$(( $(ms) + 30000 ))
until curl -sf --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; do
    if ! kill -0 "$SVC_PID" 2>/dev/null || [ "$(ms)" -gt "$deadline" ]; then
        echo "podman-service: service did not come up:" >&2
        cat "$WORK/service.log" >&2
        exit 1
    fi
    sleep 0.05
done
phase "service answering on $SOCK" "$t"

export SBX_TEST_DOCKER_SOCK="$SOCK" SBX_TEST_DOCKER_IMAGE="$IMAGE"
echo "SBX_TEST_DOCKER_SOCK=$SOCK"
echo "SBX_TEST_DOCKER_IMAGE=$IMAGE"
if [ -n "$ENV_FILE" ]; then
    printf 'SBX_TEST_DOCKER_SOCK=%s\nSBX_TEST_DOCKER_IMAGE=%s\n' "$SOCK" "$IMAGE" >"$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
fi

if [ $# -gt 0 ]; then
    set +e
    "$@"
    status=$?
    set -e
    exit "$status"
fi
# No command: serve until told to stop (the service dying ends us too).
wait "$SVC_PID"
