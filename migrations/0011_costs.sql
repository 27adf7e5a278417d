-- 0011_costs.sql — what a project's sandboxes cost (issue 13, item 5).
--
-- Nothing new is written on a job's path: the time a sandbox was held is
-- already in the histories, so it is read from them.
--  - A run holds a sandbox from its claim (`provisioning` in
--    sbx.run_events) to its next terminal or handed-back status (queued,
--    waiting_capacity): one interval per attempt.
--  - A session also holds its sandbox while idle and while paused, between
--    its jobs: its `idle` and `paused` intervals in sbx.session_events, up
--    to its next change of state (now, while it lasts). Busy time is its
--    runs' own, so nothing is counted twice.
-- Prices are per provider and per hour, held and paused apart (a paused Fly
-- machine is billed for its disk only), in sbx.prices with the time each
-- took effect: an interval is priced at the price in effect when it began,
-- so a new price never rewrites yesterday's cost. A worker started with
-- SBX_PRICE_PER_HOUR records its provider's price through set_price().
--
-- Safe to run twice: IF NOT EXISTS, CREATE OR REPLACE, idempotent GRANTs.

CREATE TABLE IF NOT EXISTS sbx.prices (
    provider        text NOT NULL,
    since           timestamptz NOT NULL DEFAULT now(),
    per_hour        numeric NOT NULL CHECK (per_hour >= 0),
    paused_per_hour numeric NOT NULL DEFAULT 0 CHECK (paused_per_hour >= 0),
    PRIMARY KEY (provider, since)
);

-- set_price: a new price from now on; nothing when it is the current one
-- (every worker of a provider calls it at start-up). Returns whether it
-- changed.
CREATE OR REPLACE FUNCTION sbx.set_price(p_provider text, p_per_hour numeric,
                                         p_paused_per_hour numeric) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- One writer at a time per provider: two workers starting together
    -- record one change.
    PERFORM pg_advisory_xact_lock(hashtext('sbx.set_price:' || p_provider));
    IF EXISTS (SELECT 1 FROM (SELECT p.per_hour, p.paused_per_hour FROM sbx.prices p
                               WHERE p.provider = p_provider ORDER BY p.since DESC LIMIT 1) c
                WHERE c.per_hour = p_per_hour AND c.paused_per_hour = p_paused_per_hour) THEN
        RETURN false;
    END IF;
    INSERT INTO sbx.prices (provider, since, per_hour, paused_per_hour)
    VALUES (p_provider, clock_timestamp(), p_per_hour, p_paused_per_hour);
    RETURN true;
END $$;

-- Every interval in which a sandbox was held: kind 'run' (a run's attempt),
-- 'idle' or 'paused' (a session between its jobs).
CREATE OR REPLACE VIEW sbx.sandbox_intervals AS
    SELECT r.project_id, r.provider, 'run'::text AS kind, r.job_id, NULL::text AS session_id,
           e.at AS started_at,
           COALESCE((SELECT min(x.at) FROM sbx.run_events x
                      WHERE x.job_id = e.job_id AND x.id > e.id
                        AND (sbx.is_terminal(x.to_status)
                             OR x.to_status IN ('queued', 'waiting_capacity'))),
                    CASE WHEN sbx.is_terminal(r.status) THEN r.finished_at ELSE now() END)
               AS ended_at
      FROM sbx.run_events e JOIN sbx.runs r ON r.job_id = e.job_id
     WHERE e.to_status = 'provisioning'
    UNION ALL
    SELECT i.project_id, s.provider, i.to_state, NULL, i.session_id, i.at,
           COALESCE(i.next_at, now())
      FROM (SELECT e.project_id, e.session_id, e.to_state, e.at,
                   lead(e.at) OVER (PARTITION BY e.project_id, e.session_id ORDER BY e.id)
                       AS next_at
              FROM sbx.session_events e) i
      JOIN sbx.sessions s ON s.project_id = i.project_id AND s.session_id = i.session_id
     WHERE i.to_state IN ('idle', 'paused');

-- project_costs: per project and provider, the seconds sandboxes were held
-- within [p_from, p_to) (intervals cut at both ends) and what they cost.
-- "What did this project cost today":
--   SELECT * FROM sbx.project_costs(date_trunc('day', now()), now()) WHERE project_id = $1;
CREATE OR REPLACE FUNCTION sbx.project_costs(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (project_id text, provider text, run_seconds double precision,
               idle_seconds double precision, paused_seconds double precision, cost numeric)
LANGUAGE sql STABLE AS $$
    SELECT c.project_id, c.provider,
           sum(c.secs) FILTER (WHERE c.kind = 'run'),
           sum(c.secs) FILTER (WHERE c.kind = 'idle'),
           sum(c.secs) FILTER (WHERE c.kind = 'paused'),
           round(sum(c.secs::numeric / 3600 * COALESCE(
               CASE WHEN c.kind = 'paused' THEN p.paused_per_hour ELSE p.per_hour END, 0)), 6)
      FROM (SELECT i.project_id, i.provider, i.kind,
                   GREATEST(i.started_at, p_from) AS t0,
                   extract(epoch FROM LEAST(i.ended_at, p_to) - GREATEST(i.started_at, p_from))
                       ::double precision AS secs
              FROM sbx.sandbox_intervals i
             WHERE i.started_at < p_to AND i.ended_at > p_from) c
      LEFT JOIN LATERAL (SELECT pr.per_hour, pr.paused_per_hour FROM sbx.prices pr
                          WHERE pr.provider = c.provider AND pr.since <= c.t0
                          ORDER BY pr.since DESC LIMIT 1) p ON true
     GROUP BY c.project_id, c.provider
$$;

REVOKE ALL ON FUNCTION sbx.set_price(text, numeric, numeric) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sbx.set_price(text, numeric, numeric) TO sbx_writer;
GRANT SELECT ON sbx.prices, sbx.sandbox_intervals TO sbx_reader, sbx_writer;
GRANT EXECUTE ON FUNCTION sbx.project_costs(timestamptz, timestamptz) TO sbx_reader, sbx_writer;
