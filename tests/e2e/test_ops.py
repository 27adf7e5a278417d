"""Operational basics (README "Operations"): every program's --version, the
systemd units, `sbx migrate` from any directory, SBX_LOG_FORMAT=json with
job and project ids on every job line, and the latency histograms, slot
gauges and build info of the worker's /metrics and the agent's /metrics."""
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

import sbxsvc
from conftest import REPO, build_dir, uid_base, wait_until
from test_hostile_agent import (AgentProc, next_token, redis_url, request,  # noqa: F401 — fixture
                                wait_run_over, wake_body)
from test_worker import _get, enqueue, job, topics, wait_terminal, workdir  # noqa: F401 — fixtures

VERSION = (Path(REPO) / "VERSION").read_text().strip()
PROGRAMS = ("sbx", "sbx-worker", "sbx-agent")
UNITS = Path(REPO) / "docker" / "systemd"
MIGRATIONS = sorted(p.name for p in (Path(REPO) / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))


def _git_describe():
    if not (Path(REPO) / ".git").exists():
        return None
    r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                       capture_output=True, text=True, timeout=30)
    return r.stdout.strip() if r.returncode == 0 else None


@pytest.mark.parametrize("prog", PROGRAMS)
def test_version(prog):
    """`<prog> --version` prints "<prog> VERSION (git <commit>)" and exits 0,
    with no setting in the environment (it reads none)."""
    r = subprocess.run([str(build_dir() / "bin" / prog), "--version"], env={"PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"(\S+) (\S+)(?: \(git (\S+)\))?\n", r.stdout)
    assert m and m.group(1) == prog and m.group(2) == VERSION, r.stdout
    # The commit is the one built; a build made before a commit or an edit
    # may lag behind the work tree, so only the form is checked then.
    if _git_describe() is not None:
        assert m.group(3) and re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", m.group(3)), r.stdout


def test_systemd_units_verify(tmp_path):
    """`systemd-analyze verify` accepts both units without a warning, in a
    root of their own where the programs exist at the installed paths (it
    checks that ExecStart is executable); a broken copy is caught, so the
    check is not vacuous."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (docker/install-deps.sh installs systemd)",
                    pytrace=False)
    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    # The units they name (multi-user.target, network-online.target...).
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for prog in ("sbx-worker", "sbx-agent"):
        stub = root / "usr/local/bin" / prog
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    for unit in ("sbx-worker@.service", "sbx-agent.service"):
        shutil.copy(UNITS / unit, root / "etc/systemd/system" / unit)

    def verify(*units):
        return subprocess.run(["systemd-analyze", "verify", "--root=%s" % root, "--man=no"]
                              + list(units), capture_output=True, text=True, timeout=60)

    r = verify("sbx-worker@a.service", "sbx-agent.service")
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    text = (UNITS / "sbx-worker@.service").read_text()
    grace = int(re.search(r"^SBX_SHUTDOWN_GRACE_MS=(\d+)$",
                          (UNITS / "worker.env.example").read_text(), re.M).group(1))
    stop = int(re.search(r"^TimeoutStopSec=(\d+)s$", text, re.M).group(1))
    # Grace, then up to 10 s to hand back (worker/main.c HANDBACK_MAX_MS).
    assert stop * 1000 > grace + 10000
    assert re.search(r"^KillMode=mixed$", text, re.M)
    assert re.search(r"^EnvironmentFile=/etc/sbx/worker-%i.env$", text, re.M)
    broken = root / "etc/systemd/system/sbx-agent.service"
    broken.write_text(broken.read_text().replace("KillMode=mixed", "KillMode=mixd"))
    r = verify("sbx-agent.service")
    assert "kill mode" in r.stderr, r.stderr


def test_migrate_from_any_directory(services, pg, sbx_bin, tmp_path):
    """`sbx migrate`, started outside the repository, applies the migrations
    built into it to an empty database in order; a second run applies none;
    so does a run from the files (the same bytes, so the same sha256)."""
    db = "migrate_%s" % uuid.uuid4().hex[:8]
    pg.execute("CREATE DATABASE %s" % db)
    url = services["SBX_DATABASE_URL"].rsplit("/", 1)[0] + "/" + db
    env = dict(os.environ, SBX_DATABASE_URL=url)
    env.pop("SBX_MIGRATIONS_DIR", None)

    def migrate(*args):
        return subprocess.run([str(sbx_bin / "sbx"), "migrate"] + list(args), cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    try:
        r = migrate("--list")
        assert r.returncode == 0, r.stderr
        assert [ln.split()[0] for ln in r.stdout.splitlines()] == MIGRATIONS
        r = migrate()
        assert r.returncode == 0, r.stderr
        assert [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("applied ")] \
            == MIGRATIONS
        r = migrate()
        assert r.returncode == 0 and "0 applied, %d already applied" % len(MIGRATIONS) in r.stdout, \
            r.stdout + r.stderr
        r = migrate("--dir", str(Path(REPO) / "migrations"))
        assert r.returncode == 0 and "0 applied" in r.stdout, r.stdout + r.stderr
    finally:
        pg.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % db)


def _samples(text, name):
    """{labels: value} of one metric family's samples named name."""
    out = {}
    for m in re.finditer(r"^%s(\{[^}]*\})? (\S+)$" % re.escape(name), text, re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def test_json_logs_and_latency_metrics(run_sbx, pg, start_worker, topics, workdir):  # noqa: F811
    """A worker with SBX_LOG_FORMAT=json writes only JSON lines; every job
    line names its job and project; /metrics counts each finished job once
    in the queue-wait, create-to-running and build-duration histograms, and
    reports slots and build info."""
    port = sbxsvc._free_port(set())
    w = start_worker(SBX_WORK_DIR=workdir, SBX_ADMIN_LISTEN="127.0.0.1:%d" % port,
                     SBX_LOG_FORMAT="json", SBX_UID_BASE=64600, **topics)
    base = "http://127.0.0.1:%d" % port
    w.wait_log(r"serving /healthz", 20)
    wait_until(lambda: _get(base + "/readyz")[0] == 200, 30, "ready")
    code, before = _get(base + "/metrics")
    assert code == 200
    assert _samples(before, "sbx_build_duration_seconds_count") == {"": 0.0}
    jobs = [job("p-ops-%d" % (i % 2), "sleep 0.2; echo ops") for i in range(4)]
    enqueue(run_sbx, topics, jobs)
    st = wait_terminal(pg, [j["job_id"] for j in jobs], 90, [w])
    assert set(st.values()) == {"succeeded"}, st
    code, after = _get(base + "/metrics")
    for h in ("sbx_queue_wait_seconds", "sbx_create_to_running_seconds",
              "sbx_build_duration_seconds"):
        assert "# TYPE %s histogram" % h in after
        assert _samples(after, h + "_count") == {"": 4.0}, after
        buckets = _samples(after, h + "_bucket")
        assert buckets['{le="+Inf"}'] == 4.0
        values = [buckets[k] for k in buckets]
        assert values == sorted(values), buckets      # cumulative
    assert _samples(after, "sbx_build_duration_seconds_sum")[""] >= 4 * 0.2
    assert _samples(after, "sbx_slots_total") == {'{provider="local"}': 2.0}
    assert _samples(after, "sbx_slots_busy") == {'{provider="local"}': 0.0}
    info = _samples(after, "sbx_build_info")
    assert len(info) == 1 and 'version="%s"' % VERSION in list(info)[0], info

    w.stop()
    lines = [ln for ln in w.text().splitlines() if ln.strip()]
    objs = []
    for ln in lines:
        try:
            objs.append(json.loads(ln))
        except ValueError:
            pytest.fail("not a JSON line: %r" % ln, pytrace=False)
    assert all({"ts", "level", "area", "msg"} <= set(o) for o in objs)
    job_lines = [o for o in objs if o["area"] == "job"]
    ids = {j["job_id"]: j["project_id"] for j in jobs}
    for o in job_lines:
        # Every job line carries both ids (a message that could not be parsed
        # has neither; none was sent here).
        assert "job" in o and "project" in o, o
    for jid, project in ids.items():
        mine = [o for o in job_lines if o["job"] == jid]
        assert mine and all(o["project"] == project for o in mine), (jid, mine)
        assert any(o["msg"].startswith("succeeded exit=0") and o.get("exit") == 0 for o in mine)


def test_agent_metrics(redis_url, tmp_path):  # noqa: F811
    """The agent's /metrics wants the key; it reports capacity, builds by
    outcome, their durations and the version, and counts a build once it
    ends."""
    a = AgentProc(redis_url, "ops", tmp_path, uid_base=uid_base(64300), SBX_LOG_FORMAT="json")
    try:
        st, _, _ = request("GET", a.url + "/metrics", key=None)
        assert st == 401
        st, _, text = request("GET", a.url + "/metrics")
        assert st == 200
        assert _samples(text, "sbx_agent_capacity") == {"": 1.0}
        assert _samples(text, "sbx_agent_builds_total")['{outcome="succeeded"}'] == 0.0
        assert _samples(text, "sbx_agent_build_duration_seconds_count") == {"": 0.0}
        assert 'version="%s"' % VERSION in list(_samples(text, "sbx_build_info"))[0]
        st, _, body = request("POST", a.url + "/wake",
                              wake_body(a.id, next_token(redis_url), "j-ops-metrics", "sleep 2"))
        assert st in (200, 201), body
        run = body["run_id"]
        st, _, text = request("GET", a.url + "/metrics")
        assert _samples(text, "sbx_agent_runs_active") == {"": 1.0}, text
        wait_run_over(a, run)
        st, _, text = request("GET", a.url + "/metrics")
        assert _samples(text, "sbx_agent_builds_total")['{outcome="succeeded"}'] == 1.0, text
        assert _samples(text, "sbx_agent_build_duration_seconds_count") == {"": 1.0}
        assert _samples(text, "sbx_agent_build_duration_seconds_sum")[""] >= 2
        assert _samples(text, "sbx_agent_runs_active") == {"": 0.0}
    finally:
        a.stop()
    for ln in a.log_bytes().decode().splitlines():
        json.loads(ln)
