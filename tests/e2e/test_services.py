"""test_services.py — the e2e harness itself: real services answer, restarts
keep what they must keep, and the helpers fail when they should."""

import signal
import subprocess
import sys
import uuid

import pytest

from conftest import PG, Worker, wait_until


def test_kafka_topics_exist_with_their_partitions(kafka):
    ends = kafka.end_offsets("sbx.jobs")
    assert sorted(ends) == list(range(8))
    assert sorted(kafka.end_offsets("sbx.jobs.dlq")) == [0]


def test_kafka_roundtrip_keeps_key_order_per_partition(kafka):
    topic = "sbx.test.%s" % uuid.uuid4().hex[:8]
    kafka.create_topics({topic: 3})
    assert sorted(kafka.end_offsets(topic)) == [0, 1, 2]
    msgs = [("p%d" % (i % 5), '{"n": %d}' % i) for i in range(20)]
    kafka.produce(topic, msgs)
    got = kafka.consume(topic, len(msgs), timeout=30)
    assert sorted((m["key"], m["payload"]) for m in got) == sorted(msgs)
    by_key = {}
    for m in sorted(got, key=lambda m: (m["partition"], m["offset"])):
        by_key.setdefault(m["key"], []).append(m)
    for key, ms in by_key.items():
        # One key, one partition, in production order.
        assert len({m["partition"] for m in ms}) == 1
        assert [m["payload"] for m in ms] == [v for k, v in msgs if k == key]


def _redis(url, *args):
    return subprocess.run(["redis-cli", "-u", url] + list(args), capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()


def test_redis_answers(services_raw):
    url = services_raw["SBX_REDIS_URL"]
    assert _redis(url, "PING") == "PONG"
    assert _redis(url, "SET", "sbx:test", "1") == "OK"
    assert _redis(url, "GET", "sbx:test") == "1"


def test_postgres_answers_durably(pg_raw):
    assert pg_raw.scalar("SELECT 1") == 1
    assert pg_raw.scalar("SELECT current_database()") == "sbx"
    assert pg_raw.scalar("SHOW fsync") == "on"
    assert pg_raw.scalar("SELECT %s::text || %s::text", "it's", 2) == "it's2"


def test_pg_helper_without_psycopg_quotes_and_types_as_text(services_raw):
    h = PG(services_raw["SBX_DATABASE_URL"])
    h.psycopg = None
    rows = h.query("SELECT %s::text, NULL, x FROM unnest(%s::int[]) AS x ORDER BY x", "a'b", [2, 1])
    assert rows == [("a'b", None, "1"), ("a'b", None, "2")]
    assert h.scalar("SELECT 1 WHERE false") is None


def test_postgres_crash_keeps_committed_rows(services_ctl, pg_raw):
    pg_raw.execute("CREATE TABLE IF NOT EXISTS harness_crash (x int)")
    pg_raw.execute("INSERT INTO harness_crash VALUES (42)")
    services_ctl.restart("postgres", hard=True)
    assert pg_raw.scalar("SELECT count(*) FROM harness_crash WHERE x = 42") == 1
    pg_raw.execute("DROP TABLE harness_crash")


def test_redis_restart_same_port_loses_volatile_data(services_ctl, services_raw):
    url = services_raw["SBX_REDIS_URL"]
    _redis(url, "SET", "sbx:volatile", "1")
    services_ctl.restart("redis", hard=True)
    assert services_ctl.env["SBX_REDIS_URL"] == url
    assert _redis(url, "EXISTS", "sbx:volatile") == "0"


def test_kafka_restart_keeps_messages(services_ctl, kafka):
    topic = "sbx.test.%s" % uuid.uuid4().hex[:8]
    kafka.produce(topic, [("k", "before")])
    services_ctl.restart("kafka")
    kafka.produce(topic, [("k", "after")])
    assert [m["payload"] for m in kafka.consume(topic, 2, timeout=30)] == ["before", "after"]


def test_wait_until_returns_value_and_fails_on_deadline():
    calls = []
    assert wait_until(lambda: calls.append(1) or len(calls) >= 3 and "ok", 5, "three calls") == "ok"
    with pytest.raises(pytest.fail.Exception, match="never"):
        wait_until(lambda: False, 0.2, "never")


def test_worker_helper_logs_signals_and_stops(tmp_path):
    # The harness's own process class, run on a small program that logs like
    # a worker would and exits on SIGTERM with a status of its own.
    prog = tmp_path / "fake-daemon.py"
    prog.write_text("import os, signal, sys, time\n"
                    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\n"
                    "print('ready id=' + os.environ['SBX_WORKER_ID'], flush=True)\n"
                    "while True: time.sleep(1)\n")
    prog.chmod(0o755)
    launcher = tmp_path / "daemon"
    launcher.write_text("#!/bin/sh\nexec %s %s\n" % (sys.executable, prog))
    launcher.chmod(0o755)
    w = Worker(launcher, {"SBX_WORKER_ID": "w-test", "PATH": "/usr/bin:/bin"},
               tmp_path / "w.log", "w-test")
    assert w.wait_log(r"ready id=(\S+)", 10).group(1) == "w-test"
    mark = w.mark()
    with pytest.raises(pytest.fail.Exception, match="did not log"):
        w.wait_log("never printed", 0.3, since=mark)
    assert w.stop() == 3
    assert not w.running
    w2 = Worker(launcher, {"SBX_WORKER_ID": "w2", "PATH": "/usr/bin:/bin"}, tmp_path / "w2.log", "w2")
    w2.wait_log("ready", 10)
    w2.kill(signal.SIGKILL)
    assert w2.wait(10) == -signal.SIGKILL
    with pytest.raises(pytest.fail.Exception, match="exited"):
        w2.wait_log("never printed", 5)


def test_migrations_applied_once_per_session(pg, run_sbx):
    assert pg.scalar("SELECT to_regclass('sbx.runs')::text") == "sbx.runs"
    applied = pg.scalar("SELECT count(*) FROM public.sbx_schema_migrations")
    assert applied >= 1
    # A second migrate is a no-op.
    run_sbx("migrate")
    assert pg.scalar("SELECT count(*) FROM public.sbx_schema_migrations") == applied
