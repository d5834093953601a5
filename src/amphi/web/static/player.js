// One player for the listener page: the live playlist (hold music, then live audio) and,
// once the Space has ended, its replay. Shaka Player plays wherever it is supported (Media
// Source); otherwise Safari plays HLS natively. Why Shaka, with figures: docs/player.md.
//
// Live, Shaka runs in low-latency mode and reads the playlist's byte-range parts as what they
// are, byte ranges of one segment: it fetches each segment with ONE request, which the node
// (or the edge) answers while the segment is still being made, part by part, and appends each
// part (a moof+mdat) the moment it arrives. Its blocking playlist reload asks for the next
// segment's first part, so it too is answered about once a segment. About one playlist and one
// segment request per segment, and each part heard as soon as it exists.
//
// States (player.state): idle -> connecting -> buffering <-> playing -> idle (stopped or
//   ended), plus paused (replay) and retrying.
// Media requests carry the seat's newest token and go to its current edge (seat.mediaUrl);
// the live playlist renews the token (a 307 to the same path with a new one): the seat takes
// it from the URL the playlist came from (seat.adopt). 401/403 on live media is about the
// token: the seat deals with it (seat.mediaRefused).
// Recovery: Shaka retries a request twice itself; a failed segment stream is resumed
// (retryStreaming) and a playlist that cannot be loaded is loaded again, with back-off, so a
// server that is down is not hammered; when network errors persist, or anything else fails, a
// new player (replay) or a fresh admission (live: a restarted node serves a Space again after
// a join). A request that gets no answer at all moves the seat to another edge.
//
// hooks: change() (state or note changed), stopped() (live playback paused from outside:
//   media keys, the lock screen), blocked() (admitted, the browser wants a tap), ended(wasLive),
//   error(text), restartLive() (only a fresh admission helps).

import { Backoff } from "./api.js";
import { RETRY_MS, mediaToken } from "./admission.js";

// Live, playback starts this far behind the newest part the playlist lists (the playlist's
// PART-HOLD-BACK, three parts, is about the same): parts arrive as they are made, and the
// buffer must also cover the gap at a segment's end (the next segment's first part, then a
// playlist and a segment round trip). Behind live is then about 2 s (docs/player.md).
const LIVE_DELAY_S = 1.5;
const TARGET_BEHIND_S = 2.0; // what the page aims at, behind the wall clock (the "Jump to live" button is 3 s past it)
const STEER = 0.03; // playback this much faster or slower (pitch kept) to get back to TARGET_BEHIND_S
const STEER_DEADBAND_S = 0.1;
const STEER_MIN_AHEAD_S = 0.5;
const REJOIN_AFTER = 3; // failed attempts in a row before joining afresh (the node may have restarted)

// shaka.util.Error codes the player acts on (lib/util/error.js)
const BAD_HTTP_STATUS = 1001; // data[1]: the status
const HTTP_ERROR = 1002; // no answer at all
const TIMEOUT = 1003;
const CRITICAL = 2; // severity
const NETWORK = 1; // category

function httpStatus(error) {
  return error && error.code === BAD_HTTP_STATUS && error.data ? Number(error.data[1]) || 0 : 0;
}

// Shaka's settings for both modes; live adds low latency (docs/player.md).
function shakaConfig(failureCallback) {
  const retry = { maxAttempts: 3, baseDelay: 250, backoffFactor: 2, fuzzFactor: 0.5, timeout: 30000, stallTimeout: 10000 };
  return {
    streaming: {
      lowLatencyMode: true,
      retryParameters: retry,
      failureCallback,
      stallSkip: 0.1,
      rebufferingGoal: 0.5, // seconds buffered before playing starts (or resumes): no stall straight after the start
      segmentPrefetchLimit: 0, // a segment is fetched once, by the request that streams it
    },
    manifest: {
      defaultPresentationDelay: LIVE_DELAY_S,
      retryParameters: retry,
      hls: { allowLowLatencyByteRangeOptimization: true },
    },
    abr: { enabled: false }, // one rendition
  };
}

// What Shaka applies over the settings above once it sees a low-latency stream (its own
// defaults for that, createDefaultForLL, would turn segment prefetch back on).
const LOW_LATENCY = {
  streaming: {
    inaccurateManifestTolerance: 0,
    segmentPrefetchLimit: 0, // a segment is fetched once, by the request that streams it
    updateIntervalSeconds: 0.1, // the next segment is asked for within 0.1 s of the playlist naming it
    maxDisabledTime: 1,
  },
};

