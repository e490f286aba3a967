-- RedisAdmission.stale_admissions: bookings admitted at or before a time and never marked queued (what an
-- intake that died between admission and enqueue leaves behind), oldest first.
-- ARGV[1]: the time (epoch seconds, inclusive); ARGV[2]: at most this many.
-- Returns the bookings' JSON. Index entries whose pending record is gone (expired) or says queued are
-- dropped on the way, so that they never hide the stale ones behind them.

local found = {}
local ids = redis.call('ZRANGEBYSCORE', ADMITTED, '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, booking_id in ipairs(ids) do
  if pending_state(booking_id) == 'waiting' then
    found[#found + 1] = redis.call('HGET', pending_key(booking_id), 'booking')
  else
    redis.call('ZREM', ADMITTED, booking_id)
  end
end
return found
