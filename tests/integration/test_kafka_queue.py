"""The Kafka booking queue against a real broker (`TICKETBLITZ_KAFKA_BOOTSTRAP`; no mocks, no skips).

The module creates its own topics (`tbtest-<hex>`, 3 partitions, and its `-dlq`) and deletes them at the
end; each test uses its own consumer group, started at the current end of the topic, so that tests never
read each other's messages nor disturb the application's `booking-requests` / `booking-group`.

The shared broker is never stopped: a broker that dies and comes back is played by a TCP proxy in front
of it (tcp_proxy.py) that resets every connection and refuses new ones, then listens again. The proxy
rewrites the broker's address in metadata replies, so that the clients keep talking through it.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
import pytest
import trio
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import OffsetSpec
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from tcp_proxy import TcpProxy, advertise

from ticketblitz.adapters.kafka_queue import HEARTBEAT_MS, KafkaQueue, message_key, partition_for
from ticketblitz.codec import booking_from_json, booking_to_json, bookings_from_json, envelope_to_json
from ticketblitz.domain.errors import Unavailable
from ticketblitz.domain.model import Booking, new_booking_id

BOOTSTRAP_ENV = "TICKETBLITZ_KAFKA_BOOTSTRAP"
PARTITIONS = 3
TIMEOUT = 5.0  # the queue's broker timeout in these tests
PRODUCE_TIMEOUT = 2.0  # the queue's produce deadline in these tests (the default)
UNREACHABLE = "127.0.0.1:1"

OpenQueue = Callable[..., Awaitable[KafkaQueue]]


# ====================================================================== the broker side
@dataclass
class KafkaTopics:
    """This module's topics, and blocking look-ups of the broker's view of them (run them in a thread)."""

    bootstrap: str
    topic: str
    dlq: str
    admin: Any
    groups: list[str] = field(default_factory=list)  # made by new_group, deleted with the topics

    def end_offsets(self, topic: str | None = None) -> dict[int, int]:
        """Partition -> offset of the next message."""
        topic = topic or self.topic
        count = PARTITIONS if topic == self.topic else 1
        specs = {TopicPartition(topic, p): OffsetSpec.LATEST for p in range(count)}
        return {tp.partition: o.offset for tp, o in self.admin.list_partition_offsets(specs).items()}

    def committed(self, group: str) -> dict[int, int]:
        """Partition -> the group's committed offset on the booking topic."""
        offsets = self.admin.list_group_offsets({group: None}).get(group, {})
        return {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == self.topic}

    def new_group(self) -> str:
        """A consumer group of its own, committed at the topic's current end: it sees only new messages."""
        group = f"tbtest-group-{secrets.token_hex(4)}"
        ends = self.end_offsets()
        self.admin.alter_group_offsets(
            group, {TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in ends.items()})
        self.groups.append(group)
        return group

    def read(self, topic: str, start: dict[int, int], count: int, timeout: float = 15.0) -> list[Any]:
        """`count` raw records of `topic` from the offsets `start`, outside any group."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            partitions = [TopicPartition(topic, p) for p in start]
            consumer.assign(partitions)
            for tp in partitions:
                consumer.seek(tp, start[tp.partition])
            records: list[Any] = []
            deadline = time.monotonic() + timeout
            while len(records) < count and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend(batch)
            return records
        finally:
            consumer.close(autocommit=False)

    def produce_raw(self, messages: list[tuple[bytes, bytes]], partition: int) -> None:
        """Write (key, value) pairs to one partition of the booking topic, bypassing the queue."""
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        try:
            for key, value in messages:
                producer.send(self.topic, key=key, value=value, partition=partition)
            producer.flush(timeout=10)
        finally:
            producer.close(timeout=5)


async def in_thread(call: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(partial(call, *args))


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaTopics]:
    bootstrap = os.environ.get(BOOTSTRAP_ENV)
    if not bootstrap:
        pytest.fail(f"{BOOTSTRAP_ENV} is not set: eval \"$(bash scripts/services.sh env)\" first")
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=10_000, request_timeout_ms=10_000)
    except KafkaError as exc:
        pytest.fail(f"Kafka at {bootstrap} is unreachable ({exc}): bash scripts/services.sh up")
    topic = f"tbtest-{secrets.token_hex(4)}"
    dlq = f"{topic}-dlq"
    admin.create_topics({topic: {"num_partitions": PARTITIONS, "replication_factor": -1},
                         dlq: {"num_partitions": 1, "replication_factor": -1}}, wait_for_metadata=True)
    topics = KafkaTopics(bootstrap, topic, dlq, admin)
    try:
        yield topics
    finally:
        admin.delete_topics([topic, dlq])
        if topics.groups:
            admin.delete_groups(topics.groups)
        admin.close()


@pytest.fixture
async def group(kafka: KafkaTopics) -> str:
    return str(await in_thread(kafka.new_group))


@pytest.fixture
async def open_queue(kafka: KafkaTopics) -> AsyncIterator[OpenQueue]:
    """Opens KafkaQueues on this module's topics; closes them after the test."""
    opened: list[KafkaQueue] = []

    async def open_queue(group: str, **options: Any) -> KafkaQueue:
        queue = KafkaQueue(kafka.bootstrap, topic=kafka.topic, dlq_topic=kafka.dlq, group=group,
                           timeout=TIMEOUT, produce_timeout=PRODUCE_TIMEOUT, **options)
        await queue.open()
        opened.append(queue)
        return queue

    yield open_queue
    for queue in opened:
        await queue.close()


