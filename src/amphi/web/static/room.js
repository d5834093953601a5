// The room on the listener page (docs/stage.md, with stage.js): who is on stage, live by
// Server-Sent Events, and this listener's way onto it: request to speak (or an invite link,
// /s/<id>?grant=G), then, once on stage, the program stops and the speaker's own WebRTC
// return feed plays instead.
//
// The mode follows `you.state` in the stage view (no grant: "listener"):
//   listener -> requested -> on_stage -> listener;  invited -> on_stage | listener;
//   any -> removed (the page stops).  onStage: this page speaks, the program is paused.
//
// On stage, the page tells the speaker what the sound guard knows (sound.js): that they talk
// while muted (their own microphone, metered here, or the server's measure) and that their
// microphone hears the Space (feedback: the server turns them down; use headphones).
//
// hooks: pauseProgram(), resumeProgram() (on and off the stage), removed() (stop everything),
//   notFound(), ended() (the Space ended: the page polls its status), isEnded(), spaceState().

import { plainError } from "./api.js";
import { FEEDBACK_TEXT, HOST_MUTED_TALKING_TEXT, MUTED_TALKING_TEXT } from "./sound.js";
import { call, PeopleList, reconnectingText, Speaker, StageEvents, StageList } from "./stage.js";

const SPEAKING_TEXT = {
  starting: "Asking for your microphone…",
  connecting: "Connecting your microphone…",
  connected: "Live: listeners hear you.",
};

function notice(node, text) {
  if (node.textContent !== text) node.textContent = text;
  node.hidden = !text;
}

export class Room {
  constructor(doc, spaceId, { storage, location, history, hooks }) {
    const $ = (id) => doc.getElementById(id);
    this.$ = $;
    this.spaceId = spaceId;
    this.storage = storage;
    this.location = location;
    this.history = history;
    this.hooks = hooks;
    this.grantItem = `amphi.grant.${spaceId}`;
    this.grant = null;
    this.you = null;
    this.view = null;
    this.events = null;
    this.speaker = null;
    this.onStage = false;
    this.removed = false;
    this.ended = false;
    this.busy = false; // a request of ours is under way
    this.state = "listener"; // the last state followed
    this.ours = false; // the next change of state is our own doing (withdraw, decline, leave)
    this.note = ""; // why we are back in the audience, when someone else decided it
    this.muting = false; // a mute/unmute of ours is under way: views may still show the old state
    this.moderating = false;
    this.ui = {
      room: $("room"), members: $("members"), box: $("speak-box"), ask: $("ask"), askOpen: $("ask-open"),
      askForm: $("ask-form"), askName: $("ask-name"), askCancel: $("ask-cancel"), requested: $("requested"),
      withdraw: $("withdraw"), invited: $("invited"), inviteAccept: $("invite-accept"),
      inviteDecline: $("invite-decline"), onstage: $("onstage"), mute: $("mute"), muteNote: $("mute-note"),
      leaveStage: $("leave-stage"), removed: $("removed"), status: $("speak-status"), error: $("speak-error"),
      feed: $("return-feed"), mutedTalking: $("muted-talking"), feedback: $("feedback-warning"),
    };
    // A co-host moderates speakers (not the host, other co-hosts or themselves) and requests.
    this.stageList = new StageList(this.ui.members, {
      actions: (m) => {
        const you = this.you;
        if (!this.view || !this.view.moderator || !you || m.id === you.id || m.role === "host" || m.role === "cohost") return [];
        return [
          m.host_muted ? { label: "Unmute", action: "unmute" } : { label: "Mute", action: "mute" },
          { label: "Remove from stage", action: "remove-stage" },
          { label: "Remove from Space", action: "remove-space", kind: "danger" },
        ];
      },
      onAction: (m, action, button) => {
        const pid = encodeURIComponent(m.id);
        if (action === "remove-stage") this.action(button, "POST", `/stage/${pid}/remove`, { from: "stage" });
        else if (action === "remove-space") this.action(button, "POST", `/stage/${pid}/remove`, { from: "space" });
        else this.action(button, "POST", `/stage/${pid}/${action}`);
      },
    });
    this.requestList = new PeopleList($("mod-requests"), {
      buttons: () => [{ label: "Accept", action: "accept", kind: "primary" }, { label: "Decline", action: "decline" }],
      onAction: (p, action, button) => this.action(button, "POST", `/stage/${encodeURIComponent(p.id)}/${action}`),
    });
  }

