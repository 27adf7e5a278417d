"""test_topics.py — `sbx topics create|describe` against the real broker.

Each test uses topic names of its own. What is checked is what an operator
relies on: a first run creates both topics with the settings sbx needs, a
second run changes nothing and says so, a topic made otherwise is reported
difference by difference (and left alone), the retention rule against
SBX_RETENTION holds, and the size limit lets the largest valid job through
where a topic with the broker's defaults refuses it.
"""

import uuid

import pytest

RECORD_MAX = 1024 * 1024 + 64 * 1024   # SBX_RECORD_MAX_BYTES (producers/include/sbx.h)


@pytest.fixture
def names():
    tag = uuid.uuid4().hex[:8]
    return "sbx.t.%s" % tag, "sbx.t.%s.dlq" % tag


def settings(out, topic):
    """{key: value} of the "TOPIC: N partitions, replication R, k=v, ..." line."""
    line = next(l for l in out.splitlines() if l.startswith(topic + ": ") and "=" in l)
    parts = line.split(": ", 1)[1].split(", ")
    got = {"partitions": int(parts[0].split()[0]), "replication": int(parts[1].split()[1])}
    got.update(p.split("=", 1) for p in parts[2:])
    return got


def test_create_then_again_then_describe(run_sbx, names):
    jobs, dlq = names
    r = run_sbx("topics", "create", "--topic", jobs, "--dlq-topic", dlq, "--partitions", 6)
    assert "%s: created with 6 partitions, replication 1" % jobs in r.stdout
    assert "%s: created with 1 partitions, replication 1" % dlq in r.stdout
    s = settings(r.stdout, jobs)
    assert s == {"partitions": 6, "replication": 1, "max.message.bytes": str(RECORD_MAX),
                 "retention.ms": str(3 * 86400 * 1000), "segment.ms": str(86400 * 1000),
                 "min.insync.replicas": "1", "cleanup.policy": "delete"}, s
    assert settings(r.stdout, dlq)["retention.ms"] == str(30 * 86400 * 1000)

    again = run_sbx("topics", "create", "--topic", jobs, "--dlq-topic", dlq, "--partitions", 6)
    assert "%s: exists with these settings already" % jobs in again.stdout
    assert "%s: exists with these settings already" % dlq in again.stdout

    d = run_sbx("topics", "describe", "--topic", jobs, "--dlq-topic", dlq)
    assert settings(d.stdout, jobs) == s


def test_existing_topic_with_other_settings_is_reported_not_changed(run_sbx, kafka, names):
    jobs, dlq = names
    kafka.create_topics({jobs: 4, dlq: 1})      # the broker's defaults
    r = run_sbx("topics", "create", "--topic", jobs, "--dlq-topic", dlq, check=False)
    assert r.returncode == 1, r
    assert "%s: has 4 partitions, not 12" % jobs in r.stdout
    assert "%s: has max.message.bytes=1048588, not %d" % (jobs, RECORD_MAX) in r.stdout
    assert "--add-config retention.ms=" in r.stdout
    d = run_sbx("topics", "describe", "--topic", jobs, "--dlq-topic", dlq)
    assert settings(d.stdout, jobs)["partitions"] == 4   # left as it was


def test_retention_must_end_before_the_workers_forget(run_sbx, names):
    jobs, dlq = names
    r = run_sbx("topics", "create", "--topic", jobs, "--dlq-topic", dlq, "--retention", "3d",
                env={"SBX_RETENTION": "4d"}, check=False)
    assert r.returncode == 2 and "SBX_RETENTION" in r.stderr, r
    r = run_sbx("topics", "describe", "--topic", jobs, "--dlq-topic", dlq, check=False)
    assert r.returncode == 1 and "%s: does not exist" % jobs in r.stdout   # nothing made
    run_sbx("topics", "create", "--topic", jobs, "--dlq-topic", dlq, "--retention", "2d",
            env={"SBX_RETENTION": "4d"})


def test_largest_job_fits_created_topic_not_default_one(run_sbx, kafka, names, tmp_path):
    jobs, dlq = names
    run_sbx("topics", "create", "--topic", jobs, "--dlq-topic", dlq, "--partitions", 1)
    plain = jobs + ".defaults"
    kafka.create_topics({plain: 1})
    big = tmp_path / "big.json"
    # SBX_MSG_MAX_BYTES exactly: the largest message the parser accepts.
    big.write_bytes(b'{"pad":"' + b"x" * (1024 * 1024 - 10) + b'"}')
    assert big.stat().st_size == 1024 * 1024
    send = ("enqueue", "--raw", "--json", big, "--project", "p", "--no-database")
    run_sbx(*send, "--topic", jobs)
    r = run_sbx(*send, "--topic", plain, "--delivery-timeout", 10, check=False)
    assert r.returncode == 1 and "too large" in (r.stderr + r.stdout).lower(), r
    got = kafka.consume(jobs, 1)
    assert len(got[0]["payload"]) == 1024 * 1024


def test_refuses_without_brokers_and_same_names(run_sbx, names):
    r = run_sbx("topics", "create", env={"SBX_BROKERS": ""}, check=False)
    assert r.returncode == 2 and "SBX_BROKERS" in r.stderr
    r = run_sbx("topics", "create", "--topic", names[0], "--dlq-topic", names[0], check=False)
    assert r.returncode == 2 and "both" in r.stderr
