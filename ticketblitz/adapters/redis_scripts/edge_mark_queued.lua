-- RedisAdmission.mark_queued: the queue acknowledged these bookings; their pending records say so, and
-- abandon leaves them alone from now on (nor are they stale admissions any more). Bookings without a
-- record (settled, withdrawn, never admitted, lost with Redis) or with one of the old format are ignored;
-- the record keeps its TTL.
-- ARGV[1]: JSON array of booking ids. Returns the number of records marked.

local marked = 0
for _, booking_id in ipairs(cjson.decode(ARGV[1])) do
  redis.call('ZREM', ADMITTED, booking_id)
  local record = pending_key(booking_id)
  if redis.call('TYPE', record).ok == 'hash' then
    redis.call('HSET', record, 'queued', '1')
    marked = marked + 1
  end
end
return marked