# ====================================================================== helpers
def booking(event_id: str, n: int, seat: str | None = None) -> Booking:
    now = time.time()
    return Booking(id=new_booking_id(), event_id=event_id, user_id=f"user-{n}", quantity=1,
                   requested_seats=(seat,) if seat else (), created_at=now, updated_at=now,
                   idempotency_key=f"key-{n}", fingerprint=f"fp-{n}", secret_hash=f"{n:064x}")


def bookings_of(event_id: str, count: int) -> list[Booking]:
    return [booking(event_id, n) for n in range(count)]


async def take(queue: KafkaQueue, count: int, *, batch: int = 128, ack: bool = True,
               within: float = 30.0) -> list[Booking]:
    """Take `count` bookings (acking each batch unless told not to), in the order they came."""
    taken: list[Booking] = []
    with trio.fail_after(within):
        while len(taken) < count:
            got = await queue.take_batch(min(batch, count - len(taken)))
            if ack:
                await queue.ack(got)
            taken.extend(got)
    return taken


async def nothing_more(queue: KafkaQueue, wait: float = 1.0) -> bool:
    """True when take_batch finds nothing within `wait` seconds."""
    with trio.move_on_after(wait):
        await queue.take_batch(10)
        return False
    return True


def by_booking(records: list[Any]) -> dict[str, tuple[Any, int]]:
    """Booking id -> (the record carrying it, its place in the record's envelope)."""
    return {b.id: (r, n) for r in records for n, b in enumerate(bookings_from_json(r.value))}


async def grown_partition(kafka: KafkaTopics, before: dict[int, int]) -> tuple[int, int]:
    """The one partition that grew since `before`, and its offset then."""
    after = await in_thread(kafka.end_offsets)
    grown = [p for p in after if after[p] != before[p]]
    assert len(grown) == 1, (before, after)
    return grown[0], before[grown[0]]


# ====================================================================== produce and consume
async def test_round_trip_of_500_bookings(kafka: KafkaTopics, group: str, open_queue: OpenQueue) -> None:
    queue = await open_queue(group)
    sent = [booking(f"evt_rt{n % 7}", n, seat=f"A-1-{n}" if n % 3 == 0 else None) for n in range(1, 501)]

    assert await queue.enqueue(sent) == [None] * 500

    taken = await take(queue, 500, batch=97)
    assert sorted(taken, key=lambda b: b.id) == sorted(sent, key=lambda b: b.id)
    assert queue.depth() == 0
    assert await nothing_more(queue)
    assert await in_thread(kafka.committed, group) == await in_thread(kafka.end_offsets)


