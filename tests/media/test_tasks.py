"""The supervisor of a component's tasks (amphi.core.tasks): no failure vanishes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from amphi.core.tasks import Supervisor


async def test_a_task_that_raises_is_logged_once_and_named_in_failures(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    sup = Supervisor("unit", on_failure=lambda name, exc: seen.append(f"{name} {exc}"))

    async def broken() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad frame\nsecond line")

    with caplog.at_level(logging.ERROR, logger="amphi.core.tasks"):
        task = sup.spawn(broken(), "worker:1")
        await asyncio.wait([task])  # the supervisor's callback was added first: it has run
    assert sup.failures == {"worker:1": "ValueError: bad frame"}
    assert seen == ["worker:1 bad frame\nsecond line"]
    records = [r for r in caplog.records if "worker:1" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is not None and records[0].exc_info[0] is ValueError  # the traceback
    assert sup.tasks == []
    await sup.close()


async def test_cancelled_and_returning_tasks_are_not_failures(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor("unit")

    async def forever() -> None:
        await asyncio.Event().wait()

    async def quick() -> int:
        return 1

    done = sup.spawn(quick(), "quick")
    cancelled = sup.spawn(forever(), "cancelled")
    await asyncio.wait([done])
    cancelled.cancel()
    await asyncio.wait([cancelled])
    assert sup.failures == {}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_close_cancels_newest_first_and_waits_for_each() -> None:
    sup = Supervisor("unit")
    order: list[str] = []

    async def worker(name: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # cleanup that takes a loop turn: close() must wait for it
            order.append(name)
            raise

    tasks = [sup.spawn(worker(n), n) for n in ("consumer", "producer", "clock")]
    await asyncio.sleep(0)
    await sup.close()
    assert order == ["clock", "producer", "consumer"]
    assert all(t.done() for t in tasks)
    assert sup.failures == {}
    with pytest.raises(RuntimeError, match="closed"):
        sup.spawn(worker("late"), "late")


async def test_a_task_that_raises_while_cancelled_is_a_failure() -> None:
    sup = Supervisor("unit")

    async def bad_cleanup() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise OSError("flush failed")

    sup.spawn(bad_cleanup(), "writer")
    await asyncio.sleep(0)
    await sup.close()
    assert sup.failures == {"writer": "OSError: flush failed"}
