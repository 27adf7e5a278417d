-- 0006_run_logs.sql — a build's output, live, as ordered chunks.
--
-- sbx.runs.log_tail keeps the last 8 KiB for a glance; sbx.run_logs keeps
-- the output itself while the build runs, so a UI can show it as it comes.
-- The worker (worker/runlog.c) collects what the provider hands it and
-- writes one batch at least every 250 ms through sbx.append_logs(), which
-- NOTIFYs channel 'sbx_logs' once per batch with
-- {"job_id","attempt","seq"} (seq = the batch's last chunk). A reader
-- LISTENs, then reads
--     SELECT attempt, seq, stream, data, at FROM sbx.run_logs
--      WHERE job_id = $1 AND (attempt, seq) > ($2, $3) ORDER BY attempt, seq
-- from where it was: NOTIFY is a hint, the table is the record.
--
-- A chunk: (job_id, attempt, seq) with seq 0, 1, 2, ... per attempt, in the
-- order the build wrote, one stream each: 'stdout', 'stderr', or 'sbx' for
-- what sbx itself says in the log (the truncation marker when the run's
-- output passed SBX_LOG_MAX_BYTES). data is valid UTF-8 without control
-- characters but \n and \t, cleaned the same way for every provider; bytes is
-- what the build wrote for it before cleaning. Each attempt starts at seq 0,
-- so a retry's output never interleaves with the one before.
--
-- Fencing: append_logs writes only for the lease token and attempt the run
-- row holds, like transition(); a worker that lost the run adds nothing. A
-- batch replayed after a lost reply is absorbed by the primary key.
--
-- Retention: chunks go with their run (ON DELETE CASCADE from prune_runs).
--
-- Safe to run twice: IF NOT EXISTS, CREATE OR REPLACE, idempotent GRANTs.

CREATE TABLE IF NOT EXISTS sbx.run_logs (
    job_id   text        NOT NULL REFERENCES sbx.runs (job_id) ON DELETE CASCADE,
    attempt  integer     NOT NULL CHECK (attempt >= 1),
    seq      integer     NOT NULL CHECK (seq >= 0),
    stream   text        NOT NULL CHECK (stream IN ('stdout', 'stderr', 'sbx')),
    data     text        NOT NULL,
    bytes    integer     NOT NULL CHECK (bytes >= 0),
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (job_id, attempt, seq)
);

CREATE OR REPLACE FUNCTION sbx.append_logs(p_job text, p_token bigint, p_attempt integer,
                                           p_seq integer[], p_stream text[],
                                           p_data text[], p_bytes integer[])
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM 1 FROM sbx.runs r
     WHERE r.job_id = p_job AND r.lease_token = p_token AND r.attempt = p_attempt
       FOR SHARE;
    IF NOT FOUND THEN RETURN false; END IF;
    IF cardinality(p_seq) = 0 THEN RETURN true; END IF;
    INSERT INTO sbx.run_logs (job_id, attempt, seq, stream, data, bytes)
    SELECT p_job, p_attempt, u.s, u.st, u.d, u.b
      FROM unnest(p_seq, p_stream, p_data, p_bytes) AS u(s, st, d, b)
    ON CONFLICT DO NOTHING;
    PERFORM pg_notify('sbx_logs', json_build_object(
        'job_id', p_job, 'attempt', p_attempt,
        'seq', p_seq[cardinality(p_seq)])::text);
    RETURN true;
END $$;

REVOKE ALL ON FUNCTION sbx.append_logs(text, bigint, integer, integer[], text[], text[], integer[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sbx.append_logs(text, bigint, integer, integer[], text[], text[], integer[])
    TO sbx_writer;
GRANT SELECT ON sbx.run_logs TO sbx_writer, sbx_reader;