async def test_the_producer_is_idempotent_on_this_broker(kafka: KafkaTopics, group: str,
                                                         open_queue: OpenQueue) -> None:
    queue = await open_queue(group, consume=False)
    before = await in_thread(kafka.end_offsets)
    for one in bookings_of("evt_idem", 5):  # five records: sequence numbers 0..4
        await queue.enqueue([one])
    partition, _ = await grown_partition(kafka, before)

    tp = TopicPartition(kafka.topic, partition)
    states = await in_thread(kafka.admin.describe_producers, [tp])
    # The broker keeps sequence state only for producers that got a producer id (InitProducerId).
    producers = states[tp].active_producers
    assert producers and all(p.producer_id >= 0 for p in producers)
    assert any(p.last_sequence >= 4 for p in producers)  # ours (earlier tests' producers wrote fewer here)


async def test_keys_keep_an_event_in_one_partition(kafka: KafkaTopics, group: str, open_queue: OpenQueue) -> None:
    queue = await open_queue(group, consume=False)
    events = [f"evt_aff{n}" for n in range(6)]
    sent = [booking(event, n) for n in range(20) for event in events]
    named = [booking("evt_named", n, seat=f"B-2-{n}") for n in range(1, 11)]
    before = await in_thread(kafka.end_offsets)

    await queue.enqueue(sent + named)

    after = await in_thread(kafka.end_offsets)
    records = await in_thread(kafka.read, kafka.topic, before, sum(after[p] - before[p] for p in after))
    assert len(records) == len({r.partition for r in records}), "one record per partition per enqueue"
    by_id = by_booking(records)
    assert set(by_id) == {b.id for b in sent + named}
    for event in events:
        ours = [b for b in sent if b.event_id == event]
        assert len({by_id[b.id][0].partition for b in ours}) == 1, event
        places = [(by_id[b.id][0].offset, by_id[b.id][1]) for b in ours]
        assert places == sorted(places), "an event's bookings keep their order"
    # Each booking is in the partition kafka-python's own partitioner picks for its key, as when every
    # booking was a record of its own; the record is keyed by its first booking.
    producer = queue._producer_now()
    partitioner, cluster = producer.config["partitioner"], producer._metadata
    for b in sent + named:
        key = message_key(b)
        assert by_id[b.id][0].partition == partitioner.partition(kafka.topic, key, key, None, None, cluster)
        assert by_id[b.id][0].partition == partition_for(key, sorted(cluster.partitions_for_topic(kafka.topic)))
    for record in records:
        assert record.key == message_key(bookings_from_json(record.value)[0])
    assert len({by_id[b.id][0].partition for b in named}) > 1, "named seats spread over the partitions"


async def test_enqueue_against_an_unreachable_broker_is_unavailable_within_the_produce_timeout() -> None:
    """Nothing listens at the bootstrap address: enqueue and requeue answer within `produce_timeout`,
    whatever the (longer) timeout of the other calls."""
    queue = KafkaQueue(UNREACHABLE, timeout=10.0, produce_timeout=1.0, consume=False)
    assert queue.durable_in_store is False
    for call in (queue.enqueue, queue.requeue, queue.enqueue):
        started = time.monotonic()
        with pytest.raises(Unavailable) as raised:
            await call([booking("evt_down", 1)])
        elapsed = time.monotonic() - started
        print(f"\n{call.__name__} with no broker: Unavailable after {elapsed:.2f}s (produce_timeout 1.0s)")
        assert raised.value.component == "queue"
        assert elapsed < 1.0 + 1.0
    await queue.close()


async def test_open_against_an_unreachable_broker_is_unavailable() -> None:
    queue = KafkaQueue(UNREACHABLE, timeout=2.0)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await queue.open()
    assert time.monotonic() - started < 2.0 + 1.5
    with pytest.raises(Unavailable):
        await queue.ping()


