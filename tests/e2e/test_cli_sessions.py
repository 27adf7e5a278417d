"""test_cli_sessions.py — `sbx session list/show/stop/watch` and `sbx enqueue
--session` against the real PostgreSQL (migrated by `sbx migrate`): exit
codes, what goes to stdout and stderr, and every --json object checked
against schemas/session.v1.schema.json, which is what sbx.session_v1()
(migrations/0010_sessions.sql) must return.

Session rows come from the migration's own machinery, as the worker drives
it: a run that names a session is moved through its statuses (the trigger
on sbx.runs makes the session busy, then idle), sbx.park_session() pauses
and ends it as the worker's sweeper does, sbx.stop_session() is what
`sbx session stop` calls. One test runs real jobs through a worker.
"""

import json
import subprocess
import time
import uuid

import pytest

from conftest import wait_until
from test_cli_runs import UTC_TS, validator
from test_worker import job, topics, wait_terminal, workdir  # noqa: F401 (fixtures)

SESSION_V1 = validator("session")
TOKEN = [1000]


def check_session(o):
    SESSION_V1.validate(o)
    for k in ("created_at", "updated_at", "last_used_at", "ends_at", "ended_at"):
        assert o[k] is None or UTC_TS.match(o[k]), (k, o[k])
    for e in o.get("events", []):
        assert UTC_TS.match(e["at"]), e
    return o


def tag():
    return uuid.uuid4().hex[:10]


def session_run(pg, project, session, status="succeeded", **opts):
    """One job of the session, as a worker moves it: queued, claimed
    (provisioning, with a newer fencing token), then status. Returns the
    job id and its token."""
    TOKEN[0] += 1
    token = TOKEN[0]
    jid = "e2e-s-" + uuid.uuid4().hex[:16]
    spec = {"job_id": jid, "project_id": project, "script": "true",
            "session": dict({"id": session}, **opts)}
    pg.execute("INSERT INTO sbx.runs (job_id, project_id, status, spec) VALUES (%s, %s, 'queued', %s)",
               jid, project, json.dumps(spec))
    pg.execute("UPDATE sbx.runs SET status = 'provisioning', provider = 'local', slot = 'local-3',"
               " lease_token = %s, attempt = 1 WHERE job_id = %s", token, jid)
    if status != "provisioning":
        pg.execute("UPDATE sbx.runs SET status = %s WHERE job_id = %s", status, jid)
    return jid, token


def park(pg, project, session, state, reason):
    TOKEN[0] += 1
    return pg.scalar("SELECT sbx.park_session(%s, %s, %s, %s, %s, 'w-test')",
                     project, session, TOKEN[0], state, reason)


def test_session_help(run_sbx):
    for cmd in (["session"], ["session", "list"], ["session", "show"], ["session", "stop"],
                ["session", "watch"]):
        r = run_sbx(*cmd, "-h", check=False)
        assert r.returncode == 0 and r.stdout.startswith("usage: sbx session"), (cmd, r.stdout,
                                                                                 r.stderr)
    r = run_sbx("session", check=False)
    assert r.returncode == 2 and r.stderr.startswith("usage: sbx session")
    r = run_sbx("session", "pause", "p", "s", check=False)
    assert r.returncode == 2 and "unknown subcommand" in r.stderr
    assert "session   list, show, stop and watch sessions" in run_sbx("-h").stdout
    assert "--session ID" in run_sbx("enqueue", "-h").stdout


