"""test_reliability_dlqdata.py — dead letters as data (issue 10, item 2, and
the dead-letter half of item 6's retention).

Real sbx-worker, Kafka, Redis and PostgreSQL, as in test_worker.py.

- Malformed messages become one row each in sbx.dead_letters with the right
  reason, published; a replay of the whole job topic from earliest (a second
  worker in a new consumer group) adds no row and no envelope.
- `sbx dlq list` / `show` print them; neither prints an env value, and
  sbx_reader can read the rows but not the originals kept for replay.
- Fix and replay: a job whose every attempt met a provider error (the work
  directory replaced by a file) ends dead_lettered with a row; the directory
  is put back, `sbx dlq replay` sends the original again and the job runs to
  succeeded; replaying it once more, and replaying a message the parser
  refuses, are refused with the reason.
- PostgreSQL down while a message is dead-lettered: nothing reaches the
  dead-letter topic and the offset is not committed until the row is
  recorded; after PostgreSQL returns, the row, the envelope and the commit
  follow (nothing lost, nothing before its row).
- Retention: rows backdated past SBX_DLQ_RETENTION are deleted by the
  worker, newer ones stay, and /metrics counts them; a bad
  SBX_DLQ_RETENTION stops start-up with one line.
"""

import json
import os
import re
import shutil
import subprocess
import time
import uuid

import sbxsvc
from conftest import wait_until
from test_reliability_dlq import committed, end_offset, one_partition  # noqa: F401 (fixture)
from test_worker import _get, enqueue, history, job, topics, wait_terminal, workdir  # noqa: F401

DL_SQL = ("SELECT id, reason, encode(kafka_key, 'escape'), published, job_id "
          "FROM sbx.dead_letters WHERE topic = %s ORDER BY id")


def rows(pg, topic):
    return pg.query(DL_SQL, topic)


def dlq_end(kafka, topic):
    return sum(kafka.end_offsets(topic).values())


def psql(url, sql):
    return subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url],
                          input=sql, capture_output=True, text=True, timeout=60)


def test_malformed_recorded_once_even_through_a_topic_replay(run_sbx, pg, kafka, start_worker,
                                                             topics, workdir, services):
    secret = "sbx-secret-" + uuid.uuid4().hex
    bad = [
        ("k1", b'{"job_id": "x", "project_id": '),                                  # bad JSON
        ("k2", json.dumps({"job_id": "e2e-types", "project_id": 7, "script": 1}).encode()),
        ("k3", json.dumps({"project_id": "p", "script": "true"}).encode()),        # no job_id
        ("k4", b'{"job_id": "e2e-\xff", "project_id": "p", "script": "true"}'),    # not UTF-8
        ("k5", json.dumps({"job_id": "e2e-sec-" + uuid.uuid4().hex[:8], "project_id": "p",
                           "script": "true", "timeout_s": 0,
                           "env": {"NPM_TOKEN": secret}}).encode()),                # schema
    ]
    want = {"k1": "invalid_json", "k2": "schema_violation", "k3": "schema_violation",
            "k4": "not_utf8", "k5": "schema_violation"}
    w1 = start_worker(SBX_WORK_DIR=workdir, **topics)
    kafka.produce(topics["SBX_TOPIC"], bad)
    good = job("p-good", "echo still-alive")
    enqueue(run_sbx, topics, [good])
    assert wait_terminal(pg, [good["job_id"]], 60, [w1])[good["job_id"]] == "succeeded"
    wait_until(lambda: len(rows(pg, topics["SBX_TOPIC"])) == len(bad)
               and all(r[3] for r in rows(pg, topics["SBX_TOPIC"])), 30,
               "one published row per bad message")
    got = rows(pg, topics["SBX_TOPIC"])
    assert {r[2]: r[1] for r in got} == want
    assert dlq_end(kafka, topics["SBX_DLQ_TOPIC"]) == len(bad)

    # The rows and what people see keep the secret out; the original (for
    # replay) has it, and only sbx_writer may read it.
    texts = [r[0] for r in pg.query("SELECT d::text FROM sbx.dead_letters d WHERE topic = %s",
                                    topics["SBX_TOPIC"])]
    assert len(texts) == len(bad) and not any(secret in t for t in texts)
    k5 = [r[0] for r in got if r[2] == "k5"][0]
    orig = pg.scalar("SELECT convert_from(payload, 'UTF8') FROM sbx.dead_letter_originals "
                     "WHERE id = %s", k5)
    assert secret in orig
    url = services["SBX_DATABASE_URL"]
    r = psql(url, "SET ROLE sbx_reader; SELECT count(*) FROM sbx.dead_letters;")
    assert r.returncode == 0, r.stderr
    r = psql(url, "SET ROLE sbx_reader; SELECT count(*) FROM sbx.dead_letter_originals;")
    assert r.returncode != 0 and "permission denied" in r.stderr, r.stderr
    r = psql(url, "SET ROLE sbx_writer; SELECT count(*) FROM sbx.dead_letter_originals;")
    assert r.returncode == 0, r.stderr

    # sbx dlq list / show.
    out = run_sbx("dlq", "list", "--limit", "100").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TIME", "REASON", "JOB", "PARTITION@OFFSET", "BYTES",
                                "REPLAYED"]
    for dl_id, reason, key, _, _ in got:
        line = [l for l in lines[1:] if l.split()[0] == str(dl_id)]
        assert line and line[0].split()[2] == reason, out
    nv = run_sbx("dlq", "list", "--reason", "not_utf8", "--since", "1h").stdout.splitlines()[1:]
    assert str([r[0] for r in got if r[2] == "k4"][0]) in [l.split()[0] for l in nv]
    assert all(l.split()[2] == "not_utf8" for l in nv)
    show = run_sbx("dlq", "show", k5).stdout
    assert re.search(r"^reason +schema_violation$", show, re.M), show
    assert re.search(r"^key +k5$", show, re.M), show
    assert re.search(r"^published +yes", show, re.M), show
    assert "<redacted>" in show and secret not in show
    shown = json.loads(run_sbx("dlq", "show", "--json", k5).stdout)
    assert shown["reason"] == "schema_violation" and shown["key"] == "k5"
    assert secret not in json.dumps(shown)
    missing = run_sbx("dlq", "show", "999999999", check=False)
    assert missing.returncode == 1 and "no dead letter" in missing.stderr

    # A message this sbx's parser refuses is not replayed (it would only be
    # dead-lettered again).
    r = run_sbx("dlq", "replay", k5, check=False)
    assert r.returncode == 1 and "refused again (schema_violation" in r.stderr, r.stderr

    # The whole job topic again from earliest, in a new group: nothing new.
    w1.stop()
    mark_rows, mark_dlq = len(got), dlq_end(kafka, topics["SBX_DLQ_TOPIC"])
    w2 = start_worker(SBX_WORK_DIR=workdir, **dict(topics, SBX_GROUP=topics["SBX_GROUP"] + "-2"))
    w2.wait_log(r"%s already succeeded; skipped" % good["job_id"], 60)
    wait_until(lambda: len(re.findall(r"already recorded and published", w2.text())) == len(bad),
               60, "every bad message found recorded")
    assert len(rows(pg, topics["SBX_TOPIC"])) == mark_rows
    assert dlq_end(kafka, topics["SBX_DLQ_TOPIC"]) == mark_dlq


