"""The edge's connection cap in the firewall: the rules it sets and finds (pure)."""

from __future__ import annotations

import pytest

from amphi.core.errors import Unavailable
from amphi.edge import firewall


def test_one_rule_per_address_family_the_edge_listens_on() -> None:
    [(binary, args)] = firewall.rules("127.0.0.1", 8080, 40, "t1")
    assert binary == "iptables"
    assert args[args.index("-d") + 1] == "127.0.0.1" and args[args.index("--dport") + 1] == "8080"
    assert args[args.index("--connlimit-above") + 1] == "40" and args[args.index("--connlimit-mask") + 1] == "32"
    assert "--syn" in args and args[-3:] == ["REJECT", "--reject-with", "tcp-reset"]
    assert args[args.index("--comment") + 1] == "amphi-edge 127.0.0.1 8080 t1"
    [(binary, args)] = firewall.rules("::1", 8080, 40, "t1")
    assert binary == "ip6tables" and args[args.index("--connlimit-mask") + 1] == "128"
    [(_, any4)] = firewall.rules("0.0.0.0", 8080, 40, "t1")
    assert "-d" not in any4  # every address of the machine
    assert [b for b, _ in firewall.rules("::", 8080, 40, "t1")] == ["iptables", "ip6tables"]  # dual stack
    with pytest.raises(ValueError):
        firewall.rules("localhost", 8080, 40, "t1")
    assert "not an IP address" in (firewall.unavailable("localhost") or "")


def test_an_edge_finds_its_own_rules_and_those_left_on_its_address_and_port() -> None:
    listing = "\n".join([
        "-P INPUT ACCEPT",
        '-A INPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 8080 --tcp-flags FIN,SYN,RST,ACK SYN -m connlimit '
        '--connlimit-above 40 --connlimit-mask 32 --connlimit-saddr -m comment --comment "amphi-edge 127.0.0.1 8080 t1" '
        '-j REJECT --reject-with tcp-reset',
        '-A INPUT -p tcp -m tcp --dport 8080 -m comment --comment "amphi-edge 127.0.0.1 8080 old" -j REJECT',
        '-A INPUT -p tcp -m tcp --dport 8080 -m comment --comment "amphi-edge 127.0.0.2 8080 t2" -j REJECT',
        '-A INPUT -p tcp -m tcp --dport 80800 -m comment --comment "amphi-edge 127.0.0.1 80800 t1" -j REJECT',
        '-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT',
    ])
    [mine] = firewall.ours(listing, "127.0.0.1", 8080, "t1")
    assert mine[:2] == ["-D", "INPUT"] and mine[mine.index("--comment") + 1] == "amphi-edge 127.0.0.1 8080 t1"
    assert mine[-3:] == ["REJECT", "--reject-with", "tcp-reset"]
    assert len(firewall.ours(listing, "127.0.0.1", 8080)) == 2  # a lost keeper's rule there too
    assert len(firewall.ours(listing, "127.0.0.2", 8080)) == 1  # another address's edge on the same port: not ours
    assert firewall.ours(listing, "127.0.0.1", 8081) == [] and len(firewall.ours(listing, "127.0.0.1", 80800)) == 1


def test_auto_caps_connections_in_the_fan_out_and_the_firewall_is_asked_for_by_name(tmp_path) -> None:
    from amphi.edge.varnish import Edge
    from amphi.edge.vcl import Backend, EdgeSpec

    origin = (Backend.parse("origin", "http://127.0.0.1:9"),)
    edge = Edge(EdgeSpec.signed("e1", "s" * 64, origin, max_connections_per_address=7), tmp_path / "a", "127.0.0.1", 8080)
    edge.prepare()
    assert edge.capped_by == "fanout" and edge.keeper_command() is None  # no rule, no connection tracking
    for cmd in edge.fanout_commands():
        assert cmd[cmd.index("--max-connections") + 1] == "7" and cmd[cmd.index("--public") + 1] == "127.0.0.1:8080"
    assert "limit_conn" not in (tmp_path / "a" / "front" / "nginx.conf").read_text()  # no stream cap in front
    spec = EdgeSpec.signed("e1", "s" * 64, origin, max_connections_per_address=7, connection_cap="firewall")
    with pytest.raises(Unavailable, match="cannot cap connections in the firewall"):
        Edge(spec, tmp_path / "b", "localhost", 8080).prepare()  # a host name: no rule can name it
