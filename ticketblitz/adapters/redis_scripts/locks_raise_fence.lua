-- Raise the fencing counter to at least ARGV[1] (never lower it): after Redis lost the counter, new
-- fencing numbers must still be above every number a seat row recorded in the store.
-- KEYS[1] = the fence counter
local floor = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < floor then
  redis.call('SET', KEYS[1], floor)
  return floor
end
return current
