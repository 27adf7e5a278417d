#!/bin/sh
# install-deps.sh — make a Debian 12 machine able to build and test sbx.
#
# `make` runs this once through its deps stamp, and so do CI and the
# Dockerfile. It looks first and installs only what is missing, so on a
# machine that has everything it costs a few pkg-config and `command -v`
# checks and never touches apt. Each check names the Debian package that
# satisfies it; everything missing goes into one `apt-get install`.
#
# SBX_DEPS=build limits the set to what compiling needs (the Dockerfile's
# build stage); the default, SBX_DEPS=all, adds the real services and tools
# the test suite runs: PostgreSQL 15, Redis, Kafka (through Java and Maven),
# bubblewrap, slirp4netns and nftables (networked builds), Podman,
# mmdebstrap and podman-compose (the images), kcat, valgrind, clang,
# systemd-analyze, pytest, psycopg and jsonschema (the CLI's --json against schemas/).
#
# Java, Node.js and npm are checked by command only: a machine may carry them
# from elsewhere (a vendor JDK, NodeSource's nodejs with its own npm), and
# Debian's packages would conflict with or duplicate those. Go is not this
# script's: only make bench's River peer (tests/bench/river) uses it, and
# tests/bench/bench.mk checks for it (its go.mod asks for Go 1.26, which a
# Go of 1.21 or later fetches by itself and Debian 12's golang-go, 1.19,
# cannot).
set -eu

mode=${SBX_DEPS:-all}
case $mode in
    all|build) ;;
    *) echo "install-deps: SBX_DEPS must be 'all' or 'build', not '$mode'" >&2; exit 2 ;;
esac

missing=""       # Debian packages to install
pip_missing=""   # Python modules for a python3 that is not Debian's
need() { case " $missing " in *" $1 "*) ;; *) missing="$missing $1" ;; esac; }
have() { command -v "$1" >/dev/null 2>&1; }
pc() { have pkg-config && pkg-config --exists "$1"; }

# --- building -------------------------------------------------------------
have cc && have make || need build-essential
have pkg-config || need pkg-config
pc rdkafka  || need librdkafka-dev
pc hiredis  || need libhiredis-dev
pc libpq    || need libpq-dev
pc libcurl  || need libcurl4-openssl-dev
pc json-c   || need libjson-c-dev
pc cmocka   || need libcmocka-dev
pc libmicrohttpd || need libmicrohttpd-dev
pc libseccomp || need libseccomp-dev

