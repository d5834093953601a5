"""The node's one Prometheus registry: every metric Amphi exports is defined here, with its
help text and unit (docs/observability.md lists them).

Two kinds:

* **counted as it happens** (counters, histograms): joins by outcome, refusals by reason,
  token failures, HTTP requests and their time to first byte per route *template* (never a
  raw path, so the label sets stay bounded). Children are looked up once and cached: a
  request costs about 1.2 microseconds here (a counter and a histogram; see
  docs/observability.md for the measured overhead).
* **read at scrape time** (``NodeCollector``): listeners, peak, waiting, limits, degradation,
  loop lag, segment production lag, recording bytes, blocking-reload waits. The node already
  holds these numbers; reading them when Prometheus asks costs nothing per request and can
  never disagree with ``/api/node``.

Process CPU and memory come from prometheus-client's own ``ProcessCollector``
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from amphi.obs.snapshot import SpaceSnapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # no *_created series: a third more lines that no dashboard reads

# Join outcomes. "challenged" is the proof-of-work answer of the defense work (a join told to
# solve a puzzle first); it stays at zero until that lands.
OUTCOMES = ("admitted", "renewed", "waiting", "refused", "challenged", "ended")
# Detector states, set by the defense work's surge-vs-attack detector (one is 1, the rest 0).
DETECTOR_STATES = ("normal", "surge", "attack", "surge+attack")
# Health problems the governor reacts to (control/health.py), one gauge each.
PROBLEMS = ("loop_lag", "loop_cpu", "join_p95")
# Time to first byte: LL-HLS parts answer in well under a millisecond, blocking playlist
# reloads wait up to a part (0.5 s) or time out at 6 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 6.0, 10.0)


@dataclass(frozen=True)
class NodeGauges:
    """The node's numbers at scrape time."""

    occupied: int
    waiting: int
    limit: int
    max_listeners: int
    degradation_level: int
    problems: tuple[str, ...]  # kinds from PROBLEMS
    loop_lag_s: float  # worst in the last health period
    loop_cpu: float  # fraction of one core, last health period
    join_p95_s: float | None
    speakers: int
    event_streams: int
    dashboard_streams: int
    blocking_waiting: int
    blocking_timeouts: int
    blocking_disconnects: int
    playlist_renewals: int
    streams: int  # streamed segment answers begun
    streams_open: int
    streams_cut: int
    spaces: list[SpaceSnapshot] = field(default_factory=list)


class GaugeSource(Protocol):
    def gauges(self) -> NodeGauges: ...


