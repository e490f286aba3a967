"""Seat map documents: the old path (store.seats() → dicts → orjson, on the Trio thread) against the
database-built one (Store.seat_map_json), for SQLite and PostgreSQL, per event size.

    eval "$(bash scripts/services.sh env)"
    .venv/bin/python bench/seat_map.py --seats 10000 200000 --runs 7

Per path: wall time of one document (median and best of --runs), CPU time of the Trio thread during
the call (what every other request waits for), and the longest stall a 1 ms ticker task saw. Each
event has mixed statuses (about 2% held, 1% sold). PostgreSQL runs in a scratch database, dropped at
the end; SQLite in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import psycopg
import trio

from ticketblitz.adapters.postgres_store import PostgresStore
from ticketblitz.adapters.sqlite_store import SqliteStore
from ticketblitz.domain.model import Booking, Event, Section, new_booking_id, new_event_id
from ticketblitz.representation import compat_seat_json, seat_json

Store = SqliteStore | PostgresStore


def make_event(seats: int) -> Event:
    per_row = min(seats, 1000)
    return Event(id=new_event_id(), name=f"bench {seats}", sections=(Section("A", seats // per_row, per_row, 100),),
                 max_per_user=20, hold_seconds=3600, created_at=time.time())


async def fill(store: Store, event: Event) -> None:
    """About 2% of the seats held, half of those confirmed (sold)."""
    now = time.time()
    bookings = [Booking(id=new_booking_id(), event_id=event.id, user_id=f"u{i}", quantity=20, created_at=now,
                        updated_at=now) for i in range(max(1, event.capacity // 1000))]
    decided = []
    for start in range(0, len(bookings), 50):
        decided += await store.decide(bookings[start:start + 50], now, insert=True)
    for b in decided[::2]:
        await store.confirm(b.id, now)


async def old_path(store: Store, event_id: str, form: str) -> bytes:
    seats = await store.seats(event_id)
    if form == "api":
        return orjson.dumps({"event_id": event_id, "seats": [seat_json(s) for s in seats]})
    return orjson.dumps({"eventId": event_id, "seats": [compat_seat_json(s) for s in seats]})


async def new_path(store: Store, event_id: str, form: str) -> bytes:
    document = await store.seat_map_json(event_id, form)
    assert document is not None
    return document


async def measure(call: Callable[[], Awaitable[bytes]], runs: int) -> dict[str, Any]:
    walls, cpus, stalls = [], [], []
    size = 0
    for _ in range(runs):
        worst = [0.0]
        done = trio.Event()

        async def ticker(worst: list[float] = worst, done: trio.Event = done) -> None:
            last = time.perf_counter()
            while not done.is_set():
                await trio.sleep(0.001)
                now = time.perf_counter()
                worst[0] = max(worst[0], now - last)
                last = now

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.sleep(0.01)
            cpu, wall = time.thread_time(), time.perf_counter()
            size = len(await call())
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            done.set()
        walls.append(wall)
        cpus.append(cpu)
        stalls.append(worst[0])
    return {"median": statistics.median(walls), "best": min(walls), "trio_cpu": statistics.median(cpus),
            "stall": statistics.median(stalls), "bytes": size}


async def bench(sizes: list[int], runs: int, forms: list[str]) -> None:
    admin = os.environ.get("TICKETBLITZ_DATABASE_URL")
    if not admin:
        sys.exit('TICKETBLITZ_DATABASE_URL is not set: eval "$(bash scripts/services.sh env)"')
    database = f"tb_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stores: list[Store] = [SqliteStore(Path(tmp) / "bench.db", timeout=30.0),
                                   PostgresStore(admin.rsplit("/", 1)[0] + "/" + database, timeout=30.0)]
            print("| store | seats | form | path | median ms | best ms | Trio-thread CPU ms | longest loop stall ms "
                  "| bytes |")
            print("|---|---:|---|---|---:|---:|---:|---:|---:|")
            for store in stores:
                await store.open()
                for seats in sizes:
                    event = await store.create_event(make_event(seats))
                    await fill(store, event)
                    for form in forms:
                        old, new = await old_path(store, event.id, form), await new_path(store, event.id, form)
                        assert old == new, f"{store.name} {form}: the documents differ"
                        for path, fn in (("old: seats() + dicts + orjson", old_path),
                                         ("new: seat_map_json", new_path)):
                            m = await measure(partial(fn, store, event.id, form), runs)
                            print(f"| {store.name} | {seats:,} | {form} | {path} | {m['median'] * 1000:.0f} "
                                  f"| {m['best'] * 1000:.0f} | {m['trio_cpu'] * 1000:.0f} | {m['stall'] * 1000:.0f} "
                                  f"| {m['bytes']:,} |", flush=True)
                await store.close()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seats", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--forms", nargs="+", default=["api", "compat"], choices=["api", "compat"])
    args = parser.parse_args()
    trio.run(bench, args.seats, args.runs, args.forms)


if __name__ == "__main__":
    main()
