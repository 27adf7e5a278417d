"""test_clients.py — the Node and Python clients (producers/node,
producers/python) end to end: real Kafka, PostgreSQL, Redis and an
sbx-worker running the job on the local provider.

Each client runs its own driver (producers/node/test/e2e.mjs,
producers/python/tests/e2e_driver.py) in its own runtime and prints what it
saw; this file judges it. A job sent by the client must reach `succeeded`;
watch() must yield its status changes in order, ending with the terminal one,
and its log chunks as they are stored: the build echoes, sleeps a second and
echoes again, so the first line arrives well before the run ends. logs(follow)
running beside it must see the same chunks, and watching the finished run
again must give its chunks, its terminal status, and stop (resumed past a
chunk: the rest). Every object
the client returned was validated by the driver against schemas/run.v1 and
log.v1, and must equal what `sbx status/list/logs --json` print. The client
must publish where librdkafka would (the same partition
as `sbx enqueue` for the same project: murmur2, Java's) and fingerprint a job
as libsbx does (the payload_sha256 `sbx enqueue` records)."""

import json
import os
import subprocess
import uuid

import pytest

from conftest import REPO, build_dir, wait_until
from test_worker import topics, workdir  # noqa: F401 — fixtures

# A job whose redacted text exercises every escape and the redaction rule.
TRICKY = {"script": "printf '%s\\n' \"/é\u2028\\\\\" \t\u0001 😀",
          "env": {"B_TOKEN": "s3cret", "A": "x"}, "metadata": {"k": "v/w"},
          "timeout_s": 30, "resources": {"cpus": 0.5, "memory_mb": 256}, "network": False}


def driver(client):
    if client == "node":
        script = REPO / "producers/node/test/e2e.mjs"
        dist = REPO / "producers/node/dist/index.js"
        if not dist.exists():
            pytest.fail("%s is not built (run make clients)" % dist, pytrace=False)
        return ["node", str(script)], {}
    py = build_dir().resolve() / "pyclient/bin/python"
    if not py.exists():
        pytest.fail("%s is missing (run make clients)" % py, pytrace=False)
    return [str(py), str(REPO / "producers/python/tests/e2e_driver.py")], {
        "PYTHONPATH": str(REPO / "producers/python/src")}


