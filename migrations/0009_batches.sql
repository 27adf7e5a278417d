-- 0009_batches.sql — the worker's hot writes, many jobs per statement.
--
-- Under load a worker has hundreds of records, waits, claims and transitions
-- waiting for the same round to PostgreSQL (worker/db.c). Sent as one
-- function call each, most of PostgreSQL's time went to the statement around
-- the row, not the row (pg_stat_statements over 20,000 no-op jobs: 110-150 µs
-- per call, of which the row's own UPDATE or INSERT was 60-70 µs, most of that
-- executor set-up too). These four take arrays, element n being the n-th
-- call of the one-row function beside it, and answer one row per element, in
-- element order, with that function's columns.
--
-- Each answers exactly what the calls one by one would: the common case
-- (a new job; a claimable run; a run whose token matches and that moves on)
-- is done for all its elements in one set-based statement, and every other
-- element goes to the one-row function, after it and in element order. The
-- rare cases (a cancel asked, a stale token, a replay, two elements of one
-- job that do not chain) therefore keep the one code path that decides them.
--
-- transitions() coalesces: the elements of one job that chain (running, then
-- its outcome, as a fast build reports both before the round is sent) become
-- ONE update of the row, to the last status, and one history row each, in
-- order. The row's NOTIFY (the runs_notify trigger) then fires once, with the
-- last status: NOTIFY is a hint and the history is the record (0001).
--
-- Safe to run twice: CREATE OR REPLACE, idempotent REVOKE and GRANT.

CREATE OR REPLACE FUNCTION sbx.record_runs(p_job text[], p_project text[], p_spec jsonb[],
                                           p_worker text[], p_partition integer[],
                                           p_offset bigint[], p_sha text[])
RETURNS TABLE (status text, attempt integer, lease_token bigint, cancel_requested boolean,
               reused boolean, first_sha text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fresh jsonb;    -- {job: true} for the ids this statement inserted
BEGIN
    WITH ins AS (
        INSERT INTO sbx.runs AS r (job_id, project_id, spec, kafka_partition, kafka_offset,
                                   payload_sha256)
        SELECT DISTINCT ON (x.job) x.job, x.project, sbx.redact_spec(x.spec), x.part, x.off, x.sha
          FROM unnest(p_job, p_project, p_spec, p_partition, p_offset, p_sha)
               WITH ORDINALITY AS x(job, project, spec, part, off, sha, ord)
         ORDER BY x.job, x.ord
        ON CONFLICT (job_id) DO NOTHING
        RETURNING r.job_id)
    SELECT COALESCE(jsonb_object_agg(ins.job_id, true), '{}') INTO fresh FROM ins;

    -- The first element of each inserted id is new; any other goes to
    -- record_run (a second message with the id: same payload or not).
    RETURN QUERY
    WITH e AS (
        SELECT x.*, fresh ? x.job AND x.ord = min(x.ord) OVER (PARTITION BY x.job) AS new
          FROM unnest(p_job, p_project, p_spec, p_worker, p_partition, p_offset, p_sha)
               WITH ORDINALITY AS x(job, project, spec, worker, part, off, sha, ord)),
    ev AS (
        INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id)
        SELECT e.job, NULL, 'queued', e.worker FROM e WHERE e.new ORDER BY e.ord)
    SELECT a.status, a.attempt, a.lease_token, a.cancel_requested, a.reused, a.first_sha FROM (
        SELECT e.ord, 'queued'::text AS status, 0 AS attempt, 0::bigint AS lease_token,
               false AS cancel_requested, false AS reused, NULL::text AS first_sha
          FROM e WHERE e.new
        UNION ALL
        SELECT s.ord, o.*
          FROM (SELECT e.* FROM e WHERE NOT e.new ORDER BY e.ord OFFSET 0) s,
               LATERAL sbx.record_run(s.job, s.project, s.spec, s.worker, s.part, s.off, s.sha) o
    ) a ORDER BY a.ord;
END $$;

CREATE OR REPLACE FUNCTION sbx.wait_runs(p_job text[], p_worker text[], p_detail text[])
RETURNS TABLE (wait_run boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    moved jsonb;    -- {job: true} for the runs this statement moved
BEGIN
    WITH upd AS (
        UPDATE sbx.runs r SET status = 'waiting_capacity', updated_at = now()
          FROM (SELECT DISTINCT x.job FROM unnest(p_job) AS x(job)) u
         WHERE r.job_id = u.job AND r.status = 'queued'
        RETURNING r.job_id)
    SELECT COALESCE(jsonb_object_agg(upd.job_id, true), '{}') INTO moved FROM upd;

    -- A second element of one job finds it waiting already: false, as the
    -- one-row function would answer.
    RETURN QUERY
    WITH e AS (
        SELECT x.*, moved ? x.job AND x.ord = min(x.ord) OVER (PARTITION BY x.job) AS did
          FROM unnest(p_job, p_worker, p_detail) WITH ORDINALITY AS x(job, worker, detail, ord)),
    ev AS (
        INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id, detail)
        SELECT e.job, 'queued', 'waiting_capacity', e.worker, e.detail
          FROM e WHERE e.did ORDER BY e.ord)
    SELECT e.did FROM e ORDER BY e.ord;
