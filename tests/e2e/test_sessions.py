"""test_sessions.py — sessions (issue 13) on every provider, through the
whole path: `sbx enqueue` -> Kafka -> sbx-worker -> the provider's sandbox
-> sbx.runs and sbx.sessions, against the session's real Kafka, Redis and
PostgreSQL and each provider's real backend (bubblewrap, Podman, dockerd,
the Fly emulator, sbx-agent), as test_providers.py starts them.

What is asserted is what a UI backend reads: the runs, their history (the
`running` row says whether the session's sandbox was new, reused or
resumed) and sbx.sessions with its history.
"""

import base64
import hashlib
import os
import socket
import time
import urllib.parse
import uuid

import pytest

from conftest import wait_until
from test_providers import Harness, backend  # noqa: F401 — the parametrized backend fixture
from test_worker import TERMINAL, enqueue, job, topics  # noqa: F401

RUN_S = 60
DEVSERVER_PY = os.path.join(os.path.dirname(__file__), "..", "devserver", "devserver.py")
PREVIEW_PORT = 8000


@pytest.fixture
def s(backend, start_worker, topics, run_sbx, pg):  # noqa: F811
    if backend.name == "vmpool":
        backend.ensure_running()
    hh = Harness(backend, start_worker, topics, run_sbx, pg)
    hh.sid = "sess-" + uuid.uuid4().hex[:8]
    yield hh
    # Whatever a test left: end it, so nothing runs after `make test`.
    pg.execute("SELECT sbx.stop_session(%s, %s)", hh.project, hh.sid)
    try:
        wait_until(lambda: session(hh)[0] == "ended", 30, "the session to end")
    except BaseException:
        print("session:", session(hh))


def sjob(h, script, **session):
    session.setdefault("id", h.sid)
    return job(h.project, script, session=session)


def run(h, script, timeout=RUN_S, **session):
    j = sjob(h, script, **session)
    ids = h.enqueue(j)
    return ids[0], h.wait_terminal(ids[0], timeout)


def sandbox_use(h, job_id):
    d = h.pg.scalar("SELECT detail FROM sbx.run_events WHERE job_id = %s AND "
                    "to_status = 'running' ORDER BY id DESC LIMIT 1", job_id) or ""
    for word in ("new sandbox", "sandbox reused", "sandbox resumed"):
        if word in d:
            return word, d
    return None, d


def session(h, cols="state, jobs, generation, lease_token, end_reason"):
    rows = h.pg.query("SELECT %s FROM sbx.sessions WHERE project_id = %%s AND session_id = %%s"
                      % cols, h.project, h.sid)
    return rows[0] if rows else (None,) * len(cols.split(","))


def session_history(h):
    return [r[0] for r in h.pg.query(
        "SELECT to_state FROM sbx.session_events WHERE project_id = %s AND session_id = %s "
        "ORDER BY id", h.project, h.sid)]


def test_five_jobs_share_one_workspace(s):
    """Five jobs of one session run one after the other in one sandbox: a
    file the first wrote is read and appended to by the next four; the
    first run says `new sandbox`, the others `sandbox reused`."""
    s.start()
    ids = s.enqueue(*[sjob(s, "echo run-%d >> notes.txt; cat notes.txt; wc -l < notes.txt" % i)
                      for i in range(1, 6)])
    rows = [s.wait_terminal(i, RUN_S) for i in ids]
    for i, r in enumerate(rows):
        assert r[0] == "succeeded", (i, r)
    tail = rows[-1][2]
    assert "run-1\nrun-2\nrun-3\nrun-4\nrun-5\n5" in tail, tail
    uses = [sandbox_use(s, i)[0] for i in ids]
    assert uses == ["new sandbox"] + ["sandbox reused"] * 4, uses
    st, jobs, gen, tok, _ = session(s)
    assert (st, jobs, gen) == ("idle", 5, 1), (st, jobs, gen)
    assert session_history(s)[:2] == ["busy", "idle"]
    # One at a time, in order: each run started after the previous ended.
    spans = s.pg.query("SELECT started_at, finished_at FROM sbx.runs WHERE job_id = ANY(%s) "
                       "ORDER BY started_at", list(ids))
    for a, b in zip(spans, spans[1:]):
        assert a[1] <= b[0], spans


