-- vm_slots.lua — not a script of its own: the opening beat.lua and
-- leave.lua include. Both derive a VM's slot ids from its id and capacity
-- ("<id>" for capacity 1, "<id>#<i>" otherwise), so a call carries the
-- same few arguments whatever the capacity (redis.c caps EVAL arguments).
--
-- ARGV[1]: the VM id, ARGV[2]: its capacity
local id, cap = ARGV[1], tonumber(ARGV[2])
local function slot(i)
  if cap == 1 then return id end
  return id .. '#' .. (i - 1)
end