export class Player {
  // shaka: the library (window.shaka) or null; now(): the server's wall clock, in ms (the
  // page corrects ours by the Date header), for how far behind live we are.
  constructor(audio, { shaka = null, seat, hooks = {}, now = () => Date.now() }) {
    this.audio = audio;
    this.shaka = shaka && shaka.Player && shaka.Player.isBrowserSupported() ? shaka : null;
    if (this.shaka) this.shaka.polyfill.installAll();
    this.seat = seat; // the Admission: token, edges, what to do when media refuses the token
    this.hooks = hooks;
    this.now = now;
    this.nativeHls = !this.shaka && audio.canPlayType("application/vnd.apple.mpegurl") !== "";
    this.engine = this.shaka ? "shaka" : this.nativeHls ? "native" : null;
    this.state = "idle";
    this.mode = null; // "live" (hold music, then the Space) or "replay"
    this.url = null;
    this.sp = null; // the shaka.Player of this playback
    this.ready = null; // resolves when this.sp is attached to the element
    this.teardown = Promise.resolve(); // the previous shaka.Player's destroy: one owns the element at a time
    this.fatal = []; // every error that stopped loading, recovered or not: {category, code, status, at}
    this.backoff = new Backoff(RETRY_MS);
    this.retryTimer = 0;
    this.retryText = "";
    this.generation = 0;
    this.note = ""; // the playback line when nothing plays
    this.listen();
  }

  get retries() {
    return this.backoff.attempt;
  }

  hook(name, ...args) {
    const fn = this.hooks[name];
    return fn ? fn(...args) : undefined;
  }

  setState(state) {
    this.state = state;
    this.hook("change");
  }

  setNote(text) {
    this.note = text;
    this.hook("change");
  }

  play() {
    const generation = this.generation;
    this.audio.play().catch((err) => { if (generation === this.generation) this.failed(err); });
  }

  // A fresh player; the media element is bound and play() called at once, so that a click
  // that got here counts for autoplay policies even when the playlist comes later.
  open(mode) {
    this.stop();
    this.mode = mode;
    this.note = "";
    this.seat.setBlocked(false);
    this.setState("connecting");
    if (this.shaka) {
      this.createShaka();
    } else {
      this.audio.load(); // unlocks the element for a later play() on iOS
    }
    this.audio.play().catch(() => { /* resolved or retried once the source is there */ });
  }

  load(url) {
    this.url = url;
    if (this.sp) this.loadShaka(this.sp, url);
    else this.audio.src = url;
    this.play();
  }

  playLive(url) {
    this.open("live");
    this.load(url);
  }

  playReplay(url) {
    this.hook("error", "");
    this.open("replay");
    this.load(url);
  }

  get running() {
    return this.mode === "live" && this.state !== "idle";
  }

  failed(err) {
    if (err && err.name === "AbortError") return; // a newer load or a stop interrupted it
    if (err && err.name === "NotAllowedError") {
      const live = this.mode === "live" && this.seat.phase === "playing";
      this.stop();
      if (live) {
        // Admitted, but the browser wants a gesture first: the seat is kept for a while.
        console.info("amphi: the browser blocked playback until a tap");
        this.seat.setBlocked(true);
        this.hook("blocked");
      } else {
        this.setNote("The browser blocked playback: press Play again.");
      }
      return;
    }
    this.hook("error", `Playback failed: ${err && err.message ? err.message : err}`);
  }

  // -- Shaka --------------------------------------------------------------------------

