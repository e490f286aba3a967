#!/usr/bin/env bash
# The hot reads under wrk on one embedded server process (127.0.0.1, bounded): the demo event (10,000
# seats), its seat map as JSON, gzip, a 304 revalidation and the compact form, then a booking read.
#
#   bash bench/reads.sh [PORT] [SECONDS] [SOURCE_TREE]
#
# SOURCE_TREE (default: this checkout) is put first on PYTHONPATH, so that another commit's code can be
# measured with the same venv (e.g. a `git worktree` of the commit before). Prints one line per scenario:
# "<name> <req/s> <p99 ms> <statuses>" from wrk's BENCH_RESULT (bench/wrk_common.lua).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
port=${1:-16481}
seconds=${2:-10}
tree=${3:-$here}
data=$(mktemp -d /tmp/tb-reads-XXXXXX)
url=http://127.0.0.1:$port
export TICKETBLITZ_ADMIN_TOKEN=bench-token
cd "$tree"  # (python -m puts the working directory first on sys.path)
env -u TICKETBLITZ_DATABASE_URL -u TICKETBLITZ_REDIS_URL -u TICKETBLITZ_KAFKA_BOOTSTRAP PYTHONPATH="$tree" \
    "$here/.venv/bin/python" -m ticketblitz serve --port "$port" --data-dir "$data" --demo \
    >"$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "$url/readyz" >/dev/null && break; sleep 0.2; done
booking=$(curl -sf -X POST "$url/api/events/evt_demo/bookings" -H 'Content-Type: application/json' \
    -d '{"user_id":"bench","quantity":1}')
booking_id=$(echo "$booking" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
secret=$(echo "$booking" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
sleep 1  # decided; the seat map cache is older than its max age by the first measured request
etag=$(curl -sfI "$url/api/events/evt_demo/seats" -o /dev/null -D - | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')
run() {  # name, path, extra wrk args...
    local name=$1 path=$2; shift 2
    local line
    line=$(wrk -t2 -c100 -d"${seconds}s" --latency "$@" -s "$here/bench/http.lua" "$url$path" -- GET \
           | grep '^BENCH_RESULT' | sed 's/^BENCH_RESULT //')
    python3 -c 'import json,sys; r=json.loads(sys.argv[2]); s=r["duration_us"]/1e6; n=r["requests"]
p99=r["latency_us"]["p99"]/1000; print("%-20s %9.0f req/s  p99 %7.1f ms  %s" % (sys.argv[1], n/s, p99, r["statuses"]))' \
        "$name" "$line"
}
echo "size: seats $(curl -s "$url/api/events/evt_demo/seats" | wc -c) B," \
     "gzip $(curl -s -H 'Accept-Encoding: gzip' "$url/api/events/evt_demo/seats" | wc -c) B," \
     "compact $(curl -s "$url/api/events/evt_demo/seats?form=compact" | wc -c) B," \
     "compact gzip $(curl -s -H 'Accept-Encoding: gzip' "$url/api/events/evt_demo/seats?form=compact" | wc -c) B;" \
     "etag ${etag:-none}"
run "event" /api/events/evt_demo
run "seats" /api/events/evt_demo/seats
run "seats gzip" /api/events/evt_demo/seats -H 'Accept-Encoding: gzip'
if [ -n "$etag" ]; then run "seats 304" /api/events/evt_demo/seats -H "If-None-Match: $etag"; fi
run "seats compact" '/api/events/evt_demo/seats?form=compact'
run "seats compact gzip" '/api/events/evt_demo/seats?form=compact' -H 'Accept-Encoding: gzip'
run "booking" "/api/bookings/$booking_id" -H "Authorization: Bearer $secret"
if [ "${FASTIFY:-}" = 1 ] && [ -e "$here/bench/.node/node_modules/fastify/package.json" ]; then
    # the same bytes from Fastify's memory, same wrk, same machine (npm install --prefix bench/.node fastify@5)
    curl -s "$url/api/events/evt_demo/seats" -o "$data/seats.json"
    curl -s -H 'Accept-Encoding: gzip' "$url/api/events/evt_demo/seats" -o "$data/seats.json.gz"
    kill $server; wait $server 2>/dev/null || true
    for kind in plain gzip; do
        file=$data/seats.json; [ $kind = gzip ] && file=$data/seats.json.gz
        node "$here/bench/fastify_hello.js" $((port + 1)) "$file" "$([ $kind = gzip ] && echo gzip)" >/dev/null &
        fastify=$!
        for _ in $(seq 50); do curl -sf "http://127.0.0.1:$((port + 1))/hello" >/dev/null && break; sleep 0.1; done
        url=http://127.0.0.1:$((port + 1))
        [ $kind = plain ] && run "fastify hello GET" /hello
        run "fastify seats $kind" /bytes
        kill $fastify; wait $fastify 2>/dev/null || true
    done
fi
