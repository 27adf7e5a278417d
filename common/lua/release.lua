-- release.lua — ends a lease and frees its slot (worker, lease.c
-- sbx_lease_release). rkeys.h describes every key named here.
--
-- ARGV: slot, token
-- Reply: {status, slot, token, 0, 0}
--   OK     released; the slot is free again if it is still registered
--   LOST   the token is no longer the slot's: nothing changed
local slot = ARGV[1]
local lk = '{sbx}:lease:' .. slot
local l = redis.call('HMGET', lk, 'token', 'project', 'pool')
if l[1] ~= ARGV[2] then return {'LOST', '', 0, 0, 0} end
if redis.call('GET', '{sbx}:project:' .. l[2]) == slot then
  redis.call('DEL', '{sbx}:project:' .. l[2])
end
redis.call('DEL', lk)
redis.call('ZREM', '{sbx}:deadlines', slot)
if redis.call('SISMEMBER', '{sbx}:slots:' .. l[3], slot) == 1 then
  redis.call('SADD', '{sbx}:free:' .. l[3], slot)
end
return {'OK', slot, tonumber(ARGV[2]), 0, 0}
