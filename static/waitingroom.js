// The waiting room of the selected event (API 1.2): the line in the server's public numbers — from the
// `waiting_room` frames, the snapshot's `waiting_rooms` and `GET /api/events/{id}/queue` — and a picture
// of it: one cell per position, in order, those the admission front has passed filled.
// Nothing here is estimated: every number shown is the last one the server sent.
import { getJSON } from "./api.js";
import { fmtRate } from "./stats.js";

// the line's public numbers (GET …/queue and the frames share them)
const NUMBERS = ["joined", "waiting", "admitted", "outstanding", "expired", "admitted_through"];
const FLAGS = ["open", "sold_out"];
const FRONT_MS = 900;   // how long the cells the front just passed stay highlighted
const MAX_CELL = 18;    // px: a short line is drawn in big cells, a long one down to 1 px per position

function cssColour(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888888";
}

const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString());

/** "1:05" for 65 s, "12 s" under a minute. */
function countdown(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** A rate from `stats`: a number, or per event (then the selected event's, else their sum). */
function rateOf(value, eventId) {
  if (value === null || value === undefined) return null;
  if (typeof value === "number") return value;
  if (typeof value === "object") {
    if (eventId in value) return Number(value[eventId]) || 0;
    return Object.values(value).reduce((a, v) => a + (Number(v) || 0), 0);
  }
  return null;
}

export class WaitingRoom {
  constructor(el, { chart, serverNow }) {
    this.el = el;  // {panel, policy, state, badge, numbers, canvas, legend, rates, check}
    this.chart = chart;
    this.serverNow = serverNow;
    this.lines = new Map();   // event id -> last line seen (frames, snapshot, GET)
    this.soldOut = new Map(); // event id -> the sold_out frame's members
    this.event = null;        // the selected event (API shape), when it has a waiting room
    this.seq = 0;             // waiting_room frames of the selected event seen
    this.front = null;        // {from, to, at}: the cells the admission front just passed
    this.rates = { joins: null, admits: null, waiting: null };
    this.raf = null;
    this.checking = false;
    this.ctx = el.canvas.getContext("2d");
    new ResizeObserver(() => this.draw()).observe(el.canvas);
    setInterval(() => this.tick(), 250);
  }

  get eventId() {
    return this.event ? this.event.id : null;
  }

  /** The page selected event `e` (API shape, or null): show the panel when it has a waiting room. */
  select(e) {
    const has = Boolean(e && e.waiting_room);
    const same = has && this.event && this.event.id === e.id;
    this.event = has ? e : null;
    this.el.panel.hidden = !has;
    this.el.panel.dataset.event = has ? e.id : "";
    document.querySelector("main").classList.toggle("has-waiting-room", has);
    if (!has) return;
    if (!same) {
      this.seq = 0;
      this.front = null;
      this.el.check.textContent = "not yet checked with the API";
      this.el.check.className = "small muted";
      delete this.el.check.dataset.agree;
    }
    this.render();
    if (!same) this.check();
  }

  /** `snapshot.waiting_rooms`: the line of every event with a waiting room (a list, or keyed by event). */
  snapshot(rooms) {
    if (!rooms) return;
    const list = Array.isArray(rooms) ? rooms : Object.entries(rooms).map(([id, r]) => ({ event_id: id, ...r }));
    for (const r of list) if (r && r.event_id) this.merge(r.event_id, r, "snapshot");
    if (this.event) this.render();
  }

  /** A `waiting_room` frame: the line after an admitter tick, or `action: "sold_out"` once. */
  frame(f) {
    if (!f.event_id) return;
    if (f.action === "sold_out") {
      this.soldOut.set(f.event_id, { count: f.count ?? null, ts: f.ts });
      this.merge(f.event_id, { ...f, sold_out: true }, "frame");
    } else {
      this.merge(f.event_id, f, "frame");
    }
    if (f.event_id === this.eventId) {
      this.seq += 1;
      this.render();
    }
  }

  /** Take the members of `src` that are the line's numbers into the event's line. */
  merge(eventId, src, source) {
    const line = { ...(this.lines.get(eventId) || {}) };
    const before = line.admitted_through;
    for (const k of NUMBERS) if (typeof src[k] === "number") line[k] = src[k];
    for (const k of FLAGS) if (typeof src[k] === "boolean") line[k] = src[k];
    if (typeof src.mode === "string") line.mode = src.mode;
    if ("lottery_seed" in src) line.lottery_seed = src.lottery_seed;
    if (typeof src.joins === "number") line.joins = src.joins;
    if (typeof src.admits === "number") line.admits = src.admits;
    line.source = source;
    line.ts = src.ts || line.ts;
    this.lines.set(eventId, line);
    if (eventId === this.eventId && typeof before === "number" && line.admitted_through > before) {
      this.front = { from: before, to: line.admitted_through, at: performance.now() };
    }
    return line;
  }

  /** A `stats` frame (normalised or raw): joins/s, admits/s and the waiting total of the server. */
  stats(raw) {
    const id = this.eventId;
    this.rates = {
      joins: rateOf(raw.joins_per_s, id),
      admits: rateOf(raw.admits_per_s, id),
      waiting: rateOf(raw.queue_waiting, id),
    };
    const t = Date.parse(raw.ts) / 1000 || Date.now() / 1000;
    if (this.rates.joins !== null || this.rates.admits !== null) {
      this.chart.push(t, { "joins/s": this.rates.joins, "admits/s": this.rates.admits });
    }
    if (this.event) this.renderRates();
  }

  /** Compare the line with GET /api/events/{id}/queue; take the API's numbers when no frame came meanwhile. */
  async check() {
    const id = this.eventId;
    if (!id || this.checking) return;
    this.checking = true;
    const seq = this.seq;
    let r;
    try {
      r = await getJSON(`/api/events/${encodeURIComponent(id)}/queue`);
    } catch {
      return;
    } finally {
      this.checking = false;
    }
    if (id !== this.eventId) return;
    const line = this.el.check;
    const time = new Date().toLocaleTimeString();
    if (r.status !== 200) {
      line.textContent = `GET /api/events/${id}/queue answered ${r.status}${r.body?.code ? ` (${r.body.code})` : ""}`;
      line.className = "small bad";
      line.dataset.agree = "false";
      return;
    }
    const mine = this.lines.get(id) || {};
    const keys = [...NUMBERS, ...FLAGS];
    const differ = keys.filter((k) => k in r.body && mine[k] !== r.body[k]);
    if (!differ.length) {
      line.textContent = `✓ equal to GET /api/events/${id}/queue (checked ${time})`;
      line.className = "small ok";
      line.dataset.agree = "true";
    } else if (seq === this.seq) {  // no frame since the request: the API's numbers are the newest
      line.textContent = `GET …/queue said ${differ.map((k) => `${k} ${r.body[k]}`).join(", ")} (${time}); shown now`;
      line.className = "small muted";
      line.dataset.agree = "false";
      this.merge(id, r.body, "GET");
      this.render();
    } else {
      line.textContent = `frames moved the line while GET …/queue was answered (${time}); checking again`;
      line.className = "small muted";
      line.dataset.agree = "false";
    }
  }

  tick() {
    if (!this.event) return;
    this.renderState();
    if (this.front && performance.now() - this.front.at < FRONT_MS + 300) this.draw();
  }

  // ------------------------------------------------------------------ drawing
  render() {
    const e = this.event;
    if (!e) return;
    const line = this.lines.get(e.id) || {};
    const wr = e.waiting_room;
    const mode = line.mode || wr.mode || "fifo";
    this.el.policy.textContent = [`${mode}`, `admits ≤ ${fmt(wr.admit_per_second)}/s`,
      `pass ${fmt(wr.pass_seconds)} s`, wr.challenge_bits ? `challenge ${wr.challenge_bits} bits` : "no challenge"].join(" · ");
    const values = {
      joined: line.joined, waiting: line.waiting, admitted_through: line.admitted_through,
      admitted: line.admitted, outstanding: line.outstanding, expired: line.expired,
    };
    for (const [k, v] of Object.entries(values)) {
      const dd = this.el.numbers.querySelector(`[data-line="${k}"]`);
      if (dd) dd.textContent = k === "admitted_through" && typeof v === "number" ? `#${fmt(v)}` : fmt(v);
    }
    const ds = this.el.panel.dataset;
    ds.mode = mode;
    for (const k of NUMBERS) ds[camel(k)] = typeof line[k] === "number" ? String(line[k]) : "";
    ds.open = String(Boolean(line.open));
    ds.soldOut = String(Boolean(line.sold_out));
    ds.source = line.source || "";
    const sold = this.soldOut.get(e.id);
    if (sold && sold.count !== null) ds.soldOutCount = String(sold.count);
    else delete ds.soldOutCount;
    this.renderState();
    this.renderRates();
    this.draw();
  }

  renderState() {
    const e = this.event;
    const line = this.lines.get(e.id) || {};
    const state = this.el.state, badge = this.el.badge;
    const starts = e.sale_starts_at ? Date.parse(e.sale_starts_at) : null;
    if (line.sold_out) {
      delete state.dataset.secondsLeft;
      const sold = this.soldOut.get(e.id);
      badge.hidden = false;
      badge.textContent = "SOLD OUT";
      state.dataset.state = "sold_out";
      state.textContent = sold && sold.count !== null
        ? `every seat is sold: the ${fmt(sold.count)} tickets still waiting turned sold out at once`
        : "every seat is sold: the tickets still waiting are sold out";
      return;
    }
    badge.hidden = true;
    delete state.dataset.secondsLeft;
    if (line.open === undefined) {
      state.dataset.state = "unknown";
      state.textContent = "waiting for the server's numbers…";
    } else if (line.open) {
      state.dataset.state = "open";
      state.textContent = line.mode === "lottery" && line.lottery_seed
        ? `open · lottery drawn (seed ${line.lottery_seed.slice(0, 12)}…)` : "open · passes go out in position order";
    } else {
      state.dataset.state = "pre-queue";
      const left = starts === null ? null : (starts - this.serverNow()) / 1000;
      state.textContent = left === null ? "pre-queue"
        : left > 0 ? `pre-queue · opens in ${countdown(left)} (sale_starts_at ${e.sale_starts_at})`
          : `pre-queue · sale_starts_at ${e.sale_starts_at} passed; opening…`;
      if (left !== null) state.dataset.secondsLeft = String(Math.max(0, Math.ceil(left)));
    }
  }

  renderRates() {
    const r = this.rates;
    this.el.rates.textContent = `joins ${fmtRate(r.joins)} · admits ${fmtRate(r.admits)} · `
      + `waiting on this server ${fmt(r.waiting)} (from stats)`;
    this.el.rates.dataset.joins = r.joins === null ? "" : String(r.joins);
    this.el.rates.dataset.admits = r.admits === null ? "" : String(r.admits);
  }

  /** The line as cells in position order, row after row: passed by the front, waiting, or sold out. */
  draw() {
    if (this.raf !== null || !this.event) return;
    this.raf = requestAnimationFrame(() => {
      this.raf = null;
      this.paint();
    });
  }

  paint() {
    const canvas = this.el.canvas, ctx = this.ctx;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h || !this.event) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = cssColour("--canvas");
    ctx.fillRect(0, 0, w, h);
    const line = this.lines.get(this.event.id) || {};
    const n = Math.max(line.joined || 0, line.admitted_through || 0);
    const through = Math.min(line.admitted_through || 0, n);
    canvas.dataset.cells = String(n);
    canvas.dataset.passed = String(through);
    canvas.dataset.soldOut = String(Boolean(line.sold_out));
    if (!n) {
      ctx.fillStyle = cssColour("--muted");
      ctx.font = "12px system-ui, sans-serif";
      ctx.fillText("nobody in line yet", 8, h / 2 + 4);
      return;
    }
    // the biggest square cell for which n of them fit, row after row
    let size = Math.max(1, Math.min(MAX_CELL, Math.floor(Math.sqrt((w * h) / n))));
    while (size > 1 && Math.ceil(n / Math.floor(w / size)) * size > h) size -= 1;
    const cols = Math.max(1, Math.floor(w / size));
    const gap = size >= 5 ? 1 : 0;
    const unordered = line.mode === "lottery" && !line.open;  // pre-queue before the draw: no positions yet
    const colours = {
      passed: cssColour("--available"), waiting: cssColour("--line"), sold: cssColour("--c4"),
      unordered: cssColour("--c5"), front: cssColour("--flash"),
    };
    const run = (from, to, colour) => {  // positions from+1 .. to
      ctx.fillStyle = colour;
      ctx.beginPath();
      for (let i = from; i < to; i++) ctx.rect((i % cols) * size, Math.floor(i / cols) * size, size - gap, size - gap);
      ctx.fill();
    };
    if (unordered) {
      run(0, n, colours.unordered);
    } else {
      run(0, through, colours.passed);
      run(through, n, line.sold_out ? colours.sold : colours.waiting);
    }
    // the cells the front just passed, fading
    const f = this.front;
    if (f && !unordered) {
      const age = performance.now() - f.at;
      if (age < FRONT_MS) {
        ctx.globalAlpha = 1 - age / FRONT_MS;
        run(Math.max(0, f.from), Math.min(f.to, n), colours.front);
        ctx.globalAlpha = 1;
        this.draw();
      }
    }
    // the admission front: a mark after the last position admitted
    if (through > 0 && through < n && !unordered) {
      const x = (through % cols) * size, y = Math.floor(through / cols) * size;
      ctx.fillStyle = cssColour("--fg");
      ctx.fillRect(Math.max(0, x - 1), y - 1, 2, size + 1);
    }
  }
}

function camel(k) {
  return k.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
}
