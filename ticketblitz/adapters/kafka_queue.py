"""The distributed booking queue: Apache Kafka through kafka-python, driven from Trio worker threads.

Intake produces the bookings it accepted in one tick to `booking-requests` and answers `202` only once
the broker acknowledged them (acks=all, idempotent producer); every produce resolves within
`produce_timeout`, so a dead broker costs intake a quick `503`, not a stalled request. A failed produce
may still have been written (`durable_in_store` is False): the caller settles that doubt.

The wire format: one record per partition per produce, not one per booking (kafka-python's cost per
record was a large share of the server's CPU). The bookings are grouped by the partition their key
(`message_key`: the event, or event and first seat) maps to, exactly as kafka-python's DefaultPartitioner
would map it (murmur2 over the topic's partitions), so every booking lands where it did as a record of its
own: per-seat order and the spread over partitions and consumers are unchanged. Each group is one record
sent to that partition explicitly, keyed by its first booking, its value an envelope
`{"v": 2, "bookings": [<booking>, ...]}` (codec.py). A record of before envelopes (one booking object)
still decodes. Dead letters are one record per booking (or the poison record as it was read).

The consumers of the group `booking-group` take bookings, and a partition's offset is committed only
after the store decided every booking of the records before it, never past one still undecided, whatever
order the acks arrive in. A crash therefore redelivers, and the store's idempotent `decide` turns that
at-least-once delivery into an exactly-once effect. A record that does not decode (not JSON, or any
booking of its envelope invalid) goes to the dead-letter topic whole instead of blocking its partition.
Clients reconnect within RECONNECT_BACKOFF_MAX_MS of a broker's return, so producer and consumers resume
after a broker restart without a process restart.

kafka-python is blocking, so every call runs in `trio.to_thread` (one thread hop per batch, never per
booking). The producer is thread-safe; the consumer is not, so its calls take turns through a
`trio.CapacityLimiter(1)`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, NamedTuple, TypeVar

import trio
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from kafka.structs import MemberState, OffsetAndMetadata

from ..codec import booking_to_json, bookings_from_json, envelope_to_json
from ..domain.errors import Unavailable
from ..domain.model import Booking

log = logging.getLogger("ticketblitz.queue")

T = TypeVar("T")

TOPIC_PARTITIONS = 6  # partitions of a booking topic created by `open` (a fresh docker-compose setup)
DLQ_PARTITIONS = 1  # the dead-letter topic is read by people, rarely: one partition keeps it in order
POLL_MS = 200  # one poll in the worker thread; a cancelled take_batch waits at most this long
POLL_BACKOFF = 0.5  # seconds between polls while the broker fails, so a down broker is not hammered
MAX_POLL_RECORDS = 1024  # above any consumer batch; take_batch asks for exactly what it can use
# Records go out at once: intake already sends a tick's bookings as one record per partition, and 2 ms
# of linger cost 41-54 % of book-async req/s (alternated runs, bench/results/2026-12-01-issue10-profiles.md).
LINGER_MS = 0
BATCH_BYTES = 256 * 1024  # a 512-booking intake batch fits in a few record batches per partition
# An envelope above this is split in two (and so on): well under the producer's max_request_size and the
# broker's message.max.bytes (1 MiB by default). A 512-booking intake tick is about 200 KiB.
ENVELOPE_BYTES = 512 * 1024
EXPIRY_SLACK_S = 0.2  # past the produce deadline: room for the producer to report its own expiry of a record
# Reconnect attempts to a broker that went away back off up to this (kafka-python's default, 30 s, would
# leave consumers and producers idle for that long after the broker is back).
RECONNECT_BACKOFF_MAX_MS = 1000
RECYCLE_AFTER_S = 4.0  # a producer failing this long is replaced by a new one
SESSION_TIMEOUT_MS = 10_000  # a dead group member is noticed after this
HEARTBEAT_MS = 2_500
MAX_POLL_INTERVAL_MS = 60_000  # also how long a rebalance waits for the live members to rejoin
JOIN_WAIT_S = 0.5  # per poll, how long the consumer thread waits for a join under way to complete
REASON_HEADER = "reason"  # why a message is in the dead-letter topic
SOURCE_HEADER = "source"  # where it was read: topic/partition/offset


class _Message(NamedTuple):
    """One record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None  # None: the producer's partitioner picks it by the key


def message_key(booking: Booking) -> bytes:
    """The record key: by event, so that an event's bookings stay in order in one partition; a booking of
    named seats by event and first seat, so that the bookings for one seat meet in one partition."""
    if booking.requested_seats:
        return f"{booking.event_id}:{booking.requested_seats[0]}".encode()
    return booking.event_id.encode()


