"""test_worker.py — sbx-worker end to end: real Kafka, Redis, PostgreSQL,
real bubblewrap sandboxes, real processes killed and restarted.

Each test gets its own job topic, dead-letter topic and consumer group, so
tests never see each other's messages. Assertions are made from what a UI
backend would read (sbx.runs, sbx.run_events) and from what the sandboxed
builds themselves printed.
"""

import json
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

import sbxsvc
from conftest import wait_until

TERMINAL = ("succeeded", "failed", "timed_out", "canceled", "dead_lettered")


@pytest.fixture
def topics(services):
    """A fresh job topic (8 partitions), dead-letter topic and group."""
    tag = uuid.uuid4().hex[:10]
    jobs, dlq = "sbx.e2e.%s" % tag, "sbx.e2e.%s.dlq" % tag
    port = int(services["SBX_BROKERS"].rsplit(":", 1)[1])

    def created():
        with sbxsvc._KafkaConn(port, 5.0) as k:
            errs = dict(k.create_topics({jobs: 8, dlq: 1}, 5000))
        return all(e in (0, 36) for e in errs.values())

    wait_until(created, 30, "topics created")

    def leaders():
        out = subprocess.run(["kcat", "-b", services["SBX_BROKERS"], "-L", "-J", "-t", jobs],
                             capture_output=True, text=True, timeout=30).stdout
        try:
            meta = json.loads(out)
        except ValueError:
            return False
        parts = [p for t in meta["topics"] for p in t.get("partitions", [])]
        return len(parts) == 8 and all(p.get("leader", -1) >= 0 for p in parts)

    wait_until(leaders, 30, "partition leaders")
    return {"SBX_TOPIC": jobs, "SBX_DLQ_TOPIC": dlq, "SBX_GROUP": "g-" + tag}


@pytest.fixture
def workdir():
    # Builds run as unprivileged slot uids: the workspace parent must be
    # traversable by them (pytest's tmp_path is 0700).
    d = tempfile.mkdtemp(prefix="sbx-e2e-work-")
    os.chmod(d, 0o755)
    yield d
    subprocess.run(["rm", "-rf", d])


def enqueue(run_sbx, topics, jobs):
    """Publishes job dicts through `sbx enqueue --json -` (one connection)."""
    lines = "".join(json.dumps(j) + "\n" for j in jobs)
    r = run_sbx("enqueue", "--json", "-", input=lines, env={"SBX_TOPIC": topics["SBX_TOPIC"]})
    ids = r.stdout.split()
    assert ids == [j["job_id"] for j in jobs]
    return ids


def statuses(pg, ids):
    rows = pg.query("SELECT job_id, status FROM sbx.runs WHERE job_id = ANY(%s)", list(ids))
    return {r[0]: r[1] for r in rows}


def wait_terminal(pg, ids, timeout, workers=()):
    def all_done():
        st = statuses(pg, ids)
        return len(st) == len(ids) and all(s in TERMINAL for s in st.values())
    try:
        wait_until(all_done, timeout, "%d jobs terminal" % len(ids))
    except BaseException:
        st = statuses(pg, ids)
        print("not terminal:", {k: v for k, v in st.items() if v not in TERMINAL},
              "missing:", len(ids) - len(st))
        for w in workers:
            print(w.tail(40))
        raise
    return statuses(pg, ids)


def history(pg, job_id):
    return [r[0] for r in pg.query(
        "SELECT to_status FROM sbx.run_events WHERE job_id = %s ORDER BY id", job_id)]


def job(project, script, **kw):
    d = {"job_id": "e2e-" + uuid.uuid4().hex[:16], "project_id": project, "script": script}
    d.update(kw)
    return d


