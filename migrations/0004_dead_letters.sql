-- 0004_dead_letters.sql — every dead letter is also a row (issue 10, item 2).
--
-- sbx.dead_letters holds what the dead-letter envelope says (why, where
-- from, sizes, the text with env values redacted: schemas/dlq.v1.schema.json)
-- plus its life here: whether the envelope reached the dead-letter topic, and
-- when `sbx dlq replay` sent the original again. One row per (topic,
-- partition, offset): a worker records the row first, publishes the envelope
-- only when the row says it is not published yet, then marks it published,
-- and finishes the offset only after both (worker/dlq.c). A replay of the
-- job topic (a new consumer group, offsets reset, a redelivery after a
-- crash) therefore finds the row and publishes nothing twice.
--
-- Secrets. The row keeps the redacted text, as the envelope does, and
-- sbx_reader may read it. To replay the job the ORIGINAL bytes are needed,
-- env values and all: they go to sbx.dead_letter_originals, one row per dead
-- letter whose message was at most SBX_DLQ_PAYLOAD_MAX bytes, which only
-- sbx_writer (and the owner) may SELECT. It is the one place sbx keeps env
-- values at rest, for as long as SBX_DLQ_RETENTION keeps the dead letter
-- (README "Secrets at rest"); a longer message keeps no original, and
-- `sbx dlq replay` refuses it.
--
-- Retention: prune_dead_letters(keep, batch) deletes one batch of the
-- oldest rows past `keep`, under its own advisory lock, like prune_runs
-- (0003); the cron of worker/prune.c calls it with SBX_DLQ_RETENTION.
--
-- Replay (producers/cli/dlq.c) resets a run the worker ended dead_lettered
-- back to queued (replay_dead_letter) in the transaction that publishes the
-- original, so a worker that reads the message sees a run it may start, and
-- a failed publish leaves the run as it was.
--
-- Safe to run twice: IF NOT EXISTS, CREATE OR REPLACE, idempotent GRANTs.

CREATE TABLE IF NOT EXISTS sbx.dead_letters (
    id                bigserial PRIMARY KEY,
    topic             text NOT NULL,
    kafka_partition   integer NOT NULL,
    kafka_offset      bigint NOT NULL,
    reason            text NOT NULL,
    detail            text,
    kafka_key         bytea,
    job_id            text,
    project_id        text,
    worker_id         text,
    attempts          integer NOT NULL DEFAULT 0,
    -- The redacted text whole, or (payload_truncated) its first bytes in
    -- payload_excerpt; both NULL when the message was no JSON object.
    payload           text,
    payload_excerpt   text,
    payload_truncated boolean NOT NULL DEFAULT false,
    payload_bytes     bigint NOT NULL,
    payload_sha256    text,
    original_kept     boolean NOT NULL DEFAULT false,
    published         boolean NOT NULL DEFAULT false,
    published_at      timestamptz,
    replays           integer NOT NULL DEFAULT 0,
    replayed_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, kafka_partition, kafka_offset)
);
CREATE INDEX IF NOT EXISTS dead_letters_created ON sbx.dead_letters (created_at);
CREATE INDEX IF NOT EXISTS dead_letters_by_job ON sbx.dead_letters (job_id);

CREATE TABLE IF NOT EXISTS sbx.dead_letter_originals (
    id      bigint PRIMARY KEY REFERENCES sbx.dead_letters (id) ON DELETE CASCADE,
    payload bytea NOT NULL
);

