// The program's sound on the pages (issue 20; the server's side is docs/sound.md): what the
// host console shows of it, and the speaker's own microphone, measured in the browser.
//
// Pure (unit-tested with node --test, tests/js/sound.test.mjs):
//   loudnessText, gainText, lastedText, readyLine: the console's words for the server's figures;
//   MutedTalk: "are they talking while muted?" from a stream of microphone levels.
// Browser:
//   MicMeter: an AnalyserNode on a clone of the microphone track (the sent track is disabled
//     while muted, and sends silence; the clone still hears the room), feeding MutedTalk.
//   SoundPanel: the console's dead-air banner and its Sound card (level, loudness, the
//     leveler's gain and three checks per person on stage; the ready line before the start).

import { syncKeyedList } from "./keyed.js";

// -- talking while muted ---------------------------------------------------------------------

export const TALK_DBFS = -42; // RMS over the analyser's window: speech at a microphone is -35..-15
export const TALK_MIN_MS = 300; // sound spread over this long is talk (a click or a cough is not)
export const TALK_GAP_MS = 600; // gaps between words up to this long keep a run of talk going
export const CLEAR_MS = 1000; // the warning stays this long after the last loud moment

// Fed levels (dBFS) as they are measured, with the mute state; `shown` says whether to tell
// them. A run of talk starts at a loud moment and goes on while loud moments come less than
// TALK_GAP_MS apart; once a run spans TALK_MIN_MS while muted, the warning shows, and it goes
// CLEAR_MS after the last loud moment, or at once when they unmute.
export class MutedTalk {
  constructor({ threshold = TALK_DBFS, minMs = TALK_MIN_MS, gapMs = TALK_GAP_MS, clearMs = CLEAR_MS } = {}) {
    Object.assign(this, { threshold, minMs, gapMs, clearMs });
    this.runStart = null; // the first loud moment of the current run
    this.lastLoud = -Infinity;
    this.shown = false;
  }

  // -> true when `shown` changed.
  update(dbfs, muted, now) {
    const was = this.shown;
    if (dbfs >= this.threshold) {
      if (this.runStart === null || now - this.lastLoud > this.gapMs) this.runStart = now;
      this.lastLoud = now;
    } else if (this.runStart !== null && now - this.lastLoud > this.gapMs) {
      this.runStart = null;
    }
    if (!muted) this.shown = false;
    else if (this.runStart !== null && this.lastLoud - this.runStart >= this.minMs) this.shown = true;
    else if (this.shown && now - this.lastLoud >= this.clearMs) this.shown = false;
    return this.shown !== was;
  }
}

const METER_EVERY_MS = 40; // shorter than the analyser's window: no sound falls between two looks
const FFT_SIZE = 2048; // 43-46 ms at 44.1-48 kHz

// Meters a microphone track without touching it: a clone goes into an AudioContext whose
// AnalyserNode is read every 40 ms. onChange() when `mutedTalking` changes.
export class MicMeter {
  constructor(track, { onChange = () => {}, now = () => performance.now() } = {}) {
    this.track = track;
    this.onChange = onChange;
    this.now = now;
    this.detector = new MutedTalk();
    this.muted = false;
    this.dbfs = -Infinity;
    this.peakDbfs = -Infinity; // the loudest since the last snapshot, for tests
    this.ctx = null;
    this.clone = null;
    this.timer = 0;
    this.resume = () => { if (this.ctx && this.ctx.state === "suspended") this.ctx.resume().catch(() => {}); };
  }

  get mutedTalking() { return this.detector.shown; }

