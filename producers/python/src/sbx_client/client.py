"""client.py — Client: what a Python control plane does with sbx; the twin of
producers/node/src/client.ts, with the same operations and shapes.

A confluent-kafka producer for enqueue() and one psycopg connection for the
rest, each made on first use; watch() and logs(follow=True) open a
connection of their own for LISTEN, closed when the generator ends.

enqueue() does what `sbx enqueue` does (producers/lib/producer.c, submit.c):
validate, record the job as `submitted` when a database is configured
(sbx.submit_run, refusing a job id already used by another payload),
publish keyed by project_id with idempotence (acks=all) and librdkafka's
murmur2_random partitioner (Java's, the one libsbx sets), wait for the
delivery report, and take the row back (sbx.forget_submitted) if the
publish failed (not if no report came in time: the message may still arrive).

watch() listens, then reads: LISTEN sbx_runs and sbx_logs, read the run and
its chunks so far, then on each notification for the job (or every second,
NOTIFY being a hint) read again. Every chunk is yielded once in (attempt,
seq) order; a status when it differs from the last; the terminal status
last, after the run's chunks, which the worker stores before it ends a run.

Sessions (many jobs of a project in one sandbox, migrations/0010) are read
as session.v1 (sbx.session_v1()); enqueue(job, session=...) puts a job in
one. watch_session() is watch() for a session: LISTEN sbx_sessions, read,
and on each notification for it (or every second) read again; it yields the
session when its state, generation or stop_requested changed, and ends
after it ended.
"""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from typing import (Any, Callable, Dict, Generator, Iterator, List, Literal, Optional, Tuple,
                    TypeVar, Union, cast)

import psycopg
from confluent_kafka import KafkaException, Producer

from . import _sql
from ._job import fingerprint, validate_job
from .types import (CancelResult, Enqueued, Job, LogChunk, Run, Session, SessionOptions,
                    SessionState, Status, StopSessionResult, WatchEvent)

LOG_PAGE = 1000
REREAD_S = 1.0
_T = TypeVar("_T")


class SbxError(RuntimeError):
    """An operation failed (the broker, the database, a job id reused)."""


def is_log_chunk(e: WatchEvent) -> bool:
    """Whether a watch() event is a log chunk (log.v1 has seq; run.v1 has status)."""
    return "seq" in e and "status" not in e


