// The listener's admission client against a scripted server and a fake clock: no browser.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Admission, TAP_GRACE_MS, lineEta, linePosition, lineRetry, mediaToken, parseToken,
} from "../../src/amphi/web/static/admission.js";
import { FakeClock, FakeServer, json, randoms, settle } from "./fakes.mjs";

const URL = "/api/spaces/s1";

function seated(extra = {}) {
  return json(200, {
    status: "admitted", token: "tok1", playlist: "/media/s1/t/tok1/live.m3u8",
    expires_in_s: 60, renew_after_s: 30, ...extra,
  });
}

function waiting(position, retryAfterS, extra = {}) {
  return json(202, {
    status: "waiting", ticket: `tk${position}`, position, waiting: position, estimated_wait_s: 40,
    retry_after_s: retryAfterS, order: "fifo", ...extra,
  });
}

// A line document (src/amphi/web/answers.py line_answer) with nothing free, moving `rate` a second.
function doc(called, extra = {}) {
  return json(200, {
    space: "s1", state: "live", called, next: called + 50, gaps: [], gaps_complete: true, waiting: 50,
    pooled: 0, free: 0, wait_s: 0, admit_rate_per_s: 10, line_rate_per_s: 0.5,
    poll: { min_s: 1, max_s: 10, per_place_s: 0.2, jitter: 0.25, stretch: 1 }, ...extra,
  }, { "cache-control": "public, max-age=1" });
}

// An Admission wired to fakes; `events` records every hook call in order.
function make(server, { random = randoms(0), solve = null, beacon = null } = {}) {
  const clock = new FakeClock();
  const events = [];
  const record = (name) => (...args) => events.push([name, ...args]);
  const hooks = Object.fromEntries(
    ["change", "note", "error", "admitted", "waiting", "ended", "refused", "notFound"].map((n) => [n, record(n)]));
  const seat = new Admission(URL, { fetch: server.fetch, now: clock.now, later: clock.later, random, solve, beacon, hooks });
  const of = (name) => events.filter((e) => e[0] === name).map((e) => e.slice(1));
  return { seat, clock, events, of };
}

test("a seat at once: playing, the player starts, the token is renewed before it runs out", async () => {
  const server = new FakeServer(seated(), seated({ token: "tok2" }));
  const { seat, clock, of } = make(server, { random: randoms(0.5) });
  await seat.enter();
  assert.equal(seat.phase, "playing");
  assert.equal(seat.seat.token, "tok1");
  assert.deepEqual(of("admitted"), [[{ playlist: "/media/s1/t/tok1/live.m3u8", restart: false, renewal: false }]]);
  assert.deepEqual(server.bodies, [{}]);
  assert.equal(server.requests[0].url, `${URL}/join`);
  assert.equal(server.requests[0].method, "POST");
  // renew_after_s plus up to 10 %: 30 s * (1 + 0.5 * 0.1)
  assert.equal(clock.pending(), 31_500);
  await clock.next();
  assert.deepEqual(server.bodies[1], { token: "tok1" });
  assert.equal(seat.seat.token, "tok2");
  assert.equal(seat.seat.renewals, 1);
  assert.equal(of("admitted")[1][0].renewal, true);
});

test("the renewal comes before 80 % of the token's life, whatever renew_after_s says", async () => {
  const server = new FakeServer(seated({ expires_in_s: 10, renew_after_s: 30 }));
  const { seat, clock } = make(server, { random: randoms(0.99) });
  await seat.enter();
  assert.equal(clock.pending(), 8000);
});

