"""Admission: seats, the waiting room and the admission rate. Pure logic: every call takes
``now`` (Unix seconds); randomness comes from the ``random.Random`` given. The node drives
it (``amphi.node``): joins and leaves from the API, ``promote``/``sweep`` from a task, the
limit and the pause from the health loop (``amphi.control.health``).

A listener's way through:

    join -> admitted (a seat, a token)                 seats free, nobody in line, rate allows
         -> waiting (a ticket, an exact position)      otherwise
    waiting --promote--> offered (a seat reserved for the ticket) --poll--> admitted
    offered --not picked up for ticket_hold_s--> gone  (its ticket then joins at the back)
    admitted --renew (join with the token)--> admitted, new token, same seat
    admitted --extend (an edge renewed its token)--> admitted, same seat, a later deadline
    admitted --leave, or no renewal for ttl + grace--> seat free

Seats are node-wide and never taken back: the limit only stops new admissions. Lines are
per Space and served together in order of arrival (each place's arrival number, so two
joins in the same instant keep their order). Joins that arrive before a scheduled start
while the room is full go into a pool that is drawn in random order at the start
(hammering at the last second buys nothing): the drawn places take the pool's arrival
numbers in the drawn order, so the pool stays where it arrived among the other Spaces'
lines and ahead of anyone who arrives later; after the start the line is FIFO.

A place is held until its turn without a poll: waiting clients follow the Space's ``Line``
(the line document, which edges cache) and come back only to pick their seat up. Places are
numbered in each Space's line (``Waiting.place``); the line says the number being called
and the places above it that left, so a place's exact position needs nothing else.

``control/store/admission.lua`` is this policy again, in Redis, for several nodes;
``tests/control/test_conformance.py`` runs one table of scenarios against both.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from amphi.control.tokens import Signer, Token, new_seat_id
from amphi.core.config import AdmissionConfig
from amphi.core.errors import TokenExpired, TooBusy, TooEarly
from amphi.core.gcra import Gcra


RENEWED_RECENTLY = 0.75  # a seat's token with more than this share of its life left is handed out again
ADMITTER_PERIOD_S = 0.25  # the node's admitter passes at least this often: what ran out is released this late at most
MAX_OFFERS_PER_PASS = 1000  # seats promote offers in one call at most (a Redis script call stays short): then 0, pass again
FRONT_POLL_S_PER_PLACE = 0.2  # the front of the line polls faster: 1 s at place 5, 10 s from place 50
MAX_GAPS = 1000  # places that left, listed in a line at most (beyond, positions from it are upper bounds)


def _round1(x: float) -> float:
    """Rounded to 0.1, halves up (as the Lua does; ``round`` would send halves to even)."""
    return math.floor(x * 10 + 0.5) / 10


def eta(position: int, free: int, wait_s: float, admit_rate: float, line_rate: float) -> float | None:
    """Seconds until ``position`` is seated, from what is measured: the admission rate while
    enough seats are free, else how fast the line has been moving; None when it has not moved
    (a full room nobody leaves): no number is better than a made-up one."""
    if position <= free:
        return _round1(wait_s + position / admit_rate)
    return _round1(position / line_rate) if line_rate > 0 else None


def poll_after(position: int, estimate: float | None, poll_min_s: float, poll_max_s: float) -> float:
    """When a waiting client should look again, before jitter: soon at the front (a seat
    offered there is picked up at once), at most ``poll_max_s`` further back."""
    base = position * FRONT_POLL_S_PER_PLACE
    if estimate is not None:
        base = min(base, estimate / 3)
    return min(poll_max_s, max(poll_min_s, base))


def _pop_due(heap: list[tuple[float, Any]], now: float) -> Iterator[Any]:
    """The keys of a (deadline, key) heap whose deadline has come, earliest first."""
    while heap and heap[0][0] <= now:
        yield heapq.heappop(heap)[1]


class WaitingLine:
    """FIFO with exact positions: each entry gets the next sequence number, and a Fenwick
    tree over the numbers counts those still in line, so ``position`` is O(log n) even
    when entries leave from the middle. Storage is compacted as the head moves on."""

    def __init__(self, capacity: int = 1024) -> None:
        self._next = 0  # the next sequence number
        self._head = 0  # the lowest sequence number that may still be in line
        self._len = 0
        self._reset(0, capacity, b"")

    def _reset(self, base: int, capacity: int, alive: bytes) -> None:
        self._base = base  # sequence number stored at index 0
        self._cap = capacity
        self._alive = bytearray(capacity)
        self._alive[: len(alive)] = alive
        tree = [0] * (capacity + 1)  # linear-time Fenwick build
        for i, a in enumerate(self._alive, start=1):
            tree[i] += a
            j = i + (i & -i)
            if j <= capacity:
                tree[j] += tree[i]
        self._tree = tree

    def __len__(self) -> int:
        return self._len

    def _add(self, seq: int, delta: int) -> None:
        i = seq - self._base + 1
        tree, cap = self._tree, self._cap
        while i <= cap:
            tree[i] += delta
            i += i & -i

    def push(self) -> int:
        if self._next - self._base >= self._cap:
            live = bytes(self._alive[self._head - self._base : self._next - self._base])
            self._reset(self._head, max(1024, 2 * max(self._len, 1), len(live) + 1024), live)
        seq = self._next
        self._next += 1
        self._alive[seq - self._base] = 1
        self._add(seq, 1)
        self._len += 1
        return seq

    def remove(self, seq: int) -> None:
        i = seq - self._base
        if not (0 <= i < self._cap and self._alive[i]):
            raise KeyError(seq)
        self._alive[i] = 0
        self._add(seq, -1)
        self._len -= 1
        while self._head < self._next and not self._alive[self._head - self._base]:
            self._head += 1

    def position(self, seq: int) -> int:
        """1 for the head of the line."""
        i = seq - self._base + 1
        total, tree = 0, self._tree
        while i > 0:
            total += tree[i]
            i -= i & -i
        return total

    def head(self) -> int | None:
        return self._head if self._len else None

    def numbers(self) -> tuple[int, int, tuple[int, ...]]:
        """(the lowest number in line, or the next if none; the next number; the numbers in
        between that left, ascending, ``MAX_GAPS`` at most)."""
        head = self._head if self._len else self._next
        alive, base, gaps = self._alive, self._base, []
        i, end = head - base, self._next - base
        while len(gaps) < MAX_GAPS and (i := alive.find(0, i, end)) >= 0:
            gaps.append(i + base)
            i += 1
        return head, self._next, tuple(gaps)


@dataclass(slots=True)
class Entry:
    id: int
    space_id: str
    arrived: float
    expires: float  # the seat offered to it is dropped after this (a place in line has no deadline)
    last_poll: float
    next_poll: float  # the advised earliest poll
    seq: int | None = None  # place in the FIFO; None while in the pre-start pool
    slot: int = -1  # index in the pool
    seat: str | None = None  # once promoted
    order: int = 0  # arrival number: the lines are served in this order (a drawn pool's are dealt anew)


@dataclass(slots=True)
class Seat:
    id: str
    space_id: str
    expires: float
    reserved: bool  # offered to a ticket, not yet picked up
    entry: int | None = None  # the waiting-room entry it was offered to
    issued: bool = False  # a token was issued for it: a listener's seat
    token: str | None = None  # the newest token issued for it; None if an edge issued it
    token_expires: int = 0


@dataclass
class SpaceCounts:
    listeners: int = 0  # seats held with a token
    reserved: int = 0  # seats offered to tickets, not yet picked up
    waiting: int = 0
    admitted_total: int = 0  # tokens first issued for a seat
    peak_listeners: int = 0


@dataclass
class _Line:
    fifo: WaitingLine = field(default_factory=WaitingLine)
    by_seq: dict[int, Entry] = field(default_factory=dict)
    pool: list[Entry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.fifo) + len(self.pool)


@dataclass(frozen=True)
class Admitted:
    token: str
    seat: str
    expires: int
    renewed: bool = False


@dataclass(frozen=True)
class Waiting:
    ticket: str
    position: int
    waiting: int  # in this Space's line
    estimated_wait_s: float | None
    retry_after_s: float
    order: str  # "fifo" or "draw_at_start"
    requeued: bool = False
    place: int | None = None  # the place's number in the Space's line (None in the pre-start pool)


@dataclass(frozen=True)
class Line:
    """A Space's line as anyone may see it: what the line document says (``amphi.web.answers``).
    A place numbered n is at ``position(n)``; below ``called`` its turn has come (or it left)."""

    called: int  # the lowest number still in line (``next`` when none is)
    next: int  # the number the next place gets
    gaps: tuple[int, ...]  # numbers from ``called`` on that left the line, ascending (``MAX_GAPS`` at most)
    waiting: int  # places in the line and the pool
    pooled: int  # of those, in the pre-start pool (numbered at the draw)
    free: int  # seats free under the limit
    wait_s: float  # until the admission rate allows the next seat
    admit_rate_per_s: float
    line_rate_per_s: float  # seats offered to the lines per second, lately

    def position(self, place: int) -> int | None:
        """1 for the head; None once the place's turn has come."""
        if place < self.called:
            return None
        return place - self.called + 1 - bisect.bisect_left(self.gaps, place)

    def eta(self, position: int) -> float | None:
        return eta(position, self.free, self.wait_s, self.admit_rate_per_s, self.line_rate_per_s)


