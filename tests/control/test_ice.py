"""ICE settings (amphi.control.ice, the serve/speak flags): what an operator types is checked
with a clear error, and TURN REST credentials are the ones coturn's use-auth-secret expects
(checked against openssl's HMAC, an independent implementation)."""

from __future__ import annotations

import base64
import subprocess

import pytest
from click.testing import CliRunner

from amphi.cli import main
from amphi.control.ice import IceUrl, ice_servers, link_header, parse_address, parse_ice_url, turn_credential
from amphi.core.config import IceConfig
from amphi.core.settings import Given, SettingsError, build
from amphi.server import unbindable
from amphi.media.ingest.webrtc import announce


def openssl_hmac_sha1_b64(secret: str, message: str) -> str:
    digest = subprocess.run(["openssl", "dgst", "-sha1", "-hmac", secret, "-binary"], input=message.encode(),
                            capture_output=True, check=True).stdout
    return base64.b64encode(digest).decode()


# -- URLs and addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize("url, kind, parsed", [
    ("stun:stun.example.org", "stun", IceUrl("stun", "stun.example.org", 3478, None)),
    ("stun:198.51.100.4:19302", "stun", IceUrl("stun", "198.51.100.4", 19302, None)),
    ("turn:127.0.0.1:3479?transport=udp", "turn", IceUrl("turn", "127.0.0.1", 3479, "udp")),
    ("turn:turn.example.org?transport=tcp", "turn", IceUrl("turn", "turn.example.org", 3478, "tcp")),
    ("turns:turn.example.org", "turn", IceUrl("turns", "turn.example.org", 5349, None)),
    ("turn:[2001:db8::1]:3478", "turn", IceUrl("turn", "2001:db8::1", 3478, None)),
])
def test_good_urls_parse(url: str, kind: str, parsed: IceUrl) -> None:
    assert parse_ice_url(url, kind) == parsed


@pytest.mark.parametrize("url, kind, says", [
    ("http://stun.example.org", "stun", "is not a STUN URL"),
    ("stun.example.org:3478", "stun", "is not a STUN URL"),
    ("turn:turn.example.org", "stun", "a STUN URL starts with stun:, not turn:"),
    ("stun:stun.example.org", "turn", "a TURN URL starts with turn: or turns:, not stun:"),
    ("stun:stun.example.org?transport=udp", "stun", "a STUN URL takes no transport"),
    ("turn:turn.example.org?transport=sctp", "turn", "transport is udp or tcp"),
    ("turn:turn.example.org:70000", "turn", "port 70000 is out of range"),
    ("turn:[not-v6]:3478", "turn", "is not a TURN URL"),
    ("turn:[2001:db8::zz]", "turn", "is not a TURN URL"),
    ("turn:user@turn.example.org", "turn", "is not a TURN URL"),
])
def test_bad_urls_are_refused_saying_why(url: str, kind: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("?", r"\?")):
        parse_ice_url(url, kind)


def test_addresses_are_ip_literals_peers_can_send_to() -> None:
    assert parse_address("10.213.7.1") == "10.213.7.1"
    assert parse_address("2001:0db8::0001") == "2001:db8::1"  # canonical
    for bad, says in (("localhost", "not an IP address"), ("203.0.113", "not an IP address"),
                      ("0.0.0.0", "unspecified"), ("::", "unspecified")):
        with pytest.raises(ValueError, match=says):
            parse_address(bad)


def ice_of(**given: object) -> IceConfig:
    return build({path: Given(value, "test") for path, value in given.items()}).ice


def test_settings_check_the_ice_config() -> None:
    """The file, AMPHI_* variables and flags all pass through these checks (amphi.core.settings)."""
    assert ice_of(**{"ice.addresses": ("2001:db8::0001",)}).addresses == ("2001:db8::1",)
    for given, says in (({"ice.addresses": ()}, "at least one"),
                        ({"ice.turn": ("turn:127.0.0.1",)}, "shared secret"),
                        ({"ice.addresses": ("10.0.0.5", "10.0.0.6"), "ice.announced": ("203.0.113.7",)},
                         "1 announced address.*for 2 ICE"),
                        ({"ice.turn": ("turn:127.0.0.1",), "ice.turn_secret": "s", "ice.turn_ttl_s": 5}, "out of range"),
                        ({"ice.addresses": ("node.example.org",)}, "not an IP address"),
                        ({"ice.addresses": ("0.0.0.0",)}, "unspecified"),
                        ({"ice.announced": ("public.example.org",)}, "not an IP address"),
                        ({"ice.stun": ("turn:127.0.0.1",)}, "a STUN URL starts with stun:"),
                        ({"ice.turn": ("https://turn.example.org",)}, "is not a TURN URL")):
        with pytest.raises(SettingsError, match=says):
            ice_of(**given)


def test_the_default_address_is_the_host_when_peers_can_send_to_it() -> None:
    assert ice_of(**{"http.host": "127.0.0.5"}).addresses == ("127.0.0.5",)
    assert ice_of(**{"http.host": "0.0.0.0"}).addresses == ("127.0.0.1",)
    assert ice_of(**{"http.host": "localhost"}).addresses == ("127.0.0.1",)
    assert ice_of(**{"http.host": "0.0.0.0", "ice.addresses": ("127.0.0.2", "127.0.0.3")}).addresses == \
        ("127.0.0.2", "127.0.0.3")
    nat = ice_of(**{"http.host": "127.0.0.2", "ice.announced": ("203.0.113.7",)})  # 1:1 NAT
    assert (nat.addresses, nat.announced) == (("127.0.0.2",), ("203.0.113.7",))
    assert unbindable("127.0.0.1") is None
    assert unbindable("192.0.2.1")  # TEST-NET-1: on no interface here


