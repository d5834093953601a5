"""Trickle ICE SDP fragments (``application/trickle-ice-sdpfrag``, RFC 8840), as a WHIP client
PATCHes them to its session (RFC 9725 section 4.3): pure parsing, no I/O.

    a=ice-ufrag:EsAw
    a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1
    m=audio 9 UDP/TLS/RTP/SAVPF 0
    a=mid:0
    a=candidate:1 1 UDP 2130706431 198.51.100.1 41289 typ host
    a=end-of-candidates

The ICE credentials may sit at the session level or in the m-section; candidates belong to the
m-section (its ``mid``) they follow."""

from __future__ import annotations

from dataclasses import dataclass

from amphi.core.errors import InvalidSdp

MEDIA_TYPE = "application/trickle-ice-sdpfrag"
MAX_CANDIDATES = 64  # a client gathers a handful per interface; more is not a client


@dataclass(frozen=True, slots=True)
class Fragment:
    ufrag: str | None
    pwd: str | None
    candidates: tuple[tuple[str | None, str], ...]  # (mid, the candidate attribute's value)
    end: bool  # end-of-candidates


def parse_fragment(text: str) -> Fragment:
    """The fragment's ICE credentials, candidates and end-of-candidates; ``InvalidSdp`` (400)
    if a line is not SDP, a candidate has no m-section with a mid, or there are too many."""
    ufrag = pwd = None
    mid: str | None = None
    in_media = False
    candidates: list[tuple[str | None, str]] = []
    end = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise InvalidSdp(f"not an SDP line in the fragment: {line[:60]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            in_media, mid = True, None
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name == "ice-ufrag":
                ufrag = arg
            elif name == "ice-pwd":
                pwd = arg
            elif name == "mid" and in_media:
                mid = arg
            elif name == "candidate":
                if not arg.strip():
                    raise InvalidSdp("an empty candidate in the fragment")
                candidates.append((mid if in_media else None, arg))
            elif name == "end-of-candidates":
                end = True
    if len(candidates) > MAX_CANDIDATES:
        raise InvalidSdp(f"more than {MAX_CANDIDATES} candidates in one fragment")
    return Fragment(ufrag, pwd, tuple(candidates), end)
