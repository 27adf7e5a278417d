-- 0003_retention.sql — sbx.runs and sbx.run_events do not grow forever.
--
-- prune_runs(keep, batch) deletes one batch: up to `batch` runs that are
-- terminal and finished longer than `keep` ago, oldest first, with their
-- history. Workers call it from their cron (worker/prune.c), one batch per
-- statement with a pause between batches, so the database never sees one big
-- delete and the vacuum keeps up. It returns how many runs it removed, or -1
-- when another session holds the pruning lock: a transaction-level advisory
-- lock taken with pg_try_advisory_xact_lock, so several workers never prune
-- at once and none of them waits for another.
--
-- Kept whatever their age: runs that are not terminal (a job queued for a
-- week is still a job), and the run holding the newest fencing token, which
-- the worker reads at start-up to lift Redis's token counter after Redis
-- lost its data (worker/main.c); pruning it would let a token be handed out
-- twice.
--
-- A pruned job is forgotten: if its message is still in the job topic and
-- the topic is replayed, it runs again. README "Retention" says to keep
-- SBX_RETENTION longer than the topic keeps messages.
--
-- Indexes: runs_finished serves the oldest-terminal-first scan, so a batch
-- reads what it deletes and no more; runs_by_token makes max(lease_token)
-- (here and at worker start-up) a lookup instead of a scan. Building them
-- locks sbx.runs against writes for as long as the build takes; on a large
-- table, create them CONCURRENTLY by hand before running `sbx migrate`
-- (IF NOT EXISTS then skips them).
--
-- Safe to run twice: IF NOT EXISTS, CREATE OR REPLACE, idempotent GRANT.

CREATE INDEX IF NOT EXISTS runs_finished ON sbx.runs (finished_at)
    WHERE status IN ('succeeded', 'failed', 'timed_out', 'canceled', 'dead_lettered');
CREATE INDEX IF NOT EXISTS runs_by_token ON sbx.runs (lease_token);

CREATE OR REPLACE FUNCTION sbx.prune_runs(p_keep interval, p_batch integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    newest bigint;
    ids text[];
    n integer;
BEGIN
    -- A zero or negative keep would delete what just finished; the cap on
    -- batch keeps any caller's statement small.
    IF p_keep IS NULL OR p_keep <= interval '0' OR p_batch IS NULL OR p_batch < 1
       OR p_batch > 10000 THEN
        RAISE EXCEPTION 'sbx.prune_runs: keep must be > 0 and batch 1..10000';
    END IF;
    -- "sbxprun" in ASCII; held until this transaction ends.
    IF NOT pg_try_advisory_xact_lock(32477891743872366) THEN
        RETURN -1;
    END IF;
    SELECT max(r.lease_token) INTO newest FROM sbx.runs r;
    SELECT array_agg(c.job_id) INTO ids FROM (
        SELECT r.job_id FROM sbx.runs r
         WHERE r.status IN ('succeeded', 'failed', 'timed_out', 'canceled', 'dead_lettered')
           AND r.finished_at < now() - p_keep
           AND (r.lease_token = 0 OR r.lease_token < newest)
         ORDER BY r.finished_at
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED) c;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM sbx.run_events e WHERE e.job_id = ANY (ids);
    DELETE FROM sbx.runs r WHERE r.job_id = ANY (ids);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

REVOKE ALL ON FUNCTION sbx.prune_runs(interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sbx.prune_runs(interval, integer) TO sbx_writer;
