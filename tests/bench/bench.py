#!/usr/bin/env python3
"""bench.py — `make bench`: what one sbx-worker costs and how fast it goes.

Owns the benchmark figures of the "Performance" issue, measured against the
real servers (Kafka, Redis, PostgreSQL from tests/services/sbxsvc.py, on
127.0.0.1) with the `bench` provider (tests/bench/provider_bench.c, built into
  sbx-worker-bench only), whose builds
do nothing, so every figure is the worker's own cost:

  dispatch   N no-op jobs over 1,000 projects, all published first, then one
             worker (and then two) drains them: jobs/s from the runs table
             (max(finished_at) - min(created_at)) and by wall clock; CPU
             seconds per 1,000 jobs of the worker and of each server; and
             from PostgreSQL's own counters (pg_stat_statements, loaded in
             the bench's server only, reset as each run starts): the worker's
             statements per job (top level, and nested in the sbx.*
             functions), executor ms per job, commits and WAL flushes per
             job (pg_stat_database, pg_stat_wal), and under the table its top
             statements by total executor time (calls per job, ms per call,
             share). The bench's own polls run as role sbx_bench and are left
             out of the statements.
  latency    a paced producer (sbx-bench-pace, pace.c) at half the measured
             one-worker rate, after 1 s of unmeasured warm-up jobs at the same
             rate (BENCH_LATENCY_WARMUP_S: a new producer, topic and worker
             cost up to ~100 ms per job for a fraction of a second, which was
             the p99 of "enqueue -> Kafka append" before), stamps each job
             (metadata t_us); enqueue -> run
             row (the queued event: Kafka and intake), enqueue -> lease (the
             provisioning event, written by the claim that follows the Redis
             lease, just before the provider call), enqueue -> running (the
             provider reported the build started), enqueue -> terminal as a
             LISTEN sbx_runs reader sees it. The topic stamps each message
             with the broker's append time (LogAppendTime, read back with
             kcat), which cuts enqueue -> provider call into parts, each
             with its own p50/p99: enqueue -> Kafka append (producer and
             broker; the broker's stamp is in whole ms, cut down, so at p50
             this can read a little below zero), append -> run row (the worker's fetch, intake and
             record write), run row -> lease (queued -> provisioning) and
             lease -> provider call (provisioning -> running). The worker's
             stats line adds its intake wait (append -> its loop took the
             message: the fetch part of append -> run row; over all jobs of
             the run, warm-up included, as the worker cannot tell them
             apart). PostgreSQL's counters over the run give commits per job
             and the time per commit: the worker sends its statements in
             rounds, one transaction each, one round in flight (db.c), so a
             statement waits up to two rounds. Also the worker's CPU and the
             bench's own (LISTEN reader, pacer: they share the cores with
             what they measure). BENCH_KEEP=1 writes each job's marks to
             latency-<topic>.tsv beside BENCH_OUT.
  inflight   10,000 builds of 10,000 projects that each last 60 s: time until
             all run, the worker's RSS, and its CPU while nothing changes.
  river      River (tests/bench/river, Go, riverpgxv5), the durable
             PostgreSQL-only queue nearest to sbx, in a database "river" on
             the same PostgreSQL: its own migrations, N no-op jobs inserted
             by InsertMany, then a client with a no-op worker drains them,
             tuned for throughput (MaxWorkers 500, FetchCooldown 1 ms,
             FetchPollInterval 5 ms) and with River's defaults (MaxWorkers
             100). jobs/s from river_job (max(finalized_at) -
             min(attempted_at): created_at is the insert, before the drain)
             and by wall clock.
  nodepipe   the pipeline sbx is, written the straightforward Node way
             (tests/bench/nodepipe: kafkajs, an ioredis Lua lease with a
             fencing token, pg with a run row and history rows in two
             transactions per job, offsets after the database), fed the
             same `sbx enqueue` messages through a topic of its own.
  bullmq     the same no-op jobs through BullMQ on the same Redis
             (tests/bench/bullmq), jobs/s and worker CPU per 1,000 jobs.
  For sbx and every peer, the CPU seconds per 1,000 jobs of the worker and
  of each server (PostgreSQL, Redis, Kafka) over the same window (from the
  last look before the first job to the last job), and the ratios of sbx's
  medians to each peer's. The peers are programs of their own, built from
  their lock files by bench.mk; none is linked into sbx.
  callgrind  instructions per job of the worker under callgrind for a small
             fixed workload (counters zeroed once the worker is idle and
             ready, dumped when the last job is terminal), and where they go.

Before/after in one run: BENCH_SBX_VARIANTS="before=PATH,after=PATH" runs
sbx's figures (dispatch, latency, inflight, callgrind) once per worker binary,
taking turns run by run, with the peers once; the table gets one row set per
variant ("before: ...", "after: ..."), then the ratio of each variant's median
to the first's ("after / before: ..."), then the last variant against the
peers. The latency runs all offer half the first variant's dispatch rate. A
variant may be an older worker: a figure it cannot give (a stats field it
does not log) shows "-". The binaries, from two commits:

  git worktree add --detach /tmp/before <rev> && make -C /tmp/before -j2 build/bench/sbx-worker-bench
  git worktree add --detach /tmp/after  <rev> && make -C /tmp/after  -j2 build/bench/sbx-worker-bench
  make bench BENCH_QUICK=1 BENCH_ONLY=dispatch,latency,callgrind \
    BENCH_SBX_VARIANTS=before=/tmp/before/build/bench/sbx-worker-bench,after=/tmp/after/build/bench/sbx-worker-bench

Counts (statements, commits per job in dispatch) repeat to within 1 %
between variants of one binary; timings on a shared 2-core box do not, and
callgrind's Ir per job moved 6 % between two runs of one binary at 200 jobs
(the interleaving of messages, rounds and lease refusals varies): compare
with BENCH_CALLGRIND_JOBS=2000 and BENCH_RUNS=3, and latencies at a fixed
BENCH_LATENCY_RATE the slower variant keeps up with. The bench, its pacer
and the peers are this tree's; only the worker varies. A variant whose
migrations differ needs the newer tree's `sbx migrate`, which the bench runs
from SBX_BUILD: run the bench from the newer tree.

Why it is shaped so:
- One set of servers for the whole run (their start is the slow part), and a
  clean slate per run: a new topic and consumer group, runs truncated, Redis
  flushed. Runs never see each other's jobs, leases or offsets.
- Every wait has a deadline and every run a time cap; a capped run reports
  what it measured (a rate over the jobs done so far) and is marked partial,
  so `make bench` stays bounded whatever state the worker's speed is in. A
  budget for the whole run skips runs that would start after it.
- Every process we start is in its own session with PR_SET_PDEATHSIG (via
  sbxsvc._Proc), and stopped in a finally block, so nothing outlives us.
- Each figure is run BENCH_RUNS times; the table shows the median.

Configuration (environment): BENCH_QUICK=1 (20,000 jobs a run, so even
10,000 jobs/s lasts two seconds; shorter latency and in-flight runs),
BENCH_RUNS, BENCH_JOBS, BENCH_PROJECTS, BENCH_MAX_INFLIGHT, BENCH_RUN_CAP_S,
BENCH_LATENCY_RATE, BENCH_LATENCY_S, BENCH_LATENCY_WARMUP_S,
BENCH_SBX_VARIANTS (above), BENCH_INFLIGHT, BENCH_HOLD_MS,
BENCH_IDLE_S, BENCH_BULLMQ_CONCURRENCY, BENCH_CALLGRIND_JOBS,
BENCH_CALLGRIND_RUNS, BENCH_ONLY (comma list of the names above),
BENCH_BUDGET_S (default per variant), BENCH_OUT (markdown, default $SBX_BUILD/bench/last-results.md;
BENCH_OUT=tests/bench/last-results.md replaces the published table on purpose),
BENCH_KEEP=1 (keep the servers' and workers' logs), SBX_BUILD (default build).
"""

import datetime
import json
import math
import os
import platform
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "services"))
import sbxsvc  # noqa: E402

import psycopg  # noqa: E402  (installed by docker/install-deps.sh)

FIGURES = ("dispatch", "latency", "inflight", "river", "nodepipe", "bullmq", "callgrind")
# The figures of sbx itself, run once per worker variant (BENCH_SBX_VARIANTS).
SBX_FIGURES = ("dispatch", "latency", "inflight", "callgrind")
# Result keys of the peers; every other key is sbx's (one set per variant).
PEER_PREFIXES = ("river_", "nodepipe", "bullmq")
# The bench's own connection logs in as this role, so pg_stat_statements
# tells its polls from the worker's statements (by userid).
BENCH_ROLE = "sbx_bench"
# pg_stat_statements in the bench's PostgreSQL only: track=all counts the
# statements inside the sbx.* functions too (as nested, toplevel = false).
PG_SETTINGS = {"shared_preload_libraries": "pg_stat_statements",
               "pg_stat_statements.track": "all", "pg_stat_statements.max": "1000"}
