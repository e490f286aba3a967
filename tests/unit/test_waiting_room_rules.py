"""The waiting room's pure rules (ticketblitz/domain/waiting_room.py): passes, challenges and proofs,
the lottery's order (uniform: a chi-square test over many draws), the admission rule."""

from __future__ import annotations

import itertools
import os
from collections import Counter

from ticketblitz.domain import waiting_room as wr

KEY = wr.room_key(os.urandom(32))
NOW = 1_800_000_000.0


def admitted(**changes: object) -> wr.Ticket:
    base: dict[str, object] = dict(id="q_1", event_id="evt_a", user_id="u-1", seq=1, status=wr.TicketStatus.ADMITTED,
                                   position=1, created_at=NOW, secret_hash="x", admitted_at=NOW,
                                   pass_expires_at=NOW + 60)
    base.update(changes)
    return wr.Ticket(**base)  # type: ignore[arg-type]


# ====================================================================== passes
def test_a_pass_opens_booking_for_its_user_and_event_until_it_expires() -> None:
    token = wr.issue_pass(KEY, admitted())
    assert token is not None and token == wr.issue_pass(KEY, admitted())  # the same for every read
    assert wr.check_pass(KEY, token, event_id="evt_a", user_id="u-1", now=NOW + 59) is wr.PassVerdict.OK
    for event_id, user_id, now in (("evt_b", "u-1", NOW), ("evt_a", "u-2", NOW), ("evt_a", "u-1", NOW + 60)):
        assert wr.check_pass(KEY, token, event_id=event_id, user_id=user_id, now=now) is wr.PassVerdict.INVALID
    assert wr.check_pass(KEY, None, event_id="evt_a", user_id="u-1", now=NOW) is wr.PassVerdict.MISSING
    assert wr.check_pass(KEY, "", event_id="evt_a", user_id="u-1", now=NOW) is wr.PassVerdict.MISSING


def test_a_forged_pass_is_invalid() -> None:
    token = wr.issue_pass(KEY, admitted())
    assert token is not None
    kind, body, mac = token.split(".")
    other_key = wr.room_key(os.urandom(32))
    forged_user = wr.issue_pass(other_key, admitted())
    longer = wr.issue_pass(KEY, admitted(pass_expires_at=NOW + 3600))
    assert longer is not None
    for bad in (forged_user, f"{kind}.{longer.split('.')[1]}.{mac}", f"{kind}.{body}.{mac[:-2]}",
                f"c1.{body}.{mac}", "p1..", "p1.x.y", "garbage", "p1." + "A" * 2000 + ".x", f"{token}.extra"):
        assert wr.check_pass(KEY, bad, event_id="evt_a", user_id="u-1", now=NOW) is wr.PassVerdict.INVALID, bad
    assert wr.issue_pass(KEY, admitted(pass_expires_at=None)) is None


# ====================================================================== proofs of work
def test_a_proof_is_good_only_for_its_challenge_user_event_and_difficulty() -> None:
    challenge, expires = wr.issue_challenge(KEY, "evt_a", NOW)
    assert expires >= NOW + wr.CHALLENGE_SECONDS - 1
    proof = wr.solve(challenge, "u-1", 10)
    assert wr.leading_zero_bits(wr.proof_digest(challenge, "u-1", proof)) >= 10
    assert wr.check_proof(KEY, challenge, proof, event_id="evt_a", user_id="u-1", bits=10, now=NOW) is None
    assert wr.check_proof(KEY, None, None, event_id="evt_a", user_id="u-1", bits=0, now=NOW) is None
    assert wr.check_proof(KEY, None, proof, event_id="evt_a", user_id="u-1", bits=10, now=NOW) == "missing"
    assert "another event" in str(wr.check_proof(KEY, challenge, proof, event_id="evt_b", user_id="u-1", bits=10,
                                                 now=NOW))
    assert "expired" in str(wr.check_proof(KEY, challenge, proof, event_id="evt_a", user_id="u-1", bits=10,
                                           now=expires))
    other, _ = wr.issue_challenge(wr.room_key(os.urandom(32)), "evt_a", NOW)
    assert "not a challenge" in str(wr.check_proof(KEY, other, proof, event_id="evt_a", user_id="u-1", bits=10,
                                                   now=NOW))
    for bad in ("-1", "1e3", "١٢", "9" * 21, ""):
        assert wr.check_proof(KEY, challenge, bad, event_id="evt_a", user_id="u-1", bits=10, now=NOW) is not None
    # a harder difficulty, another user: the same proof is (almost surely) no good; find one that is not
    hard = next(b for b in range(11, 40) if wr.leading_zero_bits(wr.proof_digest(challenge, "u-1", proof)) < b)
    assert "zero bits" in str(wr.check_proof(KEY, challenge, proof, event_id="evt_a", user_id="u-1", bits=hard,
                                             now=NOW))


def test_leading_zero_bits() -> None:
    assert wr.leading_zero_bits(b"\x00\x00\xff") == 16
    assert wr.leading_zero_bits(b"\x00\x01") == 15
    assert wr.leading_zero_bits(b"\x80") == 0
    assert wr.leading_zero_bits(b"\x00" * 4) == 32


