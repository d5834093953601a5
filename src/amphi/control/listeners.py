"""Listeners: where a join is decided (docs/admission.md). Join, poll, renew and leave; the
admitter's pass; the health loop's verdict applied to admission; media tokens verified.

Every answer is a typed result (``Seated``, ``InLine``, ``Ended``) or an ``AmphiError``;
``amphi.web.answers`` turns them into HTTP. The decisions themselves are the store's
(``amphi.control.store``: the pure ``Admission`` in memory, or the same rules in Redis), the
seat limit and the pause are the ``Governor``'s. The node and the simulator (``amphi.sim``)
drive this very class: the simulator with a ``MemoryStore``, whose coroutines never
suspend, on its virtual clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

from amphi.control.admission import Admitted, Line, Waiting
from amphi.control.health import Governor, HealthSample
from amphi.control.spaces import Space, SpaceState
from amphi.control.store import Store
from amphi.control.tokens import Signer, Token
from amphi.core.config import AdmissionConfig
from amphi.core.errors import AmphiError, TokenExpired

MAX_JOIN_SAMPLES = 100_000  # answer times kept per health period (the p95 needs no more)
MAX_LINES = 10_000  # Spaces whose line this node remembers for the current second


class Seated(NamedTuple):
    space: Space
    token: str
    expires: int
    renewed: bool
    playlist: str  # the multivariant playlist (index.m3u8), token in the URL
    edges: tuple[str, ...]  # the media base at every edge, to fail over to


class InLine(NamedTuple):
    space: Space
    ticket: str
    position: int
    waiting: int
    estimated_wait_s: float | None
    retry_after_s: float  # the store's advice, stretched by the degradation ladder
    order: str
    requeued: bool
    place: int | None  # the place's number in the Space's line (None in the pre-start pool)


class Ended(NamedTuple):
    space: Space
    replay: str | None
    download: str | None


JoinResult = Seated | InLine | Ended  # named tuples: immutable, and cheap to make on the join path


class Urls(Protocol):
    """Where a seated listener's media is (``amphi.control.directory.Directory``)."""

    def playlist(self, space_id: str, token: str) -> tuple[str, tuple[str, ...]]: ...


class Programs(Protocol):
    """What admission needs from the Spaces' programs (``amphi.services.spaces.Spaces``)."""

    async def seated(self, space: Space) -> None: ...  # a listener has a seat: the program must run

    async def replay(self, space: Space) -> tuple[str | None, str | None]: ...  # (playlist, download)