def test_session_show_list_stop(run_sbx, pg):
    project, sid = "p-sess-%s" % tag(), "editor-1"
    sbx = lambda *a: run_sbx(*a, check=False)  # noqa: E731

    r = sbx("session", "show", project, sid)
    assert r.returncode == 1 and "no session editor-1 in project %s" % project in r.stderr
    r = sbx("session", "stop", project, sid)
    assert r.returncode == 1 and "no session" in r.stderr, r.stderr
    assert json.loads(sbx("session", "list", "--json", "--project", project).stdout) == []
    assert sbx("session", "list", "--project", project).stdout == ""

    # The first job: busy, then idle; the second, with other timeouts, keeps them
    # (they are the first job's until the session begins again).
    j1, t1 = session_run(pg, project, sid, "provisioning", pause_after_s=5, idle_timeout_s=60,
                         max_lifetime_s=3600)
    s = check_session(json.loads(sbx("session", "show", "--json", project, sid).stdout))
    assert (s["state"], s["generation"], s["jobs"], s["last_job_id"], s["lease_token"]) == (
        "busy", 1, 1, j1, t1)
    assert (s["pause_after_s"], s["idle_timeout_s"], s["max_lifetime_s"]) == (5, 60, 3600)
    assert (s["provider"], s["slot"], s["stop_requested"], s["end_reason"]) == (
        "local", "local-3", False, None)
    pg.execute("UPDATE sbx.runs SET status = 'succeeded' WHERE job_id = %s", j1)
    j2, t2 = session_run(pg, project, sid, "failed")

    s = check_session(json.loads(sbx("session", "show", "--json", project, sid).stdout))
    assert (s["state"], s["jobs"], s["last_job_id"], s["lease_token"]) == ("idle", 2, j2, t2)
    assert [(e["from_state"], e["to_state"], e["job_id"], e["detail"]) for e in s["events"]] == [
        (None, "busy", j1, "began"), ("busy", "idle", j1, "run succeeded"),
        ("idle", "busy", j2, None), ("busy", "idle", j2, "run failed")]
    assert all(e["generation"] == 1 for e in s["events"])

    text = sbx("session", "show", project, sid).stdout
    assert "idle (generation 1, 2 jobs)" in text, text
    assert "pause after 5 s, end after 60 s idle or 3600 s in all" in text
    hist = text.split("history:\n")[1].splitlines()
    assert len(hist) == 4 and "(new) -> busy" in hist[0] and "job %s" % j1 in hist[0], hist
    assert "busy -> idle" in hist[3] and "run failed" in hist[3]

    # A second session of the project, and one of another project.
    session_run(pg, project, "editor-2")
    other = "p-sess-other-%s" % tag()
    session_run(pg, other, sid)
    assert park(pg, project, "editor-2", "paused", "idle") is True

    listed = json.loads(sbx("session", "list", "--json", "--project", project).stdout)
    assert [(check_session(x)["session_id"], x["state"]) for x in listed] == [
        ("editor-2", "paused"), (sid, "idle")]
    assert "events" not in listed[0]
    assert [x["session_id"] for x in json.loads(sbx(
        "session", "list", "--json", "--project", project, "--state", "paused").stdout)] == ["editor-2"]
    assert len(json.loads(sbx("session", "list", "--json", "--project", project,
                              "--limit", "1").stdout)) == 1
    everyone = json.loads(sbx("session", "list", "--json", "--limit", "10000").stdout)
    assert {(x["project_id"], x["session_id"]) for x in everyone} >= {
        (project, sid), (project, "editor-2"), (other, sid)}
    table = sbx("session", "list", "--project", project).stdout.splitlines()
    assert table[0].split() == ["PROJECT", "SESSION", "STATE", "GEN", "JOBS", "PROVIDER", "IDLE"]
    assert [line.split()[1:5] for line in table[1:]] == [
        ["editor-2", "paused", "1", "1"], [sid, "idle", "1", "2"]]

    # Stop: requested; the sweeper (here: park_session as it calls it) ends it.
    r = sbx("session", "stop", project, sid)
    assert r.returncode == 0 and "stop requested (idle)" in r.stdout, (r.stdout, r.stderr)
    s = check_session(json.loads(sbx("session", "show", "--json", project, sid).stdout))
    assert s["stop_requested"] is True and s["state"] == "idle"
    assert "idle*" in sbx("session", "list", "--project", project).stdout
    due = pg.query("SELECT op, reason FROM sbx.sessions_due('local', true, 100, NULL)"
                   " WHERE project_id = %s AND session_id = %s", project, sid)
    assert due == [("destroy", "stopped")]
    assert park(pg, project, sid, "ended", "stopped") is True
    s = check_session(json.loads(sbx("session", "show", "--json", project, sid).stdout))
    assert (s["state"], s["end_reason"]) == ("ended", "stopped") and s["ended_at"]
    assert s["events"][-1]["to_state"] == "ended" and s["events"][-1]["detail"] == "stopped by w-test"
    r = sbx("session", "stop", project, sid)
    assert r.returncode == 0 and "already ended; nothing to stop" in r.stdout, r.stdout
    assert [x["session_id"] for x in json.loads(sbx(
        "session", "list", "--json", "--project", project, "--state", "live").stdout)] == ["editor-2"]

    # Named again: it begins again, generation 2, with the new job's timeouts.
    j3, _ = session_run(pg, project, sid, "running", idle_timeout_s=120)
    s = check_session(json.loads(sbx("session", "show", "--json", project, sid).stdout))
    assert (s["state"], s["generation"], s["jobs"], s["idle_timeout_s"], s["end_reason"],
            s["ended_at"], s["stop_requested"]) == ("busy", 2, 1, 120, None, None, False)
    assert s["events"][-1]["generation"] == 2 and s["events"][-1]["detail"] == "began again"
    r = sbx("session", "stop", project, sid)
    assert r.returncode == 0 and "a job holds it now" in r.stdout, r.stdout

    # Usage.
    assert sbx("session", "show", project).returncode == 2
    assert sbx("session", "show", project, "bad id").returncode == 2
    assert sbx("session", "stop", "-x", project, sid).returncode == 2
    assert sbx("session", "list", "--state", "running").returncode == 2
    assert sbx("session", "list", "--limit", "0").returncode == 2
    assert sbx("session", "list", "extra").returncode == 2