  createShaka() {
    const { shaka } = this;
    const sp = new shaka.Player();
    this.sp = sp;
    sp.configure(shakaConfig((error) => this.streamingFailed(sp, error)));
    sp.configurationForLowLatency(LOW_LATENCY);
    const net = sp.getNetworkingEngine();
    net.registerRequestFilter((_type, request) => {
      request.uris = request.uris.map((u) => this.seat.mediaUrl(u));
    });
    const { MANIFEST, SEGMENT } = shaka.net.NetworkingEngine.RequestType;
    net.registerResponseFilter((type, response) => {
      if (sp !== this.sp || (type !== MANIFEST && type !== SEGMENT)) return;
      // The live playlist renews the token (a 307 to the same path with a new one): Shaka's
      // response.uri is the URL after redirects. The seat takes it if it is newer, and the
      // request filter puts it into every later URL.
      if (type === MANIFEST && this.mode === "live") {
        const token = mediaToken(response.uri);
        if (token) this.seat.adopt(token);
      }
      if (this.backoff.attempt && this.state === "retrying") this.setState(this.audio.paused ? "buffering" : "playing");
      this.backoff.reset();
      this.seat.mediaFlowing();
    });
    sp.addEventListener("error", (event) => this.onShakaError(sp, event.detail));
    this.ready = this.teardown.then(() => sp.attach(this.audio));
  }

  loadShaka(sp, url, startTime = null) {
    this.ready
      .then(() => (sp === this.sp ? sp.load(url, startTime) : undefined))
      .then(() => {
        // Attaching gave the element a new source, which aborted any earlier play().
        if (sp === this.sp && this.audio.paused) this.play();
      })
      .catch((error) => {
        if (sp !== this.sp || (error && error.code === 7000)) return; // LOAD_INTERRUPTED: a newer load or a stop
        this.onShakaError(sp, error, false);
        this.loadFailed(sp, error);
      });
  }

  // Every error Shaka reports: the token, the edge, and what stopped loading.
  onShakaError(sp, error, fromEvent = true) {
    if (sp !== this.sp || !error) return;
    const status = httpStatus(error);
    if (error.severity === CRITICAL) {
      this.fatal.push({ category: error.category, code: error.code, status, at: Date.now() });
      console.warn("shaka fatal error", error.category, error.code, status, error.data);
    }
    if (this.mode === "live" && (status === 401 || status === 403)) {
      error.handled = true; // no retrying this token: the seat renews it, and the player starts again
      this.seat.mediaRefused(status);
      return;
    }
    if (error.code === HTTP_ERROR || error.code === TIMEOUT) this.seat.otherEdge();
    // A failure of the media itself (decoding, Media Source) stops Shaka for good: a new one.
    if (fromEvent && error.severity === CRITICAL && error.category !== NETWORK && !error.handled) {
      this.recover(sp, 0, null);
    }
  }

  // A segment could not be loaded (Shaka's own retries included): resume, with back-off.
  streamingFailed(sp, error) {
    if (sp !== this.sp || error.handled) return;
    this.recover(sp, httpStatus(error), () => sp.retryStreaming());
  }

  // The playlist could not be loaded: load it again, with back-off.
  loadFailed(sp, error) {
    const status = httpStatus(error);
    if (this.mode === "live" && (status === 401 || status === 403)) return; // the seat is on it
    const network = error && error.category === NETWORK;
    this.recover(sp, status, network ? () => this.loadShaka(sp, this.url) : null);
  }

  // After the next back-off delay: again() (network errors), a few times; then, or at once
  // for a 4xx other than the token's (this playlist is gone: the node restarted, say), a fresh
  // admission (live) or a new player (replay). Without again() (the media failed, not the
  // network), a new player on the same playlist.
  recover(sp, status, again) {
    const gone4xx = status >= 400 && status < 500;
    this.retryLater(() => {
      if (sp !== this.sp) return;
      const persisting = this.backoff.attempt > REJOIN_AFTER;
      if (again && !gone4xx && !persisting) again();
      else if (this.mode === "replay" || (!again && !persisting)) this.reopen();
      else this.hook("restartLive");
    });
  }

  // A new player on the same playlist, the back-off carried on.
  reopen() {
    const { mode, url } = this;
    const attempt = this.backoff.attempt;
    if (mode === "replay") this.playReplay(url);
    else this.playLive(url);
    this.backoff.attempt = attempt;
  }

  // Runs action after the next back-off delay, showing the countdown meanwhile.
  retryLater(action) {
    const delay = this.backoff.next();
    this.retryText = `Connection lost; trying again in ${Math.round(delay / 1000)} s…`;
    this.setState("retrying");
    clearTimeout(this.retryTimer);
    const generation = this.generation;
    this.retryTimer = setTimeout(() => {
      if (generation === this.generation) action();
    }, delay);
  }

