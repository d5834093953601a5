"""Signed admission tokens and waiting-room tickets: HMAC-SHA256, checked without state.

    token   <role><seat>.<expires>.<mac>      role "l" listener, "h" host; expires: Unix s
    ticket  <entry>.<issued>.<mac>            entry: the waiting-room entry's number
    grant   p<participant>.<expires>.<mac>    who someone is on a Space's stage (docs/stage.md)
    edge    <edge>.<mac>                      an edge cache fetching media for its listeners (docs/edge.md)

Each shape is written once, as a ``TokenFormat`` (``TOKEN``, ``TICKET``, ``GRANT``, ``EDGE``):
the ``Signer`` makes and checks them with it, the shield reads their fields with ``parse``
(no MAC check: that is the admission's), and the edge's VCL and nginx front interpolate its
``pattern`` (the same regex text is valid in Python, PCRE and JavaScript).

The MAC covers the kind, the Space id and every field, so a token is bound to its Space
and cannot be moved, extended or forged without the node's secret. Anyone holding the
secret (an edge, another node) verifies a token with one HMAC and a clock read: no shared
state. The MAC is truncated to 128 bits, plenty for credentials that live a minute.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import NamedTuple

from amphi.core.errors import BadTicket, Forbidden, TokenExpired, Unauthorized

MAC_BYTES = 16
MAC = r"[A-Za-z0-9_-]{22}"  # base64url of MAC_BYTES, unpadded
ID = r"[A-Za-z0-9_-]"  # the alphabet of seats, participants and edge names (token_urlsafe)
DIGITS = "[0-9]"  # never \d: in Python it matches every Unicode digit


class Fields(NamedTuple):
    """What ``TokenFormat.parse`` reads from a credential, the MAC unchecked."""

    kind: str  # the leading letter ("l", "h", "p"), "" for a format without one
    values: tuple[str, ...]  # the fields, in the format's order
    body: str  # what the MAC covers: everything before the last '.'
    mac: str



@dataclass(frozen=True)
class TokenFormat:
    """One credential's grammar: an optional kind letter, '.'-separated fields, then the MAC.

    ``fields`` are (name, regex) pairs; ``pattern`` is the whole credential's regex, unanchored
    and without groups; ``regex`` (Python) has one group per field, and ``groups`` gives the
    index of each group ("body" first, then the kind if any, the fields and "mac") so that
    another regex engine's numbered captures (VCL's ``regsub``, njs) can use ``numbered``."""

    name: str
    kinds: str  # the kind letters allowed first ("lh"), "" for none
    fields: tuple[tuple[str, str], ...]
    tag: bytes = field(init=False, repr=False)  # the name, as the MAC's domain separator
    pattern: str = field(init=False)
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kind = f"[{self.kinds}]" if self.kinds else ""
        body = kind + r"\.".join(grammar for _, grammar in self.fields)
        object.__setattr__(self, "tag", self.name.encode())
        object.__setattr__(self, "pattern", rf"{body}\.{MAC}")
        object.__setattr__(self, "regex", re.compile(self.numbered()))

    @property
    def groups(self) -> tuple[str, ...]:
        return ("body", *(("kind",) if self.kinds else ()), *(name for name, _ in self.fields), "mac")

    def group(self, name: str) -> int:
        """The number of ``name``'s capture in ``numbered()`` (1-based)."""
        return self.groups.index(name) + 1

    def numbered(self) -> str:
        """The anchored regex with numbered captures (see ``groups``), for any PCRE-like engine."""
        kind = f"([{self.kinds}])" if self.kinds else ""
        body = kind + r"\.".join(f"({grammar})" for _, grammar in self.fields)
        return rf"^({body})\.({MAC})$"

    def parse(self, text: object) -> Fields | None:
        """The fields of a well-formed credential (the MAC is not checked); None otherwise."""
        m = self.regex.match(text) if isinstance(text, str) else None
        if m is None:
            return None
        g = m.groups()
        kind = g[1] if self.kinds else ""
        return Fields(kind, g[2:-1] if self.kinds else g[1:-1], g[0], g[-1])

    def first(self, text: str) -> str:
        """The first field of a credential this node has just made (so well formed: not
        parsed, for the hot path): a token's seat, a ticket's entry."""
        return text[len(text) - len(text.lstrip(self.kinds)):text.index(".")] if self.kinds else text[:text.index(".")]


