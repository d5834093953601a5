"""Audio a speaker sends: aiortc ``MediaStreamTrack``s paced in real time.

Every source is a ``PacedTrack``: it hands aiortc one 20 ms frame (960 samples of 48 kHz
s16 mono content, as L = R stereo) per 20 ms, against an absolute schedule anchored at the first ``recv()``, so it
does not drift. Frame ``pts`` count samples (``time_base`` 1/48000). Subclasses only say
which samples come next (``_next``); returning ``None`` ends the track, which then stops
and raises ``MediaStreamError`` as aiortc expects.

Lifecycle: live -> ended (``stop()``, or the source ran out); once ended, it stays ended.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from amphi.core.config import SAMPLE_RATE

__all__ = ["FileTrack", "FrameHook", "GeneratedTrack", "PacedTrack", "ToneTrack"]

logger = logging.getLogger(__name__)

FRAME_SAMPLES = SAMPLE_RATE // 50  # 960: one 20 ms frame
TIME_BASE = Fraction(1, SAMPLE_RATE)
MAX_LATE_S = 0.5  # a sender stalled longer than this restarts its schedule instead of bursting

FrameHook = Callable[[int, float], None]
"""``on_frame(sample_index, wall_time)``: first sample of the frame, ``time.time()`` when
it was handed to aiortc."""


class PacedTrack(MediaStreamTrack):
    """Base of all sources: real-time pacing, pts, s16 conversion and the ``on_frame`` hook."""

    kind = "audio"

    def __init__(self, *, on_frame: FrameHook | None = None) -> None:
        super().__init__()
        self.on_frame = on_frame
        self._start: float | None = None  # loop time at which sample 0 was due
        self._sample = 0  # index of the next sample to send

    async def _next(self, start: int, n: int) -> np.ndarray | None:
        """The ``n`` samples from ``start`` on (float32 mono in [-1, 1]), or None at the end."""
        raise NotImplementedError

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        samples = await self._next(self._sample, FRAME_SAMPLES)
        if samples is None or self.readyState != "live":
            self.stop()
            raise MediaStreamError

        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._start is None:
            self._start = now
        due = self._start + self._sample / SAMPLE_RATE
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > MAX_LATE_S:
            logger.warning("audio source %.2f s behind schedule; restarting the schedule", now - due)
            self._start = now - self._sample / SAMPLE_RATE

        frame = _s16_frame(samples)
        frame.pts = self._sample
        if self.on_frame is not None:
            self.on_frame(self._sample, time.time())
        self._sample += FRAME_SAMPLES
        return frame


def _s16_frame(samples: np.ndarray) -> av.AudioFrame:
    """Mono samples as an s16 frame with both stereo channels equal.

    Not ``layout="mono"``: aiortc's Opus encoder upmixes mono to stereo with libswresample,
    which puts each channel 3 dB down (x 0.707), and the ingest downmixes by averaging, as is
    right for browsers (whose mono Opus decodes to L = R = x). Sending L = R keeps unity gain."""
    pcm = np.rint(np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = SAMPLE_RATE
    frame.time_base = TIME_BASE
    return frame


class GeneratedTrack(PacedTrack):
    """Samples from ``render(start_sample, n)`` -> float32 mono array of length ``n``
    (or None to end the track). ``render`` runs on the event loop: keep it cheap."""

    def __init__(self, render: Callable[[int, int], np.ndarray | None], *, on_frame: FrameHook | None = None) -> None:
        super().__init__(on_frame=on_frame)
        self._render = render

    async def _next(self, start: int, n: int) -> np.ndarray | None:
        samples = self._render(start, n)
        if samples is None:
            return None
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(samples) != n:
            raise ValueError(f"render({start}, {n}) returned {len(samples)} samples")
        return samples


class ToneTrack(GeneratedTrack):
    """A sine at ``hz``; the phase follows the absolute sample index, so it is continuous."""

    def __init__(self, hz: float, amplitude: float = 0.5, *, on_frame: FrameHook | None = None) -> None:
        self.hz = hz
        self.amplitude = amplitude
        super().__init__(self._sine, on_frame=on_frame)

    def _sine(self, start: int, n: int) -> np.ndarray:
        cycles = np.mod(self.hz * np.arange(start, start + n, dtype=np.float64) / SAMPLE_RATE, 1.0)
        return (self.amplitude * np.sin(2 * math.pi * cycles)).astype(np.float32)


class FileTrack(PacedTrack):
    """Any file PyAV can read (its first audio stream), resampled to 48 kHz mono.

    Opened in the constructor, so a missing or unreadable file fails at once (``OSError``
    / ``av.FFmpegError``; ``ValueError`` if it has no audio). Decoding runs in a worker
    thread, about ``READ_AHEAD_S`` at a time. With ``loop`` it starts over at the end."""

    READ_AHEAD_S = 0.5

    def __init__(self, path: str, loop: bool = False, *, on_frame: FrameHook | None = None) -> None:
        super().__init__(on_frame=on_frame)
        self.path = path
        self.loop = loop
        self._chunks: deque[np.ndarray] = deque()
        self._buffered = 0
        self._eof = False
        self._lock = threading.Lock()  # the decoder state belongs to whoever holds it
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.AudioFrame] | None = None
        self._resampler: av.AudioResampler | None = None
        self._open()

    def _open(self) -> None:
        container = av.open(self.path)
        if not container.streams.audio:
            container.close()
            raise ValueError(f"{self.path}: no audio stream")
        self._container = container
        self._frames = container.decode(container.streams.audio[0])
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._frames = None

    def stop(self) -> None:
        super().stop()
        if self._lock.acquire(blocking=False):  # else the decoder thread closes it when done
            try:
                self._close()
            finally:
                self._lock.release()

    def _decode(self, want: int) -> None:
        """Worker thread: decode until ``want`` samples are buffered or the file is done."""
        with self._lock:
            produced_this_pass = self._buffered > 0
            while self._buffered < want and not self._eof and self.readyState == "live":
                assert self._resampler is not None
                frame = next(self._frames, None) if self._frames is not None else None
                out = self._resampler.resample(frame)  # None flushes
                for f in out:
                    pcm = f.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    if len(pcm):
                        self._chunks.append(pcm)
                        self._buffered += len(pcm)
                        produced_this_pass = True
                if frame is None:
                    self._close()
                    if self.loop and produced_this_pass:
                        self._open()
                        produced_this_pass = False
                    else:
                        self._eof = True
            if self.readyState != "live":
                self._close()

    async def _next(self, start: int, n: int) -> np.ndarray | None:
        if self._buffered < n and not self._eof:
            await asyncio.to_thread(self._decode, n + int(self.READ_AHEAD_S * SAMPLE_RATE))
        if self._buffered == 0:
            return None
        out = np.zeros(n, dtype=np.float32)  # the last frame of a file is padded with silence
        filled = 0
        while filled < n and self._chunks:
            chunk = self._chunks[0]
            take = min(n - filled, len(chunk))
            out[filled : filled + take] = chunk[:take]
            filled += take
            if take == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[take:]
        self._buffered -= filled
        return out
