"""The ended Spaces' recordings, as the origin serves them: loaded from disk on first need, in a
worker thread (``Recording.open`` reads every segment's headers: ~1,000 files for an hour),
and kept in a bounded least-recently-used index.

Concurrent first requests for one recording share one load. A recording that just ended is
``put`` in by its pipeline's owner, so the replay is served without reading it back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from amphi.core.config import MediaConfig
from amphi.media.recorder import Recording

log = logging.getLogger(__name__)

# Ended recordings kept in memory. Replays are served through edges that cache their playlist
# for an hour and segments for good, so the origin sees a few recent Spaces, not every one; a
# recording costs ~200 kB per hour of audio (one entry per segment), so 64 hour-long recordings
# hold ~13 MB. A recording evicted is read again (off the event loop) when next asked for.
RECORDINGS_KEPT = 64

Loader: TypeAlias = Callable[[Path, MediaConfig], Recording]


@dataclass
class RecordingsStats:
    loads: int = 0  # recordings read from disk
    hits: int = 0  # asked for and already in memory
    shared: int = 0  # asked for while already loading: waited for that load
    evictions: int = 0  # least recently used recordings dropped to stay within the bound


class Recordings:
    def __init__(self, directory_of: Callable[[str], Path], cfg: MediaConfig, *,
                 capacity: int = RECORDINGS_KEPT, load: Loader = Recording.open) -> None:
        """``directory_of(space_id)`` is the Space's directory; ``load`` reads a recording
        (blocking; run in a worker thread)."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._directory_of = directory_of
        self._cfg = cfg
        self._load = load
        self.capacity = capacity
        self._kept: OrderedDict[str, Recording] = OrderedDict()  # least recently used first
        self._loading: dict[str, asyncio.Task[Recording]] = {}
        self.stats = RecordingsStats()

    async def get(self, space_id: str) -> Recording:
        """The Space's recording as on disk (empty if it recorded nothing)."""
        rec = self._kept.get(space_id)
        if rec is not None:
            self._kept.move_to_end(space_id)
            self.stats.hits += 1
            return rec
        task = self._loading.get(space_id)
        if task is None:
            task = asyncio.create_task(self._read(space_id), name=f"load-recording:{space_id}")
            task.add_done_callback(lambda t: self._loaded(space_id, t))
            self._loading[space_id] = task
        else:
            self.stats.shared += 1
        return await asyncio.shield(task)  # a waiter that goes away does not cancel the others' load

    async def _read(self, space_id: str) -> Recording:
        rec = await asyncio.to_thread(self._load, self._directory_of(space_id), self._cfg)
        self.stats.loads += 1
        return rec

    def _loaded(self, space_id: str, task: asyncio.Task[Recording]) -> None:
        del self._loading[space_id]
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:  # retrieved here; each waiter gets it raised
            log.error("recording %s could not be read: %r", space_id, exc)
            return
        if space_id not in self._kept:  # a put() while loading wins: it is the newer
            self.put(space_id, task.result())

    def put(self, space_id: str, rec: Recording) -> None:
        """Keeps ``rec`` (a recording that just ended, complete in memory) as the newest."""
        self._kept[space_id] = rec
        self._kept.move_to_end(space_id)
        while len(self._kept) > self.capacity:
            self._kept.popitem(last=False)
            self.stats.evictions += 1

    def forget(self, space_id: str) -> None:
        self._kept.pop(space_id, None)

    def __contains__(self, space_id: str) -> bool:
        return space_id in self._kept

    def __len__(self) -> int:
        return len(self._kept)
