"""The waiting-room load generator's pure parts: the proof of work, the fairness count, the order check,
the arrival schedule, the requests it sends and the report's fields."""

from __future__ import annotations

import hashlib
import itertools
import random

import orjson
import pytest

from ticketblitz.loadgen import pow as proof_of_work
from ticketblitz.loadgen.fairness import issue_inversions, overtakes, prefix_order
from ticketblitz.loadgen.waiting_room import (
    Fan,
    WaitingRoomSettings,
    arrival_offsets,
    booking_summary,
    request_bytes,
    sale_event_body,
    summarize,
)

# ---------------------------------------------------------------------- proof of work


@pytest.mark.parametrize("bits", [0, 1, 4, 8, 12])
def test_solve_then_verify_round_trip(bits: int) -> None:
    solution = proof_of_work.solve("chal-xyz", "u-42", bits)
    assert solution.proof.isdecimal()
    assert proof_of_work.verify("chal-xyz", "u-42", solution.proof, bits)
    # the API's definition, independently: SHA-256 of "{challenge}:{user_id}:{proof}", `bits` zero bits
    digest = hashlib.sha256(f"chal-xyz:u-42:{solution.proof}".encode()).digest()
    assert int.from_bytes(digest, "big") >> (256 - bits) == 0
    assert solution.tries == int(solution.proof) + 1  # counted from 0, the found one included


def test_solve_finds_the_first_proof() -> None:
    solution = proof_of_work.solve("c", "u", 8)
    assert not any(proof_of_work.verify("c", "u", str(n), 8) for n in range(int(solution.proof)))


def test_a_wrong_proof_fails() -> None:
    solution = proof_of_work.solve("chal", "u-1", 12)
    assert proof_of_work.verify("chal", "u-1", solution.proof, 12)
    # the proof is bound to its user and challenge (these are not proofs at 12 bits: checked by digest)
    for challenge, user in (("chal", "u-2"), ("other", "u-1")):
        zeros = proof_of_work.leading_zero_bits(proof_of_work.proof_digest(challenge, user, solution.proof))
        assert proof_of_work.verify(challenge, user, solution.proof, 12) == (zeros >= 12)
    wrong = next(str(n) for n in itertools.count() if proof_of_work.leading_zero_bits(
        proof_of_work.proof_digest("chal", "u-1", str(n))) < 12)
    assert not proof_of_work.verify("chal", "u-1", wrong, 12)
    assert not proof_of_work.verify("chal", "u-1", "-1", 12)
    assert not proof_of_work.verify("chal", "u-1", " " + solution.proof, 12)
    assert not proof_of_work.verify("chal", "u-1", "٣", 0)  # a non-ASCII digit is not a decimal proof


def test_leading_zero_bits() -> None:
    assert proof_of_work.leading_zero_bits(b"\x00\x00\xff") == 16
    assert proof_of_work.leading_zero_bits(b"\x00\x01") == 15
    assert proof_of_work.leading_zero_bits(b"\x80") == 0
    assert proof_of_work.leading_zero_bits(b"\x00\x00") == 16


def test_solve_bounds() -> None:
    with pytest.raises(ValueError):
        proof_of_work.solve("c", "u", 30, max_tries=3)
    with pytest.raises(ValueError):
        proof_of_work.verify("c", "u", "1", 300)


# ---------------------------------------------------------------------- fairness


def test_overtakes_on_a_hand_made_line() -> None:
    # arrival order a b c d e; seats went to b and e
    fans = [(1.0, False), (2.0, True), (3.0, False), (4.0, False), (5.0, True)]
    result = overtakes(fans)
    # b beat a (1); e beat a, c, d (3): 4 of the 10 (earlier, later) pairs
    assert result.overtakes == 4
    assert result.ordered_pairs == 10
    assert result.fraction == pytest.approx(0.4)
    # pairs with exactly one seat: 2 seated x 3 not = 6; 4 of them the later won
    assert result.mixed_pairs == 6
    assert result.fraction_of_mixed == pytest.approx(4 / 6)


def test_overtakes_fifo_is_zero_and_lifo_is_all() -> None:
    fifo = [(float(i), i < 3) for i in range(10)]
    assert overtakes(fifo).overtakes == 0
    lifo = [(float(i), i >= 7) for i in range(10)]
    assert overtakes(lifo).overtakes == 3 * 7
    assert overtakes(lifo).fraction_of_mixed == 1.0


