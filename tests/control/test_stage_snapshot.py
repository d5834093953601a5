"""The stage outlives its node: a snapshot restored on another node gives the same views
(everyone disconnected, levels 0); a malformed one is refused with a clear error. Then, through
a real redis-server: Rooms on node "a" changes a stage, Rooms on node "b" restores it."""

from __future__ import annotations

import asyncio
import copy
import math
import random
import time
from pathlib import Path

import orjson
import pytest

from amphi.control.spaces import SpaceRegistry, SpaceState
from amphi.control.stage import HOST_ID, MalformedSnapshot, Role, Stage, StageLimits, State
from amphi.control.store.redis import RedisStore
from amphi.control.tokens import Signer
from amphi.core.config import AdmissionConfig, StageConfig
from amphi.core.errors import Forbidden, HostMuted, RemovedFromSpace, TooEarly
from amphi.media.ingest.webrtc import WebRTCIngest
from amphi.services.rooms import Rooms

SECRET = b"0123456789abcdef0123456789abcdef"


def busy_stage() -> Stage:
    """Every state a participant can be in: host, co-host, a speaker host-muted, a speaker
    self-muted, a pending request, a pending invite, one removed from the Space, one declined
    (cooling down), one who left; plus media state that a snapshot must not carry."""
    stage = Stage("s1")
    host = stage.get(HOST_ID)
    for i, name in enumerate(["Cora", "Sam", "Mia", "Leo"]):
        stage.request(name, name.lower(), 10.0 + i)
        stage.accept(host, name.lower(), 20.0 + i)
    stage.set_role(host, "cora", "cohost")
    stage.mute(host, "sam", True)
    stage.mute(stage.get("mia"), "mia", True)
    stage.leave(stage.get("leo"), "leo", 30.0)
    stage.request("Rita", "rita", 31.0)
    stage.invite(host, "Ian", "ian", 32.0)
    stage.request("Rex", "rex", 33.0)
    stage.remove(host, "rex", from_space=True, now=34.0)
    stage.request("Dan", "dan", 35.0)
    stage.decline(host, "dan", 36.0)
    # media: connected, talking, the guard's readings, a reconnect
    for pid in (HOST_ID, "cora", "sam"):
        stage.set_connected(pid, True)
    stage.note_connection("cora", first=False)
    stage.set_level(HOST_ID, 0.6, True)
    stage.set_sound("cora", heard=True, loudness=-20.3, gain_db=2.1, feedback="loop")
    return stage


def without_media(view: dict[str, object]) -> dict[str, object]:
    """A view as it is right after a take-over: nobody connected or talking yet."""
    out = copy.deepcopy(view)
    for m in out["members"]:  # type: ignore[union-attr]
        m.update(connected=False, talking=False, level=0.0, feedback=None, muted_talking=False)
    del out["version"]
    return out


def test_a_restored_snapshot_gives_the_same_views_all_disconnected() -> None:
    stage = busy_stage()
    data = orjson.loads(orjson.dumps(stage.snapshot()))  # through JSON, as the store keeps it
    back = Stage.restore(data, space_id="s1", limits=StageLimits())
    for moderator in (True, False):
        before, after = stage.view(moderator=moderator), back.view(moderator=moderator)
        assert without_media(after) == without_media(before)
        assert after["version"] > before["version"]  # newer than any view sent before the take-over
        assert all(not m["connected"] and m["level"] == 0.0 for m in after["members"])  # type: ignore[union-attr,index]
    assert [m["id"] for m in back.view(moderator=False)["members"]] == [HOST_ID, "cora", "sam", "mia"]  # type: ignore[index]
    assert back.view(moderator=True)["requests"] == [{"id": "rita", "name": "Rita", "at": 31.0}]
    assert back.view(moderator=True)["invited"] == [{"id": "ian", "name": "Ian", "at": 32.0}]
    # the rules carry on: roles, host mutes, the removed, the decline's cool-down
    assert back.get("cora").role is Role.COHOST and back.get("cora").moderator
    assert back.get("sam").host_muted and back.get("mia").self_muted and not back.get("mia").host_muted
    with pytest.raises(HostMuted):
        back.mute(back.get("sam"), "sam", False)
    back.mute(back.get("cora"), "sam", False)  # a co-host lifts it
    with pytest.raises(RemovedFromSpace):
        back.member("rex")
    with pytest.raises(TooEarly):
        back.rerequest(back.get("dan"), 40.0)
    assert back.rerequest(back.get("dan"), 47.0).state is State.REQUESTED
    assert back.get("leo").state is State.LISTENER and back.get("leo").role is Role.LISTENER
    assert back.accept(back.get("ian"), "ian", 50.0).on_stage  # the invitee accepts on the new node
    with pytest.raises(Forbidden):
        back.set_role(back.get("cora"), "mia", "cohost")  # only the host makes co-hosts
    assert back.get("cora").reconnects == 1 and back.audible() == set()