  start() {
    const Ctx = globalThis.AudioContext || globalThis.webkitAudioContext;
    if (!Ctx || !this.track) return false;
    try {
      this.clone = this.track.clone();
      this.clone.enabled = true;
      this.ctx = new Ctx();
      const source = this.ctx.createMediaStreamSource(new MediaStream([this.clone]));
      this.analyser = this.ctx.createAnalyser();
      this.analyser.fftSize = FFT_SIZE;
      const silent = this.ctx.createGain(); // pulled by the destination in every browser, heard by nobody
      silent.gain.value = 0;
      source.connect(this.analyser);
      this.analyser.connect(silent);
      silent.connect(this.ctx.destination);
    } catch (err) {
      console.info(`amphi meter: not measuring the microphone (${err.message})`);
      this.stop();
      return false;
    }
    this.buf = new Float32Array(this.analyser.fftSize);
    // Autoplay policies start a context suspended without a user gesture: the next one resumes it.
    for (const type of ["pointerdown", "keydown"]) document.addEventListener(type, this.resume, true);
    this.resume();
    this.timer = setInterval(() => this.read(), METER_EVERY_MS);
    return true;
  }

  read() {
    if (!this.analyser) return;
    this.analyser.getFloatTimeDomainData(this.buf);
    let sum = 0;
    for (let i = 0; i < this.buf.length; i += 1) sum += this.buf[i] * this.buf[i];
    this.dbfs = 10 * Math.log10(sum / this.buf.length + 1e-12);
    this.peakDbfs = Math.max(this.peakDbfs, this.dbfs);
    if (this.detector.update(this.dbfs, this.muted, this.now())) this.onChange(this);
  }

  setMuted(muted) {
    muted = Boolean(muted);
    if (muted === this.muted) return;
    this.muted = muted;
    this.resume(); // usually inside the click that muted
    if (this.detector.update(this.dbfs, this.muted, this.now())) this.onChange(this);
  }

  snapshot() {
    const out = { dbfs: Math.round(this.dbfs), peakDbfs: Math.round(this.peakDbfs), muted: this.muted,
      mutedTalking: this.mutedTalking, context: this.ctx ? this.ctx.state : null };
    this.peakDbfs = -Infinity;
    return out;
  }

  stop() {
    clearInterval(this.timer);
    this.timer = 0;
    if (typeof document !== "undefined") {
      for (const type of ["pointerdown", "keydown"]) document.removeEventListener(type, this.resume, true);
    }
    if (this.clone) this.clone.stop();
    if (this.ctx) this.ctx.close().catch(() => {});
    this.clone = null;
    this.ctx = null;
    this.analyser = null;
    const was = this.detector.shown;
    this.detector = new MutedTalk();
    if (was) this.onChange(this);
  }
}

// The words for it, shared by the listener page and the host console.
export const MUTED_TALKING_TEXT = "You’re muted: nobody hears you. Unmute to speak.";
export const HOST_MUTED_TALKING_TEXT = "The host muted you: nobody hears you until they unmute you.";
export const FEEDBACK_TEXT = "We hear an echo of the Space in your microphone, so your voice is turned down while others talk. Use headphones.";

// -- the console's words ---------------------------------------------------------------------

function signed(x, { plus = false } = {}) {
  const v = Math.round(Number(x) * 10) / 10;
  const text = Number.isInteger(v) ? String(Math.abs(v)) : Math.abs(v).toFixed(1);
  if (v < 0) return `-${text}`;
  return plus && v > 0 ? `+${text}` : text;
}

// A speaker's loudness (LUFS, in half steps), or that nothing was heard from them yet.
export function loudnessText(lufs) {
  if (lufs === null || lufs === undefined || !Number.isFinite(Number(lufs))) return "not heard yet";
  return `${signed(lufs)} LUFS`;
}

// The leveler's gain: "+12 dB", "0 dB", "-3.5 dB".
export function gainText(db) {
  if (db === null || db === undefined || !Number.isFinite(Number(db))) return "";
  return `${signed(db, { plus: true })} dB`;
}

