// TicketBlitz Engineering Visualizer: wires the /ws frames and the HTTP API to the page's parts.
// Every number shown comes from the server; the page only counts and draws what it is told.
import { Telemetry, adminToken, getJSON, setAdminToken, tokenFromFragment } from "./api.js";
import { SeriesChart } from "./charts.js";
import { FlashSale } from "./flash.js";
import { EventLog, seatsOf } from "./log.js";
import { Pipeline } from "./pipeline.js";
import { setupRace } from "./race.js";
import { SeatMap, STATUSES, expandCompact } from "./seatmap.js";
import { StatsReader } from "./stats.js";
import { WaitingRoom } from "./waitingroom.js";

const $ = (id) => document.getElementById(id);
const CHECK_EVERY_MS = 3000;
const WAITING_ROOM_CHECK_MS = 1000;  // GET …/queue while a waiting-room event is shown (frames may be dropped)
const DECISION_STATUSES = ["pending", "held", "confirmed", "rejected", "expired", "cancelled"];

const state = {
  events: new Map(),  // id -> event (API shape, or the `event` frame's members until fetched)
  selected: null,
  loading: null,      // a promise while the seat map loads
  pendingSeats: [],   // seat frames that arrived while it loaded
  mismatches: 0,
  clockOffset: 0,     // the server's clock minus this browser's, from the frames' `ts` (ms)
};

/** Now on the server's clock (ms), as far as its frames tell: for the waiting room's countdown. */
const serverNow = () => Date.now() + state.clockOffset;