def test_200_jobs_20_projects(run_sbx, pg, start_worker, topics, workdir):
    """200 jobs across 20 projects, two workers with three slots each: every
    job succeeds exactly once with its own output, and no project ever had
    two builds at once — judged from the builds' own clocks."""
    jobs = []
    for i in range(200):
        j = job("proj-%02d" % (i % 20), "")
        j["script"] = ('echo start=$(date +%%s%%N); echo "out-%s"; sleep 0.05; '
                       'echo end=$(date +%%s%%N)' % j["job_id"])
        jobs.append(j)
    # Two "hosts": own node names and disjoint slot uids (one box in a test).
    ws = [start_worker(SBX_LOCAL_SLOTS=3, SBX_NODE="n%d" % k, SBX_UID_BASE=61000 + 100 * k,
                       SBX_WORK_DIR=workdir, **topics)
          for k in range(2)]
    t0 = time.monotonic()
    ids = enqueue(run_sbx, topics, jobs)
    st = wait_terminal(pg, ids, 240, ws)
    elapsed = time.monotonic() - t0
    assert set(st.values()) == {"succeeded"}, st
    rows = pg.query("SELECT job_id, project_id, attempt, log_tail, worker_id FROM sbx.runs "
                    "WHERE job_id = ANY(%s)", ids)
    by_project = {}
    for job_id, project, attempt, tail, worker in rows:
        assert attempt == 1, job_id
        assert "out-%s" % job_id in tail
        h = history(pg, job_id)
        assert h.count("running") == 1 and h[-1] == "succeeded", (job_id, h)
        s = int(re.search(r"start=(\d+)", tail).group(1))
        e = int(re.search(r"end=(\d+)", tail).group(1))
        by_project.setdefault(project, []).append((s, e, job_id))
    for project, spans in by_project.items():
        spans.sort()
        for (s1, e1, j1), (s2, e2, j2) in zip(spans, spans[1:]):
            assert e1 <= s2, "%s: %s and %s overlapped" % (project, j1, j2)
    used = {r[4] for r in rows}
    print("200 jobs in %.1f s (%.0f jobs/s) over workers %s" % (elapsed, 200 / elapsed, sorted(used)))


def test_project_order_holds_on_a_full_pool(run_sbx, pg, start_worker, topics, workdir):
    """Jobs of one project that find no free slot take the slot in their
    order: the later ones park behind the earliest rather than each polling
    (the quickest timer used to win)."""
    w = start_worker(SBX_LOCAL_SLOTS=1, SBX_WORK_DIR=workdir, **topics)
    blocker = job("p-blocker", "sleep 3")
    enqueue(run_sbx, topics, [blocker])
    wait_until(lambda: statuses(pg, [blocker["job_id"]]).get(blocker["job_id"]) == "running",
               30, "the blocker to run")
    jobs = [job("p-order", "echo %d" % i) for i in range(8)]
    ids = enqueue(run_sbx, topics, jobs)
    wait_terminal(pg, ids + [blocker["job_id"]], 90, [w])
    order = [r[0] for r in pg.query("SELECT job_id FROM sbx.runs WHERE job_id = ANY(%s) "
                                    "ORDER BY started_at", ids)]
    assert order == ids, "ran as %s" % [ids.index(i) for i in order]
    assert set(statuses(pg, ids).values()) == {"succeeded"}


def test_exit_code_and_timeout(run_sbx, pg, start_worker, topics, workdir):
    """exit 3 ends failed with exit_code 3; a build that outlives its timeout
    ends timed_out and none of its processes survive."""
    marker = str(31000 + os.getpid() % 1000)
    fail = job("p-fail", "echo failing; exit 3")
    slow = job("p-slow", "sleep %s & sleep %s; echo never" % (marker, marker), timeout_s=2)
    w = start_worker(SBX_WORK_DIR=workdir, **topics)
    ids = enqueue(run_sbx, topics, [fail, slow])
    wait_terminal(pg, ids, 60, [w])
    (st, code, tail) = pg.query("SELECT status, exit_code, log_tail FROM sbx.runs "
                                "WHERE job_id = %s", fail["job_id"])[0]
    assert (st, code) == ("failed", 3) and "failing" in tail
    (st, tail, err) = pg.query("SELECT status, log_tail, error FROM sbx.runs WHERE job_id = %s",
                               slow["job_id"])[0]
    assert st == "timed_out" and "never" not in (tail or ""), (st, tail, err)
    ps = subprocess.run(["pgrep", "-f", "sleep %s" % marker], capture_output=True, text=True)
    assert ps.stdout.strip() == "", "processes of the timed-out build survived: " + ps.stdout


