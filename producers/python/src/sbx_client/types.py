"""types.py — the shapes of schemas/ as TypedDicts: Run (run.v1), RunEvent,
LogChunk (log.v1), Session (session.v1), SessionEvent, and Job (job.v1,
total=False past its two required keys).
Kept by hand and held to the schema files by tests/test_vectors.py, which
fails when a schema names a member these do not (or the reverse)."""

import sys
from typing import Dict, List, Literal, Optional, TypedDict, Union

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pragma: no cover
    from typing_extensions import NotRequired

Status = Literal["submitted", "queued", "waiting_capacity", "provisioning", "running",
                 "succeeded", "failed", "timed_out", "canceled", "dead_lettered"]
Stream = Literal["stdout", "stderr", "sbx"]
SessionState = Literal["busy", "idle", "paused", "ended"]


class RunEvent(TypedDict):
    from_status: Optional[str]
    to_status: str
    at: str
    detail: Optional[str]


class Run(TypedDict):
    v: Literal[1]
    job_id: str
    project_id: str
    status: Status
    attempt: int
    provider: Optional[str]
    slot: Optional[str]
    instance: Optional[str]
    exit_code: Optional[int]
    error: Optional[str]
    preview_url: Optional[str]
    log_tail: Optional[str]
    cancel_requested: bool
    created_at: str
    updated_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    events: NotRequired[List[RunEvent]]


class LogChunk(TypedDict):
    v: Literal[1]
    job_id: str
    attempt: int
    seq: int
    stream: Stream
    data: str
    at: str


class Resources(TypedDict, total=False):
    cpus: float
    memory_mb: int
    pids: int
    disk_mb: int


class Trace(TypedDict):
    traceparent: str
    tracestate: NotRequired[str]


class SessionOptions(TypedDict):
    """A job message's "session": its id and, optionally, its timeouts (the
    worker's defaults otherwise: 300, 900, 86400 s) and its dev server's
    port (served at the session's preview URL)."""
    id: str
    pause_after_s: NotRequired[int]
    idle_timeout_s: NotRequired[int]
    max_lifetime_s: NotRequired[int]
    preview_port: NotRequired[int]


class SessionEvent(TypedDict):
    generation: int
    from_state: Optional[SessionState]
    to_state: SessionState
    at: str
    job_id: Optional[str]
    lease_token: Optional[int]
    detail: Optional[str]


class Session(TypedDict):
    v: Literal[1]
    project_id: str
    session_id: str
    state: SessionState
    generation: int
    provider: Optional[str]
    slot: Optional[str]
    preview_url: Optional[str]
    last_job_id: Optional[str]
    jobs: int
    pause_after_s: int
    idle_timeout_s: int
    max_lifetime_s: int
    stop_requested: bool
    end_reason: Optional[str]
    lease_token: int
    created_at: str
    updated_at: str
    last_used_at: str
    ends_at: str
    ended_at: Optional[str]
    events: NotRequired[List[SessionEvent]]


class StopSessionResult(TypedDict):
    """requested (a worker ends it once no job holds it), ended (it had
    already ended), unknown (no such session; state None)."""
    outcome: Literal["requested", "ended", "unknown"]
    state: Optional[SessionState]


class Job(TypedDict):
    job_id: str
    project_id: str
    v: NotRequired[Literal[1]]
    command: NotRequired[List[str]]
    script: NotRequired[str]
    env: NotRequired[Dict[str, str]]
    files: NotRequired[Dict[str, str]]
    image: NotRequired[str]
    timeout_s: NotRequired[int]
    resources: NotRequired[Resources]
    network: NotRequired[bool]
    egress: NotRequired[List[str]]
    provider: NotRequired[Literal["any", "local", "vmpool", "docker", "fly"]]
    trace: NotRequired[Trace]
    metadata: NotRequired[Dict[str, str]]
    session: NotRequired[SessionOptions]
    submitted_at: NotRequired[str]


class CancelResult(TypedDict):
    status: Status
    outcome: Literal["flagged", "canceled", "recorded", "finished"]


class Enqueued(TypedDict):
    job_id: str
    partition: int
    offset: int
    recorded: bool


WatchEvent = Union[Run, LogChunk]
