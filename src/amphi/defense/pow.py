"""Proof of work for the join endpoint: stateless HMAC-signed challenges, single use.

    challenge  c1.<nonce>.<expires>.<bits>.<mac>      nonce: 64 random bits (hex); expires: Unix s
    solution   a decimal counter S such that SHA-256("<challenge>:<S>") starts with <bits> zero bits

The MAC covers the Space and what the challenge is bound to: the waiting-room ticket the
client presented, or nothing (``-``) for a fresh join, whose fresh nonce is then the only
thing that makes it unique. So a challenge solved for one Space or one ticket is worth
nothing for another, and anyone holding the node's secret can check it without state. A
solved challenge is single-use: its nonce is remembered until it expires (``max_seen`` at
most; when that many unexpired solutions are held, new ones are refused with 503 rather
than forgotten: failing closed). Pure: every call takes ``now``.

Expected work is 2**bits hashes: 16 bits is about a second of WebCrypto in a browser's
worker, a few tens of milliseconds of hashlib.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import re

from amphi.control.tokens import Signer
from amphi.core.errors import BadSolution, ChallengeReused, TooBusy

MAX_BITS = 32
_CHALLENGE = re.compile(r"^c1\.([0-9a-f]{16})\.(\d{1,12})\.(\d{1,2})\.([A-Za-z0-9_-]{22})$")
_SOLUTION = re.compile(r"^\d{1,20}$")


class ChallengeExpired(Exception):
    """A genuine challenge past its time: the client gets a fresh one."""


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest[:8], "big")
    return 64 - value.bit_length()


def solves(challenge: str, solution: str, bits: int) -> bool:
    return leading_zero_bits(hashlib.sha256(f"{challenge}:{solution}".encode()).digest()) >= bits


def solve(challenge: str, bits: int, start: int = 0) -> str:
    """What a client does (the load test; the browser does the same in JavaScript)."""
    prefix = f"{challenge}:".encode()
    sha = hashlib.sha256
    limit = 1 << (64 - bits)
    n = start
    while int.from_bytes(sha(prefix + str(n).encode()).digest()[:8], "big") >= limit:
        n += 1
    return str(n)


class ProofOfWork:
    def __init__(self, signer: Signer, *, ttl_s: float, max_seen: int, rng: random.Random) -> None:
        self._signer = signer
        self.ttl_s = ttl_s
        self.max_seen = max_seen
        self._rng = rng
        self._seen: dict[str, int] = {}  # nonce -> expiry, in the order solved
        self.issued = 0
        self.solved = 0

    def issue(self, space_id: str, binding: str | None, bits: int, now: float) -> dict[str, object]:
        bits = max(1, min(MAX_BITS, bits))
        nonce = f"{self._rng.getrandbits(64):016x}"
        expires = math.ceil(now + self.ttl_s)
        body = f"{nonce}.{expires}.{bits}"
        challenge = f"c1.{body}.{self._mac(space_id, binding, body)}"
        self.issued += 1
        return {"challenge": challenge, "algorithm": "sha256-leading-zero-bits", "bits": bits,
                "expires_in_s": round(expires - now, 1), "bound_to": "ticket" if binding else "nonce"}

    def verify(self, space_id: str, binding: str | None, challenge: object, solution: object, now: float) -> None:
        """Returns once ``solution`` solves a challenge this node issued for this Space and
        binding, in time, for the first time. ``BadSolution`` (403) for anything forged,
        foreign or wrong; ``ChallengeReused`` (403) the second time; ``ChallengeExpired``
        when it came too late (ask again)."""
        if not isinstance(challenge, str) or not isinstance(solution, str):
            raise BadSolution("challenge and solution must be strings")
        m = _CHALLENGE.match(challenge)
        if m is None or not _SOLUTION.match(solution):
            raise BadSolution("malformed challenge or solution")
        nonce, expires, bits, mac = m.groups()
        if not hmac.compare_digest(mac, self._mac(space_id, binding, f"{nonce}.{expires}.{bits}")):
            raise BadSolution("this challenge was not issued for this Space and ticket")
        if int(expires) <= now:
            raise ChallengeExpired()
        if nonce in self._seen:
            raise ChallengeReused("this challenge has been used already: solve a new one")
        if not solves(challenge, solution, int(bits)):
            raise BadSolution("the solution does not solve the challenge")
        self._remember(nonce, int(expires), now)
        self.solved += 1

    def _remember(self, nonce: str, expires: int, now: float) -> None:
        seen = self._seen
        if len(seen) >= self.max_seen:
            for k in [k for k, e in seen.items() if e <= now]:
                del seen[k]
            if len(seen) >= self.max_seen:
                raise TooBusy("too many solved challenges to remember; try again shortly",
                              retry_after_s=self._rng.uniform(5, 10))
        seen[nonce] = expires
        while seen:  # forget from the front what has expired (solved order is close to expiry order)
            first = next(iter(seen))
            if seen[first] > now:
                break
            del seen[first]

    def _mac(self, space_id: str, binding: str | None, body: str) -> str:
        return self._signer.mac(b"pow", space_id, f"{binding or '-'}|{body}")