test("the line document: positions worked out from it, the ticket sent only once our turn has come", async () => {
  const server = new FakeServer(waiting(30, 4, { place: 129 }), doc(100, { gaps: [105, 120, 140] }),
    doc(110, { gaps: [120, 140] }), doc(130), seated());
  const { seat, clock, of } = make(server, { random: randoms(0) });
  await seat.enter();
  assert.equal(seat.seat.place, 129);
  assert.equal(clock.pending(), 4000); // the join answer's wait, never sooner
  await clock.next();
  assert.equal(server.requests[1].url, `${URL}/line`);
  assert.equal(server.requests[1].method, "GET");
  // 129 - 100 + 1, less the two places ahead that left (105, 120; 140 is behind)
  assert.equal(seat.seat.position, 28);
  assert.equal(seat.seat.estimate, 56); // 28 places at 0.5 a second
  assert.equal(seat.seat.lineReads, 1);
  assert.equal(seat.seat.polls, 0, "no request to the API while in line");
  assert.equal(clock.pending(), 5600); // 28 * 0.2 s: sooner than 10 s, later than 1 s
  await clock.next();
  assert.equal(seat.seat.position, 19);
  await clock.next();
  assert.deepEqual(server.bodies.filter(Boolean), [{}, { ticket: "tk30" }], "the ticket once, when called");
  assert.equal(seat.phase, "playing");
  assert.ok(of("note").some(([text]) => text === "It’s your turn."), "the listener is told it is their turn");
});

test("linePosition, lineEta and lineRetry read the document as the server's Line does", () => {
  const d = { called: 10, gaps: [12, 15], free: 3, wait_s: 0.5, admit_rate_per_s: 2, line_rate_per_s: 0,
    poll: { min_s: 1, max_s: 10, per_place_s: 0.2, stretch: 2 } };
  assert.equal(linePosition(d, 9), null);
  assert.equal(linePosition(d, 10), 1);
  assert.equal(linePosition(d, 13), 3); // 10, 11, (12 left), 13
  assert.equal(linePosition(d, 20), 9);
  assert.equal(lineEta(d, 3), 2); // 0.5 + 3 / 2
  assert.equal(lineEta(d, 4), null); // more than the free seats, and the line has not moved
  assert.equal(lineRetry(d, 100, null), 20); // 10 s at most, stretched twice by the ladder
  assert.equal(lineRetry(d, 1, 0.3), 2); // 1 s at least
});

test("a line document that cannot be read: the ticket is polled as the answer advised", async () => {
  const server = new FakeServer(waiting(3, 4, { place: 7 }), json(404, { error: "not_found" }), waiting(2, 6, { place: 7 }),
    new Error("offline"), seated());
  const { seat, clock } = make(server, { random: randoms(0) });
  await seat.enter();
  await clock.next();
  assert.deepEqual(server.bodies[2], { ticket: "tk3" });
  assert.equal(seat.seat.position, 2);
  await clock.next();
  assert.deepEqual(server.bodies[4], { ticket: "tk2" });
  assert.equal(seat.phase, "playing");
});

test("the waiting line by polls: position updates, polls never sooner than retry_after_s, then the seat", async () => {
  const unreadable = () => json(503, { error: "unavailable" });
  const server = new FakeServer(waiting(3, 4), unreadable(), waiting(2, 6), unreadable(), seated());
  const { seat, clock, of } = make(server, { random: randoms(0, 1, 0.5, 0.5) });
  await seat.enter();
  assert.equal(seat.phase, "waiting");
  assert.equal(seat.seat.position, 3);
  assert.equal(seat.seat.waiting, 3);
  assert.equal(seat.seat.estimate, 40);
  assert.equal(seat.seat.order, "fifo");
  assert.equal(seat.seat.ticket, "tk3");
  assert.equal(of("waiting").length, 1);
  // the server's wait plus 10 % ± 10 %: with random() = 0, exactly the wait, never less
  assert.equal(clock.pending(), 4000);
  await clock.next();
  assert.deepEqual(server.bodies[2], { ticket: "tk3" });
  assert.equal(seat.seat.polls, 1);
  assert.equal(seat.seat.position, 2);
  assert.equal(seat.seat.ticket, "tk2");
  assert.equal(Math.round(clock.pending()), 7200); // random() = 1: 6 s * 1.2
  await clock.next();
  assert.deepEqual(server.bodies[4], { ticket: "tk2" });
  assert.equal(seat.phase, "playing");
  assert.equal(seat.seat.ticket, null);
  assert.equal(seat.seat.position, null);
  assert.ok(of("note").some(([text]) => text === "It’s your turn."), "the listener is told it is their turn");
});

