// The listener page, /s/<id>: the Space's status (polled), and one player for the live
// playlist (hold music, then live audio) and, once the Space has ended, its replay.
//
// Player lifecycle: idle -> connecting -> buffering <-> playing -> idle (stopped or ended).
// hls.js plays wherever it is supported; otherwise Safari plays HLS natively.
// window.amphiPlayer exposes the player state (and every fatal hls.js error) for tests.

"use strict";

(() => {
  const REFRESH_MS = 5000; // status poll period
  const TICK_MS = 500; // countdown and playback-line refresh
  const ENDED_POLLS = 12; // polls after the end while the replay is not ready yet
  const RETRY_MS = [1000, 2000, 4000, 8000, 15000]; // back-off for fatal network errors
  const REJOIN_AFTER = 3; // fatal network errors in a row before joining afresh (the node may have restarted)

  const $ = (id) => document.getElementById(id);
  const ui = {
    card: $("space"), state: $("state"), countdown: $("countdown"), title: $("title"), meta: $("meta"),
    play: $("play"), playLabel: $("play-label"), playback: $("playback"), ended: $("ended"),
    endedText: $("ended-text"), endedLinks: $("ended-links"), replay: $("replay"), download: $("download"),
    error: $("error"),
    audio: $("audio"), notfound: $("notfound"),
  };
  const audio = ui.audio;
  const spaceId = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop() || "");
  const api = `/api/spaces/${encodeURIComponent(spaceId)}`;
  const HlsJs = window.Hls && window.Hls.isSupported() ? window.Hls : null;
  const nativeHls = !HlsJs && audio.canPlayType("application/vnd.apple.mpegurl") !== "";

  let space = null; // last status from the server
  let skewMs = 0; // server clock minus ours, from the Date header
  let pollTimer = 0;
  let endedPolls = 0;
  let gone = false;

  const player = {
    state: "idle",
    mode: null, // "live" (hold music, then the Space) or "replay"
    url: null,
    hls: null,
    fatal: [], // every fatal hls.js error, recovered or not
    retries: 0,
    retryTimer: 0,
    generation: 0,
    lastMediaRecovery: 0,
    engine: HlsJs ? "hls.js" : nativeHls ? "native" : null,
  };
  window.amphiPlayer = player;

  // -- formatting -----------------------------------------------------------------------

  function clock(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const ss = String(s % 60).padStart(2, "0");
    return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function localTime(iso) {
    const d = new Date(iso);
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay
      ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
  }

  async function errorText(res) {
    try {
      const body = await res.json();
      if (body && body.message) return body.message;
    } catch (_) { /* not JSON */ }
    return `${res.status} ${res.statusText}`;
  }

  function showError(text) {
    ui.error.textContent = text || "";
    ui.error.hidden = !text;
  }

  // -- status ---------------------------------------------------------------------------

  function noteClock(res) {
    const date = Date.parse(res.headers.get("date") || "");
    if (Number.isNaN(date)) return;
    const skew = date + 500 - Date.now(); // the header has whole seconds
    skewMs = Math.abs(skew) > 2000 ? skew : 0;
  }

  async function poll() {
    clearTimeout(pollTimer);
    try {
      const res = await fetch(api, { cache: "no-store" });
      noteClock(res);
      if (res.status === 404) return notFound();
      if (!res.ok) throw new Error(await errorText(res));
      space = await res.json();
      if (ui.error.dataset.source === "status") { showError(""); delete ui.error.dataset.source; }
      render();
    } catch (err) {
      if (!ui.error.hidden && ui.error.dataset.source !== "status") return schedulePoll();
      showError(`Cannot reach the server (${err.message}); retrying…`);
      ui.error.dataset.source = "status";
    }
    schedulePoll();
  }

  function schedulePoll() {
    if (gone) return;
    if (space && space.state === "ended") {
      endedPolls += 1;
      if (space.replay || endedPolls > ENDED_POLLS) return; // nothing more will change
    }
    pollTimer = setTimeout(poll, REFRESH_MS);
  }

  function notFound() {
    gone = true;
    stop();
    ui.card.hidden = true;
    ui.notfound.hidden = false;
    document.title = "Space not found · Amphi";
  }

  function render() {
    const s = space;
    ui.card.removeAttribute("aria-busy");
    document.title = `${s.title} · Amphi`;
    ui.title.textContent = s.title;
    ui.state.textContent = { scheduled: "Scheduled", live: "Live", ended: "Ended" }[s.state] || s.state;
    ui.state.className = `badge ${s.state}`;

    if (s.state === "ended") {
      const lasted = s.recorded_s > 0 ? ` · ${clock(s.recorded_s)} recorded` : "";
      ui.meta.textContent = `Peak ${plural(s.peak_listeners, "listener")}${lasted}`;
    } else {
      ui.meta.textContent = `${s.listeners} listening · peak ${s.peak_listeners}`;
    }

    ui.ended.hidden = s.state !== "ended";
    if (s.state === "ended") renderEnded(s);
    tick();
    renderButton();
    if ("mediaSession" in navigator && window.MediaMetadata) {
      navigator.mediaSession.metadata = new MediaMetadata({ title: s.title, artist: "Amphi" });
    }
  }

  function renderEnded(s) {
    const when = s.ended_at ? ` at ${localTime(s.ended_at)}` : "";
    let text = s.ended_abnormally
      ? `This Space was cut off${when}; what was recorded until then is kept.`
      : `This Space ended${when}.`;
    if (!s.replay) {
      text += s.recorded_s > 0 || endedPolls < ENDED_POLLS ? " The replay will be ready in a moment…" : " Nothing was recorded.";
    }
    ui.endedText.textContent = text;
    ui.endedLinks.hidden = !s.replay;
    if (s.replay) {
      ui.replay.href = s.replay;
      ui.download.href = s.download;
    }
  }

  // -- the once-a-tick lines: countdown and playback ----------------------------------------

  function tick() {
    renderCountdown();
    renderPlayback();
  }

  function renderCountdown() {
    const s = space;
    if (!s || s.state !== "scheduled") {
      ui.countdown.hidden = true;
      return;
    }
    ui.countdown.hidden = false;
    if (!s.starts_at) {
      ui.countdown.textContent = "Starts when the host is ready — hold music until then";
      return;
    }
    const left = (Date.parse(s.starts_at) - (Date.now() + skewMs)) / 1000;
    ui.countdown.textContent = left >= 1
      ? `Starts in ${clock(left)} — hold music until then`
      : "Starting…";
  }

  function behindLive() {
    if (player.hls) {
      const latency = player.hls.latency;
      return Number.isFinite(latency) && latency > 0 ? latency : null;
    }
    const r = audio.seekable;
    return r && r.length ? Math.max(0, r.end(r.length - 1) - audio.currentTime) : null;
  }

  function renderPlayback() {
    let text = "";
    let playing = false;
    let jump = false;
    switch (player.state) {
      case "connecting": text = "Connecting…"; break;
      case "buffering": text = "Buffering…"; break;
      case "paused": text = `Paused · ${clock(audio.currentTime)}`; break;
      case "playing":
        playing = true;
        if (player.mode === "replay") {
          const total = Number.isFinite(audio.duration) ? ` / ${clock(audio.duration)}` : "";
          text = `Replay · ${clock(audio.currentTime)}${total}`;
        } else if (space && space.state === "scheduled") {
          text = "Playing hold music";
        } else {
          const behind = behindLive();
          text = behind === null ? "Live" : `Live · ${behind.toFixed(1)} s behind`;
          const target = (player.hls && player.hls.targetLatency) || 3;
          jump = behind !== null && behind > target + 3;
        }
        break;
      case "retrying": text = player.retryText || "Reconnecting…"; break;
      default: text = player.note || "";
    }
    ui.playback.classList.toggle("playing", playing);
    if (ui.playback.dataset.text === text + jump) return; // keep focus on the jump link
    ui.playback.dataset.text = text + jump;
    ui.playback.textContent = text;
    if (jump) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "link";
      b.textContent = "Jump to live";
      b.addEventListener("click", jumpToLive);
      ui.playback.append(" · ", b);
    }
  }

  function jumpToLive() {
    const hls = player.hls;
    if (hls && hls.liveSyncPosition !== null) audio.currentTime = hls.liveSyncPosition;
    else if (audio.seekable.length) audio.currentTime = audio.seekable.end(audio.seekable.length - 1) - 1;
  }

  function renderButton() {
    const ended = space && space.state === "ended";
    let label = "Play";
    let icon = "play";
    let busy = false;
    let disabled = !space || !player.engine;
    if (player.state === "connecting" || player.state === "buffering" || player.state === "retrying") {
      busy = true;
      label = player.mode === "replay" ? "Pause" : "Stop";
      icon = player.mode === "replay" ? "pause" : "stop";
      disabled = false;
    } else if (player.state === "playing") {
      label = player.mode === "replay" ? "Pause" : "Stop";
      icon = player.mode === "replay" ? "pause" : "stop";
    } else if (player.state === "paused") {
      label = "Resume";
    } else if (ended) {
      label = "Play replay";
      disabled = disabled || !space.replay;
    }
    ui.play.disabled = disabled;
    ui.play.dataset.icon = icon;
    ui.playLabel.textContent = label;
    ui.play.toggleAttribute("data-busy", busy);
  }

  function setState(state) {
    player.state = state;
    renderButton();
    renderPlayback();
  }

  // -- the player -----------------------------------------------------------------------

  function onPlayClick() {
    if (player.state === "idle") {
      if (space && space.state === "ended") return playUrl(space.replay, "replay");
      return playUrl(null, "live");
    }
    if (player.mode === "replay") {
      if (audio.paused) audio.play().catch(playFailed);
      else audio.pause();
      return;
    }
    stop();
  }

  // Starts playback; with url === null, joins the Space first. The media element is bound
  // and play() is called before any await, inside the click, which autoplay policies require.
  // attempt > 0 when this is a recovery: then a failed join is retried too.
  async function playUrl(url, mode, attempt = 0) {
    stop();
    const generation = player.generation;
    if (!attempt) showError("");
    player.mode = mode;
    player.note = "";
    player.retries = attempt;
    setState("connecting");
    if (HlsJs) {
      player.hls = createHls();
    } else {
      audio.load(); // unlocks the element for a later play() on iOS
    }
    audio.play().catch(() => { /* resolved or retried once the source is there */ });
    try {
      let playlist = url;
      if (playlist === null) {
        const joined = await join();
        if (generation !== player.generation) return; // stopped meanwhile
        playlist = joined.playlist;
        if (joined.status === "ended") player.mode = "replay";
      }
      player.url = playlist;
      if (player.hls) {
        player.hls.loadSource(playlist);
      } else {
        audio.src = playlist;
      }
      audio.play().catch(playFailed);
    } catch (err) {
      if (generation !== player.generation || gone) return;
      if (attempt > 0) {
        retryLater(() => playUrl(url, mode, player.retries));
      } else {
        stop();
        showError(err.message);
      }
    }
  }

  async function join() {
    const res = await fetch(`${api}/join`, { method: "POST" });
    noteClock(res);
    if (res.status === 404) {
      notFound();
      throw new Error("Space not found");
    }
    if (!res.ok) throw new Error(`Could not join: ${await errorText(res)}`);
    return res.json();
  }

  function playFailed(err) {
    if (err && err.name === "AbortError") return; // a newer load or a stop interrupted it
    if (err && err.name === "NotAllowedError") {
      stop();
      player.note = "The browser blocked playback: press Play again.";
      renderPlayback();
      return;
    }
    showError(`Playback failed: ${err && err.message ? err.message : err}`);
  }

  function createHls() {
    const hls = new HlsJs({ lowLatencyMode: true });
    hls.attachMedia(audio);
    hls.on(HlsJs.Events.ERROR, (_event, data) => onHlsError(hls, data));
    const progressed = () => {
      if (player.retries && player.state === "retrying") setState(audio.paused ? "buffering" : "playing");
      player.retries = 0;
    };
    hls.on(HlsJs.Events.FRAG_LOADED, progressed);
    hls.on(HlsJs.Events.LEVEL_LOADED, progressed);
    return hls;
  }

  // Recovery per the hls.js docs: startLoad() after a fatal network error (with back-off, so
  // a server that is down is not hammered), recoverMediaError() after a fatal media error
  // (swapping the audio codec if it fails again at once), a new player for anything else,
  // and also when network errors persist: a restarted node serves a Space again after a join.
  function onHlsError(hls, data) {
    if (hls !== player.hls) return;
    if (!data.fatal) return;
    player.fatal.push({ type: data.type, details: data.details, at: Date.now() });
    console.warn("hls.js fatal error", data.type, data.details, data);
    const E = HlsJs.ErrorTypes;
    if (data.type === E.MEDIA_ERROR) {
      const now = performance.now();
      if (now - player.lastMediaRecovery < 3000) hls.swapAudioCodec();
      player.lastMediaRecovery = now;
      hls.recoverMediaError();
      return;
    }
    // A 4xx answer means this playlist is gone (e.g. the node restarted): only a join helps.
    const gone4xx = data.response && data.response.code >= 400 && data.response.code < 500;
    retryLater(() => {
      if (hls !== player.hls) return;
      if (data.type === E.NETWORK_ERROR && !gone4xx && player.retries <= REJOIN_AFTER) {
        const manifest = data.details === HlsJs.ErrorDetails.MANIFEST_LOAD_ERROR
          || data.details === HlsJs.ErrorDetails.MANIFEST_LOAD_TIMEOUT
          || data.details === HlsJs.ErrorDetails.MANIFEST_PARSING_ERROR;
        if (manifest) hls.loadSource(player.url);
        else hls.startLoad();
      } else {
        playUrl(player.mode === "replay" ? player.url : null, player.mode, player.retries);
      }
    });
  }

  // Runs action after the next back-off delay, showing the countdown meanwhile.
  function retryLater(action) {
    const delay = RETRY_MS[Math.min(player.retries, RETRY_MS.length - 1)];
    player.retries += 1;
    player.retryText = `Connection lost; trying again in ${Math.round(delay / 1000)} s…`;
    setState("retrying");
    clearTimeout(player.retryTimer);
    const generation = player.generation;
    player.retryTimer = setTimeout(() => {
      if (generation === player.generation) action();
    }, delay);
  }

  function stop() {
    player.generation += 1; // anything still pending for the previous playback gives up
    clearTimeout(player.retryTimer);
    if (player.hls) {
      player.hls.destroy();
      player.hls = null;
    }
    if (audio.getAttribute("src") !== null) {
      audio.removeAttribute("src");
      audio.load();
    } else {
      audio.pause();
    }
    player.mode = null;
    player.url = null;
    setState("idle");
    if (space) render();
  }

  audio.addEventListener("waiting", () => {
    if (player.state !== "idle" && player.state !== "retrying") setState("buffering");
  });
  audio.addEventListener("playing", () => {
    if (player.state !== "idle") setState("playing");
  });
  audio.addEventListener("pause", () => {
    if (player.state === "idle" || audio.ended) return;
    if (player.mode === "replay") setState("paused");
    else stop(); // paused from outside (media keys, lock screen): a live stream resumes at the edge
  });
  audio.addEventListener("ended", () => {
    if (player.state === "idle") return;
    const wasLive = player.mode === "live";
    stop();
    player.note = wasLive ? "The Space has ended." : "End of the replay.";
    renderPlayback();
    if (wasLive) poll();
  });
  audio.addEventListener("error", () => {
    if (player.state === "idle" || player.hls) return; // hls.js reports its own errors
    const err = audio.error;
    const mode = player.mode;
    const url = player.url;
    stop();
    player.note = `Playback error${err && err.message ? `: ${err.message}` : ""}`;
    renderPlayback();
    if (mode === "live") setTimeout(() => { if (player.state === "idle") playUrl(null, "live", 1); }, 3000);
    else if (mode === "replay" && url) showError("The replay could not be played.");
  });

  ui.play.addEventListener("click", onPlayClick);
  ui.replay.addEventListener("click", (event) => {
    event.preventDefault(); // play it here, in the same player
    playUrl(space.replay, "replay");
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && !gone) poll();
  });
  setInterval(tick, TICK_MS);

  if (!player.engine) {
    player.note = "This browser cannot play HLS audio; try a recent Chrome, Firefox or Safari.";
  }
  if (!spaceId) notFound();
  else poll();
})();
