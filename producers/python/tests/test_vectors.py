"""test_vectors.py — the shared job vectors through the Python client's own
gate: every schemas/examples/job/valid/ job is accepted, every invalid/ one
is refused by enqueue() before anything is sent; the run/log/session vectors
check the validators the e2e test uses; the TypedDicts name what the schemas name;
the fingerprint is libsbx's (the same case as the Node client's test)."""
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import get_type_hints

import pytest

import sbx_client
from sbx_client import Client, JobInvalidError, fingerprint, validate_job, validator_for
from sbx_client import types as T

REPO = Path(__file__).resolve().parents[3]


def vectors(kind, folder):
    d = REPO / "schemas" / "examples" / kind / folder
    files = sorted(d.glob("*.json"))
    assert len(files) > 5, d
    return [pytest.param(load(f), id=f.name) for f in files]


def load(f):
    # deep_nesting_1000.json nests past the default recursion limit of
    # Python's json module; a caller could still build such a dict.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(10000)
    try:
        return json.loads(f.read_text("utf-8"))
    finally:
        sys.setrecursionlimit(old)


@pytest.mark.parametrize("job", vectors("job", "valid"))
def test_valid_job_accepted(job):
    validate_job(job)


@pytest.fixture(scope="module")
def nowhere():
    # A listener standing in for the broker counts connections: a client that
    # opened one (metadata, a send) for an invalid job is caught.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.1)
    accepted, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                accepted.append(1)
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    c = Client(brokers="127.0.0.1:%d" % srv.getsockname()[1], topic="none", ack_timeout_s=2)
    yield c
    time.sleep(0.2)
    stop.set()
    t.join()
    srv.close()
    assert c._producer is None, "a producer was created for an invalid job"
    assert not accepted, "the client connected to the broker for an invalid job"
    c.close()


@pytest.mark.parametrize("job", vectors("job", "invalid"))
def test_invalid_job_refused_before_sending(nowhere, job):
    with pytest.raises(JobInvalidError) as e:
        nowhere.enqueue(job)
    assert e.value.errors


@pytest.mark.parametrize("kind", ["run", "log", "session"])
def test_report_vectors(kind):
    v = validator_for("%s.v1.schema.json" % kind)
    for p in vectors(kind, "valid"):
        assert not list(v.iter_errors(p.values[0])), p.id
    for p in vectors(kind, "invalid"):
        assert list(v.iter_errors(p.values[0])), p.id


@pytest.mark.parametrize("kind,cls", [("run", T.Run), ("log", T.LogChunk), ("job", T.Job),
                                      ("run", T.RunEvent), ("session", T.Session),
                                      ("session", T.SessionEvent), ("job", T.SessionOptions)])
def test_types_name_what_the_schema_names(kind, cls):
    schema = sbx_client.load_schema("%s.v1.schema.json" % kind)
    if cls in (T.RunEvent, T.SessionEvent):
        schema = schema["properties"]["events"]["items"]
    if cls is T.SessionOptions:
        schema = schema["properties"]["session"]
    assert set(get_type_hints(cls)) == set(schema["properties"])
    required = set(schema.get("required", []))
    assert {k for k in cls.__required_keys__} == required


def test_fingerprint_is_libsbx_rule():
    text = validate_job({"job_id": "j", "project_id": "p", "script": "echo /é\u2028\"\\\n\t\u0001",
                         "env": {"B": "s1", "A": "s2"}, "metadata": {"k": "v"}})
    redacted, sha = fingerprint(text)
    assert redacted == ('{"job_id":"j","project_id":"p","script":"echo /é\u2028\\"\\\\\\n\\t\\u0001",'
                        '"env":{"B":"<redacted>","A":"<redacted>"},"metadata":{"k":"v"}}')
    other = json.loads(text)
    other["env"] = {"B": "x", "A": "y"}
    assert fingerprint(json.dumps(other, ensure_ascii=False, separators=(",", ":")))[1] == sha
    assert json.loads(fingerprint('{"job_id":"j","secrets":{"a":1}}')[0])["secrets"] == "<redacted>"
    # "session" is kept, as libsbx keeps it: the session trigger reads it from sbx.runs.spec.
    assert json.loads(fingerprint('{"job_id":"j","session":{"id":"dev"}}')[0])["session"] == {"id": "dev"}