def test_overtakes_ignores_simultaneous_pairs_and_input_order() -> None:
    fans = [(2.0, True), (1.0, False), (1.0, True), (2.0, False)]
    result = overtakes(fans)
    # ordered pairs: the two at t=1 before the two at t=2 (4 pairs); the later seated (2.0, True)
    # beat the earlier unseated (1.0, False): 1
    assert result.ordered_pairs == 4
    assert result.overtakes == 1
    assert overtakes([]).fraction == 0.0


def test_overtakes_matches_brute_force() -> None:
    rng = random.Random(7)
    fans = [(float(rng.randrange(40)), rng.random() < 0.3) for _ in range(120)]
    brute = sum(1 for (ta, sa), (tb, sb) in itertools.permutations(fans, 2) if ta < tb and sb and not sa)
    assert overtakes(fans).overtakes == brute


def test_prefix_order() -> None:
    assert prefix_order([3, 1, 2]) == (True, "admitted positions are 1..3")
    assert prefix_order([])[0]
    ok, detail = prefix_order([1, 2, 4])
    assert not ok and "[3]" in detail
    assert not prefix_order([1, 1, 2])[0]


def test_issue_inversions() -> None:
    assert issue_inversions([(1, 0.0), (2, 0.1), (3, 0.1)]) == 0
    assert issue_inversions([(1, 0.5), (2, 0.1), (3, 0.2)]) == 2
    assert issue_inversions([(1, 0.5), (2, 0.1), (3, 0.2)], tolerance=0.5) == 0
    rng = random.Random(3)
    pairs = [(i, rng.random()) for i in range(200)]
    brute = sum(1 for (pa, ta), (pb, tb) in itertools.combinations(pairs, 2) if pa < pb and tb < ta)
    assert issue_inversions(pairs) == brute


# ---------------------------------------------------------------------- what the fans send


def test_arrival_offsets_spread_every_fan_once() -> None:
    offsets = arrival_offsets(1000, 1.0, seed=5)
    assert sorted(offsets) == pytest.approx([i / 1000 for i in range(1000)])
    assert offsets != sorted(offsets)  # a shuffled order
    assert arrival_offsets(1000, 1.0, seed=5) == offsets


def test_request_bytes_adds_headers_before_the_body() -> None:
    raw = request_bytes("POST", "/api/events/e/bookings", 8000, {"user_id": "u", "quantity": 1},
                        headers={"Queue-Pass": "p.q", "Idempotency-Key": "k"})
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/events/e/bookings HTTP/1.1"
    assert "Queue-Pass: p.q" in lines and "Idempotency-Key: k" in lines and "Connection: keep-alive" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert orjson.loads(body) == {"user_id": "u", "quantity": 1}


def test_event_body_with_a_waiting_room() -> None:
    body = sale_event_body("n", 1000, WaitingRoomSettings("fifo", 2000, 30, 8, sale_starts_in=60), 3600, now=0.0)
    assert body["waiting_room"] == {"mode": "fifo", "admit_per_second": 2000, "pass_seconds": 30,
                                    "challenge_bits": 8}
    assert body["sale_starts_at"] == "1970-01-01T00:01:00.000Z"
    assert sum(s["rows"] * s["seats_per_row"] for s in body["sections"]) == 1000
    assert "waiting_room" not in sale_event_body("n", 10, None, 3600)


# ---------------------------------------------------------------------- the report


def _fan(i: int, arrival: float, position: int, status: str, seat: bool, **more: object) -> Fan:
    fan = Fan(i, f"fan-{i}", offset=arrival, arrival=arrival, join_status=201, join_seconds=0.01 * (i + 1),
              join_answered_at=arrival + 0.01 * (i + 1), ticket_id=f"q_{i}", secret="s", position=position,
              status=status, final_at=arrival + 1.0, polls=2)
    if status in ("admitted", "expired"):
        fan.admitted_at = arrival + 0.5
        fan.pass_issued_wall = 100.0 + position
        fan.booking_status_code, fan.booking_seconds, fan.booking_id = 202, 0.02, f"bkg_{i}"
        fan.booking_status = "confirmed" if seat else "rejected"
        fan.offered = fan.confirmed = seat
    for k, v in more.items():
        setattr(fan, k, v)
    return fan


