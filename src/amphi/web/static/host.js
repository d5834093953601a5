// The host console, /s/<id>/host: the host key (asked once, kept in this tab's
// sessionStorage, never in a URL) is exchanged for a host grant; the grant opens the
// moderator's view of the stage by Server-Sent Events, and authorises the moderation calls.
// Start, End and Speak use the key itself.
//
// The sound (sound.js, issue 20): the moderators' view carries `sound`: a dead-air banner
// while the live program is silent, and per person on stage their level, loudness, the
// leveler's gain and three checks; before the start, "Ready to go live" says whether the
// stage is ready. The host may speak before the start (the others on stage hear them; the
// listeners hear hold music), to check their own microphone; their page measures it too and
// tells them when they talk while muted.
//
// Page: signin (no key, or a key the server refused) -> console (-> ended).
// window.amphiStage exposes {role, view, you, events, speaking, sound} for tests.

import { ApiError, call, plainError } from "./api.js";
import { FEEDBACK_TEXT, MUTED_TALKING_TEXT, SoundPanel } from "./sound.js";
import { PeopleList, reconnectingText, Speaker, StageEvents, StageList } from "./stage.js";

const GRANT_RENEW_MARGIN_S = 300; // a new host grant this long before the old one expires
const STATE = { scheduled: "Scheduled", live: "Live", ended: "Ended" };

const $ = (id) => document.getElementById(id);
const parts = location.pathname.replace(/\/+$/, "").split("/");
const spaceId = decodeURIComponent(parts[parts.length - 2] || "");
const KEY_ITEM = `amphi.host-key.${spaceId}`;

let key = sessionStorage.getItem(KEY_ITEM);
let grant = null;
let grantTimer = 0;
let space = null; // GET /api/spaces/<id>
let view = null; // the latest stage view (moderator's)
let you = null; // the host's own record
let events = null;
let skewMs = 0; // the server's clock minus ours (its Date header): how long dead air has lasted

const exposed = {
  role: "host",
  get view() { return view; },
  get you() { return you; },
  get events() { return events ? { state: events.state, opens: events.opens, events: events.events } : null; },
  get speaking() { return speaker.snapshot(); },
  route: () => speaker.route(), // which ICE path the speaking took (diagnostics)
  get sound() { return soundPanel.snapshot(); },
};
window.amphiStage = exposed;

const soundPanel = new SoundPanel(document, {
  banner: $("dead-air"), bannerMessage: $("dead-air-message"), bannerLasted: $("dead-air-lasted"),
  card: $("sound"), title: $("sound-title"), ready: $("sound-ready"), list: $("sound-speakers"),
  empty: $("sound-empty"), note: $("sound-note"),
}, { now: () => Date.now() + skewMs });

// The status call notes the server's clock from its Date header (whole seconds).
function clocked(...args) {
  return window.fetch(...args).then((res) => {
    const date = Date.parse(res.headers.get("date") || "");
    if (!Number.isNaN(date)) {
      const skew = date + 500 - Date.now();
      skewMs = Math.abs(skew) > 2000 ? skew : 0;
    }
    return res;
  });
}

const speaker = new Speaker(spaceId, {
  credential: () => key,
  audio: $("return-feed"),
  onChange: renderSpeak,
  onRefused: (err) => {
    showError(`You are no longer speaking. ${plainError(err)}`);
    renderSpeak();
  },
});

// -- errors ---------------------------------------------------------------------------

function showError(text) {
  $("error").textContent = text || "";
  $("error").hidden = !text;
}

// -- the key and the grant ------------------------------------------------------------

function showSignin(message) {
  $("console").hidden = true;
  $("signin").hidden = false;
  $("key-error").textContent = message || "";
  $("key-error").hidden = !message;
  $("key").focus();
}

async function openConsole() {
  try {
    await renewGrant();
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      forgetKey();
      showSignin("That is not the host key of this Space.");
    } else if (err instanceof ApiError && err.status === 404) {
      notFound();
    } else {
      showSignin(plainError(err));
    }
    return;
  }
  $("signin").hidden = true;
  $("console").hidden = false;
  $("key").value = "";
  render();
  startEvents();
}

