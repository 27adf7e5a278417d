#!/usr/bin/env python3
"""flyemu.py — a local emulator of the Fly.io Machines API (api.machines.dev/v1).

Why it exists: sbx's `fly` provider must be tested against something that
behaves like Fly.io, and Fly.io cannot be reached from the test machines. This
is the one stand-in the project allows. It follows the public documentation
(fly.io/docs/machines/api/: machines-resource, working-with-machines-api,
machine-states) and the field names of the published Go client (fly-go's
machine_types.go); where the docs are silent it says so next to the code.

What it owns:
  - The documented routes under /v1/apps/{app}/machines: list (metadata.k=v,
    region and include_deleted filters), create, get, update, wait, start,
    stop, suspend, delete (?force=true), lease (create/get/release), events,
    exec (with stdin), metadata (get, set and delete a key).
  - The machine life cycle with small real delays:
        created -> starting -> started -> stopping -> stopped
                -> destroying -> destroyed        (+ failed, replacing)
        started -> suspending -> suspended -> (start) starting -> started
    `started` means a real process is running: config.init (exec, or
    entrypoint + cmd) runs in a bubblewrap sandbox whose only network is
    its 6PN address (private_ip, reachable from this host: Emulator.net_up), a
    read-only /usr, a private /tmp, config.files written where they ask
    (raw_value only) and the machine's env. Its exit is recorded
    as an `exit` event, in the shape the real API uses:
        {"type":"exit","status":"stopped","source":"flyd","timestamp":ms,
         "request":{"exit_event":{"exit_code":N,"exited_at":...,...}}}
    Fields are omitted when zero/false, as Go's `omitempty` does on the real
    server: a clean exit has no "exit_code" at all. Clients must read a
    missing exit_code as 0.
  - Restart policy (no / always / on-failure with max_retries), auto_destroy,
    stop with a signal then SIGKILL after the timeout, leases, capacity per
    region, documented rate limits, and fault injection.

What it does not do (and says so):
  - Images are NOT pulled: there is no registry here. config.image is
    recorded (and echoed in image_ref) but every machine's root filesystem is
    the host's /usr, read-only. With no init.cmd/exec/entrypoint the machine
    runs --default-cmd, standing in for the image's CMD.
  - Logs are served as Fly's HTTP logs API serves them (flyctl api/
    resource_logs.go): GET /api/v1/apps/{app}/logs?instance=&region=
    &next_token=, one entry per output line, paged by next_token, lines
    visible --log-delay-ms after they were written. As an EMULATOR EXTENSION
    the raw output is also at GET /_emu/machines/{id}/logs (text/plain, the
    last --max-log-bytes; ?tail=N for fewer). Both need the bearer token.
  - guest limits are validated but not enforced on the process; 6PN is one
    veth per machine to this host only (no machine-to-machine traffic, no
    .internal DNS); no services, volumes or checks.
  - suspend (fly.io/docs/reference/suspend-resume) freezes every process of
    the machine with SIGSTOP and start thaws them with SIGCONT after
    resume_ms: memory and the root filesystem are kept, as a Firecracker
    snapshot keeps them. stop discards that (the processes die; the next
    start boots a fresh root filesystem, as Fly's ephemeral rootfs is reset
    on every start: fly.io/docs/volumes/overview, docs/apps/restart).

Control endpoints (emulator extensions, no auth, for tests):
  GET/POST /_emu/faults  knobs (Emulator.apply_faults): fail_creates +
                         fail_status (refused before anything is made),
                         lose_creates / timeout_creates / drop_creates (made,
                         launched, then answered 500 / 408 / nothing),
                         capacity + capacity_status, launch_fails,
                         fail_boots, wait_errors + wait_error_status,
                         list_delay_ms, new_404_ms, log_delay_ms, log_page,
                         monitor_exit, delay_ms, throttle, rate limits,
                         suspend_ms, resume_ms
  POST /_emu/replace/{id}, /_emu/migrate/{id}
                         Fly replaces / migrates the machine: the running
                         version ends, a new instance runs the config again
  POST /_emu/fail/{id}   the machine goes to `failed` now (process killed)
  POST /_emu/reset       restores faults and region capacities to the command
                         line's, clears rate-limit buckets and the request log;
                         {"machines": true} also kills and forgets machines
  GET  /_emu/requests    the request log (?since=seq), newest last
  GET  /_emu/machines    every machine the emulator remembers, with pids

Rate limits (working-with-machines-api, "Rate Limits"): 1 req/s per action
per machine with a burst of 3, Get Machine 5 req/s burst 10. Create has no
machine yet, so it uses one bucket per app (--create-rate/--create-burst,
1/s burst 3 like every other action); list likewise. A refused request gets
429 {"error": ...} and Retry-After in whole seconds. The list is eventually
consistent: a new machine shows there --list-delay-ms after its create.

Each behaviour, its source at Fly, and the test that covers it: README.md
next to this file.

Run: python3 flyemu.py --port 0 --print-port   (prints the bound port, then
serves on 127.0.0.1 until SIGTERM/SIGINT; sandboxes die with it).
"""

import argparse
import base64
import binascii
import collections
import hashlib
import heapq
import json
import math
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SIGNALS = {
    "SIGHUP": signal.SIGHUP, "SIGINT": signal.SIGINT, "SIGQUIT": signal.SIGQUIT,
    "SIGKILL": signal.SIGKILL, "SIGUSR1": signal.SIGUSR1, "SIGUSR2": signal.SIGUSR2,
    "SIGTERM": signal.SIGTERM,
}
WAIT_STATES = ("started", "stopped", "suspended", "destroyed")
# States in which a machine holds a process or is about to; DELETE without
# force refuses them (documented as 409 "not currently stopped").
LIVE_STATES = ("starting", "started", "stopping", "replacing", "suspending", "suspended")
# fly.io/docs/reference/suspend-resume, "Requirements": a machine can be
# suspended with at most 2 GB of memory, no swap and no schedule.
SUSPEND_MAX_MEMORY_MB = 2048
RESTART_POLICIES = ("no", "always", "on-failure")
# Fly's default on-failure retry count is not in the docs; 10 is what flyd
# is commonly observed to use.
DEFAULT_MAX_RETRIES = 10
# A request log and a log buffer must not grow without bound in a long test run.
REQUEST_LOG_MAX = 5000
# Log entries kept per app (Fly keeps logs for a while, not forever).
LOG_ENTRIES_MAX = 200000
MACHINES_MAX = 5000
EXEC_READY_S = 3
# The emulator's 6PN "organization": the third group of every private_ip.
ORG = random.randrange(1, 0xffff)
# A machine's address and the host's end share this prefix; nothing else is
# routed (the machine has no default route), so traffic stays on this host.
NET_PREFIX = 112
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ADJ = ("aged", "bold", "calm", "dry", "empty", "fancy", "green", "lively", "misty", "quiet")
NOUN = ("wind", "river", "field", "leaf", "sun", "moon", "stone", "wave", "snow", "fire")


class DropReply(Exception):
    """The connection is closed without any reply (a reply lost on the way)."""


class ApiError(Exception):
    def __init__(self, status, error, extra=None, headers=None):
        super().__init__(error)
        self.status = status
        self.body = {"error": error}
        if extra:
            self.body.update(extra)
        self.headers = headers or {}


def now_ms():
    return int(time.time() * 1000)


def iso(ts=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts if ts is not None else time.time()))


def ulid():
    return "".join(random.choice(CROCKFORD) for _ in range(26))


def parse_duration(v, what):
    """Seconds from an int/float or a Go duration string ("10s", "1m30s", "500ms")."""
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise ApiError(400, "invalid %s" % what)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        if re.fullmatch(r"\d+(\.\d+)?", v):
            return float(v)
        total, pos = 0.0, 0
        for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h)", v):
            if m.start() != pos:
                break
            total += float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
            pos = m.end()
        if pos == len(v) and pos > 0:
            return total
    raise ApiError(400, "invalid %s: %r" % (what, v))


