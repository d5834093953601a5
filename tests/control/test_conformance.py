"""Admission conformance: ONE table of scenarios, run against the memory store (the pure
``Admission``) and the Redis store (``admission.lua`` on a real redis-server). Both must give
the same answers, positions, counts, estimates, retry hints and GCRA waits: the table says
what admission does, and a store that answers otherwise is wrong.

Every step takes an injected time (seconds after ``T0``); nothing sleeps. The only randomness
the two cannot share is the order of a pre-start draw (and which pool member a seat freed
before the start goes to), so those steps check what the policy promises: the set of
positions, the counts. ``poll_jitter`` is 0, so retry hints are exact.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import redis.asyncio as aioredis

from amphi.control.admission import Admission, Admitted, Waiting
from amphi.control.store import Store
from amphi.control.store.memory import MemoryStore
from amphi.control.store.redis import RedisStore
from amphi.control.tokens import Signer, new_seat_id
from amphi.core.config import AdmissionConfig
from amphi.core.errors import AmphiError, TokenExpired, TooBusy, TooEarly, Unavailable

SECRET = b"c" * 32
# a whole second, far from the wall clock: a Redis keyspace begins (its epoch) at the real time
# of the store's first heartbeat, and seats from tokens issued before it would be taken back
T0 = float(math.ceil(time.time()) + 1_000_000)
BASE = dict(max_listeners=3, admit_rate_per_s=1000.0, admit_burst=1000, token_ttl_s=60.0, seat_grace_s=15.0,
            ticket_hold_s=30.0, poll_min_s=1.0, poll_max_s=10.0, poll_jitter=0.0, rate_window_s=30.0)


# -- what a step expects ----------------------------------------------------------------------


@dataclass(frozen=True)
class Seat:
    """Admitted: the token's expiry (seconds after T0), renewed or not, and (if named) the
    same seat as that listener's."""

    expires: int
    renewed: bool = False
    seat_of: str | None = None


@dataclass(frozen=True)
class Place:
    """Waiting: the exact position, the Space's line length, the estimate, the retry hint."""

    position: int
    waiting: int
    estimate: float | None = None
    retry: float = 1.0
    order: str = "fifo"
    requeued: bool = False
    place: int | None = -1  # the place's number in the Space's line (-1: not checked)


@dataclass(frozen=True)
class Refused:
    error: type[AmphiError]
    retry: float | None = None


# -- the steps --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Join:
    who: str
    t: float
    expect: Seat | Place | Refused
    space: str = "s"
    before: bool = False  # before the Space's scheduled start


@dataclass(frozen=True)
class Poll:  # with the ticket ``who`` was given
    who: str
    t: float
    expect: Seat | Place | Refused
    space: str = "s"
    before: bool = False


@dataclass(frozen=True)
class Renew:  # with the newest token ``who`` was given
    who: str
    t: float
    expect: Seat | Refused
    space: str = "s"


@dataclass(frozen=True)
class Leave:
    who: str
    t: float
    expect: bool
    by: str = "token"  # or "ticket"
    space: str = "s"


@dataclass(frozen=True)
class Held:  # is ``who``'s seat held (the store's answer, whatever the token's age)
    who: str
    t: float
    expect: bool
    space: str = "s"


@dataclass(frozen=True)
class Extend:
    """An edge reports the seats it renewed: who -> the new token's expiry (seconds after T0),
    the old one being who's newest token's; a who never admitted names a seat never seen.
    ``expect_gone``: whose seats the store says are not held, in the order reported. Each
    listener still held keeps the edge's token if it is its newest."""

    space: str
    renewed: dict[str, int]
    t: float
    expect_gone: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sweep:
    t: float
    expect: int  # seats and places released


@dataclass(frozen=True)
class Promote:
    t: float
    expect: float | None  # seconds until the next seat can be offered; None: nothing to do


@dataclass(frozen=True)
class Draw:
    space: str
    expect: int


@dataclass(frozen=True)
class Limit:
    n: int


@dataclass(frozen=True)
class Pause:
    on: bool


@dataclass(frozen=True)
class Close:
    space: str


@dataclass(frozen=True)
class Take:
    key: str
    rate: float
    burst: int
    t: float
    expect: float  # 0: granted; else the wait


