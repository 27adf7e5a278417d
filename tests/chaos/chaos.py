#!/usr/bin/env python3
"""chaos.py — sbx under faults: workers killed and paused, Redis, PostgreSQL
and Kafka crashed and restarted while jobs flow; then the invariants.

    chaos.py [--short] [--seed N] [--jobs N] [--duration S] [--provider local,vmpool] ...
    `make chaos`: the long run on its own services, local then vmpool
    (≲ 10 min); `make chaos-short` and tests/e2e/test_chaos_short.py (inside
    `make test`, on the e2e session's services): the short one, local.
    Exit status 1 when an invariant failed.

What it owns: one run of the experiment against real services (its own, or
the e2e session's through run_chaos()), and the judgement of that run.

 - Setup: a fresh topic and consumer group, three sbx-workers (local
   provider: distinct SBX_NODE and disjoint SBX_UID_BASE ranges, as on three
   hosts; vmpool: several sbx-agents shared by the workers), a small lease
   TTL and Kafka session timeout so that faults bite within seconds.
 - Load: N jobs across a few dozen projects, published in batches by a thread
   while faults happen (a batch whose publication failed is sent again:
   duplicates in Kafka are part of the test). Each build prints its own
   start and end clock and its job id, and carries a marker in its command
   line so that its processes can be found on the host.
 - Faults, one at a time with seeded random choices and gaps: kill -9 of a
   worker and a restart; SIGSTOP of a worker past its lease TTL, then
   SIGCONT; Redis crash (SIGKILL, data lost) and restart; PostgreSQL crash
   and restart (WAL recovery); Kafka broker restart (crash or controlled);
   vmpool: kill -9 of an agent and a restart; the long run only: SIGSTOP of
   a worker while it runs one of the builds that last three lease TTLs
   (Options.long_builds of the jobs), past its session and lease, so that
   another worker takes the job over while the frozen one's build would
   still run (the lease's supervisor must have killed it: the watcher sees
   any two builds of a project alive at once). The first faults go through
   every kind once, so even a short run injects each.
 - A watcher thread samples /proc (only processes of the sandbox uids) and
   records every moment at which two builds of one project were alive.
 - After the faults stop: every job must be terminal before a deadline; then
   the invariants are checked from PostgreSQL, Redis, the builds' own output,
   the watcher's samples and the workers' logs. The figures are printed.

Why it is shaped so: the assertions are about what users depend on — one
outcome per job, one build per project at a time, nothing left behind — and
each is checked from the place where it would show, not from the workers'
own account. A failed invariant is a finding: its evidence (worker logs,
the job's history, the faults that preceded it) is kept in the output
directory, whose path is printed. Everything is bounded: the fault window,
each restart, the settle deadline.

Python 3.11 standard library, plus psycopg 3 (installed by install-deps).
"""

import argparse
import datetime
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "services"))
import sbxsvc  # noqa: E402

TERMINAL = ("succeeded", "failed", "timed_out", "canceled", "dead_lettered")
ACTIVE = ("provisioning", "running")
# Every move the run functions of migrations/0001_runs.sql (and 0005's
# submitted -> queued, when `sbx enqueue` recorded the job first) can make. A claim
# (-> provisioning) may also take over a run whose owner's lease expired;
# active -> waiting_capacity is unclaim_run (the provider refused the slot:
# the claim is undone and not counted as an attempt).
ALLOWED = {
    None: {"submitted", "queued", "dead_lettered"},
    "submitted": {"queued", "canceled"},
    "queued": {"waiting_capacity", "provisioning", "canceled", "dead_lettered"},
    "waiting_capacity": {"provisioning", "canceled", "dead_lettered"},
    "provisioning": {"running", "queued", "provisioning", "waiting_capacity"} | set(TERMINAL),
    "running": {"queued", "provisioning", "waiting_capacity"} | set(TERMINAL),
}
SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Memory|Thread)Sanitizer|runtime error:")
STATS_RE = re.compile(r"\bstats\b.*?(periodic|exit): .*?duplicates=(\d+) lease_waits=(\d+) "
                      r"fenced_out=(\d+) retries=(\d+)")
MARK_RE = re.compile(r"sbxchaos\.([A-Za-z0-9_:-]+)\.([A-Za-z0-9_:-]+)")
FAULTS = ("worker_kill9", "worker_sigstop", "worker_sigstop_build", "redis_restart",
          "postgres_restart", "kafka_restart", "agent_kill9")
# Per kind of job finding, how many jobs' histories go into the evidence.
GROUP_EVIDENCE = 20
# Sandbox uids: far above the ranges the unit and e2e tests use, and per
# driver process, so that a concurrent test's worker never sweeps ours.
UID_SPAN = 16


def _now():
    return time.monotonic()


def _wall():
    return datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]


class Options:
    """The knobs of one run. short() fits `make test` (≲ 2 min with services
    up); long() is `make chaos` (≲ 10 min with the services' start)."""

    def __init__(self, **kw):
        self.seed = None
        self.jobs = 100
        self.projects = 24
        self.workers = 3
        self.slots = 2
        self.agents = 3
        self.agent_capacity = 2
        self.provider = "local"
        self.duration = 40.0        # fault window, s
        self.produce = 30.0         # jobs are published over this many s
        self.gap = (2.0, 4.5)       # between two faults, s
        self.build = (0.2, 2.0)     # build length, s
        self.long_builds = 0.0      # share of jobs whose build lasts 3 lease TTLs
        self.ttl_ms = 3000
        self.session_ms = 6000
        self.settle = 75.0          # all jobs terminal within, s after the faults
        self.weights = {"worker_kill9": 3, "worker_sigstop": 2, "worker_sigstop_build": 0,
                        "redis_restart": 2, "postgres_restart": 2, "kafka_restart": 1,
                        "agent_kill9": 2}
        self.keep = False
        self.out = None
        self.own_services = False   # every lease key in Redis is ours
        self.__dict__.update(kw)

    @classmethod
    def short(cls, **kw):
        return cls(**kw)

    @classmethod
    def long(cls, **kw):
        d = dict(jobs=800, projects=36, duration=360.0, produce=330.0, gap=(2.0, 6.0),
                 settle=150.0, long_builds=0.05)
        d["weights"] = dict(cls().weights, worker_sigstop_build=2)
        d.update(kw)
        return cls(**d)


