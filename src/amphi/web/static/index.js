// The index page: the node's Spaces (polled) and a form to create one. Creating needs an API
// key (docs/keys.md), which the page keeps in localStorage; a key the node refuses is forgotten.
// The host key of a new Space is shown once, here, and never stored by the page.

"use strict";

(() => {
  const REFRESH_MS = 10000;
  const ORDER = { live: 0, scheduled: 1, ended: 2 };
  const LABEL = { scheduled: "Scheduled", live: "Live", ended: "Ended" };
  const KEY_STORE = "amphi.apiKey";
  const ASK_OPERATOR = "ask this node's operator for one (amphi keys create --name NAME; make run prints a demo key)";

  function stored() {
    try { return localStorage.getItem(KEY_STORE) || ""; } catch (_) { return ""; }
  }

  function store(key) {
    try {
      if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
    } catch (_) { /* storage disabled: the field still works for this visit */ }
  }

  // what the person should read when the node refuses to create (401, 429), else null
  function refusal(res, data) {
    if (res.status === 401) {
      if (data.error === "revoked_api_key") return `This API key was revoked; ${ASK_OPERATOR}.`;
      if (data.error === "invalid_api_key") return `This node does not know this API key; check it, or ${ASK_OPERATOR}.`;
      return `Creating a Space needs an API key: ${ASK_OPERATOR}.`;
    }
    if (res.status === 429) {
      const wait = Number(res.headers.get("retry-after")) || Math.ceil(data.retry_after_s || 1);
      return data.error === "key_failures_limited"
        ? `Too many refused keys from this address; try again in ${wait} s.`
        : `Too many Spaces created with this key just now; try again in ${wait} s.`;
    }
    return null;
  }

  const $ = (id) => document.getElementById(id);
  let timer = 0;

  function localTime(iso) {
    return new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
  }

  function when(s) {
    if (s.state === "live") return `Live since ${localTime(s.started_at)} · ${s.listeners} listening`;
    if (s.state === "scheduled") return s.starts_at ? `Starts ${localTime(s.starts_at)}` : "Starts when the host is ready";
    return s.ended_at ? `Ended ${localTime(s.ended_at)}` : "Ended";
  }

  function sortKey(s) {
    const t = s.state === "scheduled" ? Date.parse(s.starts_at || "9999-01-01T00:00:00Z")
      : -Date.parse(s.ended_at || s.started_at || 0);
    return [ORDER[s.state] ?? 3, t];
  }

  function renderList(spaces) {
    const ul = $("spaces");
    spaces.sort((a, b) => {
      const [x, y] = [sortKey(a), sortKey(b)];
      return x[0] - y[0] || x[1] - y[1];
    });
    ul.replaceChildren(...spaces.map((s) => {
      const li = document.createElement("li");
      const what = document.createElement("div");
      what.className = "what";
      const a = document.createElement("a");
      a.className = "title";
      a.href = `/s/${encodeURIComponent(s.id)}`;
      a.textContent = s.title;
      const sub = document.createElement("span");
      sub.className = "when";
      sub.textContent = when(s);
      what.append(a, sub);
      const badge = document.createElement("span");
      badge.className = `badge ${s.state}`;
      badge.textContent = LABEL[s.state] || s.state;
      li.append(what, badge);
      return li;
    }));
    $("list-status").textContent = spaces.length ? "" : "No Spaces yet. Create one below.";
    $("list-status").hidden = spaces.length > 0;
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const res = await fetch("/api/spaces", { cache: "no-store" });
      if (!res.ok) throw new Error(`${res.status} ${res.statusText}`);
      renderList(await res.json());
    } catch (err) {
      $("list-status").hidden = false;
      $("list-status").textContent = `Cannot load the Spaces (${err.message}); retrying…`;
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function showCreated(space) {
    const base = space.listen_url.replace(/\/s\/[^/]+$/, "");
    const auth = `-H "Authorization: Bearer ${space.host_key}"`;
    const link = $("created-link");
    link.href = `/s/${encodeURIComponent(space.id)}`;
    link.textContent = space.listen_url;
    $("created-key").textContent = space.host_key;
    $("copy-key").textContent = "Copy";
    $("curl-start").textContent = `curl -X POST ${auth} ${base}/api/spaces/${space.id}/start`;
    $("cmd-speak").textContent = `amphi speak --server ${base} --space ${space.id} --key ${space.host_key} --tone 440`;
    $("curl-end").textContent = `curl -X POST ${auth} ${base}/api/spaces/${space.id}/end`;
    $("created").hidden = false;
    $("created").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function forgetCreated() {
    $("created").hidden = true;
    for (const id of ["created-key", "curl-start", "cmd-speak", "curl-end"]) $(id).textContent = "";
  }

  async function create(event) {
    event.preventDefault();
    const error = $("create-error");
    error.hidden = true;
    const body = { title: $("create-title").value.trim() };
    const starts = $("create-starts").value;
    if (starts) {
      const t = new Date(starts); // datetime-local: local time
      if (Number.isNaN(t.getTime())) {
        error.textContent = "The start time is not a valid date.";
        error.hidden = false;
        return;
      }
      body.starts_at = t.toISOString().replace(/\.\d{3}Z$/, "Z");
    }
    const key = $("create-key").value.trim();
    const button = event.submitter || $("create").querySelector("button");
    button.disabled = true;
    try {
      const res = await fetch("/api/spaces", {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
        body: JSON.stringify(body),
      });
      const data = await res.json().catch(() => ({}));
      const refused = refusal(res, data);
      if (refused) {
        if (res.status === 401) {
          store("");
          $("create-key").focus();
        }
        error.textContent = refused;
        error.hidden = false;
        return;
      }
      if (!res.ok) throw new Error(data.message || `${res.status} ${res.statusText}`);
      store(key);
      $("create").reset();
      $("create-key").value = key;
      showCreated(data);
      refresh();
    } catch (err) {
      error.textContent = `Could not create the Space: ${err.message}`;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  $("create-key").value = stored();
  $("create").addEventListener("submit", create);
  $("copy-key").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("created-key").textContent);
      $("copy-key").textContent = "Copied";
    } catch (_) {
      getSelection().selectAllChildren($("created-key")); // no clipboard access (plain http)
    }
  });
  $("created-done").addEventListener("click", forgetCreated);
  refresh();
})();
