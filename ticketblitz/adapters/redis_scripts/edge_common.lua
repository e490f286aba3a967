-- Shared by the edge admission scripts (RedisAdmission prepends it to each of them): the key layout and
-- the bookkeeping steps of ticketblitz/domain/inventory.py (EdgeInventory), which these scripts mirror
-- step for step. Per event EVT (the hash tag keeps one event's keys in one slot):
--   tb:{EVT}:stock  hash  remaining, max_per_user
--   tb:{EVT}:taken  hash  seat -> booking id that reserved, holds or bought it
--   tb:{EVT}:users  hash  user -> seats reserved or owned (absent when 0)
--   tb:{EVT}:res    hash  booking id -> reservation {"user_id", "quantity", "seats"} of a pending booking
--   tb:{EVT}:keys   hash  Idempotency-Key -> "<booking id> <fingerprint>"
-- and per booking, with a TTL:
--   tb:pending:<id>    hash  the booking accepted but not yet settled: booking (its JSON), queued ("0"
--                            at admit, "1" once the queue acknowledged it), admitted_at (epoch seconds)
--   tb:abandoned:<id>  "1"   an abandoned booking whose admission had not run: refuses a late admit
-- and tb:admitted, a sorted set of the bookings admitted and not yet queued (score: admitted_at), where
-- stale admissions are found (an intake that died between admission and enqueue).
--
-- The edge state is a cache rebuilt from the store; tb:edge:ready marks it complete. Every script that
-- reads or changes it first checks the marker and answers EDGE_MISSING without touching anything when
-- it is gone (Redis restarted or was flushed), so that the caller rebuilds and asks again.

local READY = 'tb:edge:ready'
local ADMITTED = 'tb:admitted'
local EDGE_MISSING = 'edge_missing'
local SEAT_UPDATES = 'seat-updates'

local function edge_key(event_id, part)
  return 'tb:{' .. event_id .. '}:' .. part
end

local RELEASED_TTL_S = 86400

local function released_key(booking_id)
  return 'tb:released:' .. booking_id
end

local function pending_key(booking_id)
  return 'tb:pending:' .. booking_id
end

local function abandoned_key(booking_id)
  return 'tb:abandoned:' .. booking_id
end

-- The pending record's state: 'absent', 'waiting' (admitted, not yet queued) or 'queued'. A record of the
-- format before 'queued' existed (a plain string; HGET refuses it) was only kept for queued bookings.
local function pending_state(booking_id)
  local queued = redis.pcall('HGET', pending_key(booking_id), 'queued')
  if type(queued) == 'table' and queued.err then
    return 'queued'
  end
  if not queued then
    return 'absent'
  end
  if queued == '1' then
    return 'queued'
  end
  return 'waiting'
end

-- The booking is settled, withdrawn or released: its pending record and its index entry go.
local function forget_pending(booking_id)
  redis.call('DEL', pending_key(booking_id))
  redis.call('ZREM', ADMITTED, booking_id)
end

local function edge_is_missing()
  return redis.call('EXISTS', READY) == 0
end

-- EdgeInventory._add_user: a user's count moves by delta; a count that reaches 0 disappears.
local function add_user(event_id, user_id, delta)
  if delta == 0 then
    return
  end
  local users = edge_key(event_id, 'users')
  if redis.call('HINCRBY', users, user_id, delta) <= 0 then
    redis.call('HDEL', users, user_id)
  end
end

local function take(event_id, seats, booking_id)
  local taken = edge_key(event_id, 'taken')
  for _, seat in ipairs(seats) do
    redis.call('HSET', taken, seat, booking_id)
  end
end

-- EdgeInventory._untake: free only the seats this booking itself has in `taken`; a seat it named may
-- meanwhile be held by another booking (the store's picker does not know edge reservations).
-- Returns the seats freed.
local function untake(event_id, seats, booking_id)
  local taken = edge_key(event_id, 'taken')
  local freed = {}
  for _, seat in ipairs(seats) do
    if redis.call('HGET', taken, seat) == booking_id then
      redis.call('HDEL', taken, seat)
      freed[#freed + 1] = seat
    end
  end
  return freed
end

-- EdgeInventory._reserve: set aside `quantity` seats (the named ones in `seats`) for a pending booking.
local function reserve(event_id, booking_id, user_id, quantity, seats)
  if quantity > 0 then  -- (Lua writes -0 as "-0", which HINCRBY refuses)
    redis.call('HINCRBY', edge_key(event_id, 'stock'), 'remaining', -quantity)
  end
  take(event_id, seats, booking_id)
  add_user(event_id, user_id, quantity)
  redis.call('HSET', edge_key(event_id, 'res'), booking_id,
             cjson.encode({user_id = user_id, quantity = quantity, seats = seats}))
end

-- EdgeInventory.settle: the store decided; the seats now held replace what was reserved.
-- Returns false when the booking has no reservation (settled before: a redelivered decision).
-- Without a reservation: settled before (a redelivery: nothing changes), or the edge was rebuilt while
-- the booking was only in the queue; then the held seats not yet counted as its own are counted now
-- (EdgeInventory._adopt), given the booking's user_id.
local function settle(event_id, booking_id, held, user_id)
  local res = edge_key(event_id, 'res')
  local raw = redis.call('HGET', res, booking_id)
  if not raw then
    local stock = edge_key(event_id, 'stock')
    if user_id == nil or redis.call('EXISTS', stock) == 0 or redis.call('EXISTS', released_key(booking_id)) == 1 then
      return false
    end
    local taken = edge_key(event_id, 'taken')
    local new = {}
    for _, seat in ipairs(held) do
      if redis.call('HGET', taken, seat) ~= booking_id then
        new[#new + 1] = seat
      end
    end
    if #new == 0 then
      return false
    end
    redis.call('HINCRBY', stock, 'remaining', -#new)
    take(event_id, new, booking_id)
    add_user(event_id, user_id, #new)
    return true
  end
  redis.call('HDEL', res, booking_id)
  local stock = edge_key(event_id, 'stock')
  if redis.call('EXISTS', stock) == 0 then
    return true
  end
  local reservation = cjson.decode(raw)
  redis.call('HINCRBY', stock, 'remaining', reservation.quantity - #held)
  untake(event_id, reservation.seats, booking_id)
  take(event_id, held, booking_id)
  add_user(event_id, reservation.user_id, #held - reservation.quantity)
  return true
end

-- Forget an Idempotency-Key unless it meanwhile names another booking. b: {booking_id, event_id, key?}
local function forget_key(b)
  if b.key then
    local keys = edge_key(b.event_id, 'keys')
    local owner = string.match(redis.call('HGET', keys, b.key) or '', '^(%S+)')
    if owner == b.booking_id then
      redis.call('HDEL', keys, b.key)
    end
  end
end

-- Undo an admission (EdgeInventory.withdraw): the reservation, the pending record, the key if ours.
local function withdraw(b)
  settle(b.event_id, b.booking_id, {})
  forget_pending(b.booking_id)
  forget_key(b)
end

-- EdgeInventory.release: seats of a held booking came back. Idempotent: frees only those of `seats`
-- still taken by this booking and moves the counters by exactly that many; a stale reservation (a
-- settle that never landed) is given back first. Returns the seats freed.
local function release(event_id, booking_id, user_id, seats)
  local stock = edge_key(event_id, 'stock')
  if redis.call('EXISTS', stock) == 0 then
    return {}
  end
  settle(event_id, booking_id, {})
  -- a settle arriving after this release must not count the seats again (see settle)
  redis.call('SET', released_key(booking_id), '1', 'EX', RELEASED_TTL_S)
  local freed = untake(event_id, seats, booking_id)
  if #freed > 0 then
    redis.call('HINCRBY', stock, 'remaining', #freed)
    add_user(event_id, user_id, -#freed)
  end
  return freed
end

-- Tell the visualizers (the original's channel) which seats changed, one message per event.
-- seats_by_event: event id -> list of seats; events: the event ids in first-seen order.
local function publish_seats(events, seats_by_event, status)
  for _, event_id in ipairs(events) do
    local seats = seats_by_event[event_id]
    if #seats > 0 then
      redis.call('PUBLISH', SEAT_UPDATES, cjson.encode({event_id = event_id, seats = seats, status = status}))
    end
  end
end

-- Collects seats per event for publish_seats, keeping the order in which events first appear.
local function seat_collector()
  local events, seats_by_event = {}, {}
  local function add(event_id, seats)
    local list = seats_by_event[event_id]
    if list == nil then
      list = {}
      seats_by_event[event_id] = list
      events[#events + 1] = event_id
    end
    for _, seat in ipairs(seats) do
      list[#list + 1] = seat
    end
  end
  return add, events, seats_by_event
end
