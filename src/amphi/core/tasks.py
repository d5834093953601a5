"""Supervised tasks: no task's failure vanishes.

A ``Supervisor`` owns the tasks it spawns. A task that raises is logged once, with its name
and traceback, and kept in ``failures`` (name -> short reason) for status pages; an owner
that must react (a pipeline whose mixer died) passes ``on_failure``. Cancellation is not a
failure, and neither is returning.

Lifecycle: open -> closed. ``close()`` cancels the tasks still running, newest first (the
reverse of start, so a consumer started before its producer outlives it), and waits until
each has really exited; once closed, ``spawn`` raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeAlias

log = logging.getLogger(__name__)

MAX_FAILURES = 64  # failures kept (the oldest are forgotten first): task names may be per-Space
REASON_CHARS = 200  # a reason is a status line, not a traceback (that is in the log)

Coro: TypeAlias = Coroutine[Any, Any, Any]


def reason(exc: BaseException) -> str:
    """``"ValueError: bad frame"``: the type and the first line of the message."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    short = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return short[:REASON_CHARS]


class Supervisor:
    def __init__(self, name: str = "", *,
                 on_failure: Callable[[str, BaseException], None] | None = None) -> None:
        self.name = name  # prefixes log lines: whose tasks these are
        self._on_failure = on_failure
        self._tasks: dict[asyncio.Task[Any], None] = {}  # running tasks, in order of start
        self.failures: dict[str, str] = {}  # task name -> reason, oldest first
        self.closed = False

    def spawn(self, coro: Coro, name: str) -> asyncio.Task[Any]:
        if self.closed:
            coro.close()  # never awaited: do not leave a "coroutine was never awaited" warning
            raise RuntimeError(f"supervisor {self.name or '?'} is closed: cannot start {name}")
        task = asyncio.create_task(coro, name=name)
        self._tasks[task] = None
        task.add_done_callback(self._reap)
        return task

    @property
    def tasks(self) -> list[asyncio.Task[Any]]:
        """The tasks still running, in order of start."""
        return list(self._tasks)

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        name = task.get_name()
        why = reason(exc)
        self.failures.pop(name, None)  # a name failing again moves to the newest end
        self.failures[name] = why
        while len(self.failures) > MAX_FAILURES:
            del self.failures[next(iter(self.failures))]
        owner = f"{self.name}: " if self.name else ""
        log.error("%stask %s failed: %s", owner, name, why, exc_info=exc)
        if self._on_failure is not None:
            try:
                self._on_failure(name, exc)
            except Exception:
                log.exception("%son_failure of task %s raised", owner, name)

    async def close(self) -> None:
        """Cancels every running task, newest first, each awaited before the next is
        cancelled. Idempotent. If the caller is cancelled meanwhile, the rest are still
        cancelled (not awaited) before the cancellation goes on."""
        self.closed = True
        pending = list(reversed(self._tasks))
        try:
            while pending:
                task = pending.pop(0)
                task.cancel()
                await asyncio.wait([task])  # never raises the task's error: _reap logged it
        finally:
            for task in pending:
                task.cancel()
