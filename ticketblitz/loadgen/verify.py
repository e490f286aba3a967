"""API.md's invariants over the final state of the event a run booked: counts, seat map, bookings,
and oversold = 0 (no seat in two held or confirmed bookings), all read back from the server."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from .burst import BurstSummary

REJECT_REASONS = {"seat_unavailable", "sold_out", "limit_exceeded"}


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class Verification:
    ok: bool
    counts: dict[str, int]
    seat_map: dict[str, int]
    accepted: int
    held: int
    held_seats: int
    rejected: dict[str, int]
    still_pending: int
    oversold: int
    checks: list[Check]
    warnings: list[str]


def verify(event: dict[str, Any], seats: list[dict[str, Any]], bookings: dict[str, dict[str, Any]],
           undecided: list[str], seats_asked: int, burst: BurstSummary) -> Verification:
    """API.md's invariants over one event that only this run booked: every booking of the event is one
    the burst got back, so the seat map must be exactly what those bookings hold."""
    counts = event["counts"]
    capacity = event["capacity"]
    tally = Counter(s["status"] for s in seats)
    seat_map = {k: tally.get(k, 0) for k in ("available", "held", "sold")}
    statuses = Counter(b["status"] for b in bookings.values())
    owning = [b for b in bookings.values() if b["status"] in ("held", "confirmed")]
    claims = Counter(seat for b in owning for seat in b["seat_ids"])
    oversold = sum(1 for n in claims.values() if n > 1)
    held_bookings = [b for b in owning if b["status"] == "held"]
    held_seats = {seat for b in held_bookings for seat in b["seat_ids"]}
    map_held = {s["id"] for s in seats if s["status"] == "held"}
    rejected = Counter(b.get("reason") or "?" for b in bookings.values() if b["status"] == "rejected")
    per_user: Counter[str] = Counter()
    for b in owning:
        per_user[b["user_id"]] += len(b["seat_ids"])

    def check(name: str, ok: bool, detail: str) -> Check:
        return Check(name, bool(ok), detail)

    checks = [
        check("capacity", capacity == seats_asked == len(seats),
              f"capacity {capacity}, asked {seats_asked}, seat map {len(seats)}"),
        check("counts sum to capacity", sum(counts.values()) == capacity, f"{counts} vs {capacity}"),
        check("counts equal seat map", counts == seat_map, f"counts {counts}, seat map {seat_map}"),
        check("held+sold <= capacity", counts["held"] + counts["sold"] <= capacity, f"{counts}"),
        check("held bookings' seats = counts.held", sum(len(b["seat_ids"]) for b in held_bookings) == counts["held"],
              f"{sum(len(b['seat_ids']) for b in held_bookings)} seats in held bookings, counts.held {counts['held']}"),
        check("held seats = seat map's held seats", held_seats == map_held,
              f"{len(held_seats - map_held)} held by bookings only, {len(map_held - held_seats)} held in map only"),
        check("no seat in two bookings (oversold)", oversold == 0, f"{oversold} seats claimed more than once"),
        check("every booking has its quantity of seats",
              all(len(b["seat_ids"]) == b["quantity"] for b in owning), "held/confirmed seat_ids vs quantity"),
        check("no user over max_per_user", max(per_user.values(), default=0) <= event["max_per_user"],
              f"most seats for one user: {max(per_user.values(), default=0)}"),
        check("rejections give a reason", set(rejected) <= REJECT_REASONS, f"reasons {dict(rejected)}"),
        check("every 2xx carried a booking", burst.success_without_booking == 0,
              f"{burst.success_without_booking} 2xx answers without a booking"),
        check("every 202 left pending", not undecided and statuses.get("pending", 0) == 0,
              f"{len(undecided)} still pending or unread"),
    ]
    warnings = []
    turned_away_sold_out = burst.problem_codes.get("sold_out", 0)
    if counts["available"] and turned_away_sold_out:
        warnings.append(f"{turned_away_sold_out} fans were told sold_out while {counts['available']} seats "
                        "are still available")
    return Verification(
        ok=all(c.ok for c in checks), counts=dict(counts), seat_map=seat_map, accepted=len(bookings),
        held=statuses.get("held", 0), held_seats=len(held_seats), rejected=dict(rejected),
        still_pending=len(undecided), oversold=oversold, checks=checks, warnings=warnings,
    )