def test_summarize_waiting_room_fields() -> None:
    fans = [_fan(0, 0.0, 1, "admitted", True), _fan(1, 0.1, 2, "admitted", True),
            _fan(2, 0.2, 3, "sold_out", False), _fan(3, 0.3, 4, "sold_out", False)]
    parts = summarize("waiting-room", fans, t0=0.0, pass_seconds=30, line_history=[
        (0.5, 4, 2, 2, 0, 0, 2, False), (1.2, 4, 0, 2, 0, 0, 2, True), (1.3, 4, 0, 2, 0, 0, 2, True)])
    assert parts["joins"]["answered"] == 4 and parts["joins"]["by_code"] == {"201": 4}
    assert parts["joins"]["answer_ms"]["p50"] == 20.0 and parts["joins"]["answer_ms"]["p99"] == 40.0
    tickets = parts["tickets"]
    assert tickets["all_final"] and tickets["final_states"] == {"admitted": 2, "sold_out": 2}
    assert tickets["time_to_all_final_s"] == 1.3  # last final (0.3 + 1.0) after the first arrival (0.0)
    assert tickets["line_empty_s"] == 1.2
    assert parts["admission"]["passes_issued"] == 2 and parts["admission"]["sold_out_tickets"] == 2
    assert parts["order"] == {"checked": True, "ok": True, "detail": "admitted positions are 1..2",
                              "issue_inversions": 0}
    assert parts["bookings"]["held"] == 2 and parts["bookings"]["confirmed"] == 2
    assert parts["fairness"]["overtakes"] == 0 and parts["fairness"]["fraction"] == 0.0


def test_summarize_flags_an_out_of_order_admission_and_unfinished_fans() -> None:
    fans = [_fan(0, 0.0, 1, "admitted", True), _fan(1, 0.1, 2, "sold_out", False), _fan(2, 0.2, 3, "admitted", True)]
    order = summarize("waiting-room", fans, 0.0, 30)["order"]
    assert order["checked"] and not order["ok"]
    waiting = _fan(3, 0.3, 4, "waiting", False, final_at=None)
    parts = summarize("waiting-room", [*fans, waiting], 0.0, 30)
    assert not parts["tickets"]["all_final"] and parts["tickets"]["time_to_all_final_s"] is None
    assert parts["order"]["checked"] is False


def test_summarize_direct_sale_has_no_line_and_counts_overtakes() -> None:
    fans = [Fan(0, "fan-0", 0.0, arrival=0.0), Fan(1, "fan-1", 0.1, arrival=0.1, booking_status_code=202,
                                                     booking_id="b", booking_status="confirmed", offered=True,
                                                     confirmed=True)]
    fans[0].booking_status_code, fans[0].booking_code = 409, "sold_out"
    parts = summarize("direct", fans, 0.0, 0)
    assert parts["joins"] is None and parts["order"] is None and parts["tickets"] is None
    assert parts["fairness"]["overtakes"] == 1 and parts["fairness"]["fraction"] == 1.0
    assert parts["bookings"]["by_code"] == {"202": 1, "409": 1}
    assert parts["bookings"]["problem_codes"] == {"sold_out": 1}
    summary = booking_summary(fans)
    assert summary.problem_codes == {"sold_out": 1} and summary.success_without_booking == 0


# ---------------------------------------------------------------------- end to end, against a stand-in


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("bits", "abandon"), [(0, 0.0), (4, 0.2)])
async def test_a_waiting_room_sale_against_a_stand_in(bits: int, abandon: float) -> None:
    """The whole fan flow against tests/unit/fake_waiting_room.py (the contract's shapes, not the server):
    every fan ends final, the passes went out in position order, every seat is sold, nobody oversold."""
    import trio
    from fake_waiting_room import TOKEN, Fake, serve

    from ticketblitz.loadgen.waiting_room import SaleOptions, judge_sale, run_sale

    fake, port = Fake(), _free_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, fake, port)
        # holds of 3 s: each abandoned hold lapses and admits the next in line (who may abandon too), so the
        # sale lasts a few hold times; the fake decides at once, so a fan that confirms does so well within it
        options = SaleOptions(url=f"http://127.0.0.1:{port}", admin_token=TOKEN, fans=600, seats=50,
                              settings=WaitingRoomSettings("fifo", 400, 30, bits), connections=40,
                              arrival_seconds=0.3, deadline_seconds=40, abandon=abandon, hold_seconds=3)
        with trio.fail_after(60):
            report = await run_sale(options)
        nursery.cancel_scope.cancel()
    judge_sale(report)
    assert report.passed, report.exit_reasons
    assert report.tickets is not None and report.tickets["all_final"]
    assert report.order is not None and report.order["ok"] and report.order["issue_inversions"] == 0
    assert report.oversold == 0 and report.verification.counts == {"available": 0, "held": 0, "sold": 50}
    assert report.bookings["confirmed"] == 50
    assert report.admission is not None
    assert report.admission["passes_issued"] == 50 + report.admission["lapsed_holds"]
    assert report.admission["sold_out_tickets"] == 600 - report.admission["passes_issued"]
    assert report.requests["connections_made"] - report.requests["connections_discarded"] <= 40
    # joins in flight together may be recorded in either order, so arrival order is nearly, not exactly, the line's
    assert report.fairness["fraction_of_mixed"] < 0.05
    if bits:
        assert report.joins is not None and report.joins["pow_tries"] >= 600


