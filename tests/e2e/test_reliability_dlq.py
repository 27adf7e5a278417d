"""test_reliability_dlq.py — no message can stall a partition (issue 10, item 1).

Real Kafka, Redis, PostgreSQL and sandboxes, as in test_worker.py. A message
far over the job size limit becomes one small dead letter (the envelope keeps
at most SBX_DLQ_PAYLOAD_MAX bytes of the redacted text, says it was cut, and
carries the SHA-256 of the redacted text), its offset is committed, and
after kill -9 and a restart the group's committed offset is at the end of the
partition and nothing is dead-lettered twice. A dead-letter topic that
refuses the envelope (its max.message.bytes below it) stalls the partition
visibly in /metrics and /readyz; the worker retries the publish with backoff
and, once the topic takes it, the partition's commit reaches the end.

The broker of the test services creates missing topics on first use
(auto.create.topics.enable, tests/services/sbxsvc.py), but the worker's
dead-letter producer never asks it to (allow.auto.create.topics=false), so
"the dead-letter topic missing" is staged against it as on a broker with
auto-creation off: the publish fails with "Unknown topic" and is retried
until the topic is created. A topic that refuses the envelope fails the
publish the same way (a delivery error, retried), and a publish that is
merely not acknowledged for 10 s counts as a stall too.

Topics with settings (max.message.bytes), alterations of them, and the
group's committed offsets go through librdkafka's admin API with ctypes: the
helpers in conftest.py and sbxsvc.py create topics without settings. The
20 MB message is produced with kcat and a raised message.max.bytes into a
job topic whose own max.message.bytes admits it.
"""

import ctypes
import hashlib
import json
import re
import signal
import subprocess
import time
import uuid

import pytest

import sbxsvc
from conftest import wait_until
from test_worker import _get, job, statuses, wait_terminal, workdir  # noqa: F401 (fixture)

BIG = 2_000_000          # over SBX_MSG_MAX_BYTES (1 MiB), parsed for redaction
HUGE = 20_000_000        # over the 2 MiB parse cap: only its size is kept
KEEP = 65536             # SBX_DLQ_PAYLOAD_MAX's default


# --- librdkafka's admin API through ctypes ----------------------------------------

class _TopicPartition(ctypes.Structure):
    _fields_ = [("topic", ctypes.c_char_p), ("partition", ctypes.c_int32),
                ("offset", ctypes.c_int64), ("metadata", ctypes.c_void_p),
                ("metadata_size", ctypes.c_size_t), ("opaque", ctypes.c_void_p),
                ("err", ctypes.c_int), ("_private", ctypes.c_void_p)]


