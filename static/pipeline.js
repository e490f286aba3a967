// The booking pipeline as an SVG: intake → edge → queue → consumers → locks → store, live rates on the
// arrows (from `stats`), queue lag and lock contention on the nodes.
import { fmtRate } from "./stats.js";

const NS = "http://www.w3.org/2000/svg";
const W = 96, H = 48;
const NODES = {
  intake: { x: 4, y: 14, label: "intake" },
  edge: { x: 172, y: 14, label: "edge" },
  queue: { x: 340, y: 14, label: "queue" },
  consumers: { x: 340, y: 132, label: "consumers" },
  locks: { x: 172, y: 132, label: "locks" },
  store: { x: 4, y: 132, label: "store" },
};
const EDGES = [
  ["intake", "edge", "answers"],
  ["edge", "queue", "produced"],
  ["queue", "consumers", "consumed"],
  ["consumers", "locks", "attempts"],
  ["locks", "store", "commits"],
];

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

export class Pipeline {
  constructor(container, note) {
    this.note = note;
    const svg = el("svg", { viewBox: "0 0 440 196", "aria-hidden": "true" });
    const defs = el("defs");
    const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "9",
      markerHeight: "9", markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" });
    marker.append(el("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }));
    defs.append(marker);
    svg.append(defs);
    this.nodes = {};
    this.edges = {};
    for (const [from, to, what] of EDGES) {
      const a = NODES[from], b = NODES[to];
      let d, lx, ly;
      if (a.y === b.y) {
        const forward = b.x > a.x;
        const x1 = forward ? a.x + W : a.x, x2 = forward ? b.x : b.x + W, y = a.y + H / 2;
        d = `M${x1},${y} L${x2 + (forward ? -2 : 2)},${y}`;
        lx = (x1 + x2) / 2; ly = y - 5;
      } else {
        const x = a.x + W / 2;
        d = `M${x},${a.y + H} L${x},${b.y - 2}`;
        lx = x - 6; ly = (a.y + H + b.y) / 2 - 2;
      }
      const path = el("path", { d, class: "edge", "marker-end": "url(#arrow)" });
      const rate = el("text", { x: lx, y: ly, "text-anchor": a.y === b.y ? "middle" : "end", class: "rate" }, "–");
      const caption = el("text", { x: lx, y: ly + (a.y === b.y ? 17 : 13), "text-anchor": a.y === b.y ? "middle" : "end",
        class: "rate detail" }, what);
      svg.append(path, rate, caption);
      this.edges[`${from}>${to}`] = { path, rate };
    }
    for (const [key, n] of Object.entries(NODES)) {
      const g = el("g", { class: "node", transform: `translate(${n.x},${n.y})` });
      g.append(el("rect", { width: W, height: H, rx: 7 }));
      g.append(el("text", { x: W / 2, y: 18, "text-anchor": "middle", class: "name" }, n.label));
      const detail = el("text", { x: W / 2, y: 36, "text-anchor": "middle", class: "detail" }, "");
      g.append(detail);
      svg.append(g);
      this.nodes[key] = { g, detail };
    }
    container.replaceChildren(svg);
    this.container = container;
  }

  update(s) {
    const admitted = s.admissions.admitted || 0;
    const refused = Object.entries(s.admissions).reduce((a, [k, v]) => a + (k === "admitted" ? 0 : v), 0);
    const rates = {
      "intake>edge": s.requestsTotal,
      "edge>queue": s.queue.produced || 0,
      "queue>consumers": s.queue.consumed || 0,
      "consumers>locks": s.locks.attempt ?? s.locks.acquired ?? 0,
      "locks>store": s.store.commit || 0,
    };
    for (const [key, value] of Object.entries(rates)) {
      const edge = this.edges[key];
      edge.rate.textContent = fmtRate(value);
      edge.path.classList.toggle("busy", value > 0);
    }
    const lat = s.p99 === null ? "p99 –" : `p99 ${s.p99} ms`;
    this.setNode("intake", lat);
    this.setNode("edge", `in ${fmtRate(admitted)} · out ${fmtRate(refused)}`);
    this.setNode("queue", `lag ${s.lag ?? "–"}`, (s.lag || 0) > 100);
    this.setNode("consumers", `decide ${fmtRate(s.decisionsTotal)}`);
    this.setNode("locks", `contended ${fmtRate(s.contended)}`, s.contended > 0);
    this.setNode("store", `conflicts ${fmtRate(s.store.conflict || 0)}`);
    this.container.dataset.lag = String(s.lag ?? "");
    this.container.setAttribute("aria-label", `Pipeline: requests ${fmtRate(s.requestsTotal)}, queue lag ${s.lag ?? "unknown"}, `
      + `locks contended ${fmtRate(s.contended)}, store commits ${fmtRate(s.store.commit || 0)}`);
    const parts = [`${s.processes} process${s.processes === 1 ? "" : "es"} reporting`,
      `frames dropped: ${s.framesDropped} (this page: ${s.dropped})`];
    if (s.derived.length) parts.push(`rates of ${s.derived.join(", ")} counted from this second's frames (the server's stats do not carry them)`);
    this.note.textContent = parts.join(" · ");
  }

  setNode(key, text, warn = false) {
    this.nodes[key].detail.textContent = text;
    this.nodes[key].g.classList.toggle("warn", warn);
  }
}
