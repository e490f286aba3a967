"""The cross-process relay of the telemetry hub, on Redis pub/sub (distributed mode).

Every process publishes its flushed ticks (admin form, as one `batch` message) and its own stats once a
second on the channel `tb:telemetry` (`tb:telemetry:<db>` when the Redis URL names a database other than
0: Redis channels ignore database numbers, and two deployments sharing a server must not mix), and the
seats it sold on `seat-updates` (held and available are published there by the edge's own scripts, in the
same form). Each process hears the others and hands their messages to its hub.

Like the other Redis adapters this uses the sync redis-py client from Trio: publishing in a worker thread
fed by a bounded memory channel (the hub never waits: a full channel drops and counts), listening in a
thread that hands each message to the hub through `trio.from_thread`. Redis going away is logged once
and waited out with back-off; both stop with the hub's nursery (the listener within 0.2 s).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import orjson
import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from .rules import Frame

log = logging.getLogger("ticketblitz.telemetry.relay")

CHANNEL = "tb:telemetry"
SEAT_UPDATES = "seat-updates"
OUTBOX = 64  # messages waiting to be published (about 6 s of ticks)
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 5.0
LISTEN_POLL = 0.2  # seconds the listener waits for a message before checking whether to stop


def channel_for(url: str) -> str:
    """The telemetry channel of the deployment whose Redis URL this is."""
    db = redis.Redis.from_url(url).connection_pool.connection_kwargs.get("db", 0)
    return CHANNEL if int(db or 0) == 0 else f"{CHANNEL}:{db}"


class RedisRelay:
    """Publishes this process's telemetry and hands the other processes' to the hub."""

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self.channel = channel_for(url)
        self.timeout = timeout
        kwargs: dict[str, Any] = dict(socket_timeout=timeout, socket_connect_timeout=timeout,
                                      retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
        self._publisher = redis.Redis.from_url(url, max_connections=1, **kwargs)
        self._listener = redis.Redis.from_url(url, health_check_interval=5, **kwargs)
        self._send, self._recv = trio.open_memory_channel[tuple[str, bytes]](OUTBOX)
        self.published = 0
        self.dropped = 0  # messages not published: the outbox was full, or Redis was away
        self.received = 0
        self._publish_limiter = trio.CapacityLimiter(1)
        self._listen_limiter = trio.CapacityLimiter(1)

    # ------------------------------------------------------------------ from the hub (never waits)
    def _offer(self, channel: str, payload: bytes) -> None:
        try:
            self._send.send_nowait((channel, payload))
        except trio.WouldBlock:
            self.dropped += 1

    def send_tick(self, process: str, ts: str, frames: list[Frame]) -> None:
        self._offer(self.channel, orjson.dumps({"type": "batch", "ts": ts, "process": process, "frames": frames}))
        for frame in frames:
            if frame["type"] == "seat" and frame["status"] == "sold":
                self._offer(SEAT_UPDATES, orjson.dumps(
                    {"event_id": frame["event_id"], "seats": frame["seats"], "status": "sold"}))

    def send_stats(self, stats: Frame) -> None:
        self._offer(self.channel, orjson.dumps(stats))

    # ------------------------------------------------------------------ the tasks
    async def run(self, hub: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish and listen until cancelled; the connections close once both threads have returned."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._publish_loop, name="telemetry-relay-publish")
                nursery.start_soon(self._listen, hub.receive, name="telemetry-relay-listen")
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close)

    async def _publish_loop(self) -> None:
        down = False
        backoff = BACKOFF_FIRST
        async for first in self._recv:
            batch = [first]
            while True:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await trio.to_thread.run_sync(self._publish_all, batch, limiter=self._publish_limiter)
            except (redis.RedisError, OSError) as exc:
                self.dropped += len(batch)
                if not down:
                    log.warning("telemetry relay: publishing to Redis failed (%s); other processes miss this "
                                "one's telemetry until it is back (retrying with back-off)", exc)
                    down = True
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                while True:  # what waited meanwhile is stale: the next tick says what is true now
                    try:
                        self._recv.receive_nowait()
                        self.dropped += 1
                    except trio.WouldBlock:
                        break
                continue
            self.published += len(batch)
            if down:
                log.info("telemetry relay: publishing to Redis again")
                down, backoff = False, BACKOFF_FIRST

    def _publish_all(self, batch: list[tuple[str, bytes]]) -> None:
        """(thread) One round trip for what waited."""
        pipe = self._publisher.pipeline(transaction=False)
        for channel, payload in batch:
            pipe.publish(channel, payload)
        pipe.execute()

    async def _listen(self, deliver: Callable[[Frame], None]) -> None:
        stop = threading.Event()
        async with trio.open_nursery() as nursery:

            async def stop_with_nursery() -> None:
                try:
                    await trio.sleep_forever()
                finally:
                    stop.set()  # the thread sees it within LISTEN_POLL and returns

            nursery.start_soon(stop_with_nursery)
            await trio.to_thread.run_sync(self._listen_thread, stop, deliver, limiter=self._listen_limiter)
            nursery.cancel_scope.cancel()

    def _listen_thread(self, stop: threading.Event, deliver: Callable[[Frame], None]) -> None:
        """(thread) Subscribe, hand each message to the hub; reconnect with back-off until `stop`."""
        down = False
        backoff = BACKOFF_FIRST
        while not stop.is_set():
            pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                if down:
                    log.info("telemetry relay: listening to Redis again")
                    down, backoff = False, BACKOFF_FIRST
                while not stop.is_set():
                    message = pubsub.get_message(timeout=LISTEN_POLL)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        frame = orjson.loads(message["data"])
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(frame, dict):
                        self.received += 1
                        try:
                            trio.from_thread.run_sync(deliver, frame)
                        except trio.RunFinishedError:
                            return
            except (redis.RedisError, OSError) as exc:
                if not down:
                    log.warning("telemetry relay: listening to Redis failed (%s); this process shows only its "
                                "own telemetry until it is back (retrying with back-off)", exc)
                    down = True
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    pass

    def _close(self) -> None:
        """(thread) Close both clients' connections."""
        for client in (self._publisher, self._listener):
            try:
                client.close()
            except (redis.RedisError, OSError):
                pass