@pytest.mark.parametrize("args, says", [
    (["config", "show", "--ice-address", "node.example.org"], "--ice-address: 'node.example.org' is not an IP"),
    (["config", "show", "--ice-address", "127.0.0.2", "--ice-announce", "203.0.113.7", "--ice-announce",
      "203.0.113.8"], "--ice-announce: 2 announced address(es) for 1 ICE"),
    (["config", "show", "--stun", "turn:127.0.0.1"], "--stun: 'turn:127.0.0.1': a STUN URL starts with stun:"),
    (["config", "show", "--turn", "turn:127.0.0.1"], "TURN URLs need the TURN server's shared secret"),
])
def test_bad_flags_are_errors_naming_the_flag(args: list[str], says: str) -> None:
    result = CliRunner().invoke(main, args, env={"AMPHI_TURN_SECRET": ""})
    assert result.exit_code != 0, result.output
    assert says in " ".join(result.output.split()), result.output


def test_speak_checks_its_address() -> None:
    result = CliRunner().invoke(main, ["speak", "--server", "http://127.0.0.1:9", "--space", "x", "--key", "k",
                                       "--tone", "440", "--ice-address", "me.example.org"])
    assert result.exit_code == 2 and "'me.example.org' is not an IP" in " ".join(result.output.split())


def test_flags_make_the_config() -> None:
    result = CliRunner().invoke(main, ["config", "show", "--json", "--host", "127.0.0.5", "--stun",
                                       "stun:stun.example.org", "--turn", "turn:127.0.0.1:3479?transport=udp",
                                       "--turn-secret", "s", "--turn-ttl", "600"], env={"AMPHI_TURN_SECRET": ""})
    assert result.exit_code == 0, result.output
    import json
    ice = json.loads(result.output)["ice"]
    assert (ice["addresses"], ice["stun"], ice["turn"], ice["turn_ttl_s"]) == \
        (["127.0.0.5"], ["stun:stun.example.org"], ["turn:127.0.0.1:3479?transport=udp"], 600)


# -- TURN REST credentials -------------------------------------------------------------------------


def test_turn_credential_is_coturns_hmac_with_the_expiry_in_the_username() -> None:
    now, ttl = 1_800_000_000.7, 3600.0
    username, password = turn_credential("north-wind", "host", now, ttl)
    assert username == "1800003600:host"  # <unix expiry>:<user>
    assert password == openssl_hmac_sha1_b64("north-wind", username)
    assert turn_credential("another secret", "host", now, ttl)[1] != password
    later_user, later_password = turn_credential("north-wind", "host", now + 60, ttl)
    assert later_user == "1800003660:host" and later_password == openssl_hmac_sha1_b64("north-wind", later_user)


def test_ice_servers_and_link_header() -> None:
    assert ice_servers(IceConfig(), 0) == []
    ice = IceConfig(stun=("stun:stun.example.org",), turn=("turn:t.example.org?transport=udp", "turns:t.example.org"),
                    turn_secret="s3", turn_ttl_s=600)
    stun, turn = ice_servers(ice, 1000.0, "p1")
    assert stun == {"urls": ["stun:stun.example.org"]}
    assert turn["urls"] == ["turn:t.example.org?transport=udp", "turns:t.example.org"]
    assert turn["username"] == "1600:p1" and turn["credential"] == openssl_hmac_sha1_b64("s3", "1600:p1")
    assert link_header([stun, turn]) == [
        '<stun:stun.example.org>; rel="ice-server"',
        f'<turn:t.example.org?transport=udp>; rel="ice-server"; username="1600:p1"; credential="{turn["credential"]}"; '
        'credential-type="password"',
        f'<turns:t.example.org>; rel="ice-server"; username="1600:p1"; credential="{turn["credential"]}"; '
        'credential-type="password"',
    ]


# -- 1:1 NAT: the answer names the public address -----------------------------------------------------


ANSWER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "m=audio 40000 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 10.0.0.5",
    "a=candidate:1 1 udp 2130706431 10.0.0.5 40000 typ host",
    "a=candidate:2 1 udp 2130706431 10.0.0.6 40001 typ host",
    "a=candidate:3 1 udp 1694498815 198.51.100.9 40002 typ srflx raddr 10.0.0.5 rport 40000",
    "a=end-of-candidates", "",
])


def test_announce_replaces_the_bound_address_in_candidates_and_c_lines() -> None:
    assert announce(ANSWER, {}) == ANSWER
    out = announce(ANSWER, {"10.0.0.5": "203.0.113.7"}).split("\r\n")
    assert "c=IN IP4 203.0.113.7" in out
    assert "a=candidate:1 1 udp 2130706431 203.0.113.7 40000 typ host" in out  # the port stays: 1:1 NAT
    assert "a=candidate:2 1 udp 2130706431 10.0.0.6 40001 typ host" in out  # not mapped: as it was
    assert "a=candidate:3 1 udp 1694498815 198.51.100.9 40002 typ srflx raddr 10.0.0.5 rport 40000" in out
    assert out[1] == "o=- 1 1 IN IP4 0.0.0.0" and out[-1] == ""
    v6 = announce(ANSWER, {"10.0.0.5": "2001:db8::7"})
    assert "c=IN IP6 2001:db8::7\r\n" in v6 and " 2001:db8::7 40000 typ host" in v6
