-- 0005_submitted.sql — a job is visible and cancelable from the moment it is
-- sent, and a job id reused with another payload is refused, not dropped.
--
-- Fingerprint. sbx.runs.payload_sha256 is the SHA-256 of the job message
-- with its env values redacted (producers/include/sbx_redact.h), never of the
-- original bytes: readers of sbx.runs see the rest of the message, and a hash
-- of the whole would let them test guesses of a short secret. It is the same
-- value as the dead-letter envelope's payload_sha256 of that message. Two
-- messages are "the same job" when their fingerprints are equal or, should a
-- producer's JSON library print the same text differently, their redacted
-- specs are equal as jsonb; so two that differ only in env values are the
-- same job (a redelivery). A row without a fingerprint (written before this
-- migration, or by a worker of an older release) matches anything, as before.
--
-- Statuses. 'submitted': recorded by the producer (`sbx enqueue`, libsbx)
-- before it publishes, so `sbx status` and `sbx cancel` work at once; no
-- worker has consumed it yet. record_run moves it to 'queued' when a worker
-- does (attaching partition and offset, with an event).
--
-- Cancel before consumption (request_cancel, what `sbx cancel` calls):
--  - a submitted row ends 'canceled' there and then: nothing was consumed,
--    so nothing needs stopping;
--  - an id with no row at all (the producer had no database URL, or the
--    worker has not got to it) gets a placeholder row, 'canceled', with an
--    empty project_id and spec '{}';
--  - either way the row is terminal, so when the message is consumed
--    record_run fills in what the message says (project, spec, fingerprint,
--    partition, offset: an event "consumed after its cancel") and the worker
--    skips it: it never runs. Being terminal, both are pruned like any
--    finished run (0003); SBX_RETENTION longer than the topic keeps messages
--    (README "Retention") keeps the cancel as long as the message can come.
--  - a consumed, unfinished row gets cancel_requested and a NOTIFY
--    sbx_cancel, as before this migration.
--
-- A publish that fails: the producer calls forget_submitted, which deletes
-- its row if it is still 'submitted' with its fingerprint. A producer that
-- dies between the two leaves a 'submitted' row that no message follows; it
-- stays until an operator cancels it (then it is terminal and pruned). The
-- partial index runs_submitted finds them by age.
--
-- Roles: sbx_submitter (NOLOGIN, like 0002's) may submit, forget and cancel,
-- and read what sbx_reader reads; grant it to the login role of producers.
--
-- Safe to run twice: IF [NOT] EXISTS, CREATE OR REPLACE, idempotent GRANTs;
-- the status CHECK is dropped and added again NOT VALID, then validated
-- (a scan that does not block writes).

ALTER TABLE sbx.runs ADD COLUMN IF NOT EXISTS payload_sha256 text;

ALTER TABLE sbx.runs DROP CONSTRAINT IF EXISTS runs_status_check;
ALTER TABLE sbx.runs ADD CONSTRAINT runs_status_check CHECK (status IN (
    'submitted', 'queued', 'waiting_capacity', 'provisioning', 'running',
    'succeeded', 'failed', 'timed_out', 'canceled', 'dead_lettered')) NOT VALID;
ALTER TABLE sbx.runs VALIDATE CONSTRAINT runs_status_check;

CREATE INDEX IF NOT EXISTS runs_submitted ON sbx.runs (created_at) WHERE status = 'submitted';

-- Whether a row's stored message and a new one are different jobs.
CREATE OR REPLACE FUNCTION sbx.payload_differs(r_sha text, r_spec jsonb, p_sha text,
                                               p_spec jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT r_sha IS NOT NULL AND p_sha IS NOT NULL AND r_sha <> p_sha
           AND r_spec IS DISTINCT FROM p_spec
$$;

-- record_run with a fingerprint: first sight of a job (or a redelivery).
-- reused: a row with this id holds another payload; nothing was changed,
-- and the caller refuses the message (dead letter "job_id_reused").
CREATE OR REPLACE FUNCTION sbx.record_run(p_job text, p_project text, p_spec jsonb, p_worker text,
                                          p_partition integer, p_offset bigint, p_sha text,
                                          OUT status text, OUT attempt integer,
                                          OUT lease_token bigint, OUT cancel_requested boolean,
                                          OUT reused boolean, OUT first_sha text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_spec jsonb := sbx.redact_spec(p_spec);
    r sbx.runs%ROWTYPE;
BEGIN
    reused := false;
    INSERT INTO sbx.runs (job_id, project_id, spec, kafka_partition, kafka_offset, payload_sha256)
    VALUES (p_job, p_project, v_spec, p_partition, p_offset, p_sha)
    ON CONFLICT (job_id) DO NOTHING;
    IF FOUND THEN
        INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id)
        VALUES (p_job, NULL, 'queued', p_worker);
    ELSE
        SELECT * INTO r FROM sbx.runs x WHERE x.job_id = p_job FOR UPDATE;
        first_sha := r.payload_sha256;
        IF sbx.payload_differs(r.payload_sha256, r.spec, p_sha, v_spec) THEN
            reused := true;
        ELSIF r.status = 'submitted' THEN
            UPDATE sbx.runs x SET status = 'queued', kafka_partition = p_partition,
                   kafka_offset = p_offset, payload_sha256 = COALESCE(x.payload_sha256, p_sha),
                   updated_at = now()
             WHERE x.job_id = p_job;
            INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id, detail)
            VALUES (p_job, 'submitted', 'queued', p_worker,
                    format('consumed from partition %s at offset %s', p_partition, p_offset));
        ELSIF r.status = 'canceled' AND r.kafka_partition IS NULL THEN
            -- Canceled before any worker consumed it: keep what the message
            -- says next to the cancel; the caller sees 'canceled' and skips.
            UPDATE sbx.runs x SET kafka_partition = p_partition, kafka_offset = p_offset,
                   project_id = CASE WHEN x.project_id = '' THEN p_project ELSE x.project_id END,
                   spec = CASE WHEN x.spec = '{}'::jsonb THEN v_spec ELSE x.spec END,
                   payload_sha256 = COALESCE(x.payload_sha256, p_sha), updated_at = now()
             WHERE x.job_id = p_job;
            INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id, detail)
            VALUES (p_job, 'canceled', 'canceled', p_worker,
                    format('consumed from partition %s at offset %s after its cancel; not run',
                           p_partition, p_offset));
        END IF;
    END IF;
    SELECT x.status, x.attempt, x.lease_token, x.cancel_requested
      INTO status, attempt, lease_token, cancel_requested
      FROM sbx.runs x WHERE x.job_id = p_job;