@lru_cache(maxsize=16384)
def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition kafka-python's DefaultPartitioner picks for `key` among the topic's `partitions`
    (sorted): murmur2 of the key, made positive, modulo their number, as the Java client does."""
    return partitions[_key_hash(key) % len(partitions)]


def group_by_partition(bookings: Iterable[Booking], partitions: Iterable[int]) -> dict[int, list[Booking]]:
    """The bookings by the partition their `message_key` goes to, each group in the bookings' order."""
    ordered = sorted(partitions)
    if not ordered:
        raise KafkaError("the topic has no partitions")
    groups: dict[int, list[Booking]] = {}
    for booking in bookings:
        groups.setdefault(partition_for(message_key(booking), ordered), []).append(booking)
    return groups


def envelopes(topic: str, bookings: Iterable[Booking], partitions: Iterable[int]) -> list[_Message]:
    """One record per partition carrying its bookings in order (several when above ENVELOPE_BYTES),
    sent to that partition explicitly and keyed by its first booking."""
    messages: list[_Message] = []

    def pack(partition: int, group: Sequence[Booking]) -> None:
        value = envelope_to_json(group)
        if len(value) > ENVELOPE_BYTES and len(group) > 1:
            half = len(group) // 2
            pack(partition, group[:half])
            pack(partition, group[half:])
            return
        messages.append(_Message(topic, message_key(group[0]), value, None, partition))

    for partition, group in group_by_partition(bookings, partitions).items():
        pack(partition, group)
    return messages


# ====================================================================== bookkeeping
@dataclass(slots=True)
class _PartitionLog:
    """The offsets taken from one partition, in order, and how far the partition may be committed."""

    taken: deque[int] = field(default_factory=deque)  # increasing: a partition is read in order
    outstanding: dict[int, int] = field(default_factory=dict)  # taken, not done: offset -> bookings left
    safe: int | None = None  # every offset below it is done: the next offset to commit
    committed: int | None = None  # what this consumer last committed

    def mark_done(self, offset: int) -> None:
        """One booking at `offset` is decided (or its poison record set aside); once none is left the
        offset is done: advance `safe` over the done prefix."""
        left = self.outstanding.get(offset)
        if left is None:
            return
        if left > 1:
            self.outstanding[offset] = left - 1
            return
        del self.outstanding[offset]
        while self.taken and self.taken[0] not in self.outstanding:
            self.safe = self.taken.popleft() + 1


