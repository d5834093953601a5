"""Joins collected at the edge: a surge's joins reach the API nodes a batch at a time. Pure
(time is a parameter, no I/O); the fan-out (``edge/fanout.py``) reads the requests and writes
the answers. docs/admission.md, "Joins batched at the edge".

Each join costs a node the HTTP request around it more than the decision itself
(``bench/join_rate.py``: about 12 us for the decision, 119 us for a join over HTTP). So the
edge's fan-out answers ``POST /api/spaces/<id>/join`` itself: it reads the request (a small
JSON body), and sends the joins it has gathered to an API node in one ``POST /api/edge/joins``
(with the edge's credential, through Varnish, which picks a healthy node). The node decides each
one exactly as if it had come alone (the defense sees each client's own address) and answers a
list, in order; the fan-out writes each client its own answer.

When to send (``JoinBatcher``): at once if the last batch left at least ``WINDOW_S`` ago, so a
lone join waits for nothing; otherwise the joins gather until the
window has passed, at most ``MAX_BATCH`` a request (a full batch goes at once). One worker thus
sends at most ``1 / WINDOW_S`` batches a second however many join, and a join waits at most a
window plus a node's answer.

Bounds: at most ``MAX_PENDING`` joins wait in one worker; one more is answered 503 with a
Retry-After at once (``full``), never queued without bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WINDOW_S = 0.1  # at most one batch per worker this often: 10 requests/s, whatever the surge
MAX_BATCH = 250  # joins in one request (about 40 KB of answers: the node's body limit allows four times that)
MAX_PENDING = 5000  # joins waiting in one worker before more are refused (503, Retry-After)


@dataclass(slots=True)
class Join:
    """One client's join, as the node's batch endpoint takes it:
    ``[space, address, body, authorization, header bytes]``."""

    space: str
    address: str  # the client's, as the fan-out saw it (the PROXY line's, or the peer's)
    body: bytes  # the JSON body as sent (the node parses it: a malformed one is that client's 400)
    authorization: str | None  # a host's key (reserved capacity), passed on unread
    header_bytes: int  # the request's header size (the node's shield refuses one too large: 431)
    who: object = field(default=None, repr=False)  # the connection to answer (the fan-out's Client)

    def row(self) -> list[object]:
        return [self.space, self.address, self.body.decode("utf-8", "replace"), self.authorization, self.header_bytes]


class JoinBatcher:
    """The joins waiting to go to a node, and when they go."""

    def __init__(self, window_s: float = WINDOW_S, max_batch: int = MAX_BATCH, max_pending: int = MAX_PENDING) -> None:
        self.window_s, self.max_batch, self.max_pending = window_s, max_batch, max_pending
        self.pending: list[Join] = []
        self.in_flight = 0  # batches sent, not yet answered
        self.last_sent = float("-inf")
        self.received = self.batches = self.refused = 0

    def add(self, join: Join) -> bool:
        """False if too many joins already wait (the caller answers 503)."""
        if len(self.pending) >= self.max_pending:
            self.refused += 1
            return False
        self.pending.append(join)
        self.received += 1
        return True

    def wait_s(self, now: float) -> float | None:
        """How long until a batch should go: 0 now, None if nothing waits."""
        if not self.pending:
            return None
        if len(self.pending) >= self.max_batch:
            return 0.0
        return max(0.0, self.last_sent + self.window_s - now)

    def take(self, now: float) -> list[Join]:
        """The next batch (at most ``max_batch``), counted as in flight until ``answered``."""
        batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
        if batch:
            self.in_flight += 1
            self.batches += 1
            self.last_sent = now
        return batch

    def answered(self) -> None:
        self.in_flight -= 1

    def stats(self) -> dict[str, int]:
        return {"joins": self.received, "join_batches": self.batches, "joins_refused": self.refused,
                "joins_pending": len(self.pending), "join_batches_in_flight": self.in_flight}