# Statements listed under the table, by total executor time.
TOP_STATEMENTS = 8
PARTITIONS = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")
# How often progress is polled. A count over 100,000 rows costs PostgreSQL a
# few milliseconds; twice a second is noise next to the work measured.
POLL_S = 0.5
# Until the first job is seen, so the CPU window opens close before it.
POLL_OPEN_S = 0.05
# Worker start to "ready" (group joined, pool registered); callgrind's is
# tens of times slower.
READY_TIMEOUT_S = 60
READY_TIMEOUT_CALLGRIND_S = 240
# After the last job of a paced or callgrind run was sent.
DRAIN_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15
WARMUP_JOBS = 1000
# Unmeasured jobs at the head of a latency run (sbx-bench-pace's WARMUP), in
# seconds of the offered rate: a new producer, topic and worker take a
# fraction of a second to reach their steady state.
LATENCY_WARMUP_S = 1.0
VARIANT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
# callgrind frames at or above this share of all Ir are the whole program.
WHOLE_PROGRAM_PCT = 95.0
BULLMQ_NOT = ("BullMQ keeps no durable status in a SQL store (its job records live in Redis "
              "only), issues no fencing tokens (a stalled job is handed to another worker "
              "while the first may still run it), and has no per-project exclusion (two "
              "jobs of one project run at once).")
RIVER_NOT = ("River takes its jobs from its own table, not from Kafka (no broker hop, no "
             "offsets to commit), keeps one row per job updated in place rather than a history "
             "row per transition, and has no per-project exclusion in its open-source edition "
             "(two jobs of one project run at once).")


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


def env_float(name, default):
    v = os.environ.get(name, "")
    return float(v) if v.strip() else default


class Config:
    def __init__(self):
        quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
        self.quick = quick
        self.runs = env_int("BENCH_RUNS", 3)
        # Quick: enough jobs that a run at 10,000 jobs/s still lasts two
        # seconds, long against the 0.5 s poll and the worker's start.
        self.jobs = env_int("BENCH_JOBS", 20000 if quick else 100000)
        self.projects = env_int("BENCH_PROJECTS", 1000)
        self.max_inflight = env_int("BENCH_MAX_INFLIGHT", 10000)
        # A dispatch run stops here even if jobs remain (it is then partial).
        self.run_cap_s = env_float("BENCH_RUN_CAP_S", 30 if quick else 90)
        self.latency_rate = env_float("BENCH_LATENCY_RATE", 0)
        self.latency_s = env_float("BENCH_LATENCY_S", 5 if quick else 20)
        self.inflight = env_int("BENCH_INFLIGHT", 1000 if quick else 10000)
        self.hold_ms = env_int("BENCH_HOLD_MS", 60000)
        self.idle_s = env_float("BENCH_IDLE_S", 5 if quick else 10)
        self.bullmq_concurrency = env_int("BENCH_BULLMQ_CONCURRENCY", 1000)
        self.callgrind_jobs = env_int("BENCH_CALLGRIND_JOBS", 200 if quick else 2000)
        self.callgrind_runs = env_int("BENCH_CALLGRIND_RUNS", 1 if quick else self.runs)
        # sbx's figures run once per variant (BENCH_SBX_VARIANTS, read below).
        nvar = max(1, len([x for x in os.environ.get("BENCH_SBX_VARIANTS", "").split(",")
                           if x.strip()]))
        self.budget_s = env_float("BENCH_BUDGET_S", (600 if quick else 2400) * nvar)
        only = os.environ.get("BENCH_ONLY", "").strip()
        self.only = [x.strip() for x in only.split(",") if x.strip()] or list(FIGURES)
        for x in self.only:
            if x not in FIGURES:
                raise SystemExit("bench: BENCH_ONLY: unknown figure %r (have %s)"
                                 % (x, ", ".join(FIGURES)))
        self.keep = os.environ.get("BENCH_KEEP", "") not in ("", "0")
        b = os.environ.get("SBX_BUILD", "build")
        build = b if os.path.isabs(b) else os.path.join(REPO, b)
        # The committed tests/bench/last-results.md is the published table: a
        # run writes beside the build unless told otherwise, so `make bench`
        # leaves the work tree as it found it.
        out = os.environ.get("BENCH_OUT", "").strip() or os.path.join(build, "bench", "last-results.md")
        self.out = os.path.abspath(out)
        self.bin = os.path.join(build, "bin")
        self.pace = os.path.join(build, "bench", "sbx-bench-pace")
        # sbx-worker plus the bench provider (tests/bench/bench.mk).
        self.worker_bin = os.path.join(build, "bench", "sbx-worker-bench")
        # The River peer (tests/bench/river, `go build` by bench.mk).
        self.river_bin = os.path.join(build, "bench", "river-bench")
        # name=path,name=path: sbx's figures once per worker binary, in the
        # same run, with ratios of each to the first. Default: one unnamed
        # variant, the worker built beside this bench.
        self.variants = []
        for item in os.environ.get("BENCH_SBX_VARIANTS", "").split(","):
            if not item.strip():
                continue
            name, eq, path = item.strip().partition("=")
            path = os.path.abspath(os.path.expanduser(path))
            if not eq or not VARIANT_NAME.match(name) or name in (v[0] for v in self.variants):
                raise SystemExit("bench: BENCH_SBX_VARIANTS: %r is not name=path with a new name "
                                 "of letters, digits, '_', '.', '-'" % item)
            if not os.access(path, os.X_OK):
                raise SystemExit("bench: BENCH_SBX_VARIANTS: %s is not an executable" % path)
            self.variants.append((name, path))
        if not self.variants:
            self.variants = [("", self.worker_bin)]
        self.latency_warmup_s = env_float("BENCH_LATENCY_WARMUP_S", LATENCY_WARMUP_S)

    def describe(self):
        return ("runs=%d jobs=%d projects=%d max_inflight=%d run_cap=%gs latency=%gs "
                "(after %gs unmeasured) inflight=%d hold=%dms idle=%gs bullmq_concurrency=%d "
                "callgrind_jobs=%d%s"
                % (self.runs, self.jobs, self.projects, self.max_inflight, self.run_cap_s,
                   self.latency_s, self.latency_warmup_s, self.inflight, self.hold_ms,
                   self.idle_s, self.bullmq_concurrency, self.callgrind_jobs,
                   " (quick)" if self.quick else ""))


# --- processes and /proc ---------------------------------------------------------

def proc_times(pid):
    """(utime, stime) of one process (all its threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the comm: state is fields[0], so utime (field 14) is fields[11].
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_s(pid):
    """utime+stime of one process, in seconds."""
    return sum(proc_times(pid))


def tree_cpu_s(root):
    """CPU of a process and all its descendants, plus that of their reaped
    children (cutime/cstime), so PostgreSQL backends that came and went still
    count. (Not the process group: PostgreSQL's children call setsid().)"""
    stats = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(d)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    kids = {}
    for pid, (ppid, _) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(kids.get(pid, []))
    return total / CLK_TCK


def proc_rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    rev = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": model, "mem_gib": mem_kb / 1048576,
            "kernel": platform.release(), "rev": rev or "unknown", "load": os.getloadavg()[0]}


def worker_stats(path):
    """The counters of the worker's last "stats" line (it logs one at exit).
    A variant's worker may be older than a field: callers take what is there."""
    last = None
    with open(path, "rb") as f:
        for line in f:
            if b" stats " in line:
                last = line.decode(errors="replace")
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)\b", last or "")}


def redis_cmd(port, *args):
    """One command over RESP; returns the first reply line (enough for
    FLUSHALL and PING)."""
    req = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() for x in args))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(req)
        return s.recv(4096).split(b"\r\n", 1)[0].decode()


def create_topic(k, name, parts, configs, timeout_ms):
    """CreateTopics v0 with topic configs, on a sbxsvc._KafkaConn (whose own
    create_topics sends none): [(name, error code)]."""
    body = struct.pack(">i", 1) + sbxsvc._str(name) + struct.pack(">ihi", parts, 1, 0)
    body += struct.pack(">i", len(configs))
    for key, value in configs.items():
        body += sbxsvc._str(key) + sbxsvc._str(value)
    body += struct.pack(">i", timeout_ms)
    r = k.request(sbxsvc.API_CREATE_TOPICS, 0, body)
    return [(r.string(), r.take(">h")) for _ in range(r.take(">i"))]


def percentile(sorted_vals, p):
    """Nearest rank; sorted_vals may end in inf (jobs never seen)."""
    if not sorted_vals:
        return None
    k = max(0, math.ceil(p / 100.0 * len(sorted_vals)) - 1)
    return sorted_vals[k]


# --- the bench ---------------------------------------------------------------------

