"""test_chaos_short.py — the short chaos run (tests/chaos/chaos.py) inside
`make test`, on the session's services, plus checks that the chaos
invariants do catch what they are meant to catch.

The run injects every kind of fault once or more while 100 jobs flow; set
SBX_CHAOS_SEED to replay a seed (the seed is printed either way). A finding
fails the test with its description; its evidence (worker logs, the job's
history, the faults before it) stays in the printed output directory.
"""

import datetime
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import REPO, wait_until

sys.path.insert(0, str(REPO / "tests" / "chaos"))
import chaos  # noqa: E402


def _ev(i, frm, to, tok=None, t=0.0):
    at = datetime.datetime.fromtimestamp(1_700_000_000 + t, datetime.timezone.utc)
    return (i, frm, to, at, tok, "w", None)


GOOD = [_ev(1, None, "queued"), _ev(2, "queued", "waiting_capacity", t=1),
        _ev(3, "waiting_capacity", "provisioning", 5, t=2), _ev(4, "provisioning", "running", 5, t=3),
        _ev(5, "running", "provisioning", 9, t=4), _ev(6, "provisioning", "running", 9, t=5),
        _ev(7, "running", "queued", 9, t=6), _ev(8, "queued", "provisioning", 11, t=7),
        _ev(9, "provisioning", "running", 11, t=8), _ev(10, "running", "succeeded", 11, t=9)]


def test_history_checks_accept_a_valid_history():
    """Waiting, a takeover with a newer token and a requeue are all legal."""
    assert chaos.validate_history(GOOD, "succeeded", 3, 11) == []
    assert chaos.active_spans(GOOD) == [(1_700_000_002.0, 1_700_000_006.0),
                                        (1_700_000_007.0, 1_700_000_009.0)]


def test_history_checks_accept_an_undone_claim():
    """The provider refused the slot: the claim is undone (not an attempt)."""
    h = [_ev(1, None, "queued"), _ev(2, "queued", "provisioning", 3, t=1),
         _ev(3, "provisioning", "waiting_capacity", 3, t=2),
         _ev(4, "waiting_capacity", "provisioning", 4, t=3),
         _ev(5, "provisioning", "running", 4, t=4), _ev(6, "running", "succeeded", 4, t=5)]
    assert chaos.validate_history(h, "succeeded", 1, 4) == []
    assert any("attempt 2 but 2 claims (1 undone)" in p
               for p in chaos.validate_history(h, "succeeded", 2, 4))


@pytest.mark.parametrize("bad, words", [
    (GOOD + [_ev(11, "succeeded", "failed", 11, t=10)], "2 terminal events"),
    (GOOD[:9], "not terminal"),
    (GOOD[:4] + [_ev(5, "running", "provisioning", 5, t=4)] + GOOD[5:], "not above"),
    (GOOD[:3] + [_ev(4, "provisioning", "running", 4, t=3)] + GOOD[4:], "while the claim's is 5"),
    (GOOD[:2] + GOOD[3:], "does not follow"),
    (GOOD[:1] + [_ev(2, "queued", "running", 5, t=1)] + GOOD[3:], "not an allowed move"),
    (GOOD[:9] + [_ev(10, "running", "succeeded", 11, t=7.5)], "earlier than the event"),
])
def test_history_checks_reject(bad, words):
    problems = chaos.validate_history(bad, bad[-1][2], sum(e[2] == "provisioning" for e in bad),
                                      11)
    assert any(words in p for p in problems), problems


def test_history_checks_compare_with_the_row():
    assert any("attempt 2 but 3 claims" in p for p in chaos.validate_history(GOOD, "succeeded", 2, 11))
    assert any("row token 9" in p for p in chaos.validate_history(GOOD, "succeeded", 3, 9))
    assert any("row says running" in p for p in chaos.validate_history(GOOD, "running", 3, 11))


def test_build_clock_reads_only_its_own_job():
    assert chaos.build_clock("start=10 job=a\nx\nend=20 job=a\n", "a") == (10, 20, None)
    assert chaos.build_clock("start=10 job=b\nend=20 job=b\n", "a")[2]
    assert chaos.build_clock("start=10 job=a\nstart=11 job=a\nend=20 job=a\n", "a")[2]
    assert chaos.build_clock("start=10 job=a\n", "a")[2]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run processes as a sandbox uid")
