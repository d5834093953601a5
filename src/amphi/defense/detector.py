"""Surge or attack? Pure: fed with counts per period, it says, per Space and per node,
normal / surge / attack / surge+attack, with the evidence behind it. No I/O, no clock: the
shield (``amphi.defense.shield``) counts and calls ``update`` every ``period_s``.

What each signal means (rates are per second over the last ``window_s``):

* **follow-through**: of the fresh joins from light addresses whose answer is due, the
  share that came back (fetched media with the token, or polled with the ticket). People
  listen; floods do not.
* **token validity**: valid / all media requests that carry a token. Players hold valid
  tokens; a bad-token flood does not.
* **challenge solve ratio**: solved / issued proof-of-work challenges.
* **heavy joins**: fresh joins from an address that already sent more than ``light_joins``
  in the period. One person joins once; a bot joins again and again.
* **refused**: requests the limits refused (rates, sizes, bad or reused solutions).
* **concentration** (evidence only): share of the join traffic from the five busiest
  network prefixes, and the busiest address's rate. A real surge can be concentrated too
  (a campus, a carrier-grade NAT), so these never decide alone.

    bad joins   heavy joins + refused + light joins that never came back + challenges not solved
    bad tokens  invalid media tokens
    surge       light joins/s >= surge_join_rate, and follow-through >= 0.5 (people come back at
                once: a flood's follow-through is unknown, then 0, never high)
    attack      bad joins/s >= attack_rate and >= attack_share of the join endpoint's traffic,
                or bad tokens/s >= attack_rate and >= bad_token_share of the media requests
                (a share of the media, not of everything: an audience makes many requests)

Hysteresis, for each sign on its own: "surge" (or "attack") comes on after ``enter_after``
periods in a row that show it, and goes off after ``leave_after`` periods in a row that do
not; the label is what is on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field, fields

from amphi.core.config import DefenseConfig

NORMAL, SURGE, ATTACK, BOTH = "normal", "surge", "attack", "surge+attack"
FOLLOW_THROUGH_MIN = 0.5


@dataclass
class Counts:
    """What the shield saw in one period, for one Space (or the whole node)."""

    fresh_joins: int = 0  # joins without a ticket or token that reached admission
    light_joins: int = 0  # ... of them from light addresses
    polls: int = 0
    renewals: int = 0
    refused: int = 0  # by the limits, sizes, bad or reused solutions
    challenges: int = 0  # proof-of-work challenges issued
    solved: int = 0
    media_valid: int = 0  # media requests whose token checked out
    media_invalid: int = 0  # ... and whose token did not (missing, forged, expired, foreign)
    followed: int = 0  # light joins due this period that came back ...
    unfollowed: int = 0  # ... and that did not
    # node level only (evidence): the busiest address and prefixes of the period
    addresses: int = 0
    top_address_requests: int = 0
    top_prefixes_share: float = 0.0

    def add(self, other: Counts) -> None:
        for f in fields(self):
            if f.name in ("addresses", "top_address_requests", "top_prefixes_share"):
                setattr(self, f.name, max(getattr(self, f.name), getattr(other, f.name)))
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Verdict:
    label: str = NORMAL
    since: float | None = None  # when the current label began
    raw: str = NORMAL  # what the last period alone said
    evidence: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _label(surge: bool, attack: bool) -> str:
    return BOTH if surge and attack else SURGE if surge else ATTACK if attack else NORMAL


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 3) if den else None


class Detector:
    """One scope's verdicts (a Space, or the node). ``update`` once per period."""

    def __init__(self, cfg: DefenseConfig) -> None:
        self.cfg = cfg
        self._periods: deque[Counts] = deque(maxlen=max(1, round(cfg.detector_window_s / cfg.detector_period_s)))
        self.verdict = Verdict()
        self._on = {SURGE: False, ATTACK: False}
        self._streak = {SURGE: 0, ATTACK: 0}  # periods in a row that disagree with the sign's state

    def update(self, counts: Counts, now: float) -> tuple[str, str] | None:
        """Takes one period's counts; returns (old, new) when the label changes."""
        cfg = self.cfg
        self._periods.append(counts)
        w = Counts()
        for c in self._periods:
            w.add(c)
        seconds = len(self._periods) * cfg.detector_period_s
        follow = _ratio(w.followed, w.followed + w.unfollowed)
        heavy = w.fresh_joins - w.light_joins
        unsolved = max(0, w.challenges - w.solved)
        bad = heavy + w.refused + w.unfollowed + unsolved
        traffic = w.fresh_joins + w.polls + w.renewals + w.refused + w.challenges + w.unfollowed
        media = w.media_valid + w.media_invalid
        light_rate = w.light_joins / seconds
        bad_rate = (bad + w.media_invalid) / seconds
        surge = light_rate >= cfg.surge_join_rate and follow is not None and follow >= FOLLOW_THROUGH_MIN
        attack = (bad / seconds >= cfg.attack_rate and bad >= cfg.attack_share * traffic) or (
            w.media_invalid / seconds >= cfg.attack_rate and w.media_invalid >= cfg.bad_token_share * media)
        raw = _label(surge, attack)
        evidence: dict[str, object] = {
            "window_s": seconds,
            "fresh_joins_per_s": round(w.fresh_joins / seconds, 1),
            "light_joins_per_s": round(light_rate, 1),
            "heavy_joins_per_s": round(heavy / seconds, 1),
            "follow_through": follow,
            "token_validity": _ratio(w.media_valid, w.media_valid + w.media_invalid),
            "challenge_solve_ratio": _ratio(w.solved, w.challenges),
            "refused_per_s": round(w.refused / seconds, 1),
            "bad_per_s": round(bad_rate, 1),
            "bad_join_share": _ratio(bad, traffic),
            "request_mix": {k: _ratio(v, traffic + media) for k, v in (
                ("fresh_joins", w.fresh_joins), ("polls", w.polls), ("renewals", w.renewals),
                ("challenges", w.challenges), ("refused", w.refused), ("media", media))},
            "top_address_per_s": round(w.top_address_requests / cfg.detector_period_s, 1),
            "top_prefixes_share": round(w.top_prefixes_share, 3),
            "addresses": w.addresses,
        }
        v = self.verdict
        v.raw, v.evidence = raw, evidence
        for sign, seen in ((SURGE, surge), (ATTACK, attack)):
            if seen == self._on[sign]:
                self._streak[sign] = 0
                continue
            self._streak[sign] += 1
            if self._streak[sign] >= (self.cfg.enter_after if seen else self.cfg.leave_after):
                self._on[sign], self._streak[sign] = seen, 0
        label = _label(self._on[SURGE], self._on[ATTACK])
        if label == v.label:
            return None
        old, v.label, v.since = v.label, label, now
        return old, label

    @property
    def pressure(self) -> float:
        """Bad requests per second over the attack threshold (0 when calm)."""
        bad = self.verdict.evidence.get("bad_per_s", 0.0)
        return float(bad) / self.cfg.attack_rate if isinstance(bad, (int, float)) else 0.0
