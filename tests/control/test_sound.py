"""Dead air and the stage's readiness (amphi.control.sound), pure, on a virtual clock."""

from __future__ import annotations

from amphi.control.sound import DeadAir, problems
from amphi.control.stage import HOST_ID, Participant, Role, Stage, State


def people() -> tuple[Stage, Participant, Participant]:
    stage = Stage("s")
    host = stage.get(HOST_ID)
    bob = Participant("bob", "Bob", Role.SPEAKER, State.ON_STAGE)
    stage.people["bob"] = bob
    return stage, host, bob


def test_dead_air_is_raised_after_the_threshold_with_its_reason_and_clears_when_someone_is_heard() -> None:
    stage, host, bob = people()
    watch = DeadAir()
    assert not watch.update(0.0, True, 8.0, stage.on_stage())
    assert watch.update(8.0, True, 8.0, stage.on_stage())
    assert watch.alert is not None and watch.alert.reason == "nobody_connected" and watch.alert.since == 0.0
    host.connected = bob.connected = True
    host.self_muted = bob.host_muted = True
    assert watch.update(8.2, True, 8.0, stage.on_stage()) and watch.alert.reason == "all_muted"
    bob.muted_talking = True
    assert watch.update(8.4, True, 8.0, stage.on_stage()) and "Bob is talking while muted" in watch.alert.message
    host.self_muted = False
    assert watch.update(8.6, True, 8.0, stage.on_stage()) and watch.alert.reason == "silent"
    host.talking = True
    assert watch.update(8.8, True, 8.0, stage.on_stage()) and watch.alert is None
    host.talking = False
    assert not watch.update(9.0, True, 8.0, stage.on_stage())  # a new silence, from here
    assert not watch.update(16.9, True, 8.0, stage.on_stage())
    assert watch.update(17.0, True, 8.0, stage.on_stage()) and watch.alert.since == 9.0


def test_no_dead_air_before_the_start_and_a_muted_talker_is_not_heard() -> None:
    stage, host, _ = people()
    watch = DeadAir()
    host.connected = host.talking = True
    host.self_muted = True  # talking, but muted: not audible
    assert not watch.update(0.0, False, 3.0, stage.on_stage())
    assert not watch.update(100.0, False, 3.0, stage.on_stage()) and watch.alert is None
    watch.update(100.0, True, 3.0, stage.on_stage())
    assert watch.update(103.0, True, 3.0, stage.on_stage()) and watch.alert.reason == "all_muted"


def test_readiness_names_what_is_missing() -> None:
    _, host, bob = people()
    assert problems(host) == ["not connected"]
    host.connected = True
    assert problems(host) == ["not heard yet"]
    host.heard = True
    assert problems(host) == []
    bob.connected = bob.heard = True
    bob.feedback = "loop"
    assert problems(bob) == ["feedback: use headphones"]
