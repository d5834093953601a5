"""Who is listening: one session per join, alive while its player keeps reloading the
playlist. Pure: the caller passes the time. Exact on one node, under churn."""

from __future__ import annotations

from collections import OrderedDict


class Presence:
    def __init__(self, ttl_s: float = 15.0) -> None:
        self._ttl = ttl_s
        self._seen: OrderedDict[str, float] = OrderedDict()  # session -> last seen, oldest first
        self.peak = 0

    def touch(self, session: str, now: float) -> None:
        self._seen[session] = now
        self._seen.move_to_end(session)
        self._expire(now)
        self.peak = max(self.peak, len(self._seen))

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._seen)

    def _expire(self, now: float) -> None:
        while self._seen:
            session, seen = next(iter(self._seen.items()))
            if now - seen <= self._ttl:
                break
            del self._seen[session]