END $$;

-- The six-argument form (workers of an older release, during a rolling
-- upgrade): the same, with no fingerprint, so it never finds a reuse.
CREATE OR REPLACE FUNCTION sbx.record_run(p_job text, p_project text, p_spec jsonb, p_worker text,
                                          p_partition integer, p_offset bigint,
                                          OUT status text, OUT attempt integer,
                                          OUT lease_token bigint, OUT cancel_requested boolean)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.status, r.attempt, r.lease_token, r.cancel_requested
      FROM sbx.record_run(p_job, p_project, p_spec, p_worker, p_partition, p_offset, NULL::text) r
$$;

-- cancel_unclaimed: as in 0001, and a submitted row too (request_cancel ends
-- those itself; this keeps any other caller from leaving one behind).
CREATE OR REPLACE FUNCTION sbx.cancel_unclaimed(p_job text, p_worker text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old text;
BEGIN
    SELECT r.status INTO old FROM sbx.runs r
     WHERE r.job_id = p_job AND r.cancel_requested
       AND r.status IN ('submitted', 'queued', 'waiting_capacity') FOR UPDATE;
    IF NOT FOUND THEN RETURN false; END IF;
    UPDATE sbx.runs SET status = 'canceled', finished_at = now(), updated_at = now(),
           error = 'canceled before it started'
     WHERE job_id = p_job;
    INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id, detail)
    VALUES (p_job, old, 'canceled', p_worker, 'canceled before it started');
    RETURN true;
END $$;