@dataclass(frozen=True)
class Counts:
    space: str
    listeners: int = 0
    reserved: int = 0
    waiting: int = 0
    admitted: int = 0
    peak: int = 0


@dataclass(frozen=True)
class Totals:  # node-wide (cluster-wide with Redis)
    occupied: int
    waiting: int


@dataclass(frozen=True)
class Doc:
    """The Space's line document: the numbers it shows, and each named waiter's position as
    a client works it out from the document and its own place number (None: its turn came)."""

    space: str
    t: float
    called: int
    next: int
    gaps: tuple[int, ...] = ()
    waiting: int = 0
    pooled: int = 0
    free: int = 0
    at: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Positions:  # each polls; the positions, sorted (a draw's order is random)
    whos: tuple[str, ...]
    t: float
    expect: tuple[int, ...]
    space: str = "s"


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: list[Any]
    cfg: dict[str, Any] = field(default_factory=dict)


def line(n: int, t: float = 0.0, first: int = 1) -> list[Join]:
    """``n`` joins at ``t`` into a full room nobody leaves: places first..first+n-1, no estimate."""
    return [Join(f"w{p}", t, Place(p, p, retry=round(min(10.0, max(1.0, 0.2 * p)), 2)))
            for p in range(first, first + n)]


# -- the table --------------------------------------------------------------------------------