if [ "$mode" = all ]; then
    # --- services the tests start -----------------------------------------
    # tests/services/sbxsvc.py runs PostgreSQL 15's own binaries as user
    # postgres, which the server package creates.
    [ -x /usr/lib/postgresql/15/bin/postgres ] && [ -x /usr/lib/postgresql/15/bin/initdb ] \
        && id postgres >/dev/null 2>&1 || need postgresql
    have psql || need postgresql-client
    have redis-server || need redis-server
    have redis-cli || need redis-tools
    have java || need openjdk-17-jre-headless
    have mvn || need maven

    # --- providers --------------------------------------------------------
    have bwrap || need bubblewrap
    # A networked build's NAT and egress filter (common/netns.c); nft and
    # ip live in /usr/sbin, which a non-root PATH may lack.
    have slirp4netns || need slirp4netns
    have nft || [ -x /usr/sbin/nft ] || need nftables
    have ip || [ -x /usr/sbin/ip ] || [ -x /bin/ip ] || need iproute2
    have podman || need podman
    # Docker Engine itself, the docker provider's second engine in the tests
    # (tests/services/dockerd/dockerd-service.sh starts a private one; so
    # does tests/services/remote-docker/, with TLS). It lives in /usr/sbin,
    # which a non-root PATH may lack.
    have dockerd || [ -x /usr/sbin/dockerd ] || need docker.io
    have runc || need runc
    have newuidmap || need uidmap
    # Remote docker hosts (tests/services/remote-docker/): an sshd to tunnel
    # through (in /usr/sbin too), and the worker's ssh client.
    have sshd || [ -x /usr/sbin/sshd ] || need openssh-server
    have ssh || need openssh-client
    # The images and the compose stack (docker/images.mk, tests/e2e/test_images.py):
    # a Debian base from the mirror, no registry.
    have mmdebstrap || need mmdebstrap
    have podman-compose || need podman-compose

    # --- test tools -------------------------------------------------------
    have node || need nodejs
    have npm || need npm
    have kcat || need kcat
    # tests/e2e/test_tls.py makes its CA and certificates with it.
    have openssl || need openssl
    have valgrind || need valgrind
    have clang || need clang
    # libFuzzer (make fuzz-smoke) is only a Recommends of clang-14.
    ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 \
        || need libclang-rt-14-dev
    have ps || need procps
    # systemd-analyze verify checks the units of docker/systemd/ (tests/e2e/test_ops.py);
    # the package installs without systemd running as init.
    have systemd-analyze || need systemd
    # The web console's browser test (tests/e2e/test_console.py): Debian's
    # headless Chromium and its driver, driven by Selenium (below).
    have chromium || need chromium
    have chromedriver || need chromium-driver

    # pytest, psycopg, selenium and jsonschema belong to whichever python3 runs the
    # tests. For Debian's own interpreter they come from apt (pip is refused
    # there, PEP 668); any other python3 (pyenv, a venv) gets them from pip,
    # selenium pinned to Debian 12's version so both paths test the same.
    if ! have python3; then
        need python3; need python3-pytest; need python3-psycopg; need python3-selenium; need python3-jsonschema
    else
        # One interpreter start (a pyenv shim costs ~0.1 s): its prefix, then
        # the modules it lacks.
        py=$(python3 -c '
import importlib.util as u, sys
print(sys.prefix, *[m for m in ("pytest", "psycopg", "selenium", "jsonschema") if u.find_spec(m) is None])' 2>/dev/null) || py="? pytest psycopg selenium jsonschema"
        set -- $py
        prefix=$1; shift
        for mod in "$@"; do
            if [ "$prefix" = /usr ]; then need "python3-$mod"
            elif [ "$mod" = selenium ]; then pip_missing="$pip_missing selenium==4.8.3"
            else pip_missing="$pip_missing $mod"; fi
        done
        # The Python client's tests install into a venv (producers/clients.mk);
        # Debian splits venv's ensurepip into python3-venv.
        [ "$prefix" = /usr ] && ! python3 -c 'import ensurepip' >/dev/null 2>&1 && need python3-venv
    fi
fi

if [ -z "$missing" ] && [ -z "$pip_missing" ]; then
    exit 0
fi

# --- install ----------------------------------------------------------------
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ] || ! have apt-get || [ ! -r /etc/debian_version ]; then
        echo "install-deps: sbx needs these Debian 12 packages (or your system's equivalents):" >&2
        echo "   $missing" >&2
        [ -n "$pip_missing" ] && echo "   and for python3: pip install$pip_missing" >&2
        echo "install-deps: run 'sudo sh docker/install-deps.sh' on Debian, or install them yourself and re-run make." >&2
        exit 1
    fi
    echo "install-deps: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Quiet on success, the whole log on failure: CI shows why, not apt's chatter.
    log=$(mktemp)
    if ! { apt-get -o DPkg::Lock::Timeout=300 update -q && apt-get -o DPkg::Lock::Timeout=300 install -y -q$missing; } </dev/null >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        rm -f "$log"
        echo "install-deps: apt-get failed installing:$missing" >&2
        exit 1
    fi
    rm -f "$log"
fi

if [ -n "$pip_missing" ]; then
    echo "install-deps: pip installing$pip_missing for $(command -v python3)" >&2
    if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check$pip_missing </dev/null; then
        echo "install-deps: 'python3 -m pip install$pip_missing' failed" >&2
        exit 1
    fi
fi

# --- check again: a package that installed but did not provide the thing ---
still=""
for m in rdkafka hiredis libpq libcurl json-c cmocka libmicrohttpd libseccomp; do pc "$m" || still="$still pkg-config:$m"; done
if [ "$mode" = all ]; then
    for c in cc make psql redis-server java mvn bwrap slirp4netns podman runc newuidmap mmdebstrap podman-compose node npm kcat valgrind clang python3; do
        have "$c" || still="$still $c"
    done
    for mod in pytest psycopg selenium jsonschema; do python3 -c "import $mod" >/dev/null 2>&1 || still="$still python3:$mod"; done
fi
if [ -n "$still" ]; then
    echo "install-deps: still missing after install:$still" >&2
    exit 1
fi
echo "install-deps: done" >&2