def test_session_watch(run_sbx, pg, services, sbx_bin):
    project, sid = "p-sess-w-%s" % tag(), "watched"
    env = dict(services)
    w = subprocess.Popen([str(sbx_bin / "sbx"), "session", "watch", "--json", "--timeout", "60",
                          project, sid], env=env, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)   # it waits for a session that does not exist yet
        j1, _ = session_run(pg, project, sid, "provisioning")
        seen = [json.loads(w.stdout.readline())]
        pg.execute("UPDATE sbx.runs SET status = 'succeeded' WHERE job_id = %s", j1)
        seen.append(json.loads(w.stdout.readline()))
        assert park(pg, project, sid, "paused", "idle") is True
        seen.append(json.loads(w.stdout.readline()))
        run_sbx("session", "stop", project, sid)
        seen.append(json.loads(w.stdout.readline()))
        assert park(pg, project, sid, "ended", "stopped") is True
        out, err = w.communicate(timeout=30)
    finally:
        w.kill()
    assert w.returncode == 0, err
    seen += [json.loads(line) for line in out.splitlines()]
    assert [(check_session(s)["state"], s["stop_requested"]) for s in seen] == [
        ("busy", False), ("idle", False), ("paused", False), ("paused", True), ("ended", True)]

    # An ended session: printed once, done. Text lines; a timeout is exit 3.
    r = run_sbx("session", "watch", project, sid)
    assert r.returncode == 0 and r.stdout.count("\n") == 1 and " ended generation 1" in r.stdout
    session_run(pg, project, "idle-one")
    t0 = time.monotonic()
    r = run_sbx("session", "watch", "--timeout", "1", project, "idle-one", check=False)
    assert r.returncode == 3 and "not ended after 1 s" in r.stderr, (r.stdout, r.stderr)
    assert " idle generation 1" in r.stdout and time.monotonic() - t0 < 10
    assert run_sbx("session", "watch", "--timeout", "x", project, sid, check=False).returncode == 2


def test_enqueue_session_flags(run_sbx, pg, topics):  # noqa: F811
    project = "p-sess-enq-%s" % tag()
    env = {"SBX_TOPIC": topics["SBX_TOPIC"]}
    sbx = lambda *a: run_sbx(*a, env=env, check=False)  # noqa: E731

    r = sbx("enqueue", "--project", project, "--session", "s-1", "--pause-after", "5",
            "--idle-timeout", "60", "--max-lifetime", "3600", "--script", "true")
    assert r.returncode == 0, r.stderr
    spec = pg.scalar("SELECT spec FROM sbx.runs WHERE job_id = %s", r.stdout.strip())
    assert spec["session"] == {"id": "s-1", "pause_after_s": 5, "idle_timeout_s": 60,
                               "max_lifetime_s": 3600}
    r = sbx("enqueue", "--project", project, "--session", "s-2", "--", "true")
    assert r.returncode == 0, r.stderr
    assert pg.scalar("SELECT spec->'session' FROM sbx.runs WHERE job_id = %s",
                     r.stdout.strip()) == {"id": "s-2"}

    for args, why in [(["--pause-after", "5"], "--pause-after needs --session"),
                      (["--idle-timeout", "5"], "--idle-timeout needs --session"),
                      (["--session", "s", "--max-lifetime", "604801"], "max_lifetime_s"),
                      (["--session", "s", "--pause-after", "0"], "pause_after_s"),
                      (["--session", "s", "--idle-timeout", "1m"], "idle_timeout_s"),
                      (["--session", "bad id"], "session.id")]:
        r = sbx("enqueue", "--project", project, *args, "--script", "true")
        assert r.returncode == 2 and why in r.stderr, (args, r.stderr)
    r = sbx("enqueue", "--session", "s", "--json", "-")
    assert r.returncode == 2 and "--session builds a message" in r.stderr, r.stderr


