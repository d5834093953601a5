// The listener page, /s/<id>: wires the modules together. A seat in the Space (admission.js:
// joined on load; a place in line while the room is full), the Space's status (polled here),
// one player (player.js) for the live playlist and, once the Space has ended, its replay,
// what the page shows (view.js) and the stage (room.js, with stage.js).
//
// Under attack the node may answer a join with a proof-of-work challenge: pow-worker.js
// solves it off the page's thread (docs/defense.md).
// window.amphiPlayer exposes the seat and the player (every fatal Shaka error too, and
// behindLive()), and
// window.amphiStage the room {you, view, events, speaking}, for tests.

import { request } from "./api.js";
import { Admission } from "./admission.js";
import { Player } from "./player.js";
import { Room } from "./room.js";
import { ENDED_POLLS, View } from "./view.js";

const REFRESH_MS = 5000; // status poll period
const TICK_MS = 500; // countdown and playback-line refresh

const spaceId = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop() || "");
const api = `/api/spaces/${encodeURIComponent(spaceId)}`;

// The page's own state; the view reads it.
const page = {
  space: null, // last status from the server
  skewMs: 0, // server clock minus ours, from the Date header
  endedPolls: 0,
  gone: false, // not found, or removed: no more polls, joins or renders of the player
  seat: null,
  player: null,
  room: null,
};
let pollTimer = 0;

// The seat's timer keeps time in a background tab: Chrome throttles the timers of a page
// that has been hidden and silent for five minutes to once a minute, longer than a place in
// line is held without a poll; a dedicated worker's timers are exempt. setTimeout otherwise.
function workerTimers() {
  const pending = new Map(); // id -> {fn, due}
  let ids = 0;
  let ticker = null;
  const fire = (id) => {
    const entry = pending.get(id);
    if (!entry) return; // cancelled
    pending.delete(id);
    entry.fn();
  };
  try {
    const code = "onmessage = (e) => { setTimeout(() => postMessage(e.data.id), e.data.ms); };";
    ticker = new Worker(URL.createObjectURL(new Blob([code], { type: "text/javascript" })));
    ticker.onmessage = (event) => fire(event.data);
    ticker.onerror = () => { // e.g. a Content-Security-Policy without blob: workers
      ticker = null;
      for (const [id, entry] of pending) setTimeout(() => fire(id), Math.max(0, entry.due - Date.now()));
    };
  } catch (_) {
    ticker = null;
  }
  return (fn, ms) => {
    const id = ++ids;
    pending.set(id, { fn, due: Date.now() + ms });
    if (ticker) ticker.postMessage({ id, ms });
    else setTimeout(() => fire(id), ms);
    return () => pending.delete(id);
  };
}

// A proof of work in a worker (pow-worker.js), off the page's thread.
function solve({ challenge, bits }) {
  return new Promise((resolve, reject) => {
    const worker = new Worker("/static/pow-worker.js");
    worker.onmessage = (event) => {
      worker.terminate();
      resolve(event.data);
    };
    worker.onerror = (err) => {
      worker.terminate();
      reject(new Error(err.message));
    };
    worker.postMessage({ challenge, bits });
  });
}

function noteClock(headers) {
  const date = Date.parse(headers.get("date") || "");
  if (Number.isNaN(date)) return;
  const skew = date + 500 - Date.now(); // the header has whole seconds
  page.skewMs = Math.abs(skew) > 2000 ? skew : 0;
}

const audio = document.getElementById("audio");
const seat = new Admission(api, {
  fetch: (...args) => window.fetch(...args), // looked up at each call: tests may wrap it
  later: workerTimers(),
  solve,
  beacon: (url, json) => Boolean(navigator.sendBeacon)
    && navigator.sendBeacon(url, new Blob([json], { type: "application/json" })),
  log: (text) => console.info(text),
  hooks: {
    change: () => render(),
    note: (text) => { player.note = text; view.renderPlayback(); },
    error: (text, { force = false } = {}) => {
      if (!text) view.clearError("seat");
      else if (force || view.errorFree("seat")) view.showError(text, "seat");
    },
    admitted: ({ playlist, restart }) => {
      if (player.running && !restart) {
        if (!player.url) player.load(playlist); // Play was pressed and waited for this answer
        return; // a renewal: the player sends the new token with every request from now on
      }
      if (seat.seat.blocked) return; // starts at the tap
      player.playLive(playlist);
    },
    waiting: () => { if (player.state !== "idle") player.stop(); },
    ended: () => {
      render();
      poll(); // when it ended, what was recorded
    },
    refused: () => player.stop(),
    notFound: () => notFound(),
    reply: noteClock,
  },
});
const player = new Player(audio, {
  shaka: window.shaka || null,
  now: () => Date.now() + page.skewMs, // the server's clock: how far behind live, from EXT-X-PROGRAM-DATE-TIME
  seat,
  hooks: {
    change: () => render(),
    stopped: () => stopListening(),
    blocked: () => {
      render();
      view.ui.play.focus({ preventScroll: true });
    },
    ended: (wasLive) => { if (wasLive) poll(); },
    error: (text) => view.showError(text),
    restartLive: () => seat.restartPlayer(),
  },
});
const room = new Room(document, spaceId, {
  storage: sessionStorage,
  location,
  history,
  hooks: {
    pauseProgram,
    resumeProgram,
    removed: removedFromSpace,
    notFound: () => notFound(),
    ended: () => poll(),
    isEnded: () => view.isEnded(),
    spaceState: () => page.space && page.space.state,
  },
});
Object.assign(page, { seat: seat.seat, player, room });
const view = new View(document, page);