def test_watcher_sees_two_builds_of_a_project():
    """Two marked processes of one project under sandbox uids are an
    overlap; a build's own $(...) subshell is not a second build."""
    uid = 6_500_000 + os.getpid() % 1000 * 4
    w = chaos.Watcher(uid, uid + 4, {"wp"})
    procs = []

    def spawn(u, script):
        procs.append(subprocess.Popen(["sh", "-c", script], user=u, group=u, extra_groups=[],
                                      start_new_session=True, cwd="/"))

    w.start()
    try:
        spawn(uid, ": sbxchaos.wp.j1; x=$(sleep 2; echo); sleep 1")
        wait_until(lambda: len(w.builds) == 1 and w.samples > 10, 10, "one build seen")
        assert w.overlaps == {}
        spawn(uid + 1, ": sbxchaos.wp.j2; sleep 2")
        wait_until(lambda: w.overlaps, 10, "the overlap seen")
        (project, jobs, _), = w.overlaps.values()
        assert project == "wp" and sorted(jobs) == ["j1", "j2"]
    finally:
        for p in procs:
            p.kill()
            p.wait()
        w.halt.set()
        w.join(5)
    assert w.error is None


def test_leftover_leases_are_found(services_ctl, services, sbx_bin):
    """The lease check sees a run's lease hash, project key and deadline
    entry, and ignores another run's."""
    c = chaos.Chaos(services_ctl, str(sbx_bin), chaos.Options.short())
    url = services["SBX_REDIS_URL"]
    slot, other = "local/%s-n0/0" % c.tag, "local/other-n0/0"
    keys = ["{sbx}:lease:" + slot, "{sbx}:project:%s-p00" % c.tag, "{sbx}:lease:" + other]
    try:
        chaos.redis_cli(url, "HSET", keys[0], "project", "%s-p00" % c.tag, "token", "7")
        chaos.redis_cli(url, "SET", keys[1], slot)
        chaos.redis_cli(url, "HSET", keys[2], "project", "other-p00", "token", "8")
        chaos.redis_cli(url, "ZADD", "{sbx}:deadlines", "1", slot)
        left = c.my_leases()
        assert len(left) == 3 and not any("other" in x for x in left), left
    finally:
        chaos.redis_cli(url, "DEL", *keys)
        chaos.redis_cli(url, "ZREM", "{sbx}:deadlines", slot)
        chaos.shutil.rmtree(c.out, ignore_errors=True)
        chaos.shutil.rmtree(c.work, ignore_errors=True)
        c._chaos_log.close()


# Findings reported to the lead and not fixed yet. A run whose findings are
# all of these kinds is an expected failure; any other finding fails.
# Findings of earlier runs, fixed since (keep the list for new known ones):
# after Redis lost its data, jobs were dead-lettered without a build — the
# worker re-registered its busy slots as free and the fence counter restarted
# below the tokens agents had seen; each refusal cost a provider attempt.
KNOWN = []


def test_chaos_short(services_ctl, services, sbx_bin):
    """Faults of every kind while 100 jobs flow; then every invariant of
    tests/chaos/chaos.py (one outcome per job, a valid history, no two builds
    of a project at once, no lease or sandbox left)."""
    seed = os.environ.get("SBX_CHAOS_SEED")
    opts = chaos.Options.short(seed=int(seed) if seed else None)
    t0 = time.monotonic()
    c = chaos.run_chaos(services_ctl, str(sbx_bin), opts)
    report = c.report()
    print(report)
    print("chaos short run took %.1f s" % (time.monotonic() - t0))
    known = [why for rx, why in KNOWN if any(rx.search(f) for f in c.findings)]
    if c.findings and all(any(rx.search(f) for rx, _ in KNOWN) for f in c.findings):
        pytest.xfail("known finding: %s (evidence: %s)" % ("; ".join(known), c.out))
    assert not c.findings, report
    chaos.shutil.rmtree(c.out, ignore_errors=True)
