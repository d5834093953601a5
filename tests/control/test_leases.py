"""Leases (control/leases.py, control/store/leases.lua) against a real redis-server: one host per
Space, only its standby takes a lapsed lease, a replaced host learns it at its next renewal,
and a host fences itself on its own clock before Redis could let its lease go."""

from __future__ import annotations

import contextlib
import time

import pytest
import redis

from amphi.control.leases import LEASE_TTL_S, RECLAIM_S, SAFETY_S, Leases
from amphi.core.errors import Unavailable
from tests.control.test_redis_store import running, store

SPACE = "space-1"


def old_epoch(url: str) -> None:
    """The keyspace began long ago: the reclaim window after a Redis restart is over."""
    redis.Redis.from_url(url).set("amphi:epoch", f"{time.time() - 60:.6f}")


async def beat(s) -> None:
    """The store's heartbeat once Redis answers again (the first call meets the dead connection)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            await s._beat()
            return
        except redis.exceptions.ConnectionError:
            assert time.monotonic() < deadline, "redis never answered again"


async def test_one_host_only_its_standby_takes_over_and_the_old_host_learns_it(redis_server) -> None:
    a, b, c = (store(redis_server.url, n) for n in "abc")
    async with running(a, b, c):
        old_epoch(redis_server.url)
        assert await a.renew_leases([SPACE], LEASE_TTL_S) == {SPACE: ""}  # a hosts it
        assert await b.stand_by([SPACE], 4.5) == {SPACE: ("b", "a")}  # b offers first: b stands by
        assert await c.stand_by([SPACE], 4.5) == {SPACE: ("b", "a")}  # c's offer is not taken
        assert await b.acquire(SPACE, LEASE_TTL_S, RECLAIM_S) == 0  # held: not taken
        assert await a.renew_leases([SPACE], LEASE_TTL_S) == {SPACE: ""}
        # a stops renewing (killed): the lease lapses after its TTL, in Redis's time
        deadline = time.monotonic() + 5
        while (await b.holders([SPACE]))[SPACE][0] == "a":
            assert time.monotonic() < deadline, "the lease never lapsed"
            await b.stand_by([SPACE], 4.5)
        assert await c.acquire(SPACE, LEASE_TTL_S, RECLAIM_S) == 0  # not the standby
        generation = await b.acquire(SPACE, LEASE_TTL_S, RECLAIM_S)
        assert generation >= 2  # a's was the first
        assert await b.acquire(SPACE, LEASE_TTL_S, RECLAIM_S) == 0  # once
        assert await a.renew_leases([SPACE], LEASE_TTL_S) == {SPACE: "b"}  # a, back, is told
        assert await b.renew_leases([SPACE], LEASE_TTL_S) == {SPACE: ""}
        assert (await c.holders([SPACE]))[SPACE] == ("b", "b", None)


async def test_after_a_redis_restart_the_host_takes_its_lease_back_before_any_standby(redis_server) -> None:
    a, b = store(redis_server.url, "a"), store(redis_server.url, "b")
    async with running(a, b):
        await a.renew_leases([SPACE], LEASE_TTL_S)
        await b.stand_by([SPACE], 4.5)
        redis_server.stop()
        redis_server.start()  # empty
        await beat(b)  # the keyspace begins again (admission.lua sets its epoch): now
        assert await b.stand_by([SPACE], 4.5) == {SPACE: ("b", "")}  # the lease is gone ...
        assert await b.acquire(SPACE, LEASE_TTL_S, RECLAIM_S) == 0  # ... but only a host may take it yet
        with contextlib.suppress(Unavailable):
            await a.renew_leases([SPACE], LEASE_TTL_S)  # the first meets the dead connection
        assert await a.renew_leases([SPACE], LEASE_TTL_S) == {SPACE: ""}  # a takes it back
        assert await b.acquire(SPACE, LEASE_TTL_S, RECLAIM_S) == 0


async def test_a_drained_lease_goes_to_the_named_node_and_an_ended_space_releases_it(redis_server) -> None:
    a, b = store(redis_server.url, "a"), store(redis_server.url, "b")
    async with running(a, b):
        await a.renew_leases([SPACE], LEASE_TTL_S)
        assert await b.hand_over(SPACE, "b", 7, LEASE_TTL_S) == 0  # only the holder hands over
        assert await a.hand_over(SPACE, "b", 7, LEASE_TTL_S) >= 2
        assert await b.holders([SPACE]) == {SPACE: ("b", "", 7)}  # b resumes after segment 7
        assert await a.renew_leases([SPACE], LEASE_TTL_S) == {SPACE: "b"}
        await a.release([SPACE])  # not a's: nothing happens
        assert (await a.holders([SPACE]))[SPACE][0] == "b"
        await b.release([SPACE])
        assert (await a.holders([SPACE]))[SPACE][:2] == ("", "")


async def test_redis_unreachable_is_unavailable_not_a_crash(redis_server) -> None:
    a = store(redis_server.url, "a")
    async with running(a):
        redis_server.stop()
        with pytest.raises(Unavailable):
            await a.renew_leases([SPACE], LEASE_TTL_S)


def test_the_host_fences_itself_on_its_own_clock() -> None:
    leases = Leases(alone=False)
    assert leases.may_publish(SPACE, 100.0)  # created here, no lease yet: no one else can hold one
    leases.held(SPACE, sent=100.0)
    assert leases.may_publish(SPACE, 100.0 + LEASE_TTL_S - SAFETY_S - 0.01)
    assert not leases.may_publish(SPACE, 100.0 + LEASE_TTL_S - SAFETY_S)  # before Redis could drop it
    leases.away = True  # Redis unreachable: no standby can take it either
    assert leases.may_publish(SPACE, 100.0 + 60)
    leases.away = False
    leases.held(SPACE, sent=200.0)
    assert leases.may_publish(SPACE, 200.5)
    assert Leases(alone=True).may_publish(SPACE, 1e9)
