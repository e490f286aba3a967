"""Where the waiting room's line should live: what recording joins costs in each candidate, in one run.

    .venv/bin/python bench/bench_line_store.py [--joins 50000] [--batch 2000]

The issue proposed, for distributed mode, the line in Redis (Lua for join/admit) with every join ALSO
recorded in PostgreSQL, "so that a Redis loss loses no place". A place the fan was told about must then
be in PostgreSQL before the 201 goes out, so the PostgreSQL write is on every join's path whatever sits in
front of it. This measures, in the same run and on the same machine, joins per second of:

1. `PostgresStore.queue_join` (what TicketBlitz does: one transaction per batch, the line's row locked,
   positions given and tickets inserted), one worker and two workers (two connection pools, as two
   server processes) racing on one line;
2. `SqliteStore.queue_join` (embedded);
3. a Redis Lua script giving places (one user -> one ticket, the next position), batches of the same
   size: the fast half of the proposed design, WITHOUT its PostgreSQL record;
4. that record alone: the batch's tickets inserted into PostgreSQL with the positions given, no line lock
   and no look-up of the users (Redis did both). The proposal pays (3) + (4) for each join.

PostgreSQL and Redis from `eval "$(scripts/services.sh env)"` (fresh database `tb_bench_line_<hex>`, Redis
database 9 flushed, both dropped/flushed at the end). Bounded: each phase stops after --max-seconds
(default 60). Writes bench/results/<UTC date>-line-store.md and .json.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ticketblitz.adapters.postgres_store import PostgresStore  # noqa: E402
from ticketblitz.adapters.sqlite_store import SqliteStore  # noqa: E402
from ticketblitz.domain.model import Event, Section, new_event_id  # noqa: E402
from ticketblitz.domain.waiting_room import WaitingRoom, new_ticket_id  # noqa: E402

REDIS_DB = 9
JOIN_LUA = """
local out = {}
for i = 1, #ARGV, 2 do
  local user, ticket = ARGV[i], ARGV[i + 1]
  local have = redis.call('HGET', KEYS[1], user)
  if have then
    out[#out + 1] = have
  else
    local position = redis.call('HINCRBY', KEYS[2], 'last_position', 1)
    local record = ticket .. '|' .. position
    redis.call('HSET', KEYS[1], user, record)
    redis.call('HSET', KEYS[3], ticket, user .. '|' .. position)
    out[#out + 1] = record
  end
end
return out
"""


def room_event(now: float) -> Event:
    return Event(id=new_event_id(), name="Line bench", sections=(Section("A", 10, 100),), created_at=now,
                 waiting_room=WaitingRoom(mode="fifo", admit_per_second=100, pass_seconds=600))


def batches(joins: int, batch: int, workers: int, worker: int) -> list[range]:
    return [range(start, min(joins, start + batch)) for start in range(worker * batch, joins, batch * workers)]


async def store_phase(make: Callable[[], Any], joins: int, batch: int, workers: int, budget: float) -> dict[str, Any]:
    stores = [make() for _ in range(workers)]
    for store in stores:
        await store.open()
    try:
        now = time.time()
        event = await stores[0].create_event(room_event(now))
        done = 0
        positions: list[int] = []

        async def worker(n: int) -> None:
            nonlocal done
            for users in batches(joins, batch, workers, n):
                joined = await stores[n].queue_join(
                    event.id, [(new_ticket_id(), f"u{i}", "h" * 64) for i in users], now)
                assert joined is not None
                positions.extend(t.position for t, created in joined[0] if created)
                done += len(users)

        started = time.perf_counter()
        with trio.move_on_after(budget):
            async with trio.open_nursery() as nursery:
                for n in range(workers):
                    nursery.start_soon(worker, n)
        seconds = time.perf_counter() - started
        assert sorted(positions) == list(range(1, len(positions) + 1)), "positions with a gap or a repeat"
        return {"joins": done, "seconds": round(seconds, 3), "joins_per_s": round(done / seconds)}
    finally:
        for store in stores:
            await store.close()


async def record_phase(url: str, joins: int, batch: int, budget: float) -> dict[str, Any]:
    """Only the PostgreSQL record the proposal needs: the tickets inserted with the positions Redis gave,
    no line lock, no look-up of the users (Redis did both). The least the proposal pays on top of Lua."""
    import psycopg

    store = PostgresStore(url, timeout=30.0)
    await store.open()
    try:
        now = time.time()
        event = await store.create_event(room_event(now))
    finally:
        await store.close()

    def work() -> dict[str, Any]:
        done = 0
        with psycopg.connect(url) as conn:
            started = time.perf_counter()
            for users in batches(joins, batch, 1, 0):
                if time.perf_counter() - started > budget:
                    break
                with conn.transaction(), conn.cursor().copy(
                        "COPY queue_tickets (id, event_id, user_id, seq, position, status, secret_hash, created_at) "
                        "FROM STDIN") as copy:  # as the store inserts them
                    for i in users:
                        copy.write_row((new_ticket_id(), event.id, f"u{i}", i + 1, i + 1, "waiting", "h" * 64, now))
                done += len(users)
            seconds = time.perf_counter() - started
        return {"joins": done, "seconds": round(seconds, 3), "joins_per_s": round(done / seconds)}

    return await trio.to_thread.run_sync(work)


def redis_phase(url: str, joins: int, batch: int, budget: float) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    script = client.register_script(JOIN_LUA)
    keys = ["tb:{bench}:q:users", "tb:{bench}:q:line", "tb:{bench}:q:tickets"]
    done = 0
    started = time.perf_counter()
    try:
        for users in batches(joins, batch, 1, 0):
            if time.perf_counter() - started > budget:
                break
            args: list[str] = []
            for i in users:
                args += [f"u{i}", new_ticket_id()]
            script(keys=keys, args=args)
            done += len(users)
        seconds = time.perf_counter() - started
        assert int(client.hget(keys[1], "last_position") or 0) == done
    finally:
        client.flushdb()
        client.close()
    return {"joins": done, "seconds": round(seconds, 3), "joins_per_s": round(done / seconds)}


def remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    pg, redis_url = os.environ.get("TICKETBLITZ_DATABASE_URL"), os.environ.get("TICKETBLITZ_REDIS_URL")
    if not pg or not redis_url:
        raise SystemExit('TICKETBLITZ_DATABASE_URL/TICKETBLITZ_REDIS_URL unset: eval "$(scripts/services.sh env)"')
    database = f"tb_bench_line_{secrets.token_hex(4)}"
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    results: dict[str, Any] = {}
    try:
        url = with_database(pg, database)
        phases: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
            ("postgres_1_worker", lambda: store_phase(lambda: PostgresStore(url, timeout=30.0), args.joins,
                                                      args.batch, 1, args.max_seconds)),
            ("postgres_2_workers", lambda: store_phase(lambda: PostgresStore(url, timeout=30.0), args.joins,
                                                       args.batch, 2, args.max_seconds)),
        ]
        with_sqlite = Path(args.scratch) / f"line-{secrets.token_hex(4)}.sqlite3"
        phases.append(("sqlite", lambda: store_phase(lambda: SqliteStore(with_sqlite, timeout=30.0), args.joins,
                                                     args.batch, 1, args.max_seconds)))
        phases.append(("postgres_record_only", lambda: record_phase(url, args.joins, args.batch, args.max_seconds)))
        for name, phase in phases:
            results[name] = await phase()
            print(name, results[name], flush=True)
        results["redis_lua_only"] = await trio.to_thread.run_sync(
            redis_phase, redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}", args.joins, args.batch, args.max_seconds)
        print("redis_lua_only", results["redis_lua_only"], flush=True)
        await trio.to_thread.run_sync(remove_sqlite, with_sqlite)
    finally:
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    return results


def markdown(doc: dict[str, Any]) -> str:
    r = doc["results"]
    pg = r["postgres_1_worker"]["joins_per_s"]
    lua = r["redis_lua_only"]["joins_per_s"]
    record = r["postgres_record_only"]["joins_per_s"]
    # the proposal pays both halves for each join: 1 / (1/lua + 1/record) joins per second at best
    proposal = round(1 / (1 / record + 1 / lua))
    rows = [
        ("PostgreSQL `queue_join`, 1 worker (TicketBlitz distributed)", r["postgres_1_worker"]),
        ("PostgreSQL `queue_join`, 2 workers racing on one line", r["postgres_2_workers"]),
        ("SQLite `queue_join` (TicketBlitz embedded)", r["sqlite"]),
        ("Redis Lua places only, no PostgreSQL record (half of the proposal)", r["redis_lua_only"]),
        ("PostgreSQL record only: the tickets inserted, no lock, no look-up (the other half)",
         r["postgres_record_only"]),
    ]
    lines = [f"# Where the line lives: joins per second — {doc['date']} ({doc['machine']})", "",
             f"Command: `{doc['command']}`", "",
             f"{doc['joins']:,} joins in batches of {doc['batch']} (the service batches joins per transaction "
             "the same way), each phase in the same run. Ratios against PostgreSQL with one worker.", "",
             "| candidate | joins | seconds | joins/s | ratio |", "|---|---:|---:|---:|---:|"]
    for label, res in rows:
        lines.append(f"| {label} | {res['joins']:,} | {res['seconds']} | {res['joins_per_s']:,} | "
                     f"{res['joins_per_s'] / pg:.2f}x |")
    lines += ["", f"The proposal (Redis places, then the PostgreSQL record a Redis loss needs, before the 201) pays "
              f"both halves for every join: at best 1 / (1/{lua:,} + 1/{record:,}) ≈ {proposal:,} joins/s "
              f"({proposal / pg:.2f}x of what TicketBlitz's one PostgreSQL transaction does), before the "
              "reconciliation it would need (places Redis gave whose record failed, a rebuild racing joins in "
              "flight).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--scratch", default=os.environ.get("TMPDIR", "/tmp"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    results = trio.run(main_async, args)
    date = time.strftime("%Y-%m-%d", time.gmtime())
    doc = {"date": date, "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "command": shlex.join([".venv/bin/python", "bench/bench_line_store.py", *sys.argv[1:]]),
           "joins": args.joins, "batch": args.batch, "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{date}-line-store.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    (out / f"{date}-line-store.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
