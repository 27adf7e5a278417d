-- lease_left.lua — whether a slot's lease still carries a build's token, and
-- how long it has left (agent, agent/leasewatch.c). rkeys.h describes every
-- key named here.
--
-- ARGV: slot, token
-- Reply: {status, left_ms}
--   OK     the lease carries this token; left_ms until it expires (Redis'
--          own clock, TIME; <= 0 once past)
--   LOST   the lease carries another token: a newer owner
--   GONE   no lease for the slot (released, reaped, or Redis lost its data)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local l = redis.call('HMGET', '{sbx}:lease:' .. ARGV[1], 'token', 'expires')
if not l[1] then return {'GONE', 0} end
if l[1] ~= ARGV[2] then return {'LOST', 0} end
return {'OK', (tonumber(l[2]) or now) - now}