SCENARIOS = [
    Scenario("seats up to the limit, then a FIFO line", [
        Join("a", 0, Seat(60)), Join("b", 0, Seat(60)), Join("c", 0, Seat(60)),
        Join("d", 0, Place(1, 1)), Join("e", 0, Place(2, 2)),
        Counts("s", listeners=3, waiting=2, admitted=3, peak=3), Totals(3, 2),
        Leave("a", 1, True),
        Counts("s", listeners=2, waiting=2, admitted=3, peak=3),
        Promote(1, None),  # the seat is offered to the head, nobody else
        Counts("s", listeners=2, reserved=1, waiting=1, admitted=3, peak=3), Totals(3, 1),
        Poll("e", 1, Place(1, 1, estimate=30.0)),  # one seat offered in the last 30 s
        Poll("e", 1.2, Refused(TooEarly, retry=0.8)),
        Poll("d", 2, Seat(62)),
        Poll("d", 2.5, Seat(63, seat_of="d")),  # the same ticket again: the same seat, a new token
        Counts("s", listeners=3, waiting=1, admitted=4, peak=3), Totals(3, 1),
    ]),
    Scenario("nobody jumps the line; the line moves at the admission rate", [
        Join("a", 0, Seat(60)),
        Join("b", 0, Place(1, 1, estimate=1.0)),  # the rate's wait 0.5 + one interval
        Join("c", 0.1, Place(2, 2, estimate=1.4)),
        Promote(0.2, 0.3),
        Promote(0.5, 0.5),  # b offered; the next in 1 / rate
        Join("d", 0.6, Place(2, 2, estimate=1.4)),  # seats are free, but c was first
        Counts("s", listeners=1, reserved=1, waiting=2, admitted=1, peak=1),
        Promote(1.0, 0.5), Promote(1.5, None),
        Poll("c", 1.6, Seat(62)), Poll("d", 1.6, Seat(62)), Poll("b", 1.6, Seat(62)),
        Counts("s", listeners=4, admitted=4, peak=4), Totals(4, 0),
    ], cfg=dict(max_listeners=10, admit_rate_per_s=2.0, admit_burst=1)),
    Scenario("estimates round halves up", [
        Pause(True),
        Join("a", 0, Place(1, 1, estimate=0.3)),  # 0.25
        Join("b", 0, Place(2, 2, estimate=0.5)),
        Join("c", 0, Place(3, 3, estimate=0.8)),  # 0.75
        Promote(0, 0.25), Promote(0.25, 0.25), Promote(0.5, None),
        Counts("s", reserved=3),
    ], cfg=dict(max_listeners=10, admit_rate_per_s=4.0, admit_burst=1)),
    Scenario("the back of a long line polls slower, 10 s at most", [
        Join("a", 0, Seat(60)), *line(55),
        Counts("s", listeners=1, waiting=55, admitted=1, peak=1), Totals(1, 55),
    ], cfg=dict(max_listeners=1)),
    Scenario("promote offers 1000 seats a call at most, then answers 0: call again", [
        Pause(True),
        *[Join(f"w{p}", 0, Place(p, p, estimate=0.0)) for p in range(1, 1003)],
        Promote(0, 0.0), Counts("s", reserved=1000, waiting=2), Totals(1000, 2),
        Promote(0, None), Counts("s", reserved=1002), Totals(1002, 0),
    ], cfg=dict(max_listeners=5000, admit_rate_per_s=1e6, admit_burst=5000)),
    Scenario("the waiting room is bounded", [
        Join("a", 0, Seat(60)), Join("b", 0, Place(1, 1)), Join("c", 0, Place(2, 2)),
        Join("d", 0, Refused(TooBusy, retry=10.0)),
        Counts("s", listeners=1, waiting=2, admitted=1, peak=1),
    ], cfg=dict(max_listeners=1, max_waiting=2)),
    Scenario("a place is held until its turn without a poll; the line document gives exact positions", [
        Join("a", 0, Seat(60)), Join("b", 0, Place(1, 1, place=0)), Join("c", 0, Place(2, 2, place=1)),
        Join("d", 0, Place(3, 3, place=2)), Join("e", 0, Place(4, 4, place=3)),
        Sweep(70, 0),  # nobody polled: every place is still held
        Doc("s", 70, called=0, next=4, waiting=4, at={"b": 1, "c": 2, "d": 3, "e": 4}),
        Leave("c", 71, True, by="ticket"),  # from the middle: a gap
        Doc("s", 71, called=0, next=4, gaps=(1,), waiting=3, at={"b": 1, "d": 2, "e": 3}),
        Poll("d", 72, Place(2, 3, place=2)),  # the API says the same
        Leave("a", 73, True), Promote(73, None),  # b's turn: the head moves past the gap
        Doc("s", 73, called=2, next=4, waiting=2, at={"b": None, "d": 1, "e": 2}),
        Leave("e", 74, True, by="ticket"),
        Doc("s", 74, called=2, next=4, gaps=(3,), waiting=1, at={"d": 1}),
        Poll("b", 74, Seat(134)),
        Join("f", 75, Place(2, 2, estimate=60.0, place=4)),  # one seat offered in the last 30 s
        Doc("s", 75, called=2, next=5, gaps=(3,), waiting=2, at={"d": 1, "f": 2}),
        Counts("s", listeners=1, waiting=2, admitted=2, peak=1), Totals(1, 2),
    ], cfg=dict(max_listeners=1)),
    Scenario("an offered seat is held ticket_hold_s, then offered to the next", [
        Join("a", 0, Seat(60)), Join("b", 0, Place(1, 1)), Join("c", 0, Place(2, 2)),
        Leave("a", 1, True), Promote(1, None),
        Counts("s", reserved=1, waiting=1, admitted=1, peak=1),
        Poll("c", 2, Place(1, 1, estimate=30.0)), Poll("c", 20, Place(1, 1, estimate=30.0)),
        Sweep(31.5, 1),  # the seat offered to b at 1 (its place goes with it)
        Promote(31.5, None),
        Poll("b", 32, Place(1, 1, estimate=30.0, requeued=True)),
        Poll("c", 32, Seat(92)),
        Counts("s", listeners=1, waiting=1, admitted=2, peak=1), Totals(1, 1),
    ], cfg=dict(max_listeners=1)),
    Scenario("the line's measured speed looks back exactly rate_window_s", [
        Join("a", 0, Seat(60)), Join("b", 0.5, Place(1, 1)), Join("c", 0.5, Place(2, 2)),
        Leave("a", 1.7, True), Promote(1.7, None),
        Poll("c", 31.6, Place(1, 1, estimate=30.0)),  # the seat offered at 1.7 is 29.9 s old
        Poll("c", 33, Place(1, 1)),  # ... and now 31.3 s: the line has not moved
    ], cfg=dict(max_listeners=1)),
    Scenario("renew: the same seat, the same token while fresh, none once released", [
        Join("a", 0, Seat(60)),
        Renew("a", 10, Seat(60, renewed=True, seat_of="a")),  # renewed a moment ago: the same token
        Renew("a", 30, Seat(90, renewed=True, seat_of="a")),
        Join("b", 30, Seat(90)),
        Renew("b", 100, Seat(160, renewed=True, seat_of="b")),  # token expired, seat within its grace
        Sweep(106, 1),  # a's seat: 90 + 15
        Held("a", 106, False), Held("b", 106, True),
        Renew("a", 106, Refused(TokenExpired)),
        Leave("b", 107, True), Held("b", 107, False),
        Renew("b", 108, Refused(TokenExpired)),
        Leave("b", 108, False),
        Counts("s", admitted=2, peak=2), Totals(0, 0),
    ], cfg=dict(max_listeners=2)),
    Scenario("extend: a seat an edge renewed outlives its old token, until the new one's expiry and the grace", [
        Join("a", 0, Seat(60)), Join("b", 0, Seat(60)),
        Extend("s", {"a": 100}, 40),
        Sweep(75, 1),  # b's seat (60 + 15); a's outlives its old token
        Held("a", 75, True), Held("b", 75, False),
        Extend("s", {"a": 130}, 70),
        Sweep(115, 0), Held("a", 115, True),
        Sweep(145, 1),  # 130 + 15
        Held("a", 145, False),
        Counts("s", admitted=2, peak=2), Totals(0, 0),
    ]),
    Scenario("extend never brings back a seat that was left or lapsed: the cap stays exact", [
        Join("a", 0, Seat(60)), Join("b", 0, Seat(60)), Join("c", 10, Seat(70)),
        Leave("a", 20, True),
        Sweep(75, 1),  # b's seat, nobody renewed it; c's lasts until 85
        Extend("s", {"a": 130, "b": 130, "c": 130}, 76, ("a", "b")),
        Counts("s", listeners=1, admitted=3, peak=3), Totals(1, 0),
        Held("a", 76, False), Held("b", 76, False), Held("c", 76, True),
        Join("d", 77, Seat(137)), Join("e", 77, Seat(137)),  # exactly the two free seats
        Join("f", 77, Place(1, 1)),
        Counts("s", listeners=3, waiting=1, admitted=5, peak=3), Totals(3, 1),
        Sweep(145, 1),  # c's seat (130 + 15); f's place is held until its turn; d's and e's seats last until 152
    ]),
    Scenario("extend: another Space's seats and seats never seen are gone", [
        Join("a", 0, Seat(60), space="x"), Join("b", 0, Seat(60), space="y"),
        Extend("y", {"a": 100, "b": 100, "nobody": 100}, 40, ("a", "nobody")),
        Counts("x", listeners=1, admitted=1, peak=1), Counts("y", listeners=1, admitted=1, peak=1),
        Totals(2, 0),
        Sweep(75, 1),  # a's seat: reported for the wrong Space, not extended
        Held("a", 75, False, space="x"), Held("b", 75, True, space="y"),
        Counts("x", admitted=1, peak=1), Totals(1, 0),
    ]),
    Scenario("extend never shortens: a later expiry already known is kept", [
        Join("a", 0, Seat(60)), Join("b", 0, Seat(60)),
        Renew("b", 30, Seat(90, renewed=True, seat_of="b")),
        Extend("s", {"b": 70}, 31),  # older than the node's own renewal
        Renew("b", 32, Seat(90, renewed=True, seat_of="b")),  # not extended: the same token again
        Extend("s", {"a": 100}, 40),
        Extend("s", {"a": 80}, 41),  # an edge that renewed an older token reports late
        Sweep(95, 0), Held("a", 95, True),
        Sweep(105, 1),  # b's: 90 + 15
        Sweep(115, 1),  # a's: 100 + 15
    ]),
    Scenario("extend: a seat outlives one token life from now at most", [
        Join("a", 0, Seat(60)),
        Extend("s", {"a": 1000}, 10.5),  # until ceil(10.5 + 60) + 1 = 72
        Sweep(86.9, 0), Held("a", 86.9, True),
        Sweep(87, 1),
    ]),
    Scenario("renew after extend: a fresh token for the same seat (the node never saw the edge's)", [
        Join("a", 0, Seat(60)),
        Extend("s", {"a": 100}, 40),
        Renew("a", 41, Seat(101, renewed=True, seat_of="a")),  # fresh, though 100 is not due yet
        Renew("a", 42, Seat(101, renewed=True, seat_of="a")),  # the node's own: the same token while fresh
        Sweep(115, 0),  # the extended deadline (100 + 15) was moved on by the renewal
        Sweep(116, 1),
        Counts("s", admitted=1, peak=1), Totals(0, 0),
    ]),
    Scenario("lowering the limit with seats taken evicts nobody; joins wait until below it", [
        Join("a", 0, Seat(60)), Join("b", 0, Seat(60)), Join("c", 0, Seat(60)),
        Limit(2),
        Join("d", 1, Place(1, 1)),
        Held("a", 1, True), Renew("a", 30, Seat(90, renewed=True, seat_of="a")),
        Leave("a", 31, True), Promote(31, None),  # 2 seats taken, the limit is 2: nothing offered
        Counts("s", listeners=2, waiting=1, admitted=3, peak=3),
        Leave("b", 32, True), Promote(32, None),
        Counts("s", listeners=1, reserved=1, admitted=3, peak=3),
        Poll("d", 33, Seat(93)),
        Limit(3), Join("e", 34, Seat(94)), Totals(3, 0),
    ]),
    Scenario("paused: every new join waits, and the line still moves under the limit", [
        Join("a", 0, Seat(60)),
        Pause(True),
        Join("b", 0, Place(1, 1, estimate=0.0)),
        Promote(0, None),
        Poll("b", 1, Seat(61)),
        Join("c", 1, Place(1, 1, estimate=0.0)),
        Pause(False),
        Join("d", 2, Place(2, 2, estimate=60.0)),  # c first; one free seat, one offered in 30 s
        Promote(2, None),
        Counts("s", listeners=2, reserved=1, waiting=1, admitted=2, peak=2), Totals(3, 1),
    ]),
    Scenario("leaving frees the seat or the place at once; the head gets the seat", [
        Join("a", 0, Seat(60)), Join("b", 0, Place(1, 1)), Join("c", 0, Place(2, 2)), Join("d", 0, Place(3, 3)),
        Leave("c", 1, True, by="ticket"), Poll("d", 1, Place(2, 2)),
        Leave("c", 1, False, by="ticket"),
        Leave("a", 2, True), Promote(2, None),
        Poll("b", 3, Seat(63)),
        Leave("b", 4, True, by="ticket"),  # the ticket names the seat it picked up
        Counts("s", waiting=1, admitted=2, peak=1), Totals(0, 1),
        Promote(4, None), Poll("d", 5, Seat(65)), Totals(1, 0),
    ], cfg=dict(max_listeners=1)),
    Scenario("before the start: a pool drawn in random order, ahead of later arrivals", [
        Join("a", 0, Seat(60), before=True),
        Join("p1", 0, Place(1, 1, order="draw_at_start"), before=True),
        Join("p2", 0, Place(2, 2, order="draw_at_start"), before=True),
        Join("p3", 0.5, Place(3, 3, order="draw_at_start"), before=True),
        Poll("p1", 1, Place(3, 3, order="draw_at_start"), before=True),  # the pool's size: an upper bound
        Counts("s", listeners=1, waiting=3, admitted=1, peak=1),
        Doc("s", 1, called=0, next=0, waiting=3, pooled=3),  # no numbers before the draw
        Draw("s", 3),
        Join("late", 1, Place(4, 4, place=3)),
        Doc("s", 1, called=0, next=4, waiting=4, at={"late": 4}),
        Positions(("p1", "p2", "p3"), 2, (1, 2, 3)),
        Poll("late", 2, Place(4, 4)),
        Draw("s", 0), Totals(1, 4),
    ], cfg=dict(max_listeners=1)),
    Scenario("a seat freed before the start goes to the pool", [
        Join("a", 0, Seat(60), before=True),
        Join("p", 0, Place(1, 1, order="draw_at_start"), before=True),
        Leave("a", 1, True), Promote(1, None),
        Poll("p", 2, Seat(62), before=True),
        Counts("s", listeners=1, admitted=2, peak=1),
        Draw("s", 0),
    ], cfg=dict(max_listeners=1)),
    Scenario("several Spaces: one line in order of arrival; a drawn pool keeps its place", [
        Join("a", 0, Seat(60), space="x"), Join("b", 0, Seat(60), space="y", before=True),
        Join("x1", 1, Place(1, 1), space="x"),
        Join("y1", 1, Place(1, 1, order="draw_at_start"), space="y", before=True),
        Join("x2", 1, Place(2, 2), space="x"),  # the same instant as y1, arrived after it
        Counts("x", listeners=1, waiting=2, admitted=1, peak=1),
        Counts("y", listeners=1, waiting=1, admitted=1, peak=1), Totals(2, 3),
        Draw("y", 1),
        Join("y2", 2, Place(2, 2), space="y"),
        Leave("a", 3, True, space="x"), Leave("b", 3, True, space="y"),
        Promote(3, None),  # x1, then y1: it arrived before x2
        Poll("y1", 4, Seat(64), space="y"), Poll("x1", 4, Seat(64), space="x"),
        Poll("x2", 4, Place(1, 1, estimate=15.0), space="x"),
        Poll("y2", 4, Place(1, 1, estimate=15.0), space="y"),
        Close("x"),
        Counts("x", admitted=2, peak=1),
        Counts("y", listeners=1, waiting=1, admitted=2, peak=1), Totals(1, 1),
        Renew("x1", 40, Refused(TokenExpired), space="x"),
        Poll("x2", 5, Place(1, 1, estimate=0.0, requeued=True), space="x"),  # its place went with the Space
        Promote(5, None),  # y2 arrived first, then the limit
        Counts("y", listeners=1, reserved=1, admitted=2, peak=1),
        Counts("x", waiting=1, admitted=2, peak=1), Totals(2, 1),
    ], cfg=dict(max_listeners=2)),
    Scenario("GCRA take: a burst, then one grant per interval; every key its own budget", [
        Take("10.0.0.1", 0.5, 3, 0, 0), Take("10.0.0.1", 0.5, 3, 0, 0), Take("10.0.0.1", 0.5, 3, 0, 0),
        Take("10.0.0.1", 0.5, 3, 0, 2.0),
        Take("10.0.0.2", 0.5, 3, 0, 0),
        Take("10.0.0.1", 0.5, 3, 1.5, 0.5),  # a refusal charges nothing
        Take("10.0.0.1", 0.5, 3, 2.0, 0),
        Take("10.0.0.1", 0.5, 3, 2.0, 2.0), Take("10.0.0.1", 0.5, 3, 3.9, 0.1),
        Take("speaker", 10.0, 1, 0, 0), Take("speaker", 10.0, 1, 0.05, 0.05), Take("speaker", 10.0, 1, 0.1, 0),
        Take("idle", 1.0, 2, 0, 0), Take("idle", 1.0, 2, 100, 0), Take("idle", 1.0, 2, 100, 0),
        Take("idle", 1.0, 2, 100, 1.0),  # whole again after a quiet spell: exactly the burst
    ]),
]


