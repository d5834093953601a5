"""The ``amphi speak`` client's reading of a refusal (``media/ingest/client.py``): a 503's
Retry-After is a wait to honour (the Space changing host), anything else is not. The timings
themselves are judged against real nodes in tests/integration/test_forwarding.py and
test_failover.py; here, how long a silent return feed takes to count as a lost node."""

from __future__ import annotations

import asyncio
import time

import av
import httpx
import numpy as np

from amphi.media.ingest.client import (RETRY_AFTER_JITTER, RETURN_SILENCE_S, SUSPECT_SILENCE_S, Suspicion, _hear,
                                       _retry_after)


def answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers)


def test_a_503s_retry_after_is_the_wait_and_nothing_else_is() -> None:
    assert _retry_after(answer(503, **{"retry-after": "1"})) == 1.0
    assert _retry_after(answer(503, **{"retry-after": "2.5"})) == 2.5
    assert _retry_after(answer(503)) is None
    assert _retry_after(answer(503, **{"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"})) is None  # Amphi sends seconds
    assert _retry_after(answer(429, **{"retry-after": "5"})) is None  # a rate limit keeps its back-off
    assert _retry_after(answer(403, **{"retry-after": "1"})) is None


class Falls:
    """An audio track that sends 20 ms frames for ``for_s`` seconds, then nothing (a node gone quiet)."""

    kind = "audio"

    def __init__(self, for_s: float) -> None:
        self.until = time.monotonic() + for_s

    async def recv(self) -> av.AudioFrame:
        await asyncio.sleep(0.02)
        if time.monotonic() > self.until:
            await asyncio.Event().wait()  # silence from here on
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 48_000
        return frame


async def silent_after(suspicion: Suspicion, *, broke_at: float | None, limit: float = 1.5) -> float | None:
    """Seconds until ``_hear`` calls the return feed silent (None: not within ``limit``)."""
    silent = asyncio.Event()
    t0 = time.monotonic()
    hearing = asyncio.ensure_future(_hear(Falls(0.2), None, silent, suspicion))  # type: ignore[arg-type]
    if broke_at is not None:
        await asyncio.sleep(broke_at)
        suspicion.broke()
    try:
        async with asyncio.timeout(limit):
            await silent.wait()
        return time.monotonic() - t0
    except TimeoutError:
        return None
    finally:
        hearing.cancel()


async def test_a_node_that_stalls_is_not_taken_for_dead_but_one_whose_room_stream_broke_is_at_once() -> None:
    # issue 19: both speakers heard again within 5 s of a kill -9 (the lease lapses in 1.5 s). A killed
    # node drops the room's event stream with the media: the silence then counts after 0.5 s. A node
    # descheduled for a second keeps its connections: it takes RETURN_SILENCE_S (2 s) of silence
    assert await silent_after(Suspicion(), broke_at=None) is None  # 1.3 s of silence: not gone
    took = await silent_after(Suspicion(), broke_at=0.3)
    assert took is not None and took < 0.2 + SUSPECT_SILENCE_S + 0.4, took
    assert RETURN_SILENCE_S > 1.0 and RETRY_AFTER_JITTER[0] >= 1.0 and RETRY_AFTER_JITTER[1] <= 1.2
