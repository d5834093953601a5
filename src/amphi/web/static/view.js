// What the listener page shows: the Space's status, the waiting room, the Play button and
// the playback line, the end and the replay. Reads the page's state, never changes it; the
// formatters at the top are pure (node's test runner checks them).
//
// The error line has one owner at a time ("status", "seat" or "player"): each clears only its own.

// -- formatting -------------------------------------------------------------------------

export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

const ORDINAL = new Intl.PluralRules("en-US", { type: "ordinal" });
const SUFFIX = { one: "st", two: "nd", few: "rd", other: "th" };
export function ordinal(n) {
  return `${n}${SUFFIX[ORDINAL.select(n)]}`;
}

export function localTime(iso) {
  const d = new Date(iso);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

export function waitText(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) {
    return "waiting for a seat to free up";
  }
  const s = Number(seconds);
  if (s < 5) return "any moment now";
  if (s < 60) return `about ${Math.max(5, Math.round(s / 5) * 5)} s`;
  if (s < 3600) return `about ${Math.round(s / 60)} min`;
  return "more than an hour";
}

// The waiting room's two lines: where we are, and how long it may take.
export function lineText(seat, startsAtText = localTime) {
  const n = seat.position;
  const draw = seat.order === "draw_at_start";
  const place = draw ? "You’re in line" : `You’re ${ordinal(n)} in line`;
  const total = seat.waiting === 1 ? "1 person waiting" : `${seat.waiting} people waiting`;
  let detail;
  if (draw) {
    const at = seat.startsAt ? ` at ${startsAtText(seat.startsAt)}` : "";
    detail = `The order is drawn when the Space starts${at}: you will be ${ordinal(n)} or earlier. ${total}.`;
  } else {
    detail = `${total} · ${waitText(seat.estimate)}`;
  }
  if (seat.requeued) detail = `Your place had lapsed, so you’re back in line. ${detail}`;
  return { place, detail };
}

const STATE = { scheduled: "Scheduled", live: "Live", ended: "Ended" };
export const ENDED_POLLS = 12; // status polls after the end while the replay is not ready yet

// -- the page ---------------------------------------------------------------------------

// page: {space, skewMs, endedPolls, gone, seat (Admission.seat), player (Player),
//   room: {onStage, removed}, onJump()}.
export class View {
  constructor(doc, page) {
    const $ = (id) => doc.getElementById(id);
    this.doc = doc;
    this.page = page;
    this.ui = {
      card: $("space"), state: $("state"), countdown: $("countdown"), title: $("title"), meta: $("meta"),
      line: $("line"), linePlace: $("line-place"), lineDetail: $("line-detail"), lineNote: $("line-note"),
      play: $("play"), playLabel: $("play-label"), playback: $("playback"), ended: $("ended"),
      endedText: $("ended-text"), endedLinks: $("ended-links"), replay: $("replay"), download: $("download"),
      error: $("error"), audio: $("audio"), notfound: $("notfound"),
    };
  }

  showError(text, source = "player") {
    const { error } = this.ui;
    error.textContent = text || "";
    error.hidden = !text;
    if (text) error.dataset.source = source;
    else delete error.dataset.source;
  }

  clearError(source) {
    if (this.ui.error.dataset.source === source) this.showError("");
  }

  // Is the error line free for `source` (nobody else's error is showing)?
  errorFree(source) {
    return this.ui.error.hidden || this.ui.error.dataset.source === source;
  }

  isEnded() {
    const { space, seat } = this.page;
    return seat.phase === "ended" || (space !== null && space.state === "ended");
  }

  replayUrl() {
    const { space, seat } = this.page;
    return (space && space.replay) || (seat.endedWith && seat.endedWith.replay) || null;
  }

  downloadUrl() {
    const { space, seat } = this.page;
    return (space && space.download) || (seat.endedWith && seat.endedWith.download) || null;
  }

  notFound() {
    this.ui.card.hidden = true;
    this.ui.notfound.hidden = false;
    this.doc.title = "Space not found · Amphi";
  }

  render() {
    if (this.page.gone) {
      this.renderButton();
      this.renderPlayback();
      return;
    }
    const { ui } = this;
    const s = this.page.space;
    if (s) {
      ui.card.removeAttribute("aria-busy");
      ui.title.textContent = s.title;
      ui.state.textContent = STATE[s.state] || s.state;
      ui.state.className = `badge ${s.state}`;
      if (s.state === "ended") {
        const lasted = s.recorded_s > 0 ? ` · ${clock(s.recorded_s)} recorded` : "";
        ui.meta.textContent = `Peak ${plural(s.peak_listeners, "listener")}${lasted}`;
      } else {
        const line = s.waiting > 0 ? ` · ${s.waiting} waiting` : "";
        ui.meta.textContent = `${s.listeners} listening · peak ${s.peak_listeners}${line}`;
      }
      const nav = this.doc.defaultView && this.doc.defaultView.navigator;
      if (nav && "mediaSession" in nav && this.doc.defaultView.MediaMetadata) {
        nav.mediaSession.metadata = new this.doc.defaultView.MediaMetadata({ title: s.title, artist: "Amphi" });
      }
    }
    const ended = this.isEnded();
    ui.ended.hidden = !ended;
    if (ended) this.renderEnded();
    this.renderLine();
    this.renderTitle();
    this.tick();
    this.renderButton();
  }