// ------------------------------------------------------------------ theme
const THEMES = ["auto", "light", "dark"];
function applyTheme(mode) {
  if (mode === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = mode;
  const button = $("theme-toggle");
  button.textContent = { auto: "◐ auto", light: "☀ light", dark: "☾ dark" }[mode];
  button.setAttribute("aria-label", `Colour theme: ${mode === "auto" ? "follows the system" : mode}. Change`);
  localStorage.setItem("ticketblitz-theme", mode);
  seatMap?.readColours();
  for (const c of charts) c.retheme();
}

// ------------------------------------------------------------------ parts
const seatMap = new SeatMap($("seatmap"), $("seat-tip"), $("seat-hover"));
const pipeline = new Pipeline($("pipeline"), $("pipeline-note"));
const statsReader = new StatsReader();
const charts = [
  new SeriesChart($("chart-requests")),
  new SeriesChart($("chart-decisions")),
  new SeriesChart($("chart-latency"), { unit: " ms", fixedKeys: ["p50", "p99"] }),
  new SeriesChart($("chart-waiting-room"), { fixedKeys: ["joins/s", "admits/s"] }),
];
const waitingRoom = new WaitingRoom({
  panel: $("wr-panel"), policy: $("wr-policy"), state: $("wr-state"), badge: $("wr-badge"), numbers: $("wr-numbers"),
  canvas: $("wr-line"), rates: $("wr-rates"), check: $("wr-check"),
}, { chart: charts[3], serverNow });
const log = new EventLog({
  list: $("log-list"), count: $("log-count"), kind: $("log-kind"), seat: $("log-seat"),
  thisEvent: $("log-this-event"), pause: $("log-pause"), clear: $("log-clear"),
}, () => state.selected);
const flash = new FlashSale({
  form: $("flash-form"), users: $("flash-users"), seats: $("flash-seats"), route: $("flash-route"),
  button: $("flash-run"), hint: $("flash-hint"), progress: $("flash-progress"), status: $("flash-status"),
  summary: $("flash-summary"),
  waitingRoom: { enabled: $("flash-wr"), mode: $("flash-wr-mode"), rate: $("flash-wr-rate"), bits: $("flash-wr-bits"),
    opens: $("flash-wr-opens") },
}, {
  onStarted: async (eventId) => {
    await ensureEvent(eventId);
    await selectEvent(eventId);
  },
  onFinished: (eventId) => {
    // the final word comes from the API: re-read counts and seat map once the last decisions are in
    setTimeout(() => { if (eventId === state.selected) resync(); }, 1500);
  },
});

// ------------------------------------------------------------------ events and the seat map
function eventLabel(e) {
  return `${e.name ?? e.id} (${(e.capacity ?? 0).toLocaleString()} seats)`;
}

function renderSelector() {
  const select = $("event-select");
  const options = [...state.events.values()].map((e) => {
    const o = document.createElement("option");
    o.value = e.id;
    o.textContent = eventLabel(e);
    return o;
  });
  select.replaceChildren(...options);
  if (state.selected) select.value = state.selected;
}

async function ensureEvent(id) {
  if (state.events.has(id) && state.events.get(id).sections) return;
  const r = await getJSON(`/api/events/${encodeURIComponent(id)}`);
  if (r.status === 200) {
    state.events.set(id, r.body);
    renderSelector();
  }
}

async function selectEvent(id) {
  if (!id) return;
  const changed = id !== state.selected;
  state.selected = id;
  sessionStorage.setItem("ticketblitz-event", id);
  renderSelector();
  await ensureEvent(id).catch(() => {});  // an `event` frame's members lack the waiting room
  if (id !== state.selected) return;
  const e = state.events.get(id);
  $("event-name").textContent = e ? `— ${e.name ?? id}` : "";
  waitingRoom.select(e);
  if (changed) flash.selected(e);
  await loadSeats();
  log.render();
}

async function loadSeats() {
  const id = state.selected;
  state.pendingSeats = [];
  const run = (async () => {
    const r = await getJSON(`/api/events/${encodeURIComponent(id)}/seats?form=compact`);
    if (r.status !== 200 || id !== state.selected) return;
    seatMap.load(id, expandCompact(r.body.sections));
    for (const f of state.pendingSeats) if (f.event_id === id) seatMap.apply(seatsOf(f), f.status);
    state.pendingSeats = [];
    showCounts();
  })();
  state.loading = run;
  try {
    await run;
  } finally {
    if (state.loading === run) state.loading = null;
  }
  await checkCounts();
}

function showCounts() {
  for (const s of STATUSES) $(`count-${s}`).textContent = seatMap.counts[s].toLocaleString();
  $("count-capacity").textContent = seatMap.n.toLocaleString();
  const counts = $("seat-counts");
  counts.dataset.event = state.selected || "";
  for (const s of STATUSES) counts.dataset[s] = String(seatMap.counts[s]);
}

/** Compare the page's counts with GET /api/events/{id}; twice different in a row: reload the seat map. */
async function checkCounts() {
  const id = state.selected;
  if (!id || state.loading) return;
  let r;
  try {
    r = await getJSON(`/api/events/${encodeURIComponent(id)}`);
  } catch {
    return;
  }
  if (r.status !== 200 || id !== state.selected || state.loading) return;
  state.events.set(id, r.body);
  if (Boolean(r.body.waiting_room) !== Boolean(waitingRoom.eventId === id)) waitingRoom.select(r.body);
  const api = r.body.counts;
  const same = STATUSES.every((s) => api[s] === seatMap.counts[s]);
  const line = $("counts-check");
  const time = new Date().toLocaleTimeString();
  if (same) {
    state.mismatches = 0;
    line.textContent = `✓ equal to GET /api/events/${id} (checked ${time})`;
    line.className = "small ok";
    line.dataset.agree = "true";
  } else {
    state.mismatches += 1;
    line.dataset.agree = "false";
    line.className = "small muted";
    line.textContent = `API says ${STATUSES.map((s) => `${s} ${api[s]}`).join(", ")} (${time}); `
      + (state.mismatches >= 2 ? "reloading the seat map" : "changes in flight, checking again");
    if (state.mismatches >= 2) {
      state.mismatches = 0;
      await loadSeats();
    }
  }
}

function resync() {
  state.mismatches = 0;
  return loadSeats();
}

// ------------------------------------------------------------------ frames
function onStats(frame) {
  const s = statsReader.read(frame);
  waitingRoom.stats(frame);
  pipeline.update(s);
  charts[0].push(s.t, s.requests);
  charts[1].push(s.t, s.decisions);
  charts[2].push(s.t, { p50: s.p50, p99: s.p99 });
  const dl = $("decisions");
  const keys = [...new Set([...DECISION_STATUSES, ...Object.keys(s.bookingTotals)])];
  dl.replaceChildren(...keys.map((k) => {
    const div = document.createElement("div");
    const dt = document.createElement("dt");
    dt.textContent = k === "pending" ? "accepted (pending)" : k;
    const dd = document.createElement("dd");
    dd.textContent = (s.bookingTotals[k] || 0).toLocaleString();
    dd.dataset.status = k;
    div.append(dt, dd);
    return div;
  }));
}

function onFrame(f) {
  const ts = Date.parse(f.ts);
  if (ts && (f.type === "stats" || f.type === "snapshot")) state.clockOffset = ts - Date.now();
  switch (f.type) {
    case "snapshot": {
      for (const e of f.events || []) state.events.set(e.id, e);
      waitingRoom.snapshot(f.waiting_rooms);
      if (f.stats) onStats(f.stats);
      const wanted = state.selected || sessionStorage.getItem("ticketblitz-event");
      const pick = state.events.has(wanted) ? wanted : state.events.has("evt_demo") ? "evt_demo" : state.events.keys().next().value;
      renderSelector();
      if (pick) selectEvent(pick);  // also after a reconnect: frames may have been missed
      break;
    }
    case "stats":
      onStats(f);
      break;
    case "event":
      if (!state.events.has(f.event_id)) {
        state.events.set(f.event_id, { id: f.event_id, name: f.name, capacity: f.capacity });
        renderSelector();
      }
      break;
    case "seat":
      if (f.event_id === state.selected) {
        if (state.loading) state.pendingSeats.push(f);
        else if (seatMap.apply(seatsOf(f), f.status)) showCounts();
      }
      break;
    case "loadgen":
      flash.frame(f);
      break;
    case "waiting_room":
      waitingRoom.frame(f);
      break;
    case "auth":
      $("auth-state").textContent = f.ok ? "admin ✓" : "token refused";
      $("auth-state").className = f.ok ? "ok" : "bad";
      break;
    default:
      break;
  }
  if (f.type !== "stats") statsReader.see(f);
  if (f.type !== "snapshot" || !log.entries.length) log.add(f.type === "snapshot" ? { ...f, stats: undefined } : f);
}

const telemetry = new Telemetry({
  onFrame,
  onState: (s, wait) => {
    const pill = $("conn");
    pill.dataset.state = s;
    pill.textContent = s === "live" ? "live" : s === "down" ? `disconnected, retrying in ${Math.ceil(wait / 1000)} s` : "connecting…";
  },
});

// ------------------------------------------------------------------ controls
function tokenChanged() {
  const has = Boolean(adminToken());
  $("admin-token").value = adminToken();
  $("auth-state").textContent = has ? "checking…" : "anonymous";
  $("auth-state").className = "muted";
  $("lookup-run").disabled = !has;
  flash.tokenChanged();
  telemetry.connect();  // the token goes in the first frame
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setAdminToken($("admin-token").value.trim());
  tokenChanged();
});
$("token-clear").addEventListener("click", () => {
  setAdminToken("");
  tokenChanged();
});
$("theme-toggle").addEventListener("click", () => {
  const now = localStorage.getItem("ticketblitz-theme") || "auto";
  applyTheme(THEMES[(THEMES.indexOf(now) + 1) % THEMES.length]);
});
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
  seatMap.readColours();
  for (const c of charts) c.retheme();
});
$("event-select").addEventListener("change", (e) => selectEvent(e.target.value));
$("zoom-in").addEventListener("click", () => seatMap.zoom(1.5));
$("zoom-out").addEventListener("click", () => seatMap.zoom(1 / 1.5));
$("zoom-fit").addEventListener("click", () => seatMap.fit());

