"""test_images.py — the images and the compose stack, end to end.

Builds every image with `make images` (Debian base from mmdebstrap, cached;
docker/Dockerfile on it with Podman), brings docker/compose.yaml up with
podman-compose under a project name of its own, sends 100 jobs with the host
build's `sbx enqueue` through the ports the stack publishes on 127.0.0.1,
and checks in PostgreSQL that all of them succeeded, on both workers (the
local provider's bubblewrap inside a container, and the vmpool provider's
agents). The stack is torn down at the end whatever happened, volumes
included, and each step is bounded, so a broken image costs minutes, not
CI's whole budget.

Times (2-core dev box): a cold `make images` (no base tarball, no Podman
layers) 80-100 s, warm 10-25 s; the stack ready 12-18 s after `up` (~60 s
when Podman's DNS stalls, see docker/compose.yaml); 100 jobs
1.5-3 s; the whole test 55 s warm, 130 s cold. Each step's time and the
image sizes are printed on a line of their own.

Skipped under `make asan`: it would test the same images again (they are
built with the production flags, not the sanitizers) and only cost time.
Needs root (rootful Podman, mmdebstrap), like the providers' tests.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request

import psycopg
import pytest

from conftest import REPO, build_dir, wait_until

COMPOSE = REPO / "docker" / "compose.yaml"
# The Podman settings the tests' own service uses (no ulimit overrides
# Podman cannot apply on this host, runc, cgroupfs): the stack's containers
# start under the same.
CONTAINERS_CONF = REPO / "tests" / "services" / "podman" / "containers.conf"
BUILD_TIMEOUT = 600    # a cold build with a slow mirror; 80-100 s measured
UP_TIMEOUT = 180       # `up` itself, then every worker ready; 12-18 s, 60 s with a DNS stall
JOBS = 100

pytestmark = [
    pytest.mark.skipif("asan" in build_dir().name,
                       reason="images are built with production flags; nothing to add under ASan"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (rootful Podman, mmdebstrap)"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, env, timeout, check=True):
    r = subprocess.run(cmd, env=env, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail("%s: status %d\n%s%s" % (" ".join(map(str, cmd)), r.returncode,
                                             r.stdout[-3000:], r.stderr[-3000:]), pytrace=False)
    return r


def readyz(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=2) as r:
        return json.loads(r.read())


@pytest.fixture
def stack():
    """The compose stack under a project name of its own, on free ports,
    with fresh passwords; yields its settings, then takes it down."""
    for tool in ("podman", "podman-compose", "mmdebstrap"):
        if not shutil.which(tool):
            pytest.fail("%s not found (sh docker/install-deps.sh installs it)" % tool, pytrace=False)
    project = "sbxe2e%d" % os.getpid()
    s = {
        "project": project,
        "SBX_KAFKA_PORT": free_port(), "SBX_REDIS_PORT": free_port(), "SBX_PG_PORT": free_port(),
        "SBX_WORKER1_ADMIN_PORT": free_port(), "SBX_WORKER2_ADMIN_PORT": free_port(),
        "SBX_AGENT1_PORT": free_port(), "SBX_AGENT2_PORT": free_port(),
        "SBX_REDIS_PASSWORD": secrets.token_hex(12), "SBX_PG_PASSWORD": secrets.token_hex(12),
        "SBX_AGENT_KEY": secrets.token_hex(20),
    }
    env = dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF),
               **{k: str(v) for k, v in s.items() if k.startswith("SBX_")})
    s["env"] = env
    s["times"] = {}
    compose = ["podman-compose", "-f", str(COMPOSE), "-p", project]
    s["compose"] = compose
    try:
        yield s
    finally:
        down(s)


def down(s):
    """Everything of the project goes, even if podman-compose itself fails:
    containers, then volumes and the network, by the project's label."""
    env, project = s["env"], s["project"]
    subprocess.run(s["compose"] + ["down", "-v", "-t", "5"], env=env, cwd=REPO,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    label = "label=io.podman.compose.project=%s" % project
    ids = subprocess.run(["podman", "ps", "-aq", "--filter", label], env=env,
                         capture_output=True, text=True, timeout=60).stdout.split()
    if ids:
        subprocess.run(["podman", "rm", "-f", "-t", "0"] + ids, env=env, capture_output=True, timeout=60)
    vols = subprocess.run(["podman", "volume", "ls", "-q", "--filter", label], env=env,
                          capture_output=True, text=True, timeout=60).stdout.split()
    if vols:
        subprocess.run(["podman", "volume", "rm", "-f"] + vols, env=env, capture_output=True, timeout=60)
    subprocess.run(["podman", "network", "rm", "-f", "%s_default" % project], env=env,
                   capture_output=True, timeout=60)


def logs(s):
    """The last lines of every container of the stack, for a failure message."""
    env, out = s["env"], []
    label = "label=io.podman.compose.project=%s" % s["project"]
    names = subprocess.run(["podman", "ps", "-a", "--filter", label, "--format", "{{.Names}} {{.Status}}"],
                           env=env, capture_output=True, text=True, timeout=60).stdout.splitlines()
    for line in names:
        name = line.split()[0]
        r = subprocess.run(["podman", "logs", "--tail", "15", name], env=env, capture_output=True,
                           text=True, timeout=60)
        out.append("--- %s\n%s%s" % (line, r.stdout, r.stderr))
    return "\n".join(out)


def test_images_compose_100_jobs(stack, capsys):
    s, env, times = stack, stack["env"], stack["times"]
    sbx = build_dir() / "bin" / "sbx"
    if not sbx.exists():
        pytest.fail("%s is not built (run make, or set SBX_BUILD)" % sbx, pytrace=False)

    t = time.monotonic()
    run(["make", "--no-print-directory", "images"], env, BUILD_TIMEOUT)
    times["images"] = time.monotonic() - t
    sizes = run(["podman", "images", "--format", "{{.Repository}} {{.Size}}"], env, 60).stdout
    sizes = " ".join("%s=%s" % (r.rsplit("/", 1)[-1], z.replace(" ", ""))
                     for r, z in (line.split(" ", 1) for line in sizes.splitlines())
                     if r.startswith("localhost/sbx-") and r != "localhost/sbx-build")

    t = time.monotonic()
    run(s["compose"] + ["up", "-d"], env, UP_TIMEOUT)
    try:
        ports = (s["SBX_WORKER1_ADMIN_PORT"], s["SBX_WORKER2_ADMIN_PORT"])
        # Ready, and the group settled: the two workers share the 8 partitions.
        wait_until(lambda: all(readyz(p)["ready"] for p in ports)
                   and sum(readyz(p)["assigned_partitions"] for p in ports) == 8
                   and all(readyz(p)["assigned_partitions"] > 0 for p in ports),
                   UP_TIMEOUT, "both workers of the stack ready with 4 partitions each")
        times["up"] = time.monotonic() - t

        db = "postgresql://sbx:%s@127.0.0.1:%d/sbx" % (s["SBX_PG_PASSWORD"], s["SBX_PG_PORT"])
        cli = dict(env, SBX_BROKERS="127.0.0.1:%d" % s["SBX_KAFKA_PORT"], SBX_DATABASE_URL=db)
        run_id = "%x" % int(time.time())
        jobs = "".join(json.dumps({"job_id": "img-%s-%03d" % (run_id, i), "project_id": "img-p%03d" % i,
                                   "command": ["sh", "-c", "echo built %d; id -u" % i]}) + "\n"
                       for i in range(JOBS))
        t = time.monotonic()
        r = subprocess.run([str(sbx), "enqueue", "--json", "-"], env=cli, input=jobs, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        ids = r.stdout.split()
        assert len(ids) == JOBS
        w = subprocess.run([str(sbx), "wait", "--timeout", "180"] + ids, env=cli,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
        times["jobs"] = time.monotonic() - t
        assert w.returncode == 0, w.stdout[-2000:] + w.stderr[-2000:]

        with psycopg.connect(db, connect_timeout=10) as conn:
            rows = conn.execute("SELECT job_id, status, provider, worker_id, exit_code, log_tail "
                                "FROM sbx.runs WHERE job_id = ANY(%s)", (ids,)).fetchall()
        assert len(rows) == JOBS
        bad = [r[:5] for r in rows if r[1] != "succeeded" or r[4] != 0]
        assert not bad, bad[:5]
        for job_id, _, _, _, _, tail in rows:
            n = int(job_id.rsplit("-", 1)[1])
            lines = tail.split()
            # Ran in the sandbox, as a slot's uid, never root.
            assert lines[:2] == ["built", str(n)] and int(lines[2]) >= 60000, (job_id, tail)
        by = {}
        for r in rows:
            by[(r[2], r[3])] = by.get((r[2], r[3]), 0) + 1
        # Both workers took jobs: worker-1 built them itself, worker-2 on the agents.
        assert set(by) == {("local", "worker-1"), ("vmpool", "worker-2")}, by
    except BaseException:
        print(logs(s))
        raise

    times_s = " ".join("%s %.1f s" % kv for kv in times.items())
    with capsys.disabled():
        print("\nsbx images: %s; %d jobs split %s; sizes %s" % (
            times_s, JOBS, " ".join("%s/%s=%d" % (k[0], k[1], v) for k, v in sorted(by.items())), sizes))
