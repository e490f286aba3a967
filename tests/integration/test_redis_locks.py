"""RedisLocks against a real Redis: all-or-nothing, contention, expiry, compare-and-delete, fences.

Needs TICKETBLITZ_REDIS_URL (`eval "$(bash scripts/services.sh env)"`) and fails, never skips, without
it. Works in its own database (conftest_redis.LOCKS_DB), emptied before each test.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis
import trio
from conftest_redis import LOCKS_DB, client, redis_test_url

from ticketblitz.adapters.redis_locks import FENCE_KEY, RedisLocks, lock_key
from ticketblitz.domain.errors import Unavailable
from ticketblitz.ports import SeatLease

EVT = "evt_locks"
TTL = 5_000


@pytest.fixture
def url() -> str:
    return redis_test_url(LOCKS_DB)


@pytest.fixture
def raw(url: str) -> redis.Redis:
    return client(url)


@pytest.fixture
async def locks(url: str) -> AsyncIterator[RedisLocks]:
    adapter = RedisLocks(url, timeout=2.0)
    await adapter.open()
    yield adapter
    await adapter.close()


async def test_acquire_is_all_or_nothing(locks: RedisLocks, raw: redis.Redis) -> None:
    lease = await locks.acquire(EVT, ["A-1-2", "A-1-1"], "alice", TTL)
    assert lease is not None
    assert (lease.event_id, lease.seats, lease.owner) == (EVT, ("A-1-1", "A-1-2"), "alice")
    for seat in lease.seats:
        assert raw.get(lock_key(EVT, seat)) == lease.token
        assert 0 < raw.pttl(lock_key(EVT, seat)) <= TTL
    # one seat of the two is locked: bob gets neither, and A-1-3 stays free
    assert await locks.acquire(EVT, ["A-1-2", "A-1-3"], "bob", TTL) is None
    assert raw.exists(lock_key(EVT, "A-1-3")) == 0
    assert await locks.acquire(EVT, ["A-1-3"], "bob", TTL) is not None


async def test_locks_are_scoped_by_event(locks: RedisLocks) -> None:
    assert await locks.acquire(EVT, ["A-1-1"], "alice", TTL) is not None
    assert await locks.acquire("evt_other", ["A-1-1"], "bob", TTL) is not None


async def test_expires_at_is_now_plus_ttl(locks: RedisLocks) -> None:
    before = trio.current_time()
    lease = await locks.acquire(EVT, ["A-1-1"], "alice", 1_500)
    assert lease is not None
    assert before + 1.5 <= lease.expires_at <= trio.current_time() + 1.5


async def test_only_one_of_many_contenders_wins(locks: RedisLocks, url: str) -> None:
    other = RedisLocks(url)  # a second process
    await other.open()
    wins: list[SeatLease] = []

    async def contend(adapter: RedisLocks, owner: str) -> None:
        lease = await adapter.acquire(EVT, ["A-1-1", "A-1-2", "A-1-3"], owner, TTL)
        if lease is not None:
            wins.append(lease)

    async with trio.open_nursery() as nursery:
        for i in range(60):
            nursery.start_soon(contend, locks if i % 2 else other, f"owner-{i}")
    await other.close()
    assert len(wins) == 1


async def test_acquire_each_partitions_contended_seats(locks: RedisLocks, url: str) -> None:
    """Two processes lock the same 100 seats seat by seat at once: each seat goes to exactly one."""
    other = RedisLocks(url)
    await other.open()
    seats = [f"A-{r}-{n}" for r in range(1, 11) for n in range(1, 11)]
    got: dict[str, dict[str, SeatLease]] = {}

    async def grab(adapter: RedisLocks, owner: str, order: list[str]) -> None:
        got[owner] = await adapter.acquire_each(EVT, order, owner, TTL)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(grab, locks, "alice", seats)
        nursery.start_soon(grab, other, "bob", seats[::-1])
    await other.close()
    assert set(got["alice"]).isdisjoint(got["bob"])
    assert set(got["alice"]) | set(got["bob"]) == set(seats)


async def test_lock_lapses_after_its_ttl(locks: RedisLocks) -> None:
    assert await locks.acquire(EVT, ["A-1-1"], "alice", 200) is not None
    assert await locks.acquire(EVT, ["A-1-1"], "bob", TTL) is None
    await trio.sleep(0.3)  # real time: Redis expires the key
    assert await locks.acquire(EVT, ["A-1-1"], "bob", TTL) is not None


async def test_release_frees_the_seats(locks: RedisLocks, raw: redis.Redis) -> None:
    lease = await locks.acquire(EVT, ["A-1-1", "A-1-2"], "alice", TTL)
    assert lease is not None
    await locks.release(lease)
    assert raw.exists(lock_key(EVT, "A-1-1"), lock_key(EVT, "A-1-2")) == 0
    await locks.release(lease)  # releasing twice is harmless
    assert await locks.acquire(EVT, ["A-1-1", "A-1-2"], "bob", TTL) is not None


async def test_a_stale_lease_cannot_release_the_next_owners_lock(locks: RedisLocks, raw: redis.Redis) -> None:
    stale = await locks.acquire(EVT, ["A-1-1", "A-1-2"], "paused", 200)
    assert stale is not None
    await trio.sleep(0.3)  # the holder paused past its TTL
    fresh = await locks.acquire(EVT, ["A-1-1"], "next", TTL)
    assert fresh is not None
    await locks.release(stale)  # the paused holder wakes up and unlocks
    assert raw.get(lock_key(EVT, "A-1-1")) == fresh.token
    assert await locks.acquire(EVT, ["A-1-1"], "third", TTL) is None
    await locks.release(fresh)
    assert await locks.acquire(EVT, ["A-1-1"], "third", TTL) is not None


async def test_fences_strictly_increase_across_calls_and_processes(locks: RedisLocks, url: str) -> None:
    other = RedisLocks(url)
    await other.open()
    fences: list[int] = []
    for i in range(20):
        adapter = locks if i % 2 else other
        lease = await adapter.acquire(EVT, [f"B-1-{i + 1}"], "o", TTL)
        assert lease is not None
        fences.append(lease.fence)
        each = await adapter.acquire_each(EVT, [f"C-1-{i + 1}", f"C-2-{i + 1}"], "o", TTL)
        assert len({lease.fence for lease in each.values()}) == 1  # one INCR per call
        fences.append(next(iter(each.values())).fence)
    await other.close()
    assert fences == sorted(set(fences))
    assert int(client(url).get(FENCE_KEY) or 0) == fences[-1]


async def test_a_call_that_locks_nothing_takes_no_fence(locks: RedisLocks, raw: redis.Redis) -> None:
    assert await locks.acquire(EVT, ["A-1-1"], "alice", TTL) is not None
    before = raw.get(FENCE_KEY)
    assert await locks.acquire(EVT, ["A-1-1"], "bob", TTL) is None
    assert await locks.acquire_each(EVT, ["A-1-1"], "bob", TTL) == {}
    assert raw.get(FENCE_KEY) == before


async def test_acquire_each_returns_the_free_seats(locks: RedisLocks) -> None:
    assert await locks.acquire(EVT, ["A-1-2"], "alice", TTL) is not None
    before = trio.current_time()
    got = await locks.acquire_each(EVT, ["A-1-1", "A-1-2", "A-1-3", "A-1-1"], "bob", 1_000)
    assert set(got) == {"A-1-1", "A-1-3"}
    for seat, lease in got.items():
        assert (lease.event_id, lease.seats, lease.owner) == (EVT, (seat,), "bob")
        assert before + 1.0 <= lease.expires_at <= trio.current_time() + 1.0
    assert await locks.acquire_each(EVT, [], "bob", TTL) == {}
    # each lease frees its own seat only
    await locks.release(got["A-1-1"])
    assert set(await locks.acquire_each(EVT, ["A-1-1", "A-1-3"], "carol", TTL)) == {"A-1-1"}


async def test_release_many_is_one_round_trip(locks: RedisLocks, raw: redis.Redis) -> None:
    got = await locks.acquire_each(EVT, [f"A-1-{n}" for n in range(1, 51)], "alice", TTL)
    before = locks._link.round_trips
    await locks.release_many(got.values())
    assert locks._link.round_trips == before + 1
    assert raw.dbsize() == 1  # only the fencing counter is left


async def test_unreachable_redis_is_unavailable() -> None:
    adapter = RedisLocks("redis://127.0.0.1:1/0", timeout=0.5)  # nothing listens on port 1
    with pytest.raises(Unavailable) as caught:
        await adapter.acquire(EVT, ["A-1-1"], "alice", TTL)
    assert caught.value.component == "lock" and caught.value.status == 503
    with pytest.raises(Unavailable):
        await adapter.open()


async def test_throughput_of_256_seat_cycles(locks: RedisLocks) -> None:
    """Measured, not a benchmark gate: acquire_each of 256 seats + release, as a consumer batch does."""
    seats = [f"S{s}-{r}-{n}" for s in range(4) for r in range(1, 9) for n in range(1, 9)]
    assert len(seats) == 256
    for release_all in (True, False):
        cycles = 0
        start = time.perf_counter()
        while time.perf_counter() - start < 1.0:
            got = await locks.acquire_each(EVT, seats, "bench", TTL)
            assert len(got) == 256
            if release_all:
                await locks.release_many(got.values())
            else:
                for lease in got.values():
                    await locks.release(lease)
            cycles += 1
        rate = cycles / (time.perf_counter() - start)
        how = "release_many (1 call)" if release_all else "release per lease (256 calls)"
        print(f"\n256-seat lock cycles/s with {how}: {rate:.1f} ({rate * 256:.0f} seats/s)")
        assert cycles > 0


async def test_raise_fence_keeps_numbers_above_the_stores_after_a_loss(locks: RedisLocks, raw: redis.Redis) -> None:
    """After Redis lost the counter, the service raises it to the store's highest number."""
    raw.delete("ticketblitz:fence")
    await locks.raise_fence(1000)
    lease = await locks.acquire("evt_f", ["A-1-1"], "o", 1000)
    assert lease is not None and lease.fence > 1000
    await locks.raise_fence(10)  # never lowers it
    again = await locks.acquire_each("evt_f", ["A-1-2"], "o", 1000)
    assert again["A-1-2"].fence > lease.fence