SEAT = re.compile(f"{ID}{{8,32}}")  # a seat id (new_seat_id), as tokens carry it
TOKEN = TokenFormat("token", "lh", (("seat", SEAT.pattern), ("expires", f"{DIGITS}{{1,12}}")))
TICKET = TokenFormat("ticket", "", (("entry", f"{DIGITS}{{1,15}}"), ("issued", f"{DIGITS}{{1,12}}")))
GRANT = TokenFormat("grant", "p", (("participant", f"{ID}{{4,32}}"), ("expires", f"{DIGITS}{{1,12}}")))
EDGE = TokenFormat("edge", "", (("edge", f"{ID}{{1,32}}"),))


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
        digest = hmac.digest(self._secret, b"%s|%s|%s" % (kind, space_id.encode(), body.encode()), "sha256")  # one C call
        return base64.urlsafe_b64encode(digest[:MAC_BYTES]).rstrip(b"=").decode()

    def mac(self, kind: bytes, space_id: str, body: str) -> str:
        """The MAC of ``body`` for another kind of signed thing (proof-of-work challenges)."""
        return self._mac(kind, space_id, body)

    def _sign(self, fmt: TokenFormat, space_id: str, kind: str, *values: object) -> str:
        body = kind + ".".join(map(str, values))  # what the MAC covers: the kind, then the fields
        return f"{body}.{self._mac(fmt.tag, space_id, body)}"

    def _authentic(self, fmt: TokenFormat, space_id: str, f: Fields) -> bool:
        """Whether the MAC of a parsed credential is this node's for this Space."""
        return hmac.compare_digest(f.mac, self._mac(fmt.tag, space_id, f.body))

    # -- tokens -----------------------------------------------------------------------------

    def token(self, space_id: str, seat: str, expires: int, *, host: bool = False) -> str:
        return self._sign(TOKEN, space_id, "h" if host else "l", seat, expires)

    def verify_token(self, space_id: str, text: str | None, now: float, *, grace_s: float = 0.0) -> Token:
        """The token's claims, once its MAC and expiry check out. Missing or expired ->
        ``Unauthorized``/``TokenExpired`` (401); forged, garbled or another Space's ->
        ``Forbidden`` (403). ``grace_s`` accepts a token that expired that long ago."""
        if not text:
            raise Unauthorized("an admission token is required: POST /api/spaces/{id}/join")
        m = TOKEN.regex.match(text)  # TOKEN.parse without its record: every media request comes here
        if m is None:
            raise Forbidden("malformed admission token")
        body, role, seat, expires, mac = m.groups()
        if not hmac.compare_digest(mac, self._mac(TOKEN.tag, space_id, body)):
            raise Forbidden("this admission token is not valid for this Space")
        if int(expires) + grace_s <= now:
            raise TokenExpired("the admission token has expired: join again")
        return Token(space_id, role, seat, int(expires))

    # -- grants -----------------------------------------------------------------------------

    def grant(self, space_id: str, participant: str, expires: int) -> str:
        return self._sign(GRANT, space_id, "p", participant, expires)

    def verify_grant(self, space_id: str, text: str | None, now: float) -> tuple[str, int]:
        """(participant, expires) of a grant for this Space. Missing or expired -> 401;
        forged, garbled or another Space's -> 403."""
        if not text:
            raise Unauthorized("this needs a grant or the host key: Authorization: Bearer ...")
        f = GRANT.parse(text)
        if f is None:
            raise Forbidden("malformed grant")
        if not self._authentic(GRANT, space_id, f):
            raise Forbidden("this grant is not valid for this Space")
        participant, expires = f.values
        if int(expires) <= now:
            raise TokenExpired("the grant has expired: ask to speak again")
        return participant, int(expires)

    # -- edges ------------------------------------------------------------------------------

    def edge_credential(self, edge: str) -> str:
        """What an edge sends the origin (header ``x-amphi-edge``) instead of its listeners'
        tokens, which it has checked itself: the edge caches one copy for all of them."""
        return self._sign(EDGE, "*", "", edge)

    def verify_edge(self, text: str | None) -> str:
        """The edge's name, if its credential is this node's; anything else is ``Forbidden``."""
        f = EDGE.parse(text)
        if f is None or not self._authentic(EDGE, "*", f):
            raise Forbidden("media under /edge/ is for this cluster's edge caches")
        return f.values[0]

    # -- tickets ----------------------------------------------------------------------------

    def ticket(self, space_id: str, entry: int, issued: int) -> str:
        return self._sign(TICKET, space_id, "", entry, issued)

    def verify_ticket(self, space_id: str, text: object) -> Ticket:
        """Any ticket this node did not issue for this Space is ``BadTicket`` (400)."""
        f = TICKET.parse(text)
        if f is None:
            raise BadTicket("malformed waiting-room ticket")
        if not self._authentic(TICKET, space_id, f):
            raise BadTicket("this ticket was not issued for this Space")
        entry, issued = f.values
        return Ticket(space_id, int(entry), int(issued))


def new_seat_id() -> str:
    return secrets.token_urlsafe(9)  # 12 characters, 72 bits


def new_participant_id() -> str:
    return secrets.token_urlsafe(6)  # 8 characters, 48 bits: unique within a Space


def new_secret() -> bytes:
    return secrets.token_bytes(32)