window.amphiPlayer = exposed();
window.amphiStage = room.exposed();

// The seat's and the player's figures in one object, as tests read them; `token` can be
// set (a test forges one).
function exposed() {
  const out = {};
  for (const key of Object.keys(seat.seat)) {
    Object.defineProperty(out, key, {
      enumerable: true,
      get: () => seat.seat[key],
      set: (value) => { seat.seat[key] = value; },
    });
  }
  for (const key of ["state", "mode", "url", "sp", "fatal", "retries", "engine", "note"]) {
    Object.defineProperty(out, key, { enumerable: true, get: () => player[key] });
  }
  out.behindLive = () => player.behindLive();
  return out;
}

function render() {
  view.render();
  if (!page.gone) room.render();
}

// -- status ---------------------------------------------------------------------------

async function poll() {
  clearTimeout(pollTimer);
  try {
    const reply = await request(api, { cache: "no-store" });
    noteClock(reply.headers);
    if (reply.status === 404) return notFound();
    if (!reply.ok) {
      throw new Error(reply.data && reply.data.message ? reply.data.message : `${reply.status} ${reply.statusText}`);
    }
    page.space = reply.data;
    view.clearError("status");
    if (page.space.state === "ended") seat.end(page.space);
    render();
  } catch (err) {
    if (view.errorFree("status")) {
      view.showError(`Cannot reach the server (${err.message}); retrying…`, "status");
    }
  }
  return schedulePoll();
}

function schedulePoll() {
  if (page.gone) return;
  const { space } = page;
  if (space && space.state === "ended") {
    page.endedPolls += 1;
    if (space.replay || page.endedPolls > ENDED_POLLS) return; // nothing more will change
  }
  clearTimeout(pollTimer); // one chain of polls, however many were started
  pollTimer = setTimeout(poll, REFRESH_MS);
}

function notFound() {
  page.gone = true;
  clearTimeout(pollTimer);
  seat.close();
  player.stop();
  seat.seat.phase = "error";
  view.notFound();
}

// -- the listener's own doing ---------------------------------------------------------

function onPlayClick() {
  if (player.state !== "idle") {
    if (player.mode === "replay") {
      if (audio.paused) player.play();
      else audio.pause();
      return;
    }
    stopListening();
    return;
  }
  if (view.isEnded()) {
    const replay = view.replayUrl();
    if (replay) player.playReplay(replay);
    return;
  }
  if (seat.phase === "playing" && seat.seat.playlist) {
    player.playLive(seat.seat.playlist); // "Tap to listen"; the token is fresh, renewals went on
    return;
  }
  if (seat.phase === "stopped" || seat.phase === "error") {
    view.showError("");
    player.open("live"); // inside the click, which autoplay policies require
    seat.rejoin();
  }
}

// The listener stops (Stop, or a pause from outside: media keys, the lock screen). Renewals
// stop too: the seat lapses with the token unless Play comes first.
function stopListening() {
  player.stop();
  seat.stopped("Stopped.");
}

// -- the stage ------------------------------------------------------------------------

// The program stops while we are on stage: the seat goes to the next in line.
function pauseProgram() {
  player.stop();
  seat.pause("The program is paused while you’re on stage.");
  render();
}

function resumeProgram() {
  if (page.gone || view.isEnded()) return render();
  player.open("live");
  return seat.enter();
}

// Removed from the Space: stop everything.
function removedFromSpace() {
  seat.leave(false);
  seat.close();
  player.stop();
  clearTimeout(pollTimer);
  page.gone = true;
  player.note = "";
  view.ui.play.hidden = true;
  view.ui.playback.textContent = "";
}

// -- wiring ---------------------------------------------------------------------------

view.ui.play.addEventListener("click", onPlayClick);
view.ui.replay.addEventListener("click", (event) => {
  event.preventDefault(); // play it here, in the same player
  const replay = view.replayUrl();
  if (replay) player.playReplay(replay);
});
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && !page.gone) poll();
});
// Leaving the page gives the seat or the place up at once. pagehide, not unload: the page
// stays eligible for the back/forward cache, and coming back joins again.
window.addEventListener("pagehide", () => {
  if (!page.gone) seat.pagehide();
});
window.addEventListener("pageshow", (event) => {
  if (!event.persisted || page.gone || seat.phase === "ended") return;
  player.stop();
  seat.enter();
});
setInterval(() => view.tick(), TICK_MS);

if (!player.engine) {
  player.note = "This browser cannot play HLS audio; try a recent Chrome, Firefox or Safari.";
}
if (!spaceId) {
  notFound();
} else {
  poll();
  if (player.engine) seat.enter();
  else seat.setPhase("stopped");
  room.start();
}
