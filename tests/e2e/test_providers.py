"""test_providers.py — one conformance suite for every provider: the same
scenarios run through sbx-worker on local (bubblewrap), docker (a private
Podman service, and again on a private dockerd: parameter `dockerd`), fly (the Machines API emulator) and vmpool (sbx-agent
processes), against the session's real Kafka, Redis and PostgreSQL.

What a UI backend would read (sbx.runs, sbx.run_events) is what is
asserted, plus the backend's own view of what is left: the engine's
container list, the emulator's machines, the agents' running runs and the
host's process table (every backend builds on this host).

Scenarios: success, failing build, timeout, cancel, the provider failing or
vanishing mid-build, and kill -9 plus restart of the worker mid-build. Per
provider, the number of scenarios passed and the create-to-running latency
seen through the worker (provisioning -> running in run_events, median over
the scenarios' runs) are collected and printed in the terminal summary.

Backends start once per provider (module-scoped, parametrized fixture);
each test gets its own topic, consumer group and worker id.
"""

import os
import signal
import statistics
import time
import uuid

import pytest

from conftest import wait_until
from providers import PROVIDERS, live_sandboxes, start_backend
from test_worker import TERMINAL, enqueue, history, job, statuses, topics  # noqa: F401

# How long a sandbox may take to disappear after its run ended: the docker
# provider removes the container right after reading the logs, fly destroys
# the machine (the emulator answers `destroyed` within ~0.1 s), local and
# vmpool kill the uid's processes before reporting the exit.
GONE_S = 15
# Seconds a plain build may take end to end (intake, lease, create, run, write).
RUN_S = 45


# --- the per-provider summary ---------------------------------------------------

_latency_ms = {p: [] for p in PROVIDERS}
_outcomes = {}      # nodeid -> (provider, "passed" | "failed" | "xfailed")


class _Summary:
    """Registered as a plugin by the first test of this module: keeps this
    module's outcome per test and prints them per provider at the end of the
    session."""

    def pytest_runtest_logreport(self, report):
        if "test_providers.py::" not in report.nodeid or not report.nodeid.endswith("]"):
            return
        prov = report.nodeid.rsplit("[", 1)[1][:-1]
        if prov not in _latency_ms:
            return
        prev = _outcomes.get(report.nodeid, (prov, None))[1]
        if report.failed:
            out = "failed"
        elif hasattr(report, "wasxfail") and report.skipped:
            out = "xfailed"
        elif report.when == "call" and report.passed:
            out = "passed"      # an XPASS too: the scenario did what it asks
        else:
            return
        if prev != "failed":
            _outcomes[report.nodeid] = (prov, out)

    def pytest_terminal_summary(self, terminalreporter):
        tr = terminalreporter
        tr.section("sbx providers")
        parts = []
        for p in PROVIDERS:
            got = [o for prov, o in _outcomes.values() if prov == p]
            if not got:
                continue
            passed, xfailed = got.count("passed"), got.count("xfailed")
            lat = _latency_ms[p]
            med = "%.0f ms" % statistics.median(lat) if lat else "n/a"
            tr.write_line("%-7s %d/%d scenarios passed%s; create-to-running median %s over %d runs"
                          % (p, passed, len(got), " (%d xfail)" % xfailed if xfailed else "",
                             med, len(lat)))
            parts.append("%s %d/%d%s %s" % (p, passed, len(got),
                                            "+%dxf" % xfailed if xfailed else "", med))
        if parts:
            tr.write_line("sbx providers: " + "; ".join(parts))


