-- RedisAdmission.withdraw: undo the admission of bookings, queued or not (EdgeInventory.withdraw): the
-- reservation, the pending record, and the Idempotency-Key unless it meanwhile names another booking.
-- ARGV[1]: JSON array of {booking_id, event_id, key?}.
-- Returns EDGE_MISSING or the number of bookings given.

if edge_is_missing() then
  return EDGE_MISSING
end
local withdrawn = cjson.decode(ARGV[1])
for _, b in ipairs(withdrawn) do
  withdraw(b)
end
return #withdrawn
