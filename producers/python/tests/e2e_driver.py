"""e2e_driver.py — drives sbx_client against real services for
tests/e2e/test_clients.py, which starts Kafka, PostgreSQL and an sbx-worker
and judges what this prints: one JSON object on stdout. The same steps as
producers/node/test/e2e.mjs.

Environment: SBX_BROKERS, SBX_DATABASE_URL, SBX_TOPIC, E2E_JOB (the job, as
JSON), E2E_TIMEOUT_S; E2E_FINGERPRINT_JOBS: jobs whose fingerprints to print
(alone, without E2E_JOB). Every run and chunk it got is validated with
jsonschema against schemas/run.v1 and log.v1. E2E_SESSION: the session steps
of e2e.mjs, every session validated against schemas/session.v1."""
import json
import os
import sys
import threading
import time
import traceback

from sbx_client import Client, fingerprint, is_log_chunk, validate_job, validator_for

check = {k: validator_for("%s.v1.schema.json" % k) for k in ("run", "log", "session")}
schema_errors = []


def valid(kind, v, where):
    for e in check[kind].iter_errors(v):
        schema_errors.append("%s: %s in %s" % (where, e.message, json.dumps(v)))
    return v


def sessions(sbx, sess, out):
    timeout = float(os.environ.get("E2E_TIMEOUT_S", "60"))
    deadline = time.monotonic() + timeout
    j1, j2 = sess["jobs"]
    try:
        sbx.enqueue(dict(j1, session={"id": sess["session"]}), session=sess["session"])
        out["twice_error"] = None
    except Exception as e:
        out["twice_error"] = str(e)
    out["enqueued"] = [sbx.enqueue(j1, session={"id": sess["session"], "pause_after_s": 600,
                                                "idle_timeout_s": 1200}),
                       sbx.enqueue(j2, session=sess["session"])]
    for j in sess["jobs"]:
        for _ in sbx.watch(j["job_id"], timeout=timeout):
            pass
    while True:
        s = sbx.get_session(sess["project"], sess["session"])
        if s and s["jobs"] == 2 and s["state"] != "busy":
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the session never became idle after its two jobs")
        time.sleep(0.2)
    out["session"] = valid("session", sbx.get_session(sess["project"], sess["session"], history=True),
                           "get_session")
    out["list"] = [valid("session", s, "list_sessions")
                   for s in sbx.list_sessions(project=sess["project"])]
    out["live"] = [s["session_id"] for s in sbx.list_sessions(project=sess["project"], state="live")]
    out["unknown"] = sbx.get_session(sess["project"], "no-such-session")
    out["stop"] = sbx.stop_session(sess["project"], sess["session"])
    out["watched"] = [valid("session", s, "watch_session")
                      for s in sbx.watch_session(sess["project"], sess["session"], timeout=timeout)]
    out["stop_again"] = sbx.stop_session(sess["project"], sess["session"])
    out["stop_unknown"] = sbx.stop_session(sess["project"], "no-such-session")
    out["final"] = valid("session", sbx.get_session(sess["project"], sess["session"], history=True),
                         "get_session ended")
    out["final_list"] = [valid("session", s, "list_sessions")
                         for s in sbx.list_sessions(project=sess["project"])]


def main():
    out = {"schema_errors": schema_errors,
           "fingerprints": [fingerprint(validate_job(j))[1]
                            for j in json.loads(os.environ.get("E2E_FINGERPRINT_JOBS", "[]"))]}
    if "E2E_SESSION" in os.environ:
        sbx = Client(brokers=os.environ["SBX_BROKERS"],
                     database_url=os.environ["SBX_DATABASE_URL"], topic=os.environ["SBX_TOPIC"])
        try:
            sessions(sbx, json.loads(os.environ["E2E_SESSION"]), out)
        except Exception:
            out["error"] = traceback.format_exc()
        finally:
            sbx.close()
        sys.stdout.write(json.dumps(out) + "\n")
        return
    if "E2E_JOB" not in os.environ:
        sys.stdout.write(json.dumps(out) + "\n")
        return
    job = json.loads(os.environ["E2E_JOB"])
    t0 = time.monotonic()
    sbx = Client(brokers=os.environ["SBX_BROKERS"], database_url=os.environ["SBX_DATABASE_URL"],
                 topic=os.environ["SBX_TOPIC"])
    try:
        out["enqueued"] = sbx.enqueue(job)
        out["first_status"] = valid("run", sbx.status(job["job_id"]), "status after enqueue")
        out["events"] = []
        # logs(follow=True) at the same time, on its own connection.
        followed = []
        follower = threading.Thread(target=lambda: followed.extend(
            valid("log", c, "logs follow") for c in sbx.logs(job["job_id"], follow=True,
                                                             timeout=60)))
        follower.start()
        for e in sbx.watch(job["job_id"], timeout=float(os.environ.get("E2E_TIMEOUT_S", "60"))):
            kind = "log" if is_log_chunk(e) else "run"
            valid(kind, e, "watch")
            out["events"].append({"kind": kind, "ms": int((time.monotonic() - t0) * 1000),
                                  "value": e})
        follower.join(60)
        out["followed"] = followed
        # Watching a finished run: its chunks, then its terminal status, and the end.
        out["rewatch"] = list(sbx.watch(job["job_id"], timeout=10))
        # ... resumed after its first chunk.
        c0 = out["rewatch"][0]
        out["resumed"] = list(sbx.watch(job["job_id"], timeout=10, after=(c0["attempt"], c0["seq"])))
        out["status"] = valid("run", sbx.status(job["job_id"], history=True), "status --history")
        out["list"] = [valid("run", r, "list") for r in sbx.list(project=job["project_id"])]
        out["logs"] = [valid("log", c, "logs") for c in sbx.logs(job["job_id"])]
        try:
            sbx.enqueue(dict(job, script="echo another payload"))
            out["reused_error"] = None
        except Exception as e:
            out["reused_error"] = str(e)
        out["cancel_finished"] = sbx.cancel(job["job_id"])
        out["cancel_unknown"] = sbx.cancel(job["job_id"] + "-never-sent")
        out["unknown_status"] = sbx.status(job["job_id"] + "-not-a-job")
    except Exception:
        out["error"] = traceback.format_exc()
    finally:
        sbx.close()
    sys.stdout.write(json.dumps(out) + "\n")


main()
