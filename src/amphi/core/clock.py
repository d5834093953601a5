"""A virtual clock that only moves when told to.

Pure logic in Amphi takes ``now`` (Unix seconds) as a parameter; whoever drives it reads a
clock. The node passes ``time.time()``; the simulator (``amphi.sim``) drives the same
production objects from a ``VirtualClock`` that jumps from one event to the next, so an
hour of a surge runs in seconds and the same seed gives the same run.

    VirtualClock: new (at ``start``) -> advanced monotonically; never goes back.
"""

from __future__ import annotations


class VirtualClock:
    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance_to(self, t: float) -> None:
        """Moves to ``t``; a time in the past is an error (events must come in order)."""
        if t < self._now:
            raise ValueError(f"a virtual clock cannot go back: {t} < {self._now}")
        self._now = t

    def advance(self, seconds: float) -> None:
        self.advance_to(self._now + seconds)
