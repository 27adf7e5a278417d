"""sbx_client — enqueue sbx jobs and follow their runs from Python.

    from sbx_client import Client
    with Client(brokers="kafka:9092", database_url="postgresql://...") as sbx:
        sbx.enqueue({"job_id": "j1", "project_id": "acme", "script": "make test"})
        for event in sbx.watch("j1"):
            print(event)

Shapes are schemas/run.v1, log.v1 and session.v1 (types.Run, types.LogChunk,
types.Session)."""
from ._job import JobInvalidError, fingerprint, load_schema, validate_job, validator_for
from .client import Client, SbxError, is_log_chunk
from .types import (CancelResult, Enqueued, Job, LogChunk, Run, RunEvent, Session, SessionEvent,
                    SessionOptions, StopSessionResult, WatchEvent)

__all__ = ["Client", "SbxError", "JobInvalidError", "is_log_chunk", "validate_job",
           "fingerprint", "load_schema", "validator_for", "Job", "Run", "RunEvent", "LogChunk",
           "WatchEvent", "CancelResult", "Enqueued", "Session", "SessionEvent", "SessionOptions",
           "StopSessionResult"]