class Finding(Exception):
    pass


# --- processes we start --------------------------------------------------------

class Proc:
    """A worker or agent: restartable, each incarnation logging to its own
    file, in its own session (our signals never hit the driver) and with
    PDEATHSIG so that it dies with the driver."""

    def __init__(self, name, argv, env, logdir):
        self.name, self.argv, self.env, self.logdir = name, argv, env, logdir
        self.incarnation = 0
        self.p = None
        self.logs = []
        self.stopped_until = None   # SIGSTOPped: when to SIGCONT
        self.restart_at = None      # killed: when to start again
        self.expected_exit = False

    def start(self):
        self.incarnation += 1
        log = os.path.join(self.logdir, "%s.%d.log" % (self.name, self.incarnation))
        self.logs.append(log)
        wrap = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
        with open(log, "ab") as out:
            self.p = subprocess.Popen(wrap + self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.expected_exit = False
        self.restart_at = None
        self.stopped_until = None

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def signal(self, sig):
        try:
            os.kill(self.p.pid, sig)
        except ProcessLookupError:
            pass

    def kill9(self):
        self.expected_exit = True
        self.signal(signal.SIGKILL)
        self.p.wait(10)
        self.stopped_until = None

    def stop(self, grace):
        """SIGTERM (after a SIGCONT), SIGKILL to the group after grace s;
        returns the exit status."""
        if self.p is None:
            return None
        self.expected_exit = True
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.p.wait(10)

    def text(self):
        out = []
        for log in self.logs:
            with open(log, "rb") as f:
                out.append(f.read().decode(errors="replace"))
        return "\n".join(out)


# --- the sandbox watcher -----------------------------------------------------------

class Watcher(threading.Thread):
    """Samples the processes of the sandbox uids about 20 times a second.
    A build is the outermost process whose command line carries the marker
    (a $(...) subshell is its child and carries it too). Two builds of one
    project alive in one sample is an overlap, whatever PostgreSQL says."""

    PERIOD = 0.05

    def __init__(self, uid_lo, uid_hi, projects):
        super().__init__(daemon=True)
        self.uid_lo, self.uid_hi = uid_lo, uid_hi
        self.projects = projects
        self.halt = threading.Event()
        self.samples = 0
        self.builds = {}            # pid -> (project, job, first seen, last seen)
        self.overlaps = {}          # (pid, pid) -> (project, jobs, first seen wall)
        self.max_alive = 0
        self.error = None

    def _scan(self):
        procs = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if not self.uid_lo <= os.stat("/proc/" + d).st_uid < self.uid_hi:
                    continue
                with open("/proc/%s/stat" % d, "rb") as f:
                    stat = f.read().decode(errors="replace")
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            # Fields after the parenthesised name: state, ppid, ...
            rest = stat[stat.rfind(")") + 2:].split()
            if rest[0] in ("Z", "X"):
                continue
            m = MARK_RE.search(cmd)
            if m and m.group(1) in self.projects:
                procs[int(d)] = (int(rest[1]), m.group(1), m.group(2))
        return {pid: v[1:] for pid, v in procs.items() if v[0] not in procs}

    def run(self):
        try:
            while not self.halt.is_set():
                t, wall = time.time(), _wall()
                roots = self._scan()
                self.samples += 1
                self.max_alive = max(self.max_alive, len(roots))
                by_project = {}
                for pid, (project, job) in roots.items():
                    b = self.builds.get(pid)
                    self.builds[pid] = (project, job, b[2] if b else t, t)
                    by_project.setdefault(project, []).append((pid, job))
                for project, builds in by_project.items():
                    builds.sort()
                    for i in range(len(builds)):
                        for k in range(i + 1, len(builds)):
                            key = (builds[i][0], builds[k][0])
                            if key not in self.overlaps:
                                self.overlaps[key] = (project, (builds[i][1], builds[k][1]), wall)
                self.halt.wait(self.PERIOD)
        except Exception as e:  # noqa: BLE001 — reported as a finding
            self.error = repr(e)

    def alive_now(self):
        return self._scan()


# --- PostgreSQL and Redis ------------------------------------------------------------

class DB:
    """psycopg with reconnects: the server is restarted under us."""

    def __init__(self, url):
        import psycopg
        self.psycopg = psycopg
        self.url = url
        self.conn = None

    def query(self, sql, *params, timeout=60.0):
        deadline = _now() + timeout
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = self.psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                with self.conn.cursor() as cur:
                    cur.execute(sql, params or None)
                    return cur.fetchall() if cur.description else []
            except self.psycopg.OperationalError:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if _now() > deadline:
                    raise
                # Reconnect pace while the server restarts; bounded above.
                time.sleep(0.2)

    def close(self):
        if self.conn is not None:
            self.conn.close()


def redis_cli(url, *args):
    r = subprocess.run(["redis-cli", "-u", url, "--raw"] + list(args), capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError("redis-cli %s: %s" % (" ".join(args), r.stderr.strip()))
    return r.stdout


# --- the experiment ------------------------------------------------------------------

class Chaos:
    def __init__(self, svc, sbx_bin, opts, log=None):
        self.svc = svc
        self.env = dict(svc.env)
        self.bin = sbx_bin
        self.o = opts
        if self.o.seed is None:
            self.o.seed = random.SystemRandom().randrange(1, 2 ** 31)
        self.rng = random.Random(self.o.seed)
        self.tag = "cx" + uuid.uuid4().hex[:6]
        self.out = self.o.out or tempfile.mkdtemp(prefix="sbx-chaos-%s-" % self.tag)
        os.makedirs(self.out, exist_ok=True)
        self.logdir = os.path.join(self.out, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="sbx-chaos-work-")
        # Builds run as slot uids and must traverse the workspace parent.
        os.chmod(self.work, 0o755)
        self.topic = "sbx.chaos.%s" % self.tag
        self.group = "chaos-" + self.tag
        self.uid_base = 700000 + (os.getpid() % 20000) * UID_SPAN * 16
        self.projects = ["%s-p%02d" % (self.tag, i) for i in range(self.o.projects)]
        self.timeline = []          # (wall, monotonic, kind, detail)
        self.counts = {k: 0 for k in FAULTS}
        self.findings = []
        self.workers, self.agents = [], []
        self.acked = set()
        self.long_ids = set()       # jobs whose build lasts 3 lease TTLs
        self.resent = 0             # batches sent again after a failed publication
        self.produce_error = None
        self.figures = {}
        self.log = log or (lambda s: print(s, flush=True))
        self._chaos_log = open(os.path.join(self.out, "chaos.log"), "a")
        self.db = None

    def say(self, msg):
        line = "chaos %s %s" % (_wall(), msg)
        self._chaos_log.write(line + "\n")
        self._chaos_log.flush()
        self.log(line)

    def find(self, what, evidence=None):
        """Records a failed invariant; evidence goes to findings/NN.txt."""
        n = len(self.findings) + 1
        path = os.path.join(self.out, "findings")
        os.makedirs(path, exist_ok=True)
        path = os.path.join(path, "%02d.txt" % n)
        with open(path, "w") as f:
            f.write(what + "\n\n" + (evidence or ""))
        self.findings.append("%s (evidence: %s)" % (what, path))
        self.say("FINDING: " + what)

    # --- jobs -------------------------------------------------------------------

    def make_jobs(self):
        jobs = []
        for i in range(self.o.jobs):
            project = self.projects[self.rng.randrange(len(self.projects))]
            job_id = "%s-j%04d" % (self.tag, i)
            d = round(self.rng.uniform(*self.o.build), 2)
            if self.rng.random() < self.o.long_builds:
                d = 3 * self.o.ttl_ms / 1000.0
                self.long_ids.add(job_id)
            script = (": sbxchaos.%s.%s; echo start=$(date +%%s%%N) job=%s; sleep %s; "
                      "echo end=$(date +%%s%%N) job=%s" % (project, job_id, job_id, d, job_id))
            jobs.append({"job_id": job_id, "project_id": project, "script": script,
                         "timeout_s": 120})
        return jobs

    def _producer(self, jobs, t0, stop):
        """Publishes the jobs in batches spread over the produce window; a
        failed batch is sent again until the window plus a minute is over."""
        nb = max(1, min(len(jobs), int(self.o.produce / 0.75)))
        batches = [jobs[i * len(jobs) // nb:(i + 1) * len(jobs) // nb] for i in range(nb)]
        env = dict(os.environ, **self.env)
        env["SBX_TOPIC"] = self.topic
        give_up = t0 + self.o.produce + 60
        for k, batch in enumerate(batches):
            if stop.wait(max(0.0, t0 + k * self.o.produce / nb - _now())):
                return
            data = "".join(json.dumps(j) + "\n" for j in batch)
            tries = 0
            while True:
                tries += 1
                try:
                    r = subprocess.run([os.path.join(self.bin, "sbx"), "enqueue", "--json", "-",
                                        "--delivery-timeout", "15"], input=data, env=env,
                                       capture_output=True, text=True, timeout=45)
                    ok = r.returncode == 0
                    err = r.stderr.strip()
                except subprocess.TimeoutExpired:
                    ok, err = False, "sbx enqueue timed out"
                if ok:
                    self.acked.update(j["job_id"] for j in batch)
                    if tries > 1:
                        self.resent += tries - 1
                        self.say("batch %d published after %d tries" % (k, tries))
                    break
                if _now() > give_up or stop.is_set():
                    self.produce_error = "batch %d not published: %s" % (k, err[-300:])
                    return
                # Kafka is probably restarting: try again shortly.
                if stop.wait(1.0):
                    return

    # --- processes ----------------------------------------------------------------

    def _agent_url(self, a):
        return "http://127.0.0.1:%d" % a.port

    def start_agents(self):
        taken = set()
        for k in range(self.o.agents):
            port = sbxsvc._free_port(taken)
            work = os.path.join(self.work, "agent%d" % k)
            os.makedirs(work, mode=0o755, exist_ok=True)
            env = dict(os.environ)
            env.update({
                "SBX_AGENT_ID": "%s-vm%d" % (self.tag, k),
                "SBX_AGENT_LISTEN": "127.0.0.1:%d" % port,
                "SBX_REDIS_URL": self.env["SBX_REDIS_URL"],
                "SBX_AGENT_KEY": self.agent_key,
                "SBX_AGENT_CAPACITY": str(self.o.agent_capacity),
                "SBX_AGENT_HEARTBEAT_MS": "500",
                "SBX_AGENT_TTL_MS": "3000",
                "SBX_WORK_DIR": work,
                "SBX_UID_BASE": str(self.uid_base + UID_SPAN * (8 + k)),
                "SBX_SHUTDOWN_GRACE_MS": "2000",
                "SBX_LOG_LEVEL": "debug",
            })
            a = Proc("agent%d" % k, [os.path.join(self.bin, "sbx-agent")], env, self.logdir)
            a.port = port
            a.start()
            self.agents.append(a)

    def start_workers(self):
        for k in range(self.o.workers):
            env = dict(os.environ, **self.env)
            env.update({
                "SBX_TOPIC": self.topic,
                "SBX_DLQ_TOPIC": self.topic + ".dlq",
                "SBX_GROUP": self.group,
                "SBX_WORKER_ID": "%s-w%d" % (self.tag, k),
                "SBX_NODE": "%s-n%d" % (self.tag, k),
                "SBX_PROVIDER": self.o.provider,
                "SBX_LOCAL_SLOTS": str(self.o.slots),
                "SBX_UID_BASE": str(self.uid_base + UID_SPAN * k),
                "SBX_WORK_DIR": os.path.join(self.work, "w%d" % k),
                "SBX_LEASE_TTL_MS": str(self.o.ttl_ms),
                "SBX_KAFKA_SESSION_TIMEOUT_MS": str(self.o.session_ms),
                "SBX_SHUTDOWN_GRACE_MS": "10000",
                "SBX_LOG_LEVEL": "debug",
            })
            if self.o.provider == "vmpool":
                env["SBX_VMPOOL_KEY"] = self.agent_key
            os.makedirs(env["SBX_WORK_DIR"], mode=0o755, exist_ok=True)
            w = Proc("w%d" % k, [os.path.join(self.bin, "sbx-worker")], env, self.logdir)
            w.start()
            self.workers.append(w)

    def tick(self):
        """Due SIGCONTs and restarts; a process that exited unasked is a finding
        (then started again, so the run goes on)."""
        t = _now()
        for p in self.workers + self.agents:
            if p.stopped_until is not None and t >= p.stopped_until:
                p.signal(signal.SIGCONT)
                p.stopped_until = None
                self.say("%s SIGCONT" % p.name)
            if p.restart_at is not None and t >= p.restart_at:
                p.start()
                self.say("%s restarted (incarnation %d, pid %d)" % (p.name, p.incarnation, p.pid))
            elif p.restart_at is None and not p.alive():
                status = p.p.poll()
                self.find("%s exited by itself with status %s during the run" % (p.name, status),
                          _tail_text(p.logs[-1], 80))
                p.start()

    def sleep(self, seconds):
        until = _now() + seconds
        while _now() < until:
            self.tick()
            time.sleep(min(0.05, max(0.0, until - _now())))

    # --- faults ---------------------------------------------------------------------

    def kinds(self):
        ks = [k for k in FAULTS if self.o.weights.get(k, 0) > 0]
        if self.o.provider != "vmpool":
            ks.remove("agent_kill9")
        return ks

    def pick(self, n):
        kinds = self.kinds()
        if n < len(kinds):
            if n == 0:
                self._first = kinds[:]
                self.rng.shuffle(self._first)
            return self._first[n]
        return self.rng.choices(kinds, [self.o.weights[k] for k in kinds])[0]

    def note(self, kind, detail, began=None):
        """Counts a fault; began (epoch s) is when it started, default now."""
        self.counts[kind] += 1
        self.timeline.append((began or time.time(), _now(), kind, detail))
        self.say("fault %s: %s" % (kind, detail))

    def inject(self, kind):
        ttl = self.o.ttl_ms / 1000.0
        if kind == "worker_sigstop_build":
            return self.freeze_long_build(ttl)
        if kind in ("worker_kill9", "worker_sigstop", "agent_kill9"):
            pool = self.agents if kind == "agent_kill9" else self.workers
            up = [p for p in pool if p.alive() and p.restart_at is None
                  and (kind == "worker_kill9" or p.stopped_until is None)]
            if not up:
                return False
            p = self.rng.choice(up)
            if kind == "worker_sigstop":
                d = self.rng.uniform(ttl * 1.1 + 0.5, self.o.session_ms / 1000.0 * 1.5)
                p.signal(signal.SIGSTOP)
                p.stopped_until = _now() + d
                self.note(kind, "%s (pid %d) stopped for %.1f s" % (p.name, p.pid, d))
            else:
                pid = p.pid
                p.kill9()
                d = self.rng.uniform(0.0, 1.0)
                p.restart_at = _now() + d
                self.note(kind, "%s (pid %d) killed; restart in %.1f s" % (p.name, pid, d))
            return True
        name = kind.split("_")[0]
        if name == "redis":
            hard, down = True, self.rng.uniform(0.0, ttl * 1.2)
        elif name == "postgres":
            hard, down = True, self.rng.uniform(0.0, 3.0)
        else:
            hard, down = self.rng.random() < 0.5, self.rng.uniform(0.0, 2.0)
        t0, began = _now(), time.time()
        self.svc.down(name, hard=hard)
        self.sleep(down)
        self.up(name)
        self.note(kind, "%s %s, down %.1f s, back after %.1f s" % (
            name, "crashed (SIGKILL)" if hard else "stopped (SIGTERM)", down, _now() - t0),
            began)
        return True

    def freeze_long_build(self, ttl):
        """SIGSTOP of a worker while it runs a build of 3 TTLs, until after
        its Kafka session and lease expired and another worker took the job
        over: the frozen build must be gone by then (common/supervise.c;
        vmpool: agent/leasewatch.c), which the watcher checks on the host."""
        rows = self.db.query("SELECT worker_id FROM sbx.runs WHERE job_id = ANY(%s) "
                             "AND status = 'running'", sorted(self.long_ids))
        busy = {r[0] for r in rows}
        up = [p for p in self.workers if p.alive() and p.restart_at is None
              and p.stopped_until is None and p.env["SBX_WORKER_ID"] in busy]
        if not up:
            return False
        p = self.rng.choice(up)
        session = self.o.session_ms / 1000.0
        d = self.rng.uniform(session + ttl, session * 1.5 + ttl)
        p.signal(signal.SIGSTOP)
        p.stopped_until = _now() + d
        self.note("worker_sigstop_build", "%s (pid %d), running a long build, stopped for %.1f s"
                  % (p.name, p.pid, d))
        return True

    def up(self, name):
        """Services.up(name), with our due SIGCONTs and restarts run between
        its bounded start steps (Kafka takes seconds to come back)."""
        s = self.svc.svc[name]
        s.ready = False
        steps = s.start_steps()
        deadline = _now() + s.deadline
        for step in steps:
            if step == sbxsvc.RESET_DEADLINE:
                deadline = _now() + s.deadline
            if _now() > deadline:
                s._fail("not back after %.0f s" % s.deadline)
            self.tick()
            # Probe pace, as in Services._run_steps; bounded by the deadline.
            time.sleep(0.05)
        s.ready = True

    # --- the run ----------------------------------------------------------------------

    def run(self):
        """Runs the experiment; returns self (findings, figures, counts)."""
        stop = threading.Event()
        watcher = None
        t_start = _now()
        try:
            self.say("seed %d tag %s provider %s jobs %d projects %d workers %d; output %s"
                     % (self.o.seed, self.tag, self.o.provider, self.o.jobs, len(self.projects),
                        self.o.workers, self.out))
            sbxsvc.create_topics(self.env["SBX_BROKERS"], {self.topic: 8, self.topic + ".dlq": 1},
                                 60)
            self.db = DB(self.env["SBX_DATABASE_URL"])
            self.agent_key = uuid.uuid4().hex
            watcher = Watcher(self.uid_base, self.uid_base + UID_SPAN * 16, set(self.projects))
            watcher.start()
            if self.o.provider == "vmpool":
                self.start_agents()
            self.start_workers()
            jobs = self.make_jobs()
            self.ids = [j["job_id"] for j in jobs]
            self.jobs = {j["job_id"]: j for j in jobs}
            t0 = _now()
            producer = threading.Thread(target=self._producer, args=(jobs, t0, stop), daemon=True)
            producer.start()
            n = 0
            next_fault = t0 + self.rng.uniform(*self.o.gap)
            while _now() < t0 + self.o.duration:
                self.tick()
                if _now() >= next_fault:
                    if self.inject(self.pick(n)):
                        n += 1
                    next_fault = _now() + self.rng.uniform(*self.o.gap)
                time.sleep(0.05)
            # The window is over: every process runs again.
            for p in self.workers + self.agents:
                if p.stopped_until is not None:
                    p.stopped_until = _now()
                if p.restart_at is not None:
                    p.restart_at = _now()
            self.tick()
            t_quiet = _now()
            self.say("faults over after %.1f s: %s" % (t_quiet - t0, self._counts_text()))
            producer.join(self.o.produce + 120)
            if self.produce_error:
                raise Finding("could not publish the jobs: " + self.produce_error)
            self.settle(t_quiet)
            self.check_all(watcher)
        except Finding as e:
            self.find(*e.args)
        except sbxsvc.ServiceError as e:
            self.find("a service did not come back: %s" % str(e).splitlines()[0], str(e))
        finally:
            stop.set()
            if watcher is not None:
                watcher.halt.set()
                watcher.join(5)
            self.stop_all()
            if self.db is not None:
                self.db.close()
            self.figures["wall time s"] = round(_now() - t_start, 1)
            self._chaos_log.close()
            shutil.rmtree(self.work, ignore_errors=True)
        return self

    def _counts_text(self):
        return ", ".join("%s=%d" % (k, v) for k, v in self.counts.items()
                         if k in self.kinds())

    def statuses(self):
        rows = self.db.query("SELECT job_id, status FROM sbx.runs WHERE job_id = ANY(%s)",
                             self.ids)
        return dict(rows)

    def settle(self, t_quiet):
        deadline = t_quiet + self.o.settle
        last = None
        while True:
            self.tick()
            st = self.statuses()
            left = [j for j in self.ids if st.get(j) not in TERMINAL]
            if not left:
                break
            if _now() > deadline:
                detail = "\n".join("%s: %s\n%s" % (j, st.get(j, "(no row)"),
                                                   self.history_text(j)) for j in left[:20])
                raise Finding("%d of %d jobs not terminal %.0f s after the faults stopped: %s"
                              % (len(left), len(self.ids), self.o.settle, ", ".join(left[:10])),
                              detail)
            if last is None or _now() - last > 10:
                last = _now()
                self.say("settling: %d jobs not terminal yet" % len(left))
            time.sleep(0.2)
        self.figures["time to settle s"] = round(_now() - t_quiet, 1)
        self.say("all %d jobs terminal %.1f s after the faults stopped"
                 % (len(self.ids), _now() - t_quiet))

    def history(self, job_id):
        return self.db.query("SELECT id, from_status, to_status, at, lease_token, worker_id, "
                             "detail FROM sbx.run_events WHERE job_id = %s ORDER BY id", job_id)

    def history_text(self, job_id):
        return "\n".join("  %s %s -> %s token=%s worker=%s %s" % (
            at.strftime("%H:%M:%S.%f")[:-3], f, t, tok, w, d or "")
            for _, f, t, at, tok, w, d in self.history(job_id))

    def faults_near(self, t_from, t_to):
        return "\n".join("  %s %s: %s" % (datetime.datetime.fromtimestamp(w).strftime(
            "%H:%M:%S.%f")[:-3], k, d) for w, _, k, d in self.timeline
            if t_from - 15 <= w <= t_to + 1) or "  (none within 15 s before)"

    # --- invariants ---------------------------------------------------------------------

    def check_all(self, watcher):
        rows = self.db.query("SELECT job_id, project_id, status, attempt, lease_token, log_tail, "
                             "worker_id FROM sbx.runs WHERE job_id = ANY(%s)", self.ids)
        evs = self.db.query("SELECT job_id, id, from_status, to_status, at, lease_token, "
                            "worker_id, detail FROM sbx.run_events WHERE job_id = ANY(%s) "
                            "ORDER BY job_id, id", self.ids)
        events = {}
        for job_id, *e in evs:
            events.setdefault(job_id, []).append(e)
        runs = {r[0]: r for r in rows}
        clocks, spans = {}, {}
        reran = takeovers = 0
        bad = []
        for job_id in self.ids:
            _, project, status, attempt, token, tail, worker = runs[job_id]
            h = events.get(job_id, [])
            problems = validate_history(h, status, attempt, token)
            if status != "succeeded":
                problems.append("ended %s, but the build always exits 0" % status)
            s, e, why = build_clock(tail or "", job_id)
            if why:
                problems.append(why)
            else:
                clocks.setdefault(project, []).append((s, e, job_id))
            for a, b in active_spans(h):
                spans.setdefault(project, []).append((a, b, job_id))
            if attempt > 1:
                reran += 1
            takeovers += sum(1 for ev in h if ev[1] in ACTIVE and ev[2] == "provisioning")
            if problems:
                bad.append((job_id, problems, h))
        self.job_findings(bad)
        for project, xs in clocks.items():
            for (s1, e1, j1), (s2, e2, j2) in zip(sorted(xs), sorted(xs)[1:]):
                if e1 > s2:
                    self.overlap_finding(project, j1, j2, "by the builds' own clocks: %s ended "
                                         "%.3f s after %s started" % (j1, (e1 - s2) / 1e9, j2),
                                         s2 / 1e9, e1 / 1e9)
        for project, xs in spans.items():
            for (s1, e1, j1), (s2, e2, j2) in zip(sorted(xs), sorted(xs)[1:]):
                if e1 > s2:
                    self.overlap_finding(project, j1, j2, "by run_events: %s was active until "
                                         "%.3f s after %s became active" % (j1, e1 - s2, j2),
                                         s2, e1)
        if watcher.error:
            self.find("the sandbox watcher failed: " + watcher.error)
        for (p1, p2), (project, (j1, j2), wall) in sorted(watcher.overlaps.items(),
                                                          key=lambda kv: kv[1][2]):
            b1, b2 = watcher.builds.get(p1), watcher.builds.get(p2)
            self.overlap_finding(project, j1, j2, "on the host at %s: pid %d (job %s, alive %s) "
                                 "and pid %d (job %s, alive %s)" % (
                                     wall, p1, j1, _span(b1), p2, j2, _span(b2)),
                                 min(b1[2], b2[2]), max(b1[3], b2[3]))
        self.check_leftovers(watcher)
        self.figures.update({
            "jobs": len(self.ids),
            "batches published again": self.resent,
            "jobs re-run (attempt > 1)": reran,
            "long builds (3 TTLs)": len(self.long_ids),
            "takeovers (claim of an active run)": takeovers,
            "builds seen on the host": len(watcher.builds),
            "most builds alive at once": watcher.max_alive,
            "watcher samples": watcher.samples,
        })

    def job_findings(self, bad):
        """One finding per kind of problem: jobs whose problems and last
        event read the same once ids and numbers are blanked are grouped,
        and the evidence holds the first GROUP_EVIDENCE of them in full."""
        groups = {}
        for job_id, problems, h in bad:
            last = (h[-1][6] or "") if h else ""
            key = _shape("; ".join(problems) + " | last event: " + last, self.tag)
            groups.setdefault(key, []).append((job_id, problems, h, last))
        for items in groups.values():
            job_id, problems, h, last = items[0]
            what = "%s: %s%s" % (
                "job %s (project %s)" % (job_id, self.jobs[job_id]["project_id"])
                if len(items) == 1 else "%d jobs (%s%s)" % (
                    len(items), ", ".join(i[0] for i in items[:3]),
                    ", ..." if len(items) > 3 else ""),
                "; ".join(problems), "; its last event: " + last if last else "")
            ev = []
            for job_id, problems, h, last in items[:GROUP_EVIDENCE]:
                first_t = h[0][3].timestamp() if h else time.time()
                last_t = h[-1][3].timestamp() if h else time.time()
                ev.append("=== job %s (project %s): %s\nhistory:\n%s\n\nfaults from 15 s "
                          "before its first event to its last:\n%s\n\nrun row: %r\n" % (
                              job_id, self.jobs[job_id]["project_id"], "; ".join(problems),
                              self.history_text(job_id), self.faults_near(first_t, last_t),
                              self.db.query("SELECT job_id, status, attempt, lease_token, "
                                            "worker_id, slot, exit_code, error, log_tail "
                                            "FROM sbx.runs WHERE job_id = %s", job_id)))
            if len(items) > GROUP_EVIDENCE:
                ev.append("... and %d more: %s" % (len(items) - GROUP_EVIDENCE,
                                                   " ".join(i[0] for i in items[GROUP_EVIDENCE:])))
            self.find(what, "\n".join(ev))

    def overlap_finding(self, project, j1, j2, what, t_from, t_to):
        ev = "\n".join("%s history:\n%s" % (j, self.history_text(j)) for j in (j1, j2))
        self.find("project %s: two builds overlapped %s" % (project, what),
                  "%s\n\nfaults near:\n%s\n" % (ev, self.faults_near(t_from, t_to)))

    def my_leases(self):
        """Lease keys of this run (all of them when the services are ours)."""
        url = self.env["SBX_REDIS_URL"]
        mine = (lambda s: True) if self.o.own_services else (lambda s: self.tag in s)
        left = []
        for key in redis_cli(url, "--scan", "--pattern", "{sbx}:lease:*").split():
            h = redis_cli(url, "HGETALL", key).split("\n")
            fields = dict(zip(h[0::2], h[1::2]))
            if mine(key) or mine(fields.get("project", "")):
                left.append("%s %s" % (key, fields))
        for key in redis_cli(url, "--scan", "--pattern", "{sbx}:project:*").split():
            if mine(key):
                left.append("%s -> %s" % (key, redis_cli(url, "GET", key).strip()))
        for slot in redis_cli(url, "ZRANGE", "{sbx}:deadlines", "0", "-1").split():
            if mine(slot):
                left.append("{sbx}:deadlines member %s" % slot)
        return left

    def check_leftovers(self, watcher):
        # A release may still be in flight right after the last terminal
        # write; a lease left behind would stay until it is reaped.
        deadline = _now() + 2 * self.o.ttl_ms / 1000.0 + 3
        while True:
            left = self.my_leases()
            if not left or _now() > deadline:
                break
            self.sleep(0.2)
        if left:
            self.find("%d lease keys left in Redis after settling" % len(left), "\n".join(left))
        deadline = _now() + 5
        while True:
            alive = watcher.alive_now()
            ps = subprocess.run(["pgrep", "-af", "sbxchaos.%s" % self.tag], capture_output=True,
                                text=True).stdout.strip()
            if (not alive and not ps) or _now() > deadline:
                break
            self.sleep(0.2)
        if alive or ps:
            self.find("sandbox processes left after every job was terminal", ps)

    def stop_all(self):
        # SIGTERM to all at once, so the grace periods run side by side.
        for p in self.workers + self.agents:
            if p.alive():
                p.expected_exit = True
                p.signal(signal.SIGCONT)
                p.signal(signal.SIGTERM)
        statuses = {}
        deadline = _now() + 25
        for w in self.workers:
            statuses[w.name] = w.stop(max(0.1, deadline - _now()))
        for a in self.agents:
            a.stop(max(0.1, deadline - _now()))
        dup = fenced = lease_waits = retries = lost = 0
        for w in self.workers:
            for log in w.logs:
                last = None
                with open(log, "rb") as f:
                    text = f.read().decode(errors="replace")
                for m in STATS_RE.finditer(text):
                    last = m
                if last:
                    dup += int(last.group(2))
                    lease_waits += int(last.group(3))
                    fenced += int(last.group(4))
                    retries += int(last.group(5))
                lost += text.count("lost its lease")
        for p in self.workers + self.agents:
            for log in p.logs:
                with open(log, "rb") as f:
                    m = SANITIZER_RE.search(f.read().decode(errors="replace"))
                if m:
                    self.find("%s printed a sanitizer report (%s)" % (p.name, log),
                              _tail_text(log, 80))
        for w in self.workers:
            st = statuses[w.name]
            if st not in (0, None) and self.figures.get("time to settle s") is not None:
                self.find("worker %s exited with status %s on SIGTERM after settling"
                          % (w.name, st), _tail_text(w.logs[-1], 60))
        self.figures.update({
            "faults": dict((k, v) for k, v in self.counts.items() if k in self.kinds()),
            "duplicates prevented (stats duplicates)": dup,
            "fenced out (stats fenced_out)": fenced,
            "lease losses logged": lost,
            "lease waits": lease_waits,
            "retries": retries,
        })

    def report(self):
        lines = ["chaos: seed %d, tag %s, provider %s, output %s"
                 % (self.o.seed, self.tag, self.o.provider, self.out)]
        for k, v in self.figures.items():
            lines.append("  %-42s %s" % (k, v))
        if self.findings:
            lines.append("FINDINGS (%d):" % len(self.findings))
            lines += ["  - " + f for f in self.findings]
        else:
            lines.append("all invariants held")
        return "\n".join(lines)


def _span(b):
    if not b:
        return "?"
    return "%s..%s" % tuple(datetime.datetime.fromtimestamp(x).strftime("%H:%M:%S.%f")[:-3]
                            for x in b[2:4])


def _shape(text, tag):
    """text with run-specific names and numbers blanked, to group alike."""
    return re.sub(r"\d+", "N", text.replace(tag, "X"))


def _tail_text(path, n):
    return sbxsvc._tail(path, n)


def validate_history(h, status, attempt, row_token):
    """Problems with one job's events (id, from, to, at, token, worker,
    detail), in order: a chain of allowed moves, one terminal event and it
    last, claims with growing tokens and fenced writes with the claim's."""
    p = []
    if not h:
        return ["no events"]
    prev, claim_token, claims, unclaims, seen = None, None, 0, 0, 0
    terminal = [e for e in h if e[2] in TERMINAL]
    if len(terminal) != 1:
        p.append("%d terminal events" % len(terminal))
    if h[-1][2] not in TERMINAL:
        p.append("the last event is %s, not terminal" % h[-1][2])
    for i, (eid, frm, to, at, tok, worker, detail) in enumerate(h):
        where = "event %d (%s -> %s)" % (i, frm, to)
        if frm != prev:
            p.append("%s does not follow %s" % (where, prev))
        if to not in ALLOWED.get(frm, set()):
            p.append("%s is not an allowed move" % where)
        if prev in TERMINAL:
            p.append("%s after the terminal event" % where)
        if i and at < h[i - 1][3]:
            p.append("%s is earlier than the event before it" % where)
        if to == "provisioning":
            claims += 1
            if tok is None or tok <= seen:
                p.append("%s claims with token %s, not above %s" % (where, tok, seen))
            claim_token = tok
        elif frm in ACTIVE:
            # running, requeue, unclaim or terminal of a claimed run: fenced.
            if to == "waiting_capacity":
                unclaims += 1
            if tok != claim_token:
                p.append("%s written with token %s while the claim's is %s"
                         % (where, tok, claim_token))
        elif tok is not None:
            p.append("%s carries token %s but is not fenced" % (where, tok))
        if tok is not None:
            if tok < seen:
                p.append("%s token %s is below an earlier %s" % (where, tok, seen))
            seen = max(seen, tok)
        prev = to
    if status != h[-1][2]:
        p.append("the row says %s, its last event %s" % (status, h[-1][2]))
    if attempt != claims - unclaims:
        p.append("attempt %d but %d claims (%d undone)" % (attempt, claims, unclaims))
    if claims and row_token != claim_token:
        p.append("row token %s, last claim's %s" % (row_token, claim_token))
    return p


def active_spans(h):
    """[start, end) epoch seconds of the periods the run was provisioning or
    running by its events; a takeover continues a period."""
    out, start = [], None
    for _, frm, to, at, *_ in h:
        t = at.timestamp()
        if to in ACTIVE and start is None:
            start = t
        elif to not in ACTIVE and start is not None:
            out.append((start, t))
            start = None
    if start is not None:
        out.append((start, float("inf")))
    return out


def build_clock(tail, job_id):
    """(start ns, end ns, problem) from the final run's output."""
    starts = re.findall(r"start=(\d+) job=(\S+)", tail)
    ends = re.findall(r"end=(\d+) job=(\S+)", tail)
    if len(starts) != 1 or len(ends) != 1:
        return None, None, "log_tail has %d start and %d end lines: %r" % (
            len(starts), len(ends), tail[-400:])
    if starts[0][1] != job_id or ends[0][1] != job_id:
        return None, None, "log_tail names another job: %r" % tail[-400:]
    s, e = int(starts[0][0]), int(ends[0][0])
    if e < s:
        return None, None, "build ended before it started: %r" % tail
    return s, e, None


def run_chaos(svc, sbx_bin, opts, log=None):
    """Runs one experiment on started, migrated services; returns the Chaos."""
    return Chaos(svc, sbx_bin, opts, log).run()


def main(argv=None):
    ap = argparse.ArgumentParser(description="sbx chaos test: faults while jobs flow, then "
                                             "the invariants (exit 1 on a finding)")
    ap.add_argument("--short", action="store_true", help="the short run of `make test`")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--jobs", type=int, help="jobs per provider")
    ap.add_argument("--projects", type=int)
    ap.add_argument("--duration", type=float, help="fault window per provider, s")
    ap.add_argument("--produce", type=float, help="jobs are published over this many s")
    ap.add_argument("--settle", type=float, help="deadline for every job terminal, s")
    ap.add_argument("--provider", help="local, vmpool, or both one after the other: "
                                       "local,vmpool (the long run's default; the window and "
                                       "the jobs are then split between them)")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--faults", help="comma-separated kinds to inject (default all): "
                                     + ",".join(FAULTS))
    ap.add_argument("--out", help="output directory (default a new /tmp/sbx-chaos-*)")
    ap.add_argument("--keep", action="store_true", help="keep the output even when all held")
    a = ap.parse_args(argv)
    providers = (a.provider or ("local" if a.short else "local,vmpool")).split(",")
    if not set(providers) <= {"local", "vmpool"}:
        ap.error("--provider: local, vmpool or local,vmpool")
    want = set(a.faults.split(",")) if a.faults else set(FAULTS)
    if want - set(FAULTS):
        ap.error("unknown fault kinds: %s" % ", ".join(sorted(want - set(FAULTS))))
    build = os.environ.get("SBX_BUILD", "build")
    sbx_bin = os.path.join(REPO, build, "bin")
    # SIGTERM unwinds like Ctrl-C: workers, agents and services are stopped.
    signal.signal(signal.SIGTERM, _on_term)
    results = []
    with sbxsvc.Services() as svc:
        svc.start(kafka=True, redis=True, postgres=True)
        print("chaos: " + svc.timing_line(), flush=True)
        r = subprocess.run([os.path.join(sbx_bin, "sbx"), "migrate"],
                           env=dict(os.environ, **svc.env), capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            print("chaos: sbx migrate failed:\n" + r.stdout + r.stderr, file=sys.stderr)
            return 2
        for k, provider in enumerate(providers):
            base = Options.short() if a.short else Options.long()
            kw = dict(provider=provider, own_services=True,
                      jobs=base.jobs // len(providers), duration=base.duration / len(providers),
                      produce=base.produce / len(providers))
            kw.update({f: getattr(a, f) for f in ("seed", "jobs", "projects", "duration",
                                                  "produce", "settle", "workers")
                       if getattr(a, f) is not None})
            if a.seed is not None:
                kw["seed"] = a.seed + k
            if a.out:
                kw["out"] = os.path.join(a.out, provider)
            opts = Options(**dict(vars(base), **kw))
            if a.produce is None:
                opts.produce = min(opts.produce, opts.duration * 0.85)
            opts.weights = {f: (v if f in want else 0) for f, v in opts.weights.items()}
            c = run_chaos(svc, sbx_bin, opts)
            print(c.report(), flush=True)
            results.append(c)
    for c in results:
        if not c.findings and not a.keep and not a.out:
            shutil.rmtree(c.out, ignore_errors=True)
    bad = sum(len(c.findings) for c in results)
    print("chaos: %s" % ("%d findings" % bad if bad else "all invariants held"), flush=True)
    return 1 if bad else 0


def _on_term(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
