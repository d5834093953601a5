// The sound module's pure parts: the console's words for the server's figures, and the
// "talking while muted" detector fed with levels on a made-up clock. No browser.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  CLEAR_MS, MutedTalk, TALK_DBFS, TALK_GAP_MS, TALK_MIN_MS, deadAirLastedS, feedbackText, gainText, lastedText,
  loudnessText, readyLine,
} from "../../src/amphi/web/static/sound.js";

test("loudness and gain read as a person would say them", () => {
  assert.equal(loudnessText(-17), "-17 LUFS");
  assert.equal(loudnessText(-16.5), "-16.5 LUFS");
  assert.equal(loudnessText(null), "not heard yet");
  assert.equal(loudnessText(undefined), "not heard yet");
  assert.equal(gainText(12), "+12 dB");
  assert.equal(gainText(3.5), "+3.5 dB");
  assert.equal(gainText(0), "0 dB");
  assert.equal(gainText(-0), "0 dB");
  assert.equal(gainText(-6), "-6 dB");
  assert.equal(gainText(null), "");
  assert.equal(feedbackText("Ada"), "Feedback on Ada’s microphone: they should use headphones.");
});

test("how long the dead air has lasted", () => {
  assert.equal(lastedText(8.7), "8 s");
  assert.equal(lastedText(-1), "0 s");
  assert.equal(lastedText(125), "2 min 5 s");
  assert.equal(lastedText(3720), "1 h 2 min");
  const dead = { reason: "all_muted", since: 1000, after_s: 8, message: "Dead air: …" };
  assert.equal(deadAirLastedS(dead, 1_600_000), 600); // ten minutes of it: the console opened late says so
  assert.equal(deadAirLastedS(dead, 1_005_000), 8); // a clock a little behind: never less than the threshold
});

const speaker = (name, extra = {}) => ({
  id: name.toLowerCase(), name, connected: true, muted: false, level: 0.5, loudness: -17, gain_db: 1,
  heard: true, feedback: null, ready: true, problems: [], ...extra,
});

test("the ready line names who is not ready and why", () => {
  assert.deepEqual(readyLine({ ready: true, speakers: [speaker("Ann")] }), { ready: true, text: "Stage ready" });
  const sound = {
    ready: false,
    speakers: [
      speaker("Host", { connected: false, heard: false, loudness: null, ready: false, problems: ["not connected"] }),
      speaker("Ann"),
      speaker("Bob", { heard: false, ready: false, problems: ["not heard yet", "feedback: use headphones"], feedback: "loop" }),
    ],
  };
  assert.deepEqual(readyLine(sound), {
    ready: false, text: "Not ready: Host: not connected; Bob: not heard yet, feedback: use headphones",
  });
  assert.equal(readyLine(sound, "live").text, "Check: Host: not connected; Bob: not heard yet, feedback: use headphones");
  assert.equal(readyLine({ ready: true, speakers: [speaker("Ann")] }, "live").text, "Everyone on stage is connected and heard.");
  const twoMuted = { ready: true, speakers: [speaker("Ann", { muted: true }), speaker("Bob"), speaker("Cy", { muted: true })] };
  assert.deepEqual(readyLine(twoMuted, "live"), { ready: true, text: "Everyone on stage is connected and heard; muted: Ann, Cy." });
  assert.deepEqual(readyLine({ ready: true, speakers: [speaker("Ann", { muted: true })] }, "live"),
    { ready: false, text: "Everyone on stage is muted." });
  assert.equal(readyLine({ ready: false, speakers: [] }).text, "Not ready: nobody is on stage.");
  // without the server's problem list, the figures say it
  const bare = { speakers: [{ name: "Cy", connected: true, heard: false }] };
  assert.equal(readyLine(bare).text, "Not ready: Cy: not heard yet");
});

// Feeds the detector a level every 20 ms (the meter reads one every 40 ms) for `ms`; `loud(t)` says
// whether the microphone sounds at time t. Returns when `shown` changed: [[t, shown]].
function run(detector, { from = 0, ms, loud, muted = true, step = 20 }) {
  const changes = [];
  for (let t = from; t < from + ms; t += step) {
    if (detector.update(loud(t) ? TALK_DBFS + 20 : -90, typeof muted === "function" ? muted(t) : muted, t)) {
      changes.push([t, detector.shown]);
    }
  }
  return changes;
}

test("talking while muted shows after about 300 ms and clears a second after the last sound", () => {
  const d = new MutedTalk();
  const changes = run(d, { ms: 3000, loud: (t) => t < 1500 }); // 1.5 s of steady talk, then quiet
  assert.equal(changes.length, 2, JSON.stringify(changes));
  assert.deepEqual(changes[0], [TALK_MIN_MS, true]);
  assert.equal(changes[1][1], false);
  const lastLoud = 1480;
  assert.ok(changes[1][0] >= lastLoud + CLEAR_MS && changes[1][0] < lastLoud + CLEAR_MS + 20, JSON.stringify(changes));
});

test("a beep twice a second (Chromium's fake microphone) is talk; a single click is not", () => {
  const beeps = new MutedTalk();
  const changes = run(beeps, { ms: 2000, loud: (t) => t % 500 < 60 });
  assert.deepEqual(changes, [[500, true]]); // the second beep, 500 ms after the first
  const click = new MutedTalk();
  assert.deepEqual(run(click, { ms: 3000, loud: (t) => t < 100 }), []);
  const sparse = new MutedTalk(); // sounds further apart than a pause between words
  assert.deepEqual(run(sparse, { ms: 5000, loud: (t) => t % (TALK_GAP_MS + 200) < 40 }), []);
});

test("not muted: never shown; unmuting hides it at once; muting while talking shows it", () => {
  const d = new MutedTalk();
  assert.deepEqual(run(d, { ms: 2000, loud: () => true, muted: false }), []);
  const e = new MutedTalk();
  const changes = run(e, { ms: 2000, loud: () => true, muted: (t) => t < 1000 });
  assert.deepEqual(changes, [[TALK_MIN_MS, true], [1000, false]]);
  const f = new MutedTalk();
  assert.deepEqual(run(f, { ms: 2000, loud: () => true, muted: (t) => t >= 1000 }), [[1000, true]]);
});
