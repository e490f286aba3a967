"""The waiting room's state survives a restart of the server process, in both stores (SQLite embedded,
PostgreSQL distributed): every place in line, the lottery's seed, the passes issued."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import scratch_services

from ticketblitz.adapters.postgres_store import PostgresStore
from ticketblitz.adapters.sqlite_store import SqliteStore
from ticketblitz.domain.model import Event, Section, new_event_id
from ticketblitz.domain.waiting_room import TicketStatus, WaitingRoom, new_ticket_id


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_restart_keeps_every_place_in_line(kind: str, tmp_path: Path) -> None:
    if kind == "sqlite":
        await _restart(lambda: SqliteStore(tmp_path / "tb.sqlite3"))
        return
    with scratch_services() as services:
        await _restart(lambda: PostgresStore(services["database_url"]))


async def _restart(make: object) -> None:
    now = time.time()
    store = make()  # type: ignore[operator]
    await store.open()
    event = Event(id=new_event_id(), name="Durable night", sections=(Section("A", 1, 3),), created_at=now,
                  waiting_room=WaitingRoom(mode="lottery", admit_per_second=2, pass_seconds=60),
                  sale_starts_at=now + 10)
    await store.create_event(event)
    joined, _ = await store.queue_join(event.id, [(new_ticket_id(), f"u{n}", f"h{n}") for n in range(6)], now)
    tick = await store.queue_tick(event.id, now + 11)  # the draw, then a second of passes
    await store.queue_tick(event.id, now + 12)
    assert tick is not None and tick.drawn == 6
    before = {t.id: await store.queue_ticket(t.id) for t, _ in joined}
    line = await store.queue_line(event.id)
    await store.close()

    again = make()  # type: ignore[operator]
    await again.open()
    try:
        assert (await again.get_event(event.id)).waiting_room == event.waiting_room
        assert await again.queue_line(event.id) == line
        after = {t_id: await again.queue_ticket(t_id) for t_id in before}
        assert after == before
        statuses = sorted((t.position, t.status) for t, _ in after.values())  # type: ignore[union-attr]
        # the rate allowed 4 passes by then, the 3 seats only 3
        assert statuses == [(p, TicketStatus.ADMITTED) for p in range(1, 4)] + [
            (p, TicketStatus.WAITING) for p in range(4, 7)]
        repeat, _ = await again.queue_join(event.id, [(new_ticket_id(), "u0", "other")], now + 13)
        assert repeat[0][1] is False and repeat[0][0] == after[joined[0][0].id][0]  # type: ignore[index]
    finally:
        await again.close()
