-- Lock every seat or none (RedisLocks.acquire).
-- KEYS[1]: the fencing counter; KEYS[2..n]: one lock key per seat.
-- ARGV[1]: the lease's random token; ARGV[2]: time to live in ms.
-- Returns the fencing number, or 0 when a seat is locked by someone else.

-- Check first, write after: a script runs alone, so nothing can take a seat in between.
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    return 0
  end
end
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
end
return redis.call('INCR', KEYS[1])