class Deliveries:
    """What this consumer took and has not finished: offsets per partition, bookings by id, the bookings
    read and not yet served, those waiting for a retry, and the dead letters still owed.

    A record (an offset) carries one or more bookings. It is *done* once every one of them was decided
    (ack) or the record was set aside (dead letter); a partition may be committed up to its longest done
    prefix only. Thread-safe, because the rebalance listener runs on kafka-python's IO thread while Trio
    tasks ack and retry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[Any, _PartitionLog] = {}
        self._positions: dict[str, list[tuple[Any, int]]] = {}  # booking id -> where it was read
        self._ready: deque[tuple[Any, Booking]] = deque()  # read, beyond what the poll's caller could take
        self._parked: deque[Booking] = deque()  # retried bookings, served before new messages
        self._parked_ids: set[str] = set()
        self._owed: dict[tuple[Any, int], _Message] = {}  # poison messages not yet in the dead-letter topic

    def depth(self) -> int:
        """Bookings taken and not yet acked (those waiting for a retry included)."""
        return len(self._positions)

    def took(self, tp: Any, offset: int, bookings: Sequence[Booking] | None) -> None:
        """Record a record read at (tp, offset): its bookings, or None for a poison record."""
        with self._lock:
            partition = self._partitions.setdefault(tp, _PartitionLog())
            partition.taken.append(offset)
            partition.outstanding[offset] = len(bookings) if bookings else 1
            for booking in bookings or ():
                self._positions.setdefault(booking.id, []).append((tp, offset))

    def hold(self, tp: Any, bookings: Iterable[Booking]) -> None:
        """Keep bookings taken from `tp` to serve later, after those held before (in order)."""
        with self._lock:
            self._ready.extend((tp, b) for b in bookings)

    def owe_dead_letter(self, tp: Any, offset: int, message: _Message) -> None:
        """The poison message at (tp, offset) must reach the dead-letter topic before its offset is done."""
        with self._lock:
            self._owed[(tp, offset)] = message

    def owed_dead_letters(self) -> list[tuple[tuple[Any, int], _Message]]:
        with self._lock:
            return list(self._owed.items())

    def paid_dead_letters(self, positions: Iterable[tuple[Any, int]]) -> None:
        """These poison messages are in the dead-letter topic: their offsets are done."""
        with self._lock:
            for tp, offset in positions:
                if self._owed.pop((tp, offset), None) is not None:
                    self._partitions[tp].mark_done(offset)

    def finish(self, bookings: Iterable[Booking]) -> int:
        """Count these bookings done at every offset that carries them; how many were still tracked."""
        finished = 0
        with self._lock:
            for booking in bookings:
                positions = self._positions.pop(booking.id, None)
                if positions is None:  # acked before, or its partition was revoked
                    continue
                finished += 1
                for tp, offset in positions:
                    self._partitions[tp].mark_done(offset)
                if booking.id in self._parked_ids:  # decided elsewhere (a redelivered copy): no retry
                    self._parked_ids.discard(booking.id)
                    self._parked = deque(b for b in self._parked if b.id != booking.id)
        return finished

    def park(self, bookings: Sequence[Booking]) -> None:
        """Put tracked bookings at the head of the line, in order; their offsets stay uncommitted."""
        with self._lock:
            for booking in reversed(bookings):
                if booking.id in self._positions and booking.id not in self._parked_ids:
                    self._parked.appendleft(booking)
                    self._parked_ids.add(booking.id)

    def unpark(self, max_items: int) -> list[Booking]:
        """Up to `max_items` bookings waiting for a retry, oldest first."""
        with self._lock:
            batch: list[Booking] = []
            while self._parked and len(batch) < max_items:
                booking = self._parked.popleft()
                self._parked_ids.discard(booking.id)
                batch.append(booking)
            return batch

    def take_held(self, max_items: int) -> list[Booking]:
        """Up to `max_items` bookings read and not yet served, in order (skipping any decided meanwhile
        through a redelivered copy)."""
        with self._lock:
            batch: list[Booking] = []
            while self._ready and len(batch) < max_items:
                _, booking = self._ready.popleft()
                if booking.id in self._positions:
                    batch.append(booking)
            return batch

    def commits(self, partitions: Iterable[Any] | None = None) -> dict[Any, int]:
        """Per partition (all, or those given), the offset to commit when it moved since the last commit."""
        with self._lock:
            chosen = self._partitions if partitions is None else {
                tp: self._partitions[tp] for tp in partitions if tp in self._partitions}
            return {tp: p.safe for tp, p in chosen.items() if p.safe is not None and p.safe != p.committed}

    def committed(self, offsets: dict[Any, int]) -> None:
        """These offsets are committed (partitions revoked meanwhile are ignored)."""
        with self._lock:
            for tp, offset in offsets.items():
                if tp in self._partitions:
                    self._partitions[tp].committed = offset

    def clear(self) -> None:
        """Forget everything (the consumer closed: the group redelivers what was not committed)."""
        with self._lock:
            partitions = list(self._partitions)
        self.forget(partitions)

    def forget(self, partitions: Iterable[Any]) -> None:
        """Drop everything read from these partitions: their new owner re-reads it from the last commit."""
        gone = set(partitions)
        with self._lock:
            for tp in gone:
                self._partitions.pop(tp, None)
            for booking_id, positions in list(self._positions.items()):
                kept = [p for p in positions if p[0] not in gone]
                if kept:
                    self._positions[booking_id] = kept
                else:
                    del self._positions[booking_id]
            self._ready = deque((tp, b) for tp, b in self._ready if tp not in gone)
            self._parked = deque(b for b in self._parked if b.id in self._positions)
            self._parked_ids = {b.id for b in self._parked}
            self._owed = {pos: m for pos, m in self._owed.items() if pos[0] not in gone}


class _Rebalance(AsyncConsumerRebalanceListener):
    """Commit what is committable before partitions may go to another consumer; once the new assignment
    is known, forget what was read from the partitions that went elsewhere.

    Not at revoke time: kafka-python keeps the fetch position of a partition that is revoked and assigned
    back to the same consumer, so its in-flight bookings would never be read again. Runs on
    kafka-python's IO loop.

    The revoke-time commit is sent, not awaited: kafka-python sends the JoinGroup only once this listener
    returns, and every member of the group waits for that. The commit request goes out first on the
    coordinator's connection; its outcome comes to `_revoke_committed` (on the consumer thread, at the
    next poll or commit), and only a success marks the offsets committed. Awaiting the future that
    `commit_async` returns would also be wrong when the coordinator is unknown: it is then the
    coordinator look-up's future, resolved before the commit is even sent. A commit that fails leaves
    its offsets to be redelivered by the partition's next owner (at least once; the store is idempotent)."""

    def __init__(self, deliveries: Deliveries, consumer: Any) -> None:
        self._deliveries = deliveries
        self._consumer = consumer
        self._revoked: set[Any] = set()

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        self._revoked |= set(revoked)
        offsets = self._deliveries.commits(revoked)
        if not offsets:
            return
        try:
            self._consumer.commit_async(_commit_request(offsets), callback=partial(self._revoke_committed, offsets))
        except Exception as exc:  # never fail the rebalance: the new owner redelivers, never loses
            log.warning("commit on revoke failed, %d partitions will be redelivered: %s", len(offsets), exc)

    def _revoke_committed(self, offsets: dict[Any, int], _request: Any, outcome: Any) -> None:
        """(consumer thread) The outcome of a revoke-time commit: an exception, or the broker's answer."""
        if isinstance(outcome, BaseException):
            log.warning("commit on revoke failed, %d partitions will be redelivered: %s", len(offsets), outcome)
            return
        self._deliveries.committed(offsets)

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        gone, self._revoked = self._revoked - set(assigned), set()
        self._deliveries.forget(gone)  # their new owners re-read them from the last commit
        log.info("kafka partitions assigned: %s (gone: %s)", sorted(tp.partition for tp in assigned),
                 sorted(tp.partition for tp in gone))

    async def on_partitions_lost(self, lost: set[Any]) -> None:
        # Evicted from the group: kafka-python drops their positions, a commit would be refused, and the
        # next owner (maybe this consumer again) reads from the last commit.
        self._revoked -= set(lost)
        self._deliveries.forget(lost)
        log.warning("kafka partitions lost: %s", sorted(tp.partition for tp in lost))


