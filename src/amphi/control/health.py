"""How loaded the node is, and what admission does about it. Pure logic: the node measures
(``amphi.node``: event-loop lag, the loop thread's CPU, join answer times) once a period
and feeds a ``HealthSample`` here.

Two responses, both automatic and both visible in every Space's status:

* the **adaptive limit** (AIMD, as in TCP congestion control and Netflix's
  concurrency-limits AIMD), only where seats cost this node (it serves their media itself,
  ``seats_cost``): an unhealthy sample cuts the seat limit by ``DECREASE``; a healthy one
  while the room is nearly full adds ``INCREASE`` of the ceiling back. The limit only stops
  new admissions; nobody seated is ever evicted. Behind edges a seat costs the node a share
  of an edge's report: cutting seats would stop seating and relieve nothing.
* the **degradation ladder**, one rung per ``escalate_after`` unhealthy samples in a row and
  back down one per ``recover_after`` healthy ones. What can wait is shed first, seating last
  (and never stopped: the line keeps moving at the admission rate):

      0 normal
      1 optional_work_off   waiting clients poll and read the line half as often; replays and
                            downloads of ended Spaces answer 503 + Retry-After
      2 queue_new_joins     also: every new join waits in line (no seat straight away),
                            waiting clients poll a third as often
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from amphi.core.config import AdmissionConfig


DECREASE = 0.9  # multiplicative decrease per unhealthy sample
INCREASE = 0.01  # additive increase per healthy sample, as a share of the ceiling
NEARLY_FULL = 0.9  # the limit grows only when occupancy is above this share of it

LEVELS = ("normal", "optional_work_off", "queue_new_joins")
STRETCH = (1.0, 2.0, 3.0)  # per level: how much longer waiting clients are told to wait


@dataclass(frozen=True)
class HealthSample:
    loop_lag_s: float  # worst event-loop lag seen in the period
    loop_cpu: float  # event-loop thread CPU over the period, fraction of one core
    join_p95_s: float | None  # None when there were no joins

    @classmethod
    def measure(cls, loop_lag_s: float, loop_cpu: float, join_times: Sequence[float]) -> HealthSample:
        """A period's sample from its raw measurements (join answer times in seconds)."""
        times = sorted(join_times)
        return cls(loop_lag_s, loop_cpu, times[int(0.95 * (len(times) - 1))] if times else None)

    def checks(self, cfg: AdmissionConfig) -> list[tuple[str, str]]:
        """(kind, description) of each bound exceeded; kinds are loop_lag, loop_cpu, join_p95."""
        out = []
        if self.loop_lag_s > cfg.max_loop_lag_s:
            out.append(("loop_lag", f"loop lag {self.loop_lag_s * 1000:.0f} ms"))
        if self.loop_cpu > cfg.max_loop_cpu:
            out.append(("loop_cpu", f"loop CPU {self.loop_cpu:.0%}"))
        if self.join_p95_s is not None and self.join_p95_s > cfg.max_join_p95_s:
            out.append(("join_p95", f"join p95 {self.join_p95_s * 1000:.0f} ms"))
        return out

    def problems(self, cfg: AdmissionConfig) -> list[str]:
        return [text for _, text in self.checks(cfg)]

    def problem_kinds(self, cfg: AdmissionConfig) -> list[str]:
        return [kind for kind, _ in self.checks(cfg)]


class Governor:
    """The adaptive limit and the degradation ladder, updated once per health sample."""

    def __init__(self, cfg: AdmissionConfig, *, seats_cost: bool = True) -> None:
        self.cfg = cfg
        self.seats_cost = seats_cost  # this node serves its listeners' media: seats cost it CPU
        self.limit = cfg.max_listeners
        self.level = 0
        self.problems: list[str] = []
        self.since = 0.0  # when the current level began
        self._unhealthy_run = 0
        self._healthy_run = 0

    @property
    def level_name(self) -> str:
        return LEVELS[self.level]

    def update(self, sample: HealthSample, occupied: int, now: float) -> None:
        cfg = self.cfg
        self.problems = sample.problems(cfg)
        if self.problems:
            self._unhealthy_run += 1
            self._healthy_run = 0
            if self.seats_cost:
                self.limit = max(cfg.min_listeners, int(self.limit * DECREASE))
            if self._unhealthy_run >= cfg.escalate_after and self.level < len(LEVELS) - 1:
                self._set_level(self.level + 1, now)
        else:
            self._healthy_run += 1
            self._unhealthy_run = 0
            if occupied >= NEARLY_FULL * self.limit:
                self.limit = min(cfg.max_listeners, self.limit + max(1, round(INCREASE * cfg.max_listeners)))
            if self._healthy_run >= cfg.recover_after and self.level > 0:
                self._set_level(self.level - 1, now)

    @property
    def retry_factor(self) -> float:
        """How much longer waiting clients are told to wait (polls and line reads)."""
        return STRETCH[self.level]

    @property
    def queue_new_joins(self) -> bool:
        return self.level >= 2

    @property
    def optional_work_off(self) -> bool:
        return self.level >= 1

    def _set_level(self, level: int, now: float) -> None:
        self.level = level
        self.since = now
        self._unhealthy_run = self._healthy_run = 0

    def status(self) -> dict[str, object]:
        return {"level": self.level, "name": self.level_name, "since": self.since or None,
                "problems": self.problems, "limit": self.limit}
