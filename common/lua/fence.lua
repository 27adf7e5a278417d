-- fence.lua — lifts the token counter to at least a floor (worker, lease.c
-- sbx_lease_fence_floor): after Redis lost its data, workers feed it the
-- newest token PostgreSQL recorded, so no token is ever handed out twice to
-- one slot or run. rkeys.h describes {sbx}:fence.
--
-- ARGV: floor, ttl_ms
-- Reply: {'OK', '', counter, 0, lifted (1 when it was below the floor)}
--
-- A lifted counter is a data loss seen: like acquire.lua, it holds new
-- leases back for one ttl ({sbx}:quiet_until) so that live owners take
-- theirs back first.
if (tonumber(redis.call('GET', '{sbx}:fence')) or 0) < tonumber(ARGV[1]) then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', '{sbx}:fence', ARGV[1])
  if (tonumber(redis.call('GET', '{sbx}:quiet_until')) or 0) < now + tonumber(ARGV[2]) then
    redis.call('SET', '{sbx}:quiet_until', now + tonumber(ARGV[2]))
  end
  return {'OK', '', tonumber(ARGV[1]), 0, 1}
end
return {'OK', '', tonumber(redis.call('GET', '{sbx}:fence')), 0, 0}
