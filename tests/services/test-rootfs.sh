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
# No /workspace: runc gives a tmpfs the mode of the directory it covers, and
# the provider's workspace tmpfs must stay as the provider mounts it.
set -eu

ROOTFS=${1:?usage: test-rootfs.sh DIR}
mkdir -p "$ROOTFS/bin" "$ROOTFS/etc" "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev" "$ROOTFS/tmp"
chmod 1777 "$ROOTFS/tmp"
# The files themselves, not shell builtins: argv jobs exec "echo" directly.
for tool in sh echo printf true false cat cp sleep id ls head tail yes dd wc tr seq mkdir touch env date; do
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
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOTFS/etc/group"
