-- Shared by bench/intake.lua and bench/http.lua (loaded with dofile): answer counting and the report.
--
-- Every wrk thread counts its answers by HTTP status, and per wall-clock second (os.time) all answers
-- and the 202s. done() merges the threads' counts and prints ONE line that bench/run.py parses:
--   BENCH_RESULT {"statuses": {"202": n, ...}, "accepted": n, "answers_per_second": {"<epoch s>": n},
--                 "accepted_per_second": {...}, "errors": {"connect": n, "read": n, "write": n,
--                 "timeout": n, "status": n}, "requests": n, "duration_us": n,
--                 "latency_us": {"mean", "p50", "p90", "p99", "max"}}
-- wrk's "status" error count is its own count of answers >= 400 (409s included).

local threads = {}

statuses = {}
answers_per_second = {}
accepted_per_second = {}

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

function response(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
   local second = tostring(os.time())
   answers_per_second[second] = (answers_per_second[second] or 0) + 1
   if status == 202 then
      accepted_per_second[second] = (accepted_per_second[second] or 0) + 1
   end
end

local function merge(name)
   local total = {}
   for _, thread in ipairs(threads) do
      for k, v in pairs(thread:get(name) or {}) do
         total[k] = (total[k] or 0) + v
      end
   end
   return total
end

local function json_object(t)
   local parts = {}
   for k, v in pairs(t) do
      parts[#parts + 1] = string.format('"%s": %.1f', k, v)
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
   local all_statuses = merge("statuses")
   local e = summary.errors
   local lat = {
      mean = latency.mean, p50 = latency:percentile(50), p90 = latency:percentile(90),
      p99 = latency:percentile(99), max = latency.max,
   }
   io.write("BENCH_RESULT ", string.format(
      '{"statuses": %s, "accepted": %d, "answers_per_second": %s, "accepted_per_second": %s, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}, '
         .. '"requests": %d, "duration_us": %d, "latency_us": %s}',
      json_object(all_statuses), all_statuses["202"] or 0, json_object(merge("answers_per_second")),
      json_object(merge("accepted_per_second")), e.connect, e.read, e.write, e.timeout, e.status,
      summary.requests, summary.duration, json_object(lat)), "\n")
end
