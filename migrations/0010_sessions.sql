-- 0010_sessions.sql — sessions (issue 13): many jobs of a project in one
-- sandbox, one at a time, in order.
--
-- sbx.sessions holds the current state of each session, sbx.session_events
-- its history; every change of state NOTIFYs channel 'sbx_sessions' with
-- {"project_id","session_id","state"}, as runs do on 'sbx_runs'.
--
--   busy   ──(its job ends)──▶ idle ──(pause_after_s)──▶ paused
--     ▲                          │                          │
--     └────(the next job)────────┴──────────────────────────┘
--   idle/paused ──(idle_timeout_s, max_lifetime_s, `sbx session stop`)──▶ ended
--   ended ──(a job names it again)──▶ busy, generation + 1, a new sandbox
--
-- Who writes what:
--  - A job's own moves need no call of their own: the trigger on sbx.runs
--    below follows a run that names a session. Its claim (provisioning)
--    makes the session busy with the run's fencing token, slot and
--    provider; its end (any terminal status, or queued again) makes it idle
--    when the session still holds that run's token.
--  - The worker's session sweeper (worker/session.c) asks sessions_due()
--    what to pause or end, does it under a lease with a newer token, and
--    records it with park_session(), fenced by that token: a job that
--    claimed the session meanwhile holds a newer token, and the stale
--    write changes nothing.
--  - `sbx session stop` (stop_session) only asks; the sweeper ends the
--    session once it is not busy.
--
-- Safe to run twice: IF NOT EXISTS, CREATE OR REPLACE, idempotent GRANTs.

CREATE TABLE IF NOT EXISTS sbx.sessions (
    project_id      text NOT NULL,
    session_id      text NOT NULL,
    state           text NOT NULL CHECK (state IN ('busy', 'idle', 'paused', 'ended')),
    generation      integer NOT NULL DEFAULT 1,
    provider        text,
    slot            text,
    preview_url     text,
    lease_token     bigint NOT NULL DEFAULT 0,
    last_job_id     text,
    jobs            integer NOT NULL DEFAULT 0,
    pause_after_s   integer NOT NULL,
    idle_timeout_s  integer NOT NULL,
    max_lifetime_s  integer NOT NULL,
    stop_requested  boolean NOT NULL DEFAULT false,
    end_reason      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz NOT NULL DEFAULT now(),
    ends_at         timestamptz NOT NULL,
    ended_at        timestamptz,
    PRIMARY KEY (project_id, session_id)
);
-- What the sweeper scans: the sessions not ended.
CREATE INDEX IF NOT EXISTS sessions_live ON sbx.sessions (provider, last_used_at)
    WHERE state IN ('idle', 'paused');

