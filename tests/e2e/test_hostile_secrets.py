"""test_hostile_secrets.py — issue 9 items 5 and 8 end to end: job env values
never at rest in clear, and job-caused errors end the run failed at once.

Real sbx-worker (local provider, real bubblewrap), real Kafka, Redis and
PostgreSQL. The worker logs in as a role that holds only sbx_writer, so the
run also proves the writer role is all a worker needs. Every env value is a
fresh random token; after the jobs end, the test reads every column of every
row of sbx.runs and sbx.run_events for them, every message of the
dead-letter topic, the worker's log and `sbx status` output, and finds the
token nowhere, while the build printed its SHA-256 (so it did get it).

Before this change (measured with the previous build): the token was in
sbx.runs.spec of every recorded job and, in clear and in base64, in every
dead letter; a 300-byte file name or clashing `files` ran SBX_MAX_ATTEMPTS
attempts as provider errors and then ended dead_lettered.
"""

import hashlib
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import REPO
from test_worker import enqueue, topics, wait_terminal, workdir  # noqa: F401 (fixtures)

MIGRATION = REPO / "migrations" / "0002_secrets_roles.sql"


def psql(url, sql, check=True):
    """Runs sql in one psql session (ON_ERROR_STOP); returns the process."""
    r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url],
                       input=sql, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        pytest.fail("psql failed: %s" % r.stderr, pytrace=False)
    return r


def as_role(url, role):
    """The session URL with another user name (the test cluster trusts
    127.0.0.1)."""
    scheme, rest = url.split("://", 1)
    return "%s://%s@%s" % (scheme, role, rest.split("@", 1)[1])


@pytest.fixture
def writer_url(services, pg):
    """A login role that is only a member of sbx_writer."""
    role = "sbx_e2e_writer"
    pg.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '%s') THEN "
               "CREATE ROLE %s LOGIN; END IF; END $$" % (role, role))
    pg.execute("GRANT sbx_writer TO %s" % role)
    return as_role(services["SBX_DATABASE_URL"], role)


def everything_stored(pg, kafka, topics, ids, n_dlq):
    """Every column of the jobs' rows and events as text, and every dead
    letter as the bytes the topic holds."""
    rows = pg.query("SELECT r::text FROM sbx.runs r WHERE job_id = ANY(%s)", list(ids))
    events = pg.query("SELECT e::text FROM sbx.run_events e WHERE job_id = ANY(%s)", list(ids))
    dlq = kafka.consume(topics["SBX_DLQ_TOPIC"], n_dlq, timeout=60)
    return [r[0] for r in rows], [e[0] for e in events], dlq


def test_env_values_never_stored(run_sbx, pg, kafka, start_worker, topics, workdir,  # noqa: F811
                                 writer_url, sbx_bin, services):
    secret = "sbx-secret-" + uuid.uuid4().hex
    digest = hashlib.sha256(secret.encode()).hexdigest()
    tag = uuid.uuid4().hex[:8]
    ok = {"job_id": "sec-ok-" + tag, "project_id": "sec-a-" + tag,
          "script": 'printf %s "$NPM_TOKEN" | sha256sum', "env": {"NPM_TOKEN": secret}}
    fail = {"job_id": "sec-fail-" + tag, "project_id": "sec-b-" + tag,
            "script": "exit 3", "env": {"NPM_TOKEN": secret, "OTHER": secret + "-2"}}
    badname = {"job_id": "sec-name-" + tag, "project_id": "sec-c-" + tag, "script": "true",
               "env": {"NPM_TOKEN": secret}, "files": {"x" * 300: "data"}}
    # Valid JSON that the schema refuses, a secret in env and in a misspelt
    # member; and broken JSON with the secret in it.
    schema_bad = json.dumps({"job_id": "sec-dlq-" + tag, "project_id": "sec-d-" + tag,
                             "script": "true", "timeout_s": 0, "env": {"NPM_TOKEN": secret},
                             "enviroment": {"AWS_SECRET": secret}})
    broken = '{"job_id": "sec-broken-%s", "env": {"NPM_TOKEN": "%s"' % (tag, secret)

    w = start_worker(SBX_WORK_DIR=workdir, SBX_DATABASE_URL=writer_url, **topics)
    kafka.produce(topics["SBX_TOPIC"], [("sec-d-" + tag, schema_bad), ("sec-e-" + tag, broken)])
    ids = enqueue(run_sbx, topics, [ok, fail, badname])
    st = wait_terminal(pg, ids, 90, [w])
    assert st == {ok["job_id"]: "succeeded", fail["job_id"]: "failed",
                  badname["job_id"]: "failed"}, st

    # The build got the real value.
    tail = pg.scalar("SELECT log_tail FROM sbx.runs WHERE job_id = %s", ok["job_id"])
    assert digest in tail, tail

    rows, events, dlq = everything_stored(pg, kafka, topics, ids, 2)
    assert len(rows) == 3 and len(events) >= 9
    for text in rows + events:
        assert secret not in text, text
    # The names stay, the values are redacted.
    spec = pg.scalar("SELECT spec FROM sbx.runs WHERE job_id = %s", fail["job_id"])
    spec = spec if isinstance(spec, dict) else json.loads(spec)
    assert spec["env"] == {"NPM_TOKEN": "<redacted>", "OTHER": "<redacted>"}
    assert spec["script"] == "exit 3"

    assert len(dlq) == 2
    for m in dlq:
        assert secret not in json.dumps(m), m
    env = {json.loads(m["payload"])["reason"]: json.loads(m["payload"]) for m in dlq}
    assert set(env) == {"schema_violation", "invalid_json"}
    kept = json.loads(env["schema_violation"]["payload"])
    assert kept["env"] == {"NPM_TOKEN": "<redacted>"} and kept["enviroment"] == "<redacted>"
    assert kept["script"] == "true"
    assert env["schema_violation"]["payload_bytes"] == len(schema_bad.encode())
    assert env["invalid_json"]["payload"] is None
    assert env["invalid_json"]["payload_bytes"] == len(broken.encode())
    assert env["invalid_json"]["job_id"] == "sec-broken-" + tag

    # What people look at.
    for args in (["status", fail["job_id"]], ["status", "--json", "--history", fail["job_id"]],
                 ["status", "--history", badname["job_id"]]):
        out = run_sbx(*args)
        assert secret not in out.stdout + out.stderr
    assert secret not in w.text()


