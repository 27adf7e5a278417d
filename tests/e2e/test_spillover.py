"""test_spillover.py — one worker running two providers (SBX_PROVIDER=local,fly)
and jobs of provider `any` spilling from the first to the second (issue 13,
item 5), through the whole path: `sbx enqueue` -> Kafka -> sbx-worker ->
bubblewrap or the Fly emulator -> sbx.runs, sbx.sessions, sbx.project_costs.

The local provider has one slot, so a second build in flight must go to
fly; a job that names its provider never spills, and one naming a provider
the worker does not run is dead-lettered whole. Prices are the worker's
SBX_PRICE_PER_HOUR, one per provider.
"""

import json
import os
import subprocess
import urllib.request
import uuid

import pytest

from conftest import wait_until
from providers import free_port, start_backend
from test_reliability_dlq import dead_letters
from test_worker import TERMINAL, enqueue, job, topics  # noqa: F401

RUN_S = 60
PRICES = {"local": 0.36, "fly": 3.6}


@pytest.fixture(scope="module")
def backends(services, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("spillover")
    local = start_backend("local", logdir, services)
    fly = start_backend("fly", logdir, services)
    yield local, fly
    fly.stop()
    local.stop()
    assert not fly.sanitizer_reports()


class Spill:
    def __init__(self, backends, start_worker, topics, run_sbx, pg):  # noqa: F811
        local, fly = backends
        self.tag = uuid.uuid4().hex[:8]
        self.pg, self.run_sbx, self.topics = pg, run_sbx, topics
        self.admin = "127.0.0.1:%d" % free_port()
        env = dict(local.env())
        env.update(fly.env())
        env.update(SBX_PROVIDER="local,fly", SBX_LOCAL_SLOTS=1, SBX_UID_BASE=64000,
                   SBX_NODE="e2e-spill-" + self.tag, SBX_WORKER_ID="spill-" + self.tag,
                   SBX_ADMIN_LISTEN=self.admin,
                   SBX_PRICE_PER_HOUR="local=%s,fly=%s" % (PRICES["local"], PRICES["fly"]),
                   **topics)
        self.w = start_worker(**env)
        self.w.wait_log(r"pool fly registered", 30)
        self.w.wait_log(r"pool local/e2e-spill-%s registered" % self.tag, 30)

    def project(self, name):
        return "sp-%s-%s" % (self.tag, name)

    def enqueue(self, *jobs):
        return enqueue(self.run_sbx, self.topics, list(jobs))

    def row(self, job_id):
        rows = self.pg.query("SELECT status, provider, slot, log_tail FROM sbx.runs "
                             "WHERE job_id = %s", job_id)
        return rows[0] if rows else (None, None, None, None)

    def wait(self, job_id, want, timeout=RUN_S):
        want = (want,) if isinstance(want, str) else want
        try:
            wait_until(lambda: self.row(job_id)[0] in want, timeout,
                       "%s to be %s" % (job_id, "/".join(want)))
        except BaseException:
            print(self.w.tail(80))
            raise
        return self.row(job_id)


@pytest.fixture
def sp(backends, start_worker, topics, run_sbx, pg):  # noqa: F811
    return Spill(backends, start_worker, topics, run_sbx, pg)


def test_any_takes_the_first_provider_with_a_free_slot(sp, pg, kafka):
    """local first, fly when local is full, local again once it frees; a job
    naming local waits for it rather than spill, one naming fly goes there
    with local free, one naming docker is dead-lettered; each provider's
    slots in /metrics and its price in sbx.project_costs."""
    a = job(sp.project("a"), "echo on-a; sleep 6")
    sp.enqueue(a)
    assert sp.wait(a["job_id"], "running")[1] == "local"

    b = job(sp.project("b"), "echo on-b")
    named_local = job(sp.project("c"), "echo on-c", provider="local")
    sp.enqueue(b, named_local)
    st, prov, slot, tail = sp.wait(b["job_id"], TERMINAL)
    assert (st, prov) == ("succeeded", "fly") and slot.startswith("fly"), (st, prov, slot)
    assert "on-b" in tail
    # The named job waits for local's one slot, held by a.
    assert sp.row(a["job_id"])[0] == "running"
    assert sp.row(named_local["job_id"])[0] in ("queued", "waiting_capacity")

    with urllib.request.urlopen("http://%s/metrics" % sp.admin, timeout=10) as r:
        metrics = r.read().decode()
    assert 'sbx_slots_total{provider="local"} 1\n' in metrics, metrics
    assert 'sbx_slots_total{provider="fly"} 4\n' in metrics, metrics
    assert 'sbx_slots_busy{provider="local"} 1\n' in metrics, metrics

    assert sp.wait(a["job_id"], TERMINAL)[:2] == ("succeeded", "local")
    assert sp.wait(named_local["job_id"], TERMINAL)[:2] == ("succeeded", "local")
    c = job(sp.project("d"), "echo on-d")
    named_fly = job(sp.project("e"), "echo on-e", provider="fly")
    sp.enqueue(c)
    assert sp.wait(c["job_id"], TERMINAL)[:2] == ("succeeded", "local")
    sp.enqueue(named_fly)
    assert sp.wait(named_fly["job_id"], TERMINAL)[:2] == ("succeeded", "fly")

    elsewhere = job(sp.project("f"), "echo never", provider="docker")
    sp.enqueue(elsewhere)

    def dead():
        envs = [json.loads(m["payload"])
                for m in dead_letters(kafka.brokers, sp.topics["SBX_DLQ_TOPIC"])]
        return [e for e in envs if e["job_id"] == elsewhere["job_id"]]
    env = wait_until(dead, 30, "the docker job dead-lettered")[0]
    assert env["reason"] == "provider_unavailable", env
    assert "SBX_PROVIDER=local,fly" in env["detail"], env
    assert json.loads(env["payload"])["provider"] == "docker"
    wait_until(lambda: sp.row(elsewhere["job_id"])[0] == "dead_lettered", 10,
               "its run to end dead_lettered")
    assert "provider docker is not run" in pg.scalar("SELECT error FROM sbx.runs WHERE job_id "
                                                     "= %s", elsewhere["job_id"])
    assert pg.scalar("SELECT reason FROM sbx.dead_letters WHERE job_id = %s",
                     elsewhere["job_id"]) == "provider_unavailable"

    for name, price in PRICES.items():
        assert float(pg.scalar("SELECT per_hour FROM sbx.prices WHERE provider = %s "
                               "ORDER BY since DESC LIMIT 1", name)) == price
    costs = {}
    for pid, prov, run_s, cost in pg.query(
            "SELECT project_id, provider, run_seconds, cost FROM sbx.project_costs("
            "now() - interval '1 hour', now()) WHERE project_id LIKE %s",
            "sp-%s-%%" % sp.tag):
        costs[(pid, prov)] = (run_s, float(cost))
    run_s, cost = costs[(sp.project("b"), "fly")]
    assert run_s > 0 and abs(cost - run_s * PRICES["fly"] / 3600) < 1e-5, costs
    run_s, cost = costs[(sp.project("a"), "local")]
    assert run_s >= 5 and abs(cost - run_s * PRICES["local"] / 3600) < 1e-5, costs


def test_a_session_stays_on_its_provider(sp, pg):
    """A session whose first job spilled to fly keeps its sandbox there: its
    next job goes back to fly (and finds its file) though local is free."""
    a = job(sp.project("busy"), "sleep 5")
    sp.enqueue(a)
    assert sp.wait(a["job_id"], "running")[1] == "local"
    project, sid = sp.project("s"), "sess-" + sp.tag
    s1 = job(project, "echo one > notes.txt; echo wrote", session={"id": sid})
    sp.enqueue(s1)
    assert sp.wait(s1["job_id"], TERMINAL)[:2] == ("succeeded", "fly")
    assert sp.wait(a["job_id"], TERMINAL)[:2] == ("succeeded", "local")
    s2 = job(project, "cat notes.txt", session={"id": sid})
    sp.enqueue(s2)
    st, prov, _, tail = sp.wait(s2["job_id"], TERMINAL)
    assert (st, prov) == ("succeeded", "fly") and "one" in tail, (st, prov, tail)
    assert pg.scalar("SELECT provider FROM sbx.sessions WHERE project_id = %s AND "
                     "session_id = %s", project, sid) == "fly"
    r = sp.run_sbx("session", "stop", project, sid, check=False)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: pg.scalar("SELECT state FROM sbx.sessions WHERE project_id = %s AND "
                                 "session_id = %s", project, sid) == "ended", 30,
               "the session to end")


