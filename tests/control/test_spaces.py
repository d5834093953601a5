import json
import re

import pytest

from amphi.control.spaces import SpaceRegistry, SpaceState, new_space_id
from amphi.core.errors import Forbidden, IllegalTransition, MalformedBody, NotFound, Unauthorized


def test_lifecycle_and_persistence(tmp_path) -> None:
    reg = SpaceRegistry(tmp_path)
    space, key = reg.create("Town hall", "2030-01-01T20:00:00Z")
    assert space.state is SpaceState.SCHEDULED and space.starts_at == pytest.approx(1893528000)
    reg.transition(space, SpaceState.LIVE)
    reg.transition(space, SpaceState.ENDED, reason="host")
    with pytest.raises(IllegalTransition, match="is ended"):
        reg.transition(space, SpaceState.LIVE)
    stored = json.loads((tmp_path / space.id / "space.json").read_text())
    assert stored["state"] == "ended" and stored["end_reason"] == "host"
    assert key not in (tmp_path / space.id / "space.json").read_text()  # only a hash is kept


def test_host_key_checks(tmp_path) -> None:
    reg = SpaceRegistry(tmp_path)
    space, key = reg.create("t")
    reg.authorize_host(space, f"Bearer {key}")
    with pytest.raises(Unauthorized):
        reg.authorize_host(space, None)
    with pytest.raises(Unauthorized):
        reg.authorize_host(space, f"Basic {key}")
    with pytest.raises(Forbidden):
        reg.authorize_host(space, "Bearer nope")


def test_bad_input(tmp_path) -> None:
    reg = SpaceRegistry(tmp_path)
    for title in (None, "", "   ", 3, "x" * 201):
        with pytest.raises(MalformedBody):
            reg.create(title)
    for starts in ("tomorrow", "2030-01-01T20:00:00", [1]):
        with pytest.raises(MalformedBody):
            reg.create("t", starts)
    with pytest.raises(NotFound):
        reg.get("nope")


def test_live_spaces_found_at_start_up_ended_abnormally(tmp_path) -> None:
    reg = SpaceRegistry(tmp_path)
    live, _ = reg.create("live one")
    reg.transition(live, SpaceState.LIVE)
    sched, _ = reg.create("later")
    again = SpaceRegistry(tmp_path)
    crashed = again.load()
    assert [s.id for s in crashed] == [live.id]
    assert again.get(live.id).state is SpaceState.ENDED and again.get(live.id).end_reason == "abnormal"
    assert again.get(sched.id).state is SpaceState.SCHEDULED


def test_due_spaces(tmp_path) -> None:
    now = [1000.0]
    reg = SpaceRegistry(tmp_path, clock=lambda: now[0])
    s, _ = reg.create("t", 1010)
    assert reg.due() == []
    now[0] = 1010.0
    assert reg.due() == [s]


@pytest.mark.parametrize("starts_at", [1.7976931348623157e308, float("inf"), float("nan"), -1, 1e12,
                                       "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_starts_at_that_cannot_be_written_back_as_a_date_is_refused(tmp_path, starts_at) -> None:
    """Found by the API fuzz (tests/integration/test_fuzz.py): a huge epoch made a Space whose
    every status (and so GET /api/spaces) was a 500."""
    reg = SpaceRegistry(tmp_path)
    with pytest.raises(MalformedBody, match="starts_at"):
        reg.create("t", starts_at)
    assert reg.all() == []
    space, _ = reg.create("t", "9999-12-30T00:00:00Z")
    assert space.starts_at == pytest.approx(253402128000)


def test_a_space_id_never_starts_with_a_dash() -> None:
    """It is an argument on command lines (``amphi space start ID``): '-x...' would be taken for
    an option (a CI run met one). Without the rule, 2,000 ids miss a leading '-' with odds of
    about 1 in 10^14."""
    ids = [new_space_id() for _ in range(2000)]
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 11 and re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids) and len(set(ids)) == 2000
