// Fakes for the page modules' injected dependencies: a clock whose timers run when the test
// says, a scripted server behind `fetch`, and a random source that gives what it is told.

export class FakeClock {
  constructor(start = 1_000_000) {
    this.t = start;
    this.timers = []; // {due, fn, id}
    this.ids = 0;
  }

  now = () => this.t;

  // later(fn, ms) -> cancel(), as Admission wants it.
  later = (fn, ms) => {
    const id = ++this.ids;
    this.timers.push({ due: this.t + ms, fn, id });
    return () => { this.timers = this.timers.filter((t) => t.id !== id); };
  };

  // The delay of the one pending timer (the admission keeps at most one), or null.
  pending() {
    if (this.timers.length === 0) return null;
    return Math.min(...this.timers.map((t) => t.due)) - this.t;
  }

  // Moves to the next timer, runs it and lets the request it sends be answered.
  async next() {
    if (this.timers.length === 0) throw new Error("no timer pending");
    this.timers.sort((a, b) => a.due - b.due);
    const timer = this.timers.shift();
    this.t = Math.max(this.t, timer.due);
    timer.fn();
    await settle();
  }
}

// Lets every pending promise run (fetch answers, their JSON) before the test looks.
export async function settle() {
  for (let i = 0; i < 20; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

export function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

// A fetch answering from a script: each entry is a Response, an Error (the network fails)
// or a function (url, init, body) -> Response. Records every request.
export class FakeServer {
  constructor(...answers) {
    this.answers = answers;
    this.requests = []; // {url, method, body, at}
  }

  fetch = async (url, init = {}) => {
    let body = init.body ?? null;
    try { body = body === null ? null : JSON.parse(body); } catch (_) { /* not JSON: kept as text */ }
    this.requests.push({ url, method: init.method || "GET", body, init });
    if (this.answers.length === 0) throw new Error(`unexpected request ${url} ${init.body}`);
    const answer = this.answers.shift();
    if (answer instanceof Error) throw answer;
    return typeof answer === "function" ? answer(url, init, body) : answer;
  };

  then(...answers) {
    this.answers.push(...answers);
    return this;
  }

  get bodies() {
    return this.requests.map((r) => r.body);
  }
}

// random() returns these in turn (then the last one again).
export function randoms(...values) {
  let i = 0;
  return () => values[Math.min(i++, values.length - 1)];
}
