// The event log: the last frames (bounded), newest first, filterable by kind, seat and event.

const MAX_ENTRIES = 5000;  // kept
const MAX_SHOWN = 300;     // drawn (the newest that match the filter)

export function seatsOf(frame) {
  if (Array.isArray(frame.seats)) return frame.seats;
  if (Array.isArray(frame.seat_ids)) return frame.seat_ids;
  if (typeof frame.seat === "string") return [frame.seat];
  return [];
}

function list(ids, n = 6) {
  return ids.length <= n ? ids.join(", ") : `${ids.slice(0, n).join(", ")} … (+${ids.length - n})`;
}

function codes(byCode) {
  return Object.entries(byCode || {}).map(([c, n]) => `${c}×${n}`).join(" ");
}

export function describe(f) {
  const seats = seatsOf(f);
  const opt = (label, v) => (v === undefined || v === null ? "" : ` ${label}${v}`);
  switch (f.type) {
    case "seat": return `${seats.length} seat${seats.length === 1 ? "" : "s"} → ${f.status}: ${list(seats)}`;
    case "booking": return `${f.status}${f.reason ? ` (${f.reason})` : ""}${seats.length ? ` ${list(seats)}` : ""}`
      + `${opt("id ", f.id)}${opt("user ", f.user_id)}`;
    case "lock": return `${f.action} ${list(seats)}${opt("fence ", f.fence)}${opt("owner ", f.owner)}`;
    case "queue": return `${f.action} ${f.count ?? 1}${opt("partition ", f.partition)}${opt("offset ", f.offset)}`
      + `${opt("lag ", f.lag)}${opt("", f.consumer)}`;
    case "admission": return `${f.verdict}${opt("seats ", f.count)}${opt("booking ", f.booking_id)}`;
    case "store": return `${f.action} ${f.op ?? ""}${opt("seats ", f.count)}${opt("booking ", f.booking_id)}`;
    case "hold": return `${f.action ?? "expired"} ${list(seats)}${opt("booking ", f.booking_id)}`;
    case "http": return (f.answers || []).map((a) => `${a.route} ${a.code}×${a.count}`).join("; ");
    case "event": return `new event ${f.name ?? ""} (${f.capacity ?? "?"} seats)`;
    case "loadgen": return `${f.state}${opt("users ", f.users)}${opt("seats ", f.seats)}${opt("sent ", f.sent)}`
      + `${opt("answered ", f.answered)}${f.by_code ? ` ${codes(f.by_code)}` : ""}${opt("decided ", f.decided)}`
      + `${opt("pending ", f.pending)}${opt("oversold ", f.oversold)}${opt("error ", f.error)}`;
    case "waiting_room": return f.action === "sold_out"
      ? `SOLD OUT: ${f.count ?? "?"} waiting tickets turned sold out`
      : `${f.open ? "open" : "pre-queue"}${opt("joined ", f.joined)}${opt("waiting ", f.waiting)}`
        + `${opt("admitted through #", f.admitted_through)}${opt("outstanding ", f.outstanding)}${opt("expired ", f.expired)}`
        + `${opt("+joins ", f.joins)}${opt("+admits ", f.admits)}${f.sold_out ? " sold out" : ""}`;
    case "snapshot": return `${(f.events || []).length} events${opt("processes ", f.processes)}`
      + `${f.waiting_rooms ? ` ${Object.keys(f.waiting_rooms).length} waiting rooms` : ""}`;
    case "stats": return `requests ${codes(f.requests_per_s)} lag ${f.queue_lag ?? "–"} p99 ${f.latency_ms?.p99 ?? "–"} ms`;
    case "auth": return f.ok ? "admin frames open" : "token refused: anonymous frames";
    default: return JSON.stringify(f).slice(0, 200);
  }
}

export class EventLog {
  constructor({ list: listEl, count, kind, seat, thisEvent, pause, clear }, currentEvent) {
    this.el = listEl;
    this.countEl = count;
    this.kind = kind;
    this.seat = seat;
    this.thisEvent = thisEvent;
    this.pauseButton = pause;
    this.currentEvent = currentEvent;
    this.entries = [];
    this.total = 0;
    this.paused = false;
    this.timer = null;
    for (const input of [kind, seat, thisEvent]) input.addEventListener("input", () => this.render());
    pause.addEventListener("click", () => {
      this.paused = !this.paused;
      pause.setAttribute("aria-pressed", String(this.paused));
      pause.textContent = this.paused ? "Resume" : "Pause";
      this.render();
    });
    clear.addEventListener("click", () => { this.entries = []; this.render(); });
  }

  add(frame) {
    this.total += 1;
    this.entries.push({ frame, seats: seatsOf(frame), time: (frame.ts || "").slice(11, 23) });
    if (this.entries.length > MAX_ENTRIES) this.entries.splice(0, this.entries.length - MAX_ENTRIES);
    this.schedule();
  }

  schedule() {
    if (this.timer === null && !this.paused) this.timer = setTimeout(() => { this.timer = null; this.render(); }, 250);
  }

  matches(entry) {
    const f = entry.frame;
    const kind = this.kind.value;
    if (kind ? f.type !== kind : f.type === "stats") return false;
    if (this.thisEvent.checked && f.event_id && f.event_id !== this.currentEvent()) return false;
    const seat = this.seat.value.trim().toUpperCase();
    if (seat && !entry.seats.some((s) => s.toUpperCase() === seat || s.toUpperCase().startsWith(`${seat}-`))) return false;
    return true;
  }

  render() {
    if (this.paused) return;
    const shown = [];
    for (let i = this.entries.length - 1; i >= 0 && shown.length < MAX_SHOWN; i--) {
      if (this.matches(this.entries[i])) shown.push(this.entries[i]);
    }
    const items = shown.map((entry) => {
      const f = entry.frame;
      const li = document.createElement("li");
      li.dataset.kind = f.type;
      if (f.event_id) li.dataset.event = f.event_id;
      if (f.status) li.dataset.status = f.status;
      if (entry.seats.length) li.dataset.seats = entry.seats.join(" ");
      const t = document.createElement("span");
      t.className = "t";
      t.textContent = entry.time;
      const k = document.createElement("span");
      k.className = "kind";
      k.textContent = f.type;
      li.append(t, k, document.createTextNode(describe(f)));
      return li;
    });
    this.el.replaceChildren(...items);
    this.countEl.textContent = `(${shown.length} shown of ${this.entries.length} kept, ${this.total} received)`;
  }
}