# -- the two stores ---------------------------------------------------------------------------


def config(scenario: Scenario) -> AdmissionConfig:
    return AdmissionConfig(**{**BASE, **scenario.cfg})  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def memory_store(cfg: AdmissionConfig, _url: str | None) -> AsyncIterator[tuple[Store, Any]]:
    store = MemoryStore(Admission(cfg, Signer(SECRET), random.Random(7)))

    async def totals() -> tuple[int, int]:
        return store.occupied, store.waiting

    yield store, totals


@contextlib.asynccontextmanager
async def redis_store(cfg: AdmissionConfig, url: str | None) -> AsyncIterator[tuple[Store, Any]]:
    assert url is not None
    prefix = f"conf-{uuid.uuid4().hex[:8]}:"  # each run its own keyspace in the one server
    store = RedisStore(url, cfg, Signer(SECRET), node_id="n1", public_url="http://n1", prefix=prefix,
                       rng=random.Random(7))
    raw = aioredis.Redis.from_url(url)

    async def totals() -> tuple[int, int]:  # exact, not the heartbeat's last known figures
        return await raw.zcard(prefix + "seats"), int(await raw.get(prefix + "waiting") or 0)

    await store.open()
    assert store.up
    try:
        yield store, totals
    finally:
        await store.close()
        await raw.aclose()


