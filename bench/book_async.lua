-- wrk script of the original's queued route: POST /api/book-async with the original's body
-- {"userId", "seatNumber", "eventId"}, a unique user per request ("w<thread>-<counter>") and a named seat
-- per request (seatNumber runs through 1..SEATS, each thread on its own stride, so that none is asked twice
-- while fewer than SEATS requests are sent). Used against ours and against bench/fastify_original.js.
--
--   wrk -t2 -c100 -d20s -s bench/book_async.lua http://127.0.0.1:PORT -- EVENT_ID SEATS THREADS
--
-- Counting and the BENCH_RESULT line (202s included): wrk_common.lua.

dofile(debug.getinfo(1, "S").source:match("^@(.*[/\\])") .. "wrk_common.lua")

local counter = 0
local event_id = "evt_bench_original"
local seats = 200000
local stride = 2  -- wrk's thread count (third argument)

function init(args)
   event_id = args[1] or event_id
   seats = tonumber(args[2] or seats)
   stride = tonumber(args[3] or stride)
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   counter = counter + 1
   local seat = ((counter - 1) * stride + (tid - 1)) % seats + 1
   return wrk.format("POST", "/api/book-async", nil, '{"userId":"w' .. tid .. '-' .. counter .. '","seatNumber":'
      .. seat .. ',"eventId":"' .. event_id .. '"}')
end
