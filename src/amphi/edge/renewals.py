"""Tokens renewed at the edge, and the seats the control plane hears about. ``Renewals`` is
pure (time is a parameter, no I/O); ``SharedRefusals`` is its one file. docs/admission.md,
"Renewals".

A listener's player reloads the live playlist every segment (or every part). When the token in
its URL is past half its life, the edge answers that reload with a 307 to the same URL under a
new token for the same seat, signed here with the cluster's key: the listener keeps its seat
without a request to an API node. What the control plane must know, that the seat is still
in use, it hears in aggregate: every ``REPORT_S`` the edge sends the seats it renewed, a
thousand to a request (``batches``), and an API node extends them in one store call each
(``Store.extend``). The node answers with the seats that are no longer held (the listener left,
or the seat lapsed); from then on the edge refuses their tokens (``released``), for as long as
a token it signed could still be valid, so a seat given back is never kept alive here.

Host tokens (reserved capacity, never counted) are renewed the same way and never reported.

An edge has several fan-out workers, and a listener's requests reach any of them: the worker
that hears of a released seat shares it with the others through a file (``SharedRefusals``), so
every worker of the edge refuses its tokens within a second. Another edge learns it from its own
report, the next time it renews one of those tokens (within half a token's life).

Bounds: ``pending`` holds one entry per seat renewed since the last report that reached a node
(a seat exists only if a node signed it), ``gone`` one per seat refused in the last token life.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path

from amphi.control.tokens import Signer

REPORT_S = 5.0  # how often renewed seats are reported: a seat lapses a grace (15 s) after its old token
BATCH = 1000  # seats one report carries (about 40 KB: Varnish keeps a POST body of up to 64 KB to retry it)

Report = dict[str, list[list[object]]]  # space -> [[seat, old expiry, new expiry], ...]


class Renewals:
    def __init__(self, signer: Signer, ttl_s: float) -> None:
        self.signer = signer
        self.ttl_s = ttl_s  # a token's life, as the nodes sign it (--token-ttl)
        self.pending: dict[str, dict[str, tuple[int, int]]] = {}  # space -> seat -> (old expiry, new expiry)
        self.gone: dict[tuple[str, str], float] = {}  # (space, seat) -> until when its tokens are refused
        self.renewed = self.reported = self.released_seats = self.refused = 0

    def due(self, expires: int, now: float) -> bool:
        """Whether a token expiring at ``expires`` is renewed now: past half its life."""
        return expires - now <= self.ttl_s / 2

    def renew(self, space_id: str, role: str, seat: str, expires: int, now: float) -> str:
        """A new token for the seat, to be reported (a listener's) with the next batch."""
        new = math.ceil(now + self.ttl_s)
        self.renewed += 1
        if role != "h":
            self._pend(space_id, seat, expires, new)
        return self.signer.token(space_id, seat, new, host=role == "h")

    def _pend(self, space_id: str, seat: str, old: int, new: int) -> None:
        """The seat goes with the next report: the oldest token it renewed (the store may take
        its seat back by it), the newest expiry."""
        seats = self.pending.setdefault(space_id, {})
        known = seats.get(seat)
        seats[seat] = (min(known[0], old), max(known[1], new)) if known else (old, new)

    def released(self, space_id: str, seat: str, now: float) -> bool:
        """Whether the control plane said this seat is no longer held (its tokens are refused)."""
        until = self.gone.get((space_id, seat))
        if until is None:
            return False
        if until <= now:
            del self.gone[(space_id, seat)]
            return False
        self.refused += 1
        return True

    def batches(self) -> list[Report]:
        """Everything pending, in reports of at most ``BATCH`` seats; pending is then empty
        (``failed`` puts back a report that did not reach a node)."""
        out: list[Report] = []
        report: Report = {}
        n = 0
        for space_id, seats in self.pending.items():
            for seat, (old, new) in seats.items():
                if n == BATCH:
                    out.append(report)
                    report, n = {}, 0
                report.setdefault(space_id, []).append([seat, old, new])
                n += 1
        if n:
            out.append(report)
        self.pending = {}
        return out

    def failed(self, report: Report) -> None:
        """A report that did not reach a node: its seats go with the next one."""
        for space_id, rows in report.items():
            for row in rows:
                self._pend(space_id, str(row[0]), int(row[1]), int(row[2]))  # type: ignore[call-overload]

    def answered(self, report: Report, gone: dict[str, list[str]], now: float) -> None:
        """A node's answer to ``report``: the seats in ``gone`` are no longer held."""
        self.reported += sum(len(rows) for rows in report.values())
        until = now + self.ttl_s + 1.0  # the last token this edge signed for it has expired by then
        for space_id, seats in gone.items():
            for seat in seats:
                self.gone[(space_id, seat)] = until
                self.released_seats += 1

    def learn(self, gone: dict[tuple[str, str], float]) -> None:
        """Refusals another worker of this edge heard from the control plane."""
        for key, until in gone.items():
            if until > self.gone.get(key, 0.0):
                self.gone[key] = until

    def tidy(self, now: float) -> None:
        """Forgets refusals whose tokens have all expired."""
        for key in [k for k, until in self.gone.items() if until <= now]:
            del self.gone[key]

    def stats(self) -> dict[str, int]:
        return {"renewed": self.renewed, "reported": self.reported, "released": self.released_seats,
                "refused_released": self.refused, "pending": sum(len(s) for s in self.pending.values()),
                "gone": len(self.gone)}


class SharedRefusals:
    """The released seats one edge's fan-out workers refuse, in one JSON file beside them:
    written under an exclusive lock (read, merged, expired entries dropped, replaced
    atomically), read again by each worker when it has changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = path.with_suffix(".lock")
        self._seen = -1  # the file's mtime when last read (ns)

    def publish(self, gone: dict[tuple[str, str], float], now: float) -> None:
        with open(self._lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {k: v for k, v in self._read().items() if v > now}
            for key, until in gone.items():
                merged[key] = max(until, merged.get(key, 0.0))
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps([[space, seat, until] for (space, seat), until in merged.items()]))
            os.replace(tmp, self.path)

    def changed(self) -> dict[tuple[str, str], float] | None:
        """The whole set if the file changed since the last call, else None."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if mtime == self._seen:
            return None
        self._seen = mtime
        return self._read()

    def _read(self) -> dict[tuple[str, str], float]:
        try:
            rows = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {(str(space), str(seat)): float(until) for space, seat, until in rows}
