"""test_cli_runs.py — `sbx list`, `sbx logs`, `sbx wait` and `--json` as a
script sees them: exit codes, what goes to stdout and stderr, and every
--json line checked against schemas/run.v1.schema.json and
schemas/log.v1.schema.json (python jsonschema, draft 2020-12), the shapes
the Node and Python clients and the console share.
"""

import json
import re
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import REPO, wait_until
from test_worker import job, topics, wait_terminal, workdir  # noqa: F401 (fixtures)

RUN_S = 60
UTC_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def validator(kind):
    schema = json.loads((REPO / "schemas" / ("%s.v1.schema.json" % kind)).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


RUN_V1 = validator("run")
LOG_V1 = validator("log")


def check_run(o):
    RUN_V1.validate(o)
    for k in ("created_at", "updated_at", "started_at", "finished_at"):
        assert o[k] is None or UTC_TS.match(o[k]), (k, o[k])
    for e in o.get("events", []):
        assert UTC_TS.match(e["at"]), e
    return o


def check_log(o):
    LOG_V1.validate(o)
    assert UTC_TS.match(o["at"]), o
    return o


@pytest.fixture
def cli(run_sbx, start_worker, topics, workdir):  # noqa: F811
    """A worker, and sbx with the test's topic."""
    w = start_worker(SBX_WORK_DIR=workdir, **topics)

    def sbx(*args, **kw):
        env = dict(kw.pop("env", {}), SBX_TOPIC=topics["SBX_TOPIC"])
        return run_sbx(*args, env=env, check=kw.pop("check", False), **kw)
    sbx.worker = w
    return sbx


def enqueue(sbx, *jobs):
    r = sbx("enqueue", "--json", "-", input="".join(json.dumps(j) + "\n" for j in jobs))
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_help_everywhere(run_sbx):
    for cmd in ([], ["enqueue"], ["status"], ["wait"], ["cancel"], ["list"], ["logs"], ["dlq"],
                ["dlq", "list"], ["dlq", "show"], ["dlq", "replay"], ["migrate"], ["topics"]):
        r = run_sbx(*cmd, "-h", check=False)
        assert r.returncode == 0 and r.stdout.startswith("usage: sbx"), (cmd, r.stdout, r.stderr)


def test_wait_exit_codes_and_json(cli, pg):
    ok = job("p-cli-ok", "echo fine")
    bad = job("p-cli-bad", "echo broken >&2; exit 3")
    slow = job("p-cli-slow", "sleep 30")
    ids = enqueue(cli, ok, bad, slow)

    r = cli("wait", "--json", ok["job_id"])
    assert r.returncode == 0, r.stderr
    runs = [check_run(json.loads(line)) for line in r.stdout.splitlines()]
    assert [(x["job_id"], x["status"], x["exit_code"]) for x in runs] == [(ok["job_id"], "succeeded", 0)]

    r = cli("wait", ok["job_id"], bad["job_id"])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout.splitlines() == ["%s succeeded" % ok["job_id"], "%s failed" % bad["job_id"]]

    r = cli("wait", "--json", bad["job_id"])
    assert r.returncode == 1
    assert check_run(json.loads(r.stdout))["exit_code"] == 3

    r = cli("wait", "--timeout", "1", slow["job_id"])
    assert r.returncode == 3, (r.stdout, r.stderr)

    t0 = time.monotonic()
    r = cli("wait", "--timeout", "60", ok["job_id"], "no-such-job-" + ok["job_id"][-8:])
    assert r.returncode == 4 and "unknown job" in r.stderr, (r.stdout, r.stderr)
    assert time.monotonic() - t0 < 10

    assert cli("wait", "--timeout", "x", ok["job_id"]).returncode == 2
    assert cli("wait").returncode == 2
    cli("cancel", slow["job_id"])
    assert wait_terminal(pg, ids, RUN_S)[slow["job_id"]] == "canceled"
    assert cli("wait", slow["job_id"]).returncode == 1


def test_status_and_list_json(cli, pg):
    project = "p-cli-list-%d" % (time.time_ns() % 10**9)
    jobs = [job(project, "echo %d" % i) for i in range(3)]
    jobs.append(job(project, "exit 5"))
    ids = []
    for j in jobs:  # one by one: created_at orders them
        ids += enqueue(cli, j)
    wait_terminal(pg, ids, RUN_S)

    r = cli("status", "--json", "--history", ids[0])
    run = check_run(json.loads(r.stdout))
    assert [e["to_status"] for e in run["events"]][-1] == "succeeded"
    assert run["events"][0]["from_status"] is None
    assert "events" not in json.loads(cli("status", "--json", ids[0]).stdout)

    r = cli("list", "--json", "--project", project)
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)
    assert isinstance(runs, list) and [check_run(x)["job_id"] for x in runs] == ids[::-1]
    assert [x["job_id"] for x in json.loads(cli("list", "--json", "--project", project,
                                                "--status", "failed").stdout)] == [ids[3]]
    assert len(json.loads(cli("list", "--json", "--project", project, "--limit", "2").stdout)) == 2
    assert len(json.loads(cli("list", "--json", "--project", project, "--since", "1h").stdout)) == 4
    assert json.loads(cli("list", "--json", "--project", project,
                          "--since", "2100-01-01T00:00:00Z").stdout) == []
    assert json.loads(cli("list", "--json", "--project", project, "--status", "active").stdout) == []
    text = cli("list", "--project", project).stdout.splitlines()
    assert text[0].split() == ["JOB", "PROJECT", "STATUS", "ATTEMPT", "EXIT", "AGE"]
    assert [line.split()[0] for line in text[1:]] == ids[::-1]
    assert cli("list", "--status", "done").returncode == 2
    assert cli("list", "--limit", "0").returncode == 2
    assert cli("list", "--since", "yesterday-ish").returncode == 1


