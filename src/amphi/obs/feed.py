"""What the operator dashboard's streams read: recent samples and events, each serialised
once and shared by every stream. No stream has a queue of its own.

* ``history``: per series ("node" or a Space id) the last ``HISTORY`` one-second samples,
  and the last ``EVENTS`` events: what a stream sends first (a snapshot);
* ``recent``: every message published, numbered, in a ring of ``RING``; a stream keeps only
  the number of the last message it sent, and when woken sends everything after it in one
  write. A stream that fell off the ring (a client that stopped reading for minutes) gets a
  fresh snapshot instead.

Lifecycle of a series: created by its first sample; a Space's series is dropped
``KEEP_ENDED`` Spaces after it ended (the newest ended ones stay viewable).
"""

from __future__ import annotations

import asyncio
from collections import deque

import orjson

HISTORY = 900  # one-second samples per series: 15 minutes of charts
EVENTS = 300  # recent state changes kept for new streams
RING = 4096  # messages kept for streams catching up
KEEP_ENDED = 20  # ended Spaces whose series stay in memory


class Feed:
    def __init__(self) -> None:
        self._history: dict[str, deque[bytes]] = {}
        self._events: deque[bytes] = deque(maxlen=EVENTS)
        self._recent: deque[tuple[int, bytes]] = deque(maxlen=RING)
        self._ended: deque[str] = deque()
        self.seq = 0
        self._changed = asyncio.Event()

    def sample(self, series: str, sample: dict[str, object]) -> None:
        data = orjson.dumps({"type": "sample", "series": series, **sample})
        hist = self._history.get(series)
        if hist is None:
            hist = self._history[series] = deque(maxlen=HISTORY)
        hist.append(data)
        self._publish(data)

    def event(self, event: dict[str, object]) -> None:
        data = orjson.dumps({"type": "event", **event})
        self._events.append(data)
        self._publish(data)

    def ended(self, series: str) -> None:
        """A Space ended: its series stays until ``KEEP_ENDED`` newer ones ended."""
        self._ended.append(series)
        while len(self._ended) > KEEP_ENDED:
            self._history.pop(self._ended.popleft(), None)

    def _publish(self, data: bytes) -> None:
        self.seq += 1
        self._recent.append((self.seq, data))

    def notify(self) -> None:
        """Wakes every stream once (called once per sampling round, not per message)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            pass

    def snapshot(self) -> tuple[int, bytes]:
        """(sequence number, a JSON array of every kept sample and event, oldest first)."""
        parts = [m for hist in self._history.values() for m in hist] + list(self._events)
        return self.seq, b"[" + b",".join(parts) + b"]"

    def since(self, seq: int) -> tuple[int, bytes] | None:
        """(new sequence number, a JSON array of what came after ``seq``), b"" if nothing
        new, or None if ``seq`` fell off the ring (send a snapshot)."""
        if seq == self.seq:
            return seq, b""
        if not self._recent or self._recent[0][0] > seq + 1:
            return None
        first = seq + 1 - self._recent[0][0]  # messages are numbered without gaps
        new = [m for _, m in list(self._recent)[first:]]
        return self.seq, b"[" + b",".join(new) + b"]"
