-- 0001_runs.sql — the run tables a UI backend reads.
--
-- sbx.runs holds the current state of each job; sbx.run_events is the
-- append-only history of its transitions, written in the same transaction as
-- the change. Every change of status NOTIFYs channel 'sbx_runs' with
-- {"job_id","project_id","status"} so readers can LISTEN instead of polling;
-- NOTIFY is a hint, the tables are the record.
--
-- Fencing: a worker writes only through the functions below. claim_run()
-- stores the lease's fencing token if it is newer than the row's; every
-- later write names the same token, so a worker that lost its lease (paused,
-- partitioned, killed and replaced) changes nothing.
CREATE SCHEMA IF NOT EXISTS sbx;

CREATE TABLE sbx.runs (
    job_id           text PRIMARY KEY,
    project_id       text NOT NULL,
    status           text NOT NULL DEFAULT 'queued' CHECK (status IN (
                        'queued', 'waiting_capacity', 'provisioning', 'running',
                        'succeeded', 'failed', 'timed_out', 'canceled', 'dead_lettered')),
    attempt          integer NOT NULL DEFAULT 0,
    provider         text,
    slot             text,
    instance         text,
    lease_token      bigint NOT NULL DEFAULT 0,
    worker_id        text,
    exit_code        integer,
    error            text,
    preview_url      text,
    log_tail         text,
    spec             jsonb NOT NULL,
    kafka_partition  integer,
    kafka_offset     bigint,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

-- One active build per project, enforced where the side effect is recorded
-- (Redis leases are the fast path; this is the authority).
CREATE UNIQUE INDEX runs_one_active_per_project ON sbx.runs (project_id)
    WHERE status IN ('provisioning', 'running');
CREATE INDEX runs_by_project ON sbx.runs (project_id, created_at DESC);
CREATE INDEX runs_unfinished ON sbx.runs (status, updated_at)
    WHERE status IN ('queued', 'waiting_capacity', 'provisioning', 'running');

CREATE TABLE sbx.run_events (
    id          bigserial PRIMARY KEY,
    job_id      text NOT NULL REFERENCES sbx.runs (job_id) ON DELETE CASCADE,
    from_status text,
    to_status   text NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_token bigint,
    worker_id   text,
    detail      text
);
CREATE INDEX run_events_by_job ON sbx.run_events (job_id, id);

CREATE FUNCTION sbx.is_terminal(s text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT s IN ('succeeded', 'failed', 'timed_out', 'canceled', 'dead_lettered')
$$;

CREATE FUNCTION sbx.notify_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM pg_notify('sbx_runs', json_build_object(
            'job_id', NEW.job_id, 'project_id', NEW.project_id,
            'status', NEW.status)::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER runs_notify AFTER INSERT OR UPDATE OF status ON sbx.runs
    FOR EACH ROW EXECUTE FUNCTION sbx.notify_status();

-- record_run: first sight of a job (or a redelivery). Inserts it as queued
-- unless known; returns its current status, attempt and token either way.
CREATE FUNCTION sbx.record_run(p_job text, p_project text, p_spec jsonb, p_worker text,
                               p_partition integer, p_offset bigint,
                               OUT status text, OUT attempt integer, OUT lease_token bigint,
                               OUT cancel_requested boolean)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sbx.runs (job_id, project_id, spec, kafka_partition, kafka_offset)
    VALUES (p_job, p_project, p_spec, p_partition, p_offset)
    ON CONFLICT (job_id) DO NOTHING;
    IF FOUND THEN
        INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id)
        VALUES (p_job, NULL, 'queued', p_worker);
    END IF;
    SELECT r.status, r.attempt, r.lease_token, r.cancel_requested
      INTO status, attempt, lease_token, cancel_requested
      FROM sbx.runs r WHERE r.job_id = p_job;
END $$;

-- wait_run: queued -> waiting_capacity (no capacity or project busy). Not
-- fenced: it only moves a job nobody has claimed yet.
CREATE FUNCTION sbx.wait_run(p_job text, p_worker text, p_detail text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sbx.runs SET status = 'waiting_capacity', updated_at = now()
     WHERE job_id = p_job AND status = 'queued';
    IF NOT FOUND THEN RETURN false; END IF;
    INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id, detail)
    VALUES (p_job, 'queued', 'waiting_capacity', p_worker, p_detail);
    RETURN true;
END $$;

-- cancel_unclaimed: a job whose cancel was requested and that no build has
-- claimed (queued, waiting_capacity, or handed back) ends canceled. Not fenced:
-- no token exists yet. Returns whether it did.
CREATE FUNCTION sbx.cancel_unclaimed(p_job text, p_worker text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    old text;
BEGIN
    SELECT r.status INTO old FROM sbx.runs r
     WHERE r.job_id = p_job AND r.cancel_requested
       AND r.status IN ('queued', 'waiting_capacity') FOR UPDATE;
    IF NOT FOUND THEN RETURN false; END IF;
    UPDATE sbx.runs SET status = 'canceled', finished_at = now(), updated_at = now(),
           error = 'canceled before it started'
     WHERE job_id = p_job;
    INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id, detail)
    VALUES (p_job, old, 'canceled', p_worker, 'canceled before it started');
    RETURN true;
END $$;

-- reject_run: per-project policy "reject": a job that arrives while its
-- project has a build running ends canceled, unclaimed, with the reason.
CREATE FUNCTION sbx.reject_run(p_job text, p_worker text, p_detail text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    old text;
BEGIN
    SELECT r.status INTO old FROM sbx.runs r
     WHERE r.job_id = p_job AND r.status IN ('queued', 'waiting_capacity') FOR UPDATE;
    IF NOT FOUND THEN RETURN false; END IF;
    UPDATE sbx.runs SET status = 'canceled', finished_at = now(), updated_at = now(),
           error = p_detail
     WHERE job_id = p_job;
    INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id, detail)
    VALUES (p_job, old, 'canceled', p_worker, p_detail);
    RETURN true;
END $$;

-- supersede_older: per-project policy "supersede" (a new prompt makes the
-- running build moot): asks every unfinished, older run of the job's project
-- to cancel, and NOTIFYs sbx_cancel for each so the worker holding it acts.
-- Returns how many it asked.
CREATE FUNCTION sbx.supersede_older(p_job text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    me sbx.runs%ROWTYPE;
    victim text;
    n integer := 0;
BEGIN
    SELECT * INTO me FROM sbx.runs WHERE job_id = p_job;
    IF NOT FOUND THEN RETURN 0; END IF;
    FOR victim IN
        UPDATE sbx.runs r SET cancel_requested = true, updated_at = now()
         WHERE r.project_id = me.project_id AND r.job_id <> p_job
           AND NOT sbx.is_terminal(r.status) AND NOT r.cancel_requested
           AND r.created_at < me.created_at
        RETURNING r.job_id
    LOOP
        PERFORM pg_notify('sbx_cancel', victim);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- claim_run: store a newer fencing token and move to provisioning.
-- result: 'claimed' | 'terminal' (already finished: skip) | 'stale' (a newer
-- token owns the row) | 'busy' (another build of the project is active).
CREATE FUNCTION sbx.claim_run(p_job text, p_token bigint, p_worker text, p_provider text,
                              p_slot text, OUT result text, OUT status text,
                              OUT attempt integer, OUT lease_token bigint)
LANGUAGE plpgsql AS $$
DECLARE
    old text;
BEGIN
    SELECT r.status INTO old FROM sbx.runs r WHERE r.job_id = p_job FOR UPDATE;
    IF NOT FOUND THEN RAISE EXCEPTION 'sbx: unknown job %', p_job; END IF;
    -- Canceled before any build started: end it here, nothing to stop.
    IF sbx.cancel_unclaimed(p_job, p_worker) THEN
        result := 'terminal';
        status := 'canceled';
        SELECT r.attempt, r.lease_token INTO attempt, lease_token FROM sbx.runs r
         WHERE r.job_id = p_job;
        RETURN;
    END IF;
    BEGIN
        UPDATE sbx.runs r SET status = 'provisioning', lease_token = p_token,
               attempt = r.attempt + 1, worker_id = p_worker, provider = p_provider,
               slot = p_slot, instance = NULL, exit_code = NULL, error = NULL,
               updated_at = now()
         WHERE r.job_id = p_job AND r.lease_token < p_token AND NOT sbx.is_terminal(r.status)
        RETURNING r.status, r.attempt, r.lease_token INTO status, attempt, lease_token;
    EXCEPTION WHEN unique_violation THEN
        result := 'busy';
        SELECT r.status, r.attempt, r.lease_token INTO status, attempt, lease_token
          FROM sbx.runs r WHERE r.job_id = p_job;
        RETURN;
    END;
    IF FOUND THEN
        result := 'claimed';
        INSERT INTO sbx.run_events (job_id, from_status, to_status, lease_token, worker_id, detail)
        VALUES (p_job, old, 'provisioning', p_token, p_worker, 'slot ' || p_slot);
        RETURN;
    END IF;
    SELECT r.status, r.attempt, r.lease_token INTO status, attempt, lease_token
      FROM sbx.runs r WHERE r.job_id = p_job;
    -- A replay of our own claim (the reply was lost with the connection).
    IF NOT sbx.is_terminal(status) AND lease_token = p_token THEN
        result := 'claimed';
        RETURN;
    END IF;
    result := CASE WHEN sbx.is_terminal(status) THEN 'terminal' ELSE 'stale' END;
END $$;

-- transition: a fenced move of a claimed run. Returns false (and changes
-- nothing) when p_token is not the row's token or the run is already terminal.
CREATE FUNCTION sbx.transition(p_job text, p_token bigint, p_worker text, p_to text,
                               p_detail text, p_exit_code integer, p_error text,
                               p_log_tail text, p_preview_url text, p_instance text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    old text;
BEGIN
    SELECT r.status INTO old FROM sbx.runs r
     WHERE r.job_id = p_job AND r.lease_token = p_token FOR UPDATE;
    IF NOT FOUND THEN RETURN false; END IF;
    -- A replay of a write that committed but whose reply was lost.
    IF old = p_to THEN RETURN true; END IF;
    IF sbx.is_terminal(old) THEN RETURN false; END IF;
    UPDATE sbx.runs r SET status = p_to, updated_at = now(),
           exit_code = COALESCE(p_exit_code, r.exit_code),
           error = COALESCE(p_error, r.error),
           log_tail = COALESCE(p_log_tail, r.log_tail),
           preview_url = COALESCE(p_preview_url, r.preview_url),
           instance = COALESCE(p_instance, r.instance),
           started_at = CASE WHEN p_to = 'running' THEN now() ELSE r.started_at END,
           finished_at = CASE WHEN sbx.is_terminal(p_to) THEN now() ELSE r.finished_at END
     WHERE r.job_id = p_job;
    INSERT INTO sbx.run_events (job_id, from_status, to_status, lease_token, worker_id, detail)
    VALUES (p_job, old, p_to, p_token, p_worker, p_detail);
    RETURN true;
END $$;

-- requeue_run: a claimed run handed back without finishing (provider error
-- to retry, shutdown): back to queued, fenced like transition().
CREATE FUNCTION sbx.requeue_run(p_job text, p_token bigint, p_worker text, p_detail text)
RETURNS boolean LANGUAGE sql AS $$
    SELECT sbx.transition(p_job, p_token, p_worker, 'queued', p_detail,
                          NULL, NULL, NULL, NULL, NULL)
$$;

-- unclaim_run: the provider would not take the leased slot (still busy on
-- its side, or it knows a newer token): no build happened, so the claim is
-- undone — back to waiting_capacity, the attempt not counted. Fenced.
CREATE FUNCTION sbx.unclaim_run(p_job text, p_token bigint, p_worker text, p_detail text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    old text;
BEGIN
    SELECT r.status INTO old FROM sbx.runs r
     WHERE r.job_id = p_job AND r.lease_token = p_token FOR UPDATE;
    IF NOT FOUND THEN RETURN false; END IF;
    IF old = 'waiting_capacity' THEN RETURN true; END IF;   -- a replay
    IF old NOT IN ('provisioning', 'running') THEN RETURN false; END IF;
    UPDATE sbx.runs SET status = 'waiting_capacity', attempt = attempt - 1, updated_at = now()
     WHERE job_id = p_job;
    INSERT INTO sbx.run_events (job_id, from_status, to_status, lease_token, worker_id, detail)
    VALUES (p_job, old, 'waiting_capacity', p_token, p_worker, p_detail);
    RETURN true;
END $$;

-- dead_letter_run: a job that will never run (poison after retries). Not
-- fenced on a token: it is written by whoever holds the Kafka offset.
CREATE FUNCTION sbx.dead_letter_run(p_job text, p_project text, p_spec jsonb, p_worker text,
                                    p_error text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    old text;
BEGIN
    INSERT INTO sbx.runs (job_id, project_id, spec, status, error, finished_at)
    VALUES (p_job, p_project, COALESCE(p_spec, '{}'::jsonb), 'dead_lettered', p_error, now())
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
