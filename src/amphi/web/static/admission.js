// The listener's seat in a Space (docs/simulate.md has the protocol): join, wait in line,
// keep the token fresh, give the seat up. Pure: no DOM and no globals; the network, the
// clock, timers, randomness and the proof of work are injected, so node's test runner drives
// it with a fake server and a fake clock.
//
// Phases (seat.phase), one request at a time (POST join):
//   joining -> waiting -> playing <-> stopped;  any -> ended;  joining -> error (refused).
//   waiting: a ticket and a place number. The Space's line document (GET line, which edges
//     cache for a second) is read after the answer's retry_after_s plus 0-20 % (never sooner),
//     and again after the interval it implies: the position is worked out from it
//     (linePosition), and only once our turn has come is the ticket sent (POST join {ticket})
//     to take the seat. A place in the pre-start pool has no number: its ticket is sent once
//     the document says the Space has started. A document that cannot be read: the ticket
//     is polled instead, as the join answer advised;
//   playing: a seat and a token. The live playlist renews the token: past half its life, a
//     playlist GET is answered 307 to the same path with a new token for the seat, which the
//     player hands to adopt() (no request here). The API renewal (POST join {token}) is the
//     fallback, for a token no playlist renewed: renew_after_s (+ up to 10 %, before 80 %) into
//     the newest token's life. A refused ticket or token (400/401/403) means joining afresh;
//   stopped: the listener stopped: no more renewals, the seat lapses with the token.
// 429 challenge_required: solve(challenge) (a worker, in the page), then the same request
// again with the solution. 429/503 with a wait: again after it. Network errors, 5xx and 429
// without a wait: again after 1, 2, 4, 8, 15 s. 404: the Space does not exist.
//
// What the page does with it comes through the hooks (all optional):
//   change()                      the phase or the line changed: render
//   note(text)                    a line for the listener ("" clears it)
//   error(text, {force})          a seat error ("" clears it); force: replaces other errors
//   admitted({playlist, restart}) a seat: start (or keep) the player; restart: it must start again
//   waiting()                     back in line: the player stops
//   ended()                       the join answered that the Space has ended
//   refused(message)              a fresh join was refused: the player stops
//   notFound()                    404
//   reply(headers)                every answer (the page reads the server's clock from it)

import { Backoff, notSooner, request, retryAfterS } from "./api.js";

export const RETRY_MS = [1000, 2000, 4000, 8000, 15000]; // back-off for failures without a wait
export const JITTER = 0.1; // waits are the server's figure plus 10 % ± 10 %: spread out, never sooner
export const DEFAULT_RETRY_S = 2; // when a waiting answer names no wait
export const TAP_GRACE_MS = 3 * 60 * 1000; // admitted, never tapped "Tap to listen": the seat is kept this long

const PHASES = new Set(["joining", "waiting", "playing", "stopped", "ended", "error"]);

