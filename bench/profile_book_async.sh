#!/usr/bin/env bash
# py-spy profile of one server process under the original's queued route (the profiles of issue 10):
# a fresh 200,000-seat event, wrk -t2 -c100 -s bench/book_async.lua for SECONDS, and py-spy attached for
# the middle 12 s (only the samples of threads holding the GIL with GIL=1, the default: what limits one
# process; GIL=0 samples every thread that is not idle). 127.0.0.1 only, bounded, stops what it started.
#
#   bash bench/profile_book_async.sh embedded|distributed PORT OUT_PREFIX [SECONDS]
#
# Writes OUT_PREFIX.svg (flame graph) and OUT_PREFIX.txt (collapsed stacks, per thread), prints wrk's
# req/s and the server's CPU seconds during wrk. distributed: the services of scripts/services.sh
# (PostgreSQL's default database, Redis db 6 flushed first, a fresh Kafka topic and group).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mode=$1 port=$2 out=$3 seconds=${4:-15}
cd "$here"
export TICKETBLITZ_ADMIN_TOKEN=profile-token
data=$(mktemp -d /tmp/tb-profile-XXXXXX)
unset TICKETBLITZ_DATABASE_URL TICKETBLITZ_REDIS_URL TICKETBLITZ_KAFKA_BOOTSTRAP
if [ "$mode" = distributed ]; then
    eval "$(bash scripts/services.sh env)"
    export TICKETBLITZ_REDIS_URL=${TICKETBLITZ_REDIS_URL%/*}/6
    redis-cli -u "$TICKETBLITZ_REDIS_URL" flushdb >/dev/null
    hex=$(openssl rand -hex 4)
    export TICKETBLITZ_KAFKA_TOPIC=profile-$hex TICKETBLITZ_KAFKA_GROUP=profile-group-$hex
fi
.venv/bin/python -m ticketblitz serve --port "$port" --data-dir "$data" >"$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
event=$(curl -sf -X POST -H "Authorization: Bearer $TICKETBLITZ_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    "http://127.0.0.1:$port/api/events" \
    -d '{"name":"profile","sections":[{"name":"A","rows":200,"seats_per_row":1000,"price_cents":0}]}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
gil=(); [ "${GIL:-1}" = 1 ] && gil=(--gil)
(sleep 2; .venv/bin/py-spy record --pid $server --duration 12 --rate 100 --nonblocking "${gil[@]}" \
    --format flamegraph -o "$out.svg" >/dev/null 2>&1) &
spy1=$!
(sleep 2; .venv/bin/py-spy record --pid $server --duration 12 --rate 100 --nonblocking "${gil[@]}" --threads \
    --format raw -o "$out.txt" >/dev/null 2>&1) &
spy2=$!
cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }
before=$(cpu)
wrk -t2 -c100 -d"${seconds}s" --timeout 10s -s bench/book_async.lua "http://127.0.0.1:$port" -- "$event" 200000 2 |
    grep -E "Requests/sec|Non-2xx|Socket errors" || true
echo "server CPU during wrk: $(( ($(cpu) - before) * 10 )) ms"
wait $spy1 $spy2
