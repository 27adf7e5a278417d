"""test_flyemu.py — the emulator against the documented Machines API behaviour.

Each check names the doc fact it holds the emulator to (fly.io/docs/machines/
api/machines-resource, working-with-machines-api, machine-states). The
emulator runs as a real process on a free port; machines run real commands in
bubblewrap. Every wait has a deadline.

Run: pytest -q tests/flyemu/test_flyemu.py
"""
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = "t0k3n"
APP = "sbx-test"


class Emu:
    def __init__(self, *extra):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "flyemu.py"), "--port", "0", "--print-port",
             "--token", TOKEN, "--regions", "iad=3,ord=2", "--destroyed-grace-ms", "300",
             "--boot-min-ms", "50", "--boot-max-ms", "150", *extra],
            stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.base = "http://127.0.0.1:%d" % self.port

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def call(self, method, path, body=None, token=TOKEN, headers=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if token:
            req.add_header("Authorization", "Bearer " + token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=90) as r:
                raw, status, hdrs = r.read(), r.status, r.headers
        except urllib.error.HTTPError as e:
            raw, status, hdrs = e.read(), e.code, e.headers
        ctype = hdrs.get("Content-Type", "")
        return status, (json.loads(raw) if "json" in ctype and raw else raw), hdrs

    def api(self, method, sub, body=None, **kw):
        return self.call(method, "/v1/apps/%s/machines%s" % (APP, sub), body, **kw)

    def create(self, cmd, **cfg):
        config = {"image": "registry-1.docker.io/library/alpine:3.19",
                  "init": {"cmd": cmd}, "restart": {"policy": "no"}}
        region = cfg.pop("region", None)
        config.update(cfg)
        body = {"config": config}
        if region:
            body["region"] = region
        st, m, _ = self.api("POST", "", body)
        assert st == 200, m
        return m

    def wait(self, m, state, timeout=10):
        q = "state=%s&timeout=%d" % (state, timeout)
        if state == "stopped":
            q += "&instance_id=" + m["instance_id"]
        return self.api("GET", "/%s/wait?%s" % (m["id"], q))

    def until(self, fn, deadline_s=10):
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            v = fn()
            if v:
                return v
            time.sleep(0.05)
        raise AssertionError("condition not met within %ss" % deadline_s)


@pytest.fixture
def emu():
    e = Emu("--no-rate-limit")
    yield e
    e.close()


@pytest.fixture
def limited():
    e = Emu()
    yield e
    e.close()


def exit_event(m):
    return next(e for e in m["events"] if e["type"] == "exit")


def test_auth_required(emu):
    # working-with-machines-api: "401 The API key used was missing or invalid."
    st, body, _ = emu.api("GET", "", token=None)
    assert st == 401 and "error" in body
    st, body, _ = emu.api("GET", "", token="wrong")
    assert st == 401 and "error" in body
    st, body, _ = emu.call("GET", "/_emu/machines/nope/logs", token=None)
    assert st == 401


def test_create_shape_and_lifecycle(emu):
    m = emu.create(["/bin/sh", "-c", "echo hello from $FLY_MACHINE_ID; echo err >&2; exit 3"],
                   env={"GREETING": "hi"}, metadata={"sbx_job": "j1"})
    # machines-resource: create returns the Machine, state "created", 14-hex id
    assert re.fullmatch(r"[0-9a-f]{14}", m["id"])
    assert m["state"] == "created"
    for k in ("name", "region", "instance_id", "private_ip", "config", "created_at",
              "updated_at", "events", "image_ref"):
        assert k in m, k
    assert m["region"] == "iad"                     # first region when none is asked for
    assert m["config"]["metadata"] == {"sbx_job": "j1"}
    assert m["events"][0]["type"] == "launch"
    st, body, _ = emu.wait(m, "stopped")
    assert (st, body) == (200, {"ok": True})
    st, got, _ = emu.api("GET", "/" + m["id"])
    assert st == 200 and got["state"] == "stopped"
    ee = exit_event(got)
    assert ee["status"] == "stopped"
    assert ee["request"]["exit_event"]["exit_code"] == 3
    assert "exited_at" in ee["request"]["exit_event"]
    types = [e["type"] for e in got["events"]]
    assert types.index("exit") < types.index("start") < types.index("launch")   # newest first
    st, logs, hdrs = emu.call("GET", "/_emu/machines/%s/logs" % m["id"])
    assert st == 200
    assert b"hello from " + m["id"].encode() in logs and b"err" in logs
    st, evs, _ = emu.api("GET", "/%s/events" % m["id"])
    assert st == 200 and evs == got["events"]


def test_clean_exit_omits_exit_code(emu):
    m = emu.create(["/bin/true"])
    assert emu.wait(m, "stopped")[0] == 200
    ee = exit_event(emu.api("GET", "/" + m["id"])[1])["request"]["exit_event"]
    assert "exit_code" not in ee                    # Go omitempty: 0 is left out


def test_sandbox_env_and_6pn_only(emu):
    m = emu.create(["/bin/sh", "-c",
                    'echo "G=$GREETING IP=$FLY_PRIVATE_IP"; cat /proc/net/dev; '
                    'ip -6 route show | grep -c default'],
                   env={"GREETING": "hi"})
    assert emu.wait(m, "stopped")[0] == 200
    logs = emu.call("GET", "/_emu/machines/%s/logs" % m["id"])[1]
    assert b"G=hi" in logs
    assert ("IP=%s" % m["private_ip"]).encode() in logs
    assert b"eth0" in logs                          # 6PN, up before the command runs
    assert logs.rstrip().endswith(b"0")             # no default route: nothing else reachable


def test_private_ip_reachable_from_host(emu):
    """private-networking: the app is reached at private_ip on the port it
    listens on (bound to ::); suspend freezes it, start brings it back."""
    import socket
    srv = ("import socket,sys\n"
           "s=socket.socket(socket.AF_INET6);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
           "s.bind(('::',8080));s.listen(8)\n"
           "while True:\n c,_=s.accept();c.sendall(b'hello from the machine');c.close()\n")
    m = emu.create(["python3", "-c", srv])
    assert emu.wait(m, "started")[0] == 200

    def fetch():
        with socket.create_connection((m["private_ip"], 8080), timeout=2) as c:
            return c.recv(100)
    emu.until(lambda: _ok(fetch), 10)
    assert fetch() == b"hello from the machine"
    assert emu.api("POST", "/%s/suspend" % m["id"])[0] == 200
    assert emu.wait(m, "suspended")[0] == 200
    assert emu.api("POST", "/%s/start" % m["id"])[0] == 200
    assert emu.wait(m, "started")[0] == 200
    assert fetch() == b"hello from the machine"
    assert emu.api("DELETE", "/%s?force=true" % m["id"])[0] == 200


def _ok(fn):
    try:
        fn()
        return True
    except OSError:
        return False


def test_metadata_set_get_delete(emu):
    """fly-go flaps_machines.go SetMetadata/GetMetadata/DeleteMetadata: POST
    .../metadata/{key} {"value"}, 204; the list's metadata filter sees it."""
    m = emu.create(["sleep", "30"], metadata={"a": "1"})
    assert emu.wait(m, "started")[0] == 200
    st, body, _ = emu.api("POST", "/%s/metadata/sbx_session" % m["id"], {"value": "s-1"})
    assert st == 204
    assert emu.api("GET", "/%s/metadata" % m["id"])[1] == {"a": "1", "sbx_session": "s-1"}
    time.sleep(0.4)                                  # list_delay_ms of a new machine
    ids = [x["id"] for x in emu.api("GET", "?metadata.sbx_session=s-1")[1]]
    assert ids == [m["id"]]
    assert emu.api("DELETE", "/%s/metadata/a" % m["id"])[0] == 204
    assert emu.api("GET", "/" + m["id"])[1]["config"]["metadata"] == {"sbx_session": "s-1"}
    assert emu.api("POST", "/%s/metadata/x" % m["id"], {})[0] == 400
    assert emu.api("GET", "/%s/metadata" % m["id"], token="bad")[0] == 401
    assert emu.api("DELETE", "/%s?force=true" % m["id"])[0] == 200


def test_wait_timeout_408_and_validation(emu):
    m = emu.create(["sleep", "30"])
    assert emu.wait(m, "started")[0] == 200
    t0 = time.monotonic()
    st, body, _ = emu.wait(m, "stopped", timeout=1)
    assert st == 408 and "error" in body            # machines-resource: 408 Request Timeout
    assert 0.9 <= time.monotonic() - t0 < 5
    for q in ("state=stopped&timeout=5", "state=started&timeout=0",
              "state=started&timeout=61", "state=running&timeout=5"):
        st, body, _ = emu.api("GET", "/%s/wait?%s" % (m["id"], q))
        assert st == 400 and "error" in body, q
    assert emu.api("DELETE", "/%s?force=true" % m["id"])[0] == 200


def test_stop_signal_then_kill(emu):
    # a process that ignores SIGINT is killed after the stop timeout
    m = emu.create(["/bin/sh", "-c", "trap '' INT; echo ready; sleep 60"])
    assert emu.wait(m, "started")[0] == 200
    emu.until(lambda: b"ready" in emu.call("GET", "/_emu/machines/%s/logs" % m["id"])[1])
    t0 = time.monotonic()
    st, body, _ = emu.api("POST", "/%s/stop" % m["id"], {"signal": "SIGINT", "timeout": "1s"})
    assert (st, body) == (200, {"ok": True})
    assert emu.wait(m, "stopped")[0] == 200
    assert 0.9 <= time.monotonic() - t0 < 5
    ee = exit_event(emu.api("GET", "/" + m["id"])[1])["request"]["exit_event"]
    assert ee["requested_stop"] is True and ee["exit_code"] == 137
    # a process that handles SIGTERM exits with its own code
    m = emu.create(["/bin/sh", "-c", "trap 'exit 42' TERM; echo ready; sleep 60 & wait"])
    assert emu.wait(m, "started")[0] == 200
    emu.until(lambda: b"ready" in emu.call("GET", "/_emu/machines/%s/logs" % m["id"])[1])
    assert emu.api("POST", "/%s/stop" % m["id"], {"signal": "SIGTERM", "timeout": 10})[0] == 200
    assert emu.wait(m, "stopped")[0] == 200
    ee = exit_event(emu.api("GET", "/" + m["id"])[1])["request"]["exit_event"]
    assert ee["exit_code"] == 42
    st, body, _ = emu.api("POST", "/%s/stop" % m["id"], {"signal": "SIGWHAT"})
    assert st == 400


def test_delete_running_needs_force_then_404(emu):
    m = emu.create(["sleep", "30"])
    assert emu.wait(m, "started")[0] == 200
    st, body, _ = emu.api("DELETE", "/" + m["id"])
    # machines-resource reference: 409 "unable to destroy machine, not currently stopped"
    assert st == 409 and "not currently stopped" in body["error"]
    assert emu.api("DELETE", "/%s?force=true" % m["id"])[0] == 200
    assert emu.wait(m, "destroyed")[0] == 200
    emu.until(lambda: emu.api("GET", "/" + m["id"])[0] == 404, 5)
    st, body, _ = emu.api("GET", "/" + m["id"])
    assert st == 404 and "error" in body
    assert emu.api("POST", "/%s/start" % m["id"])[0] == 404
    ids = [x["id"] for x in emu.api("GET", "")[1]]
    assert m["id"] not in ids
    ids = [x["id"] for x in emu.api("GET", "?include_deleted=true")[1]]
    assert m["id"] in ids


def test_unknown_machine_and_route(emu):
    st, body, _ = emu.api("GET", "/0123456789abcd")
    assert st == 404 and "error" in body
    st, body, _ = emu.call("GET", "/v1/nothing")
    assert st == 404


def test_bad_config_400(emu):
    st, body, _ = emu.api("POST", "", {"config": {}})
    assert st == 400 and "image" in body["error"]
    st, body, _ = emu.api("POST", "", {"config": {"image": "x", "guest": {
        "cpu_kind": "shared", "cpus": 1, "memory_mb": 100}}})
    assert st == 400 and "memory_mb" in body["error"]
    st, body, _ = emu.api("POST", "", {"region": "zzz", "config": {"image": "x"}})
    assert st == 400


def test_auto_destroy_after_exit(emu):
    m = emu.create(["/bin/sh", "-c", "exit 5"], auto_destroy=True)
    assert emu.wait(m, "stopped")[0] == 200        # stopped, even if already destroyed
    assert emu.wait(m, "destroyed")[0] == 200
    emu.until(lambda: emu.api("GET", "/" + m["id"])[0] == 404, 5)
    logs = emu.call("GET", "/_emu/machines/%s/logs" % m["id"])
    assert logs[0] == 200                           # output outlives the machine


def test_skip_launch_then_start(emu):
    st, m, _ = emu.api("POST", "", {"skip_launch": True, "config": {
        "image": "x", "init": {"cmd": ["sleep", "30"]}}})
    assert st == 200 and m["state"] == "created"
    time.sleep(0.3)
    assert emu.api("GET", "/" + m["id"])[1]["state"] == "created"
    st, body, _ = emu.api("POST", "/%s/start" % m["id"])
    assert st == 200 and body["previous_state"] == "created"
    assert emu.wait(m, "started")[0] == 200
    st, body, _ = emu.api("POST", "/%s/start" % m["id"])
    assert st == 412                                # already started
    emu.api("DELETE", "/%s?force=true" % m["id"])


def test_metadata_filter(emu):
    a = emu.create(["/bin/true"], metadata={"sbx_worker": "w1"})
    b = emu.create(["/bin/true"], metadata={"sbx_worker": "w2"})
    ids = emu.until(lambda: [x["id"] for x in emu.api("GET", "?metadata.sbx_worker=w1")[1]])
    assert a["id"] in ids and b["id"] not in ids


def test_capacity_409_and_other_region(emu):
    ms = [emu.create(["sleep", "30"], region="ord") for _ in range(2)]
    st, body, _ = emu.api("POST", "", {"region": "ord", "config": {"image": "x"}})
    assert st == 409
    assert "insufficient CPUs" in body["error"] and body["status"] == "insufficient_capacity"
    other = emu.create(["sleep", "30"], region="iad")
    assert other["region"] == "iad"
    emu.api("DELETE", "/%s?force=true" % ms[0]["id"])
    emu.until(lambda: emu.api("POST", "", {"region": "ord", "config": {
        "image": "x", "init": {"cmd": ["/bin/true"]}}})[0] == 200, 5)


def test_rate_limit_429_retry_after(limited):
    m = limited.create(["sleep", "30"])
    codes = []
    for _ in range(5):
        st, body, hdrs = limited.api("GET", "/%s/events" % m["id"])
        codes.append(st)
        if st == 429:
            assert "error" in body
            assert int(hdrs["Retry-After"]) >= 1
    # 1 req/s with a burst of 3, per action per machine
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
    time.sleep(1.1)
    assert limited.api("GET", "/%s/events" % m["id"])[0] == 200
    # Get Machine has its own, larger budget (5/s, burst 10)
    assert all(limited.api("GET", "/" + m["id"])[0] == 200 for _ in range(6))
    limited.api("DELETE", "/%s?force=true" % m["id"])


def test_fault_knobs(emu):
    emu.call("POST", "/_emu/faults", {"fail_creates": 2, "fail_status": 503})
    assert emu.api("POST", "", {"config": {"image": "x"}})[0] == 503
    assert emu.api("POST", "", {"config": {"image": "x"}})[0] == 503
    m = emu.create(["/bin/true"])
    assert emu.wait(m, "stopped")[0] == 200
    emu.call("POST", "/_emu/faults", {"fail_boots": 1})
    m = emu.create(["sleep", "5"])
    emu.until(lambda: emu.api("GET", "/" + m["id"])[1]["state"] == "failed", 5)
    emu.call("POST", "/_emu/faults", {"throttle": {"action": "create", "count": 1,
                                                   "retry_after": 2}})
    st, body, hdrs = emu.api("POST", "", {"config": {"image": "x"}})
    assert st == 429 and hdrs["Retry-After"] == "2"
    emu.call("POST", "/_emu/faults", {"delay_ms": 300})
    t0 = time.monotonic()
    emu.api("GET", "")
    assert time.monotonic() - t0 >= 0.3
    emu.call("POST", "/_emu/reset", {})
    m = emu.create(["sleep", "30"])
    assert emu.wait(m, "started")[0] == 200
    emu.call("POST", "/_emu/fail/" + m["id"])
    assert emu.api("GET", "/" + m["id"])[1]["state"] == "failed"
    assert emu.api("DELETE", "/" + m["id"])[0] == 200   # failed needs no force
    reqs = emu.call("GET", "/_emu/requests")[1]
    assert any(r["action"] == "delete" and r["status"] == 200 for r in reqs)


def test_restart_on_failure(emu):
    m = emu.create(["/bin/sh", "-c", "exit 1"], restart={"policy": "on-failure", "max_retries": 2})
    emu.until(lambda: emu.api("GET", "/" + m["id"])[1]["state"] == "stopped", 10)
    exits = [e for e in emu.api("GET", "/" + m["id"])[1]["events"] if e["type"] == "exit"]
    assert len(exits) == 3
    assert exits[-1]["request"]["exit_event"].get("restarting") is True
    assert "restarting" not in exits[0]["request"]["exit_event"]


def test_lease(emu):
    m = emu.create(["sleep", "30"])
    st, body, _ = emu.api("POST", "/%s/lease" % m["id"], {"ttl": 30})
    assert st == 201 and body["data"]["nonce"]
    nonce = body["data"]["nonce"]
    assert emu.api("POST", "/%s/lease" % m["id"], {"ttl": 30})[0] == 409
    assert emu.api("POST", "/%s/stop" % m["id"], {})[0] == 409      # leased: needs the nonce
    assert emu.api("GET", "/%s/lease" % m["id"])[1]["data"]["nonce"] == nonce
    assert emu.api("DELETE", "/%s/lease" % m["id"],
                   headers={"fly-machine-lease-nonce": nonce})[0] == 200
    assert emu.api("DELETE", "/%s?force=true" % m["id"])[0] == 200


def test_update_replaces(emu):
    m = emu.create(["sleep", "30"])
    assert emu.wait(m, "started")[0] == 200
    cfg = emu.api("GET", "/" + m["id"])[1]["config"]
    cfg["init"] = {"cmd": ["/bin/sh", "-c", "echo v2; sleep 30"]}
    st, u, _ = emu.api("POST", "/" + m["id"], {"config": cfg})
    assert st == 200 and u["instance_id"] != m["instance_id"]
    emu.until(lambda: emu.api("GET", "/" + m["id"])[1]["state"] == "started", 10)
    emu.until(lambda: b"v2" in emu.call("GET", "/_emu/machines/%s/logs" % m["id"])[1])
    emu.api("DELETE", "/%s?force=true" % m["id"])


def test_exec(emu):
    m = emu.create(["/bin/sh", "-c", "echo 7 > /tmp/x; sleep 30"])
    assert emu.wait(m, "started")[0] == 200
    def run():
        st, body, _ = emu.api("POST", "/%s/exec" % m["id"], {"command": ["cat", "/tmp/x"]})
        return body if st == 200 and body["stdout"] == "7\n" else None
    body = emu.until(run)
    assert body["exit_code"] == 0
    emu.api("DELETE", "/%s?force=true" % m["id"])


def test_config_files(emu):
    import base64
    raw = base64.b64encode(b"inline content\n").decode()
    m = emu.create(["/bin/sh", "-c", "cat /workspace/dir/a.txt"],
                   files=[{"guest_path": "/workspace/dir/a.txt", "raw_value": raw}])
    assert emu.wait(m, "stopped")[0] == 200
    assert emu.call("GET", "/_emu/machines/%s/logs" % m["id"])[1] == b"inline content\n"
    st, body, _ = emu.api("POST", "", {"config": {"image": "x", "files": [
        {"guest_path": "rel", "raw_value": raw}]}})
    assert st == 400


def test_lost_create_reply_and_brief_started(emu):
    emu.call("POST", "/_emu/faults", {"lose_creates": 1})
    st, body, _ = emu.api("POST", "", {"config": {
        "image": "x", "init": {"cmd": ["sleep", "30"]}, "metadata": {"sbx_run": "r1"}}})
    assert st == 500
    lst = emu.until(lambda: emu.api("GET", "?metadata.sbx_run=r1")[1])
    assert len(lst) == 1                            # made all the same
    emu.api("DELETE", "/%s?force=true" % lst[0]["id"])
    # a wait sees a state the machine passed through after the wait began
    m = emu.create(["/bin/true"])
    assert emu.wait(m, "started", timeout=5)[0] == 200


def test_429_is_logged_with_its_action(limited):
    limited.call("POST", "/_emu/faults", {"throttle": {"action": "create", "count": 1}})
    assert limited.api("POST", "", {"config": {"image": "x"}})[0] == 429
    reqs = limited.call("GET", "/_emu/requests")[1]
    assert reqs[-1]["action"] == "create" and reqs[-1]["status"] == 429


# ---- issue 15: the stricter emulator ----

def test_list_is_eventually_consistent(emu):
    # flyctl PR #4618: "The Fly machines API is eventually consistent"; a new
    # machine is not in the list at once (default --list-delay-ms 300).
    m = emu.create(["sleep", "30"], metadata={"sbx_run": "ec1"})
    t0 = time.monotonic()
    assert emu.api("GET", "?metadata.sbx_run=ec1")[1] == []
    emu.until(lambda: emu.api("GET", "?metadata.sbx_run=ec1")[1], 5)
    assert time.monotonic() - t0 >= 0.25
    emu.api("DELETE", "/%s?force=true" % m["id"])


def test_create_answered_408_or_dropped_still_made(emu):
    emu.call("POST", "/_emu/faults", {"timeout_creates": 1, "drop_creates": 1})
    body = {"config": {"image": "x", "init": {"cmd": ["sleep", "30"]},
                       "metadata": {"sbx_run": "amb"}}}
    st, out, _ = emu.api("POST", "", body)
    assert st == 408 and "deadline_exceeded" in out["error"]
    with pytest.raises((urllib.error.URLError, ConnectionError, http_client_errors())):
        emu.api("POST", "", body)
    lst = emu.until(lambda: len(emu.api("GET", "?metadata.sbx_run=amb")[1]) == 2 and
                    emu.api("GET", "?metadata.sbx_run=amb")[1])
    assert all(x["state"] in ("starting", "started") for x in lst)
    for x in lst:
        emu.api("DELETE", "/%s?force=true" % x["id"])


def http_client_errors():
    import http.client
    return http.client.HTTPException


def test_capacity_status_in_body_whatever_the_code(emu):
    # fly-go flaps/flaps_error.go CapacityScopeOf: the body's "status" decides
    for code in (412, 200, 422):
        emu.call("POST", "/_emu/faults", {"capacity": {"ord": 0}, "capacity_status": code})
        st, body, _ = emu.api("POST", "", {"region": "ord", "config": {"image": "x"}})
        assert st == code and body["status"] == "insufficient_capacity"


def test_launch_failed_then_destroyed(emu):
    emu.call("POST", "/_emu/faults", {"launch_fails": 1})
    m = emu.create(["sleep", "30"])
    emu.until(lambda: emu.api("GET", "/" + m["id"])[1].get("state") == "launch_failed", 5)
    st, body, _ = emu.wait(m, "started", timeout=5)
    assert st == 400 and "failed to reach desired state" in body["error"]
    emu.until(lambda: emu.api("GET", "/" + m["id"])[1].get("state") in ("destroyed", None), 5)


def test_wait_errors_and_408_text(emu):
    m = emu.create(["sleep", "30"])
    assert emu.wait(m, "started")[0] == 200
    st, body, _ = emu.wait(m, "stopped", timeout=1)
    assert st == 408
    assert body["error"] == ("deadline_exceeded: machine failed to reach desired state, "
                             "stopped, currently started")
    emu.call("POST", "/_emu/faults", {"wait_errors": 1, "wait_error_status": 500})
    st, body, _ = emu.wait(m, "stopped", timeout=1)
    assert st == 500 and "failed to reach desired state" in body["error"]
    emu.api("DELETE", "/%s?force=true" % m["id"])


@pytest.mark.parametrize("how", ["replace", "migrate"])
def test_replaced_or_migrated_version(emu, how):
    m = emu.create(["sleep", "30"])
    assert emu.wait(m, "started")[0] == 200
    assert emu.call("POST", "/_emu/%s/%s" % (how, m["id"]))[0] == 200
    # the version we watched can no longer stop: the wait says so
    st, body, _ = emu.wait(m, "stopped", timeout=5)
    assert st == 400 and ("currently %sd" % how if how == "replace" else "currently migrated") \
        in body["error"]
    got = emu.api("GET", "/" + m["id"])[1]
    assert got["instance_id"] != m["instance_id"]   # a new version runs the config again
    emu.api("DELETE", "/%s?force=true" % m["id"])


def test_logs_api_shape_and_paging(emu):
    emu.call("POST", "/_emu/faults", {"log_delay_ms": 0, "log_page": 100})
    m = emu.create(["/bin/sh", "-c", "for i in $(seq 1 150); do echo line-$i; done; "
                    "printf no-newline"])
    other = emu.create(["/bin/sh", "-c", "echo other-machine"])
    assert emu.wait(m, "stopped")[0] == 200 and emu.wait(other, "stopped")[0] == 200
    time.sleep(0.2)
    msgs, tok, pages = [], "", 0
    while True:
        st, body, _ = emu.call("GET", "/api/v1/apps/%s/logs?instance=%s&next_token=%s"
                               % (APP, m["id"], tok))
        assert st == 200 and set(body) == {"data", "meta"}
        if not body["data"]:
            assert body["meta"]["next_token"] == ""   # flyctl keeps its old token then
            break
        pages += 1
        for e in body["data"]:
            a = e["attributes"]
            assert set(a) >= {"timestamp", "message", "level", "instance", "region", "meta"}
            assert a["instance"] == m["id"]
            msgs.append(a["message"])
        tok = body["meta"]["next_token"]
    assert pages == 2                               # 100 entries a page
    assert msgs == ["line-%d" % i for i in range(1, 151)] + ["no-newline"]
    assert emu.call("GET", "/api/v1/apps/%s/logs" % APP, token="bad")[0] == 401


def test_logs_arrive_late(emu):
    emu.call("POST", "/_emu/faults", {"log_delay_ms": 600})
    m = emu.create(["/bin/sh", "-c", "echo late"])
    assert emu.wait(m, "stopped")[0] == 200
    q = "/api/v1/apps/%s/logs?instance=%s" % (APP, m["id"])
    first = emu.call("GET", q)[1]["data"]
    time.sleep(0.7)
    assert first == [] and emu.call("GET", q)[1]["data"][0]["attributes"]["message"] == "late"


def test_default_rate_limits_per_app_create(limited):
    # working-with-machines-api "Rate limits" and community.fly.io/t/20636:
    # 1 req/s per action, burst 3; creates have no machine, so per app.
    codes = [limited.api("POST", "", {"config": {"image": "x", "init": {"cmd": ["true"]}}})[0]
             for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3] == 429
    time.sleep(1.05)
    assert limited.api("POST", "", {"region": "ord",
                                    "config": {"image": "x", "init": {"cmd": ["true"]}}})[0] == 200


def test_new_machine_may_404_at_first(emu):
    emu.call("POST", "/_emu/faults", {"new_404_ms": 400})
    m = emu.create(["sleep", "30"])
    assert emu.api("GET", "/" + m["id"])[0] == 404
    emu.until(lambda: emu.api("GET", "/" + m["id"])[0] == 200, 5)
    emu.api("DELETE", "/%s?force=true" % m["id"])


def test_exit_event_under_monitor_event(emu):
    emu.call("POST", "/_emu/faults", {"monitor_exit": True})
    m = emu.create(["/bin/sh", "-c", "exit 5"])
    assert emu.wait(m, "stopped")[0] == 200
    ev = exit_event(emu.api("GET", "/" + m["id"])[1])
    assert ev["request"]["MonitorEvent"]["exit_event"]["exit_code"] == 5
    assert "exit_event" not in ev["request"]


def test_shared_cpus_stop_at_8(emu):
    st, body, _ = emu.api("POST", "", {"config": {"image": "x", "guest": {
        "cpu_kind": "shared", "cpus": 16, "memory_mb": 4096}}})
    assert st == 400 and "cpus" in body["error"]
    st, _, _ = emu.api("POST", "", {"config": {"image": "x", "init": {"cmd": ["true"]}, "guest": {
        "cpu_kind": "performance", "cpus": 16, "memory_mb": 32768}}})
    assert st == 200


def test_suspend_keeps_processes_and_files_stop_discards(emu):
    """suspend-resume: suspend keeps memory and the running processes; start
    resumes them; stop then start is a cold start on a fresh root fs."""
    m = emu.create(["/bin/sh", "-c", "sleep 600"])
    assert emu.wait(m, "started")[0] == 200
    mid = m["id"]
    def exec_(cmd, **kw):
        return emu.api("POST", "/%s/exec" % mid, dict({"command": ["/bin/sh", "-c", cmd]}, **kw))
    st, body, _ = exec_("cat > /tmp/f; (sleep 500 >/dev/null 2>&1 &) ; echo ok", stdin="kept\n")
    assert st == 200 and body["stdout"] == "ok\n", body
    assert emu.until(lambda: emu.api("POST", "/%s/suspend" % mid)[0] == 200)
    assert emu.wait(m, "suspended")[0] == 200
    assert exec_("true")[0] == 412                  # not started: nothing to exec in
    t0 = time.monotonic()
    st, body, _ = emu.api("POST", "/%s/start" % mid)
    assert st == 200 and body["previous_state"] == "suspended"
    assert emu.wait(m, "started")[0] == 200
    assert time.monotonic() - t0 < 3
    st, body, _ = emu.until(lambda: (lambda r: r if r[0] == 200 else None)(
        exec_("cat /tmp/f; pgrep -x sleep | wc -l")))
    assert body["stdout"].split() == ["kept", "2"], body
    # stop discards the snapshot; the next start boots afresh
    assert emu.until(lambda: emu.api("POST", "/%s/suspend" % mid)[0] == 200)
    assert emu.wait(m, "suspended")[0] == 200
    assert emu.until(lambda: emu.api("POST", "/%s/stop" % mid, {})[0] == 200)
    m2 = emu.api("GET", "/%s" % mid)[1]
    assert emu.wait(m2, "stopped")[0] == 200
    assert emu.until(lambda: emu.api("POST", "/%s/start" % mid)[0] == 200)
    assert emu.wait(m, "started")[0] == 200
    st, body, _ = emu.until(lambda: (lambda r: r if r[0] == 200 else None)(
        exec_("cat /tmp/f 2>/dev/null; pgrep -x sleep | wc -l")))
    assert body["stdout"].split() == ["1"], body
    emu.api("DELETE", "/%s?force=true" % mid)


def test_suspend_requirements_and_states(emu):
    """suspend-resume "Requirements": at most 2 GB of memory, no swap."""
    big = emu.create(["sleep", "600"], guest={"cpu_kind": "shared", "cpus": 2, "memory_mb": 4096})
    assert emu.wait(big, "started")[0] == 200
    st, body, _ = emu.api("POST", "/%s/suspend" % big["id"])
    assert st == 412 and "cannot be suspended" in body["error"]
    sw = emu.create(None, init={"cmd": ["sleep", "600"], "swap_size_mb": 512})
    assert emu.wait(sw, "started")[0] == 200
    assert emu.api("POST", "/%s/suspend" % sw["id"])[0] == 412
    done = emu.create(["true"])
    assert emu.wait(done, "stopped")[0] == 200
    assert emu.until(lambda: emu.api("POST", "/%s/suspend" % done["id"])[0] == 412)
    for x in (big, sw, done):
        emu.api("DELETE", "/%s?force=true" % x["id"])


def test_exec_checks_timeout_and_stdin(emu):
    m = emu.create(["sleep", "600"])
    assert emu.wait(m, "started")[0] == 200
    assert emu.api("POST", "/%s/exec" % m["id"], {"command": ["true"], "timeout": 61})[0] == 400
    assert emu.until(lambda: emu.api("POST", "/%s/exec" % m["id"],
                                     {"command": ["true"], "stdin": 5})[0] == 400)
    emu.api("DELETE", "/%s?force=true" % m["id"])