CREATE TABLE IF NOT EXISTS sbx.session_events (
    id          bigserial PRIMARY KEY,
    project_id  text NOT NULL,
    session_id  text NOT NULL,
    generation  integer NOT NULL,
    from_state  text,
    to_state    text NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_token bigint,
    job_id      text,
    detail      text,
    FOREIGN KEY (project_id, session_id) REFERENCES sbx.sessions ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS session_events_by_session
    ON sbx.session_events (project_id, session_id, id);

CREATE OR REPLACE FUNCTION sbx.notify_session() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state THEN
        PERFORM pg_notify('sbx_sessions', json_build_object(
            'project_id', NEW.project_id, 'session_id', NEW.session_id,
            'state', NEW.state)::text);
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS sessions_notify ON sbx.sessions;
CREATE TRIGGER sessions_notify AFTER INSERT OR UPDATE OF state ON sbx.sessions
    FOR EACH ROW EXECUTE FUNCTION sbx.notify_session();

-- A run that names a session moved: the session follows (see the top).
CREATE OR REPLACE FUNCTION sbx.follow_session() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sid   text := NEW.spec -> 'session' ->> 'id';
    s     sbx.sessions;
    pause integer := COALESCE((NEW.spec -> 'session' ->> 'pause_after_s')::integer, 300);
    idle  integer := COALESCE((NEW.spec -> 'session' ->> 'idle_timeout_s')::integer, 900);
    life  integer := COALESCE((NEW.spec -> 'session' ->> 'max_lifetime_s')::integer, 86400);
BEGIN
    IF sid IS NULL THEN RETURN NULL; END IF;
    IF NEW.status = 'provisioning' THEN
        INSERT INTO sbx.sessions AS x (project_id, session_id, state, provider, slot,
                                       lease_token, last_job_id, jobs, pause_after_s,
                                       idle_timeout_s, max_lifetime_s, ends_at)
        VALUES (NEW.project_id, sid, 'busy', NEW.provider, NEW.slot, NEW.lease_token,
                NEW.job_id, 1, pause, idle, life, now() + make_interval(secs => life))
        ON CONFLICT (project_id, session_id) DO NOTHING;
        IF FOUND THEN
            INSERT INTO sbx.session_events (project_id, session_id, generation, from_state,
                                            to_state, lease_token, job_id, detail)
            VALUES (NEW.project_id, sid, 1, NULL, 'busy', NEW.lease_token, NEW.job_id,
                    'began');
            RETURN NULL;
        END IF;
        SELECT * INTO s FROM sbx.sessions x
         WHERE x.project_id = NEW.project_id AND x.session_id = sid FOR UPDATE;
        IF s.lease_token >= NEW.lease_token THEN RETURN NULL; END IF;
        IF s.state = 'ended' THEN
            -- Named again after it ended: it begins again, with its new timeouts.
            UPDATE sbx.sessions x SET state = 'busy', generation = x.generation + 1,
                   provider = NEW.provider, slot = NEW.slot, preview_url = NULL,
                   lease_token = NEW.lease_token, last_job_id = NEW.job_id, jobs = 1,
                   pause_after_s = pause, idle_timeout_s = idle, max_lifetime_s = life,
                   stop_requested = false, end_reason = NULL, created_at = now(),
                   updated_at = now(), last_used_at = now(),
                   ends_at = now() + make_interval(secs => life), ended_at = NULL
             WHERE x.project_id = NEW.project_id AND x.session_id = sid;
        ELSE
            UPDATE sbx.sessions x SET state = 'busy', provider = NEW.provider,
                   slot = NEW.slot, lease_token = NEW.lease_token, last_job_id = NEW.job_id,
                   jobs = x.jobs + 1, updated_at = now(), last_used_at = now()
             WHERE x.project_id = NEW.project_id AND x.session_id = sid;
        END IF;
        INSERT INTO sbx.session_events (project_id, session_id, generation, from_state,
                                        to_state, lease_token, job_id, detail)
        VALUES (NEW.project_id, sid,
                CASE WHEN s.state = 'ended' THEN s.generation + 1 ELSE s.generation END,
                s.state, 'busy', NEW.lease_token, NEW.job_id,
                CASE WHEN s.state = 'ended' THEN 'began again' END);
    ELSIF NEW.status = 'running' THEN
        -- The session's preview URL, as its provider gave it to the run.
        IF NEW.preview_url IS NOT NULL THEN
            UPDATE sbx.sessions x SET preview_url = NEW.preview_url
             WHERE x.project_id = NEW.project_id AND x.session_id = sid
               AND x.lease_token = NEW.lease_token
               AND x.preview_url IS DISTINCT FROM NEW.preview_url;
        END IF;
    ELSIF sbx.is_terminal(NEW.status) OR NEW.status = 'queued' THEN
        UPDATE sbx.sessions x SET state = 'idle', updated_at = now(), last_used_at = now(),
               preview_url = COALESCE(NEW.preview_url, x.preview_url)
         WHERE x.project_id = NEW.project_id AND x.session_id = sid
           AND x.state = 'busy' AND x.lease_token = NEW.lease_token
        RETURNING x.generation INTO s.generation;
        IF FOUND THEN
            INSERT INTO sbx.session_events (project_id, session_id, generation, from_state,
                                            to_state, lease_token, job_id, detail)
            VALUES (NEW.project_id, sid, s.generation, 'busy', 'idle', NEW.lease_token,
                    NEW.job_id, 'run ' || NEW.status);
        END IF;
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS runs_follow_session ON sbx.runs;
CREATE TRIGGER runs_follow_session AFTER UPDATE OF status ON sbx.runs
    FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status AND NEW.spec ? 'session')
    EXECUTE FUNCTION sbx.follow_session();

