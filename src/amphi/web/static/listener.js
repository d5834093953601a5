// The listener page, /s/<id>: a seat in the Space (joined on load; a place in line while the
// room is full), the Space's status (polled), and one player for the live playlist (hold
// music, then live audio) and, once the Space has ended, its replay.
//
// Admission (player.phase), one request at a time (POST join):
//   joining -> waiting -> playing <-> stopped;  any -> ended;  joining -> error (refused).
//   waiting: a ticket, polled after the answer's retry_after_s (never sooner);
//   playing: a seat and a token, renewed every renew_after_s; hls.js puts the newest token
//   into every media request; a refused token (401/403) means joining afresh;
//   stopped: the listener pressed Stop: no more renewals, the seat lapses with the token.
// Player (player.state): idle -> connecting -> buffering <-> playing -> idle (stopped or
//   ended), plus paused (replay) and retrying. player.blocked: admitted, but the browser
//   wants a tap before it plays sound.
// hls.js plays wherever it is supported; otherwise Safari plays HLS natively.
// window.amphiPlayer exposes both, and every fatal hls.js error, for tests.
// Under attack the node may answer a join with a proof-of-work challenge (429
// challenge_required): pow-worker.js solves it off the page's thread, then the join is sent
// again with the solution (docs/defense.md).
//
// The room (docs/stage.md, with stage.js): who is on stage, live by Server-Sent Events, and
// this listener's way onto it: request to speak (or an invite link, /s/<id>?grant=G), then,
// once on stage, the program stops and the speaker's own WebRTC return feed plays instead.
// window.amphiStage exposes {you, view, events, speaking} for tests.

"use strict";

