"""test_reliability_lease.py — no build outlives its lease, even when its
worker is frozen (README "Reliability", issue 10 item 7).

Two workers share a topic; one job's build runs three times the lease TTL
and prints its own clock (`date +%s%N`) every 50 ms, to its output and to a
file in its workspace. The worker running it is frozen with SIGSTOP and
stays frozen until the job has ended. The other worker takes the job over
once the frozen one's Kafka session and lease have expired, and builds it
again from the start. From the builds' own clocks:
  - the frozen worker's build printed its last tick before its lease
    expired in Redis (the expiry read from the lease hash right after the
    freeze; both clocks are this host's wall clock),
  - and before the second build printed its first tick: no overlap.
The figures printed are the kill latency after the trust window (90 % of
the TTL after the last renewal, i.e. the expiry minus a tenth of the TTL)
and the gap to the second build.

Where the first build's clock is read: local, its workspace file (the frozen
worker cannot remove it); vmpool, the agent's record of the run (log tail,
GET /runs/{id}), since the agent itself is not frozen and cleans up.
Proven mechanisms: common/supervise.c (a supervisor process per sandbox,
deadline pushed by each renewal) and agent/leasewatch.c (the agent reads
the lease in Redis). Without them, the frozen build ran to its end, seconds
into the second one.
"""

import glob
import os
import re
import signal
import subprocess
import time
import uuid

import pytest

import providers
from conftest import wait_until
from test_worker import enqueue, history, job, topics, workdir  # noqa: F401 — fixtures

TTL_MS = 3000
BUILD_S = 3 * TTL_MS // 1000
TICK_RE = re.compile(r"^tick=(\d+)$", re.M)
SCRIPT = ("echo start=$(date +%%s%%N); end=$(( $(date +%%s) + %d )); "
          "while [ $(date +%%s) -lt $end ]; do t=$(date +%%s%%N); echo tick=$t; "
          "echo $t >>/workspace/clock; sleep 0.05; done; echo end=$(date +%%s%%N)" % BUILD_S)


def redis(url, *args):
    r = subprocess.run(["redis-cli", "-u", url, "--raw"] + list(args), capture_output=True,
                       text=True, timeout=10)
    return r.stdout.strip()


class Agents:
    """Two sbx-agents of their own (uids apart from test_providers.py's)."""

    def __init__(self, logdir, redis_url):
        tag = uuid.uuid4().hex[:6]
        self.agents = [providers.Agent(k, redis_url, logdir, tag) for k in (5, 6)]
        try:
            for a in self.agents:
                a.start()
        except BaseException:
            self.stop()
            raise

    def runs_of(self, job_id):
        return [(a, r) for a in self.agents if a.running
                for r in a.running_runs() if r.get("job_id") == job_id]

    def run(self, agent, run_id):
        auth = {"Authorization": "Bearer " + providers.AGENT_KEY}
        st, body = providers.http("GET", "%s/runs/%s" % (agent.url, run_id), headers=auth,
                                  timeout=5)
        return body if st == 200 else None

    def stop(self):
        for a in self.agents:
            a.stop()


@pytest.fixture(scope="module")
def agents(services, tmp_path_factory):
    a = Agents(tmp_path_factory.mktemp("lease-agents"), services["SBX_REDIS_URL"])
    yield a
    a.stop()


def _ticks(text):
    return [int(t) for t in TICK_RE.findall(text or "")]


@pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes with slot uids need root")
@pytest.mark.parametrize("provider", ["local", "vmpool"])
def test_frozen_worker_build_dies_before_its_lease(provider, request, run_sbx, pg, services,
                                                   start_worker, topics, workdir):  # noqa: F811
    url = services["SBX_REDIS_URL"]
    env = dict(SBX_LOCAL_SLOTS=1, SBX_LEASE_TTL_MS=TTL_MS, SBX_KAFKA_SESSION_TIMEOUT_MS=6000,
               **topics)
    if provider == "vmpool":
        ag = request.getfixturevalue("agents")
        env.update(SBX_PROVIDER="vmpool", SBX_VMPOOL_KEY=providers.AGENT_KEY)
    workers = {}
    for k in range(2):
        wd = os.path.join(workdir, "w%d" % k)
        os.makedirs(wd, mode=0o755)
        w = start_worker(SBX_NODE="lease-n%d-%s" % (k, uuid.uuid4().hex[:4]),
                         SBX_UID_BASE=63000 + 100 * k, SBX_WORK_DIR=wd, **env)
        w.work = wd
        workers[w.name] = w
    j = job("lease-" + uuid.uuid4().hex[:8], SCRIPT, timeout_s=120)
    (job_id,) = enqueue(run_sbx, topics, [j])

    def running():
        rows = pg.query("SELECT worker_id, lease_token FROM sbx.runs WHERE job_id = %s "
                        "AND status = 'running'", job_id)
        return rows[0] if rows else None
    owner, token1 = wait_until(running, 60, "the first build running")
    victim = workers[owner]
    first = {}
    if provider == "local":
        def clock_file():
            files = glob.glob(os.path.join(victim.work, "*", "ws", "clock")) + \
                glob.glob(os.path.join(victim.work, "*", "clock"))
            return files[0] if files else None
        first["file"] = wait_until(clock_file, 20, "the first build's clock file")
    else:
        def agent_run():
            runs = ag.runs_of(job_id)
            return runs[0] if runs else None
        first["agent"], run = wait_until(agent_run, 20, "the first build on an agent")
        first["run"] = run["id"]
    time.sleep(1.0)  # the build is well under way: a lease renewed a few times
    victim.kill(signal.SIGSTOP)
    try:
        time.sleep(0.3)  # a renewal in flight at the freeze has landed
        slot = redis(url, "GET", "{sbx}:project:" + j["project_id"])
        assert slot, "no lease for the project right after the freeze"
        assert redis(url, "HGET", "{sbx}:lease:" + slot, "token") == str(token1)
        expires_ms = int(redis(url, "HGET", "{sbx}:lease:" + slot, "expires"))

        def taken_over():
            st = pg.query("SELECT status, lease_token, log_tail FROM sbx.runs WHERE job_id = %s",
                          job_id)[0]
            return st if st[0] in ("succeeded", "failed", "timed_out", "canceled",
                                   "dead_lettered") else None
        try:
            status, token2, tail2 = wait_until(taken_over, 90, "the job to end on the other "
                                               "worker")
        except BaseException:
            for w in workers.values():
                print(w.tail(60))
            if provider == "vmpool":
                for a in ag.agents:
                    print("--- %s ---\n%s" % (a.log, "".join(open(a.log).readlines()[-60:])))
            raise
        if provider == "local":
            with open(first["file"]) as f:
                ticks1 = [int(x) for x in f.read().split()]
        else:
            rec = wait_until(lambda: ag.run(first["agent"], first["run"]), 10,
                             "the agent's record of the first run")
            assert rec["state"] != "running", rec
            ticks1 = _ticks(rec.get("log_tail"))
            first["state"], first["error"] = rec["state"], rec.get("error")
    finally:
        victim.kill(signal.SIGCONT)
    assert status == "succeeded" and token2 > token1, (status, token1, token2)
    m = re.search(r"^start=(\d+)$", tail2, re.M)
    assert m, tail2
    start2 = int(m.group(1))
    assert ticks1, "the first build printed no tick"
    last1 = ticks1[-1]
    trust_end_ns = (expires_ms - TTL_MS // 10) * 1_000_000
    print("%s: frozen build's last tick %+.0f ms after the trust window's end, %+.0f ms after "
          "the lease's expiry; second build started %.0f ms after it (%s)"
          % (provider, (last1 - trust_end_ns) / 1e6, (last1 - expires_ms * 1e6) / 1e6,
             (start2 - last1) / 1e6, first.get("error") or "local"))
    assert last1 < expires_ms * 1_000_000, "the frozen build outlived its lease"
    assert last1 < start2, "the two builds overlapped by %.3f s" % ((last1 - start2) / 1e9)
    # The thawed worker writes nothing: one terminal event, with the new token.
    if provider == "local":
        victim.wait_log(r"lost its lease", 20)
        wait_until(lambda: not os.listdir(victim.work), 20,
                   "the thawed worker to remove its killed build's workspace")
    h = history(pg, job_id)
    assert sum(1 for s in h if s in ("succeeded", "failed", "canceled", "timed_out",
                                     "dead_lettered")) == 1, h
    assert pg.scalar("SELECT lease_token FROM sbx.run_events WHERE job_id = %s ORDER BY id DESC "
                     "LIMIT 1", job_id) == token2
