-- RedisAdmission.abandon: undo the admission of bookings whose enqueue failed or whose admit reply was
-- lost, unless the queue has them (marked queued). Idempotent, and safe when the admit never ran.
-- ARGV[1]: JSON array of {booking_id, event_id, key?}; ARGV[2]: TTL of the tombstones, seconds.
-- Returns EDGE_MISSING or the number of admissions undone.
--
-- Per booking, by its pending record:
--   waiting: admitted, not queued: withdrawn (reservation, record, key if ours).
--   queued: left alone (the queue will deliver it; the store decides it).
--   absent, with a reservation: restored from the store at a rebuild (the store has it): left alone.
--   absent, no reservation: the admit did not run, refused it (or found a repeat), or ran and the booking
--     was settled since (decided in the store: its key stays). Nothing to undo; a tombstone refuses an
--     admit of this booking still on its way (a request delayed in the network runs after this script).

if edge_is_missing() then
  return EDGE_MISSING
end
local tombstone_ttl = tonumber(ARGV[2])
local undone = 0
for _, b in ipairs(cjson.decode(ARGV[1])) do
  local state = pending_state(b.booking_id)
  if state == 'waiting' then
    withdraw(b)
    undone = undone + 1
  elseif state == 'absent' and redis.call('HEXISTS', edge_key(b.event_id, 'res'), b.booking_id) == 0 then
    redis.call('SET', abandoned_key(b.booking_id), '1', 'EX', tombstone_ttl)
  end
end
return undone
