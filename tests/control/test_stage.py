"""The stage's rules, pure: roles, limits, host mutes that stick, who may act on whom."""

from __future__ import annotations

import pytest

from amphi.control.stage import HOST_ID, Role, Stage, StageLimits, State
from amphi.core.errors import (
    Conflict,
    Forbidden,
    HostMuted,
    MalformedBody,
    NotFound,
    NotOnStage,
    RemovedFromSpace,
    StageFull,
    TooEarly,
    TooManyRequests,
)


def on_stage(stage: Stage, name: str, now: float = 0.0):
    p = stage.request(name, f"id-{name}", now)
    return stage.accept(stage.get(HOST_ID), p.id, now)


def test_a_request_accepted_by_the_host_puts_the_listener_on_stage() -> None:
    stage = Stage("s")
    host = stage.get(HOST_ID)
    bob = stage.request("  Bob   Smith ", "bob", 1.0)
    assert bob.name == "Bob Smith" and bob.state is State.REQUESTED and bob.role is Role.LISTENER
    assert [p.id for p in stage.requests()] == ["bob"]
    v = stage.version
    stage.accept(host, "bob", 2.0)
    assert bob.on_stage and bob.role is Role.SPEAKER and stage.version > v
    assert [p.id for p in stage.on_stage()] == [HOST_ID, "bob"]
    assert stage.check_can_speak("bob") is bob


def test_listeners_cannot_moderate_and_speakers_cannot_accept() -> None:
    stage = Stage("s")
    bob = on_stage(stage, "bob")
    eve = stage.request("eve", "eve", 0)
    with pytest.raises(Forbidden):
        stage.accept(eve, "eve", 0)  # nobody accepts their own request
    with pytest.raises(Forbidden):
        stage.accept(bob, "eve", 0)
    with pytest.raises(Forbidden):
        stage.mute(eve, "id-bob", True)
    with pytest.raises(Forbidden):
        stage.remove(bob, HOST_ID, from_space=False, now=0)
    with pytest.raises(NotOnStage):
        stage.check_can_speak("eve")
    with pytest.raises(NotFound):
        stage.accept(stage.get(HOST_ID), "nobody", 0)


def test_host_mute_sticks_until_a_moderator_lifts_it() -> None:
    stage = Stage("s")
    host = stage.get(HOST_ID)
    bob = on_stage(stage, "bob")
    stage.mute(bob, "id-bob", True)  # self-mute
    stage.mute(bob, "id-bob", False)
    assert not bob.muted
    stage.mute(host, "id-bob", True)
    assert bob.muted and bob.host_muted
    with pytest.raises(HostMuted):
        stage.mute(bob, "id-bob", False)
    stage.mute(bob, "id-bob", True)  # muting oneself too is fine
    stage.mute(host, "id-bob", False)
    assert not bob.host_muted and bob.self_muted and bob.muted  # their own mute is theirs
    stage.mute(bob, "id-bob", False)
    assert not bob.muted


def test_only_the_connected_unmuted_on_stage_are_heard() -> None:
    stage = Stage("s")
    bob = on_stage(stage, "bob")
    assert stage.audible() == set()
    stage.set_connected("id-bob", True)
    stage.set_connected(HOST_ID, True)
    assert stage.audible() == {"id-bob", HOST_ID}
    stage.mute(stage.get(HOST_ID), "id-bob", True)
    assert stage.audible() == {HOST_ID}
    stage.remove(stage.get(HOST_ID), "id-bob", from_space=False, now=1)
    assert bob.state is State.LISTENER and bob.role is Role.LISTENER and not bob.muted
    assert stage.audible() == {HOST_ID}


def test_cohosts_moderate_speakers_but_not_the_host_or_each_other() -> None:
    stage = Stage("s")
    host = stage.get(HOST_ID)
    ann, bob, cid = on_stage(stage, "ann"), on_stage(stage, "bob"), on_stage(stage, "cid")
    stage.set_role(host, ann.id, "cohost")
    stage.set_role(host, cid.id, "cohost")
    assert stage.count(Role.COHOST) == 2
    dan = on_stage(stage, "dan")
    with pytest.raises(StageFull):
        stage.set_role(host, dan.id, "cohost")  # 2 co-hosts at most
    with pytest.raises(Forbidden):
        stage.set_role(ann, bob.id, "cohost")  # only the host makes co-hosts
    stage.mute(ann, bob.id, True)
    assert bob.host_muted
    eve = stage.request("eve", "eve", 0)
    stage.accept(ann, eve.id, 0)  # co-hosts accept requests
    with pytest.raises(Forbidden):
        stage.mute(ann, cid.id, True)
    with pytest.raises(Forbidden):
        stage.remove(ann, HOST_ID, from_space=True, now=0)
    stage.remove(ann, bob.id, from_space=True, now=0)
    assert bob.state is State.REMOVED
    with pytest.raises(RemovedFromSpace):
        stage.member(bob.id)


