"""test_reliability_deps.py — a worker is in the consumer group only while it
can work (issue 10, item 5).

Real Kafka, Redis, PostgreSQL and sandboxes, as in test_worker.py. Who holds
which partition is read from the broker itself (the group's description,
DescribeGroups through librdkafka's rd_kafka_list_groups with ctypes: each
member's client.id, which is the worker's SBX_WORKER_ID, and its assigned
partitions), and who ran a job from sbx.runs.worker_id.

- A worker started against a dead Redis never joins: it logs one line per
  dependency it waits for (URL with the password hidden, the error), holds
  no partition while another worker runs every job, and exits 1 with one
  line per dependency when SBX_STARTUP_WAIT_MS runs out.
- A Redis outage longer than SBX_DEPENDENCY_GRACE_MS makes the worker leave
  the group (the other takes every partition and runs the jobs); once Redis
  is back it rejoins and runs jobs again. The outage is staged with a
  private redis-server that only that worker uses, so the other worker and
  the session's services are untouched.
- `sbx-worker --check-config` connects: exit 0 against good services, and
  exit 1 with one clear line for a missing topic, a dead Redis, a wrong
  PostgreSQL password and an unmigrated database.
"""

import ctypes
import json
import os
import re
import struct
import subprocess
import time
import urllib.parse
import uuid

import pytest

import sbxsvc
from conftest import wait_until
from test_worker import _get, job, topics, wait_terminal, workdir  # noqa: F401 (fixtures)

PARTS = 8           # the topics fixture's job topic
GRACE_MS = 3000     # SBX_DEPENDENCY_GRACE_MS of the worker whose Redis goes away


# --- the group as the broker sees it ---------------------------------------------

class _Broker(ctypes.Structure):
    _fields_ = [("id", ctypes.c_int32), ("host", ctypes.c_char_p), ("port", ctypes.c_int)]


class _Member(ctypes.Structure):
    _fields_ = [("member_id", ctypes.c_char_p), ("client_id", ctypes.c_char_p),
                ("client_host", ctypes.c_char_p), ("member_metadata", ctypes.c_void_p),
                ("member_metadata_size", ctypes.c_int), ("member_assignment", ctypes.c_void_p),
                ("member_assignment_size", ctypes.c_int)]


class _Group(ctypes.Structure):
    _fields_ = [("broker", _Broker), ("group", ctypes.c_char_p), ("err", ctypes.c_int),
                ("state", ctypes.c_char_p), ("protocol_type", ctypes.c_char_p),
                ("protocol", ctypes.c_char_p), ("members", ctypes.POINTER(_Member)),
                ("member_cnt", ctypes.c_int)]


class _GroupList(ctypes.Structure):
    _fields_ = [("groups", ctypes.POINTER(_Group)), ("group_cnt", ctypes.c_int)]


def _assignment(raw):
    """Kafka's ConsumerProtocol assignment: version, [topic, [partition]]."""
    if len(raw) < 6:
        return []
    off, parts = 2, []
    (ntopics,) = struct.unpack_from(">i", raw, off)
    off += 4
    for _ in range(max(ntopics, 0)):
        (tlen,) = struct.unpack_from(">h", raw, off)
        off += 2 + tlen
        (n,) = struct.unpack_from(">i", raw, off)
        off += 4
        parts += list(struct.unpack_from(">%di" % n, raw, off))
        off += 4 * n
    return sorted(parts)


