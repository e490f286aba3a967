"""The Kafka queue's pure parts: the partition a booking goes to (as kafka-python's DefaultPartitioner
would pick it), the envelopes one produce makes, and the offset bookkeeping (`Deliveries`) of records
that carry several bookings. The broker side is in tests/integration/test_kafka_queue.py."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from kafka.structs import TopicPartition

from ticketblitz.adapters.kafka_queue import (
    ENVELOPE_BYTES,
    Deliveries,
    _Message,
    envelopes,
    group_by_partition,
    message_key,
    partition_for,
)
from ticketblitz.codec import bookings_from_json
from ticketblitz.domain.model import Booking

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)


def booking(n: int, event: str = "evt_1", seat: str | None = None) -> Booking:
    now = time.time()
    return Booking(id=f"bkg_{n}", event_id=event, user_id=f"u-{n}", quantity=1,
                   requested_seats=(seat,) if seat else (), created_at=now, updated_at=now,
                   idempotency_key=f"k-{n}", fingerprint=f"fp-{n}", secret_hash=f"{n:064x}")


# ====================================================================== partitions
@pytest.mark.parametrize("key, partition", [
    # the Java client's org.apache.kafka.clients.producer.Partitioner over 1000 partitions (the same
    # vectors kafka-python's DefaultPartitioner is tested against)
    (b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742),
])
def test_a_key_goes_to_the_partition_the_java_client_picks(key: bytes, partition: int) -> None:
    assert partition_for(key, list(range(1000))) == partition


def test_bookings_are_grouped_by_the_partition_of_their_key_in_order() -> None:
    sent = [booking(n, event=f"evt_{n % 5}", seat=f"A-1-{n}" if n % 2 else None) for n in range(200)]
    groups = group_by_partition(sent, {5, 3, 1, 0, 4, 2})  # a set, as partitions_for gives it
    assert sorted(b.id for g in groups.values() for b in g) == sorted(b.id for b in sent)
    for partition, group in groups.items():
        assert all(partition_for(message_key(b), list(range(6))) == partition for b in group)
        assert group == [b for b in sent if b in group]  # the order of the batch
    assert len(groups) > 1


def test_the_partition_is_taken_among_the_sorted_partitions() -> None:
    key = message_key(booking(1))
    assert partition_for(key, [0, 1, 2]) == sorted(group_by_partition([booking(1)], [2, 0, 1]))[0]


def test_one_envelope_per_partition_keyed_by_its_first_booking() -> None:
    sent = [booking(n, event=f"evt_{n % 7}") for n in range(70)]
    messages = envelopes("topic", sent, range(3))
    groups = group_by_partition(sent, range(3))
    assert len(messages) == len(groups)
    for message in messages:
        assert message.topic == "topic" and message.headers is None and message.partition is not None
        carried = bookings_from_json(message.value or b"")
        assert carried == groups[message.partition]
        assert message.key == message_key(carried[0])
        assert orjson.loads(message.value or b"")["v"] == 2


def test_a_big_group_is_split_into_envelopes_under_the_limit_in_order() -> None:
    sent = [booking(n) for n in range(4000)]  # one event: one partition, about 1.6 MB of bookings
    messages = envelopes("topic", sent, range(6))
    assert len(messages) > 1
    assert len({m.partition for m in messages}) == 1
    assert all(len(m.value or b"") <= ENVELOPE_BYTES for m in messages)
    assert [b for m in messages for b in bookings_from_json(m.value or b"")] == sent


# ====================================================================== bookkeeping
def test_an_offset_of_several_bookings_is_done_once_all_are() -> None:
    d = Deliveries()
    first, second = [booking(n) for n in range(3)], [booking(n) for n in range(3, 5)]
    d.took(P0, 10, first)
    d.took(P0, 11, second)
    assert d.depth() == 5
    assert d.finish(first[:2]) == 2
    assert d.commits() == {}
    assert d.finish(second) == 2
    assert d.commits() == {}  # offset 10 still carries an undecided booking
    assert d.finish(first[2:]) == 1
    assert d.commits() == {P0: 12}
    assert d.depth() == 0


def test_out_of_order_acks_commit_the_done_prefix_only() -> None:
    d = Deliveries()
    batches = [[booking(10 * o + n) for n in range(3)] for o in range(3)]
    for offset, batch in enumerate(batches):
        d.took(P0, offset, batch)
    d.finish(batches[1])
    d.finish(batches[2][:2])
    assert d.commits() == {}
    d.finish(batches[0])
    assert d.commits() == {P0: 2}
    d.committed({P0: 2})
    assert d.commits() == {}
    d.finish(batches[2][2:])
    assert d.commits() == {P0: 3}


def test_a_redelivered_booking_finishes_both_of_its_offsets() -> None:
    d = Deliveries()
    twice = booking(1)
    d.took(P0, 0, [booking(0), twice])  # then requeued: the same booking again at offset 1
    d.took(P0, 1, [twice, booking(2)])
    assert d.depth() == 3
    assert d.finish([twice]) == 1
    assert d.finish([twice]) == 0  # the other copy's ack: nothing left to count
    d.finish([booking(0)])
    assert d.commits() == {P0: 1}
    d.finish([booking(2)])
    assert d.commits() == {P0: 2}


def test_the_same_booking_twice_in_one_envelope_counts_twice() -> None:
    d = Deliveries()
    d.took(P0, 0, [booking(1), booking(1)])
    assert d.finish([booking(1)]) == 1
    assert d.commits() == {P0: 1}


def test_a_poison_record_is_done_once_its_dead_letter_is_paid() -> None:
    d = Deliveries()
    d.took(P0, 0, [booking(0)])
    d.took(P0, 1, None)
    d.owe_dead_letter(P0, 1, _Message("dlq", b"k", b"{"))
    d.took(P0, 2, [booking(2)])
    d.finish([booking(0), booking(2)])
    assert d.commits() == {P0: 1}
    assert [pos for pos, _ in d.owed_dead_letters()] == [(P0, 1)]
    d.paid_dead_letters([(P0, 1)])
    assert d.commits() == {P0: 3}
    assert d.owed_dead_letters() == []


def test_parked_bookings_keep_their_envelope_uncommitted_and_come_first() -> None:
    d = Deliveries()
    batch = [booking(n) for n in range(4)]
    d.took(P0, 0, batch)
    d.hold(P0, batch[2:])  # read beyond what the poll's caller could take
    d.finish([batch[0]])
    d.park([batch[1]])
    assert d.commits() == {}
    assert d.unpark(10) == [batch[1]]
    assert d.unpark(10) == []
    assert d.take_held(10) == batch[2:]
    assert d.take_held(10) == []
    d.finish(batch[1:])
    assert d.commits() == {P0: 1}


def test_held_bookings_are_served_in_order_and_skipped_once_decided() -> None:
    d = Deliveries()
    batch = [booking(n) for n in range(6)]
    d.took(P0, 0, batch)
    d.hold(P0, batch[1:])
    d.finish([batch[2]])  # decided through a redelivered copy meanwhile
    assert d.take_held(2) == [batch[1], batch[3]]
    assert d.take_held(10) == batch[4:]


def test_forget_drops_what_was_read_from_revoked_partitions_only() -> None:
    d = Deliveries()
    here, there = [booking(n) for n in range(3)], [booking(n) for n in range(3, 6)]
    d.took(P0, 0, here)
    d.took(P1, 0, there)
    d.hold(P0, here[1:])
    d.hold(P1, there[1:])
    d.park([there[0], here[0]])
    d.forget([P1])
    assert d.depth() == 3
    assert d.unpark(10) == here[:1]  # nothing of P1
    assert d.take_held(10) == here[1:]
    assert d.finish(there) == 0
    d.finish(here)
    assert d.commits() == {P0: 1}
    d.clear()
    assert d.depth() == 0 and d.commits() == {}


def test_concurrent_acks_of_envelopes_commit_everything() -> None:
    d = Deliveries()
    records = [[booking(100 * o + n) for n in range(50)] for o in range(40)]
    for offset, batch in enumerate(records):
        d.took(P0, offset, batch)
    everyone = [b for batch in records for b in batch]

    def ack(share: list[Booking]) -> None:
        for b in share:
            d.finish([b])

    threads = [threading.Thread(target=ack, args=(everyone[n::8],)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert d.depth() == 0
    assert d.commits() == {P0: 40}
