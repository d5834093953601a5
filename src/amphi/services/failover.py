"""Failover: a live Space outlives the node that hosts it (``--redis``; docs/cluster.md).

Every live Space has a host (it holds the Space's lease, ``amphi.control.leases``) and a
standby. One loop, every ``RENEW_EVERY_S``:

    host      renews the leases of every Space it has, in one call; a lease another node
              holds now means this node was replaced (it was stopped, or cut off): the Space's
              program stops without ending, its speakers are told it moved, it is forgotten
    standby   offers to stand by each live Space other nodes host; for those it stands by, it
              keeps a copy (``amphi.media.replica``: the segments, written to its own
              recording, and the live window); when a lease lapses it takes it and carries the
              Space on from the copy (``Spaces.adopt``): same playlists, the media sequence
              continuing after one EXT-X-DISCONTINUITY
    restart   a Space this node found live at start-up (its own crash) is left to its standby;
              if no node has taken it over ``ORPHAN_WAIT_S`` later, it is ended as abnormal

The media of a Space this node does not host is answered ``421`` naming its host
(``x-amphi-host``: edges fetch from there, edge/vcl.py), or held while this node takes it over.
This is where the control plane (leases, the directory) and the media plane (the copy, the
resumed program) meet for a Space that changes hands; the composition root wires it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field

from amphi.control.leases import (
    ALONE,
    LEASE_TTL_S,
    RECLAIM_S,
    RENEW_EVERY_S,
    STANDBY_TTL_S,
    TAKEOVER_WAIT_S,
    Leases,
)
from amphi.control.spaces import Space, SpaceRegistry, SpaceState
from amphi.control.store import Store
from amphi.control.tokens import Signer
from amphi.core.config import Config
from amphi.core.errors import Conflict, Misdirected, NotFound, Unavailable
from amphi.media.recorder import Recording
from amphi.media.replica import Replica
from amphi.services.spaces import Spaces

log = logging.getLogger(__name__)

ORPHAN_WAIT_S = LEASE_TTL_S + 3.0  # a Space found live at start-up is ended if nobody carried it on by then
HANDOFF_COPY_S = 3.0  # a standby handed a Space waits this long for the old host's last segment
HANDOFF_WAIT_S = 5.0  # the old host serves what it made until the new one is in the directory, this long at most


@dataclass
class FailoverStats:
    takeovers: int = 0  # Spaces this node took over from a node that stopped renewing
    handed_over: int = 0  # Spaces this node handed to their standbys (drain)
    handed_to_me: int = 0  # Spaces other nodes handed to this one
    fenced: int = 0  # Spaces this node lost to another node (it had stopped, or been cut off)
    standing_by: int = 0  # Spaces this node keeps a copy of
    renew_failures: int = 0  # renewals Redis did not answer
    last_takeover_s: float | None = None  # from taking the lease to the program running
    held: dict[str, float] = field(default_factory=dict)  # space -> seconds of publishing left


@dataclass
class _Standby:
    space: Space  # its record as last read (to carry it on should Redis lose it)
    replica: Replica  # writes the standby's own recording (replica.recording)
    task: asyncio.Task[None]
    origin: str  # the host it copies from


class Failover:
    def __init__(self, cfg: Config, registry: SpaceRegistry, store: Store, spaces: Spaces, signer: Signer) -> None:
        self._cfg = cfg
        self._node = cfg.node_id
        self._registry = registry
        self._store = store
        self._spaces = spaces
        self._credential = signer.edge_credential(f"standby-{cfg.node_id}")
        self.leases = Leases(alone=cfg.cluster.redis_url is None)
        self.stats = FailoverStats()
        self._standbys: dict[str, _Standby] = {}
        self._taking: dict[str, asyncio.Event] = {}  # take-overs in progress: media requests wait for them
        self._holders: dict[str, str] = {}  # another node's live Space -> its lease holder, as last seen
        self._handing: dict[str, str] = {}  # Spaces this node is handing over (a drain) -> to whom
        self.draining = False  # drained: it stands by for no one
        self._seen_held: set[str] = set()  # Spaces stood by whose lease this node has seen held
        self._back_at: float | None = None  # monotonic time Redis answered again after being away
        self._orphans_until = time.monotonic() + ORPHAN_WAIT_S

    # -- the gate the origin asks (amphi.services.spaces.Gate) --------------------------------

    def may_publish(self, space_id: str) -> bool:
        return self._registry.find(space_id) is not None and (
            space_id in self._handing or self.leases.may_publish(space_id, time.monotonic()))

    def check_publishing(self, space_id: str) -> None:
        if space_id in self._handing or self.leases.may_publish(space_id, time.monotonic()):
            return  # handing over: its program has stopped, what it serves is what the new host copies
        holder = self._holders.get(space_id)
        if holder and holder != self._node:
            raise Misdirected(f"Space {space_id} is hosted by node {holder} now", host=holder)
        raise Unavailable(f"Space {space_id} is changing hosts", retry_after_s=1)

    def stands_by(self, space_id: str) -> bool:
        """This node keeps a copy of the Space, or is taking it over."""
        return space_id in self._standbys or space_id in self._taking

    async def claim(self, space_id: str) -> None:
        """This node starts hosting the Space (it goes live): its lease is taken now, before the
        others see it live, so no standby mistakes a lease not yet taken for a lapsed one."""
        if self.leases.alone:
            return
        sent = time.monotonic()
        try:
            holder = (await self._store.renew_leases([space_id], LEASE_TTL_S))[space_id]
        except Unavailable:
            return  # Redis away: the loop takes it when it is back; no one else can before
        if holder == "":
            self.leases.held(space_id, sent)

    async def elsewhere(self, space_id: str) -> None:
        """Media asked of this node for a Space it does not host: waits for a take-over in
        progress (then returns), else says where the Space is (421) or that it is moving (503)."""
        if space_id in self._standbys or space_id in self._taking:
            # this node stands by: an edge asks it because the host did not answer. If the host is
            # dead its lease lapses within LEASE_TTL_S and this node takes over: the request waits
            # for that rather than failing (a player such as ffmpeg stops at a failed reload)
            taking = self._taking.setdefault(space_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TAKEOVER_WAIT_S):
                    await taking.wait()
            if self._registry.find(space_id) is not None:
                return
            if not taking.is_set() and self._taking.get(space_id) is taking:
                del self._taking[space_id]  # no take-over came: the host is alive (said below)
        found = await self._store.lookup(space_id)
        if found is None:
            raise NotFound(f"no Space {space_id!r}")
        space, _ = found
        if space.state is SpaceState.ENDED:
            raise NotFound(f"Space {space_id} has ended on another node; its replay is there")
        node = (self._store.origin(space_id) or ("", ""))[1]
        holder = self._holders.get(space_id) or node
        if holder and holder != self._node:
            raise Misdirected(f"Space {space_id} is hosted by node {holder}", host=holder)
        raise Unavailable(f"Space {space_id} is changing hosts", retry_after_s=1)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        if self.leases.alone:
            return  # one node: nothing to renew, no one to stand by for
        while True:
            sent = time.monotonic()
            try:
                await self._tick(sent)
                if self.leases.away:
                    log.info("redis answers again: leases renewed")
                    self._back_at = sent
                self.leases.away = False
            except Unavailable:
                self.stats.renew_failures += 1
                if not self.leases.away:
                    log.warning("leases not renewed: redis is unreachable; Spaces held are kept (no other node "
                                "can take them while it is away)")
                self.leases.away = True
            except Exception:  # a bug must not end failover
                log.exception("failover pass failed")
            now = time.monotonic()
            self.stats.held = {s: round(self.leases.valid_for(s, now), 3) for s in self._registry_live()}
            await asyncio.sleep(max(0.0, RENEW_EVERY_S - (now - sent)))

    def _registry_live(self) -> list[str]:
        return [s.id for s in self._registry.all() if s.state is not SpaceState.ENDED]

    async def _tick(self, sent: float) -> None:
        hosted = [s for s in self._registry_live() if s not in self._handing]  # drain() finishes those itself
        self.leases.keep({*hosted, *self._handing})
        answers = await self._store.renew_leases(hosted, LEASE_TTL_S)
        for space_id, holder in answers.items():
            if holder == "":
                self.leases.held(space_id, sent)
            else:
                await self._fence(space_id, holder)
        await self._orphans()
        await self._stand_by(sent)

    async def _fence(self, space_id: str, holder: str) -> None:
        self.leases.drop(space_id)
        self._holders[space_id] = holder
        self.stats.fenced += 1
        log.warning("space %s: node %s holds its lease now; this node stops hosting it", space_id, holder)
        await self._spaces.abandon(space_id)

    async def _orphans(self) -> None:
        """Spaces this node found live at start-up: forgotten once another node holds them,
        ended as abnormal if none has by ``ORPHAN_WAIT_S``."""
        orphans = self._spaces.orphans
        if not orphans:
            return
        held = await self._store.holders([s.id for s in orphans])
        late = time.monotonic() >= self._orphans_until
        for space in list(orphans):
            holder = held.get(space.id, ("", "", None))[0]
            if holder and holder != self._node:
                log.warning("space %s: carried on by node %s while this node was down", space.id, holder)
                orphans.remove(space)
            elif late:
                orphans.remove(space)
                await self._spaces.end_orphan(space)

    async def _stand_by(self, sent: float) -> None:
        if self.draining:
            return
        others = {s.id: (s, url) for s, url, _ in await self._store.live_elsewhere() if s.state is SpaceState.LIVE}
        for space_id, kept in self._standbys.items():
            if space_id not in others and await self._store.published_by(space_id) is None:
                # its record is gone: Redis restarted empty. A live host puts it back (and takes its
                # lease back); a dead one cannot, so this node keeps standing by, and carries it on
                others[space_id] = (kept.space, kept.origin)
        roles = await self._store.stand_by(list(others), STANDBY_TTL_S)
        self._holders = {space_id: holder for space_id, (_, holder) in roles.items()}  # the live ones only
        for space_id, (standby, holder) in roles.items():
            if holder == self._node and space_id in self._standbys:  # handed to this node (a drain)
                await self._take_over(others[space_id][0], sent, handed=True)
                continue
            if standby != self._node:
                await self._drop_standby(space_id)
                continue
            space, url = others[space_id]
            kept = self._standbys.get(space_id)
            if kept is not None:
                kept.space = space  # the newest record (a title, a peak)
            if kept is not None and kept.origin != url:
                await self._drop_standby(space_id)
                kept = None
            if kept is None:
                self._start_standby(space, url)
            if holder:
                self._seen_held.add(space_id)
            elif space_id in self._seen_held and (self._back_at is None or sent - self._back_at >= RECLAIM_S):
                await self._take_over(space, sent)  # a lease this node saw held has lapsed
        for space_id in [s for s in self._standbys if s not in roles]:
            await self._drop_standby(space_id)
        self.stats.standing_by = len(self._standbys)

    def _start_standby(self, space: Space, origin: str) -> None:
        recording = Recording(self._registry.dir(space.id), self._cfg.media)
        replica = Replica(space.id, self._cfg.media, recording, origin, self._credential)
        task = asyncio.create_task(replica.run(), name=f"replica:{space.id}")
        self._standbys[space.id] = _Standby(space, replica, task, origin)
        log.info("space %s: standing by (copying from %s)", space.id, origin)

    async def _drop_standby(self, space_id: str) -> None:
        self._seen_held.discard(space_id)
        kept = self._standbys.pop(space_id, None)
        if kept is None:
            return
        kept.task.cancel()
        await asyncio.wait({kept.task})
        log.info("space %s: no longer standing by", space_id)

    async def _take_over(self, space: Space, sent: float, *, handed: bool = False) -> None:
        """Carries the Space on from this node's copy: after a lapsed lease (the host died:
        one discontinuity), or a lease handed to it (a drain: once the copy has the old host's
        last segment, with no gap)."""
        last = None
        if handed:
            last = (await self._store.holders([space.id]))[space.id][2]
        elif not await self._store.acquire(space.id, LEASE_TTL_S, RECLAIM_S):
            return
        t0 = time.monotonic()
        self.leases.held(space.id, sent)
        taking = self._taking.setdefault(space.id, asyncio.Event())
        kept = self._standbys.pop(space.id)
        try:
            seamless = last is not None and await kept.replica.copied(last, HANDOFF_COPY_S)
            if handed and not seamless:
                log.warning("space %s: handed over, but the copy lacks segment %s: resuming after a gap", space.id, last)
            kept.task.cancel()
            await asyncio.wait({kept.task})
            resume = kept.replica.resume_point(gap=not seamless)
            await self._spaces.adopt(space, kept.replica.recording, resume)
        finally:
            taking.set()
            self._taking.pop(space.id, None)
        self._holders.pop(space.id, None)
        self._seen_held.discard(space.id)
        if handed:
            self.stats.handed_to_me += 1
        else:
            self.stats.takeovers += 1
        self.stats.last_takeover_s = round(time.monotonic() - t0, 3)
        log.warning("space %s: %s, resumed %s", space.id, "handed over to this node" if handed else "taken over",
                    f"after segment {resume.next_msn - 1}" if resume is not None else "with no copy")

    # -- a planned move (amphi drain) ---------------------------------------------------------

    async def drain(self) -> dict[str, object]:
        """Hands every live Space this node hosts to its standby, with no gap (``amphi drain``,
        ``POST /api/nodes/<id>/drain``, and SIGTERM in a cluster); this node stops standing by
        for others. Each program stops at a part boundary (``Pipeline.hand_off``); the lease goes
        to the standby with the last segment's number; the standby copies that segment and
        continues right after it; this node serves what it made until the standby is the host."""
        if self.leases.alone:
            raise Conflict(ALONE)
        self.draining = True
        for space_id in list(self._standbys):
            await self._drop_standby(space_id)
        live = [s for s in self._registry.all() if s.state is SpaceState.LIVE]
        roles = await self._store.holders([s.id for s in live]) if live else {}
        results = await asyncio.gather(*(self._hand(space, roles[space.id][1]) for space in live))
        moved = [r for r in results if "to" in r]
        kept = [r for r in results if "to" not in r]
        log.info("drained: %d Spaces handed over, %d kept", len(moved), len(kept))
        return {"node": self._node, "moved": moved, "kept": kept}

    async def _hand(self, space: Space, standby: str) -> dict[str, object]:
        pipeline = self._spaces.pipelines.get(space.id)
        if not standby or standby == self._node or pipeline is None:
            return {"id": space.id, "why": "no standby" if pipeline is not None else "no program running"}
        t0 = time.monotonic()
        self._handing[space.id] = standby
        try:
            last = await pipeline.hand_off()
            if not await self._store.hand_over(space.id, standby, last, LEASE_TTL_S):
                return {"id": space.id, "why": "the lease was no longer this node's"}
            deadline = time.monotonic() + HANDOFF_WAIT_S
            while time.monotonic() < deadline and await self._store.published_by(space.id) != standby:
                await asyncio.sleep(0.05)  # the directory names the new host once its program runs
        finally:
            self._handing.pop(space.id, None)
        await self._fence(space.id, standby)
        self.stats.handed_over += 1
        return {"id": space.id, "to": standby, "last_msn": last, "took_s": round(time.monotonic() - t0, 3)}

    def status(self) -> dict[str, object]:
        """``GET /api/node``'s ``failover``: what this node hosts and stands by, and its counters."""
        return {**asdict(self.stats), "standbys": {sid: {"origin": s.origin, **asdict(s.replica.stats)}
                                                   for sid, s in self._standbys.items()}}

    async def close(self) -> None:
        for space_id in list(self._standbys):
            await self._drop_standby(space_id)
