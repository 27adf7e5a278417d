-- leave.lua — an agent leaves the pool (agent, registry.c
-- sbx_registry_leave): state = draining, and its slots that are not leased
-- leave both pool sets (a leased one stays so its holder's release works as
-- usual). rkeys.h describes every key named here.
--
-- ARGV: id, capacity
-- Reply: {0, slots kept because they are leased}
--#include vm_slots.lua
redis.call('HSET', '{sbx}:vm:' .. id, 'state', 'draining')
local kept = 0
for i = 1, cap do
  local s = slot(i)
  if redis.call('EXISTS', '{sbx}:lease:' .. s) == 0 then
    redis.call('SREM', '{sbx}:slots:vmpool', s)
    redis.call('SREM', '{sbx}:free:vmpool', s)
  else
    kept = kept + 1
  end
end
return {0, kept}
