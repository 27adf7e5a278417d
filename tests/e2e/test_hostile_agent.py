"""test_hostile_agent.py — sbx-agent against clients without its key.

Owns the probes of the agent's HTTP port as an attacker on the VM's network
sees it (agent/server.c "Hostile clients"):
  - 500 slow-header clients (one byte every SLOW_EVERY_S) while authorized
    requests (/health, a /wake) are timed: they must be answered promptly,
    and every slow connection must be closed by the agent within the header
    deadline (or sooner, by the pending caps);
  - /livez answers without the key, and says nothing else;
  - a request path with %0a, %0d, raw ESC and other control bytes leaves no
    forged line in the agent's log (read back from its stderr);
  - a fencing token far above {sbx}:fence is refused (409 future_token)
    and does not block the slot's real owner; with Redis unreachable such
    a token gets 503 token_unverified.

Why it is shaped so: a real sbx-agent process (as tests/e2e/providers.py
starts them) against a private redis-server from tests/services/sbxsvc.py
(no Kafka, no PostgreSQL: the agent needs neither), started once for the
module; every wait has a deadline. All traffic goes to 127.0.0.1, so the
attackers and the authorized client share one address, as they can in
life behind a NAT: the per-address cap cannot tell them apart, the
deadline and the oldest-first eviction must.
"""

import json
import multiprocessing
import os
import re
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import build_dir, uid_base, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "services"))
import sbxsvc  # noqa: E402

KEY = "hostile-agent-test-key-0123456789"
# Build uids of this module's agents: disjoint from the other e2e ranges
# (60000.., 61000.., 62000.., 62100..) and the fuzzer's (64000).
UID_BASE = uid_base(63700)
# Short deadlines, so the test waits seconds and not the defaults' 20/30.
HEADER_MS = 3000
BODY_MS = 3000
SLOW_CLIENTS = 500
SLOW_EVERY_S = 2.0
# How long after its deadline a slow connection may still be open: the
# agent's timer, MHD's next run and our poll loop.
CLOSE_SLACK_S = 1.5
# Authorized requests while the slow clients hang on.
P99_MAX_S = 1.0
LOG_LINE_RE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info |warn |error) ")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method, url, body=None, key=KEY, timeout=10):
    """(status, seconds, parsed JSON or text) of one request on a new connection."""
    data = None if body is None else json.dumps(body).encode()
    h = {"Content-Type": "application/json"} if data is not None else {}
    if key:
        h["Authorization"] = "Bearer " + key
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    dt = time.monotonic() - t0
    try:
        return status, dt, json.loads(raw)
    except ValueError:
        return status, dt, raw.decode(errors="replace")