test("a waiting answer without a wait in its body follows the Retry-After header", async () => {
  const server = new FakeServer(json(202, { status: "waiting", ticket: "t", position: 1, waiting: 1 }, { "retry-after": "7" }));
  const { seat, clock } = make(server);
  await seat.enter();
  assert.equal(seat.phase, "waiting");
  assert.equal(clock.pending(), 7000);
});

test("429 and 503 with a wait: the same request again after it, with a note on a full waiting room", async () => {
  const server = new FakeServer(
    json(503, { error: "busy", message: "full", retry_after_s: 3 }),
    json(429, { error: "too_early", message: "slow down" }, { "retry-after": "2" }),
    seated(),
  );
  const { seat, clock, of } = make(server);
  await seat.enter();
  assert.equal(seat.phase, "joining");
  assert.match(of("note").at(-1)[0], /waiting room is full; trying again in about 3 s/);
  assert.equal(clock.pending(), 3000);
  await clock.next();
  assert.equal(clock.pending(), 2000);
  await clock.next();
  assert.deepEqual(server.bodies, [{}, {}, {}]);
  assert.equal(seat.phase, "playing");
});

test("network errors and 5xx back off 1, 2, 4 s and say so; a success clears the error", async () => {
  const server = new FakeServer(
    new TypeError("Failed to fetch"),
    json(500, { error: "internal", message: "boom" }),
    new TypeError("Failed to fetch"),
    seated(),
  );
  const { seat, clock, of } = make(server);
  await seat.enter();
  assert.equal(of("error").at(-1)[0], "Cannot reach the server (Failed to fetch); trying again in 1 s…");
  assert.equal(clock.pending(), 1000);
  await clock.next();
  assert.equal(of("error").at(-1)[0], "boom; trying again in 2 s…");
  assert.equal(clock.pending(), 2000);
  await clock.next();
  assert.equal(clock.pending(), 4000);
  await clock.next();
  assert.equal(seat.phase, "playing");
  assert.equal(of("error").at(-1)[0], "", "the seat's error is cleared");
  assert.equal(seat.trouble.attempt, 0);
});

test("a fresh join refused (403): phase error, the player stops, the error says why", async () => {
  const server = new FakeServer(json(403, { error: "forbidden", message: "not from here" }));
  const { seat, clock, of } = make(server);
  await seat.enter();
  assert.equal(seat.phase, "error");
  assert.deepEqual(of("refused"), [["not from here"]]);
  assert.deepEqual(of("error").at(-1), ["Could not join: not from here", { force: true }]);
  assert.equal(clock.pending(), null, "nothing more is sent");
});

test("a refused token joins afresh; repeated fresh joins back off until media flows", async () => {
  const server = new FakeServer(
    seated(),
    json(401, { error: "expired", message: "too late" }),
    seated({ token: "tok2" }),
    json(403, { error: "forbidden", message: "not yours" }),
  );
  const { seat, clock } = make(server);
  await seat.enter();
  await clock.next(); // the renewal: 401
  assert.equal(seat.seat.rejoins, 1);
  assert.equal(seat.seat.token, null);
  assert.equal(clock.pending(), 0, "the first fresh join goes at once");
  await clock.next();
  assert.deepEqual(server.bodies[2], {});
  assert.equal(seat.seat.token, "tok2");
  await clock.next(); // the renewal: 403
  assert.equal(seat.seat.rejoins, 2);
  assert.equal(clock.pending(), 1000, "the second one waits");
  seat.mediaFlowing();
  assert.equal(seat.fresh.attempt, 0);
});

test("media refusing the token: renew (401) or join afresh (403), then the player restarts", async () => {
  const server = new FakeServer(seated(), seated({ token: "tok2" }), seated({ token: "tok3" }));
  const { seat, clock, of } = make(server);
  await seat.enter();
  assert.equal(seat.mediaRefused(401), true);
  assert.equal(seat.mediaRefused(401), false, "once is enough while it is on it");
  await settle();
  assert.deepEqual(server.bodies[1], { token: "tok1" });
  assert.deepEqual(of("admitted").at(-1), [{ playlist: "/media/s1/t/tok1/live.m3u8", restart: true, renewal: true }]);
  seat.mediaRefused(403);
  assert.equal(seat.seat.rejoins, 1);
  await clock.next();
  assert.deepEqual(server.bodies[2], {});
  assert.equal(seat.seat.token, "tok3");
  assert.equal(of("admitted").at(-1)[0].restart, true);
});

