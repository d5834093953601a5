// Proof of work for the join (docs/defense.md), off the page's thread: find a decimal
// counter S such that SHA-256("<challenge>:<S>") starts with `bits` zero bits. WebCrypto's
// digest is asynchronous, so hashes are computed in batches that run together.
// In:  {challenge, bits}.  Out: {solution, hashes, ms}.

"use strict";

const BATCH = 512;

function leadingZeroBits(bytes) {
  let bits = 0;
  for (const b of bytes) {
    if (b === 0) { bits += 8; continue; }
    return bits + Math.clz32(b) - 24;
  }
  return bits;
}

self.onmessage = async (event) => {
  const { challenge, bits } = event.data;
  const started = performance.now();
  const encoder = new TextEncoder();
  for (let base = 0; ; base += BATCH) {
    const digests = await Promise.all(Array.from({ length: BATCH }, (_, i) =>
      crypto.subtle.digest("SHA-256", encoder.encode(`${challenge}:${base + i}`))));
    for (let i = 0; i < BATCH; i += 1) {
      if (leadingZeroBits(new Uint8Array(digests[i])) >= bits) {
        self.postMessage({ solution: String(base + i), hashes: base + i + 1, ms: performance.now() - started });
        return;
      }
    }
  }
};
