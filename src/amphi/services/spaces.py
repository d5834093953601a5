"""Spaces: create, start, end and schedule them, and run their programs.

A Space's lifecycle (``amphi.control.spaces``, pure) drives its program: the pipeline
(``amphi.media.pipeline``) starts on first need (a listener seated, the host connecting,
the start), switches from hold music to the live mix at the start, and ends with the
Space, its recording published the instant it ends. This is where the control plane and
the media plane meet for a Space's program; ``amphi.services.rooms`` is where they meet for
its stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Protocol

from amphi.control.directory import Directory
from amphi.control.health import Governor
from amphi.control.leases import ALONE
from amphi.control.spaces import Space, SpaceRegistry, SpaceState
from amphi.control.store import Store
from amphi.core.config import Config
from amphi.core.errors import Conflict, HostedElsewhere, NotFound, Unavailable
from amphi.defense.shield import Shield
from amphi.media.pipeline import Pipeline
from amphi.media.recorder import Recording
from amphi.media.recordings import Recordings
from amphi.media.segmenter import Resume
from amphi.services.rooms import Rooms

log = logging.getLogger(__name__)

SCHEDULER_PERIOD_S = 0.25


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class SpaceStatus:
    """What anyone may know of a Space (``GET /api/spaces/<id>``)."""

    id: str
    title: str
    state: str
    starts_at: str | None
    started_at: str | None
    ended_at: str | None
    end_reason: str | None
    ended_abnormally: bool
    listeners: int
    peak_listeners: int
    waiting: int
    admitted_total: int
    seats_offered: int
    degradation: dict[str, object]
    detector: dict[str, object]  # defense: surge / attack, with evidence
    listen_url: str
    recorded_s: float | None
    replay: str | None
    download: str | None
    program_failure: str | None  # a pipeline task that crashed, and why
    dead_air_s: float  # the hosts are alerted after this long of dead air (docs/sound.md)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Spaces:
    def __init__(self, cfg: Config, registry: SpaceRegistry, store: Store, directory: Directory,
                 governor: Governor, shield: Shield, rooms: Rooms, *, wake: Callable[[], None]) -> None:
        self.cfg = cfg
        self.registry = registry
        self._store = store
        self._directory = directory
        self._governor = governor
        self._shield = shield
        self._rooms = rooms
        self._wake = wake  # the admitter should look again (early arrivals were drawn into line)
        self.pipelines: dict[str, Pipeline] = {}
        self.recordings = Recordings(registry.dir, cfg.media)  # ended ones, bounded, read off the loop
        self._lock = asyncio.Lock()  # serialises lifecycle changes
        self.gate: Gate = Alone()  # who may publish which Space (services/failover.py in a cluster)
        self.orphans: list[Space] = []  # found live at start-up in a cluster: their standby may carry them on

    async def open(self) -> None:
        """Loads stored Spaces; closes the recordings of those a crash cut off; publishes them.
        In a cluster a Space found live is not ended here: ``orphans`` (services/failover.py)."""
        alone = self.cfg.cluster.redis_url is None
        for space in self.registry.load(end_live=alone):
            if not alone:
                self.orphans.append(space)
                continue
            await self._finalize_abnormal(space)
        for space in self.registry.all():
            await self._store.publish(space)

    async def _finalize_abnormal(self, space: Space) -> None:
        rec = await self.recordings.get(space.id)
        await asyncio.to_thread(rec.finalize)
        log.warning("space %s ended abnormally; %.1f s of recording kept", space.id, rec.duration)

    async def end_orphan(self, space: Space) -> None:
        """A Space found live at start-up that no other node carried on: ended as abnormal."""
        self.registry.adopt(space)
        self.registry.transition(space, SpaceState.ENDED, reason="abnormal")
        await self._finalize_abnormal(space)
        await self._store.publish(space)

    # -- take-over (services/failover.py) --------------------------------------------------------

    async def adopt(self, space: Space, recording: Recording, resume: Resume | None) -> Pipeline:
        """This node takes the Space over: its program continues from ``resume`` (the copy this
        node kept as its standby), its recording goes on in ``recording``."""
        async with self._lock:
            self.registry.adopt(space)
            pipeline = Pipeline(space.id, self.cfg.media, recording, live=True, resume=resume)
            self.pipelines[space.id] = pipeline
            self.recordings.forget(space.id)
            await pipeline.start()
        await self._rooms.restore(space.id)  # the stage its host saved (docs/stage.md)
        await self._store.publish(space)
        return pipeline

    async def abandon(self, space_id: str) -> None:
        """Another node hosts the Space now (this one lost its lease): its program stops without
        ending the Space, speakers are hung up, and it is no longer this node's."""
        async with self._lock:
            pipeline = self.pipelines.pop(space_id, None)
            self.registry.forget(space_id)
            self._store.forget(space_id)
        await self._rooms.close(space_id, moved=True)
        if pipeline is not None:
            await pipeline.abandon()

    async def close(self) -> None:
        """Ends the live programs (their recordings close with reason "shutdown")."""
        for space_id, pipeline in list(self.pipelines.items()):
            space = self.registry.get(space_id)
            if space.state is SpaceState.LIVE:
                self.registry.transition(space, SpaceState.ENDED, reason="shutdown")
                with contextlib.suppress(Unavailable):  # the others learn it ended (no standby takes it on)
                    await self._store.publish(space)
                    await self._store.release([space_id])
            await pipeline.stop()

    # -- lifecycle ----------------------------------------------------------------------------

    async def create(self, title: object, starts_at: object = None, dead_air_s: object = None) -> tuple[Space, str]:
        space, key = self.registry.create(title, starts_at, dead_air_s)
        await self._store.publish(space)
        return space, key

    async def start(self, space: Space) -> None:
        async with self._lock:
            self.registry.transition(space, SpaceState.LIVE)  # raises, naming the state
            drawn = await self._store.draw(space.id)
            if drawn:
                log.info("space %s: %d early arrivals drawn into line in random order", space.id, drawn)
                self._wake()
            pipeline = self.pipelines.get(space.id)
            if pipeline is None:
                await self.program(space)  # born live: no hold audio to cut away
            else:
                pipeline.go_live()  # listeners already hear hold music: switch at the next boundary
        await self.gate.claim(space.id)  # its lease, before the others see it live (services/failover.py)
        await self._store.publish(space)

    async def end(self, space: Space) -> None:
        async with self._lock:
            self.gate.check_publishing(space.id)  # a node that lost the lease does not end it
            self.registry.transition(space, SpaceState.ENDED, reason="host")
            pipeline = self.pipelines.get(space.id)
        await self._rooms.close(space.id)
        if pipeline is not None:
            await pipeline.end()
            self.recordings.put(space.id, pipeline.recording)  # the replay, without reading it back
        self.registry.record_peak(space, (await self._store.counts(space.id)).peak_listeners)
        self.registry.save(space)
        await self._store.publish(space)
        await self._store.close_space(space.id)
        await self._store.release([space.id])
        self.pipelines.pop(space.id, None)
        self._shield.forget_space(space.id)  # defense: per-Space counters end with it

    async def this_node(self, node_id: str, path: str) -> None:
        """Returns if ``node_id`` is this node; else the call goes to that node (HostedElsewhere:
        forwarded there), or 404 if no live node has that id."""
        if node_id != self.cfg.node_id:
            urls = {str(n.get("id")): str(n.get("url")) for n in await self._store.nodes()}
            if node_id not in urls:
                raise NotFound(f"no live node {node_id!r}")
            raise HostedElsewhere(f"node {node_id} does it itself", location=urls[node_id] + path)

    async def drain(self) -> dict[str, object]:
        """This node hands every live Space it hosts to its standby, with no gap (docs/cluster.md)."""
        return await self.gate.drain()

    def authorize_host(self, space: Space, authorization: str | None) -> None:
        """401/403 unless ``Authorization: Bearer HOST_KEY`` (the hash travels with the Space)."""
        self.registry.authorize_host(space, authorization)

    def set_pow(self, space: Space, mode: object) -> dict[str, object]:
        """The host's proof-of-work switch for its Space (docs/defense.md)."""
        self._shield.set_space_pow(space.id, mode, time.time())
        return self._shield.status(space.id)

    async def schedule(self) -> None:
        """Starts Spaces at their ``starts_at``."""
        while True:
            for space in self.registry.due():
                try:
                    await self.start(space)
                except Conflict:
                    pass
            await asyncio.sleep(SCHEDULER_PERIOD_S)

    # -- programs -------------------------------------------------------------------------------

    async def program(self, space: Space) -> Pipeline:
        """The Space's running pipeline, started on first need (a join, a speaker, the start)."""
        if space.state is SpaceState.ENDED:
            raise Conflict(f"Space {space.id} has ended")
        pipeline = self.pipelines.get(space.id)
        if pipeline is None:
            # a Space not ended has nothing on disk yet (one a crash cut off is ended at load)
            recording = Recording(self.registry.dir(space.id), self.cfg.media)
            pipeline = Pipeline(space.id, self.cfg.media, recording, live=space.state is SpaceState.LIVE)
            self.pipelines[space.id] = pipeline
            self.recordings.forget(space.id)
            await pipeline.start()
        return pipeline

    async def seated(self, space: Space) -> None:
        """A listener has a seat: this node starts the program if it hosts the Space
        (elsewhere, the hosting node starts it on the first request)."""
        if self.registry.find(space.id) is not None:
            await self.program(space)

    async def replay(self, space: Space) -> tuple[str | None, str | None]:
        """An ended Space's VOD playlist and download, where its node serves them."""
        status = await self.status(space)
        return status.replay, status.download

    # -- what the origin serves (amphi.web.origin.MediaSource) ----------------------------------

    async def media(self, space_id: str) -> tuple[Pipeline | None, Recording]:
        """Its running pipeline (started if a player asks before anyone joined, e.g. after
        a restart), or None once ended; and its recording."""
        space = self.registry.find(space_id)
        if space is None:  # another node's, or being taken over by this one (services/failover.py)
            await self.gate.elsewhere(space_id)  # raises Misdirected, Unavailable or NotFound
            space = self.registry.get(space_id)  # taken over meanwhile
        if space.state is not SpaceState.ENDED:
            self.gate.check_publishing(space_id)  # an ended Space's replay is no lease's
            pipeline = await self.program(space)
            return pipeline, pipeline.recording
        ending = self.pipelines.get(space_id)  # ended, its recording still closing
        return None, ending.recording if ending is not None else await self.recordings.get(space_id)

    def ended(self, space_id: str) -> bool:
        return self.registry.get(space_id).state is SpaceState.ENDED

    def check_publishing(self, space_id: str) -> None:
        self.gate.check_publishing(space_id)

    def may_publish(self, space_id: str) -> bool:
        return self.gate.may_publish(space_id)

    def optional_work_allowed(self) -> None:
        """Degradation rung 1 switches off serving replays and downloads."""
        if self._governor.optional_work_off:
            raise Unavailable("replays are paused while the node is under pressure",
                              retry_after_s=random.uniform(20, 40))

    # -- status ---------------------------------------------------------------------------------

    async def status(self, space: Space) -> SpaceStatus:
        base, media = self.cfg.http.base_url, self._directory.origin_of(space.id)[0]
        counts = await self._store.counts(space.id)
        ended = space.state is SpaceState.ENDED
        failure = None
        if self.registry.find(space.id) is not None:
            self.registry.record_peak(space, counts.peak_listeners)
            pipeline = self.pipelines.get(space.id)
            rec = pipeline.recording if pipeline is not None else await self.recordings.get(space.id)
            recorded_s: float | None = round(rec.duration, 3)
            has_replay = ended and rec.finalized and bool(rec.entries)
            failure = pipeline_failure(pipeline)
        else:  # hosted elsewhere: its recording is there
            recorded_s, has_replay = None, ended
            space.peak_listeners = max(space.peak_listeners, counts.peak_listeners)
        return SpaceStatus(
            id=space.id, title=space.title, state=space.state.value, starts_at=iso(space.starts_at),
            started_at=iso(space.started_at), ended_at=iso(space.ended_at), end_reason=space.end_reason,
            ended_abnormally=space.end_reason == "abnormal", listeners=counts.listeners,
            peak_listeners=space.peak_listeners, waiting=counts.waiting, admitted_total=counts.admitted_total,
            seats_offered=counts.reserved, degradation=self._governor.status(),
            detector=self._shield.status(space.id), listen_url=f"{base}/s/{space.id}", recorded_s=recorded_s,
            replay=f"{media}/media/{space.id}/vod.m3u8" if has_replay else None,
            download=f"{media}/media/{space.id}/download.m4a" if has_replay else None,
            program_failure=failure, dead_air_s=self._rooms.dead_air_s(space))


