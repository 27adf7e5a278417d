-- beat.lua — an agent's registration and heartbeat in one (agent,
-- registry.c sbx_registry_beat): every beat also repairs whatever a Redis
-- restart or acquire.lua's dead-VM sweep took away. rkeys.h describes every
-- key named here.
--
-- ARGV: id, capacity, base_url, labels, ttl_ms, state, busy flags ("0"/"1"
-- per slot), full ("1": first beat after connecting: also drop slots of
-- this id that an earlier capacity left in the pool)
-- Reply: {heartbeat_ms, slots freed}
--
-- heartbeat_ms is Redis' own TIME: acquire.lua compares it with the same
-- clock, never with an agent's or a worker's.
--#include vm_slots.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = ARGV[6]
redis.call('HSET', '{sbx}:vm:' .. id, 'base_url', ARGV[3], 'capacity', ARGV[2], 'labels', ARGV[4], 'heartbeat_ms', now, 'ttl_ms', ARGV[5], 'state', state)
if state == 'draining' then return {now, 0} end
local mine = {}
for i = 1, cap do mine[slot(i)] = true end
if ARGV[8] == '1' then
  for _, s in ipairs(redis.call('SMEMBERS', '{sbx}:slots:vmpool')) do
    if not mine[s] and (s == id or string.sub(s, 1, #id + 1) == id .. '#') then
      redis.call('SREM', '{sbx}:slots:vmpool', s)
      redis.call('SREM', '{sbx}:free:vmpool', s)
    end
  end
end
local freed = 0
for i = 1, cap do
  local s = slot(i)
  redis.call('SADD', '{sbx}:slots:vmpool', s)
  if redis.call('EXISTS', '{sbx}:lease:' .. s) == 0 then
    if string.sub(ARGV[7], i, i) == '0' and redis.call('HEXISTS', '{sbx}:kept', s) == 0 then
      freed = freed + redis.call('SADD', '{sbx}:free:vmpool', s)
    else
      -- A build runs here whose lease is gone (its worker died and the
      -- lease was reaped): handing the slot out now would only meet 409 busy.
      redis.call('SREM', '{sbx}:free:vmpool', s)
    end
  end
end
return {now, freed}
