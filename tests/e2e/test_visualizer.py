"""The visualizer at `/` in a real headless Chromium (Debian's `chromium`, driven by Playwright; no browser
download), against a real `ticketblitz serve --demo` process (embedded adapters).

- the page loads with no console errors, takes the admin token from `#admin=…` and removes it from the URL;
- the seat map draws the 10,000-seat demo event, hover names a seat, and after real bookings (held and sold)
  the map's counts, the counters and `GET /api/events/{id}` agree;
- the race demo: each of /api/book-naive, /api/book-secure, /api/book-async ends with exactly one winner,
  and the three seats are held in the API's seat map;
- screenshots for the README: docs/visualizer.png (light), docs/visualizer-dark.png, docs/race-demo.png;
- a flash sale started from the page (2,000 fans, 300 seats): the page switches to its event, shows the
  burst in progress (screenshot docs/flash-sale.png) and, once the `loadgen` frames say finished, the seat
  map, the counters and the log's seat frames agree with `GET /api/events/{id}` and its seat map, and the
  page's summary says oversold 0;
- the waiting room (API 1.2): on an event with one (50 seats, admits 200/s), fans of this test join the
  pre-queue, get their passes, book and confirm (some cancel, which admits the next in line); the page's
  panel counts down to `sale_starts_at`, follows the line (admitted_through grows, in steps), turns SOLD OUT
  when the `waiting_room` frame says so and ends equal to `GET /api/events/{id}/queue` (screenshot
  docs/waiting-room.png); and a waiting-room flash sale started from the page's control (300 fans, 50 seats)
  ends sold out with oversold 0.

Chromium logs every 4xx answer a `fetch` gets as a console error ("Failed to load resource"); the race demo's
409/429 refusals are the expected answers of the losing requests and are the only console errors allowed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from playwright import sync_api  # the dev extra (make install); it drives the system Chromium

TOKEN = "visualizer-admin-token"
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
VIEWPORT = {"width": 1366, "height": 768}
# the losing requests of the race demo: Chromium reports their answers as console errors
EXPECTED_REFUSAL = re.compile(r"^Failed to load resource: the server responded with a status of (409|429)\b")
RACE_ROUTES = ("/api/book-naive", "/api/book-secure", "/api/book-async")



def free_port() -> int:
    """A free port of 127.0.0.1: the first free one of `TB_TEST_PORTS` (`LOW-HIGH`) when set, else any."""
    low, _, high = os.environ.get("TB_TEST_PORTS", "").partition("-")
    for port in range(int(low), int(high) + 1) if low and high else [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError(f"no free port in TB_TEST_PORTS={os.environ['TB_TEST_PORTS']}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m ticketblitz serve --demo` on a port of its own, stopped by PID afterwards."""
    data = tmp_path_factory.mktemp("visualizer")
    port = free_port()
    # a 2 s shutdown grace (the default is 10 s): nothing here is about draining, and after any /ws session a
    # SIGTERM waits out the whole grace (tests/e2e/test_process.py is where draining on SIGTERM is proved)
    env = {**os.environ, "TICKETBLITZ_ADMIN_TOKEN": TOKEN, "TICKETBLITZ_SHUTDOWN_GRACE": "2"}
    for name in ("TICKETBLITZ_DATABASE_URL", "TICKETBLITZ_REDIS_URL", "TICKETBLITZ_KAFKA_BOOTSTRAP"):
        env.pop(name, None)  # the embedded default
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "ticketblitz", "serve", "--demo", "--port", str(port),
                             "--data-dir", str(data / "data")], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (data / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/api/events/evt_demo", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start in 30 s"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:  # a failure, never a skip: scripts/test.sh installs it (apt-get install chromium)
        pytest.fail("no `chromium` on PATH: apt-get install chromium (scripts/test.sh does)", pytrace=False)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


class Console:
    """Every console error and uncaught exception of a page, minus the race demo's expected refusals."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", self.message)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def message(self, msg: Any) -> None:
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "")
        if EXPECTED_REFUSAL.match(msg.text) and url.endswith(RACE_ROUTES):
            return
        self.errors.append(f"{msg.text} ({url})")


def open_page(browser: Any, url: str, scheme: str = "light") -> tuple[Any, Any, Console]:
    context = browser.new_context(viewport=VIEWPORT, color_scheme=scheme)
    page = context.new_page()
    console = Console(page)
    page.goto(f"{url}/#admin={TOKEN}")
    page.wait_for_selector("#conn[data-state=live]", timeout=15000)
    page.wait_for_selector("#auth-state.ok", timeout=10000)
    return context, page, console


def page_counts(page: Any) -> dict[str, Any]:
    """The seat map's counts (data attributes of the counters) and the numbers the counters show."""
    return page.evaluate("""() => {
        const d = document.getElementById('seat-counts').dataset;
        const shown = (s) => Number(document.getElementById('count-' + s).textContent.replace(/[^0-9]/g, ''));
        const map = document.getElementById('seatmap').dataset;
        return {event: d.event, map: {available: +d.available, held: +d.held, sold: +d.sold},
                shown: {available: shown('available'), held: shown('held'), sold: shown('sold')},
                seats: +map.seats, rendered: +(map.rendered || 0)};
    }""")


def wait_agreement(page: Any, url: str, event_id: str, timeout: float = 20.0) -> dict[str, int]:
    """Wait until the page's seat map and counters equal GET /api/events/{id}; the API's counts."""
    deadline = time.monotonic() + timeout
    while True:
        api = httpx.get(f"{url}/api/events/{event_id}").json()["counts"]
        counts = page_counts(page)
        if counts["event"] == event_id and counts["map"] == api and counts["shown"] == api:
            return dict(api)
        assert time.monotonic() < deadline, f"page {counts} vs API {api}"
        page.wait_for_timeout(300)


def drawn_pixels(page: Any) -> dict[str, int]:
    """How many canvas pixels have each seat colour (the palette read from the page's CSS)."""
    return page.evaluate("""() => {
        const c = document.getElementById('seatmap');
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const probe = document.createElement('canvas').getContext('2d');
        const rgb = (name) => {
            probe.fillStyle = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
            const h = probe.fillStyle; return [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16));
        };
        const out = {};
        for (const s of ['available', 'held', 'sold']) {
            const [r, g, b] = rgb('--' + s); let n = 0;
            for (let i = 0; i < data.length; i += 4) if (data[i] === r && data[i+1] === g && data[i+2] === b) n++;
            out[s] = n;
        }
        return out;
    }""")


def book_some(url: str, held: int, sold: int) -> None:
    """Real bookings on the demo event, so that the map shows every colour: `held` seats, `sold` confirmed."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(held + sold):
            r = client.post("/api/events/evt_demo/bookings", json={"user_id": f"fan-{i}", "quantity": 1})
            assert r.status_code == 202, r.text
            booking = r.json()
            auth = {"Authorization": f"Bearer {booking['secret']}"}
            done = client.get(f"/api/bookings/{booking['id']}", params={"wait": 10}, headers=auth).json()
            assert done["status"] == "held", done
            if i < sold:
                assert client.post(f"/api/bookings/{booking['id']}/confirm", headers=auth).status_code == 200


def test_seat_map_race_demo_and_screenshots(server: str, browser: Any) -> None:
    context, page, console = open_page(browser, server)
    try:
        assert "#admin" not in page.url, "the token must leave the address bar"
        assert page.evaluate("sessionStorage.getItem('ticketblitz-admin-token')") == TOKEN

        # the seat map draws the demo event, and hover names a seat
        assert wait_agreement(page, server, "evt_demo") == {"available": 10000, "held": 0, "sold": 0}
        counts = page_counts(page)
        assert counts["seats"] == 10000 and counts["rendered"] > 0
        assert drawn_pixels(page)["available"] > 10000
        box = page.locator("#seatmap").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert re.fullmatch(r"A-\d+-\d+ · available", page.locator("#seat-tip").inner_text())
        page.locator("#seatmap").focus()  # keyboard: zoom and fit from the focused canvas
        page.keyboard.press("+")
        page.keyboard.press("0")

        # real bookings reach the page through /ws: map, counters and API agree
        book_some(server, held=60, sold=90)
        assert wait_agreement(page, server, "evt_demo") == {"available": 9850, "held": 60, "sold": 90}
        page.mouse.move(0, 0)
        page.wait_for_timeout(1500)  # the flashes fade
        pixels = drawn_pixels(page)
        assert pixels["held"] > 0 and pixels["sold"] > 0, pixels

        # the race demo: exactly one winner per strategy, and the API agrees
        page.fill("#race-n", "20")
        page.click("#race-run")
        page.wait_for_function("""() => ['naive', 'secure', 'async'].every(
            k => document.getElementById('race-' + k).dataset.state === 'done')""", timeout=60000)
        seats = httpx.get(f"{server}/api/events/evt_demo/seats").json()["seats"]
        status = {s["id"]: s["status"] for s in seats}
        raced = set()
        for strategy in ("naive", "secure", "async"):
            article = page.locator(f"#race-{strategy}")
            assert article.get_attribute("data-winners") == "1", article.inner_text()
            assert "Exactly one winner" in article.inner_text()
            seat = article.get_attribute("data-seat")
            assert status[seat] == "held", (strategy, seat, status[seat])
            raced.add(seat)
        assert len(raced) == 3, "each strategy races for a seat of its own"
        async_text = page.locator("#race-async").inner_text()
        assert "rejected (seat_unavailable)\t19" in async_text, async_text
        assert wait_agreement(page, server, "evt_demo") == {"available": 9847, "held": 63, "sold": 90}
        page.wait_for_timeout(1500)

        DOCS.mkdir(exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(200)
        page.screenshot(path=str(DOCS / "visualizer.png"))
        page.locator("section.race").screenshot(path=str(DOCS / "race-demo.png"))
        page.emulate_media(color_scheme="dark")
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(600)
        assert page.evaluate("getComputedStyle(document.documentElement).colorScheme") == "dark"
        page.screenshot(path=str(DOCS / "visualizer-dark.png"))
        page.click("#theme-toggle")  # auto -> light: the toggle overrides the system
        assert page.evaluate("document.documentElement.dataset.theme") == "light"
        assert page.evaluate("getComputedStyle(document.documentElement).colorScheme") == "light"
        page.evaluate("localStorage.removeItem('ticketblitz-theme')")

        assert console.errors == []
    finally:
        context.close()


SALE_SEATS = 300  # 2,000 fans for 300 seats: long enough for the page to show the burst in progress


def test_flash_sale_from_the_page(server: str, browser: Any) -> None:
    """Needs the flash-sale endpoint and `loadgen`/coalesced `seat` frames (spec/telemetry.md)."""
    context, page, console = open_page(browser, server)
    try:
        wait_agreement(page, server, "evt_demo")
        page.fill("#flash-users", "2000")
        page.fill("#flash-seats", str(SALE_SEATS))
        page.click("#flash-run")
        page.wait_for_selector("#flash-status[data-state=started], #flash-status[data-state=refused]", timeout=15000)
        assert page.get_attribute("#flash-status", "data-state") == "started", page.inner_text("#flash-status")
        # the README's picture of a sale in progress: taken once the page shows the burst's progress
        page.wait_for_selector("#flash-status[data-state=progress], #flash-status[data-state=finished]",
                               timeout=60000)
        page.evaluate("window.scrollTo(0, 0)")  # the button is at the bottom; the picture is of the sale
        page.wait_for_timeout(300)
        page.screenshot(path=str(DOCS / "flash-sale.png"))
        page.wait_for_selector("#flash-status[data-state=finished]", timeout=130000)
        event_id = page.evaluate("document.getElementById('seat-counts').dataset.event")
        assert event_id and event_id != "evt_demo", "the page switches to the flash sale's event"
        assert page.get_attribute("#flash-summary table", "data-oversold") == "0"

        api = wait_agreement(page, server, event_id, timeout=30)
        assert sum(api.values()) == SALE_SEATS and api["available"] < SALE_SEATS, api
        assert page_counts(page)["seats"] == SALE_SEATS
        seat_map = {s["id"]: s["status"]
                    for s in httpx.get(f"{server}/api/events/{event_id}/seats").json()["seats"]}

        # the log's seat frames of that event, replayed oldest first, end where the API's seat map is
        page.select_option("#log-kind", "seat")
        page.check("#log-this-event")
        page.wait_for_timeout(400)
        entries = page.evaluate("""() => [...document.querySelectorAll('#log-list li[data-kind=seat]')]
            .map(li => ({event: li.dataset.event, status: li.dataset.status,
                         seats: (li.dataset.seats || '').split(' ')}))""")
        assert entries, "the log shows the sale's seat changes"
        replayed = dict.fromkeys(seat_map, "available")
        for entry in reversed(entries):  # the log lists the newest first
            assert entry["event"] == event_id
            for seat in entry["seats"]:
                replayed[seat] = entry["status"]
        assert replayed == seat_map
        page.select_option("#log-kind", "loadgen")
        page.wait_for_timeout(400)
        assert page.locator("#log-list li[data-kind=loadgen]").filter(has_text="finished").count() >= 1
        assert console.errors == []
    finally:
        context.close()


# ---------------------------------------------------------------------- the waiting room (API 1.2)

WR_SEATS, WR_FANS, WR_RATE = 50, 300, 200
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def create_waiting_room_event(url: str, opens_in: float) -> dict[str, Any]:
    """A 50-seat event (5 rows of 10) whose waiting room opens `opens_in` seconds from now."""
    starts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + opens_in))
    body = {"name": "Waiting room: 300 fans, 50 seats", "venue": "browser test", "max_per_user": 1,
            "sections": [{"name": "A", "rows": 5, "seats_per_row": 10, "price_cents": 0}],
            "sale_starts_at": starts,
            "waiting_room": {"mode": "fifo", "admit_per_second": WR_RATE, "pass_seconds": 120, "challenge_bits": 0}}
    r = httpx.post(f"{url}/api/events", json=body, headers=ADMIN, timeout=10)
    assert r.status_code == 201, r.text
    event: dict[str, Any] = r.json()
    assert event["waiting_room"]["admit_per_second"] == WR_RATE and event["sale_starts_at"], event
    return event


class Fans:
    """WR_FANS fans through the waiting room of one event, on a thread of their own (trio + httpx): all join
    (in the pre-queue), then each waits for its pass, books one seat with it and confirms, except every
    fifth, which cancels its hold (a seat available again: the next in line is admitted). What each ends with
    is kept in `outcome` (fan -> final state) and `answers` (refusals seen)."""

    def __init__(self, url: str, event_id: str) -> None:
        self.url, self.event_id = url, event_id
        self.joined = threading.Event()
        self.outcome: dict[int, str] = {}
        self.answers: dict[str, int] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="fans", daemon=True)

    def start(self) -> Fans:
        self.thread.start()
        return self

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the fans did not finish in {timeout} s: {self.outcome}"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            trio.run(self._all)
        except BaseException as exc:  # reported by wait()
            self.error = exc

    def _seen(self, r: httpx.Response) -> None:
        problem = r.status_code >= 400 and r.headers.get("content-type", "").endswith("json")
        code = r.json().get("code", "") if problem else ""
        key = f"{r.request.method} {r.status_code}{f' {code}' if code else ''}"
        self.answers[key] = self.answers.get(key, 0) + 1

    async def _all(self) -> None:
        limits = httpx.Limits(max_connections=WR_FANS + 10, max_keepalive_connections=WR_FANS + 10)
        async with httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(40, pool=None), limits=limits) as c:
            tickets: dict[int, dict[str, Any]] = {}

            async def join(i: int) -> None:
                r = await c.post(f"/api/events/{self.event_id}/queue", json={"user_id": f"wr-fan-{i}"})
                self._seen(r)
                assert r.status_code == 201, r.text
                tickets[i] = r.json()

            async with trio.open_nursery() as nursery:
                for i in range(WR_FANS):
                    nursery.start_soon(join, i)
            self.joined.set()
            async with trio.open_nursery() as nursery:
                for i, ticket in tickets.items():
                    nursery.start_soon(self._fan, c, i, ticket)

    async def _fan(self, c: httpx.AsyncClient, i: int, ticket: dict[str, Any]) -> None:
        auth = {"Authorization": f"Bearer {ticket['secret']}"}
        with trio.fail_after(100):
            while ticket["status"] == "waiting":
                r = await c.get(f"/api/queue/{ticket['id']}", params={"wait": 10}, headers=auth)
                self._seen(r)
                if r.status_code == 429:
                    await trio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                assert r.status_code == 200, r.text
                ticket = {**r.json(), "secret": ticket["secret"]}
            if ticket["status"] != "admitted":
                self.outcome[i] = ticket["status"]  # sold_out (or expired)
                return
            while True:
                r = await c.post(f"/api/events/{self.event_id}/bookings",
                                 json={"user_id": f"wr-fan-{i}", "quantity": 1}, headers={"Queue-Pass": ticket["pass"]})
                self._seen(r)
                if r.status_code == 202:
                    break
                # the edge's 409 sold_out is a forecast: while others' holds may still be cancelled, a pass holder
                # tries again (its pass stays outstanding, so the line waits for it) until the line sold out
                line = (await c.get(f"/api/events/{self.event_id}/queue")).json()
                if r.status_code not in (409, 429, 503) or line["sold_out"]:
                    self.outcome[i] = f"refused {r.status_code} {r.json().get('code')}"
                    return
                await trio.sleep(0.2)
            booking = r.json()
            mine = {"Authorization": f"Bearer {booking['secret']}"}
            while booking["status"] == "pending":
                r = await c.get(f"/api/bookings/{booking['id']}", params={"wait": 10}, headers=mine)
                self._seen(r)
                booking = r.json()
            if booking["status"] != "held":
                self.outcome[i] = f"booking {booking['status']} {booking.get('reason')}"
                return
            await trio.sleep(0.05 * (i % 7))  # fans decide at their own pace
            action = "cancel" if i % 5 == 0 else "confirm"
            r = await c.post(f"/api/bookings/{booking['id']}/{action}", headers=mine)
            self._seen(r)
            assert r.status_code == 200, r.text
            self.outcome[i] = r.json()["status"]


def panel(page: Any) -> dict[str, str]:
    """The waiting-room panel's data attributes (the numbers it shows) and its state line."""
    return page.evaluate("""() => {
        const p = document.getElementById('wr-panel');
        return {...p.dataset, hidden: String(p.hidden), state: document.getElementById('wr-state').dataset.state || '',
                text: document.getElementById('wr-state').textContent,
                secondsLeft: document.getElementById('wr-state').dataset.secondsLeft || '',
                badge: String(!document.getElementById('wr-badge').hidden),
                cells: document.getElementById('wr-line').dataset.cells || '',
                passed: document.getElementById('wr-line').dataset.passed || '',
                check: document.getElementById('wr-check').dataset.agree || ''};
    }""")


WATCH_FRONT = """() => {  // every admitted_through the panel showed, in order
    window.wrFront = [];
    const p = document.getElementById('wr-panel');
    new MutationObserver(() => {
        const v = p.dataset.admittedThrough;
        if (v && v !== '0' && window.wrFront[window.wrFront.length - 1] !== v) window.wrFront.push(v);
    }).observe(p, {attributes: true, attributeFilter: ['data-admitted-through']});
}"""


def select_event(page: Any, event_id: str) -> None:
    page.wait_for_selector(f"#event-select option[value='{event_id}']", state="attached", timeout=15000)
    page.select_option("#event-select", event_id)
    page.wait_for_selector(f"#wr-panel[data-event='{event_id}']:not([hidden])", timeout=15000)


def queue_of(url: str, event_id: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/api/events/{event_id}/queue", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_line_agreement(page: Any, url: str, event_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the panel's numbers equal GET /api/events/{id}/queue; the API's line."""
    keys = {"joined": "joined", "waiting": "waiting", "admitted": "admitted", "outstanding": "outstanding",
            "expired": "expired", "admitted_through": "admittedThrough"}
    deadline = time.monotonic() + timeout
    while True:
        api, shown = queue_of(url, event_id), panel(page)
        if all(shown.get(attr) == str(api[k]) for k, attr in keys.items()) \
                and shown["soldOut"] == str(api["sold_out"]).lower():
            return api
        assert time.monotonic() < deadline, f"panel {shown} vs API {api}"
        page.wait_for_timeout(300)


def test_waiting_room_panel_follows_the_line(server: str, browser: Any) -> None:
    """Needs the waiting room (API 1.2) on the server: `waiting_room` frames, GET …/queue, passes."""
    context = browser.new_context(viewport={"width": 1366, "height": 1100}, color_scheme="light")
    page = context.new_page()
    console = Console(page)
    try:
        page.goto(f"{server}/#admin={TOKEN}")
        page.wait_for_selector("#conn[data-state=live]", timeout=15000)
        # serve --demo's waiting-room event: the panel shows its line, and the flash-sale form takes its policy
        select_event(page, "evt_queue_demo")
        wait_line_agreement(page, server, "evt_queue_demo")
        assert "challenge 8 bits" in page.inner_text("#wr-policy")
        assert page.is_checked("#flash-wr") and page.input_value("#flash-wr-bits") == "8"
        page.select_option("#event-select", "evt_demo")
        page.wait_for_selector("#wr-panel[hidden]", state="attached", timeout=10000)
        assert not page.is_checked("#flash-wr")
        event = create_waiting_room_event(server, opens_in=15)
        event_id = event["id"]
        select_event(page, event_id)
        page.evaluate(WATCH_FRONT)
        page.wait_for_function("() => document.getElementById('wr-state').dataset.state === 'pre-queue'",
                               timeout=10000)
        shown = panel(page)
        assert shown["mode"] == "fifo" and shown["open"] == "false", shown
        assert "opens in" in shown["text"] and 0 < int(shown["secondsLeft"] or 0) <= 15, shown
        assert "admits ≤ 200/s" in page.inner_text("#wr-policy")

        fans = Fans(server, event_id).start()
        assert fans.joined.wait(30), "the fans could not join in 30 s"  # about 5 s on a busy 2-core machine
        # the whole line is in the pre-queue: the page shows 300 joined, nobody admitted
        line = wait_line_agreement(page, server, event_id)
        assert line["joined"] == WR_FANS and line["admitted_through"] == 0 and not line["open"], line
        assert panel(page)["cells"] == str(WR_FANS)

        # the sale opens: the front moves (in steps: 200/s, never more passes out than seats available)
        page.wait_for_function("() => document.getElementById('wr-state').dataset.state !== 'pre-queue'",
                               timeout=20000)
        try:
            page.wait_for_selector("#wr-badge:not([hidden])", timeout=60000)
        except sync_api.TimeoutError:
            outcomes: dict[str, int] = {}
            for o in fans.outcome.values():
                outcomes[o] = outcomes.get(o, 0) + 1
            event_now = httpx.get(f"{server}/api/events/{event_id}").json()
            pytest.fail(f"not sold out after 60 s: panel {panel(page)}, API {queue_of(server, event_id)}, counts "
                        f"{event_now['counts']}, fans {outcomes} ({WR_FANS - len(fans.outcome)} not done), "
                        f"answers {fans.answers}")
        fans.wait(60)
        front = [int(v) for v in page.evaluate("window.wrFront")]
        assert len(front) >= 3 and front == sorted(front) and front[0] > 0, front
        assert front[-1] > WR_SEATS, f"cancelled holds admit the next in line: {front}"

        # sold out: every seat sold, the rest of the line turned sold out at once (the frame's count)
        shown = panel(page)
        assert shown["state"] == "sold_out" and shown["soldOut"] == "true", shown
        line = wait_line_agreement(page, server, event_id)
        assert line["sold_out"] and line["waiting"] == 0, line
        assert int(shown["soldOutCount"]) == WR_FANS - line["admitted_through"], (shown, line)
        assert "turned sold out at once" in shown["text"]
        assert panel(page)["passed"] == str(line["admitted_through"])
        sold = [i for i, o in fans.outcome.items() if o == "sold_out"]
        assert len(sold) == int(shown["soldOutCount"]), (len(sold), shown, fans.answers)
        counts = httpx.get(f"{server}/api/events/{event_id}").json()["counts"]
        assert counts == {"available": 0, "held": 0, "sold": WR_SEATS}, counts
        assert sum(1 for o in fans.outcome.values() if o == "confirmed") == WR_SEATS, fans.outcome

        # the log names the sold-out frame
        page.select_option("#log-kind", "waiting_room")
        page.wait_for_timeout(400)
        sold_out_lines = page.locator("#log-list li[data-kind=waiting_room]").filter(
            has_text=re.compile(r"SOLD OUT: \d+ waiting"))
        assert sold_out_lines.count() == 1, page.inner_text("#log-list")

        page.select_option("#log-kind", "")
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(1200)  # the front's highlight fades
        page.screenshot(path=str(DOCS / "waiting-room.png"))
        assert console.errors == [], console.errors
    finally:
        context.close()


def test_waiting_room_flash_sale_from_the_page(server: str, browser: Any) -> None:
    """The flash-sale control with "through a waiting room": the server creates a 50-seat event with a waiting
    room and runs `ticketblitz flash-sale --waiting-room` (300 fans); the page follows it to SOLD OUT."""
    context, page, console = open_page(browser, server)
    try:
        page.fill("#flash-users", str(WR_FANS))
        page.fill("#flash-seats", str(WR_SEATS))
        page.check("#flash-wr")
        page.fill("#flash-wr-rate", str(WR_RATE))
        page.fill("#flash-wr-opens", "3")
        page.click("#flash-run")
        page.wait_for_selector("#flash-status[data-state=started], #flash-status[data-state=refused]", timeout=15000)
        assert page.get_attribute("#flash-status", "data-state") == "started", page.inner_text("#flash-status")
        assert page.get_attribute("#flash-status", "data-waiting-room") == "true"
        page.wait_for_selector("#wr-panel:not([hidden])", timeout=15000)
        event_id = page.get_attribute("#wr-panel", "data-event")
        assert event_id and event_id != "evt_demo"
        page.evaluate(WATCH_FRONT)
        page.wait_for_selector("#flash-status[data-state=finished], #flash-status[data-state=failed]", timeout=130000)
        assert page.get_attribute("#flash-status", "data-state") == "finished", page.inner_text("#flash-status")
        assert page.get_attribute("#flash-summary table", "data-oversold") == "0"
        front = [int(v) for v in page.evaluate("window.wrFront")]
        assert front and front == sorted(front) and front[-1] >= WR_SEATS, front
        # the load generator confirms every hold: every seat sold, the rest of the line sold out at once
        page.wait_for_selector("#wr-badge:not([hidden])", timeout=10000)
        line = wait_line_agreement(page, server, event_id, timeout=30)
        assert line["joined"] == WR_FANS and line["sold_out"] and line["waiting"] == 0, line
        shown = panel(page)
        assert shown["state"] == "sold_out" and int(shown["soldOutCount"]) == WR_FANS - line["admitted_through"], shown
        counts = httpx.get(f"{server}/api/events/{event_id}").json()["counts"]
        assert counts == {"available": 0, "held": 0, "sold": WR_SEATS}, counts
        assert "confirmed" in page.inner_text("#flash-summary")
        assert console.errors == [], console.errors
    finally:
        context.close()
