"""The waiting room (docs/API.md, "Waiting room"), over HTTP, on every adapter set and both doors.

The service's clock is the harness's FakeClock: the line's rate and the passes' expiry move only when a
test advances it, and `tick` runs the admitter's step at once (the admitter task ticks as well, every
0.1 s, on the same clock), so what each tick admits is exact.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import trio
from conftest import ADMIN, Harness

from ticketblitz.domain.waiting_room import lottery_order, solve


async def room_event(h: Harness, *, seats: int = 10, rate: int = 2, mode: str = "fifo", bits: int = 0,
                     pass_seconds: int = 60, starts_in: float | None = None, max_per_user: int = 4,
                     hold_seconds: int = 60) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Waiting room night", "max_per_user": max_per_user, "hold_seconds": hold_seconds,
        "sections": [{"name": "A", "rows": 1, "seats_per_row": seats}],
        "waiting_room": {"mode": mode, "admit_per_second": rate, "pass_seconds": pass_seconds,
                         "challenge_bits": bits},
    }
    if starts_in is not None:
        body["sale_starts_at"] = dt.datetime.fromtimestamp(h.clock.now + starts_in, dt.UTC).isoformat()
    r = await h.client.post("/api/events", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def join(h: Harness, event_id: str, user: str, **extra: Any) -> httpx.Response:
    return await h.client.post(f"/api/events/{event_id}/queue", json={"user_id": user, **extra})


async def ticket(h: Harness, joined: dict[str, Any], wait: float | None = None) -> dict[str, Any]:
    params = {"wait": wait} if wait is not None else None
    r = await h.client.get(f"/api/queue/{joined['id']}", params=params,
                           headers={"Authorization": f"Bearer {joined['secret']}"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def tick(h: Harness, event_id: str, advance: float = 0.0) -> dict[str, Any]:
    h.clock.advance(advance)
    line = await h.service.waiting_room.tick(event_id)
    assert line is not None
    return line.as_json()


async def book(h: Harness, event_id: str, user: str, pass_token: str | None, quantity: int = 1) -> httpx.Response:
    headers = {"Queue-Pass": pass_token} if pass_token is not None else {}
    return h.remember(await h.client.post(f"/api/events/{event_id}/bookings",
                                          json={"user_id": user, "quantity": quantity}, headers=headers))


async def joined_all(h: Harness, event_id: str, users: list[str]) -> list[dict[str, Any]]:
    out = []
    for user in users:
        r = await join(h, event_id, user)
        assert r.status_code == 201, r.text
        out.append(r.json())
    return out


# ====================================================================== the event and the join
async def test_an_event_shows_its_waiting_room_and_one_without_shows_none(harness: Harness) -> None:
    event = await room_event(harness, mode="lottery", rate=7, bits=3, pass_seconds=45, starts_in=3600)
    assert event["waiting_room"] == {"mode": "lottery", "admit_per_second": 7, "pass_seconds": 45, "challenge_bits": 3}
    assert event["sale_starts_at"].endswith("Z")
    again = await harness.event(event["id"])
    assert again["waiting_room"] == event["waiting_room"] and again["sale_starts_at"] == event["sale_starts_at"]
    plain = await harness.create_event()
    assert "waiting_room" not in plain and "sale_starts_at" not in plain
    r = await join(harness, plain["id"], "u1")
    assert r.status_code == 409 and r.json()["code"] == "no_waiting_room"
    r = await join(harness, "evt_nope", "u1")
    assert r.status_code == 404


async def test_bad_waiting_room_settings_are_refused_by_name(harness: Harness) -> None:
    base = {"name": "x", "sections": [{"name": "A", "rows": 1, "seats_per_row": 1}]}
    cases = (({"mode": "raffle"}, "waiting_room.mode"), ({"admit_per_second": 0}, "waiting_room.admit_per_second"),
             ({"pass_seconds": 29}, "waiting_room.pass_seconds"),
             ({"challenge_bits": 25}, "waiting_room.challenge_bits"), ({"extra": 1}, "waiting_room.extra"))
    for room, field in cases:
        r = await harness.client.post("/api/events", json={**base, "waiting_room": room}, headers=ADMIN)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field
    r = await harness.client.post("/api/events", json={**base, "sale_starts_at": "2027-01-01T10:00:00"}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["field"] == "sale_starts_at"
    assert (await harness.client.get("/api/events")).json()["events"] == []


async def test_one_place_per_user_and_the_ticket_belongs_to_its_secret(harness: Harness) -> None:
    event = await room_event(harness)
    r = await join(harness, event["id"], "fan-1")
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["id"].startswith("q_") and len(first["secret"]) >= 22
    assert r.headers["location"] == f"/api/queue/{first['id']}"
    assert first["status"] == "waiting" and first["position"] == 1 and first["ahead"] == 0
    assert first["pass"] is None and first["pass_expires_at"] is None
    r = await join(harness, event["id"], "fan-1")
    assert r.status_code == 200
    assert r.json()["id"] == first["id"] and r.json()["secret"] == first["secret"]
    second = (await join(harness, event["id"], "fan-2")).json()
    assert second["position"] == 2 and second["ahead"] == 1
    read = await ticket(harness, first)
    assert "secret" not in read and read["id"] == first["id"]
    r = await harness.client.get(f"/api/queue/{first['id']}")
    assert r.status_code == 401
    r = await harness.client.get(f"/api/queue/{first['id']}", headers={"Authorization": f"Bearer {second['secret']}"})
    assert r.status_code == 404
    r = await harness.client.get("/api/queue/q_nope", headers={"Authorization": f"Bearer {first['secret']}"})
    assert r.status_code == 404
    r = await harness.client.get(f"/api/queue/{first['id']}", headers=ADMIN)
    assert r.status_code == 200
    for body in ({}, {"user_id": ""}, {"user_id": "x", "more": 1}, {"user_id": "x", "proof": "12a"}):
        r = await harness.client.post(f"/api/events/{event['id']}/queue", json=body)
        assert r.status_code == 422, (body, r.text)
    r = await harness.client.post(f"/api/events/{event['id']}/queue", content=b"user_id=x",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    line = (await harness.client.get(f"/api/events/{event['id']}/queue")).json()
    assert line["joined"] == 2 and line["waiting"] == 2 and line["admitted"] == 0


# ====================================================================== admission and passes
async def test_passes_go_out_in_order_at_the_rate_and_a_pass_opens_booking(harness: Harness) -> None:
    event = await room_event(harness, rate=2, seats=10)
    eid = event["id"]
    fans = await joined_all(harness, eid, [f"fan-{n}" for n in range(5)])
    r = await book(harness, eid, "fan-0", None)
    assert r.status_code == 403 and r.json()["code"] == "queue_required"
    line = await tick(harness, eid, advance=1.0)
    assert line["admitted_through"] == 2 and line["admitted"] == 2
    states = [await ticket(harness, f) for f in fans]
    assert [s["status"] for s in states] == ["admitted", "admitted", "waiting", "waiting", "waiting"]
    assert states[2]["ahead"] == 0 and states[4]["ahead"] == 2 and states[4]["eta_seconds"] == 1.0
    first_pass = states[0]["pass"]
    assert first_pass and states[0]["pass_expires_at"]
    # the pass is the user's, for this event only
    r = await book(harness, eid, "fan-1", first_pass)
    assert r.status_code == 403 and r.json()["code"] == "pass_invalid"
    r = await book(harness, eid, "fan-0", first_pass[:-4] + "AAAA")
    assert r.status_code == 403 and r.json()["code"] == "pass_invalid"
    other = await room_event(harness)
    r = await book(harness, other["id"], "fan-0", first_pass)
    assert r.status_code == 403 and r.json()["code"] == "pass_invalid"
    r = await book(harness, eid, "fan-0", first_pass)
    assert r.status_code == 202, r.text
    held = await harness.settle(r.json()["id"])
    assert held["status"] == "held"
    # up to max_per_user and no more
    r = await book(harness, eid, "fan-0", first_pass, quantity=3)
    assert r.status_code == 202
    r = await book(harness, eid, "fan-0", first_pass, quantity=1)
    assert r.status_code == 409 and r.json()["code"] == "limit_exceeded"
    # the next second admits the next two, in position order
    line = await tick(harness, eid, advance=1.0)
    assert line["admitted_through"] == 4
    assert [(await ticket(harness, f))["status"] for f in fans] == ["admitted"] * 4 + ["waiting"]


async def test_an_expired_pass_is_refused_and_its_ticket_reads_expired(harness: Harness) -> None:
    event = await room_event(harness, rate=1, pass_seconds=30)
    (fan,) = await joined_all(harness, event["id"], ["fan"])
    await tick(harness, event["id"], advance=1.0)
    token = (await ticket(harness, fan))["pass"]
    harness.clock.advance(31)
    r = await book(harness, event["id"], "fan", token)
    assert r.status_code == 403 and r.json()["code"] == "pass_invalid"
    assert (await ticket(harness, fan))["status"] == "expired"
    line = await tick(harness, event["id"])
    assert line["expired"] == 1 and line["outstanding"] == 0


async def test_admission_never_outruns_the_seats_and_freed_seats_go_to_the_next_in_line(harness: Harness) -> None:
    event = await room_event(harness, rate=100, seats=2, max_per_user=1)
    eid = event["id"]
    fans = await joined_all(harness, eid, [f"fan-{n}" for n in range(6)])
    line = await tick(harness, eid, advance=1.0)
    assert line["admitted_through"] == 2 and line["outstanding"] == 2  # two seats, two passes
    for _ in range(3):
        line = await tick(harness, eid, advance=1.0)
    assert line["admitted_through"] == 2
    ids = []
    for fan in fans[:2]:
        r = await book(harness, eid, fan["user_id"], (await ticket(harness, fan))["pass"])
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    held = [await harness.settle(i) for i in ids]
    assert {b["status"] for b in held} == {"held"}
    line = await tick(harness, eid, advance=1.0)
    assert line["admitted_through"] == 2 and line["outstanding"] == 0 and not line["sold_out"]  # holds may lapse
    assert (await harness.cancel(ids[0])).status_code == 200
    line = await tick(harness, eid, advance=1.0)
    assert line["admitted_through"] == 3  # exactly the freed seat, to the next in line
    assert [(await ticket(harness, f))["status"] for f in fans] == ["admitted"] * 3 + ["waiting"] * 3
    # the third buys the freed seat, both buy for good: nothing can free a seat any more
    r = await book(harness, eid, "fan-2", (await ticket(harness, fans[2]))["pass"])
    third = await harness.settle(r.json()["id"])
    assert third["status"] == "held"
    for booking_id in (ids[1], third["id"]):
        assert (await harness.confirm(booking_id)).status_code == 200
    line = await tick(harness, eid, advance=1.0)
    assert line["sold_out"] and line["waiting"] == 0 and line["admitted_through"] == 3
    assert [(await ticket(harness, f))["status"] for f in fans[3:]] == ["sold_out"] * 3
    late = (await join(harness, eid, "late-fan")).json()
    assert late["status"] == "sold_out"
    line = await tick(harness, eid, advance=5.0)
    assert line["admitted"] == 3  # nobody admitted after sold out


async def test_a_lapsed_hold_gives_its_seat_to_the_next_in_line(harness: Harness) -> None:
    event = await room_event(harness, rate=100, seats=1, max_per_user=1, hold_seconds=5, pass_seconds=300)
    eid = event["id"]
    fans = await joined_all(harness, eid, ["first", "second", "third"])
    await tick(harness, eid, advance=1.0)
    r = await book(harness, eid, "first", (await ticket(harness, fans[0]))["pass"])
    assert (await harness.settle(r.json()["id"]))["status"] == "held"
    line = await tick(harness, eid, advance=1.0)
    assert line["admitted_through"] == 1 and not line["sold_out"]
    harness.clock.advance(6)  # the hold lapses; the sweeper expires it within its interval
    with trio.fail_after(10):
        while (await harness.event(eid))["counts"]["available"] != 1:  # noqa: ASYNC110 - the store's count
            await trio.sleep(0.05)
    line = await tick(harness, eid, advance=0.1)
    assert line["admitted_through"] == 2  # the freed seat, to the next in line, and only to them
    assert [(await ticket(harness, f))["status"] for f in fans] == ["admitted", "admitted", "waiting"]


async def test_losing_redis_loses_no_place_in_line(harness: Harness) -> None:
    """The line lives in the store (SQLite, PostgreSQL), never only in Redis: a Redis that comes back
    empty (FLUSHDB: what a restart without persistence leaves) changes no position and no pass."""
    event = await room_event(harness, rate=2, seats=10)
    eid = event["id"]
    fans = await joined_all(harness, eid, [f"fan-{n}" for n in range(5)])
    await tick(harness, eid, advance=1.0)
    before = [await ticket(harness, f) for f in fans]
    if harness.service.settings.redis_url:
        import redis

        redis.Redis.from_url(harness.service.settings.redis_url).flushdb()
    after = [await ticket(harness, f) for f in fans]
    assert [(t["position"], t["status"], t["pass"]) for t in after] == [
        (t["position"], t["status"], t["pass"]) for t in before]
    line = await tick(harness, eid, advance=1.0)
    assert line["admitted_through"] == 4 and line["joined"] == 5
    again = (await join(harness, eid, "fan-0")).json()
    assert again["id"] == fans[0]["id"] and again["position"] == 1


async def test_a_long_poll_answers_when_the_ticket_is_admitted(harness: Harness) -> None:
    event = await room_event(harness, rate=1)
    fans = await joined_all(harness, event["id"], ["a", "b"])
    got: dict[str, Any] = {}
    answered = trio.Event()

    async def poll() -> None:
        got["b"] = await ticket(harness, fans[1], wait=20)
        answered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(0.3)
        await tick(harness, event["id"], advance=1.0)  # admits a
        await trio.sleep(0.3)
        assert "b" not in got
        harness.clock.advance(1.0)  # the admitter task admits b within a tick
        with trio.fail_after(10):
            await answered.wait()
    assert got["b"]["status"] == "admitted" and got["b"]["pass"]


# ====================================================================== order: lottery and the proof of work
async def test_a_lottery_draws_the_pre_queue_at_opening_and_later_fans_queue_behind(harness: Harness) -> None:
    event = await room_event(harness, mode="lottery", rate=1, starts_in=60)
    eid = event["id"]
    early = await joined_all(harness, eid, [f"early-{n}" for n in range(12)])
    assert {f["position"] for f in early} == {None}
    assert all(f["ahead"] is None and f["eta_seconds"] is None for f in early)
    line = await tick(harness, eid)
    assert not line["open"] and line["waiting"] == 12 and line["lottery_seed"] is None
    r = await book(harness, eid, "early-0", None)
    assert r.status_code == 403
    line = await tick(harness, eid, advance=61)
    assert line["open"] and line["lottery_seed"]
    positions = {f["id"]: (await ticket(harness, f))["position"] for f in early}
    assert sorted(positions.values()) == list(range(1, 13))
    # anyone can recompute the draw from the published seed
    assert sorted(positions, key=lambda t: positions[t]) == lottery_order(line["lottery_seed"], list(positions))
    late = (await join(harness, eid, "late")).json()
    assert late["position"] == 13


async def test_a_proof_of_work_is_asked_and_checked(harness: Harness) -> None:
    event = await room_event(harness, bits=8)
    eid = event["id"]
    r = await join(harness, eid, "fan")
    assert r.status_code == 422 and r.json()["code"] == "proof_required"
    c = (await harness.client.get(f"/api/events/{eid}/queue/challenge")).json()
    assert c["bits"] == 8 and c["event_id"] == eid
    proof = solve(c["challenge"], "fan", 8)
    wrong = next(str(n) for n in range(100_000) if not _good(c["challenge"], "fan", str(n), 8))
    r = await join(harness, eid, "fan", challenge=c["challenge"], proof=wrong)
    assert r.status_code == 422 and r.json()["code"] == "proof_invalid"
    stranger = next(f"other-{n}" for n in range(1000) if not _good(c["challenge"], f"other-{n}", proof, 8))
    r = await join(harness, eid, stranger, challenge=c["challenge"], proof=proof)
    assert r.status_code == 422 and r.json()["code"] == "proof_invalid"  # a proof is one user's
    other = await room_event(harness, bits=8)
    r = await join(harness, other["id"], "fan", challenge=c["challenge"], proof=proof)
    assert r.status_code == 422 and "another event" in r.json()["detail"]
    r = await join(harness, eid, "fan", challenge=c["challenge"], proof=proof)
    assert r.status_code == 201, r.text
    plain = await harness.create_event()
    r = await harness.client.get(f"/api/events/{plain['id']}/queue/challenge")
    assert r.status_code == 409


def _good(challenge: str, user: str, proof: str, bits: int) -> bool:
    from ticketblitz.domain.waiting_room import leading_zero_bits, proof_digest

    return leading_zero_bits(proof_digest(challenge, user, proof)) >= bits


async def test_a_sale_start_without_a_waiting_room_refuses_early_bookings(harness: Harness) -> None:
    body = {"name": "Later", "sections": [{"name": "A", "rows": 1, "seats_per_row": 5}],
            "sale_starts_at": dt.datetime.fromtimestamp(harness.clock.now + 60, dt.UTC).isoformat()}
    event = (await harness.client.post("/api/events", json=body, headers=ADMIN)).json()
    r = await book(harness, event["id"], "fan", None)
    assert r.status_code == 403 and r.json()["code"] == "sale_not_started"
    harness.clock.advance(61)
    r = await book(harness, event["id"], "fan", None)
    assert r.status_code == 202, r.text


# ====================================================================== telemetry
async def test_the_line_is_shown_live_and_counted_in_stats_and_metrics(harness: Harness) -> None:
    from contract.test_telemetry import Reader
    from prometheus_client.parser import text_string_to_metric_families
    from trio_websocket import open_websocket_url

    event = await room_event(harness, rate=100, seats=2, max_per_user=1)
    eid = event["id"]
    url = harness.url.replace("http://", "ws://") + f"/ws?event={eid}"
    async with open_websocket_url(url) as ws, trio.open_nursery() as nursery:
        snapshot = json.loads(await ws.get_message())
        assert snapshot["type"] == "snapshot" and "waiting_rooms" in snapshot
        reader = Reader(ws)
        nursery.start_soon(reader.run)
        fans = await joined_all(harness, eid, [f"fan-{n}" for n in range(5)])
        harness.clock.advance(1.0)  # the admitter task admits two (two seats)
        moved = await reader.until(lambda f: f["type"] == "waiting_room" and f.get("admitted_through") == 2)
        frame = moved[0]
        assert {"event_id", "mode", "open", "joined", "waiting", "admitted", "admitted_through", "outstanding",
                "expired", "sold_out", "admits", "joins"} <= set(frame)
        assert frame["joined"] == 5 and frame["waiting"] == 3 and frame["outstanding"] == 2
        stats = await reader.until(lambda f: f["type"] == "stats" and f["totals"].get("waiting_room", {}).get(
            "admitted") == 2)
        assert {"joins_per_s", "admits_per_s", "queue_waiting"} <= set(stats[0])
        assert stats[0]["totals"]["waiting_room"]["joined"] == 5
        # both buy for good: the rest are told sold out at once, in one broadcast
        for fan in fans[:2]:
            r = await book(harness, eid, fan["user_id"], (await ticket(harness, fan))["pass"])
            booking = await harness.settle(r.json()["id"])
            assert (await harness.confirm(booking["id"])).status_code == 200
        harness.clock.advance(0.5)
        sold = await reader.until(lambda f: f["type"] == "waiting_room" and f.get("action") == "sold_out")
        assert sold[0]["count"] == 3 and sold[0]["event_id"] == eid
        nursery.cancel_scope.cancel()
    text = (await harness.client.get("/metrics")).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    assert samples["ticketblitz_queue_joins_total"] == 5
    assert samples["ticketblitz_queue_admits_total"] == 2
    assert "ticketblitz_queue_waiting" in samples


async def test_a_read_of_the_line_counts_the_join_it_follows(harness: Harness) -> None:
    """The public line may be two ticks old, but never older than a join this process just answered: a
    fan who got its 201 is in the `joined` of the next read (a tick's view, then a join, then a read)."""
    event = await room_event(harness)
    eid = event["id"]
    for n in range(5):
        await tick(harness, eid)
        r = await join(harness, eid, f"fan-{n}")
        assert r.status_code == 201, r.text
        line = (await harness.client.get(f"/api/events/{eid}/queue")).json()
        assert line["joined"] == n + 1 and line["waiting"] == n + 1, line