def test_retries_exhausted_fixed_and_replayed(run_sbx, pg, kafka, start_worker, topics, workdir):
    w = start_worker(SBX_WORK_DIR=workdir, SBX_MAX_ATTEMPTS=2, SBX_RETRY_BASE_MS=50, **topics)
    w.wait_log(r"assigned \d+ partitions", 30)
    # Break the provider: the work directory becomes a file, so no
    # workspace can be made (a provider error, retried, then given up).
    shutil.rmtree(workdir)
    open(workdir, "w").close()
    j = job("p-replay", "echo replayed-ok", env={"NPM_TOKEN": "tok-" + uuid.uuid4().hex})
    try:
        enqueue(run_sbx, topics, [j])
        assert wait_terminal(pg, [j["job_id"]], 60, [w])[j["job_id"]] == "dead_lettered"
    finally:
        os.unlink(workdir)
        os.mkdir(workdir)
        os.chmod(workdir, 0o755)
    got = rows(pg, topics["SBX_TOPIC"])
    assert len(got) == 1 and got[0][1] == "retries_exhausted" and got[0][4] == j["job_id"]
    dl_id = got[0][0]
    wait_until(lambda: rows(pg, topics["SBX_TOPIC"])[0][3], 10, "the row published")
    env = kafka.consume(topics["SBX_DLQ_TOPIC"], 1, timeout=30)
    assert json.loads(env[0]["payload"])["reason"] == "retries_exhausted"

    r = run_sbx("dlq", "replay", dl_id)
    assert "its run queued again" in r.stdout, r.stdout
    wait_until(lambda: pg.scalar("SELECT status FROM sbx.runs WHERE job_id = %s",
                                 j["job_id"]) == "succeeded", 60, "the replayed job succeeded")
    assert "replayed-ok" in pg.scalar("SELECT log_tail FROM sbx.runs WHERE job_id = %s",
                                      j["job_id"])
    h = history(pg, j["job_id"])
    assert h.count("dead_lettered") == 1 and h[-1] == "succeeded", h
    assert h[h.index("dead_lettered") + 1] == "queued", h
    assert pg.scalar("SELECT replays FROM sbx.dead_letters WHERE id = %s", dl_id) == 1
    # No second dead letter for it; the replayed message is a new offset.
    assert len(rows(pg, topics["SBX_TOPIC"])) == 1

    # Once more: the job has run, and a job id runs once.
    r = run_sbx("dlq", "replay", dl_id, check=False)
    assert r.returncode == 1 and "already ended succeeded" in r.stderr, r.stderr
    r = run_sbx("dlq", "replay", "abc", check=False)
    assert r.returncode == 2