def _commit_request(offsets: dict[Any, int]) -> dict[Any, Any]:
    return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}


# ====================================================================== the adapter
class KafkaQueue:
    """The `BookingQueue` port on Kafka: produce before `202`, commit after the store decided."""

    name = "kafka"
    durable_in_store = False  # a produce that failed (or timed out) may still have been written

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = "booking-requests",
        dlq_topic: str = "booking-requests-dlq",
        group: str = "booking-group",
        timeout: float = 10.0,
        produce_timeout: float = 2.0,
        consume: bool = True,
    ) -> None:
        """`timeout` bounds the consumer's and the admin's calls; `produce_timeout` every produce (enqueue,
        requeue, dead letters): acknowledged or Unavailable within about that many seconds."""
        self._bootstrap = bootstrap
        self._topic = topic
        self._dlq_topic = dlq_topic
        self._group = group
        self._timeout = timeout
        self._timeout_ms = max(int(timeout * 1000), 1000)  # kafka-python wants request > fetch wait (500 ms)
        self._produce_timeout = produce_timeout
        self._produce_timeout_ms = max(int(produce_timeout * 1000), 100)
        self._consume = consume
        self._admin: Any = None
        self._producer: Any = None
        self._producer_failing_since: float | None = None  # monotonic time of the first failure in a row
        self.producers_replaced = 0
        self._consumer: Any = None
        self._connecting = threading.Lock()  # the producer is made once, by whichever thread needs it first
        self._consumer_turn = trio.CapacityLimiter(1)  # KafkaConsumer is not thread-safe
        self._deliveries = Deliveries()
        self.produced = 0
        # (partition, offset) of the last message the broker acknowledged / the last one polled (telemetry;
        # written by the producing and consuming threads, read by Trio: a tuple is replaced whole)
        self.produced_at: tuple[int | None, int | None] = (None, None)
        self.consumed_at: tuple[int | None, int | None] = (None, None)
        self._per_record = 1.0  # bookings per record in the last poll: how many records the next asks for
        self.requeued = 0
        self.consumed = 0
        self.dead_lettered = 0

    # ------------------------------------------------------------------ lifetime
    async def open(self) -> None:
        """Reach the cluster, create the topics when missing, start the producer (and the consumer)."""
        await self._in_thread(self._connect)

    async def close(self) -> None:
        """Commit what is committable, then close the clients. Never raises: closing goes on regardless."""
        if self._consumer is not None:
            try:
                await self._in_thread(self._close_consumer, limiter=self._consumer_turn)
            except Unavailable as exc:
                log.warning("kafka consumer closed uncleanly (redelivery follows): %s", exc.detail)
        producer, admin = self._producer, self._admin
        self._producer = self._admin = None
        for client in (producer, admin):
            if client is not None:
                try:
                    await self._in_thread(partial(_close_client, client, self._timeout))
                except Unavailable as exc:
                    log.warning("kafka client closed uncleanly: %s", exc.detail)

    async def ping(self) -> None:
        """Raise Unavailable unless the broker answers a metadata request now."""
        admin = self._admin
        if admin is None:
            raise Unavailable("the kafka queue is not open", component="queue")
        # The admin client does its IO on its own thread, so an abandoned call leaves nothing half-done.
        await self._in_thread(admin.describe_cluster, abandon=True)

    def depth(self) -> int:
        """Bookings taken and not yet acked, those waiting for a retry included (local to this process)."""
        return self._deliveries.depth()

    async def lag(self) -> int:
        """Records (of one or more bookings) not yet committed on the partitions assigned here (end offset -
        committed); approximate."""
        if self._consumer is None:
            return 0
        return await self._in_thread(self._measure_lag, limiter=self._consumer_turn)

    async def assignment(self) -> set[int]:
        """The partitions of the topic this consumer owns now."""
        if self._consumer is None:
            return set()
        return await self._in_thread(self._assigned_partitions, limiter=self._consumer_turn)

    # ------------------------------------------------------------------ intake
    async def enqueue(self, bookings: Sequence[Booking]) -> list[Booking | None]:
        """Produce the bookings and return once the broker acknowledged every one, else Unavailable
        (within about `produce_timeout`; some of them may have been written all the same)."""
        if not bookings:
            return []
        await self._produce(bookings)
        self.produced += len(bookings)
        return [None] * len(bookings)

    async def requeue(self, bookings: Sequence[Booking]) -> None:
        """Produce these accepted, undecided bookings again (a duplicate is harmless: deciding is
        idempotent); Unavailable, within about `produce_timeout`, when the broker did not acknowledge."""
        if not bookings:
            return
        await self._produce(bookings)
        self.requeued += len(bookings)

    async def _produce(self, bookings: Sequence[Booking]) -> None:
        # Not abandoned on cancel: the thread's answer is the only way to know whether they were written.
        await self._in_thread(partial(self._send_bookings, bookings))

    # ------------------------------------------------------------------ consumers
    async def take_batch(self, max_items: int) -> list[Booking]:
        """Bookings to decide: those waiting for a retry first, else the next ones read (waits for one).

        Broker trouble is logged and waited out here, never raised: the consumer tasks have nothing
        better to do than to wait for the broker."""
        while True:
            parked = self._deliveries.unpark(max_items)
            if parked:
                return parked
            if self._consumer is None:  # an intake-only process (or closed): nothing will ever come
                await trio.sleep_forever()
            try:
                taken = await self._in_thread(partial(self._poll, max_items), limiter=self._consumer_turn)
            except Unavailable as exc:
                log.warning("kafka poll failed, trying again: %s", exc.detail)
                await trio.sleep(POLL_BACKOFF)
                continue
            if taken:
                return taken

    async def ack(self, bookings: Sequence[Booking]) -> None:
        """The store decided these bookings: their offsets are done; commit what became committable."""
        self.consumed += self._deliveries.finish(bookings)
        await self._commit_done()

    async def retry(self, bookings: Sequence[Booking]) -> None:
        """Serve these bookings again at the next take_batch; their offsets stay uncommitted meanwhile."""
        self._deliveries.park(bookings)

    async def dead_letter(self, bookings: Sequence[Booking], reason: str) -> None:
        """Publish bookings that cannot be decided to the dead-letter topic, then ack them. When the
        dead-letter topic cannot be written they are kept for a retry instead: never dropped."""
        if not bookings:
            return
        messages = [self._dead_letter_message(message_key(b), booking_to_json(b), reason, None) for b in bookings]
        try:
            await self._in_thread(partial(self._send_all, messages))
        except Unavailable as exc:
            log.error("could not dead-letter %d bookings, keeping them queued: %s", len(bookings), exc.detail)
            self._deliveries.park(bookings)
            return
        for booking in bookings:
            log.error("booking %s dead-lettered: %s", booking.id, reason)
        self.dead_lettered += len(bookings)
        self._deliveries.finish(bookings)
        await self._commit_done()

    async def _commit_done(self) -> None:
        """Commit what is committable. A failure is only logged: the offsets stay done here and go out
        with the next commit, and until then a crash merely redelivers decided bookings."""
        if self._consumer is None:
            return
        try:
            await self._in_thread(self._commit_committable, limiter=self._consumer_turn)
        except Unavailable as exc:
            log.warning("kafka offset commit failed, will retry with the next ack: %s", exc.detail)

    # ------------------------------------------------------------------ the worker-thread side
    async def _in_thread(
        self, call: Callable[[], T], *, limiter: trio.CapacityLimiter | None = None, abandon: bool = False
    ) -> T:
        """Run a blocking kafka-python call in a worker thread; a broker failure becomes Unavailable.

        The deadline bounds the wait for the consumer's turn; a call that is not abandoned is bounded by
        kafka-python's own timeouts, set from `timeout`."""
        try:
            with trio.fail_after(self._timeout + 1):
                return await trio.to_thread.run_sync(call, limiter=limiter, abandon_on_cancel=abandon)
        except (KafkaError, OSError, trio.TooSlowError) as exc:
            raise Unavailable(f"kafka: {type(exc).__name__}: {exc}", component="queue") from exc

    def _connect(self) -> None:
        """(thread) Reach the cluster, make sure the topics exist, start the clients."""
        try:
            self._admin = KafkaAdminClient(**self._client_config("admin"))
            self._ensure_topics()
            self._producer_now()
            if self._consume:
                self._consumer = self._new_consumer()
        except BaseException:
            for client in (self._consumer, self._producer, self._admin):
                if client is not None:
                    _close_client(client, 0)
            self._admin = self._producer = self._consumer = None
            raise

    def _client_config(self, role: str) -> dict[str, Any]:
        return {
            "bootstrap_servers": self._bootstrap,
            "client_id": f"ticketblitz-{role}-{os.getpid()}",
            "bootstrap_timeout_ms": self._timeout_ms,
            "request_timeout_ms": self._timeout_ms,
            "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        }

    def _ensure_topics(self) -> None:
        """(thread) Create the booking topic and its dead-letter topic when missing (fresh setups)."""
        wanted = {self._topic: TOPIC_PARTITIONS, self._dlq_topic: DLQ_PARTITIONS}
        existing = set(self._admin.list_topics())
        missing = {name: {"num_partitions": n, "replication_factor": -1}  # -1: the broker's default
                   for name, n in wanted.items() if name not in existing}
        if not missing:
            return
        log.info("creating kafka topics %s", sorted(missing))
        try:
            self._admin.create_topics(missing, timeout_ms=self._timeout_ms, wait_for_metadata=True)
        except TopicAlreadyExistsError:  # another process created them first
            pass

    def _producer_now(self, deadline: float | None = None) -> Any:
        """(thread) The producer, made on first use: acks=all and idempotent, so a retried send is never
        written twice; its timeouts make every record resolve within `produce_timeout`. Waiting for
        another thread that makes it ends at `deadline` (monotonic) with KafkaTimeoutError."""
        producer = self._producer
        if producer is not None:
            return producer
        wait = -1.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not self._connecting.acquire(timeout=wait):
            raise KafkaTimeoutError("the kafka producer is still being made by another call")
        try:
            if self._producer is None:
                limit = self._produce_timeout_ms
                self._producer = KafkaProducer(
                    # delivery_timeout_ms must be >= linger_ms + request_timeout_ms
                    **{**self._client_config("producer"), "bootstrap_timeout_ms": limit,
                       "request_timeout_ms": limit - LINGER_MS},
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=LINGER_MS,
                    batch_size=BATCH_BYTES,
                    max_block_ms=limit,  # waiting for metadata or buffer space
                    delivery_timeout_ms=limit,  # a record's whole life, retries included
                )
            return self._producer
        finally:
            self._connecting.release()

    def _new_consumer(self) -> Any:
        """(thread) A consumer of the group, committing by hand, subscribed with the rebalance listener."""
        consumer = KafkaConsumer(
            **self._client_config("consumer"),
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS,
            # a consumer that died (kill -9) gives its partitions to the others within this, not after
            # kafka-python's default 45 s (its bookings must be decided within API.md's 30 s)
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_MS,
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        )
        # Know the topic's partitions before joining the group: an assignment made while the metadata
        # lacks them gives this consumer nothing until the next metadata refresh (minutes).
        deadline = time.monotonic() + self._timeout
        while not consumer.partitions_for_topic(self._topic):
            if time.monotonic() > deadline:
                _close_client(consumer, 0)
                raise KafkaError(f"topic {self._topic} has no partitions known to the consumer")
            time.sleep(0.1)
        consumer.subscribe(topics=[self._topic], listener=_Rebalance(self._deliveries, consumer))
        return consumer

    def _send_bookings(self, bookings: Sequence[Booking]) -> None:
        """(thread) Produce the bookings as envelopes, one record per partition of the booking topic (its
        partitions from the producer's metadata); raise as `_send_all`."""
        self._send(lambda producer: envelopes(self._topic, bookings, producer.partitions_for(self._topic)))

    def _send_all(self, messages: Sequence[_Message]) -> None:
        """(thread) Send, and raise unless the broker acknowledged every message within `produce_timeout`
        (KafkaTimeoutError when some are still unresolved then: they may be written or not)."""
        self._send(lambda _: messages)

    def _send(self, make: Callable[[Any], Sequence[_Message]]) -> None:
        """(thread) Send the messages `make(producer)` gives, as `_send_all`."""
        deadline = time.monotonic() + self._produce_timeout
        producer = self._producer_now(deadline)
        if time.monotonic() >= deadline:  # making the producer took it all (a broker that went away)
            raise KafkaTimeoutError(f"no kafka producer within {self._produce_timeout:g}s")
        # A send blocks (max_block_ms) only while the topic's metadata is unknown; the first one that
        # gives up raises, so the whole loop stays within about the deadline.
        try:
            futures = [producer.send(m.topic, value=m.value, key=m.key, headers=m.headers, partition=m.partition)
                       for m in make(producer)]
            # They go out at once (LINGER_MS); records the broker does not acknowledge expire by the producer's
            # delivery timeout (the same deadline). Wait for these records only (a flush would wait for
            # other threads' later records too, one timeout per record batch), until the deadline.
            metadata = None
            for future in futures:
                metadata = future.get(timeout=max(deadline - time.monotonic(), 0.0) + EXPIRY_SLACK_S)
            if metadata is not None:
                self.produced_at = (metadata.partition, metadata.offset)
        except (KafkaError, OSError):
            self._producer_failed(producer)
            raise
        self._producer_failing_since = None

    def _producer_failed(self, producer: Any) -> None:
        """(thread) A produce failed. One that keeps failing for RECYCLE_AFTER_S is replaced by a new
        producer: after a broker's kill -9 and restart, kafka-python's idempotent producer can stay
        wedged on its old producer id and metadata, while a fresh one bootstraps and works at once."""
        now = time.monotonic()
        since = self._producer_failing_since
        if since is None:
            self._producer_failing_since = now
            return
        if now - since < RECYCLE_AFTER_S:
            return
        with self._connecting:
            if self._producer is not producer:
                return  # another thread replaced it already
            self._producer = None
            self._producer_failing_since = None
        log.warning("kafka producer failing for %.1fs: replacing it", now - since)
        self.producers_replaced += 1
        _close_client(producer, 0)  # its records failed already (their callers heard Unavailable)

    def _poll(self, max_items: int) -> list[Booking]:
        """(consumer thread) Poll once; track and decode what came. Poison goes to the dead-letter topic."""
        consumer = self._consumer
        if consumer is None:  # closed while this call waited for its turn
            return []
        # Bookings read by an earlier poll first, topped up by what is there now (without waiting).
        taken = self._deliveries.take_held(max_items)
        if len(taken) >= max_items:
            return taken
        # A record carries several bookings: ask for about as many records as make the rest.
        want = math.ceil((max_items - len(taken)) / self._per_record)
        records = consumer.poll(timeout_ms=0 if taken else POLL_MS, max_records=max(1, want))
        self._complete_join(consumer)
        count = 0
        for tp, batch in records.items():
            for record in batch:
                bookings = self._decode(tp, record)
                if bookings is None:
                    continue
                count += len(bookings)
                self.consumed_at = (tp.partition, record.offset)
                room = max_items - len(taken)
                taken.extend(bookings[:room])
                if len(bookings) > room:  # served by the next take_batch, before anything polled then
                    self._deliveries.hold(tp, bookings[room:])
        if records:
            self._per_record = max(1.0, count / sum(map(len, records.values())))
        self._pay_dead_letters()
        self._commit_left_over()
        return taken

    def _complete_join(self, consumer: Any) -> None:
        """(consumer thread) Finish a rejoin of the group that a poll left under way, waiting at most
        JOIN_WAIT_S for it.

        kafka-python 3.0.12 completes a join (state STABLE, heartbeats back on, the new assignment) only
        in a poll still waiting when its JoinGroup/SyncGroup round trip ends (coordinator/base.py
        join_group_async). A poll that gives up first leaves the round trip running; the next poll
        sends a new JoinGroup if it has ended meanwhile, and never finishes it at all when this member
        is the leader and rejoined only because the metadata changed: its own assignment clears that
        reason, so need_rejoin() is False and the finished join is never applied. The member then stays
        rebalancing, refuses every commit (RebalanceInProgressError) and sends no heartbeat, until the
        group evicts it after SESSION_TIMEOUT_MS (CI: a lone consumer stalled 60 s, its LeaveGroup
        refused with UnknownMemberIdError). So while the member is rebalancing it asks to rejoin (a
        no-op for a join under way, which is awaited, not sent again) and waits in the coordinator's
        poll, which fetches nothing."""
        coordinator = getattr(consumer, "_coordinator", None)
        if coordinator is None:
            return
        deadline = time.monotonic() + JOIN_WAIT_S
        while consumer.group_metadata().state == MemberState.REBALANCING:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not coordinator.need_rejoin():
                coordinator.request_rejoin()
            coordinator.poll(timeout_ms=max(1, int(left * 1000)))

    def _commit_left_over(self) -> None:
        """(consumer thread) Done offsets whose commit failed (a rebalance in progress, the broker away) go
        out with the next poll, instead of waiting for an ack that may never come. A failure is left for
        the poll after."""
        if not self._deliveries.commits():
            return
        try:
            self._commit_committable()
        except (KafkaError, OSError) as exc:
            log.info("kafka offset commit still failing, retried at the next poll: %s", exc)

    def _decode(self, tp: Any, record: Any) -> list[Booking] | None:
        """(consumer thread) The record's bookings (an envelope, or one booking as written before
        envelopes), tracked; None for poison (owed to the dead-letter topic), also when any booking of an
        envelope is invalid: the record is set aside whole."""
        try:
            bookings = bookings_from_json(record.value or b"")
        except ValueError as exc:
            log.error("poison message at %s/%d/%d: %s", tp.topic, tp.partition, record.offset, exc)
            self._deliveries.took(tp, record.offset, None)
            source = f"{tp.topic}/{tp.partition}/{record.offset}"
            message = self._dead_letter_message(record.key, record.value, str(exc), source, record.headers)
            self._deliveries.owe_dead_letter(tp, record.offset, message)
            return None
        self._deliveries.took(tp, record.offset, bookings)
        return bookings

    def _dead_letter_message(
        self, key: bytes | None, value: bytes | None, reason: str, source: str | None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> _Message:
        """The original key, value and headers, plus why (and where from) it was set aside."""
        extra = [(REASON_HEADER, reason.encode())]
        if source is not None:
            extra.append((SOURCE_HEADER, source.encode()))
        return _Message(self._dlq_topic, key, value, [*(headers or ()), *extra])

    def _pay_dead_letters(self) -> None:
        """(consumer thread) Publish the poison messages still owed; once written their offsets are done.
        A failure is logged and tried again at the next poll: the offsets stay uncommitted meanwhile."""
        owed = self._deliveries.owed_dead_letters()
        if not owed:
            return
        try:
            self._send_all([message for _, message in owed])
        except (KafkaError, OSError) as exc:
            log.error("could not publish %d poison messages to %s, will retry: %s", len(owed), self._dlq_topic, exc)
            return
        self.dead_lettered += len(owed)
        self._deliveries.paid_dead_letters(position for position, _ in owed)
        self._commit_committable()

    def _commit_committable(self) -> None:
        """(consumer thread) Commit each partition up to its longest done prefix, synchronously."""
        consumer = self._consumer
        offsets = self._deliveries.commits()
        if consumer is None or not offsets:
            return
        consumer.commit(_commit_request(offsets), timeout_ms=self._timeout_ms)
        self._deliveries.committed(offsets)

    def _close_consumer(self) -> None:
        """(consumer thread) Commit what is committable, leave the group, close."""
        consumer = self._consumer
        try:
            self._commit_committable()
        except (KafkaError, OSError) as exc:
            log.warning("final kafka offset commit failed (redelivery follows): %s", exc)
        finally:
            self._consumer = None
            _close_client(consumer, self._timeout)
            self._deliveries.clear()

    def _assigned_partitions(self) -> set[int]:
        """(consumer thread) The partition numbers assigned now."""
        consumer = self._consumer
        return {tp.partition for tp in consumer.assignment()} if consumer is not None else set()

    def _measure_lag(self) -> int:
        """(consumer thread) Sum over the assigned partitions of end offset - committed offset."""
        consumer = self._consumer
        partitions = list(consumer.assignment()) if consumer is not None else []
        if not partitions:
            return 0
        ends = consumer.end_offsets(partitions, timeout_ms=self._timeout_ms)
        lag = 0
        for tp in partitions:
            committed = consumer.committed(tp, timeout_ms=self._timeout_ms)
            if committed is None:  # nothing committed yet: the group starts from the earliest offset
                committed = consumer.beginning_offsets([tp], timeout_ms=self._timeout_ms)[tp]
            lag += max(0, ends.get(tp, committed) - committed)
        return lag


def _close_client(client: Any, timeout: float) -> None:
    """Close a kafka-python client within about `timeout` seconds, swallowing what closing raises."""
    try:
        if isinstance(client, KafkaProducer):
            client.close(timeout=timeout)
        elif isinstance(client, KafkaConsumer):
            client.close(autocommit=False, timeout_ms=max(int(timeout * 1000), 1))
        else:
            client.close()
    except (KafkaError, OSError) as exc:
        log.warning("closing %s failed: %s", type(client).__name__, exc)


__all__ = ["Deliveries", "KafkaQueue", "envelopes", "group_by_partition", "message_key", "partition_for"]