class Admission:
    def __init__(self, cfg: AdmissionConfig, signer: Signer, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.signer = signer
        self.rng = rng or random.Random()
        self.gcra = Gcra(cfg.admit_rate_per_s, cfg.admit_burst)
        self.limit = cfg.max_listeners  # set by the health loop, within [min, max]
        self.paused = False  # degradation: every new join waits in line (the line still moves under the limit)
        self._seats: dict[str, Seat] = {}
        self._seat_heap: list[tuple[float, str]] = []
        self._entries: dict[int, Entry] = {}
        self._entry_heap: list[tuple[float, int]] = []
        self._next_entry = 1
        self._lines: dict[str, _Line] = {}
        self._counts: dict[str, SpaceCounts] = {}
        self._waiting_total = 0
        self._served: deque[list[float]] = deque()  # [when, count]: seats offered to the lines

    # -- queries ----------------------------------------------------------------------------

    @property
    def occupied(self) -> int:
        return len(self._seats)

    @property
    def waiting(self) -> int:
        return self._waiting_total

    def counts(self, space_id: str) -> SpaceCounts:
        c = self._counts.get(space_id)
        return c if c is not None else SpaceCounts()

    def seat_held(self, space_id: str, seat: str) -> bool:
        s = self._seats.get(seat)
        return s is not None and s.space_id == space_id and not s.reserved

    def line_rate(self, now: float) -> float:
        """Seats offered to the lines per second over the last ``rate_window_s``: how fast
        the line actually moves (0 when the room is full and nobody leaves)."""
        self._trim_served(now)
        return sum(c for _, c in self._served) / self.cfg.rate_window_s

    def line(self, space_id: str, now: float) -> Line:
        """The Space's line as the line document shows it."""
        line = self._lines.get(space_id)
        if line is None:
            called, nxt, gaps, waiting, pooled = 0, 0, (), 0, 0
        else:
            (called, nxt, gaps), waiting, pooled = line.fifo.numbers(), len(line), len(line.pool)
        return Line(called, nxt, gaps, waiting, pooled, max(0, self.limit - self.occupied), self.gcra.wait(now),
                    self.gcra.rate, self.line_rate(now))

    # -- joins ------------------------------------------------------------------------------

    def join(self, space_id: str, now: float, *, before_start: bool = False) -> Admitted | Waiting:
        """A new listener: a seat now if one is free, nobody is in line and the rate allows;
        otherwise a place at the back of the line (or in the pre-start pool)."""
        if (
            not self._waiting_total
            and not self.paused
            and self.occupied < self.limit
            and self.gcra.take(now)
        ):
            return self._admit(space_id, self._new_seat(space_id, now, reserved=False), now)
        if self._waiting_total >= self.cfg.max_waiting:
            raise TooBusy("the waiting room is full; try again later", retry_after_s=self._jitter(self.cfg.poll_max_s))
        entry = self._enqueue(space_id, now, before_start)
        return self._waiting_answer(entry, now)

    def poll(self, space_id: str, ticket: str, now: float, *, before_start: bool = False) -> Admitted | Waiting:
        """A waiting client comes back with its ticket."""
        t = self.signer.verify_ticket(space_id, ticket)  # BadTicket
        entry = self._entries.get(t.entry)
        if entry is None or entry.space_id != space_id:
            # its place lapsed (no poll for ticket_hold_s): back of the line, said so
            answer = self.join(space_id, now, before_start=before_start)
            return replace(answer, requeued=True) if isinstance(answer, Waiting) else answer
        if entry.seat is not None:  # offered a seat: pick it up (again, for a second client)
            # the seat exists: freeing a seat drops the entry it was offered to
            return self._admit(space_id, self._seats[entry.seat], now)
        if now < entry.next_poll - 0.5 * (entry.next_poll - entry.last_poll):
            raise TooEarly("polled before retry_after_s", retry_after_s=max(0.1, entry.next_poll - now))
        return self._waiting_answer(entry, now)

    def renew(self, space_id: str, token: str, now: float) -> Admitted:
        """An admitted listener's new token for the same seat; ``TokenExpired`` once the
        seat has been released (join again)."""
        t = self.signer.verify_token(space_id, token, now, grace_s=self.cfg.seat_grace_s)
        return self.renew_seat(t, now)

    def renew_seat(self, token: Token, now: float) -> Admitted:
        """``renew`` for a token already verified."""
        if token.host:
            return self.host(token.space_id, now, seat=token.seat)
        seat = self._seats.get(token.seat)
        if seat is None or seat.space_id != token.space_id or seat.reserved:
            raise TokenExpired("this seat has been released: join again")
        if seat.token is not None and seat.token_expires - now > RENEWED_RECENTLY * self.cfg.token_ttl_s:
            # renewed a moment ago (say, by another of this listener's requests): the same
            # token, so the URLs a player already holds stay the same
            return Admitted(seat.token, seat.id, seat.token_expires, renewed=True)
        return replace(self._admit(token.space_id, seat, now), renewed=True)

    def extend(self, space_id: str, renewals: Sequence[tuple[str, int, int]], now: float) -> list[str]:
        """Seats an edge renewed, (seat, old token expiry, new token expiry): each of this
        Space's held seats lasts until the new expiry (at most one token life from now) plus
        the grace, never shortened. Returns the seats not held; never creates one. The node
        does not know the edge's token, so the next ``renew`` issues a fresh one."""
        latest = math.ceil(now + self.cfg.token_ttl_s) + 1
        gone: list[str] = []
        for sid, _, expires in renewals:
            seat = self._seats.get(sid)
            if seat is None or seat.space_id != space_id or seat.reserved:
                gone.append(sid)
                continue
            expires = min(expires, latest)
            if expires > seat.token_expires:
                seat.token, seat.token_expires = None, expires
                seat.expires = expires + self.cfg.seat_grace_s
                heapq.heappush(self._seat_heap, (seat.expires, sid))
        return gone

    def host(self, space_id: str, now: float, *, seat: str | None = None) -> Admitted:
        """Hosts and speakers listen on reserved capacity: never queued, never counted."""
        expires = math.ceil(now + self.cfg.token_ttl_s)
        seat = seat or new_seat_id()
        return Admitted(self.signer.token(space_id, seat, expires, host=True), seat, expires)

    def leave(self, space_id: str, *, token: str | None = None, ticket: str | None = None, now: float) -> bool:
        """Frees a seat or a place at once; False if there was nothing to free."""
        if ticket is not None:
            t = self.signer.verify_ticket(space_id, ticket)
            entry = self._entries.get(t.entry)
            if entry is None or entry.space_id != space_id:
                return False
            self._drop_entry(entry)
            if entry.seat is not None:
                self._free_seat(entry.seat)
            return True
        t = self.signer.verify_token(space_id, token, now, grace_s=self.cfg.seat_grace_s)
        if t.host or not self.seat_held(space_id, t.seat):
            return False
        self._free_seat(t.seat)
        return True

    # -- the node's task --------------------------------------------------------------------

    def promote(self, now: float) -> float | None:
        """Offers free seats to the heads of the lines, as the rate allows. Returns the
        seconds until the next seat can be offered (0 after ``MAX_OFFERS_PER_PASS`` offers:
        call again), or None if there is nothing to do until a seat frees or someone joins."""
        offered = 0
        while self._waiting_total and self.occupied < self.limit:  # paused or not: the limit is the brake
            if offered >= MAX_OFFERS_PER_PASS:
                return 0.0
            offered += 1
            wait = self.gcra.wait(now)
            if wait > 0:
                return wait
            entry = self._next_in_line()
            self.gcra.take(now)
            self._drop_from_line(entry)
            seat = self._new_seat(entry.space_id, now, reserved=True)
            seat.entry = entry.id
            entry.seat = seat.id
            entry.expires = now + self.cfg.ticket_hold_s
            heapq.heappush(self._entry_heap, (entry.expires, entry.id))
        return None

    def sweep(self, now: float) -> int:
        """Releases seats whose time ran out and places nobody polled for; returns how many."""
        freed = 0
        for sid in _pop_due(self._seat_heap, now):
            seat = self._seats.get(sid)
            if seat is not None and seat.expires <= now:  # else renewed since: a later entry is queued
                self._free_seat(sid)
                freed += 1
        for eid in _pop_due(self._entry_heap, now):
            entry = self._entries.get(eid)
            if entry is not None and entry.expires <= now:
                self._drop_entry(entry)
                freed += 1
        return freed

    def draw(self, space_id: str) -> int:
        """The Space starts: its pre-start pool joins the line in random order, ahead of
        anyone who arrives from now on; the drawn places take the pool's arrival numbers in
        the drawn order. Returns how many were drawn."""
        line = self._lines.get(space_id)
        if line is None or not line.pool:
            return 0
        drawn = line.pool
        line.pool = []
        orders = sorted(e.order for e in drawn)
        self.rng.shuffle(drawn)
        for entry, order in zip(drawn, orders):
            entry.slot = -1
            entry.order = order
            entry.seq = line.fifo.push()
            line.by_seq[entry.seq] = entry
        return len(drawn)

    def close_space(self, space_id: str) -> None:
        """The Space ended: its seats and its line are gone (the replay needs no seat)."""
        for sid in [s.id for s in self._seats.values() if s.space_id == space_id]:
            self._free_seat(sid)
        line = self._lines.pop(space_id, None)
        if line is not None:
            self._waiting_total -= len(line)
        for eid in [e.id for e in self._entries.values() if e.space_id == space_id]:
            del self._entries[eid]
        self._space(space_id).waiting = 0  # freeing the seats above counted them down

    # -- internals --------------------------------------------------------------------------

    def _space(self, space_id: str) -> SpaceCounts:
        c = self._counts.get(space_id)
        if c is None:
            c = self._counts[space_id] = SpaceCounts()
        return c

    def _new_seat(self, space_id: str, now: float, *, reserved: bool) -> Seat:
        """A seat offered to a ticket (held ``ticket_hold_s``), or one for ``_admit`` to
        give its token and deadline straight away."""
        seat = Seat(new_seat_id(), space_id, 0.0, reserved)
        self._seats[seat.id] = seat
        if reserved:
            seat.expires = now + self.cfg.ticket_hold_s
            heapq.heappush(self._seat_heap, (seat.expires, seat.id))
            self._space(space_id).reserved += 1
            self._count_served(now)
        return seat

    def _admit(self, space_id: str, seat: Seat, now: float) -> Admitted:
        """A token for ``seat`` with a fresh deadline; an offered seat becomes a listener's."""
        counts = self._space(space_id)
        if seat.reserved:
            seat.reserved = False
            counts.reserved -= 1
        if not seat.issued:
            seat.issued = True
            counts.listeners += 1
            counts.admitted_total += 1
            counts.peak_listeners = max(counts.peak_listeners, counts.listeners)
        expires = math.ceil(now + self.cfg.token_ttl_s)
        seat.expires = expires + self.cfg.seat_grace_s
        heapq.heappush(self._seat_heap, (seat.expires, seat.id))
        seat.token, seat.token_expires = self.signer.token(space_id, seat.id, expires), expires
        return Admitted(seat.token, seat.id, expires)

    def _free_seat(self, sid: str) -> None:
        seat = self._seats.pop(sid, None)
        if seat is None:
            return
        counts = self._space(seat.space_id)
        if seat.reserved:
            counts.reserved -= 1
        if seat.issued:
            counts.listeners -= 1
        if seat.entry is not None:
            entry = self._entries.get(seat.entry)
            if entry is not None and entry.seat == sid:
                del self._entries[entry.id]

    def _enqueue(self, space_id: str, now: float, before_start: bool) -> Entry:
        """A place at the back (or in the pool); ``_waiting_answer`` always follows."""
        line = self._lines.get(space_id)
        if line is None:
            line = self._lines[space_id] = _Line()
        entry = Entry(self._next_entry, space_id, now, math.inf, now, now)
        entry.order = entry.id
        self._next_entry += 1
        if before_start:
            entry.slot = len(line.pool)
            line.pool.append(entry)
        else:
            entry.seq = line.fifo.push()
            line.by_seq[entry.seq] = entry
        self._entries[entry.id] = entry
        self._waiting_total += 1
        self._space(space_id).waiting += 1
        return entry

    def _next_in_line(self) -> Entry:
        """The earliest arrival number among the heads of all lines (a random member of a pool)."""
        best: Entry | None = None
        for line in self._lines.values():
            head = line.fifo.head()
            if head is not None:
                cand = line.by_seq[head]
            elif line.pool:
                cand = line.pool[self.rng.randrange(len(line.pool))]
            else:
                continue
            if best is None or cand.order < best.order:
                best = cand
        assert best is not None
        return best

    def _drop_from_line(self, entry: Entry) -> None:
        line = self._lines[entry.space_id]
        if entry.seq is not None:
            line.fifo.remove(entry.seq)
            del line.by_seq[entry.seq]
            entry.seq = None
        else:
            last = line.pool.pop()
            if last is not entry:
                line.pool[entry.slot] = last
                last.slot = entry.slot
            entry.slot = -1
        self._waiting_total -= 1
        self._space(entry.space_id).waiting -= 1

    def _drop_entry(self, entry: Entry) -> None:
        if entry.seat is None and (entry.seq is not None or entry.slot >= 0):
            self._drop_from_line(entry)
        self._entries.pop(entry.id, None)
        if entry.seat is not None:
            seat = self._seats.get(entry.seat)
            if seat is not None and seat.reserved:
                self._free_seat(seat.id)

    def _waiting_answer(self, entry: Entry, now: float) -> Waiting:
        line = self._lines[entry.space_id]
        if entry.seq is not None:
            position, order = line.fifo.position(entry.seq), "fifo"
        else:
            position, order = len(line.pool), "draw_at_start"  # an upper bound until the draw
        estimate = eta(position, max(0, self.limit - self.occupied), self.gcra.wait(now), self.gcra.rate,
                       self.line_rate(now))
        retry = self._jitter(poll_after(position, estimate, self.cfg.poll_min_s, self.cfg.poll_max_s))
        entry.last_poll = now
        entry.next_poll = now + retry  # the place is held until its turn: no deadline while in line
        ticket = self.signer.ticket(entry.space_id, entry.id, int(entry.arrived))
        return Waiting(ticket, position, len(line), estimate, round(retry, 2), order, place=entry.seq)

    def _jitter(self, seconds: float) -> float:
        j = self.cfg.poll_jitter
        return seconds * self.rng.uniform(1 - j, 1 + j)

    def _count_served(self, now: float) -> None:
        if self._served and self._served[-1][0] == now:  # promote offers many seats in one instant
            self._served[-1][1] += 1
        else:
            self._served.append([now, 1])
            self._trim_served(now)

    def _trim_served(self, now: float) -> None:
        while self._served and self._served[0][0] <= now - self.cfg.rate_window_s:
            self._served.popleft()