(() => {
  const REFRESH_MS = 5000; // status poll period
  const TICK_MS = 500; // countdown and playback-line refresh
  const ENDED_POLLS = 12; // polls after the end while the replay is not ready yet
  const RETRY_MS = [1000, 2000, 4000, 8000, 15000]; // back-off for failures without a Retry-After
  const REJOIN_AFTER = 3; // fatal network errors in a row before joining afresh (the node may have restarted)
  const JITTER = 0.1; // waits are the server's figure plus 10 % ± 10 %: spread out, never sooner
  const DEFAULT_RETRY_S = 2; // when a waiting answer names no wait
  const TAP_GRACE_MS = 3 * 60 * 1000; // an admitted listener who never taps "Tap to listen" keeps the seat this long
  const TOKEN_PATH = /(\/media\/[^/?#]+\/t\/)[^/?#]+\//; // /media/<id>/t/<token>/...

  const $ = (id) => document.getElementById(id);
  const ui = {
    card: $("space"), state: $("state"), countdown: $("countdown"), title: $("title"), meta: $("meta"),
    line: $("line"), linePlace: $("line-place"), lineDetail: $("line-detail"), lineNote: $("line-note"),
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
    // admission
    phase: "joining",
    ticket: null, // while waiting
    position: null,
    waiting: null, // how many wait in this Space's line, us included
    estimate: null, // estimated_wait_s: null when nobody is leaving
    order: null, // "fifo" or "draw_at_start"
    startsAt: null,
    requeued: false, // our place had lapsed: back at the end of the line
    token: null, // while admitted
    playlist: null,
    edges: [], // media bases of the edge caches the node named (docs/edge.md); [] when it serves media itself
    edge: null, // the one media requests go to now; another is taken when it stops answering
    edgeSwitches: 0,
    expiresAt: 0, // local clock, ms
    blocked: false,
    polls: 0, // ticket polls sent
    renewals: 0, // token renewals answered "admitted"
    rejoins: 0, // fresh joins after a ticket or token was refused
    challenges: [], // proof-of-work challenges solved: {bits, hashes, ms} (docs/defense.md)
    endedInLine: false,
    endedWith: null, // {replay, download} from the answer that said the Space has ended
  };
  window.amphiPlayer = player;

  // The room. mode follows `you.state` in the stage view (no grant: "listener"):
  //   listener -> requested -> on_stage -> listener;  invited -> on_stage | listener;
  //   any -> removed (the page stops).  onStage: this page speaks, the program is stopped.
  const room = {
    grant: null,
    you: null,
    view: null,
    events: null,
    speaker: null,
    onStage: false,
    removed: false,
    ended: false,
    busy: false, // a request of ours is under way
    state: "listener", // the last state followed
    ours: false, // the next change of state is our own doing (withdraw, decline, leave)
    note: "", // why we are back in the audience, when someone else decided it
    muting: false, // a mute/unmute of ours is under way: views may still show the old state
  };

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

  const ORDINAL = new Intl.PluralRules("en-US", { type: "ordinal" });
  const SUFFIX = { one: "st", two: "nd", few: "rd", other: "th" };
  function ordinal(n) {
    return `${n}${SUFFIX[ORDINAL.select(n)]}`;
  }

  function localTime(iso) {
    const d = new Date(iso);
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay
      ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
  }

  function waitText(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) {
      return "waiting for a seat to free up";
    }
    const s = Number(seconds);
    if (s < 5) return "any moment now";
    if (s < 60) return `about ${Math.max(5, Math.round(s / 5) * 5)} s`;
    if (s < 3600) return `about ${Math.round(s / 60)} min`;
    return "more than an hour";
  }

  async function errorText(res) {
    try {
      const body = await res.json();
      if (body && body.message) return body.message;
    } catch (_) { /* not JSON */ }
    return `${res.status} ${res.statusText}`;
  }

  // The error line has one owner at a time ("status", "seat" or "player"): each clears only its own.
  function showError(text, source = "player") {
    ui.error.textContent = text || "";
    ui.error.hidden = !text;
    if (text) ui.error.dataset.source = source;
    else delete ui.error.dataset.source;
  }

  function clearError(source) {
    if (ui.error.dataset.source === source) showError("");
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
      clearError("status");
      if (space.state === "ended") endSeat(space);
      render();
    } catch (err) {
      if (ui.error.hidden || ui.error.dataset.source === "status") {
        showError(`Cannot reach the server (${err.message}); retrying…`, "status");
      }
    }
    schedulePoll();
  }

  function schedulePoll() {
    if (gone) return;
    if (space && space.state === "ended") {
      endedPolls += 1;
      if (space.replay || endedPolls > ENDED_POLLS) return; // nothing more will change
    }
    clearTimeout(pollTimer); // one chain of polls, however many were started
    pollTimer = setTimeout(poll, REFRESH_MS);
  }

  function notFound() {
    gone = true;
    clearTimeout(pollTimer);
    dropSeat();
    stop();
    player.phase = "error";
    ui.card.hidden = true;
    ui.notfound.hidden = false;
    document.title = "Space not found · Amphi";
  }

  function isEnded() {
    return player.phase === "ended" || (space !== null && space.state === "ended");
  }

  function replayUrl() {
    return (space && space.replay) || (player.endedWith && player.endedWith.replay) || null;
  }

  function downloadUrl() {
    return (space && space.download) || (player.endedWith && player.endedWith.download) || null;
  }

  function render() {
    if (gone) return;
    const s = space;
    if (s) {
      ui.card.removeAttribute("aria-busy");
      ui.title.textContent = s.title;
      ui.state.textContent = { scheduled: "Scheduled", live: "Live", ended: "Ended" }[s.state] || s.state;
      ui.state.className = `badge ${s.state}`;
      if (s.state === "ended") {
        const lasted = s.recorded_s > 0 ? ` · ${clock(s.recorded_s)} recorded` : "";
        ui.meta.textContent = `Peak ${plural(s.peak_listeners, "listener")}${lasted}`;
      } else {
        const line = s.waiting > 0 ? ` · ${s.waiting} waiting` : "";
        ui.meta.textContent = `${s.listeners} listening · peak ${s.peak_listeners}${line}`;
      }
      if ("mediaSession" in navigator && window.MediaMetadata) {
        navigator.mediaSession.metadata = new MediaMetadata({ title: s.title, artist: "Amphi" });
      }
    }
    const ended = isEnded();
    ui.ended.hidden = !ended;
    if (ended) renderEnded();
    renderLine();
    renderTitle();
    tick();
    renderButton();
    renderRoom();
  }

  function renderTitle() {
    let prefix = "";
    if (player.phase === "waiting" && player.position) prefix = `${ordinal(player.position)} in line · `;
    else if (player.blocked) prefix = "▶ Your turn · ";
    document.title = `${prefix}${space ? `${space.title} · ` : ""}Amphi`;
  }

  function renderEnded() {
    const s = space || {};
    const replay = replayUrl();
    const when = s.ended_at ? ` at ${localTime(s.ended_at)}` : "";
    let text = s.ended_abnormally
      ? `This Space was cut off${when}; what was recorded until then is kept.`
      : `This Space ended${when}.`;
    if (player.endedInLine) text += " It ended while you were in line.";
    if (!replay) {
      text += s.recorded_s > 0 || endedPolls < ENDED_POLLS ? " The replay will be ready in a moment…" : " Nothing was recorded.";
    } else if (player.endedInLine) {
      text += " The replay has all of it.";
    }
    ui.endedText.textContent = text;
    ui.endedLinks.hidden = !replay;
    if (replay) {
      ui.replay.href = replay;
      ui.download.href = downloadUrl() || replay;
    }
  }

  // The waiting room: where we are in line, how long it may take, and that nothing needs doing.
  function renderLine() {
    const waiting = player.phase === "waiting";
    ui.line.hidden = !waiting;
    if (!waiting) return;
    const n = player.position;
    const draw = player.order === "draw_at_start";
    const place = draw ? "You’re in line" : `You’re ${ordinal(n)} in line`;
    if (ui.linePlace.textContent !== place) ui.linePlace.textContent = place; // announced when it changes
    const total = player.waiting === 1 ? "1 person waiting" : `${player.waiting} people waiting`;
    let detail;
    if (draw) {
      const at = player.startsAt ? ` at ${localTime(player.startsAt)}` : "";
      detail = `The order is drawn when the Space starts${at}: you will be ${ordinal(n)} or earlier. ${total}.`;
    } else {
      detail = `${total} · ${waitText(player.estimate)}`;
    }
    if (player.requeued) detail = `Your place had lapsed, so you’re back in line. ${detail}`;
    ui.lineDetail.textContent = detail;
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
      default:
        if (player.blocked) text = "It’s your turn. Your browser needs a tap before it plays sound.";
        else if (player.phase === "joining") text = player.note || "Joining…";
        else text = player.note || "";
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
    let label = "Play";
    let icon = "play";
    let busy = false;
    let attention = false;
    let disabled = !player.engine || gone;
    if (player.state === "connecting" || player.state === "buffering" || player.state === "retrying") {
      busy = true;
      label = player.mode === "replay" ? "Pause" : "Stop";
      icon = player.mode === "replay" ? "pause" : "stop";
    } else if (player.state === "playing") {
      label = player.mode === "replay" ? "Pause" : "Stop";
      icon = player.mode === "replay" ? "pause" : "stop";
    } else if (player.state === "paused") {
      label = "Resume";
    } else if (isEnded()) {
      label = "Play replay";
      disabled = disabled || !replayUrl();
    } else if (player.phase === "joining") {
      label = "Joining…";
      busy = true;
      disabled = true;
    } else if (player.blocked) {
      label = "Tap to listen";
      attention = true;
    } else if (player.phase === "error") {
      label = "Try again";
    }
    ui.play.hidden = (player.phase === "waiting" && player.state === "idle") || room.onStage || room.removed;
    ui.play.disabled = disabled;
    ui.play.dataset.icon = icon;
    ui.playLabel.textContent = label;
    ui.play.toggleAttribute("data-busy", busy);
    ui.play.toggleAttribute("data-attention", attention);
  }

  function setState(state) {
    player.state = state;
    renderButton();
    renderPlayback();
  }

  // -- admission: joining, waiting in line, keeping the token fresh --------------------------

  let seatTimer = 0; // id of the one pending admission request: a poll, a renewal or a retry
  let seatAction = null;
  let seatDue = 0;
  let seatGeneration = 0; // bumped to drop the answers to earlier requests
  let trouble = 0; // failed requests in a row (network, 5xx without Retry-After)
  let freshJoins = 0; // fresh joins since media last loaded: repeated ones back off
  let restartPlayer = false; // media refused the token: the player starts again once re-admitted
  let blockedAt = 0;

  function setPhase(phase) {
    if (player.phase === phase) return;
    console.info(`amphi: ${player.phase} -> ${phase}`);
    player.phase = phase;
    render();
  }

  // The seat's timer keeps time in a background tab: Chrome throttles the timers of a page
  // that has been hidden and silent for five minutes to once a minute, longer than a place in
  // line is held without a poll; a dedicated worker's timers are exempt. setTimeout otherwise.
  let ticker = null;
  try {
    const code = "onmessage = (e) => { setTimeout(() => postMessage(e.data.id), e.data.ms); };";
    ticker = new Worker(URL.createObjectURL(new Blob([code], { type: "text/javascript" })));
    ticker.onmessage = (event) => fire(event.data);
    ticker.onerror = () => { // e.g. a Content-Security-Policy without blob: workers
      ticker = null;
      const id = seatTimer;
      if (id) setTimeout(() => fire(id), Math.max(0, seatDue - Date.now()));
    };
  } catch (_) {
    ticker = null;
  }
  let timerIds = 0;

  function later(action, ms) {
    const id = ++timerIds;
    seatTimer = id;
    seatAction = action;
    seatDue = Date.now() + ms;
    if (ticker) ticker.postMessage({ id, ms });
    else setTimeout(() => fire(id), ms);
  }

  function fire(id) {
    if (id !== seatTimer) return; // cancelled or replaced
    const action = seatAction;
    cancelLater();
    action();
  }

  function cancelLater() {
    seatTimer = 0;
    seatAction = null;
  }

  // Forgets any pending admission request and its answer.
  function dropSeat() {
    seatGeneration += 1;
    cancelLater();
  }

  function jittered(seconds) {
    return seconds * 1000 * (1 + JITTER + (Math.random() * 2 - 1) * JITTER);
  }

  // The server's wait in seconds: the body's retry_after_s (exact), else Retry-After.
  function retryAfterS(res, body) {
    const exact = body ? Number(body.retry_after_s) : NaN;
    if (exact > 0) return exact;
    const header = (res.headers.get("retry-after") || "").trim();
    if (!header) return null;
    const s = /^\d+$/.test(header) ? Number(header) : (Date.parse(header) - Date.now()) / 1000;
    return s > 0 ? s : null;
  }

  // The page's first join (and a join after coming back from the back/forward cache).
  function enter() {
    dropSeat();
    player.note = "";
    setPhase("joining");
    send({});
  }

  // One join request: {} to join, {ticket} to poll for our place, {token} to renew the seat.
  async function send(body) {
    cancelLater();
    const generation = seatGeneration;
    if (body.ticket) player.polls += 1;
    let res;
    let data = null;
    try {
      res = await fetch(`${api}/join`, {
        method: "POST",
        cache: "no-store",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      noteClock(res);
      data = await res.json().catch(() => null);
    } catch (err) {
      if (generation === seatGeneration) troubled(body, `Cannot reach the server (${err.message})`);
      return;
    }
    if (generation !== seatGeneration || gone) return;
    const wait = retryAfterS(res, data);
    if (data && (res.status === 200 || res.status === 202)) {
      trouble = 0;
      clearError("seat");
      if (data.status === "admitted") return admitted(data, body);
      if (data.status === "waiting") return waitInLine(data, wait);
      if (data.status === "ended") {
        endSeat(data);
        render();
        return poll(); // when it ended, what was recorded
      }
    }
    if (res.status === 404) return notFound();
    if (res.status === 429 && data && data.error === "challenge_required" && data.challenge) {
      return solveThenSend(body, data.challenge, generation);
    }
    if ((res.status === 429 || res.status === 503) && wait !== null) {
      // too early (429) or too busy (503): the server says when; it gets a little more
      if (res.status === 503 && !body.ticket && !body.token) {
        player.note = "So many people are joining that the waiting room is full; "
          + `trying again in about ${Math.ceil(wait)} s…`;
        renderPlayback();
      }
      return later(() => send(body), jittered(wait));
    }
    if ((res.status === 400 || res.status === 401 || res.status === 403) && (body.ticket || body.token)) {
      return startOver(); // a garbled ticket, or a token too late or not ours: join afresh
    }
    const message = (data && data.message) || `${res.status} ${res.statusText}`;
    if (res.status >= 500 || res.status === 429) return troubled(body, message);
    refused(message);
  }

  // The node asks for a proof of work (it sees an attack): solve it in a worker, join again
  // with the solution. About a second at the default difficulty.
  function solveThenSend(body, challenge, generation) {
    player.note = "Lots of traffic right now: checking this browser before joining…";
    renderPlayback();
    const worker = new Worker("/static/pow-worker.js");
    worker.onmessage = (event) => {
      worker.terminate();
      if (generation !== seatGeneration || gone) return;
      const { solution, hashes, ms } = event.data;
      player.challenges.push({ bits: challenge.bits, hashes, ms: Math.round(ms) });
      player.note = "";
      const { challenge: _old, solution: _oldSolution, ...rest } = body;
      send({ ...rest, challenge: challenge.challenge, solution });
    };
    worker.onerror = (err) => {
      worker.terminate();
      if (generation === seatGeneration) troubled(body, `Could not check this browser (${err.message})`);
    };
    worker.postMessage({ challenge: challenge.challenge, bits: challenge.bits });
  }

  function troubled(body, text) {
    const delay = RETRY_MS[Math.min(trouble, RETRY_MS.length - 1)];
    trouble += 1;
    if (ui.error.hidden || ui.error.dataset.source === "seat") {
      showError(`${text}; trying again in ${Math.round(delay / 1000)} s…`, "seat");
    }
    later(() => send(body), delay);
  }

  // A fresh join was refused (e.g. 403): say so; Play tries again.
  function refused(message) {
    dropSeat();
    restartPlayer = false;
    stop();
    showError(`Could not join: ${message}`, "seat");
    setPhase("error");
  }

  // Our ticket or token is no good (any more): join afresh, which may mean waiting in line.
  function startOver() {
    player.ticket = null;
    player.token = null;
    player.rejoins += 1;
    const delay = freshJoins ? RETRY_MS[Math.min(freshJoins - 1, RETRY_MS.length - 1)] : 0;
    freshJoins += 1;
    later(() => send({}), delay);
  }

  function admitted(data, body) {
    const fromLine = player.phase === "waiting";
    if (body.token) player.renewals += 1;
    player.ticket = null;
    player.position = null;
    player.token = data.token;
    player.playlist = data.playlist;
    player.edges = Array.isArray(data.edges) ? data.edges : [];
    if (!player.edges.includes(player.edge)) {
      player.edge = player.edges.find((e) => data.playlist.startsWith(`${e}/`)) || null;
    }
    player.expiresAt = Date.now() + Number(data.expires_in_s) * 1000;
    scheduleRenewal(data);
    player.note = fromLine ? "It’s your turn." : "";
    setPhase("playing");
    const running = player.mode === "live" && player.state !== "idle";
    if (running && !restartPlayer) {
      if (!player.url) loadPlayer(data.playlist); // Play was pressed and waited for this answer
      return; // a renewal: hls.js sends the new token with every request from now on
    }
    restartPlayer = false;
    if (player.blocked) return; // starts at the tap
    playLive(data.playlist);
  }

  function scheduleRenewal(data) {
    const ttl = Number(data.expires_in_s) > 0 ? Number(data.expires_in_s) : 60;
    const after = Number(data.renew_after_s) > 0 ? Number(data.renew_after_s) : ttl / 2;
    // a little jitter, so that listeners admitted together do not all renew together
    later(renew, Math.min(after * (1 + Math.random() * JITTER), ttl * 0.8) * 1000);
  }

  function renew() {
    if (player.phase !== "playing" || !player.token) return;
    if (player.blocked && Date.now() - blockedAt > TAP_GRACE_MS) return releaseSeat();
    send({ token: player.token });
  }

  // Admitted long ago and never tapped: the seat goes to someone who is there.
  function releaseSeat() {
    leave(false);
    dropSeat();
    player.blocked = false;
    player.token = null;
    player.note = "Playback never started, so your seat went to the next in line. Press Play to join again.";
    setPhase("stopped");
  }

  function waitInLine(data, wait) {
    freshJoins = 0;
    player.ticket = data.ticket;
    player.position = data.position;
    player.waiting = data.waiting;
    player.estimate = data.estimated_wait_s ?? null;
    player.order = data.order || "fifo";
    player.startsAt = data.starts_at || null;
    player.requeued = Boolean(data.requeued);
    player.token = null;
    player.blocked = false;
    player.note = "";
    restartPlayer = false;
    if (player.state !== "idle") stop(); // back in line: a token that lapsed, or Play after Stop
    setPhase("waiting");
    render();
    later(() => send({ ticket: player.ticket }), jittered(wait ?? DEFAULT_RETRY_S));
  }

  // The Space has ended (a join answer or the status): no seat, no line, only the replay.
  // A live player keeps playing to the end of the stream.
  function endSeat(info) {
    if (player.phase === "ended" || player.phase === "error") return;
    dropSeat();
    player.endedInLine = player.phase === "waiting";
    player.endedWith = { replay: info.replay || null, download: info.download || null };
    player.ticket = null;
    player.token = null;
    player.position = null;
    player.blocked = false;
    restartPlayer = false;
    player.phase = "ended"; // rendered by the caller
    console.info("amphi: the Space has ended");
  }

  // Gives the seat or the place up at once, for the next in line.
  function leave(beacon) {
    const body = player.ticket ? { ticket: player.ticket } : player.token ? { token: player.token } : null;
    if (!body) return;
    const url = `${api}/leave`;
    const blob = new Blob([JSON.stringify(body)], { type: "application/json" });
    if (beacon && navigator.sendBeacon && navigator.sendBeacon(url, blob)) return;
    fetch(url, { method: "POST", body: blob, keepalive: true }).catch(() => { /* the seat lapses anyway */ });
  }

  // Media answered 401 (the token ran out: a renewal came too late) or 403 (not a token for
  // this Space): renew if we can (a lapsed seat is kept for a short grace), else join afresh;
  // either way the player starts again once admitted. A fresh join may mean the line again.
  function mediaRefused(code) {
    if (restartPlayer) return; // already on it
    restartPlayer = true;
    if (player.hls) player.hls.stopLoad();
    dropSeat();
    if (code === 401 && player.token) send({ token: player.token });
    else startOver();
  }

  // -- the player -----------------------------------------------------------------------

  function onPlayClick() {
    if (player.state !== "idle") {
      if (player.mode === "replay") {
        if (audio.paused) play();
        else audio.pause();
        return;
      }
      stopListening();
      return;
    }
    if (isEnded()) {
      const replay = replayUrl();
      if (replay) playReplay(replay);
      return;
    }
    if (player.phase === "playing" && player.playlist) {
      playLive(player.playlist); // "Tap to listen"; the token is fresh, renewals went on
      return;
    }
    if (player.phase === "stopped" || player.phase === "error") {
      showError("");
      const fresh = player.token && Date.now() < player.expiresAt - 1000;
      openPlayer("live"); // inside the click, which autoplay policies require
      dropSeat();
      player.note = "";
      setPhase("joining");
      send(fresh ? { token: player.token } : {});
    }
  }

  // The listener stops (Stop, or a pause from outside: media keys, the lock screen). Renewals
  // stop too: the seat lapses with the token unless Play comes first.
  function stopListening() {
    stop();
    if (player.phase === "playing" || player.phase === "joining") {
      dropSeat();
      player.note = "Stopped.";
      setPhase("stopped");
      renderPlayback();
    }
  }

  function play() {
    const generation = player.generation;
    audio.play().catch((err) => { if (generation === player.generation) playFailed(err); });
  }

  // A fresh player; the media element is bound and play() called at once, so that a click
  // that got here counts for autoplay policies even when the playlist comes later.
  function openPlayer(mode) {
    stop();
    player.mode = mode;
    player.note = "";
    player.blocked = false;
    setState("connecting");
    if (HlsJs) {
      player.hls = createHls();
    } else {
      audio.load(); // unlocks the element for a later play() on iOS
    }
    audio.play().catch(() => { /* resolved or retried once the source is there */ });
  }

  function loadPlayer(url) {
    player.url = url;
    if (player.hls) player.hls.loadSource(url);
    else audio.src = url;
    play();
  }

  function playLive(url) {
    openPlayer("live");
    loadPlayer(url);
  }

  function playReplay(url) {
    showError("");
    openPlayer("replay");
    loadPlayer(url);
  }

  function playFailed(err) {
    if (err && err.name === "AbortError") return; // a newer load or a stop interrupted it
    if (err && err.name === "NotAllowedError") {
      const live = player.mode === "live" && player.phase === "playing";
      stop();
      if (live) {
        // Admitted, but the browser wants a gesture first: the seat is kept for a while.
        console.info("amphi: the browser blocked playback until a tap");
        player.blocked = true;
        blockedAt = Date.now();
        render();
        ui.play.focus({ preventScroll: true });
      } else {
        player.note = "The browser blocked playback: press Play again.";
        renderPlayback();
      }
      return;
    }
    showError(`Playback failed: ${err && err.message ? err.message : err}`);
  }

  // The newest token and the current edge in a media URL: playlists use relative URIs, so
  // every request would otherwise carry the token and the edge its playlist was loaded with.
  function mediaUrl(url) {
    let u = url;
    const from = player.edge && player.edges.find((e) => u.startsWith(`${e}/`));
    if (from && from !== player.edge) u = player.edge + u.slice(from.length);
    if (!player.token) return u;
    return u.replace(TOKEN_PATH, (_, head) => `${head}${encodeURIComponent(player.token)}/`);
  }

  // An edge that does not answer at all (no HTTP status): the next attempt goes to another.
  function otherEdge() {
    const others = player.edges.filter((e) => e !== player.edge);
    if (!player.edge || !others.length) return;
    player.edge = others[Math.floor(Math.random() * others.length)];
    player.edgeSwitches += 1;
  }

  function createHls() {
    const hls = new HlsJs({
      lowLatencyMode: true,
      xhrSetup: (xhr, url) => { xhr.open("GET", mediaUrl(url), true); }, // hls.js then skips its own open()
    });
    hls.attachMedia(audio);
    hls.on(HlsJs.Events.ERROR, (_event, data) => onHlsError(hls, data));
    const progressed = () => {
      if (player.retries && player.state === "retrying") setState(audio.paused ? "buffering" : "playing");
      player.retries = 0;
      freshJoins = 0;
    };
    hls.on(HlsJs.Events.FRAG_LOADED, progressed);
    hls.on(HlsJs.Events.LEVEL_LOADED, progressed);
    return hls;
  }

  // Recovery per the hls.js docs: startLoad() after a fatal network error (with back-off, so
  // a server that is down is not hammered), recoverMediaError() after a fatal media error
  // (swapping the audio codec if it fails again at once), a new player for anything else,
  // and also when network errors persist: a restarted node serves a Space again after a join.
  // 401/403 on live media is about the token: see mediaRefused.
  function onHlsError(hls, data) {
    if (hls !== player.hls) return;
    const code = data.response ? data.response.code : 0;
    if (data.fatal) {
      player.fatal.push({ type: data.type, details: data.details, code, at: Date.now() });
      console.warn("hls.js fatal error", data.type, data.details, data);
    }
    if (player.mode === "live" && (code === 401 || code === 403)) return mediaRefused(code);
    if (data.type === HlsJs.ErrorTypes.NETWORK_ERROR && code === 0) otherEdge(); // hls.js's own retries too
    if (!data.fatal) return;
    const E = HlsJs.ErrorTypes;
    if (data.type === E.MEDIA_ERROR) {
      const now = performance.now();
      if (now - player.lastMediaRecovery < 3000) hls.swapAudioCodec();
      player.lastMediaRecovery = now;
      hls.recoverMediaError();
      return;
    }
    // Any other 4xx means this playlist is gone (e.g. the node restarted): only a join helps.
    const gone4xx = code >= 400 && code < 500;
    retryLater(() => {
      if (hls !== player.hls) return;
      if (data.type === E.NETWORK_ERROR && !gone4xx && player.retries <= REJOIN_AFTER) {
        const manifest = data.details === HlsJs.ErrorDetails.MANIFEST_LOAD_ERROR
          || data.details === HlsJs.ErrorDetails.MANIFEST_LOAD_TIMEOUT
          || data.details === HlsJs.ErrorDetails.MANIFEST_PARSING_ERROR;
        if (manifest) hls.loadSource(player.url);
        else hls.startLoad();
      } else if (player.mode === "replay") {
        const retries = player.retries;
        playReplay(player.url);
        player.retries = retries;
      } else {
        restartLive();
      }
    });
  }

  // The live player starts again from a fresh admission answer: with our token if we have one.
  function restartLive() {
    restartPlayer = true;
    dropSeat();
    if (player.token) send({ token: player.token });
    else startOver();
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

  // Tears the player down (the seat is the admission's business).
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
    render();
  }

  audio.addEventListener("waiting", () => {
    if (player.state !== "idle" && player.state !== "retrying") setState("buffering");
  });
  audio.addEventListener("playing", () => {
    if (player.state === "idle") return;
    player.note = "";
    setState("playing");
  });
  audio.addEventListener("pause", () => {
    if (player.state === "idle" || audio.ended) return;
    if (player.mode === "replay") setState("paused");
    else stopListening(); // a live stream resumes at the edge
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
    if (mode === "live") {
      const generation = player.generation;
      setTimeout(() => { if (generation === player.generation && player.phase === "playing") restartLive(); }, 3000);
    } else if (mode === "replay" && url) {
      showError("The replay could not be played.");
    }
  });

  // -- the room: the stage, and this listener's way onto it ----------------------------------

  const Stage = window.AmphiStage;
  const GRANT_ITEM = `amphi.grant.${spaceId}`;
  const SPEAKING_TEXT = {
    starting: "Asking for your microphone…",
    connecting: "Connecting your microphone…",
    connected: "Live: listeners hear you.",
  };
  const roomUi = {
    room: $("room"), members: $("members"), box: $("speak-box"), ask: $("ask"), askOpen: $("ask-open"),
    askForm: $("ask-form"), askName: $("ask-name"), askCancel: $("ask-cancel"), requested: $("requested"),
    withdraw: $("withdraw"), invited: $("invited"), inviteAccept: $("invite-accept"),
    inviteDecline: $("invite-decline"), onstage: $("onstage"), mute: $("mute"), muteNote: $("mute-note"),
    leaveStage: $("leave-stage"), removed: $("removed"), status: $("speak-status"), error: $("speak-error"),
    feed: $("return-feed"),
  };
  // A co-host moderates speakers (not the host, other co-hosts or themselves) and requests.
  const stageList = Stage ? new Stage.StageList(roomUi.members, {
    actions: (m) => {
      const you = room.you;
      if (!room.view || !room.view.moderator || !you || m.id === you.id || m.role === "host" || m.role === "cohost") return [];
      return [
        m.host_muted ? { label: "Unmute", action: "unmute" } : { label: "Mute", action: "mute" },
        { label: "Remove from stage", action: "remove-stage" },
        { label: "Remove from Space", action: "remove-space", kind: "danger" },
      ];
    },
    onAction: (m, action, button) => {
      const pid = encodeURIComponent(m.id);
      if (action === "remove-stage") roomAction(button, "POST", `/stage/${pid}/remove`, { from: "stage" });
      else if (action === "remove-space") roomAction(button, "POST", `/stage/${pid}/remove`, { from: "space" });
      else roomAction(button, "POST", `/stage/${pid}/${action}`);
    },
  }) : null;
  const requestList = Stage ? new Stage.PeopleList($("mod-requests"), {
    buttons: () => [{ label: "Accept", action: "accept", kind: "primary" }, { label: "Decline", action: "decline" }],
    onAction: (p, action, button) => roomAction(button, "POST", `/stage/${encodeURIComponent(p.id)}/${action}`),
  }) : null;
  let moderating = false;

  window.amphiStage = {
    role: "listener",
    get you() { return room.you; },
    get view() { return room.view; },
    get grant() { return room.grant; },
    get events() { return room.events ? { state: room.events.state, opens: room.events.opens, events: room.events.events } : null; },
    get speaking() { return room.speaker ? room.speaker.snapshot() : null; },
    get speaker() { return room.speaker; }, // tests reach its peer connection
    get onStage() { return room.onStage; },
    get removed() { return room.removed; },
  };

  function roomError(text) {
    roomUi.error.textContent = text || "";
    roomUi.error.hidden = !text;
  }

  // A grant comes from an invite link (then leaves the address bar: it is a credential) or
  // from this tab's earlier request to speak.
  function loadGrant() {
    const params = new URLSearchParams(location.search);
    const fromLink = params.get("grant");
    if (fromLink) {
      sessionStorage.setItem(GRANT_ITEM, fromLink);
      params.delete("grant");
      const rest = params.toString();
      history.replaceState(null, "", `${location.pathname}${rest ? `?${rest}` : ""}${location.hash}`);
    }
    room.grant = sessionStorage.getItem(GRANT_ITEM);
  }

  function setGrant(grant) {
    room.grant = grant;
    if (grant) sessionStorage.setItem(GRANT_ITEM, grant);
    else sessionStorage.removeItem(GRANT_ITEM);
  }

  function startRoomEvents() {
    if (room.events) room.events.stop();
    room.events = new Stage.StageEvents(spaceId, {
      token: room.grant,
      onStage: onView,
      onYou: (you) => {
        if (room.removed) return;
        room.you = you;
        follow();
        renderRoom();
      },
      onEnded: roomEnded,
      onRefused: roomRefused,
    });
    room.events.start();
  }

  function onView(view) {
    if (room.removed) return;
    room.view = view;
    if (view.you) room.you = view.you;
    else if (!room.grant) room.you = null;
    follow();
    renderRoom();
  }

  // Does what the stage now says about us.
  function follow() {
    const state = room.you ? room.you.state : "listener";
    if (state === "removed") return removedFromSpace();
    if (state !== room.state) {
      const was = room.state;
      room.state = state;
      room.note = "";
      if (state === "listener" && !room.ours) {
        if (was === "requested") room.note = "The host declined your request this time.";
        else if (was === "on_stage") room.note = "The host moved you back to the audience.";
      }
      room.ours = false;
    }
    if (state === "on_stage" && !room.onStage && !room.ended) goOnStage();
    else if (state !== "on_stage" && room.onStage) backToListening();
    if (room.onStage && room.speaker && !room.muting) room.speaker.setMuted(Boolean(room.you.self_muted));
  }

  function goOnStage() {
    room.onStage = true;
    roomError("");
    pauseProgram();
    if (!room.speaker) {
      room.speaker = new Stage.Speaker(spaceId, {
        credential: () => room.grant,
        audio: roomUi.feed,
        onChange: renderRoom,
        onRefused: speakerRefused,
      });
    }
    room.speaker.setMuted(Boolean(room.you && room.you.self_muted));
    room.speaker.start().catch((err) => {
      // No microphone: off the stage again, so that the host sees it.
      roomError(`Could not use your microphone (${err.message}), so you left the stage.`);
      room.ours = true;
      roomCall("POST", "/stage/me/leave").catch(() => {});
      backToListening();
      renderRoom();
    });
  }

  function backToListening() {
    room.onStage = false;
    if (room.speaker) room.speaker.stop();
    resumeProgram();
  }

  // /speak refused us (not on stage any more, the Space ended, removed): the stage says why.
  async function speakerRefused(err) {
    if (err.code === "removed") return removedFromSpace();
    try {
      const view = await Stage.call(spaceId, "GET", "/stage", { auth: room.grant });
      onView(view);
    } catch (e) {
      if (e.code === "removed") return removedFromSpace();
    }
    if (room.onStage) { // the stage still says on stage, yet /speak refused: give up cleanly
      roomError(`You could not speak: ${Stage.plainError(err)}`);
      backToListening();
    }
    renderRoom();
  }

  function roomRefused(err) {
    if (err.code === "removed") return removedFromSpace();
    if (err.status === 404) return notFound();
    // our grant is no good any more (expired, or not for this Space): listen as anyone does
    if (room.onStage) backToListening();
    setGrant(null);
    room.you = null;
    startRoomEvents();
    renderRoom();
  }

  function roomEnded() {
    room.ended = true;
    if (room.speaker) room.speaker.stop();
    room.onStage = false;
    renderRoom();
    poll(); // the Space's end, the replay
  }

  // Removed from the Space: say so and stop everything.
  function removedFromSpace() {
    if (room.removed) return;
    room.removed = true;
    room.onStage = false;
    if (room.speaker) room.speaker.stop();
    if (room.events) room.events.stop();
    setGrant(null);
    leave(false);
    dropSeat();
    stop();
    clearTimeout(pollTimer);
    gone = true; // no more polls, joins or renders of the player
    player.note = "";
    ui.play.hidden = true;
    ui.playback.textContent = "";
    roomError("");
    renderRoom();
  }

  // The program stops while we are on stage: the seat goes to the next in line.
  function pauseProgram() {
    leave(false);
    dropSeat();
    stop();
    player.ticket = null;
    player.token = null;
    player.blocked = false;
    player.note = "The program is paused while you’re on stage.";
    setPhase("stopped");
    render();
  }

  function resumeProgram() {
    if (gone || isEnded()) return render();
    player.note = "";
    openPlayer("live");
    dropSeat();
    setPhase("joining");
    send({});
  }

  async function roomCall(method, path, body) {
    return Stage.call(spaceId, method, path, { auth: room.grant, body });
  }

  // One click: the button waits; the answer's `you` is shown at once, the stream follows.
  async function roomAction(button, method, path, body) {
    room.busy = true;
    if (button) button.disabled = true;
    roomError("");
    try {
      const answer = await roomCall(method, path, body);
      if (answer && answer.you) room.you = answer.you;
      if (answer && Array.isArray(answer.members)) room.view = { ...room.view, ...answer };
      follow();
      return answer;
    } catch (err) {
      room.ours = false;
      if (err.code === "removed") removedFromSpace();
      else roomError(Stage.plainError(err));
      return null;
    } finally {
      room.busy = false;
      if (button) button.disabled = false;
      renderRoom();
    }
  }

  async function requestToSpeak(event) {
    event.preventDefault();
    const name = roomUi.askName.value.trim();
    if (!name) return;
    const button = event.submitter || roomUi.askForm.querySelector("button[type=submit]");
    button.disabled = true;
    roomError("");
    try {
      const data = await Stage.call(spaceId, "POST", "/stage/requests", { auth: room.grant, body: { name } });
      sessionStorage.setItem(`${GRANT_ITEM}.name`, name);
      if (data.grant && data.grant !== room.grant) {
        setGrant(data.grant);
        startRoomEvents(); // our own view from now on
      }
      room.you = data.you || { id: data.participant, name, state: "requested" };
      roomUi.askForm.hidden = true;
      follow();
    } catch (err) {
      roomError(Stage.plainError(err));
    } finally {
      button.disabled = false;
      renderRoom();
    }
  }

  async function toggleMute() {
    const you = room.you;
    if (!you || !room.speaker) return;
    const muted = !(you.self_muted || room.speaker.muted);
    if (!muted && you.host_muted) return; // the button is disabled; the note says why
    room.muting = true;
    room.speaker.setMuted(muted);
    try {
      await roomAction(roomUi.mute, "POST", `/stage/me/${muted ? "mute" : "unmute"}`);
    } finally {
      room.muting = false;
      if (room.you) room.speaker.setMuted(Boolean(room.you.self_muted));
      renderRoom();
    }
  }

  function renderRoom() {
    if (!stageList) return;
    const view = room.view;
    const ended = room.ended || isEnded();
    roomUi.room.hidden = !view && !room.removed;
    if (view) {
      const moderator = Boolean(view.moderator) && !ended && !room.removed;
      if (moderator !== moderating) stageList.reset();
      moderating = moderator;
      stageList.youId = room.you ? room.you.id : null;
      stageList.render(ended ? [] : view.members || []);
      roomUi.members.hidden = ended;
      $("room-title").hidden = ended;
      const requests = moderator && Array.isArray(view.requests) ? view.requests : [];
      $("moderate").hidden = !moderator;
      $("mod-empty").hidden = requests.length > 0;
      requestList.render(requests);
    }
    const state = room.removed ? "removed" : room.you ? room.you.state : "listener";
    const live = (view && view.state ? view.state : space && space.state) === "live";
    roomUi.box.hidden = !room.removed && (ended || !(live || state !== "listener"));
    roomUi.box.classList.toggle("on-stage", state === "on_stage");
    roomUi.ask.hidden = state !== "listener";
    roomUi.requested.hidden = state !== "requested";
    roomUi.invited.hidden = state !== "invited";
    roomUi.onstage.hidden = state !== "on_stage";
    roomUi.removed.hidden = state !== "removed";
    if (state === "listener" && !roomUi.askForm.hidden) roomUi.askOpen.hidden = true;
    else roomUi.askOpen.hidden = false;
    const you = room.you || {};
    const sp = room.speaker ? room.speaker.snapshot() : null;
    const muted = Boolean(you.self_muted || you.host_muted || (sp && sp.muted));
    roomUi.mute.textContent = muted ? "Unmute" : "Mute";
    roomUi.mute.setAttribute("aria-pressed", String(muted));
    roomUi.mute.disabled = room.busy || Boolean(you.host_muted);
    roomUi.mute.title = you.host_muted ? "The host muted you; only the host or a co-host can unmute you" : "";
    roomUi.muteNote.hidden = !you.host_muted;
    let text = "";
    if (state === "on_stage" && sp) {
      text = SPEAKING_TEXT[sp.state] || "";
      if (sp.state === "connected" && muted) text = you.host_muted ? "" : "You’re muted.";
      if (sp.state === "reconnecting") text = `Connection lost; reconnecting in ${Math.ceil(sp.retryInMs / 1000)} s…`;
    }
    if (state === "listener") text = room.note;
    if (roomUi.status.textContent !== text) roomUi.status.textContent = text;
  }

  if (Stage) {
    roomUi.askOpen.addEventListener("click", () => {
      roomUi.askForm.hidden = false;
      roomUi.askOpen.hidden = true;
      roomUi.askName.value = roomUi.askName.value || sessionStorage.getItem(`${GRANT_ITEM}.name`) || "";
      roomUi.askName.focus();
    });
    roomUi.askCancel.addEventListener("click", () => {
      roomUi.askForm.hidden = true;
      roomUi.askOpen.hidden = false;
      roomUi.askOpen.focus();
    });
    roomUi.askForm.addEventListener("submit", requestToSpeak);
    const ours = (button, path) => () => {
      room.ours = true;
      roomAction(button, "POST", path);
    };
    roomUi.withdraw.addEventListener("click", ours(roomUi.withdraw, "/stage/me/decline"));
    roomUi.inviteAccept.addEventListener("click", () => roomAction(roomUi.inviteAccept, "POST", "/stage/me/accept"));
    roomUi.inviteDecline.addEventListener("click", ours(roomUi.inviteDecline, "/stage/me/decline"));
    roomUi.mute.addEventListener("click", toggleMute);
    roomUi.leaveStage.addEventListener("click", ours(roomUi.leaveStage, "/stage/me/leave"));
    setInterval(() => { if (room.onStage) renderRoom(); }, 1000); // the reconnect countdown
  }

  ui.play.addEventListener("click", onPlayClick);
  ui.replay.addEventListener("click", (event) => {
    event.preventDefault(); // play it here, in the same player
    const replay = replayUrl();
    if (replay) playReplay(replay);
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && !gone) poll();
  });
  // Leaving the page gives the seat or the place up at once. pagehide, not unload: the page
  // stays eligible for the back/forward cache, and coming back joins again.
  window.addEventListener("pagehide", () => {
    if (gone) return;
    leave(true);
    dropSeat();
    player.ticket = null;
    player.token = null;
  });
  window.addEventListener("pageshow", (event) => {
    if (!event.persisted || gone || player.phase === "ended") return;
    stop();
    enter();
  });
  setInterval(tick, TICK_MS);

  if (!player.engine) {
    player.note = "This browser cannot play HLS audio; try a recent Chrome, Firefox or Safari.";
  }
  if (!spaceId) {
    notFound();
  } else {
    poll();
    if (player.engine) enter();
    else setPhase("stopped");
    if (Stage) {
      loadGrant();
      startRoomEvents();
    }
  }
})();
