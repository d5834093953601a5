"""Signed admission tokens and waiting-room tickets: HMAC-SHA256, checked without state.

    token   <role><seat>.<expires>.<mac>      role "l" listener, "h" host; expires: Unix s
    ticket  <entry>.<issued>.<mac>            entry: the waiting-room entry's number
    grant   p<participant>.<expires>.<mac>    who someone is on a Space's stage (docs/stage.md)
    edge    <edge>.<mac>                      an edge cache fetching media for its listeners (docs/edge.md)

The MAC covers the kind, the Space id and every field, so a token is bound to its Space
and cannot be moved, extended or forged without the node's secret. Anyone holding the
secret (an edge, another node) verifies a token with one HMAC and a clock read: no shared
state. The MAC is truncated to 128 bits, plenty for credentials that live a minute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from amphi.core.errors import BadTicket, Forbidden, TokenExpired, Unauthorized

MAC_BYTES = 16
_TOKEN = re.compile(r"^([lh])([A-Za-z0-9_-]{8,32})\.(\d{1,12})\.([A-Za-z0-9_-]{22})$")
_GRANT = re.compile(r"^p([A-Za-z0-9_-]{4,32})\.(\d{1,12})\.([A-Za-z0-9_-]{22})$")
_EDGE = re.compile(r"^([A-Za-z0-9_-]{1,32})\.([A-Za-z0-9_-]{22})$")
_TICKET = re.compile(r"^(\d{1,15})\.(\d{1,12})\.([A-Za-z0-9_-]{22})$")


@dataclass(frozen=True, slots=True)
class Token:
    space_id: str
    role: str  # "l" listener, "h" host
    seat: str
    expires: int  # Unix seconds

    @property
    def host(self) -> bool:
        return self.role == "h"


@dataclass(frozen=True, slots=True)
class Ticket:
    space_id: str
    entry: int
    issued: int  # Unix seconds


class Signer:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the token secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, kind: bytes, space_id: str, body: str) -> str:
        digest = hmac.new(self._secret, b"%s|%s|%s" % (kind, space_id.encode(), body.encode()), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:MAC_BYTES]).rstrip(b"=").decode()

    # -- tokens -----------------------------------------------------------------------------

    def token(self, space_id: str, seat: str, expires: int, *, host: bool = False) -> str:
        body = f"{'h' if host else 'l'}{seat}.{expires}"
        return f"{body}.{self._mac(b'token', space_id, body)}"

    def verify_token(self, space_id: str, text: str | None, now: float, *, grace_s: float = 0.0) -> Token:
        """The token's claims, once its MAC and expiry check out. Missing or expired ->
        ``Unauthorized``/``TokenExpired`` (401); forged, garbled or another Space's ->
        ``Forbidden`` (403). ``grace_s`` accepts a token that expired that long ago."""
        if not text:
            raise Unauthorized("an admission token is required: POST /api/spaces/{id}/join")
        m = _TOKEN.match(text)
        if m is None:
            raise Forbidden("malformed admission token")
        role, seat, expires, mac = m.groups()
        if not hmac.compare_digest(mac, self._mac(b"token", space_id, f"{role}{seat}.{expires}")):
            raise Forbidden("this admission token is not valid for this Space")
        if int(expires) + grace_s <= now:
            raise TokenExpired("the admission token has expired: join again")
        return Token(space_id, role, seat, int(expires))

    # -- grants -----------------------------------------------------------------------------

    def grant(self, space_id: str, participant: str, expires: int) -> str:
        body = f"p{participant}.{expires}"
        return f"{body}.{self._mac(b'grant', space_id, body)}"

    def verify_grant(self, space_id: str, text: str | None, now: float) -> tuple[str, int]:
        """(participant, expires) of a grant for this Space. Missing or expired -> 401;
        forged, garbled or another Space's -> 403."""
        if not text:
            raise Unauthorized("this needs a grant or the host key: Authorization: Bearer ...")
        m = _GRANT.match(text)
        if m is None:
            raise Forbidden("malformed grant")
        participant, expires, mac = m.groups()
        if not hmac.compare_digest(mac, self._mac(b"grant", space_id, f"p{participant}.{expires}")):
            raise Forbidden("this grant is not valid for this Space")
        if int(expires) <= now:
            raise TokenExpired("the grant has expired: ask to speak again")
        return participant, int(expires)

    # -- edges ------------------------------------------------------------------------------

    def edge_credential(self, edge: str) -> str:
        """What an edge sends the origin (header ``x-amphi-edge``) instead of its listeners'
        tokens, which it has checked itself: the edge caches one copy for all of them."""
        return f"{edge}.{self._mac(b'edge', '*', edge)}"

    def verify_edge(self, text: str | None) -> str:
        """The edge's name, if its credential is this node's; anything else is ``Forbidden``."""
        m = _EDGE.match(text) if text else None
        if m is None or not hmac.compare_digest(m.group(2), self._mac(b"edge", "*", m.group(1))):
            raise Forbidden("media under /edge/ is for this cluster's edge caches")
        return m.group(1)

    # -- tickets ----------------------------------------------------------------------------

    def ticket(self, space_id: str, entry: int, issued: int) -> str:
        body = f"{entry}.{issued}"
        return f"{body}.{self._mac(b'ticket', space_id, body)}"

    def verify_ticket(self, space_id: str, text: object) -> Ticket:
        """Any ticket this node did not issue for this Space is ``BadTicket`` (400)."""
        m = _TICKET.match(text) if isinstance(text, str) else None
        if m is None:
            raise BadTicket("malformed waiting-room ticket")
        entry, issued, mac = m.groups()
        if not hmac.compare_digest(mac, self._mac(b"ticket", space_id, f"{entry}.{issued}")):
            raise BadTicket("this ticket was not issued for this Space")
        return Ticket(space_id, int(entry), int(issued))


def new_seat_id() -> str:
    return secrets.token_urlsafe(9)  # 12 characters, 72 bits


def new_participant_id() -> str:
    return secrets.token_urlsafe(6)  # 8 characters, 48 bits: unique within a Space


def new_secret() -> bytes:
    return secrets.token_bytes(32)
