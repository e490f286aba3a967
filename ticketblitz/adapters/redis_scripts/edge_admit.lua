-- RedisAdmission.admit: admit a batch of booking requests in order, each one as EdgeInventory.admit would.
-- ARGV[1]: JSON array of requests {booking_id, event_id, user_id, quantity, seats, force, key?,
--          fingerprint?, record} where record is the booking's JSON, kept as its pending record.
-- ARGV[2]: TTL of the pending records, seconds. ARGV[3]: the time of admission (epoch seconds).
-- Returns EDGE_MISSING, or one answer per request:
--   'ok' | 'repeat:<booking id>:<fingerprint>' | 'limit_exceeded:<max_per_user>' |
--   'seat_unavailable:<seat>' (a named seat is taken) | 'seat_unavailable' (not enough seats left) |
--   'sold_out' | 'unknown_event' | 'abandoned' (the booking was abandoned before this request arrived)
-- A booking that already has its pending record answers 'ok' again and changes nothing: the same request
-- run twice (a client retry after a lost connection) admits once.

-- EdgeInventory.check: the refusal admission gives now, or nil when the request may be queued.
local function refusal(req, remaining, max_per_user)
  local per_user = tonumber(redis.call('HGET', edge_key(req.event_id, 'users'), req.user_id) or '0')
  if per_user + req.quantity > max_per_user then
    return 'limit_exceeded:' .. max_per_user
  end
  if #req.seats > 0 then
    local taken = edge_key(req.event_id, 'taken')
    for _, seat in ipairs(req.seats) do
      if redis.call('HEXISTS', taken, seat) == 1 then
        return 'seat_unavailable:' .. seat
      end
    end
    if remaining < req.quantity then
      return 'seat_unavailable'
    end
  elseif remaining < req.quantity then
    return 'sold_out'
  end
  return nil
end

local function admit_one(req, pending_ttl, admitted_at)
  if redis.call('EXISTS', abandoned_key(req.booking_id)) == 1 then
    return 'abandoned'
  end
  if redis.call('EXISTS', pending_key(req.booking_id)) == 1 then
    return 'ok'
  end
  local keys = edge_key(req.event_id, 'keys')
  if req.key then
    local earlier = redis.call('HGET', keys, req.key)
    if earlier then
      local booking_id, fingerprint = string.match(earlier, '^(%S+) ?(.*)$')
      return 'repeat:' .. booking_id .. ':' .. fingerprint
    end
  end
  local stock = redis.call('HMGET', edge_key(req.event_id, 'stock'), 'remaining', 'max_per_user')
  if not stock[1] then
    return 'unknown_event'
  end
  local why = refusal(req, tonumber(stock[1]), tonumber(stock[2]))
  if why == nil then
    reserve(req.event_id, req.booking_id, req.user_id, req.quantity, req.seats)
  elseif req.force then
    -- the queued compat path: let it through reserving nothing; the store decides it
    reserve(req.event_id, req.booking_id, req.user_id, 0, {})
  else
    return why
  end
  if req.key then
    redis.call('HSET', keys, req.key, req.booking_id .. ' ' .. (req.fingerprint or ''))
  end
  local record = pending_key(req.booking_id)
  redis.call('HSET', record, 'booking', req.record, 'queued', '0', 'admitted_at', admitted_at)
  redis.call('EXPIRE', record, pending_ttl)
  redis.call('ZADD', ADMITTED, admitted_at, req.booking_id)
  return 'ok'
end

if edge_is_missing() then
  return EDGE_MISSING
end
local pending_ttl = tonumber(ARGV[2])
local answers = {}
for i, req in ipairs(cjson.decode(ARGV[1])) do
  answers[i] = admit_one(req, pending_ttl, ARGV[3])
end
return answers
