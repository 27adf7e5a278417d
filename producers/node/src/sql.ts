/* sql.ts — the statements that read runs and log chunks as run.v1 and
 * log.v1 (schemas/), built in PostgreSQL so every member has the contract's
 * type and every timestamp the contract's form: RFC 3339 in UTC with a Z and
 * microseconds. The objects are the CLI's, member for member
 * (producers/cli/cli.h, SBX_CLI_RUN_V1: v1's members, then the extra ones
 * `sbx status --json` printed before v1); tests/e2e/test_clients.py compares
 * them with `sbx status/list/logs --json`. producers/python/src/sbx_client/
 * _sql.py holds the same text. */

const ts = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`;

/** One run.v1 per row of sbx.runs r; $history (a boolean parameter) adds its events. */
export const runObject = (history: string) => `jsonb_build_object(
  'v', 1, 'job_id', r.job_id, 'project_id', r.project_id, 'status', r.status,
  'attempt', r.attempt, 'provider', r.provider, 'slot', r.slot, 'instance', r.instance,
  'exit_code', r.exit_code, 'error', r.error, 'preview_url', r.preview_url,
  'log_tail', r.log_tail, 'cancel_requested', r.cancel_requested,
  'created_at', ${ts("r.created_at")}, 'updated_at', ${ts("r.updated_at")},
  'started_at', ${ts("r.started_at")}, 'finished_at', ${ts("r.finished_at")})
  || jsonb_build_object('worker_id', r.worker_id, 'lease_token', r.lease_token,
       'kafka_partition', r.kafka_partition, 'kafka_offset', r.kafka_offset,
       'payload_sha256', r.payload_sha256)
  || CASE WHEN ${history} THEN jsonb_build_object('events', (
       SELECT coalesce(jsonb_agg(jsonb_build_object('from_status', e.from_status,
                'to_status', e.to_status, 'at', ${ts("e.at")}, 'detail', e.detail,
                'worker_id', e.worker_id, 'lease_token', e.lease_token) ORDER BY e.id), '[]'::jsonb)
         FROM sbx.run_events e WHERE e.job_id = r.job_id)) ELSE '{}'::jsonb END`;

export const STATUS = `SELECT ${runObject("$2::boolean")} AS run FROM sbx.runs r WHERE r.job_id = $1`;

/** Newest first, as `sbx list`; each filter is NULL when not given; status
 * 'active' / 'finished' mean not terminal / terminal. */
export const LIST = `SELECT ${runObject("false")} AS run FROM sbx.runs r
  WHERE ($1::text IS NULL OR r.project_id = $1)
    AND ($2::text IS NULL OR r.status = $2 OR ($2 = 'active' AND NOT sbx.is_terminal(r.status))
         OR ($2 = 'finished' AND sbx.is_terminal(r.status)))
    AND ($3::timestamptz IS NULL OR r.created_at >= $3)
  ORDER BY r.created_at DESC, r.job_id LIMIT $4`;

/** Chunks after (attempt, seq) = ($2, $3), in order, at most $4 of them. */
export const LOGS_AFTER = `SELECT jsonb_build_object('v', 1, 'job_id', l.job_id, 'attempt', l.attempt,
    'seq', l.seq, 'stream', l.stream, 'data', l.data, 'at', ${ts("l.at")}) AS chunk
  FROM sbx.run_logs l WHERE l.job_id = $1 AND (l.attempt, l.seq) > ($2, $3)
  ORDER BY l.attempt, l.seq LIMIT $4`;

export const SUBMIT = "SELECT inserted, status, reused, first_sha FROM sbx.submit_run($1, $2, $3::jsonb, $4)";
export const FORGET = "SELECT sbx.forget_submitted($1, $2)";
export const CANCEL = "SELECT status, outcome FROM sbx.request_cancel($1)";

export const TERMINAL = new Set(["succeeded", "failed", "timed_out", "canceled", "dead_lettered"]);