STORES = {"memory": memory_store, "redis": redis_store}


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory):
    """One real redis-server for the whole table (each run takes its own key prefix)."""
    from tests.integration.redis_proc import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


# -- running the table ------------------------------------------------------------------------


@dataclass
class Holder:
    ticket: str | None = None
    token: str | None = None
    seat: str | None = None
    expires: int = 0  # the token's
    place: int | None = None  # the place's number, while waiting


async def outcome(call: Any) -> Any:
    try:
        return await call
    except AmphiError as e:
        return e


def check(expect: Seat | Place | Refused, got: Any, held: dict[str, Holder], who: str) -> None:
    if isinstance(expect, Refused):
        assert isinstance(got, expect.error), f"expected {expect.error.__name__}, got {got!r}"
        if expect.retry is not None:
            assert got.retry_after_s == pytest.approx(expect.retry, abs=1e-6)
        return
    if isinstance(got, Exception):
        raise AssertionError(f"expected {expect}, got {got!r}")
    h = held.setdefault(who, Holder())
    if isinstance(expect, Seat):
        assert isinstance(got, Admitted), f"expected {expect}, got {got}"
        assert (got.expires - T0, got.renewed) == (expect.expires, expect.renewed), got
        if expect.seat_of is not None:
            assert got.seat == held[expect.seat_of].seat
        h.token, h.seat, h.expires = got.token, got.seat, got.expires
        return
    assert isinstance(got, Waiting), f"expected {expect}, got {got}"
    if expect.place != -1:
        assert got.place == expect.place, got
    h.place = got.place
    assert (got.position, got.waiting, got.estimated_wait_s, got.retry_after_s,
            got.order, got.requeued) == (expect.position, expect.waiting, expect.estimate, expect.retry,
                                         expect.order, expect.requeued), got
    h.ticket = got.ticket


