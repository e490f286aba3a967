// The seat map: one canvas, any number of seats (10,000 smoothly, 200,000 usable).
//
// Each seat is one cell of a "world" grid (sections side by side, rows down, numbers across). Zoomed out,
// the world is a bitmap (one pixel per seat) scaled onto the canvas; zoomed in, only the visible seats are
// drawn as separate squares. A seat change rewrites one pixel and flashes the seat for a moment.

export const STATUSES = ["available", "held", "sold"];
const CODE = { available: 0, held: 1, sold: 2 };
const FLASH_MS = 1200;
const MAX_FLASHES = 20000;
const GAP = 2;  // empty cells between sections

function cssColour(name) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888888";
  const probe = document.createElement("canvas").getContext("2d");
  probe.fillStyle = value;
  const hex = probe.fillStyle;  // normalised to #rrggbb
  return { css: hex, rgb: [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)) };
}

const COMPACT = { a: "available", h: "held", s: "sold" };

/** The seats of a compact seat map (`GET /api/events/{id}/seats?form=compact`, about 10 KB for 10,000
 * seats): per section one status character per seat, row after row, as the objects of the full form. */
export function expandCompact(sections) {
  const seats = [];
  for (const s of sections) {
    for (let row = 1; row <= s.rows; row++) {
      for (let number = 1; number <= s.seats_per_row; number++) {
        const status = COMPACT[s.status[(row - 1) * s.seats_per_row + number - 1]] ?? "sold";
        seats.push({ id: `${s.name}-${row}-${number}`, section: s.name, row, number, status });
      }
    }
  }
  return seats;
}