def group_members(brokers, group):
    """{client.id: [partitions]} of the group's members, from the broker."""
    lib = ctypes.CDLL("librdkafka.so.1")
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    lib.rd_kafka_conf_new.restype = vp
    lib.rd_kafka_conf_set.argtypes = [vp, cp, cp, cp, ctypes.c_size_t]
    lib.rd_kafka_new.restype = vp
    lib.rd_kafka_new.argtypes = [ctypes.c_int, vp, cp, ctypes.c_size_t]
    lib.rd_kafka_list_groups.argtypes = [vp, cp, ctypes.POINTER(ctypes.POINTER(_GroupList)),
                                         ctypes.c_int]
    lib.rd_kafka_group_list_destroy.argtypes = [ctypes.POINTER(_GroupList)]
    lib.rd_kafka_destroy.argtypes = [vp]
    err = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    assert lib.rd_kafka_conf_set(conf, b"bootstrap.servers", brokers.encode(), err, 512) == 0
    rk = lib.rd_kafka_new(0, conf, err, 512)
    assert rk, err.value
    lst = ctypes.POINTER(_GroupList)()
    try:
        rc = lib.rd_kafka_list_groups(rk, group.encode(), ctypes.byref(lst), 10000)
        assert rc == 0, "rd_kafka_list_groups: %d" % rc
        out = {}
        for g in range(lst.contents.group_cnt):
            info = lst.contents.groups[g]
            for i in range(info.member_cnt):
                m = info.members[i]
                raw = ctypes.string_at(m.member_assignment, m.member_assignment_size) \
                    if m.member_assignment else b""
                out[m.client_id.decode()] = _assignment(raw)
        lib.rd_kafka_group_list_destroy(lst)
        return out
    finally:
        lib.rd_kafka_destroy(rk)


def settled(brokers, group, want):
    """The group's members are exactly `want` (a set of client ids), each
    holds a partition and together they hold all PARTS; returns the map."""
    m = group_members(brokers, group)
    held = sorted(p for ps in m.values() for p in ps)
    if set(m) == set(want) and held == list(range(PARTS)) and all(m.values()):
        return m
    return None


def dead_port():
    """A port nothing listens on (chosen free, then released)."""
    return sbxsvc._free_port(set())