async def run(scenario: Scenario, store: Store, totals: Any) -> None:
    held: dict[str, Holder] = {}
    signer = Signer(SECRET)
    for i, step in enumerate(scenario.steps):
        where = f"step {i}: {step}"
        try:
            await run_step(step, store, totals, held, signer)
        except AssertionError as e:
            raise AssertionError(f"{scenario.name!r}, {where}: {e}") from None


async def run_step(step: Any, store: Store, totals: Any, held: dict[str, Holder], signer: Signer) -> None:
    now = T0 + getattr(step, "t", 0.0)
    match step:
        case Join():
            check(step.expect, await outcome(store.join(step.space, now, before_start=step.before)), held, step.who)
        case Poll():
            got = await outcome(store.poll(step.space, held[step.who].ticket, now, before_start=step.before))
            check(step.expect, got, held, step.who)
        case Renew():
            check(step.expect, await outcome(store.renew(step.space, held[step.who].token, now)), held, step.who)  # type: ignore[arg-type]
        case Leave():
            h = held[step.who]
            if step.by == "ticket":
                freed = await store.leave(step.space, token=None, ticket=h.ticket, now=now)
            else:
                freed = await store.leave(step.space, token=h.token, ticket=None, now=now)
            assert freed is step.expect
        case Held():
            token = signer.verify_token(step.space, held[step.who].token, now, grace_s=1e9)
            assert await store.seat_held(token, now) is step.expect
        case Extend():
            never = Holder(expires=int(T0) + 60)  # a seat never seen, for a token issued well after the epoch
            reported = {who: held.get(who) or replace(never, seat=f"never-{who}") for who in step.renewed}
            renewals = [(h.seat, h.expires, int(T0 + step.renewed[who])) for who, h in reported.items()]
            gone = await store.extend(step.space, renewals, now)  # type: ignore[arg-type]
            assert gone == [reported[who].seat for who in step.expect_gone], gone
            for who, h in reported.items():  # the edge handed out the new tokens
                expires = int(T0 + step.renewed[who])
                if who not in step.expect_gone and expires > h.expires:
                    h.token, h.expires = signer.token(step.space, h.seat, expires), expires  # type: ignore[arg-type]
        case Sweep():
            assert await store.sweep(now) == step.expect
        case Promote():
            wait = await store.promote(now)
            assert wait == (None if step.expect is None else pytest.approx(step.expect, abs=1e-6)), wait
        case Draw():
            assert await store.draw(step.space) == step.expect
        case Limit():
            store.limit = step.n
        case Pause():
            store.paused = step.on
        case Close():
            await store.close_space(step.space)
        case Take():
            wait = await store.take(step.key, step.rate, step.burst, now)
            assert wait == pytest.approx(step.expect, abs=1e-6)
        case Counts():
            c = await store.counts(step.space)
            got = (c.listeners, c.reserved, c.waiting, c.admitted_total, c.peak_listeners)
            assert got == (step.listeners, step.reserved, step.waiting, step.admitted, step.peak)
        case Totals():
            assert await totals() == (step.occupied, step.waiting)
        case Doc():
            line = await store.line(step.space, now)
            got = (line.called, line.next, line.gaps, line.waiting, line.pooled, line.free)
            assert got == (step.called, step.next, step.gaps, step.waiting, step.pooled, step.free), line
            for who, position in step.at.items():
                place = held[who].place
                assert place is not None and line.position(place) == position, (who, place, line)
        case Positions():
            positions = []
            for who in step.whos:
                got = await store.poll(step.space, held[who].ticket, now)
                assert isinstance(got, Waiting), got
                positions.append(got.position)
            assert tuple(sorted(positions)) == step.expect
        case _:
            raise AssertionError(f"unknown step {step!r}")


