-- renew.lua — pushes leases' expiry out by ttl_ms, for a batch of jobs
-- (worker, lease.c sbx_lease_renew, up to its BATCH_MAX per call).
-- rkeys.h describes every key named here.
--
-- ARGV: seven per lease: slot, token, ttl_ms, job, project, worker, pool
-- Reply: one {status, slot, token, ttl_ms, restored} per lease, in order
--   OK     renewed; restored = 1 when the lease had to be written again
--   LOST   the token is no longer the slot's, or the lease expired
--   ERR    this renewal raised an error (slot holds its text)
--
-- A lease whose key is gone (Redis restarted without its data) is taken
-- back when neither the slot nor the project has another holder: the build
-- goes on, and the fence counter is lifted above the token. An expired
-- lease is lost for good (its owner stopped trusting it before it expired).
-- Each renewal is the same steps a call of its own would take, in the
-- batch's order; time is read once per batch.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function renew(slot, tok, ttl, job, project, worker, pool)
  local lk = '{sbx}:lease:' .. slot
  local l = redis.call('HMGET', lk, 'token', 'expires')
  local restored = 0
  if not l[1] then
    local held = redis.call('GET', '{sbx}:project:' .. project)
    if held and held ~= slot then return {'LOST', '', 0, 0, 0} end
    -- A counter below our token: Redis lost its data, and other owners may
    -- be about to take theirs back too. acquire.lua hands out nothing new
    -- until they had one ttl to do so.
    if (tonumber(redis.call('GET', '{sbx}:fence')) or 0) < tonumber(tok) then
      redis.call('SET', '{sbx}:fence', tok)
      if (tonumber(redis.call('GET', '{sbx}:quiet_until')) or 0) < now + ttl then
        redis.call('SET', '{sbx}:quiet_until', now + ttl)
      end
    end
    redis.call('HSET', lk, 'job', job, 'project', project, 'worker', worker, 'token', tok, 'pool', pool)
    redis.call('SREM', '{sbx}:free:' .. pool, slot)
    redis.call('HDEL', '{sbx}:marked', slot)
    redis.call('SET', '{sbx}:project:' .. project, slot)
    restored = 1
  elseif l[1] ~= tok or tonumber(l[2]) < now then
    return {'LOST', '', 0, 0, 0}
  end
  redis.call('HSET', lk, 'expires', now + ttl)
  redis.call('ZADD', '{sbx}:deadlines', now + ttl, slot)
  return {'OK', slot, tonumber(tok), ttl, restored}
end

local out = {}
for i = 1, #ARGV, 7 do
  local ok, r = pcall(renew, ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6])
  if not ok then r = {'ERR', type(r) == 'table' and tostring(r.err) or tostring(r), 0, 0, 0} end
  out[#out + 1] = r
end
return out
