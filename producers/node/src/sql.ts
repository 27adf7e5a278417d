/* sql.ts — the statements the client runs. Runs and log chunks come out as
 * run.v1 and log.v1 (schemas/) from sbx.run_v1(), sbx.run_v1_events() and
 * sbx.log_v1() (migrations/0008_json_shapes.sql), the one definition the
 * `sbx` CLI and console use as well, so every reader gets the same members,
 * types and timestamps (RFC 3339 UTC, a Z and microseconds);
 * tests/e2e/test_clients.py compares them with `sbx status/list/logs --json`.
 * Sessions come out as session.v1 from sbx.session_v1()
 * (migrations/0010_sessions.sql), with the history `sbx session show --json`
 * adds (producers/cli/sessions.c holds the same text).
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

/** One session.v1 of project $1, session $2; $3 (a boolean) adds its
 * history as "events", oldest first (sbx.session_v1_events). */
export const SESSION = `SELECT CASE WHEN $3::boolean THEN sbx.session_v1_events(s)
    ELSE sbx.session_v1(s) END AS session
  FROM sbx.sessions s WHERE s.project_id = $1 AND s.session_id = $2`;

/** Most recently used first, as `sbx session list`; $2 a state or 'live' (not ended). */
export const SESSIONS = `SELECT sbx.session_v1(s) AS session FROM sbx.sessions s
  WHERE ($1::text IS NULL OR s.project_id = $1)
    AND ($2::text IS NULL OR s.state = $2 OR ($2 = 'live' AND s.state <> 'ended'))
  ORDER BY s.last_used_at DESC, s.project_id, s.session_id LIMIT $3`;

/** `sbx session stop`: the state it found, '' for no such session. */
export const STOP_SESSION = "SELECT sbx.stop_session($1, $2) AS state";

export const TERMINAL = new Set(["succeeded", "failed", "timed_out", "canceled", "dead_lettered"]);
