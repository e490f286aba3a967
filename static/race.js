// The race demo: N fans want one seat, through each of the original's three routes, side by side.
import { getJSON, postJSON } from "./api.js";

export const STRATEGIES = [
  { key: "naive", route: "/api/book-naive" },
  { key: "secure", route: "/api/book-secure" },
  { key: "async", route: "/api/book-async" },
];
const WON = new Set(["held", "confirmed"]);

function table(rows, head) {
  const t = document.createElement("table");
  const tr = document.createElement("tr");
  for (const h of head) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = h;
    tr.append(th);
  }
  t.append(tr);
  for (const row of rows) {
    const r = document.createElement("tr");
    for (const cell of row) {
      const td = document.createElement("td");
      td.textContent = cell;
      r.append(td);
    }
    t.append(r);
  }
  return t;
}

const tally = (items) => items.reduce((acc, k) => ({ ...acc, [k]: (acc[k] || 0) + 1 }), {});

/** Three different available seats of the event, as {id, number} (number: 1-based position in the seat map). */
export async function pickSeats(eventId, count = 3) {
  const r = await getJSON(`/api/events/${encodeURIComponent(eventId)}/seats`);
  if (r.status !== 200) throw new Error(`seat map: HTTP ${r.status}`);
  const free = [];
  r.body.seats.forEach((s, i) => { if (s.status === "available") free.push({ id: s.id, number: i + 1 }); });
  if (free.length < count) throw new Error(`only ${free.length} seats are available in this event`);
  const chosen = [];
  while (chosen.length < count) {
    const pick = free.splice(Math.floor(Math.random() * free.length), 1)[0];
    chosen.push(pick);
  }
  return chosen;
}

async function runStrategy(strategy, eventId, seat, n, runId) {
  const started = performance.now();
  const answers = await Promise.all(Array.from({ length: n }, (_, i) => postJSON(strategy.route, {
    userId: `race-${runId}-${strategy.key}-${i + 1}`, seatNumber: seat.number, eventId,
  }).catch((e) => ({ status: "network", body: { detail: String(e) } }))));
  const answeredMs = Math.round(performance.now() - started);
  // every booking an answer created, with its secret; then its final status (long-polled while pending)
  const bookings = answers.map((a) => (a.body && a.body.booking) || null).filter(Boolean);
  const finals = await Promise.all(bookings.map(async (b) => {
    let current = b;
    for (let tries = 0; current.status === "pending" && tries < 3; tries++) {
      const r = await getJSON(`/api/bookings/${encodeURIComponent(b.id)}?wait=10`, { bearer: b.secret });
      if (r.status !== 200) return { ...current, status: `HTTP ${r.status}` };
      current = r.body;
    }
    if (strategy.key !== "async" && current === b) {
      const r = await getJSON(`/api/bookings/${encodeURIComponent(b.id)}`, { bearer: b.secret });
      if (r.status === 200) current = r.body;
    }
    return current;
  }));
  const winners = finals.filter((b) => WON.has(b.status) && b.seat_ids.includes(seat.id));
  return {
    seat, n, answeredMs,
    codes: tally(answers.map((a) => String(a.status))),
    problems: tally(answers.filter((a) => a.status >= 400).map((a) => a.body?.code || "?")),
    statuses: tally(finals.map((b) => b.status + (b.reason ? ` (${b.reason})` : ""))),
    winners,
  };
}

function show(article, result) {
  const out = article.querySelector(".outcome");
  const one = result.winners.length === 1;
  article.dataset.state = "done";
  article.dataset.winners = String(result.winners.length);
  article.dataset.seat = result.seat.id;
  const verdict = document.createElement("p");
  verdict.className = `verdict ${one ? "ok" : "bad"}`;
  verdict.textContent = one
    ? `Exactly one winner for seat ${result.seat.id}: ${result.winners[0].user_id}`
    : `${result.winners.length} winners for seat ${result.seat.id}`;
  const answers = table(Object.entries(result.codes).map(([code, n]) => [code, String(n),
    code === "200" ? "booked (held)" : code === "202" ? "queued" : code === "409" ? "taken" : code === "429" ? "lock busy" : ""]),
  ["answer", "count", ""]);
  const finals = table(Object.entries(result.statuses).map(([s, n]) => [s, String(n)]), ["booking status", "count"]);
  const note = document.createElement("p");
  note.className = "small muted";
  const refused = Object.entries(result.problems).map(([c, k]) => `${c}×${k}`).join(", ");
  note.textContent = `${result.n} requests answered in ${result.answeredMs} ms`
    + (refused ? `; refusals: ${refused} (a refused request creates no booking)` : "");
  out.replaceChildren(verdict, answers, finals, note);
}

export function setupRace({ form, nInput, status, articles, currentEvent, refusal = () => null, onDone }) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const eventId = currentEvent();
    const why = refusal();
    if (why) {
      status.textContent = `Not run: ${why}.`;
      return;
    }
    const n = Math.max(2, Math.min(200, Number(nInput.value) || 20));
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    for (const a of Object.values(articles)) {
      a.dataset.state = "running";
      delete a.dataset.winners;
      a.querySelector(".outcome").textContent = "waiting…";
    }
    try {
      const seats = await pickSeats(eventId);
      const runId = Math.random().toString(36).slice(2, 8);
      for (const [i, strategy] of STRATEGIES.entries()) {
        status.textContent = `${strategy.route}: ${n} requests for seat ${seats[i].id}…`;
        articles[strategy.key].querySelector(".outcome").textContent = `firing ${n} requests at seat ${seats[i].id}…`;
        show(articles[strategy.key], await runStrategy(strategy, eventId, seats[i], n, runId));
      }
      const winners = Object.values(articles).map((a) => a.dataset.winners);
      status.textContent = `Done: winners per strategy ${winners.join(" / ")} (naive / secure / async). `
        + "Your browser sends at most ~6 requests at a time to one server, so that many race truly at once.";
    } catch (err) {
      status.textContent = `Race failed: ${err.message}`;
      for (const a of Object.values(articles)) a.dataset.state = "failed";
    } finally {
      button.disabled = false;
      onDone();
    }
  });
}
