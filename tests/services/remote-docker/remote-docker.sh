#!/bin/sh
# remote-docker.sh — a Docker engine reached the two ways a remote host is:
# over TLS with client certificates, and over SSH. For the docker provider's
# remote-host tests (tests/unit/test_docker_remote.c).
#
#   tests/services/remote-docker/remote-docker.sh [-- COMMAND ...]
#
# Everything is private to a temp dir and bound to 127.0.0.1:
#  - certificates made here with openssl: a CA, the engine's server
#    certificate (SAN IP:127.0.0.1), a client certificate, and a second CA
#    with a client certificate of its own (the "wrong CA"), also laid out as
#    SBX_DOCKER_CERT_DIR wants them (certs/hosts/<name>/, see below);
#  - a dockerd (Debian's docker.io) with its own --data-root, --exec-root,
#    --pidfile, no bridge and no iptables, listening on a unix socket and on
#    tcp://127.0.0.1:<free port> with --tlsverify (a client certificate
#    signed by the CA is required);
#  - the test image sbx-test:latest, built from this host's /bin/sh and a few
#    coreutils and imported with `docker import` (no registry is reachable);
#  - an sshd on 127.0.0.1:<free port> with its own host key and config, that
#    lets root in with a key made here (PermitRootLogin prohibit-password),
#    plus a known_hosts file holding its host key, one holding another key
#    for it (a changed host key) and an empty one (an unknown host).
# It exports SBX_TEST_RD_* (see the end) and runs COMMAND, or waits for
# SIGINT/SIGTERM without one; at exit it stops both daemons, removes what
# dockerd mounted and deletes the temp dir.
#
# Needs root, dockerd/containerd/runc (docker.io), sshd and ssh
# (openssh-server, openssh-client), openssl, curl, ldd.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)

while [ $# -gt 0 ]; do
    case $1 in
    --) shift; break ;;
    *) echo "usage: $0 [-- COMMAND ...]" >&2; exit 2 ;;
    esac
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sbx-rdocker.XXXXXX")
chmod 700 "$WORK"
DOCKERD_PID=
SSHD_PID=
ms() { date +%s%3N; }
phase() { echo "remote-docker: $1 in $(( $(ms) - $2 )) ms" >&2; }

