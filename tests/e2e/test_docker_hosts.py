"""test_docker_hosts.py — the docker provider's remote-host settings as the
worker reads them (issue 15, item 2): a host the worker could only reach
unsafely stops start-up with one line naming the setting and the fix, and
`--check-config` says the same before anything connects.

No service is needed: the settings are checked before the worker connects
to anything (the jobs over TLS and SSH run in tests/unit/test_docker_remote.c,
`make unit-remote`, against a real dockerd and sshd).
"""

import os
import subprocess

import pytest

# Required settings with nothing behind them: start-up stops before any
# connection, so none is made.
BASE = {"SBX_BROKERS": "127.0.0.1:9", "SBX_DATABASE_URL": "postgresql://sbx@127.0.0.1:9/sbx",
        "SBX_WORKER_ID": "w-dockerhosts", "SBX_PROVIDER": "docker",
        "SBX_DOCKER_CERT_DIR": "/nonexistent/sbx-certs"}


def run_worker(sbx_bin, env, *args):
    full = {k: v for k, v in os.environ.items() if not k.startswith("SBX_")}
    full.update(BASE, **env)
    return subprocess.run([str(sbx_bin / "sbx-worker"), *args], env=full, capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


REFUSED = [
    ({"SBX_DOCKER_HOSTS": "vps1=tcp://10.0.0.5:2375@8"},
     ["SBX_DOCKER_HOSTS", "host vps1", "tcp://10.0.0.5:2375", "SBX_DOCKER_INSECURE_TCP=1",
      "https://", "ssh://"]),
    ({"SBX_DOCKER_HOSTS": "a=unix:///run/docker.sock@2,b=http://docker.example:2375@2"},
     ["host b", "SBX_DOCKER_INSECURE_TCP=1"]),
    ({"SBX_DOCKER_HOSTS": "vps2=https://10.0.0.6:2376@8"},
     ["SBX_DOCKER_CERT_DIR", "/nonexistent/sbx-certs/vps2/ca.pem"]),
    ({"SBX_DOCKER_HOSTS": "vps3=ssh://root@10.0.0.7@8"},
     ["SBX_DOCKER_SSH_KNOWN_HOSTS is not set", "ssh-keyscan"]),
    ({"SBX_DOCKER_HOSTS": "vps4=ssh://root@-oProxyCommand=x@8"},
     ["SBX_DOCKER_HOSTS: host vps4 has endpoint", "ssh://user@host"]),
]


@pytest.mark.parametrize("env,words", REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_unsafe_or_incomplete_host_stops_startup(sbx_bin, env, words):
    for args in ([], ["--check-config"]):
        r = run_worker(sbx_bin, env, *args)
        assert r.returncode != 0, r.stdout + r.stderr
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1, r.stderr
        for w in words:
            assert w in lines[0], (w, lines[0])


def test_loopback_and_opt_in_accepted(sbx_bin):
    """tcp:// to loopback needs nothing; to another address it needs the
    explicit SBX_DOCKER_INSECURE_TCP=1. Either way the settings pass and
    --check-config goes on to the services, the docker hosts among them
    (none is there: exit 1, one PROBLEM line per host on stdout, no
    settings error on stderr)."""
    for env in ({"SBX_DOCKER_HOSTS": "lo=tcp://127.0.0.1:2375@2,v6=http://[::1]:2375@1"},
                {"SBX_DOCKER_HOSTS": "vps1=tcp://10.0.0.5:2375@8", "SBX_DOCKER_INSECURE_TCP": "1"}):
        r = run_worker(sbx_bin, env, "--check-config")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "SBX_DOCKER_INSECURE_TCP=%s" % env.get("SBX_DOCKER_INSECURE_TCP", "0") in r.stdout
        assert "SBX_DOCKER_HOSTS" not in r.stderr and "docker host" not in r.stderr, r.stderr
        for name in [h.split("=")[0] for h in env["SBX_DOCKER_HOSTS"].split(",")]:
            assert "docker %s: PROBLEM: " % name in r.stdout, r.stdout