def test_malformed_messages_dead_lettered(run_sbx, pg, kafka, start_worker, topics, workdir):
    """Bad JSON, wrong types, a missing job_id and non-UTF-8 bytes land in the
    dead-letter topic with their reason, their size and (when a JSON object)
    their redacted text; the worker keeps going and runs the valid job
    published after them."""
    bad = [
        ("k1", b'{"job_id": "x", "project_id": '),                                  # bad JSON
        ("k2", json.dumps({"job_id": "e2e-types", "project_id": 7, "script": 1}).encode()),
        ("k3", json.dumps({"project_id": "p", "script": "true"}).encode()),        # no job_id
        ("k4", b'{"job_id": "e2e-\xff", "project_id": "p", "script": "true"}'),    # not UTF-8
    ]
    w = start_worker(SBX_WORK_DIR=workdir, **topics)
    kafka.produce(topics["SBX_TOPIC"], bad)
    good = job("p-good", "echo still-alive")
    enqueue(run_sbx, topics, [good])
    st = wait_terminal(pg, [good["job_id"]], 60, [w])
    assert st[good["job_id"]] == "succeeded"
    env = kafka.consume(topics["SBX_DLQ_TOPIC"], 4, timeout=60)
    got = {}
    for m in env:
        e = json.loads(m["payload"])
        got[m["key"]] = e
        assert e["v"] == 1 and e["topic"] == topics["SBX_TOPIC"] and e["worker_id"] == w.name
        assert isinstance(e["partition"], int) and isinstance(e["offset"], int)
    assert {k: got[k]["reason"] for k in got} == {
        "k1": "invalid_json", "k2": "schema_violation", "k3": "schema_violation", "k4": "not_utf8"}
    for key, raw in bad:
        assert got[key]["payload_bytes"] == len(raw)
    # A JSON object is kept (its env values redacted: test_hostile_secrets);
    # of anything else only the size.
    for key in ("k2", "k3"):
        assert json.loads(got[key]["payload"]) == json.loads(dict(bad)[key])
    assert "job_id" in got["k3"]["detail"]
    assert got["k1"]["payload"] is None and got["k4"]["payload"] is None
    assert w.running


def test_duplicate_delivery_runs_once(run_sbx, pg, kafka, start_worker, topics, workdir):
    """The same job published three times (twice while it runs, once after it
    finished) runs once."""
    j = job("p-dup", "sleep 1; echo once")
    msg = json.dumps(j)
    w = start_worker(SBX_WORK_DIR=workdir, **topics)
    kafka.produce(topics["SBX_TOPIC"], [("p-dup", msg), ("p-dup", msg)])
    wait_terminal(pg, [j["job_id"]], 60, [w])
    mark = w.mark()
    kafka.produce(topics["SBX_TOPIC"], [("p-dup", msg)])
    w.wait_log(r"%s already succeeded; skipped" % j["job_id"], 30, since=mark)
    assert history(pg, j["job_id"]).count("running") == 1
    assert pg.scalar("SELECT attempt FROM sbx.runs WHERE job_id = %s", j["job_id"]) == 1


