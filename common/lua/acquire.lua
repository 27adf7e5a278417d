-- acquire.lua — leases on free slots of a pool, for a batch of jobs (worker,
-- lease.c sbx_lease_acquire, up to its BATCH_MAX jobs per call). rkeys.h
-- describes every key named here.
--
-- ARGV: seven per job: pools, project, job, worker, ttl_ms, token floor,
--       session ("" none; "<name>" a job of that session; "!<name>" the
--       session sweeper, which wants the session's own slot or nothing).
--       pools: one pool, or several comma-separated in the order they are
--       tried (spill-over: the first with a free slot wins; the sweeper
--       names one)
-- Reply: one {status, slot, token, ttl_left_ms, reaped, pool} per job, in order
--   OK     slot leased: its token and the lease's ttl, and the pool it is in
--   GONE   "!<name>": the session holds no slot (a fresh token to fence the
--          sweeper's write with; nothing leased)
--   HELD   this very job holds the project's lease (slot, time left)
--   BUSY   another job of the project holds it (slot, time left)
--   NOCAP  no free slot in any of the pools
--   QUIET  Redis lost its data a moment ago: no new lease until every live
--          owner had a renewal's chance to take its lease back (time left)
--   ERR    this job's decision raised an error (slot holds its text); the
--          other jobs of the batch are decided as if it had not been there
--
-- Each job is decided by the same steps a call of its own would take, one
-- job after the other in the batch's order, so two jobs of one project in
-- one batch are exactly "first OK, second BUSY", and Redis runs the whole
-- batch atomically, so no other worker's call interleaves with any job.
-- Time is read once per batch (one instant for all its decisions).
--
-- First, expired leases are reaped (any worker may reap; reaping twice is
-- harmless), at most 64 per job so one decision never runs long inside
-- Redis: a killed worker's slots come back without a separate process.
-- Time is Redis' own (TIME), never a worker's clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function lease(slot, pool, project, job, worker, ttl, now, session, reaped)
  local token = redis.call('INCR', '{sbx}:fence')
  local lk = '{sbx}:lease:' .. slot
  redis.call('HSET', lk, 'job', job, 'project', project, 'worker', worker, 'token', token, 'pool', pool, 'expires', now + ttl)
  if session ~= '' then redis.call('HSET', lk, 'session', session) end
  redis.call('SET', '{sbx}:project:' .. project, slot)
  redis.call('ZADD', '{sbx}:deadlines', now + ttl, slot)
  return {'OK', slot, token, ttl, reaped, pool}
end

local function reap()
  local reaped = 0
  for _, slot in ipairs(redis.call('ZRANGEBYSCORE', '{sbx}:deadlines', '-inf', now, 'LIMIT', 0, 64)) do
    local lk = '{sbx}:lease:' .. slot
    local l = redis.call('HMGET', lk, 'project', 'pool', 'session')
    if l[1] and redis.call('GET', '{sbx}:project:' .. l[1]) == slot then
      redis.call('DEL', '{sbx}:project:' .. l[1])
    end
    redis.call('DEL', lk)
    redis.call('ZREM', '{sbx}:deadlines', slot)
    if redis.call('HEXISTS', '{sbx}:kept', slot) == 0 and l[2] and redis.call('SISMEMBER', '{sbx}:slots:' .. l[2], slot) == 1 then
      redis.call('SADD', '{sbx}:free:' .. l[2], slot)
    end
    reaped = reaped + 1
  end
  return reaped
end

-- Sessions: {sbx}:session:<name> (hash slot, pool) is the slot a session's
-- sandbox lives on, and {sbx}:kept (hash slot -> name) the same the other
-- way round. A kept slot is never free: a job of the session leases it
-- again, the sweeper too, nobody else (every script that frees a slot skips
-- kept ones). Set when the session's first job leases a slot; deleted by
-- release.lua (mode "end") when the sweeper ended the session, or here when
-- the slot left the pool or its VM died (its sandbox went with it).
local function alive(slot, pool)
  local vm = string.match(slot, '^[^#]+')
  local hb = redis.call('HMGET', '{sbx}:vm:' .. vm, 'heartbeat_ms', 'ttl_ms')
  if not hb[1] or tonumber(hb[1]) + tonumber(hb[2] or 90000) >= now then return true end
  redis.call('SREM', '{sbx}:slots:' .. pool, slot)
  redis.call('HSET', '{sbx}:vm:' .. vm, 'state', 'dead')
  return false
end

local function session_slot(name, pools, sweeper)
  local sk = '{sbx}:session:' .. name
  local s = redis.call('HMGET', sk, 'slot', 'pool')
  if not s[1] then return nil end
  local mine = false
  for _, p in ipairs(pools) do mine = mine or p == s[2] end
  -- Another pool's sweeper leaves it to that pool's.
  if sweeper and not mine then return nil, nil, true end
  if mine and redis.call('SISMEMBER', '{sbx}:slots:' .. s[2], s[1]) == 1
     and alive(s[1], s[2]) then
    return s[1], s[2]
  end
  -- A pool this job may not use, or a slot that left its pool: that
  -- sandbox is gone for this job; the slot goes back to its own pool if it
  -- is still there.
  redis.call('DEL', sk)
  redis.call('HDEL', '{sbx}:kept', s[1])
  if s[2] and redis.call('EXISTS', '{sbx}:lease:' .. s[1]) == 0
     and redis.call('SISMEMBER', '{sbx}:slots:' .. s[2], s[1]) == 1 then
    redis.call('SADD', '{sbx}:free:' .. s[2], s[1])
  end
  return nil
end

local function acquire(pool, project, job, worker, ttl, floor, session)
  local reaped = reap()
  -- Tokens must outgrow every token PostgreSQL has seen, even after Redis
  -- lost its data: the caller passes the newest token it knows as a floor.
  -- A counter below it is that loss seen; the owners of the leases it took
  -- are maybe still building, so no lease is handed out for one ttl
  -- ({sbx}:quiet_until): each live owner renews within it and takes its
  -- lease back (renew.lua), and a frozen one stops trusting its lease (its
  -- supervisor kills the build) before it ends.
  if (tonumber(redis.call('GET', '{sbx}:fence')) or 0) < tonumber(floor) then
    redis.call('SET', '{sbx}:fence', floor)
    if (tonumber(redis.call('GET', '{sbx}:quiet_until')) or 0) < now + ttl then
      redis.call('SET', '{sbx}:quiet_until', now + ttl)
    end
  end
  local held = redis.call('GET', '{sbx}:project:' .. project)
  if held then
    local l = redis.call('HMGET', '{sbx}:lease:' .. held, 'job', 'expires')
    local left = (tonumber(l[2]) or now) - now
    if l[1] == job then return {'HELD', held, 0, left, reaped} end
    return {'BUSY', held, 0, left, reaped}
  end
  local quiet = (tonumber(redis.call('GET', '{sbx}:quiet_until')) or 0) - now
  if quiet > 0 then return {'QUIET', '', 0, quiet, reaped} end
  local sweeper = string.sub(session, 1, 1) == '!'
  if sweeper then session = string.sub(session, 2) end
  local pools = {}
  for p in string.gmatch(pool, '[^,]+') do pools[#pools + 1] = p end
  local slot, at, elsewhere
  if session ~= '' then slot, at, elsewhere = session_slot(session, pools, sweeper) end
  if elsewhere then return {'BUSY', '', 0, 0, reaped} end
  if slot then
    if redis.call('EXISTS', '{sbx}:lease:' .. slot) == 1 then
      local left = (tonumber(redis.call('HGET', '{sbx}:lease:' .. slot, 'expires')) or now) - now
      return {'BUSY', slot, 0, left, reaped}
    end
  elseif sweeper then
    return {'GONE', '', redis.call('INCR', '{sbx}:fence'), 0, reaped}
  end
  if slot then
    return lease(slot, at, project, job, worker, ttl, now, session, reaped)
  end
  -- The pools in their order: the first with a free slot gives it. A slot
  -- on a VM whose agent stopped heartbeating is never handed out: it leaves
  -- the pool (the agent registers again when it comes back). Slots without
  -- a {sbx}:vm: hash (local, docker, fly) skip the check. At most 64 dead
  -- slots are looked at per pool.
  for _, p in ipairs(pools) do
    for _ = 1, 64 do
      slot = redis.call('SPOP', '{sbx}:free:' .. p)
      if not slot or alive(slot, p) then break end
      slot = nil
    end
    if slot then at = p break end
  end
  if not slot then return {'NOCAP', '', 0, 0, reaped} end
  if session ~= '' then
    redis.call('HSET', '{sbx}:session:' .. session, 'slot', slot, 'pool', at)
    redis.call('HSET', '{sbx}:kept', slot, session)
  end
  return lease(slot, at, project, job, worker, ttl, now, session, reaped)
end

-- A job whose decision raises (a bad argument, a key of the wrong type)
-- gets ERR; what it wrote before the error stays, as it would for a call of
-- its own, and the jobs after it are still decided.
local out = {}
for i = 1, #ARGV, 7 do
  local ok, r = pcall(acquire, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4]), ARGV[i + 5], ARGV[i + 6])
  if not ok then r = {'ERR', type(r) == 'table' and tostring(r.err) or tostring(r), 0, 0, 0} end
  out[#out + 1] = r
end
return out
