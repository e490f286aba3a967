// One shape for the server's `stats` frames (spec/telemetry.md), also from servers that send fewer members:
// a rate the frame lacks is computed from the server's own frames of that second (`queue`, `lock`, `store`,
// `admission`) or from the difference of its totals, and is flagged as such (`derived`). Nothing is invented.

const sum = (obj) => Object.values(obj || {}).reduce((a, v) => a + (Number(v) || 0), 0);

export class StatsReader {
  constructor() {
    this.tally = this.emptyTally();
    this.lastTotals = null;
  }

  emptyTally() {
    return { queue: {}, locks: {}, store: {}, admissions: {} };
  }

  /** Count a non-stats frame (for rates the stats frame does not carry). */
  see(frame) {
    const t = this.tally;
    const add = (bucket, key, n) => { bucket[key] = (bucket[key] || 0) + (Number(n) || 1); };
    switch (frame.type) {
      case "queue": add(t.queue, frame.action, frame.count ?? 1); break;
      case "lock": add(t.locks, frame.action, 1); break;
      case "store": add(t.store, frame.action, 1); break;
      case "admission": add(t.admissions, frame.verdict, 1); break;
      default: break;
    }
  }

  /** The normalised view of one stats frame. */
  read(s) {
    const window = Number(s.window_s) || 1;
    const rate = (bucket) => Object.fromEntries(Object.entries(bucket).map(([k, v]) => [k, v / window]));
    const tally = this.tally;
    this.tally = this.emptyTally();
    const derived = [];
    const totals = s.totals || {};
    const bookingTotals = totals.bookings || s.bookings || {};

    let decisions = s.decisions_per_s;
    if (!decisions) {
      decisions = {};
      if (this.lastTotals) {
        for (const [k, v] of Object.entries(bookingTotals)) {
          const d = v - (this.lastTotals[k] || 0);
          if (d > 0) decisions[k] = d / window;
        }
      }
      derived.push("decisions/s");
    }
    this.lastTotals = { ...bookingTotals };

    let queue = s.queue_per_s;
    if (!queue) { queue = rate(tally.queue); derived.push("queue"); }
    let locks = s.locks_per_s;
    if (!locks) { locks = rate(tally.locks); derived.push("locks"); }
    let store = s.store_per_s;
    if (!store) { store = rate(tally.store); derived.push("store"); }
    let admissions = s.admissions_per_s;
    if (!admissions) { admissions = rate(tally.admissions); derived.push("edge"); }
    const contended = s.locks_contended_per_s ?? (locks.contended || 0);

    return {
      t: Date.parse(s.ts) / 1000 || Date.now() / 1000,
      requests: s.requests_per_s || {},
      requestsTotal: sum(s.requests_per_s),
      decisions,
      decisionsTotal: sum(decisions),
      admissions,
      queue,
      locks,
      store,
      contended,
      lag: s.queue_lag ?? null,
      p50: s.latency_ms ? s.latency_ms.p50 : null,
      p99: s.latency_ms ? s.latency_ms.p99 : null,
      bookingTotals,
      processes: s.processes ?? 1,
      framesDropped: s.frames_dropped ?? 0,
      dropped: s.dropped ?? 0,
      subscribers: s.subscribers ?? null,
      holdsExpired: s.holds_expired ?? 0,
      derived,
    };
  }
}

export function fmtRate(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v >= 1000) return `${(v / 1000).toFixed(1)}k/s`;
  if (v >= 10) return `${Math.round(v)}/s`;
  return `${Number(v).toFixed(1)}/s`;
}

export { sum };
