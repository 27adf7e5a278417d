"""_sql.py — the statements the client runs. Runs and log chunks come out as
run.v1 and log.v1 (schemas/) from sbx.run_v1(), sbx.run_v1_events() and
sbx.log_v1() (migrations/0008_json_shapes.sql), the one definition the `sbx`
CLI and console use as well, so every reader gets the same members, types and
timestamps (RFC 3339 UTC, a Z and microseconds). The same text as
producers/node/src/sql.ts, with psycopg's named placeholders. Sessions come
out as session.v1 from sbx.session_v1() (migrations/0010_sessions.sql), with
the history `sbx session show --json` adds (producers/cli/sessions.c)."""

STATUS = ("SELECT CASE WHEN %(history)s::boolean THEN sbx.run_v1_events(r)"
          " ELSE sbx.run_v1(r) END AS run FROM sbx.runs r WHERE r.job_id = %(job)s")

LIST = """SELECT sbx.run_v1(r) AS run FROM sbx.runs r
  WHERE (%(project)s::text IS NULL OR r.project_id = %(project)s)
    AND (%(status)s::text IS NULL OR r.status = %(status)s
         OR (%(status)s = 'active' AND NOT sbx.is_terminal(r.status))
         OR (%(status)s = 'finished' AND sbx.is_terminal(r.status)))
    AND (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s)
  ORDER BY r.created_at DESC, r.job_id LIMIT %(limit)s"""

LOGS_AFTER = """SELECT sbx.log_v1(l) AS chunk
  FROM sbx.run_logs l WHERE l.job_id = %(job)s AND (l.attempt, l.seq) > (%(attempt)s, %(seq)s)
  ORDER BY l.attempt, l.seq LIMIT %(limit)s"""

SUBMIT = ("SELECT inserted, status, reused, first_sha"
          " FROM sbx.submit_run(%(job)s, %(project)s, %(spec)s::jsonb, %(sha)s)")
FORGET = "SELECT sbx.forget_submitted(%(job)s, %(sha)s)"
CANCEL = "SELECT status, outcome FROM sbx.request_cancel(%(job)s)"

SESSION = """SELECT CASE WHEN %(history)s::boolean THEN sbx.session_v1_events(s)
    ELSE sbx.session_v1(s) END AS session
  FROM sbx.sessions s WHERE s.project_id = %(project)s AND s.session_id = %(session)s"""

SESSIONS = """SELECT sbx.session_v1(s) AS session FROM sbx.sessions s
  WHERE (%(project)s::text IS NULL OR s.project_id = %(project)s)
    AND (%(state)s::text IS NULL OR s.state = %(state)s
         OR (%(state)s = 'live' AND s.state <> 'ended'))
  ORDER BY s.last_used_at DESC, s.project_id, s.session_id LIMIT %(limit)s"""

STOP_SESSION = "SELECT sbx.stop_session(%(project)s, %(session)s) AS state"

TERMINAL = frozenset(("succeeded", "failed", "timed_out", "canceled", "dead_lettered"))