class Listeners:
    def __init__(self, cfg: AdmissionConfig, store: Store, governor: Governor, signer: Signer, urls: Urls,
                 programs: Programs, *, wake: Callable[[], None] = lambda: None,
                 watch: Callable[[str, str | None, AmphiError | None], None] = lambda *_: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.store = store
        self.governor = governor
        self._signer = signer
        self._urls = urls
        self._programs = programs
        self._wake = wake  # the admitter should look again (a seat may be free)
        self._watch = watch  # every media token checked: (space, seat or None, the refusal)
        self._clock = clock
        self.join_times: list[float] = []  # answer times in the current health period
        self._lines: dict[str, tuple[int, Line]] = {}  # Space -> (the second, its line then)

    # -- the waiting room -------------------------------------------------------------------

    async def join(self, space: Space, *, ticket: object = None, token: object = None,
                   host: bool = False) -> JoinResult:
        """One join decision: a seat, a place in line, or the Space's replay once ended."""
        if space.state is SpaceState.ENDED:
            return Ended(space, *await self._programs.replay(space))
        now = self._clock()
        store = self.store
        before_start = space.state is SpaceState.SCHEDULED
        if host:
            answer: Admitted | Waiting = store.host(space.id, now)
        elif token is not None:
            answer = await store.renew(space.id, token if isinstance(token, str) else "", now)
        elif ticket is not None:
            answer = await store.poll(space.id, ticket, now, before_start=before_start)
        else:
            answer = await store.join(space.id, now, before_start=before_start)
        if isinstance(answer, Waiting):
            if store.occupied < store.limit:  # a seat is free: the admitter may offer it now
                self._wake()
            return InLine(space, answer.ticket, answer.position, answer.waiting, answer.estimated_wait_s,
                          answer.retry_after_s * self.governor.retry_factor, answer.order, answer.requeued,
                          answer.place)
        await self._programs.seated(space)
        playlist, edges = self._urls.playlist(space.id, answer.token)
        return Seated(space, answer.token, answer.expires, answer.renewed, playlist, edges)

    async def line(self, space: Space) -> tuple[float, Line, float]:
        """(when, the Space's line, how much the ladder stretches polls) as its line document
        shows them: the store is asked once a second at most, however many edges and clients
        ask (edges cache the document for a second)."""
        now = self._clock()
        second = int(now)
        memo = self._lines.get(space.id)
        if memo is None or memo[0] != second:
            if len(self._lines) >= MAX_LINES:
                self._lines.clear()
            memo = self._lines[space.id] = (second, await self.store.line(space.id, now))
        return float(memo[0]), memo[1], self.governor.retry_factor

    async def leave(self, space: Space, *, ticket: object = None, token: object = None) -> bool:
        """Gives a seat or a place in line back; whether anything was held."""
        if not (ticket or token):
            return False
        freed = await self.store.leave(space.id, token=token if isinstance(token, str) else None,
                                       ticket=ticket, now=self._clock())
        if freed:
            self._wake()
        return freed

    def record_join(self, seconds: float) -> None:
        if len(self.join_times) < MAX_JOIN_SAMPLES:
            self.join_times.append(seconds)

    # -- the admitter and the health loop -----------------------------------------------------

    async def admit(self, period_s: float) -> tuple[bool, float]:
        """One pass of the admitter: release what ran out, offer free seats to the lines.
        Returns (whether anything was released, seconds until the next pass: ``period_s`` at
        most, sooner when the rate allows the next seat)."""
        now = self._clock()
        freed = await self.store.sweep(now) > 0
        wait = await self.store.promote(now)
        return freed, period_s if wait is None else min(period_s, max(wait, 0.001))

    def health(self, sample: HealthSample) -> None:
        """The health loop's verdict: the governor moves the limit and the ladder, and
        admission follows (new seats stop at the limit; from rung 1 every new join waits)."""
        gov = self.governor
        gov.update(sample, self.store.occupied, self._clock())
        self.store.limit = gov.limit
        self.store.paused = gov.queue_new_joins
        self.store.level = gov.level
        self.join_times = []
        self._wake()

    # -- media tokens ---------------------------------------------------------------------------

    def verify_edge(self, credential: str | None) -> str:
        return self._signer.verify_edge(credential)

    async def extend(self, space_id: str, renewals: Sequence[tuple[str, int, int]]) -> list[str]:
        """Seats an edge renewed, (seat, old expiry, new expiry): extended while held; returns
        those that are not (edge/renewals.py)."""
        return await self.store.extend(space_id, renewals, self._clock())

    async def verify_token(self, space_id: str, token: str | None, *, playlist: bool = False) -> Token:
        """Stateless: signature, Space and expiry; 401/403 before any other work. For a live
        playlist, an expired listener token whose seat is still held passes (``renewal``
        then redirects it): players that only follow URLs reload their first URL forever,
        and their seat is kept by those very renewals. Once the seat is released, the
        token is refused like any other expired one."""
        now = self._clock()
        try:
            if not playlist:
                t = self._signer.verify_token(space_id, token, now)
            else:
                t = self._signer.verify_token(space_id, token, now, grace_s=math.inf)
                if t.expires <= now and (t.host or not await self.store.seat_held(t, now)):
                    raise TokenExpired("the admission token has expired: join again")
        except AmphiError as err:
            self._watch(space_id, None, err)
            raise
        self._watch(space_id, t.seat, None)
        return t

    async def renewal(self, space_id: str, token: Token) -> str | None:
        """A fresh token for a listener past half its token's life whose seat is still held,
        for the live playlist's redirect (as an edge's fan-out renews, edge/renewals.py);
        None if not due. Clients renew through the API only if no playlist did
        (``renew_after_s``, at three quarters)."""
        now = self._clock()
        if token.expires - now > self.cfg.token_ttl_s / 2:
            return None
        if not token.host and not await self.store.seat_held(token, now):
            return None
        return (await self.store.renew_seat(token, now)).token


def settle(coro: Awaitable[object]) -> object:
    """The result of a coroutine that never suspends (``MemoryStore``'s), without a loop:
    how the simulator, which runs on a virtual clock, drives the service above."""
    it = coro.__await__()
    try:
        it.send(None)
    except StopIteration as done:
        return done.value
    it.close()
    raise RuntimeError("a coroutine suspended: settle() is only for stores that never wait")
