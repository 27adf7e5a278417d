-- 0007_replay_lock.sql — `sbx dlq replay` (and the console's Replay) work
-- for a login that is only a member of sbx_writer, as the README says.
--
-- A replay holds its dead letter's row (SELECT ... FOR UPDATE OF d,
-- producers/cli/dlq.c) from its checks until the publish commits, so two
-- replays of one dead letter cannot both send it. PostgreSQL lets a row be
-- locked only by a role with UPDATE on at least one of its columns, and
-- 0004 gave sbx_writer SELECT alone: the lock failed with "permission
-- denied for table dead_letters" for every login but the owner's. UPDATE of
-- the one counter column is enough for the lock; the replay itself still
-- changes the row only through sbx.replay_dead_letter (SECURITY DEFINER).
--
-- Safe to run twice: GRANT is idempotent.

GRANT UPDATE (replays) ON sbx.dead_letters TO sbx_writer;
