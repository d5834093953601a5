"""The edge's token renewals (edge/renewals.py), pure: a fake clock, the real signer."""

from __future__ import annotations

from amphi.control.tokens import Signer
from amphi.edge.renewals import BATCH, Renewals, SharedRefusals

SECRET = b"r" * 32
NOW = 1_800_000_000.0


def test_a_token_is_renewed_past_half_its_life_for_the_same_seat_and_reported_once() -> None:
    signer = Signer(SECRET)
    r = Renewals(signer, 60.0)
    assert not r.due(int(NOW) + 31, NOW)
    assert r.due(int(NOW) + 30, NOW)
    new = r.renew("sp", "l", "seat0001abcd", int(NOW) + 20, NOW)
    t = signer.verify_token("sp", new, NOW)
    assert (t.seat, t.expires, t.host) == ("seat0001abcd", int(NOW) + 60, False)
    r.renew("sp", "l", "seat0001abcd", int(NOW) + 60, NOW + 3)  # again (another reload): one row, the later expiry
    assert r.batches() == [{"sp": [["seat0001abcd", int(NOW) + 20, int(NOW) + 63]]}]
    assert r.batches() == []  # taken


def test_host_tokens_are_renewed_and_never_reported() -> None:
    signer = Signer(SECRET)
    r = Renewals(signer, 60.0)
    assert signer.verify_token("sp", r.renew("sp", "h", "hostseat0001", int(NOW) + 10, NOW), NOW).host
    assert r.batches() == []


def test_reports_hold_at_most_a_batch_and_a_failed_one_goes_with_the_next() -> None:
    r = Renewals(Signer(SECRET), 60.0)
    for i in range(BATCH + 5):
        r.renew("a" if i % 2 else "b", "l", f"seat{i:08d}", int(NOW) + 10, NOW)
    reports = r.batches()
    assert [sum(len(rows) for rows in rep.values()) for rep in reports] == [BATCH, 5]
    r.failed(reports[1])
    r.renew("a", "l", "seat99999999", int(NOW) + 10, NOW)
    again = r.batches()
    assert sum(len(rows) for rep in again for rows in rep.values()) == 6


def test_a_seat_the_control_plane_says_is_gone_is_refused_until_its_last_token_expired() -> None:
    r = Renewals(Signer(SECRET), 60.0)
    r.renew("sp", "l", "leftseat0001", int(NOW) + 10, NOW)
    report = r.batches()[0]
    r.answered(report, {"sp": ["leftseat0001"]}, NOW + 1)
    assert r.reported == 1 and r.released_seats == 1
    assert r.released("sp", "leftseat0001", NOW + 2)
    assert not r.released("other", "leftseat0001", NOW + 2)  # another Space's seat of that name
    assert r.released("sp", "leftseat0001", NOW + 60)
    assert not r.released("sp", "leftseat0001", NOW + 62)  # every token signed for it has expired
    r.answered({}, {"sp": ["x" * 12]}, NOW)
    r.tidy(NOW + 100)
    assert r.gone == {}


def test_the_workers_of_an_edge_share_the_seats_they_refuse(tmp_path) -> None:
    one, two = SharedRefusals(tmp_path / "released.json"), SharedRefusals(tmp_path / "released.json")
    assert two.changed() is None  # nothing yet
    one.publish({("sp", "seat00000001"): NOW + 60}, NOW)
    one.publish({("sp", "seat00000002"): NOW + 10, ("sp", "seat00000001"): NOW + 30}, NOW)  # merged, never shortened
    r = Renewals(Signer(SECRET), 60.0)
    got = two.changed()
    assert got == {("sp", "seat00000001"): NOW + 60, ("sp", "seat00000002"): NOW + 10}
    r.learn(got)
    assert r.released("sp", "seat00000002", NOW + 5) and r.released("sp", "seat00000001", NOW + 40)
    assert two.changed() is None  # read once a change
    one.publish({}, NOW + 20)  # expired entries are dropped when it is written again
    assert two.changed() == {("sp", "seat00000001"): NOW + 60}
