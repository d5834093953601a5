// The operator dashboard: one Server-Sent Events stream (/dashboard/stream, the session cookie
// authenticates it) brings a snapshot of the last 15 minutes, then the node's and every Space's
// one-second samples and state changes as they happen. Charts are uPlot (npm, /vendor/).
// window.amphiDashboard exposes what is shown, for tests and for curious operators.
"use strict";

(() => {
  const HISTORY = 900; // samples kept per series, as on the server
  const OUTCOMES = ["admitted", "renewed", "waiting", "refused", "challenged"];
  const DETECTOR = {normal: 0, surge: 1, attack: 2, "surge+attack": 3};
  const COLORS = ["#d2462f", "#2f7d4f", "#b7791f", "#3b6fb6", "#8e44ad", "#6b645c", "#16a085"];
  const $ = (id) => document.getElementById(id);
  // a chart shows at least the last minute: uPlot spans a lone first sample's time axis over 1,000 days
  const MIN_SPAN_S = 60;

  const state = {series: new Map(), events: [], view: "node", updates: 0, nodeId: null, connected: false, charts: {}};
  window.amphiDashboard = state;

  // -- charts ---------------------------------------------------------------------------------

  const charts = {};

  function makeChart(id, labels, opts = {}) {
    const el = $(id);
    const series = [{}].concat(labels.map((label, i) => ({
      label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false, show: !(opts.hidden || []).includes(label),
      ...(opts.step ? {paths: uPlot.paths.stepped({align: 1})} : {}),
    })));
    const chart = new uPlot({
      width: Math.max(260, el.clientWidth), height: 200, series,
      scales: {x: {time: true}, y: opts.y || {}},
      axes: [{}, {size: 64}],
      legend: {live: true},
      cursor: {drag: {x: false, y: false}},
    }, [[]].concat(labels.map(() => [])), el);
    charts[id] = state.charts[id] = chart;
    return chart;
  }

  function setup() {
    // the seat limit (thousands) would flatten the audience: off until its legend entry is clicked
    makeChart("chart-audience", ["listeners", "waiting", "seat limit"], {hidden: ["seat limit"]});
    makeChart("chart-joins", OUTCOMES.concat(["ended"]));
    makeChart("chart-latency", ["join p50", "join p95", "join p99", "media p50", "media p95", "media p99"]);
    makeChart("chart-health", ["loop lag ms", "CPU %", "rung"]);
    makeChart("chart-detector", ["detector"], {step: true, y: {range: [0, 3]}});
    const resize = () => {
      for (const [id, chart] of Object.entries(charts)) chart.setSize({width: Math.max(260, $(id).clientWidth), height: 200});
    };
    window.addEventListener("resize", () => requestAnimationFrame(resize));
  }

  // -- data -----------------------------------------------------------------------------------

  function add(msg) {
    if (msg.type === "sample") {
      let list = state.series.get(msg.series);
      if (!list) {
        list = [];
        state.series.set(msg.series, list);
        if (msg.series !== "node") addOption(msg.series);
      }
      list.push(msg);
      if (list.length > HISTORY) list.splice(0, list.length - HISTORY);
    } else if (msg.type === "event") {
      state.events.push(msg);
      if (state.events.length > 300) state.events.splice(0, state.events.length - 300);
    }
  }

  function addOption(id) {
    const opt = document.createElement("option");
    opt.value = id;
    opt.textContent = `Space ${id}`;
    $("series").append(opt);
  }

  function rates(list, key, names) {
    // per-second rates from cumulative counts: samples carry totals, so nothing is lost between them
    const out = names.map(() => []);
    for (let i = 0; i < list.length; i++) {
      const cur = list[i][key] || {};
      const prev = i > 0 ? list[i - 1][key] || {} : null;
      const dt = i > 0 ? list[i].t - list[i - 1].t : 1;
      names.forEach((n, j) => out[j].push(prev ? Math.max(0, ((cur[n] || 0) - (prev[n] || 0)) / dt) : null));
    }
    return out;
  }

  const ms = (x) => (x == null ? null : x * 1000);

  function show(id, data) {
    const chart = charts[id];
    chart.setData(data);
    const t = data[0];
    if (t.length && t[t.length - 1] - t[0] < MIN_SPAN_S) chart.setScale("x", {min: t[t.length - 1] - MIN_SPAN_S, max: t[t.length - 1]});
  }

  function render() {
    const node = state.series.get("node") || [];
    const list = state.series.get(state.view) || [];
    const t = list.map((s) => s.t);
    show("chart-audience", [t, list.map((s) => s.listeners), list.map((s) => s.waiting),
      list.map((s) => s.limit)]);
    show("chart-joins", [t, ...rates(list, "joins", OUTCOMES.concat(["ended"]))]);
    const nt = node.map((s) => s.t);
    const lat = (k, p) => node.map((s) => ms(s.latency && s.latency[k] ? s.latency[k][p] : null));
    show("chart-latency", [nt, lat("join", "p50"), lat("join", "p95"), lat("join", "p99"),
      lat("media", "p50"), lat("media", "p95"), lat("media", "p99")]);
    show("chart-health", [nt, node.map((s) => s.loop_lag_ms), node.map((s) => s.cpu_pct),
      node.map((s) => s.level)]);
    show("chart-detector", [t, list.map((s) => (s.detector in DETECTOR ? DETECTOR[s.detector] : null))]);
    renderStats(list.at(-1), node.at(-1), list);
    renderEvents();
  }

  function renderStats(last, node, list) {
    if (!last) return;
    $("stat-listeners").textContent = last.listeners;
    $("stat-waiting").textContent = last.waiting;
    $("stat-limit").textContent = `${last.limit} / ${last.max_listeners}`;
    $("stat-level").textContent = `${last.level} ${last.level_name}`;
    $("stat-reason").textContent = (last.problems || []).join(", ") || "healthy";
    $("stat-detector").textContent = last.detector || "no detector";
    $("stat-evidence").textContent = last.evidence ? JSON.stringify(last.evidence) : "";
    renderSound(last);
    const joins = rates(list.slice(-2), "joins", OUTCOMES).map((r) => r.at(-1) || 0);
    $("stat-joins").textContent = joins.reduce((a, b) => a + b, 0).toFixed(0);
    $("stat-joins").title = OUTCOMES.map((o, i) => `${o} ${joins[i].toFixed(1)}`).join(", ");
    if (node) $("stat-cpu").textContent = `${node.cpu_pct}% · ${Math.round(node.rss_mb)} MB`;
  }

  // dead air and feedback (docs/sound.md): a Space's own state, or how many Spaces have dead air
  function renderSound(last) {
    const el = $("stat-sound");
    if (state.view === "node") {
      const n = last.dead_air || 0;
      el.textContent = n ? `dead air in ${n} Space${n === 1 ? "" : "s"}` : "ok";
      $("stat-sound-detail").textContent = "";
    } else {
      el.textContent = last.dead_air ? `dead air: ${last.dead_air.replace("_", " ")}` : "ok";
      $("stat-sound-detail").textContent = last.feedback ? `${last.feedback} speaker(s) feeding back` : "";
    }
    el.classList.toggle("alert", Boolean(last.dead_air || last.feedback));
  }

  function renderEvents() {
    const ol = $("events");
    const shown = state.events.filter((e) => state.view === "node" || e.space === state.view || e.space == null);
    ol.replaceChildren(...shown.slice(-100).reverse().map((e) => {
      const li = document.createElement("li");
      const time = document.createElement("time");
      time.textContent = new Date(e.t * 1000).toLocaleTimeString();
      li.append(time, e.msg);
      li.className = `event-${e.kind}`;
      return li;
    }));
  }

  // -- the stream -------------------------------------------------------------------------------

  function connect() {
    const es = new EventSource("/dashboard/stream");
    es.addEventListener("hello", (ev) => {
      const info = JSON.parse(ev.data);
      state.nodeId = info.node_id;
      $("node").textContent = `node ${info.node_id}`;
    });
    es.addEventListener("snapshot", (ev) => {
      state.series.clear();
      state.events = [];
      for (const opt of [...$("series").options]) if (opt.value !== "node") opt.remove();
      JSON.parse(ev.data).forEach(add);
      if (state.view !== "node" && !state.series.has(state.view)) state.view = "node";
      $("series").value = state.view;
      state.updates++;
      render();
    });
    es.addEventListener("update", (ev) => {
      JSON.parse(ev.data).forEach(add);
      state.updates++;
      render();
    });
    es.onopen = () => {
      state.connected = true;
      $("conn").textContent = "live";
      $("conn").classList.add("on");
    };
    es.onerror = () => {
      state.connected = false;
      $("conn").textContent = "reconnecting";
      $("conn").classList.remove("on");
      // EventSource retries by itself; a lost session (401) needs the login form again
      fetch("/dashboard").then((r) => { if (r.status === 401) location.reload(); });
    };
  }

  document.addEventListener("DOMContentLoaded", () => {
    setup();
    $("series").addEventListener("change", (ev) => {
      state.view = ev.target.value;
      render();
    });
    connect();
  });
})();
