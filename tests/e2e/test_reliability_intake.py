"""test_reliability_intake.py — no job invisible, no job id silently reused
(issue 10, items 3 and 4).

Real Kafka, Redis, PostgreSQL and sandboxes, as in test_worker.py.

Item 3: a job id sent again with another payload is dead-lettered with its
own reason (job_id_reused), whose detail names the first run's status and
both fingerprints, and counted in /metrics; the first run is untouched —
whether the second message arrives while the first runs in the same worker
(the job table) or after it finished (sbx.record_run). An exact redelivery
is still a duplicate that runs nothing. `sbx enqueue` with a database URL
refuses such a message itself, before it reaches the topic.

Item 4: `sbx enqueue` with a database URL records the job as `submitted`
before it publishes it, so `sbx status` shows it and `sbx cancel` ends it
before any worker has started; the worker, started later, consumes it and
runs nothing. Without a database URL at enqueue, `sbx cancel` of an id with
no run yet records the cancel, and the job never runs when consumed. A
publish that fails takes its `submitted` row back.

"No build ran" is read from what a build leaves: a claim (provisioning),
`running`, an attempt and a log tail in the run, a "leased" line in the
worker's log. The job after it in the same project (so the same partition,
consumed after it) does run, which shows the worker got past it.
"""

import json
import re
import time

import sbxsvc
from conftest import wait_until
from test_reliability_dlq import dead_letters
from test_worker import _get, history, job, statuses, topics, wait_terminal, workdir  # noqa: F401


def metric(base, name):
    code, body = _get(base + "/metrics")
    assert code == 200
    m = re.search(r"^%s (\d+)$" % re.escape(name), body, re.M)
    assert m, "no %s in /metrics" % name
    return int(m.group(1))


def admin_env():
    port = sbxsvc._free_port(set())
    return "http://127.0.0.1:%d" % port, {"SBX_ADMIN_LISTEN": "127.0.0.1:%d" % port}


def run_row(pg, job_id):
    rows = pg.query("SELECT status, attempt, payload_sha256, log_tail, kafka_partition "
                    "FROM sbx.runs WHERE job_id = %s", job_id)
    return rows[0] if rows else None


def assert_never_built(pg, w, job_id):
    h = history(pg, job_id)
    assert "provisioning" not in h and "running" not in h, h
    status, attempt, _, tail, _ = run_row(pg, job_id)
    assert (status, attempt, tail) == ("canceled", 0, None)
    assert "%s leased" % job_id not in w.text()