def test_postgres_down_dead_letter_waits_for_its_row(pg, kafka, services, services_ctl,
                                                     start_worker, one_partition, workdir):
    t = one_partition
    brokers = services["SBX_BROKERS"]
    port = sbxsvc._free_port(set())
    base = "http://127.0.0.1:%d" % port

    def pending():
        m = re.search(r"^sbx_dead_letters_pending (\d+)$", _get(base + "/metrics")[1], re.M)
        return int(m.group(1)) if m else -1

    w = start_worker(SBX_WORK_DIR=workdir, SBX_ADMIN_LISTEN="127.0.0.1:%d" % port, **t)
    w.wait_log(r"assigned 1 partitions", 30)
    services_ctl.down("postgres", hard=True)
    try:
        kafka.produce(t["SBX_TOPIC"], [("kd", "not json at all")])
        w.wait_log(r"p0@0 dead-lettered: invalid_json", 30)
        wait_until(lambda: pending() == 1, 10, "the dead letter pending")
        # Nothing may run ahead of the row: watch for a while (an envelope
        # published first would be there within milliseconds).
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert end_offset(brokers, t["SBX_DLQ_TOPIC"]) == 0
            time.sleep(0.5)
        assert committed(brokers, t["SBX_GROUP"], t["SBX_TOPIC"]) < 1
    finally:
        services_ctl.up("postgres")
    wait_until(lambda: pending() == 0, 60, "the dead letter recorded and published")
    assert end_offset(brokers, t["SBX_DLQ_TOPIC"]) == 1
    r = pg.query("SELECT reason, published FROM sbx.dead_letters WHERE topic = %s",
                 t["SBX_TOPIC"])
    assert [tuple(x) for x in r] == [("invalid_json", True)]
    wait_until(lambda: committed(brokers, t["SBX_GROUP"], t["SBX_TOPIC"]) == 1, 30,
               "the offset committed")


def test_dead_letter_retention(pg, kafka, start_worker, topics, sbx_bin, services):
    kafka.produce(topics["SBX_TOPIC"], [("r%d" % i, "not json %d" % i) for i in range(6)])
    w = start_worker(**topics)
    wait_until(lambda: len(rows(pg, topics["SBX_TOPIC"])) == 6, 60, "six dead letters")
    w.stop()
    old = [r[0] for r in rows(pg, topics["SBX_TOPIC"])][:4]
    pg.execute("UPDATE sbx.dead_letters SET created_at = now() - interval '31 days' "
               "WHERE id = ANY(%s)", old)
    due = int(pg.scalar("SELECT count(*) FROM sbx.dead_letters "
                        "WHERE created_at < now() - interval '30 days'"))
    port = sbxsvc._free_port(set())
    w = start_worker(SBX_ADMIN_LISTEN="127.0.0.1:%d" % port, **topics)
    wait_until(lambda: len(rows(pg, topics["SBX_TOPIC"])) == 2, 60, "old dead letters pruned")
    assert pg.scalar("SELECT count(*) FROM sbx.dead_letters WHERE id = ANY(%s)", old) == 0

    def pruned():
        m = re.search(r"^sbx_dead_letters_pruned_total (\d+)$",
                      _get("http://127.0.0.1:%d/metrics" % port)[1], re.M)
        return int(m.group(1)) if m else -1
    wait_until(lambda: pruned() == due, 10, "the metric counts them")
    assert re.search(r"prune +removed \d+ dead letters", w.text())

    env = dict(os.environ, **services)
    env.update(SBX_DLQ_RETENTION="1w")
    r = subprocess.run([str(sbx_bin / "sbx-worker")], env=env, capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "SBX_DLQ_RETENTION=1w" in lines[0] and "7d" in lines[0], r.stderr


def test_migration_0004_runs_twice(services):
    sql = open(os.path.join(os.path.dirname(__file__), "..", "..", "migrations",
                            "0004_dead_letters.sql")).read()
    for _ in range(2):
        r = psql(services["SBX_DATABASE_URL"], "BEGIN;\n" + sql + "\nCOMMIT;\n")
        assert r.returncode == 0, r.stderr
