#!/bin/sh
# base-image.sh — the Debian 12 base every sbx image is built FROM, made
# from Debian's own packages (no registry is needed or reachable), and
# imported into Podman as localhost/sbx-debian:bookworm.
#
#   sh docker/base-image.sh        prints the image name on stdout
#
# Why mmdebstrap and not `FROM debian:12`: the machines that build sbx reach
# a Debian mirror (apt works) but no container registry. mmdebstrap builds a
# minbase bookworm (apt, dpkg, coreutils, dash; 78 MB unpacked, 25 s) into
# a tarball from the mirror the host's own apt uses; `podman import` turns it
# into a one-layer image. dpkg is told, in the image, to leave out man pages,
# docs and locales, so every package later installed on top stays small too;
# apt installs no Recommends. Merged /usr is set up the way debootstrap does
# (mmdebstrap's merged-usr hook: the symlinks and usr-is-merged), not by
# the usrmerge package, which would pull in perl (~48 MB) for a one-time
# conversion. /usr/share/man/man1 exists, empty, because
# some maintainer scripts (the JRE's update-alternatives) link into it.
#
# Cache. The tarball is kept in ${SBX_CACHE:-~/.cache/sbx}/images/, named by
# a hash of everything that decides its content (suite, mirrors, variant,
# the options below), like the Kafka jars beside it. A run finds, in order:
# the image in Podman with the same key in its label (nothing to do, ~0.1 s),
# the tarball (import only, ~3 s), or nothing (mmdebstrap, ~25 s). Delete
# the directory to rebuild from newer packages.
#
# Needs root (mmdebstrap --mode=root, rootful Podman), mmdebstrap and podman
# (docker/install-deps.sh installs both).
set -eu

image=${SBX_BASE_IMAGE:-localhost/sbx-debian:bookworm}
suite=bookworm
cache=${SBX_CACHE:-${HOME:-/root}/.cache/sbx}/images

# The mirror: the host's own Debian source when it has one (deb822 or
# one-line format), else deb.debian.org.
mirror=
for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -r "$f" ] || continue
    mirror=$(sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*debian\/\{0,1\}\)$/\1/p' \
                    -e 's/^deb[[:space:]]\{1,\}\(http[^[:space:]]*debian\/\{0,1\}\)[[:space:]]\{1,\}bookworm[[:space:]].*/\1/p' "$f" | head -n 1)
    [ -n "$mirror" ] && break
done
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}
security=$(echo "$mirror" | sed 's,/debian$,/debian-security,')

set -- --variant=minbase --mode=root --format=tar \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --customize-hook='mkdir -p "$1/usr/share/man/man1"' \
    "$suite" - \
    "deb $mirror $suite main" \
    "deb $mirror $suite-updates main" \
    "deb $security $suite-security main"
key=$(printf '%s\n' "$@" | sha256sum | cut -c1-16)
tar=$cache/sbx-debian-$suite-$key.tar

have=$(podman image inspect --format '{{index .Labels "sbx.base.key"}}' "$image" 2>/dev/null || true)
if [ "$have" = "$key" ]; then
    echo "$image"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.base-image.lock"
flock -w 600 9 || { echo "base-image: waited 600 s for $cache/.base-image.lock" >&2; exit 1; }

if [ ! -s "$tar" ]; then
    command -v mmdebstrap >/dev/null 2>&1 \
        || { echo "base-image: mmdebstrap not found (sh docker/install-deps.sh installs it)" >&2; exit 1; }
    echo "base-image: mmdebstrap $suite from $mirror into $tar" >&2
    log=$cache/sbx-debian-$suite.log
    if ! mmdebstrap "$@" >"$tar.tmp" 2>"$log"; then
        tail -n 30 "$log" >&2
        rm -f "$tar.tmp"
        echo "base-image: mmdebstrap failed (log: $log)" >&2
        exit 1
    fi
    mv "$tar.tmp" "$tar"
    rm -f "$log"
    # Tarballs of other keys are superseded: one base per suite is kept.
    for old in "$cache/sbx-debian-$suite-"*.tar; do
        [ "$old" = "$tar" ] || rm -f "$old"
    done
fi

echo "base-image: importing $tar as $image" >&2
podman import --quiet \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL sbx.base.key=$key" \
    --change 'ENV LANG=C.UTF-8' \
    "$tar" "$image" >/dev/null
echo "$image"
