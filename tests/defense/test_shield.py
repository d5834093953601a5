"""The shield's pure parts: the client's address behind trusted proxies, the follow-through,
the PoW switch and the ticket binding."""

import contextlib
import random

import pytest

from amphi.control.tokens import Signer
from amphi.core.config import DefenseConfig
from amphi.core.errors import ChallengeRequired, TooManyConnections
from amphi.defense.detector import ATTACK
from amphi.defense.pow import solve
from amphi.defense.shield import Shield, client_address, parse_networks

NOW = 1_800_000_000.0


def scope(peer, xff=None):
    headers = [(b"host", b"x")] + ([(b"x-forwarded-for", xff.encode())] if xff else [])
    return {"client": (peer, 5000), "headers": headers}


def test_client_address_trusts_only_listed_proxies():
    none = parse_networks(())
    edge = parse_networks(("10.0.0.0/8",))
    assert client_address(scope("1.2.3.4", "9.9.9.9"), none) == "1.2.3.4"  # no proxy trusted: XFF ignored
    assert client_address(scope("10.0.0.5", "9.9.9.9"), edge) == "9.9.9.9"
    # the client wrote its own XFF; the edge appended the real peer: the first untrusted from the right
    assert client_address(scope("10.0.0.5", "6.6.6.6, 9.9.9.9"), edge) == "9.9.9.9"
    assert client_address(scope("10.0.0.5", "9.9.9.9, 10.1.1.1"), edge) == "9.9.9.9"  # two edges
    assert client_address(scope("10.0.0.5", "bogus"), edge) == "10.0.0.5"
    assert client_address(scope("10.0.0.5"), edge) == "10.0.0.5"
    assert client_address(scope("1.2.3.4", "9.9.9.9"), edge) == "1.2.3.4"  # not from the edge
    assert client_address({"client": None, "headers": []}, edge) == "unknown"


def shield(**kw):
    return Shield(DefenseConfig(**kw), Signer(b"s" * 32), known=lambda sid: sid == "S", rng=random.Random(5))


def test_in_flight_cap_per_address():
    sh = shield(max_in_flight_per_address=2)
    sh.enter("a")
    sh.enter("a")
    with pytest.raises(TooManyConnections):
        sh.enter("a")
    sh.enter("b")
    sh.leave("a")
    sh.enter("a")


def test_follow_through_counts_who_comes_back():
    sh = shield()
    for i in range(10):
        light = sh.check_join("S", f"10.0.0.{i}", {}, NOW, host=False)
        assert light
        sh.answered("S", light, 200, {"token": f"lseat{i:04d}xx.{int(NOW) + 60}.{'m' * 22}"}, NOW)
    for i in range(7):
        sh.media("S", f"seat{i:04d}xx")
    sh.media("S", None)
    sh.tick(NOW + 2)
    sh.tick(NOW + 6)  # the three that never came are due
    ev = sh.spaces["S"].verdict.evidence
    assert ev["follow_through"] == 0.7 and ev["token_validity"] == 0.875


def test_repeat_joins_from_one_address_are_heavy():
    sh = shield()
    lights = [sh.check_join("S", "10.0.0.1", {}, NOW, host=False) for _ in range(5)]
    assert lights == [True, True, False, False, False]


def test_suspect_addresses_and_prefixes_must_work_before_any_verdict():
    sh = shield(suspect_address_joins=3, suspect_prefix_joins=5, pow_bits=4)
    assert [sh.check_join("S", "10.0.0.1", {}, NOW, host=False) for _ in range(3)] == [True, True, False]
    with pytest.raises(ChallengeRequired) as e:  # the fourth attempt from one address in a window
        sh.check_join("S", "10.0.0.1", {}, NOW, host=False)
    c = e.value.challenge
    assert sh.pow_since("S") is None and sh.node.verdict.label == "normal"  # no verdict: this address alone
    sh.check_join("S", "10.0.0.1", {"challenge": c["challenge"], "solution": solve(c["challenge"], c["bits"])},
                  NOW, host=False)  # solved: seated
    with pytest.raises(ChallengeRequired):  # the prefix has now seen 6 attempts: a neighbour works too
        sh.check_join("S", "10.0.0.2", {}, NOW, host=False)
    assert sh.check_join("S", "10.0.1.1", {}, NOW, host=False)  # another prefix is not touched
    assert sh.node_status()["challenges"]["to_suspects"] == 2
    # attempts age out with the window: the address is itself again two periods later
    sh.tick(NOW + 2)
    sh.tick(NOW + 4)
    assert sh.check_join("S", "10.0.0.1", {}, NOW + 4, host=False)
    # switched off (by the node or a Space's host) means no challenge at all
    off = shield(suspect_address_joins=1, pow_mode="off")
    assert [off.check_join("S", "10.0.0.1", {}, NOW, host=False) for _ in range(4)] == [True, True, False, False]
    sh.set_space_pow("S", "off", NOW + 4)
    for _ in range(5):
        sh.check_join("S", "10.0.0.1", {}, NOW + 4, host=False)


def test_pow_switches_on_under_attack_and_binds_old_tickets():
    sh = shield(attack_rate=5, enter_after=1, pow_bits=4)
    for _ in range(200):  # one address joining again and again, challenged once suspect, never solving
        with contextlib.suppress(ChallengeRequired):
            sh.check_join("S", "10.9.9.9", {}, NOW, host=False)
    old_ticket = f"7.{int(NOW)}.{'m' * 22}"
    sh.tick(NOW + 2)
    assert ATTACK in sh.node.verdict.label and sh.pow_since("S") == NOW + 2
    assert sh.node_status()["pow"]["active"] and sh.pow_bits == 8  # pressure adds bits (up to 4)
    with pytest.raises(ChallengeRequired) as e:
        sh.check_join("S", "10.0.0.1", {}, NOW + 3, host=False)
    c = e.value.challenge
    assert e.value.status == 429 and c["bound_to"] == "nonce"
    assert sh.check_join("S", "10.0.0.1", {"challenge": c["challenge"], "solution": solve(c["challenge"], c["bits"])},
                         NOW + 3, host=False)
    # a place taken before the PoW came on must prove once, with a challenge bound to its ticket
    with pytest.raises(ChallengeRequired) as e:
        sh.check_join("S", "10.0.0.2", {"ticket": old_ticket}, NOW + 3, host=False)
    c = e.value.challenge
    assert c["bound_to"] == "ticket"
    body = {"ticket": old_ticket, "challenge": c["challenge"], "solution": solve(c["challenge"], c["bits"])}
    sh.check_join("S", "10.0.0.2", body, NOW + 3, host=False)
    sh.check_join("S", "10.0.0.2", {"ticket": old_ticket}, NOW + 4, host=False)  # proven: no more challenges
    new_ticket = f"8.{int(NOW) + 5}.{'m' * 22}"
    sh.check_join("S", "10.0.0.3", {"ticket": new_ticket}, NOW + 5, host=False)  # issued under PoW: no challenge
    sh.set_space_pow("S", "off", NOW + 5)
    sh.check_join("S", "10.0.0.4", {}, NOW + 5, host=False)  # the host switched it off for the Space