// Exchanges the key for a host grant, and schedules the next exchange before it expires.
async function renewGrant() {
  const data = await call(spaceId, "POST", "/stage/session", { auth: key });
  grant = data.grant;
  clearTimeout(grantTimer);
  const expires = typeof data.expires_at === "number" ? data.expires_at * 1000 : Date.parse(data.expires_at);
  if (Number.isFinite(expires)) {
    const inMs = Math.max(60000, expires - Date.now() - GRANT_RENEW_MARGIN_S * 1000);
    grantTimer = setTimeout(() => renewGrant().then(startEvents).catch(() => { /* the next call says */ }), inMs);
  }
}

function forgetKey() {
  sessionStorage.removeItem(KEY_ITEM);
  key = null;
  grant = null;
  clearTimeout(grantTimer);
}

// A moderation call with the grant; a grant that expired meanwhile is renewed once.
async function moderate(method, path, body) {
  try {
    return await call(spaceId, method, path, { auth: grant, body });
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401 || !key) throw err;
    await renewGrant();
    return call(spaceId, method, path, { auth: grant, body });
  }
}

// -- live state -----------------------------------------------------------------------

function startEvents() {
  if (events) events.stop();
  events = new StageEvents(spaceId, {
    token: grant,
    onStage: (v) => {
      view = v;
      render();
    },
    onYou: (record) => {
      you = record;
      renderSpeak();
    },
    onEnded: () => {
      if (view) view = { ...view, state: "ended" };
      speaker.stop();
      refreshStatus();
      render();
    },
    onRefused: async (refusal) => {
      if (refusal.status === 404) return notFound();
      try { // the grant: a new one, once
        await renewGrant();
        startEvents();
      } catch (err) {
        forgetKey();
        showSignin(`The console was signed out: ${plainError(err)}`);
      }
    },
    onState: (state) => {
      if (state === "connecting" && events && events.opens > 0) speaker.suspect(); // the host may be gone
      renderCounts(state);
    },
  });
  events.start();
}

async function refreshStatus() {
  try {
    space = await call(spaceId, "GET", "", { fetch: clocked });
    render();
  } catch (err) {
    if (err.status === 404) notFound();
  }
}

function notFound() {
  if (events) events.stop();
  speaker.stop();
  $("signin").hidden = true;
  $("console").hidden = true;
  $("notfound").hidden = false;
}

// -- rendering ------------------------------------------------------------------------

function currentState() {
  return (view && view.state) || (space && space.state) || null;
}

function render() {
  const state = currentState();
  if (space) {
    $("title").textContent = space.title;
    document.title = `Host · ${space.title} · Amphi`;
  }
  $("state").textContent = STATE[state] || "Loading";
  $("state").className = `badge ${state || ""}`;
  $("start").hidden = state !== "scheduled";
  $("end").hidden = state !== "live";
  renderCounts();
  renderSpeak();
  if (!view) return;
  soundPanel.render(view.sound, state);
  stageList.render(view.members || []);
  const onStage = (view.members || []).length;
  $("stage-count").textContent = `(${onStage} of 13)`;
  $("stage-empty").hidden = onStage > 0;
  renderRequests(Array.isArray(view.requests) ? view.requests : []);
  renderInvited(Array.isArray(view.invited) ? view.invited : []);
}

function renderCounts() {
  const bits = [];
  if (view) {
    bits.push(`${view.listeners} listening`);
    if (view.waiting > 0) bits.push(`${view.waiting} waiting to get in`);
  } else if (space) {
    bits.push(`${space.listeners} listening`);
  }
  if (events && events.state === "connecting" && events.opens > 0) bits.push("reconnecting…");
  $("counts").textContent = bits.join(" · ");
  $("live-link").replaceChildren();
  const link = document.createElement("a");
  link.href = `/s/${encodeURIComponent(spaceId)}`;
  link.textContent = "listener page";
  link.target = "_blank";
  link.rel = "noopener";
  $("live-link").append("· ", link);
}

