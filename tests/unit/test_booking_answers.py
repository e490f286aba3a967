"""The kept booking answers' pure rules (ticketblitz/service/bookingreads.py): bounded (least recently
used out first), at most max_age old, pending never kept, dropped on a local change, and a read in flight
across a local change not kept."""

from __future__ import annotations

import orjson
import trio
import trio.testing

from ticketblitz.domain.model import Booking, BookingStatus
from ticketblitz.representation import booking_json
from ticketblitz.service.bookingreads import BookingAnswers


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def booking(i: int, status: BookingStatus = BookingStatus.HELD) -> Booking:
    return Booking(id=f"bkg_{i}", event_id="evt", user_id="u", quantity=1, seat_ids=("A-1-1",), status=status,
                   expires_at=200.0, created_at=1.0, updated_at=2.0, secret_hash=f"hash{i}")


def test_kept_answer_is_the_booking_json_and_its_secret_hash() -> None:
    answers = BookingAnswers(0.5, clock=Clock())
    b = booking(1)
    kept = answers.keep(b)
    assert kept.body == orjson.dumps(booking_json(b)) and kept.secret_hash == "hash1"
    assert answers.get("bkg_1") == kept and answers.get("bkg_2") is None
    assert (answers.hits, answers.misses) == (1, 1)


def test_bounded_least_recently_used_first_out() -> None:
    answers = BookingAnswers(0.5, max_entries=3, clock=Clock())
    for i in range(3):
        answers.keep(booking(i))
    assert answers.get("bkg_0") is not None  # now the most recently used
    answers.keep(booking(3))
    assert len(answers) == 3
    assert answers.get("bkg_1") is None
    assert all(answers.get(f"bkg_{i}") is not None for i in (0, 2, 3))
    for i in range(4, 100):
        answers.keep(booking(i))
    assert len(answers) == 3


def test_entry_older_than_max_age_is_read_again() -> None:
    clock = Clock()
    answers = BookingAnswers(0.5, clock=clock)
    answers.keep(booking(1))
    clock.now += 0.49
    assert answers.get("bkg_1") is not None
    clock.now += 0.01
    assert answers.get("bkg_1") is None and len(answers) == 0


def test_pending_is_not_kept() -> None:
    answers = BookingAnswers(0.5, clock=Clock())
    pending = booking(1, BookingStatus.PENDING)
    kept = answers.keep(pending)
    assert kept.body == orjson.dumps(booking_json(pending))  # (answered, only not kept)
    assert answers.get("bkg_1") is None and len(answers) == 0
    for status in (BookingStatus.REJECTED, BookingStatus.CONFIRMED, BookingStatus.CANCELLED, BookingStatus.EXPIRED):
        answers.keep(booking(2, status))
        assert answers.get("bkg_2") is not None


def test_local_change_drops_and_a_read_across_it_is_not_kept() -> None:
    answers = BookingAnswers(0.5, clock=Clock())
    answers.keep(booking(1))
    answers.keep(booking(2))
    answers.changed("bkg_1")
    assert answers.get("bkg_1") is None and answers.get("bkg_2") is not None
    answers.changed(["bkg_2", "bkg_9"])
    assert len(answers) == 0
    before = answers.changes
    answers.changed("bkg_other")  # a change while the store read was in flight
    answers.keep(booking(3), before)
    assert answers.get("bkg_3") is None
    answers.keep(booking(3), answers.changes)
    assert answers.get("bkg_3") is not None


async def test_concurrent_reads_share_one_load_and_a_change_starts_a_fresh_one() -> None:
    answers = BookingAnswers(0.5, clock=Clock())
    loads: list[str] = []
    release = trio.Event()
    current = {"status": BookingStatus.HELD}

    async def load(booking_id: str) -> Booking | None:
        loads.append(booking_id)
        status = current["status"]
        await release.wait()
        return booking(1, status) if booking_id == "bkg_1" else None

    got: list[bytes | None] = []

    async def reader() -> None:
        kept = await answers.read("bkg_1", load)
        got.append(kept.body if kept is not None else None)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert loads == ["bkg_1"]
        # a local change while the read is in flight: the reads after it do not join the old read
        current["status"] = BookingStatus.CONFIRMED
        answers.changed("bkg_1")
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert loads == ["bkg_1", "bkg_1"]
        release.set()
    held = orjson.dumps(booking_json(booking(1, BookingStatus.HELD)))
    confirmed = orjson.dumps(booking_json(booking(1, BookingStatus.CONFIRMED)))
    assert sorted(got, key=lambda b: b == confirmed) == [held] * 10 + [confirmed]
    kept = answers.get("bkg_1")  # the read across the change was not kept; the one after it was
    assert kept is not None and kept.body == confirmed
    assert await answers.read("bkg_2", load) is None and len(answers) == 1


async def test_a_failed_load_fails_every_reader_and_keeps_nothing() -> None:
    answers = BookingAnswers(0.5, clock=Clock())
    release = trio.Event()

    async def load(booking_id: str) -> Booking | None:
        await release.wait()
        raise RuntimeError("store down")

    failures: list[str] = []

    async def reader() -> None:
        try:
            await answers.read("bkg_1", load)
        except RuntimeError as exc:
            failures.append(str(exc))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert failures == ["store down"] * 3 and len(answers) == 0
