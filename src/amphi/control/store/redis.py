"""Many nodes, one Redis: admission, the directory of Spaces and the node registry shared
(``amphi serve --redis URL``; docs/cluster.md).

Every admission decision is one call of ``admission.lua`` (EVALSHA; redis-py reloads it
after a Redis restart), so the cap is exact and the line is one FIFO across nodes. Tokens
and tickets stay stateless HMAC: every node shares the secret and signs what the script
decided.

Losing Redis: the store notices on the first failed call (or heartbeat) and is *down*:
new joins, polls and leaves are refused at once (503, Retry-After 2-5 s) without touching
the network; admitted listeners keep playing (media needs no state; renewals and seat
checks fail open for tokens this node saw held or that are still valid). The heartbeat
reconnects with full-jitter backoff (0.2 s doubling to 2 s); once back, the node registers
again and re-publishes the Spaces it hosts with their counters. A Redis that restarted
empty begins a new *epoch*: seats it lost are taken back when their listeners renew (or
their edges report the renewals, ``extend``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from importlib import resources

import orjson
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from amphi.control.admission import Admitted, Line, SpaceCounts, Waiting
from amphi.control.spaces import Space, SpaceState
from amphi.control.store import Store
from amphi.control.store.memory import MAX_LIMITERS
from amphi.control.tokens import Signer, Token, new_seat_id
from amphi.core.config import AdmissionConfig
from amphi.core.errors import TokenExpired, TooBusy, TooEarly, Unavailable
from amphi.core.gcra import GcraTable

log = logging.getLogger(__name__)

LUA = resources.files(__package__).joinpath("admission.lua").read_text()
LEASES = resources.files(__package__).joinpath("leases.lua").read_text()
HEARTBEAT_S = 1.0  # the node's registry entry is refreshed this often ...
NODE_TTL_S = 5.0  # ... and disappears this long after its last heartbeat
LOOKUP_TTL_S = 0.25  # another node's Space is looked up again after this
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 2.0  # reconnect delays, full jitter
CONNECT_TIMEOUT_S = 0.5
COMMAND_TIMEOUT_S = 2.0
MAX_KNOWN_HELD = 200_000  # seats this node saw held, remembered for failing open
DOWN_RETRY_S = (2.0, 5.0)  # Retry-After while Redis is unreachable
_LOST = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisStore(Store):
    kind = "redis"

    def __init__(self, url: str, cfg: AdmissionConfig, signer: Signer, *, node_id: str, public_url: str,
                 prefix: str = "amphi:", rng: random.Random | None = None) -> None:
        self.url = url
        self.cfg = cfg
        self.signer = signer
        self.node_id = node_id
        self.public_url = public_url
        self.prefix = prefix
        self.rng = rng or random.Random()
        self.limit = cfg.max_listeners
        self.paused = False
        self.up = False
        self._r = aioredis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                          socket_timeout=COMMAND_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
        self._script = self._r.register_script(LUA)
        self._leases = self._r.register_script(LEASES)
        self._epoch: float | None = None
        self._occupied = 0
        self._waiting = 0
        self._hosted: dict[str, Space] = {}  # published by this node, re-published after a loss
        self._counts: dict[str, SpaceCounts] = {}  # last known, served while Redis is away
        self._remote: dict[str, tuple[float, Space, str, str]] = {}  # lookups: (fetched, space, origin, node)
        self._held: dict[str, float] = {}  # seat -> when this node last saw it held
        self._limits = GcraTable(MAX_LIMITERS)  # rate limits kept here while Redis is away
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Connects (refusing joins until it has) and keeps the heartbeat going."""
        try:
            await self._beat()
        except _LOST as e:
            log.warning("redis %s unreachable at start-up (%s); retrying in the background", self.url, e)
        self._task = asyncio.create_task(self._heartbeat(), name="store-heartbeat")

    async def close(self) -> None:
        self._closing = True
        task = self._task
        while task is not None and not task.done():
            task.cancel()  # again if a redis-py call swallowed the cancellation
            await asyncio.wait({task}, timeout=0.1)
        if self.up:
            try:
                await self._r.zrem(self.prefix + "nodes", self.node_id)
                await self._r.delete(self.prefix + "node:" + self.node_id)
            except _LOST:
                pass
        await self._r.aclose()

    async def _heartbeat(self) -> None:
        delay = BACKOFF_MIN_S
        while not self._closing:
            try:
                await self._beat()
                delay = BACKOFF_MIN_S
                await asyncio.sleep(HEARTBEAT_S)
            except _LOST as e:
                self._lost(e)
                await asyncio.sleep(self.rng.uniform(0, delay))
                delay = min(BACKOFF_MAX_S, 2 * delay)
            except Exception:  # a bug must not end the heartbeat
                log.exception("store heartbeat failed")
                await asyncio.sleep(HEARTBEAT_S)

    async def _beat(self) -> None:
        now = time.time()
        epoch, self._occupied, self._waiting = await self._eval("beat", now)
        was_up, self.up = self.up, True
        if self._epoch is not None and epoch != self._epoch:
            log.warning("redis began a new epoch (restarted without its data): re-publishing %d Spaces",
                        len(self._hosted))
        if not was_up or epoch != self._epoch:
            if self._epoch is not None or not was_up:
                log.info("redis %s reachable: joins accepted", self.url)
            await self._republish()
        self._epoch = epoch
        key = self.prefix + "node:" + self.node_id
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={"id": self.node_id, "url": self.public_url, "limit": self.limit,
                                    "level": self.level, "paused": int(self.paused), "heartbeat": now,
                                    "spaces": ",".join(self._hosted)})
            pipe.expire(key, math.ceil(NODE_TTL_S))
            pipe.zadd(self.prefix + "nodes", {self.node_id: now + NODE_TTL_S})
            pipe.zremrangebyscore(self.prefix + "nodes", "-inf", now)
            for sid in self._hosted:
                pipe.hgetall(self.prefix + "counts:" + sid)
            answers = await pipe.execute()
        _uncancel_check()
        for sid, raw in zip(list(self._hosted), answers[4:]):
            self._counts[sid] = _counts(raw)

    async def _republish(self) -> None:
        async with self._r.pipeline(transaction=False) as pipe:
            for space in self._hosted.values():
                self._publish(pipe, space)
                c = self._counts.get(space.id)
                if c is not None:  # a Redis that lost them starts from what this node saw
                    key = self.prefix + "counts:" + space.id
                    pipe.hsetnx(key, "admitted_total", c.admitted_total)
                    pipe.hsetnx(key, "peak_listeners", c.peak_listeners)
            await pipe.execute()

    def _lost(self, err: BaseException) -> None:
        if self.up:
            log.warning("redis %s lost (%s): new joins refused until it is back", self.url, err)
        self.up = False

    def _down(self) -> Unavailable:
        return Unavailable("shared state (Redis) is unreachable; joins resume by themselves when it is back",
                           retry_after_s=round(self.rng.uniform(*DOWN_RETRY_S), 2))

    async def _eval(self, op: str, now: float, *args: object) -> list:
        c = self.cfg
        jitter = self.rng.uniform(1 - c.poll_jitter, 1 + c.poll_jitter)
        raw = await self._script(args=[
            op, f"{now:.6f}", self.limit, int(self.paused), c.admit_rate_per_s, c.admit_burst, c.token_ttl_s,
            c.seat_grace_s, c.ticket_hold_s, c.max_waiting, c.poll_min_s, c.poll_max_s, c.rate_window_s,
            f"{jitter:.6f}", self.prefix, *args])
        _uncancel_check()
        return orjson.loads(raw)

    async def _run(self, op: str, now: float, *args: object) -> list:
        """One admission decision; refused at once while Redis is known to be away."""
        if not self.up:
            raise self._down()
        try:
            return await self._eval(op, now, *args)
        except _LOST as e:
            self._lost(e)
            raise self._down() from None

    # -- admission ------------------------------------------------------------------------

    @property
    def occupied(self) -> int:
        return self._occupied

    @property
    def waiting(self) -> int:
        return self._waiting

    def _answer(self, space_id: str, res: list) -> Admitted | Waiting:
        kind = res[0]
        if kind == "admitted":
            _, seat, expires, renewed = res
            self._saw_held(seat)
            return Admitted(self.signer.token(space_id, seat, int(expires)), seat, int(expires), renewed=renewed)
        if kind == "waiting":
            _, entry, position, waiting, estimate, retry, order, requeued, arrived, place = res
            return Waiting(self.signer.ticket(space_id, int(entry), int(arrived)), position, waiting, estimate,
                           round(retry, 2), order, requeued=requeued, place=place)
        if kind == "too_busy":  # as Admission.join: poll_max_s, jittered by poll_jitter
            j = self.cfg.poll_jitter
            raise TooBusy("the waiting room is full; try again later",
                          retry_after_s=self.cfg.poll_max_s * self.rng.uniform(1 - j, 1 + j))
        if kind == "too_early":
            raise TooEarly("polled before retry_after_s", retry_after_s=res[1])
        raise TokenExpired("this seat has been released: join again")

    async def join(self, space_id: str, now: float, *, before_start: bool = False) -> Admitted | Waiting:
        return self._answer(space_id, await self._run("join", now, space_id, new_seat_id(), int(before_start)))

    async def poll(self, space_id: str, ticket: object, now: float, *, before_start: bool = False) -> Admitted | Waiting:
        t = self.signer.verify_ticket(space_id, ticket)  # BadTicket, before any lookup
        res = await self._run("poll", now, space_id, str(t.entry), new_seat_id(), int(before_start))
        return self._answer(space_id, res)

    async def renew(self, space_id: str, token: str, now: float) -> Admitted:
        return await self.renew_seat(self.signer.verify_token(space_id, token, now, grace_s=self.cfg.seat_grace_s), now)

    async def renew_seat(self, token: Token, now: float) -> Admitted:
        if token.host:
            return self.host(token.space_id, now, seat=token.seat)
        if self.up:
            try:
                answer = self._answer(token.space_id, await self._eval("renew", now, token.space_id, token.seat,
                                                                       token.expires))
                assert isinstance(answer, Admitted)
                return answer
            except _LOST as e:
                self._lost(e)
        if not self._fails_open(token, now):
            raise self._down()
        # Redis is away: an admitted listener keeps playing on a token signed here; its seat
        # is taken back (or found) when the listener renews after Redis returns
        expires = math.ceil(now + self.cfg.token_ttl_s)
        return Admitted(self.signer.token(token.space_id, token.seat, expires), token.seat, expires, renewed=True)

    async def line(self, space_id: str, now: float) -> Line:
        called, nxt, gaps, waiting, pooled, free, wait, moving = await self._run("line", now, space_id)
        return Line(called, nxt, tuple(gaps[:-1]), waiting, pooled, free, wait, self.cfg.admit_rate_per_s, moving)

    async def extend(self, space_id: str, renewals: Sequence[tuple[str, int, int]], now: float) -> list[str]:
        """One script call per batch; Unavailable while Redis is away (the edge keeps the
        batch and reports it again)."""
        args = [x for renewal in renewals for x in renewal]
        return (await self._run("extend", now, space_id, *args))[1:]  # after the marker 'gone'

    def host(self, space_id: str, now: float, *, seat: str | None = None) -> Admitted:
        expires = math.ceil(now + self.cfg.token_ttl_s)
        seat = seat or new_seat_id()
        return Admitted(self.signer.token(space_id, seat, expires, host=True), seat, expires)

    async def leave(self, space_id: str, *, token: str | None, ticket: object, now: float) -> bool:
        if ticket is not None:
            t = self.signer.verify_ticket(space_id, ticket)
            return (await self._run("leave_place", now, space_id, str(t.entry)))[0]
        tok = self.signer.verify_token(space_id, token, now, grace_s=self.cfg.seat_grace_s)
        if tok.host:
            return False
        freed = (await self._run("leave_seat", now, space_id, tok.seat))[0]
        self._held.pop(tok.seat, None)
        return freed

    async def seat_held(self, token: Token, now: float) -> bool:
        if self.up:
            try:
                held = (await self._eval("held", now, token.space_id, token.seat, token.expires))[0] == "held"
                if held:
                    self._saw_held(token.seat)
                return held
            except _LOST as e:
                self._lost(e)
        return self._fails_open(token, now)

    def _fails_open(self, token: Token, now: float) -> bool:
        """While Redis is away: a seat counts as held if its token is still within its grace,
        or this node saw the seat held within a token's life and its grace."""
        keep = self.cfg.token_ttl_s + self.cfg.seat_grace_s
        if token.expires + self.cfg.seat_grace_s > now:
            return True
        seen = self._held.get(token.seat)
        return seen is not None and now - seen < keep

    def _saw_held(self, seat: str) -> None:
        held = self._held
        if len(held) >= MAX_KNOWN_HELD:  # forget the oldest half
            for s in sorted(held, key=held.__getitem__)[: MAX_KNOWN_HELD // 2]:
                del held[s]
        held[seat] = time.time()

    async def counts(self, space_id: str) -> SpaceCounts:
        if self.up:
            try:
                c = self._counts[space_id] = _counts(await self._r.hgetall(self.prefix + "counts:" + space_id))
                return c
            except _LOST as e:
                self._lost(e)
        return self._counts.get(space_id) or SpaceCounts()

    def known_counts(self, space_id: str) -> SpaceCounts:
        return self._counts.get(space_id) or SpaceCounts()

    async def promote(self, now: float) -> float | None:
        if not self.up:
            return None
        try:
            return (await self._eval("promote", now))[0]
        except _LOST as e:
            self._lost(e)
            return None

    async def sweep(self, now: float) -> int:
        if not self.up:
            return 0
        try:
            return (await self._eval("sweep", now))[0]
        except _LOST as e:
            self._lost(e)
            return 0

    async def draw(self, space_id: str) -> int:
        try:
            pool = [m.decode() for m in await self._r.smembers(self.prefix + "pool:" + space_id)]
        except _LOST as e:
            self._lost(e)
            return 0
        self.rng.shuffle(pool)
        return (await self._run("draw", time.time(), space_id, *pool))[0]

    async def close_space(self, space_id: str) -> None:
        await self._run("close", time.time(), space_id)

    async def take(self, key: str, rate: float, burst: int, now: float) -> float:
        if self.up:
            try:
                return (await self._eval("limit", now, key, rate, burst))[0]
            except _LOST as e:
                self._lost(e)
        return self._limits.charge(key, rate, burst, now)  # this node's share, until Redis is back

    # -- directory and registry -------------------------------------------------------------

    def _publish(self, pipe, space: Space) -> None:  # type: ignore[no-untyped-def]
        record = {**space.to_json(), "origin": self.public_url, "node": self.node_id}
        pipe.set(self.prefix + "space:" + space.id, orjson.dumps(record))
        pipe.sadd(self.prefix + "spaces", space.id)
        if space.state is SpaceState.LIVE:  # the ones standbys watch (live_elsewhere): not every Space ever made
            pipe.sadd(self.prefix + "live", space.id)
        else:
            pipe.srem(self.prefix + "live", space.id)

    async def publish(self, space: Space) -> None:
        self._hosted[space.id] = space
        if not self.up:
            return  # re-published when Redis is back
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                self._publish(pipe, space)
                await pipe.execute()
        except _LOST as e:
            self._lost(e)

    async def lookup(self, space_id: str) -> tuple[Space, str] | None:
        hit = self._remote.get(space_id)
        if hit is not None and (time.monotonic() - hit[0] < LOOKUP_TTL_S or not self.up):
            return hit[1], hit[2]
        if not self.up:
            raise self._down()
        try:
            raw = await self._r.get(self.prefix + "space:" + space_id)
        except _LOST as e:
            self._lost(e)
            if hit is not None:
                return hit[1], hit[2]
            raise self._down() from None
        if raw is None:
            return None
        space, origin, node = _space(raw)
        if len(self._remote) > 10_000:
            self._remote.clear()
        self._remote[space_id] = (time.monotonic(), space, origin, node)
        return space, origin

    def origin(self, space_id: str) -> tuple[str, str] | None:
        hit = self._remote.get(space_id)
        return (hit[2], hit[3]) if hit is not None else None

    async def _records(self, members: str) -> list[tuple[Space, str, str]]:
        """(Space, public URL, node) of each Space in the set ``members`` (``spaces``, ``live``)."""
        try:
            ids = sorted(m.decode() for m in await self._r.smembers(self.prefix + members))
            raws = await self._r.mget([self.prefix + "space:" + i for i in ids]) if ids else []
        except _LOST as e:
            self._lost(e)
            raise self._down() from None
        return [_space(raw) for raw in raws if raw is not None]

    async def spaces(self) -> list[tuple[Space, str]]:
        return [(space, url) for space, url, _ in await self._records("spaces")]

    async def nodes(self) -> list[dict[str, object]]:
        try:
            ids = await self._r.zrangebyscore(self.prefix + "nodes", time.time(), "+inf")
            async with self._r.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.hgetall(self.prefix + "node:" + i.decode())
                rows = await pipe.execute()
        except _LOST as e:
            self._lost(e)
            raise self._down() from None
        return [{k.decode(): v.decode() for k, v in row.items()} for row in rows if row]

    # -- leases (leases.lua; amphi.control.leases) ------------------------------------------

    async def _lease(self, op: str, ttl_s: float, *args: object) -> list:
        """One call of leases.lua. Tried even while the heartbeat thinks Redis is away: a host
        takes its leases back the moment Redis answers again."""
        try:
            res = await self._leases(args=[op, self.prefix, self.node_id, round(ttl_s * 1000),
                                           f"{time.time():.6f}", *args])
        except _LOST as e:
            self._lost(e)
            raise self._down() from None
        _uncancel_check()
        return res

    async def renew_leases(self, space_ids: Sequence[str], ttl_s: float) -> dict[str, str]:
        if not space_ids:
            return {}
        res = await self._lease("renew", ttl_s, *space_ids)
        return {s: h.decode() for s, h in zip(space_ids, res)}

    async def stand_by(self, space_ids: Sequence[str], ttl_s: float) -> dict[str, tuple[str, str]]:
        if not space_ids:
            return {}
        res = await self._lease("stand_by", ttl_s, round(ttl_s * 1000), *space_ids)
        return {s: (sb.decode(), h.decode()) for s, (sb, h) in zip(space_ids, res)}

    async def acquire(self, space_id: str, ttl_s: float, reclaim_s: float) -> int:
        took, why = await self._lease("acquire", ttl_s, space_id, reclaim_s)
        if not took:
            log.debug("space %s: lease not taken (%s)", space_id, why.decode() if isinstance(why, bytes) else why)
        return int(why) if took else 0

    async def hand_over(self, space_id: str, to: str, last_msn: int, ttl_s: float) -> int:
        return int(await self._lease("hand_over", ttl_s, space_id, to, last_msn))

    async def release(self, space_ids: Sequence[str]) -> None:
        if space_ids:
            await self._lease("release", 1.0, *space_ids)

    async def holders(self, space_ids: Sequence[str]) -> dict[str, tuple[str, str, int | None]]:
        if not space_ids:
            return {}
        res = await self._lease("holders", 1.0, *space_ids)
        return {s: (h.decode(), sb.decode(), int(last) if last else None) for s, (h, sb, last) in zip(space_ids, res)}

    async def live_elsewhere(self) -> list[tuple[Space, str, str]]:
        return [(s, url, node) for s, url, node in await self._records("live")
                if node != self.node_id and s.state is not SpaceState.ENDED]

    async def published_by(self, space_id: str) -> str | None:
        try:
            raw = await self._r.get(self.prefix + "space:" + space_id)
        except _LOST as e:
            self._lost(e)
            raise self._down() from None
        return None if raw is None else _space(raw)[2]

    def forget(self, space_id: str) -> None:
        self._hosted.pop(space_id, None)
        self._counts.pop(space_id, None)

    def status(self) -> dict[str, object]:
        return {"kind": self.kind, "url": self.url, "up": self.up, "node_id": self.node_id, "epoch": self._epoch}

    async def save_stage(self, space_id: str, data: bytes) -> None:
        """``stage:<space>``, kept a day after its last change; fenced: not written while
        another node holds the Space's lease (a host that was stopped past its lease must not
        overwrite its successor's stage). Refused at once while Redis is known to be away (the
        rooms keep it and try again once the heartbeat is back)."""
        if not self.up:
            raise self._down()
        if self._save_stage_script is None:
            self._save_stage_script = self._r.register_script(_SAVE_STAGE)
        try:
            holder = await self._save_stage_script(args=[self.prefix, space_id, self.node_id, data, 86_400])
        except _LOST as e:
            self._lost(e)
            raise self._down() from None
        _uncancel_check()
        if holder:
            log.warning("space %s: stage not saved: node %s hosts it now", space_id, holder.decode())

    _save_stage_script = None  # registered on first use

    async def load_stage(self, space_id: str) -> bytes | None:
        """Tried even while the heartbeat thinks Redis is away: a take-over has just reached it."""
        try:
            raw = await self._r.get(self.prefix + "stage:" + space_id)
        except _LOST as e:
            self._lost(e)
            raise self._down() from None
        _uncancel_check()
        return raw


def _uncancel_check() -> None:
    """redis-py can swallow a cancellation that arrives while it reads a reply; raise it
    again, so the node's tasks stop when cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _counts(raw: dict[bytes, bytes]) -> SpaceCounts:
    get = {k.decode(): int(v) for k, v in raw.items()}
    return SpaceCounts(listeners=get.get("listeners", 0), reserved=get.get("reserved", 0),
                       waiting=get.get("waiting", 0), admitted_total=get.get("admitted_total", 0),
                       peak_listeners=get.get("peak_listeners", 0))


def _space(raw: bytes) -> tuple[Space, str, str]:
    record = json.loads(raw)
    origin, node = record.pop("origin"), record.pop("node")
    return Space.from_json(record), origin, node


_SAVE_STAGE = """
local holder = redis.call('GET', ARGV[1] .. 'lease:' .. ARGV[2])
if holder and holder ~= ARGV[3] then return holder end
redis.call('SET', ARGV[1] .. 'stage:' .. ARGV[2], ARGV[4], 'EX', tonumber(ARGV[5]))
return false
"""  # RedisStore.save_stage: the stage, unless another node holds the Space's lease (then: that node)
