-- 0002_secrets_roles.sql — env values never at rest in sbx.runs; a writer
-- role for workers and a reader role for UI backends.
--
-- Env values are secrets (schemas/job.v1.schema.json). Workers store the
-- spec with every env value replaced by "<redacted>" (worker/redact.c); the
-- functions that take a spec redact it again here, so a worker of an older
-- release, during a rolling upgrade, cannot store one either, and the rows
-- written before this migration are scrubbed below. (Their old row versions
-- stay in the table files until VACUUM, and in WAL archives and backups
-- until those age out: see README "Secrets".)
--
-- Roles. Both are NOLOGIN group roles; an operator grants one to each login
-- role (README). The worker's functions become SECURITY DEFINER, owned by
-- whoever runs the migrations, with EXECUTE taken from PUBLIC: a writer
-- changes runs only through them, so only the fenced moves they allow, and a
-- reader cannot call them at all. LISTEN (sbx_runs, sbx_cancel) needs no
-- privilege in PostgreSQL.
--
-- Safe to run twice: CREATE OR REPLACE, roles created only when pg_roles
-- lacks them, GRANT/REVOKE/ALTER idempotent, the scrub a no-op the second
-- time. `sbx migrate` applies it once anyway (public.sbx_schema_migrations).

CREATE OR REPLACE FUNCTION sbx.redact_spec(s jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN s IS NULL OR jsonb_typeof(s) <> 'object' OR NOT s ? 'env' THEN s
        WHEN jsonb_typeof(s -> 'env') = 'object' THEN jsonb_set(s, '{env}', COALESCE(
            (SELECT jsonb_object_agg(k, to_jsonb('<redacted>'::text))
               FROM jsonb_object_keys(s -> 'env') AS k), '{}'::jsonb))
        ELSE jsonb_set(s, '{env}', to_jsonb('<redacted>'::text))
    END
$$;

CREATE OR REPLACE FUNCTION sbx.record_run(p_job text, p_project text, p_spec jsonb, p_worker text,
                                          p_partition integer, p_offset bigint,
                                          OUT status text, OUT attempt integer,
                                          OUT lease_token bigint, OUT cancel_requested boolean)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sbx.runs (job_id, project_id, spec, kafka_partition, kafka_offset)
    VALUES (p_job, p_project, sbx.redact_spec(p_spec), p_partition, p_offset)
    ON CONFLICT (job_id) DO NOTHING;
    IF FOUND THEN
        INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id)
        VALUES (p_job, NULL, 'queued', p_worker);
    END IF;
    SELECT r.status, r.attempt, r.lease_token, r.cancel_requested
      INTO status, attempt, lease_token, cancel_requested
      FROM sbx.runs r WHERE r.job_id = p_job;
END $$;

CREATE OR REPLACE FUNCTION sbx.dead_letter_run(p_job text, p_project text, p_spec jsonb,
                                               p_worker text, p_error text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    old text;
BEGIN
    INSERT INTO sbx.runs (job_id, project_id, spec, status, error, finished_at)
    VALUES (p_job, p_project, COALESCE(sbx.redact_spec(p_spec), '{}'::jsonb), 'dead_lettered',
            p_error, now())
    ON CONFLICT (job_id) DO NOTHING;
    IF FOUND THEN
        INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id, detail)
        VALUES (p_job, NULL, 'dead_lettered', p_worker, p_error);
        RETURN true;
    END IF;
    SELECT r.status INTO old FROM sbx.runs r WHERE r.job_id = p_job FOR UPDATE;
    IF sbx.is_terminal(old) THEN RETURN false; END IF;
    UPDATE sbx.runs SET status = 'dead_lettered', error = p_error, finished_at = now(),
           updated_at = now() WHERE job_id = p_job;
    INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id, detail)
    VALUES (p_job, old, 'dead_lettered', p_worker, p_error);
    RETURN true;
END $$;

-- What is at rest already.
UPDATE sbx.runs SET spec = sbx.redact_spec(spec)
 WHERE spec ? 'env' AND spec IS DISTINCT FROM sbx.redact_spec(spec);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sbx_writer') THEN
        CREATE ROLE sbx_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sbx_reader') THEN
        CREATE ROLE sbx_reader NOLOGIN;
    END IF;
END $$;

-- The worker's functions: run as their owner, callable by writers only. A
-- fixed search_path, so a caller's own objects never stand in for the
-- built-ins they use (now(), pg_notify(), ...).
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'sbx.record_run(text, text, jsonb, text, integer, bigint)',
        'sbx.wait_run(text, text, text)',
        'sbx.cancel_unclaimed(text, text)',
        'sbx.reject_run(text, text, text)',
        'sbx.supersede_older(text)',
        'sbx.claim_run(text, bigint, text, text, text)',
        'sbx.transition(text, bigint, text, text, text, integer, text, text, text, text)',
        'sbx.requeue_run(text, bigint, text, text)',
        'sbx.unclaim_run(text, bigint, text, text)',
        'sbx.dead_letter_run(text, text, jsonb, text, text)']
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO sbx_writer', f);
    END LOOP;
END $$;

GRANT USAGE ON SCHEMA sbx TO sbx_writer, sbx_reader;
-- The worker reads the newest fencing token at start-up (lease floor).
GRANT SELECT ON sbx.runs, sbx.run_events TO sbx_writer, sbx_reader;
GRANT EXECUTE ON FUNCTION sbx.is_terminal(text), sbx.redact_spec(jsonb) TO sbx_writer, sbx_reader;
