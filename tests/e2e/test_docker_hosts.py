"""test_docker_hosts.py — the docker provider's remote hosts as the worker
meets them (issue 15, item 2):

- a host the worker could only reach unsafely (plain tcp:// to a
  non-loopback address without SBX_DOCKER_INSECURE_TCP=1), or whose TLS
  files or known_hosts are missing, stops start-up with one line naming the
  setting and the fix, and `--check-config` says the same before anything
  connects (no service needed);
- a job runs end to end through sbx-worker to a Podman service behind an
  ssh:// host: the sshd of tests/services/remote-docker/remote-docker.sh on
  127.0.0.1, its host key pinned, the tunnel killed and started again
  between two jobs; and `--check-config` says "ok" for that host.

The TLS transport and the refusals of wrong certificates and host keys are
tested in tests/unit/test_docker_remote.c (`make unit-remote`) against a
real `dockerd --tlsverify`.
"""

import os
import signal
import subprocess
import time

import pytest

from conftest import REPO, wait_until
from providers import DockerBackend, _stop_proc, pgrep
from test_worker import TERMINAL, enqueue, history, job, statuses, topics  # noqa: F401

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


# --- a job through an ssh:// host ---------------------------------------------------

@pytest.fixture(scope="module")
def remote(services, tmp_path_factory):
    """Podman (the engine) and remote-docker.sh's sshd (the way in):
    {ssh dir, ssh "user@host:port", podman socket, image}."""
    logdir = tmp_path_factory.mktemp("docker-hosts")
    pm = DockerBackend(logdir)
    log = logdir / "remote-docker.log"
    rd = None
    try:
        with open(log, "ab") as out:
            rd = subprocess.Popen(["sh", str(REPO / "tests/services/remote-docker/remote-docker.sh")],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)

        def env():
            if rd.poll() is not None:
                raise RuntimeError("remote-docker.sh exited %s:\n%s" % (rd.returncode,
                                                                       log.read_text()))
            kv = dict(l.split("=", 1) for l in log.read_text().splitlines()
                      if l.startswith("SBX_TEST_RD_"))
            return kv if "SBX_TEST_RD_TLS" in kv else None
        kv = wait_until(env, 90, "remote-docker.sh's dockerd and sshd")
        yield {"ssh_dir": kv["SBX_TEST_RD_SSH_DIR"], "ssh": kv["SBX_TEST_RD_SSH"],
               "sock": pm.sock, "image": pm.image}
    finally:
        _stop_proc(rd, grace=30)
        pm.stop()


def ssh_env(remote, known_hosts="known_hosts"):
    return {"SBX_PROVIDER": "docker",
            "SBX_DOCKER_HOSTS": "vps=ssh://%s%s@2" % (remote["ssh"], remote["sock"]),
            "SBX_DOCKER_SSH_KNOWN_HOSTS": os.path.join(remote["ssh_dir"], known_hosts),
            "SBX_DOCKER_SSH_KEY": os.path.join(remote["ssh_dir"], "id_ed25519"),
            "SBX_DOCKER_IMAGE": remote["image"]}


def run_one(pg, run_sbx, topics, script, timeout=60):
    j = job("pdh-" + os.urandom(4).hex(), script)
    enqueue(run_sbx, topics, [j])
    wait_until(lambda: statuses(pg, [j["job_id"]]).get(j["job_id"]) in TERMINAL, timeout,
               "job %s terminal" % j["job_id"])
    return j["job_id"], pg.query("SELECT status, exit_code, log_tail, provider, error "
                                 "FROM sbx.runs WHERE job_id = %s", j["job_id"])[0]


def test_job_through_ssh_tunnel(remote, start_worker, topics, run_sbx, pg, sbx_bin, services):
    env = dict(ssh_env(remote), SBX_RETRY_BASE_MS=200, **topics)
    w = start_worker(**env)
    jid, (st, code, tail, prov, err) = run_one(pg, run_sbx, topics, "echo via-ssh-$((6 * 7))")
    assert (st, code, prov) == ("succeeded", 0, "docker"), (st, code, err, tail, w.tail(30))
    assert "via-ssh-42" in (tail or ""), tail
    assert history(pg, jid)[-3:] == ["provisioning", "running", "succeeded"]
    w.wait_log(r"tunnel vps up", 10)

    # The tunnel dies (its ssh killed): the worker logs it and starts a new
    # ssh; the next job runs through that one.
    pids = pgrep(r"ssh -F none .* -L [^ ]*/vps\.sock:%s" % remote["sock"])
    assert len(pids) == 1, pids
    since = os.path.getsize(w.log)
    os.kill(int(pids[0]), signal.SIGKILL)
    w.wait_log(r"tunnel vps down \(ssh killed by signal 9\); starting ssh again", 10, since)
    w.wait_log(r"tunnel vps up", 15, since)
    _, (st, code, tail, _, err) = run_one(pg, run_sbx, topics, "echo after-restart")
    assert (st, code) == ("succeeded", 0), (st, code, err, w.tail(30))
    assert "after-restart" in (tail or "")

    # --check-config reaches the host the same way.
    full = dict(os.environ, **services)
    full.update(ssh_env(remote), SBX_WORKER_ID="check-" + os.urandom(3).hex())
    r = subprocess.run([str(sbx_bin / "sbx-worker"), "--check-config"], env=full,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert "docker vps: ok, the engine answered /_ping through the ssh tunnel" in r.stdout, \
        r.stdout + r.stderr


def test_unknown_host_key_keeps_jobs_waiting(remote, start_worker, topics, run_sbx, pg):
    """A host key that is not pinned: the tunnel never comes up, the worker
    says why, and a job waits (not failed, no attempt spent) instead of
    running anywhere unverified."""
    env = dict(ssh_env(remote, "known_hosts.empty"), **topics)
    w = start_worker(**env)
    w.wait_log(r"tunnel vps down \(ssh: Host key verification failed\.\)", 15)
    j = job("pdh-" + os.urandom(4).hex(), "echo must-not-run")
    enqueue(run_sbx, topics, [j])
    time.sleep(3)
    row = pg.query("SELECT status, attempt, log_tail FROM sbx.runs WHERE job_id = %s",
                   j["job_id"])[0]
    assert row[0] not in TERMINAL and row[0] != "running", (row, w.tail(40))
    assert "must-not-run" not in (row[2] or "")
    w.wait_log(r"ssh tunnel is down: ssh: Host key verification failed\.", 10)