const SPEAK_TEXT = {
  starting: "Asking for your microphone…",
  connecting: "Connecting…",
  connected: "You are on air.",
};

function renderSpeak() {
  const state = currentState();
  const live = state === "live";
  const s = speaker.snapshot();
  const active = s.state !== "idle" && s.state !== "stopped";
  $("speak").hidden = !live && state !== "scheduled" && !active; // before the start: a sound check
  $("speak").textContent = active ? "Stop speaking" : "Speak";
  $("speak").setAttribute("aria-pressed", String(active));
  $("speak").classList.toggle("primary", !active && live);
  const muted = Boolean(speaker.muted || (you && you.self_muted));
  $("self-mute").hidden = !active;
  $("self-mute").textContent = muted ? "Unmute me" : "Mute me";
  $("self-mute").setAttribute("aria-pressed", String(muted));
  let text = SPEAK_TEXT[s.state] || "";
  if (s.state === "connected" && !live) text = "Connected: the others on stage hear you; listeners hear the hold music until you start.";
  if (s.state === "connected" && muted) text = "You are muted.";
  if (s.state === "reconnecting") text = reconnectingText(s.retryInMs);
  if (s.state === "stopped" && s.lastError && s.refusedWith === null) text = `Not speaking: ${s.lastError}.`;
  // Talking while muted: our own meter, or the server's (it hears what the track sends).
  const mine = (view && (view.members || []).find((m) => m.id === "host")) || {};
  const talkingMuted = active && muted && Boolean(s.mutedTalking || (you && you.muted_talking) || mine.muted_talking);
  notice($("muted-talking"), talkingMuted ? MUTED_TALKING_TEXT : "");
  $("speak-status").textContent = talkingMuted ? "" : text; // the notice says it louder
  const feedback = active && Boolean((you && you.feedback) || mine.feedback);
  notice($("feedback-warning"), feedback ? FEEDBACK_TEXT : "");
}

function notice(node, text) {
  if (node.textContent !== text) node.textContent = text;
  node.hidden = !text;
}

const stageList = new StageList($("members"), {
  youId: "host",
  actions: (m) => {
    if (m.id === "host") return [];
    const list = [];
    list.push(m.host_muted
      ? { label: "Unmute", action: "unmute", title: "Lift your mute: they can speak again" }
      : { label: "Mute", action: "mute", title: "Mute them until you unmute them" });
    list.push(m.role === "cohost"
      ? { label: "Make speaker", action: "speaker" }
      : { label: "Make co-host", action: "cohost" });
    list.push({ label: "Remove from stage", action: "remove-stage" });
    list.push({ label: "Remove from Space", action: "remove-space", kind: "danger" });
    return list;
  },
  onAction: (m, action, button) => {
    const pid = encodeURIComponent(m.id);
    const calls = {
      mute: ["POST", `/stage/${pid}/mute`],
      unmute: ["POST", `/stage/${pid}/unmute`],
      cohost: ["POST", `/stage/${pid}/role`, { role: "cohost" }],
      speaker: ["POST", `/stage/${pid}/role`, { role: "speaker" }],
      "remove-stage": ["POST", `/stage/${pid}/remove`, { from: "stage" }],
      "remove-space": ["POST", `/stage/${pid}/remove`, { from: "space" }],
    };
    act(button, ...calls[action]);
  },
});

// One moderation click: the button waits for the answer; the answer (a view) is shown at
// once, the event stream follows.
async function act(button, method, path, body) {
  if (button) button.disabled = true;
  try {
    const answer = await moderate(method, path, body);
    showError("");
    if (answer && Array.isArray(answer.members) && (!view || !(answer.version < view.version))) {
      view = { ...view, ...answer };
      render();
    }
  } catch (err) {
    showError(plainError(err));
  } finally {
    if (button && button.isConnected) button.disabled = false;
  }
}

