#!/bin/sh
# test-rootfs.sh — the root filesystem of the docker tests' image, sbx-test.
#
#   tests/services/test-rootfs.sh DIR
#
# No registry is reachable from the test machines, so the image is made from
# this host's own files: /bin/sh and a few tools, each with the libraries
# ldd says it loads, a passwd and group with root and nobody, and /tmp mode
# 1777. The engine scripts (podman/podman-service.sh, dockerd/
# dockerd-service.sh, remote-docker/remote-docker.sh) each import DIR with
# their engine's own import.
#
# /bin/sbx-devserver: the preview tests' dev server (tests/devserver/devserver.c,
# static: the image has no runtime), from $SBX_DEVSERVER or the build tree's
# build/bin/sbx-devserver when it has been built (`make build/bin/sbx-devserver`;
# `make unit` and `make e2e` build it). The image is imported afresh each time
# an engine script starts, so a rebuilt dev server is always the one inside.
#
# No /workspace: runc gives a tmpfs the mode of the directory it covers, and
# the provider's workspace tmpfs must stay as the provider mounts it.
set -eu

ROOTFS=${1:?usage: test-rootfs.sh DIR}
mkdir -p "$ROOTFS/bin" "$ROOTFS/etc" "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev" "$ROOTFS/tmp"
chmod 1777 "$ROOTFS/tmp"
# The files themselves, not shell builtins: argv jobs exec "echo" directly.
for tool in sh echo printf true false cat cp sleep id ls head tail yes dd wc tr seq mkdir touch env date grep nohup; do
    path=
    for dir in /usr/bin /bin; do
        if [ -x "$dir/$tool" ]; then path=$dir/$tool; break; fi
    done
    [ -n "$path" ] || continue
    cp -L "$path" "$ROOTFS/bin/$tool"
    for lib in $(ldd "$path" 2>/dev/null | grep -o '/[^ ]*'); do
        mkdir -p "$ROOTFS$(dirname "$lib")"
        [ -e "$ROOTFS$lib" ] || cp -L "$lib" "$ROOTFS$lib"
    done
done
BUILD_DIR=${SBX_BUILD:-build}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$(cd "$(dirname "$0")/../.." && pwd)/$BUILD_DIR ;; esac
DEVSERVER=${SBX_DEVSERVER:-$BUILD_DIR/bin/sbx-devserver}
if [ -x "$DEVSERVER" ]; then
    cp "$DEVSERVER" "$ROOTFS/bin/sbx-devserver"
else
    echo "test-rootfs: no $DEVSERVER: the image has no dev server (make build/bin/sbx-devserver)" >&2
fi
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOTFS/etc/group"
