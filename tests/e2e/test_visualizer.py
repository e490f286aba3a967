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
  page's summary says oversold 0.

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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright import sync_api  # the dev extra (make install); it drives the system Chromium

TOKEN = "visualizer-admin-token"
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
VIEWPORT = {"width": 1366, "height": 768}
# the losing requests of the race demo: Chromium reports their answers as console errors
EXPECTED_REFUSAL = re.compile(r"^Failed to load resource: the server responded with a status of (409|429)\b")
RACE_ROUTES = ("/api/book-naive", "/api/book-secure", "/api/book-async")



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m ticketblitz serve --demo` on a port of its own, stopped by PID afterwards."""
    data = tmp_path_factory.mktemp("visualizer")
    port = free_port()
    env = {**os.environ, "TICKETBLITZ_ADMIN_TOKEN": TOKEN}
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
