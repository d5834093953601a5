"""Trickle ICE SDP fragments as WHIP clients PATCH them (amphi.media.ingest.trickle): pure."""

from __future__ import annotations

import pytest

from amphi.core.errors import InvalidSdp
from amphi.media.ingest.trickle import MAX_CANDIDATES, parse_fragment

# RFC 9725's example, as whip-whep sends it (CRLF)
FRAGMENT = ("a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
            "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
            "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n"
            "a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0\r\n"
            "a=end-of-candidates\r\n")


def test_the_rfc_example_parses() -> None:
    f = parse_fragment(FRAGMENT)
    assert (f.ufrag, f.pwd, f.end) == ("EsAw", "P2uYro0UCOQ4zxjKXaWCBui1", True)
    assert [mid for mid, _ in f.candidates] == ["0", "0"]
    assert f.candidates[0][1].startswith("1387637174 1 udp") and "typ host" in f.candidates[1][1]


def test_credentials_only_is_no_candidates_and_no_end() -> None:
    f = parse_fragment("a=ice-ufrag:abcd\na=ice-pwd:efgh\n")
    assert (f.ufrag, f.candidates, f.end) == ("abcd", (), False)


@pytest.mark.parametrize("text", ["hello", "a=ice-ufrag:x\r\nnot sdp\r\n", "a=candidate:\r\n", "=x\r\n"])
def test_what_is_not_a_fragment_is_invalid_sdp(text: str) -> None:
    with pytest.raises(InvalidSdp):
        parse_fragment(text)


def test_too_many_candidates_are_refused() -> None:
    line = "a=candidate:1 1 udp 1 192.0.2.1 1 typ host\r\n"
    parse_fragment("m=audio 9 UDP 0\r\na=mid:0\r\n" + line * MAX_CANDIDATES)
    with pytest.raises(InvalidSdp, match="more than"):
        parse_fragment("m=audio 9 UDP 0\r\na=mid:0\r\n" + line * (MAX_CANDIDATES + 1))
