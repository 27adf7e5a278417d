-- register.lua — makes a pool's slot set what a worker's provider offers
-- (worker, lease.c sbx_lease_register; VM agents register with beat.lua).
-- rkeys.h describes every key named here.
--
-- ARGV: pool, registrant, phase, slot...
-- Reply: {'OK', '', 0, 0, 0}
--
-- A slot written "!<id>" is busy with a build of the registrant's:
-- registered, but not free (after Redis lost its data, the lease that said
-- so is gone). A pool's slot list may be long (the bench provider registers
-- 100k), so it arrives in chunks: phase "first"/"more"/"last", or "only"
-- for one chunk. Each chunk adds its slots (free unless leased) and
-- collects them in a per-registrant set; the last drops the pool's slots
-- that no chunk named.
local pool, tmp, phase = ARGV[1], '{sbx}:slots_new:' .. ARGV[1] .. ':' .. ARGV[2], ARGV[3]
if phase == 'first' or phase == 'only' then redis.call('DEL', tmp) end
for i = 4, #ARGV do
  local s, busy = ARGV[i], false
  if string.sub(s, 1, 1) == '!' then s, busy = string.sub(s, 2), true end
  redis.call('SADD', tmp, s)
  redis.call('SADD', '{sbx}:slots:' .. pool, s)
  if busy then
    redis.call('SREM', '{sbx}:free:' .. pool, s)
    redis.call('HSET', '{sbx}:marked', s, pool)
  elseif redis.call('EXISTS', '{sbx}:lease:' .. s) == 0
         and redis.call('HEXISTS', '{sbx}:kept', s) == 0 then
    redis.call('SADD', '{sbx}:free:' .. pool, s)
  end
end
if phase == 'last' or phase == 'only' then
  for _, s in ipairs(redis.call('SMEMBERS', '{sbx}:slots:' .. pool)) do
    if redis.call('SISMEMBER', tmp, s) == 0 then
      redis.call('SREM', '{sbx}:slots:' .. pool, s)
      redis.call('SREM', '{sbx}:free:' .. pool, s)
    end
  end
  redis.call('DEL', tmp)
end
return {'OK', '', 0, 0, 0}
