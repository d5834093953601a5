"""The generic cell rate algorithm (GCRA): the one rate limit of Amphi. Pure: every call
takes ``now`` (seconds); nothing reads a clock.

A budget of ``rate`` grants per second and ``burst`` at once is one number, its theoretical
arrival time (``tat``): a request at ``now`` conforms when ``tat - (burst - 1) / rate <= now``,
and a grant moves ``tat`` to ``max(tat, now) + 1 / rate``. A budget whose ``tat`` has passed is
whole: forgetting it changes nothing.

    decide      one request against a ``tat``: (wait, tat after); the rule itself
    Gcra        one budget (the admission rate, the node's join budget)
    GcraTable   one budget per key, at most ``max_keys`` (least recently seen forgotten first):
                ``Store.take`` in memory, the defense's per-address and per-prefix limits

``control/store/admission.lua`` cannot import this: its ``gcra_wait``/``gcra_take`` (the
admission rate) and its ``limit`` op (``Store.take``) are this very rule written again, and
``tests/control/test_conformance.py`` runs one table of scenarios against both.
"""

from __future__ import annotations

from collections import OrderedDict

EPSILON_S = 1e-6  # float slack in time comparisons (Unix times are large numbers)


def decide(tat: float, now: float, rate: float, burst: int) -> tuple[float, float]:
    """One request at ``now`` against a budget whose theoretical arrival time is ``tat``:
    ``(0.0, tat after the grant)`` if it conforms, else ``(seconds until it would, tat)``."""
    interval = 1.0 / rate
    wait = tat - (burst - 1) * interval - now
    if wait > EPSILON_S:
        return wait, tat
    return 0.0, max(tat, now) + interval


def check_budget(rate: float, burst: int) -> None:
    """ValueError for a rate or a burst no budget can have."""
    if rate <= 0 or burst < 1:
        raise ValueError("GCRA needs a positive rate and a burst of at least 1")


class Gcra:
    """One budget: ``rate`` grants per second, ``burst`` at once at most."""

    __slots__ = ("rate", "burst", "interval", "tat")

    def __init__(self, rate: float, burst: int) -> None:
        check_budget(rate, burst)
        self.rate = rate
        self.burst = burst
        self.interval = 1.0 / rate
        self.tat = 0.0  # theoretical arrival time of the next grant

    def wait(self, now: float) -> float:
        """Seconds until a grant conforms (0 if one does now); charges nothing."""
        return decide(self.tat, now, self.rate, self.burst)[0]

    def take(self, now: float) -> bool:
        """One grant if it conforms now (and charges it)."""
        return self.charge(now) == 0.0

    def charge(self, now: float) -> float:
        """``take`` and ``wait`` in one: 0.0 if granted (and charged), else the seconds until
        a grant would be."""
        wait, self.tat = decide(self.tat, now, self.rate, self.burst)
        return wait


class GcraTable:
    """One budget per key (a client address, a network, a speaker), each a ``tat`` alone: the
    rate and burst come with every request, as they do to the Lua. At most ``max_keys`` are
    kept; when full, the key seen longest ago is forgotten (``forgotten`` counts them). Only
    a flood from more distinct keys than the table holds can make the oldest debts be
    forgiven."""

    def __init__(self, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._tat: OrderedDict[str, float] = OrderedDict()
        self.forgotten = 0  # keys dropped because the table was full

    def __len__(self) -> int:
        return len(self._tat)

    def wait(self, key: str, rate: float, burst: int, now: float) -> float:
        """Seconds until ``key`` may go (0 if it may now); charges nothing, remembers nothing."""
        tat = self._tat.get(key)
        return 0.0 if tat is None else decide(tat, now, rate, burst)[0]

    def charge(self, key: str, rate: float, burst: int, now: float) -> float:
        """0.0 if ``key`` may go now (and charges it), else the seconds until it may."""
        table = self._tat
        tat = table.get(key)
        if tat is None:
            if len(table) >= self.max_keys:
                table.popitem(last=False)
                self.forgotten += 1
            tat = 0.0
        else:
            table.move_to_end(key)
        wait, table[key] = decide(tat, now, rate, burst)
        return wait