function since(at) {
  const t = typeof at === "number" ? (at < 1e12 ? at * 1000 : at) : Date.parse(at);
  if (!Number.isFinite(t) || t < Date.UTC(2020, 0, 1) || t > Date.now() + 60000) return ""; // not a wall-clock time
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 60) return "asked just now";
  if (s < 3600) return `asked ${Math.round(s / 60)} min ago`;
  return `asked at ${new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
}

const requestList = new PeopleList($("requests"), {
  buttons: () => [{ label: "Accept", action: "accept", kind: "primary" }, { label: "Decline", action: "decline" }],
  detail: (p) => since(p.at),
  onAction: (p, action, button) => act(button, "POST", `/stage/${encodeURIComponent(p.id)}/${action}`),
});
const invitedList = new PeopleList($("invited"), {
  buttons: () => [{ label: "Withdraw invite", action: "decline" }],
  onAction: (p, action, button) => act(button, "POST", `/stage/${encodeURIComponent(p.id)}/${action}`),
});

function renderRequests(requests) {
  $("requests-count").textContent = requests.length ? `(${requests.length})` : "";
  $("requests-empty").hidden = requests.length > 0;
  requestList.render(requests);
}

function renderInvited(invited) {
  $("invited-title").hidden = invited.length === 0;
  invitedList.render(invited);
}

// -- the host's own controls ----------------------------------------------------------

async function hostCall(button, path) {
  button.disabled = true;
  try {
    space = await call(spaceId, "POST", path, { auth: key });
    showError("");
    if (view) view = { ...view, state: space.state };
    if (space.state === "ended") speaker.stop();
    render();
  } catch (err) {
    showError(plainError(err));
  } finally {
    button.disabled = false;
  }
}

async function toggleSpeak() {
  const s = speaker.state;
  if (s !== "idle" && s !== "stopped") {
    speaker.stop();
    return;
  }
  showError("");
  try {
    await speaker.start();
  } catch (err) {
    showError(`Could not speak: ${err.message}.`);
  }
}

async function toggleSelfMute() {
  const muted = !speaker.muted;
  speaker.setMuted(muted);
  try {
    await moderate("POST", `/stage/me/${muted ? "mute" : "unmute"}`);
    showError("");
  } catch (err) {
    showError(plainError(err));
  }
  renderSpeak();
}

async function invite(event) {
  event.preventDefault();
  const name = $("invite-name").value.trim();
  if (!name) return;
  const button = event.submitter || $("invite-form").querySelector("button");
  button.disabled = true;
  try {
    const data = await moderate("POST", "/stage/invites", { name });
    const url = new URL(data.invite_url || `/s/${encodeURIComponent(spaceId)}?grant=${encodeURIComponent(data.grant)}`,
      location.origin).href;
    $("invite-who").textContent = name;
    $("invite-link").textContent = url;
    $("invite-copy").textContent = "Copy";
    $("invite-result").hidden = false;
    $("invite-name").value = "";
    showError("");
  } catch (err) {
    showError(plainError(err));
  } finally {
    button.disabled = false;
  }
}

// -- wiring ---------------------------------------------------------------------------

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("key").value.trim();
  if (!value) return;
  key = value;
  sessionStorage.setItem(KEY_ITEM, key);
  openConsole();
});
$("signout").addEventListener("click", () => {
  speaker.stop();
  if (events) events.stop();
  forgetKey();
  view = null;
  showSignin("");
});
$("start").addEventListener("click", () => hostCall($("start"), "/start"));
$("end").addEventListener("click", () => hostCall($("end"), "/end"));
$("speak").addEventListener("click", toggleSpeak);
$("self-mute").addEventListener("click", toggleSelfMute);
$("invite-form").addEventListener("submit", invite);
$("invite-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("invite-link").textContent);
    $("invite-copy").textContent = "Copied";
  } catch (_) {
    getSelection().selectAllChildren($("invite-link")); // no clipboard on plain http
  }
});
setInterval(() => { // the reconnect countdown, how long the dead air has lasted
  renderSpeak();
  soundPanel.tick();
}, 1000);

(async () => {
  try {
    space = await call(spaceId, "GET", "", { fetch: clocked });
  } catch (err) {
    if (err.status === 404) return notFound();
  }
  if (key) openConsole();
  else showSignin("");
})();