async def test_open_creates_missing_topics(kafka: KafkaTopics) -> None:
    topic = f"tbtest-{secrets.token_hex(4)}-auto"
    queue = KafkaQueue(kafka.bootstrap, topic=topic, dlq_topic=f"{topic}-dlq", group=f"{topic}-group",
                       timeout=TIMEOUT, consume=False)
    try:
        await queue.open()
        await queue.ping()
        described = await in_thread(kafka.admin.describe_topics, [topic, f"{topic}-dlq"])
        assert {t["name"]: len(t["partitions"]) for t in described} == {topic: 6, f"{topic}-dlq": 1}
    finally:
        await queue.close()
        await in_thread(kafka.admin.delete_topics, [topic, f"{topic}-dlq"])


async def test_an_intake_only_queue_produces_but_never_takes(group: str, open_queue: OpenQueue) -> None:
    queue = await open_queue(group, consume=False)
    await queue.enqueue([booking("evt_intake", 1)])
    await queue.ping()
    assert await nothing_more(queue, 0.5)
    assert await queue.lag() == 0


async def test_requeue_produces_a_booking_again(kafka: KafkaTopics, group: str, open_queue: OpenQueue) -> None:
    """A repeat found a booking that may be in no queue: produced again, it is delivered again (a
    duplicate the store's idempotent decide absorbs)."""
    queue = await open_queue(group)
    sent = bookings_of("evt_requeue", 3)
    await queue.enqueue(sent)
    assert await take(queue, 3) == sent
    await queue.requeue(sent[1:])
    assert queue.requeued == 2 and queue.produced == 3
    again = await take(queue, 2)
    assert again == sent[1:]
    assert again[0].secret_hash == sent[1].secret_hash  # the whole booking travels, its secret's hash too
    assert await nothing_more(queue)
    await queue.requeue([])


# ====================================================================== offsets
async def test_unacked_bookings_are_redelivered_to_the_next_consumer(kafka: KafkaTopics, group: str,
                                                                     open_queue: OpenQueue) -> None:
    first = await open_queue(group)
    sent = bookings_of("evt_crash", 20)  # one event: one partition, taken in order
    await first.enqueue(sent[:8])  # two records
    await first.enqueue(sent[8:])
    taken = await take(first, 20, ack=False)
    assert taken == sent
    await first.ack(taken[:10])  # decided; the other 10 never were (the store write failed, say)
    await first.close()

    # The first record is done; the second is redelivered whole, its two decided bookings too (deciding
    # is idempotent).
    second = await open_queue(group)
    assert await take(second, 12) == sent[8:]
    assert await nothing_more(second)


async def test_out_of_order_acks_never_commit_past_an_unacked_booking(kafka: KafkaTopics, group: str,
                                                                       open_queue: OpenQueue) -> None:
    queue = await open_queue(group)
    before = await in_thread(kafka.end_offsets)
    sent = bookings_of("evt_order", 30)
    for n in range(0, 30, 10):  # three records of ten bookings
        await queue.enqueue(sent[n:n + 10])
    partition, base = await grown_partition(kafka, before)
    taken = await take(queue, 30, batch=10, ack=False)  # three batches in flight, as with two consumers

    async def committed() -> int:
        return int((await in_thread(kafka.committed, group))[partition])

    await queue.ack(taken[20:])  # the last batch is decided first
    assert await committed() == base
    await queue.ack(taken[10:20])
    await queue.ack(taken[1:10])
    assert await committed() == base  # the very first booking is still undecided
    assert queue.depth() == 1
    await queue.ack(taken[:1])
    assert await committed() == base + 3
    assert queue.depth() == 0


