"""test_console.py — the web console (`sbx serve`) in a real browser.

Debian's headless Chromium, driven by Selenium through chromedriver, against
`sbx serve` and a real sbx-worker with the session's Kafka, Redis and
PostgreSQL. The console reads as a login that is only a member of sbx_reader
(what an operator would give it); its actions use a login that is a member
of sbx_writer and sbx_submitter (SBX_CONSOLE_ACTION_DATABASE_URL).

Assertions are about what a person sees, without reloading the page:
- a job sent while the runs list is open appears in it and turns
  succeeded; a run's page shows its log as it is written (a line printed
  seconds after the page opened shows up), and markup in a log line shows
  as text (no element made, no script run);
- cancel from a run's page ends a running build canceled;
- a dead letter's Replay is refused without the operator token and works
  with it (the job then succeeds); the API refuses it too;
- lag per partition and slots per pool are shown;
- at 390x844 (a phone) no view scrolls sideways.
Screenshots of every view go to $SBX_BUILD/screenshots/ (paths printed).
"""

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from conftest import REPO, SANITIZER_RE, build_dir, wait_until
from test_worker import enqueue, job, topics, wait_terminal, workdir  # noqa: F401 (fixtures)

# Installed by docker/install-deps.sh (selenium 4.8.3, Debian 12's): a missing
# one is an error here, never a skip.
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PHONE = (390, 844)
DESKTOP = (1280, 900)
SHOTS = build_dir() / "screenshots"
# What a log line or detail with markup must show as: text.
MARKUP = "<script>window.__sbxPwned=1</script><img src=x onerror=window.__sbxPwned=2><b>bold</b>"


def as_role(url, role):
    scheme, rest = url.split("://", 1)
    return "%s://%s@%s" % (scheme, role, rest.split("@", 1)[1])


def login(pg, services, role, *groups):
    """A login role that is a member of groups only (the session's server
    trusts 127.0.0.1)."""
    pg.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '%s') THEN "
               "CREATE ROLE %s LOGIN; END IF; END $$" % (role, role))
    for g in groups:
        pg.execute("GRANT %s TO %s" % (g, role))
    return as_role(services["SBX_DATABASE_URL"], role)


