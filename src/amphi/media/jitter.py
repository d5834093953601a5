"""Per-track jitter buffer between a speaker's network arrivals and the mixer's clock. Pure.

Arrivals are bursty; the mixer takes exactly one 20 ms frame per tick. The buffer starts
playing once ``target`` frames are queued (and again after running dry), gives silence
(``None``) while it fills, and drops the oldest audio beyond ``limit`` frames so a
speaker's delay stays bounded. A refill after running dry adds delay; when the queue has
not gone below the target for a whole second, one frame is dropped, so the delay returns
to the target instead of ratcheting up. A speaker whose packets stop is heard as silence:
the program never waits for a track.

A frame's delay is its place in the queue less the ticks the clock already owes: after a
stall of the mixer's clock, the audio that arrived meanwhile belongs to the overdue ticks
and is not "too far ahead". So ``pop(overdue)`` bounds the queue at ``limit + overdue``,
and ``push`` only at ``limit + backlog``, the most overdue ticks a stall may leave.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

TRIM_WINDOW = 50  # pops (1 s of 20 ms frames) over which the lowest queue level is watched


@dataclass
class JitterStats:
    pushed: int = 0
    played: int = 0
    dropped: int = 0  # frames thrown away because the buffer was over its limit
    underruns: int = 0  # times the buffer ran dry while playing
    trimmed: int = 0  # frames dropped to bring a grown delay back to the target
    peak: int = 0  # most frames ever queued


class JitterBuffer:
    def __init__(self, target: int, limit: int, backlog: int = 0) -> None:
        if not 1 <= target <= limit or backlog < 0:
            raise ValueError("need 1 <= target <= limit and backlog >= 0")
        self._frames: deque[np.ndarray] = deque()
        self._target = target
        self._limit = limit
        self._bound = limit + backlog
        self._playing = False
        self._window_pops = 0
        self._window_low = limit
        self.closed = False
        self.stats = JitterStats()

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: np.ndarray) -> None:
        if self.closed:
            return
        self._frames.append(frame)
        self.stats.pushed += 1
        self._drop_beyond(self._bound)
        self.stats.peak = max(self.stats.peak, len(self._frames))

    def close(self) -> None:
        """The track is gone; what is queued still plays out."""
        self.closed = True

    def pop(self, overdue: int = 0) -> np.ndarray | None:
        """The frame for this tick; ``overdue`` is how many later ticks are already due."""
        self._drop_beyond(self._limit + overdue)
        if not self._playing:
            if len(self._frames) < self._target and not (self.closed and self._frames):
                return None
            self._playing = True
        if not self._frames:
            self._playing = False
            self.stats.underruns += 1
            self._window_pops, self._window_low = 0, self._limit
            return None
        self._trim(overdue)
        self.stats.played += 1
        return self._frames.popleft()

    def _drop_beyond(self, bound: int) -> None:
        while len(self._frames) > bound:
            self._frames.popleft()
            self.stats.dropped += 1

    def _trim(self, overdue: int) -> None:
        self._window_low = min(self._window_low, len(self._frames) - overdue)
        self._window_pops += 1
        if self._window_pops < TRIM_WINDOW:
            return
        if self._window_low > self._target and len(self._frames) > 1:
            self._frames.popleft()
            self.stats.trimmed += 1
        self._window_pops, self._window_low = 0, self._limit

    @property
    def drained(self) -> bool:
        return self.closed and not self._frames
