-- RedisAdmission.release: seats of held bookings came back, cancelled or expired (EdgeInventory.release).
-- Idempotent: only the seats still taken by the booking are freed and counted, so a retried or repeated
-- release, or one after a rebuild, changes nothing. The booking's pending record, if any, goes.
-- ARGV[1]: JSON array of {booking_id, event_id, user_id, seats}.
-- Returns EDGE_MISSING or the number of seats freed. Publishes the seats that became available.

if edge_is_missing() then
  return EDGE_MISSING
end
local add_freed, events, freed_by_event = seat_collector()
local count = 0
for _, b in ipairs(cjson.decode(ARGV[1])) do
  local freed = release(b.event_id, b.booking_id, b.user_id, b.seats)
  forget_pending(b.booking_id)
  count = count + #freed
  add_freed(b.event_id, freed)
end
publish_seats(events, freed_by_event, 'available')
return count
