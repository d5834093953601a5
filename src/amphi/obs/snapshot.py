"""One snapshot of a node: what ``/api/node``, ``/metrics`` and the dashboard all render.

The root (``amphi.node``) takes it from its parts on demand; obs never reaches into them.
Admission figures come from the store, so with ``--redis`` they are the shared ones (the
store's last fetched figures), the same on every node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SpaceSnapshot:
    """One Space worth watching: live, or scheduled with a program, seats or a line."""

    space_id: str
    state: str
    listeners: int
    peak_listeners: int
    waiting: int
    admitted_total: int
    recording_bytes: int
    production_lag_s: float | None  # None without a running pipeline
    dead_air: str | None = None  # why the live Space is silent, while it is (docs/sound.md)
    feedback_speakers: int = 0  # speakers ducked for feedback now


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    occupied: int  # seats taken (cluster-wide with --redis)
    waiting: int  # places in line (cluster-wide with --redis)
    limit: int
    max_listeners: int
    paused: bool
    degradation: dict[str, Any]  # the governor's status: level, name, since, problems, limit
    speakers: int
    event_streams: int
    origin: dict[str, int]  # the origin's counters (requests, blocking reloads, renewals)
    pipelines: dict[str, dict[str, Any]]
    store: dict[str, Any]
    defense: dict[str, Any]
    admission_config: dict[str, Any]  # without the secret
    spaces: list[SpaceSnapshot] = field(default_factory=list)
    failover: dict[str, Any] = field(default_factory=dict)  # leases, standbys, take-overs (docs/cluster.md)

    @property
    def dead_air_spaces(self) -> int:
        return sum(1 for s in self.spaces if s.dead_air)

    @property
    def level(self) -> int:
        return int(self.degradation["level"])

    def to_json(self) -> dict[str, object]:
        """``GET /api/node``."""
        return {
            "pipelines": self.pipelines,
            "speakers": self.speakers,
            "event_streams": self.event_streams,
            "origin": self.origin,
            "admission": {"occupied": self.occupied, "waiting": self.waiting, "limit": self.limit,
                          "max_listeners": self.max_listeners, "paused": self.paused,
                          "config": self.admission_config},
            "store": self.store,
            "degradation": self.degradation,
            "defense": self.defense,
            "failover": self.failover,
        }


class NodeState(Protocol):
    """What obs reads of the node: the root implements it."""

    def snapshot(self) -> NodeSnapshot: ...

    def space(self, space_id: str) -> SpaceSnapshot | None: ...  # None: not this node's

    def space_dir(self, space_id: str) -> Any: ...  # where its timeline file goes (a Path)
