"""test_hostile_network.py — what a networked build can reach, through the
real sbx-worker (local provider, SBX_ALLOW_NETWORK=1), real bubblewrap,
slirp4netns and nftables.

The test makes its own "internet": a network namespace joined to the host by
a veth pair, the far end holding 198.51.100.1-3/24 (a documentation range,
so the default filter allows it) plus 10.200.99.1 and 169.254.77.1, routed to
it from the host as the positive controls of the private and link-local
rules. A small TCP server answers on all of them inside that namespace. Every
probe a build makes goes to 127.0.0.1, to the host's own addresses, into that
namespace, or to the NAT's own gateway and resolver addresses, which exist
only inside the sandbox; nothing leaves the machine.

Each refused destination has a control that the test itself can reach, so a
refusal means the sandbox, not a missing listener. Probes are one python3
script (the sandbox has the host's /usr read-only) bundled into a few jobs.
"""

import json
import os
import socket
import subprocess
import threading
import uuid

import pytest

from conftest import wait_until
from providers import AGENT_KEY, Agent
from test_worker import enqueue, topics, wait_terminal, workdir  # noqa: F401 — fixtures

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="network namespaces and veth pairs need root")

BANNER = b"hello from the test internet\n"
INET_PORT = 8080
# Inside the test internet and routed to it from the host: the positive
# controls of the private and link-local rules (not the real metadata
# address, whose route the test must not take over).
PRIVATE = "10.200.99.1"
LINK_LOCAL = "169.254.77.1"

PROBE = r'''
import json, socket, sys
out = {}
for spec in sys.argv[1:]:
    kind, _, where = spec.partition(":")
    try:
        if kind == "abstract":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(3)
            s.connect("\0" + where)
        else:
            host, port = where.rsplit(":", 1)
            s = socket.create_connection((host, int(port)), timeout=3)
            s.settimeout(3)
        try:
            data = s.recv(64)
        except OSError:
            data = b""
        out[spec] = "open:" + data.decode(errors="replace").strip()
        s.close()
    except Exception as e:
        out[spec] = type(e).__name__
print("PROBE " + json.dumps(out))
'''

SERVER = r'''
import socket, sys, threading
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(64)
print("listening", flush=True)
while True:
    c, _ = srv.accept()
    try:
        c.sendall(%r)
    finally:
        c.close()
''' % BANNER


def sh(*args, check=True):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


class Listener:
    """A TCP or abstract unix listener of the test, in the host's namespace,
    that greets every connection (the control: the test can reach it)."""

    def __init__(self, family, addr):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(addr)
        self.sock.listen(16)
        self.addr = self.sock.getsockname()
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                c.sendall(b"host secret\n")
            except OSError:
                pass  # the prober hung up first
            finally:
                c.close()

    def close(self):
        self.stopped = True
        self.sock.close()


def reachable_here(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr)
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture
def internet():
    """The test internet: netns + veth + a greeting server on port 8080 of
    198.51.100.1-3 and 10.200.99.1. Torn down even when the test fails."""
    tag = "%x" % (os.getpid() & 0xfffff)
    ns, host_if, far_if = "sbxinet-" + tag, "sbxh" + tag, "sbxn" + tag
    server = None
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", far_if)
        sh("ip", "link", "set", far_if, "netns", ns)
        sh("ip", "addr", "add", "198.51.100.254/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        for a in ("198.51.100.1/24", "198.51.100.2/24", "198.51.100.3/24", PRIVATE + "/32",
                  LINK_LOCAL + "/32"):
            sh("ip", "-n", ns, "addr", "add", a, "dev", far_if)
        sh("ip", "-n", ns, "link", "set", far_if, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", "198.51.100.254")
        sh("ip", "route", "add", PRIVATE + "/32", "dev", host_if)
        sh("ip", "route", "add", LINK_LOCAL + "/32", "dev", host_if)
        # The routes exist before anything is sent.
        for a in ("198.51.100.1", PRIVATE, LINK_LOCAL):
            assert ("dev " + host_if) in sh("ip", "route", "get", a).stdout
        server = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", SERVER,
                                   str(INET_PORT)], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "listening"
        wait_until(lambda: reachable_here(socket.AF_INET, ("198.51.100.1", INET_PORT)), 10,
                   "the test internet answers")
        yield {"ns": ns, "host_if": host_if}
    finally:
        if server:
            server.kill()
            server.wait(10)
        sh("ip", "route", "del", PRIVATE + "/32", check=False)
        sh("ip", "route", "del", LINK_LOCAL + "/32", check=False)
        sh("ip", "link", "del", host_if, check=False)
        sh("ip", "netns", "del", ns, check=False)


