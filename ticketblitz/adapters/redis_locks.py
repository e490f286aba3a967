"""Distributed seat locks on Redis: `SET NX PX` with a random token, a Lua compare-and-delete unlock and
a fencing counter (`INCR ticketblitz:fence`). A lock only keeps concurrent writers off the same rows;
the store's conditional write is what keeps a seat single (a lease can lapse under a paused holder).

This module also holds `RedisLink`, the Trio-to-redis-py plumbing that `redis_admission` shares.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import TypeVar

import redis
import trio
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from ..domain.errors import Unavailable
from ..ports import SeatLease

T = TypeVar("T")

FENCE_KEY = "ticketblitz:fence"
_SCRIPTS = resources.files(__package__) / "redis_scripts"


def load_lua(*names: str) -> str:
    """The text of the named scripts of `redis_scripts/`, joined (a shared prelude first)."""
    return "\n".join((_SCRIPTS / f"{name}.lua").read_text(encoding="utf-8") for name in names)


class RedisLink:
    """A sync redis-py client used from Trio: each call is one hop to a worker thread, at most
    `max_threads` at a time, bounded in time; every failure becomes `Unavailable(component="lock")`.

    (`redis.asyncio` does not run under Trio.) A thread is never abandoned: a command Redis may have
    executed must report its result, else an admission could be recorded while the caller answers 503.
    The socket timeouts bound the thread; `fail_after` bounds the wait for a free thread.

    A reply that does not come within `timeout` (a stalled Redis or network) is Unavailable at once, never
    retried: the command may have run, so sending it again would double its wait and maybe its effect;
    the caller settles the doubt (e.g. `RedisAdmission.abandon`). Only a connection error is retried, once
    (a pooled connection Redis closed); the scripts give the same result when run twice.
    """

    def __init__(self, url: str, *, timeout: float, max_threads: int) -> None:
        self.timeout = timeout
        self.round_trips = 0  # calls made so far (tests check "one round trip per batch")
        self._limiter = trio.CapacityLimiter(max_threads)
        self.client = redis.Redis.from_url(
            url,
            max_connections=max_threads,  # the limiter lets no more threads in, so the pool never runs dry
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry replaces a pooled connection that Redis closed (e.g. after a restart);
            # the default (10 retries with backoff) would outlast every deadline of ours. Timeouts are not
            # retried (see above).
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            decode_responses=True,
        )

    def script(self, *names: str) -> Script:
        """Register the concatenated scripts: called by EVALSHA, loaded again after a Redis restart."""
        return self.client.register_script(load_lua(*names))

    async def run(self, call: Callable[[], T], what: str) -> T:
        """Run `call` (blocking redis-py work) in a worker thread; `what` names it in errors."""
        self.round_trips += 1
        try:
            with trio.fail_after(self.timeout + 1):
                return await trio.to_thread.run_sync(call, limiter=self._limiter)
        except (redis.RedisError, OSError) as exc:
            raise Unavailable(f"redis {what} failed: {exc}", component="lock") from exc
        except trio.TooSlowError:
            raise Unavailable(f"redis {what} did not answer within {self.timeout + 1:g}s", component="lock") from None

    async def ping(self) -> None:
        await self.run(self.client.ping, "PING")

    async def close(self) -> None:
        await trio.to_thread.run_sync(self.client.close)


def lock_key(event_id: str, seat: str) -> str:
    """The original's lock name, scoped by event."""
    return f"lock:seat:{event_id}:{seat}"


class RedisLocks:
    """The SeatLocks port on Redis; same semantics as `InProcessLocks`."""

    name = "redis"

    def __init__(self, url: str, *, timeout: float = 2.0, max_threads: int = 8) -> None:
        self._link = RedisLink(url, timeout=timeout, max_threads=max_threads)
        self._acquire_all = self._link.script("locks_acquire_all")
        self._acquire_each = self._link.script("locks_acquire_each")
        self._compare_and_delete = self._link.script("compare_and_delete")
        self._raise_fence = self._link.script("locks_raise_fence")

    async def open(self) -> None:
        await self._link.ping()

    async def close(self) -> None:
        await self._link.close()

    async def ping(self) -> None:
        await self._link.ping()

    async def acquire(self, event_id: str, seats: Sequence[str], owner: str, ttl_ms: int) -> SeatLease | None:
        """All the seats or none; None when another owner holds one of them."""
        seats = tuple(sorted(seats))
        token = secrets.token_hex(16)
        expires_at = trio.current_time() + ttl_ms / 1000  # taken before the call: never later than Redis's
        keys = [FENCE_KEY, *(lock_key(event_id, s) for s in seats)]
        fence = await self._link.run(lambda: self._acquire_all(keys, [token, ttl_ms]), "lock acquire")
        if not fence:
            return None
        return SeatLease(event_id, seats, owner, token, int(fence), expires_at)

    async def acquire_each(
        self, event_id: str, seats: Sequence[str], owner: str, ttl_ms: int
    ) -> dict[str, SeatLease]:
        """Lock each free seat on its own, in one round trip; the leases (one per seat, sharing this call's
        token and fencing number) of the seats that were free."""
        wanted = list(dict.fromkeys(seats))
        if not wanted:
            return {}
        token = secrets.token_hex(16)
        expires_at = trio.current_time() + ttl_ms / 1000
        keys = [FENCE_KEY, *(lock_key(event_id, s) for s in wanted)]
        reply = await self._link.run(lambda: self._acquire_each(keys, [token, ttl_ms]), "lock acquire")
        if not reply:
            return {}
        fence, *positions = (int(x) for x in reply)
        return {
            wanted[i - 1]: SeatLease(event_id, (wanted[i - 1],), owner, token, fence, expires_at) for i in positions
        }

    async def release(self, lease: SeatLease) -> None:
        """Compare-and-delete: frees the seats only while they still carry the lease's token."""
        await self.release_many([lease])

    async def raise_fence(self, floor: int) -> None:
        """New fencing numbers go above `floor` (the store's highest), even after Redis lost the counter."""
        await self._link.run(lambda: self._raise_fence(keys=[FENCE_KEY], args=[floor]), "raise fence")

    async def release_many(self, leases: Iterable[SeatLease]) -> None:
        """`release` for many leases in one round trip (e.g. the per-seat leases of `acquire_each`)."""
        keys: list[str] = []
        tokens: list[str] = []
        for lease in leases:
            for seat in lease.seats:
                keys.append(lock_key(lease.event_id, seat))
                tokens.append(lease.token)
        if keys:
            await self._link.run(lambda: self._compare_and_delete(keys, tokens), "lock release")
