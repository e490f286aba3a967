-- RedisAdmission.settle: the store decided these bookings; what they hold replaces what was reserved.
-- ARGV[1]: JSON array of {booking_id, event_id, user_id, held} (held: the seats it holds now, [] if rejected).
-- Returns EDGE_MISSING, or per booking 1 when this call settled it, 0 when it was settled before.
-- Publishes the seats that became held.

if edge_is_missing() then
  return EDGE_MISSING
end
local add_held, events, held_by_event = seat_collector()
local firsts = {}
for i, decided in ipairs(cjson.decode(ARGV[1])) do
  local first = settle(decided.event_id, decided.booking_id, decided.held, decided.user_id)
  forget_pending(decided.booking_id)
  if first then
    firsts[i] = 1
    add_held(decided.event_id, decided.held)
  else
    firsts[i] = 0
  end
end
publish_seats(events, held_by_event, 'held')
return firsts
