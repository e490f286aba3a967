-- wrk script for fixed requests (browse scenario, hello-world baselines): the same request again and again,
-- its answers counted as in wrk_common.lua (BENCH_RESULT line).
--
--   wrk -t2 -c100 -d10s -s bench/http.lua http://127.0.0.1:PORT/path -- GET
--   wrk -t2 -c100 -d10s -s bench/http.lua http://127.0.0.1:PORT/hello -- POST '{"user_id":"u-1","quantity":1}'

dofile(debug.getinfo(1, "S").source:match("^@(.*[/\\])") .. "wrk_common.lua")

function init(args)
   wrk.method = args[1] or "GET"
   if args[2] then
      wrk.body = args[2]
      wrk.headers["Content-Type"] = "application/json"
   end
end
