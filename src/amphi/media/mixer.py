"""The program mixer. Pure: one call to ``tick`` makes one 20 ms program frame.

Modes: hold -> live -> ended. Before the start the program is hold music; live, it is the
sum of the speakers' tracks (silence when nobody talks); the clock never stops while the
Space is live. A mode change is requested now and takes effect at the next sample that is a
whole number of ticks and AAC frames (``MediaConfig.switch_align_samples``, 320 ms), so the
segmenter can cut a segment exactly where the Space started or ended.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from amphi.core.config import MediaConfig
from amphi.core.errors import IllegalTransition
from amphi.media.jitter import JitterBuffer

log = logging.getLogger(__name__)


class Mode(enum.Enum):
    HOLD = "hold"
    LIVE = "live"
    ENDED = "ended"


_NEXT = {Mode.HOLD: Mode.LIVE, Mode.LIVE: Mode.ENDED}


@dataclass(frozen=True)
class ProgramFrame:
    sample: int  # program sample index of samples[0]
    samples: np.ndarray  # float32 mono, tick_samples long
    mode: Mode


class Mixer:
    def __init__(self, cfg: MediaConfig, hold: Callable[[int, int], np.ndarray]) -> None:
        self._cfg = cfg
        self._hold = hold
        self._n = cfg.tick_samples
        self.sample = 0
        self.mode = Mode.HOLD
        self._switch: tuple[int, Mode] | None = None  # (at sample, to mode)
        self.tracks: dict[str, JitterBuffer] = {}
        self._silence = np.zeros(self._n, dtype=np.float32)
        self._silence.flags.writeable = False  # shared by every silent frame
        self.muted: set[str] = set()

    @property
    def pending(self) -> tuple[int, Mode] | None:
        return self._switch

    def request(self, mode: Mode) -> int:
        """Asks for the next mode; returns the program sample at which it takes effect."""
        current = self._switch[1] if self._switch else self.mode
        if mode is current and self._switch:
            return self._switch[0]
        if _NEXT.get(current) is not mode:
            raise IllegalTransition(f"program cannot go {current.value} -> {mode.value}")
        align = self._cfg.switch_align_samples
        base = self._switch[0] if self._switch else self.sample
        at = -(-base // align) * align
        self._switch = (at, mode)
        return at

    def add_track(self, name: str) -> JitterBuffer:
        tick_ms = self._cfg.tick_ms
        buf = JitterBuffer(
            target=max(1, self._cfg.jitter_target_ms // tick_ms), limit=max(1, self._cfg.jitter_max_ms // tick_ms)
        )
        self.tracks[name] = buf
        return buf

    def remove_track(self, name: str, buf: JitterBuffer | None = None) -> None:
        if buf is None or self.tracks.get(name) is buf:
            self.tracks.pop(name, None)

    def tick(self) -> ProgramFrame:
        if self.mode is Mode.ENDED:
            raise IllegalTransition("the program has ended")
        if self._switch and self._switch[0] == self.sample:
            log.info("program %s -> %s at sample %d", self.mode.value, self._switch[1].value, self.sample)
            self.mode = self._switch[1]
            self._switch = None
            if self.mode is Mode.ENDED:
                return ProgramFrame(self.sample, np.zeros(0, dtype=np.float32), Mode.ENDED)
        frame = self._mix()
        out = ProgramFrame(self.sample, frame, self.mode)
        self.sample += self._n
        return out

    def _mix(self) -> np.ndarray:
        # every track advances every tick, heard or not, so its delay stays fixed
        frames = [(name, buf.pop()) for name, buf in list(self.tracks.items())]
        for name, buf in list(self.tracks.items()):
            if buf.drained:
                del self.tracks[name]
        if self.mode is Mode.HOLD:
            return self._hold(self.sample, self._n)
        heard = [f for name, f in frames if f is not None and name not in self.muted]
        if not heard:
            return self._silence
        if len(heard) == 1:
            return heard[0]  # a track's frame is already in [-1, 1]
        out = np.add.reduce(heard)
        np.minimum(out, 1.0, out=out)
        np.maximum(out, -1.0, out=out)
        return out
