"""A player's playback buffer, as a model. Pure: time is a parameter.

Lifecycle: starting -> playing <-> stalled. Downloaded media (a part, a segment, bytes of a
stream) is added as seconds of audio; playback starts once ``start_s`` seconds are buffered
and from then on drains the buffer in real time. When the buffer runs dry the player stalls
(counted once per episode, from the instant the last buffered sample was played); it resumes
once ``resume_s`` seconds are buffered again, and the episode's length is added up.

Latency behind live: when media carries its program date-time (EXT-X-PROGRAM-DATE-TIME, the
wall time at which its first sample was mixed), the sample playing at ``now`` was made at
``pdt_end - buffered``, so the listener hears the program ``now - that`` seconds late.
"""

from __future__ import annotations

from enum import Enum


class Playback(Enum):
    STARTING = "starting"
    PLAYING = "playing"
    STALLED = "stalled"


class PlaybackBuffer:
    __slots__ = ("start_s", "resume_s", "state", "media_s", "played_s", "pdt_end", "started_at", "stalls",
                 "stall_s", "longest_s", "_stall_since", "_last")

    def __init__(self, start_s: float, resume_s: float | None = None) -> None:
        self.start_s = start_s  # buffered seconds before playback starts
        self.resume_s = start_s if resume_s is None else resume_s  # ... and before it resumes after a stall
        self.state = Playback.STARTING
        self.media_s = 0.0  # seconds of audio downloaded in all
        self.played_s = 0.0  # seconds of audio played (the playhead)
        self.pdt_end: float | None = None  # program date-time at the end of the buffered audio
        self.started_at: float | None = None
        self.stalls = 0  # stall episodes
        self.stall_s = 0.0  # seconds spent in closed stall episodes
        self.longest_s = 0.0  # the longest closed episode: the longest gap this listener heard
        self._stall_since = 0.0
        self._last = 0.0

    def advance(self, now: float) -> None:
        """Plays until ``now``; enters a stall at the instant the buffer ran dry."""
        if self.state is Playback.PLAYING:
            self.played_s += now - self._last
            if self.played_s > self.media_s:
                self._stall_since = now - (self.played_s - self.media_s)
                self.played_s = self.media_s
                self.state = Playback.STALLED
                self.stalls += 1
        self._last = max(self._last, now)

    def add(self, seconds: float, now: float, pdt: float | None = None) -> None:
        """``seconds`` of audio arrived at ``now``; ``pdt``: program date-time of its first sample."""
        self.advance(now)
        self.media_s += seconds
        if pdt is not None:
            self.pdt_end = pdt + seconds
        elif self.pdt_end is not None:
            self.pdt_end += seconds
        buffered = self.media_s - self.played_s
        if self.state is Playback.STARTING and buffered >= self.start_s:
            self.state = Playback.PLAYING
            self.started_at = now
        elif self.state is Playback.STALLED and buffered >= self.resume_s:
            self.stall_s += now - self._stall_since
            self.longest_s = max(self.longest_s, now - self._stall_since)
            self.state = Playback.PLAYING

    @property
    def last(self) -> float:
        """The latest time the model has been advanced to."""
        return self._last

    def buffered(self, now: float) -> float:
        self.advance(now)
        return self.media_s - self.played_s

    def stalled_seconds(self, now: float) -> float:
        """Closed episodes plus the one in progress, if any."""
        self.advance(now)
        return self.stall_s + (now - self._stall_since if self.state is Playback.STALLED else 0.0)

    def longest_gap(self, now: float) -> float:
        """The longest stall episode, the one in progress included: the longest gap heard."""
        self.advance(now)
        return max(self.longest_s, now - self._stall_since if self.state is Playback.STALLED else 0.0)

    def latency(self, now: float) -> float | None:
        """Seconds behind live of what is heard at ``now``; None before playback or without date-times."""
        if self.state is Playback.STARTING or self.pdt_end is None:
            return None
        return now - (self.pdt_end - self.buffered(now))
