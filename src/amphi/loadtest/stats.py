"""Figures a swarm keeps: log-bucketed histograms (cheap to fill, merge and ship between
processes) and counters. Pure.

A ``Histogram`` has buckets 5 % wide from 0.1 ms to 1,000 s, so a quantile is exact to
within 5 %; values outside land in the first or last bucket. Workers send the buckets
that changed (a sparse dict) and the parent merges them.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable

_RATIO = 1.05
_LO = 1e-4
_EDGES = [_LO * _RATIO ** i for i in range(int(math.log(1e7) / math.log(_RATIO)) + 2)]


class Histogram:
    __slots__ = ("counts", "n", "total", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        i = bisect_left(_EDGES, value)
        self.counts[i] = self.counts.get(i, 0) + 1
        self.n += 1
        self.total += value
        if value > self.max:
            self.max = value

    def merge(self, other: Histogram | dict[str, object]) -> None:
        if isinstance(other, dict):
            other = Histogram.from_dict(other)
        for i, c in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + c
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float | None:
        """The upper edge of the bucket holding the q-quantile (never above the maximum)."""
        if self.n == 0:
            return None
        rank = q * self.n
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(_EDGES[min(i, len(_EDGES) - 1)], self.max)
        return self.max

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def to_dict(self) -> dict[str, object]:
        return {"counts": self.counts, "n": self.n, "total": self.total, "max": self.max}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Histogram:
        h = cls()
        counts = d["counts"]
        assert isinstance(counts, dict)
        h.counts = {int(k): int(v) for k, v in counts.items()}
        h.n = int(d["n"])  # type: ignore[call-overload]
        h.total = float(d["total"])  # type: ignore[arg-type]
        h.max = float(d["max"])  # type: ignore[arg-type]
        return h

    @classmethod
    def of(cls, values: Iterable[float]) -> Histogram:
        h = cls()
        for v in values:
            h.add(v)
        return h


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