def test_kill9_restart_every_job_once(run_sbx, pg, start_worker, topics, workdir):
    """kill -9 of the worker while builds run, then a restart: every job still
    reaches exactly one terminal state; the killed builds left no process."""
    marker = "sbx-kill9-%d" % os.getpid()
    jobs = [job("k9-%d" % (i % 6), "echo %s >/dev/null; sleep 1; echo done-%d" % (marker, i))
            for i in range(24)]
    env = dict(SBX_LOCAL_SLOTS=3, SBX_LEASE_TTL_MS=3000, SBX_KAFKA_SESSION_TIMEOUT_MS=6000,
               SBX_WORK_DIR=workdir, **topics)
    w1 = start_worker(**env)
    ids = enqueue(run_sbx, topics, jobs)
    wait_until(lambda: pg.scalar("SELECT count(*) FROM sbx.runs WHERE job_id = ANY(%s) "
                                 "AND status = 'succeeded'", ids) >= 3, 60, "first jobs done")
    def running_now():
        return pg.scalar("SELECT count(*) FROM sbx.runs WHERE job_id = ANY(%s) AND status = "
                         "'running'", ids)
    wait_until(lambda: running_now() >= 2, 30, "builds running")
    running = running_now()
    w1.kill(signal.SIGKILL)
    w1.wait(10)
    wait_until(lambda: subprocess.run(["pgrep", "-f", "sleep 1; echo done"],
                                      capture_output=True).returncode != 0,
               10, "the killed worker's sandboxes to be gone")
    t0 = time.monotonic()
    w2 = start_worker(**env)
    st = wait_terminal(pg, ids, 180, [w2])
    bad = [j for j in ids if st[j] != "succeeded"]
    assert not bad, [(j, st[j], pg.scalar("SELECT error FROM sbx.runs WHERE job_id = %s", j),
                      history(pg, j)) for j in bad]
    reran = 0
    for job_id in ids:
        h = history(pg, job_id)
        assert sum(1 for s in h if s in TERMINAL) == 1, (job_id, h)
        if h.count("running") > 1:
            reran += 1
    print("killed with %d builds running; %d jobs re-ran; settled %.1f s after restart"
          % (running, reran, time.monotonic() - t0))


