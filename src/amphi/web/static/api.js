// The API client shared by every page (listener, host console, stage): one request helper
// that maps answers to data or an ApiError, errors in plain words, and one back-off with
// jitter. Pure: no DOM; `fetch` and `random` are injectable, so node's test runner runs it.
//
//   request(url, init, {fetch}) -> Reply {status, ok, statusText, headers, data}; throws
//     ApiError(0, "network") only when the server could not be reached: callers for whom
//     a 202 or a 429 is part of the protocol (the join) read the status themselves.
//   call(space, method, path, {auth, body, fetch}) -> the JSON answer (or text for SDP);
//     throws ApiError for anything but 2xx.
//   Backoff(steps_ms, {jitter, random}): next() -> the next delay (the last step repeats),
//     reset() after a success.

export class ApiError extends Error {
  constructor(status, code, message, retryAfterS = null, data = null) {
    super(message);
    this.name = "ApiError";
    this.status = status; // 0: the server could not be reached
    this.code = code; // the body's `error` ("removed", "challenge_required"...), "http" or "network"
    this.retryAfterS = retryAfterS;
    this.data = data; // the parsed body, if any
  }
}

const HEADLINE = {
  0: "The server cannot be reached",
  400: "That was not accepted",
  401: "Your access has expired",
  403: "Not allowed",
  404: "Not found",
  409: "Not possible right now",
  413: "That is too large",
  429: "Too many requests",
};

// An error as a person reads it: a headline for the status, then the server's own words.
export function plainError(err) {
  if (!(err instanceof ApiError)) return `Something went wrong: ${err && err.message ? err.message : err}`;
  const headline = HEADLINE[err.status] || (err.status >= 500 ? "The server had a problem" : `Error ${err.status}`);
  let text = err.message ? `${headline}: ${err.message}` : headline;
  if (!/[.!?…]$/.test(text)) text += ".";
  if (err.status === 429 && err.retryAfterS) text += ` Try again in ${Math.ceil(err.retryAfterS)} s.`;
  return text;
}

// The server's wait in seconds: the body's retry_after_s (exact), else the Retry-After header
// (seconds or an HTTP date); null when it names none.
export function retryAfterS(headers, body, nowMs = Date.now()) {
  const exact = body && typeof body === "object" ? Number(body.retry_after_s) : NaN;
  if (exact > 0) return exact;
  const header = ((headers && headers.get("retry-after")) || "").trim();
  if (!header) return null;
  const s = /^\d+$/.test(header) ? Number(header) : (Date.parse(header) - nowMs) / 1000;
  return s > 0 ? s : null;
}

// One HTTP request; the body parsed as JSON when it says so (else text; null if unreadable).
export async function request(url, init = {}, { fetch: fetchFn = null } = {}) {
  const send = fetchFn || globalThis.fetch; // looked up now: tests may wrap window.fetch
  let res;
  try {
    res = await send(url, init);
  } catch (err) {
    throw new ApiError(0, "network", err && err.message ? err.message : String(err));
  }
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json().catch(() => null) : await res.text().catch(() => null);
  return { status: res.status, ok: res.ok, statusText: res.statusText, headers: res.headers, data };
}

// The error a non-2xx reply stands for.
export function replyError(reply) {
  const { data } = reply;
  const message = data && typeof data === "object" && data.message ? data.message : reply.statusText;
  const code = data && typeof data === "object" && data.error ? data.error : "http";
  return new ApiError(reply.status, code, message, retryAfterS(reply.headers, null), data);
}

// One API call under /api/spaces/{space}. body: an object (sent as JSON) or {sdp}.
// Resolves to the JSON answer (or text for SDP), or with `reply` to the whole reply ({status,
// headers, data}: WHIP's Location); rejects with an ApiError.
export async function call(space, method, path, { auth = null, body: given = undefined, fetch = null, reply: whole = false } = {}) {
  let body = given;
  const headers = {};
  let payload;
  if (auth) headers.authorization = `Bearer ${auth}`;
  if (body && typeof body.sdp === "string") {
    headers["content-type"] = "application/sdp";
    payload = body.sdp;
  } else if (body !== undefined || method === "POST") { // every POST carries a JSON object, {} at least
    body = body === undefined ? {} : body;
    headers["content-type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const url = `/api/spaces/${encodeURIComponent(space)}${path}`;
  const reply = await request(url, { method, headers, body: payload, cache: "no-store" }, { fetch });
  if (!reply.ok) throw replyError(reply);
  return whole ? reply : reply.data;
}

// Delays for failures in a row: steps[attempt] (the last one repeats), times 1 ± jitter.
export class Backoff {
  constructor(steps, { jitter = 0, random = Math.random } = {}) {
    this.steps = steps;
    this.jitter = jitter;
    this.random = random;
    this.attempt = 0; // failures since the last reset
  }

  // The delay the next attempt waits (without counting it).
  peek() {
    const base = this.steps[Math.min(this.attempt, this.steps.length - 1)];
    return base * (1 + (this.random() * 2 - 1) * this.jitter);
  }

  // The delay for this failure; counts it.
  next() {
    const delay = this.peek();
    this.attempt += 1;
    return delay;
  }

  reset() {
    this.attempt = 0;
  }
}

// A wait the server named, in ms: a little more, never less (spreads out the listeners it
// answered together): seconds * (1 + jitter ± jitter).
export function notSooner(seconds, { jitter = 0.1, random = Math.random } = {}) {
  return seconds * 1000 * (1 + jitter + (random() * 2 - 1) * jitter);
}