$("lookup-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = $("lookup-id").value.trim();
  const out = $("lookup-out");
  if (!id) return;
  try {
    const r = await getJSON(`/api/bookings/${encodeURIComponent(id)}`, { bearer: adminToken() });
    out.textContent = `HTTP ${r.status}\n${typeof r.body === "string" ? r.body : JSON.stringify(r.body, null, 2)}`;
  } catch (err) {
    out.textContent = `request failed: ${err.message}`;
  }
});

setupRace({
  form: $("race-form"), nInput: $("race-n"), status: $("race-status"),
  articles: { naive: $("race-naive"), secure: $("race-secure"), async: $("race-async") },
  currentEvent: () => state.selected,
  // the original's routes need a Queue-Pass on such an event (API 1.2): every fan would be refused 403
  refusal: () => (state.events.get(state.selected)?.waiting_room
    ? "this event has a waiting room: its booking routes want a Queue-Pass; select an event without one" : null),
  onDone: () => checkCounts(),
});

// ------------------------------------------------------------------ start
applyTheme(localStorage.getItem("ticketblitz-theme") || "auto");
tokenFromFragment();
tokenChanged();
setInterval(checkCounts, CHECK_EVERY_MS);
setInterval(() => waitingRoom.check(), WAITING_ROOM_CHECK_MS);