def test_bad_config_stops_startup(sbx_bin, services):
    """One clear line per bad setting, naming the variable and the fix."""
    env = dict(os.environ, **services)
    env.update(SBX_LOCAL_SLOTS="lots", SBX_LEASE_TTL_MS="5")
    env.pop("SBX_BROKERS")
    r = subprocess.run([str(sbx_bin / "sbx-worker")], env=env, capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert any("SBX_BROKERS" in l and "not set" in l for l in lines), r.stderr
    assert any("SBX_LOCAL_SLOTS=lots" in l and "integer" in l for l in lines), r.stderr
    assert any("SBX_LEASE_TTL_MS=5" in l for l in lines), r.stderr
    assert len(lines) == 3, r.stderr


def test_bad_config_without_network_stops_startup(sbx_bin, services):
    """Settings that are wrong on their face (no network needed to tell)
    stop start-up, one line each naming the variable and the fix, before
    the worker connects anywhere; a database URL that may hold a password
    is not echoed."""
    env = dict(os.environ, **services)
    env.update(SBX_DATABASE_URL="notaurl", SBX_BROKERS="127.0.0.1:9092,kafka",
               SBX_ADMIN_LISTEN="localhost:9464", SBX_REDIS_URL="redis://127.0.0.1:70000",
               SBX_RETENTION="1w")
    r = subprocess.run([str(sbx_bin / "sbx-worker")], env=env, capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert any("SBX_DATABASE_URL=notaurl" in l and "postgresql://" in l for l in lines), r.stderr
    assert any("SBX_BROKERS" in l and '"kafka"' in l and "host:port" in l for l in lines), r.stderr
    assert any("SBX_ADMIN_LISTEN=localhost:9464" in l and "ip:port" in l for l in lines), r.stderr
    assert any("SBX_REDIS_URL=" in l and "port" in l for l in lines), r.stderr
    assert any("SBX_RETENTION=1w" in l and "7d" in l for l in lines), r.stderr
    assert len(lines) == 5, r.stderr
    assert "starting" not in r.stderr + r.stdout

    env.update(SBX_DATABASE_URL="postgresql://sbx:Pw-9secret@db:5432/sbx?nosuchkey=1",
               SBX_BROKERS=services["SBX_BROKERS"], SBX_ADMIN_LISTEN="127.0.0.1:65536",
               SBX_REDIS_URL=services["SBX_REDIS_URL"], SBX_RETENTION="0")
    r = subprocess.run([str(sbx_bin / "sbx-worker")], env=env, capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr
    assert "SBX_DATABASE_URL" in lines[0] and "Pw-9secret" not in r.stderr, r.stderr
    assert "SBX_ADMIN_LISTEN=127.0.0.1:65536" in lines[1], r.stderr


def test_cancel_running_and_waiting(run_sbx, pg, start_worker, topics, workdir):
    """`sbx cancel` stops a running build within seconds (its processes gone)
    and ends a job still waiting for its project without ever running it."""
    marker = str(32000 + os.getpid() % 1000)
    running = job("p-cancel", "echo started; sleep %s; echo never" % marker)
    waiting = job("p-cancel", "echo should-not-run")
    w = start_worker(SBX_WORK_DIR=workdir, **topics)
    enqueue(run_sbx, topics, [running, waiting])
    wait_until(lambda: statuses(pg, [running["job_id"]]).get(running["job_id"]) == "running",
               30, "the first build running")
    wait_until(lambda: statuses(pg, [waiting["job_id"]]).get(waiting["job_id"]) ==
               "waiting_capacity", 30, "the second waiting for its project")
    t0 = time.monotonic()
    run_sbx("cancel", waiting["job_id"])
    run_sbx("cancel", running["job_id"])
    st = wait_terminal(pg, [running["job_id"], waiting["job_id"]], 30, [w])
    took = time.monotonic() - t0
    assert st == {running["job_id"]: "canceled", waiting["job_id"]: "canceled"}
    assert took < 10, took
    assert "running" not in history(pg, waiting["job_id"])
    ps = subprocess.run(["pgrep", "-f", "sleep %s" % marker], capture_output=True, text=True)
    assert ps.stdout.strip() == "", "the canceled build's processes survived"
    print("canceled in %.2f s" % took)


def test_sigterm_lets_builds_finish(run_sbx, pg, start_worker, topics, workdir):
    """SIGTERM: no new jobs, the running build finishes and is recorded
    within the grace period, then the worker leaves cleanly (exit 0)."""
    j = job("p-term", "sleep 2; echo finished-in-grace")
    w = start_worker(SBX_WORK_DIR=workdir, SBX_SHUTDOWN_GRACE_MS=30000, **topics)
    enqueue(run_sbx, topics, [j])
    wait_until(lambda: statuses(pg, [j["job_id"]]).get(j["job_id"]) == "running", 30, "running")
    w.kill(signal.SIGTERM)
    assert w.wait(30) == 0
    assert statuses(pg, [j["job_id"]])[j["job_id"]] == "succeeded"
    assert "all jobs finished; leaving" in w.text()


def test_sigterm_hands_back_after_grace(run_sbx, pg, start_worker, topics, workdir):
    """Past the grace period the worker stops the build, requeues the run and
    releases its lease, so the next worker starts it at once — not after the
    30 s lease TTL — with a newer token."""
    marker = str(33000 + os.getpid() % 1000)
    j = job("p-hand", "sleep %s" % marker)
    env = dict(SBX_WORK_DIR=workdir, SBX_LEASE_TTL_MS=30000, SBX_KAFKA_SESSION_TIMEOUT_MS=6000,
               **topics)
    w1 = start_worker(SBX_SHUTDOWN_GRACE_MS=500, **env)
    enqueue(run_sbx, topics, [j])
    wait_until(lambda: statuses(pg, [j["job_id"]]).get(j["job_id"]) == "running", 30, "running")
    t1 = pg.scalar("SELECT lease_token FROM sbx.runs WHERE job_id = %s", j["job_id"])
    w1.kill(signal.SIGTERM)
    assert w1.wait(20) == 0
    assert statuses(pg, [j["job_id"]])[j["job_id"]] == "queued"
    assert subprocess.run(["pgrep", "-f", "sleep %s" % marker]).returncode != 0
    t0 = time.monotonic()
    start_worker(**env)
    wait_until(lambda: pg.scalar("SELECT attempt FROM sbx.runs WHERE job_id = %s AND status = "
                                 "'running'", j["job_id"]) == 2, 25, "the second run")
    assert pg.scalar("SELECT lease_token FROM sbx.runs WHERE job_id = %s", j["job_id"]) > t1
    print("handed back; running again %.1f s after the new worker started"
          % (time.monotonic() - t0))
    run_sbx("cancel", j["job_id"])


def test_policy_reject(run_sbx, pg, start_worker, topics, workdir):
    """SBX_PROJECT_POLICY=reject: a job for a project with a build running
    ends canceled with the reason; the running build is untouched."""
    a = job("p-rej", "sleep 2; echo first")
    b = job("p-rej", "echo second")
    w = start_worker(SBX_WORK_DIR=workdir, SBX_PROJECT_POLICY="reject", **topics)
    enqueue(run_sbx, topics, [a])
    wait_until(lambda: statuses(pg, [a["job_id"]]).get(a["job_id"]) == "running", 30, "running")
    enqueue(run_sbx, topics, [b])
    st = wait_terminal(pg, [a["job_id"], b["job_id"]], 60, [w])
    assert st == {a["job_id"]: "succeeded", b["job_id"]: "canceled"}
    err = pg.scalar("SELECT error FROM sbx.runs WHERE job_id = %s", b["job_id"])
    assert "rejected" in err and "p-rej" in err
    assert "running" not in history(pg, b["job_id"])


def test_policy_supersede(run_sbx, pg, start_worker, topics, workdir):
    """SBX_PROJECT_POLICY=supersede (a new prompt arrives): the running build
    and the older waiting one are canceled; the newest runs."""
    marker = str(34000 + os.getpid() % 1000)
    a = job("p-sup", "sleep %s" % marker)
    b = job("p-sup", "echo middle")
    c = job("p-sup", "echo newest")
    w = start_worker(SBX_WORK_DIR=workdir, SBX_PROJECT_POLICY="supersede", **topics)
    enqueue(run_sbx, topics, [a])
    wait_until(lambda: statuses(pg, [a["job_id"]]).get(a["job_id"]) == "running", 30, "running")
    t0 = time.monotonic()
    enqueue(run_sbx, topics, [b, c])
    st = wait_terminal(pg, [a["job_id"], b["job_id"], c["job_id"]], 60, [w])
    assert st == {a["job_id"]: "canceled", b["job_id"]: "canceled", c["job_id"]: "succeeded"}
    assert "running" not in history(pg, b["job_id"])
    assert subprocess.run(["pgrep", "-f", "sleep %s" % marker]).returncode != 0
    print("superseded in %.2f s" % (time.monotonic() - t0))


def _get(url):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_readiness_reports_outage_and_metrics(run_sbx, pg, start_worker, services_ctl, topics,
                                              workdir):
    """/readyz turns 503 naming Redis while Redis is down and 200 again when
    it is back; a build started before the outage still succeeds; /metrics
    carries the counters and the consumer lag."""
    port = sbxsvc._free_port(set())
    w = start_worker(SBX_WORK_DIR=workdir, SBX_ADMIN_LISTEN="127.0.0.1:%d" % port,
                     SBX_KAFKA_CONF="statistics.interval.ms=500", **topics)
    base = "http://127.0.0.1:%d" % port
    w.wait_log(r"serving /healthz", 20)
    wait_until(lambda: _get(base + "/readyz")[0] == 200, 30, "ready")
    assert _get(base + "/healthz") == (200, "ok\n")
    j = job("p-ready", "sleep 1; echo survived")
    enqueue(run_sbx, topics, [j])
    wait_until(lambda: statuses(pg, [j["job_id"]]).get(j["job_id"]) == "running", 30, "running")
    services_ctl.down("redis", hard=True)
    try:
        wait_until(lambda: _get(base + "/readyz")[0] == 503, 15, "not ready")
        code, body = _get(base + "/readyz")
        assert json.loads(body)["redis"] == "down" and json.loads(body)["postgres"] == "up"
    finally:
        services_ctl.up("redis")
    wait_until(lambda: _get(base + "/readyz")[0] == 200, 30, "ready again")
    st = wait_terminal(pg, [j["job_id"]], 60, [w])
    assert st[j["job_id"]] == "succeeded"
    code, text = _get(base + "/metrics")
    assert code == 200
    assert re.search(r'^sbx_jobs_finished_total\{status="succeeded"\} 1$', text, re.M), text
    assert re.search(r'^sbx_up\{dep="redis"\} 1$', text, re.M)
    assert re.search(r'^sbx_kafka_consumer_lag\{topic="%s",partition="\d+"\} 0$'
                     % re.escape(topics["SBX_TOPIC"]), text, re.M), text
