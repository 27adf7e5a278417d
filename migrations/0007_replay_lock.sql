-- 0007_replay_lock.sql — `sbx dlq replay` (and the console's Replay) work
-- for a login that is only a member of sbx_writer, as the README says.
--
-- A replay holds its dead letter's row from its checks until the publish
-- commits, so two replays of one dead letter cannot both send it. It took
-- that lock with SELECT ... FOR UPDATE, which PostgreSQL allows only a role
-- with UPDATE on the table, and sbx_writer has SELECT alone (writers change
-- rows only through sbx's functions): every login but the owner's got
-- "permission denied for table dead_letters". lock_dead_letter takes the
-- same row lock as its owner; the lock lasts until the caller's transaction
-- ends. Returns false when there is no such dead letter.
--
-- Safe to run twice: CREATE OR REPLACE, idempotent GRANT.

CREATE OR REPLACE FUNCTION sbx.lock_dead_letter(p_id bigint) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM sbx.dead_letters d WHERE d.id = p_id FOR UPDATE)
$$;

REVOKE ALL ON FUNCTION sbx.lock_dead_letter(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sbx.lock_dead_letter(bigint) TO sbx_writer;