test("a proof-of-work challenge is solved, then the join goes again with the solution", async () => {
  const challenge = { challenge: "abc", bits: 12 };
  const server = new FakeServer(json(429, { error: "challenge_required", message: "prove it", challenge }), seated());
  const solved = [];
  const solve = async (c) => {
    solved.push(c);
    return { solution: "4242", hashes: 4243, ms: 812.4 };
  };
  const { seat, of } = make(server, { solve });
  await seat.enter();
  await settle();
  assert.deepEqual(solved, [{ challenge: "abc", bits: 12 }]);
  assert.deepEqual(server.bodies[1], { challenge: "abc", solution: "4242" });
  assert.deepEqual(seat.seat.challenges, [{ bits: 12, hashes: 4243, ms: 812 }]);
  assert.equal(seat.phase, "playing");
  assert.ok(of("note").some(([t]) => t.startsWith("Lots of traffic")));
});

test("a solver that fails backs off like a network error", async () => {
  const challenge = { challenge: "abc", bits: 12 };
  const server = new FakeServer(json(429, { error: "challenge_required", message: "prove it", challenge }));
  const { seat, clock, of } = make(server, { solve: async () => { throw new Error("no workers"); } });
  await seat.enter();
  await settle();
  assert.equal(of("error").at(-1)[0], "Could not check this browser (no workers); trying again in 1 s…");
  assert.equal(clock.pending(), 1000);
});

test("the Space ended while in line: phase ended, the replay's links kept, no more polls", async () => {
  const server = new FakeServer(waiting(2, 5, { place: 4 }), doc(0, { state: "ended" }),
    json(200, { status: "ended", replay: "/media/s1/vod.m3u8", download: "/media/s1/download.m4a" }));
  const { seat, clock, of } = make(server);
  await seat.enter();
  await clock.next();
  assert.equal(seat.phase, "ended");
  assert.equal(seat.seat.endedInLine, true);
  assert.deepEqual(seat.seat.endedWith, { replay: "/media/s1/vod.m3u8", download: "/media/s1/download.m4a" });
  assert.equal(seat.seat.ticket, null);
  assert.equal(of("ended").length, 1);
  assert.equal(clock.pending(), null);
  assert.equal(seat.end({}), false, "ending twice changes nothing");
});

test("404: the Space does not exist", async () => {
  const server = new FakeServer(json(404, { error: "not_found", message: "no such Space" }));
  const { seat, clock, of } = make(server);
  await seat.enter();
  assert.equal(of("notFound").length, 1);
  assert.equal(clock.pending(), null);
});

test("an answer to a request that was dropped meanwhile is ignored", async () => {
  let answer;
  const server = new FakeServer(() => new Promise((resolve) => { answer = resolve; }));
  const { seat, clock } = make(server);
  const sent = seat.enter();
  await settle();
  seat.drop(); // e.g. the listener went on stage
  answer(seated());
  await sent;
  assert.equal(seat.phase, "joining");
  assert.equal(seat.seat.token, null);
  assert.equal(clock.pending(), null);
});

test("leaving gives the place up: by beacon when the page goes, else by fetch", async () => {
  const beacons = [];
  const server = new FakeServer(waiting(1, 5), new Response(null, { status: 204 }));
  const { seat } = make(server, { beacon: (url, body) => { beacons.push([url, JSON.parse(body)]); return true; } });
  await seat.enter();
  seat.pagehide();
  assert.deepEqual(beacons, [[`${URL}/leave`, { ticket: "tk1" }]]);
  assert.equal(seat.seat.ticket, null);
  assert.equal(seat.leave(false), null, "nothing left to give up");
  seat.seat.token = "tok9";
  seat.leave(false);
  await settle();
  assert.equal(server.requests.at(-1).url, `${URL}/leave`);
  assert.deepEqual(server.requests.at(-1).body, { token: "tok9" });
  assert.equal(server.requests.at(-1).init.keepalive, true);
});