def test_logs_print_json_follow(cli, pg, services, sbx_bin):
    j = job("p-cli-logs", "echo out-1; echo err-1 >&2; sleep 3; echo out-2")
    jid = enqueue(cli, j)[0]
    env = dict(services, SBX_TOPIC="unused")
    # Follow from the start: the first line shows while the build sleeps.
    f = subprocess.Popen([str(sbx_bin / "sbx"), "logs", "-f", jid], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = f.stdout.readline()
        assert first == "out-1\n"
        assert pg.scalar("SELECT status FROM sbx.runs WHERE job_id = %s", jid) not in (
            "succeeded", "failed"), "the first line came only at the end"
        out, err = f.communicate(timeout=RUN_S)
    finally:
        f.kill()
    assert f.returncode == 0, err
    assert first + out == "out-1\nout-2\n"
    assert err == "err-1\n"
    assert wait_terminal(pg, [jid], 5)[jid] == "succeeded"

    r = cli("logs", jid)
    assert (r.returncode, r.stdout, r.stderr) == (0, "out-1\nout-2\n", "err-1\n")
    r = cli("logs", "--json", jid)
    chunks = [check_log(json.loads(line)) for line in r.stdout.splitlines()]
    assert [(c["seq"], c["stream"], c["data"]) for c in chunks] == [
        (0, "stdout", "out-1\n"), (1, "stderr", "err-1\n"), (2, "stdout", "out-2\n")]
    assert cli("logs", "--attempt", "2", jid).stdout == ""
    assert cli("logs", "--attempt", "1", jid).stdout == "out-1\nout-2\n"
    r = cli("logs", "-f", "--json", jid)  # a finished run: prints and ends
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3
    r = cli("logs", "no-such-" + jid[-8:])
    assert r.returncode == 4 and "unknown job" in r.stderr
    assert cli("logs").returncode == 2
    assert cli("logs", "--attempt", "0", jid).returncode == 2