-- record_dead_letter: the envelope (as jsonb, without its "key": a key may
-- hold a NUL, which jsonb refuses), the key's bytes and, when kept, the
-- original's. Inserts the row unless (topic, partition, offset) has one;
-- returns its id, whether it is published, and whether it is new.
CREATE OR REPLACE FUNCTION sbx.record_dead_letter(p_env jsonb, p_key bytea, p_original bytea,
                                                  OUT id bigint, OUT published boolean,
                                                  OUT fresh boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO sbx.dead_letters AS d (topic, kafka_partition, kafka_offset, reason, detail,
           kafka_key, job_id, project_id, worker_id, attempts, payload, payload_excerpt,
           payload_truncated, payload_bytes, payload_sha256, original_kept)
    VALUES (p_env ->> 'topic', (p_env ->> 'partition')::integer, (p_env ->> 'offset')::bigint,
            p_env ->> 'reason', p_env ->> 'detail', p_key, p_env ->> 'job_id',
            p_env ->> 'project_id', p_env ->> 'worker_id',
            COALESCE((p_env ->> 'attempts')::integer, 0), p_env ->> 'payload',
            p_env ->> 'payload_excerpt', COALESCE((p_env ->> 'payload_truncated')::boolean, false),
            COALESCE((p_env ->> 'payload_bytes')::bigint, 0), p_env ->> 'payload_sha256',
            p_original IS NOT NULL)
    ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING
    RETURNING d.id INTO id;
    IF id IS NOT NULL THEN
        IF p_original IS NOT NULL THEN
            INSERT INTO sbx.dead_letter_originals (id, payload) VALUES (id, p_original);
        END IF;
        published := false;
        fresh := true;
        RETURN;
    END IF;
    SELECT d.id, d.published INTO id, published FROM sbx.dead_letters d
     WHERE d.topic = p_env ->> 'topic' AND d.kafka_partition = (p_env ->> 'partition')::integer
       AND d.kafka_offset = (p_env ->> 'offset')::bigint;
    fresh := false;
END $$;

-- dead_letter_published: the envelope reached the dead-letter topic.
-- Idempotent; false when the row is gone (pruned meanwhile).
CREATE OR REPLACE FUNCTION sbx.dead_letter_published(p_id bigint) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE sbx.dead_letters SET published = true, published_at = COALESCE(published_at, now())
     WHERE id = p_id
    RETURNING true
$$;

-- replay_dead_letter: `sbx dlq replay` is about to send the original again.
-- Counts the replay, and a run the worker ended dead_lettered goes back to
-- queued with its attempts reset (its lease token stays: fencing only goes
-- up), with a history row saying why. Any other run is left alone; the CLI
-- refused those before. Returns the run's status after it (NULL: no run).
-- Meant to run in the transaction that publishes, so a failed publish
-- undoes it.
CREATE OR REPLACE FUNCTION sbx.replay_dead_letter(p_id bigint, p_who text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dl sbx.dead_letters%ROWTYPE;
    old text;
BEGIN
    SELECT * INTO dl FROM sbx.dead_letters d WHERE d.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sbx: no dead letter %', p_id;
    END IF;
    UPDATE sbx.dead_letters SET replays = replays + 1, replayed_at = now() WHERE id = p_id;
    IF dl.job_id IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT r.status INTO old FROM sbx.runs r WHERE r.job_id = dl.job_id FOR UPDATE;
    IF old = 'dead_lettered' THEN
        UPDATE sbx.runs SET status = 'queued', attempt = 0, error = NULL, exit_code = NULL,
               finished_at = NULL, cancel_requested = false, updated_at = now()
         WHERE job_id = dl.job_id;
        INSERT INTO sbx.run_events (job_id, from_status, to_status, worker_id, detail)
        VALUES (dl.job_id, old, 'queued', p_who,
                format('replayed from dead letter %s (%s)', p_id, dl.reason));
        RETURN 'queued';
    END IF;
    RETURN old;
END $$;

-- prune_dead_letters: one batch of the oldest rows created longer than
-- `keep` ago (their originals go with them). -1 when another session holds
-- the lock. A dead letter deleted while its message is still in the job
-- topic is dead-lettered again if the topic is replayed: keep
-- SBX_DLQ_RETENTION longer than the topic keeps messages.
CREATE OR REPLACE FUNCTION sbx.prune_dead_letters(p_keep interval, p_batch integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    IF p_keep IS NULL OR p_keep <= interval '0' OR p_batch IS NULL OR p_batch < 1
       OR p_batch > 10000 THEN
        RAISE EXCEPTION 'sbx.prune_dead_letters: keep must be > 0 and batch 1..10000';
    END IF;
    -- "sbxprdl" in ASCII; held until this transaction ends.
    IF NOT pg_try_advisory_xact_lock(32477891743868012) THEN
        RETURN -1;
    END IF;
    DELETE FROM sbx.dead_letters d WHERE d.id IN (
        SELECT o.id FROM sbx.dead_letters o
         WHERE o.created_at < now() - p_keep
         ORDER BY o.created_at
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'sbx.record_dead_letter(jsonb, bytea, bytea)',
        'sbx.dead_letter_published(bigint)',
        'sbx.replay_dead_letter(bigint, text)',
        'sbx.prune_dead_letters(interval, integer)']
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO sbx_writer', f);
    END LOOP;
END $$;

GRANT SELECT ON sbx.dead_letters TO sbx_writer, sbx_reader;
-- The originals hold env values: writers only (README "Secrets at rest").
REVOKE ALL ON sbx.dead_letter_originals FROM PUBLIC, sbx_reader;
GRANT SELECT ON sbx.dead_letter_originals TO sbx_writer;