class NodeCollector(Collector):
    """Reads the node when scraped."""

    def __init__(self, source: GaugeSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        g = self._source.gauges()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        cluster = " (with --redis: the whole cluster's, as the store last fetched them)"
        yield gauge("amphi_listeners", f"Listeners holding a seat{cluster}.", g.occupied)
        yield gauge("amphi_waiting", f"Clients in a waiting line{cluster}.", g.waiting)
        yield gauge("amphi_admission_limit", "Adaptive seat limit (AIMD, below max_listeners).", g.limit)
        yield gauge("amphi_admission_max_listeners", "Seat ceiling of this node (--max-listeners).", g.max_listeners)
        yield gauge("amphi_degradation_level",
                    "Degradation rung: 0 normal, 1 queue_new_joins, 2 optional_work_off.", g.degradation_level)
        problem = GaugeMetricFamily("amphi_health_problem",
                                    "1 while the last health sample exceeded this bound (the limit's reason).",
                                    labels=["kind"])
        for kind in PROBLEMS:
            problem.add_metric([kind], 1.0 if kind in g.problems else 0.0)
        yield problem
        yield gauge("amphi_event_loop_lag_seconds", "Worst event-loop lag in the last health period.", g.loop_lag_s)
        yield gauge("amphi_event_loop_cpu_ratio", "Event-loop thread CPU over the last health period (1 = a core).",
                    g.loop_cpu)
        yield gauge("amphi_join_p95_seconds", "95th percentile join answer time in the last health period "
                    "(NaN without joins).", float("nan") if g.join_p95_s is None else g.join_p95_s)
        yield gauge("amphi_speakers", "Speakers' WebRTC connections.", g.speakers)
        yield gauge("amphi_event_streams", "Open stage event streams (SSE).", g.event_streams)
        yield gauge("amphi_dashboard_streams", "Open operator dashboard streams (SSE).", g.dashboard_streams)
        yield gauge("amphi_blocking_reloads_waiting", "Blocking playlist reloads waiting now.", g.blocking_waiting)
        yield CounterMetricFamily("amphi_blocking_reload_timeouts", "Blocking playlist reloads answered 503 "
                                  "after blocking_timeout_s.", value=g.blocking_timeouts)
        yield CounterMetricFamily("amphi_blocking_reload_disconnects", "Blocking playlist reloads whose client "
                                  "went away while waiting.", value=g.blocking_disconnects)
        yield CounterMetricFamily("amphi_playlist_renewals", "Live playlist requests redirected to a renewed "
                                  "token.", value=g.playlist_renewals)
        yield CounterMetricFamily("amphi_segment_streams", "Answers that streamed a segment while it was being "
                                  "made (docs/streaming.md).", value=g.streams)
        yield gauge("amphi_segment_streams_open", "Streamed segment answers still sending.", g.streams_open)
        yield CounterMetricFamily("amphi_segment_streams_cut", "Streamed segment answers that ended before their "
                                  "segment: the client left, or the program failed.", value=g.streams_cut)

        per = {
            "listeners": GaugeMetricFamily("amphi_space_listeners", "Listeners seated in the Space.",
                                           labels=["space"]),
            "peak": GaugeMetricFamily("amphi_space_peak_listeners", "Most listeners seated at once in the Space.",
                                      labels=["space"]),
            "waiting": GaugeMetricFamily("amphi_space_waiting", "Clients in the Space's waiting line.",
                                         labels=["space"]),
            "state": GaugeMetricFamily("amphi_space_state", "1 for the Space's lifecycle state.",
                                       labels=["space", "state"]),
            "lag": GaugeMetricFamily("amphi_segment_production_lag_seconds",
                                     "Wall time minus the program time of the newest published media "
                                     "(a part is 0.512 s, so about 0..0.6 s when healthy).", labels=["space"]),
        }
        admitted = CounterMetricFamily("amphi_space_admitted", "Seats granted in the Space.", labels=["space"])
        recorded = CounterMetricFamily("amphi_recording_bytes", "Bytes of recording written to disk.",
                                       labels=["space"], unit="bytes")
        for s in g.spaces:
            per["listeners"].add_metric([s.space_id], s.listeners)
            per["peak"].add_metric([s.space_id], s.peak_listeners)
            per["waiting"].add_metric([s.space_id], s.waiting)
            per["state"].add_metric([s.space_id, s.state], 1)
            if s.production_lag_s is not None:
                per["lag"].add_metric([s.space_id], s.production_lag_s)
            admitted.add_metric([s.space_id], s.admitted_total)
            recorded.add_metric([s.space_id], s.recording_bytes)
        yield from per.values()
        yield admitted
        yield recorded


class Metrics:
    """The registry and the metrics counted as things happen. One per node."""

    def __init__(self, source: GaugeSource | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.joins = Counter("amphi_joins", "Join answers by Space and outcome (admitted, renewed, waiting, "
                             "refused, challenged, ended).", ["space", "outcome"], registry=r)
        self.refusals = Counter("amphi_join_refusals", "Joins refused, by error code (too_early, full, "
                                "not_found, ...).", ["reason"], registry=r)
        self.token_failures = Counter("amphi_token_failures", "Admission tokens refused: expired (401) or "
                                      "forged / another Space's (403).", ["reason"], registry=r)
        self.requests = Counter("amphi_http_requests", "HTTP requests by route template and status.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("amphi_http_response_start_seconds", "Time from a request's arrival to its "
                                 "response headers (time to first byte), by route template.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.limit_changes = Counter("amphi_admission_limit_changes", "Changes of the adaptive seat limit, by "
                                     "direction.", ["direction"], registry=r)
        self.detector = Gauge("amphi_detector_state", "Surge-vs-attack detector state per Space: 1 for the "
                              "current state (normal, surge, attack, surge+attack). Set by the defense work; "
                              "absent until a detector runs.", ["space", "state"], registry=r)
        self.sound_alerts = Counter("amphi_sound_alerts", "Sound alerts raised (docs/sound.md): feedback on a "
                                    "speaker's microphone, dead air in a live Space.", ["kind"], registry=r)
        self.dead_air = Gauge("amphi_dead_air", "1 while a live Space has dead air, labelled with why "
                              "(all_muted, nobody_connected, silent).", ["space", "reason"], registry=r)
        self.feedback = Gauge("amphi_feedback_speakers", "Speakers whose microphone is feeding back (ducked), "
                              "per Space, as of the last one-second sample.", ["space"], registry=r)
        self._dead_air_reasons: dict[str, str] = {}  # Space -> the reason its amphi_dead_air series carries
        self._route_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._space_joins: dict[tuple[str, str], Counter] = {}
        # the same counts as plain numbers, for the timeline and the dashboard
        self.join_totals: dict[str, int] = {}  # outcome -> joins, node-wide
        self.space_join_counts: dict[str, dict[str, int]] = {}  # Space -> outcome -> joins
        self.space_refusals: dict[str, dict[str, int]] = {}  # Space -> reason -> refusals
        if source is not None:
            r.register(NodeCollector(source))
        ProcessCollector(registry=r)

    # -- as it happens ----------------------------------------------------------------------

    def request(self, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered: the hot path, so the labelled children are cached."""
        children = self._route_children.get((route, status))
        if children is None:
            children = self._route_children[(route, status)] = (
                self.requests.labels(route, str(status)), self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def join(self, space_id: str | None, outcome: str, reason: str | None = None) -> None:
        """One join answered. ``space_id`` is None when the Space does not exist (no label
        is made from a client's path); ``reason`` is the error code of a refusal."""
        self.join_totals[outcome] = self.join_totals.get(outcome, 0) + 1
        if reason is not None:
            self.refusals.labels(reason).inc()
        if space_id is None:
            return
        child = self._space_joins.get((space_id, outcome))
        if child is None:
            child = self._space_joins[(space_id, outcome)] = self.joins.labels(space_id, outcome)
        child.inc()
        counts = self.space_join_counts.setdefault(space_id, {})
        counts[outcome] = counts.get(outcome, 0) + 1
        if reason is not None:
            reasons = self.space_refusals.setdefault(space_id, {})
            reasons[reason] = reasons.get(reason, 0) + 1

    def set_detector_state(self, space_id: str, state: str) -> None:
        """For the surge-vs-attack detector: one state is 1, the others 0."""
        if state not in DETECTOR_STATES:
            raise ValueError(f"unknown detector state {state!r}; one of {DETECTOR_STATES}")
        for s in DETECTOR_STATES:
            self.detector.labels(space_id, s).set(1.0 if s == state else 0.0)

    def forget_space(self, space_id: str) -> None:
        """An ended Space's labelled series go (its totals stay in its timeline)."""
        for key in [k for k in self._space_joins if k[0] == space_id]:
            self.joins.remove(*key)
            del self._space_joins[key]
        self.space_join_counts.pop(space_id, None)
        self.space_refusals.pop(space_id, None)
        for s in DETECTOR_STATES:
            try:
                self.detector.remove(space_id, s)
            except KeyError:
                pass
        self.set_dead_air(space_id, None)
        try:
            self.feedback.remove(space_id)
        except KeyError:
            pass

    def set_dead_air(self, space_id: str, reason: str | None) -> None:
        """One series per Space in dead air, labelled with why; none once it clears."""
        old = self._dead_air_reasons.pop(space_id, None)
        if old is not None:
            self.dead_air.remove(space_id, old)
        if reason is not None:
            self.dead_air.labels(space_id, reason).set(1)
            self._dead_air_reasons[space_id] = reason

    # -- read ---------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def route_histograms(self) -> dict[str, list[float]]:
        """Cumulative bucket counts per route (summed over statuses), for percentiles of the
        last second from the difference of two reads (see ``quantile``)."""
        out: dict[str, list[float]] = {}
        for metric in self.latency.collect():
            for s in metric.samples:
                if s.name.endswith("_bucket"):
                    out.setdefault(s.labels["route"], []).append(s.value)
        return out


def quantile(q: float, before: list[float] | None, after: list[float]) -> float | None:
    """The ``q`` quantile of what fell into cumulative buckets between two reads, by linear
    interpolation inside the bucket (as Prometheus' histogram_quantile). None if nothing."""
    counts = [a - (before[i] if before else 0.0) for i, a in enumerate(after)]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    bounds = (*LATENCY_BUCKETS, float("inf"))
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return LATENCY_BUCKETS[-1]
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1.0)
        lower_bound, lower_count = bound, count
    return LATENCY_BUCKETS[-1]