async def test_retried_bookings_come_back_first(kafka: KafkaTopics, group: str, open_queue: OpenQueue) -> None:
    queue = await open_queue(group)
    before = await in_thread(kafka.end_offsets)
    sent = bookings_of("evt_retry", 5)
    await queue.enqueue(sent[:1])  # a record of one booking, then one of four
    await queue.enqueue(sent[1:])
    partition, base = await grown_partition(kafka, before)
    taken = await take(queue, 5, ack=False)

    await queue.retry(taken[1:3])
    await queue.ack([taken[0], *taken[3:]])
    assert queue.depth() == 2
    assert (await in_thread(kafka.committed, group))[partition] == base + 1  # not past the retried ones

    assert await queue.take_batch(10) == taken[1:3]
    await queue.ack(taken[1:3])
    assert (await in_thread(kafka.committed, group))[partition] == base + 2
    await queue.retry(taken[:1])  # already acked: nothing to retry
    assert queue.depth() == 0
    assert await nothing_more(queue)


async def test_lag_counts_what_is_not_committed(kafka: KafkaTopics, group: str, open_queue: OpenQueue) -> None:
    queue = await open_queue(group)
    sent = bookings_of("evt_lag", 50)
    for n in range(0, 50, 10):  # five records of ten bookings
        await queue.enqueue(sent[n:n + 10])
    first = await take(queue, 15, batch=15)  # the first record done, the second not yet
    assert first == sent[:15]
    assert await queue.lag() == 4  # records, not bookings
    await take(queue, 35)
    assert await queue.lag() == 0


# ====================================================================== dead letters
async def test_a_poison_message_is_dead_lettered_and_does_not_block_the_partition(
        kafka: KafkaTopics, group: str, open_queue: OpenQueue) -> None:
    queue = await open_queue(group)
    good = [booking("evt_poison", n) for n in range(1, 5)]
    spoilt = orjson.loads(envelope_to_json([booking("evt_poison", 8), booking("evt_poison", 9)]))
    del spoilt["bookings"][1]["user_id"]  # one bad booking spoils its whole envelope
    poison = [b"{not json", b'{"id": "bkg_x"}', orjson.dumps(spoilt)]
    key = b"evt_poison"
    dlq_before = await in_thread(kafka.end_offsets, kafka.dlq)
    # A record of before envelopes (one booking), poison, and an envelope of three.
    await in_thread(kafka.produce_raw, [(key, booking_to_json(good[0])), (key, poison[0]), (key, poison[1]),
                                        (key, poison[2]), (key, envelope_to_json(good[1:]))], 0)

    assert await take(queue, 4) == good

    dead = await in_thread(kafka.read, kafka.dlq, dlq_before, 3)
    assert [(r.key, r.value) for r in dead] == [(key, p) for p in poison]
    headers = [dict(r.headers) for r in dead]
    assert b"not JSON" in headers[0]["reason"] and b"missing" in headers[1]["reason"]
    assert b"booking 1: missing user_id" in headers[2]["reason"]
    assert all(h["source"].startswith(f"{kafka.topic}/0/".encode()) for h in headers)
    assert queue.dead_lettered == 3
    # The poison offsets count as done: the partition is committed past them.
    assert (await in_thread(kafka.committed, group))[0] == (await in_thread(kafka.end_offsets))[0]


async def test_dead_letter_sets_a_booking_aside_with_its_reason(kafka: KafkaTopics, group: str,
                                                                open_queue: OpenQueue) -> None:
    queue = await open_queue(group)
    before = await in_thread(kafka.end_offsets)
    dlq_before = await in_thread(kafka.end_offsets, kafka.dlq)
    await queue.enqueue(bookings_of("evt_aside", 3))
    partition, base = await grown_partition(kafka, before)
    taken = await take(queue, 3, ack=False)

    await queue.dead_letter(taken[1:2], "RuntimeError: boom")
    await queue.ack([taken[0], taken[2]])

    assert queue.depth() == 0
    assert (await in_thread(kafka.committed, group))[partition] == base + 1  # the envelope of three
    [dead] = await in_thread(kafka.read, kafka.dlq, dlq_before, 1)
    assert booking_from_json(dead.value) == taken[1]
    assert dict(dead.headers)["reason"] == b"RuntimeError: boom"


