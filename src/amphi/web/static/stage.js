// The stage, shared by the listener page and the host console (docs/stage.md): the API with
// errors in plain words, the live stage by Server-Sent Events, the stage list with talking
// indicators, and speaking from the browser over WebRTC.
//
// An ES module (the API itself lives in api.js); window.AmphiStage = {call, ApiError,
// plainError, StageEvents, StageList, PeopleList, Speaker} for tests.
//
// StageEvents: one EventSource on GET /events (events: stage, the view; you, the caller's own
//   record, with a grant; ended); the browser reconnects by itself after a
//   dropped stream, and when the server refused the stream (the EventSource closed) we ask
//   GET /stage why: 401/403 (the grant is no good any more: expired, or removed from the
//   Space) and 404 -> onRefused(ApiError); a 503 with Retry-After (the Space changing host:
//   docs/cluster.md) -> a new EventSource after that long; anything else -> after a back-off.
//   states: idle -> connecting <-> open -> closed.
// Speaker (one per page): idle -> starting (microphone) -> connecting -> connected
//   <-> reconnecting -> stopped (stop(), or refused: 401/403/404/409 from /speak).
//   A connection that was up and is lost (failed, disconnected for more than 3 s, its DTLS
//   closed by the server, or no return audio for 1 s: the host died) is replaced by a fresh
//   offer at once, to the same relative URL (any node forwards it to the Space's host, new or
//   old; docs/cluster.md); suspect() (the room's event stream broke) makes that 0.5 s. An offer
//   answered 503 (or 429) with Retry-After is made again after that long (+0-15 %), without
//   climbing the back-off; any other failure (a connection that never comes up, the server
//   out of reach) waits 0.5, 1, 2, 4, 8 s (± 20 %); a connection that reached "connected"
//   resets the back-off. The page shows "reconnecting…" meanwhile.
//   Before each offer it asks GET /ice for the STUN and TURN servers to use (a fresh TURN
//   credential each time; docs/deploying.md). iceTransportPolicy is "all", unless the page's
//   URL says ?ice_transport_policy=relay (diagnostics: only TURN-relayed paths are tried).
//   route() tells which path the connection took (the selected candidate pair's types).
//   While it speaks, a MicMeter (sound.js) measures the microphone itself, muted or not:
//   snapshot().mutedTalking says that they talk while muted (the page tells them).

import { ApiError, Backoff, call, notSooner, plainError } from "./api.js";
import { syncKeyedList } from "./keyed.js";
import { MicMeter } from "./sound.js";

export { ApiError, call, plainError };

const SPEAK_BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
const EVENTS_BACKOFF_MS = [1000, 2000, 4000, 8000, 15000];
const JITTER = 0.2; // every back-off delay ± 20 %
const DISCONNECTED_GRACE_MS = 3000; // "disconnected" often heals by itself
const RETURN_SILENCE_MS = 1000; // no return audio for this long while connected: the host is gone
// (the server sends the return feed every 20 ms, silence included; its own stalls are covered up to 1 s)
const SUSPECT_SILENCE_MS = 500; // ... for a moment after the room's event stream broke
const SUSPECT_MS = 3000; // how long a broken event stream keeps the shorter limit
const WATCH_MS = 250; // how often the return audio's packet count is looked at
const RETRY_AFTER_JITTER = 0.075; // a server's Retry-After is waited 1 to 1.15 times
const CONNECT_TIMEOUT_MS = 10000; // answer set, but ICE/DTLS never got through
const ICE_GATHER_TIMEOUT_MS = 3000; // non-trickle: the offer waits for every candidate, up to this
const REFUSED = new Set([401, 403, 404, 409]); // not on stage any more, or the Space ended
const POLICIES = new Set(["all", "relay"]); // RTCIceTransportPolicy

// The page URL's ?ice_transport_policy= (diagnostics, e.g. proving a TURN server relays), else "all".
function policyFromUrl() {
  const asked = new URLSearchParams(window.location.search).get("ice_transport_policy");
  return POLICIES.has(asked) ? asked : "all";
}

