"""The shield: what the join endpoint calls first, before any admission work, and where
the detector's counts come from. It holds the limits (``limits``), the proof of work
(``pow``) and one detector per Space and one for the node (``detector``); the node runs
``run()`` (a verdict every period) and hands it the origin's token checks.

    any request   enter() / leave()        requests in flight per client address (429 too_many_connections)
    join, leave   check_request()          header size (431), address and prefix GCRA (429)
    join          check_join()             proof of work while it is on (429 challenge_required,
                                           403 bad_solution / challenge_reused), the node's join budget (429)
                  answered()               expects the client back (media or a poll): follow-through
    media         media()                  token valid or not, and the follow-through of its seat

Client addresses: the socket's peer, unless that peer is a trusted proxy (``trusted_proxies``,
an edge), in which case X-Forwarded-For is read from the right, skipping trusted hops: the
first untrusted hop is the client. A client cannot forge its way past this: what it writes
into X-Forwarded-For is left of what the trusted proxy appended.
"""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import logging
import math
import random
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from amphi.control.tokens import TICKET, TOKEN, Signer
from amphi.core.config import DefenseConfig
from amphi.core.errors import (
    AmphiError,
    BadRequest,
    ChallengeRequired,
    HeadersTooLarge,
    TooManyConnections,
    TooManyRequests,
)
from amphi.defense.detector import ATTACK, NORMAL, Counts, Detector
from amphi.defense.limits import JoinLimits, prefix_of
from amphi.defense.pow import ChallengeExpired, ProofOfWork

log = logging.getLogger(__name__)

POW_MODES = ("on", "off", "auto")
CLIENT_KEY = "amphi.client"  # the ASGI scope key under which the app leaves the client's address
TOP_PREFIXES = 5
Network = tuple[int, int, int]  # (address family, network address, netmask), as integers


def parse_networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """CIDRs as integers, for a membership test that costs two operations (ValueError if bad)."""
    nets = (ipaddress.ip_network(c, strict=False) for c in cidrs)
    return tuple((socket.AF_INET if n.version == 4 else socket.AF_INET6, int(n.network_address), int(n.netmask))
                 for n in nets)


def client_address(scope: dict[str, Any], trusted: tuple[Network, ...]) -> str:
    """The client's address (see the module's docstring). On every request behind an edge, so
    addresses are parsed with ``inet_pton``, not ``ipaddress`` (a tenth of the cost)."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if not trusted or not _trusted(_ip(peer), trusted):
        return peer
    forwarded = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
    if not forwarded:
        return peer
    hops = [h.strip() for h in b",".join(forwarded).decode("latin-1").split(",")]
    nearest = peer
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            return nearest  # garbage written by the client itself: stop at the last good hop
        if not _trusted(ip, trusted):
            return hop
        nearest = hop
    return nearest


def _ip(address: str) -> tuple[int, int] | None:
    """(family, address as an integer), or None if ``address`` is not an IP address."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return family, int.from_bytes(socket.inet_pton(family, address), "big")
        except (OSError, ValueError):
            continue
    return None


def _trusted(ip: tuple[int, int] | None, trusted: tuple[Network, ...]) -> bool:
    return ip is not None and any(ip[0] == family and ip[1] & mask == net for family, net, mask in trusted)