export class SeatMap {
  constructor(canvas, tip, hoverLine) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.tip = tip;
    this.hoverLine = hoverLine;
    this.eventId = null;
    this.n = 0;
    this.worldW = 1;
    this.worldH = 1;
    this.scale = 1;
    this.ox = 0;
    this.oy = 0;
    this.fitted = true;
    this.flashes = new Map();  // seat index -> time of change
    this.counts = { available: 0, held: 0, sold: 0 };
    this.frame = null;
    this.hover = -1;
    this.readColours();
    this.bind();
  }

  readColours() {
    this.colours = STATUSES.map((s) => cssColour(`--${s}`));
    this.flashColour = cssColour("--flash").css;
    this.background = cssColour("--canvas").css;
    if (this.n) this.paintBitmap();
    this.requestRender();
  }

  /** Draw `seats` (the API's seat map array) of event `eventId`. */
  load(eventId, seats) {
    this.eventId = eventId;
    const sections = new Map();  // name -> {rows, cols}
    for (const seat of seats) {
      const s = sections.get(seat.section) || { rows: 0, cols: 0 };
      s.rows = Math.max(s.rows, seat.row);
      s.cols = Math.max(s.cols, seat.number);
      sections.set(seat.section, s);
    }
    // lay the sections out in a flow about as wide as the whole is tall, scaled to a landscape canvas
    const area = [...sections.values()].reduce((a, s) => a + (s.rows + GAP) * (s.cols + GAP), 0);
    const target = Math.max(Math.sqrt(area * 1.8), ...[...sections.values()].map((s) => s.cols));
    let x = 0, y = 0, lineH = 0, width = 0;
    for (const s of sections.values()) {
      if (x > 0 && x + s.cols > target) { x = 0; y += lineH + GAP; lineH = 0; }
      s.x = x; s.y = y;
      x += s.cols + GAP;
      lineH = Math.max(lineH, s.rows);
      width = Math.max(width, s.x + s.cols);
    }
    this.worldW = Math.max(1, width);
    this.worldH = Math.max(1, y + lineH);
    this.n = seats.length;
    this.ids = new Array(this.n);
    this.status = new Uint8Array(this.n);
    this.cx = new Int32Array(this.n);
    this.cy = new Int32Array(this.n);
    this.index = new Map();
    this.grid = new Int32Array(this.worldW * this.worldH).fill(-1);
    this.counts = { available: 0, held: 0, sold: 0 };
    seats.forEach((seat, i) => {
      const s = sections.get(seat.section);
      const cx = s.x + seat.number - 1, cy = s.y + seat.row - 1;
      this.ids[i] = seat.id;
      this.status[i] = CODE[seat.status] ?? 0;
      this.cx[i] = cx;
      this.cy[i] = cy;
      this.grid[cy * this.worldW + cx] = i;
      this.index.set(seat.id, i);
      this.counts[STATUSES[this.status[i]]] += 1;
    });
    this.flashes.clear();
    this.bitmap = document.createElement("canvas");
    this.bitmap.width = this.worldW;
    this.bitmap.height = this.worldH;
    this.bitmapCtx = this.bitmap.getContext("2d");
    this.image = this.bitmapCtx.createImageData(this.worldW, this.worldH);
    this.paintBitmap();
    this.fit();
    this.canvas.dataset.seats = String(this.n);
    this.canvas.dataset.event = eventId;
  }

  paintBitmap() {
    const data = this.image.data;
    data.fill(0);
    for (let i = 0; i < this.n; i++) this.paintPixel(i);
    this.dirty = true;
  }

  paintPixel(i) {
    const p = (this.cy[i] * this.worldW + this.cx[i]) * 4;
    const [r, g, b] = this.colours[this.status[i]].rgb;
    const data = this.image.data;
    data[p] = r; data[p + 1] = g; data[p + 2] = b; data[p + 3] = 255;
  }

  /** Seats `ids` of the shown event became `status`; returns how many actually changed. */
  apply(ids, status) {
    const code = CODE[status];
    if (code === undefined || !this.n) return 0;
    const now = performance.now();
    let changed = 0;
    for (const id of ids) {
      const i = this.index.get(id);
      if (i === undefined || this.status[i] === code) continue;
      this.counts[STATUSES[this.status[i]]] -= 1;
      this.counts[status] += 1;
      this.status[i] = code;
      this.paintPixel(i);
      this.flashes.delete(i);
      this.flashes.set(i, now);
      changed += 1;
    }
    while (this.flashes.size > MAX_FLASHES) this.flashes.delete(this.flashes.keys().next().value);
    if (changed) {
      this.dirty = true;
      this.requestRender();
    }
    return changed;
  }

  statusOf(id) {
    const i = this.index.get(id);
    return i === undefined ? null : STATUSES[this.status[i]];
  }

  // ------------------------------------------------------------------ view
  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    if (!w || !h) return;
    this.canvas.width = Math.round(w * dpr);
    this.canvas.height = Math.round(h * dpr);
    this.dpr = dpr;
    if (this.fitted) this.fit();
    else this.requestRender();
  }

  fit() {
    const w = this.canvas.clientWidth || 1, h = this.canvas.clientHeight || 1;
    this.scale = Math.min(w / this.worldW, h / this.worldH) * 0.96;
    this.ox = (w - this.worldW * this.scale) / 2;
    this.oy = (h - this.worldH * this.scale) / 2;
    this.fitted = true;
    this.requestRender();
  }

  zoom(factor, px, py) {
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    if (px === undefined) { px = w / 2; py = h / 2; }
    const min = Math.min(w / this.worldW, h / this.worldH) * 0.5;
    const next = Math.min(Math.max(this.scale * factor, min), 80);
    const k = next / this.scale;
    this.ox = px - (px - this.ox) * k;
    this.oy = py - (py - this.oy) * k;
    this.scale = next;
    this.fitted = false;
    this.requestRender();
  }

  pan(dx, dy) {
    this.ox += dx;
    this.oy += dy;
    this.fitted = false;
    this.requestRender();
  }

  requestRender() {
    if (this.frame === null) this.frame = requestAnimationFrame(() => this.render());
  }

  render() {
    this.frame = null;
    const ctx = this.ctx, dpr = this.dpr || 1, s = this.scale;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = this.background;
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.n) return;
    if (this.dirty) {
      this.bitmapCtx.putImageData(this.image, 0, 0);
      this.dirty = false;
    }
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    if (s < 3.5) {
      ctx.imageSmoothingEnabled = s < 1;
      ctx.drawImage(this.bitmap, this.ox, this.oy, this.worldW * s, this.worldH * s);
    } else {
      // only the visible cells, one square each with a gap
      const x0 = Math.max(0, Math.floor(-this.ox / s)), x1 = Math.min(this.worldW, Math.ceil((w - this.ox) / s));
      const y0 = Math.max(0, Math.floor(-this.oy / s)), y1 = Math.min(this.worldH, Math.ceil((h - this.oy) / s));
      const size = s * 0.8;
      for (let code = 0; code < 3; code++) {
        ctx.fillStyle = this.colours[code].css;
        ctx.beginPath();
        for (let y = y0; y < y1; y++) {
          for (let x = x0; x < x1; x++) {
            const i = this.grid[y * this.worldW + x];
            if (i >= 0 && this.status[i] === code) ctx.rect(this.ox + x * s, this.oy + y * s, size, size);
          }
        }
        ctx.fill();
      }
    }
    // flashes: a fading yellow ring on each seat that just changed
    const now = performance.now();
    if (this.flashes.size) {
      ctx.strokeStyle = this.flashColour;
      const ring = Math.max(s, 3);
      ctx.lineWidth = Math.max(1, Math.min(2, s / 4));
      for (const [i, t] of this.flashes) {
        const age = now - t;
        if (age > FLASH_MS) { this.flashes.delete(i); continue; }
        ctx.globalAlpha = 1 - age / FLASH_MS;
        ctx.strokeRect(this.ox + this.cx[i] * s - (ring - s) / 2, this.oy + this.cy[i] * s - (ring - s) / 2, ring, ring);
      }
      ctx.globalAlpha = 1;
    }
    if (this.hover >= 0) {
      ctx.strokeStyle = getComputedStyle(this.canvas).color;
      ctx.lineWidth = 1.5;
      const ring = Math.max(s, 6);
      ctx.strokeRect(this.ox + this.cx[this.hover] * s - (ring - s) / 2, this.oy + this.cy[this.hover] * s - (ring - s) / 2, ring, ring);
    }
    this.canvas.dataset.rendered = String((Number(this.canvas.dataset.rendered) || 0) + 1);
    if (this.flashes.size) this.requestRender();
  }

  seatAt(px, py) {
    const x = Math.floor((px - this.ox) / this.scale), y = Math.floor((py - this.oy) / this.scale);
    if (x < 0 || y < 0 || x >= this.worldW || y >= this.worldH) return -1;
    return this.grid[y * this.worldW + x];
  }

  showHover(i, px, py) {
    this.hover = i;
    if (i < 0) {
      this.tip.hidden = true;
    } else {
      const text = `${this.ids[i]} · ${STATUSES[this.status[i]]}`;
      this.tip.textContent = text;
      this.tip.hidden = false;
      const w = this.canvas.clientWidth;
      this.tip.style.left = `${Math.min(px + 12, w - 140)}px`;
      this.tip.style.top = `${py + 14}px`;
      this.hoverLine.textContent = `Seat ${text}`;
    }
    this.requestRender();
  }

  // ------------------------------------------------------------------ input
  bind() {
    const c = this.canvas;
    let drag = null;
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = c.getBoundingClientRect();
      this.zoom(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
    }, { passive: false });
    c.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY };
      c.setPointerCapture(e.pointerId);
      c.classList.add("dragging");
    });
    c.addEventListener("pointermove", (e) => {
      const r = c.getBoundingClientRect();
      if (drag) {
        this.pan(e.clientX - drag.x, e.clientY - drag.y);
        drag = { x: e.clientX, y: e.clientY };
      }
      this.showHover(this.seatAt(e.clientX - r.left, e.clientY - r.top), e.clientX - r.left, e.clientY - r.top);
    });
    const end = () => { drag = null; c.classList.remove("dragging"); };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    c.addEventListener("pointerleave", () => this.showHover(-1));
    c.addEventListener("keydown", (e) => {
      const step = e.shiftKey ? 200 : 40;
      const keys = {
        ArrowLeft: () => this.pan(step, 0), ArrowRight: () => this.pan(-step, 0),
        ArrowUp: () => this.pan(0, step), ArrowDown: () => this.pan(0, -step),
        "+": () => this.zoom(1.25), "=": () => this.zoom(1.25), "-": () => this.zoom(0.8), "0": () => this.fit(),
      };
      const action = keys[e.key];
      if (action) {
        e.preventDefault();
        action();
      }
    });
    new ResizeObserver(() => this.resize()).observe(c);
  }
}
