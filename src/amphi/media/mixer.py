"""The program mixer. Pure: one call to ``tick`` makes one 20 ms program frame.

Modes: hold -> live -> ended. Before the start the program is hold music; live, it is the
sum of the speakers' tracks (silence when nobody talks); the clock never stops while the
Space is live. Muted tracks are not heard. Every tick also makes each speaker's return feed
(``returns``): the sum of the others, without the speaker's own voice (mix-minus), in every
mode, so speakers can talk before the start while listeners hear hold music. Each track's
level is measured as it is mixed (``LevelMeter``). A mode change is requested now and takes effect at the next sample that is a
whole number of ticks and AAC frames (``MediaConfig.switch_align_samples``, 320 ms), so the
segmenter can cut a segment exactly where the Space started or ended.

With ``MediaConfig.sound.enabled`` the mixer guards the sound (``amphi.media.guard``): each
track goes through its ``TrackGuard`` (leveled towards the program loudness, ducked on
feedback) before it is mixed, each return feed is shown to its speaker's guard (the
feedback detector's reference), and the live program goes through a true-peak limiter.
Level meters measure what the microphone sends, before the guard.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from amphi.core.config import MediaConfig
from amphi.core.errors import IllegalTransition
from amphi.media.guard import TrackGuard, TruePeakLimiter, k_weighted
from amphi.media.jitter import JitterBuffer

log = logging.getLogger(__name__)


class Mode(enum.Enum):
    HOLD = "hold"
    LIVE = "live"
    ENDED = "ended"


_NEXT = {Mode.HOLD: Mode.LIVE, Mode.LIVE: Mode.ENDED}


TALK_DBFS = -45.0  # a track louder than this is talking
TALK_HANGOVER_S = 0.5  # ... and is still talking this long after it went quieter
FLOOR_DBFS = -60.0  # level 0; 0 dBFS is level 1


@dataclass(frozen=True)
class ProgramFrame:
    sample: int  # program sample index of samples[0]
    samples: np.ndarray  # float32 mono, tick_samples long
    mode: Mode
    returns: dict[str, np.ndarray] | None = None  # track name -> its mix-minus frame


class LevelMeter:
    """Per-track loudness for the talking indicator: the peak RMS since the last read, and
    whether the track is talking (above ``TALK_DBFS``, with a hang-over)."""

    def __init__(self, tick_s: float) -> None:
        self._hangover_ticks = max(1, round(TALK_HANGOVER_S / tick_s))
        self._threshold = 10 ** (TALK_DBFS / 20)
        self._peak = 0.0
        self._quiet_ticks = self._hangover_ticks

    def feed(self, frame: np.ndarray | None) -> None:
        if frame is None:
            rms = 0.0
        else:
            rms = float(np.sqrt(np.dot(frame, frame) / len(frame)))
        self._peak = max(self._peak, rms)
        self._quiet_ticks = 0 if rms >= self._threshold else self._quiet_ticks + 1

    @property
    def talking(self) -> bool:
        return self._quiet_ticks < self._hangover_ticks

    def read(self) -> float:
        """The level 0..1 (``FLOOR_DBFS``..0 dBFS) of the loudest tick since the last read."""
        peak, self._peak = self._peak, 0.0
        if peak <= 0.0:
            return 0.0
        db = 20 * np.log10(peak)
        return float(min(max((db - FLOOR_DBFS) / -FLOOR_DBFS, 0.0), 1.0))


class Mixer:
    def __init__(self, cfg: MediaConfig, hold: Callable[[int, int], np.ndarray]) -> None:
        self._cfg = cfg
        self._hold = hold
        self._n = cfg.tick_samples
        self.sample = 0
        self.mode = Mode.HOLD
        self._switch: tuple[int, Mode] | None = None  # (at sample, to mode)
        self.tracks: dict[str, JitterBuffer] = {}
        self.meters: dict[str, LevelMeter] = {}
        self._silence = np.zeros(self._n, dtype=np.float32)
        self._silence.flags.writeable = False  # shared by every silent frame
        self.muted: set[str] = set()
        self.return_to: set[str] = set()  # tracks whose speakers get a return feed
        sound = cfg.sound
        self.guards: dict[str, TrackGuard] | None = {} if sound.enabled else None
        self.limiter = TruePeakLimiter(sound.ceiling_dbtp, sound.limiter_release_db_per_s) if sound.enabled else None

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
            target=max(1, self._cfg.jitter_target_ms // tick_ms),
            limit=max(1, self._cfg.jitter_max_ms // tick_ms),
            backlog=self._cfg.stall_cover_ms // tick_ms,
        )
        self.tracks[name] = buf
        self.meters.setdefault(name, LevelMeter(tick_ms / 1000))
        if self.guards is not None:
            self.guards.setdefault(name, TrackGuard(self._cfg.sound, self._n))  # kept across a reconnect
        return buf

    def remove_track(self, name: str, buf: JitterBuffer | None = None) -> None:
        if buf is None or self.tracks.get(name) is buf:
            self.tracks.pop(name, None)
            self.meters.pop(name, None)
            if self.guards is not None:
                self.guards.pop(name, None)

    def tick(self, overdue: int = 0) -> ProgramFrame:
        """The next program frame; ``overdue`` is how many later ticks are already due (the
        clock catching up after a stall), so the tracks keep the audio meant for them."""
        if self.mode is Mode.ENDED:
            raise IllegalTransition("the program has ended")
        if self._switch and self._switch[0] == self.sample:
            log.info("program %s -> %s at sample %d", self.mode.value, self._switch[1].value, self.sample)
            self.mode = self._switch[1]
            self._switch = None
            if self.mode is Mode.ENDED:
                return ProgramFrame(self.sample, np.zeros(0, dtype=np.float32), Mode.ENDED)
        # every track advances every tick, heard or not, so its delay stays fixed
        heard: dict[str, np.ndarray] = {}
        guards = self.guards
        popped: list[tuple[str, np.ndarray]] = []
        drained: list[tuple[str, JitterBuffer]] = []
        for name, buf in self.tracks.items():
            f = buf.pop(overdue)
            self.meters[name].feed(f)
            if guards is not None:
                guards[name].sample = self.sample
            if f is not None:
                popped.append((name, f))
            elif guards is not None:
                guards[name].skip()
            if buf.drained:
                drained.append((name, buf))  # removed once its last frame has been through its guard
        if guards is not None and popped:
            mine = [guards[name] for name, _ in popped]
            squares = k_weighted(mine, [f for _, f in popped])
            popped = [(name, g.process(f, z)) for (name, f), g, z in zip(popped, mine, squares)]
        for name, f in popped:
            if name not in self.muted:
                heard[name] = f
        for name, buf in drained:
            self.remove_track(name, buf)
        total = self._sum(list(heard.values()))
        if self.mode is Mode.HOLD:
            program = self._hold(self.sample, self._n)
        elif self.limiter is not None:
            program = self.limiter.process(total)
        else:
            program = _clip(total)
        # the return feeds get the program limiter's gain too: levelled speakers summed would clip
        ramp = self.limiter.ramp if self.limiter is not None and self.mode is not Mode.HOLD else None
        returns = {name: self._minus(total, heard.get(name), len(heard), ramp) for name in self.return_to} or None
        if returns and guards is not None:
            for name, frame in returns.items():
                guard = guards.get(name)
                if guard is not None:
                    guard.sent(frame)
        out = ProgramFrame(self.sample, program, self.mode, returns)
        self.sample += self._n
        return out

    def _sum(self, frames: list[np.ndarray]) -> np.ndarray:
        if not frames:
            return self._silence
        if len(frames) == 1:
            return frames[0]  # a track's frame: in [-1, 1], or the guard's own copy
        return np.add.reduce(frames)

    def _minus(self, total: np.ndarray, own: np.ndarray | None, heard: int,
               ramp: np.ndarray | None = None) -> np.ndarray:
        if own is not None and heard == 1:
            return self._silence
        out = total if own is None else total - own
        return _clip(out if ramp is None else out * ramp)


def _clip(frame: np.ndarray) -> np.ndarray:
    """In place for sums the mixer made; a shared or a track's own frame is in range already."""
    if frame.flags.writeable and frame.flags.owndata:
        np.minimum(frame, 1.0, out=frame)
        np.maximum(frame, -1.0, out=frame)
    return frame
