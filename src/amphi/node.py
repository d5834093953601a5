"""The composition root: builds one node's parts from config, wires them, supervises their
tasks and shuts them down in order. It decides nothing itself.

    control   registry, store, governor, directory, Listeners (amphi.control)
    media     WebRTC ingest; pipelines and recordings through Spaces (amphi.services)
    services  Spaces (lifecycle, programs), Rooms (the stage), Health, Failover (amphi.services)
    defense   the shield (amphi.defense)
    obs       the observer, a leaf: it gets events and this root's one snapshot (amphi.obs)
    web       the ASGI app over the services (amphi.web)

Lifecycle: new -> open -> closed. ``amphi.server`` stops accepting and drains HTTP, then
calls ``close()``: speakers hung up, live programs ended (their recordings close with reason
"shutdown"), tasks cancelled, timelines closed, the store closed last.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from amphi.control.admission import ADMITTER_PERIOD_S, Admission, SpaceCounts
from amphi.control.apikeys import ApiKeys, book_for
from amphi.control.directory import Directory
from amphi.control.health import Governor
from amphi.control.listeners import Listeners
from amphi.control.spaces import SpaceRegistry, SpaceState
from amphi.control.store import Store
from amphi.control.store.memory import MemoryStore
from amphi.control.tokens import Signer
from amphi.core import keys
from amphi.core.config import Config
from amphi.core.errors import AmphiError, Forbidden, Unauthorized
from amphi.core.tasks import Supervisor
from amphi.defense.shield import Shield
from amphi.media.ingest.webrtc import WebRTCIngest
from amphi.obs.observer import Observer
from amphi.obs.snapshot import NodeSnapshot, SpaceSnapshot
from amphi.services.access import Access
from amphi.services.failover import Failover
from amphi.services.health import Health
from amphi.services.rooms import Rooms
from amphi.services.spaces import Spaces
from amphi.web.app import App


class Node:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.obs = Observer(cfg.node_id)  # obs: metrics, state-change events, timelines, the dashboard's feed
        self.registry = SpaceRegistry(cfg.data_dir / "spaces", on_change=self.obs.space_transition)
        self.signer = Signer(keys.token_key(cfg))
        self.operator_key = keys.operator_key(cfg)
        self.store = _store(cfg, self.signer)
        self.governor = Governor(cfg.admission, seats_cost=not cfg.edges)  # behind edges, seats cost a share of a report
        self.shield = Shield(cfg.defense, self.signer, self.registry.known)  # defense (docs/defense.md)
        self.shield.on_space_verdict = self.obs.detector  # obs: detector changes are events, with evidence
        self.shield.media_elsewhere = bool(cfg.edges)  # behind edges the node does not see listeners' media
        self.ingest = WebRTCIngest(cfg.ice.addresses, silence_timeout_s=cfg.stage.silence_timeout_s,
                                   garbage_timeout_s=cfg.stage.garbage_timeout_s,
                                   announced=dict(zip(cfg.ice.addresses, cfg.ice.announced)))
        self.directory = Directory(cfg, self.registry, self.store)
        self._admission_changed = asyncio.Event()
        wake = self._admission_changed.set
        self.rooms = Rooms(cfg.stage, cfg.http.base_url, self.registry, self.store, self.signer, self.ingest,
                           program=lambda space: self.spaces.program(space), sound=cfg.media.sound)
        self.rooms.on_sound = self.obs.sound  # obs: feedback and dead air are events, metrics, timeline lines
        self.spaces = Spaces(cfg, self.registry, self.store, self.directory, self.governor, self.shield, self.rooms,
                             wake=wake)
        self.failover = Failover(cfg, self.registry, self.store, self.spaces, self.signer)  # --redis: leases, standbys
        self.spaces.gate = self.failover
        self.directory.standing_by = self.failover.stands_by
        self.listeners = Listeners(cfg.admission, self.store, self.governor, self.signer, self.directory,
                                   self.spaces, wake=wake, watch=self._watched)
        self.health = Health(self.listeners, self.obs, cfg.admission.health_period_s)
        # who may create Spaces and manage any Space: API keys (file, or Redis with --redis), the operator key
        self.access = Access(cfg.keys, ApiKeys(book_for(cfg.data_dir, cfg.cluster.redis_url, cfg.cluster.prefix)),
                             self.operator_key, self.store)
        self.app = App(cfg, self.listeners, self.spaces, self.rooms, self.directory, self.shield, self.obs,
                       self.operator_key, self.snapshot, self.access)
        self.obs.state = self
        self.tasks = Supervisor("node")

    async def open(self) -> None:
        await self.spaces.open()
        await self.store.open()
        self.spawn(self.spaces.schedule(), name="scheduler")
        self.spawn(self._admitter(), name="admitter")
        self.spawn(self.health.probe(), name="lag-probe")
        self.spawn(self.health.run(), name="health")
        self.spawn(self.rooms.levels(), name="levels")
        self.spawn(self.rooms.saves(), name="stage-saves")  # --redis: the stages, for a take-over (docs/stage.md)
        self.spawn(self.obs.run(), name="obs-sampler")
        self.spawn(self.shield.run(), name="defense")  # defense: the detector's verdicts
        self.spawn(self.failover.run(), name="failover")  # leases, standbys, take-overs (docs/cluster.md)

    async def close(self) -> None:
        await self.ingest.close_all()
        await self.spaces.close()
        await self.tasks.close()
        await self.failover.close()
        self.obs.close()
        await self.access.close()
        await self.store.close()

    def spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        return self.tasks.spawn(coro, name)

    async def _admitter(self) -> None:
        """Offers free seats to the lines as the rate allows, and releases what ran out."""
        while True:
            _, timeout = await self.listeners.admit(ADMITTER_PERIOD_S)
            self._admission_changed.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._admission_changed.wait()
            except TimeoutError:
                pass

    def _watched(self, space_id: str, seat: str | None, refused: AmphiError | None) -> None:
        """Every media token checked: the detector counts valid and invalid ones."""
        self.shield.media(space_id, seat)  # defense
        if isinstance(refused, (Unauthorized, Forbidden)):
            self.obs.metrics.token_failures.labels(refused.code).inc()  # obs

    # -- the one snapshot obs renders (amphi.obs.snapshot.NodeState) ---------------------------

    def snapshot(self) -> NodeSnapshot:
        store, pipelines = self.store, self.spaces.pipelines
        now = time.time()
        spaces = []
        for space in self.registry.all():
            counts = store.known_counts(space.id)
            if space.state is SpaceState.LIVE or (space.state is SpaceState.SCHEDULED and (
                    space.id in pipelines or counts.listeners or counts.waiting)):
                spaces.append(self._space(space.id, now, counts))
        return NodeSnapshot(
            occupied=store.occupied, waiting=store.waiting, limit=store.limit,
            max_listeners=self.cfg.admission.max_listeners, paused=store.paused,
            degradation=self.governor.status(), speakers=self.ingest.connections,
            event_streams=self.rooms.event_streams, origin=asdict(self.app.origin.stats),
            pipelines={sid: {**asdict(p.stats), "tracks": {n: asdict(b.stats) for n, b in p.mixer.tracks.items()}}
                       for sid, p in pipelines.items()},
            store=store.status(), defense=self.shield.node_status(),
            admission_config={k: v for k, v in asdict(self.cfg.admission).items() if k != "secret"},
            spaces=spaces, failover=self.failover.status())

    def space(self, space_id: str) -> SpaceSnapshot | None:
        if self.registry.find(space_id) is None:
            return None
        return self._space(space_id, time.time(), self.store.known_counts(space_id))

    def _space(self, space_id: str, now: float, counts: SpaceCounts) -> SpaceSnapshot:
        pipeline = self.spaces.pipelines.get(space_id)
        end = pipeline.timeline.media_end_wall if pipeline is not None else None
        recorded = pipeline.recording.bytes_written if pipeline is not None else 0
        dead_air, feedback = self.rooms.sound_state(space_id)
        return SpaceSnapshot(
            space_id=space_id, state=self.registry.get(space_id).state.value, listeners=counts.listeners,
            peak_listeners=counts.peak_listeners, waiting=counts.waiting, admitted_total=counts.admitted_total,
            recording_bytes=recorded,
            production_lag_s=None if end is None else max(0.0, now - end), dead_air=dead_air,
            feedback_speakers=feedback)

    def space_dir(self, space_id: str) -> Path:
        return self.registry.dir(space_id)


def _store(cfg: Config, signer: Signer) -> Store:
    """In memory, alone (the default); with ``--redis``, shared with the other nodes."""
    if cfg.cluster.redis_url is None:
        return MemoryStore(Admission(cfg.admission, signer, random.Random()))
    from amphi.control.store.redis import RedisStore

    return RedisStore(cfg.cluster.redis_url, cfg.admission, signer, node_id=cfg.node_id,
                      public_url=cfg.http.base_url, prefix=cfg.cluster.prefix)