# ====================================================================== the lottery
def test_the_lottery_is_a_permutation_recomputable_from_its_seed() -> None:
    ids = [wr.new_ticket_id() for _ in range(50)]
    seed = wr.new_seed()
    order = wr.lottery_order(seed, ids)
    assert sorted(order) == sorted(ids)
    assert order == wr.lottery_order(seed, reversed(ids))  # the arrival order does not matter
    assert order != wr.lottery_order(wr.new_seed(), ids)  # 1 in 50! to fail


def test_lottery_positions_are_uniform_chi_square() -> None:
    """Each of 6 tickets lands in each of 6 positions equally often over 12,000 draws with fresh seeds,
    and every one of the 720 orders occurs (a broken shuffle often reaches only some).

    The 6 x 6 table of a permutation's draws is not a contingency table of independent samples: each cell
    is Binomial(draws, 1/6), so Pearson's X^2 has mean 36 x 5/6 = 30, and X^2 x (n-1)/n follows
    chi-square with (n-1)^2 = 25 degrees of freedom (simulated with random.shuffle, 1,500 tables: mean
    24.95). The test compares that against 65.0 (p = 2e-5: a uniform shuffle fails about once in 50,000
    runs; the unscaled X^2 against 52.62, as this test did first, failed a uniform shuffle 1.1 % of the
    time)."""
    ids = [f"q_{n}" for n in range(6)]
    draws = 12_000
    table: Counter[tuple[str, int]] = Counter()
    orders: Counter[tuple[str, ...]] = Counter()
    for _ in range(draws):
        order = wr.lottery_order(wr.new_seed(), ids)
        orders[tuple(order)] += 1
        for position, ticket_id in enumerate(order):
            table[(ticket_id, position)] += 1
    expected = draws / len(ids)
    pearson = sum((table[(t, p)] - expected) ** 2 / expected for t, p in itertools.product(ids, range(len(ids))))
    chi2 = pearson * (len(ids) - 1) / len(ids)
    assert chi2 < 65.0, chi2
    assert len(orders) == 720


# ====================================================================== admission
def test_admission_is_the_rate_the_line_and_the_seats_whichever_is_least() -> None:
    assert wr.admissions(5.7, waiting=100, outstanding=0, available=100) == 5
    assert wr.admissions(50.0, waiting=3, outstanding=0, available=100) == 3
    assert wr.admissions(50.0, waiting=100, outstanding=8, available=10) == 2
    assert wr.admissions(50.0, waiting=100, outstanding=10, available=10) == 0
    assert wr.admissions(50.0, waiting=100, outstanding=12, available=10) == 0
    assert wr.admissions(0.99, waiting=100, outstanding=0, available=10) == 0


def test_the_rate_refills_at_most_one_second_of_passes() -> None:
    line = wr.Line("evt_a", wr.WaitingRoom(admit_per_second=10), opens_at=NOW, opened=True, ticked_at=NOW)
    assert wr.refill(line, NOW + 0.25) == 2.5
    assert wr.refill(line, NOW + 60) == 10.0
    assert wr.refill(line, NOW - 5) == 0.0  # a clock that went back gives nothing
    slow = wr.Line("evt_a", wr.WaitingRoom(admit_per_second=1), opens_at=NOW, opened=True, ticked_at=NOW, credit=0.5)
    assert wr.refill(slow, NOW + 0.5) == 1.0


def test_sold_out_only_when_nothing_can_free_a_seat() -> None:
    assert wr.is_sold_out(0, 0)
    assert not wr.is_sold_out(0, 3)  # holds may lapse
    assert not wr.is_sold_out(1, 0)


def test_positions_at_join_and_what_a_ticket_shows() -> None:
    fifo = wr.Line("evt_a", wr.WaitingRoom(), opens_at=NOW + 60, last_position=4, admitted_through=1)
    assert wr.position_at_join(fifo) == 5  # fifo numbers the pre-queue in arrival order
    lottery = wr.Line("evt_a", wr.WaitingRoom(mode="lottery"), opens_at=NOW + 60, joined=7)
    assert wr.position_at_join(lottery) is None and lottery.waiting == 7
    drawn = wr.Line("evt_a", wr.WaitingRoom(mode="lottery", admit_per_second=2), opens_at=NOW, opened=True,
                    joined=7, last_position=7, admitted_through=2)
    assert wr.position_at_join(drawn) == 8 and drawn.waiting == 5
    waiting = admitted(status=wr.TicketStatus.WAITING, position=6, pass_expires_at=None)
    assert wr.ahead(waiting, drawn) == 3 and wr.eta_seconds(waiting, drawn) == 1.5
    assert wr.ahead(admitted(), drawn) == 0 and wr.eta_seconds(admitted(), drawn) == 0.0
    assert wr.ticket_status(admitted(), NOW + 60).status is wr.TicketStatus.EXPIRED
    assert wr.ticket_status(admitted(), NOW + 59).status is wr.TicketStatus.ADMITTED
    sold_out = wr.Line("evt_a", wr.WaitingRoom(), opens_at=NOW, sold_out=True)
    assert wr.status_at_join(sold_out) is wr.TicketStatus.SOLD_OUT