def inet(host="198.51.100.1"):
    return "tcp:%s:%d" % (host, INET_PORT)


def probe_job(project, targets, **kw):
    d = {"job_id": "net-" + uuid.uuid4().hex[:16], "project_id": project,
         "script": "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sed 's/^/IF /';"
                   " python3 probe.py " + " ".join(targets),
         "files": {"probe.py": PROBE}, "timeout_s": 120}
    d.update(kw)
    return d


def results(pg, job_id):
    st, tail, err = pg.query("SELECT status, log_tail, error FROM sbx.runs WHERE job_id = %s",
                             job_id)[0]
    assert st == "succeeded", (st, err, tail)
    probe = [ln for ln in tail.splitlines() if ln.startswith("PROBE ")]
    assert probe, tail
    ifaces = sorted(ln[3:] for ln in tail.splitlines() if ln.startswith("IF "))
    return json.loads(probe[-1][6:]), ifaces


def port_of(url):
    """The port of redis://h:p/n, postgresql://u@h:p/db or host:port."""
    rest = url.split("://", 1)[-1].split("/", 1)[0].split("@")[-1]
    return int(rest.rsplit(":", 1)[1])


def host_addrs():
    out = sh("ip", "-4", "-o", "addr", "show").stdout
    return sorted({ln.split()[3].split("/")[0] for ln in out.splitlines()})


def run_jobs(run_sbx, pg, start_worker, topics, workdir, jobs, **env):  # noqa: F811
    # Slot uids of our own: other suites on this host sweep the default range.
    w = start_worker(SBX_ALLOW_NETWORK=1, SBX_WORK_DIR=workdir, SBX_UID_BASE=63700, **topics,
                     **env)
    ids = enqueue(run_sbx, topics, jobs)
    wait_terminal(pg, ids, 120, [w])
    return [results(pg, i) for i in ids]


def test_networked_build_reaches_internet_not_host(internet, services, run_sbx, pg, start_worker,
                                                   topics, workdir):  # noqa: F811
    """A networked build reaches the test internet and nothing of the host:
    not Redis, PostgreSQL or Kafka on 127.0.0.1 (nor through the NAT's
    gateway and resolver aliases of the host), not the host's addresses,
    not a host abstract unix socket, not private or link-local addresses.
    Without network it has loopback only."""
    svc_ports = {name: port_of(services[var]) for name, var in
                 (("redis", "SBX_REDIS_URL"), ("postgres", "SBX_DATABASE_URL"),
                  ("kafka", "SBX_BROKERS"))}
    any_addr = Listener(socket.AF_INET, ("0.0.0.0", 0))
    abstract_name = "sbx-hostile-%d" % os.getpid()
    abstract = Listener(socket.AF_UNIX, "\0" + abstract_name)
    try:
        hport = any_addr.addr[1]
        # Controls: from the host, every target below is reachable.
        for name, port in svc_ports.items():
            assert reachable_here(socket.AF_INET, ("127.0.0.1", port)), name
        for a in host_addrs():
            assert reachable_here(socket.AF_INET, (a, hport)), a
        assert "198.51.100.254" in host_addrs()
        assert reachable_here(socket.AF_UNIX, "\0" + abstract_name)
        assert reachable_here(socket.AF_INET, (PRIVATE, INET_PORT))
        assert reachable_here(socket.AF_INET, (LINK_LOCAL, INET_PORT))

        refused = ["tcp:127.0.0.1:%d" % p for p in svc_ports.values()]
        refused += ["tcp:%s:%d" % (gw, svc_ports["redis"]) for gw in ("10.0.2.2", "10.0.2.3")]
        refused += ["tcp:%s:%d" % (a, hport) for a in host_addrs() if not a.startswith("127.")]
        refused += ["abstract:" + abstract_name, inet(PRIVATE), inet(LINK_LOCAL)]
        jobs = [probe_job("net-a", [inet()] + refused, network=True),
                probe_job("net-b", [inet(), "tcp:127.0.0.1:%d" % svc_ports["redis"]])]
        (got, ifaces), (got_off, ifaces_off) = run_jobs(run_sbx, pg, start_worker, topics,
                                                        workdir, jobs)
    finally:
        any_addr.close()
        abstract.close()

    print("networked build:", ifaces, json.dumps(got, indent=1))
    print("build without network:", ifaces_off, json.dumps(got_off, indent=1))
    assert got[inet()] == "open:" + BANNER.decode().strip(), got
    assert ifaces == ["lo", "tap0"], ifaces
    leaked = {t: r for t, r in got.items() if t in refused and r.startswith("open")}
    assert not leaked, leaked
    assert all(got[t] in ("ConnectionRefusedError", "TimeoutError", "OSError", "timeout",
                          "ConnectionResetError", "FileNotFoundError") for t in refused), got
    # Without network: loopback only, nothing outside reachable.
    assert ifaces_off == ["lo"], ifaces_off
    assert not any(r.startswith("open") for r in got_off.values()), got_off


