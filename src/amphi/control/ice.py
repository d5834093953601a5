"""The ICE servers a speaker's client should use (pure): STUN URLs as they are, TURN URLs with
TURN REST ephemeral credentials (draft-uberti-behave-turn-rest, as coturn's
``use-auth-secret``/``static-auth-secret`` checks them): the username is
``<unix expiry>:<user>``, the password base64(HMAC-SHA1(secret, username)). No password is
stored anywhere: the TURN server recomputes it from the shared secret and refuses it after the
expiry. The same list goes to browsers in the page's config and to WHIP clients in ``Link``
headers (RFC 9725 section 4.4)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass

from amphi.core.config import IceConfig


def turn_credential(secret: str, user: str, now: float, ttl_s: float) -> tuple[str, str]:
    """(username, password) for ``user``, valid until ``now + ttl_s``."""
    username = f"{int(now + ttl_s)}:{user}"
    password = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    return username, password


def ice_servers(ice: IceConfig, now: float, user: str = "amphi") -> list[dict[str, object]]:
    """RTCIceServer dictionaries (the shape ``RTCPeerConnection`` takes): one for the STUN URLs,
    one for the TURN URLs with a fresh credential; empty when none is configured."""
    servers: list[dict[str, object]] = []
    if ice.stun:
        servers.append({"urls": list(ice.stun)})
    if ice.turn:
        if not ice.turn_secret:
            raise ValueError("TURN URLs need the TURN server's shared secret (turn_secret)")
        username, password = turn_credential(ice.turn_secret, user, now, ice.turn_ttl_s)
        servers.append({"urls": list(ice.turn), "username": username, "credential": password})
    return servers


def link_header(servers: list[dict[str, object]]) -> list[str]:
    """``Link`` header values for WHIP (RFC 9725 section 4.4): one per URL,
    ``<turn:host:3478>; rel="ice-server"; username="..."; credential="..."; credential-type="password"``."""
    out = []
    for server in servers:
        urls = server["urls"]
        for url in urls if isinstance(urls, list) else [urls]:
            value = f'<{url}>; rel="ice-server"'
            if "username" in server:
                value += f'; username="{server["username"]}"; credential="{server["credential"]}"; credential-type="password"'
            out.append(value)
    return out


# -- checking what an operator typed (the CLI and the config turn ValueError into their own errors) --

SCHEMES = {"stun": ("stun",), "turn": ("turn", "turns")}  # what each list may hold (RFC 7064, RFC 7065)
TRANSPORTS = ("udp", "tcp")
_URL = re.compile(r"^(?P<scheme>stuns?|turns?):(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?"
                  r"(?:\?transport=(?P<transport>[a-z]+))?$")


@dataclass(frozen=True)
class IceUrl:
    scheme: str  # stun, turn or turns
    host: str  # a name or an IP literal (IPv6 without its brackets)
    port: int  # 3478, or 5349 for turns, unless given
    transport: str | None  # turn/turns only: udp or tcp (None: the client's default)


def parse_ice_url(url: str, kind: str) -> IceUrl:
    """``url`` as a STUN (``kind`` "stun": ``stun:host[:port]``) or TURN server (``kind``
    "turn": ``turn:host[:port][?transport=udp|tcp]`` or ``turns:...``); ``ValueError`` saying
    what is wrong otherwise."""
    m = _URL.match(url)
    wanted = " or ".join(f"{s}:" for s in SCHEMES[kind])
    if m is None:
        example = "stun:stun.example.org:3478" if kind == "stun" else "turn:turn.example.org:3478?transport=udp"
        raise ValueError(f"{url!r} is not a {kind.upper()} URL (like {example})")
    scheme = m.group("scheme")
    if scheme not in SCHEMES[kind]:
        raise ValueError(f"{url!r}: a {kind.upper()} URL starts with {wanted}, not {scheme}:")
    host = m.group("host")
    if host.startswith("["):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{url!r}: {host!r} is not an IPv6 address") from None
    port = int(m.group("port") or (5349 if scheme == "turns" else 3478))
    if not 0 < port < 65536:
        raise ValueError(f"{url!r}: port {port} is out of range")
    transport = m.group("transport")
    if transport is not None and scheme == "stun":
        raise ValueError(f"{url!r}: a STUN URL takes no transport")
    if transport is not None and transport not in TRANSPORTS:
        raise ValueError(f"{url!r}: transport is udp or tcp, not {transport!r}")
    return IceUrl(scheme, host, port, transport)


def parse_address(text: str) -> str:
    """An ICE host address: an IP literal, not a name, nor the unspecified address (0.0.0.0, ::),
    which is no place a peer can send to. Returned in its canonical form; ``ValueError`` otherwise."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (an ICE address is a literal, like 203.0.113.7)") from None
    if address.is_unspecified:
        raise ValueError(f"{text!r} is the unspecified address: give the address peers should send to")
    return str(address)