def test_levels_and_connections_do_not_count_as_changes_to_save() -> None:
    stage = busy_stage()
    changes = stage.changes
    stage.set_level("cora", 0.3, True)
    stage.set_connected("mia", True)
    stage.set_sound("mia", heard=True, loudness=-18.0, gain_db=0.0, feedback=None)
    stage.note_connection("mia", first=False)
    stage.touch()
    assert stage.changes == changes
    stage.mute(stage.get(HOST_ID), "mia", True)  # a host mute is one
    assert stage.changes == changes + 1
    stage.mute(stage.get(HOST_ID), "mia", True)  # the same again is none
    assert stage.changes == changes + 1


def test_a_fresh_stage_round_trips() -> None:
    stage = Stage("s2", host_name="Ada")
    back = Stage.restore(stage.snapshot())
    assert back.space_id == "s2" and back.get(HOST_ID).name == "Ada" and list(back.people) == [HOST_ID]
    assert back.view(moderator=True)["members"] == stage.view(moderator=True)["members"]


def broken(change) -> dict[str, object]:  # type: ignore[no-untyped-def]
    data = orjson.loads(orjson.dumps(busy_stage().snapshot()))
    change(data)
    return data


def _person(data: dict, pid: str) -> dict:  # type: ignore[type-arg]
    return next(p for p in data["people"] if p["id"] == pid)


@pytest.mark.parametrize("data, says", [
    (None, "not an object"),
    ([1, 2], "not an object"),
    ("{}", "not an object"),
    ({}, "format None"),
    (broken(lambda d: d.update(format=2)), "format 2"),
    (broken(lambda d: d.update(space="other")), "not 's1'"),
    (broken(lambda d: d.update(version="7")), "version"),
    (broken(lambda d: d.update(changes=True)), "changes"),
    (broken(lambda d: d.update(people={"host": {}})), "people is not a list"),
    (broken(lambda d: d["people"].append(7)), "participant 9 is not an object"),
    (broken(lambda d: d["people"].append(dict(d["people"][1]))), "'cora' twice"),
    (broken(lambda d: d["people"].pop(0)), "no host"),
    (broken(lambda d: _person(d, "sam").update(role="emperor")), "'emperor' is not a valid Role"),
    (broken(lambda d: _person(d, "rita").update(state="asleep")), "'asleep' is not a valid State"),
    (broken(lambda d: _person(d, "rita").update(role="speaker")), "'rita' is a speaker in state requested"),
    (broken(lambda d: _person(d, "cora").update(role="host")), "'cora' cannot be the host"),
    (broken(lambda d: _person(d, "rita").update(host_muted=True)), "'rita' is muted off stage"),
    (broken(lambda d: _person(d, "sam").update(self_muted="yes")), "self_muted"),
    (broken(lambda d: _person(d, "sam").update(since=math.nan)), "since"),
    (broken(lambda d: _person(d, "dan").update(declined_at="then")), "declined_at"),
    (broken(lambda d: _person(d, "sam").update(name="")), "without id or name"),
    (broken(lambda d: _person(d, "sam").update(reconnects=-1)), "reconnects"),
])
def test_a_malformed_snapshot_is_refused_with_a_clear_error(data: object, says: str) -> None:
    with pytest.raises(MalformedSnapshot) as refused:
        Stage.restore(data, space_id="s1")
    assert says in str(refused.value)