def image_ref(image):
    """image_ref as the API reports it. No registry is contacted; the digest is a
    stand-in derived from the image string so it is stable per image."""
    name, tag = image, "latest"
    if "@" in name:
        name = name.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, repo = parts[0], "/".join(parts[1:])
    else:
        registry, repo = "registry-1.docker.io", name if len(parts) > 1 else "library/" + name
    return {"registry": registry, "repository": repo, "tag": tag,
            "digest": "sha256:" + hashlib.sha256(image.encode()).hexdigest()}


class AppLog:
    """An app's log lines in shipping order; entry i has sequence base + i,
    which is what next_token carries."""

    def __init__(self):
        self.entries = []          # (monotonic time, machine id, region, message)
        self.base = 1


class Bucket:
    """Token bucket: `rate` tokens/s, at most `burst`."""

    def __init__(self, rate, burst):
        self.rate, self.burst = rate, burst
        self.tokens, self.last = float(burst), time.monotonic()

    def take(self):
        t = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (t - self.last) * self.rate)
        self.last = t
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - self.tokens) / self.rate))


class Scheduler:
    """One long-lived thread runs every delayed action. It must be one thread
    that never exits: sandboxes are started from here, and bubblewrap's
    --die-with-parent (PR_SET_PDEATHSIG) kills a child when the *thread* that
    forked it ends, so a short-lived timer thread would kill its machine."""

    class Handle:
        cancelled = False

        def cancel(self):
            self.cancelled = True

    def __init__(self):
        self.cv = threading.Condition()
        self.heap = []
        self.seq = 0
        threading.Thread(target=self.run, name="flyemu-sched", daemon=True).start()

    def call_later(self, seconds, fn, *args):
        h = Scheduler.Handle()
        with self.cv:
            self.seq += 1
            heapq.heappush(self.heap, (time.monotonic() + seconds, self.seq, h, fn, args))
            self.cv.notify()
        return h

    def run(self):
        while True:
            with self.cv:
                while not self.heap or self.heap[0][0] > time.monotonic():
                    self.cv.wait(None if not self.heap else self.heap[0][0] - time.monotonic())
                _, _, h, fn, args = heapq.heappop(self.heap)
            if not h.cancelled:
                try:
                    fn(*args)
                except Exception as e:   # a bug in one action must not stop the clock
                    sys.stderr.write("flyemu: scheduled %s failed: %r\n" % (fn.__name__, e))


class Machine:
    def __init__(self, app, mid, name, region, config):
        self.app, self.id, self.name, self.region = app, mid, name, region
        self.config = config
        self.state = "created"
        self.instance_id = ulid()
        # 6PN: a ULA per machine inside the org's fdaa::/16 (fly.io/docs/reference/
        # private-networking); the emulator's org is one random group, so two
        # emulators on a host do not share addresses.
        self.private_ip = "fdaa:0:%x:a7b:%x:%x:%x:2" % ((ORG,) + tuple(
            random.randrange(1, 0xffff) for _ in range(3)))
        self.host_if = None        # the host end of the machine's veth, while it has one
        self.created_at = self.updated_at = iso()
        self.events = []           # newest first, like the API
        self.history = []          # (state, instance_id) in order, for wait
        self.gen = 0               # bumps whenever a pending boot must be forgotten
        self.proc = None
        self.init_pid = None       # pid 1 of the sandbox's pid namespace, seen from here
        self.pending_signal = None
        self.stop_requested = False
        self.destroy_after_exit = False
        self.replace_after_exit = False
        self.skip_after_replace = False
        self.restart_count = 0
        self.kill_timer = None
        self.lease = None
        self.destroyed_at = None
        self.log = bytearray()
        self.log_total = 0
        self.partial = b""         # output after the last newline, not yet a log line
        self.created_mono = time.monotonic()
        self.dead_versions = {}    # instance_id -> "replaced"/"migrated": waits on it fail