def raw_request(port, data, timeout=5):
    """Sends raw bytes, returns what came back until the agent closed or went quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
        except socket.timeout:
            pass
    return out


class AgentProc:
    def __init__(self, redis_url, tag, logdir, uid_base=UID_BASE, **env):
        self.id = "hostile-%s" % tag
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.work = tempfile.mkdtemp(prefix="sbx-hostile-agent-")
        os.chmod(self.work, 0o755)
        self.log = Path(logdir) / ("agent-%s.log" % tag)
        self.env = dict(os.environ, SBX_AGENT_ID=self.id,
                        SBX_AGENT_LISTEN="127.0.0.1:%d" % self.port, SBX_REDIS_URL=redis_url,
                        SBX_AGENT_KEY=KEY, SBX_AGENT_CAPACITY="1", SBX_WORK_DIR=self.work,
                        SBX_UID_BASE=str(uid_base), SBX_AGENT_HEADER_TIMEOUT_MS=str(HEADER_MS),
                        SBX_AGENT_BODY_TIMEOUT_MS=str(BODY_MS), SBX_SHUTDOWN_GRACE_MS="1000",
                        SBX_LOG_LEVEL="debug", **env)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([str(build_dir() / "bin" / "sbx-agent")], env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)

        def live():
            if self.proc.poll() is not None:
                raise RuntimeError("sbx-agent exited %s:\n%s"
                                   % (self.proc.returncode, self.log.read_text(errors="replace")))
            return request("GET", self.url + "/livez", key=None, timeout=2)[0] == 200
        wait_until(live, 20, "sbx-agent answering /livez")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.work, ignore_errors=True)

    def log_bytes(self):
        return self.log.read_bytes()


@pytest.fixture(scope="module")
def redis_url():
    svc = sbxsvc.Services(keep=os.environ.get("SBX_KEEP_SERVICES") == "1")
    try:
        svc.start(kafka=False, redis=True, postgres=False)
    except sbxsvc.ServiceError as e:
        pytest.fail("redis did not start: %s" % e, pytrace=False)
    yield svc.env["SBX_REDIS_URL"]
    svc.stop()


def redis(url, *args):
    r = subprocess.run(["redis-cli", "-u", url, "--raw"] + list(args),
                       capture_output=True, text=True, timeout=10)
    return r.stdout.strip()


def next_token(url):
    """A token as a worker's lease gets one: the counter's next value."""
    return int(redis(url, "INCR", "{sbx}:fence"))


@pytest.fixture(scope="module")
def agent(redis_url, tmp_path_factory):
    # 500 slow clients plus ours: more descriptors than Debian's soft 1024
    # leaves once pytest holds its own.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    a = AgentProc(redis_url, "a", tmp_path_factory.mktemp("hostile-agent"))
    yield a
    a.stop()


def wake_body(slot, token, job_id, script="true"):
    return {"slot": slot, "token": token, "attempt": 1,
            "job": {"job_id": job_id, "project_id": "p-hostile", "script": script,
                    "timeout_s": 60}}


def wait_run_over(agent, run_id):
    def over():
        st, _, v = request("GET", "%s/runs/%s" % (agent.url, run_id), timeout=5)
        return st == 200 and v["state"] != "running"
    wait_until(over, 30, "run %s over" % run_id)


class SlowClients:
    """n connections that send one header byte every `every` s; each notes
    when it was opened and when the agent closed it. With refill, one the
    agent closes is opened again at once (the attacker keeps n up) until
    stop_refill() (not used by the tests, whose bounds hold for clients
    that hang on; see test_slow_headers... for why)."""

    HEADER = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4096

    class Conn:
        def __init__(self, port):
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.sock.setblocking(False)
            self.opened = time.monotonic()
            self.closed = None
            self.sent = 0

    def __init__(self, port, n, every, refill=False):
        self.port = port
        self.every = every
        self.conns = []
        self.errors = 0
        self.refill = refill
        self.live = {}
        for _ in range(n):
            self._open()
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open(self):
        try:
            c = self.Conn(self.port)
        except OSError:
            self.errors += 1
            return None
        self.conns.append(c)
        self.live[c.sock.fileno()] = c
        return c

    def _closed(self, c, p):
        c.closed = time.monotonic()
        fd = c.sock.fileno()
        p.unregister(fd)
        del self.live[fd]
        c.sock.close()
        if self.refill:
            n = self._open()
            if n:
                p.register(n.sock.fileno(), select.POLLIN)

    def _run(self):
        p = select.poll()
        for fd in self.live:
            p.register(fd, select.POLLIN)
        next_send = time.monotonic()
        while not self.stop_ev.is_set():
            now = time.monotonic()
            if now >= next_send:
                for c in list(self.live.values()):
                    try:
                        c.sock.send(self.HEADER[c.sent:c.sent + 1])
                        c.sent += 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        self._closed(c, p)
                next_send = now + self.every
            for fd, ev in p.poll(100):
                c = self.live.get(fd)
                if c is None:
                    continue
                try:
                    b = c.sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    b = b""
                if not b:
                    self._closed(c, p)

    def open_count(self):
        return len(self.live)

    def stop_refill(self):
        self.refill = False

    def stop(self):
        self.refill = False
        self.stop_ev.set()
        self.thread.join(10)
        for c in list(self.live.values()):
            c.sock.close()


def _attacker(port, n, every, ready, stop_refill, out):
    """The slow clients, in a process of their own (another host, in life):
    our client's connect-to-send gap must not wait for their GIL."""
    slow = SlowClients(port, n, every)
    ready.send(slow.errors)
    stop_refill.wait(120)
    slow.stop_refill()
    until = time.monotonic() + HEADER_MS / 1000.0 + 2 * CLOSE_SLACK_S + 2
    while slow.open_count() and time.monotonic() < until:
        time.sleep(0.05)
    left = slow.open_count()
    slow.stop()
    out.send((left, [(c.opened, c.closed) for c in slow.conns]))


