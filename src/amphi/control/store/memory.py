"""One node, everything in memory: the pure ``Admission`` behind the store's interface.
Without ``--redis`` this is the node's store, and behaves exactly as Admission does."""

from __future__ import annotations

from collections.abc import Sequence

from amphi.control.admission import Admission, Admitted, Line, SpaceCounts, Waiting
from amphi.control.store import Store
from amphi.control.tokens import Token
from amphi.core.gcra import GcraTable


MAX_LIMITERS = 100_000  # keys (client addresses, speakers) tracked for rate limits


class MemoryStore(Store):
    kind = "memory"

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self._limits = GcraTable(MAX_LIMITERS)  # key -> its budget

    @property
    def limit(self) -> int:  # type: ignore[override]
        return self.admission.limit

    @limit.setter
    def limit(self, value: int) -> None:
        self.admission.limit = value

    @property
    def paused(self) -> bool:  # type: ignore[override]
        return self.admission.paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self.admission.paused = value

    @property
    def occupied(self) -> int:
        return self.admission.occupied

    @property
    def waiting(self) -> int:
        return self.admission.waiting

    async def join(self, space_id: str, now: float, *, before_start: bool = False) -> Admitted | Waiting:
        return self.admission.join(space_id, now, before_start=before_start)

    async def poll(self, space_id: str, ticket: object, now: float, *, before_start: bool = False) -> Admitted | Waiting:
        return self.admission.poll(space_id, ticket, now, before_start=before_start)  # type: ignore[arg-type]

    async def renew(self, space_id: str, token: str, now: float) -> Admitted:
        return self.admission.renew(space_id, token, now)

    async def renew_seat(self, token: Token, now: float) -> Admitted:
        return self.admission.renew_seat(token, now)

    async def line(self, space_id: str, now: float) -> Line:
        return self.admission.line(space_id, now)

    async def extend(self, space_id: str, renewals: Sequence[tuple[str, int, int]], now: float) -> list[str]:
        return self.admission.extend(space_id, renewals, now)

    def host(self, space_id: str, now: float) -> Admitted:
        return self.admission.host(space_id, now)

    async def leave(self, space_id: str, *, token: str | None, ticket: object, now: float) -> bool:
        return self.admission.leave(space_id, token=token, ticket=ticket, now=now)

    async def seat_held(self, token: Token, now: float) -> bool:
        return self.admission.seat_held(token.space_id, token.seat)

    async def counts(self, space_id: str) -> SpaceCounts:
        return self.admission.counts(space_id)

    def known_counts(self, space_id: str) -> SpaceCounts:
        return self.admission.counts(space_id)

    async def promote(self, now: float) -> float | None:
        return self.admission.promote(now)

    async def sweep(self, now: float) -> int:
        return self.admission.sweep(now)

    async def draw(self, space_id: str) -> int:
        return self.admission.draw(space_id)

    async def close_space(self, space_id: str) -> None:
        self.admission.close_space(space_id)

    async def take(self, key: str, rate: float, burst: int, now: float) -> float:
        return self._limits.charge(key, rate, burst, now)

    async def save_stage(self, space_id: str, data: bytes) -> None:
        """Nothing to keep: one node alone has the stage in memory, and no other takes it over."""

    async def load_stage(self, space_id: str) -> bytes | None:
        return None
