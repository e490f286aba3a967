-- wrk script of the sustained-intake scenario (c): POST /api/events/{id}/bookings with quantity 1 and a
-- unique user_id per request ("w<thread>-<counter>"), so that no request runs into max_per_user.
--
--   wrk -t2 -c100 -d20s -s bench/intake.lua http://127.0.0.1:PORT -- EVENT_ID
--
-- Counting and the BENCH_RESULT line (202s included, which run.py compares with held + sold): wrk_common.lua.

dofile(debug.getinfo(1, "S").source:match("^@(.*[/\\])") .. "wrk_common.lua")

local counter = 0

function init(args)
   path = "/api/events/" .. args[1] .. "/bookings"
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   counter = counter + 1
   return wrk.format("POST", path, nil, '{"user_id":"w' .. tid .. '-' .. counter .. '","quantity":1}')
end