def test_a_slot_kept_for_a_session_ended_elsewhere_comes_back(sp, pg):
    """A session row ended by a hand-written UPDATE (not the sweeper) left
    its slot kept in Redis and its sandbox alive: the sweeper's
    reconciliation destroys the sandbox and frees the slot, so local's one
    slot takes builds again."""
    project, sid = sp.project("kept"), "sess-kept-" + sp.tag
    s1 = job(project, "echo kept > notes.txt", session={"id": sid}, provider="local")
    sp.enqueue(s1)
    assert sp.wait(s1["job_id"], TERMINAL)[:2] == ("succeeded", "local")
    slot = pg.scalar("SELECT slot FROM sbx.sessions WHERE project_id = %s AND session_id = %s",
                     project, sid)
    pg.execute("UPDATE sbx.sessions SET state = 'ended', end_reason = 'stop', ended_at = now() "
               "WHERE project_id = %s AND session_id = %s", project, sid)
    after = job(sp.project("after"), "echo after", provider="local")
    sp.enqueue(after)
    st, prov, got, _ = sp.wait(after["job_id"], TERMINAL, timeout=45)
    assert (st, prov, got) == ("succeeded", "local", slot)
    sp.w.wait_log(r"slot %s was kept for s-[0-9a-f]+, whose session is over: sandbox "
                  r"destroyed, slot freed" % slot, 5)


@pytest.mark.parametrize("env, words", [
    ({"SBX_PROVIDER": "local,podman"}, ['SBX_PROVIDER=local,podman: "podman" is not known',
                                        "fly,vmpool,docker"]),
    ({"SBX_PROVIDER": "local,fly,local"}, ["names local twice"]),
    ({"SBX_PROVIDER": "local,fly", "SBX_PRICE_PER_HOUR": "local=0.1,docker=2"},
     ['"docker=2" is not name=price for a provider of SBX_PROVIDER=local,fly']),
    ({"SBX_PRICE_PAUSED_PER_HOUR": "local=free"}, ['"local=free" is not name=price']),
    ({"SBX_PRICE_PER_HOUR": "cheap"}, ["SBX_PRICE_PER_HOUR=cheap is not a price"]),
    ({"SBX_NODE": "a,b"}, ["SBX_NODE=a,b has a comma"]),
])
def test_bad_provider_lists_stop_startup(sbx_bin, services, env, words):
    """One line naming the variable and the fix; nothing starts."""
    full = dict(os.environ, **services)
    full.update(env)
    r = subprocess.run([str(sbx_bin / "sbx-worker")], env=full, capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), r.stderr
