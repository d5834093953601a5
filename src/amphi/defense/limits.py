"""Join limits: per client address, per network prefix and node-wide. Pure: every call takes
``now``; randomness (the jitter of Retry-After) comes from the ``random.Random`` given.

    request ──▶ address GCRA ──▶ prefix GCRA ──▶ (fresh joins only) global join budget ──▶ admission
                  429 address_rate_limited  429 prefix_rate_limited   429 join_budget_spent

Each limit is the one GCRA (``amphi.core.gcra``: ``Gcra``, and ``GcraTable`` for the keyed
ones). The keyed tables are bounded (``max_keys``) and kept in least-recently-seen order:
when a table is full, the key seen longest ago is forgotten. A key whose theoretical arrival time has passed carries no
debt, so forgetting it changes nothing; only a flood from more distinct addresses than the
table holds can make the oldest debts be forgiven, and the prefix table and the global
budget still hold then. The address is charged before the prefix and a refused request is
not charged further down, so one hammering address cannot spend its neighbours' budget
beyond its own.
"""

from __future__ import annotations

import ipaddress
import random
from amphi.core.config import DefenseConfig
from amphi.core.errors import AddressRateLimited, JoinBudgetSpent, PrefixRateLimited, TooManyRequests
from amphi.core.gcra import Gcra, GcraTable, check_budget

RETRY_JITTER = (1.0, 1.5)  # Retry-After = the wait times a random factor in this range
MIN_RETRY_S = 0.5


def prefix_of(address: str) -> str:
    """The network a client address belongs to: IPv4 /24, IPv6 /48 (what one customer or
    one hosting subnet usually has). Anything else is its own prefix."""
    if address.count(".") == 3 and ":" not in address:
        return address.rsplit(".", 1)[0] + ".0/24"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return prefix_of(str(ip.ipv4_mapped))
        return str(ipaddress.ip_network(f"{ip}/48", strict=False))
    return str(ipaddress.ip_network(f"{ip}/24", strict=False))


class KeyedGcra:
    """One GCRA per key at one rate and burst, at most ``max_keys`` of them (least recently
    seen forgotten first): a ``GcraTable`` whose refusals advise one interval at least."""

    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        check_budget(rate, burst)
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.interval = 1.0 / rate
        self._table = GcraTable(max_keys)

    def __len__(self) -> int:
        return len(self._table)

    @property
    def forgotten(self) -> int:  # keys dropped because the table was full
        return self._table.forgotten

    def take(self, key: str, now: float) -> float:
        """0.0 if ``key`` may go now (and charges it), else the seconds until it may (one
        interval at least: a refused client is not told to come back sooner)."""
        wait = self._table.charge(key, self.rate, self.burst, now)
        return max(wait, self.interval) if wait else 0.0


class JoinLimits:
    """The three limits of the join endpoint."""

    def __init__(self, cfg: DefenseConfig, rng: random.Random) -> None:
        self.rng = rng
        self.addresses = KeyedGcra(cfg.address_rate_per_s, cfg.address_burst, cfg.max_tracked)
        self.prefixes = KeyedGcra(cfg.prefix_rate_per_s, cfg.prefix_burst, cfg.max_tracked)
        self.budget = Gcra(cfg.join_rate_per_s, cfg.join_burst)

    def check_client(self, address: str, prefix: str, now: float) -> None:
        """Any request to the join endpoint, before its body is read (``prefix``: ``prefix_of(address)``)."""
        wait = self.addresses.take(address, now)
        if wait:
            raise self._refusal(AddressRateLimited, "too many joins from your address", wait)
        wait = self.prefixes.take(prefix, now)
        if wait:
            raise self._refusal(PrefixRateLimited, "too many joins from your network", wait)

    def check_fresh_join(self, now: float) -> None:
        """A join without a ticket or a token: one more person, from the node's budget.
        Polls and renewals are not charged: seats and places already bound them."""
        if not self.budget.take(now):
            raise self._refusal(JoinBudgetSpent, "the node is taking as many new joins as it can",
                                max(self.budget.wait(now), self.budget.interval))

    def _refusal(self, cls: type[TooManyRequests], what: str, wait: float) -> TooManyRequests:
        retry = max(MIN_RETRY_S, wait) * self.rng.uniform(*RETRY_JITTER)
        return cls(f"{what}; try again in {retry:.1f} s", retry_after_s=round(retry, 2))