# ====================================================================== groups
async def wait_for_split(queues: list[KafkaQueue], within: float = 30.0) -> list[set[int]]:
    """Wait until the queues own disjoint, non-empty sets of partitions covering the topic."""
    with trio.fail_after(within):
        while True:
            owned = [await q.assignment() for q in queues]
            covered = set().union(*owned)
            if all(owned) and covered == set(range(PARTITIONS)) and sum(map(len, owned)) == PARTITIONS:
                return owned
            await trio.sleep(0.2)


async def collect(queue: KafkaQueue, into: list[Booking], enough: Callable[[], bool], done: trio.Event) -> None:
    """Take and ack until cancelled, setting `done` once `enough()`. It keeps polling after that, as a
    consumer does: kafka-python completes a rebalance only inside a poll, so a consumer nobody polls stays
    in the middle of one (refusing commits, heartbeats off) until the group evicts it; and a duplicate that
    comes later is seen."""
    while True:
        if enough():
            done.set()
        batch = await queue.take_batch(64)
        await queue.ack(batch)
        into.extend(batch)


async def commits_reach_the_end(kafka: KafkaTopics, group: str, queues: list[KafkaQueue],
                                within: float = 15.0) -> None:
    """Wait until the group's commits are at the end of the topic, the queues being polled meanwhile (by
    `collect`). A commit refused during a rebalance (RebalanceInProgressError) goes out with the next
    poll or ack once the rebalance is over."""
    with trio.fail_after(within):
        while await in_thread(kafka.committed, group) != await in_thread(kafka.end_offsets):
            for queue in queues:
                await queue.ack([])
            await trio.sleep(0.2)


async def test_two_consumers_split_the_partitions_and_see_each_booking_once(
        kafka: KafkaTopics, group: str, open_queue: OpenQueue) -> None:
    one, two = await open_queue(group), await open_queue(group)
    seen: tuple[list[Booking], list[Booking]] = ([], [])
    sent = [booking(f"evt_split{n % 30}", n) for n in range(300)]
    done = trio.Event()

    def enough() -> bool:
        return len(seen[0]) + len(seen[1]) >= len(sent)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, one, seen[0], enough, done)
        nursery.start_soon(collect, two, seen[1], enough, done)
        owned = await wait_for_split([one, two])
        await one.enqueue(sent)
        with trio.fail_after(30):
            await done.wait()
        await trio.sleep(1.0)  # room for a duplicate to show up
        await commits_reach_the_end(kafka, group, [one, two])
        nursery.cancel_scope.cancel()

    assert not owned[0] & owned[1]
    assert seen[0] and seen[1]
    ids = [b.id for b in seen[0] + seen[1]]
    assert len(ids) == len(set(ids)) == len(sent)
    assert set(ids) == {b.id for b in sent}
    assert await in_thread(kafka.committed, group) == await in_thread(kafka.end_offsets)


