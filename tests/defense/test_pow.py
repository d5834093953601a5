"""Proof-of-work challenges: signed, bound, expiring, single use."""

import random

import pytest

from amphi.control.tokens import Signer
from amphi.core.errors import BadSolution, ChallengeReused, TooBusy
from amphi.defense.pow import ChallengeExpired, ProofOfWork, leading_zero_bits, solve, solves

NOW = 1_800_000_000.0


def pow_(max_seen=100):
    return ProofOfWork(Signer(b"k" * 32), ttl_s=60, max_seen=max_seen, rng=random.Random(3))


def test_leading_zero_bits():
    assert leading_zero_bits(b"\x00\x00\xff" + b"\x00" * 29) == 16
    assert leading_zero_bits(b"\x01" + b"\x00" * 31) == 7
    assert leading_zero_bits(b"\x80" + b"\x00" * 31) == 0


def test_solve_and_verify_once():
    p = pow_()
    c = p.issue("S1", None, 8, NOW)
    assert c["bits"] == 8 and c["bound_to"] == "nonce"
    s = solve(c["challenge"], 8)
    assert solves(c["challenge"], s, 8)
    p.verify("S1", None, c["challenge"], s, NOW + 1)
    with pytest.raises(ChallengeReused):
        p.verify("S1", None, c["challenge"], s, NOW + 2)


def test_wrong_foreign_forged_and_late():
    p = pow_()
    c = p.issue("S1", "12.1700000000.mac", 8, NOW)
    s = solve(c["challenge"], 8)
    with pytest.raises(BadSolution):
        p.verify("S2", "12.1700000000.mac", c["challenge"], s, NOW)  # another Space
    with pytest.raises(BadSolution):
        p.verify("S1", None, c["challenge"], s, NOW)  # not bound to that ticket
    with pytest.raises(BadSolution):
        p.verify("S1", "13.1700000000.mac", c["challenge"], s, NOW)  # another ticket
    easier = c["challenge"].replace(".8.", ".1.")
    with pytest.raises(BadSolution):
        p.verify("S1", "12.1700000000.mac", easier, solve(easier, 1), NOW)  # difficulty edited: MAC fails
    wrong = next(str(n) for n in range(10**6) if not solves(c["challenge"], str(n), 8))
    with pytest.raises(BadSolution):
        p.verify("S1", "12.1700000000.mac", c["challenge"], wrong, NOW)
    for garbage in (None, 5, "", "c1.zz", c["challenge"] + "x"):
        with pytest.raises(BadSolution):
            p.verify("S1", "12.1700000000.mac", garbage, s, NOW)
    with pytest.raises(ChallengeExpired):
        p.verify("S1", "12.1700000000.mac", c["challenge"], s, NOW + 61)
    p.verify("S1", "12.1700000000.mac", c["challenge"], s, NOW + 59)


def test_seen_set_is_bounded_and_fails_closed():
    p = pow_(max_seen=3)
    sols = []
    for _ in range(4):
        c = p.issue("S", None, 4, NOW)
        sols.append((c["challenge"], solve(c["challenge"], 4)))
    for ch, s in sols[:3]:
        p.verify("S", None, ch, s, NOW)
    with pytest.raises(TooBusy):
        p.verify("S", None, *sols[3], NOW)  # three unexpired remembered: refuse rather than forget
    c = p.issue("S", None, 4, NOW + 100)
    p.verify("S", None, c["challenge"], solve(c["challenge"], 4), NOW + 100)  # the old ones expired