def test_migration_twice_and_roles(pg, services, run_sbx):
    """sbx migrate finds 0002 applied; the file itself runs twice more without
    error; a reader can SELECT but not UPDATE nor call the worker's
    functions; a writer can call them but not UPDATE directly."""
    r = run_sbx("migrate")
    assert "0 applied" in r.stdout, r.stdout
    url = services["SBX_DATABASE_URL"]
    for _ in range(2):
        psql(url, "BEGIN;\n" + MIGRATION.read_text() + "\nCOMMIT;\n")
    assert pg.scalar("SELECT count(*) FROM pg_roles WHERE rolname IN ('sbx_reader', 'sbx_writer') "
                     "AND NOT rolcanlogin") == 2

    ok = psql(url, "SET ROLE sbx_reader; SELECT count(*) >= 0 FROM sbx.runs; "
                   "SELECT count(*) >= 0 FROM sbx.run_events; LISTEN sbx_runs;")
    assert ok.stdout.split() == ["t", "t"], ok.stdout
    for sql in ("UPDATE sbx.runs SET error = 'x'",
                "INSERT INTO sbx.run_events (job_id, to_status) VALUES ('x', 'queued')",
                "SELECT sbx.wait_run('no-such-job', 'w', 'x')"):
        bad = psql(url, "SET ROLE sbx_reader; %s;" % sql, check=False)
        assert bad.returncode != 0 and "permission denied" in bad.stderr, (sql, bad.stderr)

    ok = psql(url, "SET ROLE sbx_writer; SELECT sbx.wait_run('no-such-job', 'w', 'x');")
    assert ok.stdout.strip() == "f"
    bad = psql(url, "SET ROLE sbx_writer; UPDATE sbx.runs SET error = 'x';", check=False)
    assert bad.returncode != 0 and "permission denied" in bad.stderr, bad.stderr

    # The database side redacts too (a worker of an older release).
    tag = uuid.uuid4().hex[:8]
    pg.execute("SELECT * FROM sbx.record_run(%s, 'p', %s::jsonb, 'w', 0, 0)", "old-" + tag,
               json.dumps({"job_id": "old-" + tag, "env": {"K": "v-" + tag}}))
    assert "v-" + tag not in pg.scalar("SELECT spec::text FROM sbx.runs WHERE job_id = %s",
                                       "old-" + tag)


def test_job_errors_fail_at_once(run_sbx, pg, kafka, start_worker, topics, workdir):  # noqa: F811
    """A 300-byte file name and clashing `files` end failed on attempt 1 with
    the reason; no requeue, no dead letter (SBX_MAX_ATTEMPTS=3 would retry a
    provider error twice)."""
    tag = uuid.uuid4().hex[:8]
    jobs = [
        {"job_id": "je-name-" + tag, "project_id": "je-a-" + tag, "script": "true",
         "files": {"dir/" + "n" * 300: "x"}},
        {"job_id": "je-clash-" + tag, "project_id": "je-b-" + tag, "script": "true",
         "files": {"a": "1", "a/b": "2"}},
    ]
    w = start_worker(SBX_WORK_DIR=workdir, SBX_MAX_ATTEMPTS=3, **topics)
    ids = enqueue(run_sbx, topics, jobs)
    st = wait_terminal(pg, ids, 60, [w])
    assert set(st.values()) == {"failed"}, st
    rows = dict((r[0], r[1:]) for r in pg.query(
        "SELECT job_id, attempt, error, exit_code FROM sbx.runs WHERE job_id = ANY(%s)", ids))
    assert rows["je-name-" + tag][0] == 1 and "file name too long" in rows["je-name-" + tag][1]
    assert rows["je-clash-" + tag][0] == 1 and "clashes" in rows["je-clash-" + tag][1]
    for job_id in ids:
        hist = [r[0] for r in pg.query("SELECT to_status FROM sbx.run_events WHERE job_id = %s "
                                       "ORDER BY id", job_id)]
        assert hist.count("provisioning") == 1 and "dead_lettered" not in hist, hist
    assert sum(kafka.end_offsets(topics["SBX_DLQ_TOPIC"]).values()) == 0
    assert "provider error" not in w.text()
