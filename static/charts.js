// Time-series charts of the `stats` frames (the last five minutes), drawn by the vendored uPlot.
import uPlot from "./vendor/uplot/uPlot.esm.js";

const POINTS = 300;
const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
const PALETTE = ["--c1", "--c2", "--c3", "--c4", "--c5", "--c6", "--c7"];
const FIXED = {
  200: "--c3", 201: "--c6", 202: "--c1", 409: "--c2", 429: "--c5", 503: "--c4",
  held: "--held", confirmed: "--sold", rejected: "--c4", expired: "--c5", cancelled: "--c6", pending: "--c7",
  p50: "--c1", p99: "--c4",
};

export class SeriesChart {
  constructor(container, { unit = "/s", fixedKeys = null } = {}) {
    this.container = container;
    this.unit = unit;
    this.keys = fixedKeys ? [...fixedKeys] : [];
    this.fixed = Boolean(fixedKeys);
    this.xs = [];
    this.ys = new Map(this.keys.map((k) => [k, []]));
    this.plot = null;
    new ResizeObserver(() => this.resize()).observe(container);
  }

  colour(key, i) {
    return css(FIXED[key] || PALETTE[i % PALETTE.length]);
  }

  build() {
    if (this.plot) this.plot.destroy();
    const width = Math.max(200, this.container.clientWidth);
    const axis = { stroke: css("--muted"), grid: { stroke: css("--line"), width: 1 }, ticks: { stroke: css("--line") } };
    const unit = this.unit;
    const opts = {
      width, height: 170,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [{ ...axis }, { ...axis, size: 48, values: (u, vals) => vals.map((v) => `${+v.toFixed(1)}`) }],
      series: [{ label: "time" }, ...this.keys.map((k, i) => ({
        label: String(k), stroke: this.colour(k, i), width: 2, spanGaps: false,
        value: (u, v) => (v === null || v === undefined ? "–" : `${+v.toFixed(2)}${unit}`),
      }))],
    };
    this.plot = new uPlot(opts, this.data(), this.container);
  }

  data() {
    return [this.xs, ...this.keys.map((k) => this.ys.get(k))];
  }

  /** One point at time `t` (s): `values` maps series keys to numbers (missing: 0, or null for fixed keys). */
  push(t, values) {
    let grew = false;
    if (!this.fixed) {
      for (const key of Object.keys(values).sort()) {
        if (!this.ys.has(key)) {
          this.ys.set(key, this.xs.map(() => 0));
          this.keys.push(key);
          grew = true;
        }
      }
    }
    this.xs.push(t);
    for (const key of this.keys) {
      const v = values[key];
      this.ys.get(key).push(v === undefined ? (this.fixed ? null : 0) : v);
    }
    if (this.xs.length > POINTS) {
      this.xs.shift();
      for (const arr of this.ys.values()) arr.shift();
    }
    if (!this.plot || grew) this.build();
    else this.plot.setData(this.data());
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: Math.max(200, this.container.clientWidth), height: 170 });
  }

  /** Colours follow the theme: rebuild with the same data. */
  retheme() {
    if (this.plot) this.build();
  }
}
