"""RedisStore against a real redis-server: the same answers as the embedded Admission, and
one cap and one line for several stores (nodes) sharing it."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import pytest

from amphi.control.admission import Admitted, Waiting
from amphi.control.store.redis import RedisStore
from amphi.control.tokens import Signer
from amphi.core.config import AdmissionConfig
from amphi.core.errors import TokenExpired, TooEarly, Unavailable

SECRET = b"0123456789abcdef0123456789abcdef"


def store(url: str, node: str, **cfg: object) -> RedisStore:
    c = AdmissionConfig(**{"max_listeners": 3, "admit_rate_per_s": 1000.0, "admit_burst": 1000, **cfg})  # type: ignore[arg-type]
    return RedisStore(url, c, Signer(SECRET), node_id=node, public_url=f"http://{node}", rng=random.Random(1))


@contextlib.asynccontextmanager
async def running(*stores: RedisStore):
    for s in stores:
        await s.open()
    try:
        yield
    finally:
        for s in stores:
            await s.close()


async def test_cap_and_one_fifo_line_across_two_stores(redis_server) -> None:
    a, b = store(redis_server.url, "a"), store(redis_server.url, "b")
    async with running(a, b):
        now = time.time()
        answers = [await (a if i % 2 else b).join("s1", now) for i in range(7)]
        admitted = [x for x in answers if isinstance(x, Admitted)]
        waiting = [x for x in answers if isinstance(x, Waiting)]
        assert len(admitted) == 3 and [w.position for w in waiting] == [1, 2, 3, 4]
        assert (await b.counts("s1")).listeners == 3 and (await a.counts("s1")).waiting == 4
        # a seat frees on node a: node b offers it to the head of the line, which picks it up on a
        assert await a.leave("s1", token=admitted[0].token, ticket=None, now=now)
        assert await b.promote(now) is None
        head = await a.poll("s1", waiting[0].ticket, now + 5)
        assert isinstance(head, Admitted)
        second = await b.poll("s1", waiting[1].ticket, now + 5)
        assert isinstance(second, Waiting) and second.position == 1
        with pytest.raises(TooEarly):
            await a.poll("s1", second.ticket, now + 5)
        # renewal keeps the seat; after leaving, the token is refused
        renewed = await b.renew("s1", head.token, now + 50)
        assert renewed.seat == head.seat and renewed.renewed
        assert await a.leave("s1", token=renewed.token, ticket=None, now=now + 50)
        with pytest.raises(TokenExpired):
            await a.renew("s1", renewed.token, now + 51)

async def test_seats_and_offers_lapse_without_their_node(redis_server) -> None:
    a = store(redis_server.url, "a", max_listeners=1, token_ttl_s=10.0, seat_grace_s=1.0, ticket_hold_s=2.0)
    async with running(a):
        now = time.time()
        first = await a.join("s", now)
        second = await a.join("s", now)
        assert isinstance(first, Admitted) and isinstance(second, Waiting)
        assert await a.sweep(now + 3) == 0  # a place is held until its turn, polled or not
        assert (await a.counts("s")).waiting == 1
        assert await a.sweep(now + 12) == 1  # the seat nobody renewed
        assert a.occupied in (0, 1) and (await a.counts("s")).listeners == 0
        assert await a.promote(now + 12) is None  # the seat goes to the place
        assert await a.sweep(now + 15) == 1  # offered, not picked up within ticket_hold_s
        again = await a.poll("s", second.ticket, now + 16)
        assert isinstance(again, Admitted)  # a lapsed ticket joins again (a seat was free)

async def test_pool_is_drawn_into_the_line_at_the_start(redis_server) -> None:
    a = store(redis_server.url, "a", max_listeners=1)
    async with running(a):
        now = time.time()
        assert isinstance(await a.join("s", now, before_start=True), Admitted)
        early = [await a.join("s", now, before_start=True) for _ in range(5)]
        assert all(isinstance(w, Waiting) and w.order == "draw_at_start" for w in early)
        assert await a.draw("s") == 5
        late = await a.join("s", now)  # arrives after the start: behind everyone drawn
        positions = sorted([(await a.poll("s", w.ticket, now + 20)).position for w in early])  # type: ignore[union-attr]
        assert positions == [1, 2, 3, 4, 5]
        assert (await a.poll("s", late.ticket, now + 20)).position == 6  # type: ignore[union-attr]

async def test_redis_away_refuses_joins_fast_keeps_seats_and_recovers(redis_server) -> None:
    a = store(redis_server.url, "a", token_ttl_s=10.0, seat_grace_s=5.0)
    async with running(a):
        now = time.time()
        seat = await a.join("s", now)
        assert isinstance(seat, Admitted)
        redis_server.stop()
        with pytest.raises(Unavailable):
            await a.join("s", time.time())
        t0 = time.perf_counter()
        with pytest.raises(Unavailable) as refused:
            await a.join("s", time.time())
        assert time.perf_counter() - t0 < 0.05 and 2 <= refused.value.retry_after_s <= 5
        token = a.signer.verify_token("s", seat.token, now)
        assert await a.seat_held(token, now + 12)  # fails open for a token within its grace
        kept = await a.renew("s", seat.token, time.time())  # a new token, signed here
        assert kept.seat == seat.seat and kept.expires >= seat.expires
        redis_server.start()  # empty: a new epoch
        await asyncio.wait_for(_until(lambda: a.up), 10)
        back = await a.renew("s", kept.token, time.time())  # the lost seat is taken back
        assert back.seat == seat.seat and (await a.counts("s")).listeners == 1
        assert isinstance(await a.join("s", time.time()), Admitted)

async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.05)


async def test_rate_limits_are_one_budget_across_stores(redis_server) -> None:
    a, b = store(redis_server.url, "a"), store(redis_server.url, "b")
    async with running(a, b):
        now = time.time()
        grants = [await (a if i % 2 else b).take("10.0.0.1", 0.5, 3, now) for i in range(4)]
        assert grants[:3] == [0, 0, 0] and 1.9 < grants[3] <= 2.0  # the 4th waits 1/rate
        assert await a.take("10.0.0.2", 0.5, 3, now) == 0  # another key, its own budget
        assert await b.take("10.0.0.1", 0.5, 3, now + 2.0) == 0