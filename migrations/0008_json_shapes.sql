-- 0008_json_shapes.sql — run.v1 and log.v1 (schemas/) built in one place.
--
-- Every reader of runs and log chunks (`sbx status/list/wait/logs --json`,
-- the console's API and feed, the Node and Python clients) printed the same
-- objects from its own copy of the same jsonb_build_object(): four copies
-- in three languages, kept in step by hand and by tests. These functions are
-- the one copy; a reader writes
--     SELECT sbx.run_v1(r) FROM sbx.runs r WHERE r.job_id = $1
-- and gets the contract's members with the contract's types. Timestamps are
-- RFC 3339 in UTC with microseconds and a Z, the same for every reader.
--
-- run_v1: v1's members, then the ones `sbx status --json` printed before v1
-- (worker_id, lease_token, kafka_partition, kafka_offset, payload_sha256),
-- which v1 allows as extra members. run_v1_events: the same with the run's
-- history as "events", oldest first. log_v1: one chunk of sbx.run_logs.
--
-- Plain SQL functions (no SECURITY DEFINER, no SET), so the planner can
-- inline them and the caller's own SELECT rights on the tables apply:
-- sbx_reader and sbx_writer have them (0002, 0006); sbx_submitter is a
-- member of sbx_reader (0005).
--
-- Safe to run twice: CREATE OR REPLACE, idempotent GRANTs.

CREATE OR REPLACE FUNCTION sbx.run_v1(r sbx.runs) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'v', 1, 'job_id', r.job_id, 'project_id', r.project_id, 'status', r.status,
        'attempt', r.attempt, 'provider', r.provider, 'slot', r.slot, 'instance', r.instance,
        'exit_code', r.exit_code, 'error', r.error, 'preview_url', r.preview_url,
        'log_tail', r.log_tail, 'cancel_requested', r.cancel_requested,
        'created_at', to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(r.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'started_at', to_char(r.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'finished_at', to_char(r.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    || jsonb_build_object(
        'worker_id', r.worker_id, 'lease_token', r.lease_token,
        'kafka_partition', r.kafka_partition, 'kafka_offset', r.kafka_offset,
        'payload_sha256', r.payload_sha256)
$$;

CREATE OR REPLACE FUNCTION sbx.run_v1_events(r sbx.runs) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT sbx.run_v1(r) || jsonb_build_object('events', (
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'from_status', e.from_status, 'to_status', e.to_status,
                   'at', to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'detail', e.detail, 'worker_id', e.worker_id, 'lease_token', e.lease_token)
                   ORDER BY e.id), '[]'::jsonb)
          FROM sbx.run_events e WHERE e.job_id = r.job_id))
$$;

CREATE OR REPLACE FUNCTION sbx.log_v1(l sbx.run_logs) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'v', 1, 'job_id', l.job_id, 'attempt', l.attempt, 'seq', l.seq,
        'stream', l.stream, 'data', l.data,
        'at', to_char(l.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;

REVOKE ALL ON FUNCTION sbx.run_v1(sbx.runs), sbx.run_v1_events(sbx.runs),
                       sbx.log_v1(sbx.run_logs) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sbx.run_v1(sbx.runs), sbx.run_v1_events(sbx.runs),
                          sbx.log_v1(sbx.run_logs) TO sbx_reader, sbx_writer;