// How long the program has been silent: "12 s", "3 min 5 s", "1 h 2 min".
export function lastedText(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// The speaker's problems, as the server says them, or worked out from the row's figures.
export function problemsOf(sp) {
  if (Array.isArray(sp.problems)) return sp.problems;
  const out = [];
  if (!sp.connected) out.push("not connected");
  else if (!sp.heard) out.push("not heard yet");
  if (sp.feedback) out.push("feedback: use headphones");
  return out;
}

// The ready line: before the start "Stage ready" or "Not ready: Ann: not connected; Bob: not
// heard yet"; while live, the same checks in other words, and who is muted.
export function readyLine(sound, state = "scheduled") {
  const speakers = Array.isArray(sound && sound.speakers) ? sound.speakers : [];
  const live = state === "live";
  if (speakers.length === 0) return { ready: false, text: live ? "Nobody is on stage." : "Not ready: nobody is on stage." };
  const issues = speakers
    .map((sp) => [sp.name, problemsOf(sp)])
    .filter(([, problems]) => problems.length > 0)
    .map(([name, problems]) => `${name}: ${problems.join(", ")}`);
  const ready = sound.ready !== undefined ? Boolean(sound.ready) && issues.length === 0 : issues.length === 0;
  if (ready && live) {
    const muted = speakers.filter((sp) => sp.muted).map((sp) => sp.name);
    if (muted.length === speakers.length) return { ready: false, text: "Everyone on stage is muted." };
    const also = muted.length ? `; muted: ${muted.join(", ")}` : "";
    return { ready, text: `Everyone on stage is connected and heard${also}.` };
  }
  if (ready) return { ready, text: "Stage ready" };
  return { ready, text: `${live ? "Check" : "Not ready"}: ${issues.join("; ")}` };
}

// Seconds the program has been silent: `since` is when it went silent; the alert comes
// after_s into the silence, so never less than that (a clock a little behind the server's).
export function deadAirLastedS(dead, nowMs) {
  const after = Number(dead.after_s) || 0;
  const lasted = nowMs / 1000 - Number(dead.since);
  return Number.isFinite(lasted) ? Math.max(after, lasted) : after;
}

export function feedbackText(name) {
  return `Feedback on ${name}’s microphone: they should use headphones.`;
}

// -- the console's panel ---------------------------------------------------------------------

function el(doc, tag, className, text) {
  const node = doc.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const CHECKS = [
  ["connected", (sp) => Boolean(sp.connected), "connected", "not connected"],
  ["heard", (sp) => Boolean(sp.heard), "heard", "not heard yet"],
  ["feedback", (sp) => !sp.feedback, "no feedback", "feedback"],
];

// The dead-air banner and the Sound card of the host console, updated in place. ui: {banner,
// bannerMessage, bannerLasted, card, title, ready, list, empty, note}; now() in ms, on the
// server's clock (the alert's `since` is the server's).
export class SoundPanel {
  constructor(doc, ui, { now = () => Date.now() } = {}) {
    this.doc = doc;
    this.ui = ui;
    this.now = now;
    this.sound = null;
    this.state = null;
    this.rows = new Map();
  }

  render(sound, state) {
    this.sound = sound || null;
    this.state = state;
    const { ui } = this;
    const ended = state === "ended";
    ui.card.hidden = !sound || ended;
    this.renderBanner();
    if (!sound || ended) return;
    ui.title.textContent = state === "live" ? "Sound" : "Ready to go live";
    const line = readyLine(sound, state);
    if (ui.ready.textContent !== line.text) ui.ready.textContent = line.text;
    ui.ready.dataset.ready = String(line.ready);
    const target = Number(sound.target_lufs);
    ui.note.textContent = Number.isFinite(target)
      ? `Each voice is levelled towards ${signed(target)} LUFS, and the program never clips.`
      : "";
    const speakers = Array.isArray(sound.speakers) ? sound.speakers : [];
    ui.empty.hidden = speakers.length > 0;
    syncKeyedList(ui.list, this.rows, speakers, () => this.createRow(), (row, sp) => this.updateRow(row, sp));
  }

  // The banner's clock moves every second between two views.
  tick() { this.renderBanner(); }

  renderBanner() {
    const { ui } = this;
    const dead = this.sound && this.state === "live" ? this.sound.dead_air : null;
    if (!dead) {
      ui.banner.hidden = true;
      ui.banner.dataset.reason = "";
      return;
    }
    ui.banner.hidden = false;
    ui.banner.dataset.reason = dead.reason || "";
    if (ui.bannerMessage.textContent !== dead.message) ui.bannerMessage.textContent = dead.message || "Dead air.";
    ui.bannerLasted.textContent = `Silent for ${lastedText(deadAirLastedS(dead, this.now()))}`;
  }

  createRow() {
    const doc = this.doc;
    const li = el(doc, "li", "sound-row");
    const head = el(doc, "div", "sound-head");
    const name = el(doc, "span", "name");
    const figures = el(doc, "span", "sound-figures");
    const loudness = el(doc, "span", "loudness");
    const gain = el(doc, "span", "gain");
    figures.append(loudness, gain);
    head.append(name, figures);
    const meter = el(doc, "div", "meter");
    meter.setAttribute("role", "meter");
    meter.setAttribute("aria-valuemin", "0");
    meter.setAttribute("aria-valuemax", "100");
    const fill = el(doc, "span", "meter-fill");
    meter.append(fill);
    const checks = el(doc, "ul", "checks");
    const items = {};
    for (const [key] of CHECKS) {
      const item = el(doc, "li");
      item.dataset.check = key;
      const mark = el(doc, "span", "mark");
      mark.setAttribute("aria-hidden", "true");
      const text = el(doc, "span", "check-text");
      item.append(mark, text);
      checks.append(item);
      items[key] = { item, mark, text };
    }
    const warning = el(doc, "p", "sound-warning");
    warning.setAttribute("role", "alert");
    warning.hidden = true;
    li.append(head, meter, checks, warning);
    return { li, name, loudness, gain, meter, fill, items, warning };
  }

  updateRow(row, sp) {
    const set = (node, text) => { if (node.textContent !== text) node.textContent = text; };
    const problems = problemsOf(sp);
    row.li.dataset.id = sp.id;
    row.li.dataset.ready = String(sp.ready !== undefined ? Boolean(sp.ready) : problems.length === 0);
    row.li.dataset.connected = String(Boolean(sp.connected));
    row.li.dataset.muted = String(Boolean(sp.muted));
    row.li.dataset.feedback = sp.feedback || "";
    set(row.name, sp.muted ? `${sp.name} (muted)` : sp.name);
    set(row.loudness, loudnessText(sp.loudness));
    row.loudness.dataset.heard = String(sp.loudness !== null && sp.loudness !== undefined);
    const gain = gainText(sp.gain_db);
    set(row.gain, gain ? `gain ${gain}` : "");
    row.gain.hidden = !gain || sp.loudness === null || sp.loudness === undefined;
    const level = sp.connected && !sp.muted ? Math.max(0, Math.min(1, Number(sp.level) || 0)) : 0;
    const pct = String(Math.round(level * 100));
    row.fill.style.setProperty("--level", String(level));
    if (row.meter.getAttribute("aria-valuenow") !== pct) row.meter.setAttribute("aria-valuenow", pct);
    row.meter.setAttribute("aria-label", `${sp.name}’s level`);
    for (const [key, ok, yes, no] of CHECKS) {
      const { item, mark, text } = row.items[key];
      const good = ok(sp);
      item.dataset.ok = String(good);
      set(mark, good ? "✓" : "✗");
      set(text, good ? yes : no);
    }
    row.warning.hidden = !sp.feedback;
    set(row.warning, sp.feedback ? feedbackText(sp.name) : "");
  }

  // For tests (window.amphiStage.sound).
  snapshot() {
    const { ui } = this;
    return {
      view: this.sound,
      shown: !ui.card.hidden,
      title: ui.title.textContent,
      ready: ui.ready.textContent,
      deadAir: ui.banner.hidden ? null : { reason: ui.banner.dataset.reason, message: ui.bannerMessage.textContent, lasted: ui.bannerLasted.textContent },
      rows: [...this.rows.values()].map((r) => ({
        id: r.li.dataset.id, name: r.name.textContent, loudness: r.loudness.textContent, gain: r.gain.textContent,
        level: Number(r.meter.getAttribute("aria-valuenow")) / 100,
        checks: Object.fromEntries(Object.entries(r.items).map(([k, v]) => [k, v.item.dataset.ok === "true"])),
        warning: r.warning.hidden ? null : r.warning.textContent,
      })),
    };
  }
}