@pytest.mark.parametrize("kind", sorted(STORES))
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_scenario(scenario: Scenario, kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("shared_redis").url if kind == "redis" else None
    async with STORES[kind](config(scenario), url) as (store, totals):
        await run(scenario, store, totals)


async def test_take_agrees_on_a_random_walk(shared_redis) -> None:
    """Beyond the table: the two GCRAs (Python and Lua) give the same waits on 300 random
    requests over a few keys, rates and bursts."""
    rng = random.Random(5)
    budgets = {"a": (0.5, 3), "b": (10.0, 1), "c": (3.0, 7)}
    walk, t = [], 0.0
    for _ in range(300):
        t += rng.choice([0.0, 0.0, 0.01, 0.1, 0.3, 1.0, 4.0])
        key = rng.choice(sorted(budgets))
        walk.append((key, *budgets[key], t))
    cfg = config(Scenario("", []))
    answers = {}
    for kind, make in STORES.items():
        async with make(cfg, shared_redis.url) as (store, _):
            answers[kind] = [await store.take(k, r, b, T0 + at) for k, r, b, at in walk]
    assert sum(w == 0 for w in answers["memory"]) > 100 and sum(w > 0 for w in answers["memory"]) > 50
    assert answers["redis"] == pytest.approx(answers["memory"], abs=1e-5)


async def test_redis_takes_back_the_seats_it_lost_when_an_edge_reports_them(shared_redis) -> None:
    """The one difference (the table avoids it: T0 is far after the epoch), as for renew: a seat
    this keyspace never saw, for a token issued before it began (Redis restarted empty), is
    taken back and extended. The memory store has none: after a restart listeners join again."""
    async with redis_store(config(Scenario("", [])), shared_redis.url) as (store, totals):
        now = time.time()
        t = math.ceil(now)
        lost, stale, new = new_seat_id(), new_seat_id(), new_seat_id()
        renewals = [(lost, t + 30, t + 60),  # issued 30 s before the keyspace began
                    (stale, t - 20, t + 40),  # as old, but past its grace
                    (new, t + 70, t + 90)]  # issued since: a seat this keyspace would know
        assert await store.extend("s", renewals, now) == [stale, new]
        assert (await store.counts("s")).listeners == 1 and await totals() == (1, 0)
        signer = Signer(SECRET)
        assert await store.seat_held(signer.verify_token("s", signer.token("s", lost, t + 60), now), now)
        assert await store.sweep(t + 74) == 0 and await store.sweep(t + 75) == 1  # t + 60 + grace
        assert await store.extend("s", renewals[:1], t + 76) == [lost]  # past its grace now: not again


async def test_redis_away_refuses_extend_so_the_edge_reports_again(redis_server) -> None:
    async with redis_store(config(Scenario("", [])), redis_server.url) as (store, _):
        seat = await store.join("s", T0)
        assert isinstance(seat, Admitted)
        redis_server.stop()
        for _ in range(2):  # the failed call, then refused without touching the network
            with pytest.raises(Unavailable):
                await store.extend("s", [(seat.seat, seat.expires, seat.expires + 30)], T0 + 30)
        assert not store.up
