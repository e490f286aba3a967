-- RedisAdmission.withdraw: undo the admission of bookings that were never accepted (EdgeInventory.withdraw),
-- and forget their Idempotency-Key unless it meanwhile names another booking.
-- ARGV[1]: JSON array of {booking_id, event_id, key?}.
-- Returns EDGE_MISSING or the number of bookings given.

if edge_is_missing() then
  return EDGE_MISSING
end
local withdrawn = cjson.decode(ARGV[1])
for _, b in ipairs(withdrawn) do
  settle(b.event_id, b.booking_id, {})
  redis.call('DEL', pending_key(b.booking_id))
  if b.key then
    local keys = edge_key(b.event_id, 'keys')
    local owner = string.match(redis.call('HGET', keys, b.key) or '', '^(%S+)')
    if owner == b.booking_id then
      redis.call('HDEL', keys, b.key)
    end
  end
end
return #withdrawn