def test_background_process_outlives_its_job(s):
    """A process one job starts in the background is still running when the
    next job of the session runs (what a dev server needs)."""
    s.start()
    _, r1 = run(s, "sh -c 'while :; do date +%s%N > tick; sleep 0.2; done' "
                   ">/dev/null 2>&1 & echo started")
    assert r1[0] == "succeeded", r1
    time.sleep(1.5)
    _, r2 = run(s, "a=$(cat tick); sleep 1; b=$(cat tick); "
                   "[ \"$a\" != \"$b\" ] && echo ticking || echo stopped")
    assert r2[0] == "succeeded", r2
    assert "ticking" in r2[2], r2[2]


def test_idle_session_pauses_then_ends(s):
    """pause_after_s=2, idle_timeout_s=8: idle -> paused -> a job resumes it
    (its background process still there) -> idle -> paused -> ended; a job
    after the end begins the session again in a new sandbox."""
    s.start()
    t = dict(pause_after_s=2, idle_timeout_s=8)
    _, r = run(s, "sh -c 'while :; do date +%s%N > tick; sleep 0.2; done' "
                  ">/dev/null 2>&1 & echo one > keep.txt", **t)
    assert r[0] == "succeeded", r
    wait_until(lambda: session(s)[0] == "paused", 20, "the idle session to pause")
    j2, r2 = run(s, "cat keep.txt; a=$(cat tick); sleep 1; b=$(cat tick); "
                    "[ \"$a\" != \"$b\" ] && echo ticking || echo stopped", **t)
    assert r2[0] == "succeeded", r2
    use, detail = sandbox_use(s, j2)
    assert use == "sandbox resumed", detail
    assert "one" in r2[2] and "ticking" in r2[2], r2[2]
    print("%s: %s" % (s.b.name, detail))
    t0 = time.monotonic()
    wait_until(lambda: session(s)[0] == "ended", 40, "the idle session to end")
    print("%s: ended %.1f s after its last job" % (s.b.name, time.monotonic() - t0))
    assert session(s)[4] == "idle_timeout", session(s)
    hist = session_history(s)
    assert hist == ["busy", "idle", "paused", "busy", "idle", "paused", "ended"], hist
    j3, r3 = run(s, "cat keep.txt 2>/dev/null || echo fresh", **t)
    assert r3[0] == "succeeded" and "fresh" in r3[2], r3
    assert sandbox_use(s, j3)[0] == "new sandbox"
    assert session(s)[2] == 2, "an ended session named again begins a new generation"


def dev_server_job(h, **session):
    """A job that starts the session's dev server in the background: the
    static sbx-devserver where the image has it (docker), else devserver.py
    (the sandbox sees the host's python3)."""
    if h.b.name in ("docker", "dockerd"):
        start, files = "sbx-devserver %d ." % PREVIEW_PORT, {}
    else:
        with open(DEVSERVER_PY) as f:
            files = {"devserver.py": f.read()}
        start = "python3 devserver.py %d ." % PREVIEW_PORT
    script = ("echo hello-from-the-workspace > index.html; "
              "%s > dev.log 2>&1 & "
              "for i in $(seq 50); do case $(cat dev.log) in *listening*) break;; esac; "
              "sleep 0.1; done; "
              "cat dev.log" % start)
    session.setdefault("id", h.sid)
    session["preview_port"] = PREVIEW_PORT
    return dict(job(h.project, script, session=session), files=files)


def http_get(url, cookie=None):
    u = urllib.parse.urlsplit(url)
    c = socket.create_connection((u.hostname, u.port), timeout=10)
    path = u.path + ("?" + u.query if u.query else "")
    c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n%s\r\n"
               % (path or "/", u.netloc, "Cookie: %s\r\n" % cookie if cookie else "")).encode())
    data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    c.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return int(lines[0].split(" ")[1]), hdrs, body.decode("utf-8", "replace")


