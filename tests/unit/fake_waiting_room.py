"""A small in-memory stand-in for the waiting room of docs/API.md (1.2), just enough of the contract for the
load generator's end-to-end unit test: events, the line (fifo), challenges, tickets with long polls,
passes, bookings decided at once, confirm, holds that lapse. NOT the server: it checks the client."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import time
from datetime import UTC, datetime
from typing import Any

import trio
from quart import request
from quart_trio import QuartTrio

from ticketblitz.loadgen.pow import verify

TOKEN = "fake-admin"
KEY = b"fake-key"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def problem(status: int, code: str) -> tuple[dict[str, Any], int]:
    return {"type": "about:blank", "title": code, "status": status, "code": code}, status


class Fake:
    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.tickets: dict[str, dict[str, Any]] = {}
        self.bookings: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.changed = trio.Event()
        self.requests = 0

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def counts(self, e: dict[str, Any]) -> dict[str, int]:
        values = list(e["seats"].values())
        return {k: values.count(k) for k in ("available", "held", "sold")}

    def event_json(self, e: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in e.items() if k not in ("seats", "line", "budget")} | {"counts": self.counts(e)}

    def line(self, e: dict[str, Any]) -> dict[str, Any]:
        tickets = [self.tickets[t] for t in e["line"]]
        by = {s: sum(1 for t in tickets if t["status"] == s) for s in ("waiting", "admitted", "expired", "sold_out")}
        outstanding = sum(1 for t in tickets if t["status"] == "admitted" and not t["used"])
        through = max((t["position"] for t in tickets if t["status"] in ("admitted", "expired")), default=0)
        return {"event_id": e["id"], "mode": "fifo", "open": True, "sold_out": e["sold_out"], "joined": len(tickets),
                "waiting": by["waiting"], "admitted": by["admitted"], "outstanding": outstanding,
                "expired": by["expired"], "admitted_through": through, "lottery_seed": None}

    def tick(self, dt: float) -> None:
        now = time.time()
        changed = False
        for b in self.bookings.values():
            if b["status"] == "held" and b["expires"] < now:
                b["status"] = "expired"
                for s in b["seat_ids"]:
                    self.events[b["event_id"]]["seats"][s] = "available"
                changed = True
        for e in self.events.values():
            room = e.get("waiting_room")
            if not room or e["sold_out"]:
                continue
            for t in (self.tickets[t] for t in e["line"]):
                if t["status"] == "admitted" and t["pass_expires"] < now:
                    t["status"], changed = "expired", True
            counts = self.counts(e)
            if counts["available"] == 0 and counts["held"] == 0:
                for t in (self.tickets[t] for t in e["line"]):
                    if t["status"] == "waiting":
                        t["status"] = "sold_out"
                e["sold_out"], changed = True, True
                continue
            e["budget"] = min(e["budget"] + room["admit_per_second"] * dt, room["admit_per_second"])
            outstanding = self.line(e)["outstanding"]
            for t in (self.tickets[t] for t in e["line"]):
                if e["budget"] < 1 or outstanding >= counts["available"]:
                    break
                if t["status"] == "waiting":
                    t["status"], t["pass_expires"] = "admitted", now + room["pass_seconds"]
                    t["pass"] = t["id"] + "." + hmac.new(KEY, t["id"].encode(), hashlib.sha256).hexdigest()
                    e["budget"] -= 1
                    outstanding += 1
                    changed = True
        if changed:
            self.notify()

    def ticket_json(self, t: dict[str, Any]) -> dict[str, Any]:
        admitted = t["status"] == "admitted"
        return {"id": t["id"], "event_id": t["event_id"], "user_id": t["user_id"], "status": t["status"],
                "position": t["position"], "ahead": None, "eta_seconds": None,
                "pass": t["pass"] if admitted else None,
                "pass_expires_at": iso(t["pass_expires"]) if admitted else None, "created_at": iso(t["created"])}


def make_app(fake: Fake) -> QuartTrio:
    app = QuartTrio("fake")

    @app.before_request
    async def count() -> None:
        fake.requests += 1

    @app.post("/api/events")
    async def create() -> Any:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return problem(401, "unauthorized")
        body = await request.get_json()
        eid = f"evt_{next(fake.ids)}"
        section = body["sections"][0]
        seats = {f"A-{r}-{n}": "available" for r in range(1, section["rows"] + 1)
                 for n in range(1, section["seats_per_row"] + 1)}
        e = {"id": eid, "name": body["name"], "capacity": len(seats), "max_per_user": body["max_per_user"],
             "hold_seconds": body["hold_seconds"], "sections": body["sections"], "seats": seats, "line": [],
             "sold_out": False, "budget": 0.0}
        if "waiting_room" in body:
            e["waiting_room"] = body["waiting_room"]
        fake.events[eid] = e
        return fake.event_json(e), 201

    @app.get("/api/events/<eid>")
    async def event(eid: str) -> Any:
        return fake.event_json(fake.events[eid])

    @app.get("/api/events/<eid>/seats")
    async def seats(eid: str) -> Any:
        return {"event_id": eid, "seats": [{"id": s, "status": v} for s, v in fake.events[eid]["seats"].items()]}

    @app.get("/api/events/<eid>/queue/challenge")
    async def challenge(eid: str) -> Any:
        e = fake.events[eid]
        return {"event_id": eid, "challenge": f"ch-{eid}", "bits": e["waiting_room"]["challenge_bits"],
                "expires_at": iso(time.time() + 120)}

    @app.get("/api/events/<eid>/queue")
    async def line(eid: str) -> Any:
        return fake.line(fake.events[eid])

    @app.post("/api/events/<eid>/queue")
    async def join(eid: str) -> Any:
        e = fake.events[eid]
        body = await request.get_json()
        bits = e["waiting_room"]["challenge_bits"]
        if bits and not verify(body.get("challenge", ""), body["user_id"], body.get("proof", "x"), bits):
            return problem(422, "proof_invalid")
        for tid in e["line"]:
            if fake.tickets[tid]["user_id"] == body["user_id"]:
                return fake.ticket_json(fake.tickets[tid]) | {"secret": fake.tickets[tid]["secret"]}, 200
        tid = f"q_{next(fake.ids)}"
        t = {"id": tid, "event_id": eid, "user_id": body["user_id"], "status": "sold_out" if e["sold_out"] else
             "waiting", "position": len(e["line"]) + 1, "pass": None, "pass_expires": 0.0, "used": False,
             "created": time.time(), "secret": f"s-{tid}"}
        fake.tickets[tid] = t
        e["line"].append(tid)
        return fake.ticket_json(t) | {"secret": t["secret"]}, 201

    @app.get("/api/queue/<tid>")
    async def ticket(tid: str) -> Any:
        t = fake.tickets[tid]
        if request.headers.get("Authorization") != f"Bearer {t['secret']}":
            return problem(404, "not_found")
        before = (t["status"], t["position"])
        with trio.move_on_after(float(request.args.get("wait", 0))):
            while (t["status"], t["position"]) == before:
                await fake.changed.wait()
        return fake.ticket_json(t)

    @app.post("/api/events/<eid>/bookings")
    async def book(eid: str) -> Any:
        e = fake.events[eid]
        body = await request.get_json()
        if e.get("waiting_room"):
            given = request.headers.get("Queue-Pass")
            if not given:
                return problem(403, "queue_required")
            t = fake.tickets.get(given.split(".")[0])
            if t is None or t["pass"] != given or t["user_id"] != body["user_id"] or t["status"] != "admitted":
                return problem(403, "pass_invalid")
            t["used"] = True
        free = [s for s, v in e["seats"].items() if v == "available"][: body["quantity"]]
        if len(free) < body["quantity"]:
            return problem(409, "sold_out")
        for s in free:
            e["seats"][s] = "held"
        bid = f"bkg_{next(fake.ids)}"
        fake.bookings[bid] = {"id": bid, "event_id": eid, "user_id": body["user_id"], "seat_ids": free,
                              "quantity": body["quantity"], "status": "held", "reason": None,
                              "expires": time.time() + e["hold_seconds"], "secret": f"s-{bid}",
                              "updated_at": iso(time.time())}
        fake.notify()
        return booking_json(fake.bookings[bid]) | {"status": "pending", "seat_ids": [],
                                                    "secret": fake.bookings[bid]["secret"]}, 202

    def booking_json(b: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in b.items() if k not in ("expires", "secret")}

    def owner(b: dict[str, Any]) -> bool:
        return request.headers.get("Authorization") in (f"Bearer {b['secret']}", f"Bearer {TOKEN}")

    @app.get("/api/bookings/<bid>")
    async def booking(bid: str) -> Any:
        b = fake.bookings[bid]
        return booking_json(b) if owner(b) else problem(404, "not_found")

    @app.post("/api/bookings/<bid>/confirm")
    async def confirm(bid: str) -> Any:
        b = fake.bookings[bid]
        if not owner(b):
            return problem(404, "not_found")
        if b["status"] == "held":
            b["status"] = "confirmed"
            for s in b["seat_ids"]:
                fake.events[b["event_id"]]["seats"][s] = "sold"
        fake.notify()
        return booking_json(b)

    return app


async def serve(fake: Fake, port: int, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.keep_alive_timeout = 30
    config.loglevel = "WARNING"
    config.accesslog = None

    async def ticker() -> None:
        while True:
            await trio.sleep(0.02)
            fake.tick(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await nursery.start(hypercorn_serve, make_app(fake), config)
        task_status.started()