test("admitted but never tapped: after the grace the renewal gives the seat up", async () => {
  const server = new FakeServer(seated({ expires_in_s: 400, renew_after_s: 200 }), new Response(null, { status: 204 }));
  const { seat, clock, of } = make(server);
  await seat.enter();
  seat.setBlocked(true);
  clock.t += TAP_GRACE_MS; // the renewal is due after the grace
  await clock.next();
  assert.equal(seat.phase, "stopped");
  assert.equal(seat.seat.token, null);
  assert.deepEqual(server.requests.at(-1).body, { token: "tok1" });
  assert.equal(server.requests.at(-1).url, `${URL}/leave`);
  assert.match(of("note").at(-1)[0], /your seat went to the next in line/);
});

test("Stop, then Play: the token is used again while it is fresh", async () => {
  const server = new FakeServer(seated(), seated());
  const { seat, clock } = make(server);
  await seat.enter();
  assert.equal(seat.stopped(), true);
  assert.equal(seat.phase, "stopped");
  assert.equal(clock.pending(), null, "no renewals while stopped");
  await seat.rejoin();
  assert.deepEqual(server.bodies[1], { token: "tok1" });
  assert.equal(seat.phase, "playing");
});

test("media URLs carry the newest token and the current edge", async () => {
  const edges = ["http://e1:8080/o/n1", "http://e2:8080/o/n1"];
  const server = new FakeServer(seated({ edges, playlist: `${edges[0]}/media/s1/t/tok1/live.m3u8` }));
  const { seat } = make(server, { random: randoms(0) });
  await seat.enter();
  assert.equal(seat.seat.edge, edges[0]);
  seat.seat.token = "tok 2";
  assert.equal(seat.mediaUrl(`${edges[0]}/media/s1/t/tok1/seg3.m4s?x=1`), `${edges[0]}/media/s1/t/tok%202/seg3.m4s?x=1`);
  seat.otherEdge();
  assert.equal(seat.seat.edge, edges[1]);
  assert.equal(seat.seat.edgeSwitches, 1);
  assert.equal(seat.mediaUrl(`${edges[0]}/media/s1/t/tok1/seg4.m4s`), `${edges[1]}/media/s1/t/tok%202/seg4.m4s`);
});

// Well-formed tokens (src/amphi/control/tokens.py, TOKEN): the server's clock is far from the
// fake local one, on purpose: adopt() needs none.
const MAC = "Mac_-0123456789abcdefg"; // 22 characters of base64url
const T0 = 1_700_000_000; // Unix s: when the first token was issued, on the server's clock
const token = (expires, seat = "seatAAAA", role = "l") => `${role}${seat}.${expires}.${MAC}`;

// Admitted with a 60 s token whose API renewal is the fallback at 75 % of its life.
async function playing(server = new FakeServer(), options = {}) {
  server.answers.unshift(seated({ token: token(T0 + 60), playlist: `/media/s1/t/${token(T0 + 60)}/live.m3u8`, renew_after_s: 45 }));
  const made = make(server, { random: randoms(0.5), ...options });
  await made.seat.enter();
  return made;
}

test("tokens and media URLs are read as the server writes them", () => {
  assert.deepEqual(parseToken(token(T0)), { seat: "lseatAAAA", expires: T0 });
  assert.deepEqual(parseToken(token(T0, "seatBBBB", "h")), { seat: "hseatBBBB", expires: T0 });
  for (const bad of ["tok1", "", null, 42, `x${token(T0).slice(1)}`, `${token(T0)}x`, "lshort.1.".concat(MAC)]) {
    assert.equal(parseToken(bad), null, String(bad));
  }
  assert.equal(mediaToken(`http://e1:8080/o/n1/media/s1/t/${token(T0)}/live.m3u8?_HLS_msn=4`), token(T0));
  assert.equal(mediaToken("/media/s1/t/tok%202/live.m3u8"), "tok 2");
  assert.equal(mediaToken("/media/s1/t/tok%E0%A4%A/live.m3u8"), null, "a broken escape");
  assert.equal(mediaToken("/media/s1/vod.m3u8"), null);
  assert.equal(mediaToken(undefined), null);
});