def test_session_jobs_through_a_worker(run_sbx, pg, start_worker, topics, workdir):  # noqa: F811
    """Two jobs of one session through Kafka and a worker: the session row
    follows them (busy, idle, busy, idle), as every reader sees it."""
    project = "p-sess-run-%s" % tag()
    start_worker(SBX_WORK_DIR=workdir, **topics)
    env = {"SBX_TOPIC": topics["SBX_TOPIC"]}
    ids = []
    for i in range(2):
        r = run_sbx("enqueue", "--project", project, "--session", "dev", "--script",
                    "echo %d" % i, env=env)
        ids.append(r.stdout.strip())
    assert set(wait_terminal(pg, ids, 60).values()) == {"succeeded"}
    wait_until(lambda: pg.scalar("SELECT jobs FROM sbx.sessions WHERE project_id = %s", project) == 2
               and pg.scalar("SELECT state FROM sbx.sessions WHERE project_id = %s",
                             project) in ("idle", "paused"), 30, "the session idle after 2 jobs")
    s = check_session(json.loads(run_sbx("session", "show", "--json", project, "dev").stdout))
    assert (s["generation"], s["jobs"], s["provider"]) == (1, 2, "local")
    busy = [e["job_id"] for e in s["events"] if e["to_state"] == "busy"]
    assert sorted(busy) == sorted(ids) and s["last_job_id"] == busy[-1], s["events"]
    assert [e["to_state"] for e in s["events"]] == ["busy", "idle", "busy", "idle"], s["events"]
    listed = json.loads(run_sbx("session", "list", "--json", "--project", project).stdout)
    assert [x["session_id"] for x in listed] == ["dev"]
    assert listed[0] == {k: v for k, v in s.items() if k != "events"}
    # `sbx session stop`: the worker's sweeper ends it and gives its slot back.
    run_sbx("session", "stop", project, "dev")
    wait_until(lambda: pg.scalar("SELECT state FROM sbx.sessions WHERE project_id = %s",
                                 project) == "ended", 30, "the stopped session to end")


def test_session_roles(run_sbx, pg, services):
    """An sbx_reader login reads sessions but cannot stop one; an
    sbx_submitter login (what `sbx enqueue` needs) can."""
    from test_console import login
    project, sid = "p-sess-roles-%s" % tag(), "dev"
    session_run(pg, project, sid)
    reader = login(pg, services, "sbx_e2e_session_reader", "sbx_reader")
    submitter = login(pg, services, "sbx_e2e_session_submitter", "sbx_submitter")

    as_reader = lambda *a: run_sbx(*a, env={"SBX_DATABASE_URL": reader}, check=False)  # noqa: E731
    s = check_session(json.loads(as_reader("session", "show", "--json", project, sid).stdout))
    assert s["state"] == "idle"
    assert [x["session_id"] for x in json.loads(
        as_reader("session", "list", "--json", "--project", project).stdout)] == [sid]
    assert "history:" in as_reader("session", "show", project, sid).stdout
    r = as_reader("session", "stop", project, sid)
    assert r.returncode == 1 and "permission denied" in r.stderr, r.stderr
    assert pg.scalar("SELECT stop_requested FROM sbx.sessions WHERE project_id = %s", project) is False
    r = run_sbx("session", "stop", project, sid, env={"SBX_DATABASE_URL": submitter}, check=False)
    assert r.returncode == 0 and "stop requested" in r.stdout, r.stderr
