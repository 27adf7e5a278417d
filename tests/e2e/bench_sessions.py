"""bench_sessions.py — what a session's sandbox costs in time, per provider:
create-to-running (provisioning -> running in the run's history) of a
session's first job cold (a new sandbox) and warm (SBX_WARM), of a later job
(the sandbox reused) and of a job that resumes a paused sandbox, with the
provider's own resume time. `make bench-sessions` (not part of `make test`:
a measurement, not a check); every backend is the real one the e2e tests
use. Medians of BENCH_SESSIONS_N runs (default 5), each figure measured in
this one run on this box; the table goes to the terminal and to
$SBX_BUILD/bench-sessions.md.
"""

import os
import re
import statistics
import time
import uuid

import pytest

from conftest import wait_until
from test_providers import Harness, backend  # noqa: F401 — the parametrized backend fixture
from test_sessions import create_to_running_ms, session
from test_worker import job, topics  # noqa: F401

N = int(os.environ.get("BENCH_SESSIONS_N", "5"))
RESULTS = {}


def run_one(h, sid, script="true", **extra):
    j = job(h.project, script, session=dict(id=sid, **extra))
    h.enqueue(j)
    r = h.wait_terminal(j["job_id"], 120)
    assert r[0] == "succeeded", r
    detail = h.pg.scalar("SELECT detail FROM sbx.run_events WHERE job_id = %s AND "
                         "to_status = 'running' ORDER BY id DESC LIMIT 1", j["job_id"]) or ""
    return create_to_running_ms(h, j["job_id"]), detail


def med(xs):
    return "%.0f ms" % statistics.median(xs) if xs else "n/a"


@pytest.fixture
def h(backend, start_worker, topics, run_sbx, pg):  # noqa: F811
    if backend.name == "vmpool":
        backend.ensure_running()
    hh = Harness(backend, start_worker, topics, run_sbx, pg)
    yield hh
    for sid in getattr(hh, "sids", []):
        pg.execute("SELECT sbx.stop_session(%s, %s)", hh.project, sid)
    if backend.name == "vmpool":
        backend.set_warm(0)


def test_bench_sessions(h):
    h.sids = []
    cold, reused, resumed, resume_ms, warm = [], [], [], [], []
    w = h.start()
    for i in range(N):
        sid = "b-%s-%d" % (uuid.uuid4().hex[:6], i)
        h.sids.append(sid)
        ms, d = run_one(h, sid, pause_after_s=1, idle_timeout_s=600)
        assert "new sandbox" in d, d
        cold.append(ms)
        ms, d = run_one(h, sid, pause_after_s=1, idle_timeout_s=600)
        assert "sandbox reused" in d, d
        reused.append(ms)
        h.sid = sid
        wait_until(lambda: session(h)[0] == "paused", 30, "the session to pause")
        ms, d = run_one(h, sid, pause_after_s=600, idle_timeout_s=600)
        m = re.search(r"resumed in (\d+) ms", d)
        if m:
            resumed.append(ms)
            resume_ms.append(int(m.group(1)))
        h.run_sbx("session", "stop", h.project, sid)
    w.stop()
    if h.b.name == "vmpool":
        h.b.set_warm(1)  # vmpool's pool is the agents' (SBX_AGENT_WARM)
    h.start(SBX_WARM="1")
    for i in range(N):
        time.sleep(2)  # the pool makes the next warm sandbox in the background
        sid = "bw-%s-%d" % (uuid.uuid4().hex[:6], i)
        h.sids.append(sid)
        ms, d = run_one(h, sid)
        if "warm sandbox" in d:
            warm.append(ms)
        h.run_sbx("session", "stop", h.project, sid)
    RESULTS[h.b.key] = (med(cold), med(warm), med(reused), med(resumed), med(resume_ms))
    print("\n%s: create-to-running cold %s, warm %s, reused %s, resumed %s "
          "(provider resume %s)" % ((h.b.key,) + RESULTS[h.b.key]))


def teardown_module(module):
    if not RESULTS:
        return
    lines = ["| provider | cold (new sandbox) | warm (SBX_WARM) | reused | resumed | "
             "provider's resume |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for p, r in RESULTS.items():
        lines.append("| %s | %s | %s | %s | %s | %s |" % ((p,) + r))
    text = ("Create-to-running of a session's job (provisioning -> running, median of %d), "
            "one run of `make bench-sessions`:\n\n" % N) + "\n".join(lines) + "\n"
    print("\n" + text)
    out = os.path.join(os.environ.get("SBX_BUILD", "build"), "bench-sessions.md")
    with open(out, "w") as f:
        f.write(text)
