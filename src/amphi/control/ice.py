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