async def test_a_rebalance_hands_over_only_the_unacked_bookings_of_moved_partitions(
        kafka: KafkaTopics, group: str, open_queue: OpenQueue) -> None:
    one = await open_queue(group)
    before = await in_thread(kafka.end_offsets)
    sent = [booking(f"evt_rebalance{n}", n) for n in range(30)]  # thirty events: every partition gets some
    for b in sent:  # a record each, so that a prefix of every partition can be done
        await one.enqueue([b])
    partition_of = {b_id: r.partition
                    for b_id, (r, _) in by_booking(await in_thread(kafka.read, kafka.topic, before, len(sent))).items()}
    assert set(partition_of.values()) == set(range(PARTITIONS))
    taken = await take(one, 30, ack=False)  # each partition in offset order
    by_partition = [[b for b in taken if partition_of[b.id] == p] for p in range(PARTITIONS)]
    await one.ack([b for ours in by_partition for b in ours[:len(ours) // 3]])  # a prefix of every partition
    unacked = [b for ours in by_partition for b in ours[len(ours) // 3:]]

    # Two joins: of three partitions split 2 + 1, one keeps some (with its position, its in-flight
    # bookings stay its own) and two re-reads the others from their last commit.
    two = await open_queue(group)
    seen: tuple[list[Booking], list[Booking]] = ([], [])
    handed_over: set[str] = set()
    done = trio.Event()

    def enough() -> bool:
        return bool(handed_over) and len(seen[1]) >= len(handed_over)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, one, seen[0], enough, done)
        nursery.start_soon(collect, two, seen[1], enough, done)
        kept, moved = await wait_for_split([one, two])
        handed_over.update(b.id for b in unacked if partition_of[b.id] in moved)
        assert handed_over, "every partition has unacked bookings"
        if enough():
            done.set()
        with trio.fail_after(30):
            await done.wait()
        await trio.sleep(1.0)  # room for a duplicate to show up
        nursery.cancel_scope.cancel()

    assert seen[0] == [], "nothing of one's kept partitions is read twice"
    assert sorted(b.id for b in seen[1]) == sorted(handed_over)
    still_in_flight = [b for b in unacked if partition_of[b.id] in kept]
    assert one.depth() == len(still_in_flight), "in flight on kept partitions, forgotten on moved ones"
    await one.ack(unacked)  # the late ack: counts for the kept partitions, nothing for the moved ones
    assert one.depth() == two.depth() == 0
    late: tuple[list[Booking], list[Booking]] = ([], [])
    async with trio.open_nursery() as nursery:  # polled, so that a rebalance under way completes
        nursery.start_soon(collect, one, late[0], lambda: False, trio.Event())
        nursery.start_soon(collect, two, late[1], lambda: False, trio.Event())
        await commits_reach_the_end(kafka, group, [one, two])
        nursery.cancel_scope.cancel()
    assert late == ([], []), "nothing is delivered again once decided"
    assert await in_thread(kafka.committed, group) == await in_thread(kafka.end_offsets)


async def test_done_offsets_left_uncommitted_are_committed_when_their_partitions_are_revoked(
        kafka: KafkaTopics, group: str, open_queue: OpenQueue) -> None:
    one = await open_queue(group)
    sent = [booking(f"evt_revoke{n}", n) for n in range(30)]  # thirty events: every partition gets some
    for b in sent:
        await one.enqueue([b])
    before = await in_thread(kafka.committed, group)
    taken = await take(one, 30, ack=False)
    # Decided, their commit not made: as after an ack whose commit was refused during a rebalance.
    assert one._deliveries.finish(taken) == 30
    assert await in_thread(kafka.committed, group) == before

    # two joins and waits for one; one hears of the rebalance from its heartbeat, so its next poll
    # starts by revoking every partition (before the poll would commit them): the commit at revoke time.
    two = await open_queue(group)
    seen: tuple[list[Booking], list[Booking]] = ([], [])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, two, seen[1], lambda: False, trio.Event())
        await trio.sleep(2 * HEARTBEAT_MS / 1000)
        nursery.start_soon(collect, one, seen[0], lambda: False, trio.Event())
        await wait_for_split([one, two])
        # a moved partition is forgotten by one at the assignment: only the revoke-time commit covers it
        await commits_reach_the_end(kafka, group, [one, two])
        await trio.sleep(1.0)  # room for a redelivery to show up
        nursery.cancel_scope.cancel()
    assert seen == ([], []), "nothing decided is delivered again"


# ====================================================================== a broker that goes away and comes back
async def test_a_broker_that_goes_away_costs_a_quick_503_and_everything_resumes_when_it_is_back(
        kafka: KafkaTopics, group: str, nursery: trio.Nursery) -> None:
    """The broker's connections reset and its port refuses (as after a kill -9), then it is back: intake
    answers Unavailable within about `produce_timeout` meanwhile, consumers wait it out, and afterwards
    the same producer and consumer (no restart) produce, take and commit again."""
    host, port = kafka.bootstrap.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    await nursery.start(proxy.run)
    proxy.rewrite = advertise(kafka.bootstrap, proxy.address)
    queue = KafkaQueue(proxy.address, topic=kafka.topic, dlq_topic=kafka.dlq, group=group, timeout=TIMEOUT,
                       produce_timeout=PRODUCE_TIMEOUT)
    try:
        await queue.open()
        before = await take_after(queue, bookings_of("evt_outage", 6), ack=3)

        await proxy.cut()
        failed: list[Booking] = []  # a failed produce may have been written all the same
        for attempt in range(3):
            started = time.monotonic()
            failed.append(booking("evt_outage", 100 + attempt))
            with pytest.raises(Unavailable):
                await queue.enqueue([failed[-1]])
            elapsed = time.monotonic() - started
            print(f"\nenqueue {attempt + 1} while the broker is gone: Unavailable after {elapsed:.2f}s")
            assert elapsed < PRODUCE_TIMEOUT + 1.0
        await queue.ack(before[3:])  # decided meanwhile: the commit fails, is logged, goes out later
        assert await nothing_more(queue, 1.0)  # the consumer waits, it does not fail

        await proxy.restore()
        restored = time.monotonic()
        after = bookings_of("evt_outage", 5)
        with trio.fail_after(30):
            while True:
                try:
                    await queue.enqueue(after)
                    break
                except Unavailable:
                    await trio.sleep(0.1)
        print(f"enqueue works again {time.monotonic() - restored:.2f}s after the broker is back")
        seen: dict[str, Booking] = {}
        with trio.fail_after(60):
            while not all(b.id in seen for b in after):
                batch = await queue.take_batch(64)
                await queue.ack(batch)
                seen.update((b.id, b) for b in batch)
        print(f"the consumer took them {time.monotonic() - restored:.2f}s after the broker is back "
              f"({len(seen) - len(after)} redelivered)")
        with trio.fail_after(30):
            while await in_thread(kafka.committed, group) != await in_thread(kafka.end_offsets):
                with trio.move_on_after(0.2):  # a failed produce that was written after all: take it too
                    late = await queue.take_batch(64)
                    seen.update((b.id, b) for b in late)
                    await queue.ack(late)
                await queue.ack([])  # commits what the outage kept back
        assert set(seen) <= {b.id for b in before + after + failed}
        assert queue.depth() == 0
        assert proxy.connections > 0
    finally:
        await queue.close()


async def take_after(queue: KafkaQueue, sent: list[Booking], *, ack: int) -> list[Booking]:
    """Enqueue `sent` (one partition), take them all and ack the first `ack`."""
    await queue.enqueue(sent)
    taken = await take(queue, len(sent), ack=False)
    assert taken == sent
    await queue.ack(taken[:ack])
    return taken


# ====================================================================== throughput
async def test_throughput(kafka: KafkaTopics, group: str, open_queue: OpenQueue,
                          capsys: pytest.CaptureFixture[str]) -> None:
    queue = await open_queue(group)
    batches = [[booking(f"evt_tp{n % 100}", n) for n in range(512)] for _ in range(20)]
    total = sum(map(len, batches))

    started = time.perf_counter()
    for batch in batches:
        await queue.enqueue(batch)
    enqueue_rate = total / (time.perf_counter() - started)

    started = time.perf_counter()
    taken = await take(queue, total, batch=256, within=60)
    take_rate = total / (time.perf_counter() - started)

    assert len({b.id for b in taken}) == total
    with capsys.disabled():
        print(f"\n[kafka queue] enqueue {enqueue_rate:,.0f} bookings/s (batches of 512, acks=all, idempotent); "
              f"take+ack {take_rate:,.0f} bookings/s (batches of 256, one commit each)")
    assert enqueue_rate > 1_000 and take_rate > 1_000
