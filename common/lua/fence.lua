-- fence.lua — lifts the token counter to at least a floor (worker, lease.c
-- sbx_lease_fence_floor): after Redis lost its data, workers feed it the
-- newest token PostgreSQL recorded, so no token is ever handed out twice to
-- one slot or run. rkeys.h describes {sbx}:fence.
--
-- ARGV: floor
-- Reply: {'OK', '', counter, 0, lifted (1 when it was below the floor)}
if (tonumber(redis.call('GET', '{sbx}:fence')) or 0) < tonumber(ARGV[1]) then
  redis.call('SET', '{sbx}:fence', ARGV[1])
  return {'OK', '', tonumber(ARGV[1]), 0, 1}
end
return {'OK', '', tonumber(redis.call('GET', '{sbx}:fence')), 0, 0}
