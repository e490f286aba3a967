// The flash-sale button: POST /api/admin/flash-sale (admin token), follow the `loadgen` frames, summarise.
import { adminToken, postJSON } from "./api.js";

const ERRORS = {
  401: "The server wants the admin token (enter it at the top).",
  403: "The admin token is not valid for this server.",
  404: "This server has no flash-sale endpoint (POST /api/admin/flash-sale): update the server.",
  409: "A flash sale is already running; wait for it to finish.",
  422: "The server refused the sale's settings.",
};

function cell(row, text, header = false) {
  const c = document.createElement(header ? "th" : "td");
  if (header) c.scope = "row";
  c.textContent = text;
  row.append(c);
}

export class FlashSale {
  constructor({ form, users, seats, route, button, hint, progress, status, summary, waitingRoom },
    { onStarted, onFinished }) {
    Object.assign(this, { form, users, seats, route, button, hint, progress, status, summary });
    this.wr = waitingRoom;  // {enabled, mode, rate, bits, opens}: the sale's event gets a waiting room (API 1.2)
    this.wr.enabled.addEventListener("change", () => this.waitingRoomChanged());
    this.onStarted = onStarted;
    this.onFinished = onFinished;
    this.eventId = null;
    this.running = false;
    this.last = {};  // the run's last progress frame (a waiting-room run's final line carries only the verdict)
    form.addEventListener("submit", (e) => { e.preventDefault(); this.start(); });
    this.tokenChanged();
    this.waitingRoomChanged();
  }

  waitingRoomChanged() {
    const on = this.wr.enabled.checked;
    for (const input of [this.wr.mode, this.wr.rate, this.wr.bits, this.wr.opens]) input.disabled = !on;
    // the waiting-room mode books through POST /api/events/{id}/bookings only (with each fan's Queue-Pass)
    if (on) this.route.value = "bookings";
    this.route.disabled = on;
  }

  /** The page selected event `e`: a sale started now is like it (with a waiting room of its policy, or none). */
  selected(e) {
    const wr = e && e.waiting_room;
    this.wr.enabled.checked = Boolean(wr);
    if (wr) {
      if (wr.mode) this.wr.mode.value = wr.mode;
      if (wr.admit_per_second) this.wr.rate.value = String(wr.admit_per_second);
      this.wr.bits.value = String(wr.challenge_bits ?? 0);
    }
    this.waitingRoomChanged();
  }

  /** The body of POST /api/admin/flash-sale. */
  body() {
    const body = { users: Number(this.users.value), seats: Number(this.seats.value), route: this.route.value };
    if (this.wr.enabled.checked) {
      body.waiting_room = { mode: this.wr.mode.value, admit_per_second: Number(this.wr.rate.value),
        challenge_bits: Number(this.wr.bits.value) };
      body.sale_starts_in = Number(this.wr.opens.value);
    }
    return body;
  }

  tokenChanged() {
    const has = Boolean(adminToken());
    this.button.disabled = !has || this.running;
    this.hint.textContent = has
      ? "Starts the server's bounded load generator on a new event; the seat map switches to it."
      : "Needs the admin token (field at the top, or open the page as /#admin=<token>).";
  }

  async start() {
    const body = this.body();
    this.running = true;
    this.tokenChanged();
    this.summary.replaceChildren();
    this.status.textContent = "starting…";
    let r;
    try {
      r = await postJSON("/api/admin/flash-sale", body, { bearer: adminToken() });
    } catch (err) {
      r = { status: 0, body: { detail: String(err) } };
    }
    if (r.status !== 202) {
      this.running = false;
      this.tokenChanged();
      const detail = r.body && r.body.detail ? ` (${r.body.detail})` : "";
      this.status.textContent = `Not started: ${ERRORS[r.status] || `HTTP ${r.status}`}${detail}`;
      this.status.dataset.state = "refused";
      return;
    }
    this.eventId = r.body.event_id;
    this.last = {};
    this.status.dataset.state = "started";
    const wr = r.body.waiting_room;
    this.status.textContent = `Started: ${r.body.users} fans for ${r.body.seats} seats via ${r.body.route}`
      + `${wr ? ` through a waiting room (${wr.mode ?? "fifo"}, at most ${wr.admit_per_second ?? "?"} admits/s)` : ""}`
      + `, event ${this.eventId}`;
    this.status.dataset.waitingRoom = String(Boolean(wr));
    this.progress.hidden = false;
    this.progress.max = r.body.users || body.users;
    this.progress.value = 0;
    await this.onStarted(this.eventId);
  }