  // Seconds behind the live edge, or null: the wall time now (the server's) minus the
  // EXT-X-PROGRAM-DATE-TIME of the sample playing.
  behindLive() {
    if (this.sp) {
      if (!this.audio.currentTime) return null;
      const at = this.sp.getPlayheadTimeAsDate();
      const behind = at ? (this.now() - at.getTime()) / 1000 : NaN;
      return Number.isFinite(behind) ? Math.max(0, behind) : null;
    }
    const r = this.audio.seekable;
    return r && r.length ? Math.max(0, r.end(r.length - 1) - this.audio.currentTime) : null;
  }

  // How far behind live the player aims to be, in seconds.
  targetLatency() {
    return this.sp ? TARGET_BEHIND_S : 3;
  }

  jumpToLive() {
    const { sp, audio } = this;
    if (sp && sp.isLive()) sp.goToLive();
    else if (audio.seekable.length) audio.currentTime = audio.seekable.end(audio.seekable.length - 1) - 1;
  }

  // Tears the player down (the seat is the admission's business).
  stop() {
    this.generation += 1; // anything still pending for the previous playback gives up
    clearTimeout(this.retryTimer);
    const { audio } = this;
    if (this.sp) {
      const old = this.sp;
      this.sp = null;
      this.ready = null;
      audio.pause();
      // Shaka empties the element as it goes: the next player attaches once it has.
      this.teardown = this.teardown.then(() => old.destroy()).catch((err) => console.warn("shaka destroy", err));
    } else if (audio.getAttribute("src") !== null) {
      audio.removeAttribute("src");
      audio.load();
    } else {
      audio.pause();
    }
    this.mode = null;
    this.url = null;
    this.setState("idle");
  }

  // Shaka starts 1.6 to 2.2 s behind live, depending on when the playlist it first reads was
  // made, and a stall leaves it further back; at 1.6 s only half a second is buffered, and a
  // late part is a stall. Playing 3 % faster or slower (the browser keeps the pitch) brings the
  // playhead to TARGET_BEHIND_S and keeps it there, but never eats into the last
  // STEER_MIN_AHEAD_S buffered: where parts come late (a busy machine), it stays further back.
  steer() {
    const { audio } = this;
    if (!this.sp || this.mode !== "live" || audio.paused || !audio.buffered.length) return;
    const behind = this.behindLive();
    if (behind == null) return;
    const ahead = audio.buffered.end(audio.buffered.length - 1) - audio.currentTime;
    const off = behind - TARGET_BEHIND_S;
    let rate = 1;
    if (off < -STEER_DEADBAND_S || ahead < STEER_MIN_AHEAD_S) rate = 1 - STEER;
    else if (off > STEER_DEADBAND_S && ahead > 2 * STEER_MIN_AHEAD_S) rate = 1 + STEER;
    if (audio.playbackRate !== rate) audio.playbackRate = rate;
  }

  listen() {
    const { audio } = this;
    audio.addEventListener("timeupdate", () => this.steer());
    audio.addEventListener("waiting", () => {
      if (this.state !== "idle" && this.state !== "retrying") this.setState("buffering");
    });
    audio.addEventListener("playing", () => {
      if (this.state === "idle") return;
      this.note = "";
      this.setState("playing");
    });
    audio.addEventListener("pause", () => {
      if (this.state === "idle" || audio.ended) return;
      if (this.mode === "replay") this.setState("paused");
      else this.hook("stopped"); // a live stream resumes at the edge
    });
    audio.addEventListener("ended", () => {
      if (this.state === "idle") return;
      const wasLive = this.mode === "live";
      this.stop();
      this.setNote(wasLive ? "The Space has ended." : "End of the replay.");
      this.hook("ended", wasLive);
    });
    audio.addEventListener("error", () => {
      if (this.state === "idle" || this.sp) return; // Shaka reports its own errors
      const err = audio.error;
      const { mode, url } = this;
      this.stop();
      this.setNote(`Playback error${err && err.message ? `: ${err.message}` : ""}`);
      if (mode === "live") {
        const generation = this.generation;
        setTimeout(() => { if (generation === this.generation && this.seat.phase === "playing") this.hook("restartLive"); }, 3000);
      } else if (mode === "replay" && url) {
        this.hook("error", "The replay could not be played.");
      }
    });
  }
}