  // For tests: window.amphiStage.
  exposed() {
    const room = this;
    return {
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
  }

  error(text) {
    this.ui.error.textContent = text || "";
    this.ui.error.hidden = !text;
  }

  // A grant comes from an invite link (then leaves the address bar: it is a credential) or
  // from this tab's earlier request to speak.
  loadGrant() {
    const { location } = this;
    const params = new URLSearchParams(location.search);
    const fromLink = params.get("grant");
    if (fromLink) {
      this.storage.setItem(this.grantItem, fromLink);
      params.delete("grant");
      const rest = params.toString();
      this.history.replaceState(null, "", `${location.pathname}${rest ? `?${rest}` : ""}${location.hash}`);
    }
    this.grant = this.storage.getItem(this.grantItem);
  }

  setGrant(grant) {
    this.grant = grant;
    if (grant) this.storage.setItem(this.grantItem, grant);
    else this.storage.removeItem(this.grantItem);
  }

  start() {
    this.loadGrant();
    this.startEvents();
    this.wire();
  }

  startEvents() {
    if (this.events) this.events.stop();
    this.events = new StageEvents(this.spaceId, {
      token: this.grant,
      onStage: (view) => this.onView(view),
      onYou: (you) => {
        if (this.removed) return;
        this.you = you;
        this.follow();
        this.render();
      },
      onEnded: () => this.roomEnded(),
      onRefused: (err) => this.roomRefused(err),
      onState: (state) => { // the stream broke: the host may be gone, the speaker looks closer
        if (state === "connecting" && this.events && this.events.opens > 0 && this.speaker) this.speaker.suspect();
      },
    });
    this.events.start();
  }

  onView(view) {
    if (this.removed) return;
    this.view = view;
    if (view.you) this.you = view.you;
    else if (!this.grant) this.you = null;
    this.follow();
    this.render();
  }

  // Does what the stage now says about us.
  follow() {
    const state = this.you ? this.you.state : "listener";
    if (state === "removed") return this.removedFromSpace();
    if (state !== this.state) {
      const was = this.state;
      this.state = state;
      this.note = "";
      if (state === "listener" && !this.ours) {
        if (was === "requested") this.note = "The host declined your request this time.";
        else if (was === "on_stage") this.note = "The host moved you back to the audience.";
      }
      this.ours = false;
    }
    if (state === "on_stage" && !this.onStage && !this.ended) this.goOnStage();
    else if (state !== "on_stage" && this.onStage) this.backToListening();
    if (this.onStage && this.speaker && !this.muting) this.speaker.setMuted(Boolean(this.you.self_muted));
    if (this.onStage && this.speaker) this.speaker.setHostMuted(Boolean(this.you.host_muted));
    return undefined;
  }

  goOnStage() {
    this.onStage = true;
    this.error("");
    this.hooks.pauseProgram();
    if (!this.speaker) {
      this.speaker = new Speaker(this.spaceId, {
        credential: () => this.grant,
        audio: this.ui.feed,
        onChange: () => this.render(),
        onRefused: (err) => this.speakerRefused(err),
      });
    }
    this.speaker.setMuted(Boolean(this.you && this.you.self_muted));
    this.speaker.start().catch((err) => {
      // No microphone: off the stage again, so that the host sees it.
      this.error(`Could not use your microphone (${err.message}), so you left the stage.`);
      this.ours = true;
      this.call("POST", "/stage/me/leave").catch(() => {});
      this.backToListening();
      this.render();
    });
  }

  backToListening() {
    this.onStage = false;
    if (this.speaker) this.speaker.stop();
    this.hooks.resumeProgram();
  }

  // /speak refused us (not on stage any more, the Space ended, removed): the stage says why.
  async speakerRefused(err) {
    if (err.code === "removed") return this.removedFromSpace();
    try {
      const view = await call(this.spaceId, "GET", "/stage", { auth: this.grant });
      this.onView(view);
    } catch (e) {
      if (e.code === "removed") return this.removedFromSpace();
    }
    if (this.onStage) { // the stage still says on stage, yet /speak refused: give up cleanly
      this.error(`You could not speak: ${plainError(err)}`);
      this.backToListening();
    }
    this.render();
    return undefined;
  }

  roomRefused(err) {
    if (err.code === "removed") return this.removedFromSpace();
    if (err.status === 404) return this.hooks.notFound();
    // our grant is no good any more (expired, or not for this Space): listen as anyone does
    if (this.onStage) this.backToListening();
    this.setGrant(null);
    this.you = null;
    this.startEvents();
    this.render();
    return undefined;
  }

  roomEnded() {
    this.ended = true;
    if (this.speaker) this.speaker.stop();
    this.onStage = false;
    this.render();
    this.hooks.ended(); // the Space's end, the replay
  }

  // Removed from the Space: say so and stop everything.
  removedFromSpace() {
    if (this.removed) return;
    this.removed = true;
    this.onStage = false;
    if (this.speaker) this.speaker.stop();
    if (this.events) this.events.stop();
    this.setGrant(null);
    this.hooks.removed();
    this.error("");
    this.render();
  }

  call(method, path, body) {
    return call(this.spaceId, method, path, { auth: this.grant, body });
  }

  // One click: the button waits; the answer's `you` is shown at once, the stream follows.
  async action(button, method, path, body) {
    this.busy = true;
    if (button) button.disabled = true;
    this.error("");
    try {
      const answer = await this.call(method, path, body);
      if (answer && answer.you) this.you = answer.you;
      if (answer && Array.isArray(answer.members)) this.view = { ...this.view, ...answer };
      this.follow();
      return answer;
    } catch (err) {
      this.ours = false;
      if (err.code === "removed") this.removedFromSpace();
      else this.error(plainError(err));
      return null;
    } finally {
      this.busy = false;
      if (button) button.disabled = false;
      this.render();
    }
  }

  async requestToSpeak(event) {
    event.preventDefault();
    const { ui } = this;
    const name = ui.askName.value.trim();
    if (!name) return;
    const button = event.submitter || ui.askForm.querySelector("button[type=submit]");
    button.disabled = true;
    this.error("");
    try {
      const data = await this.call("POST", "/stage/requests", { name });
      this.storage.setItem(`${this.grantItem}.name`, name);
      if (data.grant && data.grant !== this.grant) {
        this.setGrant(data.grant);
        this.startEvents(); // our own view from now on
      }
      this.you = data.you || { id: data.participant, name, state: "requested" };
      ui.askForm.hidden = true;
      this.follow();
    } catch (err) {
      this.error(plainError(err));
    } finally {
      button.disabled = false;
      this.render();
    }
  }

  async toggleMute() {
    const you = this.you;
    if (!you || !this.speaker) return;
    const muted = !(you.self_muted || this.speaker.muted);
    if (!muted && you.host_muted) return; // the button is disabled; the note says why
    this.muting = true;
    this.speaker.setMuted(muted);
    try {
      await this.action(this.ui.mute, "POST", `/stage/me/${muted ? "mute" : "unmute"}`);
    } finally {
      this.muting = false;
      if (this.you) this.speaker.setMuted(Boolean(this.you.self_muted));
      this.render();
    }
  }

  render() {
    const { ui, view, $ } = this;
    const ended = this.ended || this.hooks.isEnded();
    ui.room.hidden = !view && !this.removed;
    if (view) {
      const moderator = Boolean(view.moderator) && !ended && !this.removed;
      if (moderator !== this.moderating) this.stageList.reset();
      this.moderating = moderator;
      this.stageList.youId = this.you ? this.you.id : null;
      this.stageList.render(ended ? [] : view.members || []);
      ui.members.hidden = ended;
      $("room-title").hidden = ended;
      const requests = moderator && Array.isArray(view.requests) ? view.requests : [];
      $("moderate").hidden = !moderator;
      $("mod-empty").hidden = requests.length > 0;
      this.requestList.render(requests);
    }
    const state = this.removed ? "removed" : this.you ? this.you.state : "listener";
    const live = (view && view.state ? view.state : this.hooks.spaceState()) === "live";
    ui.box.hidden = !this.removed && (ended || !(live || state !== "listener"));
    ui.box.classList.toggle("on-stage", state === "on_stage");
    ui.ask.hidden = state !== "listener";
    ui.requested.hidden = state !== "requested";
    ui.invited.hidden = state !== "invited";
    ui.onstage.hidden = state !== "on_stage";
    ui.removed.hidden = state !== "removed";
    if (state === "listener" && !ui.askForm.hidden) ui.askOpen.hidden = true;
    else ui.askOpen.hidden = false;
    const you = this.you || {};
    const sp = this.speaker ? this.speaker.snapshot() : null;
    const muted = Boolean(you.self_muted || you.host_muted || (sp && sp.muted));
    ui.mute.textContent = muted ? "Unmute" : "Mute";
    ui.mute.setAttribute("aria-pressed", String(muted));
    ui.mute.disabled = this.busy || Boolean(you.host_muted);
    ui.mute.title = you.host_muted ? "The host muted you; only the host or a co-host can unmute you" : "";
    ui.muteNote.hidden = !you.host_muted;
    let text = "";
    if (state === "on_stage" && sp) {
      text = SPEAKING_TEXT[sp.state] || "";
      if (sp.state === "connected" && muted) text = you.host_muted ? "" : "You’re muted.";
      if (sp.state === "reconnecting") text = reconnectingText(sp.retryInMs);
    }
    if (state === "listener") text = this.note;
    const speaking = state === "on_stage" && sp && sp.state !== "stopped" && !ended;
    const talkingMuted = speaking && muted && Boolean(sp.mutedTalking || you.muted_talking);
    if (talkingMuted) text = ""; // the notice says it louder
    if (ui.status.textContent !== text) ui.status.textContent = text;
    notice(ui.mutedTalking, talkingMuted ? (you.host_muted ? HOST_MUTED_TALKING_TEXT : MUTED_TALKING_TEXT) : "");
    notice(ui.feedback, speaking && you.feedback ? FEEDBACK_TEXT : "");
  }

  wire() {
    const { ui } = this;
    ui.askOpen.addEventListener("click", () => {
      ui.askForm.hidden = false;
      ui.askOpen.hidden = true;
      ui.askName.value = ui.askName.value || this.storage.getItem(`${this.grantItem}.name`) || "";
      ui.askName.focus();
    });
    ui.askCancel.addEventListener("click", () => {
      ui.askForm.hidden = true;
      ui.askOpen.hidden = false;
      ui.askOpen.focus();
    });
    ui.askForm.addEventListener("submit", (event) => this.requestToSpeak(event));
    const ours = (button, path) => () => {
      this.ours = true;
      this.action(button, "POST", path);
    };
    ui.withdraw.addEventListener("click", ours(ui.withdraw, "/stage/me/decline"));
    ui.inviteAccept.addEventListener("click", () => this.action(ui.inviteAccept, "POST", "/stage/me/accept"));
    ui.inviteDecline.addEventListener("click", ours(ui.inviteDecline, "/stage/me/decline"));
    ui.mute.addEventListener("click", () => this.toggleMute());
    ui.leaveStage.addEventListener("click", ours(ui.leaveStage, "/stage/me/leave"));
    setInterval(() => { if (this.onStage) this.render(); }, 1000); // the reconnect countdown
  }
}
