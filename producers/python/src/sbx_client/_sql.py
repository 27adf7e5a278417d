"""_sql.py — the statements that read runs and log chunks as run.v1 and
log.v1 (schemas/), built in PostgreSQL so every member has the contract's type
and every timestamp its form (RFC 3339 UTC, a Z and microseconds): the CLI's
objects, member for member (producers/cli/cli.h, SBX_CLI_RUN_V1). The same
text as producers/node/src/sql.ts, with psycopg's named placeholders."""


def _ts(col: str) -> str:
    return "to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')" % col


def _run_object(history: str) -> str:
    return f"""jsonb_build_object(
  'v', 1, 'job_id', r.job_id, 'project_id', r.project_id, 'status', r.status,
  'attempt', r.attempt, 'provider', r.provider, 'slot', r.slot, 'instance', r.instance,
  'exit_code', r.exit_code, 'error', r.error, 'preview_url', r.preview_url,
  'log_tail', r.log_tail, 'cancel_requested', r.cancel_requested,
  'created_at', {_ts("r.created_at")}, 'updated_at', {_ts("r.updated_at")},
  'started_at', {_ts("r.started_at")}, 'finished_at', {_ts("r.finished_at")})
  || jsonb_build_object('worker_id', r.worker_id, 'lease_token', r.lease_token,
       'kafka_partition', r.kafka_partition, 'kafka_offset', r.kafka_offset,
       'payload_sha256', r.payload_sha256)
  || CASE WHEN {history} THEN jsonb_build_object('events', (
       SELECT coalesce(jsonb_agg(jsonb_build_object('from_status', e.from_status,
                'to_status', e.to_status, 'at', {_ts("e.at")}, 'detail', e.detail,
                'worker_id', e.worker_id, 'lease_token', e.lease_token) ORDER BY e.id), '[]'::jsonb)
         FROM sbx.run_events e WHERE e.job_id = r.job_id)) ELSE '{{}}'::jsonb END"""


STATUS = (f"SELECT {_run_object('%(history)s::boolean')} AS run FROM sbx.runs r"
          " WHERE r.job_id = %(job)s")

LIST = f"""SELECT {_run_object('false')} AS run FROM sbx.runs r
  WHERE (%(project)s::text IS NULL OR r.project_id = %(project)s)
    AND (%(status)s::text IS NULL OR r.status = %(status)s
         OR (%(status)s = 'active' AND NOT sbx.is_terminal(r.status))
         OR (%(status)s = 'finished' AND sbx.is_terminal(r.status)))
    AND (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s)
  ORDER BY r.created_at DESC, r.job_id LIMIT %(limit)s"""

LOGS_AFTER = f"""SELECT jsonb_build_object('v', 1, 'job_id', l.job_id, 'attempt', l.attempt,
    'seq', l.seq, 'stream', l.stream, 'data', l.data, 'at', {_ts("l.at")}) AS chunk
  FROM sbx.run_logs l WHERE l.job_id = %(job)s AND (l.attempt, l.seq) > (%(attempt)s, %(seq)s)
  ORDER BY l.attempt, l.seq LIMIT %(limit)s"""

SUBMIT = ("SELECT inserted, status, reused, first_sha"
          " FROM sbx.submit_run(%(job)s, %(project)s, %(spec)s::jsonb, %(sha)s)")
FORGET = "SELECT sbx.forget_submitted(%(job)s, %(sha)s)"
CANCEL = "SELECT status, outcome FROM sbx.request_cancel(%(job)s)"

TERMINAL = frozenset(("succeeded", "failed", "timed_out", "canceled", "dead_lettered"))