END $$;

CREATE OR REPLACE FUNCTION sbx.claim_runs(p_job text[], p_token bigint[], p_worker text[],
                                          p_provider text[], p_slot text[])
RETURNS TABLE (result text, status text, attempt integer, lease_token bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fast boolean[];     -- per element: claimed by the set-based statement
    att integer[];      -- per element: its run's attempt after that claim
BEGIN
    -- Lock the runs in key order (as concurrent callers do), so the next
    -- statement's snapshot sees them as they are. One index probe per job:
    -- "job_id = ANY (p_job)" let the generic plan scan the whole table
    -- (18.8 ms a call with 13,000 runs, against 0.35 ms).
    PERFORM 1 FROM (SELECT DISTINCT x.job FROM unnest(p_job) AS x(job) ORDER BY x.job) u,
                   LATERAL (SELECT 1 FROM sbx.runs r WHERE r.job_id = u.job FOR UPDATE) l;

    -- Claimable: the job's only element, an older token on the row, not
    -- terminal, no cancel asked (claim_run ends those canceled).
    SELECT array_agg(e.ok ORDER BY e.ord), array_agg(e.attempt + 1 ORDER BY e.ord)
      INTO fast, att
      FROM (SELECT x.ord, r.attempt,
                   COALESCE(r.lease_token < x.token AND NOT sbx.is_terminal(r.status)
                            AND NOT r.cancel_requested, false)
                   AND count(*) OVER (PARTITION BY x.job) = 1 AS ok
              FROM unnest(p_job, p_token) WITH ORDINALITY AS x(job, token, ord)
              LEFT JOIN sbx.runs r ON r.job_id = x.job) e;
    BEGIN
        WITH e AS (
            SELECT x.*, r.status AS old
              FROM unnest(p_job, p_token, p_worker, p_provider, p_slot, fast)
                   WITH ORDINALITY AS x(job, token, worker, provider, slot, ok, ord)
              JOIN sbx.runs r ON r.job_id = x.job
             WHERE x.ok),
        upd AS (
            UPDATE sbx.runs r SET status = 'provisioning', lease_token = e.token,
                   attempt = r.attempt + 1, worker_id = e.worker, provider = e.provider,
                   slot = e.slot, instance = NULL, exit_code = NULL, error = NULL,
                   updated_at = now()
              FROM e WHERE r.job_id = e.job)
        INSERT INTO sbx.run_events (job_id, from_status, to_status, lease_token, worker_id,
                                    detail)
        SELECT e.job, e.old, 'provisioning', e.token, e.worker, 'slot ' || e.slot
          FROM e ORDER BY e.ord;
    EXCEPTION WHEN unique_violation THEN
        -- Another build of a project is active (or two of one project are
        -- here): claim_run decides each, one by one, 'busy' included.
        fast := array_fill(false, ARRAY[cardinality(p_job)]);
    END;

    RETURN QUERY
    WITH e AS (
        SELECT * FROM unnest(p_job, p_token, p_worker, p_provider, p_slot, fast, att)
                      WITH ORDINALITY AS x(job, token, worker, provider, slot, ok, attempt, ord))
    SELECT a.result, a.status, a.attempt, a.lease_token FROM (
        SELECT e.ord, 'claimed'::text AS result, 'provisioning'::text AS status, e.attempt,
               e.token AS lease_token
          FROM e WHERE e.ok
        UNION ALL
        SELECT s.ord, o.*
          FROM (SELECT e.* FROM e WHERE NOT e.ok ORDER BY e.ord OFFSET 0) s,
               LATERAL sbx.claim_run(s.job, s.token, s.worker, s.provider, s.slot) o
    ) a ORDER BY a.ord;
END $$;

CREATE OR REPLACE FUNCTION sbx.transitions(p_job text[], p_token bigint[], p_worker text[],
                                           p_to text[], p_detail text[], p_exit_code integer[],
                                           p_error text[], p_log_tail text[],
                                           p_preview_url text[], p_instance text[])
RETURNS TABLE (transition boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fast boolean[];     -- per element: applied by the set-based statements
BEGIN
    PERFORM 1 FROM (SELECT DISTINCT x.job FROM unnest(p_job) AS x(job) ORDER BY x.job) u,
                   LATERAL (SELECT 1 FROM sbx.runs r WHERE r.job_id = u.job FOR UPDATE) l;

    -- A job's elements chain when the row holds their one token and is not
    -- terminal, none repeats the status before it (a replay) and only the
    -- last may be terminal. Its fields are then what applying them in order
    -- leaves: the last non-NULL of each, started_at set by a move to
    -- running, finished_at by the end.
    WITH e AS (
        SELECT x.*, COALESCE(lag(x.to_s) OVER w, r.status) AS from_s,
               bool_and(r.lease_token IS NOT NULL AND x.token = r.lease_token
                        AND NOT sbx.is_terminal(r.status) AND x.to_s IS NOT NULL)
                   OVER j AS holds,
               row_number() OVER w AS k, count(*) OVER j AS n
          FROM unnest(p_job, p_token, p_worker, p_to, p_detail, p_exit_code, p_error,
                      p_log_tail, p_preview_url, p_instance)
               WITH ORDINALITY AS x(job, token, worker, to_s, detail, code, err, tail, url,
                                    inst, ord)
          LEFT JOIN sbx.runs r ON r.job_id = x.job
        WINDOW w AS (PARTITION BY x.job ORDER BY x.ord), j AS (PARTITION BY x.job)),
    f AS (
        SELECT e.*,
               e.holds AND bool_and(e.to_s <> e.from_s
                                    AND NOT (sbx.is_terminal(e.to_s) AND e.k < e.n)) OVER j
                   AS ok,
               bool_or(e.to_s = 'running') OVER j AS runs,
               (array_agg(e.code) FILTER (WHERE e.code IS NOT NULL) OVER d)[1] AS last_code,
               (array_agg(e.err) FILTER (WHERE e.err IS NOT NULL) OVER d)[1] AS last_err,
               (array_agg(e.tail) FILTER (WHERE e.tail IS NOT NULL) OVER d)[1] AS last_tail,
               (array_agg(e.url) FILTER (WHERE e.url IS NOT NULL) OVER d)[1] AS last_url,
               (array_agg(e.inst) FILTER (WHERE e.inst IS NOT NULL) OVER d)[1] AS last_inst
          FROM e
        WINDOW j AS (PARTITION BY e.job),
               d AS (PARTITION BY e.job ORDER BY e.ord DESC
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)),
    upd AS (
        UPDATE sbx.runs r SET status = f.to_s, updated_at = now(),
               exit_code = COALESCE(f.last_code, r.exit_code),
               error = COALESCE(f.last_err, r.error),
               log_tail = COALESCE(f.last_tail, r.log_tail),
               preview_url = COALESCE(f.last_url, r.preview_url),
               instance = COALESCE(f.last_inst, r.instance),
               started_at = CASE WHEN f.runs THEN now() ELSE r.started_at END,
               finished_at = CASE WHEN sbx.is_terminal(f.to_s) THEN now() ELSE r.finished_at END
          FROM f WHERE f.ok AND f.k = f.n AND r.job_id = f.job),
    ev AS (
        INSERT INTO sbx.run_events (job_id, from_status, to_status, lease_token, worker_id,
                                    detail)
        SELECT f.job, f.from_s, f.to_s, f.token, f.worker, f.detail
          FROM f WHERE f.ok ORDER BY f.ord)
    SELECT array_agg(f.ok ORDER BY f.ord) INTO fast FROM f;

    RETURN QUERY
    SELECT CASE WHEN x.ok THEN true
                ELSE sbx.transition(x.job, x.token, x.worker, x.to_s, x.detail, x.code, x.err,
                                    x.tail, x.url, x.inst) END
      FROM unnest(p_job, p_token, p_worker, p_to, p_detail, p_exit_code, p_error, p_log_tail,
                  p_preview_url, p_instance, fast)
           WITH ORDINALITY AS x(job, token, worker, to_s, detail, code, err, tail, url, inst,
                                ok, ord)
     ORDER BY x.ord;
END $$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'sbx.record_runs(text[], text[], jsonb[], text[], integer[], bigint[], text[])',
        'sbx.wait_runs(text[], text[], text[])',
        'sbx.claim_runs(text[], bigint[], text[], text[], text[])',
        'sbx.transitions(text[], bigint[], text[], text[], text[], integer[], text[], text[], '
            'text[], text[])']
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO sbx_writer', f);
    END LOOP;
END $$;