  /** A `loadgen` frame. */
  frame(f) {
    if (this.eventId && f.event_id && f.event_id !== this.eventId) return;
    if (!this.eventId && f.event_id && f.state === "started") this.eventId = f.event_id;  // started elsewhere
    this.progress.hidden = false;
    if (f.users) this.progress.max = f.users;
    const line = f.joined !== undefined || f.phase !== undefined;  // the load generator's waiting-room mode
    this.progress.value = line ? f.done ?? 0 : f.answered ?? f.sent ?? 0;
    const codes = Object.entries(f.by_code || {}).map(([c, n]) => `${c}×${n}`).join(" ");
    this.status.dataset.state = f.state;
    if (f.state === "progress" || f.state === "started") {
      this.running = true;
      this.last = f;
      this.tokenChanged();
      this.status.textContent = line
        ? `${f.state}${f.phase ? ` (${f.phase})` : ""}: arrived ${f.arrived ?? 0} / ${f.users ?? "?"}, `
          + `joined ${f.joined ?? 0}${codes ? ` (${codes})` : ""}, admitted ${f.admitted ?? 0}, `
          + `sold out ${f.sold_out ?? 0}, held ${f.held ?? 0}, confirmed ${f.confirmed ?? 0}, done ${f.done ?? 0}`
        : `${f.state}: sent ${f.sent ?? 0} / ${f.users ?? "?"}, answered ${f.answered ?? 0}`
          + `${codes ? ` (${codes})` : ""}${f.decided !== undefined ? `, decided ${f.decided}` : ""}`
          + `${f.pending !== undefined ? `, pending ${f.pending}` : ""}`;
      return;
    }
    this.running = false;
    this.tokenChanged();
    if (f.state === "failed") {
      this.status.textContent = `Flash sale failed: ${f.error || "unknown error"}`;
    } else {
      this.status.textContent = `Finished: ${f.users} fans, ${f.seats} seats.`;
    }
    this.showSummary(f);
    this.onFinished(f.event_id || this.eventId);
  }

  showSummary(f) {
    const t = document.createElement("table");
    const caption = document.createElement("caption");
    caption.textContent = `Flash sale ${f.state}: event ${f.event_id ?? this.eventId}`;
    t.append(caption);
    const last = this.last || {};
    const rows = (f.waiting_room || last.joined !== undefined) ? [
      ["fans (users)", f.users], ["seats", f.seats],
      ["waiting room", `${f.waiting_room?.mode ?? "fifo"}, at most ${f.waiting_room?.admit_per_second ?? "?"} admits/s`],
      ...[["joined", "joined"], ["admitted (passes)", "admitted"], ["sold out tickets", "sold_out"],
        ["bookings", "booked"], ["held", "held"], ["confirmed", "confirmed"], ["fans done", "done"]]
        .map(([label, k]) => [`${label} (last progress)`, last[k]]),
      ["join latency p50 / p99", `${last.p50_ms ?? "–"} / ${last.p99_ms ?? "–"} ms`],
      ["verified", f.passed === undefined ? undefined : f.passed ? "passed" : "failed"], ["oversold", f.oversold],
    ] : [
      ["fans (users)", f.users], ["seats", f.seats], ["route", f.route], ["requests sent", f.sent],
      ["answered", f.answered],
      ["answers by code", Object.entries(f.by_code || {}).map(([c, n]) => `${c}: ${n}`).join(", ") || "–"],
      ["latency p50 / p99", `${f.p50_ms ?? "–"} / ${f.p99_ms ?? "–"} ms`],
      ["bookings decided", f.decided], ["still pending", f.pending], ["oversold", f.oversold],
    ];
    if (f.error) rows.push(["error", f.error]);
    for (const [k, v] of rows) {
      const row = document.createElement("tr");
      cell(row, k, true);
      cell(row, v === undefined || v === null ? "–" : String(v));
      t.append(row);
    }
    t.dataset.state = f.state;
    if (f.oversold !== undefined) t.dataset.oversold = String(f.oversold);
    this.summary.replaceChildren(t);
  }
}
