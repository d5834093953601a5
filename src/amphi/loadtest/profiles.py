"""Arrival schedules: who arrives when, and who leaves or drops. Pure (seeded randomness).

    ramp       arrivals evenly spread over ``ramp_s``
    surge      everyone within ``ramp_s`` of T0, most in the first moments (a scheduled start):
               half-normal arrival times, sigma = ramp_s / 3, cut at ramp_s
    poisson    steady random arrivals at listeners / ramp_s per second
    churn      ``listeners`` places: each is taken by a session that stays an exponential
               time (mean ``stay_s``), leaves, and is taken again after an exponential gap
               (mean ``gap_s``) until the run ends; more sessions than places
    reconnect  a ramp, then at ``drop_at_s`` every connection drops at once; each listener
               comes back after the client's backoff (``backoff_s``) and renews its seat

Attackers (``--attack``) are not sessions: they run in a process of their own, mixed into
any of these (``amphi.loadtest.attack``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from amphi.control.admission import poll_after

PROFILES = ("ramp", "surge", "poisson", "churn", "reconnect")


@dataclass(frozen=True, slots=True)
class Session:
    """One listener's visit. Times are seconds from T0."""

    arrive_s: float
    leave_s: float | None = None  # leaves on purpose (POST leave) at this time
    drop_s: float | None = None  # its connection drops at this time; it comes back with backoff


def schedule(profile: str, listeners: int, *, duration_s: float, ramp_s: float, seed: int = 1,
             stay_s: float | None = None, gap_s: float = 1.0, drop_at_s: float | None = None) -> list[Session]:
    """The sessions of a run, sorted by arrival."""
    if listeners < 0 or duration_s <= 0 or ramp_s < 0:
        raise ValueError("listeners >= 0, duration_s > 0 and ramp_s >= 0 are required")
    rng = random.Random(seed)
    if profile == "ramp":
        out = [Session(ramp_s * i / listeners) for i in range(listeners)]
    elif profile == "surge":
        sigma = ramp_s / 3
        out = [Session(min(ramp_s, abs(rng.gauss(0.0, sigma)))) for _ in range(listeners)]
    elif profile == "poisson":
        rate = listeners / ramp_s if ramp_s > 0 else float("inf")
        t, out = 0.0, []
        for _ in range(listeners):
            out.append(Session(t))
            t += rng.expovariate(rate) if rate != float("inf") else 0.0
    elif profile == "churn":
        mean_stay = stay_s if stay_s is not None else max(1.0, (duration_s - ramp_s) / 3)
        out = []
        for _ in range(listeners):
            t = rng.uniform(0.0, ramp_s)
            while t < duration_s:
                leave = t + rng.expovariate(1.0 / mean_stay)
                out.append(Session(t, leave if leave < duration_s else None))
                t = leave + rng.expovariate(1.0 / gap_s)
    elif profile == "reconnect":
        drop = drop_at_s if drop_at_s is not None else ramp_s + (duration_s - ramp_s) / 3
        if drop <= ramp_s or drop >= duration_s:
            raise ValueError(f"the drop ({drop:g} s) must come after the ramp ({ramp_s:g} s) and before the end")
        out = [Session(ramp_s * i / listeners, drop_s=drop) for i in range(listeners)]
    else:
        raise ValueError(f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")
    out.sort(key=lambda s: s.arrive_s)
    return out


def backoff_s(attempt: int, rng: random.Random, *, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """A client's reconnect delay before attempt ``attempt`` (0-based): "full jitter",
    uniform in [0, min(cap, base * 2**attempt)], so a crowd that dropped together does not
    come back together."""
    return rng.uniform(0.0, min(cap_s, base_s * (2 ** min(attempt, 30))))


def header_retry_s(value: str | None) -> float:
    """Seconds a client waits for a 429/503 with this Retry-After header (whole seconds from
    Amphi; 1 s if missing or unreadable, 0.2 s at least)."""
    try:
        return max(0.2, float(value if value is not None else "1"))
    except ValueError:
        return 1.0


def line_retry_s(poll: dict[str, float], position: int, estimate: float | None, rng: random.Random) -> float:
    """When a waiting client reads the line document again: as the server would advise it
    (``poll_after``, stretched by the node's ladder, jittered: the document's ``poll``), plus
    up to 10 % more, as ``retry_delay_s``."""
    base = poll_after(position, estimate, poll["min_s"], poll["max_s"]) * poll.get("stretch", 1.0)
    j = poll.get("jitter", 0.0)
    return retry_delay_s(base * rng.uniform(1 - j, 1 + j), rng)


def retry_delay_s(retry_after_s: float, rng: random.Random) -> float:
    """When a waiting client polls again: the server's retry_after (already jittered by the
    server) plus up to 10 % more, never earlier."""
    return retry_after_s * rng.uniform(1.0, 1.1)