def produce_jobs(services, topics, jobs):
    """Through kcat, keyed by project: `sbx enqueue` would do as well; this
    keeps the test off the CLI."""
    data = "".join("%s\x1f%s\x1e" % (j["project_id"], json.dumps(j)) for j in jobs).encode()
    r = subprocess.run(["kcat", "-b", services["SBX_BROKERS"], "-P", "-t", topics["SBX_TOPIC"],
                        "-D", "\x1e", "-K", "\x1f"], input=data, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode(errors="replace")


def ran_by(pg, ids):
    rows = pg.query("SELECT job_id, worker_id FROM sbx.runs WHERE job_id = ANY(%s)", list(ids))
    return {r[0]: r[1] for r in rows}


def readyz(port):
    code, body = _get("http://127.0.0.1:%d/readyz" % port)
    return code, json.loads(body)


def metric(port, line_re):
    code, body = _get("http://127.0.0.1:%d/metrics" % port)
    assert code == 200
    m = re.search(line_re, body, re.M)
    return m.group(1) if m else None


@pytest.fixture
def own_redis():
    """A redis-server of this test's own, to stop and start at will."""
    svc = sbxsvc.Services(keep=os.environ.get("SBX_KEEP_SERVICES") == "1")
    try:
        svc.start(kafka=False, redis=True, postgres=False)
    except sbxsvc.ServiceError as e:
        pytest.fail("private redis did not start: %s" % e, pytrace=False)
    yield svc
    svc.stop()


def _worker(start_worker, workdir, name, uid_base, **env):
    port = sbxsvc._free_port(set())
    w = start_worker(SBX_WORKER_ID=name, SBX_NODE="node-" + name, SBX_UID_BASE=uid_base,
                     SBX_WORK_DIR=workdir, SBX_ADMIN_LISTEN="127.0.0.1:%d" % port,
                     SBX_LOG_LEVEL="info", **env)
    w.admin = port
    return w


# --- start-up -----------------------------------------------------------------------

def test_dead_redis_at_start_holds_no_partition(services, pg, start_worker, topics, workdir):
    """A worker whose Redis is dead at start waits outside the group: one
    line naming Redis, its URL without the password and the error; no
    partition, /readyz 503 "waiting for redis", while another worker holds
    every partition and runs every job."""
    secret = "St4rt-" + uuid.uuid4().hex[:8]
    port = dead_port()
    url = "redis://:%s@127.0.0.1:%d" % (secret, port)
    a = _worker(start_worker, workdir, "dead-a", 61000, SBX_REDIS_URL=url,
                SBX_STARTUP_WAIT_MS=120000, **topics)
    a.wait_log(r"waiting for redis at redis://:\*\*\*@127\.0\.0\.1:%d \(connect to .*%d "
               r"failed: Connection refused\); not joining the consumer group" % (port, port), 20)
    b = _worker(start_worker, workdir, "live-b", 62000, **topics)
    m = wait_until(lambda: settled(services["SBX_BROKERS"], topics["SBX_GROUP"], {"live-b"}), 60,
                   "live-b alone in the group with every partition")
    assert "dead-a" not in m
    jobs = [job("p-start-%d" % i, "echo %d" % i) for i in range(12)]
    produce_jobs(services, topics, jobs)
    ids = [j["job_id"] for j in jobs]
    st = wait_terminal(pg, ids, 120, [a, b])
    assert set(st.values()) == {"succeeded"}, st
    assert set(ran_by(pg, ids).values()) == {"live-b"}
    # Still outside after all that: no partition, not ready, and why.
    assert "dead-a" not in group_members(services["SBX_BROKERS"], topics["SBX_GROUP"])
    code, r = readyz(a.admin)
    assert code == 503 and r["assigned_partitions"] == 0, r
    assert r["intake"].startswith("waiting for redis"), r
    assert metric(a.admin, r"^sbx_consumer_group_member (\d+)$") == "0"
    text = a.text()
    assert len(re.findall(r"waiting for redis at", text)) == 1, text
    assert "waiting for postgres" not in text
    assert secret not in text and a.running


def test_startup_wait_runs_out_exits_nonzero(services, start_worker, topics, workdir):
    """Redis and PostgreSQL both dead: one waiting line each, then after
    SBX_STARTUP_WAIT_MS one line each on stderr naming the setting to fix,
    and exit status 1; the worker never joined the group."""
    rport, pport = dead_port(), dead_port()
    t0 = time.monotonic()
    a = _worker(start_worker, workdir, "gives-up", 61000,
                SBX_REDIS_URL="redis://127.0.0.1:%d" % rport,
                SBX_DATABASE_URL="postgresql://sbx:Pg-s3cret@127.0.0.1:%d/sbx" % pport,
                SBX_STARTUP_WAIT_MS=3000, **topics)
    status = a.wait(30)
    took = time.monotonic() - t0
    assert status == 1, a.tail()
    text = a.text()
    assert len(re.findall(r"waiting for redis at redis://127\.0\.0\.1:%d" % rport, text)) == 1
    assert len(re.findall(r"waiting for postgres at postgresql://sbx:\*\*\*@127\.0\.0\.1:%d"
                          % pport, text)) == 1, text
    assert re.search(r"^sbx-worker: redis at .* did not answer within SBX_STARTUP_WAIT_MS=3000 "
                     r"\(.*refused\): start it, or fix SBX_REDIS_URL$", text, re.M), text
    assert re.search(r"^sbx-worker: postgres at .* did not answer within "
                     r"SBX_STARTUP_WAIT_MS=3000 .*fix SBX_DATABASE_URL$", text, re.M), text
    assert not re.search(r": joining the consumer group", text), text
    assert "Pg-s3cret" not in text
    assert 3 <= took < 20, took
    print("start-up wait of 3 s: exited after %.1f s" % took)


# --- an outage longer than the grace ---------------------------------------------------

def test_redis_outage_leaves_group_then_rejoins(services, pg, start_worker, topics, workdir,
                                                own_redis):
    """Worker A's Redis goes away for longer than SBX_DEPENDENCY_GRACE_MS: A
    pauses intake and leaves the group, B takes every partition and runs the
    jobs sent meanwhile; /readyz of A says "paused: redis down Ns". Redis
    back: A rejoins, holds partitions again and runs jobs again."""
    brokers, group = services["SBX_BROKERS"], topics["SBX_GROUP"]
    a = _worker(start_worker, workdir, "out-a", 61000, SBX_REDIS_URL=own_redis.env["SBX_REDIS_URL"],
                SBX_DEPENDENCY_GRACE_MS=GRACE_MS, **topics)
    b = _worker(start_worker, workdir, "in-b", 62000, **topics)
    wait_until(lambda: settled(brokers, group, {"out-a", "in-b"}), 60, "both in the group")

    own_redis.down("redis", hard=True)
    t_down = time.monotonic()
    a.wait_log(r"redis down for \d+ s .*leaving the consumer group", 30)
    t_left = time.monotonic()
    wait_until(lambda: settled(brokers, group, {"in-b"}), 30, "in-b alone with every partition")
    t_taken = time.monotonic()
    code, r = readyz(a.admin)
    assert code == 503 and r["assigned_partitions"] == 0, r
    assert re.fullmatch(r"paused: redis down \d+s", r["intake"]), r
    assert metric(a.admin, r"^sbx_consumer_group_member (\d+)$") == "0"
    assert int(metric(a.admin, r'^sbx_dependency_down_seconds\{dep="redis"\} (\d+)$')) >= 3
    assert a.running

    during = [job("p-out-%d" % i, "echo out-%d" % i) for i in range(10)]
    produce_jobs(services, topics, during)
    ids = [j["job_id"] for j in during]
    st = wait_terminal(pg, ids, 120, [a, b])
    assert set(st.values()) == {"succeeded"}, st
    assert set(ran_by(pg, ids).values()) == {"in-b"}

    own_redis.up("redis")
    t_up = time.monotonic()
    a.wait_log(r"redis and postgres answer for \d+ s again .*joining the consumer group", 60)
    wait_until(lambda: settled(brokers, group, {"out-a", "in-b"}), 60, "out-a back in the group")
    t_back = time.monotonic()
    code, r = readyz(a.admin)
    assert code == 200 and r["intake"] == "joined" and r["assigned_partitions"] > 0, r

    after = [job("p-back-%d" % i, "echo back-%d" % i) for i in range(16)]
    produce_jobs(services, topics, after)
    ids = [j["job_id"] for j in after]
    st = wait_terminal(pg, ids, 120, [a, b])
    assert set(st.values()) == {"succeeded"}, st
    assert "out-a" in set(ran_by(pg, ids).values())
    print("redis down -> A left the group %.1f s, B held every partition %.1f s; "
          "redis up -> A back in the group %.1f s (grace %d ms)"
          % (t_left - t_down, t_taken - t_down, t_back - t_up, GRACE_MS))


# --- --check-config ----------------------------------------------------------------------

def check_config(sbx_bin, services, **env):
    full = dict(os.environ, **services)
    full.update({k: str(v) for k, v in env.items()})
    t0 = time.monotonic()
    r = subprocess.run([str(sbx_bin / "sbx-worker"), "--check-config"], env=full,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    r.took = time.monotonic() - t0
    r.checks = [l for l in r.stdout.splitlines() if re.match(r"^(redis|postgres|kafka): ", l)]
    r.problems = [l for l in r.checks if ": PROBLEM: " in l]
    return r


@pytest.fixture
def pw_role(services_ctl, pg):
    """A PostgreSQL role that must give its password: the session's server
    trusts every local login, so pg_hba.conf gets one line for this role
    only (removed again at teardown)."""
    role = "sbx_pw_" + uuid.uuid4().hex[:8]
    pw = "Right-" + uuid.uuid4().hex[:8]
    pg.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (role, pw))
    hba = os.path.join(services_ctl.svc["postgres"].data, "pg_hba.conf")
    with open(hba) as f:
        orig = f.read()
    with open(hba, "w") as f:
        f.write("host all %s 127.0.0.1/32 scram-sha-256\n" % role + orig)
    pg.scalar("SELECT pg_reload_conf()")
    yield role, pw
    with open(hba, "w") as f:
        f.write(orig)
    pg.scalar("SELECT pg_reload_conf()")
    pg.execute("DROP ROLE IF EXISTS %s" % role)


def test_check_config_connects(sbx_bin, services, pg, topics, pw_role):
    """--check-config tries each service: good ones give exit 0 and an "ok"
    line each; each fault gives exit 1 and one line naming it and the fix,
    the other checks staying ok; nothing printed holds a password, and a
    missing topic is not created by the check."""
    good = check_config(sbx_bin, services, **topics)
    assert good.returncode == 0, good.stdout + good.stderr
    assert len(good.checks) == 5 and not good.problems, good.stdout
    assert any(l.startswith("redis: ok") for l in good.checks)
    assert any(l.startswith("postgres: ok") and "migrated" in l for l in good.checks)
    assert sum(l.startswith("kafka: ok") for l in good.checks) == 3
    timings = {"good": good.took}

    missing = "sbx.e2e.missing." + uuid.uuid4().hex[:8]
    r = check_config(sbx_bin, services, **dict(topics, SBX_DLQ_TOPIC=missing))
    assert r.returncode == 1 and len(r.problems) == 1, r.stdout
    assert re.match(r"kafka: PROBLEM: topic %s \(SBX_DLQ_TOPIC\) does not exist; create it"
                    % re.escape(missing), r.problems[0]), r.problems
    meta = subprocess.run(["kcat", "-b", services["SBX_BROKERS"], "-L", "-J"],
                          capture_output=True, text=True, timeout=30).stdout
    assert missing not in meta, "the check created the topic"
    timings["missing topic"] = r.took

    secret = "Dead-" + uuid.uuid4().hex[:8]
    port = dead_port()
    r = check_config(sbx_bin, services, SBX_REDIS_URL="redis://:%s@127.0.0.1:%d" % (secret, port),
                     **topics)
    assert r.returncode == 1 and len(r.problems) == 1, r.stdout
    assert re.match(r"redis: PROBLEM: redis://:\*\*\*@127\.0\.0\.1:%d: connect failed: "
                    r"Connection refused; start Redis there or fix SBX_REDIS_URL$" % port,
                    r.problems[0]), r.problems
    assert secret not in r.stdout + r.stderr
    timings["dead redis"] = r.took

    role, pw = pw_role
    u = urllib.parse.urlsplit(services["SBX_DATABASE_URL"])
    wrong = "Wr0ng-" + uuid.uuid4().hex[:8]
    url = "postgresql://%s:%s@%s%s" % (role, wrong, u.netloc.split("@", 1)[1], u.path)
    r = check_config(sbx_bin, services, SBX_DATABASE_URL=url, **topics)
    assert r.returncode == 1 and len(r.problems) == 1, r.stdout
    assert re.match(r"postgres: PROBLEM: postgresql://%s:\*\*\*@.*password authentication "
                    r"failed.*; fix the user or password in SBX_DATABASE_URL$" % role,
                    r.problems[0]), r.problems
    assert wrong not in r.stdout + r.stderr
    # The right password passes: the line was about the password.
    r = check_config(sbx_bin, services, SBX_DATABASE_URL=url.replace(wrong, pw), **topics)
    assert r.returncode == 0 and not r.problems, r.stdout
    timings["wrong pg password"] = r.took

    db = "sbx_empty_" + uuid.uuid4().hex[:8]
    pg.execute("CREATE DATABASE %s" % db)
    try:
        r = check_config(sbx_bin, services,
                         SBX_DATABASE_URL=services["SBX_DATABASE_URL"].rsplit("/", 1)[0] + "/" + db,
                         **topics)
    finally:
        pg.execute("DROP DATABASE %s" % db)
    assert r.returncode == 1 and len(r.problems) == 1, r.stdout
    assert "schema sbx does not exist; run `sbx migrate`" in r.problems[0], r.problems
    timings["unmigrated db"] = r.took

    for what, took in timings.items():
        assert took < 15, (what, took)
    print("--check-config took: " + ", ".join("%s %.1f s" % kv for kv in timings.items()))


def test_check_config_dead_kafka_is_bounded(sbx_bin, services):
    """No broker at all: one kafka line, quickly (every broker refused ends
    the wait before its 5 s bound)."""
    r = check_config(sbx_bin, services, SBX_BROKERS="127.0.0.1:%d" % dead_port())
    assert r.returncode == 1 and len(r.problems) == 1, r.stdout
    assert re.match(r"kafka: PROBLEM: no broker of 127\.0\.0\.1:\d+ answered within 5000 ms "
                    r"\(.*Connection refused.*\); start Kafka or fix SBX_BROKERS", r.problems[0])
    assert r.took < 10, r.took