def websocket_echo(url, cookie, text):
    u = urllib.parse.urlsplit(url)
    c = socket.create_connection((u.hostname, u.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    c.sendall(("GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nCookie: %s\r\n\r\n"
               % (u.netloc, key, cookie)).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += c.recv(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    acc = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC11B63")
                           .digest()).decode()
    assert acc.encode() in head, "Sec-WebSocket-Accept"
    m = os.urandom(4)
    payload = text.encode()
    c.sendall(bytes([0x81, 0x80 | len(payload)]) + m +
              bytes(b ^ m[i % 4] for i, b in enumerate(payload)))
    while len(rest) < 2 or len(rest) < 2 + rest[1]:
        rest += c.recv(4096)
    c.close()
    return rest[2:2 + rest[1]].decode()


def open_preview(url):
    """Signs in as a browser would: the URL's token for the cookie."""
    st, hdrs, _ = http_get(url)
    assert st == 302, (st, hdrs)
    return hdrs["set-cookie"].split(";")[0]


def test_preview_serves_the_dev_server(s):
    """A dev server started by one job of the session is reachable at the
    session's preview URL by a real HTTP client and over a WebSocket, needs
    the URL's token (401 without), and still answers after the session was
    paused and a job resumed it."""
    s.start(SBX_PREVIEW_LISTEN="127.0.0.1")
    t = dict(pause_after_s=2, idle_timeout_s=120)
    j1 = dev_server_job(s, **t)
    s.enqueue(j1)
    r = s.wait_terminal(j1["job_id"], RUN_S)
    assert r[0] == "succeeded", r
    url = s.pg.scalar("SELECT preview_url FROM sbx.sessions WHERE project_id = %s AND "
                      "session_id = %s", s.project, s.sid)
    assert url and "sbx_token=" in url, url
    assert s.pg.scalar("SELECT preview_url FROM sbx.runs WHERE job_id = %s", j1["job_id"]) == url
    bare = url.split("?")[0]
    assert http_get(bare)[0] == 401, "no token, no preview"
    cookie = open_preview(url)
    st, _, body = http_get(bare, cookie)
    assert st == 200 and "hello-from-the-workspace" in body, (st, body)
    assert websocket_echo(url, cookie, "hot-reload") == "echo:hot-reload"
    wait_until(lambda: session(s)[0] == "paused", 20, "the idle session to pause")
    j2, r2 = run(s, "echo again", **t)
    assert r2[0] == "succeeded", r2
    st, _, body = http_get(bare, cookie)
    assert st == 200 and "hello-from-the-workspace" in body, (st, body)
    assert websocket_echo(url, cookie, "after-resume") == "echo:after-resume"
    print("%s: preview %s" % (s.b.name, bare))


def create_to_running_ms(h, job_id):
    rows = h.pg.query("SELECT to_status, at FROM sbx.run_events WHERE job_id = %s ORDER BY id",
                      job_id)
    at = {st: t for st, t in rows}
    return (at["running"] - at["provisioning"]).total_seconds() * 1000.0


def test_warm_pool_cuts_create_to_running(s, request):
    """SBX_WARM=1: a new session's first job takes the warm sandbox (its
    history says so) and its create-to-running is measured against a cold
    one's on the same backend, in one run. vmpool's pool is the agents'
    (SBX_AGENT_WARM=1 for the warm half, back to 0 after)."""
    vmpool = s.b.name == "vmpool"
    if vmpool:
        request.addfinalizer(lambda: s.b.set_warm(0))
    w = s.start()
    cold_j, r = run(s, "echo cold")
    assert r[0] == "succeeded", r
    assert sandbox_use(s, cold_j)[0] == "new sandbox"
    cold = create_to_running_ms(s, cold_j)
    w.stop()
    if vmpool:
        s.b.set_warm(1)
    s.start(SBX_WARM="1")
    time.sleep(3)  # the pool fills in the background
    s.pg.execute("SELECT sbx.stop_session(%s, %s)", s.project, s.sid)
    s.sid = "warm-" + uuid.uuid4().hex[:8]
    warm_j, r = run(s, "echo warm")
    assert r[0] == "succeeded", r
    use, detail = sandbox_use(s, warm_j)
    assert "warm sandbox" in detail, detail
    warm = create_to_running_ms(s, warm_j)
    print("%s: create-to-running cold %.0f ms, warm %.0f ms" % (s.b.name, cold, warm))


def test_stop_ends_the_session(s):
    """`sbx.stop_session` (what `sbx session stop` calls) ends an idle
    session within seconds and frees its slot for other projects."""
    s.start()
    _, r = run(s, "echo x > f")
    assert r[0] == "succeeded", r
    assert s.pg.scalar("SELECT sbx.stop_session(%s, %s)", s.project, s.sid) == "idle"
    wait_until(lambda: session(s)[0] == "ended", 20, "the stopped session to end")
    assert session(s)[4] == "stopped"


def test_kill9_hands_the_session_over(s):
    """kill -9 of the worker while a session's job runs: a new worker takes
    the job with a newer token, the session follows with that token, the
    job's build never runs twice at once, and the next job of the session
    still runs in order."""
    w = s.start()
    j1 = sjob(s, "echo begin >> runs.txt; sleep 4.%s; echo end >> runs.txt; cat runs.txt"
              % s.marker)
    s.enqueue(j1)
    s.wait_running_instance(j1["job_id"])
    tok1 = session(s)[3]
    w.kill()
    s.start()
    r1 = s.wait_terminal(j1["job_id"], 90)
    assert r1[0] == "succeeded", r1
    tok2 = session(s)[3]
    assert tok2 > tok1, (tok1, tok2)
    _, r2 = run(s, "cat runs.txt 2>/dev/null; echo next")
    assert r2[0] == "succeeded" and "next" in r2[2], r2
    # Never two builds of the job at once: where the sandbox outlived the
    # killed worker, its build ended (or was stopped: a begin with no end)
    # before the new owner's began; two that overlapped would both end.
    marks = "\n".join(l for l in r2[2].split("\n") if l in ("begin", "end"))
    assert "begin\nbegin\nend\nend" not in marks, marks
    hist = s.pg.query("SELECT to_status, lease_token FROM sbx.run_events WHERE job_id = %s "
                      "ORDER BY id", j1["job_id"])
    assert sum(1 for st, _ in hist if st in TERMINAL) == 1, hist


def test_session_rows_follow_runs_and_fence_the_sweeper(pg):
    """The database half on its own (no worker): a run's claim makes its
    session busy with the run's token, its end makes it idle; sessions_due
    names it for a pause, then for an end; park_session with an older token
    than the session's changes nothing; stop_session asks for the end; a
    run claimed after the end begins generation 2."""
    p, sid = "sql-" + uuid.uuid4().hex[:8], "s1"
    spec = '{"job_id":"%%s","project_id":"%s","script":"true","session":{"id":"%s",' \
           '"pause_after_s":1,"idle_timeout_s":3600}}' % (p, sid)

    def run_once(job_id, token):
        pg.query("SELECT * FROM sbx.record_run(%s, %s, %s::jsonb, 'w', 0, 0)",
                 job_id, p, spec % job_id)
        assert pg.scalar("SELECT result FROM sbx.claim_run(%s, %s, 'w', 'local', 'slot-a')",
                         job_id, token) == "claimed"
        assert state() == "busy"
        assert pg.scalar("SELECT sbx.transition(%s, %s, 'w', 'succeeded', NULL, 0, NULL, NULL,"
                         " NULL, NULL)", job_id, token)

    def state(cols="state"):
        return pg.scalar("SELECT %s FROM sbx.sessions WHERE project_id = %%s AND "
                         "session_id = %%s" % cols, p, sid)

    base = int(pg.scalar("SELECT COALESCE(max(lease_token), 0) FROM sbx.runs")) + 1000
    run_once(p + "-j1", base + 1)
    assert state() == "idle"
    assert state("jobs") == 1 and state("slot") == "slot-a"
    time.sleep(1.2)
    due = pg.query("SELECT op, reason FROM sbx.sessions_due('local', true, 100, NULL) "
                   "WHERE project_id = %s", p)
    assert due == [("pause", "idle")], due
    assert not pg.query("SELECT 1 FROM sbx.sessions_due('local', false, 100, NULL) "
                        "WHERE project_id = %s", p), "no pause asked of a provider that cannot"
    assert not pg.query("SELECT 1 FROM sbx.sessions_due('local', true, 100, ARRAY['slot-b']) "
                        "WHERE project_id = %s", p), "another host's slot: not this worker's"
    assert pg.query("SELECT 1 FROM sbx.sessions_due('local', true, 100, ARRAY['slot-b', "
                    "'slot-a']) WHERE project_id = %s", p)
    # A sweeper with a token older than the session's last job is refused.
    assert pg.scalar("SELECT sbx.park_session(%s, %s, %s, 'paused', 'idle', 'w')",
                     p, sid, base) is False
    assert pg.scalar("SELECT sbx.park_session(%s, %s, %s, 'paused', 'idle', 'w')",
                     p, sid, base + 2) is True
    assert state() == "paused"
    run_once(p + "-j2", base + 3)
    assert state() == "idle" and state("jobs") == 2
    assert pg.scalar("SELECT sbx.stop_session(%s, %s)", p, sid) == "idle"
    due = pg.query("SELECT op, reason FROM sbx.sessions_due('local', true, 100, NULL) "
                   "WHERE project_id = %s", p)
    assert due == [("destroy", "stopped")], due
    assert pg.scalar("SELECT sbx.park_session(%s, %s, %s, 'ended', 'stopped', 'w')",
                     p, sid, base + 4) is True
    assert state() == "ended" and state("end_reason") == "stopped"
    assert pg.scalar("SELECT sbx.stop_session(%s, %s)", p, sid) == "ended"
    assert pg.scalar("SELECT sbx.stop_session(%s, 'nope')", p) == ""
    run_once(p + "-j3", base + 5)
    assert state("generation") == 2 and state("jobs") == 1 and state("stop_requested") is False
    hist = [r[0] for r in pg.query("SELECT to_state FROM sbx.session_events WHERE "
                                   "project_id = %s ORDER BY id", p)]
    assert hist == ["busy", "idle", "paused", "busy", "idle", "ended", "busy", "idle"], hist
    shape = pg.scalar("SELECT sbx.session_v1(s) FROM sbx.sessions s WHERE project_id = %s", p)
    assert shape["state"] == "idle" and shape["generation"] == 2, shape


def test_project_costs_from_histories(pg):
    """sbx.project_costs: a run's attempt and a session's idle and paused
    time, priced at the provider's price in effect, cut at the window's
    ends; a new price changes nothing that began before it."""
    p, prov = "cost-" + uuid.uuid4().hex[:8], "prov-" + uuid.uuid4().hex[:6]
    # The price in effect since an hour ago (as a worker started then recorded it).
    pg.execute("INSERT INTO sbx.prices (provider, since, per_hour, paused_per_hour) "
               "VALUES (%s, now() - interval '1 hour', 3.6, 0.36)", prov)
    assert pg.scalar("SELECT sbx.set_price(%s, 3.6, 0.36)", prov) is False, "same price: no row"
    pg.execute("INSERT INTO sbx.runs (job_id, project_id, status, provider, spec, finished_at)"
               " VALUES (%s, %s, 'succeeded', %s, '{}', now())", p + "-j", p, prov)
    pg.execute("INSERT INTO sbx.run_events (job_id, to_status, at) VALUES "
               "(%s, 'provisioning', now() - interval '100 s'), "
               "(%s, 'running', now() - interval '90 s'), "
               "(%s, 'succeeded', now() - interval '50 s')", p + "-j", p + "-j", p + "-j")
    pg.execute("INSERT INTO sbx.sessions (project_id, session_id, state, provider, pause_after_s,"
               " idle_timeout_s, max_lifetime_s, ends_at) VALUES (%s, 's', 'ended', %s, 1, 1, 1,"
               " now())", p, prov)
    pg.execute("INSERT INTO sbx.session_events (project_id, session_id, generation, to_state, at)"
               " VALUES (%s, 's', 1, 'busy', now() - interval '100 s'),"
               " (%s, 's', 1, 'idle', now() - interval '50 s'),"
               " (%s, 's', 1, 'paused', now() - interval '40 s'),"
               " (%s, 's', 1, 'ended', now() - interval '20 s')", p, p, p, p)
    assert pg.scalar("SELECT sbx.set_price(%s, 36, 36)", prov) is True
    row = pg.query("SELECT run_seconds, idle_seconds, paused_seconds, cost FROM "
                   "sbx.project_costs(now() - interval '1 day', now()) WHERE project_id = %s", p)
    assert len(row) == 1, row
    run_s, idle_s, paused_s, cost = row[0]
    assert abs(run_s - 50) < 1 and abs(idle_s - 10) < 1 and abs(paused_s - 20) < 1, row[0]
    # 60 s at 3.6/h + 20 s paused at 0.36/h, all begun before the new price.
    assert abs(float(cost) - (60 * 0.001 + 20 * 0.0001)) < 0.002, cost
    # A window that cuts the run: only its last 10 s count.
    row = pg.query("SELECT run_seconds FROM sbx.project_costs(now() - interval '60 s', now()) "
                   "WHERE project_id = %s", p)
    assert abs(row[0][0] - 10) < 1, row
