// The shared API client and back-off, and the view's pure formatters: no browser.

import assert from "node:assert/strict";
import { test } from "node:test";

import { ApiError, Backoff, call, notSooner, plainError, retryAfterS } from "../../src/amphi/web/static/api.js";
import { lineText, ordinal, waitText } from "../../src/amphi/web/static/view.js";
import { FakeServer, json, randoms } from "./fakes.mjs";

test("call sends JSON with the bearer and returns the answer", async () => {
  const server = new FakeServer(json(200, { ok: 1 }));
  const data = await call("a b", "POST", "/stage/requests", { auth: "g1", body: { name: "Ann" }, fetch: server.fetch });
  assert.deepEqual(data, { ok: 1 });
  const [req] = server.requests;
  assert.equal(req.url, "/api/spaces/a%20b/stage/requests");
  assert.equal(req.init.headers.authorization, "Bearer g1");
  assert.equal(req.init.headers["content-type"], "application/json");
  assert.deepEqual(req.body, { name: "Ann" });
});

test("every POST carries a JSON object; SDP goes as application/sdp and comes back as text", async () => {
  const server = new FakeServer(json(200, {}), new Response("v=0 answer", { status: 201, headers: { "content-type": "application/sdp" } }));
  await call("s", "POST", "/start", { fetch: server.fetch });
  assert.equal(server.requests[0].init.body, "{}");
  const answer = await call("s", "POST", "/speak", { body: { sdp: "v=0 offer" }, fetch: server.fetch });
  assert.equal(server.requests[1].init.headers["content-type"], "application/sdp");
  assert.equal(server.requests[1].init.body, "v=0 offer");
  assert.equal(answer, "v=0 answer");
});

test("errors map to ApiError: the body's code and message, Retry-After, 0 for the network", async () => {
  const server = new FakeServer(
    json(429, { error: "rate_limited", message: "slow down" }, { "retry-after": "12" }),
    new Response("oops", { status: 502, statusText: "Bad Gateway" }),
    new TypeError("Failed to fetch"),
  );
  const e429 = await call("s", "GET", "", { fetch: server.fetch }).catch((e) => e);
  assert.ok(e429 instanceof ApiError);
  assert.equal(e429.status, 429);
  assert.equal(e429.code, "rate_limited");
  assert.equal(e429.message, "slow down");
  assert.equal(e429.retryAfterS, 12);
  assert.equal(plainError(e429), "Too many requests: slow down. Try again in 12 s.");
  const e502 = await call("s", "GET", "", { fetch: server.fetch }).catch((e) => e);
  assert.equal(e502.status, 502);
  assert.equal(e502.code, "http");
  assert.equal(plainError(e502), "The server had a problem: Bad Gateway.");
  const down = await call("s", "GET", "", { fetch: server.fetch }).catch((e) => e);
  assert.equal(down.status, 0);
  assert.equal(down.code, "network");
  assert.equal(plainError(down), "The server cannot be reached: Failed to fetch.");
  assert.equal(plainError(new Error("x")), "Something went wrong: x");
});

test("Backoff: the steps in turn, the last repeats, reset starts over, jitter within ± its share", () => {
  const plain = new Backoff([1000, 2000, 4000]);
  assert.deepEqual([plain.next(), plain.next(), plain.next(), plain.next()], [1000, 2000, 4000, 4000]);
  assert.equal(plain.attempt, 4);
  plain.reset();
  assert.equal(plain.next(), 1000);
  const jittered = new Backoff([1000], { jitter: 0.2, random: randoms(0, 1, 0.5) });
  assert.deepEqual([jittered.next(), jittered.next(), jittered.next()], [800, 1200, 1000]);
});

test("a wait the server named is never shortened", () => {
  assert.equal(notSooner(4, { random: () => 0 }), 4000);
  assert.equal(Math.round(notSooner(4, { random: () => 1 })), 4800);
  for (let i = 0; i < 100; i += 1) assert.ok(notSooner(2) >= 2000);
});

test("retryAfterS: the body's exact figure, else the header in seconds or as a date", () => {
  const h = (v) => new Headers(v === null ? {} : { "retry-after": v });
  assert.equal(retryAfterS(h("9"), { retry_after_s: 2.5 }), 2.5);
  assert.equal(retryAfterS(h("9"), null), 9);
  const now = Date.parse("2025-01-01T00:00:00Z");
  assert.equal(retryAfterS(h("Wed, 01 Jan 2025 00:00:30 GMT"), null, now), 30);
  assert.equal(retryAfterS(h(null), {}), null);
  assert.equal(retryAfterS(h("0"), null), null);
});

test("the waiting room's lines", () => {
  assert.deepEqual([1, 2, 3, 4, 11, 22].map(ordinal), ["1st", "2nd", "3rd", "4th", "11th", "22nd"]);
  assert.equal(waitText(null), "waiting for a seat to free up");
  assert.equal(waitText(3), "any moment now");
  assert.equal(waitText(42), "about 40 s");
  assert.equal(waitText(600), "about 10 min");
  assert.deepEqual(lineText({ position: 1, waiting: 1, estimate: null, order: "fifo" }),
    { place: "You’re 1st in line", detail: "1 person waiting · waiting for a seat to free up" });
  const draw = lineText({ position: 7, waiting: 30, order: "draw_at_start", startsAt: "x", requeued: true }, () => "20:00");
  assert.equal(draw.place, "You’re in line");
  assert.equal(draw.detail, "Your place had lapsed, so you’re back in line. "
    + "The order is drawn when the Space starts at 20:00: you will be 7th or earlier. 30 people waiting.");
});