// A seat's token as src/amphi/control/tokens.py writes it (TOKEN): <role><seat>.<expires>.<mac>,
// role l or h, expires in Unix seconds. Only read here (the MAC is the server's business).
const TOKEN_RE = /^([lh][A-Za-z0-9_-]{8,32})\.([0-9]{1,12})\.[A-Za-z0-9_-]{22}$/;
const MEDIA_TOKEN_RE = /\/media\/[^/?#]+\/t\/([^/?#]+)\//;

// {seat: role and seat, expires: Unix s} of a well-formed token, else null.
export function parseToken(text) {
  const m = typeof text === "string" ? TOKEN_RE.exec(text) : null;
  return m ? { seat: m[1], expires: Number(m[2]) } : null;
}

// The token in a media URL's /t/<token>/ segment, decoded; null when there is none.
export function mediaToken(url) {
  const m = typeof url === "string" ? MEDIA_TOKEN_RE.exec(url) : null;
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch (_) {
    return null; // a broken %-escape
  }
}

// The line document (GET /api/spaces/<id>/line, src/amphi/web/answers.py line_answer) read as
// src/amphi/control/admission.py's Line reads it. A place numbered `place` is at this
// position, 1 at the head; null once its turn has come.
export function linePosition(doc, place) {
  if (place < doc.called) return null;
  let gone = 0;
  for (const g of doc.gaps || []) if (g < place) gone += 1;
  return place - doc.called + 1 - gone;
}

// Seconds until `position` is seated (as Line.eta): null while the line does not move.
export function lineEta(doc, position) {
  const round1 = (x) => Math.floor(x * 10 + 0.5) / 10;
  if (position <= doc.free) return round1(doc.wait_s + position / doc.admit_rate_per_s);
  return doc.line_rate_per_s > 0 ? round1(position / doc.line_rate_per_s) : null;
}

// Seconds until the document is worth reading again (as poll_after, stretched by the node's
// degradation ladder): soon at the front, at most poll.max_s further back.
export function lineRetry(doc, position, estimate) {
  const p = doc.poll || {};
  let base = position * (p.per_place_s ?? 0.2);
  if (estimate !== null && estimate !== undefined) base = Math.min(base, estimate / 3);
  return Math.min(p.max_s ?? 10, Math.max(p.min_s ?? 1, base)) * (p.stretch ?? 1);
}

export class Admission {
  // url: the Space's API base (/api/spaces/<id>); later(fn, ms) -> cancel(): the one timer;
  // solve(challenge) -> Promise<{solution, hashes, ms}>; beacon(url, json) -> bool.
  constructor(url, {
    fetch = null, now = () => Date.now(), later, random = Math.random, solve = null, beacon = null,
    log = () => {}, hooks = {},
  }) {
    this.url = url;
    this.deps = { fetch, now, later, random, solve, beacon, log };
    this.hooks = hooks;
    this.seat = {
      phase: "joining",
      ticket: null, // while waiting
      position: null,
      place: null, // our place's number in the Space's line (null in the pre-start pool)
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
      blocked: false, // admitted, but the browser wants a tap before it plays sound
      polls: 0, // ticket polls sent
      lineReads: 0, // line documents read
      renewals: 0, // token renewals answered "admitted" (the API fallback)
      playlistRenewals: 0, // newer tokens the live playlist handed us (adopt)
      rejoins: 0, // fresh joins after a ticket or token was refused
      challenges: [], // proof-of-work challenges solved: {bits, hashes, ms} (docs/defense.md)
      endedInLine: false,
      endedWith: null, // {replay, download} from the answer that said the Space has ended
    };
    this.cancel = null; // the one pending request: a poll, a renewal or a retry
    this.generation = 0; // bumped to drop the answers to earlier requests
    this.trouble = new Backoff(RETRY_MS); // failed requests in a row (network, 5xx without a wait)
    this.fresh = new Backoff([0, ...RETRY_MS]); // fresh joins since media last loaded: repeated ones back off
    this.restart = false; // media refused the token: the player starts again once re-admitted
    this.life = { ttl: 60, after: 30 }; // the last join answer's token lifetime and renew_after_s
    this.blockedAt = 0;
    this.closed = false;
  }

  get phase() {
    return this.seat.phase;
  }

  hook(name, ...args) {
    const fn = this.hooks[name];
    return fn ? fn(...args) : undefined;
  }

  setPhase(phase) {
    if (!PHASES.has(phase)) throw new Error(`no admission phase ${phase}`);
    if (this.seat.phase === phase) return;
    this.deps.log(`amphi: ${this.seat.phase} -> ${phase}`);
    this.seat.phase = phase;
    this.hook("change");
  }

  // -- the one timer ---------------------------------------------------------------------

  later(action, ms) {
    this.cancelLater();
    let cancelled = false;
    const cancel = this.deps.later(() => {
      if (cancelled) return;
      this.cancel = null;
      action();
    }, Math.max(0, ms));
    this.cancel = () => {
      cancelled = true;
      if (typeof cancel === "function") cancel();
    };
  }

  cancelLater() {
    if (this.cancel) this.cancel();
    this.cancel = null;
  }

  // Forgets any pending request and its answer.
  drop() {
    this.generation += 1;
    this.cancelLater();
  }

  // The page is gone (not found, removed): nothing more is sent or answered.
  close() {
    this.closed = true;
    this.drop();
  }

  // -- what the page asks for ------------------------------------------------------------

  // The page's first join (and a join after coming back from the back/forward cache, or
  // after the stage).
  enter() {
    this.drop();
    this.hook("note", "");
    this.setPhase("joining");
    return this.send({});
  }

  // Play after Stop or a refusal: the token if it is still good, else a fresh join.
  rejoin() {
    const s = this.seat;
    const fresh = s.token && this.deps.now() < s.expiresAt - 1000;
    this.drop();
    this.hook("note", "");
    this.setPhase("joining");
    return this.send(fresh ? { token: s.token } : {});
  }

  // The listener stopped: renewals stop, the seat lapses with the token unless Play comes first.
  stopped(note = "Stopped.") {
    if (this.seat.phase !== "playing" && this.seat.phase !== "joining") return false;
    this.drop();
    this.hook("note", note);
    this.setPhase("stopped");
    return true;
  }

  // Off the program (on stage): the seat goes to the next in line.
  pause(note) {
    this.leave(false);
    this.drop();
    this.seat.ticket = null;
    this.seat.token = null;
    this.seat.blocked = false;
    this.hook("note", note);
    this.setPhase("stopped");
  }

  // Media answered 401 (the token ran out: a renewal came too late) or 403 (not a token for
  // this Space): renew if we can (a lapsed seat is kept for a short grace), else join afresh;
  // either way the player starts again once admitted. Returns false when already on it.
  mediaRefused(code) {
    if (this.restart) return false;
    this.restart = true;
    this.drop();
    if (code === 401 && this.seat.token) this.send({ token: this.seat.token });
    else this.startOver();
    return true;
  }

  // The live player starts again from a fresh admission answer: with our token if we have one.
  restartPlayer() {
    this.restart = true;
    this.drop();
    if (this.seat.token) this.send({ token: this.seat.token });
    else this.startOver();
  }

  // Media loads: repeated fresh joins no longer back off.
  mediaFlowing() {
    this.fresh.reset();
  }

  // Admitted, but the browser wants a tap first: the seat is kept for TAP_GRACE_MS.
  setBlocked(blocked) {
    this.seat.blocked = Boolean(blocked);
    if (blocked) this.blockedAt = this.deps.now();
  }

  // An edge that does not answer at all (no HTTP status): the next attempt goes to another.
  otherEdge() {
    const s = this.seat;
    const others = s.edges.filter((e) => e !== s.edge);
    if (!s.edge || !others.length) return;
    s.edge = others[Math.floor(this.deps.random() * others.length)];
    s.edgeSwitches += 1;
  }

  // The newest token and the current edge in a media URL: playlists use relative URIs, so
  // every request would otherwise carry the token and the edge its playlist was loaded with.
  mediaUrl(url) {
    const s = this.seat;
    let u = url;
    const from = s.edge && s.edges.find((e) => u.startsWith(`${e}/`));
    if (from && from !== s.edge) u = s.edge + u.slice(from.length);
    if (!s.token) return u;
    return u.replace(/(\/media\/[^/?#]+\/t\/)[^/?#]+\//, (_, head) => `${head}${encodeURIComponent(s.token)}/`);
  }

  // A newer token for our seat that the media path handed us (the live playlist's 307). Taken
  // while playing, if well formed, for the same seat (role and seat) and expiring later; the
  // fallback API renewal then moves with the new token's life. Not while a refused token is
  // being renewed (the player restarts from that answer). Never a request. Returns whether it
  // was taken.
  adopt(token) {
    const s = this.seat;
    if (s.phase !== "playing" || !s.token || this.restart || this.closed) return false;
    const next = parseToken(token);
    const current = parseToken(s.token);
    if (!next || !current || next.seat !== current.seat || next.expires <= current.expires) return false;
    // expiresAt is on the local clock: moved by what the expiry moved, so no server clock is needed
    s.expiresAt += (next.expires - current.expires) * 1000;
    s.token = token;
    s.playlistRenewals += 1;
    // the new token was issued a lifetime before it expires (the server gives each the same)
    this.scheduleFallback(s.expiresAt - this.life.ttl * 1000);
    return true;
  }

  // -- the protocol ----------------------------------------------------------------------

  // One join request: {} to join, {ticket} to poll for our place, {token} to renew the seat.
  async send(body) {
    this.cancelLater();
    const generation = this.generation;
    if (body.ticket) this.seat.polls += 1;
    let reply;
    try {
      reply = await request(`${this.url}/join`, {
        method: "POST",
        cache: "no-store",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      }, { fetch: this.deps.fetch });
    } catch (err) {
      if (generation === this.generation && !this.closed) this.troubled(body, `Cannot reach the server (${err.message})`);
      return;
    }
    this.hook("reply", reply.headers);
    if (generation !== this.generation || this.closed) return;
    const data = reply.data && typeof reply.data === "object" ? reply.data : null;
    const status = reply.status;
    const wait = retryAfterS(reply.headers, data, this.deps.now());
    if (data && (status === 200 || status === 202)) {
      this.trouble.reset();
      this.hook("error", "");
      if (data.status === "admitted") return this.admitted(data, body);
      if (data.status === "waiting") return this.waitInLine(data, wait);
      if (data.status === "ended") {
        this.end(data);
        return this.hook("ended");
      }
    }
    if (status === 404) return this.hook("notFound");
    if (status === 429 && data && data.error === "challenge_required" && data.challenge) {
      return this.solveThenSend(body, data.challenge, generation);
    }
    if ((status === 429 || status === 503) && wait !== null) {
      // too early (429) or too busy (503): the server says when; it gets a little more
      if (status === 503 && !body.ticket && !body.token) {
        this.hook("note", "So many people are joining that the waiting room is full; "
          + `trying again in about ${Math.ceil(wait)} s…`);
      }
      return this.later(() => this.send(body), this.jittered(wait));
    }
    if ((status === 400 || status === 401 || status === 403) && (body.ticket || body.token)) {
      return this.startOver(); // a garbled ticket, or a token too late or not ours: join afresh
    }
    const message = (data && data.message) || `${status} ${reply.statusText}`;
    if (status >= 500 || status === 429) return this.troubled(body, message);
    return this.refused(message);
  }

  jittered(seconds) {
    return notSooner(seconds, { jitter: JITTER, random: this.deps.random });
  }

  // The node asks for a proof of work (it sees an attack): solve it off the page's thread,
  // then the same request again with the solution. About a second at the default difficulty.
  async solveThenSend(body, challenge, generation) {
    this.hook("note", "Lots of traffic right now: checking this browser before joining…");
    let solved;
    try {
      if (!this.deps.solve) throw new Error("no proof-of-work solver");
      solved = await this.deps.solve({ challenge: challenge.challenge, bits: challenge.bits });
    } catch (err) {
      if (generation === this.generation && !this.closed) {
        this.troubled(body, `Could not check this browser (${err && err.message ? err.message : err})`);
      }
      return;
    }
    if (generation !== this.generation || this.closed) return;
    const { solution, hashes, ms } = solved;
    this.seat.challenges.push({ bits: challenge.bits, hashes, ms: Math.round(ms) });
    this.hook("note", "");
    const { challenge: _old, solution: _oldSolution, ...rest } = body;
    await this.send({ ...rest, challenge: challenge.challenge, solution });
  }

  troubled(body, text) {
    const delay = this.trouble.next();
    this.hook("error", `${text}; trying again in ${Math.round(delay / 1000)} s…`, { force: false });
    this.later(() => this.send(body), delay);
  }

  // A fresh join was refused (e.g. 403): say so; Play tries again.
  refused(message) {
    this.drop();
    this.restart = false;
    this.hook("refused", message);
    this.hook("error", `Could not join: ${message}`, { force: true });
    this.setPhase("error");
  }

  // Our ticket or token is no good (any more): join afresh, which may mean waiting in line.
  startOver() {
    this.seat.ticket = null;
    this.seat.token = null;
    this.seat.rejoins += 1;
    this.later(() => this.send({}), this.fresh.next());
  }

  admitted(data, body) {
    const s = this.seat;
    const fromLine = s.phase === "waiting";
    if (body.token) s.renewals += 1;
    s.ticket = null;
    s.position = null;
    s.token = data.token;
    s.playlist = data.playlist;
    s.edges = Array.isArray(data.edges) ? data.edges : [];
    if (!s.edges.includes(s.edge)) {
      s.edge = s.edges.find((e) => String(data.playlist).startsWith(`${e}/`)) || null;
    }
    s.expiresAt = this.deps.now() + Number(data.expires_in_s) * 1000;
    this.scheduleRenewal(data);
    this.hook("note", fromLine ? "It’s your turn." : "");
    this.setPhase("playing");
    const restart = this.restart;
    this.restart = false;
    this.hook("admitted", { playlist: data.playlist, restart, renewal: Boolean(body.token) });
  }

  scheduleRenewal(data) {
    const ttl = Number(data.expires_in_s) > 0 ? Number(data.expires_in_s) : 60;
    const after = Number(data.renew_after_s) > 0 ? Number(data.renew_after_s) : ttl / 2;
    this.life = { ttl, after };
    this.scheduleFallback(this.deps.now());
  }

  // The API renewal of a token issued at `issued` (local ms): renew_after_s into its life plus
  // a little jitter, so that listeners admitted together do not all renew together, and before
  // 80 % of it. A playlist that renews the token first moves it (adopt).
  scheduleFallback(issued) {
    const { ttl, after } = this.life;
    const delay = Math.min(after * (1 + this.deps.random() * JITTER), ttl * 0.8) * 1000;
    this.later(() => this.renew(), issued + delay - this.deps.now());
  }

  renew() {
    const s = this.seat;
    if (s.phase !== "playing" || !s.token) return undefined;
    if (s.blocked && this.deps.now() - this.blockedAt > TAP_GRACE_MS) return this.releaseSeat();
    return this.send({ token: s.token });
  }

  // Admitted long ago and never tapped: the seat goes to someone who is there.
  releaseSeat() {
    this.leave(false);
    this.drop();
    this.seat.blocked = false;
    this.seat.token = null;
    this.hook("note", "Playback never started, so your seat went to the next in line. Press Play to join again.");
    this.setPhase("stopped");
  }

  waitInLine(data, wait) {
    const s = this.seat;
    this.fresh.reset();
    s.ticket = data.ticket;
    s.position = data.position;
    s.place = Number.isInteger(data.place) ? data.place : null;
    s.waiting = data.waiting;
    s.estimate = data.estimated_wait_s ?? null;
    s.order = data.order || "fifo";
    s.startsAt = data.starts_at || null;
    s.requeued = Boolean(data.requeued);
    s.token = null;
    s.blocked = false;
    this.restart = false;
    this.hook("note", "");
    this.hook("waiting"); // back in line: a token that lapsed, or Play after Stop
    this.setPhase("waiting");
    this.hook("change");
    this.later(() => this.watchLine(), this.jittered(wait ?? DEFAULT_RETRY_S));
  }

  // Reads the line document; sends the ticket only once our turn has come (or the Space has
  // started, for a place in the pool, or ended). A document that cannot be read: the ticket.
  async watchLine() {
    const s = this.seat;
    if (s.phase !== "waiting" || !s.ticket) return;
    const generation = this.generation;
    let reply;
    try {
      reply = await request(`${this.url}/line`, { method: "GET" }, { fetch: this.deps.fetch });
    } catch (_) {
      reply = null;
    }
    if (generation !== this.generation || this.closed) return;
    const doc = reply && reply.status === 200 && reply.data && typeof reply.data === "object" ? reply.data : null;
    if (!doc || !Number.isInteger(doc.called)) return this.send({ ticket: s.ticket });
    s.lineReads += 1;
    if (doc.state === "ended") return this.send({ ticket: s.ticket });
    if (s.place === null) {
      if (doc.state !== "scheduled") return this.send({ ticket: s.ticket }); // drawn: our number
      return this.later(() => this.watchLine(), this.jittered(lineRetry(doc, s.position || 1, null)));
    }
    const position = linePosition(doc, s.place);
    if (position === null) return this.send({ ticket: s.ticket }); // our turn
    const estimate = lineEta(doc, position);
    s.position = position;
    s.waiting = doc.waiting;
    s.estimate = estimate;
    this.hook("change");
    this.later(() => this.watchLine(), this.jittered(lineRetry(doc, position, estimate)));
  }

  // The Space has ended (a join answer or the status): no seat, no line, only the replay.
  // The caller renders. Returns false when the seat was already over.
  end(info) {
    const s = this.seat;
    if (s.phase === "ended" || s.phase === "error") return false;
    this.drop();
    s.endedInLine = s.phase === "waiting";
    s.endedWith = { replay: (info && info.replay) || null, download: (info && info.download) || null };
    s.ticket = null;
    s.token = null;
    s.position = null;
    s.blocked = false;
    this.restart = false;
    s.phase = "ended";
    this.deps.log("amphi: the Space has ended");
    return true;
  }

  // Gives the seat or the place up at once, for the next in line. beacon: the page is going
  // away (sendBeacon outlives it).
  leave(beacon) {
    const s = this.seat;
    const body = s.ticket ? { ticket: s.ticket } : s.token ? { token: s.token } : null;
    if (!body) return null;
    const url = `${this.url}/leave`;
    const json = JSON.stringify(body);
    if (beacon && this.deps.beacon && this.deps.beacon(url, json)) return body;
    const send = this.deps.fetch || globalThis.fetch;
    Promise.resolve()
      .then(() => send(url, { method: "POST", headers: { "content-type": "application/json" }, body: json, keepalive: true }))
      .catch(() => { /* the seat lapses anyway */ });
    return body;
  }

  // Leaving the page: the seat or the place is given up, nothing more is pending.
  pagehide() {
    this.leave(true);
    this.drop();
    this.seat.ticket = null;
    this.seat.token = null;
  }
}
