"""A supervisor for a part's background tasks: each task is named; one that fails is logged
once, with its traceback, and kept in ``failures`` (name -> reason) for status pages;
``close()`` cancels them all, the latest started first, and waits for them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[Any], None] = {}  # in order of start
        self.failures: dict[str, str] = {}

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks[task] = None
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        self.failures[task.get_name()] = f"{type(exc).__name__}: {exc}"
        log.error("task %s failed", task.get_name(), exc_info=exc)

    async def close(self) -> None:
        for task in reversed(list(self._tasks)):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