@pytest.mark.parametrize("client", ["node", "python"])
def test_client_job_succeeds_and_its_log_streams(client, services, pg, run_sbx, start_worker,
                                                topics, workdir):  # noqa: F811
    tag = uuid.uuid4().hex[:10]
    project = "cl-%s-%s" % (client, tag)
    job = {"job_id": "e2e-%s-%s" % (client, tag), "project_id": project,
           "script": "echo first; sleep 1; echo second"}
    tricky = dict(TRICKY, job_id="e2e-%s-fp-%s" % (client, tag))
    start_worker(SBX_WORK_DIR=workdir, **topics)

    argv, extra = driver(client)
    env = dict(os.environ, **services)
    env.update(extra, SBX_TOPIC=topics["SBX_TOPIC"], E2E_TIMEOUT_S="60")
    tricky["project_id"] = project
    r = subprocess.run(argv, env=dict(env, E2E_JOB=json.dumps(job)), cwd=REPO, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "error" not in out, out["error"]
    assert out["schema_errors"] == [], out["schema_errors"]

    # Sent, acknowledged, recorded before the publish.
    enq = out["enqueued"]
    assert enq["job_id"] == job["job_id"] and enq["recorded"] is True
    assert out["first_status"]["status"] in ("submitted", "queued", "waiting_capacity",
                                             "provisioning", "running")

    # watch(): statuses in order, each a change, the terminal one last.
    events = out["events"]
    runs = [e for e in events if e["kind"] == "run"]
    statuses = [e["value"]["status"] for e in runs]
    assert statuses[-1] == "succeeded", statuses
    assert "running" in statuses, statuses
    assert all(a != b for a, b in zip(statuses, statuses[1:])), statuses
    assert events[-1]["kind"] == "run", "the terminal status comes after the last chunk"
    order = ["submitted", "queued", "waiting_capacity", "provisioning", "running", "succeeded"]
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses), statuses

    # status(), list(), logs() read the same run back.
    st = out["status"]
    assert st["status"] == "succeeded" and st["exit_code"] == 0 and st["attempt"] == 1
    assert [e["to_status"] for e in st["events"]][-1] == "succeeded"
    assert st["events"][0]["from_status"] is None
    assert [x["job_id"] for x in out["list"]] == [job["job_id"]]
    assert "already used by another payload" in (out["reused_error"] or ""), out["reused_error"]
    assert out["cancel_finished"] == {"status": "succeeded", "outcome": "finished"}
    assert out["cancel_unknown"] == {"status": "canceled", "outcome": "recorded"}
    assert out["unknown_status"] is None

    # The same objects as the CLI's --json, member for member (the run is
    # terminal, and a cancel of a finished run changes nothing).
    cli = lambda *a: run_sbx(*a).stdout  # noqa: E731
    assert json.loads(cli("status", job["job_id"], "--json", "--history")) == st
    assert json.loads(cli("list", "--project", project, "--json")) == out["list"]
    assert [json.loads(x) for x in cli("logs", job["job_id"], "--json").splitlines()] == out["logs"]

    # Where librdkafka would put it, and libsbx's fingerprint: `sbx enqueue`
    # of the tricky job (same project as ours for the partition) records its
    # own payload_sha256 before it publishes.
    run_sbx("enqueue", "--json", "-", input=json.dumps(tricky) + "\n",
            env={"SBX_TOPIC": topics["SBX_TOPIC"]})
    c_sha = pg.scalar("SELECT payload_sha256 FROM sbx.runs WHERE job_id = %s", tricky["job_id"])
    assert c_sha is not None
    r2 = subprocess.run(argv, env=dict(env, E2E_FINGERPRINT_JOBS=json.dumps([tricky])), cwd=REPO,
                        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert json.loads(r2.stdout.strip().splitlines()[-1])["fingerprints"] == [c_sha]

    wait_until(lambda: pg.scalar("SELECT kafka_partition FROM sbx.runs WHERE job_id = %s",
                                 tricky["job_id"]) is not None, 60, "the sbx enqueue job consumed")
    parts = pg.scalar("SELECT array_agg(DISTINCT kafka_partition) FROM sbx.runs "
                      "WHERE project_id = %s", project)
    assert parts == [enq["partition"]], (parts, enq)

    # Last, the log, streamed: every chunk once, in order, the first line
    # well before the run ended (the build sleeps 1 s between its lines).
    chunks = [e for e in events if e["kind"] == "log"]
    keys = [(c["value"]["attempt"], c["value"]["seq"]) for c in chunks]
    assert keys == sorted(set(keys)), keys
    stdout = "".join(c["value"]["data"] for c in chunks if c["value"]["stream"] == "stdout")
    assert stdout == "first\nsecond\n", chunks
    first = next(c for c in chunks if "first" in c["value"]["data"])
    end = runs[-1]
    assert first["ms"] + 500 <= end["ms"], (
        "the first line arrived at %d ms, the run ended at %d ms: not streamed" % (first["ms"],
                                                                                    end["ms"]))
    print("%s: first line after %d ms, terminal status after %d ms, %d chunks" % (
        client, first["ms"], end["ms"], len(chunks)))
    assert out["logs"] == [c["value"] for c in chunks]
    assert out["followed"] == out["logs"], "logs(follow) saw what logs() reads afterwards"
    assert out["rewatch"] == out["logs"] + [runs[-1]["value"]], out["rewatch"]
    assert out["resumed"] == out["rewatch"][1:], "watch(after=) resumes past that chunk"


@pytest.mark.parametrize("client", ["node", "python"])
def test_client_sessions(client, services, pg, run_sbx, start_worker, topics,
                         workdir):  # noqa: F811
    """Sessions through each client: two jobs enqueued in one session (with
    its settings, then by id) run through the worker; getSession/get_session,
    listSessions/list_sessions read the row the trigger of 0010 keeps;
    stopSession asks for its end; the worker's sweeper ends it, and
    watchSession/watch_session sees it end. Every session is session.v1 and equals `sbx session show/list --json`."""
    tag = uuid.uuid4().hex[:10]
    project, session = "cls-%s-%s" % (client, tag), "dev"
    jobs = [{"job_id": "e2e-s%d-%s-%s" % (i, client, tag), "project_id": project,
             "script": "echo %d >> session.txt" % i} for i in range(2)]
    start_worker(SBX_WORK_DIR=workdir, **topics)
    argv, extra = driver(client)
    env = dict(os.environ, **services)
    env.update(extra, SBX_TOPIC=topics["SBX_TOPIC"], E2E_TIMEOUT_S="60",
               E2E_SESSION=json.dumps({"project": project, "session": session, "jobs": jobs}))
    p = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True)
    try:
        # The worker's sweeper ends the session the client asked to stop (a
        # test that parked it itself left its slot kept in Redis).
        stdout, stderr = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, stderr
    out = json.loads(stdout.strip().splitlines()[-1])
    assert "error" not in out, out["error"]
    assert out["schema_errors"] == [], out["schema_errors"]

    assert "session" in (out["twice_error"] or ""), out["twice_error"]
    assert [e["job_id"] for e in out["enqueued"]] == [j["job_id"] for j in jobs]
    specs = [pg.scalar("SELECT spec->'session' FROM sbx.runs WHERE job_id = %s", j["job_id"])
             for j in jobs]
    assert specs == [{"id": session, "pause_after_s": 600, "idle_timeout_s": 1200},
                     {"id": session}], specs

    s = out["session"]
    assert (s["state"], s["generation"], s["jobs"], s["pause_after_s"], s["idle_timeout_s"],
            s["max_lifetime_s"], s["stop_requested"]) == ("idle", 1, 2, 600, 1200, 86400, False), s
    assert sorted(e["job_id"] for e in s["events"] if e["to_state"] == "busy") == sorted(
        j["job_id"] for j in jobs)
    assert out["list"] == [{k: v for k, v in s.items() if k != "events"}]
    assert out["live"] == [session] and out["unknown"] is None
    assert out["stop"] == {"outcome": "requested", "state": "idle"}
    # The watch began before or after the sweeper's end: either way it ends with it.
    assert [(w["state"], w["stop_requested"]) for w in out["watched"]] in (
        [("idle", True), ("ended", True)], [("ended", True)]), out["watched"]
    assert out["stop_again"] == {"outcome": "ended", "state": "ended"}
    assert out["stop_unknown"] == {"outcome": "unknown", "state": None}
    final = out["final"]
    assert (final["state"], final["end_reason"]) == ("ended", "stopped")
    assert final["events"][-1]["to_state"] == "ended"

    # The same objects as the CLI's --json, member for member.
    cli = lambda *a: run_sbx(*a).stdout  # noqa: E731
    assert json.loads(cli("session", "show", "--json", project, session)) == final
    assert json.loads(cli("session", "list", "--json", "--project", project)) == out["final_list"]
    assert out["final_list"] == [{k: v for k, v in final.items() if k != "events"}]