@pytest.mark.parametrize("waiting_room", [True, False])
async def test_a_burst_sale_against_a_stand_in(waiting_room: bool) -> None:
    """SaleOptions.burst_connections: every fan's first request comes from the sender process, pipelined on
    a few connections, on schedule; its send time is the fan's arrival and the fans go on from its answers."""
    import trio
    from fake_waiting_room import TOKEN, Fake, serve

    from ticketblitz.loadgen.waiting_room import SaleOptions, judge_sale, run_sale

    fake, port = Fake(), _free_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, fake, port)
        options = SaleOptions(url=f"http://127.0.0.1:{port}", admin_token=TOKEN, fans=400, seats=30,
                              settings=WaitingRoomSettings("fifo", 400, 30, 0) if waiting_room else None,
                              connections=40, arrival_seconds=0.3, deadline_seconds=40, hold_seconds=5,
                              burst_connections=8)
        with trio.fail_after(60):
            report = await run_sale(options)
        nursery.cancel_scope.cancel()
    judge_sale(report)
    assert report.passed, report.exit_reasons
    assert report.sender is not None and report.sender["exit"] == 0
    assert report.sender["requests"] == 400 and report.sender["connections"] == 8
    assert report.arrivals["arrived"] == 400
    assert 0.2 <= report.arrivals["spread_s"] < 1.0  # sent on schedule (0.3 s), measured, not assumed
    assert report.oversold == 0 and report.verification.counts == {"available": 0, "held": 0, "sold": 30}
    if waiting_room:
        assert report.joins is not None and report.joins["answered"] == 400
        assert report.joins["answer_ms"]["max"] is not None
        assert report.order is not None and report.order["ok"]
        # the pool sent no join: only the line, the polls and the bookings
        assert report.requests["total"] < 400 + 3 * 30 + 400
    else:
        assert report.bookings["requests"] == 400 and report.bookings["confirmed"] == 30


@pytest.mark.parametrize(("head", "keep_alive"), [
    (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n", False),
])
def test_the_response_parser_keeps_alive_what_may_be(head: bytes, keep_alive: bool) -> None:
    """A pooled connection is reused only when the answer allows it (httptools forgets once fed)."""
    from ticketblitz.loadgen.client import ResponseParser

    parser = ResponseParser()
    parser.feed(head + b"{}")
    assert parser.complete
    response = parser.response()
    assert (response.status, response.body, response.keep_alive) == (200, b"{}", keep_alive)


async def test_the_pool_gate_serves_by_priority_then_arrival_and_skips_the_cancelled() -> None:
    import trio

    from ticketblitz.loadgen.pool import Gate

    gate = Gate(1)
    await gate.acquire(2)  # the one token is taken
    order: list[str] = []

    async def waiter(name: str, priority: int) -> None:
        await gate.acquire(priority)
        order.append(name)
        gate.release()

    async with trio.open_nursery() as nursery:
        for name, priority in (("join-a", 2), ("book", 0), ("poll", 1), ("join-b", 2)):
            nursery.start_soon(waiter, name, priority)
            await trio.sleep(0.01)
        with trio.CancelScope() as gone:
            gone.cancel()
            await gate.acquire(0)  # cancelled before it could wait: never served, never counted
        cancelled = trio.CancelScope()

        async def cancelled_waiter() -> None:
            with cancelled:
                await gate.acquire(0)
                order.append("cancelled")

        nursery.start_soon(cancelled_waiter)
        await trio.sleep(0.01)
        cancelled.cancel()
        await trio.sleep(0.01)
        assert gate.waiting == 4
        gate.release()
    assert order == ["book", "poll", "join-a", "join-b"]
    assert gate.free == 1 and gate.waiting == 0
