"""The detector's pure logic on synthetic periods: labels, evidence, hysteresis."""

from amphi.core.config import DefenseConfig
from amphi.defense.detector import ATTACK, BOTH, NORMAL, SURGE, Counts, Detector

CFG = DefenseConfig()  # period 2 s, window 4 s, enter after 2, leave after 4
P = CFG.detector_period_s


def surge(**kw):
    # 200 people a second, each joins once, and they come back
    c = dict(fresh_joins=400, light_joins=400, polls=300, media_valid=3000, followed=380, unfollowed=10)
    c.update(kw)
    return Counts(**c)


def flood(**kw):
    # 1000 joins a second from 64 addresses that never come back, and forged tokens
    c = dict(fresh_joins=2000, light_joins=128, media_invalid=400, unfollowed=120, refused=300)
    c.update(kw)
    return Counts(**c)


def run(det, periods, start=0.0):
    labels = []
    for i, c in enumerate(periods):
        det.update(c, start + (i + 1) * P)
        labels.append(det.verdict.label)
    return labels


def test_quiet_is_normal():
    det = Detector(CFG)
    assert run(det, [Counts(fresh_joins=2, light_joins=2, media_valid=50, followed=2)] * 5) == [NORMAL] * 5
    assert det.verdict.evidence["token_validity"] == 1.0


def test_surge_within_two_periods():
    det = Detector(CFG)
    labels = run(det, [surge()] * 4)
    assert labels[1] == SURGE  # 4 s after onset
    ev = det.verdict.evidence
    assert ev["light_joins_per_s"] == 200.0 and ev["follow_through"] > 0.9 and ev["bad_join_share"] < 0.05


def test_attack_and_its_evidence():
    det = Detector(CFG)
    labels = run(det, [flood()] * 4)
    assert labels[1] == ATTACK
    ev = det.verdict.evidence
    assert ev["heavy_joins_per_s"] == 936.0 and ev["token_validity"] == 0.0 and ev["bad_join_share"] > 0.5


def test_both():
    det = Detector(CFG)
    mixed = surge()
    mixed.add(flood())
    mixed.followed, mixed.unfollowed = 380, 10  # the light joins are the people; the flood's are heavy
    assert run(det, [mixed] * 3)[1] == BOTH


def test_a_distributed_flood_that_never_comes_back_is_not_a_surge():
    det = Detector(CFG)
    bots = Counts(fresh_joins=400, light_joins=400, followed=5, unfollowed=395)
    labels = run(det, [bots] * 3)
    assert labels[-1] == ATTACK and det.verdict.evidence["follow_through"] < 0.1


def test_unsolved_challenges_are_bad_solved_ones_are_not():
    det = Detector(CFG)
    assert run(det, [Counts(challenges=400, solved=2)] * 3)[-1] == ATTACK
    det = Detector(CFG)
    assert run(det, [Counts(challenges=400, solved=395, fresh_joins=395, light_joins=395, followed=390)] * 3)[-1] == SURGE


def test_hysteresis_no_flapping():
    det = Detector(CFG)
    run(det, [flood()] * 3)
    assert det.verdict.label == ATTACK
    # one calm period, then the flood again: stays attack throughout
    assert run(det, [Counts(), flood(), Counts(), flood()]) == [ATTACK] * 4
    # it ends only after leave_after calm verdicts in a row (the window must empty first)
    labels = run(det, [Counts()] * 6)
    assert labels[:CFG.leave_after - 1] == [ATTACK] * (CFG.leave_after - 1) and labels[-1] == NORMAL


def test_change_is_reported_once():
    det = Detector(CFG)
    changes = [det.update(surge(), i * P) for i in range(1, 6)]
    assert [c for c in changes if c] == [(NORMAL, SURGE)]
    assert det.verdict.since == 2 * P