class _Rdk:
    """A producer handle (admin requests need one) or a consumer of a group
    that never joins (for rd_kafka_committed)."""

    def __init__(self, brokers, group=None):
        lib = self.lib = ctypes.CDLL("librdkafka.so.1")
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for name, res, args in [
            ("rd_kafka_conf_new", vp, []),
            ("rd_kafka_conf_set", ctypes.c_int, [vp, cp, cp, cp, sz]),
            ("rd_kafka_new", vp, [ctypes.c_int, vp, cp, sz]),
            ("rd_kafka_destroy", None, [vp]),
            ("rd_kafka_destroy_flags", None, [vp, ctypes.c_int]),
            ("rd_kafka_queue_new", vp, [vp]),
            ("rd_kafka_queue_destroy", None, [vp]),
            ("rd_kafka_queue_poll", vp, [vp, ctypes.c_int]),
            ("rd_kafka_event_destroy", None, [vp]),
            ("rd_kafka_event_error", ctypes.c_int, [vp]),
            ("rd_kafka_event_error_string", cp, [vp]),
            ("rd_kafka_NewTopic_new", vp, [cp, ctypes.c_int, ctypes.c_int, cp, sz]),
            ("rd_kafka_NewTopic_set_config", ctypes.c_int, [vp, cp, cp]),
            ("rd_kafka_NewTopic_destroy", None, [vp]),
            ("rd_kafka_CreateTopics", None, [vp, ctypes.POINTER(vp), sz, vp, vp]),
            ("rd_kafka_event_CreateTopics_result", vp, [vp]),
            ("rd_kafka_CreateTopics_result_topics", ctypes.POINTER(vp), [vp, ctypes.POINTER(sz)]),
            ("rd_kafka_topic_result_error", ctypes.c_int, [vp]),
            ("rd_kafka_topic_result_error_string", cp, [vp]),
            ("rd_kafka_ConfigResource_new", vp, [ctypes.c_int, cp]),
            ("rd_kafka_ConfigResource_set_config", ctypes.c_int, [vp, cp, cp]),
            ("rd_kafka_ConfigResource_destroy", None, [vp]),
            ("rd_kafka_AlterConfigs", None, [vp, ctypes.POINTER(vp), sz, vp, vp]),
            ("rd_kafka_topic_partition_list_new", vp, [ctypes.c_int]),
            ("rd_kafka_topic_partition_list_add", ctypes.POINTER(_TopicPartition),
             [vp, cp, ctypes.c_int32]),
            ("rd_kafka_topic_partition_list_destroy", None, [vp]),
            ("rd_kafka_committed", ctypes.c_int, [vp, vp, ctypes.c_int]),
        ]:
            f = getattr(lib, name)
            f.restype, f.argtypes = res, args
        err = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        settings = [("bootstrap.servers", brokers)]
        if group:
            settings += [("group.id", group), ("enable.auto.commit", "false")]
        for k, v in settings:
            assert lib.rd_kafka_conf_set(conf, k.encode(), v.encode(), err, 512) == 0, err.value
        self.consumer = bool(group)
        self.rk = lib.rd_kafka_new(1 if group else 0, conf, err, 512)
        assert self.rk, err.value

    def close(self):
        if self.consumer:
            self.lib.rd_kafka_destroy_flags(self.rk, 0x8)   # RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE
        else:
            self.lib.rd_kafka_destroy(self.rk)

    def _wait(self, q):
        ev = self.lib.rd_kafka_queue_poll(q, 30000)
        assert ev, "no answer from the broker's admin API within 30 s"
        if self.lib.rd_kafka_event_error(ev):
            msg = self.lib.rd_kafka_event_error_string(ev)
            self.lib.rd_kafka_event_destroy(ev)
            pytest.fail("admin request: %s" % msg, pytrace=False)
        return ev

    def create_topic(self, name, parts, max_bytes=None):
        lib = self.lib
        err = ctypes.create_string_buffer(512)
        nt = lib.rd_kafka_NewTopic_new(name.encode(), parts, 1, err, 512)
        assert nt, err.value
        if max_bytes is not None:
            assert lib.rd_kafka_NewTopic_set_config(nt, b"max.message.bytes",
                                                    str(max_bytes).encode()) == 0
        q = lib.rd_kafka_queue_new(self.rk)
        arr = (ctypes.c_void_p * 1)(nt)
        lib.rd_kafka_CreateTopics(self.rk, arr, 1, None, q)
        ev = self._wait(q)
        cnt = ctypes.c_size_t(0)
        res = lib.rd_kafka_CreateTopics_result_topics(lib.rd_kafka_event_CreateTopics_result(ev),
                                                      ctypes.byref(cnt))
        assert cnt.value == 1
        code = lib.rd_kafka_topic_result_error(res[0])
        why = lib.rd_kafka_topic_result_error_string(res[0])
        lib.rd_kafka_event_destroy(ev)
        lib.rd_kafka_queue_destroy(q)
        lib.rd_kafka_NewTopic_destroy(nt)
        assert code == 0, "create %s: %s" % (name, why)

    def set_max_bytes(self, topic, max_bytes):
        """AlterConfigs (librdkafka 2.0 has no incremental form): the test
        topics set nothing else."""
        lib = self.lib
        r = lib.rd_kafka_ConfigResource_new(2, topic.encode())     # RD_KAFKA_RESOURCE_TOPIC
        assert lib.rd_kafka_ConfigResource_set_config(r, b"max.message.bytes",
                                                      str(max_bytes).encode()) == 0
        q = lib.rd_kafka_queue_new(self.rk)
        arr = (ctypes.c_void_p * 1)(r)
        lib.rd_kafka_AlterConfigs(self.rk, arr, 1, None, q)
        lib.rd_kafka_event_destroy(self._wait(q))
        lib.rd_kafka_queue_destroy(q)
        lib.rd_kafka_ConfigResource_destroy(r)

    def committed(self, topic, part):
        lib = self.lib
        lst = lib.rd_kafka_topic_partition_list_new(1)
        tp = lib.rd_kafka_topic_partition_list_add(lst, topic.encode(), part)
        assert lib.rd_kafka_committed(self.rk, lst, 10000) == 0
        off = tp.contents.offset
        lib.rd_kafka_topic_partition_list_destroy(lst)
        return off