// -- live state ---------------------------------------------------------------------------

export class StageEvents {
  // token: a grant for a participant's own view, or null for the public one.
  constructor(space, { token = null, onStage, onYou = () => {}, onEnded = () => {}, onRefused = () => {}, onState = () => {} }) {
    this.space = space;
    this.token = token;
    this.handlers = { onStage, onYou, onEnded, onRefused, onState };
    this.source = null;
    this.state = "idle";
    this.opens = 0; // streams opened, reconnects included
    this.events = 0; // stage events received
    this.backoff = new Backoff(EVENTS_BACKOFF_MS, { jitter: JITTER }); // refused streams in a row
    this.timer = 0;
  }

  start() {
    this.stop();
    const qs = this.token ? `?access_token=${encodeURIComponent(this.token)}` : "";
    const source = new EventSource(`/api/spaces/${encodeURIComponent(this.space)}/events${qs}`);
    this.source = source;
    this.setState("connecting");
    source.addEventListener("open", () => {
      if (source !== this.source) return;
      this.opens += 1;
      this.backoff.reset();
      this.setState("open");
    });
    source.addEventListener("stage", (event) => {
      if (source !== this.source) return;
      let view;
      try {
        view = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      this.events += 1;
      this.handlers.onStage(view);
    });
    source.addEventListener("you", (event) => { // the caller's own record (with a grant)
      if (source !== this.source) return;
      try {
        this.handlers.onYou(JSON.parse(event.data));
      } catch (_) { /* not JSON */ }
    });
    source.addEventListener("ended", (event) => {
      if (source !== this.source) return;
      this.stop();
      let data = null;
      try { data = JSON.parse(event.data); } catch (_) { /* no body */ }
      this.handlers.onEnded(data);
    });
    source.addEventListener("error", () => {
      if (source !== this.source) return;
      if (source.readyState === EventSource.CONNECTING) {
        this.setState("connecting"); // the browser tries again by itself
        return;
      }
      this.refused(); // closed for good: the server answered with an error
    });
  }

  // The stream was refused: the status of GET /stage with the same credential says why.
  async refused() {
    const source = this.source;
    this.source.close();
    this.setState("connecting");
    let refusal = null;
    try {
      await call(this.space, "GET", "/stage", { auth: this.token });
    } catch (err) {
      refusal = err;
    }
    if (source !== this.source) return; // stopped or restarted meanwhile
    if (refusal && [401, 403, 404].includes(refusal.status)) {
      this.stop();
      this.handlers.onRefused(refusal);
      return;
    }
    const delay = refusal && refusal.retryAfterS ? notSooner(refusal.retryAfterS, { jitter: RETRY_AFTER_JITTER })
      : this.backoff.next();
    this.timer = setTimeout(() => { if (source === this.source) this.start(); }, delay);
  }

  stop() {
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
    this.setState("closed");
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.handlers.onState(state);
  }
}

// -- the stage list -----------------------------------------------------------------------

const ROLE = { host: "Host", cohost: "Co-host", speaker: "Speaker" };

export function initials(name) {
  const words = String(name || "?").trim().split(/\s+/).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[words.length - 1][0] : (words[0] || "?")[0];
  return letters.toUpperCase();
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Who is on stage, one <li class="member" data-id=…> per member, updated in place (level
// changes arrive up to 5 times a second; buttons must not be replaced under a pointer).
// actions(member) -> [{label, action, disabled?, title?, kind?}], rebuilt only when the
// member's record (not its level) changes; onAction(member, action) runs on a click.
export class StageList {
  constructor(list, { youId = null, actions = null, onAction = () => {} } = {}) {
    this.list = list;
    this.youId = youId;
    this.actions = actions;
    this.onAction = onAction;
    this.items = new Map();
  }

  render(members) {
    syncKeyedList(this.list, this.items, members, (m) => this.create(m), (item, m) => this.update(item, m));
  }

  // The actions depend on more than the member (e.g. we became a co-host): rebuild them.
  reset() {
    for (const item of this.items.values()) item.signature = "";
  }

  create(m) {
    const li = el("li", "member");
    li.dataset.id = m.id;
    const avatar = el("span", "avatar");
    avatar.setAttribute("aria-hidden", "true");
    const face = el("span", "face");
    avatar.append(face);
    const who = el("span", "who");
    const name = el("span", "name");
    const detail = el("span", "detail");
    who.append(name, detail);
    const status = el("span", "talk-status visually-hidden");
    const actions = el("span", "member-actions");
    li.append(avatar, who, status, actions);
    return { li, avatar, face, name, detail, status, actions, signature: "" };
  }

  update(item, m) {
    const { li } = item;
    const muted = Boolean(m.muted || m.host_muted || m.self_muted);
    const talking = Boolean(m.talking) && !muted;
    li.dataset.role = m.role || "speaker";
    li.dataset.talking = String(talking);
    li.dataset.muted = String(muted);
    li.dataset.hostMuted = String(Boolean(m.host_muted));
    li.dataset.connected = String(m.connected !== false);
    li.dataset.feedback = m.feedback || "";
    li.classList.toggle("you", m.id === this.youId);
    const level = Math.max(0, Math.min(1, Number(m.level) || 0));
    li.style.setProperty("--level", muted ? "0" : String(level));
    item.face.textContent = initials(m.name);
    item.name.textContent = m.id === this.youId ? `${m.name} (you)` : m.name;
    const bits = [ROLE[m.role] || m.role];
    if (m.host_muted) bits.push("muted by the host");
    else if (muted) bits.push("muted");
    if (muted && m.muted_talking) bits.push("talking while muted");
    if (m.feedback) bits.push(m.id === this.youId ? "echo on your microphone" : "echo on their microphone");
    if (m.connected === false) bits.push("not connected");
    item.detail.textContent = bits.join(" · ");
    const said = talking ? "talking" : "";
    if (item.status.textContent !== said) item.status.textContent = said;
    if (!this.actions) return;
    const signature = JSON.stringify([m.role, m.muted, m.host_muted, m.self_muted, m.connected, m.name]);
    if (signature === item.signature) return;
    item.signature = signature;
    item.actions.replaceChildren(...this.actions(m).map((a) => {
      const button = el("button", `button small${a.kind ? ` ${a.kind}` : ""}`, a.label);
      button.type = "button";
      button.dataset.action = a.action;
      button.disabled = Boolean(a.disabled);
      if (a.title) button.title = a.title;
      button.setAttribute("aria-label", `${a.label}: ${m.name}`);
      button.addEventListener("click", () => this.onAction(m, a.action, button));
      return button;
    }));
  }
}

// People waiting for an answer (requests, invites): one <li data-id> each, with buttons
// [{label, action, kind?}]; rebuilt only when who is in the list changes.
export class PeopleList {
  constructor(list, { buttons, onAction, detail = () => "" }) {
    this.list = list;
    this.buttons = buttons;
    this.onAction = onAction;
    this.detail = detail;
    this.signature = "";
  }

  render(people) {
    const signature = JSON.stringify(people.map((p) => [p.id, p.name]));
    if (signature === this.signature) return; // keep the buttons under the pointer
    this.signature = signature;
    this.list.replaceChildren(...people.map((p) => {
      const li = el("li");
      li.dataset.id = p.id;
      const who = el("span", "who");
      who.append(el("span", "name", p.name));
      const detail = this.detail(p);
      if (detail) who.append(el("span", "detail", detail));
      const actions = el("span", "member-actions");
      for (const b of this.buttons(p)) {
        const button = el("button", `button small${b.kind ? ` ${b.kind}` : ""}`, b.label);
        button.type = "button";
        button.dataset.action = b.action;
        button.setAttribute("aria-label", `${b.label}: ${p.name}`);
        button.addEventListener("click", () => this.onAction(p, b.action, button));
        actions.append(button);
      }
      li.append(who, actions);
      return li;
    }));
  }
}

// -- speaking -----------------------------------------------------------------------------

// What the person on stage reads while their speaker reconnects (retryInMs: the wait left).
export function reconnectingText(retryInMs) {
  const s = Math.ceil(retryInMs / 1000);
  return s > 0 ? `Connection lost; reconnecting in ${s} s…` : "Connection lost; reconnecting…";
}

// Speaks into a Space from this browser and plays the return feed (the others, without us).
// credential() -> the bearer for POST /speak (a grant or the host key), read at every offer.
export class Speaker {
  constructor(space, { credential, audio, onChange = () => {}, onRefused = () => {}, iceTransportPolicy = policyFromUrl() }) {
    this.space = space;
    this.iceTransportPolicy = iceTransportPolicy;
    this.credential = credential;
    this.audio = audio;
    this.onChange = onChange;
    this.onRefused = onRefused;
    this.state = "idle";
    this.pc = null;
    this.session = null; // the connection's WHIP session (RFC 9725: the 201's Location), DELETEd when done
    this.stream = null;
    this.track = null;
    this.muted = false;
    this.hostMuted = false; // the stage says so; the track still sends (the server mutes)
    this.meter = null;
    this.backoff = new Backoff(SPEAK_BACKOFF_MS, { jitter: JITTER }); // failed attempts since the last good connection
    this.connects = 0; // connections that reached "connected"
    this.reconnects = 0; // fresh offers after a lost or failed connection
    this.offers = 0;
    this.lastError = null;
    this.refusedWith = null;
    this.retryAt = 0;
    this.suspectUntil = 0; // until then, a shorter silence means the connection is lost
    this.losses = 0; // connections lost after they were up (a dead host, a dropped network)
    this.timers = new Set();
    this.generation = 0;
  }

  // For tests and the page: a plain snapshot.
  snapshot() {
    return {
      state: this.state, muted: this.muted, connects: this.connects, reconnects: this.reconnects,
      offers: this.offers, losses: this.losses, lastError: this.lastError, refusedWith: this.refusedWith,
      connection: this.pc ? this.pc.connectionState : null,
      retryInMs: this.state === "reconnecting" ? Math.max(0, this.retryAt - Date.now()) : 0,
      mutedTalking: this.mutedTalking, mic: this.meter ? this.meter.snapshot() : null,
    };
  }

  // Our own microphone says we talk while muted (self- or host-muted).
  get mutedTalking() {
    return Boolean(this.meter && this.meter.mutedTalking);
  }

  setState(state) {
    if (state === this.state) return;
    console.info(`amphi speaker: ${this.state} -> ${state}`);
    this.state = state;
    this.onChange(this);
  }

  after(ms, fn) {
    const generation = this.generation;
    const id = setTimeout(() => {
      this.timers.delete(id);
      if (generation === this.generation) fn();
    }, ms);
    this.timers.add(id);
  }

  // Asks for the microphone (rejects if refused), then connects.
  async start() {
    if (this.state !== "idle" && this.state !== "stopped") throw new Error(`cannot start a speaker that is ${this.state}`);
    this.generation += 1;
    this.backoff.reset();
    this.refusedWith = null;
    this.lastError = null;
    this.setState("starting");
    const generation = this.generation;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: false,
      });
    } catch (err) {
      this.lastError = err.name === "NotAllowedError" ? "microphone access was refused" : `microphone: ${err.message}`;
      this.setState("stopped");
      throw new Error(this.lastError);
    }
    if (generation !== this.generation) { // stopped while the browser asked
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    this.stream = stream;
    this.track = stream.getAudioTracks()[0];
    this.track.enabled = !this.muted;
    this.meter = new MicMeter(this.track, { onChange: () => this.onChange(this) });
    this.meter.setMuted(this.muted || this.hostMuted);
    this.meter.start();
    this.connect();
  }

  async connect() {
    const generation = this.generation;
    this.closePeer();
    this.setState(this.connects > 0 || this.backoff.attempt > 0 ? "reconnecting" : "connecting");
    let iceServers;
    try {
      iceServers = (await call(this.space, "GET", "/ice", { auth: this.credential() })).ice_servers;
    } catch (err) {
      if (generation !== this.generation || this.pc) return;
      return this.failed(err);
    }
    if (generation !== this.generation || this.pc) return; // stopped, or another connect() ran meanwhile
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: this.iceTransportPolicy });
    this.pc = pc;
    const transceiver = pc.addTransceiver(this.track, { direction: "sendrecv", streams: [this.stream] });
    pc.addEventListener("track", (event) => {
      if (pc !== this.pc) return;
      this.audio.srcObject = event.streams && event.streams[0] ? event.streams[0] : new MediaStream([event.track]);
      this.audio.play().catch(() => { /* autoplay: the click that got us on stage usually allows it */ });
    });
    pc.addEventListener("connectionstatechange", () => this.watch(pc));
    let answer;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      if (pc !== this.pc) return;
      this.offers += 1;
      const reply = await call(this.space, "POST", "/speak", { auth: this.credential(), body: { sdp: pc.localDescription.sdp }, reply: true });
      answer = reply.data;
      const session = reply.headers.get("location");
      if (pc !== this.pc) return this.hangUp(session); // stopped or replaced meanwhile: the server hangs it up now
      this.session = session;
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
      // The server hanging up closes DTLS at once; ICE would notice only seconds later.
      const dtls = transceiver.sender.transport;
      if (dtls) {
        dtls.addEventListener("statechange", () => {
          if (pc !== this.pc || (dtls.state !== "closed" && dtls.state !== "failed")) return;
          this.lastError = "the server hung up";
          this.retry();
        });
      }
    } catch (err) {
      if (pc !== this.pc || generation !== this.generation) return;
      return this.failed(err);
    }
    // Answered; ICE and DTLS must now get through.
    this.after(CONNECT_TIMEOUT_MS, () => {
      if (pc === this.pc && pc.connectionState !== "connected") {
        this.lastError = "the connection did not come up";
        this.retry();
      }
    });
  }

  // An offer or its ICE servers could not be had: refused for good, or try again later.
  failed(err) {
    this.lastError = err instanceof ApiError ? plainError(err) : String(err.message || err);
    if (err instanceof ApiError && REFUSED.has(err.status)) return this.refused(err);
    return this.retry(err instanceof ApiError ? err.retryAfterS : null);
  }

  // Which path the media took: the selected candidate pair's local and remote candidates
  // ({type: host | srflx | prflx | relay, address, port, protocol}), or null before one is chosen.
  async route() {
    if (!this.pc) return null;
    const stats = await this.pc.getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
    });
    if (!pair) return null;
    const candidate = (id) => {
      const c = stats.get(id);
      return c ? { type: c.candidateType, address: c.address, port: c.port, protocol: c.protocol } : null;
    };
    return { local: candidate(pair.localCandidateId), remote: candidate(pair.remoteCandidateId), state: pair.state };
  }

  watch(pc) {
    if (pc !== this.pc) return;
    const s = pc.connectionState;
    if (s === "connected") {
      this.backoff.reset();
      this.connects += 1;
      this.lastError = null;
      this.setState("connected");
      this.watchReturn(pc);
    } else if (s === "failed") {
      this.lastError = "the connection failed";
      this.retry();
    } else if (s === "disconnected") {
      this.lastError = "the connection was interrupted";
      this.after(DISCONNECTED_GRACE_MS, () => {
        if (pc === this.pc && pc.connectionState !== "connected") this.retry();
      });
    }
  }

  // Watches the return feed's packets while connected: none for RETURN_SILENCE_MS (half that
  // after suspect()) and the connection is lost, whatever ICE says (it takes seconds to notice).
  watchReturn(pc) {
    let count = -1;
    let changed = Date.now();
    const look = async () => {
      if (pc !== this.pc || this.state !== "connected") return;
      let received = null;
      try {
        (await pc.getStats()).forEach((r) => {
          if (r.type === "inbound-rtp" && r.kind === "audio") received = r.packetsReceived;
        });
      } catch (_) { /* closed meanwhile */ }
      if (pc !== this.pc || this.state !== "connected") return;
      const now = Date.now();
      if (received !== count) {
        count = received;
        changed = now;
      }
      const limit = now < this.suspectUntil ? SUSPECT_SILENCE_MS : RETURN_SILENCE_MS;
      if (now - changed >= limit) {
        this.lastError = "the audio from the server stopped";
        this.retry();
        return;
      }
      this.after(WATCH_MS, look);
    };
    this.after(WATCH_MS, look);
  }

  // The room's event stream broke: the host may be gone. A connection still receiving is kept.
  suspect() {
    this.suspectUntil = Date.now() + SUSPECT_MS;
  }

  // A fresh offer: at once for a connection that was up (the host may have died: any node
  // forwards the offer to the new one); after the server's Retry-After if it named one (503:
  // the Space is changing host), without climbing the back-off; else after the back-off.
  retry(retryAfterS = null) {
    if (this.state === "stopped") return;
    const wasUp = this.state === "connected";
    this.closePeer();
    let delay;
    if (retryAfterS) delay = notSooner(retryAfterS, { jitter: RETRY_AFTER_JITTER });
    else if (wasUp) delay = 0;
    else delay = this.backoff.next();
    if (wasUp) this.losses += 1;
    this.reconnects += 1;
    this.retryAt = Date.now() + delay;
    this.setState("reconnecting");
    this.after(delay, () => this.connect());
  }

  refused(err) {
    this.refusedWith = err.status;
    this.stop();
    this.onRefused(err);
  }

  // Mutes locally (the track sends silence); the page tells the stage.
  setMuted(muted) {
    this.muted = Boolean(muted);
    if (this.track) this.track.enabled = !this.muted;
    if (this.meter) this.meter.setMuted(this.muted || this.hostMuted);
    this.onChange(this);
  }

  // A host's mute: the track still sends, but the meter knows nobody hears it.
  setHostMuted(hostMuted) {
    this.hostMuted = Boolean(hostMuted);
    if (this.meter) this.meter.setMuted(this.muted || this.hostMuted);
  }

  closePeer() {
    if (!this.pc) return;
    const pc = this.pc;
    this.pc = null;
    pc.close();
    const session = this.session;
    this.session = null;
    this.hangUp(session);
  }

  // WHIP's DELETE of a session (RFC 9725 section 4.2): the server hangs up at once instead of
  // noticing the closed connection; keepalive lets it go out while the page unloads. Best effort.
  hangUp(session) {
    if (!session) return;
    const auth = this.credential();
    globalThis.fetch(session, { method: "DELETE", headers: auth ? { authorization: `Bearer ${auth}` } : {}, keepalive: true })
      .catch(() => { /* the server sees the connection close anyway */ });
  }

  stop() {
    this.generation += 1;
    for (const id of this.timers) clearTimeout(id);
    this.timers.clear();
    this.closePeer();
    if (this.meter) this.meter.stop();
    this.meter = null;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.stream = null;
    this.track = null;
    if (this.audio.srcObject) {
      this.audio.pause();
      this.audio.srcObject = null;
    }
    this.setState("stopped");
  }
}

// Non-trickle: resolves once ICE gathering is complete (or after a few seconds, with what
// was gathered by then).
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, ICE_GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// The classic pages' and tests' handle (page.evaluate runs outside the modules).
window.AmphiStage = { call, ApiError, plainError, StageEvents, StageList, PeopleList, Speaker, initials, reconnectingText };
