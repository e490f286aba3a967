-- Unlock (RedisLocks.release, and the edge's rebuild lock): delete a key only while it still holds the
-- token of the lease being released. A lease that lapsed may since belong to another owner, whose lock
-- must survive the late release of the first.
-- KEYS[i]: a lock key; ARGV[i]: the token expected in KEYS[i].
-- Returns how many keys were deleted.

local freed = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('DEL', key)
    freed = freed + 1
  end
end
return freed