-- sessions_due: what the sweeper of a provider should do now, oldest first:
-- op 'destroy' (reason 'stopped', 'lifetime' or 'idle_timeout') for idle or
-- paused sessions, op 'pause' for idle ones past pause_after_s (when the
-- provider can pause: p_pause).
-- p_slots: the slots the calling worker serves (NULL: any of the provider's,
-- vmpool, whose agents register theirs), so a worker never fills its batch
-- with sessions only another host can end.
DROP FUNCTION IF EXISTS sbx.sessions_due(text, boolean, integer);
CREATE OR REPLACE FUNCTION sbx.sessions_due(p_provider text, p_pause boolean, p_limit integer,
                                            p_slots text[])
RETURNS TABLE (project_id text, session_id text, slot text, op text, reason text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT d.project_id, d.session_id, d.slot, d.op, d.reason FROM (
        SELECT s.project_id, s.session_id, s.slot, s.last_used_at,
               CASE WHEN s.stop_requested OR now() >= s.ends_at
                         OR now() >= s.last_used_at + make_interval(secs => s.idle_timeout_s)
                    THEN 'destroy' ELSE 'pause' END AS op,
               CASE WHEN s.stop_requested THEN 'stopped'
                    WHEN now() >= s.ends_at THEN 'lifetime'
                    WHEN now() >= s.last_used_at + make_interval(secs => s.idle_timeout_s)
                    THEN 'idle_timeout'
                    ELSE 'idle' END AS reason,
               s.state
          FROM sbx.sessions s
         WHERE s.provider = p_provider AND s.state IN ('idle', 'paused')
           AND (p_slots IS NULL OR s.slot = ANY (p_slots))) d
     WHERE d.op = 'destroy'
        OR (p_pause AND d.state = 'idle'
            AND now() >= d.last_used_at + make_interval(secs => (
                SELECT s.pause_after_s FROM sbx.sessions s
                 WHERE s.project_id = d.project_id AND s.session_id = d.session_id)))
     ORDER BY d.last_used_at
     LIMIT p_limit
$$;

-- park_session: the sweeper paused (p_state 'paused') or ended ('ended')
-- the session's sandbox under a lease of token p_token. Fenced: changes
-- nothing (false) when a job claimed the session meanwhile (its token is
-- newer) or it is no longer idle or paused.
CREATE OR REPLACE FUNCTION sbx.park_session(p_project text, p_session text, p_token bigint,
                                            p_state text, p_reason text, p_worker text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old text;
    gen integer;
BEGIN
    IF p_state NOT IN ('paused', 'ended') THEN
        RAISE EXCEPTION 'sbx: park_session to %', p_state;
    END IF;
    SELECT s.state, s.generation INTO old, gen FROM sbx.sessions s
     WHERE s.project_id = p_project AND s.session_id = p_session FOR UPDATE;
    IF NOT FOUND OR old NOT IN ('idle', 'paused') THEN RETURN false; END IF;
    UPDATE sbx.sessions s SET state = p_state, updated_at = now(),
           lease_token = GREATEST(s.lease_token, p_token),
           end_reason = CASE WHEN p_state = 'ended' THEN p_reason END,
           ended_at = CASE WHEN p_state = 'ended' THEN now() END
     WHERE s.project_id = p_project AND s.session_id = p_session
       AND s.lease_token < p_token;
    IF NOT FOUND THEN RETURN false; END IF;
    INSERT INTO sbx.session_events (project_id, session_id, generation, from_state, to_state,
                                    lease_token, detail)
    VALUES (p_project, p_session, gen, old, p_state, p_token,
            concat_ws(' ', p_reason, 'by ' || p_worker));
    RETURN true;
END $$;

-- stop_session: `sbx session stop`. Returns the state it found ('' for no
-- such session); the sweeper ends it as soon as it is not busy.
CREATE OR REPLACE FUNCTION sbx.stop_session(p_project text, p_session text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    st text;
BEGIN
    UPDATE sbx.sessions s SET stop_requested = true, updated_at = now()
     WHERE s.project_id = p_project AND s.session_id = p_session AND s.state <> 'ended'
    RETURNING s.state INTO st;
    IF FOUND THEN
        -- Readers that LISTEN learn of the request at once.
        PERFORM pg_notify('sbx_sessions', json_build_object(
            'project_id', p_project, 'session_id', p_session, 'state', st,
            'stop_requested', true)::text);
        RETURN st;
    END IF;
    SELECT s.state INTO st FROM sbx.sessions s
     WHERE s.project_id = p_project AND s.session_id = p_session;
    RETURN COALESCE(st, '');
END $$;

-- session_v1: the one JSON shape of a session the CLI and the clients read
-- (as run_v1 is for runs, 0008).
CREATE OR REPLACE FUNCTION sbx.session_v1(s sbx.sessions) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'v', 1, 'project_id', s.project_id, 'session_id', s.session_id, 'state', s.state,
        'generation', s.generation, 'provider', s.provider, 'slot', s.slot,
        'preview_url', s.preview_url, 'last_job_id', s.last_job_id, 'jobs', s.jobs,
        'pause_after_s', s.pause_after_s, 'idle_timeout_s', s.idle_timeout_s,
        'max_lifetime_s', s.max_lifetime_s, 'stop_requested', s.stop_requested,
        'end_reason', s.end_reason, 'lease_token', s.lease_token)
    || jsonb_build_object(
        'created_at', to_char(s.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(s.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'last_used_at', to_char(s.last_used_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'ends_at', to_char(s.ends_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'ended_at', to_char(s.ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;

-- session_v1_events: the same with its history as "events", oldest first
-- (`sbx session show --json`, the clients' getSession with history).
CREATE OR REPLACE FUNCTION sbx.session_v1_events(s sbx.sessions) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT sbx.session_v1(s) || jsonb_build_object('events', (
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'generation', e.generation, 'from_state', e.from_state,
                   'to_state', e.to_state,
                   'at', to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'job_id', e.job_id, 'lease_token', e.lease_token, 'detail', e.detail)
                   ORDER BY e.id), '[]'::jsonb)
          FROM sbx.session_events e
         WHERE e.project_id = s.project_id AND e.session_id = s.session_id))
$$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'sbx.session_v1_events(sbx.sessions)',
        'sbx.sessions_due(text, boolean, integer, text[])',
        'sbx.park_session(text, text, bigint, text, text, text)',
        'sbx.stop_session(text, text)',
        'sbx.session_v1(sbx.sessions)']
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;
GRANT EXECUTE ON FUNCTION sbx.sessions_due(text, boolean, integer, text[]),
                          sbx.park_session(text, text, bigint, text, text, text)
    TO sbx_writer;
GRANT EXECUTE ON FUNCTION sbx.stop_session(text, text) TO sbx_submitter, sbx_writer;
GRANT EXECUTE ON FUNCTION sbx.session_v1(sbx.sessions), sbx.session_v1_events(sbx.sessions)
    TO sbx_reader, sbx_writer;
GRANT SELECT ON sbx.sessions, sbx.session_events TO sbx_reader, sbx_writer;