class Gate(Protocol):
    """Who may publish a Space's media (``amphi.services.failover.Failover`` in a cluster)."""

    def may_publish(self, space_id: str) -> bool: ...

    def check_publishing(self, space_id: str) -> None: ...  # raises Misdirected when another node hosts it

    async def elsewhere(self, space_id: str) -> None: ...  # media of a Space not here: raises, or waits for a take-over

    async def claim(self, space_id: str) -> None: ...  # this node goes live with the Space: its lease now

    async def drain(self) -> dict[str, object]: ...  # hands every live Space to its standby


class Alone:
    """One node: it publishes every Space it has."""

    def may_publish(self, space_id: str) -> bool:
        return True

    def check_publishing(self, space_id: str) -> None:
        pass

    async def elsewhere(self, space_id: str) -> None:
        raise NotFound(f"no Space {space_id!r}")

    async def claim(self, space_id: str) -> None:
        pass

    async def drain(self) -> dict[str, object]:
        raise Conflict(ALONE)


def pipeline_failure(pipeline: Pipeline | None) -> str | None:
    """A crashed task of the Space's program, and why (the log has its traceback)."""
    if pipeline is None or not pipeline.failures:
        return None
    return "; ".join(f"{name}: {why}" for name, why in pipeline.failures.items())
