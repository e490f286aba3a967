-- RedisAdmission.release: seats of held bookings came back, cancelled or expired (EdgeInventory.release).
-- ARGV[1]: JSON array of {booking_id, event_id, user_id, seats}.
-- Returns EDGE_MISSING or the number of bookings given. Publishes the seats that became available.

if edge_is_missing() then
  return EDGE_MISSING
end
local add_freed, events, freed_by_event = seat_collector()
local released = cjson.decode(ARGV[1])
for _, b in ipairs(released) do
  if redis.call('EXISTS', edge_key(b.event_id, 'stock')) == 1 then
    redis.call('HINCRBY', edge_key(b.event_id, 'stock'), 'remaining', #b.seats)
    untake(b.event_id, b.seats, b.booking_id)
    add_user(b.event_id, b.user_id, -#b.seats)
  end
  add_freed(b.event_id, b.seats)
end
publish_seats(events, freed_by_event, 'available')
return #released
