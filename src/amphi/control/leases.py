"""Leases: which node may publish a live Space's media, on this node's own clock. Pure.

In a cluster (``--redis``) every live Space has one *host*, the holder of its lease in Redis
(``control/store/leases.lua``), and one *standby*, the only node that may take the lease once
it lapses (docs/cluster.md). The lease lives ``LEASE_TTL_S`` in Redis and its host renews it
every ``RENEW_EVERY_S``, for all its Spaces in one call.

Redis's clock decides when a lease lapses; the host cannot read it. So the host counts from
the moment it *sent* its last renewal that was answered "held" (Redis cannot have started the
new TTL earlier), on its monotonic clock, and publishes only until ``LEASE_TTL_S - SAFETY_S``
after it. A host stopped (SIGSTOP, a long pause) past that finds itself fenced the instant it
runs again, before it asks anyone: its media answers stop at once, then its next renewal
learns who holds the lease now. The standby takes a lease only once Redis has dropped it, so
the two never publish the same Space at once, as long as the clocks' rates differ by less than
``SAFETY_S`` in ``LEASE_TTL_S`` (20 %).

While Redis cannot be reached, no standby can take a lease either, so the host keeps what it
held (``away``): a Redis restart does not interrupt a Space. When Redis comes back empty, the
hosts take their leases back at their next renewal; a standby may take a lapsed lease only
``RECLAIM_S`` after Redis's keyspace began (its epoch), so a live host always wins that race.
"""

from __future__ import annotations

LEASE_TTL_S = 1.5  # a lease lapses this long after its last renewal ...
RENEW_EVERY_S = 0.25  # ... which comes this often
SAFETY_S = 0.3  # the host stops publishing this long before Redis could let the lease go
STANDBY_TTL_S = 4.5  # a standby that stops renewing its offer is replaced after this
RECLAIM_S = 2.0  # after Redis restarted empty, only hosts take leases back for this long
TAKEOVER_WAIT_S = 3.0  # a media request the standby gets while taking over waits this long
ALONE = ("one node alone has no standby to hand its Spaces to: run several nodes with --redis "
         "(docs/cluster.md)")  # what a drain without a cluster answers (409)


class Leases:
    """This node's leases, by Space: until when (monotonic) it may publish each."""

    def __init__(self, *, alone: bool) -> None:
        self.alone = alone  # one node, no Redis: it holds every lease, for good
        self._until: dict[str, float] = {}
        self.away = False  # Redis unreachable: leases held are kept (no one can take them)

    def held(self, space_id: str, sent: float) -> None:
        """A renewal (or acquisition) sent at monotonic ``sent`` was answered "held"."""
        self._until[space_id] = sent + LEASE_TTL_S - SAFETY_S

    def drop(self, space_id: str) -> None:
        self._until.pop(space_id, None)

    def keep(self, space_ids: set[str]) -> None:
        """Forgets the leases of Spaces no longer hosted (ended, handed over)."""
        for space_id in [s for s in self._until if s not in space_ids]:
            del self._until[space_id]

    def holds(self, space_id: str) -> bool:
        return self.alone or space_id in self._until

    def may_publish(self, space_id: str, now: float) -> bool:
        """True while this node may serve the media of a Space it hosts (``now``: monotonic).
        A Space it has just created or started has no lease yet (the next renewal takes it,
        within ``RENEW_EVERY_S``): no other node can hold one either, so it may."""
        if self.alone:
            return True
        until = self._until.get(space_id)
        return until is None or self.away or now < until

    def valid_for(self, space_id: str, now: float) -> float:
        """Seconds of publishing left (0 once fenced); for the node's status."""
        until = self._until.get(space_id)
        return 0.0 if until is None else max(0.0, until - now)
