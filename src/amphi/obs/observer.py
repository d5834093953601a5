"""The node's observer: the one place where "something happened" is recorded.

``Observer.event(kind, space_id=..., **fields)`` writes the JSON log line, appends the event
to the Space's timeline (``amphi.obs.timeline``) and feeds the dashboard (``amphi.obs.feed``).
Kinds:

    space            a Space's lifecycle: created, scheduled -> live, live -> ended (reason)
    admission_limit  the adaptive seat limit moved, and why (the health problems, or "room
                     nearly full and healthy")
    degradation      a rung of the degradation ladder up or down
    detector         the surge-vs-attack detector changed state (set by the defense work
                     through ``Observer.detector``)
    sound            the sound guard (docs/sound.md): ``feedback`` on a speaker's microphone
                     (and ``feedback_cleared``), ``dead_air`` in a live Space, with its reason
                     (and ``dead_air_cleared``); through ``Observer.sound``

``run()`` samples once a second: the node (for the dashboard) and every Space that is live,
or scheduled with someone seated, waiting or a pipeline running (dashboard and timeline
file). Obs is a leaf: it imports nothing of the node. The root hands it events (the calls
marked "# obs:" in node.py, services/ and web/) and one snapshot of the node
(``amphi.obs.snapshot``: ``NodeState``), which ``/api/node``, ``/metrics`` and the dashboard
all render.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from amphi.obs import logging as obs_logging
from amphi.obs.feed import Feed
from amphi.obs.metrics import Metrics, NodeGauges, quantile
from amphi.obs.snapshot import NodeSnapshot, NodeState, SpaceSnapshot
from amphi.obs.timeline import FILE, TimelineFile

if TYPE_CHECKING:
    from amphi.control.health import Governor, HealthSample
    from amphi.control.spaces import Space, SpaceState

log = logging.getLogger("amphi.events")

SAMPLE_PERIOD_S = 1.0
# Route templates whose time to first byte the dashboard charts (amphi.web.routes).
JOIN_ROUTE = "/api/spaces/{id}/join"
MEDIA_ROUTES = ("/media/{id}/t/{token}/{msn}.{part}.m4s", "/media/{id}/t/{token}/{msn}.m4s",
                "/media/{id}/t/{token}/init.mp4")


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


class Observer:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        obs_logging.set_node_id(self.node_id)
        self.metrics = Metrics(self)
        self.feed = Feed()
        self.state: NodeState | None = None  # the root's, set once its parts exist
        self.dashboard_streams = 0
        self.health_sample: HealthSample | None = None
        self.problems: tuple[str, ...] = ()
        self._files: dict[str, TimelineFile] = {}
        self._detector: dict[str, dict[str, Any]] = {}
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)
        self._hist: dict[str, list[float]] = {}
        self._requests_before = 0.0

    # -- the one way to record a state change ----------------------------------------------

    def event(self, kind: str, space_id: str | None = None, *, msg: str, level: int = logging.INFO,
              **fields: Any) -> None:
        now = time.time()
        log.log(level, msg, extra={"space_id": space_id, "fields": {"event": kind, **fields}})
        line = {"t": round(now, 3), "kind": kind, "msg": msg, **fields}
        if space_id is not None:
            self._file(space_id).append(line)
        else:  # node-wide (limit, degradation): into every sampled Space's timeline too
            for sid in self._active_ids():
                self._file(sid).append(line)
        self.feed.event({**line, "space": space_id})
        self.feed.notify()

    def space_transition(self, space: Space, old: SpaceState | None, new: SpaceState, reason: str | None) -> None:
        """Called by the Space registry on every lifecycle change (and on creation)."""
        from amphi.control.spaces import SpaceState

        if new is SpaceState.ENDED and self.state is not None:
            snap = self.state.snapshot()
            final = self.state.space(space.id)
            if final is not None:
                self._sample_space(final, time.time(), self._node_fields(snap))  # the final counts
        what = f"{old.value} -> {new.value}" if old is not None else f"created ({new.value})"
        self.event("space", space.id, msg=f"space {space.id} {what}" + (f" ({reason})" if reason else ""),
                   old=old.value if old else None, new=new.value, reason=reason, title=space.title,
                   starts_at=space.starts_at)
        if new is SpaceState.ENDED:
            f = self._files.pop(space.id, None)
            if f is not None:
                f.close()
            self.feed.ended(space.id)
            self.metrics.forget_space(space.id)
            self._detector.pop(space.id, None)

    def health(self, sample: HealthSample, gov: Governor, old_limit: int, old_level: int) -> None:
        """After each health period: the limit and the ladder, with their reason."""
        self.health_sample = sample
        self.problems = tuple(sample.problem_kinds(gov.cfg))
        reason = ", ".join(gov.problems) or "healthy"
        if gov.limit != old_limit:
            direction = "down" if gov.limit < old_limit else "up"
            self.metrics.limit_changes.labels(direction).inc()
            why = reason if direction == "down" else "healthy and the room nearly full"
            self.event("admission_limit", msg=f"admission limit {old_limit} -> {gov.limit} ({why})",
                       old=old_limit, new=gov.limit, reason=why, problems=list(gov.problems))
        if gov.level != old_level:
            self.event("degradation", msg=f"degradation {old_level} -> {gov.level} {gov.level_name} ({reason})",
                       level=logging.WARNING if gov.level > old_level else logging.INFO,
                       old=old_level, new=gov.level, name=gov.level_name, reason=reason,
                       problems=list(gov.problems))

    def detector(self, space_id: str, state: str, evidence: dict[str, Any] | None = None) -> None:
        """For the defense work's surge-vs-attack detector: its state per Space and the
        evidence behind it. A change of state is an event; the evidence rides on samples."""
        old = self._detector.get(space_id, {}).get("state", "normal")  # every detector starts at normal
        self.metrics.set_detector_state(space_id, state)
        self._detector[space_id] = {"state": state, "evidence": evidence or {}}
        if state != old:
            self.event("detector", space_id, msg=f"detector {old} -> {state}",
                       level=logging.WARNING if state != "normal" else logging.INFO,
                       old=old, new=state, evidence=evidence or {})

    def sound(self, space_id: str, what: str, fields: dict[str, Any]) -> None:
        """From a Space's room: feedback on a microphone, dead air, and their clearing."""
        fields = dict(fields)
        msg = str(fields.pop("msg", what))
        m = self.metrics
        if what == "dead_air":
            m.sound_alerts.labels("dead_air").inc()
            m.set_dead_air(space_id, str(fields["reason"]))
        elif what == "dead_air_cleared":
            m.set_dead_air(space_id, None)
        elif what == "feedback":
            m.sound_alerts.labels("feedback").inc()
        alert = what in ("dead_air", "feedback")
        self.event("sound", space_id, msg=msg, level=logging.WARNING if alert else logging.INFO, what=what, **fields)

    # -- scraping ------------------------------------------------------------------------------

    def _snapshot(self) -> NodeSnapshot:
        assert self.state is not None, "the root sets Observer.state before serving"
        return self.state.snapshot()

    def gauges(self) -> NodeGauges:
        snap = self._snapshot()
        h = self.health_sample
        origin = snap.origin
        return NodeGauges(
            occupied=snap.occupied, waiting=snap.waiting, limit=snap.limit,
            max_listeners=snap.max_listeners, degradation_level=snap.level,
            problems=self.problems, loop_lag_s=h.loop_lag_s if h else 0.0, loop_cpu=h.loop_cpu if h else 0.0,
            join_p95_s=h.join_p95_s if h else None, speakers=snap.speakers,
            event_streams=snap.event_streams, dashboard_streams=self.dashboard_streams,
            blocking_waiting=origin.get("blocking_waiting", 0), blocking_timeouts=origin.get("blocking_timeouts", 0),
            blocking_disconnects=origin.get("blocking_disconnects", 0),
            playlist_renewals=origin.get("renewals", 0), streams=origin.get("streams", 0),
            streams_open=origin.get("streams_open", 0), streams_cut=origin.get("streams_cut", 0), spaces=snap.spaces)

    def _active_ids(self) -> list[str]:
        return [s.space_id for s in self._snapshot().spaces] if self.state is not None else []

    # -- sampling --------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_PERIOD_S)
            self.sample(time.time())

    def sample(self, now: float) -> None:
        snap = self._snapshot()
        node_fields = self._node_fields(snap)
        for space in snap.spaces:
            self._sample_space(space, now, node_fields)
        self.feed.sample("node", {"t": round(now, 3), **node_fields, **self._node_only(snap)})
        self.feed.notify()

    @staticmethod
    def _node_fields(snap: NodeSnapshot) -> dict[str, Any]:
        """What every sample carries about the node: the limit, the ladder and its reason."""
        d = snap.degradation
        return {"limit": d["limit"], "max_listeners": snap.max_listeners, "level": d["level"],
                "level_name": d["name"], "problems": list(d["problems"])}

    def _node_only(self, snap: NodeSnapshot) -> dict[str, Any]:
        h = self.health_sample
        hist = self.metrics.route_histograms()
        latency: dict[str, dict[str, float | None]] = {}
        for name, routes in (("join", (JOIN_ROUTE,)), ("media", MEDIA_ROUTES)):
            after = _sum_buckets([hist[r] for r in routes if r in hist])
            before = _sum_buckets([self._hist[r] for r in routes if r in self._hist])
            latency[name] = {f"p{int(q * 100)}": _round(quantile(q, before, after) if after else None, 5)
                             for q in (0.5, 0.95, 0.99)}
        total = sum(b[-1] for b in hist.values())
        requests = total - self._requests_before
        self._requests_before, self._hist = total, hist
        mem = self._process.memory_info().rss
        return {"listeners": snap.occupied, "waiting": snap.waiting, "joins": dict(self.metrics.join_totals),
                "latency": latency, "requests_per_s": round(requests / SAMPLE_PERIOD_S, 1),
                "loop_lag_ms": _round(h.loop_lag_s * 1000 if h else None, 1),
                "loop_cpu": _round(h.loop_cpu if h else None, 3), "cpu_pct": round(self._process.cpu_percent(None), 1),
                "rss_mb": round(mem / 2**20, 1), "speakers": snap.speakers, "spaces": len(snap.spaces),
                "dead_air": snap.dead_air_spaces}

    def _sample_space(self, g: SpaceSnapshot, now: float, node_fields: dict[str, Any]) -> None:
        sid = g.space_id
        sample: dict[str, Any] = {
            "t": round(now, 3), "state": g.state, "listeners": g.listeners, "peak": g.peak_listeners,
            "waiting": g.waiting, "admitted_total": g.admitted_total, "joins": dict(self.metrics.space_join_counts.get(sid, {})),
            "refusals": dict(self.metrics.space_refusals.get(sid, {})), "lag_s": _round(g.production_lag_s),
            "recording_bytes": g.recording_bytes, "dead_air": g.dead_air, "feedback": g.feedback_speakers,
            **node_fields,
        }
        self.metrics.feedback.labels(sid).set(g.feedback_speakers)
        det = self._detector.get(sid)
        if det is not None:
            sample["detector"] = det["state"]
            sample["evidence"] = det["evidence"]
        self._file(sid).append({"kind": "sample", **sample})
        self.feed.sample(sid, sample)

    def _file(self, space_id: str) -> TimelineFile:
        f = self._files.get(space_id)
        if f is None:
            assert self.state is not None, "the root sets Observer.state before serving"
            f = self._files[space_id] = TimelineFile(Path(self.state.space_dir(space_id)) / FILE)
        return f

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _sum_buckets(lists: list[list[float]]) -> list[float] | None:
    if not lists:
        return None
    return [sum(col) for col in zip(*lists, strict=True)]