-- submit_run: the producer records a job before it publishes it.
-- inserted: the row is new ('submitted'); else status is the existing row's
-- and reused says whether it holds another payload (the producer refuses
-- to send it).
CREATE OR REPLACE FUNCTION sbx.submit_run(p_job text, p_project text, p_spec jsonb, p_sha text,
                                          OUT inserted boolean, OUT status text,
                                          OUT reused boolean, OUT first_sha text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_spec jsonb := sbx.redact_spec(p_spec);
    r sbx.runs%ROWTYPE;
BEGIN
    IF p_sha IS NULL OR p_sha !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'sbx.submit_run: p_sha must be 64 lowercase hex digits';
    END IF;
    INSERT INTO sbx.runs (job_id, project_id, spec, status, payload_sha256)
    VALUES (p_job, p_project, v_spec, 'submitted', p_sha)
    ON CONFLICT (job_id) DO NOTHING;
    inserted := FOUND;
    reused := false;
    IF inserted THEN
        INSERT INTO sbx.run_events (job_id, from_status, to_status, detail)
        VALUES (p_job, NULL, 'submitted', 'recorded by its producer before the publish');
        status := 'submitted';
        first_sha := p_sha;
        RETURN;
    END IF;
    SELECT * INTO r FROM sbx.runs x WHERE x.job_id = p_job;
    status := r.status;
    first_sha := r.payload_sha256;
    reused := sbx.payload_differs(r.payload_sha256, r.spec, p_sha, v_spec);
END $$;

-- forget_submitted: the publish of a job this producer recorded failed.
-- Deletes the row (with its history) if it is still 'submitted' with this
-- fingerprint; returns whether it did. A row canceled meanwhile stays.
CREATE OR REPLACE FUNCTION sbx.forget_submitted(p_job text, p_sha text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM sbx.runs r
     WHERE r.job_id = p_job AND r.status = 'submitted' AND r.payload_sha256 = p_sha;
    RETURN FOUND;
END $$;

-- request_cancel: `sbx cancel`. outcome: 'flagged' (consumed and unfinished:
-- cancel_requested set and sbx_cancel notified; the worker holding it acts),
-- 'canceled' (submitted, not consumed: ended here), 'recorded' (no row: a
-- canceled placeholder, so the job never runs when it arrives), 'finished'
-- (already terminal: left alone). status: the row's status afterwards.
CREATE OR REPLACE FUNCTION sbx.request_cancel(p_job text, OUT status text, OUT outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old text;
BEGIN
    LOOP
        SELECT r.status INTO old FROM sbx.runs r WHERE r.job_id = p_job FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO sbx.runs (job_id, project_id, spec, status, cancel_requested, error,
                              finished_at)
        VALUES (p_job, '', '{}'::jsonb, 'canceled', true,
                'canceled before any worker saw it; it will not run when it arrives', now())
        ON CONFLICT (job_id) DO NOTHING;
        IF FOUND THEN
            INSERT INTO sbx.run_events (job_id, from_status, to_status, detail)
            VALUES (p_job, NULL, 'canceled', 'sbx cancel of a job not seen yet');
            status := 'canceled';
            outcome := 'recorded';
            RETURN;
        END IF;
        -- A worker or producer inserted it meanwhile: look again.
    END LOOP;
    IF sbx.is_terminal(old) THEN
        status := old;
        outcome := 'finished';
    ELSIF old = 'submitted' THEN
        UPDATE sbx.runs r SET status = 'canceled', cancel_requested = true, finished_at = now(),
               updated_at = now(), error = 'canceled before any worker consumed it'
         WHERE r.job_id = p_job;
        INSERT INTO sbx.run_events (job_id, from_status, to_status, detail)
        VALUES (p_job, 'submitted', 'canceled', 'sbx cancel before any worker consumed it');
        status := 'canceled';
        outcome := 'canceled';
    ELSE
        UPDATE sbx.runs r SET cancel_requested = true, updated_at = now() WHERE r.job_id = p_job;
        PERFORM pg_notify('sbx_cancel', p_job);
        status := old;
        outcome := 'flagged';
    END IF;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sbx_submitter') THEN
        CREATE ROLE sbx_submitter NOLOGIN;
    END IF;
END $$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'sbx.record_run(text, text, jsonb, text, integer, bigint, text)',
        'sbx.record_run(text, text, jsonb, text, integer, bigint)',
        'sbx.cancel_unclaimed(text, text)',
        'sbx.submit_run(text, text, jsonb, text)',
        'sbx.forget_submitted(text, text)',
        'sbx.request_cancel(text)']
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;

GRANT EXECUTE ON FUNCTION sbx.record_run(text, text, jsonb, text, integer, bigint, text),
                          sbx.record_run(text, text, jsonb, text, integer, bigint),
                          sbx.cancel_unclaimed(text, text) TO sbx_writer;
GRANT EXECUTE ON FUNCTION sbx.submit_run(text, text, jsonb, text),
                          sbx.forget_submitted(text, text),
                          sbx.request_cancel(text) TO sbx_submitter;
GRANT EXECUTE ON FUNCTION sbx.payload_differs(text, jsonb, text, jsonb)
    TO sbx_writer, sbx_reader, sbx_submitter;
GRANT USAGE ON SCHEMA sbx TO sbx_submitter;
GRANT sbx_reader TO sbx_submitter;