def test_the_stage_holds_ten_speakers_and_two_cohosts_and_no_more() -> None:
    stage = Stage("s", StageLimits(max_cohosts=2, max_speakers=10))
    host = stage.get(HOST_ID)
    people = [on_stage(stage, f"p{i}") for i in range(12)]
    stage.set_role(host, people[0].id, "cohost")
    stage.set_role(host, people[1].id, "cohost")
    assert len(stage.on_stage()) == 13
    late = stage.request("fourteenth", "late", 0)
    with pytest.raises(StageFull, match="stage is full"):
        stage.accept(host, late.id, 0)
    assert late.state is State.REQUESTED  # still waiting; accepted once someone leaves
    stage.leave(people[5], people[5].id, 1)
    stage.accept(host, late.id, 1)
    assert len(stage.on_stage()) == 13


def test_invites_are_accepted_by_the_invitee_only() -> None:
    stage = Stage("s")
    host = stage.get(HOST_ID)
    guest = stage.invite(host, "Guest", "g", 0)
    assert guest.state is State.INVITED
    assert stage.view(moderator=True)["invited"] == [{"id": "g", "name": "Guest", "at": 0}]
    bob = on_stage(stage, "bob")
    with pytest.raises(Forbidden):
        stage.invite(bob, "x", "x", 0)
    with pytest.raises(Forbidden):
        stage.accept(host, "g", 0)
    stage.accept(guest, "g", 1)
    assert guest.on_stage and guest.role is Role.SPEAKER


def test_a_declined_listener_may_ask_again_after_the_cooldown() -> None:
    stage = Stage("s", StageLimits(request_cooldown_s=10))
    host = stage.get(HOST_ID)
    bob = stage.request("bob", "bob", 0)
    stage.decline(host, "bob", 5)
    assert bob.state is State.LISTENER
    with pytest.raises(TooEarly) as info:
        stage.rerequest(bob, 10)
    assert info.value.retry_after_s == pytest.approx(5)
    assert stage.rerequest(bob, 15.5).state is State.REQUESTED
    stage.decline(bob, "bob", 16)  # withdrawing one's own request has no cooldown
    assert stage.rerequest(bob, 16).state is State.REQUESTED


def test_pending_requests_are_capped_and_names_checked() -> None:
    stage = Stage("s", StageLimits(max_requests=3))
    for i in range(3):
        stage.request(f"n{i}", f"id{i}", 0)
    with pytest.raises(TooManyRequests):
        stage.request("n4", "id4", 0)
    for bad in ("", "   ", 7, None, "x" * 41):
        with pytest.raises(MalformedBody):
            stage.request(bad, "bad", 0)


def test_the_host_cannot_leave_or_be_removed_and_views_hide_private_data() -> None:
    stage = Stage("s")
    host = stage.get(HOST_ID)
    bob = on_stage(stage, "bob")
    stage.request("eve", "eve", 0)
    with pytest.raises(Conflict):
        stage.leave(host, HOST_ID, 0)
    with pytest.raises(Forbidden):
        stage.leave(host, bob.id, 0)  # leaving is for oneself; moderators remove
    public = stage.view(moderator=False)
    assert public["requests"] == 1 and "invited" not in public
    assert all(set(m) == {"id", "name", "role", "muted", "host_muted", "connected", "talking", "level",
                          "feedback", "muted_talking"}
               for m in public["members"])
    assert [r["name"] for r in stage.view(moderator=True)["requests"]] == ["eve"]


def test_levels_bump_the_version_only_when_the_published_value_changes() -> None:
    stage = Stage("s")
    stage.set_level(HOST_ID, 0.51, True)
    v = stage.version
    stage.set_level(HOST_ID, 0.52, True)  # same 0.05 step
    assert stage.version == v
    stage.set_level(HOST_ID, 0.6, True)
    assert stage.version == v + 1 and stage.get(HOST_ID).level == 0.6