class Bench:
    def __init__(self, cfg):
        self.cfg = cfg
        self.t_start = time.monotonic()
        self.svc = sbxsvc.Services(keep=cfg.keep)
        self.env = None
        self.db = None
        self.procs = []
        self.results = {}      # peers' row key -> list of (value, partial)
        self.vresults = {name: {} for name, _ in cfg.variants}   # sbx's, per variant
        self.variant = None    # the variant whose figures are being run, or None
        self.worker_bin = cfg.variants[0][1]
        self.notes = []
        self.top15 = {}        # variant -> callgrind's top functions
        self.top_stmts = {}    # variant -> pg_stat_statements' top statements
        self.versions = {}     # variant -> its worker's --version
        self.last_commits = 0  # of the last pg_counts
        self.tmp = None
        self.last_logs = []     # the worker logs of the current run

    # ----- setup -----

    def start(self):
        for exe in (os.path.join(self.cfg.bin, "sbx"), self.cfg.worker_bin, self.cfg.pace):
            if not os.access(exe, os.X_OK):
                raise SystemExit("bench: %s is not built (run make bench)" % exe)
        for name, path in self.cfg.variants:
            r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                               stdin=subprocess.DEVNULL)
            self.versions[name] = (r.stdout.strip().splitlines() or ["?"])[0]
        self.env = self.svc.start(kafka=True, redis=True, postgres=True, pg_settings=PG_SETTINGS)
        log(self.svc.timing_line())
        self.tmp = self.svc.root
        r = self.sbx(["migrate"], timeout=120)
        if r.returncode != 0:
            raise RuntimeError("sbx migrate failed: %s%s" % (r.stdout, r.stderr))
        url = self.env["SBX_DATABASE_URL"]
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (BENCH_ROLE,)).fetchall():
                c.execute("CREATE ROLE %s SUPERUSER LOGIN" % BENCH_ROLE)
        u = urllib.parse.urlsplit(url)
        self.db = psycopg.connect(urllib.parse.urlunsplit(u._replace(
            netloc="%s@%s" % (BENCH_ROLE, u.netloc.rpartition("@")[2]))),
            autocommit=True, connect_timeout=10)

    def stop(self):
        for p in self.procs:
            try:
                p.stop(signal.SIGKILL, 5)
            except sbxsvc.ServiceError as e:
                log("cleanup: %s" % e)
        self.procs = []
        if self.db is not None:
            self.db.close()
        self.svc.stop()

    def elapsed(self):
        return time.monotonic() - self.t_start

    def over_budget(self, what):
        if self.elapsed() > self.cfg.budget_s:
            log("%s skipped: past the budget of %.0f s (BENCH_BUDGET_S)" % (what, self.cfg.budget_s))
            self.notes.append("%s skipped: past the time budget." % what)
            return True
        return False

    def sbx(self, args, timeout, input=None):
        env = dict(os.environ, **self.env)
        return subprocess.run([os.path.join(self.cfg.bin, "sbx")] + args, env=env, cwd=REPO,
                              input=input, capture_output=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def q(self, sql, *params):
        with self.db.cursor() as cur:
            cur.execute(sql, params or None)
            return cur.fetchall() if cur.description else None

    def fresh(self, tag, configs=None):
        """A clean slate: no runs, no Redis keys, a new topic and group.
        configs: topic configs (the latency runs stamp LogAppendTime)."""
        for p in self.procs:
            p.stop(signal.SIGKILL, 5)
        self.procs = []
        self.q("TRUNCATE sbx.runs CASCADE")
        redis_cmd(self.svc.svc["redis"].port, "FLUSHALL")
        topic = "bench.%s.%s" % (tag, uuid.uuid4().hex[:8])
        kport = self.svc.svc["kafka"].port
        deadline = time.monotonic() + 30
        while True:
            try:
                with sbxsvc._KafkaConn(kport, 5.0) as k:
                    errs = dict(create_topic(k, topic, PARTITIONS, configs or {}, 5000))
                    if errs.get(topic) in (0, 36) and k.topics_led({topic: PARTITIONS}):
                        break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("topic %s not ready within 30 s" % topic)
            time.sleep(0.1)
        return topic

    def publish(self, topic, jobs):
        """jobs: list of dicts; sent by `sbx enqueue --json -` on one connection,
        without recording them as submitted first (--no-database), so the
        publish rate stays what it measured before that existed."""
        data = "".join(json.dumps(j, separators=(",", ":")) + "\n" for j in jobs).encode()
        t0 = time.monotonic()
        r = self.sbx(["enqueue", "--topic", topic, "--json", "-", "--no-database"], timeout=300,
                     input=data)
        if r.returncode != 0:
            raise RuntimeError("sbx enqueue failed (%d): %s" % (r.returncode, r.stderr[-2000:]))
        return time.monotonic() - t0

    def worker(self, topic, node, extra=None, wrap=None):
        env = dict(os.environ, **self.env)
        env.update({"SBX_TOPIC": topic, "SBX_GROUP": "g-" + topic, "SBX_PROVIDER": "bench",
                    "SBX_NODE": node, "SBX_MAX_INFLIGHT": str(self.cfg.max_inflight),
                    "SBX_BENCH_HOLD_MS": "0", "SBX_LOG_LEVEL": "info",
                    "SBX_SHUTDOWN_GRACE_MS": "2000"})
        env.update(extra or {})
        logf = os.path.join(self.tmp, "worker-%s-%s.log" % (topic, node))
        if not self.last_logs or topic not in self.last_logs[0]:
            self.last_logs = []
        self.last_logs.append(logf)
        p = sbxsvc._Proc((wrap or []) + [self.worker_bin], logf, env=env)
        p.topic = topic
        self.procs.append(p)
        return p

    def wait_worker_ready(self, p, timeout):
        """Until the worker joined the group and registered its pool."""
        deadline = time.monotonic() + timeout
        while True:
            with open(p.log, "rb") as f:
                text = f.read().decode(errors="replace")
            if re.search(r"assigned \d+ partitions", text) and re.search(r"pool \S+ registered", text):
                return
            if p.exited():
                raise RuntimeError("worker exited early; log %s:\n%s" % (p.log, sbxsvc._tail(p.log)))
            if time.monotonic() > deadline:
                raise RuntimeError("worker not ready within %.0f s; log %s" % (timeout, p.log))
            time.sleep(0.1)

    def stop_proc(self, p, sig=signal.SIGTERM, timeout=STOP_TIMEOUT_S):
        p.stop(sig, timeout)
        if p in self.procs:
            self.procs.remove(p)

    def server_cpu(self):
        return {name: tree_cpu_s(s.proc.pid) for name, s in self.svc.svc.items() if s.proc}

    def done_count(self):
        return self.q("SELECT count(*) FROM sbx.runs WHERE finished_at IS NOT NULL")[0][0]

    def add(self, key, value, partial=False):
        into = self.results if self.variant is None else self.vresults[self.variant]
        into.setdefault(key, []).append((value, partial))

    # ----- pg_stat_statements -----

    def pg_reset(self):
        """Zeroes what pg_counts reads: at the start of each sbx run."""
        self.q("SELECT pg_stat_statements_reset()")
        self.q("SELECT pg_stat_reset_shared('wal')")
        return self.pg_commits()

    def pg_commits(self):
        return self.q("SELECT xact_commit FROM pg_stat_database "
                      "WHERE datname = current_database()")[0][0]

    def pg_counts(self, commits0, n, suffix, what):
        """After a run's workers stopped (their backends' counters are then
        flushed): statements per job (top level, and nested in the sbx.*
        functions), executor ms per job, commits and WAL flushes per job,
        the top statements by total executor time. The bench's own polls run
        as BENCH_ROLE and are left out (its commits, two a second, are not)."""
        # A backend adds its commits and WAL counts to the shared ones when it
        # exits (or once a second): wait for the workers' to go.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.q(
                "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND usename <> %s AND datname = current_database()", BENCH_ROLE):
            time.sleep(0.05)
        rows = self.q(
            "SELECT s.query, s.calls, s.total_exec_time, s.toplevel FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = current_database()"
            " AND s.userid <> (SELECT oid FROM pg_roles WHERE rolname = %s)", BENCH_ROLE)
        commits = self.last_commits = self.pg_commits() - commits0
        wal_sync = self.q("SELECT wal_sync FROM pg_stat_wal")[0][0]
        top = [r for r in rows if r[3]]
        calls = sum(r[1] for r in top)
        ms = sum(r[2] for r in top)
        nested = sum(r[1] for r in rows if not r[3])
        self.add("pg_stmts_" + suffix, calls / float(n))
        self.add("pg_nested_" + suffix, nested / float(n))
        self.add("pg_exec_ms_" + suffix, ms / float(n))
        self.add("pg_commits_" + suffix, commits / float(n))
        self.add("pg_wal_sync_" + suffix, wal_sync / float(n))
        best = sorted(top, key=lambda r: -r[2])[:TOP_STATEMENTS]
        listed = [(c / float(n), t / c if c else 0.0, 100.0 * t / ms if ms else 0.0,
                   " ".join(q.split())) for q, c, t, _ in best]
        log("%s: PostgreSQL per job: %.2f statements (+ %.2f nested), %.3f ms executing, "
            "%.2f commits, %.2f WAL flushes; top statements by time:%s"
            % (what, calls / float(n), nested / float(n), ms / float(n), commits / float(n),
               wal_sync / float(n), "".join("\n    %5.2f/job %8.3f ms %5.1f%%  %s"
                                            % (a, b, c, d[:120]) for a, b, c, d in listed)))
        return listed

    # ----- dispatch -----

    def jobs_spec(self, prefix, n, projects, cmd=("true",)):
        return [{"job_id": "%s-%d" % (prefix, i), "project_id": "p%d" % (i % projects),
                 "command": list(cmd)} for i in range(n)]

    def dispatch_run(self, nworkers, run, jobs=None, record=True):
        """record=None: a warm-up, measured but not kept."""
        cfg = self.cfg
        jobs = jobs or cfg.jobs
        topic = self.fresh("d%d-%d" % (nworkers, run))
        secs = self.publish(topic, self.jobs_spec("d", jobs, cfg.projects))
        log("dispatch %d worker(s) %s: %d jobs published in %.1f s"
            % (nworkers, "run %d" % run if record else "warm-up", jobs, secs))
        commits0 = self.pg_reset()
        t0 = time.monotonic()
        ws = [self.worker(topic, "bench%d" % i) for i in range(nworkers)]
        cap = t0 + cfg.run_cap_s
        cpu0 = srv0 = None
        partial = False
        while True:
            time.sleep(POLL_S if cpu0 is not None else POLL_OPEN_S)
            for w in ws:
                if w.exited():
                    raise RuntimeError("worker exited; log %s:\n%s" % (w.log, sbxsvc._tail(w.log)))
            # The window opens at the last look before the first recorded run
            # (first message consumed), as for the peers (peer_drain).
            if cpu0 is None:
                before = [proc_times(w.pid) for w in ws], self.server_cpu()
                if self.q("SELECT 1 FROM sbx.runs LIMIT 1"):
                    cpu0, srv0 = before
            done = self.done_count()
            if done >= jobs:
                break
            if time.monotonic() > cap:
                partial = True
                break
        t_end = time.monotonic()
        cpu1 = [proc_times(w.pid) for w in ws]
        srv1 = self.server_cpu()
        n, span = self.q("SELECT count(*), extract(epoch FROM max(finished_at) - min(created_at)) "
                         "FROM sbx.runs WHERE finished_at IS NOT NULL")[0]
        bad = self.q("SELECT count(*) FROM sbx.runs WHERE finished_at IS NOT NULL "
                     "AND status <> 'succeeded'")[0][0]
        lease_waits = received = scripts = 0
        have_waits = have_scripts = True
        for w in ws:
            self.stop_proc(w)
            st = worker_stats(w.log)
            have_waits = have_waits and "lease_waits" in st
            have_scripts = have_scripts and "lease_script_calls" in st
            # Refused by Redis: a worker that answers a project it holds
            # itself (worker/lease.c) counts those answers in lease_waits too.
            lease_waits += st.get("lease_refused_redis", st.get("lease_waits", 0))
            scripts += st.get("lease_script_calls", 0)
            received += st.get("received", 0)
        if bad:
            raise RuntimeError("%d runs ended other than succeeded" % bad)
        if not n or not span or cpu0 is None:
            raise RuntimeError("no job finished within %.0f s" % cfg.run_cap_s)
        if record is None:
            return
        rate_db = n / float(span)
        rate_wall = n / (t_end - t0)
        per1k = 1000.0 / n
        user = sum(b[0] - a[0] for a, b in zip(cpu0, cpu1))
        system = sum(b[1] - a[1] for a, b in zip(cpu0, cpu1))
        tag = ("1 worker" if nworkers == 1 else "%d workers" % nworkers) + vlabel(self.variant)
        self.add("dispatch_db_%d" % nworkers, rate_db, partial)
        self.add("dispatch_wall_%d" % nworkers, rate_wall, partial)
        self.add("worker_cpu_%d" % nworkers, (user + system) * per1k, partial)
        self.add("worker_sys_%d" % nworkers, 100.0 * system / (user + system) if user + system else 0,
                 partial)
        if received and have_waits:
            self.add("lease_waits_%d" % nworkers, lease_waits / float(received), partial)
        if received and have_scripts:
            self.add("lease_scripts_%d" % nworkers, scripts / float(received), partial)
        listed = self.pg_counts(commits0, n, str(nworkers), "dispatch %s run %d" % (tag, run))
        if nworkers == 1:
            self.top_stmts[self.variant] = listed
        if nworkers == 1:
            for name in srv1:
                self.add("server_cpu_%s" % name, (srv1[name] - srv0[name]) * per1k, partial)
        log("dispatch %s run %d: %d jobs%s, %.0f jobs/s (runs table), %.0f jobs/s (wall), "
            "worker CPU %.3f s per 1,000 jobs, %.1f lease acquires refused by Redis per job received"
            % (tag, run, n, " (partial: run cap reached)" if partial else "", rate_db, rate_wall,
               (user + system) * per1k, lease_waits / float(received) if received else 0))

    # ----- latency -----

    def latency_run(self, rate, run):
        cfg = self.cfg
        # The broker stamps each message as it appends it (LogAppendTime), which
        # splits enqueue -> run row into Kafka's part and the worker's.
        topic = self.fresh("l%d" % run, {"message.timestamp.type": "LogAppendTime"})
        n = max(1, int(rate * cfg.latency_s))
        warm = int(rate * cfg.latency_warmup_s)
        arrivals = {}
        stop = threading.Event()
        listen_ready = threading.Event()

        def listen():
            with psycopg.connect(self.env["SBX_DATABASE_URL"], autocommit=True) as c:
                c.execute("LISTEN sbx_runs")
                listen_ready.set()
                while not stop.is_set():
                    for note in c.notifies(timeout=0.2):
                        t = time.time_ns() // 1000
                        # Only terminal statuses matter; parse those alone.
                        if '"succeeded"' in note.payload or '"failed"' in note.payload:
                            arrivals.setdefault(json.loads(note.payload)["job_id"], t)

        th = threading.Thread(target=listen, daemon=True)
        th.start()
        try:
            if not listen_ready.wait(10):
                raise RuntimeError("LISTEN client did not connect")
            w = self.worker(topic, "bench0")
            self.wait_worker_ready(w, READY_TIMEOUT_S)
            commits0 = self.pg_reset()
            t0 = time.monotonic()
            me0, w0 = os.times(), proc_cpu_s(w.pid)
            r = subprocess.run([cfg.pace, self.env["SBX_BROKERS"], topic, "%g" % rate, str(n),
                                str(cfg.projects), "l", str(warm)], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL,
                               timeout=(cfg.latency_s + cfg.latency_warmup_s) * 2 + 60)
            sent_s = time.monotonic() - t0
            me1, w1 = os.times(), proc_cpu_s(w.pid)
            # Warm-up and measured jobs go at one rate: the measured share of
            # the time is theirs.
            sent_s *= n / float(n + warm)
            if r.returncode != 0:
                raise RuntimeError("sbx-bench-pace exited %d: %s %s"
                                   % (r.returncode, r.stdout.strip(), r.stderr[-1000:]))
            late_ms = float(re.search(r"late_ms=([\d.]+)", r.stdout).group(1))
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while self.done_count() < n + warm and time.monotonic() < deadline:
                time.sleep(POLL_S)
            # The last NOTIFYs trail the commit that the count saw.
            time.sleep(0.5)
        finally:
            stop.set()
            th.join(5)
        self.stop_proc(w)
        st = worker_stats(w.log)
        span = (me1.elapsed - me0.elapsed) or 1e-9
        # At a steady rate the worker's one connection sends a round (one
        # transaction) whenever the last one is answered: the time per commit
        # is how long a statement waits for its round, at most twice that.
        self.pg_counts(commits0, n + warm, "lat", "latency%s run %d" % (vlabel(self.variant), run))
        commits = self.last_commits
        if commits:
            self.add("lat_commit_ms", 1000.0 * sent_s * (n + warm) / n / commits)
        # The bench's reader thread and the pacer share the 2 cores with what
        # they measure: their CPU says how much.
        self.add("lat_bench_cpu", 100.0 * (me1.user + me1.system + me1.children_user
                                           + me1.children_system - me0.user - me0.system
                                           - me0.children_user - me0.children_system) / span)
        self.add("lat_worker_cpu", 100.0 * (w1 - w0) / span)
        for p in (50, 99):
            if "intake_wait_p%d_ms" % p in st:
                self.add("part_take_%d" % p, float(st["intake_wait_p%d_ms" % p]))
        # Each database call's mean time queued behind the round in flight
        # and in its own round (worker/db.c; warm-up included).
        if st.get("db_calls"):
            self.add("part_db_wait", st["db_wait_us"] / 1000.0 / st["db_calls"])
            self.add("part_db_round", st["db_round_us"] / 1000.0 / st["db_calls"])
            self.add("db_calls_per_statement", st["db_calls"] / float(st["db_statements"] or 1))
        rows = self.q(
            "SELECT r.job_id, (r.spec->'metadata'->>'t_us')::bigint, e.to_status,"
            " (extract(epoch FROM min(e.at)) * 1e6)::bigint"
            " FROM sbx.runs r JOIN sbx.run_events e USING (job_id)"
            " WHERE e.to_status IN ('queued', 'provisioning', 'running')"
            " GROUP BY r.job_id, 2, e.to_status")
        at = {}
        for job_id, t, st, t_at in rows:
            at.setdefault(job_id, {"t": t})[st] = t_at
        inf = float("inf")
        stages = {"recorded": [], "lease": [], "running": [], "terminal": []}
        for i in range(n):
            job_id = "l-%d" % i
            a = at.get(job_id)
            if a is not None and job_id in arrivals:
                a["terminal"] = arrivals[job_id]
            for name, key in (("recorded", "queued"), ("lease", "provisioning"),
                              ("running", "running"), ("terminal", "terminal")):
                v = a.get(key) if a else None
                stages[name].append((v - a["t"]) / 1000.0 if v else inf)
        missing = sum(1 for x in stages["terminal"] if x == inf)
        for name, vals in self.latency_parts(topic, at, n).items():
            vals.sort()
            for p in (50, 99):
                self.add("part_%s_%s" % (name, p), percentile(vals, p), missing > 0)
        for name, vals in stages.items():
            vals.sort()
            for p in (50, 99, 99.9):
                self.add("lat_%s_%s" % (name, p), percentile(vals, p), missing > 0)
        self.add("lat_rate", n / sent_s)
        log("latency%s run %d: %d jobs at %.0f/s (producer at most %.1f ms behind), p50/p99/p99.9 "
            "ms: recorded %s, lease %s, running %s, terminal %s%s"
            % (vlabel(self.variant), run, n, n / sent_s, late_ms,
               *("/".join(fmt_num(percentile(stages[k], p)) for p in (50, 99, 99.9))
                 for k in ("recorded", "lease", "running", "terminal")),
               "; %d never reached the reader" % missing if missing else ""))

    def latency_parts(self, topic, at, n):
        """enqueue -> provider call per job, cut where a timestamp exists:
        the producer's stamp (t_us), the broker's append (LogAppendTime, read
        back with kcat), the queued, provisioning and running events. Each
        part's percentiles are over its own per-job durations, so they do not
        add up to the whole's."""
        appended = {}
        r = subprocess.run(["kcat", "-C", "-b", self.env["SBX_BROKERS"], "-t", topic, "-o",
                            "beginning", "-e", "-q", "-f", "%T\t%s\n"], capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            self.notes.append("latency parts: kcat exited %d; no Kafka append times."
                              % r.returncode)
        for line in r.stdout.splitlines():
            ts, _, payload = line.partition("\t")
            try:
                appended[json.loads(payload)["job_id"]] = int(ts) * 1000
            except (ValueError, KeyError):
                continue
        parts = {"kafka": [], "intake": [], "lease": [], "call": []}
        inf = float("inf")
        if self.cfg.keep:
            # Per job, for looking at where one slow job lost its time.
            path = os.path.join(os.path.dirname(self.cfg.out), "latency-%s.tsv" % topic)
            with open(path, "w") as f:
                f.write("job\tenqueued_us\tappended_us\tqueued_us\tprovisioning_us\trunning_us\n")
                for i in range(n):
                    a = at.get("l-%d" % i) or {}
                    f.write("\t".join(str(x if x is not None else "") for x in (
                        i, a.get("t"), appended.get("l-%d" % i), a.get("queued"),
                        a.get("provisioning"), a.get("running"))) + "\n")
            log("per-job marks in %s" % path)
        for i in range(n):
            job_id = "l-%d" % i
            a = at.get(job_id) or {}
            marks = [a.get("t"), appended.get(job_id), a.get("queued"), a.get("provisioning"),
                     a.get("running")]
            for name, t0, t1 in zip(parts, marks, marks[1:]):
                parts[name].append((t1 - t0) / 1000.0 if t0 and t1 else inf)
        return parts

    # ----- in flight -----

    def inflight_run(self, run):
        cfg = self.cfg
        n = cfg.inflight
        topic = self.fresh("i%d" % run)
        # One project per build: per-project exclusion must not serialise them.
        self.publish(topic, self.jobs_spec("i", n, n))
        t0 = time.monotonic()
        w = self.worker(topic, "bench0", {"SBX_BENCH_HOLD_MS": str(cfg.hold_ms),
                                          "SBX_MAX_INFLIGHT": str(max(cfg.max_inflight, 2 * n))})
        # All must run, then stay unchanged for idle_s, before the first ends.
        deadline = t0 + max(5.0, cfg.hold_ms / 1000.0 - cfg.idle_s - 2)
        running = 0
        while time.monotonic() < deadline:
            time.sleep(POLL_S / 2)
            if w.exited():
                raise RuntimeError("worker exited; log %s" % w.log)
            running = self.q("SELECT count(*) FROM sbx.runs WHERE status = 'running'")[0][0]
            if running >= n:
                break
        t_all = time.monotonic()
        if running < n:
            self.stop_proc(w, signal.SIGKILL, 5)
            self.notes.append("inflight run %d: only %d of %d running after %.0f s."
                              % (run, running, n, t_all - t0))
            log("inflight run %d: only %d of %d running after %.0f s" % (run, running, n, t_all - t0))
            return
        ramp_db = self.q("SELECT extract(epoch FROM max(started_at) - min(created_at)) "
                         "FROM sbx.runs")[0][0]
        rss = proc_rss_kb(w.pid)
        c0, m0 = proc_cpu_s(w.pid), time.monotonic()
        time.sleep(cfg.idle_s)
        c1, m1 = proc_cpu_s(w.pid), time.monotonic()
        rss = max(rss, proc_rss_kb(w.pid) or 0)
        still, ended = self.q("SELECT count(*) FILTER (WHERE status = 'running'),"
                              " count(*) FILTER (WHERE finished_at IS NOT NULL) FROM sbx.runs")[0]
        # The builds would hold their slots for the rest of hold_ms: kill the
        # worker rather than wait; the next run starts from a clean slate.
        self.stop_proc(w, signal.SIGKILL, 5)
        quiet = still == n and ended == 0
        self.add("inflight_ramp_wall", t_all - t0)
        self.add("inflight_ramp_db", float(ramp_db))
        self.add("inflight_rss", rss / 1024.0)
        self.add("inflight_cpu", (c1 - c0) / (m1 - m0) * 100.0, not quiet)
        log("inflight%s run %d: %d running after %.1f s (runs table %.1f s), RSS %.1f MiB, "
            "CPU %.2f%% over %.0f s%s" % (vlabel(self.variant), run, n, t_all - t0, ramp_db, rss / 1024.0,
                                        (c1 - c0) / (m1 - m0) * 100.0, m1 - m0,
                                        "" if quiet else " (not quiet: %d running, %d ended)"
                                        % (still, ended)))

    # ----- peers that drain like sbx-worker: River, the Node pipeline -----

    def peer_drain(self, key, what, argv, cwd, conn, started_sql, done_sql, span_sql, n):
        """What dispatch_run measures, for a peer's worker process: started
        after its jobs were enqueued, its CPU and the servers' from its first
        job (started_sql) until done_sql counts n, jobs/s from the peer's own
        table (span_sql: count, seconds) and by wall clock from its start."""
        cfg = self.cfg

        def q(sql):
            try:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    return cur.fetchall()
            except psycopg.errors.UndefinedTable:
                return []   # the peer creates its tables as it starts

        logf = os.path.join(self.tmp, "%s-%s.log" % (key, uuid.uuid4().hex[:6]))
        self.last_logs = [logf]
        t0 = time.monotonic()
        p = sbxsvc._Proc(argv, logf, env=dict(os.environ, **self.env), cwd=cwd)
        self.procs.append(p)
        cap = t0 + cfg.run_cap_s
        cpu0 = srv0 = None
        partial = False
        while True:
            if cpu0 is None:
                # The window opens at the last look before the first job: no
                # job's work falls before it, however fast the peer is.
                time.sleep(POLL_OPEN_S)
                before = proc_cpu_s(p.pid), self.server_cpu()
                if q(started_sql):
                    cpu0, srv0 = before
                    continue
            else:
                time.sleep(POLL_S)
            if p.exited():
                raise RuntimeError("%s exited; log %s:\n%s" % (what, logf, sbxsvc._tail(logf)))
            if cpu0 is None:
                if time.monotonic() > cap:
                    raise RuntimeError("%s started no job within %.0f s" % (what, cfg.run_cap_s))
                continue
            done = (q(done_sql) or [[0]])[0][0]
            if done >= n:
                break
            if time.monotonic() > cap:
                partial = True
                break
        t_end = time.monotonic()
        cpu1, srv1 = proc_cpu_s(p.pid), self.server_cpu()
        self.stop_proc(p)
        done, span = (q(span_sql) or [[0, None]])[0]
        if not done or not span or cpu0 is None:
            raise RuntimeError("%s finished no job within %.0f s" % (what, cfg.run_cap_s))
        per1k = 1000.0 / done
        self.add(key + "_rate_db", done / float(span), partial)
        self.add(key + "_rate_wall", done / (t_end - t0), partial)
        self.add(key + "_cpu", (cpu1 - cpu0) * per1k, partial)
        for name in srv1:
            self.add("%s_srv_%s" % (key, name), (srv1[name] - srv0[name]) * per1k, partial)
        log("%s: %d jobs%s, %.0f jobs/s (its table), %.0f jobs/s (wall), worker CPU %.3f s, "
            "PostgreSQL CPU %.3f s per 1,000 jobs"
            % (what, done, " (partial: run cap reached)" if partial else "", done / float(span),
               done / (t_end - t0), (cpu1 - cpu0) * per1k,
               (srv1["postgres"] - srv0["postgres"]) * per1k))

    def river_url(self):
        """River's own database on the same PostgreSQL (its migrations and
        tables apart from sbx's), created on first use."""
        if not self.q("SELECT 1 FROM pg_database WHERE datname = 'river'"):
            self.q("CREATE DATABASE river")
        u = urllib.parse.urlsplit(self.env["SBX_DATABASE_URL"])
        return urllib.parse.urlunsplit(u._replace(path="/river"))

    def river_run(self, mode, run):
        cfg = self.cfg
        if not os.access(cfg.river_bin, os.X_OK):
            raise RuntimeError("%s is not built (make bench builds it)" % cfg.river_bin)
        self.fresh("r%d" % run)
        url = self.river_url()
        r = subprocess.run([cfg.river_bin, "insert", url, str(cfg.jobs)], capture_output=True,
                           text=True, timeout=600, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("river-bench insert exited %d: %s" % (r.returncode, r.stderr[-2000:]))
        ins = json.loads(r.stdout.strip().splitlines()[-1])
        log("River %s run %d: %d jobs inserted (InsertMany) in %.1f s"
            % (mode, run, cfg.jobs, ins["insert_s"]))
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            # River's created_at is the insert, before its client starts (all
            # jobs are enqueued first, as for sbx): its table's span starts at
            # the first attempt, where sbx's starts at the first run row.
            self.peer_drain("river_" + mode, "River %s run %d" % (mode, run),
                            [cfg.river_bin, "work", url, mode], None, conn,
                            "SELECT 1 FROM river_job WHERE attempted_at IS NOT NULL LIMIT 1",
                            "SELECT count(*) FROM river_job WHERE state = 'completed'",
                            "SELECT count(*), extract(epoch FROM max(finalized_at) - "
                            "min(attempted_at)) FROM river_job WHERE state = 'completed'",
                            cfg.jobs)

    def nodepipe_run(self, run):
        cfg = self.cfg
        d = os.path.join(HERE, "nodepipe")
        if not os.path.isdir(os.path.join(d, "node_modules", "kafkajs")):
            raise RuntimeError("tests/bench/nodepipe/node_modules missing: run `npm ci` there "
                               "(make bench does)")
        topic = self.fresh("n%d" % run)
        self.q("DROP SCHEMA IF EXISTS nodepipe CASCADE")
        secs = self.publish(topic, self.jobs_spec("n", cfg.jobs, cfg.projects))
        log("Node pipeline run %d: %d jobs published in %.1f s" % (run, cfg.jobs, secs))
        self.peer_drain("nodepipe", "Node pipeline run %d" % run,
                        ["node", "pipe.mjs", self.env["SBX_BROKERS"], topic, "g-" + topic,
                         self.env["SBX_DATABASE_URL"], self.env["SBX_REDIS_URL"]], d, self.db,
                        "SELECT 1 FROM nodepipe.runs LIMIT 1",
                        "SELECT count(*) FROM nodepipe.runs WHERE finished_at IS NOT NULL",
                        "SELECT count(*), extract(epoch FROM max(finished_at) - min(created_at)) "
                        "FROM nodepipe.runs WHERE finished_at IS NOT NULL", cfg.jobs)

    # ----- BullMQ -----

    def bullmq_run(self, run):
        cfg = self.cfg
        d = os.path.join(HERE, "bullmq")
        if not os.path.isdir(os.path.join(d, "node_modules", "bullmq")):
            raise RuntimeError("tests/bench/bullmq/node_modules missing: run `npm ci` there "
                               "(make bench does)")
        redis_cmd(self.svc.svc["redis"].port, "FLUSHALL")
        timeout = cfg.run_cap_s + 120
        errf = os.path.join(self.tmp, "bullmq-%d.err" % run)
        with open(errf, "wb") as err:
            p = subprocess.Popen(["node", "bench.mjs", self.env["SBX_REDIS_URL"],
                                  "bench-%d-%s" % (run, uuid.uuid4().hex[:6]), str(cfg.jobs),
                                  str(cfg.bullmq_concurrency), str(cfg.run_cap_s)],
                                 cwd=d, stdout=subprocess.PIPE, stderr=err, text=True,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        watchdog = threading.Timer(timeout, p.kill)
        watchdog.start()
        srv0 = srv1 = None
        lines = []
        try:
            for line in p.stdout:
                if line.strip() == "draining":
                    srv0 = self.server_cpu()
                elif line.strip() == "drained":
                    srv1 = self.server_cpu()
                lines.append(line)
            rc = p.wait()
        finally:
            watchdog.cancel()
        if rc != 0 or not lines:
            raise RuntimeError("bullmq bench failed (%d): %s" % (rc, sbxsvc._tail(errf)))
        res = json.loads(lines[-1])
        if not res["done"]:
            raise RuntimeError("BullMQ finished no job")
        partial = bool(res["timed_out"])
        self.add("bullmq_rate", res["rate"], partial)
        self.add("bullmq_cpu", res["cpu_s"] * 1000.0 / res["done"], partial)
        if srv0 and srv1:
            for name in srv1:
                self.add("bullmq_srv_%s" % name, (srv1[name] - srv0[name]) * 1000.0 / res["done"],
                         partial)
        log("bullmq run %d: %d jobs added in %.1f s, drained %d at %.0f jobs/s, worker CPU %.3f s "
            "per 1,000 jobs%s" % (run, cfg.jobs, res["add_s"], res["done"], res["rate"],
                                  res["cpu_s"] * 1000.0 / res["done"],
                                  " (partial: run cap reached)" if partial else ""))

    # ----- callgrind -----

    def callgrind_run(self, run):
        cfg = self.cfg
        n = cfg.callgrind_jobs
        topic = self.fresh("c%d" % run)
        out = os.path.join(self.tmp, "callgrind-%s.out" % topic)
        wrap = ["valgrind", "--tool=callgrind", "--trace-children=no",
                "--callgrind-out-file=" + out]
        w = self.worker(topic, "bench0", wrap=wrap)
        self.wait_worker_ready(w, READY_TIMEOUT_CALLGRIND_S)
        # Count only the jobs: startup and pool registration are behind us.
        r = subprocess.run(["callgrind_control", "--zero", str(w.pid)], capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("callgrind_control --zero: %s%s" % (r.stdout, r.stderr))
        self.publish(topic, self.jobs_spec("c", n, cfg.projects))
        deadline = time.monotonic() + max(DRAIN_TIMEOUT_S, 0.5 * n)
        done = 0
        while time.monotonic() < deadline:
            time.sleep(POLL_S)
            done = self.done_count()
            if done >= n:
                break
        r = subprocess.run(["callgrind_control", "--dump=jobs", str(w.pid)], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("callgrind_control --dump: %s%s" % (r.stdout, r.stderr))
        dump = out + ".1"
        wait_until = time.monotonic() + 60
        while not os.path.exists(dump) and time.monotonic() < wait_until:
            time.sleep(0.2)
        self.stop_proc(w, signal.SIGTERM, 60)
        total = None
        with open(dump) as f:
            for line in f:
                if line.startswith("totals:") or (total is None and line.startswith("summary:")):
                    total = int(line.split()[1])
        if not total or not done:
            raise RuntimeError("callgrind: no totals in %s or no job done" % dump)
        self.add("callgrind_ir", total / float(done), done < n)
        log("callgrind%s run %d: %d jobs, %d Ir in the worker, %.0f Ir per job"
            % (vlabel(self.variant), run, done, total, total / float(done)))
        if self.variant not in self.top15:
            self.top15[self.variant] = callgrind_top(dump, 15)

    # ----- the whole -----

    def attempt(self, what, fn, i):
        if self.over_budget("%s run %d" % (what, i)):
            return False
        self.last_logs = []
        try:
            fn(i)
        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError,
                psycopg.Error) as e:
            log("%s run %d failed: %s" % (what, i, e))
            for path in self.last_logs:
                log("--- last lines of %s ---\n%s" % (path, sbxsvc._tail(path, 15)))
            self.notes.append("%s run %d failed: %s" % (what, i, str(e).splitlines()[0]))
        return True

    def repeat(self, what, fn, runs):
        for i in range(1, runs + 1):
            if not self.attempt(what, fn, i):
                return

    def use_variant(self, name):
        self.variant = name
        self.worker_bin = dict(self.cfg.variants)[name]

    def each_variant(self, what, fn, runs):
        """fn's runs with each variant's worker, taking turns (run 1 of every
        variant, then run 2, ...) so that a drift in the machine's load over
        the bench weighs on all of them alike."""
        try:
            for i in range(1, runs + 1):
                for name, _ in self.cfg.variants:
                    self.use_variant(name)
                    if not self.attempt(what + (" [%s]" % name if name else ""), fn, i):
                        return
        finally:
            self.variant = None

    def run(self):
        cfg = self.cfg
        # The first jobs after the servers start are slower (the broker's JIT,
        # PostgreSQL's caches): a short unrecorded run goes first.
        self.use_variant(cfg.variants[0][0])
        self.repeat("warm-up", lambda i: self.dispatch_run(1, 0, min(cfg.jobs, WARMUP_JOBS), None), 1)
        self.variant = None
        if "dispatch" in cfg.only:
            self.each_variant("dispatch 1 worker", lambda i: self.dispatch_run(1, i), cfg.runs)
            self.each_variant("dispatch 2 workers", lambda i: self.dispatch_run(2, i), cfg.runs)
        if "latency" in cfg.only:
            rate = cfg.latency_rate
            if not rate:
                # One offered rate for every variant (half the first one's
                # dispatch), so their latencies compare.
                first = self.vresults[cfg.variants[0][0]]
                rates = [v for v, _ in first.get("dispatch_db_1", [])]
                rate = statistics.median(rates) / 2 if rates else 100.0
                if not rates:
                    self.notes.append("latency: no dispatch figure to halve; offered 100 jobs/s "
                                      "(set BENCH_LATENCY_RATE).")
            self.each_variant("latency", lambda i: self.latency_run(rate, i), cfg.runs)
        if "inflight" in cfg.only:
            self.each_variant("inflight", self.inflight_run, cfg.runs)
        if "river" in cfg.only:
            self.repeat("River tuned", lambda i: self.river_run("tuned", i), cfg.runs)
            self.repeat("River defaults", lambda i: self.river_run("defaults", i), cfg.runs)
        if "nodepipe" in cfg.only:
            self.repeat("Node pipeline", self.nodepipe_run, cfg.runs)
        if "bullmq" in cfg.only:
            self.repeat("bullmq", self.bullmq_run, cfg.runs)
        if "callgrind" in cfg.only:
            self.each_variant("callgrind", self.callgrind_run, cfg.callgrind_runs)


def callgrind_top(path, k):
    """The k functions with the most inclusive Ir, as callgrind_annotate
    prints them: [(ir, percent, name)]. Frames that hold the whole program
    (libc's start, main, the loop: WHOLE_PROGRAM_PCT or more) say nothing and
    are left out; a function listed twice (with and without its object, as
    callgrind_annotate does for inlined file names) counts once."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=yes", path], capture_output=True,
                       text=True, timeout=120)
    top, seen = [], set()
    for line in r.stdout.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*\S)\s*$", line)
        if not m or "PROGRAM TOTALS" in m.group(3) or float(m.group(2)) >= WHOLE_PROGRAM_PCT:
            continue
        name = re.sub(r"\s*\[[^]]*\]$", "", m.group(3)).replace(REPO + "/", "")
        short = name.rsplit("/", 1)[-1]
        if short in seen:
            continue
        seen.add(short)
        top.append((int(m.group(1).replace(",", "")), float(m.group(2)), name))
        if len(top) == k:
            break
    return top


# --- the table -----------------------------------------------------------------------

def fmt_num(v):
    if v is None:
        return "-"
    if v == float("inf"):
        return "inf"
    a = abs(v)
    if a >= 100000:
        return "{:,.0f}".format(v)
    if a >= 100:
        return "%.0f" % v
    if a >= 10:
        return "%.1f" % v
    if a >= 1:
        return "%.2f" % v
    return "%.3f" % v


def median_of(results, key):
    vals = results.get(key) or []
    xs = [v for v, _ in vals if v is not None]
    if not xs:
        return None, 0, False
    return statistics.median(xs), len(xs), any(p for _, p in vals)


# The peers that drain like sbx-worker (peer_drain): result key prefix, name.
PEERS = [("river_tuned", "River tuned"), ("river_defaults", "River defaults"),
         ("nodepipe", "Node pipeline")]

# (key, figure, unit, peer key or None, how the ratio reads)
ROWS = [
    ("dispatch_db_1", "dispatch, 1 worker (runs table)", "jobs/s", "river_tuned_rate_db",
     "x River tuned"),
    ("dispatch_wall_1", "dispatch, 1 worker (wall clock from start)", "jobs/s", None, ""),
    ("worker_cpu_1", "worker CPU per 1,000 jobs, 1 worker", "CPU s", "river_tuned_cpu",
     "x River tuned"),
    ("worker_sys_1", "worker CPU in the kernel (system time), 1 worker", "%", None, ""),
    ("lease_waits_1", "lease acquires refused by Redis (project busy, no slot) per job, 1 worker",
     "per job", None, ""),
    ("lease_scripts_1", "Redis lease script calls per job (batched; pool registration included), "
     "1 worker", "per job", None, ""),
    ("pg_stmts_1", "PostgreSQL statements per job (top level, pg_stat_statements), 1 worker",
     "per job", None, ""),
    ("pg_nested_1", "PostgreSQL statements per job nested in the sbx.* functions, 1 worker",
     "per job", None, ""),
    ("pg_exec_ms_1", "PostgreSQL executor time per job (top-level statements), 1 worker", "ms",
     None, ""),
    ("pg_commits_1", "PostgreSQL commits per job, 1 worker", "per job", None, ""),
    ("pg_wal_sync_1", "PostgreSQL WAL flushes (fsync) per job, 1 worker", "per job", None, ""),
    ("server_cpu_postgres", "PostgreSQL CPU per 1,000 jobs, 1 worker", "CPU s",
     "river_tuned_srv_postgres", "x River tuned"),
    ("server_cpu_redis", "Redis CPU per 1,000 jobs, 1 worker", "CPU s", None, ""),
    ("server_cpu_kafka", "Kafka broker CPU per 1,000 jobs, 1 worker", "CPU s", None, ""),
    ("dispatch_db_2", "dispatch, 2 workers (runs table)", "jobs/s", "dispatch_db_1", "x 1 worker"),
    ("dispatch_wall_2", "dispatch, 2 workers (wall clock from start)", "jobs/s", "dispatch_wall_1",
     "x 1 worker"),
    ("worker_cpu_2", "worker CPU per 1,000 jobs, 2 workers", "CPU s", "worker_cpu_1", "x 1 worker"),
    ("pg_stmts_2", "PostgreSQL statements per job (top level), 2 workers", "per job", "pg_stmts_1",
     "x 1 worker"),
    ("pg_commits_2", "PostgreSQL commits per job, 2 workers", "per job", "pg_commits_1",
     "x 1 worker"),
    ("pg_wal_sync_2", "PostgreSQL WAL flushes (fsync) per job, 2 workers", "per job",
     "pg_wal_sync_1", "x 1 worker"),
    ("lat_rate", "latency: offered rate (half of 1-worker dispatch)", "jobs/s", None, ""),
    ("lat_worker_cpu", "latency: worker CPU at that rate", "% of a core", None, ""),
    ("lat_bench_cpu", "latency: the bench's own CPU meanwhile (LISTEN reader, pacer)",
     "% of a core", None, ""),
    ("pg_stmts_lat", "latency: PostgreSQL statements per job (top level)", "per job", None, ""),
    ("pg_exec_ms_lat", "latency: PostgreSQL executor time per job (top level)", "ms", None, ""),
    ("pg_commits_lat", "latency: PostgreSQL commits (worker's rounds) per job", "per job", None,
     ""),
    ("lat_commit_ms", "latency: time per commit (run's time / commits; the worker's round "
     "time when rounds go back to back)", "ms", None, ""),
    ("lat_recorded_50", "latency enqueue->run row (queued) p50", "ms", None, ""),
    ("lat_recorded_99", "latency enqueue->run row (queued) p99", "ms", None, ""),
    ("lat_recorded_99.9", "latency enqueue->run row (queued) p99.9", "ms", None, ""),
    ("lat_lease_50", "latency enqueue->lease p50", "ms", None, ""),
    ("lat_lease_99", "latency enqueue->lease p99", "ms", None, ""),
    ("lat_lease_99.9", "latency enqueue->lease p99.9", "ms", None, ""),
    ("lat_running_50", "latency enqueue->provider started p50", "ms", None, ""),
    ("lat_running_99", "latency enqueue->provider started p99", "ms", None, ""),
    ("lat_running_99.9", "latency enqueue->provider started p99.9", "ms", None, ""),
    ("lat_terminal_50", "latency enqueue->terminal seen (LISTEN) p50", "ms", None, ""),
    ("lat_terminal_99", "latency enqueue->terminal seen (LISTEN) p99", "ms", None, ""),
    ("lat_terminal_99.9", "latency enqueue->terminal seen (LISTEN) p99.9", "ms", None, ""),
    ("part_kafka_50", "latency part: enqueue->Kafka append p50", "ms", None, ""),
    ("part_kafka_99", "latency part: enqueue->Kafka append p99", "ms", None, ""),
    ("part_take_50", "latency part: Kafka append->worker took it (its intake wait, warm-up "
     "included) p50", "ms", None, ""),
    ("part_take_99", "latency part: Kafka append->worker took it (its intake wait, warm-up "
     "included) p99", "ms", None, ""),
    ("part_db_wait", "latency part: a database call queued behind the round in flight (mean)",
     "ms", None, ""),
    ("part_db_round", "latency part: a database call's own round (mean)", "ms", None, ""),
    ("db_calls_per_statement", "latency run: database calls per statement sent (merged calls, "
     "worker/db.c)", "ratio", None, ""),
    ("part_intake_50", "latency part: Kafka append->run row (fetch, intake, record) p50", "ms",
     None, ""),
    ("part_intake_99", "latency part: Kafka append->run row (fetch, intake, record) p99", "ms",
     None, ""),
    ("part_lease_50", "latency part: run row->lease (queued->provisioning) p50", "ms", None, ""),
    ("part_lease_99", "latency part: run row->lease (queued->provisioning) p99", "ms", None, ""),
    ("part_call_50", "latency part: lease->provider call (provisioning->running) p50", "ms",
     None, ""),
    ("part_call_99", "latency part: lease->provider call (provisioning->running) p99", "ms",
     None, ""),
    ("inflight_ramp_wall", "in flight: until all {inflight} running (wall)", "s", None, ""),
    ("inflight_ramp_db", "in flight: until all {inflight} running (runs table)", "s", None, ""),
    ("inflight_rss", "in flight: worker RSS with {inflight} running", "MiB", None, ""),
    ("inflight_cpu", "in flight: worker CPU while {inflight} wait", "% of a core", None, ""),
] + [row for key, name in PEERS for row in (
    (key + "_rate_db", name + " dispatch (its own table)", "jobs/s", None, ""),
    (key + "_rate_wall", name + " dispatch (wall clock from start)", "jobs/s", None, ""),
    (key + "_cpu", name + " worker CPU per 1,000 jobs", "CPU s", None, ""),
    (key + "_srv_postgres", name + " PostgreSQL CPU per 1,000 jobs", "CPU s", None, ""),
    (key + "_srv_redis", name + " Redis CPU per 1,000 jobs", "CPU s", None, ""),
    (key + "_srv_kafka", name + " Kafka broker CPU per 1,000 jobs", "CPU s", None, ""))] + [
    ("bullmq_rate", "BullMQ dispatch, 1 worker", "jobs/s", None, ""),
    ("bullmq_cpu", "BullMQ worker CPU per 1,000 jobs", "CPU s", None, ""),
    ("bullmq_srv_redis", "BullMQ Redis CPU per 1,000 jobs", "CPU s", None, ""),
    ("callgrind_ir", "worker instructions per job ({callgrind_jobs} jobs, callgrind)", "Ir/job",
     None, ""),
]


# sbx (1 worker) against each peer, as ratios of the medians:
# (what, sbx key, peer key suffix for PEERS, BullMQ's key or None).
RATIOS = [("dispatch jobs/s (tables)", "dispatch_db_1", "_rate_db", "bullmq_rate"),
          ("dispatch jobs/s (wall clock)", "dispatch_wall_1", "_rate_wall", None),
          ("worker CPU per 1,000 jobs", "worker_cpu_1", "_cpu", "bullmq_cpu"),
          ("PostgreSQL CPU per 1,000 jobs", "server_cpu_postgres", "_srv_postgres", None)]


def ratio_rows(results, me_name="sbx"):
    out = []
    peers = PEERS + [("bullmq", "BullMQ")]
    for what, mine, suffix, bullmq in RATIOS:
        me, _, mp = median_of(results, mine)
        for key, name in peers:
            other = bullmq if key == "bullmq" else key + suffix
            if other is None or not me:
                continue
            them, runs, tp = median_of(results, other)
            if them:
                out.append(("%s / %s: %s" % (me_name, name, what), "ratio",
                            "%.2f%s" % (me / them, "*" if mp or tp else ""), str(runs), ""))
    return out


def is_sbx(key):
    return not key.startswith(PEER_PREFIXES)


def fig_name(cfg, fig):
    return fig.format(inflight="{:,}".format(cfg.inflight),
                      callgrind_jobs="{:,}".format(cfg.callgrind_jobs))


def rows_for(cfg, results, rows, label="", dash=False):
    """dash: a row this variant has no figure for (an older worker without
    that stats field, a failed run) shows "-" rather than nothing."""
    out = []
    for key, fig, unit, peer, how in rows:
        med, runs, partial = median_of(results, key)
        if med is None:
            if dash:
                out.append((label + fig_name(cfg, fig), unit, "-", "0", ""))
            continue
        ratio = ""
        if peer:
            pm, _, _ = median_of(results, peer)
            if pm:
                ratio = "%.2f %s" % (med / pm, how)
        out.append((label + fig_name(cfg, fig), unit, fmt_num(med) + ("*" if partial else ""),
                    str(runs), ratio))
    return out


def table_rows(cfg, bench):
    names = [name for name, _ in cfg.variants]
    if names == [""]:
        merged = dict(bench.results, **bench.vresults[""])
        return rows_for(cfg, merged, ROWS) + ratio_rows(merged)
    # One row set per variant, then the peers, then each variant against the
    # first, then the last variant against the peers.
    sbx_rows = [r for r in ROWS if is_sbx(r[0]) and
                any(median_of(bench.vresults[v], r[0])[0] is not None for v in names)]
    out = []
    for v in names:
        out += rows_for(cfg, dict(bench.results, **bench.vresults[v]), sbx_rows, v + ": ", True)
    out += rows_for(cfg, bench.results, [r for r in ROWS if not is_sbx(r[0])])
    base = names[0]
    for v in names[1:]:
        for key, fig, _, _, _ in sbx_rows:
            a, _, ap = median_of(bench.vresults[base], key)
            b, runs, bp = median_of(bench.vresults[v], key)
            if a and a > 0 and b is not None and b >= 0:
                out.append(("%s / %s: %s" % (v, base, fig_name(cfg, fig)), "ratio",
                            "%.2f%s" % (b / a, "*" if ap or bp else ""), str(runs), ""))
    last = names[-1]
    return out + ratio_rows(dict(bench.results, **bench.vresults[last]), "sbx %s" % last)


def print_table(rows):
    head = ("figure", "unit", "median", "runs", "ratio")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]
    line = "  ".join("%-*s" % (widths[i], head[i]) for i in range(5))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(("%*s" if i in (2, 3) else "%-*s") % (widths[i], r[i]) for i in range(5)))


def vlabel(v):
    return " [%s]" % v if v else ""


def write_markdown(path, cfg, m, rows, bench, started):
    lines = ["# sbx benchmark results (`make bench`)", "",
             "Written by tests/bench/bench.py; see its top comment for what each figure measures.",
             "",
             "- date: %s" % started.strftime("%Y-%m-%d %H:%M UTC"),
             "- machine: %d CPUs (%s), %.1f GiB memory, Linux %s"
             % (m["nproc"], m["cpu"], m["mem_gib"], m["kernel"]),
             "- source: %s" % m["rev"],
             "- load average (1 min) at start: %.2f, at end: %.2f (anything else running on "
             "the machine competes with the worker and the servers)" % (m["load"], os.getloadavg()[0]),
             "- config: %s" % cfg.describe()]
    if [v for v, _ in cfg.variants] != [""]:
        lines += ["- worker variants (BENCH_SBX_VARIANTS; ratios are of each to the first): %s"
                  % "; ".join("%s = `%s` (%s)" % (v, path, bench.versions.get(v, "?"))
                              for v, path in cfg.variants)]
    lines += ["",
             "| figure | unit | median | runs | ratio |",
             "| --- | --- | ---: | ---: | --- |"]
    lines += ["| %s |" % " | ".join(r) for r in rows]
    if any(r[2].endswith("*") for r in rows):
        lines += ["", "`*` at least one run was partial (stopped at its time cap, or a job was "
                  "never seen): the figure is over what it measured."]
    lines += ["", "What BullMQ does not do: " + BULLMQ_NOT, "",
              "What River does not do: " + RIVER_NOT]
    if bench.notes:
        lines += ["", "Notes:", ""] + ["- " + n for n in bench.notes]
    for v, listed in bench.top_stmts.items():
        lines += ["", "PostgreSQL, top statements of the worker%s by total executor time "
                  "(pg_stat_statements, top level, the last 1-worker dispatch run):" % vlabel(v),
                  "", "| calls per job | ms per call | share | statement |",
                  "| ---: | ---: | ---: | --- |"]
        lines += ["| %.2f | %.3f | %.1f %% | `%s` |" % (a, b, c, d[:200].replace("|", "\\|"))
                  for a, b, c, d in listed]
    for v, top in bench.top15.items():
        lines += ["", "Worker%s, top 15 functions by inclusive Ir (callgrind, %s jobs; frames "
                  "holding the whole program, such as main and the loop, left out):"
                  % (vlabel(v), "{:,}".format(cfg.callgrind_jobs)), "",
                  "| Ir | % | function |", "| ---: | ---: | --- |"]
        lines += ["| {:,} | {:.1f} | `{}` |".format(ir, pct, name) for ir, pct, name in top]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _on_term(signum, frame):
    raise SystemExit(128 + signum)


def main():
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    cfg = Config()
    started = datetime.datetime.now(datetime.timezone.utc)
    m = machine()
    log("%d CPUs (%s), %.1f GiB, load %.2f; %s"
        % (m["nproc"], m["cpu"], m["mem_gib"], m["load"], cfg.describe()))
    bench = Bench(cfg)
    try:
        bench.start()
        bench.run()
    except KeyboardInterrupt:
        raise SystemExit(130)
    finally:
        bench.stop()
    rows = table_rows(cfg, bench)
    if not rows:
        log("no figure was measured")
        for n in bench.notes:
            log(n)
        return 1
    print()
    print_table(rows)
    print()
    if any(r[2].endswith("*") for r in rows):
        print("* at least one run was partial (time cap reached or a job never seen).")
    print("What BullMQ does not do: " + BULLMQ_NOT)
    print("What River does not do: " + RIVER_NOT)
    for n in bench.notes:
        print("note: " + n)
    for v, listed in bench.top_stmts.items():
        print()
        print("PostgreSQL, top statements of the worker%s by executor time (last 1-worker "
              "dispatch run): calls per job, ms per call, share" % vlabel(v))
        for a, b, c, d in listed:
            print("  %6.2f %9.3f %5.1f%%  %s" % (a, b, c, d[:110]))
    for v, top in bench.top15.items():
        print()
        print("worker%s, top 15 functions by inclusive Ir (callgrind; main and the loop left out):"
              % vlabel(v))
        for ir, pct, name in top:
            print("  %15s %5.1f%%  %s" % ("{:,}".format(ir), pct, name))
    write_markdown(cfg.out, cfg, m, rows, bench, started)
    log("table written to %s; total %.0f s" % (os.path.relpath(cfg.out, REPO), bench.elapsed()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