class Shield:
    def __init__(self, cfg: DefenseConfig, signer: Signer, known: Callable[[str], bool],
                 rng: random.Random | None = None) -> None:
        if cfg.pow_mode not in POW_MODES:
            raise ValueError(f"pow mode must be one of {', '.join(POW_MODES)}")
        self.cfg = cfg
        self._known = known  # is this a Space id the node has? (per-Space tables stay bounded)
        # True when listeners fetch media from edges (amphi serve --edge): the node never sees an admitted
        # listener come back, so admitted joins are not followed up (waiting ones still are: they poll here)
        self.media_elsewhere = False
        # a Space's verdict changed: (space, label, evidence); default: a log line
        self.on_space_verdict: Callable[[str, str, dict[str, Any]], None] | None = None
        self._rng = rng or random.Random()
        self.limits = JoinLimits(cfg, self._rng)
        self.pow = ProofOfWork(signer, ttl_s=cfg.pow_ttl_s, max_seen=cfg.pow_max_seen, rng=self._rng)
        self._trusted = parse_networks(cfg.trusted_proxies)
        self.pow_mode = cfg.pow_mode  # the node's switch (amphi serve --pow)
        self._space_modes: dict[str, tuple[str, float]] = {}  # a host's switch for its Space: (mode, since)
        self.pow_bits = cfg.pow_bits
        self.pow_on_since: float | None = time.time() if cfg.pow_mode == "on" else None  # the node's PoW
        self.node = Detector(cfg)
        self.spaces: dict[str, Detector] = {}
        self._counts: dict[str, Counts] = {}
        self._node_only = Counts()  # traffic for ids that are not Spaces of this node
        self._fresh_by_address: dict[str, int] = {}  # fresh join attempts per address, this period ...
        self._fresh_before: dict[str, int] = {}  # ... and the one before
        self._fresh_by_prefix: dict[str, int] = {}  # the same per network prefix
        self._fresh_prefix_before: dict[str, int] = {}
        self.suspect_challenges = 0  # challenges issued to suspect addresses or prefixes (PoW otherwise off)
        self._by_address: Counter[str] = Counter()
        self._by_prefix: Counter[str] = Counter()
        self._follow: dict[str, str] = {}  # "s<seat>" | "e<entry>" -> Space id, expected back
        self._follow_heap: list[tuple[float, str]] = []
        self._in_flight: dict[str, int] = {}
        self._proven: OrderedDict[str, None] = OrderedDict()  # tickets from before the PoW that solved one
        self.untracked = 0  # follow-ups not tracked because the table was full

    # -- every request ----------------------------------------------------------------------

    def client(self, scope: dict[str, Any]) -> str:
        return client_address(scope, self._trusted)

    def enter(self, address: str) -> None:
        n = self._in_flight.get(address, 0)
        if n >= self.cfg.max_in_flight_per_address:
            self._count(None).refused += 1
            raise TooManyConnections(f"more than {self.cfg.max_in_flight_per_address} requests in progress from "
                                     f"your address", retry_after_s=round(self._rng.uniform(1, 3), 2))
        self._in_flight[address] = n + 1

    def leave(self, address: str) -> None:
        n = self._in_flight.get(address, 0) - 1
        if n > 0:
            self._in_flight[address] = n
        else:
            self._in_flight.pop(address, None)

    # -- the join endpoint --------------------------------------------------------------------

    def check_request(self, header_bytes: int, address: str, space_id: str, now: float) -> None:
        """Before anything else on join and leave: header size, address and prefix limits."""
        prefix = prefix_of(address)
        if len(self._by_address) < self.cfg.max_tracked or address in self._by_address:
            self._by_address[address] += 1
            self._by_prefix[prefix] += 1
        try:
            if header_bytes > self.cfg.max_header_bytes:
                raise HeadersTooLarge(f"request headers larger than {self.cfg.max_header_bytes} bytes")
            self.limits.check_client(address, prefix, now)
        except AmphiError:
            self._count(space_id).refused += 1
            raise

    def check_join(self, space_id: str, address: str, body: dict[str, Any], now: float, *, host: bool) -> bool:
        """After the body is read, before admission. True if this is a fresh join from a
        light address (one the follow-through should watch)."""
        counts = self._count(space_id)
        ticket, token = body.get("ticket"), body.get("token")
        if host:
            return False
        if token is not None:
            counts.renewals += 1
            return False
        if ticket is not None:
            counts.polls += 1
            if (fields := TICKET.parse(ticket)) is not None:  # the MAC is the admission's to check
                entry, issued = fields.values[0], int(fields.values[1])
                self._followed(f"e{entry}")
                since = self.pow_since(space_id)
                if since is not None and issued <= since and entry not in self._proven:
                    self._require(space_id, ticket, body, now, counts)  # a place taken before the PoW: prove once
                    self._proven[entry] = None
                    if len(self._proven) > self.cfg.max_tracked:
                        self._proven.popitem(last=False)
            return False
        recent = _bump(self._fresh_by_address, address, self.cfg.max_tracked) + self._fresh_before.get(address, 0)
        prefix = prefix_of(address)
        recent_prefix = (_bump(self._fresh_by_prefix, prefix, self.cfg.max_tracked)
                         + self._fresh_prefix_before.get(prefix, 0))
        if self.pow_since(space_id) is not None:
            self._require(space_id, None, body, now, counts)
        elif ((recent > self.cfg.suspect_address_joins or recent_prefix > self.cfg.suspect_prefix_joins)
              and self.pow_mode_of(space_id) != "off"):
            # joining again and again before any verdict: seat nobody from here who does not work for it
            # (attempts count, challenged ones too, so a flooding address stays suspect while it floods)
            if "solution" not in body:
                self.suspect_challenges += 1
            self._require(space_id, None, body, now, counts)
        try:
            self.limits.check_fresh_join(now)
        except TooManyRequests:
            counts.refused += 1
            raise
        light = recent <= self.cfg.light_joins
        counts.fresh_joins += 1
        counts.light_joins += light
        return light

    def answered(self, space_id: str, light: bool, status: int, answer: dict[str, object], now: float) -> None:
        """A fresh light join got its answer (this node's own token or ticket): expect it back."""
        if not light:
            return
        if status == 200 and not self.media_elsewhere and isinstance(token := answer.get("token"), str):
            self._expect(f"s{TOKEN.first(token)}", space_id, now + self.cfg.follow_up_s)
        elif status == 202 and isinstance(ticket := answer.get("ticket"), str):
            retry = answer.get("retry_after_s")
            wait = float(retry) if isinstance(retry, (int, float)) else 0.0
            self._expect(f"e{TICKET.first(ticket)}", space_id, now + wait + self.cfg.follow_up_s)

    def _require(self, space_id: str, ticket: str | None, body: dict[str, Any], now: float, counts: Counts) -> None:
        """A solved challenge in ``body``, or a 429 with a new one."""
        if "challenge" in body or "solution" in body:
            try:
                self.pow.verify(space_id, ticket, body.get("challenge"), body.get("solution"), now)
                counts.solved += 1
                return
            except ChallengeExpired:
                pass
            except AmphiError:
                counts.refused += 1
                raise
        counts.challenges += 1
        challenge = self.pow.issue(space_id, ticket, self.pow_bits, now)
        raise ChallengeRequired("solve this proof-of-work challenge and join again with "
                                "{\"challenge\", \"solution\"} (docs/defense.md)", challenge)

    # -- the origin ---------------------------------------------------------------------------

    def media(self, space_id: str, seat: str | None) -> None:
        """A media request's token checked out (its seat) or not (None)."""
        counts = self._count(space_id)
        if seat is None:
            counts.media_invalid += 1
        else:
            counts.media_valid += 1
            if self._follow:
                self._followed(f"s{seat}")

    # -- proof of work switch -------------------------------------------------------------------

    def set_space_pow(self, space_id: str, mode: object, now: float) -> None:
        """The host's switch for its Space: on, off, or auto (the node decides)."""
        if mode not in POW_MODES:
            raise BadRequest(f"pow must be one of {', '.join(POW_MODES)}")
        if mode == "auto":
            self._space_modes.pop(space_id, None)
        elif self._space_modes.get(space_id, ("",))[0] != mode:
            self._space_modes[space_id] = (str(mode), now)

    def pow_mode_of(self, space_id: str | None) -> str:
        """The switch that holds for this Space: its host's, else the node's."""
        return self._space_modes[space_id][0] if space_id in self._space_modes else self.pow_mode

    def pow_since(self, space_id: str | None) -> float | None:
        """Since when joins to this Space need a solved challenge; None while they do not."""
        mode, since = self._space_modes.get(space_id, ("auto", 0.0)) if space_id else ("auto", 0.0)
        if mode == "on":
            return since
        return None if mode == "off" else self.pow_on_since

    # -- verdicts -------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.detector_period_s)
            self.tick(time.time())

    def tick(self, now: float) -> None:
        """One period: due follow-ups, verdicts per Space and for the node, the PoW switch."""
        heap = self._follow_heap
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            space_id = self._follow.pop(key, None)
            if space_id is not None:
                self._count(space_id).unfollowed += 1
        node = Counts()
        node.add(self._node_only)
        for space_id, counts in self._counts.items():
            node.add(counts)
            det = self.spaces.get(space_id)
            if det is None:
                det = self.spaces[space_id] = Detector(self.cfg)
            self._verdict(space_id, det, counts, now)
        for space_id, det in self.spaces.items():
            if space_id not in self._counts:
                self._verdict(space_id, det, Counts(), now)
        total = sum(self._by_address.values())
        node.addresses = len(self._by_address)
        node.top_address_requests = max(self._by_address.values(), default=0)
        node.top_prefixes_share = sum(n for _, n in self._by_prefix.most_common(TOP_PREFIXES)) / total if total else 0.0
        self._verdict(None, self.node, node, now)
        self._counts, self._node_only = {}, Counts()
        self._fresh_before, self._fresh_by_address = self._fresh_by_address, {}
        self._fresh_prefix_before, self._fresh_by_prefix = self._fresh_by_prefix, {}
        self._by_address.clear()
        self._by_prefix.clear()
        self._switch_pow(now)

    def forget_space(self, space_id: str) -> None:
        self.spaces.pop(space_id, None)
        self._space_modes.pop(space_id, None)

    def _verdict(self, space_id: str | None, det: Detector, counts: Counts, now: float) -> None:
        change = det.update(counts, now)
        if change is None:
            return
        if space_id is not None and self.on_space_verdict is not None:  # the node's one event function
            self.on_space_verdict(space_id, change[1], det.verdict.evidence)
            return
        scope = "node" if space_id is None else f"space {space_id}"
        log.warning("detector %s: %s -> %s", scope, change[0], change[1],
                    extra={"detector": scope, "evidence": det.verdict.evidence})

    def _switch_pow(self, now: float) -> None:
        attack = ATTACK in self.node.verdict.label
        if self.pow_mode == "on" or (self.pow_mode == "auto" and attack):
            if self.pow_on_since is None:
                self.pow_on_since = now
                log.warning("proof of work on (%s)", "operator" if self.pow_mode == "on" else "attack detected")
        elif self.pow_on_since is not None:
            self.pow_on_since = None
            log.warning("proof of work off")
        pressure = self.node.pressure
        extra = int(math.log2(pressure)) if pressure >= 2 and attack else 0
        self.pow_bits = self.cfg.pow_bits + min(self.cfg.pow_max_extra_bits, extra)

    # -- status ---------------------------------------------------------------------------------

    def status(self, space_id: str) -> dict[str, object]:
        det = self.spaces.get(space_id)
        verdict = det.verdict.to_json() if det is not None else {"label": NORMAL, "since": None, "raw": NORMAL,
                                                                  "evidence": {}}
        return {**verdict, "node": self.node.verdict.label, "pow": self._pow_status(space_id)}

    def node_status(self) -> dict[str, object]:
        return {**self.node.verdict.to_json(), "pow": self._pow_status(None),
                "tracked": {"addresses": len(self.limits.addresses), "prefixes": len(self.limits.prefixes),
                            "follow_ups": len(self._follow), "untracked_follow_ups": self.untracked,
                            "in_flight_addresses": len(self._in_flight)},
                "challenges": {"issued": self.pow.issued, "solved": self.pow.solved,
                               "to_suspects": self.suspect_challenges}}

    def _pow_status(self, space_id: str | None) -> dict[str, object]:
        mode = self.pow_mode_of(space_id)
        return {"active": self.pow_since(space_id) is not None, "mode": mode, "bits": self.pow_bits,
                "since": self.pow_since(space_id)}

    # -- internals ------------------------------------------------------------------------------

    def _count(self, space_id: str | None) -> Counts:
        if space_id is None or not self._known(space_id):
            return self._node_only
        c = self._counts.get(space_id)
        if c is None:
            c = self._counts[space_id] = Counts()
        return c

    def _expect(self, key: str, space_id: str, deadline: float) -> None:
        if len(self._follow) >= self.cfg.max_tracked:
            self.untracked += 1
            return
        self._follow[key] = space_id
        heapq.heappush(self._follow_heap, (deadline, key))

    def _followed(self, key: str) -> None:
        space_id = self._follow.pop(key, None)
        if space_id is not None:
            self._count(space_id).followed += 1


def _bump(counts: dict[str, int], key: str, max_tracked: int) -> int:
    """One more for ``key`` (a table bounded at ``max_tracked`` keys; a new key past it is not
    kept, which errs towards seating); the new count."""
    n = counts.get(key, 0) + 1
    if n > 1 or len(counts) < max_tracked:
        counts[key] = n
    return n
