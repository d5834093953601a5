// One player for the listener page: the live playlist (hold music, then live audio) and,
// once the Space has ended, its replay. hls.js plays wherever it is supported; otherwise
// Safari plays HLS natively.
//
// States (player.state): idle -> connecting -> buffering <-> playing -> idle (stopped or
//   ended), plus paused (replay) and retrying.
// Media requests carry the seat's newest token and go to its current edge (seat.mediaUrl);
// 401/403 on live media is about the token: the seat deals with it (seat.mediaRefused).
// Recovery per the hls.js docs: startLoad() after a fatal network error (with back-off, so a
// server that is down is not hammered), recoverMediaError() after a fatal media error
// (swapping the audio codec if it fails again at once), a new player for anything else, and
// also when network errors persist: a restarted node serves a Space again after a join.
//
// hooks: change() (state or note changed), stopped() (live playback paused from outside:
//   media keys, the lock screen), blocked() (admitted, the browser wants a tap), ended(wasLive),
//   error(text), restartLive() (only a fresh admission helps).

import { Backoff } from "./api.js";
import { RETRY_MS } from "./admission.js";

const REJOIN_AFTER = 3; // fatal network errors in a row before joining afresh (the node may have restarted)

export class Player {
  constructor(audio, { Hls = null, seat, hooks = {} }) {
    this.audio = audio;
    this.Hls = Hls && Hls.isSupported() ? Hls : null;
    this.seat = seat; // the Admission: token, edges, what to do when media refuses the token
    this.hooks = hooks;
    this.nativeHls = !this.Hls && audio.canPlayType("application/vnd.apple.mpegurl") !== "";
    this.engine = this.Hls ? "hls.js" : this.nativeHls ? "native" : null;
    this.state = "idle";
    this.mode = null; // "live" (hold music, then the Space) or "replay"
    this.url = null;
    this.hls = null;
    this.fatal = []; // every fatal hls.js error, recovered or not
    this.backoff = new Backoff(RETRY_MS);
    this.retryTimer = 0;
    this.retryText = "";
    this.generation = 0;
    this.lastMediaRecovery = 0;
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
    if (this.Hls) {
      this.hls = this.createHls();
    } else {
      this.audio.load(); // unlocks the element for a later play() on iOS
    }
    this.audio.play().catch(() => { /* resolved or retried once the source is there */ });
  }

  load(url) {
    this.url = url;
    if (this.hls) this.hls.loadSource(url);
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

  createHls() {
    const Hls = this.Hls;
    const hls = new Hls({
      lowLatencyMode: true,
      xhrSetup: (xhr, url) => { xhr.open("GET", this.seat.mediaUrl(url), true); }, // hls.js then skips its own open()
    });
    hls.attachMedia(this.audio);
    hls.on(Hls.Events.ERROR, (_event, data) => this.onHlsError(hls, data));
    const progressed = () => {
      if (this.backoff.attempt && this.state === "retrying") this.setState(this.audio.paused ? "buffering" : "playing");
      this.backoff.reset();
      this.seat.mediaFlowing();
    };
    hls.on(Hls.Events.FRAG_LOADED, progressed);
    hls.on(Hls.Events.LEVEL_LOADED, progressed);
    return hls;
  }

  onHlsError(hls, data) {
    if (hls !== this.hls) return;
    const Hls = this.Hls;
    const code = data.response ? data.response.code : 0;
    if (data.fatal) {
      this.fatal.push({ type: data.type, details: data.details, code, at: Date.now() });
      console.warn("hls.js fatal error", data.type, data.details, data);
    }
    if (this.mode === "live" && (code === 401 || code === 403)) {
      if (!this.seat.restart) hls.stopLoad();
      this.seat.mediaRefused(code);
      return;
    }
    if (data.type === Hls.ErrorTypes.NETWORK_ERROR && code === 0) this.seat.otherEdge(); // hls.js's own retries too
    if (!data.fatal) return;
    const E = Hls.ErrorTypes;
    if (data.type === E.MEDIA_ERROR) {
      const now = performance.now();
      if (now - this.lastMediaRecovery < 3000) hls.swapAudioCodec();
      this.lastMediaRecovery = now;
      hls.recoverMediaError();
      return;
    }
    // Any other 4xx means this playlist is gone (e.g. the node restarted): only a join helps.
    const gone4xx = code >= 400 && code < 500;
    this.retryLater(() => {
      if (hls !== this.hls) return;
      if (data.type === E.NETWORK_ERROR && !gone4xx && this.backoff.attempt <= REJOIN_AFTER) {
        const manifest = data.details === Hls.ErrorDetails.MANIFEST_LOAD_ERROR
          || data.details === Hls.ErrorDetails.MANIFEST_LOAD_TIMEOUT
          || data.details === Hls.ErrorDetails.MANIFEST_PARSING_ERROR;
        if (manifest) hls.loadSource(this.url);
        else hls.startLoad();
      } else if (this.mode === "replay") {
        const attempt = this.backoff.attempt;
        this.playReplay(this.url);
        this.backoff.attempt = attempt;
      } else {
        this.hook("restartLive");
      }
    });
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

  // Seconds behind the live edge, or null.
  behindLive() {
    if (this.hls) {
      const latency = this.hls.latency;
      return Number.isFinite(latency) && latency > 0 ? latency : null;
    }
    const r = this.audio.seekable;
    return r && r.length ? Math.max(0, r.end(r.length - 1) - this.audio.currentTime) : null;
  }

  targetLatency() {
    return (this.hls && this.hls.targetLatency) || 3;
  }

  jumpToLive() {
    const { hls, audio } = this;
    if (hls && hls.liveSyncPosition !== null) audio.currentTime = hls.liveSyncPosition;
    else if (audio.seekable.length) audio.currentTime = audio.seekable.end(audio.seekable.length - 1) - 1;
  }

  // Tears the player down (the seat is the admission's business).
  stop() {
    this.generation += 1; // anything still pending for the previous playback gives up
    clearTimeout(this.retryTimer);
    if (this.hls) {
      this.hls.destroy();
      this.hls = null;
    }
    const { audio } = this;
    if (audio.getAttribute("src") !== null) {
      audio.removeAttribute("src");
      audio.load();
    } else {
      audio.pause();
    }
    this.mode = null;
    this.url = null;
    this.setState("idle");
  }

  listen() {
    const { audio } = this;
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
      if (this.state === "idle" || this.hls) return; // hls.js reports its own errors
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