@pytest.fixture(scope="module", autouse=True)
def _summary_plugin(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("sbx-provider-summary"):
        pm.register(_Summary(), "sbx-provider-summary")


def record_latency(pg, provider, ids):
    """Appends each run's provisioning -> running delta (ms) to the stats."""
    rows = pg.query("SELECT job_id, to_status, at FROM sbx.run_events WHERE job_id = ANY(%s) "
                    "ORDER BY job_id, id", list(ids))
    started = {}
    for job_id, to, at in rows:
        if to == "provisioning":
            started[job_id] = at
        elif to == "running" and job_id in started:
            _latency_ms[provider].append(
                (at - started.pop(job_id)).total_seconds() * 1000.0)


# --- fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="module", params=PROVIDERS)
def backend(request, services, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("backend-" + request.param)
    t0 = time.monotonic()
    try:
        b = start_backend(request.param, logdir, services)
    except RuntimeError as e:
        pytest.fail("backend %s did not start: %s" % (request.param, e), pytrace=False)
    print("\n%s ready in %.1f s" % (b.describe(), time.monotonic() - t0))
    yield b
    b.stop()
    bad = b.sanitizer_reports()
    if bad:
        pytest.fail("sanitizer reports in %s" % ", ".join(bad), pytrace=False)


class Harness:
    """One test's worker(s) on one backend, and what the test asks of them."""

    def __init__(self, backend, start_worker, topics, run_sbx, pg):
        self.b = backend
        self.start_worker = start_worker
        self.topics = topics
        self.run_sbx = run_sbx
        self.pg = pg
        tag = uuid.uuid4().hex[:8]
        # Stable across a kill -9 and restart: the orphan sweeps look for it.
        self.worker_id = "pw-%s-%s" % (backend.name, tag)
        self.project = "pp-%s-%s" % (backend.name, tag)
        self.workers = []
        self.ids = []
        self.nproj = 0
        # The argument of a build's `sleep`: unique, so pgrep finds only ours.
        self.marker = "%d%06d" % (os.getpid() % 100, int(tag[:5], 16) % 1000000)

    def start(self, **over):
        env = dict(self.b.env(), SBX_WORKER_ID=self.worker_id, SBX_SHUTDOWN_GRACE_MS=2000,
                   SBX_RETRY_BASE_MS=200, **self.topics)
        env.update(over)
        w = self.start_worker(**env)
        self.workers.append(w)
        return w

    def job(self, script, **kw):
        self.nproj += 1
        j = job("%s-%d" % (self.project, self.nproj), script, **kw)
        return j

    def enqueue(self, *jobs):
        ids = enqueue(self.run_sbx, self.topics, list(jobs))
        self.ids += ids
        return ids

    def row(self, job_id, cols="status, exit_code, log_tail, provider, instance, attempt, error"):
        rows = self.pg.query("SELECT %s FROM sbx.runs WHERE job_id = %%s" % cols, job_id)
        return rows[0] if rows else None

    def status(self, job_id):
        return statuses(self.pg, [job_id]).get(job_id)

    def wait_status(self, job_id, want, timeout):
        want = (want,) if isinstance(want, str) else want
        try:
            wait_until(lambda: self.status(job_id) in want, timeout,
                       "%s to be %s" % (job_id, "/".join(want)))
        except BaseException:
            self.dump(job_id)
            raise

    def wait_terminal(self, job_id, timeout=RUN_S):
        self.wait_status(job_id, TERMINAL, timeout)
        return self.row(job_id)

    def wait_running_instance(self, job_id, timeout=30):
        """Waits until the run is `running` and returns its instance."""
        def inst():
            r = self.row(job_id, "status, instance")
            return r and r[0] == "running" and r[1]
        try:
            return wait_until(inst, timeout, "%s running with an instance" % job_id)
        except BaseException:
            self.dump(job_id)
            raise

    def sleep_script(self, seconds, before="echo started", after="echo finished"):
        """A build that sleeps `seconds` (+ a fraction that is the marker)."""
        return "%s; sleep %d.%s; %s" % (before, seconds, self.marker, after)

    def pattern(self):
        return r"sleep [0-9]+\.%s" % self.marker

    def leftovers(self, job_id):
        return live_sandboxes(self.b, job_id, self.pattern())

    def wait_gone(self, job_id, timeout=GONE_S):
        try:
            wait_until(lambda: not self.leftovers(job_id), timeout,
                       "the sandboxes of %s to be gone" % job_id)
        except BaseException:
            print("left:", self.leftovers(job_id))
            self.dump(job_id)
            raise

    def dump(self, job_id):
        print("run:", self.row(job_id), "\nhistory:", history(self.pg, job_id))
        for w in self.workers[-1:]:
            print(w.tail(40))

    def done(self):
        record_latency(self.pg, self.b.key, self.ids)


@pytest.fixture
def h(backend, start_worker, topics, run_sbx, pg):  # noqa: F811 — topics from test_worker
    if backend.name == "vmpool":
        backend.ensure_running()
    hh = Harness(backend, start_worker, topics, run_sbx, pg)
    yield hh
    hh.done()


def one_terminal(hist):
    return sum(1 for s in hist if s in TERMINAL) == 1


# --- scenarios ----------------------------------------------------------------------

def test_success(h):
    """Output in log_tail, exit_code 0, the whole history, provider and
    instance recorded."""
    h.start()
    j = h.job("echo hello-from-build; echo out-$((40 + 2))")
    h.enqueue(j)
    st, code, tail, prov, inst, attempt, err = h.wait_terminal(j["job_id"])
    assert (st, code) == ("succeeded", 0), (st, code, err, tail)
    assert "hello-from-build" in (tail or "") and "out-42" in tail, tail
    # `sbx enqueue` with a database URL records the job before it publishes it.
    assert history(h.pg, j["job_id"]) == ["submitted", "queued", "provisioning", "running",
                                          "succeeded"]
    assert prov == h.b.name
    assert inst, "no instance recorded"
    assert attempt == 1
    if h.b.name == "vmpool":
        assert inst in [a.id for a in h.b.agents], inst
    h.wait_gone(j["job_id"])


def test_failing_build(h):
    """exit 3 ends failed with exit_code 3 and the build's output."""
    h.start()
    j = h.job("echo about-to-fail; exit 3")
    h.enqueue(j)
    st, code, tail, prov, inst, attempt, err = h.wait_terminal(j["job_id"])
    assert (st, code) == ("failed", 3), (st, code, err, tail)
    assert "about-to-fail" in (tail or ""), tail
    assert attempt == 1, "a failing build is not a provider error: no retry"
    assert history(h.pg, j["job_id"])[-1] == "failed"
    h.wait_gone(j["job_id"])


def test_timeout(h):
    """timeout_s=2 on a 60 s sleep: timed_out, and the sandbox is gone."""
    h.start()
    j = h.job(h.sleep_script(60, after="echo never"), timeout_s=2)
    h.enqueue(j)
    h.wait_running_instance(j["job_id"])
    t0 = time.monotonic()
    st, code, tail, prov, inst, attempt, err = h.wait_terminal(j["job_id"], 30)
    took = time.monotonic() - t0
    assert st == "timed_out", (st, code, err, tail)
    assert "never" not in (tail or "")
    assert took < 15, "timed out %.1f s after running (timeout 2 s)" % took
    h.wait_gone(j["job_id"])
    assert not h.b.instance_alive(inst), "instance %s of the timed-out run still exists" % inst


def test_cancel(h):
    """`sbx cancel` of a running build: canceled within seconds, sandbox gone."""
    w = h.start()
    j = h.job(h.sleep_script(60, after="echo never"))
    h.enqueue(j)
    inst = h.wait_running_instance(j["job_id"])
    t0 = time.monotonic()
    h.run_sbx("cancel", j["job_id"])
    h.wait_status(j["job_id"], TERMINAL, 20)
    took = time.monotonic() - t0
    st, code, tail, prov, inst2, attempt, err = h.row(j["job_id"])
    assert st == "canceled", (st, code, err, tail)
    assert took < 10, "canceled after %.1f s" % took
    assert "never" not in (tail or "")
    h.wait_gone(j["job_id"])
    assert not h.b.instance_alive(inst), "instance %s of the canceled run still exists" % inst
    assert w.running
    print("%s: canceled in %.2f s" % (h.b.name, took))


def _bwrap_of(pid):
    """The outermost bwrap ancestor of pid (the one the sandbox spawned)."""
    found = None
    while pid > 1:
        try:
            with open("/proc/%d/status" % pid) as f:
                st = dict(l.split(":\t", 1) for l in f.read().splitlines() if ":\t" in l)
        except FileNotFoundError:
            return None
        if st.get("Name", "").strip() == "bwrap":
            found = pid
        elif found:
            return found
        pid = int(st["PPid"])
    return found




def test_provider_failure(h):
    """The sandbox or its provider fails mid-build: a terminal state is
    recorded (retried where the provider, not the build, failed), nothing
    is left behind, and the worker keeps going."""
    name = h.b.name
    wait_s = 60
    w = h.start(SBX_LEASE_TTL_MS=3000)
    j = h.job(h.sleep_script(4))
    h.enqueue(j)
    inst = h.wait_running_instance(j["job_id"])
    detail = ""
    if name == "local":
        pids = wait_until(lambda: h.leftovers(j["job_id"]), 10, "the build's processes")
        pid = int(pids[0].split()[-1])
        bw = wait_until(lambda: _bwrap_of(pid), 5, "the build's bwrap")
        os.kill(bw, signal.SIGKILL)
        detail = "killed bwrap %d" % bw
    elif name == "docker":
        h.b.kill(inst)
        detail = "killed container %s" % inst[:12]
    elif name == "fly":
        h.b.fail(inst)
        detail = "machine %s forced to failed" % inst
    elif name == "vmpool":
        h.b.agent(inst).kill9()
        detail = "kill -9 agent %s" % inst
    st, code, tail, prov, inst2, attempt, err = h.wait_terminal(j["job_id"], wait_s)
    hist = history(h.pg, j["job_id"])
    print("%s: %s -> %s attempt %d exit %s error %r history %s"
          % (name, detail, st, attempt, code, err, hist))
    assert st in TERMINAL and one_terminal(hist), hist
    assert attempt >= 1 and hist.count("running") == attempt, (attempt, hist)
    if name in ("local", "fly", "vmpool"):
        # The provider failed, not the build: retried, and the retry built it.
        assert st == "succeeded" and attempt >= 2, (st, attempt, err)
        if name != "local":
            assert inst2 != inst, "the retry ran on the failed instance %s" % inst
    h.wait_gone(j["job_id"])
    assert not h.b.instance_alive(inst), "failed instance %s still exists" % inst
    # The worker keeps going.
    assert w.running
    k = h.job("echo after-the-failure")
    h.enqueue(k)
    st, code, tail, *_ = h.wait_terminal(k["job_id"])
    assert st == "succeeded" and "after-the-failure" in tail, (st, tail)


def test_worker_restart(h):
    """kill -9 of the worker mid-build, restart with the same id: exactly one
    terminal status, and (docker, fly) nothing of the killed run left."""
    env = dict(SBX_LEASE_TTL_MS=3000, SBX_KAFKA_SESSION_TIMEOUT_MS=6000)
    w1 = h.start(**env)
    j = h.job(h.sleep_script(3, before="echo begin", after="echo end"))
    h.enqueue(j)
    inst = h.wait_running_instance(j["job_id"])
    w1.kill(signal.SIGKILL)
    w1.wait(10)
    if h.b.name in ("docker", "fly"):
        # The remote sandbox outlives its worker: an orphan for the sweep.
        assert h.b.instance_alive(inst), "instance %s died with its worker" % inst
    t0 = time.monotonic()
    w2 = h.start(**env)
    st, code, tail, prov, inst2, attempt, err = h.wait_terminal(j["job_id"], 60)
    settled = time.monotonic() - t0
    hist = history(h.pg, j["job_id"])
    assert one_terminal(hist), hist
    assert st == "succeeded" and "end" in (tail or ""), (st, code, err, tail, hist)
    h.wait_gone(j["job_id"])
    assert not h.b.instance_alive(inst), "instance %s of the killed run was left" % inst
    assert w2.running
    print("%s: settled %.1f s after the restart; attempt %d; history %s"
          % (h.b.name, settled, attempt, hist))