test("a newer token from the playlist is taken: no request, the fallback renewal moves with it", async () => {
  const server = new FakeServer();
  const { seat, clock } = await playing(server);
  const start = clock.t;
  // the fallback: renew_after_s plus up to 10 %, 45 s * 1.05, before 80 % of 60 s
  assert.equal(clock.pending(), 47_250);
  assert.equal(seat.seat.expiresAt, start + 60_000);
  clock.t += 31_000; // the playlist renewed it past half its life
  assert.equal(seat.adopt(token(T0 + 91)), true);
  assert.equal(seat.seat.token, token(T0 + 91));
  assert.equal(seat.seat.expiresAt, start + 91_000, "moved by what the expiry moved, on the local clock");
  assert.equal(seat.seat.playlistRenewals, 1);
  assert.equal(seat.seat.renewals, 0);
  assert.equal(server.requests.length, 1, "no request: only the join");
  // the fallback is now 47.25 s into the new token's life (issued at start + 31 s), well after its half
  const due = clock.t + clock.pending();
  assert.equal(due, start + 31_000 + 47_250);
  assert.ok(due > seat.seat.expiresAt - 30_000);
  // later media URLs carry it
  assert.equal(seat.mediaUrl(`/media/s1/t/${token(T0 + 60)}/seg3.m4s`), `/media/s1/t/${token(T0 + 91)}/seg3.m4s`);
  // no playlist renewed it again: the fallback renews the adopted token through the API
  server.then(seated({ token: token(T0 + 138) }));
  await clock.next();
  assert.deepEqual(server.bodies[1], { token: token(T0 + 91) });
  assert.equal(seat.seat.renewals, 1);
  assert.equal(seat.seat.token, token(T0 + 138));
});

test("adopt ignores another seat's token, an older or the same one, and garbage", async () => {
  const { seat, clock } = await playing();
  const before = { ...seat.seat };
  const pending = clock.pending();
  for (const other of [
    token(T0 + 90, "seatBBBB"), // another seat
    token(T0 + 90, "seatAAAA", "h"), // the same seat id as a host: not ours
    token(T0 + 30), // older
    token(T0 + 60), // the same
    "tok2", "", null, undefined, 42, `${token(T0 + 90)}.x`, token(T0 + 90).slice(0, -1),
  ]) {
    assert.equal(seat.adopt(other), false, String(other));
  }
  assert.deepEqual(seat.seat, before);
  assert.equal(clock.pending(), pending, "the fallback renewal stays where it was");
});

test("adopt does nothing unless playing, nor while a refused token is being renewed", async () => {
  let answer;
  const server = new FakeServer(() => new Promise((resolve) => { answer = resolve; }));
  const { seat, clock } = await playing(server);
  seat.mediaRefused(401); // the renewal is on its way; the player restarts from its answer
  await settle();
  assert.equal(seat.adopt(token(T0 + 90)), false);
  answer(seated({ token: token(T0 + 100) }));
  await settle();
  assert.equal(seat.seat.token, token(T0 + 100));
  seat.stopped();
  assert.equal(seat.adopt(token(T0 + 130)), false, "stopped");
  assert.equal(seat.seat.token, token(T0 + 100));
  assert.equal(clock.pending(), null, "no renewal while stopped");
  const fresh = make(new FakeServer(waiting(2, 5)));
  await fresh.seat.enter();
  fresh.seat.seat.token = token(T0 + 60); // as if: a waiting seat holds none
  assert.equal(fresh.seat.adopt(token(T0 + 90)), false, "waiting");
  assert.equal(seat.seat.playlistRenewals + fresh.seat.seat.playlistRenewals, 0);
  assert.equal(server.requests.length, 2, "the join and the renewal after the refusal: nothing more");
});

test("an illegal phase is refused by name", () => {
  const { seat } = make(new FakeServer());
  assert.throws(() => seat.setPhase("dancing"), /no admission phase dancing/);
});
