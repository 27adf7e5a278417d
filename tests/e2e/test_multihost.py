"""test_multihost.py — three worker "hosts", one dies, the others take over.

Each host is a network namespace of its own with its own address
(198.51.100.11-13, a documentation range) and one sbx-worker (local
provider, two slots, its own node name and slot uids). Kafka, Redis and
PostgreSQL run in a fourth namespace, bound to 198.51.100.1 on a bridge the
hosts reach through veth pairs: the workers talk to them over a real
network, as from other machines, and Kafka advertises that address. Nothing
here sends traffic anywhere but into namespaces this test creates; the test
itself reads PostgreSQL through its unix socket and runs `sbx` inside the
services' namespace.

The death of host 2 is a real one: its veth pair is deleted first, so no
FIN or RST ever leaves it, then every process of the host (the namespace's,
their descendants, the builds running as its slot uids) is SIGKILLed. Kafka
notices only when the session times out; Redis still holds the dead host's
leases until they expire. The test then checks that the other two take its
partitions and its unfinished jobs, that every job ends exactly once
(succeeded), that no project ever had two builds at once, and prints the
takeover times: kill -> its partitions owned by the others -> each build it
ran running again elsewhere. Last, host 2 comes back (a new link, its
worker started again): it clears the workspaces its death left mounted and
gets a share of the partitions again.

Needs root (ip netns); skipped under `make asan` (its build adds nothing a
takeover would show, and the second Kafka costs the ASan pass ~40 s).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import PG, REPO, build_dir, uid_base, wait_until

NET = "198.51.100"          # TEST-NET-2 (RFC 5737): never routed anywhere
SVC_ADDR = NET + ".1"
HOSTS = 3
VICTIM = 2                   # the host that dies
PARTITIONS = 9               # three per worker
JOBS_PER_PROJECT = 3
BUILD_S = 4
# Enough slots that the survivors can run every project at once, so the
# times below measure the takeover, not a queue for capacity.
SLOTS = 5
# Short, to keep the test short; SBX_MH_SESSION_MS=10000 SBX_MH_LEASE_TTL_MS=30000
# measures the worker's defaults.
SESSION_MS = int(os.environ.get("SBX_MH_SESSION_MS", "6000"))
LEASE_TTL_MS = int(os.environ.get("SBX_MH_LEASE_TTL_MS", "6000"))
TERMINAL = ("succeeded", "failed", "timed_out", "canceled", "dead_lettered")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif("asan" in build_dir().name, reason="nothing a takeover shows under ASan"),
    pytest.mark.skipif(not shutil.which("nsenter"), reason="needs nsenter (util-linux)"),
]


def sh(*argv, check=True, timeout=30):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(map(str, argv)), r.returncode,
                                                r.stderr.strip()))
    return r.stdout


def in_ns(ns, *argv):
    """argv run inside namespace ns's network only (not `ip netns exec`,
    which also remounts /sys and would hide the cgroup hierarchy)."""
    return ["nsenter", "--net=/run/netns/" + ns, "--"] + [str(a) for a in argv]


def murmur2(data):
    """Kafka's key hash (Java client, librdkafka's murmur2_random)."""
    m, h = 0x5BD1E995, (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    n4 = len(data) // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = data[4 * n4:]
    if len(rest) >= 3:
        h ^= rest[2] << 16
    if len(rest) >= 2:
        h ^= rest[1] << 8
    if rest:
        h ^= rest[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(key, n):
    return (murmur2(key.encode()) & 0x7FFFFFFF) % n


def projects_one_per_partition(tag, n):
    """Project ids whose messages land one on each of n partitions, so every
    host has builds to lose whatever partitions the group gives it."""
    got = {}
    i = 0
    while len(got) < n:
        p = "mh-%s-%d" % (tag, i)
        got.setdefault(partition_of(p, n), p)
        i += 1
    return [got[k] for k in sorted(got)]


# --- the network ---------------------------------------------------------------

class Net:
    """The namespaces, bridge and veth pairs; remove() undoes all of it."""

    def __init__(self):
        self.tag = "%d" % os.getpid()
        self.svc = "sbxmh-%s-svc" % self.tag
        self.hosts = ["sbxmh-%s-h%d" % (self.tag, i) for i in range(1, HOSTS + 1)]
        self.made = []

    def addr(self, i):
        return "%s.%d" % (NET, 10 + i)

    def up(self):
        sweep_stale()
        for ns in [self.svc] + self.hosts:
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.svc, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.svc, "addr", "add", SVC_ADDR + "/24", "dev", "br0")
        sh("ip", "-n", self.svc, "link", "set", "br0", "up")
        for i in range(1, HOSTS + 1):
            self.link(i)

    def link(self, i):
        """Host i's veth pair, one end on the bridge, eth0 with its address."""
        ns = self.hosts[i - 1]
        # Made inside the services' namespace, one end moved to the host.
        sh("ip", "-n", self.svc, "link", "add", "vh%d" % i, "type", "veth",
           "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.svc, "link", "set", "vh%d" % i, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", self.addr(i) + "/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def cut(self, i):
        """Deletes host i's veth pair: from now on nothing it sends arrives."""
        sh("ip", "-n", self.svc, "link", "del", "vh%d" % i)

    def remove(self):
        for ns in reversed(self.made):
            kill_namespace(ns, ())
            sh("ip", "netns", "del", ns, check=False)
        self.made = []


def sweep_stale():
    """Removes the namespaces of an earlier run whose pytest was killed
    before its cleanup (the name carries its pid)."""
    for line in sh("ip", "netns", "list", check=False).splitlines():
        m = re.match(r"(sbxmh-(\d+)-\S+)", line)
        if not m or os.path.exists("/proc/" + m.group(2)):
            continue
        kill_namespace(m.group(1), ())
        sh("ip", "netns", "del", m.group(1), check=False)


def mounts_under(path):
    """Mount points below path (a dead host's build workspaces are tmpfs)."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p.startswith(str(path) + "/")]


def remove_leftovers(work, uids):
    """What a host SIGKILLed and never restarted leaves on this machine:
    workspace mounts and the sandboxes' cgroups of its slot uids."""
    for m in mounts_under(work):
        subprocess.run(["umount", "-l", m], capture_output=True)
    for root in Path("/sys/fs/cgroup").glob("*/sbx/*-u*"):
        if int(root.name.rsplit("-u", 1)[1]) in uids:
            for d in sorted(root.rglob("*"), key=lambda p: -len(p.parts)) + [root]:
                if d.is_dir():
                    try:
                        d.rmdir()
                    except OSError:
                        pass


def _procs():
    """{pid: (ppid, uid)} of every process now."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            uid = os.stat("/proc/" + d).st_uid
        except (OSError, ValueError, IndexError):
            continue
        out[int(d)] = (ppid, uid)
    return out


def host_pids(ns, uids):
    """The processes of a host: those in namespace ns, their descendants
    (builds live in namespaces of their own) and any of the slot uids."""
    try:
        roots = {int(p) for p in sh("ip", "netns", "pids", ns, check=False).split()}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        roots = set()
    procs = _procs()
    found = set(roots) | {pid for pid, (_, uid) in procs.items() if uid in uids}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    found.discard(os.getpid())
    return found


def kill_namespace(ns, uids):
    """SIGKILLs every process of the host until none is left (bounded)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = host_pids(ns, uids)
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return not host_pids(ns, uids)


# --- services in their namespace --------------------------------------------------

class Services:
    """sbxsvc.py in the services' namespace, bound to SVC_ADDR."""

    def __init__(self, net, tmp):
        self.log = tmp / "sbxsvc.log"
        self.out = tmp / "sbxsvc.env"
        # The namespace has no way out: fetch Kafka's jars (if not cached
        # yet) from here first.
        r = subprocess.run(["sh", REPO / "tests/services/fetch-kafka.sh"], capture_output=True,
                           text=True, timeout=900, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            pytest.fail("fetch-kafka.sh failed:\n%s" % r.stderr[-3000:], pytrace=False)
        with open(self.log, "wb") as err, open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                in_ns(net.svc, sys.executable, REPO / "tests/services/sbxsvc.py", "env",
                      "--host", SVC_ADDR),
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        self.env = {}
        self.pg_sock = None

    def wait(self, timeout):
        def ready():
            if self.proc.poll() is not None:
                pytest.fail("sbxsvc exited %s:\n%s" % (self.proc.returncode,
                                                        self.log.read_text()[-3000:]),
                            pytrace=False)
            text = self.out.read_text()
            return "serving until interrupted" in text and text
        text = wait_until(ready, timeout, "Kafka, Redis and PostgreSQL on %s" % SVC_ADDR)
        for line in text.splitlines():
            m = re.match(r"export (\w+)=(.*)", line)
            if m:
                self.env[m.group(1)] = m.group(2)
            m = re.match(r"# postgres log: (.*)\.log", line)
            if m:
                self.pg_sock = m.group(1) + "/sock"
        port = self.env["SBX_DATABASE_URL"].rsplit(":", 1)[1].split("/")[0]
        # The test reads PostgreSQL through its socket file: no route needed.
        return PG("postgresql://postgres@/sbx?host=%s&port=%s" % (self.pg_sock, port))

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


# --- the test ------------------------------------------------------------------------

def test_host_dies_others_take_over(sbx_bin, tmp_path):
    net = Net()
    svc = pg = None
    workers = []
    logs = {}
    work = Path(tempfile.mkdtemp(prefix="sbx-mh-work-"))
    os.chmod(work, 0o755)
    uid_ranges = {i: set(range(uid_base(62000 + 100 * i), uid_base(62000 + 100 * i) + SLOTS))
                  for i in range(1, HOSTS + 1)}
    try:
        net.up()
        svc = Services(net, tmp_path)
        pg = svc.wait(240)
        env = dict(os.environ)
        env.update(svc.env, SBX_TOPIC="mh.jobs", SBX_DLQ_TOPIC="mh.jobs.dlq")

        def sbx(*args, timeout=60):
            r = subprocess.run(in_ns(net.svc, sbx_bin / "sbx", *args), env=env, timeout=timeout,
                               capture_output=True, text=True, stdin=subprocess.DEVNULL)
            assert r.returncode == 0, "sbx %s: %d\n%s%s" % (args, r.returncode, r.stdout, r.stderr)
            return r.stdout

        sbx("migrate")
        out = sbx("topics", "create", "--partitions", PARTITIONS, "--retention", "1d")
        assert "mh.jobs: created with %d partitions" % PARTITIONS in out, out

        # --- three hosts, one worker each ---
        def start_worker(i):
            wenv = dict(env, SBX_GROUP="mh", SBX_WORKER_ID="host%d" % i, SBX_NODE="host%d" % i,
                        SBX_LOCAL_SLOTS=str(SLOTS), SBX_UID_BASE=str(min(uid_ranges[i])),
                        SBX_WORK_DIR=str(work / ("h%d" % i)),
                        SBX_LEASE_TTL_MS=str(LEASE_TTL_MS),
                        SBX_KAFKA_SESSION_TIMEOUT_MS=str(SESSION_MS),
                        SBX_ADMIN_LISTEN="%s:9464" % net.addr(i), SBX_LOG_LEVEL="info")
            (work / ("h%d" % i)).mkdir(mode=0o755, exist_ok=True)
            logs[i] = tmp_path / ("host%d.log" % i)
            with open(logs[i], "ab") as f:
                return subprocess.Popen(in_ns(net.hosts[i - 1], sbx_bin / "sbx-worker"), env=wenv,
                                        stdout=f, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        for i in range(1, HOSTS + 1):
            workers.append(start_worker(i))

        def assigned(i, since=0):
            """Host i's latest assignment (log from byte since), or None."""
            text = logs[i].read_bytes()[since:].decode(errors="replace")
            got = re.findall(r"assigned \d+ partitions: ([\d,]*)", text)
            return {int(p) for p in got[-1].split(",") if p} if got else None

        def all_assigned():
            a = {i: assigned(i) for i in logs}
            for i, w in enumerate(workers, 1):
                assert w.poll() is None, "host%d exited:\n%s" % (i, logs[i].read_text()[-3000:])
            parts = [p for s in a.values() if s for p in s]
            return len(parts) == PARTITIONS and all(a.values()) and a
        owners = wait_until(all_assigned, 90, "three hosts sharing the partitions")
        print("partitions before: %s" % {"host%d" % i: sorted(s) for i, s in owners.items()})

        # --- jobs: one project per partition, several jobs each ---
        tag = uuid.uuid4().hex[:6]
        projects = projects_one_per_partition(tag, PARTITIONS)
        jobs = []
        for k in range(JOBS_PER_PROJECT):
            for p in projects:
                jid = "mh-%s-%s-%d" % (tag, p.rsplit("-", 1)[1], k)
                jobs.append({"job_id": jid, "project_id": p,
                             "script": "echo start=$(date +%%s%%N); sleep %d; "
                                       "echo end=$(date +%%s%%N)" % BUILD_S})
        (tmp_path / "jobs.ndjson").write_text("".join(json.dumps(j) + "\n" for j in jobs))
        ids = sbx("enqueue", "--json", tmp_path / "jobs.ndjson").split()
        assert len(ids) == len(jobs)
        part_of = {j["job_id"]: partition_of(j["project_id"], PARTITIONS) for j in jobs}

        # --- host 2 dies while it runs builds ---
        def victim_running():
            # One build per project of its three partitions.
            return pg.scalar("SELECT count(*) FROM sbx.runs WHERE job_id = ANY(%s) AND "
                             "worker_id = %s AND status = 'running'", ids,
                             "host%d" % VICTIM) == len(owners[VICTIM])
        wait_until(victim_running, 60, "host%d running its builds" % VICTIM)
        marks = {i: logs[i].stat().st_size for i in logs}
        t_kill = time.time()
        net.cut(VICTIM)
        assert kill_namespace(net.hosts[VICTIM - 1], uid_ranges[VICTIM]), \
            "host%d's processes survived SIGKILL" % VICTIM
        workers[VICTIM - 1].wait(10)
        # No FIN reached PostgreSQL: the dead host's sessions are still open.
        assert pg.scalar("SELECT count(*) FROM pg_stat_activity WHERE client_addr = %s",
                         net.addr(VICTIM)) > 0
        lost_parts = owners[VICTIM]
        rows = pg.query("SELECT job_id, status, kafka_partition FROM sbx.runs "
                        "WHERE job_id = ANY(%s)", ids)
        # The hash above is the producer's: where a worker recorded the
        # partition, it is the one predicted.
        assert all(p is None or p == part_of[j] for j, _, p in rows), rows
        unfinished = [j for j, st, _ in rows if st not in TERMINAL and part_of[j] in lost_parts]
        was_running = [j for j, st, _ in rows if st == "running" and part_of[j] in lost_parts]
        assert was_running, "host%d had nothing running" % VICTIM

        # Its partitions go to the others once its session times out.
        survivors = [i for i in logs if i != VICTIM]

        def taken_over():
            now = {i: assigned(i, marks[i]) for i in survivors}
            got = set().union(*[s for s in now.values() if s])
            return got == set(range(PARTITIONS)) and all(now.values()) and now
        after = wait_until(taken_over, 60, "host%d's partitions reassigned" % VICTIM)
        t_parts = time.time() - t_kill
        print("partitions after: %s" % {"host%d" % i: sorted(s) for i, s in after.items()})

        # Each build it ran runs again elsewhere, once its lease expired.
        def moved():
            r = pg.query("SELECT job_id, min(at) FROM sbx.run_events WHERE job_id = ANY(%s) "
                         "AND to_status = 'running' AND worker_id <> %s "
                         "AND at > to_timestamp(%s) GROUP BY job_id", was_running,
                         "host%d" % VICTIM, t_kill)
            return len(r) == len(was_running) and r
        started = wait_until(moved, 90, "host%d's builds running elsewhere" % VICTIM)
        restart = sorted(at.timestamp() - t_kill for _, at in started)

        def all_done():
            r = dict(pg.query("SELECT job_id, status FROM sbx.runs WHERE job_id = ANY(%s)", ids))
            return len(r) == len(ids) and all(s in TERMINAL for s in r.values()) and r
        final = wait_until(all_done, 180, "every job terminal")
        assert set(final.values()) == {"succeeded"}, final
        t_done = pg.scalar("SELECT max(at) FROM sbx.run_events WHERE job_id = ANY(%s)",
                           unfinished).timestamp() - t_kill

        # Exactly one terminal status each, and the victim's jobs ended elsewhere.
        ev = pg.query("SELECT job_id, to_status, at, worker_id, lease_token FROM sbx.run_events "
                      "WHERE job_id = ANY(%s) ORDER BY id", ids)
        for j in ids:
            terms = [e for e in ev if e[0] == j and e[1] in TERMINAL]
            assert len(terms) == 1, (j, terms)
            if j in unfinished:
                assert terms[0][3] != "host%d" % VICTIM, (j, terms)

        # No project ever had two builds at once: the finished builds by their
        # own clocks; a build of the dead host from its start to the kill.
        spans = {}
        runs = pg.query("SELECT job_id, project_id, log_tail FROM sbx.runs WHERE job_id = ANY(%s)",
                        ids)
        for j, project, tail in runs:
            s = int(re.search(r"start=(\d+)", tail).group(1)) / 1e9
            e = int(re.search(r"end=(\d+)", tail).group(1)) / 1e9
            spans.setdefault(project, []).append((s, e, j))
        for j, status, at, worker, token in ev:
            if status == "running" and worker == "host%d" % VICTIM and j in unfinished:
                project = next(p for jj, p, _ in runs if jj == j)
                spans[project].append((at.timestamp(), t_kill, j + " (killed)"))
        for project, ss in spans.items():
            ss.sort()
            for (s1, e1, j1), (s2, e2, j2) in zip(ss, ss[1:]):
                assert e1 <= s2, "%s: %s and %s overlapped by %.3f s" % (project, j1, j2, e1 - s2)

        # --- host 2 comes back: it clears what its death left and gets a share ---
        assert mounts_under(work / ("h%d" % VICTIM)), "the dead host left no workspace mounted"
        net.link(VICTIM)
        back_mark = logs[VICTIM].stat().st_size
        workers[VICTIM - 1] = start_worker(VICTIM)
        wait_until(lambda: assigned(VICTIM, back_mark), 60, "host%d back in the group" % VICTIM)
        assert not mounts_under(work / ("h%d" % VICTIM)), mounts_under(work / ("h%d" % VICTIM))

        print("takeover of host%d (session %d ms, lease TTL %d ms): its partitions owned by "
              "the others %.1f s after the kill; its %d running builds running again "
              "elsewhere after %s s; all %d of its unfinished jobs (%d s builds, one at a time "
              "per project) done after %.1f s; %d jobs, each succeeded once"
              % (VICTIM, SESSION_MS, LEASE_TTL_MS, t_parts, len(was_running),
                 "/".join("%.1f" % t for t in restart), len(unfinished), BUILD_S, t_done,
                 len(ids)))
    except BaseException:
        # pytest shows this with the failure.
        for i in logs:
            print("--- last lines of host%d's log ---\n%s"
                  % (i, "\n".join(logs[i].read_text(errors="replace").splitlines()[-40:])))
        raise
    finally:
        for i, w in enumerate(workers, 1):
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for i, w in enumerate(workers, 1):
            try:
                w.wait(20)
            except subprocess.TimeoutExpired:
                pass
        for i, ns in enumerate(net.hosts, 1):
            kill_namespace(ns, uid_ranges[i])
        if pg is not None:
            pg.close()
        if svc is not None:
            svc.stop()
        net.remove()
        remove_leftovers(work, set().union(*uid_ranges.values()))
        shutil.rmtree(work, ignore_errors=True)
        for i in logs:
            if re.search(r"ERROR: (Address|Leak)Sanitizer|runtime error:", logs[i].read_text()):
                pytest.fail("host%d printed a sanitizer report" % i, pytrace=False)
