"""types.py — the shapes of schemas/ as TypedDicts: Run (run.v1), RunEvent,
LogChunk (log.v1) and Job (job.v1, total=False past its two required keys).
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