def test_deny_list_and_job_allowlist_narrow(internet, run_sbx, pg, start_worker, topics,
                                            workdir):  # noqa: F811
    """SBX_EGRESS_DENY removes a destination the default allows; a job's
    "egress" list keeps only what it names (addresses or host names), and
    can never open what the host refuses."""
    a1, a2, a3 = inet("198.51.100.1"), inet("198.51.100.2"), inet("198.51.100.3")
    targets = [a1, a2, a3]
    jobs = [probe_job("deny", targets, network=True),
            probe_job("narrow", targets, network=True, egress=["198.51.100.1/32"]),
            probe_job("name", targets, network=True, egress=["localhost"]),
            probe_job("empty", targets, network=True, egress=[]),
            probe_job("widen", targets + [inet(PRIVATE)], network=True,
                      egress=["198.51.100.0/24", PRIVATE, "10.0.0.0/8"])]
    res = run_jobs(run_sbx, pg, start_worker, topics, workdir, jobs,
                   SBX_EGRESS_DENY="198.51.100.2")
    opened = [sorted(t for t, r in got.items() if r.startswith("open")) for got, _ in res]
    print("opened per job:", opened)
    assert opened[0] == sorted([a1, a3]), res[0]     # the operator's deny list
    assert opened[1] == [a1], res[1]                  # the job's CIDR
    assert opened[2] == [], res[2]                    # a name: only its address (127.0.0.1)
    assert opened[3] == [], res[3]                    # nothing named, nothing reachable
    assert opened[4] == sorted([a1, a3]), res[4]      # never wider than the host allows


def test_agent_builds_get_the_same_network(internet, services, run_sbx, pg, start_worker, topics,
                                           tmp_path):  # noqa: F811
    """sbx-agent runs builds through the same sandbox: one networked build
    on an agent reaches the test internet but not Redis on 127.0.0.1."""
    redis = services["SBX_REDIS_URL"]
    agent = Agent(7, redis, tmp_path, uuid.uuid4().hex[:6])
    agent.env["SBX_ALLOW_NETWORK"] = "1"
    try:
        agent.start()
        w = start_worker(SBX_PROVIDER="vmpool", SBX_VMPOOL_KEY=AGENT_KEY, **topics)
        redis_probe = "tcp:127.0.0.1:%d" % port_of(redis)
        ids = enqueue(run_sbx, topics, [probe_job("agent-net", [inet(), redis_probe],
                                                  network=True)])
        wait_terminal(pg, ids, 120, [w])
        got, ifaces = results(pg, ids[0])
    finally:
        agent.stop()
    print("agent build:", ifaces, json.dumps(got, indent=1))
    assert got[inet()].startswith("open:hello"), got
    assert got[redis_probe] == "ConnectionRefusedError", got
    assert ifaces == ["lo", "tap0"], ifaces