cleanup() {
    rc=$?
    trap - EXIT INT TERM
    t=$(ms)
    [ -n "$SSHD_PID" ] && { kill "$SSHD_PID" 2>/dev/null || true; wait "$SSHD_PID" 2>/dev/null || true; }
    if [ -n "$DOCKERD_PID" ]; then
        curl -s --max-time 5 --unix-socket "$WORK/docker.sock" -X POST \
            "http://d/containers/prune" >/dev/null 2>&1 || true
        kill "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
    fi
    grep -o " $WORK/[^ ]*" /proc/self/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$WORK"
    phase "stopped and cleaned" "$t"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

# A port nobody listens on now (a race with another binder is possible but
# the daemon then fails to start, loudly).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- certificates ----
t=$(ms)
C=$WORK/certs
mkdir -p "$C"
ossl() { openssl "$@" >/dev/null 2>&1; }
mkca() { # dir subject
    ossl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$2" \
        -keyout "$1/ca-key.pem" -out "$1/ca.pem"
}
mkcert() { # cadir out subject extfile
    ossl req -newkey rsa:2048 -nodes -subj "/CN=$3" -keyout "$2-key.pem" -out "$2.csr"
    ossl x509 -req -in "$2.csr" -CA "$1/ca.pem" -CAkey "$1/ca-key.pem" -CAcreateserial \
        -days 2 -extfile "$4" -out "$2.pem"
    rm -f "$2.csr"
}
mkdir -p "$C/good" "$C/wrong"
mkca "$C/good" "sbx test CA"
mkca "$C/wrong" "sbx wrong CA"
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$C/server.ext"
printf 'extendedKeyUsage=clientAuth\n' >"$C/client.ext"
mkcert "$C/good" "$C/server" "127.0.0.1" "$C/server.ext"
mkcert "$C/good" "$C/client" "sbx-worker" "$C/client.ext"
mkcert "$C/wrong" "$C/wrongclient" "sbx-worker" "$C/client.ext"
chmod 600 "$C"/*-key.pem "$C"/*/ca-key.pem
# Docker's layout for SBX_DOCKER_CERT_DIR, per host name: "tls" has the
# right files, "badca" trusts the wrong CA, "badclient" shows a client
# certificate of the wrong CA.
layout() { # host ca cert key
    mkdir -p "$C/hosts/$1"
    cp "$2" "$C/hosts/$1/ca.pem"; cp "$3" "$C/hosts/$1/cert.pem"; cp "$4" "$C/hosts/$1/key.pem"
}
layout tls "$C/good/ca.pem" "$C/client.pem" "$C/client-key.pem"
layout badca "$C/wrong/ca.pem" "$C/client.pem" "$C/client-key.pem"
layout badclient "$C/good/ca.pem" "$C/wrongclient.pem" "$C/wrongclient-key.pem"
phase "certificates made" "$t"

# ---- dockerd ----
t=$(ms)
SOCK=$WORK/docker.sock
TLS_PORT=$(free_port)
# Its working directory is $WORK: nothing it or its shims write lands in the
# caller's directory.
(cd "$WORK" && exec dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" \
    --pidfile "$WORK/dockerd.pid" -H "unix://$SOCK" -H "tcp://127.0.0.1:$TLS_PORT" \
    --tlsverify --tlscacert "$C/good/ca.pem" --tlscert "$C/server.pem" --tlskey "$C/server-key.pem" \
    --bridge=none --iptables=false --ip-masq=false --userland-proxy=false \
    --containerd-namespace "sbx-rd-$$" --containerd-plugins-namespace "sbx-rd-p-$$" \
    ${SBX_DOCKERD_STORAGE_DRIVER:+--storage-driver "$SBX_DOCKERD_STORAGE_DRIVER"}) \
    >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
deadline=$(( $(ms) + 60000 ))
until curl -sf --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; do
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null || [ "$(ms)" -gt "$deadline" ]; then
        echo "remote-docker: dockerd did not come up:" >&2
        tail -n 30 "$WORK/dockerd.log" >&2
        exit 1
    fi
    sleep 0.1
done
phase "dockerd answering on $SOCK and tcp://127.0.0.1:$TLS_PORT (TLS)" "$t"

# ---- the test image ----
t=$(ms)
IMAGE=sbx-test:latest
ROOTFS=$WORK/rootfs
sh "$HERE/../test-rootfs.sh" "$ROOTFS"
# The engine API's import (POST /images/create?fromSrc=-), so no docker CLI
# is needed beside dockerd.
tar -C "$ROOTFS" -cf - . | curl -sf --max-time 60 --unix-socket "$SOCK" -X POST \
    -H 'Content-Type: application/x-tar' --data-binary @- \
    "http://d/images/create?fromSrc=-&repo=sbx-test&tag=latest&changes=CMD%20%5B%22%2Fbin%2Fsh%22%5D" \
    >"$WORK/import.log" || { echo "remote-docker: image import failed:" >&2; cat "$WORK/import.log" >&2; exit 1; }
rm -rf "$ROOTFS"
phase "image $IMAGE imported" "$t"

# ---- sshd ----
t=$(ms)
S=$WORK/ssh
mkdir -p "$S"
ssh-keygen -q -t ed25519 -N '' -C sbx-test-host -f "$S/host_key"
ssh-keygen -q -t ed25519 -N '' -C sbx-test-other -f "$S/other_host_key"
ssh-keygen -q -t ed25519 -N '' -C sbx-worker -f "$S/id_ed25519"
cp "$S/id_ed25519.pub" "$S/authorized_keys"
SSH_PORT=$(free_port)
printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$S/host_key.pub")" >"$S/known_hosts"
printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$S/other_host_key.pub")" >"$S/known_hosts.wrong"
: >"$S/known_hosts.empty"
cat >"$S/sshd_config" <<CONF
ListenAddress 127.0.0.1:$SSH_PORT
HostKey $S/host_key
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding local
AllowStreamLocalForwarding local
PermitTTY no
X11Forwarding no
CONF
# sshd refuses to start without its privilege-separation directory.
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$S/sshd_config" >"$WORK/sshd.log" 2>&1 &
SSHD_PID=$!
deadline=$(( $(ms) + 10000 ))
until ssh -F none -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$S/known_hosts" \
        -o GlobalKnownHostsFile=/dev/null -i "$S/id_ed25519" -p "$SSH_PORT" root@127.0.0.1 true 2>/dev/null; do
    if ! kill -0 "$SSHD_PID" 2>/dev/null || [ "$(ms)" -gt "$deadline" ]; then
        echo "remote-docker: sshd did not come up:" >&2
        cat "$WORK/sshd.log" >&2
        exit 1
    fi
    sleep 0.1
done
phase "sshd answering on 127.0.0.1:$SSH_PORT" "$t"

export SBX_TEST_RD_IMAGE="$IMAGE"
export SBX_TEST_RD_SOCK="$SOCK"
export SBX_TEST_RD_TLS="127.0.0.1:$TLS_PORT"
export SBX_TEST_RD_CERTS="$C"
export SBX_TEST_RD_SSH="root@127.0.0.1:$SSH_PORT"
export SBX_TEST_RD_SSH_DIR="$S"
env | grep '^SBX_TEST_RD_' | sort

if [ $# -gt 0 ]; then
    set +e
    "$@"
    status=$?
    set -e
    exit "$status"
fi
wait "$DOCKERD_PID"
