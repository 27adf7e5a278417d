/* sql.ts — the statements the client runs. Runs and log chunks come out as
 * run.v1 and log.v1 (schemas/) from sbx.run_v1(), sbx.run_v1_events() and
 * sbx.log_v1() (migrations/0008_json_shapes.sql), the one definition the
 * `sbx` CLI and console use as well, so every reader gets the same members,
 * types and timestamps (RFC 3339 UTC, a Z and microseconds);
 * tests/e2e/test_clients.py compares them with `sbx status/list/logs --json`.
 * producers/python/src/sbx_client/_sql.py holds the same text. */

/** One run.v1 of the job $1; $2 (a boolean) adds its events. */
export const STATUS = `SELECT CASE WHEN $2::boolean THEN sbx.run_v1_events(r) ELSE sbx.run_v1(r) END AS run
  FROM sbx.runs r WHERE r.job_id = $1`;

/** Newest first, as `sbx list`; each filter is NULL when not given; status
 * 'active' / 'finished' mean not terminal / terminal. */
export const LIST = `SELECT sbx.run_v1(r) AS run FROM sbx.runs r
  WHERE ($1::text IS NULL OR r.project_id = $1)
    AND ($2::text IS NULL OR r.status = $2 OR ($2 = 'active' AND NOT sbx.is_terminal(r.status))
         OR ($2 = 'finished' AND sbx.is_terminal(r.status)))
    AND ($3::timestamptz IS NULL OR r.created_at >= $3)
  ORDER BY r.created_at DESC, r.job_id LIMIT $4`;

/** Chunks after (attempt, seq) = ($2, $3), in order, at most $4 of them. */
export const LOGS_AFTER = `SELECT sbx.log_v1(l) AS chunk
  FROM sbx.run_logs l WHERE l.job_id = $1 AND (l.attempt, l.seq) > ($2, $3)
  ORDER BY l.attempt, l.seq LIMIT $4`;

export const SUBMIT = "SELECT inserted, status, reused, first_sha FROM sbx.submit_run($1, $2, $3::jsonb, $4)";
export const FORGET = "SELECT sbx.forget_submitted($1, $2)";
export const CANCEL = "SELECT status, outcome FROM sbx.request_cancel($1)";

export const TERMINAL = new Set(["succeeded", "failed", "timed_out", "canceled", "dead_lettered"]);
