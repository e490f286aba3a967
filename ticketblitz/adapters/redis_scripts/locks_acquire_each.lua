-- Lock each free seat on its own (RedisLocks.acquire_each).
-- KEYS[1]: the fencing counter; KEYS[2..n]: one lock key per seat.
-- ARGV[1]: the random token of this call's leases; ARGV[2]: time to live in ms.
-- Returns {fence, i, j, ...}: the fencing number, then the 1-based positions (among the seats) of the
-- seats locked now; {} when every seat was taken.

local got = {0}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then
    got[#got + 1] = i - 1
  end
end
if #got == 1 then
  return {}
end
-- one fencing number per call: every lease of this call carries it
got[1] = redis.call('INCR', KEYS[1])
return got