  renderTitle() {
    const { seat, space } = this.page;
    let prefix = "";
    if (seat.phase === "waiting" && seat.position) prefix = `${ordinal(seat.position)} in line · `;
    else if (seat.blocked) prefix = "▶ Your turn · ";
    this.doc.title = `${prefix}${space ? `${space.title} · ` : ""}Amphi`;
  }

  renderEnded() {
    const { ui } = this;
    const { seat, endedPolls } = this.page;
    const s = this.page.space || {};
    const replay = this.replayUrl();
    const when = s.ended_at ? ` at ${localTime(s.ended_at)}` : "";
    let text = s.ended_abnormally
      ? `This Space was cut off${when}; what was recorded until then is kept.`
      : `This Space ended${when}.`;
    if (seat.endedInLine) text += " It ended while you were in line.";
    if (!replay) {
      text += s.recorded_s > 0 || endedPolls < ENDED_POLLS ? " The replay will be ready in a moment…" : " Nothing was recorded.";
    } else if (seat.endedInLine) {
      text += " The replay has all of it.";
    }
    ui.endedText.textContent = text;
    ui.endedLinks.hidden = !replay;
    if (replay) {
      ui.replay.href = replay;
      ui.download.href = this.downloadUrl() || replay;
    }
  }

  // The waiting room: where we are in line, how long it may take, and that nothing needs doing.
  renderLine() {
    const { ui } = this;
    const waiting = this.page.seat.phase === "waiting";
    ui.line.hidden = !waiting;
    if (!waiting) return;
    const { place, detail } = lineText(this.page.seat);
    if (ui.linePlace.textContent !== place) ui.linePlace.textContent = place; // announced when it changes
    ui.lineDetail.textContent = detail;
  }

  // -- the once-a-tick lines: countdown and playback --------------------------------------

  tick() {
    this.renderCountdown();
    this.renderPlayback();
  }

  renderCountdown() {
    const { ui } = this;
    const s = this.page.space;
    if (!s || s.state !== "scheduled") {
      ui.countdown.hidden = true;
      return;
    }
    ui.countdown.hidden = false;
    if (!s.starts_at) {
      ui.countdown.textContent = "Starts when the host is ready — hold music until then";
      return;
    }
    const left = (Date.parse(s.starts_at) - (Date.now() + this.page.skewMs)) / 1000;
    ui.countdown.textContent = left >= 1
      ? `Starts in ${clock(left)} — hold music until then`
      : "Starting…";
  }

  renderPlayback() {
    const { ui } = this;
    const { player, seat, space } = this.page;
    const { audio } = ui;
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
          const behind = player.behindLive();
          text = behind === null ? "Live" : `Live · ${behind.toFixed(1)} s behind`;
          jump = behind !== null && behind > player.targetLatency() + 3;
        }
        break;
      case "retrying": text = player.retryText || "Reconnecting…"; break;
      default:
        if (seat.blocked) text = "It’s your turn. Your browser needs a tap before it plays sound.";
        else if (seat.phase === "joining") text = player.note || "Joining…";
        else text = player.note || "";
    }
    ui.playback.classList.toggle("playing", playing);
    if (ui.playback.dataset.text === text + jump) return; // keep focus on the jump link
    ui.playback.dataset.text = text + jump;
    ui.playback.textContent = text;
    if (jump) {
      const b = this.doc.createElement("button");
      b.type = "button";
      b.className = "link";
      b.textContent = "Jump to live";
      b.addEventListener("click", () => player.jumpToLive());
      ui.playback.append(" · ", b);
    }
  }

  renderButton() {
    const { ui } = this;
    const { player, seat, room } = this.page;
    let label = "Play";
    let icon = "play";
    let busy = false;
    let attention = false;
    let disabled = !player.engine || this.page.gone;
    if (player.state === "connecting" || player.state === "buffering" || player.state === "retrying") {
      busy = true;
      label = player.mode === "replay" ? "Pause" : "Stop";
      icon = player.mode === "replay" ? "pause" : "stop";
    } else if (player.state === "playing") {
      label = player.mode === "replay" ? "Pause" : "Stop";
      icon = player.mode === "replay" ? "pause" : "stop";
    } else if (player.state === "paused") {
      label = "Resume";
    } else if (this.isEnded()) {
      label = "Play replay";
      disabled = disabled || !this.replayUrl();
    } else if (seat.phase === "joining") {
      label = "Joining…";
      busy = true;
      disabled = true;
    } else if (seat.blocked) {
      label = "Tap to listen";
      attention = true;
    } else if (seat.phase === "error") {
      label = "Try again";
    }
    ui.play.hidden = (seat.phase === "waiting" && player.state === "idle") || room.onStage || room.removed;
    ui.play.disabled = disabled;
    ui.play.dataset.icon = icon;
    ui.playLabel.textContent = label;
    ui.play.toggleAttribute("data-busy", busy);
    ui.play.toggleAttribute("data-attention", attention);
  }
}