# -- through a real Redis: node a changes the stage, node b restores it ----------------------------

def redis_store(url: str, node: str) -> RedisStore:
    return RedisStore(url, AdmissionConfig(), Signer(SECRET), node_id=node, public_url=f"http://{node}",
                      rng=random.Random(1))


def node_rooms(tmp: Path, store: RedisStore) -> tuple[Rooms, SpaceRegistry]:
    registry = SpaceRegistry(tmp)

    async def no_program(space):  # type: ignore[no-untyped-def]
        raise AssertionError("no media in these tests")

    rooms = Rooms(StageConfig(request_rate_per_s=100.0, request_burst=100), "http://node", registry, store,
                  Signer(SECRET), WebRTCIngest(), program=no_program)
    return rooms, registry


async def until(check, deadline_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline_s
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.mark.serial
async def test_a_stage_changed_on_one_node_is_restored_on_another(redis_server, tmp_path: Path) -> None:
    sa, sb = redis_store(redis_server.url, "a"), redis_store(redis_server.url, "b")
    await sa.open()
    await sb.open()
    try:
        rooms_a, registry = node_rooms(tmp_path / "a", sa)
        space, _ = registry.create("Failover talk")
        registry.transition(space, SpaceState.LIVE)
        saver = asyncio.create_task(rooms_a.saves())
        host = rooms_a.participant(space, _host_grant(rooms_a, space))
        asked = await rooms_a.request_to_speak(space, "Sam", None, "10.0.0.1")
        sam = asked.you.id
        await rooms_a.act(space, host, sam, "accept", {})
        await rooms_a.act(space, host, sam, "mute", {})
        await rooms_a.request_to_speak(space, "Rita", None, "10.0.0.2")
        rooms_a.invite(space, host, "Ian")
        cora = (await rooms_a.request_to_speak(space, "Cora", None, "10.0.0.3")).you.id
        await rooms_a.act(space, host, cora, "accept", {})
        await rooms_a.act(space, host, cora, "role", {"role": "cohost"})
        room_a = rooms_a.room(space)
        room_a.stage.set_connected(sam, True)  # media state: not carried
        changes = room_a.stage.changes

        async def saved() -> bool:
            raw = await sb.load_stage(space.id)
            return raw is not None and orjson.loads(raw)["changes"] == changes

        started = time.monotonic()
        await until(saved, 2.0, "node a's last change in Redis")
        assert time.monotonic() - started < 0.5  # the last change is saved within ~100 ms (slack for a busy CI)

        rooms_b, _ = node_rooms(tmp_path / "b", sb)
        assert await rooms_b.restore(space.id)
        stage_b = rooms_b.room(space).stage
        for moderator in (True, False):
            assert without_media(stage_b.view(moderator=moderator)) == \
                without_media(room_a.stage.view(moderator=moderator))
        assert stage_b.get(sam).host_muted and stage_b.get(cora).role is Role.COHOST
        assert not await rooms_b.restore("nosuchspace")  # nothing stored: starts empty
        saver.cancel()
    finally:
        await sa.close()
        await sb.close()


def _host_grant(rooms: Rooms, space) -> str:  # type: ignore[no-untyped-def]
    return rooms.host_session(space).grant


@pytest.mark.serial
async def test_saves_are_coalesced_never_block_and_outlast_redis_going_away(redis_server, tmp_path: Path,
                                                                          monkeypatch) -> None:
    sa = redis_store(redis_server.url, "a")
    await sa.open()
    sets: list[float] = []
    real_save = sa.save_stage

    async def counted(space_id: str, data: bytes) -> None:
        await real_save(space_id, data)
        sets.append(time.monotonic())

    monkeypatch.setattr(sa, "save_stage", counted)
    try:
        rooms_a, registry = node_rooms(tmp_path / "a", sa)
        space, _ = registry.create("Busy stage")
        registry.transition(space, SpaceState.LIVE)
        saver = asyncio.create_task(rooms_a.saves())
        host = rooms_a.participant(space, _host_grant(rooms_a, space))
        room = rooms_a.room(space)
        # a burst of changes: 60 mutes and unmutes over about a second
        sam = (await rooms_a.request_to_speak(space, "Sam", None, "10.0.0.1")).you.id
        await rooms_a.act(space, host, sam, "accept", {})
        t0 = time.monotonic()
        for i in range(60):
            await rooms_a.act(space, host, sam, "mute" if i % 2 == 0 else "unmute", {})
            await asyncio.sleep(0.016)
        # levels alone cause no save
        await until(lambda: _loaded_changes(sa, space.id, room.stage.changes), 2.0, "the burst's last change")
        span = time.monotonic() - t0
        n = len(sets)
        assert n <= 10 * span + 2, f"{n} saves in {span:.2f} s"
        for _ in range(20):
            room.stage.set_level(sam, random.random(), True)
            room.stage.set_connected(sam, bool(random.getrandbits(1)))
            room.apply()
        await asyncio.sleep(0.3)  # nothing to wait for: saves that do not come
        assert len(sets) == n

        # Redis goes away: changes go on without waiting; the newest is saved when it is back
        redis_server.stop()
        await until(lambda: _down(sa), 5.0, "the store to notice Redis is gone")
        started = time.monotonic()
        await rooms_a.act(space, host, sam, "mute", {})
        await rooms_a.request_to_speak(space, "Rita", None, "10.0.0.2")
        assert time.monotonic() - started < 0.05  # the request never waits for the store
        redis_server.start()  # empty
        await until(lambda: _loaded_changes(sa, space.id, room.stage.changes), 8.0, "the newest change after Redis")
        saver.cancel()
    finally:
        await sa.close()


async def _down(store: RedisStore) -> bool:
    return not store.up


async def _loaded_changes(store: RedisStore, space_id: str, changes: int) -> bool:
    try:
        raw = await store.load_stage(space_id)
    except Exception:
        return False
    return raw is not None and orjson.loads(raw)["changes"] == changes


async def test_a_malformed_stored_snapshot_starts_the_stage_afresh(redis_server, tmp_path: Path) -> None:
    sb = redis_store(redis_server.url, "b")
    await sb.open()
    try:
        rooms_b, registry = node_rooms(tmp_path / "b", sb)
        space, _ = registry.create("Garbled")
        for garbage in (b'{"format": 1, "space": "%s", "people": "everyone"}' % space.id.encode(), b"\xff{not json"):
            await sb.save_stage(space.id, garbage)
            assert not await rooms_b.restore(space.id)
            assert list(rooms_b.room(space).stage.people) == [HOST_ID]  # a fresh stage when first needed
    finally:
        await sb.close()


async def test_a_node_that_lost_the_lease_does_not_overwrite_the_stage(redis_server) -> None:
    """Fenced: a host stopped past its lease, once it runs again, must not write over the stage
    its successor saves."""
    a, b = redis_store(redis_server.url, "a"), redis_store(redis_server.url, "b")
    await a.open()
    await b.open()
    try:
        await a.save_stage("s1", b"from a, no lease yet")  # before the start: no lease, saved
        assert await b.load_stage("s1") == b"from a, no lease yet"
        assert await a.renew_leases(["s1"], 5.0) == {"s1": ""}
        await a.save_stage("s1", b"from a, the host")
        assert await b.load_stage("s1") == b"from a, the host"
        await b.save_stage("s1", b"from b, not the host")
        assert await a.load_stage("s1") == b"from a, the host"
    finally:
        await a.close()
        await b.close()
