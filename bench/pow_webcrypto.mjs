// node bench/pow_webcrypto.mjs -- the proof of work as a browser page would solve it (WebCrypto, one async digest per try)
// What a browser pays: the page's way to hash is WebCrypto's crypto.subtle.digest (async, one call per try).
const enc = new TextEncoder();
const prefix = "c1.eyJ4IjoxfQ.abcdefabcdefabcdefabcdefabcdefabcdefabcdefab:u-42:";
function zeros(buf) { const b = new Uint8Array(buf); let n = 0; for (const x of b) { if (x === 0) { n += 8; continue; } return n + Math.clz32(x) - 24; } return n; }
for (const bits of [8, 12, 16]) {
  const samples = bits >= 16 ? 8 : 30; const times = [];
  for (let s = 0; s < samples; s++) {
    const t = performance.now(); let n = 0;
    for (;; n++) { const d = await crypto.subtle.digest("SHA-256", enc.encode(prefix + s + ":" + n)); if (zeros(d) >= bits) break; }
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  const mean = times.reduce((a, b) => a + b, 0) / times.length;
  console.log(`${bits} bits: median ${times[times.length >> 1].toFixed(1)} ms, mean ${mean.toFixed(1)} ms over ${samples}`);
}
const t = performance.now(); for (let i = 0; i < 20000; i++) await crypto.subtle.digest("SHA-256", enc.encode(prefix + i));
console.log(`${(20000 / ((performance.now() - t) / 1000)).toFixed(0)} digests/s`);
