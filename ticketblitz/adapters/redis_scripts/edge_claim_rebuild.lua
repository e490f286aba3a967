-- Decide who rebuilds the edge state (RedisAdmission): nobody when it is there, else the first caller.
-- KEYS[1]: the ready marker; KEYS[2]: the rebuild lock. ARGV[1]: caller's token; ARGV[2]: lock TTL, ms.
-- Returns 'ready' (nothing to do), 'mine' (the caller rebuilds) or 'busy' (another process rebuilds).

-- Checking the marker and taking the lock in one step matters: a caller that saw the marker missing just
-- before another process finished must not take the lock and wipe live state with an older snapshot.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'ready'
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 'mine'
end
return 'busy'