class Client:
    """Enqueues sbx jobs and reads their runs.

    brokers: Kafka bootstrap servers ("host:port,..."), needed by enqueue().
    database_url: PostgreSQL (a role with sbx_submitter to enqueue/cancel,
    sbx_reader to read). kafka: extra librdkafka settings (TLS, SASL),
    applied last. ack_timeout_s: how long enqueue() waits for the broker.
    """

    def __init__(self, brokers: Optional[str] = None, database_url: Optional[str] = None,
                 topic: str = "sbx.jobs", kafka: Optional[Dict[str, Any]] = None,
                 ack_timeout_s: float = 30.0):
        self._brokers = brokers
        self._database_url = database_url
        self._topic = topic
        self._kafka_conf = dict(kafka or {})
        self._ack_timeout_s = ack_timeout_s
        self._producer: Optional[Producer] = None
        self._conn: Optional[psycopg.Connection] = None
        self._lock = threading.Lock()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- connections -----------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        if not self._database_url:
            raise SbxError("no database_url given")
        return psycopg.connect(self._database_url, autocommit=True,
                               application_name="sbx-client-python")

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _query(self, sql: str, params: Dict[str, Any]) -> List[Tuple[Any, ...]]:
        with self._lock, self._db().cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def _kafka(self) -> Producer:
        if self._producer is None:
            if not self._brokers:
                raise SbxError("no brokers given")
            conf: Dict[str, Any] = {
                "bootstrap.servers": self._brokers,
                "client.id": "sbx-client-python",
                "enable.idempotence": True,
                "partitioner": "murmur2_random",
                "linger.ms": 5,
                # The largest valid job plus key and record overhead (sbx.h).
                "message.max.bytes": 1024 * 1024 + 64 * 1024,
            }
            conf.update(self._kafka_conf)
            self._producer = Producer(conf)
        return self._producer

    # --- operations ------------------------------------------------------

    def enqueue(self, job: Job, session: Union[str, SessionOptions, None] = None) -> Enqueued:
        """Validates the job (JobInvalidError, nothing sent), records it as
        submitted when a database is configured, publishes it keyed by
        project_id and returns once the brokers acknowledged it. session:
        run it in the project's session of this id (or these settings), as
        `sbx enqueue --session`."""
        if session is not None:
            if "session" in job:
                raise SbxError(f"job {job['job_id']} names a session; give it once")
            job = cast(Job, dict(job, session={"id": session} if isinstance(session, str)
                                 else session))
        text = validate_job(job)
        producer = self._kafka()
        recorded, sha = False, ""
        if self._database_url:
            redacted, sha = fingerprint(text)
            inserted, status, reused, first_sha = self._query(_sql.SUBMIT, {
                "job": job["job_id"], "project": job["project_id"], "spec": redacted, "sha": sha})[0]
            if reused:
                raise SbxError(f"job id {job['job_id']} is already used by another payload (its run "
                               f"is {status}, payload_sha256 {first_sha}; this one's is {sha}); "
                               "nothing sent")
            recorded = bool(inserted)
        report: Dict[str, Any] = {}

        def delivered(err: Any, msg: Any) -> None:
            report["err"], report["msg"] = err, msg

        try:
            producer.produce(self._topic, key=job["project_id"].encode(), value=text.encode(),
                             on_delivery=delivered)
            deadline = time.monotonic() + self._ack_timeout_s
            while not report and time.monotonic() < deadline:
                producer.poll(min(0.1, max(0.0, deadline - time.monotonic())))
        except (KafkaException, BufferError) as e:
            report["err"] = e
        if not report:
            # No report in time: the message may still reach the brokers, so
            # the row stays (as libsbx keeps it); a worker that consumes it
            # moves it on, `sbx cancel` ends it if it never comes.
            raise SbxError(f"no acknowledgement for {job['job_id']} within "
                           f"{self._ack_timeout_s} s")
        if report["err"] is not None:
            # Refused or failed: the row goes while it is still 'submitted'
            # with this fingerprint (0005), as libsbx does.
            if recorded:
                try:
                    self._query(_sql.FORGET, {"job": job["job_id"], "sha": sha})
                except psycopg.Error:
                    pass
            raise SbxError(f"publishing {job['job_id']}: {report['err']}")
        msg = report["msg"]
        return {"job_id": job["job_id"], "partition": msg.partition(), "offset": msg.offset(),
                "recorded": recorded}

    def status(self, job_id: str, history: bool = False) -> Optional[Run]:
        """The run (run.v1), with its events if history; None for an unknown job."""
        rows = self._query(_sql.STATUS, {"job": job_id, "history": history})
        return rows[0][0] if rows else None

    def list(self, project: Optional[str] = None,
             status: Union[Status, Literal["active", "finished"], None] = None,
             since: Union[datetime, str, None] = None, limit: int = 50) -> List[Run]:
        """Runs, newest first, as `sbx list`: status may also be "active" (not
        terminal) or "finished" (terminal); limit defaults to sbx list's 50."""
        rows = self._query(_sql.LIST, {"project": project, "status": status,
                                       "since": since, "limit": limit})
        return [r[0] for r in rows]

    def cancel(self, job_id: str) -> CancelResult:
        """`sbx cancel`: sbx.request_cancel (migrations/0005_submitted.sql)."""
        status, outcome = self._query(_sql.CANCEL, {"job": job_id})[0]
        return {"status": status, "outcome": outcome}

    def logs(self, job_id: str, follow: bool = False, timeout: Optional[float] = None,
             after: Tuple[int, int] = (0, -1)) -> Iterator[LogChunk]:
        """The run's log chunks (log.v1) in order; with follow, also those
        written from now on, until the run is terminal and its log drained.
        after: resume past this (attempt, seq)."""
        if follow:
            for e in self.watch(job_id, timeout=timeout, after=after):
                if is_log_chunk(e):
                    yield e  # type: ignore[misc]
            return
        while True:
            page = self._chunks(None, job_id, after)
            yield from page
            if len(page) < LOG_PAGE:
                return
            after = (page[-1]["attempt"], page[-1]["seq"])

    def _chunks(self, conn: Optional[psycopg.Connection], job_id: str,
                after: Tuple[int, int]) -> List[LogChunk]:
        params = {"job": job_id, "attempt": after[0], "seq": after[1], "limit": LOG_PAGE}
        if conn is None:
            rows = self._query(_sql.LOGS_AFTER, params)
        else:
            rows = conn.execute(_sql.LOGS_AFTER, params).fetchall()
        return [r[0] for r in rows]

    def watch(self, job_id: str, timeout: Optional[float] = None,
              after: Tuple[int, int] = (0, -1)) -> Iterator[WatchEvent]:
        """Each status change of the run (run.v1) and each log chunk
        (log.v1), in order, starting with the run as it is now (once it
        exists); ends after the terminal status, which follows the run's last
        chunk. timeout: give up (TimeoutError) after so many seconds. after:
        resume past this (attempt, seq), the last chunk a reader kept before
        its connection broke (a broken connection raises psycopg.Error)."""
        last_status: Optional[str] = None

        def drain(conn: psycopg.Connection) -> Iterator[LogChunk]:
            nonlocal after
            while True:
                page = self._chunks(conn, job_id, after)
                for c in page:
                    after = (c["attempt"], c["seq"])
                    yield c
                if len(page) < LOG_PAGE:
                    return

        def read(conn: psycopg.Connection) -> Generator[WatchEvent, None, bool]:
            nonlocal last_status
            row = conn.execute(_sql.STATUS, {"job": job_id, "history": False}).fetchone()
            run: Optional[Run] = row[0] if row else None
            # Chunks stored before this status was read belong before it.
            yield from drain(conn)
            if run is not None and run["status"] != last_status:
                terminal = run["status"] in _sql.TERMINAL
                if terminal:
                    yield from drain(conn)
                last_status = run["status"]
                yield run
                if terminal:
                    return True
            return False

        return self._listen(f"watch {job_id}: not terminal", ("LISTEN sbx_runs", "LISTEN sbx_logs"),
                            lambda p: p.get("job_id") == job_id, timeout, read)

    def _listen(self, what: str, listens: Tuple[str, ...],
                matches: Callable[[Dict[str, Any]], bool], timeout: Optional[float],
                read: Callable[[psycopg.Connection], Generator[_T, None, bool]]) -> Iterator[_T]:
        """The loop of watch and watch_session, on a connection of its own:
        read(conn) runs at once, then after each notification whose payload
        matches (or does not parse) and every REREAD_S without one; it yields
        what changed and returns True when the watched thing is done. what
        names it in the TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._connect() as conn:
            for q in listens:
                conn.execute(q)
            dirty, last_read = True, 0.0
            while True:
                if dirty or time.monotonic() - last_read >= REREAD_S:
                    last_read = time.monotonic()
                    if (yield from read(conn)):
                        return
                wait = max(0.0, REREAD_S - (time.monotonic() - last_read))
                if deadline is not None:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"{what} after {timeout} s")
                    wait = min(wait, deadline - time.monotonic())
                dirty = False
                for n in conn.notifies(timeout=wait, stop_after=1):
                    try:
                        dirty = matches(json.loads(n.payload))
                    except ValueError:
                        dirty = True

    def get_session(self, project: str, session: str, history: bool = False) -> Optional[Session]:
        """The session (session.v1), with its events if history; None if there is none."""
        rows = self._query(_sql.SESSION, {"project": project, "session": session,
                                          "history": history})
        return rows[0][0] if rows else None

    def list_sessions(self, project: Optional[str] = None,
                      state: Union[SessionState, Literal["live"], None] = None,
                      limit: int = 50) -> List[Session]:
        """Sessions, most recently used first, as `sbx session list`: state may
        also be "live" (not ended)."""
        rows = self._query(_sql.SESSIONS, {"project": project, "state": state, "limit": limit})
        return [r[0] for r in rows]

    def stop_session(self, project: str, session: str) -> StopSessionResult:
        """`sbx session stop`: sbx.stop_session (migrations/0010_sessions.sql)."""
        state = self._query(_sql.STOP_SESSION, {"project": project, "session": session})[0][0]
        if not state:
            return {"outcome": "unknown", "state": None}
        return {"outcome": "ended" if state == "ended" else "requested", "state": state}

    def watch_session(self, project: str, session: str,
                      timeout: Optional[float] = None) -> Iterator[Session]:
        """The session (session.v1) as it is now (once it exists), then each
        change of its state, generation or stop_requested; ends after it
        ended. timeout: give up (TimeoutError) after so many seconds."""
        params = {"project": project, "session": session, "history": False}
        last: Optional[Tuple[str, int, bool]] = None

        def read(conn: psycopg.Connection) -> Generator[Session, None, bool]:
            nonlocal last
            row = conn.execute(_sql.SESSION, params).fetchone()
            s: Optional[Session] = row[0] if row else None
            if s is not None:
                key = (s["state"], s["generation"], s["stop_requested"])
                if key != last:
                    last = key
                    yield s
                    if s["state"] == "ended":
                        return True
            return False

        return self._listen(f"watch_session {project}/{session}: not ended",
                            ("LISTEN sbx_sessions",),
                            lambda p: p.get("project_id") == project
                            and p.get("session_id") == session, timeout, read)

    def close(self) -> None:
        """Flushes the producer and closes the database connection."""
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
