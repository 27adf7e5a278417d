"""Retention (README "Reliability"): sbx-workers delete runs that ended more
than SBX_RETENTION ago, with their history, in batches, one worker at a
time, and count them in /metrics. Runs that are recent or unfinished stay.

The SQL function's batches, the advisory lock against a second pruner and
the driver's pauses are checked one by one in tests/unit/test_prune.c; this
test runs two real workers against the session's PostgreSQL."""
import re
import uuid

import sbxsvc
from conftest import wait_until
from test_worker import _get, topics  # noqa: F401 — fixture

TERMINAL_SQL = "status IN ('succeeded', 'failed', 'timed_out', 'canceled', 'dead_lettered')"
# More than two of prune.c's batches (SBX_PRUNE_BATCH = 1000), so a pass
# needs several statements with pauses between them.
OLD = 2500


def _seed(pg, prefix, n, status, age):
    finished = "now() - interval '%s'" % age if status != "queued" else "NULL"
    pg.execute("INSERT INTO sbx.runs (job_id, project_id, spec, status, created_at, updated_at, "
               "finished_at) SELECT %%s::text || g, %%s::text || g, '{}', %%s, "
               "now() - interval '%s', now() - interval '%s', %s "
               "FROM generate_series(1, %%s::int) g" % (age, age, finished),
               prefix, prefix, status, n)
    pg.execute("INSERT INTO sbx.run_events (job_id, from_status, to_status) "
               "SELECT r.job_id, NULL, 'queued' FROM sbx.runs r, generate_series(1, 2) "
               "WHERE r.job_id LIKE %s", prefix + "%")


def _count(pg, table, prefix):
    return int(pg.scalar("SELECT count(*) FROM sbx.%s WHERE job_id LIKE %%s" % table,
                         prefix + "%"))


def _pruned(base):
    code, text = _get(base + "/metrics")
    assert code == 200
    m = re.search(r"^sbx_runs_pruned_total (\d+)$", text, re.M)
    assert m, text
    return int(m.group(1))


def test_two_workers_prune_old_terminal_runs(pg, start_worker, topics):  # noqa: F811
    tag = "ret-%s-" % uuid.uuid4().hex[:8]
    _seed(pg, tag + "old-", OLD, "succeeded", "3 days")
    _seed(pg, tag + "recent-", 3, "failed", "1 hour")
    _seed(pg, tag + "queued-", 3, "queued", "3 days")
    # Everything either worker may remove: ours, and any other expired run
    # (the one with the newest fencing token stays; ours have token 0).
    due = int(pg.scalar("SELECT count(*) FROM sbx.runs WHERE %s AND finished_at < now() - "
                        "interval '1 day' AND (lease_token = 0 OR lease_token < (SELECT "
                        "max(lease_token) FROM sbx.runs))" % TERMINAL_SQL))
    assert due >= OLD

    ports = [sbxsvc._free_port(set()) for _ in range(2)]
    workers = [start_worker(SBX_RETENTION="1d", SBX_ADMIN_LISTEN="127.0.0.1:%d" % p, **topics)
               for p in ports]
    bases = ["http://127.0.0.1:%d" % p for p in ports]
    for w in workers:
        w.wait_log(r"serving /healthz", 20)

    wait_until(lambda: _count(pg, "runs", tag + "old-") == 0, 60, "old runs pruned")
    assert _count(pg, "run_events", tag + "old-") == 0
    assert _count(pg, "runs", tag + "recent-") == 3
    assert _count(pg, "run_events", tag + "recent-") == 6
    assert _count(pg, "runs", tag + "queued-") == 3
    assert _count(pg, "run_events", tag + "queued-") == 6
    # Between them the workers counted each removed run once.
    wait_until(lambda: sum(_pruned(b) for b in bases) == due, 10, "metrics add up")
    logs = "".join(open(w.log, errors="replace").read() for w in workers)
    assert re.search(r"prune +removed \d+ runs", logs), logs[-3000:]