class Emulator:
    def __init__(self, args):
        self.args = args
        self.net_warned = False
        self.cv = threading.Condition()
        self.machines = collections.OrderedDict()   # id -> Machine
        self.initial_regions = []
        for item in args.regions.split(","):
            name, _, cap = item.partition("=")
            self.initial_regions.append((name.strip(), int(cap) if cap else 1000))
        self.tokens = set(args.token)
        self.buckets = {}
        self.reqlog = collections.deque(maxlen=REQUEST_LOG_MAX)
        self.reqseq = 0
        self.applogs = {}          # app -> AppLog
        self.sched = Scheduler()
        self.t0 = time.monotonic()
        self.reset_faults()

    # ---- knobs ----

    def reset_faults(self):
        a = self.args
        self.regions = collections.OrderedDict(self.initial_regions)
        self.faults = {
            "fail_creates": a.fail_creates, "fail_status": a.fail_status,
            "fail_boots": a.fail_boots, "delay_ms": a.delay_ms, "lose_creates": 0,
            "timeout_creates": 0, "drop_creates": 0, "launch_fails": 0, "new_404_ms": 0,
            "monitor_exit": False,
            "wait_errors": 0, "wait_error_status": 500,
            "capacity_status": 409, "list_delay_ms": a.list_delay_ms,
            "log_delay_ms": a.log_delay_ms, "log_page": a.log_page,
            "throttle": {},             # action -> {"count": n, "retry_after": s}
            "rate_limit": not a.no_rate_limit,
            "rate": a.rate, "burst": a.burst,
            "get_rate": a.get_rate, "get_burst": a.get_burst,
            "create_rate": a.create_rate, "create_burst": a.create_burst,
            "boot_ms": [a.boot_min_ms, a.boot_max_ms],
            # suspend-resume: "Resume from suspend: a few hundred ms"; how long
            # taking the snapshot lasts is not documented (a choice)
            "suspend_ms": [a.suspend_min_ms, a.suspend_max_ms],
            "resume_ms": [a.resume_min_ms, a.resume_max_ms],
        }

    def apply_faults(self, body):
        f = self.faults
        for k in ("fail_creates", "fail_status", "fail_boots", "delay_ms", "lose_creates",
                  "timeout_creates", "drop_creates", "launch_fails", "wait_errors",
                  "wait_error_status", "capacity_status", "list_delay_ms", "log_delay_ms",
                  "log_page", "new_404_ms"):
            if k in body:
                f[k] = int(body[k])
        for k in ("rate", "burst", "get_rate", "get_burst", "create_rate", "create_burst"):
            if k in body:
                f[k] = float(body[k])
                self.buckets.clear()
        if "monitor_exit" in body:
            f["monitor_exit"] = bool(body["monitor_exit"])
        if "rate_limit" in body:
            f["rate_limit"] = bool(body["rate_limit"])
            self.buckets.clear()
        for k in ("boot_ms", "suspend_ms", "resume_ms"):
            if k in body:
                f[k] = [int(body[k][0]), int(body[k][1])]
        if "throttle" in body:
            t = body["throttle"]
            f["throttle"][t["action"]] = {"count": int(t.get("count", 1)),
                                          "retry_after": int(t.get("retry_after", 1))}
        if "capacity" in body:
            for r, c in body["capacity"].items():
                self.regions[r] = int(c)
        return self.public_faults()

    def public_faults(self):
        out = dict(self.faults)
        out["regions"] = dict(self.regions)
        return out

    def rate_check(self, app, action, mid):
        """Raises 429 when the caller is over its budget for this action."""
        t = self.faults["throttle"].get(action)
        if t and t["count"] > 0:
            t["count"] -= 1
            raise ApiError(429, "rate limit exceeded", headers={"Retry-After": str(t["retry_after"])})
        if not self.faults["rate_limit"]:
            return
        f = self.faults
        if action == "get":
            rate, burst = f["get_rate"], f["get_burst"]
        elif action in ("create", "list"):
            rate, burst = f["create_rate"], f["create_burst"]
        else:
            rate, burst = f["rate"], f["burst"]
        key = (app, action, mid)
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = Bucket(rate, burst)
        wait = b.take()
        if wait:
            raise ApiError(429, "rate limit exceeded", headers={"Retry-After": str(wait)})

    # ---- machine state ----

    def set_state(self, m, state):
        if m.state == state:
            return
        self.vlog("machine %s %s -> %s" % (m.id, m.state, state))
        m.state = state
        m.updated_at = iso()
        m.history.append((state, m.instance_id))
        if state == "destroyed":
            m.destroyed_at = time.monotonic()
            m.lease = None
        self.cv.notify_all()

    def event(self, m, typ, status, source, request=None):
        ev = {"type": typ, "status": status, "source": source, "timestamp": now_ms()}
        if request is not None:
            ev["request"] = request
        m.events.insert(0, ev)

    def vlog(self, msg):
        if self.args.verbose:
            sys.stderr.write("flyemu: %s\n" % msg)

    def visible(self, m):
        """Destroyed machines stay readable for a short grace, then 404 (seen on
        the real API: `destroyed` shortly before not found)."""
        if m.state != "destroyed":
            return True
        return (time.monotonic() - m.destroyed_at) * 1000 < self.args.destroyed_grace_ms

    def find(self, app, mid, allow_destroyed=True):
        m = self.machines.get(mid)
        if m is None or m.app != app or not self.visible(m):
            raise ApiError(404, "machine not found")
        if (time.monotonic() - m.created_mono) * 1000 < self.faults["new_404_ms"]:
            raise ApiError(404, "machine not found")   # not replicated yet (flyctl PR #4618)
        if not allow_destroyed and m.state == "destroyed":
            raise ApiError(404, "machine not found")
        return m

    def check_lease(self, m, headers):
        if m.lease and m.lease["expires_at"] > time.time():
            if headers.get("fly-machine-lease-nonce") != m.lease["nonce"]:
                raise ApiError(409, "machine %s lease currently held by %s, expires at %s" % (
                    m.id, m.lease["owner"], iso(m.lease["expires_at"])))

    def gc(self):
        """Forgets long-destroyed machines (their logs go with them)."""
        cutoff = time.monotonic() - self.args.retain_s
        for mid in [k for k, m in self.machines.items()
                    if m.state == "destroyed" and m.destroyed_at < cutoff]:
            del self.machines[mid]
        while len(self.machines) > MACHINES_MAX:
            victim = next((k for k, m in self.machines.items() if m.state == "destroyed"), None)
            if victim is None:
                break
            del self.machines[victim]

    # ---- life cycle ----

    def argv_of(self, config):
        init = config.get("init") or {}
        if init.get("exec"):
            return list(init["exec"])
        argv = list(init.get("entrypoint") or []) + list(init.get("cmd") or [])
        return argv or list(self.args.default_cmd_argv)

    def launch(self, m, source):
        """created/stopped/failed -> starting, then boots after a short delay."""
        m.gen += 1
        m.stop_requested = False
        m.pending_signal = None
        self.set_state(m, "starting")
        lo, hi = self.faults["boot_ms"]
        gen = m.gen
        self.sched.call_later(random.uniform(lo, hi) / 1000.0, self.boot, m, gen)

    def boot(self, m, gen):
        with self.cv:
            if m.gen != gen or m.state != "starting":
                return
            if self.faults["launch_fails"] > 0:
                # machine-states: launch_failed "will transition to destroyed"
                self.faults["launch_fails"] -= 1
                self.event(m, "launch", "launch_failed", "flyd")
                self.set_state(m, "launch_failed")
                self.sched.call_later(self.args.destroy_ms / 1000.0, self.gone_after_launch, m)
                return
            if self.faults["fail_boots"] > 0:
                self.faults["fail_boots"] -= 1
                self.event(m, "start", "failed", "flyd")
                self.set_state(m, "failed")
                return
            try:
                self.spawn(m)
            except OSError as e:
                self.vlog("spawn %s: %s" % (m.id, e))
                self.event(m, "start", "failed", "flyd")
                self.set_state(m, "failed")
                return
            self.event(m, "start", "started", "flyd")
            self.set_state(m, "started")

    def spawn(self, m):
        cfg = m.config
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": "/tmp", "FLY_APP_NAME": m.app, "FLY_MACHINE_ID": m.id,
               "FLY_ALLOC_ID": m.id, "FLY_REGION": m.region,
               "FLY_IMAGE_REF": cfg.get("image", ""), "FLY_PRIVATE_IP": m.private_ip,
               "FLY_MACHINE_VERSION": m.instance_id}
        env.update({str(k): str(v) for k, v in (cfg.get("env") or {}).items()})
        # config.files: written into the root before the command starts, each
        # from a memfd so no content size can block the spawn on a pipe.
        file_args, file_fds = [], []
        try:
            for f in cfg.get("files") or []:
                fd = os.memfd_create("flyemu-file")
                file_fds.append(fd)
                os.write(fd, base64.b64decode(f.get("raw_value", "")))
                os.lseek(fd, 0, os.SEEK_SET)
                file_args += ["--dir", os.path.dirname(f["guest_path"]) or "/",
                              "--file", str(fd), f["guest_path"]]
            info_r, info_w = os.pipe()
            out_r, out_w = os.pipe()
            block_r, block_w = os.pipe()
            file_fds.append(block_r)
            argv = [self.args.bwrap, "--unshare-all", "--die-with-parent", "--new-session",
                    "--info-fd", str(info_w), "--block-fd", str(block_r),
                    "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
                    "--symlink", "usr/sbin", "/sbin",
                    "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                    "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp",
                    "--hostname", m.id] + file_args + ["--"] + self.argv_of(cfg)
            try:
                proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out_w,
                                        stderr=out_w, pass_fds=[info_w] + file_fds,
                                        start_new_session=True)
            except OSError:
                os.close(info_r)
                os.close(out_r)
                os.close(block_w)
                raise
            finally:
                os.close(info_w)
                os.close(out_w)
        finally:
            for fd in file_fds:
                os.close(fd)
        m.proc = proc
        m.init_pid = None
        threading.Thread(target=self.reader, args=(m, proc, info_r, out_r, block_w),
                         daemon=True).start()

    def net_up(self, m, pid):
        """The machine's 6PN address (fly.io/docs/reference/private-networking:
        every machine has a private IPv6 address, reachable by the org's other
        machines and its WireGuard peers on any port the app listens on, as
        `private_ip` in the API). Here: a veth pair from the host into the
        machine's network namespace, the machine's end at private_ip, the
        host's at the same address ending :1, one /112 between them and no
        other route, so the host reaches the machine and the machine reaches
        nothing else. Needs CAP_NET_ADMIN; without it the machine has only
        loopback and the address is unreachable (said once on stderr)."""
        if self.args.no_network or pid is None:
            return
        host_ip = m.private_ip.rsplit(":", 1)[0] + ":1"
        old, m.host_if = m.host_if, "fly" + secrets.token_hex(5)
        if old:                   # a stop/start: the old namespace may not be gone yet
            subprocess.run(["ip", "link", "del", old], capture_output=True, timeout=10)
        cmds = (
            "link add %s type veth peer name eth0 netns %d\n"
            "addr add %s/%d dev %s nodad\n"
            "link set %s up\n" % (m.host_if, pid, host_ip, NET_PREFIX, m.host_if, m.host_if))
        # lo is bwrap's: it brings it up itself, racing this, and fails if the
        # kernel's 127.0.0.1 (added when lo goes up) is there first
        inner = "addr add %s/%d dev eth0 nodad\nlink set eth0 up\n" % (m.private_ip, NET_PREFIX)
        try:
            p1 = subprocess.run(["ip", "-force", "-batch", "-"], input=cmds.encode(),
                                capture_output=True, timeout=10)
            p2 = subprocess.run(["nsenter", "-t", str(pid), "-n", "--", "ip", "-batch", "-"],
                                input=inner.encode(), capture_output=True, timeout=10)
            err = (p1.stderr if p1.returncode else b"") + (p2.stderr if p2.returncode else b"")
        except (OSError, subprocess.TimeoutExpired) as e:
            err = str(e).encode()
        if err and not self.net_warned:
            self.net_warned = True
            sys.stderr.write("flyemu: machine networks unavailable (%s); private_ip is not "
                             "reachable\n" % err.decode(errors="replace").strip())

    def reader(self, m, proc, info_r, out_r, block_w):
        info = b""
        while True:
            b = os.read(info_r, 4096)
            if not b:
                break
            info += b
        os.close(info_r)
        try:
            pid = json.loads(info.decode())["child-pid"]
        except (ValueError, KeyError):
            pid = None
        # the command runs once bwrap reads block_fd: after its network is up
        self.net_up(m, pid)
        try:
            os.write(block_w, b"x")
        except OSError:
            pass
        os.close(block_w)
        with self.cv:
            if m.proc is proc:
                m.init_pid = pid
                if m.pending_signal is not None:
                    self.signal(m, m.pending_signal)
            elif pid and getattr(proc, "kill_on_info", False):
                try:
                    os.kill(pid, signal.SIGKILL)      # killed before its pid was known
                except ProcessLookupError:
                    pass
        cap = self.args.max_log_bytes
        while True:
            b = os.read(out_r, 65536)
            if not b:
                break
            with self.cv:
                m.log += b
                m.log_total += len(b)
                self.log_lines(m, b, final=False)
                if len(m.log) > 2 * cap:
                    del m.log[:len(m.log) - cap]
        os.close(out_r)
        with self.cv:
            self.log_lines(m, b"", final=True)
        rc = proc.wait()
        with self.cv:
            self.on_exit(m, proc, rc)

    def log_lines(self, m, data, final):
        """Output as Fly's log pipeline ships it: one entry per line, without
        its newline; a last line with no newline is shipped when the process
        ends. Called with self.cv held."""
        buf = m.partial + data
        lines = buf.split(b"\n")
        m.partial = b"" if final else lines.pop()
        if final and lines and lines[-1] == b"":
            lines.pop()
        q = self.applogs.get(m.app)
        if q is None:
            q = self.applogs[m.app] = AppLog()
        now = time.monotonic()
        for ln in lines:
            q.entries.append((now, m.id, m.region, ln.decode("utf-8", errors="replace")))
        if len(q.entries) > LOG_ENTRIES_MAX * 5 // 4:
            drop = len(q.entries) - LOG_ENTRIES_MAX
            del q.entries[:drop]
            q.base += drop

    def app_logs(self, app, query):
        """GET /api/v1/apps/{app}/logs: flyctl's api/resource_logs.go reads
        {"data": [{"id", "attributes": LogEntry}], "meta": {"next_token"}}
        and keeps its old token when the reply has none (logs/polling.go)."""
        inst = query.get("instance", [""])[0]
        region = query.get("region", [""])[0]
        tok = query.get("next_token", [""])[0]
        try:
            after = int(tok) if tok else 0
        except ValueError:
            raise ApiError(400, "invalid next_token")
        visible_before = time.monotonic() - self.faults["log_delay_ms"] / 1000.0
        data = []
        q = self.applogs.get(app) or AppLog()
        page = self.faults["log_page"]
        for i in range(max(after + 1 - q.base, 0), len(q.entries)):
            t, mid, reg, msg = q.entries[i]
            seq = q.base + i
            if t > visible_before:
                break                   # later lines are not shipped yet either
            if (inst and mid != inst) or (region and reg != region):
                continue
            w = self.wall(t)
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(w)) + ".%06dZ" % (w % 1 * 1e6)
            data.append({"id": "%d" % seq, "type": "logs", "attributes": {
                "timestamp": ts, "message": msg, "level": "info",
                "instance": mid, "region": reg,
                "meta": {"instance": mid, "region": reg, "event": {"provider": "app"}}}})
            if len(data) >= page:
                break
        return 200, {"data": data, "meta": {"next_token": data[-1]["id"] if data else ""}}

    def wall(self, mono):
        return time.time() - (time.monotonic() - mono)

    def signal(self, m, sig):
        """Signals the machine's processes the way Fly's init forwards a stop
        signal: to the command's session, never to the sandbox monitor."""
        if m.proc is None or m.proc.returncode is not None:
            return
        if m.init_pid is None:
            # Not bwrap itself, even for SIGKILL: killed between its clone and
            # the child's PR_SET_PDEATHSIG, the command would outlive it and
            # hold the log pipe open. The reader delivers it once bwrap tells
            # the pid (--info-fd), which it does right after the clone.
            m.pending_signal = sig
            return
        try:
            if sig == signal.SIGKILL:
                os.kill(m.init_pid, signal.SIGKILL)   # pid 1 of the namespace: takes all with it
            else:
                os.killpg(m.init_pid, sig)
        except ProcessLookupError:
            pass

    def kill_after(self, m, seconds):
        if m.kill_timer:
            m.kill_timer.cancel()
        proc = m.proc

        def fire():
            with self.cv:
                if m.proc is proc:
                    self.signal(m, signal.SIGKILL)
        m.kill_timer = self.sched.call_later(seconds, fire)

    def on_exit(self, m, proc, rc):
        if m.proc is not proc:
            return
        m.proc = None
        m.init_pid = None
        if m.kill_timer:
            m.kill_timer.cancel()
            m.kill_timer = None
        sig = 0
        if rc < 0:
            sig, rc = -rc, 128 - rc
        elif rc > 128:
            sig = rc - 128
        policy = (m.config.get("restart") or {}).get("policy") or "on-failure"
        max_retries = (m.config.get("restart") or {}).get("max_retries") or DEFAULT_MAX_RETRIES
        restarting = (not m.stop_requested and not m.destroy_after_exit and not m.replace_after_exit
                      and m.state in ("started", "starting")
                      and (policy == "always" or (policy == "on-failure" and rc != 0
                                                  and m.restart_count < max_retries)))
        ee = {"exited_at": iso()}
        if rc:
            ee["exit_code"] = rc
            ee["guest_exit_code"] = rc
        if sig:
            ee["signal"] = sig
            ee["guest_signal"] = sig
        if m.stop_requested:
            ee["requested_stop"] = True
        if restarting:
            ee["restarting"] = True
        # fly-go machine_types.go: the exit is under request.exit_event or
        # request.MonitorEvent.exit_event (GetExitCode checks the latter first)
        req = {"MonitorEvent": {"exit_event": ee}} if self.faults["monitor_exit"] else {"exit_event": ee}
        if restarting:
            m.restart_count += 1
            req["restart_count"] = m.restart_count
        self.event(m, "exit", "stopped", "flyd", req)
        self.vlog("machine %s exit rc=%d sig=%d" % (m.id, rc, sig))
        if m.destroy_after_exit:
            self.set_state(m, "stopped")
            self.finish_destroy(m)
            return
        if m.replace_after_exit:
            m.replace_after_exit = False
            self.set_state(m, "stopped")
            if not m.skip_after_replace:
                self.launch(m, "user")
            return
        if restarting:
            self.set_state(m, "stopping")
            self.launch(m, "flyd")
            return
        if m.state != "stopping":
            self.set_state(m, "stopping")
        self.set_state(m, "stopped")
        if m.config.get("auto_destroy"):
            self.set_state(m, "destroying")
            self.event(m, "destroy", "requested", "flyd")
            self.sched.call_later(self.args.destroy_ms / 1000.0, self.delayed_destroyed, m)

    def gone_after_launch(self, m):
        with self.cv:
            if m.state == "launch_failed":
                self.set_state(m, "destroyed")

    def move_version(self, m, how):
        """Fault injection: Fly replaces (an update by someone else) or migrates
        (host maintenance: stop, then start on another host) the machine. The
        version being watched ends in the terminal state `how`; a new version
        with a new instance_id starts and runs the same config again."""
        self.event(m, "update" if how == "replaced" else "migrate", how, "flyd")
        m.dead_versions[m.instance_id] = how
        m.gen += 1
        self.kill_build(m)
        m.instance_id = ulid()
        m.restart_count = 0
        self.set_state(m, "replacing" if how == "replaced" else "stopped")
        self.launch(m, "flyd")

    def kill_build(self, m):
        """The machine's build and its init die at once (SIGKILL)."""
        if m.proc is None:
            return
        proc = m.proc
        m.proc = None
        if m.init_pid is None:
            proc.kill_on_info = True            # the reader kills it (see signal())
        else:
            try:
                os.kill(m.init_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        m.init_pid = None

    def delayed_destroyed(self, m):
        with self.cv:
            if m.state == "destroying":
                self.set_state(m, "destroyed")

    def finish_destroy(self, m):
        m.destroy_after_exit = False
        self.set_state(m, "destroying")
        self.sched.call_later(self.args.destroy_ms / 1000.0, self.delayed_destroyed, m)

    def fail(self, m):
        """Fault injection: the machine crashes into `failed`."""
        m.gen += 1
        self.kill_build(m)
        self.event(m, "exit", "failed", "flyd", {"exit_event": {"exited_at": iso(), "exit_code": 1}})
        self.set_state(m, "failed")

    # ---- validation ----

    def check_config(self, config):
        if not isinstance(config, dict):
            raise ApiError(400, "config is required")
        if not isinstance(config.get("image"), str) or not config["image"]:
            raise ApiError(400, "invalid config.image: image is required")
        guest = config.get("guest")
        if guest is not None:
            if not isinstance(guest, dict):
                raise ApiError(400, "invalid config.guest")
            kind = guest.get("cpu_kind", "shared")
            cpus = guest.get("cpus", 1)
            mem = guest.get("memory_mb", 256)
            if kind not in ("shared", "performance"):
                raise ApiError(400, "invalid config.guest.cpu_kind %r" % (kind,))
            # Fly's presets: shared-cpu-1x..8x, performance-1x..16x
            if cpus not in ((1, 2, 4, 8) if kind == "shared" else (1, 2, 4, 8, 16)):
                raise ApiError(400, "invalid config.guest.cpus %r for cpu_kind %s" % (cpus, kind))
            lo, hi = (256, 2048) if kind == "shared" else (2048, 8192)
            if not isinstance(mem, int) or mem % 256 or not lo * cpus <= mem <= hi * cpus:
                raise ApiError(400, "invalid config.guest.memory_mb %r for %d %s cpu(s): "
                               "must be a multiple of 256 between %d and %d"
                               % (mem, cpus, kind, lo * cpus, hi * cpus))
        init = config.get("init")
        if init is not None:
            if not isinstance(init, dict):
                raise ApiError(400, "invalid config.init")
            for k in ("cmd", "entrypoint", "exec"):
                v = init.get(k)
                if v is not None and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
                    raise ApiError(400, "invalid config.init.%s: must be a list of strings" % k)
        for k in ("env", "metadata"):
            v = config.get(k)
            if v is not None and not (isinstance(v, dict)
                                      and all(isinstance(x, str) for x in v.values())):
                raise ApiError(400, "invalid config.%s: must map strings to strings" % k)
        files = config.get("files")
        if files is not None:
            if not isinstance(files, list):
                raise ApiError(400, "invalid config.files")
            for f in files:
                gp = f.get("guest_path") if isinstance(f, dict) else None
                if not isinstance(gp, str) or not gp.startswith("/") or ".." in gp.split("/"):
                    raise ApiError(400, "invalid config.files guest_path %r: must be absolute" % (gp,))
                if f.get("secret_name"):
                    raise ApiError(400, "files from secrets are not supported by this emulator")
                try:
                    base64.b64decode(f.get("raw_value", ""), validate=True)
                except (binascii.Error, TypeError):
                    raise ApiError(400, "invalid config.files raw_value for %s: not base64" % gp)
        restart = config.get("restart")
        if restart is not None:
            if not isinstance(restart, dict) or restart.get("policy", "") not in RESTART_POLICIES + ("",):
                raise ApiError(400, "invalid config.restart.policy")

    # ---- API actions (called with self.cv held) ----

    def machine_json(self, m, nonce=None):
        out = {"id": m.id, "name": m.name, "state": m.state, "region": m.region,
               "image_ref": image_ref(m.config.get("image", "")),
               "instance_id": m.instance_id, "private_ip": m.private_ip,
               "created_at": m.created_at, "updated_at": m.updated_at,
               "config": m.config, "events": m.events, "host_status": "ok"}
        if nonce:
            out["nonce"] = nonce
        return out

    def create(self, app, body):
        if not isinstance(body, dict):
            raise ApiError(400, "invalid request body")
        if self.faults["fail_creates"] > 0:
            self.faults["fail_creates"] -= 1
            st = self.faults["fail_status"]
            raise ApiError(st, "internal error" if st == 500 else "service unavailable, try again")
        config = body.get("config")
        self.check_config(config)
        region = body.get("region") or next(iter(self.regions))
        if region not in self.regions:
            raise ApiError(400, "invalid region %r" % region)
        used = sum(1 for x in self.machines.values() if x.region == region and x.state != "destroyed")
        if used >= self.regions[region]:
            raise ApiError(self.faults["capacity_status"],
                           "could not reserve resource for machine: insufficient CPUs "
                           "available to fulfill request", {"status": "insufficient_capacity"})
        name = body.get("name") or "%s-%s-%04d" % (random.choice(ADJ), random.choice(NOUN),
                                                     random.randrange(10000))
        for x in self.machines.values():
            if x.app == app and x.name == name and x.state != "destroyed":
                raise ApiError(409, "a machine named %r already exists in this app" % name)
        self.gc()
        mid = secrets.token_hex(7)
        config = dict(config)
        config.setdefault("guest", {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
        m = Machine(app, mid, name, region, config)
        self.machines[mid] = m
        m.history.append(("created", m.instance_id))
        self.event(m, "launch", "created", "user")
        nonce = None
        if body.get("lease_ttl"):
            nonce = self.take_lease(m, {"ttl": body["lease_ttl"]})["nonce"]
        out = self.machine_json(m, nonce)
        out = json.loads(json.dumps(out))   # snapshot: the state in the reply is "created"
        if not body.get("skip_launch"):
            self.launch(m, "user")
        if self.faults["lose_creates"] > 0:
            # the machine exists, but the caller never hears about it
            self.faults["lose_creates"] -= 1
            raise ApiError(500, "internal error: deadline exceeded")
        if self.faults["timeout_creates"] > 0:
            # made and launched, yet answered 408: the reply is no proof either way
            self.faults["timeout_creates"] -= 1
            raise ApiError(408, "deadline_exceeded: context deadline exceeded")
        if self.faults["drop_creates"] > 0:
            self.faults["drop_creates"] -= 1
            raise DropReply()
        return 200, out

    def update(self, m, body, headers):
        if not isinstance(body, dict):
            raise ApiError(400, "invalid request body")
        if m.state in ("destroying", "destroyed"):
            raise ApiError(404, "machine not found")
        if m.state == "replacing":
            raise ApiError(412, "failed_precondition: machine is currently being replaced")
        self.check_lease(m, headers)
        cv = body.get("current_version")
        if cv and cv != m.instance_id:
            raise ApiError(412, "failed_precondition: current_version %s is not the latest "
                           "version %s" % (cv, m.instance_id))
        if body.get("region") and body["region"] != m.region:
            raise ApiError(400, "region is immutable")
        self.check_config(body.get("config"))
        m.config = body["config"]
        m.instance_id = ulid()
        m.restart_count = 0
        m.updated_at = iso()
        self.event(m, "update", "replacing", "user")
        skip = bool(body.get("skip_launch"))
        if m.proc is not None:
            m.replace_after_exit = True
            m.skip_after_replace = skip
            m.gen += 1
            self.set_state(m, "replacing")
            self.signal(m, signal.SIGINT)
            self.kill_after(m, 5)
        elif m.state == "starting":
            m.gen += 1
            self.launch(m, "user")
        elif not skip:
            self.launch(m, "user")
        return 200, self.machine_json(m)

    def start(self, m, headers):
        if m.state in ("destroying", "destroyed"):
            raise ApiError(404, "machine not found")
        self.check_lease(m, headers)
        if m.state == "suspended":
            # suspend-resume: "the next start will resume the Machine from the
            # snapshot taken"
            self.event(m, "start", "requested", "user")
            m.gen += 1
            self.set_state(m, "starting")
            lo, hi = self.faults["resume_ms"]
            self.sched.call_later(random.uniform(lo, hi) / 1000.0, self.resumed, m, m.gen)
            return 200, {"previous_state": "suspended", "migrated": False, "new_host": ""}
        if m.state in ("created", "stopped", "failed"):
            prev = m.state
            self.event(m, "start", "requested", "user")
            m.restart_count = 0
            self.launch(m, "user")
            return 200, {"previous_state": prev, "migrated": False, "new_host": ""}
        raise ApiError(412, "failed_precondition: unable to start machine from current state: %r"
                       % m.state)

    def machine_pids(self, m):
        """Every process of the machine: those in its pid namespace (its init,
        the build, whatever exec started)."""
        if m.init_pid is None:
            return []
        try:
            ns = os.readlink("/proc/%d/ns/pid" % m.init_pid)
        except OSError:
            return []
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if os.readlink("/proc/%s/ns/pid" % d) == ns:
                        out.append(int(d))
                except OSError:
                    pass
        return out

    def freeze(self, m, sig):
        # twice: a process may fork while the first pass runs
        for _ in range(2):
            for pid in self.machine_pids(m):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def suspend(self, m, headers):
        """POST .../suspend (suspend-resume, "Machines API"): started ->
        suspending -> suspended, the whole VM state kept."""
        if m.state in ("destroying", "destroyed"):
            raise ApiError(404, "machine not found")
        self.check_lease(m, headers)
        if m.state != "started" or m.proc is None:
            # the status and text are a choice: not documented
            raise ApiError(412, "failed_precondition: unable to suspend machine from current "
                           "state: %r" % m.state)
        guest = m.config.get("guest") or {}
        why = None
        if int(guest.get("memory_mb", 256)) > SUSPEND_MAX_MEMORY_MB:
            why = "memory_mb %s is more than %d" % (guest.get("memory_mb"), SUSPEND_MAX_MEMORY_MB)
        elif (m.config.get("init") or {}).get("swap_size_mb"):
            why = "swap is configured"
        elif m.config.get("schedule"):
            why = "the machine has a schedule"
        if why:
            raise ApiError(412, "failed_precondition: machine cannot be suspended: %s" % why)
        self.event(m, "suspend", "requested", "user")
        m.gen += 1
        self.set_state(m, "suspending")
        self.freeze(m, signal.SIGSTOP)
        lo, hi = self.faults["suspend_ms"]
        self.sched.call_later(random.uniform(lo, hi) / 1000.0, self.suspended, m, m.gen)
        return 200, {"ok": True}

    def suspended(self, m, gen):
        with self.cv:
            if m.gen == gen and m.state == "suspending":
                self.event(m, "suspend", "suspended", "flyd")
                self.set_state(m, "suspended")

    def resumed(self, m, gen):
        with self.cv:
            if m.gen != gen or m.state != "starting":
                return
            self.freeze(m, signal.SIGCONT)
            self.event(m, "start", "started", "flyd")
            self.set_state(m, "started")

    def stop(self, m, body, headers):
        if m.state in ("destroying", "destroyed"):
            raise ApiError(404, "machine not found")
        self.check_lease(m, headers)
        body = body if isinstance(body, dict) else {}
        stop_cfg = m.config.get("stop_config") or {}
        signame = body.get("signal") or stop_cfg.get("signal") or "SIGINT"
        if signame not in SIGNALS:
            raise ApiError(400, "invalid signal %r" % signame)
        timeout = parse_duration(body.get("timeout"), "timeout")
        if timeout is None:
            timeout = parse_duration(stop_cfg.get("timeout"), "stop_config.timeout")
        if timeout is None:
            timeout = 5.0
        if m.state == "replacing":
            raise ApiError(412, "failed_precondition: machine is currently being replaced")
        self.event(m, "stop", "requested", "user")
        if m.state in ("suspending", "suspended") or (m.state == "starting" and m.proc is not None):
            # suspend-resume: stop then start is a cold start, the snapshot
            # is discarded; the frozen processes die
            m.gen += 1
            m.stop_requested = True
            self.set_state(m, "stopping")
            self.signal(m, signal.SIGKILL)
        elif m.state == "starting":
            m.gen += 1                      # the pending boot never happens
            self.set_state(m, "stopping")
            self.set_state(m, "stopped")
        elif m.state == "started":
            m.stop_requested = True
            self.set_state(m, "stopping")
            self.signal(m, SIGNALS[signame])
            self.kill_after(m, timeout)
        return 200, {"ok": True}

    def delete(self, m, query, headers):
        if m.state == "destroyed":
            raise ApiError(404, "machine not found")
        self.check_lease(m, headers)
        force = query.get("force", ["false"])[0].lower() in ("true", "1")
        if m.state in LIVE_STATES and not force:
            raise ApiError(409, "unable to destroy machine, not currently stopped")
        if m.state == "destroying":
            return 200, {"ok": True}
        self.event(m, "destroy", "requested", "user")
        m.gen += 1
        if m.proc is not None:
            # Answer once the VM is really gone, as a forced destroy does.
            m.destroy_after_exit = True
            m.stop_requested = True
            self.set_state(m, "destroying")
            self.signal(m, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while m.proc is not None and time.monotonic() < deadline:
                self.cv.wait(0.1)
        else:
            self.finish_destroy(m)
        return 200, {"ok": True}

    def reached(self, m, state, iid, since):
        """True when the machine is in `state` now, or entered it after the wait
        began (index `since` of its history): a wait is for reaching a state,
        so a machine that starts and exits between two looks still counts as
        started. A stopped version that was then destroyed counts as stopped."""
        for st, v in m.history[since:]:
            if st == state and (not iid or v == iid):
                return True
        if state == "stopped":
            if m.state == "stopped" and (not iid or iid == m.instance_id):
                return True
            return (m.state in ("destroying", "destroyed")
                    and ("stopped", iid or m.instance_id) in m.history)
        return m.state == state

    def wait(self, app, m, query):
        state = query.get("state", ["started"])[0]
        if state not in WAIT_STATES:
            raise ApiError(400, "invalid state %r: must be one of %s" % (state, ", ".join(WAIT_STATES)))
        raw = query.get("timeout", ["60"])[0]
        try:
            timeout = int(raw)
        except ValueError:
            raise ApiError(400, "invalid timeout %r" % raw)
        if not 1 <= timeout <= 60:
            raise ApiError(400, "invalid timeout %d: must be between 1 and 60 seconds" % timeout)
        iid = query.get("instance_id", query.get("version", [""]))[0]
        if state == "stopped" and not iid:
            raise ApiError(400, "instance_id is required when waiting for the stopped state")
        deadline = time.monotonic() + timeout
        since = len(m.history)
        if self.faults["wait_errors"] > 0:
            self.faults["wait_errors"] -= 1
            raise ApiError(self.faults["wait_error_status"],
                           "machine failed to reach desired state, %s, currently %s"
                           % (state, m.state))
        while True:
            if self.reached(m, state, iid, since):
                return 200, {"ok": True}
            dead = m.dead_versions.get(iid) if iid else None
            if dead or m.state in ("launch_failed",) or (
                    m.state == "destroyed" and state != "destroyed"):
                # it can no longer get there: say so rather than sit out the timeout
                raise ApiError(400, "machine failed to reach desired state, %s, currently %s"
                               % (state, dead or m.state))
            if not self.visible(m):
                raise ApiError(404, "machine not found")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApiError(408, "deadline_exceeded: machine failed to reach desired state, "
                               "%s, currently %s" % (state, m.state))
            self.cv.wait(min(left, 0.5))

    def take_lease(self, m, body):
        ttl = int(body.get("ttl") or 30)
        lease = {"nonce": secrets.token_hex(6), "expires_at": int(time.time()) + ttl,
                 "owner": "emulator@flyemu.local", "description": body.get("description", ""),
                 "version": ulid()}
        m.lease = lease
        return lease

    def lease(self, method, m, body, headers):
        live = m.lease if m.lease and m.lease["expires_at"] > time.time() else None
        if method == "POST":
            if live and headers.get("fly-machine-lease-nonce") != live["nonce"]:
                raise ApiError(409, "lease currently held by %s, expires at %s"
                               % (live["owner"], iso(live["expires_at"])))
            return 201, {"status": "success", "data": self.take_lease(m, body or {})}
        if method == "GET":
            if not live:
                raise ApiError(404, "lease not found")
            return 200, {"status": "success", "data": live}
        if not live:
            raise ApiError(404, "lease not found")
        if headers.get("fly-machine-lease-nonce") != live["nonce"]:
            raise ApiError(400, "invalid lease nonce")
        m.lease = None
        return 200, {"ok": True}

    def list(self, app, query):
        deleted = query.get("include_deleted", ["false"])[0].lower() in ("true", "1")
        region = query.get("region", [None])[0]
        meta = {k[len("metadata."):]: v[0] for k, v in query.items() if k.startswith("metadata.")}
        out = []
        for m in self.machines.values():
            if m.app != app or (m.state == "destroyed" and not deleted):
                continue
            if (time.monotonic() - m.created_mono) * 1000 < self.faults["list_delay_ms"]:
                continue                # not replicated to the list yet
            if region and m.region != region:
                continue
            md = m.config.get("metadata") or {}
            if any(md.get(k) != v for k, v in meta.items()):
                continue
            out.append(self.machine_json(m))
        return 200, out


def run_exec(emu, m, body):
    """POST .../exec: runs a command inside the running machine (nsenter into
    its namespaces). Called without the lock held."""
    cmd = body.get("command") or ([] if not body.get("cmd") else ["/bin/sh", "-c", body["cmd"]])
    if not cmd or not all(isinstance(x, str) for x in cmd):
        raise ApiError(400, "command is required")
    # OpenAPI MachineExecRequest (docs.machines.dev): stdin is one string, not
    # a stream; no env and no working directory. The timeout's range is not
    # documented: the emulator takes 1..60 s, the cap every other long request
    # has behind Fly's proxy (a choice).
    stdin = body.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise ApiError(400, "invalid stdin: must be a string")
    timeout = int(body.get("timeout") or 30)
    if not 1 <= timeout <= 60:
        raise ApiError(400, "invalid timeout %d: must be between 1 and 60 seconds" % timeout)
    # Emulator detail, not Fly's: `started` is set when the sandbox is spawned,
    # a moment before its pid is known and its root is mounted; an exec in that
    # moment waits for it (at most READY_S) rather than failing.
    ready_by = time.monotonic() + EXEC_READY_S
    with emu.cv:
        while m.state == "started" and m.init_pid is None and time.monotonic() < ready_by:
            emu.cv.wait(0.05)
        if m.state != "started" or m.init_pid is None:
            raise ApiError(412, "failed_precondition: machine is not started")
        pid = m.init_pid
    while True:
        try:
            p = subprocess.run(["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "--"]
                               + cmd, capture_output=True, timeout=timeout,
                               input=stdin.encode() if stdin is not None else b"")
        except subprocess.TimeoutExpired:
            raise ApiError(408, "deadline_exceeded: exec timed out")
        if not (p.returncode in (126, 127) and p.stderr.startswith(b"nsenter:")
                and time.monotonic() < ready_by):
            break
        time.sleep(0.05)
    out = {"exit_code": p.returncode if p.returncode >= 0 else 128 - p.returncode,
           "stdout": p.stdout.decode(errors="replace"), "stderr": p.stderr.decode(errors="replace")}
    if p.returncode < 0:
        out["exit_signal"] = -p.returncode
    return 200, out


MACHINES_RE = re.compile(r"^/v1/apps/([^/]+)/machines$")
MACHINE_RE = re.compile(r"^/v1/apps/([^/]+)/machines/([^/]+)$")
ACTION_RE = re.compile(r"^/v1/apps/([^/]+)/machines/([^/]+)/"
                       r"(wait|start|stop|suspend|lease|events|exec)$")
METADATA_RE = re.compile(r"^/v1/apps/([^/]+)/machines/([^/]+)/metadata(?:/([^/]+))?$")
LOGS_RE = re.compile(r"^/_emu/machines/([^/]+)/logs$")
FAIL_RE = re.compile(r"^/_emu/fail/([^/]+)$")
MOVE_RE = re.compile(r"^/_emu/(replace|migrate)/([^/]+)$")
APP_LOGS_RE = re.compile(r"^/api/v1/apps/([^/]+)/logs$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "flyemu/1"
    # Headers and body go out in two writes; with Nagle on, keep-alive
    # clients would see a delayed-ACK stall (~40 ms) on every reply.
    disable_nagle_algorithm = True
    emu = None

    def handle(self):
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):
            pass                  # the client went away (a worker that exited)

    def log_message(self, fmt, *args):
        if self.emu.args.verbose:
            sys.stderr.write("flyemu: %s\n" % (fmt % args))

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def reply(self, status, body, headers=None, ctype="application/json"):
        data = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
        if status == 204:
            data = b""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Fly-Request-Id", secrets.token_hex(10))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True    # the client gave up (a canceled wait)

    def dispatch(self, method):
        emu = self.emu
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.ctx = {"action": "", "app": "", "machine": ""}   # filled by api() as it learns
        try:
            try:
                body = json.loads(raw) if raw.strip() else None
            except ValueError:
                raise ApiError(400, "invalid JSON body")
            if path.startswith("/_emu/"):
                status, out, extra, ctype = self.control(method, path, query, body, headers)
            else:
                if emu.faults["delay_ms"] > 0:
                    time.sleep(emu.faults["delay_ms"] / 1000.0)
                status, out = self.api(method, path, query, body, headers)
                extra, ctype = None, "application/json"
        except ApiError as e:
            status, out, extra, ctype = e.status, e.body, e.headers, "application/json"
        except DropReply:
            status, out, extra, ctype = 0, None, None, None
        with emu.cv:
            emu.reqseq += 1
            entry = {"seq": emu.reqseq, "t": round(time.monotonic() - emu.t0, 4),
                     "method": method, "path": path, "status": status}
            entry.update(self.ctx)
            emu.reqlog.append(entry)
        if status == 0:
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            return
        self.reply(status, out, extra, ctype)

    def authorize(self, headers):
        auth = headers.get("authorization", "")
        scheme, _, tok = auth.partition(" ")
        if scheme not in ("Bearer", "FlyV1") or tok.strip() not in self.emu.tokens:
            raise ApiError(401, "unauthorized")

    def api(self, method, path, query, body, headers):
        emu = self.emu
        m = APP_LOGS_RE.match(path)
        if m:
            self.ctx.update(action="logs", app=m.group(1))
            if method != "GET":
                raise ApiError(405, "method not allowed")
            self.authorize(headers)
            with emu.cv:
                return emu.app_logs(m.group(1), query)
        m = MACHINES_RE.match(path)
        if m:
            app = m.group(1)
            action = {"GET": "list", "POST": "create"}.get(method)
            self.ctx.update(action=action or "", app=app)
            if not action:
                raise ApiError(405, "method not allowed")
            self.authorize(headers)
            with emu.cv:
                emu.rate_check(app, action, "")
                if action == "list":
                    return emu.list(app, query)
                return emu.create(app, body)
        m = METADATA_RE.match(path)
        if m:
            return self.metadata(method, m.group(1), m.group(2), m.group(3), body, headers)
        m = MACHINE_RE.match(path) or ACTION_RE.match(path)
        if not m:
            raise ApiError(404, "404 page not found")
        app, mid = m.group(1), m.group(2)
        sub = m.group(3) if m.re is ACTION_RE else ""
        if sub:
            action = sub
            allowed = {"wait": "GET", "events": "GET", "start": "POST", "stop": "POST",
                       "suspend": "POST", "exec": "POST"}.get(sub)
            if allowed and method != allowed:
                raise ApiError(405, "method not allowed")
        else:
            action = {"GET": "get", "POST": "update", "DELETE": "delete"}[method]
        self.ctx.update(action=action, app=app, machine=mid)
        self.authorize(headers)
        if action == "exec":
            with emu.cv:
                emu.rate_check(app, action, mid)
                mach = emu.find(app, mid, allow_destroyed=False)
            return run_exec(emu, mach, body or {})
        with emu.cv:
            emu.rate_check(app, action, mid)
            mach = emu.find(app, mid)
            if action == "get":
                res = 200, emu.machine_json(mach)
            elif action == "events":
                res = 200, mach.events
            elif action == "wait":
                res = emu.wait(app, mach, query)
            elif action == "start":
                res = emu.start(mach, headers)
            elif action == "stop":
                res = emu.stop(mach, body, headers)
            elif action == "suspend":
                res = emu.suspend(mach, headers)
            elif action == "delete":
                res = emu.delete(mach, query, headers)
            elif action == "update":
                res = emu.update(mach, body, headers)
            else:
                res = emu.lease(method, mach, body, headers)
            # serialize under the lock: the machine keeps changing afterwards
            return res[0], json.loads(json.dumps(res[1]))

    def metadata(self, method, app, mid, key, body, headers):
        """GET .../metadata, POST .../metadata/{key} {"value": ...}, DELETE
        .../metadata/{key} (fly-go flaps_machines.go: GetMetadata, SetMetadata,
        DeleteMetadata; Fly's OpenAPI spec, "Update Metadata"/"Delete Metadata",
        answers 204). The keys live in config.metadata, where list's
        metadata.k=v filter and GET read them; no new version, no restart."""
        emu = self.emu
        action = {("GET", False): "metadata_get", ("POST", True): "metadata_set",
                  ("DELETE", True): "metadata_del"}.get((method, key is not None))
        self.ctx.update(action=action or "", app=app, machine=mid)
        if not action:
            raise ApiError(405, "method not allowed")
        self.authorize(headers)
        with emu.cv:
            emu.rate_check(app, action, mid)
            mach = emu.find(app, mid, allow_destroyed=False)
            md = mach.config.setdefault("metadata", {})
            if action == "metadata_get":
                return 200, dict(md)
            if action == "metadata_set":
                value = (body or {}).get("value") if isinstance(body, dict) else None
                if not isinstance(value, str):
                    raise ApiError(400, "value is required and must be a string")
                md[key] = value
            else:
                md.pop(key, None)
            mach.updated_at = iso()
            return 204, None

    def control(self, method, path, query, body, headers):
        emu = self.emu
        js = "application/json"
        m = LOGS_RE.match(path)
        if m and method == "GET":
            self.authorize(headers)
            with emu.cv:
                mach = emu.machines.get(m.group(1))
                if mach is None:
                    raise ApiError(404, "machine not found")
                data = bytes(mach.log[-emu.args.max_log_bytes:])
            tail = query.get("tail", [None])[0]
            if tail:
                data = data[-int(tail):]
            return 200, data, {"X-Log-Total-Bytes": str(mach.log_total)}, "text/plain"
        mv = MOVE_RE.match(path)
        if mv and method == "POST":
            with emu.cv:
                mach = emu.machines.get(mv.group(2))
                if mach is None:
                    raise ApiError(404, "machine not found")
                emu.move_version(mach, "replaced" if mv.group(1) == "replace" else "migrated")
                return 200, {"ok": True}, None, js
        m = FAIL_RE.match(path)
        with emu.cv:
            if m and method == "POST":
                mach = emu.machines.get(m.group(1))
                if mach is None:
                    raise ApiError(404, "machine not found")
                emu.fail(mach)
                return 200, {"ok": True}, None, js
            if path == "/_emu/faults":
                if method == "POST":
                    return 200, emu.apply_faults(body or {}), None, js
                return 200, emu.public_faults(), None, js
            if path == "/_emu/reset" and method == "POST":
                emu.reset_faults()
                emu.buckets.clear()
                emu.reqlog.clear()
                if (body or {}).get("machines"):
                    for mach in list(emu.machines.values()):
                        if mach.proc is not None:
                            emu.fail(mach)
                    emu.machines.clear()
                return 200, {"ok": True}, None, js
            if path == "/_emu/requests" and method == "GET":
                since = int(query.get("since", ["0"])[0])
                return 200, [r for r in emu.reqlog if r["seq"] > since], None, js
            if path == "/_emu/machines" and method == "GET":
                out = []
                for mach in emu.machines.values():
                    j = emu.machine_json(mach)
                    j["app"] = mach.app
                    j["pid"] = mach.proc.pid if mach.proc else None
                    j["log_bytes"] = mach.log_total
                    out.append(j)
                return 200, json.loads(json.dumps(out)), None, js
        raise ApiError(404, "404 page not found")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Local emulator of the Fly.io Machines API")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=4280)
    ap.add_argument("--print-port", action="store_true", help="print the bound port on stdout")
    ap.add_argument("--token", action="append", default=None,
                    help="accepted bearer token (repeatable; default: test-token)")
    ap.add_argument("--regions", default="iad=8,ord=8,ams=8",
                    help="region=capacity,... in the order used when create names none")
    ap.add_argument("--boot-min-ms", type=int, default=100)
    ap.add_argument("--boot-max-ms", type=int, default=300)
    ap.add_argument("--destroy-ms", type=int, default=100, help="destroying -> destroyed")
    ap.add_argument("--suspend-min-ms", type=int, default=100)
    ap.add_argument("--suspend-max-ms", type=int, default=300)
    ap.add_argument("--resume-min-ms", type=int, default=200,
                    help="suspended -> started (Fly: 'a few hundred ms')")
    ap.add_argument("--resume-max-ms", type=int, default=400)
    ap.add_argument("--destroyed-grace-ms", type=int, default=2000,
                    help="how long a destroyed machine is still returned by GET")
    ap.add_argument("--retain-s", type=int, default=600, help="forget destroyed machines after")
    ap.add_argument("--rate", type=float, default=1.0, help="per action per machine, req/s")
    ap.add_argument("--burst", type=float, default=3.0)
    ap.add_argument("--get-rate", type=float, default=5.0)
    ap.add_argument("--get-burst", type=float, default=10.0)
    ap.add_argument("--create-rate", type=float, default=1.0, help="per app (create, list)")
    ap.add_argument("--create-burst", type=float, default=3.0)
    ap.add_argument("--list-delay-ms", type=int, default=300,
                    help="a new machine shows in list only after this (eventual consistency)")
    ap.add_argument("--log-delay-ms", type=int, default=100,
                    help="output reaches the logs API after this")
    ap.add_argument("--log-page", type=int, default=1000,
                    help="log entries per logs API reply (Fly's page size is not documented)")
    ap.add_argument("--no-rate-limit", action="store_true")
    ap.add_argument("--fail-creates", type=int, default=0)
    ap.add_argument("--fail-status", type=int, default=503)
    ap.add_argument("--fail-boots", type=int, default=0)
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--max-log-bytes", type=int, default=1 << 20)
    ap.add_argument("--default-cmd", default="sleep 3600",
                    help="what a machine runs without init.cmd (stands in for the image CMD)")
    ap.add_argument("--bwrap", default="bwrap")
    ap.add_argument("--no-network", action="store_true",
                    help="machines get only loopback (no 6PN address reachable from the host)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    args.token = args.token or ["test-token"]
    args.default_cmd_argv = args.default_cmd.split()

    emu = Emulator(args)
    Handler.emu = emu
    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    srv.daemon_threads = True

    def stop(signum, frame):
        threading.Thread(target=srv.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.print_port:
        sys.stdout.write("%d\n" % srv.server_address[1])
        sys.stdout.flush()
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        with emu.cv:
            for m in emu.machines.values():
                if m.proc is not None:
                    emu.signal(m, signal.SIGKILL)
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
