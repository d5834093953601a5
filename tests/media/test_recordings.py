"""The index of ended recordings: bounded, loaded off the event loop, each load shared."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from amphi.core.config import MediaConfig
from amphi.media.recorder import Recording
from amphi.media.recordings import Recordings

CFG = MediaConfig()


async def test_keeps_at_most_capacity_and_evicts_the_least_recently_used(tmp_path: Path) -> None:
    recordings = Recordings(lambda sid: tmp_path / sid, CFG, capacity=2)
    a = await recordings.get("a")
    await recordings.get("b")
    assert await recordings.get("a") is a  # a is now the most recently used
    await recordings.get("c")  # evicts b, not a
    assert len(recordings) == 2
    assert "a" in recordings and "c" in recordings and "b" not in recordings
    assert recordings.stats.evictions == 1
    assert recordings.stats.loads == 3 and recordings.stats.hits == 1
    await recordings.get("b")  # read again
    assert recordings.stats.loads == 4 and len(recordings) == 2


async def test_concurrent_first_requests_load_once_in_a_worker_thread(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[tuple[Path, str]] = []

    def load(directory: Path, cfg: MediaConfig) -> Recording:
        calls.append((directory, threading.current_thread().name))
        entered.set()
        release.wait(10)
        return Recording.open(directory, cfg)

    recordings = Recordings(lambda sid: tmp_path / sid, CFG, load=load)
    first = asyncio.create_task(recordings.get("s"))
    assert await asyncio.to_thread(entered.wait, 10)  # the load is under way (the loop is free)
    others = [asyncio.create_task(recordings.get("s")) for _ in range(9)]
    await asyncio.sleep(0)  # each has asked
    release.set()
    got = await asyncio.gather(first, *others)
    assert len(calls) == 1
    assert calls[0][0] == tmp_path / "s"
    assert calls[0][1] != threading.main_thread().name  # read off the event loop's thread
    assert all(rec is got[0] for rec in got)
    assert recordings.stats.shared == 9 and recordings.stats.loads == 1
    assert await recordings.get("s") is got[0]  # kept
    assert len(calls) == 1


async def test_a_waiter_that_goes_away_does_not_cancel_the_load(tmp_path: Path) -> None:
    release = threading.Event()

    def load(directory: Path, cfg: MediaConfig) -> Recording:
        release.wait(10)
        return Recording.open(directory, cfg)

    recordings = Recordings(lambda sid: tmp_path / sid, CFG, load=load)
    impatient = asyncio.create_task(recordings.get("s"))
    patient = asyncio.create_task(recordings.get("s"))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()
    rec = await patient
    assert impatient.cancelled()
    assert "s" in recordings and await recordings.get("s") is rec


async def test_a_failed_load_reaches_every_waiter_and_is_not_kept(tmp_path: Path) -> None:
    def load(directory: Path, cfg: MediaConfig) -> Recording:
        raise OSError("disk gone")

    recordings = Recordings(lambda sid: tmp_path / sid, CFG, load=load)
    results = await asyncio.gather(recordings.get("s"), recordings.get("s"), return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]
    assert "s" not in recordings


async def test_a_recording_put_in_is_served_without_reading_the_disk(tmp_path: Path) -> None:
    def load(directory: Path, cfg: MediaConfig) -> Recording:
        raise AssertionError("read from disk")

    recordings = Recordings(lambda sid: tmp_path / sid, CFG, load=load)
    rec = Recording(tmp_path / "s", CFG)
    recordings.put("s", rec)
    assert await recordings.get("s") is rec