class Console:
    def __init__(self, proc, url, token, log):
        self.proc, self.url, self.token, self.log = proc, url, token, log

    def post(self, path, token=None):
        req = urllib.request.Request(self.url + path, data=b"", method="POST")
        if token:
            req.add_header("X-Sbx-Token", token)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def raw(self, path, method="GET", headers=None):
        """(status, headers, body) of any request."""
        req = urllib.request.Request(self.url + path, method=method, headers=headers or {},
                                     data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def events(self, path, n, headers=None):
        """The first n events of a Server-Sent Events stream, as (name, id, data)."""
        req = urllib.request.Request(self.url + path, headers=headers or {})
        out, name, ev_id, data = [], None, None, []
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            for raw in r:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("id: "):
                    ev_id = line[4:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and data:
                    out.append((name, ev_id, json.loads("\n".join(data))))
                    name, ev_id, data = None, None, []
                    if len(out) == n:
                        return out
        return out


def start_console(services, pg, sbx_bin, topics, log, token):
    """Starts `sbx serve` on a free port (read-only when token is None)."""
    env = dict(os.environ, **services)
    env.update(topics)
    env.update({
        "SBX_DATABASE_URL": login(pg, services, "sbx_e2e_console_reader", "sbx_reader"),
        "SBX_CONSOLE_ACTION_DATABASE_URL": login(pg, services, "sbx_e2e_console_actor",
                                                 "sbx_writer", "sbx_submitter"),
    })
    env.pop("SBX_CONSOLE_TOKEN", None)
    if token:
        env["SBX_CONSOLE_TOKEN"] = token
    with open(log, "w") as errf:
        proc = subprocess.Popen([str(sbx_bin / "sbx"), "serve", "--listen", "127.0.0.1:0"], env=env,
                                stdout=subprocess.PIPE, stderr=errf, text=True,
                                stdin=subprocess.DEVNULL)
    first = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(20)
    line = first[0] if first else ""
    if "listening on http://" not in line:
        proc.kill()
        pytest.fail("sbx serve did not start: %r\n%s" % (line, log.read_text()), pytrace=False)
    url = line.split("listening on ", 1)[1].split()[0].rstrip("/")
    return Console(proc, url, token, log)


def stop_console(c):
    """SIGTERM; it must exit 0 at once, with no sanitizer report."""
    c.proc.terminate()
    try:
        rc = c.proc.wait(20)
    except subprocess.TimeoutExpired:
        c.proc.kill()
        pytest.fail("sbx serve did not stop within 20 s of SIGTERM", pytrace=False)
    out = c.log.read_text()
    print("sbx serve log:\n" + out)
    assert rc == 0, "sbx serve exited %d" % rc
    assert not SANITIZER_RE.search(out), "sbx serve printed a sanitizer report"


@pytest.fixture
def console(services, pg, sbx_bin, topics, tmp_path):  # noqa: F811
    """`sbx serve` for this test's topic and group, with an operator token."""
    c = start_console(services, pg, sbx_bin, topics, tmp_path / "console.log",
                      secrets.token_hex(16))
    yield c
    stop_console(c)


@pytest.fixture
def browser():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail("chromium and chromium-driver are not installed (docker/install-deps.sh)",
                    pytrace=False)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=%d,%d" % DESKTOP, "--hide-scrollbars"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def phone(d, on):
    """Emulates a 390x844 phone screen (or goes back to the desktop size)."""
    if on:
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                          {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 2,
                           "mobile": True})
    else:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def shot(d, name):
    """The whole page (not only the window), as a person scrolling sees it."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / (name + ".png")
    size = d.execute_script("return [document.documentElement.scrollWidth, "
                            "document.documentElement.scrollHeight]")
    png = d.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size[0], "height": min(size[1], 4000), "scale": 1}})
    path.write_bytes(base64.b64decode(png["data"]))
    print("screenshot:", path)
    return path


def text(d, css):
    return " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, css))


def no_sideways_scroll(d, what):
    w = d.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert w[0] <= w[1], "%s scrolls sideways at %dpx: content is %dpx wide" % (what, w[1], w[0])


def go(d, console, hash_):
    d.get(console.url + "/" + hash_)
    d.execute_script("window.__sbxMark = 42")


def still_same_page(d):
    assert d.execute_script("return window.__sbxMark") == 42, "the page reloaded"
    assert d.execute_script("return window.__sbxPwned") is None, "markup from the data ran"


def test_runs_live_log_cancel_and_escaping(run_sbx, pg, services, start_worker, topics,  # noqa: F811
                                           workdir, console, browser):  # noqa: F811
    d = browser
    tag = uuid.uuid4().hex[:8]

    # The runs list, open before the job exists; no worker yet, so the job
    # waits in Kafka (lag 1) until one starts.
    go(d, console, "#/runs")
    wait_until(lambda: "live" == text(d, ".live"), 15, "the runs feed connected")
    quick = job("console-" + tag, "echo quick-%s" % tag)
    enqueue(run_sbx, topics, [quick])
    row = 'tr[data-job="%s"]' % quick["job_id"]
    wait_until(lambda: "submitted" in text(d, row + " .pill"), 30, "the new run in the list")
    wait_until(lambda: console.get("/api/lag")["total_lag"] == 1, 15, "lag 1 with no worker")
    w = start_worker(SBX_WORK_DIR=workdir, SBX_LOCAL_SLOTS=2, **topics)
    wait_until(lambda: "succeeded" in text(d, row + " .pill"), 60, "the run turned succeeded")
    still_same_page(d)
    shot(d, "console-runs-desktop")

    # A run's page while it runs: the first line is there, a line printed
    # seconds later streams in, markup shows as text.
    slow = job("console-" + tag, "echo first-%s; sleep 5; printf '%%s\\n' '%s'; "
               "echo last-%s at=$(date +%%s%%N); sleep 1" % (tag, MARKUP, tag))
    enqueue(run_sbx, topics, [slow])
    go(d, console, "#/run/" + slow["job_id"])
    wait_until(lambda: "first-" + tag in text(d, "#log"), 30, "the first log line")
    assert "last-" + tag not in text(d, "#log"), "the page opened after the build ended"
    # When the line shows on the page (the browser's clock is the build's: one host).
    d.execute_script("""
        const log = document.getElementById("log"), want = arguments[0];
        window.__sbxSeen = null;
        new MutationObserver(() => {
          if (window.__sbxSeen === null && log.textContent.includes(want)) window.__sbxSeen = Date.now();
        }).observe(log, { childList: true, subtree: true, characterData: true });""", "last-" + tag)
    wait_until(lambda: "last-" + tag in text(d, "#log"), 30, "a later log line streamed in")
    printed_ms = int(re.search(r"last-%s at=(\d+)" % tag, text(d, "#log")).group(1)) / 1e6
    seen_ms = d.execute_script("return window.__sbxSeen")
    latency = seen_ms - printed_ms
    print("log latency, the build's echo to the line on the page: %.0f ms" % latency)
    assert 0 <= latency < 5000, latency
    assert MARKUP in text(d, "#log"), text(d, "#log")
    assert d.find_elements(By.CSS_SELECTOR, "#log script, #log img, #log b") == []
    wait_until(lambda: "succeeded" in text(d, ".run-head .pill"), 30, "the page shows succeeded")
    wait_until(lambda: "succeeded" in text(d, "ol.events li:last-child"), 10,
               "the history ends succeeded")
    still_same_page(d)
    shot(d, "console-run-desktop")
    # The API's shapes are the contract's (schemas/run.v1, log.v1).
    schemas = REPO / "schemas"
    run_keys = set(json.loads((schemas / "run.v1.schema.json").read_text())["required"])
    log_keys = set(json.loads((schemas / "log.v1.schema.json").read_text())["required"])
    r = console.get("/api/runs/" + slow["job_id"])
    assert run_keys <= set(r) and r["v"] == 1 and r["events"][-1]["to_status"] == "succeeded", r
    assert all(run_keys <= set(x) for x in console.get("/api/runs?project=console-" + tag))
    chunks = console.get("/api/runs/%s/logs" % slow["job_id"])
    assert chunks and all(log_keys <= set(c) and c["v"] == 1 for c in chunks), chunks

    # Cancel from a running build's page (with the token).
    long = job("console-" + tag + "-b", "echo started-%s; sleep 60" % tag)
    enqueue(run_sbx, topics, [long])
    go(d, console, "#/run/" + long["job_id"])
    wait_until(lambda: "started-" + tag in text(d, "#log"), 30, "the long build's log")
    set_token(d, console.token)
    d.find_element(By.CSS_SELECTOR, ".run-head button.danger").click()
    d.switch_to.alert.accept()
    wait_until(lambda: "canceled" in text(d, ".run-head .pill"), 30, "the page shows canceled")
    assert wait_terminal(pg, [long["job_id"]], 5, [w])[long["job_id"]] == "canceled"
    still_same_page(d)

    # Lag per partition: the worker committed past every job.
    go(d, console, "#/lag")
    wait_until(lambda: text(d, "#total-lag") == "0", 30, "lag 0 after the jobs finished")
    assert len(d.find_elements(By.CSS_SELECTOR, "tbody tr")) == 8
    shot(d, "console-lag-desktop")
    # Slots: the worker's pool, and a pool and agent written here the way
    # sbx-agent does (common/rkeys.h), with markup in their names.
    pool, vm = "console-e2e-" + tag, "console-e2e-" + tag
    slot = vm + "#<b>0</b>"
    redis(services, "SADD", "{sbx}:slots:" + pool, slot, vm + "#1")
    redis(services, "SADD", "{sbx}:free:" + pool, vm + "#1")
    now_s = int(redis(services, "TIME").split()[0])
    redis(services, "HSET", "{sbx}:vm:" + vm, "base_url", "http://10.9.9.9:1", "capacity", "2",
          "state", "busy", "labels", MARKUP, "heartbeat_ms", str((now_s - 60) * 1000),
          "ttl_ms", "15000")
    try:
        go(d, console, "#/slots")
        wait_until(lambda: "Pool local/" in text(d, "h2"), 15, "the worker's pool")
        wait_until(lambda: "Pool " + pool in text(d, "h2"), 15, "the agent's pool")
        assert slot in text(d, "td") and MARKUP in text(d, "td"), text(d, "main")
        assert "1 free of 2" in text(d, "h2")
        assert "late" in text(d, "td"), "an agent past its TTL is not marked"
        still_same_page(d)
        shot(d, "console-slots-desktop")
        phone(d, True)
        go(d, console, "#/slots")
        wait_until(lambda: "Pool " + pool in text(d, "h2"), 15, "the pools at phone size")
        no_sideways_scroll(d, "slots")
        shot(d, "console-slots-phone")
        phone(d, False)
    finally:
        redis(services, "DEL", "{sbx}:slots:" + pool, "{sbx}:free:" + pool, "{sbx}:vm:" + vm)

    # A phone: every view fits the width.
    phone(d, True)
    for name, hash_ in (("runs", "#/runs"), ("run", "#/run/" + slow["job_id"]),
                        ("lag", "#/lag"), ("dlq", "#/dlq")):
        go(d, console, hash_)
        wait_until(lambda: "Loading" not in text(d, "main"), 15, name + " loaded")
        if name == "run":
            wait_until(lambda: "last-" + tag in text(d, "#log"), 15, "the log at phone size")
        time.sleep(0.3)
        no_sideways_scroll(d, name)
        shot(d, "console-%s-phone" % name)
    phone(d, False)


def redis(services, *args):
    r = subprocess.run(["redis-cli", "-u", services["SBX_REDIS_URL"]] + list(args),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and not r.stdout.startswith("ERR"), r.stdout + r.stderr
    return r.stdout


def set_token(d, token):
    d.find_element(By.ID, "token-toggle").click()
    d.find_element(By.ID, "token-input").send_keys(token)
    d.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    wait_until(lambda: d.find_element(By.ID, "token-toggle").text == "Token set", 5, "token set")


def test_dead_letter_replay_needs_the_token(run_sbx, pg, start_worker, topics, workdir,  # noqa: F811
                                            console, browser):
    d = browser
    w = start_worker(SBX_WORK_DIR=workdir, SBX_MAX_ATTEMPTS=2, SBX_RETRY_BASE_MS=50, **topics)
    w.wait_log(r"assigned \d+ partitions", 30)
    # A provider error on every attempt (the work directory is a file), as
    # test_reliability_dlqdata does: the job ends dead_lettered.
    shutil.rmtree(workdir)
    open(workdir, "w").close()
    j = job("console-dlq", "echo replayed-ok")
    try:
        enqueue(run_sbx, topics, [j])
        assert wait_terminal(pg, [j["job_id"]], 60, [w])[j["job_id"]] == "dead_lettered"
    finally:
        os.unlink(workdir)
        os.mkdir(workdir)
        os.chmod(workdir, 0o755)
    dl_id = pg.scalar("SELECT id FROM sbx.dead_letters WHERE job_id = %s", j["job_id"])

    # The API: no token, a wrong one.
    assert console.post("/api/dead-letters/%d/replay" % dl_id)[0] == 401
    assert console.post("/api/dead-letters/%d/replay" % dl_id, "x" * 32)[0] == 401

    go(d, console, "#/dlq")
    row = '//tr[td[@data-label="Job"]//a[text()="%s"]]' % j["job_id"]
    wait_until(lambda: d.find_elements(By.XPATH, row), 20, "the dead letter listed")
    d.find_element(By.XPATH, row + '//button[text()="Replay"]').click()
    wait_until(lambda: "refused" in text(d, "#notice"), 10, "the refusal shown")
    assert "token" in text(d, "#notice")
    assert pg.scalar("SELECT status FROM sbx.runs WHERE job_id = %s", j["job_id"]) == "dead_lettered"
    assert pg.scalar("SELECT replays FROM sbx.dead_letters WHERE id = %s", dl_id) == 0
    shot(d, "console-dlq-refused-desktop")

    set_token(d, console.token)
    d.find_element(By.XPATH, row + '//button[text()="Replay"]').click()
    wait_until(lambda: "replayed" in text(d, "#notice"), 30, "the replay done")
    wait_until(lambda: pg.scalar("SELECT status FROM sbx.runs WHERE job_id = %s",
                                 j["job_id"]) == "succeeded", 60, "the replayed job succeeded")
    wait_until(lambda: "succeeded" in d.find_element(By.XPATH, row).text, 20,
               "the list shows the run succeeded")
    assert pg.scalar("SELECT replays FROM sbx.dead_letters WHERE id = %s", dl_id) == 1
    # A job id runs once: Replay is no longer offered.
    assert not d.find_element(By.XPATH, row + '//button[text()="Replay"]').is_enabled()
    still_same_page(d)
    shot(d, "console-dlq-replayed-desktop")
    phone(d, True)
    go(d, console, "#/dlq")
    wait_until(lambda: d.find_elements(By.XPATH, row), 20, "the dead letter at phone size")
    no_sideways_scroll(d, "dlq")
    shot(d, "console-dlq-phone")
    phone(d, False)


def test_api_answers_and_refusals(pg, services, sbx_bin, topics, console, tmp_path):  # noqa: F811
    """The JSON API without a browser: bad input is a 400 naming it, the log
    and the feed go on from a cursor (Last-Event-ID wins over the URL's),
    actions need the token and a read-only console has none, a request for
    another Host is refused, and pages carry the CSP."""
    job_id = "console-api-" + uuid.uuid4().hex[:8]
    pg.execute("INSERT INTO sbx.runs (job_id, project_id, status, attempt, spec) "
               "VALUES (%s, 'console-api', 'running', 2, '{}')", job_id)
    for attempt, seq, data in ((1, 0, "a1s0\n"), (2, 0, "a2s0\n"), (2, 1, MARKUP + "\n"),
                               (2, 2, "a2s2\n")):
        pg.execute("INSERT INTO sbx.run_logs (job_id, attempt, seq, stream, data, bytes) "
                   "VALUES (%s, %s, %s, 'stdout', %s, %s)", job_id, attempt, seq, data, len(data))
    logs = console.get("/api/runs/%s/logs" % job_id)
    assert [(c["attempt"], c["seq"]) for c in logs] == [(1, 0), (2, 0), (2, 1), (2, 2)]
    assert logs[2]["data"] == MARKUP + "\n" and logs[0]["v"] == 1
    logs = console.get("/api/runs/%s/logs?attempt=2&after=0&limit=1" % job_id)
    assert [(c["attempt"], c["seq"]) for c in logs] == [(2, 1)]

    # The feed of one job: its run as it is now, then its log after the cursor.
    ev = console.events("/api/feed?job=%s&attempt=2&after=0" % job_id, 2)
    assert ev[0][0] == "run" and ev[0][2]["job_id"] == job_id and ev[0][2]["status"] == "running"
    assert ev[1][0] == "log" and ev[1][1] == "2:2"
    assert [c["seq"] for c in ev[1][2]] == [1, 2]
    ev = console.events("/api/feed?job=%s&attempt=1&after=0" % job_id, 2,
                        {"Last-Event-ID": "2:1"})
    assert ev[1][1] == "2:2" and [c["seq"] for c in ev[1][2]] == [2]

    for path, status in (("/api/runs?limit=0", 400), ("/api/runs?since=yesterday-ish", 400),
                         ("/api/runs/bad%20id", 400), ("/api/runs/%s/logs?after=x" % job_id, 400),
                         ("/api/feed?job=bad%20id", 400), ("/api/runs/no-such-job", 404),
                         ("/api/nothing", 404), ("/nothing.html", 404)):
        code, _, body = console.raw(path)
        assert code == status and json.loads(body)["error"], (path, code, body)
    assert console.raw("/api/runs", method="PUT")[0] == 405
    assert console.raw("/api/runs", headers={"Host": "sbx.attacker.example"})[0] == 421
    code, headers, body = console.raw("/")
    assert code == 200 and b'src="/app.js"' in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"

    # Actions: the token, and only the token.
    cancel = "/api/runs/%s/cancel" % job_id
    assert console.post(cancel)[0] == 401
    assert console.post(cancel, console.token[:-1] + "x")[0] == 401
    assert console.post(cancel, console.token + "x")[0] == 401
    assert not pg.scalar("SELECT cancel_requested FROM sbx.runs WHERE job_id = %s", job_id)
    code, body = console.post(cancel, console.token)
    assert code == 200 and body["ok"] and "cancel requested" in body["message"], body
    assert pg.scalar("SELECT cancel_requested FROM sbx.runs WHERE job_id = %s", job_id)
    assert console.post("/api/dead-letters/999999999/replay", console.token)[0] == 409

    ro = start_console(services, pg, sbx_bin, topics, tmp_path / "ro.log", None)
    try:
        assert ro.get("/api/config")["actions"] is False
        assert ro.post(cancel, console.token)[0] == 403
    finally:
        stop_console(ro)
    pg.execute("DELETE FROM sbx.runs WHERE job_id = %s", job_id)