def committed(brokers, group, topic, part=0):
    c = _Rdk(brokers, group)
    try:
        return c.committed(topic, part)
    finally:
        c.close()


@pytest.fixture
def one_partition(services):
    """A job topic of one partition that takes 25 MB messages, a dead-letter
    topic with the broker's default limit, a group: everything lands on the
    one partition, so "the jobs after them" are after them."""
    tag = uuid.uuid4().hex[:10]
    jobs, dlq = "sbx.e2e.rel.%s" % tag, "sbx.e2e.rel.%s.dlq" % tag
    admin = _Rdk(services["SBX_BROKERS"])
    try:
        admin.create_topic(jobs, 1, max_bytes=25_000_000)
        admin.create_topic(dlq, 1)
    finally:
        admin.close()
    sbxsvc.create_topics(services["SBX_BROKERS"], {jobs: 1, dlq: 1}, 30)   # waits for leaders
    return {"SBX_TOPIC": jobs, "SBX_DLQ_TOPIC": dlq, "SBX_GROUP": "g-" + tag}


def produce_raw(brokers, topic, messages):
    """(key, bytes) pairs, one kcat per message (a 20 MB value holds no
    delimiter we could trust), with the producer's limits raised."""
    for key, value in messages:
        r = subprocess.run(["kcat", "-b", brokers, "-P", "-t", topic, "-k", key,
                            "-X", "message.max.bytes=30000000", "-X", "linger.ms=0"],
                           input=value, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode(errors="replace")


def end_offset(brokers, topic, part=0):
    out = subprocess.run(["kcat", "-b", brokers, "-Q", "-t", "%s:%d:-1" % (topic, part)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    m = re.search(r"\[%d\] offset (\d+)" % part, out)
    assert m, out
    return int(m.group(1))


def dead_letters(brokers, topic, timeout=5):
    """Every envelope on the dead-letter topic, read to its end."""
    r = subprocess.run(["kcat", "-b", brokers, "-C", "-t", topic, "-o", "beginning", "-e",
                        "-J", "-q", "-X", "fetch.max.bytes=30000000"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def big_job(size, project):
    """A job message of exactly `size` bytes: one file of padding, and an env
    secret that must never show in the dead letter."""
    j = job(project, "true", env={"TOKEN": "s3cret-%s" % uuid.uuid4().hex})
    j["files"] = {"pad.txt": ""}
    pad = size - len(json.dumps(j, separators=(",", ":")))
    j["files"]["pad.txt"] = "x" * pad
    raw = json.dumps(j, separators=(",", ":")).encode()
    assert len(raw) == size
    return j, raw


def metric_lines(base, name):
    code, body = _get(base + "/metrics")
    assert code == 200
    return [l for l in body.splitlines() if l.startswith(name + "{")]


def stalled(base):
    """The stalls /readyz lists, or None."""
    code, body = _get(base + "/readyz")
    return json.loads(body).get("stalled") or None


def recovered(base, brokers, t):
    """After a stall of offset 0 of a two-message partition: the commit
    reaches the end, the stall is gone from /readyz and /metrics, lag is 0."""
    wait_until(lambda: committed(brokers, t["SBX_GROUP"], t["SBX_TOPIC"]) == 2, 30,
               "the commit at the partition's end")
    assert stalled(base) is None
    assert metric_lines(base, "sbx_partition_stalled_offset") == []
    wait_until(lambda: metric_lines(base, "sbx_kafka_consumer_lag") ==
               ['sbx_kafka_consumer_lag{topic="%s",partition="0"} 0' % t["SBX_TOPIC"]],
               30, "consumer lag 0")


def test_oversized_messages_dead_lettered_once_lag_returns_to_zero(pg, services, start_worker,
                                                                 one_partition, workdir):
    """A 2 MB and a 20 MB message become one small dead letter each (the 2 MB
    one with an excerpt, its size and the SHA-256 of its redacted text; no
    secret), the jobs after them succeed, and after kill -9 and a restart the
    committed offset is the partition's end: lag 0, nothing dead-lettered
    twice."""
    brokers, t = services["SBX_BROKERS"], one_partition
    port = sbxsvc._free_port(set())
    base = "http://127.0.0.1:%d" % port
    big, big_raw = big_job(BIG, "p-big")
    huge, huge_raw = big_job(HUGE, "p-huge")
    good = [job("p-after-%d" % i, "echo after-%d" % i) for i in range(3)]
    env = dict(SBX_WORK_DIR=workdir, SBX_ADMIN_LISTEN="127.0.0.1:%d" % port,
               SBX_KAFKA_CONF="statistics.interval.ms=500", **t)
    w1 = start_worker(**env)
    produce_raw(brokers, t["SBX_TOPIC"],
                [("p-big", big_raw), ("p-huge", huge_raw)] +
                [(g["project_id"], json.dumps(g).encode()) for g in good])
    ids = [g["job_id"] for g in good]
    st = wait_terminal(pg, ids, 120, [w1])
    assert set(st.values()) == {"succeeded"}, st
    end = end_offset(brokers, t["SBX_TOPIC"])
    assert end == 5
    wait_until(lambda: committed(brokers, t["SBX_GROUP"], t["SBX_TOPIC"]) == end, 30,
               "the group's commit at the partition's end")
    envs = dead_letters(brokers, t["SBX_DLQ_TOPIC"])
    assert len(envs) == 2, [e["key"] for e in envs]
    by = {e["key"]: json.loads(e["payload"]) for e in envs}
    for e in envs:
        # Each envelope fits far below the topic's default 1 MB.
        assert len(e["payload"].encode()) < 2 * KEEP + 4096
    b, h = by["p-big"], by["p-huge"]
    assert b["reason"] == "too_large" and h["reason"] == "too_large"
    assert b["payload_bytes"] == BIG and h["payload_bytes"] == HUGE
    assert b["payload"] is None and b["payload_truncated"] is True
    assert 0 < len(b["payload_excerpt"].encode()) <= KEEP
    assert b["payload_excerpt"].startswith("{")
    assert re.fullmatch(r"[0-9a-f]{64}", b["payload_sha256"])
    assert big["env"]["TOKEN"] not in json.dumps(b) and "<redacted>" in b["payload_excerpt"]
    assert b["job_id"] == big["job_id"]
    assert h["payload"] is None and h["payload_truncated"] is True
    assert h["payload_excerpt"] is None and h["payload_sha256"] is None
    assert h["job_id"] == huge["job_id"]      # read from the text even unparsed
    assert statuses(pg, [big["job_id"], huge["job_id"]]) == {}

    # kill -9 and restart: nothing is redelivered (the commit is at the end),
    # so nothing is dead-lettered again and the lag is 0.
    w1.kill(signal.SIGKILL)
    w1.wait(10)
    w2 = start_worker(**env)
    w2.wait_log(r"assigned 1 partitions", 60)
    wait_until(lambda: metric_lines(base, "sbx_kafka_consumer_lag") ==
               ['sbx_kafka_consumer_lag{topic="%s",partition="0"} 0' % t["SBX_TOPIC"]],
               30, "consumer lag 0 after the restart")
    time.sleep(2)
    assert len(dead_letters(brokers, t["SBX_DLQ_TOPIC"])) == 2
    assert "dead-lettered" not in w2.text()
    assert committed(brokers, t["SBX_GROUP"], t["SBX_TOPIC"]) == end
    assert metric_lines(base, "sbx_partition_stalled_offset") == []


def test_refused_dead_letter_stalls_visibly_then_recovers(pg, services, start_worker,
                                                          one_partition, workdir):
    """A dead-letter topic whose max.message.bytes is below the envelope:
    the publish fails and is retried; meanwhile /readyz lists the partition
    and offset as stalled and /metrics has its gauge, the job after it runs,
    and the commit waits. Once the topic takes the envelope, it is published
    once, the stall clears and the commit reaches the end."""
    brokers, t = services["SBX_BROKERS"], one_partition
    admin = _Rdk(brokers)
    try:
        admin.set_max_bytes(t["SBX_DLQ_TOPIC"], 512)
    finally:
        admin.close()
    port = sbxsvc._free_port(set())
    base = "http://127.0.0.1:%d" % port
    bad = job("p-bad", "true", timeout_s=0, files={"pad.txt": "y" * 4000})
    after = job("p-next", "echo next")
    w = start_worker(SBX_WORK_DIR=workdir, SBX_ADMIN_LISTEN="127.0.0.1:%d" % port,
                     SBX_KAFKA_CONF="statistics.interval.ms=500", **t)
    produce_raw(brokers, t["SBX_TOPIC"], [("p-bad", json.dumps(bad).encode()),
                                          ("p-next", json.dumps(after).encode())])
    w.wait_log(r"dead-letter publish for p0@0 failed", 60)

    wait_until(lambda: stalled(base), 30, "/readyz lists the stall")
    s = stalled(base)
    assert s[0]["partition"] == 0 and s[0]["offset"] == 0 and s[0]["failures"] >= 1, s
    assert "too large" in s[0]["error"].lower(), s
    assert metric_lines(base, "sbx_partition_stalled_offset") == \
        ['sbx_partition_stalled_offset{topic="%s",partition="0"} 0' % t["SBX_TOPIC"]]
    st = wait_terminal(pg, [after["job_id"]], 60, [w])
    assert st[after["job_id"]] == "succeeded"
    # The job after it is done, but the commit waits for offset 0.
    oldest = metric_lines(base, "sbx_partition_oldest_unfinished_offset")
    assert oldest == ['sbx_partition_oldest_unfinished_offset{topic="%s",partition="0"} 0'
                      % t["SBX_TOPIC"]], oldest
    time.sleep(1.5)
    assert committed(brokers, t["SBX_GROUP"], t["SBX_TOPIC"]) < 1
    assert dead_letters(brokers, t["SBX_DLQ_TOPIC"]) == []

    admin = _Rdk(brokers)
    try:
        admin.set_max_bytes(t["SBX_DLQ_TOPIC"], 1_048_588)
    finally:
        admin.close()
    w.wait_log(r"dead-letter publish succeeded after \d+ failures", 60)
    recovered(base, brokers, t)
    envs = dead_letters(brokers, t["SBX_DLQ_TOPIC"])
    assert len(envs) == 1
    e = json.loads(envs[0]["payload"])
    assert e["reason"] == "schema_violation" and e["payload_truncated"] is False
    assert e["payload_sha256"] == hashlib.sha256(e["payload"].encode()).hexdigest()


def test_missing_dead_letter_topic_stalls_visibly_then_recovers(pg, services, start_worker,
                                                                workdir):
    """SBX_DLQ_TOPIC names a topic that does not exist. The broker would
    create it on a producer's metadata request (auto.create.topics.enable),
    but the worker does not ask (allow.auto.create.topics=false), so this is
    what a broker with auto-creation off shows too: the publish fails
    ("Unknown topic") and is retried, /readyz and /metrics show the stall,
    the job after it runs, the commit waits, and the topic stays missing.
    Once someone creates it the dead letter goes through once, the commit
    reaches the end and the lag is 0."""
    brokers = services["SBX_BROKERS"]
    tag = uuid.uuid4().hex[:10]
    t = {"SBX_TOPIC": "sbx.e2e.rel.%s" % tag, "SBX_DLQ_TOPIC": "sbx.e2e.rel.%s.dlq" % tag,
         "SBX_GROUP": "g-" + tag}
    sbxsvc.create_topics(brokers, {t["SBX_TOPIC"]: 1}, 30)

    def dlq_exists():
        meta = json.loads(subprocess.run(["kcat", "-b", brokers, "-L", "-J"], capture_output=True,
                                         text=True, timeout=30, check=True).stdout)
        return any(x["topic"] == t["SBX_DLQ_TOPIC"] for x in meta["topics"])

    port = sbxsvc._free_port(set())
    base = "http://127.0.0.1:%d" % port
    bad = job("p-bad", "true", timeout_s=0)
    after = job("p-next", "echo next")
    w = start_worker(SBX_WORK_DIR=workdir, SBX_ADMIN_LISTEN="127.0.0.1:%d" % port,
                     SBX_KAFKA_CONF="statistics.interval.ms=500", **t)
    t0 = time.monotonic()
    produce_raw(brokers, t["SBX_TOPIC"], [("p-bad", json.dumps(bad).encode()),
                                          ("p-next", json.dumps(after).encode())])

    # Not acknowledged for 10 s counts as a stall before librdkafka fails it.
    s = wait_until(lambda: stalled(base), 40, "/readyz lists the stall")
    assert s[0]["partition"] == 0 and s[0]["offset"] == 0, s
    t_stall = time.monotonic()
    w.wait_log(r"dead-letter publish for p0@0 failed \(1 times\): .*[Uu]nknown topic", 60)
    w.wait_log(r"dead-letter publish for p0@0 failed \(2 times\)", 60)
    t_failed = time.monotonic()
    s = stalled(base)
    assert s and s[0]["failures"] >= 2 and "unknown topic" in s[0]["error"].lower(), s
    assert metric_lines(base, "sbx_partition_stalled_offset") == \
        ['sbx_partition_stalled_offset{topic="%s",partition="0"} 0' % t["SBX_TOPIC"]]
    st = wait_terminal(pg, [after["job_id"]], 60, [w])
    assert st[after["job_id"]] == "succeeded"
    assert metric_lines(base, "sbx_partition_oldest_unfinished_offset") == \
        ['sbx_partition_oldest_unfinished_offset{topic="%s",partition="0"} 0' % t["SBX_TOPIC"]]
    assert committed(brokers, t["SBX_GROUP"], t["SBX_TOPIC"]) < 1
    assert not dlq_exists(), "the worker created the dead-letter topic"

    admin = _Rdk(brokers)
    try:
        admin.create_topic(t["SBX_DLQ_TOPIC"], 1)
    finally:
        admin.close()
    t_created = time.monotonic()
    w.wait_log(r"dead-letter publish succeeded after \d+ failures", 90)
    t_through = time.monotonic()
    recovered(base, brokers, t)
    envs = dead_letters(brokers, t["SBX_DLQ_TOPIC"])
    assert len(envs) == 1 and json.loads(envs[0]["payload"])["reason"] == "schema_violation"
    print("missing dead-letter topic: stall shown %.1f s after produce, 2nd failure %.1f s, "
          "published %.1f s after the topic was created"
          % (t_stall - t0, t_failed - t0, t_through - t_created))
