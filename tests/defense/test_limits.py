"""The join limits, pure, with a fake clock."""

import random

import pytest

from amphi.core.config import DefenseConfig
from amphi.core.errors import AddressRateLimited, JoinBudgetSpent, PrefixRateLimited
from amphi.core.gcra import GcraTable, decide
from amphi.defense.limits import JoinLimits, KeyedGcra, prefix_of


def test_prefixes():
    assert prefix_of("10.1.2.3") == "10.1.2.0/24"
    assert prefix_of("2001:db8:1:2::5") == "2001:db8:1::/48"
    assert prefix_of("::ffff:10.1.2.3") == "10.1.2.0/24"
    assert prefix_of("unknown") == "unknown"


def test_keyed_gcra_is_bounded_and_forgets_the_least_recently_seen():
    g = KeyedGcra(rate=1.0, burst=1, max_keys=3)
    for k in "abc":
        assert g.take(k, 0.0) == 0.0
    assert g.take("a", 0.0) > 0  # a spent its burst; a is now the most recently seen
    assert g.take("d", 0.0) == 0.0  # full: b (seen longest ago) is forgotten
    assert len(g) == 3 and g.forgotten == 1
    assert g.take("a", 0.0) > 0  # a's debt survived
    assert g.take("b", 0.0) == 0.0  # b was forgotten: a fresh budget


def test_keyed_gcra_advises_one_interval_at_least():
    g = KeyedGcra(rate=1.0, burst=1, max_keys=3)
    assert g.take("a", 0.0) == 0.0
    assert g.take("a", 0.9) == 1.0  # 0.1 s from a grant, but told to come back in one interval
    assert g.take("a", 1.0) == 0.0


def test_gcra_table_is_one_tat_per_key_charged_at_each_request_s_rate():
    """The table ``Store.take`` keeps in memory (and the Lua's ``limit`` op mirrors)."""
    t = GcraTable(max_keys=2)
    assert [t.charge("a", 1.0, 2, 0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert t.charge("a", 1.0, 2, 0.5) == pytest.approx(0.5)  # a refusal charges nothing
    assert t.charge("b", 4.0, 1, 0.0) == 0.0 and t.charge("b", 4.0, 1, 0.1) == pytest.approx(0.15)
    assert t.charge("c", 1.0, 1, 0.0) == 0.0  # full: a, seen longest ago, is forgotten
    assert len(t) == 2 and t.forgotten == 1
    assert t.charge("a", 1.0, 2, 0.0) == 0.0  # a fresh budget
    assert decide(10.0, 10.0, 2.0, 1) == (0.0, 10.5)  # conforms exactly at tat: granted, tat moves on
    assert decide(10.5, 10.2, 2.0, 1) == (pytest.approx(0.3), 10.5)  # refused: the wait, tat unchanged


def test_address_then_prefix_then_budget():
    cfg = DefenseConfig(address_rate_per_s=10, address_burst=5, prefix_rate_per_s=20, prefix_burst=8,
                        join_rate_per_s=100, join_burst=3)
    lim = JoinLimits(cfg, random.Random(1))
    for _ in range(5):
        lim.check_client("10.0.0.1", prefix_of("10.0.0.1"), 100.0)
    with pytest.raises(AddressRateLimited) as e:
        lim.check_client("10.0.0.1", prefix_of("10.0.0.1"), 100.0)
    assert e.value.status == 429 and 0.5 <= e.value.retry_after_s <= 0.75  # the jittered minimum
    lim.check_client("10.0.0.2", prefix_of("10.0.0.2"), 100.0)
    lim.check_client("10.0.0.2", prefix_of("10.0.0.2"), 100.0)
    lim.check_client("10.0.0.3", prefix_of("10.0.0.3"), 100.0)  # the prefix's 8th
    with pytest.raises(PrefixRateLimited):
        lim.check_client("10.0.0.4", prefix_of("10.0.0.4"), 100.0)
    lim.check_client("10.0.1.4", prefix_of("10.0.1.4"), 100.0)  # another /24
    lim.check_client("10.0.0.1", prefix_of("10.0.0.1"), 100.6)  # 0.6 s later, the address has budget again ...
    for _ in range(3):
        lim.check_fresh_join(100.0)
    with pytest.raises(JoinBudgetSpent):
        lim.check_fresh_join(100.0)
    lim.check_fresh_join(100.011)  # the budget refills at its rate


def test_retry_after_is_jittered():
    cfg = DefenseConfig(address_rate_per_s=1, address_burst=1)
    lim = JoinLimits(cfg, random.Random(2))
    retries = set()
    for i in range(20):
        lim.check_client(f"10.0.{i}.1", prefix_of(f"10.0.{i}.1"), 0.0)
        with pytest.raises(AddressRateLimited) as e:
            lim.check_client(f"10.0.{i}.1", prefix_of(f"10.0.{i}.1"), 0.0)
        retries.add(e.value.retry_after_s)
    assert len(retries) > 10 and min(retries) >= 1.0 and max(retries) <= 1.5