def test_slow_headers_do_not_starve_authorized_requests(agent, redis_url):
    """500 slow clients from our own address hang on; ours are answered.
    The pending caps close the oldest slow ones at once (our connections,
    newest, send their headers at once); those left are closed at the
    header deadline. (An attacker that reconnects each closed connection at
    once, from our address, can still close one of ours that did not send
    its headers before SBX_AGENT_PENDING_PER_IP newer connections came: the
    README's limits.)"""
    ctx = multiprocessing.get_context("fork")
    ready_r, ready_w = ctx.Pipe(False)
    out_r, out_w = ctx.Pipe(False)
    stop_refill = ctx.Event()
    proc = ctx.Process(target=_attacker, daemon=True,
                       args=(agent.port, SLOW_CLIENTS, SLOW_EVERY_S, ready_w, stop_refill, out_w))
    proc.start()
    try:
        assert ready_r.poll(30), "the slow clients did not connect"
        errors = ready_r.recv()
        assert errors == 0, "%d slow clients could not connect" % errors
        t_attack = time.monotonic()
        # While they hang on (and reconnect when closed): authorized
        # requests, each on a new connection, as a worker makes them, for
        # longer than the header deadline.
        lat = []
        while time.monotonic() - t_attack < HEADER_MS / 1000.0 + 1:
            st, dt, body = request("GET", agent.url + "/health", timeout=5)
            assert st == 200, (st, body)
            lat.append(dt)
        st, dt, body = request("POST", agent.url + "/wake",
                               wake_body(agent.id, next_token(redis_url), "j-under-attack"),
                               timeout=5)
        assert st == 200, (st, body)
        lat.append(dt)
        run_id = body["run_id"]
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        sys.stderr.write("slow clients: %d authorized requests, p50 %.3f s, p99 %.3f s, max %.3f s\n"
                         % (len(lat), lat[len(lat) // 2], p99, lat[-1]))
        assert p99 < P99_MAX_S, "p99 %.3f s over %d requests" % (p99, len(lat))

        # Every slow connection is closed within the header deadline (the
        # pending caps close most of them much sooner).
        stop_refill.set()
        assert out_r.poll(HEADER_MS / 1000.0 + 2 * CLOSE_SLACK_S + 20), "no word from the slow clients"
        left, conns = out_r.recv()
        late = [c for c in conns if c[1] is None or c[1] - c[0] > HEADER_MS / 1000.0 + CLOSE_SLACK_S]
        by_deadline = [c for c in conns if c[1] is not None and c[1] - c[0] >= HEADER_MS / 1000.0 - 0.2]
        sys.stderr.write("slow clients: %d connections, %d closed at their deadline, %d sooner by "
                         "the caps, %d still open\n"
                         % (len(conns), len(by_deadline), len(conns) - len(by_deadline), left))
        assert not left and not late, "%d slow connections outlived the header deadline" % len(late)
        # Some lived to their deadline: the deadline closed them, not a cap.
        assert by_deadline, "no slow connection reached its deadline"
        wait_run_over(agent, run_id)
    finally:
        stop_refill.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(10)


def test_slow_body_is_closed_by_its_deadline(agent):
    """Headers in time, then a body one byte at a time: closed after BODY_MS
    even though bytes keep coming (the deadline is total, not idle)."""
    s = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
    try:
        s.sendall(b"POST /wake HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        t0 = time.monotonic()
        s.settimeout(0.5)
        closed = None
        while time.monotonic() - t0 < BODY_MS / 1000.0 + 5:
            try:
                s.send(b" ")
                if s.recv(4096) == b"":
                    closed = time.monotonic() - t0
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = time.monotonic() - t0
                break
        assert closed is not None, "a body trickling in outlived its deadline"
        assert closed <= BODY_MS / 1000.0 + CLOSE_SLACK_S, closed
    finally:
        s.close()


def test_livez_without_key(agent):
    st, _, body = request("GET", agent.url + "/livez", key=None)
    assert (st, body) == (200, "ok\n")
    st, _, body = request("GET", agent.url + "/livez", key="wrong-key-0123456789abc")
    assert (st, body) == (200, "ok\n")
    st, _, _ = request("POST", agent.url + "/livez", body={}, key=None)
    assert st == 405
    # Everything else still wants the key.
    st, _, body = request("GET", agent.url + "/health", key=None)
    assert st == 401, body
    st, _, body = request("GET", agent.url + "/health")
    assert st == 200 and body["id"] == agent.id


def test_request_paths_cannot_forge_log_lines(agent):
    before = len(agent.log_bytes())
    forged = b"2099-01-01T00:00:00.000Z error agent FORGED"
    # Percent-encoded (MHD decodes the path before we see it) ...
    enc = forged.replace(b" ", b"%20")
    for path in (b"/x%0a" + enc, b"/x%0d%0a" + enc, b"/x%0d" + enc + b"%1b[2K",
                 b"/runs/%0a" + enc, b"/livez%0a" + enc, b"/x%c2%85" + enc,
                 b"/x%e2%80%a8" + enc, b"/x%00" + enc, b"/x%5cx0a" + enc):
        raw_request(agent.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw_request(agent.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n")
    # ... and raw bytes in the request line and headers.
    for raw in (b"GET /x\x1b[2J\x07\x7f" + enc + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /x\r" + forged + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"G\x1bT /x HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\x1b\x00b\rc\r\n\r\n",
                b"GET /x HTTP/1.1\r\nHost: x\r\n" + forged + b"\r\n\r\n"):
        raw_request(agent.port, raw)

    def logged():
        return b"/x\\x0a2099" in agent.log_bytes()[before:]
    wait_until(logged, 5, "the escaped 401 line in the agent's log")
    log = agent.log_bytes()[before:]
    for ch in (b"\r", b"\x1b", b"\x00", b"\x07", b"\x7f", b"\xc2\x85", b"\xe2\x80\xa8"):
        assert ch not in log, "a raw %r reached the log" % ch
    for line in log.split(b"\n")[:-1]:
        assert LOG_LINE_RE.match(line), "a line the agent did not write: %r" % line
        assert not line.startswith(b"2099"), line


def test_future_token_is_refused(agent, redis_url):
    far = 2 ** 62
    st, _, body = request("POST", agent.url + "/wake", wake_body(agent.id, far, "j-future"))
    assert st == 409 and body["error"] == "future_token", body
    assert "never issued" in body["message"]
    # The slot still takes its real owner's token, newer or not than the
    # counter was when the forgery came.
    token = next_token(redis_url)
    st, _, body = request("POST", agent.url + "/wake", wake_body(agent.id, token, "j-real"))
    assert st == 200, body
    run_id = body["run_id"]
    # A cancel with a future token: refused; with the real one: done.
    st, _, body = request("POST", "%s/runs/%s/cancel" % (agent.url, run_id), {"token": far})
    assert st == 409 and body["error"] == "future_token", body
    st, _, body = request("POST", "%s/runs/%s/cancel" % (agent.url, run_id), {"token": token})
    assert st == 200, body
    wait_run_over(agent, run_id)
    # Just above the counter is as unissued as 2^62.
    issued = int(redis(redis_url, "GET", "{sbx}:fence"))
    st, _, body = request("POST", agent.url + "/wake", wake_body(agent.id, issued + 1, "j-next"))
    assert st == 409 and body["error"] == "future_token", body


def test_future_token_without_redis_is_unverified(tmp_path):
    """With Redis unreachable the agent cannot tell: 503, not a raise."""
    a = AgentProc("redis://127.0.0.1:%d" % free_port(), "noredis", tmp_path, uid_base=UID_BASE + 10)
    try:
        st, dt, body = request("POST", a.url + "/wake", wake_body(a.id, 5, "j-unverified"))
        assert st == 503 and body["error"] == "token_unverified", body
        assert dt < 5, dt
        tokens = Path(a.work) / "tokens"
        assert not tokens.exists() or b" 5\n" not in tokens.read_bytes()
    finally:
        a.stop()