def test_reused_job_id_dead_lettered_first_run_unaffected(run_sbx, pg, kafka, start_worker,
                                                          topics, workdir):
    """The first payload runs to its end; another payload with its id is a
    dead letter (job_id_reused) twice — once while the first runs, once after
    it finished — and the metric counts both; the same bytes again are a
    duplicate; the producer with a database refuses the reuse itself."""
    base, admin = admin_env()
    first = job("p-reuse", "sleep 3; echo first-payload")
    other = dict(first, script="echo second-payload")
    first_msg, other_msg = json.dumps(first), json.dumps(other)
    jid = first["job_id"]
    w = start_worker(SBX_WORK_DIR=workdir, **admin, **topics)
    run_sbx("enqueue", "--json", "-", input=first_msg + "\n",
            env={"SBX_TOPIC": topics["SBX_TOPIC"]})
    wait_until(lambda: statuses(pg, [jid]).get(jid) == "running", 60, "the first payload running")

    # While it runs: the worker's job table sees the other payload.
    kafka.produce(topics["SBX_TOPIC"], [("p-reuse", other_msg)])
    w.wait_log(r"dead-lettered: job_id_reused: job id %s" % re.escape(jid), 30)
    assert metric(base, "sbx_jobs_id_reused_total") == 1
    assert statuses(pg, [jid])[jid] == "running"

    st = wait_terminal(pg, [jid], 60, [w])
    assert st[jid] == "succeeded"
    status, attempt, sha, tail, _ = run_row(pg, jid)
    assert attempt == 1 and "first-payload" in tail and "second-payload" not in tail
    assert re.fullmatch(r"[0-9a-f]{64}", sha)

    # After it finished: sbx.record_run sees the fingerprint differ.
    mark = w.mark()
    kafka.produce(topics["SBX_TOPIC"], [("p-reuse", other_msg)])
    w.wait_log(r"dead-lettered: job_id_reused: job id %s .*its run is succeeded"
               % re.escape(jid), 30, since=mark)
    assert metric(base, "sbx_jobs_id_reused_total") == 2
    assert run_row(pg, jid)[:3] == ("succeeded", 1, sha)

    envs = [json.loads(e["payload"]) for e in dead_letters(kafka.brokers, topics["SBX_DLQ_TOPIC"])]
    assert [e["reason"] for e in envs] == ["job_id_reused", "job_id_reused"], envs
    for e in envs:
        assert e["job_id"] == jid and e["payload_truncated"] is False
        assert "second-payload" in e["payload"]
        # Both fingerprints: the first run's (as stored) and this message's
        # (the envelope's payload_sha256, of the same redacted text).
        assert sha in e["detail"] and e["payload_sha256"] in e["detail"]
        assert e["payload_sha256"] != sha
    assert "its run is running" in envs[0]["detail"]
    assert "its run is succeeded" in envs[1]["detail"]

    # The same bytes again: a duplicate, nothing runs, nothing dead-lettered.
    mark = w.mark()
    kafka.produce(topics["SBX_TOPIC"], [("p-reuse", first_msg + "\n")])   # as enqueued
    w.wait_log(r"%s already succeeded; skipped" % re.escape(jid), 30, since=mark)
    assert history(pg, jid).count("running") == 1
    assert metric(base, "sbx_jobs_id_reused_total") == 2

    # The producer, given the database, refuses the reuse before the topic.
    ends = kafka.end_offsets(topics["SBX_TOPIC"])
    r = run_sbx("enqueue", "--json", "-", input=other_msg + "\n",
                env={"SBX_TOPIC": topics["SBX_TOPIC"]}, check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "already used by another payload" in r.stderr and "nothing sent" in r.stderr
    assert kafka.end_offsets(topics["SBX_TOPIC"]) == ends
    assert len(dead_letters(kafka.brokers, topics["SBX_DLQ_TOPIC"])) == 2


def test_submitted_visible_and_canceled_before_consumption(run_sbx, pg, start_worker, topics,
                                                           workdir):
    """Right after `sbx enqueue` (no worker yet) `sbx status` says
    submitted; `sbx cancel` ends it canceled; the worker started afterwards
    consumes it and builds nothing, and runs the job behind it."""
    doomed = job("p-early", "echo should-never-run")
    after = job("p-early", "echo runs-after")
    t0 = time.monotonic()
    run_sbx("enqueue", "--json", "-", input=json.dumps(doomed) + "\n" + json.dumps(after) + "\n",
            env={"SBX_TOPIC": topics["SBX_TOPIC"]})
    r = run_sbx("status", doomed["job_id"], "--json")
    visible_s = time.monotonic() - t0
    row = json.loads(r.stdout)
    assert row["status"] == "submitted" and row["kafka_partition"] is None
    assert re.fullmatch(r"[0-9a-f]{64}", row["payload_sha256"])
    assert "submitted" in run_sbx("status", after["job_id"]).stdout

    r = run_sbx("cancel", doomed["job_id"])
    assert "canceled before any worker consumed it" in r.stdout
    assert statuses(pg, [doomed["job_id"]])[doomed["job_id"]] == "canceled"

    w = start_worker(SBX_WORK_DIR=workdir, **topics)
    st = wait_terminal(pg, [after["job_id"]], 60, [w])
    assert st[after["job_id"]] == "succeeded"
    wait_until(lambda: run_row(pg, doomed["job_id"])[4] is not None, 30,
               "the canceled job consumed")
    assert_never_built(pg, w, doomed["job_id"])
    h = history(pg, doomed["job_id"])
    assert h == ["submitted", "canceled", "canceled"], h
    assert history(pg, after["job_id"])[:2] == ["submitted", "queued"]
    print("visible as submitted %.2f s after `sbx enqueue` started" % visible_s)


def test_cancel_of_unknown_id_without_database_never_runs(run_sbx, pg, start_worker, topics,
                                                          workdir):
    """Sent without a database URL: `sbx cancel` before any worker saw it
    records the cancel (`sbx status` says so), and the job, when consumed,
    ends canceled without a build."""
    doomed = job("p-nodb", "echo should-never-run")
    after = job("p-nodb", "echo runs-after")
    r = run_sbx("cancel", doomed["job_id"])
    assert "recorded as canceled" in r.stdout
    r = run_sbx("status", doomed["job_id"])
    assert "canceled" in r.stdout and "it will not run when it arrives" in r.stdout
    run_sbx("enqueue", "--json", "-", input=json.dumps(doomed) + "\n" + json.dumps(after) + "\n",
            env={"SBX_TOPIC": topics["SBX_TOPIC"], "SBX_DATABASE_URL": ""})
    assert statuses(pg, [after["job_id"]]) == {}     # not recorded: no database at enqueue

    w = start_worker(SBX_WORK_DIR=workdir, **topics)
    st = wait_terminal(pg, [after["job_id"]], 60, [w])
    assert st[after["job_id"]] == "succeeded"
    wait_until(lambda: run_row(pg, doomed["job_id"])[4] is not None, 30,
               "the canceled job consumed")
    assert_never_built(pg, w, doomed["job_id"])
    assert pg.scalar("SELECT project_id FROM sbx.runs WHERE job_id = %s",
                     doomed["job_id"]) == "p-nodb"
    assert w.wait_log(r"%s already canceled; skipped" % re.escape(doomed["job_id"]), 10)


def test_failed_publish_takes_the_submitted_row_back(run_sbx, pg):
    """A publish that fails (no broker listens) leaves no `submitted` row."""
    j = job("p-nobroker", "true")
    port = sbxsvc._free_port(set())
    r = run_sbx("enqueue", "--json", "-", "--brokers", "127.0.0.1:%d" % port,
                "--delivery-timeout", "2", input=json.dumps(j) + "\n", check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert statuses(pg, [j["job_id"]]) == {}
    assert pg.scalar("SELECT count(*) FROM sbx.run_events WHERE job_id = %s", j["job_id"]) == 0
