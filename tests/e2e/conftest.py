"""conftest.py — fixtures for sbx's end-to-end tests.

Owns what every e2e test shares: one set of real services per session
(Kafka, Redis, PostgreSQL from tests/services/sbxsvc.py, migrated once with
`sbx migrate`), the paths of the built programs, and small helpers to run
`sbx`, query PostgreSQL, produce and consume with kcat, start and kill
`sbx-worker` processes, and wait for conditions with a deadline.

Why it is shaped so: the services take seconds to start and tests must stay
independent, so the services live for the session while everything a test
starts (workers) lives for the test and is stopped at its teardown, even
when the test failed. A worker that printed a sanitizer report fails the
test that ran it, so `make asan` catches what a passing assertion hides.

Programs come from $SBX_BUILD/bin (default build/bin; `make asan` uses
build-asan). Set SBX_KEEP_SERVICES=1 to keep the service directory and logs.
"""

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "services"))
import sbxsvc  # noqa: E402

TAIL_LINES = 30
# What ASan, LSan and UBSan print when they find something.
SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Memory|Thread)Sanitizer|runtime error:")


def build_dir():
    b = Path(os.environ.get("SBX_BUILD", "build"))
    return b if b.is_absolute() else REPO / b


def wait_until(fn, timeout, what):
    """Calls fn until it returns something truthy and returns that; fails the
    test naming `what` after `timeout` seconds. Exceptions from fn count as
    not yet, and the last one is shown on failure."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 — a condition not yet true
            last_exc = e
        if time.monotonic() >= deadline:
            msg = "timed out after %.1f s waiting for %s" % (timeout, what)
            if last_exc is not None:
                msg += " (last error: %r)" % (last_exc,)
            pytest.fail(msg, pytrace=False)
        # Polling interval; the deadline above bounds the wait.
        time.sleep(0.05)


def _tail(path, n=TAIL_LINES):
    return sbxsvc._tail(str(path), n)


# --- services ----------------------------------------------------------------

_timing = {}


@pytest.fixture(scope="session")
def services_ctl():
    """The sbxsvc.Services object itself, for tests that restart a service
    (`services_ctl.restart("redis", hard=True)`). Unmigrated."""
    svc = sbxsvc.Services(keep=os.environ.get("SBX_KEEP_SERVICES") == "1")
    try:
        svc.start(kafka=True, redis=True, postgres=True)
    except sbxsvc.ServiceError as e:
        pytest.fail("services did not start: %s\nlogs: %s" % (e, " ".join(svc.logs().values())),
                    pytrace=False)
    _timing["line"] = svc.timing_line()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def services_raw(services_ctl):
    """The env dict (SBX_BROKERS, SBX_REDIS_URL, SBX_DATABASE_URL, SBX_TOPIC,
    SBX_DLQ_TOPIC) of services whose database has no schema yet."""
    return dict(services_ctl.env)


@pytest.fixture(scope="session")
def services(services_raw, sbx_bin):
    """The env dict of the session's services, with migrations applied."""
    sbx = sbx_bin / "sbx"
    if not os.access(sbx, os.X_OK):
        pytest.fail("%s is not built (run make, or set SBX_BUILD)" % sbx, pytrace=False)
    env = dict(os.environ, **services_raw)
    r = subprocess.run([str(sbx), "migrate"], env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.fail("sbx migrate failed (status %d):\n%s%s" % (r.returncode, r.stdout, r.stderr),
                    pytrace=False)
    return dict(services_raw)


def pytest_terminal_summary(terminalreporter):
    if "line" in _timing:
        terminalreporter.write_line("sbx e2e: " + _timing["line"])


# --- programs ----------------------------------------------------------------

@pytest.fixture(scope="session")
def sbx_bin():
    """Path of the directory holding the built programs ($SBX_BUILD/bin)."""
    return build_dir() / "bin"


@pytest.fixture
def run_sbx(services, sbx_bin):
    """run_sbx(*args, env=None, input=None, timeout=60, check=True) runs
    `sbx ARGS` against the session's services and returns the
    CompletedProcess (text); check=True fails the test on a non-zero exit."""
    def run(*args, env=None, input=None, timeout=60, check=True):
        full = dict(os.environ, **services)
        full.update(env or {})
        r = subprocess.run([str(sbx_bin / "sbx")] + [str(a) for a in args], env=full, cwd=REPO,
                           input=input, capture_output=True, text=True, timeout=timeout,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            pytest.fail("sbx %s exited %d\nstdout:\n%s\nstderr:\n%s"
                        % (" ".join(map(str, args)), r.returncode, r.stdout, r.stderr), pytrace=False)
        return r
    return run


# --- PostgreSQL ----------------------------------------------------------------

def _sql_literal(v):
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "ARRAY[%s]" % ",".join(map(_sql_literal, v)) if v else "'{}'"
    return "'" + str(v).replace("'", "''") + "'"


class PG:
    """Queries the session's database. query() returns a list of tuples,
    scalar() the first column of the first row (or None), execute() the row
    count. Parameters are %s placeholders.

    With psycopg 3 values have their Python types; without it this falls back
    to psql and every value is a str (NULL is None). install-deps installs
    psycopg, so tests may rely on typed values."""

    def __init__(self, url):
        self.url = url
        self.conn = None
        try:
            import psycopg
            self.psycopg = psycopg
        except ImportError:
            self.psycopg = None

    def _connect(self):
        if self.conn is None or self.conn.closed:
            self.conn = self.psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        return self.conn

    def _psycopg(self, sql, params, fetch):
        # One reconnect: the server may have been restarted by a chaos test.
        for attempt in (0, 1):
            try:
                with self._connect().cursor() as cur:
                    cur.execute(sql, params or None)
                    if fetch:
                        return cur.fetchall() if cur.description else []
                    return cur.rowcount
            except self.psycopg.OperationalError:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def _psql(self, sql, params, fetch):
        if params:
            sql = sql.replace("%%", "\0") % tuple(_sql_literal(p) for p in params)
            sql = sql.replace("\0", "%")
        null = "\x01NULL\x01"
        r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-F", "\x1f", "-R", "\x1e", "-P", "null=" + null, "-d", self.url],
                           input=sql, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("psql failed: %s" % r.stderr.strip())
        if not fetch:
            return None
        rows = [rec for rec in r.stdout.rstrip("\n").split("\x1e") if rec != ""]
        return [tuple(None if f == null else f for f in rec.split("\x1f")) for rec in rows]

    def query(self, sql, *params):
        if self.psycopg:
            return self._psycopg(sql, params, True)
        return self._psql(sql, params, True)

    def scalar(self, sql, *params):
        rows = self.query(sql, *params)
        return rows[0][0] if rows else None

    def execute(self, sql, *params):
        if self.psycopg:
            return self._psycopg(sql, params, False)
        return self._psql(sql, params, False)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@pytest.fixture(scope="session")
def pg(services):
    """A PG helper on the migrated database."""
    h = PG(services["SBX_DATABASE_URL"])
    yield h
    h.close()


@pytest.fixture(scope="session")
def pg_raw(services_raw):
    """A PG helper on the database before migrations."""
    h = PG(services_raw["SBX_DATABASE_URL"])
    yield h
    h.close()


# --- Kafka through kcat ----------------------------------------------------------

class Kafka:
    """Produces and consumes with kcat against the session's broker."""

    def __init__(self, brokers):
        self.brokers = brokers

    def create_topics(self, topics, timeout=30):
        """Creates {name: partitions} and waits for every partition's leader."""
        try:
            sbxsvc.create_topics(self.brokers, topics, timeout)
        except sbxsvc.ServiceError as e:
            pytest.fail(str(e), pytrace=False)

    def produce(self, topic, messages, timeout=30):
        """messages: iterable of (key, value) str/bytes pairs; key may be None."""
        # kcat -P -K: splits each line at the delimiter into key and value;
        # -D: message delimiter. \x1e / \x1f do not occur in JSON jobs.
        data = b""
        for key, value in messages:
            k = key.encode() if isinstance(key, str) else (key or b"")
            v = value.encode() if isinstance(value, str) else value
            if b"\x1e" in k + v or b"\x1f" in k:
                raise ValueError("message contains a kcat delimiter byte")
            data += (k + b"\x1f" if key is not None else b"") + v + b"\x1e"
        argv = ["kcat", "-b", self.brokers, "-P", "-t", topic, "-D", "\x1e"]
        if any(k is not None for k, _ in messages):
            argv += ["-K", "\x1f"]
        r = subprocess.run(argv, input=data, capture_output=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("kcat produce failed: %s" % r.stderr.decode(errors="replace"))

    def consume(self, topic, count, timeout=30, offset="beginning"):
        """Reads `count` messages from `offset` (no consumer group) and
        returns dicts with topic, partition, offset, key, payload."""
        try:
            r = subprocess.run(["kcat", "-b", self.brokers, "-C", "-t", topic, "-o", str(offset),
                                "-c", str(count), "-J", "-q"],
                               capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            got = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            pytest.fail("kcat read %d of %d messages from %s within %.0f s"
                        % (len(got.splitlines()), count, topic, timeout), pytrace=False)
        if r.returncode != 0:
            raise RuntimeError("kcat consume failed: %s" % r.stderr)
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def end_offsets(self, topic):
        """{partition: end offset} of every partition of topic."""
        meta = json.loads(subprocess.run(["kcat", "-b", self.brokers, "-L", "-t", topic, "-J"],
                                         capture_output=True, text=True, timeout=30,
                                         check=True).stdout)
        parts = [p["partition"] for t in meta["topics"] for p in t["partitions"]]
        argv = ["kcat", "-b", self.brokers, "-Q"]
        for p in parts:
            argv += ["-t", "%s:%d:-1" % (topic, p)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
        ends = {}
        for line in out.splitlines():
            m = re.match(r"\S+ \[(\d+)\] offset (-?\d+)", line)
            if m:
                ends[int(m.group(1))] = int(m.group(2))
        return ends


@pytest.fixture(scope="session")
def kafka(services_raw):
    return Kafka(services_raw["SBX_BROKERS"])


# --- workers ---------------------------------------------------------------------

_worker_ids = itertools.count(1)


class Worker:
    """One sbx-worker process, configured only by its environment, its output
    (stdout and stderr) in a log file."""

    def __init__(self, binary, env, log, name):
        self.name = name
        self.log = Path(log)
        self.env = env
        with open(self.log, "ab") as out:
            # Own session: a test's kill() or a Ctrl-C never hits pytest, and
            # stop() reaches the worker's children (sandboxes) too.
            self.proc = subprocess.Popen([str(binary)], env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.pid = self.proc.pid

    @property
    def running(self):
        return self.proc.poll() is None

    @property
    def returncode(self):
        return self.proc.poll()

    def kill(self, sig=signal.SIGKILL, group=False):
        """Sends sig to the worker (group=True: to its whole process group)."""
        try:
            if group:
                os.killpg(self.pid, sig)
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout):
        """Waits for the worker to exit; returns its status or fails the test."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("%s still running after %.0f s\n%s" % (self.name, timeout, self.tail()),
                        pytrace=False)

    def text(self):
        return self.log.read_text(errors="replace")

    def mark(self):
        """The current end of the log, for wait_log(..., since=mark)."""
        return self.log.stat().st_size

    def tail(self, n=TAIL_LINES):
        return "--- last %d lines of %s ---\n%s" % (n, self.log, _tail(self.log, n))

    def wait_log(self, regex, timeout, since=0):
        """Waits until the log (from byte `since`) matches regex; returns the
        match. Fails early if the worker exits without printing it."""
        pat = re.compile(regex, re.M)
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log, "rb") as f:
                f.seek(since)
                m = pat.search(f.read().decode(errors="replace"))
            if m:
                return m
            if not self.running:
                pytest.fail("%s exited (status %s) before logging /%s/\n%s"
                            % (self.name, self.returncode, regex, self.tail()), pytrace=False)
            if time.monotonic() >= deadline:
                pytest.fail("%s did not log /%s/ within %.0f s\n%s"
                            % (self.name, regex, timeout, self.tail()), pytrace=False)
            # Polling interval; the deadline above bounds the wait.
            time.sleep(0.05)

    def stop(self, timeout=20):
        """SIGTERM, then SIGKILL to the group after `timeout`; returns the status."""
        if self.running:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL, group=True)
        return self.proc.wait(10)

    def sanitizer_report(self):
        m = SANITIZER_RE.search(self.text())
        return m is not None


@pytest.fixture
def worker_env(services):
    """The default environment of a worker; tests override keys per worker."""
    return {
        "SBX_TOPIC": "sbx.jobs",
        "SBX_DLQ_TOPIC": "sbx.jobs.dlq",
        "SBX_GROUP": "sbx-workers",
        "SBX_NODE": "node-1",
        "SBX_LOCAL_SLOTS": "2",
        "SBX_LEASE_TTL_MS": "10000",
        "SBX_LOG_LEVEL": "debug",
    }


# Builds run as slot uids, and a worker sweeps its own range's processes.
# Two suites on one host (a CI run and a developer's) must not share a range:
# SBX_TEST_UID_SHIFT moves every range the e2e tests use.
UID_SHIFT = int(os.environ.get("SBX_TEST_UID_SHIFT", "0"))


def uid_base(base):
    return base + UID_SHIFT


@pytest.fixture
def start_worker(services, sbx_bin, worker_env, tmp_path):
    """start_worker(**env) starts an sbx-worker with the session's services,
    the defaults of worker_env and the given overrides (None removes a key);
    each gets its own SBX_WORKER_ID, SBX_WORK_DIR and log file. All are
    stopped at teardown, and a sanitizer report in any log fails the test."""
    started = []

    def start(**overrides):
        n = next(_worker_ids)
        name = overrides.get("SBX_WORKER_ID") or "w%d" % n
        work = tmp_path / ("work-" + name)
        work.mkdir(exist_ok=True)
        env = dict(os.environ, **services)
        env.update(worker_env)
        env.update({"SBX_WORKER_ID": name, "SBX_WORK_DIR": str(work)})
        for k, v in overrides.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
        env["SBX_UID_BASE"] = str(uid_base(int(overrides.get("SBX_UID_BASE") or 60000)))
        binary = sbx_bin / "sbx-worker"
        if not os.access(binary, os.X_OK):
            pytest.fail("%s is not built (run make, or set SBX_BUILD)" % binary, pytrace=False)
        w = Worker(binary, env, tmp_path / (name + ".log"), name)
        started.append(w)
        return w

    yield start
    reports = []
    for w in started:
        w.stop()
        if w.sanitizer_report():
            reports.append("%s printed a sanitizer report\n%s" % (w.name, w.tail(60)))
    if reports:
        pytest.fail("\n".join(reports), pytrace=False)


@pytest.fixture(name="wait_until")
def wait_until_fixture():
    return wait_until


@pytest.fixture(name="Worker")
def worker_class():
    return Worker
