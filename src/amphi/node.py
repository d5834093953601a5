"""The composition root: builds one node from config and owns all its tasks.

The control plane (``amphi.control``) and the media plane (``amphi.media``) meet here and
nowhere else: a Space's lifecycle drives its pipeline; the web layer talks to this class.

Lifecycle: new -> running -> stopped. ``run()`` serves until cancelled, then shuts down in
order: stop accepting speakers, end live programs (their recordings are closed with
reason "shutdown"), stop the HTTP server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from datetime import UTC, datetime
from typing import Any

from amphi.control.admission import ADMITTER_PERIOD_S, Admission, Admitted, Waiting
from amphi.control.health import Governor, HealthSample
from amphi.control.spaces import Space, SpaceRegistry, SpaceState
from amphi.control.stage import HOST_ID, Participant
from amphi.control.store import Store
from amphi.control.store.memory import MemoryStore
from amphi.control.tokens import Signer, Token, new_participant_id, new_secret
from amphi.core.config import Config
from amphi.core.errors import (AmphiError, Conflict, Forbidden, HostedElsewhere, NotFound, TokenExpired,
                               TooManyRequests, Unauthorized, Unavailable)
from amphi.core.files import write_atomic
from amphi.defense.shield import Shield
from amphi.media.ingest.webrtc import WebRTCIngest
from amphi.media.pipeline import Pipeline
from amphi.media.recorder import Recording
from amphi.obs.observer import Observer
from amphi.room import Room

log = logging.getLogger(__name__)

SCHEDULER_PERIOD_S = 0.25
LAG_PROBE_S = 0.05  # the event-loop lag probe's period
LEVELS_PERIOD_S = 0.2  # talking indicators are refreshed this often


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Node:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.obs = Observer(self)  # obs: metrics, state-change events, timelines, the dashboard's feed
        self.registry = SpaceRegistry(cfg.data_dir / "spaces", on_change=self.obs.space_transition)
        self.ingest = WebRTCIngest(cfg.ice_addresses, silence_timeout_s=cfg.stage.silence_timeout_s,
                                   garbage_timeout_s=cfg.stage.garbage_timeout_s)
        self.pipelines: dict[str, Pipeline] = {}
        self.rooms: dict[str, Room] = {}
        self._next_edge = random.randrange(len(cfg.edges)) if cfg.edges else 0  # round-robin over the edges
        self.event_streams = 0  # open SSE connections
        self._recordings: dict[str, Recording] = {}
        self.signer = Signer(self._secret())
        self.operator_key = self._operator_key()
        self.admission = Admission(cfg.admission, self.signer, random.Random())  # used without --redis
        self.store = self._store()
        self.governor = Governor(cfg.admission)
        self.shield = Shield(cfg.defense, self.signer, self.registry.known)  # defense (docs/defense.md)
        self.shield.on_space_verdict = self.obs.detector  # obs: detector changes are events, with evidence
        self.shield.media_elsewhere = bool(cfg.edges)  # behind edges the node does not see listeners' media
        self._admission_changed = asyncio.Event()
        self._join_times: list[float] = []  # answer times in the current health period
        self._loop_lag = 0.0  # worst in the current health period
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()  # serialises lifecycle changes
        self.ready = asyncio.Event()

    # -- start-up and shutdown --------------------------------------------------------------

    async def open(self) -> None:
        """Loads stored Spaces; closes the recordings of those a crash cut off."""
        for space in self.registry.load():
            rec = self.recording(space.id)
            await asyncio.to_thread(rec.finalize)
            log.warning("space %s ended abnormally; %.1f s of recording kept", space.id, rec.duration)
        await self.store.open()
        for space in self.registry.all():
            await self.store.publish(space)
        self.spawn(self._scheduler(), name="scheduler")
        self.spawn(self._admitter(), name="admitter")
        self.spawn(self._lag_probe(), name="lag-probe")
        self.spawn(self._health(), name="health")
        self.spawn(self._levels(), name="levels")
        self.spawn(self.obs.run(), name="obs-sampler")
        self.spawn(self.shield.run(), name="defense")  # defense: the detector's verdicts

    def _store(self) -> Store:
        """In memory, alone (the default); with ``--redis``, shared with the other nodes."""
        if self.cfg.cluster.redis_url is None:
            return MemoryStore(self.admission)
        from amphi.control.store.redis import RedisStore

        return RedisStore(self.cfg.cluster.redis_url, self.cfg.admission, self.signer,
                          node_id=self.cfg.node_id,
                          public_url=self.cfg.http.base_url, prefix=self.cfg.cluster.prefix)

    def _secret(self) -> bytes:
        """The token key: config, else $AMPHI_SECRET, else <data_dir>/secret (made once).
        Edges and other nodes that should accept this node's tokens need the same key."""
        return self.cfg.admission.secret or self._stored_key("AMPHI_SECRET", "secret")

    def _operator_key(self) -> str:
        """The operator's key (/dashboard, /metrics): config, else $AMPHI_OPERATOR_KEY, else
        <data_dir>/operator_key (made once, mode 0600)."""
        return self.cfg.operator_key or self._stored_key("AMPHI_OPERATOR_KEY", "operator_key").decode()

    def _stored_key(self, env_name: str, file_name: str) -> bytes:
        if env := os.environ.get(env_name):
            return env.encode()
        path = self.cfg.data_dir / file_name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, new_secret().hex().encode(), mode=0o600)
        return path.read_bytes().strip()

    async def close(self) -> None:
        await self.ingest.close_all()
        for space_id, pipeline in list(self.pipelines.items()):
            space = self.registry.get(space_id)
            if space.state is SpaceState.LIVE:
                self.registry.transition(space, SpaceState.ENDED, reason="shutdown")
            await pipeline.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.obs.close()
        await self.store.close()

    def spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def _admitter(self) -> None:
        """Offers free seats to the lines as the rate allows, and releases what ran out."""
        store = self.store
        while True:
            now = time.time()
            if await store.sweep(now):
                self._admission_changed.set()
            wait = await store.promote(now)
            timeout = ADMITTER_PERIOD_S if wait is None else min(ADMITTER_PERIOD_S, max(wait, 0.001))
            self._admission_changed.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._admission_changed.wait()
            except TimeoutError:
                pass

    async def _lag_probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self._loop_lag = max(self._loop_lag, loop.time() - t - LAG_PROBE_S)

    async def _health(self) -> None:
        """Once a period: measure, update the limit and the ladder, apply them."""
        period = self.cfg.admission.health_period_s
        cpu0, t0 = time.thread_time(), time.monotonic()  # this runs on the loop's thread
        while True:
            await asyncio.sleep(period)
            cpu1, t1 = time.thread_time(), time.monotonic()
            sample = HealthSample.measure(self._loop_lag, (cpu1 - cpu0) / (t1 - t0), self._join_times)
            cpu0, t0 = cpu1, t1
            self._join_times.clear()
            self._loop_lag = 0.0
            level, limit = self.governor.level, self.governor.limit
            self.governor.update(sample, self.store.occupied, time.time())
            self.obs.health(sample, limit, level)  # obs: limit and ladder changes, with their reason
            self.store.limit = self.governor.limit
            self.store.paused = self.governor.level >= 1
            self.store.level = self.governor.level
            self._admission_changed.set()

    def record_join(self, seconds: float) -> None:
        if len(self._join_times) < 100_000:
            self._join_times.append(seconds)

    async def _levels(self) -> None:
        while True:
            await asyncio.sleep(LEVELS_PERIOD_S)
            for room in list(self.rooms.values()):
                room.poll_levels()

    async def _scheduler(self) -> None:
        while True:
            for space in self.registry.due():
                try:
                    await self.start_space(space)
                except Conflict:
                    pass
            await asyncio.sleep(SCHEDULER_PERIOD_S)

    # -- Spaces -----------------------------------------------------------------------------

    async def create_space(self, title: object, starts_at: object = None) -> tuple[Space, str]:
        space, key = self.registry.create(title, starts_at)
        await self.store.publish(space)
        return space, key

    async def _locate(self, space_id: str) -> tuple[Space, str | None]:
        """A Space and, if another node hosts it (--redis), that node's public URL; 404 if none."""
        space = self.registry.find(space_id)
        if space is not None:
            return space, None
        found = await self.store.lookup(space_id)
        if found is None:
            raise NotFound(f"no Space {space_id!r}")
        return found

    async def space(self, space_id: str) -> Space:
        """A Space this node hosts, else one another node hosts (with --redis); 404 if none."""
        return (await self._locate(space_id))[0]

    async def hosted(self, space_id: str, path: str) -> Space:
        """A Space this node hosts; one another node hosts -> 307 to ``path`` there."""
        space, elsewhere = await self._locate(space_id)
        if elsewhere is not None:
            raise HostedElsewhere(f"Space {space_id} is hosted by {elsewhere}", location=elsewhere + path)
        return space

    def origin_of(self, space_id: str) -> tuple[str, str]:
        """(public URL, node id) of the node hosting a Space: this one, or with --redis the
        one that published it."""
        if self.registry.find(space_id) is None and (hit := self.store.origin(space_id)) is not None:
            return hit
        return self.cfg.http.base_url, self.cfg.node_id

    def media_base(self, space_id: str, edge: str | None = None) -> str:
        """Where a listener fetches a Space's media: an edge cache (the next one in turn unless
        named), under the prefix that routes to the hosting node, /o/<node_id>; without edges,
        the hosting node itself."""
        url, node_id = self.origin_of(space_id)
        edges = self.cfg.edges
        if not edges:
            return url
        if edge is None:
            edge = edges[self._next_edge % len(edges)]
            self._next_edge += 1
        return f"{edge.rstrip('/')}/o/{node_id}"

    async def all_spaces(self) -> list[Space]:
        mine = self.registry.all()
        ids = {s.id for s in mine}
        return mine + [s for s, _ in await self.store.spaces() if s.id not in ids]

    async def start_space(self, space: Space) -> None:
        async with self._lock:
            self.registry.transition(space, SpaceState.LIVE)  # raises, naming the state
            drawn = await self.store.draw(space.id)
            if drawn:
                log.info("space %s: %d early arrivals drawn into line in random order", space.id, drawn)
                self._admission_changed.set()
            pipeline = self.pipelines.get(space.id)
            if pipeline is None:
                await self._pipeline(space)  # born live: no hold audio to cut away
            else:
                pipeline.go_live()  # listeners already hear hold music: switch at the next boundary
        await self.store.publish(space)

    async def end_space(self, space: Space) -> None:
        async with self._lock:
            self.registry.transition(space, SpaceState.ENDED, reason="host")
            pipeline = self.pipelines.get(space.id)
        room = self.rooms.get(space.id)
        if room is not None:
            await room.close()
        if pipeline is not None:
            await pipeline.end()
        self.registry.record_peak(space, (await self.store.counts(space.id)).peak_listeners)
        self.registry.save(space)
        await self.store.publish(space)
        await self.store.close_space(space.id)
        self.pipelines.pop(space.id, None)
        self.rooms.pop(space.id, None)

    async def _pipeline(self, space: Space) -> Pipeline:
        """The Space's running pipeline, started on first need (a join, a speaker, the start)."""
        if space.state is SpaceState.ENDED:
            raise Conflict(f"Space {space.id} has ended")
        pipeline = self.pipelines.get(space.id)
        if pipeline is None:
            pipeline = Pipeline(space.id, self.cfg.media, self.recording(space.id), live=space.state is SpaceState.LIVE)
            self.pipelines[space.id] = pipeline
            await pipeline.start()
        return pipeline

    def recording(self, space_id: str) -> Recording:
        rec = self._recordings.get(space_id)
        if rec is None:
            rec = Recording.open(self.registry.dir(space_id), self.cfg.media)
            self._recordings[space_id] = rec
        return rec

    # -- listeners --------------------------------------------------------------------------

    async def join(self, space: Space, *, ticket: object = None, token: object = None,
                   host: bool = False) -> tuple[int, dict[str, object]]:
        """One join decision: (HTTP status, answer). See docs/admission.md."""
        now = time.time()
        if space.state is SpaceState.ENDED:
            status = await self.status(space)
            return 200, {"status": "ended", "state": "ended", "playlist": status["replay"],
                         "replay": status["replay"], "download": status["download"]}
        adm = self.store
        before_start = space.state is SpaceState.SCHEDULED
        if host:
            answer: Admitted | Waiting = adm.host(space.id, now)
        elif token is not None:
            answer = await adm.renew(space.id, token if isinstance(token, str) else "", now)
        elif ticket is not None:
            answer = await adm.poll(space.id, ticket, now, before_start=before_start)
        else:
            answer = await adm.join(space.id, now, before_start=before_start)
        common = {"state": space.state.value, "starts_at": iso(space.starts_at)}
        if isinstance(answer, Waiting):
            if adm.occupied < adm.limit:  # a seat is free: the admitter may offer it now
                self._admission_changed.set()
            retry = answer.retry_after_s * self.governor.retry_factor
            return 202, {"status": "waiting", **common, "ticket": answer.ticket, "position": answer.position,
                         "waiting": answer.waiting, "estimated_wait_s": answer.estimated_wait_s,
                         "retry_after_s": round(retry, 2), "order": answer.order, "requeued": answer.requeued}
        if self.registry.find(space.id) is not None:
            await self._pipeline(space)  # elsewhere, the hosting node starts it on the first request
        ttl = answer.expires - now
        media = self.media_base(space.id)
        return 200, {"status": "admitted", **common, "playlist": self.playlist_url(space.id, answer.token, media),
                     "token": answer.token, "expires_at": iso(answer.expires), "expires_in_s": round(ttl, 1),
                     "renew_after_s": round(ttl / 2, 1), "renewed": answer.renewed,
                     "edges": [self.media_base(space.id, edge) for edge in self.cfg.edges]}

    async def leave(self, space: Space, *, ticket: object = None, token: object = None) -> bool:
        freed = await self.store.leave(space.id, token=token if isinstance(token, str) else None,
                                       ticket=ticket, now=time.time()) if (ticket or token) else False
        if freed:
            self._admission_changed.set()
        return freed

    def playlist_url(self, space_id: str, token: str, media: str | None = None) -> str:
        return f"{media or self.media_base(space_id)}/media/{space_id}/t/{token}/live.m3u8"

    def verify_edge(self, credential: str | None) -> str:
        return self.signer.verify_edge(credential)

    async def verify_token(self, space_id: str, token: str | None, *, playlist: bool = False) -> Token:
        """Stateless: signature, Space and expiry; 401/403 before any other work. For a live
        playlist, an expired listener token whose seat is still held passes (``renewal``
        then redirects it): players that only follow URLs reload their first URL forever,
        and their seat is kept by those very renewals. Once the seat is released, the
        token is refused like any other expired one."""
        try:  # defense: the detector counts valid and invalid tokens
            t = await self._verify_token(space_id, token, playlist)
        except AmphiError:
            self.shield.media(space_id, None)
            raise
        self.shield.media(space_id, t.seat)
        return t

    async def _verify_token(self, space_id: str, token: str | None, playlist: bool) -> Token:
        now = time.time()
        try:
            if not playlist:
                return self.signer.verify_token(space_id, token, now)
            t = self.signer.verify_token(space_id, token, now, grace_s=math.inf)
            if t.expires <= now and (t.host or not await self.store.seat_held(t, now)):
                raise TokenExpired("the admission token has expired: join again")
        except (Unauthorized, Forbidden) as e:
            self.obs.metrics.token_failures.labels(e.code).inc()  # obs
            raise
        return t

    async def renewal(self, space_id: str, token: Token) -> str | None:
        """A fresh token for a listener in the last quarter of its token's life whose seat is
        still held, for a redirect; None if not due. (Clients that renew through the API do
        so at half-life, so they never see the redirect.)"""
        now = time.time()
        if token.expires - now > self.cfg.admission.token_ttl_s / 4:
            return None
        if not token.host and not await self.store.seat_held(token, now):
            return None
        return (await self.store.renew_seat(token, now)).token

    def optional_work_allowed(self) -> None:
        """Degradation rung 2 switches off serving replays and downloads."""
        if self.governor.level >= 2:
            raise Unavailable("replays are paused while the node is under pressure",
                              retry_after_s=random.uniform(20, 40))

    async def media(self, space_id: str) -> tuple[Pipeline | None, Recording]:
        """What the origin serves for a Space: its running pipeline (started if a player
        asks before anyone joined, e.g. after a restart), or None once ended."""
        space = self.registry.get(space_id)  # 404 for unknown Spaces
        pipeline = None if space.state is SpaceState.ENDED else await self._pipeline(space)
        return pipeline, self.recording(space_id)

    def ended(self, space_id: str) -> bool:
        return self.registry.get(space_id).state is SpaceState.ENDED

    # -- the room ---------------------------------------------------------------------------

    def room(self, space: Space) -> Room:
        room = self.rooms.get(space.id)
        if room is None:
            if space.state is SpaceState.ENDED:
                raise Conflict(f"Space {space.id} has ended")
            room = self.rooms[space.id] = Room(space.id, self.cfg.stage, self.ingest)
        return room

    def participant(self, space: Space, credential: str | None) -> Participant:
        """Who is calling: ``credential`` is the host key or a grant (docs/stage.md)."""
        if not credential:
            raise Unauthorized("this needs a grant or the host key: Authorization: Bearer ...")
        room = self.room(space)
        if "." in credential:
            pid, _ = self.signer.verify_grant(space.id, credential, time.time())
            return room.stage.member(pid)
        self.registry.check_host_key(space, credential)
        return room.stage.get(HOST_ID)

    def grant(self, space: Space, pid: str) -> dict[str, object]:
        expires = int(time.time() + self.cfg.stage.grant_ttl_s)
        return {"participant": pid, "grant": self.signer.grant(space.id, pid, expires), "expires_at": iso(expires)}

    async def request_to_speak(self, space: Space, name: object, credential: str | None, client: str) -> dict[str, object]:
        """A listener asks to speak: a new participant (and its grant), or a known one again."""
        room = self.room(space)
        now = time.time()
        await self._limit(client, now, "too many requests to speak from your address")
        if credential:
            actor = room.stage.rerequest(self.participant(space, credential), now)
            answer: dict[str, object] = {"participant": actor.id}
        else:
            actor = room.stage.request(name, new_participant_id(), now)
            answer = self.grant(space, actor.id)
        room.apply()
        return {**answer, "you": actor.private()}

    async def _limit(self, key: str, now: float, what: str) -> None:
        """One GCRA budget per ``key`` (a client address, a speaker), in the store (so shared
        by the nodes with --redis): 429 when spent."""
        wait = await self.store.take(key, self.cfg.stage.request_rate_per_s, self.cfg.stage.request_burst, now)
        if wait > 0:
            raise TooManyRequests(f"{what}; try again in {math.ceil(wait)} s", retry_after_s=wait)

    def invite(self, space: Space, actor: Participant, name: object) -> dict[str, object]:
        room = self.room(space)
        guest = room.stage.invite(actor, name, new_participant_id(), time.time())
        room.apply()
        answer = self.grant(space, guest.id)
        return {**answer, "invite_url": f"{self.cfg.http.base_url}/s/{space.id}?grant={answer['grant']}"}

    async def act(self, space: Space, actor: Participant, pid: str, action: str,
                  body: dict[str, object]) -> Participant:
        if space.state is SpaceState.ENDED:
            raise Conflict(f"Space {space.id} has ended")
        return await self.room(space).act(actor, pid, action, body, time.time())

    def stage_extra(self, space: Space) -> dict[str, object]:
        """What stage views carry besides the stage: the Space's state and audience."""
        counts = self.store.known_counts(space.id)
        return {"state": space.state.value, "listeners": counts.listeners, "waiting": counts.waiting}

    async def speak(self, space: Space, offer_sdp: str, credential: str | None) -> str:
        """A speaker's WebRTC offer -> the answer. The host key or an on-stage grant."""
        actor = self.participant(space, credential)
        room = self.room(space)
        room.stage.check_can_speak(actor.id)
        await self._limit(f"speak {space.id} {actor.id}", time.time(), "too many connections from this speaker")
        pipeline = await self._pipeline(space)
        return await room.speak(pipeline, actor, offer_sdp)

    # -- status -----------------------------------------------------------------------------

    async def status(self, space: Space) -> dict[str, object]:
        base, media = self.cfg.http.base_url, self.origin_of(space.id)[0]
        counts = await self.store.counts(space.id)
        ended = space.state is SpaceState.ENDED
        if self.registry.find(space.id) is not None:
            self.registry.record_peak(space, counts.peak_listeners)
            rec = self.recording(space.id)
            recorded_s: float | None = round(rec.duration, 3)
            has_replay = ended and rec.finalized and bool(rec.entries)
        else:  # hosted elsewhere: its recording is there
            recorded_s, has_replay = None, ended
            space.peak_listeners = max(space.peak_listeners, counts.peak_listeners)
        return {
            "id": space.id,
            "title": space.title,
            "state": space.state.value,
            "starts_at": iso(space.starts_at),
            "started_at": iso(space.started_at),
            "ended_at": iso(space.ended_at),
            "end_reason": space.end_reason,
            "ended_abnormally": space.end_reason == "abnormal",
            "listeners": counts.listeners,
            "peak_listeners": space.peak_listeners,
            "waiting": counts.waiting,
            "admitted_total": counts.admitted_total,
            "seats_offered": counts.reserved,
            "degradation": self.governor.status(),
            "detector": self.shield.status(space.id),  # defense: surge / attack, with evidence
            "listen_url": f"{base}/s/{space.id}",
            "recorded_s": recorded_s,
            "replay": f"{media}/media/{space.id}/vod.m3u8" if has_replay else None,
            "download": f"{media}/media/{space.id}/download.m4a" if has_replay else None,
        }

    def get(self, space_id: str) -> Space:
        return self.registry.get(space_id)
