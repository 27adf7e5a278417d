-- release.lua — ends leases and frees their slots, for a batch of jobs
-- (worker, lease.c sbx_lease_release, up to its BATCH_MAX per call).
-- rkeys.h describes every key named here.
--
-- ARGV: three per lease: slot, token, mode ("" or "end")
-- Reply: one {status, slot, token, 0, 0} per lease, in order
--   OK     released; the slot is free again if it is still registered,
--          unless a session keeps it ({sbx}:kept, see acquire.lua): a
--          session's lease leaves the slot to the session, and mode "end"
--          (the sweeper ended the session) ends the session's hold on it
--   LOST   the token is no longer the slot's: nothing changed, except
--          for a slot with no lease at all that register.lua marked busy
--          ({sbx}:marked): Redis lost the lease (restarted without its
--          data) before its owner's renewal took it back, and this is that
--          owner done with the slot, so it is free again. Without this the
--          slot stayed out of the pool until the worker registered again
--          (chaos: a build ending within a renewal of a Redis restart left
--          its worker's pool empty)
--   ERR    this release raised an error (slot holds its text)
--
-- Each release is the same steps a call of its own would take; Redis runs
-- the batch atomically, so no other call sees a release half done.
local function release(slot, tok, mode)
  local lk = '{sbx}:lease:' .. slot
  local l = redis.call('HMGET', lk, 'token', 'project', 'pool', 'session')
  if l[1] ~= tok then
    -- Only a release that finds no lease looks for a mark (renew.lua drops
    -- the mark of a lease it takes back). A mark left beside a live lease
    -- (registered again while Redis kept its data) does no harm: it only
    -- ever frees a slot that has no lease, here.
    local marked = not l[1] and redis.call('HGET', '{sbx}:marked', slot)
    if marked then
      redis.call('HDEL', '{sbx}:marked', slot)
      if redis.call('HEXISTS', '{sbx}:kept', slot) == 0
         and redis.call('SISMEMBER', '{sbx}:slots:' .. marked, slot) == 1 then
        redis.call('SADD', '{sbx}:free:' .. marked, slot)
      end
    end
    return {'LOST', '', 0, 0, 0}
  end
  if redis.call('GET', '{sbx}:project:' .. l[2]) == slot then
    redis.call('DEL', '{sbx}:project:' .. l[2])
  end
  redis.call('DEL', lk)
  redis.call('ZREM', '{sbx}:deadlines', slot)
  if mode == 'end' and l[4] and redis.call('HGET', '{sbx}:kept', slot) == l[4] then
    redis.call('HDEL', '{sbx}:kept', slot)
    redis.call('DEL', '{sbx}:session:' .. l[4])
  end
  if redis.call('HEXISTS', '{sbx}:kept', slot) == 0
     and redis.call('SISMEMBER', '{sbx}:slots:' .. l[3], slot) == 1 then
    redis.call('SADD', '{sbx}:free:' .. l[3], slot)
  end
  return {'OK', slot, tonumber(tok), 0, 0}
end

local out = {}
for i = 1, #ARGV, 3 do
  local ok, r = pcall(release, ARGV[i], ARGV[i + 1], ARGV[i + 2])
  if not ok then r = {'ERR', type(r) == 'table' and tostring(r.err) or tostring(r), 0, 0, 0} end
  out[#out + 1] = r
end
return out
